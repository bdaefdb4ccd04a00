"""Memory-bounded CPU kernels for l_inf-distance, l_p-distance and SortNet neurons.

For an input batch ``x`` of shape ``(B, n)`` and weights ``w`` of shape ``(m, n)`` the neurons are

* l_inf-distance (Zhang et al., ICML 2021):  ``y[b, o] = max_i |x[b, i] - w[o, i]|``;
* l_p-distance (its smooth relaxation, used early in training): ``y[b, o] = ||x[b] - w[o]||_p``;
* SortNet (Zhang, Jiang, He, Wang, NeurIPS 2022): ``y[b, o] = sum_{k<K} c_k d_(k)`` where
  ``d_(0) >= d_(1) >= ...`` are the sorted ``|x[b, i] - w[o, i]|`` and ``c_k >= 0``, ``sum c_k = 1``.

The obvious implementation broadcasts a ``B x m x n`` tensor and lets autograd keep it (and
several same-sized intermediates) for the backward pass: gigabytes per layer and minutes per
epoch on a CPU.  These kernels never form it.  They keep only what the backward pass needs (for
l_inf the argmax index and sign: ``B x m`` integers; for SortNet ``B x m x K``; for l_p nothing but
the inputs, whose differences the backward recomputes) and scatter the gradient:

    grad_x[b, i*] += g[b, o] * s[b, o],   grad_w[o, i*] -= g[b, o] * s[b, o],
    with i* = argmax_i |x[b, i] - w[o, i]| and s = sign(x[b, i*] - w[o, i*]).

Ties: the kernels pick the first maximal index (deterministic, on both backends and for any
number of threads), so exactly one coordinate receives the gradient.  That is an element of the
Clarke subdifferential of the max (a convex combination of the tied coordinates' gradients with
weight 1 on one of them); when the maximal distance is 0 the sign is 0 and the gradient is 0, also
a valid subgradient.  For SortNet the order statistics are taken from a *stable* descending sort
(equal distances in increasing index order), which fixes which coordinate each ``c_k`` goes to.
``linf_dist_reference(..., ties="first")`` and ``sort_dist_reference`` follow the same rules.

Two backends compute the same functions with the same tie rule:

* ``"native"``: C++ kernels (:mod:`lipkit.nn.distance.native`, compiled on first use with the
  system compiler, cached, multi-threaded with ``torch.get_num_threads()`` threads).  The l_inf
  forward puts pairs on the vector lanes: one operand is packed, a panel of rows at a time, so that
  a vector holds one coordinate of 16 (float32, AVX-512) rows, and the other operand's coordinate
  is broadcast; each lane's running maximum is checked at the end of every chunk of 32
  coordinates, and a scan of the chunk where it last rose gives the first maximal index.  Memory:
  ``B x m`` outputs and int32 codes (index and sign) plus a ``threads x 64 x n`` panel buffer.
  SortNet keeps each lane's ``K`` largest distances in a branch-free insertion network
  (``K <= NATIVE_MAX_K``); the l_p relaxation runs natively for integer ``p`` (powers by repeated
  squaring, a register tile at a time).
* ``"torch"``: pure torch ops over blocks with one reusable scratch buffer of at most
  ``budget_bytes`` (default 8 MiB) and ``scatter_add_`` backwards; no compiler needed, the
  fallback everywhere (and for dtypes other than float32/float64, or non-CPU tensors).

``backend="auto"`` (default) uses the native kernels for float32/float64 CPU tensors when they
are available and the torch kernels otherwise; pass ``backend=`` to a function, call
:func:`set_backend`, use :func:`use_backend` as a context manager, or set the environment
variable ``LIPKIT_DISTANCE_BACKEND`` (``auto`` / ``native`` / ``torch``).

``*_reference`` functions give the naive broadcast versions, used by the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from lipkit.nn.distance import native as distance_native

__all__ = [
    "linf_dist",
    "masked_linf_dist",
    "grouped_masked_linf_dist",
    "lp_dist",
    "sort_dist",
    "sortnet_coefficients",
    "chunk_plan",
    "linf_dist_reference",
    "lp_dist_reference",
    "sort_dist_reference",
    "DEFAULT_BUDGET_BYTES",
    "NATIVE_MAX_K",
    "BACKENDS",
    "set_backend",
    "get_backend",
    "use_backend",
    "native_available",
]

#: Size of the one scratch buffer used by the kernels (bytes).
DEFAULT_BUDGET_BYTES = 8 * 2**20

#: Largest number of order statistics the native SortNet kernel keeps (larger K: torch kernel).
NATIVE_MAX_K = 64

#: Backend names accepted by ``backend=`` and :func:`set_backend`.
BACKENDS = ("auto", "native", "torch")
_NATIVE_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
#: the default backend of the current context (thread, task); None: read LIPKIT_DISTANCE_BACKEND
_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("lipkit_distance_backend", default=None)


# --------------------------------------------------------------------------- backend selection


def _valid_backend(name: object, where: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"unknown distance-kernel backend {name!r} ({where}); use one of {BACKENDS}")
    return name.strip().lower()


def get_backend() -> str:
    """The default backend: set by :func:`set_backend`, else ``$LIPKIT_DISTANCE_BACKEND``, else ``"auto"``."""
    chosen = _BACKEND.get()
    if chosen is not None:
        return chosen
    env = os.environ.get("LIPKIT_DISTANCE_BACKEND")
    return _valid_backend(env, "environment variable LIPKIT_DISTANCE_BACKEND") if env else "auto"


def set_backend(name: str | None) -> None:
    """Set the default backend (``"auto"``, ``"native"``, ``"torch"``; ``None``: back to the environment).

    The setting belongs to the current context (a ``contextvars`` variable): other threads and asyncio
    tasks, e.g. the ranks of a multi-process run or a second model served in another thread, keep theirs.
    """
    _BACKEND.set(None if name is None else _valid_backend(name, "set_backend"))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed kernels with backend ``name``."""
    token = _BACKEND.set(_valid_backend(name, "use_backend"))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def native_available() -> bool:
    """Whether the native kernels are built and loaded (builds them on first call)."""
    return distance_native.load() is not None


def _native(x: torch.Tensor, backend: str | None, name: str):
    """The native library if ``backend`` selects it for ``x``, else ``None`` (torch kernels)."""
    choice = get_backend() if backend is None else _valid_backend(backend, name)
    if choice == "torch":
        return None
    supported = x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES
    if choice == "auto":
        return distance_native.load() if supported else None
    if not supported:
        raise ValueError(f"{name}: the native backend supports float32/float64 CPU tensors, got {x.dtype} "
                         f"on {x.device}; use backend='torch' or 'auto'")
    lib = distance_native.load()
    if lib is None:
        raise RuntimeError(f"{name}: native backend requested but unavailable: "
                           f"{distance_native.unavailable_reason()}")
    return lib


def _fn(lib, op: str, dtype: torch.dtype):
    return getattr(lib, f"lk_{op}_{_NATIVE_DTYPES[dtype]}")


def _nthreads() -> int:
    return max(1, torch.get_num_threads())


def _native_forward(lib, op: str, x: torch.Tensor, w: torch.Tensor, k: int, want_code: bool,
                    coeffs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``lk_linf_forward`` (k = 1) or ``lk_topk_forward``: values and, if asked, int32 codes."""
    bsz, n = x.shape
    m = w.shape[0]
    if n >= 2**31 - 1:
        raise ValueError(f"{op}: in_features={n} too large for the native kernels' int32 indices")
    y = torch.empty(bsz, m, dtype=x.dtype)
    code = torch.empty(bsz, m, k, dtype=torch.int32) if want_code else None
    cptr = code.data_ptr() if code is not None else None
    if op == "linf_forward":
        _fn(lib, op, x.dtype)(x.data_ptr(), w.data_ptr(), bsz, m, n, None, n, y.data_ptr(), cptr, _nthreads())
    else:
        _fn(lib, op, x.dtype)(x.data_ptr(), w.data_ptr(), coeffs.data_ptr(), bsz, m, n, k, y.data_ptr(), cptr,
                              _nthreads())
    return y, code


def _native_scatter(lib, ctx, g: torch.Tensor, code: torch.Tensor, coeffs: torch.Tensor | None,
                    x_shape, w_shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_x[b, i] += s c_k g[b, o],  grad_w[o, i] -= s c_k g[b, o]  for code[b, o, k] = s (i + 1)."""
    g = g.contiguous()
    gx = torch.zeros(x_shape, dtype=g.dtype) if ctx.needs_input_grad[0] else None
    gw = torch.zeros(w_shape, dtype=g.dtype) if ctx.needs_input_grad[1] else None
    if gx is None and gw is None:
        return None, None
    bsz, m, k = code.shape
    _fn(lib, "scatter_backward", g.dtype)(
        g.data_ptr(), code.data_ptr(), None if coeffs is None else coeffs.data_ptr(), bsz, m, x_shape[1], k,
        None if gx is None else gx.data_ptr(), None if gw is None else gw.data_ptr(), _nthreads())
    return gx, gw


# --------------------------------------------------------------------------- checks and blocking


def _check(x: torch.Tensor, w: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: x and w must be tensors, got {type(x).__name__} and {type(w).__name__}")
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(
            f"{name}: expected x of shape (batch, in_features) and w of shape (out_features, in_features), "
            f"got x {tuple(x.shape)} and w {tuple(w.shape)}"
        )
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"{name}: in_features mismatch, x has {x.shape[1]} columns but w has {w.shape[1]}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name}: in_features must be positive")
    if not x.is_floating_point() or x.dtype != w.dtype:
        raise TypeError(f"{name}: x and w must share one floating dtype, got {x.dtype} and {w.dtype}")
    if x.device != w.device:
        raise ValueError(f"{name}: x is on {x.device} but w is on {w.device}")


def chunk_plan(batch: int, out_features: int, in_features: int, element_size: int,
               budget_bytes: int = DEFAULT_BUDGET_BYTES) -> tuple[int, int]:
    """Block sizes ``(batch_block, out_block)`` with ``batch_block * out_block * in_features *
    element_size <= max(budget_bytes, in_features * element_size)``.

    Whole batch rows are preferred (fewer Python iterations); the batch is split only when a
    single output neuron for the whole batch exceeds the budget.
    """
    row = max(1, in_features * element_size)
    per_out = max(1, batch) * row
    if per_out <= budget_bytes:
        return max(1, batch), max(1, min(out_features, budget_bytes // per_out))
    return max(1, min(batch, budget_bytes // row)), 1


def _blocks(x: torch.Tensor, w: torch.Tensor, budget_bytes: int):
    """Yield ``(b0, b1, o0, o1, d)`` with ``d = |x[b0:b1, None] - w[None, o0:o1]|`` in a reused buffer."""
    bsz, n = x.shape
    m = w.shape[0]
    bb, ob = chunk_plan(bsz, m, n, x.element_size(), budget_bytes)
    buf = torch.empty(bb * ob * n, dtype=x.dtype, device=x.device)
    for b0 in range(0, bsz, bb):
        b1 = min(bsz, b0 + bb)
        xb = x[b0:b1].unsqueeze(1)
        for o0 in range(0, m, ob):
            o1 = min(m, o0 + ob)
            d = buf[: (b1 - b0) * (o1 - o0) * n].view(b1 - b0, o1 - o0, n)
            torch.sub(xb, w[o0:o1].unsqueeze(0), out=d)
            d.abs_()
            yield b0, b1, o0, o1, d


def _needs_grad(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


# --------------------------------------------------------------------------- l_inf distance


def _linf_forward(x: torch.Tensor, w: torch.Tensor, budget: int, want_index: bool):
    bsz, m = x.shape[0], w.shape[0]
    y = torch.empty(bsz, m, dtype=x.dtype, device=x.device)
    idx = torch.empty(bsz, m, dtype=torch.long, device=x.device) if want_index else None
    n = x.shape[1]
    if want_index and n > 2 ** (round(-math.log2(torch.finfo(x.dtype).eps)) + 1):
        raise ValueError(f"linf_dist: in_features={n} too large for exact {x.dtype} index arithmetic")
    # descending positions n, n-1, ..., 1 as floats (exact): the first maximal index wins ties.
    rev = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device) if want_index else None
    for b0, b1, o0, o1, d in _blocks(x, w, budget):
        vals = d.amax(dim=2)  # vectorised reduction; torch.max(dim) with indices is ~8x slower on CPU
        y[b0:b1, o0:o1] = vals
        if want_index:
            # argmax without the slow indexed reduction: mark maximal entries (1.0 / 0.0) in place,
            # weight them by their descending position and take the max again.
            d.eq_(vals.unsqueeze(2)).mul_(rev)
            idx[b0:b1, o0:o1] = n - d.amax(dim=2).long()
    return y, idx


def _signed_at(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """sign(x[b, idx[b, o]] - w[o, idx[b, o]]) for an index map of shape (B, m)."""
    xg = x.gather(1, idx)
    wg = w.gather(1, idx.t().contiguous()).t()
    return torch.sign(xg - wg)


def _scatter_grads(ctx, g: torch.Tensor, idx: torch.Tensor, x_shape, w_shape):
    """grad_x[b, idx[b, j]] += g[b, j];  grad_w[o(j), idx[b, j]] -= g[b, j] (idx, g: (B, m*K))."""
    gx = gw = None
    if ctx.needs_input_grad[0]:
        gx = torch.zeros(x_shape, dtype=g.dtype, device=g.device).scatter_add_(1, idx, g)
    if ctx.needs_input_grad[1]:
        m = w_shape[0]
        bsz = idx.shape[0]
        k = idx.shape[1] // m
        idx_w = idx.view(bsz, m, k).permute(1, 0, 2).reshape(m, bsz * k)
        g_w = g.view(bsz, m, k).permute(1, 0, 2).reshape(m, bsz * k)
        gw = torch.zeros(w_shape, dtype=g.dtype, device=g.device).scatter_add_(1, idx_w, g_w.neg())
    return gx, gw


class _LinfDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, budget: int) -> torch.Tensor:
        y, idx = _linf_forward(x, w, budget, want_index=True)
        ctx.save_for_backward(idx, _signed_at(x, w, idx))
        ctx.shapes = (x.shape, w.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        idx, sgn = ctx.saved_tensors
        gx, gw = _scatter_grads(ctx, gy * sgn, idx, *ctx.shapes)
        return gx, gw, None


def _check_finite(t: torch.Tensor, what: str, name: str, lib=None) -> None:
    """Raise a ValueError naming ``what`` if ``t`` has a NaN or infinity (native scan if ``lib``)."""
    if lib is not None:
        tc = t.detach().contiguous()
        ok = bool(_fn(lib, "all_finite", t.dtype)(tc.data_ptr(), tc.numel(), _nthreads()))
    else:  # sum(t * 0) is 0 for finite t and NaN otherwise: one pass, cheaper than isfinite().all()
        ok = not bool(torch.isnan((t.detach() * 0).sum()))
    if not ok:
        raise ValueError(f"{name}: {what} contains NaN or infinite values")


class _NativeScatter(torch.autograd.Function):
    """A native forward that saved its argmax ``code``; the backward scatters ``gy`` to ``x`` and ``w``
    and returns ``None`` for the forward's other (non-tensor) inputs."""

    @staticmethod
    def _keep(ctx, y: torch.Tensor, code: torch.Tensor, lib, x: torch.Tensor, w: torch.Tensor,
              extra_inputs: int) -> torch.Tensor:
        ctx.save_for_backward(code)
        ctx.lib, ctx.shapes, ctx.extra_inputs = lib, (x.shape, w.shape), extra_inputs
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (code,) = ctx.saved_tensors
        gx, gw = _native_scatter(ctx.lib, ctx, gy, code, None, *ctx.shapes)
        return (gx, gw) + (None,) * ctx.extra_inputs


class _NativeLinfDist(_NativeScatter):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, lib) -> torch.Tensor:
        y, code = _native_forward(lib, "linf_forward", x, w, 1, want_code=True)
        return _NativeScatter._keep(ctx, y, code, lib, x, w, extra_inputs=1)


def linf_dist(x: torch.Tensor, w: torch.Tensor, *, budget_bytes: int = DEFAULT_BUDGET_BYTES,
              backend: str | None = None) -> torch.Tensor:
    """``y[b, o] = max_i |x[b, i] - w[o, i]|`` with bounded memory and a scatter backward.

    Memory: ``B x m`` outputs plus ``B x m`` saved codes (native: int32 index and sign) or indices
    and signs (torch: int64 + float, and one ``budget_bytes`` scratch buffer).
    Gradient: all of ``g[b, o]`` goes to the first maximal coordinate (see the module docstring).
    Not twice differentiable (the function is piecewise linear; its second derivative is 0 a.e.).
    ``backend``: ``"auto"`` / ``"native"`` / ``"torch"`` (default: :func:`get_backend`).
    """
    _check(x, w, "linf_dist")
    lib = _native(x, backend, "linf_dist")
    _check_finite(x, "input", "linf_dist", lib)
    _check_finite(w, "weight", "linf_dist", lib)
    x, w = x.contiguous(), w.contiguous()
    if lib is not None:
        if _needs_grad(x, w):
            return _NativeLinfDist.apply(x, w, lib)
        return _native_forward(lib, "linf_forward", x, w, 1, want_code=False)[0]
    if _needs_grad(x, w):
        return _LinfDist.apply(x, w, int(budget_bytes))
    return _linf_forward(x, w, int(budget_bytes), want_index=False)[0]


def masked_linf_dist(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, *,
                     budget_bytes: int = DEFAULT_BUDGET_BYTES, backend: str | None = None) -> torch.Tensor:
    """``y[b, o] = max_{i : mask[i]} |x[b, i] - w[o, i]|`` for a boolean ``mask`` of shape ``(n,)``.

    One mask shared by the batch and the outputs: the kept columns are gathered once and the l_inf
    kernel runs on them, so a keep rate ``q`` costs about ``q`` of the full kernel.  At least one
    entry of ``mask`` must be True.  Gradients go to the first maximal *kept* coordinate (the tie
    rule of :func:`linf_dist`).
    """
    _check(x, w, "masked_linf_dist")
    n = x.shape[1]
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (n,):
        raise ValueError(
            f"masked_linf_dist: mask must be a bool tensor of shape ({n},), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}"
        )
    return grouped_masked_linf_dist(x, w, mask.unsqueeze(0), max(1, x.shape[0]), budget_bytes=budget_bytes,
                                    backend=backend)


class _NativeGroupedMasked(_NativeScatter):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, cols: list, rows: int, lib) -> torch.Tensor:
        y, code = _native_grouped_forward(lib, x, w, cols, rows, want_code=True)
        return _NativeScatter._keep(ctx, y, code, lib, x, w, extra_inputs=3)


def _native_grouped_forward(lib, x: torch.Tensor, w: torch.Tensor, cols: list, rows: int, want_code: bool):
    """One native call per group of ``rows`` rows, each over its kept columns ``cols[g]`` (int64)."""
    bsz, n = x.shape
    m = w.shape[0]
    y = torch.empty(bsz, m, dtype=x.dtype)
    code = torch.empty(bsz, m, 1, dtype=torch.int32) if want_code else None
    fn, es, nt = _fn(lib, "linf_forward", x.dtype), x.element_size(), _nthreads()
    for g, c in enumerate(cols):
        b0 = g * rows
        nb = min(rows, bsz - b0)
        if nb <= 0:
            break
        fn(x.data_ptr() + b0 * n * es, w.data_ptr(), nb, m, n, c.data_ptr(), c.numel(),
           y.data_ptr() + b0 * m * es, None if code is None else code.data_ptr() + b0 * m * 4, nt)
    return y, code


def grouped_masked_linf_dist(x: torch.Tensor, w: torch.Tensor, masks: torch.Tensor, rows_per_mask: int, *,
                             budget_bytes: int = DEFAULT_BUDGET_BYTES, backend: str | None = None
                             ) -> torch.Tensor:
    """:func:`masked_linf_dist` with one mask per group of rows: rows
    ``[g * rows_per_mask, (g + 1) * rows_per_mask)`` use ``masks[g]`` (``masks``: bool
    ``(ceil(B / rows_per_mask), n)``, every row with at least one True).

    This is SortNet's training step (Zhang, Jiang, He, Wang 2022: one Bernoulli(q) subset per
    sub-batch).  With several groups the native backend reads the kept columns through an index
    list and runs all groups in one autograd node, so the backward is one scatter into ``grad_x``
    and ``grad_w`` instead of one weight-sized gradient per group (the torch backend gathers the
    columns of each group).
    """
    _check(x, w, "grouped_masked_linf_dist")
    bsz, n = x.shape
    if not isinstance(rows_per_mask, int) or isinstance(rows_per_mask, bool) or rows_per_mask < 1:
        raise ValueError(f"grouped_masked_linf_dist: rows_per_mask must be a positive int, "
                         f"got {rows_per_mask!r}")
    groups = max(1, -(-bsz // rows_per_mask))
    if (not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool
            or masks.shape != (groups, n)):
        raise ValueError(
            f"grouped_masked_linf_dist: masks must be a bool tensor of shape ({groups}, {n}) (one mask per "
            f"{rows_per_mask} rows), got {getattr(masks, 'dtype', type(masks).__name__)} "
            f"{tuple(getattr(masks, 'shape', ()))}"
        )
    if not bool(masks.any(dim=1).all()):
        raise ValueError("masked_linf_dist: a mask keeps no input coordinate")
    lib = _native(x, backend, "masked_linf_dist")
    if lib is None or groups == 1:  # one mask: gathering the kept columns once is fastest
        outs = []
        for g in range(groups):
            keep = masks[g].nonzero()[:, 0]
            outs.append(linf_dist(x[g * rows_per_mask:(g + 1) * rows_per_mask].index_select(1, keep),
                                  w.index_select(1, keep), budget_bytes=budget_bytes,
                                  backend="torch" if lib is None else backend))
        return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    _check_finite(x, "input", "masked_linf_dist", lib)
    _check_finite(w, "weight", "masked_linf_dist", lib)
    x, w = x.contiguous(), w.contiguous()
    cols = [mk.nonzero()[:, 0].to(torch.int64).contiguous() for mk in masks.cpu()]
    if _needs_grad(x, w):
        return _NativeGroupedMasked.apply(x, w, cols, rows_per_mask, lib)
    return _native_grouped_forward(lib, x, w, cols, rows_per_mask, want_code=False)[0]


def linf_dist_reference(x: torch.Tensor, w: torch.Tensor, *, ties: str = "split") -> torch.Tensor:
    """Naive broadcast version (``B x m x n`` memory); for tests and benchmarks.

    ``ties="split"``: ``amax``, whose autograd spreads the gradient evenly over tied maxima (the
    fastest naive form, used by the benchmark); ``ties="first"``: ``max(dim)``, whose gradient goes
    to the first maximal index -- the subgradient the fused kernels choose.
    """
    d = (x.unsqueeze(1) - w.unsqueeze(0)).abs()
    if ties == "split":
        return d.amax(dim=2)
    if ties == "first":
        return d.max(dim=2).values
    raise ValueError(f"linf_dist_reference: ties must be 'split' or 'first', got {ties!r}")


# --------------------------------------------------------------------------- l_p distance


class _Pow:
    """In-place ``t <- t ** e`` for ``t >= 0``; integer exponents by repeated squaring (vectorised
    multiplications, ~25x faster than ``pow_`` with a float exponent on CPU), others by ``pow_``."""

    def __init__(self, e: float) -> None:
        self.e = e
        self.bits = bin(int(e))[3:] if e == int(e) and 1 <= e <= 2**20 else None
        self.tmp: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return t.pow_(self.e)
        if "1" in self.bits:  # keep the base
            if self.tmp is None or self.tmp.numel() < t.numel():
                self.tmp = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
            base = self.tmp[: t.numel()].view(t.shape).copy_(t)
        for bit in self.bits:
            t.mul_(t)
            if bit == "1":
                t.mul_(base)
        return t


def _lp_values(d: torch.Tensor, p: float, power: _Pow) -> torch.Tensor:
    """||d||_p along the last axis for d >= 0, scaled by the max to avoid overflow."""
    mx = d.amax(dim=2, keepdim=True)
    safe = torch.where(mx > 0, mx, torch.ones_like(mx))
    return (power(d.div_(safe)).sum(dim=2, keepdim=True).pow_(1.0 / p) * mx).squeeze(2)


class _LpDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, p: float, budget: int) -> torch.Tensor:
        y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
        power = _Pow(p)
        for b0, b1, o0, o1, d in _blocks(x, w, budget):
            y[b0:b1, o0:o1] = _lp_values(d, p, power)
        ctx.save_for_backward(x, w, y)
        ctx.p, ctx.budget = p, budget
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        # d/dx_i ||x - w||_p = sign(x_i - w_i) (|x_i - w_i| / y)^(p-1); 0 where y = 0.
        x, w, y = ctx.saved_tensors
        p = ctx.p
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        safe_y = torch.where(y > 0, y, torch.ones_like(y))
        scale = torch.where(y > 0, gy, torch.zeros_like(gy))
        power = _Pow(p - 1)
        for b0, b1, o0, o1, a in _blocks(x, w, ctx.budget):
            sgn = torch.sign(x[b0:b1].unsqueeze(1) - w[o0:o1].unsqueeze(0))
            power(a.div_(safe_y[b0:b1, o0:o1, None])).mul_(sgn).mul_(scale[b0:b1, o0:o1, None])
            if gx is not None:
                gx[b0:b1] += a.sum(dim=1)
            if gw is not None:
                gw[o0:o1] -= a.sum(dim=0)
        return gx, gw, None, None


class _NativeLpDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, p: int, lib) -> torch.Tensor:
        y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        skip = int(distance_native.lp_skip_enabled())
        _fn(lib, "lp_forward", x.dtype)(x.data_ptr(), w.data_ptr(), x.shape[0], w.shape[0], x.shape[1], p,
                                        y.data_ptr(), skip, _nthreads())
        ctx.save_for_backward(x, w, y)
        ctx.p, ctx.lib, ctx.skip = p, lib, skip
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, w, y = ctx.saved_tensors
        gy = gy.contiguous()
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        if gx is None and gw is None:
            return None, None, None, None
        nt = _nthreads()
        # per-thread partial sums of grad_x: at most min(threads, work items) x B x n
        scratch = torch.empty(nt * x.numel() if gx is not None else 1, dtype=x.dtype)
        gx_ptr = None if gx is None else gx.data_ptr()
        gw_ptr = None if gw is None else gw.data_ptr()
        _fn(ctx.lib, "lp_backward", x.dtype)(
            x.data_ptr(), w.data_ptr(), y.data_ptr(), gy.data_ptr(), x.shape[0], w.shape[0], x.shape[1],
            ctx.p, gx_ptr, gw_ptr, scratch.data_ptr(), ctx.skip, nt)
        return gx, gw, None, None


def _native_inputs(x: torch.Tensor, w: torch.Tensor, backend: str | None, who: str,
                   unsupported: str | None) -> tuple[object, torch.Tensor, torch.Tensor]:
    """The native library for this call (None: torch kernels), and ``x``, ``w`` checked and contiguous.

    ``unsupported``: why the native kernels cannot serve this call (None if they can): an error if the
    native backend was asked for explicitly, the torch kernels otherwise.
    """
    lib = _native(x, backend, who)
    if lib is not None and unsupported is not None:
        if (backend or get_backend()) == "native":
            raise ValueError(f"{who}: {unsupported}; use backend='auto'")
        lib = None
    _check_finite(x, "input", who, lib)
    _check_finite(w, "weight", who, lib)
    return lib, x.contiguous(), w.contiguous()


def lp_dist(x: torch.Tensor, w: torch.Tensor, p: float, *,
            budget_bytes: int = DEFAULT_BUDGET_BYTES, backend: str | None = None) -> torch.Tensor:
    """``y[b, o] = ||x[b] - w[o]||_p`` for ``1 <= p < inf`` with bounded memory (``p = inf``
    dispatches to :func:`linf_dist`).  The backward recomputes the differences block by block:
    ``d y / d x_i = sign(x_i - w_i) (|x_i - w_i| / y)^(p-1)`` (0 where ``y = 0``).

    The native kernels handle integer ``p`` (8, 16, 32, ...; powers by repeated squaring);
    fractional ``p`` runs on the torch kernels (``pow`` = ``exp(p log a)``, several times slower),
    so a trainer's schedule should prefer integers.  ``backend="native"`` with a fractional ``p``
    raises."""
    _check(x, w, "lp_dist")
    p = float(p)
    if math.isnan(p) or p < 1:
        raise ValueError(f"lp_dist: p must be >= 1 (or inf), got {p}")
    if math.isinf(p):
        return linf_dist(x, w, budget_bytes=budget_bytes, backend=backend)
    integer = p == int(p) and p <= 2**30
    lib, x, w = _native_inputs(x, w, backend, "lp_dist",
                               None if integer else f"the native backend needs an integer p, got {p}")
    if lib is not None:
        if _needs_grad(x, w):
            return _NativeLpDist.apply(x, w, int(p), lib)
        with torch.no_grad():
            return _NativeLpDist.forward(_NoCtx(), x, w, int(p), lib)
    if _needs_grad(x, w):
        return _LpDist.apply(x, w, p, int(budget_bytes))
    with torch.no_grad():
        return _LpDist.forward(_NoCtx(), x, w, p, int(budget_bytes))


class _NoCtx:
    """Stand-in for an autograd context when no gradient is needed."""

    def save_for_backward(self, *args: torch.Tensor) -> None:
        pass


def lp_dist_reference(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """Naive broadcast version (``B x m x n`` memory); for tests and benchmarks."""
    return torch.linalg.vector_norm(x.unsqueeze(1) - w.unsqueeze(0), ord=p, dim=2)


# --------------------------------------------------------------------------- SortNet (top-K)


def sortnet_coefficients(q: float, n: int, k: int | None = None, *, dtype: torch.dtype = torch.float64
                         ) -> torch.Tensor:
    """Geometric weights of the SortNet neuron: ``c_j ∝ q (1 - q)^j`` for ``j < K``, summing to 1.

    ``K = min(k, n)``; ``q = 1`` gives ``c = [1]`` (the l_inf-distance neuron).  With ``K = n``
    these are exactly the probabilities that the ``j``-th largest distance is the largest one kept
    by an i.i.d. Bernoulli(q) mask, conditioned on the mask keeping something -- the identity
    behind the masked training of Zhang et al. (2022).  ``k=None`` takes the smallest ``K`` whose
    dropped tail ``(1 - q)^K`` is at most ``2^-30`` (under float32 round-off; ``K = 30`` for
    ``q = 1/2``), at most ``n``: the same function to float precision, and a top-K small enough
    for the fast kernels.  Any ``K`` gives non-negative weights summing to 1, so the neuron stays
    exactly 1-Lipschitz for l_inf.
    """
    q = float(q)
    if not (0.0 < q <= 1.0):
        raise ValueError(f"SortNet keep probability q must be in (0, 1], got {q}")
    if n < 1:
        raise ValueError(f"SortNet needs n >= 1 inputs, got {n}")
    if k is not None and k < 1:
        raise ValueError(f"SortNet needs k >= 1 order statistics, got {k}")
    if k is None:
        kk = n if q == 1.0 else min(n, max(1, math.ceil(30.0 * math.log(2.0) / -math.log1p(-q))))
    else:
        kk = min(int(k), n)
    if q == 1.0:
        kk = 1
    j = torch.arange(kk, dtype=torch.float64)
    c = q * (1.0 - q) ** j
    c = c / c.sum()
    return c.to(dtype)


class _SortDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, coeffs: torch.Tensor, budget: int) -> torch.Tensor:
        bsz, m, k = x.shape[0], w.shape[0], coeffs.numel()
        y = torch.empty(bsz, m, dtype=x.dtype, device=x.device)
        idx = torch.empty(bsz, m, k, dtype=torch.long, device=x.device)
        for b0, b1, o0, o1, d in _blocks(x, w, budget):
            # the subgradient at ties: equal distances in increasing index order (a stable sort), as
            # the native kernel.  topk's order among equal values is unspecified, so it is used only
            # when the K + 1 largest values of the block are all distinct
            kk = min(k + 1, d.shape[2])
            vals, ids = d.topk(kk, dim=2, largest=True, sorted=True)
            if kk == d.shape[2] or bool((vals[..., 1:] == vals[..., :-1]).any()):
                vals, ids = d.sort(dim=2, descending=True, stable=True)
            vals, ids = vals[..., :k], ids[..., :k]
            y[b0:b1, o0:o1] = vals @ coeffs
            idx[b0:b1, o0:o1] = ids
        idx = idx.view(bsz, m * k)
        xg = x.gather(1, idx)
        wg = w.gather(1, idx.view(bsz, m, k).permute(1, 0, 2).reshape(m, bsz * k))
        wg = wg.view(m, bsz, k).permute(1, 0, 2).reshape(bsz, m * k)
        ctx.save_for_backward(idx, torch.sign(xg - wg), coeffs)
        ctx.shapes = (x.shape, w.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        idx, sgn, coeffs = ctx.saved_tensors
        bsz, m = gy.shape
        k = coeffs.numel()
        g = (gy.unsqueeze(2) * coeffs).reshape(bsz, m * k) * sgn
        gx, gw = _scatter_grads(ctx, g, idx, *ctx.shapes)
        return gx, gw, None, None


class _NativeSortDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, coeffs: torch.Tensor, lib) -> torch.Tensor:
        y, code = _native_forward(lib, "topk_forward", x, w, coeffs.numel(), want_code=True, coeffs=coeffs)
        ctx.save_for_backward(code, coeffs)
        ctx.lib, ctx.shapes = lib, (x.shape, w.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        code, coeffs = ctx.saved_tensors
        gx, gw = _native_scatter(ctx.lib, ctx, gy, code, coeffs, *ctx.shapes)
        return gx, gw, None, None


def sort_dist(x: torch.Tensor, w: torch.Tensor, coeffs: torch.Tensor, *,
              budget_bytes: int = DEFAULT_BUDGET_BYTES, backend: str | None = None) -> torch.Tensor:
    """``y[b, o] = sum_j coeffs[j] * (j-th largest of |x[b, i] - w[o, i]|)``: exact top-K.

    Native backend (``K <= NATIVE_MAX_K``): per pair, the ``K`` largest distances are kept by
    insertion behind a vectorised threshold test; equal distances are ordered by increasing index
    (a stable descending sort), which fixes the subgradient.  Torch backend (and larger ``K``):
    blocked ``torch.topk``.  Without gradients the memory is ``B x m`` outputs (plus one scratch
    buffer for torch); with gradients the ``B x m x K`` top-K indices and signs are kept for the
    scatter backward (fine for small K; use the masked training of
    :class:`lipkit.nn.distance.layers.SortNeuronLinear` for large K).
    """
    _check(x, w, "sort_dist")
    if not isinstance(coeffs, torch.Tensor) or coeffs.dim() != 1 or not 1 <= coeffs.numel() <= x.shape[1]:
        raise ValueError(
            f"sort_dist: coeffs must be a 1-D tensor with 1..{x.shape[1]} entries, got "
            f"{tuple(getattr(coeffs, 'shape', ()))}"
        )
    coeffs = coeffs.detach().to(dtype=x.dtype, device=x.device).contiguous()
    if coeffs.numel() == 1:
        return coeffs[0] * linf_dist(x, w, budget_bytes=budget_bytes, backend=backend)
    too_many = (f"the native backend keeps at most NATIVE_MAX_K={NATIVE_MAX_K} order statistics, "
                f"got K={coeffs.numel()}") if coeffs.numel() > NATIVE_MAX_K else None
    lib, x, w = _native_inputs(x, w, backend, "sort_dist", too_many)
    if lib is not None:
        if _needs_grad(x, w):
            return _NativeSortDist.apply(x, w, coeffs, lib)
        return _native_forward(lib, "topk_forward", x, w, coeffs.numel(), want_code=False, coeffs=coeffs)[0]
    if _needs_grad(x, w):
        return _SortDist.apply(x, w, coeffs, int(budget_bytes))
    k = coeffs.numel()
    y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    for b0, b1, o0, o1, d in _blocks(x, w, int(budget_bytes)):
        vals = d.topk(k, dim=2, largest=True, sorted=True).values
        y[b0:b1, o0:o1] = vals @ coeffs
    return y


def sort_dist_reference(x: torch.Tensor, w: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Naive broadcast version (full stable sort, ``B x m x n`` memory); for tests and benchmarks.
    Equal distances keep increasing index order, the tie rule of the native kernel."""
    d = (x.unsqueeze(1) - w.unsqueeze(0)).abs().sort(dim=2, descending=True, stable=True).values
    return d[..., : coeffs.numel()] @ coeffs.to(d.dtype)
