"""``check_monotonic``: an empirical test of monotonicity, by finite differences and by gradients."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lipkit.monotonic.network import MonotonicNetwork

__all__ = ["MonotonicCheck", "check_monotonic", "EXTREMES"]

#: offsets (in input units) added to each checked feature, besides the point's own value; the last ones
#: push the feature far outside any standardised data range
OFFSETS = (-1e-3, 1e-3, -0.1, 0.1, -1.0, 1.0, -3.0, 3.0, -10.0, 10.0)
#: absolute values the feature is also set to (extreme inputs)
EXTREMES = (-1e4, -1e2, 1e2, 1e4)


@dataclass
class MonotonicCheck:
    """What :func:`check_monotonic` found.

    ``worst``: the largest move of the output against its constraint, in output units, over every checked
    pair (finite differences) in the model's own dtype, raw (round-off included).  ``worst_beyond_roundoff``:
    the same after subtracting each pair's measured round-off (``|f_dtype - f_float64|`` at both ends) and a
    float64 tolerance; > 0 only for a real violation.  ``worst_float64``: the worst move in a float64 copy
    of the model (same weight values), finite differences and gradients.  ``worst_gradient``: the most
    negative ``c_i d f / d x_i`` in the model's dtype (0 if none).  ``violations``: the number of checks
    beyond round-off (float64 finite differences or gradients, and dtype pairs beyond their round-off);
    ``per_feature_violations`` splits that count by feature (name, or position as a string).
    """

    worst: float
    worst_beyond_roundoff: float
    worst_float64: float
    worst_gradient: float
    violations: int
    checked_pairs: int
    per_feature: dict[str, float] = field(default_factory=dict)
    per_feature_violations: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.violations == 0


def _directions(model: nn.Module, features: Any, n_in: int,
                names: Sequence[str] | None) -> dict[int, torch.Tensor]:
    """``{feature index: direction per output (1-D tensor, broadcast)}``."""
    if isinstance(model, MonotonicNetwork):
        c = model.constraints.detach().cpu().double()
        if features is None:
            idx = [i for i in range(n_in) if bool((c[i] != 0).any())]
        else:
            idx = [_index(f, n_in, names) for f in (features.keys() if isinstance(features, Mapping)
                                                    else features)]
        out = {i: c[i] for i in idx}
        if isinstance(features, Mapping):  # explicit directions override
            out = {_index(k, n_in, names): torch.tensor([float(v)], dtype=torch.float64)
                   for k, v in features.items()}
        return out
    if not isinstance(features, Mapping):
        raise ValueError("check_monotonic: for a model that is not a MonotonicNetwork, give features as a "
                         "mapping {feature: +1 or -1}")
    out = {}
    for k, v in features.items():
        if v not in (-1, 1):
            raise ValueError(f"check_monotonic: direction of feature {k!r} must be +1 or -1, got {v!r}")
        out[_index(k, n_in, names)] = torch.tensor([float(v)], dtype=torch.float64)
    return out


def _index(f: Any, n_in: int, names: Sequence[str] | None) -> int:
    if isinstance(f, str):
        if names is None or f not in names:
            raise ValueError(f"check_monotonic: unknown feature {f!r}; known features: {names}")
        return list(names).index(f)
    i = int(f)
    if not 0 <= i < n_in:
        raise ValueError(f"check_monotonic: feature {i} outside 0..{n_in - 1}")
    return i


def _grid(x: torch.Tensor, i: int) -> torch.Tensor:
    """``(n, m, d)``: each point with feature ``i`` set to a sorted set of values around and far from it."""
    base = x[:, i:i + 1]
    vals = torch.cat([base, base + torch.tensor(OFFSETS, dtype=x.dtype),
                      torch.tensor(EXTREMES, dtype=x.dtype).expand(x.shape[0], -1)], dim=1)
    vals, _ = torch.sort(vals, dim=1)
    grid = x[:, None, :].repeat(1, vals.shape[1], 1)
    grid[:, :, i] = vals
    return grid


def check_monotonic(model: nn.Module, x: torch.Tensor | None = None, features: Any = None, *,
                    num_samples: int = 256, feature_names: Sequence[str] | None = None,
                    seed: int = 0) -> MonotonicCheck:
    """Search for violations of monotonicity, by finite differences and by gradients.

    For each point of ``x`` (or ``num_samples`` standard-normal points) and each checked feature ``i``, the
    feature is set to a sorted grid of values (the point's own, offsets from 1e-3 to 10, and the extremes
    +-1e2, +-1e4) and consecutive outputs are compared, ``c (f(t_{k+1}) - f(t_k))``; the gradient
    ``c d f / d x_i`` is taken at every grid point.  Both run in the model's dtype and in a float64 copy.

    The guarantee this checks (:class:`MonotonicNetwork`): the exact function of the stored weights is
    monotone, with ``c_i d f / d x_i >= lam - L >= 2^-10 L``; a float forward can move against the
    constraint by at most its round-off at the two ends.  So a trained lipkit model must show
    ``violations == 0``; ``worst`` (raw, dtype) may be a round-off-sized positive number.

    Args:
        model: a :class:`MonotonicNetwork`, or any module mapping ``(n, d)`` to ``(n, outputs)``.
        x: points ``(n, d)``; default: ``num_samples`` standard-normal points.
        features: the features to check: positions or names (a MonotonicNetwork's directions are used), or a
            mapping ``{feature: +1 or -1}`` (required for other models).  Default: every constrained input.
        feature_names: names for ``features`` given by name (default: the model's).
    """
    names = feature_names if feature_names is not None else getattr(model, "feature_names", None)
    n_in = getattr(model, "in_features", None)
    if x is None:
        if n_in is None:
            raise ValueError("check_monotonic: give the points x (the model does not say its input width)")
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(num_samples, n_in, generator=g)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"check_monotonic: x must be a (n, features) tensor, got {getattr(x, 'shape', x)!r}")
    if not torch.isfinite(x).all():
        raise ValueError("check_monotonic: x has NaN or infinite values")
    n_in = x.shape[1]
    dirs = _directions(model, features, n_in, names)
    if not dirs:
        raise ValueError("check_monotonic: no monotone feature to check")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    m64 = copy.deepcopy(model).double().eval()
    x = x.detach().to(torch.float64).cpu()
    worst = worst_beyond = worst64 = worst_grad = 0.0
    violations = pairs = 0
    per_feature: dict[str, float] = {}
    per_feature_violations: dict[str, int] = {}
    try:
        for i, c in dirs.items():
            grid = _grid(x, i)  # (n, m, d) float64
            n, m, d = grid.shape
            flat = grid.reshape(n * m, d)
            z = flat.to(device=device, dtype=dtype).requires_grad_(True)
            y = model(z)
            y = y[:, None] if y.dim() == 1 else y
            (gz,) = torch.autograd.grad(y.sum(), z) if y.shape[1] == 1 else (None,)
            z64 = flat.clone().requires_grad_(True)
            y64 = m64(z64)
            y64 = y64[:, None] if y64.dim() == 1 else y64
            cc = c.to(torch.float64).reshape(1, -1)
            if cc.shape[1] not in (1, y64.shape[1]):
                raise ValueError(f"check_monotonic: {cc.shape[1]} directions for {y64.shape[1]} outputs")
            ys = (y.detach().double().cpu() * cc).reshape(n, m, -1)
            ys64 = (y64.detach() * cc).reshape(n, m, -1)
            err = (ys - ys64).abs()
            move = -(ys[:, 1:] - ys[:, :-1])  # > 0: against the constraint
            move64 = -(ys64[:, 1:] - ys64[:, :-1])
            tol64 = 1e-9 * (1.0 + ys64.abs().amax())
            beyond = move - err[:, 1:] - err[:, :-1] - tol64
            # gradients: per output, in float64 (and the dtype gradient for single-output models)
            grads64 = []
            for j in range(y64.shape[1]):
                (gj,) = torch.autograd.grad(y64[:, j].sum(), z64, retain_graph=True)
                grads64.append(gj[:, i] * cc[0, j if cc.shape[1] > 1 else 0])
            g64 = torch.stack(grads64, 1)
            free = cc.abs().reshape(1, -1).expand_as(g64) == 0
            g64 = torch.where(free, torch.zeros_like(g64), g64)
            mask = (cc != 0).reshape(1, 1, -1).expand_as(move)
            move = torch.where(mask, move, torch.zeros_like(move))
            move64 = torch.where(mask, move64, torch.zeros_like(move64))
            beyond = torch.where(mask, beyond, torch.zeros_like(beyond))
            pairs += int(mask.sum())
            worst = max(worst, float(move.max()))
            worst64 = max(worst64, float(move64.max()), float((-g64).max()))
            worst_beyond = max(worst_beyond, float(beyond.max()), float((-g64).max()) - float(tol64))
            found = int((beyond > 0).sum()) + int((move64 > tol64).sum()) + int((-g64 > tol64).sum())
            violations += found
            if gz is not None:
                worst_grad = max(worst_grad, float((-(gz[:, i].double().cpu() * cc[0, 0])).max()))
            key = names[i] if names is not None else str(i)
            per_feature[key] = float(move.max())
            per_feature_violations[key] = found
    finally:
        model.train(was_training)
    return MonotonicCheck(worst=max(worst, 0.0), worst_beyond_roundoff=max(worst_beyond, 0.0),
                          worst_float64=max(worst64, 0.0), worst_gradient=max(worst_grad, 0.0),
                          violations=violations, checked_pairs=pairs, per_feature=per_feature,
                          per_feature_violations=per_feature_violations)


