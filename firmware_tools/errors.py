"""The exception tree of firmware_tools (its own root: it stands alone, DESIGN.md).

Every error carries the fields a caller acts on and a message that says what to try next::

    FirmwareToolsError
    ├── PortError                      port, reason: the serial port cannot be opened, read or
    │                                  written (pyserial's SerialException/OSError, translated)
    ├── TransferError                  protocol, reason, acknowledged: an X/YMODEM transfer failed;
    │   │                              ``acknowledged`` is the bytes the peer confirmed
    │   ├── TransferTimeoutError         the peer stayed silent past the timeout
    │   ├── TransferCancelledError       by: "peer" (CAN CAN received) or "local"
    │   ├── RetryLimitError              block, retries: a block was refused too many times
    │   ├── IncompleteFileError          expected, got: the file did not arrive whole
    │   └── DestinationError             path: the receiver cannot or may not store the file
    │                                    (unsafe name from the wire, file exists, disk full)
    ├── ConsoleError                   a scripted console step failed
    │   ├── ExpectTimeoutError           pattern, timeout, tail: the prompt never came
    │   └── ScriptError                  script, line, reason: a console script is malformed,
    │                                    or one of its steps failed (the cause is chained)
    └── LinkError                      the framed link (firmware_tools.link)
        ├── LinkTimeoutError             no acknowledgement after every retransmission
        │   └── RequestTimeoutError        kind, request_id, timeout, delivered: no response
        │                                  in time (``delivered``: the peer had the request)
        ├── FrameError                   a frame over the size limit, or undecodable
        ├── VersionMismatchError         local, remote: no protocol version in common
        ├── RemoteError                  code, reason: the peer refused a request
        ├── SessionResetError            old, new: the peer restarted (a new session id); the
        │                                requests in flight were abandoned
        └── LinkClosedError              the endpoint was closed while a request waited
"""

from __future__ import annotations

__all__ = [
    "ConsoleError",
    "DestinationError",
    "ExpectTimeoutError",
    "FirmwareToolsError",
    "FrameError",
    "IncompleteFileError",
    "LinkClosedError",
    "LinkError",
    "LinkTimeoutError",
    "PortError",
    "RemoteError",
    "RequestTimeoutError",
    "RetryLimitError",
    "ScriptError",
    "SessionResetError",
    "TransferCancelledError",
    "TransferError",
    "TransferTimeoutError",
    "VersionMismatchError",
]


class FirmwareToolsError(Exception):
    """The root of every error firmware_tools raises on a field condition."""


class PortError(FirmwareToolsError):
    """The serial port ``port`` cannot be used: ``reason`` says why (pyserial's words)."""

    def __init__(self, port: str, reason: str) -> None:
        self.port = port
        self.reason = reason
        super().__init__(
            f"serial port {port}: {reason} (is the cable plugged in, the port right "
            "(`edge-sdk serial ports`), and nobody else using it?)"
        )


class TransferError(FirmwareToolsError):
    """An XMODEM/YMODEM transfer failed; ``acknowledged`` bytes were confirmed by the peer."""

    def __init__(self, protocol: str, reason: str, *, acknowledged: int = 0) -> None:
        self.protocol = protocol
        self.reason = reason
        self.acknowledged = acknowledged
        super().__init__(
            f"{protocol} transfer failed: {reason} ({acknowledged} bytes acknowledged)"
        )


class TransferTimeoutError(TransferError):
    """The peer stayed silent past the timeout (not started, wrong baud rate, cable)."""


class TransferCancelledError(TransferError):
    """The transfer was cancelled (CAN CAN): ``by`` is "peer" or "local"."""

    def __init__(self, protocol: str, reason: str, *, by: str, acknowledged: int = 0) -> None:
        self.by = by
        super().__init__(protocol, reason, acknowledged=acknowledged)


class RetryLimitError(TransferError):
    """Block ``block`` was refused or lost ``retries`` times in a row (a noisy line)."""

    def __init__(self, protocol: str, block: int, retries: int, *, acknowledged: int = 0) -> None:
        self.block = block
        self.retries = retries
        super().__init__(
            protocol,
            f"block {block} failed {retries} times in a row (a noisy line or a wrong baud rate; "
            "try a lower baud rate or a shorter cable)",
            acknowledged=acknowledged,
        )


class IncompleteFileError(TransferError):
    """The file did not arrive whole: ``expected`` bytes announced, ``got`` received."""

    def __init__(self, protocol: str, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            protocol, f"expected {expected} bytes, got {got}; nothing was kept", acknowledged=got
        )


class ConsoleError(FirmwareToolsError):
    """A scripted console step failed."""


class ExpectTimeoutError(ConsoleError):
    """``pattern`` did not appear within ``timeout`` seconds; ``tail`` is what did."""

    def __init__(self, pattern: str, timeout: float, tail: str) -> None:
        self.pattern = pattern
        self.timeout = timeout
        self.tail = tail
        super().__init__(
            f"waited {timeout:g} s for {pattern!r}; the last output was: {tail[-200:]!r}"
        )


class LinkError(FirmwareToolsError):
    """The framed serial link (firmware_tools.link) failed."""


class LinkTimeoutError(LinkError):
    """No acknowledgement after every retransmission: the peer is gone or the cable pulled."""


class FrameError(LinkError):
    """A frame over the size limit, or one that does not decode."""


class VersionMismatchError(LinkError):
    """The two ends share no protocol version: ``local`` and ``remote`` list theirs."""

    def __init__(self, local: tuple[int, ...], remote: tuple[int, ...]) -> None:
        self.local = local
        self.remote = remote
        super().__init__(
            f"no link protocol version in common (here {list(local)}, peer {list(remote)}); "
            "update the older side"
        )


class RemoteError(LinkError):
    """The peer refused a request: ``code`` and its ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"the device refused ({code}): {reason}")


class RequestTimeoutError(LinkTimeoutError):
    """No response to a ``kind`` request (id ``request_id``) within ``timeout`` seconds.

    ``delivered`` says whether the peer acknowledged the whole request: if so it may have
    acted on it (repeat only what is safe to repeat); if not, it never saw all of it.
    """

    def __init__(self, kind: str, request_id: int, timeout: float, *, delivered: bool) -> None:
        self.kind = kind
        self.request_id = request_id
        self.timeout = timeout
        self.delivered = delivered
        seen = (
            "the device had the request but did not answer (busy, or a slow handler)"
            if delivered
            else "the request did not reach the device (a slow or cut line, or a long queue)"
        )
        super().__init__(f"no response to a {kind!r} request within {timeout:g} s: {seen}")


class SessionResetError(LinkError):
    """The peer restarted (session ``old`` became ``new``): requests in flight were abandoned
    and may or may not have been acted on; send again what is safe to repeat."""

    def __init__(self, old: int, new: int) -> None:
        self.old = old
        self.new = new
        super().__init__(
            f"the peer started a new link session ({old:08x} -> {new:08x}), so it restarted; "
            "requests in flight were abandoned: send again what is safe to repeat"
        )


class LinkClosedError(LinkError):
    """The link endpoint was closed while a request waited for its response."""


class DestinationError(TransferError):
    """The receiver cannot or may not store a file at ``path``: the name from the wire is
    unsafe, the file exists (pass ``overwrite=True``), or writing failed (disk full)."""

    def __init__(self, protocol: str, path: str, reason: str, *, acknowledged: int = 0) -> None:
        self.path = path
        super().__init__(
            protocol,
            f"cannot store {path}: {reason}; the transfer was cancelled",
            acknowledged=acknowledged,
        )


class ScriptError(ConsoleError):
    """Line ``line`` of console script ``script`` is malformed or its step failed: ``reason``."""

    def __init__(self, script: str, line: int, reason: str) -> None:
        self.script = script
        self.line = line
        self.reason = reason
        super().__init__(f"{script} line {line}: {reason}")
