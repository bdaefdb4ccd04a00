"""lipkit.export of a MonotonicNetwork: same outputs, a bound no larger, monotonicity re-checked."""

from __future__ import annotations

import math

import pytest
import torch

import lipkit
from lipkit import exporting
from lipkit.monotonic import MonotonicMLP

NAMES = ["age", "sex", "chol", "bp", "x4", "x5"]


def _trained(floor: bool = True, seed: int = 0) -> tuple[MonotonicMLP, torch.Tensor]:
    torch.manual_seed(seed)
    m = MonotonicMLP(6, 16, 2, monotonic={"age": 1, "chol": -1, "x5": 1}, feature_names=NAMES, floor=floor)
    x = torch.randn(256, 6)
    y = (x[:, 0] - x[:, 2] + 2 * x[:, 1] * x[:, 3] > 0).float()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(m(x)[:, 0], y).backward()
        opt.step()
    return m.eval(), x


@pytest.mark.parametrize("floor", [True, False])
def test_export_same_outputs_and_bound(floor):
    m, x = _trained(floor)
    e = lipkit.export(m, x, p=("inf", 2))
    assert e.frozen and not m.frozen
    assert not any(isinstance(s, lipkit.nn.LipLinear) for s in e.modules())
    assert e.slope() == float(m.deployed_slope().item())
    xt = torch.randn(512, 6) * 3
    assert torch.equal(e(xt), m(xt))
    for p in (math.inf, 2.0):
        assert e.lipschitz_bounds[p] <= lipkit.lipschitz_bound(m, p)
        assert lipkit.lipschitz_bound(e, p) == e.lipschitz_bounds[p]
    res = lipkit.check_monotonic(e, xt)
    assert res.ok and res.checked_pairs > 0
    # frozen: the forward no longer reads the bound (a changed weight does not move lam)
    lam = e.slope()
    with torch.no_grad():
        e.body[0].weight.mul_(2.0)
    assert e.slope() == lam
    with pytest.raises(ValueError, match="below the body"):
        e.verify_slope()


def _tamper(monkeypatch, column: int, factor: float) -> None:
    real = exporting._replace_all

    def tampered(root):
        out = real(root)
        if isinstance(out, MonotonicMLP):  # _replace_all recurses: tamper at the top only
            with torch.no_grad():
                out.body[0].weight[:, column] *= factor
        return out

    monkeypatch.setattr(exporting, "_replace_all", tampered)


def test_tampered_export_is_caught_naming_the_feature(monkeypatch):
    m, x = _trained()
    _tamper(monkeypatch, NAMES.index("chol"), -100.0)
    with pytest.raises(lipkit.ExportError, match="chol"):
        lipkit.export(m, check_bound=False)  # no example: sampled points and extremes alone


def test_tampered_free_feature_still_caught_by_slope(monkeypatch):
    m, x = _trained()
    _tamper(monkeypatch, NAMES.index("sex"), 100.0)  # a free feature: monotone still, lam now too small
    with pytest.raises(lipkit.ExportError, match="below the body"):
        lipkit.export(m, check_bound=False)


def test_export_of_a_model_holding_the_wrapper():
    m, x = _trained()
    outer = torch.nn.Sequential(m, torch.nn.Identity())
    e = lipkit.export(outer, x, p="inf")
    assert e[0].frozen
    assert torch.equal(e(x), outer(x))


# ------------------------------------------------------------------ the fast l_1 -> l_inf body bound
def test_fast_body_bound_is_bit_identical():
    from test_monotonic import _bodies, _shake

    from lipkit.monotonic.fastbound import _fast, body_bound_1_inf

    bodies = [b for d in (3, 7) for _, b in _bodies(d, 2)]
    for act in ("groupsort", "relu", "spline"):
        for first in ("one-inf", "two-inf", "inf"):
            bodies.append(MonotonicMLP(9, 8, 2, monotonic=[1] * 9, activation=act, first_layer=first).body)
    for body in bodies:
        for seed in range(3):
            if seed:
                _shake(body, seed, 0.5 if seed == 1 else 3.0)
            assert _fast(body) is not None  # the fast path really ran
            assert body_bound_1_inf(body) == lipkit.lipschitz_bound(body, 1, math.inf)


def test_fast_body_bound_falls_back_with_the_registry_errors():
    from lipkit.monotonic.fastbound import _fast, body_bound_1_inf

    class Odd(torch.nn.Module):
        def forward(self, x):
            return x

    body = torch.nn.Sequential(torch.nn.Linear(3, 4), Odd())
    assert _fast(torch.nn.Linear(3, 2)) is None and _fast(torch.nn.Sequential()) is None
    with pytest.raises(lipkit.bounds.UnsupportedModuleError, match="Odd"):
        body_bound_1_inf(body)
    hooked = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    handle = hooked[0].register_forward_hook(lambda m, i, o: o * 10)
    with pytest.raises(lipkit.bounds.UnsupportedModuleError):
        body_bound_1_inf(hooked)
    with pytest.raises(lipkit.bounds.UnsupportedModuleError):
        lipkit.lipschitz_bound(hooked, 1, math.inf)
    handle.remove()
    assert body_bound_1_inf(hooked) == lipkit.lipschitz_bound(hooked, 1, math.inf)
