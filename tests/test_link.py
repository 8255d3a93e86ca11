"""firmware_tools.link: the framed request/response link (docs/serial-link.md).

References: COBS, Cheshire and Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM
Transactions on Networking 7(2), 1999 (the encoding and its examples); CRC-32 as in IEEE
802.3 / zlib (check value 0xCBF43926 for "123456789"); selective repeat with cumulative and
selective acknowledgements as in TCP SACK (RFC 2018).

Real peers: every link test runs two endpoints on real socat pty pairs (tests/_serial.py),
through firmware_tools.linesim where the line's timing, losses or a cable pull matter.

Run as a script for the efficiency figures of docs/serial-link.md (256 KiB in 1 KiB requests
at 115200 and 921600 baud, line simulator in its own process):

    .venv-dev/bin/python tests/test_link.py
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from _serial import PtyPair

from firmware_tools import _cobs, link
from firmware_tools.errors import (
    FrameError,
    LinkClosedError,
    LinkTimeoutError,
    PortError,
    RemoteError,
    RequestTimeoutError,
    SessionResetError,
    VersionMismatchError,
)
from firmware_tools.linesim import LineSimulator, LineSimulatorProcess
from firmware_tools.link import (
    Frame,
    FrameDecoder,
    FrameType,
    LinkEndpoint,
    LinkSettings,
    decode_frame,
    encode_frame,
    measure_bulk,
    negotiate_version,
)

# The worked examples of docs/serial-link.md, byte for byte.
DOC_REQUEST_FRAME = bytes.fromhex(
    "04 01 02 03 05 11 22 33 44 01 01 01 01 02 01 0b 05 04 69 6e 66 6f b1 cb d0 f4 00"
)
DOC_ACK_FRAME = bytes.fromhex(
    "03 01 03 01 05 55 66 77 88 01 01 02 03 01 01 07 01 05 79 65 7a 63 00"
)
DOC_HELLO_FRAME = bytes.fromhex(
    "03 01 01 01 05 11 22 33 44 01 01 01 01 01 01 02 0e 01 01 01 02 04 01 02 08 02 40 01 07 01 01"
    " 0f c9 ae cd 00"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_link_thread_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith(("link-", "linesim"))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


class Line:
    """A host port and a device port joined by socat, or by two socat pairs and the line
    simulator (paced at ``baud``, lossy, cuttable) when ``baud`` is given."""

    def __init__(self, host_port: serial.Serial, device_port: serial.Serial) -> None:
        self.host_port = host_port
        self.device_port = device_port
        self.sim: LineSimulator | None = None
        self._ends: tuple[str, str] | None = None
        self._options: dict[str, Any] = {}

    def reopen_proxy(self, after: float) -> None:
        """The proxy is closed (the cable pulled) and started again ``after`` seconds later."""
        assert self.sim is not None and self._ends is not None
        self.sim.close()
        time.sleep(after)
        self.sim = LineSimulator(*self._ends, **self._options)


@contextlib.contextmanager
def serial_line(tmp_path: Path, baud: int | None = None, **impairments: Any) -> Iterator[Line]:
    if baud is None:
        with PtyPair(tmp_path, "bare") as pair:
            # Ptys ignore the baud rate; 921600 sets the endpoints' derived timeouts.
            host_port = serial.Serial(pair.a, 921600)
            device_port = serial.Serial(pair.b, 921600)
            try:
                yield Line(host_port, device_port)
            finally:
                host_port.close()
                device_port.close()
        return
    with PtyPair(tmp_path, "host") as one, PtyPair(tmp_path, "device") as two:
        host_port = serial.Serial(one.a, baud)
        device_port = serial.Serial(two.a, baud)
        line = Line(host_port, device_port)
        line._ends = (one.b, two.b)
        line._options = {"baud": baud, "seed": 7, **impairments}
        line.sim = LineSimulator(one.b, two.b, **line._options)
        try:
            yield line
        finally:
            line.sim.close()
            host_port.close()
            device_port.close()


def _pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class Device:
    """A device-side handler: echo, reverse, sized responses, refusals, a chunk store."""

    def __init__(self) -> None:
        self.chunks: dict[int, bytes] = {}
        self.seen = threading.Event()
        self.release = threading.Event()

    def __call__(self, kind: str, payload: bytes) -> bytes:
        if kind == "echo":
            return payload
        if kind == "rev":
            return payload[::-1]
        if kind == "sized":
            return _pattern(int(payload))
        if kind == "put":
            (index,) = struct.unpack_from(">I", payload)
            self.chunks[index] = payload[4:]
            return b""
        if kind == "bulk":
            return b""
        if kind == "refuse":
            raise RemoteError("nope", payload.decode())
        if kind == "crash":
            raise ValueError("boom")
        if kind == "sleep":
            time.sleep(float(payload))
            return b"slept"
        if kind == "hold":
            self.seen.set()
            self.release.wait(10)
            return b"held"
        raise RemoteError("unknown_kind", kind)


@contextlib.contextmanager
def serving(
    port: serial.Serial,
    handler: Callable[[str, bytes], bytes],
    *,
    role: str = "device",
    settings: LinkSettings | None = None,
) -> Iterator[LinkEndpoint]:
    endpoint = LinkEndpoint(port, role="device" if role == "device" else "host", settings=settings)
    endpoint.open()
    thread = threading.Thread(target=endpoint.serve, args=(handler,), daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.close()
        thread.join(10)
        assert not thread.is_alive()


def _put_all(host: LinkEndpoint, data: bytes, chunk: int = 1024, depth: int = 8) -> None:
    waiting: list[Future[bytes]] = []
    for index, start in enumerate(range(0, len(data), chunk)):
        payload = struct.pack(">I", index) + data[start : start + chunk]
        waiting.append(host.submit("put", payload, timeout=60))
        if len(waiting) >= depth:
            assert waiting.pop(0).result() == b""
    for future in waiting:
        assert future.result() == b""


def _joined(chunks: dict[int, bytes]) -> bytes:
    return b"".join(chunks[i] for i in range(len(chunks)))


# --------------------------------------------------------------------------- COBS and frames


def test_cobs_examples_from_the_paper_and_its_usual_test_vectors() -> None:
    cases = {
        b"\x00": b"\x01\x01",
        b"\x00\x00": b"\x01\x01\x01",
        b"\x00\x11\x00": b"\x01\x02\x11\x01",
        b"\x11\x22\x00\x33": b"\x03\x11\x22\x02\x33",
        b"\x11\x22\x33\x44": b"\x05\x11\x22\x33\x44",
        b"\x11\x00\x00\x00": b"\x02\x11\x01\x01\x01",
        bytes(range(1, 255)): b"\xff" + bytes(range(1, 255)),
        bytes(range(0, 255)): b"\x01\xff" + bytes(range(1, 255)),
        bytes(range(1, 256)): b"\xff" + bytes(range(1, 255)) + b"\x02\xff",
        bytes(range(2, 256)) + b"\x00": b"\xff" + bytes(range(2, 256)) + b"\x01\x01",
    }
    for raw, encoded in cases.items():
        assert _cobs.encode(raw) == encoded
        assert _cobs.decode(encoded) == raw
    assert _cobs.decode(b"\x05\x11") is None  # a code byte past the end
    assert _cobs.decode(b"\x02\x00") is None  # a zero inside


@given(st.binary(max_size=2000))
@settings(deadline=None)
def test_cobs_round_trip_never_contains_zero(data: bytes) -> None:
    encoded = _cobs.encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= _cobs.max_encoded_size(len(data))
    assert _cobs.decode(encoded) == data


def test_crc_and_the_worked_frame_examples_of_the_doc() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 (IEEE 802.3) check value
    request = Frame(FrameType.DATA, b"\x04info", flags=0x03, session=0x11223344, channel=1)
    assert encode_frame(request) == DOC_REQUEST_FRAME
    ack = Frame(FrameType.ACK, b"\x05", session=0x55667788, ack=3)
    assert encode_frame(ack) == DOC_ACK_FRAME
    assert decode_frame(DOC_REQUEST_FRAME[:-1]) == request
    hello = struct.pack(">IHHIB", 0, 1024, 8, 4 * 1024 * 1024, 1) + b"\x01"
    assert encode_frame(Frame(FrameType.HELLO, hello, session=0x11223344)) == DOC_HELLO_FRAME
    assert decode_frame(DOC_ACK_FRAME[:-1]).payload == b"\x05"  # frames 4 and 6 held
    body = _cobs.decode(DOC_REQUEST_FRAME[:-1])
    assert body is not None and len(body) == link.HEADER_SIZE + 5 + link.CRC_SIZE
    assert body[-4:] == zlib.crc32(body[:-4]).to_bytes(4, "big")


frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    payload=st.binary(max_size=300),
    flags=st.integers(0, 255),
    session=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 65535),
    ack=st.integers(0, 65535),
    channel=st.integers(0, 65535),
    version=st.integers(0, 255),
)


@given(frames)
@settings(deadline=None)
def test_frame_round_trip(frame: Frame) -> None:
    encoded = encode_frame(frame, max_payload=300)
    assert encoded.endswith(b"\x00") and b"\x00" not in encoded[:-1]
    assert decode_frame(encoded[:-1], max_payload=300) == frame
    assert FrameDecoder(300).feed(encoded) == [frame]


@given(st.binary(max_size=4000), st.lists(st.integers(1, 4000), max_size=8))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_crash_the_decoder_nor_yield_a_bad_frame(
    data: bytes, cuts: list[int]
) -> None:
    whole = FrameDecoder(64)
    got = whole.feed(data)
    for frame in got:  # anything it returns passed its CRC and re-encodes to itself
        assert decode_frame(encode_frame(frame, max_payload=64)[:-1], max_payload=64) == frame
    assert whole.buffered <= _cobs.max_encoded_size(link.HEADER_SIZE + 64 + 33 + 4)
    # The same bytes in arbitrary pieces give the same frames.
    pieces = FrameDecoder(64)
    out: list[Frame] = []
    start = 0
    for cut in sorted(cuts):
        out += pieces.feed(data[start:cut])
        start = max(start, cut)
    out += pieces.feed(data[start:])
    assert out == got


def test_single_bit_errors_are_always_caught() -> None:
    frame = Frame(FrameType.DATA, _pattern(1024), flags=3, session=9, seq=5, ack=7, channel=2)
    encoded = encode_frame(frame)
    rng = random.Random(1)
    for _ in range(2000):
        damaged = bytearray(encoded)
        position = rng.randrange(len(encoded) - 1)
        damaged[position] ^= 1 << rng.randrange(8)
        assert FrameDecoder().feed(bytes(damaged)) == []


@given(st.lists(st.tuples(st.binary(max_size=200), frames), max_size=6))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_between_frames_resynchronises(items: list[tuple[bytes, Frame]]) -> None:
    stream = bytearray()
    for garbage, frame in items:
        # What an endpoint writes: a 0x00 before each batch, so garbage before it ends there.
        stream += garbage + b"\x00" + encode_frame(frame, max_payload=300)
    assert FrameDecoder(300).feed(bytes(stream)) == [frame for _, frame in items]


def test_oversize_frames_are_refused_and_never_buffered_unbounded() -> None:
    with pytest.raises(FrameError, match="over the limit"):
        encode_frame(Frame(FrameType.DATA, bytes(64 + 34)), max_payload=64)
    big = encode_frame(Frame(FrameType.DATA, bytes(1000)), max_payload=1000)
    with pytest.raises(FrameError, match="size limit"):
        decode_frame(big[:-1], max_payload=64)
    decoder = FrameDecoder(64)
    small = encode_frame(Frame(FrameType.ACK, ack=1), max_payload=64)
    assert decoder.feed(big + small) == [Frame(FrameType.ACK, ack=1)]
    assert decoder.oversize == 1
    # Megabytes without a delimiter: held to one frame's worth, then dropped.
    for _ in range(100):
        decoder.feed(b"\x55" * 100_000)
        assert decoder.buffered <= _cobs.max_encoded_size(link.HEADER_SIZE + 64 + 33 + 4)
    assert decoder.feed(b"\x00" + small) == [Frame(FrameType.ACK, ack=1)]
    # Bad length field, COBS and CRC failures are counted, not raised.
    assert decoder.feed(b"\x05\x01\x02\x00" + small) == [Frame(FrameType.ACK, ack=1)]
    assert decoder.rejected + decoder.crc_errors >= 1


def test_settings_and_versions_are_validated() -> None:
    assert negotiate_version((1, 2, 3), (2, 3, 4)) == 3
    with pytest.raises(VersionMismatchError) as caught:
        negotiate_version((1,), (2, 3))
    assert caught.value.local == (1,) and caught.value.remote == (2, 3)
    for bad in (
        {"max_payload": 8},
        {"max_payload": 70000},
        {"window": 0},
        {"window": 1000},
        {"ack_timeout": 0},
        {"retries": -1},
        {"max_message": 10},
        {"versions": ()},
        {"versions": (9,)},
        {"hello_interval": 0},
    ):
        with pytest.raises(ValueError):
            LinkSettings(**bad)
    assert link.derived_ack_timeout(115200, 1024, 8) == pytest.approx(1.2, abs=0.05)
    assert link.derived_ack_timeout(921600, 1024, 8) == pytest.approx(0.37, abs=0.02)


# --------------------------------------------------------------------------- the link


def test_request_response_both_ways_and_errors(tmp_path: Path) -> None:
    handler = Device()
    with (
        serial_line(tmp_path) as line,
        serving(line.device_port, handler) as device,
        serving(line.host_port, handler, role="host") as host,
    ):
        host.connect(5)
        assert host.established and device.established
        assert host.version == device.version == 1
        assert host.peer_session == device.session and device.peer_session == host.session
        assert host.request("echo", b"hello") == b"hello"
        assert host.request("rev", b"abc") == b"cba"
        assert host.request("echo") == b""
        assert device.request("rev", b"from the device") == b"ecived eht morf"
        with pytest.raises(RemoteError) as refused:
            host.request("refuse", b"not today")
        assert (refused.value.code, refused.value.reason) == ("nope", "not today")
        with pytest.raises(RemoteError) as crashed:
            device.request("crash")
        assert crashed.value.code == "failed" and "ValueError: boom" in crashed.value.reason
        with pytest.raises(ValueError, match="kind"):
            host.request("no spaces", b"")
        assert host.stats().sessions == 1


def test_concurrent_requests_and_large_fragmented_messages(tmp_path: Path) -> None:
    small = LinkSettings(max_payload=64, window=4)
    with (
        serial_line(tmp_path) as line,
        serving(line.device_port, Device(), settings=small),
        LinkEndpoint(line.host_port) as host,
    ):
        assert (host.max_payload, host.window) == (64, 4)  # the smaller of the two ends
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(15):
                    data = _pattern(1 + (n * 97 + i * 31) % 700, seed=n * 100 + i)
                    assert host.request("rev", data, timeout=20) == data[::-1]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        big = host.submit("sized", b"30000", timeout=30)
        upload = _pattern(20000, seed=5)
        assert host.request("rev", upload, timeout=30) == upload[::-1]
        for thread in threads:
            thread.join(30)
        assert not errors
        assert big.result() == _pattern(30000)


def test_sequence_numbers_wrap_around(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link, "_INITIAL_SEQ", 65536 - 20)  # wrap after 20 frames each way
    with (
        serial_line(tmp_path, 921600, drop_rate=5e-5, corrupt_rate=5e-5) as line,
        serving(line.device_port, Device()),
        LinkEndpoint(line.host_port) as host,
    ):
        futures = [(i, host.submit("rev", _pattern(700, seed=i), timeout=30)) for i in range(60)]
        for i, future in futures:
            assert future.result() == _pattern(700, seed=i)[::-1]


def test_message_size_limits_are_negotiated_and_enforced(tmp_path: Path) -> None:
    tight = LinkSettings(max_message=1000, max_queued_requests=1)
    with serial_line(tmp_path) as line:
        device = LinkEndpoint(line.device_port, role="device", settings=tight).open()
        thread = threading.Thread(target=device.serve, args=(Device(),))
        try:
            with LinkEndpoint(line.host_port) as host:
                assert host.max_message == 1000
                with pytest.raises(FrameError, match="largest message"):
                    host.submit("echo", bytes(1001))
                # Nobody serves yet: one request waits, the next is refused at once.
                waiting = host.submit("sized", b"5000", timeout=10)
                with pytest.raises(RemoteError) as busy:
                    host.request("echo", b"x", timeout=5)
                assert busy.value.code == "busy"
                thread.start()
                with pytest.raises(RemoteError) as large:
                    waiting.result()
                assert large.value.code == "too_large"
                assert host.request("echo", bytes(1000)) == bytes(1000)
        finally:
            device.close()
            if thread.is_alive():
                thread.join(5)


def test_version_negotiation_picks_the_highest_common(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This implementation speaks version 1 only; the frame layout is the same, so pretend.
    monkeypatch.setattr(link, "SUPPORTED_VERSIONS", (1, 2, 3))
    with (
        serial_line(tmp_path) as line,
        serving(line.device_port, Device(), settings=LinkSettings(versions=(1, 2))) as dev,
        LinkEndpoint(line.host_port, settings=LinkSettings(versions=(1, 2, 3))) as host,
    ):
        assert host.version == dev.version == 2
        assert host.request("echo", b"v2") == b"v2"


def test_no_common_version_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "SUPPORTED_VERSIONS", (1, 2))
    with (
        serial_line(tmp_path) as line,
        serving(line.device_port, Device(), settings=LinkSettings(versions=(2,))) as dev,
    ):
        with pytest.raises(VersionMismatchError) as caught:
            LinkEndpoint(line.host_port, settings=LinkSettings(versions=(1,))).__enter__()
        assert caught.value.local == (1,) and caught.value.remote == (2,)
        assert "update the older side" in str(caught.value)
        with pytest.raises(VersionMismatchError):
            dev.connect(2)


def test_garbage_on_the_line_is_skipped(tmp_path: Path) -> None:
    with (
        serial_line(tmp_path) as line,
        serving(line.device_port, Device()) as device,
        LinkEndpoint(line.host_port) as host,
    ):
        for i in range(20):
            # Noise written straight onto the wire between (and during) requests.
            line.host_port.write(_pattern(200, seed=i) + (b"\x00" if i % 2 else b""))
            data = _pattern(900, seed=100 + i)
            assert host.request("rev", data, timeout=20) == data[::-1]
        stats = device.stats()
        assert stats.rejected + stats.crc_errors + stats.oversize > 0


def test_loss_and_corruption_at_set_rates(tmp_path: Path) -> None:
    # About 1 frame in 10 hit each way; every request still completes with the right bytes.
    with (
        serial_line(tmp_path, 921600, drop_rate=5e-5, corrupt_rate=5e-5) as line,
        serving(line.device_port, Device()) as device,
        LinkEndpoint(line.host_port) as host,
    ):
        futures = []
        for i in range(60):
            data = _pattern(1024, seed=i)
            futures.append((data, host.submit("rev", data, timeout=60)))
        big = host.submit("sized", b"40000", timeout=60)
        for data, future in futures:
            assert future.result() == data[::-1]
        assert big.result() == _pattern(40000)
        assert line.sim is not None
        impaired = line.sim.stats
        assert impaired.a_to_b.dropped + impaired.b_to_a.dropped > 0
        assert impaired.a_to_b.corrupted + impaired.b_to_a.corrupted > 0
        assert host.stats().retransmissions + device.stats().retransmissions > 0
        damaged = [s.crc_errors + s.rejected + s.oversize for s in (host.stats(), device.stats())]
        assert sum(damaged) > 0
        assert host.stats().sessions == device.stats().sessions == 1


@pytest.mark.parametrize("pull", ["cut", "proxy closed and reopened"])
def test_a_cable_pull_mid_transfer_resumes(tmp_path: Path, pull: str) -> None:
    handler = Device()
    data = _pattern(160 * 1024, seed=3)
    with (
        serial_line(tmp_path, 921600) as line,
        serving(line.device_port, handler) as device,
        LinkEndpoint(line.host_port) as host,
    ):
        session, peer = host.session, host.peer_session
        sim = line.sim
        assert sim is not None

        def pull_the_cable() -> None:
            time.sleep(0.5)
            if pull == "cut":
                sim.cut()
                time.sleep(2.5)
                sim.restore()
            else:
                line.reopen_proxy(after=2.5)

        puller = threading.Thread(target=pull_the_cable)
        puller.start()
        started = time.monotonic()
        _put_all(host, data)
        puller.join()
        assert time.monotonic() - started > 2.5  # the pull really happened mid-transfer
        assert hashlib.sha256(_joined(handler.chunks)).digest() == hashlib.sha256(data).digest()
        assert host.stats().timeouts > 0
        # Both ends kept their state: the same session carried on.
        assert (host.session, host.peer_session) == (session, peer)
        assert device.stats().sessions == host.stats().sessions == 1


def test_a_restarted_peer_is_detected_and_in_flight_requests_fail(tmp_path: Path) -> None:
    first = Device()
    with serial_line(tmp_path) as line:
        device = LinkEndpoint(line.device_port, role="device").open()
        thread = threading.Thread(target=device.serve, args=(first,))
        thread.start()
        with LinkEndpoint(line.host_port) as host:
            old = host.peer_session
            held = host.submit("hold", b"", timeout=20)
            assert first.seen.wait(5)
            device.close()  # the device's agent dies with a request in its hands ...
            first.release.set()
            thread.join(5)
            with serving(line.device_port, Device()) as again:  # ... and starts again
                with pytest.raises(SessionResetError) as reset:
                    held.result(timeout=10)
                assert reset.value.old == old and reset.value.new == again.session
                assert host.request("echo", b"after", timeout=10) == b"after"
                assert host.peer_session == again.session
                assert again.peer_session == host.session


def test_timeouts_are_clear(tmp_path: Path) -> None:
    fast = LinkSettings(ack_timeout=0.05, retries=3, connect_timeout=0.5)
    with serial_line(tmp_path) as line:
        # Nobody at the other end.
        started = time.monotonic()
        with pytest.raises(LinkTimeoutError, match="no answer to HELLO"):
            LinkEndpoint(line.host_port, settings=fast).__enter__()
        assert time.monotonic() - started < 3
        with (
            serving(line.device_port, Device()) as device,
            LinkEndpoint(line.host_port, settings=fast) as host,
        ):
            # A slow handler: the request arrived, the answer did not come in time.
            with pytest.raises(RequestTimeoutError) as slow:
                host.request("sleep", b"1.0", timeout=0.3)
            assert slow.value.delivered and slow.value.kind == "sleep"
            assert host.request("echo", b"still fine", timeout=5) == b"still fine"
            # The device goes away: the link gives up after its retries.
            device.close()
            started = time.monotonic()
            with pytest.raises(LinkTimeoutError, match="not acknowledged") as down:
                host.request("echo", b"anyone?", timeout=30)
            assert not isinstance(down.value, RequestTimeoutError)
            assert time.monotonic() - started < 5


def test_lifecycle_and_closing(tmp_path: Path) -> None:
    with serial_line(tmp_path) as line, serving(line.device_port, Device()) as device:
        host = LinkEndpoint(line.host_port)
        assert host.state == "new"
        host.open()
        host.connect(5)
        assert host.state == "open"
        with pytest.raises(RuntimeError):
            host.open()
        held = host.submit("sleep", b"1.0")
        time.sleep(0.1)
        host.close()
        host.close()  # idempotent
        assert host.state == "closed"
        with pytest.raises(LinkClosedError):
            held.result(timeout=5)
        with pytest.raises(RuntimeError, match="closed"):
            host.request("echo", b"x")
        assert line.host_port.timeout is None  # the port's settings are given back
        assert not any(t.name.startswith("link-host") for t in threading.enumerate())
        with LinkEndpoint(line.host_port) as again:  # the port can carry a new endpoint
            assert again.request("echo", b"again", timeout=10) == b"again"
            assert again.peer_session == device.session
        with pytest.raises(ValueError, match="role"):
            LinkEndpoint(line.host_port, role="boss")  # type: ignore[arg-type]


def test_a_failing_port_becomes_port_error(tmp_path: Path) -> None:
    handler = Device()
    pair = PtyPair(tmp_path, "dies")
    host_port = serial.Serial(pair.a, 921600)
    device_port = serial.Serial(pair.b, 921600)
    device = LinkEndpoint(device_port, role="device").open()
    served: list[BaseException] = []

    def serve() -> None:
        try:
            device.serve(handler)
        except PortError as exc:
            served.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with LinkEndpoint(host_port) as host:
            held = host.submit("hold", b"")
            assert handler.seen.wait(5)
            pair.close()  # the USB adapter is unplugged: the port itself fails
            with pytest.raises(PortError) as failed:
                held.result(timeout=10)
            assert isinstance(failed.value.__cause__, (serial.SerialException, OSError))
            assert failed.value.port == pair.a
            with pytest.raises(PortError):
                host.request("echo", b"x")
        handler.release.set()
        thread.join(5)
        assert served and isinstance(served[0], PortError)  # serve() tells the device's loop
    finally:
        handler.release.set()
        device.close()
        thread.join(5)
        host_port.close()
        device_port.close()
        pair.close()


# --------------------------------------------------------------------------- efficiency


def efficiency(tmp_path: Path, baud: int, total: int) -> link.BulkResult:
    """Payload throughput over line capacity for ``total`` bytes in 1 KiB requests through
    the line simulator (its own process, so its pacing does not share our GIL)."""
    with PtyPair(tmp_path, f"host{baud}") as one, PtyPair(tmp_path, f"dev{baud}") as two:
        host_port = serial.Serial(one.a, baud)
        device_port = serial.Serial(two.a, baud)
        try:
            with (
                LineSimulatorProcess(one.b, two.b, baud=baud),
                serving(device_port, Device()),
                LinkEndpoint(host_port) as host,
            ):
                return measure_bulk(host, total=total, request_size=1024)
        finally:
            host_port.close()
            device_port.close()


@pytest.mark.parametrize(("baud", "total"), [(115200, 32 * 1024), (921600, 128 * 1024)])
def test_bulk_efficiency(tmp_path: Path, baud: int, total: int) -> None:
    result = efficiency(tmp_path, baud, total)
    print(
        f"\nlink bulk at {baud} baud: {result.payload_bytes} B in {result.seconds:.2f} s, "
        f"{result.throughput:.0f} B/s of {result.line_capacity:.0f}: {result.efficiency:.1%}"
    )
    # Per 1 KiB request: 16 header + 5 kind + 4 CRC + 5 COBS + 1-2 delimiters = about 97 %.
    assert 0.95 <= result.wire_efficiency <= 0.975
    assert 0.9 <= result.efficiency <= 1.0


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for rate in (115200, 921600):
            r = efficiency(Path(folder), rate, 256 * 1024)
            print(
                f"{rate:>7} baud: {r.payload_bytes} B in {r.requests} requests, {r.seconds:.2f} s, "
                f"{r.throughput:.0f} B/s of {r.line_capacity:.0f} B/s line capacity = "
                f"{r.efficiency:.2%}; {r.wire_bytes} B written: {r.wire_efficiency:.2%} "
                f"(retransmissions {r.retransmissions})"
            )
