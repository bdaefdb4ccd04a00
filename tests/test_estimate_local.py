"""Local Lipschitz bounds (``estimate(..., method="local", input_domain=...)``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipkit.estimation import as_domain, estimate, jacobian_norm, local_upper, preactivation_bounds

FAST = {"n_starts": 6, "steps": 15, "n_pairs": 256}


def _net(kind: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    if kind == "relu":
        return nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 2))
    if kind == "mixed":
        return nn.Sequential(nn.Linear(3, 10), nn.LeakyReLU(0.1), nn.Linear(10, 8), nn.Tanh(),
                             nn.Linear(8, 2))
    return nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 6), nn.ELU(), nn.Linear(6, 1))


def _max_quotient(net: nn.Module, dom, p: float, n: int = 6000, seed: int = 0) -> float:
    """Largest difference quotient over random pairs of the domain (near and far pairs)."""
    g = torch.Generator().manual_seed(seed)
    a = dom.sample(n, g)
    half = float((dom.hi - dom.lo).max()) / 2
    step = half * torch.logspace(-4, 0, n, dtype=torch.float64).reshape(-1, *([1] * (a.dim() - 1)))
    b = dom.project(a + step * torch.randn(a.shape, generator=g, dtype=torch.float64))
    net64 = net.double()
    with torch.no_grad():
        num = torch.linalg.vector_norm(net64(a) - net64(b), ord=p, dim=1)
    den = torch.linalg.vector_norm((a - b).flatten(1), ord=p, dim=1)
    ok = den > 0
    return float((num[ok] / den[ok]).max())


@pytest.mark.parametrize("kind,seed", [("relu", 0), ("relu", 1), ("mixed", 2), ("smooth", 3)])
@pytest.mark.parametrize("p", [2, math.inf])
def test_local_upper_dominates_sampled_quotients_and_global(kind, seed, p):
    net = _net(kind, seed)
    d = net[0].in_features
    torch.manual_seed(100 + seed)
    x0 = torch.randn(d)
    glob = estimate(net, p, "lipsdp" if p == 2 else "naive", lower=False).upper
    domains = [(x0, 0.3, p), (x0 - 0.2, x0 + 0.3)] + ([(x0, 1.5, 2)] if p == 2 else [])
    for domain in domains:
        est = estimate(net, p, "local", input_domain=domain, lower_kwargs=FAST)
        dom = as_domain(domain)
        sampled = _max_quotient(net.double(), dom, p)
        assert est.upper >= sampled, (kind, p, domain, est.upper, sampled)
        assert est.lower <= est.upper
        assert est.lower >= 0.5 * sampled  # the domain-restricted lower bound is not vacuous
        assert est.upper <= glob * (1 + 1e-6), (est.upper, glob, est.details)


def test_local_is_exact_where_no_relu_can_switch_and_tighter_than_global():
    net = _net("relu", 0)
    x0 = torch.tensor([0.3, -0.2, 0.5, 0.1])
    for p in (2, math.inf):
        est = estimate(net, p, "local", input_domain=(x0, 1e-3, math.inf), lower_kwargs=FAST)
        assert est.details["fixed"] == est.details["neurons"] == 22
        exact = float(jacobian_norm(net, x0[None], p)[0])  # the net is affine on the box
        assert exact <= est.upper <= exact * (1 + 1e-9)
        assert est.lower == pytest.approx(exact, rel=1e-6)
        assert est.details["local_method"] == "affine-local"
    glob = estimate(net, 2, "lipsdp", lower=False).upper
    mid = estimate(net, 2, "local", input_domain=(x0, 0.2, 2), lower=False)
    assert 0 < mid.details["fixed"] < 22 and mid.upper < 0.9 * glob


def test_dead_network_on_the_domain_has_constant_zero():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].bias.fill_(-10.0)
    est = estimate(net, 2, "local", input_domain=(torch.zeros(2), torch.ones(2)), lower_kwargs=FAST)
    assert est.upper == 0.0 and est.lower == 0.0 and est.details["dead"] == 3


def test_preactivation_bounds_enclose_every_preactivation():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    lo, hi = -torch.ones(1, 4, 4), torch.ones(1, 4, 4) * 0.5
    dom = as_domain((lo, hi))
    ranges = preactivation_bounds(net, dom)
    assert [type(m).__name__ for m, _, _ in ranges] == ["ReLU", "Tanh"]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0])) for m, _, _ in ranges]
    x = dom.sample(3000, torch.Generator().manual_seed(0)).float()
    x[:8] = torch.where(torch.rand(8, 1, 4, 4) > 0.5, hi, lo)  # corners too
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for (_, l_, u_), z in zip(ranges, seen, strict=True):
        assert bool((z.double() >= l_ - 1e-5).all() and (z.double() <= u_ + 1e-5).all())
        assert float((u_ - l_).min()) >= 0


def test_local_on_cnns():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    x0 = torch.randn(1, 5, 5)
    glob = estimate(cnn, 2, "lipsdp", input_shape=(1, 5, 5), lower=False).upper
    est = estimate(cnn, 2, "local", input_domain=(x0, 0.1, 2), lower_kwargs=FAST)
    assert est.method == "local" and est.details["fixed"] > 0  # convs lowered, IBP through them
    dom = as_domain((x0, 0.1, 2))
    assert _max_quotient(cnn.double(), dom, 2) <= est.upper <= glob * (1 + 1e-6)
    assert 0 < est.lower <= est.upper
    cnn.float()
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(2 * 2 * 2, 3))
    est = estimate(pooled, 2, "local", input_domain=(x0, 0.1, 2), lower_kwargs=FAST)
    assert est.method == "naive" and "local failed" in est.details["fallback"]
    assert 0 < est.lower <= est.upper


def test_local_domain_errors():
    net = _net("relu", 0)
    with pytest.raises(ValueError, match="needs input_domain"):
        estimate(net, 2, "local")
    with pytest.raises(ValueError, match="only used by method='local'"):
        estimate(net, 2, "naive", input_domain=(torch.zeros(4), 1.0, 2))
    with pytest.raises(ValueError, match="lo > hi"):
        estimate(net, 2, "local", input_domain=(torch.ones(4), torch.zeros(4)))
    with pytest.raises(ValueError, match="shape"):
        estimate(net, 2, "local", input_domain=(torch.zeros(4), torch.ones(5)))
    with pytest.raises(ValueError, match="radius must be finite"):
        estimate(net, 2, "local", input_domain=(torch.zeros(4), -1.0, 2))
    with pytest.raises(ValueError, match="NaN"):
        estimate(net, 2, "local", input_domain=(torch.full((4,), math.nan), 1.0, 2))
    with pytest.raises(ValueError, match="box \\(lo, hi\\) or a ball"):
        estimate(net, 2, "local", input_domain=torch.zeros(4))
    with pytest.raises(ValueError, match="input shape"):
        estimate(net, 2, "local", input_domain=(torch.zeros(3), 1.0, 2), input_shape=(4,))
    up, info = local_upper(net, "inf", (torch.zeros(4), 0.1, "inf"))
    assert up > 0 and "candidates" in info


@pytest.mark.parametrize("p", [2, math.inf])
def test_local_on_groupsort_nets_is_sound_and_exact_where_no_comparator_switches(p):
    from lipkit import GroupSort, MaxMin

    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(4, 6), MaxMin(), nn.Linear(6, 6), GroupSort(3), nn.Linear(6, 2)).double()
    x0 = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    glob = estimate(net, p, "naive", lower=False).upper
    for domain in [(x0, 0.5, p), (x0 - 0.3, x0 + 0.2)]:
        est = estimate(net, p, "local", input_domain=domain, lower_kwargs=FAST)
        assert est.method == "local", est.details
        sampled = _max_quotient(net, as_domain(domain), p)
        assert sampled <= est.upper <= glob * (1 + 1e-6)
    # a tiny box: no comparator can switch, the network is linear there and the bound is its Jacobian norm
    est = estimate(net, p, "local", input_domain=(x0, 1e-4, math.inf), lower_kwargs=FAST)
    exact = float(jacobian_norm(net, x0[None], p)[0])
    assert exact * (1 - 1e-9) <= est.upper <= exact * (1 + 1e-9)
