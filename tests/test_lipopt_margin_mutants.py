"""LiPopt's certificate round-off (issue 17): the constant row's absolute sum carries ``|lambda|``.

:func:`lipkit.estimation.lipopt._certify` bounds the float64 error of each residual ``r_mu`` by
``gamma_{k_mu}`` times the row's absolute sum ``sum |A_mu,q| c_q + |p_mu| (+ |lambda| on the constant row)``.
On a constant row with 60 entries that sum is ~60 while the certified value is ~1, so a term dropped from it
moves the bound by thousands of EPS64: this kills the ``margin-unreached`` mutants of that sum.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import sparse

from lipkit.bounds import EPS64
from lipkit.estimation.lipopt import _certify

U = Fraction(EPS64)


def test_certify_counts_the_whole_absolute_sum_of_a_dense_constant_row():
    rng = np.random.default_rng(4)
    m, q = 3, 60
    dense = np.zeros((m, q))
    dense[0] = rng.choice([-1.0, 1.0], q)  # the constant row: 60 entries
    dense[1, :5] = 1.0
    dense[2, 5:8] = -1.0
    A = sparse.csc_matrix(dense)
    c = rng.uniform(0.5, 1.5, q)
    lam, const = 1.25, 0
    p_vec = np.array([lam - float(dense[0] @ c), 0.3, 0.1])  # the constant row's residual is ~0
    e_vec = np.zeros(m)
    got = _certify(A, c, lam, p_vec, e_vec, const)
    resid = [sum(Fraction(dense[i, j]) * Fraction(c[j]) for j in range(q)) + Fraction(p_vec[i])
             - (Fraction(lam) if i == const else 0) for i in range(m)]
    absum = [sum(abs(Fraction(dense[i, j])) * Fraction(c[j]) for j in range(q)) + abs(Fraction(p_vec[i]))
             + (Fraction(lam) if i == const else 0) for i in range(m)]
    k = [int(np.count_nonzero(dense[i])) + 2 for i in range(m)]
    err = sum(k[i] * U / (1 - k[i] * U) * absum[i] for i in range(m))
    exact = Fraction(lam) + sum(abs(r) for r in resid)
    assert err > 200 * U * exact  # the round-off term is what this test is about
    documented = (exact + err) * (1 + 4 * (2 * m + 2) * U)
    assert Fraction(got) >= documented * (1 - Fraction(5, 10**16))
    assert Fraction(got) <= documented * (1 + Fraction(1, 10**12))
