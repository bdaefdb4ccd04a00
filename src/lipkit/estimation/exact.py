"""Brute-force exact Lipschitz constant of a one-hidden-layer ReLU network (for tests and benchmarks).

For ``f(x) = V relu(W x + b) + c`` the function is piecewise affine; on the open region where the
activation pattern is ``D = diag(1[W x + b > 0])`` its Jacobian is ``V D W``.  A segment between two
points crosses finitely many regions, so ``Lip_p(f) = max over reachable patterns D of ||V D W||_p``
(operator norm l_p -> l_p).

Reachability condition used here: if ``W`` (hidden width ``h`` x input dim ``d``) has full row rank
``h`` (which needs ``h <= d`` and holds for generic weights), then ``x -> W x + b`` is onto ``R^h`` and
every one of the ``2^h`` sign patterns is attained on an open set, so the maximum over *all* patterns is
exact.  When ``W`` is row-rank deficient the maximum over all patterns is only an upper bound; we refuse
(``ValueError``) rather than return a number that may not be the constant.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lipkit.bounds import normalize_p

from ._mlp import parse_mlp
from .lower import batched_opnorm

__all__ = ["exact_one_hidden_relu", "max_pattern_norm"]

MAX_WIDTH = 20


def max_pattern_norm(W: torch.Tensor, V: torch.Tensor, p: float | int | str = 2) -> float:
    """``max_{D in {0,1}^h} ||V diag(D) W||_p`` in float64 (no reachability check)."""
    p = normalize_p(p)
    W = W.detach().to(torch.float64)
    V = V.detach().to(torch.float64)
    h = W.shape[0]
    if h > MAX_WIDTH:
        raise ValueError(f"brute force over 2^{h} patterns is too large (width must be <= {MAX_WIDTH})")
    best = 0.0
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=h)), dtype=torch.float64)
    for chunk in patterns.split(4096):
        J = torch.einsum("ik,bk,kj->bij", V, chunk, W)
        best = max(best, float(batched_opnorm(J, p).max()))
    return best


def exact_one_hidden_relu(model: nn.Module, p: float | int | str = 2) -> float:
    """Exact l_p Lipschitz constant of ``Linear -> ReLU -> Linear`` whose first weight has full row rank.

    Raises ``ValueError`` if the model is not of that form, the width exceeds ``MAX_WIDTH`` or the first
    weight is row-rank deficient (then not every activation pattern need be reachable).
    """
    mlp = parse_mlp(model)
    if mlp.depth != 2 or not isinstance(mlp.acts[0], nn.ReLU):
        raise ValueError("exact_one_hidden_relu needs a Linear -> ReLU -> Linear network")
    W, V = mlp.weights
    h, d = W.shape
    if h > d:
        raise ValueError(f"hidden width {h} > input dim {d}: not every activation pattern is reachable")
    sv = torch.linalg.svdvals(W)
    if float(sv.min()) <= 1e-8 * float(sv.max()):
        raise ValueError("first weight is (numerically) row-rank deficient: patterns may be unreachable")
    return max_pattern_norm(W, V, p)
