"""The deployed model and its float64 twin: what every certificate evaluates.

A certificate is about the *deployed* model: its float32 weights (the ones its forward pass really uses,
parametrisations included) evaluated in float32.  Certificates compute margins and bounds on a float64
copy (the *twin*) whose weights are those float32 weights cast exactly, so the twin computes the same
real-valued function up to float64 round-off (which :mod:`lipkit.certify.roundoff` accounts for).

Used by :mod:`lipkit.certify.margin` and :mod:`lipkit.certify.interval`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds.numerics import fp32_products_are_ieee
from lipkit.nn.parametrize.utils import materialize_in_place

__all__ = ["check_float_mode", "deployed_dtype", "deployed_logits_and_twin", "deployed_mode", "float64_copy",
           "run_logits", "validate_x"]


def float64_copy(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every parametrisation materialised in the model's own dtype
    (so the weights are bit-identical to the ones its forward uses), then cast to float64 (exact)."""
    twin = copy.deepcopy(model)
    for mod in list(twin.modules()):
        if parametrize.is_parametrized(mod):
            materialize_in_place(mod, requires_grad=False)
    return twin.to(torch.float64).eval()


def check_float_mode() -> None:
    """Refuse reduced-precision modes: the round-off analysis assumes IEEE float32 arithmetic."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            raise ValueError(f"certificates cannot be computed under torch.autocast ({device}): the forward "
                             "pass then runs in reduced precision, which the round-off analysis does not "
                             "cover")
    if not fp32_products_are_ieee():
        raise ValueError("certificates need IEEE float32 matrix products: torch.set_float32_matmul_precision("
                         "'highest'), and no backend's fp32_precision set to 'tf32' or 'bf16' (TF32 / "
                         "bfloat16 products are outside the round-off analysis)")


def validate_x(x: object, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """``x`` if it is a non-empty finite floating-point batch ``(B, ...)`` (of per-sample shape
    ``input_shape`` when given); otherwise a ``TypeError`` / ``ValueError`` saying what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"x has per-sample shape {tuple(x.shape[1:])}, expected input_shape "
                         f"{tuple(input_shape)}")
    return x


def run_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, checked to be logits ``(B, C)`` with ``C >= 2`` (``ValueError`` otherwise)."""
    try:
        out = model(x)
    except RuntimeError as err:
        raise ValueError(f"model rejected an input batch of shape {tuple(x.shape)}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits of shape (B, classes) = ({x.shape[0]}, C), got {shape}")
    if out.shape[1] < 2:
        raise ValueError(f"model must return at least 2 logits per input, got {out.shape[1]}")
    return out


@contextmanager
def deployed_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as deployed: eval mode and no autograd; its mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def deployed_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype the deployed model computes in: its first floating parameter's, else the input's."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else x.dtype


def deployed_logits_and_twin(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """The deployed model's logits at ``x`` (:func:`deployed_mode`, in :func:`deployed_dtype`) and its
    float64 twin (:func:`float64_copy`)."""
    with deployed_mode(model):
        logits32 = run_logits(model, x.to(deployed_dtype(model, x)))
        twin = float64_copy(model)
    return logits32, twin
