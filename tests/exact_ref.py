"""Ground truths for Lipschitz bounds, computed independently of lipkit.

* l_inf / l_1 operator norms as exact rationals (``fractions.Fraction``) of the float weights (every
  float32 / float64 number is a dyadic rational, so these are exact);
* l2 operator norms with mpmath at 50 significant digits (the error of that computation is ~1e-48
  relative, far below the float64 round-off the bounds must cover; where a test needs a number that is
  provably below the true norm, :func:`l2_norm_lower` shaves 1e-40 off).

Nothing here imports lipkit.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import torch

DPS = 50


def fractions_of(w: torch.Tensor) -> list[list[Fraction]]:
    """The exact values of a 2-D float tensor (float32 -> float64 is exact) as Fractions."""
    w = w.detach().cpu().to(torch.float64)
    assert w.dim() == 2
    return [[Fraction(v) for v in row] for row in w.tolist()]


def linf_norm_exact(w: torch.Tensor) -> Fraction:
    """Exact max row l1 norm (the l_inf -> l_inf operator norm)."""
    rows = fractions_of(w)
    return max((sum((abs(v) for v in r), Fraction(0)) for r in rows), default=Fraction(0))


def l1_norm_exact(w: torch.Tensor) -> Fraction:
    """Exact max column l1 norm (the l_1 -> l_1 operator norm)."""
    return linf_norm_exact(w.detach().t())


def mp_matrix(w: torch.Tensor) -> mpmath.matrix:
    w = w.detach().cpu().to(torch.float64)
    return mpmath.matrix([[mpmath.mpf(v) for v in row] for row in w.tolist()])


def l2_norm_mp(w: torch.Tensor) -> mpmath.mpf:
    """Largest singular value at :data:`DPS` digits (sqrt of the top eigenvalue of the Gram matrix)."""
    with mpmath.workdps(DPS):
        a = mp_matrix(w)
        g = a.T * a if a.rows >= a.cols else a * a.T
        if g.rows == 1:
            return mpmath.sqrt(abs(g[0, 0]))
        ev = mpmath.eigsy(g, eigvals_only=True)
        return mpmath.sqrt(max(max(ev), 0))


def l2_norm_lower(w: torch.Tensor) -> Fraction:
    """A rational that is provably <= ||w||_2 (the 50-digit value, minus 1e-40 relative)."""
    with mpmath.workdps(DPS):
        v = l2_norm_mp(w) * (1 - mpmath.mpf(10) ** -40)
        return mp_to_fraction(v)


def mp_to_fraction(v: mpmath.mpf) -> Fraction:
    man, exp = mpmath.mpf(v).man_exp
    return Fraction(int(man)) * (Fraction(2) ** int(exp))


def dense_matrix(f, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map ``f`` (batched, float64): column k is ``f(e_k)``."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        out = f(eye).reshape(n, -1)
    return out.t().contiguous()


def l2_norm_sq_lower(w: torch.Tensor) -> Fraction:
    """An exact rational lower bound of ``||w||_2^2`` for matrices too big for :func:`l2_norm_mp`.

    For every vector ``v``, ``||w v||^2 / ||v||^2 <= sigma_max^2``; with ``v`` the float64 top right
    singular vector (any ``v`` is valid, this one makes the bound tight to ~1e-16) and the products
    evaluated in exact rational arithmetic on the float values, the quotient is a rigorous lower bound.
    """
    w64 = w.detach().cpu().to(torch.float64)
    v = torch.linalg.svd(w64, full_matrices=False).Vh[0]
    vf = [Fraction(x) for x in v.tolist()]
    rows = fractions_of(w64)
    num = sum((sum((a * b for a, b in zip(r, vf, strict=True)), Fraction(0)) ** 2 for r in rows), Fraction(0))
    den = sum((x * x for x in vf), Fraction(0))
    return num / den


def exact_matrix_norm(mat: list[list[Fraction]], p: float):
    """The l_p operator norm of an exact rational matrix: a Fraction for p = 1 and inf, and for p = 2 the
    square root of the largest eigenvalue of ``M^T M`` in mpmath at the working precision."""
    if p == math.inf:
        return max(sum(abs(v) for v in row) for row in mat)
    if p == 1:
        return max(sum(abs(row[j]) for row in mat) for j in range(len(mat[0])))
    m = mpmath.matrix([[mpmath.mpf(v.numerator) / v.denominator for v in row] for row in mat])
    ev = mpmath.eigsy(m.T * m)[0]
    return mpmath.sqrt(max(ev[i] for i in range(ev.rows)))


def at_least(value: float, exact) -> bool:
    """``value >= exact`` compared exactly (``exact`` a Fraction or an mpmath number)."""
    return Fraction(value) >= exact if isinstance(exact, Fraction) else mpmath.mpf(value) >= exact


def sqrt_down(q: Fraction, digits: int = 100) -> Fraction:
    """A rational ``<= sqrt(q)`` within ``10^-digits`` (integer square root, exact)."""
    scale = 10**digits
    return Fraction(math.isqrt(q.numerator * scale * scale // q.denominator), scale)


def sqrt_up(q: Fraction, digits: int = 100) -> Fraction:
    """A rational ``>= sqrt(q)`` within ``10^-digits``."""
    return sqrt_down(q, digits) + Fraction(1, 10**digits)


def carries_round_up(value: float, exact: Fraction, n_ops: int,
                     upper: Fraction = Fraction(1, 10**12)) -> bool:
    """``value`` is ``lipkit.bounds.round_up(., n_ops)`` of an exactly known ``exact``: at least
    ``exact (1 + (4 n_ops - 2) eps)`` (the documented ``4 n_ops eps`` inflation less two roundings of the
    evaluation, so a smaller count fails) and at most ``exact (1 + upper)``."""
    v = Fraction(value)
    eps = Fraction(2) ** -52
    return exact * (1 + (4 * n_ops - 2) * eps) <= v <= exact * (1 + upper)
