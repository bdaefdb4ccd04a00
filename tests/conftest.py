"""Shared test helpers and fixtures (one copy of each), and the ``slow`` marker.

``pytest -m "not slow"`` skips the slow tests for a quick local run; CI (``make test``) runs every test.
Helpers are plain functions (``from conftest import lipschitz_ratio``) so that tests can call them with
arguments; fixtures are declared below them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch


def lipschitz_ratio(f, x: torch.Tensor, y: torch.Tensor, p: float) -> float:
    """Largest ``||f(x_i) - f(y_i)||_p / ||x_i - y_i||_p`` over the pairs (float64 norms, no grad)."""
    with torch.no_grad():
        num = torch.linalg.vector_norm((f(x) - f(y)).double().flatten(1), ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y).double().flatten(1), ord=p, dim=1)
    return (num / den).max().item()


def sample_pairs(shape: tuple[int, ...], count: int = 400, seed: int = 0, *, scale: float = 1.0,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs to attack a Lipschitz bound with: ``count`` each of far pairs, close pairs (a random fraction of
    the scale apart) and pairs that differ in one coordinate only (where order statistics change)."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(count, *shape, generator=g, dtype=dtype)
    far = scale * torch.randn(count, *shape, generator=g, dtype=dtype)
    near = torch.rand(count, *([1] * len(shape)), generator=g, dtype=dtype)
    close = x + near * torch.randn(count, *shape, generator=g, dtype=dtype)
    single = x.clone().reshape(count, -1)
    idx = torch.randint(0, single.shape[1], (count,), generator=g)
    single[torch.arange(count), idx] += scale * torch.randn(count, generator=g, dtype=dtype)
    return torch.cat([x, x, x]), torch.cat([far, close, single.reshape_as(x)])


def assert_one_line_error(err: str, *needles: str) -> None:
    """A CLI failure: exactly one line, ``error: ...``, no traceback, containing every needle."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def digits_subset(n_train: int, n_test: int):
    """The first ``n_train`` training and ``n_test`` test digits of the bundled split."""
    from lipkit.training.data import load_digits_split

    s = load_digits_split()
    return dataclasses.replace(s, x_train=s.x_train[:n_train], y_train=s.y_train[:n_train],
                               x_test=s.x_test[:n_test], y_test=s.y_test[:n_test])


def quick_config(**kw):
    """A small, single-threaded, seeded ``RunConfig`` for training tests; ``kw`` overrides any key."""
    from lipkit.training.config import RunConfig

    base = dict(name="t", widths=[32, 32], epochs=3, batch_size=64, lr=1e-2, threads=1, seed=3)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="session")
def small_split():
    """320 training and 96 test digits (the bundled data set), for quick training tests."""
    return digits_subset(320, 96)
