"""Interval (box) certificates for l_inf, tightened by the Lipschitz bound and an input domain.

The margin certificate of :mod:`lipkit.certify` asks ``f_c(x) - f_j(x) > L_cj eps``: it treats the
whole l_inf ball ``B(x, eps)`` and only uses the network's Lipschitz constant.  Interval bound
propagation (IBP; Gowal et al., "On the effectiveness of interval bound propagation for training
verifiably robust models", 2018) pushes the box ``[x - eps, x + eps]`` through the layers instead.
Each layer's box comes from its rule in the interval facet (:func:`lipkit.bounds.interval.
interval_forward`; the rules of lipkit's layers are in :mod:`lipkit.nn.intervals`): exact for
l_inf-distance and SortNet neurons, centre/radius ``W m + b ± |W| r`` for affine layers, end points for
monotone activations, each rounded outward.

Two facts make the boxes never looser than the margin certificate:

* every coordinate of the ``k``-th hidden vector is ``L_k``-Lipschitz for l_inf (``L_k`` the bound
  of the first ``k`` layers from :func:`lipkit.lipschitz_bound`), so the box of layer ``k`` is
  intersected with ``[h_k(x) - L_k eps, h_k(x) + L_k eps]``, widened by the float64 round-off of
  ``h_k(x)`` (done through the l_inf-distance / SortNet body, where that round-off is bounded a priori;
  a hybrid head after it gets the interval rules only);
* for a model whose logits are each 1-Lipschitz (the l_inf-distance nets of :mod:`lipkit.training.linf`)
  this gives ``f_c >= f_c(x) - eps`` and ``f_j <= f_j(x) + eps``, the margin certificate's test.

``input_domain=(lo, hi)`` also clips the input box to the set of valid inputs (pixels in
``[0, 1]``): the certificate then covers ``B(x, eps) ∩ [lo, hi]^n``, the threat model of an attack
that clamps its iterates to valid images (as :func:`lipkit.certify.attacks.pgd` does), and no more.  It is
stated as such in every report; without ``input_domain`` the whole ball is covered.

Round-off: bounds are computed in float64 from the float32 weights the deployed forward uses
(the float64 twin of :mod:`lipkit.certify.twin`), every bound is rounded outward by more than the
float64 rounding of its computation, and the predicted class must beat every other class by more than
the deployed model's round-off allowance over the ball (:func:`lipkit.certify.roundoff.margin_allowance`
of the a-priori bound :func:`lipkit.certify.roundoff.forward_error_bound` at radius ``eps``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds import UnsupportedModuleError, computes_as, lipschitz_bound
from lipkit.bounds.interval import interval_forward
from lipkit.certify.margin import CertificateResult, compute_certificates
from lipkit.certify.roundoff import (
    U64,
    chain_of,
    computes_plain,
    forward_error_bound,
    is_linf_distance,
    is_sortnet,
    linf_distance_error,
    margin_allowance,
    sortnet_error,
)
from lipkit.certify.twin import deployed_logits_and_twin, float64_copy, run_logits, validate_x
from lipkit.nn.activations import Negate, SmoothSoftplus

__all__ = ["interval_bounds", "interval_certified", "interval_certified_accuracy"]

#: relative outward padding of every float64 bound (float64 round-off is ~1.1e-16 per operation)
_PAD = 1e-12
_MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.ReLU6, nn.Hardtanh, SmoothSoftplus)
_SHAPE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def _negate(m: nn.Module) -> bool:
    return computes_as(m, (Negate,))


def _pad(lo: torch.Tensor, hi: torch.Tensor,
         scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    slack = _PAD * (1.0 + scale)
    return lo - slack, hi + slack


def _check_chain(model: nn.Module) -> list[nn.Module]:
    chain = chain_of(model)
    if chain is None:
        raise ValueError("interval certificates need an nn.Sequential chain of layers (nested Sequentials "
                         "are fine); "
                         f"got {type(model).__name__} with its own forward")
    for m in chain:
        ok = (is_linf_distance(m) or is_sortnet(m) or _negate(m) or computes_plain(m, (nn.Linear,))
              or computes_plain(m, _MONOTONE) or computes_plain(m, _SHAPE))
        if not ok:
            raise UnsupportedModuleError(
                f"interval certificates do not support {type(m).__name__} (supported: LinfDistLinear and "
                "LinfDistConv2d at p=inf, SortNeuronLinear, SortNeuronConv2d, Negate, Linear, Flatten, "
                "Unflatten and monotone element-wise activations)")
    return chain


def _check_domain(x: torch.Tensor, input_domain) -> tuple[float, float] | None:
    if input_domain is None:
        return None
    try:
        lo, hi = (float(v) for v in input_domain)
    except (TypeError, ValueError):
        raise ValueError(f"input_domain must be a pair (lo, hi) of numbers, got {input_domain!r}") from None
    if not lo < hi:
        raise ValueError(f"input_domain must have lo < hi, got {input_domain!r}")
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"x lies outside input_domain {input_domain!r} (values in [{float(x.min()):.4g}, "
                         f"{float(x.max()):.4g}])")
    return lo, hi


def interval_bounds(model: nn.Module, x: torch.Tensor, eps: float, *,
                    input_domain: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound float64 bounds ``(lower, upper)``, each ``(B, C)``, of the exact logits of ``model`` (its
    float32 weights, real arithmetic) over ``B_inf(x, eps)``, or over ``B_inf(x, eps) ∩ [lo, hi]^n``
    with ``input_domain=(lo, hi)``.  See the module docstring."""
    eps = _check_eps(eps)
    x = validate_x(x, None)
    domain = _check_domain(x, input_domain)
    twin = float64_copy(model)
    chain = _check_chain(twin)
    return _propagate(chain, x.detach().to(torch.float64), eps, domain)


def _check_eps(eps: object) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number, got {eps!r}") from None
    if not (e >= 0 and math.isfinite(e)):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return e


def reference_error(m: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Per-sample bound of the float64 round-off of one eval-mode distance layer's forward (``(B,)``):
    the a-priori analysis of the layer (:func:`lipkit.certify.roundoff.linf_distance_error`,
    :func:`lipkit.certify.roundoff.sortnet_error`) at the point itself, with ``u = 2^-53``."""
    error = sortnet_error if is_sortnet(m) else linf_distance_error
    return error(m, out, torch.zeros_like(out[:, 0]), math.inf, u=U64)


def _propagate(chain: list[nn.Module], x64: torch.Tensor, eps: float,
               domain: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes through ``chain`` (see the module docstring).

    The Lipschitz intersection ``h_k(x) ± L_k eps`` is applied while the prefix consists of distance
    layers, ``Negate`` and shape layers: there the float64 reference ``h_k(x)`` is off by at most the
    accumulated :func:`reference_error` (each such layer is 1-Lipschitz for l_inf, so earlier errors pass
    through unchanged), which widens the intersection.  After the first other layer (a hybrid head)
    only the interval rules apply.
    """
    lo, hi = _pad(x64 - eps, x64 + eps, x64.abs() + eps)  # x -/+ eps rounds in float64
    if domain is not None:
        lo, hi = lo.clamp_min(domain[0]), hi.clamp_max(domain[1])
    h = x64
    ref_err = torch.zeros(x64.shape[0], dtype=torch.float64, device=x64.device)
    intersect = True
    with torch.no_grad():
        for i, m in enumerate(chain):
            lo, hi = interval_forward(m, lo, hi)
            if not (is_linf_distance(m) or is_sortnet(m) or _negate(m) or computes_plain(m, _SHAPE)):
                intersect = False  # a hybrid head: interval rules only from here on
            if not intersect:
                continue
            h = m(h)
            if is_linf_distance(m) or is_sortnet(m):
                ref_err = ref_err + reference_error(m, h.reshape(h.shape[0], -1))
            try:
                lip = lipschitz_bound(nn.Sequential(*chain[:i + 1]), math.inf)
            except UnsupportedModuleError:
                intersect = False
                continue
            slack = (lip * eps * (1.0 + 1e-9) + ref_err * (1.0 + 1e-9)).reshape(-1, *[1] * (h.dim() - 1))
            slack = slack + _PAD * (1.0 + h.abs())
            lo = torch.maximum(lo, h - slack)
            hi = torch.minimum(hi, h + slack)
    return lo, hi


def _check_call(model: nn.Module, x: torch.Tensor, eps: object, input_domain,
                batch_size: object) -> tuple[torch.Tensor, float, tuple[float, float] | None]:
    """Validate the arguments of the public interval functions; ``(x, eps, domain)``."""
    eps = _check_eps(eps)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = validate_x(x, None)
    domain = _check_domain(x, input_domain)
    _check_chain(model)
    return x, eps, domain


def interval_certified(model: nn.Module, x: torch.Tensor, eps: float, *,
                       input_domain: tuple[float, float] | None = None,
                       batch_size: int = 256,
                       certificates: CertificateResult | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which inputs are certified at l_inf radius ``eps``: by the margin certificate of
    :func:`lipkit.compute_certificates` or, failing that, by interval bounds (module docstring).

    Returns ``(certified, prediction)``: a bool ``(B,)`` tensor and the deployed (float32) model's
    predicted classes.  ``certified[b]`` means: for every ``x'`` in ``B_inf(x_b, eps)`` (intersected
    with ``[lo, hi]^n`` when ``input_domain`` is given) the deployed model predicts
    ``prediction[b]``.  Both certificates are sound, so their union is; the interval bounds are only
    computed for the inputs the margin does not certify, ``batch_size`` at a time.  For the interval
    test the lower bound of the predicted logit must exceed the upper bound of every other logit by
    more than twice the a-priori round-off bound over the ball (and at least ``1e-5`` of the logit scale:
    :func:`lipkit.certify.roundoff.margin_allowance`); a model without that bound is refused.

    ``certificates``: the l_inf margin certificates of this ``model`` at this ``x``
    (``compute_certificates(model, x, "inf")``), to compute them once for several radii; they are checked
    to be l_inf certificates of a batch of this size.
    """
    x, eps, domain = _check_call(model, x, eps, input_domain, batch_size)
    if certificates is None:
        res = compute_certificates(model, x, math.inf)
    else:
        if not isinstance(certificates, CertificateResult) or certificates.p != math.inf \
                or certificates.radius.shape != (x.shape[0],):
            raise ValueError("certificates must be the l_inf CertificateResult of this batch "
                             "(compute_certificates(model, x, 'inf'))")
        res = certificates
    return _union_with_margin(model, x, res.radius, res.prediction, eps, domain, batch_size), res.prediction


def interval_certified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                                input_domain: tuple[float, float] | None = None,
                                batch_size: int = 256) -> float:
    """Fraction of inputs correctly classified and certified at ``eps`` by :func:`interval_certified`
    (the interval bounds are computed for correctly classified inputs only)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError("y must be a 1-D integer tensor of class labels")
    x, eps, domain = _check_call(model, x, eps, input_domain, batch_size)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {x.shape[0]} inputs")
    res = compute_certificates(model, x, math.inf)
    correct = (res.prediction == y.to(res.prediction.device)).nonzero().squeeze(1)
    if correct.numel() == 0:
        return 0.0
    cert = _union_with_margin(model, x[correct], res.radius[correct], res.prediction[correct], eps, domain,
                              batch_size)
    return float(cert.sum().item()) / x.shape[0]


def _union_with_margin(model: nn.Module, x: torch.Tensor, margin_radius: torch.Tensor,
                       prediction: torch.Tensor, eps: float, domain: tuple[float, float] | None,
                       batch_size: int = 256) -> torch.Tensor:
    """Margin certificate (``margin_radius >= eps``, from :func:`lipkit.compute_certificates` on ``x``)
    or, for the other inputs, the interval test, ``batch_size`` inputs at a time; the deployed logits
    and the float64 twin are computed once."""
    certified = margin_radius >= eps
    todo = (~certified).nonzero().squeeze(1)
    if todo.numel() == 0:
        return certified
    xt = x[todo]
    logits32, twin = deployed_logits_and_twin(model, xt)
    chain = _check_chain(twin)
    for s in range(0, todo.numel(), batch_size):
        sl = slice(s, s + batch_size)
        ok, pred = _interval_test(twin, chain, logits32[sl], xt[sl], eps, domain)
        certified[todo[sl]] = ok & (pred == prediction[todo[sl]])
    return certified


def interval_only(model: nn.Module, x: torch.Tensor, eps: float,
                   domain: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval test alone (no margin certificate): ``(certified, prediction)``.  Internal (not in
    ``__all__``): the tests compare it with the margin certificate."""
    logits32, twin = deployed_logits_and_twin(model, x)
    return _interval_test(twin, _check_chain(twin), logits32, x, eps, domain)


def _interval_test(twin: nn.Module, chain: list[nn.Module], logits32: torch.Tensor, x: torch.Tensor,
                   eps: float, domain: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval test on ``x`` given the deployed logits there and the float64 twin (and its chain)."""
    x64 = x.detach().to(torch.float64)
    with torch.no_grad():
        logits = run_logits(twin, x64)
        lo, hi = _propagate(chain, x64, eps, domain)
        r = torch.full((x64.shape[0],), eps, dtype=torch.float64, device=x64.device)
        bound = forward_error_bound(chain, x64, math.inf, r, None)
    if bound is None:
        raise UnsupportedModuleError("no a-priori round-off bound for this model; "
                                     "interval certificates need one")
    pred = logits32.argmax(dim=1)
    scale = logits.abs().max(dim=1).values + eps * lipschitz_bound(nn.Sequential(*chain), math.inf)
    observed = (logits32.to(torch.float64) - logits).abs().max(dim=1).values
    allowance, rigorous = margin_allowance(bound, scale, observed)
    if not rigorous:
        raise UnsupportedModuleError("the round-off observed at x exceeds the a-priori bound (arithmetic "
                                     "outside the analysis?); interval certificates need a rigorous bound")
    low_c = lo.gather(1, pred[:, None]).squeeze(1)
    others = hi.scatter(1, pred[:, None], -math.inf).amax(dim=1)
    return (low_c - others > allowance), pred
