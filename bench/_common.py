"""Shared helpers of the bench scripts: machine description and the results file."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where results go: ``bench/results``, or ``$LIPKIT_BENCH_RESULTS`` (``bench/reproduce.py`` re-runs a
    bench into a scratch folder that way, to compare with the recorded file)."""
    override = os.environ.get("LIPKIT_BENCH_RESULTS")
    return Path(override) if override else RESULTS


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, torch threads and versions, load average at the time."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg": list(os.getloadavg()),
    }


def write_result(name: str, figures: dict[str, Any], seconds: float) -> Path:
    """Write ``bench/results/NAME.json``: the figures plus command, date, machine and seconds."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = dict(figures)
    out["command"] = "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    out["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out["machine"] = machine()
    out["seconds"] = round(seconds, 1)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path
