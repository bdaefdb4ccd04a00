"""Small shared helpers of the parametrisations (argument checks)."""

from __future__ import annotations

import math

import torch


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
