"""Orthogonal (semi-orthogonal for non-square) weights: all singular values equal to ``lip``.

A dense layer with an orthogonal weight is gradient-norm preserving (Anil, Lucas & Grosse,
"Sorting out Lipschitz function approximation", ICML 2019).  Three algorithms:

``"retraction"`` (default, :class:`Orthogonal`)
    Björck / Newton-Schulz iteration ``W <- 1.5 W - 0.5 (W W^T) W`` (Björck & Bowie 1971),
    warm-started: in training mode the forward pass runs ``train_iters`` iterations from the
    raw weight and *writes the result back into the raw weight*, and the gradient goes straight
    through to the raw weight.  An optimiser step ``W <- Q - lr g`` followed by the next
    forward's projection is then Riemannian gradient descent on the Stiefel manifold with the
    polar retraction (Absil, Mahony & Sepulchre 2008): ``polar(Q - lr g) = Q - lr P_T(g) +
    O(lr^2)`` where ``P_T`` projects onto the tangent space at ``Q``.  Because the raw weight
    never drifts more than one optimiser step from orthogonal, one iteration (quadratic
    convergence: ``|sigma - 1| -> ~1.5 |sigma - 1|^2``) keeps it orthogonal, and the step costs
    two matrix products instead of a long differentiated iteration (on CPUs with bfloat16 dot
    products, three cheap bfloat16 products: see ``precision``).  If the raw weight is far
    from orthogonal (``||W W^T - I||_inf > restart_tol``, e.g. after a user assignment) the
    full iteration is run first.
``"bjorck"`` (:class:`Orthogonal`)
    the classic differentiable map: scale by ``||W W^T||_inf^{-1/2}`` (this bounds ``sigma_max``
    by 1, so the iteration converges for every full-rank ``W``) then ``train_iters`` iterations
    through autograd (Anil et al. 2019).  Exact gradients, much slower.
``"cayley"`` (:class:`CayleyOrthogonal`)
    ``Q = (I + A)^{-1} (I - A)`` for skew ``A`` (Cayley 1846; Trockman & Kolter, ICLR 2021);
    for an m x n (m > n) semi-orthogonal weight the raw matrix ``[B; C]`` gives (with ``M = B -
    B^T + C^T C``) ``Q = [2 (I + M)^{-1} - I; -2 C (I + M)^{-1}]``, one n x n inverse; exact
    for every raw weight (``I + M`` has symmetric part ``>= I``).

In eval mode every method returns the map computed to convergence in float64 (rounded once to
the weight dtype), cached until the raw weight changes; the result is a constant (no gradient to
the raw weight).  Use ``lipkit.export`` or ``parametrize.cached()`` as usual.  Soundness never
relies on this module: ``lipschitz_bound`` measures the weight the forward pass uses.
"""

from __future__ import annotations

import torch
from torch import nn

from lipkit.nn.parametrize.utils import check_lip, check_matrix

__all__ = ["Orthogonal", "CayleyOrthogonal", "ORTHOGONAL_METHODS", "newton_schulz", "polar_factor", "cayley",
           "split_bf16_residual", "newton_schulz_bf16_step"]

ORTHOGONAL_METHODS = ("retraction", "bjorck", "cayley")


def _inf_norm(g: torch.Tensor) -> torch.Tensor:
    """Max row l1 norm (>= spectral norm)."""
    return g.abs().sum(dim=1).amax()


def _gram_residual(g: torch.Tensor) -> torch.Tensor:
    """``||G - I||_inf``: for ``G = W W^T`` it bounds ``max_i |sigma_i^2 - 1| >= max_i |sigma_i - 1|``."""
    return (g - torch.eye(g.shape[0], dtype=g.dtype, device=g.device)).abs().sum(dim=1).amax()


def _fast_bf16_cpu() -> bool:
    """True when this CPU has native bfloat16 dot products (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def split_bf16_residual(w: torch.Tensor) -> torch.Tensor:
    """``E = W W^T - I`` for a float32 wide ``W`` from bfloat16 products (no autograd).

    ``W = H + L`` with ``H = bf16(W)``, ``L = bf16(W - H)`` (together ~16 mantissa bits);
    ``W W^T ~= H H^T + H L^T + L H^T`` with float32 accumulation.  The diagonal (row norms,
    the entries of size 1 that bf16 output would round coarsely) is recomputed in float32, so
    only the small off-diagonal entries carry bf16 output rounding (relative 2^-9 of a small
    number).
    """
    hi = w.to(torch.bfloat16)
    lo = (w - hi.to(w.dtype)).to(torch.bfloat16)
    c = (hi @ lo.mT).to(w.dtype)
    e = (hi @ hi.mT).to(w.dtype)
    e += c
    e += c.mT
    e.diagonal().copy_((w * w).sum(dim=1) - 1.0)
    return e


def newton_schulz_bf16_step(w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz step ``W - 0.5 E W`` with the (small) correction ``E W`` in bfloat16:
    its relative error 2^-8 multiplies ``||E||``, so the step still reaches ``O(||E||^2 +
    2^-8 ||E||)`` from ``O(||E||)``.  No autograd."""
    return w - 0.5 * (e.to(torch.bfloat16) @ w.to(torch.bfloat16)).to(w.dtype)


def newton_schulz(w: torch.Tensor, iters: int, *, gram: torch.Tensor | None = None) -> torch.Tensor:
    """``iters`` Björck/Newton-Schulz iterations ``W <- 1.5 W - 0.5 (W W^T) W`` on a wide ``W``
    (rows <= columns); ``gram`` may supply ``W W^T`` for the first iteration.  Differentiable."""
    for k in range(iters):
        g = gram if (k == 0 and gram is not None) else w @ w.mT
        w = torch.addmm(w, g, w, beta=1.5, alpha=-0.5)
    return w


@torch.no_grad()
def polar_factor(weight: torch.Tensor, *, tol: float = 1e-13, max_iters: int = 200) -> torch.Tensor:
    """Semi-orthogonal polar factor of ``weight`` by Newton-Schulz in float64, to convergence.

    Scales by ``||W W^T||_inf^{-1/2}`` first when that norm exceeds 2 (so ``sigma_max < sqrt 3``,
    the convergence region), then iterates until ``||W W^T - I||_inf <= tol``.  Returns float64.
    A rank-deficient weight keeps its zero singular values (the iteration cannot create them).
    """
    w = weight.detach().to(torch.float64)
    tall = w.shape[0] > w.shape[1]
    if tall:
        w = w.mT
    g = w @ w.mT
    s = _inf_norm(g)
    if s > 2.0:
        w = w / s.sqrt()
        g = g / s
    for _ in range(max_iters):
        if _gram_residual(g) <= tol:
            break
        w = torch.addmm(w, g, w, beta=1.5, alpha=-0.5)
        g = w @ w.mT
    return w.mT if tall else w


def cayley(x: torch.Tensor) -> torch.Tensor:
    """Semi-orthogonal Cayley map of a raw matrix ``x`` (same shape; see the module docs)."""
    wide = x.shape[0] < x.shape[1]
    if wide:
        x = x.mT
    n = x.shape[1]
    b, c = x[:n], x[n:]
    m = b - b.mT
    if c.shape[0] > 0:
        m = m + c.mT @ c
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    r = torch.linalg.inv(eye + m)
    q = 2.0 * r - eye
    if c.shape[0] > 0:
        q = torch.cat([q, -2.0 * (c @ r)], dim=0)
    return q.mT if wide else q


class _EvalCache:
    """Caches the eval-mode weight until the raw weight changes (version counter / storage)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def get(self, raw: torch.Tensor, compute) -> torch.Tensor:
        key = (raw.data_ptr(), raw._version, tuple(raw.shape), raw.dtype, raw.device)
        if self.key != key or self.value is None:
            self.value = compute(raw.detach())
            self.key = key
        return self.value

    def __deepcopy__(self, memo: dict) -> _EvalCache:
        return _EvalCache()  # a copy has its own raw weight: never share a cached value


class Orthogonal(nn.Module):
    """``W -> lip * Q`` with ``Q`` the (semi-)orthogonal polar factor of ``W`` (Björck iteration).

    Args:
        method: ``"retraction"`` (default: warm-started, written back, straight-through
            gradient; fast) or ``"bjorck"`` (differentiated iteration from scratch; exact
            gradient, slow).  See the module docs.
        lip: all singular values of the result equal ``lip``.
        train_iters: iterations per training forward (default 1 for ``"retraction"``, 20 for
            ``"bjorck"``).
        restart_tol: ``"retraction"`` runs the full iteration when ``||W W^T - I||_inf`` exceeds
            this (far from orthogonal).
        eval_tol: convergence tolerance of the float64 eval-mode iteration.
        precision: products of the ``"retraction"`` step: ``"float32"`` (the weight's dtype),
            ``"bfloat16"`` (split-bfloat16 residual + bfloat16 correction; floor ~1e-5 on
            ``|sigma - 1|``, several times faster where the CPU has bfloat16 dot products) or
            ``"auto"`` (bfloat16 for float32 weights on such CPUs, else float32).  Eval mode is
            always float64.
    """

    def __init__(
        self,
        *,
        method: str = "retraction",
        lip: float = 1.0,
        train_iters: int | None = None,
        restart_tol: float = 0.5,
        eval_tol: float = 1e-13,
        precision: str = "auto",
    ) -> None:
        super().__init__()
        if method not in ("retraction", "bjorck"):
            hint = " (use CayleyOrthogonal for 'cayley')" if method == "cayley" else ""
            raise ValueError(f"unknown orthogonal method {method!r}{hint}; valid: {list(ORTHOGONAL_METHODS)}")
        self.method = method
        self.lip = check_lip(lip, "Orthogonal")
        if train_iters is None:
            train_iters = 1 if method == "retraction" else 20
        if int(train_iters) < 1:
            raise ValueError(f"Orthogonal: train_iters must be >= 1, got {train_iters}")
        self.train_iters = int(train_iters)
        self.restart_tol = float(restart_tol)
        self.eval_tol = float(eval_tol)
        if precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"Orthogonal: unknown precision {precision!r}; valid: 'auto', 'float32', 'bfloat16'"
            )
        self.precision = precision
        self._cache = _EvalCache()

    def _use_bf16(self, weight: torch.Tensor) -> bool:
        if self.precision == "bfloat16":
            return weight.dtype == torch.float32
        if self.precision == "auto":
            return weight.dtype == torch.float32 and weight.device.type == "cpu" and _fast_bf16_cpu()
        return False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_matrix(weight, "Orthogonal")
        if not self.training:
            q = self._cache.get(weight, lambda w: polar_factor(w, tol=self.eval_tol).to(w.dtype))
            return q * self.lip
        tall = weight.shape[0] > weight.shape[1]
        if self.method == "bjorck":
            w = weight.mT if tall else weight
            g = w @ w.mT
            scale = _inf_norm(g).detach().clamp_min(torch.finfo(w.dtype).tiny)
            q = newton_schulz(w / scale.sqrt(), self.train_iters, gram=g / scale)
            return (q.mT if tall else q) * self.lip
        with torch.no_grad():
            w = weight.mT if tall else weight
            if self._use_bf16(w):
                e = split_bf16_residual(w)
                if _inf_norm(e) > self.restart_tol:
                    q = polar_factor(w).to(w.dtype)
                else:
                    q = newton_schulz_bf16_step(w, e)
                    for _ in range(self.train_iters - 1):
                        q = newton_schulz_bf16_step(q, split_bf16_residual(q))
            else:
                g = w @ w.mT
                if _gram_residual(g) > self.restart_tol:
                    q = polar_factor(w).to(w.dtype)
                else:
                    q = newton_schulz(w, self.train_iters, gram=g)
            weight.copy_(q.mT if tall else q)
        return weight * self.lip

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Store ``weight / lip``: the forward map sends it to the polar factor of ``weight``."""
        return weight / self.lip

    def extra_repr(self) -> str:
        return f"method={self.method!r}, lip={self.lip}, train_iters={self.train_iters}"


class CayleyOrthogonal(nn.Module):
    """``W -> lip * cayley(W)``: a (semi-)orthogonal matrix for every raw ``W`` (one n x n
    inverse per training step, differentiated exactly).  The raw weight is a free parameter,
    not the weight itself (so there is no ``right_inverse``: assign the raw ``original``).

    Args:
        lip: all singular values of the result equal ``lip``.
    """

    def __init__(self, *, lip: float = 1.0) -> None:
        super().__init__()
        self.lip = check_lip(lip, "CayleyOrthogonal")
        self._cache = _EvalCache()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_matrix(weight, "CayleyOrthogonal")
        if not self.training:
            def compute(w: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    q = cayley(w.to(torch.float64))
                    return polar_factor(q).to(w.dtype)

            return self._cache.get(weight, compute) * self.lip
        return cayley(weight) * self.lip

    def extra_repr(self) -> str:
        return f"lip={self.lip}"
