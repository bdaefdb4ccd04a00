"""AOL: almost-orthogonal Lipschitz rescaling (Prach & Lampert, ECCV 2022).

For a weight ``W`` (out x in) AOL uses ``W diag(d)`` with

    d_j = (sum_i |W^T W|_{ij})^{-1/2}.

Why ``||W diag(d)||_2 <= 1``: with ``D = diag(d)`` and ``G = W^T W``, ``||W D||_2^2 =
||D G D||_2``, and ``D G D`` is similar to ``D^2 G``, whose spectral radius is at most its
max row l1 norm ``max_j d_j^2 sum_i |G_ji| = 1``.  (A zero column has ``d_j`` set to 0.)
The layer is certified from the weight it really uses by the ``nn.Linear`` rule of
:mod:`lipkit.bounds`, never from this argument.
"""

from __future__ import annotations

import torch
from torch import nn

from lipkit.nn.parametrize.utils import check_lip, check_matrix

__all__ = ["AOL"]


class AOL(nn.Module):
    """``W -> lip * W diag(d)``, ``d_j = (sum_i |W^T W|_ij)^{-1/2}`` (Prach & Lampert 2022).

    Args:
        lip: Lipschitz factor of the result (``||.||_2 <= lip``).
        eps: added under the square root so that an all-zero column gives a zero column.
    """

    def __init__(self, *, lip: float = 1.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.lip = check_lip(lip, "AOL")
        self.eps = float(eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_matrix(weight, "AOL")
        gram = weight.transpose(0, 1) @ weight
        d = torch.rsqrt(gram.abs().sum(dim=0) + self.eps)
        return weight * (d * self.lip).unsqueeze(0)

    def extra_repr(self) -> str:
        return f"lip={self.lip}"
