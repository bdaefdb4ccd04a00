"""Native (C++) vs pure-torch distance kernels vs naive references: values, gradients, ties, backends."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch

from lipkit.nn.distance import native as distance_native
from lipkit.nn.distance.kernels import (
    NATIVE_MAX_K,
    get_backend,
    grouped_masked_linf_dist,
    linf_dist,
    linf_dist_reference,
    lp_dist,
    lp_dist_reference,
    masked_linf_dist,
    native_available,
    set_backend,
    sort_dist,
    sort_dist_reference,
    sortnet_coefficients,
    use_backend,
)

D = torch.float64
HAVE_NATIVE = native_available()
native_only = pytest.mark.skipif(not HAVE_NATIVE, reason=f"native kernels unavailable: "
                                 f"{distance_native.unavailable_reason()}")
BACKENDS = ["torch", pytest.param("native", marks=native_only)]

# (batch, out, in): tails of every tile / vector size, and both layouts (lanes over x or over w)
SHAPES = [(1, 1, 1), (2, 3, 5), (9, 7, 11), (17, 33, 40), (40, 5, 67), (3, 70, 33), (66, 20, 130)]


def _data(b: int, m: int, n: int, seed: int, ties: bool, dtype=D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many exactly tied distances, some rows with x == w
        x = torch.randint(-2, 3, (b, n), generator=g).to(dtype)
        w = torch.randint(-2, 3, (m, n), generator=g).to(dtype)
        w[: min(m, b) // 2] = x[: min(m, b) // 2]
    else:
        x = torch.randn(b, n, generator=g, dtype=dtype)
        w = torch.randn(m, n, generator=g, dtype=dtype)
    return x.requires_grad_(), w.requires_grad_()


def _value_and_grads(fn, x, w, seed: int = 7):
    y = fn(x, w)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    gx, gw = torch.autograd.grad(y, (x, w), g)
    return y.detach(), gx, gw


def _assert_same(fused, ref, x, w, exact_values: bool) -> None:
    y1, gx1, gw1 = _value_and_grads(fused, x, w)
    y2, gx2, gw2 = _value_and_grads(ref, x, w)
    if exact_values:
        assert torch.equal(y1, y2)
    else:
        torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw1, gw2, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the no-grad path gives the same values
        torch.testing.assert_close(fused(x, w), y1, rtol=0, atol=0)


# --------------------------------------------------------------------------- l_inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_linf_equals_first_index_reference(backend: str, shape, ties: bool) -> None:
    x, w = _data(*shape, seed=sum(shape), ties=ties)
    _assert_same(lambda a, b: linf_dist(a, b, backend=backend, budget_bytes=256),
                 lambda a, b: linf_dist_reference(a, b, ties="first"), x, w, exact_values=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_tie_rule_first_index_across_chunks(backend: str) -> None:
    # one neuron, the maximum 5 attained at several coordinates in different vectors / chunks
    n = 200
    for spots in ([37, 150], [150, 37, 199], [0, 1], [64, 65, 190], [199], [31, 32], [15, 16, 17]):
        x = torch.zeros(1, n, dtype=D)
        w = torch.zeros(1, n, dtype=D)
        for j, i in enumerate(spots):
            w[0, i] = 5.0 if j % 2 else -5.0  # alternate signs
        x.requires_grad_()
        (gx,) = torch.autograd.grad(linf_dist(x, w, backend=backend).sum(), x)
        first = min(spots)
        expect = torch.zeros(1, n, dtype=D)
        expect[0, first] = -torch.sign(w[0, first])
        assert torch.equal(gx, expect), (spots, gx.nonzero())


@pytest.mark.parametrize("backend", BACKENDS)
def test_linf_float32_values_bitwise_equal_naive(backend: str) -> None:
    x, w = _data(37, 29, 90, seed=3, ties=False, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(linf_dist(x, w, backend=backend), linf_dist_reference(x, w))


@native_only
def test_native_and_torch_agree_and_threads_do_not_matter() -> None:
    x, w = _data(45, 38, 77, seed=11, ties=True)
    c = sortnet_coefficients(0.4, 77, 6)
    runs = {}
    threads = torch.get_num_threads()
    try:
        for backend, nt in (("torch", 1), ("native", 1), ("native", 2)):
            torch.set_num_threads(nt)
            runs[backend, nt] = (
                _value_and_grads(lambda a, b, be=backend: linf_dist(a, b, backend=be), x, w),
                _value_and_grads(lambda a, b, be=backend: sort_dist(a, b, c, backend=be), x, w),
            )
    finally:
        torch.set_num_threads(threads)
    for kernel in range(2):  # bitwise identical whatever the number of threads
        for a, b in zip(runs["native", 1][kernel], runs["native", 2][kernel], strict=True):
            assert torch.equal(a, b)
    for a, b in zip(runs["native", 1][0], runs["torch", 1][0], strict=True):  # l_inf: same subgradient
        assert torch.equal(a, b)
    for a, b in zip(runs["native", 1][1], runs["torch", 1][1], strict=True):  # top-K: sums in another order
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_equals_reference_on_kept_columns(backend: str) -> None:
    x, w = _data(21, 18, 45, seed=5, ties=True)
    mask = torch.rand(45, generator=torch.Generator().manual_seed(0)) < 0.4
    _assert_same(lambda a, b: masked_linf_dist(a, b, mask, backend=backend),
                 lambda a, b: linf_dist_reference(a[:, mask], b[:, mask], ties="first"), x, w,
                 exact_values=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [1, 4, 7])
def test_grouped_masks_equal_reference_per_group(backend: str, rows: int) -> None:
    x, w = _data(23, 19, 41, seed=rows, ties=True)  # 23 rows: the last group is partial
    groups = -(-23 // rows)
    masks = torch.rand(groups, 41, generator=torch.Generator().manual_seed(rows)) < 0.3
    masks[:, 5] = True  # no empty mask

    def ref(a, b):
        return torch.cat([linf_dist_reference(a[g * rows:(g + 1) * rows][:, masks[g]], b[:, masks[g]],
                                              ties="first") for g in range(groups)])

    _assert_same(lambda a, b: grouped_masked_linf_dist(a, b, masks, rows, backend=backend), ref, x, w,
                 exact_values=True)


def test_grouped_masks_bad_input() -> None:
    x, w = torch.randn(10, 6), torch.randn(3, 6)
    with pytest.raises(ValueError, match=r"shape \(3, 6\) \(one mask per 4 rows\)"):
        grouped_masked_linf_dist(x, w, torch.ones(2, 6, dtype=torch.bool), 4)
    masks = torch.ones(3, 6, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(ValueError, match="keeps no input coordinate"):
        grouped_masked_linf_dist(x, w, masks, 4)
    with pytest.raises(ValueError, match="rows_per_mask must be a positive int"):
        grouped_masked_linf_dist(x, w, masks, 0)


# --------------------------------------------------------------------------- SortNet top-K


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_equals_stable_sort_reference(backend: str, shape, ties: bool) -> None:
    x, w = _data(*shape, seed=2 * sum(shape), ties=ties)
    n = shape[2]
    for k in sorted({2, 5, min(n, NATIVE_MAX_K)}):
        c = sortnet_coefficients(0.3, n, k)
        _assert_same(lambda a, b, c=c: sort_dist(a, b, c, backend=backend, budget_bytes=256),
                     lambda a, b, c=c: sort_dist_reference(a, b, c), x, w, exact_values=False)


# --------------------------------------------------------------------------- l_p relaxation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 8.0, 13.0, 64.0])
@pytest.mark.parametrize("shape", [(9, 7, 11), (17, 33, 40), (3, 5, 70)])
def test_lp_equals_reference(backend: str, p: float, shape) -> None:
    x, w = _data(*shape, seed=int(p) + sum(shape), ties=False)
    y1, gx1, gw1 = _value_and_grads(lambda a, b: lp_dist(a, b, p, backend=backend, budget_bytes=256), x, w)
    y2, gx2, gw2 = _value_and_grads(lambda a, b: lp_dist_reference(a, b, p), x, w)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gw1, gw2, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [32.0, 200.0, 1000.0])
def test_lp_large_p_matches_float64_reference(backend: str, dtype: torch.dtype, p: float) -> None:
    """Large p, as late in the l_p phase of training: most terms (d / max)^p are negligible, and the
    native kernel does not power them.  Values and gradients must still match a float64 reference
    to the rounding of the dtype.  Inputs spread like trained layers: a few coordinates near the
    maximum, most far below (uniform on [0, 1] plus a few entries near 3)."""
    g = torch.Generator().manual_seed(int(p))
    b, m, n = 37, 29, 300
    x = torch.rand(b, n, generator=g, dtype=torch.float64)
    w = torch.rand(m, n, generator=g, dtype=torch.float64)
    hot = torch.randint(0, n, (b, 3), generator=g)
    x.scatter_(1, hot, 3.0 + 0.01 * torch.rand(b, 3, generator=g, dtype=torch.float64))
    upstream = torch.randn(b, m, generator=g, dtype=torch.float64)

    def value_and_grads(fn, dt):
        a, c = x.to(dt).requires_grad_(), w.to(dt).requires_grad_()
        y = fn(a, c)
        return (y.detach().double(), *(t.double() for t in torch.autograd.grad(y, (a, c), upstream.to(dt))))

    y1, gx1, gw1 = value_and_grads(lambda a, c: lp_dist(a, c, p, backend=backend), dtype)
    def scaled_reference(a, c):  # ||d||_p = m ||d / m||_p for any constant m > 0 (no overflow at p = 1000)
        d = (a.unsqueeze(1) - c.unsqueeze(0)).abs()
        m = d.amax(dim=2, keepdim=True).detach()
        return m.squeeze(2) * torch.linalg.vector_norm(d / m, ord=p, dim=2)

    y2, gx2, gw2 = value_and_grads(scaled_reference, torch.float64)
    # float32: the gradient (d / y)^(p - 1) amplifies the rounding of d / y by p - 1
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    tol = dict(rtol=4 * p * u, atol=4 * p * u)
    torch.testing.assert_close(y1, y2, **tol)
    for got, want in ((gx1, gx2), (gw1, gw2)):  # relative to the largest entry
        scale = want.abs().max().item()
        torch.testing.assert_close(got / scale, want / scale, **tol)


@native_only
def test_lp_skipping_negligible_terms_changes_nothing_but_rounding() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 500, generator=g)
    w = torch.rand(48, 500, generator=g)
    upstream = torch.randn(64, 48, generator=g)
    results = {}
    previous = distance_native.set_lp_skip(True)
    try:
        for skip in (False, True):
            assert distance_native.set_lp_skip(skip) is (not skip)
            a, c = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = lp_dist(a, c, 700.0, backend="native")
            results[skip] = (y.detach(), *torch.autograd.grad(y, (a, c), upstream))
    finally:
        distance_native.set_lp_skip(previous)
    for off, on in zip(results[False], results[True], strict=True):
        scale = off.abs().max().item()
        torch.testing.assert_close(on / scale, off / scale, rtol=1e-6, atol=1e-6)


def test_lp_large_p_no_overflow_and_zero_distance_gradient() -> None:
    x = torch.tensor([[1e30, 0.0, 3.0], [1.0, 2.0, 3.0]], dtype=D, requires_grad=True)
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=D)
    y = lp_dist(x, w, 512.0)
    assert torch.isfinite(y).all() and y[0, 0].item() == pytest.approx(1e30, rel=1e-12)
    assert y[1, 1].item() == 0.0
    (gx,) = torch.autograd.grad(y[1, 1], x)  # x == w: zero subgradient, no NaN
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend: str) -> None:
    x, w = _data(4, 5, 9, seed=1, ties=False)
    c = sortnet_coefficients(0.5, 9, 3)
    mask = torch.tensor([True, False, True, True, False, True, False, True, True])
    for fn in (lambda a, b: linf_dist(a, b, backend=backend),
               lambda a, b: masked_linf_dist(a, b, mask, backend=backend),
               lambda a, b: sort_dist(a, b, c, backend=backend),
               lambda a, b: lp_dist(a, b, 4.0, backend=backend),
               lambda a, b: lp_dist(a, b, 1.0, backend=backend)):
        assert torch.autograd.gradcheck(fn, (x, w))


# --------------------------------------------------------------------------- backend selection


def test_native_kernels_build_where_a_compiler_exists() -> None:
    # guards against a silent fallback: with a C++ compiler on PATH the library must build and load
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on PATH")
    assert HAVE_NATIVE, distance_native.unavailable_reason()
    assert distance_native.library_path() is not None and distance_native.library_path().is_file()


def test_backend_selection_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(3, 4), torch.randn(2, 4)
    assert get_backend() == "auto"
    with use_backend("torch"):
        assert get_backend() == "torch"
        torch.testing.assert_close(linf_dist(x, w), linf_dist_reference(x, w), rtol=0, atol=0)
    assert get_backend() == "auto"
    set_backend("TORCH")
    try:
        assert get_backend() == "torch"
    finally:
        set_backend(None)
    with pytest.raises(ValueError, match="unknown distance-kernel backend 'cuda'"):
        linf_dist(x, w, backend="cuda")
    with pytest.raises(ValueError, match="unknown distance-kernel backend"):
        set_backend("fast")
    monkeypatch.setenv("LIPKIT_DISTANCE_BACKEND", "bogus")
    with pytest.raises(ValueError, match="LIPKIT_DISTANCE_BACKEND"):
        linf_dist(x, w)
    monkeypatch.setenv("LIPKIT_DISTANCE_BACKEND", "torch")
    assert get_backend() == "torch"
    # half precision: auto falls back to torch, native refuses clearly
    xh, wh = x.to(torch.bfloat16), w.to(torch.bfloat16)
    torch.testing.assert_close(linf_dist(xh, wh, backend="auto"), linf_dist_reference(xh, wh), rtol=0, atol=0)
    with pytest.raises(ValueError, match="native backend supports float32/float64"):
        linf_dist(xh, wh, backend="native")


@native_only
def test_native_limits_raise_and_auto_falls_back() -> None:
    x, w = torch.randn(3, 70, dtype=D), torch.randn(2, 70, dtype=D)
    with pytest.raises(ValueError, match="integer p"):
        lp_dist(x, w, 2.5, backend="native")
    torch.testing.assert_close(lp_dist(x, w, 2.5), lp_dist_reference(x, w, 2.5))
    c = sortnet_coefficients(0.1, 70, NATIVE_MAX_K + 1)
    with pytest.raises(ValueError, match="NATIVE_MAX_K"):
        sort_dist(x, w, c, backend="native")
    torch.testing.assert_close(sort_dist(x, w, c), sort_dist_reference(x, w, c))


def test_loader_falls_back_without_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    x, w = torch.randn(5, 9), torch.randn(4, 9)
    try:
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("LIPKIT_CACHE_DIR", str(tmp_path / "cache"))
        with pytest.warns(RuntimeWarning, match="native l_inf-distance kernels unavailable"):
            assert distance_native.reload() is None
        assert "building the native distance kernels failed" in distance_native.unavailable_reason()
        assert not native_available()
        torch.testing.assert_close(linf_dist(x, w), linf_dist_reference(x, w), rtol=0, atol=0)  # auto
        with pytest.raises(RuntimeError, match="native backend requested but unavailable"):
            linf_dist(x, w, backend="native")
        with pytest.raises(RuntimeError, match="native kernels unavailable"):
            distance_native.set_lp_skip(True)
        monkeypatch.delenv("CXX")
        monkeypatch.setenv("LIPKIT_NO_NATIVE", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # switched off on purpose: no warning
            assert distance_native.reload() is None
        assert "LIPKIT_NO_NATIVE" in distance_native.unavailable_reason()
    finally:
        monkeypatch.undo()
        distance_native.reload()
    assert native_available() == HAVE_NATIVE


_NARROWER = {"sse2": [], "avx2": ["-mavx2", "-mfma"]}  # the vector widths -march=native may not give here


@pytest.mark.slow
@native_only
@pytest.mark.parametrize("isa", list(_NARROWER))
def test_narrower_vector_builds_equal_the_references(isa: str, tmp_path) -> None:
    """The kernels have 16-, 32- and 64-byte vector code paths (tile shapes differ with them), and
    -march=native builds only one: build the others and check l_inf, top-K and l_p, ties included."""
    import ctypes

    if isa == "avx2" and "avx2" not in distance_native._cpu_flags().split():
        pytest.skip("this CPU has no AVX2")
    cxx = distance_native._compiler()
    target = tmp_path / f"distance-{isa}.so"
    err = distance_native._build(cxx, [*distance_native._FLAGS, *_NARROWER[isa]], target)
    assert err is None, err
    lib = ctypes.CDLL(str(target))
    distance_native._declare(lib)
    assert lib.lk_vector_bytes() == (16 if isa == "sse2" else 32)
    saved = dict(distance_native._state)
    distance_native._state.update(lib=lib, path=target)
    try:
        for shape in [(9, 7, 11), (17, 33, 40), (66, 20, 130)]:
            for ties in (False, True):
                x, w = _data(*shape, seed=sum(shape), ties=ties)
                _assert_same(lambda a, b: linf_dist(a, b, backend="native", budget_bytes=256),
                             lambda a, b: linf_dist_reference(a, b, ties="first"), x, w, exact_values=True)
                c = sortnet_coefficients(0.3, shape[2], 5)
                _assert_same(lambda a, b, c=c: sort_dist(a, b, c, backend="native", budget_bytes=256),
                             lambda a, b, c=c: sort_dist_reference(a, b, c), x, w, exact_values=False)
            x, w = _data(*shape, seed=5, ties=False)
            for pw in (3.0, 64.0):
                _assert_same(lambda a, b, pw=pw: lp_dist(a, b, pw, backend="native"),
                             lambda a, b, pw=pw: lp_dist_reference(a, b, pw), x, w, exact_values=False)
        for pw in (200.0, 1000.0):  # skipped and queued terms
            test_lp_large_p_matches_float64_reference("native", torch.float32, pw)
            test_lp_large_p_matches_float64_reference("native", torch.float64, pw)
    finally:
        distance_native._state.update(saved)


@native_only
def test_native_rejects_nan_like_torch() -> None:
    x, w = torch.randn(4, 20), torch.randn(3, 20)
    x[2, 17] = math.inf
    with pytest.raises(ValueError, match="input contains NaN or infinite"):
        linf_dist(x, w, backend="native")
    w[1, 3] = math.nan
    with pytest.raises(ValueError, match="weight contains NaN or infinite"):
        sort_dist(torch.randn(4, 20), w, sortnet_coefficients(0.5, 20, 3), backend="native")


@native_only
def test_bench_linf_writes_its_keys_and_keeps_others(tmp_path) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "linf.py"
    spec = importlib.util.spec_from_file_location("bench_linf", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "linf.json"
    out.write_text(json.dumps({"fmnist": {"certified": 0.5}, "peak_memory_bytes": 1}))
    mod.main(["--batch", "24", "--in-features", "20", "--out-features", "16", "--naive-batch", "8",
              "--rounds", "2", "--torch-rounds", "1", "--no-memory", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["fmnist"] == {"certified": 0.5}  # other benchmarks' keys survive
    assert "peak_memory_bytes" not in got  # stale keys of the old format are dropped
    assert got["speed"]["vs_naive"] > 0 and got["speed"]["vs_linear"] > 0
    assert len(got["speed"]["seconds_all"]["native"]) == 2 and len(got["speed"]["seconds_all"]["torch"]) == 1
    for key in ("command", "date", "machine", "seconds"):
        assert key in got
    assert "load_avg" in got["machine"]


def test_top_level_exports() -> None:
    import lipkit
    from lipkit.nn import distance

    for name in ("LinfDistLinear", "SortNeuronLinear", "LinfDistConv2d", "SortNeuronConv2d"):
        assert getattr(lipkit, name) is getattr(distance, name)
    assert lipkit.get_distance_backend is get_backend
    with lipkit.use_distance_backend("torch"):
        assert get_backend() == "torch"
    assert get_backend() == "auto"


def test_backend_and_lp_skip_settings_belong_to_their_thread() -> None:
    """No process-wide switch: a setting made in one thread (a rank, a served model) leaves others alone."""
    import threading

    seen: dict[str, object] = {}

    def worker() -> None:
        set_backend("torch")
        seen["worker_backend"] = get_backend()
        if native_available():
            distance_native.set_lp_skip(False)
            seen["worker_skip"] = distance_native.lp_skip_enabled()

    with use_backend("auto"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert get_backend() == "auto"
    assert seen["worker_backend"] == "torch"
    if native_available():
        assert seen["worker_skip"] is False
        assert distance_native.lp_skip_enabled() is True
        with distance_native.lp_skip(False):
            assert distance_native.lp_skip_enabled() is False
        assert distance_native.lp_skip_enabled() is True
