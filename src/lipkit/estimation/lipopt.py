"""LiPopt (Latorre, Rolland, Cevher, ICLR 2020): l_inf / l1 Lipschitz upper bounds by an LP hierarchy.

One hidden layer, ``f(x) = V phi(W x + b) + c`` with ``phi' in [alpha, beta]`` (ReLU: ``[0, 1]``).  Write
``phi'(z_k) = alpha + (beta - alpha) s_k`` with ``s in [0, 1]^h``.  Then

* ``p = inf``: ``Lip = max_i sup ||grad f_i||_1 <= max_i max_{t in [-1,1]^d, s in [0,1]^h}
  sum_{j,k} t_j W_kj V_ik (alpha + (beta - alpha) s_k)``;
* ``p = 1``: ``Lip = max_j sup ||J e_j||_1``, the same polynomial with ``t in [-1,1]^m`` over outputs.

Deeper nets: ``J = W_L D_{L-1} ... D_1 W_1`` with one ``s`` vector per hidden layer; the polynomial has
degree ``L`` (number of linear layers), so the hierarchy needs ``degree >= L``.  Its box maximum is the max
over *all* combinations of activation patterns, an upper bound of the constant (equal to it when every
combination is reachable).

With ``t = 2u - 1`` every variable lives in ``[0, 1]``.  The polynomial is *multilinear* (each monomial is a
path through the network: one variable per layer), so its box maximum is attained at a vertex and a
certificate only has to hold on ``{0, 1}^n``: ``lambda - p(u) = sum_q c_q prod_q(u)`` with ``c >= 0`` and
products of at most ``k`` literals ``u_i`` / ``1 - u_i`` on distinct variables.  This is the Krivine /
Handelman certificate of LiPopt reduced modulo ``u_i^2 = u_i`` (the Sherali-Adams level ``k``), never looser
than the box version of the same degree.  Minimising ``lambda`` is an LP, solved with HiGHS by column
generation, or (degree >= 3, more than ``PDLP_PRODUCTS`` products) whole by its first-order solver PDLP
(:func:`krivine_max`); the *sparse* hierarchy of the paper keeps only products inside the cliques of
the network's sparsity pattern (used automatically when the dense product family is too large).

Soundness whatever the LP accuracy: the multipliers are clipped to ``c >= 0``, the residual polynomial
``r = p - lambda + sum c_q prod_q`` is recomputed in float64, and since every monomial lies in ``[0, 1]``
on the box, ``p <= lambda + sum |r_mu|`` (plus a float64 round-off term) is what we report.  Any subset of
the products gives a valid certificate, so a run cut short by its time limit still returns a sound bound.
With one hidden layer whose weight has full row rank every activation pattern is reachable and the
polynomial maximum equals the constant; degree 3 recovers it on small nets (``bench/estimate.py``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
from torch import nn

from lipkit.bounds import EPS64, normalize_p, round_up

from ._mlp import parse_mlp

__all__ = ["LiPoptResult", "LiPoptError", "lipopt", "krivine_max"]

MAX_PRODUCTS = 3_000_000
IPM_COLUMNS = 20_000
MASTER_MAX_COLUMNS = 60_000
PDLP_PRODUCTS = 100_000
# sparse_cliques=None: the dense family up to this size, the clique family above (at width 60 both LPs have
# the same optimum, 4.0746, and the clique one solves in half the time: bench/estimate.py)
AUTO_DENSE_PRODUCTS = 1_000_000


class LiPoptError(RuntimeError):
    """The LP could not be built (too large) or solved."""


@dataclass
class LiPoptResult:
    """Certified bound ``upper`` for the l_p norm, the degree used and the per-row bounds."""

    upper: float
    p: float
    degree: int
    rows: list[float]
    lp_status: str
    seconds: float
    details: dict = field(default_factory=dict)


Poly = dict[tuple[int, ...], float]


def _encode(subsets: np.ndarray, base: int) -> np.ndarray:
    """One int64 key per row of sorted variable indices: ``sum_pos (v + 1) base^pos`` (``()`` -> 0)."""
    key = np.zeros(subsets.shape[0], dtype=np.int64)
    for pos in range(subsets.shape[1]):
        key = key * base + subsets[:, pos] + 1
    return key


def _cliques(poly: Poly) -> list[tuple[int, ...]]:
    """LiPopt's sparsity pattern read off the polynomial: one clique per variable ``v``, the union of the
    supports of the monomials whose largest variable is ``v``.  Every monomial lies in one clique, so a
    certificate built from products inside the cliques always exists.  For a one-hidden-layer net and
    ``p = inf`` these are the paper's cliques ``{s_k} + {t_j : W_kj != 0}``."""
    groups: dict[int, set[int]] = {}
    for mono in poly:
        if mono:
            groups.setdefault(mono[-1], set()).update(mono)
    cliques = {tuple(sorted(g)) for g in groups.values()}
    return [c for c in cliques if not any(set(c) < set(d) for d in cliques)]


def _subsets(cliques: list[tuple[int, ...]], r: int, base: int, limit: int) -> np.ndarray:
    """All size-``r`` subsets of the cliques (sorted rows, duplicates removed)."""
    if r == 0:
        return np.zeros((1, 0), dtype=np.int64)
    total = sum(math.comb(len(c), r) for c in cliques)
    if total > limit:
        raise LiPoptError(f"the LiPopt product family has more than {limit} subsets of size {r} (limit)")
    parts = []
    for c in cliques:
        if len(c) >= r:
            idx = np.array(list(itertools.combinations(range(len(c)), r)), dtype=np.int64)
            parts.append(np.asarray(c, dtype=np.int64)[idx])
    if not parts:
        return np.zeros((0, r), dtype=np.int64)
    subs = np.concatenate(parts)
    _, first = np.unique(_encode(subs, base), return_index=True)
    return subs[np.sort(first)]


def _product_family(cliques, degree: int, base: int, limit: int):
    """The Boolean (Sherali-Adams) products ``prod_{i in S} l_i(u)`` with ``l_i in {u_i, 1 - u_i}``, ``S``
    inside a clique, ``|S| <= degree``, expanded into monomials.  Returns the COO triplets
    ``(monomial key, product index, coefficient)``, the number of products and each product's set ``S``
    (encoded like a monomial)."""
    keys, cols, vals, tops = [], [], [], []
    n_prod = 0
    for r in range(degree + 1):
        subs = _subsets(cliques, r, base, limit)
        m = subs.shape[0]
        if n_prod + m * 2**r > limit:
            raise LiPoptError(
                f"LiPopt degree {degree} needs more than {limit} products on {len(cliques)} clique(s) (limit)"
            )
        for sigma in range(2**r):
            pos = [i for i in range(r) if sigma >> i & 1]  # literal u_i
            neg = [i for i in range(r) if not sigma >> i & 1]  # literal 1 - u_i
            col = n_prod + np.arange(m)
            # prod_{P} u_i prod_{N} (1 - u_i) = sum_{U subset N} (-1)^|U| u^(P + U)
            for size in range(len(neg) + 1):
                for extra in itertools.combinations(neg, size):
                    keys.append(_encode(subs[:, sorted(pos + list(extra))], base))
                    cols.append(col)
                    vals.append(np.full(m, (-1.0) ** size))
            tops.append(_encode(subs, base))
            n_prod += m
    return np.concatenate(keys), np.concatenate(cols), np.concatenate(vals), n_prod, np.concatenate(tops)


def krivine_max(
    poly: Poly,
    poly_err: dict[tuple[int, ...], float],
    n: int,
    degree: int,
    time_limit: float | None = None,
    *,
    sparse_cliques: bool | None = None,
    max_products: int = MAX_PRODUCTS,
) -> tuple[float, dict]:
    """Certified upper bound of ``max_{u in [0,1]^n} poly(u)`` for a *multilinear* ``poly``.

    A multilinear polynomial attains its box maximum at a vertex, so it suffices that
    ``lambda - poly(u) = sum_q c_q prod_q(u)`` holds on ``{0, 1}^n`` with ``c >= 0``, products ``prod_q``
    of at most ``degree`` literals ``u_i`` / ``1 - u_i`` on distinct variables (the Boolean reduction of the
    Krivine / Handelman certificate: ``u_i^2 = u_i``, ``u_i (1 - u_i) = 0``; the Sherali-Adams level
    ``degree``).  It is at least as tight as the box certificate of the same degree.  ``sparse_cliques``
    restricts the products to the cliques of :func:`_cliques` (LiPopt's sparse hierarchy; ``None``: only when
    the dense family has more than ``AUTO_DENSE_PRODUCTS`` products).

    The LP is solved by column generation with HiGHS: start with the products on the supports of ``poly``
    (always feasible), add the products of most negative reduced cost, re-solve, until none is left (the LP
    optimum of the whole family) or ``time_limit`` runs out (the first, small LP always completes).  A family
    of degree >= 3 with more than ``PDLP_PRODUCTS`` products is instead solved whole by PDLP (HiGHS's
    primal-dual hybrid gradient) after that first LP: column generation stalls on these large, degenerate
    LPs while PDLP solves width 60 (120 variables, 1.1M products) in about a minute.  Every restricted LP
    is itself a certificate, and the best one is re-checked in float64: multipliers clipped to ``c >= 0``,
    residual ``r = poly - lambda + sum c_q prod_q`` recomputed, and ``lambda + sum |r_mu|`` plus a
    round-off term (``gamma_k`` per monomial, ``poly_err`` bounding the error of ``poly``'s coefficients).

    ``poly`` maps sorted variable-index tuples to coefficients.
    """
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + float(time_limit)
    if any(len(set(mono)) != len(mono) for mono in poly):
        raise ValueError("krivine_max needs a multilinear polynomial (no repeated variable in a monomial)")
    base = n + 1
    if degree * math.log2(base) >= 62:
        raise LiPoptError(f"LiPopt degree {degree} with {n} variables overflows the monomial keys")
    dense = [tuple(range(n))]
    use_sparse = bool(sparse_cliques)
    dense_size = sum(math.comb(n, r) * 2**r for r in range(degree + 1))
    if sparse_cliques is None and dense_size > AUTO_DENSE_PRODUCTS:
        use_sparse = True
    if not use_sparse:
        try:
            family = _product_family(dense, degree, base, max_products)
        except LiPoptError:
            if sparse_cliques is False:
                raise
            use_sparse = True
    if use_sparse:
        family = _product_family(_cliques(poly) or dense, degree, base, max_products)
    fkeys, fcols, fvals, n_prod, tops = family
    pkeys = _encode_list(list(poly), base)
    all_keys, inv = np.unique(np.concatenate([fkeys, pkeys, [0]]), return_inverse=True)
    n_mono = all_keys.size
    A = sparse.csc_matrix((fvals, (inv[: fkeys.size], fcols)), shape=(n_mono, n_prod))
    p_vec = np.zeros(n_mono)
    poly_rows = inv[fkeys.size : fkeys.size + pkeys.size]
    np.add.at(p_vec, poly_rows, np.array(list(poly.values()), dtype=np.float64))
    e_vec = np.zeros(n_mono)
    np.add.at(e_vec, poly_rows, np.array([poly_err.get(m, 0.0) for m in poly], dtype=np.float64))
    const = int(inv[-1])
    # start: every product whose variables lie inside the support of one monomial of poly.  Feasible: with
    # them, lambda - poly = sum_mono (lambda_mono - a_mono u^mono) and each term is a non-negative combination
    # of the 2^|mono| literal products on its support once lambda_mono >= max(a_mono, 0).
    closure = {0}
    for mono in poly:
        for size in range(1, len(mono) + 1):
            closure.update(int(k) for k in _encode_list(list(itertools.combinations(mono, size)), base))
    inside = np.isin(tops, np.fromiter(closure, dtype=np.int64))
    active = np.zeros(n_prod, dtype=bool)
    lp = _MasterLP(A, p_vec, const)
    last_y = None
    best: tuple[float, np.ndarray | None] = (math.inf, None)
    status, rounds, converged = "", 0, False
    solver = "column generation"
    new_cols = np.flatnonzero(inside)
    while True:
        rounds += 1
        active[new_cols] = True
        lp.add_columns(new_cols)
        # the first LP (products on the supports of poly only) always runs to completion: it is small and
        # gives the certificate every later round improves on
        remaining = None if deadline is None or rounds == 1 else max(deadline - time.perf_counter(), 1e-3)
        ok, status, lam, c, y = lp.solve(remaining)
        if c is None:
            break
        bound = _certify(A, c, lam, p_vec, e_vec, const)
        if bound < best[0]:
            best = (bound, c)
        if not ok:
            break
        last_y = y
        if n_prod > PDLP_PRODUCTS and degree >= 3:
            # a large level-3 family: column generation stalls on these degenerate LPs (width 60: not
            # converged in 180 s), a first-order method on the whole LP does not (bench/estimate.py).  Level 2
            # stays with column generation, which solves it in seconds (LiPopt-2 at width 60: 3-5 s)
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
            ok, status, lam, c, y = _solve_whole_pdlp(A, p_vec, const, remaining)
            if c is not None:
                bound = _certify(A, c, lam, p_vec, e_vec, const)
                if bound < best[0]:
                    best = (bound, c)
                if y is not None:
                    last_y = y
            active[:] = c is not None
            converged = ok
            solver = "pdlp"
            break
        active[lp.prune(MASTER_MAX_COLUMNS)] = False
        # reduced cost of a product column: 0 - A_q^T y (monomials not yet in the LP have y = 0, a valid
        # choice: their rows are empty, so when no reduced cost is negative y proves the whole LP optimal)
        reduced = -(A.T @ y)
        reduced[active] = 0.0
        tol = 1e-9 * max(1.0, abs(lam))
        candidates = np.flatnonzero(reduced < -tol)
        if candidates.size == 0:
            converged = True
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        take = max(1000, min(20_000, candidates.size // 10))
        if candidates.size > take:
            candidates = candidates[np.argpartition(reduced[candidates], take)[:take]]
        new_cols = candidates
    if best[1] is None:
        raise LiPoptError(f"HiGHS failed on the LiPopt LP: {status}")
    info = {
        "lp_status": status,
        "products": int(n_prod),
        "products_used": int(active.sum()),
        "rounds": rounds,
        "converged": converged,
        "lp_solver": solver,
        "sparse_cliques": use_sparse,
        "seconds": time.perf_counter() - t0,
    }
    if last_y is not None:
        # pseudo-marginals of the optimal dual (the LP dual is a pseudo-distribution L with L(mu) = -y_mu):
        # where the relaxation puts each variable, used to pick vertices and branching variables
        singles = np.arange(n, dtype=np.int64) + 1
        idx = np.minimum(np.searchsorted(all_keys, singles), n_mono - 1)
        present = all_keys[idx] == singles
        marg = np.full(n, 0.5)
        marg[present] = -last_y[idx[present]]
        info["marginals"] = marg
    return best[0], info


def _substitute(poly: Poly, err: dict, var: int, value: int) -> tuple[Poly, dict]:
    """Fix ``u_var = value`` (0 or 1) in a multilinear polynomial; merged coefficients add their round-off."""
    out: Poly = {}
    out_err: dict = {}
    for mono, c in poly.items():
        e = err.get(mono, 0.0)  # the error of this coefficient, carried to the monomial it becomes
        if var in mono:
            if value == 0:
                continue
            mono = tuple(v for v in mono if v != var)
        if mono in out:
            out_err[mono] = out_err[mono] + e + EPS64 * (abs(out[mono]) + abs(c))
            out[mono] += c
        else:
            out[mono] = c
            out_err[mono] = e
    return out, out_err


def _compact(poly: Poly, err: dict) -> tuple[Poly, dict, list[int]]:
    """Renumber the variables that occur as ``0..k-1``; returns the map new -> old."""
    used = sorted({v for mono in poly for v in mono})
    new = {v: i for i, v in enumerate(used)}
    poly2 = {tuple(new[v] for v in mono): c for mono, c in poly.items()}
    err2 = {tuple(new[v] for v in mono): e for mono, e in err.items() if all(v in new for v in mono)}
    return poly2, err2, used


def _evaluate(poly: Poly, u: np.ndarray) -> float:
    return float(sum(c for mono, c in poly.items() if all(u[v] for v in mono)))


def _best_vertex(poly: Poly, n: int, start: np.ndarray, seconds: float | None = None
                 ) -> tuple[float, np.ndarray]:
    """Round ``start`` to a vertex and improve it by single flips (a lower bound of the vertex maximum),
    for at most about ``seconds``."""
    u = (start > 0.5).astype(np.int8)
    val = _evaluate(poly, u)
    end = None if seconds is None else time.perf_counter() + seconds
    improved = True
    while improved and (end is None or time.perf_counter() < end):
        improved = False
        for v in range(n):
            u[v] ^= 1
            new = _evaluate(poly, u)
            if new > val:
                val, improved = new, True
            else:
                u[v] ^= 1
    return val, u


def _flip_search(mlp, r: int, marginals: np.ndarray | None, starts: int = 2000,
                 seconds: float = 2.0) -> tuple[float, np.ndarray]:
    """Best vertex found of output ``r``'s polynomial for one hidden layer and ``p = inf``, by single flips of
    the input signs ``t`` from ``starts`` random points (and the LP's marginals) within ``seconds``.

    For fixed ``t`` the best slopes are explicit: the value is ``sum_k max(alpha_k g_k, beta_k g_k)`` with
    ``g = diag(V_r) W t``, so each sweep scores all ``d`` flips at once.  Returns the value (a lower bound of
    the polynomial maximum) and the vertex ``u`` in :func:`_gradient_poly`'s variable order (t bits, then the
    s bits of the neurons with a slope range)."""
    W = mlp.weights[0].numpy()
    A = mlp.weights[1].numpy()[r][:, None] * W
    als, bes = mlp.layer_slopes(0)
    d = W.shape[1]
    rng = np.random.default_rng(0)

    def score(G: np.ndarray) -> np.ndarray:
        return np.maximum(als[:, None] * G, bes[:, None] * G).sum(0) if G.ndim == 2 else \
            np.maximum(als * G, bes * G).sum()

    best_val, best_t = -math.inf, np.ones(d)
    t_end = time.perf_counter() + seconds
    for i in range(starts):
        if i == 0 and marginals is not None:
            t = np.where(np.asarray(marginals[:d]) > 0.5, 1.0, -1.0)
        else:
            t = rng.choice([-1.0, 1.0], d)
        g = A @ t
        cur = float(score(g))
        while True:
            G = g[:, None] - 2.0 * A * t[None, :]
            vals = score(G)
            j = int(np.argmax(vals))
            if not vals[j] > cur * (1 + 1e-12) + 1e-300:
                break
            t[j], g, cur = -t[j], G[:, j], float(vals[j])
        if cur > best_val:
            best_val, best_t = cur, t.copy()
        if time.perf_counter() > t_end:
            break
    g = A @ best_t
    variable = np.flatnonzero(bes - als != 0.0)
    s_bits = (bes * g >= als * g)[variable]
    return best_val, np.concatenate([(best_t > 0), s_bits]).astype(np.int8)


def branch_and_bound_max(
    poly: Poly,
    poly_err: dict,
    n: int,
    degree: int,
    time_limit: float | None = None,
    *,
    sparse_cliques: bool | None = None,
    max_nodes: int = 64,
    rel_gap: float = 1e-7,
    root: tuple[float, dict] | None = None,
) -> tuple[float, float, dict]:
    """``(upper, lower, info)`` bracketing ``max_{u in {0,1}^n} poly(u)``: :func:`krivine_max` at every node,
    branching on the variable the relaxation leaves most undecided (``u_v = 0`` / ``u_v = 1``).

    ``upper`` is the largest certified bound over all leaves (open or pruned), hence sound at any stopping
    point; ``lower`` is the best vertex value found (rounded pseudo-marginals + single flips), and
    ``info["vertex"]`` that vertex.  Stops when ``upper <= lower (1 + rel_gap)``, after ``max_nodes`` LPs,
    or at ``time_limit``.  ``root``: the
    ``krivine_max`` result for ``poly`` when already known.
    """
    deadline = None if time_limit is None else time.perf_counter() + float(time_limit)

    def bound(q: Poly, e: dict) -> tuple[float, dict, int]:
        q2, e2, used = _compact(q, e)
        k = len(used)
        if k == 0:
            return _certify_const(q2, e2), {"marginals": np.zeros(0)}, 0
        remaining = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
        val, info = krivine_max(q2, e2, k, min(degree, k), remaining, sparse_cliques=sparse_cliques)
        return val, info, k

    root_val, info = root if root is not None else bound(poly, poly_err)[:2]
    lower, best_u = _best_vertex(poly, n, _full(info, poly, n))
    heap = [(-root_val, 0, poly, poly_err, _full(info, poly, n))]
    closed_max = -math.inf
    nodes, counter = 1, 1
    while heap:
        neg, _, q, e, marg = heap[0]
        upper = max(-neg, closed_max)
        if upper <= lower + rel_gap * abs(lower) or nodes >= max_nodes:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        heapq.heappop(heap)
        free = sorted({v for mono in q for v in mono})
        if not free:
            closed_max = max(closed_max, -neg)
            continue
        var = min(free, key=lambda v: abs(marg[v] - 0.5))
        for value in (0, 1):
            q2, e2 = _substitute(q, e, var, value)
            val, info2, k = bound(q2, e2)
            nodes += 1
            m2 = _full(info2, q2, n)
            m2[var] = value
            cand, cand_u = _best_vertex(poly, n, m2)
            if cand > lower:
                lower, best_u = cand, cand_u
            if k == 0 or val <= lower + rel_gap * abs(lower):
                closed_max = max(closed_max, val)
            else:
                heapq.heappush(heap, (-val, counter, q2, e2, m2))
                counter += 1
    upper = max([-h[0] for h in heap] + [closed_max])
    return upper, lower, {"nodes": nodes, "open": len(heap), "root": root_val, "vertex": best_u,
                          "closed": not heap or upper <= lower + rel_gap * abs(lower)}


def _full(info: dict, poly: Poly, n: int) -> np.ndarray:
    """Pseudo-marginals of a node's LP mapped back to the original ``n`` variables."""
    used = sorted({v for mono in poly for v in mono})
    marg = np.full(n, 0.5)
    m = info.get("marginals")
    if m is not None and len(m) == n:  # an LP over the original variables
        marg[:] = m
    elif m is not None and len(m) == len(used):  # an LP over the compacted variables of a node
        marg[used] = m
    return marg


def _pattern_points(mlp, p: float, u: np.ndarray) -> list:
    """Inputs ``x`` with ``sign(W_1 x + b_1)`` equal to the first-hidden-layer pattern of vertex ``u``
    (least squares to targets ``+-c - b``, several scales ``c``); empty when the pattern is not realised."""
    n_t = mlp.weights[0].shape[1] if p == math.inf else mlp.weights[-1].shape[0]
    als, bes = mlp.layer_slopes(0)
    variable = np.flatnonzero(bes - als != 0.0)
    if variable.size == 0:
        return []
    on = np.zeros(als.size, dtype=bool)
    on[variable] = u[n_t : n_t + variable.size] > 0
    # slope beta (the larger one for ReLU-like activations) is taken for positive pre-activations
    W = mlp.weights[0]
    b = mlp.biases[0]
    sign = torch.from_numpy(np.where(on, 1.0, -1.0))
    points = []
    for c in (1.0, 10.0, 100.0):
        target = (c * sign - b)[variable]
        x = torch.linalg.lstsq(W[variable], target[:, None]).solution[:, 0]
        pre = W @ x + b
        if bool(((pre > 0) == torch.from_numpy(on))[variable].all()):
            points.append(x)
    return points


def _certify_const(poly: Poly, err: dict) -> float:
    c = poly.get((), 0.0)
    return round_up(c + err.get((), 0.0), 2)


class _MasterLP:
    """The restricted LP ``min lambda  s.t.  A[:, cols] c - lambda e_const = -p,  c >= 0`` in one HiGHS
    instance, grown by columns (rows appear when a new column touches a new monomial) and re-solved warm."""

    def __init__(self, A, p_vec: np.ndarray, const: int):
        self.A = A
        self.p_vec = p_vec
        self.row_of = np.full(A.shape[0], -1, dtype=np.int64)
        self.rows: list[int] = []
        self.hs = _highspy()
        self.h = _new_highs(self.hs)
        self.cols: list[np.ndarray] = []
        self._add_rows(np.union1d(np.flatnonzero(p_vec), [const]))
        inf = self.hs.kHighsInf
        self.h.addCol(1.0, -inf, inf, 1, np.array([self.row_of[const]], dtype=np.int32), np.array([-1.0]))

    def _add_rows(self, monos: np.ndarray) -> None:
        monos = monos[self.row_of[monos] < 0]
        if monos.size == 0:
            return
        self.row_of[monos] = len(self.rows) + np.arange(monos.size)
        self.rows.extend(int(m) for m in monos)
        rhs = -self.p_vec[monos]
        self.h.addRows(monos.size, rhs, rhs, 0, np.zeros(monos.size, dtype=np.int32),
                       np.zeros(0, dtype=np.int32), np.zeros(0))

    def add_columns(self, cols: np.ndarray) -> None:
        if cols.size == 0:
            return
        sub = self.A[:, cols].tocsc()
        self._add_rows(np.unique(sub.indices))
        self.h.addCols(cols.size, np.zeros(cols.size), np.zeros(cols.size),
                       np.full(cols.size, self.hs.kHighsInf), sub.nnz, sub.indptr[:-1].astype(np.int32),
                       self.row_of[sub.indices].astype(np.int32), sub.data.astype(np.float64))
        self.cols.append(cols)

    def solve(self, time_limit: float | None):
        """Returns ``(optimal, status, lambda, c over all products, y over all monomials)``."""
        if time_limit is not None:
            self.h.setOptionValue("time_limit", float(self.h.getRunTime() + time_limit))
        # large, degenerate masters: the interior-point solver (with crossover, for a basis and exact duals)
        # got further in 60 s than warm-started simplex on a width-30 net (one experiment, not a benchmark)
        n_cols = sum(c.size for c in self.cols)
        self.h.setOptionValue("solver", "ipm" if n_cols > IPM_COLUMNS else "choose")
        self.h.run()
        status = self.h.getModelStatus()
        text = self.h.modelStatusToString(status)
        sol = self.h.getSolution()
        if not sol.value_valid:
            return False, text, math.nan, None, None
        x = np.asarray(sol.col_value)
        c = np.zeros(self.A.shape[1])
        c[np.concatenate(self.cols)] = np.maximum(x[1:], 0.0)
        y = np.zeros(self.A.shape[0])
        if sol.dual_valid:
            y[np.asarray(self.rows)] = np.asarray(sol.row_dual)
        ok = status == self.hs.HighsModelStatus.kOptimal and sol.dual_valid
        self._last = (x, np.asarray(sol.col_dual) if sol.dual_valid else None)
        return ok, text, float(x[0]), c, y

    def prune(self, max_cols: int) -> np.ndarray:
        """Delete non-basic columns at zero with the largest reduced costs until at most ``max_cols // 2``
        remain (keeps the master small; a deleted product can come back through pricing).  Returns the
        deleted product indices."""
        order = np.concatenate(self.cols)
        x, d = self._last
        if order.size <= max_cols or d is None:
            return np.zeros(0, dtype=np.int64)
        x, d = x[1:], d[1:]
        removable = np.flatnonzero((x <= 0.0) & (d > 0.0))
        n_drop = min(removable.size, order.size - max_cols // 2)
        if n_drop <= 0:
            return np.zeros(0, dtype=np.int64)
        drop = np.sort(removable[np.argpartition(-d[removable], n_drop - 1)[:n_drop]])
        self.h.deleteCols(int(drop.size), (drop + 1).astype(np.int32))
        keep = np.ones(order.size, dtype=bool)
        keep[drop] = False
        self.cols = [order[keep]]
        return order[drop]


def _solve_whole_pdlp(A, p_vec: np.ndarray, const: int, time_limit: float | None):
    """``min lambda  s.t.  A c - lambda e_const = -p,  c >= 0`` over *every* product at once, by HiGHS's
    primal-dual hybrid gradient solver (PDLP: matrix-vector products only, no factorisation).  Its answer is
    accurate to ~1e-7 relative, which is enough: :func:`_certify` turns any ``c`` into a sound bound.
    Returns ``(optimal, status, lambda, c, y)`` like :meth:`_MasterLP.solve`."""
    hs = _highspy()
    h = _new_highs(hs)
    n_mono, n_prod = A.shape
    inf = hs.kHighsInf
    lam_col = sparse.csc_matrix(([-1.0], ([const], [0])), shape=(n_mono, 1))
    M = sparse.hstack([lam_col, A], format="csc")
    lp = hs.HighsLp()
    lp.num_col_ = n_prod + 1
    lp.num_row_ = n_mono
    lp.col_cost_ = np.r_[1.0, np.zeros(n_prod)]
    lp.col_lower_ = np.r_[-inf, np.zeros(n_prod)]
    lp.col_upper_ = np.full(n_prod + 1, inf)
    lp.row_lower_ = -p_vec
    lp.row_upper_ = -p_vec
    lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
    lp.a_matrix_.start_ = M.indptr.astype(np.int32)
    lp.a_matrix_.index_ = M.indices.astype(np.int32)
    lp.a_matrix_.value_ = M.data.astype(np.float64)
    h.passModel(lp)
    h.setOptionValue("solver", "pdlp")
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    h.run()
    status = h.getModelStatus()
    text = h.modelStatusToString(status)
    sol = h.getSolution()
    if not sol.value_valid:
        return False, text, math.nan, None, None
    x = np.asarray(sol.col_value)
    y = np.asarray(sol.row_dual) if sol.dual_valid else None
    return status == hs.HighsModelStatus.kOptimal, text, float(x[0]), np.maximum(x[1:], 0.0), y


def _highspy():
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LiPoptError("LiPopt needs HiGHS: pip install 'lipkit[estimate]' (or highspy)") from exc
    return highspy


def _new_highs(highspy):
    """A silent HiGHS instance (the first one in a process prints a banner on the C stdout: swallow it)."""
    global _BANNER_SHOWN
    if not _BANNER_SHOWN:
        _BANNER_SHOWN = True
        try:
            sys.stdout.flush()
            saved = os.dup(1)
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                try:
                    h = highspy.Highs()
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
        except OSError:
            h = highspy.Highs()
    else:
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


_BANNER_SHOWN = False


def _encode_list(monos: list[tuple[int, ...]], base: int) -> np.ndarray:
    """:func:`_encode` for monomials of mixed degree."""
    out = np.zeros(len(monos), dtype=np.int64)
    for size in {len(m) for m in monos}:
        idx = [i for i, m in enumerate(monos) if len(m) == size]
        out[idx] = _encode(np.array([monos[i] for i in idx], dtype=np.int64).reshape(len(idx), size), base)
    return out


def _certify(A, c: np.ndarray, lam: float, p_vec: np.ndarray, e_vec: np.ndarray, const: int) -> float:
    """Sound value ``lambda + sum_mu |r_mu| + round-off`` for multipliers ``c >= 0`` (:func:`krivine_max`).

    ``r = p - lambda e_const + A c`` is evaluated in float64; each entry is a sum of ``k_mu`` terms (``A`` has
    entries +-1, so ``c_q A_mu,q`` is exact), whose round-off is at most ``gamma_{k_mu} sum |terms|``;
    ``e_vec`` bounds the error of ``p``'s own coefficients."""
    resid = A @ c + p_vec
    resid[const] -= lam
    absum = abs(A) @ c + np.abs(p_vec)
    absum[const] += abs(lam)
    nnz = np.diff(A.tocsr().indptr) + 2
    err = (nnz * EPS64 / (1 - nnz * EPS64)) * absum + e_vec
    total = lam + float(np.abs(resid).sum()) + float(err.sum())
    return round_up(total, 2 * A.shape[0] + 2)


def _lincomb(polys: list[Poly], coefs: np.ndarray) -> Poly:
    out: Poly = {}
    for c, q in zip(coefs, polys, strict=True):
        c = float(c)
        if c == 0.0:
            continue
        for mono, v in q.items():
            out[mono] = out.get(mono, 0.0) + c * v
    return out


def _times_slope(q: Poly, var: int, alpha: float, gap: float) -> Poly:
    """``q * (alpha + gap * u_var)``."""
    out: Poly = {}
    for mono, v in q.items():
        if alpha != 0.0:
            out[mono] = out.get(mono, 0.0) + alpha * v
        if gap != 0.0:
            key = tuple(sorted((*mono, var)))
            out[key] = out.get(key, 0.0) + gap * v
    return out


def _gradient_poly(mlp, p: float, r: int, absolute: bool) -> tuple[Poly, int]:
    """The polynomial ``a^T J(s) b`` whose box maximum bounds row/column ``r``'s dual norm.

    ``J(s) = W_L D_{L-1} W_{L-1} ... D_1 W_1`` with ``D_l = diag(alpha_l + (beta_l - alpha_l) s_l)``;
    ``p = inf``: ``a = e_r``, ``b = t = 2u - 1`` (u over inputs); ``p = 1``: ``a = t`` (over outputs),
    ``b = e_r``.  Variables: u first, then the s of layer 1, 2, ...  With ``absolute`` every coefficient is
    replaced by its absolute value (a bound on the float64 round-off of the real computation).
    """
    Ws = [w.numpy() for w in mlp.weights]
    Ws = [np.abs(w) for w in Ws] if absolute else Ws
    sgn = 1.0 if not absolute else -1.0  # |2u - 1| coefficients
    n_t = Ws[0].shape[1] if p == math.inf else Ws[-1].shape[0]
    if p == math.inf:
        x: list[Poly] = [{(j,): 2.0, (): -1.0 * sgn} for j in range(n_t)]
    else:
        x = [{(): 1.0} if j == r else {} for j in range(Ws[0].shape[1])]
    offset = n_t
    for layer, w in enumerate(Ws):
        x = [_lincomb(x, w[i]) for i in range(w.shape[0])]
        if layer < len(Ws) - 1:
            als, bes = mlp.layer_slopes(layer)
            new_x: list[Poly] = []
            for k, q in enumerate(x):
                al, gap = float(als[k]), float(bes[k] - als[k])
                al, gap = (abs(al), abs(gap)) if absolute else (al, gap)
                # a neuron with a fixed slope (gap 0, e.g. a ReLU that cannot switch) needs no variable
                new_x.append(_times_slope(q, offset, al, gap))
                offset += gap != 0.0
            x = new_x
    if p == math.inf:
        return x[r], offset
    t = [{(i,): 2.0, (): -1.0 * sgn} for i in range(n_t)]
    out: Poly = {}
    for ti, xi in zip(t, x, strict=True):
        for m1, v1 in ti.items():
            for m2, v2 in xi.items():
                key = tuple(sorted((*m1, *m2)))
                out[key] = out.get(key, 0.0) + v1 * v2
    return out, offset


def coefficient_errors(mlp, pabs: Poly) -> dict[tuple[int, ...], float]:
    """Bound of the float64 error of each coefficient of the gradient polynomial: a coefficient is a sum of
    products along paths through the network, at most ``k_ops`` roundings per term, so its error is at most
    ``gamma = 2 k_ops EPS64 / (1 - k_ops EPS64)`` times the same sum of absolute values (``pabs``, the
    polynomial of :func:`_gradient_poly` with ``absolute=True``; Higham 2002, Lemma 3.1)."""
    k_ops = sum(w.shape[1] + 2 for w in mlp.weights) + 4
    gamma = 2.0 * k_ops * EPS64 / (1.0 - k_ops * EPS64)
    return {m: gamma * v for m, v in pabs.items()}


def lipopt(
    model: nn.Module,
    p: float | int | str = math.inf,
    *,
    degree: int = 3,
    time_limit: float | None = None,
    neuron_slopes: list[tuple[np.ndarray, np.ndarray]] | None = None,
    input_shape: tuple[int, ...] | None = None,
    sparse_cliques: bool | None = None,
    max_nodes: int | None = None,
) -> LiPoptResult:
    """Certified l_inf (or l1) Lipschitz upper bound of an MLP by LiPopt-``degree``.

    When the LP of the whole hierarchy level is solved but leaves a gap to the best vertex of the polynomial,
    up to ``max_nodes`` LPs of a branch and bound (:func:`branch_and_bound_max`) close it (``max_nodes=1``:
    the plain hierarchy; default: 32 when the polynomial has at most 64 variables, else 1).  Every stopping
    point is sound.

    The gradient polynomial of a network with ``L`` linear layers has degree ``L``, so ``degree >= L``.
    ``neuron_slopes`` (per hidden layer, per-neuron ``(alpha, beta)``) replaces the activations' slope
    ranges, e.g. with the ranges interval bounds imply on an input domain (the local method); neurons with
    ``alpha == beta`` get no variable.
    Raises ``ValueError`` for p = 2, ``LiPoptError`` when the degree is too low or the LP is too large /
    fails.
    """
    p = normalize_p(p)
    if p == 2:
        raise ValueError("LiPopt is implemented for p=inf and p=1; use LipSDP for p=2")
    if degree < 1:
        raise ValueError(f"LiPopt degree must be >= 1, got {degree}")
    t0 = time.perf_counter()
    mlp = parse_mlp(model, input_shape)
    if neuron_slopes is not None:
        if len(neuron_slopes) != mlp.depth - 1:
            raise ValueError(f"neuron_slopes needs {mlp.depth - 1} layers, got {len(neuron_slopes)}")
        mlp.neuron_slopes = list(neuron_slopes)
    if mlp.depth < 2:
        raise LiPoptError("LiPopt needs a hidden layer (a linear map's norm is exact: use 'naive')")
    if degree < mlp.depth:
        raise LiPoptError(
            f"the gradient polynomial of a depth-{mlp.depth} network has degree {mlp.depth}: "
            f"LiPopt needs degree >= {mlp.depth}, got {degree}"
        )
    rows_out: list[float] = []
    infos: list[dict] = []
    deadline = None if time_limit is None else t0 + float(time_limit)
    n_rows = mlp.weights[-1].shape[0] if p == math.inf else mlp.input_dim
    for r in range(n_rows):
        poly, n_vars = _gradient_poly(mlp, p, r, absolute=False)
        pabs, _ = _gradient_poly(mlp, p, r, absolute=True)
        # share what is left of the time limit evenly between the rows still to do
        remaining = None if deadline is None else max((deadline - time.perf_counter()) / (n_rows - r), 1e-3)
        err = coefficient_errors(mlp, pabs)
        val, info = krivine_max(poly, err, n_vars, degree, remaining, sparse_cliques=sparse_cliques)
        info["root"] = val
        nodes = max_nodes if max_nodes is not None else (32 if n_vars <= 64 else 1)
        branched = nodes > 1 and info["converged"]
        if branched:
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
            up, vertex, bb = branch_and_bound_max(poly, err, n_vars, degree, remaining,
                                                  sparse_cliques=info["sparse_cliques"], max_nodes=nodes,
                                                  root=(val, info))
            info.update(nodes=bb["nodes"], gap_closed=bb["closed"], vertex_max=vertex)
            val = min(val, up)
            info["hints"] = _pattern_points(mlp, p, bb["vertex"])
        if mlp.depth == 2 and p == math.inf:
            # many more vertices than rounding the LP's marginals: multi-start flips of the inputs' signs (the
            # marginals are one of the starts), each sweep scoring every flip at once
            flip_val, flip_u = _flip_search(mlp, r, info.get("marginals"))
            info["flip_search_value"] = flip_val
            info["hints"] = info.get("hints", []) + _pattern_points(mlp, p, flip_u)
        elif not branched and info.get("marginals") is not None:
            _, vertex_u = _best_vertex(poly, n_vars, info["marginals"], seconds=5.0)
            info["hints"] = _pattern_points(mlp, p, vertex_u)
        rows_out.append(val)
        infos.append(info)
    status = "; ".join(sorted({i["lp_status"] for i in infos}))
    details = {
        "converged": all(i["converged"] for i in infos),
        "sparse_cliques": any(i["sparse_cliques"] for i in infos),
        "products": max(i["products"] for i in infos),
        "products_used": max(i["products_used"] for i in infos),
        "rounds": sum(i["rounds"] for i in infos),
        "root_bound": max(i["root"] for i in infos),
        "nodes": sum(i.get("nodes", 1) for i in infos),
        "gap_closed": all(i.get("gap_closed", False) for i in infos),
        # inputs whose first-layer activation pattern is the one of the best vertex found (a hint for
        # lower_bound: the Jacobian there is a real, attained slope)
        "hint_points": [x for i in infos for x in i.get("hints", [])],
    }
    return LiPoptResult(max(rows_out), p, degree, rows_out, status, time.perf_counter() - t0, details)
