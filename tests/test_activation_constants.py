"""The registered Lipschitz constants of scalar activations against their true ``sup |f'|`` (issue 17).

The supremum is computed with mpmath at 50 digits, independently of torch and lipkit: a scan of ``f'`` on a
grid over [-12, 12] locates the maximiser of ``|f'|`` and ``mpmath.findroot`` on ``f''`` refines it (for
smooth ``f``); piecewise ones use the closed form of ``f'`` on each piece, evaluated next to the kinks.
Each constant must satisfy ``true sup <= bound <= true sup * (1 + 1e-3)``, compared exactly (the bound is
a float, converted exactly to an mpf), so a constant that is unsound by any amount, or loose by more than
0.1%, fails.  Outside [-12, 12] every ``|f'|`` here is within 1e-4 of its limit at +-inf (which is also
included), so the scan range does not hide a larger value.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import nn

import lipkit

mp = mpmath.mp
DPS = 50


def _phi(x):
    return mpmath.exp(-x * x / 2) / mpmath.sqrt(2 * mpmath.pi)


def _Phi(x):
    return mpmath.erfc(-x / mpmath.sqrt(2)) / 2


def _sigmoid(x):
    return 1 / (1 + mpmath.exp(-x))


def _gelu_tanh(x):
    c = mpmath.sqrt(2 / mpmath.pi)
    return x / 2 * (1 + mpmath.tanh(c * (x + mpmath.mpf("0.044715") * x**3)))


# f' in closed form where it is short; otherwise mpmath.diff of f at 50 digits.
SMOOTH = {
    "sigmoid": (lambda x: _sigmoid(x) * (1 - _sigmoid(x)), 0, lambda m: nn.Sigmoid()),
    "tanh": (lambda x: 1 - mpmath.tanh(x) ** 2, 1, lambda m: nn.Tanh()),
    "softsign": (lambda x: 1 / (1 + abs(x)) ** 2, None, lambda m: nn.Softsign()),
    "gelu": (lambda x: _Phi(x) + x * _phi(x), 0, lambda m: nn.GELU()),
    "gelu-tanh": (lambda x: mpmath.diff(_gelu_tanh, x), 0, lambda m: nn.GELU(approximate="tanh")),
    "silu": (lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))), 1, lambda m: nn.SiLU()),
}


def _sup_abs(fprime, limits: tuple, kinks: tuple = ()) -> mpmath.mpf:
    """sup |f'| over R: grid scan, then findroot of f'' from the best grid point (kinks excluded)."""
    with mpmath.workdps(DPS):
        grid = [mpmath.mpf(-12) + mpmath.mpf(k) / 50 for k in range(24 * 50 + 1)]
        vals = [abs(fprime(x)) for x in grid]
        k = max(range(len(grid)), key=vals.__getitem__)
        best = vals[k]
        if 0 < k < len(grid) - 1 and all(abs(grid[k] - q) > 0.05 for q in kinks):
            root = mpmath.findroot(lambda x: mpmath.diff(fprime, x), grid[k])
            assert abs(root - grid[k]) < mpmath.mpf(1) / 50, (root, grid[k])
            best = max(best, abs(fprime(root)))
        for q in kinks:  # one-sided limits next to a kink
            for s in (-1, 1):
                best = max(best, abs(fprime(q + s * mpmath.mpf(10) ** -40)))
        for lim in limits:
            best = max(best, abs(mpmath.mpf(lim)))
        return best


def _assert_tight(bound: float, sup: mpmath.mpf, name: str) -> None:
    with mpmath.workdps(DPS):
        b = mpmath.mpf(bound)  # exact: a float is a dyadic rational
        assert b >= sup, f"{name}: bound {bound!r} is below the true sup {mpmath.nstr(sup, 20)}"
        assert b <= sup * (1 + mpmath.mpf("1e-3")), f"{name}: bound {bound!r} is loose (sup {sup})"


@pytest.mark.parametrize("name", list(SMOOTH))
def test_smooth_activation_constant_is_the_sup_of_its_derivative(name):
    fprime, lim_inf, make = SMOOTH[name]
    kinks = (0,) if name == "softsign" else ()
    limits = (0,) if lim_inf is None else (0, lim_inf)
    sup = _sup_abs(fprime, limits, kinks)
    for p in (2, math.inf, 1):
        _assert_tight(lipkit.lipschitz_bound(make(None), p), sup, name)


def test_gelu_sups_and_the_tanh_form_margin():
    """The erf GELU's sup is 1.1289041...; the tanh form's is 1.1289931..., only ~7e-6 below the shared
    constant 1.1290: both are compared exactly at 50 digits (no rounding of the comparison)."""
    with mpmath.workdps(DPS):
        erf_sup = _sup_abs(SMOOTH["gelu"][0], (0, 1))
        tanh_sup = _sup_abs(SMOOTH["gelu-tanh"][0], (0, 1))
        # closed form for the erf GELU: f'' = phi(x) (2 - x^2), so the max is at sqrt(2)
        r2 = mpmath.sqrt(2)
        assert abs(erf_sup - (_Phi(r2) + r2 * _phi(r2))) < mpmath.mpf(10) ** -30
        assert mpmath.mpf("1.1288") < erf_sup < tanh_sup < mpmath.mpf(1.1290)
        gap = mpmath.mpf(lipkit.lipschitz_bound(nn.GELU(approximate="tanh"))) - tanh_sup
        assert 0 < gap < mpmath.mpf("1e-5")


def test_silu_and_sigmoid_closed_forms():
    with mpmath.workdps(DPS):
        assert _sup_abs(SMOOTH["sigmoid"][0], (0,)) == mpmath.mpf(1) / 4
        # SiLU: f'' = s (1 - s) (2 + x (1 - 2 s)) = 0 at x* = 2.3994...; sup f' = 1.0998...
        x = mpmath.findroot(lambda t: 2 + t * (1 - 2 * _sigmoid(t)), 2.4)
        assert abs(_sup_abs(SMOOTH["silu"][0], (0, 1)) - SMOOTH["silu"][0](x)) < mpmath.mpf(10) ** -30


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5, -0.5, -1.7])
def test_elu_constant(alpha):
    a = mpmath.mpf(alpha)

    def fprime(x):  # f = x (x > 0), a (e^x - 1) (x <= 0)
        return mpmath.mpf(1) if x > 0 else a * mpmath.exp(x)

    _assert_tight(lipkit.lipschitz_bound(nn.ELU(alpha=alpha)), _sup_abs(fprime, (0, 1), kinks=(0,)), "elu")


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.7, 1.0, 3.0, -4.5])
def test_leaky_relu_constant(slope):
    s = mpmath.mpf(slope)
    sup = _sup_abs(lambda x: mpmath.mpf(1) if x > 0 else s, (1, s), kinks=(0,))
    _assert_tight(lipkit.lipschitz_bound(nn.LeakyReLU(slope)), sup, "leaky")


@pytest.mark.parametrize("make", [nn.ReLU, nn.ReLU6, lambda: nn.Hardtanh(-3.0, 0.5), nn.Identity])
def test_piecewise_unit_slope_constants(make):
    # piecewise linear with slopes in {0, 1}: sup |f'| = 1 exactly
    _assert_tight(lipkit.lipschitz_bound(make()), mpmath.mpf(1), "unit")


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_smooth_softplus_constant(beta):
    """f' = sigmoid(beta x) < 1, with sup 1 (the limit at +inf); lipkit.SmoothSoftplus has no threshold."""
    b = mpmath.mpf(beta)
    sup = _sup_abs(lambda x: _sigmoid(b * x), (0, 1))
    _assert_tight(lipkit.lipschitz_bound(lipkit.SmoothSoftplus(beta=beta)), sup, "softplus")
    x = torch.linspace(-30, 30, 601, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(lipkit.SmoothSoftplus(beta=beta)(x).sum(), x)
    torch.testing.assert_close(g, torch.sigmoid(beta * x.detach()), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_constant_train_and_eval(p):
    d = nn.Dropout(p)
    with mpmath.workdps(DPS):
        sup = 1 / (1 - mpmath.mpf(p))  # the kept entries are scaled by exactly this
        _assert_tight(lipkit.lipschitz_bound(d), sup, "dropout-train")
    _assert_tight(lipkit.lipschitz_bound(d.eval()), mpmath.mpf(1), "dropout-eval")


def test_torch_derivatives_agree_with_the_references():
    """The formulas above are the ones torch evaluates: autograd derivatives of the torch modules in
    float64 match the mpmath f' to 1e-12 on a grid (so the sups are of the functions lipkit bounds)."""
    x = torch.linspace(-8, 8, 161, dtype=torch.float64, requires_grad=True)
    for name, (fprime, _, make) in SMOOTH.items():
        (g,) = torch.autograd.grad(make(None)(x).sum(), x)
        with mpmath.workdps(30):
            ref = [float(fprime(mpmath.mpf(v))) for v in x.detach().tolist()]
        ref = torch.tensor(ref, dtype=torch.float64)
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12, msg=name)


def test_torch_softplus_threshold_jump_is_refused():
    """nn.Softplus switches to the identity above ``threshold`` and jumps by log1p(exp(-threshold)) / beta:
    no finite constant holds across the switch, so no bound is given."""
    sp = nn.Softplus(beta=1.0, threshold=2.0).double()
    x = torch.tensor([2.0], dtype=torch.float64)
    y = x + 1e-6
    ratio = ((sp(x) - sp(y)).abs() / (x - y).abs()).item()
    assert ratio > 1e4  # the jump is real
    with pytest.raises(lipkit.UnsupportedModuleError, match="not Lipschitz.*SmoothSoftplus"):
        lipkit.lipschitz_bound(sp)
