"""Certified l2 classification with spline activations vs MaxMin, at equal training time.

The digits demo network (``DEMO_CONFIG``: three orthogonal ``LipLinear`` layers of width 512, CE loss with
margin, Adam, one-cycle schedule) and the same architecture on Fashion-MNIST, each trained twice: with
``activation: maxmin`` and with ``activation: spline`` (``LinearSpline`` per hidden layer, 21 knots on
[-3, 3], TV(2) weight 1e-6).  Equal time: one epoch of each variant is timed first, and each variant gets
``floor(budget / epoch time)`` epochs (at least 1), so the one-cycle schedule completes in both.  The trained
network is exported (splines stay ``FrozenLinearSpline``, exact; output check at atol 1e-4 because the
exported cayley-orthogonal layers differ from the parametrised ones by a few 1e-6) and certified by
:func:`lipkit.compute_certificates` on the whole test split, with the a-priori round-off allowance (the
``rigorous`` flag says it applied).  Reported: clean accuracy and certified accuracy at l2 radius 0.5
(digits) and 0.25 (Fashion-MNIST).  The machine is shared: the time budgets are wall-clock.

    OMP_NUM_THREADS=1 python bench/splines_certified.py          # ~15 min

Conv setting (``--cnn``; the results go under the key ``cnn`` of the same results file, the dense figures are
kept): the same comparison on the l2 1-Lipschitz CNN of the trainer (``model: lipcnn``, channels [16, 32],
3x3 spectral ``LipConv2d`` with stride 2, the activation over channels, no dense hidden layer, orthogonal
head; spline: one ``LinearSpline`` per channel), same loss and optimiser settings as above, batch 128 on
Fashion-MNIST, certified with the bounds at the data's image size.

    OMP_NUM_THREADS=1 python bench/splines_certified.py --cnn    # ~15 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, results_dir, write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.training.config import DEMO_CONFIG, RunConfig  # noqa: E402
from lipkit.training.trainer import fit  # noqa: E402

SETTINGS = {"digits": {"radius": 0.5, "budget": 90.0}, "fashion-mnist": {"radius": 0.25, "budget": 240.0}}
CNN_SETTINGS = {"digits": {"radius": 0.5, "budget": 60.0}, "fashion-mnist": {"radius": 0.25, "budget": 300.0}}
#: the conv setting's network (``--cnn``): the trainer's ``model: lipcnn``
CNN = {"model": "lipcnn", "channels": [16, 32], "kernel_size": 3, "downsample": "stride",
       "conv_constraint": "spectral", "widths": []}


def config(dataset: str, activation: str, epochs: int, cnn: bool = False) -> RunConfig:
    extra = {"tv2_weight": 1e-6} if activation == "spline" else {}
    if cnn:
        extra.update(CNN, batch_size=128 if dataset == "fashion-mnist" else 64)
    return RunConfig.from_dict({**DEMO_CONFIG, "dataset": dataset, "activation": activation,
                                "epochs": epochs, "threads": 1, "name": f"{dataset}-{activation}", **extra})


def run(dataset: str, activation: str, budget: float, radius: float, split, folder: Path,
        cnn: bool = False) -> dict:
    t = time.perf_counter()
    fit(config(dataset, activation, 1, cnn), folder / f"probe-{dataset}-{activation}", split=split,
        progress=False)
    epoch_seconds = time.perf_counter() - t
    epochs = max(1, int(budget // epoch_seconds))
    cfg = config(dataset, activation, epochs, cnn)
    t = time.perf_counter()
    model, hist = fit(cfg, folder / cfg.name, split=split, progress=False)
    train_seconds = time.perf_counter() - t
    # atol 1e-4: the materialised cayley-orthogonal LipLinear weights differ from the parametrised forward
    # by a few 1e-6 (the splines export exactly); the certificate is about the exported (deployed) model
    shape = tuple(split.x_test.shape[1:])  # the bounds at the data's image size (convolutions: exact size)
    plain = lipkit.export(model, split.x_test[:256], atol=1e-4, input_shape=shape)
    res = lipkit.compute_certificates(plain, split.x_test, 2, input_shape=shape)
    correct = res.prediction == split.y_test
    return {"epochs": epochs, "epoch_seconds_probe": epoch_seconds, "train_seconds": train_seconds,
            "clean_accuracy": correct.double().mean().item(),
            "certified_accuracy": (correct & (res.radius >= radius)).double().mean().item(),
            "radius": radius, "lipschitz_bound": res.lipschitz, "roundoff_rigorous": res.roundoff_rigorous}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the time budgets")
    ap.add_argument("--cnn", action="store_true", help="the conv setting (results under the key 'cnn')")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cnn:
        return main_cnn(args.scale)
    t0 = time.perf_counter()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, s in SETTINGS.items():
            split = lipkit.load_dataset(dataset) if dataset == "fashion-mnist" else None
            if split is None:
                from lipkit.training.data import split_for_config

                split = split_for_config(config(dataset, "maxmin", 1))
            out[dataset] = {}
            for act in ("maxmin", "spline"):
                r = run(dataset, act, s["budget"] * args.scale, s["radius"], split, Path(tmp))
                out[dataset][act] = r
                print(f"{dataset} {act}: {r['epochs']} epochs, clean {r['clean_accuracy']:.4f}, certified@"
                      f"{s['radius']} {r['certified_accuracy']:.4f} (rigorous {r['roundoff_rigorous']})",
                      flush=True)
            out[dataset]["spline_minus_maxmin_certified"] = (out[dataset]["spline"]["certified_accuracy"]
                                                             - out[dataset]["maxmin"]["certified_accuracy"])
    figures = {"settings": out, "budgets_seconds": {d: s["budget"] * args.scale for d, s in SETTINGS.items()},
               "network": "DEMO_CONFIG: widths [512, 512, 512], orthogonal (cayley), CE with margin",
               "shared_machine": True}
    print(f"wrote {write_result('splines_certified', figures, time.perf_counter() - t0)}")


def main_cnn(scale: float) -> None:
    """The conv setting; written under ``cnn`` in ``splines_certified.json`` (other keys kept)."""
    from lipkit.training.data import split_for_config

    t0 = time.perf_counter()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        digits = split_for_config(config("digits", "maxmin", 1, cnn=True))
        for act in ("maxmin", "spline"):  # warm-up (first-call costs), so that the epoch probes are fair
            fit(config("digits", act, 1, cnn=True), Path(tmp) / f"warmup-{act}", split=digits, progress=False)
        for dataset, s in CNN_SETTINGS.items():
            split = split_for_config(config(dataset, "maxmin", 1, cnn=True))
            out[dataset] = {}
            for act in ("maxmin", "spline"):
                r = run(dataset, act, s["budget"] * scale, s["radius"], split, Path(tmp), cnn=True)
                out[dataset][act] = r
                print(f"cnn {dataset} {act}: {r['epochs']} epochs, clean {r['clean_accuracy']:.4f}, "
                      f"certified@{s['radius']} {r['certified_accuracy']:.4f} (rigorous "
                      f"{r['roundoff_rigorous']}, bound {r['lipschitz_bound']:.6f})", flush=True)
            out[dataset]["spline_minus_maxmin_certified"] = (out[dataset]["spline"]["certified_accuracy"]
                                                             - out[dataset]["maxmin"]["certified_accuracy"])
    path = results_dir() / "splines_certified.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    budgets = {d: s["budget"] * scale for d, s in CNN_SETTINGS.items()}
    data["cnn"] = {"settings": out, "budgets_seconds": budgets,
                   "network": f"lipcnn {CNN}, CE with margin as DEMO_CONFIG, batch 128 on fashion-mnist",
                   "shared_machine": True,
                   "command": "python " + " ".join(["bench/splines_certified.py", *sys.argv[1:]]),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "machine": machine(),
                   "seconds": round(time.perf_counter() - t0, 1)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path} (key 'cnn')")


if __name__ == "__main__":
    main()
