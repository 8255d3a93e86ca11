"""Run ``edge-sdk agent`` in a child process, optionally killing it (SIGKILL) at a store crash
point: ``EDGE_SDK_TEST_CRASH_AT=point:n`` dies the n-th time ``point`` is reached;
``EDGE_SDK_TEST_DIE_IN_HEALTH_CHECK=1`` dies while warming up a new model, as a segfault in the
runtime or the OOM killer would. Used by the OTA fault tests and the torture script; production
code has no such switch.

Telemetry fault tests (tests/test_telemetry_faults.py): ``EDGE_SDK_TEST_KILL_AFTER_ACKS=n`` dies
(SIGKILL) right after the spool recorded the n-th acknowledged report, with more in flight;
``EDGE_SDK_TEST_CLOCK_JUMP=after:offset`` moves the wall clock (``time.time``) by ``offset``
seconds once ``after`` seconds have passed, as NTP does to a board without a real-time clock
(the monotonic clock is left alone, as the kernel leaves it)."""

from __future__ import annotations

import os
import signal
import sys

from edge_sdk import store


def _install_crash_hook() -> None:
    spec = os.environ.get("EDGE_SDK_TEST_CRASH_AT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    remaining = [int(count or 1)]

    def hook(reached: str) -> None:
        if reached == point:
            remaining[0] -= 1
            if remaining[0] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    store._crash_hook = hook


def _install_health_check_death() -> None:
    if os.environ.get("EDGE_SDK_TEST_DIE_IN_HEALTH_CHECK") != "1":
        return
    from edge_sdk import runtime

    def die(self: object, *args: object, **kwargs: object) -> float:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0.0

    runtime.EdgeModel.warmup = die  # type: ignore[method-assign]


def _install_kill_after_acks() -> None:
    spec = os.environ.get("EDGE_SDK_TEST_KILL_AFTER_ACKS")
    if not spec:
        return
    from edge_sdk import spool

    remaining = [int(spec)]
    ack = spool.Spool.ack

    def ack_then_die(self: spool.Spool, seq: int) -> None:
        ack(self, seq)
        remaining[0] -= 1
        if remaining[0] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)

    spool.Spool.ack = ack_then_die  # type: ignore[method-assign]


def _install_clock_jump() -> None:
    """Before anything binds ``time.time`` (the agent takes it as a default argument)."""
    spec = os.environ.get("EDGE_SDK_TEST_CLOCK_JUMP")
    if not spec:
        return
    import time

    after, _, offset = spec.partition(":")
    start = time.monotonic()
    real = time.time

    def jumping() -> float:
        moved = time.monotonic() - start >= float(after)
        return real() + (float(offset) if moved else 0.0)

    time.time = jumping


if __name__ == "__main__":
    _install_clock_jump()
    _install_kill_after_acks()
    _install_crash_hook()
    _install_health_check_death()
    from edge_sdk.cli import main

    sys.exit(main(["agent", "--config", sys.argv[1], "--log-level", "info"]))
