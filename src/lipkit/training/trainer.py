"""A small trainer for 1-Lipschitz classifiers: progress bar, atomic checkpoints, resume.

Checkpoints live in ``<run_dir>/checkpoints/``: for every finished epoch ``e`` the trainer writes
``epoch_XXXX.safetensors`` (model state, optimiser state tensors, RNG state) and then
``epoch_XXXX.json`` (config, epoch, metrics, scheduler state, non-tensor optimiser state and the
SHA-256 of the tensor file).  Each file is written to a temporary name and moved into place with
:func:`os.replace`, and the JSON is written last, so a kill at any moment leaves either the
previous complete checkpoint or the new one.  Re-running :func:`fit` on the same run folder
resumes from the newest checkpoint; a corrupt or incomplete newest checkpoint raises
:class:`CheckpointError` and nothing on disk is deleted or overwritten.

Resumption is exact: the data order of epoch ``e`` is drawn from a generator seeded by
``(seed, e)``, so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipkit.losses import top2_margin
from lipkit.training.config import ConfigError, RunConfig
from lipkit.training.data import Split, load_dataset, random_shift, square_side

__all__ = [
    "CheckpointError",
    "build_model",
    "build_plain_model",
    "make_loss",
    "margin_radius",
    "fit",
    "latest_checkpoint",
    "atomic_write_bytes",
]

CKPT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match the run's config."""


# --------------------------------------------------------------------------- model


def _activation(cfg: RunConfig) -> nn.Module:
    import lipkit

    return lipkit.MaxMin() if cfg.activation == "maxmin" else lipkit.GroupSort(cfg.group_size)


def _lip_linear(in_features: int, out_features: int, cfg: RunConfig) -> nn.Module:
    import lipkit

    return lipkit.LipLinear(in_features, out_features, constraint=cfg.constraint,
                            orthogonal_method=cfg.orthogonal_method)


def build_model(cfg: RunConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """``[LipLinear -> activation] * len(widths) -> LipLinear(num_classes)``, all orthogonal.

    An orthogonal ``W`` (``W W^T = I`` or ``W^T W = I``) has spectral norm 1 and MaxMin/GroupSort
    are 1-Lipschitz permutations of sorted pairs, so the network is 1-Lipschitz in l2
    (Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019).
    ``model: linf-dist`` / ``sortnet``: the l_inf models of :func:`lipkit.training.linf.build_linf_model`.
    """
    torch.manual_seed(cfg.seed)
    if cfg.is_linf_model:
        from lipkit.training.linf import build_linf_model

        return build_linf_model(cfg, in_features, num_classes)
    layers: list[nn.Module] = []
    width_in = in_features
    for w in cfg.widths:
        layers += [_lip_linear(width_in, w, cfg), _activation(cfg)]
        width_in = w
    layers.append(_lip_linear(width_in, num_classes, cfg))
    return nn.Sequential(*layers)


def build_plain_model(cfg: RunConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """The exported architecture: plain ``nn.Linear`` layers and the same activations."""
    if cfg.is_linf_model:
        from lipkit.training.linf import build_linf_model

        return build_linf_model(cfg, in_features, num_classes, plain=True)
    layers: list[nn.Module] = []
    width_in = in_features
    for w in cfg.widths:
        layers += [nn.Linear(width_in, w), _activation(cfg)]
        width_in = w
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- losses


def certificate_factor(p: float) -> float:
    """``L`` of ``f_c - f_j`` for a 1-Lipschitz network: ``sqrt(2)`` for l2, 2 for l_inf
    (``|a_c - a_j| <= 2 ||a||_inf``); a logit margin ``m * factor`` certifies the radius ``m``."""
    return 2.0 if math.isinf(p) else math.sqrt(2.0)


def make_loss(cfg: RunConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss for logits ``f`` (batch, classes) and labels ``y``, built from :mod:`lipkit.losses`.

    With ``m = margin * factor`` (``factor`` = :func:`certificate_factor`: sqrt(2) for l2, 2 for l_inf, so
    a logit margin ``m`` certifies the radius ``margin`` of a 1-Lipschitz net):

    * ``ce``: :class:`~lipkit.losses.LipschitzCrossEntropyLoss` ``(temperature=t, margin=m)`` divided by
      ``t``, i.e. ``CE(t * (f - m * onehot(y)), y) / t`` (Bethune et al., "Pay attention to your loss",
      2022).  The ``1 / t`` keeps the loss and its gradient in logit units whatever the temperature;
      the demo's figures were tuned with it;
    * ``hinge``: :class:`~lipkit.losses.MulticlassHingeLoss` ``(margin=m)``, the hinge on the top-2
      margin ``f_y - max_{j != y} f_j`` (the quantity the certificate divides);
    * ``hkr``: :class:`~lipkit.losses.HKRLoss` ``(alpha, margin=m)``, ``alpha * hinge - KR`` with the
      one-vs-all Kantorovich-Rubinstein term (Serrurier et al., CVPR 2021).

    The ``mix`` loss needs the schedule and the model's pairwise constants: see
    :class:`lipkit.training.linf.LinfScheduleStrategy`.
    """
    from lipkit.losses import HKRLoss, LipschitzCrossEntropyLoss, MulticlassHingeLoss

    if cfg.loss == "mix":
        raise ValueError("the mix loss is scheduled per step; use lipkit.training.linf.mix_loss")
    m = cfg.margin * certificate_factor(cfg.p)
    if cfg.loss == "hinge":
        return MulticlassHingeLoss(margin=m)
    if cfg.loss == "hkr":
        return HKRLoss(alpha=cfg.alpha, margin=m)
    t = cfg.temperature
    ce = LipschitzCrossEntropyLoss(temperature=t, margin=m)

    def ce_in_logit_units(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ce(f, y) / t

    return ce_in_logit_units


# --------------------------------------------------------------------------- certification


def margin_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float | None = None,
                  p: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness and certified l_p radius (p = 2 or inf) of each point (0 where misclassified).

    The radius is :func:`lipkit.certify`'s: ``min_j (f_c - f_j - delta) / L_cj`` with ``L_cj <=
    sqrt(2) L`` (or the tighter pairwise bound of the last layer) and ``delta`` a float round-off
    allowance (Tsuzuku et al., "Lipschitz-Margin Training", NeurIPS 2018).  ``bound``: an
    externally known global bound (default: ``lipschitz_bound(model, p)``).
    """
    from lipkit.certify.margin import certify

    res = certify(model, x, p, lipschitz=bound)
    correct = res.prediction == y
    return correct, torch.where(correct, res.radius, torch.zeros_like(res.radius))


def _nominal(f: torch.Tensor, y: torch.Tensor, factor: float = math.sqrt(2.0)
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness and the *nominal* radius ``margin / factor`` (assumes a 1-Lipschitz net;
    ``factor`` sqrt(2) for l2, 2 for l_inf)."""
    margin = top2_margin(f.double(), y)
    correct = margin > 0
    return correct, torch.where(correct, margin / factor, torch.zeros_like(margin))


def _nominal_for(model: nn.Module, cfg: RunConfig | None, f: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg is not None and cfg.is_linf_model:
        from lipkit.training.linf import nominal_radius, pair_lipschitz

        with torch.no_grad():
            return nominal_radius(f, y, pair_lipschitz(model))
    return _nominal(f, y)


def evaluate(model: nn.Module, split: Split, radii: list[float], *, sound: bool = False,
             cfg: RunConfig | None = None) -> dict[str, Any]:
    """Test accuracy and certified accuracy per radius.

    ``sound=True``: radii from :func:`margin_radius` (a sound bound of the actual weights, float
    round-off accounted for; costs SVDs).  ``sound=False`` (the per-epoch progress metric):
    ``margin / sqrt(2)``, i.e. it *assumes* the network is 1-Lipschitz; a training signal only,
    never reported as a certificate.  ``cfg`` selects the norm and model kind (default: l2 lipmlp).
    """
    was = model.training
    model.eval()
    p = cfg.p if cfg is not None else 2.0
    try:
        if sound:
            correct, radius = margin_radius(model, split.x_test, split.y_test, p=p)
        else:
            with torch.no_grad():
                correct, radius = _nominal_for(model, cfg, model(split.x_test), split.y_test)
    finally:
        model.train(was)
    return {
        "clean_accuracy": correct.double().mean().item(),
        "certified_accuracy": {f"{r:g}": (radius >= r).double().mean().item() for r in radii},
    }


# --------------------------------------------------------------------------- checkpoints


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _optim_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


_MODEL = "model."  # checkpoint tensor keys of the model's state dict (optimiser: "optim.", RNG: "rng.")


def _ckpt_paths(run_dir: Path, epoch: int) -> tuple[Path, Path]:
    d = Path(run_dir) / CKPT_DIR
    return d / f"epoch_{epoch:04d}.safetensors", d / f"epoch_{epoch:04d}.json"


def latest_checkpoint(run_dir: str | Path) -> int | None:
    """The newest epoch with a committed (JSON-written) checkpoint, or ``None``."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return None
    epochs = []
    for p in d.glob("epoch_*.json"):
        try:
            epochs.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return max(epochs) if epochs else None


def save_checkpoint(run_dir: Path, epoch: int, cfg: RunConfig, model: nn.Module,
                    opt: torch.optim.Optimizer, sched: Any, metrics: dict[str, Any], keep: int = 2) -> None:
    from safetensors.torch import save

    tensors = {f"{_MODEL}{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optim_to_flat(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state().clone()
    blob = save(tensors)
    st_path, js_path = _ckpt_paths(run_dir, epoch)
    atomic_write_bytes(st_path, blob)
    meta = {
        "format": "lipkit-checkpoint-1",
        "epoch": epoch,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "optimizer": opt_meta,
        "scheduler": sched.state_dict() if sched is not None else None,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "rng_torch_b64": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    atomic_write_bytes(js_path, json.dumps(meta, indent=1).encode())
    # prune old checkpoints (only ones strictly older than the `keep` newest committed ones)
    d = Path(run_dir) / CKPT_DIR
    old = sorted(int(p.stem.split("_", 1)[1]) for p in d.glob("epoch_*.json"))[:-keep]
    for e in old:
        for p in _ckpt_paths(run_dir, e)[::-1]:
            p.unlink(missing_ok=True)


def checkpoint_model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` inside the tensors of :func:`load_checkpoint`."""
    return {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}


def load_checkpoint(run_dir: Path, epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify checkpoint ``epoch``; raise :class:`CheckpointError` (deleting nothing)."""
    from safetensors.torch import load

    st_path, js_path = _ckpt_paths(run_dir, epoch)
    try:
        meta = json.loads(js_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != "lipkit-checkpoint-1":
            raise ValueError("unknown format")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {js_path} is corrupt or unreadable ({exc}); "
                              "remove it (or the run folder) to restart") from None
    if not st_path.is_file():
        raise CheckpointError(f"checkpoint {js_path} has no weights file {st_path.name}; "
                              "remove the checkpoint (or the run folder) to restart")
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint weights {st_path} do not match their checksum (corrupt file); "
                              "remove the checkpoint (or the run folder) to restart")
    try:
        tensors = load(blob)
    except Exception as exc:
        raise CheckpointError(f"checkpoint weights {st_path} cannot be read: {exc}") from None
    return meta, tensors


# --------------------------------------------------------------------------- training loop


def _make_optimizer(cfg: RunConfig, model: nn.Module, steps_total: int) -> tuple[torch.optim.Optimizer, Any]:
    if cfg.is_linf_model:
        # AdamW-style decoupled weight decay on the head only (Zhang et al. never decay the
        # distance-layer weights: they are prototypes, not gains).
        from lipkit.training.linf import distance_layers

        dist = {id(q) for m in distance_layers(model) for q in m.parameters()}
        groups: Any = [{"params": [q for q in model.parameters() if id(q) in dist], "weight_decay": 0.0},
                       {"params": [q for q in model.parameters() if id(q) not in dist],
                        "weight_decay": cfg.weight_decay}]
    else:
        groups = model.parameters()
    if cfg.optimizer == "adam":
        if cfg.weight_decay > 0:
            opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas),
                                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps_total)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total)
    else:
        sched = None
    return opt, sched


def fit(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    split: Split | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or resume training) ``cfg`` into ``run_dir``; return ``(model, history)``.

    ``stop_after``: stop once this many epochs are complete (simulates an interruption).
    ``history`` holds per-epoch metrics (including seconds), the epoch resumed from, the seconds
    spent in this call (``seconds``) and over all epochs of the run (``train_seconds``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    if split is None:
        split = load_dataset(cfg.dataset, **({"test_size": cfg.test_size, "seed": cfg.data_seed}
                                             if cfg.dataset != "fashion-mnist" else {}))
    if cfg.augment_shift and square_side(split.num_features) is None:
        raise ConfigError(f"config key 'augment_shift': needs square images, but {split.name} has "
                          f"{split.num_features} features")
    model = build_model(cfg, split.num_features, split.num_classes)
    if cfg.standardised_init:  # (a resumed run overwrites these weights from its checkpoint)
        from lipkit.training.linf import standardised_init

        standardised_init(model, float(split.x_train.mean()), float(split.x_train.std()))
    n = len(split.x_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt, sched = _make_optimizer(cfg, model, cfg.epochs * steps_per_epoch)
    linf = cfg.is_linf_model
    loss_fn = None if cfg.loss == "mix" else make_loss(cfg)

    start = 0
    history: list[dict[str, Any]] = []
    last = latest_checkpoint(run_dir)
    if last is not None:
        meta, tensors = load_checkpoint(run_dir, last)
        try:  # keys added to RunConfig after the checkpoint was written take their defaults
            saved = RunConfig.from_dict(meta["config"]).to_dict()
        except (ValueError, TypeError):
            saved = dict(meta["config"])
        mine = cfg.to_dict()
        free = ("epochs", "threads", "name", "radii", "pgd_steps")  # do not change the training trajectory
        diff = sorted(k for k in mine if k not in free and saved.get(k) != mine[k])
        if diff:
            raise CheckpointError(f"run folder {run_dir} holds a checkpoint of a different config "
                                  f"(keys {diff} differ); use another run name or delete the folder")
        if int(saved.get("epochs", cfg.epochs)) != cfg.epochs:
            raise CheckpointError(f"run folder {run_dir} was trained with epochs={saved.get('epochs')}, "
                                  f"not {cfg.epochs} (the lr schedule depends on it)")
        try:
            model.load_state_dict(checkpoint_model_state(tensors))
            _optim_from_flat(opt, tensors, meta["optimizer"])
            if sched is not None and meta.get("scheduler") is not None:
                sched.load_state_dict(meta["scheduler"])
            torch.set_rng_state(tensors["rng.torch"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint epoch {last} in {run_dir} does not fit the model: {first}") from None
        start = int(meta["epoch"])
        history = list(meta.get("metrics", {}).get("history", []))

    t0 = time.perf_counter()
    bar = _progress(cfg.epochs, start, progress)
    # l_p relaxation: |x - w|^p / max^p underflows to subnormal floats for large p, which are 10-30x
    # slower on x86 (measured 784 -> 1024 at batch 512, p = 32: 13.3 s -> 1.0 s per step).  Flushing
    # them to zero changes terms below 1e-38 of a sum whose largest term is 1.
    flush = linf and torch.set_flush_denormal(True)
    try:
        for epoch in range(start, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                break
            model.train()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=gen)
            t_epoch = time.perf_counter()
            total, count, hits, wide = 0.0, 0, 0, 0
            r_mid = cfg.radii[len(cfg.radii) // 2]
            for step, k in enumerate(range(0, n, cfg.batch_size)):
                idx = perm[k : k + cfg.batch_size]
                if linf and len(idx) < 2:
                    continue  # mean shift needs batch statistics
                if linf:
                    from lipkit.training.linf import apply_schedule, mix_loss, pair_lipschitz, schedule_at

                    values = schedule_at(cfg, epoch, step, steps_per_epoch)
                    apply_schedule(model, values)
                x_batch = split.x_train[idx]
                if cfg.augment_shift:
                    x_batch = random_shift(x_batch, cfg.augment_shift, gen)
                out = model(x_batch)
                if loss_fn is None:
                    loss = mix_loss(out, split.y_train[idx], pair_lipschitz(model), values.eps,
                                    values.ce_weight, cfg.temperature)
                else:
                    loss = loss_fn(out, split.y_train[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}; "
                                             "lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.item() * len(idx)
                count += len(idx)
                with torch.no_grad():  # running train metrics from the batch logits (no extra forward)
                    ok, nominal = _nominal_for(model, cfg, out.detach(), split.y_train[idx])
                    hits += int(ok.sum())
                    wide += int((nominal >= r_mid).sum())
            rec = {"epoch": epoch + 1, "loss": total / count, "train_accuracy": hits / count,
                   "nominal_certified": {f"{r_mid:g}": wide / count},
                   "seconds": time.perf_counter() - t_epoch}
            if linf:
                rec["p"] = values.p
                rec["eps"] = values.eps
                rec["ce_weight"] = values.ce_weight
            if epoch + 1 == cfg.epochs:
                if linf:
                    from lipkit.training.linf import apply_schedule, recalibrate_mean_shift, schedule_at

                    apply_schedule(model, schedule_at(cfg, cfg.epochs, 0, steps_per_epoch))  # p = inf
                    recalibrate_mean_shift(model, split.x_train)
                ev = evaluate(model, split, cfg.radii, cfg=cfg)
                rec["test_accuracy"] = ev["clean_accuracy"]
                rec["test_nominal_certified"] = ev["certified_accuracy"]
            history.append(rec)
            save_checkpoint(run_dir, epoch + 1, cfg, model, opt, sched, {"history": history})
            bar.update(rec)
    finally:
        bar.close()
        if flush:
            torch.set_flush_denormal(False)
    model.eval()
    total_seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    return model, {"history": history, "resumed_from": start, "seconds": time.perf_counter() - t0,
                   "train_seconds": total_seconds}


class _progress:
    """A rich progress bar on stderr, one step per epoch, or one plain line per epoch when stderr is
    not a terminal (log files); silent when ``enabled`` is false."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        self.lines = enabled and not sys.stderr.isatty()  # logs: one plain line per epoch
        self.total, self.done = total, initial
        if self.lines and initial:
            print(f"train: resuming after epoch {initial}/{total}", file=sys.stderr, flush=True)
        if enabled and not self.lines:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                console=Console(file=sys.stderr))
            self.task = self.bar.add_task("train", total=total, completed=initial, info="")
            self.bar.start()

    def update(self, rec: dict[str, Any]) -> None:
        if self.bar is not None:
            cert = next(iter(rec["nominal_certified"].items()))
            info = (f"loss {rec['loss']:.3f}  train acc {rec['train_accuracy']:.3f}  "
                    f"train cert@{cert[0]} {cert[1]:.3f}")
            self.bar.update(self.task, advance=1, info=info)
        elif self.lines:
            self.done += 1
            cert = next(iter(rec["nominal_certified"].items()))
            print(f"train: epoch {self.done}/{self.total}  loss {rec['loss']:.4f}  train acc "
                  f"{rec['train_accuracy']:.4f}  train cert@{cert[0]} {cert[1]:.4f}  {rec['seconds']:.1f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
