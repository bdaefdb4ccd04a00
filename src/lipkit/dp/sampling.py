"""Batch sampling for DP-SGD: real Poisson sampling (amplified accounting) or shuffled fixed batches (not).

* ``"poisson"``: at every step each of the ``N`` examples enters the batch independently with probability
  ``q`` (so the batch size is Binomial(N, q), possibly 0).  This is the sampling the accountants'
  subsampled-Gaussian analysis assumes (Abadi et al. 2016; Mironov, Talwar & Zhang 2019), under the
  add/remove-one neighbouring relation.  One epoch is ``round(1 / q)`` steps.
* ``"shuffle"``: a random permutation split into fixed-size batches.  No maintained accountant covers the
  amplification of shuffling, so lipkit accounts it WITHOUT amplification: under replace-one neighbours
  (same ``N``, one example changed) each example is in exactly one batch per epoch, so an epoch is one
  Gaussian mechanism of sensitivity ``2 S`` (parallel composition over the disjoint batches) and ``E``
  epochs compose ``E`` of them (sample rate 1).  Results trained this way are labelled so.

Large logical batches are split into physical chunks of at most ``max_physical_batch_size`` examples; the
optimiser accumulates their gradients and takes one noisy step per logical batch.

Randomness: a seeded ``torch.Generator`` (reproducible), or, in secure mode, uniforms drawn from
``os.urandom`` (the operating system's cryptographically secure generator).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["PrivateLoader", "poisson_indices", "secure_uniform", "SAMPLINGS"]

SAMPLINGS = ("poisson", "shuffle")


def secure_uniform(n: int) -> torch.Tensor:
    """``n`` float64 uniforms in (0, 1) from ``os.urandom`` (53 random bits each)."""
    raw = torch.frombuffer(bytearray(os.urandom(8 * max(n, 1))), dtype=torch.int64)[:n]
    bits = (raw >> 11) & ((1 << 53) - 1)  # 53 uniform bits
    return (bits.to(torch.float64) + 0.5) * 2.0**-53


def poisson_indices(n: int, sample_rate: float, generator: torch.Generator | None,
                    secure_mode: bool = False) -> torch.Tensor:
    """One Poisson sample of ``range(n)``: each index independently with probability ``sample_rate``
    (uniforms from ``generator``, or from ``os.urandom`` in secure mode)."""
    u = secure_uniform(n) if secure_mode else torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.nonzero(u < sample_rate).flatten()


class PrivateLoader:
    """Iterate over ``dataset`` in private batches (see the module docstring).

    Args:
        dataset: a map-style dataset of ``(x, y)`` pairs, or a tuple of tensors ``(X, Y)``.
        expected_batch_size: ``q N`` for Poisson (``q = that / N``); the batch size for shuffle.
        sampling: ``"poisson"`` or ``"shuffle"``.
        max_physical_batch_size: split logical batches into chunks of at most this size (None: no split).
        generator: seeded generator (ignored in secure mode).
        secure_mode: draw the sampling randomness from ``os.urandom``.
    """

    def __init__(
        self,
        dataset: Any,
        expected_batch_size: int,
        *,
        sampling: str = "poisson",
        max_physical_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; valid: {list(SAMPLINGS)}")
        if (
            isinstance(dataset, (tuple, list))
            and len(dataset) == 2
            and all(isinstance(t, torch.Tensor) for t in dataset)
        ):
            if dataset[0].shape[0] != dataset[1].shape[0]:
                raise ValueError(
                    f"X and Y have different lengths: {dataset[0].shape[0]} and {dataset[1].shape[0]}"
                )
            self.tensors: tuple[torch.Tensor, torch.Tensor] | None = (dataset[0], dataset[1])
            self.dataset: Any = None
            n = dataset[0].shape[0]
        elif isinstance(dataset, Dataset) or hasattr(dataset, "__getitem__"):
            self.tensors = None
            self.dataset = dataset
            n = len(dataset)
        else:
            raise TypeError(
                f"data must be a Dataset, a DataLoader or a tuple (X, Y) of tensors, got "
                f"{type(dataset).__name__}"
            )
        if n == 0:
            raise ValueError("the training set is empty")
        if (
            isinstance(expected_batch_size, bool)
            or not isinstance(expected_batch_size, int)
            or not 1 <= expected_batch_size <= n
        ):
            raise ValueError(f"batch size must be an int in [1, {n}], got {expected_batch_size!r}")
        if max_physical_batch_size is not None and (
            not isinstance(max_physical_batch_size, int) or max_physical_batch_size < 1
        ):
            raise ValueError(f"max_physical_batch_size must be an int >= 1, got {max_physical_batch_size!r}")
        self.n = n
        self.sampling = sampling
        self.expected_batch_size = expected_batch_size
        self.sample_rate = expected_batch_size / n
        self.max_physical_batch_size = max_physical_batch_size
        self.generator = (
            generator
            if generator is not None
            else torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        )
        self.secure_mode = bool(secure_mode)
        self.steps_per_epoch = (
            max(1, round(1.0 / self.sample_rate))
            if sampling == "poisson"
            else math.ceil(n / expected_batch_size)
        )
        self.optimizer: Any = None  # set by make_private: told which chunk ends a logical batch
        self.last_batch_sizes: list[int] = []

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _uniform(self, n: int) -> torch.Tensor:
        if self.secure_mode:
            return secure_uniform(n)
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def logical_batches(self) -> Iterator[torch.Tensor]:
        """The index sets of one epoch's logical batches."""
        if self.sampling == "poisson":
            for _ in range(self.steps_per_epoch):
                yield poisson_indices(self.n, self.sample_rate, self.generator, self.secure_mode)
        else:
            perm = torch.argsort(self._uniform(self.n))
            for start in range(0, self.n, self.expected_batch_size):
                yield perm[start : start + self.expected_batch_size]

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensors is not None:
            return self.tensors[0][idx], self.tensors[1][idx]
        if idx.numel() == 0:
            x0, y0 = default_collate([self.dataset[0]])
            return x0[:0], y0[:0]
        return default_collate([self.dataset[int(i)] for i in idx])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.last_batch_sizes = []
        for idx in self.logical_batches():
            self.last_batch_sizes.append(int(idx.numel()))
            size = self.max_physical_batch_size or max(int(idx.numel()), 1)
            chunks = list(idx.split(size)) if idx.numel() else [idx]
            for k, chunk in enumerate(chunks):
                if self.optimizer is not None:
                    self.optimizer.signal_chunk(last=k == len(chunks) - 1)
                yield self._fetch(chunk)
