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
- ``helper_thread``: frame-sized streaming kernels (the YUV -> RGB conversions) share their
  rows with one helper thread that takes chunks when it gets a core, and is never waited for
  when it does not (edge_sdk/kernels/_share.py says why this beats ``prange`` on a loaded
  board). On by default; off keeps every kernel on the calling thread.
- ``fastmath`` stays off by default: it lets LLVM assume no NaN or Inf, and the postprocessing
  kernels must detect exactly those.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

__all__ = [
    "IrKit",
    "JitSettings",
    "Kernel",
    "Simd",
    "adopt_profile_settings",
    "configure",
    "jit_available",
    "kernel",
    "registered_kernels",
    "settings",
    "simd",
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
    helper_thread: bool = True
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
        self.configured = False  # configure() was called: a device profile must not override


_state = _State()
_lock = threading.RLock()
_registry: list[Kernel] = []


def settings() -> JitSettings:
    return _state.settings


def configure(new: JitSettings | None = None, **changes: Any) -> JitSettings:
    """Replace the JIT settings (or change some fields). Kernels already compiled keep the
    options they were compiled with; threading options apply only before numba first loads."""
    with _lock:
        _state.configured = True
        return _set(new, changes)


def _set(new: JitSettings | None, changes: dict[str, Any]) -> JitSettings:
    base = new if new is not None else _state.settings
    _state.settings = replace(base, **changes) if changes else base
    _state.cache_usable = None
    for compiled in _registry:
        compiled._compiled = None
    return _state.settings


def adopt_profile_settings(**changes: Any) -> bool:
    """Take a device profile's kernel settings (cache_dir, threads, helper_thread) unless the
    application called configure() or a kernel has already run; True if they were taken."""
    with _lock:
        if _state.configured or any(k._compiled is not None for k in _registry):
            return False
        _set(None, {k: v for k, v in changes.items() if v is not None})
        return True


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
        layer = settings.threading_layer
        if layer == "omp" and not _openmp_loads():
            # A minimal Debian has no libgomp1 (numba's OpenMP pool links it): asking for "omp"
            # would fail the first prange kernel with "No threading layer could be loaded".
            log.info("OpenMP runtime (libgomp) not found: prange kernels use numba's workqueue")
            layer = "workqueue"
        if layer != "default":
            numba.config.THREADING_LAYER = layer  # type: ignore[attr-defined]
        _state.numba = numba
        return numba


def _openmp_loads() -> bool:
    try:
        import numba.np.ufunc.omppool  # noqa: F401  (loads libgomp, or fails without it)
    except (ImportError, OSError):
        return False
    return True


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
                elif isinstance(callee, Simd):
                    namespace[name] = callee._intrinsic()
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


class IrKit:
    """What a Simd operation's IR body works with: the llvmlite builder, the numba types of
    the arguments, and a few helpers. Only _jit.py imports numba and llvmlite; IR bodies reach
    them through this."""

    def __init__(self, context: Any, builder: Any, argtypes: tuple[Any, ...]) -> None:
        from llvmlite import ir

        self.ir = ir
        self.context = context
        self.builder = builder
        self.argtypes = argtypes
        self.f32 = ir.FloatType()

    def data(self, array: Any, index: int) -> Any:
        """The data pointer of the array passed as argument ``index``."""
        return self.context.make_array(self.argtypes[index])(self.context, self.builder, array).data

    def element(self, array: Any, index: int, offset: Any) -> Any:
        """Pointer to element ``offset`` (no bounds check: the kernel guarantees it)."""
        return self.builder.gep(self.data(array, index), [offset])

    def load_vector(self, pointer: Any, lanes: int, element: Any) -> Any:
        """``lanes`` consecutive elements from ``pointer``, at any alignment."""
        kind = self.ir.VectorType(element, lanes)
        return self.builder.load(self.builder.bitcast(pointer, kind.as_pointer()), align=1)

    def to_float32(self, value: Any, numba_type: Any) -> Any:
        """A scalar or vector of ``numba_type`` elements as float32 (exact for 8/16-bit ints)."""
        from numba.core import types

        lanes = getattr(value.type, "count", None)
        target = self.f32 if lanes is None else self.ir.VectorType(self.f32, lanes)
        if isinstance(numba_type, types.Float):
            if numba_type.bitwidth == 32:
                return value
            return self.builder.fptrunc(value, target)
        if numba_type.signed:
            return self.builder.sitofp(value, target)
        return self.builder.uitofp(value, target)

    def shuffle(self, vector: Any, lanes: Sequence[int]) -> Any:
        mask = self.ir.Constant(self.ir.VectorType(self.ir.IntType(32), len(lanes)), list(lanes))
        return self.builder.shuffle_vector(vector, vector, mask)

    def splat(self, scalar: Any, lanes: int) -> Any:
        empty = self.ir.Constant(self.ir.VectorType(scalar.type, lanes), self.ir.Undefined)
        one = self.builder.insert_element(empty, scalar, self.ir.Constant(self.ir.IntType(32), 0))
        return self.shuffle(one, [0] * lanes)

    def lane(self, vector: Any, index: int) -> Any:
        return self.builder.extract_element(vector, self.ir.Constant(self.ir.IntType(32), index))

    def atomic_add(self, pointer: Any, value: Any) -> Any:
        """Add ``value`` at ``pointer`` atomically (sequentially consistent); the old value."""
        return self.builder.atomic_rmw("add", pointer, value, "seq_cst")

    def prefetch(self, pointer: Any) -> None:
        """llvm.prefetch for reading into all cache levels; a no-op where the CPU has none."""
        ir = self.ir
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        function = self.builder.module.declare_intrinsic("llvm.prefetch", [byte_pointer], fnty=fnty)
        read, locality, data_cache = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
        self.builder.call(
            function, [self.builder.bitcast(pointer, byte_pointer), read, locality, data_cache]
        )


class Simd:
    """A small operation a kernel calls per pixel, written twice: ``py_func`` in plain Python
    (what runs without numba, and the specification) and an IR body that numba inlines into
    the calling kernel. For what numba's code generation cannot be made to emit from Python:
    an unaligned 8-byte vector load, lane shuffles, a prefetch. The IR body must compute what
    ``py_func`` computes, in the same float32 operations in the same order."""

    __slots__ = ("__name__", "_compiled", "ir_body", "py_func", "returns")

    def __init__(
        self, func: Callable[..., Any], ir_body: Callable[..., Any], returns: str | None
    ) -> None:
        self.py_func = func
        self.ir_body = ir_body
        self.returns = returns  # a numba type name ("int64"), or None for no value
        self._compiled: Any = None
        self.__name__ = func.__name__

    def __call__(self, *args: Any) -> Any:
        return self.py_func(*args)

    def _intrinsic(self) -> Any:
        """The numba intrinsic (built once; called with numba loaded, under _lock)."""
        if self._compiled is None:
            from numba.core import types
            from numba.extending import intrinsic

            ir_body = self.ir_body
            returns = getattr(types, self.returns) if self.returns else None

            def typer(typingctx: Any, *argtypes: Any) -> Any:
                def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                    value = ir_body(IrKit(context, builder, tuple(signature.args)), *args)
                    return value if returns is not None else context.get_dummy_value()

                return (returns or types.void)(*argtypes), codegen

            # numba reads the intrinsic's arity from this signature: a fixed one, not *args.
            params = list(inspect.signature(self.py_func).parameters.values())
            first = inspect.Parameter("typingctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            typer.__signature__ = inspect.Signature([first, *params])  # type: ignore[attr-defined]
            typer.__name__ = self.__name__
            self._compiled = intrinsic(typer)
        return self._compiled


def simd(
    ir_body: Callable[..., Any], returns: str | None = None
) -> Callable[[Callable[..., Any]], Simd]:
    """Pair a plain-Python operation with its IR body (see Simd); ``returns`` names the numba
    type of its result (None: it returns nothing)."""

    def wrap(func: Callable[..., Any]) -> Simd:
        return Simd(func, ir_body, returns)

    return wrap


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
