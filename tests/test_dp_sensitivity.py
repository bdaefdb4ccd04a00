"""The per-example gradient-norm bounds of lipkit.dp never lie: true per-example gradients (torch.func vmap of
grad) on random networks of every covered layer kind, with perturbed weights and non-zero biases, stay below
them on random inputs on the radius sphere, random labels, and inputs pushed by gradient ascent to maximise
the gradient norm; on gradient-norm-preserving networks the bound is tight (within 3x)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import lipkit
from lipkit import dp
from lipkit.dp.losses import per_example_loss
from lipkit.dp.projection import L2BallProjection, materialize_constraints

R = 1.5


@pytest.fixture(autouse=True)
def _no_label_check(monkeypatch):
    """The losses' label-range check is data-dependent control flow, which vmap cannot trace."""
    monkeypatch.setattr(lipkit.losses, "_check", lambda *args: None)


def _perturb(model: nn.Module, seed: int, scale: float = 0.15) -> None:
    """Trained-like weights: every tensor moved off its initialisation, biases clearly non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.5 * noise)
            else:
                p.add_(scale * noise * p.abs().mean().clamp_min(0.05))


def _prepare(net: nn.Module, input_shape: tuple[int, ...], seed: int, perturb: bool = True) -> nn.Module:
    materialize_constraints(net, lipkit.record_input_shapes(net, input_shape))
    if perturb:
        _perturb(net, seed)
    model = nn.Sequential(L2BallProjection(R), net)
    model.train()
    return model


def _per_example_norms(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p.detach() for n, p in model.named_parameters()}
    terms = per_example_loss(loss)

    def one(p, xi, yi):
        return terms(functional_call(model, p, (xi[None],)), yi[None]).sum()

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return {n: g.reshape(g.shape[0], -1).norm(dim=1) for n, g in grads.items()}


def _ascent(
    model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor, steps: int = 12, lr: float = 0.3
) -> torch.Tensor:
    """Inputs on the radius sphere pushed to maximise the total per-example gradient norm."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    terms = per_example_loss(loss)

    def sq_norm(xi, yi):
        g = grad(lambda p: terms(functional_call(model, p, (xi[None],)), yi[None]).sum())(params)
        return sum((t * t).sum() for t in g.values())

    dx = vmap(grad(sq_norm))
    for _ in range(steps):
        step = dx(x, y)
        step = step / step.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (x.dim() - 1))
        x = x + lr * R * step
        x = x * (R / x.reshape(len(x), -1).norm(dim=1)).reshape(-1, *[1] * (x.dim() - 1))
    return x.detach()


def _sphere(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    return x * (R / x.reshape(n, -1).norm(dim=1)).reshape(-1, *[1] * len(shape))


def _check_sound(model, loss, input_shape, num_classes, seed, n=48, ascent=True):
    report = dp.network_sensitivity(model, R, loss, input_shape=input_shape)
    assert set(report.per_tensor) == {n for n, p in model.named_parameters() if p.requires_grad}
    x = _sphere(n, input_shape, seed)
    y = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
    worst = {k: 0.0 for k in report.per_tensor}
    worst_total = 0.0
    batches = [x, _ascent(model, loss, x, y)] if ascent else [x]
    for xb in batches:
        norms = _per_example_norms(model, loss, xb, y)
        total = torch.sqrt(sum(v**2 for v in norms.values()))
        worst_total = max(worst_total, float(total.max()))
        for k, v in norms.items():
            worst[k] = max(worst[k], float(v.max()))
            assert float(v.max()) <= report.per_tensor[k], (k, float(v.max()), report.per_tensor[k])
    assert worst_total <= report.total
    return report, worst, worst_total


LOSSES = [
    lipkit.MulticlassHingeLoss(margin=0.5),
    lipkit.LipschitzCrossEntropyLoss(temperature=8.0, margin=0.3),
    lipkit.HKRLoss(alpha=5.0, margin=0.5),
    lipkit.LogitMSELoss(target_value=1.0),
    nn.CrossEntropyLoss(label_smoothing=0.1),
]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("constraint", ["orthogonal", "spectral", "aol", "inf", "two-inf"])
def test_dense_nets_bound_true_gradients(constraint, loss):
    torch.manual_seed(0)
    net = nn.Sequential(
        lipkit.LipLinear(12, 16, constraint=constraint),
        lipkit.GroupSort(4),
        lipkit.LipLinear(16, 16, constraint=constraint),
        lipkit.MaxMin(),
        lipkit.LipLinear(16, 5, constraint=constraint),
    )
    model = _prepare(net, (12,), seed=1)
    _check_sound(model, loss, (12,), 5, seed=2)


def test_conv_pool_net_bounds_true_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(
        lipkit.LipConv2d(2, 4, 3, constraint="aol"),
        lipkit.GroupSort(2),
        lipkit.LipConv2d(4, 4, 3, stride=2, constraint="spectral"),
        lipkit.MaxMin(),
        lipkit.LipConv2d(4, 16, 2, stride=2, constraint="orthogonal"),
        lipkit.L2NormPool2d(2),
        nn.Flatten(),
        lipkit.LipLinear(16, 4),
    )
    model = _prepare(net, (2, 8, 8), seed=3)
    report, _, _ = _check_sound(model, lipkit.LipschitzCrossEntropyLoss(4.0), (2, 8, 8), 4, seed=4, n=24)
    assert report.output_radius > 0


def test_residual_blocks_and_householder_bound_true_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(
        lipkit.LipLinear(10, 16),
        lipkit.Householder(16),
        lipkit.Residual(
            nn.Sequential(
                lipkit.LipLinear(16, 16, constraint="aol"),
                lipkit.GroupSort(2),
                lipkit.LipLinear(16, 16, constraint="spectral", lip=0.5),
            )
        ),
        lipkit.ConvexResidual(
            nn.Sequential(lipkit.LipLinear(16, 16), lipkit.MaxMin()), alpha=0.3, learnable=True
        ),
        lipkit.Householder(),
        nn.ReLU(),
        lipkit.LipLinear(16, 3),
    )
    model = _prepare(net, (10,), seed=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lipkit.Householder):
                m.theta.add_(0.7)
    report, _, _ = _check_sound(model, lipkit.HKRLoss(alpha=3.0), (10,), 3, seed=6)
    assert any(k.endswith("logit") for k in report.per_tensor)
    assert any(k.endswith("theta") for k in report.per_tensor)


@pytest.mark.parametrize("constraint", ["clamp", "project"])
def test_spline_nets_bound_true_gradients(constraint):
    """LinearSpline coefficients get their bound from the spline's own sensitivity rule (nn/spline.py); the
    composition must hold on trained-like coefficients whose raw slopes leave the slope range."""
    torch.manual_seed(0)
    net = nn.Sequential(
        lipkit.LipLinear(10, 12),
        lipkit.LinearSpline(12, num_knots=7, knot_range=2.0, init="absolute_value", constraint=constraint),
        lipkit.LipLinear(12, 12, constraint="aol"),
        lipkit.LinearSpline(12, num_knots=5, knot_range=1.0, constraint=constraint),
        lipkit.LipLinear(12, 4),
    )
    model = _prepare(net, (10,), seed=7)
    with torch.no_grad():  # raw slopes up to ~2: the slope map is active in the forward
        for m in model.modules():
            if isinstance(m, lipkit.LinearSpline):
                m.coefficients.add_(0.6 * torch.randn(m.coefficients.shape,
                                                      generator=torch.Generator().manual_seed(8)))
    report, _, _ = _check_sound(model, lipkit.LipschitzCrossEntropyLoss(4.0), (10,), 4, seed=9)
    assert any(k.endswith("coefficients") for k in report.per_tensor)


def test_offsets_matter_biases_are_counted():
    """With large biases the input norm of a deep layer exceeds Lip * R; the bound must include the offset."""
    net = nn.Sequential(lipkit.LipLinear(4, 8), lipkit.MaxMin(), lipkit.LipLinear(8, 3))
    model = _prepare(net, (4,), seed=7, perturb=False)
    with torch.no_grad():
        model[1][0].bias.fill_(3.0)
    report = dp.network_sensitivity(model, R, lipkit.MulticlassHingeLoss(), input_shape=(4,))
    g_last = report.per_tensor["1.2.bias"]  # = G for the last layer
    hidden = model[1][1](model[1][0](torch.zeros(1, 4))).norm().item()
    assert report.per_tensor["1.2.weight"] >= g_last * (R + hidden) * 0.999
    _check_sound(model, lipkit.MulticlassHingeLoss(), (4,), 3, seed=8)


def test_gradient_norm_preserving_net_bound_is_tight():
    """Orthogonal square layers + MaxMin, no biases, hinge loss: the worst gradient found is within 3x."""
    torch.manual_seed(0)
    net = nn.Sequential(
        lipkit.LipLinear(16, 16, bias=False),
        lipkit.MaxMin(),
        lipkit.LipLinear(16, 16, bias=False),
        lipkit.GroupSort(4),
        lipkit.LipLinear(16, 4, bias=False),
    )
    model = _prepare(net, (16,), seed=9, perturb=False)
    report, worst, worst_total = _check_sound(
        model, lipkit.MulticlassHingeLoss(margin=10.0), (16,), 4, seed=10
    )
    assert report.total <= 3.0 * worst_total, (report.total, worst_total)
    for k, v in report.per_tensor.items():
        assert v <= 3.0 * worst[k], (k, v, worst[k])


def test_exact_values_on_a_one_layer_net():
    """One dense layer, hinge loss: S_W = sqrt(2) R, S_b = sqrt(2), Delta = sqrt(2) sqrt(R^2 + 1)."""
    net = nn.Sequential(lipkit.LipLinear(3, 2))
    model = _prepare(net, (3,), seed=0, perturb=False)
    report = dp.network_sensitivity(model, R, lipkit.MulticlassHingeLoss(), input_shape=(3,))
    assert report.per_tensor["1.0.weight"] == pytest.approx(math.sqrt(2) * R, rel=6e-3)
    assert report.per_tensor["1.0.weight"] >= math.sqrt(2) * R
    assert report.per_tensor["1.0.bias"] == pytest.approx(math.sqrt(2), rel=6e-3)
    assert report.total == pytest.approx(math.sqrt(2) * math.sqrt(R * R + 1), rel=6e-3)


def test_loss_constants_dominate_logit_gradients():
    g = torch.Generator().manual_seed(0)
    z = 6 * torch.randn(400, 6, generator=g, dtype=torch.float64)  # exact-ish: the constant is exact
    y = torch.randint(0, 6, (400,), generator=g)
    for loss in LOSSES:
        radius = float(z.norm(dim=1).max())
        bound = dp.loss_lipschitz(loss, 6, radius)
        zz = z.clone().requires_grad_(True)
        per_example_loss(loss)(zz, y).sum().backward()
        worst = float(zz.grad.norm(dim=1).max())
        assert worst <= bound, (type(loss).__name__, worst, bound)
        assert worst >= 0.5 * bound, (type(loss).__name__, worst, bound)  # not vacuous


def test_hkr_per_example_has_no_batch_coupling():
    loss = lipkit.HKRLoss(alpha=2.0)
    z = torch.randn(8, 3)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    full = loss.per_example(z, y)
    assert torch.allclose(full[:3], loss.per_example(z[:3], y[:3]))
    with pytest.raises(ValueError, match="class_priors"):
        lipkit.HKRLoss(class_priors=[0.5, 0.6])


def test_gram_bound_is_sound_and_tight_on_orthogonal_matrices():
    from lipkit.dp.sensitivity import gram_bound
    from lipkit.nn.parametrize.orthogonal import polar_factor

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 5), (7, 3), (3, 40), (64, 200)]:
        w = torch.randn(shape, generator=g)
        for m in (w, w * 1e-3, polar_factor(w).float(), polar_factor(w).float() + 1e-4 * torch.randn(shape)):
            exact = torch.linalg.matrix_norm(m.double(), 2).item()
            assert gram_bound(m) >= exact
        q = polar_factor(w).float()
        assert gram_bound(q) <= torch.linalg.matrix_norm(q.double(), 2).item() * (1 + 1e-6)
    assert gram_bound(torch.full((2, 2), float("nan"))) == math.inf


def test_gram_bound_fp32_is_sound_tight_and_needs_its_rounding_allowance():
    from lipkit.dp.sensitivity import gram_bound, gram_bound_fp32
    from lipkit.nn.parametrize.orthogonal import polar_factor

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 5), (7, 3), (3, 40), (64, 200), (256, 784)]:
        w = torch.randn(shape, generator=g)
        for m in (w, w * 1e-3, w.abs(), polar_factor(w).float(), polar_factor(w).float() + 1e-4 * w):
            exact = torch.linalg.matrix_norm(m.double(), 2).item()
            assert gram_bound_fp32(m) >= exact
        q = polar_factor(w).float()
        assert gram_bound_fp32(q) <= torch.linalg.matrix_norm(q.double(), 2).item() * (1 + 1e-3)
    # a rank-one positive matrix: Gershgorin is exact, so only the allowance covers the float32 rounding
    # (each product (1 + 2^-12)^2 rounds down in float32); the bound without it falls below the norm
    c = torch.full((64, 4096), 1.0 + 2.0**-12)
    exact = math.sqrt(64 * 4096) * (1.0 + 2.0**-12)
    assert gram_bound_fp32(c) >= exact
    at = c.T.contiguous()
    s = sum((at[i:i + 64].T @ at[i:i + 64]).double() for i in range(0, 4096, 64))
    assert math.sqrt(s.abs().sum(dim=1).max().item()) < exact
    assert gram_bound_fp32(torch.full((2, 2), float("nan"))) == math.inf
    # float64 weights, or float32 products allowed to run in reduced precision: the float64 Gram
    d = torch.randn(30, 50, generator=g, dtype=torch.float64)
    assert gram_bound_fp32(d) == gram_bound(d)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert gram_bound_fp32(w) == gram_bound(w)
    finally:
        torch.set_float32_matmul_precision(before)


def test_gram_bound_fp32_refuses_non_finite_weights():
    from lipkit.dp.sensitivity import gram_bound_fp32

    for bad in (float("inf"), float("-inf"), float("nan")):
        w = torch.randn(20, 70)
        w[3, 11] = bad
        assert gram_bound_fp32(w) == math.inf
        assert gram_bound_fp32(w.T.contiguous()) == math.inf
