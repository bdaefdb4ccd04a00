"""Export a lipkit model to plain torch modules, with outputs and bounds checked.

``export(model)`` deep-copies the model, materialises every constrained weight *once* (the value
the forward pass uses now) and returns plain ``nn.Linear`` / ``nn.Conv2d`` / ... modules with no
parametrisation left, so inference costs what an unconstrained network costs.  A ``LinearSpline``
becomes a :class:`lipkit.nn.spline.FrozenLinearSpline` (its knots and values, no parameters) with its own
bound rule, ``max |slope|``: written in plain torch as a sum of ReLUs, ``sigma(x) = a + s_0 x +
sum_k (s_k - s_(k-1)) relu(x - t_k)``, the same function would only get the bound ``|s_0| + sum_k |s_k -
s_(k-1)|`` from the registry, which is far larger for a trained spline.  It then checks:

* weights: materialised in eval mode (the weights the deployed model computes with; a spectral
  ``LipConv2d`` in training mode would step its power iteration while being read);
* outputs: on ``example_input`` the exported model agrees with the original (max abs difference
  <= ``atol * max(1, max |output|)``, default atol 1e-6: float32 matmuls may sum in another order),
  both in eval mode;
* bound: :func:`lipkit.lipschitz_bound` of the exported weights does not exceed the original's by
  more than float round-off (relative 1e-6).  The exported bound is attached as
  ``exported.lipschitz_bounds = {p: L}`` and is what a certificate of the exported model must use;
* module hooks (duck-typed, so this module imports no pillar that defines them): a module of the copy
  with a method ``lipkit_export_prepare()`` is prepared before its layers are made plain (a
  :class:`lipkit.MonotonicNetwork` freezes its slope ``lam`` there), and one with
  ``lipkit_export_check(example_input)`` re-checks its own guarantee on the exported model (a
  ``MonotonicNetwork`` runs :func:`lipkit.check_monotonic` on the example and on sampled points with
  extreme values, and checks ``lam`` against the exported body's bound); a ``ValueError`` it raises
  becomes an :class:`ExportError`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import UnsupportedModuleError, computes_as, lipschitz_bound, normalize_p
from lipkit.nn.linear import LipLinear
from lipkit.nn.parametrize.utils import materialize_in_place
from lipkit.nn.spline import LinearSpline

__all__ = ["export", "ExportError"]


class ExportError(RuntimeError):
    """The exported model disagrees with the original (outputs or bound) or fails a module's own check."""


def _plain_linear(m: nn.Linear) -> nn.Linear:
    out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                    device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(m.weight)
        if m.bias is not None:
            out.bias.copy_(m.bias)
    return out


def _plain_conv(m: nn.Conv2d) -> nn.Conv2d:
    w = m.weight
    out = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                    dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                    padding_mode=m.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if m.bias is not None:
            out.bias.copy_(m.bias)
    return out


def _convert(m: nn.Module) -> nn.Module | None:
    """A plain replacement for ``m`` or ``None`` to keep it (after recursing into its children)."""
    linear = computes_as(m, (nn.Linear,), subclasses=True) or computes_as(m, (LipLinear,))
    if linear and (type(m) is not nn.Linear or parametrize.is_parametrized(m)):
        with torch.no_grad():
            return _plain_linear(m)
    conv = computes_as(m, (nn.Conv2d,), subclasses=True)
    if conv and (type(m) is not nn.Conv2d or parametrize.is_parametrized(m)):
        with torch.no_grad():
            return _plain_conv(m)
    if computes_as(m, (LinearSpline,)):  # exact: the same knots and values, frozen
        return m.freeze()
    if parametrize.is_parametrized(m):
        materialize_in_place(m)
    return None


def _replace_all(root: nn.Module) -> nn.Module:
    top = _convert(root)
    if top is not None:
        return top
    for name, child in list(root.named_children()):
        if name == "parametrizations":
            continue
        setattr(root, name, _replace_all(child))
    return root


def export(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    p: float | str | tuple = 2,
    atol: float = 1e-6,
    check_bound: bool = True,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Deep copy of ``model`` as plain torch modules (no parametrisation), checked.

    Args:
        model: any module; ``nn.Linear``/``nn.Conv2d`` (parametrised, ``LipLinear``, ``LipConv2d``, or a
            subclass that overrides nothing of the computation) become plain ``nn.Linear``/``nn.Conv2d``
            holding the materialised weight; a ``LinearSpline`` becomes a ``FrozenLinearSpline``; other
            parametrisations are removed in place on the copy, and
            any other module (a subclass with its own ``forward``, say) is kept as it is.
        example_input: a probe batch; if given, ``max |export(x) - model(x)| <= atol * max(1,
            max |model(x)|)`` is enforced.
        p: norm(s) for the bound re-check (2, ``"inf"`` or a tuple of them).
        check_bound: re-check ``lipschitz_bound`` on the exported weights (skipped for a norm the
            original has no rule for).
        input_shape: one input's shape (no batch): both bounds are then ``lipschitz_bound(...,
            input_shape=input_shape)``, valid for inputs of that shape only (convolutions get the exact
            size's bound, tighter and faster than the size-free one).  Default: bounds for every input size.

    Returns:
        the exported module, in the original's train/eval mode, with ``lipschitz_bounds``
        ``{p: L}`` attached (bounds of the exported weights).

    Raises:
        ExportError: outputs differ by more than ``atol`` or the exported bound exceeds the
            original's by more than relative 1e-6.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export expects a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    was_training = model.training
    with torch.no_grad():
        exported = copy.deepcopy(model)
        for sub in exported.modules():
            prepare = getattr(sub, "lipkit_export_prepare", None)
            if callable(prepare):
                prepare()
        # the deployed weights are the eval-mode ones (a spectral LipConv2d's power iteration steps its
        # vector in training mode): materialise them so
        exported.eval()
        exported = _replace_all(exported)
    for sub in exported.modules():
        if parametrize.is_parametrized(sub):
            raise ExportError(f"a parametrisation is left on {type(sub).__name__} after export")
    exported.train(was_training)

    if example_input is not None:
        model.eval()
        exported.eval()
        try:
            with torch.no_grad():
                ref = model(example_input)
                got = exported(example_input)
        finally:
            model.train(was_training)
            exported.train(was_training)
        if ref.shape != got.shape:
            raise ExportError(f"exported output shape {tuple(got.shape)} != original {tuple(ref.shape)}")
        diff = (ref - got).abs().max().item() if ref.numel() else 0.0
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        if not diff <= atol * scale:
            raise ExportError(f"exported model differs from the original by {diff:.3g} > "
                              f"atol * max(1, max|output|) = {atol * scale:.3g}")

    bounds: dict[float, float] = {}
    if check_bound:
        ps = p if isinstance(p, (tuple, list)) else (p,)
        for q in ps:
            q = normalize_p(q)
            model.eval()  # the bound of the deployed (eval-mode) weights, as exported
            try:
                orig = lipschitz_bound(model, q, input_shape=input_shape)
            except UnsupportedModuleError:
                continue
            finally:
                model.train(was_training)
            new = lipschitz_bound(exported, q, input_shape=input_shape)
            if not (new <= orig * (1.0 + 1e-6) or (math.isinf(orig) and math.isinf(new))):
                raise ExportError(f"exported l{q:g} bound {new!r} exceeds the original's {orig!r}")
            bounds[q] = new
    exported.lipschitz_bounds = bounds

    for sub in exported.modules():
        check = getattr(sub, "lipkit_export_check", None)
        if callable(check):
            was = sub.training
            try:
                check(example_input)
            except ValueError as exc:
                raise ExportError(f"{type(sub).__name__} failed its check after export: {exc}") from exc
            finally:
                sub.train(was)
    return exported
