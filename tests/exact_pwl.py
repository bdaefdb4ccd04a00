"""Exact Lipschitz constants of small ReLU networks on R^2, by enumerating their linear regions.

A ReLU network ``f = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` is continuous and piecewise linear; on
the region of an activation pattern ``s`` (which neurons are on) it is affine with Jacobian
``J_s = W_L D_{L-1} W_{L-1} ... D_1 W_1`` (``D_l = diag(s_l)``), and every such region is a convex
polyhedron (given ``s``, each pre-activation is affine in ``x``).  Hence

    Lip_p(f) = max over full-dimensional regions of ||J_s||_p

(a segment crosses finitely many regions, and on each piece ``f`` moves by ``J_s`` times its length).

Enumeration (generic weights): the patterns seen on a grid over a box are regions (each grid point is a
witness); regions sharing a face differ in exactly one neuron, and the adjacency graph of the regions is
connected, so a breadth-first search that flips one neuron at a time and keeps the candidates whose
polyhedron has an interior point (an LP with scipy's HiGHS: maximise the slack ``t`` of the normalised
sign constraints; ``t > 1e-9`` means full-dimensional) finds them all.  ``J_s`` is then computed in exact
rational arithmetic from the float weights; the l_inf / l_1 norms are exact Fractions and the l2 norm of
the ``m x 2`` Jacobian is ``sqrt`` of the top eigenvalue of the 2x2 Gram matrix, evaluated with mpmath at
50 digits from its exact entries.

Nothing here imports lipkit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn

Pattern = tuple[tuple[bool, ...], ...]


@dataclass
class ExactLipschitz:
    value: mpmath.mpf | Fraction  # Lip_p(f): Fraction for p = 1, inf; 50-digit mpf for p = 2
    pattern: Pattern  # a region attaining it
    point: np.ndarray  # an interior point of that region
    n_regions: int


def _layers(net: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    lins = [m for m in net if isinstance(m, nn.Linear)]
    others = [m for m in net if not isinstance(m, (nn.Linear, nn.ReLU))]
    assert not others, f"only Linear / ReLU: {others}"
    kinds = [isinstance(m, nn.Linear) for m in net]
    assert kinds == [True, False] * (len(lins) - 1) + [True], "expect Linear, ReLU, ..., Linear"
    out = []
    for m in lins:
        b = m.bias if m.bias is not None else torch.zeros(m.out_features)
        out.append((m.weight.detach().double().numpy(), b.detach().double().numpy()))
    assert out[0][0].shape[1] == 2, "input dimension must be 2"
    return out


def _patterns_on_points(layers, pts: np.ndarray) -> set[Pattern]:
    h = pts
    masks = []
    for w, b in layers[:-1]:
        z = h @ w.T + b
        masks.append(z > 0)
        h = np.maximum(z, 0)
    found = set()
    for row in zip(*masks, strict=True):
        found.add(tuple(tuple(bool(v) for v in m) for m in row))
    return found


def _affine_preacts(layers, pattern: Pattern) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each hidden layer, (A, c) with pre-activation z = A x + c on the region of ``pattern``."""
    a, c = np.eye(2), np.zeros(2)
    out = []
    for (w, b), s in zip(layers[:-1], pattern, strict=True):
        a, c = w @ a, w @ c + b
        out.append((a, c))
        d = np.asarray(s, dtype=float)
        a, c = a * d[:, None], c * d
    return out


def _interior_point(layers, pattern: Pattern) -> np.ndarray | None:
    """An interior point of the region of ``pattern`` (None if it is not full-dimensional)."""
    rows, rhs = [], []
    for (a, c), s in zip(_affine_preacts(layers, pattern), pattern, strict=True):
        for i, on in enumerate(s):
            sign = 1.0 if on else -1.0
            nrm = float(np.linalg.norm(a[i]))
            # sign * (a_i x + c_i) >= t * nrm   <=>   -sign a_i x + nrm t <= sign c_i
            rows.append([-sign * a[i, 0], -sign * a[i, 1], nrm])
            rhs.append(sign * c[i])
    res = linprog(c=[0.0, 0.0, -1.0], A_ub=np.asarray(rows), b_ub=np.asarray(rhs),
                  bounds=[(None, None), (None, None), (None, 1.0)], method="highs")
    if res.status != 0 or -res.fun <= 1e-9:
        return None
    return np.asarray(res.x[:2])


def regions(net: nn.Sequential, box: float = 20.0, grid: int = 200) -> dict[Pattern, np.ndarray]:
    """Every full-dimensional activation region of ``net`` (Linear/ReLU chain on R^2) with an interior
    point, by grid seeding plus a flip-one-neuron breadth-first search with LP feasibility checks."""
    layers = _layers(net)
    t = np.linspace(-box, box, grid)
    pts = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    seeds = _patterns_on_points(layers, pts)
    found: dict[Pattern, np.ndarray] = {}
    rejected: set[Pattern] = set()
    queue = list(seeds)
    while queue:
        pat = queue.pop()
        if pat in found or pat in rejected:
            continue
        x = _interior_point(layers, pat)
        if x is None:
            rejected.add(pat)
            continue
        found[pat] = x
        for li, s in enumerate(pat):
            for i in range(len(s)):
                flipped = list(pat)
                flipped[li] = s[:i] + (not s[i],) + s[i + 1:]
                cand = tuple(flipped)
                if cand not in found and cand not in rejected:
                    queue.append(cand)
    return found


def jacobian_exact(net: nn.Sequential, pattern: Pattern) -> list[list[Fraction]]:
    """``J_s`` with exact rational entries (the float weights are dyadic rationals)."""
    layers = _layers(net)
    j = [[Fraction(1), Fraction(0)], [Fraction(0), Fraction(1)]]
    for li, (w, _) in enumerate(layers):
        wf = [[Fraction(float(v)) for v in row] for row in w]
        j = [[sum((wf[r][k] * j[k][col] for k in range(len(j))), Fraction(0)) for col in range(2)]
             for r in range(len(wf))]
        if li < len(pattern):
            j = [row if on else [Fraction(0), Fraction(0)] for row, on in zip(j, pattern[li], strict=True)]
    return j


def opnorm_exact(j: list[list[Fraction]], p: float):
    """Exact l_p operator norm of an ``m x 2`` rational matrix: a Fraction for p = 1, inf; for p = 2 an
    mpf at 50 digits (``sqrt`` of the top eigenvalue of the exact 2x2 Gram matrix)."""
    if p == math.inf:
        return max(abs(a) + abs(b) for a, b in j)
    if p == 1:
        return max(sum(abs(row[c]) for row in j) for c in range(2))
    g00 = sum(r[0] * r[0] for r in j)
    g11 = sum(r[1] * r[1] for r in j)
    g01 = sum(r[0] * r[1] for r in j)
    tr, det = g00 + g11, g00 * g11 - g01 * g01
    with mpmath.workdps(50):
        disc = _mpq(tr * tr - 4 * det)  # exact rational, then one rounding at 50 digits
        lam = (_mpq(tr) + mpmath.sqrt(max(disc, 0))) / 2
        return mpmath.sqrt(lam)


def _mpq(q: Fraction) -> mpmath.mpf:
    return mpmath.mpf(q.numerator) / q.denominator


def exact_lipschitz(net: nn.Sequential, p: float, **kw) -> ExactLipschitz:
    regs = regions(net, **kw)
    best = None
    for pat, x in regs.items():
        v = opnorm_exact(jacobian_exact(net, pat), p)
        if best is None or v > best[0]:
            best = (v, pat, x)
    assert best is not None
    return ExactLipschitz(best[0], best[1], best[2], len(regs))


def all_patterns(net: nn.Sequential) -> list[Pattern]:
    """Every pattern (2^neurons of them): for brute-force cross-checks on tiny nets."""
    widths = [w.shape[0] for w, _ in _layers(net)[:-1]]
    flat = itertools.product((False, True), repeat=sum(widths))
    out = []
    for bits in flat:
        pat, k = [], 0
        for n in widths:
            pat.append(tuple(bits[k:k + n]))
            k += n
        out.append(tuple(pat))
    return out


def interior_point(net: nn.Sequential, pattern: Pattern) -> np.ndarray | None:
    return _interior_point(_layers(net), pattern)
