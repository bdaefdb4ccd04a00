"""Spectral normalisation ``W -> lip * W / sigma(W)`` (Miyato et al., ICLR 2018).

``sigma`` is estimated by power iteration: ``v <- W^T u / ||W^T u||``, ``u <- W v / ||W v||``,
``sigma = u^T W v``.  The vectors ``u``, ``v`` persist as buffers (so they travel with the
``state_dict``) and are updated only in training mode, so one iteration per step suffices once
they have converged.  Power iteration *under-estimates* ``sigma`` (``u^T W v <= ||W||_2`` for unit
vectors), so the result may have norm slightly above ``lip``: certificates come from
``lipschitz_bound`` of the actual weight, never from this map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipkit.nn.parametrize.utils import check_lip, check_matrix

__all__ = ["SpectralNorm"]


class _ScaleBySigma(torch.autograd.Function):
    """``y = c W / sigma`` with ``sigma = u^T W v`` (``u``, ``v`` constants) given precomputed.

    Backward: ``dL/dW = (c / sigma) (G - (<G, W> / sigma) u v^T)``, one fused rank-1 update
    (autograd of the plain expression would make several more passes over ``W``).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                lip: float) -> torch.Tensor:
        scale = lip / sigma
        ctx.save_for_backward(weight, u, v, sigma)
        ctx.lip = lip
        return weight * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, u, v, sigma = ctx.saved_tensors
        scale = ctx.lip / sigma
        inner = torch.vdot(grad.reshape(-1), weight.reshape(-1))
        if grad.device.type == "cpu" and grad.dim() == 2:
            # one fused pass ``beta G + alpha u v^T`` (Python scalars cost no device sync on CPU)
            beta = float(scale)
            grad_w = torch.addmm(grad, u[:, None], v[None, :], beta=beta, alpha=-beta * float(inner / sigma))
        else:
            grad_w = torch.addr(grad * scale, u, v, alpha=-(scale * inner / sigma))
        return grad_w, None, None, None, None


class _SpectralLinear(torch.autograd.Function):
    """``y = (lip / sigma) x W^T + b``, ``sigma = ||W v||`` (``v`` fixed); also returns ``u = W v / sigma``.

    Backward with ``g_s = (lip / sigma) g``: ``dx = g_s W``, ``db = sum g``,
    ``dW = g_s^T x - (<g_s, x W^T> / sigma) u v^T`` (the second term is ``d sigma / d W = u v^T``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, v, lip: float, eps: float):
        out = x @ weight.t()
        wv = torch.mv(weight, v)
        sigma = torch.linalg.vector_norm(wv).clamp_min(eps)
        scale = lip / sigma
        y = torch.addcmul(bias, out, scale) if bias is not None else out * scale
        u = wv / sigma
        ctx.save_for_backward(x, weight, out, u, v, scale, sigma)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(u)
        return y, u

    @staticmethod
    def backward(ctx, grad, _grad_u):
        x, weight, out, u, v, scale, sigma = ctx.saved_tensors
        g_s = grad * scale
        grad_x = g_s @ weight if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = g_s.t() @ x
            coef = -torch.vdot(g_s.reshape(-1), out.reshape(-1)) / sigma
            if grad_w.device.type == "cpu":
                grad_w.addr_(u, v, alpha=float(coef))
            else:
                grad_w.add_(torch.outer(u, v) * coef)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


class SpectralNorm(nn.Module):
    """``W -> lip * W / (u^T W v)`` with persistent power-iteration vectors.

    Args:
        weight_or_shape: the weight (to size and warm up ``u``, ``v``) or its shape
            ``(out_features, in_features)``.
        lip: target spectral norm.
        n_power_iterations: power iterations per training forward (>= 1).
        n_init_iterations: iterations run once when ``u``, ``v`` are first used.
        n_eval_iterations: iterations run once in eval mode after the weight changed (the
            weight is fixed then, so the estimate can converge; no cost per eval batch).
        eps: guard of the vector normalisations.
    """

    def __init__(
        self,
        weight_or_shape: torch.Tensor | tuple[int, int],
        *,
        lip: float = 1.0,
        n_power_iterations: int = 1,
        n_init_iterations: int = 30,
        n_eval_iterations: int = 100,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.lip = check_lip(lip, "SpectralNorm")
        if int(n_power_iterations) < 1:
            raise ValueError(f"SpectralNorm: n_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations = int(n_power_iterations)
        self.n_init_iterations = int(n_init_iterations)
        self.eps = float(eps)
        self.n_eval_iterations = int(n_eval_iterations)
        self._refined_for: tuple[int, int] | None = None
        if isinstance(weight_or_shape, torch.Tensor):
            check_matrix(weight_or_shape, "SpectralNorm")
            shape = tuple(weight_or_shape.shape)
            dtype, device = weight_or_shape.dtype, weight_or_shape.device
        else:
            shape = tuple(int(s) for s in weight_or_shape)
            if len(shape) != 2:
                raise ValueError(f"SpectralNorm expects a 2-D weight shape, got {shape}")
            dtype, device = torch.get_default_dtype(), None
        g = torch.Generator().manual_seed(0)
        u = F.normalize(torch.randn(shape[0], generator=g, dtype=dtype), dim=0, eps=eps)
        v = F.normalize(torch.randn(shape[1], generator=g, dtype=dtype), dim=0, eps=eps)
        self.register_buffer("_u", u.to(device))
        self.register_buffer("_v", v.to(device))
        self.register_buffer("_initialized", torch.tensor(False, device=device))
        if isinstance(weight_or_shape, torch.Tensor):
            self._power_iteration(weight_or_shape, self.n_init_iterations)
            self._initialized.fill_(True)

    @torch.no_grad()
    def _power_iteration(self, weight: torch.Tensor, n: int) -> torch.Tensor:
        """Run ``n`` iterations in place on the buffers; return ``sigma = u^T W v = ||W v||``."""
        w = weight.detach()
        u, v = self._u, self._v
        if n == 0:
            return torch.dot(u, w @ v)
        for _ in range(n):
            v = torch.mv(w.t(), u)
            v = v / torch.linalg.vector_norm(v).clamp_min(self.eps)
            wv = torch.mv(w, v)
            sigma = torch.linalg.vector_norm(wv)
            u = wv / sigma.clamp_min(self.eps)
        self._u.copy_(u)
        self._v.copy_(v)
        return sigma

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_matrix(weight, "SpectralNorm")
        if weight.shape != (self._u.shape[0], self._v.shape[0]):
            raise ValueError(f"SpectralNorm was built for a weight of shape "
                             f"{(self._u.shape[0], self._v.shape[0])}, got {tuple(weight.shape)}")
        if not bool(self._initialized):
            sigma = self._power_iteration(weight, self.n_init_iterations)
            self._initialized.fill_(True)
        elif self.training:
            sigma = self._power_iteration(weight, self.n_power_iterations)
        else:
            key = (weight.data_ptr(), weight._version)
            if key != self._refined_for:
                # eval after training: the weights are fixed, so converge the estimate once
                # (one power iteration per step lags behind a moving weight, mostly below sigma)
                self._power_iteration(weight, self.n_eval_iterations)
                self._refined_for = key
            with torch.no_grad():
                sigma = torch.dot(self._u, weight.detach() @ self._v)
        # u, v are cloned: the buffers change in place at the next training step
        return _ScaleBySigma.apply(weight, self._u.clone(), self._v.clone(), sigma.clamp_min(self.eps),
                                   self.lip)

    def fused_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Training-mode ``F.linear(x, lip W / sigma, bias)`` without forming ``W / sigma``.

        ``sigma = ||W v||`` (the value :meth:`forward` computes, ``u^T W v`` with ``u = W v / ||W v||``), the
        output of the plain product is scaled by ``lip / sigma``, and :class:`_SpectralLinear` writes the
        backward by hand (the rank-1 term ``u v^T`` of ``d sigma / d W`` folded into the weight gradient, no
        extra weight-sized pass).  The next ``v`` is ``W^T u / ||W^T u||``, so per step the power iteration is
        the same as :meth:`forward`'s, half a step out of phase.  The weight the rest of lipkit sees
        (``layer.weight``, bounds, export, certificates) is unchanged: this only speeds up training steps.
        """
        flat = x.reshape(-1, weight.shape[1])
        v = self._v.to(flat.dtype, copy=True)  # saved for backward; the buffer changes in place below
        y, u = _SpectralLinear.apply(flat, weight, bias, v, self.lip, self.eps)
        with torch.no_grad():
            v_next = torch.mv(weight.detach().t(), u)
            self._u.copy_(u)
            self._v.copy_(v_next / torch.linalg.vector_norm(v_next).clamp_min(self.eps))
        return y.reshape(*x.shape[:-1], weight.shape[0])

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Store the assigned weight as is (like ``torch.nn.utils.parametrizations.spectral_norm``)."""
        return weight

    def extra_repr(self) -> str:
        return f"lip={self.lip}, n_power_iterations={self.n_power_iterations}"
