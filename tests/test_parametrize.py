import math

import pytest
import torch
from torch.nn.utils import parametrize

from lipkit.nn.parametrize import (
    AOL,
    CayleyOrthogonal,
    OperatorNorm,
    Orthogonal,
    SpectralNorm,
    cayley,
    newton_schulz,
    polar_factor,
)


def _sv(w):
    return torch.linalg.svdvals(w.detach().double())


@pytest.mark.parametrize("shape", [(12, 12), (20, 8), (8, 20)])
def test_polar_factor_and_cayley_are_semi_orthogonal(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    q = polar_factor(w)
    assert (_sv(q) - 1).abs().max() < 1e-12
    # the polar factor is the closest semi-orthogonal matrix: Q^T W (or W Q^T) is symmetric PSD
    h = q.mT @ w.double() if shape[0] >= shape[1] else w.double() @ q.mT
    assert torch.allclose(h, h.mT, atol=1e-10)
    assert torch.linalg.eigvalsh(h).min() > 0
    c = cayley(w.double())
    assert c.shape == w.shape
    assert (_sv(c) - 1).abs().max() < 1e-12


def test_newton_schulz_converges_quadratically_near_orthogonal():
    torch.manual_seed(0)
    q = polar_factor(torch.randn(16, 16))
    w = q + 1e-2 * torch.randn(16, 16, dtype=torch.float64) / 4
    e0 = (_sv(w) - 1).abs().max().item()
    e1 = (_sv(newton_schulz(w, 1)) - 1).abs().max().item()
    assert e1 < 2 * e0**2 and e1 < e0 / 10


@pytest.mark.parametrize("lip", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("cls", [Orthogonal, CayleyOrthogonal, AOL])
def test_bad_lip(cls, lip):
    with pytest.raises(ValueError, match="lip"):
        cls(lip=lip)


def test_bad_options():
    with pytest.raises(ValueError, match="cayley"):
        Orthogonal(method="cayley")
    with pytest.raises(ValueError, match="valid"):
        Orthogonal(method="svd")
    with pytest.raises(ValueError, match="valid kinds"):
        OperatorNorm("two")
    with pytest.raises(ValueError, match="2-D"):
        AOL()(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        SpectralNorm((3, 4))(torch.randn(4, 3))


def test_aol_guarantee_on_hard_matrices():
    torch.manual_seed(0)
    for w in [torch.randn(30, 10), torch.randn(10, 30) * 100, torch.ones(5, 5), torch.eye(6)]:
        out = AOL(lip=2.0)(w.double())
        assert _sv(out).max() <= 2.0 * (1 + 1e-12)
    # orthogonal input: d = 1, AOL is the identity
    q = polar_factor(torch.randn(8, 8))
    assert torch.allclose(AOL()(q), q, atol=1e-12)


@pytest.mark.parametrize("kind,p_in,p_out", [("inf", math.inf, math.inf), ("one", 1, 1),
                                             ("one-inf", 1, math.inf), ("two-inf", 2, math.inf)])
def test_operator_norm_kinds(kind, p_in, p_out):
    from lipkit.bounds import operator_norm

    torch.manual_seed(0)
    w = torch.randn(9, 7, dtype=torch.float64) * 3
    out = OperatorNorm(kind, lip=0.5)(w)
    assert operator_norm(out, p_in, p_out) <= 0.5 * (1 + 1e-12)
    # tight: some row/column attains the bound, and rows inside the ball are unchanged
    assert operator_norm(out, p_in, p_out) == pytest.approx(0.5, rel=1e-12)
    small = w * 1e-3
    assert torch.equal(OperatorNorm(kind, lip=0.5)(small), small)


def test_spectral_buffers_update_only_in_training():
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 6)
    parametrize.register_parametrization(lin, "weight", SpectralNorm(lin.weight, n_init_iterations=1))
    sn = lin.parametrizations.weight[0]
    u0 = sn._u.clone()
    lin.eval()
    w_eval = lin.weight  # one refinement for the fixed weight: converged after 1 init iteration
    assert _sv(w_eval).max().item() == pytest.approx(1.0, abs=1e-5)
    u1 = sn._u.clone()
    assert not torch.equal(u1, u0)
    _ = lin.weight
    assert torch.equal(sn._u, u1)  # no further change while the weight is fixed
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(1.5)  # a weight change triggers one new refinement
    assert _sv(lin.weight).max().item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        sn._u.copy_(torch.nn.functional.normalize(torch.randn(6), dim=0))  # stale vector again
    u0 = sn._u.clone()
    lin.train()
    for _ in range(50):
        _ = lin.weight
    assert not torch.equal(sn._u, u0)
    true = torch.linalg.matrix_norm(lin.parametrizations.weight.original.double(), 2)
    assert _sv(lin.weight).max().item() == pytest.approx(1.0, abs=1e-5)
    sigma = torch.dot(sn._u.double(), lin.parametrizations.weight.original.double() @ sn._v.double())
    assert sigma.item() == pytest.approx(true.item(), rel=1e-6)


@pytest.mark.parametrize("precision,tol", [("float32", 1e-3), ("bfloat16", 1e-3)])
def test_retraction_precisions_keep_weight_orthogonal_while_training(precision, tol):
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24)
    parametrize.register_parametrization(lin, "weight", Orthogonal(precision=precision))
    raw = lin.parametrizations.weight.original
    # registration happened with a far-from-orthogonal weight: the restart path projected it
    assert (_sv(raw) - 1).abs().max() < 1e-5
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    x, t = torch.randn(64, 40), torch.randn(64, 24)
    for _ in range(25):
        opt.zero_grad()
        w = lin.weight
        assert (_sv(w) - 1).abs().max() < tol
        ((torch.nn.functional.linear(x, w, lin.bias) - t) ** 2).mean().backward()
        opt.step()
    # straight-through gradient: d loss / d raw == d loss / d weight
    opt.zero_grad()
    w = lin.weight
    w.retain_grad()
    (torch.nn.functional.linear(x, w, lin.bias) ** 2).mean().backward()
    assert torch.allclose(raw.grad, w.grad)


def test_bad_precision_and_float64_weights():
    with pytest.raises(ValueError, match="precision"):
        Orthogonal(precision="half")
    lin = torch.nn.Linear(12, 9, dtype=torch.float64)
    parametrize.register_parametrization(lin, "weight", Orthogonal())
    assert lin.weight.dtype == torch.float64
    assert (_sv(lin.weight) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("param", [AOL(), *[OperatorNorm(k) for k in ("inf", "one", "one-inf", "two-inf")]])
def test_zero_rows_and_columns_give_finite_gradients(param):
    torch.manual_seed(0)
    w = torch.randn(5, 4)
    w[1] = 0
    w[:, 2] = 0
    w.requires_grad_()
    out = param(w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    assert (out[1] == 0).all() and (out[:, 2] == 0).all()


def test_spectral_custom_gradient_matches_autograd():
    torch.manual_seed(0)
    w = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    sn = SpectralNorm(w.detach(), lip=1.3).eval()
    g = torch.randn(7, 5, dtype=torch.float64)
    (sn(w) * g).sum().backward()
    u, v = sn._u.detach(), sn._v.detach()
    w2 = w.detach().clone().requires_grad_()
    (1.3 * w2 / torch.dot(u, w2 @ v) * g).sum().backward()
    assert torch.allclose(w.grad, w2.grad, rtol=1e-10, atol=1e-12)
    # eval mode recomputes sigma = u^T W v from W: the analytic gradient matches finite differences
    assert torch.autograd.gradcheck(sn, (w.detach().clone().requires_grad_(),))
