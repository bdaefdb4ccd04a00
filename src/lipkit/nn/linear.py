"""Dense layers with a constrained weight: :class:`LipLinear`.

``LipLinear`` is an ``nn.Linear`` whose ``weight`` is a ``torch.nn.utils.parametrize``
parametrisation (see :mod:`lipkit.nn.parametrize`), so optimisers, ``state_dict``,
``parametrize.cached()`` and ``lipkit.export`` work as for any parametrised module, and the
generic ``nn.Linear`` rule of :func:`lipkit.lipschitz_bound` certifies it from the weight the
forward pass really uses (never from the constraint's intent).

Constraints (``lip`` scales each):

==============  ==============================================  =============================
constraint      weight                                          norm it bounds by ``lip``
==============  ==============================================  =============================
"orthogonal"    (semi-)orthogonal, all singular values = lip    l2 (gradient-norm preserving)
"spectral"      W / sigma_max (power iteration)                 l2 (approximately)
"aol"           W diag(d) (Prach & Lampert 2022)                l2 (guaranteed)
"inf"           rows rescaled to l1 norm <= lip                 l_inf -> l_inf
"one"           columns rescaled to l1 norm <= lip              l_1 -> l_1
"one-inf"       rows rescaled to max |W_ij| <= lip              l_1 -> l_inf
"two-inf"       rows rescaled to l2 norm <= lip                 l_2 -> l_inf
==============  ==============================================  =============================

For the mixed norms the layer maps l_p -> l_q; ``lipschitz_bound(layer, p)`` still returns the
sound same-norm bound of the actual weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import (
    UnsupportedModuleError,
    operator_norm,
    register_bound,
    register_sensitivity,
    round_up,
)
from lipkit.nn.parametrize import (
    AOL,
    OPNORM_KINDS,
    ORTHOGONAL_METHODS,
    CayleyOrthogonal,
    OperatorNorm,
    Orthogonal,
    SpectralNorm,
)
from lipkit.nn.parametrize.utils import check_lip

__all__ = ["LipLinear", "LINEAR_CONSTRAINTS", "Orthogonal", "CayleyOrthogonal", "SpectralNorm", "AOL",
           "OperatorNorm"]

LINEAR_CONSTRAINTS = ("orthogonal", "spectral", "aol", *OPNORM_KINDS)


class LipLinear(nn.Linear):
    """``y = x W^T + b`` with ``W`` constrained (see the module table).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        constraint: one of ``LINEAR_CONSTRAINTS``.
        lip: the Lipschitz factor (> 0, finite).
        orthogonal_method: ``"retraction"`` (default, fast), ``"bjorck"`` or ``"cayley"``
            (see :mod:`lipkit.nn.parametrize.orthogonal`); only for ``constraint="orthogonal"``.
        n_power_iterations: power iterations per step for ``constraint="spectral"``.

    Raises:
        ValueError: unknown constraint / method, or ``lip`` not a finite number > 0.

    Note:
        With the default ``orthogonal_method="retraction"`` every training-mode access of
        ``weight`` projects the raw weight (``parametrizations.weight.original``) back onto the
        orthogonal matrices in place; the gradient reaches the raw weight unchanged (Riemannian
        descent with the polar retraction).  In eval mode the weight is the float64-converged
        polar factor, cached, and a constant.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        constraint: str = "orthogonal",
        lip: float = 1.0,
        orthogonal_method: str = "retraction",
        n_power_iterations: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if constraint not in LINEAR_CONSTRAINTS:
            raise ValueError(
                f"unknown constraint {constraint!r}; valid constraints: {list(LINEAR_CONSTRAINTS)}"
            )
        if orthogonal_method not in ORTHOGONAL_METHODS:
            raise ValueError(f"unknown orthogonal_method {orthogonal_method!r}; valid methods: "
                             f"{list(ORTHOGONAL_METHODS)}")
        lip = check_lip(lip, "LipLinear")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.constraint = constraint
        self.lip = lip
        self.orthogonal_method = orthogonal_method if constraint == "orthogonal" else None
        if constraint == "orthogonal":
            if orthogonal_method == "cayley":
                param: nn.Module = CayleyOrthogonal(lip=lip)
            else:
                with torch.no_grad():
                    nn.init.orthogonal_(self.weight)
                    self.weight.mul_(lip)
                param = Orthogonal(method=orthogonal_method, lip=lip)
        elif constraint == "spectral":
            param = SpectralNorm(self.weight, lip=lip, n_power_iterations=n_power_iterations)
        elif constraint == "aol":
            param = AOL(lip=lip)
        else:
            param = OperatorNorm(constraint, lip=lip)
        parametrize.register_parametrization(self, "weight", param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not parametrize.is_parametrized(self, "weight"):
            return super().forward(x)  # e.g. after parametrize.remove_parametrizations
        weights = self.parametrizations.weight
        param = weights[0]
        if (
            isinstance(param, SpectralNorm)
            and len(weights) == 1
            and param.n_power_iterations == 1
            and bool(param._initialized)
            and not parametrize._cache_enabled
            and x.shape[-1:] == (self.in_features,)
        ):
            return param.fused_linear(x, weights.original, self.bias)
        return super().forward(x)

    def reset_parameters(self) -> None:
        """Re-initialise the raw weight (orthogonal for ``"orthogonal"``) and the bias."""
        if not parametrize.is_parametrized(self, "weight"):
            super().reset_parameters()  # called by nn.Linear.__init__, before registration
            return
        raw = self.parametrizations.weight.original
        param = self.parametrizations.weight[0]
        with torch.no_grad():
            if isinstance(param, Orthogonal):
                nn.init.orthogonal_(raw)
            else:
                nn.init.kaiming_uniform_(raw, a=math.sqrt(5))
            if isinstance(param, SpectralNorm):
                param._initialized.fill_(False)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
                nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", constraint={self.constraint!r}, lip={self.lip}"
        if self.orthogonal_method is not None:
            s += f", orthogonal_method={self.orthogonal_method!r}"
        return s


@register_bound(LipLinear, mixed_norms=True)
def _lip_linear_rule(module: LipLinear, p: float, shapes: dict, q: float | None = None) -> float:
    """The operator norm of the weight the forward pass uses.

    In eval mode, inside ``parametrize.cached()``, and for every constraint but ``"spectral"`` in training
    mode, the forward is ``nn.Linear.forward`` with ``module.weight``.  In training mode the spectral
    constraint's forward runs a power-iteration step on every call, so the next call's weight is not the
    one a bound can read.
    """
    if (module.training and module.constraint == "spectral" and parametrize.is_parametrized(module, "weight")
            and not parametrize._cache_enabled):
        raise UnsupportedModuleError(
            "LipLinear(constraint='spectral') in training mode changes its weight at every call (one power "
            "iteration per forward); call .eval(), or bound it inside torch.nn.utils.parametrize.cached(), "
            "where the forward uses the cached weight"
        )
    return operator_norm(module.weight, p, q)



def _lip_linear_sensitivity(module: LipLinear, r: float, g: float, shapes: dict) -> dict[str, float]:
    """``||dl/dW||_F = ||g x^T||_F <= G R`` and ``||dl/db|| <= G`` (the tensors the optimiser updates).

    Only for a LipLinear whose weight is a plain parameter (the deployed weight): with the parametrisation in
    place the optimiser updates ``parametrizations.weight.original``, whose gradient is the effective
    weight's gradient pulled back through the constraint's Jacobian (``W / sigma(W)`` differentiated through
    ``sigma`` is not 1-Lipschitz), so the bound above would not hold for it.  :func:`lipkit.dp.make_private`
    materialises the weight and projects it onto the constraint set after every step instead.
    """
    if parametrize.is_parametrized(module, "weight"):
        raise UnsupportedModuleError(
            f"LipLinear(constraint={module.constraint!r}) with a parametrised weight: the optimiser updates "
            "parametrizations.weight.original, whose gradient passes through the constraint's Jacobian; "
            "lipkit.dp.make_private trains the deployed weight and projects it after each step instead"
        )
    out = {"weight": round_up(r * g)}
    if module.bias is not None:
        out["bias"] = g
    return out


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_sensitivity(LipLinear)(_lip_linear_sensitivity)
