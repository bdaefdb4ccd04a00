"""Benchmark: cost of 1-Lipschitz dense layers against plain torch (a script, not a test).

Network 784-512-512-512-10, batch 256, CPU, Adam; activation GroupSort (pairs) or ReLU.  In ONE
run, alternating the variants step by step (A/B/C/D, A/B/C/D, ...) so that machine noise hits
all of them alike:

* plain torch ``nn.Linear``;
* lipkit ``LipLinear(constraint="orthogonal")`` (default method and precision; and the same with
  ``precision="float32"`` products) and ``constraint="spectral"``;
* torch's own ``torch.nn.utils.parametrizations.spectral_norm`` on ``nn.Linear`` (the baseline of
  the spectral constraint);
* deel-torchlip ``SpectralLinear`` (spectral normalisation + Björck), if installed.

Reports the median training-step time and its ratio to plain torch, the eval time after
``lipkit.export`` against plain torch, and each constrained layer's orthogonality
``max |sigma - 1|`` (float64 SVD of the weight the forward pass uses).  Writes
``bench/results/layers.json``.  Run on an idle machine:

    .venv/bin/python bench/layers.py            # ~1-2 min
    .venv/bin/python bench/layers.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import cpu_model
from torch import nn

import lipkit
from lipkit import LipLinear

SIZES = (784, 512, 512, 512, 10)


def _activation(name: str, torchlip: bool = False) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if torchlip:
        from deel import torchlip

        return torchlip.GroupSort2()
    return lipkit.GroupSort(2)


def build(variant: str, act: str) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        if variant == "plain":
            layers.append(nn.Linear(a, b))
        elif variant == "orthogonal":
            layers.append(LipLinear(a, b, constraint="orthogonal"))
        elif variant == "orthogonal_f32":
            lin = LipLinear(a, b, constraint="orthogonal")
            lin.parametrizations.weight[0].precision = "float32"
            layers.append(lin)
        elif variant == "spectral":
            layers.append(LipLinear(a, b, constraint="spectral"))
        elif variant == "torch_spectral":
            layers.append(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(a, b)))
        elif variant == "torchlip":
            from deel import torchlip

            layers.append(torchlip.SpectralLinear(a, b))
        else:
            raise ValueError(variant)
        if i < len(SIZES) - 2:
            layers.append(_activation(act, torchlip=variant == "torchlip"))
    return nn.Sequential(*layers)


def sigma_dev(model: nn.Module, top_only: bool = False) -> float:
    """max over linear layers of max_i |sigma_i(W) - 1| (or |sigma_max - 1| with ``top_only``) of
    the weight the forward pass uses."""
    dev = 0.0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                s = torch.linalg.svdvals(m.weight.detach().double())
                s = s[:1] if top_only else s
                dev = max(dev, (s - 1).abs().max().item())
    return dev


def plain_copy(model: nn.Module) -> nn.Module:
    """Plain nn.Linear copy (fallback when lipkit.export is unavailable)."""
    out = []
    for m in model:
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            with torch.no_grad():
                lin.weight.copy_(m.weight)
                lin.bias.copy_(m.bias)
            out.append(lin)
        else:
            out.append(m)
    return nn.Sequential(*out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--act", choices=["groupsort", "relu"], default="groupsort")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-torchlip", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10 steps, for a smoke test")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "layers.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 10, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    torch.manual_seed(0)

    variants = ["plain", "orthogonal", "orthogonal_f32", "spectral", "torch_spectral"]
    notes: list[str] = []
    if not args.no_torchlip:
        try:
            import deel.torchlip  # noqa: F401

            variants.append("torchlip")
        except ImportError as e:
            notes.append(f"deel-torchlip not available ({e}); install: .venv/bin/pip install deel-torchlip "
                         "torch==2.13.0")
    models = {v: build(v, args.act) for v in variants}
    opts = {v: torch.optim.Adam(m.parameters(), lr=1e-3) for v, m in models.items()}
    x = torch.randn(args.batch, SIZES[0])
    y = torch.randint(0, SIZES[-1], (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step(v: str) -> float:
        m, opt = models[v], opts[v]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        models[v].train()
        for _ in range(args.warmup):
            step(v)
    for i in range(args.steps):
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            times[v].append(step(v))
    med = {v: statistics.median(t) for v, t in times.items()}

    # orthogonality of the weights the forward pass uses, after training
    dev_train = {}
    dev_eval = {}
    for v in variants:
        if v == "plain":
            continue
        top = v in ("spectral", "torch_spectral")  # spectral normalisation only sets sigma_max
        models[v].train()
        dev_train[v] = sigma_dev(models[v], top) if v != "torchlip" else None
        models[v].eval()
        dev_eval[v] = sigma_dev(models[v], top)

    # inference after export
    orth = models["orthogonal"].eval()
    export_how = "lipkit.export"
    try:
        exported = lipkit.export(orth, example_input=x[:8])
    except Exception as e:  # noqa: BLE001 - fall back and say so
        notes.append(f"lipkit.export failed ({type(e).__name__}: {e}); used a plain nn.Linear copy")
        exported = plain_copy(orth)
        export_how = "plain copy"
    plain = models["plain"].eval()
    infer: dict[str, list[float]] = {"plain": [], "exported": []}
    with torch.no_grad():
        for _ in range(args.warmup):
            plain(x)
            exported(x)
        for _ in range(args.steps * 2):
            for name, m in (("plain", plain), ("exported", exported)):
                t0 = time.perf_counter()
                m(x)
                infer[name].append(time.perf_counter() - t0)
    infer_med = {k: statistics.median(t) for k, t in infer.items()}

    result = {
        "orth_step_ratio": med["orthogonal"] / med["plain"],
        "spectral_step_ratio": med["spectral"] / med["plain"],
        "orth_f32_step_ratio": med["orthogonal_f32"] / med["plain"],
        "export_infer_ratio": infer_med["exported"] / infer_med["plain"],
        "torchlip_step_ratio": med["torchlip"] / med["plain"] if "torchlip" in med else None,
        "orth_max_sigma_dev": dev_eval["orthogonal"],
        "orth_max_sigma_dev_train_mode": dev_train["orthogonal"],
        "torchlip_max_sigma_dev": dev_eval.get("torchlip"),
        "spectral_sigma_max_dev": dev_eval["spectral"],
        "torch_spectral_step_ratio": med["torch_spectral"] / med["plain"],
        "torch_spectral_sigma_max_dev": dev_eval["torch_spectral"],
        "median_step_ms": {v: 1e3 * t for v, t in med.items()},
        "min_step_ms": {v: 1e3 * min(t) for v, t in times.items()},  # robust to a busy machine
        "median_infer_ms": {k: 1e3 * t for k, t in infer_med.items()},
        "export": export_how,
        "net": "-".join(map(str, SIZES)),
        "activation": args.act,
        "batch": args.batch,
        "steps": args.steps,
        "optimizer": "Adam(lr=1e-3)",
        "notes": notes,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'variant':<12}{'step ms':>10}{'x plain':>10}{'max|s-1| eval':>16}  (spectral: |s_max-1|)")
    for v in variants:
        print(f"{v:<12}{1e3 * med[v]:>10.2f}{med[v] / med['plain']:>10.2f}"
              f"{dev_eval.get(v, float('nan')) if v != 'plain' else float('nan'):>16.2e}")
    print(f"inference after export: {1e3 * infer_med['exported']:.2f} ms vs plain "
          f"{1e3 * infer_med['plain']:.2f} ms (x{result['export_infer_ratio']:.2f})")
    for n in notes:
        print("note:", n)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
