"""Run configuration: a :class:`RunConfig` in sections, read from a YAML/JSON file or CLI flags, validated.

A config file may be flat (``lr: 0.01``, the form every run folder and recipe so far uses) or sectioned
(``optim: {lr: 0.01}``; sections ``data``, ``network``, ``objective``, ``optim``, ``linf``, ``certify``,
``dp``, see :data:`SECTIONS`), or mix both.  Every error is a :class:`ConfigError` with one message naming the
offending key, its section and value (unknown or misplaced key, key given twice, wrong type,
out-of-range value, or an impossible combination such as a MaxMin activation on an odd width, or l_inf
certificates from l2-orthogonal layers).
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
           "recipe_names", "SECTIONS", "KEY_SECTION", "TOP_LEVEL_KEYS", "DataConfig", "NetworkConfig",
           "ObjectiveConfig", "OptimConfig", "LinfConfig", "CertifyConfig", "DPConfig"]

ACTIVATIONS = ("maxmin", "groupsort", "spline")
CONSTRAINTS = ("orthogonal",)
ORTHOGONAL_METHODS = ("cayley", "retraction", "bjorck")
LOSSES = ("ce", "hinge", "hkr", "mix", "mse")
OPTIMIZERS = ("adam", "sgd")
MODELS = ("lipmlp", "linf-dist", "sortnet", "monotonic-mlp", "lipcnn")
#: the l2 models (orthogonal dense layers; ``lipcnn``: 1-Lipschitz convolutions first)
L2_MODELS = ("lipmlp", "lipcnn")
DOWNSAMPLING = ("pool", "stride", "none")
CNN_CONV_CONSTRAINTS = ("spectral", "aol")
HEAD_ACTIVATIONS = ("relu", "tanh")
SCHEDULES = ("onecycle", "cosine", "constant")
DP_ACCOUNTANTS = ("rdp", "prv")
DP_CALIBRATIONS = ("global", "per-tensor")
TASKS = ("auto", "classification", "binary", "regression")
FIRST_LAYERS = ("one-inf", "two-inf", "inf")


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
class DataConfig:
    """Section ``data``: which data set, its split, and training-time augmentation."""

    dataset: str = "digits"
    test_size: float = 0.25
    data_seed: int = 0
    augment_shift: int = 0


@dataclass
class NetworkConfig:
    """Section ``network``: the architecture (``model`` kind, widths, activations, constraints, head)."""

    model: str = "lipmlp"
    widths: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "maxmin"
    group_size: int = 2
    constraint: str = "orthogonal"
    orthogonal_method: str = "cayley"
    head_width: int = 0
    head_activation: str = "relu"
    sort_q: float = 0.5
    standardised_init: bool = False
    spline_knots: int = 21
    spline_range: float = 3.0
    # model: monotonic-mlp (lipkit.training.monotonic)
    monotonic: Any = None
    lip: float = 1.0
    first_layer: str = "one-inf"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3
    downsample: str = "stride"
    conv_constraint: str = "spectral"


@dataclass
class ObjectiveConfig:
    """Section ``objective``: the training loss and its constants."""

    loss: str = "ce"
    temperature: float = 8.0
    margin: float = 1.0
    alpha: float = 10.0
    tv2_weight: float = 0.0
    task: str = "auto"


@dataclass
class OptimConfig:
    """Section ``optim``: optimiser, learning-rate schedule, epochs and batches."""

    optimizer: str = "adam"
    lr: float = 3e-3
    schedule: str = "onecycle"
    epochs: int = 60
    batch_size: int = 64
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    spline_lr: float = 0.0


@dataclass
class LinfConfig:
    """Section ``linf``: the l_inf training schedule (p relaxation, eps ramp, CE weight)."""

    p_start: float = 8.0
    p_end: float = 1000.0
    p_window: list[float] = field(default_factory=lambda: [0.0, 0.0])
    eps_window: list[float] = field(default_factory=lambda: [0.0, 0.0])
    ce_weight: list[float] = field(default_factory=lambda: [0.1, 0.001])


@dataclass
class CertifyConfig:
    """Section ``certify``: the norm of the certificates, the radii reported and the PGD check."""

    p: float = 2.0
    radii: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75, 1.0])
    pgd_steps: int = 50


@dataclass
class DPConfig:
    """Section ``dp``: differentially private training without clipping (:mod:`lipkit.dp`).

    ``private: true`` trains with Poisson-sampled batches (expected size ``batch_size``), Gaussian noise
    calibrated to the per-example gradient bound, inputs projected onto the l2 ball of radius
    ``input_radius``, and an opacus ``accountant``; the noise multiplier reaches ``epsilon`` at ``delta``
    after ``epochs`` (or is ``noise_multiplier`` when that is > 0).
    """

    private: bool = False
    epsilon: float = 3.0
    delta: float = 1e-5
    input_radius: float = 0.0
    noise_multiplier: float = 0.0
    accountant: str = "rdp"
    calibration: str = "global"
    secure_mode: bool = False


#: section name -> its dataclass; the keys of all sections and :data:`TOP_LEVEL_KEYS` are distinct, so a
#: flat config (``lr: 0.01``) and a sectioned one (``optim: {lr: 0.01}``) mean the same.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "network": NetworkConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "linf": LinfConfig,
    "certify": CertifyConfig,
    "dp": DPConfig,
}
#: the keys that belong to no section
TOP_LEVEL_KEYS: tuple[str, ...] = ("name", "seed", "threads")
#: flat key -> its section
KEY_SECTION: dict[str, str] = {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


class _Alias:
    """``cfg.lr`` reads and writes ``cfg.optim.lr`` (the flat names of every key stay valid)."""

    def __init__(self, section: str, key: str) -> None:
        self.section, self.key = section, key

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.section), self.key)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.section), self.key, value)


@dataclass(init=False)
class RunConfig:
    """Everything a training run needs, in sections; JSON/YAML round-trips through :meth:`to_dict`.

    Sections (see :data:`SECTIONS`): ``data`` (:class:`DataConfig`), ``network`` (:class:`NetworkConfig`),
    ``objective`` (:class:`ObjectiveConfig`), ``optim`` (:class:`OptimConfig`), ``linf``
    (:class:`LinfConfig`), ``certify`` (:class:`CertifyConfig`) and ``dp`` (:class:`DPConfig`); ``name``,
    ``seed`` and ``threads`` are top-level.  Every key has one name in all sections, so ``cfg.optim.lr`` is
    also ``cfg.lr``, the constructor takes flat keys (``RunConfig(lr=0.01)``) or sections
    (``RunConfig(optim={"lr": 0.01})``), and a config file may use either form (or mix them; a key given
    twice is an error).
    :meth:`to_dict` writes the flat form (what ``config.json`` and checkpoints hold, so that run folders
    of every version read alike); ``to_dict(sections=True)`` the sectioned one.

    Model: ``widths`` hidden layers of ``LipLinear(constraint=...)`` each followed by the
    activation, then a ``LipLinear`` to ``num_classes`` outputs (orthogonal rows), so the network
    is 1-Lipschitz in l2 and the margin certificate ``(f_y - max_j f_j) / sqrt(2)`` applies.
    ``activation: spline``: a learnable 1-Lipschitz ``LinearSpline`` per hidden width (``spline_knots``
    knots on ``[-spline_range, spline_range]``), trained with the TV(2) penalty ``tv2_weight * sum tv2``
    and, if ``spline_lr > 0``, its own learning rate (:mod:`lipkit.training.splines`).
    ``model: lipcnn`` (:mod:`lipkit.training.cnn`): the flat square images are reshaped to (1, side, side)
    (``nn.Unflatten``, an isometry), then one ``LipConv2d(kernel_size, constraint=conv_constraint)`` stage
    per entry of ``channels``, each followed by the activation over channels (MaxMin / GroupSort, or one
    ``LinearSpline`` per channel) and downsampled 2x (``downsample: stride``: the conv has stride 2;
    ``pool``: ``L2NormPool2d(2)`` after the activation; ``none``), then ``Flatten``, the ``widths`` dense
    layers (may be ``[]``) and the orthogonal head.
    Loss ``ce``: cross-entropy on ``temperature * (f - margin * sqrt(2) * onehot(y))`` (divided by
    the temperature); ``hinge``: multiclass hinge with ``margin``; ``hkr``: hinge +
    Kantorovich-Rubinstein with weight ``alpha`` (:func:`lipkit.training.trainer.make_loss`).

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

    Monotone tabular models (``model: monotonic-mlp`` on ``compas``, ``heart`` or ``autompg``; see
    :mod:`lipkit.training.monotonic`): a :class:`lipkit.monotonic.MonotonicMLP` of hidden width ``widths[0]``
    and depth ``len(widths)`` (all widths equal), GroupSort activations, first layer ``first_layer`` with
    constant ``lip``; ``monotonic`` is ``None`` (the data set's own constraints), a list of one sign per
    encoded column, a mapping ``{feature name or position: sign}`` or a string (``"priors_count=1,age=0"``
    or ``"0,0,1,..."``).  ``task`` (``auto``: from the data set) is ``binary`` (one logit, loss ``ce`` =
    binary cross-entropy) or ``regression`` (loss ``mse`` on the standardised target); certificates are
    l_inf (``p: inf``).
    """

    name: str
    seed: int
    threads: int
    data: DataConfig
    network: NetworkConfig
    objective: ObjectiveConfig
    optim: OptimConfig
    linf: LinfConfig
    certify: CertifyConfig
    dp: DPConfig

    def __init__(self, name: str = "run", seed: int = 0, threads: int = 2, *,
                 data: DataConfig | Mapping[str, Any] | None = None,
                 network: NetworkConfig | Mapping[str, Any] | None = None,
                 objective: ObjectiveConfig | Mapping[str, Any] | None = None,
                 optim: OptimConfig | Mapping[str, Any] | None = None,
                 linf: LinfConfig | Mapping[str, Any] | None = None,
                 certify: CertifyConfig | Mapping[str, Any] | None = None,
                 dp: DPConfig | Mapping[str, Any] | None = None,
                 **keys: Any) -> None:
        self.name, self.seed, self.threads = name, seed, threads
        given = {"data": data, "network": network, "objective": objective, "optim": optim, "linf": linf,
                 "certify": certify, "dp": dp}
        flat = _flatten({**{k: v for k, v in given.items() if v is not None}, **keys})
        for sec, cls in SECTIONS.items():  # fresh sections: the config owns them
            own = {f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name in flat}
            setattr(self, sec, cls(**own))
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Coerce every value to its type and check ranges and combinations; :class:`ConfigError` names
        the first offending key, its section and value."""

        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key {_label(key)}: {msg} (got {getattr(self, key)!r})")

        self.widths = [_as_int("widths", w) for w in _as_list("widths", self.widths)]
        self.channels = [_as_int("channels", c) for c in _as_list("channels", self.channels)]
        self.kernel_size = _as_int("kernel_size", self.kernel_size)
        self.radii = [_as_float("radii", r) for r in _as_list("radii", self.radii)]
        for k in ("ce_weight", "betas", "p_window", "eps_window"):
            setattr(self, k, [_as_float(k, v) for v in _as_list(k, getattr(self, k))])
        for k in ("test_size", "temperature", "margin", "alpha", "lr", "sort_q", "p_start", "p_end",
                  "adam_eps", "weight_decay", "epsilon", "delta", "input_radius", "noise_multiplier"):
            setattr(self, k, _as_float(k, getattr(self, k)))
        for k in ("data_seed", "group_size", "epochs", "batch_size", "seed", "threads", "pgd_steps",
                  "head_width", "augment_shift"):
            setattr(self, k, _as_int(k, getattr(self, k)))
        for k in ("name", "dataset", "activation", "constraint", "orthogonal_method", "loss", "optimizer",
                  "schedule", "model", "head_activation", "accountant", "calibration", "task", "first_layer",
                  "downsample", "conv_constraint"):
            need(isinstance(getattr(self, k), str), k, "must be a string")
        self.p = _as_p(self.p)
        need(isinstance(self.standardised_init, bool), "standardised_init", "must be true or false")
        for k in ("private", "secure_mode"):
            need(isinstance(getattr(self, k), bool), k, "must be true or false")

        need(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
             "must be a non-empty folder name without '/'")
        from lipkit.training.data import DATASETS

        need(self.dataset in DATASETS, "dataset", f"must be one of {sorted(DATASETS)}")
        need(0.0 < self.test_size < 1.0, "test_size", "must be in (0, 1)")
        need((len(self.widths) >= 1 or self.model == "lipcnn") and all(w >= 1 for w in self.widths), "widths",
             "must be a non-empty list of positive integers (model: lipcnn may have none: [])")
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
        for k in ("tv2_weight", "spline_lr", "spline_range"):
            setattr(self, k, _as_float(k, getattr(self, k)))
        self.spline_knots = _as_int("spline_knots", self.spline_knots)
        need(self.tv2_weight >= 0 and math.isfinite(self.tv2_weight), "tv2_weight", "must be >= 0")
        need(self.spline_lr >= 0 and math.isfinite(self.spline_lr), "spline_lr",
             "must be >= 0 (0: the same learning rate as the other parameters)")
        need(self.spline_knots >= 3, "spline_knots", "must be >= 3")
        need(self.spline_range > 0 and math.isfinite(self.spline_range), "spline_range", "must be > 0")
        need(self.activation == "spline" or (self.tv2_weight == 0 and self.spline_lr == 0),
             "tv2_weight" if self.tv2_weight else "spline_lr", "is for activation: spline only")
        # impossible combinations
        cnn_keys = ("channels", "kernel_size", "downsample", "conv_constraint")
        if self.model == "lipcnn":
            need(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
                 "must be a non-empty list of positive integers (output channels of each conv stage)")
            need(self.kernel_size >= 1, "kernel_size", "must be >= 1")
            need(self.downsample in DOWNSAMPLING, "downsample", f"must be one of {list(DOWNSAMPLING)}")
            need(self.conv_constraint in CNN_CONV_CONSTRAINTS, "conv_constraint",
                 f"must be one of {list(CNN_CONV_CONSTRAINTS)}")
        else:
            default = NetworkConfig()
            for k in cnn_keys:
                need(getattr(self, k) == getattr(default, k), k, "is for model: lipcnn only")
        if self._validate_tabular(need):
            pass
        elif self.model in L2_MODELS:
            step = 1 if self.activation == "spline" else 2 if self.activation == "maxmin" else self.group_size
            for key in ("widths", "channels") if self.model == "lipcnn" else ("widths",):
                bad = [w for w in getattr(self, key) if w % step]
                need(not bad, key, f"{self.activation} sorts groups of {step}: every entry must be a "
                     f"multiple of {step}, not {bad}")
            need(not (self.constraint == "orthogonal" and self.p != 2.0), "p",
                 "orthogonal layers are 1-Lipschitz for l2 only; use p=2 (or model: linf-dist / sortnet "
                 "for l_inf)")
            need(self.head_width == 0, "head_width", "a hybrid head is for model: linf-dist / sortnet only")
            need(not self.standardised_init, "standardised_init",
                 "is for model: linf-dist / sortnet (distance layers) only")
        else:
            need(self.p == math.inf, "p", f"model {self.model!r} is 1-Lipschitz for l_inf: use p=inf")
        need(self.accountant in DP_ACCOUNTANTS, "accountant", f"must be one of {list(DP_ACCOUNTANTS)}")
        need(self.calibration in DP_CALIBRATIONS, "calibration", f"must be one of {list(DP_CALIBRATIONS)}")
        need(self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier), "noise_multiplier",
             "must be >= 0 (0: derived from epsilon)")
        if self.private:
            need(self.input_radius > 0 and math.isfinite(self.input_radius), "input_radius",
                 "private training needs the input radius R > 0 (inputs are projected onto the l2 ball of "
                 "radius R; e.g. sqrt(784) = 28 bounds 784 pixels in [0, 1])")
            need(self.epsilon > 0 and math.isfinite(self.epsilon), "epsilon", "must be > 0")
            need(0 < self.delta < 1, "delta", "must be in (0, 1)")
            need(self.model in L2_MODELS, "model", "private training covers the l2 models lipmlp and lipcnn")
            need(self.p == 2.0, "p", "private training covers l2 models only")
        if self.loss == "hkr":
            need(self.margin > 0, "margin", "the hkr loss needs margin > 0")
        if self.loss == "mix":
            need(self.margin > 0, "margin", "the mix loss needs margin > 0 (its training radius)")
            need(self.model not in L2_MODELS, "loss", "the mix loss is for model: linf-dist / sortnet")

    def _validate_tabular(self, need: Any) -> bool:
        """The checks of ``model: monotonic-mlp`` and of the tabular data sets; True for a monotone run (then
        the image-model combinations are not checked)."""
        from lipkit.training.data import TABULAR_DATASETS

        need(self.task in TASKS, "task", f"must be one of {list(TASKS)}")
        need(self.first_layer in FIRST_LAYERS, "first_layer", f"must be one of {list(FIRST_LAYERS)}")
        self.lip = _as_float("lip", self.lip)
        need(self.lip > 0 and math.isfinite(self.lip), "lip", "must be a finite number > 0")
        tabular = self.dataset in TABULAR_DATASETS
        if self.model != "monotonic-mlp":
            need(not tabular, "dataset", f"the tabular data set {self.dataset!r} trains with model: "
                 "monotonic-mlp (e.g. lipkit train --recipe monotonic-" + f"{self.dataset})")
            need(self.task in ("auto", "classification"), "task", "binary and regression are for model: "
                 "monotonic-mlp on a tabular data set")
            need(self.loss != "mse", "loss", "mse is for regression (model: monotonic-mlp)")
            need(self.monotonic is None, "monotonic", "is for model: monotonic-mlp")
            return False
        from lipkit.training.monotonic import normalise_monotonic_spec, tabular_task

        need(tabular, "dataset",
             f"model monotonic-mlp trains on a tabular data set: {sorted(TABULAR_DATASETS)}")
        task = tabular_task(self.dataset)
        need(self.task in ("auto", task), "task", f"data set {self.dataset!r} is a {task} task")
        need(self.loss == ("mse" if task == "regression" else "ce"), "loss",
             "use ce (binary cross-entropy of the single logit) for a binary task and mse for regression")
        need(self.p == math.inf, "p", "monotone tabular models are certified in l_inf: use p=inf")
        need(self.activation == "groupsort" and self.group_size == 2, "activation",
             "model monotonic-mlp uses GroupSort of size 2: set activation: groupsort (group_size 2)")
        need(len(set(self.widths)) == 1 and self.widths[0] % 2 == 0, "widths",
             "model monotonic-mlp has len(widths) hidden layers of one even width, e.g. [128, 128]")
        need(not self.private, "private", "private training is not available for model monotonic-mlp")
        need(self.augment_shift == 0, "augment_shift", "is for images")
        need(not self.standardised_init, "standardised_init", "is for model: linf-dist / sortnet")
        need(self.head_width == 0, "head_width", "is for model: linf-dist / sortnet")
        try:
            self.monotonic = normalise_monotonic_spec(self.monotonic)
        except ValueError as exc:
            raise ConfigError(f"config key {_label('monotonic')}: {exc}") from None
        return True

    # ----------------------------------------------------------------- I/O
    def to_dict(self, sections: bool = False) -> dict[str, Any]:
        """The config as plain data: flat keys (default; the form of ``config.json`` and checkpoints) or,
        with ``sections=True``, ``{"name", "seed", "threads", "data": {...}, "network": {...}, ...}``.
        ``p = inf`` is written as the string ``"inf"`` (JSON has no infinity)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in TOP_LEVEL_KEYS}
        for sec in SECTIONS:
            part = dataclasses.asdict(getattr(self, sec))
            if sec == "certify":
                part["p"] = "inf" if math.isinf(self.p) else self.p
            if sections:
                out[sec] = part
            else:
                out.update(part)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def is_linf_model(self) -> bool:
        """True for the l_inf-distance / SortNet models."""
        return self.model in ("linf-dist", "sortnet")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A validated config from flat keys, sections, or a mix (unknown keys are refused by name)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a mapping of keys to values, got {type(data).__name__}")
        return cls(**_flatten(data))

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes`` applied: flat keys or section mappings (``None`` values are
        ignored, so unset CLI flags change nothing)."""
        d = self.to_dict()
        d.update({k: v for k, v in _flatten(changes).items() if v is not None})
        return RunConfig.from_dict(d)


for _sec, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        setattr(RunConfig, _f.name, _Alias(_sec, _f.name))
del _sec, _cls, _f


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and type(value) in SECTIONS.values()


def _label(key: str) -> str:
    """``'lr' in section 'optim'`` (``'name'`` for a top-level key)."""
    return f"{key!r} in section {KEY_SECTION[key]!r}" if key in KEY_SECTION else repr(key)


def _known_keys_hint(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [*TOP_LEVEL_KEYS, *KEY_SECTION], n=1)
    hint = f" (did you mean {_label(close[0])}?)" if close else ""
    return (f"{hint}; top-level keys: {list(TOP_LEVEL_KEYS)}; sections: "
            + ", ".join(f"{sec} {sorted(k for k, s in KEY_SECTION.items() if s == sec)}" for sec in SECTIONS))


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``key -> value`` from a flat, sectioned or mixed mapping; unknown or misplaced keys and keys
    given twice raise :class:`ConfigError` naming the key and its section."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}

    def put(key: str, value: Any, place: str) -> None:
        if key in flat:
            raise ConfigError(f"config key {key!r} is given twice ({where[key]} and {place})")
        flat[key], where[key] = value, place

    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r}")
        if key in SECTIONS:
            if _is_section(value):
                value = dataclasses.asdict(value)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config section {key!r} must be a mapping of keys to values, "
                                  f"got {value!r}")
            for sub, v in value.items():
                if KEY_SECTION.get(sub) == key:
                    put(sub, v, f"in section {key!r}")
                elif sub in KEY_SECTION or sub in TOP_LEVEL_KEYS:
                    home = f"in section {KEY_SECTION[sub]!r}" if sub in KEY_SECTION else "at the top level"
                    raise ConfigError(f"config key {sub!r} is not in section {key!r}: it belongs {home}")
                else:
                    keys = sorted(k for k, s in KEY_SECTION.items() if s == key)
                    raise ConfigError(f"unknown config key {sub!r} in section {key!r}; the keys of section "
                                      f"{key!r} are {keys}")
        elif key in KEY_SECTION or key in TOP_LEVEL_KEYS:
            put(key, value, "at the top level")
        else:
            raise ConfigError(f"unknown config key {key!r} at the top level{_known_keys_hint(key)}")
    return flat


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
        raise ConfigError(f"config key {_label(key)}: must be a list, got {value!r}")
    return list(value)


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"config key {_label(key)}: must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int):
        return value
    raise ConfigError(f"config key {_label(key)}: must be an integer, got {value!r}")


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"config key {_label(key)}: must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {_label(key)}: must be a number, got {value!r}") from None
    if math.isnan(out):
        raise ConfigError(f"config key {_label(key)}: must be a number, got NaN")
    return out


def _as_p(value: Any) -> float:
    from lipkit.bounds import normalize_p

    try:
        return normalize_p(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key {_label('p')}: {exc}") from None
