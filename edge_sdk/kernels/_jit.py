"""The one place numba is imported: JIT options, the compile cache, the threading layer.

Kernels are plain Python functions decorated with ``@kernel`` (or ``@kernel(parallel=True)``
for ones with ``prange`` loops). Nothing is compiled, and numba is not even imported, until a
kernel is first called: ``import edge_sdk`` and ``edge-sdk --help`` stay fast, and a board
without numba (32-bit Raspberry Pi OS has no llvmlite wheel) runs the same functions as
plain Python. ``NUMBA_DISABLE_JIT=1`` does the same on purpose (coverage, debugging).

Options come from one ``JitSettings`` (``configure()``), never from literals in decorators:

- ``cache``: compiled code is stored in ``cache_dir`` and loaded by the next process. Numba
  keys it to the CPU model and features that built it (Numba docs, "Notes on caching"), so a
  cache built in CI is useless on an ARM board: ``edge-sdk warmup`` builds it on the device. A
  cache directory that cannot be written (a read-only root file system) turns caching off
  instead of failing: numba would raise "no locator available" at the first call.
- ``parallel``/``threads``: kernels with ``prange`` loops run on numba's thread pool. The
  threading layer defaults to OpenMP with ``OMP_WAIT_POLICY=PASSIVE`` set before it loads:
  OpenMP's default spin-wait turned a 0.2 ms kernel into about 7 ms with the second core busy
  (../shared/NOTES.md, Numba), and unlike the workqueue layer OpenMP is safe to call from
  several Python threads at once. ``threads=1`` (the default) keeps every kernel on the
  calling thread, which on a 2-core board already running onnxruntime is usually fastest.
- ``fastmath`` stays off by default: it lets LLVM assume no NaN or Inf, and the postprocessing
  kernels must detect exactly those.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

__all__ = [
    "JitSettings",
    "Kernel",
    "configure",
    "jit_available",
    "kernel",
    "registered_kernels",
    "settings",
]

log = logging.getLogger("edge_sdk.kernels")

ThreadingLayer = Literal["omp", "workqueue", "tbb", "default"]
F = TypeVar("F", bound=Callable[..., Any])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-sdk" / "numba"


@dataclass(frozen=True)
class JitSettings:
    """How kernels are compiled. Set with ``configure()`` before the first kernel call.

    Example: ``configure(JitSettings(cache_dir="/var/cache/edge-sdk/numba", threads=2))``.
    """

    enabled: bool = True
    cache: bool = True
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/edge-sdk/numba
    parallel: bool = True
    threads: int = 1
    threading_layer: ThreadingLayer = "omp"
    fastmath: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {self.threads!r}")
        if self.threading_layer not in ("omp", "workqueue", "tbb", "default"):
            raise ValueError(f"unknown threading_layer {self.threading_layer!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


class _State:
    """Process-wide JIT state, one instance: settings, the numba module once loaded (False when
    unavailable or disabled), whether the cache directory can be written."""

    def __init__(self) -> None:
        self.settings = JitSettings()
        self.numba: Any = None
        self.cache_usable: bool | None = None


_state = _State()
_lock = threading.RLock()
_registry: list[Kernel] = []


def settings() -> JitSettings:
    return _state.settings


def configure(new: JitSettings | None = None, **changes: Any) -> JitSettings:
    """Replace the JIT settings (or change some fields). Kernels already compiled keep the
    options they were compiled with; threading options apply only before numba first loads."""
    with _lock:
        base = new if new is not None else _state.settings
        _state.settings = replace(base, **changes) if changes else base
        _state.cache_usable = None
        for compiled in _registry:
            compiled._compiled = None
        return _state.settings


def _load_numba() -> Any:
    """Import numba once, after setting what must be set before it loads; False if absent."""
    if _state.numba is not None:
        return _state.numba
    with _lock:
        if _state.numba is not None:
            return _state.numba
        settings = _state.settings
        if not settings.enabled or os.environ.get("NUMBA_DISABLE_JIT") == "1":
            _state.numba = False
            return False
        if settings.threading_layer == "omp":
            # Must be in the environment before the OpenMP runtime starts (NOTES.md, Numba).
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import numba
        except ImportError:
            log.info("numba is not installed: kernels run as plain Python")
            _state.numba = False
            return False
        if settings.threading_layer != "default":
            numba.config.THREADING_LAYER = settings.threading_layer  # type: ignore[attr-defined]
        _state.numba = numba
        return numba


def jit_available() -> bool:
    """True when kernels compile with numba (False: plain-Python fallback)."""
    return bool(_load_numba())


def _cache_dir_usable() -> bool:
    if _state.cache_usable is None:
        directory = _state.settings.resolved_cache_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
                pass
            _state.cache_usable = True
        except OSError as exc:
            log.warning(
                "kernel cache %s is not writable (%s): compiling without a cache",
                directory,
                exc.strerror or exc,
            )
            _state.cache_usable = False
    return _state.cache_usable


class Kernel:
    """A kernel compiled on first call with the current settings; ``py_func`` is the Python."""

    __slots__ = (
        "__name__",
        "__qualname__",
        "_compiled",
        "first_call_seconds",
        "parallel",
        "py_func",
    )

    def __init__(self, func: Callable[..., Any], parallel: bool) -> None:
        self.py_func = func
        self.parallel = parallel
        self._compiled: Callable[..., Any] | None = None
        self.first_call_seconds: float | None = None
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__

    def __call__(self, *args: Any) -> Any:
        compiled = self._compiled
        if compiled is None:
            return self._first_call(args)
        return compiled(*args)

    def _first_call(self, args: tuple[Any, ...]) -> Any:
        # Compiling, or loading from the cache, happens in this call: time it for warm-up.
        start = time.perf_counter()
        result = self._compile()(*args)
        self.first_call_seconds = time.perf_counter() - start
        return result

    @property
    def compiled(self) -> bool:
        return self._compiled is not None and self._compiled is not self.py_func

    def _compile(self) -> Callable[..., Any]:
        with _lock:
            if self._compiled is not None:
                return self._compiled
            numba = _load_numba()
            if not numba:
                self._compiled = self.py_func
                return self.py_func
            settings = _state.settings
            parallel = self.parallel and settings.parallel and settings.threads > 1
            # A kernel calling another kernel must see a numba dispatcher, not this wrapper:
            # compile the callees first and point the module's names at their dispatchers.
            namespace = self.py_func.__globals__
            for name in self.py_func.__code__.co_names:
                callee = namespace.get(name)
                if isinstance(callee, Kernel) and callee is not self:
                    namespace[name] = callee._compile()
            if self.parallel:
                # Kernels write `prange`; numba recognises it by identity with numba.prange, so
                # the module's name (plain `range` until numba loads) is pointed at it here.
                self.py_func.__globals__["prange"] = numba.prange
            cache = settings.cache and _cache_dir_usable()
            if cache:
                # Numba's cache index does not record `parallel` or `fastmath`: a serial build
                # would be loaded for a parallel request and the other way round. One directory
                # per variant keeps them apart (the locator reads CACHE_DIR at this moment).
                variant = ("parallel" if parallel else "serial") + (
                    "-fastmath" if settings.fastmath else ""
                )
                numba.config.CACHE_DIR = str(settings.resolved_cache_dir / variant)
            if parallel:
                numba.set_num_threads(min(settings.threads, numba.config.NUMBA_NUM_THREADS))
            self._compiled = numba.njit(
                cache=cache,
                parallel=parallel,
                fastmath=settings.fastmath,
                nogil=True,
                error_model="numpy",
            )(self.py_func)
            return self._compiled


@overload
def kernel(func: F) -> F: ...
@overload
def kernel(*, parallel: bool = False) -> Callable[[F], F]: ...


def kernel(func: Any = None, *, parallel: bool = False) -> Any:
    """Mark a function as a kernel (see the module docstring).

    Kernels take arrays and scalars, write into an ``out`` argument, read no module globals
    other than other kernels and ``prange``, do no I/O and do not log.
    """

    def wrap(f: Callable[..., Any]) -> Kernel:
        compiled = Kernel(f, parallel)
        _registry.append(compiled)
        return compiled

    return wrap(func) if func is not None else wrap


def registered_kernels() -> tuple[Kernel, ...]:
    return tuple(_registry)


# Kernels with prange loops import this name; _compile points it at numba.prange.
prange = range
