"""LinearSpline and FrozenLinearSpline: bounds, the slope map, TV(2), round-off, sparsification, export,
gradient sensitivity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lipkit
from lipkit.certify.roundoff import U32, U64, forward_error_bound, spline_error_terms
from lipkit.nn.spline import FrozenLinearSpline, constraint_jacobian_norms

CONFIGS = [
    dict(constraint="clamp"),
    dict(constraint="project"),
    dict(constraint="project", slope_bounds=(0.0, 1.0)),
    dict(constraint="clamp", slope_bounds=(-0.5, 0.25), learn_scale=True),
    dict(constraint="project", learn_scale=True),
]


def _trained(cfg: dict, channels: int = 4, seed: int = 0, knots: int = 11) -> lipkit.LinearSpline:
    """A spline trained to fit a steep random target (slopes pushed against the bounds), then perturbed."""
    torch.manual_seed(seed)
    s = lipkit.LinearSpline(channels, num_knots=knots, knot_range=2.0, init="identity", **cfg)
    opt = torch.optim.Adam(s.parameters(), lr=0.2)
    x = 3 * torch.randn(256, channels)
    target = 3 * torch.sin(3 * x) + 2 * x
    for _ in range(30):
        opt.zero_grad()
        ((s(x) - target) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        s.coefficients.add_(0.5 * torch.randn_like(s.coefficients))
    return s


def _pairs(channels: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(600, channels, generator=g)
    close = x + 0.05 * torch.randn(600, channels, generator=g)
    far = 3 * torch.randn(600, channels, generator=g)
    return torch.cat([x, x]).to(dtype), torch.cat([close, far]).to(dtype)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_sampled_pairs_never_break_the_bound(cfg):
    s = _trained(cfg)
    raw = torch.diff(s.coefficients.detach(), dim=1) / s.step
    lo, hi = cfg.get("slope_bounds", (-1.0, 1.0))
    assert (raw > hi + 0.1).any() or (raw < lo - 0.1).any()  # the stored coefficients are out of bounds
    bound = lipkit.lipschitz_bound(s, 2)
    assert bound <= max(abs(lo), abs(hi)) * (1 + 1e-12)
    for p in (1, 2, math.inf):
        assert lipkit.lipschitz_bound(s, p) == bound
    # float64 evaluation of the same function (float64 round-off allowance)
    s64 = copy.deepcopy(s).double()
    assert lipkit.lipschitz_bound(s64, 2) == bound
    x, y = _pairs(4, 1, torch.float64)
    a64, b64 = spline_error_terms(s64, U64)
    with torch.no_grad():
        diff = (s64(x) - s64(y)).abs()
    assert (diff <= bound * (x - y).abs() + 2 * a64 + b64 * (x.abs() + y.abs())).all()
    ratio = (diff / (x - y).abs()).max().item()
    assert ratio <= bound * (1 + 1e-9)
    assert ratio >= 0.9 * bound  # the bound is attained by pairs inside the steepest piece
    # float32: entry-wise, the bound plus the stated round-off allowance of both evaluations
    x, y = _pairs(4, 2)
    a, b = spline_error_terms(s, U32)
    with torch.no_grad():
        d32 = (s(x) - s(y)).double().abs()
    allow = 2 * a + b * (x.double().abs() + y.double().abs())
    assert (d32 <= bound * (x - y).double().abs() + allow).all()
    # slopes really lie in the bounds, and slope_range says so
    sl = s.slopes()
    assert sl.min().item() >= lo - 1e-12 and sl.max().item() <= hi + 1e-12
    r_lo, r_hi = s.slope_range()
    assert r_lo <= sl.min().item() and r_hi >= sl.max().item()


def test_monotone_bounds_give_a_monotone_function():
    s = _trained(dict(constraint="project", slope_bounds=(0.0, 1.0)))
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)[:, None].repeat(1, 4)
    with torch.no_grad():
        y = s.double()(x)
    assert (torch.diff(y, dim=0) >= 0).all()
    assert s.slope_range()[0] >= -1e-12


@pytest.mark.parametrize("constraint", ["clamp", "project"])
def test_slope_map_is_idempotent(constraint):
    s = _trained(dict(constraint=constraint)).double()
    once = s.constrained_coefficients().detach()
    twice = s._constrain(once)
    assert torch.allclose(once, twice, rtol=0, atol=1e-12)
    c = s.coefficients.detach()
    if constraint == "project":  # least-squares offset: the mean is kept
        assert once.mean(1).sub(c.mean(1)).abs().max() < 1e-12
    else:  # the middle knot keeps its value
        m = s.num_knots // 2
        assert torch.allclose(once[:, m], c[:, m], rtol=0, atol=1e-12)
    x = torch.linspace(-5, 5, 301, dtype=torch.float64)[:, None].repeat(1, 4)
    before = s(x).detach()
    s.project_()
    assert torch.allclose(s(x), before, atol=1e-12)
    raw = torch.diff(s.coefficients.detach(), dim=1) / s.step
    assert torch.allclose(raw, s.slopes().detach(), atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_tv2_is_the_total_variation_of_the_computed_derivative(cfg):
    s = _trained(cfg).double()
    if s.learn_scale:
        with torch.no_grad():
            s.log_scale.copy_(torch.tensor([0.3, -0.2, 0.0, 0.5], dtype=torch.float64))
    t, _ = s.knots_and_values()
    # sample the computed function at two points inside each piece, per channel
    a = t[:, :-1] + 0.25 * (t[:, 1:] - t[:, :-1])
    b = t[:, :-1] + 0.75 * (t[:, 1:] - t[:, :-1])
    with torch.no_grad():
        fa, fb = s(a.t().detach()), s(b.t().detach())
    slopes = ((fb - fa) / (b - a).t()).t()  # (C, K-1), the derivative on each piece
    direct = torch.diff(slopes, dim=1).abs().sum()
    assert s.tv2().item() == pytest.approx(direct.item(), rel=1e-9, abs=1e-9)
    # and where no slope is clipped it is the paper's sum |c_{k+2} - 2 c_{k+1} + c_k| / h
    fresh = lipkit.LinearSpline(3, init=lambda t: 0.5 * t.abs(), num_knots=11).double()
    paper = torch.diff(fresh.coefficients, n=2, dim=1).abs().sum() / fresh.step
    assert fresh.tv2().item() == pytest.approx(paper.item(), rel=1e-9)
    assert fresh.tv2().item() == pytest.approx(3.0, rel=1e-5)  # |x| / 2: slope change 1 per channel


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3]])
def test_gradcheck_float64(cfg):
    s = _trained(cfg, channels=3).double()
    g = torch.Generator().manual_seed(3)
    # inputs away from the knots (the function has kinks there), including the extensions
    x = (torch.rand(5, 3, generator=g, dtype=torch.float64) * 10 - 5)
    x = torch.where((x * s.scale()[None].detach() / s.step).frac().abs() < 0.05, x + 0.02, x)
    x.requires_grad_(True)
    params = [p for p in s.parameters()]

    def fn(inp, *ps):
        return torch.func.functional_call(s, {n: q for (n, _), q in zip(s.named_parameters(), ps,
                                                                         strict=True)}, (inp,))
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-7, atol=1e-6)


def test_pairs_straddling_a_knot_at_ulp_distance():
    s = _trained(dict(constraint="project"), channels=4)
    t, _ = s.knots_and_values()
    knots32 = t.detach().float()  # (C, K)
    x = knots32.t().contiguous()  # each row: one knot per channel
    up = torch.nextafter(x, torch.full_like(x, math.inf))
    down = torch.nextafter(x, torch.full_like(x, -math.inf))
    bound = lipkit.lipschitz_bound(s, 2)
    a, b = spline_error_terms(s, U32)
    with torch.no_grad():
        for u, v in ((down, x), (x, up), (down, up)):
            d = (s(u) - s(v)).double().abs()
            allow = 2 * a + b * (u.double().abs() + v.double().abs())
            assert (d <= bound * (u - v).double().abs() + allow).all()
    # the allowance is a few float32 ulps of the values involved, not a large slack
    assert (2 * a + 2 * b * 3).max().item() < 1e-4


def test_sparsified_spline_equals_the_original():
    torch.manual_seed(0)
    s = lipkit.LinearSpline(3, num_knots=41, knot_range=2.0, init="relu").double()
    with torch.no_grad():  # three real kinks per channel plus small wiggles
        t = s.knots
        c = torch.stack([torch.relu(t - 0.5) - torch.relu(-t - 1) * 0.5, (t - 1).abs() * 0.8,
                         -torch.relu(t + 0.2)])
        s.coefficients.copy_(c + 1e-5 * torch.randn_like(c))
    sp = s.sparsify(threshold=0.05)
    assert sp.knots.shape[1] < 10
    assert 0 < sp.tolerance < 0.02
    x = torch.linspace(-4, 4, 4001, dtype=torch.float64)[:, None].repeat(1, 3)
    with torch.no_grad():
        err = (sp(x) - s(x)).abs().max().item()
    assert err <= sp.tolerance + 1e-12
    assert lipkit.lipschitz_bound(sp, 2) <= lipkit.lipschitz_bound(s, 2)
    exact = s.sparsify(threshold=0.0)  # keeps every knot with a nonzero change: the same function
    with torch.no_grad():
        assert (exact(x) - s(x)).abs().max().item() < 1e-12


def test_freeze_and_export_keep_outputs_and_bound():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), _trained(dict(constraint="project"), channels=8, knots=21),
                        nn.Linear(8, 3))
    x = torch.randn(64, 5)
    ex = lipkit.export(net, x)
    assert any(isinstance(m, FrozenLinearSpline) for m in ex.modules())
    assert not any(isinstance(m, lipkit.LinearSpline) for m in ex.modules())
    with torch.no_grad():
        assert torch.equal(ex(x), net(x))
    assert lipkit.lipschitz_bound(ex, 2) == lipkit.lipschitz_bound(net, 2)
    # a sum of ReLUs would be bounded by |s_0| + sum |change of slope|: much larger for a trained spline
    sl = net[1].slopes().detach()
    relu_sum = (sl[:, :1].abs().sum(1) + torch.diff(sl, dim=1).abs().sum(1)).max().item()
    assert relu_sum > 2 * lipkit.lipschitz_bound(net[1], 2)


def test_frozen_spline_reproduces_the_spline_bit_for_bit():
    for cfg in CONFIGS:
        s = _trained(cfg, channels=16)
        if s.learn_scale:
            with torch.no_grad():
                s.log_scale.copy_(torch.linspace(-0.7, 0.7, 16))
        f = s.freeze()
        x = 3 * torch.randn(4096, 16)
        knots = s.knots_and_values()[0].detach().float().t()  # and points on the knots and next to them
        x = torch.cat([x, knots, torch.nextafter(knots, knots + 1), torch.nextafter(knots, knots - 1)])
        with torch.no_grad():
            assert torch.equal(f(x), s(x))
        assert lipkit.lipschitz_bound(f, 2) == lipkit.lipschitz_bound(s, 2)
    with torch.no_grad():  # knots that no longer match inv_step: refused, not bounded
        f.knots[:, 3] += 0.01
    with pytest.raises(lipkit.UnsupportedModuleError, match="not uniform"):
        lipkit.lipschitz_bound(f, 2)


def test_frozen_spline_conv_layout_and_errors():
    s = _trained(dict(constraint="clamp"), channels=3)
    f = s.freeze()
    x = 3 * torch.randn(2, 3, 5, 4)
    with torch.no_grad():
        assert torch.allclose(f(x), s(x), atol=1e-5)
    with pytest.raises(ValueError, match="strictly increasing"):
        FrozenLinearSpline(torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="channels"):
        f(torch.randn(2, 4))


def test_round_off_analysis_covers_splines():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), _trained(dict(constraint="project"), channels=8),
                        nn.Linear(8, 3)).float()
    x = torch.randn(32, 6)
    twin = nn.Sequential(*[m for m in copy.deepcopy(net).double()])
    e = forward_error_bound(list(twin), x.double(), 2.0, torch.zeros(32, dtype=torch.float64))
    assert e is not None
    with torch.no_grad():
        observed = torch.linalg.vector_norm(net(x).double() - twin(x.double()), dim=1)
    assert (observed <= e).all()
    assert e.max().item() < 1e-4  # a bound of a few ulps of the logits, not a vacuous one


def test_saved_memory_is_linear_in_batch_times_channels():
    s = lipkit.LinearSpline(16, num_knots=201, init="relu")
    x = torch.randn(512, 16, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel() if t.dim() and t.shape[0] == 512 else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s(x).sum().backward()
    assert sum(sizes) <= 6 * x.numel()  # no (batch, channels, knots) tensor is kept


def _per_example_grad_norms(s: lipkit.LinearSpline, x: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    params = {n: p.detach() for n, p in s.named_parameters()}

    def loss(ps, xi, gi):
        return (torch.func.functional_call(s, ps, (xi[None],))[0] * gi).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, g)
    return {n: torch.linalg.vector_norm(v.flatten(1), dim=1).max().item() for n, v in grads.items()}


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("shape", [(6,), (6, 3, 2)])
def test_sensitivity_rule_against_per_example_gradients(cfg, shape):
    s = _trained(cfg, channels=6, knots=9).double()
    if s.learn_scale:
        with torch.no_grad():
            s.log_scale.copy_(torch.linspace(-0.5, 0.5, 6, dtype=torch.float64))
    gen = torch.Generator().manual_seed(1)
    r, gnorm = 4.0, 2.0
    x = torch.randn(64, *shape, generator=gen, dtype=torch.float64)
    x[:8] = 0.0  # a knot (at 0) in every channel
    x[8:16] = x[8:16].sign() * 10  # far out on the extensions
    x = x * (r / torch.linalg.vector_norm(x.flatten(1), dim=1).clamp(min=1e-12)).view(-1, *[1] * len(shape))
    g = torch.randn(64, *shape, generator=gen, dtype=torch.float64)
    g[:8] = 1.0  # aligned gradients at the same knot
    g = g * (gnorm / torch.linalg.vector_norm(g.flatten(1), dim=1)).view(-1, *[1] * len(shape))
    bounds = lipkit.parameter_sensitivity(s, r, gnorm, input_shape=shape)
    got = _per_example_grad_norms(s, x, g)
    assert set(bounds) == set(got)
    for name in got:
        assert got[name] <= bounds[name], name
    with pytest.raises(lipkit.UnsupportedModuleError, match="input_shape"):
        lipkit.parameter_sensitivity(s, r, gnorm)
    assert lipkit.parameter_sensitivity(s.freeze(), r, gnorm) == {}  # no trainable tensors


def test_constraint_jacobian_is_identity_when_nothing_is_clipped():
    s = lipkit.LinearSpline(3, init="identity").double()
    with torch.no_grad():
        s.coefficients.mul_(0.5)
    assert torch.allclose(constraint_jacobian_norms(s), torch.ones(3, dtype=torch.float64), atol=1e-8)


def test_callable_init_is_sampled_and_projected():
    s = lipkit.LinearSpline(2, num_knots=31, init=lambda t: 2 * torch.sin(2 * t), slope_bounds=(-1, 1))
    assert s.slopes().abs().max().item() <= 1 + 1e-12
    assert lipkit.lipschitz_bound(s, 2) == pytest.approx(1.0, abs=1e-12)
    m = lipkit.LinearSpline(2, init="absolute_value", slope_bounds=(0.0, 1.0))
    assert m.slopes().min().item() >= 0


def test_bad_arguments_give_one_clear_error():
    with pytest.raises(ValueError, match="unknown constraint"):
        lipkit.LinearSpline(3, constraint="proj")
    with pytest.raises(ValueError, match="slope_bounds"):
        lipkit.LinearSpline(3, slope_bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="slope_bounds"):
        lipkit.LinearSpline(3, slope_bounds=1.0)
    with pytest.raises(ValueError, match="init function"):
        lipkit.LinearSpline(3, init=lambda t: t[:, :2])
    with pytest.raises(ValueError, match="floating-point"):
        lipkit.LinearSpline(3)(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        lipkit.LinearSpline(3).sparsify(-1.0)


def test_default_constraint_is_the_winner_of_the_1d_study():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "splines_1d.json"
    data = json.loads(path.read_text())
    cmp = data["constraint_validation_mse"]
    clamp_wins = sum(v["clamp"] <= v["project"] for v in cmp.values())
    assert data["constraint_winner"] == ("clamp" if 2 * clamp_wins >= len(cmp) else "project")
    assert lipkit.LinearSpline(1).constraint == data["constraint_winner"]


def test_round_off_bound_of_a_spline_alone_is_its_spline_term():
    """A chain of one spline: the a-priori bound is the spline's own round-off term (nothing else
    contributes), which is positive: a chain that skipped the spline would report 0."""
    from lipkit.certify.roundoff import spline_error

    s = _trained(dict(constraint="clamp"), channels=5).double()
    x = 2 * torch.randn(16, 5, dtype=torch.float64)
    r = torch.full((16,), 0.5, dtype=torch.float64)
    e = forward_error_bound([s], x, 2.0, r)
    assert e is not None and bool((e > 0).all())
    assert torch.allclose(e, spline_error(s, x, r, 2.0), rtol=1e-12, atol=0)
