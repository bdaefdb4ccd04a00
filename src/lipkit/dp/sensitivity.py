"""Per-example gradient-norm bounds of every trainable tensor of a network (the sensitivity of DP-SGD).

Bethune, Massena, Boissin, Prudent, Friedrich, Mamalet, Bellet, Serrurier & Vigouroux, "DP-SGD without
clipping: the Lipschitz neural network way" (ICLR 2024): in a network of Lipschitz layers fed inputs of
bounded norm and trained on a Lipschitz loss, one example's gradient with respect to each tensor has a
norm bound, so DP-SGD can calibrate its noise to that bound instead of clipping per-example gradients.

**Derivation.**  Write the network as a chain ``f = f_n o ... o f_1`` (an ``nn.Sequential``), ``x_i`` the
input of ``f_i``, ``z = f(x)`` the logits and ``l(z, y)`` the per-example loss.  For a tensor ``T`` of
``f_i`` the chain rule gives ``dl/dT = (d x_{i+1} / dT)^T g_i`` with ``g_i = dl/dx_{i+1}``, and the layer's
sensitivity rule (:mod:`lipkit.bounds.sensitivity`, registered next to each layer) turns bounds
``||x_i|| <= R_i`` and ``||g_i|| <= G_i`` into a bound of ``||dl/dT||_F``.  The two bounds are:

* **input side**: with ``h_i = f_{i-1} o ... o f_1`` (the prefix) and ``||x|| <= R``,
  ``||x_i|| = ||h_i(x)|| <= ||h_i(x) - h_i(0)|| + ||h_i(0)|| <= Lip(h_i) R + ||h_i(0)||``.  The offset
  ``||h_i(0)||`` is what biases (and splines with a non-zero value at 0) add; it is computed by running the
  prefix on zeros with the current weights.  An :class:`~lipkit.dp.projection.L2BallProjection` in the chain
  restarts the computation: its output has norm at most its radius whatever its input.
* **gradient side**: ``g_i = J_{f_n}^T ... J_{f_{i+1}}^T dl/dz`` and ``||J_{f_j}|| <= Lip(f_j)`` wherever the
  Jacobian exists, so ``||g_i|| <= Lip(l) prod_{j > i} Lip(f_j)`` with ``Lip(l) = loss.logit_lipschitz``
  (which may need ``||z|| <= Lip(f) R + ||f(0)||``, the output radius).

Every ``Lip`` is :func:`lipkit.lipschitz_bound` (l2) of the current weights, so the bounds are recomputed at
every step.  Containers: ``Residual(f)`` (``x + f(x)``) passes its input bound ``R`` to ``f`` and its output
gradient ``G`` to ``f``'s output; ``ConvexResidual(f)`` (``(1 - a) x + a f(x)``) passes ``a G``, and its
learnable logit ``s`` (``a = sigmoid(s)``) gets ``|dl/ds| = a (1 - a) |g^T (f(x) - x)| <= a (1 - a) G
(Lip(f) R + ||f(0)|| + R)``.  Parameter-free layers (activations, pooling, the projection) need only a
Lipschitz bound.  Layers with parameters need a sensitivity rule; anything else is refused by name.

**Float round-off.**  Forward and backward run in float32; ``R_i`` and ``G_i`` are inflated by a relative
``1e-3`` and the offsets by an absolute ``1e-6`` before the rules are applied.  This covers the round-off of
float32 networks of moderate depth; it is an allowance, not a proof about float arithmetic.

The global sensitivity of the whole gradient is ``Delta = sqrt(sum_T S_T^2)`` (each example's gradient is a
vector with one block per tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from lipkit.bounds import (
    EPS64,
    SENSITIVITY,
    UnsupportedModuleError,
    as_float64,
    computes_as,
    fp32_products_are_ieee,
    lipschitz_bound,
    round_up,
)
from lipkit.bounds.registry import memoized_class_checks, record_input_shapes
from lipkit.dp.projection import L2BallProjection
from lipkit.dp.retraction import certified_norm
from lipkit.nn import ConvexResidual, LipConv2d, LipLinear, Residual

__all__ = ["SensitivityReport", "network_sensitivity", "REL_ALLOWANCE", "conv_gram_bound"]

#: relative inflation of every input / gradient norm bound (float32 round-off allowance)
REL_ALLOWANCE = 1e-3
_ABS_ALLOWANCE = 1e-6


@dataclass
class SensitivityReport:
    """The per-tensor bounds ``S_T`` (by parameter name), their l2 combination, and what they came from."""

    per_tensor: dict[str, float]
    total: float
    input_radius: float
    output_radius: float
    loss_lipschitz: float
    problems: list[str] = field(default_factory=list)


class _Walker:
    def __init__(self, model: nn.Module, shapes: dict, names: dict[int, str]) -> None:
        self.model = model
        self.shapes = shapes
        self.names = names  # id(parameter) -> name
        self.out: dict[str, float] = {}
        self.problems: list[str] = []
        self.reported: set[int] = set()  # ids of parameters under a module with a reported problem
        self.output_radius = math.inf
        self.lips: dict[int, float] = {}
        self.memo: dict[tuple, bool] = {}

    def is_(self, module: object, classes: tuple, subclasses: bool = False) -> bool:
        """:func:`computes_as`, memoised for this call (modules are not changed during it)."""
        key = (id(module), classes, subclasses)
        if key not in self.memo:
            self.memo[key] = computes_as(module, classes, subclasses=subclasses)
        return self.memo[key]

    def problem(self, path: str, module: nn.Module, message: object) -> None:
        self.problems.append(f"{path}: {message}")
        self.reported.update(id(p) for p in module.parameters())

    def lip(self, module: nn.Module) -> float:
        """l2 Lipschitz bound of ``module`` (memoised for this call, see :func:`fast_lipschitz`)."""
        key = id(module)
        if key not in self.lips:
            self.lips[key] = fast_lipschitz(module, self.shapes, self.lip, self.is_)
        return self.lips[key]

    def zeros_for(self, module: object) -> torch.Tensor:
        shape = self.shapes.get(module)
        if shape is None:
            raise UnsupportedModuleError(
                f"{type(module).__name__}: its input shape is unknown (it did not run "
                "in the shape-recording forward pass)"
            )
        ref = next(self.model.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        return torch.zeros((1, *shape[1:]), dtype=dtype, device=device)

    def offset(self, module: nn.Module) -> float:
        """``||module(0)||`` (current weights, current mode), inflated for round-off."""
        with torch.no_grad():
            value = _norm_up(module(self.zeros_for(module)))
        return value * (1 + REL_ALLOWANCE) + _ABS_ALLOWANCE

    def walk(self, module: nn.Module, r: float, g: float, path: str) -> None:
        """Record the bounds of the trainable tensors of ``module`` (input norm <= r, output grad <= g)."""
        if self.is_(module, (nn.Sequential,), subclasses=True):
            self.walk_chain([c for c in module._modules.values() if c is not None], r, g, path, module)
            return
        try:
            if self.is_(module, (Residual,)):
                self.walk(module.f, r, g, f"{path}.f")
                return
            if self.is_(module, (ConvexResidual,)):
                c1, c2 = (float(c.detach().abs()) for c in module.coefficients())
                self.walk(module.f, r, g * c2 * (1 + REL_ALLOWANCE), f"{path}.f")
                if module.learnable and module.logit.requires_grad:
                    f_out = self.lip(module.f) * r + self.offset(module.f)
                    self.record(module.logit, round_up(c1 * c2 * g * (f_out + r), 4) * (1 + REL_ALLOWANCE))
                return
            rule, inner = SENSITIVITY.resolve(module)
            bounds = rule.fn(inner, r, g, self.shapes)
        except UnsupportedModuleError as exc:
            self.problem(path, module, exc)
            return
        for name, value in bounds.items():
            t = inner._parameters.get(name)
            if t is None:
                self.problem(
                    path,
                    module,
                    f"its sensitivity rule bounds {name!r}, which is not a parameter of "
                    "the module (a parametrised tensor?)",
                )
            elif t.requires_grad:
                self.record(t, float(value))
        for sub_name, sub in inner.named_modules():
            if sub is not inner and any(p.requires_grad for p in sub.parameters(recurse=False)):
                self.problem(
                    f"{path}.{sub_name}",
                    sub,
                    "a submodule of a layer with a sensitivity rule holds "
                    "trainable tensors the rule does not cover",
                )

    def record(self, t: torch.Tensor, value: float) -> None:
        name = self.names.get(id(t), "?")
        if name in self.out:
            self.problems.append(
                f"{name}: the tensor is used more than once in the network (shared "
                "parameters are not covered)"
            )
        self.out[name] = value

    def walk_chain(self, children: list[nn.Module], r: float, g: object, path: str, owner: object) -> float:
        n = len(children)
        lips: list[float] = []
        for i, c in enumerate(children):
            try:
                lips.append(self.lip(c))
            except UnsupportedModuleError as exc:
                self.problem(f"{path}.{i}", c, exc)
                lips.append(math.inf)
        # input side: ||x_i|| <= Lip(prefix) R + ||prefix(0)||, restarting after each projection
        radii: list[float] = []
        anchor_r, anchor_lip = r, 1.0
        z: torch.Tensor | None = self.zeros_for(owner)
        for i, c in enumerate(children):
            zn = _norm_up(z) if z is not None else math.inf
            radii.append(
                round_up(anchor_lip * anchor_r, 2) * (1 + REL_ALLOWANCE)
                + zn * (1 + REL_ALLOWANCE)
                + _ABS_ALLOWANCE
            )
            if self.is_(c, (L2BallProjection,)):
                anchor_r, anchor_lip = min(c.radius, radii[-1]), 1.0
                z = torch.zeros_like(z) if z is not None else None
                continue
            anchor_lip *= lips[i]
            if z is not None:
                try:
                    with torch.no_grad():
                        z = c(z)
                except Exception as exc:  # noqa: BLE001  (reported, not raised: the validator lists all)
                    self.problem(f"{path}.{i}", c, f"the forward pass on zeros failed ({exc})")
                    z = None
        zn = _norm_up(z) if z is not None else math.inf
        out_r = (
            round_up(anchor_lip * anchor_r, 2) * (1 + REL_ALLOWANCE)
            + zn * (1 + REL_ALLOWANCE)
            + _ABS_ALLOWANCE
        )
        if callable(g):  # the loss constant may need the output radius (top level only)
            g = g(out_r)
        # gradient side: ||g_i|| <= Lip(loss) prod_{j > i} Lip(f_j)
        suffix = 1.0
        grads = [0.0] * n
        for i in range(n - 1, -1, -1):
            grads[i] = round_up(float(g) * suffix, n + 1) * (1 + REL_ALLOWANCE)
            suffix *= lips[i]
        for i, c in enumerate(children):
            if any(p.requires_grad for p in c.parameters()):
                self.walk(c, radii[i], grads[i], f"{path}.{i}")
        self.output_radius = out_r
        return out_r


def _norm_up(z: torch.Tensor) -> float:
    """``||z||_2`` of the computed tensor, in float64 and rounded up (the tensor's own float32 round-off is
    left to the allowance)."""
    z = z.detach().to(torch.float64)
    return round_up(float(torch.linalg.vector_norm(z)), z.numel() + 2)


def _wide(a: torch.Tensor) -> torch.Tensor:
    """``a`` as a matrix (output rows, flattened inputs), transposed if needed so that rows <= columns:
    the shorter side, whose Gram matrix is the smaller one with the same largest eigenvalue."""
    if a.dim() != 2:
        a = a.reshape(a.shape[0], -1)
    return a.T if a.shape[0] > a.shape[1] else a


def gram_bound(weight: torch.Tensor) -> float:
    """A guaranteed upper bound of ``||W||_2`` from the Gram matrix (Gershgorin), in float64.

    With ``A`` the shorter side of ``W`` (``m x k``, ``m <= k``) and ``G = A A^T``,
    ``||W||_2^2 = lambda_max(G) <= max_i sum_j |G_ij|`` (Gershgorin; ``G`` is symmetric).  The float64
    product has ``|fl(G)_ij - G_ij| <= gamma_k |a_i|^T |a_j| <= gamma_k ||a_i|| ||a_j||`` (Higham,
    Lemma 3.1, and Cauchy-Schwarz), added row by row with ``gamma_k`` inflated 4x.  Exact (up to
    rounding) for matrices with orthonormal rows or columns, the case of the orthogonal constraint, where
    it costs one ``m x m`` product instead of an SVD.
    """
    a = _wide(weight.detach().to(torch.float64))
    if a.numel() == 0:
        return 0.0
    if not torch.isfinite(a).all():
        return math.inf
    m, k = a.shape
    g = a @ a.T
    norms = torch.linalg.vector_norm(a, dim=1)
    gamma = 4.0 * (k + 2) * EPS64
    rows = g.abs().sum(dim=1) + gamma * norms * norms.sum()
    return round_up(math.sqrt(round_up(rows.max().item(), 2 * m + 4)), 2)


#: float32 unit round-off (2^-24) and the smallest normal float32 (2^-126)
_U32 = 2.0**-24
_TINY32 = 2.0**-126


def gram_bound_fp32(weight: torch.Tensor, block: int = 64) -> float:
    """:func:`gram_bound` with the Gram matrix from float32 products over blocks of ``block`` columns.

    ``A`` (``m x k``, ``m <= k``) is split into column blocks ``A_b`` of width ``kb = block``; each
    ``A_b A_b^T`` is a float32 product (``|fl - exact| <= gamma_kb |A_b| |A_b|^T + kb 2^-126`` entrywise,
    ``gamma_kb = kb u / (1 - kb u)``, ``u = 2^-24``, any summation order: Higham, Lemma 3.1 / eq. 3.5, with
    an allowance for underflow), and the blocks are summed in float64 (exact conversion).  Summed over the
    blocks, ``sum_b |A_b| |A_b|^T = |A| |A|^T <= ||a_i|| ||a_j||`` entrywise (Cauchy-Schwarz), so
    Gershgorin's row sums of the computed ``S`` plus ``2 gamma_kb ||a_i|| sum_j ||a_j|| + m k 2^-126`` bound
    ``lambda_max(A A^T) = ||W||_2^2`` (the factor 2 also covers the float64 sums and norms, whose error is
    ``O(k 2^-53)``, far below ``gamma_kb``).  For an orthonormal ``A`` the allowance is about
    ``kb u m / 2`` of the norm (``5e-4`` for ``m = 256``, ``kb = 64``), at about a seventh of the float64
    product's cost on one core.  Falls back to :func:`gram_bound` for other dtypes, or when torch may run
    float32 products in reduced precision (:func:`lipkit.bounds.fp32_products_are_ieee` is false).
    """
    if weight.dtype != torch.float32 or not fp32_products_are_ieee():
        return gram_bound(weight)
    a = _wide(weight.detach())
    if a.numel() == 0:
        return 0.0
    m, k = a.shape
    at = a.T.contiguous()  # k x m: each block of rows is a contiguous k_b x m matrix
    s = torch.zeros((m, m), dtype=torch.float64, device=a.device)
    for i in range(0, k, block):
        b = at[i:i + block]
        s.add_(b.T @ b)  # the float32 block, converted exactly and added in float64
    nb = -(-k // block)
    norms = torch.linalg.vector_norm(a.to(torch.float64), dim=1)
    gamma = block * _U32 / (1.0 - block * _U32)
    rows = s.abs().sum(dim=1) + 2.0 * gamma * norms * norms.sum() + m * k * _TINY32
    top = rows.max().item()  # NaN or inf entries of W reach the diagonal of S, hence this maximum
    if not math.isfinite(top):
        return math.inf
    return round_up(math.sqrt(round_up(top, 2 * m + nb + 4)), 2)


def conv_gram_bound(weight: torch.Tensor, groups: int = 1, iters: int = 30) -> float:
    """A guaranteed upper bound of the l2 operator norm of a zero-padded 2-D convolution of kernel ``weight``
    (``(c_out, c_in, kh, kw)``), any stride, dilation, padding and input size, in float64.

    Let ``T`` be the convolution on the infinite grid (zero extension).  The padded, strided layer is
    ``P_out T P_in`` with coordinate selections (norm <= 1), so its norm is at most ``||T||``; dilation only
    spreads the kernel's taps apart.  ``T^T T`` is block-Toeplitz with the kernel
    ``C[j, i, m] = sum_{o, t} K[o, j, t + m] K[o, i, t]`` (the full correlation, ``(2 kh - 1) x (2 kw - 1)``
    offsets).  The Schur test with positive weights ``w`` constant over positions gives
    ``||T||^2 <= max_j (A w)_j / w_j`` with ``A_ji = sum_m |C[j, i, m]|`` (a ``c_in x c_in`` matrix); any
    ``w > 0`` is valid (Collatz-Wielandt), and a few power iterations on ``A`` give one close to its Perron
    vector.  With ``w = 1`` this is the AOL row-sum certificate (Prach & Lampert, ECML 2022); with the
    Perron vector it is at most 1 for the kernels the AOL constraint's rescaling produces (``w_i = 1 / d_i``
    gives exactly 1), where the plain row sum can exceed 1.  The float64 correlation has
    ``|fl(C) - C| <= gamma_n (|K| * |K|)`` with ``n = c_out kh kw`` (Higham, Lemma 3.1): the correlation of
    ``|K|`` times ``gamma_n`` (inflated 2x) is added to ``|C|``, and the final quotient is rounded up for its
    ``c_in`` float64 operations.  ``groups > 1`` (block-diagonal channels) and non-finite weights give
    ``inf`` (the caller falls back to the registered rule).
    """
    if groups != 1 or weight.dim() != 4:
        return math.inf
    w = weight.detach().to(torch.float64)
    if w.numel() == 0:
        return 0.0
    if not torch.isfinite(w).all():
        return math.inf
    c_in = w.shape[1]
    mat = _schur_matrix(w)
    v = torch.ones(c_in, dtype=torch.float64)
    top = mat.max().item()
    if not math.isfinite(top):
        return math.inf
    if top == 0.0:
        return 0.0
    for _ in range(iters):  # power iteration: any positive v is valid, the Perron vector is the best
        v = mat @ v + 1e-12 * v.max()
        v = v / v.max()
    ratio = ((mat @ v) / v).max().item()
    if not math.isfinite(ratio):
        return math.inf
    return round_up(math.sqrt(round_up(ratio, c_in + 4)), 2)


def _schur_matrix(w: torch.Tensor) -> torch.Tensor:
    """The ``c_in x c_in`` matrix ``A`` of :func:`conv_gram_bound` for a float64 kernel ``w``
    (``(c_out, c_in, kh, kw)``): each entry at least ``sum_m |C[j, i, m]|`` of the exact correlation ``C``.

    The float64 correlation has ``|fl(C) - C| <= gamma_n (|K| * |K|)`` entrywise, ``n = c_out kh kw`` (Higham,
    Lemma 3.1), so ``sum_m (|fl(C)| + 2 (n + 2) eps (|K| * |K|))`` (``gamma_n`` inflated 2x; the
    correlation of ``|K|`` is rounded too, hence the margin) bounds ``sum_m |C|``; the sum over the
    ``(2 kh - 1) (2 kw - 1)`` offsets is rounded up by the factor ``1 + 4 (offsets + 2) eps``.
    """
    c_out, _, kh, kw = w.shape
    wt = w.transpose(0, 1)
    a = wt.abs()
    corr = torch.nn.functional.conv2d(wt, wt, padding=(kh - 1, kw - 1))
    corr_abs = torch.nn.functional.conv2d(a, a, padding=(kh - 1, kw - 1))
    gamma = 2.0 * (c_out * kh * kw + 2) * EPS64
    mat = (corr.abs() + gamma * corr_abs).sum(dim=(2, 3))
    return mat * (1.0 + 4.0 * (corr[0, 0].numel() + 2) * EPS64)


def fast_lipschitz(module: nn.Module, shapes: dict, child: object = None, is_: object = None) -> float:
    """The l2 Lipschitz bound the sensitivity uses, computed once per layer per step.

    * a LipLinear that runs ``nn.Linear``'s forward on a plain weight (:func:`computes_as`, so no hook,
      override or parametrisation): the bound its DP projection certified for this very weight
      (:func:`lipkit.dp.retraction.certified_norm`, checked bit for bit), else :func:`gram_bound_fp32` of its
      weight when it is within 2% of the layer's
      ``lip`` (always, for the orthogonal constraint after its projection), else the registered rule;
    * a LipConv2d running its registered code on a plain weight with zero padding: :func:`conv_gram_bound`
      (the AOL certificate, always within ``lip`` for the AOL constraint after its projection) when it is
      within 2% of ``lip``, else the registered rule;
    * ``nn.Sequential``, ``Residual``, ``ConvexResidual`` running their registered code: the registered
      rules' compositions (product; ``1 + L_f``; ``|1 - a| + |a| L_f``) of the children's bounds, so that
      each layer is bounded once;
    * anything else: :func:`lipkit.lipschitz_bound` (l2).

    ``child`` (a bound of a sub-module) and ``is_`` (:func:`computes_as`) may be memoised versions.
    """
    rec = child if callable(child) else (lambda m: fast_lipschitz(m, shapes))
    is_ = is_ if callable(is_) else computes_as  # a memoised computes_as (the walker's), or the plain one
    if is_(module, (LipLinear,)) and not parametrize.is_parametrized(module):
        cert = certified_norm(module, module.weight)
        if cert is not None:
            return cert
        fast = gram_bound_fp32(module.weight)
        if fast <= 1.02 * module.lip:
            return fast
        return lipschitz_bound(module, 2, _shapes=shapes)
    if (is_(module, (LipConv2d,)) and not parametrize.is_parametrized(module)
            and module.padding_mode == "zeros"):
        fast = conv_gram_bound(module.weight, module.groups)
        if fast <= 1.02 * module.lip:
            return fast
        return lipschitz_bound(module, 2, _shapes=shapes)
    if is_(module, (nn.Sequential,), subclasses=True):
        children = [c for c in module._modules.values() if c is not None]
        total = 1.0
        for c in children:
            total *= rec(c)
        return round_up(total, len(children) + 1)
    if is_(module, (Residual,)):
        return round_up(1.0 + rec(module.f), 2)
    if is_(module, (ConvexResidual,)):
        c1, c2 = (as_float64(c).abs().item() for c in module.coefficients())
        return round_up(c1 + c2 * rec(module.f), 3) if c2 else round_up(c1, 1)
    return lipschitz_bound(module, 2, _shapes=shapes)


def network_sensitivity(
    model: nn.Module,
    input_radius: float,
    loss: object,
    *,
    input_shape: tuple[int, ...],
    num_classes: int | None = None,
    strict: bool = True,
    shapes: dict | None = None,
) -> SensitivityReport:
    """Bounds of one example's gradient norm, per trainable tensor of ``model`` (see the module docstring).

    Args:
        model: an ``nn.Sequential`` chain (possibly nested, with residual blocks) of layers with Lipschitz
            bounds; layers with trainable tensors need a sensitivity rule.
        input_radius: ``R >= ||x||_2`` for every input (an ``L2BallProjection`` in the model can lower it).
        loss: a loss with ``logit_lipschitz(num_classes, output_radius)`` (see :mod:`lipkit.dp.losses`).
        input_shape: one input's shape (no batch dimension).
        num_classes: the number of logits (default: read from the shape-recording forward pass).
        strict: raise a ``ValueError`` listing every problem (otherwise they are returned in the report).
        shapes: the recorded input shapes of the submodules (:func:`lipkit.record_input_shapes`), to skip the
            shape-recording pass when the caller keeps them.

    Returns:
        a :class:`SensitivityReport`; ``per_tensor`` has one entry per trainable parameter name.
    """
    from lipkit.dp.losses import loss_lipschitz

    if (
        isinstance(input_radius, bool)
        or not isinstance(input_radius, (int, float))
        or not math.isfinite(input_radius)
        or input_radius <= 0
    ):
        raise ValueError(f"input_radius must be a finite number > 0, got {input_radius!r}")
    if input_shape is None:
        raise ValueError("input_shape (one example's shape, without the batch dimension) is required")
    shapes = dict(shapes) if shapes is not None else record_input_shapes(model, tuple(input_shape))
    if num_classes is None:
        num_classes = _num_outputs(model, tuple(input_shape))
    names = {id(p): n for n, p in model.named_parameters()}
    walker = _Walker(model, shapes, names)
    loss_g: list[float] = []

    def g_of(out_r: float) -> float:
        value = loss_lipschitz(loss, num_classes, out_r)
        loss_g.append(value)
        return value

    with memoized_class_checks():  # each class checked for monkeypatching once per call
        if computes_as(model, (nn.Sequential,), subclasses=True):
            children = [c for c in model._modules.values() if c is not None]
            walker.walk_chain(children, float(input_radius), g_of, "model", model)
        else:
            shapes[_ROOT] = shapes.get(model)
            walker.walk_chain([model], float(input_radius), g_of, "model", _ROOT)
    problems = walker.problems
    for n, p in model.named_parameters():
        if p.requires_grad and n not in walker.out and id(p) not in walker.reported:
            problems.append(f"{n}: this trainable parameter is not covered by the sensitivity analysis")
    per_tensor = {n: walker.out[n] for n, p in model.named_parameters() if n in walker.out}
    total = round_up(math.sqrt(sum(v * v for v in per_tensor.values())), len(per_tensor) + 2)
    if strict and problems:
        raise ValueError(
            "the model cannot be trained privately without clipping:\n  - " + "\n  - ".join(problems)
        )
    return SensitivityReport(
        per_tensor,
        total,
        float(input_radius),
        walker.output_radius,
        loss_g[0] if loss_g else math.nan,
        problems,
    )


def _num_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    ref = next(model.parameters(), None)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape), dtype=ref.dtype if ref is not None else torch.float32))
    finally:
        model.train(was)
    return int(out.shape[-1])


_ROOT = object()  # stand-in owner of a one-module chain: its input shape is the model's
