"""Real serial peers for tests: socat pty pairs and lrzsz, each in its own process group and
ended by pid (NOTES.md, "Serial: lrzsz and U-Boot as peers").

    with PtyPair(tmp_path) as pair:          # two linked ptys: pair.a <-> pair.b
        port = serial.Serial(pair.a, timeout=0.1)
        with Peer(["rb", "-y"], pair.b, cwd=tmp_path) as rb:   # rb's stdin/stdout on pair.b
            ...
            assert rb.wait(30) == 0

``require_serial_tools()`` skips a test when socat or lrzsz is missing, or fails it under
``EDGE_SDK_REQUIRE_PEERS=1``. ``children()`` lists the processes a test started, so the
fixture in conftest.py can fail a test that leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
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
