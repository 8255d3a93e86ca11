"""firmware_tools.xmodem against real peers: lrzsz's sx and rx on socat pty pairs, a receiver
with U-Boot's loadx habits (tests/_uboot.py), scripted peers for the corner cases; and the
CRC-16/XMODEM against a bit-by-bit reference.

References:
- Chuck Forsberg, "XMODEM/YMODEM PROTOCOL REFERENCE" (10-14-88): chapter 4 (XMODEM, block
  layout, SUB padding), 5 (XMODEM-1K, CRC-16 polynomial 0x1021).
- lrzsz 0.12.21: lrz.c wcrx/wcgetsec/putsec (rx keeps the whole last block in binary mode),
  lsz.c wctx/filbuf (sx pads with SUB, 128-byte blocks for the last 896 bytes).
- U-Boot common/xyzModem.c (loadx strips a run of three or more 0x1A at the end of a block);
  https://docs.u-boot.org/en/latest/usage/cmd/loadx.html
"""

from __future__ import annotations

import functools
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _serial
import pytest
import serial
from _uboot import UBootLoad
from hypothesis import given
from hypothesis import strategies as st

from firmware_tools import xmodem
from firmware_tools._crc import checksum8, crc16_xmodem
from firmware_tools._xymodem import ACK, CAN, EOT, NAK, SUB, blocks, encode_block
from firmware_tools.errors import (
    DestinationError,
    IncompleteFileError,
    PortError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)
from firmware_tools.xmodem import Timing

# Our waits shortened for ptys (see tests/test_ymodem.py). The EOT is still awaited 1.5 s:
# lrzsz answers it only after a second of silence. Our receiver takes an EOT after 50 ms of
# silence instead of 0.2 s (``nak_quiet``): on a pty a block arrives whole at once.
FAST = Timing(start=20.0, poll=0.5, final=0.5, nak_quiet=0.05)
# The 5 MB send: 5120 blocks, each written ``pause`` after rx's ACK because lrzsz flushes its
# input right after sending one (NOTES.md: 0.5-2 ms works); the low end of that range
# instead of the default 1 ms takes about 3 s off.
BULK = Timing(start=20.0, poll=0.5, final=0.5, nak_quiet=0.05, pause=0.0005)

_rng = random.Random(20240608)


def _random(n: int) -> bytes:
    return _rng.randbytes(n)


CASES: dict[str, bytes] = {
    "empty": b"",
    "one byte": b"\x42",
    "exactly 128": _random(128),
    "exactly 1024": _random(1024),
    "three K": _random(3 * 1024),
    "ends in SUB": _random(1000) + b"\x1a" * 3,
    "block ends in SUB": _random(128 - 5) + b"\x1a" * 5,
    "all SUB": b"\x1a" * 256,
}
BIG = 5 * 1024 * 1024


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[_serial.PtyPair]:
    with _serial.PtyPair(tmp_path / "pty") as pty:
        yield pty


@pytest.fixture
def port(pair: _serial.PtyPair) -> Iterator[serial.SerialBase]:
    host = xmodem.open_port(pair.a)  # before the peer starts (NOTES.md)
    yield host
    host.close()


def _sx_last_block_start(size: int, one_k: bool) -> int:
    """Where sx's last block starts (lsz.c wctx: 1024-byte blocks with -k until at most 896
    bytes remain, then 128-byte blocks)."""
    sent = 0
    while True:
        block = 128 if not one_k or size <= sent + 896 else 1024
        if sent + block >= size:
            return sent
        sent += block


def _padded_like_rx(got: bytes, data: bytes) -> None:
    """rx (binary) keeps the whole last block: the data, then SUB up to a 128-byte boundary
    (our sender's last blocks are 128 bytes, so the padding stays under 128)."""
    assert got[: len(data)] == data
    assert got[len(data) :] == bytes([SUB]) * (len(got) - len(data))
    assert len(got) % 128 == 0 and len(got) - len(data) < 128


# --- our sender -> lrzsz rx -------------------------------------------------------------------


def _send_to_rx(
    folder: Path, data: bytes, *, crc: bool = True, name: str = "", timing: Timing = FAST
) -> xmodem.SendResult:
    """Our sender, asked for 1024-byte blocks, to a fresh ``rx -c`` (CRC) or ``rx`` (checksum)
    on its own pty pair: rx exits cleanly and keeps the data and its padding; the whole
    stream is acknowledged; progress never goes backwards. Returns the send's result."""
    folder.mkdir(parents=True)
    out = folder / "received.bin"
    seen: list[int] = []
    with _serial.PtyPair(folder / "pty") as pair:
        port = xmodem.open_port(pair.a)  # before rx starts (NOTES.md)
        try:
            rx_argv = ["rx", "-c", str(out)] if crc else ["rx", str(out)]
            with _serial.Peer(rx_argv, pair.b, cwd=folder) as rx:
                result = xmodem.send(
                    port,
                    io.BytesIO(data),
                    block_size=1024,
                    name=name,
                    timing=timing,
                    progress=lambda n, a, t: seen.append(a),
                )
                assert rx.wait(20) == 0, rx.stderr
        finally:
            port.close()  # before socat ends (NOTES.md)
    assert result.crc == crc and result.acknowledged == len(data)
    _padded_like_rx(out.read_bytes(), data)
    assert seen == sorted(seen) and (not data or seen[-1] == len(data))
    return result


def test_send_to_rx(tmp_path: Path) -> None:
    """Our sender to real rx, side by side on separate pty pairs (rx answers each EOT only
    after a second of silence; these seconds overlap): every file case and 5 MB of random
    bytes to ``rx -c`` (CRC, 1024-byte blocks); and three cases to plain ``rx``, which asks
    with NAK: checksum mode, and 128-byte blocks even when 1024 were asked for (1K blocks
    only with CRC, [SPEC] 5.2)."""

    def big() -> None:
        result = _send_to_rx(tmp_path / "big", random.Random(7).randbytes(BIG), timing=BULK)
        assert result.blocks == BIG // 1024  # a multiple of 1024: no padding at all

    def checksum(i: int, case: str) -> None:
        result = _send_to_rx(tmp_path / f"checksum-{i}", CASES[case], crc=False)
        assert result.blocks == -(-len(CASES[case]) // 128)

    jobs: dict[str, Callable[[], object]] = {
        f"CRC-1K: {case}": functools.partial(_send_to_rx, tmp_path / f"case-{i}", data, name=case)
        for i, (case, data) in enumerate(CASES.items())
    }
    jobs["CRC-1K: 5 MB"] = big
    for i, case in enumerate(["one byte", "three K", "ends in SUB"]):
        jobs[f"checksum: {case}"] = functools.partial(checksum, i, case)
    _serial.side_by_side(jobs)


# --- lrzsz sx -> our receiver -------------------------------------------------------------------

VARIANTS = {
    "sx-crc": (["sx"], True),
    "sx-k-crc": (["sx", "-k"], True),
    "sx-checksum": (["sx"], False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_receive_from_sx(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase, variant: str, case: str
) -> None:
    """Default padding policy "strip": the data, less the trailing 0x1A bytes of its last
    block. A file that really ends in 0x1A loses them (that is XMODEM; use YMODEM)."""
    sx, crc = VARIANTS[variant]
    data = CASES[case]
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    out = tmp_path / "In Box" / "Received File.BIN"
    out.parent.mkdir()
    with _serial.Peer([*sx, str(source)], pair.b, cwd=tmp_path) as peer:
        result = xmodem.receive_file(port, out, crc=crc, timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    start = _sx_last_block_start(len(data), one_k="-k" in sx)
    expected = data[:start] + data[start:].rstrip(b"\x1a")
    assert out.read_bytes() == expected
    assert result.size == len(expected) and result.crc == crc
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


@pytest.mark.parametrize("case", ["ends in SUB", "all SUB", "one byte"])
def test_receive_exact_size(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase, case: str
) -> None:
    """With the length known out of band, every byte comes back, 0x1A endings included."""
    data = CASES[case]
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    sink = io.BytesIO()
    with _serial.Peer(["sx", "-k", str(source)], pair.b, cwd=tmp_path) as peer:
        result = xmodem.receive(port, sink, size=len(data), timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    assert sink.getvalue() == data
    assert result.size == len(data)


def test_receive_keep_padding_like_rx(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    data = CASES["ends in SUB"]
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    sink = io.BytesIO()
    with _serial.Peer(["sx", str(source)], pair.b, cwd=tmp_path) as peer:
        result = xmodem.receive(port, sink, padding="keep", timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    _padded_like_rx(sink.getvalue(), data)
    assert result.padding_removed == 0


@pytest.mark.slow
def test_receive_5mb_from_sx(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    data = random.Random(8).randbytes(BIG)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    out = tmp_path / "received.bin"
    with _serial.Peer(["sx", "-k", str(source)], pair.b, cwd=tmp_path) as peer:
        result = xmodem.receive_file(port, out, size=BIG, timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    assert result.blocks == BIG // 1024
    assert out.read_bytes() == data


# --- U-Boot's loadx ----------------------------------------------------------------------------


def _loadx_expected(data: bytes, block_size: int) -> bytes:
    """What loadx keeps: each block (as our sender cuts and pads it) loses its trailing 0x1A
    bytes when it ends in at least three (xyzModem_stream_read)."""
    kept = b""
    for chunk in blocks(io.BytesIO(data).read, block_size):
        block = chunk + bytes([SUB]) * ((128 if len(chunk) <= 128 else 1024) - len(chunk))
        kept += block.rstrip(b"\x1a") if block.endswith(b"\x1a" * 3) else block
    return kept


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (random.Random(1).randbytes(5000), True),  # 120 bytes of padding: all stripped
        (random.Random(2).randbytes(126), False),  # 2 bytes of padding: loadx keeps them
        (random.Random(3).randbytes(1000) + b"\x1a" * 3, False),  # real 0x1A bytes: lost
    ],
    ids=["padding stripped", "short padding kept", "real SUB lost"],
)
def test_send_to_uboot_loadx(
    pair: _serial.PtyPair, port: serial.SerialBase, data: bytes, whole: bool
) -> None:
    with UBootLoad(pair.b, "x") as board:
        result = xmodem.send(port, io.BytesIO(data), block_size=1024, timing=FAST)
        assert board.wait(10)
    assert board.error is None
    assert result.end_acknowledged  # U-Boot acknowledges the EOT (twice)
    assert bytes(board.data) == _loadx_expected(data, 1024)
    assert (bytes(board.data) == data) is whole


# --- scripted peers: what lrzsz will not do on demand ----------------------------------------


def _read(port: serial.SerialBase, n: int, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += port.read(n - len(got))
    return got


class _Script:
    """A sender on the peer's end, in a thread: an int waits for that many bytes, bytes are
    written. Its end of the line stays open until ``join()``, which the test calls once the
    call under test has returned (its last replies must not meet a closed port)."""

    def __init__(self, pair: _serial.PtyPair, script: list[bytes | int]) -> None:
        self._peer = serial.Serial(pair.b, timeout=0.05)
        self._script = script
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for step in self._script:
                if isinstance(step, int):
                    _read(self._peer, step)
                else:
                    time.sleep(0.002)
                    self._peer.write(step)
            self._finished.wait(10)
        finally:
            self._peer.close()

    def join(self, timeout: float) -> None:
        self._finished.set()
        self._thread.join(timeout)


def test_block_out_of_sequence_cancels_and_keeps_nothing(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    one = encode_block(1, _random(128), crc=True)
    three = encode_block(3, _random(128), crc=True)
    script = _Script(pair, [1, one, 1, three, 1])
    out = tmp_path / "never.bin"
    with pytest.raises(TransferError, match="block 3 arrived where block 2"):
        xmodem.receive_file(port, out, timing=FAST)
    script.join(10)
    assert list(tmp_path.glob("*.bin")) == [] and list(tmp_path.glob(".*part")) == []


def test_an_eot_followed_by_data_is_noise(pair: _serial.PtyPair, port: serial.SerialBase) -> None:
    """A header byte corrupted into EOT must not end the file early (lrz.c wcgetsec checks
    that silence follows an EOT): the block is refused and comes again."""
    first, second = _random(128), _random(128)
    good = encode_block(2, second, crc=True)
    garbled = bytes([EOT]) + good[1:]
    script = _Script(
        pair,
        [1, encode_block(1, first, crc=True), 1, garbled, 1, good, 1, bytes([EOT]), 1],
    )
    sink = io.BytesIO()
    result = xmodem.receive(port, sink, padding="keep", timing=FAST)
    script.join(10)
    assert sink.getvalue() == first + second
    assert result.refused == 1


def test_short_transfer_with_known_size_is_incomplete(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    script = _Script(pair, [1, encode_block(1, _random(128), crc=True), 1, bytes([EOT])])
    out = tmp_path / "short.bin"
    with pytest.raises(IncompleteFileError) as caught:
        xmodem.receive_file(port, out, size=1000, timing=FAST)
    script.join(10)
    assert (caught.value.expected, caught.value.got) == (1000, 128)
    assert not out.exists()


def test_sender_cancelling(pair: _serial.PtyPair, port: serial.SerialBase) -> None:
    script = _Script(
        pair, [1, encode_block(1, _random(128), crc=True), 1, bytes([CAN] * 5 + [8] * 5)]
    )
    with pytest.raises(TransferCancelledError) as caught:
        xmodem.receive(port, io.BytesIO(), timing=FAST)
    script.join(10)
    assert caught.value.by == "peer"


def test_receiver_cancelling(pair: _serial.PtyPair, port: serial.SerialBase) -> None:
    peer = serial.Serial(pair.b, timeout=0.05)

    def receiver() -> None:
        peer.write(bytes([NAK]))  # checksum mode
        _read(peer, 3 + 128 + 1)
        peer.write(bytes([ACK]))
        _read(peer, 3 + 128 + 1)
        peer.write(bytes([CAN, CAN]))

    script = threading.Thread(target=receiver)
    script.start()
    try:
        with pytest.raises(TransferCancelledError) as caught:
            xmodem.send(port, io.BytesIO(_random(1000)), timing=FAST)
    finally:
        script.join(10)
        peer.close()
    assert caught.value.by == "peer" and caught.value.acknowledged == 128


def test_cancel_here_while_sending_to_rx(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    stop = threading.Event()
    with _serial.Peer(["rx", "-c", str(tmp_path / "r.bin")], pair.b, cwd=tmp_path) as rx:
        with pytest.raises(TransferCancelledError) as caught:
            xmodem.send(
                port,
                io.BytesIO(_random(64 * 1024)),
                block_size=1024,
                timing=FAST,
                cancel=stop,
                progress=lambda n, a, t: stop.set() if a >= 8192 else None,
            )
        assert rx.wait(20) != 0
    assert caught.value.by == "local" and caught.value.acknowledged == 8192


def test_cancel_here_while_receiving_from_sx(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(_random(64 * 1024))
    out = tmp_path / "received.bin"
    stop = threading.Event()
    with _serial.Peer(["sx", "-k", str(source)], pair.b, cwd=tmp_path) as sx:
        with pytest.raises(TransferCancelledError):
            xmodem.receive_file(
                port,
                out,
                timing=FAST,
                cancel=stop,
                progress=lambda n, a, t: stop.set() if a >= 8192 else None,
            )
        assert sx.wait(20) != 0
    assert not out.exists()


def test_no_peer_times_out(port: serial.SerialBase) -> None:
    with pytest.raises(TransferTimeoutError):
        xmodem.send(port, io.BytesIO(b"x"), timing=Timing(start=0.2))
    with pytest.raises(TransferTimeoutError):
        xmodem.receive(port, io.BytesIO(), timing=Timing(start=0.3, poll=0.1))


def test_receive_file_refuses_to_overwrite(tmp_path: Path, port: serial.SerialBase) -> None:
    out = tmp_path / "there.bin"
    out.write_bytes(b"keep")
    with pytest.raises(DestinationError, match="exists"):
        xmodem.receive_file(port, out, timing=FAST)
    assert out.read_bytes() == b"keep"


def test_port_errors_are_translated(tmp_path: Path) -> None:
    with pytest.raises(PortError):
        xmodem.open_port(str(tmp_path / "missing"))
    # A URL port works the same way: loop:// echoes our 'C' back, which is no sender.
    with xmodem.open_port("loop://") as loop, pytest.raises(TransferTimeoutError):
        xmodem.receive(loop, io.BytesIO(), timing=Timing(start=0.2, poll=0.1))


def test_arguments_are_checked(port: serial.SerialBase) -> None:
    with pytest.raises(ValueError):
        xmodem.send(port, io.BytesIO(b""), block_size=512)
    with pytest.raises(ValueError):
        xmodem.receive(port, io.BytesIO(), padding="trim")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Timing(response=-1)
    with pytest.raises(ValueError):
        xmodem.send(port, io.BytesIO(b""), retries=-1)


# --- block layout and check values --------------------------------------------------------------


def _crc16_reference(data: bytes) -> int:
    """CRC-16/XMODEM bit by bit, as [SPEC] chapter 6 describes it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the catalogued check value
    assert crc16_xmodem(b"") == 0


@given(st.binary(max_size=2048))
def test_crc_matches_reference(data: bytes) -> None:
    assert crc16_xmodem(data) == _crc16_reference(data)
    assert checksum8(data) == sum(data) % 256


@given(st.integers(min_value=0, max_value=1000), st.booleans(), st.binary(min_size=1, max_size=1))
def test_block_layout(number: int, crc: bool, fill: bytes) -> None:
    payload = fill * 128
    frame = encode_block(number, payload, crc=crc)
    assert frame[0] == 0x01 and frame[1] == number % 256 and frame[1] + frame[2] == 0xFF
    assert frame[3:131] == payload
    if crc:
        assert frame[131:] == _crc16_reference(payload).to_bytes(2, "big")
    else:
        assert frame[131:] == bytes([sum(payload) % 256])
    assert encode_block(number, payload * 8, crc=True)[0] == 0x02


@given(st.integers(min_value=0, max_value=5000))
def test_tail_goes_in_short_blocks(size: int) -> None:
    """Like lsz.c wctx: 1024-byte blocks until at most 896 bytes remain, then 128."""
    sizes = [len(c) for c in blocks(io.BytesIO(bytes(size)).read, 1024)]
    expected = []
    remaining = size
    while remaining:
        expected.append(min(1024 if remaining > 896 else 128, remaining))
        remaining -= expected[-1]
    assert sizes == expected
    assert sum(128 if s <= 128 else 1024 for s in sizes) - size < 128
