"""The line simulator (firmware_tools/linesim.py) between two real socat pty pairs.

References: a UART frame of 8N1 is 10 bits (start, 8 data, stop), so 115200 baud carries
11520 bytes/s; the timing tolerance (3 %) is what a shared 2-core CI machine keeps (measured:
0.1-0.5 %).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from _serial import PtyPair

from firmware_tools.errors import PortError
from firmware_tools.linesim import LineSimulator, LineSimulatorProcess, LineStats

TOLERANCE = 0.03


@pytest.fixture
def pairs(tmp_path: Path) -> Iterator[tuple[PtyPair, PtyPair]]:
    with PtyPair(tmp_path, "one") as one, PtyPair(tmp_path, "two") as two:
        yield one, two


@pytest.fixture
def ports(pairs: tuple[PtyPair, PtyPair]) -> Iterator[tuple[serial.Serial, serial.Serial]]:
    one, two = pairs
    # Opened before anything is written: pyserial's open() discards pending input (NOTES.md).
    host = serial.Serial(one.a, timeout=0.05)
    device = serial.Serial(two.a, timeout=0.05)
    yield host, device
    host.close()
    device.close()


@pytest.fixture(autouse=True)
def _no_simulator_thread_left() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("linesim ")]
    assert not left, f"line simulator threads still running: {left}"


def read_exactly(port: serial.Serial, n: int, timeout: float) -> tuple[bytes, float]:
    """Read ``n`` bytes (or what came before ``timeout``); return them and when the last came."""
    data = bytearray()
    last = time.monotonic()
    deadline = last + timeout
    while len(data) < n and time.monotonic() < deadline:
        chunk = port.read(min(max(1, port.in_waiting), n - len(data)))
        if chunk:
            data += chunk
            last = time.monotonic()
    return bytes(data), last


def read_until_quiet(port: serial.Serial, quiet: float = 0.3, limit: float = 20.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + limit
    silent_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - silent_since < quiet:
        chunk = port.read(max(1, port.in_waiting))
        if chunk:
            data += chunk
            silent_since = time.monotonic()
    return bytes(data)


def timed_transfer(
    sender: serial.Serial, receiver: serial.Serial, data: bytes, timeout: float
) -> tuple[bytes, float]:
    box: dict[str, tuple[bytes, float]] = {}
    reader = threading.Thread(
        target=lambda: box.setdefault("r", read_exactly(receiver, len(data), timeout))
    )
    reader.start()
    start = time.monotonic()
    sender.write(data)
    reader.join()
    got, last = box["r"]
    return got, last - start


def test_pacing_115200_20kb(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    data = os.urandom(20_000)
    with LineSimulator(one.b, two.b, baud=115200) as line:
        got, elapsed = timed_transfer(host, device, data, timeout=10)
    nominal = 20_000 * 10 / 115200
    assert got == data
    assert abs(elapsed - nominal) / nominal < TOLERANCE, (elapsed, nominal)
    assert line.stats.a_to_b.forwarded == 20_000


def test_both_directions_at_921600_no_loss_no_reordering(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    n = 100_000
    # A counter pattern: a lost, repeated or reordered byte shows as a break in it.
    forward = bytes(i % 251 for i in range(n))
    backward = bytes((i * 7) % 253 for i in range(n))
    box: dict[str, tuple[bytes, float]] = {}
    with LineSimulator(one.b, two.b, baud=921600) as line:
        other = threading.Thread(
            target=lambda: box.setdefault("back", timed_transfer(device, host, backward, 10))
        )
        other.start()
        got, elapsed = timed_transfer(host, device, forward, 10)
        other.join()
        stats = line.stats
    nominal = n * 10 / 921600
    assert got == forward
    assert box["back"][0] == backward
    for took in (elapsed, box["back"][1]):
        assert abs(took - nominal) / nominal < TOLERANCE, (took, nominal)
    assert stats.a_to_b.forwarded == stats.b_to_a.forwarded == n
    assert stats.a_to_b.queued == stats.b_to_a.queued == 0


def test_a_single_byte_arrives_after_its_time_on_the_wire_plus_latency(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    with LineSimulator(one.b, two.b, baud=1200, latency=0.05) as line:
        got, elapsed = timed_transfer(host, device, b"C", timeout=2)
        assert got == b"C"
        # 10 bits at 1200 baud (8.3 ms) plus 50 ms, delivered within a few ms after.
        assert 10 / 1200 + 0.05 <= elapsed < 10 / 1200 + 0.05 + 0.03
        line.configure(latency=0.0, baud=115200)
        got, elapsed = timed_transfer(device, host, b"\x06", timeout=2)
        assert got == b"\x06"
        assert elapsed < 0.03


def test_drops_are_at_the_rate_and_reproducible_with_a_seed(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    n, rate = 20_000, 0.05
    data = bytes(i % 256 for i in range(n))
    runs = []
    for _ in range(2):
        with LineSimulator(one.b, two.b, baud=921600, drop_rate=rate, seed=1234) as line:
            host.write(data)
            got = read_until_quiet(device)
            stats = line.stats.a_to_b
        runs.append(got)
        assert stats.received == n
        assert stats.dropped + stats.forwarded == n
        assert stats.corrupted == 0
        assert len(got) == stats.forwarded
        # Binomial(n, p): mean 1000, sigma about 31; 5 sigma either way.
        sigma = (n * rate * (1 - rate)) ** 0.5
        assert abs(stats.dropped - n * rate) < 5 * sigma, stats
        # Only drops: what arrived is the data with bytes left out, in order.
        it = iter(data)
        assert all(byte in it for byte in got)
    assert runs[0] == runs[1], "the same seed must drop the same bytes"


def test_corruption_flips_exactly_one_bit_per_corrupted_byte(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    n, rate = 20_000, 0.02
    data = os.urandom(n)
    with LineSimulator(one.b, two.b, baud=921600, corrupt_rate=rate, seed=99) as line:
        host.write(data)
        got, _ = read_exactly(device, n, timeout=5)
        stats = line.stats.a_to_b
    assert len(got) == n
    flipped = [bin(x ^ y).count("1") for x, y in zip(data, got, strict=True) if x != y]
    assert set(flipped) == {1}
    assert len(flipped) == stats.corrupted
    sigma = (n * rate * (1 - rate)) ** 0.5
    assert abs(stats.corrupted - n * rate) < 5 * sigma, stats
    assert stats.forwarded == n and stats.dropped == 0


def test_rates_change_at_runtime(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    with LineSimulator(one.b, two.b, baud=921600, seed=5) as line:
        line.configure(drop_rate=1.0)
        host.write(b"x" * 500)
        assert read_until_quiet(device, quiet=0.15) == b""
        assert line.stats.a_to_b.dropped == 500
        line.configure(drop_rate=0.0, baud=19200)
        assert line.baud == 19200
        got, elapsed = timed_transfer(host, device, b"y" * 480, timeout=3)
        assert got == b"y" * 480
        nominal = 480 * 10 / 19200
        assert abs(elapsed - nominal) / nominal < 0.1, (elapsed, nominal)
        with pytest.raises(ValueError, match="drop_rate"):
            line.configure(drop_rate=1.5)
        with pytest.raises(ValueError, match="at most 1"):
            line.configure(drop_rate=0.6, corrupt_rate=0.6)


def test_cut_discards_in_flight_and_written_bytes_then_restore_reconnects(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    with LineSimulator(one.b, two.b, baud=9600) as line:
        host.write(b"a" * 200)  # about 208 ms on the wire
        time.sleep(0.05)
        line.cut()
        assert line.is_cut
        time.sleep(0.05)
        host.write(b"b" * 100)  # written into a pulled cable: lost, and the writer not blocked
        device.write(b"c" * 100)
        arrived = read_until_quiet(device, quiet=0.2)
        assert 0 < len(arrived) < 200 and set(arrived) == {ord("a")}
        assert read_until_quiet(host, quiet=0.05) == b""
        stats = line.stats
        assert stats.a_to_b.received == 300
        assert stats.a_to_b.forwarded + stats.a_to_b.discarded == 300
        assert stats.b_to_a.discarded == 100
        line.restore()
        assert not line.is_cut
        got, _ = timed_transfer(host, device, b"after", timeout=2)
        assert got == b"after"


def test_cut_one_direction(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    with LineSimulator(one.b, two.b, baud=115200) as line:
        line.cut("a_to_b")
        host.write(b"lost")
        device.write(b"kept")
        assert read_exactly(host, 4, timeout=2)[0] == b"kept"
        assert read_until_quiet(device, quiet=0.1) == b""
        line.restore("a_to_b")
        host.write(b"back")
        assert read_exactly(device, 4, timeout=2)[0] == b"back"
        with pytest.raises(ValueError, match="direction"):
            line.cut("sideways")  # type: ignore[arg-type]


def test_a_fast_writer_is_held_back_by_the_buffer(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    with LineSimulator(one.b, two.b, baud=9600, buffer=512) as line:
        writer = threading.Thread(target=host.write, args=(b"z" * 60_000,))
        writer.start()
        time.sleep(0.3)
        stats = line.stats.a_to_b
        # The simulator holds at most 512 bytes; the rest waits in the pty buffers.
        assert stats.queued <= 512
        assert stats.received < 60_000
        line.cut()  # reads and discards: the writer finishes
        writer.join(10)
        assert not writer.is_alive()
    read_until_quiet(device, quiet=0.05)


def test_closed_simulator_stops_forwarding_and_refuses_use(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    line = LineSimulator(one.b, two.b, baud=115200)
    line.close()
    line.close()  # idempotent
    assert line.closed
    host.write(b"nobody")
    assert read_until_quiet(device, quiet=0.1) == b""
    with pytest.raises(RuntimeError, match="closed"):
        line.cut()
    with pytest.raises(RuntimeError, match="closed"), line:
        pass


def test_a_missing_pty_is_a_port_error(tmp_path: Path) -> None:
    with pytest.raises(PortError) as info:
        LineSimulator(str(tmp_path / "nope-a"), str(tmp_path / "nope-b"))
    assert info.value.port.endswith("nope-a")
    with pytest.raises(ValueError, match="baud"):
        LineSimulator(str(tmp_path / "a"), str(tmp_path / "b"), baud=0)


def test_an_end_that_disappears_stops_the_simulator_with_a_port_error(tmp_path: Path) -> None:
    with PtyPair(tmp_path, "one") as one, PtyPair(tmp_path, "two") as two:
        line = LineSimulator(one.b, two.b, baud=115200)
        two.close()  # socat ends: the simulator's end of pair two goes away
        deadline = time.monotonic() + 5
        while line.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(line.error, PortError)
        line.close()


def test_in_a_child_process(
    pairs: tuple[PtyPair, PtyPair], ports: tuple[serial.Serial, serial.Serial]
) -> None:
    one, two = pairs
    host, device = ports
    data = os.urandom(50_000)
    with LineSimulatorProcess(one.b, two.b, baud=921600, seed=3) as line:
        pid = line.pid
        assert line.seed == 3
        got, elapsed = timed_transfer(host, device, data, timeout=10)
        assert got == data
        nominal = len(data) * 10 / 921600
        assert abs(elapsed - nominal) / nominal < TOLERANCE * 2, (elapsed, nominal)
        line.cut()
        host.write(b"gone")
        assert read_until_quiet(device, quiet=0.1) == b""
        line.restore()
        line.configure(corrupt_rate=1.0)
        host.write(b"\x00")
        assert bin(read_exactly(device, 1, 2)[0][0]).count("1") == 1
        with pytest.raises(ValueError, match="corrupt_rate"):
            line.configure(corrupt_rate=2.0)
        assert line.drain(2)
        stats = line.stats
    assert isinstance(stats, LineStats)
    assert stats.a_to_b.forwarded == 50_001 and stats.a_to_b.discarded == 4
    assert line.process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_child_process_reports_a_missing_pty(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="nope"):
        LineSimulatorProcess(str(tmp_path / "nope-a"), str(tmp_path / "nope-b"))


def test_child_process_ends_when_its_parent_lets_go(pairs: tuple[PtyPair, PtyPair]) -> None:
    one, two = pairs
    line = LineSimulatorProcess(one.b, two.b)
    assert line.process.stdin is not None
    line.process.stdin.close()  # as when the parent dies
    assert line.process.wait(5) == 0
    assert line.close() is None
