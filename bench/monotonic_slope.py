"""Cost of deriving the slope ``lam`` of a MonotonicMLP: the registry's chain rule vs the fast path.

``lipkit.monotonic.fastbound.body_bound_1_inf`` computes ``lipschitz_bound(body, 1, "inf")`` with one rule
resolution per layer (the registry's chain rule resolves every layer on 9 norm pairs) and the same float
operations, so the value is bit-identical (checked here on every repeat).  Measured: the bound alone and a
full training step (forward, backward, Adam) of ``MonotonicMLP(23, 64, depth 2)`` (Heart's width) on a
batch of 256, A (registry) and B (fast) alternated in the same run, ``--repeats`` rounds of ``--steps``
each; medians and their ratio.  Runs on whatever machine it is given (the recorded one was shared).

    OMP_NUM_THREADS=1 python bench/monotonic_slope.py [--repeats 9] [--steps 40]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.monotonic import MonotonicMLP  # noqa: E402
from lipkit.monotonic import network as _network  # noqa: E402
from lipkit.monotonic.fastbound import body_bound_1_inf  # noqa: E402


def _registry_bound(body):
    return lipkit.lipschitz_bound(body, 1, math.inf)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    torch.manual_seed(0)
    model = MonotonicMLP(23, 64, 2, monotonic=[1, 1] + [0] * 21)
    x, y = torch.randn(256, 23), (torch.rand(256) > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    ways = {"registry": _registry_bound, "fast": body_bound_1_inf}
    bound_ms: dict[str, list[float]] = {k: [] for k in ways}
    step_ms: dict[str, list[float]] = {k: [] for k in ways}
    identical = True
    for _ in range(args.repeats):
        for name, fn in ways.items():  # A and B alternate within every round
            t = time.perf_counter()
            for _ in range(args.steps):
                fn(model.body)
            bound_ms[name].append((time.perf_counter() - t) / args.steps * 1e3)
            _network.body_bound_1_inf = fn  # what MonotonicNetwork.body_bound calls
            try:
                t = time.perf_counter()
                for _ in range(args.steps):
                    opt.zero_grad()
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
                    loss.backward()
                    opt.step()
                step_ms[name].append((time.perf_counter() - t) / args.steps * 1e3)
            finally:
                _network.body_bound_1_inf = body_bound_1_inf
            identical &= body_bound_1_inf(model.body) == _registry_bound(model.body)
    med = {k: {"bound_ms": statistics.median(bound_ms[k]), "train_step_ms": statistics.median(step_ms[k])}
           for k in ways}
    out = {
        "model": "MonotonicMLP(23, 64, depth=2), GroupSort, first layer one-inf; batch 256, Adam",
        "repeats": args.repeats, "steps": args.steps, "shared_machine": True,
        "registry": med["registry"], "fast": med["fast"],
        "bound_speedup": med["registry"]["bound_ms"] / med["fast"]["bound_ms"],
        "train_step_speedup": med["registry"]["train_step_ms"] / med["fast"]["train_step_ms"],
        "bit_identical": bool(identical),
    }
    path = write_result("monotonic_slope", out, time.time() - start)
    print(path, out)


if __name__ == "__main__":
    main()
