"""Re-run benches and compare their figures with the recorded ones, side by side.

``python bench/reproduce.py [NAME ...]`` runs each named bench (default: every bench below that takes
under 10 minutes here) with ``LIPKIT_BENCH_RESULTS`` pointing to a scratch folder, so the recorded
``bench/results/NAME.json`` stays as it is, then compares the figures listed in ``FIGURES`` (dotted keys)
and writes ``bench/results/reproduction.json``: per bench the command, per figure the recorded and the
re-run value and their difference, and whether the difference is within the bench's stated tolerance.

Tolerances are the run-to-run spread each bench can have, not a fudge: deterministic evaluations (bounds,
radii of fixed nets) must agree to 1e-9 relative; trained networks with two torch threads are not
bit-reproducible (reductions run in a different order), and their accuracies move by up to about a point
(``docs/benchmarks.md`` records 72.9 to 74.9% for the same demo configuration); timings are not compared.
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

from _common import RESULTS, write_result

#: bench -> (command arguments, {dotted key: absolute tolerance}); keys are read from both results files
FIGURES: dict[str, tuple[list[str], dict[str, float]]] = {
    "boolean_linf": (["bench/boolean_linf.py"], {
        "by_activation.abs.radius_min": 1e-9, "by_activation.relu.radius_min": 1e-9,
        "optimum.radius_min": 1e-9, "sortnet.radius_min": 1e-9, "sortnet.certified_at_target": 0.0}),
    "linf_sortnet_digits": (["bench/linf_sortnet_digits.py", "--threads", "1"], {
        "models.linf-dist.clean": 0.0, "models.linf-dist.certified.0.1": 0.0,
        "models.sortnet.clean": 0.0, "models.linf-dist.certificates_broken": 0.0}),
    "linf_interval_digits": (["bench/linf_interval_digits.py", "--out-dir", "{tmp}/run"], {
        "radii.0.05.certified_margin": 0.01, "radii.0.1.certified_margin": 0.01,
        "radii.0.1.certified_domain": 0.01, "radii.0.1.extra_points_domain": 2.0, "radii.0.1.broken": 0.0}),
    "demo": (["bench/demo.py", "--threads", "1"], {
        "clean": 0.01, "certified.0.5": 0.02, "certified.0.25": 0.02, "pgd.0.5.broken": 0.0,
        "certificates_broken": 0.0}),
    # timing ratios move with the machine's load; the recorded runs of the same code differed by < 0.1
    "layers": (["bench/layers.py", "--out", "{tmp}/layers.json"], {
        "orth_step_ratio": 0.25, "spectral_step_ratio": 0.15, "export_infer_ratio": 0.1,
        "orth_max_sigma_dev": 1e-7, "spectral_sigma_max_dev": 1e-7}),
}


def _get(data: dict, key: str):
    node = data
    for part in _split(key):
        node = node[part]
    return node


def _split(key: str) -> list[str]:
    """Dotted key, where numbers such as ``0.1`` are single parts."""
    parts, out = key.split("."), []
    i = 0
    while i < len(parts):
        if parts[i].isdigit() and i + 1 < len(parts) and parts[i + 1].isdigit():
            out.append(f"{parts[i]}.{parts[i + 1]}")
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(FIGURES), help=f"benches (default: {list(FIGURES)})")
    args = ap.parse_args()
    t0 = time.time()
    previous = RESULTS / "reproduction.json"  # benches re-run earlier keep their entries
    report: dict = {"benches": json.loads(previous.read_text())["benches"] if previous.exists() else {}}
    for name in args.names:
        if name not in FIGURES:
            raise SystemExit(f"unknown bench {name!r}; known: {', '.join(FIGURES)}")
        argv, keys = FIGURES[name]
        recorded = json.loads((RESULTS / f"{name}.json").read_text())
        with tempfile.TemporaryDirectory(prefix="lipkit-reproduce-") as tmp:
            cmd = [sys.executable] + [a.format(tmp=tmp) for a in argv]
            env = dict(os.environ, LIPKIT_BENCH_RESULTS=tmp)
            started = time.time()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            rerun = json.loads((Path(tmp) / f"{name}.json").read_text())
        figures = {}
        for key, tol in keys.items():
            old, new = _get(recorded, key), _get(rerun, key)
            diff = new - old
            figures[key] = {"recorded": old, "rerun": new, "difference": diff, "tolerance": tol,
                            "within": abs(diff) <= tol + 1e-9 * max(abs(old), 1.0)}
        report["benches"][name] = {"recorded_command": recorded.get("command"),
                                   "recorded_date": recorded.get("date"),
                                   "rerun_command": " ".join(["python", *argv]),
                                   "rerun_seconds": round(time.time() - started, 1), "figures": figures,
                                   "all_within": all(f["within"] for f in figures.values())}
        print(name, json.dumps(report["benches"][name]["figures"]), flush=True)
    report["all_within"] = all(b["all_within"] for b in report["benches"].values())
    path = write_result("reproduction", report, time.time() - t0)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
