"""The cheap sound bounds of the DP step: the certified orthogonal projection step, the conv Gram bound, and
the certificate's invalidation; float64 references on trained and perturbed weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipkit
from lipkit import dp
from lipkit.dp.retraction import certified_newton_schulz, certified_norm, forget_certificates
from lipkit.dp.sensitivity import conv_gram_bound, fast_lipschitz, gram_bound_fp32
from lipkit.nn.parametrize.orthogonal import polar_factor


def _exact(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().double(), 2).item()


def _perturbations(q: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
    """An orthogonal ``q`` after one optimiser step: Adam-like sign steps and Gaussian ones."""
    k = q.shape[1]
    sign = torch.sign(torch.randn(q.shape, generator=g))
    return [q, q + 1e-3 * sign, q + 3e-3 * sign * (q.abs() > 0.01 / math.sqrt(k)),
            q + 0.02 * torch.randn(q.shape, generator=g) / math.sqrt(k)]


def test_certified_step_bounds_the_norm_of_what_it_writes():
    g = torch.Generator().manual_seed(0)
    above_one = 0
    for shape in [(5, 5), (7, 3), (3, 40), (64, 200), (256, 784), (784, 256)]:
        q = polar_factor(torch.randn(shape, generator=g)).float()
        for x in _perturbations(q, g):
            out = certified_newton_schulz(x)
            if out is None:
                assert math.isnan(x.sum().item()) or shape[0] * shape[1] > 1000  # only far-off big ones
                continue
            written, bound = out
            assert written.shape == x.shape and written.dtype == torch.float32
            exact = _exact(written)
            assert bound >= exact * (1 + 1e-12)
            assert bound <= 1 + 2e-3  # as tight as a fresh Gram bound of the result
            above_one += exact > 1.0
            # the step orthogonalises: the written weight is much closer to orthogonal than x
            s = torch.linalg.svdvals(written.double())
            assert (s - 1).abs().max() <= max(2 * ((torch.linalg.svdvals(x.double()) - 1) ** 2).max(), 1e-6)
    # the computed step's norm exceeds 1 (the exact step's bound) by rounding: the allowance is needed
    assert above_one > 0


def test_certified_step_refuses_what_its_analysis_does_not_cover():
    g = torch.Generator().manual_seed(1)
    q = polar_factor(torch.randn(40, 90, generator=g)).float()
    assert certified_newton_schulz(2.0 * q) is None  # far from orthogonal (r >= 1)
    assert certified_newton_schulz(0.6 * q) is None  # a diagonal entry of the Gram outside [0.5, 1.5]
    assert certified_newton_schulz(q.double()) is None  # not float32
    bad = q.clone()
    bad[3, 4] = float("nan")
    assert certified_newton_schulz(bad) is None
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # products may run in reduced precision
        assert certified_newton_schulz(q) is None
    finally:
        torch.set_float32_matmul_precision(before)


def _trained_private_mlp(lip: float = 1.0, steps: int = 6):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(512, 30, generator=g), torch.randint(0, 4, (512,), generator=g)
    net = nn.Sequential(lipkit.LipLinear(30, 64, lip=lip), lipkit.GroupSort(2), lipkit.LipLinear(64, 64),
                        lipkit.GroupSort(2), lipkit.LipLinear(64, 4))
    model, opt, loader = dp.make_private(net, torch.optim.Adam(net.parameters(), lr=5e-3), (x, y),
                                         criterion=lipkit.MulticlassHingeLoss(), batch_size=128,
                                         noise_multiplier=0.5, target_delta=1e-5, epochs=1,
                                         input_radius=3.0, seed=0)
    done = 0
    while done < steps:
        for xb, yb in loader:
            opt.zero_grad()
            opt.criterion(model(xb), yb).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model, opt


def test_trained_private_layers_carry_sound_certificates_and_lose_them_on_any_change():
    model, opt = _trained_private_mlp()
    layers = [m for m in model.modules() if isinstance(m, lipkit.LipLinear)]
    for layer in layers:
        cert = certified_norm(layer, layer.weight)
        assert cert is not None and cert >= _exact(layer.weight) * (1 + 1e-12)
        assert cert == fast_lipschitz(layer, {})  # the sensitivity reads it
        assert cert <= gram_bound_fp32(layer.weight) * (1 + 5e-4)
    before = opt.sensitivity_fn()
    # an edit through .data (no version bump visible to autograd): the certificate no longer applies, and
    # the sensitivity follows the weight
    with torch.no_grad():
        layers[0].weight.data.mul_(1.5)
    assert certified_norm(layers[0], layers[0].weight) is None
    after = opt.sensitivity_fn()
    # the next layer's input radius grows with the first layer's norm (its bias offset does not)
    assert after.per_tensor["1.2.weight"] >= 1.3 * before.per_tensor["1.2.weight"]
    assert fast_lipschitz(layers[0], {}) >= _exact(layers[0].weight)
    forget_certificates(model)
    assert all(certified_norm(m, m.weight) is None for m in layers)


def test_certificate_of_a_layer_with_lip_other_than_one():
    model, _ = _trained_private_mlp(lip=2.5, steps=3)
    first = model[1][0]
    cert = certified_norm(first, first.weight)
    assert cert is not None
    assert 2.5 * (1 - 1e-3) <= _exact(first.weight) <= cert <= 2.5 * (1 + 2e-3)


def _conv_matrix(w: torch.Tensor, shape, stride, padding, dilation) -> torch.Tensor:
    """The explicit float64 matrix of the convolution (its Jacobian; the conv is linear without bias)."""
    def f(x):
        return F.conv2d(x[None], w, None, stride, padding, dilation).flatten()
    return torch.autograd.functional.jacobian(f, torch.zeros(shape, dtype=torch.float64)).reshape(
        -1, math.prod(shape))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 2), (2, 0, 1)])
def test_conv_gram_bound_dominates_the_exact_operator_norm(stride, padding, dilation):
    g = torch.Generator().manual_seed(stride * 10 + padding + dilation)
    conv = lipkit.LipConv2d(3, 4, 3, constraint="aol")
    dp.materialize_constraints(conv)  # the AOL projection: the bound drives to lip
    trained = conv.weight.detach().double()
    kernels = [trained, trained + 0.05 * torch.randn(trained.shape, generator=g, dtype=torch.float64),
               torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64),
               torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64).abs()]
    for k in kernels:
        exact = _exact(_conv_matrix(k, (3, 7, 7), stride, padding, dilation))
        bound = conv_gram_bound(k)
        assert bound >= exact * (1 + 1e-12)
        assert conv_gram_bound(k.float()) >= exact * (1 - 1e-6)  # float32 kernels read exactly
    assert conv_gram_bound(conv.weight) <= 1.0 + 1e-9  # the AOL certificate is what the projection enforces
    assert conv_gram_bound(torch.randn(4, 3, 3, 3), groups=3) == math.inf
    nan = conv.weight.detach().clone()
    nan[0, 0, 0, 0] = float("nan")
    assert conv_gram_bound(nan) == math.inf


def test_conv_fast_bound_is_used_only_where_it_is_sound_and_tight():
    conv = lipkit.LipConv2d(2, 3, 3, constraint="aol")
    dp.materialize_constraints(conv)
    shapes = lipkit.record_input_shapes(conv, (2, 6, 6))
    assert fast_lipschitz(conv, shapes) == conv_gram_bound(conv.weight)
    circ = lipkit.LipConv2d(2, 3, 3, constraint="aol", padding_mode="circular")
    dp.materialize_constraints(circ)
    shapes = lipkit.record_input_shapes(circ, (2, 6, 6))
    assert fast_lipschitz(circ, shapes) == lipkit.lipschitz_bound(circ, 2, input_shape=(2, 6, 6))
    spec = lipkit.LipConv2d(2, 3, 3, constraint="spectral")
    dp.materialize_constraints(spec)
    with torch.no_grad():
        spec.weight.mul_(3.0)  # far above lip: the registered (tighter) rule serves
    shapes = lipkit.record_input_shapes(spec, (2, 6, 6))
    assert fast_lipschitz(spec, shapes) == lipkit.lipschitz_bound(spec, 2, input_shape=(2, 6, 6))


def test_class_check_memo_is_scoped_to_one_call():
    from lipkit.bounds import registry

    layer = lipkit.LipLinear(4, 3)
    dp.materialize_constraints(layer)
    assert registry.computes_as(layer, (lipkit.LipLinear,))
    with registry.memoized_class_checks():
        assert registry.computes_as(layer, (lipkit.LipLinear,))
    assert registry._PATCH_MEMO is None
    original = nn.Linear.forward
    try:
        nn.Linear.forward = lambda self, x: 2 * original(self, x)  # patched between two calls: seen
        with registry.memoized_class_checks():
            assert not registry.computes_as(layer, (lipkit.LipLinear,))
    finally:
        nn.Linear.forward = original
    assert registry.computes_as(layer, (lipkit.LipLinear,))


def test_non_finite_gradient_is_refused_by_name():
    model, opt = _trained_private_mlp(steps=1)
    x, y = torch.rand(8, 30), torch.randint(0, 4, (8,))
    opt.zero_grad()
    opt.criterion(model(x), y).backward()
    model[1][2].weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"1\.2\.weight"):
        opt.step()
