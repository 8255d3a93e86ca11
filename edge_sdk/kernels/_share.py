"""Frame-sized kernels shared with one helper thread that never makes the caller wait for it.

A kernel written for sharing splits its work into chunks and claims them one at a time from
an atomic counter (``claim_chunk``), marking each one finished (``chunk_done``).
``run_shared`` wakes the helper thread, which runs the same kernel on the same counter, and
runs it on the calling thread too; both take chunks until none is left. On an idle board
the work splits over two cores. On a loaded one the helper may not get a core for
milliseconds; the caller then takes every chunk itself and returns as soon as it is done,
waiting only for a chunk the helper has already started (a fraction of the call).

Why not numba's ``prange``: its OpenMP (or workqueue) loop divides the rows between the
threads up front and joins them at the end, so the call lasts until the worker has had its
time slice. With the second core busy that turned a 1.3 ms NV12 conversion into 4-5 ms at
the 90th percentile on the 2-core test host (bench/kernel_cases/color.py), and even idle,
waking a vCPU that has slept a few milliseconds cost up to 150 us, all of it waited for.

The helper thread holds the GIL only to start the compiled kernel, which releases it
(``nogil``). Without numba (or with ``NUMBA_DISABLE_JIT=1``) kernels are Python holding the
GIL, so the caller does all the chunks alone. Settings: ``JitSettings.helper_thread``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from edge_sdk.kernels._jit import IrKit, jit_available, kernel, settings, simd

__all__ = ["chunk_done", "claim_chunk", "run_shared", "warmup"]

log = logging.getLogger("edge_sdk.kernels")


def _claim_ir(kit: IrKit, counter: object) -> object:
    return kit.atomic_add(kit.data(counter, 0), kit.ir.Constant(kit.ir.IntType(64), 1))


@simd(_claim_ir, returns="int64")
def claim_chunk(counter: np.ndarray) -> int:
    """The next unclaimed chunk number (counter[0], atomically incremented); a number >=
    the chunk count means none is left."""
    chunk = int(counter[0])
    counter[0] = chunk + 1
    return chunk


def _done_ir(kit: IrKit, counter: object) -> None:
    one = kit.ir.Constant(kit.ir.IntType(64), 1)
    kit.atomic_add(kit.builder.gep(kit.data(counter, 0), [one]), one)


@simd(_done_ir)
def chunk_done(counter: np.ndarray) -> None:
    """Count one chunk finished (counter[1], atomically, after the chunk's writes)."""
    counter[1] += 1


def _finished_ir(kit: IrKit, counter: object) -> object:
    ir = kit.ir
    zero = ir.Constant(ir.IntType(64), 0)
    return kit.atomic_add(
        kit.builder.gep(kit.data(counter, 0), [ir.Constant(ir.IntType(64), 1)]), zero
    )


@simd(_finished_ir, returns="int64")
def _finished_count(counter: np.ndarray) -> int:
    return int(counter[1])


@kernel
def _chunks_finished(counter: np.ndarray) -> int:
    """counter[1], read atomically: the helper's writes before it are visible after it."""
    return int(_finished_count(counter))


def warmup() -> None:
    """Compile the wait for shared chunks and start the helper thread, as the first shared
    frame would (a warm-up on small frames never shares)."""
    _chunks_finished(np.zeros(2, np.int64))
    if settings().helper_thread and jit_available():
        _get_helper()


class _Helper:
    """One daemon thread running the latest job offered to it."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._job: tuple[Any, tuple[Any, ...]] | None = None
        self.pid = os.getpid()
        thread = threading.Thread(target=self._run, name="edge-sdk-kernel-helper", daemon=True)
        thread.start()

    def offer(self, function: Any, args: tuple[Any, ...]) -> None:
        # A job not yet started is replaced: its caller takes all of its chunks anyway.
        with self._wake:
            self._job = (function, args)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._job is None:
                    self._wake.wait()
                function, args = self._job
                self._job = None
            try:
                function(*args)
            except Exception:  # the caller runs the same kernel and reports the error itself
                log.exception(
                    "kernel helper thread: %s failed", getattr(function, "__name__", function)
                )
            del function, args  # do not keep the last frame's arrays alive


_helper: list[_Helper] = []  # at most one; a list so that no global statement is needed
_helper_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A fork while another thread held the lock would leave it held forever in the child; the
    # child has no helper thread either (the pid check below would also notice that).
    global _helper_lock  # noqa: PLW0603 (replacing the lock object is the point)
    _helper_lock = threading.Lock()
    _helper.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _get_helper() -> _Helper:
    with _helper_lock:
        # A forked child has the object but not the thread.
        if not _helper or _helper[0].pid != os.getpid():
            _helper[:] = [_Helper()]
        return _helper[0]


def run_shared(function: Any, n_chunks: int, *args: Any) -> None:
    """Run ``function(counter, n_chunks, *args)``, a kernel that claims chunks with
    ``claim_chunk(counter)`` until it gets one >= ``n_chunks``, on this thread and, when
    enabled and compiled, on the helper thread; returns when every chunk is finished."""
    counter = np.zeros(2, np.int64)
    shared = n_chunks > 1 and settings().helper_thread and jit_available()
    if shared:
        _get_helper().offer(function, (counter, n_chunks, *args))
    function(counter, n_chunks, *args)
    if shared:
        # Chunks the helper claimed but has not finished: at most one, usually none.
        while _chunks_finished(counter) < n_chunks:
            os.sched_yield()
