"""The round-off margins of the local naive / affine bounds and of the slope ranges (issue 17).

Each test checks one documented margin of :mod:`lipkit.estimation.local` on an input where it is not hidden
by ``operator_norm``'s own rounding: a matrix whose Frobenius norm is 20 times its operator norm, a network
whose exact Jacobian is 0 (so the bound is the round-off term alone), a product of 12 factors, a slope range
above 1.  They kill the ``margin-unreached`` mutants of bench/mutation_scope.py (a weakened margin).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from exact_ref import exact_matrix_norm
from torch import nn

from lipkit.bounds import EPS64, operator_norm
from lipkit.estimation._mlp import parse_mlp
from lipkit.estimation.local import (
    _folded_norm,
    activation_slope_range,
    affine_local_upper,
    naive_local_upper,
)

U = Fraction(EPS64)
INF = math.inf


@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_folded_norm_adds_the_documented_formation_error(p):
    n = 400
    if p == 2:  # ||I||_2 = 1, ||I||_F = 20
        mat, x = np.eye(n), 20.0
    elif p == INF:  # one row of ones: max row sum 400, Frobenius and spectral norms 20
        mat, x = np.ones((1, n)), 400.0
    else:  # one column of ones: max column sum 400
        mat, x = np.ones((n, 1)), 400.0
    norm = operator_norm(torch.from_numpy(mat), p)
    got = _folded_norm(mat, p)
    # got = norm + 4 EPS64 x: the difference is exact up to one rounding of the sum (ulp(norm))
    assert got - norm >= 4 * EPS64 * x - 2 * math.ulp(norm)
    assert got - norm <= 4 * EPS64 * x * 1.01 + 2 * math.ulp(norm)


@pytest.mark.parametrize("p", [2.0, INF])
def test_naive_local_upper_rounds_a_long_product_up_by_its_documented_slack(p):
    """12 one-neuron layers: the bound is round_up(prod f_k, 4 L) of the factors f_k = _folded_norm; it must
    dominate the exact product of the factors inflated by 16 L EPS64 (round_up's slack for 4 L operations)."""
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    for k in range(12):
        layers.append(nn.Linear(1, 1))
        if k < 11:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).double()
    mlp = parse_mlp(net)
    rng = np.random.default_rng(1)
    slopes = [rng.uniform(0.3, 0.9, 1) for _ in range(11)]
    mlp.neuron_slopes = [(np.zeros(1), s) for s in slopes]
    got = naive_local_upper(mlp, p)
    exact = Fraction(1)
    for k, w in enumerate(mlp.weights):
        w = w.numpy()
        if p == 2:
            left = np.sqrt(slopes[k]) if k < 11 else np.ones(1)
            right = np.sqrt(slopes[k - 1]) if k > 0 else np.ones(1)
            mat = left[:, None] * w * right[None, :]
        else:
            mat = w * (slopes[k - 1] if k > 0 else np.ones(1))[None, :]
        exact *= Fraction(_folded_norm(mat, p))
    L = 12
    # the slack 16 L EPS64 less the <= L EPS64 of the float64 product's own L - 1 roundings
    assert Fraction(got) >= exact * (1 + 15 * L * U)
    assert got <= float(exact) * (1 + 20 * L * EPS64)


@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_affine_local_upper_of_a_cancelling_net_is_its_documented_round_off_term(p):
    """W2 subtracts equal rows of W1: the exact (and computed) Jacobian is 0, so the bound is the round-off
    term gamma ||J_abs||_p, gamma = 2 (inner + L + 2) EPS64, inner = sum over layers k >= 1
    of (fan-in + 1)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    # dyadic weights: every product and sum is exact in float64, so the computed Jacobian is 0 too
    r = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=torch.float64)
    with torch.no_grad():
        net[0].weight.copy_(torch.stack([r[0], r[0], r[1], r[1]]))
        net[2].weight.copy_(torch.tensor([[1.5, -1.5, 0.0, 0.0], [0.0, 0.0, -0.75, 0.75]],
                                         dtype=torch.float64))
        net[4].weight.copy_(torch.tensor([[0.5, 0.25], [-0.25, 1.0]], dtype=torch.float64))
    mlp = parse_mlp(net)
    fixed = [np.array([1.0, 1.0, 0.5, 0.5]), np.array([1.0, 0.25])]
    mlp.neuron_slopes = [(a, a.copy()) for a in fixed]
    got = affine_local_upper(mlp, p)
    ws = [[[Fraction(v) for v in row] for row in w.tolist()] for w in mlp.weights]
    Jabs = [[abs(v) for v in row] for row in ws[0]]
    for k in (1, 2):
        d = [Fraction(v) for v in fixed[k - 1]]
        Jabs = [[sum(abs(ws[k][o][i]) * abs(d[i]) * Jabs[i][j] for i in range(len(d))) for j in range(3)]
                for o in range(len(ws[k]))]
    inner = (4 + 1) + (2 + 1)
    gamma = 2 * (inner + 3 + 2) * U
    if p == 2:
        fro = Fraction(math.sqrt(float(sum(v * v for row in Jabs for v in row))))
        term = gamma * fro
    else:
        term = gamma * exact_matrix_norm(Jabs, p)
    assert Fraction(got) >= term * (1 - Fraction(1, 10**12))
    assert Fraction(got) <= term * (1 + Fraction(1, 10**12))


def test_smooth_slope_range_is_widened_relative_to_the_largest_slope():
    """ELU(3) on [-1, -0.5]: phi' = 3 e^x ranges over [3/e, 3/sqrt(e)]; the widening is 1e-12 of the larger
    end (documented), so both ends move by at least ~1e-12 * 3 / sqrt(e)."""
    lo, hi = np.array([-1.0]), np.array([-0.5])
    a, b = activation_slope_range(nn.ELU(3.0), lo, hi)
    top = 3.0 * math.exp(-0.5)
    assert b[0] >= top + 0.99e-12 * top
    assert a[0] <= 3.0 * math.exp(-1.0) - 0.99e-12 * top
    assert b[0] <= top + 1.01e-12 * top + 1e-15
