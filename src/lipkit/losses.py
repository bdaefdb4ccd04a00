"""Losses for Lipschitz classifiers.

With a Lipschitz network the logit margin *is* the certificate (see :mod:`lipkit.certify`), so
these losses reward margins measured in logit units:

* :class:`MulticlassHingeLoss`: ``mean_i relu(m - (f_y(x_i) - max_{j != y} f_j(x_i)))``, the
  Crammer-Singer multiclass hinge on the top-2 logit difference;
* :class:`HKRLoss`: hinge plus Kantorovich-Rubinstein term (Serrurier, Mamalet, Gonzalez-Sanz,
  Boissin, Loubes & del Barrio, "Achieving robustness in classification using optimal transport
  with hinge regularization", CVPR 2021): ``alpha * hinge - KR``, where the one-vs-all KR term is
  ``mean_k (E[f_k(x) | y = k] - E[f_k(x) | y != k])`` (the dual of the Wasserstein-1 distance
  between class k and the rest, for 1-Lipschitz ``f_k``);
* :class:`LipschitzCrossEntropyLoss`: cross entropy of ``temperature * (f(x) - margin * e_y)``,
  i.e. the true logit is lowered by ``margin`` before a scaled softmax (Prach & Lampert,
  "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks", ECCV 2022;
  Bethune et al., "Pay attention to your loss", 2022).

All take logits ``(B, C)`` and integer labels ``(B,)`` and return the batch mean.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MulticlassHingeLoss", "HKRLoss", "LipschitzCrossEntropyLoss", "top2_margin"]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape (batch, classes), got {shape}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError("target must be an integer tensor of class indices")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target labels must lie in [0, {logits.shape[1] - 1}], got range "
                         f"[{int(target.min())}, {int(target.max())}]")


def _check_number(name: str, value: float, *, positive: bool = False) -> float:
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, "
                         f"got {value!r}")
    return v


def top2_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example margin ``f_y - max_{j != y} f_j`` (negative when misclassified); differentiable.

    The one implementation of the top-2 margin: losses, attacks, certificates and training read it.
    """
    true = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return true - other


class MulticlassHingeLoss(nn.Module):
    """``mean_i relu(margin - (f_y - max_{j != y} f_j))``.

    With a 1-Lipschitz (l2) network, a zero loss on a point implies a certified l2 radius of at
    least ``margin / sqrt(2)``.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_number("margin", margin)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        return torch.relu(self.margin - top2_margin(logits, target)).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class HKRLoss(nn.Module):
    """Hinge-Kantorovich-Rubinstein loss ``alpha * hinge - KR`` (Serrurier et al., CVPR 2021).

    ``hinge`` is :class:`MulticlassHingeLoss` (``margin``) and ``KR`` the one-vs-all estimate
    ``mean_k (mean_{i: y_i = k} f_k(x_i) - mean_{i: y_i != k} f_k(x_i))`` over the classes ``k``
    that have samples on both sides in the batch (0 if there is none).  Large ``alpha``
    favours accuracy, small ``alpha`` favours robustness.
    """

    def __init__(self, alpha: float = 10.0, margin: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_number("alpha", alpha)
        self.margin = _check_number("margin", margin)

    def kantorovich_rubinstein(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        onehot = nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        n_in = onehot.sum(0)
        n_out = logits.shape[0] - n_in
        valid = (n_in > 0) & (n_out > 0)
        mean_in = (onehot * logits).sum(0) / n_in.clamp_min(1)
        mean_out = ((1 - onehot) * logits).sum(0) / n_out.clamp_min(1)
        terms = (mean_in - mean_out) * valid
        return terms.sum() / valid.sum().clamp_min(1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        hinge = torch.relu(self.margin - top2_margin(logits, target)).mean()
        return self.alpha * hinge - self.kantorovich_rubinstein(logits, target)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, margin={self.margin}"


class LipschitzCrossEntropyLoss(nn.Module):
    """Cross entropy of ``temperature * (logits - margin * onehot(target))``.

    The temperature compensates for the small logit range of a Lipschitz network; the offset
    asks for a logit margin of about ``margin`` before the loss saturates.
    """

    def __init__(self, temperature: float = 1.0, margin: float = 0.0) -> None:
        super().__init__()
        self.temperature = _check_number("temperature", temperature, positive=True)
        self.margin = _check_number("margin", margin)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        shifted = logits - self.margin * nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        return nn.functional.cross_entropy(self.temperature * shifted, target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin={self.margin}"
