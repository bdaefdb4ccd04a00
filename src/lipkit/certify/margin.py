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

Round-off.  The margins are computed from a float64 twin of the model whose weights are the
float32 weights the forward pass really uses, cast exactly (:mod:`lipkit.certify.twin`).  The
certificate is about the deployed model, evaluated in float32, at every point of the ball, so an
allowance is subtracted from every margin (:func:`lipkit.certify.roundoff.margin_allowance`):

* rigorous (``CertificateResult.roundoff_rigorous`` True): for a chain of modules (nested plain
  ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv*``, known activations, l_inf-distance and SortNet
  layers) :func:`lipkit.certify.roundoff.forward_error_bound` gives an a-priori bound ``E`` (Higham,
  "Accuracy and Stability of Numerical Algorithms", 2002, Sec. 3.1) of the float32 and float64
  round-off of the logits over the ball of radius ``r_max`` (the radius before the allowance); a margin
  moves by at most ``2 ||err||_inf <= 2 E``, so ``2 E`` is the allowance the proof uses.  It is raised to
  ``1e-5 * max_j |f_j(x)|`` as a margin of safety the proof does not need.  If the round-off observed
  at ``x`` ever exceeded ``E`` (arithmetic outside the analysis), the batch falls back to the heuristic.
* heuristic (``roundoff_rigorous`` False): for models outside this class (custom ``forward`` with
  branches, unknown layers) no a-priori bound is computed and the allowance is
  ``max(1e-4 max_j |f_j(x)|, 8 |f32(x) - f64(x)|_max)`` (about 1700 float32 units of the logit scale,
  or 8 times the round-off seen at ``x``).  The radius is then NOT a proof about the float32 model:
  it is a proof about the exact function of its weights minus a guessed round-off.

The analysis assumes IEEE float32 arithmetic (no TF32 / reduced-precision matmul; checked).

Single-logit binary models.  A model returning one output per input, ``(B, 1)``, is read as a binary
classifier deciding ``sign(f(x))``: class 1 when the deployed ``f32(x) > 0``, class 0 otherwise.  With
``L = lipschitz_bound(model, p)`` (the output is a scalar, so no factor ``sqrt(2)`` or ``2``), ``|f(x') -
f(x)| <= L ||x' - x||_p`` and the decision cannot change inside the ball of radius

    r(x) = (s f64(x) - allowance) / L,    s = +1 for class 1, -1 for class 0,

clamped at 0 (0 too when the twin's sign disagrees with the deployed one).  The allowance is the same
:func:`lipkit.certify.roundoff.margin_allowance` as for margins (``2 E`` where ``E`` bounds the float32
and float64 round-off over the ball; the proof needs only ``E`` here, one output and no difference), so
a single logit is certified exactly as the margin of the two logits ``(0, f)`` would be, but with the
bound ``L`` of ``f`` instead of ``2 L``.  This is the rule for monotone tabular models
(:class:`lipkit.MonotonicNetwork`, whose registered bound is the wrapper's own, never ``lam``).

Models ``g(x) + x A``.  A module that declares ``lipkit_skip_form() -> (cls, g, A)`` (a
``MonotonicNetwork``: ``forward(x) = fl(g(x) + fl(x A))``) and runs ``cls``'s own forward gets an
a-priori round-off bound when ``g`` is a chain (:func:`_skip_error_bound`), for one logit or many.

Radii are computed in float64, rounded down, and returned as float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lipkit.bounds import (
    UnsupportedModuleError,
    computes_as,
    lipschitz_bound,
    normalize_p,
    pairwise_head_bound,
    round_up,
    unwrap,
)
from lipkit.certify.roundoff import (
    UNDERFLOW,
    U,
    affine_error,
    chain_of,
    computes_plain,
    forward_error_bound,
    is_plain_sequential,
    margin_allowance,
)
from lipkit.certify.twin import (
    check_float_mode,
    deployed_dtype,
    deployed_logits_and_twin,
    deployed_mode,
    float64_copy,
    run_logits,
    validate_x,
)
from lipkit.losses import top2_margin

__all__ = ["CertificateResult", "compute_certificates", "certified_radius", "certified_accuracy"]

@dataclass
class CertificateResult:
    """Per-input certificate.

    Attributes:
        radius: float64 ``(B,)``; the predicted class is constant on the open l_p ball of this
            radius around each input (0 when the margin does not exceed the allowance).
        prediction: ``(B,)`` long, the deployed (float32) model's predicted class.
        margin: float64 ``(B,)``, ``min_{j != c} f_c - f_j`` from the float64 evaluation (one logit:
            ``s f(x)``, ``s = +1`` for class 1 and ``-1`` for class 0).
        allowance: float64 ``(B,)``, round-off allowance subtracted from every margin.
        lipschitz: the global bound ``L = lipschitz_bound(model, p)``.
        p: the norm (2.0 or inf).
        roundoff_rigorous: True when the allowance covers the float round-off by the a-priori bound
            (the radius is a proof about the float32 model); False when it is the heuristic floor only
            (a proof about the exact function of the weights, with a guessed round-off).
    """

    radius: torch.Tensor
    prediction: torch.Tensor
    margin: torch.Tensor
    allowance: torch.Tensor
    lipschitz: float
    p: float
    roundoff_rigorous: bool


# --------------------------------------------------------------------------- helpers

#: kept for callers of the former private names (tests/test_conv.py)
_deployed_logits_and_twin = deployed_logits_and_twin


def pairwise_bound(model: nn.Module, p: float, input_shape) -> torch.Tensor | None:
    """Matrix ``B[c, j] >= Lip(f_c - f_j)`` (l_p) from the last linear layer, or None (internal to certify).

    ``||w_c - w_j||_q * L_body`` (:func:`lipkit.bounds.pairwise_head_bound`, Hoelder, ``q`` dual to ``p``),
    evaluated in float64 and inflated by ``4 (n + 4) EPS64`` for the norm's round-off (``n`` its length)
    and by ``1e-12`` for the product; None unless ``model`` is a plain ``nn.Sequential`` ending in an
    ``nn.Linear`` whose body has a bound.
    """
    if not (is_plain_sequential(model) and len(model) >= 1 and computes_plain(model[-1], (nn.Linear,))):
        return None
    try:
        body = lipschitz_bound(model[:-1], p, input_shape=input_shape)
    except UnsupportedModuleError:
        return None
    w = model[-1].weight.detach().to(torch.float64)
    slack = 4.0 * (w.shape[1] + 4) * 2.0**-52
    return pairwise_head_bound(w, body, p) * (1.0 + slack) * (1.0 + 1e-12)


def _round_down(t: torch.Tensor) -> torch.Tensor:
    t = t * (1.0 - 1e-12)
    return torch.nextafter(t, torch.full_like(t, -math.inf)).clamp_min(0.0)


# --------------------------------------------------------------------------- public API


def compute_certificates(model: nn.Module, x: torch.Tensor, p: float | int | str = 2, *,
                         lipschitz: float | None = None,
                         input_shape: tuple[int, ...] | None = None) -> CertificateResult:
    """Certify each input of a batch against l_p perturbations (see the module docstring).

    Args:
        model: a classifier returning logits ``(B, C)``, ``C >= 2``, or one logit ``(B, 1)`` (a binary
            classifier deciding ``sign f``: see the module docstring); evaluated in eval mode (its mode
            is restored afterwards).
        x: a batch ``(B, ...)`` of finite floating-point inputs.
        p: 2 or inf.
        lipschitz: an externally known bound of ``Lip(model)`` for the l_p norm; if None,
            ``lipschitz_bound(model, p, input_shape=...)`` is used.  It replaces only the global
            bound (the pairwise bound, if applicable, is still computed from the weights).
        input_shape: per-sample input shape (checked against ``x``; passed to the bounds).  Default:
            ``x``'s own (``x.shape[1:]``): the certificate is about perturbations of ``x``, so the bounds may
            use the size the model runs at -- for convolutions, the exact operator on that grid, tighter
            and much cheaper than the size-free bound.

    Returns:
        a :class:`CertificateResult`.  With ``roundoff_rigorous`` True the radius is a proof about the
        deployed float32 model (allowance ``max(2 E, 1e-5 scale)``, ``E`` the a-priori round-off bound over
        the ball; only ``2 E`` is used by the proof).  With ``roundoff_rigorous`` False (no a-priori bound
        for this model) the allowance is the heuristic ``max(1e-4 scale, 8 observed)`` and the radius is
        NOT a proof about the float32 model (module docstring).
    """
    p = normalize_p(p)
    if p not in (2.0, math.inf):
        raise ValueError(f"certificates support p=2 and p=inf, got p={p}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = validate_x(x, input_shape)
    input_shape = tuple(x.shape[1:]) if input_shape is None else input_shape
    check_float_mode()
    model = unwrap(model)  # torch.compile / DataParallel: certify the module they run
    if lipschitz is None:
        lip = lipschitz_bound(model, p, input_shape=input_shape)
    else:
        lip = float(lipschitz)
        if not lip >= 0 or math.isnan(lip):
            raise ValueError(f"lipschitz must be a non-negative number, got {lipschitz!r}")

    if _single_output(model, x):
        return _binary_certificates(model, x, p, lip, input_shape)
    logits32, twin = deployed_logits_and_twin(model, x)
    x64 = x.detach().to(torch.float64)
    with torch.no_grad():
        logits = run_logits(twin, x64)

    bsz, n_cls = logits.shape
    pred = logits32.argmax(dim=1)
    top = logits.gather(1, pred[:, None])
    diff = top - logits  # (B, C): f_c - f_j
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask.scatter_(1, pred[:, None], False)

    # L_cj for each sample's predicted class c
    glob = (math.sqrt(2.0) if p == 2 else 2.0) * lip
    lcj = torch.full((bsz, n_cls), round_up(glob, 2), dtype=torch.float64, device=logits.device)
    pair = pairwise_bound(twin, p, input_shape)
    if pair is not None:
        lcj = torch.minimum(lcj, pair.to(logits.device)[pred])

    margin = top2_margin(logits, pred)  # = min_{j != c} (f_c - f_j): subtraction rounds monotonically
    with torch.no_grad():
        r_max = (diff / lcj).masked_fill(~mask, math.inf).min(dim=1).values.clamp_min(0.0)
        r_max = torch.where(torch.isfinite(r_max), r_max, torch.zeros_like(r_max))
        bound = _error_bound(model, twin, x64, p, r_max, input_shape, logits)
    scale = logits.abs().max(dim=1).values
    observed = (logits32.to(torch.float64) - logits).abs().max(dim=1).values
    allowance, rigorous = margin_allowance(bound, scale, observed)

    radius = ((diff - allowance[:, None]) / lcj).masked_fill(~mask, math.inf).min(dim=1).values
    radius = torch.where(torch.isnan(radius), torch.zeros_like(radius), radius)
    radius = _round_down(radius.clamp_max(torch.finfo(torch.float64).max))
    return CertificateResult(radius=radius, prediction=pred, margin=margin, allowance=allowance,
                             lipschitz=lip, p=p, roundoff_rigorous=rigorous)


def _single_output(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` maps the first input of ``x`` to one output (eval mode; its mode restored)."""
    with deployed_mode(model):
        try:
            out = model(x[:1].to(deployed_dtype(model, x)))
        except RuntimeError:
            return False  # the logits path runs the whole batch and reports the error
    return isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape == (1, 1)


def _skip_error_bound(model: nn.Module, twin: nn.Module, x64: torch.Tensor, p: float, r_max: torch.Tensor,
                      input_shape: tuple[int, ...] | None, out64: torch.Tensor) -> torch.Tensor | None:
    """A-priori round-off bound (as :func:`forward_error_bound`) for a module computing
    ``fl(g(x) + fl(x A))`` (it says so by ``lipkit_skip_form()``: a :class:`lipkit.MonotonicNetwork`),
    ``g`` a chain; None otherwise.

    Over the ball ``||x' - x||_p <= r`` (``U`` covers the float32 forward and the float64 twin together):
    ``E_g`` is :func:`forward_error_bound` of ``g``'s chain; ``x A`` is an inner product of length ``n``,
    bounded as a bias-free affine layer of weight ``A^T`` (:func:`affine_error`, spread ``r``); the final
    addition rounds ``g32 + t32 = f(x') + e_g + e_t`` once, an error at most
    ``U (||f64(x)||_p + E_g + E_t + L r) + 2^-125 m^(1/p)`` (``||f(x')||_p <= ||f(x)||_p + L r``,
    ``||f(x)||_p <= ||f64(x)||_p + E_g + E_t``, ``L = lipschitz_bound(model, p)``).  Applied only when the
    twin runs the named class's own forward and its ``A`` equals the deployed model's bit for bit (the
    twin then computes the same real function).
    """
    form, deployed_form = getattr(twin, "lipkit_skip_form", None), getattr(model, "lipkit_skip_form", None)
    if not (callable(form) and callable(deployed_form)):
        return None
    cls, body, a = form()
    if not (isinstance(cls, type) and computes_as(twin, (cls,), subclasses=True)):
        return None
    a_deployed = deployed_form()[2].detach().to(device=a.device, dtype=torch.float64)
    a = a.detach().to(torch.float64)
    if a.shape != a_deployed.shape or not torch.equal(a, a_deployed):
        return None
    chain = chain_of(body)
    if chain is None:
        return None
    e_g = forward_error_bound(chain, x64, p, r_max, input_shape)
    if e_g is None:
        return None
    m = out64.shape[1]
    if a.dim() != 2 or a.shape[0] != x64.shape[1] or a.shape[1] not in (1, m):
        return None
    lin = nn.Linear(a.shape[0], m, bias=False, dtype=torch.float64, device=x64.device)
    with torch.no_grad():
        lin.weight.copy_(a.expand(-1, m).T)
    e_t = affine_error(lin, x64, r_max, p)
    try:
        lip = lipschitz_bound(twin, p, input_shape=input_shape)
    except UnsupportedModuleError:
        return None
    f_norm = torch.linalg.vector_norm(out64, ord=p, dim=1)
    under = UNDERFLOW * (1.0 if math.isinf(p) else m ** (1.0 / p))
    e_add = U * (f_norm + e_g + e_t + lip * r_max) + under
    return (e_g + e_t + e_add) * (1.0 + 1e-9)


def _error_bound(model: nn.Module, twin: nn.Module, x64: torch.Tensor, p: float, r_max: torch.Tensor,
                 input_shape: tuple[int, ...] | None, out64: torch.Tensor) -> torch.Tensor | None:
    """:func:`forward_error_bound` for a chain, :func:`_skip_error_bound` for ``g(x) + x A``, else None."""
    chain = chain_of(twin)
    bound = forward_error_bound(chain, x64, p, r_max, input_shape) if chain is not None else None
    if bound is not None:
        return bound
    return _skip_error_bound(model, twin, x64, p, r_max, input_shape, out64)


def _binary_certificates(model: nn.Module, x: torch.Tensor, p: float, lip: float,
                         input_shape: tuple[int, ...] | None) -> CertificateResult:
    """Certificates of a single-logit binary model (decision ``sign f``; module docstring)."""
    with deployed_mode(model):
        out32 = model(x.to(deployed_dtype(model, x)))
        twin = float64_copy(model)
    x64 = x.detach().to(torch.float64)
    with torch.no_grad():
        out64 = twin(x64)
    for name, out in (("model", out32), ("its float64 copy", out64)):
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], 1):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{name} must return one logit per input, ({x.shape[0]}, 1), got {shape}")
    f32, f64 = out32[:, 0], out64[:, 0]
    pred = (f32 > 0).long()
    sign = pred.to(torch.float64) * 2.0 - 1.0
    margin = sign * f64  # > 0 when the twin agrees with the deployed decision
    lipu = round_up(lip, 2)
    with torch.no_grad():
        r_max = (margin / lipu).clamp_min(0.0) if lipu > 0 else torch.zeros_like(margin)
        r_max = torch.where(torch.isfinite(r_max), r_max, torch.zeros_like(r_max))
        bound = _error_bound(model, twin, x64, p, r_max, input_shape, out64)
    scale = f64.abs()
    observed = (f32.to(torch.float64) - f64).abs()
    allowance, rigorous = margin_allowance(bound, scale, observed)
    if lipu > 0:
        radius = (margin - allowance) / lipu
    else:  # a constant model: the decision never changes, unless it sits within round-off of 0
        radius = torch.where(margin > allowance, torch.full_like(margin, math.inf), torch.zeros_like(margin))
    radius = torch.where(torch.isnan(radius), torch.zeros_like(radius), radius)
    radius = _round_down(radius.clamp_max(torch.finfo(torch.float64).max))
    return CertificateResult(radius=radius, prediction=pred, margin=margin, allowance=allowance,
                             lipschitz=lip, p=p, roundoff_rigorous=rigorous)


#: alias of :func:`compute_certificates` for ``from lipkit.certify.margin import certify`` (not star-exported,
#: so that it does not shadow the ``lipkit.certify`` module in the package namespace).
certify = compute_certificates


def certified_radius(model: nn.Module, x: torch.Tensor, p: float | int | str = 2, *,
                     lipschitz: float | None = None,
                     input_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Certified l_p radius (float64, shape ``(B,)``) of the *predicted* class of each input (for a
    single-logit model ``(B, 1)``, of the decision ``sign f(x)``, with the bound ``L`` of ``f``).

    ``compute_certificates(model, x, p, ...).radius``; whether the prediction is correct is not checked
    here (see :func:`certified_accuracy`).
    """
    return compute_certificates(model, x, p, lipschitz=lipschitz, input_shape=input_shape).radius


def certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | Sequence[float],
                       p: float | int | str = 2, *, lipschitz: float | None = None,
                       input_shape: tuple[int, ...] | None = None) -> float | dict[float, float]:
    """Fraction of inputs that are correctly classified with certified radius ``>= eps``.

    For a single-logit model ``(B, 1)`` the labels are 0 / 1 and the predicted class is ``f(x) > 0``.

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
