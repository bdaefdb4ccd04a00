"""Privacy accounting: a thin wrapper over the accountants of opacus (never written here).

``mechanism="rdp"`` is opacus' ``RDPAccountant`` (Rényi DP of the sampled Gaussian mechanism, Mironov,
Talwar & Zhang 2019, converted to (epsilon, delta) as in Balle et al. 2020); ``"prv"`` is its
``PRVAccountant`` (numerical composition of privacy random variables, Gopi, Lee & Wutschitz 2021).  Both
account the Poisson-subsampled Gaussian mechanism under add/remove-one neighbours; with sample rate 1 they
account the plain Gaussian mechanism (used for shuffled batches without amplification).

The noise multiplier ``sigma`` is the ratio of the noise standard deviation to the l2 sensitivity of the
summed gradient.  The accountant's history (``state_dict``) travels with checkpoints, so a resumed run keeps
counting from where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["PrivacyAccountant", "noise_for_target", "ACCOUNTANTS"]

ACCOUNTANTS = ("rdp", "prv")


def _check(name: str, value: float, *, upper: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
        or (upper is not None and value >= upper)
    ):
        bound = f" and < {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must be a finite number > 0{bound}, got {value!r}")
    return float(value)


def _create(mechanism: str) -> Any:
    if mechanism not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {mechanism!r}; valid: {list(ACCOUNTANTS)}")
    _require_opacus()
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=mechanism)


def _require_opacus() -> None:
    """The accountants are opacus'; say how to install it instead of failing deep inside an import."""
    try:
        import opacus  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "lipkit.dp accounts privacy with opacus' accountants; install it with: pip install 'lipkit[dp]' "
            "(or pip install opacus==1.6.0)"
        ) from exc


def noise_for_target(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    *,
    mechanism: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to ``epsilon_tolerance``) for which ``steps`` steps at ``sample_rate``
    spend at most ``target_epsilon`` (opacus' ``get_noise_multiplier``).

    Raises:
        ValueError: the target is not reachable with any noise multiplier up to opacus' limit (1e6).
    """
    target_epsilon = _check("target_epsilon", target_epsilon)
    target_delta = _check("target_delta", target_delta, upper=1.0)
    _check("sample_rate", sample_rate)
    if sample_rate > 1:
        raise ValueError(f"sample_rate must be <= 1, got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of steps must be an int >= 1, got {steps!r}")
    _create(mechanism)
    _require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=mechanism,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    except ValueError as exc:
        raise ValueError(
            f"target epsilon {target_epsilon:g} (delta {target_delta:g}) is not reachable in {steps} "
            f"steps at sample rate {sample_rate:g} with any noise multiplier up to 1e6 ({exc}); "
            "raise epsilon, or lower the number of epochs or the batch size"
        ) from exc


class PrivacyAccountant:
    """Counts the privacy spent by the noisy steps taken (opacus RDP or PRV accountant inside).

    Args:
        mechanism: ``"rdp"`` or ``"prv"``.
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        self.mechanism = mechanism
        self._acc = _create(mechanism)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Record one noisy step (``noise_multiplier``, subsampled at ``sample_rate``)."""
        _check("noise_multiplier", noise_multiplier)
        _check("sample_rate", sample_rate)
        self._acc.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self._acc.history)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        delta = _check("delta", delta, upper=1.0)
        if not self._acc.history:
            return 0.0
        return float(self._acc.get_epsilon(delta=delta))

    def state_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "history": [list(h) for h in self._acc.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mechanism") != self.mechanism:
            raise ValueError(
                f"the saved accountant is {state.get('mechanism')!r}, this one is {self.mechanism!r}"
            )
        self._acc.history = [tuple(h) for h in state["history"]]
