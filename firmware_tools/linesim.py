"""A serial line simulator: a proxy between two ptys that paces bytes at a chosen baud rate and
can drop, corrupt or cut the line.

Ptys ignore the baud rate (NOTES.md, "Serial"), so a protocol tested on a bare socat pair never
meets the timing of a real cable. Put the simulator between two pty pairs: side 1 opens
``pair1.a``, side 2 opens ``pair2.a``, and the simulator joins ``pair1.b`` <-> ``pair2.b``::

    with PtyPair(tmp, "one") as one, PtyPair(tmp, "two") as two:
        with LineSimulator(one.b, two.b, baud=115200, drop_rate=1e-4, seed=7) as line:
            host = serial.Serial(one.a, timeout=1)     # the laptop
            device = serial.Serial(two.a, timeout=1)  # the board
            host.write(b"hello")
            assert device.read(5) == b"hello"         # about 5 * 10 / 115200 s later
            line.cut()                                 # the cable is pulled: silence
            line.restore()
            print(line.stats.a_to_b.forwarded)

Timing model. Each direction has a line clock: a byte starts when the previous one has
finished (or when it arrives, on an idle line) and takes ``bits_per_byte / baud`` seconds
(10 bits for 8N1: start, 8 data, stop). A byte is delivered once its last bit is "on the
wire", plus ``latency``. The schedule is kept against the clock, never by sleeping per byte,
so a long transfer keeps the exact rate; bytes are written in batches at most every
``granularity`` seconds (default 1 ms, like a USB serial adapter's 1 ms frames).

Measured on a shared 2-core machine (timed as tests/test_linesim.py times a transfer, both
directions at once, 3 runs each): 20 KB at 115200 baud arrived within +0.05 to +0.3 % of the
nominal 1.736 s, 200 KB at 921600 baud within +0.05 to +0.25 % of 2.170 s, in a thread or a
child process; the child used about 8 % of one core at 921600 baud both ways. A single byte
arrives 0.5-1.5 ms after it was written (its 87 us on the wire at 115200 plus the wait's 1 ms
resolution); a bare socat pair takes 0.02 ms. Tests allow 3 %.

Flow control. The simulator holds at most ``buffer`` bytes per direction (like a UART's FIFO
and driver buffer); beyond that it stops reading, so a writer that outruns the line is slowed
down through the pty buffers as a real tty would slow it.

Impairments. ``drop_rate`` and ``corrupt_rate`` are per-byte probabilities; a corrupted byte
has one random bit flipped. Each direction has its own RNG seeded from ``seed`` and the
direction, so which bytes are hit depends only on their position in the stream, not on
timing: a failure found with a seed reproduces. A dropped byte still takes its time on the
line. Without a seed one is chosen and kept in ``LineSimulator.seed`` for the report.

Cut. ``cut()`` is a cable pulled between the adapter and the device: everything in flight is
discarded, and whatever either side writes while cut is read and thrown away (writers do not
block, as a UART transmitting into nothing does not); readers see silence. The pty ends stay
open: an unplugged *USB adapter*, whose device node vanishes and whose reads fail, is a
different fault; simulate it by closing the PtyPair (pyserial then raises "device reports
readiness to read but returned no data"). ``restore()`` reconnects.

In its own process (so a benchmark does not share the GIL with the code it measures)::

    python -m firmware_tools.linesim A B --baud 921600 [--drop-rate P] [--corrupt-rate P]
        [--seed N] [--latency S] [--bits-per-byte N] [--buffer N] [--granularity S]

or from Python ``LineSimulatorProcess(a, b, baud=921600)``, with the same ``cut()``,
``restore()``, ``configure()``, ``stats`` and ``close()``; the child takes JSON commands on its
stdin and ends when the stdin closes, so it never outlives its parent.

Errors: a pty that cannot be opened raises ``PortError``; an end that fails later (its socat
ended) stops the simulator, and ``error`` holds the ``PortError``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import selectors
import subprocess
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from firmware_tools.errors import PortError

__all__ = [
    "DirectionStats",
    "LineSimulator",
    "LineSimulatorProcess",
    "LineStats",
    "main",
]

Direction = Literal["a_to_b", "b_to_a"]
_DIRECTIONS: tuple[Direction, Direction] = ("a_to_b", "b_to_a")
_READ_SIZE = 4096
# Never-reached countdown: the line has no impairments.
_NEVER = sys.maxsize


@dataclasses.dataclass(frozen=True)
class DirectionStats:
    """Byte counts of one direction of the line.

    ``received``: read from the sending side. ``forwarded``: written to the receiving side
    (corrupted bytes included). ``dropped`` and ``corrupted``: lost or bit-flipped by the
    impairments. ``discarded``: thrown away by ``cut()`` or ``close()`` (in flight or written
    while cut). ``queued``: received and not yet forwarded, dropped or discarded.
    """

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    corrupted: int = 0
    discarded: int = 0

    @property
    def queued(self) -> int:
        return self.received - self.forwarded - self.dropped - self.discarded


@dataclasses.dataclass(frozen=True)
class LineStats:
    """A snapshot of both directions' counts: ``a_to_b`` and ``b_to_a``."""

    a_to_b: DirectionStats
    b_to_a: DirectionStats

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _DIRECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, int]]) -> LineStats:
        return cls(DirectionStats(**data["a_to_b"]), DirectionStats(**data["b_to_a"]))


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _check_delay(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be zero or more seconds, got {value}")
    return value


class _Direction:
    """One direction of the line: its queue, its clock, its impairments and its counts."""

    def __init__(self, name: Direction, source: int, sink: int, rng: random.Random) -> None:
        self.name = name
        self.source = source
        self.sink = sink
        self.rng = rng
        self.pending = bytearray()  # read, not yet fully on the wire
        self.clock = 0.0  # when pending[0] started on the wire
        self.line_free = 0.0  # when the last byte finished
        self.last_delivery = 0.0  # when the last batch left the line
        self.delayed: deque[tuple[float, bytes]] = deque()  # (deliver at, bytes) for latency
        self.delayed_bytes = 0
        self.outbox = bytearray()  # due, waiting for the sink to accept it
        self.cut = False
        self.countdown = _NEVER  # unimpaired bytes before the next dropped/corrupted one
        self.received = 0
        self.forwarded = 0
        self.dropped = 0
        self.corrupted = 0
        self.discarded = 0

    def held(self) -> int:
        return len(self.pending) + self.delayed_bytes + len(self.outbox)

    def discard(self) -> None:
        self.discarded += self.held()
        self.pending.clear()
        self.delayed.clear()
        self.delayed_bytes = 0
        self.outbox.clear()

    def snapshot(self) -> DirectionStats:
        return DirectionStats(
            received=self.received,
            forwarded=self.forwarded,
            dropped=self.dropped,
            corrupted=self.corrupted,
            discarded=self.discarded,
        )


class LineSimulator:
    """Join ptys ``a`` and ``b`` through a paced, lossy line; forward on a background thread.

    ``baud`` / ``bits_per_byte`` is the byte rate of each direction; ``drop_rate`` and
    ``corrupt_rate`` are per-byte probabilities; ``latency`` is a constant delay added to every
    byte (a radio modem, a long USB chain); ``seed`` fixes the impairments; ``buffer`` is the
    bytes held per direction before the simulator stops reading (backpressure);
    ``granularity`` is the shortest interval between two batches of deliveries.

    Raises ``PortError`` when a pty cannot be opened, ``ValueError`` for a bad setting.
    Example: ``with LineSimulator(one.b, two.b, baud=9600) as line: ...``.
    """

    def __init__(
        self,
        a: str,
        b: str,
        *,
        baud: float = 115200,
        bits_per_byte: float = 10,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        seed: int | None = None,
        latency: float = 0.0,
        buffer: int = 4096,
        granularity: float = 0.001,
    ) -> None:
        self.a = a
        self.b = b
        self._baud = _check_positive("baud", baud)
        self._bits_per_byte = _check_positive("bits_per_byte", bits_per_byte)
        self._drop_rate = _check_rate("drop_rate", drop_rate)
        self._corrupt_rate = _check_rate("corrupt_rate", corrupt_rate)
        if self._drop_rate + self._corrupt_rate > 1.0:
            raise ValueError("drop_rate + corrupt_rate must be at most 1")
        self._latency = _check_delay("latency", latency)
        self._granularity = _check_delay("granularity", granularity)
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1 byte, got {buffer}")
        self._buffer = int(buffer)
        self.seed: int = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.error: PortError | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._fds: list[int] = []
        self._saved: dict[int, list[Any]] = {}
        try:
            fd_a = self._open(a)
            fd_b = self._open(b)
            self._wake_r, self._wake_w = os.pipe()
            self._fds += [self._wake_r, self._wake_w]
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        except BaseException:
            self._release()
            raise
        self._dirs = {
            "a_to_b": _Direction("a_to_b", fd_a, fd_b, random.Random(f"{self.seed}:a_to_b")),
            "b_to_a": _Direction("b_to_a", fd_b, fd_a, random.Random(f"{self.seed}:b_to_a")),
        }
        for direction in self._dirs.values():
            self._rearm(direction)
        self._thread = threading.Thread(target=self._run, name=f"linesim {a} <-> {b}", daemon=True)
        self._thread.start()

    # --- public control ---------------------------------------------------------------------

    @property
    def baud(self) -> float:
        return self._baud

    @property
    def bits_per_byte(self) -> float:
        return self._bits_per_byte

    @property
    def drop_rate(self) -> float:
        return self._drop_rate

    @property
    def corrupt_rate(self) -> float:
        return self._corrupt_rate

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def byte_time(self) -> float:
        """Seconds one byte takes on the wire: ``bits_per_byte / baud``."""
        return self._bits_per_byte / self._baud

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_cut(self) -> bool:
        """True while either direction is cut."""
        with self._lock:
            return any(d.cut for d in self._dirs.values())

    def configure(
        self,
        *,
        baud: float | None = None,
        bits_per_byte: float | None = None,
        drop_rate: float | None = None,
        corrupt_rate: float | None = None,
        latency: float | None = None,
    ) -> None:
        """Change settings while running (both directions, from the next byte on the wire).

        A new baud rate applies to bytes not yet sent; new rates restart the impairment
        countdown from each direction's RNG. Example: ``line.configure(drop_rate=0.01)``.
        """
        self._check_open()
        new_baud = self._baud if baud is None else _check_positive("baud", baud)
        new_bits = (
            self._bits_per_byte
            if bits_per_byte is None
            else _check_positive("bits_per_byte", bits_per_byte)
        )
        drop = self._drop_rate if drop_rate is None else _check_rate("drop_rate", drop_rate)
        corrupt = (
            self._corrupt_rate
            if corrupt_rate is None
            else _check_rate("corrupt_rate", corrupt_rate)
        )
        if drop + corrupt > 1.0:
            raise ValueError("drop_rate + corrupt_rate must be at most 1")
        new_latency = self._latency if latency is None else _check_delay("latency", latency)
        with self._lock:
            self._baud, self._bits_per_byte, self._latency = new_baud, new_bits, new_latency
            if (drop, corrupt) != (self._drop_rate, self._corrupt_rate):
                self._drop_rate, self._corrupt_rate = drop, corrupt
                for direction in self._dirs.values():
                    self._rearm(direction)
        self._wake()

    def cut(self, direction: Direction | None = None) -> None:
        """Pull the cable (one ``direction`` or both): discard what is in flight, and read and
        discard whatever is written until ``restore()``. Example: ``line.cut()``."""
        self._check_open()
        with self._lock:
            for d in self._select(direction):
                d.cut = True
                d.discard()
        self._wake()

    def restore(self, direction: Direction | None = None) -> None:
        """Plug the cable back in (one ``direction`` or both). Example: ``line.restore()``."""
        self._check_open()
        with self._lock:
            now = time.monotonic()
            for d in self._select(direction):
                d.cut = False
                d.line_free = now
        self._wake()

    @property
    def stats(self) -> LineStats:
        """Counts so far, per direction (a snapshot). Example: ``line.stats.a_to_b.dropped``."""
        with self._lock:
            return LineStats(self._dirs["a_to_b"].snapshot(), self._dirs["b_to_a"].snapshot())

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is in flight in either direction; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                idle = all(d.held() == 0 for d in self._dirs.values())
            if idle or self._closed or not self._thread.is_alive():
                return idle
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)

    def close(self) -> None:
        """Stop forwarding (what is in flight is discarded) and close the ends. Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join()
        with self._lock:
            for d in self._dirs.values():
                d.discard()
        self._release()
        self._closed = True

    def __enter__(self) -> LineSimulator:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the line simulator is closed")

    def _select(self, direction: Direction | None) -> list[_Direction]:
        if direction is None:
            return list(self._dirs.values())
        if direction not in self._dirs:
            raise ValueError(f"direction must be 'a_to_b' or 'b_to_a', got {direction!r}")
        return [self._dirs[direction]]

    def _open(self, path: str) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise PortError(path, exc.strerror or str(exc)) from exc
        self._fds.append(fd)
        try:
            attrs = termios.tcgetattr(fd)
        except termios.error:
            return fd  # not a tty (a pipe, a socket): nothing to set
        self._saved[fd] = attrs
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
        # Raw 8-bit, no echo, no signals, no flow control: binary data passes unchanged
        # (0x11/0x13 occur in it). The speed is left alone: the simulator does the pacing.
        iflag &= ~(
            termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF
        )  # fmt: skip
        oflag &= ~termios.OPOST
        cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CLOCAL
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        cc = list(cc)
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        raw = [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]
        try:
            termios.tcsetattr(fd, termios.TCSANOW, raw)
        except termios.error as exc:
            raise PortError(path, f"cannot set raw mode: {exc}") from exc
        return fd

    def _release(self) -> None:
        for fd, attrs in self._saved.items():
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._saved.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _rearm(self, d: _Direction) -> None:
        """Draw the number of clean bytes before the next impaired one (geometric)."""
        p = self._drop_rate + self._corrupt_rate
        if p <= 0.0:
            d.countdown = _NEVER
        elif p >= 1.0:
            d.countdown = 0
        else:
            # Inverse CDF of the geometric distribution: as if each byte drew its own coin,
            # without one RNG call per byte (cheap enough at 921600 baud).
            d.countdown = min(int(math.log1p(-d.rng.random()) / math.log1p(-p)), _NEVER)

    def _impair(self, d: _Direction, chunk: bytes) -> bytes:
        if d.countdown >= len(chunk):
            if d.countdown != _NEVER:
                d.countdown -= len(chunk)
            return chunk
        out = bytearray()
        i = 0
        p = self._drop_rate + self._corrupt_rate
        while True:
            rest = len(chunk) - i
            if d.countdown >= rest:
                if d.countdown != _NEVER:
                    d.countdown -= rest
                out += chunk[i:]
                return bytes(out)
            out += chunk[i : i + d.countdown]
            i += d.countdown
            byte = chunk[i]
            i += 1
            if d.rng.random() * p < self._drop_rate:
                d.dropped += 1
            else:
                out.append(byte ^ (1 << d.rng.randrange(8)))
                d.corrupted += 1
            self._rearm(d)

    def _advance(self, d: _Direction, now: float) -> None:
        """Move the bytes whose last bit is on the wire by ``now`` towards the sink."""
        # At most one batch per ``granularity``: without this, at high rates every byte read
        # would wake the loop for the byte or two due since the last turn (a busy loop).
        if d.pending and now >= d.last_delivery + self._granularity:
            t = self.byte_time
            n = min(len(d.pending), int((now - d.clock) / t))
            if n > 0:
                chunk = bytes(d.pending[:n])
                del d.pending[:n]
                d.clock += n * t
                d.line_free = d.clock
                d.last_delivery = now
                chunk = self._impair(d, chunk)
                if self._latency > 0:
                    d.delayed.append((d.clock + self._latency, chunk))
                    d.delayed_bytes += len(chunk)
                else:
                    d.outbox += chunk
        while d.delayed and d.delayed[0][0] <= now:
            _, chunk = d.delayed.popleft()
            d.delayed_bytes -= len(chunk)
            d.outbox += chunk

    def _next_due(self, d: _Direction) -> float:
        due = math.inf
        if d.pending:
            due = max(d.clock + self.byte_time, d.last_delivery + self._granularity)
        if d.delayed:
            due = min(due, d.delayed[0][0])
        return due

    def _fail(self, path: str, reason: str) -> None:
        self.error = PortError(path, reason)

    def _path(self, fd: int) -> str:
        return self.a if fd == self._dirs["a_to_b"].source else self.b

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        registered: dict[int, int] = {}
        try:
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                with self._lock:
                    if self._closing:
                        return
                    now = time.monotonic()
                    deadline = math.inf
                    want: dict[int, int] = {}
                    for d in self._dirs.values():
                        if not d.cut:
                            self._advance(d, now)
                        if d.outbox and not self._flush(d):
                            return
                        if d.cut or d.held() < self._buffer:
                            want[d.source] = want.get(d.source, 0) | selectors.EVENT_READ
                        if d.outbox:
                            want[d.sink] = want.get(d.sink, 0) | selectors.EVENT_WRITE
                        deadline = min(deadline, self._next_due(d))
                for fd in self._dirs["a_to_b"].source, self._dirs["b_to_a"].source:
                    mask = want.get(fd, 0)
                    if registered.get(fd, 0) == mask:
                        continue
                    if fd in registered:
                        selector.unregister(fd)
                        del registered[fd]
                    if mask:
                        selector.register(fd, mask)
                        registered[fd] = mask
                timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
                events = selector.select(timeout)
                with self._lock:
                    for key, mask in events:
                        fd = key.fd
                        if fd == self._wake_r:
                            with contextlib.suppress(BlockingIOError):
                                os.read(fd, 4096)
                            continue
                        if mask & selectors.EVENT_READ and not self._ingest(fd):
                            return
        except Exception as exc:  # the thread must not die silently
            self.error = PortError(f"{self.a} <-> {self.b}", f"line simulator failed: {exc!r}")
        finally:
            selector.close()

    def _ingest(self, fd: int) -> bool:
        d = self._dirs["a_to_b"] if fd == self._dirs["a_to_b"].source else self._dirs["b_to_a"]
        room = _READ_SIZE if d.cut else max(1, self._buffer - d.held())
        try:
            data = os.read(fd, min(room, _READ_SIZE))
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(self._path(fd), f"read failed: {exc.strerror or exc}")
            return False
        if not data:
            self._fail(self._path(fd), "the pty was closed (its other end is gone)")
            return False
        d.received += len(data)
        if d.cut:
            d.discarded += len(data)
            return True
        if not d.pending:
            d.clock = max(time.monotonic(), d.line_free)
        d.pending += data
        return True

    def _flush(self, d: _Direction) -> bool:
        try:
            n = os.write(d.sink, d.outbox)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(self._path(d.sink), f"write failed: {exc.strerror or exc}")
            return False
        del d.outbox[:n]
        d.forwarded += n
        return True


class LineSimulatorProcess:
    """The same line simulator in a child process (``python -m firmware_tools.linesim``), so
    the pacing does not share the GIL with the code under test. Same settings, ``cut()``,
    ``restore()``, ``configure()``, ``stats`` and ``close()`` as ``LineSimulator``; the child
    runs in its own process group and ends when ``close()`` is called or its stdin closes.

    Raises ``PortError`` when the child cannot open the ptys. Example:
    ``with LineSimulatorProcess(one.b, two.b, baud=921600) as line: ...``.
    """

    def __init__(
        self,
        a: str,
        b: str,
        *,
        baud: float = 115200,
        bits_per_byte: float = 10,
        drop_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        seed: int | None = None,
        latency: float = 0.0,
        buffer: int = 4096,
        granularity: float = 0.001,
        python: str = sys.executable,
    ) -> None:
        argv = [python, "-m", "firmware_tools.linesim", a, b, "--baud", repr(float(baud))]
        argv += ["--bits-per-byte", repr(float(bits_per_byte))]
        argv += ["--drop-rate", repr(float(drop_rate)), "--corrupt-rate", repr(float(corrupt_rate))]
        argv += ["--latency", repr(float(latency)), "--buffer", str(int(buffer))]
        argv += ["--granularity", repr(float(granularity))]
        if seed is not None:
            argv += ["--seed", str(int(seed))]
        # The child imports this very package, even when it is not installed (a source tree).
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
        self.a, self.b = a, b
        self._closed = False
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            text=True,
        )
        self.pid = self.process.pid
        hello = self._reply()
        if "error" in hello:
            self._end()
            raise PortError(hello.get("port", f"{a} <-> {b}"), str(hello["error"]))
        self.seed: int = int(hello["seed"])

    def _stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self._end()
            err = self.process.stderr.read() if self.process.stderr else ""
            raise PortError(f"{self.a} <-> {self.b}", f"the line simulator ended: {err.strip()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _command(self, **command: Any) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("the line simulator is closed")
        try:
            self._stdin().write(json.dumps(command) + "\n")
            self._stdin().flush()
        except (BrokenPipeError, OSError) as exc:
            self._end()
            raise PortError(f"{self.a} <-> {self.b}", "the line simulator ended") from exc
        reply = self._reply()
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def cut(self, direction: Direction | None = None) -> None:
        self._command(op="cut", direction=direction)

    def restore(self, direction: Direction | None = None) -> None:
        self._command(op="restore", direction=direction)

    def configure(self, **settings: float) -> None:
        self._command(op="configure", settings=settings)

    @property
    def stats(self) -> LineStats:
        return LineStats.from_dict(self._command(op="stats")["stats"])

    def drain(self, timeout: float = 10.0) -> bool:
        return bool(self._command(op="drain", timeout=timeout)["idle"])

    def close(self) -> LineStats | None:
        """End the child; return its final counts (None if it had already died)."""
        if self._closed:
            return None
        stats: LineStats | None = None
        with contextlib.suppress(PortError, ValueError, json.JSONDecodeError):
            stats = LineStats.from_dict(self._command(op="close")["stats"])
        self._end()
        return stats

    def _end(self) -> None:
        self._closed = True
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(5)

    def __enter__(self) -> LineSimulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _serve(line: LineSimulator, stdin: IO[str], stdout: IO[str]) -> None:
    """Answer JSON commands from the parent, one per line, until ``close`` or end of input."""

    def say(reply: dict[str, Any]) -> None:
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()

    for raw in stdin:
        try:
            command = json.loads(raw)
            op = command.get("op")
            if op == "cut":
                line.cut(command.get("direction"))
                say({"ok": True})
            elif op == "restore":
                line.restore(command.get("direction"))
                say({"ok": True})
            elif op == "configure":
                line.configure(**command.get("settings", {}))
                say({"ok": True})
            elif op == "stats":
                say({"stats": line.stats.to_dict()})
            elif op == "drain":
                say({"idle": line.drain(float(command.get("timeout", 10.0)))})
            elif op == "close":
                line.close()
                say({"stats": line.stats.to_dict()})
                return
            else:
                say({"error": f"unknown command {op!r}"})
        except (ValueError, TypeError, RuntimeError) as exc:
            say({"error": str(exc)})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m firmware_tools.linesim A B --baud N ...``: run until stdin closes."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_tools.linesim",
        description="Join two ptys through a paced, lossy serial line. Reads JSON commands "
        '({"op": "cut"|"restore"|"stats"|"configure"|"drain"|"close"}) on stdin, one per '
        "line, answers on stdout; ends when stdin closes.",
    )
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--baud", type=float, default=115200)
    parser.add_argument("--bits-per-byte", type=float, default=10)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--buffer", type=int, default=4096)
    parser.add_argument("--granularity", type=float, default=0.001)
    args = parser.parse_args(argv)
    try:
        line = LineSimulator(
            args.a,
            args.b,
            baud=args.baud,
            bits_per_byte=args.bits_per_byte,
            drop_rate=args.drop_rate,
            corrupt_rate=args.corrupt_rate,
            seed=args.seed,
            latency=args.latency,
            buffer=args.buffer,
            granularity=args.granularity,
        )
    except PortError as exc:
        print(json.dumps({"error": str(exc), "port": exc.port}), flush=True)
        return 1
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    print(json.dumps({"ready": True, "seed": line.seed}), flush=True)
    try:
        _serve(line, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        pass
    finally:
        line.close()
    if line.error is not None:
        print(line.error, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
