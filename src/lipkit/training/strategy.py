"""Training strategies: the hooks through which a kind of training changes the loop of :class:`Trainer`.

:class:`lipkit.training.trainer.Trainer` runs the same loop for every run (data order, forward, loss,
backward, optimiser and scheduler steps, metrics, checkpoints); everything specific to a kind of training
is a :class:`TrainingStrategy` that it calls at fixed points:

==========================  ======================================================================
hook                        called
==========================  ======================================================================
``param_groups(trainer)``   once, to build the optimiser (``None``: all parameters, one group)
``on_train_start(trainer)`` after the model, optimiser and any checkpoint are loaded
``on_epoch_start``          at the start of every epoch (``trainer``, ``epoch``, 0-based)
``before_step``             before the forward pass of a batch (``trainer``, :class:`StepState`);
                            may set ``state.skip`` to leave the batch out
``loss``                    the batch loss from ``state.logits`` (``None``: the next strategy's, or
                            the config's loss from :func:`~lipkit.training.trainer.make_loss`)
``after_backward``          after ``loss.backward()``, before the optimiser step (e.g. DP noise)
``after_step``              after the optimiser and scheduler steps
``nominal``                 correctness and nominal radius of logits (``None``: the next one's)
``on_epoch_end``            with the epoch's metric record, before it is checkpointed (may add keys)
``before_final_eval``       once, after the last epoch and before the test-set evaluation
``final_metrics``           the test metrics of the last epoch's record (``None``: the next one's, or
                            :func:`~lipkit.training.trainer.evaluate`'s accuracy and nominal radii)
``on_train_end``            always, also after an error or interruption (undo global settings)
==========================  ======================================================================

Several strategies combine (e.g. the l_inf schedule and, later, DP noise): each hook is called on each
strategy in order.  :func:`strategies_for` picks the strategies a :class:`RunConfig` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lipkit.losses import top2_margin

if TYPE_CHECKING:
    from lipkit.training.config import RunConfig
    from lipkit.training.trainer import Trainer

__all__ = ["StepState", "TrainingStrategy", "strategies_for", "nominal_radius"]


@dataclass
class StepState:
    """One training step: where it is, its batch, and what the loop computed so far.

    ``extras`` is free space for strategies (e.g. the l_inf schedule values in force)."""

    epoch: int
    step: int
    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    skip: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class TrainingStrategy:
    """The base strategy: every hook does nothing (plain supervised training)."""

    def param_groups(self, trainer: Trainer) -> list[dict[str, Any]] | None:
        return None

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        pass

    def before_step(self, trainer: Trainer, state: StepState) -> None:
        pass

    def loss(self, trainer: Trainer, state: StepState) -> torch.Tensor | None:
        return None

    def after_backward(self, trainer: Trainer, state: StepState) -> None:
        pass

    def after_step(self, trainer: Trainer, state: StepState) -> None:
        pass

    def nominal(self, model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        pass

    def before_final_eval(self, trainer: Trainer) -> None:
        pass

    def final_metrics(self, trainer: Trainer) -> dict[str, Any] | None:
        return None

    def on_train_end(self, trainer: Trainer) -> None:
        pass


def strategies_for(cfg: RunConfig) -> list[TrainingStrategy]:
    """The strategies a config trains with: the l_inf schedule for l_inf models, DP noise for private runs,
    the tabular loss and metrics for monotone models."""
    if cfg.model == "monotonic-mlp":
        from lipkit.training.monotonic import MonotonicStrategy

        return [MonotonicStrategy(cfg)]
    if cfg.is_linf_model:
        from lipkit.training.linf import LinfScheduleStrategy

        return [LinfScheduleStrategy(cfg)]
    strategies: list[TrainingStrategy] = []
    if cfg.activation == "spline":
        from lipkit.training.splines import SplineStrategy

        strategies.append(SplineStrategy(cfg))
    if cfg.private:
        from lipkit.training.dp import DPStrategy

        strategies.append(DPStrategy(cfg))
    return strategies


def nominal_radius(f: torch.Tensor, y: torch.Tensor, lcj: torch.Tensor | float = math.sqrt(2.0)
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness and the *nominal* radius ``min_{j != y} (f_y - f_j) / L_yj`` (0 where misclassified).

    ``lcj``: one constant for every pair (``sqrt(2)`` for a 1-Lipschitz l2 net, 2 for l_inf; the radius
    is then the top-2 margin over it) or a ``(C, C)`` tensor of pairwise constants.  Computed in float64
    from the logits without any round-off allowance: a training signal, never reported as a certificate.
    """
    f = f.double()
    lcj = torch.as_tensor(lcj).detach().double()
    if lcj.dim() == 0:
        r = top2_margin(f, y) / lcj
    else:
        gap = f.gather(1, y[:, None]) - f
        lyj = lcj[y].scatter(1, y[:, None], 1.0)  # (L_yy = 0 would give 0/0)
        r = (gap / lyj).scatter(1, y[:, None], math.inf).amin(dim=1)
    correct = r > 0
    return correct, torch.where(correct, r, torch.zeros_like(r))
