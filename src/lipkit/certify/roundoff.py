"""A-priori bound of the float round-off of a forward pass, over a ball of inputs.

A certificate is about the deployed model, evaluated in float32, at every point ``x'`` of a ball
``||x' - x||_p <= r``; margins are computed from a float64 twin (:mod:`lipkit.certify.twin`) whose
weights are the float32 weights cast exactly.  With ``f`` the exact (real-arithmetic) function of those
weights, ``f32`` the deployed float32 forward and ``f64`` the twin's,
:func:`forward_error_bound` returns ``E`` with

    sup_{x'} ||f32(x') - f(x')||_p + sup_{x'} ||f64(x') - f(x')||_p <= E,   x' over ||x' - x||_p <= r

when the model is a *chain* (:func:`chain_of`: nested plain ``nn.Sequential`` of the layers below), and
None otherwise.

Analysis (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., SIAM 2002, Sec. 2.2 and
3.1).  Each arithmetic operation satisfies ``fl(a op b) = (a op b)(1 + d) + e``, ``|d| <= u``, with ``e``
nonzero only on underflow (``|e| <= 2^-126`` even with flush-to-zero).  We take ``u = 2^-24 + 2^-53`` so
that one bound covers the float32 forward and the float64 twin together.

* affine layer (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``): an inner product of length ``n`` plus a
  bias, in any summation order (blocked, FMA), satisfies
  ``|fl(Wh + b) - (Wh + b)| <= gamma_k (|W||h| + |b|)``, ``k = n + 1``, ``gamma_k = k u / (1 - k u)``
  (Higham, Eq. (3.5) and Lemma 3.1); we use ``2 gamma_k`` to cover the second-order terms of the
  propagated perturbations, plus ``k 2^-125`` per output for underflow;
* element-wise rounded activations (tanh, sigmoid, ...): ``16 u |output|`` (library functions are
  accurate to a few ulps), plus the same underflow term;
* exact layers (ReLU, max pooling, sorting activations, ``|x|``, negation, shape changes): no error;
* l_inf-distance and SortNet layers (dense or conv: a conv layer evaluates the dense neuron on each
  zero-padded patch): per output, :func:`linf_distance_error` and :func:`sortnet_error`;
* linear splines (``LinearSpline``, ``FrozenLinearSpline``): per entry, :func:`spline_error` (rounded
  slopes and intercepts, the multiply-add, and a piece chosen next to the right one near a knot).

The error vector ``e_i`` made at layer ``i`` reaches the output through the rest of the chain, which is
``L_{>i}``-Lipschitz (:func:`lipkit.lipschitz_bound`), so ``E = sum_i L_{>i} ||e_i||_p``.  Each ``e_i``
is bounded at ``x`` from the twin's activations ``h_i(x)`` and then over the ball: ``||h_i(x') -
h_i(x)||_p <= L_{<i} r`` (``L_{<i}`` the bound of the layers before), so e.g.
``|| |W||h(x')| + |b| ||_p <= || |W||h(x)| + |b| ||_p + || |W| ||_p L_{<i} r``.

The analysis assumes IEEE float32 arithmetic (no TF32, no autocast: :func:`lipkit.certify.twin.
check_float_mode`).  The functions here are internal to :mod:`lipkit.certify`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lipkit.bounds import UnsupportedModuleError, computes_as, lipschitz_bound, operator_norm
from lipkit.nn.activations import Abs, FullSort, GroupSort, MaxMin, Negate, SmoothSoftplus
from lipkit.nn.distance import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear
from lipkit.nn.spline import FrozenLinearSpline, LinearSpline

__all__ = [
    "AFFINE", "OBSERVED_FACTOR", "REL_FLOOR", "REL_FLOOR_UNANALYSED", "ROUNDED", "U", "U32", "U64",
    "UNDERFLOW", "affine_error", "chain_of", "computes_plain", "distance_terms", "forward_error_bound",
    "is_exact", "is_linf_distance", "is_plain_sequential", "is_sortnet", "is_spline", "linf_distance_error",
    "margin_allowance", "rounded_activation_error", "sortnet_error", "spline_error", "spline_error_terms",
]

#: unit round-off of float32 and float64
U32 = 2.0**-24
U64 = 2.0**-53
#: the unit round-off the bound uses: a float32 forward plus the float64 twin's
U = U32 + U64
#: absolute error of one operation on underflow (float32, even when subnormals are flushed), doubled
UNDERFLOW = 2.0**-125

EXACT = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d,
         nn.ReLU6, nn.Hardtanh)
#: lipkit activations that sort, negate or take |x|: exact in floating point
EXACT_LIPKIT = (GroupSort, MaxMin, FullSort, Abs, Negate)
ROUNDED = (nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, SmoothSoftplus, nn.Softsign)
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)


# --------------------------------------------------------------------------- which modules


def is_plain_sequential(model: nn.Module) -> bool:
    """``model`` runs ``nn.Sequential``'s own code (a subclass with its own ``forward`` does not)."""
    return computes_as(model, (nn.Sequential,), subclasses=True)


def chain_of(model: nn.Module) -> list[nn.Module] | None:
    """Flatten nested plain ``nn.Sequential`` containers into the chain of leaf modules they apply in
    order; None if ``model`` is not such a chain (a container with its own ``forward``)."""
    if is_plain_sequential(model):
        out: list[nn.Module] = []
        for child in model:
            sub = chain_of(child)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(model, nn.Sequential):  # a subclass with its own forward
        return None
    return [model]


def computes_plain(module: nn.Module, classes: tuple[type, ...]) -> bool:
    """``module`` runs the code of one of ``classes`` (:func:`lipkit.bounds.computes_as`, subclasses that
    override nothing allowed): a subclass, a hook or a replaced method may not compute what the analysis
    of the class assumes."""
    return computes_as(module, classes, subclasses=True)


def is_exact(module: nn.Module) -> bool:
    """A layer whose floating-point evaluation is exact (ReLU, max pooling, sorting, negation, shapes)."""
    return computes_as(module, EXACT + EXACT_LIPKIT)


def is_linf_distance(module: nn.Module) -> bool:
    """An exact-l_inf ``LinfDistLinear`` or ``LinfDistConv2d`` (p = inf) as lipkit defines it (not a
    subclass).  A conv layer computes, at each position, the dense neuron on the zero-padded patch
    (an exact copy), so the round-off analysis of the dense layer applies output by output."""
    return computes_as(module, (LinfDistLinear, LinfDistConv2d)) and math.isinf(float(module.p))


def is_sortnet(module: nn.Module) -> bool:
    """A ``SortNeuronLinear`` or ``SortNeuronConv2d`` as lipkit defines it (not a subclass); evaluated
    with exact top-K."""
    return computes_as(module, (SortNeuronLinear, SortNeuronConv2d))


def is_spline(module: nn.Module) -> bool:
    """A ``LinearSpline`` or ``FrozenLinearSpline`` as lipkit defines it (not a subclass)."""
    return computes_as(module, (LinearSpline, FrozenLinearSpline))


# --------------------------------------------------------------------------- per-layer errors


def _per_output_norm(per_output: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(per_output.reshape(per_output.shape[0], -1), ord=p, dim=1)


def _underflow(n_outputs: int, ops: int, p: float) -> float:
    """l_p norm of the underflow terms: ``ops`` operations per output, ``n_outputs`` outputs."""
    return ops * UNDERFLOW * (1.0 if math.isinf(p) else n_outputs ** (1.0 / p))


def affine_error(mod: nn.Module, h: torch.Tensor, spread: torch.Tensor | float, p: float,
                 u: float = U) -> torch.Tensor:
    """Bound ``(B,)`` of ``||fl(W h' + b) - (W h' + b)||_p`` for an affine layer (``nn.Linear`` /
    ``nn.Conv1d`` / ``nn.Conv2d``, float64 weights) at every ``h'`` with ``||h' - h||_p <= spread``.

    ``2 gamma_k (|| |W||h| + |b| ||_p + || |W| ||_p spread) + k 2^-125 n_out^(1/p)``, ``k = n + 1``
    (fan-in ``n``), ``gamma_k = k u / (1 - k u)`` (module docstring).
    """
    w = mod.weight.detach().abs()
    b = mod.bias.detach().abs() if getattr(mod, "bias", None) is not None else None
    if isinstance(mod, nn.Linear):
        mag, n = nn.functional.linear(h.abs(), w, b), w.shape[1]
    else:
        mag, n = mod._conv_forward(h.abs(), w, b), int(w[0].numel())
    k = n + 1
    gamma = 2.0 * k * u / (1.0 - k * u)
    spread_norm = _abs_operator_norm(mod, p, tuple(h.shape[1:])) * spread
    return gamma * (_per_output_norm(mag, p) + spread_norm) + _underflow(mag[0].numel(), k, p)


def _abs_operator_norm(mod: nn.Module, p: float, input_shape: tuple[int, ...] | None = None) -> float:
    """Sound bound of the l_p operator norm of ``h -> |W| h`` (the layer with ``|W|``, no bias), for inputs
    of ``input_shape`` (one example; None: every size)."""
    if isinstance(mod, nn.Linear):
        return operator_norm(mod.weight.detach().abs(), p)
    twin = copy.deepcopy(mod)
    with torch.no_grad():
        twin.weight.abs_()
    twin.bias = None
    return lipschitz_bound(twin, p, input_shape=input_shape)


def rounded_activation_error(out: torch.Tensor, spread: torch.Tensor | float, p: float,
                             u: float = U) -> torch.Tensor:
    """Bound ``(B,)`` of the round-off of an element-wise activation whose library evaluation is
    accurate to a few ulps: ``16 u (||phi(h)||_p + spread) + 2^-125 n^(1/p)``, ``spread`` bounding how far
    the output moves over the ball."""
    return 16.0 * u * (_per_output_norm(out, p) + spread) + _underflow(out[0].numel(), 1, p)


def distance_terms(m: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def sortnet_error(m: nn.Module, out: torch.Tensor, spread: torch.Tensor, p: float,
                  u: float = U) -> torch.Tensor:
    """Bound ``(B,)`` of the float round-off of one SortNet layer (eval:
    ``y_o = sum_k c_k d_(k) - mu_o + b_o``), in the l_p norm, over the ball; ``u`` as in
    :func:`linf_distance_error`.

    With ``d_i = |h_i - w_oi|`` and ``D = max_i d_i``: the rounded subtraction moves every ``d_i``, hence
    every order statistic, by at most ``u D``; the float32 coefficients are off by ``u c_k``; summing
    ``K`` products errs by at most ``gamma_K sum_k c_k d_(k)``; ``- mu`` and ``+ b`` round once each.
    In all at most ``(K + 5) u (1 + O(u)) (D + |mu_o| + |b_o|) <= 2 (K + 3) u (D + |mu_o| + |b_o|)``,
    plus ``(K + 3) 2^-125`` for underflow.  ``D`` is bounded by ``S / c_0`` (``S = y_o + mu_o - b_o >=
    c_0 D``, ``c_0`` the largest weight) and grows by at most ``spread`` over the ball.
    """
    c = m.coefficients
    s, extra = distance_terms(m, out)
    d_max = s.abs() / float(c[0]) * (1.0 + 1e-9)
    per_output = 2.0 * (len(c) + 3) * u * (d_max + spread[:, None] + extra[None, :])
    return _per_output_norm(per_output, p) + _underflow(s.shape[1], len(c) + 3, p)


def linf_distance_error(m: nn.Module, out: torch.Tensor, spread: torch.Tensor, p: float,
                        u: float = U) -> torch.Tensor:
    """Bound ``(B,)`` of the float round-off of one l_inf-distance layer, over the ball, in the l_p norm.

    ``u``: the unit round-off of the evaluation being bounded (default: a float32 forward plus the
    float64 twin; :mod:`lipkit.certify.interval` passes ``2^-53`` for the float64 twin alone).

    In eval mode ``y_o = max_i |h_i - w_oi| - mu_o + b_o``.  Rounded: the subtraction ``h_i - w_oi``
    (relative error ``u``, exact on underflow; ``|.|`` and ``max`` are exact, so ``d_o`` is off by at most
    ``u d_o``), then ``- mu_o`` and ``+ b_o`` (one rounding each): in all at most
    ``3u (1+u)^2 (d_o + |mu_o| + |b_o|) <= 4u (d_o + |mu_o| + |b_o|)``.  ``d_o`` is recovered from the
    float64 output (``d_o = y_o + mu_o - b_o``) and, over the ball, grows by at most ``spread``
    (``d_o`` is 1-Lipschitz in l_inf, and ``||.||_inf <= ||.||_p``).
    """
    d, extra = distance_terms(m, out)
    d = d.abs() * (1.0 + 1e-12)
    per_output = 4.0 * u * (d + spread[:, None] + extra[None, :])
    return _per_output_norm(per_output, p)


def spline_error_terms(m: nn.Module, u: float = U) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel ``(A_c, B_c)`` (float64, (C,)) such that every entry of a spline layer's output, in
    channel ``c`` at input ``x``, is off the exact spline by at most ``A_c + B_c |x|`` (both evaluations:
    ``u`` as in :func:`linf_distance_error`).

    The exact function is the spline through the float64 knots ``T`` and values ``V`` (``m.pieces()``);
    with ``R_c = max |T_c|``, ``V_c = max |V_c|``, ``S_c = max |s_c|`` and ``D_c = max s_c - min s_c``:

    * the float64 slope and intercept of a piece are off by ``3 u |s|`` and ``2 u (V_c + S_c R_c)``
      (``b = V_j - s_j T_j``), their float32 roundings by ``u |s|`` and ``u |b|``, ``|b| <= V_c + S_c R_c``;
      the multiply-add rounds twice: in all ``1.01 u (4 (V_c + S_c R_c) + 3 S_c |x|)`` (``1.01`` covers
      second-order terms);
    * the piece: ``LinearSpline`` takes ``floor(fl(fl(x - fl(T_0)) fl(alpha / h)))``, off the exact
      ``(x - T_0) alpha / h`` by at most ``1.01 u (3 |x - T_0| + |T_0|) alpha / h``, and the float64
      knots are within ``3 u R_c`` of ``T_0 + j h / alpha`` (a ``FrozenLinearSpline`` with ``inv_step``
      does the same, its rule having checked the knots uniform to ``1e-9 max |T| <= u R_c``); one
      without compares ``x`` with the knots rounded to the input dtype.  Either way ``x`` is within
      ``u (4 |x| + 8 R_c)`` of the piece used, whose line differs from the spline there by at most
      ``D_c`` times that distance;
    * underflow: ``2 * 2^-125``.

    So ``A_c = u (4.1 (V_c + S_c R_c) + 8 D_c R_c) + 2^-124`` and ``B_c = u (3.1 S_c + 4 D_c)``.
    """
    with torch.no_grad():
        t, s, b = (z.detach().to(torch.float64) for z in m.pieces())
        big_r = t.abs().amax(dim=1)
        vals = (b + s * t[:, :-1]).abs().amax(dim=1)
        vals = torch.maximum(vals, (b[:, -1] + s[:, -1] * t[:, -1]).abs())
        slope = s.abs().amax(dim=1)
        spread = s.amax(dim=1) - s.amin(dim=1)
        a = u * (4.1 * (vals + slope * big_r) + 8.0 * spread * big_r) + 2.0 * UNDERFLOW
        bb = u * (3.1 * slope + 4.0 * spread)
    return a * (1 + 1e-9), bb * (1 + 1e-9)


def spline_error(m: nn.Module, h: torch.Tensor, spread: torch.Tensor | float, p: float,
                 u: float = U) -> torch.Tensor:
    """Bound ``(B,)`` of the round-off of a spline layer at every ``h'`` with ``||h' - h||_p <= spread``:
    ``|| A + B |h| ||_p + max_c B_c spread`` with ``(A, B)`` from :func:`spline_error_terms`
    (``|h'| <= |h| + |h' - h|`` entry-wise)."""
    a, bb = spline_error_terms(m, u)
    hm = h.movedim(m.dim, -1).abs()
    per = a + bb * hm
    return _per_output_norm(per, p) + bb.max() * spread


# --------------------------------------------------------------------------- the chain


def forward_error_bound(chain: list[nn.Module], x64: torch.Tensor, p: float, r_max: torch.Tensor,
                        input_shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """A-priori bound ``(B,)`` of ``sup ||f32(x') - f(x')||_p + sup ||f64(x') - f(x')||_p``, both suprema
    over the ball ``||x' - x||_p <= r_max`` (per sample), for the chain of float64-twin layers ``chain``
    (see the module docstring); None if some layer is outside the analysis or has no Lipschitz bound.

    Args:
        chain: the twin's layers in order (:func:`chain_of` of a :func:`lipkit.certify.twin.float64_copy`).
        x64: the centres, float64 ``(B, ...)`` (the float32 inputs, cast).
        p: 2 or inf.
        r_max: float64 ``(B,)`` radii (0: the bound at ``x`` itself).
        input_shape: per-sample input shape (kept for callers: the bounds use the shapes of ``x64``).
    """
    for m in chain:
        if not (computes_plain(m, AFFINE + ROUNDED) or is_exact(m) or is_linf_distance(m) or is_sortnet(m)
                or is_spline(m)):
            return None
        if isinstance(m, nn.Dropout) and m.training:
            return None
    # each layer's input shape (one example): the ball holds inputs of x's shape only, so the bounds may
    # use the sizes (convolutions: the exact size's bound, tighter and far cheaper than the size-free one)
    shapes = []
    with torch.no_grad():
        h = x64[:1]
        for m in chain:
            shapes.append(tuple(h.shape[1:]))
            h = m(h)
    shapes.append(tuple(h.shape[1:]))
    try:
        prefix = [1.0]  # prefix[i] bounds the Lipschitz constant of chain[:i]
        for i in range(1, len(chain) + 1):
            prefix.append(lipschitz_bound(nn.Sequential(*chain[:i]), p, input_shape=shapes[0]))
        suffix = [lipschitz_bound(nn.Sequential(*chain[i + 1:]), p, input_shape=shapes[i + 1])
                  for i in range(len(chain))]
    except UnsupportedModuleError:
        return None
    total = torch.zeros(x64.shape[0], dtype=torch.float64, device=x64.device)
    h = x64
    with torch.no_grad():
        for i, m in enumerate(chain):
            out = m(h)
            if isinstance(m, AFFINE):
                e = affine_error(m, h, prefix[i] * r_max, p)
            elif is_linf_distance(m):
                e = linf_distance_error(m, out, prefix[i] * r_max, p)
            elif is_sortnet(m):
                e = sortnet_error(m, out, prefix[i] * r_max, p)
            elif is_spline(m):
                e = spline_error(m, h, prefix[i] * r_max, p)
            elif isinstance(m, ROUNDED):
                e = rounded_activation_error(out, prefix[i + 1] * r_max, p)
            else:
                e = None
            if e is not None:
                total = total + suffix[i] * e
            h = out
    return total


# --------------------------------------------------------------------------- the allowance of a margin

#: floor of the allowance when the a-priori bound exists, relative to the logit scale (defence in depth:
#: not part of the proof)
REL_FLOOR = 1e-5
#: the (heuristic) floor used when no a-priori bound is available, relative to the logit scale
REL_FLOOR_UNANALYSED = 1e-4
#: the heuristic's factor on the round-off observed at the centre, when no a-priori bound is available
OBSERVED_FACTOR = 8.0


def margin_allowance(bound: torch.Tensor | None, scale: torch.Tensor,
                     observed: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The amount ``(B,)`` subtracted from every logit margin for round-off, and whether it is rigorous.

    Args:
        bound: :func:`forward_error_bound` over the ball (None: no a-priori bound).
        scale: ``max_j |f_j(x)|`` (float64 twin), ``(B,)``.
        observed: ``max_j |f32_j(x) - f64_j(x)|``, the round-off seen at the centre, ``(B,)``.

    Rigorous case: the deployed margin ``f32_c(x') - f32_j(x')`` differs from the twin's margin at ``x``
    moved by the Lipschitz term, ``f64_c(x) - f64_j(x) - L_cj ||x' - x||``, by at most
    ``2 (||f32(x') - f(x')||_inf + ||f64(x) - f(x)||_inf) <= 2 E``, so the allowance ``2 E`` is what the
    proof needs; it is raised to ``1e-5 * scale`` (:data:`REL_FLOOR`), a margin of safety that the proof
    does not use.  The observed error is a lower bound of the true one, so ``observed > E`` would refute
    the analysis (e.g. arithmetic that is not IEEE float32): the batch then falls back to the heuristic.

    Heuristic case (returned flag False): ``max(1e-4 * scale, 8 * observed)``, about 1700 float32 units of
    the logit scale; NOT a proof (the round-off elsewhere in the ball is not bounded).

    The result is inflated by ``1 + 1e-9`` for the float64 evaluation of the allowance itself.
    """
    if bound is not None and bool((observed <= bound).all()):
        return torch.maximum(2.0 * bound, REL_FLOOR * scale) * (1.0 + 1e-9), True
    floor = torch.maximum(REL_FLOOR_UNANALYSED * scale, OBSERVED_FACTOR * observed)
    return floor * (1.0 + 1e-9), False
