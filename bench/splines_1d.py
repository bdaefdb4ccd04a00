"""The 1-D fitting study of Ducotterd et al. (JMLR 2024): learnable splines vs fixed 1-Lipschitz activations.

Networks ``[1, 10, 10, 10, 1]`` of orthogonal ``LipLinear`` layers (1-Lipschitz in l2) with one activation
fit three 1-Lipschitz functions on ``[-1, 1]`` from 1000 random training points:

* ``pwl_pm1``: a random piecewise-linear function with 10 random breakpoints and slopes alternating +-1;
* ``pwl_pm1_0``: the same with slopes drawn from {-1, 0, 1} (each piece differs from the one before);
* ``cos``: ``cos(7 pi x) / (7 pi)``.

Activations: ``spline_project`` and ``spline_clamp`` (``LinearSpline``, 41 knots on ``[-2, 2]``, initialised
as ``|x|``, the two slope maps), ``relu``, ``abs``, ``maxmin`` (GroupSort with groups of 2) and
``householder``.
Every network trains full-batch with Adam and a cosine learning rate for the same number of steps.  Each
activation has a 4-point grid, chosen on a validation set (1000 other random points; mean of 2 seeds): the
learning rate (4 values) for fixed activations, learning rate x TV(2) weight (2 x 2) for splines.  The chosen
point is then trained with 10 fresh seeds and evaluated on a test grid of 10001 equispaced points; we report
the median and minimum test MSE.

``step_ratio_vs_groupsort``: median time of one training step of the spline network over the MaxMin network
(same layers), the two alternating in the same run, 15 rounds of 30 steps; ``_wide`` does the same for a
``[784, 256, 256, 10]`` network on batches of 256.  The machine is shared: the timings are medians of
alternating runs and their ratio is what to read.

    OMP_NUM_THREADS=1 python bench/splines_1d.py            # ~15-20 min on one core
    OMP_NUM_THREADS=1 python bench/splines_1d.py --quick    # a smoke run (not written to results)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_dir, write_result  # noqa: E402

import lipkit  # noqa: E402

FUNCTIONS = ("pwl_pm1", "pwl_pm1_0", "cos")
ACTIVATIONS = ("spline_project", "spline_clamp", "relu", "abs", "maxmin", "householder")
LR_GRID = (3e-3, 1e-2, 3e-2, 1e-1)
SPLINE_GRID = ((1e-2, 1e-7), (1e-2, 1e-5), (3e-2, 1e-7), (3e-2, 1e-5))  # (lr, tv2 weight)


def target(name: str, x: torch.Tensor) -> torch.Tensor:
    """The target functions, in float64, all 1-Lipschitz on [-1, 1] (fixed by seed 1234)."""
    if name == "cos":
        return torch.cos(7 * math.pi * x) / (7 * math.pi)
    g = torch.Generator().manual_seed(1234 + FUNCTIONS.index(name))
    breaks = torch.sort(torch.rand(10, generator=g, dtype=torch.float64) * 2 - 1).values
    if name == "pwl_pm1":
        first = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
        slopes = first * (-1.0) ** torch.arange(11, dtype=torch.float64)
    else:
        vals, prev = [], None
        for _ in range(11):
            choices = [s for s in (-1.0, 0.0, 1.0) if s != prev]
            prev = choices[int(torch.randint(len(choices), (1,), generator=g))]
            vals.append(prev)
        slopes = torch.tensor(vals, dtype=torch.float64)
    # f(x) = sum_k s_k |[-1, x] cap piece_k|
    edges = torch.cat([torch.tensor([-1.0], dtype=torch.float64), breaks])
    ends = torch.cat([breaks, torch.tensor([1.0], dtype=torch.float64)])
    xs = x.reshape(-1, 1).double()
    covered = (torch.minimum(xs, ends) - edges).clamp(min=0)
    y = (covered * slopes).sum(1)
    return y.reshape(x.shape)


def make_activation(name: str, width: int) -> nn.Module:
    if name.startswith("spline"):
        return lipkit.LinearSpline(width, num_knots=41, knot_range=2.0, init="absolute_value",
                                   constraint=name.split("_")[1])
    return {"relu": nn.ReLU(), "abs": lipkit.Abs(), "maxmin": lipkit.MaxMin(),
            "householder": lipkit.Householder(width)}[name]


def make_net(act: str, widths=(1, 10, 10, 10, 1)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(lipkit.LipLinear(a, b, constraint="orthogonal"))
        if i < len(widths) - 2:
            layers.append(make_activation(act, b))
    return nn.Sequential(*layers)


def train(act: str, fn: str, lr: float, tv2: float, seed: int, steps: int,
          data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, nn.Module]:
    """Train one network; returns (validation MSE, test MSE, model)."""
    torch.manual_seed(seed)
    net = make_net(act)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x, y = data["train"]
    splines = [m for m in net.modules() if isinstance(m, lipkit.LinearSpline)]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((net(x) - y) ** 2).mean()
        if tv2 > 0 and splines:
            loss = loss + tv2 * sum(m.tv2() for m in splines).float()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        val = ((net(data["val"][0]) - data["val"][1]) ** 2).mean().item()
        test = ((net(data["test"][0]) - data["test"][1]) ** 2).mean().item()
    bound = lipkit.lipschitz_bound(net, 2)
    if not bound <= 1.0 + 1e-5:
        raise AssertionError(f"{act}: the network's bound is {bound}, not 1")
    return val, test, net


def datasets(fn: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    xtr = torch.rand(1000, 1, generator=g, dtype=torch.float64) * 2 - 1
    xva = torch.rand(1000, 1, generator=g, dtype=torch.float64) * 2 - 1
    xte = torch.linspace(-1, 1, 10001, dtype=torch.float64)[:, None]
    return {k: (v.float(), target(fn, v).float()) for k, v in (("train", xtr), ("val", xva), ("test", xte))}


def step_ratio(widths: tuple[int, ...], batch: int, rounds: int = 15, steps: int = 30) -> dict[str, float]:
    """Median ms per training step of the spline and MaxMin networks, alternating."""
    torch.manual_seed(0)
    x = torch.randn(batch, widths[0])
    y = torch.randn(batch, widths[-1])
    nets = {a: make_net(a, widths) for a in ("spline_project", "maxmin")}
    opts = {a: torch.optim.Adam(n.parameters(), lr=1e-3) for a, n in nets.items()}
    times: dict[str, list[float]] = {a: [] for a in nets}
    for r in range(rounds + 1):
        for a, net in nets.items():
            t = time.perf_counter()
            for _ in range(steps):
                opts[a].zero_grad(set_to_none=True)
                ((net(x) - y) ** 2).mean().backward()
                opts[a].step()
            if r:  # round 0 warms up
                times[a].append((time.perf_counter() - t) / steps * 1e3)
    med = {a: statistics.median(v) for a, v in times.items()}
    return {"spline_ms": med["spline_project"], "maxmin_ms": med["maxmin"],
            "ratio": med["spline_project"] / med["maxmin"]}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(12, 3.6))
    for ax, fn in zip(axes, FUNCTIONS, strict=True):
        r = results[fn]
        names = list(ACTIVATIONS)
        ax.boxplot([r[a]["test_mse_all"] for a in names], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("spline_", "spl_") for n in names], rotation=45)
        ax.set_yscale("log")
        ax.set_title(fn)
        ax.set_ylabel("test MSE")
    fig.suptitle("[1,10,10,10,1] orthogonal nets, 10 seeds (bench/splines_1d.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(out: dict) -> dict:
    """The summary keys, from the per-activation results: the slope map with the lower median validation
    MSE on more functions (``constraint_winner``, the library's default), the activation with the lowest
    median test MSE per function, and ``spline_best_on_all`` for the winning spline."""
    cmp = {fn: {c: out[fn][f"spline_{c}"]["median_val_mse"] for c in ("clamp", "project")}
           for fn in FUNCTIONS}
    project_wins = sum(cmp[fn]["project"] < cmp[fn]["clamp"] for fn in FUNCTIONS)
    winner = "project" if 2 * project_wins > len(FUNCTIONS) else "clamp"
    key = f"spline_{winner}"
    fixed = [a for a in ACTIVATIONS if not a.startswith("spline")]
    return {
        "best_activation": {fn: min(ACTIVATIONS, key=lambda a, fn=fn: out[fn][a]["median_mse"])
                            for fn in FUNCTIONS},
        "constraint_validation_mse": cmp, "project_wins_on_validation": project_wins,
        "constraint_winner": winner, "default_constraint": lipkit.LinearSpline(1).constraint,
        "spline_key": key,
        "spline_best_on_all": all(out[fn][key]["median_mse"] < min(out[fn][a]["median_mse"] for a in fixed)
                                  for fn in FUNCTIONS),
        "spline_median_mse": {fn: out[fn][key]["median_mse"] for fn in FUNCTIONS},
        "best_fixed_median_mse": {fn: min(out[fn][a]["median_mse"] for a in fixed) for fn in FUNCTIONS},
    }


def resummarise() -> None:
    """Recompute the summary keys of the stored results (e.g. after the library default changed)."""
    import json

    path = results_dir() / "splines_1d.json"
    data = json.loads(path.read_text())
    data.update(summary(data["results"]))
    path.write_text(json.dumps(data, indent=2) + "\n")
    figure(data["results"], results_dir() / "splines_1d.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps and seeds, no results file")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--resummarise", action="store_true",
                    help="recompute the summary keys and the figure of the stored results, then stop")
    args = ap.parse_args()
    if args.resummarise:
        resummarise()
        return
    torch.set_num_threads(1)
    steps, seeds, sel_seeds = (args.steps, args.seeds, 2) if not args.quick else (40, 2, 1)
    t0 = time.perf_counter()
    out: dict = {}
    for fn in FUNCTIONS:
        data = datasets(fn)
        out[fn] = {}
        for act in ACTIVATIONS:
            grid = SPLINE_GRID if act.startswith("spline") else tuple((lr, 0.0) for lr in LR_GRID)
            scores = []
            for lr, tv2 in grid:
                vals = [train(act, fn, lr, tv2, 1000 + s, steps, data)[0] for s in range(sel_seeds)]
                scores.append((statistics.fmean(vals), lr, tv2))
            val, lr, tv2 = min(scores)
            runs = [train(act, fn, lr, tv2, s, steps, data) for s in range(seeds)]
            tests = [r[1] for r in runs]
            out[fn][act] = {"median_mse": statistics.median(tests), "min_mse": min(tests),
                            "median_val_mse": statistics.median(r[0] for r in runs),
                            "lr": lr, "tv2_weight": tv2, "selection_val_mse": val,
                            "grid": [{"lr": a, "tv2_weight": b, "val_mse": v} for v, a, b in scores],
                            "test_mse_all": tests}
            print(f"{fn:10s} {act:15s} lr={lr:g} tv2={tv2:g} "
                  f"median test MSE {out[fn][act]['median_mse']:.3e} "
                  f"min {out[fn][act]['min_mse']:.3e} ({time.perf_counter() - t0:.0f} s)", flush=True)
    narrow = step_ratio((1, 10, 10, 10, 1), 1000)
    wide = step_ratio((784, 256, 256, 10), 256)
    print(f"step ratio spline / maxmin: {narrow['ratio']:.2f} (1-D net), "
          f"{wide['ratio']:.2f} (784-256-256-10)")
    figures = {
        "functions": list(FUNCTIONS), "activations": list(ACTIVATIONS), "results": out, **summary(out),
        "step_ratio_vs_groupsort": narrow["ratio"], "step_ms": narrow,
        "step_ratio_vs_groupsort_wide": wide["ratio"], "step_ms_wide": wide,
        "setup": {"widths": [1, 10, 10, 10, 1], "steps": steps, "seeds": seeds, "selection_seeds": sel_seeds,
                  "train_points": 1000, "val_points": 1000, "test_points": 10001, "lr_grid": list(LR_GRID),
                  "spline_grid": [list(g) for g in SPLINE_GRID], "knots": 41, "knot_range": 2.0,
                  "shared_machine": True},
    }
    if args.quick:
        print(figures["best_activation"], figures["spline_best_on_all"])
        return
    path = write_result("splines_1d", figures, time.perf_counter() - t0)
    figure(out, results_dir() / "splines_1d.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
