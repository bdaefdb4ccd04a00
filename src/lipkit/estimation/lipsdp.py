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
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
from torch import nn

from lipkit.bounds import EPS64, round_up

from ._mlp import MLP, parse_mlp

__all__ = ["LipSDPResult", "LipSDPError", "lipsdp", "certify_multipliers"]


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
    free = [a != b for a, b in slopes] if mlp.neuron_slopes is not None else [np.ones(w.shape[0], bool)
                                                                                 for w in Ws[:-1]]
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
    return dict(A=A, A_abs=A_abs, B=B, out=out, out_abs=out_abs, alpha=alpha, beta=beta, n0=n0, n=n, N=N,
                layer_of=layer_of, n_layers=len(hid))


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


def certify_multipliers(s: dict, lam: np.ndarray) -> float:
    """Smallest verified ``rho`` with ``M(rho, diag(lam)) <= 0`` (see module docstring); ``inf`` if none."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    n0, N = s["n0"], s["N"]
    top = float(lam.max()) if lam.size else 0.0
    # repairs for inaccurate multipliers: scale them up, or lift the small ones
    candidates = [lam * g for g in (1.0, 1.001, 1.01, 1.1, 2.0, 10.0)]
    candidates += [lam + d * top for d in (1e-6, 1e-4, 1e-2, 1e-1, 1.0)] if top > 0 else []
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
            tau = 1e3 * N * EPS64 * (np.linalg.norm(Mabs) + rho)
            if float(np.linalg.eigvalsh(M)[-1]) <= -tau:
                return rho
    return math.inf


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
    upper = round_up(math.sqrt(best) * scale, 8)
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
    Raises:
        LipSDPError: SCS failed and no certificate could be built from its multipliers.
    """
    import cvxpy as cp

    if variant not in ("neuron", "layer"):
        raise ValueError(
            f"unknown LipSDP variant {variant!r}; use 'neuron' or 'layer' ('network' is unsound)"
        )
    t0 = time.perf_counter()
    mlp = parse_mlp(model)
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
    scale = float(np.prod(norms) * np.prod(betas))
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
    prob = cp.Problem(cp.Minimize(rho), [-M >> 0])
    kwargs: dict = dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters, verbose=verbose)
    if time_limit is not None:
        kwargs["time_limit_secs"] = float(time_limit)
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
    if not math.isfinite(rho_cert):
        raise LipSDPError(f"could not certify the multipliers returned by SCS (status {prob.status})")
    upper = round_up(math.sqrt(rho_cert) * scale, 8)
    solver_value = math.sqrt(max(float(rho.value), 0.0)) * scale if rho.value is not None else math.nan
    return LipSDPResult(upper, lam_val, rho_cert * scale**2, variant, str(prob.status), solver_value,
                        time.perf_counter() - t0)
