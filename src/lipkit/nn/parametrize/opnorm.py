"""Operator-norm normalisations for the l_inf, l_1 and mixed norms (Kitouni, Nolte & Williams,
"Robust and provably monotonic networks", 2023).

Each map rescales rows (or columns) of ``W`` so that one operator norm is at most ``lip``:

=========  ===========================  ====================  ===============================
kind       operator norm                 l_p -> l_q            rescaling
=========  ===========================  ====================  ===============================
"inf"      max_i sum_j |W_ij|            l_inf -> l_inf        row i / max(1, ||W_i.||_1 / lip)
"one"      max_j sum_i |W_ij|            l_1 -> l_1            col j / max(1, ||W_.j||_1 / lip)
"one-inf"  max_ij |W_ij|                 l_1 -> l_inf          row i / max(1, ||W_i.||_inf / lip)
"two-inf"  max_i ||W_i.||_2              l_2 -> l_inf          row i / max(1, ||W_i.||_2 / lip)
=========  ===========================  ====================  ===============================

Rows (columns) already inside the ball are left untouched, so the map is the identity on the
constraint set and only shrinks the offending rows (Kitouni et al. normalise per row in the same
way).  ``lipschitz_bound(layer, p)`` still reports the sound same-norm bound of the weight the
forward pass uses (for the mixed norms the layer maps l_p -> l_q, and that is not what
``lipschitz_bound`` measures).
"""

from __future__ import annotations

import torch
from torch import nn

from lipkit.nn.parametrize.utils import check_lip, check_matrix

__all__ = ["OperatorNorm", "OPNORM_KINDS"]

#: kind -> (p_in, p_out) of the operator norm it constrains.
OPNORM_KINDS: dict[str, tuple[float, float]] = {
    "inf": (float("inf"), float("inf")),
    "one": (1.0, 1.0),
    "one-inf": (1.0, float("inf")),
    "two-inf": (2.0, float("inf")),
}


class OperatorNorm(nn.Module):
    """Rescale rows/columns of ``W`` so that the chosen operator norm is at most ``lip``.

    Args:
        kind: one of ``"inf"``, ``"one"``, ``"one-inf"``, ``"two-inf"`` (see the module docs).
        lip: the bound to enforce.
    """

    def __init__(self, kind: str = "inf", *, lip: float = 1.0) -> None:
        super().__init__()
        if kind not in OPNORM_KINDS:
            raise ValueError(f"unknown operator-norm kind {kind!r}; valid kinds: {sorted(OPNORM_KINDS)}")
        self.kind = kind
        self.lip = check_lip(lip, "OperatorNorm")

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_matrix(weight, "OperatorNorm")
        a = weight.abs()
        if self.kind == "inf":
            norms = a.sum(dim=1, keepdim=True)
        elif self.kind == "one":
            norms = a.sum(dim=0, keepdim=True)
        elif self.kind == "one-inf":
            norms = a.amax(dim=1, keepdim=True)
        else:
            norms = torch.linalg.vector_norm(weight, 2, dim=1, keepdim=True)
        return weight / torch.clamp(norms / self.lip, min=1.0)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, lip={self.lip}"
