"""XMODEM (8-bit checksum or CRC-16) and XMODEM-1K over any open pyserial port, as lrzsz's
``sx``/``rx`` and U-Boot's ``loadx`` speak them (docs/serial-transfer.md).

    from firmware_tools import xmodem

    with xmodem.open_port("/dev/ttyUSB0") as port, open("app.bin", "rb") as image:
        result = xmodem.send(port, image, block_size=1024)   # then: loadx at U-Boot
    print(result.acknowledged, "bytes acknowledged")

XMODEM carries no file length: the sender pads the last block with 0x1A (SUB) to 128 or
1024 bytes, and the receiver cannot tell that padding from data. ``receive`` therefore takes
a policy: ``size=`` (the length, known out of band: exact), ``padding="strip"`` (the default:
drop trailing 0x1A bytes of the last block, so a file that really ends in 0x1A loses them)
or ``padding="keep"`` (what lrzsz ``rx`` does: the file grows to a whole block). U-Boot's
``loadx`` strips a run of three or more 0x1A at the end of *every* block. Use YMODEM
(``firmware_tools.ymodem``), which sends the length, whenever the peer speaks it.

Errors: ``PortError`` (the port failed), ``TransferTimeoutError``, ``TransferCancelledError``,
``RetryLimitError``, ``IncompleteFileError``, ``DestinationError`` (firmware_tools.errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import IO, Any, Literal

from firmware_tools._xymodem import (
    ACK,
    CRC_REQUEST,
    DEFAULT_TIMING,
    LONG,
    NAK,
    SHORT,
    SUB,
    BlockReceiver,
    BlockSender,
    CancelSignal,
    Line,
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
    TransferCancelledError,
)

__all__ = [
    "ReceiveResult",
    "SendResult",
    "Timing",
    "open_port",
    "receive",
    "receive_file",
    "send",
]

# XMODEM's EOT is the last exchange, and lrzsz's rx exits right after acknowledging it, which
# on a pty often loses that ACK (NOTES.md). After this many silent waits the sender stops.
_EOT_SILENT_TRIES = 2


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What an XMODEM send achieved.

    ``acknowledged``: bytes of the stream the receiver acknowledged (padding excluded): all
    of it when ``send`` returns. ``blocks``: blocks sent. ``resends``: blocks sent again after
    a NAK or a timeout. ``crc``: CRC-16 (True) or checksum mode, as the receiver asked.
    ``end_acknowledged``: the receiver acknowledged the EOT. False means it stayed silent
    after every data block was acknowledged: lrzsz's ``rx`` exits on EOT and its ACK is often
    lost on a pty; on a real line, check the receiver's own verdict.
    """

    acknowledged: int
    blocks: int
    resends: int
    crc: bool
    end_acknowledged: bool


@dataclasses.dataclass(frozen=True)
class ReceiveResult:
    """What an XMODEM receive stored.

    ``size``: bytes written. ``blocks``: data blocks received. ``refused``: bad blocks asked
    for again. ``crc``: CRC-16 (True) or checksum. ``padding_removed``: 0x1A bytes dropped
    from the last block (``padding="strip"``) or beyond ``size``.
    """

    size: int
    blocks: int
    refused: int
    crc: bool
    padding_removed: int


def _stream_size(stream: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream, for progress; None when it cannot be known."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        if stream.seekable():
            here = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(here)
            return end - here
    return None


def send(
    port: Any,
    stream: IO[bytes],
    *,
    block_size: int = SHORT,
    name: str = "",
    timing: Timing = DEFAULT_TIMING,
    retries: int = 10,
    progress: Progress | None = None,
    cancel: CancelSignal | None = None,
) -> SendResult:
    """Send ``stream`` (a binary file object, read to its end) over the open ``port``.

    Waits ``timing.start`` seconds for the receiver's 'C' (CRC-16) or NAK (checksum), then
    sends ``block_size`` blocks (128, or 1024 for XMODEM-1K; 1024-byte blocks only in CRC
    mode, as [SPEC] 4.3 asks, and the last 896 bytes in 128-byte blocks as lrzsz does), each
    until acknowledged, at most ``retries`` times again. ``progress(name, acknowledged,
    total)`` follows the acknowledgements; ``cancel`` (an Event or a callable) stops the
    transfer with CAN CAN.

    Raises ``TransferTimeoutError`` (no receiver), ``RetryLimitError``,
    ``TransferCancelledError`` (``by="peer"`` or ``"local"``), ``PortError``.
    Example: ``xmodem.send(port, open("u-boot.bin", "rb"), block_size=1024)``.
    """
    check_block_size(block_size)
    check_retries(retries)
    line = Line(port, "XMODEM-1K" if block_size == LONG else "XMODEM", cancel)
    sender = BlockSender(line, timing, retries)
    total = _stream_size(stream)
    try:
        crc = sender.wait_start(timing.start)
        size = block_size if crc else SHORT
        count = 0
        for chunk in blocks(stream.read, size):
            count += 1
            frame = encode_block(count, pad(chunk, SHORT if len(chunk) <= SHORT else LONG), crc=crc)
            sender.send_block(count, frame)
            line.acknowledged += len(chunk)
            if progress is not None:
                progress(name, line.acknowledged, total)
        ended = sender.send_eot(count + 1, silent_tries=_EOT_SILENT_TRIES)
        return SendResult(line.acknowledged, count, sender.resends, crc, ended)
    except (TransferCancelledError, PortError):
        raise
    except BaseException:
        line.send_cancel()
        raise
    finally:
        line.restore()


def receive(
    port: Any,
    stream: IO[bytes],
    *,
    crc: bool = True,
    size: int | None = None,
    padding: Literal["strip", "keep"] = "strip",
    name: str = "",
    timing: Timing = DEFAULT_TIMING,
    retries: int = 10,
    progress: Progress | None = None,
    cancel: CancelSignal | None = None,
) -> ReceiveResult:
    """Receive one XMODEM transfer from the open ``port`` into ``stream`` (binary, writable).

    Asks with 'C' (``crc=True``) or NAK (checksum) every ``timing.poll`` seconds for up to
    ``timing.start`` seconds, then takes 128- and 1024-byte blocks in order until EOT. The
    end of the data: with ``size``, exactly ``size`` bytes are kept (fewer raise
    ``IncompleteFileError``); otherwise ``padding="strip"`` drops trailing 0x1A bytes of the
    last block (a file that really ends in 0x1A loses them) and ``padding="keep"`` keeps the
    whole last block, as lrzsz ``rx`` does. On an error ``stream`` holds what had arrived;
    ``receive_file`` keeps nothing then.

    Raises ``TransferTimeoutError``, ``RetryLimitError``, ``TransferCancelledError``,
    ``IncompleteFileError``, ``TransferError`` (blocks out of sequence), ``PortError``.
    Example: ``xmodem.receive(port, open("log.bin", "wb"), size=4096)``.
    """
    check_retries(retries)
    if padding not in ("strip", "keep"):
        raise ValueError(f'padding must be "strip" or "keep", got {padding!r}')
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a whole number >= 0, got {size!r}")
    line = Line(port, "XMODEM", cancel)
    receiver = BlockReceiver(line, timing, retries, crc=crc)
    held = b""  # the latest block, written once the next one proves it was not the last
    received = 0  # data bytes received, padding included
    removed = 0

    def write(data: bytes) -> None:
        nonlocal removed
        if size is not None:
            keep = max(0, min(len(data), size - line.acknowledged))
            removed += len(data) - keep
            data = data[:keep]
        stream.write(data)
        line.acknowledged += len(data)

    def deliver(payload: bytes) -> None:
        nonlocal held, received
        received += len(payload)
        if size is None and padding == "strip":
            write(held)
            held = payload
        else:
            write(payload)
        if progress is not None:
            progress(name, line.acknowledged, size)

    try:
        line.discard_input()
        count = receiver.receive_data(
            deliver, first_reply=CRC_REQUEST if crc else NAK, start_timeout=timing.start
        )
        if held:
            kept = held.rstrip(bytes([SUB]))
            removed += len(held) - len(kept)
            write(kept)
        if size is not None and line.acknowledged < size:
            receiver.abort(IncompleteFileError("XMODEM", size, line.acknowledged))
        stream.flush()
        line.write(bytes([ACK]))
        if progress is not None:
            progress(name, line.acknowledged, size)
        return ReceiveResult(line.acknowledged, count, receiver.refused, crc, removed)
    except (TransferCancelledError, PortError):
        raise
    except BaseException:
        line.send_cancel()
        raise
    finally:
        line.restore()


def receive_file(
    port: Any,
    path: str | Path,
    *,
    overwrite: bool = False,
    **options: Any,
) -> ReceiveResult:
    """``receive`` into the file ``path``, all or nothing: the data goes to a temporary file
    beside it, which is fsynced and renamed to ``path`` only after a successful end; on any
    error it is removed. ``options`` are ``receive``'s (crc, size, padding, timing, ...).

    Raises what ``receive`` raises, and ``DestinationError`` when ``path`` exists (without
    ``overwrite``) or cannot be written.
    Example: ``xmodem.receive_file(port, "dump.bin", size=65536)``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise DestinationError("XMODEM", str(target), "it exists (pass overwrite=True)")
    part = PartFile(target.parent, "XMODEM")
    try:
        options.setdefault("name", target.name)
        try:
            result = receive(port, part.file, **options)
        except OSError as exc:  # from writing the part file: the port's errors are PortError
            raise DestinationError("XMODEM", str(target), exc.strerror or str(exc)) from exc
        part.commit(target, overwrite=overwrite)
        return result
    except BaseException:
        part.discard()
        raise
