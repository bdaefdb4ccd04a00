"""``make_private``: turn a model, an optimiser and a data set into a clipless DP-SGD setup (Opacus-shaped).

::

    model, optimizer, loader = lipkit.dp.make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.5), (X, Y), criterion=lipkit.MulticlassHingeLoss(),
        batch_size=256, target_epsilon=3.0, target_delta=1e-5, epochs=10, input_radius=1.0)
    for epoch in range(10):
        for x, y in loader:
            optimizer.zero_grad()
            optimizer.criterion(model(x), y).backward()   # sum of per-example losses / expected batch size
            optimizer.step()                               # + Gaussian noise calibrated to the sensitivity
        print(optimizer.get_epsilon(1e-5))

The returned model is ``nn.Sequential(L2BallProjection(R), model)``: inputs are projected onto the l2 ball
of radius ``R`` inside the model, so certification and deployment see what training saw.  Constrained
weights are trained as plain tensors and projected after each step (:mod:`lipkit.dp.projection`).
:func:`validate` lists every problem at once before anything is changed.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from lipkit.bounds import record_input_shapes
from lipkit.dp.accounting import ACCOUNTANTS, PrivacyAccountant, noise_for_target
from lipkit.dp.losses import PrivateLoss, check_loss
from lipkit.dp.optimizer import CALIBRATIONS, NEIGHBOURINGS, DPOptimizer
from lipkit.dp.projection import L2BallProjection, materialize_constraints, project_constraints
from lipkit.dp.sampling import SAMPLINGS, PrivateLoader
from lipkit.dp.sensitivity import SensitivityReport, _num_outputs, network_sensitivity
from lipkit.nn import LipConv2d, LipLinear

__all__ = ["make_private", "private_optimizer", "validate", "model_problems"]


def model_problems(model: nn.Module) -> list[str]:
    """Structural problems of ``model`` for clipless DP (batch mixing, randomness, parametrisations)."""
    problems = []
    for name, m in model.named_modules():
        where = name or "model"
        if isinstance(m, _BatchNorm) and m.training:
            problems.append(
                f"{where}: {type(m).__name__} in training mode mixes the examples of a batch (one "
                "example changes every other example's output); remove it or freeze it in eval mode"
            )
        if isinstance(m, _DropoutNd) and m.training and m.p > 0:
            problems.append(
                f"{where}: {type(m).__name__} in training mode is not covered (its random mask changes "
                "the offsets the bound uses); remove it"
            )
        if parametrize.is_parametrized(m):
            names = list(m.parametrizations.keys())
            if not isinstance(m, (LipLinear, LipConv2d)) or names != ["weight"]:
                problems.append(
                    f"{where}: the parametrised tensors {names} of {type(m).__name__} are not covered "
                    "(the optimiser would update a raw tensor behind the parametrisation's Jacobian); "
                    "only LipLinear / LipConv2d weight constraints are converted to projections"
                )
    return problems


def validate(
    model: nn.Module, criterion: object, *, input_radius: float | None, input_shape: tuple[int, ...] | None
) -> list[str]:
    """Every problem that prevents clipless DP training of ``model`` with ``criterion`` (empty: none).

    Checks the loss, the input radius, batch-mixing and random layers, parametrisations, and runs the
    sensitivity analysis on a copy of the model with its constraints converted (layers or losses without a
    known bound, parameters not covered).  The model itself is not changed.
    """
    problems: list[str] = []
    radius_ok = (
        isinstance(input_radius, (int, float))
        and not isinstance(input_radius, bool)
        and math.isfinite(input_radius)
        and input_radius > 0
    )
    if input_radius is None:
        problems.append(
            "input_radius is missing: the sensitivity needs a bound R of the input norm (inputs are "
            "projected onto the l2 ball of radius R); e.g. sqrt(d) for d pixels in [0, 1]"
        )
    elif not radius_ok:
        problems.append(f"input_radius must be a finite number > 0, got {input_radius!r}")
    loss_problem = check_loss(criterion)
    if loss_problem is not None:
        problems.append(f"loss: {loss_problem}")
    if not isinstance(model, nn.Module):
        problems.append(f"model must be a torch.nn.Module, got {type(model).__name__}")
        return problems
    problems += model_problems(model)
    if input_shape is None:
        problems.append("input_shape is unknown (pass input_shape=, or data with at least one example)")
        return problems
    twin = copy.deepcopy(model)
    try:
        materialize_constraints(twin)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"converting the constraints failed: {exc}")
        return problems
    if radius_ok and loss_problem is None:
        report = network_sensitivity(
            nn.Sequential(L2BallProjection(float(input_radius)), twin),
            float(input_radius),
            criterion,
            input_shape=tuple(input_shape),
            strict=False,
        )
        seen = set(problems)
        problems += [p.replace("model.1.", "model.", 1) for p in report.problems if p not in seen]
    return problems


def _split_data(data: Any, batch_size: int | None) -> tuple[Any, int]:
    if isinstance(data, DataLoader):
        if batch_size is None:
            batch_size = data.batch_size
        return data.dataset, batch_size
    if batch_size is None:
        raise ValueError("batch_size is required when data is not a DataLoader")
    return data, batch_size


def _first_shape(dataset: Any) -> tuple[int, ...] | None:
    try:
        if isinstance(dataset, (tuple, list)) and isinstance(dataset[0], torch.Tensor):
            return tuple(dataset[0].shape[1:])
        return tuple(torch.as_tensor(dataset[0][0]).shape)
    except (IndexError, TypeError, KeyError):
        return None


def private_optimizer(
    private_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    criterion: object,
    input_radius: float,
    input_shape: tuple[int, ...],
    noise_multiplier: float,
    expected_batch_size: float,
    sample_rate: float,
    accountant: PrivacyAccountant,
    calibration: str = "global",
    neighbouring: str = "add-remove",
    account_every: int = 1,
    after_step: Any = None,
    secure_mode: bool = False,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
) -> DPOptimizer:
    """The :class:`DPOptimizer` of a private model (input projection in front, constraints materialised):
    its trainable tensors, which must all be in ``optimizer``, and its sensitivity, recomputed from the
    current weights at every step.  Shared by :func:`make_private` and the trainer's ``DPStrategy``.

    Raises:
        ValueError: a trainable tensor is not in the optimiser.
    """
    shapes = record_input_shapes(private_model, tuple(input_shape))
    named = {n: p for n, p in private_model.named_parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    left_out = [n for n, p in named.items() if id(p) not in in_optimizer]
    if left_out:
        raise ValueError(
            f"the trainable tensors {left_out} are not in the optimiser; freeze them "
            "(requires_grad=False) or add them"
        )
    if num_classes is None:
        num_classes = _num_outputs(private_model, tuple(input_shape))

    def sensitivity() -> SensitivityReport:  # from the current weights, at every step
        return network_sensitivity(
            private_model,
            float(input_radius),
            criterion,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            shapes=shapes,
        )

    return DPOptimizer(
        optimizer,
        named,
        sensitivity=sensitivity,
        noise_multiplier=float(noise_multiplier),
        expected_batch_size=float(expected_batch_size),
        sample_rate=float(sample_rate),
        accountant=accountant,
        calibration=calibration,
        neighbouring=neighbouring,
        account_every=account_every,
        after_step=after_step,
        secure_mode=secure_mode,
        generator=generator,
        criterion=PrivateLoss(criterion, float(expected_batch_size)),
    )


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    *,
    criterion: object,
    target_delta: float,
    epochs: int,
    input_radius: float | None,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    batch_size: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    accountant: str = "rdp",
    neighbouring: str = "add-remove",
    sampling: str = "poisson",
    calibration: str = "global",
    max_physical_batch_size: int | None = None,
    secure_mode: bool = False,
    seed: int | None = None,
) -> tuple[nn.Module, DPOptimizer, PrivateLoader]:
    """Clipless DP-SGD for a Lipschitz network (Bethune et al., ICLR 2024); see the module docstring.

    Args:
        model: the network (changed in place: constrained weights become plain tensors kept by projection).
        optimizer: any torch optimiser over ``model``'s parameters (wrapped, not copied).
        data: a ``DataLoader`` (its dataset and batch size are used), a map-style dataset of ``(x, y)`` or a
            tuple ``(X, Y)`` of tensors.
        criterion: the loss (see :mod:`lipkit.dp.losses`); the returned ``optimizer.criterion`` is its
            private reduction ``sum_i l_i / expected_batch_size``.
        target_delta, epochs: the budget's delta and the number of epochs the noise is calibrated for.
        input_radius: ``R``: inputs are projected onto the l2 ball of radius ``R``.
        target_epsilon / noise_multiplier: exactly one (the other is derived / accounted).
        batch_size: the expected (Poisson) or fixed (shuffle) batch size, unless ``data`` is a DataLoader.
        accountant: ``"rdp"`` or ``"prv"`` (opacus).
        neighbouring: ``"add-remove"`` (Poisson) or ``"replace"`` (sensitivity doubled; shuffled batches only,
            and required by them).
        sampling: ``"poisson"`` (amplified accounting) or ``"shuffle"`` (no amplification, see
            :mod:`lipkit.dp.sampling`).
        calibration: ``"global"`` or ``"per-tensor"`` noise.
        max_physical_batch_size: accumulate gradients over chunks of at most this size.
        secure_mode: noise and sampling from ``os.urandom`` (not reproducible).
        seed: seeds sampling and noise (ignored in secure mode).

    Returns:
        ``(private_model, dp_optimizer, loader)``.

    Raises:
        ValueError: listing every problem found (model, loss, radius, options, unreachable epsilon).
    """
    problems: list[str] = []
    for name, value, valid in (
        ("accountant", accountant, ACCOUNTANTS),
        ("neighbouring", neighbouring, NEIGHBOURINGS),
        ("sampling", sampling, SAMPLINGS),
        ("calibration", calibration, CALIBRATIONS),
    ):
        if value not in valid:
            problems.append(f"unknown {name} {value!r}; valid: {list(valid)}")
    if sampling == "poisson" and neighbouring == "replace":
        problems.append(
            "neighbouring='replace' with Poisson sampling: the accountants analyse Poisson "
            "subsampling under add/remove only; use neighbouring='add-remove', or sampling='shuffle'"
        )
    if sampling == "shuffle" and neighbouring == "add-remove":
        problems.append(
            "sampling='shuffle' is accounted under replace-one neighbours (fixed N); pass "
            "neighbouring='replace'"
        )
    if (target_epsilon is None) == (noise_multiplier is None):
        problems.append("pass exactly one of target_epsilon and noise_multiplier")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs must be an int >= 1, got {epochs!r}")
    dataset, batch = None, None
    try:
        dataset, batch = _split_data(data, batch_size)
    except ValueError as exc:
        problems.append(str(exc))
    if input_shape is None and dataset is not None:
        input_shape = _first_shape(dataset)
    problems += validate(model, criterion, input_radius=input_radius, input_shape=input_shape)
    loader = None
    if dataset is not None:
        try:
            gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            loader = PrivateLoader(
                dataset,
                batch,
                sampling=sampling,
                generator=gen,
                max_physical_batch_size=max_physical_batch_size,
                secure_mode=secure_mode,
            )
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    sigma = noise_multiplier
    if loader is not None and not problems:
        rate = loader.sample_rate if sampling == "poisson" else 1.0
        steps = epochs * (loader.steps_per_epoch if sampling == "poisson" else 1)
        if target_epsilon is not None:
            try:
                sigma = noise_for_target(target_epsilon, target_delta, rate, steps, mechanism=accountant)
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise ValueError("make_private: " + ("\n  - ".join(["cannot train privately:", *problems])))

    shapes_model = record_input_shapes(model, tuple(input_shape))
    projections, swapped = materialize_constraints(model, shapes_model)
    for group in optimizer.param_groups:
        group["params"] = [swapped.get(p, p) for p in group["params"]]
    for old in swapped:
        optimizer.state.pop(old, None)
    private_model = nn.Sequential(L2BallProjection(float(input_radius)), model)
    expected = float(batch)
    try:
        dp_opt = private_optimizer(
            private_model,
            optimizer,
            criterion=criterion,
            input_radius=float(input_radius),
            input_shape=tuple(input_shape),
            noise_multiplier=float(sigma),
            expected_batch_size=expected,
            sample_rate=loader.sample_rate if sampling == "poisson" else 1.0,
            accountant=PrivacyAccountant(accountant),
            calibration=calibration,
            neighbouring=neighbouring,
            account_every=1 if sampling == "poisson" else loader.steps_per_epoch,
            after_step=lambda: project_constraints(projections),
            secure_mode=secure_mode,
            generator=torch.Generator().manual_seed(int(seed) + 1) if seed is not None else None,
        )
    except ValueError as exc:
        raise ValueError(f"make_private: {exc}") from None
    dp_opt.target_delta = float(target_delta)
    dp_opt.target_epsilon = target_epsilon
    dp_opt.sampling = sampling
    loader.optimizer = dp_opt
    return private_model, dp_opt, loader
