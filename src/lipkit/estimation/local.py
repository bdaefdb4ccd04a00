"""Local Lipschitz bounds on an input domain: interval bound propagation fixes the neurons that cannot switch.

The quantity a robustness certificate around one input ``x0`` needs is the Lipschitz constant of ``f``
restricted to a convex domain ``X`` (a box ``[lo, hi]`` or a ball ``{x : ||x - x0||_q <= r}``):

    Lip_p(f; X) = sup_{x != y in X} ||f(x) - f(y)||_p / ||x - y||_p.

1. *Interval bound propagation* (IBP; Gowal et al., 2018; Mirman et al., 2018): from a box containing
   ``X`` (a ball lies in ``x0 +- r``), push ``[l, u]`` through the network: an affine map in centre/radius
   form, ``c' = W c + b``, ``r' = |W| r``; a monotone activation end-point-wise.  Every pre-activation
   ``z_i(x)``, ``x in X``, then lies in ``[l_i, u_i]``.  Each layer's rule is its interval facet
   (:mod:`lipkit.bounds.interval`, shared with the interval certificates of :mod:`lipkit.certify`): float64,
   widened by a bound of its own round-off, so the enclosure is sound for the exact function.
2. *Slope ranges*: for ``a, b`` in ``[l_i, u_i]`` the difference quotient of a piecewise-C^1 activation is
   a mean of its derivative on ``[l_i, u_i]``, so neuron ``i`` is slope-restricted on
   ``[min phi', max phi']`` over ``[l_i, u_i]``.  A ReLU with ``u_i <= 0`` has the fixed slope 0 (it is
   dead on ``X``), with ``l_i >= 0`` the fixed slope 1; leaky ReLU, tanh, sigmoid, ELU, softplus and
   hard-tanh get their (narrower) ranges likewise.
3. *Bounds with the narrowed ranges* (all sound for pairs in ``X``, the minimum is reported):
   * naive-local: ``J = W_L D_{L-1} ... D_1 W_1`` with ``|D_k| <= diag(m_k)`` (``m_k = max(|alpha|, |beta|)``
     per neuron); for l2, ``D = diag(sqrt m) U diag(sqrt m)`` with ``||U|| <= 1`` gives
     ``||J||_2 <= prod_k ||diag(sqrt m_k) W_k diag(sqrt m_{k-1})||_2``; for l_inf / l1,
     ``||J|| <= prod_k ||W_{k+1} diag(m_k)||`` (rows / columns of dead neurons vanish);
   * when every neuron has a fixed slope ``c`` the network is affine on ``X`` and its Jacobian
     ``J = W_L diag(c_{L-1}) ... diag(c_1) W_1`` is formed in float64: ``||J|| + ||gamma |W_L| ... |W_1|||``
     (the product's round-off, ``gamma = 2 (sum of inner dimensions + L) eps``) is exact up to round-off;
   * LipSDP-Neuron (p = 2) or LiPopt (p = inf, 1) with the per-neuron slope ranges (see
     :mod:`lipkit.estimation.lipsdp`, :mod:`lipkit.estimation.lipopt`).  For LipSDP the incremental
     quadratic constraints hold for every pair in ``X``; for LiPopt ``f(x) - f(y) = int_0^1 J(x + t(y - x))
     dt (y - x)`` with every ``J`` of the form above (``X`` is convex).

The lower bound is the best of sampled difference quotients of pairs in ``X`` and Jacobian norms at
points of ``X`` (multi-start projected ascent), see :func:`lipkit.estimation.lower.lower_bound`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lipkit.bounds import EPS64, normalize_p, operator_norm, round_up
from lipkit.bounds.interval import interval_forward, register_interval
from lipkit.nn.activations import SmoothSoftplus

from ._mlp import MLP, Comparators, flatten_modules, has_sort, mlp_as_sequential, parse_mlp

__all__ = ["Domain", "as_domain", "preactivation_bounds", "activation_slope_range", "local_slopes",
           "naive_local_upper", "affine_local_upper"]


@dataclass
class Domain:
    """A convex input domain: the box ``[lo, hi]`` or the ball ``||x - center||_q <= radius``.

    ``lo`` / ``hi`` (float64, shape of one input) always enclose the domain.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    kind: str = "box"
    center: torch.Tensor | None = None
    radius: float = 0.0
    q: float = math.inf

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` points of the domain (uniform in the box; for a ball, uniform direction and radius)."""
        if self.kind == "box":
            u = torch.rand((n, *self.shape), generator=gen, dtype=torch.float64)
            return self.lo + u * (self.hi - self.lo)
        if self.q == math.inf:
            u = torch.rand((n, *self.shape), generator=gen, dtype=torch.float64)
            return self.project(self.center + self.radius * (2 * u - 1))
        d = torch.randn((n, *self.shape), generator=gen, dtype=torch.float64)
        t = torch.rand((n, *([1] * len(self.shape))), generator=gen, dtype=torch.float64)
        return self.project(self.center + self.radius * t * d / _norms(d, self.q).clamp_min(1e-300))

    def shrunk(self, fraction: float) -> Domain:
        """The domain scaled by ``1 - fraction`` about its centre (its points are interior points)."""
        f = 1.0 - fraction
        if self.kind == "box":
            c, h = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
            return Domain(torch.maximum(c - f * h, self.lo), torch.minimum(c + f * h, self.hi), "box")
        return Domain(self.lo, self.hi, "ball", self.center, self.radius * f, self.q)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """A point of the domain near ``x`` (the exact projection for boxes and l2 / l_inf balls)."""
        if self.kind == "box":
            return torch.maximum(torch.minimum(x, self.hi), self.lo)
        if self.q == math.inf:
            return torch.maximum(torch.minimum(x, self.center + self.radius), self.center - self.radius)
        d = x - self.center
        n = _norms(d, self.q)
        # shrink slightly below the radius so round-off never leaves the ball
        factor = torch.where(n > self.radius * (1 - 1e-12), self.radius * (1 - 1e-12) / n.clamp_min(1e-300),
                             torch.ones_like(n))
        return self.center + d * factor

    def describe(self) -> str:
        if self.kind == "box":
            return f"box of {self.lo.numel()} coordinates, widths {float((self.hi - self.lo).max()):.3g} max"
        q = "inf" if self.q == math.inf else f"{self.q:g}"
        return f"l{q} ball of radius {self.radius:g}"


def _norms(x: torch.Tensor, q: float) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1), ord=q, dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def _as_tensor(v, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(v).detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"input_domain: {name} is not a tensor or array ({exc})") from None
    if not torch.isfinite(t).all():
        raise ValueError(f"input_domain: {name} contains NaN or inf")
    return t


def as_domain(input_domain, input_shape: Sequence[int] | None = None) -> Domain:
    """Read ``input_domain``: a :class:`Domain`, a box ``(lo, hi)`` or a ball ``(center, radius, q)``.

    Tensors may carry a leading batch dimension of size 1.  Raises ``ValueError`` with the reason for a
    malformed domain (shape mismatch with ``input_shape``, ``lo > hi``, negative radius, NaN, bad norm).
    """
    if isinstance(input_domain, Domain):
        dom = input_domain
    else:
        if not isinstance(input_domain, (tuple, list)) or len(input_domain) not in (2, 3):
            raise ValueError("input_domain must be a box (lo, hi) or a ball (center, radius, p); got "
                             f"{type(input_domain).__name__}")
        if len(input_domain) == 2:
            lo, hi = (_as_tensor(v, n) for v, n in zip(input_domain, ("lo", "hi"), strict=True))
            if lo.shape != hi.shape:
                raise ValueError(f"input_domain: lo has shape {tuple(lo.shape)} but hi has {tuple(hi.shape)}")
            if bool((lo > hi).any()):
                raise ValueError("input_domain: lo > hi in some coordinate")
            lo, hi = _drop_batch(lo, input_shape), _drop_batch(hi, input_shape)
            dom = Domain(lo, hi, "box")
        else:
            center = _drop_batch(_as_tensor(input_domain[0], "center"), input_shape)
            try:
                radius = float(input_domain[1])
            except (TypeError, ValueError):
                raise ValueError(f"input_domain: radius {input_domain[1]!r} is not a number") from None
            if not (radius >= 0 and math.isfinite(radius)):
                raise ValueError(f"input_domain: radius must be finite and >= 0, got {radius!r}")
            q = normalize_p(input_domain[2])
            # every l_q ball lies in the l_inf ball of the same radius; widen by round-off
            slack = 4 * EPS64 * (center.abs() + radius) + 1e-300
            dom = Domain(center - radius - slack, center + radius + slack, "ball", center, radius, q)
    if input_shape is not None and tuple(dom.shape) != tuple(input_shape):
        raise ValueError(f"input_domain has shape {dom.shape} but the model's input shape is "
                         f"{tuple(input_shape)}")
    return dom


def _drop_batch(t: torch.Tensor, input_shape: Sequence[int] | None) -> torch.Tensor:
    """Drop a leading batch dimension of size 1 when the input shape says it is one."""
    if input_shape is not None and tuple(t.shape) == (1, *tuple(input_shape)):
        return t[0]
    return t


# --------------------------------------------------------------------------- interval bound propagation


#: the activations whose pre-activation boxes :func:`preactivation_bounds` reports (max pooling is not one)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, SmoothSoftplus, nn.Hardtanh, nn.ReLU6,
                Comparators)


def _comparators_box(m: Comparators, lo: torch.Tensor,
                     hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A lowered sort's comparator round: ReLU or identity per neuron, monotone and exact."""
    return m(lo), m(hi)


register_interval(Comparators)(_comparators_box)


def preactivation_bounds(model: nn.Module,
                         domain: Domain) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """Sound float64 interval bounds of the input of every activation of ``model`` on ``domain``.

    The box ``[domain.lo, domain.hi]`` is pushed through the layers by their interval rules
    (:func:`lipkit.bounds.interval.interval_forward`, rounded outward).  Returns
    ``[(activation module, lower, upper), ...]`` in forward order (shapes without batch).  Supported: the
    layers with an interval rule, e.g. ``nn.Linear``, ``nn.Conv1d/2d``, ``nn.BatchNorm1d/2d`` (eval),
    ``nn.Flatten``, ``nn.Identity``, ``nn.Dropout`` (eval), average and max pooling, and monotone
    element-wise activations.  Raises :class:`lipkit.bounds.UnsupportedModuleError` (a ``TypeError``)
    naming an unsupported module.
    """
    lo = domain.lo[None].clone()
    hi = domain.hi[None].clone()
    out: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for m in flatten_modules(model):
            if isinstance(m, _ACTIVATIONS):
                out.append((m, lo[0].clone(), hi[0].clone()))
            lo, hi = interval_forward(m, lo, hi)
    return out


# --------------------------------------------------------------------------- slopes


def _sigmoid_d(z: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def activation_slope_range(act: nn.Module, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron ``[alpha, beta]`` of ``act`` on the pre-activation intervals ``[lo, hi]`` (float64 arrays).

    The range of ``phi'`` over each interval (mean-value theorem; at a kink both one-sided slopes), widened by
    ``1e-12`` relative for the round-off of evaluating ``phi'`` (ranges that are exact, such as the 0 / 1
    slopes of a fixed ReLU, are kept exact).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    ones = np.ones_like(lo)
    if isinstance(act, Comparators):  # a lowered sort: ReLU on the comparator neurons, identity elsewhere
        relu_a, relu_b = activation_slope_range(nn.ReLU(), lo, hi)
        return np.where(act.relu, relu_a, 1.0), np.where(act.relu, relu_b, 1.0)
    if isinstance(act, (nn.ReLU, nn.LeakyReLU)):
        a = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0
        alpha = np.where(lo >= 0, 1.0, np.where(hi <= 0, a, min(a, 1.0)))
        beta = np.where(lo >= 0, 1.0, np.where(hi <= 0, a, max(a, 1.0)))
        return alpha, beta
    if isinstance(act, (nn.Hardtanh, nn.ReLU6)):
        lo_k = 0.0 if isinstance(act, nn.ReLU6) else float(act.min_val)
        hi_k = 6.0 if isinstance(act, nn.ReLU6) else float(act.max_val)
        inside = (lo >= lo_k) & (hi <= hi_k)
        outside = (hi <= lo_k) | (lo >= hi_k)
        alpha = np.where(inside, 1.0, 0.0)
        beta = np.where(outside, 0.0, 1.0)
        return alpha, beta
    if isinstance(act, (nn.Tanh, nn.Sigmoid)):
        if isinstance(act, nn.Tanh):
            def d(z):
                return 1.0 - np.tanh(z) ** 2
        else:
            d = _sigmoid_d
        closest = np.clip(0.0, lo, hi)  # the derivative is even and decreasing in |z|
        beta = d(closest)
        alpha = np.minimum(d(lo), d(hi))
    elif isinstance(act, nn.ELU):
        a = float(act.alpha)
        neg_lo, neg_hi = np.minimum(lo, 0.0), np.minimum(hi, 0.0)
        has_neg = lo < 0
        has_pos = hi > 0
        s_lo, s_hi = a * np.exp(neg_lo), a * np.exp(neg_hi)
        alpha = np.where(has_neg, np.where(has_pos, np.minimum(s_lo, 1.0), s_lo), 1.0)
        beta = np.where(has_neg, np.where(has_pos, np.maximum(a, 1.0) * ones, s_hi), 1.0)
        # ELU's slope on the negative side is alpha * e^z: approaches alpha at 0^-; max covered above
    elif isinstance(act, SmoothSoftplus):
        b = float(act.beta)
        alpha = 1.0 / (1.0 + np.exp(-b * lo))
        beta = 1.0 / (1.0 + np.exp(-b * hi))
    else:
        raise TypeError(f"no slope range for activation {type(act).__name__}")
    widen = 1e-12 * np.maximum(np.abs(alpha), np.abs(beta)) + 1e-300
    return np.maximum(alpha - widen, 0.0), beta + widen


def local_slopes(model: nn.Module, domain: Domain) -> tuple[MLP, list[tuple[np.ndarray, np.ndarray]], dict]:
    """Parse ``model`` as an MLP and compute its per-neuron slope ranges on ``domain``.

    Returns ``(mlp, slopes, stats)`` with ``stats`` counting fixed (cannot switch) and dead neurons.
    Raises ``TypeError`` when the model is not an MLP or a module is unsupported.
    """
    mlp = parse_mlp(model, domain.shape)
    if len(mlp.acts) == 0:
        return mlp, [], {"neurons": 0, "fixed": 0, "dead": 0}
    # GroupSort-type activations: propagate through the lowered net (comparators are monotone, element-wise)
    ranges = preactivation_bounds(mlp_as_sequential(mlp) if has_sort(model) else model, domain)
    if len(ranges) != len(mlp.acts):
        raise TypeError("local bounds need an MLP whose activations follow its Linear layers")
    slopes = []
    fixed = dead = total = 0
    for (act, lo, hi), k in zip(ranges, range(len(mlp.acts)), strict=True):
        a, b = activation_slope_range(act, lo.flatten().numpy(), hi.flatten().numpy())
        if a.shape[0] != mlp.weights[k].shape[0]:
            raise TypeError("local bounds: interval shapes do not match the parsed MLP")
        slopes.append((a, b))
        total += a.size
        fixed += int((a == b).sum())
        dead += int(((a == 0) & (b == 0)).sum())
    mlp.neuron_slopes = slopes
    return mlp, slopes, {"neurons": total, "fixed": fixed, "dead": dead}


def _folded_norm(mat: np.ndarray, p: float) -> float:
    """``||mat||_p`` rounded up (:func:`operator_norm`) plus the error of forming ``mat`` in float64: at
    most 2 roundings per entry, so ``||E|| <= 4 EPS64 ||mat||_F`` (l2) or ``4 EPS64 ||(|mat|)||_p``
    (l_inf, l_1)."""
    err = 4 * EPS64 * (float(np.linalg.norm(mat)) if p == 2 else operator_norm(torch.from_numpy(mat), p))
    return operator_norm(torch.from_numpy(mat), p) + err


def naive_local_upper(mlp: MLP, p: float) -> float:
    """Product of norms with the per-neuron slope bounds folded into the weights (module docstring, 3.)."""
    L = mlp.depth
    m = [np.maximum(np.abs(a), np.abs(b)) for a, b in (mlp.layer_slopes(k) for k in range(L - 1))]
    total = 1.0
    for k, w in enumerate(mlp.weights):
        w = w.numpy()
        if p == 2:
            left = np.sqrt(m[k]) if k < L - 1 else np.ones(w.shape[0])
            right = np.sqrt(m[k - 1]) if k > 0 else np.ones(w.shape[1])
            mat = left[:, None] * w * right[None, :]
        else:
            right = m[k - 1] if k > 0 else np.ones(w.shape[1])
            mat = w * right[None, :]
        total *= _folded_norm(mat, p)
        if total == 0.0:
            return 0.0
    return round_up(total, 4 * L)


def affine_local_upper(mlp: MLP, p: float) -> float | None:
    """``||J||_p`` (rounded up) when every neuron's slope is fixed on the domain (``f`` is affine there);
    ``None`` if some neuron can switch."""
    L = mlp.depth
    J = mlp.weights[0].numpy().copy()
    Jabs = np.abs(J)
    inner = 0
    for k in range(1, L):
        a, b = mlp.layer_slopes(k - 1)
        if not np.array_equal(a, b):
            return None
        w = mlp.weights[k].numpy()
        J = w @ (a[:, None] * J)
        Jabs = np.abs(w) @ (np.abs(a)[:, None] * Jabs)
        inner += w.shape[1] + 1
    gamma = 2.0 * (inner + L + 2) * EPS64
    if p == 2:
        err = gamma * float(np.linalg.norm(Jabs))
    else:
        err = gamma * operator_norm(torch.from_numpy(Jabs), p)
    return round_up(operator_norm(torch.from_numpy(J), p) + err, 4)
