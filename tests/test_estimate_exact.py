"""Estimation brackets against the exact Lipschitz constant of small ReLU nets on R^2 (issue 17).

The exact constant comes from :mod:`exact_pwl` (region enumeration, exact rational Jacobians, 50-digit
l2 norms), independent of lipkit.  Every method's upper bound must be >= it and every lower bound <= it,
compared exactly (a float is converted exactly to an mpf / Fraction; no tolerance either way).
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from exact_pwl import all_patterns, exact_lipschitz, interior_point, jacobian_exact, opnorm_exact, regions
from torch import nn

import lipkit

INF = math.inf


def _net(widths: tuple[int, ...], seed: int, out: int = 2) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    n = 2
    for w in widths:
        lin = nn.Linear(n, w).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(w, n, generator=g, dtype=torch.float64))
            lin.bias.copy_(torch.randn(w, generator=g, dtype=torch.float64))
        layers += [lin, nn.ReLU()]
        n = w
    last = nn.Linear(n, out).double()
    with torch.no_grad():
        last.weight.copy_(torch.randn(out, n, generator=g, dtype=torch.float64))
        last.bias.copy_(torch.randn(out, generator=g, dtype=torch.float64))
    return nn.Sequential(*layers, last).eval()


def _cmp(x) -> mpmath.mpf:
    """Exact conversion of a float / Fraction / mpf to a 60-digit mpf for comparisons."""
    if isinstance(x, Fraction):
        return mpmath.mpf(x.numerator) / x.denominator
    return mpmath.mpf(x)


def _torch_jacobian(net: nn.Module, x: np.ndarray) -> torch.Tensor:
    return torch.autograd.functional.jacobian(net, torch.tensor(x, dtype=torch.float64))


def test_region_enumeration_matches_brute_force_on_a_tiny_net():
    """All 2^6 patterns of a 2-3-3-2 net checked one by one with the LP: the search finds exactly the
    full-dimensional ones, and at each interior point the exact Jacobian is torch's."""
    net = _net((3, 3), seed=4)
    brute = {pat for pat in all_patterns(net) if interior_point(net, pat) is not None}
    found = regions(net)
    assert set(found) == brute
    assert len(brute) >= 7  # a non-trivial arrangement
    for pat, x in found.items():
        exact = torch.tensor([[float(v) for v in row] for row in jacobian_exact(net, pat)],
                             dtype=torch.float64)
        torch.testing.assert_close(_torch_jacobian(net, x), exact, rtol=1e-12, atol=1e-12)


_ENUM: dict = {}


def _enumerated(widths: tuple[int, ...], seed: int):
    """(net, [(exact Jacobian, interior point) per region]), computed once per module run."""
    key = (widths, seed)
    if key not in _ENUM:
        net = _net(widths, seed)
        _ENUM[key] = (net, [(jacobian_exact(net, pat), x) for pat, x in regions(net).items()])
    return _ENUM[key]


@pytest.mark.parametrize("p", [2, INF, 1])
def test_exact_constant_dominates_difference_quotients_and_is_attained(p):
    net, jac = _enumerated((6, 6), 0)
    value, point = max(((opnorm_exact(j, p), x) for j, x in jac), key=lambda t: t[0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64) * 4
    y = x + torch.randn(4000, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ratio = torch.linalg.vector_norm(net(x) - net(y), ord=p, dim=1) / torch.linalg.vector_norm(
            x - y, ord=p, dim=1)
    with mpmath.workdps(60):
        assert mpmath.mpf(ratio.max().item()) <= _cmp(value) * (1 + mpmath.mpf(1e-12))
        assert mpmath.mpf(ratio.max().item()) >= _cmp(value) * mpmath.mpf(0.9)  # the sample probes it
        # attained: the Jacobian at the maximising region's interior point has this norm
        j = _torch_jacobian(net, point)
        if p == 2:
            at = torch.linalg.matrix_norm(j, ord=2).item()
        else:
            at = j.abs().sum(dim=1 if p == INF else 0).max().item()
        assert abs(mpmath.mpf(at) / _cmp(value) - 1) < 1e-12
    if p == INF:  # the packaged helper agrees with the enumeration above
        assert exact_lipschitz(net, p).value == value


CASES = [  # (hidden widths, seed, norms and methods)
    ((6, 6), 0, {2: ("naive", "lipsdp"), INF: ("naive", "lipopt"), 1: ("naive", "lipopt")}),
    ((5, 5, 5), 1, {2: ("naive", "lipsdp"), INF: ("naive",)}),
]


@pytest.mark.parametrize("widths,seed,methods", CASES, ids=["2-hidden", "3-hidden"])
def test_estimate_brackets_the_exact_constant(widths, seed, methods):
    net, jac = _enumerated(widths, seed)
    assert len(jac) > 30
    for p, names in methods.items():
        exact = max(opnorm_exact(j, p) for j, _ in jac)
        for name in names:
            est = lipkit.estimate(net, p=p, method=name)
            assert est.method == name, (name, est.details.get("fallback"))
            with mpmath.workdps(60):
                assert _cmp(est.upper) >= _cmp(exact), (p, name, est.upper, exact)
                assert _cmp(est.lower) <= _cmp(exact), (p, name, est.lower, exact)
                assert est.lower > 0
