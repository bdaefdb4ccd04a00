"""Read a plain torch MLP as a list of float64 weight matrices and slope-restricted activations.

An MLP here is ``f(x) = W_L phi_{L-1}(W_{L-1} ... phi_1(W_1 x + b_1) ... + b_{L-1}) + b_L``
given as an ``nn.Sequential`` (nested Sequentials are flattened) of ``nn.Linear`` layers and
element-wise activations.  Each activation is *slope-restricted* on ``[alpha, beta]``:
``alpha <= (phi(a) - phi(b)) / (a - b) <= beta`` for all ``a != b`` (Fazlyab et al., 2019).
Biases never change a Lipschitz constant and are kept only for the exact/brute-force tools.

GroupSort-type activations (lipkit's ``GroupSort``, ``MaxMin``, ``FullSort``) are not element-wise; they
are *lowered* exactly: a descending sort of a group is an odd-even transposition network of comparators,
and one comparator ``(a, b) -> (max(a, b), min(a, b)) = (b + relu(a - b), a - relu(a - b))`` is linear maps
around a ReLU on ``a - b`` with ``a`` and ``b`` carried by identity neurons (slope exactly 1, which LipSDP
substitutes and LiPopt gives no variable).  So a MaxMin becomes one hidden layer, a GroupSort of size ``g``
``g`` layers, and every estimator bounds the very function the network computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lipkit.nn.activations import SmoothSoftplus

__all__ = ["MLP", "Comparators", "parse_mlp", "activation_slopes", "conv_as_linear", "mlp_as_sequential",
           "flatten_modules", "MAX_CONV_MATRIX"]


def activation_slopes(act: nn.Module) -> tuple[float, float]:
    """Slope bounds ``[alpha, beta]`` of an element-wise activation module (raises TypeError if unknown)."""
    if isinstance(act, (nn.ReLU, nn.Tanh, nn.Hardtanh, nn.ReLU6, SmoothSoftplus)):
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
    if isinstance(act, Comparators):
        return act.slopes
    raise TypeError(
        f"module {type(act).__name__} is not supported by the MLP estimators (LipSDP, LiPopt), which need "
        "nn.Linear layers, the activations ReLU, LeakyReLU, Tanh, Sigmoid, ELU, lipkit.SmoothSoftplus, "
        "Hardtanh, "
        "ReLU6 "
        "and lipkit's GroupSort / MaxMin / FullSort on features"
    )


class Comparators(nn.Module):
    """One round of comparators of a lowered sort: ReLU on the ``relu`` neurons, identity on the others."""

    def __init__(self, relu: np.ndarray) -> None:
        super().__init__()
        self.relu = np.asarray(relu, dtype=bool)
        self.slopes = (np.where(self.relu, 0.0, 1.0), np.ones(self.relu.size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mask = torch.as_tensor(self.relu, device=z.device)
        return torch.where(mask, torch.relu(z), z)


def _is_sort(m: nn.Module) -> bool:
    from lipkit.nn.activations import GroupSort

    return isinstance(m, GroupSort)


def sort_as_comparators(n: int, group_size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A descending sort of consecutive groups of ``group_size`` among ``n`` features as rounds of an
    odd-even transposition network.  Each round is ``(P, relu, Q)``: ``x -> Q act(P x)`` with ``P`` of shape
    ``(n + m) x n`` (``x`` itself, then ``a - b`` per comparator), ``act`` ReLU where ``relu`` is true and the
    identity elsewhere, ``Q`` of shape ``n x (n + m)`` (max ``b + r`` first, min ``a - r`` second)."""
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"GroupSort: {n} features are not divisible by the group size {group_size}")
    rounds = []
    for r in range(group_size):
        pairs = [(b + i, b + i + 1) for b in range(0, n, group_size) for i in range(r % 2, group_size - 1, 2)]
        if not pairs:
            continue
        m = len(pairs)
        P = np.zeros((n + m, n))
        P[:n] = np.eye(n)
        Q = np.zeros((n, n + m))
        Q[:, :n] = np.eye(n)
        for j, (a, b) in enumerate(pairs):
            P[n + j, a], P[n + j, b] = 1.0, -1.0
            Q[a, a], Q[a, b], Q[a, n + j] = 0.0, 1.0, 1.0
            Q[b, b], Q[b, a], Q[b, n + j] = 0.0, 1.0, -1.0
        rounds.append((P, np.r_[np.zeros(n, bool), np.ones(m, bool)], Q))
    return rounds


@dataclass
class MLP:
    """An MLP read from torch: ``weights[k]`` (float64, shape out x in), ``biases[k]``, and the
    activation after layer k (``acts[k]``, for k < L-1) with its slopes ``slopes[k]``."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    acts: list[nn.Module]
    #: per layer ``(alpha, beta)``: floats, or per-neuron arrays (lowered GroupSort layers)
    slopes: list[tuple]
    #: optional per-neuron slope bounds ``(alpha_k, beta_k)`` (float64 arrays, one entry per neuron of hidden
    #: layer k) that override ``slopes``; set by the local method from interval bounds.
    neuron_slopes: list[tuple[np.ndarray, np.ndarray]] | None = None
    #: a rough l2 Lipschitz scale of the network as it was written (product of its Linear layers' spectral
    #: norms and activation slopes, a GroupSort counting 1); only used to condition the SDPs
    scale_hint: float = math.inf

    def layer_slopes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-neuron slope bounds of hidden layer ``k`` (``neuron_slopes`` or the activation's range)."""
        if self.neuron_slopes is not None:
            a, b = self.neuron_slopes[k]
            return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        n = int(self.weights[k].shape[0])
        a, b = self.slopes[k]
        return (np.broadcast_to(np.asarray(a, dtype=np.float64), (n,)).copy(),
                np.broadcast_to(np.asarray(b, dtype=np.float64), (n,)).copy())

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def input_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def hidden_sizes(self) -> list[int]:
        return [int(w.shape[0]) for w in self.weights[:-1]]


def flatten_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(flatten_modules(child))
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
        elif _is_sort(m):
            if len(shape) != 1:
                raise TypeError(f"{type(m).__name__} on feature maps of shape {shape} is not lowered for the "
                                "MLP estimators (only on flat features, after nn.Flatten)")
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
    layers = _lower_convs(flatten_modules(model), input_shape)
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    acts: list[nn.Module] = []
    pending_linear = False
    # the SDP conditioning hint is only needed (and only differs from the lowered weights' norms) with sorts
    with_sorts = any(_is_sort(m) for m in layers)
    hint = 1.0 if with_sorts else math.inf
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
            if with_sorts:
                hint *= float(torch.linalg.matrix_norm(w, 2)) if w.numel() else 0.0
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
        sort = _is_sort(m)
        if not sort:
            activation_slopes(m)  # raises TypeError naming the module
        if not pending_linear:
            if not weights:
                raise TypeError("the MLP must start with an nn.Linear layer")
            raise TypeError("two activations in a row are not supported")
        if not sort:
            a, b = activation_slopes(m)
            hint = hint * max(abs(a), abs(b)) if with_sorts else hint
            acts.append(m)
            pending_linear = False
            continue
        if m.dim not in (1, -1):
            raise TypeError(f"{type(m).__name__}(dim={m.dim}) is not lowered: only dim=1 on (N, C) features")
        n = int(weights[-1].shape[0])
        size = m._size() or n
        try:
            rounds = sort_as_comparators(n, size)
        except ValueError as exc:
            raise ValueError(f"{type(m).__name__}: {exc}") from None
        for P, relu, Q in rounds:
            Pt = torch.from_numpy(P)
            weights[-1], biases[-1] = Pt @ weights[-1], Pt @ biases[-1]
            acts.append(Comparators(relu))
            weights.append(torch.from_numpy(Q))
            biases.append(torch.zeros(n, dtype=torch.float64))
        # the last round's Q is a linear layer still open: the next nn.Linear is multiplied into it
    if not weights:
        raise TypeError("the model contains no nn.Linear layer")
    if not pending_linear:  # trailing activation: add an identity output layer
        n = weights[-1].shape[0]
        weights.append(torch.eye(n, dtype=torch.float64))
        biases.append(torch.zeros(n, dtype=torch.float64))
    slopes = [activation_slopes(a) for a in acts]
    return MLP(weights, biases, acts, slopes, scale_hint=hint if hint > 0 else math.inf)


def has_sort(model: nn.Module) -> bool:
    """Whether ``model`` contains a GroupSort-type activation (lowered by :func:`parse_mlp`)."""
    return any(_is_sort(m) for m in flatten_modules(model))


def mlp_as_sequential(mlp: MLP) -> nn.Sequential:
    """The parsed (lowered) MLP as a float64 ``nn.Sequential`` on flattened inputs: the same function as the
    model it came from, with only Linear layers and element-wise activations."""
    layers: list[nn.Module] = [nn.Flatten()]
    for k, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers.append(lin)
        if k < len(mlp.acts):
            layers.append(mlp.acts[k])
    return nn.Sequential(*layers).eval()
