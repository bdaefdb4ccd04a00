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

__all__ = ["DEMO_CONFIG", "RunConfig", "ConfigError", "load_config", "read_config_file", "load_recipe",
           "recipe_names"]

ACTIVATIONS = ("maxmin", "groupsort")
CONSTRAINTS = ("orthogonal",)
ORTHOGONAL_METHODS = ("cayley", "retraction", "bjorck")
LOSSES = ("ce", "hinge", "hkr", "mix")
OPTIMIZERS = ("adam", "sgd")
MODELS = ("lipmlp", "linf-dist", "sortnet")
HEAD_ACTIVATIONS = ("relu", "tanh")
SCHEDULES = ("onecycle", "cosine", "constant")


#: the configuration `lipkit demo` trains (tuned for digits on a 2-core CPU, see report).
DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "dataset": "digits",
    "widths": [512, 512, 512],
    "activation": "maxmin",
    "orthogonal_method": "cayley",
    "loss": "ce",
    "temperature": 8.0,
    "margin": 1.0,
    "optimizer": "adam",
    "lr": 3e-3,
    "schedule": "onecycle",
    "epochs": 100,
    "batch_size": 64,
    "seed": 0,
    "radii": [0.1, 0.25, 0.5, 0.75, 1.0],
    "p": 2,
    "pgd_steps": 50,
}


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

    l_inf models (``model: linf-dist`` or ``sortnet``, ``p: inf``; see :mod:`lipkit.training.linf`): the
    ``widths`` are l_inf-distance layers (``sortnet``: the first one l_inf-distance, the others
    SortNet neurons with keep rate ``sort_q``), then either a last distance layer to the classes
    (1-Lipschitz logits, certificate ``margin / 2``) or, if ``head_width > 0``, a hybrid head
    ``LipLinear(constraint="inf") -> head_activation -> nn.Linear``.  Schedules (Zhang et al. 2021,
    2022): ``p`` of the l_p relaxation grows geometrically from ``p_start`` to ``p_end`` over the
    window ``p_window = [a, b]`` (fractions of all training steps, so a recipe keeps its shape when
    ``epochs`` is overridden) and is ``inf`` from ``b`` on; loss ``mix`` is the clipped hinge
    ``clamp(1 - gap_j / (L_yj * eps), 0, 1)`` (max over j) plus ``w * CE(temperature * f)`` where
    ``eps`` ramps linearly from 0 to ``margin`` over ``eps_window`` and ``w`` decays
    geometrically from ``ce_weight[0]`` to ``ce_weight[1]`` over ``p_window``.  Adam uses ``betas``,
    ``adam_eps`` and decoupled ``weight_decay`` (AdamW; never on distance-layer weights).
    ``standardised_init`` (l_inf models): initialise as if the inputs were standardised by the
    training set's pixel mean and standard deviation ``s`` (see
    :func:`lipkit.training.linf.standardised_init`); with ``lr = s * lr'`` training then follows a run on
    standardised inputs at learning rate ``lr'``, as in Zhang et al.  ``augment_shift``: translate
    each training image by up to this many pixels per axis, edges repeated
    (:func:`lipkit.training.data.random_shift`; square images only).
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
    model: str = "lipmlp"
    head_width: int = 0
    head_activation: str = "relu"
    sort_q: float = 0.5
    p_start: float = 8.0
    p_end: float = 1000.0
    p_window: list[float] = field(default_factory=lambda: [0.0, 0.0])
    eps_window: list[float] = field(default_factory=lambda: [0.0, 0.0])
    ce_weight: list[float] = field(default_factory=lambda: [0.1, 0.001])
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    standardised_init: bool = False
    augment_shift: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key {key!r}: {msg} (got {getattr(self, key)!r})")

        self.widths = [_as_int("widths", w) for w in _as_list("widths", self.widths)]
        self.radii = [_as_float("radii", r) for r in _as_list("radii", self.radii)]
        for k in ("ce_weight", "betas", "p_window", "eps_window"):
            setattr(self, k, [_as_float(k, v) for v in _as_list(k, getattr(self, k))])
        for k in ("test_size", "temperature", "margin", "alpha", "lr", "sort_q", "p_start", "p_end",
                  "adam_eps", "weight_decay"):
            setattr(self, k, _as_float(k, getattr(self, k)))
        for k in ("data_seed", "group_size", "epochs", "batch_size", "seed", "threads", "pgd_steps",
                  "head_width", "augment_shift"):
            setattr(self, k, _as_int(k, getattr(self, k)))
        for k in ("name", "dataset", "activation", "constraint", "orthogonal_method", "loss", "optimizer",
                  "schedule", "model", "head_activation"):
            need(isinstance(getattr(self, k), str), k, "must be a string")
        self.p = _as_p(self.p)
        need(isinstance(self.standardised_init, bool), "standardised_init", "must be true or false")

        need(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
             "must be a non-empty folder name without '/'")
        from lipkit.training.data import DATASETS

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
        need(self.augment_shift >= 0, "augment_shift", "must be >= 0 (0: no augmentation)")
        need(len(self.radii) >= 1 and all(r > 0 and math.isfinite(r) for r in self.radii), "radii",
             "must be a non-empty list of positive finite radii")
        need(self.model in MODELS, "model", f"must be one of {list(MODELS)}")
        need(self.head_width >= 0, "head_width", "must be >= 0 (0: no head)")
        need(self.head_activation in HEAD_ACTIVATIONS, "head_activation",
             f"must be one of {list(HEAD_ACTIVATIONS)}")
        need(0.0 < self.sort_q <= 1.0, "sort_q", "must be in (0, 1]")
        need(1.0 <= self.p_start < math.inf, "p_start", "must be a finite number >= 1")
        need(self.p_start <= self.p_end < math.inf, "p_end", "must be finite and >= p_start")
        for k in ("p_window", "eps_window"):
            e = getattr(self, k)
            need(len(e) == 2 and 0.0 <= e[0] <= e[1] <= 1.0, k,
                 "must be [start, end], fractions of the training steps with 0 <= start <= end <= 1")
        w = self.ce_weight
        need(len(w) == 2 and all(v >= 0 and math.isfinite(v) for v in w), "ce_weight",
             "must be two non-negative numbers [start, end]")
        need(not (w[0] > 0 and w[1] == 0), "ce_weight",
             "decays geometrically from start to end, so end must be > 0 when start > 0")
        need(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas",
             "must be two numbers in [0, 1)")
        need(self.adam_eps > 0 and math.isfinite(self.adam_eps), "adam_eps", "must be > 0")
        need(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", "must be >= 0")
        # impossible combinations
        if self.model == "lipmlp":
            step = 2 if self.activation == "maxmin" else self.group_size
            bad = [w for w in self.widths if w % step]
            need(not bad, "widths", f"{self.activation} sorts groups of {step}: every width must be a "
                 f"multiple of {step}, not {bad}")
            need(not (self.constraint == "orthogonal" and self.p != 2.0), "p",
                 "orthogonal layers are 1-Lipschitz for l2 only; use p=2 (or model: linf-dist / sortnet "
                 "for l_inf)")
            need(self.head_width == 0, "head_width", "a hybrid head is for model: linf-dist / sortnet only")
            need(not self.standardised_init, "standardised_init",
                 "is for model: linf-dist / sortnet (distance layers) only")
        else:
            need(self.p == math.inf, "p", f"model {self.model!r} is 1-Lipschitz for l_inf: use p=inf")
        if self.loss == "hkr":
            need(self.margin > 0, "margin", "the hkr loss needs margin > 0")
        if self.loss == "mix":
            need(self.margin > 0, "margin", "the mix loss needs margin > 0 (its training radius)")
            need(self.model != "lipmlp", "loss", "the mix loss is for model: linf-dist / sortnet")

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["p"] = "inf" if math.isinf(self.p) else self.p
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def is_linf_model(self) -> bool:
        """True for the l_inf-distance / SortNet models."""
        return self.model != "lipmlp"

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
    return RunConfig.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw key/value mapping of a YAML (or JSON) config file, not yet validated (so that it can
    override a recipe); errors name the file and the problem."""
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
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, "
                          f"got {type(data).__name__}")
    return dict(data)


def _recipe_dir():
    from importlib.resources import files

    return files("lipkit.training") / "recipes"


def recipe_names() -> list[str]:
    """Names of the recipes shipped in ``lipkit/recipes/*.yaml``."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> RunConfig:
    """The shipped recipe ``name`` (e.g. ``"linf-digits"``) as a validated :class:`RunConfig`."""
    names = recipe_names()
    if name not in names:
        raise ConfigError(f"unknown recipe {name!r}; available recipes: {names}")
    import yaml

    data = yaml.safe_load((_recipe_dir() / f"{name}.yaml").read_text())
    return RunConfig.from_dict(data or {})


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
