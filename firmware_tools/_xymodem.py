"""The engine shared by ``firmware_tools.xmodem`` and ``firmware_tools.ymodem`` (private).

Three pieces: ``Line`` (timed reads and writes on a pyserial port, the only place that
touches the port, so every ``SerialException``/``OSError`` becomes ``PortError`` here, once),
``BlockSender`` (one block out until the receiver acknowledges it) and ``BlockReceiver`` (one
block in, checked). The public modules put files, streams and YMODEM's block 0 on top.

Sources, cited where each fact is used:

* [SPEC] Chuck Forsberg, "XMODEM/YMODEM PROTOCOL REFERENCE", 10-14-88 (ymodem.txt in many
  source trees), cited by section number: 4.1 Graceful Abort, 4.3 XMODEM-1k, 5 YMODEM Batch
  File Transmission, 7.2-7.4 Ward Christensen's XMODEM overview, 8 XMODEM/CRC.
* [UBOOT] U-Boot ``common/xyzModem.c`` (the receiver behind ``loadx``/``loady``) and
  ``cmd/load.c`` (the commands).
* [LRZSZ] lrzsz 0.12.21 ``src/lrz.c`` (rb/rx), ``src/lsz.c`` (sb/sx), ``src/canit.c``; and
  what was measured against it on ptys (shared NOTES.md, "Serial: lrzsz and U-Boot as peers").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, TypeAlias

import serial

from firmware_tools._crc import checksum8, crc16_xmodem
from firmware_tools.errors import (
    DestinationError,
    PortError,
    RetryLimitError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)

# Control bytes: [SPEC] 7.1 Definitions, 4.3 (STX) and 8.2.1 ('C').
SOH = 0x01  # a 128-byte block follows
STX = 0x02  # a 1024-byte block follows
EOT = 0x04  # end of file
ACK = 0x06
BS = 0x08  # sent after CANs so that a terminal erases them ([UBOOT] and [LRZSZ] canit.c)
NAK = 0x15  # block refused, or: start in checksum mode
CAN = 0x18  # two in a row cancel the transfer
SUB = 0x1A  # CP/M end of file, the padding of a short last block
CRC_REQUEST = 0x43  # 'C': start in CRC mode; U-Boot also sends it to refuse a block

#: A short block (128 bytes) and a long one (1024, "XMODEM-1K" / YMODEM).
SHORT = 128
LONG = 1024

# lsz.c wctx(): once at most 896 bytes remain (7 short blocks), sb switches to 128-byte blocks,
# so that the last block carries less padding. We do the same.
_TAIL = 7 * SHORT

# How long port.read() may block before the loops look at the clock and the cancel signal.
_SLICE = 0.05

# A start request must stand alone: 'C' inside console text (U-Boot prints its load address
# in upper-case hex, "0x8C000000") is not one. Real requests are followed by silence.
_SETTLE = 0.05

# CANs sent to cancel, and the backspaces that erase them from a terminal's input in case the
# peer has already given up ([SPEC] 4.1: two CANs in a row abort; YAM sends eight of each).
# U-Boot stops after 3 CANs ([UBOOT] xyzModem_CAN_COUNT), lrzsz after 2 ([LRZSZ] lsz.c
# getnak/wcputsec, lrz.c wcgetsec); lrzsz sends 10 of each (canit.c), U-Boot 4.
CANCEL_SEQUENCE = bytes([CAN] * 5 + [BS] * 5)

# lrzsz takes an EOT only once the line stays silent for a second after it (lrz.c wcgetsec:
# "make sure eot really is eot", READLINE_PF(1), which zreadline.c turns into alarm(1)) and
# answers only then: a sender must not repeat the EOT sooner, or it is taken for noise.
_EOT_SILENCE = 1.5

# After the first CAN, how long to wait for the second: 2 s, as lsz.c getnak() READLINE_PF(20).
_SECOND_CAN = 2.0

CancelSignal: TypeAlias = "threading.Event | Callable[[], bool]"
"""``cancel=``: a ``threading.Event`` (set it to cancel) or a callable returning True."""

Progress: TypeAlias = "Callable[[str, int, int | None], None]"
"""``progress(name, acknowledged, total)``: bytes confirmed so far; ``total`` None if unknown."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Timeouts and pauses of an X/YMODEM transfer, in seconds. The defaults suit a real line
    from 9600 to 921600 baud and the peers we test against; tests on ptys shorten some.

    ``start``: how long to wait for the other side to begin (the receiver's first 'C'/NAK, or
    the sender's first block): the time a person needs to type ``loady`` or start ``sb``.

    ``response``: a sender's wait for ACK/NAK after a block; a receiver's wait for the next
    block. [SPEC] 7.3.2 and 7.3.3 use 10 s; lrzsz waits 10 s (Rxtimeout 100 tenths); U-Boot
    asks again about 4.25 s after a block goes missing (a 2 s xyzModem_CHAR_TIMEOUT, 2 s of
    quiet in xyzModem_flush, 0.25 s), which a 10 s wait covers.

    ``char``: the longest gap between two bytes inside a block before the block is refused
    ([SPEC] 7.3.2 and 7.4: a one-second timeout for each character).

    ``poll``: a receiver waiting for the transfer to start repeats its 'C'/NAK this often.

    ``pause``: a sender waits this long after the receiver's ACK/NAK/'C' before writing: lrzsz
    flushes its input right after sending one (purgeline() in lrz.c wcrx/wcgetsec), so a block
    written at once loses its start and stalls for seconds (NOTES.md: 0.5-2 ms fixes it).

    ``resend_quiet``: after a NAK, a sender waits for this much silence before resending,
    so that it never resends into a receiver still draining the bad block (NOTES.md: about
    1.5 s worked with lrzsz on a paced line; U-Boot waits 2 s per character, so stay below).

    ``nak_quiet``: a receiver that got a bad block waits for this much silence (the rest of
    the bad block) before asking again (lrzsz waits 0.1 s, lrz.c wcgetsec "humbug").

    ``header_c``: after YMODEM block 0 is acknowledged, how long a sender waits for the 'C'
    that starts the data: [SPEC] chapter 5 says the receiver sends one; U-Boot does not
    (xyzModem_stream_open returns after block 0 and waits for block 1), so go on without it.

    ``final``: a sender's wait for the ACK of an EOT (never under 1.5 s: lrzsz answers an EOT
    only after a second of silence, lrz.c wcgetsec) or of the end of a batch. lrzsz resets
    the tty when it exits, so on a pty that last ACK is often lost (NOTES.md): the transfer is
    judged by what was acknowledged before, and this only bounds how long we listen.
    """

    start: float = 60.0
    response: float = 10.0
    char: float = 1.0
    poll: float = 3.0
    pause: float = 0.001
    resend_quiet: float = 1.5
    nak_quiet: float = 0.2
    header_c: float = 1.0
    final: float = 3.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Timing.{field.name} must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Timing.{field.name} must be zero or more seconds, got {value}")
        for name in ("start", "response", "char", "poll", "final"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Timing.{name} must be more than zero seconds")


DEFAULT_TIMING = Timing()


def check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    return retries


def check_block_size(block_size: int) -> int:
    if block_size not in (SHORT, LONG):
        raise ValueError(f"block_size must be 128 or 1024, got {block_size!r}")
    return block_size


def port_name(port: Any) -> str:
    """A name for messages: the device path or URL the port was opened with."""
    name = getattr(port, "portstr", None) or getattr(port, "port", None)
    return str(name) if name else repr(port)


def open_port(url: str, *, baudrate: int = 115200, **options: Any) -> Any:
    """Open a serial port by device path (``/dev/ttyUSB0``, ``COM3``, a pty) or by pyserial URL
    (``socket://host:port``, ``rfc2217://...``, ``loop://``): 8N1, no flow control (XON/XOFF
    bytes occur in binary data; NOTES.md). ``options`` go to ``serial.serial_for_url``.

    Raises ``PortError`` when the port cannot be opened (translated from pyserial).
    Example: ``with open_port("/dev/ttyUSB0", baudrate=115200) as port: ...``.
    """
    options.setdefault("xonxoff", False)
    options.setdefault("rtscts", False)
    options.setdefault("timeout", _SLICE)
    try:
        return serial.serial_for_url(url, baudrate=baudrate, **options)
    except (serial.SerialException, OSError) as exc:
        raise PortError(url, str(exc) or type(exc).__name__) from exc


def encode_block(number: int, payload: bytes, *, crc: bool) -> bytes:
    """One block on the wire ([SPEC] 7.2 Figure 9, 8 Figure 11, 4.3):

    SOH (128) or STX (1024), the block number mod 256, its one's complement, the data, then
    the CRC-16 high byte first, or the 8-bit checksum.
    """
    if len(payload) not in (SHORT, LONG):
        raise ValueError(f"a block carries 128 or 1024 bytes, not {len(payload)}")
    n = number & 0xFF
    head = bytes((STX if len(payload) == LONG else SOH, n, 0xFF - n))
    check = crc16_xmodem(payload).to_bytes(2, "big") if crc else bytes((checksum8(payload),))
    return head + payload + check


def pad(data: bytes, size: int) -> bytes:
    """Fill a short last block with SUB (0x1A, CP/M's EOF), as [SPEC] 4.3 Figure 1 shows and
    lsz.c filbuf() does."""
    return data + bytes([SUB]) * (size - len(data))


def blocks(read: Callable[[int], bytes], block_size: int) -> Iterator[bytes]:
    """Cut a stream into block payloads (unpadded): ``block_size`` bytes each, except that the
    last 896 bytes or fewer go in 128-byte blocks (lsz.c wctx), so padding stays under 128."""
    buffer = bytearray()
    eof = False
    while True:
        # Look one byte past a full block: only then is it known whether the tail is near.
        while not eof and len(buffer) <= block_size:
            data = read(8 * LONG)
            if data:
                buffer += data
            else:
                eof = True
        if not buffer:
            return
        size = SHORT if block_size == LONG and eof and len(buffer) <= _TAIL else block_size
        chunk = bytes(buffer[:size])
        del buffer[:size]
        yield chunk


def ends_with_cancel(data: bytes) -> bool:
    """True when ``data`` ends like a cancel sequence: at least three CANs, then backspaces.

    Used on bytes drained after a bad block, which may hold any binary data: three CANs at
    the very end (what lrzsz, U-Boot and we send) are a cancel, two inside data are not.
    """
    end = len(data)
    while end and data[end - 1] == BS:
        end -= 1
    return end >= 3 and data[end - 3 : end] == bytes([CAN] * 3)


class Line:
    """Timed reads and writes on an open pyserial port, with the cancel signal checked in every
    wait. The port's read timeout is set to a short slice while the transfer runs and put back
    afterwards (``restore``)."""

    def __init__(self, port: Any, protocol: str, cancel: CancelSignal | None) -> None:
        self.port = port
        self.protocol = protocol
        self.name = port_name(port)
        self.cancel = cancel
        self.acknowledged = 0  # for the errors raised from here
        with self.errors():
            self._saved_timeout = port.timeout
            port.timeout = _SLICE

    def restore(self) -> None:
        with contextlib.suppress(Exception):
            self.port.timeout = self._saved_timeout

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The seam: pyserial's exceptions become ``PortError`` here and nowhere else."""
        try:
            yield
        except (serial.SerialException, OSError) as exc:
            raise PortError(self.name, str(exc) or type(exc).__name__) from exc

    # --- cancel ---------------------------------------------------------------------------------

    def cancelled(self) -> bool:
        signal = self.cancel
        if signal is None:
            return False
        if isinstance(signal, threading.Event):
            return signal.is_set()
        return bool(signal())

    def check_cancel(self) -> None:
        if self.cancelled():
            self.send_cancel()
            raise TransferCancelledError(
                self.protocol,
                "cancelled here; CAN CAN was sent to the peer",
                by="local",
                acknowledged=self.acknowledged,
            )

    def send_cancel(self) -> None:
        """Tell the peer to stop (best effort: the port may already be gone)."""
        with contextlib.suppress(PortError), self.errors():
            self.port.write(CANCEL_SEQUENCE)
            self.port.flush()

    def peer_cancelled(self, reason: str = "the peer cancelled (CAN CAN)") -> NoReturn:
        raise TransferCancelledError(
            self.protocol, reason, by="peer", acknowledged=self.acknowledged
        )

    # --- I/O --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self.errors():
            self.port.write(data)

    def discard_input(self) -> None:
        """Drop what arrived before the transfer: a receiver's sender speaks only after the
        first 'C', so anything older is stale (console text, a previous session's CANs)."""
        with self.errors():
            self.port.reset_input_buffer()

    def read_byte(self, timeout: float) -> int | None:
        """The next byte, or None when none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_cancel()
            with self.errors():
                data = self.port.read(1)
            if data:
                return int(data[0])
            if time.monotonic() >= deadline:
                return None

    def read_exact(self, n: int, gap: float) -> bytes:
        """``n`` bytes, or fewer when the line falls silent for ``gap`` seconds."""
        buffer = bytearray()
        last = time.monotonic()
        while len(buffer) < n:
            self.check_cancel()
            with self.errors():
                chunk = self.port.read(n - len(buffer))
            now = time.monotonic()
            if chunk:
                buffer += chunk
                last = now
            elif now - last >= gap:
                break
        return bytes(buffer)

    def read_available(self) -> bytes:
        """What has already arrived, without waiting."""
        with self.errors():
            waiting = self.port.in_waiting
            return bytes(self.port.read(waiting)) if waiting else b""

    def drain(self, quiet: float, limit: float) -> bytes:
        """Read and keep until the line has been silent for ``quiet`` seconds (at most
        ``limit`` seconds in all, against a peer that never stops talking)."""
        got = bytearray()
        start = last = time.monotonic()
        while True:
            self.check_cancel()
            with self.errors():
                chunk = self.port.read(4096)
            now = time.monotonic()
            if chunk:
                got += chunk
                last = now
            if now - last >= quiet or now - start >= limit:
                return bytes(got)

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class BlockSender:
    """Sends blocks one at a time and waits for each to be acknowledged ([SPEC] 7.3.3)."""

    def __init__(self, line: Line, timing: Timing, retries: int) -> None:
        self.line = line
        self.timing = timing
        self.retries = retries
        self.resends = 0
        # The pause before each block (Timing.pause) is for a line with no delay, a bare pty:
        # there a block can reach lrzsz before it has flushed its input after the ACK. On a
        # line with a wire time (a real UART, a paced simulator) the ACK itself arrives long
        # after that flush, and the pause only costs: about 1.3 ms a block, 1.2 % of a
        # 115200 line (bench/serial.py). It is dropped once a full block's round trip shows
        # the line's own delay, and restored after any refused or lost block.
        self.pause = timing.pause
        self._paced_blocks = 0  # full blocks in a row whose round trip showed a wire time

    def wait_start(self, timeout: float) -> bool:
        """Wait for the receiver's start request: 'C' (CRC-16) or NAK (checksum). Returns
        True for CRC. Anything else (console text, a stale ACK) is skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            byte = self.line.read_byte(max(remaining, 0.0))
            if byte is None:
                raise TransferTimeoutError(
                    self.line.protocol,
                    f"the receiver did not ask for the file within {timeout:g} s (no 'C' or "
                    "NAK); start it first (rb / rx, or loady / loadx at the U-Boot prompt) and "
                    "check the port and baud rate",
                )
            if byte in (CRC_REQUEST, NAK):
                follow = self.line.read_exact(1, _SETTLE)
                if not follow:
                    return byte == CRC_REQUEST
                if follow[0] == CAN and self._second_can():
                    self.line.peer_cancelled()
            elif byte == CAN and self._second_can():
                self.line.peer_cancelled()

    def _second_can(self) -> bool:
        return self.line.read_byte(_SECOND_CAN) == CAN

    def await_reply(self, timeout: float) -> int | None:
        """ACK, NAK or 'C', or None after ``timeout`` seconds. 'C' counts as a NAK: U-Boot
        refuses blocks with it ([UBOOT] xyzModem_stream_read) and lrzsz's sender takes it so
        (lsz.c wcputsec), though [SPEC] 8.2.3 would ignore it after the first ACK. CAN CAN
        raises ([SPEC] 4.1); other bytes are line noise and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            byte = self.line.read_byte(max(deadline - time.monotonic(), 0.0))
            if byte is None or byte in (ACK, NAK, CRC_REQUEST):
                return byte
            if byte == CAN:
                second = self.line.read_byte(_SECOND_CAN)
                if second == CAN:
                    self.line.peer_cancelled()
                if second in (ACK, NAK, CRC_REQUEST):
                    return second

    def wait_request(self, timeout: float) -> bool:
        """Wait for a 'C' or NAK asking for the next YMODEM block 0, skipping the extra ACKs
        U-Boot sends after an EOT ([UBOOT]: ACK in xyzModem_get_hdr, ACK again in
        xyzModem_stream_read, then 'C'). False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.await_reply(max(deadline - time.monotonic(), 0.0))
            if reply is None:
                return False
            if reply in (CRC_REQUEST, NAK):
                return True

    def send_block(self, index: int, frame: bytes, *, more_expected: bool = False) -> None:
        """Write one encoded block until it is acknowledged; ``index`` is its position in the
        transfer (block 0 is YMODEM's header), for messages. ``more_expected``: the receiver
        sends something right after this ACK (YMODEM's 'C' after block 0): keep it."""
        failures = 0
        while True:
            self.line.check_cancel()
            self.line.pause(self.pause)
            self.line.write(frame)
            written = time.monotonic()
            reply = self.await_reply(self.timing.response)
            if reply == ACK:
                if self.pause and index > 0 and len(frame) >= 1024 and failures == 0:
                    self._learn_line(len(frame), time.monotonic() - written)
                if more_expected:
                    return
                # A second ACK already queued (a receiver re-acknowledging a duplicate) would
                # be taken for the next block's: drop what is waiting, but heed a cancel.
                extra = self.line.read_available()
                if bytes([CAN, CAN]) in extra:
                    self.line.peer_cancelled()
                return
            failures += 1
            self.resends += 1
            self.pause = self.timing.pause
            self._paced_blocks = 0
            if failures > self.retries:
                if reply is None:
                    raise TransferTimeoutError(
                        self.line.protocol,
                        f"no answer to block {index} after {failures} tries of "
                        f"{self.timing.response:g} s (the receiver stopped or the cable is out)",
                        acknowledged=self.line.acknowledged,
                    )
                raise RetryLimitError(
                    self.line.protocol, index, self.retries, acknowledged=self.line.acknowledged
                )
            if reply is not None:
                # Refused: let the receiver finish draining before the block goes again.
                leftover = self.line.drain(
                    self.timing.resend_quiet, self.timing.resend_quiet + self.timing.response
                )
                if bytes([CAN, CAN]) in leftover:
                    self.line.peer_cancelled()

    def _learn_line(self, frame_bytes: int, round_trip: float) -> None:
        baudrate = getattr(self.line.port, "baudrate", None)
        if not isinstance(baudrate, int | float) or baudrate <= 0:
            return
        # 10 bits a byte (8N1): a paced line delivers the block's tail after the write returns.
        # Three blocks in a row, so that one slow answer on a loaded machine is not taken for
        # a wire time.
        if round_trip >= 0.5 * frame_bytes * 10 / baudrate:
            self._paced_blocks += 1
            if self._paced_blocks >= 3:
                self.pause = 0.0
        else:
            self._paced_blocks = 0

    def send_eot(self, index: int, *, silent_tries: int) -> bool:
        """Send EOT until it is acknowledged. NAK or 'C' makes it go again (some receivers NAK
        the first EOT, [SPEC] 5 Figure 4; U-Boot's 'C' is its NAK). After ``silent_tries``
        waits (``final`` seconds, at least 1.5) with no answer at all, give up and return
        False: the receiver has gone (lrzsz exits right after its ACK, which a pty then often
        loses, NOTES.md)."""
        silent = 0
        tries = 0
        while True:
            self.line.check_cancel()
            self.line.pause(self.timing.pause)
            self.line.write(bytes([EOT]))
            reply = self.await_reply(max(self.timing.final, _EOT_SILENCE))
            if reply == ACK:
                return True
            tries += 1
            if reply is None:
                silent += 1
                if silent >= silent_tries:
                    return False
            else:
                silent = 0
            if tries > self.retries:
                raise RetryLimitError(
                    self.line.protocol, index, self.retries, acknowledged=self.line.acknowledged
                )


@dataclasses.dataclass(frozen=True)
class Block:
    """A block that passed its checks: its number (mod 256) and payload."""

    number: int
    payload: bytes


class Outcome:
    """What ``BlockReceiver.read_packet`` saw when it was not a good block."""

    TIMEOUT = "timeout"
    EOT = "eot"
    BAD = "bad"


class BlockReceiver:
    """Reads and checks blocks ([SPEC] 7.3.2; the same checks as lrz.c wcgetsec)."""

    def __init__(self, line: Line, timing: Timing, retries: int, *, crc: bool) -> None:
        self.line = line
        self.timing = timing
        self.retries = retries
        self.crc = crc
        self.request = CRC_REQUEST if crc else NAK
        self.refused = 0  # blocks refused and asked for again

    def read_packet(self, timeout: float) -> Block | str:
        line = self.line
        first = line.read_byte(timeout)
        if first is None:
            return Outcome.TIMEOUT
        if first == EOT:
            # lrzsz accepts an EOT only when silence follows ("make sure eot really is eot and
            # not just mixmash", lrz.c wcgetsec): a corrupted header byte must not end a file.
            return Outcome.EOT if not line.read_exact(1, self.timing.nak_quiet) else Outcome.BAD
        if first == CAN:
            if line.read_byte(_SECOND_CAN) == CAN:
                line.peer_cancelled()
            return Outcome.BAD
        if first not in (SOH, STX):
            return Outcome.BAD
        size = SHORT if first == SOH else LONG
        needed = 2 + size + (2 if self.crc else 1)
        rest = line.read_exact(needed, self.timing.char)
        if len(rest) < needed or rest[0] ^ rest[1] != 0xFF:
            return Outcome.BAD
        payload = rest[2 : 2 + size]
        check = rest[2 + size :]
        if self.crc:
            if crc16_xmodem(payload) != int.from_bytes(check, "big"):
                return Outcome.BAD
        elif checksum8(payload) != check[0]:
            return Outcome.BAD
        return Block(rest[0], payload)

    def refuse(self, *, count: bool = True) -> None:
        """After a bad block: wait for the line to fall silent, then the caller asks again.
        ``count``: a damaged block (not noise before the transfer started)."""
        self.refused += count
        leftover = self.line.drain(self.timing.nak_quiet, self.timing.response)
        if ends_with_cancel(leftover):
            self.line.peer_cancelled()

    def abort(self, error: TransferError) -> NoReturn:
        self.line.send_cancel()
        raise error

    def receive_data(
        self,
        deliver: Callable[[bytes], None],
        *,
        first_reply: int,
        start_timeout: float | None,
    ) -> int:
        """Receive data blocks 1, 2, ... until EOT; ``deliver`` gets each new payload in order.

        ``first_reply`` is sent before the first block is read ('C'/NAK starting an XMODEM
        transfer, or YMODEM's 'C' after block 0). With ``start_timeout``, the first block may
        take that long, and the request is repeated every ``poll`` seconds meanwhile (XMODEM
        start); otherwise each block gets ``response`` seconds and ``retries`` tries.
        Returns the number of blocks delivered. The EOT is acknowledged by the caller.
        """
        expected = 1  # next block number, mod 256
        delivered = 0
        failures = 0
        timeouts_only = True
        reply = first_reply
        started = time.monotonic()
        while True:
            self.line.check_cancel()
            self.line.write(bytes([reply]))
            waiting_start = start_timeout is not None and delivered == 0
            packet = self.read_packet(self.timing.poll if waiting_start else self.timing.response)
            if isinstance(packet, Block):
                if packet.number == expected:
                    deliver(packet.payload)
                    delivered += 1
                    expected = (expected + 1) & 0xFF
                    failures = 0
                    timeouts_only = True
                    reply = ACK
                    continue
                if delivered and packet.number == (expected - 1) & 0xFF:
                    # The sender missed our ACK and sent the block again: acknowledge, keep one.
                    reply = ACK
                    continue
                if not delivered and packet.number == 0:
                    # YMODEM's block 0 again (its ACK was lost, or our 'C' crossed it, [SPEC]
                    # 8.2.3): acknowledge it and ask for the data once more.
                    self.line.write(bytes([ACK]))
                    reply = first_reply
                    continue
                self.abort(
                    TransferError(
                        self.line.protocol,
                        f"block {packet.number} arrived where block {expected} was expected "
                        "(the sender lost count); the transfer was cancelled",
                        acknowledged=self.line.acknowledged,
                    )
                )
            if packet == Outcome.EOT:
                return delivered
            if waiting_start:
                # Before the sender starts, silence and noise (console text, our own 'C'
                # echoed) only count against the start timeout.
                assert start_timeout is not None
                if packet == Outcome.BAD:
                    self.refuse(count=False)
                if time.monotonic() - started >= start_timeout:
                    self.abort(
                        TransferTimeoutError(
                            self.line.protocol,
                            f"the sender did not start within {start_timeout:g} s; start it "
                            "after this side (sb / sx), and check the port and baud rate",
                        )
                    )
                reply = self.request
                continue
            if packet == Outcome.BAD:
                timeouts_only = False
                self.refuse()
            failures += 1
            if failures > self.retries:
                if timeouts_only:
                    self.abort(
                        TransferTimeoutError(
                            self.line.protocol,
                            f"the sender went silent before block {delivered + 1} "
                            f"({failures} waits of {self.timing.response:g} s)",
                            acknowledged=self.line.acknowledged,
                        )
                    )
                self.abort(
                    RetryLimitError(
                        self.line.protocol,
                        delivered + 1,
                        self.retries,
                        acknowledged=self.line.acknowledged,
                    )
                )
            # Before the first data block the receiver still asks with 'C'/NAK ([SPEC] 8.2.2).
            reply = NAK if delivered else first_reply


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it: not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk (POSIX; Windows has no
    # directory handles to fsync, and os.replace is already atomic there).
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartFile:
    """A file being received: written under a temporary name in the target's folder, then
    flushed, fsynced and renamed into place only once it is complete; removed otherwise. The
    final name never holds a partial file.

    OSErrors (disk full, permissions) become ``DestinationError``.
    """

    def __init__(self, folder: Path, protocol: str) -> None:
        self.protocol = protocol
        self.folder = folder
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".xymodem-", suffix=".part")
        except OSError as exc:
            raise DestinationError(protocol, str(folder), exc.strerror or str(exc)) from exc
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            raise DestinationError(self.protocol, str(self.path), exc.strerror or str(exc)) from exc

    def commit(
        self,
        target: Path,
        *,
        overwrite: bool,
        mtime: int | None = None,
        mode: int | None = None,
    ) -> None:
        """Make the file durable and give it its name: flush, fsync, permissions, mtime,
        ``os.replace``, fsync the folder."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            # The sender's permission bits without setuid/setgid/sticky, as the umask allows.
            permissions = (mode & 0o777 if mode else 0o666) & ~_umask()
            self.path.chmod(permissions)
            if mtime:
                os.utime(self.path, (mtime, mtime))
            if not overwrite and target.exists():
                raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
            self.path.replace(target)
            _fsync_folder(target.parent)
        except OSError as exc:
            self.discard()
            raise DestinationError(self.protocol, str(target), exc.strerror or str(exc)) from exc

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
