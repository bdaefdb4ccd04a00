"""Tests that kill the mutants of the estimators' re-certification (``make mutate SHARD=lipsdp_cert``,
``lipopt_cert``, ``estimate_upper``; bench/mutation_scope.py).

The solvers' answers are not trusted by the library, so the tests do not trust them either: every
certified value is checked against an independent exact computation.

* LipSDP: the matrix ``M(rho, T)`` is rebuilt here from the network's weights in exact rational
  arithmetic (one incremental quadratic constraint per neuron, Fazlyab et al. 2019), and ``-M`` is
  factored exactly (LDL^T over :class:`fractions.Fraction`): the certified ``rho`` must make ``-M``
  positive definite, and ``rho / (1 + 1e-6)`` must not (so the certificate is tight for its multipliers).
* LiPopt: the residual sums are recomputed in Fractions, polynomials are maximised by enumerating every
  vertex, and the gradient polynomial is compared with the exact Jacobian norms of every activation
  pattern.
* naive / local / affine bounds: exact operator norms (l_inf and l_1 in Fractions, l_2 in 60-digit mpmath).
"""

from __future__ import annotations

import importlib
import itertools
import math
from fractions import Fraction

import cvxpy  # noqa: F401  (imported here so that mutmut's forked test runs share the import)
import mpmath
import numpy as np
import pytest
import torch
from exact_ref import at_least, exact_matrix_norm
from torch import nn

import lipkit
from lipkit.bounds import EPS64, lipschitz_bound, round_up
from lipkit.estimation import estimate, local_upper, naive_upper
from lipkit.estimation._mlp import Comparators, activation_slopes, parse_mlp
from lipkit.estimation.lipopt import (
    _certify,
    _certify_const,
    _compact,
    _gradient_poly,
    _substitute,
    branch_and_bound_max,
    coefficient_errors,
)
from lipkit.estimation.lipsdp import (
    _blocks,
    _certify_blocks,
    _dense_from_blocks,
    _init_layerwise,
    _lmi,
    _negated_blocks,
    _structure,
    _verify_blocks,
    certified_upper,
    certify_multipliers,
)
from lipkit.estimation.local import activation_slope_range, affine_local_upper, naive_local_upper

mpmath.mp.dps = 60
INF = math.inf


def F(v) -> Fraction:
    return Fraction(float(v))


# --------------------------------------------------------------------------- exact LipSDP matrices


def _nets() -> list[nn.Sequential]:
    torch.manual_seed(0)
    one = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    two = nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(0.2), nn.Linear(3, 3), nn.Tanh(),
                        nn.Linear(3, 1)).double()
    sig = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2)).double()
    deep = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 3),
                         nn.LeakyReLU(0.5), nn.Linear(3, 1)).double()
    grow = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    steep = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(3.0), nn.Linear(3, 2)).double()  # slopes [1, 3]
    return [one, two, sig, deep, grow, steep]


def _exact_lmi(net: nn.Sequential, lam, rho, scale: float = 1.0, absolute: str = "") -> list[list[Fraction]]:
    """``M(rho, diag(lam))`` of the network, in Fractions, from its weights (module docstring).

    ``absolute="blocks"``: the magnitude companion of the block assembly (every term's absolute value, the
    coupling term on both sides); ``"lmi"``: that of ``_lmi`` (the coupling term twice on one side)."""
    mlp = parse_mlp(net)
    ws = [[[F(v) for v in row] for row in w.tolist()] for w in mlp.weights]
    sizes = [len(ws[0][0])] + [len(w) for w in ws[:-1]]
    offs = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    n = offs[-1]
    M = [[Fraction(0)] * n for _ in range(n)]
    lam = [F(v) for v in np.asarray(lam).reshape(-1)]
    li = 0
    for k, w in enumerate(ws[:-1]):
        a_arr, b_arr = mlp.layer_slopes(k)
        for i, row in enumerate(w):
            a, b, lk = F(a_arr[i]), F(b_arr[i]), lam[li]
            li += 1
            v = [Fraction(0)] * n  # the pre-activation as a linear form of z
            for j, wij in enumerate(row):
                v[offs[k] + j] = wij
            phi = offs[k + 1] + i
            for p in range(n):
                for q in range(n):
                    t = -2 * a * b * lk * v[p] * v[q]
                    M[p][q] += abs(t) if absolute else t
                t = (a + b) * lk * v[p]
                if absolute == "lmi":
                    M[p][phi] += 2 * abs(t)
                elif absolute:
                    M[p][phi] += abs(t)
                    M[phi][p] += abs(t)
                else:
                    M[p][phi] += t
                    M[phi][p] += t
            M[phi][phi] += 2 * lk if absolute else -2 * lk
    sc = F(scale)
    for row in ws[-1]:
        o = [Fraction(0)] * n
        for j, wij in enumerate(row):
            o[offs[-2] + j] = wij / sc
        for p in range(n):
            for q in range(n):
                M[p][q] += abs(o[p] * o[q]) if absolute else o[p] * o[q]
    for i in range(sizes[0]):
        M[i][i] += F(rho) if absolute else -F(rho)
    return M


def _definiteness(A: list[list[Fraction]]) -> str:
    """``"pd"`` if the symmetric rational ``A`` is positive definite, ``"not psd"`` if a negative pivot shows
    it is not positive semidefinite (exact LDL^T)."""
    A = [row[:] for row in A]
    n = len(A)
    for k in range(n):
        piv = A[k][k]
        if piv < 0:
            return "not psd"
        if piv == 0:
            return "singular"
        for i in range(k + 1, n):
            f = A[i][k] / piv
            if f:
                for j in range(k + 1, n):
                    A[i][j] -= f * A[k][j]
    return "pd"


def _neg(M):
    return [[-v for v in row] for row in M]


def _scaled(rho: float, factor: float) -> float:
    return float(Fraction(rho) / Fraction(factor))


@pytest.mark.parametrize("which", [0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_certified_rho_is_exactly_feasible_and_tight_for_its_multipliers(which, scale):
    net = _nets()[which]
    mlp = parse_mlp(net)
    lams = _init_layerwise(_blocks(mlp, scale), 2.0)
    lam = np.concatenate(lams)
    s = _structure(mlp, scale)
    rho = certify_multipliers(s, lam)
    assert math.isfinite(rho)
    # the multipliers as given are tried first: -M(rho, T) is positive definite in exact arithmetic
    assert _definiteness(_neg(_exact_lmi(net, lam, rho, scale))) == "pd"
    # and rho is the smallest such value up to the documented inflation
    assert _definiteness(_neg(_exact_lmi(net, lam, _scaled(rho, 1 + 1e-6), scale))) == "not psd"
    # the structured (first-order) route certifies the same multipliers to the same accuracy
    blk = _blocks(mlp, scale)
    rho_b = _certify_blocks(blk, lams)
    assert _definiteness(_neg(_exact_lmi(net, lam, rho_b, scale))) == "pd"
    assert _definiteness(_neg(_exact_lmi(net, lam, _scaled(rho_b, 1 + 1e-6), scale))) == "not psd"


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_block_verification_accepts_only_feasible_rho(which):
    net = _nets()[which]
    mlp = parse_mlp(net)
    blk = _blocks(mlp, 1.0)
    lams = _init_layerwise(blk, 1.5)
    lam = np.concatenate(lams)
    rho = _certify_blocks(blk, lams)
    low = _scaled(rho, 1 + 1e-6)
    assert _definiteness(_neg(_exact_lmi(net, lam, low))) == "not psd"
    assert not _verify_blocks(blk, lam, low)  # infeasible: the proof must fail
    assert _verify_blocks(blk, lam, rho * 1.01)
    # an indefinite coupling (multipliers too small for the output term) is refused at any rho
    tiny = [0.01 * x for x in lams]
    assert not _verify_blocks(blk, np.concatenate(tiny), 1e6)


@pytest.mark.parametrize("which,scale", [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (5, 1.0), (1, 2.0)])
def test_lmi_matrices_equal_the_exact_ones_and_bound_their_magnitude(which, scale):
    net = _nets()[which]
    mlp = parse_mlp(net)
    lam = np.concatenate(_init_layerwise(_blocks(mlp, scale), 2.0)) * np.linspace(1.0, 1.7, _n_hidden(mlp))
    rho = 0.37
    exact = np.array([[float(v) for v in row] for row in _exact_lmi(net, lam, rho, scale)])
    big = float(np.abs(exact).max())
    for layout, (M, Mabs) in (("lmi", _lmi(_structure(mlp, scale), lam, rho)),
                              ("blocks", _dense_from_blocks(_blocks(mlp, scale), lam, rho))):
        assert np.abs(M - exact).max() <= 1e-13 * big
        assert np.abs(M - M.T).max() == 0.0
        # the magnitude companion (its Frobenius norm sizes the round-off margin): every term's |.|
        comp = np.array([[float(v) for v in row]
                         for row in _exact_lmi(net, lam, rho, scale, absolute=layout)])
        assert np.abs(Mabs - comp).max() <= 1e-13 * float(comp.max())


def _n_hidden(mlp) -> int:
    return sum(int(w.shape[0]) for w in mlp.weights[:-1])


def test_certified_upper_rounds_the_square_root_up():
    for rho, scale in ((2.0, 3.0), (0.1, 7.0), (1e-3, 1e3)):
        up = certified_upper(rho, scale)
        exact = mpmath.sqrt(mpmath.mpf(rho)) * mpmath.mpf(scale)
        assert mpmath.mpf(up) >= exact
        assert up <= float(exact) * (1 + 64 * EPS64)
    assert certified_upper(4.0, 1.5) == round_up(3.0, 8)


def test_lipsdp_certificate_is_sound_for_the_exact_constant_of_a_one_neuron_net():
    """f(x) = v relu(w.x): Lip_2 = |v| ||w||_2, and LipSDP is exact on it (multiplier v^2)."""
    net = nn.Sequential(nn.Linear(3, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.6, -0.8, 1.0 / 3]], dtype=torch.float64))
        net[2].weight.fill_(-1.7)
    s = _structure(parse_mlp(net), 1.0)
    rho = certify_multipliers(s, np.array([1.7**2]))
    exact = mpmath.mpf(1.7) ** 2 * (mpmath.mpf(0.6) ** 2 + mpmath.mpf(-0.8) ** 2 + mpmath.mpf(1.0 / 3) ** 2)
    assert mpmath.mpf(rho) >= exact and rho <= float(exact) * (1 + 1e-8)


# --------------------------------------------------------------------------- LiPopt


def _rand_poly(seed: int, n: int, degree: int) -> dict:
    rng = np.random.default_rng(seed)
    poly = {(): float(rng.normal())}
    for r in range(1, degree + 1):
        for mono in itertools.combinations(range(n), r):
            if rng.random() < 0.7:
                poly[mono] = float(rng.normal() * 10.0 ** rng.integers(-2, 3))
    return poly


def _vertex_max(poly: dict, n: int) -> Fraction:
    best = None
    for u in itertools.product((0, 1), repeat=n):
        v = sum((F(c) for mono, c in poly.items() if all(u[i] for i in mono)), Fraction(0))
        best = v if best is None or v > best else best
    return best


def test_certify_adds_every_residual_and_the_coefficient_errors():
    from scipy import sparse

    rng = np.random.default_rng(1)
    A = sparse.random(6, 9, density=0.5, random_state=2,
                      data_rvs=lambda k: rng.choice([-1.0, 1.0], k)).tocsc()
    c = rng.uniform(0, 3, 9) / 3
    p_vec = rng.normal(size=6) * 100 / 7
    e_vec = np.array([0.0, 0.5, 0.0, 1e-3, 0.0, 0.25])
    lam, const = 2.0 / 3, 2
    got = _certify(A, c, lam, p_vec, e_vec, const)
    Ad = A.toarray()
    resid = [sum(F(Ad[i, j]) * F(c[j]) for j in range(9)) + F(p_vec[i]) - (F(lam) if i == const else 0)
             for i in range(6)]
    exact = F(lam) + sum(abs(r) for r in resid) + sum(F(e) for e in e_vec)
    assert Fraction(got) >= exact
    assert got <= float(exact) * (1 + 1e-12)
    # and the documented round-off terms on top: gamma_k (k = entries + 2) times each row's absolute sum for
    # the residuals, then round_up over 2 m + 2 operations (m rows); 5e-16 covers the float64 evaluation
    absum = [sum(abs(F(Ad[i, j])) * F(c[j]) for j in range(9)) + abs(F(p_vec[i]))
             + (F(lam) if i == const else 0) for i in range(6)]
    k = [int(v) + 2 for v in np.diff(A.tocsr().indptr)]
    err = sum(k[i] * F(EPS64) / (1 - k[i] * F(EPS64)) * absum[i] for i in range(6))
    documented = (exact + err) * (1 + 4 * (2 * 6 + 2) * F(EPS64))
    assert Fraction(got) >= documented * (1 - Fraction(5, 10**16))


def test_certify_const_rounds_up_the_constant_and_its_error():
    assert Fraction(_certify_const({(): 1.0 / 3}, {(): 1e-3})) >= F(1.0 / 3) + F(1e-3)
    assert _certify_const({(): 1.0 / 3}, {(): 1e-3}) <= (1.0 / 3 + 1e-3) * (1 + 1e-14)
    assert _certify_const({}, {}) == round_up(0.0, 2)
    assert _certify_const({(): -2.0}, {}) == round_up(-2.0, 2)


def test_coefficient_errors_follow_the_documented_gamma():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    mlp = parse_mlp(net)
    k_ops = (3 + 2) + (4 + 2) + 4
    gamma = 2 * k_ops * EPS64 / (1 - k_ops * EPS64)
    pabs = {(): 2.0, (0, 4): 0.5, (1,): 3.0}
    err = coefficient_errors(mlp, pabs)
    assert set(err) == set(pabs)
    for m, v in pabs.items():
        assert err[m] >= gamma * v and err[m] <= gamma * v * (1 + 1e-12)


def test_substitute_is_exact_and_bounds_the_error_of_merged_coefficients():
    poly = {(0, 1): 1.0 / 3, (1,): 1e16 / 3, (0,): 0.1, (): 2.0 / 7, (1, 2): -5.0}
    err = {(1,): 1e-3, (0, 1): 2e-3}
    for var, value in ((0, 1), (0, 0), (1, 1), (2, 0)):
        out, out_err = _substitute(poly, err, var, value)
        assert all(var not in mono for mono in out)
        # exact agreement on every vertex of the remaining variables, up to the reported errors
        for u in itertools.product((0, 1), repeat=3):
            if u[var] != value:
                continue
            orig = sum((F(c) for mono, c in poly.items() if all(u[i] for i in mono)), Fraction(0))
            new = sum((F(c) for mono, c in out.items() if all(u[i] for i in mono)), Fraction(0))
            slack = sum((F(e) for mono, e in out_err.items() if all(u[i] for i in mono)), Fraction(0))
            own = sum((F(e) for mono, e in err.items() if all(u[i] for i in mono)), Fraction(0))
            assert abs(new - orig) <= slack - own + Fraction(1, 10**30) or abs(new - orig) <= slack
        # every error of the input is carried to its (possibly merged) monomial
        for mono, e in err.items():
            if var in mono and value == 0:
                continue
            target = tuple(v for v in mono if v != var)
            assert out_err[target] >= e
    # the errors of every coefficient merged into one monomial add up (plus the rounding of the sum)
    for var, value in ((0, 1), (1, 1), (2, 1)):
        errs_in = {(0, 1): 1e-3, (1,): 2e-3, (2,): 4e-3}
        out, out_err = _substitute({(0, 1): 0.5, (1,): 0.25, (2,): 0.125}, errs_in, var, value)
        into: dict = {}
        for mono, e in errs_in.items():
            into.setdefault(tuple(v for v in mono if v != var), []).append(e)
        for target, errs in into.items():
            assert out_err[target] >= sum(errs) and out_err[target] <= sum(errs) + 1e-15
    merged, merged_err = _substitute({(0,): 1e16 / 3, (): 1.0 / 3}, {}, 0, 1)
    exact = F(1e16 / 3) + F(1.0 / 3)
    assert abs(F(merged[()]) - exact) <= F(merged_err[()]) and merged_err[()] > 0


def test_compact_renumbers_the_used_variables_in_order():
    poly, err, used = _compact({(2, 5): 1.5, (5,): -1.0, (): 0.25}, {(2, 5): 1e-3, (7,): 9.0})
    assert used == [2, 5]
    assert poly == {(0, 1): 1.5, (1,): -1.0, (): 0.25}
    assert err == {(0, 1): 1e-3}


@pytest.mark.parametrize("seed", range(3))
def test_branch_and_bound_brackets_the_vertex_maximum_at_every_stopping_point(seed):
    n = 6
    poly = _rand_poly(seed, n, 2)  # quadratic: level 2 of the hierarchy leaves a gap to branch on
    err = {m: 1e-13 * abs(c) for m, c in poly.items()}
    exact = _vertex_max(poly, n)
    for nodes in (1, 3, 64):
        up, low, info = branch_and_bound_max(poly, err, n, 2, max_nodes=nodes)
        assert Fraction(up) >= exact, (nodes, up, float(exact))
        assert Fraction(low) <= exact + Fraction(1, 10**12) * (1 + abs(exact))  # a float evaluation
        u = info["vertex"]
        assert low == pytest.approx(float(sum(c for mono, c in poly.items() if all(u[i] for i in mono))),
                                    rel=1e-12, abs=1e-12)
    up, low, info = branch_and_bound_max(poly, err, n, 2, max_nodes=200)
    assert info["closed"] and float(up) <= float(exact) + 1e-7 * (1 + abs(float(exact)))


def _pattern_norms(mlp, p: float, r: int) -> Fraction:
    """The largest exact ``||row r of J||_1`` (p = inf) or ``||column r of J||_1`` (p = 1) over every
    activation pattern, ``J = W_L D ... D W_1`` with each slope in {alpha, beta}."""
    ws = [[[F(v) for v in row] for row in w.tolist()] for w in mlp.weights]
    slopes = [mlp.layer_slopes(k) for k in range(len(ws) - 1)]
    choices = [list(itertools.product(*[(F(a[i]), F(b[i])) for i in range(len(a))])) for a, b in slopes]
    best = Fraction(0)
    for pattern in itertools.product(*choices):
        J = ws[0]
        for k, d in enumerate(pattern):
            DJ = [[d[i] * v for v in J[i]] for i in range(len(J))]
            W = ws[k + 1]
            J = [[sum(W[o][i] * DJ[i][j] for i in range(len(DJ))) for j in range(len(DJ[0]))]
                 for o in range(len(W))]
        val = sum(abs(v) for v in J[r]) if p == INF else sum(abs(J[o][r]) for o in range(len(J)))
        best = max(best, val)
    return best


@pytest.mark.parametrize("p", [INF, 1.0])
@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.25), nn.Tanh(), nn.LeakyReLU(-0.5)],
                         ids=["relu", "leaky", "tanh", "negative-slope"])
def test_gradient_polynomial_maximum_is_the_largest_pattern_norm(p, act):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 3), act, nn.Linear(3, 2), act, nn.Linear(2, 2)).double()
    with torch.no_grad():  # weights of exactly 1 and 0 (as in lowered sorts) are terms like any other
        net[0].weight[0, 0] = 1.0
        net[0].weight[1, 1] = 0.0
        net[2].weight[1, 0] = 1.0
    mlp = parse_mlp(net)
    for r in range(2):
        poly, n = _gradient_poly(mlp, p, r, absolute=False)
        exact = _pattern_norms(mlp, p, r)
        got = _vertex_max(poly, n)
        assert abs(got - exact) <= Fraction(1, 10**12) * (1 + exact)
        pabs, n2 = _gradient_poly(mlp, p, r, absolute=True)
        assert n2 == n and set(poly) <= set(pabs) | {()}
        for mono, c in poly.items():  # the absolute polynomial dominates every coefficient
            assert pabs.get(mono, 0.0) >= abs(c) * (1 - 1e-12)


# --------------------------------------------------------------------------- naive, local, estimate


def test_naive_upper_is_the_registered_product_bound_for_every_spelling_of_p():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    for p, q in ((2, 2.0), ("inf", INF), (1, 1.0), (math.inf, INF)):
        assert naive_upper(net, p) == lipschitz_bound(net, q)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    assert naive_upper(conv, 2, input_shape=(1, 4, 4)) == lipschitz_bound(conv, 2.0, input_shape=(1, 4, 4))



@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_naive_local_upper_is_the_product_of_the_exact_folded_norms(p):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    mlp = parse_mlp(net)
    rng = np.random.default_rng(0)
    mlp.neuron_slopes = [(np.zeros(4), rng.uniform(0.2, 1.0, 4)), (np.full(3, 0.1), rng.uniform(0.5, 1.0, 3))]
    got = naive_local_upper(mlp, p)
    ws = [[[F(v) for v in row] for row in w.tolist()] for w in mlp.weights]
    m = [[F(max(abs(a), abs(b))) for a, b in zip(*mlp.layer_slopes(k), strict=True)] for k in range(2)]
    total = mpmath.mpf(1)
    for k, w in enumerate(ws):
        if p == 2:  # D^(1/2) W D^(1/2): irrational entries, in mpmath
            left = [mpmath.sqrt(mpmath.mpf(float(v))) for v in m[k]] if k < 2 else [1] * len(w)
            right = [mpmath.sqrt(mpmath.mpf(float(v))) for v in m[k - 1]] if k > 0 else [1] * len(w[0])
            mm = mpmath.matrix([[left[i] * mpmath.mpf(float(w[i][j])) * right[j] for j in range(len(w[0]))]
                                for i in range(len(w))])
            ev = mpmath.eigsy(mm.T * mm)[0]
            total *= mpmath.sqrt(max(ev[i] for i in range(ev.rows)))
        else:
            right = m[k - 1] if k > 0 else [Fraction(1)] * len(w[0])
            scaled = [[w[i][j] * right[j] for j in range(len(w[0]))] for i in range(len(w))]
            norm = exact_matrix_norm(scaled, p)
            total *= mpmath.mpf(norm.numerator) / norm.denominator
    assert mpmath.mpf(got) >= total
    assert got <= float(total) * (1 + 1e-12)


@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_affine_local_upper_is_the_exact_jacobian_norm_when_no_neuron_switches(p):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    mlp = parse_mlp(net)
    fixed = [np.array([1.0, 0.0, 1.0, 0.3]), np.array([0.0, 1.0])]
    mlp.neuron_slopes = [(a, a.copy()) for a in fixed]
    got = affine_local_upper(mlp, p)
    ws = [[[F(v) for v in row] for row in w.tolist()] for w in mlp.weights]
    J = ws[0]
    for k in (1, 2):
        d = [F(v) for v in fixed[k - 1]]
        J = [[sum(ws[k][o][i] * d[i] * J[i][j] for i in range(len(d))) for j in range(3)]
             for o in range(len(ws[k]))]
    exact = exact_matrix_norm(J, p)
    assert at_least(got, exact)
    assert got <= float(exact) * (1 + 1e-12)
    mlp.neuron_slopes = [(fixed[0], fixed[0] + 1e-9), (fixed[1], fixed[1].copy())]
    assert affine_local_upper(mlp, p) is None  # one neuron can switch


def _slope_exact(act: nn.Module, lo: float, hi: float) -> tuple:
    """Exact min / max of ``phi'`` over ``[lo, hi]`` (60-digit, dense grid plus end points and kinks)."""
    xs = [mpmath.mpf(lo) + (mpmath.mpf(hi) - mpmath.mpf(lo)) * i / 400 for i in range(401)]
    if isinstance(act, nn.Tanh):
        d = [1 - mpmath.tanh(x) ** 2 for x in xs + ([mpmath.mpf(0)] if lo < 0 < hi else [])]
    elif isinstance(act, nn.Sigmoid):
        extra = [mpmath.mpf(0)] if lo < 0 < hi else []
        d = [mpmath.exp(-x) / (1 + mpmath.exp(-x)) ** 2 for x in xs + extra]
    elif isinstance(act, nn.ELU):
        a = mpmath.mpf(act.alpha)
        d = [a * mpmath.exp(x) if x < 0 else (a if hi <= 0 else mpmath.mpf(1)) for x in xs]
        if lo < 0 < hi:
            d += [a, mpmath.mpf(1)]  # both one-sided slopes at the kink
    elif isinstance(act, lipkit.SmoothSoftplus):
        b = mpmath.mpf(act.beta)
        d = [1 / (1 + mpmath.exp(-b * x)) for x in xs]
    else:
        raise AssertionError(act)
    return min(d), max(d)


@pytest.mark.parametrize("act", [nn.Tanh(), nn.Sigmoid(), nn.ELU(0.5), nn.ELU(2.0),
                                 lipkit.SmoothSoftplus(3.0)],
                         ids=["tanh", "sigmoid", "elu0.5", "elu2", "softplus"])
def test_smooth_slope_ranges_contain_the_exact_derivative_range(act):
    lo = np.array([-3.0, -1.0, 0.5, -0.2, -4.0, 1e-3, -1.0, -0.1, 800.0])
    hi = np.array([-1.0, 2.0, 3.0, 0.0, 4.0, 2e-3, 0.5, 0.5, 900.0])  # kinks below 1; saturated (slope ~0)
    a, b = activation_slope_range(act, lo, hi)
    for i in range(len(lo)):
        dmin, dmax = _slope_exact(act, lo[i], hi[i])
        assert mpmath.mpf(a[i]) <= dmin and mpmath.mpf(b[i]) >= dmax, (i, a[i], b[i], dmin, dmax)
        assert a[i] >= float(dmin) - 1e-9 and b[i] <= float(dmax) + 1e-9  # and tight


def test_piecewise_linear_slope_ranges_are_exact():
    lo = np.array([-3.0, -1.0, 0.0, 0.5, -2.0, 5.0, 7.0, 1.0])
    hi = np.array([-1.0, 0.0, 2.0, 3.0, 2.0, 8.0, 9.0, 1.0])

    def check(act, alpha, beta):
        a, b = activation_slope_range(act, lo, hi)
        assert np.all(a <= np.array(alpha)) and np.all(b >= np.array(beta))
        assert np.allclose(a, alpha, rtol=0, atol=1e-11) and np.allclose(b, beta, rtol=0, atol=1e-11)

    check(nn.ReLU(), [0, 0, 1, 1, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1])
    check(nn.LeakyReLU(0.1), [0.1, 0.1, 1, 1, 0.1, 1, 1, 1], [0.1, 0.1, 1, 1, 1, 1, 1, 1])
    check(nn.LeakyReLU(3.0), [3, 3, 1, 1, 1, 1, 1, 1], [3, 3, 1, 1, 3, 1, 1, 1])
    check(nn.ReLU6(), [0, 0, 1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 1, 1, 0, 1])
    check(nn.Hardtanh(-1.0, 2.0), [0, 1, 1, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 0, 0, 1])
    comp = Comparators(np.array([True, False, True, False, True, False, True, False]))
    check(comp, [0, 1, 1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1])
    # a kink inside an interval whose upper end is below 1 / above ReLU6's 6: both slopes, or the flat one
    a, b = activation_slope_range(nn.LeakyReLU(3.0), np.array([-1.0]), np.array([0.5]))
    assert abs(a[0] - 1) < 1e-11 and abs(b[0] - 3) < 1e-11 and a[0] <= 1 and b[0] >= 3
    a, b = activation_slope_range(nn.ReLU6(), np.array([6.2, 5.0]), np.array([6.8, 6.5]))
    assert np.allclose(a, [0.0, 0.0], atol=1e-11) and np.allclose(b, [0.0, 1.0], atol=1e-11)
    assert bool((a <= 0).all())
    with pytest.raises(TypeError, match="no slope range for activation Softsign"):
        activation_slope_range(nn.Softsign(), lo, hi)


def test_activation_slopes_table():
    assert activation_slopes(nn.ReLU()) == (0.0, 1.0)
    assert activation_slopes(nn.Tanh()) == (0.0, 1.0)
    assert activation_slopes(nn.Hardtanh()) == (0.0, 1.0)
    assert activation_slopes(nn.ReLU6()) == (0.0, 1.0)
    assert activation_slopes(lipkit.SmoothSoftplus(2.0)) == (0.0, 1.0)
    assert activation_slopes(nn.Sigmoid()) == (0.0, 0.25)
    assert activation_slopes(nn.LeakyReLU(0.2)) == (0.2, 1.0)
    assert activation_slopes(nn.LeakyReLU(3.0)) == (1.0, 3.0)
    assert activation_slopes(nn.ELU(0.5)) == (0.0, 1.0)
    assert activation_slopes(nn.ELU(2.5)) == (0.0, 2.5)
    with pytest.raises(TypeError, match="ELU with negative alpha=-1.0 is not slope-restricted"):
        activation_slopes(nn.ELU(-1.0))
    with pytest.raises(TypeError, match="module Softsign is not supported by the MLP estimators"):
        activation_slopes(nn.Softsign())
    comp = Comparators(np.array([True, False]))
    a, b = activation_slopes(comp)
    assert a.tolist() == [0.0, 1.0] and b.tolist() == [1.0, 1.0]


class _Fake:
    def __init__(self, upper: float) -> None:
        self.upper, self.solver_status, self.solver_value, self.variant = upper, "fake", upper, "neuron"


def test_estimate_reports_the_smaller_of_the_method_and_the_naive_bound(monkeypatch):
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    naive = lipschitz_bound(net, 2.0)
    est_mod = lipkit.estimation
    monkeypatch.setattr(est_mod, "lipsdp", lambda *a, **k: _Fake(10 * naive))
    est = estimate(net, 2, "lipsdp", lower=False)
    assert est.upper == naive and est.method == "lipsdp" and est.details["method_upper"] == 10 * naive
    assert est.details["naive"] == naive and est.lower == 0.0
    monkeypatch.setattr(est_mod, "lipsdp", lambda *a, **k: _Fake(0.5 * naive))
    est = estimate(net, 2, "lipsdp", lower=False)
    assert est.upper == 0.5 * naive and "method_upper" not in est.details

    def failing(*a, **k):
        raise est_mod.LipSDPError("boom")

    monkeypatch.setattr(est_mod, "lipsdp", failing)
    est = estimate(net, 2, "lipsdp", lower=False)
    assert est.method == "naive" and est.upper == naive
    assert est.details["fallback"] == ("lipsdp failed (LipSDPError: boom); lipsdp-layer failed "
                                       "(LipSDPError: boom); used naive")


def test_estimate_takes_the_lower_bound_and_refuses_one_above_the_upper(monkeypatch):
    from lipkit.estimation.lower import LowerBound

    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    naive = naive_upper(net, INF)
    seen = {}

    def fake(model, p, **kwargs):
        seen.update(kwargs, p=p)
        return LowerBound(0.5 * naive, "pair", pair=("a", "b"))

    monkeypatch.setattr(lipkit.estimation, "lower_bound", fake)
    est = estimate(net, INF, "naive", lower_kwargs={"n_starts": 3})
    assert est.lower == 0.5 * naive and est.upper == naive and est.p == INF
    assert est.details["lower_kind"] == "pair" and est.details["lower_witness"] == ("a", "b")
    assert seen["n_starts"] == 3 and seen["p"] == INF and "hints" not in seen
    monkeypatch.setattr(lipkit.estimation, "lower_bound", lambda *a, **k: LowerBound(2 * naive, "jacobian",
                                                                                      point="x"))
    with pytest.raises(RuntimeError, match="exceeds the sound upper bound"):
        estimate(net, INF, "naive")


def test_local_upper_is_the_smallest_candidate_and_sound(monkeypatch):
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    lo, hi = torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor([0.3, 0.1], dtype=torch.float64)
    for p in (2.0, INF, 1.0):
        up, info = local_upper(net, p, (lo, hi))
        cands = info["candidates"]
        assert up == min(cands.values()) and info["local_method"] == min(cands, key=cands.get)
        solver = "lipsdp-local" if p == 2 else "lipopt-local"
        assert set(cands) == {"naive-local", solver}
        # sound: no sampled pair of the box has a larger quotient
        g = torch.Generator().manual_seed(0)
        a = lo + (hi - lo) * torch.rand(3000, 2, generator=g, dtype=torch.float64)
        b = lo + (hi - lo) * torch.rand(3000, 2, generator=g, dtype=torch.float64)
        with torch.no_grad():
            q = (net(a) - net(b)).abs().squeeze(1) / torch.linalg.vector_norm(a - b, ord=p, dim=1)
        assert float(q.max()) <= up


def test_estimate_refuses_bad_arguments_by_name():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"^unknown estimation method 'lipsdp-network'; available: naive, "
                                         r"lipsdp, lipsdp-layer, lipopt, lipopt2, local$"):
        estimate(net, 2, method="lipsdp-network")
    with pytest.raises(ValueError, match=r"^unknown estimation method 3"):
        estimate(net, 2, method=3)
    with pytest.raises(ValueError, match=r"^method 'lipsdp' does not support p=inf; for this norm use one of "
                                         r"\['naive', 'lipopt', 'lipopt2', 'local'\]$"):
        estimate(net, "inf", method="lipsdp")
    with pytest.raises(ValueError,
                       match=r"^method 'local' needs input_domain=\(lo, hi\) or \(center, radius, p\)$"):
        estimate(net, 2, method="local")
    with pytest.raises(ValueError, match=r"^input_domain is only used by method='local', not 'naive'$"):
        estimate(net, 2, method="naive", input_domain=(torch.zeros(3), torch.ones(3)))
    assert estimate(net, 2, method="NAIVE", lower=False).method == "naive"


def test_estimate_falls_back_along_the_chain_and_keeps_the_loaded_input_shape(monkeypatch):
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv2d(1, 1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1))
    net.input_shape = (1, 3, 3)  # as load_model sets it: the convolution is lowered with it
    est = estimate(net, INF, method="lipopt", lower=False)
    assert est.method == "lipopt" and est.details["naive"] == naive_upper(net, INF, input_shape=(1, 3, 3))
    assert est.upper <= est.details["naive"]
    # the l2 bound of a convolution depends on the input size: the remembered shape is the one used
    assert naive_upper(net, 2, input_shape=(1, 3, 3)) < naive_upper(net, 2)
    est = estimate(net, method="naive", lower=False)  # p = 2 by default
    assert est.p == 2 and est.upper == naive_upper(net, 2, input_shape=(1, 3, 3))
    assert naive_upper(net, input_shape=(1, 3, 3)) == est.upper
    gelu = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 1))
    est = estimate(gelu, 2, method="lipsdp-layer", lower=False)
    assert est.method == "naive" and est.upper == naive_upper(gelu, 2)
    assert est.details["fallback"].startswith("lipsdp-layer failed (TypeError: module GELU is not supported")
    assert est.details["fallback"].endswith("; used naive")


def test_estimate_local_uses_the_domain_and_its_shape():
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    lo, hi = torch.tensor([0.2, 0.3], dtype=torch.float64), torch.tensor([0.4, 0.5], dtype=torch.float64)
    est = estimate(net, INF, method="local", input_domain=(lo, hi), lower=False)
    up, info = local_upper(net, INF, (lo, hi))
    assert est.method == "local" and est.upper == min(up, naive_upper(net, INF))
    assert est.details["candidates"] == info["candidates"]


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_negated_blocks_are_the_exact_blocks_of_minus_m_and_their_magnitudes(which):
    net = _nets()[which]
    mlp = parse_mlp(net)
    blk = _blocks(mlp, 1.0)
    lam = np.concatenate(_init_layerwise(blk, 2.0)) * np.linspace(1.0, 1.9, _n_hidden(mlp))
    rho = 0.41
    Ad, Adabs, Ao, Aoabs = _negated_blocks(blk, lam, rho)
    sizes = blk["sizes"]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    A = np.zeros((offs[-1], offs[-1]))
    Aabs = np.zeros_like(A)
    for b in range(len(sizes)):
        A[offs[b]:offs[b + 1], offs[b]:offs[b + 1]] = Ad[b]
        Aabs[offs[b]:offs[b + 1], offs[b]:offs[b + 1]] = Adabs[b]
        if b == 0:
            assert Ao[0] is None and Aoabs[0] is None
            continue
        A[offs[b]:offs[b + 1], offs[b - 1]:offs[b]] = Ao[b]
        A[offs[b - 1]:offs[b], offs[b]:offs[b + 1]] = Ao[b].T
        Aabs[offs[b]:offs[b + 1], offs[b - 1]:offs[b]] = Aoabs[b]
        Aabs[offs[b - 1]:offs[b], offs[b]:offs[b + 1]] = Aoabs[b].T
    exact = -np.array([[float(v) for v in row] for row in _exact_lmi(net, lam, rho)])
    comp = np.array([[float(v) for v in row] for row in _exact_lmi(net, lam, rho, absolute="blocks")])
    assert np.abs(A - exact).max() <= 1e-13 * float(np.abs(exact).max())
    assert np.abs(Aabs - comp).max() <= 1e-13 * float(comp.max())


def _exact_rho_bracket(net, lam, lo: float, hi: float, rel: float = 1e-12) -> tuple[float, float]:
    """Floats ``lo < hi`` with ``-M(lo)`` not positive semidefinite and ``-M(hi)`` positive definite, in exact
    arithmetic, ``hi / lo - 1 <= rel`` (bisection from a bracket with those properties)."""
    assert _definiteness(_neg(_exact_lmi(net, lam, hi))) == "pd"
    assert _definiteness(_neg(_exact_lmi(net, lam, lo))) != "pd"
    while hi / lo - 1 > rel:
        mid = 0.5 * (lo + hi)
        if _definiteness(_neg(_exact_lmi(net, lam, mid))) == "pd":
            hi = mid
        else:
            lo = mid
    return lo, hi


@pytest.mark.parametrize("which", [0, 3])
def test_certificates_never_accept_a_rho_just_below_the_exact_minimum(which):
    """A rho 1e-12 (relative) below the smallest feasible one is refused by the block proof, and every
    certified rho lies above the exact minimum."""
    net = _nets()[which]
    mlp = parse_mlp(net)
    blk = _blocks(mlp, 1.0)
    lams = _init_layerwise(blk, 1.2)
    lam = np.concatenate(lams)
    rho = _certify_blocks(blk, lams)
    lo, hi = _exact_rho_bracket(net, lam, _scaled(rho, 1 + 1e-5), rho)
    assert not _verify_blocks(blk, lam, lo)
    assert rho >= hi * (1 - 1e-12)
    assert certify_multipliers(_structure(mlp, 1.0), lam) >= lo


@pytest.mark.parametrize("which", [0, 3])
def test_dense_fallback_of_the_block_certificate_is_exact_and_tight(which, monkeypatch):
    """When the structured proof fails at every inflation, the dense eigenvalue check certifies: its rho is
    feasible in exact arithmetic and within 1e-5 of the smallest feasible one; unusable multipliers give
    inf."""
    ls = importlib.import_module("lipkit.estimation.lipsdp")  # the module (the package exports a function)

    net = _nets()[which]
    mlp = parse_mlp(net)
    blk = _blocks(mlp, 1.0)
    lams = _init_layerwise(blk, 1.5)
    lam = np.concatenate(lams)
    monkeypatch.setattr(ls, "_verify_blocks", lambda *a: False)
    rho = _certify_blocks(blk, lams)
    assert math.isfinite(rho)
    assert _definiteness(_neg(_exact_lmi(net, lam, rho))) == "pd"
    assert _definiteness(_neg(_exact_lmi(net, lam, _scaled(rho, 1 + 1e-5)))) == "not psd"
    assert _certify_blocks(blk, [0.01 * x for x in lams]) == math.inf
    # a Schur value far too small: every inflated candidate is infeasible and the eigenvalue check refuses
    # each of them (the largest eigenvalue, against -tau)
    real = ls._schur_rho
    monkeypatch.setattr(ls, "_schur_rho", lambda b, l: 0.5 * real(b, l))
    got = _certify_blocks(blk, lams)
    assert got == math.inf or _definiteness(_neg(_exact_lmi(net, lam, got))) == "pd"
    assert got == math.inf


def test_singular_certificate_pays_mu_for_a_coupling_that_no_rho_removes():
    """Multipliers (1, 1) with output weights (1, 1) make P = 2 diag(lam) - v v^T singular along (1, 1), while
    the input couples into that direction: M(rho) has a positive eigenvalue for every rho, so the certificate
    must add mu (1 + K^2) with mu >= lambda_max(M(rho)) to stay above the exact constant."""
    from lipkit.estimation.lipsdp import _certify_singular

    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.5], [0.25, 1.0]], dtype=torch.float64))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    s = _structure(parse_mlp(net), 1.0)
    lam = np.array([1.0, 1.0])
    M0 = _lmi(s, lam, 0.0)[0]
    assert abs(np.linalg.eigvalsh(-M0[2:, 2:])[0]) < 1e-12  # P is singular
    bound = _certify_singular(s, [lam])
    W = [[F(1.0), F(0.5)], [F(0.25), F(1.0)]]
    best = Fraction(0)  # exact Lip^2: every ReLU pattern is reachable (W is invertible)
    for d in itertools.product((0, 1), repeat=2):
        row = [sum(d[i] * W[i][j] for i in range(2)) for j in range(2)]
        best = max(best, row[0] ** 2 + row[1] ** 2)
    assert Fraction(bound) >= best
    K2 = s["K2"]
    assert K2 > 1.0
    rho_free = [0.0, 1.0, 2.0]  # the bound holds for any rho: rho + lambda_max(M(rho)) (1 + K^2) >= Lip^2
    for rho in rho_free:
        mu = max(float(np.linalg.eigvalsh(_lmi(s, lam, rho)[0])[-1]), 0.0)
        assert rho + mu * (1 + K2) >= float(best) * (1 - 1e-12)
    assert bound <= min(r + max(float(np.linalg.eigvalsh(_lmi(s, lam, r)[0])[-1]), 0.0) * (1 + K2)
                        for r in (0.0, 1.0, 2.0, 4.0)) * 1.01 + 1.0


@pytest.mark.parametrize("seed", range(2))
def test_branch_and_bound_to_the_leaves_is_exact(seed):
    """With no gap tolerance (rel_gap < 0) the search fixes every variable: each leaf is a constant, certified
    by rounding it up, and the largest leaf is the exact vertex maximum (a time limit that is not reached
    changes nothing)."""
    n = 3
    poly = _rand_poly(seed + 10, n, 2)
    err = {m: 1e-14 * abs(c) for m, c in poly.items()}
    exact = _vertex_max(poly, n)
    up, low, info = branch_and_bound_max(poly, err, n, 2, time_limit=600.0, max_nodes=10**4, rel_gap=-1.0)
    assert info["open"] == 0 and info["nodes"] >= 2 ** n and info["closed"] is True
    assert Fraction(up) >= exact and up <= float(exact) + 1e-12 * (1 + abs(float(exact)))
    assert low == pytest.approx(float(exact), rel=1e-12, abs=1e-12)
    for nodes in (2, 3, 4, 5, 6):  # stopped early: the open leaves' bounds still cover the maximum
        up, low, info = branch_and_bound_max(poly, err, n, 2, max_nodes=nodes, rel_gap=-1.0)
        assert Fraction(up) >= exact, nodes
        assert info["open"] > 0 and info["closed"] is False and info["nodes"] >= nodes


def test_branch_and_bound_of_a_constant_closes_its_only_node():
    up, low, info = branch_and_bound_max({(): 2.5}, {(): 1e-3}, 2, 2, rel_gap=-1.0)
    assert Fraction(up) >= Fraction(2.5) + F(1e-3) and up <= 2.5 + 1e-3 + 1e-12
    assert low == 2.5 and info["open"] == 0 and info["nodes"] == 1


def test_local_upper_in_l1_uses_the_l1_norm():
    """Three outputs from one input: the l_1 constant (largest column sum of |J|) is three times the l_inf
    one (largest row sum), so an l_inf bound would be wrong here; the l_1 candidates are not."""
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()  # the first layer switches on the domain: a LiPopt candidate is computed
        net[2].weight.copy_(torch.eye(3))
        net[2].bias.fill_(1.0)
        net[4].weight.copy_(torch.eye(3))
        net[4].bias.zero_()
    lo, hi = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    up, info = local_upper(net, 1.0, (lo, hi))
    # f(x) = (relu(x) + 1) (1, 1, 1): its slope on x > 0 is (1, 1, 1), whose l_1 norm is 3 (l_inf: 1)
    assert up >= 3.0 and up <= 3.0 * (1 + 1e-6)
    assert set(info["candidates"]) == {"naive-local", "lipopt-local"}
    for name, value in info["candidates"].items():
        assert value >= 3.0, name


def test_local_upper_reports_its_domain_and_a_failing_solver(monkeypatch):
    from lipkit.estimation.local import as_domain

    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    lo, hi = torch.tensor([-1.0, -1.5], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)

    def failing(*a, **k):
        raise lipkit.estimation.LipSDPError("boom")

    monkeypatch.setattr(lipkit.estimation, "lipsdp", failing)
    up, info = local_upper(net, 2.0, (lo, hi))
    assert info["local_solver_error"] == "LipSDPError: boom"
    assert set(info["candidates"]) == {"naive-local"} and up == info["candidates"]["naive-local"]
    assert info["domain"] == as_domain((lo, hi)).describe()


def test_estimate_without_a_naive_bound_keeps_the_method_and_says_why(monkeypatch):
    torch.manual_seed(13)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    monkeypatch.setattr(lipkit.estimation, "lipsdp", lambda *a, **k: _Fake(1.25))

    def no_bound(*a, **k):
        raise TypeError("no rule for Thing")

    monkeypatch.setattr(lipkit.estimation, "naive_upper", no_bound)
    est = estimate(net, 2, "lipsdp", lower=False)
    assert est.upper == 1.25 and est.method == "lipsdp"
    assert est.details["naive"] == math.inf and est.details["naive_error"] == "no rule for Thing"
    with pytest.raises(TypeError, match="^no rule for Thing$"):  # naive itself failing is an error
        estimate(net, 2, "naive", lower=False)


def test_estimate_naive_bound_beside_a_solver_uses_the_input_shape():
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv2d(1, 1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1))
    est = estimate(net, 2, "lipsdp", lower=False, input_shape=(1, 3, 3))
    assert est.method == "lipsdp" and est.details["naive"] == naive_upper(net, 2, input_shape=(1, 3, 3))


class _NoSolve:
    """numpy, except that linalg.solve returns zero (the Schur value then misses its whole coupling term)."""

    def __init__(self) -> None:
        self.linalg = type("linalg", (), {"solve": staticmethod(lambda a, b: 0.0 * np.linalg.solve(a, b)),
                                          "eigvalsh": staticmethod(np.linalg.eigvalsh),
                                          "eigh": staticmethod(np.linalg.eigh),
                                          "norm": staticmethod(np.linalg.norm)})()

    def __getattr__(self, name):
        return getattr(np, name)


def test_certify_multipliers_refuses_rho_values_its_eigenvalue_check_does_not_prove(monkeypatch):
    """With the Schur value made too small, the inflated candidates are infeasible: the eigenvalue check
    M(rho, T) <= -tau I must refuse them, so the certified rho still dominates every attained slope."""
    ls = importlib.import_module("lipkit.estimation.lipsdp")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    mlp = parse_mlp(net)
    s = _structure(mlp, 1.0)
    lam = np.concatenate(_init_layerwise(_blocks(mlp, 1.0), 1.5))
    x = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = torch.func.vmap(torch.func.jacrev(net))(x)
    slope2 = float(torch.linalg.matrix_norm(jac.detach(), ord=2).max()) ** 2  # attained: <= Lip^2
    monkeypatch.setattr(ls, "np", _NoSolve())
    rho = certify_multipliers(s, lam)
    assert rho >= slope2
    assert certify_multipliers(s, np.zeros_like(lam)) == math.inf  # no certificate from zero multipliers


@pytest.mark.parametrize("which", [0, 3, 5])
def test_structure_k2_is_the_documented_sum_of_layer_gains(which):
    """K^2 >= ||dphi||^2 / ||dx||^2 is sum_k prod_{j <= k} (||W_j||_F max |slope_j|)^2, inflated by
    1 + 1e3 N EPS64 (the singular certificate multiplies its eigenvalue margin by 1 + K^2)."""
    mlp = parse_mlp(_nets()[which])
    s = _structure(mlp, 1.0)
    k2, gain = 0.0, 1.0
    for k, w in enumerate(mlp.weights[:-1]):
        a, b = mlp.layer_slopes(k)
        gain *= float(torch.linalg.matrix_norm(w)) * float(max(np.abs(a).max(), np.abs(b).max()))
        k2 += gain * gain
    documented = k2 * (1 + 1e3 * s["N"] * EPS64)
    assert documented * (1 - 1e-15) <= s["K2"] <= documented * (1 + 1e-12)
