"""The interval facet (lipkit.bounds.interval, lipkit.nn.intervals): one rule per layer type, shared by the
interval certificates and the local Lipschitz estimates.  Each rule's box contains the layer's exact
outputs (Fractions) on degenerate boxes, where float64 rounding alone would otherwise step outside, and
its sampled outputs on wide boxes; affine boxes are no wider than ``2 |W| r`` plus the round-off term."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import UnsupportedModuleError
from lipkit.bounds.interval import interval_forward
from lipkit.nn import intervals  # noqa: F401  (registers lipkit's rules)

_vfrac = np.vectorize(lambda v: Fraction(float(v)), otypes=[object])


def _frac(t: torch.Tensor) -> np.ndarray:
    return _vfrac(t.detach().double().numpy())


def _inside_exactly(lo: torch.Tensor, hi: torch.Tensor, exact: np.ndarray) -> bool:
    """Whether every exact value lies in its box (exact comparison)."""
    flo, fhi = _frac(lo).reshape(-1), _frac(hi).reshape(-1)
    return all(flo[i] <= v <= fhi[i] for i, v in enumerate(exact.reshape(-1)))


def _rows_dot(w: np.ndarray, x: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = w.dot(x)
    return y + b if b is not None else y


def test_linear_point_box_contains_the_exact_value_and_rounding_alone_would_not():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30).double()
    with torch.no_grad():  # wide dynamic range: the float64 products and sums round
        lin.weight.mul_(torch.logspace(-3, 3, 40, dtype=torch.float64))
        lin.bias.mul_(1e3)
    x = torch.randn(3, 40, dtype=torch.float64) * 7.3
    lo, hi = interval_forward(lin, x, x)
    w, b = _frac(lin.weight), _frac(lin.bias)
    missed = 0
    with torch.no_grad():
        y64 = lin(x)
    for s in range(3):
        exact = _rows_dot(w, _frac(x[s]), b)
        for o in range(30):
            assert _frac(lo[s, o])[()] <= exact[o] <= _frac(hi[s, o])[()]
            missed += int(_frac(y64[s, o])[()] != exact[o])
    assert missed > 40  # the plain float64 value is not exact: the outward rounding is what makes it sound
    # the widening is the documented term, not more: the centre/radius rounding 2 EPS64 |x| through |W|
    # and 2 (n + 2) EPS64 (|W||x| + |b|) on each side: width <= (4 + 4 (n + 2)) EPS64 (|W||x| + |b|) x 1.01
    acc = nn.functional.linear(x.abs(), lin.weight.abs(), lin.bias.abs())
    eps = torch.finfo(torch.float64).eps
    assert bool(((hi - lo) <= 1.01 * (4 + 4 * 42) * eps * acc).all())
    assert bool(((hi - lo) >= 4 * 42 * eps * acc).all())


def test_conv_and_avg_pool_point_boxes_contain_the_exact_values():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    pool = nn.AvgPool2d(2)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64) * 3.1
    lo, hi = interval_forward(conv, x, x)
    # exact: the conv's matrix from basis images (one product each: exact), then Fractions
    basis = torch.eye(50, dtype=torch.float64).reshape(50, 2, 5, 5)
    with torch.no_grad():
        mat = conv._conv_forward(basis, conv.weight, None).reshape(50, -1).T
    bias = conv.bias.detach()[:, None].expand(3, 9).reshape(-1)
    exact = _rows_dot(_frac(mat), _frac(x.reshape(-1)), _frac(bias))
    assert _inside_exactly(lo, hi, exact)
    y = torch.randn(1, 3, 4, 4, dtype=torch.float64) / 3
    lo, hi = interval_forward(pool, y, y)
    yf = _frac(y[0])
    exact = np.array([[[sum(yf[c, 2 * i + a, 2 * j + b] for a in range(2) for b in range(2)) / 4
                        for j in range(2)] for i in range(2)] for c in range(3)], dtype=object)
    assert _inside_exactly(lo[0], hi[0], exact)


@pytest.mark.parametrize("kind", ["linf", "sortnet", "linf_conv", "sortnet_conv"])
def test_distance_point_boxes_contain_the_exact_values(kind):
    torch.manual_seed(2)
    if kind == "linf":
        m = lipkit.LinfDistLinear(7, 5)
    elif kind == "sortnet":
        m = lipkit.SortNeuronLinear(7, 5, q=0.3, init="normal")
    elif kind == "linf_conv":
        m = lipkit.LinfDistConv2d(1, 3, 3, padding=1)
    else:
        m = lipkit.SortNeuronConv2d(1, 3, 3, padding=1, q=0.3, init="normal")
    m = m.double().eval()
    with torch.no_grad():
        m.running_mean.uniform_(1e3, 2e3)  # cancellation in d - mu + b
        m.bias.uniform_(-1e3, 1e3)
    x = torch.rand(2, 7, dtype=torch.float64) * 3 + 1 / 3 if "conv" not in kind else \
        torch.rand(2, 1, 3, 3, dtype=torch.float64) * 3 + 1 / 3
    lo, hi = interval_forward(m, x, x)
    rows = x if "conv" not in kind else m._patch_rows(x, 3, 3)
    w = _frac(m._weight2d())
    coef = [Fraction(float(c)) for c in m.coefficients] if "sortnet" in kind else [Fraction(1)]
    mu, b = _frac(m.running_mean), _frac(m.bias)
    exact = np.empty((rows.shape[0], 5 if "conv" not in kind else 3), dtype=object)
    rf = _frac(rows)
    for r in range(rows.shape[0]):
        for o in range(exact.shape[1]):
            d = sorted((abs(rf[r, i] - w[o, i]) for i in range(rows.shape[1])), reverse=True)
            exact[r, o] = sum(c * di for c, di in zip(coef, d, strict=False)) - mu[o] + b[o]
    if "conv" in kind:
        exact = exact.reshape(2, 9, 3).transpose(0, 2, 1).reshape(2, 3, 3, 3)
    assert _inside_exactly(lo, hi, exact)
    assert float((hi - lo).max()) < 1e-9  # a point box stays a (rounded) point


_WIDE = [
    (nn.Linear(4, 3), (4,)), (nn.Conv1d(2, 3, 3), (2, 6)), (nn.Conv2d(2, 3, 3, padding=1), (2, 4, 4)),
    (nn.AvgPool2d(2), (2, 4, 4)), (nn.AdaptiveAvgPool2d(1), (2, 4, 4)), (nn.MaxPool2d(2), (2, 4, 4)),
    (nn.BatchNorm1d(4), (4,)), (nn.BatchNorm2d(2), (2, 3, 3)), (nn.ReLU(), (4,)), (nn.LeakyReLU(0.1), (4,)),
    (nn.Tanh(), (4,)), (nn.Sigmoid(), (4,)), (nn.ELU(0.7), (4,)), (nn.Hardtanh(-0.5, 0.5), (4,)),
    (lipkit.GroupSort(2), (4,)), (lipkit.MaxMin(), (4,)), (lipkit.Negate(), (4,)),
    (lipkit.SmoothSoftplus(2.0), (4,)), (lipkit.LinfDistLinear(4, 3), (4,)),
    (lipkit.SortNeuronLinear(4, 3, q=0.5), (4,)), (lipkit.LinfDistConv2d(2, 3, 3), (2, 4, 4)),
]


@pytest.mark.parametrize("module,shape", _WIDE, ids=[type(m).__name__ for m, _ in _WIDE])
def test_wide_boxes_contain_every_corner_and_sample(module, shape):
    torch.manual_seed(3)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.train()
        module(torch.randn(16, *shape) * 2 + 1)
    module = module.eval()
    centre = torch.randn(1, *shape, dtype=torch.float64)
    rad = torch.rand(1, *shape, dtype=torch.float64) * 0.5
    lo, hi = interval_forward(module, centre - rad, centre + rad)
    n = centre.numel()
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=min(n, 10))), dtype=torch.float64)
    if n > 10:
        corners = torch.cat([corners, torch.ones(corners.shape[0], n - 10, dtype=torch.float64)], 1)
    pts = torch.cat([corners, 2 * torch.rand(500, n, dtype=torch.float64) - 1])
    pts = centre + pts.reshape(-1, *shape) * rad
    m64 = module.double() if any(True for _ in module.parameters()) or list(module.buffers()) else module
    with torch.no_grad():
        out = m64(pts)
    assert bool((out >= lo).all() and (out <= hi).all())
    assert bool((lo <= hi).all())
    module.float()


def test_rules_refuse_what_they_cannot_bound():
    box = torch.zeros(1, 4, dtype=torch.float64)
    bn = nn.BatchNorm1d(4)  # training mode
    with pytest.raises(UnsupportedModuleError, match="eval mode"):
        interval_forward(bn, box, box)
    with pytest.raises(UnsupportedModuleError, match="monotone"):
        interval_forward(nn.LeakyReLU(-0.5), box, box)
    with pytest.raises(UnsupportedModuleError, match="training"):
        interval_forward(nn.Dropout(0.5), box, box)
    with pytest.raises(UnsupportedModuleError, match="no interval rule"):
        interval_forward(nn.Softplus(), box, box)

    class Doubled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedModuleError, match="overrides"):
        interval_forward(Doubled(4, 2), box, box)
    lp = lipkit.LinfDistLinear(4, 2).eval()
    lp.p = 8.0
    with pytest.raises(UnsupportedModuleError, match="p = inf"):
        interval_forward(lp, box, box)
