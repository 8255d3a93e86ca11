"""edge_sdk.transfer: the wire codecs and ChunkTransfer's window, on a real store on disk (the
channel is the test itself: it plays the release server)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from edge_sdk.errors import TransferError, UnsafeNameError
from edge_sdk.store import ModelStore
from edge_sdk.transfer import (
    MAX_CHUNKS_PER_REQUEST,
    BlockRequest,
    ChunkTransfer,
    decode_chunk,
    decode_request,
    encode_chunk,
    encode_request,
    ranges_of,
)

CHUNK = 1024
SHA = "ab" * 32


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _begin(store: ModelStore, data: bytes, version: int = 1):
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    download = store.begin_download(
        "model",
        version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=CHUNK,
        chunk_hashes=[hashlib.sha256(c).hexdigest() for c in chunks],
        manifest_bytes=b"{}",
    )
    return download, chunks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- codecs ---------------------------------------------------------------------------------


def test_chunk_message_round_trips_and_foreign_payloads_are_dropped() -> None:
    payload = encode_chunk(7, b"hello")
    index, data = decode_chunk(payload)  # type: ignore[misc]
    assert (index, bytes(data)) == (7, b"hello")
    assert payload[:4] == b"EDGB" and payload[4] == 1
    assert decode_chunk(b"EDG") is None
    assert decode_chunk(b"XXXX\x01\x00\x00\x00\x07data") is None
    assert decode_chunk(b"EDGB\x02\x00\x00\x00\x07data") is None


def test_ranges_of_merges_runs() -> None:
    assert ranges_of([5, 0, 1, 2, 2, 9, 10]) == [(0, 3), (5, 6), (9, 11)]
    assert ranges_of([]) == []


def test_block_request_round_trips() -> None:
    request = BlockRequest("digits", 3, SHA, ((0, 4), (9, 10)), 12)
    decoded = decode_request(encode_request(request))
    assert decoded == request
    assert decoded.indexes() == [0, 1, 2, 3, 9]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "object"),
        ({"name": "m", "version": 0, "sha256": SHA, "chunks": [[0, 1]]}, "version"),
        ({"name": "m", "version": True, "sha256": SHA, "chunks": [[0, 1]]}, "version"),
        ({"name": "m", "version": 1, "sha256": "x", "chunks": [[0, 1]]}, "sha256"),
        ({"name": "m", "version": 1, "sha256": SHA, "chunks": []}, "ranges"),
        ({"name": "m", "version": 1, "sha256": SHA, "chunks": [[3, 3]]}, "end"),
        ({"name": "m", "version": 1, "sha256": SHA, "chunks": [[0, 10**6]]}, "more than"),
        ({"name": "m", "version": 1, "sha256": SHA, "chunks": [[-1, 2]]}, "start"),
        ({"name": "m", "version": 1, "sha256": SHA, "chunks": [7]}, "range"),
        (b"x" * 10_000, "bytes"),
    ],
)
def test_bad_block_requests_are_refused_with_a_reason(document: object, message: str) -> None:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(ValueError, match=message):
        decode_request(payload)


def test_a_request_naming_a_path_is_refused() -> None:
    payload = json.dumps(
        {"name": "../etc", "version": 1, "sha256": SHA, "chunks": [[0, 1]]}
    ).encode()
    with pytest.raises(UnsafeNameError):
        decode_request(payload)


def test_many_small_ranges_cannot_add_up_past_the_limit() -> None:
    per_range = 5
    count = MAX_CHUNKS_PER_REQUEST // per_range + 1  # one range more than fits
    spans = [[i * 10, i * 10 + per_range] for i in range(count)]
    document = {"name": "m", "version": 1, "sha256": SHA, "chunks": spans}
    with pytest.raises(ValueError, match=f"more than {MAX_CHUNKS_PER_REQUEST} chunks"):
        decode_request(json.dumps(document).encode())
    document["chunks"] = spans[:-1]
    assert len(decode_request(json.dumps(document).encode()).indexes()) == (count - 1) * per_range


# -- ChunkTransfer --------------------------------------------------------------------------


def test_window_bounds_what_is_in_flight_and_the_download_completes(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    data = _data(40 * CHUNK + 17)
    download, chunks = _begin(store, data)
    transfer = ChunkTransfer(download, window=8, clock=Clock())
    first = transfer.due_requests()
    assert first == list(range(8))
    assert transfer.due_requests() == []  # the window is full
    # Half the window back: a new request fills it again.
    transfer.receive([(i, chunks[i]) for i in first[:4]])
    assert transfer.due_requests() == [8, 9, 10, 11]
    while not transfer.done:
        asked = [i for i in range(len(chunks)) if not download.has(i)][:8]
        transfer.receive([(i, chunks[i]) for i in asked])
        transfer.due_requests()
    assert transfer.in_flight == 0
    assert transfer.written_bytes == len(data)
    stored = download.complete()
    assert stored.path.read_bytes() == data


def test_duplicates_shuffled_and_out_of_range_chunks_are_harmless(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    data = _data(20 * CHUNK)
    download, chunks = _begin(store, data)
    transfer = ChunkTransfer(download, window=32, clock=Clock())
    transfer.due_requests()
    order = list(range(20)) * 2
    random.Random(3).shuffle(order)
    batch = [(i, chunks[i]) for i in order] + [(20, b"x" * CHUNK), (10**6, b"y")]
    assert transfer.receive(batch) == 20
    assert transfer.stats.duplicates == 20
    assert transfer.stats.out_of_range == 2
    assert transfer.done
    assert download.complete().path.read_bytes() == data


def test_a_tampered_chunk_is_dropped_and_asked_for_again(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    data = _data(6 * CHUNK)
    download, chunks = _begin(store, data)
    transfer = ChunkTransfer(download, window=6, clock=Clock())
    assert transfer.due_requests() == list(range(6))
    tampered = bytearray(chunks[2])
    tampered[0] ^= 0xFF
    batch = [(0, chunks[0]), (1, chunks[1]), (2, bytes(tampered)), (3, chunks[3])]
    assert transfer.receive(batch) == 3  # the chunks around the bad one are kept
    assert transfer.stats.rejected == 1
    assert not download.has(2)
    assert 2 in transfer.due_requests()  # asked for again at once
    transfer.receive([(2, chunks[2]), (4, chunks[4]), (5, chunks[5])])
    assert transfer.done


def test_a_chunk_that_never_matches_ends_the_transfer(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    download, _ = _begin(store, _data(3 * CHUNK))
    transfer = ChunkTransfer(download, window=3, max_bad_chunks=3, clock=Clock())
    transfer.due_requests()
    with pytest.raises(TransferError, match="chunk 1 failed its sha256 3 times"):
        for _ in range(3):
            transfer.receive([(1, b"\0" * CHUNK)])
            transfer.due_requests()


def test_timed_out_requests_are_repeated(tmp_path) -> None:
    clock = Clock()
    store = ModelStore(tmp_path / "store")
    download, _ = _begin(store, _data(10 * CHUNK))
    transfer = ChunkTransfer(download, window=4, request_timeout=5.0, clock=clock)
    assert transfer.due_requests() == [0, 1, 2, 3]
    clock.now = 4.9
    assert transfer.due_requests() == []
    clock.now = 5.0
    assert transfer.due_requests() == [0, 1, 2, 3]
    assert transfer.stats.re_requested == 4


def test_after_a_reconnect_at_most_one_window_is_asked_again(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    download, chunks = _begin(store, _data(50 * CHUNK))
    transfer = ChunkTransfer(download, window=8, clock=Clock())
    transfer.due_requests()
    transfer.receive([(i, chunks[i]) for i in range(5)])
    transfer.due_requests()
    transfer.reconnected()
    again = transfer.due_requests()
    assert len(again) <= 8
    assert transfer.stats.re_requested <= 8
    assert all(not download.has(i) for i in again)


def test_a_restart_resumes_from_the_bitmap(tmp_path) -> None:
    root = tmp_path / "store"
    data = _data(12 * CHUNK)
    store = ModelStore(root)
    download, chunks = _begin(store, data)
    transfer = ChunkTransfer(download, window=12, clock=Clock())
    transfer.due_requests()
    transfer.receive([(i, chunks[i]) for i in (0, 1, 5, 11)])
    download.close()
    reopened = ModelStore(root)
    download, _ = _begin(reopened, data)
    resumed = ChunkTransfer(download, window=12, clock=Clock())
    assert resumed.due_requests() == [2, 3, 4, 6, 7, 8, 9, 10]
    assert resumed.written_bytes == 4 * CHUNK


@pytest.mark.parametrize("window", [0, -1, True, 257])
def test_a_bad_window_is_a_value_error(tmp_path, window) -> None:
    store = ModelStore(tmp_path / "store")
    download, _ = _begin(store, _data(CHUNK))
    with pytest.raises(ValueError, match="window"):
        ChunkTransfer(download, window=window)


def test_a_reconnect_with_the_session_kept_asks_again_only_after_the_timeout(tmp_path) -> None:
    # The broker still delivers what it queued for the session and paho re-sends its
    # unacknowledged requests: asking again at once would fetch the window twice.
    clock = Clock()
    store = ModelStore(tmp_path / "store")
    download, _ = _begin(store, _data(20 * CHUNK))
    transfer = ChunkTransfer(download, window=8, request_timeout=5.0, clock=clock)
    assert transfer.due_requests() == list(range(8))
    clock.now = 4.0
    transfer.reconnected(session_present=True)
    assert transfer.in_flight == 8
    assert transfer.due_requests() == []
    clock.now = 8.9  # the timeout counts from the reconnect, not from the first request
    assert transfer.due_requests() == []
    clock.now = 9.0
    assert transfer.due_requests() == list(range(8))
    assert transfer.stats.re_requested == 8
