"""Provably monotonic networks (Kitouni, Nolte and Williams 2023): ``f(x) = g(x) + lam * x C``.

Owns :mod:`.network` (:class:`MonotonicNetwork`: the slope ``lam`` derived from the body's l_1 -> l_inf
bound of its current weights, the wrapper's own registered Lipschitz rule), :mod:`.mlp`
(:class:`MonotonicMLP`, the recommended stack), :mod:`.fastbound` (the body's l_1 -> l_inf bound with fewer
registry calls, the same value) and :mod:`.check` (:func:`check_monotonic`, the empirical
test by finite differences and gradients).  Reads bounds only through :func:`lipkit.lipschitz_bound`.
"""

from lipkit.monotonic.check import MonotonicCheck, check_monotonic
from lipkit.monotonic.mlp import ACTIVATIONS, FIRST_LAYER_CONSTRAINTS, MonotonicMLP
from lipkit.monotonic.network import ROUNDOFF_MARGIN, MonotonicNetwork, parse_monotonic

__all__ = ["ACTIVATIONS", "FIRST_LAYER_CONSTRAINTS", "MonotonicCheck", "MonotonicMLP", "MonotonicNetwork",
           "ROUNDOFF_MARGIN", "check_monotonic", "parse_monotonic"]
