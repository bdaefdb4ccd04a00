"""``body_bound_1_inf``: ``lipschitz_bound(body, p=1, q="inf")`` with fewer registry calls, same value.

The slope of a :class:`~lipkit.monotonic.MonotonicNetwork` is derived at every training-mode forward.
For an ``nn.Sequential`` body the registry's chain rule (:func:`lipkit.bounds.registry.chain_bound`) asks
each child for its bound on the 9 norm pairs ``(a, b)``, ``a, b`` in {1, 2, inf}, and every ask resolves
the child's rule again (tamper checks included) and, for a parametrised layer, recomputes its weight.
Here each child is resolved once, by the same :meth:`Facet.resolve <lipkit.bounds.registry.Facet.resolve>`
(so the same checks refuse the same modules), its 9 costs are taken from the same rule through the same
``_apply_rule``, with the parametrised weights computed once (``torch.nn.utils.parametrize.cached``), and
the same dynamic programme over the norms runs with the same float operations in the same order, so the
value is bit-identical (tested on every body of ``tests/test_monotonic*.py``).  Anything outside this
case (a body that is not a plain ``nn.Sequential`` running the registry's own Sequential rule, a global
hook, a child without a rule, a rule's error) falls back to :func:`lipkit.lipschitz_bound` itself, which
then gives its own value or its own error.
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import UnsupportedModuleError, lipschitz_bound, round_up
from lipkit.bounds import registry as _registry
from lipkit.bounds.torch_rules import _sequential_rule

__all__ = ["body_bound_1_inf"]

_NORMS = (1.0, 2.0, math.inf)


def _fast(body: nn.Module) -> float | None:
    if type(body) is not nn.Sequential or len(body) == 0:
        return None
    if _registry.global_hook_problem() is not None:
        return None
    rule, target = _registry.LIPSCHITZ.resolve(body)  # the container's own checks (hooks, ...)
    if target is not body or rule.fn is not _sequential_rule:  # a user's replacement: the registry decides
        return None
    children = list(body)
    shapes: dict = {}
    # chain_bound(children, 1, shapes, inf): free moves up from l_1 reach every norm
    best = {r: 1.0 for r in _NORMS}
    with parametrize.cached():
        for child in children:
            crule, cmod = _registry.LIPSCHITZ.resolve(child)
            step = {r: math.inf for r in _NORMS}
            for a in _NORMS:
                if math.isinf(best[a]):
                    continue
                for b in _NORMS:
                    try:
                        cost = _registry._apply_rule(crule, cmod, a, b, shapes)
                    except UnsupportedModuleError:
                        continue
                    if math.isnan(cost) or cost < 0:
                        return None  # lipschitz_bound raises its ValueError
                    step[b] = min(step[b], best[a] * cost)
            for i, r in enumerate(_NORMS):  # free moves up between children
                step[r] = min(step[s] for s in _NORMS[:i + 1])
            best = step
    if math.isinf(best[math.inf]):
        return None
    return round_up(best[math.inf], len(children) + 1)


def body_bound_1_inf(body: nn.Module) -> float:
    """``lipkit.lipschitz_bound(body, 1, "inf")``: the same float, computed with one rule resolution per
    child of an ``nn.Sequential`` body (module docstring); otherwise by ``lipschitz_bound`` itself."""
    try:
        value = _fast(body)
    except (UnsupportedModuleError, ValueError, TypeError, AttributeError):
        value = None
    if value is None:
        return lipschitz_bound(body, 1, math.inf)
    return value
