"""The l2 1-Lipschitz CNN of the trainer (``model: lipcnn``) through the whole pipeline: config, model,
sound bound (sampled pairs and an attack on a trained CNN), certificates (PGD finds nothing inside),
export (plain architecture, same outputs and bound), resume, the CLI with flags, YAML and recipes, and DP
(per-example gradient norms from torch.func never exceed the sensitivity bound of the trained CNN)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, lipschitz_ratio, quick_config, sample_pairs
from torch import nn

import lipkit
from lipkit.training.config import ConfigError, RunConfig, load_recipe
from lipkit.training.trainer import build_model, build_plain_model, fit, margin_radius


def cnn_config(**kw) -> RunConfig:
    base = dict(model="lipcnn", channels=[8, 16], widths=[], epochs=8, lr=1e-2)
    base.update(kw)
    return quick_config(**base)


@pytest.fixture(scope="module")
def trained(small_split, tmp_path_factory):
    """A CNN trained 8 epochs on 320 digits (spectral convs, stride 2, MaxMin): ``(cfg, model)``."""
    cfg = cnn_config()
    model, _ = fit(cfg, tmp_path_factory.mktemp("cnn"), split=small_split, progress=False)
    return cfg, model.eval()


# ----------------------------------------------------------------------------------------------- config


def test_config_keys_and_refusals() -> None:
    cfg = RunConfig(model="lipcnn")
    assert (cfg.channels, cfg.kernel_size, cfg.downsample, cfg.conv_constraint) == ([16, 32], 3, "stride",
                                                                                     "spectral")
    assert not cfg.is_linf_model and cfg.p == 2.0
    assert RunConfig(model="lipcnn", widths=[], channels="8, 16").channels == [8, 16]  # CLI strings
    assert RunConfig(model="lipcnn", network={"channels": [4]}).channels == [4]  # sectioned form
    for bad, needle in [({"channels": [8, 15]}, "'channels'"), ({"channels": []}, "'channels'"),
                        ({"downsample": "max"}, "'downsample'"), ({"kernel_size": 0}, "'kernel_size'"),
                        ({"conv_constraint": "orthogonal"}, "'conv_constraint'"),
                        ({"activation": "groupsort", "group_size": 3, "channels": [8]}, "multiple of 3")]:
        with pytest.raises(ConfigError, match=needle):
            RunConfig(model="lipcnn", **bad)
    with pytest.raises(ConfigError, match="'channels'.*lipcnn only"):
        RunConfig(channels=[8])  # a CNN key on the dense model is refused, not ignored
    with pytest.raises(ConfigError, match="'widths'"):
        RunConfig(widths=[])  # only the CNN may have no dense layer
    with pytest.raises(ConfigError, match="mix loss"):
        RunConfig(model="lipcnn", loss="mix")
    with pytest.raises(ConfigError, match="square images"):
        build_model(cnn_config(), 10, 3)
    with pytest.raises(ConfigError, match="below one pixel"):
        build_model(cnn_config(channels=[2, 2, 2, 2], downsample="pool"), 64, 3)  # 8 -> 4 -> 2 -> 1 -> 0
    assert RunConfig(model="lipcnn", private=True, input_radius=8.0).private


def test_architecture_and_bound_of_fresh_models() -> None:
    torch.manual_seed(0)  # (the first training-mode forward draws the power iteration's start vector)
    for kw in (dict(), dict(downsample="pool", activation="spline", widths=[12]),
               dict(downsample="none", conv_constraint="aol", activation="groupsort", group_size=4)):
        cfg = cnn_config(**kw)
        model = build_model(cfg, 64, 10)
        kinds = [type(m).__name__ for m in model]
        convs = [m for m in model if isinstance(m, lipkit.LipConv2d)]
        assert kinds[0] == "Unflatten" and len(convs) == 2 and "Flatten" in kinds
        assert lipkit.lipschitz_bound(model[0], 2) == 1.0  # the reshape is an isometry
        assert model(torch.rand(3, 64)).shape == (3, 10)
        bound = lipkit.lipschitz_bound(model, 2, input_shape=(64,))
        # the constraints hold, up to the power iteration's under-estimate (spectral: 30 steps at the start)
        assert 0.3 < bound <= 1.05, (kw, bound)
        assert (kinds.count("L2NormPool2d") == 2) == (cfg.downsample == "pool")
        strides = [m.stride for m in convs]
        assert strides == [(2, 2)] * 2 if cfg.downsample == "stride" else strides == [(1, 1)] * 2
    splines = [m for m in build_model(cnn_config(activation="spline"), 64, 10)
               if isinstance(m, lipkit.LinearSpline)]
    assert [s.num_channels for s in splines] == [8, 16] and all(s.dim == 1 for s in splines)


def test_spline_acts_per_channel_on_images() -> None:
    """One spline per channel, the same function at every pixel: equal to the dense (N, C) evaluation."""
    spline = lipkit.LinearSpline(5, num_knots=9, knot_range=2.0)
    with torch.no_grad():
        spline.coefficients.add_(0.3 * torch.randn(spline.coefficients.shape))
    x = 3 * torch.randn(4, 5, 6, 7)
    dense = spline(x.permute(0, 2, 3, 1).reshape(-1, 5)).reshape(4, 6, 7, 5).permute(0, 3, 1, 2)
    assert torch.equal(spline(x), dense)
    x.requires_grad_(True)
    spline(x).sum().backward()  # the slopes, per channel
    assert x.grad.abs().max() <= 1.0


# ----------------------------------------------------------------------------------------------- trained


def test_trained_cnn_learns_and_bound_survives_pairs_and_attack(trained, small_split) -> None:
    cfg, model = trained
    shape = (small_split.num_features,)
    bound = lipkit.lipschitz_bound(model, 2, input_shape=shape)
    assert bound <= 1.02
    correct, radius = margin_radius(model, small_split.x_test, small_split.y_test)
    assert correct.double().mean() > 0.7  # 8 epochs on 320 digits
    # sampled pairs (far, close, one pixel apart), float32 as deployed
    x, y = sample_pairs(shape, count=300, seed=1, scale=0.5, dtype=torch.float32)
    assert lipschitz_ratio(model, x, y, 2) <= bound
    # attack: gradient ascent on ||f(a) - f(b)|| / ||a - b|| from test images and nearby points
    a = small_split.x_test[:64].clone().requires_grad_(True)
    b = (small_split.x_test[:64] + 0.05 * torch.randn(64, 64)).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=0.01)
    best = 0.0
    for _ in range(150):
        ratio = (model(a) - model(b)).norm(dim=1) / (a - b).norm(dim=1).clamp_min(1e-6)
        best = max(best, lipschitz_ratio(model, a.detach(), b.detach(), 2))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    assert 0.3 < best <= bound  # the attack finds a large ratio, never above the bound


def test_certificates_hold_under_pgd(trained, small_split) -> None:
    cfg, model = trained
    x, y = small_split.x_test, small_split.y_test
    correct, radius = margin_radius(model, x, y)
    assert (radius > 0).sum() >= 20
    chk = lipkit.certify.attacks.check_certificates(model, x, y, 2, radii=radius, steps=40, restarts=1,
                                                     generator=torch.Generator().manual_seed(0))
    assert chk.n_certified >= 20 and chk.n_broken == 0
    assert chk.baseline_success > 0.5  # at 3x the radius the attack works


def test_export_gives_plain_architecture_same_outputs_and_bound(trained, small_split) -> None:
    cfg, model = trained
    x = small_split.x_test[:128]
    plain = lipkit.export(model, x, input_shape=(64,))
    rebuilt = build_plain_model(cfg, 64, 10)
    rebuilt.load_state_dict(plain.state_dict())
    assert [type(m) for m in rebuilt] == [type(m) for m in plain]
    assert not any(isinstance(m, lipkit.LipConv2d) for m in rebuilt.modules())
    assert sum(type(m) is nn.Conv2d for m in rebuilt) == 2
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= 1e-5
    b_model = lipkit.lipschitz_bound(model, 2, input_shape=(64,))
    b_plain = lipkit.lipschitz_bound(rebuilt, 2, input_shape=(64,))
    assert b_plain == pytest.approx(b_model, rel=1e-6) and b_plain == plain.lipschitz_bounds[2.0]
    ca, ra = margin_radius(model, x, small_split.y_test[:128])
    cb, rb = margin_radius(rebuilt, x, small_split.y_test[:128])
    # (the plain chain gets the a-priori round-off allowance, the parametrised one a heuristic: ~1e-4)
    assert torch.equal(ca, cb) and torch.allclose(ra, rb, rtol=0, atol=1e-3)


def test_export_of_a_model_in_training_mode_uses_the_deployed_weights(small_split) -> None:
    """A spectral LipConv2d steps its power iteration when its weight is read in training mode: export
    materialises (and bounds) the eval-mode weights, the ones the deployed model uses."""
    model = build_model(cnn_config(), 64, 10)
    x = small_split.x_test[:16]
    model(x)  # training mode
    plain = lipkit.export(model, x, input_shape=(64,))  # the output check: against the eval-mode original
    assert model.training and plain.training
    model.eval()
    with torch.no_grad():
        assert (plain.eval()(x) - model(x)).abs().max() <= 1e-6


def test_spline_cnn_trains_exports_and_certifies(small_split, tmp_path) -> None:
    cfg = cnn_config(activation="spline", downsample="pool", tv2_weight=1e-4, spline_lr=1e-2, epochs=2)
    model, _ = fit(cfg, tmp_path, split=small_split, progress=False)
    model.eval()
    splines = [m for m in model if isinstance(m, lipkit.LinearSpline)]
    assert any((s.coefficients - s.knots.clamp(min=0)).abs().max() > 1e-4 for s in splines)  # trained
    x = small_split.x_test
    plain = lipkit.export(model, x[:64], input_shape=(64,))
    assert sum(isinstance(m, lipkit.FrozenLinearSpline) for m in plain) == 2
    rebuilt = build_plain_model(cfg, 64, 10)
    rebuilt.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= 1e-5
    bound = lipkit.lipschitz_bound(rebuilt, 2, input_shape=(64,))
    assert bound <= 1.02
    pairs = sample_pairs((64,), count=200, seed=3, scale=0.5, dtype=torch.float32)
    assert lipschitz_ratio(rebuilt, *pairs, 2) <= bound
    correct, radius = margin_radius(rebuilt, x, small_split.y_test)
    chk = lipkit.certify.attacks.check_certificates(rebuilt, x, small_split.y_test, 2, radii=radius,
                                                     steps=30, restarts=1)
    assert chk.n_broken == 0


def test_resume_gives_the_uninterrupted_weights(small_split, tmp_path) -> None:
    cfg = cnn_config(epochs=2, activation="spline")
    full, _ = fit(cfg, tmp_path / "a", split=small_split, progress=False)
    fit(cfg, tmp_path / "b", split=small_split, progress=False, stop_after=1)
    resumed, hist = fit(cfg, tmp_path / "b", split=small_split, progress=False)
    assert hist["resumed_from"] == 1
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and any(".u" in k for k in a)  # the power-iteration vectors are saved
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------- DP


def test_dp_cnn_per_example_gradients_below_the_bound(small_split, tmp_path, monkeypatch) -> None:
    """Per-example gradient norms (torch.func vmap of grad) of the trainer-built private CNN, after DP
    training, never exceed the sensitivity the noise is calibrated to, on test images and on inputs
    pushed to maximise the gradient norm."""
    from torch.func import functional_call, grad, vmap

    from lipkit import dp
    from lipkit.dp.losses import per_example_loss
    from lipkit.training.dp import dp_criterion
    from lipkit.training.trainer import certificate_factor

    cfg = cnn_config(private=True, input_radius=4.0, noise_multiplier=0.5, epochs=2, batch_size=32,
                     loss="ce", temperature=4.0, margin=0.5, downsample="pool")
    model, hist = fit(cfg, tmp_path, split=small_split, progress=False)
    rec = hist["history"][-1]["dp"]
    assert rec["epsilon"] > 0 and rec["sensitivity"] > 0
    kinds = [type(m).__name__ for m in model]
    assert kinds[:3] == ["L2BallProjection", "Unflatten", "LipConv2d"]
    assert any(p.abs().max() > 1e-3 for n, p in model.named_parameters() if n.endswith("bias"))
    model.train()
    loss = dp_criterion(cfg, certificate_factor(2.0))
    report = dp.network_sensitivity(model, cfg.input_radius, loss, input_shape=(64,))
    monkeypatch.setattr(lipkit.losses, "_check", lambda *args: None)  # data-dependent: vmap cannot trace
    params = {n: p.detach() for n, p in model.named_parameters()}
    terms = per_example_loss(loss)

    def one(p, xi, yi):
        return terms(functional_call(model, p, (xi[None],)), yi[None]).sum()

    def norms(x, y):
        g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
        return {n: t.reshape(t.shape[0], -1).norm(dim=1) for n, t in g.items()}

    x = small_split.x_test[:48] * 3.0  # beyond the radius: the projection brings them onto the sphere
    y = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(0))
    sq = vmap(grad(lambda xi, yi: sum((t * t).sum() for t in grad(one)(params, xi, yi).values())))
    batches = [x]
    for _ in range(10):  # gradient ascent on the per-example gradient norm
        step = sq(x, y)
        x = x + 0.5 * step / step.norm(dim=1, keepdim=True).clamp_min(1e-12)
        batches.append(x.detach())
    worst = 0.0
    for xb in batches:
        got = norms(xb, y)
        total = torch.sqrt(sum(v**2 for v in got.values()))
        worst = max(worst, float(total.max()))
        for k, v in got.items():
            assert float(v.max()) <= report.per_tensor[k], (k, float(v.max()), report.per_tensor[k])
    assert worst <= report.total and worst > 0.1 * report.total  # sound, and not absurdly loose (~0.16)


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_flags_yaml_recipe_train_certify(tmp_path, capsys) -> None:
    from lipkit.cli import main

    one = tmp_path / "one.yaml"
    one.write_text("threads: 1\npgd_steps: 10\nnetwork:\n  channels: [8, 16]\n  widths: []\n")
    code = main(["train", "--recipe", "digits-cnn", "--config", str(one), "--epochs", "2", "--out",
                 str(tmp_path), "--no-progress", "--name", "c", "--radii", "0.1,0.5",
                 "--downsample", "pool", "--activation", "spline", "--kernel-size", "3"])
    assert code == 0
    run = tmp_path / "c"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "lipcnn" and cfg["channels"] == [8, 16] and cfg["widths"] == []
    assert cfg["downsample"] == "pool" and cfg["activation"] == "spline" and cfg["threads"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["certificates_broken"] == 0 and metrics["clean_accuracy"] > 0.5
    assert metrics["lipschitz_bound"] <= 1.05  # spectral: the power iteration lags a little
    assert "LipConv2d stages [8, 16]" in (run / "report.md").read_text()
    capsys.readouterr()
    assert main(["certify", str(run), "--eps", "0.1,0.25", "--pgd-steps", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["certificates_broken"] == 0
    assert out["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])
    assert out["lipschitz_bound"] == pytest.approx(metrics["lipschitz_bound"])
    # the run folder's model for `lipkit estimate`: the image size comes from the data set
    from lipkit.training.runs import load_run_model

    assert load_run_model(run)(torch.rand(2, 64)).shape == (2, 10)
    assert main(["train", "--model", "lipcnn", "--channels", "8,9", "--out", str(tmp_path)]) != 0
    assert_one_line_error(capsys.readouterr().err, "channels", "multiple of 2")


def test_recipes_load_with_every_activation() -> None:
    for name in ("digits-cnn", "fmnist-cnn"):
        cfg = load_recipe(name)
        assert cfg.model == "lipcnn" and cfg.p == 2.0
        for act in ("spline", "groupsort", "maxmin"):
            c = cfg.replace(activation=act, group_size=4 if act == "groupsort" else None)
            side = 8 if cfg.dataset == "digits" else 28
            assert build_model(c.replace(channels=[4, 8], widths=[8]), side * side, 10)(
                torch.rand(2, side * side)).shape == (2, 10)
    assert math.isfinite(load_recipe("fmnist-cnn").margin)


def test_bounds_with_input_shape_keep_every_module_mode() -> None:
    """``lipschitz_bound(..., input_shape=...)`` records the shapes with a forward pass in eval mode and gives
    every submodule its own flag back (a fresh container around eval-mode layers used to switch them all
    to training mode, which a spectral LipConv2d answers by stepping its power iteration)."""
    conv = lipkit.LipConv2d(1, 4, 3).eval()
    act = lipkit.MaxMin()  # training mode
    wrapper = nn.Sequential(nn.Unflatten(1, (1, 6, 6)), conv, act, nn.Flatten())  # training mode
    conv(torch.rand(2, 1, 6, 6))  # creates the power-iteration vector (eval mode: no further steps)
    u = conv.parametrizations.weight[0].u.clone()
    lipkit.lipschitz_bound(wrapper, 2, input_shape=(36,))
    assert wrapper.training and act.training and not conv.training
    assert torch.equal(conv.parametrizations.weight[0].u, u)  # (a training-mode read would step it)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_geometry_for_every_kernel_size_and_downsampling() -> None:
    """The head's input size follows the convolutions as they run, odd and even kernels alike."""
    from lipkit.training.cnn import cnn_geometry

    for k in (1, 2, 3, 4, 5):
        for ds in ("stride", "pool", "none"):
            for side in (5, 8):
                cfg = cnn_config(channels=[2, 4], kernel_size=k, downsample=ds)
                model = build_model(cfg, side * side, 3)
                h = model[:-2](torch.rand(2, side * side))  # up to the flatten
                assert tuple(h.shape[1:]) == cnn_geometry(cfg, side * side)[-1], (k, ds, side)
                assert build_plain_model(cfg, side * side, 3)(torch.rand(2, side * side)).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_make_private_accepts_the_trainer_cnn(small_split) -> None:
    """``lipkit.dp.make_private`` (the library path, not the trainer's strategy) takes the CNN too."""
    model = build_model(cnn_config(), 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m, o, loader = lipkit.dp.make_private(model, opt, (small_split.x_train, small_split.y_train),
                                          criterion=lipkit.MulticlassHingeLoss(margin=0.5), target_delta=1e-5,
                                          epochs=1, input_radius=8.0, noise_multiplier=1.0, batch_size=64,
                                          seed=0, input_shape=(64,))
    assert isinstance(m[0], lipkit.dp.L2BallProjection)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    xb, yb = next(iter(loader))
    o.zero_grad()
    o.criterion(m(xb), yb).backward()
    o.step()
    assert o.last_report is not None and math.isfinite(o.last_report.total)
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())
