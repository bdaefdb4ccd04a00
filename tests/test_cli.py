from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error

from lipkit.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_config_key(tmp_path, capsys) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text("dataset: digits\nlearning_rate: 0.1\n")
    code, _, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path))
    assert code != 0
    assert_one_line_error(err, "unknown config key", "learning_rate")


def test_bad_config_values_and_combos(tmp_path, capsys) -> None:
    for text, needle in [("epochs: -3\n", "'epochs'"), ("widths: [255, 256]\n", "multiple of 2"),
                         ("p: inf\n", "l2 only"), ("lr: abc\n", "'lr'"), ("dataset: cifar\n", "'dataset'"),
                         ("[1, 2\n", "cannot parse")]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        code, _, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path))
        assert code != 0, text
        assert_one_line_error(err, needle)
    code, _, err = _run(capsys, "train", "--config", str(tmp_path / "missing.yaml"))
    assert code != 0
    assert_one_line_error(err, "does not exist")
    code, _, err = _run(capsys, "train", "--lr", "-1", "--out", str(tmp_path))
    assert code != 0
    assert_one_line_error(err, "'lr'")


def test_missing_run_folder(tmp_path, capsys) -> None:
    for cmd in ("certify", "report"):
        code, _, err = _run(capsys, cmd, str(tmp_path / "nope"))
        assert code != 0
        assert_one_line_error(err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "certify", str(tmp_path / "empty"))
    assert code != 0
    assert_one_line_error(err, "config.json")


def test_unknown_command_and_option(capsys) -> None:
    code, _, err = _run(capsys, "frobnicate")
    assert code != 0 and "Traceback" not in err and "error:" in err
    code, _, err = _run(capsys, "demo", "--bogus")
    assert code != 0 and "Traceback" not in err and "--bogus" in err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = main(["demo", "--epochs", "1", "--out", str(out), "--no-progress", "--pgd-steps", "10",
                 "--widths", "128,128"])
    return code, out / "demo"


def test_short_demo_writes_all_files(demo_run) -> None:
    code, run = demo_run
    assert code == 0
    for name in ("weights.safetensors", "config.json", "metrics.json", "report.md", "certified_accuracy.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["certified_accuracy"]) == {"0.1", "0.25", "0.5", "0.75", "1"}
    assert m["certificates_broken"] == 0
    assert 0.5 < m["clean_accuracy"] <= 1.0  # one epoch already learns digits
    assert m["lipschitz_bound"] <= 1.0 + 1e-5
    accs = [m["certified_accuracy"][k] for k in ("0.1", "0.25", "0.5", "0.75", "1")]
    assert accs == sorted(accs, reverse=True) and accs[0] <= m["clean_accuracy"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 1 and cfg["dataset"] == "digits"
    assert "certified accuracy" in (run / "report.md").read_text()


def test_certify_command_and_bad_eps(demo_run, capsys) -> None:
    _, run = demo_run
    code, out, err = _run(capsys, "certify", str(run), "--eps", "0.05,0.3", "--pgd-steps", "5")
    assert code == 0, err
    m = json.loads(out)
    assert set(m["certified_accuracy"]) == {"0.05", "0.3"}
    saved = json.loads((run / "metrics.json").read_text())
    assert m["clean_accuracy"] == saved["clean_accuracy"]  # the reloaded weights are the trained ones
    bads = [("abc", "not a number"), ("-0.5", "positive"), ("0,inf", "positive"), (",", "at least")]
    for bad, needle in bads:
        code, _, err = _run(capsys, "certify", str(run), "--eps", bad)
        assert code != 0, bad
        assert_one_line_error(err, needle)
    code, _, err = _run(capsys, "certify", str(run), "--interval", "--pgd-steps", "0")
    assert code != 0
    assert_one_line_error(err, "l_inf runs")


def test_report_command_regenerates(demo_run, capsys) -> None:
    _, run = demo_run
    before = json.loads((run / "metrics.json").read_text())
    (run / "report.md").unlink()
    code, out, _ = _run(capsys, "report", str(run))
    assert code == 0 and (run / "report.md").is_file() and "wrote" in out
    text = (run / "report.md").read_text()
    m = json.loads((run / "metrics.json").read_text())
    # the regenerated figures are the run's: same weights, same seed, same certificates
    for key in ("lipschitz_bound", "clean_accuracy", "certified_accuracy", "certificates_broken"):
        assert m[key] == before[key], key
    # and the report states exactly the figures of metrics.json
    assert f"Lipschitz bound of the exported weights: **{m['lipschitz_bound']:.9f}**." in text
    assert f"Clean accuracy: **{100 * m['clean_accuracy']:.2f}%**" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in m["certified_accuracy"]:
            rows[cells[0]] = cells
    assert set(rows) == set(m["certified_accuracy"]) == {"0.1", "0.25", "0.5", "0.75", "1"}
    for k, cells in rows.items():
        pgd = m.get("pgd", {}).get(k, {})
        assert cells[1] == f"{100 * m['certified_accuracy'][k]:.2f}%", k
        assert cells[2] == str(pgd.get("certified_points", 0)) and cells[3] == str(pgd.get("broken", 0)), k
        rob = pgd.get("pgd_robust_accuracy")
        assert cells[4] == ("" if rob is None else f"{100 * rob:.2f}%"), k
    own = m["pgd_own_radius"]
    assert f"Per-point PGD check: {own['n_certified']} certified points attacked" in text
    assert f"**{own['n_broken']} broken**" in text
    assert sum(int(c[3]) for c in rows.values()) + own["n_broken"] == m["certificates_broken"] == 0
    assert f"test split ({m['n_test']} points" in text


def test_corrupt_checkpoint_isassert_one_line_error(demo_run, capsys) -> None:
    _, run = demo_run
    ck = run / "checkpoints" / "epoch_0001.json"
    ck.write_text("garbage")
    code, _, err = _run(capsys, "demo", "--epochs", "1", "--out", str(run.parent), "--no-progress",
                        "--pgd-steps", "10", "--widths", "128,128")
    assert code != 0
    assert_one_line_error(err, "corrupt")
    assert ck.read_text() == "garbage"  # nothing overwritten


def test_sigterm_during_training_is_one_line_and_resumable(tmp_path) -> None:
    """`kill` (SIGTERM) mid-training: exit code 143, one line, no temporary file left, and the same
    command resumes from the last checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-c", "import sys; from lipkit.cli import main; sys.exit(main())", "train",
           "--dataset", "digits", "--widths", "32,32", "--epochs", "400", "--out", str(tmp_path),
           "--name", "t", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "t" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(ckpt.glob("epoch_*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(ckpt.glob("epoch_*.json")), "no checkpoint within 120 s"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert_one_line_error(err, "terminated", "resume")
    assert not list(ckpt.glob(".*.tmp")), list(ckpt.iterdir())
    from lipkit.training.trainer import latest_checkpoint

    done = latest_checkpoint(tmp_path / "t")
    assert done is not None and 1 <= done < 400
