"""firmware_tools.ymodem against real peers: lrzsz's rb and sb on socat pty pairs, a paced
lossy line (firmware_tools.linesim), and a receiver with U-Boot's loady habits (tests/_uboot.py).

References:
- Chuck Forsberg, "XMODEM/YMODEM PROTOCOL REFERENCE" (10-14-88), chapter 7: YMODEM batch,
  block 0 (name NUL length mtime mode), the empty block 0 that ends a batch.
- lrzsz 0.12.21: lrz.c (rb: wcrxpn, wcrx, wcgetsec, procheader) and lsz.c (sb: wctxpn, wctx,
  wcputsec); shared NOTES.md "Serial: lrzsz and U-Boot as peers" for what was measured.
- U-Boot common/xyzModem.c, cmd/load.c; docs https://docs.u-boot.org/en/latest/usage/cmd/loady.html

Timing: ptys ignore the baud rate, so transfers are fast; what takes time is lrzsz's whole-
second timers (rb answers an EOT after 1 s of silence and asks for the next header 1 s later).
The tests shorten our own waits (``FAST``) where the defaults suit real lines, and run the
transfers to rb side by side on separate pty pairs (``_serial.side_by_side``) so that those
idle timers overlap.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _serial
import pytest
import serial
from _uboot import UBootLoad

from firmware_tools import ymodem
from firmware_tools._xymodem import ACK, CAN, CRC_REQUEST, EOT, encode_block
from firmware_tools.errors import (
    DestinationError,
    IncompleteFileError,
    PortError,
    RetryLimitError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)
from firmware_tools.linesim import LineSimulator
from firmware_tools.ymodem import Timing

# Our own waits shortened for ptys: a failing test gives up in 20 s, a receiver asks again
# every 0.5 s, and the end-of-batch ACK (which lrzsz's rb loses on exit) is awaited 0.5 s.
# A receiver takes an EOT once the line stays silent for ``nak_quiet``: on a pty a block
# arrives whole within milliseconds, so 50 ms is proof enough (0.2 s suits real lines; it
# was most of the time of each file received).
FAST = Timing(start=20.0, poll=0.5, final=0.5, nak_quiet=0.05)
# The 5 MB sends: 5120 blocks, each written ``pause`` after rb's ACK because lrzsz flushes
# its input right after sending one (NOTES.md: 0.5-2 ms works). The low end of that range
# instead of the default 1 ms takes about 3 s off the transfer.
BULK = Timing(start=20.0, poll=0.5, final=0.5, nak_quiet=0.05, pause=0.0005)
# U-Boot sends no 'C' after block 0, so the sender waits ``header_c`` for it after every
# block 0: 1 s by default, all that its tests would spend; 0.2 s shows the same behaviour.
UBOOT = Timing(start=20.0, poll=0.5, final=0.5, header_c=0.2)

_rng = random.Random(20240607)


def _random(n: int) -> bytes:
    return _rng.randbytes(n)


# The file cases of the interop matrix (issue 7): name -> content. Names carry spaces and
# upper case, which must round-trip exactly.
CASES: dict[str, bytes] = {
    "Empty File.bin": b"",
    "One Byte.bin": b"\x42",
    "Exactly 128.BIN": _random(128),
    "Exactly 1024.BIN": _random(1024),
    "Three K.Bin": _random(3 * 1024),
    "Ends In SUB.bin": _random(1000) + b"\x1a" * 3,
    "Block Of SUB.bin": _random(128 - 5) + b"\x1a" * 5,
    "All SUB.bin": b"\x1a" * 256,
    "README.TXT": b"all-uppercase name: rb lowercases it unless block 0 carries a mode\n",
}
BIG = 5 * 1024 * 1024
# Not in the rb batches (each file costs rb two whole-second timers): used where named.
ODD = {"Odd Size.bin": _random(5000)}
# The cases reach rb as three batches of three, side by side: about 7 s instead of the 19 s
# of one batch of nine, and still a batch each (a file after a file, then the end of batch).
RB_BATCHES = [
    ["Empty File.bin", "One Byte.bin", "Exactly 128.BIN"],
    ["Exactly 1024.BIN", "Three K.Bin", "README.TXT"],
    ["Ends In SUB.bin", "Block Of SUB.bin", "All SUB.bin"],
]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[_serial.PtyPair]:
    with _serial.PtyPair(tmp_path / "pty") as pty:
        yield pty


@pytest.fixture
def port(pair: _serial.PtyPair) -> Iterator[serial.SerialBase]:
    # Opened before any peer starts: pyserial's open() discards pending input (NOTES.md).
    host = ymodem.open_port(pair.a)
    yield host
    host.close()


def _write_cases(folder: Path, cases: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in cases.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def _assert_same(folder: Path, cases: dict[str, bytes]) -> None:
    for name, data in cases.items():
        got = folder / name
        assert got.exists(), (
            f"{name!r} did not arrive under its exact name: {sorted(folder.iterdir())}"
        )
        assert got.read_bytes() == data, f"{name!r} differs ({got.stat().st_size} bytes)"


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- lossy lines (the tests are further down; our sender's is a job of test_send_to_rb) ------


@contextlib.contextmanager
def _lossy_line(folder: Path) -> Iterator[tuple[str, LineSimulator, serial.SerialBase]]:
    """Host port <-> LineSimulator (115200 baud, impairments set by the caller) <-> peer pty:
    yields the peer's device path, the line and the host port."""
    with (
        _serial.PtyPair(folder / "host", "host") as near,
        _serial.PtyPair(folder / "dev", "dev") as far,
    ):
        host = ymodem.open_port(near.a)
        # Seed 1002: on LOSSY_SIZE bytes either way, one byte dropped and one corrupted, in
        # different blocks, and the next impairment thousands of bytes past the end (the
        # tests check that both happened).
        line = LineSimulator(near.b, far.b, baud=115200, seed=1002)
        try:
            yield far.a, line, host
        finally:
            host.close()
            line.close()


DROP_RATE = CORRUPT_RATE = 4e-5
LOSSY_SIZE = 8 * 1024
# A resend after 0.3 s of silence (instead of 1.5 s) keeps these tests short; lrzsz copes on
# this line (it NAKs only after a second of silence itself).
LOSSY = Timing(start=20.0, poll=0.5, final=0.5, resend_quiet=0.3)


# --- our sender -> lrzsz rb ------------------------------------------------------------------


def _send_to_rb(
    folder: Path,
    cases: dict[str, bytes],
    *,
    block_size: int = 1024,
    timing: Timing = FAST,
    within: float | None = None,
    lossy: bool = False,
) -> None:
    """One batch from our sender to a fresh rb on its own pty pair: rb stores every file
    exactly, under its name, with the mtime we sent; progress runs from 0 to each size, never
    backwards. ``within``: the whole transfer's time limit, in seconds. ``lossy``: through a
    line simulator that drops a byte and corrupts one (``_lossy_line``)."""
    paths = _write_cases(folder / "out", cases)
    inbox = folder / "in"
    inbox.mkdir()
    seen: list[tuple[str, int, int | None]] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if lossy:
            device, line, port = stack.enter_context(_lossy_line(folder))
            line.configure(drop_rate=DROP_RATE, corrupt_rate=CORRUPT_RATE)
        else:
            pair = stack.enter_context(_serial.PtyPair(folder / "pty"))
            device = pair.b
            # Opened before rb starts: pyserial's open() discards pending input (NOTES.md).
            port = ymodem.open_port(pair.a)
            stack.callback(port.close)  # before socat ends (NOTES.md)
        with _serial.Peer(["rb"], device, cwd=inbox) as rb:
            sent = ymodem.send_files(
                port,
                paths,
                block_size=block_size,
                timing=timing,
                progress=lambda n, a, t: seen.append((n, a, t)),
            )
            assert rb.wait(30) == 0, rb.stderr
        if lossy:
            stats = line.stats.a_to_b
            assert stats.dropped and stats.corrupted, f"no byte dropped and corrupted: {stats}"
    elapsed = time.monotonic() - started
    assert [(s.name, s.size, s.acknowledged) for s in sent] == [
        (p.name, len(cases[p.name]), len(cases[p.name])) for p in paths
    ]
    _assert_same(inbox, cases)
    for path in paths:
        # rb applies the mtime we sent
        assert (inbox / path.name).stat().st_mtime == int(path.stat().st_mtime), path.name
        mine = [a for n, a, _ in seen if n == path.name]
        assert mine[0] == 0 and mine[-1] == len(cases[path.name]), path.name
        assert mine == sorted(mine), path.name
    assert within is None or elapsed < within, f"{elapsed:.1f} s"


def test_send_to_rb(tmp_path: Path) -> None:
    """Our sender to real rb, side by side on separate pty pairs: every file case in 1024-byte
    blocks (in ``RB_BATCHES``), a file in 128-byte blocks, 5 MB of random bytes, and a file
    over a lossy line, which arrives identical through the resends."""
    assert sorted(name for batch in RB_BATCHES for name in batch) == sorted(CASES)
    jobs = {
        f"batch {i} ({', '.join(batch)})": functools.partial(
            _send_to_rb, tmp_path / f"batch-{i}", {name: CASES[name] for name in batch}
        )
        for i, batch in enumerate(RB_BATCHES, 1)
    }
    jobs["128-byte blocks"] = functools.partial(
        _send_to_rb, tmp_path / "short", {"Short Blocks.bin": _random(3 * 1024 + 1)}, block_size=128
    )
    jobs["5 MB"] = functools.partial(
        _send_to_rb,
        tmp_path / "big",
        {"Big Image.itb": random.Random(5).randbytes(BIG)},
        timing=BULK,
        within=60,
    )
    jobs["lossy line"] = functools.partial(
        _send_to_rb,
        tmp_path / "lossy",
        {"Lossy Send.bin": random.Random(1).randbytes(LOSSY_SIZE)},
        timing=LOSSY,
        lossy=True,
    )
    _serial.side_by_side(jobs)


# --- lrzsz sb -> our receiver ----------------------------------------------------------------


@pytest.mark.parametrize("sb", [["sb"], ["sb", "-k"]], ids=["sb", "sb-k"])
def test_receive_batch_from_sb(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase, sb: list[str]
) -> None:
    """Every file case in one batch from sb (128-byte blocks) or sb -k (1024): each stored
    exactly under its name, with the sender's mtime and mode bits, and no partial file left."""
    source = tmp_path / "out"
    paths = _write_cases(source, CASES)
    inbox = tmp_path / "in"
    inbox.mkdir()
    with _serial.Peer([*sb, *[p.name for p in paths]], pair.b, cwd=source) as peer:
        got = ymodem.receive_files(port, inbox, timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    assert [(f.name, f.size) for f in got] == [(name, len(data)) for name, data in CASES.items()]
    _assert_same(inbox, CASES)
    for path, file in zip(paths, got, strict=True):
        assert file.path == inbox / path.name, path.name
        assert file.mtime == int(path.stat().st_mtime), path.name
        assert file.mode is not None, path.name
        assert stat.S_IMODE(file.mode) == stat.S_IMODE(path.stat().st_mode), path.name
    assert _no_leftovers(inbox) == []


@pytest.mark.slow
def test_receive_5mb_from_sb(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    data = random.Random(6).randbytes(BIG)
    source = tmp_path / "out"
    source.mkdir()
    (source / "Big Image.itb").write_bytes(data)
    inbox = tmp_path / "in"
    inbox.mkdir()
    with _serial.Peer(["sb", "-k", "Big Image.itb"], pair.b, cwd=source) as peer:
        got = ymodem.receive_files(port, inbox, timing=FAST)
        assert peer.wait(20) == 0, peer.stderr
    assert got[0].size == BIG
    assert (inbox / "Big Image.itb").read_bytes() == data


def test_existing_file_is_refused(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    source = tmp_path / "out"
    (path,) = _write_cases(source, ODD)
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / path.name).write_bytes(b"keep me")
    with _serial.Peer(["sb", path.name], pair.b, cwd=source) as peer:
        with pytest.raises(DestinationError, match="exists"):
            ymodem.receive_files(port, inbox, timing=FAST)
        assert peer.wait(20) != 0  # sb saw our CAN CAN
    assert (inbox / path.name).read_bytes() == b"keep me"
    with _serial.Peer(["sb", path.name], pair.b, cwd=source) as peer:
        ymodem.receive_files(port, inbox, overwrite=True, timing=FAST)
        assert peer.wait(20) == 0
    assert (inbox / path.name).read_bytes() == ODD["Odd Size.bin"]


# --- a receiver with U-Boot's habits (loady) --------------------------------------------------


@pytest.mark.parametrize("case", ["Odd Size.bin", "Ends In SUB.bin", "Exactly 1024.BIN"])
def test_send_to_uboot_loady(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase, case: str
) -> None:
    """No second 'C' after block 0, deferred ACKs, ACK ACK 'C' after EOT: the file arrives
    whole, and filesize is its length (U-Boot cuts the padding at block 0's length)."""
    content = {**CASES, **ODD}[case]
    (path,) = _write_cases(tmp_path / "out", {case: content})
    with UBootLoad(pair.b, "y") as board:
        sent = ymodem.send_files(port, [path], timing=UBOOT)
        assert board.wait(10)
    assert board.error is None
    assert bytes(board.data) == content
    assert sent[0].acknowledged == len(content)
    # U-Boot never sent the second 'C' of the spec: its first two bytes are 'C' then ACK.
    assert board.sent[:2] == bytes([CRC_REQUEST, ACK])


# --- a receiver that checks the length from block 0 ---------------------------------------------


def _fake_sender(port: serial.SerialBase, frames: list[bytes], replies: list[bytes]) -> None:
    """A scripted sender on the peer's end: wait for 'C'/ACK as given, write each frame."""
    for frame, reply in zip(frames, replies, strict=True):
        deadline = time.monotonic() + 10
        got = b""
        while reply not in got and time.monotonic() < deadline:
            got += port.read(1)
        time.sleep(0.002)
        port.write(frame)


def test_short_file_is_refused_and_nothing_kept(tmp_path: Path, pair: _serial.PtyPair) -> None:
    """Block 0 says 5000 bytes, one block and an EOT come: IncompleteFileError, the sender
    gets CAN instead of the ACK of its EOT, and no file (not even a partial one) is left."""
    header = b"Short.bin\x005000 0 100644".ljust(128, b"\0")
    inbox = tmp_path / "in"
    inbox.mkdir()
    host = ymodem.open_port(pair.a)
    peer = serial.Serial(pair.b, timeout=0.05)
    try:
        script = threading.Thread(
            target=_fake_sender,
            args=(
                peer,
                [
                    encode_block(0, header, crc=True),
                    encode_block(1, b"x" * 1024, crc=True),
                    bytes([EOT]),
                ],
                [b"C", b"C", b"\x06"],
            ),
        )
        script.start()
        with pytest.raises(IncompleteFileError) as caught:
            ymodem.receive_files(host, inbox, timing=FAST)
        script.join(10)
        assert (caught.value.expected, caught.value.got) == (5000, 1024)
        assert bytes([CAN, CAN]) in peer.read(64)
        assert list(inbox.iterdir()) == []
    finally:
        peer.close()
        host.close()


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (b"Plain Name.BIN", "Plain Name.BIN"),
        (b"sub dir/Image.itb", "Image.itb"),
        (b"/etc/passwd", "passwd"),
        (b"../../escape", "escape"),
    ],
)
def test_names_from_the_wire_stay_in_the_folder(raw: bytes, stored: str) -> None:
    assert ymodem.safe_name(raw) == stored


@pytest.mark.parametrize("raw", [b"..", b".", b"dir/", b"a/.."])
def test_unsafe_names_are_refused(raw: bytes) -> None:
    with pytest.raises(DestinationError):
        ymodem.safe_name(raw)


def test_block0_round_trip() -> None:
    payload = ymodem.encode_header("My Image.BIN", 5000, 0o14567012345, 0o100644)
    assert len(payload) == 128
    assert payload.startswith(b"My Image.BIN\x005000 14567012345 100644\x00")
    header = ymodem.parse_header(payload)
    assert (header.name, header.size, header.mtime, header.mode) == (
        b"My Image.BIN",
        5000,
        0o14567012345,
        0o100644,
    )
    # lrzsz's sb adds a serial number, files left and bytes left: ignored
    assert ymodem.parse_header(b"a\x0012 0 100644 0 3 999\x00").size == 12
    # a long name moves block 0 to 1024 bytes; the end of batch is an empty name
    assert len(ymodem.encode_header("n" * 200, 1, 0, 0)) == 1024
    assert ymodem.parse_header(bytes(128)).name == b""
    with pytest.raises(TransferError):
        ymodem.parse_header(b"a\x00twelve\x00")


# --- lossy lines --------------------------------------------------------------------------------


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[tuple[str, LineSimulator, serial.SerialBase]]:
    """(peer device path, line, host port): see ``_lossy_line``."""
    with _lossy_line(tmp_path) as parts:
        yield parts


def test_receive_over_a_lossy_line(tmp_path: Path, lossy: tuple) -> None:
    device, line, host = lossy
    line.configure(drop_rate=DROP_RATE, corrupt_rate=CORRUPT_RATE)
    data = random.Random(2).randbytes(LOSSY_SIZE)
    source = tmp_path / "out"
    source.mkdir()
    (source / "Lossy Receive.bin").write_bytes(data)
    inbox = tmp_path / "in"
    inbox.mkdir()
    with _serial.Peer(["sb", "-k", "Lossy Receive.bin"], device, cwd=source) as sb:
        got = ymodem.receive_files(host, inbox, timing=LOSSY)
        assert sb.wait(30) == 0, sb.stderr
    stats = line.stats.b_to_a
    assert stats.dropped and stats.corrupted, f"no byte dropped and corrupted: {stats}"
    assert got[0].size == len(data)
    assert (inbox / "Lossy Receive.bin").read_bytes() == data
    assert _no_leftovers(inbox) == []


def test_a_hopeless_line_fails_clearly_and_keeps_nothing(tmp_path: Path, lossy: tuple) -> None:
    """One corrupted byte in a hundred: every long block is damaged. After ``retries`` the
    receiver gives up with RetryLimitError, cancels the sender, and no file is left."""
    device, line, host = lossy
    line.configure(corrupt_rate=0.01)
    source = tmp_path / "out"
    source.mkdir()
    (source / "Doomed.bin").write_bytes(_random(8 * 1024))
    inbox = tmp_path / "in"
    inbox.mkdir()
    with (
        _serial.Peer(["sb", "-k", "Doomed.bin"], device, cwd=source),
        pytest.raises((RetryLimitError, TransferTimeoutError)) as caught,
    ):
        ymodem.receive_files(host, inbox, timing=LOSSY, retries=3)
    assert "block" in str(caught.value) or "silent" in str(caught.value)
    assert list(inbox.iterdir()) == []


# --- cancel, both ways ---------------------------------------------------------------------------

# lrzsz answers SIGINT/SIGTERM with CANs (canit.c) and exits, resetting its tty, which on a
# pty often discards those CANs before socat reads them (NOTES.md). So an interrupted lrzsz
# is seen as a cancel or as silence: either way the transfer must fail, quickly, reporting
# what was acknowledged, and keep nothing. The scripted peers below send CAN CAN for sure.
# When the CANs are lost, the test waits out ``retries`` + 1 responses: 0.5 s each (a healthy
# lrzsz on a pty answers within milliseconds).
INTERRUPTED = Timing(start=20.0, poll=0.5, final=0.5, response=0.5)


def test_rb_interrupted_mid_transfer(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    data = _random(256 * 1024)
    path = tmp_path / "Interrupted.bin"
    path.write_bytes(data)
    inbox = tmp_path / "in"
    inbox.mkdir()
    with _serial.Peer(["rb"], pair.b, cwd=inbox) as rb:

        def interrupt(name: str, acknowledged: int, total: int | None) -> None:
            if acknowledged >= 64 * 1024 and rb.process.poll() is None:
                os.kill(rb.process.pid, signal.SIGINT)
                # Gone before the next block: else a fast machine finishes 256 KiB on a bare
                # pty before rb handles the signal (seen on a fresh Debian).
                rb.process.wait(5)

        with pytest.raises((TransferCancelledError, TransferTimeoutError)) as caught:
            ymodem.send_files(port, [path], timing=INTERRUPTED, retries=2, progress=interrupt)
        assert rb.wait(10) != 0
    if isinstance(caught.value, TransferCancelledError):
        assert caught.value.by == "peer"
    assert 64 * 1024 <= caught.value.acknowledged < len(data)


def test_sb_interrupted_mid_transfer(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    source = tmp_path / "out"
    source.mkdir()
    (source / "Interrupted.bin").write_bytes(_random(256 * 1024))
    inbox = tmp_path / "in"
    inbox.mkdir()
    with _serial.Peer(["sb", "-k", "Interrupted.bin"], pair.b, cwd=source) as sb:

        def interrupt(name: str, acknowledged: int, total: int | None) -> None:
            if acknowledged >= 64 * 1024 and sb.process.poll() is None:
                os.kill(sb.process.pid, signal.SIGINT)
                sb.process.wait(5)  # gone before the next block (see above)

        with pytest.raises((TransferCancelledError, TransferTimeoutError)) as caught:
            ymodem.receive_files(port, inbox, timing=INTERRUPTED, retries=2, progress=interrupt)
        assert sb.wait(10) != 0
    if isinstance(caught.value, TransferCancelledError):
        assert caught.value.by == "peer"
    assert list(inbox.iterdir()) == []


def _read(port: serial.SerialBase, n: int, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += port.read(n - len(got))
    return got


def test_receiver_cancelling_with_can_can(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    """A receiver that takes block 0 and one data block, then answers CAN CAN."""
    path = tmp_path / "Refused.bin"
    path.write_bytes(_random(8 * 1024))
    peer = serial.Serial(pair.b, timeout=0.05)

    def receiver() -> None:
        peer.write(b"C")
        _read(peer, 3 + 128 + 2)
        peer.write(bytes([ACK, CRC_REQUEST]))
        _read(peer, 3 + 1024 + 2)
        peer.write(bytes([ACK]))
        _read(peer, 3 + 1024 + 2)
        peer.write(bytes([CAN, CAN]))

    script = threading.Thread(target=receiver)
    script.start()
    try:
        with pytest.raises(TransferCancelledError) as caught:
            ymodem.send_files(port, [path], timing=FAST)
    finally:
        script.join(10)
        peer.close()
    assert caught.value.by == "peer"
    assert caught.value.acknowledged == 1024


def test_sender_cancelling_with_can_can(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    """A sender that announces 8 KiB, sends one block, then CAN CAN (lrzsz's canit): the
    receiver stops with by="peer" and keeps nothing."""
    header = ymodem.encode_header("Abandoned.bin", 8192, 0, 0o100644)
    peer = serial.Serial(pair.b, timeout=0.05)

    def sender() -> None:
        _read(peer, 1)
        peer.write(encode_block(0, header, crc=True))
        _read(peer, 2)  # ACK, 'C'
        peer.write(encode_block(1, _random(1024), crc=True))
        _read(peer, 1)
        peer.write(bytes([CAN] * 10 + [8] * 10))

    script = threading.Thread(target=sender)
    script.start()
    inbox = tmp_path / "in"
    inbox.mkdir()
    try:
        with pytest.raises(TransferCancelledError) as caught:
            ymodem.receive_files(port, inbox, timing=FAST)
    finally:
        script.join(10)
        peer.close()
    assert caught.value.by == "peer"
    assert list(inbox.iterdir()) == []


def test_cancel_here_while_sending(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    path = tmp_path / "Cancelled.bin"
    path.write_bytes(_random(256 * 1024))
    inbox = tmp_path / "in"
    inbox.mkdir()
    stop = threading.Event()
    with _serial.Peer(["rb"], pair.b, cwd=inbox) as rb:
        with pytest.raises(TransferCancelledError) as caught:
            ymodem.send_files(
                port,
                [path],
                timing=FAST,
                cancel=stop,
                progress=lambda n, a, t: stop.set() if a >= 32 * 1024 else None,
            )
        assert rb.wait(20) != 0, "rb should have seen CAN CAN and failed"
    assert caught.value.by == "local"
    assert caught.value.acknowledged >= 32 * 1024


def test_cancel_here_while_receiving(
    tmp_path: Path, pair: _serial.PtyPair, port: serial.SerialBase
) -> None:
    source = tmp_path / "out"
    source.mkdir()
    (source / "Cancelled.bin").write_bytes(_random(256 * 1024))
    inbox = tmp_path / "in"
    inbox.mkdir()
    acknowledged = 0

    def enough() -> bool:
        return acknowledged >= 32 * 1024

    def track(name: str, a: int, total: int | None) -> None:
        nonlocal acknowledged
        acknowledged = a

    with _serial.Peer(["sb", "-k", "Cancelled.bin"], pair.b, cwd=source) as sb:
        with pytest.raises(TransferCancelledError) as caught:
            ymodem.receive_files(port, inbox, timing=FAST, cancel=enough, progress=track)
        assert sb.wait(20) != 0, "sb should have seen CAN CAN and failed"
    assert caught.value.by == "local"
    assert list(inbox.iterdir()) == []


# --- timeouts and port errors ------------------------------------------------------------------


def test_no_receiver_times_out(tmp_path: Path, port: serial.SerialBase) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(TransferTimeoutError, match="did not ask"):
        ymodem.send_files(port, [path], timing=Timing(start=0.2))
    assert time.monotonic() - started < 3


def test_no_sender_times_out(tmp_path: Path, port: serial.SerialBase) -> None:
    with pytest.raises(TransferTimeoutError, match="did not start"):
        ymodem.receive_files(port, tmp_path, timing=Timing(start=0.3, poll=0.1))


def test_open_port_translates_errors(tmp_path: Path) -> None:
    with pytest.raises(PortError) as caught:
        ymodem.open_port(str(tmp_path / "no-such-tty"))
    assert caught.value.port.endswith("no-such-tty")
    assert isinstance(caught.value.__cause__, serial.SerialException | OSError)


def test_line_pulled_mid_transfer_is_a_port_error(tmp_path: Path) -> None:
    """The socat end dies under a transfer: PortError (pyserial's exception translated),
    never a bare SerialException."""
    path = tmp_path / "x.bin"
    path.write_bytes(_random(64 * 1024))
    pair = _serial.PtyPair(tmp_path / "pty")
    host = ymodem.open_port(pair.a)
    try:
        with _serial.Peer(["rb"], pair.b, cwd=tmp_path / "pty") as rb:

            def pull(name: str, acknowledged: int, total: int | None) -> None:
                if acknowledged >= 8 * 1024:
                    pair.close()

            with pytest.raises(PortError) as caught:
                ymodem.send_files(host, [path], timing=FAST, progress=pull)
            rb.close()
        assert not isinstance(caught.value, serial.SerialException)
    finally:
        host.close()
        pair.close()
