"""Lipschitz layers: weight maps, dense and convolutional layers, activations, splines, pooling,
residual blocks, and the l_inf-distance / SortNet neurons.

Owns every ``nn.Module`` that lipkit builds (:mod:`.parametrize` for the weight maps, :mod:`.distance`
for the l_inf-distance family and its native kernels).  Each layer registers its facets (Lipschitz bound,
round-off, sensitivity) next to its code, through :mod:`lipkit.bounds`; nothing here imports a pillar
(certify, estimation, dp, monotonic) or the application (training, cli).
"""

from lipkit.nn import intervals as _intervals  # noqa: F401  (registers the interval rules of the layers)
from lipkit.nn.activations import Abs, FullSort, GroupSort, Householder, MaxMin, Negate, SmoothSoftplus
from lipkit.nn.conv import CONV_CONSTRAINTS, LipConv2d
from lipkit.nn.distance import (
    LinfDistConv2d,
    LinfDistLinear,
    SortNeuronConv2d,
    SortNeuronLinear,
    sortnet_coefficients,
)
from lipkit.nn.linear import LINEAR_CONSTRAINTS, LipLinear
from lipkit.nn.pooling import InvertibleDownsample, L2NormPool2d, ScaledAvgPool2d
from lipkit.nn.residual import SLL, ConvexResidual, Residual, SLLConv2d
from lipkit.nn.spline import FrozenLinearSpline, LinearSpline

__all__ = [
    "Abs", "CONV_CONSTRAINTS", "ConvexResidual", "FrozenLinearSpline", "FullSort", "GroupSort", "Householder",
    "InvertibleDownsample",
    "L2NormPool2d", "LINEAR_CONSTRAINTS", "LinearSpline", "LinfDistConv2d", "LinfDistLinear", "LipConv2d",
    "LipLinear", "MaxMin", "Negate", "Residual", "SLL", "SLLConv2d", "ScaledAvgPool2d", "SortNeuronConv2d",
    "SortNeuronLinear", "SmoothSoftplus", "sortnet_coefficients",
]
