from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipkit.losses import HKRLoss, LipschitzCrossEntropyLoss, MulticlassHingeLoss


def test_hinge_values_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    # margins f_y - max_other: 2 - 1 = 1 -> relu(1 - 1) = 0;  0 - 0.5 -> relu(1.5) = 1.5
    assert MulticlassHingeLoss(1.0)(logits, y).item() == pytest.approx(0.75)
    assert MulticlassHingeLoss(0.0)(logits, y).item() == pytest.approx(0.25)


def test_hkr_values_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([0, 1, 0])
    # KR: class 0: mean f0 over {0, 2} = 1.5 minus f0 over {1} = 0 -> 1.5
    #     class 1: f1 over {1} = 1 minus mean f1 over {0, 2} = -0.5 -> 1.5;  KR = 1.5
    loss = HKRLoss(alpha=3.0, margin=1.0)
    assert loss.kantorovich_rubinstein(logits, y).item() == pytest.approx(1.5)
    assert loss(logits, y).item() == pytest.approx(-1.5)  # every margin >= 1: hinge 0
    # margin 2: hinge terms 1, 1, 0 -> 2/3; 3 * 2/3 - 1.5 = 0.5
    assert HKRLoss(alpha=3.0, margin=2.0)(logits, y).item() == pytest.approx(0.5)
    # a class with no sample on one side is skipped: all labels 0 -> KR = 0
    assert HKRLoss(1.0, 1.0).kantorovich_rubinstein(logits, torch.zeros(3, dtype=torch.long)).item() == 0.0


def test_lipschitz_cross_entropy_values_by_hand():
    logits = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.tensor([0])
    # shifted (1 - 0.5, 0, 0) * 2 = (1, 0, 0): CE = -log(e / (e + 2))
    expected = -math.log(math.e / (math.e + 2))
    assert LipschitzCrossEntropyLoss(2.0, 0.5)(logits, y).item() == pytest.approx(expected, rel=1e-6)
    # margin 0, temperature 1: plain cross entropy
    z = torch.randn(5, 4)
    t = torch.randint(0, 4, (5,))
    assert LipschitzCrossEntropyLoss()(z, t).item() == pytest.approx(
        nn.functional.cross_entropy(z, t).item(), rel=1e-6)


@pytest.mark.parametrize(
    "loss", [MulticlassHingeLoss(0.5), HKRLoss(5.0, 0.5), LipschitzCrossEntropyLoss(10.0, 0.2)]
)
def test_gradients_finite_and_descend(loss):
    torch.manual_seed(0)
    for z in (torch.randn(8, 5) * 100, torch.zeros(8, 5)):
        z = z.requires_grad_(True)
        t = torch.arange(8) % 5
        out = loss(z, t)
        assert out.dim() == 0 and torch.isfinite(out)
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(g).all()
    # a small step along -grad lowers the loss (the gradient is the right sign)
    z = torch.randn(8, 5, requires_grad=True)
    t = torch.arange(8) % 5
    out = loss(z, t)
    (g,) = torch.autograd.grad(out, z)
    assert g.abs().sum() > 0
    assert loss(z.detach() - 1e-3 * g, t) < out


@pytest.mark.parametrize("loss", [MulticlassHingeLoss(), HKRLoss(), LipschitzCrossEntropyLoss()])
def test_bad_inputs_raise(loss):
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        loss(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        loss(z, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="integer"):
        loss(z, torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        loss(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch, classes"):
        loss(torch.randn(4), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="floating"):
        loss(torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 1]))


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="margin"):
        MulticlassHingeLoss(-1.0)
    with pytest.raises(ValueError, match="alpha"):
        HKRLoss(alpha=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        LipschitzCrossEntropyLoss(temperature=0.0)
    with pytest.raises(ValueError, match="margin"):
        LipschitzCrossEntropyLoss(margin=float("inf"))
