"""YMODEM batch transfers over any open pyserial port, as lrzsz's ``sb``/``rb`` and U-Boot's
``loady`` speak them (docs/serial-transfer.md).

    from firmware_tools import ymodem

    with ymodem.open_port("/dev/ttyUSB0") as port:
        sent = ymodem.send_files(port, ["fitImage"])          # U-Boot: loady ${loadaddr}
        got = ymodem.receive_files(port, "incoming/")        # device: sb -k log.tar

YMODEM is XMODEM-1K with CRC-16 plus a block 0 before each file that carries its name,
length, modification time and mode, and an empty block 0 that ends the batch. The length is
what makes it safe: the receiver keeps exactly that many bytes and refuses a file that came
up short. ``receive_files`` writes each file under a temporary name, fsyncs it and renames it
into place only when its length matches block 0; a partial file never has the final name.

Errors: ``PortError``, ``TransferTimeoutError``, ``TransferCancelledError``,
``RetryLimitError``, ``IncompleteFileError``, ``DestinationError``, ``TransferError``
(firmware_tools.errors).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from firmware_tools._xymodem import (
    ACK,
    CRC_REQUEST,
    DEFAULT_TIMING,
    LONG,
    SHORT,
    SUB,
    Block,
    BlockReceiver,
    BlockSender,
    CancelSignal,
    Line,
    Outcome,
    PartFile,
    Progress,
    Timing,
    blocks,
    check_block_size,
    check_retries,
    encode_block,
    open_port,
    pad,
)
from firmware_tools.errors import (
    DestinationError,
    IncompleteFileError,
    PortError,
    RetryLimitError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)

__all__ = [
    "ReceivedFile",
    "SentFile",
    "Timing",
    "open_port",
    "receive_files",
    "send_files",
]

_PROTOCOL = "YMODEM"


@dataclasses.dataclass(frozen=True)
class SentFile:
    """A file the receiver took whole: ``name`` as announced in block 0, the local ``path``,
    its ``size``, and ``acknowledged`` (equal to ``size``: every block and the EOT were
    acknowledged; a file that was not is an exception, never a ``SentFile``)."""

    name: str
    path: Path
    size: int
    acknowledged: int


@dataclasses.dataclass(frozen=True)
class ReceivedFile:
    """A file received whole and renamed into place: ``name`` as sent, the ``path`` written,
    its ``size`` (the length from block 0), and ``mtime`` (seconds since 1970) and ``mode``
    (Unix mode bits) when block 0 carried them."""

    name: str
    path: Path
    size: int
    mtime: int | None
    mode: int | None


@dataclasses.dataclass(frozen=True)
class _Header:
    name: bytes
    size: int | None
    mtime: int | None
    mode: int | None


def encode_header(name: str, size: int, mtime: int, mode: int) -> bytes:
    """Block 0's payload ([SPEC] chapter 5, "YMODEM Batch File Transmission"): the name, NUL,
    then "length mtime mode": length in decimal, mtime (seconds since 1970) and mode in
    octal, separated by single spaces; NUL-padded to 128 bytes, or 1024 if it does not fit.

    The mode matters: lrzsz's rb lowercases an all-uppercase name that comes without one
    (lrz.c procheader: "!(zi->mode & UNIXFILE)"), so "README.TXT" would arrive as
    "readme.txt". U-Boot reads only the length (xyzModem_stream_open: parse_num).
    """
    raw = os.fsencode(name)
    if not raw or b"\0" in raw or raw in (b".", b".."):
        raise ValueError(f"not a file name for YMODEM block 0: {name!r}")
    fields = f"{size} {mtime:o} {mode:o}".encode("ascii")
    header = raw + b"\0" + fields
    if len(header) >= LONG:
        raise ValueError(f"the name {name!r} is too long for YMODEM block 0")
    length = SHORT if len(header) < SHORT else LONG
    return header + bytes(length - len(header))


def parse_header(payload: bytes) -> _Header:
    """Read block 0: the name up to NUL, then up to NUL the optional decimal length, octal
    mtime and octal mode ([SPEC] chapter 5; lrzsz's sb adds a serial number and the files and
    bytes left, which are ignored). An empty name ends the batch (``name == b""``)."""
    name, _, rest = payload.partition(b"\0")
    fields = rest.partition(b"\0")[0].split()
    try:
        size = int(fields[0], 10) if fields else None
        mtime = int(fields[1], 8) if len(fields) > 1 else None
        mode = int(fields[2], 8) if len(fields) > 2 else None
    except ValueError as exc:
        raise TransferError(
            _PROTOCOL, f"block 0 of {name!r} has a malformed length, date or mode: {fields!r}"
        ) from exc
    if size is not None and size < 0:
        raise TransferError(_PROTOCOL, f"block 0 of {name!r} announces a negative length")
    return _Header(name, size, mtime or None, mode or None)


def safe_name(raw: bytes) -> str:
    """The file name to store, from block 0's name: its last '/'-separated part ([SPEC] 5:
    directories are delimited by '/'), decoded as the file system does. Empty names, "." and
    "..", and names that would leave the folder on this system are refused (DESIGN.md: every
    name from the wire is sanitised before it touches a path)."""
    name = os.fsdecode(raw.rsplit(b"/", 1)[-1])
    for separator in (os.sep, os.altsep):
        if separator:
            name = name.rsplit(separator, 1)[-1]
    if name in ("", ".", "..") or Path(name).is_absolute() or Path(name).drive:
        raise DestinationError(_PROTOCOL, repr(os.fsdecode(raw)), "not a safe file name")
    return name


def _limited(stream: IO[bytes], size: int) -> Callable[[int], bytes]:
    remaining = size

    def read(n: int) -> bytes:
        nonlocal remaining
        if remaining <= 0:
            return b""
        data = stream.read(min(n, remaining))
        remaining -= len(data)
        return data

    return read


def send_files(
    port: Any,
    paths: Iterable[str | os.PathLike[str]],
    *,
    block_size: int = LONG,
    timing: Timing = DEFAULT_TIMING,
    retries: int = 10,
    progress: Progress | None = None,
    cancel: CancelSignal | None = None,
) -> list[SentFile]:
    """Send the files at ``paths`` as one YMODEM batch over the open ``port``.

    Each file goes as block 0 (its base name, length, mtime, mode), data blocks of
    ``block_size`` (1024, or 128; the last 896 bytes in 128-byte blocks as lrzsz does), and
    EOT; an empty block 0 ends the batch. Every block is sent until acknowledged, at most
    ``retries`` times again. U-Boot's ``loady`` takes one file per command: send it one.
    ``progress(name, acknowledged, total)`` follows the acknowledgements; ``cancel`` (an Event
    or a callable) stops the transfer with CAN CAN.

    Returns one ``SentFile`` per file, all acknowledged in full. The receiver's final ACK of
    the end of the batch is not required: lrzsz's rb exits right after sending it and a pty
    often loses it (NOTES.md); each file's own EOT was acknowledged before.

    Raises ``TransferTimeoutError``, ``RetryLimitError``, ``TransferCancelledError``,
    ``TransferError`` (a file changed size while being sent), ``PortError``; ``OSError`` for
    a file that cannot be read (before anything is sent).
    Example: ``ymodem.send_files(port, ["fitImage"], progress=print)``.
    """
    check_block_size(block_size)
    check_retries(retries)
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"not a file: {path}")
        encode_header(path.name, 0, 0, 0)  # the name fits in block 0
    line = Line(port, _PROTOCOL, cancel)
    sender = BlockSender(line, timing, retries)
    sent: list[SentFile] = []
    try:
        crc = sender.wait_start(timing.start)
        size_limit = block_size if crc else SHORT
        for number, path in enumerate(files):
            if number:
                # The next block 0 goes when the receiver asks ('C'); if the request was lost,
                # send it anyway: it is retried like any block.
                sender.wait_request(timing.response)
            sent.append(_send_one(line, sender, path, crc, size_limit, progress))
        sender.wait_request(timing.response)
        _end_batch(line, sender, crc)
        return sent
    except (TransferCancelledError, PortError):
        raise
    except BaseException:
        line.send_cancel()
        raise
    finally:
        line.restore()


def _send_one(
    line: Line,
    sender: BlockSender,
    path: Path,
    crc: bool,
    block_size: int,
    progress: Progress | None,
) -> SentFile:
    with path.open("rb") as stream:
        info = os.fstat(stream.fileno())
        size = info.st_size
        mode = info.st_mode if stat.S_ISREG(info.st_mode) else stat.S_IFREG | 0o644
        # A date of 0 means "unknown" ([SPEC] 5); an octal field cannot carry a sign.
        header = encode_header(path.name, size, max(0, int(info.st_mtime)), mode)
        line.acknowledged = 0
        sender.send_block(0, encode_block(0, header, crc=crc), more_expected=True)
        if progress is not None:
            progress(path.name, 0, size)
        # [SPEC] 5: the receiver acknowledges block 0, then sends 'C' for the data. U-Boot
        # does not (xyzModem_stream_open returns after block 0 and waits for block 1), so
        # the data starts after a short wait either way.
        sender.wait_request(sender.timing.header_c)
        count = 0
        for chunk in blocks(_limited(stream, size), block_size):
            count += 1
            frame = encode_block(count, pad(chunk, SHORT if len(chunk) <= SHORT else LONG), crc=crc)
            sender.send_block(count, frame)
            line.acknowledged += len(chunk)
            if progress is not None:
                progress(path.name, line.acknowledged, size)
        if line.acknowledged != size:
            raise TransferError(
                _PROTOCOL,
                f"{path} shrank to {line.acknowledged} bytes while being sent ({size} announced)",
                acknowledged=line.acknowledged,
            )
        if not sender.send_eot(count + 1, silent_tries=2):
            raise TransferTimeoutError(
                _PROTOCOL,
                f"the receiver did not acknowledge the end of {path.name} (EOT); it may not "
                "have kept the file",
                acknowledged=line.acknowledged,
            )
    return SentFile(path.name, path, size, line.acknowledged)


def _end_batch(line: Line, sender: BlockSender, crc: bool) -> None:
    """The empty block 0 that ends the batch ([SPEC] 2 and 5). Its ACK is welcome, not required
    (NOTES.md: lrzsz's last ACK is often lost on a pty; every file was acknowledged)."""
    frame = encode_block(0, bytes(SHORT), crc=crc)
    for _ in range(3):
        line.check_cancel()
        line.pause(sender.timing.pause)
        line.write(frame)
        reply = sender.await_reply(sender.timing.final)
        if reply in (ACK, None):
            return


def receive_files(
    port: Any,
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    timing: Timing = DEFAULT_TIMING,
    retries: int = 10,
    progress: Progress | None = None,
    cancel: CancelSignal | None = None,
) -> list[ReceivedFile]:
    """Receive one YMODEM batch from the open ``port`` into ``folder``.

    Asks with 'C' every ``timing.poll`` seconds for up to ``timing.start`` seconds. Each file
    is written to a temporary file in ``folder``, checked against the length in its block 0,
    fsynced and renamed to its name only then; mtime and mode bits are applied when sent.
    Names are reduced to their last path component; unsafe ones, and existing files without
    ``overwrite``, cancel the transfer with ``DestinationError``. A block 0 without a length
    (XMODEM-style senders) is accepted and its last block's trailing 0x1A bytes are dropped.

    Returns the files received, in order.

    Raises ``IncompleteFileError`` (the data ended short of the announced length; nothing is
    kept), ``DestinationError``, ``TransferTimeoutError``, ``RetryLimitError``,
    ``TransferCancelledError``, ``TransferError``, ``PortError``. Files completed before an
    error stay in place.
    Example: ``ymodem.receive_files(port, "incoming", progress=print)``.
    """
    check_retries(retries)
    target_folder = Path(folder)
    if not target_folder.is_dir():
        raise NotADirectoryError(f"not a folder: {target_folder}")
    line = Line(port, _PROTOCOL, cancel)
    receiver = BlockReceiver(line, timing, retries, crc=True)
    received: list[ReceivedFile] = []
    try:
        line.discard_input()
        while True:
            block = _receive_header(line, receiver, timing, first=not received)
            header = parse_header(block.payload)
            if not header.name:
                line.write(bytes([ACK]))  # the end of the batch
                return received
            name = safe_name(header.name)
            target = target_folder / name
            if target.exists() and not overwrite:
                raise DestinationError(_PROTOCOL, str(target), "it exists (pass overwrite=True)")
            received.append(_receive_one(line, receiver, header, name, target, overwrite, progress))
    except (TransferCancelledError, PortError):
        raise
    except BaseException:
        line.send_cancel()
        raise
    finally:
        line.restore()


def _receive_header(line: Line, receiver: BlockReceiver, timing: Timing, *, first: bool) -> Block:
    """Ask for block 0 with 'C' until it comes. Before the first file, keep asking every
    ``poll`` seconds for ``start`` seconds; between files, ``retries`` waits of ``response``."""
    started = time.monotonic()
    failures = 0
    while True:
        line.check_cancel()
        line.write(bytes([CRC_REQUEST]))
        packet = receiver.read_packet(timing.poll if first else timing.response)
        if isinstance(packet, Block):
            if packet.number == 0:
                return packet
            receiver.refuse()  # a data block where a header belongs: ask again
        elif packet == Outcome.EOT:
            # The sender missed our ACK of its EOT and sent it again (lrz.c wcrxpn does this:
            # "Pathname fetch returned EOT" -> ACK, then 'C').
            line.write(bytes([ACK]))
            continue
        elif first:
            # Before the sender starts, silence and noise only count against the start timeout.
            if packet == Outcome.BAD:
                receiver.refuse(count=False)
            if time.monotonic() - started >= timing.start:
                raise TransferTimeoutError(
                    _PROTOCOL,
                    f"the sender did not start within {timing.start:g} s; start it after this "
                    "side (sb / sz --ymodem), and check the port and baud rate",
                )
            continue
        elif packet == Outcome.BAD:
            receiver.refuse()
        failures += 1
        if failures > receiver.retries:
            if packet == Outcome.TIMEOUT:
                raise TransferTimeoutError(
                    _PROTOCOL,
                    "the sender went silent between files (no block 0 and no end of batch)",
                )
            raise RetryLimitError(_PROTOCOL, 0, receiver.retries)


def _receive_one(
    line: Line,
    receiver: BlockReceiver,
    header: _Header,
    name: str,
    target: Path,
    overwrite: bool,
    progress: Progress | None,
) -> ReceivedFile:
    size = header.size
    part = PartFile(target.parent, _PROTOCOL)
    try:
        line.acknowledged = 0
        held = b""  # without a length: the latest block, until the next proves it not last

        def deliver(payload: bytes) -> None:
            nonlocal held
            if size is None:
                part.write(held)
                line.acknowledged += len(held)
                held = payload
            else:
                # [SPEC] 5: "The receiver stores the specified number of characters,
                # discarding any padding added by the sender to fill up the last block."
                keep = payload[: max(0, size - line.acknowledged)]
                part.write(keep)
                line.acknowledged += len(keep)
            if progress is not None:
                progress(name, line.acknowledged, size)

        line.write(bytes([ACK]))  # block 0 accepted; receive_data sends the 'C' for the data
        receiver.receive_data(deliver, first_reply=CRC_REQUEST, start_timeout=None)
        if size is None:
            kept = held.rstrip(bytes([SUB]))
            part.write(kept)
            line.acknowledged += len(kept)
        elif line.acknowledged < size:
            # Refuse the EOT: the sender must not believe the file arrived (CAN instead of ACK).
            receiver.abort(IncompleteFileError(_PROTOCOL, size, line.acknowledged))
        part.commit(target, overwrite=overwrite, mtime=header.mtime, mode=header.mode)
        # The EOT is acknowledged only once the file is durable under its name, as lrzsz
        # closes the file before its ACK (lrz.c wcrx).
        line.write(bytes([ACK]))
        if progress is not None:
            progress(name, line.acknowledged, size)
        return ReceivedFile(name, target, line.acknowledged, header.mtime, header.mode)
    except BaseException:
        part.discard()
        raise
