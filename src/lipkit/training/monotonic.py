"""Training side of monotone tabular models: ``lipkit train --recipe monotonic-compas | -heart | -autompg``.

A run config with ``model: monotonic-mlp`` on a tabular data set (``compas``, ``heart``, ``autompg``:
:class:`lipkit.training.data.TabularSplit`, a random 60/20/20 split from ``data_seed``) trains, through the
same :class:`lipkit.training.trainer.Trainer` (run folders, checkpoints, exact resume), a
:class:`lipkit.monotonic.MonotonicMLP`

    f(x) = g(x) + lam * x C,     lam = max(lip, L (1 + 2^-10)),  L = lipschitz_bound(g, 1, "inf"),

(Kitouni, Nolte and Williams, "Robust and provably monotonic networks", 2023) of hidden width
``widths[0]`` and depth ``len(widths)``, GroupSort activations and first layer ``first_layer``.  What this
module adds to the trainer:

* :func:`resolve_monotonic`: the constraint of each encoded column, from ``monotonic`` given by position
  (a list of signs, or ``{3: 1}``) or by feature name (``{"priors_count": 1}``); ``None`` takes the data
  set's own constraints (the literature's).  An unknown name is a :class:`ConfigError` listing the names;
* :class:`MonotonicStrategy`: the loss (``binary``: one logit deciding ``sign f``, binary cross-entropy;
  ``regression``: squared error on the target standardised with the training split's mean and standard
  deviation), the running metrics (train accuracy, or train MSE in the target's unit) and the final
  validation and test metrics;
* :func:`train_tabular`: train, :func:`lipkit.export` (whose ``lipkit_export_prepare`` / ``_check`` hooks
  freeze ``lam`` and re-check monotonicity on the exported model), save the run folder (the plain weights
  and ``monotonic.json``: the frozen ``lam``, the constraints, the target scaling), certify and report;
* :func:`certify_tabular`: binary runs, the certified l_inf radius of every test record from
  :func:`lipkit.certify.compute_certificates` (the single-logit rule ``r = (s f(x) - allowance) / Lip_inf(f)``
  with ``Lip_inf(f) = lipschitz_bound(model, "inf")``, the wrapper's own registered bound
  ``Lip_inf(g) + lam k``, never ``lam``), checked by an l_inf PGD attack on every certified record at
  0.999 x its radius (a broken certificate would be a bug).  Regression runs have no decision to certify:
  for each radius ``r`` the bound ``std_y Lip_inf(f) r`` of the change of the prediction (target unit)
  over the l_inf ball, checked by PGD maximising the change;
* :func:`write_tabular_report`: ``report.md`` with, per monotone feature, a partial-dependence plot
  (``pd_<i>_<name>.png``) and the worst violation :func:`lipkit.check_monotonic` finds on the test rows.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipkit.bounds import lipschitz_bound
from lipkit.monotonic import MonotonicMLP, MonotonicNetwork, check_monotonic
from lipkit.nn import GroupSort
from lipkit.training.config import ConfigError
from lipkit.training.strategy import StepState, TrainingStrategy

if TYPE_CHECKING:
    from lipkit.training.config import RunConfig
    from lipkit.training.data import TabularSplit
    from lipkit.training.trainer import Trainer

__all__ = ["TASKS_OF", "tabular_task", "normalise_monotonic_spec", "resolve_monotonic",
           "build_monotonic_model", "MonotonicStrategy", "target_scaling", "train_tabular",
           "save_tabular_run", "load_tabular_run", "certify_tabular", "monotonic_checks",
           "partial_dependence", "write_tabular_report", "SIDECAR"]

#: the task of each tabular data set
TASKS_OF = {"compas": "binary", "heart": "binary", "autompg": "regression"}
#: the run folder's record of the exported wrapper (frozen lam, constraints, target scaling)
SIDECAR = "monotonic.json"


def tabular_task(dataset: str) -> str:
    """``"binary"`` or ``"regression"``: the task of a tabular data set."""
    if dataset not in TASKS_OF:
        raise ValueError(f"{dataset!r} is not a tabular data set; choose one of {sorted(TASKS_OF)}")
    return TASKS_OF[dataset]


# --------------------------------------------------------------------------- the constraint spec


def _sign(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: the sign must be -1, 0 or +1, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{where}: the sign must be -1, 0 or +1, got {value!r}") from None
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (-1.0, 0.0, 1.0):
        return int(value)
    raise ValueError(f"{where}: the sign must be -1, 0 or +1, got {value!r}")


def normalise_monotonic_spec(spec: Any) -> list[int] | dict[str, int] | None:
    """The config value ``monotonic`` in a canonical form, its signs checked (names are checked against the
    data set by :func:`resolve_monotonic`).  Mapping keys become strings (a position ``3`` is ``"3"``), so
    the form survives the JSON of ``config.json`` and checkpoints unchanged (a resumed run compares it).

    ``None`` (or ``""``, ``"dataset"``): the data set's own constraints.  A list: one sign per encoded
    column.  A mapping ``{name or position: sign}``.  A string: ``"priors_count=1, juv_fel_count=1"`` (a
    mapping) or ``"0, 0, 1, -1"`` (a list).
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("", "dataset", "default"):
            return None
        if "=" in text or ":" in text:
            out: dict[str, int] = {}
            for part in (p for p in text.split(",") if p.strip()):
                key, sep, val = part.replace(":", "=").partition("=")
                key = key.strip()
                if not sep or not key:
                    raise ValueError(f"{part.strip()!r} is not NAME=SIGN (e.g. priors_count=1)")
                out[key] = _sign(val, f"feature {key!r}")
            return out
        spec = [v for v in text.replace(",", " ").split() if v]
    if isinstance(spec, Mapping):
        out = {}
        for key, val in spec.items():
            if isinstance(key, bool) or not isinstance(key, (str, int, np.integer)):
                raise ValueError(f"keys are feature names or positions, got {key!r}")
            out[str(int(key)) if isinstance(key, (int, np.integer)) else key] = _sign(val, f"feature {key!r}")
        if not out:
            raise ValueError("an empty mapping constrains no feature (leave monotonic unset for the data "
                             "set's own constraints)")
        return out
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("an empty list constrains no feature")
        return [_sign(v, f"entry {i}") for i, v in enumerate(spec)]
    raise ValueError(f"must be a list of signs, a mapping {{feature: sign}} or a string, got {spec!r}")


def resolve_monotonic(spec: Any, split: TabularSplit, dataset: str | None = None) -> list[int]:
    """One sign per encoded column of ``split`` from the config's ``monotonic`` (see
    :func:`normalise_monotonic_spec`).

    Mapping keys are feature names (``split.feature_names``: numeric columns by name, one-hot columns as
    ``"race=Caucasian"``) or positions; a string of digits that is not a name is a position.

    Raises:
        ConfigError: a name not in the data set (the message lists the valid names), a position out of
            range, a list of the wrong length, or no constrained feature at all.
    """
    names = list(split.feature_names)
    d = len(names)
    label = "config key 'monotonic' in section 'network'"
    ds = dataset or split.name
    try:
        spec = normalise_monotonic_spec(spec)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    if spec is None:
        vec = split.monotonic_vector()
    elif isinstance(spec, list):
        if len(spec) != d:
            raise ConfigError(f"{label}: {len(spec)} signs given, but data set {ds!r} has {d} encoded "
                              f"columns {names}; give one sign per column or a mapping {{name: sign}}")
        vec = list(spec)
    else:
        vec = [0] * d
        for key, sign in spec.items():
            if isinstance(key, str) and key in names:
                idx = names.index(key)
            elif key.isdigit():
                idx = int(key)
                if not 0 <= idx < d:
                    raise ConfigError(f"{label}: position {idx} is outside 0..{d - 1} (data set {ds!r} has "
                                      f"{d} encoded columns {names})")
            else:
                import difflib

                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{label}: data set {ds!r} has no feature {key!r}{hint}; valid names: "
                                  f"{names}")
            vec[idx] = sign
    if not any(vec):
        raise ConfigError(f"{label}: no feature of data set {ds!r} is constrained; give at least one +1 "
                          "or -1")
    return [int(v) for v in vec]


# --------------------------------------------------------------------------- the model


def _dims(cfg: RunConfig) -> tuple[int, int]:
    return int(cfg.widths[0]), len(cfg.widths)


def build_monotonic_model(cfg: RunConfig, split: TabularSplit, *, plain: bool = False) -> MonotonicNetwork:
    """The run's :class:`MonotonicMLP` (``plain=False``; weights drawn from the current torch RNG), or its
    exported architecture (``plain=True``: the same wrapper over plain ``nn.Linear`` and GroupSort layers,
    to reload a run folder's weights; freeze its ``lam`` after loading them)."""
    vec = resolve_monotonic(cfg.monotonic, split, cfg.dataset)
    hidden, depth = _dims(cfg)
    d = split.num_features
    if not plain:
        return MonotonicMLP(d, hidden, depth, monotonic=vec, lip=cfg.lip, out_features=1,
                            feature_names=split.feature_names, activation="groupsort",
                            first_layer=cfg.first_layer)
    layers: list[nn.Module] = [nn.Linear(d, hidden)]
    for i in range(depth):
        layers += [GroupSort(2), nn.Linear(hidden, 1 if i == depth - 1 else hidden)]
    return MonotonicNetwork(nn.Sequential(*layers), vec, feature_names=split.feature_names, lip=cfg.lip,
                            in_features=d)


def target_scaling(split: TabularSplit) -> tuple[float, float]:
    """``(mean, std)`` of the training targets for a regression (the network predicts ``(y - mean) / std``);
    ``(0, 1)`` for a binary task."""
    if split.task != "regression":
        return 0.0, 1.0
    y = split.y_train.double()
    std = float(y.std())
    return float(y.mean()), std if std > 0 else 1.0


# --------------------------------------------------------------------------- the strategy


class MonotonicStrategy(TrainingStrategy):
    """The trainer's hooks for a monotone tabular run (module docstring): loss, running metrics and the
    final validation / test metrics.  The model and ``lam`` need nothing: ``lam`` is derived from the
    weights at every training-mode forward, so a resumed run recomputes it from the checkpoint's weights."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.task = tabular_task(cfg.dataset)
        self.mean, self.std = 0.0, 1.0
        self._sq = 0.0
        self._n = 0
        self._lip: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.mean, self.std = target_scaling(trainer.split)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._sq, self._n, self._lip = 0.0, 0, None

    def loss(self, trainer: Trainer, state: StepState) -> torch.Tensor:
        f = state.logits[:, 0]
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(f, state.y.to(f.dtype))
        return ((f - (state.y.to(f.dtype) - self.mean) / self.std) ** 2).mean()

    def after_step(self, trainer: Trainer, state: StepState) -> None:
        if self.task == "regression":
            with torch.no_grad():
                pred = state.logits[:, 0].double() * self.std + self.mean
                self._sq += float(((pred - state.y.double()) ** 2).sum())
                self._n += len(state.y)

    def nominal(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary: correctness of ``sign f`` and ``|f| / Lip_inf(f)`` (the bound read at the first batch of
        each epoch; a training signal, no round-off allowance, never reported as a certificate).
        Regression: no decision (zeros; the epoch record gets ``train_mse`` instead)."""
        f = logits[:, 0].double()
        if self.task == "regression":
            z = torch.zeros_like(f)
            return z.bool(), z
        correct = (f > 0) == (y > 0.5)
        if self._lip is None:
            self._lip = lipschitz_bound(model, math.inf)
        lip = self._lip
        r = f.abs() / lip if lip > 0 else torch.full_like(f, math.inf)
        return correct, torch.where(correct, r, torch.zeros_like(r))

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.task == "regression":
            record.pop("train_accuracy", None)
            record.pop("nominal_certified", None)
            record["train_mse"] = self._sq / max(self._n, 1)

    def final_metrics(self, trainer: Trainer) -> dict[str, Any]:
        """Validation and test accuracy (binary) or MSE in the target's unit (regression)."""
        model, split = trainer.model, trainer.split
        was = model.training
        model.eval()
        out: dict[str, Any] = {}
        try:
            with torch.no_grad():
                for part in ("val", "test"):
                    x, y = getattr(split, f"x_{part}"), getattr(split, f"y_{part}")
                    f = model(x)[:, 0].double()
                    if self.task == "binary":
                        out[f"{part}_accuracy"] = float(((f > 0) == (y > 0.5)).double().mean())
                    else:
                        out[f"{part}_mse"] = float(((f * self.std + self.mean - y.double()) ** 2).mean())
        finally:
            model.train(was)
        return out


# --------------------------------------------------------------------------- run folders


def save_tabular_run(run_dir: str | Path, cfg: RunConfig, plain: MonotonicNetwork,
                     split: TabularSplit) -> None:
    """The run folder of an exported wrapper: ``config.json`` and ``weights.safetensors``
    (:func:`lipkit.training.runs.save_run`) and :data:`SIDECAR` with the frozen ``lam``, the constraints
    by name and the target scaling (what :func:`load_tabular_run` needs besides the weights)."""
    from lipkit.training.checkpoints import atomic_write_bytes
    from lipkit.training.runs import save_run

    if not plain.frozen:
        raise ValueError("save_tabular_run: save the exported model (lipkit.export freezes lam)")
    run_dir = Path(run_dir)
    save_run(run_dir, cfg, plain)
    mean, std = target_scaling(split)
    c = plain.constraints[:, 0].tolist()
    side = {"lam": plain.slope(), "body_bound_1_inf": lipschitz_bound(plain.body, 1, math.inf),
            "task": split.task, "feature_names": list(split.feature_names),
            "monotonic": {n: int(v) for n, v in zip(split.feature_names, c, strict=True) if v},
            "target_mean": mean, "target_std": std,
            "prediction": ("class 1 when f(x) > 0" if split.task == "binary" else
                           "target = target_mean + target_std * f(x)")}
    atomic_write_bytes(run_dir / SIDECAR, json.dumps(side, indent=2).encode())


def load_tabular_run(run_dir: str | Path, cfg: RunConfig, state: dict) -> tuple[MonotonicNetwork, Any]:
    """``(exported wrapper in eval mode, TabularSplit)`` of a run folder: the plain architecture with the
    saved weights and the saved ``lam`` (:meth:`MonotonicNetwork.freeze` checks it is still >= the body's
    l_1 -> l_inf bound).  Problems raise :class:`lipkit.training.runs.RunError` naming the file."""
    from lipkit.training.data import split_for_config
    from lipkit.training.runs import RunError

    run_dir = Path(run_dir)
    path = run_dir / SIDECAR
    try:
        side = json.loads(path.read_text())
        lam = float(side["lam"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise RunError(f"{path} is missing or unreadable: a monotonic run folder keeps its frozen lam there; "
                       "re-run lipkit train") from None
    split = split_for_config(cfg)
    if side.get("feature_names", list(split.feature_names)) != list(split.feature_names):
        raise RunError(f"{path}: the run was trained on the encoded columns {side['feature_names']}, but "
                       f"data set {cfg.dataset!r} now gives {list(split.feature_names)}; re-run lipkit train")
    model = build_monotonic_model(cfg, split, plain=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{run_dir / 'weights.safetensors'} does not hold the weights of the run's config: "
                       f"{first}") from None
    try:
        model.freeze(lam)
    except ValueError as exc:
        raise RunError(f"{path}: {exc}") from None
    return model.eval(), split


# --------------------------------------------------------------------------- certification


def _linf_attack(model: nn.Module, x: torch.Tensor, direction: torch.Tensor, rho: torch.Tensor, *,
                 steps: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """l_inf PGD (sign-gradient steps of ``2.5 rho / steps``, random starts after the first) maximising
    ``direction * f(x')`` over ``||x' - x||_inf <= rho`` (per row); returns the best ``x'`` found."""
    x = x.detach()
    rho = rho.detach().to(x.dtype)[:, None]
    with torch.no_grad():
        best = x.clone()
        best_val = direction * model(x)[:, 0]
    step = 2.5 * rho / max(steps, 1)
    for r in range(restarts):
        delta = torch.zeros_like(x) if r == 0 else (torch.rand(x.shape, generator=generator) * 2 - 1) * rho
        for _ in range(steps):
            delta.requires_grad_(True)
            obj = (direction * model(x + delta)[:, 0]).sum()
            (g,) = torch.autograd.grad(obj, delta)
            delta = torch.maximum(torch.minimum(delta.detach() + step * g.sign(), rho), -rho)
        with torch.no_grad():
            cand = x + delta
            val = direction * model(cand)[:, 0]
            better = val > best_val
            best[better], best_val[better] = cand[better], val[better]
    return best


def certify_tabular(model: MonotonicNetwork, split: TabularSplit, radii: Sequence[float], *,
                    pgd_steps: int = 50, seed: int = 0, restarts: int = 2) -> dict[str, Any]:
    """Certify the exported wrapper on the test split (module docstring); ``radius_per_record`` is in the
    split's encoded (standardised) units, in test-split order."""
    from lipkit.certify.margin import compute_certificates

    t0 = time.perf_counter()
    model.eval()
    lip = lipschitz_bound(model, math.inf)  # the wrapper's own registered rule: Lip_inf(g) + lam k
    x, y = split.x_test, split.y_test
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"dataset": split.name, "task": split.task, "n_test": len(y), "p": "inf",
                           "lipschitz_bound": lip, "lam": model.slope(),
                           "body_bound_inf": lipschitz_bound(model.body, math.inf)}
    if split.task == "binary":
        res = compute_certificates(model, x, math.inf, lipschitz=lip)
        yl = (y > 0.5).long()
        correct = res.prediction == yl
        radius = torch.where(correct, res.radius, torch.zeros_like(res.radius))
        out.update(clean_accuracy=float(correct.double().mean()), roundoff_rigorous=res.roundoff_rigorous,
                   certified_accuracy={f"{r:g}": float((radius >= r).double().mean()) for r in radii})
        pgd: dict[str, Any] = {}
        direction = 1.0 - 2.0 * res.prediction.to(x.dtype)  # push f towards the other class
        broken = 0
        for r in radii:
            entry: dict[str, Any] = {"certified_points": int((radius >= r).sum()), "broken": 0,
                                     "steps": pgd_steps}
            if pgd_steps > 0:
                idx = correct.nonzero().squeeze(1)
                adv = _linf_attack(model, x[idx], direction[idx], torch.full((len(idx),), float(r)),
                                   steps=pgd_steps, restarts=restarts, generator=gen)
                with torch.no_grad():
                    flipped = (model(adv)[:, 0] > 0).long() != res.prediction[idx]
                entry["broken"] = int((flipped & (radius[idx] >= r)).sum())
                entry["pgd_robust_accuracy"] = float((~flipped).double().sum()) / len(y)
                broken += entry["broken"]
            pgd[f"{r:g}"] = entry
        own: dict[str, Any] = {}
        cert = (res.radius > 0).nonzero().squeeze(1)
        if pgd_steps > 0 and len(cert):
            flips = {}
            for factor in (0.999, 3.0):
                adv = _linf_attack(model, x[cert], direction[cert], factor * res.radius[cert].float(),
                                   steps=pgd_steps, restarts=restarts, generator=gen)
                with torch.no_grad():
                    flips[factor] = (model(adv)[:, 0] > 0).long() != res.prediction[cert]
            own = {"n_certified": len(cert), "n_broken": int(flips[0.999].sum()), "factor": 0.999,
                   "attack_success_at_3x_radius": float(flips[3.0].double().mean())}
            broken += own["n_broken"]
        out.update(pgd=pgd, pgd_own_radius=own, certificates_broken=broken,
                   radius_per_record=res.radius.tolist(), prediction=res.prediction.tolist(),
                   radius_quantiles={f"{q:g}": float(radius.quantile(q))
                                     for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
                   radii_sorted=radius.sort().values.tolist())
    else:
        mean, std = target_scaling(split)
        with torch.no_grad():
            f = model(x)[:, 0]
            m64 = _float64(model)
            f64 = m64(x.double())[:, 0]
        pred = f.double() * std + mean
        out.update(mse=float(((pred - y.double()) ** 2).mean()), target_mean=mean, target_std=std,
                   prediction=pred.tolist(), max_float32_roundoff=float((f.double() - f64).abs().max() * std))
        change: dict[str, Any] = {}
        broken = 0
        for r in radii:
            bound = std * lip * r
            entry = {"output_change_bound": bound, "steps": pgd_steps}
            if pgd_steps > 0:
                worst = 0.0
                for sgn in (1.0, -1.0):
                    d = torch.full((len(y),), sgn)
                    adv = _linf_attack(model, x, d, torch.full((len(y),), float(r)), steps=pgd_steps,
                                       restarts=restarts, generator=gen)
                    adv = torch.maximum(torch.minimum(adv.double(), x.double() + r), x.double() - r)
                    with torch.no_grad():
                        worst = max(worst, float((m64(adv)[:, 0] - f64).abs().max()) * std)
                entry["pgd_max_change"] = worst
                entry["broken"] = int(worst > bound * (1 + 1e-9))
                broken += entry["broken"]
            change[f"{r:g}"] = entry
        out.update(output_change=change, certificates_broken=broken)
    out["certify_seconds"] = time.perf_counter() - t0
    return out


def _float64(model: MonotonicNetwork) -> MonotonicNetwork:
    """A float64 copy computing the exact-arithmetic function of the float32 weights and frozen ``lam``."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    return twin


# --------------------------------------------------------------------------- report


def monotonic_checks(model: MonotonicNetwork, split: TabularSplit) -> dict[str, Any]:
    """:func:`lipkit.check_monotonic` on the test rows, per constrained feature: direction, raw worst move
    against the constraint (float32), worst beyond the measured round-off, and the count of violations."""
    out: dict[str, Any] = {}
    names = list(split.feature_names)
    for i, c in enumerate(model.constraints[:, 0].tolist()):
        if not c:
            continue
        res = check_monotonic(model, split.x_test, features=[i], feature_names=names)
        out[names[i]] = {"direction": int(c), "worst": res.worst, "worst_beyond_roundoff":
                         res.worst_beyond_roundoff, "worst_float64": res.worst_float64,
                         "violations": res.violations, "checked_pairs": res.checked_pairs}
    return out


def partial_dependence(model: MonotonicNetwork, split: TabularSplit, feature: str, n: int = 41,
                       ice: int = 30) -> dict[str, Any]:
    """The partial dependence of the model's output on ``feature``: the mean over the test rows of the
    output with the feature set to each of ``n`` values spanning its training range (Friedman 2001), as a
    probability of class 1 (binary) or in the target's unit (regression); plus ``ice`` individual curves.
    ``x`` is in the feature's own unit when it is a standardised numeric column."""
    j = list(split.feature_names).index(feature)
    lo, hi = float(split.x_train[:, j].min()), float(split.x_train[:, j].max())
    grid = torch.linspace(lo, hi, n)
    mean, std = target_scaling(split)
    xt = split.x_test
    rows = xt[None].repeat(n, 1, 1)
    rows[:, :, j] = grid[:, None]
    model.eval()
    with torch.no_grad():
        f = model(rows.reshape(-1, xt.shape[1]))[:, 0].double().reshape(n, -1)
    out = torch.sigmoid(f) if split.task == "binary" else f * std + mean
    raw = feature in split.raw_std
    xs = grid.double() * split.raw_std[feature] + split.raw_mean[feature] if raw else grid.double()
    return {"x": xs.tolist(), "pd": out.mean(1).tolist(), "ice": out[:, :ice].T.tolist(), "raw_unit": raw}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "feature"


def _plot_pd(curve: dict[str, Any], feature: str, direction: int, check: dict[str, Any], task: str,
             path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for c in curve["ice"]:
        ax.plot(curve["x"], c, color="0.75", lw=0.6)
    ax.plot(curve["x"], curve["pd"], color="C0", lw=2.2, label="partial dependence (mean)")
    ax.set_xlabel(feature + ("" if curve["raw_unit"] else " (encoded)"))
    ax.set_ylabel("P(class 1)" if task == "binary" else "prediction")
    ax.set_title(f"{feature}: {'increasing' if direction > 0 else 'decreasing'}; check_monotonic "
                 f"{check['violations']} violations", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_tabular_report(run_dir: str | Path, metrics: dict[str, Any], cfg: RunConfig,
                         model: MonotonicNetwork, split: TabularSplit) -> dict[str, Path]:
    """Write the partial-dependence plots, ``metrics.json``, ``certified_radii.csv`` (binary),
    ``certified_accuracy.png`` (binary) and ``report.md`` into ``run_dir``; adds ``monotonic_check`` and
    ``partial_dependence`` (file names) to ``metrics``."""
    from lipkit.training.checkpoints import atomic_write_bytes
    from lipkit.training.report import _plot

    run_dir = Path(run_dir)
    checks = monotonic_checks(model, split)
    names = list(split.feature_names)
    files: dict[str, str] = {}
    for feat, chk in checks.items():
        fname = f"pd_{names.index(feat)}_{_slug(feat)}.png"
        _plot_pd(partial_dependence(model, split, feat), feat, chk["direction"], chk, split.task,
                 run_dir / fname)
        files[feat] = fname
    metrics["monotonic_check"] = checks
    metrics["partial_dependence"] = files
    paths = {"metrics": run_dir / "metrics.json", "report": run_dir / "report.md"}
    per_record = ("radii_sorted", "radius_per_record", "prediction")
    public = {k: v for k, v in metrics.items() if k not in per_record}
    atomic_write_bytes(paths["metrics"], json.dumps(public, indent=2, sort_keys=True).encode())
    hidden, depth = _dims(cfg)
    lines = [f"# lipkit run `{cfg.name}`", "",
             f"Data: **{split.name}** ({split.task}), random 60/20/20 split of seed {cfg.data_seed}, numeric "
             "columns standardised and categorical ones one-hot encoded on the training rows; test split: "
             f"{metrics['n_test']} records.  ",
             f"Model: `MonotonicMLP` (Kitouni, Nolte and Williams 2023), hidden width {hidden}, depth "
             f"{depth}, GroupSort, first layer `{cfg.first_layer}` with lip {cfg.lip:g}, {cfg.epochs} "
             f"epochs; f(x) = g(x) + lam x C with lam = {metrics['lam']:.9g} derived from the weights "
             "(frozen at export and re-checked there).  ",
             f"Sound l_inf Lipschitz bound of the exported wrapper (its own rule Lip_inf(g) + lam k, never "
             f"lam): **{metrics['lipschitz_bound']:.9g}** (body: {metrics['body_bound_inf']:.6g}).", ""]
    if split.task == "binary":
        paths["plot"] = run_dir / "certified_accuracy.png"
        paths["radii"] = run_dir / "certified_radii.csv"
        _plot(metrics, paths["plot"])
        csv = ["record,label,prediction,radius"] + [
            f"{i},{int(yv > 0.5)},{p},{r:.9g}" for i, (yv, p, r) in
            enumerate(zip(split.y_test.tolist(), metrics["prediction"], metrics["radius_per_record"],
                          strict=True))]
        atomic_write_bytes(paths["radii"], ("\n".join(csv) + "\n").encode())
        lines += [f"Test accuracy: **{100 * metrics['clean_accuracy']:.2f}%** (one logit, class 1 when "
                  "f(x) > 0).", "", "| l_inf radius (standardised units) | certified accuracy | certified "
                  "records (attacked) | broken | PGD robust acc. |", "|---:|---:|---:|---:|---:|"]
        for k in sorted(metrics["certified_accuracy"], key=float):
            e = metrics["pgd"].get(k, {})
            rob = e.get("pgd_robust_accuracy")
            lines.append(f"| {k} | {100 * metrics['certified_accuracy'][k]:.2f}% | "
                         f"{e.get('certified_points', 0)} | {e.get('broken', 0)} | "
                         f"{'' if rob is None else f'{100 * rob:.2f}%'} |")
        own = metrics.get("pgd_own_radius") or {}
        lines += ["", "Certified radius of a record: (s f(x) - allowance) / L, s = +1 for class 1 and -1 for "
                  "class 0 (lipkit.certify, single-logit rule); per record in `certified_radii.csv`.  "
                  "The radius is in the encoded units: r standard deviations of every numeric feature at "
                  "once; r >= 1 covers any change of a one-hot category (docs/monotonic.md).", "",
                  (f"Per-record PGD check: {own['n_certified']} certified records attacked at 0.999 x their "
                   f"own radius, **{own['n_broken']} broken**; at 3 x the radius the attack flips "
                   f"{100 * own['attack_success_at_3x_radius']:.1f}% of them." if own else
                   "Per-record PGD check: skipped."), "", "![certified accuracy](certified_accuracy.png)", ""]
    else:
        lines += [f"Test MSE: **{metrics['mse']:.4g}** (target unit squared; prediction = "
                  f"{metrics['target_mean']:.6g} + {metrics['target_std']:.6g} f(x)).", "",
                  "A regression has no decision to certify.  For an l_inf radius r (standardised units) the "
                  "prediction of every record moves by at most target_std x L x r over the ball (exact "
                  "arithmetic on the exported weights; float32 round-off seen on the test records: "
                  f"{metrics['max_float32_roundoff']:.3g}).", "",
                  "| l_inf radius | bound on the change of the prediction | largest change PGD found "
                  "| broken |",
                  "|---:|---:|---:|---:|"]
        for k in sorted(metrics["output_change"], key=float):
            e = metrics["output_change"][k]
            found = e.get("pgd_max_change", float("nan"))
            lines.append(f"| {k} | {e['output_change_bound']:.4g} | {found:.4g} | {e.get('broken', 0)} |")
        lines.append("")
    lines += ["## Monotone features", "",
              "Partial dependence: the mean output over the test records with the feature set to each value "
              "of its training range (thick), and individual records (grey).  `check_monotonic` sets the "
              "feature of every test record to a grid (its value, offsets up to 10 and the extremes +-1e2, "
              "+-1e4 in standardised units) and compares consecutive outputs and gradients, in float32 and "
              "float64; a violation beyond round-off would be a bug.", "",
              "| feature | direction | worst move against it (float32) | beyond round-off | violations |",
              "|---|---:|---:|---:|---:|"]
    for feat, chk in checks.items():
        lines.append(f"| {feat} | {'+1' if chk['direction'] > 0 else '-1'} | {chk['worst']:.3g} | "
                     f"{chk['worst_beyond_roundoff']:.3g} | {chk['violations']} |")
    lines.append("")
    for feat, fname in files.items():
        lines += [f"![partial dependence on {feat}]({fname})", ""]
    if "train_seconds" in metrics:
        lines.append(f"Training time (all epochs, summed over resumes): {metrics['train_seconds']:.1f} s; "
                     f"certification + PGD: {metrics['certify_seconds']:.1f} s.")
    atomic_write_bytes(paths["report"], ("\n".join(lines) + "\n").encode())
    for feat, fname in files.items():
        paths[f"pd:{feat}"] = run_dir / fname
    return paths


def train_tabular(cfg: RunConfig, out: str | Path, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train (resuming if possible), export (monotonicity re-checked by the wrapper's export hooks), save,
    certify and report a monotone tabular run; returns ``(run folder, metrics)``."""
    from lipkit.exporting import export
    from lipkit.training.data import split_for_config
    from lipkit.training.trainer import fit

    run_dir = Path(out) / cfg.name
    model, hist = fit(cfg, run_dir, progress=progress)
    split = split_for_config(cfg)
    plain = export(model, split.x_val, p=cfg.p)
    save_tabular_run(run_dir, cfg, plain, split)
    metrics = certify_tabular(plain, split, cfg.radii, pgd_steps=cfg.pgd_steps, seed=cfg.seed)
    metrics["train_seconds"] = hist["train_seconds"]
    metrics["resumed_from_epoch"] = hist["resumed_from"]
    metrics["history"] = hist["history"]
    write_tabular_report(run_dir, metrics, cfg, plain, split)
    return run_dir, metrics
