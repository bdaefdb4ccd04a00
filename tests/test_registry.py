"""The bound registry refuses, or bounds soundly, every module that tampers with what it computes.

Each entry of the catalogue is a module whose call differs from what its class's registered rule was
written for.  Both ``lipschitz_bound`` and ``certified_radius`` must either raise
``UnsupportedModuleError`` or return a sound answer; soundness is checked against the exact Lipschitz
constant of the (linear) function the module really computes, measured through its own call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

import lipkit
from lipkit.bounds import LIPSCHITZ, UnsupportedModuleError, register_bound

IN, OUT = 4, 3


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT).double()


class ScaledForward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * super().forward(x)


class ScaledCall(nn.Linear):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * super().__call__(x)


class ScaledImpl(nn.Linear):
    def _call_impl(self, *args, **kwargs):
        return 3 * super()._call_impl(*args, **kwargs)


class ScalingMixin:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * super().forward(x)


class MixedIn(ScalingMixin, nn.Linear):
    pass


class ScaledConvForward(nn.Conv1d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(3 * x, weight, bias)


class ResidualSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :OUT] * 0 + 3 * super().forward(x)


class RepeatingSequential(nn.Sequential):
    """Iterates its layers twice: ``Sequential.forward`` (unchanged) then runs them twice."""

    def __iter__(self):
        yield from list(self._modules.values()) * 2


class GetattrScaled(nn.Linear):
    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        return value


class FancyParameter(nn.Parameter):
    pass


def _instance_forward() -> nn.Module:
    m = _linear()
    m.forward = lambda x: 3 * nn.Linear.forward(m, x)
    return m


def _forward_hook() -> nn.Module:
    m = _linear()
    m.register_forward_hook(lambda mod, args, out: 3 * out)
    return m


def _pre_hook() -> nn.Module:
    m = _linear()
    m.register_forward_pre_hook(lambda mod, args: (3 * args[0],))
    return m


def _spectral_norm_hook() -> nn.Module:
    m = nn.utils.spectral_norm(_linear())
    with torch.no_grad():
        m.weight_orig.mul_(5.0)  # the stored `weight` is now stale until the next forward
    return m


def _weight_norm_hook() -> nn.Module:
    m = torch.nn.utils.weight_norm(_linear())
    with torch.no_grad():
        m.weight_g.mul_(4.0)
    return m


def _pruned() -> nn.Module:
    m = _linear()
    prune.l1_unstructured(m, "weight", amount=0.5)
    return m


def _tensor_subclass() -> nn.Module:
    m = _linear()
    m.weight = FancyParameter(m.weight.detach().clone())
    return m


def _parametrized_subclass() -> nn.Module:
    m = ScaledForward(IN, OUT).double()

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    parametrize.register_parametrization(m, "weight", Double())
    return m


def _sequential(cls: type[nn.Sequential]) -> nn.Module:
    torch.manual_seed(0)
    return cls(nn.Linear(IN, IN), nn.Linear(IN, IN)).double()


def _compiled_tampered() -> nn.Module:
    return torch.compile(ScaledForward(IN, OUT).double(), backend="eager")


def _conv_tampered() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ScaledConvForward(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * IN, OUT)).double()


def _batchnorm_training() -> nn.Module:
    return nn.Sequential(nn.Linear(IN, OUT), nn.BatchNorm1d(OUT)).double().train()


def _lazy() -> nn.Module:
    return nn.LazyLinear(OUT).double()


def _mean_shift_training() -> nn.Module:
    return nn.Sequential(lipkit.LinfDistLinear(IN, OUT, mean_shift=True)).double().train()


#: (name, builder, input shape for certificates, whether certificates can run at all)
REFUSED: list[tuple[str, Callable[[], nn.Module]]] = [
    ("overridden forward", lambda: ScaledForward(IN, OUT).double()),
    ("overridden __call__", lambda: ScaledCall(IN, OUT).double()),
    ("overridden _call_impl", lambda: ScaledImpl(IN, OUT).double()),
    ("forward from a mixin", lambda: MixedIn(IN, OUT).double()),
    ("overridden __getattr__", lambda: GetattrScaled(IN, OUT).double()),
    ("forward assigned on the instance", _instance_forward),
    ("forward hook", _forward_hook),
    ("forward pre-hook", _pre_hook),
    ("hook-based spectral_norm", _spectral_norm_hook),
    ("hook-based weight_norm", _weight_norm_hook),
    ("torch.nn.utils.prune", _pruned),
    ("tensor-subclass parameter", _tensor_subclass),
    ("parametrised subclass with its own forward", _parametrized_subclass),
    ("Sequential subclass with its own forward", lambda: _sequential(ResidualSequential)),
    ("Sequential subclass overriding __iter__", lambda: _sequential(RepeatingSequential)),
    ("torch.compile of a tampered module", _compiled_tampered),
    ("overridden Conv._conv_forward", _conv_tampered),
    ("batch norm in training mode", _batchnorm_training),
    ("lazy module", _lazy),
    ("mean shift in training mode", _mean_shift_training),
]


def _probe_input(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv1d)), None)
    return torch.randn(16, 1, IN, dtype=torch.float64) if first is not None else \
        torch.randn(16, IN, dtype=torch.float64)


@pytest.mark.parametrize("name,build", REFUSED, ids=[r[0] for r in REFUSED])
def test_tampered_modules_are_refused_by_bound_and_certificate(name, build):
    model = build()
    with pytest.raises(UnsupportedModuleError) as err:
        lipkit.lipschitz_bound(model, 2)
    culprit = err.value.module
    assert culprit is not None and type(culprit).__qualname__ in str(err.value)
    if culprit is not model:  # named by its position in the model
        assert str(err.value).startswith("model.")
    if name == "lazy module":
        return  # cannot run a forward to certify before initialisation either way
    x = _probe_input(model)
    if name in ("batch norm in training mode", "mean shift in training mode"):
        with pytest.raises(UnsupportedModuleError):
            lipkit.lipschitz_bound(model, math.inf)
        return
    with pytest.raises(UnsupportedModuleError):
        lipkit.certified_radius(model, x, p=2)


def test_refusal_names_the_module_and_the_reason():
    with pytest.raises(UnsupportedModuleError, match=r"ScaledForward.*overrides Linear\.forward"):
        lipkit.lipschitz_bound(ScaledForward(IN, OUT))
    with pytest.raises(UnsupportedModuleError, match=r"instance attribute 'forward'"):
        lipkit.lipschitz_bound(_instance_forward())
    with pytest.raises(UnsupportedModuleError, match=r"parametrizations\.spectral_norm"):
        lipkit.lipschitz_bound(_spectral_norm_hook())
    with pytest.raises(UnsupportedModuleError, match=r"prune\.remove"):
        lipkit.lipschitz_bound(_pruned())
    with pytest.raises(UnsupportedModuleError, match=r"FancyParameter"):
        lipkit.lipschitz_bound(_tensor_subclass())
    with pytest.raises(UnsupportedModuleError, match=r"overrides Sequential\.__iter__"):
        lipkit.lipschitz_bound(_sequential(RepeatingSequential))
    with pytest.raises(UnsupportedModuleError, match=r"eval\(\)"):
        lipkit.lipschitz_bound(_batchnorm_training())


def test_monkeypatched_class_method_is_refused(monkeypatch):
    m = _linear()
    assert lipkit.lipschitz_bound(m) > 0
    original = nn.Linear.forward
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: 3 * original(self, x))
    with pytest.raises(UnsupportedModuleError, match="monkeypatching"):
        lipkit.lipschitz_bound(m)
    monkeypatch.undo()
    assert lipkit.lipschitz_bound(m) > 0


def test_patched_module_call_machinery_is_refused(monkeypatch):
    original = nn.Module._call_impl
    monkeypatch.setattr(nn.Module, "_call_impl", lambda self, *a, **k: original(self, *a, **k))
    with pytest.raises(UnsupportedModuleError, match="Module._call_impl"):
        lipkit.lipschitz_bound(_linear())


def test_global_forward_hooks_are_refused_and_observer_hooks_allowed():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: out * 3)
    try:
        with pytest.raises(UnsupportedModuleError, match="global forward hook"):
            lipkit.lipschitz_bound(_linear())
    finally:
        handle.remove()
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lipkit.observer_hook(lambda m, a, out: seen.append(type(m).__name__)))
    try:
        assert lipkit.lipschitz_bound(_linear()) > 0
    finally:
        handle.remove()


def _exact_linear_radius(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact l2 radius of the prediction of the affine classifier ``x -> W x + b`` at each input."""
    f = x @ w.T + b
    c = f.argmax(dim=1)
    out = []
    for i in range(x.shape[0]):
        gaps = [(f[i, c[i]] - f[i, j]) / (w[c[i]] - w[j]).norm() for j in range(w.shape[0]) if j != c[i]]
        out.append(min(gaps))
    return torch.stack(out)


def _effective_affine(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map a module really computes, read off its own calls (float64)."""
    with torch.no_grad():
        b = model(torch.zeros(1, IN, dtype=torch.float64))[0]
        cols = [model(torch.eye(IN, dtype=torch.float64)[i:i + 1])[0] - b for i in range(IN)]
    return torch.stack(cols, dim=1), b


class Observed(nn.Linear):
    """Overrides nothing but ``__init__`` and ``extra_repr``: the nn.Linear rule applies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def extra_repr(self) -> str:
        return "observed"


def _observer_hooked() -> nn.Module:
    m = _linear()
    m.register_forward_hook(lipkit.observer_hook(lambda mod, args, out: None))
    return m


def _registered_scaled() -> nn.Module:
    return ScaledForward(IN, OUT).double()


ACCEPTED: list[tuple[str, Callable[[], nn.Module]]] = [
    ("plain linear", _linear),
    ("harmless subclass", lambda: Observed(IN, OUT).double()),
    ("observer hook", _observer_hooked),
    ("torch.compile wrapper", lambda: torch.compile(_linear(), backend="eager")),
    ("DataParallel wrapper", lambda: nn.DataParallel(_linear())),
    ("parametrised linear", lambda: torch.nn.utils.parametrizations.orthogonal(_linear())),
]


@pytest.mark.parametrize("name,build", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_modules_get_sound_bounds_and_radii(name, build):
    model = build().eval()
    w, b = _effective_affine(model)
    exact = torch.linalg.matrix_norm(w, ord=2).item()
    bound = lipkit.lipschitz_bound(model, 2)
    assert bound >= exact
    assert bound <= exact * (1 + 1e-9)
    x = torch.randn(32, IN, dtype=torch.float64)
    radius = lipkit.certified_radius(model, x, p=2)
    assert torch.all(radius <= _exact_linear_radius(w, b, x))
    # not vacuous: the radius of the global bound, min_j (f_c - f_j) / (sqrt(2) ||W||), less a round-off
    # allowance of at most 1e-4 of the logit scale
    f = x @ w.T + b
    top2 = f.topk(2, dim=1).values
    slack = 1e-4 * f.abs().max(dim=1).values
    assert torch.all(radius >= (top2[:, 0] - top2[:, 1] - slack) / (math.sqrt(2) * exact))


def test_a_user_rule_for_a_subclass_is_used_and_is_sound():
    @register_bound(ScaledForward)
    def _scaled_rule(module, p, shapes):
        return 3 * lipkit.operator_norm(module.weight, p)

    try:
        model = ScaledForward(IN, OUT).double()
        w, b = _effective_affine(model)
        assert lipkit.lipschitz_bound(model, 2) >= torch.linalg.matrix_norm(w, ord=2).item()
        x = torch.randn(16, IN, dtype=torch.float64)
        assert torch.all(lipkit.certified_radius(model, x, p=2) <= _exact_linear_radius(w, b, x))
    finally:
        LIPSCHITZ.unregister(ScaledForward)


def test_registering_a_second_rule_is_an_error_unless_asked():
    with pytest.raises(ValueError, match="already has a Lipschitz rule"):
        register_bound(nn.Linear)(lambda m, p, s: 1.0)
    rule = LIPSCHITZ._rules[nn.Linear]
    try:
        register_bound(nn.Linear, replace=True, mixed_norms=True)(lambda m, p, s, q=None: 7.0)
        assert lipkit.lipschitz_bound(_linear()) == 7.0
    finally:
        LIPSCHITZ._rules[nn.Linear] = rule
    assert lipkit.lipschitz_bound(_linear()) < 7.0


def test_rules_do_not_extend_to_subclasses_unless_they_opt_in():
    class Tagged(lipkit.GroupSort):  # GroupSort's rule is registered for exact types only
        pass

    with pytest.raises(UnsupportedModuleError, match="does not extend to subclasses"):
        lipkit.lipschitz_bound(Tagged(2))
    assert lipkit.lipschitz_bound(Observed(IN, OUT)) > 0  # nn.Linear's rule opts in


def test_an_input_shape_the_model_rejects_is_named():
    """A wrong ``input_shape`` is a ValueError naming it, not torch's error from inside the forward; a
    certificate on a batch the model rejects says so too."""
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"per-sample shape \(4,\) \(input_shape\)"):
        lipkit.lipschitz_bound(model, 2, input_shape=(4,))
    with pytest.raises(ValueError, match="shape"):
        lipkit.certified_radius(model, torch.randn(5, 4), p=2)
