"""Numerics shared by every bound: norms, float64 evaluation and rounding up.

Every bound in lipkit is computed in float64 from the weights the forward pass uses and then
inflated by :func:`round_up`, so that it dominates the exact (real-arithmetic) value of the quantity
it bounds.  :func:`operator_norm` gives sound matrix norms for every pair of norms in
{l_1, l_2, l_inf}.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EPS64", "Norm", "normalize_p", "round_up", "as_float64", "operator_norm", "norm_order",
           "dual_exponent", "pairwise_head_bound", "fp32_products_are_ieee"]

#: float64 unit round-off (machine epsilon 2^-52).
EPS64 = float(torch.finfo(torch.float64).eps)

Norm = float  #: 1.0, 2.0 or math.inf

_ORDER = {1.0: 0, 2.0: 1, math.inf: 2}


def normalize_p(p: float | int | str) -> float:
    """Return p as a float in {1, 2, inf}; raise a clear ValueError otherwise."""
    if isinstance(p, bool):
        raise ValueError(f"unknown norm p={p!r}; use p=1, p=2 or p='inf'")
    if isinstance(p, str):
        key = p.strip().lower()
        if key in ("inf", "linf", "l_inf", "infinity"):
            return math.inf
        try:
            p = float(key)
        except ValueError:
            raise ValueError(f"unknown norm p={p!r}; use p=1, p=2 or p='inf'") from None
    if not isinstance(p, (int, float)):
        raise ValueError(f"unknown norm p={p!r}; use p=1, p=2 or p='inf'")
    p = float(p)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"unsupported norm p={p!r}; use p=1, p=2 or p=inf")
    return p


def norm_order(p: float) -> int:
    """Position of l_p in 1 < 2 < inf: ``||x||_q <= ||x||_p`` whenever ``norm_order(p) <= norm_order(q)``."""
    return _ORDER[p]


def dual_exponent(p: float) -> float:
    """The Hoelder dual q of p (1/p + 1/q = 1): 1 <-> inf, 2 <-> 2."""
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


def fp32_products_are_ieee() -> bool:
    """True when torch runs float32 matrix products in IEEE float32 (no TF32 / bfloat16 shortcuts).

    torch has two switches: the legacy ``torch.set_float32_matmul_precision`` and, since torch 2.9, a
    per-backend ``fp32_precision`` (``torch.backends``, ``torch.backends.mkldnn.matmul`` for the CPU,
    ``torch.backends.cuda.matmul``; ``"none"`` inherits).  Any of them set to reduced precision gives
    ``False``; so does a legacy query that torch refuses to answer (it raises once the two APIs disagree).
    The check covers every backend, not only the one in use: a conservative answer only costs the caller its
    float32 fast path.
    """
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch >= 2.9: the legacy and per-backend settings disagree
        return False
    if legacy != "highest":
        return False
    mkldnn, cuda = getattr(torch.backends, "mkldnn", None), getattr(torch.backends, "cuda", None)
    for backend in (torch.backends, getattr(mkldnn, "matmul", None), getattr(cuda, "matmul", None)):
        if getattr(backend, "fp32_precision", None) not in (None, "ieee", "none"):
            return False
    return True


def round_up(value: float, n_ops: int = 1) -> float:
    """Inflate a float64 result so that it dominates the exact value.

    ``n_ops`` is the length of the longest chain of float64 operations that produced ``value``; the
    relative error of such a chain is below ``gamma_n = n u / (1 - n u)`` with ``u = 2^-53`` (Higham,
    "Accuracy and Stability of Numerical Algorithms", 2002, Lemma 3.1).  We inflate by
    ``4 n eps64 = 8 n u``, a factor 8 above first order, and step once more to the next float.
    Returns ``+inf`` for non-finite input.
    """
    if not math.isfinite(value):
        return math.inf
    slack = 4.0 * max(n_ops, 1) * EPS64
    return math.nextafter(value * (1.0 + slack) + 1e-300, math.inf)


def as_float64(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy of ``tensor`` (exact for float16/32/64 inputs)."""
    t = tensor.detach()
    if t.device.type not in ("cpu", "cuda"):
        t = t.cpu()
    return t.to(torch.float64)


def operator_norm(weight: torch.Tensor, p_in: float | str = 2, p_out: float | str | None = None) -> float:
    """Sound upper bound of ``max ||W x||_{p_out} / ||x||_{p_in}`` for a matrix ``W``.

    Exact formulas (computed in float64 and rounded up):

    * 2 -> 2: the largest singular value (LAPACK SVD is backward stable: its error is below
      ``c max(m, n) eps64 sigma_max``; we inflate accordingly);
    * inf -> inf: max row l1 norm;  1 -> 1: max column l1 norm;
    * 1 -> q: max column l_q norm (the maximum is at a vertex ``e_j`` of the l1 ball);
    * p -> inf: max row l_{p*} norm (Hoelder, ``p*`` the dual exponent).

    The two remaining pairs (inf -> 2, inf -> 1 and 2 -> 1) are NP-hard or costly to compute exactly;
    they get the Hoelder bound ``|| (||w_i||_{p*})_i ||_{p_out}`` (each output ``|w_i . x|`` is at most
    ``||w_i||_{p*} ||x||_p``), which is sound and exact for a single row.
    """
    p_in = normalize_p(p_in)
    p_out = p_in if p_out is None else normalize_p(p_out)
    if weight.dim() != 2:
        raise ValueError(f"operator_norm expects a 2-D matrix, got shape {tuple(weight.shape)}")
    w = as_float64(weight)
    if not torch.isfinite(w).all():
        return math.inf
    m, n = w.shape
    if w.numel() == 0:
        return 0.0
    if p_in == 2 and p_out == 2:
        val = torch.linalg.matrix_norm(w, ord=2).item()
        return round_up(val, 8 * max(m, n) ** 2)
    if p_in == 1:
        if p_out == math.inf:
            return w.abs().max().item()  # no arithmetic: exact
        cols = torch.linalg.vector_norm(w, ord=p_out, dim=0)
        return round_up(cols.max().item(), 2 * m)
    if p_out == math.inf:
        rows = torch.linalg.vector_norm(w, ord=dual_exponent(p_in), dim=1)
        return round_up(rows.max().item(), 2 * n)
    # inf -> 2, inf -> 1, 2 -> 1: Hoelder row by row, then the l_{p_out} norm of the row bounds
    rows = torch.linalg.vector_norm(w, ord=dual_exponent(p_in), dim=1)
    return round_up(torch.linalg.vector_norm(rows, ord=p_out).item(), 2 * (m + n))


def pairwise_head_bound(head_weight: torch.Tensor, body_bound: torch.Tensor | float,
                        p: float) -> torch.Tensor:
    """``B[c, j] = ||w_c - w_j||_{p*} * L_body``: a bound of the l_p Lipschitz constant of ``f_c - f_j``.

    For a classifier ``f = W h(x) + b`` whose body ``h`` is ``L_body``-Lipschitz (l_p -> l_p), Hoelder
    gives ``|(f_c - f_j)(x) - (f_c - f_j)(x')| <= ||w_c - w_j||_{p*} L_body ||x - x'||_p`` (``p*`` the dual
    exponent).  Differentiable in both arguments (training uses it as a signal); certificates evaluate it
    in float64 and round it up themselves.  Returns the ``(C, C)`` matrix (zero diagonal).
    """
    w = head_weight
    diff = w[:, None, :] - w[None, :, :]
    return torch.linalg.vector_norm(diff, ord=dual_exponent(normalize_p(p)), dim=-1) * body_bound
