import math
from fractions import Fraction

import pytest
import torch
from exact_ref import l2_norm_sq_lower
from torch import nn
from torch.nn.utils import parametrize

import lipkit
from lipkit import LipLinear, lipschitz_bound

CONSTRAINTS = ["orthogonal", "spectral", "aol", "inf", "one", "one-inf", "two-inf"]


def _max_ratio(f, dim, p, n=3000, seed=0):
    """Largest sampled ||f(x) - f(y)||_p / ||x - y||_p, including near-worst-case directions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    d = torch.randn(n, dim, generator=g, dtype=torch.float64)
    if p == math.inf:
        d = torch.sign(d)  # vertices of the l_inf ball: where the max row l1 norm is attained
    y = x + 1e-1 * d
    with torch.no_grad():
        num = torch.linalg.vector_norm((f(x) - f(y)).double(), ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y).double(), ord=p, dim=1)
    return (num / den).max().item()


@pytest.mark.parametrize("p", [2, math.inf])
@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_sampled_pairs_never_exceed_bound(constraint, p):
    torch.manual_seed(1)
    layer = LipLinear(12, 9, constraint=constraint, lip=1.5)
    with torch.no_grad():  # move the raw weight somewhere generic
        for param in layer.parameters():
            param.add_(0.3 * torch.randn_like(param))
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        with parametrize.cached():  # one weight for the bound and the samples (training mode updates)
            bound = lipschitz_bound(layer, p)
            w, b = layer.weight.double(), layer.bias.double()
        ratio = _max_ratio(lambda v, w=w, b=b: nn.functional.linear(v, w, b), 12, p)
        assert ratio <= bound, (constraint, p, mode, ratio, bound)
        assert ratio > 0.3 * bound  # the bound is not vacuous on these layers


@pytest.mark.parametrize("method", ["retraction", "bjorck", "cayley"])
@pytest.mark.parametrize("shape", [(32, 32), (48, 16), (16, 48)])
def test_orthogonal_bound_and_gradient(method, shape):
    torch.manual_seed(0)
    layer = LipLinear(*shape, constraint="orthogonal", orthogonal_method=method, lip=2.0)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(64, shape[0])
    target = torch.randn(64, shape[1])
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        raw = layer.parametrizations.weight.original
        assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        assert abs(lipschitz_bound(layer, 2) - 2.0) < 2e-3, mode
        # the bound dominates the exact norm of the weight the forward pass uses (one cached weight for
        # the bound, the forward and the reference; the reference is an exact rational lower bound of
        # ||W||_2^2, tight to ~1e-16, computed without lipkit)
        with parametrize.cached():
            bound = lipschitz_bound(layer, 2)
            w = layer.weight.detach().clone()
            torch.testing.assert_close(layer(x), nn.functional.linear(x, w, layer.bias), rtol=0, atol=0)
        assert Fraction(bound) ** 2 >= l2_norm_sq_lower(w), mode
        assert Fraction(bound) ** 2 <= l2_norm_sq_lower(w) * (1 + Fraction(1, 10**9)), mode
        sv = torch.linalg.svdvals(layer.weight.double())
        tol = 1e-5 if mode == "eval" else 1e-3
        assert (sv / 2.0 - 1).abs().max().item() < tol, (mode, sv)


def test_orthogonal_layer_is_gradient_norm_preserving():
    torch.manual_seed(0)
    layer = LipLinear(20, 20).eval()
    x = torch.randn(5, 20, requires_grad=True)
    g = torch.randn(5, 20)
    (layer(x) * g).sum().backward()
    assert torch.allclose(x.grad.norm(dim=1), g.norm(dim=1), rtol=1e-5)


def test_spectral_converges_during_training():
    torch.manual_seed(0)
    layer = LipLinear(40, 30, constraint="spectral")
    raw = layer.parametrizations.weight.original
    with torch.no_grad():
        raw.copy_(torch.randn(30, 40))  # power vectors now stale
    sn = layer.parametrizations.weight[0]
    errs = []
    for _ in range(40):
        w = layer.weight
        errs.append(abs(torch.linalg.matrix_norm(w.double(), 2).item() - 1.0))
    assert errs[-1] < 1e-4 < errs[0]
    layer.eval()
    _ = layer.weight  # the first eval access converges the estimate for the fixed weight
    u = sn._u.clone()
    _ = layer.weight
    assert torch.equal(u, sn._u)  # later eval accesses leave the vectors alone


def test_spectral_fused_training_forward_is_the_normalised_linear_map():
    torch.manual_seed(0)
    layer = LipLinear(12, 9, constraint="spectral", lip=0.8)
    sn = layer.parametrizations.weight[0]
    raw = layer.parametrizations.weight.original
    for shape in [(5, 12), (2, 3, 12), (12,)]:
        v = sn._v.clone()
        x = torch.randn(*shape, dtype=torch.float32, requires_grad=True)
        y = layer(x)  # training mode: the fused path
        # reference: the same map written out, with sigma = ||W v|| for the v the step started from
        w = raw.detach().clone().requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        ref = torch.nn.functional.linear(x2, 0.8 * w / torch.linalg.vector_norm(w @ v), layer.bias)
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-6)
        g = torch.randn_like(y)
        raw.grad = None
        (y * g).sum().backward()
        (ref * g).sum().backward()
        assert torch.allclose(raw.grad, w.grad, atol=1e-5) and torch.allclose(x.grad, x2.grad, atol=1e-6)
        assert not torch.equal(v, sn._v)  # the power iteration advanced
    with pytest.raises(RuntimeError):
        layer(torch.randn(4, 6))  # wrong width: the unfused path raises torch's shape error
    # many steps on a fixed weight converge sigma as the unfused iteration does
    for _ in range(60):
        layer(torch.randn(2, 12))
    with torch.no_grad():
        sigma = torch.linalg.vector_norm(raw @ sn._v)
    assert abs(float(sigma) / float(torch.linalg.matrix_norm(raw.detach().double(), 2)) - 1) < 1e-4


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_state_dict_round_trip(constraint):
    torch.manual_seed(0)
    a = LipLinear(10, 7, constraint=constraint, lip=0.7)
    with torch.no_grad():
        a.parametrizations.weight.original.add_(0.1 * torch.randn(7, 10))
    a(torch.randn(3, 10))  # one training forward (updates spectral buffers / retraction)
    a.eval()
    torch.manual_seed(5)
    b = LipLinear(10, 7, constraint=constraint, lip=0.7).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 10)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("constraint", ["orthogonal", "spectral", "aol", "inf"])
def test_parametrize_cached(constraint):
    torch.manual_seed(0)
    layer = LipLinear(10, 6, constraint=constraint)
    x = torch.randn(3, 10)
    with parametrize.cached():
        y1 = layer(x)
        y2 = layer(x)
        assert layer.weight is layer.weight
    assert torch.allclose(y1, y2)
    y1.sum().backward()
    assert layer.parametrizations.weight.original.grad is not None


def test_eval_cache_invalidated_by_weight_change():
    layer = LipLinear(8, 8).eval()
    w0 = layer.weight.clone()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(8, 8))
        layer.parametrizations.weight.original.copy_(q)
    assert not torch.allclose(layer.weight, w0)
    assert torch.allclose(layer.weight, q, atol=1e-6)


def test_assigning_weight_goes_through_right_inverse():
    layer = LipLinear(8, 8)
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    layer.weight = q.float() * 3.0  # polar factor of 3Q is Q
    assert torch.allclose(layer.weight, q.float(), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid constraints.*orthogonal"):
        LipLinear(3, 3, constraint="frobenius")
    with pytest.raises(ValueError, match="orthogonal_method"):
        LipLinear(3, 3, orthogonal_method="qr")
    for bad in (0.0, -2.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lip"):
            LipLinear(3, 3, lip=bad)
    with pytest.raises(TypeError, match="lip"):
        LipLinear(3, 3, lip="1")


def test_sequential_bound_and_plain_copy():
    torch.manual_seed(0)
    net = nn.Sequential(LipLinear(16, 16), nn.ReLU(), LipLinear(16, 4, constraint="spectral")).eval()
    assert lipschitz_bound(net, 2) <= 1.0 + 1e-4
    plain = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for src, dst in zip(net, plain, strict=True):
            if isinstance(dst, nn.Linear):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
    assert lipschitz_bound(plain, 2) == lipschitz_bound(net, 2)
    x = torch.randn(5, 16)
    assert torch.allclose(plain(x), net(x), atol=1e-6)
    assert lipkit.LipLinear is LipLinear


@pytest.mark.parametrize("constraint,p_in,p_out", [("aol", 2, 2), ("inf", math.inf, math.inf), ("one", 1, 1),
                                                   ("one-inf", 1, math.inf), ("two-inf", 2, math.inf)])
def test_guaranteed_constraints_hold_after_training(constraint, p_in, p_out):
    from lipkit.bounds import operator_norm

    torch.manual_seed(0)
    layer = LipLinear(20, 15, constraint=constraint, lip=0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(32, 20)
    for _ in range(10):
        opt.zero_grad()
        (-layer(x).abs().sum()).backward()  # pushes the weights to grow
        opt.step()
    w = layer.weight.detach()
    assert operator_norm(w, p_in, p_out) <= 0.5 * (1 + 1e-5)
    if constraint != "aol":  # the rescaling is tight once the raw weights are large
        assert operator_norm(w, p_in, p_out) >= 0.5 * (1 - 1e-5)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_reset_parameters_reinitialises_raw_weight(constraint):
    torch.manual_seed(0)
    layer = LipLinear(10, 6, constraint=constraint)
    raw = layer.parametrizations.weight.original
    before = raw.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, raw)
    assert lipschitz_bound(layer.eval(), 2) < 10.0  # (spectral: training mode moves the weight per call)
    layer.train()
    if constraint == "orthogonal":
        assert abs(lipschitz_bound(layer.eval(), 2) - 1.0) < 1e-6
