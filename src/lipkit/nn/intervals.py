"""Interval rules (the :data:`lipkit.bounds.interval.INTERVAL` facet) of lipkit's own layers.

Importing this module registers them; :mod:`lipkit.certify.interval` and :mod:`lipkit.estimation.local`
do.  Each rule returns sound float64 bounds of the layer's exact output over a box of inputs, rounded
outward (see :mod:`lipkit.bounds.interval`).

l_inf-distance and SortNet neurons (eval mode).  For ``d_o(h) = max_i |h_i - w_oi|`` the range over a box
``[l, u]`` is exact and cheap, since each term depends on one coordinate only:

    max_{h in box} |h_i - w_oi| = max(|l_i - w_oi|, |u_i - w_oi|),
    min_{h in box} |h_i - w_oi| = max(l_i - w_oi, w_oi - u_i, 0),

and the max over ``i`` of the per-coordinate extremes is the extreme of ``d_o``.  The SortNet neuron
``sum_k c_k d_(k)`` (``c_k >= 0``) is non-decreasing in every ``d_i``, so its range is the same weighted sum
of the sorted lower and sorted upper ``d_i`` (Zhang et al., "Boosting the certified robustness of
l-infinity distance nets", ICLR 2022).  A conv layer applies the dense neuron to each zero-padded patch,
so its range is the dense range over the box of each patch (padding entries are the point ``[0, 0]``).
Then ``- mu_o + b_o`` (running mean, bias).  Round-off in float64: each subtraction errs by ``u`` times
its result, the weighted sum of ``K`` terms by ``gamma_K D`` (``D = max_i d_i``), the shift by ``u``
once more; ``2 (K + 3) EPS64 (D + |mu_o| + |b_o|)`` covers all of it (Higham 2002, Sec. 3.1).

Sorting activations (GroupSort, MaxMin) are monotone as maps of vectors (``x <= y`` coordinate-wise
implies ``sort(x) <= sort(y)``), so their range is ``[sort(l), sort(u)]`` (exact); ``Negate`` swaps the
ends; the smooth softplus maps the ends and is widened for its library round-off.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds import EPS64, UnsupportedModuleError
from lipkit.bounds.interval import monotone_rounded, register_interval
from lipkit.nn.activations import GroupSort, MaxMin, Negate, SmoothSoftplus
from lipkit.nn.distance import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear

__all__ = ["distance_layer_box"]

#: working-memory budget of one (rows, out, in) block of a distance layer, in bytes
_BLOCK_BYTES = 64 * 2**20


def _dense_distance_box(m: nn.Module, lo: torch.Tensor,
                        hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = m._weight2d().detach().to(torch.float64)
    n_out, n_in = w.shape
    rows = max(1, _BLOCK_BYTES // (8 * n_out * n_in))
    coef = m.coefficients.to(lo) if isinstance(m, (SortNeuronLinear, SortNeuronConv2d)) else None
    k = 1 if coef is None else coef.numel()
    lows, highs, tops = [], [], []
    for s in range(0, lo.shape[0], rows):
        lo_w = lo[s:s + rows, None, :] - w[None]  # (b, out, in)
        hi_w = hi[s:s + rows, None, :] - w[None]
        d_hi = torch.maximum(lo_w.abs(), hi_w.abs())
        d_lo = torch.maximum(torch.maximum(lo_w, -hi_w), torch.zeros((), dtype=lo.dtype))
        if coef is None:
            top = d_hi.amax(dim=-1)
            highs.append(top)
            lows.append(d_lo.amax(dim=-1))
        else:
            sorted_hi = torch.topk(d_hi, k, dim=-1).values
            top = sorted_hi[..., 0]
            highs.append(sorted_hi @ coef)
            lows.append(torch.topk(d_lo, k, dim=-1).values @ coef)
        tops.append(top)
    s_lo, s_hi, big = torch.cat(lows), torch.cat(highs), torch.cat(tops)
    shift = torch.zeros(n_out, dtype=torch.float64, device=lo.device)
    shift_abs = torch.zeros_like(shift)
    if m.mean_shift and getattr(m, "running_mean", None) is not None:
        mu = m.running_mean.detach().to(torch.float64)
        shift, shift_abs = shift - mu, shift_abs + mu.abs()
    if m.bias is not None:
        b = m.bias.detach().to(torch.float64)
        shift, shift_abs = shift + b, shift_abs + b.abs()
    err = 2.0 * (k + 3) * EPS64 * (big + shift_abs) + 1e-300
    return s_lo + shift - err, s_hi + shift + err


def distance_layer_box(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound float64 range of an eval-mode l_inf-distance / SortNet layer (dense or conv) over the box
    ``[lo, hi]`` (exact up to the outward rounding; module docstring)."""
    if m.training and m.mean_shift:
        raise UnsupportedModuleError(f"interval rule for {type(m).__name__}: training mode with mean shift "
                                     "mixes the batch", m)
    if isinstance(m, (LinfDistLinear, LinfDistConv2d)) and not math.isinf(float(m.p)):
        raise UnsupportedModuleError(f"interval rule for {type(m).__name__}: only p = inf (got p = {m.p})", m)
    if lo.dim() == 4:  # conv: (N, C, H, W) -> one patch per row, as the layer's forward
        n, (ho, wo) = lo.shape[0], m.output_size(lo.shape[2], lo.shape[3])
        r_lo, r_hi = _dense_distance_box(m, m._patch_rows(lo, ho, wo), m._patch_rows(hi, ho, wo))
        return m._feature_map(r_lo, n, ho, wo), m._feature_map(r_hi, n, ho, wo)
    lead = lo.shape[:-1]
    r_lo, r_hi = _dense_distance_box(m, lo.reshape(-1, lo.shape[-1]), hi.reshape(-1, hi.shape[-1]))
    return r_lo.reshape(*lead, -1), r_hi.reshape(*lead, -1)


register_interval(LinfDistLinear, LinfDistConv2d, SortNeuronLinear, SortNeuronConv2d)(distance_layer_box)


def _negate(m: Negate, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -hi, -lo


register_interval(Negate)(_negate)


def _sort(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return m(lo), m(hi)


register_interval(GroupSort, MaxMin)(_sort)


def _softplus(m: SmoothSoftplus, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return monotone_rounded(m, lo, hi, scale=1.0 / m.beta)


register_interval(SmoothSoftplus)(_softplus)
