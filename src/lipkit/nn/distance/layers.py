"""l_inf-distance and SortNet neurons: layers that are 1-Lipschitz for l_inf by construction.

* :class:`LinfDistLinear` -- Zhang, Lu, Ye, Wang, He, Wang, "Towards certifying l_inf robustness
  using neural networks with l_inf-dist neurons" (ICML 2021):
  ``y_o = max_i |x_i - w_oi| + b_o``.  ``|max_i a_i - max_i a'_i| <= max_i |a_i - a'_i|`` and
  ``||x_i - w| - |x'_i - w|| <= |x_i - x'_i|`` give ``|y_o(x) - y_o(x')| <= ||x - x'||_inf``:
  every output is 1-Lipschitz for l_inf, hence the layer is (l_inf -> l_inf) 1-Lipschitz and a
  classifier built from such layers certifies an l_inf radius of ``margin / 2``.
* :class:`SortNeuronLinear` -- Zhang, Jiang, He, Wang, "Rethinking Lipschitz neural networks and
  certified robustness: a Boolean function perspective" (NeurIPS 2022):
  ``y_o = sum_k c_k d_(k) + b_o`` with ``d_(0) >= d_(1) >= ...`` the sorted ``|x_i - w_oi|`` and
  geometric ``c_k ∝ q (1 - q)^k`` summing to 1.  Each order statistic is 1-Lipschitz for l_inf
  (sorting is 1-Lipschitz in every coordinate), and a convex combination of them too; ``q = 1`` is
  the l_inf-distance neuron.  Training uses the paper's identity
  ``E_S[max_{i in S} d_i | S != {}] = sum_k c_k d_(k)`` for ``S`` an i.i.d. Bernoulli(q) subset:
  one random subset per sub-batch, exact sort at evaluation.

Both layers optionally use *mean-shift* normalisation (batch norm without scaling): in training
the batch mean of each output is subtracted (and tracked), in evaluation the tracked running mean
-- a constant shift that does not change the Lipschitz constant.  In training mode the output of
one sample depends on the rest of the batch, so no per-sample bound exists and
:func:`lipkit.lipschitz_bound` refuses (like for ``nn.BatchNorm``).

:class:`LinfDistConv2d` and :class:`SortNeuronConv2d` apply the same neurons to every
``kernel_size`` patch of an image (``torch.nn.functional.unfold``, zero padding), with one weight
per output channel: output ``(o, position)`` is ``max_{i in patch} |x_i - w_oi|``, a max over a
subset of the input coordinates (padding zeros are constants), so each output is again
1-Lipschitz w.r.t. the l_inf norm of the *whole* input and the layer's l_inf bound stays exactly 1.
Mean shift is per output channel (over batch and positions, like ``nn.BatchNorm2d``).

``LinfDistLinear(p=8.0)`` computes the smooth relaxation ``||x - w_o||_p`` (the paper trains with
``p`` growing from 8 to inf; a trainer sets ``layer.p``).  Such a neuron is 1-Lipschitz for the
l_p norm of the input only: w.r.t. l_inf its constant is ``n^{1/p}`` (n = ``in_features``), and
:func:`lipkit.lipschitz_bound` reports that value (the bound is attained, see the tests).

Bounds reported (exact arithmetic; the float forward adds a relative error of a few ulps of
``y`` per output, which certificates must budget for):

======================  =================  ===========================  ==================
neuron                  p = inf            p = 2                        p = 1
======================  =================  ===========================  ==================
l_inf / SortNet         1                  sqrt(m)                      m
l_r relaxation, r<inf   n^{1/r}            sqrt(m) * n^{max(0,1/r-1/2)} m
======================  =================  ===========================  ==================

with m = ``out_features``: for p = 2, each output is 1-Lipschitz w.r.t. ``||.||_inf <= ||.||_2``
(resp. ``||.||_r <= n^{max(0, 1/r - 1/2)} ||.||_2``), and m outputs can move together (all
neurons may take their max on the same coordinate), so sqrt(m) is tight; likewise m for p = 1.
For the conv layers, m = ``out_channels * N`` where N is the largest number of patches that
contain one input pixel (from the recorded input size, or the size-free bound
``ceil(kernel/stride)`` per axis): ``sum_{o, pos} |dy|^2 <= out * sum_pos ||dx_patch||^2
<= out * N * ||dx||_2^2``, and similarly for p = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipkit.bounds import UnsupportedModuleError, register_bound, round_up
from lipkit.nn.distance.kernels import (
    DEFAULT_BUDGET_BYTES,
    grouped_masked_linf_dist,
    linf_dist,
    lp_dist,
    sort_dist,
    sortnet_coefficients,
)
from lipkit.nn.pooling import windows_per_pixel

__all__ = ["LinfDistLinear", "SortNeuronLinear", "LinfDistConv2d", "SortNeuronConv2d"]

_INITS = ("auto", "identity", "normal")


class _DistanceLayer(nn.Module):
    """Shared parts: weight ``(out, in)``, optional bias, mean shift, input checks."""

    def __init__(self, in_features: int, out_features: int, bias: bool, mean_shift: bool,
                 momentum: float, init: str, identity_scale: float,
                 device: torch.device | str | None, dtype: torch.dtype | None,
                 weight_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if init not in _INITS:
            raise ValueError(f"unknown init {init!r}; use one of {_INITS}")
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.mean_shift = bool(mean_shift)
        self.momentum = float(momentum)
        self.init = init
        self.identity_scale = float(identity_scale)
        self.budget_bytes = DEFAULT_BUDGET_BYTES
        self.weight = nn.Parameter(torch.empty(weight_shape or (out_features, in_features), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        if self.mean_shift:
            self.register_buffer("running_mean", torch.zeros(out_features, **factory))
        else:
            self.register_buffer("running_mean", None)
        self.reset_parameters()

    def _init_mode(self, n_in: int, n_out: int) -> tuple[str, int]:
        """Draw the weight from N(0, 1) and return the resolved init mode and ``min(n_in, n_out)``."""
        mode = self.init
        if mode == "auto":
            mode = "identity" if n_in == n_out else "normal"
        self.weight.normal_()
        return mode, min(n_in, n_out)

    def reset_parameters(self) -> None:
        """Initialise as in Zhang et al. (2021).

        ``"normal"``: ``w ~ N(0, 1)``.  ``"identity"``: ``w = 0`` except ``w_jj = -C`` for
        ``j < min(in, out)`` (extra outputs: ``N(0, 1)``), ``C = identity_scale``; then for inputs
        with ``|x_i| < C / 2`` output j is ``max_i |x_i - w_ji| = x_j + C``, i.e. the identity up to a
        constant that mean shift removes, which lets deep stacks start close to the identity.
        ``"auto"``: identity when ``in_features == out_features``, otherwise normal.
        """
        with torch.no_grad():
            mode, r = self._init_mode(self.in_features, self.out_features)
            if mode == "identity":
                self.weight[:r].zero_()
                self.weight[:r, :r].diagonal().fill_(-self.identity_scale)
            if self.bias is not None:
                self.bias.zero_()
            if self.running_mean is not None:
                self.running_mean.zero_()

    def _distance(self, x: torch.Tensor, rows_per_item: int) -> torch.Tensor:  # pragma: no cover
        """Neuron values for the rows of ``x`` (``(rows, in_features)``); ``rows_per_item`` rows
        belong to one sample (1 for dense layers, the number of patches for conv layers)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (..., {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != self.weight.dtype:
            raise TypeError(
                f"{type(self).__name__}: input dtype {x.dtype} != weight dtype {self.weight.dtype}"
            )
        lead = x.shape[:-1]
        z = self._shift_and_bias(self._distance(x.reshape(-1, self.in_features), 1))
        return z.reshape(*lead, self.out_features)

    def _weight2d(self) -> torch.Tensor:
        """The weight as the ``(out_features, in_features)`` matrix the kernels use (a view)."""
        return self.weight.view(self.out_features, self.in_features)

    def _shift_and_bias(self, z: torch.Tensor) -> torch.Tensor:
        """Mean shift over the rows of ``z`` (``(rows, out_features)``) and bias."""
        if self.mean_shift:
            if self.training:
                if z.shape[0] < 2:
                    raise ValueError(
                        f"{type(self).__name__} with mean_shift needs a batch of at least 2 samples in "
                        "training mode (call .eval() for single samples)"
                    )
                mean = z.mean(dim=0)
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                z = z - mean
            else:
                z = z - self.running_mean
        if self.bias is not None:
            z = z + self.bias
        return z

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mean_shift={self.mean_shift}")


class _LpDistance:
    """The l_p-distance neuron's shared parts: the ``p`` property (``inf``: exact l_inf), the kernel call."""

    _p: float

    @property
    def p(self) -> float:
        """Norm of the distance (``inf``: exact l_inf-distance neuron)."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = _check_p(value)

    def _distance(self, x: torch.Tensor, rows_per_item: int) -> torch.Tensor:
        return _linf_or_lp(x, self._weight2d(), self._p, self.budget_bytes)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self._p}"


class LinfDistLinear(_LpDistance, _DistanceLayer):
    """Layer of l_inf-distance neurons ``y_o = max_i |x_i - w_oi| (- mean) + b_o`` (Zhang et al. 2021).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        mean_shift: subtract the batch mean of each output in training and the running mean in
            evaluation (batch norm without scale; ``momentum`` as in ``nn.BatchNorm1d``).
        p: norm of the distance; ``inf`` (default) is the exact 1-Lipschitz neuron, a finite
            ``p >= 1`` is the training relaxation ``||x - w_o||_p`` (set ``layer.p`` to schedule it).
        init: ``"auto"`` (identity if square, else normal), ``"identity"`` or ``"normal"``; see
            :meth:`reset_parameters`.

    Input ``(..., in_features)``, output ``(..., out_features)``.  Forward and backward use the
    memory-bounded kernels of :mod:`lipkit.nn.distance.kernels`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mean_shift: bool = True,
                 p: float = math.inf, momentum: float = 0.1, init: str = "auto",
                 identity_scale: float = 10.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self._p = math.inf
        super().__init__(in_features, out_features, bias, mean_shift, momentum, init, identity_scale,
                         device, dtype)
        self.p = p


def _check_p(value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number >= 1 or inf, got {value!r}") from None
    if math.isnan(v) or v < 1.0:
        raise ValueError(f"p must be >= 1 or inf, got {value!r}")
    return v


def _linf_or_lp(x: torch.Tensor, w: torch.Tensor, p: float, budget: int) -> torch.Tensor:
    if math.isinf(p):
        return linf_dist(x, w, budget_bytes=budget)
    return lp_dist(x, w, p, budget_bytes=budget)


def _sortnet(layer: _DistanceLayer, x: torch.Tensor, rows_per_mask: int) -> torch.Tensor:
    """SortNet neuron values: exact top-K in evaluation, one Bernoulli(q) mask per group of
    ``rows_per_mask`` rows in training (see :class:`SortNeuronLinear`)."""
    w = layer._weight2d()
    if not layer.training or layer.q == 1.0:
        return sort_dist(x, w, layer.coefficients, budget_bytes=layer.budget_bytes)
    masks = _draw_masks(-(-x.shape[0] // rows_per_mask), layer.in_features, layer.q, x.device)
    return grouped_masked_linf_dist(x, w, masks, rows_per_mask, budget_bytes=layer.budget_bytes)


def _draw_masks(groups: int, n: int, q: float, device: torch.device) -> torch.Tensor:
    """``groups`` independent Bernoulli(q) subsets of ``range(n)``; empty ones are redrawn."""
    masks = torch.rand(max(1, groups), n, device=device) < q
    while True:
        empty = ~masks.any(dim=1)
        if not bool(empty.any()):
            return masks
        masks[empty] = torch.rand(int(empty.sum()), n, device=device) < q


class _SortNet:
    """The SortNet neuron's shared parts (dense and conv): ``q``, ``k``, ``sub_batch``, the weights
    ``c_k`` and the kernel call."""

    in_features: int

    def _init_sortnet(self, q: float, k: int | None, sub_batch: int) -> None:
        if not isinstance(sub_batch, int) or isinstance(sub_batch, bool) or sub_batch < 1:
            raise ValueError(f"sub_batch must be a positive int, got {sub_batch!r}")
        sortnet_coefficients(q, self.in_features, k)  # validates q and k
        self.q = float(q)
        self.k = k
        self.sub_batch = sub_batch

    @property
    def coefficients(self) -> torch.Tensor:
        """The order-statistic weights ``c_k`` used at evaluation (float64, sum 1)."""
        return sortnet_coefficients(self.q, self.in_features, self.k)

    def _distance(self, x: torch.Tensor, rows_per_item: int) -> torch.Tensor:
        return _sortnet(self, x, self.sub_batch * rows_per_item)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", q={self.q}, k={self.k}"


class SortNeuronLinear(_SortNet, _DistanceLayer):
    """Layer of SortNet neurons (Zhang, Jiang, He, Wang, NeurIPS 2022).

    ``y_o = sum_{k<K} c_k d_(k) (- mean) + b_o`` with ``d_(0) >= d_(1) >= ...`` the sorted
    ``|x_i - w_oi|`` and ``c = sortnet_coefficients(q, in_features, k)`` (``c_k ∝ q (1-q)^k``,
    ``sum c_k = 1``).

    Training mode (``model.train()``): the batch is cut into sub-batches of ``sub_batch`` rows; each
    draws one Bernoulli(q) subset ``S`` of the inputs (redrawn if empty) and computes
    ``max_{i in S} |x_i - w_oi|``.  For ``k=None`` (``K = in_features``) its expectation is exactly
    the evaluation output; with ``k < in_features`` evaluation truncates and renormalises the
    weights, which moves each output by at most ``T * (d_(0) - d_(n-1))`` with tail mass
    ``T = ((1-q)^k - (1-q)^n) / (1 - (1-q)^n)``.  Each realised training function is a max over
    a subset, hence 1-Lipschitz for l_inf as well.

    Evaluation computes the top-K order statistics exactly (blocked ``torch.topk``).
    """

    def __init__(self, in_features: int, out_features: int, q: float = 0.5, bias: bool = True, *,
                 k: int | None = None, sub_batch: int = 16, mean_shift: bool = True, momentum: float = 0.1,
                 init: str = "auto", identity_scale: float = 10.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, mean_shift, momentum, init, identity_scale,
                         device, dtype)
        self._init_sortnet(q, k, sub_batch)


# --------------------------------------------------------------------------- convolutions


def _pair(v: int | tuple[int, ...], name: str, who: str, minimum: int) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= minimum for a in v):
        raise ValueError(f"{who}: {name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return v  # type: ignore[return-value]


class _DistanceConv2d(_DistanceLayer):
    """Shared parts of the conv variants: weight ``(out, in, kh, kw)``, unfold, shapes, init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int], padding: int | tuple[int, int],
                 dilation: int | tuple[int, int], bias: bool, mean_shift: bool, momentum: float, init: str,
                 identity_scale: float, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        who = type(self).__name__
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{who}: {name} must be a positive int, got {v!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size", who, 1)
        self.stride = _pair(stride, "stride", who, 1)
        self.padding = _pair(padding, "padding", who, 0)
        self.dilation = _pair(dilation, "dilation", who, 1)
        self.in_channels, self.out_channels = in_channels, out_channels
        kh, kw = self.kernel_size
        super().__init__(in_channels * kh * kw, out_channels, bias, mean_shift, momentum, init,
                         identity_scale, device, dtype, weight_shape=(out_channels, in_channels, kh, kw))

    def reset_parameters(self) -> None:
        """As the dense layers, with the identity placed at the kernel centre:
        ``"identity"``: ``w = 0`` except ``w[j, j, kh // 2, kw // 2] = -C`` for ``j < min(in, out)``
        (extra output channels: ``N(0, 1)``), so that for ``|x| < C / 2`` output channel j is input
        channel j (shifted by the kernel's centre offset) plus C.  ``"auto"``: identity when
        ``in_channels == out_channels``, else normal."""
        with torch.no_grad():
            mode, r = self._init_mode(self.in_channels, self.out_channels)
            if mode == "identity":
                ch, cw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
                self.weight[:r].zero_()
                self.weight[:r, :r, ch, cw] = -self.identity_scale * torch.eye(r, dtype=self.weight.dtype,
                                                                                device=self.weight.device)
            if self.bias is not None:
                self.bias.zero_()
            if self.running_mean is not None:
                self.running_mean.zero_()

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial output size for an ``h x w`` input."""
        out = []
        for n, k, s, pd, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation,
                                  strict=True):
            out.append((n + 2 * pd - d * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{who} expects an input of shape (N, C, H, W) or (C, H, W), got {shape}")
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{who}: expected {self.in_channels} input channels, got input of shape "
                             f"{tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"{who}: input dtype {x.dtype} != weight dtype {self.weight.dtype}")
        ho, wo = self.output_size(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"{who}: input spatial size {tuple(x.shape[2:])} with padding {self.padding} is "
                             f"smaller than the (dilated) kernel {self.kernel_size}")
        z = self._shift_and_bias(self._distance(self._patch_rows(x, ho, wo), ho * wo))
        y = self._feature_map(z, x.shape[0], ho, wo)
        return y[0] if single else y

    def _patch_rows(self, x: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        """The zero-padded patches of ``x`` (``(N, C, H, W)``), one per row:
        ``(N * ho * wo, in_features)``."""
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2).reshape(x.shape[0] * ho * wo, self.in_features)

    def _feature_map(self, z: torch.Tensor, n: int, ho: int, wo: int) -> torch.Tensor:
        """Rows ``(N * ho * wo, out_channels)`` back to the map ``(N, out_channels, ho, wo)``."""
        return z.view(n, ho * wo, self.out_features).transpose(1, 2).reshape(n, self.out_features, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, mean_shift={self.mean_shift}")


class LinfDistConv2d(_LpDistance, _DistanceConv2d):
    """Convolution of l_inf-distance neurons: ``y[o, pos] = max_{i in patch} |x_i - w_oi| (- mean) + b_o``.

    Zhang, Lu, Ye, Wang, He, Wang (ICML 2021) define l_inf-distance nets on vectors; this is the
    same neuron slid over ``kernel_size`` patches (``torch.nn.functional.unfold``, zero padding).
    Each output is a max over a subset of the input coordinates of ``|x_i - w_oi|``, hence exactly
    1-Lipschitz w.r.t. the l_inf norm of the whole input, and :func:`lipkit.lipschitz_bound` returns
    1 for ``p=inf`` (``n^{1/p}``, ``n = in_channels * kh * kw``, for the l_p relaxation).

    Args mirror ``nn.Conv2d`` (``in_channels, out_channels, kernel_size, stride, padding, dilation,
    bias``) plus ``mean_shift`` (per output channel over batch and positions), ``p``, ``init``
    (identity at the kernel centre, see :meth:`reset_parameters`) as :class:`LinfDistLinear`.
    The weight has shape ``(out_channels, in_channels, kh, kw)``.  Input ``(N, C, H, W)`` or
    ``(C, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True, *, mean_shift: bool = True,
                 p: float = math.inf, momentum: float = 0.1, init: str = "auto", identity_scale: float = 10.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, mean_shift,
                         momentum, init, identity_scale, device, dtype)
        self._p = _check_p(p)


class SortNeuronConv2d(_SortNet, _DistanceConv2d):
    """Convolution of SortNet neurons (Zhang, Jiang, He, Wang, NeurIPS 2022) over ``kernel_size`` patches.

    ``y[o, pos] = sum_k c_k d_(k)`` with ``d_(0) >= d_(1) >= ...`` the sorted ``|x_i - w_oi|`` over
    the patch and ``c = sortnet_coefficients(q, in_channels * kh * kw, k)``; exactly 1-Lipschitz for
    l_inf w.r.t. the whole input.  Training mode: one Bernoulli(q) subset of the patch coordinates
    per ``sub_batch`` *images* (shared by all their patches), as :class:`SortNeuronLinear` does per
    ``sub_batch`` rows; evaluation: exact top-K.  Other arguments as :class:`LinfDistConv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, q: float = 0.5, bias: bool = True, *,
                 k: int | None = None, sub_batch: int = 16, mean_shift: bool = True, momentum: float = 0.1,
                 init: str = "auto", identity_scale: float = 10.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, mean_shift,
                         momentum, init, identity_scale, device, dtype)
        self._init_sortnet(q, k, sub_batch)


@register_bound(LinfDistLinear, SortNeuronLinear, LinfDistConv2d, SortNeuronConv2d)
def _distance_rule(module: _DistanceLayer, p: float, shapes: dict) -> float:
    if module.mean_shift and module.training:
        raise UnsupportedModuleError(
            f"{type(module).__name__} with mean_shift in training mode subtracts the batch mean and has "
            "no per-sample Lipschitz constant; call model.eval() first"
        )
    r = getattr(module, "p", math.inf)  # norm of the distance neuron (SortNet: inf)
    n, m = module.in_features, module.out_features
    if isinstance(module, _DistanceConv2d):
        # outputs that can move together per input pixel: out_channels x (patches covering a pixel)
        m = module.out_channels * windows_per_pixel(module, shapes, module.kernel_size, module.stride,
                                             module.padding, module.dilation, False)
    if math.isinf(r):
        neuron_inf, neuron_2 = 1.0, 1.0
    else:
        # ||d||_r <= n^{1/r} ||d||_inf;  ||d||_r <= n^{max(0, 1/r - 1/2)} ||d||_2.
        neuron_inf = round_up(n ** (1.0 / r), 4)
        neuron_2 = round_up(n ** max(0.0, 1.0 / r - 0.5), 4)
    if p == math.inf:
        return neuron_inf
    if p == 2:
        return neuron_2 if m == 1 else round_up(neuron_2 * math.sqrt(m), 4)
    # p == 1: ||d||_r <= ||d||_1 for r >= 1; the l1 norm of m outputs adds up.
    return float(m)
