"""The DP sensitivities against exact values (issue 17's mutation scope for lipkit.dp, issue 18).

Each test computes a bound of :mod:`lipkit.dp.sensitivity` / the layers' sensitivity rules / the losses'
logit constants independently, in exact rationals (``Fraction``) or by brute force, and requires the code's
value to be at least that (no tolerance in the bound's favour) and within a relative ``1e-9`` above it (so
that a documented formula cannot silently change).  The derivations are in the docstrings of
:mod:`lipkit.dp.sensitivity`; the attacks on the bounds with true per-example gradients are in
tests/test_dp_sensitivity.py.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from exact_ref import sqrt_down, sqrt_up
from torch import nn

import lipkit
from lipkit import dp
from lipkit.bounds import UnsupportedModuleError
from lipkit.dp.sensitivity import _ABS_ALLOWANCE, REL_ALLOWANCE

TIGHT = Fraction(1, 10**9)
#: for composed bounds: the registry's rounded-up norms and round_up of each product (<= 1e-8 relative), far
#: below the 1e-3 allowance the composition adds
LOOSE = Fraction(1, 10**8)


def _between(value: float, exact: Fraction, rel: Fraction = TIGHT) -> bool:
    v = Fraction(value)
    return exact <= v <= exact * (1 + rel) + Fraction(1, 10**300)


# ----------------------------------------------------------------------------- layer rules


@pytest.mark.parametrize("cls", ["linear", "liplinear"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_rules_are_r_times_g(cls, bias):
    """``||g x^T||_F = ||g|| ||x|| <= G R`` (attained), ``||dl/db|| = ||g|| <= G``."""
    if cls == "linear":
        layer = nn.Linear(4, 3, bias=bias)
    else:
        layer = lipkit.LipLinear(4, 3, bias=bias)
        dp.materialize_constraints(layer, lipkit.record_input_shapes(layer, (4,)))
    for r, g in [(1.5, 0.7), (3.0, 1.0 / 3.0), (1e-3, 12.5)]:
        out = lipkit.parameter_sensitivity(layer, r, g, input_shape=(4,))
        assert _between(out["weight"], Fraction(r) * Fraction(g))
        if bias:
            assert out["bias"] == g
        else:
            assert set(out) == {"weight"}


def test_parametrised_liplinear_and_lipconv_are_refused():
    with pytest.raises(UnsupportedModuleError, match="parametrised weight"):
        lipkit.parameter_sensitivity(lipkit.LipLinear(4, 3), 1.0, 1.0, input_shape=(4,))
    with pytest.raises(UnsupportedModuleError, match="parametrised kernel"):
        lipkit.parameter_sensitivity(lipkit.LipConv2d(2, 2, 3, padding=1), 1.0, 1.0, input_shape=(2, 6, 6))


def _brute_cover(conv: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(largest number of output positions reading one input entry, number of output positions), by running
    the convolution on each input entry's indicator with an all-ones kernel."""
    c, *spatial = shape
    ones = torch.ones((1, 1, *conv.kernel_size), dtype=torch.float64)
    worst = 0
    out_positions = None
    for idx in itertools.product(*(range(n) for n in spatial)):
        x = torch.zeros((1, 1, *spatial), dtype=torch.float64)
        x[(0, 0, *idx)] = 1.0
        y = _ones_conv(conv, x, ones)
        worst = max(worst, int((y != 0).sum()))
        out_positions = int(y[0, 0].numel())
    return worst, out_positions


def _ones_conv(conv: nn.Module, x: torch.Tensor, ones: torch.Tensor) -> torch.Tensor:
    fn = torch.nn.functional.conv1d if x.dim() == 3 else torch.nn.functional.conv2d
    return fn(x, ones, None, conv.stride, conv.padding, conv.dilation)


@pytest.mark.parametrize("kind,kwargs,shape", [
    ("2d", dict(kernel_size=3, padding=1), (2, 7, 6)),
    ("2d", dict(kernel_size=3, stride=2, padding=1), (2, 8, 8)),
    ("2d", dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2), padding=(0, 2)), (1, 6, 9)),
    ("2d", dict(kernel_size=4, stride=3), (3, 10, 10)),
    ("1d", dict(kernel_size=5, stride=2, padding=2), (2, 11)),
    ("2d", dict(kernel_size=3, padding="same"), (1, 5, 5)),
    ("2d", dict(kernel_size=4, padding="same"), (1, 6, 7)),      # asymmetric "same" padding
    ("2d", dict(kernel_size=(2, 4), padding="same", dilation=(1, 2)), (2, 5, 9)),
    ("1d", dict(kernel_size=6, padding="same"), (1, 8)),
    ("2d", dict(kernel_size=4, padding="same"), (1, 3, 3)),      # inputs smaller than the kernel
    ("1d", dict(kernel_size=6, padding="same"), (1, 4)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_rule_is_sqrt_cover_r_g(kind, kwargs, shape, bias):
    """``||dl/dK||_F <= sqrt(m) G R`` with ``m`` the largest number of windows reading one input entry and
    ``||dl/db|| <= sqrt(P) G`` with ``P`` the output positions, both counted by brute force here."""
    cls = nn.Conv1d if kind == "1d" else nn.Conv2d
    conv = cls(shape[0], 3, bias=bias, **kwargs)
    cover, positions = _brute_cover(conv, shape)
    r, g = 1.25, 0.8
    out = lipkit.parameter_sensitivity(conv, r, g, input_shape=shape)
    assert _between(out["weight"], sqrt_up(Fraction(cover)) * Fraction(r) * Fraction(g))
    if bias:
        assert _between(out["bias"], sqrt_up(Fraction(positions)) * Fraction(g))
    else:
        assert set(out) == {"weight"}


def test_conv_rule_refusals():
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
    with pytest.raises(UnsupportedModuleError, match="padding_mode='circular'"):
        lipkit.parameter_sensitivity(conv, 1.0, 1.0, input_shape=(1, 5, 5))
    with pytest.raises(UnsupportedModuleError, match="output positions"):
        lipkit.parameter_sensitivity(nn.Conv2d(1, 1, 3), 1.0, 1.0)
    # without a bias the kernel bound needs no shape (a cover valid for every size)
    out = lipkit.parameter_sensitivity(nn.Conv2d(1, 1, 3, bias=False), 1.0, 1.0)
    assert _between(out["weight"], sqrt_up(Fraction(9)))


def test_lipconv_rule_is_the_conv_rule():
    conv = lipkit.LipConv2d(2, 3, 3, padding=1)
    dp.materialize_constraints(conv, lipkit.record_input_shapes(conv, (2, 6, 6)))
    plain = nn.Conv2d(2, 3, 3, padding=1)
    a = lipkit.parameter_sensitivity(conv, 2.0, 0.5, input_shape=(2, 6, 6))
    b = lipkit.parameter_sensitivity(plain, 2.0, 0.5, input_shape=(2, 6, 6))
    assert a == b and _between(a["weight"], Fraction(3) * Fraction(2.0) * Fraction(0.5))


# ----------------------------------------------------------------------------- loss constants


@pytest.mark.parametrize("t", [1.0, 8.0, 0.3])
def test_cross_entropy_constant_is_sqrt2_t(t):
    loss = lipkit.LipschitzCrossEntropyLoss(temperature=t)
    assert _between(loss.logit_lipschitz(10), sqrt_up(Fraction(2)) * Fraction(t))


def test_hinge_constant_is_sqrt2():
    value = lipkit.MulticlassHingeLoss().logit_lipschitz(5)
    assert _between(value, sqrt_up(Fraction(2)))


def _hkr_worst_sq(c: int, pi: list[Fraction], alpha: Fraction) -> Fraction:
    """``max_y max(||v_y||^2, max_{j != y} ||alpha (e_j - e_y) - v_y||^2)``, enumerated in exact rationals
    from the KR coefficients ``v_y`` (1 / (C pi_k) on the label, -1 / (C (1 - pi_k)) elsewhere)."""
    worst = Fraction(0)
    for y in range(c):
        v = [1 / (c * pi[k]) if k == y else -1 / (c * (1 - pi[k])) for k in range(c)]
        worst = max(worst, sum(x * x for x in v))
        for j in range(c):
            if j != y:
                worst = max(worst, sum((alpha * ((k == j) - (k == y)) - v[k]) ** 2 for k in range(c)))
    return worst


@pytest.mark.parametrize("alpha,priors", [(10.0, None), (0.5, None), (2.0, [0.1, 0.2, 0.3, 0.4]),
                                          (0.05, [0.7, 0.1, 0.1, 0.1])])
def test_hkr_constant_is_the_worst_gradient_over_labels_and_runner_ups(alpha, priors):
    """``max_y max(||v_y||, max_{j != y} ||alpha (e_j - e_y) - v_y||)``, enumerated in exact rationals from
    the KR coefficients ``v_y`` (1 / (C pi_k) on the label, -1 / (C (1 - pi_k)) elsewhere)."""
    c = 4
    loss = lipkit.HKRLoss(alpha=alpha, class_priors=priors)
    pi = [Fraction(1, c)] * c if priors is None else [Fraction(p) for p in priors]
    worst = _hkr_worst_sq(c, pi, Fraction(alpha))
    # the priors are floats: their float64 reciprocals are within 1e-15 of the exact ones
    assert _between(loss.logit_lipschitz(c), sqrt_down(worst) * (1 - Fraction(1, 10**13)),
                    rel=Fraction(1, 10**8))
    assert Fraction(loss.logit_lipschitz(c)) >= sqrt_up(worst) * (1 - Fraction(1, 10**14))


def test_hkr_constant_carries_its_documented_rounding_allowance():
    """30 classes, random priors: the float64 evaluation of the worst gradient norm has a relative error of
    at most ~(C + 9) / 2 u (u = 2^-53); the documented allowance ``round_up(., 4 C + 8)`` inflates by
    ``8 (4 C + 8) u`` = 1024 u, so the returned constant is above the exact one by at least 900 u."""
    c = 30
    g = torch.Generator().manual_seed(3)
    priors = torch.rand(c, generator=g, dtype=torch.float64) + 0.2
    priors = (priors / priors.sum()).tolist()
    loss = lipkit.HKRLoss(alpha=0.7, class_priors=priors)
    worst = _hkr_worst_sq(c, [Fraction(p) for p in priors], Fraction(0.7))
    u = Fraction(1, 2**53)
    assert Fraction(loss.logit_lipschitz(c)) >= sqrt_down(worst) * (1 + 900 * u)
    assert Fraction(loss.logit_lipschitz(c)) <= sqrt_up(worst) * (1 + 1200 * u)


def test_mse_constant_is_radius_plus_target():
    loss = lipkit.LogitMSELoss(target_value=2.0)
    assert _between(loss.logit_lipschitz(3, 5.5), Fraction(7.5))
    for bad in (None, math.inf, -1.0):
        with pytest.raises(ValueError, match="output_radius"):
            loss.logit_lipschitz(3, bad)


# ----------------------------------------------------------------------------- the composition


def _diag_linear(d_in: int, scales: list[float], bias: list[float] | None) -> nn.Linear:
    layer = nn.Linear(d_in, len(scales), bias=bias is not None)
    with torch.no_grad():
        layer.weight.zero_()
        for i, s in enumerate(scales):
            layer.weight[i, i] = s
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def _lip(scales: list[float]) -> Fraction:
    return max(Fraction(abs(s)) for s in scales)


def test_chain_bounds_are_the_documented_formula():
    """A 3-layer chain with diagonal weights (exact spectral norms) and non-zero biases.  Per the module
    docstring, with ``a = REL_ALLOWANCE``, ``c = _ABS_ALLOWANCE``:

    * ``R_i = Lip(h_i) R (1 + a) + ||h_i(0)|| (1 + a) + c`` (``h_i`` the prefix before layer ``i``),
    * ``G_i = Lip(loss) prod_{j > i} Lip(f_j) (1 + a)``,
    * ``S_W = R_i G_i`` and ``S_b = G_i`` for a dense layer, and ``Delta = sqrt(sum S^2)``.

    ReLU keeps the offsets: ``h(0)`` is computed by running the prefix on zeros."""
    s1, b1 = [0.5, 2.0, 1.25], [0.5, -1.0, 0.25]
    s2, b2 = [1.5, 0.75, 1.0], [-0.25, 0.5, 1.0]
    s3, b3 = [1.0, 0.5], [0.125, -0.5]
    model = nn.Sequential(_diag_linear(3, s1, b1), nn.ReLU(), _diag_linear(3, s2, b2), nn.ReLU(),
                          _diag_linear(3, s3, b3))
    r = 2.0
    loss = lipkit.MulticlassHingeLoss()
    rep = dp.network_sensitivity(model, r, loss, input_shape=(3,))
    a, c, R = Fraction(REL_ALLOWANCE), Fraction(_ABS_ALLOWANCE), Fraction(r)
    L = [_lip(s1), Fraction(1), _lip(s2), Fraction(1), _lip(s3)]
    # offsets ||h_i(0)|| of the prefixes, exactly (the weights are diagonal, the biases dyadic)
    z0 = [Fraction(0)] * 3
    h = [z0]
    x = z0
    for layer in model:
        if isinstance(layer, nn.Linear):
            w = [[Fraction(float(v)) for v in row] for row in layer.weight.tolist()]
            bb = [Fraction(float(v)) for v in layer.bias.tolist()]
            x = [sum(w[i][j] * x[j] for j in range(len(x))) + bb[i] for i in range(len(w))]
        else:
            x = [max(v, Fraction(0)) for v in x]
        h.append(x)
    radii = []
    lip_prefix = Fraction(1)
    for i in range(5):
        zn = sqrt_down(sum(v * v for v in h[i]))
        radii.append(lip_prefix * R * (1 + a) + zn * (1 + a) + c)
        lip_prefix *= L[i]
    G = sqrt_down(Fraction(2))
    grads = []
    for i in range(5):
        suffix = Fraction(1)
        for j in range(i + 1, 5):
            suffix *= L[j]
        grads.append(G * suffix * (1 + a))
    expect = {}
    for i, name in ((0, "0"), (2, "2"), (4, "4")):
        expect[f"{name}.weight"] = radii[i] * grads[i]
        expect[f"{name}.bias"] = grads[i]
    assert set(rep.per_tensor) == set(expect)
    for k, v in expect.items():
        assert _between(rep.per_tensor[k], v, rel=LOOSE), (k, rep.per_tensor[k], float(v))
    total = sqrt_down(sum(v * v for v in expect.values()))
    assert _between(rep.total, total, rel=LOOSE)
    out_r = lip_prefix * R * (1 + a) + sqrt_down(sum(v * v for v in h[5])) * (1 + a) + c
    assert _between(rep.output_radius, out_r, rel=LOOSE)


def test_projection_restarts_the_radius_and_residuals_pass_bounds():
    """An ``L2BallProjection`` of radius rho caps the next radius at min(rho, R_i); ``Residual(f)`` passes R
    and G to ``f``; ``ConvexResidual`` scales G by ``a`` and bounds its logit by ``a (1-a) G (Lip(f) R +
    ||f(0)|| + R)``."""
    inner = _diag_linear(3, [0.5, 0.25, 0.5], [0.0, 0.0, 0.0])
    model = nn.Sequential(_diag_linear(3, [4.0, 4.0, 4.0], None), dp.L2BallProjection(1.0),
                          lipkit.nn.Residual(inner), _diag_linear(3, [1.0, 1.0, 1.0], None))
    rep = dp.network_sensitivity(model, 3.0, lipkit.MulticlassHingeLoss(), input_shape=(3,))
    a, c = Fraction(REL_ALLOWANCE), Fraction(_ABS_ALLOWANCE)
    G = sqrt_down(Fraction(2))
    # layer 0: R_0 = 3 (1 + a) + c, G_0 = G * 1 * 1.5 * 1 (1 + a)  (Lip(residual) = 1 + 0.5)
    r0 = Fraction(3) * (1 + a) + c
    assert _between(rep.per_tensor["0.weight"], r0 * G * Fraction(3, 2) * (1 + a), rel=LOOSE)
    # after the projection the radius restarts at min(1, R) and grows with the residual's Lip 1.5
    r_inner = 1 * (1 + a) + c  # R into the residual = R into its f
    g_inner = G * 1 * (1 + a)
    assert _between(rep.per_tensor["2.f.weight"], r_inner * g_inner, rel=LOOSE)
    r3 = Fraction(3, 2) * (1 + a) + c
    assert _between(rep.per_tensor["3.weight"], r3 * G * (1 + a), rel=LOOSE)


def test_offset_is_inflated_and_shared_tensors_are_refused():
    from lipkit.dp.sensitivity import _Walker

    layer = _diag_linear(2, [1.0, 1.0], [3.0, 4.0])
    shapes = lipkit.record_input_shapes(layer, (2,))
    w = _Walker(layer, shapes, {})
    assert _between(w.offset(layer), Fraction(5) * (1 + Fraction(REL_ALLOWANCE)) + Fraction(_ABS_ALLOWANCE),
                    rel=LOOSE)
    shared = _diag_linear(2, [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="used more than once"):
        dp.network_sensitivity(nn.Sequential(shared, nn.ReLU(), shared), 1.0, lipkit.MulticlassHingeLoss(),
                               input_shape=(2,))


# ----------------------------------------------------------------------------- splines


def test_constraint_jacobian_norm_of_a_rank_one_projection_is_not_below_one():
    """A ``project`` spline whose every slope is clipped: the slope map only shifts the clipped profile by the
    mean of ``c - cum``, so its Jacobian is ``1 1^T / K`` (spectral and Frobenius norm exactly 1); the
    bound, the smaller of the two inflated norms, must not fall below 1."""
    from lipkit.nn.spline import constraint_jacobian_norms

    s = lipkit.LinearSpline(3, num_knots=7, knot_range=1.0, init="identity", constraint="project").double()
    with torch.no_grad():
        s.coefficients.copy_(torch.linspace(-30, 30, 7, dtype=torch.float64).expand(3, -1) ** 1)
    norms = constraint_jacobian_norms(s)
    assert bool((norms >= 1.0).all()), norms
    assert bool((norms <= 1.0 + 1e-9).all()), norms


@pytest.mark.parametrize("cfg", [dict(constraint="clamp"), dict(constraint="project"),
                                 dict(constraint="clamp", slope_bounds=(-0.5, 0.25), learn_scale=True),
                                 dict(constraint="project", learn_scale=True)])
@pytest.mark.parametrize("shape", [(5,), (5, 3, 2)])
def test_spline_rule_is_its_documented_formula(cfg, shape):
    """``||dl/dc||_F <= max_c ||J_c||_2 G (sqrt(N) / alpha_min + 2 R / h)`` and, with a learnable scale,
    ``||dl/dlog_scale|| <= sqrt(N) G max |b|``; ``J_c`` is the Jacobian of the slope map at the current
    coefficients (its spectral norm from a float64 SVD here), ``N`` the positions per channel."""
    torch.manual_seed(0)
    s = lipkit.LinearSpline(5, num_knots=9, knot_range=2.0, init="identity", **cfg).double()
    with torch.no_grad():
        s.coefficients.add_(0.8 * torch.randn_like(s.coefficients))  # some slopes clipped
        if s.learn_scale:
            s.log_scale.copy_(torch.linspace(-0.4, 0.6, 5, dtype=torch.float64))
    r, g = 3.0, 0.75
    out = lipkit.parameter_sensitivity(s, r, g, input_shape=shape)
    n_pos = math.prod(shape[1:])
    c = s.coefficients.detach().double()
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: s._constrain(v[None])[0], c[k])
                       for k in range(5)])
    j = max(torch.linalg.svdvals(jk)[0].item() for jk in jac)
    assert j > 0.5  # not a degenerate map
    alpha_min = torch.exp(s.log_scale.double()).min().item()
    expect = Fraction(j) * Fraction(g) * (sqrt_up(Fraction(n_pos)) / Fraction(alpha_min)
                                          + 2 * Fraction(r) / Fraction(s.step))
    assert _between(out["coefficients"], expect * (1 - Fraction(1, 10**12)), rel=LOOSE)
    if s.learn_scale:
        b = s.pieces()[2].abs().max().item()
        assert _between(out["log_scale"], sqrt_up(Fraction(n_pos)) * Fraction(g) * Fraction(b), rel=LOOSE)
    else:
        assert set(out) == {"coefficients"}


def test_a_model_that_is_not_a_sequential_is_one_layer_chain():
    """A bare layer (not an ``nn.Sequential``) is a chain of one: ``S_W = R G``, ``S_b = G`` with the
    allowances, and its output radius ``Lip R (1 + a) + ||b|| (1 + a) + c``."""
    layer = _diag_linear(3, [0.5, 2.0], [3.0, 4.0])
    r = 1.5
    rep = dp.network_sensitivity(layer, r, lipkit.MulticlassHingeLoss(), input_shape=(3,))
    a, c = Fraction(REL_ALLOWANCE), Fraction(_ABS_ALLOWANCE)
    g = sqrt_down(Fraction(2)) * (1 + a)
    r0 = Fraction(r) * (1 + a) + c
    assert set(rep.per_tensor) == {"weight", "bias"}
    assert _between(rep.per_tensor["weight"], r0 * g, rel=LOOSE)
    assert _between(rep.per_tensor["bias"], g, rel=LOOSE)
    assert _between(rep.output_radius, 2 * Fraction(r) * (1 + a) + 5 * (1 + a) + c, rel=LOOSE)
    assert rep.input_radius == r


def test_convex_residual_logit_bound_is_its_formula():
    """``ConvexResidual(f)`` with a learnable ``a = sigmoid(s)``: ``|dl/ds| <= a (1 - a) G (Lip(f) R +
    ||f(0)|| + R)`` (times the allowance), and ``f`` sees the gradient bound ``a G``."""
    f = _diag_linear(2, [0.5, 0.25], [1.0, 0.0])
    block = lipkit.nn.ConvexResidual(f, alpha=0.25, learnable=True)
    model = nn.Sequential(block)
    r = 2.0
    rep = dp.network_sensitivity(model, r, lipkit.MulticlassHingeLoss(), input_shape=(2,))
    a_rel, c = Fraction(REL_ALLOWANCE), Fraction(_ABS_ALLOWANCE)
    alpha = Fraction(float(torch.sigmoid(block.logit).detach()))
    c1 = Fraction(float(1.0 - torch.sigmoid(block.logit).detach()))
    g0 = sqrt_down(Fraction(2)) * (1 + a_rel)  # the gradient bound at the block's output
    r0 = Fraction(r) * (1 + a_rel) + c
    f_out = Fraction(1, 2) * r0 + 1 * (1 + a_rel) + c  # Lip(f) R + ||f(0)||, with the offset's allowance
    expect_logit = c1 * alpha * g0 * (f_out + r0) * (1 + a_rel)
    assert _between(rep.per_tensor["0.logit"], expect_logit, rel=LOOSE)
    g_f = alpha * g0 * (1 + a_rel)
    assert _between(rep.per_tensor["0.f.weight"], r0 * g_f, rel=LOOSE)
    assert _between(rep.per_tensor["0.f.bias"], g_f, rel=LOOSE)


def test_nested_chains_are_never_below_the_flat_chain():
    """The same 3-layer net written flat and as nested ``nn.Sequential`` blocks: the nested analysis
    multiplies the blocks' Lipschitz bounds (each a product of its children's), applies the allowances once
    per level and bounds each block's offset at zero input (looser: ``L2 (L1 R + ||h1(0)||) + ||h2(0)||``
    against ``L2 L1 R + ||h2(h1(0))||``), so its bounds are never below the flat ones."""
    s1, b1 = [0.5, 2.0, 1.25], [0.5, -1.0, 0.25]
    s2, b2 = [1.5, 0.75, 1.0], [-0.25, 0.5, 1.0]
    s3, b3 = [1.0, 0.5], [0.125, -0.5]

    def layers():
        return [_diag_linear(3, s1, b1), nn.ReLU(), _diag_linear(3, s2, b2), nn.ReLU(),
                _diag_linear(3, s3, b3)]

    flat = nn.Sequential(*layers())
    la = layers()
    nested = nn.Sequential(nn.Sequential(la[0], la[1]), nn.Sequential(la[2], la[3], la[4]))
    loss = lipkit.MulticlassHingeLoss()
    a = dp.network_sensitivity(flat, 2.0, loss, input_shape=(3,)).per_tensor
    b = dp.network_sensitivity(nested, 2.0, loss, input_shape=(3,)).per_tensor
    names = {"0.weight": "0.0.weight", "0.bias": "0.0.bias", "2.weight": "1.0.weight", "2.bias": "1.0.bias",
             "4.weight": "1.2.weight", "4.bias": "1.2.bias"}
    for k_flat, k_nested in names.items():
        assert b[k_nested] >= a[k_flat], (k_nested, b[k_nested], a[k_flat])
        assert b[k_nested] <= 1.5 * a[k_flat], (k_nested, b[k_nested], a[k_flat])


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, True, "2"])
def test_bad_input_radius_is_refused(bad):
    with pytest.raises(ValueError, match="input_radius must be a finite number > 0"):
        dp.network_sensitivity(nn.Sequential(nn.Linear(3, 2)), bad, lipkit.MulticlassHingeLoss(),
                               input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        dp.network_sensitivity(nn.Sequential(nn.Linear(3, 2)), 1.0, lipkit.MulticlassHingeLoss(),
                               input_shape=None)


def test_uncovered_tensors_are_named_and_the_report_carries_the_loss_constant():
    class ScaledLinear(nn.Linear):  # the nn.Linear rule covers weight and bias, not `gain`
        def __init__(self):
            super().__init__(3, 3)
            self.gain = nn.Parameter(torch.ones(()))

    class WithChild(nn.Linear):  # a rule-covered layer holding a trainable submodule
        def __init__(self):
            super().__init__(3, 3)
            self.extra = nn.Linear(3, 3)

    loss = lipkit.MulticlassHingeLoss()
    for bad, words in ((ScaledLinear(), "gain: this trainable parameter is not covered"),
                       (WithChild(), "holds trainable tensors the rule does not cover")):
        net = nn.Sequential(bad, nn.ReLU(), nn.Linear(3, 2))
        with pytest.raises(ValueError, match=words):
            dp.network_sensitivity(net, 1.0, loss, input_shape=(3,))
        report = dp.network_sensitivity(net, 1.0, loss, input_shape=(3,), strict=False)
        assert any(words.split(":")[-1].strip() in p for p in report.problems), report.problems
    ok = dp.network_sensitivity(nn.Sequential(nn.Linear(3, 2)), 1.0, loss, input_shape=(3,))
    assert ok.problems == [] and ok.loss_lipschitz == loss.logit_lipschitz(2)


def test_sequential_subclasses_and_fixed_convex_residuals_are_walked():
    class MyChain(nn.Sequential):
        pass

    inner = MyChain(_diag_linear(2, [0.5, 0.5], [0.0, 0.0]), nn.ReLU())
    fixed = lipkit.nn.ConvexResidual(_diag_linear(2, [1.0, 0.25], [0.0, 0.0]), alpha=0.5)
    model = nn.Sequential(inner, fixed, _diag_linear(2, [1.0, 1.0], None))
    rep = dp.network_sensitivity(model, 1.0, lipkit.MulticlassHingeLoss(), input_shape=(2,))
    assert set(rep.per_tensor) == {"0.0.weight", "0.0.bias", "1.f.weight", "1.f.bias", "2.weight"}


# ----------------------------------------------------------------------------- the Gram bounds


def _exact_gram_rows(w: torch.Tensor) -> tuple[list[Fraction], list[Fraction]]:
    """Exact Gershgorin row sums of ``A A^T`` (``A`` the wide orientation of ``w``) and the row norms'
    squares, in rationals."""
    a = w.detach().double()
    a = a if a.shape[0] <= a.shape[1] else a.T
    rows = [[Fraction(float(v)) for v in r] for r in a.tolist()]
    sq = [sum(v * v for v in r) for r in rows]
    gram = [[sum(x * y for x, y in zip(ri, rj, strict=True)) for rj in rows] for ri in rows]
    return [sum(abs(v) for v in g) for g in gram], sq


def test_gram_bound_of_a_one_by_one_and_an_empty_weight():
    from lipkit.dp.sensitivity import gram_bound, gram_bound_fp32

    for fn in (gram_bound, gram_bound_fp32):
        assert fn(torch.tensor([[3.0]])) >= 3.0
        assert fn(torch.tensor([[-0.5]])) >= 0.5
        assert fn(torch.zeros(0, 4)) == 0.0


def test_gram_bound_carries_its_documented_allowance():
    """``||W||^2 <= max_i (sum_j |G_ij| + gamma_k ||a_i|| sum_j ||a_j||)``, ``gamma_k = 4 (k + 2) EPS64``:
    on a 2 x 4096 matrix the allowance (~4e-12 of the row) dwarfs the float64 rounding of the rows, so the
    bound's square must carry it (0.99 of it: its own roundings are far smaller)."""
    from lipkit.bounds import EPS64
    from lipkit.dp.sensitivity import gram_bound

    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 4096, generator=g, dtype=torch.float64)
    rows, sq = _exact_gram_rows(w)
    norms = [sqrt_down(s) for s in sq]
    k = 4096
    need = max(r + Fraction(99, 100) * 4 * (k + 2) * Fraction(EPS64) * n * sum(norms)
               for r, n in zip(rows, norms, strict=True))
    assert Fraction(gram_bound(w)) ** 2 >= need


def test_gram_bound_fp32_carries_its_documented_allowances():
    """The float32 block products' allowance ``2 gamma_kb ||a_i|| sum_j ||a_j||`` (kb = 64: ~7.6e-6 of the
    row) and the underflow allowance ``m k 2^-126`` (entries whose products underflow to 0 in float32)."""
    from lipkit.dp.sensitivity import gram_bound_fp32

    g = torch.Generator().manual_seed(1)
    w = torch.rand(3, 256, generator=g)
    rows, sq = _exact_gram_rows(w)
    norms = [sqrt_down(s) for s in sq]
    u32 = Fraction(1, 2**24)
    gamma = 64 * u32 / (1 - 64 * u32)
    need = max(r + Fraction(99, 100) * 2 * gamma * n * sum(norms) for r, n in zip(rows, norms, strict=True))
    assert Fraction(gram_bound_fp32(w)) ** 2 >= need
    # products of 2e-23 underflow to 0 in float32: only the m k 2^-126 term bounds the Gram matrix
    tiny = torch.full((4, 65536), 2e-23)
    exact = math.sqrt(4 * 65536) * float(tiny[0, 0].double())
    assert gram_bound_fp32(tiny) >= exact


def test_blocks_pass_their_lipschitz_bounds_to_the_layers_before():
    """The layer before a block gets the gradient bound ``G Lip(block)`` with ``Lip(Residual(f)) = 1 +
    Lip(f)`` and ``Lip(ConvexResidual(f)) = |1 - a| + |a| Lip(f)`` (here ``Lip(f) = 2``)."""
    a_rel, c = Fraction(REL_ALLOWANCE), Fraction(_ABS_ALLOWANCE)
    g = sqrt_down(Fraction(2))
    for block, lip in ((lipkit.nn.Residual(_diag_linear(2, [2.0, 0.5], None)), Fraction(3)),
                       (lipkit.nn.ConvexResidual(_diag_linear(2, [2.0, 0.5], None), alpha=0.25),
                        Fraction(3, 4) + Fraction(1, 4) * 2)):
        model = nn.Sequential(_diag_linear(2, [1.0, 1.0], None), block)
        rep = dp.network_sensitivity(model, 1.0, lipkit.MulticlassHingeLoss(), input_shape=(2,))
        r0 = 1 + a_rel + c
        assert _between(rep.per_tensor["0.weight"], r0 * g * lip * (1 + a_rel), rel=LOOSE), type(block)


def test_conv_gram_bound_of_a_single_tap_kernel():
    """A 1 x 1 x 1 x 1 kernel is the scalar map ``x -> w x``: its bound is at least ``|w|``."""
    from lipkit.dp.sensitivity import conv_gram_bound

    assert conv_gram_bound(torch.full((1, 1, 1, 1), 3.0)) >= 3.0
    assert conv_gram_bound(torch.full((1, 1, 1, 1), -0.25)) >= 0.25
    assert conv_gram_bound(torch.zeros(0, 1, 1, 1)) == 0.0


def _rounded_sqrt_bound(square: Fraction, inner_ops: int) -> Fraction:
    """The documented ``round_up(sqrt(round_up(square, inner_ops)), 2)`` of an exact ``square``, less one
    rounding per step: what a Gram bound evaluated without other error must reach (a count one lower, in
    either round-up, falls below it)."""
    from lipkit.bounds import EPS64

    e = Fraction(EPS64)
    return sqrt_down(square * (1 + (4 * inner_ops - 1) * e)) * (1 + 8 * e) * (1 - e)


def test_gram_bound_allowance_takes_each_rows_norm():
    """The allowance of row ``i`` is ``gamma_k ||a_i|| sum_j ||a_j||``; with one row twice as long as the
    seven others, that is 9/5.5 of the Frobenius norm's square
    ``gamma_k sum_j ||a_j||^2`` on the largest row."""
    from lipkit.bounds import EPS64
    from lipkit.dp.sensitivity import gram_bound

    g = torch.Generator().manual_seed(2)
    w = torch.rand(8, 4096, generator=g, dtype=torch.float64)
    w[0] *= 2
    rows, sq = _exact_gram_rows(w)
    norms = [sqrt_down(s) for s in sq]
    gamma = 4 * (4096 + 2) * Fraction(EPS64)
    need = max(r + Fraction(99, 100) * gamma * n * sum(norms) for r, n in zip(rows, norms, strict=True))
    assert Fraction(gram_bound(w)) ** 2 >= need


@pytest.mark.parametrize("fp32", [False, True])
def test_gram_bounds_on_an_exact_matrix_carry_every_documented_inflation(fp32):
    """``A = 1/2`` (``2 x 4``): every product and sum is exact (``G = [[1, 1], [1, 1]]``, row norms 1), so the
    bound is exactly the documented one: Gershgorin's row ``2``, plus ``gamma ||a_i|| sum_j ||a_j||``
    (float64: ``gamma_k = 4 (k + 2) eps``; float32: ``2 gamma_64 + m k 2^-126``), rounded up for ``2 m + 4``
    operations (float32: ``2 m + nb + 4``, ``nb`` blocks), square-rooted and rounded up for 2."""
    from lipkit.bounds import EPS64
    from lipkit.dp.sensitivity import gram_bound, gram_bound_fp32

    m, k = 2, 4
    w = torch.full((m, k), 0.5, dtype=torch.float32 if fp32 else torch.float64)
    if fp32:
        u = Fraction(1, 2**24)
        allowance, ops = 2 * (64 * u / (1 - 64 * u)) * 2 + m * k * Fraction(1, 2**126), 2 * m + 1 + 4
    else:
        allowance, ops = 4 * (k + 2) * Fraction(EPS64) * 2, 2 * m + 4
    need = _rounded_sqrt_bound(2 + allowance, ops)
    value = Fraction((gram_bound_fp32 if fp32 else gram_bound)(w))
    assert need <= value <= need * (1 + Fraction(1, 10**12))


def test_gram_bound_fp32_sums_its_blocks_in_float64():
    """1024 blocks of 64 columns, each with one entry ``x_b`` near 1 chosen so that adding ``fl(x_b^2)`` to a
    float32 running sum rounds down by almost half an ulp: a float32 sum of the blocks would lose 2e-5 of
    ``||w||^2``, more than the products' allowance ``2 gamma_64`` (7.6e-6) covers; the float64 sum is
    exact."""
    from lipkit.dp.sensitivity import gram_bound_fp32

    cands = 1 + torch.arange(4096, dtype=torch.float64) * 2.0**-23
    squares = (cands.float() * cands.float()).double()  # fl32(x^2), exact in float64
    xs, s = [], torch.zeros((), dtype=torch.float32)
    for _ in range(1024):
        loss = (s.double() + squares) - (s + squares.float()).double()  # float32 sum's rounding, per choice
        j = int(loss.argmax())
        xs.append(float(cands[j]))
        s = s + squares[j].float()
    exact = sum(Fraction(x) ** 2 for x in xs)
    assert Fraction(s.item()) < exact * (1 - 2 * 64 * Fraction(1, 2**24))  # the float32 sum falls short
    w = torch.zeros(1, 64 * 1024)
    w[0, ::64] = torch.tensor(xs)
    assert Fraction(gram_bound_fp32(w)) >= sqrt_down(exact)


def _disjoint_taps(c_out: int) -> torch.Tensor:
    """``c_out x 2 x 1 x 2``: input channel 0 through the left tap, channel 1 through the right one (2s)."""
    kernel = torch.zeros(c_out, 2, 1, 2, dtype=torch.float64)
    kernel[:, 0, 0, 0] = 2.0
    kernel[:, 1, 0, 1] = 2.0
    return kernel


@pytest.mark.parametrize("kernel", [torch.full((64, 1, 2, 2), 2.0, dtype=torch.float64),
                                    torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64), _disjoint_taps(64)],
                         ids=["64x1x2x2", "1x1x1x1", "disjoint-taps"])
def test_conv_gram_bound_on_an_exact_kernel_carries_every_documented_inflation(kernel):
    """Kernels of 2s whose correlation is exact in float64 and whose Schur matrix ``A_ji = sum_m |C[j, i,
    m]|`` has equal row sums, so the Schur bound is the convolution's norm (one input channel: ``sqrt(c_out)``
    times the kernel's sum; two channels through disjoint taps: ``sqrt(c_out (4 + 4))``, the coupling sitting
    at an offset other than 0). The bound must carry the correlation's ``gamma_n = 2 (n + 2) eps`` (``n =
    c_out kh kw``) on every offset, the factor ``1 + 4 (offsets + 2) eps`` of the sums, ``round_up(., c_in +
    4)`` and the final ``round_up(sqrt, 2)``, less one rounding."""
    from lipkit.bounds import EPS64
    from lipkit.dp.sensitivity import conv_gram_bound

    e = Fraction(EPS64)
    c_out, c_in, kh, kw = kernel.shape
    kt = kernel.transpose(0, 1)
    corr = torch.nn.functional.conv2d(kt, kt, padding=(kh - 1, kw - 1))  # small integers: exact
    row_sums = {Fraction(v) for v in corr.abs().sum(dim=(1, 2, 3)).tolist()}
    assert len(row_sums) == 1  # the Perron vector is uniform: the Schur bound is the row sum
    gamma = 2 * (c_out * kh * kw + 2) * e
    offsets = (2 * kh - 1) * (2 * kw - 1)
    square = row_sums.pop() * (1 + gamma) * (1 + 4 * (offsets + 2) * e) * (1 + 4 * (c_in + 4) * e)
    need = sqrt_down(square) * (1 + 8 * e) * (1 - e)
    got = Fraction(conv_gram_bound(kernel))
    assert need <= got <= need * (1 + Fraction(1, 10**12))


_RANDOM_KERNEL = torch.randint(-3, 4, (16, 3, 2, 3), generator=torch.Generator().manual_seed(5)).double()


@pytest.mark.parametrize("kernel", [_disjoint_taps(64), _RANDOM_KERNEL], ids=["disjoint-taps", "random"])
def test_schur_matrix_is_the_documented_entrywise_bound(kernel):
    """``A_ji = sum_m (|fl(C)| + 2 (n + 2) eps (|K| * |K|))[j, i, m]`` times ``1 + 4 (offsets + 2) eps``,
    entry by entry, on integer kernels (exact products: ``fl(C) = C``); the sum over the offsets may round
    down by at most ``offsets`` half-ulps. The disjoint taps couple their two channels only away from offset
    0, where the allowance must still be added."""
    from lipkit.bounds import EPS64
    from lipkit.dp.sensitivity import _schur_matrix

    e = Fraction(EPS64)
    c_out, c_in, kh, kw = kernel.shape
    taps = [[[[Fraction(v) for v in row] for row in ch] for ch in out] for out in kernel.tolist()]
    gamma = 2 * (c_out * kh * kw + 2) * e
    offsets = (2 * kh - 1) * (2 * kw - 1)
    got = _schur_matrix(kernel)
    for j in range(c_in):
        for i in range(c_in):
            corr, corr_abs = Fraction(0), Fraction(0)
            for dy in range(-(kh - 1), kh):
                for dx in range(-(kw - 1), kw):
                    pairs = [(taps[o][j][y + dy][x + dx], taps[o][i][y][x]) for o in range(c_out)
                             for y in range(kh) for x in range(kw)
                             if 0 <= y + dy < kh and 0 <= x + dx < kw]
                    corr += abs(sum(p * q for p, q in pairs))
                    corr_abs += sum(abs(p * q) for p, q in pairs)
            need = (corr + gamma * corr_abs) * (1 + 4 * (offsets + 2) * e) * (1 - offsets * e)
            assert need <= Fraction(got[j, i].item()) <= need * (1 + Fraction(1, 10**12)), (j, i)


def test_conv_gram_bound_of_scalars_just_below_one():
    """Single-tap kernels ``w`` in the 40 floats below 1: one of them makes the inflated Schur matrix exactly
    1.0 (a value the code must not mistake for an all-zero kernel); each bound is at least ``|w|``."""
    from lipkit.dp.sensitivity import conv_gram_bound

    w = 1.0
    for _ in range(40):
        w = math.nextafter(w, 0.0)
        assert conv_gram_bound(torch.full((1, 1, 1, 1), w, dtype=torch.float64)) >= w


@pytest.mark.parametrize("kernel", [
    # tiny weights: the power iteration's positive shift must stay positive relative to them
    [[3.6264230602766513e-10, 1.088350728689384e-06, 6.043270316129079e-08]],
    [[1.1908584479063018e-06, 1.9965161715280766e-07, 3.6491784561681183e-08]],
    # 30 power iterations do not converge: the Collatz-Wielandt quotient, not (A v)_i v_i, bounds lambda
    [[1.1067848991434938e-06, 0.002247366257724021, 0.00028843690536832435],
     [0.00011757840001894716, 0.0005092643312804739, 1.7919574978420994e-05],
     [0.0009646879443661457, 6.830919549678633e-05, 0.0021152555317143565]],
])
def test_conv_gram_bound_of_nonnegative_pointwise_kernels_is_at_least_the_matrix_norm(kernel):
    """A 1 x 1 kernel ``W >= 0`` is the matrix ``W`` at every pixel: its norm is ``||W||_2`` and the Schur
    matrix ``W^T W`` is tight, so any slip in the Perron-vector estimate shows below the exact norm."""
    from exact_ref import l2_norm_lower

    from lipkit.dp.sensitivity import conv_gram_bound

    w = torch.tensor(kernel, dtype=torch.float64)
    assert Fraction(conv_gram_bound(w[:, :, None, None])) >= l2_norm_lower(w)
