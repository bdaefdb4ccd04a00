"""Loader of the native (C++) kernels behind :mod:`lipkit.nn.distance.kernels`.

The source ``_native/distance.cpp`` has a plain C interface (no torch headers, no ninja): about 10 s
of compiler time with the system C++ compiler, on first use; the library is cached and loaded with
:mod:`ctypes`.  Nothing here is needed for correctness: when no compiler is found or the build
fails, :func:`load` returns ``None`` with the reason in :func:`unavailable_reason` and the pure
torch kernels run instead.

* Compiler: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on ``PATH``.
* Flags: ``-O3 -march=native -std=c++17 -shared -fPIC -pthread`` (``-march=native`` is dropped if
  the compiler refuses it).  No ``-ffast-math``: the l_inf kernels are exact, and the l_p kernels
  use plain IEEE arithmetic.
* Cache: ``$LIPKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/lipkit`` or ``~/.cache/lipkit``, file
  ``native/distance-<hash>.so``; the hash covers the source, the compiler and its version, the
  flags and the CPU's feature flags, so a cache shared between different machines never loads a
  library built for another CPU.  Builds take a file lock (one process compiles, the others wait
  and load its result) and write under a temporary name that is renamed at the end.  Libraries of
  other (older) sources left in the directory for more than a day are deleted after a build.
* Threads: each call runs on ``torch.get_num_threads()`` threads (``std::thread``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["load", "reload", "unavailable_reason", "library_path", "cache_dir", "set_lp_skip", "lp_skip",
           "lp_skip_enabled"]

SOURCE = Path(__file__).with_name("_native") / "distance.cpp"
ABI_VERSION = 4
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread"]

_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "reason": None, "path": None}


def cache_dir() -> Path:
    """Directory of the compiled library (see the module docstring)."""
    env = os.environ.get("LIPKIT_CACHE_DIR")
    if env:
        return Path(env) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lipkit" / "native"


def _compiler() -> str | None:
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or env
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cxx: str, flags: list[str], target: Path) -> str | None:
    """Compile into ``target`` atomically; return an error message or ``None``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:] or f"{cxx} exited with {proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(keep: Path, max_age_s: float = 86400.0) -> None:
    now = time.time()
    for old in keep.parent.glob("distance-*.so"):
        try:
            if old != keep and now - old.stat().st_mtime > max_age_s:
                old.unlink()
        except OSError:
            pass


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    sigs = {
        "lk_linf_forward": [p, p, i64, i64, i64, p, i64, p, p, i32],
        "lk_scatter_backward": [p, p, p, i64, i64, i64, i64, p, p, i32],
        "lk_topk_forward": [p, p, p, i64, i64, i64, i64, p, p, i32],
        "lk_lp_forward": [p, p, i64, i64, i64, i64, p, i32, i32],
        "lk_lp_backward": [p, p, p, p, i64, i64, i64, i64, p, p, p, i32, i32],
    }
    for name, args in sigs.items():
        for suf in ("f32", "f64"):
            fn = getattr(lib, f"{name}_{suf}")
            fn.argtypes = args
            fn.restype = None
    for suf in ("f32", "f64"):
        fn = getattr(lib, f"lk_all_finite_{suf}")
        fn.argtypes = [p, i64, i32]
        fn.restype = ctypes.c_int
    lib.lk_abi_version.restype = ctypes.c_int
    lib.lk_vector_bytes.restype = ctypes.c_int


def _try_load() -> tuple[ctypes.CDLL | None, str | None, Path | None]:
    if os.environ.get("LIPKIT_NO_NATIVE"):
        return None, "disabled by the environment variable LIPKIT_NO_NATIVE", None
    if not SOURCE.is_file():
        return None, f"kernel source {SOURCE} is missing from the installation", None
    cxx = _compiler()
    if cxx is None:
        return None, ("no C++ compiler found (set $CXX or install one, e.g. `apt install g++`); "
                      "using the pure-torch kernels"), None
    version = _version(cxx)
    errors = []
    for flags in ([*_FLAGS, "-march=native"], list(_FLAGS)):
        key = hashlib.sha256("\0".join(
            [SOURCE.read_text(encoding="utf-8"), cxx, version, " ".join(flags), _cpu_flags(),
             platform.machine(), str(ABI_VERSION)]).encode()).hexdigest()[:16]
        target = cache_dir() / f"distance-{key}.so"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(target.with_suffix(".lock")):
                err = None if target.is_file() else _build(cxx, flags, target)  # built while we waited?
            if err is not None:
                errors.append(f"{' '.join(flags)}: {err}")
                continue
            _remove_stale(target)
        try:
            lib = ctypes.CDLL(str(target))
            if lib.lk_abi_version() != ABI_VERSION:
                errors.append(f"{target}: ABI version mismatch")
                continue
            _declare(lib)
            return lib, None, target
        except (OSError, AttributeError) as exc:
            errors.append(f"loading {target}: {exc}")
    return None, "building the native distance kernels failed:\n" + "\n".join(errors), None


def load() -> ctypes.CDLL | None:
    """The native library (built on first call), or ``None`` if it cannot be built."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    lib, reason, path = _try_load()
                except OSError as exc:  # e.g. unwritable cache directory
                    lib, reason, path = None, f"{type(exc).__name__}: {exc}", None
                _state.update(lib=lib, reason=reason, path=path, tried=True)
                if lib is None and not os.environ.get("LIPKIT_NO_NATIVE"):  # warn unless asked for
                    first_line = (reason or "unknown reason").splitlines()[0]
                    warnings.warn(f"lipkit: native l_inf-distance kernels unavailable ({first_line}); "
                                  "using the pure-torch kernels, about 15x slower. Install a C++ compiler "
                                  "(g++) and call lipkit.nn.distance.native.reload(), or see "
                                  "unavailable_reason().", RuntimeWarning, stacklevel=3)
    return _state["lib"]


def reload() -> ctypes.CDLL | None:
    """Forget the cached outcome and try again (after changing ``$CXX`` or the cache directory)."""
    with _lock:
        _state.update(tried=False, lib=None, reason=None, path=None)
    return load()


def unavailable_reason() -> str | None:
    """Why :func:`load` returned ``None`` (``None`` if the library is loaded)."""
    load()
    return _state["reason"]


#: whether the native l_p kernels skip negligible terms, per context (thread, task); default on
_LP_SKIP: contextvars.ContextVar[bool] = contextvars.ContextVar("lipkit_lp_skip", default=True)


def lp_skip_enabled() -> bool:
    """Whether the native l_p kernels skip negligible terms in this context (see :func:`set_lp_skip`)."""
    return _LP_SKIP.get()


def set_lp_skip(enabled: bool) -> bool:
    """Whether the native l_p kernels skip negligible terms; returns the previous setting.

    With ratios ``r = |x_i - w_i| / max_i |x_i - w_i|``, terms with ``r^p < eps / n^2`` (``eps`` the
    dtype's machine epsilon, ``n`` the input width) cannot change a float of that dtype, so by default
    (for exponents of 24 or more) a vector of them is not raised to the power.  Late in the l_p phase of
    training most terms are of that kind.  Turning it off is for timing the difference side by side;
    the results agree to rounding.  The setting belongs to the current context (a ``contextvars``
    variable, passed to each kernel call): other threads and tasks keep their own.  Use
    :func:`lp_skip` to set it for a block.  Raises ``RuntimeError`` if the native kernels are unavailable.
    """
    if load() is None:
        raise RuntimeError(f"native kernels unavailable: {unavailable_reason()}")
    previous = _LP_SKIP.get()
    _LP_SKIP.set(bool(enabled))
    return previous


@contextlib.contextmanager
def lp_skip(enabled: bool) -> Iterator[None]:
    """Context manager: the native l_p kernels skip negligible terms (or not) inside the block."""
    token = _LP_SKIP.set(bool(enabled))
    try:
        yield
    finally:
        _LP_SKIP.reset(token)


def library_path() -> Path | None:
    """Path of the loaded shared library."""
    load()
    return _state["path"]
