"""Lipschitz pooling layers and sound bound rules for torch's pooling / pixel-shuffle modules.

Notation: a pooling layer maps windows ``w`` of the input to outputs; ``N`` is the largest number
of windows that contain one input pixel (``N = 1`` when stride == kernel size) and ``k`` the number
of pixels of a window.  The rules below use:

* an output that is 1-Lipschitz (l2) in its window's pixels (max, l2 norm, scaled mean) gives
  ``||y - y'||_2^2 <= sum_w ||x_w - x'_w||_2^2 <= N ||x - x'||_2^2``: bound ``sqrt(N)`` for l2;
* a linear pooling ``y = A x`` with ``A >= 0`` (average pooling) has ``||A||_inf`` = max row sum,
  ``||A||_1`` = max column sum and ``||A||_2 <= sqrt(||A||_1 ||A||_inf)`` (Schur / Hoelder); with the
  recorded input shape the row and column sums are computed exactly (in float64) by applying the
  pooling to ones and its adjoint to ones; without it a size-independent bound is used.

Every pooling acts on each channel separately with the same operator, so per-channel bounds are
bounds of the whole layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipkit.bounds import UnsupportedModuleError, register_bound, round_up
from lipkit.bounds.windows import max_window_cover

__all__ = ["L2NormPool2d", "ScaledAvgPool2d", "InvertibleDownsample"]


def _pair(v: int | tuple[int, ...] | list[int], name: str, who: str, minimum: int = 1) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    v = tuple(v)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= minimum for a in v):
        raise ValueError(f"{who}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return v  # type: ignore[return-value]


def _check_4d(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects an input of shape (N, C, H, W) or (C, H, W), got {shape}")


# --------------------------------------------------------------------------- window counting


def _spatial(shapes: dict, module: nn.Module) -> tuple[int, int] | None:
    shape = shapes.get(module)
    if shape is None or len(shape) < 2:
        return None
    return int(shape[-2]), int(shape[-1])


def windows_per_pixel(module: nn.Module, shapes: dict, k: tuple[int, int], s: tuple[int, int],
                      pad: tuple[int, int], dil: tuple[int, int], ceil_mode: bool) -> int:
    """:func:`lipkit.bounds.windows.max_window_cover` at the module's recorded input size (if any)."""
    return max_window_cover(k, s, dil, pad, _spatial(shapes, module), ceil_mode=ceil_mode)


def _window_rule(n_cover: int, k_pixels: int, p: float, lip_in_window_l2: bool) -> float:
    """Bound for outputs that are 1-Lipschitz w.r.t. their window in l_inf (max pool) or in l2
    (l2-norm pool).  ``n_cover``: max windows per pixel; ``k_pixels``: pixels per window."""
    if p == 2:
        return round_up(math.sqrt(n_cover), 2)
    if p == math.inf:
        # |max(a) - max(b)| <= ||a - b||_inf ;  | ||a|| - ||b|| | <= ||a - b||_2 <= sqrt(k) ||a - b||_inf
        return round_up(math.sqrt(k_pixels), 2) if lip_in_window_l2 else 1.0
    # p == 1: |y_w - y'_w| <= ||x_w - x'_w||_1, summed over windows: each pixel counted <= N times
    return float(n_cover)


# --------------------------------------------------------------------------- lipkit layers


class _WindowPool2d(nn.Module):
    """Shared parts of the window poolings: ``kernel_size``, ``stride`` (default: the kernel) and zero
    ``padding`` (at most half the kernel), and the input checks of their forward."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        who = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", who)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", who)
        self.padding = _pair(padding, "padding", who, minimum=0)
        if any(2 * pd > k for pd, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"{who}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size}")

    def _checked(self, x: torch.Tensor) -> int:
        """Check ``x`` and return the window size ``kh * kw``."""
        _check_4d(x, type(self).__name__)
        _check_window_fits(x, self.kernel_size, self.padding, type(self).__name__)
        return self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class L2NormPool2d(_WindowPool2d):
    """l2-norm pooling: ``y_w = sqrt(sum_{i in w} x_i^2)`` for each window ``w`` (the
    gradient-norm-preserving pooling of 1-Lipschitz CNNs, e.g. deel-lip's ScaledL2NormPool2d).

    Each output is the l2 norm of its window, 1-Lipschitz in l2, so the layer is 1-Lipschitz in l2
    when ``stride == kernel_size`` (disjoint windows) and ``sqrt(N)``-Lipschitz in general (``N`` the
    largest number of windows covering a pixel).  For l_inf the bound is ``sqrt(kh * kw)``.
    The square root is evaluated as ``sqrt(max(sum x^2, tiny))`` = ``max(||x_w||, sqrt(tiny))``,
    still 1-Lipschitz, and differentiable at 0.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._checked(x)
        sq = F.avg_pool2d(x * x, self.kernel_size, self.stride, self.padding, count_include_pad=True) * k
        return torch.sqrt(torch.clamp(sq, min=torch.finfo(sq.dtype).tiny))


def _check_window_fits(x: torch.Tensor, k: tuple[int, int], pad: tuple[int, int], who: str) -> None:
    h, w = x.shape[-2], x.shape[-1]
    if h + 2 * pad[0] < k[0] or w + 2 * pad[1] < k[1]:
        raise ValueError(f"{who}: input spatial size {(h, w)} (padding {pad}) is smaller than the kernel {k}")


class ScaledAvgPool2d(_WindowPool2d):
    """Average pooling multiplied by ``sqrt(kh * kw)``: ``y_w = sum_{i in w} x_i / sqrt(k)``.

    The row ``1_w / sqrt(k)`` has l2 norm 1, so with ``stride == kernel_size`` (disjoint windows)
    the layer is 1-Lipschitz in l2 (as in deel-lip's ScaledAvgPool2d).  In general it is
    ``sqrt(N)``-Lipschitz in l2 (``N`` windows per pixel) and ``sqrt(k)``-Lipschitz in l_inf.
    Zero padding counts in the divisor (``count_include_pad=True``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._checked(x)
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return y * math.sqrt(k)


class InvertibleDownsample(nn.Module):
    """Invertible downsampling (pixel unshuffle): (C, H, W) -> (C f^2, H / f, W / f).

    A permutation of the coordinates, hence an isometry of every l_p norm (bound 1).  Used by
    orthogonal-convolution networks (e.g. Trockman & Kolter 2021; Singla & Feizi 2021) instead of
    strided convolutions.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"InvertibleDownsample: factor must be a positive int, got {factor!r}")
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x, "InvertibleDownsample")
        h, w = x.shape[-2], x.shape[-1]
        if h % self.factor or w % self.factor:
            raise ValueError(f"InvertibleDownsample: spatial size {(h, w)} is not divisible by the factor "
                             f"{self.factor}")
        return F.pixel_unshuffle(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# --------------------------------------------------------------------------- rules


@register_bound(InvertibleDownsample, nn.PixelUnshuffle, nn.PixelShuffle)
def _permutation_rule(module: nn.Module, p: float, shapes: dict) -> float:
    return 1.0


@register_bound(L2NormPool2d)
def _l2pool_rule(module: L2NormPool2d, p: float, shapes: dict) -> float:
    k, s, pad = module.kernel_size, module.stride, module.padding
    n = windows_per_pixel(module, shapes, k, s, pad, (1, 1), False)
    return _window_rule(n, k[0] * k[1], p, lip_in_window_l2=True)


@register_bound(nn.MaxPool2d)
def _maxpool_rule(module: nn.MaxPool2d, p: float, shapes: dict) -> float:
    k = _pair(module.kernel_size, "kernel_size", "MaxPool2d")
    s = k if module.stride is None or module.stride == () else _pair(module.stride, "stride", "MaxPool2d")
    pad = _pair(module.padding, "padding", "MaxPool2d", minimum=0)
    dil = _pair(module.dilation, "dilation", "MaxPool2d")
    n = windows_per_pixel(module, shapes, k, s, pad, dil, bool(module.ceil_mode))
    return _window_rule(n, k[0] * k[1], p, lip_in_window_l2=False)


def _linear_pool_norms(pool, hw: tuple[int, int]) -> tuple[float, float]:
    """Exact (float64) max row sum and max column sum of a non-negative linear pooling operator."""
    x = torch.ones((1, 1, *hw), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = pool(x)
        (col,) = torch.autograd.grad(y.sum(), x)
    return y.detach().abs().max().item(), col.abs().max().item()


def _linear_pool_bound(row: float, col: float, p: float, n_ops: int) -> float:
    if p == math.inf:
        return round_up(row, n_ops)
    if p == 1:
        return round_up(col, n_ops)
    return round_up(math.sqrt(row * col), n_ops + 2)


@register_bound(ScaledAvgPool2d)
def _scaled_avg_rule(module: ScaledAvgPool2d, p: float, shapes: dict) -> float:
    k, s, pad = module.kernel_size, module.stride, module.padding
    kk = k[0] * k[1]
    hw = _spatial(shapes, module)
    if hw is not None:
        row, col = _linear_pool_norms(module, hw)
        return _linear_pool_bound(row, col, p, 2 * kk)
    # rows: k entries of 1/sqrt(k); columns: at most N entries of 1/sqrt(k)
    n = windows_per_pixel(module, shapes, k, s, pad, (1, 1), False)
    return _linear_pool_bound(math.sqrt(kk), n / math.sqrt(kk), p, 4)


@register_bound(nn.AvgPool2d)
def _avgpool_rule(module: nn.AvgPool2d, p: float, shapes: dict) -> float:
    k = _pair(module.kernel_size, "kernel_size", "AvgPool2d")
    s = k if module.stride is None or module.stride == () else _pair(module.stride, "stride", "AvgPool2d")
    pad = _pair(module.padding, "padding", "AvgPool2d", minimum=0)
    kk = k[0] * k[1]
    hw = _spatial(shapes, module)
    if hw is not None:
        row, col = _linear_pool_norms(module, hw)
        return _linear_pool_bound(row, col, p, 2 * kk)
    n = windows_per_pixel(module, shapes, k, s, pad, (1, 1), bool(module.ceil_mode))
    # each output is (sum of <= k real pixels) / d with d = divisor_override, or d = k when padding
    # is counted and no window is clipped by ceil_mode; otherwise d >= the number of real pixels
    # (>= 1), so row sums are <= 1 and column sums <= N / d_min.
    if module.divisor_override:
        d = float(module.divisor_override)
        row, col = kk / d, n / d
    elif module.count_include_pad and not module.ceil_mode:
        row, col = 1.0, n / kk
    else:
        row, col = 1.0, float(n)
    return _linear_pool_bound(row, col, p, 4)


def _adaptive_cover(n: int, out: int) -> int:
    """Max number of adaptive windows [floor(i n / out), ceil((i + 1) n / out)) containing a position."""
    counts = [0] * n
    for i in range(out):
        start = (i * n) // out
        end = -(-((i + 1) * n) // out)
        for j in range(start, end):
            counts[j] += 1
    return max(counts, default=0)


def _adaptive_out(module: nn.Module, hw: tuple[int, int] | None) -> tuple[int, int]:
    size = module.output_size
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) == 1:
        size = (size[0], size[0])
    res = []
    for o, n in zip(size, hw if hw is not None else (None, None), strict=True):
        if o is None:
            if n is None:
                res.append(0)  # 0 means "same as input": identity along this axis
            else:
                res.append(n)
        else:
            res.append(int(o))
    return res[0], res[1]


@register_bound(nn.AdaptiveAvgPool2d)
def _adaptive_avg_rule(module: nn.AdaptiveAvgPool2d, p: float, shapes: dict) -> float:
    hw = _spatial(shapes, module)
    if hw is not None:
        row, col = _linear_pool_norms(module, hw)
        return _linear_pool_bound(row, col, p, 2 * hw[0] * hw[1])
    # Size-independent: every output is a mean (row sum 1).  Along an axis with o outputs, a
    # position lies in at most o windows of >= 1 pixel each, so a column sum is <= o (per axis;
    # an axis of output size None is the identity: 1).
    oh, ow = _adaptive_out(module, None)
    col = float(max(oh, 1) * max(ow, 1))
    return _linear_pool_bound(1.0, col, p, 4)


@register_bound(nn.AdaptiveMaxPool2d)
def _adaptive_max_rule(module: nn.AdaptiveMaxPool2d, p: float, shapes: dict) -> float:
    hw = _spatial(shapes, module)
    if hw is not None:
        oh, ow = _adaptive_out(module, hw)
        n = _adaptive_cover(hw[0], oh) * _adaptive_cover(hw[1], ow)
    else:
        oh, ow = _adaptive_out(module, None)
        n = max(oh, 1) * max(ow, 1)
    if p == math.inf:
        return 1.0
    if p == 2:
        return round_up(math.sqrt(n), 2)
    if p == 1:
        return float(n)
    raise UnsupportedModuleError(f"AdaptiveMaxPool2d: no bound for p={p}")  # pragma: no cover
