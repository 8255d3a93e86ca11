"""edge_sdk.kernels._share: chunks claimed from an atomic counter by the caller and a helper
thread, each chunk exactly once, and a caller that never waits for a helper that cannot run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_sdk.kernels import _share, configure, settings
from edge_sdk.kernels._jit import jit_available, kernel
from edge_sdk.kernels._share import chunk_done, claim_chunk, run_shared
from edge_sdk.kernels.color import nv12_to_rgb, yuv_to_rgb_reference


@kernel
def _mark_chunks(counter: np.ndarray, n_chunks: int, seen: np.ndarray, work: int) -> None:
    """seen[chunk] += 1 for every chunk this thread claims, after ``work`` dummy steps."""
    while True:
        chunk = claim_chunk(counter)
        if chunk >= n_chunks:
            break
        total = 0.0
        for i in range(work):
            total += np.sqrt(float(i + chunk))
        seen[chunk] += 1 if total >= 0.0 else 2
        chunk_done(counter)


def test_every_chunk_is_run_exactly_once() -> None:
    for n_chunks in (1, 2, 7, 64, 500):
        seen = np.zeros(n_chunks, np.int64)
        run_shared(_mark_chunks, n_chunks, seen, 2000)
        np.testing.assert_array_equal(seen, 1)


@kernel
def _tag_chunks(counter: np.ndarray, n_chunks: int, owner: np.ndarray, tag: int) -> None:
    """owner[chunk] += tag for every chunk this thread claims (after some work)."""
    while True:
        chunk = claim_chunk(counter)
        if chunk >= n_chunks:
            break
        total = 0.0
        for i in range(300_000):
            total += np.sqrt(float(i + chunk))
        owner[chunk] += tag if total >= 0.0 else 0
        chunk_done(counter)


def _tag_by_thread(counter: np.ndarray, n_chunks: int, owner: np.ndarray) -> None:
    # Run by both threads with the same arguments: tag 1 on the caller, 100 on the helper.
    helper = threading.current_thread().name == "edge-sdk-kernel-helper"
    _tag_chunks(counter, n_chunks, owner, 100 if helper else 1)


@pytest.mark.jit_only  # without numba there is no helper thread
def test_the_helper_takes_chunks_when_it_runs() -> None:
    # Chunks of about a millisecond: an idle helper wakes long before the caller is done.
    helper_chunks = 0
    for _ in range(5):
        owner = np.zeros(16, np.int64)
        run_shared(_tag_by_thread, 16, owner)
        assert set(owner.tolist()) <= {1, 100}  # each chunk exactly once, by one thread
        helper_chunks += int(np.count_nonzero(owner == 100))
    assert helper_chunks > 0


@pytest.mark.jit_only
def test_a_helper_that_cannot_run_is_not_waited_for() -> None:
    # Hold the helper's lock, so it cannot wake (as when the other core is busy): the caller
    # takes every chunk and returns; the helper, run late on the finished job, writes nothing.
    seen = np.zeros(8, np.int64)
    run_shared(_mark_chunks, 8, seen, 10)  # make sure the helper exists and is idle
    helper = _share._get_helper()
    seen[:] = 0
    with helper._wake:
        start = time.perf_counter()
        run_shared(_mark_chunks, 8, seen, 10)
        elapsed = time.perf_counter() - start
        np.testing.assert_array_equal(seen, 1)
        seen[:] = 0
    deadline = time.monotonic() + 5
    while helper._job is not None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    np.testing.assert_array_equal(seen, 0)  # the late helper found no chunk left
    assert elapsed < 1.0


def test_helper_thread_off_runs_on_the_caller_only() -> None:
    previous = settings()
    try:
        configure(helper_thread=False)
        seen = np.zeros(32, np.int64)
        run_shared(_mark_chunks, 32, seen, 100)
        np.testing.assert_array_equal(seen, 1)
    finally:
        configure(previous)


def _nv12(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, width * height * 3 // 2, dtype=np.uint8)


@pytest.mark.jit_only  # a 720p frame through plain-Python loops takes seconds
@pytest.mark.parametrize("helper", [True, False])
def test_shared_conversion_equals_the_reference(helper: bool) -> None:
    # 1280 x 720 and up is converted in shared chunks; the result must not depend on who
    # converted which rows.
    previous = settings()
    try:
        configure(helper_thread=helper)
        frame = _nv12(1280, 720, seed=4)
        expected = yuv_to_rgb_reference(frame, 1280, 720, "NV12")
        for _ in range(3):
            got = nv12_to_rgb(frame, 1280, 720)
            assert np.max(np.abs(got.astype(int) - expected.astype(int))) <= 1
    finally:
        configure(previous)


def test_jit_state_is_reported() -> None:
    assert isinstance(jit_available(), bool)


@pytest.mark.jit_only  # without numba there is no helper thread
def test_the_helper_survives_a_failing_job() -> None:
    def fails(counter: np.ndarray, n_chunks: int) -> None:
        if threading.current_thread().name == "edge-sdk-kernel-helper":
            raise RuntimeError("a job that fails on the helper")
        counter[0] = n_chunks  # the caller: nothing to run
        counter[1] = n_chunks

    run_shared(fails, 4)
    helper = _share._get_helper()
    deadline = time.monotonic() + 5
    while helper._job is not None and time.monotonic() < deadline:
        time.sleep(0.001)
    # The same helper (thread alive) still takes chunks of the next shared kernel.
    owner = np.zeros(16, np.int64)
    run_shared(_tag_by_thread, 16, owner)
    assert set(owner.tolist()) <= {1, 100}
    assert _share._get_helper() is helper
    assert any(t.name == "edge-sdk-kernel-helper" and t.is_alive() for t in threading.enumerate())
