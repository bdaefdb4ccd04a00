"""Property-based checks (hypothesis) of ``lipschitz_bound`` against independent ground truths (issue 17).

For random shapes, constraints, dtypes and norms, the bound must be >= the exact operator norm of the
weight the forward pass uses, with no tolerance in the bound's favour:

* l_inf / l_1: exact rationals (:mod:`exact_ref`);
* l2, small matrices: 50-digit mpmath singular values;
* l2, convolutions: the explicit dense matrix of the conv (the conv applied to the basis vectors in
  float64: every entry is one kernel weight times 1 plus exact zeros, so the matrix is exact) and an
  exact rational lower bound of its squared norm (a Rayleigh quotient evaluated in Fractions, see
  :func:`exact_ref.l2_norm_sq_lower`), so no margin is needed anywhere.

The bound must also be tight where lipkit computes the norm directly (dense layers): within 1e-9.
Runs are deterministic (``derandomize=True``) and small (``max_examples``), without a deadline.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import torch
from exact_ref import dense_matrix, fractions_of, l1_norm_exact, l2_norm_mp, l2_norm_sq_lower, linf_norm_exact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import lipkit

INF = math.inf


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from([torch.float32, torch.float64])
NORMS = st.sampled_from([1.0, 2.0, INF])
CONSTRAINTS = st.sampled_from([None, "orthogonal", "spectral", "aol", "inf", "one", "one-inf", "two-inf"])


def _exact_norm(w: torch.Tensor, p: float):
    """(ground truth as an mpf, whether it is exact up to 1e-45) of the l_p operator norm of ``w``."""
    with mpmath.workdps(60):
        if p == INF:
            f = linf_norm_exact(w)
            return mpmath.mpf(f.numerator) / f.denominator
        if p == 1:
            f = l1_norm_exact(w)
            return mpmath.mpf(f.numerator) / f.denominator
        return l2_norm_mp(w)


def _assert_dominates(bound: float, truth, rel_tight: float | None, what) -> None:
    with mpmath.workdps(60):
        b = mpmath.mpf(bound)
        assert b >= truth, (what, bound, truth)
        if rel_tight is not None:
            assert b <= truth * (1 + mpmath.mpf(rel_tight)) + mpmath.mpf(1e-300), (what, bound, truth)


@_settings(150)
@given(out_f=st.integers(1, 7), in_f=st.integers(1, 7), constraint=CONSTRAINTS, dtype=DTYPES, p=NORMS,
       seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 0.3, 1.0, 50.0]),
       lip=st.sampled_from([0.5, 1.0, 3.0]), mode=st.sampled_from(["train", "eval"]))
def test_dense_layer_bound_dominates_exact_norm(out_f, in_f, constraint, dtype, p, seed, scale, lip, mode):
    torch.manual_seed(seed)
    if constraint is None:
        layer = nn.Linear(in_f, out_f).to(dtype)
    else:
        layer = lipkit.LipLinear(in_f, out_f, constraint=constraint, lip=lip, dtype=dtype)
    with torch.no_grad():  # move the raw weight somewhere generic, at several scales
        for param in layer.parameters():
            param.copy_(torch.randn_like(param) * scale)
    getattr(layer, mode)()
    with parametrize.cached():  # one weight for the bound and the reference
        bound = lipkit.lipschitz_bound(layer, p)
        w = layer.weight.detach().clone()
        x = torch.randn(3, in_f, dtype=dtype)
        assert torch.equal(layer(x), nn.functional.linear(x, w, layer.bias))  # the weight forward uses
    _assert_dominates(bound, _exact_norm(w, p), 1e-9, (constraint, p, dtype, mode))


@_settings(100)
@given(widths=st.lists(st.integers(1, 5), min_size=2, max_size=4), p=NORMS, dtype=DTYPES,
       seed=st.integers(0, 2**31 - 1))
def test_linear_chain_bound_dominates_exact_norm_of_the_product(widths, p, dtype, seed):
    """A chain of Linear layers (no activation) is the linear map ``W_k ... W_1``: its Lipschitz constant
    is the norm of the exact rational product."""
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b, bias=False).to(dtype) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    net = nn.Sequential(*layers)
    prod = fractions_of(layers[0].weight)
    for lin in layers[1:]:
        w = fractions_of(lin.weight)
        prod = [[sum((w[i][k] * prod[k][j] for k in range(len(prod))), Fraction(0))
                 for j in range(len(prod[0]))] for i in range(len(w))]
    bound = lipkit.lipschitz_bound(net, p)
    with mpmath.workdps(60):
        if p == 2:
            a = mpmath.matrix([[mpmath.mpf(v.numerator) / v.denominator for v in row] for row in prod])
            g = a.T * a
            truth = mpmath.sqrt(max(max(mpmath.eigsy(g, eigvals_only=True)), 0)) if g.rows > 1 else \
                mpmath.sqrt(abs(g[0, 0]))
        else:
            rows = prod if p == INF else [list(c) for c in zip(*prod, strict=True)]
            f = max(sum((abs(v) for v in r), Fraction(0)) for r in rows)
            truth = mpmath.mpf(f.numerator) / f.denominator
        _assert_dominates(bound, truth, None, (widths, p))


@_settings(120)
@given(cin=st.integers(1, 3), cout=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 1), h=st.integers(3, 6), w=st.integers(3, 6),
       dtype=DTYPES, p=NORMS, known_size=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv_bound_dominates_exact_norm_of_its_dense_matrix(cin, cout, kh, kw, stride, padding, h, w, dtype,
                                                             p, known_size, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=False).to(dtype)
    shape = (cin, h, w)
    bound = lipkit.lipschitz_bound(conv, p, input_shape=shape if known_size else None)
    conv64 = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=False).double()
    with torch.no_grad():
        conv64.weight.copy_(conv.weight.double())  # exact
    mat = dense_matrix(conv64, shape)
    # the dense matrix is the conv the module computes (float32 module vs float64 reference)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(conv(x.to(dtype)).double().reshape(2, -1), x.reshape(2, -1) @ mat.T,
                                   rtol=1e-5, atol=1e-5)
    with mpmath.workdps(60):
        if p == 2:
            sq = l2_norm_sq_lower(mat)
            assert Fraction(bound) ** 2 >= sq, (bound, sq)
        else:
            truth = linf_norm_exact(mat) if p == INF else l1_norm_exact(mat)
            assert Fraction(bound) >= truth, (p, bound, truth)
