"""make_private end to end: accounting agrees with opacus, Poisson batch sizes are binomial, seeded runs
reproduce, resume continues the accountant, noise has the calibrated scale, and every bad input gets a clear
error (all problems listed at once)."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

import lipkit
from lipkit import dp

N, D, C = 600, 10, 3


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g)
    y = (x[:, 0] * C).long().clamp_max(C - 1)
    return x, y


def _net(constraint: str = "orthogonal") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        lipkit.LipLinear(D, 16, constraint=constraint),
        lipkit.MaxMin(),
        lipkit.LipLinear(16, C, constraint=constraint),
    )


def _private(seed=0, epochs=2, **kw):
    net = _net(kw.pop("constraint", "orthogonal"))
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    args = dict(
        criterion=lipkit.MulticlassHingeLoss(),
        batch_size=60,
        target_epsilon=2.0,
        target_delta=1e-5,
        epochs=epochs,
        input_radius=1.0,
        seed=seed,
    )
    args.update(kw)
    return dp.make_private(net, opt, _data(), **args)


def _train(model, opt, loader, epochs):
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            opt.criterion(model(x), y).backward()
            opt.step()


def test_noise_multiplier_and_epsilon_agree_with_opacus():
    model, opt, loader = _private(epochs=2)
    q = 60 / N
    steps = 2 * loader.steps_per_epoch
    assert loader.steps_per_epoch == 10
    expected = get_noise_multiplier(
        target_epsilon=2.0,
        target_delta=1e-5,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        epsilon_tolerance=0.01,
    )
    assert opt.noise_multiplier == expected
    _train(model, opt, loader, 2)
    ref = RDPAccountant()
    for _ in range(steps):
        ref.step(noise_multiplier=expected, sample_rate=q)
    assert opt.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert 2.0 - 0.02 <= opt.get_epsilon(1e-5) <= 2.0


def test_prv_accountant_and_noise_multiplier_path():
    model, opt, loader = _private(epochs=1, target_epsilon=None, noise_multiplier=1.3, accountant="prv")
    assert opt.noise_multiplier == 1.3
    _train(model, opt, loader, 1)
    from opacus.accountants import PRVAccountant

    ref = PRVAccountant()
    for _ in range(loader.steps_per_epoch):
        ref.step(noise_multiplier=1.3, sample_rate=60 / N)
    assert opt.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)


def test_poisson_batch_sizes_follow_the_binomial():
    from scipy import stats

    loader = dp.PrivateLoader(_data(), 60, generator=torch.Generator().manual_seed(123))
    sizes = torch.tensor([len(idx) for _ in range(100) for idx in loader.logical_batches()])
    assert len(sizes) == 1000
    q = 0.1
    mean, var = N * q, N * q * (1 - q)
    assert abs(sizes.double().mean().item() - mean) < 4 * math.sqrt(var / len(sizes))
    # chi-square goodness of fit on bins of the binomial
    edges = [0, 50, 54, 57, 60, 63, 66, 70, N + 1]
    observed = torch.histc(sizes.double(), bins=N + 1, min=0, max=N + 1)
    obs = [observed[a:b].sum().item() for a, b in zip(edges[:-1], edges[1:], strict=False)]
    exp = [
        len(sizes) * (stats.binom.cdf(b - 1, N, q) - stats.binom.cdf(a - 1, N, q))
        for a, b in zip(edges[:-1], edges[1:], strict=False)
    ]
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    assert sizes.unique().numel() > 10  # variable sizes, not a fixed batch


def test_shuffle_is_fixed_batches_accounted_without_amplification():
    model, opt, loader = _private(epochs=2, sampling="shuffle", neighbouring="replace")
    assert [len(idx) for idx in loader.logical_batches()] == [60] * 10
    _train(model, opt, loader, 2)
    ref = RDPAccountant()
    for _ in range(2):  # one Gaussian mechanism per epoch, sample rate 1
        ref.step(noise_multiplier=opt.noise_multiplier, sample_rate=1.0)
    assert opt.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert opt.noise_std(opt.last_report)["1.0.weight"] == pytest.approx(
        2 * opt.noise_multiplier * opt.last_report.total
    )


def test_seeded_runs_reproduce_and_resume_continues_the_accountant():
    m1, o1, l1 = _private(seed=7, epochs=2)
    _train(m1, o1, l1, 2)
    m2, o2, l2 = _private(seed=7, epochs=2)
    _train(m2, o2, l2, 2)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=False):
        assert torch.equal(a, b)
    # resume: one epoch, save, new engine, load, one more epoch: same epsilon as two epochs straight
    m3, o3, l3 = _private(seed=7, epochs=2)
    _train(m3, o3, l3, 1)
    state = o3.state_dict()
    m4, o4, l4 = _private(seed=8, epochs=2)
    o4.load_state_dict(state)
    assert o4.get_epsilon(1e-5) == pytest.approx(o3.get_epsilon(1e-5))
    _train(m4, o4, l4, 1)
    assert o4.get_epsilon(1e-5) == pytest.approx(o1.get_epsilon(1e-5), rel=1e-12)
    assert o4.accountant.steps == o1.accountant.steps == 20


def test_noise_scale_and_per_tensor_calibration():
    model, opt, loader = _private(epochs=1, calibration="per-tensor")
    x, y = next(iter(loader))
    opt.zero_grad()
    opt.criterion(model(x), y).backward()
    clean = {n: p.grad.clone() for n, p in opt.named_params.items()}
    k = len(opt.named_params)
    draws: dict[str, list[torch.Tensor]] = {n: [] for n in opt.named_params}
    for _ in range(40):  # enough draws that even a 3-entry bias has a stable sample std
        report = opt.add_noise()
        for n, p in opt.named_params.items():
            draws[n].append((p.grad - clean[n]).flatten() * opt.expected_batch_size)
            p.grad.copy_(clean[n])
    for n in opt.named_params:
        std = opt.noise_multiplier * report.per_tensor[n] * math.sqrt(k)
        assert torch.cat(draws[n]).std().item() == pytest.approx(std, rel=0.15)


def test_secure_noise_is_gaussian_and_not_seeded():
    a = dp.gaussian_noise(
        (20000,), 2.0, generator=None, secure=True, dtype=torch.float32, device=torch.device("cpu")
    )
    b = dp.gaussian_noise(
        (20000,), 2.0, generator=None, secure=True, dtype=torch.float32, device=torch.device("cpu")
    )
    assert abs(a.mean().item()) < 0.1 and a.std().item() == pytest.approx(2.0, rel=0.03)
    from scipy import stats

    assert stats.kstest((a / 2).double().numpy(), "norm").pvalue > 1e-3
    assert not torch.equal(a, b)
    model, opt, loader = _private(epochs=1, secure_mode=True)
    _train(model, opt, loader, 1)
    assert opt.accountant.steps == loader.steps_per_epoch


def test_accumulation_over_physical_chunks_takes_one_step_per_logical_batch():
    model, opt, loader = _private(epochs=1, max_physical_batch_size=16)
    chunks = 0
    for x, y in loader:
        assert len(x) <= 16
        chunks += 1
        opt.zero_grad()
        opt.criterion(model(x), y).backward()
        opt.step()
    assert chunks > loader.steps_per_epoch
    assert opt.steps_taken == loader.steps_per_epoch == opt.accountant.steps


def test_constraints_hold_after_private_training():
    for constraint in ("orthogonal", "spectral", "aol", "inf"):
        model, opt, loader = _private(epochs=1, constraint=constraint)
        _train(model, opt, loader, 1)
        model.eval()
        for m in model.modules():
            if isinstance(m, lipkit.LipLinear):
                p = 2 if constraint != "inf" else math.inf
                assert lipkit.lipschitz_bound(m, p) <= 1.0 + 1e-4, constraint
        assert lipkit.lipschitz_bound(model, 2) <= 1.0 + 1e-3 or constraint == "inf"


def test_private_model_projects_inputs_and_certifies():
    model, opt, loader = _private(epochs=1, input_radius=0.5)
    _train(model, opt, loader, 1)
    x = torch.full((2, D), 10.0)
    assert model[0](x).norm(dim=1).max().item() <= 0.5
    model.eval()
    res = lipkit.compute_certificates(model, _data()[0][:20])
    assert res.radius.shape == (20,)


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_every_problem_is_listed_at_once():
    net = nn.Sequential(
        nn.Linear(D, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(0.2),
        lipkit.LinearSpline(8, 5),
        nn.utils.parametrizations.spectral_norm(nn.Linear(8, C)),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError) as e:
        dp.make_private(
            net,
            opt,
            _data(),
            criterion=nn.MSELoss(),
            batch_size=60,
            target_epsilon=1.0,
            target_delta=1e-5,
            epochs=1,
            input_radius=None,
        )
    msg = _message(e)
    for needle in (
        "input_radius is missing",
        "MSELoss",
        "BatchNorm1d in training mode",
        "Dropout",
        "parametrised tensors ['weight']",
    ):
        assert needle in msg, (needle, msg)


class _Gain(nn.Module):
    """A layer with a Lipschitz rule (|gain|) and a parameter, but no gradient-sensitivity rule."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x


lipkit.register_bound(_Gain)(lambda module, p, shapes: float(module.gain.detach().abs()))


def test_layer_without_sensitivity_rule_is_named():
    net = nn.Sequential(lipkit.LipLinear(D, 8), _Gain(), lipkit.LipLinear(8, C))
    problems = dp.validate(net, lipkit.MulticlassHingeLoss(), input_radius=1.0, input_shape=(D,))
    assert any("_Gain" in p and "gradient-sensitivity" in p for p in problems), problems
    sll = nn.Sequential(lipkit.LipLinear(D, 8), lipkit.SLL(8), lipkit.LipLinear(8, C))
    problems = dp.validate(sll, lipkit.MulticlassHingeLoss(), input_radius=1.0, input_shape=(D,))
    assert any("SLL" in p for p in problems), problems


def test_uncovered_and_shared_parameters_are_refused():
    lin = lipkit.LipLinear(8, 8)
    net = nn.Sequential(lipkit.LipLinear(D, 8), lin, lipkit.MaxMin(), lin, lipkit.LipLinear(8, C))
    problems = dp.validate(net, lipkit.MulticlassHingeLoss(), input_radius=1.0, input_shape=(D,))
    assert any("used more than once" in p for p in problems), problems

    class Free(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.scale

    net = nn.Sequential(lipkit.LipLinear(D, C), Free())
    problems = dp.validate(net, lipkit.MulticlassHingeLoss(), input_radius=1.0, input_shape=(D,))
    assert any("Free" in p for p in problems), problems


def test_bad_options_and_unreachable_epsilon():
    with pytest.raises(ValueError, match="not reachable"):
        _private(target_epsilon=1e-9, epochs=50)
    with pytest.raises(ValueError, match="Poisson"):
        _private(neighbouring="replace")
    with pytest.raises(ValueError, match="exactly one of target_epsilon and noise_multiplier"):
        _private(noise_multiplier=1.0)
    with pytest.raises(ValueError, match="unknown accountant"):
        _private(accountant="gdp")
    with pytest.raises(ValueError, match="input_radius must be a finite number"):
        _private(input_radius=-1.0)
    with pytest.raises(ValueError, match="batch size must be an int"):
        _private(batch_size=10 * N)


def test_a_sensitivity_rule_registered_later_is_picked_up():
    """A layer without a sensitivity rule is refused, and a rule registered through the facet is then used
    without any change to lipkit.dp (the way LinearSpline's rule in nn/spline.py is picked up)."""
    from lipkit.bounds import SENSITIVITY, register_sensitivity

    net = nn.Sequential(lipkit.LipLinear(D, 8), _Gain(), lipkit.LipLinear(8, C))
    loss = lipkit.MulticlassHingeLoss()
    assert any("_Gain" in p for p in dp.validate(net, loss, input_radius=1.0, input_shape=(D,)))
    calls = []

    @register_sensitivity(_Gain)
    def _rule(module, r, g, shapes):  # a stand-in value: this test checks the wiring, not the bound
        calls.append((r, g))
        return {"gain": 123.0}

    try:
        assert dp.validate(net, loss, input_radius=1.0, input_shape=(D,)) == []
        with pytest.raises(ValueError, match="parametrised weight"):  # the raw net: constraints not converted
            dp.network_sensitivity(net, 1.0, loss, input_shape=(D,))
        dp.materialize_constraints(net)
        report = dp.network_sensitivity(net, 1.0, loss, input_shape=(D,))
        assert report.per_tensor["1.gain"] == 123.0 and calls
    finally:
        SENSITIVITY.unregister(_Gain)


def test_conv_net_trains_privately_and_keeps_its_constraints():
    torch.manual_seed(0)
    net = nn.Sequential(lipkit.LipConv2d(1, 4, 3, constraint="aol"), lipkit.MaxMin(),
                        lipkit.LipConv2d(4, 4, 3, stride=2, constraint="spectral"), lipkit.MaxMin(),
                        lipkit.LipConv2d(4, 8, 2, stride=2, constraint="orthogonal"), nn.Flatten(),
                        lipkit.LipLinear(32, C))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 8, 8, generator=g)
    y = torch.randint(0, C, (200,), generator=g)
    model, opt, loader = dp.make_private(net, torch.optim.Adam(net.parameters(), lr=0.05), (x, y),
                                         criterion=lipkit.LipschitzCrossEntropyLoss(4.0), batch_size=40,
                                         noise_multiplier=1.0, target_delta=1e-5, epochs=1, input_radius=2.0,
                                         seed=0)
    _train(model, opt, loader, 1)
    assert opt.steps_taken == 5 and set(opt.last_report.per_tensor) == {
        n for n, p in model.named_parameters() if p.requires_grad}
    assert lipkit.lipschitz_bound(model.eval(), 2, input_shape=(1, 8, 8)) <= 1.0 + 1e-3
