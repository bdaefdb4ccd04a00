"""The monotone tabular recipes end to end: ``lipkit train --recipe monotonic-{compas,heart,autompg}``.

Runs each shipped recipe through the command line (train, export with the monotonicity re-check, certify,
report) into a temporary folder, ``--repeats`` times alternating the data sets (the machine is shared: the
median wall time is reported), and records per data set: the test metric of the recipe's fixed epoch,
validation metric, the wrapper's l_inf bound and ``lam``, certified accuracies (binary), the bound on the
change of the prediction per radius (regression), what PGD found, ``check_monotonic``'s worst violation
beyond round-off, the training and wall seconds, and what the l_inf radii mean in each monotone feature's
own unit (``r * std`` of the training split).

    OMP_NUM_THREADS=1 python bench/monotonic_recipes.py [--repeats 3]
    python bench/monotonic_recipes.py --markdown     # the docs/monotonic.md tables from the results file
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.cli.app import main as cli  # noqa: E402
from lipkit.training.config import load_recipe  # noqa: E402

DATASETS = ("compas", "heart", "autompg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print the docs tables from the results file")
    args = ap.parse_args()
    if args.markdown:
        print(markdown())
        return
    start = time.time()
    walls: dict[str, list[float]] = {d: [] for d in DATASETS}
    out: dict[str, dict] = {}
    for rep in range(args.repeats):
        for ds in DATASETS:  # alternated: every data set sees the same machine load
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                code = cli(["train", "--recipe", f"monotonic-{ds}", "--out", tmp, "--no-progress"])
                walls[ds].append(time.perf_counter() - t0)
                if code != 0:
                    raise SystemExit(f"lipkit train --recipe monotonic-{ds} failed with code {code}")
                run = Path(tmp) / f"monotonic-{ds}"
                m = json.loads((run / "metrics.json").read_text())
                if rep == 0:
                    out[ds] = summary(ds, m)
                else:  # seeded: every repeat must give the same model
                    again = summary(ds, m)
                    for k in ("test", "val", "lipschitz_bound"):
                        if again[k] != out[ds][k]:
                            raise SystemExit(f"{ds}: repeat {rep} gave {k} {again[k]} != {out[ds][k]}")
    for ds in DATASETS:
        out[ds]["wall_seconds_median"] = statistics.median(walls[ds])
        out[ds]["wall_seconds"] = walls[ds]
    out["note"] = ("shared 2-core machine; wall time of the whole command (train, export, certify, report) "
                   "in one process, data sets alternated; repeats must reproduce the same model")
    write_result("monotonic_recipes", out, time.time() - start)


def summary(ds: str, m: dict) -> dict:
    cfg = load_recipe(f"monotonic-{ds}")
    split = lipkit.load_dataset(ds, seed=cfg.data_seed)
    last = m["history"][-1]
    key = "accuracy" if m["task"] == "binary" else "mse"
    res = {"task": m["task"], "epochs": cfg.epochs, "metric": key, "test": last[f"test_{key}"],
           "val": last[f"val_{key}"], "lipschitz_bound": m["lipschitz_bound"], "lam": m["lam"],
           "train_seconds": m["train_seconds"], "certify_seconds": m["certify_seconds"],
           "certificates_broken": m["certificates_broken"],
           "violations": sum(c["violations"] for c in m["monotonic_check"].values()),
           "worst_beyond_roundoff": max(c["worst_beyond_roundoff"] for c in m["monotonic_check"].values()),
           "radius_in_units": {f: {f"{r:g}": r * split.raw_std[f] for r in cfg.radii}
                               for f in split.monotonic}}
    if m["task"] == "binary":
        res["certified_accuracy"] = m["certified_accuracy"]
        res["median_radius"] = m["radius_quantiles"]["0.5"]
        res["attack_success_at_3x_radius"] = m["pgd_own_radius"]["attack_success_at_3x_radius"]
    else:
        res["output_change"] = m["output_change"]
    return res


def markdown() -> str:
    """The docs/monotonic.md tables: each recipe's result, and its radii in the monotone features' units."""
    from _common import results_dir

    r = json.loads((results_dir() / "monotonic_recipes.json").read_text())
    rows = ["| recipe | epochs | test (val) | l_inf bound (lam) | certified accuracy at r = 0.01 / 0.05 "
            "| PGD: broken | check_monotonic: violations | train / whole command (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ds in DATASETS:
        e = r[ds]
        if e["metric"] == "accuracy":
            test = f"{100 * e['test']:.1f}% ({100 * e['val']:.1f}%)"
            cert = " / ".join(f"{100 * e['certified_accuracy'][k]:.1f}%" for k in ("0.01", "0.05"))
        else:
            test = f"MSE {e['test']:.2f} ({e['val']:.2f})"
            ch = e["output_change"]["0.05"]
            cert = (f"prediction moves <= {ch['output_change_bound']:.2f} mpg at r = 0.05 (PGD: "
                    f"{ch['pgd_max_change']:.2f})")
        rows.append(f"| monotonic-{ds} | {e['epochs']} | {test} | {e['lipschitz_bound']:.2f} "
                    f"({e['lam']:.4f}) | {cert} | {e['certificates_broken']} | {e['violations']} | "
                    f"{e['train_seconds']:.1f} / {e['wall_seconds_median']:.1f} |")
    rows += ["", "| recipe | monotone feature: r = 0.05 in its own unit |", "|---|---|"]
    for ds in DATASETS:
        units = ", ".join(f"{f} {v['0.05']:.3g}" for f, v in r[ds]["radius_in_units"].items())
        rows.append(f"| monotonic-{ds} | {units} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
