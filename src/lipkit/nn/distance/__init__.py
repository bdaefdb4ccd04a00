"""l_inf-distance and SortNet neurons (Zhang et al. 2021, 2022), dense and convolutional.

Owns the layers (:mod:`.layers`), their torch and native kernels (:mod:`.kernels`, :mod:`.native`, the
C++ source in ``_native/``) and the kernel-backend selection.
"""

from lipkit.nn.distance.kernels import sortnet_coefficients
from lipkit.nn.distance.layers import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear

__all__ = ["LinfDistConv2d", "LinfDistLinear", "SortNeuronConv2d", "SortNeuronLinear", "sortnet_coefficients"]
