"""``lipkit train --recipe monotonic-*``: monotone tabular models through the trainer, run folders, resume,
certify (single-logit radii checked by attacks; regression change bounds), report (partial dependence,
check_monotonic), export hooks, and the errors of the constraint spec and the data packages."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

import lipkit
from lipkit.cli.app import main
from lipkit.monotonic import MonotonicNetwork, check_monotonic
from lipkit.training.config import ConfigError, RunConfig, load_recipe, recipe_names
from lipkit.training.monotonic import resolve_monotonic
from lipkit.training.runs import RunError, load_run
from lipkit.training.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"compas": 2, "heart": 12, "autompg": 12}  # tiny budgets (epochs)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _tiny(tmp: Path, dataset: str, **extra) -> Path:
    cfg = {"epochs": RECIPES[dataset], "pgd_steps": 8, "name": f"m-{dataset}", **extra}
    path = tmp / f"{dataset}.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every recipe trained end-to-end through the CLI on a tiny budget (one folder each)."""
    out = tmp_path_factory.mktemp("mono_runs")
    codes = {}
    for ds in RECIPES:
        codes[ds] = main(["train", "--recipe", f"monotonic-{ds}", "--config", str(_tiny(out, ds)),
                          "--out", str(out), "--no-progress"])
    return out, codes


# --------------------------------------------------------------------------- recipes and config


def test_recipes_follow_the_benchmarks_validation_choice():
    """The recipes use the configuration bench/monotonic.py chose most often on validation, and its
    protocol (optimiser, lr, batch, depth, activation, first layer)."""
    res = json.loads((ROOT / "bench" / "results" / "monotonic.json").read_text())
    proto = res["protocol"]
    for ds in ("compas", "heart", "autompg"):
        assert f"monotonic-{ds}" in recipe_names()
        cfg = load_recipe(f"monotonic-{ds}")
        chosen = Counter(json.dumps(c["config"], sort_keys=True) for c in res[ds]["chosen"]["lipkit"])
        best = json.loads(chosen.most_common(1)[0][0])
        assert cfg.widths == [best["width"]] * proto["depth"] and cfg.lip == best["lip"]
        assert cfg.lr == proto["lr"] and cfg.batch_size == proto["batch"] and cfg.schedule == "constant"
        assert cfg.activation == "groupsort" and cfg.first_layer == "one-inf" and cfg.p == math.inf
        epochs = sorted(c["epoch"] for c in res[ds]["chosen"]["lipkit"])
        assert epochs[0] <= cfg.epochs <= proto["epochs"][ds]  # a fixed epoch from the validation choices
        assert cfg.task == ("regression" if ds == "autompg" else "binary")


@pytest.mark.parametrize("bad, needle", [
    ({"p": 2}, "use p=inf"),
    ({"loss": "hinge"}, "'loss'"),
    ({"task": "regression"}, "binary task"),
    ({"widths": [64, 32]}, "'widths'"),
    ({"activation": "maxmin"}, "GroupSort"),
    ({"lip": 0}, "'lip'"),
    ({"first_layer": "two"}, "'first_layer'"),
    ({"monotonic": [1, 2]}, "-1, 0 or +1"),
    ({"monotonic": {"age": "up"}}, "-1, 0 or +1"),
    ({"monotonic": "age"}, "-1, 0 or +1"),
    ({"dataset": "digits"}, "tabular data set"),
])
def test_bad_monotonic_configs(bad, needle):
    base = load_recipe("monotonic-heart").to_dict()
    base.update(bad)
    with pytest.raises(ConfigError, match=None) as exc:
        RunConfig.from_dict(base)
    assert needle in str(exc.value)


def test_tabular_data_needs_the_monotonic_model():
    with pytest.raises(ConfigError, match="trains with model: monotonic-mlp"):
        RunConfig(dataset="heart", model="lipmlp")
    with pytest.raises(ConfigError, match="'monotonic'"):
        RunConfig(monotonic={"age": 1})


def test_feature_names_positions_and_bad_names():
    split = lipkit.load_dataset("heart", seed=0)
    names = split.feature_names
    assert resolve_monotonic(None, split) == split.monotonic_vector()
    by_name = resolve_monotonic({"age": 1, "max HR": -1}, split)
    by_pos = resolve_monotonic({names.index("age"): 1, str(names.index("max HR")): -1}, split)
    by_str = resolve_monotonic("age=1, max HR=-1", split)
    assert by_name == by_pos == by_str
    assert by_name[names.index("age")] == 1 and by_name[names.index("max HR")] == -1
    assert sum(map(abs, by_name)) == 2
    vec = [0] * len(names)
    vec[3] = -1
    assert resolve_monotonic(vec, split) == vec
    with pytest.raises(ConfigError) as exc:
        resolve_monotonic({"cholestrol": 1}, split)
    msg = str(exc.value)
    assert "'cholestrol'" in msg and "did you mean 'cholesterol'" in msg and "'rest SBP'" in msg
    with pytest.raises(ConfigError, match="outside 0.."):
        resolve_monotonic({99: 1}, split)
    with pytest.raises(ConfigError, match="encoded columns"):
        resolve_monotonic([1, 0], split)
    with pytest.raises(ConfigError, match="no feature"):
        resolve_monotonic([0] * len(names), split)
    # a position spec survives the JSON of config.json unchanged (resume compares configs)
    cfg = load_recipe("monotonic-heart").replace(monotonic={3: 1})
    assert RunConfig.from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()


def test_cli_bad_feature_name_and_missing_package(tmp_path, capsys, monkeypatch):
    code, _, err = _run(capsys, "train", "--recipe", "monotonic-compas", "--monotonic", "priors=1",
                        "--epochs", "1", "--out", str(tmp_path), "--no-progress")
    assert code == 1
    assert_one_line_error(err, "no feature 'priors'", "'priors_count'", "valid names")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "Orange" else real(name, *a, **k))
    code, _, err = _run(capsys, "train", "--recipe", "monotonic-heart", "--epochs", "1", "--out",
                        str(tmp_path), "--no-progress")
    assert code == 1
    assert_one_line_error(err, "pip install --no-deps orange3")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("ds", list(RECIPES))
def test_recipe_end_to_end(runs, ds):
    out, codes = runs
    assert codes[ds] == 0
    run = out / f"m-{ds}"
    for f in ("config.json", "weights.safetensors", "monotonic.json", "metrics.json", "report.md"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    split = lipkit.load_dataset(ds, seed=0)
    assert len(m["history"]) == RECIPES[ds] and m["certificates_broken"] == 0
    assert set(m["monotonic_check"]) == set(split.monotonic)
    report = (run / "report.md").read_text()
    for feat, fname in m["partial_dependence"].items():
        assert (run / fname).stat().st_size > 1000 and f"]({fname})" in report
        assert m["monotonic_check"][feat]["violations"] == 0
        assert m["monotonic_check"][feat]["worst_beyond_roundoff"] == 0.0
    last = m["history"][-1]
    if ds == "autompg":
        assert "train_mse" in last and "train_accuracy" not in last and "val_mse" in last
        assert 0 < m["mse"] == pytest.approx(last["test_mse"], rel=1e-4)
        for e in m["output_change"].values():
            assert 0 < e["pgd_max_change"] <= e["output_change_bound"] and e["broken"] == 0
    else:
        assert 0.5 < m["clean_accuracy"] == pytest.approx(last["test_accuracy"])
        assert (run / "certified_radii.csv").read_text().count("\n") == len(split.y_test) + 1
        assert m["roundoff_rigorous"] is True


@pytest.mark.slow
def test_trained_model_is_monotone_and_certificates_hold(runs, capsys):
    """Reload the heart run: check_monotonic finds nothing; the certified l_inf radius of every record
    survives sampled vertices of the ball and a sign-gradient attack, and 3x the radius can be broken."""
    out, _ = runs
    run = out / "m-heart"
    cfg, model, split = load_run(run)
    assert isinstance(model, MonotonicNetwork) and model.frozen
    res = check_monotonic(model, split.x_test)
    assert res.violations == 0 and res.worst_beyond_roundoff == 0.0
    code, stdout, _ = _run(capsys, "certify", str(run), "--pgd-steps", "20")
    assert code == 0
    c = json.loads(stdout)
    lip = lipkit.lipschitz_bound(model, "inf")
    assert c["lipschitz_bound"] == lip and lip > model.slope() * (1 + sum(split.monotonic.values()) - 1)
    radius = torch.tensor(c["radius_per_record"], dtype=torch.float64)
    pred = torch.tensor(c["prediction"])
    assert torch.equal(pred, (model(split.x_test)[:, 0] > 0).long()) and (radius > 0).sum() > 10
    x = split.x_test
    gen = torch.Generator().manual_seed(0)
    flips_in, flips_out = 0, 0
    for scale, counter in ((0.999, "in"), (3.0, "out")):
        rho = (radius * scale).float()[:, None]
        s = (1 - 2 * pred).float()
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((s * model(xg)[:, 0]).sum(), xg)
        cands = [x + rho * g.sign()] + [x + rho * (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1)
                                        for _ in range(64)]
        with torch.no_grad():
            flipped = torch.stack([(model(z)[:, 0] > 0).long() != pred for z in cands]).any(0)
        flipped &= radius > 0
        if counter == "in":
            flips_in = int(flipped.sum())
        else:
            flips_out = int(flipped.sum())
    assert flips_in == 0
    assert flips_out > 0  # the attack has teeth


@pytest.mark.slow
def test_report_command_rewrites_the_report(runs, capsys):
    out, _ = runs
    run = out / "m-compas"
    before = json.loads((run / "metrics.json").read_text())
    for f in before["partial_dependence"].values():
        (run / f).unlink()
    (run / "report.md").unlink()
    code, stdout, err = _run(capsys, "report", str(run))
    assert code == 0, err
    after = json.loads((run / "metrics.json").read_text())
    assert after["history"] == before["history"] and after["train_seconds"] == before["train_seconds"]
    assert after["clean_accuracy"] == before["clean_accuracy"]
    assert after["lipschitz_bound"] == before["lipschitz_bound"]
    for f in after["partial_dependence"].values():
        assert (run / f).is_file()
    assert "priors_count" in (run / "report.md").read_text() and "wrote" in stdout


@pytest.mark.slow
def test_regression_pd_is_decreasing_and_certify_reports_change_bounds(runs, capsys):
    from lipkit.training.monotonic import partial_dependence

    out, _ = runs
    cfg, model, split = load_run(out / "m-autompg")
    for feat in ("weight", "displacement", "horsepower"):
        pd = torch.tensor(partial_dependence(model, split, feat)["pd"])
        assert (pd[1:] <= pd[:-1] + 1e-9).all()
    code, stdout, _ = _run(capsys, "certify", str(out / "m-autompg"), "--eps", "0.1", "--pgd-steps", "10")
    assert code == 0
    c = json.loads(stdout)
    side = json.loads((out / "m-autompg" / "monotonic.json").read_text())
    e = c["output_change"]["0.1"]
    assert e["output_change_bound"] == pytest.approx(side["target_std"] * c["lipschitz_bound"] * 0.1)
    assert e["pgd_max_change"] <= e["output_change_bound"]


# --------------------------------------------------------------------------- resume and export


def test_resume_continues_and_is_reproducible(tmp_path):
    cfg = load_recipe("monotonic-heart").replace(epochs=4, threads=1)
    a, ha = fit(cfg, tmp_path / "a", progress=False)
    fit(cfg, tmp_path / "b", progress=False, stop_after=2)
    b, hb = fit(cfg, tmp_path / "b", progress=False)
    assert hb["resumed_from"] == 2 and len(hb["history"]) == 4
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ha["history"][-1]["val_accuracy"] == hb["history"][-1]["val_accuracy"]
    x = lipkit.load_dataset("heart", seed=0).x_test
    assert torch.equal(a(x), b(x))


def test_export_path_rechecks_monotonicity(tmp_path, capsys, monkeypatch):
    """The pipeline's export calls the wrapper's check on the exported copy; a failing check stops the run
    with one line; a run folder whose saved lam is below the body's bound is refused."""
    import lipkit.monotonic.check as check_module

    calls = []
    real = check_module.check_monotonic

    def spy(model, x=None, *args, **kw):  # the check lipkit_export_check runs (the registry refuses a
        calls.append((type(model).__name__, model.frozen, None if x is None else tuple(x.shape)))
        return real(model, x, *args, **kw)  # monkeypatched method of the registered class itself)

    monkeypatch.setattr(check_module, "check_monotonic", spy)
    cfg = _tiny(tmp_path, "heart", epochs=2, pgd_steps=0)
    code, _, err = _run(capsys, "train", "--recipe", "monotonic-heart", "--config", str(cfg), "--out",
                        str(tmp_path), "--no-progress")
    assert code == 0, err
    split = lipkit.load_dataset("heart", seed=0)
    export_calls = [c for c in calls if c[2] in (None, tuple(split.x_val.shape))]
    # on the exported (frozen) copy: once on the validation rows, once on sampled points
    assert export_calls[:2] == [("MonotonicMLP", True, tuple(split.x_val.shape)),
                                ("MonotonicMLP", True, None)]

    def failing(model, x=None, *args, **kw):
        res = real(model, x, *args, **kw)
        res.violations, res.per_feature_violations = 1, {"cholesterol": 1}
        return res

    monkeypatch.setattr(check_module, "check_monotonic", failing)
    code, _, err = _run(capsys, "train", "--recipe", "monotonic-heart", "--config", str(cfg), "--out",
                        str(tmp_path), "--no-progress", "--name", "m-heart-2")
    assert code == 1
    assert_one_line_error(err, "failed its check after export", "cholesterol")
    monkeypatch.setattr(check_module, "check_monotonic", real)

    side = tmp_path / "m-heart" / "monotonic.json"
    data = json.loads(side.read_text())
    good = dict(data)
    data["feature_names"] = data["feature_names"][::-1]
    side.write_text(json.dumps(data))
    with pytest.raises(RunError, match="encoded columns"):
        load_run(tmp_path / "m-heart")
    data = dict(good)
    data["lam"] = float(torch.tensor(data["body_bound_1_inf"] / 2, dtype=torch.float32))
    side.write_text(json.dumps(data))
    with pytest.raises(RunError, match="below the body's"):
        load_run(tmp_path / "m-heart")
    code, _, err = _run(capsys, "certify", str(tmp_path / "m-heart"))
    assert code == 1
    assert_one_line_error(err, "below the body's")
    code, _, err = _run(capsys, "estimate", str(tmp_path / "m-heart"))
    assert code == 1 and "monotonic run" in err


def test_freeze_with_a_given_lam():
    split = lipkit.load_dataset("heart", seed=0)
    from lipkit.monotonic import MonotonicMLP

    m = MonotonicMLP(split.num_features, 8, 1, monotonic=split.monotonic_vector()).eval()
    bound = lipkit.lipschitz_bound(m.body, 1, "inf")
    with pytest.raises(ValueError, match="below the body's"):
        m.freeze(float(torch.tensor(bound / 2, dtype=torch.float32)))
    assert not m.frozen
    with pytest.raises(ValueError, match="float32"):
        m.freeze(0.1)  # not a float32 number
    m.freeze(2.0)
    assert m.frozen and m.slope() == 2.0
