"""``MonotonicMLP``: the recommended monotone stack, ready to use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lipkit.monotonic.network import MonotonicNetwork
from lipkit.nn import GroupSort, LinearSpline, LipLinear

__all__ = ["MonotonicMLP", "ACTIVATIONS", "FIRST_LAYER_CONSTRAINTS"]

ACTIVATIONS = ("groupsort", "relu", "spline")
FIRST_LAYER_CONSTRAINTS = ("one-inf", "two-inf", "inf")


def _activation(name: str, width: int) -> nn.Module:
    if name == "groupsort":
        return GroupSort(2)
    if name == "relu":
        return nn.ReLU()
    return LinearSpline(width)


class MonotonicMLP(MonotonicNetwork):
    """A :class:`MonotonicNetwork` whose body is a constrained MLP with l_1 -> l_inf constant at most ``lip``.

    Body: ``LipLinear(in, hidden, constraint=first_layer, lip=lip)``, then ``depth - 1`` blocks
    ``activation, LipLinear(hidden, hidden, constraint="inf")`` and ``activation, LipLinear(hidden, out,
    constraint="inf")``.  The first layer maps l_1 to l_inf with constant ``max_ij |W_ij| <= lip``
    (``"one-inf"``; ``"two-inf"`` and ``"inf"`` bound the rows' l_2 / l_1 norms, which also bound the
    l_1 -> l_inf constant, more tightly constrained); the later layers are l_inf -> l_inf contractions
    (rows of l_1 norm <= 1) and the activations are 1-Lipschitz in every norm, so the composition's
    partials are bounded by ``lip`` (Kitouni, Nolte and Williams 2023 use the same split).  The slope
    ``lam`` is still derived from the actual weights at every forward (``lam >= lip`` with ``lip`` as floor).

    The defaults (GroupSort, ``"one-inf"``) are the ones that did best on COMPAS, Heart and Auto MPG in
    ``bench/monotonic.py`` (see docs/monotonic.md).

    Args:
        in_features: number of inputs.
        hidden: width of the hidden layers (even for GroupSort).
        depth: number of hidden layers (>= 1).
        monotonic, feature_names: see :class:`MonotonicNetwork`.
        lip: bound of the body's partial derivatives, and the floor of ``lam``.
        out_features: number of outputs (1 for a binary logit or a regression).
        activation: ``"groupsort"`` (GroupSort of size 2), ``"relu"`` or ``"spline"`` (LinearSpline).
        first_layer: ``"one-inf"``, ``"two-inf"`` or ``"inf"``.
        floor: use ``lip`` as the floor of ``lam`` (``lam = max(lip, L (1 + 2^-10))``); with ``False``,
            ``lam = L (1 + 2^-10)`` tracks the body, so the smallest slope forced on a monotone input,
            ``lam - L``, is ``2^-10 L`` instead of ``lip - L``.
    """

    def __init__(self, in_features: int, hidden: int = 64, depth: int = 2, *, monotonic: Any,
                 lip: float = 1.0, out_features: int = 1, feature_names: Sequence[str] | None = None,
                 activation: str = "groupsort", first_layer: str = "one-inf", floor: bool = True) -> None:
        for name, value in (("in_features", in_features), ("hidden", hidden), ("depth", depth),
                            ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MonotonicMLP: {name} must be an int >= 1, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MonotonicMLP: unknown activation {activation!r}; choose one of "
                             f"{list(ACTIVATIONS)}")
        if first_layer not in FIRST_LAYER_CONSTRAINTS:
            raise ValueError(f"MonotonicMLP: unknown first_layer {first_layer!r}; choose one of "
                             f"{list(FIRST_LAYER_CONSTRAINTS)}")
        if activation == "groupsort" and hidden % 2:
            raise ValueError(f"MonotonicMLP: GroupSort needs an even hidden width, got {hidden}")
        layers: list[nn.Module] = [LipLinear(in_features, hidden, constraint=first_layer, lip=lip)]
        for i in range(depth):
            last = i == depth - 1
            layers += [_activation(activation, hidden),
                       LipLinear(hidden, out_features if last else hidden, constraint="inf", lip=1.0)]
        super().__init__(nn.Sequential(*layers), monotonic, feature_names=feature_names,
                         lip=lip if floor else None, in_features=in_features)
        self.activation = activation
        self.first_layer = first_layer
