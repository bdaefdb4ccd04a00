"""Certified l_inf radii of single-logit binary models (monotone tabular models), checked by attacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipkit
from lipkit.certify import compute_certificates, pgd
from lipkit.certify.twin import float64_copy
from lipkit.monotonic import MonotonicMLP


class _TwoLogits(nn.Module):
    """``(0, f(x))``: argmax is class 1 exactly when ``f(x) > 0``, the decision the certificate covers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        f = self.model(x)
        return torch.cat([torch.zeros_like(f), f], dim=1)


@pytest.fixture(scope="module")
def heart():
    try:
        data = lipkit.load_dataset("heart", seed=0)
    except Exception as exc:  # pragma: no cover - the data set is installed in the dev environment
        pytest.skip(f"heart data set unavailable: {exc}")
    torch.manual_seed(0)
    model = MonotonicMLP(data.num_features, 32, 2, monotonic=data.monotonic_vector(),
                         feature_names=data.feature_names)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(data.x_train)[:, 0], data.y_train)
        loss.backward()
        opt.step()
    return data, model.eval()


def test_binary_rule_values(heart):
    data, model = heart
    x = data.x_test
    res = compute_certificates(model, x, "inf")
    lip = lipkit.lipschitz_bound(model, "inf")
    assert res.lipschitz == lip and lip > model.slope()  # the wrapper's own bound, never lam
    with torch.no_grad():
        f32 = model(x)[:, 0]
        f64 = float64_copy(model)(x.double())[:, 0]  # the float32 weights, cast exactly
    assert torch.equal(res.prediction, (f32 > 0).long())
    acc = float((res.prediction == data.y_test.long()).double().mean())
    assert acc > 0.7  # a trained model, not a fresh one
    s = res.prediction.double() * 2 - 1
    assert torch.allclose(res.margin, s * f64, rtol=0, atol=1e-9)
    expected = ((s * f64 - res.allowance) / lip).clamp_min(0)
    assert torch.allclose(res.radius, expected, rtol=1e-9, atol=0)
    assert bool((res.radius <= expected).all())  # rounded down
    assert bool((res.allowance >= 1e-4 * f64.abs()).all())  # heuristic allowance (wrapper: no chain)
    assert (res.radius > 0).float().mean() > 0.5
    assert torch.equal(lipkit.certified_radius(model, x, "inf"), res.radius)
    ca = lipkit.certified_accuracy(model, x, data.y_test.long(), [0.0, 0.05], "inf")
    assert ca[0.0] == pytest.approx(acc) and ca[0.05] <= ca[0.0]


def test_pgd_on_the_radius_breaks_nothing(heart):
    data, model = heart
    x = data.x_test
    res = compute_certificates(model, x, "inf")
    two = _TwoLogits(model).eval()
    ok = res.radius > 0
    g = torch.Generator().manual_seed(0)
    adv = pgd(two, x[ok], res.prediction[ok], res.radius[ok].float(), "inf", steps=100, restarts=3,
              clamp=None, generator=g)
    assert ((adv - x[ok]).abs().amax(1).double() <= res.radius[ok] * (1 + 1e-6)).all()
    with torch.no_grad():
        assert torch.equal((model(adv)[:, 0] > 0).long(), res.prediction[ok])
    # the same attack is strong enough to break the decision at a few times the radius
    adv = pgd(two, x[ok], res.prediction[ok], (res.radius[ok] * 4 + 0.05).float(), "inf", steps=100,
              restarts=3, clamp=None, generator=g)
    with torch.no_grad():
        assert ((model(adv)[:, 0] > 0).long() != res.prediction[ok]).any()


def test_exact_on_a_linear_model():
    torch.manual_seed(1)
    lin = nn.Linear(5, 1)
    x = torch.randn(64, 5)
    res = compute_certificates(lin, x, "inf")
    assert res.roundoff_rigorous  # a plain chain: a-priori round-off bound
    w = lin.weight.detach().double()[0]
    assert res.lipschitz == pytest.approx(float(w.abs().sum()), rel=1e-12)
    f = x.double() @ w + lin.bias.detach().double()
    assert torch.allclose(res.radius, (f.abs() - res.allowance) / w.abs().sum(), rtol=1e-9, atol=0)
    # the radius is tight: the worst corner just beyond it flips the decision (the worst corner inside does
    # not)
    s = res.prediction.double() * 2 - 1
    step = -(s[:, None] * torch.sign(w)[None, :])
    beyond = (x.double() + step * (res.radius[:, None] * 1.001 + res.allowance[:, None])).float()
    inside = (x.double() + step * res.radius[:, None]).float()
    with torch.no_grad():
        assert torch.equal((lin(inside)[:, 0] > 0).long(), res.prediction)
        assert not torch.equal((lin(beyond)[:, 0] > 0).long(), res.prediction)


def test_l2_and_bad_outputs():
    torch.manual_seed(2)
    m = MonotonicMLP(4, 8, 1, monotonic=[1, 0, 0, -1]).eval()
    x = torch.randn(16, 4)
    r2 = lipkit.certified_radius(m, x, 2)
    assert r2.shape == (16,) and torch.isfinite(r2).all()
    assert compute_certificates(m, x, 2).lipschitz == lipkit.lipschitz_bound(m, 2)

    flat = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))  # (B,) instead of (B, 1)
    with pytest.raises(ValueError, match="logits of shape"):
        lipkit.certified_radius(flat, x, "inf")


def test_exported_wrapper_gets_the_a_priori_roundoff_bound(heart):
    from lipkit.certify.margin import _error_bound

    data, model = heart
    plain = lipkit.export(model, data.x_val, p="inf")
    x = data.x_test
    res = compute_certificates(plain, x, "inf")
    assert res.roundoff_rigorous  # g(x) + x A with g a plain chain: analysed, not guessed
    assert torch.equal(res.prediction, compute_certificates(model, x, "inf").prediction)
    # the bound E really covers |f32(x') - f64(x')| over the ball (the allowance is 2 E), at large inputs too
    twin = float64_copy(plain)
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 100.0, 1e4):
        xs = x * scale
        x64 = xs.double()
        r = torch.full((x.shape[0],), 0.5 * scale, dtype=torch.float64)
        with torch.no_grad():
            e = _error_bound(plain, twin, x64, math.inf, r, None, twin(x64))
            assert e is not None
            for _ in range(5):
                u = torch.rand(xs.shape, generator=g, dtype=torch.float64) * 2 - 1
                xp = x64 + u * r[:, None] * 0.99
                xp32 = xp.float()  # a float32 point of the ball (up to its rounding, well inside 0.5 scale)
                err = (plain(xp32)[:, 0].double() - twin(xp32.double())[:, 0]).abs()
                assert bool((err <= e).all()), (scale, float((err / e).max()))
    two = _TwoLogits(plain).eval()
    ok = res.radius > 0
    adv = pgd(two, x[ok], res.prediction[ok], res.radius[ok].float(), "inf", steps=100, restarts=3,
              clamp=None, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal((plain(adv)[:, 0] > 0).long(), res.prediction[ok])


def test_overridden_forward_gets_no_a_priori_bound(heart):
    data, model = heart
    plain = lipkit.export(model, data.x_val, p="inf")

    class Shifted(type(plain)):
        def forward(self, x):
            return super().forward(x) + 0.0

    plain.__class__ = Shifted
    with pytest.raises(lipkit.bounds.UnsupportedModuleError):
        compute_certificates(plain, data.x_test, "inf")  # the registry refuses the override
    from lipkit.certify.margin import _skip_error_bound

    twin = float64_copy(plain)
    x64 = data.x_test.double()
    with torch.no_grad():
        assert _skip_error_bound(plain, twin, x64, math.inf, torch.zeros(len(x64)), None, twin(x64)) is None


def test_multi_output_exported_wrapper_gets_the_a_priori_roundoff_bound():
    """A wrapper with 3 outputs (per-output constraints) goes through the multi-class certificate: its
    round-off is the a-priori bound of ``g(x) + x A`` (rigorous), not the observed-error allowance."""
    from lipkit.monotonic import MonotonicNetwork

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = MonotonicNetwork(body, [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 1]]).eval()
    x = torch.randn(32, 4)
    plain = lipkit.export(model, x, p="inf")
    res = compute_certificates(plain, x, "inf")
    assert res.roundoff_rigorous
    assert torch.equal(res.prediction, plain(x).argmax(dim=1))
