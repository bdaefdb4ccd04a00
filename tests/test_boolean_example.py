"""docs/examples/boolean_linf.py: element-wise l_inf networks cannot certify XOR at 0.45, SortNet can."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import lipkit
from lipkit.certify.attacks import check_certificates

_PATH = Path(__file__).resolve().parents[1] / "docs" / "examples" / "boolean_linf.py"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("boolean_linf", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random_elementwise(gen: torch.Generator, width: int, depth: int) -> nn.Sequential:
    acts = [nn.ReLU, lipkit.Abs, nn.Tanh, lambda: nn.LeakyReLU(-0.7)]  # element-wise, 1-Lipschitz
    layers: list[nn.Module] = []
    n = 2
    for _ in range(depth):
        lin = nn.Linear(n, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, n, generator=gen) * float(torch.rand(1, generator=gen) * 3))
            lin.bias.copy_(torch.randn(width, generator=gen))
        act = acts[int(torch.randint(0, len(acts), (1,), generator=gen))]()
        layers += [lin, act]
        n = width
    last = nn.Linear(n, 2)
    with torch.no_grad():
        last.weight.copy_(torch.randn(2, n, generator=gen))
    return nn.Sequential(*layers, last).double()


def test_xor_bound_holds_for_random_elementwise_networks(ex) -> None:
    """|Q| <= L_01 = ||v_1 - v_0||_1 prod ||W_l||_inf for every element-wise network (the invariant of
    boolean_linf.md), so the certified radius of all four corners is at most 1/4 -- and the bound is
    attained (Q / L = 1) by the hand-made optimum."""
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(300):
        net = _random_elementwise(gen, int(torch.randint(1, 9, (1,), generator=gen)),
                                  int(torch.randint(1, 4, (1,), generator=gen)))
        with torch.no_grad():
            q = float(ex.xor_q(net(ex.X.double())))
            lip = float(ex._pair_constant(net))
        ratios.append(abs(q) / lip)
    assert max(ratios) <= 1.0 + 1e-9
    assert max(ratios) > 0.3  # the sample does probe the bound
    opt = ex.optimal_elementwise_net().double()
    with torch.no_grad():
        assert float(ex.xor_q(opt(ex.X.double()))) / float(ex._pair_constant(opt)) == pytest.approx(1.0)
    # lipkit.certify uses this constant (pairwise rule), so its radii obey the bound
    r = ex.certified_radii(ex.optimal_elementwise_net())
    assert float(r.min()) <= 0.25 and float(r.min()) > 0.2499


def test_fast_example_sortnet_certifies_all_elementwise_does_not(ex) -> None:
    res = ex.run(fast=True)
    radius = ex.RADIUS
    assert 0.25 < radius < 0.5
    sort = res["sortnet"]
    assert bool((sort["radii"] >= radius).all()), sort["radii"]
    assert all(m.p == math.inf for m in sort["net"] if isinstance(m, lipkit.LinfDistLinear))
    for e in res["elementwise"]:
        assert float(e["radii"].min()) < radius  # not every corner certified at the radius
        assert float(e["radii"].min()) <= 0.25 + 1e-9  # the theorem
        assert abs(e["q_over_l"]) <= 1.0 + 1e-6
    assert float(res["elementwise_best"]["radii"].min()) > 0.15  # the training did try
    # the distance net's certificates survive PGD (l_inf) at 0.999 x their radius
    chk = check_certificates(sort["net"], ex.X, ex.Y, math.inf, radii=sort["radii"], steps=100, restarts=3,
                             generator=torch.Generator().manual_seed(0))
    assert chk.n_certified == 4 and chk.n_broken == 0
    # what run() reports is what its nets give (timings belong to benchmarks, not here)
    assert res["radius"] == radius
    configs = [(e["width"], e["depth"], e["act"]) for e in res["elementwise"]]
    assert configs == [(16, 1, "abs"), (16, 2, "relu")]
    for e in res["elementwise"]:
        assert torch.equal(ex.certified_radii(e["net"]), e["radii"])
        with torch.no_grad():
            q = float(ex.xor_q(e["net"](ex.X).double()) / ex._pair_constant(e["net"]).double())
        assert q == pytest.approx(e["q_over_l"], rel=1e-9, abs=1e-12)
    best = max(float(e["radii"].min()) for e in res["elementwise"])
    assert float(res["elementwise_best"]["radii"].min()) == best
    opt_r = res["elementwise_optimum"]["radii"]
    assert 0.2499 < float(opt_r.min()) <= 0.25  # the hand-made optimum attains the theorem's 1/4
    assert 1 <= res["sortnet_restarts"] <= 8  # stops at the first restart that certifies every corner
    assert torch.equal(ex.certified_radii(sort["net"]), sort["radii"])


def test_example_writes_the_figure(ex, tmp_path) -> None:
    res = {
        "elementwise_best": {"net": ex.optimal_elementwise_net(),
                             "radii": ex.certified_radii(ex.optimal_elementwise_net())},
        "elementwise_optimum": {"net": ex.optimal_elementwise_net(),
                                "radii": ex.certified_radii(ex.optimal_elementwise_net())},
        "sortnet": {"net": ex.linf_dist_net(), "radii": torch.zeros(4, dtype=torch.float64)},
    }
    path = tmp_path / "f.png"
    ex.plot(res, path)
    assert path.stat().st_size > 10_000
