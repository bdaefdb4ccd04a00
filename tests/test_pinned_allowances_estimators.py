"""Pinned round-off allowances of the conv norm, the interval certificate and the estimators (issue 17).

Each test checks one documented allowance on an input where every float64 operation before it is exact (or
off by a counted number of roundings), so the allowance is visible in the result: for
``round_up(value, n)`` (factor ``1 + 4 n EPS64``, then one step up) the result must lie in
``[V (1 + (4 n - 2) EPS64), V (1 + (4 n + 2) EPS64)]`` around the exact value ``V`` (``fractions.Fraction``).
A smaller count (the ``sound-margin`` mutants of bench/mutation_scope.py: ``n -> 1``) leaves the result
below the lower end.  Further: the interval certificate's Lipschitz intersection is widened by at least the
documented reference error and uses the bound of the right prefix, and the block LDL^T proof of LipSDP
refuses a ``D`` block whose smallest computed eigenvalue only equals (does not exceed) its threshold.
"""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from exact_ref import carries_round_up, sqrt_down
from torch import nn

import lipkit
from lipkit.bounds import EPS64, operator_norm
from lipkit.bounds.conv import CONV_NORM_BUDGET, _known_grid_bound, _torus_bound, conv_operator_norm
from lipkit.certify.interval import interval_bounds
from lipkit.estimation._mlp import parse_mlp
from lipkit.estimation.lipsdp import _coupling_error, _diagonal_error, _residual_norm_bound, _verify_blocks
from lipkit.estimation.local import affine_local_upper

U = Fraction(EPS64)


def _assert_round_up(got: float, exact: Fraction, n_ops: int) -> None:
    """``got`` is ``round_up(V, n_ops)`` of an exactly computed ``V``: inflated by ``4 n_ops EPS64`` (less the
    rounding of the product) and a step, and by no more than that plus two steps."""
    assert carries_round_up(got, exact, n_ops, upper=(4 * n_ops + 2) * U), \
        f"{got!r} is not round_up(., {n_ops}) of the exact value"


def _assert_round_up_after(got: float, exact: Fraction, n_ops: int) -> None:
    """``got`` is ``round_up`` with ``n_ops`` of a value two roundings away from the exact ``V``: at least
    ``V (1 + (4 n_ops - 2) EPS64)`` (two roundings and the product's cost < 2 EPS64), at most 1e-12 above."""
    assert carries_round_up(got, exact, n_ops), f"{got!r} lacks the 4*{n_ops} EPS64 allowance"


# --------------------------------------------------------------------------- LipSDP block proof residuals


@pytest.mark.parametrize("eo,aoabs,fdabs,gam", [(1.0, 0.5, 0.25, 0.125), (0.75, 3.0, 1.5, 2.0**-40),
                                                (0.0, 1.0, 0.0, 2.0**-10)])
def test_coupling_error_carries_round_up_of_four_operations(eo, aoabs, fdabs, gam):
    """``_coupling_error`` = round_up(||Eo|| + gam (2 ||Aoabs|| + || |F||D| ||), 4): dyadic inputs make
    the sum exact, so the result shows the documented factor 1 + 16 EPS64."""
    exact = Fraction(eo) + Fraction(gam) * (2 * Fraction(aoabs) + Fraction(fdabs))
    assert Fraction(eo + gam * (2.0 * aoabs + fdabs)) == exact  # the float64 sum is exact
    _assert_round_up(_coupling_error(eo, aoabs, fdabs, gam), exact, 4)


@pytest.mark.parametrize("eb,adabs,d,schur,gam,eta,n", [
    (1.0, 0.5, 0.25, 0.25, 0.125, 1.0, 4),
    (0.0, 2.0, 1.0, 0.0, 2.0**-30, 2.0**-20, 1),
    (0.5, 0.5, 0.5, 0.5, 2.0**-3, 0.5, 9),
])
def test_diagonal_error_carries_round_up_of_eight_operations(eb, adabs, d, schur, gam, eta, n):
    """``_diagonal_error`` = round_up(||Eb|| + gam (||Adabs|| + ||D|| + || |F||D||F|^T ||)
    + gam eta sqrt(n), 8): dyadic inputs and a square ``n`` make it exact, so the result shows the
    documented factor 1 + 32 EPS64."""
    exact = (Fraction(eb) + Fraction(gam) * (Fraction(adabs) + Fraction(d) + Fraction(schur))
             + Fraction(gam) * Fraction(eta) * math.isqrt(n))
    assert math.isqrt(n) ** 2 == n
    _assert_round_up(_diagonal_error(eb, adabs, d, schur, gam, eta, n), exact, 8)


@pytest.mark.parametrize("e_diag,e_off", [([1.0, 0.25, 0.5], [0.0, 0.125, 0.0625]), ([1.5], [0.0]),
                                          ([0.0, 0.0], [0.0, 0.75])])
def test_residual_norm_bound_carries_round_up_of_two_operations(e_diag, e_off):
    """``_residual_norm_bound`` = round_up(max_b e_diag[b] + e_off[b] + e_off[b + 1], 2): dyadic block norms
    make the row sums exact, so the result shows the documented factor 1 + 8 EPS64."""
    nb = len(e_diag)
    rows = [Fraction(e_diag[b]) + Fraction(e_off[b]) + (Fraction(e_off[b + 1]) if b + 1 < nb else 0)
            for b in range(nb)]
    _assert_round_up(_residual_norm_bound(np.array(e_diag), np.array(e_off)), max(rows), 2)


def _solve_sub(target: float, eta: float) -> float:
    """A float ``x`` with ``fl(x - eta) == target`` (among the neighbours of ``fl(target + eta)``)."""
    x = target + eta
    for _ in range(3):
        x = math.nextafter(x, -math.inf)
    for _ in range(7):
        if x - eta == target:
            return x
        x = math.nextafter(x, math.inf)
    raise AssertionError(f"no float x with x - {eta!r} == {target!r} near {target + eta!r}")


@pytest.mark.parametrize("above", [False, True])
def test_block_proof_refuses_a_d_block_whose_eigenvalue_only_equals_its_threshold(above):
    """The last D block is diag(1, s) with s = 100 n EPS64 ||D||_F (n = 2, ||D||_F = 1 in float64): the
    documented test needs the smallest computed eigenvalue to *exceed* that eigen-solver error bound, so
    s equal to it is refused (``<=``) and the next value above it (2 lam one float higher) is accepted.
    The residual is ~1e-14 while eta = 2e-11, so the eigenvalue test alone decides."""
    rho = 2.0  # block 0 = [rho]: ref = max ||A_b||_F = 2
    eta = 1e-11 * rho + 1e-300
    threshold = 200.0 * EPS64
    x = _solve_sub(threshold, eta)
    if above:  # the next representable block entry: x - eta with x one float higher
        x = math.nextafter(x, math.inf)
    lam = 0.5 * np.array([_solve_sub(1.0, eta), x])
    blk = dict(Ws=[np.zeros((2, 1))], WL=np.zeros((1, 2)), ab=[np.zeros(2)], apb=[np.zeros(2)],
               sizes=[1, 2])
    db = np.diag(2.0 * lam) - eta * np.eye(2)  # the last block as _verify_blocks forms it (no coupling)
    s = float(db[1, 1])
    assert db[0, 0] == 1.0 and float(np.linalg.norm(db)) == 1.0
    assert (s > threshold) if above else (s == threshold)
    assert float(np.linalg.eigvalsh(db)[0]) == s  # the eigen-solver returns s exactly
    assert bool(_verify_blocks(blk, lam, rho)) is above


# --------------------------------------------------------------------------- local affine bound


@pytest.mark.parametrize("p", [2.0, math.inf, 1.0])
def test_affine_local_upper_rounds_its_final_sum_up_by_four_operations(p):
    """``affine_local_upper`` = round_up(||J||_p + gamma ||J_abs||_p, 4) (norms by ``operator_norm``,
    gamma = 2 (inner + L + 2) EPS64): with dyadic weights and slopes the Jacobian is exact, the norms are
    ``operator_norm`` of exact matrices, and only gamma * norm and the sum round before the final round_up,
    whose factor 1 + 16 EPS64 must show."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    w0 = torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]], dtype=torch.float64)
    w1 = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.125, -0.5]], dtype=torch.float64)
    with torch.no_grad():
        net[0].weight.copy_(w0)
        net[2].weight.copy_(w1)
    mlp = parse_mlp(net)
    slope = np.array([1.0, 0.5, 0.25])
    mlp.neuron_slopes = [(slope, slope.copy())]
    J = w1 @ (torch.from_numpy(slope)[:, None] * w0)
    Jabs = w1.abs() @ (torch.from_numpy(slope)[:, None] * w0.abs())
    exact_j = [[sum(Fraction(w1[o, i].item()) * Fraction(slope[i]) * Fraction(w0[i, j].item())
                    for i in range(3)) for j in range(2)] for o in range(2)]
    assert [[Fraction(v) for v in row] for row in J.tolist()] == exact_j  # the float64 Jacobian is exact
    gamma = Fraction(2 * ((3 + 1) + 2 + 2)) * U
    err = float(np.linalg.norm(Jabs.numpy())) if p == 2 else operator_norm(Jabs, p)
    exact = Fraction(operator_norm(J, p)) + gamma * Fraction(err)
    _assert_round_up_after(affine_local_upper(mlp, p), exact, 4)


# --------------------------------------------------------------------------- conv candidates


def _kernel(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("padding_mode,factor", [("zeros", 1), ("replicate", 2)])
def test_known_size_grid_candidate_carries_round_up_of_four_operations(padding_mode, factor):
    """With a known input size the grid candidate is round_up(grid bound * sqrt(multiplicity), 4).  Here it is
    the smallest candidate (the explicit matrix is disabled; the reshape bound is far above), so the result
    is that candidate: at least the exact ``grid bound * sqrt(mult)`` times 1 + 14 EPS64."""
    if padding_mode == "zeros":  # 2-D, 2 -> 3 channels, 3x3, 8x8 input, padding 1: multiplicity 1
        weight, size, pad = _kernel((3, 2, 3, 3), 0), (8, 8), 1
        wd, grid_n = weight.reshape(1, 3, 2, 3, 3), (10, 10)
    else:  # 1-D, 1 -> 2 channels, width 3, length 9, replicate padding 1: both end entries appear twice
        weight, size, pad = _kernel((2, 1, 3), 1), 9, 1
        wd, grid_n = weight.reshape(1, 2, 1, 1, 3), (1, 11)
    got = conv_operator_norm(weight, size, padding=pad, padding_mode=padding_mode, exact_max_dim=0)
    known = _known_grid_bound(wd, grid_n, 6, CONV_NORM_BUDGET)
    assert known is not None
    exact = Fraction(known) * sqrt_down(Fraction(factor))
    _assert_round_up_after(got, exact, 4)


@pytest.mark.parametrize("padding_mode,factor", [("zeros", 1), ("reflect", 3)])
def test_size_free_torus_candidate_carries_round_up_of_four_operations(padding_mode, factor):
    """Without an input size the torus candidate is round_up(torus bound * ||P||, 4), ``||P|| = sqrt(3)``
    for reflect padding on both sides (every size), 1 for zeros.  It is the smallest candidate here, so the
    result is at least the exact ``torus bound * ||P||`` times 1 + 14 EPS64."""
    if padding_mode == "zeros":
        weight = _kernel((3, 2, 3, 3), 2)
        wd = weight.reshape(1, 3, 2, 3, 3)
    else:
        weight = _kernel((2, 1, 3), 3)
        wd = weight.reshape(1, 2, 1, 1, 3)
    got = conv_operator_norm(weight, None, padding=1, padding_mode=padding_mode, grid=16)
    torus = _torus_bound(wd, 6, 16, CONV_NORM_BUDGET)
    assert torus is not None
    exact = Fraction(torus) * sqrt_down(Fraction(factor))
    _assert_round_up_after(got, exact, 4)


# --------------------------------------------------------------------------- interval certificate


def test_interval_intersection_is_widened_by_at_least_the_reference_error():
    """One l_inf-distance neuron with d = 2^43, mu = 2^44, b = 2^43 at x = 0, eps = 0: the float64 output is
    exactly 0 and its documented round-off bound is 4u (d + |mu| + |b|) = 2^-6 (u = 2^-53).  The interval
    rule's box is ~17 wide (its padding is relative to 2^44), so the Lipschitz intersection decides the box,
    and it must be widened by at least that bound (a box tighter than 2^-6 would rest on the reference's
    luck), and by not much more."""
    layer = lipkit.LinfDistLinear(1, 1, mean_shift=True, bias=True)
    with torch.no_grad():
        layer.weight.fill_(-(2.0**43))
        layer.running_mean.fill_(2.0**44)
        layer.bias.fill_(2.0**43)
    layer.eval()
    x = torch.zeros(1, 1)
    with torch.no_grad():
        assert float(copy.deepcopy(layer).double()(x.double())) == 0.0
    lo, hi = interval_bounds(layer, x, 0.0)
    documented = 4 * Fraction(1, 2**53) * (2**43 + 2**44 + 2**43)
    assert documented == Fraction(1, 2**6)
    assert Fraction(hi.item()) >= documented and Fraction(-lo.item()) >= documented
    assert hi.item() <= 2.0**-6 * (1 + 1e-8) and -lo.item() <= 2.0**-6 * (1 + 1e-8)


def test_interval_intersection_uses_the_bound_of_the_prefix_it_bounds():
    """A distance layer followed by a contracting linear layer (row l1 norms 0.04) and a head: the box after
    the distance layer may be intersected with ``h ± L eps`` only for ``L`` the bound of that layer itself
    (1), not of a longer chain (0.04).  Every corner of the input ball must map inside the output box."""
    torch.manual_seed(5)
    net = nn.Sequential(lipkit.LinfDistLinear(3, 4, mean_shift=False), nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.fill_(0.01)
        net[1].weight[::2] *= -1.0
    net.eval()
    x = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.5, -0.7]])
    eps = 0.25
    lo, hi = interval_bounds(net, x, eps)
    twin = copy.deepcopy(net).double()
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
    for b in range(x.shape[0]):
        with torch.no_grad():
            out = twin(x[b].double() + eps * corners)
        assert bool((out >= lo[b]).all() and (out <= hi[b]).all())
    # the corners spread the first layer's outputs by 2 eps; the box is not vacuous either
    assert float((hi - lo).max()) < 1.0
