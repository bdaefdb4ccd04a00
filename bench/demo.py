"""The digits demo (`make demo`, i.e. `lipkit demo`): its configuration trained, certified and attacked
through the command line, with the figures of its report kept in ``bench/results/demo.json``.

``python bench/demo.py [--threads N]`` (about 1.5 min with 2 idle threads).  The run goes through
``python -m lipkit.cli train --config`` with `lipkit demo`'s configuration
(``lipkit.training.config.DEMO_CONFIG``); only the number of torch threads may differ (``--threads``,
default: the configuration's).  Two-thread training is not bit-reproducible, so figures move by a point
or two between runs.

Keys: ``clean``, ``certified[r]`` (fraction of the 450 test digits), ``pgd[r]`` (``broken`` of
``certified_points``: certified points that l2 PGD at radius r misclassifies; must be 0),
``train_seconds``, ``run_seconds`` (the whole command) and the run's ``config``.
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

from lipkit.training.config import DEMO_CONFIG


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the demo's)")
    ap.add_argument("--epochs", type=int, default=None, help="override the epochs (smoke runs only)")
    args = ap.parse_args()
    t_start = time.time()
    config = dict(DEMO_CONFIG)
    if args.threads is not None:
        config["threads"] = args.threads
    if args.epochs is not None:
        config["epochs"] = args.epochs
    with tempfile.TemporaryDirectory(prefix="lipkit-demo-bench-") as tmp:
        cfg_path = Path(tmp) / "demo.json"
        cfg_path.write_text(json.dumps(config))
        env = dict(os.environ)
        if args.threads is not None:
            env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, "-m", "lipkit.cli", "train", "--config", str(cfg_path), "--out", tmp,
               "--no-progress"]
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env)
        run_seconds = time.time() - t0
        run_dir = Path(tmp) / config["name"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        run_config = json.loads((run_dir / "config.json").read_text())
    figures = {
        "dataset": metrics["dataset"],
        "n_test": metrics["n_test"],
        "clean": metrics["clean_accuracy"],
        "certified": metrics["certified_accuracy"],
        "pgd": {r: {"broken": e["broken"], "certified_points": e["certified_points"], "steps": e["steps"]}
                for r, e in metrics["pgd"].items()},
        "certificates_broken": metrics["certificates_broken"],
        "lipschitz_bound": metrics["lipschitz_bound"],
        "train_seconds": round(metrics["train_seconds"], 1),
        "run_seconds": round(run_seconds, 1),
        "threads": run_config.get("threads"),
        "config": run_config,
    }
    path = write_result("demo", figures, time.time() - t_start)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
