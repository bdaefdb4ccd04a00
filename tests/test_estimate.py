from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lipkit.estimation import (
    METHODS,
    Estimate,
    estimate,
    exact_one_hidden_relu,
    jacobian_norm,
    lipopt,
    lipsdp,
    lower_bound,
    max_pattern_norm,
    naive_upper,
)
from lipkit.estimation._mlp import parse_mlp
from lipkit.estimation.exact import batched_opnorm
from lipkit.estimation.lipopt import LiPoptError, krivine_max
from lipkit.estimation.lipsdp import _certify_singular, _lmi, _structure, certify_multipliers
from lipkit.nn.activations import FullSort, GroupSort, MaxMin


def one_hidden(d: int, h: int, m: int, seed: int, bias: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h, bias=bias), nn.ReLU(), nn.Linear(h, m, bias=bias))


# input dim >= width: generic W has full row rank, so every activation pattern is reachable
SHAPES = [(5, 5, 1), (10, 10, 1), (8, 6, 3)]
NETS = [(s, seed) for s in SHAPES for seed in (0, 1)]


@pytest.mark.parametrize("p", [2, math.inf, 1])
def test_exact_is_attained_and_dominates_pairs(p):
    net = one_hidden(6, 5, 2, seed=3)
    W, V = net[0].weight.detach().double(), net[2].weight.detach().double()
    L = exact_one_hidden_relu(net, p)
    # attained: pick the maximising pattern, build x with sign(Wx) = pattern, compare the Jacobian norm
    best, best_D = -1.0, None
    for bits in range(2 ** 5):
        D = torch.tensor([(bits >> k) & 1 for k in range(5)], dtype=torch.float64)
        val = max_pattern_norm(W * D[:, None], V, p)
        if val > best:
            best, best_D = val, D
    target = 2 * best_D - 1
    x = torch.linalg.lstsq(W, target[:, None]).solution.T
    assert torch.equal((W @ x.T).squeeze(1) > 0, best_D > 0)
    assert float(jacobian_norm(net, x, p)[0]) == pytest.approx(L, rel=1e-10)
    # dominates difference quotients
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(4000, 6, generator=g, dtype=torch.float64)
    net64 = net.double()
    with torch.no_grad():
        num = torch.linalg.vector_norm(net64(a) - net64(b), ord=p, dim=1)
        r = num / torch.linalg.vector_norm(a - b, ord=p, dim=1)
    assert float(r.max()) <= L * (1 + 1e-12)
    assert float(r.max()) >= 0.3 * L


def test_exact_refuses_unreachable_patterns():
    with pytest.raises(ValueError, match="reachable"):
        exact_one_hidden_relu(one_hidden(3, 5, 1, seed=0), 2)
    with pytest.raises(ValueError, match="Linear -> ReLU -> Linear"):
        exact_one_hidden_relu(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)), 2)


@pytest.mark.parametrize("shape,seed", NETS)
def test_every_method_brackets_the_exact_constant(shape, seed):
    net = one_hidden(*shape, seed=seed)
    for p in (2, math.inf):
        exact = exact_one_hidden_relu(net, p)
        for method, (norms, _) in METHODS.items():
            if p not in norms or method == "local":  # local bounds are tested in test_estimate_local.py
                continue
            est = estimate(net, p, method, lower_kwargs={"n_starts": 8, "steps": 20, "n_pairs": 128})
            assert isinstance(est, Estimate)
            assert est.method == method and est.p == p, est.details
            assert est.upper >= exact, (method, p, est.upper, exact)
            assert est.lower <= exact, (method, p, est.lower, exact)
            assert est.lower >= 0.5 * exact  # the ascent finds a decent region on such small nets


SDP_NETS = [((5, 5, 1), s) for s in range(4)] + [((10, 10, 1), s) for s in range(3)]


@pytest.mark.parametrize("shape,seed", SDP_NETS)
def test_lipsdp_neuron_is_nearly_exact(shape, seed):
    net = one_hidden(*shape, seed=seed)
    exact = exact_one_hidden_relu(net, 2)
    r = lipsdp(net)
    assert exact <= r.upper <= 1.02 * exact
    layer = lipsdp(net, variant="layer")
    assert layer.upper >= r.upper * (1 - 1e-6)
    assert naive_upper(net, 2) >= r.upper


def test_lipsdp_recertification_is_sound_for_bad_multipliers():
    net = one_hidden(10, 10, 1, seed=5)
    exact = exact_one_hidden_relu(net, 2)
    mlp = parse_mlp(net)
    s = _structure(mlp, 1.0)
    good = lipsdp(net, eps=1e-7).lam
    rng = np.random.default_rng(0)
    for lam in (good * rng.uniform(0.5, 2.0, size=good.shape), good * 0.999, np.full(10, 1.0), good):
        rho = certify_multipliers(s, lam)
        assert math.sqrt(rho) >= exact  # sound whatever the multipliers (inf when uncertifiable)
    assert certify_multipliers(s, np.zeros(10)) == math.inf
    sloppy = lipsdp(net, eps=1e-1, max_iters=30)
    assert sloppy.upper >= exact


def test_lipsdp_inaccurate_solver_is_recertified():
    # SCS stopped after a few iterations reports values BELOW the true constant; the certificate never does
    under = 0
    for seed in (0, 4, 5):
        net = one_hidden(10, 10, 1, seed=seed)
        exact = exact_one_hidden_relu(net, 2)
        for iters in (5, 30):
            r = lipsdp(net, eps=1e-1, max_iters=iters)
            assert r.upper >= exact
            under += r.solver_value < exact
    assert under >= 1  # the raw solver value would have been unsound at least once


def test_lipsdp_deep_mixed_activations_between_lower_and_naive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.LeakyReLU(0.1),
                        nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 3), nn.ELU())
    up = lipsdp(net).upper
    lo = lower_bound(net, 2, n_starts=16, steps=40).value
    assert lo <= up <= naive_upper(net, 2)
    assert up < 0.8 * naive_upper(net, 2)  # LipSDP must actually improve on the product of norms


@pytest.mark.parametrize("shape", [(5, 5, 1), (8, 8, 1), (8, 6, 3)])
@pytest.mark.parametrize("p", [math.inf, 1])
def test_lipopt3_is_exact_on_small_nets(shape, p):
    net = one_hidden(*shape, seed=2)
    exact = exact_one_hidden_relu(net, p)
    r = lipopt(net, p, degree=3)
    assert r.upper >= exact
    assert r.upper == pytest.approx(exact, rel=1e-4)
    assert lipopt(net, p, degree=2).upper >= exact


def _vertex_max(poly: dict, n: int) -> float:
    best = -math.inf
    for bits in range(2**n):
        u = [(bits >> i) & 1 for i in range(n)]
        best = max(best, sum(c * math.prod(u[v] for v in mono) for mono, c in poly.items()))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_krivine_max_bounds_random_multilinear_polys_and_is_exact_at_full_degree(seed):
    rng = np.random.default_rng(seed)
    n = 6
    poly = {(): float(rng.normal())}
    for size in (1, 2, 3):
        subsets = list(itertools.combinations(range(n), size))
        for i in rng.choice(len(subsets), 6, replace=False):
            poly[subsets[i]] = float(rng.normal())
    exact = _vertex_max(poly, n)
    bounds = [krivine_max(poly, {}, n, k)[0] for k in (3, 4, n)]
    assert all(b >= exact for b in bounds)
    assert bounds[0] >= bounds[1] - 1e-9 >= bounds[2] - 2e-9  # the hierarchy only tightens
    assert bounds[2] == pytest.approx(exact, rel=1e-7, abs=1e-9)  # Sherali-Adams level n is exact
    with pytest.raises(ValueError, match="multilinear"):
        krivine_max({(0, 0): 1.0}, {}, 1, 2)


def test_lipopt_sparse_cliques_and_time_limit_stay_sound():
    net = one_hidden(9, 9, 1, seed=5)
    exact = exact_one_hidden_relu(net, math.inf)
    dense = lipopt(net, math.inf, degree=3, sparse_cliques=False)
    sparse_ = lipopt(net, math.inf, degree=3, sparse_cliques=True)
    assert dense.details["converged"] and not dense.details["sparse_cliques"]
    assert sparse_.details["sparse_cliques"]
    assert dense.upper == pytest.approx(exact, rel=1e-6)
    # the sparse family is a subset of the dense one: never tighter, still sound
    assert sparse_.upper >= dense.upper * (1 - 1e-9) and sparse_.upper >= exact
    # cut short after the first restricted LP: a (looser) certificate all the same
    quick = lipopt(net, math.inf, degree=3, time_limit=1e-3)
    assert quick.upper >= exact


def test_lipopt_master_pruning_keeps_the_lp_value(monkeypatch):
    import sys

    net = one_hidden(11, 11, 1, seed=6)
    exact = exact_one_hidden_relu(net, math.inf)
    full = lipopt(net, math.inf, degree=3, max_nodes=1)
    # prune the master down to a few hundred columns every round: columns leave and come back via pricing
    monkeypatch.setattr(sys.modules["lipkit.estimation.lipopt"], "MASTER_MAX_COLUMNS", 600)
    pruned = lipopt(net, math.inf, degree=3, max_nodes=1)
    assert full.details["converged"] and pruned.details["converged"]
    assert pruned.details["products_used"] < full.details["products_used"]
    assert exact <= pruned.upper == pytest.approx(full.upper, rel=1e-7)


def test_lipopt_whole_lp_by_pdlp_equals_column_generation_and_stays_sound(monkeypatch):
    import sys

    mod = sys.modules["lipkit.estimation.lipopt"]
    net = one_hidden(10, 10, 1, seed=7)
    exact = exact_one_hidden_relu(net, math.inf)
    cg = lipopt(net, math.inf, degree=3, max_nodes=1)
    monkeypatch.setattr(mod, "PDLP_PRODUCTS", 0)  # every family goes to PDLP after the first master
    pd = lipopt(net, math.inf, degree=3, max_nodes=1)
    assert cg.details["converged"] and pd.details["converged"]
    assert pd.details["products_used"] == pd.details["products"]
    assert exact <= pd.upper == pytest.approx(cg.upper, rel=1e-5)
    assert pd.upper == pytest.approx(exact, rel=1e-4)
    # random multilinear polynomials: PDLP's approximate multipliers are re-certified, never below the max
    rng = np.random.default_rng(11)
    for _ in range(3):
        poly = {(): float(rng.normal())}
        for size in (1, 2, 3):
            subsets = list(itertools.combinations(range(7), size))
            for i in rng.choice(len(subsets), min(8, len(subsets)), replace=False):
                poly[subsets[i]] = float(rng.normal())
        val, info = krivine_max(poly, {}, 7, 3)
        assert info["lp_solver"] == "pdlp"
        assert val >= _vertex_max(poly, 7)
    # a time limit that stops PDLP at once still returns a certificate (the first master's, at worst)
    monkeypatch.setattr(mod, "PDLP_PRODUCTS", 0)
    quick = lipopt(net, math.inf, degree=3, time_limit=1e-3, max_nodes=1)
    assert quick.upper >= exact


def test_lipopt_branch_and_bound_closes_the_gap_of_a_low_degree():
    p = math.inf
    net = one_hidden(8, 8, 2, seed=3)
    exact = exact_one_hidden_relu(net, p)
    plain = lipopt(net, p, degree=2, max_nodes=1)
    assert plain.upper > exact * (1 + 1e-3)  # degree 2 alone is loose here
    cut = lipopt(net, p, degree=2, max_nodes=3)  # stopped early: between exact and the plain bound
    assert exact <= cut.upper <= plain.upper
    closed = lipopt(net, p, degree=2, max_nodes=400)
    assert closed.details["gap_closed"] and closed.details["nodes"] > 1
    assert exact <= closed.upper <= exact * (1 + 1e-6)


def test_lipopt_vertex_gives_an_attained_lower_bound():
    # the relaxation's best vertex is realised by an input (W has full row rank): lower == exact constant
    net = one_hidden(12, 12, 1, seed=4)
    exact = exact_one_hidden_relu(net, math.inf)
    est = estimate(net, math.inf, "lipopt", lower_kwargs={"n_starts": 2, "steps": 0, "n_pairs": 0})
    assert est.details["lower_kind"] == "jacobian"
    assert exact * (1 - 1e-6) <= est.lower <= exact <= est.upper <= exact * (1 + 1e-6)
    x = est.details["lower_witness"]
    assert float(jacobian_norm(net.double(), x[None], math.inf)[0]) >= est.lower


def test_lipopt_with_bias_and_leaky_relu_is_sound():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), nn.LeakyReLU(0.2), nn.Linear(6, 2))
    lo = lower_bound(net, math.inf, n_starts=16, steps=30).value
    up = lipopt(net, math.inf, degree=2).upper
    assert lo <= up <= naive_upper(net, math.inf)


@pytest.mark.parametrize("p", [2, math.inf])
def test_lower_bound_witness_is_real(p):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    lb = lower_bound(net, p, n_starts=8, steps=20)
    assert lb.value > 0
    if lb.kind == "jacobian":
        assert float(jacobian_norm(net, lb.point[None], p)[0]) >= lb.value
    else:
        a, b = lb.pair
        net64 = net.double()
        with torch.no_grad():
            num = torch.linalg.vector_norm(net64(a[None]) - net64(b[None]), ord=p)
            ratio = num / torch.linalg.vector_norm(a - b, ord=p)
        assert float(ratio) >= lb.value
    assert lb.value <= naive_upper(net, p)


@pytest.mark.slow
def test_estimate_errors_and_fallbacks():
    net = one_hidden(5, 5, 1, seed=0)
    with pytest.raises(ValueError, match="available: naive, lipsdp"):
        estimate(net, 2, method="lipsdp-network")
    with pytest.raises(ValueError, match="does not support p=inf"):
        estimate(net, "inf", method="lipsdp")
    with pytest.raises(ValueError, match="unsupported norm"):
        estimate(net, 3)
    gelu = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 1))
    est = estimate(gelu, 2, method="lipsdp", lower_kwargs={"n_starts": 4, "steps": 5})
    assert est.method == "naive" and "GELU" in est.details["fallback"]
    assert est.lower <= est.upper
    deep = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                         nn.Linear(4, 1))
    est = estimate(deep, math.inf, method="lipopt", lower=False)
    assert est.method == "naive" and "degree >= 4" in est.details["fallback"] and est.lower == 0.0
    assert est.upper == naive_upper(deep, math.inf)
    wide = nn.Sequential(nn.Linear(300, 50), nn.ReLU(), nn.Linear(50, 2))
    est = estimate(wide, math.inf, method="lipopt", lower=False)  # degree 3 far too large: falls back to 2
    assert est.method == "lipopt2" and "limit" in est.details["fallback"]
    assert est.upper <= naive_upper(wide, math.inf)
    with pytest.raises(ValueError, match="unsound"):
        lipsdp(net, variant="network")
    bad = one_hidden(3, 3, 1, seed=0)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lipsdp(bad)
    for method in ("naive", "lipsdp"):
        with pytest.raises(ValueError, match="NaN or infinite values in '0.weight'"):
            estimate(bad, 2, method)


def test_certified_rho_is_verified_and_tight():
    net = one_hidden(6, 6, 2, seed=7)
    s = _structure(parse_mlp(net), 1.0)
    lam = lipsdp(net).lam
    rho = certify_multipliers(s, lam)
    M, _ = _lmi(s, lam, rho)
    assert np.linalg.eigvalsh(M)[-1] <= 0  # M(rho, T) is negative semidefinite
    M_lo, _ = _lmi(s, lam, rho * (1 - 1e-5))
    assert np.linalg.eigvalsh(M_lo)[-1] > 0  # and rho is (nearly) the smallest such value


def test_lipopt_deep_bounds_the_vertex_maximum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3, bias=False), nn.ReLU(), nn.Linear(3, 3, bias=False), nn.ReLU(),
                        nn.Linear(3, 2, bias=False))
    W1, W2, V = (m.weight.detach().double() for m in net if isinstance(m, nn.Linear))
    for p in (math.inf, 1):
        # the polynomial LiPopt bounds is maximised at a vertex: max over all pattern pairs (D1, D2)
        vertex = max(
            float(batched_opnorm(V @ torch.diag(D[3:]) @ W2 @ torch.diag(D[:3]) @ W1, p))
            for D in (torch.tensor([(b >> k) & 1 for k in range(6)], dtype=torch.float64) for b in range(64))
        )
        up = lipopt(net, p, degree=3).upper
        assert vertex <= up <= vertex * (1 + 1e-6)
        assert lower_bound(net, p, n_starts=8, steps=20).value <= up
    with pytest.raises(LiPoptError, match="degree >= 3"):
        lipopt(net, math.inf, degree=2)


def test_estimate_on_a_cnn_lowers_convs_or_falls_back_to_naive():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    est = estimate(cnn, 2, "lipsdp", input_shape=(1, 5, 5), lower_kwargs={"n_starts": 4, "steps": 10})
    assert est.method == "lipsdp"  # the conv is lowered to its exact 50 x 25 matrix
    assert 0 < est.lower <= est.upper <= naive_upper(cnn, 2, input_shape=(1, 5, 5))
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(2 * 2 * 2, 3))
    est = estimate(pooled, 2, "lipsdp", input_shape=(1, 5, 5), lower_kwargs={"n_starts": 4, "steps": 10})
    assert est.method == "naive" and "MaxPool2d" in est.details["fallback"]
    assert 0 < est.lower <= est.upper == naive_upper(pooled, 2, input_shape=(1, 5, 5))
    est = estimate(cnn, 2, "lipsdp", lower=False)  # no input shape: cannot lower the conv
    assert est.method == "naive" and "input_shape" in est.details["fallback"]


def test_parse_merges_consecutive_linear_layers():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2)).eval()
    mlp = parse_mlp(net)
    assert mlp.depth == 2 and mlp.hidden_sizes == [5]
    x = torch.randn(7, 6, dtype=torch.float64)
    W, V = mlp.weights
    b, c = mlp.biases
    with torch.no_grad():
        assert torch.allclose(torch.relu(x @ W.T + b) @ V.T + c, net.double()(x), atol=1e-12)
    exact = exact_one_hidden_relu(net, 2)
    assert exact <= lipsdp(net).upper <= 1.05 * exact


@pytest.mark.slow
def test_first_order_lipsdp_is_sound_and_close_to_scs():
    from lipkit.estimation.lipsdp import (
        _blocks,
        _init_layerwise,
        _schur_rho,
        _verify_blocks,
        lipsdp_first_order,
    )

    for shape, seed in (((5, 5, 1), 0), ((10, 10, 1), 1)):
        net = one_hidden(*shape, seed=seed)
        exact = exact_one_hidden_relu(net, 2)
        fo = lipsdp_first_order(net)
        assert exact <= fo.upper <= 1.02 * exact
        assert fo.upper >= lipsdp(net, solver="scs").upper * (1 - 1e-4)  # never below the SDP optimum
    torch.manual_seed(2)
    deep = nn.Sequential(nn.Linear(4, 60), nn.ReLU(), nn.Linear(60, 60), nn.Tanh(), nn.Linear(60, 60),
                         nn.ReLU(), nn.Linear(60, 2))
    r = lipsdp(deep)  # 180 hidden neurons: the first-order solver
    assert r.variant == "neuron-fo"
    lo = lower_bound(deep, 2, n_starts=8, steps=20).value
    assert lo <= r.upper < 0.6 * naive_upper(deep, 2)
    # the structured proof of M(rho) <= 0 accepts rho* (1 + 1e-6), rejects rho* (1 - 1e-6); dense agrees
    mlp = parse_mlp(deep)
    blk = _blocks(mlp, 1.0)
    lams = _init_layerwise(blk, 1.5)
    rho = float(_schur_rho(blk, lams))
    lam = np.concatenate(lams)
    assert _verify_blocks(blk, lam, rho * (1 + 1e-6)) and not _verify_blocks(blk, lam, rho * (1 - 1e-6))
    s = _structure(mlp, 1.0)
    assert certify_multipliers(s, lam) == pytest.approx(rho, rel=1e-6)


def test_multi_scale_lower_bound():
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 10), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(10, 10), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(10, 1))
    kw = {"n_starts": 8, "steps": 20, "n_pairs": 64}
    multi = lower_bound(net, 2, scale=(1.0, 10.0), **kw)
    assert multi.details["scale"] in (1.0, 10.0)
    assert multi.value >= lower_bound(net, 2, scale=1.0, **kw).value
    assert multi.value <= lipsdp(net).upper
    with pytest.raises(ValueError, match="non-empty sequence"):
        lower_bound(net, 2, scale=())


# ----------------------------------------------------------------- GroupSort-type activations (lowered)


def _maxmin_exact(net: nn.Sequential, p: float) -> float:
    """Exact constant of Linear -> MaxMin -> Linear (W with full row rank: every swap pattern is reachable):
    the largest ||V S W||_p over the 2^(h/2) choices S of swapping or not each pair."""
    W = net[0].weight.detach().double()
    V = net[2].weight.detach().double()
    h = W.shape[0]
    best = 0.0
    for bits in range(2 ** (h // 2)):
        perm = list(range(h))
        for j in range(h // 2):
            if bits >> j & 1:
                perm[2 * j], perm[2 * j + 1] = perm[2 * j + 1], perm[2 * j]
        best = max(best, float(batched_opnorm(V @ W[perm], p)))
    return best


def _pair_quotients(net: nn.Module, d: int, p: float, n: int = 4000) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x + 1e-3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    num = torch.linalg.vector_norm(net(x) - net(y), ord=p, dim=1)
    return float((num / torch.linalg.vector_norm(x - y, ord=p, dim=1)).max().detach())


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(5, 6), MaxMin(), nn.Linear(6, 2)),
    lambda: nn.Sequential(nn.Linear(6, 6), GroupSort(3), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1)),
    lambda: nn.Sequential(nn.Linear(4, 8), GroupSort(4), nn.Linear(8, 4), FullSort(), nn.Linear(4, 2),
                          MaxMin()),
])
def test_groupsort_is_lowered_exactly(make):
    torch.manual_seed(1)
    net = make().double()
    mlp = parse_mlp(net)
    x = torch.randn(64, net[0].in_features, dtype=torch.float64)
    h = x.T
    for k, w in enumerate(mlp.weights):
        h = w @ h + mlp.biases[k][:, None]
        if k < len(mlp.acts):
            h = mlp.acts[k](h.T).T
    assert torch.allclose(h.T, net(x), atol=1e-12)
    # identity neurons carry a and b: slope exactly 1, no multiplier / LP variable for them
    assert any((mlp.layer_slopes(k)[0] == 1.0).any() for k in range(len(mlp.acts)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lipsdp_and_lipopt_on_maxmin_bracket_the_exact_constant(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 6, bias=False), MaxMin(), nn.Linear(6, 1, bias=False)).double()
    exact2 = _maxmin_exact(net, 2)
    r = lipsdp(net)
    assert exact2 <= r.upper <= 1.05 * exact2
    assert r.upper <= naive_upper(net, 2) * (1 + 1e-9)
    exact_inf = _maxmin_exact(net, math.inf)
    lo = lipopt(net, math.inf, degree=3)
    assert exact_inf * (1 - 1e-12) <= lo.upper <= exact_inf * (1 + 1e-4)  # LiPopt-3 is exact here too


def test_lipsdp_on_deep_groupsort_chains_is_certified_and_sound():
    # chained comparators leave the hidden block of the LMI singular at the SDP optimum: the certificate
    # comes from tilted multipliers or the margin re-solve, never from the raw solver value
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), MaxMin(), nn.Linear(8, 8), GroupSort(4), nn.Linear(8, 4), FullSort(),
                        nn.Linear(4, 2)).double()
    r = lipsdp(net)
    assert _pair_quotients(net, 6, 2) <= r.upper <= naive_upper(net, 2)
    low = lower_bound(net, 2).value
    assert low <= r.upper
    est = estimate(net, 2, "lipsdp")
    assert est.method == "lipsdp" and est.upper == pytest.approx(r.upper, rel=1e-9)


def test_singular_certificate_pays_for_the_null_directions():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), GroupSort(3), nn.Linear(6, 2)).double()
    mlp = parse_mlp(net)
    s = _structure(mlp, 1.0)
    lam = lipsdp(net).lam
    rho = _certify_singular(s, [lam])
    assert math.isfinite(rho)
    assert math.sqrt(rho) >= _pair_quotients(net, 6, 2)
    assert math.sqrt(rho) >= lower_bound(net, 2).value
    # a clearly indefinite hidden block (multipliers zero on one layer) is refused, not "certified"
    bad = lam.copy()
    bad[s["layer_of"] == 0] = 0.0
    assert _certify_singular(s, [bad]) == math.inf


def test_groupsort_on_feature_maps_is_refused_by_name():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), GroupSort(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))
    with pytest.raises(TypeError, match="GroupSort on feature maps"):
        parse_mlp(net, (2, 6, 6))


@pytest.mark.parametrize("slope", ["relu", "leaky"])
def test_flip_search_vertex_is_a_real_vertex_value_and_finds_the_max_on_small_nets(slope):
    import sys

    mod = sys.modules["lipkit.estimation.lipopt"]
    torch.manual_seed(9)
    act = nn.ReLU() if slope == "relu" else nn.LeakyReLU(0.2)
    net = nn.Sequential(nn.Linear(10, 14, bias=False), act, nn.Linear(14, 2, bias=False))
    mlp = parse_mlp(net)
    for r in range(2):
        poly, n_vars = mod._gradient_poly(mlp, math.inf, r, absolute=False)
        val, u = mod._flip_search(mlp, r, None)
        assert u.size == n_vars
        assert mod._evaluate(poly, u) == pytest.approx(val, rel=1e-12)  # the closed form is the polynomial
        # brute force over the 2^10 input signs (slopes chosen per neuron): the search found the maximum
        W, V = mlp.weights
        T = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=10)), dtype=torch.float64)
        g = (T @ W.T) * V[r]
        a, b = mlp.layer_slopes(0)
        best = float(torch.maximum(g * torch.from_numpy(a), g * torch.from_numpy(b)).sum(1).max())
        assert val == pytest.approx(best, rel=1e-12)
