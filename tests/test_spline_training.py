"""Training with spline activations: config keys, parameter groups, the TV(2) penalty, the CLI pipeline
(export keeps the splines, certificates cover them), and splines after 1-Lipschitz conv layers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, quick_config
from torch import nn

import lipkit
from lipkit.cli import main
from lipkit.nn.spline import FrozenLinearSpline
from lipkit.training.config import ConfigError
from lipkit.training.splines import SplineStrategy, tv2_penalty
from lipkit.training.trainer import Trainer, build_model, build_plain_model, fit


def test_config_keys_and_errors():
    cfg = quick_config(activation="spline", widths=[7, 5], tv2_weight=1e-3, spline_lr=1e-4)
    assert cfg.objective.tv2_weight == 1e-3 and cfg.optim.spline_lr == 1e-4
    model = build_model(cfg, 64, 10)
    splines = [m for m in model if isinstance(m, lipkit.LinearSpline)]
    assert [m.num_channels for m in splines] == [7, 5]  # odd widths are fine for splines
    assert lipkit.lipschitz_bound(model, 2) <= 1.0 + 1e-5  # float32 orthogonal weights
    plain = build_plain_model(cfg, 64, 10)
    assert sum(isinstance(m, FrozenLinearSpline) for m in plain) == 2
    with pytest.raises(ConfigError, match="tv2_weight"):
        quick_config(activation="maxmin", tv2_weight=1e-3)
    with pytest.raises(ConfigError, match="spline_lr"):
        quick_config(activation="spline", spline_lr=-1.0)


def test_param_groups_and_tv2_gradient(tmp_path, small_split):
    cfg = quick_config(activation="spline", widths=[16], epochs=1, tv2_weight=0.5, spline_lr=2e-3,
                       schedule="constant")
    tr = Trainer(cfg, tmp_path / "r", split=small_split, progress=False)
    assert any(isinstance(s, SplineStrategy) for s in tr.strategies)
    tr.setup()
    lrs = sorted(g["lr"] for g in tr.optimizer.param_groups)
    assert lrs == [2e-3, 1e-2]
    spline = next(m for m in tr.model.modules() if isinstance(m, lipkit.LinearSpline))
    spline_group = next(g for g in tr.optimizer.param_groups if g["lr"] == 2e-3)
    assert {id(q) for q in spline_group["params"]} == {id(q) for q in spline.parameters()}
    # after_backward adds exactly the gradient of tv2_weight * tv2
    with torch.no_grad():
        spline.coefficients.add_(0.3 * torch.randn_like(spline.coefficients))
    tr.optimizer.zero_grad()
    (cfg.tv2_weight * tv2_penalty(tr.model)).backward()
    expected = spline.coefficients.grad.clone()
    tr.optimizer.zero_grad()
    for s in tr.strategies:
        s.after_backward(tr, None)
    assert torch.allclose(spline.coefficients.grad, expected)
    assert expected.abs().sum() > 0


def test_onecycle_keeps_each_groups_peak(tmp_path, small_split):
    cfg = quick_config(activation="spline", widths=[16], epochs=1, spline_lr=1e-4, schedule="onecycle")
    tr = Trainer(cfg, tmp_path / "r", split=small_split, progress=False)
    tr.setup()
    peaks = sorted(g["max_lr"] for g in tr.optimizer.param_groups)
    assert peaks == [1e-4, 1e-2]


def test_tv2_weight_sparsifies(tmp_path, small_split):
    tv = {}
    for w in (0.0, 0.05):
        cfg = quick_config(name=f"w{w}", activation="spline", widths=[16], epochs=2, tv2_weight=w, lr=2e-2)
        model, _ = fit(cfg, tmp_path / f"w{w}", split=small_split, progress=False)
        tv[w] = tv2_penalty(model).item()
    assert tv[0.05] < tv[0.0]


@pytest.mark.slow
def test_cli_train_with_spline_activation(tmp_path, capsys):
    code = main(["train", "--activation", "spline", "--widths", "24,24", "--epochs", "2", "--tv2-weight",
                 "1e-4", "--spline-lr", "3e-3", "--name", "sp", "--out", str(tmp_path), "--no-progress"])
    capsys.readouterr()
    assert code == 0
    report = json.loads((tmp_path / "sp" / "metrics.json").read_text())
    from lipkit.training.runs import load_run_model

    plain = load_run_model(tmp_path / "sp")
    assert sum(isinstance(m, FrozenLinearSpline) for m in plain.modules()) == 2
    assert lipkit.lipschitz_bound(plain, 2) <= 1.0 + 1e-6
    assert report["clean_accuracy"] > 0.5


def test_cli_rejects_tv2_weight_without_splines(tmp_path, capsys):
    code = main(["train", "--tv2-weight", "0.1", "--out", str(tmp_path)])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "tv2_weight")


def test_spline_after_a_one_lipschitz_conv_layer():
    torch.manual_seed(0)
    net = nn.Sequential(lipkit.LipConv2d(2, 4, 3, padding=1, constraint="aol"),
                        lipkit.LinearSpline(4, init="absolute_value"),
                        lipkit.LipConv2d(4, 3, 3, padding=1, constraint="aol"))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = torch.randn(8, 2, 6, 6)
    for _ in range(5):
        opt.zero_grad()
        (net(x) ** 2).mean().neg().backward()
        opt.step()
    bound = lipkit.lipschitz_bound(net, 2, input_shape=(2, 6, 6))
    y = x + 1e-2 * torch.randn_like(x)
    with torch.no_grad():
        ratio = ((net(x) - net(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()
    assert ratio <= bound * (1 + 1e-4)
    ex = lipkit.export(net, x)
    assert any(isinstance(m, FrozenLinearSpline) for m in ex.modules())
    assert lipkit.lipschitz_bound(ex, 2, input_shape=(2, 6, 6)) <= bound * (1 + 1e-6)
