"""lipkit: neural networks whose Lipschitz constant is known and bounded.

The package is layered; each layer imports only the ones below it (checked by import-linter in CI)::

    bounds  <-  nn  <-  losses  <-  {certify, estimation, exporting}  <-  training  <-  cli

* :mod:`lipkit.bounds`: :func:`lipschitz_bound` and the per-layer facet registries;
* :mod:`lipkit.nn`: 1-Lipschitz layers (dense, conv, activations, splines, pooling, residual, distance);
* :mod:`lipkit.losses`: margin losses and the top-2 margin;
* :mod:`lipkit.certify`: certified radii, interval bounds, attacks;
* :mod:`lipkit.estimation`: upper and lower bounds of the Lipschitz constant of any torch network;
* :mod:`lipkit.exporting`: :func:`export` to plain torch modules;
* :mod:`lipkit.training` and :mod:`lipkit.cli`: the application (runs, recipes, the command line).

The names below are the public API; everything else is reachable through its subpackage.
"""

from lipkit import dp  # the subpackage: lipkit.dp.make_private after `import lipkit`
from lipkit.bounds import (
    UnsupportedModuleError,
    conv_module_norm,
    conv_operator_norm,
    gram_spectral_bound,
    lipschitz_bound,
    observer_hook,
    operator_norm,
    parameter_sensitivity,
    record_input_shapes,
    register_bound,
    register_sensitivity,
    reshaped_kernel_norm,
    round_up,
)
from lipkit.certify import (
    CertificateResult,
    attacks,
    certified_accuracy,
    certified_radius,
    compute_certificates,
    interval_bounds,
    interval_certified,
    interval_certified_accuracy,
)
from lipkit.estimation import Estimate, estimate
from lipkit.exporting import ExportError, export
from lipkit.losses import HKRLoss, LipschitzCrossEntropyLoss, LogitMSELoss, MulticlassHingeLoss
from lipkit.monotonic import MonotonicMLP, MonotonicNetwork, check_monotonic
from lipkit.nn import (
    CONV_CONSTRAINTS,
    LINEAR_CONSTRAINTS,
    SLL,
    Abs,
    ConvexResidual,
    FrozenLinearSpline,
    FullSort,
    GroupSort,
    Householder,
    InvertibleDownsample,
    L2NormPool2d,
    LinearSpline,
    LinfDistConv2d,
    LinfDistLinear,
    LipConv2d,
    LipLinear,
    MaxMin,
    Negate,
    Residual,
    ScaledAvgPool2d,
    SLLConv2d,
    SmoothSoftplus,
    SortNeuronConv2d,
    SortNeuronLinear,
    sortnet_coefficients,
)
from lipkit.nn.distance.kernels import get_backend as get_distance_backend
from lipkit.nn.distance.kernels import set_backend as set_distance_backend
from lipkit.nn.distance.kernels import use_backend as use_distance_backend
from lipkit.training.data import load_dataset

__all__ = [
    # bounds
    "lipschitz_bound", "register_bound", "UnsupportedModuleError", "observer_hook", "operator_norm",
    "round_up",
    "record_input_shapes", "parameter_sensitivity", "register_sensitivity",
    "conv_operator_norm", "conv_module_norm", "gram_spectral_bound", "reshaped_kernel_norm",
    # layers
    "LipLinear", "LINEAR_CONSTRAINTS", "LipConv2d", "CONV_CONSTRAINTS", "GroupSort", "MaxMin", "FullSort",
    "Abs", "Negate", "SmoothSoftplus", "Householder", "LinearSpline",
    "FrozenLinearSpline", "Residual", "ConvexResidual", "SLL",
    "SLLConv2d", "L2NormPool2d",
    "ScaledAvgPool2d", "InvertibleDownsample", "LinfDistLinear", "LinfDistConv2d", "SortNeuronLinear",
    "SortNeuronConv2d", "sortnet_coefficients",
    "get_distance_backend", "set_distance_backend", "use_distance_backend",
    # losses
    "MulticlassHingeLoss", "HKRLoss", "LipschitzCrossEntropyLoss", "LogitMSELoss",
    # certify
    "CertificateResult", "compute_certificates", "certified_radius", "certified_accuracy", "interval_bounds",
    "interval_certified", "interval_certified_accuracy", "attacks", "dp",
    # estimate, export, data
    "estimate", "Estimate", "export", "ExportError", "load_dataset",
    # monotonic
    "MonotonicNetwork", "MonotonicMLP", "check_monotonic",
]

__version__ = "0.1.0"
