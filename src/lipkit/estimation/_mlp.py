"""Read a plain torch MLP as a list of float64 weight matrices and slope-restricted activations.

An MLP here is ``f(x) = W_L phi_{L-1}(W_{L-1} ... phi_1(W_1 x + b_1) ... + b_{L-1}) + b_L``
given as an ``nn.Sequential`` (nested Sequentials are flattened) of ``nn.Linear`` layers and
element-wise activations.  Each activation is *slope-restricted* on ``[alpha, beta]``:
``alpha <= (phi(a) - phi(b)) / (a - b) <= beta`` for all ``a != b`` (Fazlyab et al., 2019).
Biases never change a Lipschitz constant and are kept only for the exact/brute-force tools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["MLP", "parse_mlp", "activation_slopes", "conv_as_linear", "MAX_CONV_MATRIX"]


def activation_slopes(act: nn.Module) -> tuple[float, float]:
    """Slope bounds ``[alpha, beta]`` of an element-wise activation module (raises TypeError if unknown)."""
    if isinstance(act, (nn.ReLU, nn.Tanh, nn.Hardtanh, nn.ReLU6, nn.Softplus)):
        return 0.0, 1.0
    if isinstance(act, nn.Sigmoid):
        return 0.0, 0.25
    if isinstance(act, nn.LeakyReLU):
        a = float(act.negative_slope)
        return min(a, 1.0), max(a, 1.0)
    if isinstance(act, nn.ELU):
        a = float(act.alpha)
        if a < 0:
            raise TypeError(f"ELU with negative alpha={a} is not slope-restricted in a supported way")
        return 0.0, max(1.0, a)
    raise TypeError(
        f"module {type(act).__name__} is not supported by the MLP estimators (LipSDP, LiPopt), which need "
        "nn.Linear layers and the activations ReLU, LeakyReLU, Tanh, Sigmoid, ELU, Softplus, Hardtanh, ReLU6"
    )


@dataclass
class MLP:
    """An MLP read from torch: ``weights[k]`` (float64, shape out x in), ``biases[k]``, and the
    activation after layer k (``acts[k]``, for k < L-1) with its slopes ``slopes[k]``."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    acts: list[nn.Module]
    slopes: list[tuple[float, float]]
    #: optional per-neuron slope bounds ``(alpha_k, beta_k)`` (float64 arrays, one entry per neuron of hidden
    #: layer k) that override ``slopes``; set by the local method from interval bounds.
    neuron_slopes: list[tuple[np.ndarray, np.ndarray]] | None = None

    def layer_slopes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-neuron slope bounds of hidden layer ``k`` (``neuron_slopes`` or the activation's range)."""
        if self.neuron_slopes is not None:
            a, b = self.neuron_slopes[k]
            return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        n = int(self.weights[k].shape[0])
        a, b = self.slopes[k]
        return np.full(n, float(a)), np.full(n, float(b))

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def hidden_sizes(self) -> list[int]:
        return [int(w.shape[0]) for w in self.weights[:-1]]


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_flatten(child))
        return out
    return [module]


def _w64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64).clone()


#: largest explicit matrix (entries) a convolution is lowered to
MAX_CONV_MATRIX = 4_000_000


def conv_as_linear(conv: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Linear, tuple[int, ...]]:
    """The ``nn.Linear`` (float64) computing ``conv`` on flattened inputs of ``input_shape`` (C, H[, W]).

    Column ``j`` is the (bias-free) convolution of the ``j``-th basis image; with zero padding every entry is
    a single kernel weight (or 0), so the matrix is exact.  Returns the layer and the output shape.
    """
    if conv.padding_mode != "zeros":
        raise TypeError(f"{type(conv).__name__} with padding_mode={conv.padding_mode!r} is not lowered to a "
                        "matrix (only zero padding)")
    n_in = 1
    for d in input_shape:
        n_in *= int(d)
    w = conv.weight.detach().to("cpu", torch.float64)
    fn = nn.functional.conv2d if isinstance(conv, nn.Conv2d) else nn.functional.conv1d
    with torch.no_grad():
        zero = fn(torch.zeros((1, *input_shape), dtype=torch.float64), w, None, conv.stride, conv.padding,
                  conv.dilation, conv.groups)
        out_shape = tuple(zero.shape[1:])
        n_out = zero.numel()
        if n_in * n_out > MAX_CONV_MATRIX:
            raise TypeError(f"{type(conv).__name__} on inputs {tuple(input_shape)} would be a {n_out} x "
                            f"{n_in} matrix (limit {MAX_CONV_MATRIX} entries)")
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *input_shape)
        cols = fn(basis, w, None, conv.stride, conv.padding, conv.dilation, conv.groups).reshape(n_in, n_out)
    lin = nn.Linear(n_in, n_out, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(cols.T)
        b = conv.bias.detach().to("cpu", torch.float64) if conv.bias is not None else None
        lin.bias.copy_(b.repeat_interleave(n_out // b.numel()) if b is not None else torch.zeros(n_out))
    return lin, out_shape


def _lower_convs(layers: list[nn.Module], input_shape: tuple[int, ...] | None) -> list[nn.Module]:
    """Replace Conv1d/Conv2d by explicit Linear layers, tracking the shape (needs ``input_shape``)."""
    if not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in layers):
        return layers
    if input_shape is None:
        raise TypeError("a network with Conv1d/Conv2d layers needs input_shape=(C, H, W) for the MLP "
                        "estimators")
    shape = tuple(int(d) for d in input_shape)
    out: list[nn.Module] = []
    for m in layers:
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            lin, shape = conv_as_linear(m, shape)
            out.append(lin)
            continue
        if isinstance(m, nn.Flatten):
            n = 1
            for d in shape:
                n *= d
            shape = (n,)
            continue
        if isinstance(m, nn.Linear):
            shape = (m.out_features,)
        elif not isinstance(m, (nn.Identity, nn.Dropout)):
            activation_slopes(m)  # element-wise (shape kept), or a TypeError naming the module
        out.append(m)
    return out


def parse_mlp(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> MLP:
    """Read ``model`` (``nn.Linear`` or ``nn.Sequential`` of Linear/activation layers) as an :class:`MLP`.

    ``nn.Identity``, ``nn.Flatten`` and ``nn.Dropout`` in eval mode are skipped; consecutive Linear
    layers are multiplied together; a trailing activation is followed by an identity layer.  Convolutions
    (zero padding, any stride) are lowered to their exact matrices when ``input_shape`` (one input, no batch)
    is given and the matrices are small (:data:`MAX_CONV_MATRIX`); element-wise activations act on the
    flattened (C, H, W) order, the order of ``nn.Flatten``.
    Raises ``TypeError`` naming any unsupported module, ``ValueError`` on NaN/inf weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    layers = _lower_convs(_flatten(model), input_shape)
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    acts: list[nn.Module] = []
    pending_linear = False
    for m in layers:
        if isinstance(m, (nn.Identity, nn.Flatten)):
            continue
        if isinstance(m, nn.Dropout):
            if m.training and m.p > 0:
                raise ValueError("Dropout in training mode is random; call model.eval() first")
            continue
        if isinstance(m, nn.Linear):
            w = _w64(m.weight)
            b = _w64(m.bias) if m.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
                raise ValueError("the model has NaN or infinite weights")
            if pending_linear:
                if w.shape[1] != weights[-1].shape[0]:
                    raise ValueError(f"shape mismatch between consecutive Linear layers: {tuple(w.shape)}")
                biases[-1] = w @ biases[-1] + b
                weights[-1] = w @ weights[-1]
            else:
                if weights and w.shape[1] != weights[-1].shape[0]:
                    raise ValueError(
                        f"Linear layer expects {w.shape[1]} inputs, previous has {weights[-1].shape[0]}"
                    )
                weights.append(w)
                biases.append(b)
            pending_linear = True
            continue
        slopes = activation_slopes(m)  # raises TypeError naming the module
        if not pending_linear:
            if not weights:
                raise TypeError("the MLP must start with an nn.Linear layer")
            raise TypeError("two activations in a row are not supported")
        acts.append(m)
        pending_linear = False
        del slopes
    if not weights:
        raise TypeError("the model contains no nn.Linear layer")
    if not pending_linear:  # trailing activation: add an identity output layer
        n = weights[-1].shape[0]
        weights.append(torch.eye(n, dtype=torch.float64))
        biases.append(torch.zeros(n, dtype=torch.float64))
    return MLP(weights, biases, acts, [activation_slopes(a) for a in acts])
