"""Tests for l_inf-distance / SortNet layers and their memory-bounded kernels."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import lipschitz_ratio, sample_pairs
from torch import nn

from lipkit.bounds import UnsupportedModuleError, lipschitz_bound
from lipkit.nn.distance.kernels import (
    chunk_plan,
    linf_dist,
    linf_dist_reference,
    lp_dist,
    lp_dist_reference,
    masked_linf_dist,
    sort_dist,
    sort_dist_reference,
    sortnet_coefficients,
)
from lipkit.nn.distance.layers import LinfDistLinear, SortNeuronLinear

D = torch.float64
TINY_BUDGET = 200  # bytes: forces blocks over the batch *and* the outputs


def _xw(b: int = 9, n: int = 11, m: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, dtype=D, generator=g).requires_grad_()
    w = torch.randn(m, n, dtype=D, generator=g).requires_grad_()
    return x, w


def _grads(fn, x, w, seed=1):
    y = fn(x, w)
    g = torch.randn(y.shape, dtype=D, generator=torch.Generator().manual_seed(seed))
    gx, gw = torch.autograd.grad(y, (x, w), g)
    return y.detach(), gx, gw


COEF = sortnet_coefficients(0.3, 11, 4)
COEF_FULL = sortnet_coefficients(0.2, 11)
CASES = {
    "linf": (lambda x, w: linf_dist(x, w, budget_bytes=TINY_BUDGET), linf_dist_reference),
    "lp3": (lambda x, w: lp_dist(x, w, 3.0, budget_bytes=TINY_BUDGET),
            lambda x, w: lp_dist_reference(x, w, 3.0)),
    "lp8": (lambda x, w: lp_dist(x, w, 8.0, budget_bytes=TINY_BUDGET),
            lambda x, w: lp_dist_reference(x, w, 8.0)),
    "lp1": (lambda x, w: lp_dist(x, w, 1.0), lambda x, w: lp_dist_reference(x, w, 1.0)),
    "lp2.5": (lambda x, w: lp_dist(x, w, 2.5, budget_bytes=TINY_BUDGET),
              lambda x, w: lp_dist_reference(x, w, 2.5)),
    "lp13": (lambda x, w: lp_dist(x, w, 13.0, budget_bytes=TINY_BUDGET),
             lambda x, w: lp_dist_reference(x, w, 13.0)),
    "sortK4": (lambda x, w: sort_dist(x, w, COEF, budget_bytes=TINY_BUDGET),
               lambda x, w: sort_dist_reference(x, w, COEF)),
    "sortFull": (lambda x, w: sort_dist(x, w, COEF_FULL, budget_bytes=TINY_BUDGET),
                 lambda x, w: sort_dist_reference(x, w, COEF_FULL)),
}


# --------------------------------------------------------------------------- kernels == naive


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_matches_naive_values_and_gradients(case: str, seed: int) -> None:
    fused, naive = CASES[case]
    x, w = _xw(seed=seed)
    y1, gx1, gw1 = _grads(fused, x, w)
    y2, gx2, gw2 = _grads(naive, x, w)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw1, gw2, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the no-grad fast path gives the same values
        torch.testing.assert_close(fused(x, w), y2, rtol=1e-12, atol=1e-12)


def test_linf_matches_naive_float32_bitwise() -> None:
    x = torch.randn(33, 50, requires_grad=True)
    w = torch.randn(21, 50, requires_grad=True)
    g = torch.randn(33, 21)
    y1 = linf_dist(x, w, budget_bytes=1000)
    y2 = linf_dist_reference(x, w)
    assert torch.equal(y1, y2)
    gx1, gw1 = torch.autograd.grad(y1, (x, w), g)
    gx2, gw2 = torch.autograd.grad(y2, (x, w), g)
    torch.testing.assert_close(gx1, gx2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw1, gw2, rtol=1e-6, atol=1e-6)
    # the chosen index is the first maximal one, as torch.max(dim) reports on tie-free data
    d = (x[:, None] - w[None]).abs().detach()
    first = d.max(dim=2).indices
    gsel = torch.autograd.grad(linf_dist(x, w)[:, 3].sum(), x)[0]
    assert torch.equal(gsel.abs().argmax(1), first[:, 3])


def test_masked_equals_max_over_kept_columns() -> None:
    x, w = _xw()
    mask = torch.tensor([True, False, True, True, False, False, True, False, False, True, False])
    y1, gx1, gw1 = _grads(lambda a, b: masked_linf_dist(a, b, mask, budget_bytes=TINY_BUDGET), x, w)
    y2, gx2, gw2 = _grads(lambda a, b: linf_dist_reference(a[:, mask], b[:, mask]), x, w)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1, gw2)
    assert (gx1[:, ~mask] == 0).all() and (gw1[:, ~mask] == 0).all()


def test_gradcheck_linf_and_sort() -> None:
    x, w = _xw(b=3, n=5, m=4, seed=5)
    assert torch.autograd.gradcheck(lambda a, b: linf_dist(a, b, budget_bytes=64), (x, w))
    c = sortnet_coefficients(0.5, 5, 3)
    assert torch.autograd.gradcheck(lambda a, b: sort_dist(a, b, c, budget_bytes=64), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: lp_dist(a, b, 4.0, budget_bytes=64), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_give_a_deterministic_valid_subgradient(dtype: torch.dtype) -> None:
    # integer data: many tied distances.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (6, 8), generator=g).to(dtype).requires_grad_()
    w = torch.randint(-2, 3, (5, 8), generator=g).to(dtype).requires_grad_()
    for o in range(5):
        y = linf_dist(x, w)[:, o]
        gx, gw = torch.autograd.grad(y.sum(), (x, w))
        gx2, _ = torch.autograd.grad(linf_dist(x, w)[:, o].sum(), (x, w))
        assert torch.equal(gx, gx2)  # deterministic
        assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
        d = (x - w[o]).detach()
        for b in range(6):
            nz = gx[b].nonzero().flatten()
            if y[b].item() == 0:  # x == w: 0 is the subgradient chosen
                assert nz.numel() == 0
                continue
            assert nz.numel() == 1  # exactly one coordinate, weight 1: in the Clarke subdifferential
            i = nz.item()
            assert d[b, i].abs().item() == y[b].item()  # ... and it attains the max
            assert gx[b, i].item() == torch.sign(d[b, i]).item()
        assert torch.equal(gw[o], -gx.sum(0))  # grad_w mirrors grad_x for this neuron
    # the all-tied corner x == w: zero value, zero gradient, no NaN
    xe = w[:1].detach().clone().requires_grad_()
    ye = linf_dist(xe, w[:1].detach())
    (gxe,) = torch.autograd.grad(ye.sum(), xe)
    assert ye.item() == 0 and torch.equal(gxe, torch.zeros_like(gxe))
    # lp kernel at zero distance: finite zero gradient (naive autograd gives NaN here)
    (gxp,) = torch.autograd.grad(lp_dist(xe, w[:1].detach(), 4.0).sum(), xe)
    assert torch.equal(gxp, torch.zeros_like(gxp))


# --------------------------------------------------------------------------- memory


def test_chunk_plan_respects_budget() -> None:
    for b, m, n, e, budget in [(512, 1024, 784, 4, 8 * 2**20), (7, 3, 5, 8, 64), (100000, 10, 3000, 4, 2**20),
                               (1, 1, 1, 4, 1)]:
        bb, ob = chunk_plan(b, m, n, e, budget)
        assert 1 <= bb <= b and 1 <= ob <= m
        assert bb * ob * n * e <= max(budget, n * e)
    assert chunk_plan(512, 1024, 784, 4, 8 * 2**20) == (512, 5)


def test_forward_backward_never_allocate_the_broadcast_tensor() -> None:
    from torch.profiler import ProfilerActivity, profile

    b, n, m = 64, 512, 256
    full = b * n * m * 4  # 32 MiB
    x = torch.randn(b, n, requires_grad=True)
    w = torch.randn(m, n, requires_grad=True)

    def biggest(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn(x, w).sum().backward()
        return max(e.cpu_memory_usage for e in prof.events())

    fused = biggest(lambda a, c: linf_dist(a, c, budget_bytes=2**20))
    naive = biggest(linf_dist_reference)
    assert naive >= full  # the probe does see the naive B x m x n allocation
    assert fused <= 2**20 + 4 * b * m * 8  # scratch + (B x m) outputs/indices/signs
    assert fused < full / 8


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors() -> None:
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    with pytest.raises(ValueError, match="in_features mismatch"):
        linf_dist(x, torch.randn(3, 6))
    with pytest.raises(ValueError, match="expected x of shape"):
        linf_dist(torch.randn(4, 5, 1), w)
    with pytest.raises(TypeError, match="dtype"):
        linf_dist(x.double(), w)
    with pytest.raises(ValueError, match="NaN"):
        linf_dist(torch.full((4, 5), math.nan), w)
    with pytest.raises(ValueError, match="weight contains NaN"):
        lp_dist(x, torch.full((3, 5), math.inf), 2.0)
    with pytest.raises(ValueError, match="p must be >= 1"):
        lp_dist(x, w, 0.5)
    with pytest.raises(ValueError, match="keeps no input"):
        masked_linf_dist(x, w, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        masked_linf_dist(x, w, torch.ones(5))
    with pytest.raises(ValueError, match="coeffs"):
        sort_dist(x, w, torch.ones(6))
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\]"):
        sortnet_coefficients(0.0, 5)
    layer = LinfDistLinear(5, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 5\)"):
        layer(torch.randn(4, 6))
    with pytest.raises(ValueError, match="at least 2 samples"):
        layer(torch.randn(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        layer.eval()(torch.full((2, 5), math.nan))
    with pytest.raises(ValueError, match="p must be"):
        layer.p = 0.5
    with pytest.raises(ValueError, match="unknown init"):
        LinfDistLinear(5, 3, init="xavier")
    with pytest.raises(ValueError, match="out_features must be a positive int"):
        LinfDistLinear(5, 0)
    with pytest.raises(ValueError, match="q must be"):
        SortNeuronLinear(5, 3, q=1.5)


# --------------------------------------------------------------------------- layer semantics


def test_sortnet_coefficients() -> None:
    c = sortnet_coefficients(0.25, 6)
    assert c.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert (c[1:] / c[:-1] - 0.75).abs().max().item() < 1e-14  # geometric ratio 1 - q
    assert sortnet_coefficients(1.0, 6).tolist() == [1.0]
    assert sortnet_coefficients(0.5, 6, 3).numel() == 3 and sortnet_coefficients(0.5, 2, 9).numel() == 2


def test_sortnet_truncation_error_within_documented_bound() -> None:
    n, q, k = 12, 0.2, 4
    x, w = torch.randn(30, n, dtype=D), torch.randn(6, n, dtype=D)
    full = sort_dist(x, w, sortnet_coefficients(q, n))
    trunc = sort_dist(x, w, sortnet_coefficients(q, n, k))
    tail = ((1 - q) ** k - (1 - q) ** n) / (1 - (1 - q) ** n)
    d = (x[:, None] - w[None]).abs()
    spread = d.amax(2) - d.amin(2)
    assert ((full - trunc).abs() <= tail * spread + 1e-12).all()
    assert (full - trunc).abs().max().item() > 0.05 * tail * spread.max().item()  # bound is not vacuous


def test_sortnet_masked_training_is_unbiased_for_eval_output() -> None:
    # exact expectation over every non-empty Bernoulli(q) mask equals the sorted-sum neuron
    n, q = 6, 0.35
    x, w = torch.randn(5, n, dtype=D), torch.randn(4, n, dtype=D)
    expect = torch.zeros(5, 4, dtype=D)
    for bits in itertools.product([False, True], repeat=n):
        if not any(bits):
            continue
        mask = torch.tensor(bits)
        k = sum(bits)
        expect += q**k * (1 - q) ** (n - k) * masked_linf_dist(x, w, mask)
    expect /= 1 - (1 - q) ** n
    exact = sort_dist(x, w, sortnet_coefficients(q, n))
    torch.testing.assert_close(expect, exact, rtol=1e-12, atol=1e-12)
    # the layer: training-mode average over draws approaches its eval output
    torch.manual_seed(0)
    layer = SortNeuronLinear(n, 4, q=q, mean_shift=False, sub_batch=1, dtype=D)
    xs = torch.randn(1, n, dtype=D).expand(4000, n)
    with torch.no_grad():
        mc = layer.train()(xs).mean(0)
        ev = layer.eval()(xs[:1])[0]
    assert (mc - ev).abs().max().item() < 0.06


def test_mean_shift_train_and_eval() -> None:
    torch.manual_seed(0)
    layer = LinfDistLinear(6, 4, momentum=0.5)
    x = torch.randn(32, 6)
    y = layer(x)
    assert y.mean(0).abs().max().item() < 1e-5  # batch-centred (bias 0)
    raw = linf_dist_reference(x, layer.weight.detach())
    torch.testing.assert_close(layer.running_mean, 0.5 * raw.mean(0))
    layer.eval()
    with torch.no_grad():
        layer.bias.fill_(0.25)
        torch.testing.assert_close(layer(x), raw - layer.running_mean + 0.25)
        assert layer(x[:3].reshape(3, 1, 6)).shape == (3, 1, 4)  # leading dims kept


def test_identity_init_is_identity_up_to_constant() -> None:
    layer = LinfDistLinear(8, 8, mean_shift=False, identity_scale=10.0, dtype=D)
    x = torch.rand(20, 8, dtype=D) * 8 - 4  # |x| < C / 2
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x + 10.0)
    wide = LinfDistLinear(4, 6, init="identity")
    assert torch.equal(wide.weight[:4, :4], -10.0 * torch.eye(4))
    assert LinfDistLinear(4, 6).weight.abs().min().item() > 0  # auto -> normal when not square


# --------------------------------------------------------------------------- Lipschitz bounds


@pytest.mark.parametrize("kind", ["linf", "sort"])
def test_sampled_pairs_never_break_linf_bound(kind: str) -> None:
    torch.manual_seed(1)

    def make(i, o, last=False):
        if kind == "linf":
            return LinfDistLinear(i, o, mean_shift=not last, dtype=D)
        return SortNeuronLinear(i, o, q=0.3, mean_shift=not last, dtype=D)

    net = nn.Sequential(make(10, 12), make(12, 12), make(12, 3, last=True))
    net(torch.randn(64, 10, dtype=D))  # fill running means
    net.eval()
    bound = lipschitz_bound(net, math.inf)
    assert bound == pytest.approx(1.0, abs=1e-12)
    x, x2 = sample_pairs((10,), scale=3.0)
    r = lipschitz_ratio(net, x, x2, math.inf)
    assert r <= bound + 1e-12
    assert r > 0.5  # not vacuous: some pairs move the output by a good part of the input change
    if kind == "sort":  # a realised training mask is still 1-Lipschitz (no mean shift, fixed mask)
        torch.manual_seed(3)
        layer = SortNeuronLinear(10, 5, q=0.3, mean_shift=False, sub_batch=10**6, dtype=D).train()
        state = torch.get_rng_state()

        def f(z):
            torch.set_rng_state(state)
            return layer(z)

        assert lipschitz_ratio(f, x, x2, math.inf) <= 1 + 1e-12


def test_linf_layer_single_coordinate_is_tight() -> None:
    layer = LinfDistLinear(6, 4, mean_shift=False, dtype=D)
    x = torch.randn(50, 6, dtype=D)
    with torch.no_grad():
        i_star = (x[:, None] - layer.weight[None]).abs().argmax(2)[:, 0]
        d = x - layer.weight[0]
        x2 = x.clone()
        step = 1e-3 * torch.sign(d[torch.arange(50), i_star])
        x2[torch.arange(50), i_star] += step  # push the maximal coordinate further
        y1, y2 = layer(x)[:, 0], layer(x2)[:, 0]
    torch.testing.assert_close((y2 - y1).abs(), step.abs(), rtol=1e-9, atol=1e-12)


def test_bounds_for_p2_p1_and_relaxation_are_sound_and_attained() -> None:
    m, n = 5, 9
    layer = LinfDistLinear(n, m, mean_shift=False, dtype=D).eval()
    assert lipschitz_bound(layer, "inf") == 1.0
    assert lipschitz_bound(layer, 2) == pytest.approx(math.sqrt(m), rel=1e-12)
    assert lipschitz_bound(layer, 1) == m
    with torch.no_grad():
        layer.weight.zero_()  # every neuron takes its max on coordinate 0 below
    x = torch.zeros(1, n, dtype=D)
    x[0, 0] = 3.0
    x2 = x.clone()
    x2[0, 0] = 3.5
    assert lipschitz_ratio(layer, x, x2, 2) == pytest.approx(math.sqrt(m), rel=1e-12)  # sqrt(m) is attained
    assert lipschitz_ratio(layer, x, x2, 1) == pytest.approx(m, rel=1e-12)
    xs, x2s = sample_pairs((n,), scale=3.0)
    layer.reset_parameters()
    assert lipschitz_ratio(layer, xs, x2s, 2) <= lipschitz_bound(layer, 2)
    # l_r relaxation: n^{1/r} w.r.t. l_inf, attained at w = 0, x = 1, x' = 1.1
    layer.p = 4.0
    bound = lipschitz_bound(layer, math.inf)
    assert bound == pytest.approx(n**0.25, rel=1e-12) and bound >= n**0.25
    with torch.no_grad():
        layer.weight.zero_()
    ones = torch.ones(1, n, dtype=D)
    assert lipschitz_ratio(layer, ones, 1.1 * ones, math.inf) == pytest.approx(n**0.25, rel=1e-12)
    layer.reset_parameters()
    assert lipschitz_ratio(layer, xs, x2s, math.inf) <= bound
    layer.p = 1.5  # r < 2: l2 bound grows by n^{1/r - 1/2}
    assert lipschitz_bound(layer, 2) == pytest.approx(math.sqrt(m) * n ** (1 / 1.5 - 0.5), rel=1e-12)
    assert lipschitz_ratio(layer, xs, x2s, 2) <= lipschitz_bound(layer, 2)


def test_bound_refuses_mean_shift_in_training_mode() -> None:
    layer = LinfDistLinear(4, 3)
    with pytest.raises(UnsupportedModuleError, match="eval"):
        lipschitz_bound(layer, math.inf)
    assert lipschitz_bound(LinfDistLinear(4, 3, mean_shift=False), math.inf) == 1.0
    assert lipschitz_bound(SortNeuronLinear(4, 3).eval(), math.inf) == 1.0


# --------------------------------------------------------------------------- certify vs attack


def _pgd_linf(net, x, y, eps, steps=40):
    """Minimise the margin f_y - max_{j != y} f_j inside the l_inf ball (random start)."""
    delta = (torch.rand_like(x) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        out = net(x + delta)
        m = _margin(out, y)
        (g,) = torch.autograd.grad(m.sum(), delta)
        with torch.no_grad():
            delta = (delta - eps / 8 * torch.sign(g)).clamp(-eps, eps)
    with torch.no_grad():
        return _margin(net(x + delta), y)


def _margin(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = out.gather(1, y[:, None]).squeeze(1)
    other = out.masked_fill(nn.functional.one_hot(y, out.shape[1]).bool(), -math.inf).amax(1)
    return true - other


def test_tiny_net_certificates_survive_pgd() -> None:
    torch.manual_seed(0)
    n = 200
    y = torch.randint(0, 2, (n,))
    x = torch.randn(n, 2) * 0.3 + (y[:, None].float() * 2 - 1) * torch.tensor([1.0, 0.5])
    net = nn.Sequential(LinfDistLinear(2, 16), LinfDistLinear(16, 16),
                        LinfDistLinear(16, 2, mean_shift=False))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        loss = nn.functional.relu(0.6 - _margin(net(x), y)).mean()  # hinge on the margin
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert lipschitz_bound(net, math.inf) == pytest.approx(1.0, abs=1e-12)
    with torch.no_grad():
        margin = _margin(net(x), y)
    radius = margin / 2  # 1-Lipschitz logits: the margin moves by at most 2 * ||delta||_inf
    cert = radius > 0.05
    assert cert.float().mean().item() > 0.8  # training worked: most points certified
    xc, yc, rc = x[cert], y[cert], radius[cert]
    attacked = _pgd_linf(net, xc, yc, (0.999 * rc)[:, None])
    assert (attacked > 0).all()  # no certified point is broken
    assert (margin[cert] - attacked <= 2 * 0.999 * rc + 1e-5).all()  # the margin never drops faster
    assert (margin[cert] - attacked).mean().item() > 0.3 * rc.mean().item()  # and PGD does push on it


@pytest.mark.parametrize("q", [0.5, 0.2])
def test_default_top_k_is_the_full_sortnet_to_float_precision(q):
    from lipkit.nn.distance.kernels import sortnet_coefficients

    n = 300
    short, full = sortnet_coefficients(q, n), sortnet_coefficients(q, n, k=n)
    assert len(short) < n and float(full[len(short):].sum()) <= 2.0**-30 * (1 + 1e-9)
    assert float(short.sum()) == pytest.approx(1.0, abs=1e-15) and bool((short >= 0).all())
    torch.manual_seed(0)
    layer = SortNeuronLinear(n, 7, q=q).eval()
    exact = SortNeuronLinear(n, 7, q=q, k=n).eval()
    exact.load_state_dict(layer.state_dict())
    x = torch.randn(16, n, dtype=torch.float64)
    with torch.no_grad():
        layer.double(), exact.double()
        torch.testing.assert_close(layer(x), exact(x), rtol=1e-8, atol=1e-8)
