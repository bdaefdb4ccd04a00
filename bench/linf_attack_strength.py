"""How tight is the l_inf certificate of the ``linf-digits`` recipe?  Certified accuracy against attacks of
increasing strength, side by side on the same network and test points.

``python bench/linf_attack_strength.py [--run DIR] [--threads N]`` trains ``lipkit train --recipe
linf-digits`` (through ``python -m lipkit.cli``; or reuses a finished run folder ``--run``), certifies the
450 test digits at l_inf radius ``eps = 0.1`` (margin / 2 certificates of the exported network) and
attacks every test point with

* ``pgd_10x1``: lipkit's PGD, 10 steps, 1 start (the setting of the earlier ``linf_recipes.json`` figure);
* ``pgd_100x5``: lipkit's PGD, 100 steps, 5 random starts, on the whole ball (no pixel clamp, as the
  certificate);
* ``pgd_100x5_clamped``: the same inside the pixel box [0, 1];
* ``apgd_ce`` and ``apgd_dlr``: APGD from the maintained ``torchattacks`` package (Croce & Hein, ICML
  2020; cross-entropy and DLR losses, 100 steps, 5 restarts; inputs clamped to [0, 1] as torchattacks
  does).

Per attack: robust accuracy (correct and not broken), the number of certified points it broke (must be 0)
and its time; then the union (a point counts as robust only if no attack broke it).  The gap
``union robust - certified`` bounds how much any certificate could still gain.  Writes
``bench/results/linf_attack_strength.json``.

Needs ``pip install --no-deps torchattacks==3.5.1`` (``make bench`` does it): with its dependencies pip
would also install torchvision, which replaces the pinned torch build.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from lipkit.certify import compute_certificates, pgd  # noqa: E402
from lipkit.training.runs import load_run  # noqa: E402

EPS = 0.1
INF = float("inf")


def _train(out: Path, threads: int | None) -> Path:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "lipkit.cli", "train", "--recipe", "linf-digits", "--out", str(out),
           "--no-progress"]
    if threads is not None:
        cfg = out / "threads.json"
        cfg.write_text(json.dumps({"threads": threads}))
        cmd += ["--config", str(cfg)]
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(cmd, check=True, env=env)
    return out / "linf-digits"


def _torchattacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """torchattacks' APGD; it takes image batches (N, C, H, W), so the flat digits go in as 1 x 8 x 8."""
    import torchattacks

    side = int(round(x.shape[1] ** 0.5))
    images = x.reshape(len(x), 1, side, side)
    flat_model = torch.nn.Sequential(torch.nn.Flatten(), model)
    attack = torchattacks.APGD(flat_model, norm="Linf", eps=EPS, steps=100, n_restarts=5, loss=loss, seed=0)
    return attack(images, y).reshape_as(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a finished linf-digits run folder to reuse")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    args = ap.parse_args()
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="lipkit-attack-bench-") as tmp:
        run_dir = args.run if args.run is not None else _train(Path(tmp), args.threads)
        cfg, model, split = load_run(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = model.float().eval()
    x, y = split.x_test.float(), split.y_test
    res = compute_certificates(model, x, INF)
    correct = res.prediction == y
    certified = correct & (res.radius >= EPS)
    gen = torch.Generator().manual_seed(0)
    attacks = {
        "pgd_10x1": lambda: pgd(model, x, y, EPS, INF, steps=10, restarts=1, clamp=None, generator=gen),
        "pgd_100x5": lambda: pgd(model, x, y, EPS, INF, steps=100, restarts=5, clamp=None, generator=gen),
        "pgd_100x5_clamped": lambda: pgd(model, x, y, EPS, INF, steps=100, restarts=5, clamp=(0.0, 1.0),
                                         generator=gen),
        "apgd_ce": lambda: _torchattacks(model, x, y, "ce"),
        "apgd_dlr": lambda: _torchattacks(model, x, y, "dlr"),
    }
    robust_all = correct.clone()
    out: dict = {"recipe": "linf-digits", "eps": EPS, "test_points": len(y),
                 "clean": correct.double().mean().item(), "certified": certified.double().mean().item(),
                 "train_seconds": metrics.get("train_seconds"), "attacks": {}}
    for name, run in attacks.items():
        t0 = time.perf_counter()
        adv = run()
        seconds = time.perf_counter() - t0
        assert (adv - x).abs().max().item() <= EPS * (1 + 1e-6), name
        with torch.no_grad():
            still = model(adv).argmax(1) == y
        robust = correct & still
        robust_all &= still
        out["attacks"][name] = {"robust": robust.double().mean().item(),
                                "certified_broken": int((certified & ~still).sum()),
                                "seconds": round(seconds, 2)}
        print(name, out["attacks"][name], flush=True)
    out["union_robust"] = robust_all.double().mean().item()
    out["union_certified_broken"] = int((certified & ~robust_all).sum())
    out["gap_union_minus_certified"] = out["union_robust"] - out["certified"]
    import torchattacks

    out["torchattacks"] = torchattacks.__version__
    out["config"] = cfg.to_dict()
    path = write_result("linf_attack_strength", out, time.time() - t_start)
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
