"""Naive upper bound: the product of the layers' Lipschitz bounds.

For ``f = f_L o ... o f_1``, ``Lip(f) <= prod_k Lip(f_k)``.  The per-layer numbers come from
:func:`lipkit.lipschitz_bound`, the single source of truth (operator norms of the actual weights in
float64, rounded up), so this estimate always agrees with certificates built on the same model.
"""

from __future__ import annotations

from torch import nn

from lipkit.bounds import lipschitz_bound, normalize_p

__all__ = ["naive_upper"]


def naive_upper(
    model: nn.Module, p: float | int | str = 2, *, input_shape: tuple[int, ...] | None = None
) -> float:
    """Sound upper bound ``prod_k ||layer_k||`` of the l_p Lipschitz constant of ``model``."""
    return lipschitz_bound(model, normalize_p(p), input_shape=input_shape)
