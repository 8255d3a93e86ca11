"""A framed, reliable request/response link over a serial line (docs/serial-link.md).

Frames are COBS-encoded and delimited by 0x00, so a receiver finds the next frame after any
garbage; each carries a 16-byte header (version, type, flags, the sender's session id, a
sequence number, a cumulative acknowledgement, a channel, the payload length), the payload
and a CRC-32. On top of the frames:

- reliability: a sliding window of unacknowledged frames, cumulative acknowledgements with a
  selective-acknowledgement bitmap, retransmission on a timeout derived from the baud rate,
  the frame size and the window (or immediately when a later frame is known to have arrived:
  a UART never reorders), duplicate detection, and a bounded number of retries before
  ``LinkTimeoutError``. A silent line (a pulled cable) keeps the state of both ends: when it
  comes back, retransmission carries on where it stopped.
- sessions: a HELLO handshake agrees on the highest common protocol version
  (``VersionMismatchError`` if none), the frame size, the window and the largest message;
  each end draws a random session id, so a peer that restarted is recognised and the
  requests it can no longer answer fail with ``SessionResetError`` instead of being confused
  with the new session's.
- messages: ``request(kind, payload)`` sends a request (fragmented over as many frames as it
  needs) and waits for the response; ``serve(handler)`` answers the peer's requests with
  ``handler(kind, payload) -> bytes``, or an error response when it raises ``RemoteError``.
  Either end may request and serve.

Example::

    with LinkEndpoint(serial.Serial("/dev/ttyUSB0", 921600), role="host") as link:
        info = link.request("cmd", b'{"command": "info"}')

The endpoint owns the port while it is open (it sets the port's read timeout) but does not
close it. Errors: ``PortError`` (the port failed), ``LinkTimeoutError`` and its
``RequestTimeoutError``, ``SessionResetError``, ``VersionMismatchError``, ``RemoteError``,
``FrameError``, ``LinkClosedError``; using an endpoint after ``close()`` is a
``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import re
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import serial

from firmware_tools import _cobs
from firmware_tools.errors import (
    FrameError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    PortError,
    RemoteError,
    RequestTimeoutError,
    SessionResetError,
    VersionMismatchError,
)

__all__ = [
    "CRC_SIZE",
    "HEADER_SIZE",
    "KIND_ALLOWANCE",
    "SUPPORTED_VERSIONS",
    "BulkResult",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Handler",
    "LinkEndpoint",
    "LinkSettings",
    "LinkStats",
    "decode_frame",
    "derived_ack_timeout",
    "encode_frame",
    "measure_bulk",
    "negotiate_version",
]

_log = logging.getLogger("firmware_tools.link")

#: Protocol versions this implementation speaks, oldest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

# version, type, flags, reserved, session, seq, ack, channel, length: 16 bytes, big-endian.
_HEADER = struct.Struct(">BBBBIHHHH")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
CRC_SIZE = _CRC.size
#: A request's first frame carries its kind (a length byte and up to 32 ASCII characters)
#: before the data, so a frame's payload is at most ``max_payload + KIND_ALLOWANCE`` bytes and
#: a request of exactly ``max_payload`` bytes still fits one frame.
MAX_KIND = 32
KIND_ALLOWANCE = 1 + MAX_KIND
# HELLO payload: echo (the peer's session as the sender knows it), max_payload, window,
# max_message, the number of versions; then one byte per version. Frozen for every version.
_HELLO = struct.Struct(">IHHIB")
_MAX_VERSIONS = 16

# Limits a HELLO may announce and LinkSettings accepts.
MIN_PAYLOAD = 16
MAX_PAYLOAD = 16384
MAX_WINDOW = 256
MIN_MESSAGE = 64
MAX_MESSAGE = 2**32 - 1

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15
# Every session's first DATA frame has this sequence number (a test moves it near the wrap).
_INITIAL_SEQ = 0

# Flags. HELLO: REPLY. DATA: FIRST/LAST fragment of a message, and the message class.
_F_REPLY = 0x01
_F_FIRST = 0x01
_F_LAST = 0x02
_CLASS_MASK = 0x30
_CLASS_REQUEST = 0x00
_CLASS_RESPONSE = 0x10
_CLASS_ERROR = 0x20

# Allowance for everything that is not the line itself in one round trip: the USB adapter's
# latency timer (FTDI default 16 ms each way), the OS and the Python threads at both ends.
_LATENCY_ALLOWANCE = 0.25
# Retransmission backoff doubles per timeout up to this (or the base timeout when larger), so
# a line that comes back after a long cut is probed at least every few seconds.
_BACKOFF_CAP = 4.0
# A pure acknowledgement waits at most this fraction of the retransmission timeout (and this
# many seconds) for a DATA frame to carry it: on a busy link acknowledgements cost nothing.
_ACK_DELAY_FRACTION = 0.2
_ACK_DELAY_CAP = 0.1
# Reads return at least this often so that close() is prompt on ports without cancel_read.
_READ_TIMEOUT = 0.05
# At most this many frames of new data per write: acknowledgements are not held behind a
# long write (they go first in every batch).
_FRAMES_PER_WRITE = 2
# Messages being reassembled at once; more are refused (a flood must not grow memory).
_MAX_PARTIAL = 64
_MAX_REASON = 1024
_KIND_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,32}")


class FrameType(enum.IntEnum):
    """The frame types of protocol version 1 (docs/serial-link.md, "Frame types")."""

    HELLO = 1
    DATA = 2
    ACK = 3


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``session`` is the sender's session id, ``seq`` the DATA sequence
    number, ``ack`` the next sequence number the sender expects, ``channel`` a DATA frame's
    request id. Raises ``ValueError`` for a field out of range."""

    type: int
    payload: bytes = b""
    flags: int = 0
    session: int = 0
    seq: int = 0
    ack: int = 0
    channel: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        for name, value, high in (
            ("version", self.version, 0xFF),
            ("type", self.type, 0xFF),
            ("flags", self.flags, 0xFF),
            ("session", self.session, 0xFFFFFFFF),
            ("seq", self.seq, 0xFFFF),
            ("ack", self.ack, 0xFFFF),
            ("channel", self.channel, 0xFFFF),
        ):
            if not 0 <= value <= high:
                raise ValueError(f"frame {name} must be 0..{high}, got {value}")
        if len(self.payload) > 0xFFFF:
            raise ValueError(f"a frame payload is at most 65535 bytes, got {len(self.payload)}")


def _frame_limit(max_payload: int) -> int:
    return max_payload + KIND_ALLOWANCE


def _wire_size(max_payload: int) -> int:
    """Bytes on the wire of the largest frame: COBS of header, payload and CRC, 2 delimiters."""
    return _cobs.max_encoded_size(HEADER_SIZE + _frame_limit(max_payload) + CRC_SIZE) + 2


def _pack(
    type_: int,
    payload: bytes,
    *,
    flags: int = 0,
    session: int = 0,
    seq: int = 0,
    ack: int = 0,
    channel: int = 0,
    version: int = 1,
) -> bytes:
    body = (
        _HEADER.pack(version, type_, flags, 0, session, seq, ack, channel, len(payload)) + payload
    )
    return _cobs.encode(body + _CRC.pack(zlib.crc32(body))) + b"\x00"


def encode_frame(frame: Frame, *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """The bytes of ``frame`` on the wire: COBS(header, payload, CRC-32) and a 0x00 delimiter.

    Raises ``FrameError`` when the payload is over ``max_payload + KIND_ALLOWANCE`` bytes.
    Example: ``port.write(b"\\0" + encode_frame(Frame(FrameType.ACK, ack=3)))``.
    """
    if len(frame.payload) > _frame_limit(max_payload):
        raise FrameError(
            f"a frame payload of {len(frame.payload)} bytes is over the limit of "
            f"{_frame_limit(max_payload)} (max_payload {max_payload} + {KIND_ALLOWANCE})"
        )
    return _pack(
        frame.type,
        bytes(frame.payload),
        flags=frame.flags,
        session=frame.session,
        seq=frame.seq,
        ack=frame.ack,
        channel=frame.channel,
        version=frame.version,
    )


def _parse(block: bytes, limit: int) -> Frame | str:
    """The frame in one delimited block, or the reason it is not one."""
    body = _cobs.decode(block)
    if body is None:
        return "cobs"
    if len(body) < HEADER_SIZE + CRC_SIZE:
        return "short"
    (crc,) = _CRC.unpack_from(body, len(body) - CRC_SIZE)
    if zlib.crc32(memoryview(body)[: len(body) - CRC_SIZE]) != crc:
        return "crc"
    version, type_, flags, _reserved, session, seq, ack, channel, length = _HEADER.unpack_from(body)
    if length != len(body) - HEADER_SIZE - CRC_SIZE:
        return "length"
    if length > limit:
        return "oversize"
    return Frame(
        type=type_,
        payload=body[HEADER_SIZE : HEADER_SIZE + length],
        flags=flags,
        session=session,
        seq=seq,
        ack=ack,
        channel=channel,
        version=version,
    )


_REASONS = {
    "cobs": "not a valid COBS block",
    "short": "shorter than a header and a CRC",
    "crc": "the CRC-32 does not match (line noise)",
    "length": "the length field does not match the payload",
    "oversize": "the payload is over the size limit",
}


def decode_frame(block: bytes | bytearray | memoryview, *, max_payload: int = MAX_PAYLOAD) -> Frame:
    """The frame in one COBS block (the bytes between two 0x00 delimiters, without them).

    Raises ``FrameError`` when the block is not valid COBS, is too short, fails its CRC-32,
    has a wrong length field or a payload over ``max_payload + KIND_ALLOWANCE`` bytes.
    Example: ``decode_frame(encode_frame(frame)[:-1]) == frame``.
    """
    limit = _frame_limit(max_payload)
    if len(block) > _cobs.max_encoded_size(HEADER_SIZE + limit + CRC_SIZE):
        raise FrameError(f"a frame of {len(block)} encoded bytes is over the size limit")
    result = _parse(bytes(block), limit)
    if isinstance(result, str):
        raise FrameError(f"not a frame: {_REASONS[result]}")
    return result


class FrameDecoder:
    """Cuts a byte stream into frames at 0x00 delimiters; drops what does not decode.

    Holds at most one frame's worth of bytes: a block that grows past the largest valid frame
    (garbage, a lost delimiter, a peer with a larger frame size) is discarded up to the next
    0x00 and counted in ``oversize``; blocks that fail COBS, length or CRC checks are counted
    in ``crc_errors`` or ``rejected``. Only frames whose CRC-32 matches are returned.
    Example: ``frames = decoder.feed(port.read(port.in_waiting or 1))``.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._limit = _frame_limit(max_payload)
        self._max_block = _cobs.max_encoded_size(HEADER_SIZE + self._limit + CRC_SIZE)
        self._buffer = bytearray()
        self._discarding = False
        self.crc_errors = 0
        self.rejected = 0
        self.oversize = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a delimiter (never more than one largest frame)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        data = bytes(data)
        frames: list[Frame] = []
        start = 0
        while start < len(data):
            zero = data.find(b"\x00", start)
            end = len(data) if zero < 0 else zero
            if not self._discarding:
                if len(self._buffer) + end - start > self._max_block:
                    self._buffer.clear()
                    self._discarding = True
                    self.oversize += 1
                else:
                    self._buffer += data[start:end]
            if zero < 0:
                break
            start = zero + 1
            if self._discarding:
                self._discarding = False
                continue
            if not self._buffer:
                continue  # back-to-back delimiters: an empty block, not an error
            result = _parse(bytes(self._buffer), self._limit)
            self._buffer.clear()
            if isinstance(result, Frame):
                frames.append(result)
            elif result == "crc":
                self.crc_errors += 1
            elif result == "oversize":
                self.oversize += 1
            else:
                self.rejected += 1
        return frames


# --------------------------------------------------------------------------- settings


def negotiate_version(local: tuple[int, ...], remote: tuple[int, ...]) -> int:
    """The highest version both ends list. Raises ``VersionMismatchError`` when there is none.
    Example: ``negotiate_version((1, 2), (1,)) == 1``."""
    common = set(local) & set(remote)
    if not common:
        raise VersionMismatchError(tuple(sorted(local)), tuple(sorted(remote)))
    return max(common)


def _bits_per_byte(port: serial.SerialBase) -> float:
    """Bits on the wire per byte: start bit, data bits, parity bit if any, stop bits."""
    try:
        parity = 0 if port.parity == serial.PARITY_NONE else 1
        return float(1 + int(port.bytesize) + parity + float(port.stopbits))
    except (AttributeError, TypeError, ValueError):
        return 10.0


def derived_ack_timeout(baudrate: float, max_payload: int, window: int, bits: float = 10) -> float:
    """The retransmission timeout for a line: the time to send ``window + 2`` of the largest
    frames at ``baudrate`` (a full window queued ahead of a frame, the frame itself, and the
    acknowledgement behind a frame going the other way) plus 0.25 s for USB latency timers
    and scheduling. Example: ``derived_ack_timeout(115200, 1024, 8)`` is about 1.2 s."""
    frame_time = _wire_size(max_payload) * bits / baudrate
    return (window + 2) * frame_time + _LATENCY_ALLOWANCE


@dataclass(frozen=True)
class LinkSettings:
    """How an endpoint runs the link; the HELLO handshake takes the smaller of the two ends'
    ``max_payload``, ``window`` and ``max_message``, and the highest common version.

    ``max_payload``: application bytes one frame carries (16 .. 16384; a device's receive
    buffer is ``window`` frames of this). ``window``: frames sent and not yet acknowledged
    (1 .. 256). ``ack_timeout``: seconds before an unacknowledged frame is sent again; None
    derives it from the baud rate (``derived_ack_timeout``); it doubles on each retry, up to
    4 s. ``retries``: timeouts of one frame before the link is declared down
    (``LinkTimeoutError``). ``max_message``: the largest request or response accepted.
    ``versions``: the protocol versions offered. ``hello_interval``: seconds between HELLOs
    while no session is up. ``connect_timeout``: how long a host's ``__enter__`` waits for the
    handshake. ``max_queued_requests``: requests waiting for ``serve``; more are refused
    ("busy"). Raises ``ValueError`` for a value out of range.
    Example: ``LinkSettings(max_payload=256, window=2)`` for a device with little RAM.
    """

    max_payload: int = 1024
    window: int = 8
    ack_timeout: float | None = None
    retries: int = 10
    max_message: int = 4 * 1024 * 1024
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    hello_interval: float = 0.5
    connect_timeout: float = 10.0
    max_queued_requests: int = 64

    def __post_init__(self) -> None:
        if not MIN_PAYLOAD <= self.max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be {MIN_PAYLOAD}..{MAX_PAYLOAD}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}")
        if self.ack_timeout is not None and not (
            0 < self.ack_timeout < math.inf and math.isfinite(self.ack_timeout)
        ):
            raise ValueError("ack_timeout must be a positive number of seconds or None")
        if not 0 <= self.retries <= 1000:
            raise ValueError("retries must be 0..1000")
        if not MIN_MESSAGE <= self.max_message <= MAX_MESSAGE:
            raise ValueError(f"max_message must be {MIN_MESSAGE}..{MAX_MESSAGE}")
        versions = tuple(self.versions)
        if not versions or len(versions) > _MAX_VERSIONS or len(set(versions)) != len(versions):
            raise ValueError(f"versions must list 1..{_MAX_VERSIONS} distinct versions")
        unknown = [v for v in versions if v not in SUPPORTED_VERSIONS]
        if unknown:
            raise ValueError(f"versions {unknown} are not supported (only {SUPPORTED_VERSIONS})")
        object.__setattr__(self, "versions", versions)
        if not 0 < self.hello_interval <= 60:
            raise ValueError("hello_interval must be in (0, 60] seconds")
        if not 0 < self.connect_timeout < math.inf:
            raise ValueError("connect_timeout must be a positive number of seconds")
        if not 1 <= self.max_queued_requests <= 65535:
            raise ValueError("max_queued_requests must be 1..65535")


@dataclass(frozen=True)
class LinkStats:
    """Counters of one endpoint since it opened (a snapshot).

    ``frames_sent``/``frames_received`` count valid frames; ``retransmissions`` frames sent
    again (``timeouts`` of them after a timeout, the rest because a later frame was known to
    have arrived); ``duplicates`` DATA frames received twice; ``crc_errors``, ``oversize``,
    ``rejected`` blocks the decoder dropped; ``sessions`` sessions established.
    """

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    duplicates: int = 0
    crc_errors: int = 0
    oversize: int = 0
    rejected: int = 0
    sessions: int = 0


#: ``handler(kind, payload) -> response``; raise ``RemoteError(code, reason)`` to refuse.
Handler = Callable[[str, bytes], "bytes | bytearray | memoryview"]


# --------------------------------------------------------------------------- endpoint state


class _Pending:
    """A request of ours waiting for its response."""

    __slots__ = ("deadline", "delivered", "future", "kind", "message", "request_id", "timeout")

    def __init__(
        self, future: Future[bytes], kind: str, request_id: int, timeout: float | None
    ) -> None:
        self.future = future
        self.kind = kind
        self.request_id = request_id
        self.timeout = timeout
        self.deadline = math.inf if timeout is None else time.monotonic() + timeout
        self.delivered = False
        self.message: _Outgoing | None = None


class _Outgoing:
    """A message queued for sending, cut into frames as the window opens."""

    __slots__ = ("channel", "cls", "data", "offset", "owner", "prefix")

    def __init__(
        self, cls: int, channel: int, prefix: bytes, data: bytes, owner: _Pending | None
    ) -> None:
        self.cls = cls
        self.channel = channel
        self.prefix = prefix
        self.data = data
        self.offset = 0
        self.owner = owner


class _Sent:
    """A DATA frame sent and not yet acknowledged."""

    __slots__ = ("channel", "flags", "owner", "payload", "sacked", "sent_at", "timeouts", "tx")

    def __init__(self, flags: int, channel: int, payload: bytes, owner: _Pending | None) -> None:
        self.flags = flags
        self.channel = channel
        self.payload = payload
        self.owner = owner
        self.sacked = False
        self.sent_at = math.inf
        self.timeouts = 0
        self.tx = 0


class _Partial:
    """A message of the peer being reassembled."""

    __slots__ = ("cls", "data", "error", "kind")

    def __init__(self, cls: int, kind: str) -> None:
        self.cls = cls
        self.kind = kind
        self.data = bytearray()
        self.error: str | None = None  # "too_large", "malformed", "busy", "ignored"


class _Incoming:
    __slots__ = ("channel", "epoch", "kind", "payload")

    def __init__(self, kind: str, payload: bytes, channel: int, epoch: int) -> None:
        self.kind = kind
        self.payload = payload
        self.channel = channel
        self.epoch = epoch


def _seq_add(a: int, b: int) -> int:
    return (a + b) % _SEQ_MOD


def _seq_diff(a: int, b: int) -> int:
    """``a - b`` modulo 2^16."""
    return (a - b) % _SEQ_MOD


def _new_session() -> int:
    return secrets.randbelow(0xFFFFFFFF) + 1


def _error_payload(code: str, reason: str) -> bytes:
    raw_code = code.encode("ascii", "replace")[:MAX_KIND] or b"failed"
    raw_reason = reason.encode("utf-8", "replace")[:_MAX_REASON]
    return bytes([len(raw_code)]) + raw_code + raw_reason


def _parse_error(payload: bytes) -> RemoteError:
    if payload and 1 <= payload[0] <= MAX_KIND and len(payload) > payload[0]:
        code = payload[1 : 1 + payload[0]].decode("ascii", "replace")
        reason = payload[1 + payload[0] :].decode("utf-8", "replace")
        return RemoteError(code, reason)
    return RemoteError("malformed", "the peer's error response did not decode")


def _check_kind(kind: str) -> bytes:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValueError(
            f"a request kind is 1..{MAX_KIND} characters of A-Z a-z 0-9 _ . : / -, got {kind!r}"
        )
    return kind.encode("ascii")


_State = Literal["new", "open", "closed"]


class LinkEndpoint:
    """One end of the link on an open serial port; a reader and a writer thread run it.

    ``role`` is "host" (the laptop: ``__enter__`` waits for the handshake) or "device" (waits
    for a host forever). Both ends may ``request`` and ``serve``. Use as a context manager, or
    call ``open()`` and ``close()``; an endpoint is opened once.

    Raises ``ValueError`` for a closed port or a bad role. Example::

        with LinkEndpoint(port, role="device") as link:
            link.serve(lambda kind, payload: payload)       # an echo server, until closed
    """

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        role: Literal["host", "device"] = "host",
        settings: LinkSettings | None = None,
    ) -> None:
        if role not in ("host", "device"):
            raise ValueError(f'role must be "host" or "device", got {role!r}')
        if not getattr(port, "is_open", False):
            raise ValueError("open the serial port before giving it to a LinkEndpoint")
        self.port = port
        self.role = role
        self.settings = settings if settings is not None else LinkSettings()
        self._port_name = str(getattr(port, "port", None) or getattr(port, "name", "?"))
        self._state: _State = "new"
        self._cond = threading.Condition(threading.Lock())
        self._decoder = FrameDecoder(self.settings.max_payload)
        self._failure: LinkError | PortError | None = None
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._saved_timeout: float | None = None
        self._saved_write_timeout: float | None = None
        # A write that cannot finish in this time (a line that does not drain) is given up:
        # the frames in it are retransmitted like lost ones, and close() is never stuck.
        self._write_timeout = max(2.0, 2 * self._ack_timeout_for(self.settings.max_payload))
        # session
        self._session = _new_session()
        self._peer_session = 0
        self._peer_knows_me = False
        self._version = 0
        self._mismatch: VersionMismatchError | None = None
        self._max_payload = self.settings.max_payload
        self._window = self.settings.window
        self._max_message = self.settings.max_message
        self._epoch = 0
        self._hello_due = True
        self._reply_due = False
        self._next_hello = 0.0
        # sending
        self._out: deque[_Outgoing] = deque()
        self._unacked: dict[int, _Sent] = {}
        self._snd_una = _INITIAL_SEQ
        self._snd_nxt = _INITIAL_SEQ
        self._tx = 0
        self._delivered_tx = 0
        # receiving
        self._rcv_nxt = _INITIAL_SEQ
        self._rcv_buf: dict[int, Frame] = {}
        self._ack_due = False  # an acknowledgement is owed ...
        self._ack_now = False  # ... and cannot wait (a loss, a duplicate, half a window)
        self._ack_deadline = math.inf  # ... or waits until then for a DATA frame to carry it
        self._unacked_in = 0  # DATA frames received since our last acknowledgement
        # messages
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._partial: dict[tuple[bool, int], _Partial] = {}
        self._requests: deque[_Incoming] = deque()
        self._next_deadline = math.inf
        # counters
        self._stats = dict.fromkeys(LinkStats.__dataclass_fields__, 0)

    # ----------------------------------------------------------------------- lifecycle

    def __repr__(self) -> str:
        return (
            f"<LinkEndpoint {self.role} {self._port_name} {self._state}"
            f"{' established' if self.established else ''}>"
        )

    def open(self) -> LinkEndpoint:
        """Start the reader and writer threads and the handshake. Raises ``RuntimeError`` if
        the endpoint was opened before."""
        with self._cond:
            if self._state != "new":
                raise RuntimeError(f"this LinkEndpoint is {self._state}; make a new one")
            self._state = "open"
        with self._port_errors():
            self._saved_timeout = self.port.timeout
            self._saved_write_timeout = self.port.write_timeout
            self.port.timeout = _READ_TIMEOUT
            self.port.write_timeout = self._write_timeout
        for name, target in (("reader", self._read_loop), ("writer", self._write_loop)):
            thread = threading.Thread(
                target=target, name=f"link-{self.role}-{name} {self._port_name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def close(self) -> None:
        """Stop the threads; requests still waiting fail with ``LinkClosedError``; ``serve``
        returns. The port stays open (its read timeout restored). Idempotent."""
        with self._cond:
            if self._state == "closed":
                return
            was_open = self._state == "open"
            self._state = "closed"
            self._closing = True
            failed = self._abandon(LinkClosedError("the link endpoint was closed"))
            self._cond.notify_all()
        self._resolve(failed)
        if not was_open:
            return
        # No cancel_read()/cancel_write(): they leave a byte in the port's abort pipes that
        # would cut short the next read or write of whoever uses the port after us. The
        # threads notice _closing within a read timeout, or a write timeout.
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(self._write_timeout + 2 * _READ_TIMEOUT + 1.0)
        with contextlib.suppress(Exception):
            self.port.timeout = self._saved_timeout
            self.port.write_timeout = self._saved_write_timeout

    def __enter__(self) -> LinkEndpoint:
        self.open()
        if self.role == "host":
            try:
                self.connect(self.settings.connect_timeout)
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self, timeout: float | None = None) -> None:
        """Wait until a session with the peer is up.

        Raises ``VersionMismatchError`` when the two ends share no version,
        ``LinkTimeoutError`` when the peer did not answer within ``timeout`` seconds (default
        ``settings.connect_timeout``), ``PortError`` when the port failed.
        Example: ``link.open().connect(5)``.
        """
        timeout = self.settings.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_usable()
            while not self.established:
                self._check_usable()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinkTimeoutError(
                        f"no answer to HELLO from the peer on {self._port_name} within "
                        f"{timeout:g} s (is its link endpoint running, at the same baud rate?)"
                    )
                self._cond.wait(left)

    @property
    def state(self) -> _State:
        """The lifecycle state: "new", "open" or "closed"."""
        return self._state

    @property
    def established(self) -> bool:
        """True while a session with the peer is up."""
        return bool(self._version and self._peer_session and self._peer_knows_me)

    @property
    def session(self) -> int:
        """This end's current session id (a new one after every reset)."""
        return self._session

    @property
    def peer_session(self) -> int:
        """The peer's session id, 0 before the handshake."""
        return self._peer_session

    @property
    def version(self) -> int:
        """The protocol version agreed with the peer, 0 before the handshake."""
        return self._version

    @property
    def max_payload(self) -> int:
        """The application bytes per frame agreed with the peer (this end's before)."""
        return self._max_payload

    @property
    def window(self) -> int:
        """The window agreed with the peer (this end's before)."""
        return self._window

    @property
    def max_message(self) -> int:
        """The largest request or response agreed with the peer (this end's before)."""
        return self._max_message

    @property
    def ack_timeout(self) -> float:
        """The base retransmission timeout in seconds (settings, or derived from the line)."""
        return self._ack_timeout_for(self._max_payload, self._window)

    def _ack_timeout_for(self, max_payload: int, window: int | None = None) -> float:
        if self.settings.ack_timeout is not None:
            return self.settings.ack_timeout
        baud = float(getattr(self.port, "baudrate", 0) or 0) or 9600.0
        window = self.settings.window if window is None else window
        return derived_ack_timeout(baud, max_payload, window, _bits_per_byte(self.port))

    def stats(self) -> LinkStats:
        """The counters so far. Example: ``link.stats().retransmissions``."""
        with self._cond:
            counts = dict(self._stats)
            counts["crc_errors"] = self._decoder.crc_errors
            counts["oversize"] = self._decoder.oversize
            counts["rejected"] = self._decoder.rejected
            return LinkStats(**counts)

    # ----------------------------------------------------------------------- requests

    def submit(
        self,
        kind: str,
        payload: bytes | bytearray | memoryview,
        *,
        timeout: float | None = None,
    ) -> Future[bytes]:
        """Send a request and return at once; the future gets the response bytes.

        The future fails with ``RemoteError`` (the peer refused), ``RequestTimeoutError`` (no
        response within ``timeout`` seconds; None waits as long as the link is up),
        ``LinkTimeoutError`` (the link went down), ``SessionResetError`` (the peer restarted),
        ``LinkClosedError`` or ``PortError``. Raises ``FrameError`` at once when the payload
        is over the agreed ``max_message``, ``ValueError`` for a bad kind.
        Example: ``futures = [link.submit("push", chunk) for chunk in chunks]``.
        """
        prefix = _check_kind(kind)
        data = bytes(payload)
        future: Future[bytes] = Future()
        future.set_running_or_notify_cancel()
        with self._cond:
            self._check_usable()
            if len(data) > self._max_message:
                raise FrameError(
                    f"a request of {len(data)} bytes is over the largest message the link "
                    f"accepts ({self._max_message} bytes)"
                )
            request_id = self._allocate_id()
            pending = _Pending(future, kind, request_id, timeout)
            self._pending[request_id] = pending
            message = _Outgoing(
                _CLASS_REQUEST, request_id, bytes([len(prefix)]) + prefix, data, pending
            )
            pending.message = message
            self._out.append(message)
            self._next_deadline = min(self._next_deadline, pending.deadline)
            self._cond.notify_all()
        return future

    def request(
        self,
        kind: str,
        payload: bytes | bytearray | memoryview = b"",
        *,
        timeout: float | None = 30.0,
    ) -> bytes:
        """Send a request and wait for its response (see ``submit`` for what it raises).

        Example: ``link.request("cmd", b'{"command": "ping"}', timeout=10)``.
        """
        future = self.submit(kind, payload, timeout=timeout)
        try:
            # The writer thread fails the future at its deadline; the margin is a backstop.
            return future.result(None if timeout is None else timeout + 5.0)
        except FutureTimeoutError:
            raise RequestTimeoutError(kind, -1, timeout or 0.0, delivered=False) from None

    def serve(self, handler: Handler, *, stop: threading.Event | None = None) -> None:
        """Answer the peer's requests with ``handler(kind, payload)`` in the calling thread
        until the endpoint is closed or ``stop`` is set.

        A handler that raises ``RemoteError(code, reason)`` sends that refusal; any other
        exception is logged and answered with code "failed". Several threads may serve at
        once. Raises ``PortError`` when the port fails, ``RuntimeError`` when not open.
        Example: ``threading.Thread(target=link.serve, args=(handler,)).start()``.
        """
        while True:
            with self._cond:
                while not self._requests:
                    if self._closing:
                        return
                    if isinstance(self._failure, PortError):
                        raise self._failure
                    if self._state != "open":
                        raise RuntimeError(f"this LinkEndpoint is {self._state}")
                    if stop is not None and stop.is_set():
                        return
                    self._cond.wait(0.1 if stop is not None else None)
                incoming = self._requests.popleft()
            cls, body = self._answer(handler, incoming)
            with self._cond:
                if incoming.epoch != self._epoch or self._closing:
                    continue  # the session that asked is gone; its channel ids mean nothing now
                if len(body) > self._max_message and cls == _CLASS_RESPONSE:
                    cls, body = (
                        _CLASS_ERROR,
                        _error_payload(
                            "too_large",
                            f"the response of {len(body)} bytes is over the largest message the "
                            f"link accepts ({self._max_message} bytes)",
                        ),
                    )
                message = _Outgoing(cls, incoming.channel, b"", body, None)
                self._out.append(message)
                self._cond.notify_all()

    @staticmethod
    def _answer(handler: Handler, incoming: _Incoming) -> tuple[int, bytes]:
        try:
            result = handler(incoming.kind, incoming.payload)
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise TypeError(f"the handler returned {type(result).__name__}, not bytes")
            return _CLASS_RESPONSE, bytes(result)
        except RemoteError as exc:
            return _CLASS_ERROR, _error_payload(exc.code, exc.reason)
        except Exception as exc:
            _log.exception("link handler failed on a %r request", incoming.kind)
            return _CLASS_ERROR, _error_payload("failed", f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------------- internals

    def _check_usable(self) -> None:
        """Raise why requests cannot be made now (called with the lock held)."""
        if self._state != "open":
            raise RuntimeError(f"this LinkEndpoint is {self._state}")
        if self._failure is not None:
            raise self._failure
        if self._mismatch is not None:
            raise self._mismatch

    def _allocate_id(self) -> int:
        for _ in range(_SEQ_MOD):
            self._next_id = (self._next_id + 1) % _SEQ_MOD
            if self._next_id and self._next_id not in self._pending:  # ids are 1 .. 65535
                return self._next_id
        raise LinkError("65536 requests are waiting for a response; wait for some first")

    @contextlib.contextmanager
    def _port_errors(self) -> Iterator[None]:
        """The seam where pyserial's errors become ``PortError``."""
        try:
            yield
        except serial.SerialException as exc:
            raise PortError(self._port_name, str(exc) or type(exc).__name__) from exc
        except OSError as exc:
            raise PortError(self._port_name, exc.strerror or str(exc)) from exc

    @staticmethod
    def _resolve(results: list[tuple[Future[bytes], bytes | BaseException]]) -> None:
        for future, outcome in results:
            with contextlib.suppress(InvalidStateError):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _abandon(self, error: BaseException) -> list[tuple[Future[bytes], bytes | BaseException]]:
        """Forget everything in flight; every pending request fails with ``error``."""
        failed: list[tuple[Future[bytes], bytes | BaseException]] = [
            (p.future, error) for p in self._pending.values()
        ]
        self._pending.clear()
        self._out.clear()
        self._unacked.clear()
        self._rcv_buf.clear()
        self._partial.clear()
        self._requests.clear()
        self._snd_una = self._snd_nxt = self._rcv_nxt = _INITIAL_SEQ
        self._delivered_tx = self._tx
        self._ack_due = self._ack_now = False
        self._ack_deadline = math.inf
        self._unacked_in = 0
        self._epoch += 1
        return failed

    def _reset(self, error: BaseException) -> list[tuple[Future[bytes], bytes | BaseException]]:
        """End the session: abandon what is in flight and start over with a new session id,
        so that frames of the old session still on the line cannot be taken for new ones."""
        failed = self._abandon(error)
        self._session = _new_session()
        self._peer_session = 0
        self._peer_knows_me = False
        self._version = 0
        self._max_payload = self.settings.max_payload
        self._window = self.settings.window
        self._max_message = self.settings.max_message
        self._hello_due = True
        self._cond.notify_all()
        return failed

    def _fail(self, error: PortError) -> None:
        with self._cond:
            if self._closing:
                return
            self._failure = error
            failed = self._abandon(error)
            self._cond.notify_all()
        _log.warning("link on %s failed: %s", self._port_name, error)
        self._resolve(failed)

    # ----------------------------------------------------------------------- reader

    def _read_loop(self) -> None:
        port = self.port
        while not self._closing:
            try:
                with self._port_errors():
                    waiting = port.in_waiting
                    data = port.read(waiting if waiting else 1)
            except PortError as exc:
                if not self._closing:
                    self._fail(exc)
                return
            except Exception as exc:  # a closed fd under pyserial raises TypeError and others
                if not self._closing:
                    self._fail(PortError(self._port_name, f"read failed: {exc!r}"))
                return
            if not data:
                continue
            with self._cond:
                self._stats["bytes_received"] += len(data)
                frames = self._decoder.feed(data)
                if not frames:
                    continue
                results: list[tuple[Future[bytes], bytes | BaseException]] = []
                for frame in frames:
                    self._stats["frames_received"] += 1
                    self._on_frame(frame, results)
                self._cond.notify_all()
            self._resolve(results)

    def _on_frame(
        self, frame: Frame, results: list[tuple[Future[bytes], bytes | BaseException]]
    ) -> None:
        if frame.type == FrameType.HELLO:
            self._on_hello(frame, results)
            return
        if frame.type not in (FrameType.DATA, FrameType.ACK):
            return
        if frame.session != self._peer_session or not self._peer_session:
            # A frame of a session we do not know: the peer restarted, or we did. Tell it who
            # we are; its HELLO (with its new session id) then resets us.
            self._hello_due = True
            return
        if frame.version != self._version:
            return
        if not self._peer_knows_me:
            # The peer sends DATA and ACK only in an established session: it knows us.
            self._peer_knows_me = True
            self._stats["sessions"] += 1
            _log.debug("link session up on %s", self._port_name)
        self._on_ack(frame)
        if frame.type == FrameType.DATA:
            self._on_data(frame, results)

    def _on_hello(
        self, frame: Frame, results: list[tuple[Future[bytes], bytes | BaseException]]
    ) -> None:
        payload = frame.payload
        if len(payload) < _HELLO.size or frame.session == 0:
            return
        echo, max_payload, window, max_message, count = _HELLO.unpack_from(payload)
        versions = tuple(payload[_HELLO.size : _HELLO.size + count])
        if not 1 <= count <= _MAX_VERSIONS or len(versions) != count or 0 in versions:
            return
        if max_payload < MIN_PAYLOAD or window < 1 or max_message < MIN_MESSAGE:
            return
        was_established = self.established
        learned = frame.session != self._peer_session
        if learned and was_established:
            # Only an established session has frames in flight to confuse. Before that the
            # peer's new id is simply adopted: resetting (and so changing our own id) there
            # would make the peer reset in turn, and two ends could chase each other forever.
            old = self._peer_session
            _log.info(
                "link peer on %s restarted (session %08x -> %08x)",
                self._port_name,
                old,
                frame.session,
            )
            results += self._reset(SessionResetError(old, frame.session))
        if learned:
            self._peer_session = frame.session
            try:
                self._version = negotiate_version(self.settings.versions, versions)
                self._mismatch = None
            except VersionMismatchError as exc:
                self._version = 0
                self._mismatch = exc
                results += [(p.future, exc) for p in self._pending.values()]
                self._pending.clear()
                self._out.clear()
            self._max_payload = min(self.settings.max_payload, max_payload, MAX_PAYLOAD)
            self._window = min(self.settings.window, window, MAX_WINDOW)
            self._max_message = min(self.settings.max_message, max_message)
        if echo == self._session and not self._peer_knows_me and self._version:
            self._peer_knows_me = True
        if learned or not frame.flags & _F_REPLY or echo != self._session:
            self._reply_due = True
        if self.established and not was_established:
            self._stats["sessions"] += 1
            _log.debug("link session up on %s (version %d)", self._port_name, self._version)

    def _on_ack(self, frame: Frame) -> None:
        acked = _seq_diff(frame.ack, self._snd_una)
        in_flight = _seq_diff(self._snd_nxt, self._snd_una)
        if acked > in_flight:
            return  # an acknowledgement of frames we never sent: stale or bogus
        for _ in range(acked):
            sent = self._unacked.pop(self._snd_una, None)
            self._snd_una = _seq_add(self._snd_una, 1)
            if sent is None:
                continue
            self._delivered_tx = max(self._delivered_tx, sent.tx)
            if sent.owner is not None and sent.flags & _F_LAST:
                sent.owner.delivered = True
        if frame.type == FrameType.ACK:
            for index, byte in enumerate(frame.payload[: (MAX_WINDOW + 7) // 8]):
                for bit in range(8):
                    if byte >> bit & 1:
                        sent = self._unacked.get(_seq_add(frame.ack, 1 + index * 8 + bit))
                        if sent is not None and not sent.sacked:
                            sent.sacked = True
                            self._delivered_tx = max(self._delivered_tx, sent.tx)

    def _on_data(
        self, frame: Frame, results: list[tuple[Future[bytes], bytes | BaseException]]
    ) -> None:
        if not self._ack_due:
            # Delayed acknowledgement: a DATA frame of ours going out soon carries it for
            # free; the delay is a fraction of the peer's retransmission timeout.
            self._ack_due = True
            self._ack_deadline = time.monotonic() + min(
                _ACK_DELAY_CAP, _ACK_DELAY_FRACTION * self.ack_timeout
            )
        offset = _seq_diff(frame.seq, self._rcv_nxt)
        if offset >= self._window or frame.seq in self._rcv_buf:
            if offset >= _SEQ_HALF or frame.seq in self._rcv_buf:
                self._stats["duplicates"] += 1
            self._ack_now = True  # the peer resends: our acknowledgement was lost
            return
        if len(frame.payload) > _frame_limit(self._max_payload):
            return
        self._unacked_in += 1
        if offset or self._unacked_in * 2 >= self._window:
            self._ack_now = True  # a gap (report it at once), or half the peer's window
        self._rcv_buf[frame.seq] = frame
        while self._rcv_nxt in self._rcv_buf:
            self._deliver(self._rcv_buf.pop(self._rcv_nxt), results)
            self._rcv_nxt = _seq_add(self._rcv_nxt, 1)

    def _deliver(
        self, frame: Frame, results: list[tuple[Future[bytes], bytes | BaseException]]
    ) -> None:
        """One in-order DATA frame: a fragment of a request, a response or an error."""
        cls = frame.flags & _CLASS_MASK
        is_request = cls == _CLASS_REQUEST
        key = (is_request, frame.channel)
        data = frame.payload
        if frame.flags & _F_FIRST:
            kind = ""
            partial = _Partial(cls, kind)
            if is_request:
                size = data[0] if data else 0
                raw = data[1 : 1 + size]
                data = data[1 + size :]
                try:
                    partial.kind = raw.decode("ascii")
                except UnicodeDecodeError:
                    partial.kind = ""
                if not _KIND_RE.fullmatch(partial.kind):
                    partial.error = "malformed"
            elif frame.channel not in self._pending:
                partial.error = "ignored"  # the answer to a request we gave up on
            # Requests being reassembled are capped (a flood must not grow memory); responses
            # are bounded already, one per request of ours that is waiting.
            if is_request and key not in self._partial and len(self._partial) >= _MAX_PARTIAL:
                partial.error = partial.error or "busy"
            self._partial[key] = partial
        else:
            found = self._partial.get(key)
            if found is None:
                return  # the rest of a message whose start belonged to another session
            partial = found
        if partial.error is None:
            if len(partial.data) + len(data) > self._max_message:
                partial.error = "too_large"
                partial.data = bytearray()
            else:
                partial.data += data
        if not frame.flags & _F_LAST:
            return
        del self._partial[key]
        if is_request:
            self._on_request(partial, frame.channel)
            return
        pending = self._pending.pop(frame.channel, None)
        if pending is None or partial.error == "ignored":
            return
        if partial.error is not None:
            results.append(
                (
                    pending.future,
                    FrameError(
                        f"the response to a {pending.kind!r} request is over the largest message "
                        f"the link accepts ({self._max_message} bytes)"
                    ),
                )
            )
        elif partial.cls == _CLASS_ERROR:
            results.append((pending.future, _parse_error(bytes(partial.data))))
        else:
            results.append((pending.future, bytes(partial.data)))

    def _on_request(self, partial: _Partial, channel: int) -> None:
        error = partial.error
        if error is None and len(self._requests) >= self.settings.max_queued_requests:
            error = "busy"
        if error is None:
            self._requests.append(
                _Incoming(partial.kind, bytes(partial.data), channel, self._epoch)
            )
            return
        reasons = {
            "busy": f"{len(self._requests)} requests are waiting to be served; try again later",
            "too_large": f"the request is over the largest message ({self._max_message} bytes)",
            "malformed": "the request's kind did not decode",
        }
        message = _Outgoing(_CLASS_ERROR, channel, b"", _error_payload(error, reasons[error]), None)
        self._out.append(message)

    # ----------------------------------------------------------------------- writer

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing or self._failure is not None:
                        return
                    frames, sent, results, wait = self._collect(time.monotonic())
                    if frames or results:
                        break
                    self._cond.wait(wait)
            self._resolve(results)
            if not frames:
                continue
            data = b"\x00" + b"".join(frames)
            try:
                with self._port_errors():
                    try:
                        self.port.write(data)
                    except serial.SerialTimeoutException:
                        # Part of the batch may be on the line: the receiver drops the torn
                        # frame at the next delimiter, and the timers resend what is missing.
                        _log.debug("link write on %s timed out", self._port_name)
            except PortError as exc:
                if not self._closing:
                    self._fail(exc)
                return
            except Exception as exc:
                if not self._closing:
                    self._fail(PortError(self._port_name, f"write failed: {exc!r}"))
                return
            now = time.monotonic()
            with self._cond:
                for entry in sent:
                    entry.sent_at = now
                self._stats["frames_sent"] += len(frames)
                self._stats["bytes_sent"] += len(data)

    def _hello(self, reply: bool) -> bytes:
        payload = _HELLO.pack(
            self._peer_session,
            self.settings.max_payload,
            self.settings.window,
            self.settings.max_message,
            len(self.settings.versions),
        ) + bytes(self.settings.versions)
        return _pack(
            FrameType.HELLO, payload, flags=_F_REPLY if reply else 0, session=self._session
        )

    def _data(self, entry: _Sent, seq: int) -> bytes:
        self._tx += 1
        entry.tx = self._tx
        entry.sent_at = math.inf  # set when the write returns
        return _pack(
            FrameType.DATA,
            entry.payload,
            flags=entry.flags,
            session=self._session,
            seq=seq,
            ack=self._rcv_nxt,
            channel=entry.channel,
            version=self._version,
        )

    def _sack(self) -> bytes:
        bits = bytearray()
        for seq in self._rcv_buf:
            index = _seq_diff(seq, self._rcv_nxt) - 1
            if 0 <= index < MAX_WINDOW:
                while len(bits) <= index // 8:
                    bits.append(0)
                bits[index // 8] |= 1 << (index % 8)
        return bytes(bits)

    def _collect(
        self, now: float
    ) -> tuple[list[bytes], list[_Sent], list[tuple[Future[bytes], bytes | BaseException]], float]:
        """What to write now (with the lock held): HELLOs, then an acknowledgement, then
        retransmissions, then new frames while the window allows; and how long to sleep."""
        frames: list[bytes] = []
        sent: list[_Sent] = []
        results: list[tuple[Future[bytes], bytes | BaseException]] = []
        wake = now + 0.5
        # Requests past their deadline.
        if now >= self._next_deadline:
            self._next_deadline = math.inf
            for request_id, pending in list(self._pending.items()):
                if now >= pending.deadline:
                    del self._pending[request_id]
                    message = pending.message
                    if message is not None and message.offset == 0:
                        with contextlib.suppress(ValueError):
                            self._out.remove(message)  # never started: nothing reaches the peer
                    results.append(
                        (
                            pending.future,
                            RequestTimeoutError(
                                pending.kind,
                                request_id,
                                pending.timeout or 0.0,
                                delivered=pending.delivered,
                            ),
                        )
                    )
                else:
                    self._next_deadline = min(self._next_deadline, pending.deadline)
        wake = min(wake, self._next_deadline)
        # Handshake.
        if not self.established:
            if self._hello_due or self._reply_due or now >= self._next_hello:
                frames.append(self._hello(reply=self._reply_due))
                self._hello_due = self._reply_due = False
                self._next_hello = now + self.settings.hello_interval
            wake = min(wake, self._next_hello)
            if not self.established:
                return frames, sent, results, max(0.0, wake - now)
        if self._reply_due or self._hello_due:
            frames.append(self._hello(reply=self._reply_due))
            self._hello_due = self._reply_due = False
        ack_at = len(frames)
        # Retransmissions: holes behind a frame known to have arrived (a UART never reorders,
        # so they were lost), and frames whose timer ran out.
        base = self.ack_timeout
        for seq, entry in self._unacked.items():
            if entry.sacked:
                continue
            if entry.tx < self._delivered_tx:
                self._stats["retransmissions"] += 1
            else:
                timeout = min(base * 2**entry.timeouts, max(base, _BACKOFF_CAP))
                due = entry.sent_at + timeout
                if now < due:
                    wake = min(wake, due)
                    continue
                entry.timeouts += 1
                self._stats["retransmissions"] += 1
                self._stats["timeouts"] += 1
                if entry.timeouts > self.settings.retries:
                    error = LinkTimeoutError(
                        f"frame {seq} was not acknowledged after {self.settings.retries} "
                        f"retransmissions on {self._port_name}: the peer is gone, the cable "
                        "is pulled or the baud rates differ; the session was reset"
                    )
                    _log.warning("%s", error)
                    results += self._reset(error)
                    frames.append(self._hello(reply=False))
                    self._hello_due = False
                    self._next_hello = now + self.settings.hello_interval
                    return frames, [], results, 0.0
            frames.append(self._data(entry, seq))
            sent.append(entry)
        # New frames while the window allows.
        new = 0
        while (
            self._out
            and new < _FRAMES_PER_WRITE
            and _seq_diff(self._snd_nxt, self._snd_una) < self._window
        ):
            message = self._out[0]
            first = message.offset == 0
            if first and len(message.data) > self._max_message:
                self._out.popleft()
                owner = message.owner
                if owner is not None and self._pending.pop(owner.request_id, None) is not None:
                    results.append(
                        (
                            owner.future,
                            FrameError(
                                f"a request of {len(message.data)} bytes is over the largest "
                                f"message the peer accepts ({self._max_message} bytes)"
                            ),
                        )
                    )
                continue
            chunk = message.data[message.offset : message.offset + self._max_payload]
            message.offset += len(chunk)
            flags = message.cls
            if first:
                flags |= _F_FIRST
                chunk = message.prefix + chunk
            if message.offset >= len(message.data):
                flags |= _F_LAST
                self._out.popleft()
            entry = _Sent(flags, message.channel, chunk, message.owner)
            seq = self._snd_nxt
            self._snd_nxt = _seq_add(seq, 1)
            self._unacked[seq] = entry
            frames.append(self._data(entry, seq))
            sent.append(entry)
            new += 1
        if self._ack_due and not (self._ack_now or sent or now >= self._ack_deadline):
            wake = min(wake, self._ack_deadline)
        elif self._ack_due:
            if self._rcv_buf or not sent:
                frames.insert(
                    ack_at,
                    _pack(
                        FrameType.ACK,
                        self._sack(),
                        session=self._session,
                        ack=self._rcv_nxt,
                        version=self._version,
                    ),
                )
            # else the DATA frames carry the cumulative acknowledgement
            self._ack_due = self._ack_now = False
            self._ack_deadline = math.inf
            self._unacked_in = 0
        if self._out and new and _seq_diff(self._snd_nxt, self._snd_una) < self._window:
            wake = now  # more to send at once, after this write
        return frames, sent, results, max(0.0, wake - now)


# --------------------------------------------------------------------------- efficiency


@dataclass(frozen=True)
class BulkResult:
    """A bulk transfer measured by ``measure_bulk``: ``payload_bytes`` sent in ``seconds``
    over a line of ``baudrate`` at ``bits_per_byte``; ``wire_bytes`` is what the sender
    wrote in that time."""

    payload_bytes: int
    requests: int
    seconds: float
    baudrate: float
    bits_per_byte: float
    retransmissions: int
    wire_bytes: int

    @property
    def wire_efficiency(self) -> float:
        """Payload bytes over the bytes written to the line for them (framing, headers,
        retransmissions and the acknowledgements sent the same way), independent of timing."""
        return self.payload_bytes / self.wire_bytes

    @property
    def throughput(self) -> float:
        """Payload bytes per second."""
        return self.payload_bytes / self.seconds

    @property
    def line_capacity(self) -> float:
        """Bytes per second the line can carry in one direction."""
        return self.baudrate / self.bits_per_byte

    @property
    def efficiency(self) -> float:
        """Payload throughput over line capacity (1.0 = every bit on the wire is payload)."""
        return self.throughput / self.line_capacity


def measure_bulk(
    link: LinkEndpoint,
    *,
    total: int = 256 * 1024,
    request_size: int = 1024,
    in_flight: int | None = None,
    kind: str = "bulk",
    baudrate: float | None = None,
    timeout: float = 120.0,
) -> BulkResult:
    """Send ``total`` bytes as ``request_size``-byte ``kind`` requests, ``in_flight`` at a
    time (default: the agreed window), and time them until the last response.

    The peer must answer ``kind`` requests (an empty response is enough). ``baudrate``
    defaults to the port's; on ptys pass the line simulator's. Raises what ``request``
    raises. Example: ``print(f"{measure_bulk(link).efficiency:.1%}")``.
    """
    if total < 1 or request_size < 1:
        raise ValueError("total and request_size must be positive")
    link.connect()
    depth = in_flight if in_flight is not None else link.window
    data = secrets.token_bytes(min(total, request_size))
    before = link.stats()
    waiting: deque[Future[bytes]] = deque()
    sent = 0
    count = 0
    start = time.monotonic()
    while sent < total:
        size = min(request_size, total - sent)
        waiting.append(link.submit(kind, data[:size], timeout=timeout))
        sent += size
        count += 1
        while len(waiting) >= depth:
            waiting.popleft().result()
    while waiting:
        waiting.popleft().result()
    seconds = time.monotonic() - start
    after = link.stats()
    return BulkResult(
        payload_bytes=total,
        requests=count,
        seconds=seconds,
        baudrate=float(baudrate if baudrate is not None else link.port.baudrate),
        bits_per_byte=_bits_per_byte(link.port),
        retransmissions=after.retransmissions - before.retransmissions,
        wire_bytes=after.bytes_sent - before.bytes_sent,
    )
