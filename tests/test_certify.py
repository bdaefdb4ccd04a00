from __future__ import annotations

import copy
import math

import mpmath
import pytest
import torch
from exact_ref import l2_norm_mp
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

import lipkit
from lipkit.certify.attacks import check_certificates, margin_loss, pgd
from lipkit.certify.margin import (
    certified_accuracy,
    certified_radius,
    compute_certificates,
    pairwise_bound,
)
from lipkit.certify.roundoff import chain_of, forward_error_bound
from lipkit.certify.twin import float64_copy
from lipkit.losses import HKRLoss

INF = math.inf


def _toy_data(n_per: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    xs = [c + 0.15 * torch.randn(n_per, 2, generator=g) for c in centers]
    ys = [torch.full((n_per,), k) for k in range(3)]
    return torch.cat(xs), torch.cat(ys)


def _orth_mlp(width: int = 32) -> nn.Sequential:
    return nn.Sequential(
        orthogonal(nn.Linear(2, width)), nn.ReLU(),
        orthogonal(nn.Linear(width, width)), nn.ReLU(),
        orthogonal(nn.Linear(width, 3)),
    )


class _RowL1(nn.Module):
    """W / max(1, row l1 norm): an l_inf-nonexpansive linear map (plain torch parametrisation)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w / w.abs().sum(1, keepdim=True).clamp_min(1.0)


def _linf_mlp(width: int = 32) -> nn.Sequential:
    layers = [nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            parametrize.register_parametrization(layer, "weight", _RowL1())
    return nn.Sequential(*layers)


def _train(model: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = _toy_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = HKRLoss(alpha=20.0, margin=0.5)
    for _ in range(300):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = _toy_data(n_per=20, seed=1)
    return model, xt, yt


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return _train(_orth_mlp())


@pytest.fixture(scope="module")
def trained_linf():
    torch.manual_seed(0)
    return _train(_linf_mlp())


def test_trained_model_is_accurate_and_certified(trained):
    model, x, y = trained
    assert lipkit.lipschitz_bound(model, 2) <= 1.0 + 1e-5
    acc = certified_accuracy(model, x, y, [0.0, 0.1, 0.2, 10.0], p=2)
    assert isinstance(acc, dict)
    assert acc[0.0] >= 0.95
    assert acc[0.1] > 0.5
    assert acc[0.0] >= acc[0.1] >= acc[0.2] >= acc[10.0] == 0.0
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double().mean().item()
    assert acc[0.0] == pytest.approx(clean)
    res = compute_certificates(model, x, 2)
    assert res.roundoff_rigorous
    assert res.allowance.max() < 3e-4  # logits ~ 1: the round-off allowance costs little radius
    single = certified_accuracy(model, x, y, 0.1, p=2)
    assert isinstance(single, float) and single == acc[0.1]
    assert certified_accuracy(model, x, y, 0.01, p=INF) > 0.5
    # the radius belongs to the predicted class: wrong labels keep the radii, lose the accuracy
    wrong = (res.prediction + 1) % 3
    assert certified_accuracy(model, x, wrong, 0.0) == 0.0
    assert torch.equal(certified_radius(model, x, 2), res.radius)


@pytest.mark.parametrize("p", [2, INF])
def test_pgd_breaks_no_certificate_but_breaks_beyond(trained, trained_linf, p):
    model, x, y = trained if p == 2 else trained_linf
    assert lipkit.lipschitz_bound(model, p) <= 1.0 + 1e-5
    assert certified_accuracy(model, x, y, 0.1, p=p) > 0.5
    res = check_certificates(model, x, y, p=p, steps=60, restarts=2, baseline_factor=3.0,
                             generator=torch.Generator().manual_seed(0))
    assert res.n_certified >= 50
    assert res.n_broken == 0
    assert res.max_violation <= 0.999
    assert res.baseline_success >= 0.5, res  # the attack is real
    # the l2-trained net attacked in l_inf: its (loose) certificates hold too
    if p == INF:
        m2, x2, y2 = trained
        chk = check_certificates(m2, x2, y2, p=INF, steps=60, generator=torch.Generator().manual_seed(0))
        assert chk.n_certified >= 50 and chk.n_broken == 0


@pytest.mark.parametrize("p", [2, INF])
def test_random_samples_inside_ball_keep_prediction(trained, trained_linf, p):
    model, x, _ = trained if p == 2 else trained_linf
    res = compute_certificates(model, x, p)
    g = torch.Generator().manual_seed(3)
    n = 256
    for i in range(0, x.shape[0], 6):
        r = float(res.radius[i])
        if r == 0:
            continue
        d = torch.randn(n, 2, generator=g, dtype=torch.float64)
        if p == 2:
            d = d / d.norm(dim=1, keepdim=True)
        else:
            d = d.sign()  # corners of the l_inf ball
        pts = (x[i].double() + 0.999 * r * d).float()
        with torch.no_grad():
            assert (model(pts).argmax(1) == res.prediction[i]).all()


def test_pairwise_bound_is_at_most_global(trained):
    model, x, _ = trained
    for p in (2, INF):
        glob = (math.sqrt(2) if p == 2 else 2.0) * lipkit.lipschitz_bound(model, p)
        pair = pairwise_bound(model, p, None)
        off = ~torch.eye(3, dtype=torch.bool)
        assert (pair[off] <= glob).all()
        assert (pair[off] > 0).all()
        # the certificate uses the min: radii from an explicit (global-only) bound are never larger
        res = compute_certificates(model, x, p)
        glob_r = ((res.margin - res.allowance) / glob).clamp_min(0)
        assert (res.radius >= glob_r * (1 - 1e-9)).all()
    # for l2 the pairwise rows of an orthogonal last layer are strictly tighter than sqrt(2) L
    assert pair is not None
    pair2 = pairwise_bound(model, 2, None)
    assert pair2[off].max() < math.sqrt(2) * lipkit.lipschitz_bound(model, 2)


def test_unconstrained_net_gets_sound_smaller_radii():
    torch.manual_seed(1)
    x, y = _toy_data(n_per=15, seed=2)
    model = nn.Sequential(nn.Linear(2, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    lip = lipkit.lipschitz_bound(model, 2)
    assert lip > 1.5
    res = compute_certificates(model, x, 2)
    # radius <= margin / (||grad|| bound) is much smaller than margin / sqrt(2) (the 1-Lipschitz reading)
    assert (res.radius <= (res.margin / math.sqrt(2)).clamp_min(0)).all()
    assert (res.radius > 0).sum() >= 20
    for p in (2, INF):
        chk = check_certificates(model, x, y, p=p, steps=60, restarts=2,
                                 generator=torch.Generator().manual_seed(0))
        assert chk.n_certified >= 20
        assert chk.n_broken == 0
    _check_radii_against_exact_values(model, x, res)


def _check_radii_against_exact_values(model: nn.Sequential, x: torch.Tensor, res) -> None:
    """The l2 radii of a plain Linear/ReLU classifier on R^2 against values computed without lipkit:

    1. the radius its bound implies: ``min_j (m_j - allowance) / L_cj`` with
       ``L_cj = min(sqrt(2) prod ||W_l||_2, ||w_c - w_j||_2 prod_{l < last} ||W_l||_2)`` from 50-digit norms
       (the exact values of what lipkit rounds up), compared exactly: the radius must not exceed it and
       must be within 1e-6 of it;
    2. ``m_j / L_cj`` with the true-Lipschitz *lower* bound ``L_cj >= max ||grad(f_c - f_j)||_2`` over a
       dense grid (attained gradients, so no sound Lipschitz radius can exceed this);
    3. a near-exhaustive 2-D attack: the deployed model's class is constant at 360 directions x 40 radii
       inside 0.999 x the radius.
    """
    lins = [m for m in model if isinstance(m, nn.Linear)]
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = m64(x.double())
    pred = res.prediction
    last = lins[-1].weight.detach().double()
    with mpmath.workdps(50):
        body = mpmath.mpf(1)
        for lin in lins[:-1]:
            body *= l2_norm_mp(lin.weight)
        full = body * l2_norm_mp(lins[-1].weight)
        n_cls = last.shape[0]
        lcj = [[min(mpmath.sqrt(2) * full,
                    mpmath.sqrt(mpmath.fsum(mpmath.mpf(v) ** 2 for v in (last[c] - last[j]).tolist())) * body)
                for j in range(n_cls)] for c in range(n_cls)]
        for i in range(len(x)):
            c = int(pred[i])
            diffs = [mpmath.mpf(logits[i, c].item()) - mpmath.mpf(logits[i, j].item()) for j in range(n_cls)]
            expected = min((diffs[j] - mpmath.mpf(res.allowance[i].item())) / lcj[c][j]
                           for j in range(n_cls) if j != c)
            r = mpmath.mpf(res.radius[i].item())
            if expected <= 0:
                assert r == 0, i
                continue
            assert r <= expected, (i, r, expected)
            assert r >= expected * (1 - mpmath.mpf(1e-6)), (i, r, expected)
    # 2. attained gradients of the logit differences on a grid
    t = torch.linspace(-4, 4, 201, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    jac = torch.func.vmap(torch.func.jacrev(m64))(pts).detach()  # (N, C, 2)
    low = torch.zeros(n_cls, n_cls, dtype=torch.float64)
    for c in range(n_cls):
        for j in range(n_cls):
            low[c, j] = torch.linalg.vector_norm(jac[:, c] - jac[:, j], dim=1).max() * (1 - 1e-9)
    top = logits.gather(1, pred[:, None])
    off = torch.ones_like(logits, dtype=torch.bool).scatter_(1, pred[:, None], False)
    cap = ((top - logits) / low[pred]).masked_fill(~off, math.inf).min(1).values
    assert (res.radius <= cap).all(), (res.radius - cap).max()
    # 3. attack: dense rays inside the certified ball
    ang = torch.linspace(0, 2 * math.pi, 361, dtype=torch.float64)[:-1]
    dirs = torch.stack([ang.cos(), ang.sin()], 1)
    frac = torch.linspace(0, 0.999, 41, dtype=torch.float64)[1:]
    with torch.no_grad():
        for i in torch.nonzero(res.radius > 0).flatten().tolist():
            ball = x[i].double() + (res.radius[i] * frac)[:, None, None] * dirs[None]
            assert (model(ball.reshape(-1, 2).float()).argmax(1) == pred[i]).all(), i


def _linear_model(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(4, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 4))
        lin.bias.copy_(torch.randn(5))
    return nn.Sequential(lin), torch.randn(64, 4)


@pytest.mark.parametrize("p", [2, INF])
def test_linear_classifier_radius_is_exact_distance(p):
    model, x = _linear_model()
    w = model[0].weight.detach().double()
    b = model[0].bias.detach().double()
    logits = x.double() @ w.T + b
    c = logits.argmax(1)
    q = 2 if p == 2 else 1
    exact = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for j in range(5):
        num = logits.gather(1, c[:, None]).squeeze(1) - logits[:, j]
        den = torch.linalg.vector_norm(w[c] - w[j], ord=q, dim=1)
        r = torch.where(c == j, torch.full_like(num, math.inf), num / den)
        exact = torch.minimum(exact, r)
    ours = certified_radius(model, x, p)
    assert ours.dtype == torch.float64
    assert (ours <= exact).all()
    assert (exact - ours).max() < 1e-4
    assert (ours > 0).all()
    # a bare nn.Linear (no Sequential) only gets the global bound: sound, looser
    loose = certified_radius(model[0], x, p)
    assert (loose <= ours + 1e-12).all()
    assert (loose < ours).any()


def test_linear_classifier_pgd_reaches_boundary_just_beyond_radius():
    model, x = _linear_model()
    r = certified_radius(model, x, 2)
    pred = model(x).argmax(1)
    adv = pgd(model, x, pred, r * 1.05, p=2, steps=100, restarts=4, clamp=None,
              generator=torch.Generator().manual_seed(0))
    assert torch.linalg.vector_norm(adv.double() - x.double(), dim=1).le((r * 1.05).float().double()).all()
    with torch.no_grad():
        flipped = (model(adv).argmax(1) != pred).double().mean().item()
    assert flipped > 0.9
    adv_in = pgd(model, x, pred, r * 0.999, p=2, steps=100, clamp=None)
    with torch.no_grad():
        assert (model(adv_in).argmax(1) == pred).all()


def test_roundoff_allowance_covers_float32_error_and_zero_margin():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 4))
    x = 100.0 * torch.randn(16, 50)
    res = compute_certificates(model, x, 2)
    assert res.roundoff_rigorous
    with torch.no_grad():
        f32 = model(x).double()
        exact = model.double()(x.double())
    model.float()
    err = (f32 - exact).abs().max(dim=1).values
    assert (res.allowance >= 2 * err).all()  # no floor of the form 8 * err any more: this can fail
    # the allowance is twice the a-priori bound over the certified ball, and here that bound (not the
    # 1e-5 floor) decides it
    bound = forward_error_bound(chain_of(float64_copy(model)), x.double(), 2.0, res.radius)
    assert (res.allowance >= 2 * bound).all()
    assert (2 * bound > 10 * 1e-5 * exact.abs().max(dim=1).values).all()
    # the a-priori bound gamma_n || |W||h| || grows with the input size (here ~0.04 for inputs of
    # size 100 into a saturated tanh, far above the observed error); at unit inputs it is small
    small = compute_certificates(model, x / 100, 2)
    assert (small.allowance < res.allowance / 10).all()
    # two identical rows: a tie, margin 0, radius exactly 0
    tie = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        tie[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
        tie[0].bias.zero_()
    assert (certified_radius(tie, torch.randn(5, 3), 2) == 0).all()
    # a positive margin below the allowance (one float32 ulp at 1) gives radius 0, not a tiny radius
    near = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        near[0].weight.copy_(torch.eye(2))
    xs = torch.tensor([[1.0 + 2.0**-23, 1.0], [2.0, 1.0]])
    res = compute_certificates(near, xs, 2)
    assert res.margin[0].item() == 2.0**-23 and res.radius[0].item() == 0.0
    assert res.radius[1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-4)
    assert res.radius[1].item() < 1 / math.sqrt(2)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + x


def test_non_chain_model_uses_floor_and_is_flagged():
    from lipkit.bounds import register_bound

    @register_bound(_Branchy, replace=True)  # idempotent: mutmut runs the tests twice in one process
    def _rule(m, p, shapes):
        return 1.0 + lipkit.lipschitz_bound(m.a, p)

    torch.manual_seed(0)
    model = _Branchy()
    x = torch.randn(10, 3)
    res = compute_certificates(model, x, 2)
    assert not res.roundoff_rigorous
    with torch.no_grad():
        scale = model.double()(x.double()).abs().max(1).values
        model.float()
        observed = (model(x).double() - model.double()(x.double())).abs().max(1).values
    model.float()
    # the heuristic, exactly as documented: max(1e-4 * scale, 8 * observed), inflated by 1 + 1e-9
    expected = torch.maximum(1e-4 * scale, 8 * observed) * (1 + 1e-9)
    torch.testing.assert_close(res.allowance, expected, rtol=1e-12, atol=0)
    chk = check_certificates(model, x, model(x).argmax(1), p=2, steps=40,
                             generator=torch.Generator().manual_seed(0))
    assert chk.n_broken == 0


def test_certify_leaves_model_untouched(trained):
    model, x, _ = trained
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_certificates(model, x, 2)
    assert model.training
    model.eval()
    assert torch.nn.utils.parametrize.is_parametrized(model[0], "weight")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert lipkit.lipschitz_bound(model, 2) <= 1.0 + 1e-5
    # the float64 twin uses exactly the float32 weights of the forward pass, cast
    twin = float64_copy(model)
    for i in (0, 2, 4):
        assert not torch.nn.utils.parametrize.is_parametrized(twin[i])
        assert torch.equal(twin[i].weight, model[i].weight.detach().double())
    with torch.no_grad():
        assert (twin(x.double()) - model(x).double()).abs().max() < 1e-5


def test_external_lipschitz_and_input_shape(trained):
    model, x, _ = trained
    base = compute_certificates(model, x, 2)
    looser = compute_certificates(model, x, 2, lipschitz=10.0)
    assert (looser.radius <= base.radius).all()
    assert looser.lipschitz == 10.0
    compute_certificates(model, x, 2, input_shape=(2,))
    with pytest.raises(ValueError, match=r"per-sample shape \(2,\), expected input_shape \(3,\)"):
        compute_certificates(model, x, 2, input_shape=(3,))


def test_bad_inputs_raise_clear_errors(trained):
    model, x, y = trained
    with pytest.raises(TypeError, match="torch.Tensor"):
        certified_radius(model, x.numpy(), 2)
    with pytest.raises(TypeError, match="floating"):
        certified_radius(model, x.long(), 2)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        certified_radius(model, bad, 2)
    with pytest.raises(ValueError, match="shape"):
        certified_radius(model, torch.randn(4, 5), 2)
    with pytest.raises(ValueError, match="batch"):
        certified_radius(model, torch.randn(2), 2)
    with pytest.raises(ValueError, match="p=2 and p=inf"):
        certified_radius(model, x, 1)
    with pytest.raises(ValueError, match="unknown norm"):
        certified_radius(model, x, "l3")
    with pytest.raises(ValueError, match="labels"):
        certified_accuracy(model, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="integer"):
        certified_accuracy(model, x, y.float(), 0.1)
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(model, x, y, -0.1)
    with pytest.raises(ValueError, match="logits"):
        certified_radius(nn.Sequential(nn.Linear(2, 3), nn.Flatten(0)), x, 2)


def test_pgd_respects_ball_and_box():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(20, 6)
    y = torch.randint(0, 3, (20,))
    eps = torch.linspace(0.01, 0.3, 20)
    for p in (2, INF):
        adv = pgd(model, x, y, eps, p=p, steps=20, restarts=2, clamp=(0.0, 1.0))
        d = torch.linalg.vector_norm(adv.double() - x.double(), ord=p, dim=1)
        assert (d <= eps.double()).all()
        assert adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            assert (margin_loss(model(adv), y) <= margin_loss(model(x), y) + 1e-6).all()
    # radii near the float32 spacing of x: the rounding of x + delta must not leave the ball
    big = 1000.0 + torch.rand(20, 6)
    for p in (2, INF):
        adv = pgd(model, big, y, 3e-4, p=p, steps=10, clamp=None)
        d = torch.linalg.vector_norm(adv.double() - big.double(), ord=p, dim=1)
        assert (d <= torch.tensor(3e-4, dtype=torch.float32).double()).all()
        assert (d > 0).any()
    with pytest.raises(ValueError, match="clamp"):
        pgd(model, x + 2, y, 0.1, p=2)
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, torch.ones(3), p=2)
    with pytest.raises(ValueError, match="y must"):
        pgd(model, x, y.float(), 0.1)


def test_targeted_pgd_reaches_target():
    model, x = _linear_model(3)
    target = (model(x).argmax(1) + 1) % 5
    adv = pgd(model, x, target, 50.0, p=INF, steps=50, clamp=None, targeted=True)
    with torch.no_grad():
        assert (model(adv).argmax(1) == target).double().mean() > 0.9


class _SkipSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x[:, :3]


def test_sequential_subclass_with_own_forward_is_not_treated_as_a_chain():
    from lipkit.bounds import register_bound

    @register_bound(_SkipSequential, replace=True)
    def _rule(m, p, shapes):
        return 1.0 + lipkit.lipschitz_bound(nn.Sequential(*m), p)

    torch.manual_seed(0)
    model = _SkipSequential(nn.Linear(3, 3))
    assert pairwise_bound(model, 2, None) is None
    res = compute_certificates(model, torch.randn(8, 3), 2)
    assert not res.roundoff_rigorous


@pytest.mark.parametrize("conv", [False, True])
def test_sortnet_and_linf_distance_roundoff_is_analysed_and_covers_float32_error(conv):
    from lipkit import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear

    torch.manual_seed(0)
    if conv:  # 24 inputs as 1 x 4 x 6 images; per-channel running means and biases
        model = nn.Sequential(nn.Unflatten(1, (1, 4, 6)), SortNeuronConv2d(1, 4, 3, padding=1, q=0.3),
                              LinfDistConv2d(4, 2, 2, stride=2), nn.Flatten(), SortNeuronLinear(12, 6))
    else:
        model = nn.Sequential(SortNeuronLinear(24, 32, q=0.3), LinfDistLinear(32, 16),
                              SortNeuronLinear(16, 6))
    model.train()
    with torch.no_grad():
        for _ in range(5):  # populate the running means
            model(torch.rand(64, 24))
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.rand(40, 24)
    res = lipkit.compute_certificates(model, x, "inf")
    assert res.roundoff_rigorous
    twin = copy.deepcopy(model).double()
    worst = 0.0
    for _ in range(20):  # float32 vs float64 on points of each certified ball
        xp = (x + (2 * torch.rand_like(x) - 1) * res.radius.float()[:, None]).clamp(0, 1)
        with torch.no_grad():
            err = (model(xp).double() - twin(xp.double())).abs().amax(1)
        worst = max(worst, float((2 * err / res.allowance).max()))
    assert worst <= 1.0  # margins move by at most twice the output error
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert float(res.allowance.max()) < 1e-3 * scale  # and the analysis is not vacuous


def test_certificates_default_to_the_batch_input_shape():
    """Without ``input_shape`` the bounds take ``x``'s own (the certificate is about perturbations of
    ``x``): for a CNN, the exact convolution on that grid, below the size-free bound; the radii equal those
    of an explicit ``input_shape``, and PGD at 0.999 of them breaks none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(27, 4)).eval()
    x = torch.rand(32, 36)
    default = compute_certificates(model, x, 2)
    explicit = compute_certificates(model, x, 2, input_shape=(36,))
    assert torch.equal(default.radius, explicit.radius) and default.lipschitz == explicit.lipschitz
    assert default.lipschitz == lipkit.lipschitz_bound(model, 2, input_shape=(36,))
    assert default.lipschitz < lipkit.lipschitz_bound(model, 2)  # the size-free bound
    assert (default.radius > 0).sum() >= 16
    chk = check_certificates(model, x, default.prediction, p=2, steps=40,
                             generator=torch.Generator().manual_seed(0))
    assert chk.n_broken == 0
