"""Training with learnable spline activations (``activation: spline``).

Ducotterd et al., "Improving Lipschitz-constrained neural networks by learning activation functions"
(JMLR 2024) train the splines with a second-order total-variation penalty, ``tv2_weight * sum_layers
tv2``, which favours few linear pieces, and give the spline coefficients their own learning rate.
:class:`SplineStrategy` does both through the trainer's hooks: ``param_groups`` puts every
``LinearSpline`` parameter in a group with ``lr = spline_lr`` (when ``spline_lr > 0``), and
``after_backward`` adds the gradient of the TV(2) penalty to the loss gradient.  The slope constraint
itself needs no hook: :class:`lipkit.nn.LinearSpline` applies it inside every forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lipkit.nn.spline import FrozenLinearSpline, LinearSpline
from lipkit.training.config import RunConfig
from lipkit.training.strategy import StepState, TrainingStrategy

if TYPE_CHECKING:
    from lipkit.training.trainer import Trainer

__all__ = ["SplineStrategy", "spline_activation", "spline_modules", "tv2_penalty"]


def spline_activation(cfg: RunConfig, width: int | None, plain: bool = False) -> nn.Module:
    """A ``LinearSpline(width)`` initialised as ReLU (``plain``: the ``FrozenLinearSpline`` of the same
    shape that an exported run folder's weights load into)."""
    if width is None:
        raise ValueError("a spline activation needs the layer width")
    if plain:
        knots = torch.linspace(-cfg.spline_range, cfg.spline_range, cfg.spline_knots, dtype=torch.float64)
        knots = knots.expand(width, -1)
        inv_step = torch.full((width,), (cfg.spline_knots - 1) / (2.0 * cfg.spline_range),
                              dtype=torch.float64)
        return FrozenLinearSpline(knots, knots.clamp(min=0), inv_step=inv_step)
    return LinearSpline(width, num_knots=cfg.spline_knots, knot_range=cfg.spline_range, init="relu")


def spline_modules(model: nn.Module) -> list[LinearSpline]:
    return [m for m in model.modules() if isinstance(m, LinearSpline)]


def tv2_penalty(model: nn.Module) -> torch.Tensor:
    """``sum`` of :meth:`LinearSpline.tv2` over the model's splines (0 if it has none)."""
    terms = [m.tv2() for m in spline_modules(model)]
    return torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64)


class SplineStrategy(TrainingStrategy):
    """TV(2) penalty and a separate learning rate for the spline parameters (module docstring)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def param_groups(self, trainer: Trainer) -> list[dict[str, Any]] | None:
        if self.cfg.spline_lr <= 0:
            return None
        ids = {id(q) for m in spline_modules(trainer.model) for q in m.parameters()}
        params = list(trainer.model.parameters())
        return [{"params": [q for q in params if id(q) not in ids]},
                {"params": [q for q in params if id(q) in ids], "lr": self.cfg.spline_lr}]

    def after_backward(self, trainer: Trainer, state: StepState) -> None:
        if self.cfg.tv2_weight > 0:
            (self.cfg.tv2_weight * tv2_penalty(trainer.model)).backward()
