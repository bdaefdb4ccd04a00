"""The registry's facets beyond same-norm Lipschitz bounds, against exact values.

* mixed norms ``lipschitz_bound(m, p, q)``: exact operator norms of dense layers and of the explicit
  matrix of small convolutions (``||T||_{1->inf} = max |T_ij|``, ``||T||_{2->inf}`` = max row l2,
  ``||T||_{1->2}`` = max column l2), brute force over the vertices of the l_inf ball for ``inf -> 2``;
* the per-example gradient sensitivity facet: exact suprema where they are attained, and autograd
  gradients of the worst pairs below the bound.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import lipkit
from lipkit.bounds import UnsupportedModuleError, parameter_sensitivity
from lipkit.bounds.windows import max_window_cover

INF = math.inf


def _exact_entry_norms(t: torch.Tensor) -> dict[tuple[float, float], Fraction]:
    """Exact (rational) operator norms of a float64 matrix for the pairs with closed forms."""
    rows = [[Fraction(v) for v in row] for row in t.tolist()]
    cols = list(zip(*rows, strict=True))
    return {
        (1.0, INF): max(abs(v) for row in rows for v in row),
        (2.0, INF): max(sum(v * v for v in row) for row in rows),  # squared
        (1.0, 2.0): max(sum(v * v for v in col) for col in cols),  # squared
        (INF, INF): max(sum(abs(v) for v in row) for row in rows),
        (1.0, 1.0): max(sum(abs(v) for v in col) for col in cols),
    }


def _check_against_exact(bound: float, exact: Fraction, squared: bool, tight: bool) -> None:
    b = Fraction(bound)
    assert (b * b if squared else b) >= exact, (bound, float(exact))
    if tight:
        ref = math.sqrt(exact) if squared else float(exact)
        assert bound <= ref * (1 + 1e-12) + 1e-300


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_mixed_norm_bounds_equal_the_exact_norms(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(7, 5).double()
    exact = _exact_entry_norms(layer.weight.detach())
    for (p, q), value in exact.items():
        squared = (p, q) in ((2.0, INF), (1.0, 2.0))
        _check_against_exact(lipkit.lipschitz_bound(layer, p, q), value, squared, tight=True)


def test_dense_inf_to_2_bound_dominates_brute_force():
    torch.manual_seed(3)
    w = torch.randn(4, 6, dtype=torch.float64)
    layer = nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(w)
    best = max(torch.linalg.vector_norm(w @ torch.tensor(s, dtype=torch.float64)).item()
               for s in itertools.product((-1.0, 1.0), repeat=6))  # the max sits at a vertex
    bound = lipkit.lipschitz_bound(layer, INF, 2)
    assert bound >= best
    with pytest.raises(UnsupportedModuleError, match="l_inf -> l_2"):
        lipkit.lipschitz_bound(nn.ReLU(), INF, 2)


def _conv_matrix(conv: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        zero = conv(torch.zeros(1, *shape, dtype=torch.float64))
        return (conv(basis) - zero).reshape(n, -1).T


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 1, 1), (1, 0, 2), (1, 2, 2)])
def test_conv_mixed_norm_bounds_against_the_explicit_matrix(stride, padding, groups):
    torch.manual_seed(stride * 10 + padding + groups)
    conv = nn.Conv2d(2, 4, 3, stride=stride, padding=padding, groups=groups).double()
    shape = (2, 7, 7)
    t = _conv_matrix(conv, shape)
    exact = _exact_entry_norms(t)
    for p, q in ((1.0, INF), (2.0, INF), (1.0, 2.0)):
        squared = (p, q) != (1.0, INF)
        # the kernel's bound is attained when some patch lies inside the image (7 x 7 >> 3 x 3)
        _check_against_exact(lipkit.lipschitz_bound(conv, p, q), exact[(p, q)], squared,
                             tight=(p, q) != (1.0, 2.0) or stride == 1)


def test_chain_mixed_norm_bound_dominates_the_product_and_uses_the_best_split():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 3)).double()
    product = net[1].weight.detach() @ net[0].weight.detach()
    exact = _exact_entry_norms(product)[(1.0, INF)]
    bound = lipkit.lipschitz_bound(net, 1, INF)
    assert Fraction(bound) >= exact
    splits = [lipkit.lipschitz_bound(net[0], 1, 1) * lipkit.lipschitz_bound(net[1], 1, INF),
              lipkit.lipschitz_bound(net[0], 1, INF) * lipkit.lipschitz_bound(net[1], INF, INF)]
    assert bound <= min(splits) * (1 + 1e-12)
    # activations pass a mixed norm on: bound with a ReLU in between is the same split
    relu_net = nn.Sequential(net[0], nn.ReLU(), net[1])
    assert lipkit.lipschitz_bound(relu_net, 1, INF) == pytest.approx(bound, rel=1e-12)


def test_same_norm_rules_give_derived_mixed_bounds():
    layer = lipkit.GroupSort(2)
    assert lipkit.lipschitz_bound(layer, 1, INF) == 1.0
    assert lipkit.lipschitz_bound(layer, 2, INF) == 1.0


# --------------------------------------------------------------------------- sensitivity


def _per_example_grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """||d <g, module(x)> / dT||_F for each parameter (one example)."""
    module.zero_grad()
    (module(x[None]) * g[None]).sum().backward()
    return {name: p.grad.norm().item() for name, p in module.named_parameters()}


def test_linear_sensitivity_is_the_exact_supremum():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    r, big_g = 2.5, 0.7
    bounds = parameter_sensitivity(layer, r, big_g)
    x = torch.randn(6, dtype=torch.float64)
    x = x / x.norm() * r
    g = torch.randn(4, dtype=torch.float64)
    g = g / g.norm() * big_g
    grads = _per_example_grads(layer, x, g)  # ||g x^T|| = ||g|| ||x||: every pair attains it
    assert bounds["weight"] >= grads["weight"]
    assert bounds["weight"] == pytest.approx(grads["weight"], rel=1e-12)
    assert bounds["bias"] >= grads["bias"] and bounds["bias"] == pytest.approx(grads["bias"], rel=1e-12)


def _brute_cover(kernel, stride, dilation, padding, size) -> int:
    conv = nn.Conv2d(1, 1, kernel, stride=stride, dilation=dilation, padding=padding, bias=False)
    ones = torch.ones(1, 1, *size)
    cols = nn.functional.unfold(ones, kernel, dilation=dilation, padding=padding, stride=stride)
    counts = nn.functional.fold(cols, (size[0] + 2 * padding, size[1] + 2 * padding), kernel,
                                dilation=dilation, stride=stride)
    inner = counts[..., padding:padding + size[0], padding:padding + size[1]]
    del conv
    return int(inner.max().item())


@pytest.mark.parametrize("kernel,stride,dilation,padding,size", [
    (3, 1, 1, 1, (8, 8)), (3, 2, 1, 1, (9, 9)), (4, 2, 1, 0, (8, 8)), (3, 1, 2, 2, (9, 9)),
    (5, 3, 1, 2, (10, 10)),
    (2, 2, 1, 0, (8, 8)), (3, 1, 1, 0, (3, 3)),
])
def test_max_window_cover_matches_brute_force(kernel, stride, dilation, padding, size):
    conv = nn.Conv2d(1, 1, kernel, stride=stride, dilation=dilation, padding=padding)
    out = conv(torch.zeros(1, 1, *size)).shape[2:]
    exact = _brute_cover(kernel, stride, dilation, padding, size)
    k2, s2, d2, p2 = (kernel,) * 2, (stride,) * 2, (dilation,) * 2, (padding,) * 2
    assert max_window_cover(k2, s2, d2, p2, size, out_size=tuple(out)) == exact
    assert max_window_cover(k2, s2, d2, p2, None) >= exact  # the size-free count dominates


def test_conv_sensitivity_exact_for_non_overlapping_patches():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 2, stride=2).double()
    r, big_g = 1.5, 0.8
    bounds = parameter_sensitivity(conv, r, big_g, input_shape=(2, 6, 6))
    # one output position fed by a patch holding all of x: the supremum r * G is attained
    x = torch.zeros(2, 6, 6, dtype=torch.float64)
    x[:, :2, :2] = torch.randn(2, 2, 2, dtype=torch.float64)
    x = x / x.norm() * r
    g = torch.zeros(3, 3, 3, dtype=torch.float64)
    g[:, 0, 0] = torch.randn(3, dtype=torch.float64)
    g = g / g.norm() * big_g
    grads = _per_example_grads(conv, x, g)
    assert bounds["weight"] >= grads["weight"]
    assert bounds["weight"] == pytest.approx(grads["weight"], rel=1e-12)
    # the bias: a constant g over the 9 positions attains sqrt(9) * G
    g_const = torch.full((3, 3, 3), big_g / math.sqrt(27), dtype=torch.float64)
    grads = _per_example_grads(conv, x, g_const)
    assert bounds["bias"] >= grads["bias"]
    assert bounds["bias"] == pytest.approx(grads["bias"], rel=1e-12)


def test_conv_sensitivity_dominates_optimised_overlapping_pairs():
    torch.manual_seed(2)
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False).double()
    r, big_g = 1.0, 1.0
    bound = parameter_sensitivity(conv, r, big_g, input_shape=(1, 6, 6))["weight"]
    # alternating maximisation of the bilinear map (x, g) -> sum_pos g_pos x_pos^T
    x = torch.ones(1, 6, 6, dtype=torch.float64)
    g = torch.ones(2, 6, 6, dtype=torch.float64)
    best = 0.0
    for _ in range(50):
        x = (x / x.norm()).requires_grad_(True)
        g = g / g.norm()
        grads = _per_example_grads(conv, x.detach(), g)
        best = max(best, grads["weight"])
        # ascent on ||dW||^2 in x, then in g (both unit norm)
        xg = x.detach().requires_grad_(True)
        gw = torch.autograd.grad((conv(xg[None]) * g[None]).sum(), conv.weight, create_graph=True)[0]
        x = torch.autograd.grad(gw.pow(2).sum(), xg)[0].detach()
        gg = g.detach().requires_grad_(True)
        out = conv(x[None] / x.norm()) * gg[None]
        gw = torch.autograd.grad(out.sum(), conv.weight, create_graph=True)[0]
        g = torch.autograd.grad(gw.pow(2).sum(), gg)[0].detach()
    assert best <= bound
    assert best >= 0.5 * bound  # sqrt(cover) = 3 is not far from the attained supremum here


def test_sensitivity_refuses_what_it_cannot_bound():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(UnsupportedModuleError, match="input_shape"):
        parameter_sensitivity(conv, 1.0, 1.0)  # the bias needs the number of positions
    with pytest.raises(UnsupportedModuleError, match="padding_mode"):
        parameter_sensitivity(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), 1.0, 1.0,
                              input_shape=(1, 5, 5))
    with pytest.raises(UnsupportedModuleError, match="no gradient-sensitivity rule"):
        parameter_sensitivity(nn.Tanh(), 1.0, 1.0)

    class Scaled(nn.Linear):
        def forward(self, x):
            return 3 * super().forward(x)

    with pytest.raises(UnsupportedModuleError, match="overrides Linear.forward"):
        parameter_sensitivity(Scaled(2, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="input_norm"):
        parameter_sensitivity(nn.Linear(2, 2), float("nan"), 1.0)


def test_sensitivity_refuses_gradient_hooks():
    layer = nn.Linear(3, 2)
    assert parameter_sensitivity(layer, 1.0, 1.0)["weight"] >= 1.0
    layer.register_full_backward_hook(lambda m, gin, gout: tuple(3 * g for g in gin))
    with pytest.raises(UnsupportedModuleError, match="backward hook"):
        parameter_sensitivity(layer, 1.0, 1.0)
    assert lipkit.lipschitz_bound(layer) > 0  # the forward is unchanged: the Lipschitz facet accepts it
    other = nn.Linear(3, 2)
    other.weight.register_hook(lambda g: 3 * g)
    with pytest.raises(UnsupportedModuleError, match="gradient hook"):
        parameter_sensitivity(other, 1.0, 1.0)


def test_chain_mixed_norm_bound_goes_through_l2_when_that_is_cheaper():
    """An orthogonal net is 1-Lipschitz l_1 -> l_2 -> ... -> l_2 -> l_inf; switching from l_1 to l_inf at one
    layer costs a row l1 norm (about sqrt(width)).  The chain bound takes the path through l_2."""
    torch.manual_seed(7)
    net = nn.Sequential(lipkit.LipLinear(16, 32), lipkit.MaxMin(), lipkit.LipLinear(32, 32),
                        lipkit.MaxMin(), lipkit.LipLinear(32, 4)).double().eval()
    bound = lipkit.lipschitz_bound(net, 1, INF)
    assert bound <= 1.0 + 1e-6
    one_switch = min(
        lipkit.lipschitz_bound(net[0], 1, INF) * math.prod(lipkit.lipschitz_bound(m, INF) for m in net[1:]),
        math.prod(lipkit.lipschitz_bound(m, 1) for m in net[:-1]) * lipkit.lipschitz_bound(net[-1], 1, INF))
    assert one_switch > 1.5  # what a single switch of norm would have given
    # sound: no sampled pair beats it (every partial derivative is at most the bound)
    x = torch.randn(256, 16, dtype=torch.float64)
    d = torch.zeros_like(x)
    d[torch.arange(256), torch.randint(0, 16, (256,))] = 1e-3  # l_1 steps along one coordinate
    with torch.no_grad():
        ratio = ((net(x + d) - net(x)).abs().amax(dim=1) / 1e-3).max().item()
    assert ratio <= bound
    down = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert lipkit.lipschitz_bound(down, 2, 1) > 0  # larger to smaller norm: through the dense Hoelder rule
