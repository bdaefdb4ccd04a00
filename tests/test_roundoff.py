"""The a-priori round-off bound of :mod:`lipkit.certify.roundoff`, tested on its own (issue 17).

``forward_error_bound(chain, x64, p, r)`` claims ``sup ||f32(x') - f(x')||_p + sup ||f64(x') - f(x')||_p``
over the ball ``||x' - x||_p <= r`` is at most the returned value, ``f`` being the exact function of the
float32 weights.  Here ``f`` is computed with exact rational arithmetic (``fractions.Fraction`` of the
float32 weights and inputs; tanh to 60 digits with mpmath, 1e-60 being far below any float error) and
compared at the centre and at points of the ball, without the floor of the certificate.  The bound must
also be useful (not vastly above the worst error seen), and the certificate must subtract twice the bound
from every margin.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from torch import nn

import lipkit
from lipkit.certify import compute_certificates
from lipkit.certify.roundoff import (
    REL_FLOOR,
    chain_of,
    forward_error_bound,
    margin_allowance,
)
from lipkit.certify.twin import float64_copy

INF = math.inf
_vfrac = np.vectorize(lambda v: Fraction(float(v)), otypes=[object])


def _exact(t: torch.Tensor) -> np.ndarray:
    """A float tensor as an object array of exact Fractions."""
    return _vfrac(t.detach().double().numpy())


def _tanh(v: Fraction) -> Fraction:
    with mpmath.workdps(60):
        num = mpmath.tanh(mpmath.mpf(v.numerator) / v.denominator)
        return Fraction(int(mpmath.floor(num * 2**190)), 2**190)


def _dense_conv(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The conv's exact matrix (from the images of basis vectors: one product each, exact) and bias."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        cols = conv._conv_forward(basis, conv.weight.detach().double(), None)
    out_shape = tuple(cols.shape[1:])
    mat = cols.reshape(n, -1).T
    bias = torch.zeros(out_shape, dtype=torch.float64)
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double()[:, None, None]
    return _exact(mat), _exact(bias.reshape(-1)), out_shape


def _patches(m: nn.Module, h: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-padded patches (rows, in_features) of the object map ``h`` ``(C, H, W)``, as the layer's own."""
    idx = torch.arange(1, h.size + 1, dtype=torch.float64).reshape(1, *h.shape)
    ho, wo = m.output_size(h.shape[1], h.shape[2])
    rows = m._patch_rows(idx, ho, wo).long().numpy()  # 0: padding
    flat = np.concatenate([[Fraction(0)], h.reshape(-1)])
    return flat[rows], (ho, wo)


def _distance_rows(m: nn.Module, rows: np.ndarray) -> np.ndarray:
    """Exact eval-mode outputs (rows, out) of an l_inf-distance / SortNet layer on rows of inputs."""
    w = _exact(m._weight2d())
    coef = ([Fraction(float(c)) for c in m.coefficients] if hasattr(m, "coefficients") else [Fraction(1)])
    shift = [Fraction(0)] * m.out_features
    if m.mean_shift:
        shift = [s - Fraction(float(v)) for s, v in zip(shift, m.running_mean, strict=True)]
    if m.bias is not None:
        shift = [s + Fraction(float(v)) for s, v in zip(shift, m.bias.detach(), strict=True)]
    out = np.empty((rows.shape[0], m.out_features), dtype=object)
    for r in range(rows.shape[0]):
        for o in range(m.out_features):
            d = sorted((abs(rows[r, i] - w[o, i]) for i in range(rows.shape[1])), reverse=True)
            out[r, o] = sum((c * di for c, di in zip(coef, d, strict=False)), Fraction(0)) + shift[o]
    return out


def _exact_forward(chain: list[nn.Module], x: torch.Tensor) -> np.ndarray:
    """The exact outputs (B, C) of ``chain`` (float32 modules) on the float32 batch ``x``."""
    outs = []
    for b in range(x.shape[0]):
        h = _exact(x[b])
        for m in chain:
            if isinstance(m, nn.Linear):
                h = _exact(m.weight).dot(h) + (_exact(m.bias) if m.bias is not None else 0)
            elif isinstance(m, nn.Conv2d):
                mat, bias, shape = _dense_conv(m, h.shape)
                h = (mat.dot(h.reshape(-1)) + bias).reshape(shape)
            elif isinstance(m, nn.ReLU):
                h = np.vectorize(lambda v: max(v, Fraction(0)), otypes=[object])(h)
            elif isinstance(m, nn.Tanh):
                h = np.vectorize(_tanh, otypes=[object])(h)
            elif isinstance(m, lipkit.GroupSort):  # MaxMin too; groups along the features / channels
                g = m.group_size
                grouped = h.reshape(h.shape[0] // g, g, -1)
                srt = np.empty_like(grouped)
                for i in range(grouped.shape[0]):
                    for j in range(grouped.shape[2]):
                        srt[i, :, j] = sorted(grouped[i, :, j], reverse=True)
                h = srt.reshape(h.shape)
            elif isinstance(m, nn.Unflatten):
                h = h.reshape(m.unflattened_size)
            elif isinstance(m, nn.Flatten):
                h = h.reshape(-1)
            elif isinstance(m, (lipkit.LinfDistConv2d, lipkit.SortNeuronConv2d)):
                rows, (ho, wo) = _patches(m, h)
                h = _distance_rows(m, rows).T.reshape(m.out_features, ho, wo)
            elif isinstance(m, (lipkit.LinfDistLinear, lipkit.SortNeuronLinear)):
                h = _distance_rows(m, h[None])[0]
            else:
                raise AssertionError(f"no exact rule for {type(m).__name__}")
        outs.append(h)
    return np.stack(outs)


def _norm(err: np.ndarray, p: float) -> float:
    """l_p norm (rounded up) of an object array of exact errors."""
    vals = [abs(float(v)) for v in err]
    if p == INF:
        return max(vals) * (1 + 1e-15)
    return math.sqrt(sum(v * v for v in vals)) * (1 + 1e-12)


def _net(kind: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    if kind == "relu":
        net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    elif kind == "groupsort":
        net = nn.Sequential(nn.Linear(6, 12), lipkit.MaxMin(), nn.Linear(12, 12), lipkit.GroupSort(3),
                            nn.Linear(12, 4))
    elif kind == "tanh":
        net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))
    elif kind == "conv":
        net = nn.Sequential(nn.Unflatten(1, (1, 5, 5)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(3, 2, 3, stride=2), nn.Flatten(), nn.Linear(8, 3))
    elif kind == "distance":
        net = nn.Sequential(lipkit.LinfDistLinear(6, 10),
                            lipkit.SortNeuronLinear(10, 8, q=0.3, init="normal"),
                            lipkit.LinfDistLinear(8, 3, mean_shift=False))
    else:  # conv distance
        net = nn.Sequential(nn.Unflatten(1, (1, 5, 5)), lipkit.LinfDistConv2d(1, 3, 3, padding=1),
                            lipkit.SortNeuronConv2d(3, 2, 2, stride=2, q=0.4, init="normal"), nn.Flatten(),
                            lipkit.LinfDistLinear(8, 3, mean_shift=False))
    if kind in ("distance", "conv_distance"):
        net.train()
        with torch.no_grad():
            for _ in range(3):  # running means away from zero: cancellation in d - mu + b
                net(torch.rand(16, net[0].in_features if kind == "distance" else 25) * 3)
            for m in net.modules():
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-2.0, 2.0)
    else:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.weight.mul_(1.7)
                    m.bias.uniform_(-1.0, 1.0)
    return net.eval()


_CASES = [("relu", 2.0), ("relu", INF), ("groupsort", 2.0), ("groupsort", INF), ("tanh", 2.0),
          ("tanh", INF), ("conv", 2.0), ("conv", INF), ("distance", INF), ("conv_distance", INF)]


@pytest.mark.parametrize("kind,p", _CASES)
def test_forward_error_bound_covers_the_exact_error_in_the_ball(kind, p):
    """Without any floor: float32 and float64 errors against exact arithmetic, at the centres and at
    points of the ball of radius r (random directions, scaled to 0.98 r and to r / 2), stay below the
    bound; and the bound is within a factor 4000 of the worst error seen (it is not vacuous)."""
    net = _net(kind, seed=len(kind) + int(p == INF))
    d = 25 if "conv" in kind else 6
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(4, d, generator=g) * 4 - 1).float()
    r = torch.full((4,), 0.5, dtype=torch.float64)
    twin = float64_copy(net)
    chain = chain_of(twin)
    bound = forward_error_bound(chain, x.double(), p, r)
    assert bound is not None and bound.shape == (4,) and bool((bound > 0).all())
    worst = torch.zeros(4, dtype=torch.float64)
    pts = [x]
    for scale in (0.98, 0.5):
        for _ in range(2):
            dirs = torch.randn(4, d, generator=g, dtype=torch.float64)
            dirs = dirs / torch.linalg.vector_norm(dirs, ord=p, dim=1, keepdim=True)
            xp = (x.double() + scale * r[:, None] * dirs).float()
            assert bool((torch.linalg.vector_norm(xp.double() - x.double(), ord=p, dim=1) <= r).all())
            pts.append(xp)
    for xp in pts:
        with torch.no_grad():
            f32 = net(xp).double().numpy()
            f64 = twin(xp.double()).numpy()
        exact = _exact_forward(list(chain_of(net)), xp)
        for b in range(4):
            e32 = _norm(_exact(torch.from_numpy(f32[b])) - exact[b], p)
            e64 = _norm(_exact(torch.from_numpy(f64[b])) - exact[b], p)
            total = e32 + e64
            assert total <= float(bound[b]), (kind, p, b, total, float(bound[b]))
            worst[b] = max(float(worst[b]), total)
    assert bool((worst > 0).all())  # float32 did round: the comparison is not vacuous
    ratio = float((bound / worst).max())
    # not vacuous: measured 20x - 2100x here (an a-priori bound assumes every rounding goes the worst way,
    # and for l_inf each layer's error vector is pushed through the rest's l_inf operator norms)
    assert ratio <= 4000.0, ratio


def test_forward_error_bound_grows_with_the_radius_and_refuses_unknown_layers():
    net = _net("relu", 0)
    chain = chain_of(float64_copy(net))
    x64 = torch.rand(3, 6, dtype=torch.float64)
    at0 = forward_error_bound(chain, x64, 2.0, torch.zeros(3, dtype=torch.float64))
    at1 = forward_error_bound(chain, x64, 2.0, torch.ones(3, dtype=torch.float64))
    assert bool((at0 < at1).all())
    assert forward_error_bound(chain + [nn.Softplus()], x64, 2.0, torch.zeros(3, dtype=torch.float64)) is None


def test_margin_allowance_is_twice_the_bound_and_flags_the_heuristic():
    bound = torch.tensor([1e-3, 1e-9], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0], dtype=torch.float64)
    observed = torch.tensor([1e-7, 1e-10], dtype=torch.float64)
    allowance, rigorous = margin_allowance(bound, scale, observed)
    assert rigorous
    assert allowance.tolist() == [2e-3 * (1 + 1e-9), REL_FLOOR * (1 + 1e-9)]
    # an observed error above the a-priori bound refutes the analysis: heuristic, flagged
    allowance, rigorous = margin_allowance(bound, scale, torch.tensor([2e-3, 1e-10], dtype=torch.float64))
    assert not rigorous
    assert allowance.tolist() == [max(1e-4, 8 * 2e-3) * (1 + 1e-9), 1e-4 * (1 + 1e-9)]
    allowance, rigorous = margin_allowance(None, scale, observed)
    assert not rigorous and allowance.tolist() == [1e-4 * (1 + 1e-9)] * 2


@pytest.mark.parametrize("p", [2, INF])
def test_certificate_subtracts_twice_the_bound_over_the_ball(p):
    """Inputs of size ~100 into a net with tanh: the a-priori bound dominates the 1e-5 floor, and the
    allowance must be at least twice the bound over the certified ball (a smaller factor breaks this)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = 100.0 * torch.randn(16, 20)
    res = compute_certificates(net, x, p)
    assert res.roundoff_rigorous
    twin = float64_copy(net)
    x64 = x.double()
    with torch.no_grad():
        scale = twin(x64).abs().amax(1)
    at_radius = forward_error_bound(chain_of(twin), x64, float(p), res.radius)
    assert bool((res.allowance >= 2.0 * at_radius).all())
    assert bool((2.0 * at_radius > 10 * REL_FLOOR * scale).all())  # the floor plays no part here


@pytest.mark.parametrize("p", [2.0, INF])
def test_layer_terms_are_the_documented_formulas(p):
    """The per-layer terms, recomputed here from their documented formulas (Higham's gamma_k with the
    factor 2, the underflow term, 16 u for library activations): the exact-arithmetic test above has a
    resolution of ~20x (a-priori bounds are pessimistic), this one pins the constants."""
    from lipkit.certify.roundoff import U, affine_error, rounded_activation_error

    torch.manual_seed(4)
    lin = nn.Linear(9, 5).double()
    h = torch.randn(3, 9, dtype=torch.float64)
    spread = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    k = 10
    gamma = k * U / (1 - k * U)
    abs_out = h.abs() @ lin.weight.detach().abs().T + lin.bias.detach().abs()
    mag = torch.linalg.vector_norm(abs_out, ord=p, dim=1)
    w_abs = lipkit.bounds.operator_norm(lin.weight.detach().abs(), p)
    under = k * 2.0**-125 * (1.0 if p == INF else 5 ** 0.5)
    expected = 2 * gamma * (mag + w_abs * spread) + under
    torch.testing.assert_close(affine_error(lin, h, spread, p), expected, rtol=1e-12, atol=0)
    out = torch.tanh(h)
    expected = 16 * U * (torch.linalg.vector_norm(out, ord=p, dim=1) + spread) + 2.0**-125 * (
        1.0 if p == INF else 3.0)
    torch.testing.assert_close(rounded_activation_error(out, spread, p), expected, rtol=1e-12, atol=0)
