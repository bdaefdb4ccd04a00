"""Differentially private training in the trainer: :class:`DPStrategy` (clipless DP-SGD, :mod:`lipkit.dp`).

A run with ``dp: {private: true, ...}`` (``lipkit train --dp --epsilon 3 --delta 1e-5 --input-radius R``):

* the model is ``Sequential(L2BallProjection(R), *layers)`` with its LipLinear weights trained as plain
  tensors and mapped back onto the orthogonal matrices after every step (:func:`dp_model`);
* ``before_step`` replaces the trainer's batch by a Poisson sample (each training example with probability
  ``q = batch_size / N``; ``ceil(N / batch_size)`` steps per epoch, the number the noise is calibrated for);
* ``loss`` is the per-example sum over the expected batch size ``q N``;
* ``after_backward`` adds Gaussian noise calibrated to the per-example gradient bound of the current weights
  and records the step with the accountant; ``after_step`` applies the constraint maps;
* ``on_epoch_end`` adds ``dp`` to the epoch's metric record: epsilon spent, delta, noise multiplier,
  sensitivities, and the accountant's history.  The record is checkpointed with the other metrics, and a
  resumed run reloads the accountant from the last record, so it never under-counts.

The randomness (sampling and noise) comes from generators seeded by ``(seed, epoch)``, so a resumed run
ends with the same weights as an uninterrupted one; ``secure_mode`` draws both from ``os.urandom`` instead.

Not private: the training metrics the trainer records (``loss``, ``train_accuracy``, nominal certified
accuracy on training batches) are computed on the private data without noise; publish only the weights,
the test metrics and the privacy record.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lipkit.bounds import record_input_shapes
from lipkit.dp import (
    L2BallProjection,
    PrivacyAccountant,
    materialize_constraints,
    noise_for_target,
    private_optimizer,
    project_constraints,
    validate,
)
from lipkit.dp.losses import ScaledLoss
from lipkit.dp.projection import constraint_maps
from lipkit.dp.retraction import forget_certificates
from lipkit.dp.sampling import poisson_indices
from lipkit.training.config import ConfigError
from lipkit.training.strategy import StepState, TrainingStrategy

if TYPE_CHECKING:
    from lipkit.training.config import RunConfig
    from lipkit.training.trainer import Trainer

__all__ = ["DPStrategy", "dp_model", "dp_criterion", "privacy_record"]


def dp_model(cfg: RunConfig, layers: list[nn.Module],
             input_shape: tuple[int, ...] | None = None) -> nn.Sequential:
    """``Sequential(L2BallProjection(input_radius), *layers)`` , constraints materialised in place.

    ``input_shape`` (one example's): the first projection of a convolution uses its bound at the actual
    image size (exact up to round-off) instead of the size-free one, which would shrink the kernel more."""
    body = nn.Sequential(*layers)
    materialize_constraints(body, record_input_shapes(body, input_shape) if input_shape is not None else None)
    return nn.Sequential(L2BallProjection(cfg.input_radius), *body)


def dp_criterion(cfg: RunConfig, certificate_factor: float) -> object:
    """The config's loss in its per-example form (``ce`` divided by its temperature, as in training)."""
    from lipkit.losses import HKRLoss, LipschitzCrossEntropyLoss, MulticlassHingeLoss

    m = cfg.margin * certificate_factor
    if cfg.loss == "hinge":
        return MulticlassHingeLoss(margin=m)
    if cfg.loss == "hkr":
        return HKRLoss(alpha=cfg.alpha, margin=m)
    if cfg.loss == "ce":
        return ScaledLoss(
            LipschitzCrossEntropyLoss(temperature=cfg.temperature, margin=m), 1.0 / cfg.temperature
        )
    raise ConfigError(f"config key 'loss': {cfg.loss!r} has no private form")


def privacy_record(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The privacy record of the last epoch of a run's history (None: not a private run)."""
    for rec in reversed(history or []):
        if isinstance(rec, dict) and isinstance(rec.get("dp"), dict):
            out = {k: v for k, v in rec["dp"].items() if k != "accountant"}
            out["epochs_trained"] = rec.get("epoch")
            return out
    return None


class DPStrategy(TrainingStrategy):
    """Clipless DP-SGD at the trainer's hooks (see the module docstring)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def on_train_start(self, trainer: Trainer) -> None:
        from lipkit.training.trainer import certificate_factor

        cfg, model, split = self.cfg, trainer.model, trainer.split
        self.criterion = dp_criterion(cfg, certificate_factor(cfg.p))
        shape = tuple(split.x_train.shape[1:])
        problems = validate(model, self.criterion, input_radius=cfg.input_radius, input_shape=shape)
        if problems:
            raise ConfigError("private training is not possible: " + "; ".join(problems))
        n = len(split.x_train)
        self.n = n
        self.sample_rate = cfg.batch_size / n
        steps = cfg.epochs * trainer.steps_per_epoch
        if cfg.noise_multiplier > 0:
            self.sigma = cfg.noise_multiplier
        else:
            try:
                self.sigma = noise_for_target(
                    cfg.epsilon, cfg.delta, self.sample_rate, steps, mechanism=cfg.accountant
                )
            except ValueError as exc:
                raise ConfigError(f"config key 'epsilon' in section 'dp': {exc}") from None
        self.accountant = PrivacyAccountant(cfg.accountant)
        for rec in reversed(trainer.history):  # resume: continue counting from the last record
            if isinstance(rec.get("dp"), dict) and "accountant" in rec["dp"]:
                self.accountant.load_state_dict(rec["dp"]["accountant"])
                break
        self.maps = constraint_maps(model, record_input_shapes(model, shape))
        self.expected = float(cfg.batch_size)
        self.noiser = private_optimizer(  # the setup make_private does, on the trainer's model
            model,
            trainer.optimizer,
            criterion=self.criterion,
            input_radius=cfg.input_radius,
            input_shape=shape,
            noise_multiplier=self.sigma,
            expected_batch_size=self.expected,
            sample_rate=self.sample_rate,
            accountant=self.accountant,
            calibration=cfg.calibration,
            secure_mode=cfg.secure_mode,
            num_classes=split.num_classes,
        )
        self.private_loss = self.noiser.criterion

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        base = self.cfg.seed * 1_000_003 + epoch * 7919
        self.sampler = torch.Generator().manual_seed(base + 1)
        self.noiser.generator = torch.Generator().manual_seed(base + 2)

    def before_step(self, trainer: Trainer, state: StepState) -> None:
        idx = poisson_indices(self.n, self.sample_rate, self.sampler, self.cfg.secure_mode)
        split = trainer.split
        state.idx, state.x, state.y = idx, split.x_train[idx], split.y_train[idx]

    def loss(self, trainer: Trainer, state: StepState) -> torch.Tensor:
        return self.private_loss(state.logits, state.y)

    def after_backward(self, trainer: Trainer, state: StepState) -> None:
        self.noiser.add_noise()
        self.accountant.step(self.sigma, self.sample_rate)

    def after_step(self, trainer: Trainer, state: StepState) -> None:
        project_constraints(self.maps)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        # a run resumed from this epoch's checkpoint has no certified norms: neither has this one from here on
        forget_certificates(trainer.model)
        report = self.noiser.last_report
        record["dp"] = {
            "epsilon": self.accountant.get_epsilon(self.cfg.delta),
            "delta": self.cfg.delta,
            "noise_multiplier": self.sigma,
            "sample_rate": self.sample_rate,
            "steps": self.accountant.steps,
            "accountant_kind": self.cfg.accountant,
            "sampling": "poisson",
            "neighbouring": "add-remove",
            "calibration": self.cfg.calibration,
            "input_radius": self.cfg.input_radius,
            "sensitivity": None if report is None else report.total,
            "sensitivities": None if report is None else report.per_tensor,
            "accountant": self.accountant.state_dict(),
        }
        if not math.isfinite(record["dp"]["epsilon"]):
            raise FloatingPointError("the accountant returned a non-finite epsilon")
