"""Tests that kill the mutants of the certificate's round-off analysis (``make mutate SHARD=roundoff``).

Each test asserts against an independent value: the documented formulas of :mod:`lipkit.certify.roundoff`
and :mod:`lipkit.certify.margin` recomputed here by hand, element by element in Python floats (or exact
``fractions.Fraction``), on hand-made layers whose every weight, bias and running mean is set.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import lipkit
from lipkit.certify.margin import _round_down, compute_certificates, pairwise_bound
from lipkit.certify.roundoff import (
    REL_FLOOR,
    UNDERFLOW,
    U,
    affine_error,
    distance_terms,
    linf_distance_error,
    margin_allowance,
    rounded_activation_error,
    sortnet_error,
)
from lipkit.nn.distance import LinfDistConv2d, LinfDistLinear, SortNeuronLinear

INF = math.inf
F64 = torch.float64


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _norm(values: list[float], p: float) -> float:
    """l_p norm in exact arithmetic for inf, to double precision for p = 2."""
    if math.isinf(p):
        return max(abs(v) for v in values)
    return math.sqrt(float(sum(Fraction(v) ** 2 for v in values)))


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, _t(expected), rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- margin_allowance


def test_margin_allowance_rigorous_is_exactly_twice_the_bound_inflated():
    bound = _t([1.0, 1e-9])
    scale = _t([1.0, 4.0])
    observed = _t([1.0, 0.0])  # observed == bound does not refute the analysis
    allowance, rigorous = margin_allowance(bound, scale, observed)
    assert rigorous is True
    assert allowance.tolist() == [2.0 * (1.0 + 1e-9), REL_FLOOR * 4.0 * (1.0 + 1e-9)]


def test_margin_allowance_heuristic_takes_the_larger_of_floor_and_observed():
    scale = _t([1.0, 10.0])
    observed = _t([1e-3, 1e-7])
    allowance, rigorous = margin_allowance(None, scale, observed)
    assert rigorous is False
    assert allowance.tolist() == [8e-3 * (1.0 + 1e-9), 1e-3 * (1.0 + 1e-9)]
    # one sample above its bound sends the whole batch to the heuristic
    allowance, rigorous = margin_allowance(_t([1.0, 1e-8]), scale, observed)
    assert rigorous is False
    assert allowance.tolist() == [8e-3 * (1.0 + 1e-9), 1e-3 * (1.0 + 1e-9)]


# --------------------------------------------------------------------------- the underflow terms


def test_underflow_term_by_hand():
    from lipkit.certify.roundoff import _underflow

    assert UNDERFLOW == 2.0**-125
    assert _underflow(4, 3, 2.0) == 3 * 2.0**-125 * 2.0
    assert _underflow(8, 3, 3.0) == 3 * 2.0**-125 * 2.0
    assert _underflow(4, 3, INF) == 3 * 2.0**-125


@pytest.mark.parametrize("p", [2.0, INF])
def test_underflow_alone_at_zero_and_with_a_batch_of_one(p):
    """At zero input (no bias, no spread) only the underflow terms remain: k 2^-125 per output of an
    affine layer (k = fan-in + 1), 2^-125 per output of an activation, (K + 3) 2^-125 per SortNet output.
    A batch of one sample: the per-sample sizes are read from sample 0."""
    root = (lambda n: 1.0) if math.isinf(p) else (lambda n: n ** 0.5)
    zero = _t([0.0])
    lin = nn.Linear(4, 9, bias=False).double()
    assert affine_error(lin, torch.zeros(1, 4, dtype=F64), zero, p).tolist() == [5 * UNDERFLOW * root(9)]
    conv = nn.Conv2d(2, 1, 3, bias=False).double()  # one output channel, fan-in 18, 2 x 2 outputs
    got = affine_error(conv, torch.zeros(1, 2, 4, 4, dtype=F64), zero, p)
    assert got.tolist() == [19 * UNDERFLOW * root(4)]
    assert rounded_activation_error(torch.zeros(1, 9, dtype=F64), zero, p).tolist() == [UNDERFLOW * root(9)]
    m = SortNeuronLinear(3, 4, q=0.5, bias=False, mean_shift=False).double().eval()
    got = sortnet_error(m, torch.zeros(1, 4, dtype=F64), zero, p)
    assert got.tolist() == [6 * UNDERFLOW * root(4)]


# --------------------------------------------------------------------------- affine_error


def _gamma2(k: int, u: float = U) -> float:
    return 2.0 * k * u / (1.0 - k * u)


@pytest.mark.parametrize("p", [2.0, INF])
def test_affine_error_linear_without_bias_by_hand(p):
    lin = nn.Linear(2, 3, bias=False).double()
    w = [[1.0, -2.0], [0.5, 0.25], [-3.0, 0.0]]
    with torch.no_grad():
        lin.weight.copy_(_t(w))
    h = _t([[1.0, -1.0], [0.0, 2.0]])
    spread = _t([0.0, 0.75])
    u = 2.0**-30
    got = affine_error(lin, h, spread, p, u=u)
    wabs = lipkit.bounds.operator_norm(_t(w).abs(), p)
    expected = []
    for b in range(2):
        mag = [sum(abs(w[o][i]) * abs(float(h[b, i])) for i in range(2)) for o in range(3)]
        under = 3 * UNDERFLOW * (1.0 if math.isinf(p) else 3 ** 0.5)
        expected.append(_gamma2(3, u) * (_norm(mag, p) + wabs * float(spread[b])) + under)
    _close(got, expected)


@pytest.mark.parametrize("p", [2.0, INF])
def test_affine_error_conv2d_by_hand(p):
    """A 2x2 kernel over a 3x3 input (no padding): fan-in n = 2 * 2 * 2 = 8 with 2 input channels, k = 9,
    and 2 x 2 x 2 = 8 outputs per sample."""
    conv = nn.Conv2d(2, 2, 2).double()
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-4, 5, conv.weight.shape, dtype=F64) / 4)
        conv.bias.copy_(_t([0.5, -1.5]))
    h = torch.randint(-8, 9, (2, 2, 3, 3), dtype=F64) / 8
    spread = _t([0.0, 0.5])
    got = affine_error(conv, h, spread, p)
    w, bias = conv.weight.detach(), conv.bias.detach()
    abs_twin = nn.Conv2d(2, 2, 2, bias=False).double()
    with torch.no_grad():
        abs_twin.weight.copy_(w.abs())
    wabs = lipkit.lipschitz_bound(abs_twin, p, input_shape=(2, 3, 3))  # |W| at h's size
    assert wabs < lipkit.lipschitz_bound(abs_twin, p) or p == INF  # (tighter than the size-free bound)
    expected = []
    for b in range(2):
        mag = []
        for o in range(2):
            for y in range(2):
                for x in range(2):
                    dot = sum(abs(float(w[o, c, i, j])) * abs(float(h[b, c, y + i, x + j]))
                              for c in range(2) for i in range(2) for j in range(2))
                    mag.append(dot + abs(float(bias[o])))
        under = 9 * UNDERFLOW * (1.0 if math.isinf(p) else 8 ** 0.5)
        expected.append(_gamma2(9) * (_norm(mag, p) + wabs * float(spread[b])) + under)
    _close(got, expected)


def test_rounded_activation_error_by_hand():
    out = _t([[0.5, -0.25, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    spread = _t([0.0, 3.0])
    u = 2.0**-40
    _close(rounded_activation_error(out, spread, INF, u=u),
           [16 * u * 1.0 + UNDERFLOW, 16 * u * (2.0 + 3.0) + UNDERFLOW])
    _close(rounded_activation_error(out, spread, 2.0, u=u),
           [16 * u * _norm([0.5, 0.25, 1.0], 2) + 2 * UNDERFLOW, 16 * u * 5.0 + 2 * UNDERFLOW])


# --------------------------------------------------------------------------- distance layers


def _dense(cls, mean_shift: bool, bias: bool, **kw):
    m = cls(3, 2, bias=bias, mean_shift=mean_shift, **kw).double().eval()
    with torch.no_grad():
        if bias:
            m.bias.copy_(_t([0.25, -0.5]))
        if mean_shift:
            m.running_mean.copy_(_t([0.125, -2.0]))
    return m


@pytest.mark.parametrize("mean_shift", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_distance_terms_dense_by_hand(mean_shift, bias):
    m = _dense(LinfDistLinear, mean_shift, bias)
    out = _t([[1.0, 3.0], [-0.5, 0.0]])
    s, extra = distance_terms(m, out)
    mu = [0.125, -2.0] if mean_shift else [0.0, 0.0]
    b = [0.25, -0.5] if bias else [0.0, 0.0]
    assert s.tolist() == [[out[i, o].item() + mu[o] - b[o] for o in range(2)] for i in range(2)]
    assert extra.tolist() == [abs(mu[o]) + abs(b[o]) for o in range(2)]


def test_distance_terms_ignore_the_running_mean_when_mean_shift_is_off():
    """The layer subtracts its running mean only with ``mean_shift`` on (also when a buffer is left over
    after switching it off); a batch of one sample."""
    m = _dense(LinfDistLinear, True, True)
    m.mean_shift = False
    out = _t([[1.0, 3.0]])
    s, extra = distance_terms(m, out)
    assert s.tolist() == [[1.0 - 0.25, 3.0 + 0.5]]
    assert extra.tolist() == [0.25, 0.5]
    # and S is the layer's distance max_i |x_i - w_oi| itself
    x = _t([[0.5, -1.0, 2.0]])
    with torch.no_grad():
        s, _ = distance_terms(m, m(x))
    torch.testing.assert_close(s, (x[:, None, :] - m.weight.detach()).abs().amax(-1), rtol=1e-15, atol=1e-15)


def test_distance_terms_conv_are_per_channel_in_channel_major_order():
    m = LinfDistConv2d(1, 2, 1).double().eval()
    with torch.no_grad():
        m.bias.copy_(_t([1.0, -4.0]))
        m.running_mean.copy_(_t([0.5, 2.0]))
    out = torch.arange(16, dtype=F64).reshape(2, 2, 2, 2)
    s, extra = distance_terms(m, out)
    shift = [0.5 - 1.0] * 4 + [2.0 + 4.0] * 4
    assert s.tolist() == [[8.0 * i + j + shift[j] for j in range(8)] for i in range(2)]
    assert extra.tolist() == [1.5] * 4 + [6.0] * 4


#: the layers of _dense(..., bias=True, mean_shift=True): (running mean, bias) per output
_MU_B = [(0.125, 0.25), (-2.0, -0.5)]
_OUT = [[1.0, 3.0], [-0.5, 0.0]]
_SPREAD = [0.0, 0.5]


def _per_output_by_hand(p: float, term) -> list[float]:
    """For each of the two inputs, the l_p norm over outputs of ``term(y, mu, b, spread)``."""
    return [_norm([term(_OUT[i][o], mu, b, _SPREAD[i]) for o, (mu, b) in enumerate(_MU_B)], p)
            for i in range(2)]


@pytest.mark.parametrize("p", [2.0, INF])
def test_linf_distance_error_by_hand(p):
    m = _dense(LinfDistLinear, True, True)
    u = 2.0**-20

    def term(y, mu, b, spread):
        return 4.0 * u * (abs(y + mu - b) * (1.0 + 1e-12) + spread + abs(mu) + abs(b))

    _close(linf_distance_error(m, _t(_OUT), _t(_SPREAD), p, u=u), _per_output_by_hand(p, term))


@pytest.mark.parametrize("p", [2.0, INF])
def test_sortnet_error_by_hand(p):
    m = _dense(SortNeuronLinear, True, True, q=0.5)
    c = m.coefficients
    assert c.tolist() == [4 / 7, 2 / 7, 1 / 7]  # K = 3 order statistics, c_0 = 4/7
    u = 2.0**-20

    def term(y, mu, b, spread):
        return 2.0 * (3 + 3) * u * (abs(y + mu - b) / (4 / 7) * (1.0 + 1e-9) + spread + abs(mu) + abs(b))

    underflow = 6 * UNDERFLOW * (1.0 if math.isinf(p) else 2 ** 0.5)
    expected = [e + underflow for e in _per_output_by_hand(p, term)]
    _close(sortnet_error(m, _t(_OUT), _t(_SPREAD), p, u=u), expected)


# --------------------------------------------------------------------------- margin.py


def test_round_down_is_one_ulp_below_the_shrunk_value_and_never_negative():
    t = _t([1.0, 3.5, 0.0, 1e-300, -2.0])
    got = _round_down(t).tolist()
    want = [max(0.0, math.nextafter(v * (1.0 - 1e-12), -INF)) for v in t.tolist()]
    assert got == want
    assert got[0] < 1.0 - 1e-12 and got[2] == 0.0 and got[4] == 0.0


@pytest.mark.parametrize("p", [2.0, INF])
def test_pairwise_bound_by_hand(p):
    """Head rows whose differences have exact norms: ||(3, 4, 0)||_2 = 5, ||.||_1 = 7, etc.; the body (a
    linear layer and a ReLU) has different bounds for l2 and l_inf."""
    head = nn.Linear(3, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))
    first = nn.Linear(2, 3)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0], [0.5, -1.0], [0.0, 2.0]]))
    model = nn.Sequential(first, nn.ReLU(), head)
    got = pairwise_bound(model, p, None)
    body = lipkit.lipschitz_bound(nn.Sequential(first, nn.ReLU()), p)
    assert body != lipkit.lipschitz_bound(nn.Sequential(first, nn.ReLU()), INF if p == 2.0 else 2.0)
    rows = [[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]
    q = 2.0 if p == 2.0 else 1.0
    slack = 4.0 * (3 + 4) * 2.0**-52
    for c in range(3):
        for j in range(3):
            diff = [a - b for a, b in zip(rows[c], rows[j], strict=True)]
            norm = math.sqrt(sum(v * v for v in diff)) if q == 2.0 else sum(abs(v) for v in diff)
            assert got[c, j].item() == norm * body * (1.0 + slack) * (1.0 + 1e-12)
    assert got.dtype == F64


def test_pairwise_bound_passes_the_input_shape_to_the_body():
    """A padded convolution's l2 bound depends on the input size: the body bound is the one for that shape."""
    p = 2.0
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(9, 2))
    shape = (1, 3, 3)
    with_shape = lipkit.lipschitz_bound(model[:-1], p, input_shape=shape)
    assert with_shape < lipkit.lipschitz_bound(model[:-1], p)
    got = pairwise_bound(model, p, shape)
    w = model[-1].weight.detach().double()
    norm = torch.linalg.vector_norm(w[0] - w[1], ord=2.0 if p == 2.0 else 1.0).item()
    slack = 4.0 * (9 + 4) * 2.0**-52
    torch.testing.assert_close(got[0, 1], torch.tensor(norm * with_shape * (1.0 + slack) * (1.0 + 1e-12),
                                                       dtype=F64), rtol=1e-15, atol=0)


def test_pairwise_bound_is_none_outside_its_class():
    assert pairwise_bound(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), 2.0, None) is None
    assert pairwise_bound(nn.Sequential(), 2.0, None) is None
    assert pairwise_bound(nn.Linear(3, 2), 2.0, None) is None
    class _NoRule(nn.Module):  # a body without a Lipschitz rule
        def forward(self, x):
            return x

    assert pairwise_bound(nn.Sequential(_NoRule(), nn.Linear(3, 2)), 2.0, None) is None
    assert pairwise_bound(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), 2.0, None) is not None
    single = pairwise_bound(nn.Sequential(nn.Linear(3, 2)), 2.0, None)
    assert single is not None and single.shape == (2, 2)


# --------------------------------------------------------------------------- the radius


def test_radius_of_a_linear_classifier_is_margin_minus_allowance_over_the_pairwise_bound():
    """f(x) = W x: the radius is min_j (f_c - f_j - allowance) / B[c, j], rounded down (l2 and l_inf)."""
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    model = nn.Sequential(lin)
    x = torch.tensor([[2.0, 0.5], [0.25, 1.0]])
    for p in (2.0, INF):
        res = compute_certificates(model, x, p)
        pair = pairwise_bound(model, p, None)
        logits = x.double() @ lin.weight.detach().double().T
        for i in range(2):
            c = int(logits[i].argmax())
            r = min((logits[i, c] - logits[i, j] - res.allowance[i]).item() / pair[c, j].item()
                    for j in range(3) if j != c)
            assert res.radius[i].item() == max(0.0, math.nextafter(r * (1.0 - 1e-12), -INF))


def _expected_certificate(model: nn.Module, x: torch.Tensor, p: float, lcj_of_pred):
    """The documented certificate rebuilt from its parts: L_cj, r_max, forward_error_bound over the ball of
    radius r_max, margin_allowance, then min_j (f_c - f_j - allowance) / L_cj rounded down."""
    from lipkit.certify.roundoff import chain_of, forward_error_bound
    from lipkit.certify.twin import float64_copy

    twin = float64_copy(model).eval()
    x64 = x.double()
    with torch.no_grad():
        logits32, logits = model(x), twin(x64)
    radii, allowances = [], []
    r_max = []
    for i in range(x.shape[0]):
        c = int(logits32[i].argmax())
        js = [j for j in range(logits.shape[1]) if j != c]
        r_max.append(max(0.0, min((logits[i, c] - logits[i, j]).item() / lcj_of_pred(c, j) for j in js)))
    bound = forward_error_bound(chain_of(twin), x64, p, _t(r_max))
    scale = logits.abs().amax(1)
    observed = (logits32.double() - logits).abs().amax(1)
    allowance, rigorous = margin_allowance(bound, scale, observed)
    for i in range(x.shape[0]):
        c = int(logits32[i].argmax())
        r = min((logits[i, c] - logits[i, j] - allowance[i]).item() / lcj_of_pred(c, j)
                for j in range(logits.shape[1]) if j != c)
        radii.append(max(0.0, math.nextafter(r * (1.0 - 1e-12), -INF)))
        allowances.append(allowance[i].item())
    return radii, allowances, rigorous


@pytest.mark.parametrize("p", [2.0, INF])
def test_certificate_with_the_global_bound_by_hand(p):
    """No linear head (the chain ends in a ReLU... then an Identity): L_cj = round_up(k L, 2), k = sqrt(2)
    for l2 and 2 for l_inf; large inputs so that 2 E dominates the 1e-5 floor."""
    from lipkit.bounds import round_up

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Identity()).eval()
    x = 50.0 * torch.randn(6, 4)
    res = compute_certificates(model, x, p)
    lip = lipkit.lipschitz_bound(model, p)
    assert res.lipschitz == lip
    lcj = round_up((math.sqrt(2.0) if p == 2.0 else 2.0) * lip, 2)
    radii, allowances, rigorous = _expected_certificate(model, x, p, lambda c, j: lcj)
    assert rigorous and res.roundoff_rigorous
    assert res.allowance.tolist() == allowances
    assert res.radius.tolist() == radii
    assert res.p == p and res.prediction.tolist() == model(x).argmax(1).tolist()


@pytest.mark.parametrize("p", [2.0, INF])
def test_certificate_with_the_pairwise_bound_by_hand(p):
    """A linear head: L_cj = min(round_up(k L, 2), B[c, j]) with B the pairwise bound."""
    from lipkit.bounds import round_up

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = 50.0 * torch.randn(6, 4)
    res = compute_certificates(model, x, p)
    lcj = round_up((math.sqrt(2.0) if p == 2.0 else 2.0) * lipkit.lipschitz_bound(model, p), 2)
    pair = pairwise_bound(model, p, None).double()
    radii, allowances, rigorous = _expected_certificate(model, x, p, lambda c, j: min(lcj, pair[c, j].item()))
    assert rigorous and res.roundoff_rigorous
    assert res.allowance.tolist() == allowances
    assert res.radius.tolist() == radii
    torch.testing.assert_close(res.margin, torch.tensor(
        [sorted(row, reverse=True)[0] - sorted(row, reverse=True)[1] for row in
         model.double()(x.double()).tolist()], dtype=F64), rtol=0, atol=1e-12)
    model.float()


# --------------------------------------------------------------------------- forward_error_bound


def _sub(chain, i, j=None):
    return nn.Sequential(*chain[i:j])


@pytest.mark.parametrize("p", [2.0, INF])
def test_forward_error_bound_is_the_documented_sum_by_hand(p):
    """E = sum_i L_{>i} e_i, e_i from the layer's term with spread L_{<i} r (L_{<=i} r for an activation);
    the modules are left in training mode (only Dropout in training mode is refused)."""
    from lipkit.certify.roundoff import forward_error_bound

    torch.manual_seed(7)
    chain = [nn.Linear(3, 4).double(), nn.Tanh(), nn.Linear(4, 4).double(), nn.ReLU(),
             LinfDistLinear(4, 2).double()]
    chain[-1].eval()  # mean shift in training would need a batch statistic
    assert chain[0].training
    x = torch.randn(2, 3, dtype=F64)
    r = _t([0.0, 0.25])
    got = forward_error_bound(chain, x, p, r)
    lb = lipkit.lipschitz_bound
    with torch.no_grad():
        h1 = chain[0](x)
        h2 = torch.tanh(h1)
        h3 = chain[2](h2)
        h4 = torch.relu(h3)
        h5 = chain[4](h4)
        expected = (lb(_sub(chain, 1), p) * affine_error(chain[0], x, 1.0 * r, p)
                    + lb(_sub(chain, 2), p) * rounded_activation_error(h2, lb(_sub(chain, 0, 2), p) * r, p)
                    + lb(_sub(chain, 3), p) * affine_error(chain[2], h2, lb(_sub(chain, 0, 2), p) * r, p)
                    + 1.0 * linf_distance_error(chain[4], h5, lb(_sub(chain, 0, 4), p) * r, p))
    assert got.dtype == F64
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    assert forward_error_bound(chain + [nn.Dropout(0.5)], x, p, r) is None
    assert forward_error_bound(chain + [nn.Dropout(0.5).eval()], x, p, r) is not None


def test_forward_error_bound_passes_the_input_shape():
    """A padded convolution (l2): the prefix bounds are those for the given input size."""
    from lipkit.certify.roundoff import forward_error_bound

    torch.manual_seed(8)
    chain = [nn.Conv2d(1, 1, 3, padding=1).double(), nn.Flatten(), nn.Linear(9, 2).double()]
    shape = (1, 3, 3)
    x = torch.randn(1, 1, 3, 3, dtype=F64)
    r = _t([0.5])
    lb = lipkit.lipschitz_bound
    assert lb(_sub(chain, 0, 1), 2.0, input_shape=shape) < lb(_sub(chain, 0, 1), 2.0)
    got = forward_error_bound(chain, x, 2.0, r, input_shape=shape)
    with torch.no_grad():
        h = chain[1](chain[0](x))
    expected = (lb(_sub(chain, 1), 2.0) * affine_error(chain[0], x, 1.0 * r, 2.0)
                + affine_error(chain[2], h, lb(_sub(chain, 0, 2), 2.0, input_shape=shape) * r, 2.0))
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------- compute_certificates


def test_certificate_arguments():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(3, 4)
    assert compute_certificates(model, x).p == 2.0  # the default norm
    for ok in (0.0, 0.5):
        assert compute_certificates(model, x, 2, lipschitz=ok).lipschitz == ok
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="lipschitz must be a non-negative number, got"):
            compute_certificates(model, x, 2, lipschitz=bad)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        compute_certificates(lambda t: t, x, 2)


def test_certificate_passes_the_input_shape_everywhere():
    """A padded convolution (l2) whose bound depends on the input size: the global bound, the pairwise
    bound and the round-off bound are all those for the given shape."""
    from lipkit.bounds import round_up
    from lipkit.certify.roundoff import chain_of, forward_error_bound
    from lipkit.certify.twin import float64_copy

    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).eval()
    shape = (1, 3, 3)
    x = 30.0 * torch.randn(4, 1, 3, 3)
    res = compute_certificates(model, x, 2, input_shape=shape)
    lip = lipkit.lipschitz_bound(model, 2, input_shape=shape)
    assert lip < lipkit.lipschitz_bound(model, 2)
    assert res.lipschitz == lip
    twin = float64_copy(model)
    pair = pairwise_bound(twin, 2.0, shape)
    lcj = torch.minimum(torch.full((3, 3), round_up(math.sqrt(2.0) * lip, 2), dtype=F64), pair)
    with torch.no_grad():
        logits32, logits = model(x), twin(x.double())
    pred = logits32.argmax(1)
    diff = logits.gather(1, pred[:, None]) - logits
    mask = torch.ones_like(diff, dtype=torch.bool).scatter_(1, pred[:, None], False)
    r_max = (diff / lcj[pred]).masked_fill(~mask, INF).amin(1).clamp_min(0.0)
    bound = forward_error_bound(chain_of(twin), x.double(), 2.0, r_max, shape)
    allowance, rigorous = margin_allowance(bound, logits.abs().amax(1),
                                           (logits32.double() - logits).abs().amax(1))
    assert rigorous and torch.equal(res.allowance, allowance)
    radius = ((diff - allowance[:, None]) / lcj[pred]).masked_fill(~mask, INF).amin(1)
    assert torch.equal(res.radius, _round_down(radius))


@pytest.mark.parametrize("p", [2.0, INF])
def test_forward_error_bound_spread_uses_the_bound_of_all_layers_before(p):
    """Two adjacent affine layers, the first with bound 3: the second's spread is L(first) r = 3 r (a prefix
    shifted by one layer would give r)."""
    from lipkit.certify.roundoff import forward_error_bound

    first, second = nn.Linear(2, 2, bias=False).double(), nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        first.weight.copy_(_t([[3.0, 0.0], [0.0, 3.0]]))
        second.weight.copy_(_t([[1.0, 1.0]]))
    x, r = _t([[0.5, 0.25]]), _t([1.0])
    got = forward_error_bound([first, second], x, p, r)
    lb = lipkit.lipschitz_bound
    assert lb(nn.Sequential(first), p) >= 3.0
    expected = (lb(nn.Sequential(second), p) * affine_error(first, x, r, p)
                + affine_error(second, first(x).detach(), lb(nn.Sequential(first), p) * r, p))
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
