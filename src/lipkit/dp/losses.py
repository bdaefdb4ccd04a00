"""Per-example losses for DP-SGD: which losses are allowed, their constant, and the private reduction.

DP-SGD adds noise calibrated to how much ONE example can change the gradient.  That requires

* a loss that is a sum of per-example terms, none depending on another example: the batch mean of
  :class:`lipkit.HKRLoss` weights each example by its class's count in the batch, so its per-example form
  (fixed class priors, :meth:`lipkit.HKRLoss.per_example`) is used instead;
* a reduction by the EXPECTED batch size ``q N`` (``sum_i l_i / (q N)``), not by the size of the batch
  drawn: dividing by the drawn size would let one example rescale every other example's term;
* the loss's Lipschitz constant with respect to the logits (``||d l_i / d z||_2``), which scales every
  sensitivity.

Supported: the lipkit losses (:class:`~lipkit.losses.MulticlassHingeLoss`, :class:`~lipkit.losses.HKRLoss`,
:class:`~lipkit.losses.LipschitzCrossEntropyLoss`, :class:`~lipkit.losses.LogitMSELoss`) and
``torch.nn.CrossEntropyLoss`` without class weights (gradient ``softmax - q``, norm ``<= sqrt 2`` for any
label smoothing).  Anything else is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lipkit.bounds import round_up

__all__ = ["PrivateLoss", "ScaledLoss", "loss_lipschitz", "per_example_loss", "check_loss"]


def check_loss(loss: object) -> str | None:
    """Why ``loss`` cannot be used for DP training without clipping (None: it can)."""
    if isinstance(loss, nn.CrossEntropyLoss):
        if type(loss).forward is not nn.CrossEntropyLoss.forward:
            return f"{type(loss).__name__} overrides CrossEntropyLoss.forward"
        if loss.weight is not None:
            return (
                "nn.CrossEntropyLoss with class weights: its constant is not covered (weights fitted on the "
                "data also spend privacy); use it without weight="
            )
        return None
    if callable(getattr(loss, "per_example", None)) and callable(getattr(loss, "logit_lipschitz", None)):
        return None
    return (
        f"no per-example form and logit Lipschitz constant are known for the loss {type(loss).__name__}; "
        "use MulticlassHingeLoss, HKRLoss, LipschitzCrossEntropyLoss, LogitMSELoss or nn.CrossEntropyLoss, "
        "or give the loss per_example(logits, y) and logit_lipschitz(num_classes, output_radius)"
    )


def _require(loss: object) -> None:
    problem = check_loss(loss)
    if problem is not None:
        raise ValueError(problem)


def loss_lipschitz(loss: object, num_classes: int, output_radius: float | None = None) -> float:
    """``G >= ||d l_i / d z||_2`` for every logit vector (of norm ``<= output_radius``) and label."""
    _require(loss)
    if isinstance(loss, nn.CrossEntropyLoss):
        return round_up(math.sqrt(2.0))
    value = float(loss.logit_lipschitz(num_classes, output_radius))  # type: ignore[attr-defined]
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{type(loss).__name__}.logit_lipschitz returned {value!r}")
    return value


def per_example_loss(loss: object) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits, y) -> (B,)``: the per-example terms of ``loss``."""
    _require(loss)
    if isinstance(loss, nn.CrossEntropyLoss):

        def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(
                logits, y, reduction="none", label_smoothing=loss.label_smoothing
            )

        return ce
    return loss.per_example  # type: ignore[attr-defined]


class ScaledLoss(nn.Module):
    """``scale * loss`` (a tempered cross entropy over its temperature), its constant scaled alike."""

    def __init__(self, loss: object, scale: float) -> None:
        super().__init__()
        _require(loss)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.loss, self.scale = loss, float(scale)
        self._terms = per_example_loss(loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_example(logits, target).mean()

    def per_example(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.scale * self._terms(logits, target)

    def logit_lipschitz(self, num_classes: int, output_radius: float | None = None) -> float:
        return round_up(self.scale * loss_lipschitz(self.loss, num_classes, output_radius), 2)


class PrivateLoss(nn.Module):
    """``sum_i l_i / expected_batch_size``: the loss whose gradient DP-SGD privatises.

    Args:
        loss: a supported loss (see the module docstring).
        expected_batch_size: ``q N`` for Poisson sampling (the fixed batch size for shuffled batches).
    """

    def __init__(self, loss: object, expected_batch_size: float) -> None:
        super().__init__()
        _require(loss)
        if not expected_batch_size > 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size!r}")
        self.loss = loss
        self.expected_batch_size = float(expected_batch_size)
        self._terms = per_example_loss(loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:  # an empty Poisson batch: zero loss, still a (noise-only) step
            return logits.sum() * 0.0
        return self._terms(logits, target).sum() / self.expected_batch_size

    def extra_repr(self) -> str:
        return f"expected_batch_size={self.expected_batch_size:g}"
