"""Lipschitz-margin certificates: certified radii and certified accuracy.

If every logit difference ``x -> f_c(x) - f_j(x)`` is ``L_cj``-Lipschitz for the l_p norm, then
the predicted class ``c`` cannot change inside the ball of radius

    r(x) = min_{j != c} (f_c(x) - f_j(x)) / L_cj

(Tsuzuku, Sato & Sugiyama, "Lipschitz-Margin Training", NeurIPS 2018; for l_inf see e.g.
Zhang et al., "Towards certifying l_inf robustness using neural networks with l_inf-dist
neurons", ICML 2021).  ``L_cj`` is bounded in two ways and the smaller bound is used:

* globally, from ``L = lipschitz_bound(model, p)``: ``|a_c - a_j| <= sqrt(2) ||a||_2`` and
  ``|a_c - a_j| <= 2 ||a||_inf`` give ``L_cj <= sqrt(2) L`` (l2) and ``L_cj <= 2 L`` (l_inf);
* pairwise, when ``model`` is an ``nn.Sequential`` whose last module is an ``nn.Linear``
  (parametrised or not; its *actual* weight ``W`` is read): by Hoelder,
  ``L_cj <= ||w_c - w_j||_q * L_body`` with ``L_body = lipschitz_bound(model[:-1], p)`` and
  ``q`` the dual exponent of ``p`` (q = 2 for l2, q = 1 for l_inf).

Round-off.  The margins are computed from a float64 copy of the model whose weights are the
float32 weights the forward pass really uses, cast exactly (parametrisations are materialised
once in the model's own dtype, then removed).  The certificate is about the deployed model,
evaluated in float32, at every point of the ball; its logits differ from the exact ones by its
forward round-off, so an allowance ``delta`` is subtracted from every margin.  For a chain of
modules (nested ``nn.Sequential`` of ``nn.Linear``/``nn.Conv*`` and known activations) the
allowance is the standard a-priori bound (Higham, "Accuracy and Stability of Numerical
Algorithms", 2002, Sec. 3.1): an affine layer computed in floating point satisfies
``|fl(Wh + b) - (Wh + b)| <= gamma_{n+1} (|W||h| + |b|)``, ``gamma_k = k u / (1 - k u)``, for
any summation order.  Each layer's error vector ``e_i`` is propagated to the logits with the
Lipschitz bound of the remaining layers, ``||err||_p <= sum_i L_{>i} ||e_i||_p``, and a margin
moves by at most ``2 ||err||_inf <= 2 ||err||_p``.  To make the bound hold at every point of the
ball (not only at ``x``), ``|| |W||h| + |b| ||_p`` is increased by
``|| |W| ||_p L_{<i} r_max`` (``r_max``: the radius before the allowance; ``L_{<i}``: the
bound of the layers before).  ``u`` is ``2^-24 + 2^-53`` (float32 forward plus our float64
evaluation), the activations ``|h|`` come from the float64 copy and we take a factor 2 on
``gamma`` to cover second-order terms.  Non-exact activations (tanh, sigmoid, ...) add
``16 u |output|``.  l_inf-distance and SortNet layers, dense or conv (a conv layer evaluates the
dense neuron on each zero-padded patch), are analysed per output (``_linf_distance_error``,
``_sortnet_error``).  In every case the allowance is at least ``1e-5 * max_j |f_j(x)|`` and at
least ``8 |f32(x) - f64(x)|_max`` (the round-off actually observed).  For models outside this
class (custom ``forward`` with branches, unknown layers) no a-priori bound is computed: the
allowance is then ``max(1e-4 max_j |f_j(x)|, 8 |f32(x) - f64(x)|_max)``, a heuristic (about
1700 float32 units of the logit scale), and the result says so
(``CertificateResult.roundoff_rigorous`` is False).  The analysis assumes IEEE float32
arithmetic (no TF32 / reduced-precision matmul).

Radii are computed in float64, rounded down, and returned as float64 tensors.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import (
    UnsupportedModuleError,
    computes_as,
    lipschitz_bound,
    normalize_p,
    operator_norm,
    pairwise_head_bound,
    round_up,
    unwrap,
)
from lipkit.nn.activations import Abs, FullSort, GroupSort, MaxMin, Negate, SmoothSoftplus
from lipkit.nn.distance import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear
from lipkit.nn.parametrize._util import materialize_in_place

__all__ = ["CertificateResult", "compute_certificates", "certified_radius", "certified_accuracy"]

_U32 = 2.0**-24
_U64 = 2.0**-53
_U = _U32 + _U64
#: floor of the round-off allowance, relative to the logit scale max_j |f_j(x)|
REL_FLOOR = 1e-5
#: the (heuristic) floor used when no a-priori bound is available
REL_FLOOR_UNANALYSED = 1e-4

_EXACT = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d,
          nn.ReLU6, nn.Hardtanh)
#: lipkit activations that sort, negate or take |x|: exact in floating point
_EXACT_LIPKIT = (GroupSort, MaxMin, FullSort, Abs, Negate)
_ROUNDED = (nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, SmoothSoftplus, nn.Softsign)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class CertificateResult:
    """Per-input certificate.

    Attributes:
        radius: float64 ``(B,)``; the predicted class is constant on the open l_p ball of this
            radius around each input (0 when the margin does not exceed the allowance).
        prediction: ``(B,)`` long, the deployed (float32) model's predicted class.
        margin: float64 ``(B,)``, ``min_{j != c} f_c - f_j`` from the float64 evaluation.
        allowance: float64 ``(B,)``, round-off allowance subtracted from every margin.
        lipschitz: the global bound ``L = lipschitz_bound(model, p)``.
        p: the norm (2.0 or inf).
        roundoff_rigorous: whether the allowance is the a-priori bound (True) or the floor only.
    """

    radius: torch.Tensor
    prediction: torch.Tensor
    margin: torch.Tensor
    allowance: torch.Tensor
    lipschitz: float
    p: float
    roundoff_rigorous: bool


# --------------------------------------------------------------------------- helpers


def _leaves(model: nn.Module) -> list[nn.Module] | None:
    """Flatten nested Sequentials into a chain of leaf modules; None if not a chain."""
    if _plain_sequential(model):
        out: list[nn.Module] = []
        for child in model:
            sub = _leaves(child)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(model, nn.Sequential):  # a subclass with its own forward
        return None
    return [model]


def _plain_sequential(model: nn.Module) -> bool:
    return computes_as(model, (nn.Sequential,), subclasses=True)


def _is_plain(module: nn.Module, classes: tuple[type, ...]) -> bool:
    """``module`` runs the code of one of ``classes`` (:func:`lipkit.bounds.computes_as`): a subclass, a
    hook or a replaced method may not compute what the analysis of the class assumes."""
    return computes_as(module, classes, subclasses=True)


def _is_exact(module: nn.Module) -> bool:
    return computes_as(module, _EXACT + _EXACT_LIPKIT)


def _float64_copy(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every parametrisation materialised in the model's own dtype
    (so the weights are bit-identical to the ones its forward uses), then cast to float64."""
    twin = copy.deepcopy(model)
    for mod in list(twin.modules()):
        if parametrize.is_parametrized(mod):
            materialize_in_place(mod, requires_grad=False)
    return twin.to(torch.float64).eval()


def _check_float_mode() -> None:
    """The round-off analysis assumes IEEE float32 arithmetic: refuse reduced-precision modes."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            raise ValueError(f"certificates cannot be computed under torch.autocast ({device}): the forward "
                             "pass then runs in reduced precision, which the round-off analysis does not "
                             "cover")
    if torch.get_float32_matmul_precision() != "highest":
        raise ValueError("certificates need torch.set_float32_matmul_precision('highest'): TF32 / bfloat16 "
                         "matrix products are outside the round-off analysis")


def _validate_x(x: object, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"x has per-sample shape {tuple(x.shape[1:])}, expected input_shape "
                         f"{tuple(input_shape)}")
    return x


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except RuntimeError as err:
        raise ValueError(f"model rejected an input batch of shape {tuple(x.shape)}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return logits of shape (B, classes) = ({x.shape[0]}, C), got {shape}")
    if out.shape[1] < 2:
        raise ValueError(f"model must return at least 2 logits per input, got {out.shape[1]}")
    return out


def _deployed_logits_and_twin(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """The deployed model's logits at ``x`` (eval mode, in the model's own dtype; its mode is restored)
    and its float64 twin (:func:`_float64_copy`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            dtype = param.dtype if param is not None and param.is_floating_point() else x.dtype
            logits32 = _run(model, x.to(dtype))
            twin = _float64_copy(model)
    finally:
        model.train(was_training)
    return logits32, twin


def _pairwise_bound(model: nn.Module, p: float, input_shape) -> torch.Tensor | None:
    """Matrix ``B[c, j] >= Lip(f_c - f_j)`` from the last linear layer, or None."""
    if not (_plain_sequential(model) and len(model) >= 1 and _is_plain(model[-1], (nn.Linear,))):
        return None
    try:
        body = lipschitz_bound(model[:-1], p, input_shape=input_shape)
    except UnsupportedModuleError:
        return None
    w = model[-1].weight.detach().to(torch.float64)
    slack = 4.0 * (w.shape[1] + 4) * 2.0**-52
    return pairwise_head_bound(w, body, p) * (1.0 + slack) * (1.0 + 1e-12)


def _affine_abs(mod: nn.Module, h_abs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``|W| h_abs + |b|`` for an affine layer (float64), and its fan-in."""
    w = mod.weight.detach().abs()
    b = mod.bias.detach().abs() if getattr(mod, "bias", None) is not None else None
    if isinstance(mod, nn.Linear):
        return nn.functional.linear(h_abs, w, b), w.shape[1]
    return mod._conv_forward(h_abs, w, b), int(w[0].numel())


def _abs_operator_norm(mod: nn.Module, p: float) -> float:
    """Sound bound of the l_p operator norm of ``h -> |W| h`` (the layer with ``|W|``, no bias)."""
    if isinstance(mod, nn.Linear):
        return operator_norm(mod.weight.detach().abs(), p)
    twin = copy.deepcopy(mod)
    with torch.no_grad():
        twin.weight.abs_()
    twin.bias = None
    return lipschitz_bound(twin, p)


def _is_linf_distance(module: nn.Module) -> bool:
    """An exact-l_inf ``LinfDistLinear`` or ``LinfDistConv2d`` (p = inf) as lipkit defines it (not a
    subclass).  A conv layer computes, at each position, the dense neuron on the zero-padded patch
    (an exact copy), so the round-off analysis of the dense layer applies output by output."""
    return computes_as(module, (LinfDistLinear, LinfDistConv2d)) and math.isinf(float(module.p))


def _undo_shift_and_bias(m: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a distance layer's float64 output ``y = S - mu + b``: ``S`` (rows ``(B, n)``, ``n`` the
    outputs per sample) and ``|mu| + |b|`` (``(n,)``), ``mu`` the running mean when mean shift is on.
    ``mu`` and ``b`` are per output neuron (dense) or per output channel (conv, outputs in
    channel-major order)."""
    bsz = out.shape[0]
    s = out.reshape(bsz, m.out_features, -1)  # (B, out, positions); one position for dense layers
    extra = torch.zeros_like(s[0])
    if m.mean_shift and getattr(m, "running_mean", None) is not None:
        s = s + m.running_mean[:, None]
        extra = extra + m.running_mean.abs()[:, None]
    if m.bias is not None:
        s = s - m.bias.detach()[:, None]
        extra = extra + m.bias.detach().abs()[:, None]
    return s.reshape(bsz, -1), extra.reshape(-1)


def _is_sortnet(module: nn.Module) -> bool:
    """A ``SortNeuronLinear`` or ``SortNeuronConv2d`` as lipkit defines it (not a subclass); evaluated
    with exact top-K."""
    return computes_as(module, (SortNeuronLinear, SortNeuronConv2d))


def _sortnet_error(m: nn.Module, out: torch.Tensor, spread: torch.Tensor, p: float,
                   u: float = _U) -> torch.Tensor:
    """Bound of the float round-off of one SortNet layer (eval: ``y_o = sum_k c_k d_(k) - mu_o + b_o``;
    ``u`` as in :func:`_linf_distance_error`).

    With ``d_i = |h_i - w_oi|`` and ``D = max_i d_i``: the rounded subtraction moves every ``d_i``, hence
    every order statistic, by at most ``u D``; the float32 coefficients are off by ``u c_k``; summing
    ``K`` products errs by at most ``gamma_K sum_k c_k d_(k)``; ``- mu`` and ``+ b`` round once each.
    In all at most ``(K + 5) u (1 + O(u)) (D + |mu_o| + |b_o|) <= 2 (K + 3) u (D + |mu_o| + |b_o|)``.
    ``D`` is bounded by ``S / c_0`` (``S = y_o + mu_o - b_o >= c_0 D``, ``c_0`` the largest weight)
    and grows by at most ``spread`` over the ball.
    """
    c = m.coefficients
    s, extra = _undo_shift_and_bias(m, out)
    d_max = s.abs() / float(c[0]) * (1.0 + 1e-9)
    per_output = 2.0 * (len(c) + 3) * u * (d_max + spread[:, None] + extra[None, :])
    return torch.linalg.vector_norm(per_output, ord=p, dim=1)


def _linf_distance_error(m: nn.Module, out: torch.Tensor, spread: torch.Tensor, p: float,
                         u: float = _U) -> torch.Tensor:
    """Bound of the float round-off of one l_inf-distance layer, over the ball, in the l_p norm.

    ``u``: the unit round-off of the evaluation being bounded (default: a float32 forward plus our
    float64 one; :mod:`lipkit.certify.interval` passes ``2^-53`` for the float64 reference alone).

    In eval mode ``y_o = max_i |h_i - w_oi| - mu_o + b_o``.  Rounded: the subtraction ``h_i - w_oi``
    (relative error ``u``; ``|.|`` and ``max`` are exact, so ``d_o`` is off by at most ``u d_o``),
    then ``- mu_o`` and ``+ b_o`` (one rounding each): in all at most
    ``3u (1+u)^2 (d_o + |mu_o| + |b_o|) <= 4u (d_o + |mu_o| + |b_o|)``.  ``d_o`` is recovered from the
    float64 output (``d_o = y_o + mu_o - b_o``) and, over the ball, grows by at most ``spread``
    (``d_o`` is 1-Lipschitz in l_inf, and ``||.||_inf <= ||.||_p``).
    """
    d, extra = _undo_shift_and_bias(m, out)
    d = d.abs() * (1.0 + 1e-12)
    per_output = 4.0 * u * (d + spread[:, None] + extra[None, :])
    return torch.linalg.vector_norm(per_output, ord=p, dim=1)


def _rigorous_roundoff(chain: list[nn.Module], x64: torch.Tensor, p: float, r_max: torch.Tensor,
                       input_shape) -> torch.Tensor | None:
    """A-priori bound of ``||f32(x') - f(x')||_p`` over the ball ``||x' - x||_p <= r_max``."""
    for m in chain:
        if not (_is_plain(m, _AFFINE + _ROUNDED) or _is_exact(m) or _is_linf_distance(m) or _is_sortnet(m)):
            return None
        if isinstance(m, nn.Dropout) and m.training:
            return None
    try:
        prefix = [1.0]  # prefix[i] bounds the Lipschitz constant of chain[:i]
        for i in range(1, len(chain) + 1):
            prefix.append(lipschitz_bound(nn.Sequential(*chain[:i]), p, input_shape=input_shape))
        suffix = [lipschitz_bound(nn.Sequential(*chain[i + 1:]), p) for i in range(len(chain))]
    except UnsupportedModuleError:
        return None
    bsz = x64.shape[0]
    total = torch.zeros(bsz, dtype=torch.float64, device=x64.device)
    h = x64
    for i, m in enumerate(chain):
        out = m(h)
        if isinstance(m, _AFFINE):
            mag, n = _affine_abs(m, h.abs())
            k = n + 1
            gamma = 2.0 * k * _U / (1.0 - k * _U)
            # over the ball, ||h(x') - h(x)||_p <= prefix[i] r_max, so
            # || |W||h(x')| + |b| ||_p <= || |W||h(x)| + |b| ||_p + || |W| ||_p prefix[i] r_max
            spread = _abs_operator_norm(m, p) * prefix[i] * r_max
            e = gamma * (torch.linalg.vector_norm(mag.reshape(bsz, -1), ord=p, dim=1) + spread)
        elif _is_linf_distance(m):
            e = _linf_distance_error(m, out, prefix[i] * r_max, p)
        elif _is_sortnet(m):
            e = _sortnet_error(m, out, prefix[i] * r_max, p)
        elif isinstance(m, _ROUNDED):
            out_norm = torch.linalg.vector_norm(out.reshape(bsz, -1), ord=p, dim=1)
            e = 16.0 * _U * (out_norm + prefix[i + 1] * r_max)
        else:
            e = None
        if e is not None:
            total = total + suffix[i] * e
        h = out
    return total


def _round_down(t: torch.Tensor) -> torch.Tensor:
    t = t * (1.0 - 1e-12)
    return torch.nextafter(t, torch.full_like(t, -math.inf)).clamp_min(0.0)


# --------------------------------------------------------------------------- public API


def compute_certificates(model: nn.Module, x: torch.Tensor, p: float | int | str = 2, *,
                         lipschitz: float | None = None,
                         input_shape: tuple[int, ...] | None = None) -> CertificateResult:
    """Certify each input of a batch against l_p perturbations (see the module docstring).

    Args:
        model: a classifier returning logits ``(B, C)``; evaluated in eval mode (its mode is
            restored afterwards).
        x: a batch ``(B, ...)`` of finite floating-point inputs.
        p: 2 or inf.
        lipschitz: an externally known bound of ``Lip(model)`` for the l_p norm; if None,
            ``lipschitz_bound(model, p, input_shape=...)`` is used.  It replaces only the global
            bound (the pairwise bound, if applicable, is still computed from the weights).
        input_shape: per-sample input shape (checked against ``x``; passed to the bounds).
    """
    p = normalize_p(p)
    if p not in (2.0, math.inf):
        raise ValueError(f"certificates support p=2 and p=inf, got p={p}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = _validate_x(x, input_shape)
    _check_float_mode()
    model = unwrap(model)  # torch.compile / DataParallel: certify the module they run
    if lipschitz is None:
        lip = lipschitz_bound(model, p, input_shape=input_shape)
    else:
        lip = float(lipschitz)
        if not lip >= 0 or math.isnan(lip):
            raise ValueError(f"lipschitz must be a non-negative number, got {lipschitz!r}")

    logits32, twin = _deployed_logits_and_twin(model, x)
    x64 = x.detach().to(torch.float64)
    with torch.no_grad():
        logits = _run(twin, x64)

    bsz, n_cls = logits.shape
    pred = logits32.argmax(dim=1)
    top = logits.gather(1, pred[:, None])
    diff = top - logits  # (B, C): f_c - f_j
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask.scatter_(1, pred[:, None], False)

    # L_cj for each sample's predicted class c
    glob = (math.sqrt(2.0) if p == 2 else 2.0) * lip
    lcj = torch.full((bsz, n_cls), round_up(glob, 2), dtype=torch.float64, device=logits.device)
    pair = _pairwise_bound(twin, p, input_shape)
    if pair is not None:
        lcj = torch.minimum(lcj, pair.to(logits.device)[pred])

    margin = diff.masked_fill(~mask, math.inf).min(dim=1).values
    with torch.no_grad():
        r_max = (diff / lcj).masked_fill(~mask, math.inf).min(dim=1).values.clamp_min(0.0)
        r_max = torch.where(torch.isfinite(r_max), r_max, torch.zeros_like(r_max))
        chain = _leaves(twin)
        rig = _rigorous_roundoff(chain, x64, p, r_max, input_shape) if chain is not None else None
    scale = logits.abs().max(dim=1).values
    observed = (logits32.to(torch.float64) - logits).abs().max(dim=1).values
    rel = REL_FLOOR if rig is not None else REL_FLOOR_UNANALYSED
    floor = torch.maximum(rel * scale, 8.0 * observed)
    allowance = floor if rig is None else torch.maximum(floor, 2.0 * rig)
    allowance = allowance * (1.0 + 1e-9)

    radius = ((diff - allowance[:, None]) / lcj).masked_fill(~mask, math.inf).min(dim=1).values
    radius = torch.where(torch.isnan(radius), torch.zeros_like(radius), radius)
    radius = _round_down(radius.clamp_max(torch.finfo(torch.float64).max))
    return CertificateResult(radius=radius, prediction=pred, margin=margin, allowance=allowance,
                             lipschitz=lip, p=p, roundoff_rigorous=rig is not None)


#: alias of :func:`compute_certificates` for ``from lipkit.certify.margin import certify`` (not star-exported,
#: so that it does not shadow the ``lipkit.certify`` module in the package namespace).
certify = compute_certificates


def certified_radius(model: nn.Module, x: torch.Tensor, p: float | int | str = 2, *,
                     lipschitz: float | None = None,
                     input_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Certified l_p radius (float64, shape ``(B,)``) of the *predicted* class of each input.

    ``compute_certificates(model, x, p, ...).radius``; whether the prediction is correct is not checked
    here (see :func:`certified_accuracy`).
    """
    return compute_certificates(model, x, p, lipschitz=lipschitz, input_shape=input_shape).radius


def certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | Sequence[float],
                       p: float | int | str = 2, *, lipschitz: float | None = None,
                       input_shape: tuple[int, ...] | None = None) -> float | dict[float, float]:
    """Fraction of inputs that are correctly classified with certified radius ``>= eps``.

    ``eps`` may be one number (returns a float) or a sequence (returns ``{eps: accuracy}``).
    ``eps = 0`` gives the clean accuracy.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype in (torch.bool,) or y.is_floating_point():
        raise ValueError("y must be a 1-D integer tensor of class labels")
    if isinstance(x, torch.Tensor) and y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {x.shape[0]} inputs")
    many = not isinstance(eps, (int, float))
    eps_list = [float(e) for e in (eps if many else [eps])]
    for e in eps_list:
        if not e >= 0 or math.isinf(e):
            raise ValueError(f"eps must be finite and >= 0, got {e!r}")
    if y.numel() and y.min() < 0:
        raise ValueError("y contains negative labels")
    res = compute_certificates(model, x, p, lipschitz=lipschitz, input_shape=input_shape)
    correct = res.prediction == y.to(res.prediction.device)
    out = {e: float((correct & (res.radius >= e)).double().mean().item()) for e in eps_list}
    return out if many else out[eps_list[0]]
