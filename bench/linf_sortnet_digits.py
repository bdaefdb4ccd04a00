"""SortNet against the l_inf-distance net of the same size on digits, ``linf-digits`` schedule.

``python bench/linf_sortnet_digits.py [--threads N] [--epochs N]`` trains, one after the other,
``lipkit train --recipe linf-digits --widths 128,128,128`` with ``model: sortnet`` (``sort_q`` 0.7) and
with the recipe's ``model: linf-dist``, through ``python -m lipkit.cli``, each in a temporary folder,
and keeps per model the run report's ``clean``, ``certified[r]`` (fraction of the 450 test digits,
l_inf margin / 2), ``pgd[r]``, ``certificates_broken`` and ``train_seconds``.  Writes
``bench/results/linf_sortnet_digits.json``.
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

from _common import write_result

MODELS = {"sortnet": {"model": "sortnet", "sort_q": 0.7}, "linf-dist": {"model": "linf-dist"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's 30 epochs")
    args = ap.parse_args()
    t_start = time.time()
    env = dict(os.environ)
    out: dict = {"recipe": "linf-digits", "widths": [128, 128, 128], "models": {}}
    for name, keys in MODELS.items():
        config = {**keys, "name": name, "widths": [128, 128, 128]}
        if args.threads is not None:
            config["threads"] = args.threads
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.epochs is not None:
            config["epochs"] = args.epochs
        with tempfile.TemporaryDirectory(prefix="lipkit-sortnet-bench-") as tmp:
            cfg_path = Path(tmp) / "config.json"
            cfg_path.write_text(json.dumps(config))
            cmd = [sys.executable, "-m", "lipkit.cli", "train", "--recipe", "linf-digits", "--config",
                   str(cfg_path), "--out", tmp, "--no-progress"]
            subprocess.run(cmd, check=True, env=env)
            run_dir = Path(tmp) / name
            metrics = json.loads((run_dir / "metrics.json").read_text())
            run_config = json.loads((run_dir / "config.json").read_text())
        out["models"][name] = {
            "clean": metrics["clean_accuracy"],
            "certified": metrics["certified_accuracy"],
            "pgd": {r: e.get("pgd_robust_accuracy") for r, e in metrics["pgd"].items()},
            "certificates_broken": metrics["certificates_broken"],
            "train_seconds": round(metrics["train_seconds"], 1),
            "config": run_config,
        }
        print(name, json.dumps({k: v for k, v in out["models"][name].items() if k != "config"}), flush=True)
    path = write_result("linf_sortnet_digits", out, time.time() - t_start)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
