"""Run configuration: one dataclass, loadable from a YAML file or CLI flags, validated.

Every error is a :class:`ConfigError` with one message naming the offending key and value
(unknown key, wrong type, out-of-range value, or an impossible combination such as a MaxMin
activation on an odd width, or l_inf certificates from l2-orthogonal layers).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunConfig", "ConfigError", "load_config"]

ACTIVATIONS = ("maxmin", "groupsort")
CONSTRAINTS = ("orthogonal",)
ORTHOGONAL_METHODS = ("cayley", "retraction", "bjorck")
LOSSES = ("ce", "hinge", "hkr")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")


class ConfigError(ValueError):
    """Invalid run configuration (the message names the key)."""


@dataclass
class RunConfig:
    """Everything a training run needs; JSON/YAML round-trips through :meth:`to_dict`.

    Model: ``widths`` hidden layers of ``LipLinear(constraint=...)`` each followed by the
    activation, then a ``LipLinear`` to ``num_classes`` outputs (orthogonal rows), so the network
    is 1-Lipschitz in l2 and the margin certificate ``(f_y - max_j f_j) / sqrt(2)`` applies.
    Loss ``ce``: cross-entropy on ``temperature * (f - margin * sqrt(2) * onehot(y))`` (divided by
    the temperature); ``hinge``: multiclass hinge with ``margin``; ``hkr``: hinge +
    Kantorovich-Rubinstein with weight ``alpha``.
    """

    name: str = "run"
    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0
    widths: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "maxmin"
    group_size: int = 2
    constraint: str = "orthogonal"
    orthogonal_method: str = "cayley"
    loss: str = "ce"
    temperature: float = 8.0
    margin: float = 1.0
    alpha: float = 10.0
    optimizer: str = "adam"
    lr: float = 3e-3
    schedule: str = "onecycle"
    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    radii: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 1.0])
    p: float = 2.0
    threads: int = 2
    pgd_steps: int = 50

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key {key!r}: {msg} (got {getattr(self, key)!r})")

        self.widths = [_as_int("widths", w) for w in _as_list("widths", self.widths)]
        self.radii = [_as_float("radii", r) for r in _as_list("radii", self.radii)]
        for k in ("test_size", "temperature", "margin", "alpha", "lr"):
            setattr(self, k, _as_float(k, getattr(self, k)))
        for k in ("data_seed", "group_size", "epochs", "batch_size", "seed", "threads", "pgd_steps"):
            setattr(self, k, _as_int(k, getattr(self, k)))
        for k in ("name", "dataset", "activation", "constraint", "orthogonal_method", "loss", "optimizer",
                  "schedule"):
            need(isinstance(getattr(self, k), str), k, "must be a string")
        self.p = _as_p(self.p)

        need(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
             "must be a non-empty folder name without '/'")
        from lipkit.data import DATASETS

        need(self.dataset in DATASETS, "dataset", f"must be one of {sorted(DATASETS)}")
        need(0.0 < self.test_size < 1.0, "test_size", "must be in (0, 1)")
        need(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), "widths",
             "must be a non-empty list of positive integers")
        need(self.activation in ACTIVATIONS, "activation", f"must be one of {list(ACTIVATIONS)}")
        need(self.group_size >= 2, "group_size", "must be >= 2")
        need(self.constraint in CONSTRAINTS, "constraint", f"must be one of {list(CONSTRAINTS)}")
        need(self.orthogonal_method in ORTHOGONAL_METHODS, "orthogonal_method",
             f"must be one of {list(ORTHOGONAL_METHODS)}")
        need(self.loss in LOSSES, "loss", f"must be one of {list(LOSSES)}")
        need(self.temperature > 0 and math.isfinite(self.temperature), "temperature", "must be > 0")
        need(self.margin >= 0 and math.isfinite(self.margin), "margin", "must be >= 0")
        need(self.alpha >= 0 and math.isfinite(self.alpha), "alpha", "must be >= 0")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {list(OPTIMIZERS)}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be > 0")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {list(SCHEDULES)}")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.threads >= 1, "threads", "must be >= 1")
        need(self.pgd_steps >= 0, "pgd_steps", "must be >= 0")
        need(len(self.radii) >= 1 and all(r > 0 and math.isfinite(r) for r in self.radii), "radii",
             "must be a non-empty list of positive finite radii")
        # impossible combinations
        step = 2 if self.activation == "maxmin" else self.group_size
        bad = [w for w in self.widths if w % step]
        need(not bad, "widths", f"{self.activation} sorts groups of {step}: every width must be a multiple "
             f"of {step}, not {bad}")
        need(not (self.constraint == "orthogonal" and self.p != 2.0), "p",
             "orthogonal layers are 1-Lipschitz for l2 only; use p=2")
        if self.loss == "hkr":
            need(self.margin > 0, "margin", "the hkr loss needs margin > 0")

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["p"] = "inf" if math.isinf(self.p) else self.p
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes`` applied (``None`` values are ignored)."""
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return RunConfig.from_dict(d)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) run config; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # parser errors: report the first line only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot parse config file {str(path)!r}: {first}") from None
    if data is None:
        data = {}
    return RunConfig.from_dict(data)


# --------------------------------------------------------------------------- coercion helpers


def _as_list(key: str, value: Any) -> list:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, (int, float)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r}: must be a list, got {value!r}")
    return list(value)


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int):
        return value
    raise ConfigError(f"config key {key!r}: must be an integer, got {value!r}")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: must be a number, got {value!r}") from None
    if math.isnan(out):
        raise ConfigError(f"config key {key!r}: must be a number, got NaN")
    return out


def _as_p(value: Any) -> float:
    from lipkit.bounds import normalize_p

    try:
        return normalize_p(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'p': {exc}") from None
