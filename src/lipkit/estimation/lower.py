"""Sound LOWER bounds of the Lipschitz constant, each attained by a concrete point or pair.

Two certificates of ``Lip_p(f) >= value``:

* a pair ``(x, y)``: ``||f(x) - f(y)||_p / ||x - y||_p`` (definition of the constant);
* a point ``x`` where ``f`` is differentiable: ``||J_f(x)||_p`` (operator norm), because
  ``||J(x) v|| = lim_t ||f(x + t v) - f(x)|| / t <= Lip(f) ||v||``.

Points are found by multi-start gradient ascent of ``||J(x)||_p`` (``p = 2``: largest singular value;
``p = inf``: max row l1 norm; ``p = 1``: max column l1 norm).  For piecewise-linear nets the Jacobian is
piecewise constant and its gradient vanishes, so the ascent runs on a *smooth surrogate* (ReLU ->
Softplus with a growing sharpness, LeakyReLU likewise) and the true Jacobian is evaluated at every
iterate.  A Jacobian is only reported at points whose ReLU/LeakyReLU/Hardtanh/ReLU6 inputs are all away
from the kinks (checked with forward hooks), i.e. where ``f`` is differentiable.  All evaluations use a
float64 copy of the model, and values are rounded down by a relative ``1e-9`` to absorb round-off.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lipkit.bounds import normalize_p

__all__ = ["LowerBound", "lower_bound", "jacobian_norm"]

_SAFETY = 1.0 - 1e-9
_KINK_TOL = 1e-7


@dataclass
class LowerBound:
    """``value <= Lip_p(f)``, attained at ``point`` (Jacobian) or by ``pair`` (difference quotient)."""

    value: float
    kind: str  # "jacobian" or "pair"
    point: torch.Tensor | None = None
    pair: tuple[torch.Tensor, torch.Tensor] | None = None
    details: dict = field(default_factory=dict)


def batched_opnorm(J: torch.Tensor, p: float) -> torch.Tensor:
    """Batched l_p -> l_p operator norms of matrices ``J`` (shape ... x m x n)."""
    if p == 2:
        return torch.linalg.matrix_norm(J, ord=2)
    if p == math.inf:
        return J.abs().sum(dim=-1).amax(dim=-1)
    return J.abs().sum(dim=-2).amax(dim=-1)


def _vec_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1), ord=p, dim=1)


class _SmoothReLU(nn.Module):
    """``slope_neg * z + (1 - slope_neg) * softplus(beta z) / beta``: a smooth stand-in for (leaky) ReLU."""

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.beta = 1.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return a * z + (1.0 - a) * nn.functional.softplus(self.beta * z) / self.beta


def _surrogate(model: nn.Module) -> tuple[nn.Module, list[_SmoothReLU]]:
    sur = copy.deepcopy(model)
    smooth: list[_SmoothReLU] = []

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                s = _SmoothReLU(0.0)
            elif isinstance(child, nn.LeakyReLU):
                s = _SmoothReLU(float(child.negative_slope))
            else:
                swap(child)
                continue
            smooth.append(s)
            setattr(parent, name, s)

    swap(sur)
    return sur, smooth


def _kink_margin_hooks(model: nn.Module, store: list[torch.Tensor]) -> list:
    """Hooks recording, per sample, the distance of kinked activations' inputs to their kinks."""
    hooks = []
    for m in model.modules():
        kinks: tuple[float, ...]
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            kinks = (0.0,)
        elif isinstance(m, nn.ReLU6):
            kinks = (0.0, 6.0)
        elif isinstance(m, nn.Hardtanh):
            kinks = (float(m.min_val), float(m.max_val))
        else:
            continue

        def hook(mod: nn.Module, args: tuple, kinks: tuple[float, ...] = kinks) -> None:
            z = args[0].detach()
            scale = z.abs().flatten(1).amax(dim=1).clamp_min(1.0)
            dist = torch.stack([(z - k).abs().flatten(1).amin(dim=1) for k in kinks]).amin(dim=0)
            store.append(dist / scale)

        hooks.append(m.register_forward_pre_hook(hook))
    return hooks


def _differentiable(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Boolean mask: samples whose kinked activations have no input within ``_KINK_TOL`` of a kink."""
    store: list[torch.Tensor] = []
    hooks = _kink_margin_hooks(model, store)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for d in store:
        ok &= d > _KINK_TOL
    return ok


def _jacobians(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Jacobians ``(B, out, in)`` of ``model`` at a batch ``x`` (flattened in/out)."""
    B = x.shape[0]
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    y = model(x).reshape(B, -1)
    rows = []
    for i in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        rows.append(g.reshape(B, -1))
    return torch.stack(rows, dim=1)


def jacobian_norm(model: nn.Module, x: torch.Tensor, p: float | int | str = 2) -> torch.Tensor:
    """``||J_f(x)||_p`` (l_p -> l_p operator norm) for each sample of the batch ``x``, in float64."""
    p = normalize_p(p)
    m64 = copy.deepcopy(model).double().eval()
    return batched_opnorm(_jacobians(m64, x.to(torch.float64)), p).detach()


def check_finite(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer holding NaN or inf."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"the model has NaN or infinite values in {name!r}")


def _infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    known = getattr(model, "input_shape", None)
    if known is not None:
        return tuple(known)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
    raise ValueError("cannot infer the input shape of this model; pass input_shape=(...) (without batch)")


def lower_bound(
    model: nn.Module,
    p: float | int | str = 2,
    *,
    input_shape: tuple[int, ...] | None = None,
    n_starts: int = 32,
    steps: int = 60,
    n_pairs: int = 512,
    scale: float | tuple[float, ...] | list[float] = 1.0,
    seed: int = 0,
    lr: float = 0.05,
    domain=None,
    hints: list[torch.Tensor] | None = None,
) -> LowerBound:
    """Best sound lower bound found by Jacobian ascent and random pairs (see module docstring).

    Args:
        model: any differentiable torch model (evaluated in eval mode, in float64, on a copy).
        p: 1, 2 or inf.
        input_shape: shape of one input without batch (inferred from a first ``nn.Linear``).
        n_starts, steps: number of ascent starts and steps.  n_pairs: random pairs sampled.
        scale: standard deviation of the random starting points; a sequence runs the search at each scale
            (``n_starts`` and ``n_pairs`` per scale) and keeps the best (deep nets with biases often have
            their largest slopes far from the origin).
        domain: a :class:`lipkit.estimation.local.Domain`: then every point and pair lies in the domain (a
            bound of the *local* constant).  Jacobians are only taken at interior points (the domain shrunk
            by ``1e-6``), where small steps in every direction stay in the domain.
        hints: extra candidate points (e.g. inputs realising the activation pattern LiPopt's relaxation
            found, :func:`lipkit.estimation.lipopt`); their true Jacobians are checked like every other point.
    """
    p = normalize_p(p)
    if n_starts < 1 or steps < 0 or n_pairs < 0:
        raise ValueError("n_starts must be >= 1, steps and n_pairs >= 0")
    if isinstance(scale, (tuple, list)):
        if not scale or domain is not None:
            raise ValueError("scale must be a number, or a non-empty sequence without a domain")
        results = [lower_bound(model, p, input_shape=input_shape, n_starts=n_starts, steps=steps,
                               n_pairs=n_pairs, scale=float(sc), seed=seed + k, lr=lr)
                   for k, sc in enumerate(scale)]
        best_sc = max(range(len(results)), key=lambda k: results[k].value)
        out = results[best_sc]
        out.details["scale"] = float(scale[best_sc])
        return out
    check_finite(model)
    if domain is not None:
        shape = tuple(domain.shape)
        half = (domain.hi - domain.lo) / 2
        scale = float(half.max()) if half.numel() else 0.0
        inner = domain.shrunk(1e-6)
        use_jac = bool((half > 0).all()) and scale > 0
    else:
        shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(model)
        inner, use_jac = None, True
    gen = torch.Generator().manual_seed(seed)
    m64 = copy.deepcopy(model).double().eval()
    for q in m64.parameters():
        q.requires_grad_(False)
    sur, smooth = _surrogate(m64)

    best = LowerBound(0.0, "none")

    def consider_points(x: torch.Tensor) -> None:
        nonlocal best
        if not use_jac:
            return
        x = x.detach()
        ok = _differentiable(m64, x)
        if not ok.any():
            return
        xs = x[ok]
        vals = batched_opnorm(_jacobians(m64, xs), p).detach()
        i = int(vals.argmax())
        v = float(vals[i]) * _SAFETY
        if v > best.value:
            best = LowerBound(v, "jacobian", point=xs[i].clone())

    # gradient ascent on the surrogate, checking the true Jacobian at each iterate
    if inner is not None:
        x = inner.sample(n_starts, gen).requires_grad_(True)
    else:
        x = (scale * torch.randn((n_starts, *shape), generator=gen, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * max(scale, 1e-12))
    if hints and inner is None:
        consider_points(torch.stack([h.detach().double().reshape(shape) for h in hints]))
    consider_points(x)
    for t in range(steps if use_jac else 0):
        for s in smooth:
            s.beta = 2.0 * (200.0 ** (t / max(steps - 1, 1)))
        obj = batched_opnorm(_jacobians(sur, x, create_graph=True), p).sum()
        if not obj.requires_grad:  # piecewise-linear layers without a smooth surrogate (e.g. GroupSort)
            with torch.no_grad():  # the Jacobian norm is piecewise constant: random restarts instead
                fresh = inner.sample(n_starts, gen) if inner is not None else scale * torch.randn(
                    (n_starts, *shape), generator=gen, dtype=torch.float64)
                x.copy_(fresh)
            consider_points(x)
            continue
        opt.zero_grad()
        (-obj).backward()
        opt.step()
        if inner is not None:
            with torch.no_grad():
                x.copy_(inner.project(x))
        consider_points(x)
    # small random perturbations of the best point (neighbouring linear regions)
    if best.point is not None:
        pert = best.point + 0.05 * scale * torch.randn((n_starts, *shape), generator=gen, dtype=torch.float64)
        consider_points(pert if inner is None else inner.project(pert))

    # random pairs, near (local) and far (global)
    if n_pairs > 0:
        radii = scale * torch.logspace(-3, 0, n_pairs, dtype=torch.float64).reshape(-1, *([1] * len(shape)))
        if domain is not None:
            a = domain.sample(n_pairs, gen)
            b = domain.project(a + radii * torch.randn((n_pairs, *shape), generator=gen, dtype=torch.float64))
            keep = (a - b).flatten(1).abs().amax(dim=1) > 0
            a, b = a[keep], b[keep]
        else:
            a = scale * torch.randn((n_pairs, *shape), generator=gen, dtype=torch.float64)
            b = a + radii * torch.randn((n_pairs, *shape), generator=gen, dtype=torch.float64)
    if n_pairs > 0 and a.shape[0] > 0:
        with torch.no_grad():
            num = _vec_norm(m64(a) - m64(b), p)
            den = _vec_norm(a - b, p)
        ratio = num / den
        i = int(ratio.argmax())
        v = float(ratio[i]) * (1.0 - 1e-6)  # pair quotients: round-off relative to the distance
        if v > best.value:
            best = LowerBound(v, "pair", pair=(a[i].clone(), b[i].clone()))
    best.details = {"n_starts": n_starts, "steps": steps, "n_pairs": n_pairs, "seed": seed}
    return best
