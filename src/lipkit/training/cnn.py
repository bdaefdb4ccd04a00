"""The l2 1-Lipschitz convolutional classifier of the trainer (``model: lipcnn``).

Architecture (:func:`cnn_layers`), for flat square images of ``side x side`` pixels (what the data loaders
give):

    Unflatten(1, (1, side, side))
    -> [LipConv2d(c_in, c, kernel_size, stride=s, constraint=conv_constraint) -> activation(c) (-> pool)]
       for c in channels
    -> Flatten -> [LipLinear(orthogonal) -> activation] for w in widths -> LipLinear(num_classes)

* ``downsample: pool``: every stage is a stride-1 convolution followed by ``L2NormPool2d(2)`` (2 x 2
  windows, stride 2: disjoint windows, so the pooling is 1-Lipschitz in l2, each output being the l2 norm
  of its window); ``downsample: stride``: the stage's convolution has stride 2 and there is no pooling;
  ``downsample: none``: neither.
* the activation acts on the channels of ``(N, C, H, W)``: MaxMin / GroupSort sort groups of channels at
  each pixel (a permutation of sorted pairs, 1-Lipschitz in every l_p), and ``activation: spline`` is one
  :class:`~lipkit.nn.LinearSpline` per channel, the same function at every pixel of a channel (the layer
  evaluates all channels and pixels with two gathers, no Python loop).
* ``Unflatten`` and ``Flatten`` permute nothing and drop nothing: they are isometries, bound exactly 1
  (the registry's ``torch.nn`` rule).

The network is 1-Lipschitz in l2 up to the accuracy of the convolutions' constraint (``aol``: guaranteed,
Prach & Lampert 2022; ``spectral``: power iteration, slightly above 1 at worst); certificates never trust
the constraint but read :func:`lipkit.lipschitz_bound` of the actual weights, whose conv rule is the
Fourier / explicit-matrix bound of :mod:`lipkit.bounds.conv` (exact up to round-off when the input size is
known).  ``plain=True`` gives the exported architecture: ``nn.Conv2d`` / ``nn.Linear`` layers and the same
activations (a spline as :class:`~lipkit.nn.FrozenLinearSpline`), in the same order, so the state dict of
:func:`lipkit.export` loads into it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lipkit.nn import GroupSort, L2NormPool2d, LipConv2d, LipLinear, MaxMin
from lipkit.training.config import ConfigError
from lipkit.training.data import square_side

if TYPE_CHECKING:
    from lipkit.training.config import RunConfig

__all__ = ["cnn_layers", "cnn_geometry"]


def cnn_geometry(cfg: RunConfig, in_features: int) -> list[tuple[int, int, int]]:
    """``(channels, height, width)`` after the input reshape and after each stage of ``cfg``'s CNN.

    Raises :class:`ConfigError` when the inputs are not square one-channel images or a stage would shrink
    the image below one pixel."""
    side = square_side(in_features)
    if side is None:
        raise ConfigError(f"config key 'model' in section 'network': model 'lipcnn' needs square images, but "
                          f"the data set {cfg.dataset!r} has {in_features} features per example")
    shapes = [(1, side, side)]
    h, k = side, cfg.kernel_size
    for c in cfg.channels:
        if cfg.downsample == "stride":  # LipConv2d's padding for stride 2: (k - 1) // 2 on each side
            h = (h + 2 * ((k - 1) // 2) - k) // 2 + 1
        elif cfg.downsample == "pool":  # "same" convolution, then 2x2 windows with stride 2
            h = h // 2
        if h < 1:
            raise ConfigError(f"config key 'channels' in section 'network': {len(cfg.channels)} "
                              f"downsampling stages (kernel {k}) shrink the {side}x{side} images below one "
                              "pixel; use fewer channels entries or downsample: none")
        shapes.append((c, h, h))
    return shapes


def _activation(cfg: RunConfig, width: int, plain: bool) -> nn.Module:
    """MaxMin / GroupSort over channels (dim 1), or one spline per channel."""
    if cfg.activation == "spline":
        from lipkit.training.splines import spline_activation

        return spline_activation(cfg, width, plain=plain)
    return MaxMin() if cfg.activation == "maxmin" else GroupSort(cfg.group_size)


def cnn_layers(cfg: RunConfig, in_features: int, num_classes: int, plain: bool = False) -> list[nn.Module]:
    """The layers of ``cfg``'s l2 CNN (module docstring); ``plain``: the exported architecture."""
    geometry = cnn_geometry(cfg, in_features)
    side = geometry[0][1]
    k = cfg.kernel_size
    stride = 2 if cfg.downsample == "stride" else 1
    layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
    c_in = 1
    for c in cfg.channels:
        if plain:
            pad = "same" if stride == 1 else (k - 1) // 2
            layers.append(nn.Conv2d(c_in, c, k, stride=stride, padding=pad))
        else:
            layers.append(LipConv2d(c_in, c, k, stride=stride, constraint=cfg.conv_constraint))
        layers.append(_activation(cfg, c, plain))
        if cfg.downsample == "pool":
            layers.append(L2NormPool2d(2))
        c_in = c
    layers.append(nn.Flatten())
    c, h, w = geometry[-1]
    width_in = c * h * w
    for width in cfg.widths:
        layers.append(nn.Linear(width_in, width) if plain else _lip_linear(width_in, width, cfg))
        layers.append(_activation(cfg, width, plain))
        width_in = width
    layers.append(nn.Linear(width_in, num_classes) if plain else _lip_linear(width_in, num_classes, cfg))
    return layers


def _lip_linear(n_in: int, n_out: int, cfg: RunConfig) -> LipLinear:
    return LipLinear(n_in, n_out, constraint=cfg.constraint, orthogonal_method=cfg.orthogonal_method)
