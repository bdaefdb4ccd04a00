"""The per-example gradient sensitivity facet: how large one example's gradient can be, tensor by tensor.

For a layer ``y = f_theta(x)`` inside a network trained on a per-example loss ``l``, the gradient of
``l`` with respect to one tensor ``T`` of the layer is ``dl/dT = (dy/dT)^T g`` with ``g = dl/dy``.  Given
bounds ``||x||_2 <= R`` (the layer's input) and ``||g||_2 <= G`` (the gradient reaching its output), a
rule returns, for each tensor the forward pass uses, a sound bound of ``||dl/dT||_F``.  Differential
privacy without clipping (Bethune et al., "DP-SGD without clipping: the Lipschitz neural network way",
ICLR 2024) calibrates its noise to these bounds; ``R`` and ``G`` come from :func:`lipschitz_bound` of the
layers before and after the layer.

Rules (the tensors are the ones the forward pass uses, e.g. a parametrised layer's effective ``weight``,
not ``parametrizations.weight.original``):

* ``nn.Linear``: ``dl/dW = g x^T`` has Frobenius norm ``||g|| ||x|| <= G R`` (attained by any pair);
  ``dl/db = g``: ``G``.
* ``nn.Conv1d`` / ``nn.Conv2d`` (zero padding): ``dl/dW[o] = sum_pos g[o, pos] x_pos`` with ``x_pos`` the
  (zero-padded) patch read at output position ``pos``.  Writing ``X`` for the matrix of patches,
  ``||dl/dW||_F = ||G^T X||_F <= ||g||_2 ||X||_2 <= ||g||_2 ||X||_F`` and ``||X||_F^2 = sum_pos ||x_pos||^2
  <= m ||x||^2`` where ``m`` is the largest number of patches that read one input entry (computed
  exactly from the stride, dilation, padding and, when known, the input size; at most
  ``prod_j ceil(k_j / s_j)`` without dilation).  Bound: ``sqrt(m) G R``; exact for non-overlapping
  patches (``m = 1``).  ``dl/db[o] = sum_pos g[o, pos]``: ``sqrt(P) G`` with ``P`` output positions
  (Cauchy-Schwarz; attained by a constant ``g``), so the bias needs the input size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lipkit.bounds.conv import conv_paddings
from lipkit.bounds.numerics import round_up
from lipkit.bounds.registry import Facet, UnsupportedModuleError, record_input_shapes
from lipkit.bounds.windows import max_window_cover

__all__ = ["SENSITIVITY", "parameter_sensitivity", "register_sensitivity"]

#: rules ``rule(module, input_norm, grad_norm, shapes) -> {tensor name: bound of ||dl/dT||_F}``
SENSITIVITY = Facet("gradient-sensitivity", "register one with lipkit.register_sensitivity(YourModule)",
                    gradients=True)


def register_sensitivity(*types: type, subclasses: bool = False, replace: bool = False) -> Callable:
    """Register ``rule(module, input_norm, grad_norm, shapes) -> dict[str, float]`` for ``types``."""
    return SENSITIVITY.register(*types, subclasses=subclasses, replace=replace)


def parameter_sensitivity(module: nn.Module, input_norm: float, grad_norm: float, *,
                          input_shape: tuple[int, ...] | None = None,
                          _shapes: dict | None = None) -> dict[str, float]:
    """Bounds of one example's gradient norm ``||dl/dT||_F`` for each tensor ``T`` of ``module``.

    Args:
        module: one layer (a registered type; containers are composed by the DP code, not here).
        input_norm: ``R >= ||x||_2`` for the layer's input ``x`` (one example).
        grad_norm: ``G >= ||dl/dy||_2`` for the gradient at the layer's output (one example).
        input_shape: one input's shape (no batch); needed by rules whose bound depends on the size
            (a convolution's bias).

    Returns:
        ``{name: bound}`` for every tensor the forward uses (``"weight"``, ``"bias"``, ...), as named on
        the module (a parametrised weight is named ``"weight"``: the bound is for the effective weight).
    """
    for name, value in (("input_norm", input_norm), ("grad_norm", grad_norm)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                or math.isnan(value):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"parameter_sensitivity expects a torch.nn.Module, got {type(module).__name__}")
    if _shapes is None:
        _shapes = record_input_shapes(module, tuple(input_shape)) if input_shape is not None else {}
    rule, module = SENSITIVITY.resolve(module)
    return {k: float(v) for k, v in rule.fn(module, float(input_norm), float(grad_norm), _shapes).items()}


def _linear_sensitivity(module: nn.Linear, r: float, g: float, shapes: dict) -> dict[str, float]:
    out = {"weight": round_up(r * g)}
    if module.bias is not None:
        out["bias"] = g
    return out


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_sensitivity(nn.Linear, subclasses=True)(_linear_sensitivity)


def _conv_sensitivity(module: nn.Module, r: float, g: float, shapes: dict) -> dict[str, float]:
    if module.padding_mode != "zeros":
        raise UnsupportedModuleError(
            f"{type(module).__name__} with padding_mode={module.padding_mode!r}: padding copies input "
            "entries; only zero padding has a sensitivity rule"
        )
    pad = tuple(left for left, _ in conv_paddings(module))
    shape = shapes.get(module)
    size = out_size = None
    if shape is not None:
        size = tuple(shape[2:])
        with torch.no_grad():  # the output size as the forward makes it (asymmetric "same" padding)
            probe = module._conv_forward(torch.zeros((1, *shape[1:]), dtype=module.weight.dtype,
                                                     device=module.weight.device), module.weight, None)
        out_size = tuple(probe.shape[2:])
    cover = max_window_cover(module.kernel_size, module.stride, module.dilation, pad, size, out_size=out_size)
    out = {"weight": round_up(math.sqrt(cover) * r * g, 4)}
    if module.bias is not None:
        if out_size is None:
            raise UnsupportedModuleError(
                f"{type(module).__name__}: the bias sensitivity grows with the number of output positions; "
                "pass input_shape"
            )
        positions = math.prod(out_size)
        out["bias"] = round_up(math.sqrt(positions) * g, 4)
    return out


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_sensitivity(nn.Conv1d, nn.Conv2d, subclasses=True)(_conv_sensitivity)
