"""Chunked, resumable, verified model transfer, independent of the channel that carries it.

The device asks for the chunks it lacks and a release server answers each request with the
chunks themselves (the design of AWS IoT's MQTT file streams, see docs/fleet-protocol.md). This
module holds the two wire messages and ``ChunkTransfer``, the device's side of the exchange:

- a block request (``encode_request``/``decode_request``): JSON naming the release by model
  name, version and sha256, and the chunks wanted as half-open ranges;
- a chunk message (``encode_chunk``/``decode_chunk``): a 9-byte header (magic ``EDGB``, format
  1, the chunk index as a big-endian uint32) and the chunk's bytes.

``ChunkTransfer`` keeps at most ``window`` chunks requested and not yet received. Throughput
per device is then at most window x chunk size / round-trip time (shared/NOTES.md, "MQTT and
Mosquitto 2.0"), and after a disconnect at most one window of chunks is asked for again. Every
chunk goes through ``Download.write_chunks``, which checks its sha256 before a byte is written
and persists the received-chunk bitmap; duplicates, chunks nobody asked for and out-of-range
indexes are harmless.
"""

from __future__ import annotations

import json
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_sdk.errors import ChunkVerificationError, TransferError
from edge_sdk.release import MAX_SAFE_INTEGER, check_safe_name
from edge_sdk.store import Download

__all__ = [
    "CHUNK_MAGIC",
    "BlockRequest",
    "ChunkTransfer",
    "TransferStats",
    "decode_chunk",
    "decode_request",
    "encode_chunk",
    "encode_request",
    "ranges_of",
]

CHUNK_MAGIC = b"EDGB"
CHUNK_FORMAT = 1
_HEADER = struct.Struct(">4sBI")
#: A release server answers at most this many chunks per request: a forged request must not
#: turn one small message into gigabytes of traffic.
MAX_CHUNKS_PER_REQUEST = 256
MAX_RANGES_PER_REQUEST = 64
MAX_REQUEST_BYTES = 8 * 1024
DEFAULT_WINDOW = 16
DEFAULT_REQUEST_TIMEOUT = 10.0
#: A chunk that fails its hash this often from the same release is not a transient error.
DEFAULT_MAX_BAD_CHUNKS = 8


# --------------------------------------------------------------------------- wire messages


def encode_chunk(index: int, data: bytes | bytearray | memoryview) -> bytes:
    return _HEADER.pack(CHUNK_MAGIC, CHUNK_FORMAT, index) + bytes(data)


def decode_chunk(payload: bytes | bytearray | memoryview) -> tuple[int, memoryview] | None:
    """``(index, data)`` of a chunk message, or None when it is not one (wrong magic or
    format, too short): a device drops such messages, it never crashes on them."""
    view = memoryview(payload)
    if view.nbytes < _HEADER.size:
        return None
    magic, fmt, index = _HEADER.unpack_from(view)
    if magic != CHUNK_MAGIC or fmt != CHUNK_FORMAT:
        return None
    return index, view[_HEADER.size :]


def ranges_of(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted half-open ranges covering ``indexes``: ``[0, 1, 2, 5]`` -> ``[(0, 3), (5, 6)]``."""
    result: list[list[int]] = []
    for index in sorted(set(indexes)):
        if result and result[-1][1] == index:
            result[-1][1] = index + 1
        else:
            result.append([index, index + 1])
    return [(start, end) for start, end in result]


@dataclass(frozen=True)
class BlockRequest:
    """A device's request for chunks of one release."""

    name: str
    version: int
    sha256: str
    ranges: tuple[tuple[int, int], ...]
    request_id: int = 0

    def indexes(self) -> list[int]:
        return [index for start, end in self.ranges for index in range(start, end)]


def encode_request(request: BlockRequest) -> bytes:
    document = {
        "name": request.name,
        "version": request.version,
        "sha256": request.sha256,
        "chunks": [list(span) for span in request.ranges],
        "id": request.request_id,
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def _int(value: Any, field: str, low: int, high: int = MAX_SAFE_INTEGER) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: expected an integer in {low}..{high}, got {value!r}")
    return value


def decode_request(payload: bytes | bytearray | memoryview) -> BlockRequest:
    """Parse and bound a block request; ValueError naming what is wrong."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {len(payload)} bytes, more than {MAX_REQUEST_BYTES}")
    try:
        document = json.loads(bytes(payload))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    name = check_safe_name(document.get("name"))
    version = _int(document.get("version"), "version", 1)
    sha256 = document.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError("sha256: expected 64 hex digits")
    spans = document.get("chunks")
    if not isinstance(spans, list) or not 1 <= len(spans) <= MAX_RANGES_PER_REQUEST:
        raise ValueError(f"chunks: expected 1..{MAX_RANGES_PER_REQUEST} ranges")
    ranges = []
    total = 0
    for span in spans:
        if not isinstance(span, list) or len(span) != 2:
            raise ValueError("chunks: each range is [start, end)")
        start = _int(span[0], "chunks start", 0)
        end = _int(span[1], "chunks end", start + 1)
        total += end - start
        if total > MAX_CHUNKS_PER_REQUEST:
            raise ValueError(f"more than {MAX_CHUNKS_PER_REQUEST} chunks in one request")
        ranges.append((start, end))
    request_id = _int(document.get("id", 0), "id", 0)
    return BlockRequest(name, version, sha256, tuple(ranges), request_id)


# --------------------------------------------------------------------------- the device side


@dataclass
class TransferStats:
    """What a transfer moved: ``received`` chunk messages (``received_bytes`` of payload),
    ``written`` new chunks, ``duplicates`` already held, ``rejected`` that failed their hash,
    ``out_of_range`` indexes, ``requested`` chunk requests sent (``re_requested`` of them again
    after a timeout or a reconnect)."""

    received: int = 0
    received_bytes: int = 0
    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    out_of_range: int = 0
    requested: int = 0
    re_requested: int = 0


class ChunkTransfer:
    """Ask for what a ``Download`` lacks, ``window`` chunks at a time, and write what arrives.

    Drive it from one thread: ``due_requests()`` says which chunks to ask for now (call it after
    each ``receive`` and periodically, so timed-out requests are repeated), ``receive()`` writes
    a batch of ``(index, data)``, ``reconnected()`` forgets in-flight requests after the channel
    was lost. ``done`` once nothing is missing; then ``Download.complete()``.

    Example::

        transfer = ChunkTransfer(download, window=16)
        send(transfer.due_requests())
        for batch in incoming:
            transfer.receive(batch)
            send(transfer.due_requests())
    """

    def __init__(
        self,
        download: Download,
        *,
        window: int = DEFAULT_WINDOW,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_bad_chunks: int = DEFAULT_MAX_BAD_CHUNKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if window > MAX_CHUNKS_PER_REQUEST:
            raise ValueError(f"window must be at most {MAX_CHUNKS_PER_REQUEST}, got {window}")
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout}")
        self.download = download
        self.window = window
        self.request_timeout = request_timeout
        self.max_bad_chunks = max_bad_chunks
        self._clock = clock
        self._in_flight: dict[int, float] = {}
        self._wanted: deque[int] = deque(download.missing())
        self._asked_before: set[int] = set()
        self._bad: dict[int, int] = {}
        self.stats = TransferStats()
        self.last_progress = clock()

    @property
    def done(self) -> bool:
        # The bitmap decides: chunks may come before they were asked for (another server, a
        # duplicate answer), and then still sit in the queue of chunks to ask for.
        return self.download.received_count == self.download.chunk_count

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def percent(self) -> float:
        return self.download.percent

    def due_requests(self) -> list[int]:
        """Chunk indexes to request now: timed-out ones again, then new ones up to the window.
        Worth a message only when the window is at least half empty (fewer, larger requests)."""
        now = self._clock()
        expired = [i for i, at in self._in_flight.items() if now - at >= self.request_timeout]
        for index in expired:
            del self._in_flight[index]
        if expired:
            self._wanted.extendleft(sorted(expired, reverse=True))
        free = self.window - len(self._in_flight)
        if not self._wanted or (free < max(1, self.window // 2) and not expired):
            return []
        due: list[int] = []
        while self._wanted and len(due) < free:
            index = self._wanted.popleft()
            if self.download.has(index) or index in self._in_flight:
                continue
            due.append(index)
        for index in due:
            self._in_flight[index] = now
            if index in self._asked_before:
                self.stats.re_requested += 1
            self._asked_before.add(index)
        self.stats.requested += len(due)
        return due

    def reconnected(self, session_present: bool = False) -> None:
        """The channel was lost and is back.

        Without the session (``session_present`` False: a clean start, or the broker lost it),
        what was in flight will not come: ask for it again. With it, the broker still delivers
        the chunks it had queued and the client re-sends its unacknowledged requests (QoS 1),
        so asking again would only fetch them twice: keep them in flight and count their
        request timeout from now, which still repeats whatever does not come.
        """
        if session_present:
            now = self._clock()
            for index in self._in_flight:
                self._in_flight[index] = now
            return
        lost = sorted(self._in_flight)
        self._in_flight.clear()
        self._wanted.extendleft(reversed(lost))

    def receive(self, batch: Sequence[tuple[int, bytes | bytearray | memoryview]]) -> int:
        """Verify and write ``batch``; return how many chunks were new.

        A chunk that fails its hash is dropped and asked for again; the same chunk failing
        ``max_bad_chunks`` times raises ``TransferError`` (the release server's file does not
        match the signed manifest). Out-of-range and duplicate chunks are counted and dropped.
        Raises ``InsufficientSpaceError`` when the disk is full (the chunk stays missing).
        """
        download = self.download
        count = download.chunk_count
        candidates: list[tuple[int, bytes | bytearray | memoryview]] = []
        for index, data in batch:
            self.stats.received += 1
            self.stats.received_bytes += memoryview(data).nbytes
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                self.stats.out_of_range += 1
            elif download.has(index):
                self.stats.duplicates += 1
                self._in_flight.pop(index, None)
            else:
                candidates.append((index, data))
        before = download.received_count
        offered = len(candidates)
        rejected: list[int] = []
        while candidates:
            try:
                download.write_chunks(candidates)
                candidates = []
            except ChunkVerificationError as exc:
                position = next(i for i, item in enumerate(candidates) if item[0] == exc.index)
                offered -= 1
                candidates = candidates[position + 1 :]
                rejected.append(exc.index)
                self._reject(exc.index)
        # A bad copy followed by a good one in the same batch: the chunk is held now, so it
        # must not stay queued to be asked for again (``done`` would never become true).
        for index in rejected:
            if download.has(index) and index in self._wanted:
                self._wanted.remove(index)
        written = download.received_count - before
        # The same missing chunk twice in one batch: the second copy is a duplicate.
        self.stats.duplicates += offered - written
        self.stats.written += written
        for index in [i for i in self._in_flight if download.has(i)]:
            del self._in_flight[index]
        if written:
            self.last_progress = self._clock()
        return written

    @property
    def written_bytes(self) -> int:
        """Bytes of the model on disk and verified so far."""
        download = self.download
        last = download.chunk_count - 1
        has_last = download.has(last)
        full = download.received_count - (1 if has_last else 0)
        last_length = download.size - last * download.chunk_size
        return full * download.chunk_size + (last_length if has_last else 0)

    def _reject(self, index: int) -> None:
        self.stats.rejected += 1
        self._in_flight.pop(index, None)
        self._bad[index] = self._bad.get(index, 0) + 1
        if self._bad[index] >= self.max_bad_chunks:
            raise TransferError(
                self.download.name,
                self.download.version,
                f"chunk {index} failed its sha256 {self._bad[index]} times: the release "
                "server's file does not match the signed manifest",
            )
        if index not in self._wanted:
            self._wanted.appendleft(index)
