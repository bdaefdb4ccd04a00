"""CNNs in the estimators: sound conv norms in the naive bound, lower bounds, Gram iteration vs exact FFT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipkit.bounds import lipschitz_bound
from lipkit.bounds.conv import conv_module_norm, conv_operator_norm
from lipkit.estimation import estimate, jacobian_norm, naive_upper


def _fft_exact(w: torch.Tensor, n: int) -> float:
    """Exact l2 norm of the stride-1 circular convolution on n x n inputs (Sedghi et al., 2019):
    the largest singular value over the DFT grid of the kernel's per-frequency c_out x c_in matrices."""
    K = torch.fft.fft2(w.double(), s=(n, n))  # (c_out, c_in, n, n)
    mats = K.permute(2, 3, 0, 1).reshape(n * n, w.shape[0], w.shape[1])
    return float(torch.linalg.svdvals(mats).max())


@pytest.mark.slow
@pytest.mark.parametrize("c_out,c_in,k,n,seed", [(4, 3, 3, 8, 0), (8, 8, 3, 16, 1), (6, 2, 5, 12, 2),
                                                  (16, 16, 3, 32, 3)])
def test_gram_5_iterations_within_half_percent_of_exact_fft(c_out, c_in, k, n, seed):
    torch.manual_seed(seed)
    w = torch.randn(c_out, c_in, k, k) / k
    exact = _fft_exact(w, n)
    bound = conv_operator_norm(w, (n, n), padding=k // 2, padding_mode="circular", n_iter=5, exact_max_dim=0)
    assert exact <= bound <= 1.005 * exact, (bound / exact)
    # the FFT value really is the operator norm: power iteration on the conv itself approaches it from below
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w.double())
        x = torch.randn(1, c_in, n, n, dtype=torch.float64)
        for _ in range(300):
            y = conv(x)
            (x,) = torch.autograd.functional.vjp(conv, x, y)[1:]
            x = x / x.norm()
        power = float(conv(x).norm())
    assert 0.98 * exact <= power <= exact * (1 + 1e-9)


@pytest.mark.slow
def test_naive_on_a_cnn_uses_the_sound_conv_norm_and_lower_bound_matches_a_linear_conv():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
    x_shape = (2, 8, 8)
    exact = _fft_exact(conv.weight.detach(), 8)
    est = estimate(conv, 2, "naive", input_shape=x_shape,
                   lower_kwargs={"n_starts": 2, "steps": 3, "n_pairs": 0})
    # a linear map: its Jacobian is the operator itself, so the lower bound is its exact norm
    assert est.lower == pytest.approx(exact, rel=1e-6)
    assert exact <= est.upper <= 1.005 * exact
    assert est.upper == conv_module_norm(conv, 2, (8, 8))
    # the reshaped-kernel norm (what torch's spectral_norm normalises) is NOT a bound of the operator
    reshaped = float(torch.linalg.matrix_norm(conv.weight.detach().double().reshape(4, -1), ord=2))
    assert reshaped < exact


def test_cnn_bracket_is_sound_for_p2_and_inf():
    torch.manual_seed(5)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).eval()
    shape = (1, 8, 8)
    for p in (2, math.inf):
        est = estimate(cnn, p, "naive", input_shape=shape, lower_kwargs={"n_starts": 8, "steps": 20})
        assert est.upper == naive_upper(cnn, p, input_shape=shape)
        per_layer = math.prod(lipschitz_bound(m, p, input_shape=s) for m, s in
                              zip(cnn, [shape, (4, 8, 8), (4, 8, 8), (4, 4, 4), (4, 1, 1), (4, 1, 1), (4,)],
                                  strict=True))
        assert est.upper <= per_layer * (1 + 1e-9)
        assert 0 < est.lower <= est.upper
        if est.details["lower_kind"] == "jacobian":
            assert float(jacobian_norm(cnn, est.details["lower_witness"][None], p)[0]) >= est.lower
        # random pairs never exceed the upper bound
        g = torch.Generator().manual_seed(0)
        a = torch.randn(2000, *shape, generator=g, dtype=torch.float64)
        b = a + 0.1 * torch.randn(2000, *shape, generator=g, dtype=torch.float64)
        c64 = cnn.double()
        with torch.no_grad():
            r = (torch.linalg.vector_norm((c64(a) - c64(b)), ord=p, dim=1)
                 / torch.linalg.vector_norm((a - b).flatten(1), ord=p, dim=1))
        cnn.float()
        assert float(r.max()) <= est.upper


def test_conv_lowered_to_its_exact_matrix():
    from lipkit.estimation._mlp import conv_as_linear

    torch.manual_seed(6)
    for conv, shape in ((nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1), (3, 7, 6)),
                        (nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), (4, 5, 5)),
                        (nn.Conv1d(2, 3, 4, stride=3), (2, 11))):
        lin, out_shape = conv_as_linear(conv, shape)
        x = torch.randn(5, *shape, dtype=torch.float64)
        with torch.no_grad():
            ref = conv.double()(x)
            assert ref.shape[1:] == out_shape
            assert torch.allclose(lin(x.flatten(1)), ref.flatten(1), atol=1e-12)
    with pytest.raises(TypeError, match="padding_mode"):
        conv_as_linear(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), (1, 4, 4))
