"""What the digits split itself allows at l2 radius r, independent of any network.

* ``closest_pair``: the smallest l2 distance between two test digits of different classes.  If it is
  below ``2 r``, at most one of the two can be certified at radius ``r`` by any classifier (their
  balls meet); above ``2 r`` the test set rules nothing out.
* ``one_nn``: the 1-nearest-neighbour classifier on the training split, a classifier whose robustness
  is exactly computable.  Its certified radius at ``x`` (predicted class ``c``) is at least
  ``min_b max_a (||x - b||^2 - ||x - a||^2) / (2 ||a - b||)`` over training points ``a`` of class ``c``
  and ``b`` of other classes: the distance from ``x`` to the half-space where ``b`` is closer than ``a``
  (to change the prediction, some ``b`` must become closer than every ``a``).  ``margin_half`` is
  the Lipschitz-style
  ``(||x - b_nearest|| - ||x - a_nearest||) / 2`` for comparison.

``python bench/demo_data.py`` (seconds).  Writes ``bench/results/demo_data.json``.
"""

from __future__ import annotations

import time

import torch
from _common import write_result

from lipkit.training.config import DEMO_CONFIG, RunConfig
from lipkit.training.data import load_dataset

RADII = (0.25, 0.5, 0.75, 1.0)


def main() -> None:
    t_start = time.time()
    cfg = RunConfig.from_dict(DEMO_CONFIG)
    split = load_dataset("digits", test_size=cfg.test_size, seed=cfg.data_seed)
    xtr, ytr = split.x_train.flatten(1).double(), split.y_train
    xte, yte = split.x_test.flatten(1).double(), split.y_test

    d_test = torch.cdist(xte, xte)
    other = yte[:, None] != yte[None, :]
    closest = float(d_test[other].min())

    d = torch.cdist(xte, xtr)
    pred = ytr[d.argmin(1)]
    correct = pred == yte
    same = ytr[None, :] == pred[:, None]
    near_same = d.masked_fill(~same, float("inf")).min(1).values
    near_other = d.masked_fill(same, float("inf")).min(1).values
    half = (near_other - near_same) / 2
    d_train = torch.cdist(xtr, xtr)
    bisector = torch.empty(len(xte), dtype=torch.float64)
    for i in range(len(xte)):
        a = same[i].nonzero().squeeze(1)
        b = (~same[i]).nonzero().squeeze(1)
        gap = d[i, b][None, :] ** 2 - d[i, a][:, None] ** 2  # (a, b)
        bisector[i] = (gap / (2 * d_train[a][:, b])).max(0).values.min()
    out = {
        "dataset": "digits", "test_points": len(yte),
        "closest_pair": closest,
        "closest_pair_over_2": closest / 2,
        "one_nn": {
            "clean": correct.double().mean().item(),
            "certified_bisector": {str(r): (correct & (bisector >= r)).double().mean().item() for r in RADII},
            "certified_margin_half": {str(r): (correct & (half >= r)).double().mean().item() for r in RADII},
        },
    }
    print(out)
    print("wrote", write_result("demo_data", out, time.time() - t_start))


if __name__ == "__main__":
    main()
