import math

import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import operator_norm


def _sampled_ratio(f, dim, p, n=2000, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    y = x + torch.randn(n, dim, generator=g, dtype=torch.float64) * 1e-2
    with torch.no_grad():
        num = torch.linalg.vector_norm(f(x) - f(y), ord=p, dim=1)
    den = torch.linalg.vector_norm(x - y, ord=p, dim=1)
    return (num / den).max().item()


@pytest.mark.parametrize("p", [2, math.inf, 1])
def test_operator_norm_dominates_sampled_ratios(p):
    torch.manual_seed(0)
    w = torch.randn(7, 5, dtype=torch.float64)
    bound = operator_norm(w, p)
    assert _sampled_ratio(lambda v: v @ w.T, 5, p) <= bound
    # attained: the exact value is not loose by more than round-off
    if p == 2:
        assert bound == pytest.approx(torch.linalg.matrix_norm(w, 2).item(), rel=1e-9)
    if p == math.inf:
        assert bound == pytest.approx(w.abs().sum(1).max().item(), rel=1e-12)


def test_sequential_composes_and_bounds_pairs():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    for p in (2, math.inf):
        b = lipkit.lipschitz_bound(net, p)
        expected = operator_norm(net[0].weight, p) * operator_norm(net[2].weight, p)
        assert b >= expected
        assert b == pytest.approx(expected, rel=1e-9)
        assert _sampled_ratio(net, 6, p) <= b


def test_unknown_module_names_its_type():
    class Weird(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(lipkit.UnsupportedModuleError, match="Weird"):
        lipkit.lipschitz_bound(nn.Sequential(nn.Linear(2, 2), Weird()))


def test_bad_p_is_a_clear_error():
    with pytest.raises(ValueError, match="p=3"):
        lipkit.lipschitz_bound(nn.Linear(2, 2), p=3)


def test_batchnorm_train_mode_is_refused_eval_is_bounded():
    bn = nn.BatchNorm1d(4)
    with pytest.raises(lipkit.UnsupportedModuleError, match="eval"):
        lipkit.lipschitz_bound(bn)
    bn.eval()
    bn.running_var.fill_(0.25)
    assert lipkit.lipschitz_bound(bn) == pytest.approx(1 / math.sqrt(0.25 + bn.eps), rel=1e-9)
