"""Training side of l_inf certified robustness: models, schedules and the mixed loss.

Models (built from a :class:`lipkit.training.config.RunConfig` with ``model: linf-dist`` or ``sortnet``):

* body: ``len(widths)`` layers of l_inf-distance neurons ``y_o = max_i |x_i - w_oi|`` with mean
  shift (Zhang, Lu, Ye, Wang, He, Wang, ICML 2021), or for ``sortnet`` an l_inf-distance first
  layer followed by SortNet layers ``y_o = sum_k c_k d_(k)``, ``c_k ∝ q (1 - q)^k`` (Zhang, Jiang,
  He, Wang, NeurIPS 2022; the first layer of their MLP is also a plain l_inf-distance layer),
  trained with the Bernoulli(q) subset trick and initialised with normal weights.
  Every such layer is 1-Lipschitz for l_inf (in eval mode, at ``p = inf``);
* no head: a last distance layer to the classes (no mean shift, with bias) and :class:`Negate`,
  so the logit of class ``j`` is minus the distance of the features to a prototype ``w_j``.  All
  logits are 1-Lipschitz for l_inf, so ``f_c - f_j`` is 2-Lipschitz and a margin ``m``
  certifies the radius ``m / 2``;
* hybrid head (``head_width > 0``): ``LipLinear(width, head_width, constraint="inf")`` (rows of
  l1 norm <= 1, so l_inf -> l_inf norm <= 1), an element-wise 1-Lipschitz activation and a plain
  ``nn.Linear(head_width, classes)`` with rows ``v_c``.  Hoelder gives
  ``|(f_c - f_j)(x) - (f_c - f_j)(x')| <= ||v_c - v_j||_1 * L_body * ||x - x'||_inf``, the pairwise
  rule of :func:`lipkit.certify.compute_certificates` (it reads the actual weights; ``L_body``
  is :func:`lipkit.lipschitz_bound` of everything before the last layer).

Training (:func:`schedule_at`): the l_p relaxation ``||x - w||_p`` of the l_inf-distance layers
with ``p`` growing geometrically from ``p_start`` to ``p_end`` over ``p_window`` and ``inf`` after
(rounded to integers: the kernels compute integer powers by repeated squaring), the training radius
``eps`` ramped linearly to ``margin`` over ``eps_window``, and the cross-entropy weight decaying
geometrically from ``ce_weight[0]`` to ``ce_weight[1]`` over ``p_window`` (windows are fractions of
all training steps; Zhang et al. 2022,
"Boosting the certified robustness of L-infinity distance nets", ICLR).  Every value is a pure
function of the step index, so a resumed run sees exactly the values of an uninterrupted one.

:func:`mix_loss` is the clipped hinge of Zhang et al. (2022) written with the certificate's own
pairwise constants ``L_yj``: ``max_{j != y} clamp(1 - (f_y - f_j) / (L_yj eps), 0, 1)`` is 0 exactly
when the certificate reaches ``eps``, plus the cross-entropy term for clean accuracy.

:class:`LinfScheduleStrategy` plugs all of this into :class:`lipkit.training.trainer.Trainer` through the
hooks of :class:`lipkit.training.strategy.TrainingStrategy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lipkit.bounds import pairwise_head_bound
from lipkit.losses import top2_margin
from lipkit.nn import LinfDistLinear, LipLinear, Negate, SortNeuronLinear
from lipkit.training.strategy import StepState, TrainingStrategy, nominal_radius

if TYPE_CHECKING:
    from lipkit.training.trainer import Trainer

__all__ = [
    "Negate",
    "build_linf_model",
    "pair_lipschitz",
    "mix_loss",
    "nominal_radius",
    "LinfSchedule",
    "schedule_at",
    "apply_schedule",
    "distance_layers",
    "recalibrate_mean_shift",
    "standardised_init",
    "LinfScheduleStrategy",
]


def _is_distance(m: nn.Module) -> bool:
    return isinstance(m, (LinfDistLinear, SortNeuronLinear))


def distance_layers(model: nn.Module) -> list[nn.Module]:
    """The l_inf-distance / SortNet layers of ``model`` in order."""
    return [m for m in model.modules() if _is_distance(m)]


def build_linf_model(cfg, in_features: int, num_classes: int, *, plain: bool = False) -> nn.Sequential:
    """The l_inf model of ``cfg`` (see the module docstring).

    ``plain=True`` builds the exported architecture (the head's ``LipLinear`` becomes a plain
    ``nn.Linear`` holding the materialised weight), used to reload a run's weights.
    """
    def dist(n_in: int, n_out: int, first: bool, *, last: bool) -> nn.Module:
        kw = {"mean_shift": not last, "bias": last}
        if cfg.model == "sortnet" and not first:
            # normal init: under the Bernoulli(q) training mask the identity init's diagonal
            # coordinate (|x_j + C|, C = 10) is dropped with probability 1 - q, so each output
            # jumps by about C between sub-batches and that noise drowns the signal (measured on
            # digits: 15% test accuracy after 300 steps with identity init, 83% with normal).
            return SortNeuronLinear(n_in, n_out, q=cfg.sort_q, init="normal", **kw)
        return LinfDistLinear(n_in, n_out, **kw)

    layers: list[nn.Module] = []
    width_in = in_features
    for i, w in enumerate(cfg.widths):
        layers.append(dist(width_in, w, i == 0, last=False))
        width_in = w
    if cfg.head_width == 0:
        layers += [dist(width_in, num_classes, False, last=True), Negate()]
    else:
        if plain:
            layers.append(nn.Linear(width_in, cfg.head_width))
        else:
            layers.append(LipLinear(width_in, cfg.head_width, constraint="inf"))
        layers.append(nn.ReLU() if cfg.head_activation == "relu" else nn.Tanh())
        layers.append(nn.Linear(cfg.head_width, num_classes))
    return nn.Sequential(*layers)


def standardised_init(model: nn.Module, mean: float, std: float) -> None:
    """Rescale a freshly initialised l_inf model so that training it on raw inputs ``x`` follows
    the trajectory of the same model trained on standardised inputs ``(x - mean) / std``.

    Zhang et al. (2021, 2022) train on standardised pixels; lipkit keeps the data in its own units
    so that radii and certificates need no conversion.  The two are the same network up to scale:
    with first-layer weights ``w = mean + std * w'`` and every later distance layer's weights and
    biases ``std * w'``, each hidden value is ``std`` times the standardised model's (the l_inf
    distance is translation invariant and positively homogeneous, mean shift commutes with
    scaling), so the logits are ``std`` times its logits.  Adam's update does not depend on the
    gradient's scale, so a learning rate ``std * lr'`` keeps the two runs equal at every step
    (up to Adam's ``eps``).  Without it the first layer's ``N(0, 1)`` prototypes lie far outside
    pixel data in ``[0, 1]`` and the identity init's constant (10) dwarfs the inputs.

    Only distance layers are rescaled (a hybrid head is left as built).  In place.
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"standardised_init needs a finite mean and std > 0, got mean={mean}, std={std}")
    with torch.no_grad():
        for i, layer in enumerate(distance_layers(model)):
            layer.weight.mul_(std)
            if i == 0:
                layer.weight.add_(mean)
            elif layer.bias is not None:
                layer.bias.mul_(std)


def pair_lipschitz(model: nn.Sequential) -> torch.Tensor:
    """Differentiable ``L[c, j]`` bounding the l_inf Lipschitz constant of ``f_c - f_j``.

    The same rule as :func:`lipkit.certify.compute_certificates` (which is what certifies): 2 for
    a model of 1-Lipschitz logits (``L = 1``, ``|a_c - a_j| <= 2 ||a||_inf``); with a hybrid head
    ``||v_c - v_j||_1 * ||W||_{inf->inf}`` (``W`` the head's first linear layer: max row l1 norm).
    The pairwise product is :func:`lipkit.bounds.pairwise_head_bound` (the certificate's formula).
    Returned as a 0-d tensor (no head) or a ``(C, C)`` tensor.  Assumes p = inf for the body
    (true at the end of the p schedule; earlier it is a training signal only).
    """
    last = model[-1]
    if isinstance(last, Negate):
        return torch.tensor(2.0)
    w1 = model[-3].weight  # the parametrised (actual) weight
    body = w1.abs().sum(dim=1).amax()  # ||W||_{inf->inf}: max row l1 norm (differentiable)
    return pairwise_head_bound(last.weight, body, math.inf)


def _pair_for(lcj: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``L[y_b, j]`` per sample, with 1 at ``j = y_b`` (``L_yy = 0`` would give 0/0 = NaN gradients)."""
    if lcj.dim() == 0:
        return lcj.expand(y.shape[0], num_classes)
    return lcj[y].scatter(1, y[:, None], 1.0)


def mix_loss(f: torch.Tensor, y: torch.Tensor, lcj: torch.Tensor, eps: float, ce_weight: float,
             temperature: float) -> torch.Tensor:
    """``mean_b max_{j != y} clamp(1 - (f_y - f_j) / (L_yj eps), 0, 1) + w * CE(t f, y)``.

    The hinge is 0 exactly when the certified radius ``min_j (f_y - f_j) / L_yj`` reaches
    ``eps`` and 1 for a misclassified point (clipped: Zhang et al., ICLR 2022); ``eps = 0`` drops it.
    """
    loss = f.new_zeros(())
    if eps > 0 and lcj.dim() == 0:  # one constant: the hinge of the top-2 margin
        loss = loss + (1.0 - top2_margin(f, y) / (lcj.to(f.dtype) * eps)).clamp(0.0, 1.0).mean()
    elif eps > 0:
        lyj = _pair_for(lcj.to(f.dtype), y, f.shape[1])
        gap = f.gather(1, y[:, None]) - f
        h = (1.0 - gap / (lyj * eps)).clamp(0.0, 1.0)
        h = h.scatter(1, y[:, None], 0.0)
        loss = loss + h.amax(dim=1).mean()
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(temperature * f, y)
    return loss


@dataclass(frozen=True)
class LinfSchedule:
    """Values in force at one training step."""

    p: float
    eps: float
    ce_weight: float


def _ratio(t: int, window: list[float], total: int) -> float:
    a, b = window[0] * total, window[1] * total
    if b <= a:
        return 1.0 if t >= a else 0.0
    return min(max((t - a) / (b - a), 0.0), 1.0)


def schedule_at(cfg, epoch: int, step: int, steps_per_epoch: int) -> LinfSchedule:
    """The schedule values at ``step`` of ``epoch`` (0-based), a pure function of the config:
    with ``t = epoch * steps_per_epoch + step`` and ``T = epochs * steps_per_epoch``, a window
    ``[a, b]`` is at ratio ``clamp((t - aT) / ((b - a) T), 0, 1)``."""
    t = epoch * steps_per_epoch + step
    total = cfg.epochs * steps_per_epoch
    r_p = _ratio(t, cfg.p_window, total)
    if r_p >= 1.0:
        p = math.inf
    else:
        p = float(round(cfg.p_start * (cfg.p_end / cfg.p_start) ** r_p))
    eps = cfg.margin * _ratio(t, cfg.eps_window, total)
    w0, w1 = cfg.ce_weight
    w = 0.0 if w0 == 0 else w0 * (w1 / w0) ** r_p
    return LinfSchedule(p=p, eps=eps, ce_weight=w)


def apply_schedule(model: nn.Module, sched: LinfSchedule) -> None:
    """Set ``p`` of every l_inf-distance layer (SortNet layers have no relaxation)."""
    for m in model.modules():
        if isinstance(m, LinfDistLinear):
            m.p = sched.p


@torch.no_grad()
def recalibrate_mean_shift(model: nn.Sequential, x: torch.Tensor, batch_size: int = 1024) -> None:
    """Set every mean-shift running mean to the exact mean over ``x`` of the *evaluation-mode*
    network, layer by layer.

    During training the running mean tracks training-mode outputs (batch statistics, l_p
    relaxation, SortNet masks); evaluation subtracts it as a constant.  Any constant keeps the
    Lipschitz bound, so this only improves accuracy (the recipe of Zhang et al. re-estimates the
    running means before testing as well).  Leaves ``model`` in eval mode.
    """
    model.eval()

    def run(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(h[i:i + batch_size]) for i in range(0, h.shape[0], batch_size)])

    h = x
    for layer in model:
        if _is_distance(layer) and layer.mean_shift:
            layer.running_mean.zero_()
            out = run(layer, h)
            if layer.bias is not None:
                out = out - layer.bias
            layer.running_mean.copy_(out.double().mean(dim=0).to(out.dtype))
        h = run(layer, h)


class LinfScheduleStrategy(TrainingStrategy):
    """The l_inf schedule as a :class:`~lipkit.training.strategy.TrainingStrategy`.

    * optimiser: decoupled weight decay on the head only (Zhang et al. never decay the distance-layer
      weights: they are prototypes, not gains);
    * every step: the schedule values of :func:`schedule_at` (``p`` of the relaxation, training radius
      ``eps``, CE weight) are applied to the model and, for ``loss: mix``, the loss is :func:`mix_loss`
      with the model's pairwise constants; a batch of fewer than 2 points is skipped (mean shift needs
      batch statistics);
    * metrics: nominal radii with the pairwise constants; the epoch record gets ``p``, ``eps`` and
      ``ce_weight`` of its last step;
    * before the final evaluation: ``p = inf`` and the mean-shift running means recalibrated on the
      training set (:func:`recalibrate_mean_shift`);
    * denormal floats are flushed to zero during training: ``|x - w|^p / max^p`` underflows to
      subnormals for large ``p``, which are 10-30x slower on x86 (measured 784 -> 1024 at batch 512,
      p = 32: 13.3 s -> 1.0 s per step); flushing changes terms below 1e-38 of a sum whose largest
      term is 1.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.values: LinfSchedule | None = None
        self._flush = False

    def param_groups(self, trainer: Trainer) -> list[dict[str, Any]]:
        model = trainer.model
        dist = {id(q) for m in distance_layers(model) for q in m.parameters()}
        return [{"params": [q for q in model.parameters() if id(q) in dist], "weight_decay": 0.0},
                {"params": [q for q in model.parameters() if id(q) not in dist],
                 "weight_decay": self.cfg.weight_decay}]

    def on_train_start(self, trainer: Trainer) -> None:
        self._flush = torch.set_flush_denormal(True)

    def before_step(self, trainer: Trainer, state: StepState) -> None:
        if len(state.idx) < 2:
            state.skip = True
            return
        self.values = schedule_at(self.cfg, state.epoch, state.step, trainer.steps_per_epoch)
        apply_schedule(trainer.model, self.values)
        state.extras["linf_schedule"] = self.values

    def loss(self, trainer: Trainer, state: StepState) -> torch.Tensor | None:
        if self.cfg.loss != "mix":  # ce / hinge / hkr: the trainer's loss of the config
            return None
        v = state.extras["linf_schedule"]
        return mix_loss(state.logits, state.y, pair_lipschitz(trainer.model), v.eps, v.ce_weight,
                        self.cfg.temperature)

    def nominal(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return nominal_radius(logits, y, pair_lipschitz(model))

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.values is not None:
            record["p"] = self.values.p
            record["eps"] = self.values.eps
            record["ce_weight"] = self.values.ce_weight

    def before_final_eval(self, trainer: Trainer) -> None:
        apply_schedule(trainer.model, schedule_at(self.cfg, self.cfg.epochs, 0, trainer.steps_per_epoch))
        recalibrate_mean_shift(trainer.model, trainer.split.x_train)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._flush:
            torch.set_flush_denormal(False)
            self._flush = False
