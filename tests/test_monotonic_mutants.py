"""The monotonic slope and the wrapper's own bound against exact values (issue 17's mutation scope for
lipkit.monotonic, issue 19).

* the wrapper's registered bound on every norm pair, including the mixed pairs the registry's chain rule
  asks for (l_inf -> l_1 among them), never below the exact constant of a linear body (brute force over
  the vertices of the l_inf ball);
* the eval-mode cache: used while the weights stay the same, dropped when a tensor changes in value, dtype
  or shape;
* ``freeze`` stores a float32 value (whatever torch's default dtype) and refuses a ``lam`` below the bound.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import lipkit
from lipkit.monotonic import MonotonicNetwork
from lipkit.monotonic import network as mono_net


def _exact_norm(a: list[list[Fraction]], p: float, q: float) -> Fraction:
    """``max ||A x||_q / ||x||_p`` exactly for p in {1, inf} (vertices of the unit ball), q in {1, inf}."""
    n = len(a[0])
    if p == 1:
        cols = [[row[j] for row in a] for j in range(n)]
        return max((max(abs(v) for v in c) if math.isinf(q) else sum(abs(v) for v in c)) for c in cols)
    best = Fraction(0)
    for signs in itertools.product((-1, 1), repeat=n):
        y = [sum(row[j] * signs[j] for j in range(n)) for row in a]
        val = max(abs(v) for v in y) if math.isinf(q) else sum(abs(v) for v in y)
        best = max(best, val)
    return best


def _linear_wrapper(scale: float = 1e-3) -> MonotonicNetwork:
    """A linear body (one ``nn.Linear``, tiny weights) with two outputs, each constrained in 3 inputs, and
    the slope floor ``lip = 1`` (so ``lam = 1`` dominates the body)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        body[0].weight.mul_(scale)
    return MonotonicNetwork(body, [[1, 1, -1, 0], [0, 1, 1, -1]], lip=1.0)


@pytest.mark.parametrize("p,q", [(1, 1), (1, math.inf), (math.inf, math.inf), (math.inf, 1)])
def test_wrapper_bound_covers_the_exact_constant_of_a_linear_body(p, q):
    """``f(x) = W x + b + lam C^T x`` is linear: its exact ``l_p -> l_q`` constant is that of ``W + lam C^T``
    (exact rationals of the float32 weights and the forward's float32 lam).  The rule bounds it by
    ``||W||_{p->q} + ||lam C^T||_{p->q}``, and on these constraints the second term dominates, so a rule
    that used the wrong norm pair for ``lam C^T`` (e.g. ``l_inf -> l_inf`` when asked for ``l_inf -> l_1``,
    half the value here) falls below the exact constant."""
    model = _linear_wrapper()
    lam = Fraction(float(model.deployed_slope(torch.float32)))
    w = model.body[0].weight.detach()
    c = model.constraints.T  # (out, in)
    a = [[Fraction(float(w[i, j])) + lam * int(c[i, j]) for j in range(4)] for i in range(2)]
    exact = _exact_norm(a, p, q)
    bound = Fraction(lipkit.lipschitz_bound(model, p, q))
    assert bound >= exact
    # and not a vacuous constant: within the weights' size of the exact value where the matrix norm is
    # computable exactly (l_inf -> l_1 is bounded by the sum of the rows' l_1 norms: 6 here, exact 4)
    assert bound <= exact * (Fraction(3, 2) if (math.isinf(p) and q == 1) else 1) * (1 + Fraction(1, 100))


def test_eval_cache_is_used_and_dropped_on_any_change(monkeypatch):
    """In eval mode the body's bound is computed once while the tensors are unchanged, and again after a
    change of value, dtype or shape (the cache compares a snapshot)."""
    calls = []
    real = mono_net.body_bound_1_inf
    monkeypatch.setattr(mono_net, "body_bound_1_inf", lambda body: calls.append(1) or real(body))
    torch.manual_seed(0)
    model = MonotonicNetwork(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), [1, 0, -1]).eval()
    x = torch.randn(5, 3)
    model(x)
    n = len(calls)  # construction checks the body once, the first eval forward computes and caches
    model(x)
    model.slope()
    assert len(calls) == n  # cached
    with torch.no_grad():
        model.body[0].weight.data[0, 0] += 1.0
    model(x)
    assert len(calls) == n + 1  # a value changed
    model.double()
    model(x.double())
    assert len(calls) == n + 2  # the dtypes changed
    model.float()
    model(x)
    assert len(calls) == n + 3
    model.train()
    model(x)
    model(x)
    assert len(calls) == n + 5  # training mode: every forward


def test_cache_compares_shapes_too():
    """A tensor replaced by one of another shape (same number of tensors) invalidates the cache."""
    from lipkit.monotonic.network import MonotonicNetwork as M

    torch.manual_seed(1)
    model = M(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), [1, -1]).eval()
    model.slope()
    assert model._cache_holds()
    snapshot = model._cache[0]
    # same values flattened, different shape
    model._cache = ([s.reshape(-1) if s.dim() == 2 else s for s in snapshot], model._cache[1])
    assert not model._cache_holds()
    model._cache = ([s.double() for s in snapshot], model._cache[1])
    assert not model._cache_holds()  # another dtype, equal values
    model._cache = (snapshot, model._cache[1])
    assert model._cache_holds()


def test_freeze_stores_a_float32_value_under_a_float64_default_dtype():
    torch.manual_seed(2)
    model = MonotonicNetwork(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1)), [1, 1, 0])
    exact = model.slope()
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model.freeze()
    finally:
        torch.set_default_dtype(before)
    lam = model.slope()
    assert float(torch.tensor(lam, dtype=torch.float32).item()) == lam  # a float32 value
    assert lam >= exact
    assert lam == float(mono_net._float_up(exact, torch.float32))  # the smallest float32 >= slope()


def test_verify_slope_accepts_lam_equal_to_the_bound():
    """``lam >= L`` is the guarantee: a frozen lam exactly at the float32 rounding up of the bound passes."""
    torch.manual_seed(3)
    body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model = MonotonicNetwork(body, [1, 0, -1])
    bound = lipkit.lipschitz_bound(body, 1, math.inf)
    lam32 = float(mono_net._float_up(bound, torch.float32))
    model.freeze(lam32)  # verify_slope inside: must accept lam == float32(bound) rounded up
    assert model.slope() == lam32
    below = float(torch.nextafter(torch.tensor(lam32, dtype=torch.float32), torch.tensor(0.0)).item())
    if below < bound:
        with pytest.raises(ValueError, match="below"):
            model.freeze(below)


def test_freeze_refuses_bad_lams_and_keeps_the_previous_one():
    torch.manual_seed(4)
    body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model = MonotonicNetwork(body, [1, 0, -1])
    model.freeze()
    lam0 = model.slope()
    for bad in (math.inf, -math.inf, math.nan, True, "1.0", 1.0 + 2.0**-40):
        with pytest.raises(ValueError, match="finite float32 number"):
            model.freeze(bad)
        assert model.frozen and model.slope() == lam0  # the wrapper is left as it was
    with pytest.raises(ValueError, match="below"):
        model.freeze(lam0 / 4)
    assert model.frozen and model.slope() == lam0
    # the float32 check does not follow torch's default dtype
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with pytest.raises(ValueError, match="finite float32 number"):
            model.freeze(lam0 * (1 + 2.0**-40))
    finally:
        torch.set_default_dtype(before)
    model.freeze(float(lam0) * 2)  # a float32 value above the bound: accepted
    assert model.slope() == lam0 * 2


def test_one_dimensional_body_outputs_and_mismatched_constraints():
    torch.manual_seed(5)
    body = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))  # returns (batch,)
    model = MonotonicNetwork(body, [1, 0, 0])
    x = torch.randn(4, 3)
    out = model(x)
    assert out.shape == (4, 1)
    lam = model.deployed_slope(torch.float32)
    assert torch.allclose(out, body(x)[:, None] + x[:, :1] * lam)
    two = MonotonicNetwork(nn.Sequential(nn.Linear(3, 2)), [[1, 0, 0], [0, 1, 0]], lip=1.0)
    two.body[0] = nn.Linear(3, 3)  # the body changed after construction: the forward checks again
    with pytest.raises(ValueError, match="output columns"):
        two(x)


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_deployed_slope_is_rounded_up_in_every_dtype(default):
    """The forward's lam in float32, float64, float16 and bfloat16 is never below :meth:`slope` and has the
    requested dtype, whatever torch's default dtype (float64 and float32 get the same float32 value)."""
    torch.manual_seed(6)
    model = MonotonicNetwork(nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 1)), [1, -1, 0])
    exact = model.slope()
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(default)
        lams = {dt: model.deployed_slope(dt) for dt in (torch.float32, torch.float64, torch.float16,
                                                         torch.bfloat16)}
    finally:
        torch.set_default_dtype(before)
    for dt, lam in lams.items():
        assert lam.dtype == dt
        assert float(lam.item()) >= exact, (dt, float(lam.item()), exact)
    assert float(lams[torch.float64].item()) == float(lams[torch.float32].item())
    # rounded up, not to nearest: within one float32 step of the exact slope
    lam32 = lams[torch.float32]
    step = float(torch.nextafter(lam32, torch.tensor(math.inf)).item()) - float(lam32)
    assert float(lam32.item()) - exact < step


@pytest.mark.parametrize("kind", ["groupsort", "relu", "linear"])
def test_fast_body_bound_takes_the_fast_path_and_equals_the_registry(kind):
    """A quick check of :func:`lipkit.monotonic.fastbound._fast` on small bodies: the fast path runs (not
    the fallback) and gives the registry's float, bit for bit (the full sweep is in
    tests/test_monotonic_export.py)."""
    from lipkit.monotonic.fastbound import _fast, body_bound_1_inf

    torch.manual_seed(7)
    act = {"groupsort": lambda: lipkit.GroupSort(2), "relu": nn.ReLU, "linear": nn.Identity}[kind]
    body = nn.Sequential(lipkit.LipLinear(3, 4, constraint="one-inf"), act(), nn.Linear(4, 4), act(),
                         nn.Linear(4, 2))
    fast = _fast(body)
    assert fast is not None
    assert fast == lipkit.lipschitz_bound(body, 1, math.inf) == body_bound_1_inf(body)


def test_fast_body_bound_falls_back_to_the_registry_on_l1_to_linf():
    """Bodies outside the fast path (an ``nn.Sequential`` subclass, a replaced ``nn.Sequential`` rule) get
    ``lipschitz_bound(body, 1, inf)`` itself: on a wide last layer it differs from the l_1 -> l_1, l_inf ->
    l_inf and l_2 -> l_inf values, so a fallback that asked for another norm pair would show."""
    from lipkit.bounds.registry import LIPSCHITZ
    from lipkit.monotonic.fastbound import _fast, body_bound_1_inf

    class MySequential(nn.Sequential):
        pass

    torch.manual_seed(8)
    layers = [nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4)]
    body = MySequential(*layers)
    assert _fast(body) is None
    want = lipkit.lipschitz_bound(body, 1, math.inf)
    assert body_bound_1_inf(body) == want
    others = {lipkit.lipschitz_bound(body, 1), lipkit.lipschitz_bound(body, math.inf),
              lipkit.lipschitz_bound(body, 2, math.inf)}
    assert want not in others
    # a user's rule for nn.Sequential replaces the registry's: the fast path must not bypass it
    plain = nn.Sequential(*layers)
    rule = LIPSCHITZ._rules[nn.Sequential]
    try:
        lipkit.register_bound(nn.Sequential, subclasses=True, mixed_norms=True, replace=True)(
            lambda m, p, shapes, q=None: 123.0)
        assert _fast(plain) is None
        assert body_bound_1_inf(plain) == lipkit.lipschitz_bound(plain, 1, math.inf) == 123.0
    finally:
        LIPSCHITZ._rules[nn.Sequential] = rule


def test_fast_body_bound_refuses_a_negative_rule_as_the_registry_does():
    """A child rule returning a negative (or NaN) constant: the registry raises ``ValueError``; the fast path
    must not turn it into a bound."""
    from lipkit.bounds.registry import LIPSCHITZ
    from lipkit.monotonic.fastbound import body_bound_1_inf

    class Weird(nn.Module):
        def forward(self, x):
            return x

    try:
        lipkit.register_bound(Weird, mixed_norms=True)(lambda m, p, shapes, q=None: -1.0)
        body = nn.Sequential(nn.Linear(3, 3), Weird(), nn.Linear(3, 1))
        with pytest.raises(ValueError):
            lipkit.lipschitz_bound(body, 1, math.inf)
        with pytest.raises(ValueError):
            body_bound_1_inf(body)
    finally:
        LIPSCHITZ._rules.pop(Weird, None)
