"""Sound operator-norm bounds of convolutions, computed from the kernel.

A convolution ``y = conv(x)`` (``nn.Conv1d`` / ``nn.Conv2d``, cross-correlation as in torch) is a linear
map; this module returns *guaranteed upper bounds* of its l2, l_inf and l1 operator norms.

l2, input size known (Sedghi, Gupta & Long, ICLR 2019; Delattre et al., ICML 2023)
    * circular padding: the stride-1 map on an ``n1 x n2`` input is a (shifted) circular correlation,
      block diagonalised by the 2-D DFT, so its norm is exactly ``max_w sigma_max(K^(w))`` over the grid
      ``w = 2 pi (j1/n1, j2/n2)``, where ``K^(w) = sum_{a,b} K[:, :, a, b] e^{-i(w1 a + w2 b)}`` is a
      ``c_out x c_in`` complex matrix.
    * zero padding: the padded input has size ``N = n + pad_left + pad_right``; the map is "embed x with
      zeros, valid correlation", and a valid correlation on length ``N`` is a set of rows of the circular
      correlation on any grid ``M >= N`` (indices ``i + a <= N - 1`` never wrap).  A compression of an
      operator has a smaller norm, so the circular norm on the grid ``M = N`` (``n + k - 1`` for "same")
      is a bound (tight up to ``O(1/n^2)``).
    * stride ``s > 1``: the polyphase form (input split into its ``s1 s2`` phases: a stride-1 conv with
      ``s1 s2`` times more input channels on the grid ``ceil(N / s)``) is an exact reformulation, bounded
      the same way (keeping every ``s``-th output of the stride-1 map is also a compression).  Dilation
      ``d``: the kernel with ``d - 1`` zeros between taps.  Groups: the operator is block diagonal over
      groups, its norm is the max over groups.
    * reflect / replicate padding: ``conv = valid_conv o P`` with ``P`` the padding map; ``P^T P`` is
      diagonal with the multiplicity of each input entry, so ``||P||_2 = sqrt(max multiplicity)``.
    * per frequency, ``sigma_max`` is bounded by Gram iteration: ``G_0 = A``, ``G_{t+1} = G_t^H G_t``, so
      ``sigma_max(A)^{2^t} = ||G_t||_2 <= ||G_t||_F``; each ``G_t`` is rescaled to unit Frobenius norm and
      the log-scale is carried separately (no overflow).  Round-off is tracked a posteriori: with ``e_t``
      the relative Frobenius error of ``G_t``,
      ``e_{t+1} <= ((2 + e_t) e_t + gamma_n) ||G_t||_F^2 / ||G_{t+1}||_F`` (``gamma_n = 4 (n + 2) eps64``
      for a complex inner product of length ``n``); the DFT is a direct sum whose entry error is below
      ``(2T + 40) eps64 sum_t |K_t|`` (phases included); both are added to the result.

    * small inputs (``c_in h w <= exact_max_dim``): also the explicit matrix of the map and its largest
      singular value (SVD, rounded up), which removes the ``O(1/n^2)`` zero-padding gap.
    * always also the size-free bounds below (the minimum of all is returned).

l2, no input size: a bound valid for EVERY input size, the minimum of
    * ``sup_{w in torus} sigma_max(K^(w))`` (it dominates every grid above), bounded from a grid of
      ``N1 x N2`` frequencies: for a unit ``u``, ``q(w) = u^H K^(w)^H K^(w) u >= 0`` is a trigonometric
      polynomial of degree ``d_j = k_j - 1`` in ``w_j``.  Take ``w*`` maximising ``lambda_max`` (value
      ``S``) and ``u`` its eigenvector; on the segment to the nearest grid point ``w0``, Bernstein's
      inequality for functions of exponential type gives ``|q''| <= (d1|v1| + d2|v2|)^2 S``, and
      ``q'(w*) = 0``, hence ``max_grid lambda_max >= q(w0) >= S (1 - theta^2 / 2)`` with
      ``theta = pi (d1/N1 + d2/N2)``, i.e. ``sup sigma_max <= max_grid sigma_max / sqrt(1 - theta^2/2)``;
    * ``sqrt(kh kw) ||[K_1, ..., K_T]||_2`` and ``sqrt(kh kw) ||[K_1; ...; K_T]||_2`` (the two reshapes:
      ``K^(w) = [K_1 ... K_T] (phases (x) I)`` and the phase column has norm ``sqrt(T)``);
    * when ``stride >= dilated kernel size`` (non-overlapping patches): the patch map is block diagonal
      with blocks ``reshape(K) = [K_1, ..., K_T]``, so its norm is ``||reshape(K)||_2`` (times ``||P||``).

l_inf and l1 (exact for zero padding on large enough inputs): ``l_inf``: max over output channels of
``sum |K[o]|`` (the max row l1 norm; valid for every padding and stride by the triangle inequality);
``l1``: max over input channels of ``sum_{o, a, b} |K[o, c, a, b]|`` times the padding multiplicity.

Note: ``torch.nn.utils.spectral_norm`` on a conv normalises ``||reshape(K)||_2`` (power iteration on the
``c_out x c_in k k`` matrix), which is *not* a bound of the convolution operator: it is typically well
below it (~20-50% for random 3x3 kernels); see ``reshaped_kernel_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lipkit.bounds.numerics import EPS64, as_float64, norm_order, normalize_p, operator_norm, round_up
from lipkit.bounds.registry import UnsupportedModuleError, register_bound

__all__ = [
    "conv_operator_norm",
    "conv_module_norm",
    "gram_spectral_bound",
    "reshaped_kernel_norm",
]

_PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
#: default flop budget of one frequency grid (set ``lipkit.bounds.conv.CONV_NORM_BUDGET`` to trade time for
#: tightness: a coarser grid means a larger Bernstein factor in the size-free bound).
CONV_NORM_BUDGET = 1e10
_CHUNK_ENTRIES = 4_000_000  # complex entries per chunk of per-frequency matrices (~64 MB)


# --------------------------------------------------------------------------- Gram iteration


def gram_spectral_bound(a: torch.Tensor, n_iter: int = 6) -> torch.Tensor:
    """Guaranteed upper bound of ``sigma_max`` of each matrix of a batch ``a`` (``(..., m, n)``).

    Gram iteration (Delattre et al., ICML 2023): ``sigma_max(A)^{2^t} <= ||G_t||_F`` with
    ``G_{t+1} = G_t^H G_t``, rescaled at every step; float64; the round-off of every product is
    tracked (see the module docstring) and added, so the result dominates the exact ``sigma_max`` of
    the given (float64) matrices.
    """
    if a.dim() < 2:
        raise ValueError(f"gram_spectral_bound expects (..., m, n) matrices, got shape {tuple(a.shape)}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    g = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
    batch = g.shape[:-2]
    g = g.reshape(-1, *g.shape[-2:])
    if g.shape[-2] > g.shape[-1]:
        g = g.mH  # same singular values, smaller Gram matrix
    if not torch.isfinite(g.abs()).all():
        return torch.full(batch, math.inf, dtype=torch.float64)
    f0 = torch.linalg.matrix_norm(g, ord="fro")
    zero = f0 == 0
    f0 = torch.where(zero, torch.ones_like(f0), f0)
    g = g / f0[:, None, None].to(g.dtype)
    r = torch.log(f0)
    e = torch.full_like(f0, 4 * EPS64)
    for _ in range(n_iter):
        n_inner = g.shape[-2]
        gamma = 4.0 * (n_inner + 2) * EPS64
        gn = torch.linalg.matrix_norm(g, ord="fro")
        h = g.mH @ g
        f = torch.linalg.matrix_norm(h, ord="fro")
        rho = gn * gn / f * (1.0 + 8 * EPS64)
        g = h / f[:, None, None].to(h.dtype)
        logf = torch.log(f)
        r = 2.0 * r + logf
        # products, division by f, and rounding of the carried log-scale r (relative, ~ eps |r|)
        e = ((2.0 + e) * e + gamma) * rho + 4 * EPS64 * (r.abs() + logf.abs() + 2.0)
    scale = 2.0**n_iter
    out = torch.exp(r / scale) * torch.exp(torch.log1p(e) / scale)
    # exp/log round-off: relative error below (|r| / 2^T + 8) * few eps
    out = out * (1.0 + (4 * n_iter + 16) * EPS64 * (r.abs() / scale + 8.0))
    out = torch.where(zero, torch.zeros_like(out), out)
    return out.reshape(batch)


# --------------------------------------------------------------------------- kernel helpers


def _pair(v: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * dims
    t = tuple(int(x) for x in v)
    if len(t) != dims:
        raise ValueError(f"{name} must be an int or a tuple of {dims} ints, got {v!r}")
    return t


def _pads(padding, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    dims = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * dims
        if padding == "same":
            out = []
            for k, d in zip(kernel, dilation, strict=True):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return out
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid'; got {padding!r}")
    p = _pair(padding, dims, "padding")
    if any(x < 0 for x in p):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return [(x, x) for x in p]


def _multiplicity(mode: str, n: int | None, left: int, right: int) -> int:
    """Max number of times one input entry appears in the padded signal (one dimension)."""
    if mode == "zeros" or (left == 0 and right == 0):
        return 1
    if n is None:  # worst case over all sizes the padding accepts
        if mode == "reflect":
            return 1 + (left > 0) + (right > 0)
        return 1 + left + right  # replicate (n = 1), circular (pads up to n)
    idx = torch.arange(-left, n + right)
    if mode == "reflect":
        if left >= n or right >= n:
            raise ValueError(f"reflect padding ({left}, {right}) needs input size > padding, got {n}")
        src = torch.where(idx < 0, -idx, torch.where(idx >= n, 2 * (n - 1) - idx, idx))
    elif mode == "replicate":
        src = idx.clamp(0, n - 1)
    else:
        src = idx.remainder(n)
    return int(torch.bincount(src, minlength=n).max().item())


def _prepare(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Kernel as (groups, c_out/g, c_in/g, kh, kw) float64 (conv1d gets kh = 1)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in (3, 4):
        raise ValueError(
            f"conv weight must have shape (c_out, c_in/groups, k) or (c_out, c_in/groups, kh, kw), "
            f"got {tuple(weight.shape)}"
        )
    if not (weight.is_floating_point()):
        raise TypeError(f"conv weight must be floating point, got dtype {weight.dtype}")
    w = weight.detach().to("cpu", torch.float64)
    if w.dim() == 3:
        w = w[:, :, None, :]
    c_out = w.shape[0]
    if groups < 1 or c_out % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide out_channels={c_out}")
    return w.reshape(groups, c_out // groups, *w.shape[1:])


def _dilate(w: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    dh, dw = dilation
    if dh == 1 and dw == 1:
        return w
    kh, kw = w.shape[-2:]
    out = w.new_zeros(*w.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[..., ::dh, ::dw] = w
    return out


def _grid_bound(w: torch.Tensor, grid: tuple[int, int], n_iter: int) -> float:
    """Sound bound of max over the (n1, n2) frequency grid of sigma_max(K^(w)), for every group."""
    n1, n2 = grid
    g, co, ci, kh, kw = w.shape
    taps = kh * kw
    j1 = torch.arange(n1)
    j2 = torch.arange(n2 // 2 + 1)  # real kernel: K^(-w) = conj K^(w), same singular values
    freqs = torch.stack(torch.meshgrid(j1, j2, indexing="ij"), dim=-1).reshape(-1, 2)
    a = torch.arange(kh).repeat_interleave(kw)
    b = torch.arange(kw).repeat(kh)
    kmat = w.permute(3, 4, 0, 1, 2).reshape(taps, g * co * ci).to(torch.complex128)
    chunk = max(1, _CHUNK_ENTRIES // max(1, g * co * ci))
    best = 0.0
    for start in range(0, freqs.shape[0], chunk):
        f = freqs[start : start + chunk]
        # integer phase reduction first: angle = 2 pi ((j1 a) mod n1 / n1 + (j2 b) mod n2 / n2)
        ph = (f[:, :1] * a[None, :]).remainder(n1).double() / n1 + (f[:, 1:] * b[None, :]).remainder(
            n2
        ).double() / n2
        phase = torch.polar(torch.ones_like(ph), -2 * math.pi * ph)
        mats = (phase @ kmat).reshape(-1, g, co, ci).reshape(-1, co, ci)
        best = max(best, gram_spectral_bound(mats, n_iter).max().item())
    # DFT round-off (direct sums of `taps` products, phases with error ~ 20 eps): per entry
    # <= (2 taps + 40) eps sum_t |K_t[o, c]|
    s = w.abs().sum(dim=(-1, -2))
    dft_err = max((2 * taps + 40) * EPS64 * torch.linalg.matrix_norm(s, ord="fro").max().item(), 0.0)
    return round_up(best + dft_err, 4)


def _reshape_bounds(w: torch.Tensor) -> tuple[float, float]:
    """(||[K_1..K_T]||_2, ||[K_1; ..; K_T]||_2) maximised over groups, sound (SVD rounded up)."""
    g, co, ci, kh, kw = w.shape
    wide = max(operator_norm(w[i].reshape(co, ci * kh * kw), 2) for i in range(g))
    tall = max(operator_norm(w[i].permute(2, 3, 0, 1).reshape(kh * kw * co, ci), 2) for i in range(g))
    return wide, tall


# --------------------------------------------------------------------------- public API


def reshaped_kernel_norm(weight: torch.Tensor) -> float:
    """``||weight.reshape(c_out, -1)||_2``: what ``torch.nn.utils.spectral_norm`` normalises.

    NOT a bound of the convolution's operator norm (usually well below it); the true norm lies in
    ``[reshaped / sqrt(kh kw) ... , sqrt(kh kw) * reshaped]`` only up to these factors.
    """
    return torch.linalg.matrix_norm(weight.detach().double().reshape(weight.shape[0], -1), ord=2).item()


def conv_operator_norm(
    weight: torch.Tensor,
    input_size: int | Sequence[int] | None = None,
    *,
    p: float | int | str = 2,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    n_iter: int = 6,
    exact_max_dim: int = 1024,
    grid: int | None = None,
    budget: float | None = None,
    _pads_override: list[tuple[int, int]] | None = None,
) -> float:
    """Sound upper bound of the l_p operator norm of a conv1d / conv2d with kernel ``weight``.

    Args:
        weight: ``(c_out, c_in/groups, k)`` or ``(c_out, c_in/groups, kh, kw)``.
        input_size: spatial size of the input (``n`` or ``(h, w)``); ``None`` gives a bound valid for every
            input size (see the module docstring for the math).
        p: 2, inf or 1 (same norm on inputs and outputs, all channels and positions flattened).
        stride, padding, dilation, groups, padding_mode: as in ``torch.nn.Conv2d``.
        n_iter: Gram iterations per frequency (6: within ~0.1% for typical kernels).
        exact_max_dim: with a known input size of at most this many entries (``c_in h w``), also build the
            explicit matrix of the map and take its (rounded-up) largest singular value: exact, and tighter
            than the Fourier bound on small inputs (zero padding loses ``O(1/n^2)``).  0 disables it.
        grid: frequencies per dimension for the size-free bound (default: the finest of 64, 48, ..., 8 within
            ``budget``, at least ``2 k``).
        budget: flop budget of one frequency grid; a known-size grid above it is replaced by the
            size-free bound, whose grid is the finest within the budget (coarser grid: larger
            Bernstein factor).  Default: the module variable ``CONV_NORM_BUDGET`` (1e10, a few seconds
            on one core).

    Returns:
        ``L`` with ``||conv(x) - conv(y)||_p <= L ||x - y||_p`` (bias cancels).
    """
    p = normalize_p(p)
    budget = CONV_NORM_BUDGET if budget is None else float(budget)
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; use one of {_PADDING_MODES}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    one_d = weight.dim() == 3
    w = _prepare(weight, groups)
    if not torch.isfinite(w).all():
        return math.inf
    dims = 1 if one_d else 2
    kernel = tuple(weight.shape[2:])
    dil = _pair(dilation, dims, "dilation")
    st = _pair(stride, dims, "stride")
    if any(x < 1 for x in dil + st):
        raise ValueError(f"stride and dilation must be >= 1, got stride={stride!r}, dilation={dilation!r}")
    pads = _pads_override if _pads_override is not None else _pads(padding, kernel, dil)
    size: tuple[int, ...] | None = None
    if input_size is not None:
        size = _pair(input_size, dims, "input_size")
        if any(x < 1 for x in size):
            raise ValueError(f"input_size must be positive, got {input_size!r}")
    if one_d:  # a conv1d is a conv2d with height 1
        dil, st, pads = (1, *dil), (1, *st), [(0, 0), *pads]
        size = None if size is None else (1, *size)
    wd = _dilate(w, dil)  # (g, co, ci, KH, KW)
    kd = tuple(wd.shape[-2:])
    if size is not None:
        for n, (pl, pr), k in zip(size, pads, kd, strict=True):
            if n + pl + pr < k:
                raise ValueError(f"input size {size} with padding {pads} is smaller than the kernel {kd}")
    mult = 1
    for j in range(2):
        mult *= _multiplicity(padding_mode, None if size is None else size[j], *pads[j])

    if p == math.inf:  # max row l1 norm, any padding / stride
        return round_up(w.abs().sum(dim=(2, 3, 4)).max().item(), w[0, 0].numel())
    if p == 1:  # max column l1 norm times the padding multiplicity
        col = w.abs().sum(dim=(1, 3, 4)).max().item()
        return round_up(col * mult, w.shape[1] * w.shape[3] * w.shape[4] + 1)

    # padding factors: ||P||_2 = sqrt(mult) for "valid conv o P"; for circular padding also the
    # circulant view, whose rows are repeated ceil(n_out / n) times per dimension (1 when
    # pad_left + pad_right <= k - 1)
    pnorm = math.sqrt(mult)
    rep = 1
    if padding_mode == "circular":
        for j, ((pl, pr), k) in enumerate(zip(pads, kd, strict=True)):
            extra = pl + pr - k + 1
            if extra > 0:
                rep *= 1 + extra if size is None else -(-(size[j] + extra) // size[j])
    pf = min(pnorm, math.sqrt(rep)) if padding_mode == "circular" else pnorm

    candidates: list[float] = []
    wide, tall = _reshape_bounds(w)
    taps = w.shape[-1] * w.shape[-2]
    candidates.append(round_up(math.sqrt(taps) * min(wide, tall) * pf, 8))
    if all(s >= k for s, k in zip(st, kd, strict=True)):  # non-overlapping patches: block diagonal
        candidates.append(round_up(wide * pnorm, 8))
    if size is not None and exact_max_dim > 0:
        n_in = w.shape[0] * w.shape[2] * size[0] * size[1]
        if n_in <= exact_max_dim:
            candidates.append(_explicit_bound(w, size, st, pads, dil, padding_mode))
    # stride 1 (also sound for stride > 1: subsampling): the known-size grid (circulant view for circular
    # padding, padded grid otherwise), or the size-free torus bound
    known = None
    if size is not None:
        if padding_mode == "circular":
            grid_n, factor = size, math.sqrt(rep)
        else:
            grid_n, factor = tuple(n + pl + pr for n, (pl, pr) in zip(size, pads, strict=True)), pnorm
        known = _known_grid_bound(wd, grid_n, n_iter, budget)
        if known is not None:
            candidates.append(round_up(known * factor, 4))
    if known is None:
        torus = _torus_bound(wd, n_iter, grid, budget)
        if torus is not None:
            candidates.append(round_up(torus * pf, 4))
    if any(x > 1 for x in st):
        candidates.extend(_strided_candidates(wd, st, pads, size, padding_mode, pnorm, n_iter, grid, budget))
    return min(candidates)


def _explicit_bound(w, size, st, pads, dil, padding_mode) -> float:
    """Largest singular value of the explicit matrix of the map (columns: images of the basis vectors).

    Each entry is a kernel entry (a sum of at most ``T`` of them when padding duplicates inputs), so the
    construction error is below ``T eps64 max_{o,c} sum_t |K_t[o, c]|`` per entry; the SVD error is covered by
    :func:`operator_norm`.
    """
    g, co, ci, kh, kw = w.shape
    kernel = w.reshape(g * co, ci, kh, kw)
    n_in = g * ci * size[0] * size[1]
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, g * ci, size[0], size[1])
    flat_pads = (pads[1][0], pads[1][1], pads[0][0], pads[0][1])
    if any(flat_pads):
        mode = "constant" if padding_mode == "zeros" else padding_mode
        basis = torch.nn.functional.pad(basis, flat_pads, mode=mode)
    out = torch.nn.functional.conv2d(basis, kernel, stride=st, dilation=dil, groups=g)
    mat = out.reshape(n_in, -1).T
    if mat.numel() == 0:
        return 0.0
    err = kh * kw * EPS64 * math.sqrt(mat.numel()) * w.abs().sum(dim=(-1, -2)).max().item()
    return round_up(operator_norm(mat, 2) + err, 2)


def _work(w: torch.Tensor, grid: tuple[int, int], n_iter: int) -> float:
    """Rough flop count of :func:`_grid_bound`."""
    g, co, ci, kh, kw = w.shape
    m, n = sorted((co, ci))
    nf = grid[0] * (grid[1] // 2 + 1)
    return 8.0 * nf * g * (m * m * n + n_iter * m**3 + co * ci * kh * kw)


def _known_grid_bound(w: torch.Tensor, grid_n: tuple[int, int], n_iter: int, budget: float) -> float | None:
    grid_n = tuple(max(g, k) for g, k in zip(grid_n, w.shape[-2:], strict=True))
    if _work(w, grid_n, n_iter) > budget:
        return None
    return _grid_bound(w, grid_n, n_iter)


def _torus_bound(w: torch.Tensor, n_iter: int, grid: int | None, budget: float) -> float | None:
    """Sound bound of ``sup_{w in torus} sigma_max(K^(w))``: grid maximum times the Bernstein factor.

    The finest grid (per dimension ``N`` in 64, 48, ..., 8, at least ``2 k``) within ``budget`` flops is used;
    ``grid`` forces one size.  Returns ``None`` if no grid fits.
    """
    kd = tuple(w.shape[-2:])
    for size in [grid] if grid else [64, 48, 32, 24, 16, 12, 8]:
        ns = tuple(1 if k == 1 else max(size, 2 * k) for k in kd)
        theta = math.pi * sum((k - 1) / n for k, n in zip(kd, ns, strict=True))
        if theta * theta / 2 >= 0.5:
            return None
        if grid or _work(w, ns, n_iter) <= budget:
            gb = _grid_bound(w, ns, n_iter)
            return round_up(gb / math.sqrt(1.0 - theta * theta / 2), 16)
    return None


def _polyphase(wd: torch.Tensor, st: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """Kernel of the stride-1 conv on the s1 s2 polyphase components of the input.

    ``y[i] = sum_a K[a] x[s i + a]``; writing ``a + off = s a' + r`` and ``x'_r[j] = x[s j + r - off]`` gives
    ``y[i] = sum_{r, a'} K'[r, a'] x'_r[i + a']``: a stride-1 conv with ``s1 s2`` times more input channels.
    """
    g, co, ci, kh, kw = wd.shape
    (s1, s2), (o1, o2) = st, offset
    h2, w2 = -(-(kh + o1) // s1), -(-(kw + o2) // s2)
    k = wd.new_zeros(g, co, ci, h2 * s1, w2 * s2)
    k[..., o1 : o1 + kh, o2 : o2 + kw] = wd
    k = k.reshape(g, co, ci, h2, s1, w2, s2).permute(0, 1, 2, 4, 6, 3, 5)
    return k.reshape(g, co, ci * s1 * s2, h2, w2)


def _strided_candidates(wd, st, pads, size, padding_mode, pnorm, n_iter, grid, budget) -> list[float]:
    """Bounds of a strided conv through its polyphase (stride-1) form (an exact reformulation)."""
    out: list[float] = []
    kd = tuple(wd.shape[-2:])
    # view "valid conv o P": polyphase of the padded signal, coarse length ceil(N / s)
    wp = _polyphase(wd, st, (0, 0))
    found = False
    if size is not None:
        if padding_mode == "circular" and all(n % s == 0 for n, s in zip(size, st, strict=True)):
            off = tuple((-pl) % s for (pl, _), s in zip(pads, st, strict=True))
            wc = _polyphase(wd, st, off)
            coarse = tuple(n // s for n, s in zip(size, st, strict=True))
            rep = 1
            for n, (pl, pr), k, s, c in zip(size, pads, kd, st, coarse, strict=True):
                n_out = (n + pl + pr - k) // s + 1
                rep *= -(-n_out // c)
            b = _known_grid_bound(wc, coarse, n_iter, budget)
            if b is not None:
                out.append(round_up(b * math.sqrt(rep), 4))
                found = True
        else:
            grid_n = tuple(-(-(n + pl + pr) // s) for n, (pl, pr), s in zip(size, pads, st, strict=True))
            b = _known_grid_bound(wp, grid_n, n_iter, budget)
            if b is not None:
                out.append(round_up(b * pnorm, 4))
                found = True
    if not found:
        b = _torus_bound(wp, n_iter, grid, budget)
        if b is not None:
            out.append(round_up(b * pnorm, 4))
    return out


def conv_paddings(module: nn.Module) -> list[tuple[int, int]]:
    """``(left, right)`` padding per spatial dimension of a conv, as its forward applies it (``"same"``
    padding can be asymmetric)."""
    rev = list(module._reversed_padding_repeated_twice)
    return [(int(rev[2 * i]), int(rev[2 * i + 1])) for i in range(len(rev) // 2)][::-1]


def conv_module_norm(
    module: nn.Module, p: float | int | str = 2, input_size: Sequence[int] | None = None, **kwargs
) -> float:
    """:func:`conv_operator_norm` of an ``nn.Conv1d`` / ``nn.Conv2d`` (its actual current weight)."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"conv_module_norm expects nn.Conv1d or nn.Conv2d, got {type(module).__name__}")
    pads = conv_paddings(module)
    return conv_operator_norm(
        module.weight,
        input_size,
        p=p,
        stride=module.stride,
        dilation=module.dilation,
        groups=module.groups,
        padding_mode=module.padding_mode,
        _pads_override=pads,
        **kwargs,
    )


def _conv_mixed_norm(module: nn.Module, p: float, q: float) -> float | None:
    """Exact-entry bounds of a zero-padded convolution ``T`` between different norms, or None.

    Every entry of ``T`` is a kernel tap or 0 (zero padding: an output never reads one input twice), so
    ``||T||_{1->inf} = max |T_ij| <= max |K|``; a row of ``T`` holds (part of) one output channel's kernel,
    so ``||T||_{2->inf} = max row l2 <= max_o ||K[o]||_2``; a column holds the taps that read one input
    entry, at most each tap of the kernels that read its channel once, so
    ``||T||_{1->2} = max column l2 <= max_c ||K[:, c]||_2`` (over the output channels of ``c``'s group).
    """
    if module.padding_mode != "zeros":
        return None
    w = as_float64(module.weight)
    if not torch.isfinite(w).all():
        return math.inf
    if (p, q) == (1.0, math.inf):
        return w.abs().max().item()
    if (p, q) == (2.0, math.inf):
        return round_up(w.flatten(1).norm(dim=1).max().item(), 2 * w[0].numel())
    if (p, q) == (1.0, 2.0):
        # column of input channel g * c_in_g + c: taps of the out channels of group g reading channel c
        groups, c_out = module.groups, w.shape[0]
        per_group = w.reshape(groups, c_out // groups, *w.shape[1:])
        col = per_group.transpose(1, 2).flatten(2).norm(dim=2)  # (groups, c_in per group)
        return round_up(col.max().item(), 2 * per_group[0, :, 0].numel())
    return None


def _conv_rule(module: nn.Module, p: float, shapes: dict, q: float | None = None) -> float:
    q = p if q is None else q
    if p != q:
        exact = _conv_mixed_norm(module, p, q)
        if exact is not None:
            return exact
        if norm_order(p) > norm_order(q):
            raise UnsupportedModuleError(f"{type(module).__name__}: no l_{p:g} -> l_{q:g} bound")
        return min(_conv_rule(module, p, shapes), _conv_rule(module, q, shapes))
    shape = shapes.get(module)
    size = tuple(shape[2:]) if shape is not None and len(shape) >= 3 else None
    try:
        return conv_module_norm(module, p, size)
    except ValueError as exc:  # e.g. unsupported norm pair: report as unsupported
        raise UnsupportedModuleError(f"{type(module).__name__}: {exc}") from exc


register_bound(nn.Conv1d, nn.Conv2d, subclasses=True, mixed_norms=True)(_conv_rule)
