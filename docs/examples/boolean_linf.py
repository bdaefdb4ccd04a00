"""XOR on the corners of [0, 1]^2: element-wise l_inf-Lipschitz networks cannot certify it, SortNet can.

Data: A = (0, 0) and B = (1, 1) in class 0, C = (0, 1) and D = (1, 0) in class 1.  Every pair of
corners is at l_inf distance 1, so no classifier is robust beyond radius 1/2; we ask for the
certified radius ``RADIUS = 0.45``.

* "element-wise" networks: affine layers with ``||W||_inf <= 1`` (``lipkit.LipLinear(constraint="inf")``)
  and element-wise 1-Lipschitz activations (ReLU, |.|); certified with :func:`lipkit.certify`.
  Provably no such network certifies all four points at a radius above 1/4 (see
  ``boolean_linf.md``), so at 0.45 at least one point fails, whatever the training.
* SortNet with q = 1, i.e. an l_inf-distance net (Zhang et al., ICML 2021; SortNet of Zhang,
  Jiang, He, Wang, NeurIPS 2022 with all weight on the largest order statistic): two layers of
  l_inf-distance neurons; certifies all four points at 0.45.

Run ``python docs/examples/boolean_linf.py`` (< 1 minute on one core): prints the radii and
writes ``boolean_linf.png`` next to this file.  ``run(fast=True)`` is what the test calls.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import lipkit
from lipkit.training.linf import Negate

RADIUS = 0.45
X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
Y = torch.tensor([0, 0, 1, 1])
NAMES = ["A", "B", "C", "D"]


def xor_q(f: torch.Tensor) -> torch.Tensor:
    """``Q = F(C) + F(D) - F(A) - F(B)`` of the logit difference ``F = f_1 - f_0`` at the corners."""
    g = f[:, 1] - f[:, 0]
    return g[2] + g[3] - g[0] - g[1]


# --------------------------------------------------------------------------- the two families


def elementwise_net(width: int, depth: int, act: str) -> nn.Sequential:
    """``depth`` hidden layers ``LipLinear(constraint="inf") -> act`` and a last ``LipLinear``."""
    layers: list[nn.Module] = []
    n = 2
    for _ in range(depth):
        layers += [lipkit.LipLinear(n, width, constraint="inf"), nn.ReLU() if act == "relu" else lipkit.Abs()]
        n = width
    layers.append(lipkit.LipLinear(n, 2, constraint="inf"))
    return nn.Sequential(*layers)


def optimal_elementwise_net() -> nn.Sequential:
    """The hand-made optimum of the family: ``f_1 - f_0 = |x_1 - x_2| - 1/2``, certified radius
    exactly 1/4 at all four corners (``F(x) = (|x1 - x2| - 1/2) / 2`` is 1-Lipschitz)."""
    net = nn.Sequential(nn.Linear(2, 1), lipkit.Abs(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -0.5]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[-0.5], [0.5]]))
        net[2].bias.copy_(torch.tensor([0.125, -0.125]))
    return net


def linf_dist_net(width: int = 16, scale: float = 3.0) -> nn.Sequential:
    """``LinfDistLinear(2, width) -> LinfDistLinear(width, 2) -> Negate`` (SortNet neurons with q = 1).

    It can represent the optimum ``f_1 - f_0 = d(x, {A, B}) - d(x, {C, D})`` (l_inf distances to
    the two classes, certified radius 1/2): the first layer measures the distances to the corners,
    a second-layer neuron with weights ``(C, C)`` on two of them and small weights elsewhere
    computes ``C - min(a, b)``.  Initialisation: first-layer prototypes uniform in the square,
    second-layer weights ``N(0, scale^2)`` so that large weights are within reach.
    """
    first = lipkit.LinfDistLinear(2, width, mean_shift=False)
    last = lipkit.LinfDistLinear(width, 2, mean_shift=False)
    with torch.no_grad():
        first.weight.uniform_(0.0, 1.0)
        last.weight.mul_(scale)
    return nn.Sequential(first, last, Negate())


# --------------------------------------------------------------------------- training and certification


def _pair_constant(net: nn.Sequential) -> torch.Tensor:
    """Differentiable ``L_01 = ||v_1 - v_0||_1 * prod_l ||W_l||_inf`` for an element-wise net (the
    pairwise rule that :func:`lipkit.certify` applies to the actual weights)."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    body = torch.ones(())
    for m in lin[:-1]:
        body = body * m.weight.abs().sum(dim=1).amax()
    v = lin[-1].weight
    return (v[1] - v[0]).abs().sum() * body


def certified_radii(net: nn.Module) -> torch.Tensor:
    """Certified l_inf radius of each corner from :func:`lipkit.certify` (0 if misclassified)."""
    net.eval()
    res = lipkit.compute_certificates(net, X, math.inf)
    return torch.where(res.prediction == Y, res.radius, torch.zeros_like(res.radius))


def train(net: nn.Sequential, steps: int, lr: float, elementwise: bool,
          softmin: bool = False) -> nn.Sequential:
    """Maximise the smallest certified radius through the nominal radii ``r_i = margin_i / L``
    (``L``: the pairwise constant above, or 2 for 1-Lipschitz logits): either a soft minimum
    ``-0.01 log sum_i exp(-r_i / 0.01)`` or the hinge ``mean_i relu(1 - r_i / 0.5)``.  Full batch of
    the four points, exact forward (the net is small: no training-mode tricks)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sign = (2 * Y - 1).float()
    target = 0.5  # aim above RADIUS so that the certificate's round-off allowance does not matter
    dist = [m for m in net if isinstance(m, lipkit.LinfDistLinear)]
    for step in range(steps):
        # the l_p relaxation of Zhang et al. (2021): p = 8 -> 1000 geometrically over 70% of the
        # steps, then inf (the max alone gives one non-zero gradient entry per neuron)
        ratio = step / (0.7 * steps)
        for m in dist:
            m.p = math.inf if ratio >= 1 else float(round(8 * 125 ** ratio))
        net.train(elementwise)  # eval mode for the distance net: exact neurons, p set above
        f = net(X)
        margin = (f[:, 1] - f[:, 0]) * sign
        lip = _pair_constant(net) if elementwise else torch.tensor(2.0)
        r = margin / lip
        if softmin:  # maximise a smooth minimum of the four radii
            loss = 0.01 * torch.logsumexp(-r / 0.01, dim=0)
        else:
            loss = torch.relu(1.0 - r / target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net


def run(fast: bool = False, restarts: int = 8) -> dict:
    """Train both families (several architectures and seeds each, keeping the best); return the
    certified radii, the best element-wise net and ``Q / L`` of every element-wise net."""
    torch.set_num_threads(1)
    # the l_p relaxation underflows to subnormal floats, which are very slow on x86
    flush = torch.set_flush_denormal(True)
    try:
        return _run(fast, restarts)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _run(fast: bool, restarts: int) -> dict:
    t0 = time.perf_counter()
    steps = 300 if fast else 500
    configs = [(16, 1, "abs"), (16, 2, "relu")]
    if not fast:
        configs += [(64, 2, "abs"), (64, 3, "abs"), (16, 3, "relu"), (64, 2, "relu")]
    n_seeds = 1
    element = []
    for width, depth, act in configs:
        for seed in range(n_seeds):
            torch.manual_seed(seed)
            net = train(elementwise_net(width, depth, act), steps, 0.02, elementwise=True, softmin=True)
            r = certified_radii(net)
            with torch.no_grad():
                qn = float(xor_q(net(X).double()) / _pair_constant(net).double())
            element.append({"width": width, "depth": depth, "act": act, "seed": seed, "net": net,
                            "radii": r, "q_over_l": qn})
    best = max(element, key=lambda e: float(e["radii"].min()))
    optimum = optimal_elementwise_net()
    dist_runs = []
    for seed in range(restarts):  # keep the best restart (stop at the first that certifies all)
        torch.manual_seed(seed)
        net = train(linf_dist_net(), 400, 0.05, elementwise=False)
        dist_runs.append({"seed": seed, "net": net, "radii": certified_radii(net)})
        if float(dist_runs[-1]["radii"].min()) >= RADIUS:
            break
    sort = max(dist_runs, key=lambda e: float(e["radii"].min()))
    return {
        "radius": RADIUS,
        "elementwise": element,
        "elementwise_best": best,
        "elementwise_optimum": {"net": optimum, "radii": certified_radii(optimum)},
        "sortnet": sort,
        "sortnet_restarts": len(dist_runs),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------- figure


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = [("element-wise net (best trained)", result["elementwise_best"]),
              ("element-wise optimum |x1 - x2| - 1/2", result["elementwise_optimum"]),
              ("l_inf-distance net (SortNet, q = 1)", result["sortnet"])]
    grid = torch.linspace(-0.3, 1.3, 241)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), dpi=110)
    for ax, (title, entry) in zip(axes, panels, strict=True):
        net = entry["net"]
        net.eval()
        with torch.no_grad():
            f = net(pts)
        g = (f[:, 1] - f[:, 0]).reshape(gx.shape)
        ax.contourf(gx.numpy(), gy.numpy(), g.numpy(), levels=[-1e9, 0, 1e9], colors=["#c6dbef", "#fdd0a2"])
        ax.contour(gx.numpy(), gy.numpy(), g.numpy(), levels=[0], colors="k", linewidths=1)
        radii = entry["radii"]
        for i, (x, y) in enumerate(X.tolist()):
            r = float(radii[i])
            ok = r >= RADIUS
            ax.add_patch(Rectangle((x - RADIUS, y - RADIUS), 2 * RADIUS, 2 * RADIUS, fill=False, ls=":",
                                   ec="gray", lw=1))
            if r > 0:
                ax.add_patch(Rectangle((x - r, y - r), 2 * r, 2 * r, fill=False, lw=2,
                                       ec="green" if ok else "red"))
            ax.plot(x, y, "o", color="#08519c" if int(Y[i]) == 0 else "#d94801", ms=8)
            ax.annotate(f"{NAMES[i]}: r={r:.4f}", (x, y), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
        n_ok = int((radii >= RADIUS).sum())
        ax.set_title(f"{title}\ncertified at {RADIUS}: {n_ok}/4, min radius {float(radii.min()):.3f}",
                     fontsize=9)
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylim(-0.3, 1.3)
        ax.set_aspect("equal")
    fig.suptitle("XOR on the corners of [0,1]^2: certified l_inf balls (solid: certified radius; dotted: "
                 f"target {RADIUS}; green = reaches it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    fast = "--fast" in sys.argv
    res = run(fast=fast)
    print(f"target radius {RADIUS} (best possible: 0.5)")
    for e in res["elementwise"]:
        print(f"  element-wise width={e['width']:3d} depth={e['depth']} {e['act']:4s} seed={e['seed']}: "
              f"radii {[round(float(r), 4) for r in e['radii']]}  Q/L={e['q_over_l']:.4f}")
    b = res["elementwise_best"]
    print(f"best element-wise min radius {float(b['radii'].min()):.4f} (theory: <= 0.25); "
          f"hand-made optimum {float(res['elementwise_optimum']['radii'].min()):.4f}")
    print(f"l_inf-distance net (SortNet q=1) radii {[round(float(r), 4) for r in res['sortnet']['radii']]} "
          f"(restarts used: {res['sortnet_restarts']})")
    path = Path(__file__).with_suffix(".png")
    plot(res, path)
    print(f"wrote {path} in {res['seconds']:.1f} s")


if __name__ == "__main__":
    main()
