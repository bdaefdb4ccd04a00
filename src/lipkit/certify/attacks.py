"""Projected gradient descent (l2 and l_inf) to check certificates empirically.

PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)
with a random start and the margin loss of Carlini & Wagner ("Towards Evaluating the Robustness
of Neural Networks", S&P 2017).  A certificate is a theorem; :func:`check_certificates` is the
experiment that could refute it: it attacks every correctly certified point just inside its
certified radius (no attack may succeed there) and, as a control, the same points at a multiple
of their radius (the attack should succeed on some, which shows it is a real attack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lipkit.bounds import normalize_p
from lipkit.certify.margin import compute_certificates
from lipkit.losses import top2_margin

__all__ = ["pgd", "margin_loss", "check_certificates", "CertificateCheck"]


def margin_loss(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample CW margin.  Untargeted: ``f_y - max_{j != y} f_j`` (the attack succeeds when it
    is < 0).  Targeted (``y`` = target): ``max_{j != y} f_j - f_y`` (succeeds when < 0).  Both are
    :func:`lipkit.losses.top2_margin` (negated when targeted)."""
    margin = top2_margin(logits, y)
    return -margin if targeted else margin


def _per_sample(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(x.shape[0])
    if e.shape != (x.shape[0],):
        raise ValueError(f"eps must be a number or a tensor of shape ({x.shape[0]},), got {tuple(e.shape)}")
    if not torch.isfinite(e).all() or (e < 0).any():
        raise ValueError("eps must be finite and >= 0")
    return e.view(-1, *([1] * (x.dim() - 1)))


def _norm(d: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(d.flatten(1), ord=p, dim=1).view(-1, *([1] * (d.dim() - 1)))


def _project(delta: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
    if p == math.inf:
        return torch.maximum(torch.minimum(delta, eps), -eps)
    n = _norm(delta, p)
    factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
    return delta * factor


def _random_start(x: torch.Tensor, eps: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
    if p == math.inf:
        u = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    d = d / _norm(d, 2).clamp_min(1e-30)
    dim = x[0].numel()
    r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, dtype=x.dtype, device=x.device)
    return d * eps * r ** (1.0 / dim)


def _into_ball(x: torch.Tensor, xa: torch.Tensor, eps: torch.Tensor, p: float,
               clamp: tuple[float, float] | None) -> torch.Tensor:
    """Return a point of ``x``'s dtype with ``||xa - x||_p <= eps`` *exactly* (checked in float64,
    where float32 values are exact) and inside the clamp box: the rounding of ``x + delta`` can
    otherwise step outside the ball, which matters for radii near the float32 spacing of ``x``."""
    x64, e64 = x.double(), eps.double()
    if clamp is not None:
        xa = xa.clamp(clamp[0], clamp[1])
    if p == math.inf:
        lo, hi = (x64 - e64).to(x.dtype), (x64 + e64).to(x.dtype)
        lo = torch.where(lo.double() < x64 - e64, torch.nextafter(lo, x), lo)
        hi = torch.where(hi.double() > x64 + e64, torch.nextafter(hi, x), hi)
        return torch.minimum(torch.maximum(xa, lo), hi)
    for k in range(6):
        d = _norm(xa.double() - x64, p)
        over = d > e64
        if not over.any():
            return xa
        shrink = (e64 / d.clamp_min(1e-300)) * (1.0 - 2.0 ** (-20 + 3 * k))
        moved = (x64 + (xa.double() - x64) * shrink).to(x.dtype)
        if clamp is not None:
            moved = moved.clamp(clamp[0], clamp[1])
        xa = torch.where(over, moved, xa)
    return torch.where(_norm(xa.double() - x64, p) > e64, x, xa)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
        p: float | int | str = 2, *, steps: int = 50, step_size: float | None = None, restarts: int = 1,
        clamp: tuple[float, float] | None = (0.0, 1.0), targeted: bool = False,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the margin loss inside the l_p ball of radius ``eps``.

    Args:
        model: classifier returning logits ``(B, C)`` (evaluated as it is; call ``eval()``).
        x: inputs ``(B, ...)``; ``y``: labels ``(B,)`` (targets if ``targeted``).
        eps: radius, a number or one per sample ``(B,)``.
        p: 2 or inf.
        steps: gradient steps per restart; ``step_size``: relative to ``eps`` if None
            (``2.5 eps / steps``, Madry et al.), otherwise absolute.
        restarts: independent random starts; the best point (lowest margin) is kept.
        clamp: box of valid inputs (``x`` must lie inside), or None.
    Returns:
        adversarial inputs with ``||x_adv - x||_p <= eps`` exactly (float64 check of the
        float32 points; inside ``clamp``), the best found per sample (lowest margin); ``x``
        itself where no step lowered the margin.
    """
    p = normalize_p(p)
    if p not in (2.0, math.inf):
        raise ValueError(f"pgd supports p=2 and p=inf, got p={p}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},)")
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be >= 1")
    if clamp is not None:
        lo, hi = float(clamp[0]), float(clamp[1])
        clamp = (lo, hi)
        if (x < lo).any() or (x > hi).any():
            raise ValueError(f"x lies outside the clamp box [{lo}, {hi}]; pass clamp=None")
    x = x.detach()
    e = _per_sample(eps, x)
    alpha = e * (2.5 / steps) if step_size is None else torch.full_like(e, float(step_size))

    with torch.no_grad():
        best_x = x.clone()
        best = margin_loss(model(x), y, targeted)
    for _ in range(restarts):
        delta = _random_start(x, e, p, generator)
        for _ in range(steps + 1):
            xa = _into_ball(x, x + delta, e, p, clamp)
            xa = xa.detach().requires_grad_(True)
            loss = margin_loss(model(xa), y, targeted)
            with torch.no_grad():
                better = loss < best
                best = torch.where(better, loss, best)
                best_x[better] = xa[better]
            grad, = torch.autograd.grad(loss.sum(), xa)
            with torch.no_grad():
                if p == math.inf:
                    step = grad.sign()
                else:
                    step = grad / _norm(grad, 2).clamp_min(1e-30)
                delta = _project(xa - alpha * step - x, e, p)
    return best_x.detach()


@dataclass
class CertificateCheck:
    """Outcome of :func:`check_certificates`.

    Attributes:
        n_certified: correctly classified points with a positive certified radius (attacked).
        n_broken: of these, points whose prediction PGD changed at ``factor * radius`` (must be 0).
        n_baseline_broken: points PGD broke at ``baseline_factor * radius`` (beyond the certificate).
        baseline_success: ``n_baseline_broken / n_certified`` (0 if nothing was certified).
        max_violation: the largest ``||x_adv - x||_p / radius`` over all attacks at ``factor``
            (sanity: <= factor).
    """

    n_certified: int
    n_broken: int
    n_baseline_broken: int
    baseline_success: float
    max_violation: float


def check_certificates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float | int | str = 2,
                       radii: torch.Tensor | None = None, *, factor: float = 0.999,
                       baseline_factor: float = 3.0, steps: int = 100, restarts: int = 2,
                       clamp: tuple[float, float] | None = None,
                       generator: torch.Generator | None = None) -> CertificateCheck:
    """Attack each correctly certified point at ``factor * radius`` and count broken certificates.

    ``radii`` defaults to ``compute_certificates(model, x, p).radius``.  A point is broken when the model's
    prediction at the adversarial input differs from ``y``.  The same points are also attacked
    at ``baseline_factor * radius`` to show the attack is strong enough to find adversarial
    examples where none is ruled out.
    """
    p = normalize_p(p)
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(x).argmax(dim=1)
        if radii is None:
            radii = compute_certificates(model, x, p).radius
        radii = torch.as_tensor(radii, dtype=torch.float64, device=x.device)
        if radii.shape != (x.shape[0],):
            raise ValueError(f"radii must have shape ({x.shape[0]},), got {tuple(radii.shape)}")
        keep = (pred == y) & (radii > 0)
        n = int(keep.sum())
        if n == 0:
            return CertificateCheck(0, 0, 0, 0.0, 0.0)
        xs, ys, rs = x[keep], y[keep], radii[keep]
        # round the attack radius down to x's dtype so it never exceeds factor * r
        r_in = (rs * factor).to(x.dtype)
        r_in = torch.where(r_in.double() > rs * factor, torch.nextafter(r_in, torch.zeros_like(r_in)), r_in)
        adv = pgd(model, xs, ys, r_in, p, steps=steps, restarts=restarts, clamp=clamp, generator=generator)
        dist = torch.linalg.vector_norm((adv.double() - xs.double()).flatten(1), ord=p, dim=1)
        with torch.no_grad():
            broken = int((model(adv).argmax(dim=1) != ys).sum())
        adv_b = pgd(model, xs, ys, (rs * baseline_factor).to(x.dtype), p, steps=steps, restarts=restarts,
                    clamp=clamp, generator=generator)
        with torch.no_grad():
            broken_b = int((model(adv_b).argmax(dim=1) != ys).sum())
    finally:
        model.train(was_training)
    return CertificateCheck(n_certified=n, n_broken=broken, n_baseline_broken=broken_b,
                            baseline_success=broken_b / n, max_violation=float((dist / rs).max()))
