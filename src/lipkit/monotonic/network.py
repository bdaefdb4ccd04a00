"""The monotonic wrapper ``f(x) = g(x) + lam * C^T x`` with ``lam`` derived from the body's weights.

Kitouni, Nolte and Williams, "Robust and provably monotonic networks" (2023): if every partial derivative
of a network ``g`` is bounded, ``|d g_j / d x_i| <= L`` (the l_1 -> l_inf Lipschitz constant of ``g``),
then for ``lam >= L`` and ``c_ij`` in {-1, 0, +1}

    f_j(x) = g_j(x) + lam * sum_i c_ij x_i

has ``c_ij d f_j / d x_i = c_ij d g_j / d x_i + lam >= lam - L >= 0`` wherever ``g`` is differentiable, and
``g`` being Lipschitz (hence absolutely continuous on lines) makes ``f_j`` non-decreasing in ``x_i`` when
``c_ij = +1`` and non-increasing when ``c_ij = -1``.

Here ``L`` is read from the weights the forward pass uses, with
``lipkit.lipschitz_bound(body, p=1, q="inf")``, at every training-mode forward (and cached in eval mode
while the body's tensors equal a snapshot of them), so ``lam`` can neither be set inconsistently by hand
nor go stale while the body trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lipkit.bounds import UnsupportedModuleError, lipschitz_bound, operator_norm, register_bound, round_up
from lipkit.bounds.registry import child_bound
from lipkit.monotonic.fastbound import body_bound_1_inf

__all__ = ["MonotonicNetwork", "ROUNDOFF_MARGIN", "parse_monotonic", "slope_for"]

#: relative margin added to the body's bound: ``lam = max(lip, L (1 + ROUNDOFF_MARGIN))``, rounded up to
#: the forward's float type.  See :meth:`MonotonicNetwork.slope` for what it buys.
ROUNDOFF_MARGIN = 2.0 ** -10


def parse_monotonic(monotonic: Any, in_features: int | None, out_features: int | None = None,
                    feature_names: Sequence[str] | None = None) -> torch.Tensor:
    """The constraint matrix ``C`` (``in_features x out_features`` or ``in_features x 1``), float32.

    ``monotonic`` is a sequence of ``in_features`` values in {-1, 0, +1} (the same constraint on every
    output), a nested sequence / 2-D array of shape ``(out_features, in_features)`` (one row per output),
    or a mapping ``{feature: sign}`` whose keys are names in ``feature_names`` or integer positions
    (features not named are unconstrained).

    Raises:
        ValueError: wrong length or shape, values not in {-1, 0, 1}, an unknown feature name, a name
            without ``feature_names``, or duplicate feature names.
    """
    if feature_names is not None:
        feature_names = [str(n) for n in feature_names]
        if len(set(feature_names)) != len(feature_names):
            raise ValueError("feature_names has duplicates")
        if in_features is not None and len(feature_names) != in_features:
            raise ValueError(f"feature_names has {len(feature_names)} names for {in_features} input features")
        in_features = len(feature_names)
    if isinstance(monotonic, Mapping):
        if in_features is None:
            raise ValueError("monotonic given as a mapping needs the number of inputs: pass feature_names= "
                             "or in_features=")
        vec = [0.0] * in_features
        for key, sign in monotonic.items():
            if isinstance(key, str):
                if feature_names is None:
                    raise ValueError(f"monotonic names the feature {key!r} but no feature_names were given")
                if key not in feature_names:
                    raise ValueError(f"monotonic names the unknown feature {key!r}; known features: "
                                     f"{feature_names}")
                idx = feature_names.index(key)
            elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                idx = int(key)
                if not 0 <= idx < in_features:
                    raise ValueError(f"monotonic names feature {idx}, outside 0..{in_features - 1}")
            else:
                raise ValueError(f"monotonic keys are feature names or positions, got {key!r}")
            vec[idx] = sign
        monotonic = vec
    try:
        arr = np.asarray(monotonic, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"monotonic must be a sequence of -1, 0, +1 (or one per output), got {monotonic!r}")\
            from None
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(f"monotonic must be a 1-D sequence or an (outputs, inputs) array, got shape "
                         f"{arr.shape}")
    if not np.isin(arr, (-1.0, 0.0, 1.0)).all():
        bad = sorted({float(v) for v in arr.flatten() if v not in (-1.0, 0.0, 1.0)})
        raise ValueError(f"monotonic values must be -1, 0 or +1, got {bad}")
    n = arr.shape[-1]
    if in_features is not None and n != in_features:
        raise ValueError(f"monotonic has {n} entries per output but the model has {in_features} input "
                         "features")
    if arr.ndim == 2 and out_features is not None and arr.shape[0] not in (1, out_features):
        raise ValueError(f"monotonic has {arr.shape[0]} rows but the body has {out_features} outputs")
    c = arr.reshape(1, -1) if arr.ndim == 1 else arr
    return torch.tensor(c.T.copy(), dtype=torch.float32)  # (in, out or 1)


def _float_up(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a scalar tensor of ``dtype``, rounded up (never below ``value``)."""
    t = torch.tensor(value, dtype=dtype)
    if float(t.item()) < value:
        t = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
    return t


def slope_for(bound: float, lip: float | None) -> float:
    """``lam = max(lip, bound (1 + ROUNDOFF_MARGIN))`` (float64, rounded up)."""
    lam = round_up(bound * (1.0 + ROUNDOFF_MARGIN), 2)
    return max(float(lip), lam) if lip is not None else lam


def _infer_dims(body: nn.Module) -> tuple[int | None, int | None]:
    first = last = None
    for mod in body.modules():
        if isinstance(mod, nn.Linear):
            if first is None:
                first = mod.in_features
            last = mod.out_features
    return first, last


class MonotonicNetwork(nn.Module):
    """``f(x) = g(x) + lam * x C``: monotone in the inputs ``C`` marks, whatever the body's weights are.

    Args:
        body: the network ``g`` (inputs ``(batch, in_features)``, outputs ``(batch, out_features)``); it
            must have an l_1 -> l_inf bound in :func:`lipkit.lipschitz_bound` (``LipLinear`` with any
            constraint, GroupSort / MaxMin / ReLU, ``LinearSpline``, ``Residual``, ``nn.Sequential``, ...).
        monotonic: per input, +1 (non-decreasing), -1 (non-increasing) or 0 (free), as a sequence, a
            ``(out_features, in_features)`` array (one constraint row per output) or a mapping
            ``{name or position: sign}``.
        feature_names: names of the inputs (needed for a mapping with names).
        lip: a floor for ``lam`` (``lam = max(lip, L (1 + ROUNDOFF_MARGIN))``).  A floor keeps the linear
            term's scale fixed while ``L`` moves during training; any ``lam >= L`` keeps the guarantee.
        in_features: the number of inputs, when the body has no ``nn.Linear`` to read it from.

    The slope ``lam`` is never a free parameter: :meth:`slope` derives it from the current weights.
    Certificates and other bounds of the wrapper use its own registered rule (see :func:`_monotonic_rule`):
    its partials in a monotone input lie in ``[lam - L, lam + L]``, not in ``[-lam, lam]``.

    Raises:
        ValueError: a bad ``monotonic`` spec (length, values, names), or ``lip`` not > 0.
        UnsupportedModuleError: the body has no known l_1 -> l_inf bound.
    """

    def __init__(self, body: nn.Module, monotonic: Any, *, feature_names: Sequence[str] | None = None,
                 lip: float | None = None, in_features: int | None = None) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"MonotonicNetwork: body must be a torch.nn.Module, got {type(body).__name__}")
        if lip is not None and not (isinstance(lip, (int, float)) and math.isfinite(lip) and lip > 0):
            raise ValueError(f"MonotonicNetwork: lip must be a finite number > 0 (or None), got {lip!r}")
        inferred_in, inferred_out = _infer_dims(body)
        n_in = in_features if in_features is not None else inferred_in
        if feature_names is not None and n_in is not None and len(feature_names) != n_in:
            raise ValueError(f"feature_names has {len(feature_names)} names for {n_in} input features")
        c = parse_monotonic(monotonic, n_in, inferred_out, feature_names)
        self.body = body
        self.in_features = int(c.shape[0])
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.lip = None if lip is None else float(lip)
        self.register_buffer("constraints", c)
        self._cache: tuple[Any, float] | None = None
        self._frozen_slope: float | None = None
        try:
            self.body_bound()
        except UnsupportedModuleError as exc:
            raise UnsupportedModuleError(
                "MonotonicNetwork: the body has no known l_1 -> l_inf (partial-derivative) bound, so no "
                f"slope can be derived: {exc}", getattr(exc, "module", None)) from exc

    # ---------------------------------------------------------------- the slope
    def _tensors(self) -> list[torch.Tensor]:
        return [*self.body.parameters(), *self.body.buffers()]

    def _cache_holds(self) -> bool:
        """Whether the cached bound was computed from exactly the current tensors.  The values themselves
        are compared with a snapshot: version counters miss in-place edits through ``.data``."""
        if self._cache is None:
            return False
        snapshot = self._cache[0]
        tensors = self._tensors()
        return len(tensors) == len(snapshot) and all(
            t.dtype == s.dtype and t.shape == s.shape and torch.equal(t.detach(), s)
            for t, s in zip(tensors, snapshot, strict=True)
        )

    def body_bound(self) -> float:
        """``L = lipschitz_bound(body, p=1, q="inf")`` of the current weights (cached in eval mode), computed
        by :func:`lipkit.monotonic.fastbound.body_bound_1_inf` (the same value, fewer registry calls)."""
        if not self.training and not self.body.training:
            if self._cache_holds():
                return self._cache[1]
            value = body_bound_1_inf(self.body)
            self._cache = ([t.detach().clone() for t in self._tensors()], value)
            return value
        return body_bound_1_inf(self.body)

    def slope(self) -> float:
        """``lam = max(lip, L (1 + 2^-10))`` in float64, ``L`` the body's l_1 -> l_inf bound.

        The margin.  The forward computes ``g`` and ``lam x C`` in floating point; ``lam`` is rounded up to
        the forward's dtype, so the exact function of the stored weights and of that ``lam`` is monotone
        with slack: ``c_i (f(x + t e_i) - f(x)) >= (lam - L) |t| >= 2^-10 L |t|``.  The float forward differs
        from that exact function by its round-off ``E(x)`` (about ``depth * width * 2^-24`` times the
        magnitudes inside the network in float32), so a float32 difference can move against the constraint
        by at most ``E(x) + E(x + t e_i)``, and not at all once ``2^-10 L |t| > E(x) + E(x + t e_i)``.
        :func:`lipkit.check_monotonic` measures ``E`` against a float64 evaluation and reports violations
        beyond it.  The margin costs a relative ``2^-10`` of slope, nothing in accuracy.
        """
        if self._frozen_slope is not None:
            return self._frozen_slope
        return slope_for(self.body_bound(), self.lip)

    def deployed_slope(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``lam`` the forward multiplies by, a scalar of ``dtype``: :meth:`slope` rounded up to float32,
        then (for a narrower dtype) up to ``dtype``.  Going through float32 first makes a float64 copy of a
        float32 model (the certificates' twin) compute with the same ``lam`` as the deployed model."""
        lam32 = _float_up(self.slope(), torch.float32)
        if dtype in (torch.float32, torch.float64):
            return lam32.to(dtype)
        return _float_up(float(lam32.item()), dtype)

    # ---------------------------------------------------------------- export
    @property
    def frozen(self) -> bool:
        """True after :meth:`freeze`: ``lam`` is a constant, no longer derived at each forward."""
        return self._frozen_slope is not None

    def freeze(self, lam: float | None = None) -> MonotonicNetwork:
        """Fix ``lam`` to its current float32 value (what :func:`lipkit.export` does to the exported copy), or
        to the given ``lam`` (a saved model's, e.g. a run folder's), checked against the body's bound.

        The frozen wrapper computes a fixed function without calling the bound registry.  Its guarantee
        holds while ``lam >= L`` of the body's weights: :meth:`verify_slope` checks it, and export does.
        The registered bound stays sound whatever the weights (it uses the frozen ``lam``).

        Raises:
            ValueError: a given ``lam`` that is not a finite float32 number >= the body's l_1 -> l_inf bound
                (the model would not be monotone); the wrapper is then left as it was.
        """
        if lam is None:
            lam32 = _float_up(slope_for(self.body_bound(), self.lip), torch.float32)
            self._frozen_slope = float(lam32.item())
            return self
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or \
                float(torch.tensor(float(lam), dtype=torch.float32).item()) != float(lam):
            raise ValueError(f"MonotonicNetwork.freeze: lam must be a finite float32 number, got {lam!r}")
        before = self._frozen_slope
        self._frozen_slope = float(lam)
        try:
            self.verify_slope()
        except ValueError:
            self._frozen_slope = before
            raise
        return self

    def verify_slope(self) -> None:
        """Raise ``ValueError`` if ``lam`` (frozen or not) is below the body's current l_1 -> l_inf bound."""
        bound = lipschitz_bound(self.body, 1, math.inf)
        lam = float(self.deployed_slope(torch.float32).item())
        if not lam >= bound:
            raise ValueError(f"MonotonicNetwork: lam = {lam!r} is below the body's l_1 -> l_inf bound "
                             f"{bound!r}: monotonicity is no longer guaranteed")

    def lipkit_skip_form(self) -> tuple[type, nn.Module, torch.Tensor]:
        """What the forward computes, for :mod:`lipkit.certify`'s round-off analysis (duck-typed: certify
        does not import this package): ``(MonotonicNetwork, g, A)`` with ``forward(x) = fl(g(x) + fl(x A))``
        and ``A = C lam`` in the module's dtype (exact: ``C`` is in {-1, 0, +1}), ``(in_features, 1 or
        out)``.  Certify applies it only if the module runs this class's own forward (no override, no
        hook)."""
        c = self.constraints
        return MonotonicNetwork, self.body, c * self.deployed_slope(c.dtype).to(c.device)

    def lipkit_export_prepare(self) -> None:
        """Hook called by :func:`lipkit.export` on the copy before its layers become plain: freezes the
        ``lam`` of the original weights, so the exported model computes the original's function."""
        self.freeze()

    def lipkit_export_check(self, example_input: torch.Tensor | None) -> None:
        """Hook called by :func:`lipkit.export` on the exported copy: :func:`lipkit.check_monotonic` on
        ``example_input`` (if given) and on 256 standard-normal points, with the extremes +-1e2, +-1e4 of
        every constrained feature, then :meth:`verify_slope`.  Raises ``ValueError`` naming the feature."""
        from lipkit.monotonic.check import check_monotonic  # check imports this module

        if not bool((self.constraints != 0).any()):
            return
        probes = [None] if example_input is None else [example_input.detach(), None]
        for probe in probes:
            res = check_monotonic(self, probe, seed=0)
            if not res.ok:
                bad = [k for k, v in res.per_feature_violations.items() if v > 0]
                raise ValueError(f"the exported MonotonicNetwork is not monotone in feature(s) {bad}: "
                                 f"{res.violations} violation(s) beyond round-off, worst move "
                                 f"{res.worst_beyond_roundoff:.3g} against the constraint")
        self.verify_slope()

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MonotonicNetwork expects inputs of shape (batch, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        out = self.body(x)
        if out.dim() == 1:
            out = out[:, None]
        c = self.constraints
        if c.shape[1] not in (1, out.shape[1]):
            raise ValueError(f"MonotonicNetwork: the constraints have {c.shape[1]} output columns but the "
                             f"body returned {out.shape[1]} outputs")
        lam = self.deployed_slope(x.dtype).to(x.device)
        return out + x @ (c.to(device=x.device, dtype=x.dtype) * lam)

    def monotone_directions(self) -> torch.Tensor:
        """``C``: ``(in_features, out_features or 1)``, entries in {-1, 0, +1}."""
        return self.constraints

    def extra_repr(self) -> str:
        c = self.constraints
        dirs = c[:, 0].tolist() if c.shape[1] == 1 else c.T.tolist()
        frozen = f", frozen lam={self._frozen_slope!r}" if self.frozen else ""
        return f"in_features={self.in_features}, monotonic={dirs}, lip={self.lip}{frozen}"


def _monotonic_rule(module: MonotonicNetwork, p: float, shapes: dict, q: float | None = None) -> float:
    """``L_{p->q}(f) <= L_{p->q}(g) + ||lam C^T||_{p->q}``: the wrapper's own bound, never ``lam``.

    ``f = g + A`` with the linear map ``A x = lam x C``.  For ``p = 1, q = inf`` this is ``L + lam`` (a
    monotone partial lies in ``[lam - L, lam + L]``, at most ``2 lam``); for ``p = q = inf`` it is
    ``Lip_inf(g) + lam k`` with ``k`` the largest number of constrained inputs of one output; for
    ``p = q = 2`` ``Lip_2(g) + lam ||C||_2`` (``lam sqrt(k)`` for one output).  ``lam`` is the float value
    the forward uses (rounded up to float32, which dominates the float64 one).
    """
    q = p if q is None else q
    lg = child_bound(module.body, p, shapes, q)
    lam = float(module.deployed_slope(torch.float32).item())
    a = module.constraints.double().T * lam  # (out, in)
    la = operator_norm(a, p, q)
    return round_up(lg + la, 2)


# registered without the decorator syntax: mutmut (make mutate) skips decorated functions
register_bound(MonotonicNetwork, subclasses=True, mixed_norms=True)(_monotonic_rule)
