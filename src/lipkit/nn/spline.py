"""Learnable 1-Lipschitz linear-spline activations.

Ducotterd, Goujon, Bohra, Perdios, Neumayer & Unser, "Improving Lipschitz-constrained neural
networks by learning activation functions" (JMLR 2024): each channel gets its own continuous
piecewise-linear function on a uniform grid of knots, with a second-order total-variation
(TV(2)) regulariser that favours few linear pieces.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds import as_float64, register_bound

__all__ = ["LinearSpline"]


class LinearSpline(nn.Module):
    """Per-channel learnable linear spline with slopes clipped to [-1, 1] (so 1-Lipschitz).

    Knots ``t_k = -knot_range + k h`` (``k = 0 .. K-1``, ``h = 2 knot_range / (K - 1)``).  The
    learnable ``coefficients`` (shape (C, K)) are the values at the knots.  The forward pass uses
    the clipped slopes ``s_k = clamp((c_{k+1} - c_k) / h, -1, 1)`` and the function

        sigma(x) = a + sum_k s_k * clamp(x - t_k, 0, h) + s_0 min(x - t_0, 0) + s_{K-2} max(x - t_{K-1}, 0)

    (``a`` chosen so that sigma keeps the value ``c_m`` at the knot ``m = K // 2``), i.e. the linear
    interpolation of the projected knot values, extended linearly outside ``[t_0, t_{K-1}]``.  For
    ``x < y`` the sum telescopes into ``sigma(y) - sigma(x) = sum_k s_k |[x, y] cap piece_k|``, so
    ``|sigma(y) - sigma(x)| <= max_k |s_k| (y - x)``: the Lipschitz constant is exactly the largest
    slope actually used (<= 1).  Being element-wise, the layer has that constant for every l_p norm.
    (The forward pass evaluates sigma via precomputed knot values in float64, rounded to the input
    dtype: that is evaluation round-off of the same function, like the round-off of any matmul.)

    Args:
        num_channels: number of channels C (size of ``dim``).
        num_knots: number of knots K (>= 3).
        knot_range: knots span ``[-knot_range, knot_range]``.
        init: ``"relu"``, ``"identity"`` or ``"absolute_value"``.
        dim: the channel dimension of the input (default 1).
    """

    def __init__(
        self,
        num_channels: int,
        num_knots: int = 21,
        knot_range: float = 3.0,
        init: str = "relu",
        dim: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"LinearSpline: num_channels must be a positive int, got {num_channels!r}")
        if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < 3:
            raise ValueError(f"LinearSpline: num_knots must be an int >= 3, got {num_knots!r}")
        if not (math.isfinite(knot_range) and knot_range > 0):
            raise ValueError(f"LinearSpline: knot_range must be a positive finite float, got {knot_range!r}")
        self.num_channels = num_channels
        self.num_knots = num_knots
        self.knot_range = float(knot_range)
        self.dim = dim
        self.init = init
        self.register_buffer("knots", torch.linspace(-self.knot_range, self.knot_range, num_knots))
        grid = self.knots.expand(num_channels, num_knots).clone()
        if init == "relu":
            coeffs = grid.clamp(min=0)
        elif init == "identity":
            coeffs = grid
        elif init == "absolute_value":
            coeffs = grid.abs()
        else:
            raise ValueError(
                f"LinearSpline: unknown init {init!r}; use 'relu', 'identity' or 'absolute_value'"
            )
        self.coefficients = nn.Parameter(coeffs)

    @property
    def step(self) -> float:
        """Knot spacing h."""
        return 2.0 * self.knot_range / (self.num_knots - 1)

    def slopes(self) -> torch.Tensor:
        """The clipped slopes ``s`` (shape (C, K-1)) the forward pass uses; every entry is in [-1, 1]."""
        return torch.clamp(torch.diff(self.coefficients, dim=1) / self.step, -1.0, 1.0)

    def _knot_values(self, s: torch.Tensor) -> torch.Tensor:
        """Values of the projected spline at the knots, computed in float64."""
        s64 = s.to(torch.float64)
        h = self.step
        cum = torch.cat([torch.zeros_like(s64[:, :1]), torch.cumsum(s64 * h, dim=1)], dim=1)
        m = self.num_knots // 2
        anchor = self.coefficients[:, m : m + 1].to(torch.float64)
        return cum - cum[:, m : m + 1] + anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("LinearSpline expects a tensor with a channel dimension")
        if not -x.dim() <= self.dim < x.dim():
            raise ValueError(f"LinearSpline: dim={self.dim} is out of range for input shape {tuple(x.shape)}")
        if x.shape[self.dim] != self.num_channels:
            raise ValueError(
                f"LinearSpline: expected {self.num_channels} channels along dim {self.dim}, got input "
                f"shape {tuple(x.shape)}"
            )
        s = self.slopes()
        values = self._knot_values(s).to(x.dtype)
        s = s.to(x.dtype)
        xm = x.movedim(self.dim, -1)  # (..., C)
        h = self.step
        t0 = -self.knot_range
        idx = torch.floor((xm.detach() - t0) / h).long().clamp(0, self.num_knots - 2)
        chan = torch.arange(self.num_channels, device=x.device)
        left = values[chan, idx]  # broadcast (..., C)
        slope = s[chan, idx]
        t_left = t0 + idx.to(x.dtype) * h
        out = left + slope * (xm - t_left)
        return out.movedim(-1, self.dim)

    def tv2(self) -> torch.Tensor:
        """TV(2) regulariser ``sum_c sum_k |c_{k+2} - 2 c_{k+1} + c_k| / h``: the total variation of
        the derivative of the (unclipped) spline, summed over channels (Ducotterd et al.)."""
        second = torch.diff(self.coefficients, n=2, dim=1)
        return second.abs().sum() / self.step

    def lipschitz_constant(self) -> float:
        """Largest |slope| used by the forward pass (exact: the clipped slopes are the parameters
        of the function, see the class docstring)."""
        return as_float64(self.slopes()).abs().max().item()

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, num_knots={self.num_knots}, "
            f"knot_range={self.knot_range}, init={self.init!r}, dim={self.dim}"
        )


@register_bound(LinearSpline)
def _spline_rule(module: LinearSpline, p: float, shapes: dict) -> float:
    val = module.lipschitz_constant()
    return val if math.isfinite(val) else math.inf
