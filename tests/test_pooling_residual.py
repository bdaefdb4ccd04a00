from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import operator_norm

PS = [2, math.inf]


def _max_ratio(f, x: torch.Tensor, y: torch.Tensor, p: float) -> float:
    with torch.no_grad():
        num = torch.linalg.vector_norm((f(x) - f(y)).flatten(1), ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y).flatten(1), ord=p, dim=1)
    return (num / den).max().item()


def _pairs(shape: tuple[int, ...], n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    far = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    close = x + 1e-3 * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    const = x + torch.randn(n, *([1] * len(shape)), generator=g, dtype=torch.float64)  # uniform shift
    single = x.clone().flatten(1)
    idx = torch.randint(0, single.shape[1], (n,), generator=g)
    single[torch.arange(n), idx] += 5.0
    return torch.cat([x, x, x, x]), torch.cat([far, close, const, single.view_as(x)])


def _matrix(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Jacobian of a linear module at 0, as a matrix (for exact norms of small poolings)."""
    x = torch.zeros(1, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: module(v).flatten(), x)
    return jac.reshape(jac.shape[0], -1)


# --------------------------------------------------------------------------- pooling: values


def test_l2normpool_known_tensor():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = lipkit.L2NormPool2d(2)(x)
    expected = torch.tensor([[0 + 1 + 16 + 25, 4 + 9 + 36 + 49],
                             [64 + 81 + 144 + 169, 100 + 121 + 196 + 225]])
    assert torch.allclose(y[0, 0], expected.double().sqrt().float())
    y1 = lipkit.L2NormPool2d(3, stride=1)(x)
    assert y1.shape == (1, 1, 2, 2)
    assert y1[0, 0, 0, 0].item() == pytest.approx(math.sqrt(sum(v * v for v in [0, 1, 2, 4, 5, 6, 8, 9, 10])))
    # differentiable at 0
    z = torch.zeros(1, 1, 2, 2, requires_grad=True)
    lipkit.L2NormPool2d(2)(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_scaled_avgpool_values_and_downsample_isometry():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = lipkit.ScaledAvgPool2d(2)(x)
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 2.0)
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 4, dtype=torch.float64)
    d = lipkit.InvertibleDownsample(2)
    y = d(x)
    assert y.shape == (3, 8, 3, 2)
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)  # a permutation
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=0, atol=1e-13)
    assert torch.equal(nn.PixelShuffle(2)(y), x)


def test_pooling_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible"):
        lipkit.InvertibleDownsample(2)(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        lipkit.L2NormPool2d(2)(torch.randn(4, 4))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        lipkit.ScaledAvgPool2d(3)(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        lipkit.L2NormPool2d(0)
    with pytest.raises(ValueError, match="factor"):
        lipkit.InvertibleDownsample(0)


# --------------------------------------------------------------------------- pooling: bounds


def test_pool_bound_values():
    b = lipkit.lipschitz_bound
    assert b(lipkit.L2NormPool2d(2), 2) == pytest.approx(1.0)
    assert b(lipkit.L2NormPool2d(2), math.inf) == pytest.approx(2.0)
    assert b(lipkit.L2NormPool2d(3, stride=1), 2) == pytest.approx(3.0)
    assert b(lipkit.ScaledAvgPool2d(2), 2) == pytest.approx(1.0)
    assert b(nn.MaxPool2d(2), 2) == pytest.approx(1.0)
    assert b(nn.MaxPool2d(3, stride=1), 2) == pytest.approx(3.0)
    assert b(nn.MaxPool2d(3, stride=2), math.inf) == 1.0
    assert b(nn.AvgPool2d(2), 2) == pytest.approx(0.5)
    assert b(nn.AvgPool2d(2), math.inf) == pytest.approx(1.0)
    assert b(nn.AdaptiveAvgPool2d(1), 2, input_shape=(3, 4, 4)) == pytest.approx(0.25)
    for m in (nn.PixelUnshuffle(2), nn.PixelShuffle(2), lipkit.InvertibleDownsample(3)):
        assert b(m, 2) == 1.0 and b(m, math.inf) == 1.0
    # the recorded shape can only tighten: 3x3 stride 1 on a 3x3 input has one window
    assert b(nn.MaxPool2d(3, stride=1), 2, input_shape=(1, 3, 3)) == pytest.approx(1.0)


POOLS = [
    lambda: lipkit.L2NormPool2d(2),
    lambda: lipkit.L2NormPool2d(3, stride=1, padding=1),
    lambda: lipkit.L2NormPool2d((2, 3), stride=(1, 2)),
    lambda: lipkit.ScaledAvgPool2d(2),
    lambda: lipkit.ScaledAvgPool2d(3, stride=2, padding=1),
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d(3, stride=1),
    lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True),
    lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    lambda: nn.AvgPool2d(2),
    lambda: nn.AvgPool2d(3, stride=1, padding=1),
    lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    lambda: nn.AvgPool2d(2, stride=1, divisor_override=2),
    lambda: nn.AdaptiveAvgPool2d(1),
    lambda: nn.AdaptiveAvgPool2d((3, 4)),
    lambda: nn.AdaptiveMaxPool2d(4),
    lambda: nn.AdaptiveMaxPool2d((2, None)),
    lambda: lipkit.InvertibleDownsample(2),
    lambda: nn.PixelUnshuffle(2),
]


@pytest.mark.parametrize("p", [*PS, 1])
@pytest.mark.parametrize("make", POOLS)
def test_pool_pairs_never_exceed_bound(make, p):
    m = make()
    shape = (2, 6, 6)
    b_free = lipkit.lipschitz_bound(m, p)
    b_shape = lipkit.lipschitz_bound(m, p, input_shape=shape)
    assert b_shape <= b_free * (1 + 1e-9)
    xs, ys = _pairs(shape)
    ratio = _max_ratio(m, xs, ys, p)
    assert ratio <= b_shape * (1 + 1e-9)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: lipkit.ScaledAvgPool2d(3, stride=2, padding=1),
        lambda: nn.AvgPool2d(3, stride=1, padding=1),
        lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
        lambda: nn.AvgPool2d(2, stride=1, divisor_override=3),
        lambda: nn.AdaptiveAvgPool2d((3, 4)),
        lambda: nn.AdaptiveAvgPool2d(7),  # more outputs than pixels: overlapping windows
    ],
)
def test_linear_pool_bounds_dominate_exact_operator_norm(make, p):
    m = make()
    shape = (1, 5, 5)
    a = _matrix(m, shape)
    exact = operator_norm(a, p)
    b_shape = lipkit.lipschitz_bound(m, p, input_shape=shape)
    b_free = lipkit.lipschitz_bound(m, p)
    assert exact / (1 + 1e-9) <= b_shape <= b_free * (1 + 1e-9)
    if p == math.inf:
        assert b_shape == pytest.approx(exact, rel=1e-9)  # max row sum is computed exactly


def test_maxpool_overlapping_bound_is_attained():
    # 3x3 stride 1 on 5x5: the centre pixel lies in 9 windows; raising it moves 9 outputs
    m = nn.MaxPool2d(3, stride=1)
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    y = x.clone()
    y[0, 0, 2, 2] = 1.0
    ratio = _max_ratio(m, x, y, 2)
    assert ratio == pytest.approx(3.0)
    assert lipkit.lipschitz_bound(m, 2, input_shape=(1, 5, 5)) >= ratio
    # brute force over random single-pixel and random pairs on a 4x4 input with overlap
    xs, ys = _pairs((1, 4, 4), n=500, seed=3)
    assert _max_ratio(m, xs, ys, 2) <= lipkit.lipschitz_bound(m, 2, input_shape=(1, 4, 4))
    assert lipkit.lipschitz_bound(m, 2, input_shape=(1, 4, 4)) == pytest.approx(2.0)  # 2 windows per axis


def test_l2normpool_overlapping_bound_is_attained():
    m = lipkit.L2NormPool2d(2, stride=1).double()
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    y = x.clone()
    y[0, 0, 1, 1] = 1.0  # in 4 windows, each output moves by 1
    assert _max_ratio(m, x, y, 2) == pytest.approx(2.0, rel=1e-6)
    assert lipkit.lipschitz_bound(m, 2) == pytest.approx(2.0)
    assert lipkit.lipschitz_bound(m, math.inf) == pytest.approx(2.0)  # sqrt(4)


# --------------------------------------------------------------------------- residual


@pytest.mark.parametrize("p", PS)
def test_residual_and_convex_residual(p):
    torch.manual_seed(0)
    lin = nn.Linear(5, 5).double()
    lf = lipkit.lipschitz_bound(lin, p)
    r = lipkit.Residual(lin)
    assert lipkit.lipschitz_bound(r, p) == pytest.approx(1 + lf)
    assert lipkit.lipschitz_bound(r, p) >= 1 + lf
    xs, ys = _pairs((5,))
    assert _max_ratio(r, xs, ys, p) <= lipkit.lipschitz_bound(r, p)

    c = lipkit.ConvexResidual(lin, alpha=0.25).double()
    bc = lipkit.lipschitz_bound(c, p)
    assert bc == pytest.approx(0.75 + 0.25 * lf)
    assert _max_ratio(c, xs, ys, p) <= bc
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(c(x), 0.75 * x + 0.25 * lin(x))

    cl = lipkit.ConvexResidual(nn.Sequential(lin, lipkit.Abs()), alpha=0.6, learnable=True).double()
    assert cl.alpha == pytest.approx(0.6)
    assert lipkit.lipschitz_bound(cl, p) == pytest.approx(0.4 + 0.6 * lf, rel=1e-6)
    assert _max_ratio(cl, xs, ys, p) <= lipkit.lipschitz_bound(cl, p)
    # 1-Lipschitz branch -> 1-Lipschitz block
    assert lipkit.lipschitz_bound(lipkit.ConvexResidual(nn.Identity(), alpha=0.3), p) == pytest.approx(1.0)


def test_convex_residual_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lipkit.ConvexResidual(nn.Identity(), alpha=1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        lipkit.ConvexResidual(nn.Identity(), alpha=1.0, learnable=True)
    with pytest.raises(TypeError, match="nn.Module"):
        lipkit.Residual(lambda x: x)


def _sll_ratio_attack(m: nn.Module, dim: int, p: float, steps: int = 60, seed: int = 0) -> float:
    """Gradient ascent on ||h(x) - h(y)|| / ||x - y|| from random starts (an adversarial check)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, dim, generator=g, dtype=torch.float64, requires_grad=True)
    d = (0.5 * torch.randn(64, dim, generator=g, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.Adam([x, d], lr=0.05)
    best = 0.0
    for _ in range(steps):
        num = torch.linalg.vector_norm(m(x + d) - m(x), ord=p, dim=1)
        ratio = num / torch.linalg.vector_norm(d, ord=p, dim=1)
        best = max(best, ratio.max().item())
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def test_sll_is_one_lipschitz_l2_and_bound_checks_weights():
    torch.manual_seed(0)
    m = lipkit.SLL(6, 10).double()
    with torch.no_grad():
        m.log_q.normal_()
        m.bias.normal_()
    assert lipkit.lipschitz_bound(m, 2) == 1.0
    xs, ys = _pairs((6,))
    assert _max_ratio(m, xs, ys, 2) <= 1.0 + 1e-12
    assert _sll_ratio_attack(m, 6, 2) <= 1.0 + 1e-12

    # a layer whose T is too small is NOT certified 1-Lipschitz: the rule notices and falls back
    class BadSLL(lipkit.SLL):
        def t(self) -> torch.Tensor:
            return super().t() * 0.2

    bad = BadSLL(6, 10).double()
    bad.load_state_dict(m.state_dict())
    bb = lipkit.lipschitz_bound(bad, 2)
    assert bb > 1.0
    attacked = _sll_ratio_attack(bad, 6, 2)
    assert attacked > 1.0  # the tampered layer really expands distances ...
    assert attacked <= bb  # ... and the fallback bound still holds


def test_sll_linf_bound_and_training_step():
    torch.manual_seed(1)
    m = lipkit.SLL(5).double()
    b_inf = lipkit.lipschitz_bound(m, math.inf)
    xs, ys = _pairs((5,))
    assert _max_ratio(m, xs, ys, math.inf) <= b_inf
    assert _sll_ratio_attack(m, 5, math.inf) <= b_inf
    # one optimiser step keeps the certificate (T is recomputed from the new weights)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    loss = -(m(torch.randn(32, 5, dtype=torch.float64)) ** 2).sum()
    loss.backward()
    opt.step()
    assert lipkit.lipschitz_bound(m, 2) == 1.0
    assert _max_ratio(m, xs, ys, 2) <= 1.0 + 1e-12
    # float32 weights with float32 inputs
    m32 = lipkit.SLL(5, 3)
    assert lipkit.lipschitz_bound(m32, 2) == 1.0
    assert m32(torch.randn(4, 5)).dtype == torch.float32
    with pytest.raises(ValueError, match="expected input"):
        m32(torch.randn(4, 6))


def test_sll_zero_row_is_finite():
    m = lipkit.SLL(3, 2)
    with torch.no_grad():
        m.weight[1].zero_()
    out = m(torch.randn(4, 3))
    assert torch.isfinite(out).all()
    assert lipkit.lipschitz_bound(m, 2) == 1.0


def test_sll_conv_is_one_lipschitz_l2_and_adjoint_is_exact():
    torch.manual_seed(2)
    m = lipkit.SLLConv2d(2, 3, kernel_size=3).double()
    with torch.no_grad():
        m.log_q.normal_()
        m.bias.normal_()
    assert lipkit.lipschitz_bound(m, 2) == 1.0
    # conv_transpose2d with the same padding is the adjoint of the inner convolution
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    z = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    kx = torch.nn.functional.conv2d(x, m.weight, padding=1)
    ktz = torch.nn.functional.conv_transpose2d(z, m.weight, padding=1)
    assert (kx * z).sum().item() == pytest.approx((x * ktz).sum().item(), rel=1e-12)
    # T dominates K K^T: check against the explicit matrix on a 5x5 input
    k_mat = _matrix(lambda v: torch.nn.functional.conv2d(v, m.weight, padding=1), (2, 5, 5))
    t_full = m.t().detach().repeat_interleave(25)
    assert torch.linalg.eigvalsh(torch.diag(t_full) - k_mat @ k_mat.T).min().item() >= -1e-12
    xs, ys = _pairs((2, 5, 5), n=100)
    assert _max_ratio(m, xs, ys, 2) <= 1.0 + 1e-12
    b_inf = lipkit.lipschitz_bound(m, math.inf)
    assert _max_ratio(m, xs, ys, math.inf) <= b_inf
    # the matrix of the whole layer at a point has ||J||_2 <= 1 (locally linear: exact check)
    jac = torch.autograd.functional.jacobian(lambda v: m(v.view(1, 2, 5, 5)).flatten(), xs[0].flatten())
    assert torch.linalg.matrix_norm(jac, 2).item() <= 1.0 + 1e-12


def test_sll_conv_tampered_t_falls_back_and_errors():
    class BadConv(lipkit.SLLConv2d):
        def t(self) -> torch.Tensor:
            return super().t() * 0.1

    torch.manual_seed(3)
    bad = BadConv(2, 4).double()
    bb = lipkit.lipschitz_bound(bad, 2)
    assert bb > 1.0
    jac = torch.autograd.functional.jacobian(lambda v: bad(v.view(1, 2, 4, 4)).flatten(),
                                             torch.randn(32, dtype=torch.float64))
    assert 1.0 < torch.linalg.matrix_norm(jac, 2).item() <= bb
    with pytest.raises(ValueError, match="odd"):
        lipkit.SLLConv2d(2, kernel_size=2)
    with pytest.raises(ValueError, match="expected input"):
        lipkit.SLLConv2d(2)(torch.randn(1, 3, 4, 4))
