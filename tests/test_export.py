from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

import lipkit
from lipkit.exporting import ExportError, export


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(lipkit.LipLinear(16, 32), lipkit.MaxMin(), lipkit.LipLinear(32, 32),
                         lipkit.MaxMin(), lipkit.LipLinear(32, 5))


def test_export_plain_modules_same_outputs_and_bound() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 16)
    for _ in range(3):  # move the weights away from their initial values
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    exported = export(model, x, p=2)
    assert exported is not model
    for m in exported.modules():
        assert not parametrize.is_parametrized(m)
        assert type(m).__module__.startswith("torch") or isinstance(m, lipkit.MaxMin)
    assert [type(m) for m in exported][::2] == [nn.Linear, nn.Linear, nn.Linear]
    with torch.no_grad():
        assert (exported(x) - model(x)).abs().max().item() <= 1e-6
    b_orig = lipkit.lipschitz_bound(model, 2)
    b_exp = exported.lipschitz_bounds[2.0]
    assert b_exp == lipkit.lipschitz_bound(exported, 2)
    assert b_exp <= b_orig * (1 + 1e-6)
    assert 0.999 < b_exp < 1.001  # orthogonal layers and MaxMin: 1-Lipschitz
    # the original is untouched (still parametrised)
    assert parametrize.is_parametrized(model[0])
    # the bound is sound for the exported weights on sampled pairs
    x2 = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (exported(x) - exported(x2)).norm(dim=1) / (x - x2).norm(dim=1)
    assert ratio.max().item() <= b_exp


def test_export_torch_parametrisation_and_nested_containers() -> None:
    torch.manual_seed(1)
    inner = nn.Sequential(orthogonal(nn.Linear(8, 8)), nn.ReLU())
    model = nn.Sequential(inner, orthogonal(nn.Linear(8, 3)))
    x = torch.randn(10, 8)
    exported = export(model, x)
    assert type(exported[0][0]) is nn.Linear and type(exported[1]) is nn.Linear
    assert not any(parametrize.is_parametrized(m) for m in exported.modules())
    assert torch.allclose(exported(x), model(x), atol=1e-6, rtol=0)
    assert exported.lipschitz_bounds[2.0] == pytest.approx(1.0, abs=1e-5)


def test_export_detects_output_mismatch() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + (0.0 if self.lin.weight.requires_grad and not hasattr(self, "_copy")
                                  else 1e-3)

        def __deepcopy__(self, memo: dict) -> Noisy:
            new = Noisy()
            new.lin.load_state_dict(self.lin.state_dict())
            new._copy = True
            return new

    with pytest.raises(ExportError, match="differs from the original"):
        export(Noisy(), torch.randn(2, 4), check_bound=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export("not a model")


class _UnitNorm(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w / w.norm()


class _Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T


def test_export_generic_parametrisation_leaves_original_working() -> None:
    torch.manual_seed(0)
    mod = _Projection()
    parametrize.register_parametrization(mod, "w", _UnitNorm())
    x = torch.randn(5, 3)
    before = mod(x).detach().clone()
    exported = export(mod, x, check_bound=False)
    assert not parametrize.is_parametrized(exported)
    assert type(exported) is _Projection
    torch.testing.assert_close(exported(x), before)
    # the original keeps its parametrisation and its outputs (a deep copy shares the injected class)
    assert parametrize.is_parametrized(mod, "w")
    torch.testing.assert_close(mod(x), before)
