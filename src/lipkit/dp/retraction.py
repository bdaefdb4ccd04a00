"""The orthogonal constraint's projection step, with a certified bound of the norm of the weight it writes.

In DP mode an orthogonal ``LipLinear`` is trained as a plain weight and mapped back after every optimiser step
(:mod:`lipkit.dp.projection`) by one Newton-Schulz (Björck) step ``Q = X - 0.5 (X X^T - I) X``.  The next
step's sensitivity needs a guaranteed bound of ``||Q||_2`` for the weight the forward pass uses.  Computing it
from scratch costs a Gram product of ``Q`` (:func:`lipkit.dp.sensitivity.gram_bound_fp32`); but the step
already forms the Gram matrix of ``X``, and from it and a rounding analysis of the step one gets the bound
for free.

**The bound.**  Let ``X`` (``m x k``, ``m <= k``, the wide orientation) be the matrix the step reads,
``G = X X^T``, ``E = G - I`` and ``Q* = X - 0.5 E X = (1.5 I - 0.5 X X^T) X``.  With ``X = U S V^T``,
``Q* = U f(S) V^T``, ``f(s) = 1.5 s - 0.5 s^3``, and ``|f(s)| <= 1`` on ``[0, 2]`` (``f`` rises to
``f(1) = 1`` and falls to ``f(2) = -1``).  So ``||Q*||_2 <= 1`` whenever ``||X||_2 <= 2``.  The computed
step differs from ``Q*`` by rounding only:

1. ``S``: the Gram matrix from float32 products of ``nb`` column blocks of width ``kb``, summed in float32:
   ``|S - G| <= gamma_{kb + nb} |X| |X|^T <= gamma_{kb + nb} ||x_i|| ||x_j||`` entrywise (Higham, *Accuracy
   and Stability of Numerical Algorithms*, Lemmas 3.1 and 3.3, any summation order; Cauchy-Schwarz), plus
   ``k 2^-126`` per entry for underflow.  With ``Ê = S - I`` (exact, Sterbenz, when every ``S_ii`` is in
   ``[0.5, 1.5]``, which is checked), ``||Ê - E||_2 <= eta = max_i gamma ||x_i|| sum_j ||x_j|| + m k 2^-126``
   (Schur test, symmetric matrix), and Gershgorin gives ``||X||_2^2 <= 1 + r + eta``,
   ``r = max_i sum_j |Ê_ij|``.  The step is taken only when ``r < 1`` (so ``||X||_2 < 2``; Gershgorin's
   ``r`` is a loose measure of how far ``X`` is from orthogonal, so the bfloat16 retraction's restart
   threshold of 1/2 is often crossed by one Adam step at learning rate 0.004 when ``||E||_2`` is about 0.05);
   otherwise the caller computes the polar factor to convergence and the sensitivity bounds it afresh.
2. ``P = fl(Ê X)`` (float32): ``|P - Ê X| <= gamma_m |Ê| |X|``, so
   ``||P - Ê X||_2 <= gamma_m || |Ê| ||_2 ||X||_F <= gamma_m r ||X||_F``.
3. ``Q = fl(X - 0.5 P)``: ``|Q - (X - 0.5 P)| <= u |X - 0.5 P| <= u / (1 - u) |Q|`` entrywise (``0.5 P``
   is exact up to underflow), whose 2-norm is at most ``u / (1 - u) ||Q||_F``.

Hence ``||Q||_2 <= 1 + 0.5 eta sqrt(1 + r + eta) + 0.5 gamma_m r ||X||_F + u / (1 - u) ||Q||_F + tiny``.
The written weight ``fl(lip Q)`` has norm at most ``lip (||Q||_2 + u ||Q||_F)`` (the last term only when
``lip != 1``).  All of it is evaluated in float64 and rounded up (:func:`lipkit.bounds.round_up`).  For a
256 x 784 layer it is about ``1 + 1e-3``, as tight as a fresh Gram bound of ``Q``
(:func:`lipkit.dp.sensitivity.gram_bound_fp32`), for the cost of the float32 projection step alone.

**Using it.**  :func:`certify` records ``(copy of the written weight, bound)`` for the module;
:func:`certified_norm` returns the bound only while the module's weight is bit-for-bit that copy
(``torch.equal``), so any later change (an optimiser step, an assignment through ``.data``, a NaN) makes the
sensitivity analysis compute the bound from the weight again.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from lipkit.bounds import round_up
from lipkit.bounds.numerics import fp32_products_are_ieee

__all__ = ["certified_newton_schulz", "certify", "certified_norm", "forget_certificates"]

#: float32 unit round-off, smallest normal and smallest subnormal
_U32 = 2.0**-24
_TINY32 = 2.0**-126
_SUB32 = 2.0**-149

#: module -> (copy of the weight the bound was certified for, the bound)
_CERTIFICATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _gamma(n: int) -> float:
    return n * _U32 / (1.0 - n * _U32)


def _blocked_gram(a: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``A A^T`` (``A``: ``m x k`` float32) from float32 products of column blocks summed in float32 (any
    order); returns the product and the ``n`` of its ``gamma_n`` (block width + number of blocks)."""
    m, k = a.shape
    nb = -(-k // block)
    at = a.T
    if nb * block != k:  # zero columns: exact zero products
        at = torch.cat([at, at.new_zeros(nb * block - k, m)])
    blocks = at.reshape(nb, block, m)
    if m < 128:
        return torch.bmm(blocks.transpose(1, 2), blocks).sum(dim=0), block + nb
    # symmetric: the two diagonal blocks and one off-diagonal block of rows (3/4 of the products); every
    # entry is still one blocked dot product, so the rounding analysis is unchanged
    h = m // 2
    b1, b2 = blocks[:, :, :h], blocks[:, :, h:]
    g11 = torch.bmm(b1.transpose(1, 2), b1).sum(dim=0)
    g12 = torch.bmm(b1.transpose(1, 2), b2).sum(dim=0)
    g22 = torch.bmm(b2.transpose(1, 2), b2).sum(dim=0)
    return torch.cat([torch.cat([g11, g12], dim=1), torch.cat([g12.T, g22], dim=1)], dim=0), block + nb


def certified_newton_schulz(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, float] | None:
    """One Newton-Schulz step ``Q = X - 0.5 (X X^T - I) X`` on a float32 matrix and a guaranteed bound of
    ``||Q||_2`` (see the module docstring).

    Works on the wide orientation (the result has ``x``'s shape).  Returns ``None`` when the step's analysis
    does not apply: ``x`` not a finite float32 matrix, float32 products possibly in reduced precision, or
    ``X`` too far from orthogonal (``r > 1/2``); the caller then computes the polar factor to convergence.
    """
    if x.dtype != torch.float32 or x.dim() != 2 or x.numel() == 0 or not fp32_products_are_ieee():
        return None
    tall = x.shape[0] > x.shape[1]
    a = x.mT.contiguous() if tall else x.contiguous()
    m, k = a.shape
    nb = -(-k // block)
    s, n = _blocked_gram(a, -(-k // nb))  # nb blocks of equal width (no zero padding when it divides k)
    e32 = s
    e32.diagonal().sub_(1.0)  # exact when s_ii is in [0.5, 2] (Sterbenz), checked below
    r = _row_sum_bound(e32)
    norms = torch.linalg.vector_norm(a.to(torch.float64), dim=1)
    eta = _gram_error(norms, n, k)
    if not _step_is_covered(r, eta, e32.diagonal().abs().max().item()):
        return None
    p = e32 @ a
    q = a.sub(p, alpha=0.5)
    x_fro = math.sqrt(norms.square().sum().item())
    q_fro = torch.linalg.vector_norm(q.to(torch.float64)).item()
    if not math.isfinite(q_fro):
        return None
    bound = round_up(1.0 + _step_error(r, eta, x_fro, q_fro, m, k), 2)
    return (q.mT if tall else q), bound


def _row_sum_bound(e: torch.Tensor) -> float:
    """``r >= max_i sum_j |e_ij|`` (Gershgorin's radius of ``Ê = S - I``): the row sums in float64, rounded up
    for their ``m + 1`` operations."""
    return round_up(e.to(torch.float64).abs().sum(dim=1).max().item(), e.shape[1] + 2)


def _gram_error(norms: torch.Tensor, n: int, k: int) -> float:
    """``eta >= max_i gamma_n ||x_i|| sum_j ||x_j|| + m k 2^-126``: the bound of ``||Ê - E||_2`` for the Gram
    matrix of float32 products with ``gamma_n``.  ``norms`` are the float64 row norms ``||x_i||`` of the
    ``m x k`` matrix, each low by at most ``(k / 2 + 1) 2^-53`` relative (a sum of ``k`` squares and a square
    root); their sum and the two products add ``m + 1`` float64 roundings: the factor ``1 + 4 (m + k + 2)
    2^-52`` covers them all."""
    m = norms.numel()
    return (_gamma(n) * norms * norms.sum()).max().item() * (1 + 4 * (m + k + 2) * 2.0**-52) + m * k * _TINY32


def _step_is_covered(r: float, eta: float, diagonal: float) -> bool:
    """Whether the step's analysis applies.

    * ``1 + r + eta <= 4``: then ``||X||_2 <= 2``, so ``|f(s)| <= 1``;
    * ``diagonal`` (the largest ``|fl(s_ii - 1)|``) below 1/2: then ``s_ii`` is in ``(0.5, 1.5)`` and the
      subtraction is exact (Sterbenz); a value of exactly 1/2 may come from an inexact ``s_ii < 0.5``;
    * ``r < 1``, the restart policy: farther from orthogonal, the caller computes the polar factor to
      convergence.

    A NaN or infinite ``r`` or ``eta`` fails these comparisons, so it is refused too.
    """
    return r < 1.0 and 1.0 + r + eta <= 4.0 and diagonal < 0.5


def _step_error(r: float, eta: float, x_fro: float, q_fro: float, m: int, k: int) -> float:
    """``err >= 0.5 eta sqrt(1 + r + eta) + 0.5 gamma_m r ||X||_F + u / (1 - u) ||Q||_F
    + sqrt(m k) (2^-149 + 2^-126)``, rounded up for its float64 evaluation: the step's rounding error, so that
    ``||Q||_2 <= 1 + err`` (module docstring, items 1 to 3)."""
    sigma_x = math.sqrt(round_up(1.0 + r + eta, 3))
    err = (
        0.5 * eta * sigma_x
        + 0.5 * _gamma(m) * r * x_fro
        + _U32 / (1.0 - _U32) * q_fro
        + math.sqrt(m * k) * (_SUB32 + _TINY32)
    )
    return round_up(err, 8)


def certify(module: nn.Module, weight: torch.Tensor, bound: float) -> None:
    """Record that ``||weight||_2 <= bound`` for ``module``'s current weight (see :func:`certified_norm`)."""
    _CERTIFICATES[module] = (weight.detach().clone(), float(bound))


def certified_norm(module: nn.Module, weight: torch.Tensor) -> float | None:
    """The recorded bound of ``||weight||_2`` if ``weight`` is bit for bit the certified one, else None."""
    rec = _CERTIFICATES.get(module)
    if rec is None:
        return None
    snapshot, bound = rec
    w = weight.detach()
    if snapshot.shape != w.shape or snapshot.dtype != w.dtype or snapshot.device != w.device:
        return None
    return bound if torch.equal(snapshot, w) else None


def forget_certificates(model: nn.Module) -> None:
    """Drop the recorded bounds of ``model``'s modules: the next sensitivity computation bounds their weights
    from scratch.  The trainer calls it at the end of every epoch, so that a run resumed from that epoch's
    checkpoint (whose modules hold no certificate) draws exactly the same noise as an uninterrupted one."""
    for module in model.modules():
        _CERTIFICATES.pop(module, None)
