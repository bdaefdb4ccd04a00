"""Tests that kill the mutants of the interval facet and of the interval certificates (``make mutate
SHARD=interval_rules`` / ``SHARD=interval_certify``, bench/mutation_scope.py).

Every box is checked against values computed independently of the code under test: exact rationals
(:class:`fractions.Fraction`) for affine and piecewise-linear layers, 60-digit mpmath for the layers with
square roots and exponentials.  Where a rule's documented outward rounding is the only thing between a
float64 result and the exact one, the width is also checked against that documented term (so a smaller
widening, which would rest on luck, fails)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import UnsupportedModuleError
from lipkit.bounds.interval import interval_forward
from lipkit.nn import intervals  # noqa: F401  (registers lipkit's rules)

mpmath.mp.dps = 60
EPS = torch.finfo(torch.float64).eps
_vfrac = np.vectorize(lambda v: Fraction(float(v)), otypes=[object])


def _frac(t: torch.Tensor) -> np.ndarray:
    return _vfrac(t.detach().double().numpy())


def _contains(lo: torch.Tensor, hi: torch.Tensor, exact) -> bool:
    """Every exact value (Fractions or mpmath numbers, same shape) lies in its box, compared exactly."""
    flo, fhi = lo.detach().double().reshape(-1).tolist(), hi.detach().double().reshape(-1).tolist()
    ex = np.asarray(exact, dtype=object).reshape(-1)
    assert len(ex) == len(flo)
    if isinstance(ex[0], Fraction):
        return all(Fraction(a) <= v <= Fraction(b) for a, b, v in zip(flo, fhi, ex, strict=True))
    return all(mpmath.mpf(a) <= v <= mpmath.mpf(b) for a, b, v in zip(flo, fhi, ex, strict=True))


def _wider_than(lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor) -> bool:
    """``hi - lo >= width`` up to the float64 rounding of the two ends and of their difference (a few ulps
    of the ends)."""
    ends = torch.maximum(lo.abs(), hi.abs())
    return bool(((hi - lo) >= width - 4 * EPS * ends).all())


def _refuses(module: nn.Module, message: str, box: torch.Tensor) -> None:
    """The rule raises UnsupportedModuleError with exactly ``message`` and the module attached."""
    with pytest.raises(UnsupportedModuleError, match=f"^{re.escape(message)}$") as info:
        interval_forward(module, box, box)
    assert info.value.module is module


# --------------------------------------------------------------------------- refusals, by message and module


def test_every_interval_rule_refusal_names_the_layer_and_carries_the_module():
    box = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    _refuses(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
             "interval rule for Conv2d: padding_mode 'reflect' (only 'zeros')", box)
    _refuses(nn.BatchNorm2d(2), "interval rule for BatchNorm2d: only eval mode with running statistics "
             "(training mode mixes the batch)", box)
    _refuses(nn.BatchNorm2d(2, track_running_stats=False).eval(),
             "interval rule for BatchNorm2d: only eval mode with running statistics "
             "(training mode mixes the batch)", box)
    _refuses(nn.MaxPool2d(2, return_indices=True), "interval rule for MaxPool2d: return_indices=True", box)
    flat = torch.zeros(1, 4, dtype=torch.float64)
    bad = nn.Hardtanh(-1.0, 1.0)
    bad.min_val, bad.max_val = 1.0, -1.0
    _refuses(bad, "interval rule for Hardtanh: min_val > max_val", flat)
    _refuses(nn.Dropout(0.5), "interval rule for Dropout: training mode is random", flat)
    _refuses(nn.LeakyReLU(-0.5), "interval propagation needs a monotone LeakyReLU (negative_slope >= 0)",
             flat)
    _refuses(nn.ELU(-0.5), "interval propagation needs ELU with alpha >= 0", flat)
    dist = lipkit.LinfDistLinear(4, 2)  # training mode, mean shift on
    _refuses(dist, "interval rule for LinfDistLinear: training mode with mean shift mixes the batch", flat)
    dist = lipkit.LinfDistLinear(4, 2).eval()
    dist.p = 8.0
    _refuses(dist, "interval rule for LinfDistLinear: only p = inf (got p = 8.0)", flat)


def test_boundary_parameters_are_accepted_and_exact():
    """The refusals are strict: slope 0, alpha 0 and min_val == max_val are monotone and bounded."""
    x = torch.tensor([[-2.0, -0.5, 0.0, 3.0]], dtype=torch.float64)
    lo, hi = interval_forward(nn.LeakyReLU(0.0), x, x + 1)
    assert _contains(lo, hi, [Fraction(0), Fraction(0), Fraction(1), Fraction(4)])
    assert float((hi - lo).max()) <= 1 + 1e-12  # the widening is a few ulps, not more
    lo, hi = interval_forward(nn.ELU(0.0), x, x)
    assert _contains(lo, hi, [Fraction(0), Fraction(0), Fraction(0), Fraction(3)])
    flat = nn.Hardtanh(-1.0, 1.0)
    flat.min_val = flat.max_val = 0.25
    lo, hi = interval_forward(flat, x, x + 1)
    assert torch.equal(lo, torch.full_like(x, 0.25)) and torch.equal(hi, torch.full_like(x, 0.25))
    train_free = lipkit.LinfDistLinear(4, 2, mean_shift=False)  # training mode without mean shift: fine
    lo, hi = interval_forward(train_free, x, x)
    assert lo.shape == (1, 2) and bool((lo <= hi).all())


# --------------------------------------------------------------------------- affine layers, exactly


def _affine_exact(w: np.ndarray, b: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    y = w.dot(x)
    return y + b if b is not None else y


@pytest.mark.parametrize("bias", [True, False])
def test_linear_point_box_with_a_large_bias_contains_the_exact_value(bias):
    """A bias of 1e6 against products of order 1: the float64 sum rounds on the bias's scale, which only the
    ``|b|`` part of the error term covers."""
    torch.manual_seed(4)
    lin = nn.Linear(6, 5, bias=bias).double()
    with torch.no_grad():
        if bias:
            lin.bias.copy_(torch.tensor([1e6, -3e6, 7e5, 1e6 / 3, -2e6 / 7], dtype=torch.float64))
    x = torch.randn(4, 6, dtype=torch.float64) / 3
    lo, hi = interval_forward(lin, x, x)
    w, b = _frac(lin.weight), (_frac(lin.bias) if bias else None)
    exact = np.stack([_affine_exact(w, b, _frac(x[s])) for s in range(4)])
    assert _contains(lo, hi, exact)
    acc = nn.functional.linear(x.abs(), lin.weight.abs(), lin.bias.abs() if bias else None)
    # the documented widening 2 (n + 2) EPS64 (|W||x| + |b|) on each side, at least
    assert _wider_than(lo, hi, 4 * 8 * EPS * acc)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_point_box_with_one_output_channel_and_a_large_bias_is_exact(bias):
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 1, 3, padding=1, bias=bias).double()
    with torch.no_grad():
        if bias:
            conv.bias.fill_(1e6 / 3)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    lo, hi = interval_forward(conv, x, x)
    basis = torch.eye(32, dtype=torch.float64).reshape(32, 2, 4, 4)
    with torch.no_grad():
        mat = conv._conv_forward(basis, conv.weight, None).reshape(32, -1).T  # one product each: exact
    b = _frac(conv.bias.expand(16)) if bias else None
    exact = _affine_exact(_frac(mat), b, _frac(x.reshape(-1)))
    assert _contains(lo, hi, exact)
    with torch.no_grad():
        acc = conv._conv_forward(x.abs(), conv.weight.abs(), conv.bias.abs() if bias else None)
    assert _wider_than(lo, hi, 4 * 20 * EPS * acc)  # fan 18: 2 (18 + 2) EPS64 per side


def test_affine_error_term_grows_with_the_box_radius():
    """``|W| r`` enters the error term (on each side ``2 (n + 2) EPS64 (|W||c| + |W| r + |b|)``), so a box
    far wider than its centre is widened on the scale of the radius, not less."""
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]], dtype=torch.float64))
        lin.bias.zero_()
    c = torch.full((1, 3), 1e-3, dtype=torch.float64)
    r = torch.full((1, 3), 1e3, dtype=torch.float64)
    lo, hi = interval_forward(lin, c - r, c + r)
    wa = lin.weight.abs()
    mid = nn.functional.linear(c, lin.weight, None)
    rad = nn.functional.linear(r, wa, None)
    err = 2 * 5 * EPS * (nn.functional.linear(c.abs(), wa, None) + rad)
    assert bool((hi >= mid + rad + err * (1 - 1e-9)).all() and (lo <= mid - rad - err * (1 - 1e-9)).all())
    assert bool((hi - lo <= 2 * (rad + 2 * err)).all())


def test_underflowing_products_are_covered_by_the_absolute_term():
    """Products of 1e-170 and 1e-170 underflow to 0 in float64; the exact value 1e-340 is nonzero, so only the
    absolute term (1e-300) puts it inside the box."""
    lin = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(1e-170)
    x = torch.full((1, 2), 1e-170, dtype=torch.float64)
    lo, hi = interval_forward(lin, x, x)
    exact = 2 * Fraction(1e-170) * Fraction(1e-170)
    assert _contains(lo, hi, [exact])
    conv = nn.Conv1d(1, 1, 2, bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1e-170)
    lo, hi = interval_forward(conv, x[:, None], x[:, None])
    assert _contains(lo, hi, [exact])


def test_avg_pool_with_one_channel_contains_the_exact_mean():
    y = torch.tensor([[[[0.1, 0.7, 1e8 / 3], [0.3, -0.2, 5.0], [1 / 3, 2.0, -1e-3]]]], dtype=torch.float64)
    lo, hi = interval_forward(nn.AvgPool2d(2, stride=1), y, y)
    f = _frac(y[0, 0])
    exact = [[sum(f[i + a, j + b] for a in range(2) for b in range(2)) / 4 for j in range(2)]
             for i in range(2)]
    assert _contains(lo, hi, exact)
    lo, hi = interval_forward(nn.AdaptiveAvgPool2d(1), y, y)
    assert _contains(lo, hi, [sum(f.reshape(-1)) / 9])


# ------------------------------------------------------------------ batch norm, in 60-digit arithmetic


def _bn(affine: bool, dims: int) -> nn.Module:
    torch.manual_seed(6)
    bn = (nn.BatchNorm1d(3, affine=affine) if dims == 1 else nn.BatchNorm2d(3, affine=affine)).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1e4 / 3, -2.5, 0.7], dtype=torch.float64))
        bn.running_var.copy_(torch.tensor([0.3, 4.0, 1e-2], dtype=torch.float64))
        if affine:
            bn.weight.copy_(torch.tensor([-3.0, 0.25, 7.0], dtype=torch.float64))
            bn.bias.copy_(torch.tensor([1e3 / 7, -0.6, 2.0], dtype=torch.float64))
    return bn.eval()


def _bn_exact(bn: nn.Module, x: torch.Tensor) -> list:
    """60-digit ``(x - mean) / sqrt(var + eps) * weight + bias`` on the module's float64 parameters."""
    out = []
    xs = x.detach().double()
    for idx in np.ndindex(*xs.shape):
        c = idx[1]
        v = (mpmath.mpf(float(xs[idx])) - mpmath.mpf(float(bn.running_mean[c]))) / mpmath.sqrt(
            mpmath.mpf(float(bn.running_var[c])) + mpmath.mpf(bn.eps))
        if bn.affine:
            v = v * mpmath.mpf(float(bn.weight.detach()[c])) + mpmath.mpf(float(bn.bias.detach()[c]))
        out.append(v)
    return out


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dims", [1, 2])
def test_batch_norm_boxes_contain_the_exact_image_of_every_corner(affine, dims):
    bn = _bn(affine, dims)
    torch.manual_seed(7)
    shape = (2, 3) if dims == 1 else (2, 3, 2, 2)
    centre = torch.randn(*shape, dtype=torch.float64) + bn.running_mean.reshape(1, 3, *[1] * (2 * dims - 2))
    rad = torch.rand(*shape, dtype=torch.float64)
    lo, hi = interval_forward(bn, centre - rad, centre + rad)
    # the map is affine per coordinate: its extremes over the box are at the two ends
    ends = [_bn_exact(bn, centre - rad), _bn_exact(bn, centre + rad)]
    exact_lo = [min(a, b) for a, b in zip(*ends, strict=True)]
    exact_hi = [max(a, b) for a, b in zip(*ends, strict=True)]
    assert _contains(lo, hi, exact_lo) and _contains(lo, hi, exact_hi)
    # and not loose: within the documented rounding of the exact extremes
    flo, fhi = lo.reshape(-1).tolist(), hi.reshape(-1).tolist()
    for a, b, el, eh in zip(flo, fhi, exact_lo, exact_hi, strict=True):
        assert mpmath.mpf(a) >= el - 1e-9 * (1 + abs(el)) and mpmath.mpf(b) <= eh + 1e-9 * (1 + abs(eh))


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_point_box_covers_the_cancellation_of_a_large_mean(affine):
    """x close to a running mean of 3333.3: ``x - mean`` cancels, and the error term must carry
    ``|mean| |s|`` (and ``|bias|``) for the exact value to stay inside."""
    bn = _bn(affine, 1)
    x = bn.running_mean.reshape(1, 3).clone() + torch.tensor([[1e-9, 1e-7, -1e-8]], dtype=torch.float64)
    x = torch.cat([x, x + 1 / 3])
    lo, hi = interval_forward(bn, x, x)
    assert _contains(lo, hi, _bn_exact(bn, x))
    s = (bn.running_var + bn.eps).rsqrt() * (bn.weight if affine else 1.0)
    extra = bn.running_mean.abs() * s.abs() + (bn.bias.abs() if affine else 0.0)
    acc = x.abs() * s.abs() + extra
    # documented: fan 4, 2 (4 + 2) EPS64 (|s||x| + |mean||s| + |b|) on each side
    assert _wider_than(lo, hi, 4 * 6 * EPS * acc)


# --------------------------------------------------------------------------- monotone activations


def _mp_apply(name: str, v: float, param: float = 1.0):
    x = mpmath.mpf(v)
    if name == "tanh":
        return mpmath.tanh(x)
    if name == "sigmoid":
        return 1 / (1 + mpmath.exp(-x))
    if name == "leaky":
        return x if x >= 0 else param * x
    if name == "elu":
        return x if x > 0 else param * mpmath.expm1(x)
    if name == "softplus":  # lipkit.SmoothSoftplus(beta): log(1 + e^{beta x}) / beta
        return mpmath.log1p(mpmath.exp(param * x)) / param
    raise AssertionError(name)


_MONO = [("tanh", nn.Tanh(), 1.0, 1.0), ("sigmoid", nn.Sigmoid(), 1.0, 1.0),
         ("leaky", nn.LeakyReLU(0.3), 0.3, 1.0), ("elu", nn.ELU(1e6), 1e6, 1.0 + 1e6),
         ("elu", nn.ELU(0.5), 0.5, 1.5), ("softplus", lipkit.SmoothSoftplus(4.0), 4.0, 0.25),
         ("softplus", lipkit.SmoothSoftplus(0.01), 0.01, 100.0),
         # a scale of 1e-290: the relative term is subnormal there, the absolute 1e-300 keeps the box
         ("softplus", lipkit.SmoothSoftplus(1e290), 1e290, 1e-290)]


@pytest.mark.parametrize("name,module,param,scale", _MONO,
                         ids=[f"{n}-{p:g}" for n, _, p, _ in _MONO])
def test_monotone_point_boxes_contain_the_exact_value_with_the_documented_widening(name, module, param,
                                                                                   scale):
    x = torch.tensor([[-30.0, -1.0, -1e-9, 0.0, 1e-12, 0.7, 2.5, 40.0]], dtype=torch.float64)
    lo, hi = interval_forward(module, x, x)
    exact = [_mp_apply(name, v, param) for v in x.reshape(-1).tolist()]
    assert _contains(lo, hi, exact)
    with torch.no_grad():
        y = module(x)
    # 8 EPS64 (|phi(x)| + scale) on each side: the scale is the rule's (1 + alpha for ELU, 1 / beta for the
    # smooth softplus), so a rule that forgets it fails here
    assert _wider_than(lo, hi, 16 * EPS * (y.abs() + scale))
    assert bool(((hi - lo) <= 16 * EPS * (y.abs() + scale) + 4 * EPS * torch.maximum(lo.abs(), hi.abs())
                  + 1e-290).all())


def test_elu_with_a_large_alpha_is_sound_where_the_value_is_large():
    elu = nn.ELU(1e6)
    x = torch.tensor([[-1.0, -3.0, -1e-3, -20.0]], dtype=torch.float64)
    lo, hi = interval_forward(elu, x, x + 0.5)
    exact_lo = [_mp_apply("elu", v, 1e6) for v in x.reshape(-1).tolist()]
    exact_hi = [_mp_apply("elu", v + 0.5, 1e6) for v in x.reshape(-1).tolist()]
    assert _contains(lo, hi, exact_lo) and _contains(lo, hi, exact_hi)


# --------------------------------------------------------------------------- lipkit's distance layers


def test_float32_sortnet_layer_box_is_computed_in_float64_and_exact():
    """The rule reads a float32 layer's weights and coefficients exactly (cast to float64)."""
    torch.manual_seed(8)
    m = lipkit.SortNeuronLinear(5, 3, q=0.3, init="normal").eval()
    assert m.coefficients.dtype == torch.float32 or m.weight.dtype == torch.float32
    x = torch.rand(2, 5, dtype=torch.float64) * 2 + 1 / 3
    lo, hi = interval_forward(m, x, x)
    assert lo.dtype == torch.float64
    w, coef = _frac(m._weight2d()), [Fraction(float(c)) for c in m.coefficients]
    assert w.shape == (3, 5) and len(coef) >= 1
    assert _contains(lo, hi, _distance_exact(m, x))


def _distance_exact(m: nn.Module, rows: torch.Tensor) -> np.ndarray:
    """Exact ``sum_k c_k d_(k) - mu + b`` (``c = (1,)`` for an l_inf-distance layer) of every row."""
    w = _frac(m._weight2d())
    coef = [Fraction(float(c)) for c in m.coefficients] if hasattr(m, "coefficients") else [Fraction(1)]
    mu = _frac(m.running_mean) if m.running_mean is not None else None
    b = _frac(m.bias) if m.bias is not None else None
    rf = _frac(rows)
    out = np.empty((rows.shape[0], w.shape[0]), dtype=object)
    for r in range(rows.shape[0]):
        for o in range(w.shape[0]):
            d = sorted((abs(rf[r, i] - w[o, i]) for i in range(w.shape[1])), reverse=True)
            v = sum(c * di for c, di in zip(coef, d, strict=False))
            out[r, o] = v - (mu[o] if mu is not None else 0) + (b[o] if b is not None else 0)
    return out


@pytest.mark.parametrize("kind", ["linf", "sortnet"])
def test_distance_box_error_term_carries_the_largest_distance_and_the_bias(kind):
    """One coordinate 1e6 away from its weight, the others within 1: the sum rounds on the scale of the
    largest distance D, and the shift by a bias of 1e6 / 3 on the bias's scale; the error term
    ``2 (K + 3) EPS64 (D + |b|)`` must carry both."""
    torch.manual_seed(9)
    m = (lipkit.LinfDistLinear(5, 3, mean_shift=False) if kind == "linf"
         else lipkit.SortNeuronLinear(5, 3, q=0.3, init="normal", mean_shift=False)).double().eval()
    with torch.no_grad():
        m.bias.copy_(torch.tensor([1e6 / 3, -1e6 / 7, 0.1], dtype=torch.float64))
    x = torch.rand(3, 5, dtype=torch.float64) / 3
    x[:, 2] = 1e6 / 9
    lo, hi = interval_forward(m, x, x)
    assert _contains(lo, hi, _distance_exact(m, x))
    k = len(m.coefficients) if kind == "sortnet" else 1
    d_max = (x[:, None, :] - m._weight2d()[None]).abs().amax(dim=-1)
    assert _wider_than(lo, hi, 4 * (k + 3) * EPS * (d_max + m.bias.abs()))


def test_distance_box_of_tiny_values_keeps_the_absolute_term():
    """Distances of 1e-300 make the relative term subnormal: the absolute 1e-300 keeps the box around the
    exact value (and its ends in order)."""
    m = lipkit.LinfDistLinear(3, 2, mean_shift=False).double().eval()
    with torch.no_grad():
        m.weight.zero_()
        m.bias.zero_()
    x = torch.tensor([[1e-300, -3e-300, 2e-300]], dtype=torch.float64)
    lo, hi = interval_forward(m, x, x)
    assert bool((lo <= hi).all()) and _contains(lo, hi, _distance_exact(m, x))


def test_distance_box_in_blocks_covers_every_row(monkeypatch):
    """With a working-memory budget of one row per block, a batch longer than the layer's input width is
    still boxed row by row, each row exactly as alone."""
    torch.manual_seed(10)
    m = lipkit.SortNeuronLinear(3, 2, q=0.5, init="normal").double().eval()
    x = torch.rand(7, 3, dtype=torch.float64)
    whole = interval_forward(m, x - 0.1, x + 0.1)
    monkeypatch.setattr(intervals, "_BLOCK_BYTES", 8 * 2 * 3)
    lo, hi = interval_forward(m, x - 0.1, x + 0.1)
    assert lo.shape == (7, 2) and torch.equal(lo, whole[0]) and torch.equal(hi, whole[1])
    pts = x[:, None, :] + 0.1 * (2 * torch.rand(7, 200, 3, dtype=torch.float64) - 1)
    with torch.no_grad():
        out = m(pts.reshape(-1, 3)).reshape(7, 200, 2)
    assert bool((out >= lo[:, None]).all() and (out <= hi[:, None]).all())


def test_distance_boxes_keep_leading_dimensions_and_non_square_maps():
    torch.manual_seed(11)
    m = lipkit.LinfDistLinear(4, 3).double().eval()
    x = torch.rand(2, 5, 4, dtype=torch.float64)  # (batch, positions, features)
    lo, hi = interval_forward(m, x, x)
    assert lo.shape == (2, 5, 3)
    assert _contains(lo, hi, _distance_exact(m, x.reshape(-1, 4)).reshape(2, 5, 3))
    conv = lipkit.LinfDistConv2d(1, 2, 3, padding=1).double().eval()
    img = torch.rand(1, 1, 3, 5, dtype=torch.float64)
    lo, hi = interval_forward(conv, img, img)
    assert lo.shape == (1, 2, 3, 5)
    exact = _distance_exact(conv, conv._patch_rows(img, 3, 5))  # (15, 2): rows are positions
    assert _contains(lo, hi, exact.T.reshape(1, 2, 3, 5))


def test_float32_boxes_are_cast_to_float64_before_the_rule():
    """interval_forward takes float32 boxes (the deployed inputs) and bounds the exact map of them."""
    torch.manual_seed(12)
    lin = nn.Linear(4, 3).double()
    lo32 = torch.rand(2, 4) / 3
    hi32 = lo32 + 0.25
    lo, hi = interval_forward(lin, lo32, hi32)
    assert lo.dtype == torch.float64 and hi.dtype == torch.float64
    w, b = _frac(lin.weight), _frac(lin.bias)
    for s in range(2):
        c = (_frac(lo32[s]) + _frac(hi32[s])) / 2
        r = (_frac(hi32[s]) - _frac(lo32[s])) / 2
        mid, rad = _affine_exact(w, b, c), np.abs(w).dot(r)
        exact_lo, exact_hi = mid - rad, mid + rad  # the exact image of the box, coordinate-wise
        assert _contains(lo[s], hi[s], exact_lo) and _contains(lo[s], hi[s], exact_hi)
        for o in range(3):  # and not wider than it by more than the documented rounding
            assert Fraction(float(lo[s, o])) >= exact_lo[o] - Fraction(1, 10**12)
            assert Fraction(float(hi[s, o])) <= exact_hi[o] + Fraction(1, 10**12)


# --------------------------------------------------------------------------- interval certificates


def _mean_model(n: int = 16) -> nn.Sequential:
    """logit 0 = mean(x), logit 1 = 0: the l_inf ball of radius eps moves logit 0 by exactly eps, the l2 ball
    by eps / sqrt(n), so an l2 radius is not an l_inf radius here."""
    lin = nn.Linear(n, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0].fill_(1.0 / n)
        lin.bias.zero_()
    return nn.Sequential(lin).eval()


def test_interval_certificates_use_the_l_inf_margin_radius_not_the_l2_one():
    from lipkit.certify.interval import interval_certified, interval_certified_accuracy
    from lipkit.certify.margin import compute_certificates

    model = _mean_model()
    x = torch.full((3, 16), 0.1)
    x[1] = 0.3
    r_inf = compute_certificates(model, x, math.inf).radius
    r_2 = compute_certificates(model, x, 2).radius
    assert float(r_inf[0]) < 0.1 and float(r_2[0]) > 0.3  # the l2 radius would certify eps = 0.2
    cert, pred = interval_certified(model, x, 0.2)
    assert cert.tolist() == [False, True, False] and pred.tolist() == [0, 0, 0]
    cert, _ = interval_certified(model, x, 0.05)
    assert cert.tolist() == [True, True, True]
    y = torch.zeros(3, dtype=torch.long)
    assert interval_certified_accuracy(model, x, y, 0.2) == pytest.approx(1 / 3, abs=0)
    assert interval_certified_accuracy(model, x, y, 0.05) == 1.0
    y1 = torch.tensor([1, 0, 1])  # only the point that is certified is correct
    assert interval_certified_accuracy(model, x, y1, 0.2) == pytest.approx(1 / 3, abs=0)
    assert interval_certified_accuracy(model, x, torch.ones(3, dtype=torch.long), 0.05) == 0.0
    y2 = torch.tensor([0, 1, 1])  # exactly one correct point, and it is not certified at 0.2
    assert interval_certified_accuracy(model, x, y2, 0.2) == 0.0
    assert interval_certified_accuracy(model, x, y2, 0.05) == pytest.approx(1 / 3, abs=0)


def test_interval_bounds_of_a_cancelling_linear_layer_contain_the_exact_logits():
    """Products of 1e8 that cancel: the float64 reference ``W x`` is off by ~1e-9, far beyond the 1e-12
    padding, so only the interval rule's own error term keeps the exact value inside; a Lipschitz
    intersection around the float64 value would cut it off (it is only applied after distance layers,
    whose reference error is bounded)."""
    from lipkit.certify.interval import interval_bounds

    lin = nn.Linear(2, 2).double()  # float64 weights and inputs: the products round in float64
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1e8 / 3, -1e8 / 3 + 8.0 / 7], [3.0, 1.0]], dtype=torch.float64))
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(2, 2).double()).eval()
    x = torch.tensor([[1 / 3 + 1e-7, 1 / 3], [0.7, 0.1]], dtype=torch.float64)  # positive after cancelling
    lo, hi = interval_bounds(model, x, 0.0)
    w1, w2, b2 = _frac(lin.weight), _frac(model[2].weight), _frac(model[2].bias)
    for s in range(2):
        h = [max(v, Fraction(0)) for v in _affine_exact(w1, None, _frac(x[s]))]
        exact = _affine_exact(w2, b2, np.array(h, dtype=object))
        assert _contains(lo[s], hi[s], exact)


def test_interval_input_box_is_padded_for_the_rounding_of_x_plus_eps():
    """``x -/+ eps`` rounds in float64: the input box is padded by ``1e-12 (1 + |x| + eps)`` (the
    documented slack), which holds the exact ends."""
    from lipkit.certify.interval import interval_bounds

    x = torch.tensor([[1e6 / 3, -2.5, 0.1]])
    for eps in (1e-3 / 3, 0.5):
        lo, hi = interval_bounds(nn.Sequential(nn.Identity()), x, eps)
        for i in range(3):
            xe = F_(x[0, i])
            assert Fraction(float(lo[0, i])) <= xe - F_(eps) and Fraction(float(hi[0, i])) >= xe + F_(eps)
            pad = 1e-12 * (1 + abs(float(x[0, i])) + eps)
            assert float(hi[0, i]) - (float(x[0, i]) + eps) >= 0.99 * pad
            assert (float(x[0, i]) - eps) - float(lo[0, i]) >= 0.99 * pad
    lo, hi = interval_bounds(nn.Sequential(nn.Identity()), torch.zeros(1, 3), 0.5, input_domain=(0.0, 1.0))
    assert torch.equal(lo, torch.zeros(1, 3, dtype=torch.float64))  # clipped to the domain
    assert bool((hi >= 0.5).all())


def F_(v) -> Fraction:
    return Fraction(float(v))


def test_interval_certified_checks_its_arguments_by_name():
    from lipkit.certify.interval import interval_certified, interval_certified_accuracy
    from lipkit.certify.margin import compute_certificates

    model = _mean_model(4)
    x = torch.rand(3, 4)
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got str$"):
        interval_certified("net", x, 0.1)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError,
                           match=rf"^batch_size must be a positive int, got {re.escape(repr(bad))}$"):
            interval_certified(model, x, 0.1, batch_size=bad)
    assert interval_certified(model, x, 0.1, batch_size=1)[0].shape == (3,)
    msg = (r"^certificates must be the l_inf CertificateResult of this batch "
           r"\(compute_certificates\(model, x, 'inf'\)\)$")
    for wrong in (compute_certificates(model, x, 2), compute_certificates(model, x[:2], math.inf), "cert"):
        with pytest.raises(ValueError, match=msg):
            interval_certified(model, x, 0.1, certificates=wrong)
    good = compute_certificates(model, x, math.inf)
    a, pa = interval_certified(model, x, 0.3, certificates=good)
    b, pb = interval_certified(model, x, 0.3)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    for y in (torch.zeros(3), torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, dtype=torch.bool),
              [0, 0, 0]):
        with pytest.raises(ValueError, match=r"^y must be a 1-D integer tensor of class labels$"):
            interval_certified_accuracy(model, x, y, 0.1)
    with pytest.raises(ValueError, match=r"^y has 2 labels for a batch of 3 inputs$"):
        interval_certified_accuracy(model, x, torch.zeros(2, dtype=torch.long), 0.1)


def test_interval_union_runs_every_remaining_input_in_batches():
    """The interval test runs on every input the margin does not certify, batch by batch; the union equals
    margin-or-interval computed input by input."""
    from lipkit.certify.interval import interval_certified, interval_only
    from lipkit.certify.margin import compute_certificates

    # logit 0 = relu(x_1) + relu(x_2 - 10), logit 1 = 0: the dead second neuron halves the margin
    # certificate's radius (its Lipschitz bound counts both), the interval rules see it is dead
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.eye(2))
        first.bias.copy_(torch.tensor([0.0, -10.0]))
        second.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        second.bias.zero_()
    model = nn.Sequential(first, nn.ReLU(), second).eval()
    x = torch.stack([torch.linspace(0.05, 0.5, 9), torch.full((9,), 0.5)], dim=1)
    radius = compute_certificates(model, x, math.inf).radius
    eps = 0.2
    expected = []
    for b in range(9):
        ok, _ = interval_only(model, x[b:b + 1], eps, None)
        expected.append(bool(radius[b] >= eps) or bool(ok[0]))
    assert sum(expected) > int((radius >= eps).sum())  # the interval test certifies some of the rest
    for bs in (1, 2, 4, 256):
        cert, _ = interval_certified(model, x, eps, batch_size=bs)
        assert cert.tolist() == expected, bs
    cert, _ = interval_certified(model, x, 0.0)
    assert bool(cert.all())  # every radius is >= 0


def test_interval_test_hands_the_documented_quantities_to_the_allowance(monkeypatch):
    """The allowance is computed from the a-priori bound over the whole ball of radius eps (float64, exactly
    eps), the logit scale ``max |f(x)| + eps L_inf`` and the round-off observed at x."""
    import lipkit.certify.interval as ci
    from lipkit.certify.roundoff import chain_of, forward_error_bound
    from lipkit.certify.twin import float64_copy, run_logits

    torch.manual_seed(14)
    model = nn.Sequential(lipkit.LinfDistLinear(4, 6), nn.Linear(6, 3)).eval()
    x = torch.rand(2, 4)
    eps = 0.1  # not a float32 number: an eps rounded to float32 would be a different ball
    seen = []
    real = ci.margin_allowance

    def spy(bound, scale, observed):
        seen.append((bound.clone(), scale.clone(), observed.clone()))
        return real(bound, scale, observed)

    monkeypatch.setattr(ci, "margin_allowance", spy)
    ci.interval_only(model, x, eps, None)
    (bound, scale, observed), = seen
    twin = float64_copy(model)
    chain = chain_of(twin)
    x64 = x.double()
    with torch.no_grad():
        logits64 = run_logits(twin, x64)
        logits32 = model(x)
    r = torch.full((2,), eps, dtype=torch.float64)
    assert torch.equal(bound, forward_error_bound(chain, x64, math.inf, r, None))
    assert torch.equal(scale, logits64.abs().max(dim=1).values + eps * lipschitz_bound_inf(model))
    assert torch.equal(observed, (logits32.double() - logits64).abs().max(dim=1).values)


def lipschitz_bound_inf(model: nn.Module) -> float:
    from lipkit.bounds import lipschitz_bound
    from lipkit.certify.roundoff import chain_of
    from lipkit.certify.twin import float64_copy

    return lipschitz_bound(nn.Sequential(*chain_of(float64_copy(model))), math.inf)


def test_interval_test_refuses_without_a_rigorous_round_off_bound(monkeypatch):
    import lipkit.certify.interval as ci

    model = _mean_model(4)
    x = torch.rand(2, 4)
    monkeypatch.setattr(ci, "forward_error_bound", lambda *a, **k: None)
    with pytest.raises(UnsupportedModuleError,
                       match=r"^no a-priori round-off bound for this model; interval certificates need one$"):
        ci.interval_only(model, x, 0.1, None)
    monkeypatch.undo()
    monkeypatch.setattr(ci, "margin_allowance", lambda b, s, o: (torch.zeros_like(s), False))
    msg = (r"^the round-off observed at x exceeds the a-priori bound \(arithmetic outside the analysis\?\); "
           r"interval certificates need a rigorous bound$")
    with pytest.raises(UnsupportedModuleError, match=msg):
        ci.interval_only(model, x, 0.1, None)


def test_interval_test_is_strict_at_the_allowance(monkeypatch):
    """Certified means ``low_c - max_j high_j > allowance``: equality is not enough."""
    import lipkit.certify.interval as ci

    model = _mean_model(4)
    x = torch.full((1, 4), 0.25)
    lo, hi = ci.interval_bounds(model, x, 0.1)
    gap = lo[:, 0] - hi[:, 1]
    assert float(gap) > 0
    monkeypatch.setattr(ci, "margin_allowance", lambda b, s, o: (gap.clone(), True))
    ok, pred = ci.interval_only(model, x, 0.1, None)
    assert pred.tolist() == [0] and ok.tolist() == [False]
    monkeypatch.setattr(ci, "margin_allowance", lambda b, s, o: (gap * (1 - 1e-9), True))
    assert ci.interval_only(model, x, 0.1, None)[0].tolist() == [True]


def _cancelling(kind: str, n_out: int = 3) -> nn.Sequential:
    """A float64 distance layer whose weights sit 1e5 away from the inputs and whose running mean cancels
    the distance: its float64 output rounds on the scale of 1e5 while being of order 1, so only the bounded
    reference error (not the 1e-12 padding) covers the Lipschitz intersection around it."""
    torch.manual_seed(15)
    m = (lipkit.LinfDistLinear(4, n_out) if kind == "linf"
         else lipkit.SortNeuronLinear(4, n_out, q=0.4, init="normal")).double()
    with torch.no_grad():
        m.weight.copy_(1e5 / 3 + torch.rand_like(m.weight) / 7)
        m.bias.copy_(torch.rand_like(m.bias) / 3)
    x = torch.rand(6, 4, dtype=torch.float64) / 3
    m.eval()
    with torch.no_grad():
        m.running_mean.zero_()
        m.running_mean.copy_((m(x) - m.bias).mean(0) + 1 / 7)  # y = d - mu + b is of order 1
    return nn.Sequential(m).eval()


@pytest.mark.parametrize("kind", ["linf", "sortnet"])
@pytest.mark.parametrize("n_out", [3, 1])
def test_lipschitz_intersection_keeps_the_exact_outputs_of_a_cancelling_distance_layer(kind, n_out):
    from lipkit.certify.interval import interval_bounds

    model = _cancelling(kind, n_out)
    x = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) / 3
    lo, hi = interval_bounds(model, x, 0.0)
    exact = _distance_exact(model[0], x)
    assert _contains(lo, hi, exact)
    with torch.no_grad():
        y = model(x)
    assert float((y.abs()).max()) < 10.0  # cancelled: outputs of order 1 from distances of 1e5
    # the box is the Lipschitz intersection h +- (reference error + 1e-12 (1 + |h|)), narrower than the
    # interval rule's own 2 (K + 3) EPS64 (D + |mu| + |b|)
    from lipkit.certify.interval import reference_error

    ref = reference_error(model[0], y) * (1 + 1e-9)
    assert bool(((hi - lo) <= 2 * (ref[:, None] + 1e-12 * (1 + y.abs())) * (1 + 1e-6)).all())


def test_boxes_at_zero_radius_of_large_outputs_contain_the_exact_outputs():
    from lipkit.certify.interval import interval_bounds

    torch.manual_seed(16)
    m = lipkit.SortNeuronLinear(4, 3, q=0.4, init="normal", mean_shift=False).double()
    with torch.no_grad():
        m.weight.copy_(1e3 / 3 + torch.rand_like(m.weight) / 7)
        m.bias.copy_(torch.rand_like(m.bias) * 1e3)
    model = nn.Sequential(m, lipkit.Negate()).eval()
    x = torch.rand(5, 4, dtype=torch.float64) / 3
    lo, hi = interval_bounds(model, x, 0.0)
    assert _contains(lo, hi, -_distance_exact(m, x))
    assert bool((lo <= hi).all())


def test_lipschitz_intersection_is_sound_for_radii_above_one():
    from lipkit.certify.interval import interval_bounds

    torch.manual_seed(17)
    model = nn.Sequential(lipkit.LinfDistLinear(3, 4), lipkit.LinfDistLinear(4, 2, mean_shift=False)).eval()
    with torch.no_grad():
        model[0].running_mean.uniform_(0.5, 1.5)
    x = torch.rand(3, 3)
    eps = 2.0
    lo, hi = interval_bounds(model, x, eps)
    g = torch.Generator().manual_seed(1)
    pts = x.double()[:, None, :] + eps * (2 * torch.rand(3, 4000, 3, generator=g, dtype=torch.float64) - 1)
    corners = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)],
                           dtype=torch.float64)
    pts = torch.cat([pts, x.double()[:, None, :] + eps * corners[None]], dim=1)
    twin = nn.Sequential(*[copy_double(m) for m in model]).eval()
    with torch.no_grad():
        out = twin(pts.reshape(-1, 3)).reshape(3, -1, 2)
    assert bool((out >= lo[:, None]).all() and (out <= hi[:, None]).all())
    assert float((out.amax(1) - out.amin(1)).max()) > 2.0  # the outputs really spread beyond +-1


def copy_double(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).double()


def test_interval_chain_refusals_name_the_model_and_the_layer():
    from lipkit.certify.interval import interval_bounds

    class Own(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    x = torch.rand(1, 4)
    msg = (r"^interval certificates need an nn.Sequential chain of layers \(nested Sequentials are fine\); "
           r"got Own with its own forward$")
    with pytest.raises(ValueError, match=msg):
        interval_bounds(Own(nn.Linear(4, 2)), x, 0.1)
    msg = (r"^interval certificates do not support AvgPool1d \(supported: LinfDistLinear and LinfDistConv2d "
           r"at p=inf, SortNeuronLinear, SortNeuronConv2d, Negate, Linear, Flatten, Unflatten and monotone "
           r"element-wise activations\)$")
    with pytest.raises(UnsupportedModuleError, match=msg):
        interval_bounds(nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (1, 4)), nn.AvgPool1d(2)), x, 0.1)


def test_reference_error_is_the_a_priori_float64_error_of_the_layer():
    """reference_error is the layer's own a-priori analysis (SortNet: sortnet_error, l_inf-distance:
    linf_distance_error) at the point, with the float64 unit round-off 2^-53."""
    from lipkit.certify.interval import reference_error
    from lipkit.certify.roundoff import U64, linf_distance_error, sortnet_error

    for kind, fn in (("linf", linf_distance_error), ("sortnet", sortnet_error)):
        for n_out in (3, 1):
            m = _cancelling(kind, n_out)[0]
            x = torch.rand(4, 4, dtype=torch.float64) / 3
            with torch.no_grad():
                out = m(x)
            got = reference_error(m, out)
            assert torch.equal(got, fn(m, out, torch.zeros(4, dtype=torch.float64), math.inf, u=U64))
            assert got.shape == (4,)
    sort = _cancelling("sortnet", 3)[0]
    with torch.no_grad():
        out = sort(torch.rand(2, 4, dtype=torch.float64))
    assert bool((reference_error(sort, out) > linf_distance_error(sort, out, torch.zeros(2), math.inf,
                                                                 u=U64)).all())


def test_interval_radius_and_domain_are_checked_by_name():
    from lipkit.certify.interval import interval_bounds

    model = _mean_model(4)
    x = torch.full((1, 4), 0.5)
    with pytest.raises(ValueError, match=r"^eps must be a number, got 'abc'$"):
        interval_bounds(model, x, "abc")
    with pytest.raises(ValueError, match=r"^eps must be finite and >= 0, got -0.1$"):
        interval_bounds(model, x, -0.1)
    with pytest.raises(ValueError, match=r"^input_domain must have lo < hi, got \(0.5, 0.5\)$"):
        interval_bounds(model, x, 0.1, input_domain=(0.5, 0.5))
    lo, hi = interval_bounds(model, x, 0, input_domain=(0.0, 1.0))  # eps = 0 and x on the domain: fine
    edge = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # inputs on the domain's boundary are inside it
    assert interval_bounds(model, edge, 0.1, input_domain=(0.0, 1.0))[0].shape == (1, 2)
    assert torch.equal(lo, hi) or float((hi - lo).max()) < 1e-9


@pytest.mark.parametrize("module", [nn.Tanh(), nn.Sigmoid(), nn.ELU(0.7)], ids=["tanh", "sigmoid", "elu"])
def test_float32_boxes_through_library_activations_are_evaluated_in_float64(module):
    """A float32 box is cast to float64 before the rule: the activation is evaluated in float64, whose
    few-ulp error the widening covers (a float32 evaluation would be off by ~1e-8)."""
    x32 = torch.tensor([[-1.7, -0.3, 0.2, 0.9, 2.3]]) / 3
    lo, hi = interval_forward(module, x32, x32)
    name = {"Tanh": "tanh", "Sigmoid": "sigmoid", "ELU": "elu"}[type(module).__name__]
    exact = [_mp_apply(name, v, 0.7) for v in x32.double().reshape(-1).tolist()]
    assert lo.dtype == torch.float64 and hi.dtype == torch.float64
    assert _contains(lo, hi, exact)
