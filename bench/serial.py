"""YMODEM and the framed link on a paced serial line: payload throughput as a share of line rate.

What it answers (issue 7's "must show"): at 115200 baud, how close do our YMODEM-1K sender and
receiver come to the line rate, against lrzsz talking to itself, in both directions; and how
much of the line does the link protocol (firmware_tools.link) give a model push, at 115200 and
921600 baud.

The line: every competitor runs between two socat pty pairs joined by the line simulator in
its own process (``firmware_tools.linesim.LineSimulatorProcess``: each direction paced at
baud / 10 bytes a second, 8N1, delivered in batches at most every 1 ms; no impairments), so
the pacing shares no GIL with the code measured. The sender is always on one side, the
receiver on the other; each competitor is a separate process (ours are this script in
``--child`` mode calling ``firmware_tools.ymodem.send_files`` / ``receive_files`` with their
default ``Timing``, which is what ``edge-sdk serial send`` / ``receive`` call).

YMODEM competitors, interleaved: each round makes a fresh file of random bytes and runs every
competitor once on it, in an order that rotates from round to round:

- ``ours -> rb``: our sender to lrzsz ``rb``;
- ``sb -k -> ours``: lrzsz ``sb -k`` (1 KiB blocks) to our receiver;
- ``sb -k -> rb``: lrzsz to lrzsz, the reference every ratio is taken against;
- ``ours -> ours``;
- full run only, an ablation that is not a competitor: ``ours (pause 0) -> rb``, our sender
  with ``Timing(pause=0)``, to show what the 1 ms pause before every block costs.

What is timed, the same for all: the bench reads the simulator's forwarded-byte counters every
10 ms (``LineSimulatorProcess.stats``) and finds when the count of bytes delivered to the
receiver crossed given values (where the line is busy on one side of a crossing, by counting
whole bytes at baud / 10 from that side's sample, so within about the 1 ms batches; see
``crossing``). No process start-up is counted, for anyone: the clock is on the wire. Before
the rounds, a stream of raw bytes without a protocol measures the line itself (about 100 %).

- **data phase** (the figure judged against the target): from the last byte of block 0
  delivered to the last byte of the last data block delivered. It holds every data block and
  the turnaround before each (ACK, the receiver's 'C' after block 0, the sender's reaction).
  Throughput = file bytes / that time; share = throughput / (baud / 10).
- **session**: from the first byte of block 0 to the last byte on the line in either
  direction (the ACK of the empty block 0 that ends the batch). It adds block 0 and the end of
  the file and batch, where lrzsz's ``rb`` waits a whole second of silence before it
  acknowledges an EOT and a second more before it asks for the next file (lrz.c wcgetsec,
  wcrxpn), which our receiver does in 0.2 s: about 2 s of a 256 KiB file's 24 s session.
- **turnaround**: data-phase time per block minus the block's own time on the wire (1029
  bytes at baud / 10 bytes a second): the line's idle time per block. 97 % of the line allows
  at most 2.31 ms (1024 / (1029 + 11.52 x t) at 115200).
- **CPU per block** of each end: lrzsz's from the kernel's count for its reaped process, ours
  as our child measures its transfer (``time.process_time``, without Python's start-up).

Every received file is compared with the one sent (sha256) and both processes must exit 0; the
bytes the sender put on the line are checked against the blocks the file needs (a
retransmission shows as extra bytes).

Link: two cables per baud rate, each with a device process and a host endpoint in this
process, opened once and kept for the run (as a technician's laptop keeps its link):

- **raw bulk**: ``firmware_tools.link.measure_bulk`` (1 KiB requests, the agreed window of 8
  in flight, each answered with an empty response) against a device process that only answers
  them: payload bytes / (line capacity x time); and payload / bytes written.
- **model push**: ``edge_sdk.cli.serial.push_release`` (what ``edge-sdk serial push`` calls)
  to a real ``edge-sdk serial serve`` process (SerialAgent, its model store and trusted key),
  of a fresh signed release each round: a float32 MLP of the file size (a 256 x 256 weight for
  256 KiB, so the device's health check runs a real model). Timed in the host process: the
  chunk phase (from the reply to ``push.begin`` to the acknowledgement of the last chunk, 64 KiB
  chunks as ``edge-sdk fleet release`` cuts them, 4 in flight), and end to end (from
  ``push.begin`` to the reply to ``push.finish``); the finish (the device hashes the whole
  file, loads the model and runs its smoke test, activates it) is reported separately.

    python bench/serial.py                  # full run: 256 KiB, 3 rounds, about 9.5 min
    python bench/serial.py --quick          # CI smoke: 16 KiB, 1 round, about 25 s
    python bench/serial.py --part ymodem    # or --part link
    python bench/serial.py --write-readme   # also update bench/README.md
    python bench/serial.py --check          # exit 1 when a target is missed

Needs socat and lrzsz (``sb``, ``rb``); ``scripts/test`` installs both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Run as a script, this file's folder is sys.path[0], and in it "serial" is this very file: it
# would shadow pyserial for firmware_tools. Drop the folder before anything imports pyserial.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(REPO / "tests"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KIB = 1024
BAUD = 115200
LINK_BAUDS = (115200, 921600)
BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop
TARGET = 0.97
SAMPLE_INTERVAL = 0.01
# How long a sender may take to exit once the receiver has: ours waits up to Timing.final (3 s)
# for the ACK of the end of the batch.
SENDER_GRACE = 10.0
# YMODEM frames ([SPEC] 4.3, 7.2): STX/SOH, the number and its complement, data, CRC-16.
LONG_FRAME = 3 + 1024 + 2
SHORT_FRAME = 3 + 128 + 2
TAIL = 7 * 128  # the last 896 bytes or fewer go in 128-byte blocks (lsz.c wctx; ours too)
REFERENCE = "sb -k -> rb"
OURS_SEND = "ours -> rb"
OURS_RECEIVE = "sb -k -> ours"
OURS_BOTH = "ours -> ours"
ABLATION = "ours (pause 0) -> rb"
JUDGED = (OURS_SEND, OURS_RECEIVE, OURS_BOTH)
BEGIN = "<!-- serial:begin -->"
END = "<!-- serial:end -->"


# --------------------------------------------------------------------------- child processes


def child_main(argv: Sequence[str]) -> int:
    """``--child MODE ...``: our side of a transfer, or a link device, in its own process."""
    mode = argv[0]
    if mode in ("ymodem-send", "ymodem-receive"):
        from firmware_tools import ymodem

        port, target = argv[1], argv[2]
        timing = ymodem.Timing(pause=float(argv[3])) if len(argv) > 3 else ymodem.Timing()
        with ymodem.open_port(port, baudrate=BAUD) as opened:
            print("ready", flush=True)
            cpu = time.process_time()
            if mode == "ymodem-send":
                ymodem.send_files(opened, [target], timing=timing)
            else:
                ymodem.receive_files(opened, target, timing=timing)
        # CPU time of the transfer alone, without the interpreter's start-up and imports.
        print(f"cpu {time.process_time() - cpu}", flush=True)
        return 0
    if mode == "link-echo":
        from firmware_tools.link import LinkEndpoint
        from firmware_tools.ymodem import open_port

        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        with (
            open_port(argv[1], baudrate=int(argv[2])) as opened,
            LinkEndpoint(opened, role="device") as link,
        ):
            print("ready", flush=True)
            link.serve(lambda kind, payload: b"", stop=stop)
        return 0
    raise SystemExit(f"unknown child mode {mode!r}")


class Child:
    """A helper process of ours in its own process group, ended by its pid (never by name):
    it says "ready" on its stdout (a pipe); its stderr goes to ``log``. (lrzsz runs through
    tests/_serial.py's ``Peer``, with its stdin and stdout on the pty.)"""

    def __init__(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("ab") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or box[0].strip() != b"ready":
            raise RuntimeError(f"{self.argv[:4]} did not start: {self.stderr()[-2000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.end()
            raise RuntimeError(f"{self.argv[:4]} did not finish in {timeout:.0f} s") from None

    def cpu_seconds(self) -> float:
        """The CPU time a finished ymodem child reported for its transfer."""
        assert self.process.stdout is not None
        for line in self.process.stdout.read().decode(errors="replace").splitlines():
            if line.startswith("cpu "):
                return float(line.split()[1])
        return float("nan")

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def end(self, timeout: float = 5.0) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        # The group may outlive its leader (a child it forked); end it whole.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *args]


# --------------------------------------------------------------------------- the line


class Cable:
    """Two socat pty pairs joined by the line simulator in a child process: ``a`` is the
    sender's (host's) end, ``b`` the receiver's (device's)."""

    def __init__(self, folder: Path, name: str, baud: int) -> None:
        from _serial import PtyPair

        from firmware_tools.linesim import LineSimulatorProcess

        self.baud = baud
        self._stack = contextlib.ExitStack()
        try:
            one = self._stack.enter_context(PtyPair(folder, f"{name}-host"))
            two = self._stack.enter_context(PtyPair(folder, f"{name}-device"))
            self.line = self._stack.enter_context(LineSimulatorProcess(one.b, two.b, baud=baud))
        except BaseException:
            self._stack.close()
            raise
        self.a, self.b = one.a, two.a

    def close(self) -> None:
        self._stack.close()


class Recorder:
    """Samples the simulator's forwarded-byte counters (a -> b, b -> a) every
    ``SAMPLE_INTERVAL`` seconds on a thread, relative to the counts when it started."""

    def __init__(self, cable: Cable) -> None:
        self.line = cable.line
        stats = self.line.stats
        self.base = (stats.a_to_b.forwarded, stats.b_to_a.forwarded)
        self.samples: list[tuple[float, int, int]] = [(time.monotonic(), 0, 0)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-recorder", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        stats = self.line.stats
        self.samples.append(
            (
                time.monotonic(),
                stats.a_to_b.forwarded - self.base[0],
                stats.b_to_a.forwarded - self.base[1],
            )
        )

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def finish(self, quiet: float = 0.3, limit: float = 5.0) -> list[tuple[float, int, int]]:
        """Once the ends are done: keep sampling until the counts stay still for ``quiet``
        seconds (the last ACK may still be on the line), then stop."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self._thread.is_alive():
            last = self.samples[-1]
            time.sleep(quiet)
            if self.samples[-1][1:] == last[1:]:
                break
        self.stop()
        return list(self.samples)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def crossing(
    samples: Sequence[tuple[float, int, int]],
    count: int,
    column: int,
    *,
    busy: str = "",
    byte_time: float = BITS_PER_BYTE / BAUD,
) -> float:
    """When the counter in ``column`` (1: a -> b, 2: b -> a) reached ``count``, from the two
    samples around it. Linear interpolation is biased where the interval also holds idle line
    (the first byte of a transfer, the last byte of a block), by up to a sampling interval;
    where the line is known to be busy on one side of the crossing, count whole bytes from
    that side's sample instead: ``busy="before"`` (busy from the earlier sample up to the
    crossing: the end of a block), ``busy="after"`` (busy from the crossing to the later
    sample: the start of a transfer)."""
    for (t0, *v0), (t1, *v1) in itertools.pairwise(samples):
        low, high = v0[column - 1], v1[column - 1]
        if low < count <= high:
            if busy == "before":
                return min(t1, t0 + (count - low) * byte_time)
            if busy == "after":
                return max(t0, t1 - (high - count) * byte_time)
            return t0 + (t1 - t0) * (count - low) / (high - low)
    raise ValueError(f"the line never carried {count} bytes in column {column}")


def data_frames(size: int) -> tuple[int, int]:
    """(blocks, bytes on the wire) of a file's data blocks with 1 KiB blocks: full blocks
    while more than 896 bytes remain, then 128-byte blocks (firmware_tools._xymodem.blocks,
    lsz.c wctx)."""
    blocks = wire = 0
    remaining = size
    while remaining > 0:
        if remaining <= TAIL:
            count = -(-remaining // 128)
            return blocks + count, wire + count * SHORT_FRAME
        blocks += 1
        wire += LONG_FRAME
        remaining -= min(1024, remaining)
    return blocks, wire


# --------------------------------------------------------------------------- YMODEM


@dataclasses.dataclass(frozen=True)
class YRun:
    competitor: str
    round: int
    size: int
    data_seconds: float
    session_seconds: float
    blocks: int
    data_wire: int
    extra_bytes: int  # on the data direction beyond block 0, the data, one EOT and the end
    sender_cpu: float  # CPU seconds of the sender's transfer (ours: without start-up)
    receiver_cpu: float
    note: str = ""

    @property
    def capacity(self) -> float:
        return BAUD / BITS_PER_BYTE

    @property
    def data_share(self) -> float:
        return self.size / self.data_seconds / self.capacity

    @property
    def session_share(self) -> float:
        return self.size / self.session_seconds / self.capacity

    @property
    def throughput(self) -> float:
        return self.size / self.data_seconds

    @property
    def turnaround_ms(self) -> float:
        idle = self.data_seconds - self.data_wire / self.capacity
        return idle / self.blocks * 1e3


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure_line(cable: Cable, size: int) -> float:
    """The line's own ceiling: ``size`` random bytes written at once on ``a`` and read on
    ``b``, no protocol; bytes / time between the first and the last byte delivered, over
    baud / 10. It shows how close to nominal the simulator paces."""
    from firmware_tools.ymodem import open_port

    data = os.urandom(size)
    received = bytearray()

    def read(far: Any) -> None:
        deadline = time.monotonic() + size / (cable.baud / BITS_PER_BYTE) * 2 + 10
        while len(received) < size and time.monotonic() < deadline:
            received.extend(far.read(size - len(received)))

    with open_port(cable.a, baudrate=cable.baud) as near, open_port(cable.b) as far:
        recorder = Recorder(cable)
        try:
            reader = threading.Thread(target=read, args=(far,), name="bench-line-reader")
            reader.start()
            near.write(data)
            reader.join()
            samples = recorder.finish()
        finally:
            recorder.stop()
    if bytes(received) != data:
        raise RuntimeError("the line did not deliver the bytes written to it")
    byte_time = BITS_PER_BYTE / cable.baud
    last = crossing(samples, size, 1, busy="before", byte_time=byte_time)
    seconds = last - crossing(samples, 1, 1, busy="after", byte_time=byte_time)
    return (size - 1) / seconds / (cable.baud / BITS_PER_BYTE)


def run_ymodem(cable: Cable, competitor: str, source: Path, inbox: Path, number: int) -> YRun:
    """One transfer of ``source`` over ``cable`` by ``competitor``, timed on the line."""
    from _serial import Peer

    sender_kind, receiver_kind = competitor.split(" -> ")
    inbox.mkdir(parents=True)
    size = source.stat().st_size
    recorder = Recorder(cable)
    sender: Any
    receiver: Any
    stack = contextlib.ExitStack()
    stack.callback(recorder.stop)  # also when a transfer fails
    with stack:
        # The sender first, ready before the receiver's first 'C' (pyserial's open() drops
        # what is waiting): the wait for it is before the first byte on the line, not timed.
        if sender_kind == "sb -k":
            sender = stack.enter_context(
                Peer(["sb", "-k", source.name], cable.a, cwd=source.parent)
            )
            time.sleep(0.2)  # sb puts its tty in raw mode first
        else:
            pause = ["0"] if sender_kind == "ours (pause 0)" else []
            sender = Child(
                this_script("ymodem-send", cable.a, str(source), *pause),
                log=inbox / "sender.err",
            )
            stack.callback(sender.end)
            sender.wait_ready(30)
        if receiver_kind == "rb":
            receiver = stack.enter_context(Peer(["rb"], cable.b, cwd=inbox))
        else:
            receiver = Child(
                this_script("ymodem-receive", cable.b, str(inbox)), log=inbox / "receiver.err"
            )
            stack.callback(receiver.end)
            receiver.wait_ready(30)
        limit = size / (BAUD / BITS_PER_BYTE) * 2 + 60
        # lrzsz's CPU time from the kernel's count for reaped children; ours say theirs.
        cpu = _children_cpu()
        got_receiver = receiver.wait(limit)
        receiver_done = time.monotonic()
        receiver_cpu = _children_cpu() - cpu
        note = ""
        got_sender: int | None
        try:
            got_sender = sender.wait(SENDER_GRACE)
        except subprocess.TimeoutExpired:
            # Peer.wait has ended sb. rb resets the tty as it exits and its last ACK (of the
            # empty block 0 ending the batch) is then often lost on a pty (NOTES.md): sb waits
            # for it, and sends that block again, for tens of seconds. Every block of the file
            # was acknowledged before; the file is checked below.
            got_sender = 0 if sender_kind == "sb -k" and got_receiver == 0 else None
            note = f"the receiver's last ACK was lost; {sender_kind} ended {SENDER_GRACE:g} s later"
        sender_cpu = _children_cpu() - cpu - receiver_cpu
        if isinstance(receiver, Child):
            receiver_cpu = receiver.cpu_seconds()
        if isinstance(sender, Child):
            sender_cpu = sender.cpu_seconds()
        samples = recorder.finish()
        # The session ends with the receiver: anything the sender repeats after it is gone is
        # no part of the transfer.
        samples = [s for s in samples if s[0] <= receiver_done + 0.3]
        if got_receiver != 0 or got_sender != 0:
            raise RuntimeError(
                f"{competitor}: sender exited {got_sender}, receiver {got_receiver}\n"
                f"sender: {_tail(sender)}\nreceiver: {_tail(receiver)}"
            )
    received = inbox / source.name
    if not received.is_file() or _digest(received) != _digest(source):
        raise RuntimeError(f"{competitor}: {received} is not what was sent")
    blocks, wire = data_frames(size)
    header = SHORT_FRAME  # block 0 of a short name fits 128 bytes, for sb and for us
    total_a, total_b = samples[-1][1], samples[-1][2]
    # Block 0 (11.5 ms at 115200) and every data block outlast a sampling interval, so the
    # line is busy up to the end of each and from the first byte on.
    start = crossing(samples, 1, 1, busy="after")
    data_start = crossing(samples, header, 1, busy="before")
    data_end = crossing(samples, header + wire, 1, busy="before")
    # The last bytes are single ACKs: interpolated (within a sampling interval, 10 ms).
    end = max(crossing(samples, total_a, 1), crossing(samples, total_b, 2))
    return YRun(
        competitor=competitor,
        round=number,
        size=size,
        data_seconds=data_end - data_start,
        session_seconds=end - start,
        blocks=blocks,
        data_wire=wire,
        extra_bytes=total_a - (header + wire + 1 + SHORT_FRAME),
        sender_cpu=sender_cpu,
        receiver_cpu=receiver_cpu,
        note=note,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(process: Any) -> str:
    text = process.stderr() if callable(process.stderr) else process.stderr
    return str(text)[-1500:]


# --------------------------------------------------------------------------- link


def make_release(folder: Path, key: Any, version: int, size: int) -> Any:
    """A signed release of a float32 MLP ``x[1, w] -> relu(x @ W + b)`` with ``w * w * 4``
    about ``size`` bytes of weights, fresh random weights per version, and its smoke test."""
    import _models
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edge_sdk import release as rel
    from edge_sdk.fleet import load_release

    width = max(16, int((size / 4) ** 0.5))
    model = onnx.load_from_string(_models.tiny_mlp(None, width=width))
    rng = np.random.default_rng(version)
    weights = rng.standard_normal((width, width)).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32)
    for tensor in model.graph.initializer:
        value = weights if tensor.name == "W" else bias
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32).reshape(1, width)
    expected = np.maximum(x @ weights + bias, 0.0).astype(np.float32)
    path = folder / f"bench-mlp-{version}.onnx"
    path.write_bytes(model.SerializeToString())
    smoke = rel.SmokeTest.from_arrays({"x": x}, {"y": expected})
    manifest = rel.build_manifest(path, "bench-mlp", version, smoke_test=smoke)
    target = folder / f"bench-mlp-{version}.manifest.json"
    target.write_text(rel.sign(manifest, key).to_json() + "\n")
    return load_release(target)


AGENT_TOML = """\
device_id = "bench-device"
fleet = "bench"
groups = ["bench"]
# Required by agent.toml; a device on a cable never connects to it.
broker = "mqtt://127.0.0.1:1"
store = "store"
trusted_keys = ["fleet.pub"]
profile = "none"
smoke_runs = 1
telemetry_interval = 3600
"""


class LinkRig:
    """A cable at ``baud`` with a device process on ``b`` and a host endpoint on ``a``."""

    def __init__(self, folder: Path, kind: str, baud: int, public_key: Any) -> None:
        from firmware_tools.link import LinkEndpoint
        from firmware_tools.ymodem import open_port

        self.kind, self.baud = kind, baud
        self._stack = contextlib.ExitStack()
        try:
            self.cable = Cable(folder, f"{kind}{baud}", baud)
            self._stack.callback(self.cable.close)
            log = folder / f"{kind}{baud}-device.log"
            if kind == "bulk":
                self.device = Child(this_script("link-echo", self.cable.b, str(baud)), log=log)
            else:
                from edge_sdk import release as rel

                device = folder / f"device{baud}"
                device.mkdir()
                (device / "fleet.pub").write_text(rel.public_key_to_base64(public_key) + "\n")
                (device / "agent.toml").write_text(AGENT_TOML)
                argv = [sys.executable, "-m", "edge_sdk", "serial", "serve", "--port"]
                argv += [self.cable.b, "--baud", str(baud), "--config", str(device / "agent.toml")]
                argv += ["--log-level", "warning"]
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(REPO), env.get("PYTHONPATH")])
                )
                self.device = Child(argv, log=log, env=env)
            self._stack.callback(self.device.end)
            self.port = open_port(self.cable.a, baudrate=baud)
            self._stack.callback(self.port.close)
            self.link = LinkEndpoint(self.port, role="host").open()
            self._stack.callback(self.link.close)
        except BaseException:
            self._stack.close()
            raise

    def connect(self) -> None:
        from firmware_tools.errors import LinkTimeoutError

        try:
            self.link.connect(60)
        except LinkTimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.device.stderr()[-2000:]}") from exc

    def close(self) -> None:
        self._stack.close()


@dataclasses.dataclass(frozen=True)
class BulkRun:
    baud: int
    round: int
    payload: int
    seconds: float
    wire_bytes: int
    retransmissions: int

    @property
    def share(self) -> float:
        return self.payload / self.seconds / (self.baud / BITS_PER_BYTE)

    @property
    def wire_share(self) -> float:
        return self.payload / self.wire_bytes


@dataclasses.dataclass(frozen=True)
class PushRun:
    baud: int
    round: int
    size: int
    begin_seconds: float  # push.begin: the manifest up, the device's verification, its reply
    chunk_seconds: float  # from the reply to push.begin to the last chunk acknowledged
    finish_seconds: float  # push.finish: hash, load, smoke test, activate; the reply
    wire_bytes: int  # written by the host for the whole push (manifest, chunks, finish)
    chunk_wire_bytes: int  # written in the chunk phase
    retransmissions: int
    state: str

    @property
    def capacity(self) -> float:
        return self.baud / BITS_PER_BYTE

    @property
    def total_seconds(self) -> float:
        return self.begin_seconds + self.chunk_seconds + self.finish_seconds

    @property
    def chunk_share(self) -> float:
        return self.size / self.chunk_seconds / self.capacity

    @property
    def transfer_share(self) -> float:
        return self.size / (self.begin_seconds + self.chunk_seconds) / self.capacity

    @property
    def total_share(self) -> float:
        return self.size / self.total_seconds / self.capacity


def run_bulk(rig: LinkRig, size: int, number: int) -> BulkRun:
    from firmware_tools.link import measure_bulk

    result = measure_bulk(rig.link, total=size, request_size=1024, baudrate=rig.baud)
    return BulkRun(
        rig.baud, number, size, result.seconds, result.wire_bytes, result.retransmissions
    )


def run_push(rig: LinkRig, release: Any, number: int) -> PushRun:
    from edge_sdk.cli.serial import push_release

    marks: dict[str, float] = {}
    sent: dict[str, int] = {}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if "begin" not in marks:  # the first call comes once push.begin is answered
            marks["begin"] = now
            sent["begin"] = rig.link.stats().bytes_sent
        if done >= total and "chunks" not in marks:
            marks["chunks"] = now
            sent["chunks"] = rig.link.stats().bytes_sent

    before = rig.link.stats()
    started = time.monotonic()
    result = push_release(rig.link, release, progress=progress)
    ended = time.monotonic()
    after = rig.link.stats()
    if not result.ok:
        raise RuntimeError(f"push of v{release.manifest.version}: {result.state} {result.reason}")
    return PushRun(
        baud=rig.baud,
        round=number,
        size=release.manifest.size,
        begin_seconds=marks["begin"] - started,
        chunk_seconds=marks["chunks"] - marks["begin"],
        finish_seconds=ended - marks["chunks"],
        wire_bytes=after.bytes_sent - before.bytes_sent,
        chunk_wire_bytes=sent["chunks"] - sent["begin"],
        retransmissions=after.retransmissions - before.retransmissions,
        state=result.state,
    )


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Config:
    size: int
    rounds: int
    ablation: bool
    parts: tuple[str, ...]
    quick: bool


@dataclasses.dataclass
class Results:
    line_share: float | None = None
    ymodem: list[YRun] = dataclasses.field(default_factory=list)
    bulk: list[BulkRun] = dataclasses.field(default_factory=list)
    push: list[PushRun] = dataclasses.field(default_factory=list)


def rotate(items: Sequence[Any], r: int) -> list[Any]:
    if not items:
        return []
    shift = r % len(items)
    return list(items[shift:]) + list(items[:shift])


def run(config: Config, work: Path) -> Results:
    results = Results()
    competitors = [OURS_SEND, OURS_RECEIVE, REFERENCE, OURS_BOTH]
    if config.ablation:
        competitors.append(ABLATION)
    with contextlib.ExitStack() as stack:
        ycable: Cable | None = None
        if "ymodem" in config.parts:
            ycable = Cable(work, "ymodem", BAUD)
            stack.callback(ycable.close)
            results.line_share = measure_line(ycable, min(config.size, 64 * KIB))
            print(f"the line itself: {results.line_share:.2%} of {BAUD} baud / 10", flush=True)
        rigs: list[LinkRig] = []
        key: Any = None
        if "link" in config.parts:
            from edge_sdk import release as rel

            key, public = rel.generate_keypair()
            for baud in LINK_BAUDS:
                for kind in ("bulk", "push"):
                    rig = LinkRig(work, kind, baud, public)
                    stack.callback(rig.close)
                    rigs.append(rig)
            for rig in rigs:
                rig.connect()
            (work / "releases").mkdir()
        version = 0
        for r in range(config.rounds):
            number = r + 1
            if ycable is not None:
                source = work / f"round{number}" / f"round-{number}.bin"
                source.parent.mkdir(parents=True)
                source.write_bytes(os.urandom(config.size))
                for competitor in rotate(competitors, r):
                    slug = competitor.replace(" ", "").replace("->", "-to-").replace("(", "")
                    slug = slug.replace(")", "")
                    inbox = source.parent / f"to-{slug}"
                    result = run_ymodem(ycable, competitor, source, inbox, number)
                    results.ymodem.append(result)
                    print(
                        f"round {number}: {competitor:<22} data {result.data_share:7.2%}  "
                        f"session {result.session_share:7.2%}  turnaround "
                        f"{result.turnaround_ms:5.2f} ms/block  CPU ms/block "
                        f"{result.sender_cpu / result.blocks * 1e3:.2f}, "
                        f"{result.receiver_cpu / result.blocks * 1e3:.2f}"
                        + (f"  ({result.extra_bytes:+d} bytes)" if result.extra_bytes else "")
                        + (f"  ({result.note})" if result.note else ""),
                        flush=True,
                    )
            for rig in rotate(rigs, r):
                if rig.kind == "bulk":
                    bulk = run_bulk(rig, config.size, number)
                    results.bulk.append(bulk)
                    print(
                        f"round {number}: link bulk {rig.baud:>6} baud  {bulk.share:7.2%} of the "
                        f"line, payload/written {bulk.wire_share:.2%}",
                        flush=True,
                    )
                else:
                    version += 1
                    release = make_release(work / "releases", key, version, config.size)
                    push = run_push(rig, release, number)
                    results.push.append(push)
                    print(
                        f"round {number}: model push {rig.baud:>6} baud  chunks "
                        f"{push.chunk_share:7.2%}, push.begin to push.finish "
                        f"{push.total_share:7.2%}, finish {push.finish_seconds:.2f} s",
                        flush=True,
                    )
    return results


# --------------------------------------------------------------------------- reporting


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percent(value: float) -> str:
    return f"{value * 100:.2f} %"


def ymodem_rows(results: Results) -> list[dict[str, Any]]:
    by: dict[str, list[YRun]] = {}
    for run_ in results.ymodem:
        by.setdefault(run_.competitor, []).append(run_)
    reference = {r.round: r for r in by.get(REFERENCE, [])}
    rows = []
    order = [OURS_SEND, OURS_RECEIVE, OURS_BOTH, REFERENCE, ABLATION]
    for name in [n for n in order if n in by]:
        runs = by[name]
        ratios = [
            r.throughput / reference[r.round].throughput for r in runs if r.round in reference
        ]
        share = _median([r.data_share for r in runs])
        rows.append(
            {
                "competitor": name,
                "throughput": _median([r.throughput for r in runs]),
                "share": share,
                "shares": [r.data_share for r in runs],
                "ratio": _median(ratios),
                "turnaround_ms": _median([r.turnaround_ms for r in runs]),
                "session_share": _median([r.session_share for r in runs]),
                "cpu_ms": (
                    _median([r.sender_cpu / r.blocks * 1e3 for r in runs]),
                    _median([r.receiver_cpu / r.blocks * 1e3 for r in runs]),
                ),
                "extra_bytes": sum(r.extra_bytes for r in runs),
                "target": (share >= TARGET) if name in JUDGED else None,
            }
        )
    return rows


def report(config: Config, results: Results, header: str) -> tuple[str, bool]:
    lines = [header]
    ok = True
    if results.ymodem:
        size = results.ymodem[0].size
        blocks, _ = data_frames(size)
        lines += [
            "",
            f"**YMODEM-1K at {BAUD} baud** ({size // KIB} KiB of random bytes, {blocks} data "
            f"blocks; line rate {BAUD // BITS_PER_BYTE} B/s; median of {config.rounds} "
            "round(s)). The line itself, a stream of raw bytes without a protocol, ran at "
            f"{_percent(results.line_share or float('nan'))} of that.",
            "",
            "| sender -> receiver | data phase B/s | share of line rate | per round | "
            "/ lrzsz-to-lrzsz (paired) | turnaround ms/block | CPU ms/block sender, receiver | "
            f"session share | target >= {TARGET:.0%} |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in ymodem_rows(results):
            verdict = {True: "PASS", False: "FAIL", None: "-"}[row["target"]]
            if row["target"] is False:
                ok = False
            name = row["competitor"]
            if name == ABLATION:
                name += " (ablation)"
            elif name == REFERENCE:
                name += " (reference)"
            shares = ", ".join(f"{s * 100:.2f}" for s in row["shares"])
            lines.append(
                f"| {name} | {row['throughput']:.0f} | {_percent(row['share'])} | {shares} | "
                f"{row['ratio']:.3f} | {row['turnaround_ms']:.2f} | "
                f"{row['cpu_ms'][0]:.2f}, {row['cpu_ms'][1]:.2f} | "
                f"{_percent(row['session_share'])} | {verdict} |"
            )
            if row["extra_bytes"]:
                lines[-1] += f" ({row['extra_bytes']} bytes re-sent)"
        notes = [r for r in results.ymodem if r.note]
        if notes:
            lines.append("")
        for r in notes:
            lines.append(f"Round {r.round}, {r.competitor}: {r.note} (the file arrived whole).")
    if results.bulk or results.push:
        lines += [
            "",
            "**Link** (firmware_tools.link, 1 KiB frames, window 8; share = payload bytes / "
            "(baud / 10) / time):",
            "",
            "| case | baud | share of line rate | per round | payload / bytes written | "
            "retransmissions |",
            "| --- | ---: | ---: | --- | ---: | ---: |",
        ]
        for baud in LINK_BAUDS:
            runs = [b for b in results.bulk if b.baud == baud]
            if runs:
                shares = ", ".join(f"{b.share * 100:.2f}" for b in runs)
                lines.append(
                    f"| raw bulk ({runs[0].payload // KIB} KiB in 1 KiB requests) | {baud} | "
                    f"{_percent(_median([b.share for b in runs]))} | {shares} | "
                    f"{_percent(_median([b.wire_share for b in runs]))} | "
                    f"{sum(b.retransmissions for b in runs)} |"
                )
        for baud in LINK_BAUDS:
            pushes = [p for p in results.push if p.baud == baud]
            if pushes:
                shares = ", ".join(f"{p.chunk_share * 100:.2f}" for p in pushes)
                lines.append(
                    f"| model push, chunk phase ({pushes[0].size:,} B) | {baud} | "
                    f"{_percent(_median([p.chunk_share for p in pushes]))} | {shares} | "
                    f"{_percent(_median([p.size / p.chunk_wire_bytes for p in pushes]))} | "
                    f"{sum(p.retransmissions for p in pushes)} |"
                )
        if results.push:
            lines += [
                "",
                "Model push end to end (`push_release` on an open link; median seconds):",
                "",
                "| baud | push.begin s | chunks s | push.finish s (hash, load, smoke test, "
                "activate) | begin + chunks share | push.begin to push.finish share |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for baud in LINK_BAUDS:
                pushes = [p for p in results.push if p.baud == baud]
                if pushes:
                    lines.append(
                        f"| {baud} | {_median([p.begin_seconds for p in pushes]):.2f} | "
                        f"{_median([p.chunk_seconds for p in pushes]):.2f} | "
                        f"{_median([p.finish_seconds for p in pushes]):.2f} | "
                        f"{_percent(_median([p.transfer_share for p in pushes]))} | "
                        f"{_percent(_median([p.total_share for p in pushes]))} |"
                    )
    return "\n".join(lines), ok


def write_readme(text: str) -> None:
    readme = BENCH / "README.md"
    content = readme.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in content:
        start, end = content.index(BEGIN), content.index(END) + len(END)
        content = content[:start] + block + content[end:]
    else:
        heading = "Latest results (written by `bench/serial.py --write-readme`):"
        content += f"\n## serial.py\n\n{heading}\n\n{block}\n"
    readme.write_text(content)


def _versions() -> str:
    from importlib.metadata import version

    parts = [f"Python {platform.python_version()}", f"pyserial {version('pyserial')}"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["sb", "--version"], check=False, capture_output=True, text=True, timeout=5
        )
        parts.append((out.stdout or out.stderr).strip().splitlines()[0])
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run(
            ["socat", "-V"], check=False, capture_output=True, text=True, timeout=5
        )
        line = next(x for x in out.stdout.splitlines() if "socat version" in x)
        parts.append("socat " + line.split("socat version", 1)[1].split()[0])
    return ", ".join(parts)


def to_json(config: Config, results: Results, header: str) -> dict[str, Any]:
    return {
        "header": header,
        "config": dataclasses.asdict(config),
        "ymodem": [
            {**dataclasses.asdict(r), "data_share": r.data_share, "session_share": r.session_share}
            for r in results.ymodem
        ],
        "bulk": [{**dataclasses.asdict(b), "share": b.share} for b in results.bulk],
        "push": [{**dataclasses.asdict(p), "chunk_share": p.chunk_share} for p in results.push],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 KiB, 1 round, no ablation (CI)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--size-kib", type=int, default=256, help="file and model size (256)")
    parser.add_argument("--part", choices=("all", "ymodem", "link"), default="all")
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the ours (pause 0) -> rb runs"
    )
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every run as JSON")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    for program in ("socat", "sb", "rb"):
        if shutil.which(program) is None:
            print(f"bench/serial.py: {program} is not installed (apt-get install socat lrzsz)")
            return 1
    parts = ("ymodem", "link") if args.part == "all" else (args.part,)
    if args.quick:
        config = Config(16 * KIB, 1, False, parts, True)
    else:
        config = Config(args.size_kib * KIB, args.rounds, not args.no_ablation, parts, False)
    header = (
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core {platform.machine()} (shared VM), "
        f"{_versions()}; two socat pty pairs joined by LineSimulatorProcess (8N1: 10 bits a "
        f"byte, 1 ms delivery granularity, no impairments); {config.size // KIB} KiB, "
        f"{config.rounds} interleaved round(s){' (--quick)' if config.quick else ''}."
    )
    print(header, flush=True)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
        results = run(config, work)
    else:
        with tempfile.TemporaryDirectory(prefix="edge-sdk-bench-serial-") as tmp:
            results = run(config, Path(tmp))
    text, ok = report(config, results, header)
    print()
    print(text)
    print(f"\n{'PASS: every target met' if ok else 'FAIL: a target missed'}")
    if config.quick:
        print(f"(--quick: {config.size // KIB} KiB; the targets are judged on the full run)")
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(config, results, header), indent=2) + "\n")
    if args.write_readme:
        write_readme(text)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
