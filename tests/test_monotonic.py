"""lipkit.monotonic: the guarantee on random and shaken networks, the derived slope against exact values,
the wrapper's own bound on sampled pairs, round-off, and the errors for bad specs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import lipschitz_ratio, sample_pairs
from exact_pwl import jacobian_exact, regions
from torch import nn

import lipkit
from lipkit.monotonic import (
    ROUNDOFF_MARGIN,
    MonotonicMLP,
    MonotonicNetwork,
    check_monotonic,
)
from lipkit.nn import GroupSort, LinearSpline, LipLinear, Residual

torch.set_num_threads(1)


def _bodies(d: int, out: int = 1):
    torch.manual_seed(0)
    yield "linear-relu", nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, out))
    for c in ("inf", "one", "one-inf", "two-inf"):
        yield f"liplinear-{c}", nn.Sequential(LipLinear(d, 12, constraint=c, lip=2.0), GroupSort(2),
                                              LipLinear(12, out, constraint=c))
    yield "spline", nn.Sequential(nn.Linear(d, 8), LinearSpline(8), nn.Linear(8, out))
    yield "residual", nn.Sequential(nn.Linear(d, 8), Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU())),
                                    nn.Linear(8, out))


def _extreme_points(d: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.tensor([1.0, 10.0, 1000.0, 0.01] * d)[:d]
    x[: n // 4] *= 1e3
    return x


def _shake(model: nn.Module, seed: int, scale: float = 3.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale).add_(torch.randn(p.shape, generator=g) * scale)


def _raw_moves(model: nn.Module, x: torch.Tensor, i: int, sign: float) -> torch.Tensor:
    """Largest move against the constraint between sorted values of feature i, float64 copy."""
    import copy

    m64 = copy.deepcopy(model).double().eval()
    vals = torch.tensor([-1e4, -100.0, -3.0, -1.0, -0.1, -1e-3, 0.0, 1e-3, 0.1, 1.0, 3.0, 100.0, 1e4],
                        dtype=torch.float64)
    z = x.double()[:, None, :].repeat(1, len(vals), 1)
    z[:, :, i] = vals
    with torch.no_grad():
        y = m64(z.reshape(-1, x.shape[1])).reshape(x.shape[0], len(vals), -1) * sign
    return -(y[:, 1:] - y[:, :-1])


@pytest.mark.parametrize("name,body", list(_bodies(4)))
def test_monotone_on_random_and_shaken_bodies(name, body):
    spec = [1, 0, -1, 1]
    model = MonotonicNetwork(body, spec, in_features=4)
    x = _extreme_points(4)
    for round_ in range(3):
        model.eval()  # the slope is cached in eval mode: the cache must notice the shaken weights
        res = check_monotonic(model, x)
        assert res.violations == 0, (name, round_, res)
        assert res.worst_float64 == 0.0
        for i, s in ((0, 1.0), (2, -1.0), (3, 1.0)):
            assert _raw_moves(model, x[:8], i, s).max() <= 0.0, (name, i)
        before = model.slope()
        _shake(model, seed=round_)
        if name.startswith("linear") or name in ("spline", "residual"):
            assert model.slope() != before  # the slope follows the actual weights
        assert model.slope() >= lipkit.lipschitz_bound(model.body, 1, "inf")


def test_eval_cache_notices_edits_through_data():
    """``p.data`` edits do not bump the version counter; the cached slope must still follow them."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    model = MonotonicNetwork(body, [1, 0, -1, 0], in_features=4).eval()
    before = model.slope()
    version = body[0].weight._version
    body[0].weight.data.mul_(50.0)
    assert body[0].weight._version == version  # the case a version-keyed cache misses
    assert model.slope() >= lipkit.lipschitz_bound(body, 1, "inf") > before
    assert check_monotonic(model, _extreme_points(4)).violations == 0


def test_unconstrained_model_is_caught():
    """check_monotonic finds violations in a plain MLP and in a wrapper whose slope is set too small."""
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    res = check_monotonic(mlp, torch.randn(64, 3), {0: 1, 2: -1})
    assert res.violations > 0 and res.worst > 0.0

    class TooSmall(nn.Module):  # the monotonicnetworks trap: a hand-set lambda below the true constant
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x) + 0.01 * x[:, :1]

    bad = TooSmall(nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)))
    assert check_monotonic(bad, torch.randn(64, 3), {0: 1}).violations > 0


def test_slope_formula_and_float_rounding():
    body = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    model = MonotonicNetwork(body, [1, 0, -1])
    bound = lipkit.lipschitz_bound(body, 1, "inf")
    lam = model.slope()
    assert lam >= bound * (1 + ROUNDOFF_MARGIN)
    assert lam <= bound * (1 + ROUNDOFF_MARGIN) * (1 + 1e-12)
    # the forward's float32 slope is rounded up: f(x) - g(x) on e_0 is >= lam
    e0 = torch.zeros(1, 3)
    e0[0, 0] = 1.0
    with torch.no_grad():
        diff = (model(e0) - body(e0) - (model(torch.zeros(1, 3)) - body(torch.zeros(1, 3))))
    assert float(diff.min()) >= float(torch.tensor(lam, dtype=torch.float32)) * (1 - 1e-6)
    floored = MonotonicNetwork(body, [1, 0, -1], lip=100.0)
    assert floored.slope() == 100.0


def test_float32_lambda_never_below_float64():
    from lipkit.monotonic.network import _float_up

    g = torch.Generator().manual_seed(0)
    for v in torch.rand(500, generator=g, dtype=torch.float64) * 10:
        assert float(_float_up(float(v), torch.float32)) >= float(v)


def test_slope_bounds_partials_sampled_pairs():
    for name, body in _bodies(5, out=3):
        _shake(body, seed=7, scale=1.5)
        body.eval()
        lam = MonotonicNetwork(body, [1, 0, 0, 0, -1]).slope()
        x, y = sample_pairs((5,), count=300, seed=3)
        # single-coordinate pairs: |g_j(x + t e_i) - g_j(x)| / |t| <= L (the partials' bound)
        idx = torch.randint(0, 5, (x.shape[0],), generator=torch.Generator().manual_seed(1))
        t = torch.randn(x.shape[0], dtype=torch.float64)
        y = x.clone()
        y[torch.arange(x.shape[0]), idx] += t
        b64 = body.double()
        with torch.no_grad():
            ratio = ((b64(y) - b64(x)).abs().amax(1) / t.abs()).max().item()
        assert ratio <= lam, name
        body.float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slope_exact_on_tiny_relu_nets(seed):
    """Exact partials of a ReLU net on R^2 over all of its linear regions: every |J_ij| <= L <= lam, and
    the wrapper's exact partials have the constrained sign in every region (with the float32 lam)."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    model = MonotonicNetwork(body, [[1, -1], [0, 1]])  # output 0: up in x0, down in x1; output 1: up in x1
    bound = lipkit.lipschitz_bound(body, 1, "inf")
    lam_f32 = float(lipkit.monotonic.network._float_up(model.slope(), torch.float32))  # what forward uses
    assert lam_f32 >= model.slope()
    lam = Fraction(lam_f32)
    regs = regions(body, box=30.0, grid=60)
    exact = max(abs(v) for pat in regs for row in jacobian_exact(body, pat) for v in row)
    assert exact <= Fraction(bound)
    c = model.constraints  # (in, out)
    for pat in regs:
        j = jacobian_exact(body, pat)  # (out, in)
        for out in range(2):
            for i in range(2):
                ci = int(c[i, out])
                if ci:
                    assert ci * (j[out][i] + ci * lam) >= 0


def test_exact_for_a_linear_body():
    """For g(x) = W x + b the l_1 -> l_inf constant is max |W_ij| exactly, and lam = it times (1 + 2^-10)."""
    lin = LipLinear(4, 3, constraint="one-inf", lip=0.7)
    model = MonotonicNetwork(nn.Sequential(lin), [1, 1, 0, -1])
    w = lin.weight.detach().double()
    assert lipkit.lipschitz_bound(model.body, 1, "inf") == pytest.approx(w.abs().max().item(), rel=1e-12)
    assert model.slope() == pytest.approx(w.abs().max().item() * (1 + ROUNDOFF_MARGIN), rel=1e-12)


@pytest.mark.parametrize("p,q", [(1, math.inf), (math.inf, math.inf), (2, 2), (1, 1), (2, math.inf)])
def test_wrapper_bound_holds_on_sampled_pairs(p, q):
    torch.manual_seed(3)
    model = MonotonicMLP(5, 16, 2, monotonic=[1, -1, 0, 1, 0], lip=2.0).double()
    _shake(model.body, seed=2, scale=1.0)
    model.eval()
    bound = lipkit.lipschitz_bound(model, p, q)
    assert bound > model.slope() or p == q == 1  # never lam alone
    x, y = sample_pairs((5,), count=400, seed=5)
    with torch.no_grad():
        num = torch.linalg.vector_norm(model(x) - model(y), ord=q, dim=1)
    den = torch.linalg.vector_norm(x - y, ord=p, dim=1)
    assert (num / den).max().item() <= bound
    if p == q:
        assert lipschitz_ratio(model, x, y, p) <= bound


def test_wrapper_bound_values():
    body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    model = MonotonicNetwork(body, [1, -1, 0, 1])
    lam = float(lipkit.monotonic.network._float_up(model.slope(), torch.float32))  # the forward's lam
    l1inf = lipkit.lipschitz_bound(body, 1, "inf")
    assert lipkit.lipschitz_bound(model, 1, "inf") >= l1inf + lam
    assert lipkit.lipschitz_bound(model, 1, "inf") <= (l1inf + lam) * (1 + 1e-9)
    linf = lipkit.lipschitz_bound(body, "inf")
    assert lipkit.lipschitz_bound(model, "inf") == pytest.approx(linf + 3 * lam, rel=1e-9)
    l2 = lipkit.lipschitz_bound(body, 2)
    assert lipkit.lipschitz_bound(model, 2) == pytest.approx(l2 + math.sqrt(3) * lam, rel=1e-9)


def test_per_output_constraints_and_names():
    body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    model = MonotonicNetwork(body, [[1, 0, 0], [0, 0, -1]])
    assert model.constraints.tolist() == [[1, 0], [0, 0], [0, -1]]
    _shake(model, 4)
    assert check_monotonic(model, torch.randn(32, 3) * 5).violations == 0
    named = MonotonicNetwork(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)),
                             {"age": 1, "priors": -1}, feature_names=["age", "sex", "priors"])
    assert named.constraints[:, 0].tolist() == [1, 0, -1]
    res = check_monotonic(named, torch.randn(16, 3), ["priors"])
    assert set(res.per_feature) == {"priors"} and res.violations == 0


def test_tampered_wrapper_is_refused():
    body = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))

    class Cheat(MonotonicNetwork):
        def forward(self, x):
            return self.body(x)

    with pytest.raises(lipkit.UnsupportedModuleError, match="overrides"):
        lipkit.lipschitz_bound(Cheat(body, [1, 0]), 1, "inf")
    model = MonotonicNetwork(body, [1, 0])
    model.register_forward_hook(lambda m, a, o: o * 10)
    with pytest.raises(lipkit.UnsupportedModuleError, match="hook"):
        lipkit.lipschitz_bound(model, 2)


class _InfOnly(nn.Module):
    def forward(self, x):
        return x


def test_bad_specs():
    body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="3 input features"):
        MonotonicNetwork(body, [1, 0])
    with pytest.raises(ValueError, match=r"-1, 0 or \+1"):
        MonotonicNetwork(body, [1, 2, 0])
    with pytest.raises(ValueError, match=r"-1, 0 or \+1"):
        MonotonicNetwork(body, [1, 0.5, 0])
    with pytest.raises(ValueError, match="unknown feature 'weight'"):
        MonotonicNetwork(body, {"weight": 1}, feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="no feature_names"):
        MonotonicNetwork(body, {"a": 1})
    with pytest.raises(ValueError, match="rows but the body has 1 outputs"):
        MonotonicNetwork(body, [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="lip"):
        MonotonicNetwork(body, [1, 0, 0], lip=-1.0)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        MonotonicNetwork(body, [1, 0, 0])(torch.zeros(2, 4))

    class Mystery(nn.Module):
        def forward(self, x):
            return x.sum(1, keepdim=True)

    with pytest.raises(lipkit.UnsupportedModuleError, match="no known l_1 -> l_inf"):
        MonotonicNetwork(Mystery(), [1, 0], in_features=2)
    with pytest.raises(ValueError, match="activation"):
        MonotonicMLP(3, 8, 1, monotonic=[1, 0, 0], activation="tanh")


def test_a_norm_the_body_cannot_bound():
    """A body bounded only in l_inf: the slope exists (l_1 -> l_inf <= l_inf), an l_1 bound does not."""

    @lipkit.register_bound(_InfOnly)
    def _rule(module, p, shapes):
        if p != math.inf:
            raise lipkit.UnsupportedModuleError("only l_inf", module)
        return 1.0

    try:
        model = MonotonicNetwork(nn.Sequential(nn.Linear(2, 2), _InfOnly(), nn.Linear(2, 1)), [1, 0])
        assert model.slope() > 0
        lipkit.lipschitz_bound(model, "inf")
        with pytest.raises(lipkit.UnsupportedModuleError, match="only l_inf"):
            lipkit.lipschitz_bound(model, 1)
    finally:
        lipkit.bounds.LIPSCHITZ.unregister(_InfOnly)


def test_training_keeps_slope_current_and_monotone():
    torch.manual_seed(0)
    model = MonotonicNetwork(nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)), [1, 0, -1])
    x = torch.randn(256, 3)
    y = torch.sin(3 * x[:, :1]) - x[:, 2:] ** 2  # not monotone in either: pushes g's slopes up
    opt = torch.optim.Adam(model.parameters(), 3e-2)
    slopes = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        slopes.append(model.slope())
    assert len(set(slopes)) > 10  # re-derived as the weights move
    assert check_monotonic(model, x[:64]).violations == 0


def test_mlp_floor_and_tracking_slope():
    """With the floor, lam >= lip; without it, lam = L (1 + 2^-10) tracks the body (lam - L is tiny)."""
    torch.manual_seed(0)
    floored = MonotonicMLP(4, 8, 1, monotonic=[1, 0, 0, -1], lip=2.0)
    assert floored.slope() >= 2.0
    tracking = MonotonicMLP(4, 8, 1, monotonic=[1, 0, 0, -1], lip=2.0, floor=False)
    bound = lipkit.lipschitz_bound(tracking.body, 1, "inf")
    assert bound <= 2.0 * (1 + 1e-6)
    assert tracking.slope() == pytest.approx(bound * (1 + ROUNDOFF_MARGIN), rel=1e-12)
    _shake(tracking, seed=3)
    assert check_monotonic(tracking, _extreme_points(4)).violations == 0
