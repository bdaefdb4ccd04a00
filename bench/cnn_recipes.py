"""The l2 CNN recipes (``model: lipcnn``) end to end: train, export, certify, PGD-check.

``digits-cnn`` runs as shipped (60 epochs); ``fmnist-cnn`` is compressed to ``--fmnist-epochs`` epochs (the
recipe has 20; the one-cycle schedule is completed over the shorter run).  Each run goes through the
pipeline of ``lipkit train``: :func:`lipkit.training.trainer.fit`, :func:`lipkit.export` (bounds at the
data's image size), :func:`lipkit.training.report.certify_run` (sound certificates with the round-off
allowance, PGD inside every certified ball at each radius and at 0.999 x each point's own radius).  One
torch thread (the machine is shared: the seconds are wall-clock on a busy 2-core box).

    OMP_NUM_THREADS=1 python bench/cnn_recipes.py                  # ~15 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.training.config import load_recipe  # noqa: E402
from lipkit.training.data import split_for_config  # noqa: E402
from lipkit.training.report import certify_run  # noqa: E402
from lipkit.training.trainer import fit  # noqa: E402


def run(name: str, epochs: int | None, folder: Path) -> dict:
    cfg = load_recipe(name).replace(threads=1, epochs=epochs)
    split = split_for_config(cfg)
    model, hist = fit(cfg, folder / name, split=split, progress=False)
    shape = tuple(split.x_test.shape[1:])
    plain = lipkit.export(model, split.x_test[:256], p=2, input_shape=shape)
    m = certify_run(plain, split, cfg.radii, pgd_steps=cfg.pgd_steps, seed=cfg.seed, p=2)
    return {"epochs": cfg.epochs, "recipe_epochs": load_recipe(name).epochs,
            "train_seconds": hist["train_seconds"],
            "clean_accuracy": m["clean_accuracy"], "certified_accuracy": m["certified_accuracy"],
            "lipschitz_bound": m["lipschitz_bound"], "certificates_broken": m["certificates_broken"],
            "pgd_steps": cfg.pgd_steps, "certify_seconds": m["certify_seconds"],
            "pgd_robust_accuracy": {r: e.get("pgd_robust_accuracy") for r, e in m["pgd"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fmnist-epochs", type=int, default=3, help="epochs of the compressed fmnist-cnn run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, epochs in (("digits-cnn", None), ("fmnist-cnn", args.fmnist_epochs)):
            out[name] = run(name, epochs, Path(tmp))
            r = out[name]
            print(f"{name}: {r['epochs']} epochs, clean {r['clean_accuracy']:.4f}, certified "
                  f"{r['certified_accuracy']}, bound {r['lipschitz_bound']:.6f}, broken "
                  f"{r['certificates_broken']}", flush=True)
    out["shared_machine"] = True
    print(f"wrote {write_result('cnn_recipes', out, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
