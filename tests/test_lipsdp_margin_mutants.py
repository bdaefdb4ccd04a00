"""The round-off margins of the LipSDP certificates, checked against their documented formulas (issue 17).

Each test pins one margin of :mod:`lipkit.estimation.lipsdp` to a value computed independently (exact
rationals) or to the decision it must take on an input built so that the margin decides: the block LDL^T
proof :func:`_verify_blocks` must refuse when its documented round-off bound exceeds ``eta`` and accept when
it is below, and the eigenvalue margin ``tau`` must be the documented ``1e3 N EPS64 (||Mabs||_F + rho)``.
These kill the ``margin-unreached`` mutants of bench/mutation_scope.py (a weakened margin).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from exact_ref import l2_norm_lower, sqrt_down

from lipkit.bounds import EPS64
from lipkit.estimation.lipsdp import _eig_margin, _proves_nsd, _singular_mu, _verify_blocks

U = Fraction(EPS64)


def _exact_tau(Mabs: np.ndarray, rho: float) -> Fraction:
    """1e3 N EPS64 (||Mabs||_F + rho), with the Frobenius norm's square computed exactly."""
    sq = sum(Fraction(float(x)) ** 2 for x in Mabs.ravel())
    # ||Mabs||_F within a relative 1e-15 of sqrt(sq): bracket it with float sqrt of the exact square
    fro = Fraction(float(np.sqrt(float(sq))))
    return 1000 * Mabs.shape[0] * U * (fro + Fraction(rho))


@pytest.mark.parametrize("n,rho", [(3, 0.7), (5, 4.0), (8, 0.01)])
def test_eig_margin_is_the_documented_tau(n, rho):
    rng = np.random.default_rng(n)
    Mabs = np.abs(rng.standard_normal((n, n)))
    Mabs = Mabs + Mabs.T
    tau = Fraction(_eig_margin(Mabs, rho))
    exact = _exact_tau(Mabs, rho)
    assert abs(tau - exact) <= Fraction(1, 10**12) * exact
    # N is the matrix's own size: a 2n x 2n companion with the same norm gets twice the margin
    big = np.zeros((2 * n, 2 * n))
    big[:n, :n] = Mabs
    assert abs(Fraction(_eig_margin(big, rho)) - 2 * exact) <= Fraction(1, 10**12) * exact


def test_eigenvalue_check_and_singular_shift_use_tau_with_the_right_sign():
    rng = np.random.default_rng(0)
    n = 4
    Mabs = np.abs(rng.standard_normal((n, n)))
    Mabs = Mabs + Mabs.T
    rho = 1.5
    tau = float(_exact_tau(Mabs, rho))
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))

    def with_top(top):
        M = Q @ np.diag([top - 3.0, top - 2.0, top - 1.0, top]) @ Q.T
        return 0.5 * (M + M.T)

    # the computed top eigenvalue is within ~1e-15 of `top`; tau is ~1e-12, so these are decided by tau
    assert _proves_nsd(with_top(-2.0 * tau), Mabs, rho)
    assert not _proves_nsd(with_top(-0.5 * tau), Mabs, rho)  # inside the margin: not proven
    assert not _proves_nsd(with_top(0.0), Mabs, rho)
    assert not _proves_nsd(with_top(0.5 * tau), Mabs, rho)
    # mu = max(lambda_max, 0) + tau
    assert _singular_mu(with_top(-1.0), Mabs, rho) == pytest.approx(tau, rel=1e-9)
    assert _singular_mu(with_top(0.25), Mabs, rho) == pytest.approx(0.25 + tau, rel=1e-12)
    assert _singular_mu(with_top(0.25), Mabs, rho) >= 0.25 + 0.999 * tau


GAM = 4.0 * EPS64  # the block proof's gamma per (block size + 4)


def _blk(ws, ab, apb, wl, sizes):
    return dict(Ws=[np.asarray(ws, dtype=np.float64)], WL=np.asarray(wl, dtype=np.float64),
                ab=[np.asarray(ab, dtype=np.float64)], apb=[np.asarray(apb, dtype=np.float64)],
                sizes=list(sizes))


@pytest.mark.parametrize("f,accept", [(0.5, True), (2.0, False)])
def test_block_proof_counts_the_formation_error_of_the_first_block(f, accept):
    """Block 0 = rho - c w^2 with c w^2 = m: the computed block is ~1 (ref = 1, eta = 1e-11) while its
    magnitude companion is rho + m ~ 2m; the documented bound gam (rho + m), gam = 4 (1 + 4) EPS64,
    decides."""
    gam = GAM * 5
    m = f * 1e-11 / (2.0 * gam)  # gam * (rho + m) = f * eta (up to the block's value 1)
    blk = _blk([[1.0]], [-m], [0.0], [[0.0]], [1, 1])  # c1 = 2 ab lam = -m (lam = 0.5, w = 1)
    rho = m + 1.0
    assert bool(_verify_blocks(blk, np.array([0.5]), rho)) is accept


@pytest.mark.parametrize("f,accept", [(0.5, True), (2.0, False)])
def test_block_proof_counts_the_formation_error_of_a_later_block(f, accept):
    """Block 1 = 2 lam - wl^2 = 1 with wl^2 = m: its magnitude companion is 2m + 1, so the documented bound
    is gam (2m + 1 + |D_1|) with D_1 ~ 1 and gam = 20 EPS64, against eta = 1e-11 (ref = 1)."""
    gam = GAM * 5
    m = (f * 1e-11 / gam - 2.0) / 2.0
    wl = np.sqrt(m)
    lam = 0.5 * (1.0 + wl * wl)
    blk = _blk([[0.0]], [0.0], [0.0], [[wl]], [1, 1])
    assert bool(_verify_blocks(blk, np.array([lam]), 1.0)) is accept


@pytest.mark.parametrize("f,accept", [(0.5, True), (2.0, False)])
def test_block_proof_counts_the_output_dimension_in_its_rounding_factor(f, accept):
    """The later-block case with ``WL`` of 200 rows (one column): ``WL^T WL`` sums 200 products, so the
    rounding factor is gam = 4 (200 + 4) EPS64, not 4 (1 + 4) EPS64 (the block widths); at f = 2 the bound
    with the widths' factor alone would be 40x too small and accept."""
    rows = 200
    gam = GAM * (rows + 4)
    m = (f * 1e-11 / gam - 2.0) / 2.0
    wl = np.sqrt(m / rows)
    lam = 0.5 * (1.0 + rows * wl * wl)
    blk = _blk([[0.0]], [0.0], [0.0], np.full((rows, 1), wl), [1, 1])
    assert bool(_verify_blocks(blk, np.array([lam]), 1.0)) is accept


@pytest.mark.parametrize("s_over_eps,accept", [(100.0, False), (800.0, True)])
def test_block_proof_refuses_a_d_block_within_the_eigen_solvers_error(s_over_eps, accept):
    """A 2 x 2 first block diag(10, s) (after the shift eta = 1e-10): positive definite only if its
    smallest computed eigenvalue exceeds 100 * 2 * EPS64 * ||D|| = 200 EPS64 * 10."""
    L = 10.0
    eta = 1e-11 * L
    s = s_over_eps * EPS64 * L
    w = np.sqrt(L - (s + eta))  # block 0 = diag(L, L - w^2) = diag(L, s + eta)
    blk = _blk([[0.0, w]], [-1.0], [0.0], [[0.0]], [2, 1])  # c1 = 2 * (-1) * 0.5 = -1: L I - W^T W
    d = L - w * w - eta
    assert bool(d > 400 * EPS64 * L) is accept  # the computed block is on the intended side of the threshold
    assert bool(_verify_blocks(blk, np.array([0.5]), L)) is accept


@pytest.mark.parametrize("f,accept", [(1.0 - 1e-5, True), (1.0 + 1e-5, False)])
def test_block_proof_decides_at_its_documented_bound_to_five_digits(f, accept):
    """The later-block case at the decision boundary: the bound gam (|Adabs_1| + |D_1| + eta), with
    D_1 = A_1 - eta ~ 1, is set to f * eta; a term of the bound as small as gam |D_1| (~1e-3 eta) decides."""
    gam = GAM * 5
    eta = 1e-11  # ref = max(rho, A_1) = 1
    d1 = 1.0 - eta
    m = (f * eta / gam - d1 - eta - 1.0) / 2.0  # |Adabs_1| = 2 lam + wl^2 = 1 + 2 m
    wl = np.sqrt(m)
    lam = 0.5 * (1.0 + wl * wl)
    blk = _blk([[0.0]], [0.0], [0.0], [[wl]], [1, 1])
    assert abs((2.0 * lam - wl * wl) - 1.0) < 1e-12  # the computed block is 1 to 12 digits
    assert bool(_verify_blocks(blk, np.array([lam]), 1.0)) is accept


# ----------------------------------------------------------------------------- the block proof's residual


@pytest.mark.parametrize("seed", range(6))
def test_coupling_error_is_its_documented_formula(seed):
    """``||Eo|| + gam (2 ||Aoabs|| + || |F||D| ||)``, rounded up: never below the exact value, within 1e-12
    above it.  gam is set large so that each term moves the value far beyond that tolerance."""
    from lipkit.estimation.lipsdp import _coupling_error

    rng = np.random.default_rng(seed)
    eo, aoabs, fdabs = (float(v) for v in rng.uniform(0.1, 3.0, 3))
    gam = float(rng.uniform(0.05, 0.5))
    exact = Fraction(eo) + Fraction(gam) * (2 * Fraction(aoabs) + Fraction(fdabs))
    got = Fraction(_coupling_error(eo, aoabs, fdabs, gam))
    assert exact <= got <= exact * (1 + Fraction(1, 10**12))


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 4), (2, 7), (3, 9), (4, 30), (5, 2)])
def test_diagonal_error_is_its_documented_formula(seed, n):
    """``||Eb|| + gam (||Adabs|| + ||D|| + || |F||D||F|^T ||) + gam eta sqrt(n)``, rounded up."""
    from lipkit.estimation.lipsdp import _diagonal_error

    rng = np.random.default_rng(100 + seed)
    eb, adabs, d, schur = (float(v) for v in rng.uniform(0.1, 3.0, 4))
    gam, eta = float(rng.uniform(0.05, 0.5)), float(rng.uniform(0.5, 2.0))
    lo = (Fraction(eb) + Fraction(gam) * (Fraction(adabs) + Fraction(d) + Fraction(schur))
          + Fraction(gam) * Fraction(eta) * sqrt_down(Fraction(n)))
    got = Fraction(_diagonal_error(eb, adabs, d, schur, gam, eta, n))
    assert lo <= got <= lo * (1 + Fraction(1, 10**12))


def _block_tridiagonal(d: list[float], o: list[float], u: np.ndarray) -> np.ndarray:
    """``T (x) u u^T``: blocks ``d_b u u^T`` on the diagonal and ``o_b u u^T`` beside it (``o[0]`` unused)."""
    nb, k = len(d), len(u)
    P = np.outer(u, u)
    E = np.zeros((nb * k, nb * k))
    for b in range(nb):
        E[b * k:(b + 1) * k, b * k:(b + 1) * k] = d[b] * P
        if b:
            E[b * k:(b + 1) * k, (b - 1) * k:b * k] = o[b] * P
            E[(b - 1) * k:b * k, b * k:(b + 1) * k] = o[b] * P
    return E


@pytest.mark.parametrize("d,o", [
    ([0.0, 0.0, 0.0], [0.0, 1.0, 1.0]),        # a path: sqrt(2), only reached with both couplings of row 1
    ([1.0, 1.0], [0.0, 1.0]),                  # eigenvalue 2 = the row sum exactly
    ([0.0, 2.0, 0.0, 0.0], [0.0, 0.5, 3.0, 0.25]),
    ([0.5, 0.0, 0.0, 0.0, 0.5], [0.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_residual_norm_bound_covers_the_exact_spectral_norm(d, o):
    """The row-sum bound of the block residual is >= ``||E||_2`` for block-tridiagonal matrices whose blocks
    are aligned rank-one (``||E||_2 = ||T||_2``, the worst case for given block norms), exactly computed."""
    from lipkit.estimation.lipsdp import _residual_norm_bound

    u = np.array([0.6, 0.8])  # unit vector: every block d u u^T has Frobenius norm |d|
    E = _block_tridiagonal(d, o, u)
    nb = len(d)
    T = [[d[i] if i == j else (o[max(i, j)] if abs(i - j) == 1 else 0.0) for j in range(nb)]
         for i in range(nb)]
    exact = l2_norm_lower(torch.tensor(T, dtype=torch.float64))  # ||T||_2, rounded down
    fro_d = [float(np.linalg.norm(E[b * 2:(b + 1) * 2, b * 2:(b + 1) * 2])) for b in range(nb)]
    fro_o = [0.0] + [float(np.linalg.norm(E[b * 2:(b + 1) * 2, (b - 1) * 2:b * 2])) for b in range(1, nb)]
    bound = Fraction(_residual_norm_bound(np.array(fro_d), np.array(fro_o)))
    assert bound >= exact
    # and it is the row sum (not a looser constant): within 1e-12 of max_b d_b + o_b + o_(b+1)
    rows = [Fraction(fro_d[b]) + Fraction(fro_o[b]) + (Fraction(fro_o[b + 1]) if b + 1 < nb else 0)
            for b in range(nb)]
    assert bound <= max(rows) * (1 + Fraction(1, 10**12))
