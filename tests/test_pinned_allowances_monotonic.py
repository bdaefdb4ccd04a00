"""The round-off allowances of :mod:`lipkit.monotonic.network`, pinned (issue 17: no mutant that tightens a
bound survives).

``slope_for`` and the wrapper's own Lipschitz rule end in ``round_up(value, 2)``
(:func:`lipkit.bounds.numerics.round_up`: a factor ``1 + 8 EPS64``, then one step to the next float).  On
inputs where the float64 operations before it are exact or lose at most one rounding, the result must carry
that whole factor (a count of 1 gives at most ``1 + 6 EPS64``), and stay within ``1e-12`` of the documented
value.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import EPS64, operator_norm
from lipkit.monotonic import ROUNDOFF_MARGIN, MonotonicNetwork
from lipkit.monotonic.network import slope_for

EPS = Fraction(EPS64)
U = EPS / 2


@pytest.mark.parametrize("bound", [1.0, 0.25, 3.0, 1.5])
def test_slope_carries_its_margin_and_two_operations(bound):
    """``lam = round_up(L (1 + 2^-10), 2)``: ``1 + 2^-10`` is exact, and so is its product with a dyadic
    ``L`` of few bits, so ``lam >= L (1 + 2^-10)(1 + 8 EPS64)``; a floor ``lip`` above that is returned as
    is."""
    exact = Fraction(bound) * (1 + Fraction(ROUNDOFF_MARGIN))
    assert Fraction(1.0 + ROUNDOFF_MARGIN) == 1 + Fraction(ROUNDOFF_MARGIN)
    lam = Fraction(slope_for(bound, None))
    assert exact * (1 + 8 * EPS) <= lam <= exact * (1 + Fraction(1, 10**12))
    assert Fraction(slope_for(bound, 2 * bound + 1)) == 2 * bound + 1
    assert slope_for(bound, bound / 2) == float(lam)


@pytest.mark.parametrize(("p", "q"), [(1, math.inf), (2, 2), (math.inf, math.inf)])
def test_wrapper_rule_carries_two_operations(p, q):
    """``L_{p->q}(f) = round_up(L_{p->q}(g) + ||lam C^T||_{p->q}, 2)`` (``_monotonic_rule``, ``lam`` the
    float32 slope the forward uses).  With an identity body (``L(g) = 1``) and the floor ``lip = 2``
    (``lam = 2``), the sum of the two float64 bounds rounds at most once, so the result is at least
    ``(L(g) + ||lam C^T||)(1 - 2^-53)(1 + 8 EPS64)``."""
    net = MonotonicNetwork(nn.Identity(), [1, 0, -1], in_features=3, lip=2.0)
    lam = float(net.deployed_slope(torch.float32).item())
    assert lam == 2.0
    lg = lipkit.lipschitz_bound(net.body, p, q, input_shape=(3,))
    la = operator_norm(net.constraints.double().T * lam, p, q)
    exact = Fraction(lg) + Fraction(la)
    value = Fraction(lipkit.lipschitz_bound(net, p, q))
    assert value >= exact * (1 - U) * (1 + 8 * EPS)
    assert value <= exact * (1 + Fraction(1, 10**12))
