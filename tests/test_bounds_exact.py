"""Bounds against exact / 50-digit ground truths, with no tolerance in the bound's favour (issue 17).

Each test here also checks that its inputs are *adversarial*: the plain float64 computation of the norm
(what the code computes before :func:`lipkit.bounds.round_up` inflates it) is strictly below the exact
value for at least one case, so a ``round_up`` that forgets to round up makes the test fail.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from exact_ref import l1_norm_exact, l2_norm_mp, linf_norm_exact, mp_to_fraction
from torch import nn

import lipkit
from lipkit.bounds import operator_norm, round_up

INF = math.inf


def _adversarial_rows(dtype: torch.dtype) -> torch.Tensor:
    """Rows whose exact l1 norm is not a float64 number, and whose float64 sum rounds *down* in every
    summation order: ``1 + 2^-54`` (a quarter unit in the last place of 1) is rounded to 1."""
    return torch.tensor([[1.0, -(2.0**-54)], [0.5, 0.25]], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linf_and_l1_norms_dominate_exact_rational_on_rounding_down_rows(dtype):
    w = _adversarial_rows(dtype)
    exact_inf = linf_norm_exact(w)
    assert exact_inf == 1 + Fraction(1, 2**54)
    assert Fraction(w.double().abs().sum(1).max().item()) < exact_inf  # float64 rounds down here
    assert Fraction(operator_norm(w, INF)) >= exact_inf
    assert Fraction(operator_norm(w.t().contiguous(), 1)) >= exact_inf  # column sums of the transpose
    lin = nn.Linear(2, 2, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    assert Fraction(lipkit.lipschitz_bound(lin, INF)) >= exact_inf
    assert Fraction(lipkit.lipschitz_bound(lin, 1)) >= l1_norm_exact(w)
    # tight: the slack is a few units of round-off, not a loose factor
    assert operator_norm(w, INF) <= float(exact_inf) * (1 + 1e-12)


@pytest.mark.parametrize("p", [INF, 1])
def test_operator_norm_dominates_exact_rational_on_random_float64_matrices(p):
    g = torch.Generator().manual_seed(17)
    below = 0
    for _ in range(40):
        m, n = (int(v) for v in torch.randint(2, 12, (2,), generator=g))
        # entries over many binades: the float64 row sums are inexact
        w = torch.randn(m, n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
            -6, 6, (m, n), generator=g).double()
        exact = linf_norm_exact(w) if p == INF else l1_norm_exact(w)
        plain = w.abs().sum(1 if p == INF else 0).max().item()
        below += Fraction(plain) < exact
        bound = operator_norm(w, p)
        assert Fraction(bound) >= exact, (p, m, n)
        assert bound <= float(exact) * (1 + 1e-12)
    assert below >= 3  # the sample contains cases where the float64 sum under-estimates


def test_spectral_norm_dominates_50_digit_singular_value():
    g = torch.Generator().manual_seed(3)
    below = 0
    for k in range(30):
        m, n = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
        w = torch.randn(m, n, generator=g, dtype=torch.float32 if k % 2 else torch.float64)
        exact = l2_norm_mp(w)
        plain = torch.linalg.matrix_norm(w.double(), ord=2).item()
        with mpmath.workdps(60):
            below += mpmath.mpf(plain) < exact
            bound = operator_norm(w, 2)
            assert mpmath.mpf(bound) >= exact, (m, n, bound, exact)
            assert mpmath.mpf(bound) <= exact * (1 + mpmath.mpf(1e-12))
            lin = nn.Linear(n, m, bias=False).to(w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            assert mpmath.mpf(lipkit.lipschitz_bound(lin, 2)) >= exact
    assert below >= 3  # LAPACK's float64 sigma_max is below the true value for some of these


@pytest.mark.parametrize("p", [2, INF, 1])
def test_sequential_product_is_rounded_up(p):
    """Two 1x1 layers: the exact Lipschitz constant is |a b|; the float64 product rounds down."""
    a = b = 1.0 + 2.0**-52
    exact = Fraction(a) * Fraction(b)
    assert Fraction(a * b) < exact
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.fill_(a)
        net[2].weight.fill_(-b)
    bound = lipkit.lipschitz_bound(net, p)
    assert Fraction(bound) >= exact
    assert bound <= float(exact) * (1 + 1e-12)


def test_mixed_norms_dominate_exact_values():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        w = torch.randn(4, 6, generator=g, dtype=torch.float64)
        with mpmath.workdps(50):
            rows = [mpmath.sqrt(mpmath.fsum(mpmath.mpf(v) ** 2 for v in r)) for r in w.tolist()]
            cols = [mpmath.sqrt(mpmath.fsum(mpmath.mpf(v) ** 2 for v in r)) for r in w.t().tolist()]
            assert mpmath.mpf(operator_norm(w, 2, INF)) >= max(rows)
            assert mpmath.mpf(operator_norm(w, 1, 2)) >= max(cols)
        assert Fraction(operator_norm(w, 1, INF)) >= max(abs(Fraction(v)) for r in w.tolist() for v in r)


def test_batchnorm_bound_dominates_50_digit_scale():
    g = torch.Generator().manual_seed(11)
    below = 0
    for _ in range(40):
        bn = nn.BatchNorm1d(3).double().eval()
        with torch.no_grad():
            bn.running_var.copy_(torch.rand(3, generator=g, dtype=torch.float64) * 4 + 0.01)
            bn.weight.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        with mpmath.workdps(50):
            exact = max(abs(mpmath.mpf(w)) / mpmath.sqrt(mpmath.mpf(v) + mpmath.mpf(bn.eps))
                        for w, v in zip(bn.weight.tolist(), bn.running_var.tolist(), strict=True))
            plain = (bn.weight.double().abs() / torch.sqrt(bn.running_var.double() + bn.eps)).max().item()
            below += mpmath.mpf(plain) < exact
            assert mpmath.mpf(lipkit.lipschitz_bound(bn, 2)) >= exact
    assert below >= 3


def test_round_up_dominates_by_its_stated_slack():
    """``round_up(v, n)`` >= v (1 + 4 n eps64) exactly, for values with a representable product."""
    eps = Fraction(2) ** -52
    for v in (1.0, 1.0 + 2.0**-52, math.pi, 1e-300, 3e300 / 7):
        for n in (1, 7, 100):
            r = round_up(v, n)
            assert Fraction(r) > Fraction(v)
            assert Fraction(r) >= Fraction(v) * (1 + 4 * n * eps)
    assert round_up(math.inf) == math.inf and round_up(math.nan) == math.inf


def test_mp_to_fraction_is_exact():
    with mpmath.workdps(50):
        x = mpmath.sqrt(2)
        f = mp_to_fraction(x)
        assert mpmath.mpf(f.numerator) / f.denominator == x
