"""The bound registry: one sound answer per module, per facet (the bottom layer of lipkit).

Owns :func:`lipschitz_bound` and the per-layer facet registries (:mod:`.registry`), the numerics every
bound shares (:mod:`.numerics`: float64 norms rounded up), the operator norms of convolutions
(:mod:`.conv`), the rules for ``torch.nn`` layers (:mod:`.torch_rules`) and the per-example gradient
sensitivity facet used by differential privacy (:mod:`.sensitivity`).  Imports nothing else of lipkit.
"""

from lipkit.bounds import conv as _conv  # noqa: F401  (registers the nn.Conv rules)
from lipkit.bounds import torch_rules as _torch_rules  # noqa: F401  (registers the torch.nn rules)
from lipkit.bounds.conv import conv_module_norm, conv_operator_norm, gram_spectral_bound, reshaped_kernel_norm
from lipkit.bounds.numerics import (
    EPS64,
    as_float64,
    fp32_products_are_ieee,
    normalize_p,
    operator_norm,
    pairwise_head_bound,
    round_up,
)
from lipkit.bounds.registry import (
    LIPSCHITZ,
    Facet,
    InputShapeError,
    UnsupportedModuleError,
    chain_bound,
    child_bound,
    computes_as,
    lipschitz_bound,
    observer_hook,
    record_input_shapes,
    register_bound,
    unwrap,
)
from lipkit.bounds.sensitivity import SENSITIVITY, parameter_sensitivity, register_sensitivity

__all__ = [
    "EPS64",
    "Facet",
    "InputShapeError",
    "LIPSCHITZ",
    "SENSITIVITY",
    "UnsupportedModuleError",
    "as_float64",
    "chain_bound",
    "child_bound",
    "computes_as",
    "conv_module_norm",
    "fp32_products_are_ieee",
    "conv_operator_norm",
    "gram_spectral_bound",
    "lipschitz_bound",
    "normalize_p",
    "observer_hook",
    "operator_norm",
    "pairwise_head_bound",
    "parameter_sensitivity",
    "record_input_shapes",
    "register_bound",
    "register_sensitivity",
    "reshaped_kernel_norm",
    "round_up",
    "unwrap",
]
