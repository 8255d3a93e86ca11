"""Real serial peers for tests: socat pty pairs and lrzsz, each in its own process group and
ended by pid (NOTES.md, "Serial: lrzsz and U-Boot as peers").

    with PtyPair(tmp_path) as pair:          # two linked ptys: pair.a <-> pair.b
        port = serial.Serial(pair.a, timeout=0.1)
        with Peer(["rb", "-y"], pair.b, cwd=tmp_path) as rb:   # rb's stdin/stdout on pair.b
            ...
            assert rb.wait(30) == 0

``require_serial_tools()`` skips a test when socat or lrzsz is missing, or fails it under
``EDGE_SDK_REQUIRE_PEERS=1``. ``children()`` lists the processes a test started, so the
fixture in conftest.py can fail a test that leaves one behind. ``side_by_side()`` runs
transfers on separate pty pairs at once, so that lrzsz's idle whole-second timers overlap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import _broker

SERIAL_PACKAGES = {"socat": ("socat",), "sb": ("lrzsz",), "rb": ("lrzsz",), "sx": ("lrzsz",)}
SERIAL_PACKAGES["rx"] = ("lrzsz",)

# Every process group started here and not yet reaped: the leftover check reads it.
_started: dict[int, str] = {}


def require_serial_tools() -> None:
    for program, packages in SERIAL_PACKAGES.items():
        _broker.require_program(program, packages=packages, purpose="the serial tests' peers")


def children() -> dict[int, str]:
    """Process groups started by this module that are still alive: pgid -> description."""
    alive = {}
    for pgid, what in list(_started.items()):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            _started.pop(pgid, None)
            continue
        except PermissionError:
            pass
        alive[pgid] = what
    return alive


def _end_group(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    # The group may outlive its leader (a child it forked); end it whole.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _started.pop(process.pid, None)
    return process.returncode


class PtyPair:
    """Two pseudo-terminals joined by socat: bytes written to one are read from the other.

    Raw, no echo, no flow control (XON/XOFF bytes occur in binary data). Ptys ignore the baud
    rate: a test that needs the timing of a real line puts firmware_tools' line simulator
    between two pairs.
    """

    def __init__(self, folder: Path, name: str = "pty") -> None:
        require_serial_tools()
        folder.mkdir(parents=True, exist_ok=True)
        self.a = str(folder / f"{name}-a")
        self.b = str(folder / f"{name}-b")
        self._log = folder / f"{name}-socat.log"
        options = "raw,echo=0,ignoreeof"
        self.process: subprocess.Popen[bytes] | None = None
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _broker.find_program("socat") or "socat",
                    "-d",
                    "-d",
                    f"pty,{options},link={self.a}",
                    f"pty,{options},link={self.b}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _started[self.process.pid] = f"socat {self.a} <-> {self.b}"
        deadline = time.monotonic() + 10
        # socat logs "starting data transfer loop" once both ptys exist and are linked.
        while "starting data transfer loop" not in self._log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self._log.read_text(errors="replace")
                self.close()
                raise RuntimeError(f"socat did not create the pty pair: {text}")
            time.sleep(0.01)

    def close(self) -> None:
        if self.process is not None:
            _end_group(self.process, 5)
            self.process = None

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Peer:
    """A program (lrzsz's sb/rb/sx/rx) with its stdin and stdout on a pty, in its own process
    group; its stderr (lrzsz's progress and verdict) is kept for the test to read."""

    def __init__(self, argv: Sequence[str], port: str, *, cwd: Path) -> None:
        self.argv = list(argv)
        self._stderr = cwd / f".{Path(argv[0]).name}-{os.getpid()}-{time.monotonic_ns()}.err"
        tty = os.open(port, os.O_RDWR | os.O_NOCTTY)
        try:
            with self._stderr.open("wb") as err:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=tty,
                    stdout=tty,
                    stderr=err,
                    cwd=cwd,
                    start_new_session=True,
                )
        finally:
            os.close(tty)
        _started[self.process.pid] = " ".join(self.argv)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                _end_group(self.process, 1)
        _started.pop(self.process.pid, None)
        return code

    @property
    def stderr(self) -> str:
        try:
            return self._stderr.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        _end_group(self.process, 2)

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def side_by_side(jobs: Mapping[str, Callable[[], object]], *, timeout: float = 120.0) -> None:
    """Run ``jobs`` (name -> callable) at once, one thread each, and wait for them all.

    Each job brings its own pty pair and peer. lrzsz spends most of a small transfer in idle
    whole-second timers (NOTES.md: about 2 s per file for rb, 1 s per EOT for rx); jobs
    running side by side overlap them, so a dozen real transfers cost about as much as the
    longest. Every job runs to its end; the failures are reported together, each under its
    job's name (so a failing case is named), the first as the cause. A job still running
    after ``timeout`` seconds fails the call: its own timeouts should have ended it.
    """
    errors: dict[str, BaseException] = {}

    def run(name: str, job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as exc:  # reported below, in the test's thread
            errors[name] = exc

    threads = [
        threading.Thread(target=run, args=item, name=f"side by side: {item[0]}", daemon=True)
        for item in jobs.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [thread.name for thread in threads if thread.is_alive()]
    if hung:
        raise AssertionError(f"still running after {timeout:g} s: {hung}")
    failed = [(name, errors[name]) for name in jobs if name in errors]
    if not failed:
        return
    lines = [f"{len(failed)} of {len(jobs)} side-by-side jobs failed:"]
    for number, (name, exc) in enumerate(failed):
        lines.append(f"- {name}: {type(exc).__name__}: {exc}")
        if number:  # the first is the cause below, with its traceback
            lines += ["  " + line for line in "".join(traceback.format_exception(exc)).splitlines()]
    raise AssertionError("\n".join(lines)) from failed[0][1]
