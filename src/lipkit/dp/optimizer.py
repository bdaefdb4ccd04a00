"""The clipless DP optimiser: Gaussian noise calibrated to the sensitivity, added to the ordinary gradient.

With the loss ``sum_i l_i / m`` (``m`` the expected batch size, :class:`lipkit.dp.losses.PrivateLoss`), the
gradient is ``(sum_{i in B} grad l_i) / m``.  Adding or removing one example changes the sum by at most
``S_T`` in tensor ``T`` (:func:`lipkit.dp.sensitivity.network_sensitivity`, computed from the weights of
this step's forward pass), so the released ``(sum_i grad l_i + noise) / m`` is a Gaussian mechanism:

* ``calibration="global"``: noise ``N(0, (sigma Delta)^2)`` on every coordinate, ``Delta = sqrt(sum_T
  S_T^2)``;
* ``calibration="per-tensor"`` (the budget split of Bethune et al.): noise ``N(0, (sigma S_T / sqrt(w_T))^2)``
  on tensor ``T`` with weights ``w_T`` summing to 1 (default ``1 / #tensors``).  Rescaling tensor ``T`` by
  ``sqrt(w_T) / S_T`` gives a vector of sensitivity ``sqrt(sum_T w_T) = 1`` with noise ``sigma``: the same
  guarantee.

Under replace-one neighbours the sensitivity doubles (``||grad l(x) - grad l(x')|| <= 2 S``), and so does the
noise.  ``sigma`` is what the accountant records.

No per-example gradients are formed and nothing is clipped.  Gradients of physical chunks accumulate until
the chunk that ends the logical batch (``signal_chunk``); ``zero_grad`` is skipped in between.  After the
update the constraint maps (:func:`lipkit.dp.projection.project_constraints`) run: post-processing.

Secure mode draws the noise from ``os.urandom`` (Box-Muller on 53-bit uniforms, float64).  Floating-point
Gaussian samples are not exactly Gaussian (Mironov, CCS 2012); secure mode removes predictable
pseudo-randomness, not that caveat.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lipkit.dp.accounting import PrivacyAccountant
from lipkit.dp.sampling import secure_uniform
from lipkit.dp.sensitivity import SensitivityReport

__all__ = ["DPOptimizer", "gaussian_noise", "CALIBRATIONS", "NEIGHBOURINGS"]

CALIBRATIONS = ("global", "per-tensor")
NEIGHBOURINGS = ("add-remove", "replace")


def gaussian_noise(
    shape: torch.Size | tuple[int, ...],
    std: float,
    *,
    generator: torch.Generator | None,
    secure: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``N(0, std^2)`` samples of ``shape``; from ``os.urandom`` (Box-Muller) when ``secure``."""
    n = math.prod(shape)
    if not secure:
        z = torch.randn(shape, generator=generator, dtype=dtype)
        return (z if std == 1.0 else z * std).to(device)
    m = (n + 1) // 2
    u1, u2 = secure_uniform(m), secure_uniform(m)
    r = torch.sqrt(-2.0 * torch.log(u1))
    z = torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)])[:n]
    return (z * std).reshape(shape).to(dtype=dtype, device=device)


class DPOptimizer:
    """Wraps any torch optimiser; see the module docstring.

    Args:
        optimizer: the torch optimiser over the model's parameters.
        named_params: ``{name: parameter}`` of every trainable tensor (names as in the sensitivity report).
        sensitivity: ``() -> SensitivityReport`` from the current weights (called once per logical step).
        noise_multiplier: ``sigma``.
        expected_batch_size: ``m`` (the loss is divided by it).
        sample_rate: recorded by the accountant at every step (1 with ``steps_per_account`` for shuffle).
        accountant: a :class:`PrivacyAccountant`.
        calibration: ``"global"`` or ``"per-tensor"``; ``tensor_weights`` for the latter (sum 1).
        neighbouring: ``"add-remove"`` or ``"replace"`` (doubles the sensitivity).
        account_every: record one accountant step every this many logical steps (shuffle: one per epoch,
            recorded at the first step of the epoch).
        after_step: maps applied after each update (constraint projections).
        secure_mode, generator: noise source.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named_params: dict[str, torch.nn.Parameter],
        *,
        sensitivity: Callable[[], SensitivityReport],
        noise_multiplier: float,
        expected_batch_size: float,
        sample_rate: float,
        accountant: PrivacyAccountant,
        calibration: str = "global",
        tensor_weights: dict[str, float] | None = None,
        neighbouring: str = "add-remove",
        account_every: int = 1,
        after_step: Callable[[], None] | None = None,
        secure_mode: bool = False,
        generator: torch.Generator | None = None,
        criterion: Any = None,
    ) -> None:
        if calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {calibration!r}; valid: {list(CALIBRATIONS)}")
        if neighbouring not in NEIGHBOURINGS:
            raise ValueError(f"unknown neighbouring relation {neighbouring!r}; valid: {list(NEIGHBOURINGS)}")
        if not (
            isinstance(noise_multiplier, (int, float))
            and math.isfinite(noise_multiplier)
            and noise_multiplier > 0
        ):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
        self.optimizer = optimizer
        self.named_params = dict(named_params)
        self.sensitivity_fn = sensitivity
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.accountant = accountant
        self.calibration = calibration
        if tensor_weights is None:
            k = len(self.named_params)
            tensor_weights = {n: 1.0 / k for n in self.named_params}
        missing = set(self.named_params) - set(tensor_weights)
        if missing or abs(sum(tensor_weights.values()) - 1.0) > 1e-9 or min(tensor_weights.values()) <= 0:
            raise ValueError(
                "tensor_weights must give every trainable tensor a weight > 0, summing to 1 "
                f"(missing: {sorted(missing)})"
            )
        self.tensor_weights = tensor_weights
        self.neighbouring = neighbouring
        self.account_every = int(account_every)
        self.after_step = after_step
        self.secure_mode = bool(secure_mode)
        self.generator = generator
        self.criterion = criterion
        self.steps_taken = 0
        self.last_report: SensitivityReport | None = None
        self.last_noise_std: dict[str, float] = {}
        self._last_chunk = True
        self._accumulating = False

    # -- the torch.optim.Optimizer surface used by training loops
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def signal_chunk(self, *, last: bool) -> None:
        """Called by the loader before each physical chunk: whether it ends the logical batch."""
        self._last_chunk = bool(last)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._accumulating:
            return  # gradients of the logical batch's earlier chunks are kept
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def noise_std(self, report: SensitivityReport) -> dict[str, float]:
        """Standard deviation of the noise added to each tensor's gradient SUM (before dividing by ``m``)."""
        factor = 2.0 if self.neighbouring == "replace" else 1.0
        if self.calibration == "global":
            return {n: self.noise_multiplier * factor * report.total for n in self.named_params}
        return {
            n: self.noise_multiplier * factor * report.per_tensor[n] / math.sqrt(self.tensor_weights[n])
            for n in self.named_params
        }

    @torch.no_grad()
    def add_noise(self) -> SensitivityReport:
        """Replace each gradient ``g`` (of ``sum_i l_i / m``) by ``g + noise / m``; return the bounds."""
        report = self.sensitivity_fn()
        missing = [n for n in self.named_params if n not in report.per_tensor]
        if missing:
            raise ValueError(f"no sensitivity for the trainable tensors {missing}")
        stds = self.noise_std(report)
        params = list(self.named_params.items())
        if not params:
            self.last_report, self.last_noise_std = report, stds
            return report
        ref = params[0][1]
        # one flat buffer of N(0, 1) draws for all tensors (one generator call), scaled per tensor
        flat = gaussian_noise(
            (sum(p.numel() for _, p in params),),
            1.0,
            generator=self.generator,
            secure=self.secure_mode,
            dtype=ref.dtype,
            device=ref.device,
        )
        grads = []
        for _, p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        # one fused pass for the finiteness check (a NaN or inf entry makes its tensor's norm non-finite)
        norms = torch.stack(torch._foreach_norm(grads))
        if not bool(torch.isfinite(norms).all()):
            bad = [name for name, p in params if not torch.isfinite(p.grad).all()] or [params[0][0]]
            raise FloatingPointError(f"the gradient of {bad[0]} is not finite")
        chunks, offset = [], 0
        for _, p in params:
            chunk = flat[offset:offset + p.numel()].view(p.shape)
            chunks.append(chunk if chunk.dtype == p.dtype and chunk.device == p.device
                          else chunk.to(dtype=p.dtype, device=p.device))
            offset += p.numel()
        scales = [stds[name] / self.expected_batch_size for name, _ in params]
        if len(set(scales)) == 1:  # global calibration: one fused add
            torch._foreach_add_(grads, chunks, alpha=scales[0])
        else:
            torch._foreach_add_(grads, torch._foreach_mul(chunks, scales))
        self.last_report, self.last_noise_std = report, stds
        return report

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One noisy step at the end of a logical batch (earlier chunks only accumulate)."""
        if closure is not None:
            raise ValueError(
                "DPOptimizer.step does not take a closure (the noise must be drawn once per step)"
            )
        if not self._last_chunk:
            self._accumulating = True
            return None
        self._accumulating = False
        self.add_noise()
        if self.steps_taken % self.account_every == 0:
            self.accountant.step(self.noise_multiplier, self.sample_rate)
        out = self.optimizer.step()
        self.steps_taken += 1
        if self.after_step is not None:
            self.after_step()
        return out

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return self.accountant.get_epsilon(delta)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "accountant": self.accountant.state_dict(),
            "steps_taken": self.steps_taken,
            "noise_multiplier": self.noise_multiplier,
        }
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.accountant.load_state_dict(state["accountant"])
        self.steps_taken = int(state["steps_taken"])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
