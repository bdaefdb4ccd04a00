"""Private runs in the trainer and the CLI: config validation, per-epoch privacy records, exact resume with
the accountant continued, the YAML dp section, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, quick_config
from opacus.accountants import RDPAccountant

from lipkit.cli import main
from lipkit.training.config import ConfigError, RunConfig
from lipkit.training.trainer import fit


def _cfg(**kw):
    base = dict(epochs=3, widths=[32], private=True, epsilon=3.0, delta=1e-5, input_radius=8.0,
                schedule="constant", lr=1e-2)
    base.update(kw)
    return quick_config(**base)


def test_config_validation_names_the_dp_key():
    with pytest.raises(ConfigError, match="'input_radius' in section 'dp'"):
        RunConfig(private=True)
    with pytest.raises(ConfigError, match="'delta' in section 'dp'"):
        RunConfig(private=True, input_radius=1.0, delta=1.5)
    with pytest.raises(ConfigError, match="'accountant' in section 'dp'"):
        RunConfig(accountant="gdp")
    cfg = RunConfig.from_dict({"dp": {"private": True, "epsilon": 1.0, "input_radius": 2.0}})
    assert cfg.private and cfg.epsilon == 1.0 and cfg.to_dict(sections=True)["dp"]["input_radius"] == 2.0


@pytest.mark.slow
def test_private_run_records_privacy_and_resumes_exactly(tmp_path, small_split):
    cfg = _cfg()
    full, h_full = fit(cfg, tmp_path / "a", split=small_split, progress=False)
    recs = [r["dp"] for r in h_full["history"]]
    steps_per_epoch = -(-len(small_split.x_train) // cfg.batch_size)
    assert [r["steps"] for r in recs] == [steps_per_epoch * e for e in (1, 2, 3)]
    eps = [r["epsilon"] for r in recs]
    assert eps == sorted(eps) and 3.0 - 0.02 <= eps[-1] <= 3.0
    ref = RDPAccountant()  # the recorded epsilon is opacus' for the steps taken
    q = cfg.batch_size / len(small_split.x_train)
    for _ in range(3 * steps_per_epoch):
        ref.step(noise_multiplier=recs[-1]["noise_multiplier"], sample_rate=q)
    assert eps[-1] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert recs[-1]["sensitivity"] > 0
    assert set(recs[-1]["sensitivities"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    # the model carries the input projection and stays 1-Lipschitz (constraint maps after every step)
    from lipkit.bounds import lipschitz_bound
    from lipkit.dp import L2BallProjection

    assert isinstance(full[0], L2BallProjection)
    assert lipschitz_bound(full.eval(), 2) <= 1.0 + 1e-4
    # interrupted after 2 epochs and resumed: same weights, accountant continued (never under-counts)
    fit(cfg, tmp_path / "b", split=small_split, progress=False, stop_after=2)
    resumed, h_res = fit(cfg, tmp_path / "b", split=small_split, progress=False)
    assert h_res["resumed_from"] == 2
    assert [r["dp"]["epsilon"] for r in h_res["history"]] == eps
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_private_loss_variants_train(tmp_path, small_split):
    for loss in ("hinge", "hkr"):
        _, h = fit(_cfg(loss=loss, epochs=1, noise_multiplier=2.0), tmp_path / loss, split=small_split,
                   progress=False)
        assert h["history"][-1]["dp"]["noise_multiplier"] == 2.0


def test_cli_dp_flags_and_errors(tmp_path, capsys):
    code = main(["train", "--dp", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert_one_line_error(err, "input_radius")
    code = main(["train", "--dp", "--input-radius", "8", "--epsilon", "1e-9", "--epochs", "40", "--out",
                 str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert_one_line_error(err, "not reachable")


def test_yaml_dp_section_trains_and_certify_reports_privacy(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("name: p\nwidths: [32]\nepochs: 1\nbatch_size: 128\nthreads: 1\npgd_steps: 2\n"
                   "dp:\n  private: true\n  epsilon: 8\n  input_radius: 8\n")
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "differential privacy: epsilon" in out
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["privacy"]["epsilon"] <= 8.0 and "0.1" in metrics["certified_accuracy"]
    assert "Differential privacy" in (tmp_path / "p" / "report.md").read_text()
    code = main(["certify", str(tmp_path / "p"), "--pgd-steps", "2"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["privacy"]["epsilon"] == metrics["privacy"]["epsilon"]
