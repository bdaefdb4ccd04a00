"""The round-off analysis' module checks (lipkit.certify.roundoff: chain_of, is_exact, is_linf_distance,
is_sortnet, computes_plain, is_plain_sequential) and the norm of ``|W|`` (``_abs_operator_norm``): which
layers the a-priori bound accepts decides whether a certificate is called rigorous, so each check is tested
on the layers it must accept and on the look-alikes (subclasses, other norms) it must refuse.  Mutants:
``make mutate SHARD=roundoff_checks``."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from exact_ref import at_least, exact_matrix_norm
from torch import nn

import lipkit
from lipkit.certify.roundoff import (
    _abs_operator_norm,
    chain_of,
    computes_plain,
    is_exact,
    is_linf_distance,
    is_plain_sequential,
    is_sortnet,
)
from lipkit.nn.activations import Abs, FullSort, GroupSort, MaxMin, Negate

mpmath.mp.dps = 50


class _Own(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class _Plain(nn.Sequential):
    pass


def test_chain_of_flattens_plain_sequentials_in_order_and_refuses_own_forwards():
    a, b, c, d = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh()
    chain = chain_of(nn.Sequential(a, nn.Sequential(b, _Plain(c)), nn.Sequential(), d))
    assert chain is not None and [id(m) for m in chain] == [id(a), id(b), id(c), id(d)]
    assert chain_of(nn.Sequential(a, _Own(b))) is None
    assert chain_of(_Own(a)) is None
    assert chain_of(nn.Sequential(nn.Sequential(_Own(a)), d)) is None
    leaf = nn.Linear(2, 2)
    assert chain_of(leaf) == [leaf]
    assert is_plain_sequential(nn.Sequential(a)) and is_plain_sequential(_Plain(a))
    assert not is_plain_sequential(_Own(a)) and not is_plain_sequential(a)
    hooked = nn.Sequential(nn.Linear(2, 2))
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert not is_plain_sequential(hooked) and chain_of(nn.Sequential(hooked)) is None


class _Relu(nn.ReLU):
    pass


class _Doubling(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


EXACT = [nn.ReLU(), nn.Identity(), nn.Flatten(), nn.Unflatten(1, (2, 2)), nn.Dropout(), nn.MaxPool1d(2),
         nn.MaxPool2d(2), nn.ReLU6(), nn.Hardtanh(), GroupSort(2), MaxMin(), FullSort(), Abs(), Negate()]


@pytest.mark.parametrize("module", EXACT, ids=[type(m).__name__ for m in EXACT])
def test_is_exact_accepts_the_exact_layers(module):
    assert is_exact(module)


@pytest.mark.parametrize("module", [nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(), nn.Linear(2, 2), nn.AvgPool2d(2),
                                    _Relu(), _Doubling(), lipkit.SmoothSoftplus()],
                         ids=["tanh", "sigmoid", "leaky", "linear", "avgpool", "relu-subclass", "doubling",
                              "softplus"])
def test_is_exact_refuses_rounded_layers_and_subclasses(module):
    assert not is_exact(module)


def test_computes_plain_allows_subclasses_that_override_nothing():
    assert computes_plain(_Relu(), (nn.ReLU,))
    assert not computes_plain(_Doubling(), (nn.ReLU,))
    assert computes_plain(nn.Linear(2, 2), (nn.Conv2d, nn.Linear))
    assert not computes_plain(nn.Tanh(), (nn.ReLU, nn.Linear))
    hooked = nn.Linear(2, 2)
    hooked.register_forward_pre_hook(lambda m, i: i)
    assert not computes_plain(hooked, (nn.Linear,))


class _LinfSub(lipkit.LinfDistLinear):
    pass


class _SortSub(lipkit.SortNeuronLinear):
    pass


def test_distance_layer_checks_accept_only_lipkit_layers_at_p_inf():
    linf = lipkit.LinfDistLinear(3, 2)
    assert is_linf_distance(linf) and is_linf_distance(lipkit.LinfDistConv2d(1, 2, 3))
    assert not is_sortnet(linf)
    p8 = lipkit.LinfDistLinear(3, 2)
    p8.p = 8.0
    assert not is_linf_distance(p8)
    assert not is_linf_distance(_LinfSub(3, 2)) and not is_linf_distance(lipkit.SortNeuronLinear(3, 2, q=0.5))
    sort = lipkit.SortNeuronLinear(3, 2, q=0.5)
    assert is_sortnet(sort) and is_sortnet(lipkit.SortNeuronConv2d(1, 2, 3, q=0.5))
    assert not is_sortnet(_SortSub(3, 2, q=0.5)) and not is_sortnet(linf) and not is_sortnet(nn.Linear(2, 2))
    assert not is_linf_distance(nn.Linear(2, 2))



@pytest.mark.parametrize("p", [2.0, math.inf])
def test_abs_operator_norm_of_linear_and_conv_bounds_the_exact_norm_of_abs_w(p):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    w0 = lin.weight.detach().clone()
    got = _abs_operator_norm(lin, p)
    exact = exact_matrix_norm([[Fraction(abs(float(v))) for v in row] for row in lin.weight.tolist()], p)
    assert at_least(got, exact) and got <= float(exact) * (1 + 1e-9)
    # |W| has no cancellation: for p = inf its norm is the largest absolute row sum, above ||W||
    assert torch.equal(lin.weight, w0)
    conv = nn.Conv2d(1, 2, 2, padding=1).double()
    cw, cb = conv.weight.detach().clone(), conv.bias.detach().clone()
    got = _abs_operator_norm(conv, p)
    basis = torch.eye(9, dtype=torch.float64).reshape(9, 1, 3, 3)
    with torch.no_grad():  # the |W| convolution's matrix: every entry one |weight| or 0, exact
        mat = nn.functional.conv2d(basis, conv.weight.abs(), None, padding=1).reshape(9, -1).T
    exact = exact_matrix_norm([[Fraction(float(v)) for v in row] for row in mat.tolist()], p)
    assert at_least(got, exact) and got <= float(exact) * 1.5
    # the layer itself is not touched (the norm is taken on a copy with |W| and no bias)
    assert torch.equal(conv.weight, cw) and torch.equal(conv.bias, cb)
