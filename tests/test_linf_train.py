"""Training side of l_inf certification: model kinds, schedules, recipes, resume, PGD checks."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from linf_helpers import linf_cfg

import lipkit
from lipkit.certify.attacks import check_certificates
from lipkit.certify.margin import compute_certificates
from lipkit.training.config import ConfigError, RunConfig, load_recipe, recipe_names
from lipkit.training.data import load_digits_split
from lipkit.training.linf import (
    Negate,
    mix_loss,
    nominal_radius,
    pair_lipschitz,
    recalibrate_mean_shift,
    schedule_at,
    standardised_init,
)
from lipkit.training.trainer import fit, latest_checkpoint

INF = math.inf


def _cfg(**kw) -> RunConfig:
    return linf_cfg(**kw)


# --------------------------------------------------------------------------- config and recipes


@pytest.mark.parametrize("bad, needle", [
    ({"model": "resnet"}, "'model'"),
    ({"p": 2}, "use p=inf"),
    ({"head_width": -1}, "'head_width'"),
    ({"sort_q": 0.0}, "'sort_q'"),
    ({"sort_q": 1.5}, "'sort_q'"),
    ({"p_start": 0.5}, "'p_start'"),
    ({"p_end": 4.0}, "'p_end'"),
    ({"p_window": [0.3, 1.1]}, "'p_window'"),
    ({"p_window": [0.5, 0.2]}, "'p_window'"),
    ({"p_window": [0.1]}, "'p_window'"),
    ({"eps_window": [-0.1, 0.5]}, "'eps_window'"),
    ({"ce_weight": [0.1, 0.0]}, "end must be > 0"),
    ({"ce_weight": [-1, 0.1]}, "'ce_weight'"),
    ({"betas": [0.9, 1.0]}, "'betas'"),
    ({"adam_eps": 0}, "'adam_eps'"),
    ({"weight_decay": -0.1}, "'weight_decay'"),
    ({"margin": 0.0}, "mix loss needs margin > 0"),
    ({"head_activation": "gelu"}, "'head_activation'"),
    ({"p_window": "a,b"}, "'p_window'"),
    ({"augment_shift": -1}, "'augment_shift'"),
    ({"standardised_init": "yes"}, "'standardised_init'"),
])
def test_new_config_keys_are_validated(bad, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        _cfg(**bad)


def test_lipmlp_combinations_refused() -> None:
    with pytest.raises(ConfigError, match="hybrid head is for model"):
        RunConfig(head_width=16)
    with pytest.raises(ConfigError, match="mix loss is for model"):
        RunConfig(loss="mix", margin=0.3)
    with pytest.raises(ConfigError, match="l2 only"):
        RunConfig(p="inf")
    # the l2 defaults did not move
    assert RunConfig().model == "lipmlp" and RunConfig().p == 2.0


def test_recipes_load_by_name_and_flags_override() -> None:
    assert {"linf-digits", "linf-fmnist"} <= set(recipe_names())
    d = load_recipe("linf-digits")
    assert d.model == "linf-dist" and d.p == INF and d.dataset == "digits" and d.loss == "mix"
    f = load_recipe("linf-fmnist")
    assert f.dataset == "fashion-mnist" and f.p == INF and 0.1 in f.radii
    assert d.replace(epochs=3, widths="64,64").widths == [64, 64]
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*linf-digits"):
        load_recipe("nope")
    # the config round-trips through JSON, including p = inf and the new list keys
    assert RunConfig.from_dict(json.loads(d.to_json())) == d


# --------------------------------------------------------------------------- schedules and loss


def test_schedule_values() -> None:
    cfg = _cfg(epochs=10, p_window=[0.2, 0.6], eps_window=[0, 0.4], ce_weight=[0.1, 0.001], p_start=8,
               p_end=1000)
    spe = 10
    at = [schedule_at(cfg, e, s, spe) for e in range(10) for s in range(spe)]
    assert at[0].p == 8.0 and at[19].p == 8.0  # before the window
    mid = schedule_at(cfg, 4, 0, spe)  # half way: sqrt(8 * 1000) = 89.4 -> 89
    assert mid.p == 89.0 and mid.ce_weight == pytest.approx(0.01)
    assert all(v.p == INF for v in at[60:]) and all(v.p < INF for v in at[:60])
    ps = [v.p for v in at[:60]]
    assert ps == sorted(ps) and all(float(p).is_integer() for p in ps)
    assert at[0].eps == 0.0 and schedule_at(cfg, 2, 0, spe).eps == pytest.approx(0.15)
    assert all(v.eps == pytest.approx(0.3) for v in at[40:])
    assert at[0].ce_weight == pytest.approx(0.1) and at[-1].ce_weight == pytest.approx(0.001)
    # a pure function of the step index
    assert schedule_at(cfg, 3, 7, spe) == schedule_at(cfg, 3, 7, spe)


def test_mix_loss_hinge_is_zero_exactly_when_the_nominal_radius_reaches_eps() -> None:
    f = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.7, 0.0], [0.0, 1.0, 0.5]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    two = torch.tensor(2.0)
    # radii: 0.25, 0.15, misclassified
    _, r = nominal_radius(f.detach(), y, two)
    assert r.tolist() == pytest.approx([0.25, 0.15, 0.0])
    loss = mix_loss(f, y, two, eps=0.2, ce_weight=0.0, temperature=1.0)
    # hinge per point: 0, 1 - 0.3 / 0.4 = 0.25, 1 (clipped)
    assert loss.item() == pytest.approx((0.0 + 0.25 + 1.0) / 3)
    loss.backward()
    assert f.grad[0].abs().sum() == 0 and f.grad[1].abs().sum() > 0 and f.grad[2].abs().sum() == 0
    with_ce = mix_loss(f, y, two, eps=0.2, ce_weight=0.5, temperature=2.0)
    ce = torch.nn.functional.cross_entropy(2.0 * f, y)
    assert with_ce.item() == pytest.approx(loss.item() + 0.5 * ce.item())


# --------------------------------------------------------------------------- models and certificates


def test_pair_lipschitz_is_the_certificates_rule(small_split) -> None:
    torch.manual_seed(0)
    plain = lipkit.training.linf.build_linf_model(_cfg(), 64, 10)
    plain.train()
    plain(small_split.x_train[:64])  # running means
    plain.eval()
    assert isinstance(plain[-1], Negate) and pair_lipschitz(plain).item() == 2.0
    assert 1.0 <= lipkit.lipschitz_bound(plain, INF) <= 1.0 + 1e-12  # the product, rounded up
    res = compute_certificates(plain, small_split.x_test, INF)
    assert torch.allclose(res.radius, ((res.margin - res.allowance) / 2).clamp_min(0), rtol=1e-9, atol=1e-12)

    head = lipkit.training.linf.build_linf_model(_cfg(head_width=16), 64, 10)
    head.train()
    head(small_split.x_train[:64])
    head.eval()
    with torch.no_grad():
        head[-1].weight.mul_(3.0)
    res = compute_certificates(head, small_split.x_test, INF)
    # the weights the forward pass uses (parametrisation materialised in float32), in float64
    twin = copy.deepcopy(lipkit.export(head)).double()
    with torch.no_grad():
        lcj = pair_lipschitz(twin)
        f = twin(small_split.x_test.double())
    c = res.prediction
    gap = f.gather(1, c[:, None]) - f
    expect = ((gap - res.allowance[:, None]) / lcj[c]).scatter(1, c[:, None], INF).amin(1).clamp_min(0)
    # same rule (the certificate adds a relative round-off slack of ~1e-12 to the constants)
    assert torch.allclose(res.radius, expect, rtol=1e-9, atol=1e-12)
    assert (lcj.fill_diagonal_(INF) < 2 * lipkit.lipschitz_bound(head, INF)).any()  # tighter than global


@pytest.mark.parametrize("p", [8.0, INF])
def test_standardised_init_follows_the_run_on_standardised_inputs(p) -> None:
    """Raw-unit model == std * the model on (x - mean) / std, before and after Adam steps at lr * std."""
    torch.manual_seed(2)
    mean, std = 0.3, 0.25
    ref = lipkit.training.linf.build_linf_model(_cfg(widths=[24, 24]), 16, 5)  # (square layer: identity init)
    raw = copy.deepcopy(ref)
    standardised_init(raw, mean, std)
    for net in (ref, raw):
        for layer in lipkit.training.linf.distance_layers(net):
            layer.p = p
    x = mean + std * torch.randn(48, 16)
    y = torch.randint(0, 5, (48,))
    lr = 0.01
    opts = [torch.optim.Adam(ref.parameters(), lr=lr, eps=1e-30),
            torch.optim.Adam(raw.parameters(), lr=lr * std, eps=1e-30)]
    for _ in range(4):
        f_ref, f_raw = ref((x - mean) / std), raw(x)
        torch.testing.assert_close(f_raw, std * f_ref, rtol=1e-4, atol=1e-4 * std)
        # the same loss of the same function (the cross-entropy reads raw logits / std)
        for f, opt in zip((f_ref, f_raw / std), opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(f, y).backward()
            opt.step()
    ref.eval()
    raw.eval()
    with torch.no_grad():  # (Adam's early steps are nearly sign(g): round-off differences grow a little)
        torch.testing.assert_close(raw(x), std * ref((x - mean) / std), rtol=1e-2, atol=1e-2 * std)
    with pytest.raises(ValueError, match="std > 0"):
        standardised_init(raw, 0.0, 0.0)
    with pytest.raises(ConfigError, match="'standardised_init'"):
        RunConfig(standardised_init=True)  # an l2 model has no distance layers


def test_recalibrated_running_means_center_eval_features(small_split) -> None:
    torch.manual_seed(1)
    net = lipkit.training.linf.build_linf_model(_cfg(model="sortnet", sort_q=0.7), 64, 10)
    net.train()
    net(small_split.x_train[:64])
    recalibrate_mean_shift(net, small_split.x_train, batch_size=100)
    assert not net.training
    h = small_split.x_train
    with torch.no_grad():
        for layer in net:
            h = layer(h)
            if getattr(layer, "mean_shift", False):
                assert h.double().mean(0).abs().max().item() < 1e-4


@pytest.mark.parametrize("kw", [{}, {"model": "sortnet", "sort_q": 0.7},
                                {"head_width": 16, "weight_decay": 0.01},
                                {"augment_shift": 1, "standardised_init": True, "lr": 0.007}])
def test_resume_is_bit_identical(tmp_path, small_split, kw) -> None:
    cfg = _cfg(**kw)
    full, h_full = fit(cfg, tmp_path / "a", split=small_split, progress=False)
    _, h1 = fit(cfg, tmp_path / "b", split=small_split, progress=False, stop_after=2)  # p still finite here
    assert latest_checkpoint(tmp_path / "b") == 2 and h1["history"][-1]["p"] < INF
    resumed, h2 = fit(cfg, tmp_path / "b", split=small_split, progress=False)
    assert h2["resumed_from"] == 2
    sa, sb = full.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for ra, rb in zip(h_full["history"], h2["history"], strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items()
                                                                   if k != "seconds"}
    # the schedule reached p = inf and the saved config records every schedule key
    assert all(m.p == INF for m in resumed.modules() if isinstance(m, lipkit.LinfDistLinear))
    saved = json.loads(sorted((tmp_path / "b" / "checkpoints").glob("*.json"))[-1].read_text())["config"]
    for key in ("p_start", "p_end", "p_window", "eps_window", "ce_weight", "betas", "adam_eps", "model"):
        assert saved[key] == cfg.to_dict()[key], key


def test_augment_shift_changes_training_and_needs_square_images(tmp_path, small_split) -> None:
    plain, _ = fit(_cfg(epochs=1), tmp_path / "a", split=small_split, progress=False)
    shifted, _ = fit(_cfg(epochs=1, augment_shift=1), tmp_path / "b", split=small_split, progress=False)
    assert not torch.equal(plain[0].weight, shifted[0].weight)
    odd = dataclasses.replace(small_split, x_train=small_split.x_train[:, :60],
                              x_test=small_split.x_test[:, :60])
    with pytest.raises(ConfigError, match="'augment_shift': needs square images"):
        fit(_cfg(augment_shift=1), tmp_path / "c", split=odd, progress=False)


@pytest.mark.parametrize("kw", [{"widths": [64, 64]}, {"widths": [64], "head_width": 32}])
def test_certified_points_survive_pgd_linf(tmp_path, kw) -> None:
    s = load_digits_split()
    split = dataclasses.replace(s, x_test=s.x_test[:160], y_test=s.y_test[:160])
    cfg = _cfg(epochs=8, **kw)
    model, _ = fit(cfg, tmp_path, split=split, progress=False)
    x, y = split.x_test, split.y_test
    res = compute_certificates(model, x, INF)
    correct = res.prediction == y
    assert correct.double().mean() > 0.5 and (correct & (res.radius > 0.02)).sum() >= 20  # training worked
    chk = check_certificates(model, x, y, INF, radii=res.radius, steps=60, restarts=2,
                             generator=torch.Generator().manual_seed(0))
    assert chk.n_certified >= 20 and chk.n_broken == 0
    assert chk.baseline_success > 0.2  # the same attack at 3 x the radius does break points
    assert chk.max_violation <= 0.999 + 1e-6
    if "head_width" not in kw:
        # lipkit.certify analyses the round-off of l_inf-distance layers a priori; check its allowance
        # against an independent bound of the float32 forward over the ball, layer by layer:
        # fl(|x_i - w_i|) has relative error u, the max is exact, then (z - mean) + b adds two
        # roundings, so a layer errs by at most 3u (max_o z_o + |mean| + |b|) with
        # z_o <= z_o(x) + r_max on the ball; the layers are 1-Lipschitz, so the errors add up at the
        # logits (margins move by twice that).
        assert res.roundoff_rigorous
        bound = _linf_net_roundoff(model, x, res.radius + res.allowance)
        assert bool((res.allowance >= 2 * bound).all()), (res.allowance / bound).min()


def _linf_net_roundoff(model, x: torch.Tensor, r_max: torch.Tensor) -> torch.Tensor:
    u = 2.0**-24 + 2.0**-53
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    h = x.double()
    with torch.no_grad():
        for layer in model:
            twin = copy.deepcopy(layer).double().eval()
            if isinstance(layer, lipkit.LinfDistLinear):
                assert layer.p == INF
                shift = twin.running_mean.abs().max().item() if twin.mean_shift else 0.0
                bias = twin.bias.abs().max().item() if twin.bias is not None else 0.0
                raw = lipkit.LinfDistLinear(twin.in_features, twin.out_features, bias=False, mean_shift=False,
                                            dtype=torch.float64)
                raw.weight.copy_(twin.weight)
                z = raw(h).abs().amax(dim=1)
                total += 4 * u * (z + r_max + shift + bias)
            else:
                assert isinstance(layer, Negate)
            h = twin(h)
    return total


# --------------------------------------------------------------------------- command line


def _one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_recipe_train_then_certify_linf(tmp_path, capsys) -> None:
    from lipkit.cli import main

    one = tmp_path / "one.yaml"
    one.write_text("threads: 1\npgd_steps: 10\n")  # a config file overrides recipe keys too
    code = main(["train", "--recipe", "linf-digits", "--config", str(one), "--epochs", "3",
                 "--widths", "48,48", "--out", str(tmp_path), "--no-progress", "--name", "r",
                 "--ce-weight", "0.5,0.01", "--p-window", "0.1,0.6"])
    assert code == 0
    run = tmp_path / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "linf-dist" and cfg["p"] == "inf" and cfg["widths"] == [48, 48]
    assert cfg["p_end"] == load_recipe("linf-digits").p_end  # recipe keys kept, flags override
    assert cfg["p_window"] == [0.1, 0.6] and cfg["ce_weight"] == [0.5, 0.01]
    assert cfg["threads"] == 1 and cfg["pgd_steps"] == 10
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["p"] == "inf" and metrics["certificates_broken"] == 0
    assert "l_inf radius" in (run / "report.md").read_text()
    capsys.readouterr()
    code = main(["certify", str(run), "--eps", "0.02,0.05", "--pgd-steps", "20"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["p"] == "inf" and set(out["certified_accuracy"]) == {"0.02", "0.05"}
    assert out["certificates_broken"] == 0 and out["lipschitz_bound"] == pytest.approx(1.0, abs=1e-9)
    assert out["clean_accuracy"] >= out["certified_accuracy"]["0.02"] >= out["certified_accuracy"]["0.05"]
    # the run folder certifies what training evaluated: same clean accuracy
    assert out["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])
    code = main(["certify", str(run), "--eps", "0.02,0.05", "--pgd-steps", "20", "--interval",
                 "--input-domain", "0,1"])
    out2 = json.loads(capsys.readouterr().out)
    iv = out2["interval"]
    assert code == 0 and iv["input_domain"] == [0.0, 1.0] and out2["certificates_broken"] == 0
    for r in ("0.02", "0.05"):  # the margin certificate is part of the union: never fewer points
        assert out["certified_accuracy"][r] <= iv["certified_accuracy"][r] <= out["clean_accuracy"]
    for argv, needle in ((["--input-domain", "0,1"], "needs --interval"),
                         (["--interval", "--input-domain", "1,0"], "LO < HI"),
                         (["--interval", "--input-domain", "0.5,1"], "outside it")):
        assert main(["certify", str(run), "--pgd-steps", "0", *argv]) != 0
        _one_line_error(capsys.readouterr().err, needle)


def test_cli_recipe_errors(tmp_path, capsys, monkeypatch) -> None:
    from lipkit.cli import main
    from lipkit.training import data

    code = main(["train", "--recipe", "linf-cifar", "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "unknown recipe 'linf-cifar'", "linf-fmnist")
    bad = tmp_path / "b.yaml"
    bad.write_text("p_window: [0.5, 0.1]\n")
    code = main(["train", "--recipe", "linf-digits", "--config", str(bad), "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "'p_window'")
    code = main(["train", "--recipe", "linf-digits", "--model", "lipmlp", "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "'p'")
    code = main(["train", "--recipe", "linf-digits", "--p-window", "0.5,0.1", "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "'p_window'")
    code = main(["train", "--recipe", "linf-digits", "--ce-weight", "1,x", "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "'ce_weight'")
    # Fashion-MNIST missing: one line naming the Debian package to install
    monkeypatch.setattr(data, "_find_fashion_dir", lambda roots: None)
    code = main(["train", "--recipe", "linf-fmnist", "--out", str(tmp_path)])
    assert code != 0
    _one_line_error(capsys.readouterr().err, "apt-get update && apt-get install dataset-fashion-mnist")


def test_fashion_default_roots_include_the_debian_package_path(monkeypatch) -> None:
    from lipkit.training import data

    seen: list = []
    monkeypatch.setattr(data, "_find_fashion_dir", lambda roots: seen.extend(roots))
    with pytest.raises(data.DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist()
    # `dpkg -L dataset-fashion-mnist` lists /usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz
    assert str(seen[0]) == "/usr/share/datasets/fashion-mnist"


def test_progress_bar_runs(tmp_path, small_split, capsys) -> None:
    fit(_cfg(epochs=2), tmp_path, split=small_split, progress=True)
    err = capsys.readouterr().err  # not a terminal: one line per epoch
    assert "epoch 1/2" in err and "epoch 2/2" in err and "loss" in err
    cfg = _cfg(epochs=3)
    fit(cfg, tmp_path / "b", split=small_split, progress=False, stop_after=1)
    fit(cfg, tmp_path / "b", split=small_split, progress=True)
    err = capsys.readouterr().err
    assert "resuming after epoch 1/3" in err and "epoch 3/3" in err and "train: epoch 1/3" not in err
