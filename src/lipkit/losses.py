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

For differential privacy without clipping (:mod:`lipkit.dp`) each loss also has

* ``per_example(logits, target) -> (B,)``: one term per example, none depending on another example of the
  batch (the batch mean is ``per_example(...).mean()``, except for :class:`HKRLoss`, whose batch KR term
  weights examples by their class counts in the batch and whose per-example form uses fixed class priors);
* ``logit_lipschitz(num_classes, output_radius=None)``: a bound ``G`` of ``||d l_i / d z||_2`` over all
  logits ``z`` (with ``||z||_2 <= output_radius`` where the loss needs bounded outputs) and all labels,
  i.e. the loss's Lipschitz constant with respect to the logits in l2.

:class:`LogitMSELoss` (squared error to ``target_value * onehot(y)``) is Lipschitz only on bounded outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipkit.bounds import round_up

__all__ = ["MulticlassHingeLoss", "HKRLoss", "LipschitzCrossEntropyLoss", "LogitMSELoss", "top2_margin"]

#: ``||e_j - e_y||_2``: the largest l2 norm of a difference of two points of the probability simplex
_SQRT2 = round_up(math.sqrt(2.0))


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


def _onehot(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``onehot(target)`` shaped and typed like ``logits`` (no data-dependent checks: vmap-friendly)."""
    return torch.zeros_like(logits).scatter(1, target[:, None], 1.0)


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
        return self.per_example(logits, target).mean()

    def per_example(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``relu(margin - (f_y - max_{j != y} f_j))`` for each example, shape ``(B,)``."""
        _check(logits, target)
        return torch.relu(self.margin - top2_margin(logits, target))

    def logit_lipschitz(self, num_classes: int, output_radius: float | None = None) -> float:
        """``sqrt(2)``: where the hinge is active its gradient is ``e_j - e_y`` (``j`` the runner-up; a tie
        gives a convex combination of such vectors, no longer), elsewhere 0."""
        return _SQRT2

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class HKRLoss(nn.Module):
    """Hinge-Kantorovich-Rubinstein loss ``alpha * hinge - KR`` (Serrurier et al., CVPR 2021).

    ``hinge`` is :class:`MulticlassHingeLoss` (``margin``) and ``KR`` the one-vs-all estimate
    ``mean_k (mean_{i: y_i = k} f_k(x_i) - mean_{i: y_i != k} f_k(x_i))`` over the classes ``k``
    that have samples on both sides in the batch (0 if there is none).  Large ``alpha``
    favours accuracy, small ``alpha`` favours robustness.
    """

    def __init__(self, alpha: float = 10.0, margin: float = 1.0, class_priors: list[float] | None = None
                 ) -> None:
        super().__init__()
        self.alpha = _check_number("alpha", alpha)
        self.margin = _check_number("margin", margin)
        if class_priors is not None:
            priors = [float(v) for v in class_priors]
            if len(priors) < 2 or any(not (0.0 < v < 1.0) for v in priors) or abs(sum(priors) - 1.0) > 1e-6:
                raise ValueError(f"class_priors must be >= 2 numbers in (0, 1) summing to 1, got "
                                 f"{class_priors!r}")
            class_priors = priors
        self.class_priors = class_priors

    def _kr_coefficients(self, num_classes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``V[y, k] = 1 / (C pi_k)`` if ``k == y`` else ``-1 / (C (1 - pi_k))`` (shape ``(C, C)``)."""
        if self.class_priors is None:
            pi = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        else:
            if len(self.class_priors) != num_classes:
                raise ValueError(f"HKRLoss has {len(self.class_priors)} class priors but the logits have "
                                 f"{num_classes} classes")
            pi = torch.tensor(self.class_priors, dtype=torch.float64)
        eye = torch.eye(num_classes, dtype=torch.bool)
        v = torch.where(eye, 1.0 / (num_classes * pi)[None, :], -1.0 / (num_classes * (1.0 - pi))[None, :])
        return v.to(dtype=dtype, device=device)

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

    def per_example(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``alpha * hinge_i - kr_i`` with the per-example KR term of fixed class priors ``pi``:

        ``kr_i = (1 / C) sum_k (1[y_i = k] / pi_k - 1[y_i != k] / (1 - pi_k)) f_k(x_i)``, whose expectation
        over the data is ``mean_k (E[f_k | y = k] - E[f_k | y != k])`` when ``pi`` are the class frequencies.
        Unlike :meth:`forward`, no example's weight depends on the other examples of the batch.  The priors
        are public constants (default uniform): priors fitted on private data spend privacy.
        """
        _check(logits, target)
        hinge = torch.relu(self.margin - top2_margin(logits, target))
        v = self._kr_coefficients(logits.shape[1], logits.dtype, logits.device)
        kr = (v[target] * logits).sum(dim=1)
        return self.alpha * hinge - kr

    def logit_lipschitz(self, num_classes: int, output_radius: float | None = None) -> float:
        """``max_y max(||v_y||, max_{j != y} ||alpha (e_j - e_y) - v_y||)`` with ``v_y`` the KR coefficients.

        The gradient is ``-v_y`` where the hinge is inactive and ``alpha (e_j - e_y) - v_y`` where it is
        active (``j`` the runner-up); ``||alpha (e_j - e_y) - v||^2 =
        ||v||^2 + 2 alpha^2 + 2 alpha (v_y - v_j)``.
        Computed in float64 and rounded up.
        """
        v = self._kr_coefficients(num_classes, torch.float64, torch.device("cpu"))
        norm2 = (v * v).sum(dim=1)
        diag = v.diagonal()
        off = v.masked_fill(torch.eye(num_classes, dtype=torch.bool), math.inf).amin(dim=1)  # min v_j
        active = norm2 + 2.0 * self.alpha ** 2 + 2.0 * self.alpha * (diag - off)
        worst = torch.maximum(norm2, active).max().item()
        return round_up(math.sqrt(worst), 4 * num_classes + 8)

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
        return self.per_example(logits, target).mean()

    def per_example(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The cross entropy of each example, shape ``(B,)``."""
        _check(logits, target)
        shifted = logits - self.margin * _onehot(logits, target)
        return nn.functional.cross_entropy(self.temperature * shifted, target, reduction="none")

    def logit_lipschitz(self, num_classes: int, output_radius: float | None = None) -> float:
        """``sqrt(2) * temperature``: the gradient is ``t (softmax(t (z - m e_y)) - e_y)``, ``t`` times the
        difference of two points of the probability simplex (l2 norm < sqrt 2, approached when the
        softmax puts all its mass on a wrong class)."""
        return round_up(_SQRT2 * self.temperature, 2)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin={self.margin}"


class LogitMSELoss(nn.Module):
    """``0.5 ||f(x) - target_value * e_y||_2^2`` per example (mean over the batch).

    Its gradient ``f(x) - target_value e_y`` is unbounded in general; on outputs ``||f(x)||_2 <= B`` it is
    at most ``B + target_value``, so :meth:`logit_lipschitz` needs the output radius (which
    :mod:`lipkit.dp` computes from the network's Lipschitz bound, the input radius and ``||f(0)||``).
    """

    def __init__(self, target_value: float = 1.0) -> None:
        super().__init__()
        self.target_value = _check_number("target_value", target_value)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_example(logits, target).mean()

    def per_example(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(logits, target)
        goal = self.target_value * _onehot(logits, target)
        return 0.5 * ((logits - goal) ** 2).sum(dim=1)

    def logit_lipschitz(self, num_classes: int, output_radius: float | None = None) -> float:
        """``output_radius + target_value`` (triangle inequality); refuses without an output radius."""
        if output_radius is None or not math.isfinite(output_radius) or output_radius < 0:
            raise ValueError("LogitMSELoss is Lipschitz only on bounded outputs: pass output_radius "
                             f"(a finite bound of ||f(x)||_2), got {output_radius!r}")
        return round_up(float(output_radius) + self.target_value, 2)

    def extra_repr(self) -> str:
        return f"target_value={self.target_value}"
