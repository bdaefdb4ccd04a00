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
   same number of configurations (spline: its own coefficient learning rate ``spline_lr`` as a separate
   Adam parameter group, as in Ducotterd et al. (JMLR 2024), TV(2) weight, init, number of knots; MaxMin:
   its learning rate), trained on the rest of the training images, seed 0, and scored by the W1 bound on
   the validation split.  The best configuration of each critic is chosen there (never on the test images).
2. *Test.*  The two chosen configurations are trained on all the training images of the two classes with
   ``--seeds`` paired seeds (same initialisation seed and the same mini-batch stream per seed) and
   evaluated on the held-out test images (1000 per class).  We report mean +- std per critic and the paired
   difference spline - MaxMin with its standard error.

Equal training time: in every run the two critics (spline config i and MaxMin config i in the validation
phase, the chosen ones in the test phase) train in alternating 2-second slices (A, B, A, B, ...) until each
has used ``--seconds`` of its own wall-clock time, so machine load hits both equally; the steps are
recorded.  The two class pairs run in parallel processes (``--jobs``).

    OMP_NUM_THREADS=1 python bench/wasserstein.py   # 2 pairs in parallel, (6 + 3) runs of 2 x 60 s, ~19 min
"""

from __future__ import annotations

import argparse
import copy
import math
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
LR = 1e-3  # the spline critics' weight learning rate
SPLINE_GRID = (  # spline_lr, tv2 weight, init, knots (on [-3, 3])
    {"spline_lr": 1e-3, "tv2": 0.0, "init": "absolute_value", "knots": 21},
    {"spline_lr": 1e-2, "tv2": 0.0, "init": "absolute_value", "knots": 21},
    {"spline_lr": 1e-2, "tv2": 1e-4, "init": "absolute_value", "knots": 21},
    {"spline_lr": 1e-2, "tv2": 0.0, "init": "identity", "knots": 21},
    {"spline_lr": 1e-2, "tv2": 0.0, "init": "relu", "knots": 21},
    {"spline_lr": 1e-2, "tv2": 0.0, "init": "absolute_value", "knots": 41},
)
MAXMIN_GRID = tuple({"lr": lr} for lr in (3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2))
VAL_PER_CLASS = 1000


def critic(kind: str, cfg: dict, width: int = 256) -> nn.Sequential:
    def a(w: int) -> nn.Module:
        if kind == "maxmin":
            return lipkit.MaxMin()
        return lipkit.LinearSpline(w, num_knots=cfg["knots"], knot_range=3.0, init=cfg["init"])
    return nn.Sequential(lipkit.LipLinear(784, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, 1, constraint="orthogonal"))


def optimiser(kind: str, cfg: dict, net: nn.Module) -> torch.optim.Optimizer:
    if kind == "maxmin":
        return torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    spl = [p for m in net.modules() if isinstance(m, lipkit.LinearSpline) for p in m.parameters()]
    ids = {id(p) for p in spl}
    rest = [p for p in net.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": rest, "lr": LR}, {"params": spl, "lr": cfg["spline_lr"]}])


def tv2(net: nn.Module) -> torch.Tensor:
    return sum(m.tv2() for m in net.modules() if isinstance(m, lipkit.LinearSpline))


def estimate(f: nn.Module, xp: torch.Tensor, xq: torch.Tensor) -> dict[str, float]:
    """``(mean_P f - mean_Q f) / L`` with the float64 evaluation of the critic and its sound bound L."""
    bound = lipkit.lipschitz_bound(f, 2)
    f64 = copy.deepcopy(f).double().eval()
    with torch.no_grad():
        gap = (f64(xp.double()).mean() - f64(xq.double()).mean()).item()
    return {"gap": gap, "lipschitz_bound": bound, "w1_lower_bound": gap / bound}


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
        out[a] = {**estimate(net, tp, tq), "steps": steps[a], "seconds": round(used[a], 2)}
    return out


def run_pair(pair: tuple[int, int], seconds: float, seeds: int, quick: bool) -> dict:
    torch.set_num_threads(1)
    split = lipkit.load_dataset("fashion-mnist")
    p, q = pair
    xp, xq = split.x_train[split.y_train == p], split.x_train[split.y_train == q]
    tp, tq = split.x_test[split.y_test == p], split.x_test[split.y_test == q]
    centre = torch.cat([xp, xq]).mean(0)
    xp, xq, tp, tq = xp - centre, xq - centre, tp - centre, tq - centre
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
                                     "steps": r["spline"]["steps"]})
        validation["maxmin"].append({"config": mc, "val_w1": r["maxmin"]["w1_lower_bound"],
                                     "steps": r["maxmin"]["steps"]})
        print(f"[{name}] val spline {sc}: {r['spline']['w1_lower_bound']:.4f} | maxmin {mc}: "
              f"{r['maxmin']['w1_lower_bound']:.4f}", flush=True)
    chosen = {k: max(v, key=lambda e: e["val_w1"])["config"] for k, v in validation.items()}
    per_seed = []
    for seed in range(seeds):
        r = train_two({"spline": ("spline", chosen["spline"]), "maxmin": ("maxmin", chosen["maxmin"])},
                      xp, xq, tp, tq, seconds, seed)
        per_seed.append({"seed": seed, **r})
        print(f"[{name}] test seed {seed}: spline {r['spline']['w1_lower_bound']:.4f} "
              f"({r['spline']['steps']} steps), maxmin {r['maxmin']['w1_lower_bound']:.4f} "
              f"({r['maxmin']['steps']} steps)", flush=True)
    out: dict = {"chosen": chosen, "validation": validation, "per_seed": per_seed}
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training time of each critic per run")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds of the test comparison")
    ap.add_argument("--jobs", type=int, default=2, help="class pairs run in parallel processes")
    ap.add_argument("--quick", action="store_true", help="smoke run (3 s, 2 configs, 2 seeds), no file")
    args = ap.parse_args()
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
                         "seeds": seeds, "batch_per_class": 256, "spline_weight_lr": LR,
                         "spline_grid": list(SPLINE_GRID), "maxmin_grid": list(MAXMIN_GRID),
                         "configs_tried_each": len(SPLINE_GRID),
                         "validation": f"{VAL_PER_CLASS} training images per class held out; seed 0",
                         "evaluated_on": "the held-out test images of the two classes (1000 each)",
                         "parallel_pairs": args.jobs, "shared_machine": True}}
    if args.quick:
        return
    print(f"wrote {write_result('wasserstein', figures, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
