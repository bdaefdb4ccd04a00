"""The certified projection step's bound (:mod:`lipkit.dp.retraction`) against its documented formula.

Each piece of the rounding analysis in the module docstring is a function; each is checked here against the
formula evaluated in exact rationals, with no tolerance in the bound's favour and only the documented
inflation of each (``round_up``'s ``4 n eps``, the ``gamma_n`` of Higham's Lemma 3.1) allowed above it, so
that a piece that drops a term or an allowance fails (issue 17's mutation scope).  The attacks on the step
with trained and perturbed weights are in tests/test_dp_certified.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from exact_ref import carries_round_up, sqrt_down

from lipkit.bounds import EPS64
from lipkit.dp.retraction import (
    _blocked_gram,
    _gamma,
    _gram_error,
    _row_sum_bound,
    _step_error,
    _step_is_covered,
    certified_newton_schulz,
)

E = Fraction(EPS64)
U32 = Fraction(1, 2**24)
TINY32 = Fraction(1, 2**126)
SUB32 = Fraction(1, 2**149)


def _gamma_exact(n: int) -> Fraction:
    return n * U32 / (1 - n * U32)


@pytest.mark.parametrize("n", [1, 5, 200, 4096, 2**20])
def test_gamma_is_highams_gamma_n_in_float32(n):
    """``n u / (1 - n u)`` with ``u = 2^-24``, to one float64 rounding (which its callers' round-up counts
    include)."""
    g = Fraction(_gamma(n))
    exact = _gamma_exact(n)
    assert exact * (1 - E) <= g <= exact * (1 + E)


@pytest.mark.parametrize(("m", "k", "block"), [(5, 300, 128), (3, 256, 128), (130, 200, 64), (200, 131, 66)])
def test_blocked_gram_is_the_gram_matrix_and_reports_block_plus_blocks(m, k, block):
    """Entries that are multiples of 1/16 below 1/2 make every float32 product and sum exact, so the blocked
    Gram matrix must equal the exact one; both code paths (``m < 128`` and the symmetric split) and padded
    last blocks are covered."""
    g = torch.Generator().manual_seed(m + k)
    a = torch.randint(-8, 9, (m, k), generator=g).float() / 16
    s, n = _blocked_gram(a, block)
    assert s.shape == (m, m)
    assert torch.equal(s.double(), a.double() @ a.double().T)
    assert n == block + -(-k // block)


def test_row_sum_bound_sums_in_float64_and_carries_its_allowance():
    """A float32 row ``[1, 2^-25 x 61]``: a float32 sum loses the small terms (each is a quarter of an ulp of
    1), the float64 sum is exact; the result is rounded up for ``m + 2`` operations."""
    m = 62
    e = torch.zeros(m, m)
    e[3, 0] = 1.0
    e[3, 1:] = -(2.0**-25)
    exact = 1 + 61 * Fraction(1, 2**25)
    assert carries_round_up(_row_sum_bound(e), exact, m + 2)


def test_gram_error_uses_each_row_norm_and_covers_the_norms_rounding():
    """``eta = max_i gamma_n ||x_i|| sum_j ||x_j|| (1 + 4 (m + k + 2) 2^-52) + m k 2^-126``: unequal row norms
    (the largest row's term, not the Frobenius norm's square), and with zero norms only the underflow term."""
    norms = torch.tensor([1.0, 0.25, 0.5, 0.125], dtype=torch.float64)
    n, k = 10, 300
    m = 4
    main = _gamma_exact(n) * 1 * Fraction(15, 8)
    exact = main * (1 + 4 * (m + k + 2) * Fraction(2) ** -52) + m * k * TINY32
    value = Fraction(_gram_error(norms, n, k))
    assert exact * (1 - 3 * E) <= value <= exact * (1 + 4 * E)
    assert Fraction(_gram_error(torch.zeros(m, dtype=torch.float64), n, k)) == m * k * TINY32


@pytest.mark.parametrize(("r", "eta", "diagonal", "covered"), [
    (0.5, 0.01, 0.2, True),
    (0.999, 0.0, 0.49, True),
    (0.9, 2.1, 0.2, True),             # 1 + r + eta = 4: ||X||_2 <= 2 still holds
    (0.9, 2.1000001, 0.2, False),      # 1 + r + eta > 4
    (1.0, 0.0, 0.2, False),            # r = 1: the restart policy
    (2.0, 0.0, 0.2, False),
    (0.5, 0.01, 0.5, False),           # |fl(s_ii - 1)| = 1/2 may come from an inexact s_ii < 1/2
    (math.inf, 0.0, 0.2, False),
    (0.5, math.inf, 0.2, False),
    (0.5, math.nan, 0.2, False),
])
def test_step_is_covered_only_where_the_analysis_holds(r, eta, diagonal, covered):
    assert _step_is_covered(r, eta, diagonal) is covered


def _err_exact(r: Fraction, eta: Fraction, x_fro: Fraction, q_fro: Fraction, m: int, k: int) -> Fraction:
    """The documented ``err``, with each square root rounded down."""
    return (eta / 2 * sqrt_down(1 + r + eta) + _gamma_exact(m) * r * x_fro / 2 + U32 / (1 - U32) * q_fro
            + sqrt_down(Fraction(m * k)) * (SUB32 + TINY32))


@pytest.mark.parametrize(("r", "eta", "x_fro", "q_fro"), [
    (0.0, 0.0, 0.0, 0.0),        # only the underflow term
    (0.0, 0.0, 0.0, 16.0),       # only the final subtraction's rounding
    (0.5, 0.0, 16.0, 0.0),       # only the product E X's rounding
    (0.0, 2.0**-10, 0.0, 0.0),   # only the Gram error times sigma(X)
    (0.9, 1.5, 0.0, 0.0),        # sigma(X) = sqrt(3.4) (the analysis allows up to 2)
    (0.25, 2.0**-12, 20.0, 20.5),
])
def test_step_error_is_the_documented_sum_of_its_terms(r, eta, x_fro, q_fro):
    m, k = 4, 9
    exact = _err_exact(Fraction(r), Fraction(eta), Fraction(x_fro), Fraction(q_fro), m, k)
    assert carries_round_up(_step_error(r, eta, x_fro, q_fro, m, k), exact, 8)


def test_step_refuses_what_it_does_not_cover_and_steps_a_scalar():
    assert certified_newton_schulz(torch.ones(2, 3, 4) / 4) is None  # not a matrix
    assert certified_newton_schulz(torch.zeros(0, 4)) is None
    assert certified_newton_schulz(torch.zeros(4, 0)) is None
    q, bound = certified_newton_schulz(torch.tensor([[1.0625]]))  # 1.5 s - 0.5 s^3 = 0.9958...
    assert q.shape == (1, 1)
    assert Fraction(q.item()) == Fraction(3, 2) * Fraction(17, 16) - Fraction(1, 2) * Fraction(17, 16) ** 3
    assert bound >= 1.0


def _scaled_hadamard(scales: list[Fraction], k: int) -> torch.Tensor:
    """Rows of the ``k x k`` Sylvester-Hadamard matrix over ``sqrt(k)`` (orthonormal), scaled by
    ``scales``."""
    h = torch.ones(1, 1)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    rows = h[: len(scales)] / math.sqrt(k)
    return rows * torch.tensor([float(c) for c in scales]).unsqueeze(1)


@pytest.mark.parametrize("tall", [False, True])
def test_step_on_an_exactly_representable_matrix_carries_the_documented_bound(tall):
    """Rows ``c_i h_i`` of a Hadamard matrix (``c_i`` of a few bits): the float32 Gram matrix, the step and
    the output are exact, ``Ê = diag(c_i^2 - 1)``, ``Q = diag(c_i (3 - c_i^2) / 2) H``, so the bound must be
    the documented ``round_up(1 + err, 2)`` evaluated on the exact ``r``, ``eta``, ``||X||_F`` and ``||Q||_F``
    (unequal ``c_i``: ``eta`` takes the largest row's term).  A transposed input gives the transposed step."""
    scales = [Fraction(17, 16), Fraction(1), Fraction(15, 16), Fraction(9, 8)]
    m, k = len(scales), 16
    x = _scaled_hadamard(scales, k)
    out = certified_newton_schulz(x.T.contiguous() if tall else x)
    assert out is not None
    q, bound = out
    q = q.T if tall else q
    fq = [[Fraction(v) for v in row] for row in q.double().tolist()]
    fx = [[Fraction(v) for v in row] for row in x.double().tolist()]
    for c, qrow, xrow in zip(scales, fq, fx, strict=True):
        assert all(qv == c * (3 - c * c) / 2 * xv / c for qv, xv in zip(qrow, xrow, strict=True))
    r = max(abs(c * c - 1) for c in scales)
    n = k + 1  # one block of width k
    eta = _gamma_exact(n) * max(scales) * sum(scales)
    x_fro = sqrt_down(sum(c * c for c in scales))
    q_fro = sqrt_down(sum(v * v for row in fq for v in row))
    need = (1 + _err_exact(r, eta, x_fro, q_fro, m, k)) * (1 + 7 * E)
    assert need <= Fraction(bound) <= need * (1 + Fraction(1, 10**12))
    # and the bound holds: Q's rows are orthogonal, ||Q||_2 = max_i |c_i (3 - c_i^2) / 2| <= 1
    assert max(abs(c * (3 - c * c) / 2) for c in scales) <= Fraction(bound)
