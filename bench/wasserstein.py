"""A sound lower bound of the Wasserstein-1 distance between two Fashion-MNIST classes: spline vs MaxMin
critic, each tuned on a validation split, then compared over paired seeds.

Kantorovich-Rubinstein duality: ``W1(P, Q) = sup_{Lip(f) <= 1} E_P f - E_Q f`` (l2 ground metric on the
784 pixels in [0, 1]), so for *any* critic ``f`` with a sound bound ``L >= Lip(f)``,
``(mean_P f - mean_Q f) / L`` is a lower bound of ``W1`` between the two empirical distributions ``P`` and
``Q`` it is evaluated on.  ``L`` is :func:`lipkit.lipschitz_bound` of the trained critic, which is
evaluated in float64 (the same weights), so the float32 round-off does not enter.

Critics: ``784 -> 256 -> 256 -> 1`` orthogonal ``LipLinear`` layers with ``MaxMin`` (GroupSort, groups of
2) or ``LinearSpline`` activations (inputs centred by the mean training image of the two classes, which
changes neither W1 nor the Lipschitz constant).  Adam, batches of 256 images per class.

Protocol (per class pair):

1. *Validation.*  1000 training images per class are held out as a validation split; each critic tries the
   same number of configurations (10), fixed before the run (``SPLINE_GRID``, ``MAXMIN_GRID``): the spline
   critic its weight learning rate (the ``LipLinear`` parameters), its coefficient learning rate
   ``spline_lr`` (a separate Adam parameter group, as in Ducotterd et al. (JMLR 2024)), its knot range,
   a learnable input/output scale and its init; MaxMin its learning rate and Adam betas.  Each is trained
   on the rest of the training images, seed 0, and scored by the W1 bound on the validation split.  The best
   configuration of each critic is chosen there (never on the test images).
2. *Test.*  The two chosen configurations are trained on all the training images of the two classes with
   ``--seeds`` paired seeds (same initialisation seed and the same mini-batch stream per seed) and
   evaluated on the held-out test images (1000 per class).  We report mean +- std per critic and the paired
   difference spline - MaxMin with its standard error.

Equal training time: in every run the two critics (spline config i and MaxMin config i in the validation
phase, the chosen ones in the test phase) train in alternating 2-second slices (A, B, A, B, ...) until each
has used ``--seconds`` of its own wall-clock time, so machine load hits both equally; the steps are
recorded, and their ratio in a run is the inverse ratio of the per-step costs.  The two class pairs run in
parallel processes (``--jobs``).  Each trained critic also records where its activations' inputs lie
(``coverage``: |pre-activation| quantiles, and for a spline the fraction outside its knot span).

    # 2 pairs in parallel, (10 + 4) runs of 2 x 60 s each, ~29 min:
    OMP_NUM_THREADS=1 python bench/wasserstein.py --seeds 4
    # 4 more paired test seeds of the chosen configurations (~9 min), the step cost at equal learning
    # rates (~1 min, one process), the tables of docs/benchmarks.md:
    OMP_NUM_THREADS=1 python bench/wasserstein.py --more-seeds 4
    OMP_NUM_THREADS=1 python bench/wasserstein.py --step-cost
    python bench/wasserstein.py --tables
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
PAIRS = ((0, 6), (7, 9))  # T-shirt/top vs Shirt, Sneaker vs Ankle boot


def _spline(lr: float, spline_lr: float, knot_range: float, learn_scale: bool = False,
            init: str = "absolute_value") -> dict:
    return {"lr": lr, "spline_lr": spline_lr, "knot_range": knot_range, "learn_scale": learn_scale,
            "tv2": 0.0, "init": init, "knots": 21}


# The grids, fixed before the run (10 configurations each).  Spline: the weight learning rate (LipLinear
# parameters) x the knot range, with the coefficient learning rate 1e-3 (the previous run's best), plus
# coefficient lr = weight lr, a learnable input/output scale, and init identity (which starts as the linear
# critic, whose estimate is ||mean_P - mean_Q||, where |x| starts lower).  TV(2) > 0, init ReLU and 41 knots
# lost to the baseline in the previous run (at coefficient lr 1e-2) and are not repeated.
# Knot range: a critic trained 30 s at weight lr 1e-3 had |pre-activation| quantiles 50/99/99.9% of about
# 0.3-0.5 / 1.3-1.5 / 1.9-2.0, so on [-3, 3] with 21 knots only about 9 of the 20 pieces saw data, on
# [-1.5, 1.5] all did with about 1% of the inputs outside.  (A larger weight lr spreads them: the
# ``coverage`` of each trained critic is recorded in the results.)
SPLINE_GRID = (
    _spline(1e-3, 1e-3, 3.0), _spline(3e-3, 1e-3, 3.0), _spline(1e-2, 1e-3, 3.0),
    _spline(1e-3, 1e-3, 1.5), _spline(3e-3, 1e-3, 1.5), _spline(1e-2, 1e-3, 1.5),
    _spline(3e-3, 3e-3, 3.0), _spline(1e-2, 1e-2, 3.0), _spline(3e-3, 1e-3, 1.5, learn_scale=True),
    _spline(3e-3, 1e-3, 1.5, init="identity"),
)
# MaxMin: its learning rate (7 values) and Adam betas (0.5, 0.9) at three of them: as many configurations.
MAXMIN_GRID = (*({"lr": lr, "betas": (0.9, 0.999)} for lr in (3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2)),
               *({"lr": lr, "betas": (0.5, 0.9)} for lr in (3e-3, 5e-3, 1e-2)))
assert len(SPLINE_GRID) == len(MAXMIN_GRID)
GRID_DESCRIPTION = (
    "fixed before the run, same count per critic; spline: weight lr {1e-3, 3e-3, 1e-2} x knot range {3, 1.5} "
    "(coefficient lr 1e-3), coefficient lr = weight lr (3e-3, 1e-2; range 3), learnable scale (weight lr "
    "3e-3, coefficient lr 1e-3, range 1.5), init identity (same); all 21 knots, init |x| unless said, "
    "TV(2) 0.  MaxMin: lr {3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2} with Adam betas (0.9, 0.999), and lr "
    "{3e-3, 5e-3, 1e-2} with betas (0.5, 0.9)")
VAL_PER_CLASS = 1000


def critic(kind: str, cfg: dict, width: int = 256) -> nn.Sequential:
    def a(w: int) -> nn.Module:
        if kind == "maxmin":
            return lipkit.MaxMin()
        return lipkit.LinearSpline(w, num_knots=cfg["knots"], knot_range=cfg["knot_range"], init=cfg["init"],
                                   learn_scale=cfg["learn_scale"])
    return nn.Sequential(lipkit.LipLinear(784, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, 1, constraint="orthogonal"))


def optimiser(kind: str, cfg: dict, net: nn.Module) -> torch.optim.Optimizer:
    if kind == "maxmin":
        return torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    spl = [p for m in net.modules() if isinstance(m, lipkit.LinearSpline) for p in m.parameters()]
    ids = {id(p) for p in spl}
    rest = [p for p in net.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": rest, "lr": cfg["lr"]}, {"params": spl, "lr": cfg["spline_lr"]}])


def tv2(net: nn.Module) -> torch.Tensor:
    return sum(m.tv2() for m in net.modules() if isinstance(m, lipkit.LinearSpline))


def estimate(f: nn.Module, xp: torch.Tensor, xq: torch.Tensor) -> dict[str, float]:
    """``(mean_P f - mean_Q f) / L`` with the float64 evaluation of the critic and its sound bound L."""
    bound = lipkit.lipschitz_bound(f, 2)
    f64 = copy.deepcopy(f).double().eval()
    with torch.no_grad():
        gap = (f64(xp.double()).mean() - f64(xq.double()).mean()).item()
    return {"gap": gap, "lipschitz_bound": bound, "w1_lower_bound": gap / bound}


def coverage(f: nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """Per activation layer of the trained critic ``f`` on the images ``x``: quantiles of the
    |pre-activation| and, for a spline, the fraction of its inputs outside its knot span ``[T_0, T_(K-1)]``
    (where the spline is linear) and the smallest knot range ``T_(K-1)`` over channels (after scaling)."""
    acts = [m for m in f if isinstance(m, (lipkit.LinearSpline, lipkit.MaxMin))]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, i, _o: seen.append(i[0].detach())) for m in acts]
    with torch.no_grad():
        f(x)
    for h in hooks:
        h.remove()
    out = []
    for m, a in zip(acts, seen, strict=True):
        qs = a.abs().flatten().quantile(torch.tensor([0.5, 0.99, 0.999])).tolist()
        row = {"abs_q50": qs[0], "abs_q99": qs[1], "abs_q999": qs[2], "abs_max": a.abs().max().item()}
        if isinstance(m, lipkit.LinearSpline):
            with torch.no_grad():
                t = m.knots_and_values()[0].to(a.dtype)
            row["outside_knots"] = ((a < t[:, 0]) | (a > t[:, -1])).float().mean().item()
            row["min_knot_range"] = t[:, -1].min().item()
        out.append(row)
    return out


def train_two(runs: dict, xp, xq, tp, tq, seconds: float, seed: int) -> dict:
    """Train the critics ``runs = {name: (kind, cfg)}`` in alternating 2-s slices, ``seconds`` each;
    evaluate on ``(tp, tq)``."""
    nets, opts, gens = {}, {}, {}
    for name, (kind, cfg) in runs.items():
        torch.manual_seed(seed)
        nets[name] = critic(kind, cfg)
        opts[name] = optimiser(kind, cfg, nets[name])
        gens[name] = torch.Generator().manual_seed(seed)
    used = {a: 0.0 for a in nets}
    steps = {a: 0 for a in nets}
    while min(used.values()) < seconds:
        for a, net in nets.items():
            if used[a] >= seconds:
                continue
            w = runs[a][1].get("tv2", 0.0)
            t = time.perf_counter()
            while time.perf_counter() - t < min(2.0, seconds - used[a]):
                ip = torch.randint(len(xp), (256,), generator=gens[a])
                iq = torch.randint(len(xq), (256,), generator=gens[a])
                opts[a].zero_grad(set_to_none=True)
                loss = net(xq[iq]).mean() - net(xp[ip]).mean()
                if w > 0:
                    loss = loss + w * tv2(net)
                loss.backward()
                opts[a].step()
                steps[a] += 1
            used[a] += time.perf_counter() - t
    out = {}
    for a, net in nets.items():
        net.eval()
        out[a] = {**estimate(net, tp, tq), "steps": steps[a], "seconds": round(used[a], 2),
                  "coverage": coverage(net, torch.cat([tp, tq]))}
    return out


def load_pair(pair: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Centred training and test images of the two classes (``xp, xq, tp, tq``)."""
    torch.set_num_threads(1)
    split = lipkit.load_dataset("fashion-mnist")
    p, q = pair
    xp, xq = split.x_train[split.y_train == p], split.x_train[split.y_train == q]
    tp, tq = split.x_test[split.y_test == p], split.x_test[split.y_test == q]
    centre = torch.cat([xp, xq]).mean(0)
    return xp - centre, xq - centre, tp - centre, tq - centre


def paired_test_runs(name: str, chosen: dict, data: tuple[torch.Tensor, ...], seconds: float,
               seeds: range) -> list[dict]:
    """The paired test runs of the chosen configurations for ``seeds``."""
    xp, xq, tp, tq = data
    per_seed = []
    for seed in seeds:
        r = train_two({"spline": ("spline", chosen["spline"]), "maxmin": ("maxmin", chosen["maxmin"])},
                      xp, xq, tp, tq, seconds, seed)
        per_seed.append({"seed": seed, **r})
        print(f"[{name}] test seed {seed}: spline {r['spline']['w1_lower_bound']:.4f} "
              f"({r['spline']['steps']} steps), maxmin {r['maxmin']['w1_lower_bound']:.4f} "
              f"({r['maxmin']['steps']} steps)", flush=True)
    return per_seed


def more_seeds(name: str, pair: tuple[int, int], chosen: dict, seconds: float, start: int,
               count: int) -> list[dict]:
    return paired_test_runs(name, chosen, load_pair(pair), seconds, range(start, start + count))


def summarise(out: dict) -> dict:
    """Add the summary keys of one class pair from its ``validation`` and ``per_seed`` runs."""
    validation, per_seed = out["validation"], out["per_seed"]
    # same wall time in every run: the per-step cost of the spline critic over MaxMin's is the inverse
    # ratio of the steps they took side by side
    ratios = [m["steps"] / s["steps"] for s, m in zip(validation["spline"], validation["maxmin"],
                                                      strict=True)]
    ratios += [s["maxmin"]["steps"] / s["spline"]["steps"] for s in per_seed]
    out["step_cost_ratio_spline_over_maxmin"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                 "max": max(ratios)}
    for k in ("spline", "maxmin"):
        vals = [s[k]["w1_lower_bound"] for s in per_seed]
        out[k] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  "values": vals, "mean_steps": statistics.mean(s[k]["steps"] for s in per_seed)}
    diffs = [s["spline"]["w1_lower_bound"] - s["maxmin"]["w1_lower_bound"] for s in per_seed]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    out["paired_difference"] = {"mean": statistics.mean(diffs), "se": se, "values": diffs,
                                "spline_wins": sum(d > 0 for d in diffs)}
    out["spline_larger"] = out["spline"]["mean"] > out["maxmin"]["mean"]
    out["ratio_spline_over_maxmin"] = out["spline"]["mean"] / out["maxmin"]["mean"]
    return out


def run_pair(pair: tuple[int, int], seconds: float, seeds: int, quick: bool) -> dict:
    p, q = pair
    xp, xq, tp, tq = load_pair(pair)
    g = torch.Generator().manual_seed(1234)
    pp, pq = torch.randperm(len(xp), generator=g), torch.randperm(len(xq), generator=g)
    vp, vq = xp[pp[:VAL_PER_CLASS]], xq[pq[:VAL_PER_CLASS]]
    fp, fq = xp[pp[VAL_PER_CLASS:]], xq[pq[VAL_PER_CLASS:]]
    name = f"{CLASSES[p]} vs {CLASSES[q]}"
    sgrid, mgrid = (SPLINE_GRID[:2], MAXMIN_GRID[:2]) if quick else (SPLINE_GRID, MAXMIN_GRID)
    validation = {"spline": [], "maxmin": []}
    for sc, mc in zip(sgrid, mgrid, strict=True):
        r = train_two({"spline": ("spline", sc), "maxmin": ("maxmin", mc)}, fp, fq, vp, vq, seconds, 0)
        validation["spline"].append({"config": sc, "val_w1": r["spline"]["w1_lower_bound"],
                                     "steps": r["spline"]["steps"], "coverage": r["spline"]["coverage"]})
        validation["maxmin"].append({"config": mc, "val_w1": r["maxmin"]["w1_lower_bound"],
                                     "steps": r["maxmin"]["steps"]})
        rs, rm = r["spline"], r["maxmin"]
        print(f"[{name}] val spline {sc}: {rs['w1_lower_bound']:.4f} ({rs['steps']} steps) | maxmin {mc}: "
              f"{rm['w1_lower_bound']:.4f} ({rm['steps']} steps)", flush=True)
    chosen = {k: max(v, key=lambda e: e["val_w1"])["config"] for k, v in validation.items()}
    per_seed = paired_test_runs(name, chosen, (xp, xq, tp, tq), seconds, range(seeds))
    return summarise({"chosen": chosen, "validation": validation, "per_seed": per_seed})


def step_cost(lrs: tuple[float, ...] = (3e-4, 1e-3, 1e-2), rounds: int = 6, steps: int = 10) -> dict:
    """Seconds per training step of the spline and the MaxMin critic (batches of 256 per class) at the same
    weight learning rate, for each of ``lrs``, in one process: ``rounds`` alternating blocks of ``steps``
    steps (A, B, A, B, ...) after a warm-up block each; medians, and the median of the per-round ratios.

    The learning rate matters: the orthogonal ``LipLinear`` retraction falls back to the full float64
    polar iteration when an optimiser step moved the raw weight far from orthogonal
    (:mod:`lipkit.nn.parametrize.orthogonal`), so the step cost of *both* critics grows with it."""
    torch.set_num_threads(1)
    xp, xq, _, _ = load_pair(PAIRS[0])
    out = {}
    for lr in lrs:
        runs = {"spline": ("spline", _spline(lr, 1e-3, 3.0)),
                "maxmin": ("maxmin", {"lr": lr, "betas": (0.9, 0.999)})}
        torch.manual_seed(0)
        nets = {a: critic(k, c) for a, (k, c) in runs.items()}
        opts = {a: optimiser(runs[a][0], runs[a][1], nets[a]) for a in nets}
        g = torch.Generator().manual_seed(0)

        def block(a: str, nets: dict = nets, opts: dict = opts, g: torch.Generator = g) -> float:
            t = time.perf_counter()
            for _ in range(steps):
                ip = torch.randint(len(xp), (256,), generator=g)
                iq = torch.randint(len(xq), (256,), generator=g)
                opts[a].zero_grad(set_to_none=True)
                (nets[a](xq[iq]).mean() - nets[a](xp[ip]).mean()).backward()
                opts[a].step()
            return (time.perf_counter() - t) / steps

        for a in nets:
            block(a)
        per = {a: [] for a in nets}
        for _ in range(rounds):
            for a in nets:
                per[a].append(block(a))
        ratios = [s / m for s, m in zip(per["spline"], per["maxmin"], strict=True)]
        out[_num(lr)] = {"spline_seconds_per_step": statistics.median(per["spline"]),
                         "maxmin_seconds_per_step": statistics.median(per["maxmin"]),
                         "ratio_spline_over_maxmin": statistics.median(ratios)}
    return {"by_weight_lr": out, "rounds": rounds, "steps_per_block": steps,
            "load_avg": list(os.getloadavg())}


def _num(v: float) -> str:
    """``0.003`` -> ``3e-3`` (grid values)."""
    mant, _, exp = f"{v:.0e}".partition("e")
    return f"{mant}e{int(exp)}"


def _spline_cfg(c: dict) -> str:
    extra = ("" if c["init"] == "absolute_value" else f", init {c['init']}") + (
        ", learned scale" if c["learn_scale"] else "")
    return f"weights {_num(c['lr'])}, coefficients {_num(c['spline_lr'])}, range {c['knot_range']:g}{extra}"


def _maxmin_cfg(c: dict) -> str:
    b = tuple(c["betas"])
    return f"lr {_num(c['lr'])}" + ("" if b == (0.9, 0.999) else f", betas ({b[0]:g}, {b[1]:g})")


def tables(path: Path) -> str:
    """The markdown tables of docs/benchmarks.md from ``wasserstein.json`` (``--tables``)."""
    import json

    res = json.loads(path.read_text())
    pairs = res["pairs"]
    names = list(pairs)
    lines = ["| classes | spline critic, mean +- std | MaxMin critic, mean +- std | "
             "spline - MaxMin (paired), mean +- SE | seeds spline ahead | mean steps (spline, MaxMin) |",
             "|---|---|---|---|---|---|"]
    for n, r in pairs.items():
        sp, mm, d = r["spline"], r["maxmin"], r["paired_difference"]
        lines.append(f"| {n} | {sp['mean']:.4f} +- {sp['std']:.4f} | {mm['mean']:.4f} +- {mm['std']:.4f} | "
                     f"{d['mean']:+.4f} +- {d['se']:.4f} | {d['spline_wins']} of {len(d['values'])} | "
                     f"{sp['mean_steps']:.0f}, {mm['mean_steps']:.0f} |")
    lines += ["", "Validation (W1 bound on the validation split, seed 0; row i trained spline config i and "
              "MaxMin config i side by side; steps in brackets; bold: the chosen configuration):", "",
              f"| spline: learning rates, knot range | {names[0]} | {names[1]} | MaxMin | {names[0]} | "
              f"{names[1]} |", "|---|---|---|---|---|---|"]
    val = {(n, k): pairs[n]["validation"][k] for n in names for k in ("spline", "maxmin")}
    best = {nk: max(range(len(v)), key=lambda i, v=v: v[i]["val_w1"]) for nk, v in val.items()}

    def cell(n: str, k: str, i: int) -> str:
        e = val[(n, k)][i]
        v = f"{e['val_w1']:.4f}"
        return (f"**{v}**" if best[(n, k)] == i else v) + f" ({e['steps']})"

    grids = zip(res["setup"]["spline_grid"], res["setup"]["maxmin_grid"], strict=True)
    for i, (sc, mc) in enumerate(grids):
        lines.append(f"| {_spline_cfg(sc)} | {cell(names[0], 'spline', i)} | {cell(names[1], 'spline', i)} | "
                     f"{_maxmin_cfg(mc)} | {cell(names[0], 'maxmin', i)} | {cell(names[1], 'maxmin', i)} |")
    lines += ["", "Where the activations' inputs lie in the test-phase critics (test images, mean over the "
              "seeds; layer 1 / layer 2):", "",
              "| classes | critic | abs(pre-activation): median | 99% | 99.9% | "
              "spline inputs outside the knots |", "|---|---|---|---|---|---|"]
    for n, r in pairs.items():
        for k, label in (("spline", "spline"), ("maxmin", "MaxMin")):
            cov = [s[k]["coverage"] for s in r["per_seed"]]

            def m(key: str, fmt: str, cov: list = cov) -> str:
                return " / ".join(format(statistics.mean(c[layer][key] for c in cov), fmt)
                                  for layer in range(len(cov[0])))
            out = "-"
            if k == "spline":
                out = m("outside_knots", ".2%") + f" (range {r['chosen']['spline']['knot_range']:g})"
            lines.append(f"| {n} | {label} | {m('abs_q50', '.2f')} | {m('abs_q99', '.2f')} | "
                         f"{m('abs_q999', '.2f')} | {out} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training time of each critic per run")
    ap.add_argument("--seeds", type=int, default=4, help="paired seeds of the test comparison")
    ap.add_argument("--jobs", type=int, default=2, help="class pairs run in parallel processes")
    ap.add_argument("--quick", action="store_true", help="smoke run (3 s, 2 configs, 2 seeds), no file")
    ap.add_argument("--tables", action="store_true", help="print the tables of wasserstein.json (markdown)")
    ap.add_argument("--step-cost", action="store_true",
                    help="time alternating blocks of training steps (spline, MaxMin) and add them to "
                         "wasserstein.json as 'step_cost'")
    ap.add_argument("--more-seeds", type=int, default=0,
                    help="append this many paired test seeds (the chosen configurations of wasserstein.json) "
                         "to wasserstein.json")
    args = ap.parse_args()
    if args.more_seeds:
        import json

        path = Path(__file__).resolve().parent / "results" / "wasserstein.json"
        res = json.loads(path.read_text())
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as ex:
            futs = {name: ex.submit(more_seeds, name, pair, res["pairs"][name]["chosen"],
                                    res["setup"]["train_seconds_each"], len(res["pairs"][name]["per_seed"]),
                                    args.more_seeds)
                    for name, pair in zip(res["pairs"], PAIRS, strict=True)}
            for name, f in futs.items():
                res["pairs"][name]["per_seed"] += f.result()
                summarise(res["pairs"][name])
        res["spline_larger_on_all"] = all(r["spline_larger"] for r in res["pairs"].values())
        res["setup"]["seeds"] = len(next(iter(res["pairs"].values()))["per_seed"])
        res["command"] += f"; python bench/wasserstein.py --more-seeds {args.more_seeds}"
        res["seconds"] = round(res["seconds"] + time.perf_counter() - t0, 1)
        res.setdefault("load_avg_more_seeds", list(os.getloadavg()))
        path.write_text(json.dumps(res, indent=2) + "\n")
        for name, r in res["pairs"].items():
            d = r["paired_difference"]
            print(f"{name}: diff {d['mean']:+.4f} +- {d['se']:.4f} over {len(d['values'])} seeds")
        return
    if args.step_cost:
        import json

        path = Path(__file__).resolve().parent / "results" / "wasserstein.json"
        res = json.loads(path.read_text())
        res["step_cost"] = {**step_cost(), "command": "python bench/wasserstein.py --step-cost",
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(res["step_cost"])
        return
    if args.tables:
        print(tables(Path(__file__).resolve().parent / "results" / "wasserstein.json"))
        return
    t0 = time.perf_counter()
    seconds = 3.0 if args.quick else args.seconds
    seeds = 2 if args.quick else args.seeds
    names = [f"{CLASSES[p]} vs {CLASSES[q]}" for p, q in PAIRS]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as ex:
        futs = [ex.submit(run_pair, pair, seconds, seeds, args.quick) for pair in PAIRS]
        pairs = dict(zip(names, [f.result() for f in futs], strict=True))
    for name, r in pairs.items():
        d = r["paired_difference"]
        print(f"{name}: spline {r['spline']['mean']:.4f} +- {r['spline']['std']:.4f}, maxmin "
              f"{r['maxmin']['mean']:.4f} +- {r['maxmin']['std']:.4f}, "
              f"diff {d['mean']:+.4f} +- {d['se']:.4f}")
    figures = {"pairs": pairs, "spline_larger_on_all": all(r["spline_larger"] for r in pairs.values()),
               "setup": {"critic": "784-256-256-1 orthogonal LipLinear", "train_seconds_each": seconds,
                         "seeds": seeds, "batch_per_class": 256, "spline_weight_lr": "tuned (grid)",
                         "spline_grid": list(SPLINE_GRID), "maxmin_grid": list(MAXMIN_GRID),
                         "configs_tried_each": len(SPLINE_GRID),
                         "grid": GRID_DESCRIPTION,
                         "levers_measured": ["spline weight lr", "spline coefficient lr", "knot range",
                                             "learnable scale", "spline init", "MaxMin lr",
                                             "MaxMin Adam betas"],
                         "validation": f"{VAL_PER_CLASS} training images per class held out; seed 0",
                         "evaluated_on": "the held-out test images of the two classes (1000 each)",
                         "parallel_pairs": args.jobs, "shared_machine": True}}
    if args.quick:
        return
    print(f"wrote {write_result('wasserstein', figures, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
