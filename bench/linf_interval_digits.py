"""Interval certificates against the margin certificate on the ``linf-digits`` recipe, side by side.

``python bench/linf_interval_digits.py [--out-dir DIR]`` trains ``lipkit train --recipe linf-digits``
into ``DIR`` (skipped when the run exists; re-running resumes), then certifies the 450 test digits at
each of the recipe's radii three ways: margin / 2 (``lipkit.certify``, the baseline), interval bounds
on the whole ball, and interval bounds on the ball clipped to the pixel domain [0, 1]
(``lipkit.training.report.interval_figures``, with a PGD check of the points only the interval bounds
certify).  Writes ``bench/results/linf_interval_digits.json``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="runs/interval-digits")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = Path(args.out_dir) / "linf-digits"
    if not (run / "metrics.json").exists():
        cmd = [sys.executable, "-c", "from lipkit.cli import main; main()", "train", "--recipe",
               "linf-digits", "--out", str(args.out_dir), "--no-progress"]
        subprocess.run(cmd, check=True)
    from lipkit.training.report import interval_figures, load_run

    cfg, model, split = load_run(run)
    margin = json.loads((run / "metrics.json").read_text())["certified_accuracy"]
    whole = interval_figures(model, split, cfg.radii, None, pgd_steps=50, seed=cfg.seed)
    clipped = interval_figures(model, split, cfg.radii, (0.0, 1.0), pgd_steps=50, seed=cfg.seed)
    rows = {}
    for r in cfg.radii:
        key = f"{r:g}"
        rows[key] = {
            "certified_margin": margin[key],
            "certified_interval": whole["certified_accuracy"][key],
            "certified_domain": clipped["certified_accuracy"][key],
            "extra_points_interval": whole["interval_only_points"][key],
            "extra_points_domain": clipped["interval_only_points"][key],
            "broken": whole["broken"][key] + clipped["broken"][key],
        }
        print(key, json.dumps(rows[key]), flush=True)
    write_result("linf_interval_digits", {"n_test": len(split.y_test), "radii": rows},
                 time.perf_counter() - t0)


if __name__ == "__main__":
    main()
