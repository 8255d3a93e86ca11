"""Run ``edge-sdk agent`` in a child process, optionally killing it (SIGKILL) at a store crash
point: ``EDGE_SDK_TEST_CRASH_AT=point:n`` dies the n-th time ``point`` is reached;
``EDGE_SDK_TEST_DIE_IN_HEALTH_CHECK=1`` dies while warming up a new model, as a segfault in the
runtime or the OOM killer would. Used by the OTA fault tests and the torture script; production
code has no such switch."""

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


if __name__ == "__main__":
    _install_crash_hook()
    _install_health_check_death()
    from edge_sdk.cli import main

    sys.exit(main(["agent", "--config", sys.argv[1], "--log-level", "info"]))
