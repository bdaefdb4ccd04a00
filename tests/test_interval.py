"""Interval certificates (lipkit.certify.interval): sound boxes, exact for one distance layer, never looser
than the margin certificate, and no certified point broken by PGD."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from linf_helpers import linf_cfg
from torch import nn

import lipkit
from lipkit.bounds import UnsupportedModuleError
from lipkit.certify.attacks import pgd
from lipkit.certify.interval import (
    interval_bounds,
    interval_certified,
    interval_certified_accuracy,
    interval_only,
)
from lipkit.certify.margin import compute_certificates
from lipkit.training.config import RunConfig
from lipkit.training.data import load_digits_split
from lipkit.training.linf import Negate
from lipkit.training.trainer import fit

INF = math.inf


def _random_net(kind: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    if kind == "linf":
        layers = [lipkit.LinfDistLinear(6, 10), lipkit.LinfDistLinear(10, 8),
                  lipkit.LinfDistLinear(8, 3, mean_shift=False), Negate()]
    elif kind == "sortnet":
        layers = [lipkit.LinfDistLinear(6, 10), lipkit.SortNeuronLinear(10, 8, q=0.4, init="normal"),
                  lipkit.LinfDistLinear(8, 3, mean_shift=False), Negate()]
    else:  # hybrid head and a plain ReLU MLP part
        layers = [lipkit.LinfDistLinear(6, 10), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(0.5, 1.5)
            if isinstance(m, lipkit.LinfDistLinear) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("kind", ["linf", "sortnet", "hybrid"])
@pytest.mark.parametrize("domain", [None, (0.0, 1.0)])
def test_boxes_contain_every_sampled_output(kind, domain) -> None:
    net = _random_net(kind)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 6, generator=g)
    eps = 0.2
    lo, hi = interval_bounds(net, x, eps, input_domain=domain)
    assert lo.dtype == torch.float64 and lo.shape == (5, 3) and bool((lo <= hi).all())
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)), dtype=torch.float64)
    _assert_samples_inside(net, x, eps, domain, lo, hi, corners, 3000, g)
    if kind != "hybrid":  # every logit is 1-Lipschitz: the Lipschitz intersection caps each box at 2 eps
        assert float((hi - lo).max()) <= 2 * eps + 1e-9


def _assert_samples_inside(net: nn.Module, x: torch.Tensor, eps: float, domain, lo: torch.Tensor,
                           hi: torch.Tensor, corners: torch.Tensor, n_random: int,
                           g: torch.Generator) -> None:
    """The float64 net at ``corners`` (offsets in {-1, 1}^n) and ``n_random`` uniform points of each
    ball ``x_b + eps [-1, 1]^n`` (clipped to ``domain``) stays inside the boxes ``[lo_b, hi_b]``."""
    twin = _float64(net)
    for b in range(x.shape[0]):
        rand = 2 * torch.rand(n_random, x.shape[1], generator=g, dtype=torch.float64) - 1
        pts = x[b].double() + torch.cat([corners, rand]) * eps
        if domain is not None:
            pts = pts.clamp(*domain)
        with torch.no_grad():
            out = twin(pts)
        assert bool((out >= lo[b] - 1e-12).all() and (out <= hi[b] + 1e-12).all())


def _float64(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).double().eval()


def test_one_distance_layer_box_is_exact() -> None:
    torch.manual_seed(3)
    layer = lipkit.LinfDistLinear(3, 5, mean_shift=False, bias=False).eval()
    x = torch.rand(4, 3)
    eps = 0.15
    lo, hi = interval_bounds(layer, x, eps)
    w = layer.weight.detach().double()
    corners = torch.tensor(list(itertools.product([-eps, eps], repeat=3)), dtype=torch.float64)
    for b in range(4):
        box_lo, box_hi = x[b].double() - eps, x[b].double() + eps
        top = (x[b].double() + corners)[:, None, :].sub(w).abs().amax(-1).amax(0)  # max at a corner
        nearest = torch.minimum(torch.maximum(w, box_lo), box_hi)  # per-neuron minimiser
        bottom = (nearest - w).abs().amax(-1)  # each |h_i - w_oi| is smallest at h_i = clamp(w_oi)
        torch.testing.assert_close(hi[b], top, rtol=0, atol=1e-10)
        torch.testing.assert_close(lo[b], bottom, rtol=0, atol=1e-10)


def _cfg(**kw) -> RunConfig:
    return linf_cfg(**{"widths": [64, 64], "epochs": 8, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    s = load_digits_split()
    split = dataclasses.replace(s, x_test=s.x_test[:200], y_test=s.y_test[:200])
    model, _ = fit(_cfg(), tmp_path_factory.mktemp("run"), split=split, progress=False)
    return model.eval(), split.x_test, split.y_test


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_never_looser_than_margin_certificate_and_domain_only_adds(trained, eps) -> None:
    model, x, y = trained
    res = compute_certificates(model, x, INF)
    by_margin = res.radius >= eps
    assert int(by_margin.sum()) >= 20  # the trained net certifies something
    # the interval test alone (every logit of this net is 1-Lipschitz) already contains the margin test
    alone, pred = interval_only(model, x, eps, None)
    assert torch.equal(pred, res.prediction)
    assert bool((alone | ~by_margin).all())
    whole, pred1 = interval_certified(model, x, eps, batch_size=37)
    clipped, pred2 = interval_certified(model, x, eps, input_domain=(0.0, 1.0))
    assert torch.equal(pred, pred1) and torch.equal(pred, pred2)
    assert torch.equal(whole, alone | by_margin)
    assert bool((clipped | ~whole).all())  # the clipped box is a subset of the whole box
    assert int(clipped.sum()) > int(by_margin.sum())  # the pixel domain certifies more points here
    acc = interval_certified_accuracy(model, x, y, eps, input_domain=(0.0, 1.0))
    assert acc == pytest.approx(float((clipped & (pred == y)).double().mean()), abs=1e-12)


def test_interval_certified_points_survive_pgd_in_the_domain(trained) -> None:
    model, x, y = trained
    eps = 0.1
    cert, pred = interval_certified(model, x, eps, input_domain=(0.0, 1.0))
    idx = cert.nonzero().squeeze(1)
    assert idx.numel() >= 20
    g = torch.Generator().manual_seed(0)
    adv = pgd(model, x[idx], pred[idx], eps, INF, steps=60, restarts=2, clamp=(0.0, 1.0), generator=g)
    assert float((adv - x[idx]).abs().max()) <= eps * (1 + 1e-6)
    # the same attack at 3 eps breaks some points: it is not toothless
    adv3 = pgd(model, x, pred, 3 * eps, INF, steps=60, restarts=2, clamp=(0.0, 1.0), generator=g)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), pred[idx])
        assert int((model(adv3).argmax(1) != pred).sum()) > 0


def test_bad_inputs_raise_clear_errors() -> None:
    net = _random_net("linf")
    x = torch.rand(4, 6)
    with pytest.raises(ValueError, match="eps must be finite"):
        interval_certified(net, x, -0.1)
    with pytest.raises(ValueError, match="outside input_domain"):
        interval_certified(net, x + 2.0, 0.1, input_domain=(0.0, 1.0))
    with pytest.raises(ValueError, match="lo < hi"):
        interval_bounds(net, x, 0.1, input_domain=(1.0, 0.0))
    with pytest.raises(ValueError, match="pair"):
        interval_bounds(net, x, 0.1, input_domain=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        interval_certified(net, x, 0.1, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        interval_certified_accuracy(net, x, torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        interval_certified(net, torch.full((2, 6), math.nan), 0.1)
    with pytest.raises(UnsupportedModuleError, match="Conv2d"):
        interval_bounds(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), torch.rand(1, 1, 5, 5), 0.1)
    lp = _random_net("linf")
    lp[0].p = 8.0
    with pytest.raises(UnsupportedModuleError, match="LinfDistLinear"):
        interval_bounds(lp, x, 0.1)


@pytest.mark.parametrize("kind", ["linf", "sortnet"])
def test_forward_error_bound_covers_float64_round_off_exactly_computed(kind) -> None:
    from fractions import Fraction

    from lipkit.certify.interval import reference_error

    torch.manual_seed(7)
    if kind == "linf":
        layer = lipkit.LinfDistLinear(5, 4)
    else:
        layer = lipkit.SortNeuronLinear(5, 4, q=0.3, init="normal")
    layer = layer.double().eval()
    with torch.no_grad():  # large shifts: cancellation in y = d - mu + b
        layer.running_mean.uniform_(1e3, 2e3)
        layer.bias = nn.Parameter(torch.empty(4, dtype=torch.float64).uniform_(-1e3, 1e3))
    x = torch.rand(6, 5, dtype=torch.float64) * 3 + 1 / 3
    with torch.no_grad():
        out = layer(x)
    bound = reference_error(layer, out)
    w, mu, b = layer.weight.detach(), layer.running_mean, layer.bias.detach()
    coef = [Fraction(float(c)) for c in layer.coefficients] if kind == "sortnet" else [Fraction(1)]
    seen = 0.0
    for s in range(6):
        worst = 0.0
        for o in range(4):
            d = sorted((abs(Fraction(float(x[s, i])) - Fraction(float(w[o, i]))) for i in range(5)),
                       reverse=True)
            exact = sum(c * di for c, di in zip(coef, d, strict=False))
            exact = exact - Fraction(float(mu[o])) + Fraction(float(b[o]))
            worst = max(worst, abs(float(Fraction(float(out[s, o])) - exact)))
        assert worst <= float(bound[s]), (worst, float(bound[s]))
        seen = max(seen, worst)
    assert seen > 0  # float64 did round here: the comparison is not vacuous


# --------------------------------------------------------------------------- conv distance layers


def _conv_net(seed: int = 0) -> nn.Sequential:
    """A small l_inf-distance / SortNet conv net on 1 x 5 x 5 images, with populated running means."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Unflatten(1, (1, 5, 5)),
                        lipkit.LinfDistConv2d(1, 4, 3, padding=1),
                        lipkit.SortNeuronConv2d(4, 3, 2, stride=2, q=0.4, init="normal"),
                        nn.Flatten(), lipkit.LinfDistLinear(12, 3, mean_shift=False), Negate())
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 25))
        for m in net.modules():
            if isinstance(m, (lipkit.LinfDistConv2d, lipkit.SortNeuronConv2d)) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("domain", [None, (0.0, 1.0)])
def test_conv_boxes_contain_every_sampled_output(domain) -> None:
    net = _conv_net()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 25, generator=g)
    eps = 0.15
    lo, hi = interval_bounds(net, x, eps, input_domain=domain)
    assert lo.shape == (3, 3) and bool((lo <= hi).all())
    assert float((hi - lo).max()) <= 2 * eps + 1e-9  # 1-Lipschitz logits: the intersection caps the box
    corners = torch.randint(0, 2, (2000, 25), generator=g).double() * 2 - 1  # random box corners
    _assert_samples_inside(net, x, eps, domain, lo, hi, corners, 2000, g)


@pytest.mark.parametrize("kind", ["linf", "sortnet"])
def test_conv_distance_box_equals_the_dense_box_of_each_patch(kind) -> None:
    """The conv box is the dense layer's (exact) box applied to every zero-padded patch box."""
    from lipkit.nn.intervals import distance_layer_box

    torch.manual_seed(4)
    conv = (lipkit.LinfDistConv2d(2, 3, 3, padding=1, stride=2) if kind == "linf"
            else lipkit.SortNeuronConv2d(2, 3, 3, padding=1, stride=2, q=0.3)).double()
    conv.train()
    with torch.no_grad():
        conv(torch.rand(8, 2, 5, 5, dtype=torch.float64))
    conv.eval()
    dense = (lipkit.LinfDistLinear(18, 3) if kind == "linf"
             else lipkit.SortNeuronLinear(18, 3, q=0.3)).double()
    with torch.no_grad():
        dense.weight.copy_(conv.weight.reshape(3, 18))
        dense.bias.copy_(conv.bias)
        dense.running_mean.copy_(conv.running_mean)
    dense.eval()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    lo, hi = distance_layer_box(conv, x - 0.1, x + 0.1)
    assert lo.shape == (2, 3, 3, 3)
    unfold = nn.Unfold(3, padding=1, stride=2)
    p_lo, p_hi = (unfold(t).transpose(1, 2).reshape(-1, 18) for t in (x - 0.1, x + 0.1))
    d_lo, d_hi = distance_layer_box(dense, p_lo, p_hi)
    assert torch.equal(lo, d_lo.view(2, 9, 3).transpose(1, 2).reshape(2, 3, 3, 3))
    assert torch.equal(hi, d_hi.view(2, 9, 3).transpose(1, 2).reshape(2, 3, 3, 3))
    with torch.no_grad():  # and the box holds the layer's value at the centre
        y = conv(x)
    assert bool((lo <= y).all() and (y <= hi).all())


def test_conv_net_interval_certificate_is_never_looser_than_the_margin() -> None:
    net = _conv_net(seed=1)
    x = torch.rand(30, 25, generator=torch.Generator().manual_seed(5))
    res = compute_certificates(net, x, INF)
    assert res.roundoff_rigorous  # conv distance layers have an a-priori round-off bound
    for eps in (0.01, 0.05):
        cert, pred = interval_certified(net, x, eps)
        assert torch.equal(pred, res.prediction)
        assert bool((cert >= (res.radius >= eps)).all())
        only, _ = interval_only(net, x, eps, None)
        assert bool((only >= (res.radius >= eps)).all())  # the interval test alone contains the margin test
