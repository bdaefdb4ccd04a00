"""Benchmark: l_inf-distance layer forward + backward, fused kernels vs naive autograd vs nn.Linear.

    .venv/bin/python bench/linf.py [--batch 512 --in-features 784 --out-features 1024 --rounds 7]

Times one forward + backward (gradients for input and weight, as in a hidden layer) of

* ``native``: :func:`lipkit.nn.distance.kernels.linf_dist`, C++ backend (argmax codes + scatter);
* ``torch``: the same function with the pure-torch fallback backend;
* ``naive``: ``(x[:, None] - w[None]).abs().amax(-1)`` with autograd.  At the default shape every
  ``B x m x n`` float32 tensor is 1.6 GB and autograd keeps several, so it runs on ``--naive-batch``
  rows and its time is **extrapolated linearly** to the full batch (its cost is linear in the batch;
  the JSON says so and also gives the measured sub-batch time);
* ``linear``: ``nn.Linear`` of the same shape (BLAS), the cost of an ordinary layer.

Also timed (native backend, same shape, same rounds), for the record: ``sortnet_train`` (a
``SortNeuronLinear`` training step, q = 0.5, one Bernoulli mask per 16 rows), ``sortnet_eval_k8``
(exact top-8 SortNet forward without gradients) and ``lp8`` (the l_8 relaxation, forward+backward).

The variants run in alternating order, one step each per round (A B C D, B C D A, ...), so that a
load change on a shared machine hits all of them; the figures are medians over rounds of the wall
time, and also of the process CPU time (less sensitive to other processes on the machine).

Peak memory: each variant runs once in a fresh subprocess, which reports the growth of its peak
resident set size over one step after setting up its inputs (Linux ``/proc``).  That counts every
allocation (torch's and the C++ kernels' own buffers).  The fused kernels should need ``O(B x m)``
(outputs, saved argmax codes, gradients of the inputs' size), the naive one ``O(B x m x n)``.

Writes ``bench/results/linf.json`` (read-modify-write: keys of other benchmarks, e.g. ``fmnist``,
are kept).  Run it on an idle machine for figures to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from lipkit.nn.distance import native as distance_native  # noqa: E402
from lipkit.nn.distance.kernels import (  # noqa: E402
    linf_dist,
    linf_dist_reference,
    lp_dist,
    native_available,
    sort_dist,
    sortnet_coefficients,
)
from lipkit.nn.distance.layers import SortNeuronLinear  # noqa: E402

VARIANTS = ("native", "torch", "naive", "linear")
OTHERS = ("sortnet_train", "sortnet_eval_k8", "lp8")


def _setup(b: int, n: int, m: int, nb: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, n, generator=g).requires_grad_(),
        "w": torch.randn(m, n, generator=g).requires_grad_(),
        "g": torch.randn(b, m, generator=g),
        "xn": torch.randn(nb, n, generator=g).requires_grad_(),
        "gn": torch.randn(nb, m, generator=g),
        "lin": nn.Linear(n, m),
        "sortnet": SortNeuronLinear(n, m, q=0.5, sub_batch=16).train(),
        "coef8": sortnet_coefficients(0.5, n, 8),
    }


def _step(name: str, s: dict) -> Callable[[], None]:
    x, w, g, lin = s["x"], s["w"], s["g"], s["lin"]

    def native() -> None:
        x.grad = w.grad = None
        linf_dist(x, w, backend="native").backward(g)

    def torch_backend() -> None:
        x.grad = w.grad = None
        linf_dist(x, w, backend="torch").backward(g)

    def naive() -> None:
        s["xn"].grad = w.grad = None
        linf_dist_reference(s["xn"], w).backward(s["gn"])

    def linear() -> None:
        x.grad = None
        lin.zero_grad(set_to_none=True)
        lin(x).backward(g)

    def sortnet_train() -> None:
        x.grad = None
        s["sortnet"].zero_grad(set_to_none=True)
        s["sortnet"](x).backward(g)

    def sortnet_eval_k8() -> None:
        with torch.no_grad():
            sort_dist(x, w, s["coef8"], backend="native")

    def lp8() -> None:
        x.grad = w.grad = None
        lp_dist(x, w, 8.0, backend="native").backward(g)

    return {"native": native, "torch": torch_backend, "naive": naive, "linear": linear,
            "sortnet_train": sortnet_train, "sortnet_eval_k8": sortnet_eval_k8, "lp8": lp8}[name]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure_step_peak(name: str, b: int, n: int, m: int, nb: int, threads: int) -> int:
    """In this (fresh) process: set up, then return the peak RSS growth (bytes) during one step.

    Linux: the peak-RSS counter is reset after the setup (``/proc/self/clear_refs``), and the step's
    peak is ``VmHWM`` minus the resident size before the step.  (``ru_maxrss`` cannot be used: it
    survives ``exec`` and would report the parent benchmark's own peak.)
    """
    torch.set_num_threads(threads)
    native_available()
    _step(name, _setup(8, 16, 16, 4))()  # one-time costs (autograd engine, thread pools) on a tiny case
    s = _setup(b, n, m, nb)
    step = _step(name, s)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    return 1024 * (_status_kb("VmHWM") - before)


def _peak_rss_child(name: str, b: int, n: int, m: int, nb: int, threads: int) -> int:
    """Peak RSS growth (bytes) of one ``name`` step, measured in a fresh process."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import linf\n"
        f"print(linf._measure_step_peak({name!r}, {b}, {n}, {m}, {nb}, {threads}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


# top-level keys of an earlier version of this script, dropped when the file is rewritten
_STALE = ("benchmark", "shape", "seconds_median", "seconds_all", "naive_sub_batch", "naive_extrapolation",
          "peak_memory_bytes")


def _merge_write(path: Path, figures: dict) -> None:
    """Update ``path`` with ``figures``, keeping the keys other benchmarks wrote there (``fmnist``...)."""
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    for key in _STALE:
        old.pop(key, None)
    old.update(figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--in-features", type=int, default=784)
    ap.add_argument("--out-features", type=int, default=1024)
    ap.add_argument("--naive-batch", type=int, default=32, help="rows the naive variant runs on")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (one step of each per round)")
    ap.add_argument("--torch-rounds", type=int, default=3, help="rounds that include the torch backend")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--out", type=Path, default=RESULTS / "linf.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not native_available():
        raise SystemExit("bench/linf.py: the native kernels are unavailable: "
                         f"{distance_native.unavailable_reason()}")
    t_start = time.perf_counter()
    b, n, m = args.batch, args.in_features, args.out_features
    nb = min(args.naive_batch, b)
    s = _setup(b, n, m, nb)

    # correctness on the naive sub-batch: same values (exact) for both fused backends
    with torch.no_grad():
        ref = linf_dist_reference(s["x"][:nb], s["w"])
        for backend in ("native", "torch"):
            assert torch.equal(linf_dist(s["x"][:nb], s["w"], backend=backend), ref)

    steps = {name: _step(name, s) for name in VARIANTS + OTHERS}
    for name, step in steps.items():  # warm-up (the torch backend needs none: it has no cache)
        if name != "torch":
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    names = VARIANTS + OTHERS
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name == "torch" and r >= args.torch_rounds:
                continue
            c0, t0 = time.process_time(), time.perf_counter()
            steps[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    scale = {"naive": b / nb}
    med = {k: statistics.median(v) * scale.get(k, 1.0) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) * scale.get(k, 1.0) for k, v in cpu.items()}

    memory: dict = {"unit": "MB (1e6 bytes)",
                    "method": "peak RSS growth (VmHWM after clear_refs) over one step in a fresh process"}
    if not args.no_memory:
        threads = torch.get_num_threads()
        for name in VARIANTS:
            memory[name] = _peak_rss_child(name, b, n, m, nb, threads) / 1e6
        memory["naive_extrapolated"] = memory["naive"] * b / nb
        memory["naive_measured_rows"] = nb
        memory["broadcast_tensor_full_batch"] = b * m * n * 4 / 1e6
        memory["outputs_B_x_m"] = b * m * 4 / 1e6

    figures = {
        "speed": {
            "vs_naive": med["naive"] / med["native"],
            "vs_linear": med["native"] / med["linear"],
            "torch_backend_vs_naive": med["naive"] / med["torch"],
            "torch_backend_vs_linear": med["torch"] / med["linear"],
            "cpu_time_vs_naive": med_cpu["naive"] / med_cpu["native"],
            "cpu_time_vs_linear": med_cpu["native"] / med_cpu["linear"],
            "note": "vs_naive = naive time / native fused time (speed-up, target >= 20); vs_linear = native "
                    "fused time / nn.Linear time (slow-down, target <= 4); medians of wall time over "
                    "alternating rounds; cpu_time_*: the same ratios of process CPU time",
            "shape": {"batch": b, "in_features": n, "out_features": m, "dtype": "float32"},
            "seconds_median": med,
            "cpu_seconds_median": med_cpu,
            "naive_extrapolation": f"naive measured on {nb} rows, times scaled linearly by {b}/{nb}",
            "seconds_all": {k: [round(t, 6) for t in v] for k, v in wall.items()},
            "rounds": args.rounds,
            "other_kernels_native": {
                name: {"seconds_median": med[name], "vs_linear": med[name] / med["linear"]} for name in OTHERS
            },
        },
        "memory": memory,
    }
    seconds = time.perf_counter() - t_start
    figures.update({
        "command": " ".join(["python", "bench/linf.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(seconds, 1),
    })
    _merge_write(args.out, figures)
    for name in VARIANTS + OTHERS:
        extra = f"   peak +{memory[name]:8.1f} MB" if name in memory else ""
        note = f" (extrapolated from {nb} rows)" if name == "naive" else ""
        print(f"{name:7s} {med[name] * 1e3:9.1f} ms wall  {med_cpu[name] * 1e3:9.1f} ms cpu{extra}{note}")
    print(f"native fused: {figures['speed']['vs_naive']:.1f}x faster than naive, "
          f"{figures['speed']['vs_linear']:.2f}x the time of nn.Linear "
          f"(load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads)")
    print(f"wrote {args.out} in {seconds:.0f} s")
    return figures


if __name__ == "__main__":
    main()
