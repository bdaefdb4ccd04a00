"""Tests that kill mutants of the soundness-critical code in ``lipkit.bounds`` (issue 17).

Each test asserts against an exact or independently computed value (never the function under test),
so that a mutant that tightens a bound, or lets a tampered module through, fails.  ``make mutate``
(bench/mutation.py) lists the surviving mutants with the reason each survives.
"""

from __future__ import annotations

import math

from lipkit.bounds import EPS64, round_up


def test_round_up_inflates_by_the_documented_relative_slack():
    # 4 n eps64 relative, then one more ulp: strictly above value * (1 + 4 n eps64) for n >= 1
    for n in (1, 3, 100):
        v = 1.0
        assert round_up(v, n) >= v * (1.0 + 4.0 * n * EPS64)
        assert round_up(v, n) > 1.0
    assert round_up(math.inf) == math.inf
    assert round_up(math.nan) == math.inf
