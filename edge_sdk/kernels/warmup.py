"""Compile every kernel ahead of use, on the device, into the configured cache.

Numba's cache is keyed to the CPU that built it, so a cache shipped from a build machine is
useless on a board: ``edge-sdk warmup`` (or ``warmup_all()`` in a provisioning script) runs each
kernel family's ``warmup()`` once, so the application's first frame loads compiled code from
the cache instead of compiling for seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import import_module

from edge_sdk.kernels._jit import jit_available, kernel, registered_kernels, settings

__all__ = ["FAMILIES", "KernelTiming", "WarmupReport", "warmup_all"]

FAMILIES = ("image", "color", "quant", "activations", "detect")


@dataclass(frozen=True)
class KernelTiming:
    """The first call of one kernel in this process: compiled, or loaded from the cache."""

    family: str
    name: str
    first_call_ms: float


@dataclass(frozen=True)
class WarmupReport:
    """``numba_import_ms`` and ``numba_start_ms`` are paid once per process (importing numba,
    then its first compiled call, which sets up LLVM and the runtime); each kernel's first
    call comes on top."""

    jit: bool
    cache_dir: str | None
    numba_import_ms: float
    numba_start_ms: float
    families_ms: dict[str, float]
    kernels: tuple[KernelTiming, ...]

    @property
    def total_ms(self) -> float:
        return self.numba_import_ms + self.numba_start_ms + sum(self.families_ms.values())


@kernel
def _first_compiled_call(x: float) -> float:
    return x + 1.0


def warmup_all(families: tuple[str, ...] = FAMILIES) -> WarmupReport:
    """Run every family's ``warmup()``; returns how long each kernel's first call took."""
    start = time.perf_counter()
    jit = jit_available()  # imports numba once, so its start-up is not charged to a kernel
    numba_import_ms = (time.perf_counter() - start) * 1e3
    # The first compiled call of a process initialises LLVM and numba's runtime whatever the
    # kernel; a trivial one takes that cost, so the kernels' own first calls are measured alone.
    start = time.perf_counter()
    _first_compiled_call(1.0)
    numba_start_ms = (time.perf_counter() - start) * 1e3
    families_ms: dict[str, float] = {}
    module_of: dict[str, str] = {}
    for family in families:
        module = import_module(f"edge_sdk.kernels.{family}")
        t0 = time.perf_counter()
        module.warmup()
        families_ms[family] = (time.perf_counter() - t0) * 1e3
        for compiled in registered_kernels():
            if compiled.py_func.__module__ == module.__name__:
                module_of[compiled.__name__] = family
    timings = tuple(
        KernelTiming(module_of[k.__name__], k.__name__, k.first_call_seconds * 1e3)
        for k in registered_kernels()
        if k.first_call_seconds is not None and k.__name__ in module_of
    )
    current = settings()
    cache = str(current.resolved_cache_dir) if jit and current.cache else None
    return WarmupReport(jit, cache, numba_import_ms, numba_start_ms, families_ms, timings)
