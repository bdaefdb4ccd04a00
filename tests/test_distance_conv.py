"""Conv variants of the l_inf-distance / SortNet neurons: per-patch semantics, bounds, errors."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from conftest import sample_pairs
from torch import nn

from lipkit import LinfDistConv2d, LinfDistLinear, SortNeuronConv2d, SortNeuronLinear, lipschitz_bound
from lipkit.bounds import UnsupportedModuleError

D = torch.float64
CONFIGS = [  # (in, out, kernel, stride, padding, dilation, H, W)
    (2, 3, 3, 1, 1, 1, 6, 5),
    (3, 4, (2, 3), (2, 1), (0, 1), 1, 7, 6),
    (1, 5, 3, 2, 2, (2, 1), 9, 8),
    (4, 2, 1, 1, 0, 1, 3, 4),
]


def _patches(x: torch.Tensor, conv) -> torch.Tensor:
    """All patches by explicit slicing, ``(N, Ho, Wo, C * kh * kw)`` in unfold's (c, i, j) order."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    ho, wo = conv.output_size(x.shape[2], x.shape[3])
    rows = []
    for a in range(ho):
        cols = []
        for b in range(wo):
            patch = xp[:, :, a * sh: a * sh + dh * (kh - 1) + 1: dh, b * sw: b * sw + dw * (kw - 1) + 1: dw]
            cols.append(patch.reshape(x.shape[0], -1))
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("kind", ["linf", "lp", "sort"])
def test_conv_equals_dense_layer_on_every_patch(cfg, kind: str) -> None:
    cin, cout, k, s, pad, dil, h, w = cfg
    torch.manual_seed(zlib.crc32(f"{cfg}-{kind}".encode()))  # same seed in every process (hash() is salted)
    if kind == "sort":
        conv = SortNeuronConv2d(cin, cout, k, s, pad, dil, q=0.4, k=3, mean_shift=False, dtype=D).eval()
        dense = SortNeuronLinear(conv.in_features, cout, q=0.4, k=3, mean_shift=False, dtype=D).eval()
    else:
        conv = LinfDistConv2d(cin, cout, k, s, pad, dil, mean_shift=False, dtype=D,
                              p=4.0 if kind == "lp" else math.inf)
        dense = LinfDistLinear(conv.in_features, cout, mean_shift=False, dtype=D, p=conv.p)
    with torch.no_grad():
        conv.bias.normal_()
        dense.weight.copy_(conv.weight.reshape(cout, -1))
        dense.bias.copy_(conv.bias)
    x = torch.randn(3, cin, h, w, dtype=D, requires_grad=True)
    y = conv(x)
    ref = dense(_patches(x, conv)).permute(0, 3, 1, 2)
    assert y.shape == ref.shape == (3, cout, *conv.output_size(h, w))
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    gx2, gw2 = torch.autograd.grad(ref, (x, dense.weight), g)
    torch.testing.assert_close(gx, gx2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw.reshape(cout, -1), gw2, rtol=1e-10, atol=1e-12)
    assert torch.equal(conv(x[1]), y[1].detach()) or torch.allclose(conv(x[1]), y[1], atol=1e-12)  # (C, H, W)


def test_gradcheck_conv() -> None:
    conv = LinfDistConv2d(2, 3, 2, padding=1, mean_shift=False, dtype=D)
    x = torch.randn(2, 2, 3, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: conv(a), (x,))


def test_mean_shift_per_channel_and_identity_init() -> None:
    torch.manual_seed(0)
    conv = LinfDistConv2d(3, 3, 3, padding=1, momentum=1.0, dtype=D)
    x = torch.rand(4, 3, 5, 5, dtype=D) * 8 - 4  # |x| < C / 2 = 5
    y = conv(x)  # training: batch mean over (N, H, W) per channel removed
    assert y.mean(dim=(0, 2, 3)).abs().max().item() < 1e-12
    # identity init: output channel j = input channel j + C before the shift
    torch.testing.assert_close(y, x - x.mean(dim=(0, 2, 3), keepdim=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.running_mean, x.mean(dim=(0, 2, 3)) + 10.0)
    conv.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x[:1]), x[:1] - x.mean(dim=(0, 2, 3), keepdim=True))
    wide = LinfDistConv2d(2, 4, 3, init="identity")
    assert torch.equal(wide.weight[:2, :, 1, 1], -10.0 * torch.eye(2))
    assert wide.weight[:2].abs().sum().item() == 20.0  # everything else in the first rows is 0


def _ratio(f, x, x2, p) -> torch.Tensor:
    with torch.no_grad():
        num = torch.linalg.vector_norm((f(x) - f(x2)).flatten(1), ord=p, dim=1)
        den = torch.linalg.vector_norm((x - x2).flatten(1), ord=p, dim=1)
    return num / den


@pytest.mark.parametrize("kind", ["linf", "sort"])
def test_sampled_pairs_never_break_the_bounds(kind: str) -> None:
    torch.manual_seed(2)
    conv = LinfDistConv2d if kind == "linf" else SortNeuronConv2d
    dense = LinfDistLinear if kind == "linf" else SortNeuronLinear
    net = nn.Sequential(conv(2, 6, 3, padding=1, dtype=D), conv(6, 6, 3, stride=2, padding=1, dtype=D),
                        conv(6, 4, 2, stride=1, dtype=D), nn.Flatten(),
                        dense(4 * 3 * 3, 5, mean_shift=False, dtype=D))
    net(torch.randn(32, 2, 7, 7, dtype=D))  # running means
    net.eval()
    x, x2 = sample_pairs((2, 7, 7), 300, seed=1, scale=2.0)
    r_inf = _ratio(net, x, x2, math.inf)
    assert lipschitz_bound(net, "inf") == pytest.approx(1.0, abs=1e-12)  # product, rounded up
    assert r_inf.max().item() <= 1.0 + 1e-12
    assert r_inf.max().item() > (0.5 if kind == "linf" else 0.25)  # not vacuous (SortNet averages)
    for p in (2, 1):
        for shape in (None, (2, 7, 7)):
            bound = lipschitz_bound(net, p, input_shape=shape)
            assert _ratio(net, x, x2, p).max().item() <= bound
    # with the recorded size the bound can only be tighter
    assert lipschitz_bound(net, 2, input_shape=(2, 7, 7)) <= lipschitz_bound(net, 2)


def test_conv_l2_and_l1_bounds_are_attained() -> None:
    out, k = 3, 3
    conv = LinfDistConv2d(2, out, k, padding=1, mean_shift=False, dtype=D).eval()
    with torch.no_grad():
        conv.weight.zero_()  # every neuron of every patch containing the pixel takes its max there
    assert lipschitz_bound(conv, 2) == pytest.approx(math.sqrt(out * k * k), rel=1e-12)
    assert lipschitz_bound(conv, 1) == out * k * k
    x = torch.zeros(1, 2, 6, 6, dtype=D)
    x[0, 1, 2, 3] = 3.0
    x2 = x.clone()
    x2[0, 1, 2, 3] = 3.5
    assert _ratio(conv, x, x2, 2).item() == pytest.approx(math.sqrt(out * k * k), rel=1e-12)
    assert _ratio(conv, x, x2, 1).item() == pytest.approx(out * k * k, rel=1e-12)
    # stride = kernel: disjoint patches, every pixel in one patch
    disjoint = LinfDistConv2d(2, out, 2, stride=2, mean_shift=False, dtype=D).eval()
    assert lipschitz_bound(disjoint, 2) == pytest.approx(math.sqrt(out), rel=1e-12)
    # relaxation p = 4: l_inf bound n^{1/4} with n = 2 * 3 * 3, attained at w = 0, x = 1 vs 1.1
    conv.p = 4.0
    n = conv.in_features
    assert lipschitz_bound(conv, "inf") == pytest.approx(n ** 0.25, rel=1e-12)
    ones = torch.ones(1, 2, 3, 3, dtype=D)
    assert _ratio(nn.Sequential(LinfDistConv2d(2, 1, 3, mean_shift=False, p=4.0, dtype=D, init="identity")),
                  ones, 1.1 * ones, math.inf).item() <= n ** 0.25 + 1e-12
    valid = LinfDistConv2d(2, 1, 3, mean_shift=False, p=4.0, dtype=D).eval()
    with torch.no_grad():
        valid.weight.zero_()
    assert _ratio(valid, ones, 1.1 * ones, math.inf).item() == pytest.approx(n ** 0.25, rel=1e-12)


def test_sortnet_conv_training_masks_are_shared_per_sub_batch_of_images() -> None:
    torch.manual_seed(0)
    img = torch.randn(1, 2, 5, 5, dtype=D).expand(4, 2, 5, 5)
    per_image = SortNeuronConv2d(2, 3, 3, q=0.3, sub_batch=1, mean_shift=False, dtype=D).train()
    with torch.no_grad():
        y = per_image(img)
    assert not torch.equal(y[0], y[1])  # different masks for different images (fails w.p. ~0)
    paired = SortNeuronConv2d(2, 3, 3, q=0.3, sub_batch=2, mean_shift=False, dtype=D).train()
    with torch.no_grad():
        y = paired(img)
    assert torch.equal(y[0], y[1]) and torch.equal(y[2], y[3])
    # one realised mask is still 1-Lipschitz for l_inf
    x, x2 = sample_pairs((2, 5, 5), 100, seed=3, scale=2.0)
    state = torch.get_rng_state()
    big = SortNeuronConv2d(2, 3, 3, q=0.3, sub_batch=10**6, mean_shift=False, dtype=D).train()

    def f(z: torch.Tensor) -> torch.Tensor:
        torch.set_rng_state(state)
        return big(z)

    assert _ratio(f, x, x2, math.inf).max().item() <= 1.0 + 1e-12


def test_conv_bad_inputs_raise_clear_errors() -> None:
    conv = LinfDistConv2d(3, 2, 3)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        conv(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) or \(C, H, W\)"):
        conv(torch.randn(5, 5))
    with pytest.raises(ValueError, match="smaller than the"):
        conv(torch.randn(2, 3, 2, 5))
    with pytest.raises(TypeError, match="dtype"):
        conv(torch.randn(2, 3, 5, 5, dtype=D))
    with pytest.raises(ValueError, match="NaN"):
        conv.eval()(torch.full((1, 3, 5, 5), math.nan))
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        LinfDistConv2d(3, 2, 0)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        LinfDistConv2d(3, 2, 3, padding=-1)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        SortNeuronConv2d(3, 0, 3)
    with pytest.raises(ValueError, match="q must be"):
        SortNeuronConv2d(3, 2, 3, q=0.0)
    with pytest.raises(ValueError, match="p must be"):
        LinfDistConv2d(3, 2, 3, p=0.5)
    with pytest.raises(UnsupportedModuleError, match="eval"):
        lipschitz_bound(LinfDistConv2d(3, 2, 3), "inf")
