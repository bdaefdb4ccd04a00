"""A sound lower bound of the Wasserstein-1 distance between two Fashion-MNIST classes: spline vs MaxMin
critic.

Kantorovich-Rubinstein duality: ``W1(P, Q) = sup_{Lip(f) <= 1} E_P f - E_Q f`` (l2 ground metric on the
784 pixels in [0, 1]), so for *any* critic ``f`` with a sound bound ``L >= Lip(f)``,
``(mean_P f - mean_Q f) / L`` is a lower bound of ``W1`` between the two empirical distributions ``P`` and
``Q`` it is evaluated on.  We train the critic on the training images of the two classes and evaluate it on
their held-out test images (1000 each), so the reported number lower-bounds ``W1`` between the two
held-out samples; ``L`` is :func:`lipkit.lipschitz_bound` of the trained critic, and the critic is evaluated
in float64 (the same weights), so the float32 round-off does not enter.

Critics: ``784 -> 256 -> 256 -> 1`` orthogonal ``LipLinear`` layers with ``MaxMin`` (GroupSort, groups of 2)
or ``LinearSpline`` (21 knots on [-3, 3], initialised as ``|x|``; inputs centred by the mean training
image of the two classes, which changes neither W1 nor the Lipschitz constant).  Adam (lr 1e-3),
batches of 256 images per class.  Equal training time: the two critics train in alternating 2-second
slices until each has used ``--seconds`` of its own wall-clock time (the machine is shared).

    OMP_NUM_THREADS=1 python bench/wasserstein.py              # two class pairs, ~10 min
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
PAIRS = ((0, 6), (7, 9))  # T-shirt/top vs Shirt, Sneaker vs Ankle boot


def critic(act: str, width: int = 256) -> nn.Sequential:
    def a(w: int) -> nn.Module:
        return lipkit.MaxMin() if act == "maxmin" else lipkit.LinearSpline(w, num_knots=21, knot_range=3.0,
                                                                            init="absolute_value")
    return nn.Sequential(lipkit.LipLinear(784, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, width, constraint="orthogonal"), a(width),
                         lipkit.LipLinear(width, 1, constraint="orthogonal"))


def estimate(f: nn.Module, xp: torch.Tensor, xq: torch.Tensor) -> dict[str, float]:
    """``(mean_P f - mean_Q f) / L`` with the float64 evaluation of the critic and its sound bound L."""
    bound = lipkit.lipschitz_bound(f, 2)
    f64 = copy.deepcopy(f).double().eval()
    with torch.no_grad():
        gap = (f64(xp.double()).mean() - f64(xq.double()).mean()).item()
    return {"gap": gap, "lipschitz_bound": bound, "w1_lower_bound": gap / bound}


def run_pair(split, pair: tuple[int, int], seconds: float, seed: int) -> dict:
    p, q = pair
    xp, xq = split.x_train[split.y_train == p], split.x_train[split.y_train == q]
    tp, tq = split.x_test[split.y_test == p], split.x_test[split.y_test == q]
    centre = torch.cat([xp, xq]).mean(0)
    xp, xq, tp, tq = xp - centre, xq - centre, tp - centre, tq - centre
    torch.manual_seed(seed)
    nets = {a: critic(a) for a in ("spline", "maxmin")}
    opts = {a: torch.optim.Adam(n.parameters(), lr=1e-3) for a, n in nets.items()}
    used = {a: 0.0 for a in nets}
    steps = {a: 0 for a in nets}
    gen = torch.Generator().manual_seed(seed)
    while min(used.values()) < seconds:
        for a, net in nets.items():
            if used[a] >= seconds:
                continue
            t = time.perf_counter()
            while time.perf_counter() - t < min(2.0, seconds - used[a]):
                ip = torch.randint(len(xp), (256,), generator=gen)
                iq = torch.randint(len(xq), (256,), generator=gen)
                opts[a].zero_grad(set_to_none=True)
                loss = net(xq[iq]).mean() - net(xp[ip]).mean()
                loss.backward()
                opts[a].step()
                steps[a] += 1
            used[a] += time.perf_counter() - t
    out = {}
    for a, net in nets.items():
        net.eval()
        out[a] = {**estimate(net, tp, tq), "train_estimate": estimate(net, xp, xq)["w1_lower_bound"],
                  "steps": steps[a], "seconds": used[a]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="training time of each critic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run (10 s), no results file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    split = lipkit.load_dataset("fashion-mnist")
    seconds = 10.0 if args.quick else args.seconds
    pairs = {}
    for pair in PAIRS:
        name = f"{CLASSES[pair[0]]} vs {CLASSES[pair[1]]}"
        r = run_pair(split, pair, seconds, args.seed)
        r["spline_larger"] = r["spline"]["w1_lower_bound"] > r["maxmin"]["w1_lower_bound"]
        r["ratio_spline_over_maxmin"] = r["spline"]["w1_lower_bound"] / r["maxmin"]["w1_lower_bound"]
        pairs[name] = r
        print(f"{name}: spline {r['spline']['w1_lower_bound']:.4f} ({r['spline']['steps']} steps), "
              f"maxmin {r['maxmin']['w1_lower_bound']:.4f} ({r['maxmin']['steps']} steps)", flush=True)
    figures = {"pairs": pairs, "spline_larger_on_all": all(r["spline_larger"] for r in pairs.values()),
               "setup": {"critic": "784-256-256-1 orthogonal LipLinear", "train_seconds_each": seconds,
                         "batch_per_class": 256, "lr": 1e-3, "spline": "21 knots on [-3, 3], init |x|",
                         "evaluated_on": "the held-out test images of the two classes (1000 each)",
                         "seed": args.seed, "shared_machine": True}}
    if args.quick:
        return
    print(f"wrote {write_result('wasserstein', figures, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
