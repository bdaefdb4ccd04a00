"""1-Lipschitz (l2) 2-D convolutions: :class:`LipConv2d`.

The constraint is a ``torch.nn.utils.parametrize`` parametrisation of ``weight``; the certificate never comes
from the constraint's intent but from :func:`lipkit.lipschitz_bound`, which reads the actual weight
through the ``nn.Conv2d`` rule of :mod:`lipkit.bounds.conv`.

Constraints:

* ``"spectral"``: divide the kernel by a power-iteration estimate of the *operator* norm of the convolution
  (Miyato et al. 2018 applied to the conv operator, as in Farnia et al. 2019), with a persistent input-shaped
  vector created at the first forward pass.  Power iteration under-estimates, so the layer can be slightly
  (~1%) above ``lip``; the bound reports the truth.
* ``"aol"``: AOL (Prach & Lampert, ECCV 2022) for convolutions: ``W' = K diag(d)`` with
  ``d_j = (sum_{i, m} |(K^T * K)_m[i, j]|)^{-1/2}``, where ``K^T * K`` is the kernel of ``A^T A`` (the
  self-correlation of the kernel).  ``D A^T A D`` then has row-l1 norms <= 1 (Gershgorin/Schur test), so
  ``||A D||_2 <= 1`` for zero and circular padding and any stride.  Guaranteed, no iteration.
* ``"orthogonal"``: a block-orthogonal convolution with ``stride == kernel_size`` and no padding: the patches
  do not overlap, so the layer is the patch-wise linear map ``reshape(K) = Q``, with ``Q`` the top-left
  block of ``exp(S - S^T)`` (orthonormal rows or columns).  Norm preserving when
  ``out_channels >= in_channels kh kw`` and the input size is a multiple of the kernel size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import UnsupportedModuleError, observer_hook, register_sensitivity
from lipkit.bounds.sensitivity import _conv_sensitivity

__all__ = ["LipConv2d", "CONV_CONSTRAINTS"]

CONV_CONSTRAINTS = ("spectral", "aol", "orthogonal")


def _conv(x: torch.Tensor, w: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        return F.conv2d(x, w, None, layer.stride, 0, layer.dilation, layer.groups)
    return F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


class _ConvSpectral(nn.Module):
    """``K -> lip * K / sigma``, sigma a power-iteration estimate of the conv operator's l2 norm."""

    def __init__(self, layer: nn.Conv2d, lip: float, n_power_iterations: int = 2, default_size: int = 16):
        super().__init__()
        self.lip = float(lip)
        self.n_iter = int(n_power_iterations)
        self._cfg = {
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
            "groups": layer.groups,
            "padding_mode": layer.padding_mode,
            "_reversed_padding_repeated_twice": layer._reversed_padding_repeated_twice,
        }
        self.register_buffer("u", torch.empty(0))
        self.default_size = default_size
        self.in_channels = layer.in_channels

    def set_input_shape(self, shape: tuple[int, ...], device, dtype) -> None:
        """Create the persistent vector for inputs of ``shape`` (no batch) if it does not exist yet."""
        if self.u.numel() == 0 or (self.training and tuple(self.u.shape[1:]) != tuple(shape)):
            u = torch.randn(1, *shape, device=device, dtype=dtype)
            self.u = u / u.norm()
            self._fresh = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "u")
        if saved is not None and saved.shape != self.u.shape:  # the vector is created lazily: adopt its shape
            self.u = torch.empty_like(saved, device=self.u.device, dtype=self.u.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply_conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _conv(x, w, _Cfg(self._cfg))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.u.numel() == 0:
            self.set_input_shape((self.in_channels, self.default_size, self.default_size), w.device, w.dtype)
        u = self.u
        n_iter = self.n_iter if self.training else 0
        if getattr(self, "_fresh", False):
            n_iter, self._fresh = max(n_iter, 30), False
        if n_iter > 0:
            with torch.enable_grad():
                wd = w.detach()
                for _ in range(n_iter):
                    x = u.detach().requires_grad_(True)
                    y = self._apply_conv(x, wd)
                    v = y / y.norm().clamp_min(1e-12)
                    (g,) = torch.autograd.grad(y, x, grad_outputs=v)
                    u = g / g.norm().clamp_min(1e-12)
            self.u = u.detach()
        with torch.no_grad():
            y0 = self._apply_conv(self.u, w.detach())
            v = y0 / y0.norm().clamp_min(1e-12)
        sigma = (v * self._apply_conv(self.u, w)).sum().clamp_min(1e-12)
        return w * (self.lip / sigma)


class _Cfg:
    """Attribute view of a conv configuration (for :func:`_conv`)."""

    def __init__(self, cfg: dict):
        self.__dict__.update(cfg)


class _ConvAOL(nn.Module):
    """AOL rescaling of the input channels of a conv kernel (Prach & Lampert 2022)."""

    def __init__(self, lip: float):
        super().__init__()
        self.lip = float(lip)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        kh, kw = w.shape[-2:]
        wt = w.transpose(0, 1)  # (c_in, c_out, kh, kw): c_in "images" with c_out channels
        # gram[j, i, m] = sum_{o, t} K[o, j, t + m] K[o, i, t]: the kernel of A^T A
        gram = F.conv2d(wt, wt, padding=(kh - 1, kw - 1))
        s = gram.abs().sum(dim=(1, 2, 3))
        d = torch.where(s > 0, s.clamp_min(1e-30).rsqrt(), torch.zeros_like(s))
        return w * (d * self.lip)[None, :, None, None]


class _ConvBlockOrthogonal(nn.Module):
    """``reshape(K) = lip * Q``, ``Q`` the top-left ``c_out x (c_in kh kw)`` block of ``exp(S - S^T)``."""

    def __init__(self, shape: tuple[int, ...], lip: float):
        super().__init__()
        self.lip = float(lip)
        self.shape = tuple(shape)
        self.rows = shape[0]
        self.cols = math.prod(shape[1:])

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        skew = a - a.transpose(-1, -2)
        q = torch.linalg.matrix_exp(skew.double()).to(a.dtype)
        return self.lip * q[: self.rows, : self.cols].reshape(self.shape)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_registered", False):
            raise NotImplementedError(
                "assigning a weight to an orthogonal LipConv2d is not supported; set "
                "layer.parametrizations.weight.original (the matrix S of exp(S - S^T)) instead"
            )
        n = max(self.rows, self.cols)
        return w.new_zeros(n, n)


class LipConv2d(nn.Conv2d):
    """A 2-D convolution constrained to be ``lip``-Lipschitz for the l2 norm.

    Args:
        in_channels, out_channels, kernel_size, stride, bias, padding_mode: as in ``nn.Conv2d``
            (``padding_mode`` must be ``"zeros"`` or ``"circular"``: reflect/replicate padding
            duplicates input entries and would break the guarantee).
        padding: default ``"same"`` for stride 1, ``(k - 1) // 2`` otherwise, ``0`` for ``"orthogonal"``.
        constraint: ``"spectral"``, ``"aol"`` or ``"orthogonal"`` (see the module docstring).
        lip: target Lipschitz constant (> 0).

    The certificate is ``lipkit.lipschitz_bound(layer, 2, input_shape=...)`` computed from the actual weight.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        bias: bool = True,
        *,
        constraint: str = "spectral",
        lip: float = 1.0,
        padding_mode: str = "zeros",
        n_power_iterations: int = 2,
    ) -> None:
        if constraint not in CONV_CONSTRAINTS:
            valid = ", ".join(CONV_CONSTRAINTS)
            raise ValueError(f"unknown constraint {constraint!r}; valid constraints: {valid}")
        if not (isinstance(lip, (int, float)) and math.isfinite(lip) and lip > 0):
            raise ValueError(f"lip must be a positive finite number, got {lip!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(
                f"padding_mode {padding_mode!r} is not supported by LipConv2d (it duplicates input entries); "
                "use 'zeros' or 'circular'"
            )
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        st = (stride, stride) if isinstance(stride, int) else tuple(stride)
        if constraint == "orthogonal":
            if st != ks:
                raise ValueError(
                    f"constraint='orthogonal' is block-orthogonal and needs stride == kernel_size, "
                    f"got stride={stride!r}, kernel_size={kernel_size!r}"
                )
            if padding not in (None, 0, (0, 0), "valid"):
                raise ValueError(f"constraint='orthogonal' needs padding=0, got {padding!r}")
            padding = 0
        if padding is None:
            padding = "same" if st == (1, 1) else ((ks[0] - 1) // 2, (ks[1] - 1) // 2)
        super().__init__(
            in_channels, out_channels, ks, stride=st, padding=padding, bias=bias, padding_mode=padding_mode
        )
        self.constraint = constraint
        self.lip = float(lip)
        if constraint == "spectral":
            param = _ConvSpectral(self, lip, n_power_iterations)
            parametrize.register_parametrization(self, "weight", param)
            self.register_forward_pre_hook(_spectral_pre_hook)
        elif constraint == "aol":
            parametrize.register_parametrization(self, "weight", _ConvAOL(lip))
        else:
            param = _ConvBlockOrthogonal(tuple(self.weight.shape), lip)
            n = max(param.rows, param.cols)
            with torch.no_grad():
                init = torch.randn(n, n) * (0.5 / math.sqrt(n))
            parametrize.register_parametrization(self, "weight", param, unsafe=True)
            with torch.no_grad():
                self.parametrizations.weight.original.data = torch.triu(init, 1)
            param._registered = True

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, constraint={self.constraint!r}, lip={self.lip}"


@observer_hook
def _spectral_pre_hook(module: LipConv2d, args: tuple) -> None:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        raise ValueError(
            f"LipConv2d expects input of shape (N, C, H, W) or (C, H, W), got "
            f"{None if not isinstance(x, torch.Tensor) else tuple(x.shape)}"
        )
    if x.shape[-3] != module.in_channels:
        raise ValueError(f"LipConv2d expects {module.in_channels} input channels, got shape {tuple(x.shape)}")
    if not parametrize.is_parametrized(module, "weight"):
        return  # a copy whose weight was materialised (e.g. certify's float64 twin): nothing to track
    param = module.parametrizations.weight[0]
    param.set_input_shape(tuple(x.shape[-3:]), x.device, module.parametrizations.weight.original.dtype)


def _lip_conv_sensitivity(module: LipConv2d, r: float, g: float, shapes: dict) -> dict[str, float]:
    """The ``nn.Conv2d`` rule (``sqrt(m) G R`` for the kernel, ``m`` the largest number of patches reading one
    input entry; ``sqrt(P) G`` for the bias, ``P`` output positions), for a LipConv2d whose kernel is a plain
    parameter.  A parametrised kernel is refused (the optimiser would update the raw tensor behind the
    constraint's Jacobian; :func:`lipkit.dp.make_private` materialises and projects instead), and circular
    padding too (it reads border entries more often than the zero-padding count assumes).
    """
    if parametrize.is_parametrized(module, "weight"):
        raise UnsupportedModuleError(
            f"LipConv2d(constraint={module.constraint!r}) with a parametrised kernel: the optimiser updates "
            "parametrizations.weight.original, whose gradient passes through the constraint's Jacobian; "
            "lipkit.dp.make_private trains the deployed kernel and projects it after each step instead"
        )
    return _conv_sensitivity(module, r, g, shapes)


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_sensitivity(LipConv2d)(_lip_conv_sensitivity)
