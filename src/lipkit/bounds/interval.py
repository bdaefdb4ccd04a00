"""The interval facet: one sound rule per layer type for pushing a box through the layer.

For a module ``m`` and a box ``[lo, hi]`` of its inputs (float64 tensors with a leading batch dimension),
:func:`interval_forward` returns float64 ``[lo', hi']`` that contain ``m(z)`` for every ``lo <= z <= hi``,
where ``m`` is evaluated in exact arithmetic on its actual weights (cast to float64, exactly).  Every rule
rounds outward: it adds a bound of its own float64 round-off, so the enclosure is sound for the exact
function.  Interval bound propagation (IBP; Gowal et al., "On the effectiveness of interval bound
propagation for training verifiably robust models", 2018; Mirman et al., ICML 2018) composes these rules.
Certificates (:mod:`lipkit.certify.interval`) and local Lipschitz estimates
(:mod:`lipkit.estimation.local`) both read this facet, so there is one implementation per layer.

Rules for ``torch.nn`` layers are here; lipkit's layers register theirs in :mod:`lipkit.nn.intervals`.
A rule is called as ``rule(module, lo, hi)`` and raises :class:`UnsupportedModuleError` for a
configuration it cannot bound (training-mode batch statistics, a non-monotone activation, ...).

Round-off (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., 2002, Sec. 3.1;
``u = 2^-53``, ``EPS64 = 2u``):

* affine maps (Linear, Conv, average pooling, eval batch norm) in centre/radius form: with
  ``c = (lo + hi) / 2`` and ``r = (hi - lo) / 2 + 2 EPS64 max(|lo|, |hi|)`` (the extra term covers the
  rounding of ``c`` and ``r``, so ``[c - r, c + r]`` contains ``[lo, hi]``), the image is
  ``W c + b +- (|W| r + err)``, ``err = 2 (n + 2) EPS64 (|W||c| + |b| + |W| r)`` (the inner products of
  length ``n`` err by at most ``gamma_{n+1}`` times their absolute sums);
* monotone element-wise functions map the end points; functions computed by a library call (tanh,
  sigmoid, ELU, softplus, ...) are widened by ``8 EPS64 (max(|phi(lo)|, |phi(hi)|) + s)`` (a few ulps,
  and ``s``, the function's scale, for cancellation near 0, e.g. ``alpha (e^x - 1)``); exact ones
  (ReLU, ReLU6, hard tanh, max pooling) and shape changes are not widened.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lipkit.bounds.numerics import EPS64
from lipkit.bounds.registry import Facet, UnsupportedModuleError

__all__ = ["INTERVAL", "interval_forward", "monotone_rounded", "register_interval", "widen"]

#: the interval facet: ``rule(module, lo, hi) -> (lo', hi')``
INTERVAL = Facet("interval", "register one with lipkit.bounds.interval.register_interval(YourModule)")
_TINY = 1e-300


def register_interval(*types: type, subclasses: bool = False, replace: bool = False,
                      overridable: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register ``rule(module, lo, hi) -> (lo', hi')`` as the interval rule of ``types`` (see
    :meth:`lipkit.bounds.Facet.register`)."""
    return INTERVAL.register(*types, subclasses=subclasses, replace=replace, overridable=overridable)


def interval_forward(module: nn.Module, lo: torch.Tensor,
                     hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound float64 bounds ``(lo', hi')`` of ``module(z)`` over the box ``lo <= z <= hi`` (exact
    arithmetic on the module's weights; see the module docstring).

    Raises:
        UnsupportedModuleError: no interval rule applies to ``module`` (the message says why).
    """
    rule, module = INTERVAL.resolve(module)
    lo, hi = rule.fn(module, lo.to(torch.float64), hi.to(torch.float64))
    return lo, hi


def widen(lo: torch.Tensor, hi: torch.Tensor,
          err: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo - err, hi + err)``."""
    return lo - err, hi + err


# --------------------------------------------------------------------------- affine layers


def _centre_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    return c, r + 2 * EPS64 * torch.maximum(lo.abs(), hi.abs())


def _affine(apply: Callable[[torch.Tensor, bool], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
            bias_abs: torch.Tensor | None, fan: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre/radius image of the box under ``x -> A x + b``; ``apply(x, absolute)`` computes ``A x + b``
    (``absolute=False``) or ``|A| x`` (``absolute=True``); ``fan`` the length of the inner products."""
    c, r = _centre_radius(lo, hi)
    yc = apply(c, False)
    yr = apply(r, True)
    acc = apply(c.abs(), True) + yr
    if bias_abs is not None:
        acc = acc + bias_abs.reshape((1, -1) + (1,) * (yc.dim() - 2))
    err = 2.0 * (fan + 2) * EPS64 * acc + _TINY
    return yc - yr - err, yc + yr + err


def _weight_and_bias(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = m.weight.detach().to(torch.float64)
    b = m.bias.detach().to(torch.float64) if getattr(m, "bias", None) is not None else None
    return w, b


def _linear(m: nn.Linear, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = _weight_and_bias(m)

    def apply(x: torch.Tensor, absolute: bool) -> torch.Tensor:
        return nn.functional.linear(x, w.abs(), None) if absolute else nn.functional.linear(x, w, b)

    return _affine(apply, lo, hi, None if b is None else b.abs(), w.shape[1])


register_interval(nn.Linear, subclasses=True)(_linear)


def _conv(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = _weight_and_bias(m)
    if m.padding_mode != "zeros":
        raise UnsupportedModuleError(f"interval rule for {type(m).__name__}: padding_mode "
                                     f"{m.padding_mode!r} (only 'zeros')", m)

    def apply(x: torch.Tensor, absolute: bool) -> torch.Tensor:
        return m._conv_forward(x, w.abs(), None) if absolute else m._conv_forward(x, w, b)

    return _affine(apply, lo, hi, None if b is None else b.abs(), int(w[0].numel()))


register_interval(nn.Conv1d, nn.Conv2d, subclasses=True)(_conv)


def _avg_pool(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a linear map with non-negative weights (1 / divisor): |A| = A; a window sums at most the whole
    # input plane (a sound fan-in for every kernel, stride and adaptive window)
    return _affine(lambda x, absolute: m(x), lo, hi, None, int(lo[0, 0].numel()))


register_interval(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)(_avg_pool)


def _batch_norm(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.training or m.running_mean is None:
        raise UnsupportedModuleError(f"interval rule for {type(m).__name__}: only eval mode with running "
                                     "statistics (training mode mixes the batch)", m)
    shape = (1, -1) + (1,) * (lo.dim() - 2)
    mean = m.running_mean.detach().to(torch.float64).reshape(shape)
    s = torch.rsqrt(m.running_var.detach().to(torch.float64) + m.eps)
    if m.affine:
        s = s * m.weight.detach().to(torch.float64)
    s = s.reshape(shape)
    b = m.bias.detach().to(torch.float64).reshape(shape) if m.affine else None

    def apply(x: torch.Tensor, absolute: bool) -> torch.Tensor:
        # (x - mean) s + b; as a linear map of x, |A| x = |s| x; the |mean| |s| term is added below
        if absolute:
            return x * s.abs()
        return (x - mean) * s + (b if b is not None else 0.0)

    extra = mean.abs().reshape(-1) * s.abs().reshape(-1)
    bias_abs = extra + (b.abs().reshape(-1) if b is not None else 0.0)
    # rsqrt, scale and the three operations: a few ulps each; fan 4 covers them
    return _affine(apply, lo, hi, bias_abs, 4)


register_interval(nn.BatchNorm1d, nn.BatchNorm2d)(_batch_norm)


# --------------------------------------------------------------------------- monotone and shape layers


def _exact_monotone(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return m(lo), m(hi)


def monotone_rounded(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor,
                     scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """End points through a non-decreasing element-wise ``m`` computed by library calls, widened by
    ``8 EPS64 (max(|m(lo)|, |m(hi)|) + scale)`` (module docstring)."""
    nlo, nhi = m(lo), m(hi)
    return widen(nlo, nhi, 8 * EPS64 * (torch.maximum(nlo.abs(), nhi.abs()) + scale) + _TINY)


register_interval(nn.ReLU, nn.ReLU6, nn.Flatten, nn.Unflatten, nn.Identity)(_exact_monotone)


def _max_pool(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.return_indices:
        raise UnsupportedModuleError(f"interval rule for {type(m).__name__}: return_indices=True", m)
    return m(lo), m(hi)


register_interval(nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)(_max_pool)


def _hardtanh(m: nn.Hardtanh, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.min_val > m.max_val:
        raise UnsupportedModuleError("interval rule for Hardtanh: min_val > max_val", m)
    return m(lo), m(hi)


register_interval(nn.Hardtanh)(_hardtanh)


def _dropout(m: nn.Dropout, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.training:
        raise UnsupportedModuleError("interval rule for Dropout: training mode is random", m)
    return lo, hi


register_interval(nn.Dropout)(_dropout)


def _tanh_sigmoid(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return monotone_rounded(m, lo, hi)


register_interval(nn.Tanh, nn.Sigmoid)(_tanh_sigmoid)


def _leaky_relu(m: nn.LeakyReLU, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if float(m.negative_slope) < 0:
        raise UnsupportedModuleError("interval propagation needs a monotone LeakyReLU "
                                     "(negative_slope >= 0)", m)
    return monotone_rounded(m, lo, hi)


register_interval(nn.LeakyReLU)(_leaky_relu)


def _elu(m: nn.ELU, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if float(m.alpha) < 0:
        raise UnsupportedModuleError("interval propagation needs ELU with alpha >= 0", m)
    return monotone_rounded(m, lo, hi, scale=1.0 + float(m.alpha))


register_interval(nn.ELU)(_elu)
