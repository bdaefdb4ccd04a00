"""The trainer of 1-Lipschitz classifiers: one loop, strategies for what differs, checkpoints, resume.

:func:`fit` is the public entry: it builds a :class:`Trainer` for a :class:`RunConfig` and runs it.  The
:class:`Trainer` owns the loop (data order, forward, loss, backward, optimiser and scheduler steps,
metrics, progress, checkpoints); what a kind of training changes (the l_inf schedule now, DP noise and
DDP later) is a :class:`~lipkit.training.strategy.TrainingStrategy` whose hooks the loop calls.

Checkpoints (:mod:`lipkit.training.checkpoints`) are written atomically after every epoch; re-running
:func:`fit` on the same run folder resumes from the newest one (a corrupt or incomplete one raises
:class:`CheckpointError`, deleting nothing).  Resumption is exact: the data order of epoch ``e`` is drawn
from a generator seeded by ``(seed, e)`` and the torch RNG state is checkpointed, so an
interrupted-and-resumed run ends with the same weights as an uninterrupted one.

Global state: :func:`build_model` and :func:`fit` leave the caller's torch RNG, thread count and
denormal-flush setting as they found them (the run uses its own seeded RNG stream).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipkit.nn import GroupSort, LipLinear, MaxMin
from lipkit.training.checkpoints import (
    CKPT_DIR,
    CheckpointError,
    atomic_write_bytes,
    checkpoint_model_state,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_flat,
    save_checkpoint,
)
from lipkit.training.config import ConfigError, OptimConfig, RunConfig
from lipkit.training.data import Split, random_shift, split_for_config, square_side
from lipkit.training.strategy import StepState, TrainingStrategy, nominal_radius, strategies_for

__all__ = [
    "CheckpointError",
    "Trainer",
    "build_model",
    "build_plain_model",
    "certificate_factor",
    "make_loss",
    "make_optimizer",
    "margin_radius",
    "evaluate",
    "fit",
    "latest_checkpoint",
    "atomic_write_bytes",
    # re-exported from lipkit.training.checkpoints (their home since the trainer was split)
    "CKPT_DIR",
    "checkpoint_model_state",
    "load_checkpoint",
    "save_checkpoint",
]


# --------------------------------------------------------------------------- model


def _activation(cfg: RunConfig, width: int | None = None, plain: bool = False) -> nn.Module:
    if cfg.activation == "spline":
        from lipkit.training.splines import spline_activation

        return spline_activation(cfg, width, plain=plain)
    return MaxMin() if cfg.activation == "maxmin" else GroupSort(cfg.group_size)


def _lip_linear(in_features: int, out_features: int, cfg: RunConfig) -> nn.Module:
    return LipLinear(in_features, out_features, constraint=cfg.constraint,
                            orthogonal_method=cfg.orthogonal_method)


def build_model(cfg: RunConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """``[LipLinear -> activation] * len(widths) -> LipLinear(num_classes)``, all orthogonal.

    An orthogonal ``W`` (``W W^T = I`` or ``W^T W = I``) has spectral norm 1 and MaxMin/GroupSort
    are 1-Lipschitz permutations of sorted pairs, so the network is 1-Lipschitz in l2
    (Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019).
    ``model: linf-dist`` / ``sortnet``: the l_inf models of :func:`lipkit.training.linf.build_linf_model`;
    ``model: lipcnn``: the l2 CNN of :func:`lipkit.training.cnn.cnn_layers`.

    The initial weights are drawn from a torch RNG seeded with ``cfg.seed`` inside
    :func:`torch.random.fork_rng`: the same weights every time, and the caller's RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        return seeded_model(cfg, in_features, num_classes)


def seeded_model(cfg: RunConfig, in_features: int, num_classes: int, split: Any = None) -> nn.Sequential:
    """:func:`build_model` without the RNG fork: seeds the *global* torch RNG with ``cfg.seed`` and
    builds the model from it, leaving the RNG where the initialisation left it.  The :class:`Trainer`
    calls it inside its own fork, so a run's later random draws continue that stream.  ``model:
    monotonic-mlp`` needs the ``split`` (its feature names): :mod:`lipkit.training.monotonic`."""
    torch.manual_seed(cfg.seed)
    if cfg.model == "monotonic-mlp":
        from lipkit.training.monotonic import build_monotonic_model

        if split is None:
            raise ValueError("model monotonic-mlp is built for a data split: pass split=")
        return build_monotonic_model(cfg, split)
    if cfg.is_linf_model:
        from lipkit.training.linf import build_linf_model

        return build_linf_model(cfg, in_features, num_classes)
    if cfg.model == "lipcnn":  # l2 CNN: lipkit.training.cnn
        from lipkit.training.cnn import cnn_layers

        layers = cnn_layers(cfg, in_features, num_classes)
    else:
        layers = []
        width_in = in_features
        for w in cfg.widths:
            layers += [_lip_linear(width_in, w, cfg), _activation(cfg, w)]
            width_in = w
        layers.append(_lip_linear(width_in, num_classes, cfg))
    if cfg.private:  # inputs projected onto the l2 ball; weights trained plain and projected (lipkit.dp)
        from lipkit.training.dp import dp_model

        return dp_model(cfg, layers, input_shape=(in_features,))
    return nn.Sequential(*layers)


def build_plain_model(cfg: RunConfig, in_features: int, num_classes: int) -> nn.Sequential:
    """The exported architecture: plain ``nn.Linear`` (``lipcnn``: and ``nn.Conv2d``) layers and the same
    activations."""
    if cfg.is_linf_model:
        from lipkit.training.linf import build_linf_model

        return build_linf_model(cfg, in_features, num_classes, plain=True)
    if cfg.model == "lipcnn":
        from lipkit.training.cnn import cnn_layers

        layers = cnn_layers(cfg, in_features, num_classes, plain=True)
    else:
        layers = []
        width_in = in_features
        for w in cfg.widths:
            layers += [nn.Linear(width_in, w), _activation(cfg, w, plain=True)]
            width_in = w
        layers.append(nn.Linear(width_in, num_classes))
    if cfg.private:
        from lipkit.dp import L2BallProjection

        return nn.Sequential(L2BallProjection(cfg.input_radius), *layers)
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
    externally known global bound (default: ``lipschitz_bound(model, p, input_shape=x.shape[1:])``; the
    bounds are for inputs of ``x``'s per-example shape, which lets convolution rules use the image size).
    """
    from lipkit.certify.margin import certify

    res = certify(model, x, p, lipschitz=bound, input_shape=tuple(x.shape[1:]))  # (conv bounds: exact size)
    correct = res.prediction == y
    return correct, torch.where(correct, res.radius, torch.zeros_like(res.radius))


def nominal_for(model: nn.Module, cfg: RunConfig | None, f: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness and nominal radius of logits ``f`` (:func:`lipkit.training.strategy.nominal_radius`) with
    the constants of ``cfg``'s model kind: the strategies' answer, else ``sqrt(2)`` (l2, 1-Lipschitz)."""
    for s in strategies_for(cfg) if cfg is not None else []:
        out = s.nominal(model, f, y)
        if out is not None:
            return out
    return nominal_radius(f, y)


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
                correct, radius = nominal_for(model, cfg, model(split.x_test), split.y_test)
    finally:
        model.train(was)
    return {
        "clean_accuracy": correct.double().mean().item(),
        "certified_accuracy": {f"{r:g}": (radius >= r).double().mean().item() for r in radii},
    }


# --------------------------------------------------------------------------- training loop


def make_optimizer(optim: OptimConfig, params: Any, steps_total: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and per-step lr scheduler of a config's ``optim`` section for ``params`` (parameters
    or parameter groups).

    ``adam``: Adam with ``betas`` and ``adam_eps``, or AdamW (decoupled decay) when ``weight_decay > 0``
    (a group's own ``weight_decay`` wins); ``sgd``: Nesterov momentum 0.9.  Scheduler: ``onecycle``,
    ``cosine`` (to 0 over ``steps_total``) or ``constant`` (``None``)."""
    if optim.optimizer == "adam":
        if optim.weight_decay > 0:
            opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                                           eps=optim.adam_eps,
                                                           weight_decay=optim.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.adam_eps)
    else:
        opt = torch.optim.SGD(params, lr=optim.lr, momentum=0.9, nesterov=True)
    if optim.schedule == "onecycle":
        # each group's own peak (a group without "lr" has optim.lr; the spline group may have its own)
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                         total_steps=steps_total)
    elif optim.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total)
    else:
        sched = None
    return opt, sched


# config keys that may change between a checkpoint and its resumption (they do not change the trajectory)
RESUME_FREE_KEYS = ("epochs", "threads", "name", "radii", "pgd_steps")


class Trainer:
    """Train ``cfg`` into ``run_dir``: the loop of :func:`fit`, with strategies for what differs.

    ``strategies``: the :class:`~lipkit.training.strategy.TrainingStrategy` list (default:
    :func:`~lipkit.training.strategy.strategies_for` ``(cfg)``).  Call :meth:`run`; the attributes
    ``model``, ``optimizer``, ``scheduler``, ``split``, ``history``, ``start_epoch`` and
    ``steps_per_epoch`` are what the strategies' hooks read and change.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, split: Split | None = None,
                 progress: bool = True, strategies: Sequence[TrainingStrategy] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.split = split
        self.progress = progress
        self.strategies = list(strategies_for(cfg) if strategies is None else strategies)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.steps_per_epoch = 0

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, model (seeded), optimiser, scheduler and loss; then resume from a checkpoint if any."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.split is None:
            self.split = split_for_config(cfg)
        split = self.split
        if cfg.augment_shift and square_side(split.num_features) is None:
            raise ConfigError(f"config key 'augment_shift': needs square images, but {split.name} has "
                              f"{split.num_features} features")
        self.model = seeded_model(cfg, split.num_features, split.num_classes, split=split)
        if cfg.standardised_init:  # (a resumed run overwrites these weights from its checkpoint)
            from lipkit.training.linf import standardised_init

            standardised_init(self.model, float(split.x_train.mean()), float(split.x_train.std()))
        self.steps_per_epoch = math.ceil(len(split.x_train) / cfg.batch_size)
        groups = next((g for s in self.strategies if (g := s.param_groups(self)) is not None),
                      self.model.parameters())
        self.optimizer, self.scheduler = make_optimizer(cfg.optim, groups, cfg.epochs * self.steps_per_epoch)
        self.loss_fn = None if cfg.loss == "mix" else make_loss(cfg)  # (mix: the l_inf strategy's)
        self.resume()

    def resume(self) -> None:
        """Load the newest checkpoint of the run folder (if any) after checking it is this config's."""
        cfg, run_dir = self.cfg, self.run_dir
        last = latest_checkpoint(run_dir)
        if last is None:
            return
        meta, tensors = load_checkpoint(run_dir, last)
        try:  # keys added to RunConfig after the checkpoint was written take their defaults
            saved = RunConfig.from_dict(meta["config"]).to_dict()
        except (ValueError, TypeError):
            saved = dict(meta["config"])
        mine = cfg.to_dict()
        diff = sorted(k for k in mine if k not in RESUME_FREE_KEYS and saved.get(k) != mine[k])
        if diff:
            raise CheckpointError(f"run folder {run_dir} holds a checkpoint of a different config "
                                  f"(keys {diff} differ); use another run name or delete the folder")
        if int(saved.get("epochs", cfg.epochs)) != cfg.epochs:
            raise CheckpointError(f"run folder {run_dir} was trained with epochs={saved.get('epochs')}, "
                                  f"not {cfg.epochs} (the lr schedule depends on it)")
        try:
            self.model.load_state_dict(checkpoint_model_state(tensors))
            optimizer_from_flat(self.optimizer, tensors, meta["optimizer"])
            if self.scheduler is not None and meta.get("scheduler") is not None:
                self.scheduler.load_state_dict(meta["scheduler"])
            torch.set_rng_state(tensors["rng.torch"])
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint epoch {last} in {run_dir} does not fit the model: {first}") from None
        self.start_epoch = int(meta["epoch"])
        self.history = list(meta.get("metrics", {}).get("history", []))

    # ----------------------------------------------------------------- hooks
    def _call(self, hook: str, *args: Any) -> None:
        for s in self.strategies:
            getattr(s, hook)(self, *args)

    def compute_loss(self, state: StepState) -> torch.Tensor:
        """The first strategy loss, else the config's loss (:func:`make_loss`)."""
        for s in self.strategies:
            loss = s.loss(self, state)
            if loss is not None:
                return loss
        if self.loss_fn is None:
            raise ValueError(f"no strategy computes the {self.cfg.loss!r} loss")
        return self.loss_fn(state.logits, state.y)

    def nominal(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correctness and nominal radius (training metric) from the first strategy that answers."""
        for s in self.strategies:
            out = s.nominal(self.model, logits, y)
            if out is not None:
                return out
        return nominal_radius(logits, y)

    # ----------------------------------------------------------------- loop
    def train_step(self, state: StepState) -> None:
        """Forward, loss, backward, optimiser and scheduler step of one batch (hooks around them)."""
        self._call("before_step", state)
        if state.skip:
            return
        x = state.x
        if self.cfg.augment_shift:
            x = random_shift(x, self.cfg.augment_shift, state.extras["generator"])
        state.logits = self.model(x)
        state.loss = loss = self.compute_loss(state)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {state.epoch + 1}; "
                                     "lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._call("after_backward", state)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self._call("after_step", state)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch (0-based); returns its metric record (final-epoch test metrics included)."""
        cfg, split = self.cfg, self.split
        self.model.train()
        n = len(split.x_train)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        self._call("on_epoch_start", epoch)
        t_epoch = time.perf_counter()
        total, count, hits, wide = 0.0, 0, 0, 0
        r_mid = cfg.radii[len(cfg.radii) // 2]
        for step, k in enumerate(range(0, n, cfg.batch_size)):
            idx = perm[k : k + cfg.batch_size]
            state = StepState(epoch=epoch, step=step, idx=idx, x=split.x_train[idx], y=split.y_train[idx],
                              extras={"generator": gen})
            self.train_step(state)
            if state.skip:
                continue
            total += state.loss.item() * len(idx)
            count += len(idx)
            with torch.no_grad():  # running train metrics from the batch logits (no extra forward)
                ok, nominal = self.nominal(state.logits.detach(), state.y)
                hits += int(ok.sum())
                wide += int((nominal >= r_mid).sum())
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": total / count, "train_accuracy": hits / count,
                               "nominal_certified": {f"{r_mid:g}": wide / count},
                               "seconds": time.perf_counter() - t_epoch}
        self._call("on_epoch_end", epoch, rec)
        if epoch + 1 == cfg.epochs:
            self._call("before_final_eval")
            own = next((m for s in self.strategies if (m := s.final_metrics(self)) is not None), None)
            if own is not None:
                rec.update(own)
            else:
                ev = evaluate(self.model, split, cfg.radii, cfg=cfg)
                rec["test_accuracy"] = ev["clean_accuracy"]
                rec["test_nominal_certified"] = ev["certified_accuracy"]
        return rec

    def run(self, stop_after: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Set up, train the remaining epochs (checkpoint after each), return ``(model, history)``.

        Runs inside :func:`torch.random.fork_rng` with ``torch.set_num_threads(cfg.threads)``: the
        caller's RNG state and thread count are restored afterwards, also on errors and interrupts.
        """
        threads = torch.get_num_threads()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_num_threads(self.cfg.threads)
                self.setup()
                return self._train(stop_after)
        finally:
            torch.set_num_threads(threads)

    def _train(self, stop_after: int | None) -> tuple[nn.Module, dict[str, Any]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        bar = _Progress(cfg.epochs, self.start_epoch, self.progress)
        try:
            self._call("on_train_start")
            for epoch in range(self.start_epoch, cfg.epochs):
                if stop_after is not None and epoch >= stop_after:
                    break
                rec = self.train_epoch(epoch)
                self.history.append(rec)
                save_checkpoint(self.run_dir, epoch + 1, cfg, self.model, self.optimizer, self.scheduler,
                                {"history": self.history})
                bar.update(rec)
        finally:
            bar.close()
            self._call("on_train_end")
        self.model.eval()
        total_seconds = sum(float(r.get("seconds", 0.0)) for r in self.history)
        return self.model, {"history": self.history, "resumed_from": self.start_epoch,
                            "seconds": time.perf_counter() - t0, "train_seconds": total_seconds}


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
    A :class:`Trainer` with the config's strategies does the work.
    """
    return Trainer(cfg, run_dir, split=split, progress=progress).run(stop_after)


class _Progress:
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

    @staticmethod
    def _info(rec: dict[str, Any], digits: int) -> str:
        if "train_mse" in rec:  # a regression (lipkit.training.monotonic): no accuracy, no radius
            return f"loss {rec['loss']:.{digits}f}  train mse {rec['train_mse']:.{digits}f}"
        cert = next(iter(rec["nominal_certified"].items()))
        return (f"loss {rec['loss']:.{digits}f}  train acc {rec['train_accuracy']:.{digits}f}  "
                f"train cert@{cert[0]} {cert[1]:.{digits}f}")

    def update(self, rec: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=self._info(rec, 3))
        elif self.lines:
            self.done += 1
            print(f"train: epoch {self.done}/{self.total}  {self._info(rec, 4)}  {rec['seconds']:.1f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
