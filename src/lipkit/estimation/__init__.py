"""Lipschitz constant estimation for any trained network: a bracket ``lower <= Lip_p(f) <= upper``.

``estimate(model, p, method)`` returns an :class:`Estimate`.  Upper bounds are *sound*:

* ``"naive"``: product of the layers' bounds from :func:`lipkit.lipschitz_bound` (any supported model);
* ``"lipsdp"`` / ``"lipsdp-layer"``: LipSDP-Neuron / -Layer (Fazlyab et al., NeurIPS 2019), p = 2, MLPs
  (and small CNNs without pooling, convolutions lowered to their matrices when ``input_shape`` is known),
  re-certified from the solver's multipliers; above 120 hidden neurons LipSDP-Neuron is solved by a
  first-order method on the exact block-elimination objective (see :mod:`lipkit.estimation.lipsdp`);
* ``"lipopt"`` / ``"lipopt2"``: LiPopt degree 3 / 2 (Latorre et al., ICLR 2020), p = inf or 1, MLPs with
  at most 2 / 1 hidden layers (see :mod:`lipkit.estimation.lipopt`; call ``lipopt(model, p, degree=k)``
  directly for deeper nets, ``k >=`` number of linear layers);
* ``"local"`` with ``input_domain=``: the constant restricted to a box or ball (interval bound propagation
  fixes the neurons that cannot switch, then naive / LipSDP / LiPopt with the narrowed slope ranges, see
  :mod:`lipkit.estimation.local`).

Models come from :func:`load_model` (torch module, lipkit run folder, ONNX file).  The lower bound is
attained by a concrete point or pair (:func:`lower_bound`).  When a solver fails or the
model is outside a method's scope, the next sound method is used and ``details["fallback"]`` says why.
The reported ``upper`` is the minimum of the method's bound and the naive bound (both sound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from torch import nn

from lipkit.bounds import normalize_p

from .exact import exact_one_hidden_relu, max_pattern_norm
from .lipopt import LiPoptError, LiPoptResult, lipopt
from .lipsdp import LipSDPError, LipSDPResult, lipsdp
from .load import LoadedSequential, ModelLoadError, load_model, onnx_to_torch
from .local import (
    Domain,
    affine_local_upper,
    as_domain,
    local_slopes,
    naive_local_upper,
    preactivation_bounds,
)
from .lower import LowerBound, check_finite, jacobian_norm, lower_bound
from .naive import naive_upper

__all__ = [
    "Estimate",
    "estimate",
    "METHODS",
    "naive_upper",
    "lower_bound",
    "LowerBound",
    "jacobian_norm",
    "lipsdp",
    "LipSDPResult",
    "LipSDPError",
    "lipopt",
    "LiPoptResult",
    "LiPoptError",
    "exact_one_hidden_relu",
    "max_pattern_norm",
    "Domain",
    "as_domain",
    "preactivation_bounds",
    "local_upper",
    "load_model",
    "onnx_to_torch",
    "ModelLoadError",
    "LoadedSequential",
]

#: method -> (norms it supports, next method to try when it fails)
METHODS: dict[str, tuple[tuple[float, ...], str | None]] = {
    "naive": ((1.0, 2.0, math.inf), None),
    "lipsdp": ((2.0,), "lipsdp-layer"),
    "lipsdp-layer": ((2.0,), "naive"),
    "lipopt": ((1.0, math.inf), "lipopt2"),
    "lipopt2": ((1.0, math.inf), "naive"),
    "local": ((1.0, 2.0, math.inf), "naive"),
}


@dataclass
class Estimate:
    """``lower <= Lip_p(model) <= upper``; ``method`` is the method that produced ``upper``."""

    lower: float
    upper: float
    method: str
    seconds: float
    details: dict = field(default_factory=dict)
    p: float = 2.0

    @property
    def gap(self) -> float:
        """Relative width of the bracket, ``upper / lower - 1`` (inf when lower is 0)."""
        return self.upper / self.lower - 1.0 if self.lower > 0 else math.inf


def local_upper(
    model: nn.Module, p: float | int | str, domain, time_limit: float | None = None
) -> tuple[float, dict]:
    """Sound upper bound of the Lipschitz constant of ``model`` restricted to the convex ``domain``.

    The minimum of naive-local and, with the narrowed slopes, LipSDP-Neuron (p = 2) or LiPopt (p = inf, 1;
    degree = number of linear layers, at most 3).  Raises ``TypeError`` if the model is not an MLP.
    Returns ``(upper, info)`` with every candidate and the counts of fixed / dead neurons.
    """
    p = normalize_p(p)
    dom = as_domain(domain)
    mlp, slopes, stats = local_slopes(model, dom)
    cands = {"naive-local": naive_local_upper(mlp, p)}
    affine = affine_local_upper(mlp, p)
    if affine is not None:
        cands["affine-local"] = affine
    info: dict = dict(stats)
    if mlp.depth >= 2 and stats["fixed"] < stats["neurons"]:
        try:
            if p == 2:
                cands["lipsdp-local"] = lipsdp(model, neuron_slopes=slopes, time_limit=time_limit,
                                               max_iters=5000, input_shape=dom.shape).upper
            elif mlp.depth <= 3:
                cands["lipopt-local"] = lipopt(model, p, degree=max(mlp.depth, 2), time_limit=time_limit,
                                               neuron_slopes=slopes, input_shape=dom.shape).upper
        except (LipSDPError, LiPoptError) as exc:
            info["local_solver_error"] = f"{type(exc).__name__}: {exc}"
    info["candidates"] = cands
    info["domain"] = dom.describe()
    best = min(cands, key=cands.__getitem__)
    info["local_method"] = best
    return cands[best], info


def _run(
    method: str, model: nn.Module, p: float, time_limit: float | None, input_shape: tuple[int, ...] | None,
    domain=None,
) -> tuple[float, dict]:
    if method == "local":
        return local_upper(model, p, domain, time_limit)
    if method == "naive":
        return naive_upper(model, p, input_shape=input_shape), {}
    if method in ("lipsdp", "lipsdp-layer"):
        r = lipsdp(model, variant="neuron" if method == "lipsdp" else "layer", time_limit=time_limit,
                   input_shape=input_shape)
        return r.upper, {"solver_status": r.solver_status, "solver_value": r.solver_value,
                         "lipsdp_variant": r.variant}
    r2 = lipopt(model, p, degree=3 if method == "lipopt" else 2, time_limit=time_limit,
                input_shape=input_shape)
    info = {k: v for k, v in r2.details.items() if k != "hint_points"}
    return r2.upper, {"lp_status": r2.lp_status, "rows": r2.rows, "lipopt": info,
                      "_hints": r2.details.get("hint_points", [])}


def estimate(
    model: nn.Module,
    p: float | int | str = 2,
    method: str = "naive",
    time_limit: float | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    lower: bool = True,
    lower_kwargs: dict | None = None,
    input_domain=None,
) -> Estimate:
    """Bracket the l_p Lipschitz constant of ``model`` with a sound upper bound and an attained lower bound.

    Args:
        model: a torch model (``lipsdp``/``lipopt`` need an MLP; others fall back to ``naive``).
        p: 1, 2 or inf.
        method: one of :data:`METHODS`.
        time_limit: seconds for the solver (SCS / HiGHS); ``None`` means no limit.
        input_shape: shape of one input (without batch), for models whose shape cannot be inferred.
        lower: compute the lower bound (multi-start Jacobian ascent + pairs); else ``lower = 0``.
        lower_kwargs: extra arguments for :func:`lower_bound`.
        input_domain: for ``method="local"``: a box ``(lo, hi)`` or a ball ``(center, radius, q)`` (tensors
            of one input's shape); the bracket is then of the constant restricted to that domain.  If the
            model is not an MLP the global naive bound (also valid on the domain) is used and ``details``
            says why.
    Raises:
        ValueError: unknown method (the message lists them) or a norm the method does not support.
    """
    p = normalize_p(p)
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"unknown estimation method {method!r}; available: {', '.join(METHODS)}")
    method = method.lower()
    if p not in METHODS[method][0]:
        ok = [m for m, (ps, _) in METHODS.items() if p in ps]
        raise ValueError(f"method {method!r} does not support p={p}; for this norm use one of {ok}")
    check_finite(model)
    if input_shape is None:  # models from load_model remember their input shape
        input_shape = getattr(model, "input_shape", None)
    domain = None
    if method == "local":
        if input_domain is None:
            raise ValueError("method 'local' needs input_domain=(lo, hi) or (center, radius, p)")
        domain = as_domain(input_domain, input_shape)
        input_shape = domain.shape
    elif input_domain is not None:
        raise ValueError(f"input_domain is only used by method='local', not {method!r}")
    t0 = time.perf_counter()
    details: dict = {}
    current: str | None = method
    upper = math.inf
    used = method
    failures: list[str] = []
    hints = None
    while current is not None:
        try:
            upper, info = _run(current, model, p, time_limit, input_shape, domain)
            hints = info.pop("_hints", None)
            details.update(info)
            used = current
            break
        except (LipSDPError, LiPoptError, TypeError) as exc:
            if current == "naive":
                raise
            failures.append(f"{current} failed ({type(exc).__name__}: {exc})")
            current = METHODS[current][1]
    if failures:
        details["fallback"] = "; ".join(failures) + f"; used {used}"
    try:
        naive = upper if used == "naive" else naive_upper(model, p, input_shape=input_shape)
    except TypeError as exc:  # the method succeeded but some module has no registered bound
        naive = math.inf
        details["naive_error"] = str(exc)
    details["naive"] = naive
    if naive < upper:
        details["method_upper"] = upper
        upper = naive
    low = 0.0
    if lower:
        kwargs = dict(lower_kwargs or {})
        if hints and domain is None:
            kwargs.setdefault("hints", hints)
        lb = lower_bound(model, p, input_shape=input_shape, domain=domain, **kwargs)
        low = lb.value
        details["lower_kind"] = lb.kind
        details["lower_witness"] = lb.point if lb.kind == "jacobian" else lb.pair
    if low > upper:
        raise RuntimeError(f"internal error: lower bound {low} exceeds the sound upper bound {upper}")
    return Estimate(low, upper, used, time.perf_counter() - t0, details, p)
