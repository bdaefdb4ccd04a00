"""Gradient-norm-preserving activations: GroupSort, MaxMin, FullSort, Householder, Abs.

Why sorting is 1-Lipschitz in every l_p norm (p >= 1): ``sort`` is continuous and piecewise
linear, and on each piece (a region where the order of the coordinates is fixed) it is a
permutation matrix ``P``, an isometry of every l_p norm.  The segment from ``x`` to ``y`` crosses
finitely many pieces, so ``||sort(x) - sort(y)||_p <= sum_k ||P_k (x_k - x_{k-1})||_p
= sum_k ||x_k - x_{k-1}||_p = ||x - y||_p`` (the ``x_k`` are the breakpoints on the segment).
Sorting inside disjoint groups is a product of such maps, hence also 1-Lipschitz.  The same
argument gives the Householder activation's bound: it is continuous and piecewise linear with
pieces ``I`` and ``R = I - 2 v v^T``, so its Lipschitz constant is at most ``max(1, ||R||_p)``.

References: Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation" (ICML 2019)
for GroupSort / MaxMin; Singla, Singla & Feizi, "Improved deterministic l2 robustness on
CIFAR-10 and CIFAR-100" (ICLR 2022) for the Householder activation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds import as_float64, register_bound, register_sensitivity, round_up
from lipkit.nn.spline import LinearSpline

__all__ = ["GroupSort", "MaxMin", "FullSort", "Householder", "Abs", "Negate", "SmoothSoftplus",
           "LinearSpline"]


def _grouped(x: torch.Tensor, dim: int, group_size: int | None, who: str) -> tuple[torch.Tensor, int]:
    """Move ``dim`` last and split it into groups: returns a view of shape (..., n / g, g)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{who} expects a tensor with at least one dimension, got a scalar")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{who}: dim={dim} is out of range for an input of shape {tuple(x.shape)}")
    dim = dim % x.dim()
    n = x.shape[dim]
    g = n if group_size is None else group_size
    if g == 0 or n % g != 0:
        raise ValueError(
            f"{who}: size {n} of dimension {dim} (input shape {tuple(x.shape)}) is not divisible by "
            f"the group size {g}"
        )
    xm = x.movedim(dim, -1)
    return xm.reshape(*xm.shape[:-1], n // g, g), dim


def _ungroup(y: torch.Tensor, dim: int) -> torch.Tensor:
    y = y.reshape(*y.shape[:-2], y.shape[-2] * y.shape[-1])
    return y.movedim(-1, dim)


class GroupSort(nn.Module):
    """Sort the entries of consecutive groups of ``group_size`` along ``dim`` (descending).

    ``GroupSort(n)`` on a dimension of size ``n`` is a full sort; ``group_size=2`` is MaxMin.
    1-Lipschitz for every l_p norm (see the module docstring), and gradient-norm preserving.

    Args:
        group_size: size of each group (>= 1); the size of ``dim`` must be divisible by it.
        dim: dimension to sort along (default 1: features of (N, C) or channels of (N, C, H, W)).
    """

    def __init__(self, group_size: int = 2, dim: int = 1) -> None:
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"GroupSort: group_size must be a positive int, got {group_size!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"GroupSort: dim must be an int, got {dim!r}")
        self.group_size = group_size
        self.dim = dim

    def _size(self) -> int | None:
        return self.group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, dim = _grouped(x, self.dim, self._size(), type(self).__name__)
        return _ungroup(torch.sort(z, dim=-1, descending=True).values, dim)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MaxMin(GroupSort):
    """MaxMin (Anil et al., 2019): ``(a, b) -> (max(a, b), min(a, b))`` on consecutive pairs,
    i.e. :class:`GroupSort` with ``group_size=2``.  1-Lipschitz for every l_p norm."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__(group_size=2, dim=dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class FullSort(GroupSort):
    """Sort the whole dimension ``dim`` (descending): GroupSort with one group.  1-Lipschitz for
    every l_p norm."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__(group_size=1, dim=dim)

    def _size(self) -> int | None:
        return None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Abs(nn.Module):
    """Element-wise absolute value: ``||x| - |y|| <= |x - y|`` per coordinate, so 1-Lipschitz for
    every l_p norm (and gradient-norm preserving almost everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class SmoothSoftplus(nn.Module):
    """``softplus(x) = log(1 + exp(beta x)) / beta``, computed as ``logaddexp(beta x, 0) / beta`` everywhere.

    ``torch.nn.Softplus`` switches to the identity above ``beta x > threshold``, which makes it jump by
    ``log1p(exp(-threshold)) / beta`` there: it has no Lipschitz constant, and lipkit refuses it.  This
    module is the smooth function itself (slope ``sigmoid(beta x)`` in (0, 1): 1-Lipschitz for every norm)
    and is what ONNX ``Softplus`` imports as.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(self.beta * x, torch.zeros((), dtype=x.dtype, device=x.device)) / self.beta

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class Negate(nn.Module):
    """``y = -x``: an isometry for every norm (Lipschitz constant exactly 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class Householder(nn.Module):
    """Householder activation (Singla, Singla & Feizi, ICLR 2022) on consecutive pairs along ``dim``.

    Each pair ``z in R^2`` is mapped to ``z`` if ``v^T z > 0`` and to ``(I - 2 v v^T) z`` otherwise,
    with ``v = (cos theta, sin theta)`` and a learnable angle ``theta`` per pair (or one shared angle
    when ``num_features`` is None).  On the hyperplane ``v^T z = 0`` both branches agree, so the map
    is continuous and piecewise linear with pieces ``I`` and ``R = I - 2 v v^T``; its l_p Lipschitz
    constant is at most ``max(1, ||R||_p)``.  For l2 and a unit ``v``, ``R`` is a reflection (an
    isometry), so the bound is 1; the bound rule computes ``||R||_p`` from the *actual* ``v``
    (float32 cos/sin are not exactly unit) in float64, rounded up.  For l_inf,
    ``||R||_inf = |cos 2 theta| + |sin 2 theta| <= sqrt(2)``.

    The default angle ``theta = -pi/4`` (``v = (1, -1) / sqrt(2)``) makes the layer equal to MaxMin.

    Args:
        num_features: size of ``dim`` (must be even) for one angle per pair; None for one shared angle.
        dim: dimension holding the features / channels (default 1).
        theta: initial angle in radians.
    """

    def __init__(self, num_features: int | None = None, dim: int = 1, theta: float = -math.pi / 4) -> None:
        super().__init__()
        if num_features is not None:
            if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 2:
                raise ValueError(f"Householder: num_features must be an int >= 2, got {num_features!r}")
            if num_features % 2:
                raise ValueError(f"Householder: num_features={num_features} must be even (pairs)")
        n_angles = 1 if num_features is None else num_features // 2
        self.num_features = num_features
        self.dim = dim
        self.theta = nn.Parameter(torch.full((n_angles,), float(theta)))

    def direction(self) -> torch.Tensor:
        """The unit vectors ``v`` (shape (pairs, 2)) used by the forward pass."""
        return torch.stack([torch.cos(self.theta), torch.sin(self.theta)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, dim = _grouped(x, self.dim, 2, "Householder")
        if self.num_features is not None and z.shape[-2] * 2 != self.num_features:
            raise ValueError(
                f"Householder: expected {self.num_features} features along dim {self.dim}, got input "
                f"shape {tuple(x.shape)}"
            )
        v = self.direction().to(z.dtype)
        vz = (z * v).sum(dim=-1, keepdim=True)
        out = torch.where(vz > 0, z, z - 2.0 * v * vz)
        return _ungroup(out, dim)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, dim={self.dim}"


@register_bound(GroupSort, MaxMin, FullSort, Abs, Negate, SmoothSoftplus)
def _permutation_rule(module: nn.Module, p: float, shapes: dict) -> float:
    return 1.0


@register_bound(Householder)
def _householder_rule(module: Householder, p: float, shapes: dict) -> float:
    v = as_float64(module.direction())  # the float32 values the forward pass uses
    if not torch.isfinite(v).all():
        return math.inf
    if p == 2:
        # R = I - 2 v v^T is symmetric with eigenvalues 1 (orthogonal to v) and 1 - 2 ||v||^2.
        val = (1.0 - 2.0 * (v * v).sum(-1)).abs().max().item()
    else:  # R is symmetric, so ||R||_1 = ||R||_inf = max row l1 norm
        eye = torch.eye(2, dtype=torch.float64)
        r = eye - 2.0 * v[:, :, None] * v[:, None, :]
        val = r.abs().sum(-1).max().item()
    return max(1.0, round_up(val, 8))


@register_sensitivity(Householder)
def _householder_sensitivity(module: Householder, r: float, g: float, shapes: dict) -> dict[str, float]:
    """``||dl/dtheta|| <= 2 sqrt(2) G R``.

    On a pair ``z`` in the reflected region the output is ``z - 2 v (v^T z)``, so ``dy/dtheta = -2 (v' (v^T z)
    + v (v'^T z))`` with ``v' = dv/dtheta`` orthogonal to ``v``, of norm ``2 sqrt((v^T z)^2 + (v'^T z)^2) <=
    2 ||z||``; elsewhere 0.  The gradient of one angle shared by the pairs ``p`` is
    ``sum_p g_p^T dy_p/dtheta``,
    at most ``2 sum_p ||g_p|| ||z_p|| <= 2 G R`` (Cauchy-Schwarz); with one angle per pair the gradient vector
    has entries ``<= 2 ||g_p|| ||z_p||`` and norm ``<= 2 G R``.  The factor ``sqrt(2)`` covers the float32
    ``cos``/``sin`` not being exactly unit and orthogonal with room to spare.
    """
    return {"theta": round_up(2.0 * math.sqrt(2.0) * r * g, 4)}
