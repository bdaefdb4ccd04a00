"""LipSDP (Fazlyab, Robey, Hassani, Morari, Pappas, NeurIPS 2019): an l2 upper bound by an SDP.

Network ``f(x) = W_L phi(W_{L-1} ... phi(W_1 x))`` with every hidden neuron slope-restricted on
``[alpha_i, beta_i]``.  Stack ``z = (x, phi_1, ..., phi_{L-1})`` (size ``N = n_0 + n``), let ``A z`` be the
hidden pre-activations and ``B z = (phi_1, ..., phi_{L-1})``.  For every diagonal ``T = diag(lambda) >= 0``
each neuron satisfies the incremental quadratic constraint
``(dv, dphi)^T [[-2 alpha beta T, (alpha+beta) T], [(alpha+beta) T, -2 T]] (dv, dphi) >= 0``, so

    M(rho, T) = A^T(-2 alpha beta T)A + A^T (alpha+beta) T B + B^T (alpha+beta) T A - 2 B^T T B
                + E_L^T W_L^T W_L E_L - rho E_0^T E_0  <=  0      (negative semidefinite)

implies ``||f(x) - f(y)||_2 <= sqrt(rho) ||x - y||_2``.  *LipSDP-Neuron*: one multiplier per neuron;
*LipSDP-Layer*: one per layer (cheaper, looser; with only ``L - 1`` multipliers it is solved by
minimising the certified ``rho`` directly, no SDP solver).  The coupled "LipSDP-Network" variant is
deliberately not offered: it is unsound (it returns values below the true constant on random small nets).

Soundness whatever the solver's accuracy (re-certification): the SDP is solved with SCS, then the
multipliers ``lambda`` are fixed (clipped to >= 0) and the smallest admissible ``rho`` is computed from the
Schur complement, ``rho* = lambda_max(C_00 + C_01 P^{-1} C_10)`` with ``P = -C_11 > 0``.  Finally
``M(rho_hat, T) <= -tau I`` is *verified* by one symmetric eigen-decomposition at a slightly larger
``rho_hat``, where ``tau`` dominates the float64 error of forming ``M`` and of the eigenvalues.  The
reported bound is ``sqrt(rho_hat)`` rounded up, so it is sound even if SCS returned garbage (then it is
merely loose, or a ``LipSDPError`` is raised).

Singular ``P``: a lowered GroupSort (``_mlp``) has hidden directions in which ``M`` is exactly zero for
every ``T`` (a sorting network can pass a change through a chain of comparators without changing the
output), so ``M <= -tau I`` never holds.  Then ``rho*`` comes from the pseudo-inverse on ``P``'s range and
the verified ``lambda_max(M(rho_hat, T)) <= mu`` (``mu >= 0`` including round-off) is paid for in ``rho``:
``z^T M z <= mu ||z||^2`` gives ``||df||^2 <= (rho_hat + mu (1 + K^2)) ||dx||^2`` where ``K`` bounds
``||dphi|| / ||dx||`` (products of Frobenius norms and slopes, ``_structure``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lipkit.bounds import EPS64, round_up

from ._mlp import MLP, Comparators, parse_mlp

__all__ = ["LipSDPResult", "LipSDPError", "lipsdp", "lipsdp_first_order", "certify_multipliers",
           "SCS_MAX_NEURONS"]


#: ``lipsdp(solver="auto")`` uses SCS up to this many hidden neurons and the first-order method above
#: (SCS took ~20 s for 150 neurons here, the first-order method ~2 s within 4% of it).
SCS_MAX_NEURONS = 120


class LipSDPError(RuntimeError):
    """The SDP solver failed or its multipliers could not be certified."""


@dataclass
class LipSDPResult:
    """Certified bound ``upper`` (l2), the multipliers ``lam`` (one per hidden neuron) and solver info."""

    upper: float
    lam: np.ndarray
    rho: float
    variant: str
    solver_status: str
    solver_value: float
    seconds: float


def _structure(mlp: MLP, scale: float) -> dict:
    """Constant matrices ``A``, ``B``, the output term and per-neuron slopes (numpy float64).

    ``z = (x, phi of the free neurons)``.  A neuron whose slope range is a single value ``c`` (per-neuron
    slopes of the local method, e.g. a ReLU that cannot switch) is *substituted*: its output is exactly ``c``
    times its pre-activation, a linear function of ``z``, so it gets no coordinate in ``z`` and no
    multiplier.  Then ``v_k = V_k z`` for every layer output (``V_0 = [I 0]``), the free pre-activations are
    ``A z = W_k[free] V_{k-1} z`` and the output is ``W_L V_{L-1} z``.  ``A_abs`` / ``out_abs`` are the same
    products of absolute values (they bound the round-off of forming them).
    """
    Ws = [w.numpy() for w in mlp.weights]
    n0 = Ws[0].shape[1]
    L = len(Ws)
    slopes = [mlp.layer_slopes(k) for k in range(L - 1)]
    free = [a != b for a, b in slopes]
    hid = [int(f.sum()) for f in free]
    n = sum(hid)
    N = n0 + n
    A = np.zeros((n, N))
    A_abs = np.zeros((n, N))
    V = np.zeros((n0, N))
    V[:, :n0] = np.eye(n0)
    V_abs = V.copy()
    row, col = 0, n0
    for k, w in enumerate(Ws[:-1]):
        P, P_abs = w @ V, np.abs(w) @ V_abs
        f = free[k]
        A[row:row + hid[k]] = P[f]
        A_abs[row:row + hid[k]] = P_abs[f]
        c = slopes[k][0]
        V, V_abs = c[:, None] * P, np.abs(c)[:, None] * P_abs
        V[f], V_abs[f] = 0.0, 0.0
        V[np.flatnonzero(f), col + np.arange(hid[k])] = 1.0
        V_abs[np.flatnonzero(f), col + np.arange(hid[k])] = 1.0
        row += hid[k]
        col += hid[k]
    B = np.zeros((n, N))
    B[:, n0:] = np.eye(n)
    O = (Ws[-1] @ V) / scale
    O_abs = (np.abs(Ws[-1]) @ V_abs) / scale
    out = O.T @ O
    out_abs = O_abs.T @ O_abs
    alpha = np.concatenate([a[f] for (a, _), f in zip(slopes, free, strict=True)]) if n else np.zeros(0)
    beta = np.concatenate([b[f] for (_, b), f in zip(slopes, free, strict=True)]) if n else np.zeros(0)
    layer_of = np.concatenate([np.full(h, k) for k, h in enumerate(hid)]) if n else np.zeros(0, int)
    # K^2 >= ||dphi||^2 / ||dx||^2: layer k's outputs move at most prod_{j<=k} ||W_j||_F max|slope_j| times dx
    K2, gain = 0.0, 1.0
    for k, w in enumerate(Ws[:-1]):
        gain *= float(np.sqrt(np.sum(w * w))) * float(np.abs(np.concatenate(slopes[k])).max(initial=0.0))
        K2 += gain * gain
    K2 = K2 * (1.0 + 1e3 * N * EPS64) + 1e-300
    return dict(A=A, A_abs=A_abs, B=B, out=out, out_abs=out_abs, alpha=alpha, beta=beta, n0=n0, n=n, N=N,
                layer_of=layer_of, n_layers=len(hid), K2=K2)


def certified_upper(rho: float, scale: float) -> float:
    """The reported bound ``sqrt(rho) * scale`` rounded up, for a verified ``rho`` of the network whose
    output was divided by ``scale`` (``Lip(f) = scale Lip(f / scale)``); the square root and the product
    round twice, ``round_up`` with 8 operations covers them with room to spare."""
    return round_up(math.sqrt(rho) * scale, 8)


def _lmi(s: dict, lam: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """``M(rho, T)`` and the same expression with absolute values (for the round-off bound)."""
    A, B, a, b = s["A"], s["B"], s["alpha"], s["beta"]
    c1 = -2.0 * a * b * lam
    c2 = (a + b) * lam
    AtC1A = (A.T * c1) @ A
    cross = (A.T * c2) @ B
    M = AtC1A + cross + cross.T - 2.0 * (B.T * lam) @ B + s["out"]
    Aa = s["A_abs"]
    Mabs = (Aa.T * np.abs(c1)) @ Aa + 2.0 * (Aa.T * np.abs(c2)) @ B + 2.0 * (B.T * lam) @ B + s["out_abs"]
    n0 = s["n0"]
    M[np.arange(n0), np.arange(n0)] -= rho
    Mabs[np.arange(n0), np.arange(n0)] += rho
    return 0.5 * (M + M.T), Mabs


def _free_neurons(mlp: MLP) -> int:
    """Hidden neurons with a slope range (the identity neurons of a lowered GroupSort have none)."""
    return int(sum((a != b).sum() for a, b in (mlp.layer_slopes(k) for k in range(mlp.depth - 1))))


def _eig_margin(Mabs: np.ndarray, rho: float) -> float:
    """The eigenvalue round-off margin ``tau = 1e3 N EPS64 (||Mabs||_F + rho)`` of an ``N x N`` LMI matrix
    ``M(rho, T)`` with magnitude companion ``Mabs``: the allowance for the float64 error of forming ``M`` and
    of its symmetric eigen-decomposition (module docstring).  ``N`` is read from the matrix itself."""
    return 1e3 * Mabs.shape[0] * EPS64 * (np.linalg.norm(Mabs) + rho)


def _proves_nsd(M: np.ndarray, Mabs: np.ndarray, rho: float) -> bool:
    """True when the computed largest eigenvalue of ``M`` is at most ``-tau`` (:func:`_eig_margin`), which
    proves that the exact ``M(rho, T)`` is negative semidefinite."""
    return float(np.linalg.eigvalsh(M)[-1]) <= -_eig_margin(Mabs, rho)


def _singular_mu(M: np.ndarray, Mabs: np.ndarray, rho: float) -> float:
    """``mu = max(lambda_max(M), 0) + tau`` (:func:`_eig_margin`): an upper bound of the exact
    ``max(lambda_max(M(rho, T)), 0)``, the shift of the singular certificate (module docstring)."""
    return max(float(np.linalg.eigvalsh(M)[-1]), 0.0) + _eig_margin(Mabs, rho)


def certify_multipliers(s: dict, lam: np.ndarray) -> float:
    """Smallest verified ``rho`` with ``M(rho, diag(lam)) <= 0`` (see module docstring); ``inf`` if none."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    n0 = s["n0"]
    top = float(lam.max()) if lam.size else 0.0
    # repairs for inaccurate multipliers: scale them up, or lift the small ones
    candidates = [lam * g for g in (1.0, 1.001, 1.01, 1.1, 2.0, 10.0)]
    candidates += [lam + d * top for d in (1e-6, 1e-4, 1e-2, 1e-1, 1.0)] if top > 0 else []
    # multipliers tilted toward the early layers: a lowered GroupSort's chained comparators leave P singular
    # along directions where an early and a late multiplier cancel (the LP optimum sits there)
    depth_left = s["n_layers"] - 1 - s["layer_of"]
    candidates += [lam * (1.0 + d) ** depth_left for d in (1e-6, 1e-4, 1e-2)] if s["n_layers"] > 1 else []
    for lam_g in candidates:
        C, _ = _lmi(s, lam_g, 0.0)
        P = -C[n0:, n0:]
        pmin = float(np.linalg.eigvalsh(P)[0])
        if not pmin > 1e-12 * max(1.0, float(np.abs(P).max())):
            continue
        S = C[:n0, :n0] + C[:n0, n0:] @ np.linalg.solve(P, C[n0:, :n0])
        rho_star = max(float(np.linalg.eigvalsh(0.5 * (S + S.T))[-1]), 0.0)
        for delta in (1e-9, 1e-7, 1e-5, 1e-3, 1e-1):
            rho = rho_star * (1.0 + delta) + delta * 1e-6
            M, Mabs = _lmi(s, lam_g, rho)
            if _proves_nsd(M, Mabs, rho):
                return rho
    return _certify_singular(s, candidates)


def _certify_singular(s: dict, candidates: list[np.ndarray]) -> float:
    """:func:`certify_multipliers` when ``P`` is singular (module docstring): the smallest
    ``rho_hat + mu (1 + K^2)`` over the candidate multipliers, ``inf`` if ``P`` is clearly indefinite."""
    n0, K2 = s["n0"], s.get("K2")
    if K2 is None or not math.isfinite(K2):
        return math.inf
    best = math.inf
    for lam_g in candidates:
        C, _ = _lmi(s, lam_g, 0.0)
        w, U = np.linalg.eigh(-C[n0:, n0:])
        top = max(float(np.abs(w).max(initial=0.0)), 1e-300)
        if float(w[0]) < -1e-7 * top:
            continue
        keep = w > 1e-9 * top
        G = C[:n0, n0:] @ U[:, keep]
        S = C[:n0, :n0] + (G / w[keep]) @ G.T
        rho_star = max(float(np.linalg.eigvalsh(0.5 * (S + S.T))[-1]), 0.0)
        for delta in (1e-9, 1e-6, 1e-3):
            rho = rho_star * (1.0 + delta) + delta * 1e-6
            M, Mabs = _lmi(s, lam_g, rho)
            mu = _singular_mu(M, Mabs, rho)
            best = min(best, rho + mu * (1.0 + K2))
    return best


def _lipsdp_layer(s: dict, scale: float, t0: float, time_limit: float | None) -> LipSDPResult:
    """LipSDP-Layer: only ``L - 1`` multipliers, so minimise the *certified* ``rho(mu)`` directly
    (Nelder-Mead on ``log mu``); every evaluated point is itself a verified certificate."""
    from scipy.optimize import minimize

    n_layers = s["n_layers"]
    G = np.zeros((s["n"], n_layers))
    G[np.arange(s["n"]), s["layer_of"]] = 1.0

    def rho_of(logmu: np.ndarray) -> float:
        return certify_multipliers(s, G @ np.exp(np.clip(logmu, -60.0, 60.0)))

    starts = [np.full(n_layers, float(j)) for j in np.linspace(-4.0, 8.0, 13)]
    vals = [rho_of(x) for x in starts]
    i = int(np.argmin(vals))
    if not math.isfinite(vals[i]):
        raise LipSDPError("no certifiable LipSDP-Layer multipliers found")
    best_x, best = starts[i], vals[i]
    deadline = None if time_limit is None else t0 + time_limit

    def obj(x: np.ndarray) -> float:
        nonlocal best_x, best
        if deadline is not None and time.perf_counter() > deadline:
            return best
        v = rho_of(x)
        if v < best:
            best_x, best = x.copy(), v
        return v if math.isfinite(v) else 1e300

    minimize(obj, best_x, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9 * best,
                                                         "maxfev": 200 * (n_layers + 1)})
    lam = G @ np.exp(np.clip(best_x, -60.0, 60.0))
    upper = certified_upper(best, scale)
    return LipSDPResult(upper, lam, best * scale**2, "layer", "nelder-mead", math.sqrt(best) * scale,
                        time.perf_counter() - t0)


def lipsdp(
    model: nn.Module,
    *,
    variant: str = "neuron",
    eps: float = 1e-6,
    max_iters: int = 50_000,
    time_limit: float | None = None,
    verbose: bool = False,
    neuron_slopes: list[tuple[np.ndarray, np.ndarray]] | None = None,
    solver: str = "auto",
    input_shape: tuple[int, ...] | None = None,
) -> LipSDPResult:
    """Certified l2 Lipschitz upper bound of an MLP by LipSDP-Neuron (``variant="neuron"``) or -Layer.

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` and slope-restricted activations (see ``_mlp``).
        variant: ``"neuron"`` (one multiplier per neuron, tight) or ``"layer"`` (one per layer).
        eps: SCS accuracy; the answer is re-certified anyway, ``eps`` only affects tightness.
        time_limit: seconds given to SCS (``None``: no limit).
        neuron_slopes: per hidden layer, per-neuron slope bounds ``(alpha, beta)`` replacing the activations'
            global ones (the local method passes the ranges implied by interval bounds on a domain; the
            certificate then holds for pairs of inputs in that domain).
        solver: ``"scs"`` (the SDP), ``"first-order"`` (:func:`lipsdp_first_order`, for large nets) or
            ``"auto"``: SCS up to :data:`SCS_MAX_NEURONS` hidden neurons, first order above.
        input_shape: one input's shape; needed for CNNs (convolutions are lowered to exact matrices).
    Raises:
        LipSDPError: SCS failed and no certificate could be built from its multipliers.
    """
    import cvxpy as cp

    if variant not in ("neuron", "layer"):
        raise ValueError(
            f"unknown LipSDP variant {variant!r}; use 'neuron' or 'layer' ('network' is unsound)"
        )
    if solver not in ("auto", "scs", "first-order"):
        raise ValueError(f"unknown LipSDP solver {solver!r}; use 'auto', 'scs' or 'first-order'")
    t0 = time.perf_counter()
    mlp = parse_mlp(model, input_shape)
    # lowered GroupSort layers: the first-order solver is poor on them (one net, 128 comparators: 1.20 against
    # SCS's 0.56 in 14 s), so SCS keeps them up to 3x the usual size
    limit = SCS_MAX_NEURONS * (3 if any(isinstance(a, Comparators) for a in mlp.acts) else 1)
    if variant == "neuron" and neuron_slopes is None and mlp.depth >= 2 and (
            solver == "first-order" or (solver == "auto" and _free_neurons(mlp) > limit)):
        return lipsdp_first_order(model, time_limit=time_limit, input_shape=input_shape)
    if neuron_slopes is not None:
        if len(neuron_slopes) != mlp.depth - 1:
            raise ValueError(f"neuron_slopes needs {mlp.depth - 1} layers, got {len(neuron_slopes)}")
        mlp.neuron_slopes = list(neuron_slopes)
    if mlp.depth == 1:  # a single linear map: its spectral norm is exact
        sigma = float(np.linalg.norm(mlp.weights[0].numpy(), 2))
        return LipSDPResult(round_up(sigma, 8 * max(mlp.weights[0].shape) ** 2), np.zeros(0), sigma**2,
                            variant, "linear", sigma, time.perf_counter() - t0)
    # scale the output layer so the SDP is well conditioned: Lip(f) = scale * Lip(f / scale)
    norms = [float(np.linalg.norm(w.numpy(), 2)) for w in mlp.weights]
    betas = [float(np.abs(np.concatenate(mlp.layer_slopes(k))).max(initial=0.0))
             for k in range(mlp.depth - 1)]
    scale = min(float(np.prod(norms) * np.prod(betas)), mlp.scale_hint)
    if not scale > 0:
        return LipSDPResult(0.0, np.zeros(0), 0.0, variant, "zero", 0.0, time.perf_counter() - t0)
    s = _structure(mlp, scale)
    if s["n"] == 0:
        raise LipSDPError("every neuron has a fixed slope: the network is affine (use its Jacobian's norm)")
    if variant == "layer":
        return _lipsdp_layer(s, scale, t0, time_limit)
    A, B, a, b = s["A"], s["B"], s["alpha"], s["beta"]
    n, n0 = s["n"], s["n0"]
    rho = cp.Variable(nonneg=True)
    E0 = np.zeros((s["N"], s["N"]))
    E0[:n0, :n0] = np.eye(n0)
    lam_full = cp.Variable(n, nonneg=True)
    c1 = cp.multiply(-2.0 * a * b, lam_full)
    c2 = cp.multiply(a + b, lam_full)
    cross = A.T @ cp.diag(c2) @ B
    M = A.T @ cp.diag(c1) @ A + cross + cross.T - 2.0 * B.T @ cp.diag(lam_full) @ B + s["out"] - rho * E0
    M = 0.5 * (M + M.T)
    kwargs: dict = dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters, verbose=verbose)
    if time_limit is not None:
        kwargs["time_limit_secs"] = float(time_limit)
    # second try, when SCS's multipliers cannot be certified: keep the hidden block of -M away from singular
    # (lowered GroupSort layers put the optimum on a singular P, module docstring)
    margin = 0.0
    for attempt in range(3):
        cons = [-M >> 0]
        if attempt > 0:
            cons.append(-M[n0:, n0:] >> margin * np.eye(n))
        prob = cp.Problem(cp.Minimize(rho), cons)
        try:
            with warnings.catch_warnings():  # an inaccurate solution is fine: it is re-certified below
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                prob.solve(solver=cp.SCS, **kwargs)
        except cp.error.SolverError as exc:  # pragma: no cover - depends on the solver build
            raise LipSDPError(f"SCS failed on LipSDP-{variant}: {exc}") from exc
        lam_val = None if lam_full.value is None else np.asarray(lam_full.value, dtype=np.float64).ravel()
        if lam_val is None or not np.all(np.isfinite(lam_val)):
            raise LipSDPError(f"SCS returned no multipliers for LipSDP-{variant} (status {prob.status})")
        rho_cert = certify_multipliers(s, lam_val)
        if math.isfinite(rho_cert):
            break
        # P ~ 2 diag(lambda) - ...: a margin on the scale of the multipliers just found
        margin = (1e-4 if attempt == 0 else 1e-2) * float(np.median(np.abs(lam_val))) + 1e-12
    if not math.isfinite(rho_cert):
        raise LipSDPError(f"could not certify the multipliers returned by SCS (status {prob.status})")
    upper = certified_upper(rho_cert, scale)
    solver_value = math.sqrt(max(float(rho.value), 0.0)) * scale if rho.value is not None else math.nan
    return LipSDPResult(upper, lam_val, rho_cert * scale**2, variant, str(prob.status), solver_value,
                        time.perf_counter() - t0)


# --------------------------------------------------------------------------- large networks: first order


def _blocks(mlp: MLP, scale: float) -> dict:
    """Per-layer data of the block-tridiagonal LipSDP-Neuron matrix (numpy float64, output scaled)."""
    Ws = [w.numpy() for w in mlp.weights]
    slopes = [mlp.layer_slopes(k) for k in range(len(Ws) - 1)]
    return dict(Ws=Ws[:-1], WL=Ws[-1] / scale, ab=[a * b for a, b in slopes], apb=[a + b for a, b in slopes],
                sizes=[Ws[0].shape[1]] + [w.shape[0] for w in Ws[:-1]])


def _schur_rho(blk: dict, lams: list, xp=np):
    """``rho*(lambda) = lambda_max(S)`` by eliminating the blocks of ``M(0, T)`` from the last one:
    ``G_{L-1} = H_{L-1}``, ``G_{k-1} = H_{k-1} + C_k (-G_k)^{-1} C_k^T`` (``-G_k`` must be positive definite),
    ``S = G_0``.  ``xp`` is numpy or torch (the latter for gradients).  Returns ``None`` if infeasible."""
    Ws, WL, ab, apb = blk["Ws"], blk["WL"], blk["ab"], blk["apb"]
    L1 = len(Ws)
    if xp is np:
        G = -2.0 * np.diag(lams[-1]) + WL.T @ WL
    else:
        G = -2.0 * torch.diag(lams[-1]) + torch.from_numpy(WL.T @ WL)
    for k in range(L1 - 1, -1, -1):  # block k+1 in 1-based layers = hidden layer k
        W = Ws[k] if xp is np else torch.from_numpy(Ws[k])
        if xp is np:
            C = W.T * (apb[k] * lams[k])[None, :]
        else:
            C = W.T * (torch.from_numpy(apb[k]) * lams[k])[None]
        P = -G
        if xp is np:
            try:
                Lc = np.linalg.cholesky(0.5 * (P + P.T))
            except np.linalg.LinAlgError:
                return None
            X = np.linalg.solve(Lc, C.T)
            corr = X.T @ X
            H = -2.0 * (W.T * (ab[k] * lams[k])[None, :]) @ W
            if k > 0:
                H = H - 2.0 * np.diag(lams[k - 1])
        else:
            Lc, info = torch.linalg.cholesky_ex(0.5 * (P + P.T))
            if int(info) != 0:
                return None
            X = torch.linalg.solve_triangular(Lc, C.T, upper=False)
            corr = X.T @ X
            H = -2.0 * (W.T * (torch.from_numpy(ab[k]) * lams[k])[None]) @ W
            if k > 0:
                H = H - 2.0 * torch.diag(lams[k - 1])
        G = H + corr
    S = 0.5 * (G + G.T)
    if xp is np:
        return np.linalg.eigvalsh(S)[-1]
    # d lambda_max = u^T dS u for the top eigenvector u (Danskin): no eigen-decomposition in the graph
    u = _top_eigvec(S.detach().numpy())
    ut = torch.from_numpy(u)
    return ut @ S @ ut


def _top_eigvec(S: np.ndarray) -> np.ndarray:
    if S.shape[0] <= 64:
        return np.linalg.eigh(S)[1][:, -1]
    from scipy.sparse.linalg import eigsh

    try:
        return eigsh(S, k=1, which="LA", tol=1e-10)[1][:, 0]
    except Exception:  # ARPACK did not converge: dense fallback
        return np.linalg.eigh(S)[1][:, -1]


def _init_layerwise(blk: dict, factor: float) -> list[np.ndarray] | None:
    """A feasible start: scalar multipliers chosen from the last layer backwards so every ``-G_k`` is
    positive definite, ``lambda_k = factor * lambda_max(R_k) / 2`` where ``R_k`` is the rest of block k."""
    Ws, WL, ab, apb = blk["Ws"], blk["WL"], blk["ab"], blk["apb"]
    L1 = len(Ws)
    lams: list[np.ndarray | None] = [None] * L1
    R = WL.T @ WL
    for k in range(L1 - 1, -1, -1):
        top = max(float(np.linalg.eigvalsh(0.5 * (R + R.T))[-1]), 1e-12)
        lams[k] = np.full(Ws[k].shape[0], factor * top / 2.0)
        P = 2.0 * np.diag(lams[k]) - R
        C = Ws[k].T * (apb[k] * lams[k])[None, :]
        try:
            X = np.linalg.solve(np.linalg.cholesky(0.5 * (P + P.T)), C.T)
        except np.linalg.LinAlgError:
            return None
        R = -2.0 * (Ws[k].T * (ab[k] * lams[k])[None, :]) @ Ws[k] + X.T @ X
    return lams  # type: ignore[return-value]


def _dense_from_blocks(blk: dict, lam: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """The dense ``M(rho, T)`` and its absolute-value companion, assembled block by block."""
    Ws, WL, ab, apb, sizes = blk["Ws"], blk["WL"], blk["ab"], blk["apb"], blk["sizes"]
    N = sum(sizes)
    off = np.concatenate([[0], np.cumsum(sizes)])
    M = np.zeros((N, N))
    Mabs = np.zeros((N, N))
    pos = 0
    for k, W in enumerate(Ws):
        lk = lam[pos:pos + W.shape[0]]
        pos += W.shape[0]
        i0, i1, j0, j1 = off[k], off[k + 1], off[k + 1], off[k + 2]
        c1 = -2.0 * ab[k] * lk
        M[i0:i1, i0:i1] += (W.T * c1) @ W
        Mabs[i0:i1, i0:i1] += (np.abs(W).T * np.abs(c1)) @ np.abs(W)
        C = W.T * (apb[k] * lk)
        M[i0:i1, j0:j1] += C
        M[j0:j1, i0:i1] += C.T
        Mabs[i0:i1, j0:j1] += np.abs(C)
        Mabs[j0:j1, i0:i1] += np.abs(C).T
        M[np.arange(j0, j1), np.arange(j0, j1)] -= 2.0 * lk
        Mabs[np.arange(j0, j1), np.arange(j0, j1)] += 2.0 * lk
    last = off[-2]
    M[last:, last:] += WL.T @ WL
    Mabs[last:, last:] += np.abs(WL).T @ np.abs(WL)
    n0 = sizes[0]
    M[np.arange(n0), np.arange(n0)] -= rho
    Mabs[np.arange(n0), np.arange(n0)] += rho
    return 0.5 * (M + M.T), Mabs


def _negated_blocks(blk: dict, lam: np.ndarray, rho: float) -> tuple[list, list, list, list]:
    """The blocks of ``A = -M(rho, diag(lam))``: the diagonal blocks ``Ad[b]``, the sub-diagonal blocks
    ``Ao[b] = A_{b, b-1}`` (``Ao[0]`` is None), and their magnitude companions ``Adabs``, ``Aoabs`` (each
    entry the sum of the absolute values of the terms that form it: they bound its float64 round-off)."""
    Ws, WL, ab, apb, sizes = blk["Ws"], blk["WL"], blk["ab"], blk["apb"], blk["sizes"]
    nb = len(sizes)
    offs = np.concatenate([[0], np.cumsum(sizes[1:])])
    lams = [lam[offs[k]:offs[k + 1]] for k in range(nb - 1)]
    Ad = [np.zeros((n, n)) for n in sizes]
    Adabs = [np.zeros((n, n)) for n in sizes]
    Ao: list[np.ndarray | None] = [None] * nb  # A_{b, b-1}
    Aoabs: list[np.ndarray | None] = [None] * nb
    for k, W in enumerate(Ws):  # hidden layer k: constraint couples block k (its input) and k + 1
        c1 = 2.0 * ab[k] * lams[k]  # A = -M: signs flipped
        Ad[k] += (W.T * c1) @ W
        Adabs[k] += (np.abs(W).T * np.abs(c1)) @ np.abs(W)
        Ad[k + 1][np.diag_indices(sizes[k + 1])] += 2.0 * lams[k]
        Adabs[k + 1][np.diag_indices(sizes[k + 1])] += 2.0 * lams[k]
        Ao[k + 1] = -(W * (apb[k] * lams[k])[:, None])
        Aoabs[k + 1] = np.abs(Ao[k + 1])
    Ad[-1] -= WL.T @ WL
    Adabs[-1] += np.abs(WL).T @ np.abs(WL)
    Ad[0][np.diag_indices(sizes[0])] += rho
    Adabs[0][np.diag_indices(sizes[0])] += rho
    return Ad, Adabs, Ao, Aoabs


def _coupling_error(eo_norm: float, aoabs_norm: float, fdabs_norm: float, gam: float) -> float:
    """Bound of ``||E_(b,b-1)||_F``, the exact off-diagonal residual ``A_(b,b-1) - F_b D_(b-1)`` of the block
    LDL^T factorisation in :func:`_verify_blocks`.

    ``E_(b,b-1) = (A_(b,b-1) - Ao) + (Ao - fl(F D)) + (fl(F D) - F D)`` where ``Ao`` is the computed block
    (its formation error is at most ``gam |A_(b,b-1)|`` entrywise, and ``|A| <= (1 + gam) Aoabs``) and
    ``fl(F D)`` the computed product (error ``<= gam |F| |D|``).  The computed residual ``Eo = fl(Ao -
    fl(F D))`` differs from ``Ao - fl(F D)`` by at most ``u |Ao - fl(F D)|``, covered by the second ``gam
    ||Aoabs||``.  Hence ``||E_(b,b-1)||_F <= ||Eo||_F + gam (2 ||Aoabs||_F + || |F| |D| ||_F)``.
    """
    return round_up(eo_norm + gam * (2.0 * aoabs_norm + fdabs_norm), 4)


def _diagonal_error(eb_norm: float, adabs_norm: float, d_norm: float, schur_abs_norm: float, gam: float,
                    eta: float, n: int) -> float:
    """Bound of ``||E_bb||_F``, the exact diagonal residual ``A_bb - eta I - D_b - F_b D_(b-1) F_b^T`` of
    :func:`_verify_blocks` (``F_0 = 0``: pass ``d_norm = schur_abs_norm = 0`` for the first block).

    The computed residual ``Eb`` misses: the formation error of ``A_bb`` (``gam ||Adabs||``), the rounding of
    the Schur update ``fl(F D F^T)`` (``gam || |F| |D| |F|^T ||``), the rounding of forming and symmetrising
    ``D_b`` (``gam ||D_b||``) and of subtracting ``eta I`` (``gam eta sqrt(n)``, the Frobenius norm of
    ``gam eta I_n``).  Hence
    ``||E_bb||_F <= ||Eb||_F + gam (||Adabs|| + ||D_b|| + || |F||D||F|^T ||) + gam eta sqrt(n)``.
    """
    return round_up(eb_norm + gam * (adabs_norm + d_norm + schur_abs_norm) + gam * eta * math.sqrt(n), 8)


def _residual_norm_bound(e_diag: np.ndarray, e_off: np.ndarray) -> float:
    """``||E||_2`` of a symmetric block-tridiagonal ``E`` whose diagonal blocks have Frobenius norms at most
    ``e_diag[b]`` and whose sub-diagonal blocks ``E_(b,b-1)`` (and their transposes) at most ``e_off[b]``
    (``e_off[0]`` unused, 0).

    ``||E||_2 <= ||E||_inf`` of the matrix of block norms (the spectral norm is at most that of the
    nonnegative matrix of the blocks' spectral norms, itself at most its largest row sum for a symmetric
    matrix): ``max_b e_diag[b] + e_off[b] + e_off[b + 1]``, block row ``b`` meeting ``E_(b,b-1)`` and
    ``E_(b+1,b)^T``.  Each sum is rounded up (:func:`~lipkit.bounds.round_up`), as are the two error terms.
    """
    nb = len(e_diag)
    rows = [e_diag[b] + e_off[b] + (e_off[b + 1] if b + 1 < nb else 0.0) for b in range(nb)]
    return round_up(float(max(rows)), 2)


def _verify_blocks(blk: dict, lam: np.ndarray, rho: float) -> bool:
    """Prove ``M(rho, diag(lam)) <= 0`` for the block-tridiagonal LipSDP matrix, in O(sum n_k^3).

    With ``A = -M`` and a small shift ``eta``, a floating-point block factorisation
    ``A - eta I = L D L^T + E`` is computed (``D`` block diagonal, ``L`` unit block lower bidiagonal); the
    residual ``E`` is block tridiagonal and is formed explicitly, with a bound of its own round-off and of the
    round-off of forming ``A``.  If every ``D_k`` is positive semidefinite (its smallest computed eigenvalue
    exceeds the eigen-solver's error bound) and ``||E||_2 <= eta`` (``||E||_2`` is at most the largest
    block-row sum of the blocks' Frobenius norms), then ``A - eta I >= -||E|| I``, i.e. ``M <= 0``.
    """
    sizes = blk["sizes"]
    nb = len(sizes)
    Ad, Adabs, Ao, Aoabs = _negated_blocks(blk, lam, rho)
    # the longest inner product that forms an entry: a block's width, or the output dimension of WL^T WL
    nmax = max(*sizes, blk["WL"].shape[0]) + 4
    gam = 4.0 * nmax * EPS64
    ref = max(float(np.linalg.norm(a)) for a in Ad)
    eta = 1e-11 * ref + 1e-300
    D: list[np.ndarray] = []
    e_diag = np.zeros(nb)
    e_off = np.zeros(nb)
    for b in range(nb):
        Ab = Ad[b] - eta * np.eye(sizes[b])
        if b == 0:
            Db = Ab.copy()
            Eb = Ab - Db
            d_norm = schur_abs = 0.0  # D_0 = A_00 - eta I is formed exactly (the copy)
        else:
            try:
                Lc = np.linalg.cholesky(D[b - 1])
            except np.linalg.LinAlgError:
                return False
            # F_b = A_{b,b-1} D_{b-1}^{-1}
            Fb = np.linalg.solve(Lc.T, np.linalg.solve(Lc, Ao[b].T)).T
            FD = Fb @ D[b - 1]
            Db = Ab - FD @ Fb.T
            Db = 0.5 * (Db + Db.T)
            Eb = Ab - Db - FD @ Fb.T
            Eo = Ao[b] - FD
            FDabs = np.abs(Fb) @ np.abs(D[b - 1])
            e_off[b] = _coupling_error(float(np.linalg.norm(Eo)), float(np.linalg.norm(Aoabs[b])),
                                       float(np.linalg.norm(FDabs)), gam)
            d_norm, schur_abs = float(np.linalg.norm(Db)), float(np.linalg.norm(FDabs @ np.abs(Fb).T))
        e_diag[b] = _diagonal_error(float(np.linalg.norm(Eb)), float(np.linalg.norm(Adabs[b])), d_norm,
                                    schur_abs, gam, eta, sizes[b])
        dnorm = float(np.linalg.norm(Db))
        if float(np.linalg.eigvalsh(Db)[0]) <= 100.0 * sizes[b] * EPS64 * dnorm:
            return False
        D.append(Db)
    return _residual_norm_bound(e_diag, e_off) <= eta


def _certify_blocks(blk: dict, lams: list[np.ndarray]) -> float:
    """Verified ``rho`` for fixed multipliers: ``rho*`` from :func:`_schur_rho`, inflated until
    :func:`_verify_blocks` proves the LMI (dense eigenvalue check as in :func:`certify_multipliers` if the
    structured proof fails)."""
    rho_star = _schur_rho(blk, lams)
    if rho_star is None:
        return math.inf
    rho_star = max(float(rho_star), 0.0)
    lam = np.concatenate(lams)
    for delta in (1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1e-1):
        rho = rho_star * (1.0 + delta) + delta * 1e-6
        if _verify_blocks(blk, lam, rho):
            return rho
    for delta in (1e-7, 1e-5, 1e-3, 1e-1):
        rho = rho_star * (1.0 + delta) + delta * 1e-6
        M, Mabs = _dense_from_blocks(blk, lam, rho)
        if _proves_nsd(M, Mabs, rho):
            return rho
    return math.inf


def lipsdp_first_order(
    model: nn.Module, *, max_iters: int = 300, time_limit: float | None = None, lr: float = 0.1,
    input_shape: tuple[int, ...] | None = None,
) -> LipSDPResult:
    """LipSDP-Neuron for networks too large for SCS: minimise the convex ``rho*(lambda)`` directly.

    ``rho*(lambda) = min {rho : M(rho, diag(lambda)) <= 0}`` is convex in ``lambda`` (the LMI is jointly
    affine in ``(rho, lambda)``) and, for the block-tridiagonal ``M`` of an MLP, is evaluated exactly by
    eliminating the blocks from the last layer (one Cholesky per layer, :func:`_schur_rho`).  Starting from
    a feasible layer-wise point, Adam on ``log lambda`` (autograd through the Choleskys and the final
    eigenvalue) decreases it; infeasible steps are rejected.  The best multipliers are then *certified* as
    in :func:`lipsdp` (smallest ``rho`` verified by one dense symmetric eigen-decomposition with a round-off
    margin), so the bound is sound whatever the optimiser did; it is never below the SDP optimum.
    """
    _torch = torch
    t0 = time.perf_counter()
    mlp = parse_mlp(model, input_shape)
    if mlp.depth < 2:
        return lipsdp(model, input_shape=input_shape)
    norms = [float(np.linalg.norm(w.numpy(), 2)) for w in mlp.weights]
    betas = [float(np.abs(np.concatenate(mlp.layer_slopes(k))).max(initial=0.0))
             for k in range(mlp.depth - 1)]
    scale = min(float(np.prod(norms) * np.prod(betas)), mlp.scale_hint)
    if not scale > 0:
        return LipSDPResult(0.0, np.zeros(0), 0.0, "neuron-fo", "zero", 0.0, time.perf_counter() - t0)
    blk = _blocks(mlp, scale)
    best_lams, best = None, math.inf
    for factor in (1.05, 1.2, 1.5, 2.0, 3.0):
        lams = _init_layerwise(blk, factor)
        if lams is None:
            continue
        r = _schur_rho(blk, lams)
        if r is not None and float(r) < best:
            best_lams, best = lams, float(r)
    if best_lams is None:
        raise LipSDPError("no feasible layer-wise start for first-order LipSDP")
    theta = [_torch.tensor(np.log(lam), dtype=_torch.float64, requires_grad=True) for lam in best_lams]
    opt = _torch.optim.Adam(theta, lr=lr)
    deadline = None if time_limit is None else t0 + 0.8 * float(time_limit)
    iters = 0
    for _ in range(max_iters):
        if deadline is not None and time.perf_counter() > deadline:
            break
        iters += 1
        val = _schur_rho(blk, [th.exp() for th in theta], xp=_torch)
        if val is None or not bool(_torch.isfinite(val)):  # left the feasible set: step back, smaller steps
            with _torch.no_grad():
                for th, lam in zip(theta, best_lams, strict=True):
                    th.copy_(_torch.from_numpy(np.log(lam)))
            for gr in opt.param_groups:
                gr["lr"] *= 0.5
            opt.state.clear()
            continue
        v = float(val.detach())
        if v < best:
            best, best_lams = v, [th.detach().exp().numpy().copy() for th in theta]
        opt.zero_grad()
        val.backward()
        opt.step()
    rho = _certify_blocks(blk, best_lams)
    if not math.isfinite(rho):
        raise LipSDPError("could not certify the first-order LipSDP multipliers")
    lam = np.concatenate(best_lams)
    return LipSDPResult(certified_upper(rho, scale), lam, rho * scale**2, "neuron-fo",
                        f"adam {iters} iterations", math.sqrt(best) * scale, time.perf_counter() - t0)
