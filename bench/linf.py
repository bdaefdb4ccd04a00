"""Benchmark: l_inf-distance layer forward + backward, fused kernel vs naive autograd vs nn.Linear.

    .venv/bin/python bench/linf.py [--batch 512 --in-features 784 --out-features 1024 --repeats 5]

Times one forward + backward (gradients for input and weight, as in a hidden layer) of

* ``fused``: :func:`lipkit.layers.distance_kernels.linf_dist` (blocked, argmax + scatter backward);
* ``naive``: ``(x[:, None] - w[None]).abs().amax(-1)`` with autograd.  It needs several ``B x m x n``
  tensors (1.6 GB each at the default shape), so it runs on ``--naive-batch`` rows and its time is
  **extrapolated linearly** to the full batch (its cost is linear in the batch; the extrapolation is
  reported as such in the JSON);
* ``linear``: ``nn.Linear`` of the same shape (BLAS).

Reports medians, ratios and peak memory of one fused / naive step (torch profiler memory events),
and writes ``bench/results/linf.json``.  Timings on a shared 2-core machine are noisy; rerun idle.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lipkit.layers.distance_kernels import linf_dist, linf_dist_reference


def _median_time(step: Callable[[], None], repeats: int) -> tuple[float, list[float]]:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _peak_bytes(step: Callable[[], None]) -> int:
    """Peak of the running sum of allocations minus frees recorded by the torch profiler in one step.

    Each event's *self* memory is counted at its start when positive (allocation) and at its end when
    negative (frees inside a parent op are only known per op), which can only over-estimate the peak.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes = sorted(
        (e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end, e.self_cpu_memory_usage)
        for e in prof.events() if e.self_cpu_memory_usage
    )
    cur = peak = 0
    for _, delta in changes:
        cur += delta
        peak = max(peak, cur)
    return peak


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--in-features", type=int, default=784)
    ap.add_argument("--out-features", type=int, default=1024)
    ap.add_argument("--naive-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "linf.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    b, n, m = args.batch, args.in_features, args.out_features
    x = torch.randn(b, n, requires_grad=True)
    w = torch.randn(m, n, requires_grad=True)
    g = torch.randn(b, m)
    nb = min(args.naive_batch, b)
    xn = x[:nb].detach().clone().requires_grad_()
    gn = g[:nb]
    lin = nn.Linear(n, m)
    xl = torch.randn(b, n, requires_grad=True)

    def fused() -> None:
        x.grad = w.grad = None
        linf_dist(x, w).backward(g)

    def naive() -> None:
        xn.grad = w.grad = None
        linf_dist_reference(xn, w).backward(gn)

    def linear() -> None:
        xl.grad = None
        lin.zero_grad(set_to_none=True)
        lin(xl).backward(g)

    # sanity: the fused kernel agrees with the naive one on the naive sub-batch
    with torch.no_grad():
        assert torch.equal(linf_dist(xn, w), linf_dist_reference(xn, w))

    t_fused, all_fused = _median_time(fused, args.repeats)
    t_naive_part, all_naive = _median_time(naive, max(1, min(args.repeats, 3)))
    t_naive = t_naive_part * b / nb
    t_linear, all_linear = _median_time(linear, args.repeats)
    mem_fused = _peak_bytes(fused)
    mem_naive_part = _peak_bytes(naive)

    result = {
        "benchmark": "l_inf-distance layer forward+backward (grad x and w)",
        "shape": {"batch": b, "in_features": n, "out_features": m, "dtype": "float32"},
        "seconds_median": {"fused": t_fused, "naive_extrapolated": t_naive,
                           "naive_measured_sub_batch": t_naive_part, "linear": t_linear},
        "seconds_all": {"fused": all_fused, "naive_sub_batch": all_naive, "linear": all_linear},
        "naive_sub_batch": nb,
        "naive_extrapolation": f"naive measured on {nb} rows, time scaled linearly by {b}/{nb}",
        "speed": {
            "vs_naive": t_naive / t_fused,
            "vs_linear": t_fused / t_linear,
            "note": "vs_naive = naive time / fused time (speed-up, target >= 20); "
                    "vs_linear = fused time / nn.Linear time (slow-down, target <= 4)",
        },
        "peak_memory_bytes": {
            "fused": mem_fused,
            "naive_sub_batch": mem_naive_part,
            "naive_extrapolated": int(mem_naive_part * b / nb),
            "note": "torch profiler [memory] events of one step, running sum of allocations and frees",
        },
        "command": " ".join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }
    result["seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"fused  {t_fused * 1e3:9.1f} ms   peak {mem_fused / 2**20:8.1f} MiB")
    print(f"naive  {t_naive * 1e3:9.1f} ms   (extrapolated from batch {nb}: {t_naive_part * 1e3:.1f} ms; "
          f"peak {mem_naive_part / 2**20:.1f} MiB at that batch)")
    print(f"linear {t_linear * 1e3:9.1f} ms")
    print(f"fused is {t_naive / t_fused:.1f}x faster than naive and "
          f"{t_fused / t_linear:.1f}x slower than nn.Linear")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
