from __future__ import annotations

import math

import pytest
import torch
from conftest import lipschitz_ratio, sample_pairs
from torch import nn

import lipkit

PS = [2, math.inf]


# --------------------------------------------------------------------------- sorting


def test_groupsort_hand_values():
    x = torch.tensor([[3.0, 1.0, 2.0, 4.0, -1.0, 0.0]])
    assert lipkit.MaxMin()(x).tolist() == [[3.0, 1.0, 4.0, 2.0, 0.0, -1.0]]
    assert lipkit.GroupSort(3)(x).tolist() == [[3.0, 2.0, 1.0, 4.0, 0.0, -1.0]]
    assert lipkit.FullSort()(x).tolist() == [[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]
    assert lipkit.GroupSort(1)(x).tolist() == x.tolist()


def test_groupsort_channels_and_other_dims():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5)
    y = lipkit.GroupSort(2)(x)  # channels, per pixel
    assert torch.equal(y[:, 0], torch.maximum(x[:, 0], x[:, 1]))
    assert torch.equal(y[:, 1], torch.minimum(x[:, 0], x[:, 1]))
    z = lipkit.FullSort(dim=-1)(x)
    assert torch.equal(z, torch.sort(x, dim=-1, descending=True).values)
    # a permutation of each pixel's channels: the multiset (hence every l_p norm) is preserved
    assert torch.allclose(torch.sort(y, dim=1).values, torch.sort(x, dim=1).values)


@pytest.mark.parametrize("module", [lipkit.GroupSort(3), lipkit.MaxMin(), lipkit.Householder(6)])
def test_bad_group_size_is_a_clear_error(module):
    with pytest.raises(ValueError, match="not divisible"):
        module(torch.randn(2, 5))
    with pytest.raises(ValueError, match="out of range"):
        lipkit.MaxMin(dim=3)(torch.randn(2, 4))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="group_size"):
        lipkit.GroupSort(0)
    with pytest.raises(ValueError, match="even"):
        lipkit.Householder(5)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize(
    "make",
    [lambda: lipkit.GroupSort(3), lipkit.MaxMin, lipkit.FullSort, lipkit.Abs,
     lambda: lipkit.GroupSort(2, dim=-1)],
)
def test_sort_like_pairs_never_exceed_bound(make, p):
    m = make().double()
    bound = lipkit.lipschitz_bound(m, p)
    assert bound == 1.0
    xs, ys = sample_pairs((6,))
    ratio = lipschitz_ratio(m, xs, ys, p)
    assert ratio <= bound * (1 + 1e-12)
    assert ratio > 0.999  # single-coordinate moves inside a piece attain 1: the bound is tight


# --------------------------------------------------------------------------- Householder


def test_householder_default_is_maxmin_and_preserves_l2_norm():
    torch.manual_seed(0)
    x = torch.randn(16, 6, 3, 3)
    assert torch.allclose(lipkit.Householder(6)(x), lipkit.MaxMin()(x))
    h = lipkit.Householder(6)
    with torch.no_grad():
        h.theta.uniform_(-3.0, 3.0)
    y = h(x)
    # per pair either the identity or a reflection: pair norms preserved
    xp = x.view(16, 3, 2, 3, 3).norm(dim=2)
    yp = y.view(16, 3, 2, 3, 3).norm(dim=2)
    assert torch.allclose(xp, yp, atol=1e-5)


@pytest.mark.parametrize("p", PS)
def test_householder_bound_sound_and_tight(p):
    h = lipkit.Householder(2).double()
    with torch.no_grad():
        h.theta.fill_(0.3)
    bound = lipkit.lipschitz_bound(h, p)
    expected = 1.0 if p == 2 else abs(math.cos(0.6)) + abs(math.sin(0.6))  # ~1.390
    assert bound == pytest.approx(expected, rel=1e-6)
    assert bound >= expected
    xs, ys = sample_pairs((2,))
    # pairs deep in the reflected half-space, moved along the row that attains ||R||_inf
    v = torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=torch.float64)
    base = -5.0 * v.expand(50, 2)
    r = torch.eye(2, dtype=torch.float64) - 2 * torch.outer(v, v)
    d = 1e-2 * torch.sign(r[0]).expand(50, 2)
    xs, ys = torch.cat([xs, base]), torch.cat([ys, base + d])
    ratio = lipschitz_ratio(h, xs, ys, p)
    assert ratio <= bound * (1 + 1e-9)
    assert ratio >= 0.99 * bound


def test_householder_is_continuous_on_the_hyperplane():
    h = lipkit.Householder(2).double()
    with torch.no_grad():
        h.theta.fill_(1.1)
    v = torch.tensor([math.cos(1.1), math.sin(1.1)], dtype=torch.float64)
    perp = torch.tensor([-v[1], v[0]])
    a = (perp + 1e-9 * v)[None]
    b = (perp - 1e-9 * v)[None]
    assert (h(a) - h(b)).norm() < 1e-8


# --------------------------------------------------------------------------- LinearSpline


def test_spline_initialisations_match_relu_and_identity():
    x = torch.linspace(-6, 6, 241).view(1, 1, -1).repeat(2, 3, 1)  # includes points outside the knots
    assert torch.allclose(lipkit.LinearSpline(3)(x), torch.relu(x), atol=1e-6)
    assert torch.allclose(lipkit.LinearSpline(3, init="identity")(x), x, atol=1e-6)
    assert torch.allclose(lipkit.LinearSpline(3, init="absolute_value", num_knots=11)(x), x.abs(), atol=1e-6)


def test_spline_tv2_hand_values():
    # ReLU: one kink of height 1 per channel (0 is a knot), identity: none
    assert lipkit.LinearSpline(4).tv2().item() == pytest.approx(4.0, rel=1e-5)
    assert lipkit.LinearSpline(4, init="identity").tv2().item() == pytest.approx(0.0, abs=1e-4)
    assert lipkit.LinearSpline(4, init="absolute_value").tv2().item() == pytest.approx(8.0, rel=1e-5)


@pytest.mark.parametrize("p", PS)
def test_spline_slopes_clipped_after_gradient_step(p):
    torch.manual_seed(0)
    s = lipkit.LinearSpline(3, num_knots=11, knot_range=2.0, init="identity")
    opt = torch.optim.SGD(s.parameters(), lr=5.0)
    x = torch.linspace(-3, 3, 200).view(-1, 1).repeat(1, 3)
    # push the slope up: maximise the output at large x, minimise it at small x
    loss = -(s(x) * x).sum()
    loss.backward()
    opt.step()
    raw = torch.diff(s.coefficients.detach(), dim=1) / s.step
    assert raw.abs().max() > 1.5  # the raw parameters now describe slopes above 1 ...
    bound = lipkit.lipschitz_bound(s, p)
    # ... but the forward pass clips them (the bound is rounded up from the float64 knot values)
    assert 1.0 <= bound <= 1.0 + 1e-12
    s = s.double()
    xs, ys = sample_pairs((3,), seed=1)
    ratio = lipschitz_ratio(s, xs, ys, p)
    assert ratio <= bound + 1e-9
    assert ratio > 0.99


def test_spline_non_unit_slopes_bound_is_max_slope():
    s = lipkit.LinearSpline(2, num_knots=5, knot_range=2.0, init="identity")  # knots -2..2, h = 1
    with torch.no_grad():
        s.coefficients.copy_(torch.tensor([[0.0, 0.5, 0.5, 0.0, -0.25], [0.0, 0.1, 0.2, 0.3, 0.4]]))
    assert lipkit.lipschitz_bound(s, 2) == pytest.approx(0.5)
    x = torch.tensor([[-2.0, 10.0], [-1.5, -10.0]])
    # channel 0 at -1.5: 0.25 ; channel 1 at 10 (extrapolated, slope 0.1): 0.4 + 0.1 * 8 = 1.2
    out = s(x)
    assert out[1, 0].item() == pytest.approx(0.25)
    assert out[0, 1].item() == pytest.approx(1.2)


def test_spline_errors():
    with pytest.raises(ValueError, match="channels"):
        lipkit.LinearSpline(3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="unknown init"):
        lipkit.LinearSpline(3, init="tanh")
    with pytest.raises(ValueError, match="num_knots"):
        lipkit.LinearSpline(3, num_knots=2)


def test_activations_in_a_sequential_compose():
    net = nn.Sequential(nn.Linear(4, 6), lipkit.MaxMin(), lipkit.LinearSpline(6), lipkit.Householder(6))
    b = lipkit.lipschitz_bound(net, 2)
    assert b == pytest.approx(lipkit.lipschitz_bound(net[0], 2), rel=1e-9)
