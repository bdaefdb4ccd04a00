"""Lipschitz rules for the layers of ``torch.nn`` (convolutions: :mod:`lipkit.bounds.conv`).

Scalar activations: the constant is ``sup |f'|`` (or 1 for the piecewise-linear ones), valid for every
norm since the map acts coordinate by coordinate.  Containers compose: ``nn.Sequential`` multiplies
(:func:`lipkit.bounds.registry.chain_bound`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds.numerics import as_float64, norm_order, operator_norm, round_up
from lipkit.bounds.registry import (
    UnsupportedModuleError,
    chain_bound,
    register_bound,
)

__all__: list[str] = []


def _one(module: nn.Module, p: float, shapes: dict, q: float | None = None) -> float:
    q = p if q is None else q
    if norm_order(p) > norm_order(q):
        raise UnsupportedModuleError(f"{type(module).__name__}: no dimension-free l_{p:g} -> l_{q:g} bound")
    return 1.0


register_bound(nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.Tanh, nn.Hardtanh, nn.ReLU6,
               nn.Softsign, subclasses=True, mixed_norms=True)(_one)


def _scalar(constant: float):
    """A rule for an element-wise map with ``sup |f'| <= constant`` (any l_p; l_p -> l_q for p below q)."""

    def rule(module: nn.Module, p: float, shapes: dict, q: float | None = None) -> float:
        return _one(module, p, shapes, q) * constant

    return rule


#: sup |sigmoid'| = sigmoid'(0) = 1/4
register_bound(nn.Sigmoid, subclasses=True, mixed_norms=True)(_scalar(0.25))
#: sup |GELU'(x)| = 1.12890...  (exact erf form; the tanh approximation's supremum 1.12894 is below it too)
register_bound(nn.GELU, subclasses=True, mixed_norms=True)(_scalar(1.1290))
#: sup |SiLU'(x)| = 1.09985...
register_bound(nn.SiLU, subclasses=True, mixed_norms=True)(_scalar(1.1000))


def _softplus_rule(module: nn.Softplus, p: float, shapes: dict, q: float | None = None) -> float:
    beta, threshold = float(module.beta), float(module.threshold)
    if not beta > 0:
        raise UnsupportedModuleError(f"torch.nn.Softplus(beta={beta:g}): beta must be > 0 (it divides by it)")
    jump = math.log1p(math.exp(-threshold)) / beta
    raise UnsupportedModuleError(
        f"torch.nn.Softplus(beta={beta:g}, threshold={threshold:g}) is not Lipschitz: above beta x > "
        f"threshold it switches to the identity and jumps by {jump:.3g} at x = {threshold / beta:g}; use "
        "lipkit.SmoothSoftplus(beta), the same function without the switch"
    )


register_bound(nn.Softplus, subclasses=True, mixed_norms=True)(_softplus_rule)


def _leaky_rule(module: nn.LeakyReLU, p: float, shapes: dict, q: float | None = None) -> float:
    return _one(module, p, shapes, q) * max(1.0, abs(float(module.negative_slope)))


register_bound(nn.LeakyReLU, subclasses=True, mixed_norms=True)(_leaky_rule)


def _elu_rule(module: nn.ELU, p: float, shapes: dict, q: float | None = None) -> float:
    return _one(module, p, shapes, q) * max(1.0, abs(float(module.alpha)))


register_bound(nn.ELU, subclasses=True, mixed_norms=True)(_elu_rule)


def _dropout_rule(module: nn.Dropout, p: float, shapes: dict, q: float | None = None) -> float:
    # identity in eval mode; in training mode each realisation of the mask keeps entries scaled by
    # 1 / (1 - p): the bound holds for the same mask on both inputs.
    drop = float(module.p)
    scale = 1.0 if not module.training else (0.0 if drop >= 1.0 else 1.0 / (1.0 - drop))  # p = 1: all zeros
    return _one(module, p, shapes, q) * scale


register_bound(nn.Dropout, subclasses=True, mixed_norms=True)(_dropout_rule)


def _sequential_rule(module: nn.Sequential, p: float, shapes: dict, q: float | None = None) -> float:
    return chain_bound(list(module), p, shapes, q)


register_bound(nn.Sequential, subclasses=True, mixed_norms=True)(_sequential_rule)


def _linear_rule(module: nn.Linear, p: float, shapes: dict, q: float | None = None) -> float:
    return operator_norm(module.weight, p, q)


register_bound(nn.Linear, subclasses=True, mixed_norms=True)(_linear_rule)


def batchnorm_scale(module: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The per-channel factor ``gamma / sqrt(running_var + eps)`` of a batch norm in eval mode (float64)."""
    if module.training or module.running_var is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__} in training mode (or without running statistics) normalises by batch "
            "statistics, which mixes the examples of a batch: it has no per-example Lipschitz constant; "
            "call model.eval() first"
        )
    scale = 1.0 / torch.sqrt(as_float64(module.running_var) + module.eps)
    if module.affine and module.weight is not None:
        scale = scale * as_float64(module.weight)
    return scale


def _bn_rule(module: nn.modules.batchnorm._BatchNorm, p: float, shapes: dict,
             q: float | None = None) -> float:
    return _one(module, p, shapes, q) * round_up(batchnorm_scale(module).abs().max().item(), 4)


register_bound(nn.BatchNorm1d, nn.BatchNorm2d, subclasses=True, mixed_norms=True)(_bn_rule)
