"""Learnable Lipschitz linear-spline activations, and their frozen (exported / sparsified) form.

Ducotterd, Goujon, Bohra, Perdios, Neumayer & Unser, "Improving Lipschitz-constrained neural
networks by learning activation functions" (JMLR 2024): each channel gets its own continuous
piecewise-linear function on a uniform grid of knots, with a second-order total-variation
(TV(2)) regulariser that favours few linear pieces, and slopes kept in ``[-1, 1]`` so that the
activation is 1-Lipschitz.

Both modules here evaluate, per channel ``c``, a continuous piecewise-linear function given by knots
``T_c0 < ... < T_c(M-1)`` and values ``V_ck`` (float64 tensors computed from the module's tensors), linearly
extended outside ``[T_c0, T_c(M-1)]``.  On piece ``j`` it is ``f_c(x) = b_cj + s_cj x`` with
``s_cj = (V_c(j+1) - V_cj) / (T_c(j+1) - T_cj)``, ``b_cj = V_cj - s_cj T_cj``.  For ``x < y`` the
difference telescopes over the pieces, ``f(y) - f(x) = sum_j s_j |[x, y] cap piece_j|``, so the Lipschitz
constant of the element-wise layer is exactly ``max_{c,j} |s_cj|`` in every l_p norm; the bound rules
compute it from the float64 knots and values the forward pass uses (three float64 operations per slope,
rounded up).  The forward pass evaluates ``b_cj + s_cj x`` in the input's dtype with ``b`` and ``s``
rounded from float64; :mod:`lipkit.certify.roundoff` bounds that round-off (including the ulp-sized jumps
at the knots).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lipkit.bounds import UnsupportedModuleError, as_float64, register_bound, register_sensitivity, round_up

__all__ = ["LinearSpline", "FrozenLinearSpline", "CONSTRAINTS"]

#: how the stored coefficients are mapped to a spline with slopes in ``slope_bounds``
CONSTRAINTS = ("clamp", "project")
_INITS = ("relu", "identity", "absolute_value")


def _check_channels(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` with the channel dimension moved last, after validating it."""
    name = type(module).__name__
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"{name} expects a tensor with a channel dimension")
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point input, got dtype {x.dtype}")
    if not -x.dim() <= module.dim < x.dim():
        raise ValueError(f"{name}: dim={module.dim} is out of range for input shape {tuple(x.shape)}")
    if x.shape[module.dim] != module.num_channels:
        raise ValueError(
            f"{name}: expected {module.num_channels} channels along dim {module.dim}, got input "
            f"shape {tuple(x.shape)}"
        )
    return x.movedim(module.dim, -1)


def _pieces_of(knots: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes and intercepts ``(C, M-1)`` of the pieces through ``(knots, values)`` (float64)."""
    slopes = torch.diff(values, dim=1) / torch.diff(knots, dim=1)
    intercepts = values[:, :-1] - slopes * knots[:, :-1]
    return slopes, intercepts


def _evaluate(xf: torch.Tensor, idx: torch.Tensor, slopes: torch.Tensor,
              intercepts: torch.Tensor) -> torch.Tensor:
    """``b[c, idx] + s[c, idx] * x`` for ``xf`` of shape ``(N, C)`` with piece indices ``idx`` (N, C): two
    gathers from the ``(P, C)`` tables (backward: scatter-add), so memory and saved tensors stay
    O(N C), never O(N C P)."""
    s = slopes.t().to(xf.dtype).gather(0, idx)
    b = intercepts.t().to(xf.dtype).gather(0, idx)
    return torch.addcmul(b, s, xf)


def _max_abs_slope(knots: torch.Tensor, values: torch.Tensor) -> float:
    """Sound bound of ``max |s_cj|``: each slope is two float64 subtractions and a division."""
    k, v = as_float64(knots), as_float64(values)
    val = (torch.diff(v, dim=1).abs() / torch.diff(k, dim=1)).max().item()
    return round_up(val, 3) if math.isfinite(val) else math.inf


class LinearSpline(nn.Module):
    r"""Per-channel learnable linear spline whose slopes stay in ``slope_bounds`` (default ``[-1, 1]``).

    **Knots and coefficients.**  ``t_k = -knot_range + k h`` (``k = 0 .. K-1``, ``h = 2 knot_range /
    (K - 1)``); the learnable ``coefficients`` ``c`` (shape (C, K)) are values at the knots.

    **The slope constraint** runs inside every forward pass (so the function is admissible at every step,
    whatever the optimiser did), in float64.  With the raw slopes ``r_k = (c_{k+1} - c_k) / h`` and
    ``s_k = clamp(r_k, lo, hi)``, the constrained coefficients are ``P(c)_k = a + h sum_{i<k} s_i`` with

    * ``constraint="clamp"``: ``a`` such that ``P(c)`` keeps the value of the middle knot ``m = K // 2``;
    * ``constraint="project"`` (Ducotterd et al.'s projection): ``a = mean_k (c_k - h sum_{i<k} s_i)``,
      the least-squares choice ``argmin_a ||P(c) - c||_2`` of the offset given the clipped slopes, so
      ``mean P(c) = mean c``.  (This is the cheap projection the authors train with; the exact Euclidean
      projection onto ``{d : lo <= diff(d) / h <= hi}`` is a quadratic program and is not used.)

    Both are idempotent (``P(P(c)) = P(c)``: the slopes of ``P(c)`` are in bounds and keep their value, and
    the middle value / the mean is preserved).  Both have a zero gradient for a slope outside the bounds;
    they differ in how the level of the function follows the coefficients (one knot vs all knots).
    ``bench/splines_1d.py`` compares them on the 1-D study's validation MSE; the default is the better one
    there.  :meth:`project_` writes ``P(c)`` into the stored coefficients (optional: the forward applies
    ``P`` anyway).

    **Learnable scaling** (``learn_scale=True``): a per-channel ``alpha_c = exp(log_scale_c) > 0`` and

        sigma_c(x) = spline_c(alpha_c x) / alpha_c.

    Claim: the slopes of ``sigma_c`` are those of ``spline_c``, so the bound stays ``max |s|``.  Proof:
    ``spline_c`` is continuous piecewise linear; on the preimage of piece ``j``, ``sigma_c(x) = (v_j + s_j
    (alpha x - t_j)) / alpha = (v_j - s_j t_j) / alpha + s_j x``, a line of slope ``s_j``; equivalently
    ``sigma_c`` is the spline through knots ``t_k / alpha`` with values ``P(c)_k / alpha``, whose chord
    slopes are ``(P(c)_{k+1} - P(c)_k) / h = s_k``.  The input scaling stretches where the knots lie
    (``alpha < 1`` widens the range), the output scaling ``1 / alpha`` undoes the change of slope.

    **Bound.**  The forward evaluates the spline through the float64 knots ``T_ck = t_k / alpha_c`` and
    values ``V_ck = P(c)_ck / alpha_c``; :func:`lipkit.lipschitz_bound` returns ``max |diff V / diff T|``
    computed from them and rounded up (module docstring), for every p.  Up to float64 rounding of the
    cumulative sums that is ``max |s_k| <= max(|lo|, |hi|)``.

    **TV(2).**  :meth:`tv2` penalises the function as computed (not the stored coefficients):
    ``sum_c sum_k |S_c(k+1) - S_ck|`` with ``S`` the slopes of the spline through ``(T, V)``, which is the
    total variation of ``sigma_c'``, ``TV^(2)(sigma_c)``, as in Ducotterd et al. (scale-invariant:
    ``sigma_c'(x) = spline_c'(alpha x)``).  Where no slope is clipped it equals the paper's
    ``sum |c_{k+2} - 2 c_{k+1} + c_k| / h``.

    Args:
        num_channels: number of channels C (size of ``dim``).
        num_knots: number of knots K (>= 3).
        knot_range: knots span ``[-knot_range, knot_range]`` (before scaling).
        init: ``"relu"``, ``"identity"``, ``"absolute_value"`` or a callable ``f`` (tensor -> tensor),
            sampled at the knots; in every case the stored coefficients are then projected (``P``).
        dim: the channel dimension of the input (default 1).
        slope_bounds: ``(lo, hi)`` with ``lo <= hi``; ``(0, 1)`` gives monotone 1-Lipschitz activations.
        constraint: ``"clamp"`` or ``"project"`` (see above).
        learn_scale: learn ``log_scale`` (per channel; initialised to 0, i.e. ``alpha = 1``).
    """

    def __init__(
        self,
        num_channels: int,
        num_knots: int = 21,
        knot_range: float = 3.0,
        init: str | Callable[[torch.Tensor], torch.Tensor] = "relu",
        dim: int = 1,
        *,
        slope_bounds: tuple[float, float] = (-1.0, 1.0),
        constraint: str = "clamp",
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"LinearSpline: num_channels must be a positive int, got {num_channels!r}")
        if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < 3:
            raise ValueError(f"LinearSpline: num_knots must be an int >= 3, got {num_knots!r}")
        if not (isinstance(knot_range, (int, float)) and math.isfinite(knot_range) and knot_range > 0):
            raise ValueError(f"LinearSpline: knot_range must be a positive finite float, got {knot_range!r}")
        try:
            lo, hi = (float(v) for v in slope_bounds)
        except (TypeError, ValueError):
            raise ValueError(
                f"LinearSpline: slope_bounds must be a pair (lo, hi), got {slope_bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"LinearSpline: slope_bounds must be finite with lo <= hi, got {slope_bounds!r}")
        if constraint not in CONSTRAINTS:
            raise ValueError(f"LinearSpline: unknown constraint {constraint!r}; use one of {CONSTRAINTS}")
        if not (callable(init) or init in _INITS):
            raise ValueError(
                f"LinearSpline: unknown init {init!r}; use 'relu', 'identity', 'absolute_value' or a callable"
            )
        self.num_channels = num_channels
        self.num_knots = num_knots
        self.knot_range = float(knot_range)
        self.dim = dim
        self.init = init if isinstance(init, str) else "callable"
        self.slope_bounds = (lo, hi)
        self.constraint = constraint
        self.learn_scale = bool(learn_scale)
        self.register_buffer("knots", torch.linspace(-self.knot_range, self.knot_range, num_knots,
                                                     dtype=torch.float64))
        grid = self.knots.expand(num_channels, num_knots).clone()
        if init == "relu":
            coeffs = grid.clamp(min=0)
        elif init == "identity":
            coeffs = grid
        elif init == "absolute_value":
            coeffs = grid.abs()
        else:
            with torch.no_grad():
                coeffs = torch.as_tensor(init(grid), dtype=torch.float64)
            if coeffs.shape != grid.shape or not torch.isfinite(coeffs).all():
                raise ValueError("LinearSpline: the init function must map the knots (C, K) to finite values "
                                 f"of the same shape, got {tuple(coeffs.shape)}")
        self.coefficients = nn.Parameter(self._constrain(coeffs).to(torch.get_default_dtype()))
        zeros = torch.zeros(num_channels)
        if self.learn_scale:
            self.log_scale = nn.Parameter(zeros)
        else:
            self.register_buffer("log_scale", zeros, persistent=False)  # state dicts as before

    # ------------------------------------------------------------------ the constrained function

    @property
    def step(self) -> float:
        """Knot spacing h (before scaling)."""
        return 2.0 * self.knot_range / (self.num_knots - 1)

    def _constrain(self, c: torch.Tensor) -> torch.Tensor:
        """The slope map ``P`` (class docstring) on float64 coefficients ``(C, K)``; differentiable."""
        c = c.to(torch.float64)
        h = self.step
        lo, hi = self.slope_bounds
        s = torch.clamp(torch.diff(c, dim=-1) / h, lo, hi)
        cum = torch.cat([torch.zeros_like(c[..., :1]), torch.cumsum(s * h, dim=-1)], dim=-1)
        if self.constraint == "clamp":
            m = self.num_knots // 2
            offset = c[..., m:m + 1] - cum[..., m:m + 1]
        else:
            offset = (c - cum).mean(dim=-1, keepdim=True)
        return cum + offset

    def constrained_coefficients(self) -> torch.Tensor:
        """``P(c)``, float64 ``(C, K)``: the knot values the forward uses (before scaling)."""
        return self._constrain(self.coefficients)

    @torch.no_grad()
    def project_(self) -> LinearSpline:
        """Store ``P(c)`` in ``coefficients`` (no change of the function; idempotent)."""
        self.coefficients.copy_(self.constrained_coefficients().to(self.coefficients.dtype))
        return self

    def scale(self) -> torch.Tensor:
        """``alpha`` (float64, (C,))."""
        return torch.exp(self.log_scale.to(torch.float64))

    def knots_and_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 knots ``T = t / alpha`` and values ``V = P(c) / alpha`` (each (C, K)) of the function
        the forward evaluates; differentiable in the coefficients and the scale."""
        knots = self.knots[None, :].to(torch.float64)
        if not self.learn_scale:  # alpha = exp(0) = 1 exactly: skip the divisions
            return knots.expand(self.num_channels, -1), self.constrained_coefficients()
        alpha = self.scale()[:, None]
        return knots / alpha, self.constrained_coefficients() / alpha

    def pieces(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(T, s, b)``: float64 knots ``(C, K)``, slopes and intercepts ``(C, K-1)`` of the pieces."""
        t, v = self.knots_and_values()
        s, b = _pieces_of(t, v)
        return t, s, b

    def slopes(self) -> torch.Tensor:
        """The slopes (float64, (C, K-1)) of the function the forward pass evaluates."""
        return self.pieces()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xm = _check_channels(self, x)
        shape = xm.shape
        xf = xm.reshape(-1, self.num_channels)
        t, s, b = self.pieces()
        with torch.no_grad():
            inv_h = (self.scale() / self.step).to(x.dtype)
            idx = torch.floor((xf - t[:, 0].to(x.dtype)) * inv_h).clamp(0, self.num_knots - 2).long()
        return _evaluate(xf, idx, s, b).reshape(shape).movedim(-1, self.dim)

    def tv2(self) -> torch.Tensor:
        """``TV^(2)`` of the function as computed: ``sum_c sum_k |S_c(k+1) - S_ck|`` (class docstring)."""
        return torch.diff(self.slopes(), dim=1).abs().sum()

    def lipschitz_constant(self) -> float:
        """Sound bound of the largest |slope| of the function the forward evaluates."""
        with torch.no_grad():
            return _max_abs_slope(*self.knots_and_values())

    def slope_range(self) -> tuple[float, float]:
        """``(min slope, max slope)`` over channels and pieces, rounded outwards (monotonicity checks)."""
        with torch.no_grad():
            s = self.slopes()
        lo, hi = s.min().item(), s.max().item()
        slack = 16 * 2.0**-52  # three float64 operations per slope, with a margin
        return lo - slack * abs(lo) - 1e-300, hi + slack * abs(hi) + 1e-300

    # ------------------------------------------------------------------ frozen forms

    def freeze(self) -> FrozenLinearSpline:
        """The same function as a :class:`FrozenLinearSpline` (all knots), e.g. for export."""
        with torch.no_grad():
            t, v = self.knots_and_values()
            inv_step = self.scale() / self.step
        return FrozenLinearSpline(t, v, dim=self.dim, inv_step=inv_step)

    def sparsify(self, threshold: float = 1e-3) -> FrozenLinearSpline:
        """Collapse each channel to the knots where its slope changes by more than ``threshold``.

        Kept: the end knots and every interior knot ``k`` with ``|S_k - S_(k-1)| > threshold``; between
        two kept knots ``a < b`` the result is the chord.  Error: on ``[a, b]`` the original minus the
        chord is a sum of tents, one per dropped knot ``t`` with slope change ``d``, each of height
        ``|d| (t - a)(b - t) / (b - a) <= |d| (b - a) / 4``; outside the end knots nothing changes.  So
        ``|sparse(x) - original(x)| <= max over kept intervals of (b - a) / 4 * sum of the dropped |d| in
        it``, computed and stored as ``.tolerance`` on the result (float64 arithmetic; evaluation
        round-off comes on top).  Chord slopes are averages of the original slopes, so the bound does not
        increase.
        """
        if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
            raise ValueError(f"sparsify: threshold must be a finite number >= 0, got {threshold!r}")
        with torch.no_grad():
            t, v = self.knots_and_values()
            s = torch.diff(v, dim=1) / torch.diff(t, dim=1)
            change = torch.diff(s, dim=1).abs()  # at interior knots 1..K-2
            keep = torch.ones_like(t, dtype=torch.bool)
            keep[:, 1:-1] = change > threshold
            counts = keep.sum(dim=1)
            m = int(counts.max())
            knots = torch.empty(self.num_channels, m, dtype=torch.float64)
            values = torch.empty_like(knots)
            tol = 0.0
            for c in range(self.num_channels):  # once, at export time: not in the forward pass
                kt, kv = t[c][keep[c]], v[c][keep[c]]
                # pad beyond the last knot along the last piece: same function, same slopes
                n_pad = m - kt.numel()
                if n_pad:
                    slope = (kv[-1] - kv[-2]) / (kt[-1] - kt[-2])
                    extra = kt[-1] + (kt[-1] - kt[0] + 1.0) * torch.arange(1, n_pad + 1, dtype=torch.float64)
                    kv = torch.cat([kv, kv[-1] + slope * (extra - kt[-1])])
                    kt = torch.cat([kt, extra])
                knots[c], values[c] = kt, kv
                pos = torch.nonzero(keep[c]).flatten()
                for a, b in zip(pos[:-1].tolist(), pos[1:].tolist(), strict=True):
                    if b - a > 1:
                        dropped = change[c, a:b - 1].sum().item()
                        tol = max(tol, dropped * (t[c, b] - t[c, a]).item() / 4.0)
        out = FrozenLinearSpline(knots, values, dim=self.dim)
        out.tolerance = round_up(tol, 2 * self.num_knots) if tol > 0 else 0.0
        return out

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, num_knots={self.num_knots}, "
            f"knot_range={self.knot_range}, init={self.init!r}, dim={self.dim}, "
            f"slope_bounds={self.slope_bounds}, constraint={self.constraint!r}, "
            f"learn_scale={self.learn_scale}"
        )


class FrozenLinearSpline(nn.Module):
    """A fixed per-channel continuous piecewise-linear function (no parameters): what
    :func:`lipkit.export` and :meth:`LinearSpline.sparsify` produce.

    ``knots`` (C, M), strictly increasing per channel, and ``values`` (C, M) are float64 buffers; outside
    ``[knots[c, 0], knots[c, -1]]`` the first / last piece extends.  The forward picks the piece with
    ``searchsorted`` on the knots rounded to the input dtype and evaluates ``b + s x`` (module docstring).
    With ``inv_step`` (C,) (uniform knots ``knots[c, j] = knots[c, 0] + j / inv_step[c]``, what
    :meth:`LinearSpline.freeze` gives) it picks the piece exactly as ``LinearSpline`` does, ``floor((x -
    knots[c, 0]) inv_step[c])``, so the frozen module reproduces the spline's outputs bit for bit; the
    bound rule then checks that the knots are uniform (to ``1e-9 max |knot|``, within what the
    round-off analysis allows) and refuses otherwise.
    Its bound rule is ``max |slope|``, not the ``sum |change of slope|`` a sum-of-ReLUs form would get.
    """

    def __init__(self, knots: torch.Tensor, values: torch.Tensor, dim: int = 1,
                 inv_step: torch.Tensor | None = None) -> None:
        super().__init__()
        knots = torch.as_tensor(knots, dtype=torch.float64).detach().clone()
        values = torch.as_tensor(values, dtype=torch.float64).detach().clone()
        if knots.dim() != 2 or knots.shape != values.shape or knots.shape[1] < 2:
            raise ValueError("FrozenLinearSpline: knots and values must both have shape (C, M) with M >= 2, "
                             f"got {tuple(knots.shape)} and {tuple(values.shape)}")
        if not (torch.isfinite(knots).all() and torch.isfinite(values).all()):
            raise ValueError("FrozenLinearSpline: knots and values must be finite")
        if not (torch.diff(knots, dim=1) > 0).all():
            raise ValueError("FrozenLinearSpline: the knots of every channel must be strictly increasing")
        self.num_channels = knots.shape[0]
        self.dim = dim
        self.tolerance = 0.0
        self.register_buffer("knots", knots)
        self.register_buffer("values", values)
        if inv_step is not None:
            inv_step = torch.as_tensor(inv_step, dtype=torch.float64).detach().clone()
            ok = torch.isfinite(inv_step).all() and (inv_step > 0).all()
            if inv_step.shape != (knots.shape[0],) or not ok:
                raise ValueError("FrozenLinearSpline: inv_step must be positive and finite, one per channel")
        self.register_buffer("inv_step", inv_step)
        problem = self.uniform_problem()
        if problem is not None:
            raise ValueError(f"FrozenLinearSpline: {problem}")

    def uniform_problem(self) -> str | None:
        """Why the knots do not match ``inv_step`` (None if they do, or if there is no ``inv_step``)."""
        if self.inv_step is None:
            return None
        t = self.knots.to(torch.float64)
        j = torch.arange(t.shape[1], dtype=torch.float64)
        dev = (t - (t[:, :1] + j / self.inv_step.to(torch.float64)[:, None])).abs().max().item()
        if not dev <= 1e-9 * t.abs().max().item():
            return f"the knots are not uniform with spacing 1 / inv_step (deviation {dev:.3g})"
        return None

    def pieces(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(T, s, b)`` in float64 (see :meth:`LinearSpline.pieces`)."""
        t, v = self.knots.to(torch.float64), self.values.to(torch.float64)
        s, b = _pieces_of(t, v)
        return t, s, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xm = _check_channels(self, x)
        t, s, b = self.pieces()
        shape = xm.shape
        xf = xm.reshape(-1, self.num_channels)
        if self.inv_step is not None:  # the piece as LinearSpline picks it
            inv_h = self.inv_step.to(x.dtype)
            idx = torch.floor((xf - t[:, 0].to(x.dtype)) * inv_h).clamp(0, t.shape[1] - 2).long()
        else:
            inner = t[:, 1:-1].to(x.dtype).contiguous()
            idx = torch.searchsorted(inner, xf.t().contiguous(), right=True).t()  # inner knots <= x
        return _evaluate(xf, idx, s, b).reshape(shape).movedim(-1, self.dim)

    def lipschitz_constant(self) -> float:
        problem = self.uniform_problem()
        if problem is not None:
            raise UnsupportedModuleError(f"FrozenLinearSpline: {problem}", self)
        return _max_abs_slope(self.knots, self.values)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_knots={self.knots.shape[1]}, dim={self.dim}"


@register_bound(LinearSpline)
def _spline_rule(module: LinearSpline, p: float, shapes: dict) -> float:
    return module.lipschitz_constant()


@register_bound(FrozenLinearSpline)
def _frozen_spline_rule(module: FrozenLinearSpline, p: float, shapes: dict) -> float:
    return module.lipschitz_constant()


def constraint_jacobian_norms(module: LinearSpline) -> torch.Tensor:
    """Per channel, a bound of the spectral norm of ``J_c = dP(c)_c / dc_c`` (K x K) at the current
    coefficients, with ``J`` the Jacobian autograd uses (computed by ``torch.func``, float64)."""
    c = module.coefficients.detach().to(torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(module._constrain))(c)  # (C, K, K)
    spec = torch.linalg.matrix_norm(jac, ord=2)
    fro = torch.linalg.matrix_norm(jac, ord="fro")
    return torch.minimum(spec * (1 + 1e-9), fro * (1 + 1e-12))


def _spline_sensitivity(module: LinearSpline, r: float, g: float, shapes: dict) -> dict[str, float]:
    r"""``||dl/dc||_F <= max_c ||J_c||_2 * G * (sqrt(N) / alpha_min + 2 R / h)``; with a learnable scale,
    ``||dl/dlog_scale||_2 <= sqrt(N) * G * max_{c,j} |b_cj|``.

    Derivation (one example; ``N`` positions per channel, ``N = 1`` for a (B, C) input).  Write
    ``d = P(c)`` (the constrained coefficients).  On piece ``j`` of the unscaled spline and inside the knot
    range, ``sigma_c(x) = ((1 - w) d_j + w d_{j+1}) / alpha`` with ``w in [0, 1]``; outside (extension of
    the end piece) the weights are ``1 + a`` and ``-a`` with ``a = dist(alpha x, [t_0, t_{K-1}]) / h <=
    alpha |x| / h``.  So ``||d sigma_c(x) / d d_c||_2 <= 1 / alpha + 2 |x| / h``.  With ``Phi_c`` the
    ``N x K`` matrix of these gradients, ``dl/dd_c = Phi_c^T g_c`` and ``||Phi_c||_2 <= ||Phi_c||_F <=
    sqrt(N) / alpha_c + 2 ||x_c||_2 / h`` (Minkowski), so ``||dl/dd||_F^2 = sum_c ||dl/dd_c||^2 <=
    (sqrt(N) / alpha_min + 2 R / h)^2 sum_c ||g_c||^2``.  Finally ``dl/dc_c = J_c^T dl/dd_c``
    (:func:`constraint_jacobian_norms`; ``J`` is the identity where no slope is clipped).  For the scale:
    ``sigma_c(x) = b_cj + s_cj x`` with ``b_cj = (v_j - s_j t_j) / alpha``, so ``d sigma / d log alpha =
    -b_cj`` and ``|dl/dlog alpha_c| <= ||g_c||_1 max_j |b_cj| <= sqrt(N) ||g_c||_2 max_j |b_cj|``.
    """
    shape = shapes.get(module)
    if shape is None:
        raise UnsupportedModuleError(
            "LinearSpline: the coefficient sensitivity grows with the number of positions per channel; "
            "pass input_shape", module)
    n_pos = math.prod(shape) // (shape[0] * module.num_channels)
    with torch.no_grad():
        alpha_min = module.scale().min().item()
        jac = constraint_jacobian_norms(module).max().item()
        out = {"coefficients": round_up(jac * g * (math.sqrt(n_pos) / alpha_min + 2.0 * r / module.step), 8)}
        if module.learn_scale:
            b = module.pieces()[2].abs().max().item()
            out["log_scale"] = round_up(math.sqrt(n_pos) * g * b, 4)
    return out


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_sensitivity(LinearSpline)(_spline_sensitivity)


@register_sensitivity(FrozenLinearSpline)
def _frozen_spline_sensitivity(module: FrozenLinearSpline, r: float, g: float,
                               shapes: dict) -> dict[str, float]:
    """No trainable tensors: nothing to bound."""
    return {}
