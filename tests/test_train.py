from __future__ import annotations

import math

import pytest
import torch
from conftest import digits_subset, quick_config

from lipkit.training.config import RunConfig
from lipkit.training.trainer import CheckpointError, fit, latest_checkpoint, make_loss, margin_radius


@pytest.fixture(scope="module")
def small_split():
    return digits_subset(256, 64)


def _cfg(**kw) -> RunConfig:
    return quick_config(**kw)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_matches_uninterrupted_run(tmp_path, small_split) -> None:
    cfg = _cfg()
    full, hist_full = fit(cfg, tmp_path / "a", split=small_split, progress=False)
    assert hist_full["resumed_from"] == 0 and len(hist_full["history"]) == 3
    _, h1 = fit(cfg, tmp_path / "b", split=small_split, progress=False, stop_after=2)  # "interrupted"
    assert len(h1["history"]) == 2 and latest_checkpoint(tmp_path / "b") == 2
    resumed, h2 = fit(cfg, tmp_path / "b", split=small_split, progress=False)
    assert h2["resumed_from"] == 2 and [r["epoch"] for r in h2["history"]] == [1, 2, 3]
    wa, wb = _weights(full), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # a finished run re-run does no more epochs
    _, h3 = fit(cfg, tmp_path / "b", split=small_split, progress=False)
    assert h3["resumed_from"] == 3
    # old checkpoints pruned, no temp files left behind
    names = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert names == ["epoch_0002.json", "epoch_0002.safetensors", "epoch_0003.json", "epoch_0003.safetensors"]


def test_corrupt_checkpoint_clear_error_and_nothing_deleted(tmp_path, small_split) -> None:
    cfg = _cfg(epochs=3)
    fit(cfg, tmp_path, split=small_split, progress=False, stop_after=1)
    ck = tmp_path / "checkpoints"
    st = ck / "epoch_0001.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-5] ^= 0xFF
    st.write_bytes(bytes(blob))
    before = sorted(p.name for p in ck.iterdir())
    with pytest.raises(CheckpointError, match="checksum"):
        fit(cfg, tmp_path, split=small_split, progress=False)
    assert sorted(p.name for p in ck.iterdir()) == before and st.read_bytes() == bytes(blob)
    (ck / "epoch_0001.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        fit(cfg, tmp_path, split=small_split, progress=False)
    st.unlink()
    (ck / "epoch_0001.json").write_text('{"format": "lipkit-checkpoint-1", "sha256": "0"}')
    with pytest.raises(CheckpointError, match="no weights file"):
        fit(cfg, tmp_path, split=small_split, progress=False)


def test_resume_with_other_config_is_refused(tmp_path, small_split) -> None:
    fit(_cfg(), tmp_path, split=small_split, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="different config.*lr"):
        fit(_cfg(lr=5e-3), tmp_path, split=small_split, progress=False)


def test_margin_radius_is_sound_against_random_perturbations(tmp_path, small_split) -> None:
    cfg = _cfg(epochs=2)
    model, _ = fit(cfg, tmp_path, split=small_split, progress=False)
    from lipkit.bounds import lipschitz_bound

    bound = lipschitz_bound(model, 2)
    x, y = small_split.x_test, small_split.y_test
    correct, radius = margin_radius(model, x, y, bound)
    assert bool(((radius > 0) <= correct).all())
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(20):
            d = torch.randn_like(x)
            d = d / d.norm(dim=1, keepdim=True) * radius[:, None].float() * 0.999
            keep = model(x + d).argmax(1) == y
            assert bool(keep[radius > 0].all())


def test_losses_reward_margin() -> None:
    y = torch.tensor([0, 1])
    small = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.2, 0.0]])
    big = 10 * small
    for loss in ("ce", "hinge", "hkr"):
        fn = make_loss(RunConfig(loss=loss, margin=0.5, temperature=4.0))
        assert fn(big, y).item() < fn(small, y).item(), loss
        assert math.isfinite(fn(small, y).item())


def test_config_yaml_roundtrip_and_validation(tmp_path) -> None:
    from lipkit.training.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("widths: [64, 32]\nlr: 0.01\nradii: [0.5, 1]\np: 2\n")
    cfg = load_config(p)
    assert cfg.widths == [64, 32] and cfg.lr == 0.01 and cfg.radii == [0.5, 1.0] and cfg.p == 2.0
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(widths="128,128").widths == [128, 128]
    for bad, needle in [({"widths": [3]}, "multiple of 2"), ({"activation": "relu"}, "activation"),
                        ({"epochs": 1.5}, "integer"), ({"radii": [0]}, "radii"), ({"p": 3}, "p=3"),
                        ({"loss": "hkr", "margin": 0}, "margin"), ({"batch": 3}, "unknown config key")]:
        with pytest.raises(ConfigError, match=needle):
            RunConfig.from_dict({**cfg.to_dict(), **bad} if "batch" not in bad else bad)
