"""Residual blocks with sound Lipschitz bounds: Residual, ConvexResidual, SLL.

* ``Residual(f)``: ``x + f(x)``, bound ``1 + L_f`` (triangle inequality).
* ``ConvexResidual(f, alpha)``: ``(1 - a) x + a f(x)``, bound ``|1 - a| + |a| L_f`` (1 if f is
  1-Lipschitz and ``a in [0, 1]``).
* ``SLL``: the SDP-based Lipschitz layer of Araujo, Havens, Delattre, Allauzen & Hu, "A unified
  algebraic perspective on Lipschitz neural networks" (ICLR 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipkit.bounds import EPS64, as_float64, child_bound, operator_norm, register_bound, round_up

__all__ = ["Residual", "ConvexResidual", "SLL", "SLLConv2d"]


def _positive_int(value: object, name: str, who: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


class Residual(nn.Module):
    """``x + f(x)``; Lipschitz bound ``1 + L_f`` for every norm (triangle inequality)."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(f"Residual expects an nn.Module, got {type(f).__name__}")
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class ConvexResidual(nn.Module):
    """Convex combination ``(1 - a) x + a f(x)`` with ``a in [0, 1]``.

    ``||(1 - a)(x - y) + a (f(x) - f(y))|| <= ((1 - a) + a L_f) ||x - y||``: a convex combination of
    1-Lipschitz maps is 1-Lipschitz.  The bound rule uses the float coefficients the forward pass
    really multiplies by, ``|c_1| + |c_2| L_f``.

    Args:
        f: the residual branch.
        alpha: initial (or fixed) value of ``a`` in [0, 1].
        learnable: if True, ``a = sigmoid(logit)`` with a learnable logit (then ``alpha`` must be in
            (0, 1)); otherwise ``a`` is a fixed buffer.
    """

    def __init__(self, f: nn.Module, alpha: float = 0.5, learnable: bool = False) -> None:
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(f"ConvexResidual expects an nn.Module, got {type(f).__name__}")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ConvexResidual: alpha must be in [0, 1], got {alpha}")
        self.f = f
        self.learnable = learnable
        if learnable:
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"ConvexResidual: a learnable alpha must start in (0, 1), got {alpha}")
            self.logit = nn.Parameter(torch.tensor(math.log(alpha / (1.0 - alpha))))
        else:
            self.register_buffer("_alpha", torch.tensor(alpha))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The coefficients ``(1 - a, a)`` used by the forward pass."""
        a = torch.sigmoid(self.logit) if self.learnable else self._alpha
        return 1.0 - a, a

    @property
    def alpha(self) -> float:
        return float(self.coefficients()[1].detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2 = self.coefficients()
        return c1 * x + c2 * self.f(x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, learnable={self.learnable}"


def _work_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """float32 or float64: the weights are used exactly (never rounded to a lower precision)."""
    dt = torch.promote_types(x.dtype, w.dtype)
    return dt if dt in (torch.float32, torch.float64) else torch.float32


class _SLLBase(nn.Module):
    """Shared math of the SLL layers: ``t_i = sum_j A_ij q_j / q_i`` with ``A = |W W^T|`` (dense) or
    its convolutional analogue, computed in float64 and inflated by a relative margin."""

    _MARGIN = 1e-6
    _FLOOR = 1e-12
    weight: nn.Parameter
    log_q: nn.Parameter

    def _abs_gram(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _abs_gram_error(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t(self) -> torch.Tensor:
        """The diagonal ``t`` used by the forward pass (float64, differentiable)."""
        q = torch.exp(self.log_q.to(torch.float64))
        rows = (self._abs_gram(self.weight.to(torch.float64)) * q[None, :]).sum(dim=1) / q
        return rows * (1.0 + self._MARGIN) + self._FLOOR

    def _inv_t(self, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 / self.t()).to(dtype)

    def _row_l1_col_l1(self) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _l2_norm_sq(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class SLL(_SLLBase):
    """SDP-based Lipschitz layer (Araujo et al., ICLR 2023), dense version.

    ``h(x) = x - 2 W^T T^{-1} relu(W x + b)`` with ``W`` of shape (hidden_features, in_features) and
    ``T = diag(t)``, ``t_i = sum_j |W W^T|_ij q_j / q_i`` (``q = exp(log_q) > 0`` learnable).

    Why 1-Lipschitz in l2: ``relu(u) - relu(u') = D (u - u')`` with ``D`` diagonal in [0, 1], so with
    ``v = W (x - y)`` and ``G = W W^T``,
    ``||h(x) - h(y)||^2 = ||x - y||^2 - 4 v^T T^{-1} D v + 4 u^T G u`` where ``u = T^{-1} D v``.
    If ``T >= G`` (Loewner order) then ``u^T G u <= u^T T u = v^T D T^{-1} D v <= v^T T^{-1} D v``
    (``D^2 <= D``), so ``||h(x) - h(y)|| <= ||x - y||``.  ``diag(t) >= G`` holds for every positive
    ``q`` (scaled Gershgorin: ``Q^{-1} (T - G) Q`` is diagonally dominant with non-negative diagonal).

    Soundness in floats: the forward pass computes ``t`` in float64 and inflates it by a relative
    margin of 1e-6 (plus 1e-12), far above the float64 round-off of the row sums; ``W`` is used in
    (at least) its own precision.  The bound rule recomputes the row sums in float64 from the actual
    weights with an explicit round-off term and returns 1 only if the ``t`` the forward pass uses
    (after rounding ``1/t`` to float32) dominates them; otherwise it falls back to
    ``1 + 2 ||W||_2^2 max(1 / t)``.  For l_inf (and l1) it returns
    ``1 + 2 ||W||_inf ||W^T||_inf max(1 / t)``: SLL is not 1-Lipschitz for l_inf.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, bias: bool = True) -> None:
        super().__init__()
        _positive_int(in_features, "in_features", "SLL")
        hidden = in_features if hidden_features is None else hidden_features
        _positive_int(hidden, "hidden_features", "SLL")
        self.in_features = in_features
        self.hidden_features = hidden
        self.weight = nn.Parameter(torch.empty(hidden, in_features))
        nn.init.xavier_normal_(self.weight)
        self.log_q = nn.Parameter(torch.zeros(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None

    def _abs_gram(self, w: torch.Tensor) -> torch.Tensor:
        return (w @ w.T).abs()

    def _abs_gram_error(self, w: torch.Tensor) -> torch.Tensor:
        # |fl(W W^T) - W W^T| <= n eps |W| |W|^T entrywise (float64 dot products of length n)
        return 2.0 * w.shape[1] * EPS64 * (w.abs() @ w.abs().T)

    def _row_l1_col_l1(self) -> tuple[float, float]:
        return operator_norm(self.weight, math.inf), operator_norm(self.weight, 1)

    def _l2_norm_sq(self) -> float:
        return operator_norm(self.weight, 2) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"SLL: expected input (..., {self.in_features}), got shape {tuple(x.shape)}")
        dt = _work_dtype(x, self.weight)
        xw = x.to(dt)
        w = self.weight.to(dt)
        z = F.relu(F.linear(xw, w, None if self.bias is None else self.bias.to(dt)))
        return (xw - 2.0 * (z * self._inv_t(dt)) @ w).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden_features={self.hidden_features}, "
                f"bias={self.bias is not None}")


class SLLConv2d(_SLLBase):
    """Convolutional SLL (Araujo et al., ICLR 2023): ``h(x) = x - 2 K^T T^{-1} relu(K x + b)``.

    ``K`` is a stride-1 convolution with zero padding ``kernel_size // 2`` (odd kernel, so the
    spatial size is kept), ``K^T`` its exact adjoint (``conv_transpose2d`` with the same padding)
    and ``T`` is constant over positions: ``t_i = sum_j sum_s |M_ij(s)| q_j / q_i`` with
    ``M = K * K`` the full cross-correlation of the kernel with itself (shape (h, h, 2k-1, 2k-1)).
    A row of the matrix ``K K^T`` (hidden channel ``i`` at some position) holds the entries
    ``M_ij(s)`` (fewer near the border), so the scaled Gershgorin argument of :class:`SLL` gives
    ``T >= K K^T`` and the same proof makes the layer 1-Lipschitz in l2, for every input size.

    Args:
        in_channels: channels of the input (and the output).
        hidden_channels: channels of the inner convolution (default ``in_channels``).
        kernel_size: odd kernel size.
        bias: learnable bias of the inner convolution.
    """

    def __init__(self, in_channels: int, hidden_channels: int | None = None, kernel_size: int = 3,
                 bias: bool = True) -> None:
        super().__init__()
        _positive_int(in_channels, "in_channels", "SLLConv2d")
        hidden = in_channels if hidden_channels is None else hidden_channels
        _positive_int(hidden, "hidden_channels", "SLLConv2d")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"SLLConv2d: kernel_size must be an odd positive int, got {kernel_size!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(hidden, in_channels, kernel_size, kernel_size))
        nn.init.xavier_normal_(self.weight)
        self.log_q = nn.Parameter(torch.zeros(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden)) if bias else None

    def _abs_gram(self, w: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.conv2d(w, w, padding=k - 1).abs().sum(dim=(2, 3))

    def _abs_gram_error(self, w: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        n = self.in_channels * k * k
        return 2.0 * n * EPS64 * F.conv2d(w.abs(), w.abs(), padding=k - 1).sum(dim=(2, 3))

    def _row_l1_col_l1(self) -> tuple[float, float]:
        # rows of the conv matrix: one hidden channel's taps; columns: one input channel's taps
        w = as_float64(self.weight).abs()
        n = w[0].numel()
        return round_up(w.sum(dim=(1, 2, 3)).max().item(), n), round_up(w.sum(dim=(0, 2, 3)).max().item(), n)

    def _l2_norm_sq(self) -> float:
        # ||K||_2^2 = ||K K^T||_2 <= max row sum of |K K^T| <= max_i sum_j sum_s |M_ij(s)|
        w = as_float64(self.weight)
        a = self._abs_gram(w) + self._abs_gram_error(w)
        return round_up(a.sum(dim=1).max().item(), 4 * a.shape[1] * (2 * self.kernel_size) ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SLLConv2d: expected input (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        dt = _work_dtype(x, self.weight)
        xw = x.to(dt)
        w = self.weight.to(dt)
        pad = self.kernel_size // 2
        z = F.relu(F.conv2d(xw, w, None if self.bias is None else self.bias.to(dt), padding=pad))
        z = z * self._inv_t(dt)[None, :, None, None]
        return (xw - 2.0 * F.conv_transpose2d(z, w, padding=pad)).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
                f"kernel_size={self.kernel_size}, bias={self.bias is not None}")


@register_bound(Residual)
def _residual_rule(module: Residual, p: float, shapes: dict) -> float:
    return round_up(1.0 + child_bound(module.f, p, shapes), 2)


@register_bound(ConvexResidual)
def _convex_residual_rule(module: ConvexResidual, p: float, shapes: dict) -> float:
    c1, c2 = (as_float64(c).abs().item() for c in module.coefficients())
    lf = child_bound(module.f, p, shapes)
    if c2 == 0.0:
        return round_up(c1, 1)
    return round_up(c1 + c2 * lf, 3)


@register_bound(SLL, SLLConv2d, subclasses=True, overridable=("t",))
def _sll_rule(module: _SLLBase, p: float, shapes: dict) -> float:
    w = as_float64(module.weight)
    t_used = as_float64(module.t())
    if not torch.isfinite(t_used).all() or not torch.isfinite(w).all():
        return math.inf
    # the forward pass multiplies by fl(1/t) in float32 or float64: relative error < 2^-23
    rel = 1.0 + 2.0 ** -23
    inv_t_max = round_up((1.0 / t_used).max().item(), 2) * rel
    if p == 2:
        q = torch.exp(as_float64(module.log_q))
        a = module._abs_gram(w) + module._abs_gram_error(w)
        rows = (a * q[None, :]).sum(dim=1) / q
        rows = rows * (1.0 + 8.0 * (a.numel() + 8) * EPS64)
        # effective t' = 1 / fl(1/t) >= t / rel must dominate the Gershgorin row sums
        if bool((t_used / rel >= rows).all()):
            return 1.0
        return round_up(1.0 + 2.0 * module._l2_norm_sq() * inv_t_max, 4)
    row_l1, col_l1 = module._row_l1_col_l1()
    # ||I - 2 W^T S W||_p <= 1 + 2 ||W^T||_p ||S|| ||W||_p, and for p in {1, inf} the product
    # ||W^T||_p ||W||_p equals (max row l1 of W) * (max column l1 of W)
    return round_up(1.0 + 2.0 * row_l1 * col_l1 * inv_t_max, 4)
