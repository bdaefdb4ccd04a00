"""Which change to the ``linf-fmnist`` recipe moves certified accuracy?  Short runs, side by side.

Each variant is ``lipkit train --recipe linf-fmnist --epochs N`` (schedules compressed to N epochs:
their windows are fractions of the run) plus the variant's flags, trained one after the other on
the same machine, then certified and attacked on the full 10k test set by the run's own report
(margin / 2, PGD-l_inf at 0.1) and by :func:`lipkit.interval_certified` on the ball clipped to the
pixel domain.  The baseline is the recipe itself at the same N.  Compressed runs rank variants; they
do not predict the 100-epoch figures (8 epochs of the recipe of 2026-11-28: ~66% certified, 100
epochs: ~75%).

``python bench/linf_fmnist_variants.py [--epochs 8] [--out-dir DIR] [--only base,head512,...]
[--results-name NAME]`` writes ``bench/results/NAME.json`` (default ``linf_fmnist_variants``): per
variant ``certified``, ``certified_domain``, ``clean``, ``pgd``, ``train_seconds`` and
``certified_minus_base``.  Runs resume from their
checkpoints, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "base": [],
    # the recipe without standardised_init: raw N(0, 1) / identity-10 init at lr 0.02 (the recipe
    # before 2026-11-30 was this without the shifts: add --augment-shift 0)
    "raw-init": ["--lr", "0.02", "--no-standardised-init"],
    "head512": ["--head-width", "512"],  # hybrid head: LipLinear(inf) -> relu -> Linear
    "margin0.2": ["--margin", "0.2"],  # training radius 0.2 instead of 0.15
    "depth5": ["--widths", "1024,1024,1024,1024,1024"],  # one more l_inf-distance layer
    "width2048": ["--widths", "2048,2048,2048,2048"],  # twice as wide (~3x the training time)
    # Zhang et al.'s MNIST setting (training radius 0.3 = 3 x eps, CE weight 0.1 -> 0.001, temperature 1
    # on standardised logits = 1 / 0.353 on pixel-unit ones) with the standardised init
    "mnist-setting": ["--margin", "0.3", "--temperature", "2.83", "--ce-weight", "0.1,0.001"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out-dir", default="runs/fmnist-variants")
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names")
    ap.add_argument("--results-name", default="linf_fmnist_variants", help="bench/results/NAME.json")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    t0 = time.perf_counter()
    from lipkit.training.report import interval_figures, load_run

    rows: dict[str, dict] = {}
    for name in names:
        run = Path(args.out_dir) / name
        if not (run / "metrics.json").exists():
            cmd = [sys.executable, "-c", "from lipkit.cli import main; main()", "train", "--recipe",
                   "linf-fmnist", "--epochs", str(args.epochs), "--name", name, "--out", str(args.out_dir),
                   "--no-progress", *VARIANTS[name]]
            subprocess.run(cmd, check=True)
        m = json.loads((run / "metrics.json").read_text())
        _, model, split = load_run(run)
        dom = interval_figures(model, split, [0.1], (0.0, 1.0), pgd_steps=20)
        rows[name] = {
            "flags": " ".join(VARIANTS[name]),
            "certified": m["certified_accuracy"]["0.1"],
            "certified_0.05": m["certified_accuracy"].get("0.05"),
            "certified_domain": dom["certified_accuracy"]["0.1"],
            "domain_certificates_broken": dom["broken"]["0.1"],
            "clean": m["clean_accuracy"],
            "pgd": m["pgd"]["0.1"]["pgd_robust_accuracy"],
            "certificates_broken": m["certificates_broken"],
            "train_seconds": m["train_seconds"],
        }
        print(name, json.dumps(rows[name]), flush=True)
    if "base" in rows:
        for r in rows.values():
            r["certified_minus_base"] = r["certified"] - rows["base"]["certified"]
    write_result(args.results_name, {"epochs": args.epochs, "variants": rows},
                 time.perf_counter() - t0)


if __name__ == "__main__":
    main()
