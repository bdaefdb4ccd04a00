"""The model side of DP training: the input projection to an l2 ball, and constraints kept by projection.

**Input projection.**  :class:`L2BallProjection` maps each example ``x`` to ``x min(1, R / ||x||_2)``, the
Euclidean projection onto the ball of radius ``R`` (a projection onto a convex set is 1-Lipschitz in l2).
:func:`lipkit.dp.make_private` puts it in front of the network, so training, certification and deployment
see the same inputs and the sensitivity analysis may assume ``||x||_2 <= R``.

**Constraints.**  A parametrised weight ``W = P(V)`` is trained through its raw tensor ``V``; the gradient the
optimiser receives is ``J_P(V)^T dl/dW``, and for maps such as ``W = V / sigma(V)`` that Jacobian is not
1-Lipschitz, so a bound of ``||dl/dW||`` says nothing about ``||dl/dV||``.  In DP mode lipkit therefore
trains the deployed weight itself (:func:`materialize_constraints` turns it into a plain parameter) and,
after every optimiser step, maps it back into the constraint set with :func:`project_constraints`.  The map
reads only the released (noisy) weights, so it is post-processing and costs no privacy; the sensitivity of
the next step is read from the weights the forward pass really uses, whatever the map did.

==============================  ================================================================
constraint                      map applied after each step
==============================  ================================================================
LipLinear "orthogonal" (any     ``lip * polar(W)`` (one warm-started Newton-Schulz step in float32 that
method, incl. Cayley)           also certifies the norm of what it writes, :mod:`lipkit.dp.retraction`;
                                the polar factor in float64 on restart)
LipLinear "spectral"            ``W min(1, lip / s)``, ``s >= ||W||_2`` a guaranteed bound (Gram
                                iteration, :func:`lipkit.bounds.gram_spectral_bound`)
LipLinear "aol"                 columns ``W_j min(1, lip d_j)``, ``d_j = (sum_i |W^T W|_ij)^{-1/2}``
                                (``||W diag(min(1, lip d))||_2 <= lip`` by the AOL Gershgorin argument;
                                the identity on weights that already satisfy it column-wise)
LipLinear "inf", "one",         :class:`lipkit.nn.parametrize.OperatorNorm` (rows/columns outside the
"one-inf", "two-inf"            ball shrunk, the identity inside)
LipConv2d "aol"                 input channels ``K_j min(1, lip d_j)`` with the conv AOL ``d_j``
LipConv2d "spectral"            ``K min(1, lip / L)``, ``L`` = ``lipschitz_bound`` of the conv
LipConv2d "orthogonal"          ``lip * polar(reshape(K))`` (block-orthogonal, stride == kernel)
==============================  ================================================================

Any other parametrised tensor is refused by :func:`lipkit.dp.validate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import gram_spectral_bound, lipschitz_bound, register_bound, round_up
from lipkit.bounds.registry import UnsupportedModuleError
from lipkit.dp.retraction import certified_newton_schulz, certify
from lipkit.nn import LipConv2d, LipLinear
from lipkit.nn.parametrize import OperatorNorm, Orthogonal
from lipkit.nn.parametrize.utils import materialize_in_place

__all__ = ["L2BallProjection", "constraint_maps", "materialize_constraints", "project_constraints",
           "PROJECTIONS"]


class L2BallProjection(nn.Module):
    """``x -> x min(1, R / ||x||_2)`` per example (all dimensions but the batch one).

    1-Lipschitz in l2 (Euclidean projection onto a convex set); its output has norm at most ``R``.

    Args:
        radius: ``R > 0``.
    """

    def __init__(self, radius: float) -> None:
        super().__init__()
        if (
            isinstance(radius, bool)
            or not isinstance(radius, (int, float))
            or not math.isfinite(radius)
            or radius <= 0
        ):
            raise ValueError(f"input_radius must be a finite number > 0, got {radius!r}")
        self.radius = float(radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
            raise ValueError(
                f"L2BallProjection expects a floating (batch, ...) tensor, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if x.shape[0] == 0:
            return x
        norms = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
        # the float32 product can exceed R by one rounding: the scale is shrunk by 2^-20 to stay inside
        scale = torch.clamp(self.radius * (1.0 - 2.0**-20) / norms.clamp_min(1e-30), max=1.0)
        return x * scale.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"


@register_bound(L2BallProjection)
def _projection_bound(module: L2BallProjection, p: float, shapes: dict) -> float:
    if p != 2:
        raise UnsupportedModuleError(
            "L2BallProjection is 1-Lipschitz in l2 only (the projection onto an l2 "
            "ball is not non-expansive in l1 / l_inf)"
        )
    return 1.0


def _orthogonal_map(lip: float, certify_norm: bool = False) -> Callable[[nn.Module], None]:
    """``lip * polar(W)`` by one warm-started Newton-Schulz step (the polar factor in float64 on restart).

    ``certify_norm`` (LipLinear in DP mode): the step is :func:`lipkit.dp.retraction.certified_newton_schulz`
    (float32 products), whose guaranteed bound of the written weight's norm is recorded for the next
    sensitivity computation; otherwise the retraction of :class:`lipkit.nn.parametrize.Orthogonal`
    (bfloat16 products where the CPU has them), which certifies nothing.
    """
    retraction = Orthogonal(method="retraction", lip=1.0).train()

    def project(module: nn.Module) -> None:
        w = module.weight
        flat = w.detach().reshape(w.shape[0], -1)
        x = flat / lip if lip != 1.0 else flat
        if certify_norm:
            out = certified_newton_schulz(x)
            if out is not None:
                q, bound = out
                if lip != 1.0:  # fl(lip q): a relative rounding of each entry, at most u lip ||q||_F
                    q_fro = float(torch.linalg.vector_norm(q.to(torch.float64)))
                    bound = round_up(lip * (bound + 2.0**-24 * q_fro), 3)
                    q = q * lip
                w.copy_(q.reshape(w.shape))
                certify(module, w, bound)
                return
        q = retraction(x.clone())  # warm-started Newton-Schulz, polar factor on restart
        w.copy_((q * lip).reshape(w.shape))

    return project


def _spectral_linear(module: LipLinear) -> None:
    s = float(gram_spectral_bound(module.weight.detach()).item())
    if s > module.lip:
        module.weight.mul_(module.lip / s)


def _aol_scale(d: torch.Tensor, lip: float) -> torch.Tensor:
    return torch.clamp(d * lip, max=1.0)


def _aol_linear(module: LipLinear) -> None:
    w = module.weight.detach().double()
    d = torch.rsqrt((w.T @ w).abs().sum(dim=0).clamp_min(1e-300))
    module.weight.mul_(_aol_scale(d, module.lip).to(module.weight.dtype)[None, :])


def _aol_conv(module: LipConv2d) -> None:
    w = module.weight.detach().double()
    kh, kw = w.shape[-2:]
    wt = w.transpose(0, 1)
    s = F.conv2d(wt, wt, padding=(kh - 1, kw - 1)).abs().sum(dim=(1, 2, 3))
    d = torch.rsqrt(s.clamp_min(1e-300))
    module.weight.mul_(_aol_scale(d, module.lip).to(module.weight.dtype)[None, :, None, None])


def _opnorm_map(kind: str, lip: float) -> Callable[[nn.Module], None]:
    norm = OperatorNorm(kind, lip=lip)

    def project(module: nn.Module) -> None:
        module.weight.copy_(norm(module.weight.detach()))

    return project


def _spectral_conv(shapes: dict) -> Callable[[nn.Module], None]:
    def project(module: nn.Module) -> None:
        bound = lipschitz_bound(module, 2, _shapes=shapes)
        if bound > module.lip:
            module.weight.mul_(module.lip / bound)

    return project


#: (class, constraint) -> the map's description, for the docs and the validator's messages
PROJECTIONS = {
    ("LipLinear", "orthogonal"): "lip * polar(W)",
    ("LipLinear", "spectral"): "W min(1, lip / gram_spectral_bound(W))",
    ("LipLinear", "aol"): "columns scaled by min(1, lip d_j) (AOL)",
    ("LipLinear", "inf"): "OperatorNorm('inf')",
    ("LipLinear", "one"): "OperatorNorm('one')",
    ("LipLinear", "one-inf"): "OperatorNorm('one-inf')",
    ("LipLinear", "two-inf"): "OperatorNorm('two-inf')",
    ("LipConv2d", "aol"): "input channels scaled by min(1, lip d_j) (conv AOL)",
    ("LipConv2d", "spectral"): "K min(1, lip / lipschitz_bound(conv))",
    ("LipConv2d", "orthogonal"): "lip * polar(reshape(K))",
}


def _map_for(module: nn.Module, shapes: dict, certify_norm: bool = True) -> Callable[[nn.Module], None]:
    if isinstance(module, LipLinear):
        c = module.constraint
        if c == "orthogonal":
            return _orthogonal_map(module.lip, certify_norm)
        if c == "spectral":
            return _spectral_linear
        if c == "aol":
            return _aol_linear
        return _opnorm_map(c, module.lip)
    c = module.constraint
    if c == "aol":
        return _aol_conv
    if c == "spectral":
        return _spectral_conv(shapes)
    return _orthogonal_map(module.lip)


def materialize_constraints(
    model: nn.Module, shapes: dict | None = None, certify_norm: bool = True
) -> tuple[list[tuple[nn.Module, Callable[[nn.Module], None]]], dict]:
    """Turn every parametrised LipLinear / LipConv2d weight of ``model`` into a plain parameter (in place).

    The parameter holds the current deployed weight, which is then mapped into the constraint set once.
    Returns the list of ``(module, map)`` to apply after every step, and ``{old parameter: new parameter}``
    (to swap them in an optimiser built before).  Other parametrised modules are left alone (the validator
    refuses them).  ``certify_norm``: orthogonal LipLinear maps record a certified bound of the weight they
    write (:mod:`lipkit.dp.retraction`), which the sensitivity analysis reads instead of recomputing it.
    """
    shapes = {} if shapes is None else shapes
    projections: list[tuple[nn.Module, Callable[[nn.Module], None]]] = []
    swapped: dict[torch.Tensor, torch.Tensor] = {}
    for module in model.modules():
        if not isinstance(module, (LipLinear, LipConv2d)):
            continue
        if parametrize.is_parametrized(module, "weight"):
            if list(module.parametrizations.keys()) != ["weight"]:
                continue  # other tensors parametrised: the validator refuses
            old = module.parametrizations.weight.original
            was_training = module.training
            module.eval()  # the converged eval-mode weight (polar factor, refined sigma)
            materialize_in_place(module, requires_grad=old.requires_grad)
            module.train(was_training)
            swapped[old] = module.weight
        projections.append((module, _map_for(module, shapes, certify_norm)))
    project_constraints(projections)
    return projections, swapped


def constraint_maps(model: nn.Module, shapes: dict | None = None, certify_norm: bool = True
                    ) -> list[tuple[nn.Module, Callable[[nn.Module], None]]]:
    """The maps of the (already materialised) LipLinear / LipConv2d layers of ``model``, not applied
    (``certify_norm``: see :func:`materialize_constraints`)."""
    shapes = {} if shapes is None else shapes
    return [(m, _map_for(m, shapes, certify_norm)) for m in model.modules()
            if isinstance(m, (LipLinear, LipConv2d)) and not parametrize.is_parametrized(m)]


@torch.no_grad()
def project_constraints(projections: list[tuple[nn.Module, Callable[[nn.Module], None]]]) -> None:
    """Apply each module's map (post-processing of the released weights)."""
    for module, project in projections:
        project(module)
