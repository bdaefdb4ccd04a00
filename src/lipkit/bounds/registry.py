"""Per-layer facet registries, and the one source of truth for Lipschitz constants.

A *facet* is one property that each layer type answers for itself, next to its own code, the way
opacus keeps a per-layer registry of gradient samplers: the Lipschitz bound (this module's
:data:`LIPSCHITZ`, read by :func:`lipschitz_bound`), the per-example gradient sensitivity of the
layer's tensors (:mod:`lipkit.bounds.sensitivity`), and the forward round-off and interval rules of
:mod:`lipkit.certify`.

A rule is only applied to a module that really computes what the rule was written for.  For a
module ``m`` whose class (after stripping the class that ``torch.nn.utils.parametrize`` generates)
is ``C``, :meth:`Facet.resolve` refuses with :class:`UnsupportedModuleError`, naming the module and
the reason, whenever

* no class of ``C.__mro__`` has a rule, or the closest one does not extend to subclasses (rules opt
  in with ``subclasses=True``);
* ``C`` is a subclass that overrides anything the registered class has (``forward``, ``__call__``,
  ``__iter__``, ``_conv_forward``, ``__getattr__``, ...) except a few members that cannot change
  what the module computes (``__init__``, ``extra_repr``, ``reset_parameters``, ``__repr__``);
* a method of the registered class or of ``nn.Module`` was replaced after the rule was registered
  (monkeypatching), or an instance attribute shadows a method (``m.forward = ...``);
* the module has forward or forward-pre hooks (``torch.nn.utils.spectral_norm``, ``weight_norm`` and
  ``prune`` work that way: the ``weight`` a rule reads can be stale), or global module hooks are
  installed; a hook that only observes can be marked with :func:`observer_hook`;
* a parameter or buffer is a tensor subclass (quantised or lazy tensors compute something else).

Batch-mixing modules in training mode (batch normalisation, mean shift) are refused by their own
rules.  Wrappers that do not change the per-example function (``torch.compile``'s
``OptimizedModule``, ``DataParallel``, ``DistributedDataParallel``) are answered by their wrapped
module.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds.numerics import norm_order, normalize_p, round_up

__all__ = [
    "Facet",
    "LIPSCHITZ",
    "UnsupportedModuleError",
    "child_bound",
    "computes_as",
    "lipschitz_bound",
    "observer_hook",
    "record_input_shapes",
    "register_bound",
    "unwrap",
]


class UnsupportedModuleError(TypeError):
    """No sound rule applies to a module (the message names the module and the reason).

    ``module`` is the offending module when known; :func:`lipschitz_bound` prefixes the message with its
    position in the tree (``model.3.f: ...``).
    """

    def __init__(self, message: str, module: nn.Module | None = None) -> None:
        super().__init__(message)
        self.module = module


def locate(error: UnsupportedModuleError, root: nn.Module,
           root_name: str = "model") -> UnsupportedModuleError:
    """``error`` with the offending module's position under ``root`` in front of its message."""
    target = getattr(error, "module", None)
    if target is None or target is root or str(error).startswith(root_name):
        return error
    for name, sub in root.named_modules(remove_duplicate=False):
        if sub is target:
            located = UnsupportedModuleError(f"{root_name}.{name}: {error}", target)
            return located
    return error


#: members a subclass may define without changing what its registered base class computes
HARMLESS_MEMBERS = frozenset({
    "__init__", "extra_repr", "reset_parameters", "__repr__", "__str__", "__module__", "__qualname__",
    "__doc__", "__dict__", "__weakref__", "__annotations__", "__firstlineno__", "__static_attributes__",
    "__slotnames__", "__parameters__", "__orig_bases__", "__annotate__", "__annotations_cache__",
})
#: what ``torch.nn.utils.parametrize`` puts in the class it generates, besides one property per tensor
_PARAMETRIZE_MEMBERS = frozenset({"__getstate__", "__deepcopy__", "__module__", "__doc__", "__qualname__",
                                  "__slotnames__"})
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)
_OBSERVER = "__lipkit_observer__"


def observer_hook(hook: Callable) -> Callable:
    """Mark a forward (pre-)hook as one that neither replaces nor modifies the module's input or output.

    Registries refuse modules with hooks, since a hook can change what the module computes; a hook marked
    with this decorator (logging, shape recording, input validation) is let through.  The mark is your
    statement about the hook: it is not checked.
    """
    setattr(hook, _OBSERVER, True)
    return hook


def _is_descriptor(value: object) -> bool:
    return callable(value) or hasattr(type(value), "__get__")


def _class_members(cls: type) -> dict[str, object]:
    return {k: v for k, v in vars(cls).items() if _is_descriptor(v) and k != "__slotnames__"}


#: snapshot, per class, of its methods and descriptors when a rule that relies on it was registered
_SNAPSHOTS: dict[type, dict[str, object]] = {}


def _snapshot(cls: type) -> None:
    for c in cls.__mro__[:-1]:  # not object
        if c not in _SNAPSHOTS:  # (setdefault would compute the members every time)
            _SNAPSHOTS[c] = _class_members(c)


@dataclass(frozen=True)
class Rule:
    """A registered rule: ``fn``, written for instances of ``cls`` (and subclasses if ``subclasses``)."""

    fn: Callable[..., Any]
    cls: type
    subclasses: bool
    options: dict[str, Any] = field(default_factory=dict)
    overridable: frozenset[str] = frozenset()


def _describe(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _base_class(module: nn.Module) -> type:
    """The class whose code ``module`` runs, seen through ``torch.nn.utils.parametrize``'s generated class."""
    cls = type(module)
    if not parametrize.is_parametrized(module):
        return cls
    names = set(module.parametrizations.keys())
    extra = [k for k in vars(cls) if k not in _PARAMETRIZE_MEMBERS and k not in names]
    bad_props = [k for k in names if not isinstance(vars(cls).get(k), property)]
    if len(cls.__bases__) != 1 or extra or bad_props:
        raise UnsupportedModuleError(
            f"{_describe(module)}: a parametrised module whose class defines {sorted(extra + bad_props)} "
            "beyond what torch.nn.utils.parametrize generates; register a rule for it"
        )
    return cls.__bases__[0]


def _hook_problem(hook: Callable, kind: str) -> str | None:
    if getattr(hook, _OBSERVER, False):
        return None
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, SpectralNorm):
        return ("it uses the hook-based torch.nn.utils.spectral_norm, which recomputes `weight` in a forward "
                "pre-hook (the stored weight may be stale); use "
                "torch.nn.utils.parametrizations.spectral_norm")
    if isinstance(hook, WeightNorm):
        return ("it uses the hook-based torch.nn.utils.weight_norm, which recomputes `weight` in a forward "
                "pre-hook; use torch.nn.utils.parametrizations.weight_norm")
    if isinstance(hook, prune.BasePruningMethod):
        return ("it is pruned with torch.nn.utils.prune, which recomputes the weight in a forward pre-hook; "
                "call torch.nn.utils.prune.remove first")
    name = getattr(hook, "__qualname__", type(hook).__qualname__)
    return (f"it has a {kind} ({name}) that may change its input or output; remove it, or mark it with "
            "lipkit.observer_hook if it only observes")


def _forward_hook_problem(module: nn.Module) -> str | None:
    """Why a forward (pre-)hook of ``module`` may change what it computes (None: no such hook)."""
    for kind, hooks in (("forward pre-hook", module._forward_pre_hooks),
                        ("forward hook", module._forward_hooks)):
        for hook in hooks.values():
            problem = _hook_problem(hook, kind)
            if problem is not None:
                return problem
    return None


def global_hook_problem() -> str | None:
    """Why global module hooks (``torch.nn.modules.module.register_module_forward_hook``) forbid any bound."""
    from torch.nn.modules import module as torch_module

    for kind, hooks in (("global forward pre-hook", torch_module._global_forward_pre_hooks),
                        ("global forward hook", torch_module._global_forward_hooks)):
        for hook in hooks.values():
            problem = _hook_problem(hook, kind)
            if problem is not None:
                return problem.replace("it has", "torch has").replace("its input", "every module's input")
    return None


#: per-class results of the monkeypatching check while :func:`memoized_class_checks` is active
_PATCH_MEMO: dict[type, str | None] | None = None


def _patch_problem(c: type) -> str | None:
    """Why class ``c`` was patched after a rule relying on it was registered (None: it was not)."""
    if _PATCH_MEMO is not None and c in _PATCH_MEMO:
        return _PATCH_MEMO[c]
    snap = _SNAPSHOTS.get(c)
    problem = None
    if snap is not None:
        now = _class_members(c)
        # (torch.compile wraps Module.__init__ / __setstate__ to tag new modules: harmless members)
        changed = sorted(k for k in now.keys() | snap.keys()
                         if now.get(k) is not snap.get(k)
                         and k not in HARMLESS_MEMBERS and k != "__setstate__")
        if changed:
            problem = (f"{c.__qualname__}.{', '.join(changed)} was replaced after lipkit registered its rule "
                       "(monkeypatching)")
    if _PATCH_MEMO is not None and snap is not None:
        _PATCH_MEMO[c] = problem
    return problem


@contextlib.contextmanager
def memoized_class_checks() -> Iterator[None]:
    """Within the block, check each class for monkeypatching once (for analyses that inspect many modules
    of the same classes in one go, e.g. the per-step sensitivity of :mod:`lipkit.dp`; classes must not be
    patched inside the block).  Instance-level checks (hooks, attributes, tensors) still run every time."""
    global _PATCH_MEMO
    if _PATCH_MEMO is not None:  # nested: the outer block's memo serves
        yield
        return
    _PATCH_MEMO = {}
    try:
        yield
    finally:
        _PATCH_MEMO = None


def module_problem(module: nn.Module, registered: type, overridable: frozenset[str] = frozenset(),
                   gradients: bool = False) -> str | None:
    """Why ``module`` may not compute what a rule written for ``registered`` assumes (None: it does).

    ``overridable``: members the rule itself evaluates on the module (so that an override is seen by the
    forward pass and by the rule alike), which a subclass may therefore override.  ``gradients``: the rule
    bounds gradients too (the sensitivity facet), so backward hooks of the module and gradient hooks of its
    tensors, which can rescale what the optimiser receives, are refused as well.
    """
    base = _base_class(module)
    # 1. the class code: subclasses must not override what the registered class has
    for c in base.__mro__:
        if c in registered.__mro__:
            continue
        for name in vars(c):
            if (name not in HARMLESS_MEMBERS and name not in overridable and hasattr(registered, name)
                    and _is_descriptor(vars(c)[name])):
                return (f"its class {c.__qualname__} overrides {registered.__qualname__}.{name}, so it may "
                        f"not compute what the rule for {registered.__qualname__} assumes")
    # 2. the registered class and its bases were not patched after registration
    for c in registered.__mro__[:-1]:
        problem = _patch_problem(c)
        if problem is not None:
            return problem
    # 3. instance attributes that shadow methods
    for name in vars(module):
        attr = getattr(type(module), name, None)
        if attr is not None and _is_descriptor(attr) and not isinstance(attr, property):
            return f"the instance attribute {name!r} replaces the method of its class"
    # 4. hooks
    problem = _forward_hook_problem(module)
    if problem is not None:
        return problem
    if gradients:
        for kind, hooks in (("backward pre-hook", module._backward_pre_hooks),
                            ("backward hook", module._backward_hooks)):
            if hooks:
                return f"it has a {kind}, which may change the gradients its rule bounds"
        for name, t in module._parameters.items():
            if t is not None and (getattr(t, "_backward_hooks", None)
                                  or getattr(t, "_post_accumulate_grad_hooks", None)):
                return (f"its parameter {name!r} has a gradient hook, which may change the gradient its rule "
                        "bounds")
    # 5. tensors of the module itself
    for kind, tensors in (("parameter", module._parameters), ("buffer", module._buffers)):
        for name, t in tensors.items():
            if t is not None and type(t) not in _PLAIN_TENSORS:
                return f"its {kind} {name!r} is a {type(t).__qualname__}, not a plain tensor"
    return None


def computes_as(module: nn.Module, classes: tuple[type, ...], *, subclasses: bool = False) -> bool:
    """Whether ``module`` runs exactly the code of one of ``classes``.

    Its class (seen through ``torch.nn.utils.parametrize``'s generated class) must be one of ``classes``
    (or, with ``subclasses=True``, a subclass that overrides nothing of it but harmless members), and
    :func:`module_problem` must find nothing (no hook, no patched method, no shadowing attribute).  Analyses
    written for a class (round-off, interval propagation) use this instead of ``isinstance``.
    """
    try:
        base = _base_class(module)
    except UnsupportedModuleError:
        return False
    for cls in classes:
        if base is cls or (subclasses and issubclass(base, cls)):
            _snapshot(cls)
            return module_problem(module, cls) is None
    return False


def unwrap(module: nn.Module) -> nn.Module:
    """The innermost module of wrappers that do not change the per-example function (``torch.compile``,
    ``DataParallel``, ``DistributedDataParallel``); ``module`` itself if it is none of them."""
    inner = _wrapped(module)
    return module if inner is None else unwrap(inner)


def _wrapped(module: nn.Module) -> nn.Module | None:
    """The module inside a wrapper that leaves the per-example function unchanged, else None."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    compiled = getattr(dynamo, "OptimizedModule", None) if dynamo is not None else None
    wrappers: tuple[tuple[type, str], ...] = ((nn.DataParallel, "module"),)
    if compiled is not None:
        wrappers += ((compiled, "_orig_mod"),)
    ddp = sys.modules.get("torch.nn.parallel.distributed")
    if ddp is not None:
        wrappers += ((ddp.DistributedDataParallel, "module"),)
    for cls, attr in wrappers:
        if type(module) is cls:
            problem = _forward_hook_problem(module)
            if problem is not None:
                raise UnsupportedModuleError(f"{_describe(module)}: {problem}")
            return getattr(module, attr)
    return None


class Facet:
    """A registry of per-layer rules for one property (one facet) of modules.

    Layers register their rules next to their code with :meth:`register`; :meth:`resolve` finds the rule
    for a module and checks that the module really computes what the rule was written for.
    """

    def __init__(self, name: str, how_to_register: str, *, gradients: bool = False) -> None:
        self.name = name
        self.how_to_register = how_to_register
        self.gradients = gradients  # rules bound gradients: backward and tensor gradient hooks are refused
        self._rules: dict[type, Rule] = {}

    def register(self, *types: type, subclasses: bool = False, replace: bool = False,
                 overridable: tuple[str, ...] = (), **options: Any) -> Callable[[Callable], Callable]:
        """Register ``fn`` (the decorated function) as the rule for ``types``.

        Args:
            subclasses: the rule also applies to subclasses that override nothing of the class but
                ``__init__``, ``extra_repr``, ``reset_parameters`` and ``__repr__`` (see the module
                docstring).
            replace: allow replacing an existing rule for one of ``types`` (otherwise a ValueError).
            overridable: members that the rule evaluates on the module itself (e.g. a method ``t()`` the
                forward also calls): a subclass may override them.
            options: facet-specific settings kept with the rule.
        """
        if not types:
            raise ValueError(f"register a {self.name} rule for at least one module type")
        for t in types:
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"{self.name} rules are registered for nn.Module subclasses, got {t!r}")
            if t in self._rules and not replace:
                raise ValueError(
                    f"{t.__qualname__} already has a {self.name} rule ({self._rules[t].fn.__qualname__}); "
                    "pass replace=True to replace it"
                )

        def deco(fn: Callable) -> Callable:
            for t in types:
                _snapshot(t)
                self._rules[t] = Rule(fn, t, subclasses, dict(options), frozenset(overridable))
            return fn

        return deco

    def unregister(self, *types: type) -> None:
        """Remove the rules of ``types`` (e.g. in tests)."""
        for t in types:
            self._rules.pop(t, None)

    def has_rule(self, module_type: type) -> bool:
        return module_type in self._rules

    def resolve(self, module: nn.Module) -> tuple[Rule, nn.Module]:
        """The rule for ``module`` and the module it applies to (a wrapper's inner module).

        Raises:
            UnsupportedModuleError: no rule applies (the message names the module and the reason).
        """
        inner = _wrapped(module)
        if inner is not None:
            return self.resolve(inner)
        base = _base_class(module)
        rule = None
        for c in base.__mro__:
            rule = self._rules.get(c)
            if rule is not None:
                break
        if rule is None:
            raise UnsupportedModuleError(
                f"no {self.name} rule is known for {_describe(module)}; {self.how_to_register}", module
            )
        if rule.cls is not base and not rule.subclasses:
            raise UnsupportedModuleError(
                f"{_describe(module)} is a subclass of {rule.cls.__qualname__}, whose {self.name} rule does "
                f"not extend to subclasses; {self.how_to_register}", module
            )
        problem = module_problem(module, rule.cls, rule.overridable, self.gradients)
        if problem is not None:
            raise UnsupportedModuleError(f"{_describe(module)}: {problem}", module)
        return rule, module


#: the Lipschitz facet: ``rule(module, p, shapes) -> float`` (``mixed_norms=True``: also ``q=``)
LIPSCHITZ = Facet("Lipschitz", "register one with lipkit.register_bound(YourModule)")


def register_bound(*types: type, subclasses: bool = False, replace: bool = False, mixed_norms: bool = False,
                   overridable: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register ``rule`` as the sound Lipschitz bound for ``types`` (see :class:`Facet`.register).

    The rule is called as ``rule(module, p, shapes)`` and returns a bound for the l_p norm on inputs and
    outputs (p in {1, 2, inf}); with ``mixed_norms=True`` it is called as ``rule(module, p, shapes, q=q)``
    and bounds ``||f(x) - f(y)||_q / ||x - y||_p``.  ``shapes`` maps submodules to recorded input shapes
    (possibly empty).  A rule raises :class:`UnsupportedModuleError` for a norm it cannot bound soundly.
    Without ``mixed_norms``, :func:`lipschitz_bound` derives ``p -> q`` bounds for ``p`` below ``q``
    (1 < 2 < inf) from the same-norm ones: ``L_{p->q} <= min(L_p, L_q)`` since ``||v||_q <= ||v||_p``.
    """
    return LIPSCHITZ.register(*types, subclasses=subclasses, replace=replace, overridable=overridable,
                              mixed_norms=mixed_norms)


class InputShapeError(ValueError):
    """The module's forward rejected an input of the given ``input_shape``."""


def record_input_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """Run one forward pass on zeros of ``input_shape`` (no batch dimension: one is added), in eval mode,
    and record the input shape (with batch) of every submodule.  Every submodule gets its own train/eval
    flag back (a fresh container around eval-mode layers must not switch them to training mode)."""
    shapes: dict[nn.Module, tuple] = {}
    hooks = []

    @observer_hook
    def hook(mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and mod not in shapes:
            shapes[mod] = tuple(args[0].shape)

    for sub in module.modules():
        hooks.append(sub.register_forward_pre_hook(hook))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        modes = [(sub, sub.training) for sub in module.modules()]  # restored one by one: a tree may mix
        module.eval()
        try:
            with torch.no_grad():
                try:
                    module(torch.zeros((1, *input_shape), device=device, dtype=dtype))
                except (RuntimeError, ValueError) as err:  # torch's shape errors: name the argument
                    raise InputShapeError(f"the model rejected an input of per-sample shape "
                                          f"{tuple(input_shape)} (input_shape): {err}") from err
        finally:
            for sub, mode in modes:  # parents first: a child set after its parent keeps its own flag
                if sub.training != mode:
                    sub.train(mode)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def lipschitz_bound(
    module: nn.Module,
    p: float | int | str = 2,
    q: float | int | str | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    _shapes: dict[nn.Module, tuple] | None = None,
) -> float:
    """Sound upper bound of the Lipschitz constant of ``module`` from l_p to l_q.

    Args:
        module: any supported ``nn.Module`` (lipkit layers, plain torch layers, containers).
        p: the input norm: 1, 2 or ``inf`` (``"inf"`` and ``math.inf`` both work).
        q: the output norm (default: ``p``).  ``lipschitz_bound(m, p=1, q="inf")`` bounds every partial
            derivative ``|d f_j / d x_i|`` (the constant of the monotonic networks).
        input_shape: optional shape of one input (without batch).  Convolution rules use the recorded
            spatial size for a tighter bound; without it they return a bound valid for every input size.

    Returns:
        a float ``L`` such that ``||f(x) - f(y)||_q <= L ||x - y||_p`` for all inputs, computed from the
        weights the forward pass uses, with float round-off accounted for.

    Raises:
        UnsupportedModuleError: no sound rule applies to a module in the tree (its type and the reason are
            named in the message: no rule, an overridden ``forward``, a hook, ...).
        ValueError: unsupported ``p`` or ``q``; :class:`InputShapeError` (a ``ValueError``) when the forward
            rejects ``input_shape`` (after checking that every module is supported, since a tampered module's
            own forward may be what fails).
    """
    p = normalize_p(p)
    q = p if q is None else normalize_p(q)
    if not isinstance(module, nn.Module):
        raise TypeError(f"lipschitz_bound expects a torch.nn.Module, got {type(module).__name__}")
    if _shapes is None:
        problem = global_hook_problem()
        if problem is not None:
            raise UnsupportedModuleError(problem)
        try:
            shapes = record_input_shapes(module, tuple(input_shape)) if input_shape is not None else {}
        except InputShapeError:
            lipschitz_bound(module, p, q)  # an unsupported module (whose forward may be what fails) first
            raise
        try:
            return lipschitz_bound(module, p, q, _shapes=shapes)
        except UnsupportedModuleError as exc:
            located = locate(exc, module)
            if located is exc:
                raise
            raise located from exc
    rule, module = LIPSCHITZ.resolve(module)
    try:
        value = _apply_rule(rule, module, p, q, _shapes)
    except UnsupportedModuleError as exc:
        if getattr(exc, "module", None) is None:
            exc.module = module
        raise
    if math.isnan(value) or value < 0:
        raise ValueError(f"bound rule for {type(module).__name__} returned {value!r}")
    return value


def _apply_rule(rule: Rule, module: nn.Module, p: float, q: float, _shapes: dict) -> float:
    if rule.options.get("mixed_norms"):
        value = float(rule.fn(module, p, _shapes, q=q))
    elif p == q:
        value = float(rule.fn(module, p, _shapes))
    elif norm_order(p) < norm_order(q):
        values, errors = [], []
        for r in (p, q):
            try:
                values.append(float(rule.fn(module, r, _shapes)))
            except UnsupportedModuleError as exc:
                errors.append(exc)
        if not values:
            raise errors[0]
        value = min(values)
    else:
        raise UnsupportedModuleError(
            f"no l_{p:g} -> l_{q:g} bound is known for {_describe(module)} (a bound from a larger to a "
            "smaller norm depends on the dimension; its rule does not provide one)", module
        )
    return value


def child_bound(module: nn.Module, p: float, shapes: dict, q: float | None = None) -> float:
    """Bound of a submodule inside a rule (keeps the recorded shapes)."""
    return lipschitz_bound(module, p, q, _shapes=shapes)


def chain_bound(children: list[nn.Module], p: float, shapes: dict, q: float | None = None) -> float:
    """Bound of the composition ``children[-1] o ... o children[0]`` from l_p to l_q.

    Same norms: the product of the children's bounds.  Mixed norms: the best path through the norms
    1, 2, inf.  Each child maps some ``l_a`` to some ``l_b`` at the cost of its ``l_a -> l_b`` bound (rules
    refuse the pairs they cannot bound; a larger-to-smaller pair needs a dimension-dependent rule such as
    a dense layer's), and moving up to a larger norm is free (``||v||_b <= ||v||_a`` for a below b), before,
    between and after the children.  A path ``1 -> 2 -> ... -> 2 -> inf`` through orthogonal
    layers costs 1, where switching at a single child from l_1 to l_inf may cost ``sqrt(width)``.
    The smallest product over all paths is found by dynamic programming over the (at most 3) norms.
    """
    q = p if q is None else q
    if p == q:
        total = 1.0
        for child in children:
            total *= child_bound(child, p, shapes)
        return round_up(total, len(children) + 1)
    if not children:
        if norm_order(p) <= norm_order(q):
            return 1.0
        raise UnsupportedModuleError(f"the identity has no dimension-free l_{p:g} -> l_{q:g} bound")
    norms = [1.0, 2.0, math.inf]
    best = {r: 1.0 if norm_order(r) >= norm_order(p) else math.inf for r in norms}  # free moves up from p
    first_error: UnsupportedModuleError | None = None
    for child in children:
        step = {r: math.inf for r in norms}
        for a in norms:
            if math.isinf(best[a]):
                continue
            for b in norms:
                try:
                    cost = child_bound(child, a, shapes, b)
                except UnsupportedModuleError as exc:
                    first_error = first_error or exc
                    continue
                step[b] = min(step[b], best[a] * cost)
        for i, r in enumerate(norms):  # free moves up between children
            step[r] = min(step[s] for s in norms[:i + 1])
        best = step
    if math.isinf(best[q]) and first_error is not None:
        raise first_error
    return round_up(best[q], len(children) + 1)
