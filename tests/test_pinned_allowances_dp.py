"""The round-off allowances of the DP sensitivities, pinned (issue 17: no mutant that tightens a bound
survives).

Every bound of :mod:`lipkit.dp.sensitivity`, of the layers' sensitivity rules and of the losses' logit
constants ends in ``round_up(value, n)`` (:func:`lipkit.bounds.numerics.round_up`), which multiplies by
``1 + 4 n EPS64`` and steps to the next float: the documented allowance for the ``n`` float64 operations
that produced ``value``.  Each test below feeds inputs on which the float64 operations before that
``round_up`` are exact or nearly so (powers of two, perfect squares, diagonal weights), computes the
documented value ``V`` in exact rationals, and requires the code's result to carry the whole inflation
``V (1 + 4 n EPS64)``, less at most the (named) roundings of the evaluation, and to stay within ``1e-12``
above ``V``.  A smaller count (``n -> 1``, ``n - 2``, ...) then fails: the allowance cannot shrink
silently.  tests/test_dp_mutants.py checks the same formulas at a 1e-9 tolerance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from exact_ref import sqrt_down, sqrt_up
from torch import nn

import lipkit
from lipkit import dp
from lipkit.bounds import EPS64, round_up
from lipkit.bounds.registry import record_input_shapes
from lipkit.dp.sensitivity import _ABS_ALLOWANCE, REL_ALLOWANCE, _norm_up, _Walker, fast_lipschitz
from lipkit.nn import ConvexResidual, LinearSpline, Residual

EPS = Fraction(EPS64)
U = EPS / 2  # float64 unit round-off 2^-53: one correctly rounded operation loses at most U relative
#: the factor the composition multiplies radii and gradients by, as the float64 number the code uses
AF = Fraction(1.0 + REL_ALLOWANCE)
UPPER = Fraction(1, 10**12)


def _carries(value: float, exact: Fraction, n_ops: int, *, lost: int = 0,
             after: Fraction = Fraction(1)) -> None:
    """``value`` is ``round_up(x, n_ops) * after`` (``after`` applied in float64 with one rounding, if not 1)
    where ``x`` is ``exact`` up to ``lost`` roundings: require ``exact after (1 + 4 n_ops EPS64)`` less
    those roundings, and at most ``1e-12`` above ``exact after``."""
    v = Fraction(value)
    roundings = lost + (after != 1)
    low = exact * after * (1 + 4 * n_ops * EPS) * (1 - U) ** roundings
    short = float((low / v - 1) / EPS)
    assert v >= low, f"{value!r} is {short:.2f} EPS64 short of the allowance of {n_ops} operations"
    assert v <= exact * after * (1 + UPPER)


def _diag_linear(scales: list[float], bias: list[float] | None) -> nn.Linear:
    layer = nn.Linear(len(scales), len(scales), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor(scales)))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


# ----------------------------------------------------------------------------- loss constants


def test_cross_entropy_constant_carries_two_operations():
    """``LipschitzCrossEntropyLoss.logit_lipschitz = round_up(SQRT2 * t, 2)`` with ``SQRT2`` the rounded-up
    float of ``sqrt 2``: for ``t`` a power of two the product is exact, so the result is at least
    ``SQRT2 t (1 + 8 EPS64)``."""
    from lipkit.losses import _SQRT2

    assert Fraction(_SQRT2) >= sqrt_up(Fraction(2))
    for t in (1.0, 4.0, 0.125):
        value = lipkit.LipschitzCrossEntropyLoss(temperature=t).logit_lipschitz(10)
        _carries(value, Fraction(_SQRT2) * Fraction(t), 2)


def test_logit_mse_constant_carries_two_operations():
    """``LogitMSELoss.logit_lipschitz = round_up(B + target_value, 2)``: exact sums of dyadic numbers, so the
    result is at least ``(B + target_value)(1 + 8 EPS64)``."""
    for radius, target in ((3.0, 1.0), (0.75, 0.25), (6.5, 2.0)):
        value = lipkit.LogitMSELoss(target_value=target).logit_lipschitz(5, output_radius=radius)
        _carries(value, Fraction(radius) + Fraction(target), 2)


def test_hkr_constant_carries_4c_plus_8_operations():
    """``HKRLoss.logit_lipschitz = round_up(sqrt(worst), 4 C + 8)`` with ``worst = max_y max(||v_y||^2,
    ||v_y||^2 + 2 alpha^2 + 2 alpha (v_yy - min_j v_yj))`` (uniform priors: ``v_yy = 1 / (C pi)``,
    ``v_yj = -1 / (C (1 - pi))``).  For ``C = 2`` every entry is +-1 and ``worst`` is exact; the only
    rounding before ``round_up`` is the square root.  For ``C = 4`` the entries ``-1/3`` and the sums round
    (at most ``C + 9`` roundings, counted generously), far below the ``16 C + 32`` EPS64 of the allowance."""
    for num_classes, alpha, lost in ((2, 1.0, 1), (2, 10.0, 1), (4, 3.0, 4 + 9)):
        pi = Fraction(1, num_classes)
        diag, off = 1 / (num_classes * pi), -1 / (num_classes * (1 - pi))
        norm2 = diag * diag + (num_classes - 1) * off * off
        a = Fraction(alpha)
        worst = max(norm2, norm2 + 2 * a * a + 2 * a * (diag - off))
        value = lipkit.HKRLoss(alpha=alpha).logit_lipschitz(num_classes)
        # sqrt_down and sqrt_up differ by 1e-100: the bracket is exact at float64 resolution
        v = Fraction(value)
        n = 4 * num_classes + 8
        assert v >= sqrt_down(worst) * (1 + 4 * n * EPS) * (1 - U) ** lost
        assert v <= sqrt_up(worst) * (1 + UPPER)


# ----------------------------------------------------------------------------- layer sensitivity rules


def test_conv_rule_carries_four_operations():
    """``S_W = round_up(sqrt(m) R G, 4)`` and ``S_b = round_up(sqrt(P) G, 4)``
    (:mod:`lipkit.bounds.sensitivity`): a 2 x 2 kernel with stride 1 on an 8 x 8 input has ``m = 4`` windows
    over an inner entry and ``P = 49`` output positions, so with ``R = 2``, ``G = 1/2`` both products are
    exact (``2`` and ``7/2``) and each bound must carry ``1 + 16 EPS64``."""
    conv = nn.Conv2d(1, 1, 2)
    out = lipkit.parameter_sensitivity(conv, 2.0, 0.5, input_shape=(1, 8, 8))
    _carries(out["weight"], Fraction(2) * 2 * Fraction(1, 2), 4)
    _carries(out["bias"], Fraction(7) * Fraction(1, 2), 4)


def test_spline_rules_carry_their_operations():
    """``LinearSpline``: ``S_c = round_up(J G (sqrt(N) / alpha_min + 2 R / h), 8)`` and
    ``S_log_scale = round_up(sqrt(N) G max|b|, 4)`` (``_spline_sensitivity``).  With ``N = 4`` positions,
    ``alpha = exp(0) = 1``, ``h = 1`` (5 knots on [-2, 2]), ``R = 1`` and ``G = 1/2`` the factors
    multiplying the float inputs ``J`` (the constraint Jacobian bound) and ``max|b|`` (the intercepts) are
    powers of two, so both bounds must carry ``1 + 32 EPS64`` and ``1 + 16 EPS64`` of ``J G 4`` and
    ``2 G max|b|``."""
    from lipkit.nn.spline import constraint_jacobian_norms

    spline = LinearSpline(2, num_knots=5, knot_range=2.0, init=lambda t: t.clamp(min=0) + 0.5,
                          learn_scale=True)
    out = lipkit.parameter_sensitivity(spline, 1.0, 0.5, input_shape=(2, 4))
    with torch.no_grad():
        jac = Fraction(constraint_jacobian_norms(spline).max().item())
        b = Fraction(spline.pieces()[2].abs().max().item())
    assert jac >= 1 and b > 0
    _carries(out["coefficients"], jac * Fraction(1, 2) * (2 + 2), 8)
    _carries(out["log_scale"], 2 * Fraction(1, 2) * b, 4)


# ----------------------------------------------------------------------------- the composition


def test_norm_up_carries_numel_plus_two_operations():
    """``_norm_up(z) = round_up(||z||_2, numel + 2)``: integer entries with an integer norm make
    ``||z||_2`` exact, so the result is at least ``||z|| (1 + 4 (numel + 2) EPS64)``."""
    for entries, norm in (([3.0, 4.0], 5), ([1.0, 1.0, 1.0, 1.0], 2), ([2.0, 3.0, 6.0, 0.0, 0.0, 0.0], 7)):
        z = torch.tensor([entries], dtype=torch.float32)
        _carries(_norm_up(z), Fraction(norm), len(entries) + 2)


def test_fast_lipschitz_compositions_carry_their_operations():
    """``fast_lipschitz``: ``Sequential`` -> ``round_up(prod L_i, len + 1)``, ``Residual`` ->
    ``round_up(1 + L_f, 2)``, ``ConvexResidual`` -> ``round_up(|1 - a| + |a| L_f, 3)``.  With the children's
    bounds given as powers of two (the ``child`` argument) and ``a = sigmoid(0) = 1/2`` every float64
    operation before ``round_up`` is exact."""
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Identity()
    given = {a: 2.0, b: 0.5, c: 4.0}

    def child(m: nn.Module) -> float:
        return given[m]

    _carries(fast_lipschitz(nn.Sequential(a, b, c), {}, child), Fraction(4), 4)
    _carries(fast_lipschitz(nn.Sequential(a, c), {}, child), Fraction(8), 3)
    _carries(fast_lipschitz(Residual(c), {}, child), Fraction(5), 2)
    convex = ConvexResidual(c, alpha=0.5, learnable=True)
    assert [float(t.detach()) for t in convex.coefficients()] == [0.5, 0.5]
    _carries(fast_lipschitz(convex, {}, child), Fraction(1, 2) + Fraction(1, 2) * 4, 3)


def test_convex_residual_logit_bound_carries_four_operations():
    """The learnable logit of ``ConvexResidual``: ``S_s = round_up(c1 c2 G (Lip(f) R + off(f) + R), 4)
    (1 + a)`` (``_Walker.walk``).  With ``c1 = c2 = 1/2`` and ``R``, ``G`` powers of two, only the two sums
    round before ``round_up`` (``Lip(f) R`` is exact), and the final factor ``1 + a`` once."""
    f = _diag_linear([2.0, 0.5], [0.5, -0.25])
    block = ConvexResidual(f, alpha=0.5, learnable=True)
    model = nn.Sequential(block)
    shapes = record_input_shapes(model, (2,))
    walker = _Walker(model, shapes, {id(p): n for n, p in model.named_parameters()})
    r, g = 2.0, 0.25
    walker.walk(block, r, g, "block")
    lip, off = Fraction(walker.lip(f)), Fraction(walker.offset(f))
    exact = Fraction(1, 4) * Fraction(g) * (lip * Fraction(r) + off + Fraction(r))
    _carries(walker.out["0.logit"], exact, 4, lost=2, after=AF)


def _float_pipeline_radius(x: float, zn: float) -> float:
    """The documented radius ``x (1 + a) + ||h(0)|| (1 + a) + c`` in float64, in the code's order.  Each
    float64 operation is monotone, so evaluating it at the smallest ``x`` the allowance permits gives a
    lower bound of the code's radius."""
    return x * (1 + REL_ALLOWANCE) + zn * (1 + REL_ALLOWANCE) + _ABS_ALLOWANCE


def _ceil_float(q: Fraction) -> float:
    """The smallest float64 >= q."""
    f = float(q)
    return f if Fraction(f) >= q else math.nextafter(f, math.inf)


def _chain_report() -> tuple[nn.Sequential, dp.SensitivityReport, float]:
    """Two diagonal dense layers with biases and an ``L2BallProjection(1)``, input radius 2, hinge loss;
    also the rounded-up norm of a zero input (``~1e-300``)."""
    model = nn.Sequential(_diag_linear([2.0, 0.5, 1.0], [0.5, -1.0, 0.25]), nn.ReLU(),
                          _diag_linear([1.5, 0.75, 1.0], [-0.25, 0.5, 1.0]), dp.L2BallProjection(1.0))
    rep = dp.network_sensitivity(model, 2.0, lipkit.MulticlassHingeLoss(), input_shape=(3,))
    return model, rep, _norm_up(torch.zeros(1, 3))


def test_chain_first_radius_carries_two_operations():
    """``_Walker.walk_chain``: every input radius is ``round_up(Lip(h) R, 2) (1 + a) + ||h(0)||^ (1 + a) + c``
    (module docstring of :mod:`lipkit.dp.sensitivity`).  At the first layer ``Lip(h) = 1``, so
    ``round_up(R, 2) >= R (1 + 8 EPS64)`` exactly (R = 2); the rest of the radius and the first layer's
    weight bound ``round_up(R_0 G_0)`` are monotone float64 arithmetic, evaluated here at that floor, and
    the layer's bias bound is ``G_0`` itself."""
    _, rep, zn = _chain_report()
    r = 2.0
    g0 = rep.per_tensor["0.bias"]
    radius0 = _float_pipeline_radius(_ceil_float(Fraction(r) * (1 + 8 * EPS)), zn)
    assert rep.per_tensor["0.weight"] >= round_up(radius0 * g0)
    upper0 = (Fraction(r) * AF + Fraction(zn) * AF + Fraction(_ABS_ALLOWANCE)) * Fraction(g0)
    assert Fraction(rep.per_tensor["0.weight"]) <= upper0 * (1 + UPPER)


def test_chain_output_radius_carries_two_operations():
    """The output radius ``round_up(Lip(h) R, 2) (1 + a) + ||h(0)||^ (1 + a) + c`` restarts after the final
    ``L2BallProjection(rho)`` with ``R = rho = 1``, ``Lip(h) = 1`` and ``h(0) = 0``: at least the float64
    evaluation at ``round_up(1, 2) >= 1 + 8 EPS64``."""
    _, rep, zn = _chain_report()
    assert rep.output_radius >= _float_pipeline_radius(_ceil_float(1 + 8 * EPS), zn)
    assert Fraction(rep.output_radius) <= (AF + Fraction(zn) * AF + Fraction(_ABS_ALLOWANCE)) * (1 + UPPER)


def test_chain_gradient_bound_carries_n_plus_one_operations():
    """Every gradient bound is ``round_up(Lip(loss) prod_{j > i} Lip(f_j), n + 1) (1 + a)`` (``n`` children);
    for the last dense layer only the projection follows (``Lip = 1``, the product is exact), and its bias
    bound is that gradient bound."""
    model, rep, _ = _chain_report()
    assert lipkit.lipschitz_bound(dp.L2BallProjection(1.0), 2) == 1.0
    _carries(rep.per_tensor["2.bias"], Fraction(rep.loss_lipschitz), len(model) + 1, after=AF)


def test_chain_total_carries_t_plus_two_operations():
    """``Delta = round_up(sqrt(sum_T S_T^2), T + 2)`` (``network_sensitivity``, ``T`` tensors): the squares,
    the sum and the root lose at most ``T + 1`` roundings (generously counted) of the ``4 (T + 2)`` EPS64."""
    _, rep, _ = _chain_report()
    sq = sum((Fraction(v) ** 2 for v in rep.per_tensor.values()), Fraction(0))
    k = len(rep.per_tensor)
    assert k == 4
    v = Fraction(rep.total)
    assert v >= sqrt_down(sq) * (1 + 4 * (k + 2) * EPS) * (1 - U) ** (k + 1)
    assert v <= sqrt_up(sq) * (1 + UPPER)
