"""``lipkit estimate MODEL``: the bracket table, JSON output, fallbacks, and one-line errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import assert_one_line_error
from torch import nn

from lipkit.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _onnx(tmp_path, net: nn.Module, d: int, name: str = "m.onnx") -> str:
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, d),), str(path), dynamo=False)
    return str(path)


@pytest.fixture
def mlp_path(tmp_path) -> str:
    torch.manual_seed(0)
    return _onnx(tmp_path, nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)), 5)


def test_estimate_prints_table_and_writes_json(tmp_path, capsys, mlp_path):
    out_json = tmp_path / "res.json"
    code, out, err = _run(capsys, "estimate", mlp_path, "--p", "2", "--method", "lipsdp,naive",
                          "--time-limit", "60", "--json", str(out_json), "--no-progress")
    assert code == 0, err
    assert "upper/lower" in out and "lipsdp" in out and "naive" in out
    rec = json.loads(out_json.read_text())
    assert rec["p"] == "2" and rec["input_shape"] == [5]
    rows = {r["method"]: r for r in rec["results"]}
    assert rows["lipsdp"]["used"] == "lipsdp" and rows["naive"]["used"] == "naive"
    assert 0 < rec["lower"] <= rows["lipsdp"]["upper"] <= rows["naive"]["upper"]
    assert rec["best_method"] == "lipsdp" and rec["best_upper"] == rows["lipsdp"]["upper"]
    assert rows["lipsdp"]["ratio"] == pytest.approx(rows["lipsdp"]["upper"] / rec["lower"])
    assert rows["lipsdp"]["ratio"] < 1.05  # LipSDP is nearly exact on a small one-hidden-layer net


def test_estimate_falls_back_and_says_so(tmp_path, capsys):
    torch.manual_seed(1)
    # 4 linear layers: beyond LiPopt degree 3 and 2
    deep = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 20),
                         nn.ReLU(), nn.Linear(20, 2))
    wide = _onnx(tmp_path, deep, 30, "deep.onnx")
    out_json = tmp_path / "w.json"
    code, out, err = _run(capsys, "estimate", wide, "--p", "inf", "--json", str(out_json), "--no-progress",
                          "--no-lower")
    assert code == 0, err
    assert "lipopt failed" in err and "fell back to naive" in out
    rec = json.loads(out_json.read_text())
    assert rec["results"][0]["used"] == "naive" and "degree >= 4" in rec["results"][0]["fallback"]
    assert rec["lower"] == 0.0 and rec["results"][0]["ratio"] is None


def test_estimate_bad_input_is_one_line(tmp_path, capsys, mlp_path):
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 20)
    for args, needles in [
        (("estimate", str(tmp_path / "none.onnx")), ("does not exist",)),
        (("estimate", str(garbage)), ("not a valid ONNX",)),
        (("estimate", mlp_path, "--p", "3"), ("--p", "unsupported norm")),
        (("estimate", mlp_path, "--method", "lipsdp-network"), ("unknown method 'lipsdp-network'",)),
        (("estimate", mlp_path, "--method", "lipopt"), ("does not support --p 2",)),
        (("estimate", mlp_path, "--time-limit", "-1"), ("--time-limit",)),
        (("estimate", mlp_path, "--input-shape", "a,b"), ("--input-shape",)),
        (("estimate", mlp_path, "--input-shape", "7"), ("shape",)),
        (("estimate", mlp_path, "--json", str(tmp_path / "no" / "dir.json"), "--no-lower"), ("--json",)),
    ]:
        code, _, err = _run(capsys, *args)
        assert code != 0, args
        assert_one_line_error(err, *needles)


def test_estimate_a_run_folder(tmp_path, capsys):
    """The CLI resolves a run folder itself (lipkit.training.runs.load_run_model): the estimation layer
    only reads modules and ONNX files."""
    from lipkit.estimation import naive_upper
    from lipkit.training.config import RunConfig
    from lipkit.training.runs import save_run
    from lipkit.training.trainer import build_plain_model

    cfg = RunConfig(name="r", widths=[8, 6])
    torch.manual_seed(3)
    model = build_plain_model(cfg, 64, 10).eval()
    save_run(tmp_path / "r", cfg, model)
    out_json = tmp_path / "res.json"
    code, _, err = _run(capsys, "estimate", str(tmp_path / "r"), "--method", "naive", "--json", str(out_json),
                        "--no-progress", "--no-lower")
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert rec["input_shape"] == [64] and rec["best_upper"] == naive_upper(model, 2)
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "estimate", str(tmp_path / "empty"), "--no-progress")
    assert code != 0
    assert_one_line_error(err, "has no config.json")
