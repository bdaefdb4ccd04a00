"""Small shared helpers of the parametrisations (argument checks, materialising a copy)."""

from __future__ import annotations

import math

import torch
from torch import nn


def check_lip(lip: float, who: str) -> float:
    """Return ``lip`` as a float after checking it is a finite number > 0."""
    if isinstance(lip, torch.Tensor):
        if lip.numel() != 1:
            raise ValueError(f"{who}: lip must be a scalar, got a tensor of shape {tuple(lip.shape)}")
        lip = lip.item()
    if isinstance(lip, bool) or not isinstance(lip, (int, float)):
        raise TypeError(f"{who}: lip must be a positive float, got {type(lip).__name__}")
    lip = float(lip)
    if math.isnan(lip) or math.isinf(lip) or lip <= 0:
        raise ValueError(f"{who}: lip must be a finite number > 0, got {lip!r}")
    return lip


def check_matrix(weight: torch.Tensor, who: str) -> None:
    """Raise a clear error unless ``weight`` is a floating 2-D tensor."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor weight, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{who} expects a 2-D weight (out_features, in_features), got shape "
                         f"{tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{who} expects a floating-point weight, got dtype {weight.dtype}")


def materialize_in_place(module: nn.Module, *, requires_grad: bool = True) -> None:
    """Replace every parametrised tensor of ``module`` (a deep copy) by its current value, as a Parameter.

    ``parametrize.remove_parametrizations`` is not used: a deep copy shares the injected
    ``Parametrized<Cls>`` class with the original, and removing the property from that class would
    break the original model.  Instead the copy gets its original class back.
    """
    with torch.no_grad():
        values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
    del module._modules["parametrizations"]
    module.__class__ = type(module).__bases__[0]  # parametrize injected a subclass of the original class
    for name, value in values.items():
        if hasattr(module, name):
            delattr(module, name)
        module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
