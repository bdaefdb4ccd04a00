"""The trainer's extension points and hygiene: strategies and hooks, no global state, losses from
lipkit.losses, the pairwise bound, and the sectioned run config (old flat run folders still load)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import digits_subset, quick_config
from linf_helpers import linf_cfg

from lipkit.bounds import pairwise_head_bound
from lipkit.losses import HKRLoss, LipschitzCrossEntropyLoss, MulticlassHingeLoss, top2_margin
from lipkit.training.config import ConfigError, RunConfig, load_config, load_recipe
from lipkit.training.linf import LinfScheduleStrategy, build_linf_model, nominal_radius, pair_lipschitz
from lipkit.training.strategy import StepState, TrainingStrategy, strategies_for
from lipkit.training.trainer import Trainer, build_model, fit, latest_checkpoint, make_loss


@pytest.fixture(scope="module")
def small_split():
    return digits_subset(130, 40)


def _cfg(**kw) -> RunConfig:
    return quick_config(**{"widths": [16, 16], "epochs": 2, **kw})


# --------------------------------------------------------------------------- no global state


def test_build_model_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(_cfg(), 64, 10)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)  # whatever the caller's RNG, the config's seed decides the weights
    b = build_model(_cfg(), 64, 10)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    c = build_model(_cfg(seed=4), 64, 10)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_fit_restores_threads_and_rng_also_on_error(tmp_path, small_split) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        torch.manual_seed(11)
        before = torch.get_rng_state()
        fit(_cfg(epochs=1), tmp_path / "a", split=small_split, progress=False)
        assert torch.get_num_threads() == 3
        assert torch.equal(torch.get_rng_state(), before)
        odd = dataclasses.replace(small_split, x_train=small_split.x_train[:, :60],
                                  x_test=small_split.x_test[:, :60])
        with pytest.raises(ConfigError, match="square images"):
            fit(linf_cfg(augment_shift=1), tmp_path / "b", split=odd, progress=False)
        assert torch.get_num_threads() == 3
        assert torch.equal(torch.get_rng_state(), before)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- strategies and hooks


class Recorder(TrainingStrategy):
    """Counts hook calls, scales the loss, adds a key to each epoch record, and can fail on demand."""

    def __init__(self, fail_at_epoch: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at_epoch = fail_at_epoch
        self.losses: list[float] = []

    def on_train_start(self, trainer):
        self.calls.append("train_start")

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(f"epoch_start {epoch}")
        if epoch == self.fail_at_epoch:
            raise RuntimeError("stop here")

    def before_step(self, trainer, state: StepState):
        self.calls.append("before_step")
        assert state.logits is None and state.x.shape[0] == len(state.idx)

    def loss(self, trainer, state):
        loss = 2.0 * trainer.loss_fn(state.logits, state.y)
        self.losses.append(loss.item())
        return loss

    def after_backward(self, trainer, state):
        self.calls.append("after_backward")
        assert all(q.grad is not None for q in trainer.model.parameters())

    def after_step(self, trainer, state):
        self.calls.append("after_step")

    def on_epoch_end(self, trainer, epoch, record):
        self.calls.append(f"epoch_end {epoch}")
        record["recorder"] = epoch

    def before_final_eval(self, trainer):
        self.calls.append("final_eval")

    def on_train_end(self, trainer):
        self.calls.append("train_end")


def test_trainer_calls_every_hook_in_order(tmp_path, small_split) -> None:
    rec = Recorder()
    model, hist = Trainer(_cfg(), tmp_path, split=small_split, progress=False, strategies=[rec]).run()
    steps = ["before_step", "after_backward", "after_step"] * 3  # 130 points, batches of 64: 3 steps
    assert rec.calls == ["train_start", "epoch_start 0", *steps, "epoch_end 0",
                         "epoch_start 1", *steps, "epoch_end 1", "final_eval", "train_end"]
    assert [r["recorder"] for r in hist["history"]] == [0, 1]
    # the strategy's loss is the one trained on and reported (twice the config's loss)
    first = [rec.losses[i] for i in range(3)]
    assert hist["history"][0]["loss"] == pytest.approx((first[0] * 64 + first[1] * 64 + first[2] * 2) / 130)
    assert "test_accuracy" in hist["history"][-1]


def test_on_train_end_runs_after_an_error(tmp_path, small_split) -> None:
    rec = Recorder(fail_at_epoch=1)
    with pytest.raises(RuntimeError, match="stop here"):
        Trainer(_cfg(), tmp_path, split=small_split, progress=False, strategies=[rec]).run()
    assert rec.calls[-1] == "train_end" and latest_checkpoint(tmp_path) == 1


def test_fit_is_the_trainer_with_the_configs_strategies(tmp_path, small_split) -> None:
    assert strategies_for(_cfg()) == []
    (s,) = strategies_for(linf_cfg())
    assert isinstance(s, LinfScheduleStrategy)
    cfg = linf_cfg(epochs=2)
    m1, h1 = fit(cfg, tmp_path / "a", split=small_split, progress=False)
    m2, h2 = Trainer(cfg, tmp_path / "b", split=small_split, progress=False).run()
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2["history"]]
    assert h1["history"][-1]["p"] == math.inf  # the schedule's values are recorded


# --------------------------------------------------------------------------- one loss, one margin, one bound


def test_make_loss_is_lipkit_losses() -> None:
    torch.manual_seed(0)
    f = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    m, t, alpha = 0.5, 4.0, 3.0
    for p, factor in ((2.0, math.sqrt(2.0)), (math.inf, 2.0)):
        kw = {} if p == 2.0 else {"model": "linf-dist", "p": "inf"}
        ce = make_loss(RunConfig(loss="ce", margin=m, temperature=t, **kw))
        assert torch.equal(ce(f, y), LipschitzCrossEntropyLoss(temperature=t, margin=m * factor)(f, y) / t)
        hinge = make_loss(RunConfig(loss="hinge", margin=m, **kw))
        assert torch.equal(hinge(f, y), MulticlassHingeLoss(margin=m * factor)(f, y))
        hkr = make_loss(RunConfig(loss="hkr", margin=m, alpha=alpha, **kw))
        assert torch.equal(hkr(f, y), HKRLoss(alpha=alpha, margin=m * factor)(f, y))
    # the hinge is the top-2 hinge: zero exactly when every margin reaches m * sqrt(2)
    hinge = make_loss(RunConfig(loss="hinge", margin=m))
    expect = torch.relu(m * math.sqrt(2.0) - top2_margin(f, y)).mean()
    assert torch.equal(hinge(f, y), expect)
    with pytest.raises(ValueError, match="mix loss is scheduled"):
        make_loss(linf_cfg())


def test_pair_lipschitz_is_pairwise_head_bound_and_differentiable() -> None:
    torch.manual_seed(0)
    model = build_linf_model(linf_cfg(head_width=8), 64, 10)
    lcj = pair_lipschitz(model)
    body = model[-3].weight.abs().sum(dim=1).amax()
    assert torch.equal(lcj, pairwise_head_bound(model[-1].weight, body, math.inf))
    v = model[-1].weight.detach().double()
    by_hand = (v[:, None, :] - v[None, :, :]).abs().sum(-1) * body.detach().double()
    torch.testing.assert_close(lcj.double(), by_hand, rtol=1e-6, atol=0)
    lcj.sum().backward()
    assert model[-1].weight.grad.abs().sum() > 0


def test_nominal_radius_one_constant_is_the_top2_margin() -> None:
    torch.manual_seed(1)
    f = torch.randn(30, 4)
    y = torch.randint(0, 4, (30,))
    ok, r = nominal_radius(f, y, torch.tensor(2.0))
    ok_m, r_m = nominal_radius(f, y, torch.full((4, 4), 2.0))  # the pairwise branch, same constant
    assert torch.equal(ok, ok_m) and torch.equal(r, r_m)
    assert torch.equal(r, (top2_margin(f.double(), y) / 2).clamp_min(0))


# --------------------------------------------------------------------------- config sections


def test_sectioned_flat_and_mixed_configs_are_the_same(tmp_path) -> None:
    flat = RunConfig(lr=0.01, widths=[64, 32], epochs=5, radii=[0.5], dataset="digits")
    sect = tmp_path / "s.yaml"
    sect.write_text("optim:\n  lr: 0.01\n  epochs: 5\nnetwork:\n  widths: [64, 32]\n"
                    "certify:\n  radii: [0.5]\ndata:\n  dataset: digits\n")
    assert load_config(sect) == flat
    mixed = RunConfig.from_dict({"lr": 0.01, "epochs": 5, "network": {"widths": [64, 32]}, "radii": [0.5]})
    assert mixed == flat and mixed.optim.lr == 0.01 and mixed.network.widths == [64, 32]
    assert RunConfig(optim={"lr": 0.01, "epochs": 5}, network={"widths": [64, 32]}, radii=[0.5]) == flat
    d = flat.to_dict(sections=True)
    assert d["optim"]["lr"] == 0.01 and d["certify"]["radii"] == [0.5] and "lr" not in d
    assert RunConfig.from_dict(d) == flat and RunConfig.from_dict(flat.to_dict()) == flat
    r = load_recipe("linf-digits")
    assert RunConfig.from_dict(r.to_dict(sections=True)) == r
    assert r.to_dict(sections=True)["certify"]["p"] == "inf"
    # replace takes flat keys or sections; a flat alias writes through to its section
    assert flat.replace(optim={"lr": 0.02}).lr == 0.02 and flat.replace(lr=None).lr == 0.01
    flat.lr = 0.5
    assert flat.optim.lr == 0.5


@pytest.mark.parametrize("data, needle", [
    ({"learning_rate": 0.1}, "unknown config key 'learning_rate' at the top level"),
    ({"batch": 3}, "did you mean 'batch_size' in section 'optim'"),
    ({"optim": {"learning_rate": 0.1}}, "unknown config key 'learning_rate' in section 'optim'; the keys"),
    ({"optim": {"widths": [8]}}, "'widths' is not in section 'optim': it belongs in section 'network'"),
    ({"data": {"seed": 1}}, "'seed' is not in section 'data': it belongs at the top level"),
    ({"lr": 0.1, "optim": {"lr": 0.2}}, "'lr' is given twice (at the top level and in section 'optim')"),
    ({"optim": [1, 2]}, "config section 'optim' must be a mapping"),
    ({"optim": {"lr": -1}}, "config key 'lr' in section 'optim': must be > 0"),
    ({"network": {"widths": [3]}}, "'widths' in section 'network': maxmin sorts groups of 2"),
])
def test_config_errors_name_the_key_and_its_section(data, needle) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data)
    assert needle in str(err.value) and "\n" not in str(err.value)


#: a config.json as lipkit wrote it before the sections (flat keys, and without the keys added since)
OLD_FLAT_CONFIG = {
    "name": "old", "dataset": "digits", "test_size": 0.25, "data_seed": 0, "widths": [16, 16],
    "activation": "maxmin", "group_size": 2, "constraint": "orthogonal", "orthogonal_method": "cayley",
    "loss": "ce", "temperature": 8.0, "margin": 1.0, "alpha": 10.0, "optimizer": "adam", "lr": 0.01,
    "schedule": "onecycle", "epochs": 2, "batch_size": 64, "seed": 3, "radii": [0.1, 0.5], "p": 2.0,
    "threads": 1, "pgd_steps": 5,
}


def test_old_flat_run_folder_and_checkpoint_still_load(tmp_path, small_split) -> None:
    from lipkit.training.runs import load_run, load_run_model, save_weights
    from lipkit.training.trainer import build_plain_model

    cfg = RunConfig.from_dict(OLD_FLAT_CONFIG)
    assert cfg.model == "lipmlp" and cfg.augment_shift == 0 and cfg.optim.lr == 0.01  # new keys: defaults
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(OLD_FLAT_CONFIG))
    torch.manual_seed(0)
    plain = build_plain_model(cfg, 64, 10).eval()
    save_weights(plain, run / "weights.safetensors")
    x = small_split.x_test
    with torch.no_grad():
        assert torch.equal(load_run_model(run)(x), plain(x))
        loaded_cfg, model, _ = load_run(run)
        assert loaded_cfg == cfg and torch.equal(model(x), plain(x))
    # a checkpoint whose JSON holds the old flat config resumes
    ck_run = tmp_path / "ck"
    fit(cfg, ck_run, split=small_split, progress=False, stop_after=1)
    js = ck_run / "checkpoints" / "epoch_0001.json"
    meta = json.loads(js.read_text())
    meta["config"] = OLD_FLAT_CONFIG
    js.write_text(json.dumps(meta))
    _, hist = fit(cfg, ck_run, split=small_split, progress=False)
    assert hist["resumed_from"] == 1 and len(hist["history"]) == 2


def test_cli_reads_a_sectioned_config_and_names_the_section(tmp_path, capsys) -> None:
    from lipkit.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.01\n  widths: [8]\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path)]) != 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "belongs in section 'network'" in lines[0]
    good = tmp_path / "good.yaml"
    good.write_text("name: s\nthreads: 1\nnetwork:\n  widths: [16, 16]\noptim:\n  epochs: 1\n"
                    "certify:\n  pgd_steps: 0\n  radii: [0.1]\n")
    assert main(["train", "--config", str(good), "--out", str(tmp_path), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved["widths"] == [16, 16] and saved["epochs"] == 1 and "optim" not in saved  # written flat
