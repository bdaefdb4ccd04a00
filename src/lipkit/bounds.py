"""One source of truth for Lipschitz constants: :func:`lipschitz_bound`.

``lipschitz_bound(module, p)`` returns a *sound* upper bound of the Lipschitz constant of
``module`` for the l_p norm on inputs and outputs (p = 2 or inf; p = 1 where a rule supports
it), computed from the weights the forward pass really uses.  Certificates, monotonic slopes,
DP sensitivities and the "naive" estimate all read this function.

How a bound is found, for a module ``m`` of class ``C``:

1. the registry: the first class of ``C.__mro__`` with a rule registered by
   :func:`register_bound` (so a parametrised ``nn.Linear`` is answered by the ``nn.Linear``
   rule from its *actual* weight, never from the parametrisation's intent);
2. otherwise a clear :class:`UnsupportedModuleError` naming the type.

Round-off: norms are computed in float64 from the (float32) weights and inflated by a
relative slack that dominates the float64 error of the computation (:func:`round_up`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "lipschitz_bound",
    "register_bound",
    "UnsupportedModuleError",
    "operator_norm",
    "round_up",
    "record_input_shapes",
]

BoundRule = Callable[..., float]
_REGISTRY: dict[type, BoundRule] = {}

#: float64 unit round-off.
EPS64 = float(torch.finfo(torch.float64).eps)


class UnsupportedModuleError(TypeError):
    """Raised when no sound Lipschitz rule is known for a module type."""


def normalize_p(p: float | int | str) -> float:
    """Return p as a float in {1, 2, inf}; raise a clear ValueError otherwise."""
    if isinstance(p, str):
        key = p.strip().lower()
        if key in ("inf", "linf", "l_inf", "infinity"):
            return math.inf
        try:
            p = float(key)
        except ValueError:
            raise ValueError(f"unknown norm p={p!r}; use p=1, p=2 or p='inf'") from None
    p = float(p)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"unsupported norm p={p!r}; use p=1, p=2 or p=inf")
    return p


def round_up(value: float, n_ops: int = 1) -> float:
    """Inflate a float64 result so that it dominates the exact value.

    ``n_ops`` is the length of the longest chain of float64 operations that produced
    ``value``; the relative error of such a chain is below ``n_ops * eps64`` (to first order),
    and we take a factor 4 of margin on top.  Returns ``+inf`` for non-finite input.
    """
    if not math.isfinite(value):
        return math.inf
    slack = 4.0 * max(n_ops, 1) * EPS64
    return math.nextafter(value * (1.0 + slack) + 1e-300, math.inf)


def register_bound(*types: type) -> Callable[[BoundRule], BoundRule]:
    """Register ``rule(module, p, shapes) -> float`` as the sound bound for ``types``.

    ``shapes`` maps submodules to their recorded input shapes (may be empty); rules that do
    not need it can ignore it.  A rule must raise ``UnsupportedModuleError`` for a norm it
    cannot bound soundly.
    """

    def deco(rule: BoundRule) -> BoundRule:
        for t in types:
            _REGISTRY[t] = rule
        return rule

    return deco


def _find_rule(module: nn.Module) -> BoundRule | None:
    for cls in type(module).__mro__:
        rule = _REGISTRY.get(cls)
        if rule is not None:
            return rule
    return None


def record_input_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """Run one forward pass on zeros of ``input_shape`` (no batch dimension: one is added)
    and record the input shape (with batch) of every submodule."""
    shapes: dict[nn.Module, tuple] = {}
    hooks = []

    def hook(mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and mod not in shapes:
            shapes[mod] = tuple(args[0].shape)

    for sub in module.modules():
        hooks.append(sub.register_forward_pre_hook(hook))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device, dtype=dtype))
        module.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def lipschitz_bound(
    module: nn.Module,
    p: float | int | str = 2,
    *,
    input_shape: tuple[int, ...] | None = None,
    _shapes: dict[nn.Module, tuple] | None = None,
) -> float:
    """Sound upper bound of the Lipschitz constant of ``module`` for the l_p norm.

    Args:
        module: any supported ``nn.Module`` (lipkit layers, plain torch layers, containers).
        p: 2 or ``inf`` (``"inf"`` and ``math.inf`` both work); 1 where a rule supports it.
        input_shape: optional shape of one input (without batch).  Convolution rules use the
            recorded spatial size for a tighter bound; without it they return a bound valid
            for every input size.

    Returns:
        a float ``L`` such that ``||f(x) - f(y)||_p <= L ||x - y||_p`` for all inputs.

    Raises:
        UnsupportedModuleError: no sound rule is known for a module in the tree (its type is
            named in the message).
        ValueError: unsupported ``p``.
    """
    p = normalize_p(p)
    if not isinstance(module, nn.Module):
        raise TypeError(f"lipschitz_bound expects a torch.nn.Module, got {type(module).__name__}")
    if _shapes is None:
        _shapes = record_input_shapes(module, tuple(input_shape)) if input_shape is not None else {}
    rule = _find_rule(module)
    if rule is None:
        raise UnsupportedModuleError(
            f"no Lipschitz bound is known for module type {type(module).__module__}."
            f"{type(module).__qualname__}; register one with lipkit.register_bound"
        )
    value = float(rule(module, p, _shapes))
    if math.isnan(value) or value < 0:
        raise ValueError(f"bound rule for {type(module).__name__} returned {value!r}")
    return value


def child_bound(module: nn.Module, p: float, shapes: dict) -> float:
    """Bound of a submodule inside a rule (keeps the recorded shapes)."""
    return lipschitz_bound(module, p, _shapes=shapes)


# --------------------------------------------------------------------------- matrix norms


def _as_float64(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach()
    if w.device.type not in ("cpu", "cuda"):
        w = w.cpu()
    return w.to(torch.float64)


def operator_norm(weight: torch.Tensor, p_in: float | str = 2, p_out: float | str | None = None) -> float:
    """Sound upper bound of ``max ||W x||_{p_out} / ||x||_{p_in}`` for a matrix ``W``.

    Supported pairs (p_in -> p_out), all computed in float64 and rounded up:

    * 2 -> 2: largest singular value (LAPACK SVD is backward stable: the error is below
      ``c * max(m, n) * eps64 * sigma_max``; we inflate accordingly);
    * inf -> inf: max row l1 norm;  1 -> 1: max column l1 norm;
    * 1 -> inf: max |W_ij|;  2 -> inf: max row l2 norm;  1 -> 2: max column l2 norm.
    """
    p_in = normalize_p(p_in)
    p_out = p_in if p_out is None else normalize_p(p_out)
    if weight.dim() != 2:
        raise ValueError(f"operator_norm expects a 2-D matrix, got shape {tuple(weight.shape)}")
    w = _as_float64(weight)
    if not torch.isfinite(w).all():
        return math.inf
    m, n = w.shape
    if w.numel() == 0:
        return 0.0
    if p_in == 2 and p_out == 2:
        val = torch.linalg.matrix_norm(w, ord=2).item()
        return round_up(val, 8 * max(m, n) ** 2)
    if p_in == math.inf and p_out == math.inf:
        return round_up(w.abs().sum(dim=1).max().item(), n)
    if p_in == 1 and p_out == 1:
        return round_up(w.abs().sum(dim=0).max().item(), m)
    if p_in == 1 and p_out == math.inf:
        return w.abs().max().item()
    if p_in == 2 and p_out == math.inf:
        return round_up(w.norm(dim=1).max().item(), 2 * n)
    if p_in == 1 and p_out == 2:
        return round_up(w.norm(dim=0).max().item(), 2 * m)
    raise ValueError(f"no operator norm for l{p_in} -> l{p_out}")


# --------------------------------------------------------------------------- torch rules


def _identity_rule(module: nn.Module, p: float, shapes: dict) -> float:
    return 1.0


register_bound(nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.Tanh, nn.Softplus, nn.Hardtanh,
               nn.ReLU6, nn.Softsign)(_identity_rule)


@register_bound(nn.Sigmoid)
def _sigmoid_rule(module: nn.Module, p: float, shapes: dict) -> float:
    return 0.25


@register_bound(nn.LeakyReLU)
def _leaky_rule(module: nn.LeakyReLU, p: float, shapes: dict) -> float:
    return max(1.0, abs(float(module.negative_slope)))


@register_bound(nn.ELU)
def _elu_rule(module: nn.ELU, p: float, shapes: dict) -> float:
    return max(1.0, abs(float(module.alpha)))


@register_bound(nn.GELU)
def _gelu_rule(module: nn.Module, p: float, shapes: dict) -> float:
    # sup |GELU'(x)| = 1.1289... (exact erf form; the tanh approximation is below it too)
    return 1.1290


@register_bound(nn.SiLU)
def _silu_rule(module: nn.Module, p: float, shapes: dict) -> float:
    # sup |SiLU'(x)| = 1.0998...
    return 1.1000


@register_bound(nn.Dropout)
def _dropout_rule(module: nn.Dropout, p: float, shapes: dict) -> float:
    # identity in eval mode; in train mode the kept entries are scaled by 1 / (1 - p).
    return 1.0 if not module.training else 1.0 / (1.0 - float(module.p))


@register_bound(nn.Sequential)
def _sequential_rule(module: nn.Sequential, p: float, shapes: dict) -> float:
    total = 1.0
    for child in module:
        total *= child_bound(child, p, shapes)
    return round_up(total, len(module))


@register_bound(nn.Linear)
def _linear_rule(module: nn.Linear, p: float, shapes: dict) -> float:
    return operator_norm(module.weight, p)


def _bn_scale(module: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    if module.training or module.running_var is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__} in training mode normalises by batch statistics and has no "
            "per-sample Lipschitz constant; call model.eval() first"
        )
    scale = 1.0 / torch.sqrt(_as_float64(module.running_var) + module.eps)
    if module.affine and module.weight is not None:
        scale = scale * _as_float64(module.weight)
    return scale


@register_bound(nn.BatchNorm1d, nn.BatchNorm2d)
def _bn_rule(module: nn.modules.batchnorm._BatchNorm, p: float, shapes: dict) -> float:
    return round_up(_bn_scale(module).abs().max().item(), 4)

