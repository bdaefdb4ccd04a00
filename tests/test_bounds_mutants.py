"""Tests that kill mutants of the soundness-critical code in ``lipkit.bounds`` (issue 17).

Each test asserts against an exact or independently computed value (never the function under test),
so that a mutant that tightens a bound, or lets a tampered module through, fails.  ``make mutate``
(bench/mutation.py) lists the surviving mutants with the reason each survives.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction

import mpmath
import pytest
import torch
from exact_ref import dense_matrix, l2_norm_mp
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import (
    EPS64,
    LIPSCHITZ,
    UnsupportedModuleError,
    chain_bound,
    conv_module_norm,
    conv_operator_norm,
    lipschitz_bound,
    operator_norm,
    pairwise_head_bound,
    parameter_sensitivity,
    register_bound,
    round_up,
)
from lipkit.bounds.windows import max_window_cover, output_length


def test_round_up_inflates_by_the_documented_relative_slack():
    # 4 n eps64 relative, then one more ulp: strictly above value * (1 + 4 n eps64) for n >= 1
    for n in (1, 3, 100):
        v = 1.0
        assert round_up(v, n) >= v * (1.0 + 4.0 * n * EPS64)
        assert round_up(v, n) > 1.0
    assert round_up(math.inf) == math.inf
    assert round_up(math.nan) == math.inf


# --------------------------------------------------------------------------- numerics.operator_norm

def _margin(bound: float, exact) -> mpmath.mpf:
    """Relative margin ``bound / exact - 1`` at 50 digits (exact: a Fraction or an mpf)."""
    with mpmath.workdps(50):
        if isinstance(exact, Fraction):
            exact = mpmath.mpf(exact.numerator) / exact.denominator
        return mpmath.mpf(bound) / exact - 1


def _frac_rows(w: torch.Tensor) -> list[list[Fraction]]:
    return [[Fraction(v) for v in row] for row in w.tolist()]


def _exact_pairs(w: torch.Tensor) -> dict[tuple[float, float], mpmath.mpf]:
    """Every (p_in, p_out) value operator_norm documents, from the float entries at 50 digits."""
    rows = _frac_rows(w)
    with mpmath.workdps(50):
        mp = [[mpmath.mpf(v.numerator) / v.denominator for v in r] for r in rows]
        mpc = [list(c) for c in zip(*mp, strict=True)]
        l2 = lambda v: mpmath.sqrt(mpmath.fsum(x * x for x in v))  # noqa: E731
        l1 = lambda v: mpmath.fsum(abs(x) for x in v)  # noqa: E731
        return {
            (2.0, 2.0): l2_norm_mp(w),
            (math.inf, math.inf): max(l1(r) for r in mp),
            (1.0, 1.0): max(l1(c) for c in mpc),
            (1.0, 2.0): max(l2(c) for c in mpc),
            (1.0, math.inf): max(abs(v) for r in mp for v in r),
            (2.0, math.inf): max(l2(r) for r in mp),
            (math.inf, 2.0): l2([l1(r) for r in mp]),
            (math.inf, 1.0): mpmath.fsum(l1(r) for r in mp),
            (2.0, 1.0): mpmath.fsum(l2(r) for r in mp),
        }


#: the round-off slack operator_norm documents per pair: round_up(., n_ops) inflates by 4 n_ops eps64
def _documented_ops(p: float, q: float, m: int, n: int) -> int:
    if (p, q) == (2.0, 2.0):
        return 8 * max(m, n) ** 2
    if (p, q) == (1.0, math.inf):
        return 0
    if p == 1.0:
        return 2 * m
    if q == math.inf:
        return 2 * n
    return 2 * (m + n)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)])
def test_operator_norm_dominates_exact_value_with_its_full_round_off_margin(shape):
    # kills mutants that drop or shrink the round-off inflation (a smaller n_ops) of any branch: the
    # margin above the exact (50-digit) value must be the documented 4 n_ops eps64, not just positive
    g = torch.Generator().manual_seed(17)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    m, n = shape
    exact = _exact_pairs(w)
    for (p, q), value in exact.items():
        bound = operator_norm(w, p, q)
        need = 4 * _documented_ops(p, q, m, n) * EPS64
        assert _margin(bound, value) >= 0.9 * need, (p, q)
        assert _margin(bound, value) >= 0, (p, q)
        # and it is the documented quantity, not a looser one (kills swapped norms / axes)
        assert _margin(bound, value) <= need + 1e-12, (p, q)


def test_operator_norm_special_inputs():
    assert operator_norm(torch.zeros(0, 3), 2) == 0.0
    assert operator_norm(torch.tensor([[1.0, math.inf]]), 1, math.inf) == math.inf
    assert operator_norm(torch.tensor([[1.0, math.nan]]), 2) == math.inf
    assert operator_norm(torch.tensor([[-3.0, 2.0]]), 1, math.inf) == 3.0  # exact: max |w_ij|
    with pytest.raises(ValueError, match="2-D"):
        operator_norm(torch.ones(2, 2, 2))
    # p_in defaults to 2, p_out to p_in
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert operator_norm(w) == operator_norm(w, 2, 2)
    assert operator_norm(w, "inf") == operator_norm(w, math.inf, math.inf)
    assert 7.0 <= operator_norm(w, math.inf) <= 7.0 * (1 + 1e-13)


# --------------------------------------------------------------------------- numerics.pairwise_head_bound

@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_pairwise_head_bound_is_the_dual_norm_of_the_row_differences(p):
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 2.0, 2.0]])
    body = 1.5
    out = pairwise_head_bound(w, body, p)
    dual = {1: lambda d: max(abs(x) for x in d), 2: lambda d: math.sqrt(sum(x * x for x in d)),
            "inf": lambda d: sum(abs(x) for x in d)}[p]
    rows = w.tolist()
    assert out.shape == (3, 3)
    for c in range(3):
        for j in range(3):
            expected = dual([a - b for a, b in zip(rows[c], rows[j], strict=True)]) * body
            assert out[c, j].item() == pytest.approx(expected, rel=1e-6), (c, j)


# --------------------------------------------------------------------------- registry: plumbing of rules

class _Shaped(nn.Module):
    """``x -> n x`` with ``n`` the last input dimension: its rule needs the recorded shapes."""

    def forward(self, x):
        return x * x.shape[-1]


class _PerNorm(nn.Module):
    """A module whose (same-norm) rule returns a different constant per norm."""

    def forward(self, x):
        return 5.0 * x


_PER_NORM = {1.0: 5.0, 2.0: 3.0, math.inf: 4.0}


class _Bad(nn.Module):
    def forward(self, x):
        return x


@pytest.fixture
def custom_rules():
    def shaped(module, p, shapes):
        return float(shapes[module][-1])

    def per_norm(module, p, shapes):
        assert isinstance(module, _PerNorm)
        return _PER_NORM[p]

    values = {"value": -1.0}

    def bad(module, p, shapes):
        return values["value"]

    register_bound(_Shaped)(shaped)
    register_bound(_PerNorm)(per_norm)
    register_bound(_Bad)(bad)
    yield values
    LIPSCHITZ.unregister(_Shaped, _PerNorm, _Bad)


def test_rules_receive_the_recorded_shapes_also_inside_chains(custom_rules):
    # kills _apply_rule / chain_bound mutants that pass shapes=None to a rule
    assert lipschitz_bound(_Shaped(), 2, input_shape=(7,)) == 7.0
    assert lipschitz_bound(_Shaped(), 1, 2, input_shape=(7,)) == 7.0  # p -> q from the same-norm rule
    chained = lipschitz_bound(nn.Sequential(_Shaped(), nn.ReLU()), 2, input_shape=(7,))
    assert 7.0 < chained <= 7.0 * (1 + 1e-12)
    mixed = lipschitz_bound(nn.Sequential(nn.ReLU(), _Shaped()), 1, 2, input_shape=(7,))
    assert 7.0 < mixed <= 7.0 * (1 + 1e-12)


def test_the_input_shape_reaches_convolution_rules():
    # Conv1d with kernel [1, 1] on inputs of length 2 (no padding): x -> x0 + x1, norm sqrt(2); the bound
    # valid for every size is sup |1 + e^{-iw}| = 2
    conv = nn.Conv1d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    for model in (conv, nn.Sequential(conv)):
        assert math.sqrt(2) <= lipschitz_bound(model, 2, input_shape=(1, 2)) <= math.sqrt(2) * (1 + 1e-9)
        assert lipschitz_bound(model, 2) >= 2.0


@pytest.mark.parametrize("p, q", [(1, 2), (2, "inf"), (1, "inf")])
def test_mixed_norms_of_a_same_norm_rule_are_the_smaller_of_the_two(custom_rules, p, q):
    # ||v||_q <= ||v||_p for p below q, so L_{p->q} <= min(L_p, L_q)
    from lipkit.bounds.numerics import normalize_p

    expected = min(_PER_NORM[normalize_p(p)], _PER_NORM[normalize_p(q)])
    assert lipschitz_bound(_PerNorm(), p, q) == expected


def test_mixed_norms_use_the_norm_whose_rule_answers():
    class Half(nn.Module):
        def forward(self, x):
            return 0.5 * x

    def rule(module, p, shapes):
        if p == 2.0:
            raise UnsupportedModuleError("no l2 rule here")
        if p == 1.0:
            raise UnsupportedModuleError("no l1 rule here")
        return 0.5

    register_bound(Half)(rule)
    try:
        assert lipschitz_bound(Half(), 2, "inf") == 0.5
        # both norms refused: the error of p (the input norm) is the one raised
        with pytest.raises(UnsupportedModuleError, match="no l1 rule here"):
            lipschitz_bound(Half(), 1, 2)
    finally:
        LIPSCHITZ.unregister(Half)


def test_a_same_norm_rule_gives_no_bound_from_a_larger_to_a_smaller_norm(custom_rules):
    module = _PerNorm()
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(module, "inf", 1)
    message = str(info.value)
    assert message == (
        f"no l_inf -> l_1 bound is known for {_PerNorm.__module__}.{_PerNorm.__qualname__} (a bound from a "
        "larger to a smaller norm depends on the dimension; its rule does not provide one)")
    assert info.value.module is module


def test_a_rule_returning_a_negative_or_nan_value_is_an_error_and_zero_is_not(custom_rules):
    for bad in (-1.0, -1e-300, math.nan):
        custom_rules["value"] = bad
        with pytest.raises(ValueError, match=rf"^bound rule for _Bad returned {bad!r}$"):
            lipschitz_bound(_Bad(), 2)
    custom_rules["value"] = 0.0
    assert lipschitz_bound(_Bad(), 2) == 0.0


def test_lipschitz_bound_refuses_non_modules_with_a_clear_message():
    with pytest.raises(TypeError, match=r"^lipschitz_bound expects a torch.nn.Module, got int$"):
        lipschitz_bound(3)


# --------------------------------------------------------------------------- registry.chain_bound

def test_chain_bound_defaults_to_the_same_norm_and_keeps_its_round_off_margin():
    children = [nn.ReLU(), nn.ReLU(), nn.ReLU()]
    # product 1.0 exactly; the product of 3 factors is inflated by 4 (3 + 1) eps64
    for value in (chain_bound(children, 2.0, {}), lipschitz_bound(nn.Sequential(*children), 2),
                  lipschitz_bound(nn.Sequential(*children), 1, 2)):
        assert value >= 1.0 + 0.9 * 16 * EPS64
        assert value <= 1.0 + 1e-12


def test_mixed_chain_changes_norm_at_one_child_only():
    # three 1/4-Lipschitz maps: 1/64 from l_1 to l_2 whichever child changes the norm; counting a child
    # twice or skipping one would give 1/256 or 1/16
    value = lipschitz_bound(nn.Sequential(nn.Sigmoid(), nn.Sigmoid(), nn.Sigmoid()), 1, 2)
    assert 1 / 64 < value <= (1 / 64) * (1 + 1e-12)


def test_mixed_chain_uses_a_child_that_can_change_norm_after_one_that_cannot():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, -2.0], [0.0, 3.0, 4.0]]))
    # ReLU has no dimension-free l2 -> l1 bound; the Linear does: sum of the rows' l2 norms = 3 + 5
    value = lipschitz_bound(nn.Sequential(nn.ReLU(), lin), 2, 1)
    assert 8.0 <= value <= 8.0 * (1 + 1e-12)


def test_mixed_chain_without_any_norm_change_raises_the_first_error():
    with pytest.raises(UnsupportedModuleError, match="no dimension-free l_2 -> l_1 bound") as info:
        lipschitz_bound(nn.Sequential(nn.ReLU(), nn.Tanh()), 2, 1)
    assert "ReLU" in str(info.value)


def test_the_empty_chain_is_the_identity():
    assert chain_bound([], 1.0, {}, 2.0) == 1.0
    assert chain_bound([], 2.0, {}, 2.0) <= 1.0 + 1e-12
    message = r"^the identity has no dimension-free l_2 -> l_1 bound$"
    with pytest.raises(UnsupportedModuleError, match=message):
        chain_bound([], 2.0, {}, 1.0)


# --------------------------------------------------------------------------- registry: tamper checks

class _Identity(nn.Module):
    def forward(self, w):
        return w


def _parametrized_linear() -> nn.Linear:
    lin = nn.Linear(2, 2)
    parametrize.register_parametrization(lin, "weight", _Identity())
    return lin


def test_parametrized_module_is_seen_through_its_generated_class():
    assert lipschitz_bound(_parametrized_linear(), 2) > 0


def test_a_member_added_to_the_generated_parametrize_class_is_refused():
    lin = _parametrized_linear()
    type(lin).forward = lambda self, x: 2 * nn.functional.linear(x, self.weight, self.bias)
    with pytest.raises(UnsupportedModuleError, match=r"^torch.nn.utils.parametrize.ParametrizedLinear: a "
                       r"parametrised module whose class defines \['forward'\] beyond what"):
        lipschitz_bound(lin, 2)


def test_a_parametrized_tensor_that_is_no_longer_a_property_is_refused():
    lin = _parametrized_linear()
    type(lin).weight = torch.zeros(2, 2)  # the class attribute replaces the parametrisation's property
    with pytest.raises(UnsupportedModuleError, match=r"defines \['weight'\] beyond what"):
        lipschitz_bound(lin, 2)


_SPECTRAL = ("it uses the hook-based torch.nn.utils.spectral_norm, which recomputes `weight` in a forward "
             "pre-hook (the stored weight may be stale); use torch.nn.utils.parametrizations.spectral_norm")
_WEIGHT = ("it uses the hook-based torch.nn.utils.weight_norm, which recomputes `weight` in a forward "
           "pre-hook; use torch.nn.utils.parametrizations.weight_norm")
_PRUNE = ("it is pruned with torch.nn.utils.prune, which recomputes the weight in a forward pre-hook; "
          "call torch.nn.utils.prune.remove first")


def _spectral():
    return torch.nn.utils.spectral_norm(nn.Linear(2, 2))


def _weight():
    return torch.nn.utils.weight_norm(nn.Linear(2, 2))


def _pruned():
    return torch.nn.utils.prune.l1_unstructured(nn.Linear(2, 2), "weight", amount=0.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("build, reason", [(_spectral, _SPECTRAL), (_weight, _WEIGHT), (_pruned, _PRUNE)])
def test_hook_based_reparametrisations_are_refused_with_the_fix(build, reason):
    module = build()
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(module, 2)
    assert str(info.value).endswith(f"torch.nn.modules.linear.Linear: {reason}")


class _CallableHook:
    def __call__(self, module, args):
        return None


def test_a_hook_is_named_in_the_refusal():
    def doubling_hook(module, args, output):
        return 2 * output

    for hook, name, kind in ((doubling_hook, doubling_hook.__qualname__, "forward hook"),
                             (_CallableHook(), "_CallableHook", "forward pre-hook")):
        lin = nn.Linear(2, 2)
        if kind == "forward hook":
            lin.register_forward_hook(hook)
        else:
            lin.register_forward_pre_hook(hook)
        with pytest.raises(UnsupportedModuleError) as info:
            lipschitz_bound(lin, 2)
        assert str(info.value).endswith(
            f": it has a {kind} ({name}) that may change its input or output; remove it, or mark it with "
            "lipkit.observer_hook if it only observes")


class _CallMixin:
    def __call__(self, *args, **kwargs):
        return 10 * nn.Module.__call__(self, *args, **kwargs)


class _LinearWithMixin(nn.Linear, _CallMixin):
    """MRO: itself, Linear, _CallMixin, Module: the mixin's ``__call__`` shadows ``Module.__call__``."""


def test_a_mixin_after_the_registered_class_in_the_mro_is_checked_too():
    module = _LinearWithMixin(2, 2)
    assert module(torch.ones(1, 2)).abs().sum() >= 0  # the mixin is what runs
    with pytest.raises(UnsupportedModuleError, match=r"_CallMixin overrides Linear.__call__"):
        lipschitz_bound(module, 2)


def test_a_member_added_to_the_registered_class_after_registration_is_refused(monkeypatch):
    lin = nn.Linear(2, 2)
    assert "__call__" not in vars(nn.Linear) and "_get_name" not in vars(nn.Linear)
    monkeypatch.setattr(nn.Linear, "__call__", lambda self, x: 3 * self.forward(x), raising=False)
    monkeypatch.setattr(nn.Linear, "_get_name", lambda self: "Linear", raising=False)
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(lin, 2)
    assert str(info.value).endswith(
        ": Linear.__call__, _get_name was replaced after lipkit registered its rule (monkeypatching)")


class _TaggedLinear(nn.Linear):
    tag = "class"


def test_an_instance_attribute_shadowing_class_data_is_not_a_replaced_method():
    lin = _TaggedLinear(2, 2, bias=False)
    lin.tag = "instance"
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, -1.0]]))
    assert 3.0 <= lipschitz_bound(lin, 2) <= 3.0 * (1 + 1e-12)


class _OddTensor(torch.Tensor):
    pass


def test_tensor_subclasses_are_named_as_parameter_or_buffer():
    lin = nn.Linear(2, 2)
    lin._parameters["weight"] = nn.Parameter(lin.weight.detach().as_subclass(_OddTensor))
    bn = nn.BatchNorm1d(2).eval()
    bn._buffers["running_var"] = bn.running_var.as_subclass(_OddTensor)
    odd = type(lin._parameters["weight"]).__qualname__
    for module, expected in ((lin, f"its parameter 'weight' is a {odd}, not a plain tensor"),
                             (bn, "its buffer 'running_var' is a _OddTensor, not a plain tensor")):
        with pytest.raises(UnsupportedModuleError) as info:
            lipschitz_bound(module, 2)
        assert str(info.value).endswith(": " + expected)


class _Unknown(nn.Module):
    def forward(self, x):
        return x


class _PerNormChild(_PerNorm):
    pass


def test_resolve_errors_carry_the_module_so_that_its_position_is_named(custom_rules):
    unknown, child = _Unknown(), _PerNormChild()
    for module in (unknown, child):
        with pytest.raises(UnsupportedModuleError) as info:
            LIPSCHITZ.resolve(module)
        assert info.value.module is module
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(nn.Sequential(nn.ReLU(), unknown), 2)
    assert str(info.value) == (
        f"model.1: no Lipschitz rule is known for {__name__}._Unknown; register one with "
        "lipkit.register_bound(YourModule)")
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(nn.Sequential(child), 2)
    assert str(info.value) == (
        f"model.0: {__name__}._PerNormChild is a subclass of _PerNorm, whose Lipschitz rule does not extend "
        "to subclasses; register one with lipkit.register_bound(YourModule)")


class _Scaled(nn.Module):
    def scale(self) -> float:
        return 2.0

    def forward(self, x):
        return self.scale() * x


class _Scaled3(_Scaled):
    def scale(self) -> float:
        return 3.0


def test_a_subclass_may_override_what_the_rule_itself_evaluates():
    register_bound(_Scaled, subclasses=True, overridable=("scale",))(lambda m, p, s: m.scale())
    try:
        assert lipschitz_bound(_Scaled3(), 2) == 3.0
    finally:
        LIPSCHITZ.unregister(_Scaled)


# --------------------------------------------------------------------------- torch_rules

def test_scalar_rule_factory_and_identity_rule():
    from lipkit.bounds.torch_rules import _one, _scalar

    assert _one(nn.ReLU(), 2.0, {}) == 1.0  # q defaults to p
    rule = _scalar(1.1290)  # built here, so that the factory's code runs under test
    for p, q in ((2.0, 2.0), (1.0, math.inf), (1.0, 2.0)):
        assert rule(nn.GELU(), p, {}, q) == 1.1290
    assert rule(nn.GELU(), 2.0, {}) == 1.1290
    with pytest.raises(UnsupportedModuleError, match=r"^GELU: no dimension-free l_inf -> l_1 bound$"):
        rule(nn.GELU(), math.inf, {}, 1.0)


def test_batchnorm_in_training_mode_is_refused_with_the_fix():
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(nn.BatchNorm1d(3), 2)
    assert str(info.value).endswith(
        "BatchNorm1d in training mode (or without running statistics) normalises by batch statistics, "
        "which mixes the examples of a batch: it has no per-example Lipschitz constant; "
        "call model.eval() first")


# --------------------------------------------------------------------------- conv

def _dense(conv: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    return dense_matrix(lambda x: conv._conv_forward(x, conv.weight, None), in_shape)


def _exact_norms(mat: torch.Tensor) -> dict[float, float]:
    return {1.0: mat.abs().sum(0).max().item(), math.inf: mat.abs().sum(1).max().item(),
            2.0: torch.linalg.matrix_norm(mat, ord=2).item()}


_CONV_CASES = [
    # (dims, c_in, c_out, kernel, stride, padding, dilation, mode, sizes)
    (1, 1, 1, 1, 1, 1, 1, "circular", (1, 2, 3)),
    (1, 1, 1, 1, 1, 2, 1, "circular", (2, 3, 5)),
    (1, 2, 1, 2, 1, 1, 1, "circular", (1, 2, 4)),
    (2, 1, 1, (1, 1), 1, (1, 1), 1, "circular", ((1, 1), (2, 3), (3, 2))),
    (2, 1, 2, (1, 2), 1, (1, 1), 1, "circular", ((2, 2), (1, 3))),
    (1, 1, 1, 1, 1, 1, 1, "reflect", (2, 3)),
    (1, 1, 1, 1, 1, 2, 1, "replicate", (1, 2, 4)),
    (2, 1, 1, (1, 1), 1, (1, 0), 1, "replicate", ((1, 3), (3, 2))),
    (2, 1, 1, (1, 1), 1, (2, 1), 1, "reflect", ((3, 2), (4, 4))),
    (2, 2, 1, (2, 4), 1, "same", 1, "reflect", ((3, 5), (4, 6))),
    (2, 1, 2, (2, 3), 1, "same", 1, "replicate", ((3, 5), (4, 4))),
    (2, 1, 2, (2, 2), 2, 1, 1, "replicate", ((3, 5), (4, 4))),
    (1, 2, 2, 3, 2, 1, 2, "zeros", (3, 6)),
    (2, 2, 3, (3, 2), (2, 1), (1, 0), (1, 2), "zeros", ((4, 5),)),
]


def _make_conv(dims, c_in, c_out, kernel, stride, padding, dilation, mode, seed=0):
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    conv = cls(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode,
               bias=False).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g).double())
        if conv.weight.abs().sum() == 0:
            conv.weight.fill_(1.0)
    return conv


def _in_shape(c_in, size):
    return (c_in, *size) if isinstance(size, tuple) else (c_in, size)


@pytest.mark.parametrize("case", _CONV_CASES)
def test_conv_bounds_dominate_the_explicit_matrix_without_the_explicit_candidate(case):
    # exact_max_dim=0: the Fourier / padding-factor / reshape candidates alone must be sound; the size-free
    # bound must dominate every size
    dims, c_in, c_out, kernel, stride, padding, dilation, mode, sizes = case
    conv = _make_conv(*case[:-1])
    for size in sizes:
        exact = _exact_norms(_dense(conv, _in_shape(c_in, size)))
        for p in (1.0, 2.0, math.inf):
            known = conv_module_norm(conv, p, size if isinstance(size, tuple) else (size,), exact_max_dim=0)
            free = conv_module_norm(conv, p, None)
            assert known >= exact[p] * (1 - 1e-12), (size, p)
            assert free >= exact[p] * (1 - 1e-12), (size, p)
            with_explicit = lipschitz_bound(conv, p, input_shape=_in_shape(c_in, size))
            assert with_explicit >= exact[p] * (1 - 1e-12), (size, p)


@pytest.mark.parametrize("case", _CONV_CASES)
def test_conv_module_norm_reads_the_module_like_conv_operator_norm(case):
    dims, c_in, c_out, kernel, stride, padding, dilation, mode, sizes = case
    conv = _make_conv(*case[:-1])
    size = sizes[-1] if isinstance(sizes[-1], tuple) else (sizes[-1],)
    for p in (1, 2, "inf"):
        for s in (size, None):
            direct = conv_operator_norm(conv.weight, s, p=p, stride=stride, padding=padding,
                                        dilation=dilation, padding_mode=mode, exact_max_dim=0)
            assert conv_module_norm(conv, p, s, exact_max_dim=0) == direct, (p, s)
    assert conv_module_norm(conv) == conv_module_norm(conv, 2)
    with pytest.raises(ValueError, match="n_iter must be >= 1, got 0"):
        conv_module_norm(conv, 2, size, n_iter=0)
    with pytest.raises(TypeError, match=r"^conv_module_norm expects nn.Conv1d or nn.Conv2d, got Linear$"):
        conv_module_norm(nn.Linear(2, 2))


@pytest.mark.parametrize("p", [1, 2, "inf"])
@pytest.mark.parametrize("size", [None, 5, 9])
def test_a_conv1d_is_a_conv2d_of_height_one(p, size):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    for kw in ({"stride": 2, "padding": 1, "dilation": 2}, {"padding": 2, "padding_mode": "circular"},
               {"padding": 1, "padding_mode": "reflect"}):
        k2 = {k: ((1, v) if k in ("stride", "dilation") else (0, v) if k == "padding" else v)
              for k, v in kw.items()}
        one = conv_operator_norm(w, size, p=p, exact_max_dim=0, **kw)
        two = conv_operator_norm(w[:, :, None, :], None if size is None else (1, size), p=p, exact_max_dim=0,
                                 **k2)
        assert one == two, kw


def test_conv_operator_norm_defaults_and_arguments():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    base = conv_operator_norm(w, (6, 6))
    assert base == conv_operator_norm(w, (6, 6), p=2, stride=1, padding=0, dilation=1, groups=1,
                                      padding_mode="zeros", n_iter=6)
    assert conv_operator_norm(w) == conv_operator_norm(w, None, n_iter=6, budget=1e10)
    # n_iter = 1 is allowed (a coarser, still sound bound)
    exact = _exact_norms(dense_matrix(lambda x: nn.functional.conv2d(x, w), (2, 6, 6)))[2.0]
    assert conv_operator_norm(w, (6, 6), n_iter=1, exact_max_dim=0) >= exact
    # size 1 is a valid input size
    w1 = torch.tensor([[[[2.0]]]])
    assert 2.0 <= conv_operator_norm(w1, (1, 1)) <= 2.0 * (1 + 1e-12)
    # "same" padding with dilation: the padding grows with the dilation
    same = conv_operator_norm(w, (5, 5), padding="same", dilation=2, p=1)
    assert same == conv_operator_norm(w, (5, 5), padding=2, dilation=2, p=1)
    for kwargs, message in (({"n_iter": 0}, r"^n_iter must be >= 1, got 0$"),
                            ({"stride": (1, 2, 3)},
                             r"^stride must be an int or a tuple of 2 ints, got \(1, 2, 3\)$"),
                            ({"dilation": (1,)},
                             r"^dilation must be an int or a tuple of 2 ints, got \(1,\)$"),
                            ({"input_size": (3, 3, 3)},
                             r"^input_size must be an int or a tuple of 2 ints, got \(3, 3, 3\)$"),
                            ({"input_size": (0, 3)}, r"^input_size must be positive, got \(0, 3\)$"),
                            ({"stride": 0}, r"^stride and dilation must be >= 1, got stride=0, dilation=1$")):
        with pytest.raises(ValueError, match=message):
            conv_operator_norm(w, **kwargs)


def _ulp_margin(bound: float, exact_value) -> float:
    with mpmath.workdps(50):
        return float((mpmath.mpf(bound) / exact_value - 1) / EPS64)


def test_conv_round_off_margins_are_the_documented_ones():
    # integer kernels: the l1 sums are exact in float64, so the margin above the exact value is
    # 4 n_ops eps64 within two ulps (kills mutants that shrink or drop n_ops)
    g = torch.Generator().manual_seed(9)
    w = torch.randint(1, 5, (3, 2, 3, 2), generator=g).double()  # c_out 3 != c_in 2, kh 3 != kw 2
    rows = w.abs().sum(dim=(1, 2, 3)).max().item()
    cols = w.abs().sum(dim=(0, 2, 3)).max().item()
    m_inf = _ulp_margin(conv_operator_norm(w, p="inf"), mpmath.mpf(rows))
    assert 4 * (2 * 3 * 2) - 1 <= m_inf <= 4 * (2 * 3 * 2) + 2
    m_one = _ulp_margin(conv_operator_norm(w, p=1), mpmath.mpf(cols))
    assert 4 * (3 * 3 * 2 + 1) - 1 <= m_one <= 4 * (3 * 3 * 2 + 1) + 2
    conv = nn.Conv2d(2, 3, (3, 2), bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    with mpmath.workdps(50):
        row_l2 = max(mpmath.sqrt(int((w[o] ** 2).sum().item())) for o in range(3))
        col_l2 = max(mpmath.sqrt(int((w[:, c] ** 2).sum().item())) for c in range(2))
    m_2inf = _ulp_margin(lipschitz_bound(conv, 2, "inf"), row_l2)
    assert 4 * (2 * 2 * 3 * 2) - 1 <= m_2inf <= 4 * (2 * 2 * 3 * 2) + 2
    m_12 = _ulp_margin(lipschitz_bound(conv, 1, 2), col_l2)
    assert 4 * (2 * 3 * 3 * 2) - 1 <= m_12 <= 4 * (2 * 3 * 3 * 2) + 2


# --------------------------------------------------------------------------- sensitivity

def _brute_cover(k: int, s: int, d: int, pad: int, n: int, n_out: int) -> int:
    """Largest number of (output position, tap) pairs that read one input entry, by enumeration."""
    count = Counter(o * s + a * d - pad for o in range(n_out) for a in range(k))
    return max((count[i] for i in range(n)), default=0)


@pytest.mark.parametrize("k, s, d, pad", [(3, 1, 1, 1), (3, 2, 1, 1), (4, 3, 1, 0), (3, 2, 2, 2),
                                          (2, 2, 1, 0), (5, 2, 3, 4), (1, 3, 1, 0), (5, 3, 1, 0),
                                          (5, 3, 1, 1), (7, 4, 1, 2), (5, 3, 2, 1), (4, 5, 1, 2),
                                          (5, 3, 1, 4), (2, 3, 3, 4)])
def test_max_window_cover_counts_the_readers_of_one_input_entry(k, s, d, pad):
    worst = 0
    for n in range(1, 30):
        n_out = (n + 2 * pad - d * (k - 1) - 1) // s + 1
        if n_out < 1:
            continue
        assert output_length(n, k, s, pad, d) == n_out
        exact = _brute_cover(k, s, d, pad, n, n_out)
        assert max_window_cover((k,), (s,), (d,), (pad,), (n,), out_size=(n_out,)) == max(exact, 1), n
        assert max_window_cover((k,), (s,), (d,), (pad,), (n,)) == max(exact, 1), n  # torch's output length
        worst = max(worst, exact)
    # without the size: the worst case over every size (attained on large inputs)
    assert max_window_cover((k,), (s,), (d,), (pad,), None) == worst
    # dimensions multiply
    assert max_window_cover((k, 3), (s, 1), (d, 1), (pad, 1), None) == worst * 3
    with pytest.raises(ValueError):  # one entry per spatial dimension in each argument
        max_window_cover((k, 3), (s,), (d, 1), (pad, 1), None)


def test_parameter_sensitivity_of_linear_and_conv_layers():
    lin = nn.Linear(4, 3)
    out = parameter_sensitivity(lin, 2.0, 3.0)
    assert set(out) == {"weight", "bias"} and out["bias"] == 3.0
    assert 6.0 <= out["weight"] <= 6.0 * (1 + 1e-12)
    assert parameter_sensitivity(nn.Linear(4, 3, bias=False), 2, 3) == {"weight": round_up(6.0)}
    conv = nn.Conv1d(1, 2, 3, stride=2)
    positions = conv(torch.zeros(1, 1, 9)).shape[-1]  # 4 output positions
    out = parameter_sensitivity(conv, 1.5, 2.0, input_shape=(1, 9))
    assert math.sqrt(positions) * 2.0 <= out["bias"] <= math.sqrt(positions) * 2.0 * (1 + 1e-12)
    # kernel 3, stride 2: an input entry is read by at most 2 patches
    assert math.sqrt(2) * 3.0 <= out["weight"] <= math.sqrt(2) * 3.0 * (1 + 1e-12)
    for bad in (-1.0, math.nan, True, "1"):
        got = re.escape(repr(bad))
        with pytest.raises(ValueError, match=rf"^input_norm must be a number >= 0, got {got}$"):
            parameter_sensitivity(lin, bad, 1.0)
        with pytest.raises(ValueError, match=rf"^grad_norm must be a number >= 0, got {got}$"):
            parameter_sensitivity(lin, 1.0, bad)
    assert parameter_sensitivity(lin, 0, 0)["bias"] == 0.0
    with pytest.raises(TypeError, match=r"^parameter_sensitivity expects a torch.nn.Module, got int$"):
        parameter_sensitivity(3, 1.0, 1.0)


def test_mixed_norm_bounds_of_a_single_output_channel_conv():
    conv = nn.Conv1d(2, 1, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, -2.0, 2.0], [0.0, 4.0, 0.0]]]))
    assert 5.0 <= lipschitz_bound(conv, 2, "inf") <= 5.0 * (1 + 1e-12)  # the one row: ||K[0]||_2 = 5
    assert 4.0 == lipschitz_bound(conv, 1, "inf")  # max |K|
    assert 4.0 <= lipschitz_bound(conv, 1, 2) <= 4.0 * (1 + 1e-12)  # column of channel 1: ||K[:, 1]||_2


def _torch_pad_counts(mode: str, n: int, left: int, right: int) -> int:
    """How often the most copied input entry appears in torch's own padding of a length-n signal."""
    idx = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
    padded = nn.functional.pad(idx, (left, right), mode=mode).flatten().long()
    return int(torch.bincount(padded, minlength=n).max().item())


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_multiplicity_matches_torch_padding(mode):
    from lipkit.bounds.conv import _multiplicity

    for left in range(4):
        for right in range(4):
            worst = 0
            for n in range(1, 12):
                if mode == "reflect" and (left >= n or right >= n):
                    with pytest.raises(ValueError, match=rf"^reflect padding \({left}, {right}\) needs input "
                                                         rf"size > padding, got {n}$"):
                        _multiplicity(mode, n, left, right)
                    continue
                if mode == "circular" and (left > n or right > n):
                    continue
                count = _torch_pad_counts(mode, n, left, right)
                assert _multiplicity(mode, n, left, right) == count, (n, left, right)
                worst = max(worst, count)
            free = _multiplicity(mode, None, left, right)
            assert free >= worst, (left, right)
            if mode != "circular":
                assert free == worst, (left, right)  # attained: the bound for every size is not loose
    assert _multiplicity("zeros", 3, 2, 2) == 1


def test_the_reshape_and_block_candidates_alone_are_sound_and_keep_their_margin():
    # budget=0 and exact_max_dim=0 leave only the reshape candidate sqrt(kh kw) ||reshape(K)||_2 pf and, for
    # non-overlapping patches, ||reshape(K)||_2 ||P||.  An all-ones 3x3 kernel on circular padding has
    # operator norm 9 exactly (its DC gain), and the reshape candidate is 3 * 3 = 9 too: the margin is
    # 4 * 648 eps64 (||reshape(K)||_2 = 3 from operator_norm, 8 max(1, 9)^2 operations) plus 4 * 8 eps64 (the
    # candidate's own round_up), within a few ulps.
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    circ = conv_operator_norm(ones, (5, 5), padding=1, padding_mode="circular", budget=0, exact_max_dim=0)
    expected = 4 * 648 + 4 * 8
    assert expected - 3 <= _ulp_margin(circ, mpmath.mpf(9)) <= expected + 3
    # stride 3 = kernel: disjoint patches, each output is the sum of 9 inputs: norm 3 exactly
    block = conv_operator_norm(ones, (6, 6), stride=3, budget=0, exact_max_dim=0)
    assert expected - 3 <= _ulp_margin(block, mpmath.mpf(3)) <= expected + 3
    # more input rows than channels (kh = 3 > c_in = 1): sqrt(kh kw), not sqrt(c_in kw)
    for kwargs in ({"padding": 1}, {"padding": 1, "padding_mode": "replicate", "stride": 3},
                   {"padding": 2, "padding_mode": "reflect", "stride": 2}):
        conv = nn.Conv2d(1, 1, 3, bias=False, **kwargs).double()
        with torch.no_grad():
            conv.weight.fill_(1.0)
        exact = _exact_norms(_dense(conv, (1, 6, 6)))[2.0]
        assert conv_module_norm(conv, 2, (6, 6), budget=0, exact_max_dim=0) >= exact * (1 - 1e-12), kwargs
        assert conv_module_norm(conv, 2, None, budget=0) >= exact * (1 - 1e-12), kwargs


def test_exact_max_dim_zero_disables_the_explicit_matrix():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    exact = _exact_norms(dense_matrix(lambda x: nn.functional.conv2d(x, w, padding=1), (2, 3, 3)))[2.0]
    with_matrix = conv_operator_norm(w, (3, 3), padding=1)
    assert exact <= with_matrix <= exact * (1 + 1e-9)  # the explicit matrix: exact up to round-off
    assert conv_operator_norm(w, (3, 3), padding=1, exact_max_dim=0) > exact * (1 + 1e-6)


# --------------------------------------------------------------------------- the rules of torch_rules / conv

@pytest.mark.parametrize("module", [nn.LeakyReLU(0.1), nn.ELU(), nn.Dropout(0.5).train(),
                                    nn.BatchNorm1d(2).eval()])
def test_elementwise_rules_refuse_a_larger_to_a_smaller_norm(module):
    name = type(module).__name__
    with pytest.raises(UnsupportedModuleError, match=rf"^{name}: no dimension-free l_inf -> l_1 bound$"):
        lipschitz_bound(module, "inf", 1)
    assert lipschitz_bound(module, 1, "inf") == lipschitz_bound(module, 2)


def test_dropout_rule_in_training_mode():
    assert lipschitz_bound(nn.Dropout(1.0).train(), 2) == 0.0  # every entry dropped
    assert lipschitz_bound(nn.Dropout(0.75).train(), 2) == 4.0
    assert lipschitz_bound(nn.Dropout(0.75).eval(), 2) == 1.0


def test_batchnorm_rule_keeps_its_round_off_margin():
    bn = nn.BatchNorm1d(2).eval()
    bn.running_var.copy_(torch.tensor([0.75, 0.3]))
    with mpmath.workdps(50):
        v = mpmath.mpf(float(torch.tensor(0.3, dtype=torch.float32).double() + bn.eps))
        exact = 1 / mpmath.sqrt(v)
    # 1 / sqrt(var + eps) in float64 (a few ulps), inflated by 4 * 4 eps64
    assert 4 * 4 - 4 <= _ulp_margin(lipschitz_bound(bn, 2), exact) <= 4 * 4 + 4


@pytest.mark.parametrize("beta, threshold, jump, at", [(2.0, 20.0, "1.03e-09", "10"),
                                                       (0.5, 2.0, "0.254", "4")])
def test_softplus_refusal_names_the_jump(beta, threshold, jump, at):
    module = nn.Softplus(beta=beta, threshold=threshold)
    with pytest.raises(UnsupportedModuleError) as info:
        lipschitz_bound(module, 2)
    assert str(info.value).endswith(
        f"torch.nn.Softplus(beta={beta:g}, threshold={threshold:g}) is not Lipschitz: above beta x > "
        f"threshold it switches to the identity and jumps by {jump} at x = {at}; use "
        "lipkit.SmoothSoftplus(beta), the same function without the switch")


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_softplus_with_beta_not_positive_is_refused_cleanly(beta):
    with pytest.raises(UnsupportedModuleError, match=r"beta must be > 0"):
        lipschitz_bound(nn.Softplus(beta=beta), 2)


def test_conv_rule_mixed_norms_without_zero_padding():
    from lipkit.bounds.conv import _conv_rule

    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False)
    shape = (2, 5, 5)
    same = {p: lipschitz_bound(conv, p, input_shape=shape) for p in (1, 2, "inf")}
    # L_{p->q} <= min(L_p, L_q) for p below q (||v||_q <= ||v||_p); the rule takes that minimum
    assert lipschitz_bound(conv, 1, 2, input_shape=shape) == min(same[1], same[2])
    assert lipschitz_bound(conv, 2, "inf", input_shape=shape) == min(same[2], same["inf"])
    with pytest.raises(UnsupportedModuleError, match=r"^Conv2d: no l_2 -> l_1 bound$"):
        _conv_rule(conv, 2.0, {}, 1.0)
    small = nn.Conv1d(1, 1, 3, padding=2, padding_mode="reflect")
    message = r"^Conv1d: reflect padding \(2, 2\) needs input size > padding, got 2$"
    with pytest.raises(UnsupportedModuleError, match=message):
        _conv_rule(small, 2.0, {small: (1, 1, 2)})


# --------------------------------------------------------------------------- gradient hooks, window counts


def test_gradient_hooks_are_refused_only_by_the_gradient_facet_and_named():
    from lipkit.bounds import computes_as, parameter_sensitivity

    pre = nn.Linear(3, 2)
    pre.register_full_backward_pre_hook(lambda m, gout: tuple(2 * g for g in gout))
    post = nn.Linear(3, 2)
    post.register_full_backward_hook(lambda m, gin, gout: None)
    accumulate = nn.Linear(3, 2)
    accumulate.weight.register_post_accumulate_grad_hook(lambda p: None)
    tail = "which may change the gradients its rule bounds"
    for module, message in ((pre, f"it has a backward pre-hook, {tail}"),
                            (post, f"it has a backward hook, {tail}"),
                            (accumulate, "its parameter 'weight' has a gradient hook, which may change the "
                                         "gradient its rule bounds")):
        with pytest.raises(UnsupportedModuleError) as info:
            parameter_sensitivity(module, 1.0, 1.0)
        assert str(info.value).endswith(message)
        # the forward is unchanged: the Lipschitz facet and the analyses of certify accept the module
        assert lipschitz_bound(module, 2) == operator_norm(module.weight, 2)
        assert computes_as(module, (nn.Linear,))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k, s, pad, dil", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 3, 1, 1), (3, 2, 0, 2),
                                            (4, 3, 2, 1)])
def test_output_length_is_torchs(k, s, pad, dil, ceil_mode):
    pool = nn.MaxPool1d(k, s, pad, dil, ceil_mode=ceil_mode)
    for n in range(1, 15):
        if n + 2 * pad < dil * (k - 1) + 1:
            assert output_length(n, k, s, pad, dil, ceil_mode) == 0
            continue
        expected = pool(torch.zeros(1, 1, n)).shape[-1]
        assert output_length(n, k, s, pad, dil, ceil_mode) == expected, n
        exact = _brute_cover(k, s, dil, pad, n, expected)
        assert max_window_cover((k,), (s,), (dil,), (pad,), (n,), ceil_mode=ceil_mode) == max(exact, 1), n
    assert output_length(7, 3, 1, 0) == 5  # the dilation defaults to 1


def test_window_cover_of_an_empty_dimension_is_one():
    assert max_window_cover((3,), (1,), (1,), (0,), (0,), out_size=(0,)) == 1


def test_mixed_chain_with_non_finite_weights_is_infinite_not_an_error():
    broken = nn.Linear(3, 3)
    with torch.no_grad():
        broken.weight[0, 0] = float("inf")
    # dense layers bound every pair of norms, so no child refuses: the chain's bound is infinite, not an error
    assert chain_bound([broken, nn.Linear(3, 2)], 1.0, {}, math.inf) == math.inf
    assert lipschitz_bound(nn.Sequential(nn.Linear(2, 3), broken), 2, "inf") == math.inf


# ----------------------------------------------------------------------------- float32 product precision

_BACKENDS = {"generic": lambda: torch.backends, "mkldnn": lambda: torch.backends.mkldnn.matmul,
             "cuda": lambda: torch.backends.cuda.matmul}


@pytest.fixture
def restore_matmul_precision():
    saved = {name: get().fp32_precision for name, get in _BACKENDS.items()}
    yield
    torch.set_float32_matmul_precision("highest")  # the legacy switch first: it also sets the backends
    for name, get in _BACKENDS.items():
        get().fp32_precision = saved[name]
    assert torch.get_float32_matmul_precision() == "highest"


_SETTINGS = ["legacy:high", "legacy:medium", "mkldnn:bf16", "mkldnn:tf32", "cuda:tf32", "generic:tf32",
             "mkldnn:ieee", "mkldnn:none", "generic:ieee"]


@pytest.mark.parametrize("setting", _SETTINGS)
def test_reduced_precision_float32_products_are_detected(setting, restore_matmul_precision):
    """Every switch torch has for TF32 / bfloat16 float32 products turns the float32 fast paths off: the
    certified projection step declines, the float32 Gram bound falls back to float64, certification refuses
    with an error that names the switch (torch's own legacy query raises once the two APIs are mixed)."""
    from lipkit.bounds import fp32_products_are_ieee
    from lipkit.certify.twin import check_float_mode
    from lipkit.dp.retraction import certified_newton_schulz
    from lipkit.dp.sensitivity import gram_bound, gram_bound_fp32

    assert fp32_products_are_ieee()
    api, value = setting.split(":")
    if api == "legacy":
        torch.set_float32_matmul_precision(value)
    else:
        _BACKENDS[api]().fp32_precision = value
    ieee = value in ("ieee", "none")
    assert fp32_products_are_ieee() is ieee
    w = torch.eye(3) + 1e-3 * torch.arange(9.0).reshape(3, 3)
    assert (certified_newton_schulz(w) is None) is not ieee
    assert (gram_bound_fp32(w) == gram_bound(w)) is not ieee
    if ieee:
        check_float_mode()
    else:
        with pytest.raises(ValueError, match="fp32_precision"):
            check_float_mode()


@pytest.mark.parametrize("setting", [s for s in _SETTINGS if not s.startswith("legacy")])
def test_per_backend_precision_is_read_even_where_the_legacy_query_answers_highest(
        setting, restore_matmul_precision, monkeypatch):
    """A torch whose legacy query ignores the per-backend switches (torch 2.13 raises instead): each backend's
    own ``fp32_precision`` still decides."""
    from lipkit.bounds import fp32_products_are_ieee

    api, value = setting.split(":")
    _BACKENDS[api]().fp32_precision = value
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert fp32_products_are_ieee() is (value in ("ieee", "none"))
