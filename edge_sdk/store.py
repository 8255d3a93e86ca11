"""The model store: verified model versions on disk, an atomic active pointer and an update journal.

A device keeps every model it runs in one directory tree (docs/model-store.md is the guide)::

    {root}/models/{name}/{version}/model.onnx      a verified model
                                   manifest.json   its release manifest, byte for byte
                                   verified        written last: size, sha256, when
    {root}/active/{name}                           JSON: the active version, its sha256, the
                                                   previous version and a change counter
    {root}/incoming/{name}/{version}/model.part    a download in progress, preallocated
                                     chunks.bitmap one bit per chunk received
                                     download.json what the download expects
                                     manifest.json the manifest to store beside the model
    {root}/journal/{name}.json                     the update state machine, with timestamps
    {root}/bad/{name}/{version}                    a version that failed its health check

Every file that must survive a power cut is written before anything that refers to it, with an
fsync of the file and then of its directory; small files are replaced whole (write a temp file,
fsync, ``os.replace``, fsync the directory), so a reader and a restart see the old state or the
new one, never a mix. ``ModelStore(root)`` repairs what an interrupted operation left behind, so
after a crash at any point the store reports a complete, verified active model (the old one or
the new one) and ``Download.missing()`` tells exactly what to fetch again.

Names and versions may come from the wire: each is validated before it touches a path
(``UnsafeNameError``).

Example::

    store = ModelStore("/var/lib/edge-sdk/store")
    with store.begin_download("detector", 3, size=..., sha256=..., chunk_size=65536,
                              chunk_hashes=[...], manifest_bytes=raw_manifest) as download:
        for index in download.missing():
            download.write_chunk(index, fetch(index))
        download.complete()
    store.activate("detector", 3)
    print(store.active("detector").path)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from edge_sdk.errors import (
    BadVersionError,
    ChunkIndexError,
    ChunkVerificationError,
    DownloadBusyError,
    DownloadIncompleteError,
    InsufficientSpaceError,
    ModelIntegrityError,
    NoActiveModelError,
    NoPreviousVersionError,
    ReadOnlyStoreError,
    UnsafeNameError,
    VersionConflictError,
    VersionNotFoundError,
)

__all__ = [
    "CRASH_POINTS",
    "ActiveModel",
    "ActiveWatch",
    "Download",
    "IntegrityCheck",
    "JournalEntry",
    "JournalEvent",
    "ModelStore",
    "StoredVersion",
    "UpdateState",
    "validate_name",
    "validate_version",
]

_log = logging.getLogger(__name__)

MODEL_FILE: Final = "model.onnx"
MANIFEST_FILE: Final = "manifest.json"
VERIFIED_FILE: Final = "verified"
PART_FILE: Final = "model.part"
BITMAP_FILE: Final = "chunks.bitmap"
DOWNLOAD_FILE: Final = "download.json"
_LOCK_FILE: Final = ".lock"
_SCHEMA: Final = 1

# DESIGN.md, "Fleet channel": every name from the wire is sanitised before it touches a path.
# ASCII only, no separators, cannot start with a dot (so never "." or ".." or a hidden file).
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VERSION_DIR_PATTERN: Final = re.compile(r"[1-9][0-9]{0,18}")
_SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
MAX_VERSION: Final = 2**63 - 1

# Whole files are hashed through one reusable buffer of this size: memory stays flat whatever
# the model's size.
_HASH_BLOCK: Final = 1 << 20
# Bounded so that a download that keeps failing verification cannot grow its journal forever.
_HISTORY_LIMIT: Final = 32

DEFAULT_RESERVE_BYTES: Final = 32 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Crash points (tests)

CRASH_POINTS: Final = (
    "download.before_publish",  # a new download is staged but not yet in incoming/
    "chunk.after_data",  # a chunk's bytes are on disk, its bit in the bitmap is not
    "chunk.after_bitmap",  # a chunk and its bit are both on disk
    "complete.after_move",  # model.onnx is in models/, its `verified` marker is not
    "complete.after_verified",  # the version is stored; incoming/ still holds the download
    "activate.before_switch",  # the journal says activating, the pointer is the old one
    "pointer.before_replace",  # the new pointer is in a temp file, not yet renamed over
    "activate.after_switch",  # the pointer is switched, the journal still says activating
    "rollback.after_switch",  # a rollback switched the pointer, the journal is not updated
    "prune.after_rename",  # a pruned version was renamed to trash, not yet deleted
)

# Tests set this in a child process to a function that kills the process at one of the
# CRASH_POINTS; production code never sets it.
_crash_hook: Callable[[str], None] | None = None


def _crash_point(point: str) -> None:
    if _crash_hook is not None:
        _crash_hook(point)


# --------------------------------------------------------------------------------------------
# Validation


def validate_name(name: object) -> str:
    """Return ``name`` if it is a safe model name, else raise ``UnsafeNameError``.

    Safe: 1 to 64 ASCII characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit,
    without ``..`` (the release module's rule too). Example: ``validate_name("detector-v2")``.
    """
    if not isinstance(name, str):
        raise UnsafeNameError(repr(name), f"a name is a string, not {type(name).__name__}")
    if _NAME_PATTERN.fullmatch(name) is None:
        raise UnsafeNameError(name, f"does not match {_NAME_PATTERN.pattern}")
    if ".." in name:
        raise UnsafeNameError(name, "contains '..'")
    return name


def validate_version(version: object) -> int:
    """Return ``version`` if it is a positive integer below 2**63 (not a bool, not a string),
    else raise ``UnsafeNameError`` with ``field="version"``. Example: ``validate_version(3)``."""
    if isinstance(version, bool) or not isinstance(version, int) or not 0 < version <= MAX_VERSION:
        raise UnsafeNameError(
            repr(version), "a version is a positive integer below 2**63", field="version"
        )
    return version


def _parse_version_dir(entry: str) -> int | None:
    """A directory entry as a version, or None for anything else (temp files, trash)."""
    return int(entry) if _VERSION_DIR_PATTERN.fullmatch(entry) else None


def _validate_sha256(value: object, what: str) -> str:
    if not isinstance(value, str) or _SHA256_PATTERN.fullmatch(value.lower()) is None:
        raise ValueError(f"{what} must be a sha256 in hex (64 characters), got {value!r}")
    return value.lower()


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Durable file operations


def _fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a create, a rename, an unlink) durable.

    fsync(2): "Calling fsync() does not necessarily ensure that the entry in the directory
    containing the file has also reached disk. For that an explicit fsync() on a file descriptor
    for the directory is also needed." Without it a rename that returned can be undone by a
    power cut even though the renamed file's data was synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each entry made durable in its parent."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        _fsync_directory(path.parent)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    # pwrite(2) may write fewer bytes than asked (a signal, a full device); loop until done.
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _is_out_of_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _space_errors(needed: int) -> Iterator[None]:
    """ENOSPC / EDQUOT from the file system become ``InsufficientSpaceError`` (the OSError stays
    as the cause); other OSErrors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if _is_out_of_space(exc):
            raise InsufficientSpaceError(needed, None) from exc
        raise


def _temp_name(target: Path) -> Path:
    # A dot name ending in .tmp in the target's own directory: rename(2) is atomic only within
    # one file system, and recovery removes exactly these names.
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _write_atomically(target: Path, data: bytes, *, before_replace: str | None = None) -> None:
    """Replace ``target`` with ``data`` so that readers and a restart see the old content or the
    new, whole: temp file, fsync, ``os.replace``, fsync of the directory.

    The file is synced before the rename so the name can never point at data that is not on
    disk (ext4's delayed allocation could otherwise persist the rename first: a zero-length
    file after a crash); rename(2): "If newpath already exists, it will be atomically
    replaced"; and the directory is synced so the rename itself survives a power cut (fsync(2)).
    """
    temp = _temp_name(target)
    with _space_errors(len(data)):
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _pwrite_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            if before_replace is not None:
                _crash_point(before_replace)
            temp.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        _fsync_directory(target.parent)


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when the file is absent, unreadable or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _log.warning("ignoring unreadable store file %s: %s", path, exc)
        return None
    return value if isinstance(value, dict) else None


def _remove_tree(path: Path, trash_parent: Path, crash_point: str | None = None) -> None:
    """Remove a directory so that nobody ever sees it half deleted: rename it to a trash name
    (atomic, made durable), then delete the trash. Recovery deletes leftover trash."""
    if not path.exists():
        return
    trash = trash_parent / f".trash-{path.name}-{secrets.token_hex(6)}"
    path.rename(trash)
    _fsync_directory(trash_parent)
    if path.parent != trash_parent:
        _fsync_directory(path.parent)
    if crash_point is not None:
        _crash_point(crash_point)
    shutil.rmtree(trash, ignore_errors=True)


def _sha256_of_fd(fd: int, size: int, buffer: bytearray) -> str:
    """sha256 of the first ``size`` bytes of ``fd``, read through ``buffer`` (never the whole
    file in memory). A file shorter than ``size`` hashes what it has."""
    digest = hashlib.sha256()
    view = memoryview(buffer)
    offset = 0
    while offset < size:
        count = os.preadv(fd, [view[: min(len(view), size - offset)]], offset)
        if count == 0:
            break
        digest.update(view[:count])
        offset += count
    return digest.hexdigest()


def _sha256_of_file(path: Path, size: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sha256_of_fd(fd, size, bytearray(_HASH_BLOCK))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Values


class UpdateState(str, Enum):
    """States of an update in the journal (the AWS IoT Jobs vocabulary)."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_STATES


_TERMINAL_STATES: Final = frozenset(
    {UpdateState.SUCCEEDED, UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.TIMED_OUT}
)
# A new update (a first one, another version, or after a terminal state) starts in one of these:
# queued normally, downloading when the agent skips queueing, activating when the version is
# already stored (a desired-state move back to a kept version).
_START_STATES: Final = frozenset(
    {UpdateState.QUEUED, UpdateState.DOWNLOADING, UpdateState.ACTIVATING}
)
_NEXT_STATES: Final[dict[UpdateState, frozenset[UpdateState]]] = {
    UpdateState.QUEUED: frozenset(
        {
            UpdateState.DOWNLOADING,
            UpdateState.ACTIVATING,
            UpdateState.FAILED,
            UpdateState.TIMED_OUT,
        }
    ),
    # downloading -> downloading records progress
    UpdateState.DOWNLOADING: frozenset(
        {
            UpdateState.DOWNLOADING,
            UpdateState.VERIFYING,
            UpdateState.FAILED,
            UpdateState.TIMED_OUT,
        }
    ),
    # verifying -> downloading: corrupt chunks found on disk are fetched again
    UpdateState.VERIFYING: frozenset(
        {
            UpdateState.DOWNLOADING,
            UpdateState.ACTIVATING,
            UpdateState.FAILED,
            UpdateState.TIMED_OUT,
        }
    ),
    UpdateState.ACTIVATING: frozenset(
        {
            UpdateState.SUCCEEDED,
            UpdateState.FAILED,
            UpdateState.ROLLED_BACK,
            UpdateState.TIMED_OUT,
        }
    ),
    # a health check after the switch can still roll a succeeded update back
    UpdateState.SUCCEEDED: frozenset({UpdateState.ROLLED_BACK}),
    UpdateState.FAILED: frozenset(),
    UpdateState.ROLLED_BACK: frozenset(),
    UpdateState.TIMED_OUT: frozenset(),
}


@dataclass(frozen=True)
class JournalEvent:
    """One state an update went through: when (seconds since the epoch) and why."""

    state: UpdateState
    at: float
    reason: str | None = None


@dataclass(frozen=True)
class JournalEntry:
    """The current (or last) update of one model name.

    ``previous_version`` was active when the update started; ``percent`` is the download
    progress last recorded; ``history`` lists the states in order (the oldest may be dropped
    beyond 32).
    """

    name: str
    version: int
    state: UpdateState
    reason: str | None
    percent: float | None
    previous_version: int | None
    started_at: float
    updated_at: float
    history: tuple[JournalEvent, ...]

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_version(self.version)
        if not isinstance(self.state, UpdateState):
            raise TypeError(f"state must be an UpdateState, got {self.state!r}")

    @property
    def terminal(self) -> bool:
        """True once the update has ended (succeeded, failed, rolled_back, timed_out)."""
        return self.state.terminal

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "reason": self.reason,
            "percent": self.percent,
            "previous_version": self.previous_version,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "history": [
                {"state": event.state.value, "at": event.at, "reason": event.reason}
                for event in self.history
            ],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> JournalEntry:
        return cls(
            name=value["name"],
            version=value["version"],
            state=UpdateState(value["state"]),
            reason=value.get("reason"),
            percent=value.get("percent"),
            previous_version=value.get("previous_version"),
            started_at=float(value["started_at"]),
            updated_at=float(value["updated_at"]),
            history=tuple(
                JournalEvent(UpdateState(event["state"]), float(event["at"]), event.get("reason"))
                for event in value.get("history", [])
            ),
        )


@dataclass(frozen=True)
class ActiveModel:
    """The active version of a model: what ``EdgeModel.from_store`` loads.

    ``generation`` changes on every switch of the pointer (activation, rollback, fallback): a
    holder compares it with ``!=`` (``ModelStore.generation(name)``) between requests to notice
    a new model. ``previous`` is the version active before this one, if any.
    """

    name: str
    version: int
    path: Path
    sha256: str
    size: int
    generation: int
    previous: int | None
    activated_at: float


@dataclass(frozen=True)
class StoredVersion:
    """A verified version in the store. ``bad_reason`` is set when it failed a health check."""

    name: str
    version: int
    path: Path
    manifest_path: Path
    size: int
    sha256: str
    verified_at: float
    bad_reason: str | None


@dataclass(frozen=True)
class IntegrityCheck:
    """What ``verify_active`` found for one model name.

    ``ok`` is True when the active model matched its size and sha256. Otherwise
    ``corrupt_versions`` lists the versions found damaged (removed from the store), ``version``
    is the version now active after the fallback (None when no intact version was left) and
    ``reason`` says what was wrong.
    """

    name: str
    ok: bool
    version: int | None
    corrupt_versions: tuple[int, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class _Pointer:
    """The content of ``active/{name}``; ``version`` None means no model is active."""

    version: int | None
    sha256: str
    size: int
    previous: int | None
    generation: int
    activated_at: float

    def to_json(self, name: str) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "name": name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "previous": self.previous,
            "generation": self.generation,
            "activated_at": self.activated_at,
        }


@dataclass(frozen=True)
class _DownloadPlan:
    """What a download must produce; saved as download.json so a restart resumes it."""

    size: int
    sha256: str
    chunk_size: int
    chunk_hashes: tuple[str, ...]

    @classmethod
    def create(
        cls, size: object, sha256: object, chunk_size: object, chunk_hashes: Iterable[object]
    ) -> _DownloadPlan:
        size = _positive_int(size, "size")
        chunk_size = _positive_int(chunk_size, "chunk_size")
        hashes = tuple(
            _validate_sha256(value, f"chunk_hashes[{index}]")
            for index, value in enumerate(chunk_hashes)
        )
        expected_count = math.ceil(size / chunk_size)
        if len(hashes) != expected_count:
            raise ValueError(
                f"{len(hashes)} chunk hashes for {size} bytes in chunks of {chunk_size}: "
                f"expected {expected_count}"
            )
        return cls(size, _validate_sha256(sha256, "sha256"), chunk_size, hashes)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_hashes)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_json(self, name: str, version: int) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "name": name,
            "version": version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunk_hashes": list(self.chunk_hashes),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> _DownloadPlan | None:
        try:
            return cls.create(
                value["size"], value["sha256"], value["chunk_size"], value["chunk_hashes"]
            )
        except (KeyError, TypeError, ValueError):
            return None


# --------------------------------------------------------------------------------------------
# A download in progress


class Download:
    """A resumable, verified download of one model version into the store.

    Get one from ``ModelStore.begin_download``; chunks arrive in any order, duplicates are
    ignored, each is checked against its sha256 before a byte is written. The received-chunk
    bitmap is persisted after each chunk's data (data first, then the bit), so after a crash
    ``missing()`` never omits a chunk whose bytes are not on disk. ``complete()`` verifies the
    whole file and stores it. A context manager: leaving the block closes the files (the
    download stays on disk and resumes later).
    """

    def __init__(
        self,
        store: ModelStore,
        name: str,
        version: int,
        plan: _DownloadPlan,
        directory: Path,
        stored: StoredVersion | None,
    ) -> None:
        self._store = store
        self.name = name
        self.version = version
        self._plan = plan
        self.directory = directory
        self._stored = stored
        self._lock = threading.Lock()
        self._closed = False
        self._part_fd = -1
        self._bitmap_fd = -1
        self._bitmap = bytearray(math.ceil(plan.chunk_count / 8))
        if stored is not None:
            for index in range(plan.chunk_count):
                self._set_bit(index)
            return
        self._bitmap_fd = os.open(directory / BITMAP_FILE, os.O_RDWR | os.O_CLOEXEC)
        try:
            # One writer per download: a second process would overwrite this one's bits.
            fcntl.flock(self._bitmap_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._bitmap_fd)
            raise DownloadBusyError(name, version) from None
        try:
            self._part_fd = os.open(directory / PART_FILE, os.O_RDWR | os.O_CLOEXEC)
            saved = os.pread(self._bitmap_fd, len(self._bitmap), 0)
        except BaseException:
            os.close(self._bitmap_fd)
            raise
        self._bitmap[: len(saved)] = saved
        # Bits past the last chunk mean nothing; clear them so counts stay exact.
        for index in range(plan.chunk_count, len(self._bitmap) * 8):
            self._bitmap[index // 8] &= ~(1 << (index % 8)) & 0xFF

    # -- state ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._plan.size

    @property
    def sha256(self) -> str:
        return self._plan.sha256

    @property
    def chunk_size(self) -> int:
        return self._plan.chunk_size

    @property
    def chunk_count(self) -> int:
        return self._plan.chunk_count

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stored(self) -> StoredVersion | None:
        """The stored version once complete (also when the version was already stored)."""
        return self._stored

    def _has(self, index: int) -> bool:
        return bool(self._bitmap[index // 8] & (1 << (index % 8)))

    def _set_bit(self, index: int) -> None:
        self._bitmap[index // 8] |= 1 << (index % 8)

    def has(self, index: int) -> bool:
        """True when chunk ``index`` is on disk and verified."""
        return 0 <= index < self._plan.chunk_count and self._has(index)

    def missing(self) -> list[int]:
        """The chunk indexes still needed, in ascending order (what to request after a restart)."""
        return [index for index in range(self._plan.chunk_count) if not self._has(index)]

    @property
    def received_count(self) -> int:
        return sum(bin(byte).count("1") for byte in self._bitmap)

    @property
    def percent(self) -> float:
        """Share of chunks received, 0 to 100."""
        return 100.0 * self.received_count / self._plan.chunk_count

    def bitmap(self) -> bytes:
        """The received-chunk bitmap: chunk ``i`` is bit ``i % 8`` (least significant first) of
        byte ``i // 8``; 1 means received."""
        return bytes(self._bitmap)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"the download of {self.name} version {self.version} is closed; "
                "call begin_download again to resume it"
            )

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"a chunk index is an int, got {index!r}")
        if not 0 <= index < self._plan.chunk_count:
            raise ChunkIndexError(index, self._plan.chunk_count)

    def _verify_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        expected = self._plan.chunk_hashes[index]
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            length = self._plan.chunk_length(index)
            received = memoryview(data).nbytes
            reason = f"{received} bytes, expected {length}" if received != length else ""
            raise ChunkVerificationError(index, expected, got, reason)

    # -- writing ----------------------------------------------------------------------------

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Verify and store chunk ``index``; return False for a chunk already received.

        Raises ``ChunkIndexError`` for an index outside the download, ``ChunkVerificationError``
        when the data does not match the chunk's sha256 (nothing is written), and
        ``InsufficientSpaceError`` when the file system is full (the chunk stays missing).
        Example: ``download.write_chunk(0, payload)``.
        """
        return self.write_chunks([(index, data)]) == 1

    def write_chunks(self, chunks: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> int:
        """Verify and store several chunks with one fsync of the data and one of the bitmap;
        return how many were new. Same errors as ``write_chunk``: the chunks before a bad one
        are stored (made durable before the error is raised), the bad one and later ones not.
        """
        with self._lock:
            self._check_open()
            written: list[int] = []
            seen: set[int] = set()
            try:
                for index, data in chunks:
                    self._check_index(index)
                    if self._has(index) or index in seen:
                        continue
                    self._verify_chunk(index, data)
                    with _space_errors(memoryview(data).nbytes):
                        _pwrite_all(self._part_fd, data, index * self._plan.chunk_size)
                    written.append(index)
                    seen.add(index)
            finally:
                if written:
                    self._persist(written)
            return len(written)

    def _persist(self, indexes: list[int]) -> None:
        # Order matters: the data is made durable before the bitmap says it is there, so a crash
        # between the two only re-requests chunks, never trusts an unwritten one. fdatasync is
        # enough: the files were preallocated at their final size, and fdatasync(2) still flushes
        # the metadata needed to read the data back (the allocation of written extents).
        needed = len(indexes) * self._plan.chunk_size
        with _space_errors(needed):
            os.fdatasync(self._part_fd)
        _crash_point("chunk.after_data")
        for index in indexes:
            self._set_bit(index)
        first = min(indexes) // 8
        last = max(indexes) // 8
        # Only the bytes that changed are rewritten in place: a bit only ever goes from 0 to 1,
        # and a torn write of this range leaves each byte old or new, either of which is true.
        with _space_errors(last - first + 1):
            _pwrite_all(self._bitmap_fd, self._bitmap[first : last + 1], first)
            os.fdatasync(self._bitmap_fd)
        _crash_point("chunk.after_bitmap")

    def _find_bad_chunks(self, buffer: bytearray) -> list[int]:
        bad: list[int] = []
        view = memoryview(buffer)
        for index in range(self._plan.chunk_count):
            length = self._plan.chunk_length(index)
            count = os.preadv(self._part_fd, [view[:length]], index * self._plan.chunk_size)
            if hashlib.sha256(view[:count]).hexdigest() != self._plan.chunk_hashes[index]:
                bad.append(index)
        return bad

    def _forget(self, indexes: list[int]) -> None:
        for index in indexes:
            self._bitmap[index // 8] &= ~(1 << (index % 8)) & 0xFF
        _pwrite_all(self._bitmap_fd, self._bitmap, 0)
        os.fdatasync(self._bitmap_fd)

    def complete(self) -> StoredVersion:
        """Verify the whole file's sha256 (streamed, never all in memory) and move it into the
        store; closes the download.

        Raises ``DownloadIncompleteError`` while chunks are missing, and
        ``ModelIntegrityError`` when the file does not match: chunks found corrupt on disk are
        marked missing again (``bad_chunks``; fetch them and call ``complete()`` again); when
        every chunk matches but the whole file does not, the manifest contradicts itself and the
        download is discarded. Example: ``stored = download.complete()``.
        """
        store = self._store
        # Lock order everywhere: the store's lock, then the download's.
        with store._locked(), self._lock:
            self._check_open()
            if self._stored is not None:
                self._close()
                return self._stored
            missing = self.missing()
            if missing:
                raise DownloadIncompleteError(self.name, self.version, len(missing))
            store._journal_step(self.name, self.version, UpdateState.VERIFYING)
            buffer = bytearray(max(_HASH_BLOCK, self._plan.chunk_size))
            got = _sha256_of_fd(self._part_fd, self._plan.size, buffer)
            if got != self._plan.sha256:
                self._fail_integrity(got, buffer)
            self._stored = store._store_download(self)
            self._close()
            return self._stored

    def _fail_integrity(self, got: str, buffer: bytearray) -> None:
        store = self._store
        bad = self._find_bad_chunks(buffer)
        if bad:
            self._forget(bad)
            reason = f"{len(bad)} chunk(s) corrupt on disk, to be fetched again"
            store._journal_step(self.name, self.version, UpdateState.DOWNLOADING, reason)
            raise ModelIntegrityError(
                self.name, self.version, self._plan.sha256, got, reason, bad_chunks=bad
            )
        reason = "every chunk matches its hash but the whole file does not: bad manifest"
        self._close()
        store._discard_incoming(self.name, self.version)
        store._journal_step(self.name, self.version, UpdateState.FAILED, reason)
        raise ModelIntegrityError(self.name, self.version, self._plan.sha256, got, reason)

    # -- lifecycle --------------------------------------------------------------------------

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._part_fd, self._bitmap_fd):
            if fd >= 0:
                os.close(fd)  # closing the bitmap's descriptor releases its flock
        self._part_fd = self._bitmap_fd = -1
        self._store._forget_download(self)

    def close(self) -> None:
        """Close the files; what was received stays on disk for ``begin_download`` to resume."""
        with self._lock:
            self._close()

    def __enter__(self) -> Download:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Download {self.name} v{self.version} {self.received_count}/"
            f"{self.chunk_count} chunks, {state}>"
        )


# --------------------------------------------------------------------------------------------
# Noticing a switch cheaply


class ActiveWatch:
    """Tells, in about a microsecond, whether the active pointer of a model has been switched
    since the watch was opened or last refreshed: what ``EdgeModel.from_store`` checks between
    requests.

    It holds the pointer file open. The pointer is only ever replaced by ``os.replace``, which
    unlinks the old file, so ``fstat`` of the held descriptor shows no links once a switch has
    happened; and since the old file stays open, its inode number cannot be reused by a later
    pointer (comparing ``stat`` results of the path could be fooled by that, and timestamps can
    be coarser than two quick switches). Needs a local POSIX file system. A context manager.

    Example::

        with store.watch("detector") as watch:
            while serving:
                if watch.changed():
                    watch.refresh()
                    model = reload(store.active("detector").path)
    """

    def __init__(self, store: ModelStore, name: str) -> None:
        self.name = validate_name(name)
        self._path = store._pointer_path(self.name)
        self._fd = -1
        self._closed = False
        self.generation = 0
        self.refresh()

    def refresh(self) -> int:
        """Re-open the current pointer; return its generation (0 when there is none)."""
        if self._closed:
            raise RuntimeError("the watch is closed")
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.generation = 0
            return 0
        self._fd = fd
        try:
            # Read through the held descriptor: the generation belongs to the file watched.
            value = json.loads(os.pread(fd, 1 << 16, 0))
            self.generation = int(value["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            self.generation = -1
        return self.generation

    def changed(self) -> bool:
        """True once the pointer was switched (or first created) after the last refresh."""
        if self._closed:
            raise RuntimeError("the watch is closed")
        if self._fd < 0:
            return self._path.exists()
        return os.fstat(self._fd).st_nlink == 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._closed = True

    def __enter__(self) -> ActiveWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# The store


class ModelStore:
    """Verified model versions under ``root``, an atomic active pointer per name, a journal.

    ``keep_previous`` versions besides the active one are kept for rollback (older ones are
    pruned after each activation); ``reserve_bytes`` of the file system are left free by
    downloads; ``storage_budget`` (bytes, e.g. the device profile's storage budget) caps what
    the whole store may use. Opening a store repairs what a crash interrupted (see
    docs/model-store.md). Safe to share between threads; between processes, readers (an
    application calling ``active``) may run beside one writer (the agent). ``readonly=True``
    is the application's view: it creates, locks and repairs nothing (so it works with read
    access only), and every change raises ``ReadOnlyStoreError``.

    Example: ``ModelStore("/var/lib/edge-sdk/store", keep_previous=2).active("detector")``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_previous: int = 2,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        storage_budget: int | None = None,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
    ) -> None:
        if isinstance(keep_previous, bool) or not isinstance(keep_previous, int):
            raise TypeError(f"keep_previous must be an int, got {keep_previous!r}")
        if keep_previous < 0:
            raise ValueError(f"keep_previous must be >= 0, got {keep_previous}")
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
        if storage_budget is not None and storage_budget <= 0:
            raise ValueError(f"storage_budget must be positive, got {storage_budget}")
        self.root = Path(root).absolute()
        self.keep_previous = keep_previous
        self.reserve_bytes = reserve_bytes
        self.storage_budget = storage_budget
        self._clock = clock
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd = -1
        self._downloads: dict[tuple[str, int], Download] = {}
        # name -> (generation, version, sha256) this instance has hashed: the full check runs
        # once per switch, later calls to active() only stat the file.
        self._checked: dict[str, tuple[int, int, str]] = {}
        self.readonly = readonly
        if readonly:
            # An application reading what the agent installs: it may run as another user with
            # read access only, and repairs are the agent's (it runs them when it opens).
            return
        for sub in ("models", "active", "incoming", "journal", "bad"):
            _make_directory(self.root / sub)
        with self._locked():
            self._recover()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------

    def _models_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def _version_dir(self, name: str, version: int) -> Path:
        return self.root / "models" / name / str(version)

    def _incoming_dir(self, name: str, version: int) -> Path:
        return self.root / "incoming" / name / str(version)

    def _pointer_path(self, name: str) -> Path:
        return self.root / "active" / name

    def _journal_path(self, name: str) -> Path:
        return self.root / "journal" / f"{name}.json"

    def _bad_path(self, name: str, version: int) -> Path:
        return self.root / "bad" / name / str(version)

    # -- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise changes: a thread lock within the process, flock(2) on ``.lock`` between
        processes (released by the kernel if the holder dies, so a crash never leaves it held)."""
        if self.readonly:
            raise ReadOnlyStoreError(str(self.root))
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    os.close(self._lock_fd)
                    self._lock_fd = -1

    # -- reading ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Model names with stored versions or an active pointer, sorted."""
        found: set[str] = set()
        for sub in ("models", "active"):
            for path in (self.root / sub).iterdir():
                if _NAME_PATTERN.fullmatch(path.name) and ".." not in path.name:
                    found.add(path.name)
        return sorted(found)

    def versions(self, name: str) -> tuple[int, ...]:
        """The verified versions stored for ``name``, ascending (bad ones included: see
        ``is_bad``). Example: ``store.versions("detector") == (2, 3)``."""
        name = validate_name(name)
        try:
            entries = [path.name for path in self._models_dir(name).iterdir()]
        except FileNotFoundError:
            return ()
        found = []
        for entry in entries:
            version = _parse_version_dir(entry)
            if version is not None and (self._version_dir(name, version) / VERIFIED_FILE).is_file():
                found.append(version)
        return tuple(sorted(found))

    def _read_verified(self, name: str, version: int) -> dict[str, Any] | None:
        marker = _read_json(self._version_dir(name, version) / VERIFIED_FILE)
        if marker is None:
            return None
        try:
            _validate_sha256(marker["sha256"], "sha256")
            _positive_int(marker["size"], "size")
        except (KeyError, ValueError):
            return None
        return marker

    def stored_version(self, name: str, version: int) -> StoredVersion:
        """The stored, verified ``version`` of ``name``; ``VersionNotFoundError`` otherwise."""
        name = validate_name(name)
        version = validate_version(version)
        marker = self._read_verified(name, version)
        if marker is None:
            raise VersionNotFoundError(name, version)
        directory = self._version_dir(name, version)
        return StoredVersion(
            name=name,
            version=version,
            path=directory / MODEL_FILE,
            manifest_path=directory / MANIFEST_FILE,
            size=int(marker["size"]),
            sha256=str(marker["sha256"]),
            verified_at=float(marker.get("verified_at", 0.0)),
            bad_reason=self.bad_reason(name, version),
        )

    def manifest_bytes(self, name: str, version: int) -> bytes:
        """The manifest stored beside a verified version, byte for byte as it was received."""
        return self.stored_version(name, version).manifest_path.read_bytes()

    def bad_reason(self, name: str, version: int) -> str | None:
        """Why ``version`` was marked bad, or None if it was not."""
        name = validate_name(name)
        version = validate_version(version)
        marker = _read_json(self._bad_path(name, version))
        if marker is None:
            return None
        return str(marker.get("reason") or "marked bad")

    def is_bad(self, name: str, version: int) -> bool:
        """True when ``version`` failed its health check here (it is never installed again)."""
        return self.bad_reason(name, version) is not None

    def _read_pointer(self, name: str) -> _Pointer | None:
        value = _read_json(self._pointer_path(name))
        if value is None:
            return None
        try:
            version = value["version"]
            return _Pointer(
                version=None if version is None else validate_version(version),
                sha256=str(value["sha256"]),
                size=int(value["size"]),
                previous=None if value["previous"] is None else int(value["previous"]),
                generation=int(value["generation"]),
                activated_at=float(value["activated_at"]),
            )
        except (KeyError, TypeError, ValueError, UnsafeNameError):
            _log.warning("ignoring malformed active pointer for %s", name)
            return None

    def generation(self, name: str) -> int:
        """A number that changes whenever the active pointer of ``name`` changes (activation,
        rollback, fallback); 0 when there has never been one; compare with ``!=``. It reads
        and parses the pointer (about 20 microseconds); ``watch`` is the cheaper way to poll.
        Example: ``if store.generation("detector") != held: reload()``."""
        pointer = self._read_pointer(validate_name(name))
        return 0 if pointer is None else pointer.generation

    def watch(self, name: str) -> ActiveWatch:
        """An ``ActiveWatch`` on the pointer of ``name``: ``changed()`` costs one fstat.
        Example: ``with store.watch("detector") as watch: ...``."""
        return ActiveWatch(self, name)

    def _active_from_pointer(self, name: str, pointer: _Pointer) -> ActiveModel:
        assert pointer.version is not None
        return ActiveModel(
            name=name,
            version=pointer.version,
            path=self._version_dir(name, pointer.version) / MODEL_FILE,
            sha256=pointer.sha256,
            size=pointer.size,
            generation=pointer.generation,
            previous=pointer.previous,
            activated_at=pointer.activated_at,
        )

    def active(self, name: str) -> ActiveModel:
        """The active version of ``name`` and the path of its model file.

        The first call in a process (and the first after each switch) checks the file's size and
        sha256; later calls check its size. A damaged active model falls back to the newest
        intact previous version (``verify_active``) and that one is returned. Raises
        ``NoActiveModelError`` when nothing intact is active.
        Example: ``EdgeModel.load(store.active("detector").path)``.
        """
        name = validate_name(name)
        pointer = self._read_pointer(name)
        if pointer is None or pointer.version is None:
            raise NoActiveModelError(name)
        if self._checked.get(name) == (pointer.generation, pointer.version, pointer.sha256):
            problem = self._quick_problem(name, pointer.version, pointer.size)
        else:
            problem = self._integrity_problem(name, pointer.version, pointer.sha256, pointer.size)
        if problem is None:
            self._checked[name] = (pointer.generation, pointer.version, pointer.sha256)
            return self._active_from_pointer(name, pointer)
        if self.readonly:
            raise ModelIntegrityError(
                name,
                pointer.version,
                pointer.sha256,
                None,
                f"{problem} (a read-only store does not repair; the agent falls back when it "
                "opens the store)",
            )
        with self._locked():
            check = self._verify_active_locked(name)
            pointer = self._read_pointer(name)
            if check.version is None or pointer is None or pointer.version is None:
                raise NoActiveModelError(name, check.reason or "no intact version is left")
            return self._active_from_pointer(name, pointer)

    def _quick_problem(self, name: str, version: int, size: int) -> str | None:
        directory = self._version_dir(name, version)
        if not (directory / VERIFIED_FILE).is_file():
            return f"version {version} is not a verified version in the store"
        try:
            actual = (directory / MODEL_FILE).stat().st_size
        except FileNotFoundError:
            return f"the model file of version {version} is missing"
        if actual != size:
            return f"the model file of version {version} has {actual} bytes, expected {size}"
        return None

    def _integrity_problem(self, name: str, version: int, sha256: str, size: int) -> str | None:
        """None if the stored version matches ``sha256`` and ``size``, else what is wrong."""
        problem = self._quick_problem(name, version, size)
        if problem is not None:
            return problem
        got = _sha256_of_file(self._version_dir(name, version) / MODEL_FILE, size)
        if got != sha256:
            return f"the model file of version {version} has sha256 {got}, expected {sha256}"
        return None

    # -- the journal ------------------------------------------------------------------------

    def journal(self, name: str) -> JournalEntry | None:
        """The current or last update of ``name``, None if there was none."""
        name = validate_name(name)
        value = _read_json(self._journal_path(name))
        if value is None:
            return None
        try:
            return JournalEntry.from_json(value)
        except (KeyError, TypeError, ValueError, UnsafeNameError):
            _log.warning("ignoring malformed journal for %s", name)
            return None

    def update_journal(
        self,
        name: str,
        version: int,
        state: UpdateState | str,
        *,
        reason: str | None = None,
        percent: float | None = None,
    ) -> JournalEntry:
        """Record that the update of ``name`` to ``version`` reached ``state`` (written
        atomically). A new update (first, other version, or after a terminal state) starts as
        queued, downloading or activating; otherwise the move must follow the state machine in
        docs/model-store.md, else ``ValueError``. Store operations record their own states
        (begin_download, complete, activate, rollback, mark_bad); the agent records queued and
        timed_out. Example: ``store.update_journal("detector", 3, "queued")``.
        """
        name = validate_name(name)
        version = validate_version(version)
        state = UpdateState(state)
        with self._locked():
            current = self.journal(name)
            if not _transition_allowed(current, version, state):
                was = "nothing" if current is None else f"{current.state.value} v{current.version}"
                raise ValueError(
                    f"journal of {name}: cannot go from {was} to {state.value} v{version}"
                )
            return self._write_journal(name, current, version, state, reason, percent)

    def _write_journal(
        self,
        name: str,
        current: JournalEntry | None,
        version: int,
        state: UpdateState,
        reason: str | None,
        percent: float | None,
    ) -> JournalEntry:
        now = self._clock()
        event = JournalEvent(state, now, reason)
        if _starts_new_update(current, version, state) or current is None:
            pointer = self._read_pointer(name)
            entry = JournalEntry(
                name=name,
                version=version,
                state=state,
                reason=reason,
                percent=percent,
                previous_version=None if pointer is None else pointer.version,
                started_at=now,
                updated_at=now,
                history=(event,),
            )
        else:
            history = current.history
            if state is not current.state:
                history = (*history, event)
                if len(history) > _HISTORY_LIMIT:
                    history = (history[0], *history[-(_HISTORY_LIMIT - 1) :])
            entry = JournalEntry(
                name=name,
                version=version,
                state=state,
                reason=reason,
                percent=percent if percent is not None else current.percent,
                previous_version=current.previous_version,
                started_at=current.started_at,
                updated_at=now,
                history=history,
            )
        _write_atomically(self._journal_path(name), _json_bytes(entry.to_json()))
        return entry

    def _journal_step(
        self, name: str, version: int, state: UpdateState, reason: str | None = None
    ) -> None:
        """Record a state a store operation reached, when it moves the journal forward; a step
        the journal is already at, or one that does not fit it, is left out."""
        current = self.journal(name)
        if current is not None and current.version == version and current.state is state:
            return
        if _transition_allowed(current, version, state):
            self._write_journal(name, current, version, state, reason, None)
        else:
            _log.debug("journal of %s left at %s (store step %s)", name, current, state.value)

    # -- free space -------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes the store occupies on disk (allocated blocks, so sparse files count as used)."""
        total = 0
        for directory, _dirs, files in os.walk(self.root):
            for file in files:
                with contextlib.suppress(FileNotFoundError):
                    total += (Path(directory) / file).lstat().st_blocks * 512
        return total

    def available_bytes(self) -> int:
        """What a new download may use: the file system's free space (for unprivileged users)
        less ``reserve_bytes``, and within ``storage_budget`` when one is set."""
        available = shutil.disk_usage(self.root).free - self.reserve_bytes
        if self.storage_budget is not None:
            available = min(available, self.storage_budget - self.used_bytes())
        return max(available, 0)

    def check_free_space(self, size: int) -> None:
        """Raise ``InsufficientSpaceError(needed, available)`` unless ``size`` bytes fit (see
        ``available_bytes``). ``begin_download`` calls it before a new download.
        Example: ``store.check_free_space(manifest.size)``."""
        size = _positive_int(size, "size")
        available = self.available_bytes()
        if size > available:
            raise InsufficientSpaceError(size, available)

    # -- downloading ------------------------------------------------------------------------

    def begin_download(
        self,
        name: str,
        version: int,
        *,
        size: int,
        sha256: str,
        chunk_size: int,
        chunk_hashes: Sequence[str],
        manifest_bytes: bytes,
    ) -> Download:
        """Start or resume the download of ``version`` of ``name``.

        Idempotent: an interrupted download with the same size, sha256 and chunks resumes
        (``missing()`` says what is left); one with other values is discarded and started again;
        a version already stored returns a download with nothing missing whose ``complete()``
        returns the stored version. Downloads of other versions of ``name`` are discarded (one
        update per name at a time). Records ``downloading`` in the journal.

        Raises ``UnsafeNameError`` (unsafe name or version), ``BadVersionError`` (marked bad
        here), ``VersionConflictError`` (stored with another sha256), ``InsufficientSpaceError``
        (checked before a new download), ``DownloadBusyError`` (open in another process);
        ``ValueError`` for inconsistent sizes or hashes (the release module checks manifests).
        """
        name = validate_name(name)
        version = validate_version(version)
        plan = _DownloadPlan.create(size, sha256, chunk_size, chunk_hashes)
        if not isinstance(manifest_bytes, bytes | bytearray | memoryview):
            raise TypeError(f"manifest_bytes must be bytes, got {type(manifest_bytes).__name__}")
        manifest = bytes(manifest_bytes)
        with self._locked():
            key = (name, version)
            open_download = self._downloads.get(key)
            if open_download is not None and not open_download.closed:
                if open_download._plan == plan:
                    return open_download
                open_download.close()
            reason = self.bad_reason(name, version)
            if reason is not None:
                raise BadVersionError(name, version, reason)
            marker = self._read_verified(name, version)
            if marker is not None:
                if marker["sha256"] != plan.sha256:
                    raise VersionConflictError(name, version, marker["sha256"], plan.sha256)
                return Download(
                    self,
                    name,
                    version,
                    plan,
                    self._incoming_dir(name, version),
                    self.stored_version(name, version),
                )
            self._discard_other_incoming(name, keep=version)
            directory = self._incoming_dir(name, version)
            if directory.exists() and not self._resumable(directory, name, version, plan):
                _log.info("discarding the download of %s v%d: it no longer matches", name, version)
                self._discard_incoming(name, version)
            if not directory.exists():
                self.check_free_space(plan.size)
                with _space_errors(plan.size):
                    self._create_incoming(directory, name, version, plan, manifest)
            download = Download(self, name, version, plan, directory, None)
            self._downloads[key] = download
            if download.missing():
                self._journal_step(name, version, UpdateState.DOWNLOADING)
            return download

    def _resumable(self, directory: Path, name: str, version: int, plan: _DownloadPlan) -> bool:
        saved = _read_json(directory / DOWNLOAD_FILE)
        if saved is None or _DownloadPlan.from_json(saved) != plan:
            return False
        try:
            part = (directory / PART_FILE).stat()
            bitmap = (directory / BITMAP_FILE).stat()
        except FileNotFoundError:
            return False
        return part.st_size == plan.size and bitmap.st_size == math.ceil(plan.chunk_count / 8)

    def _create_incoming(
        self, directory: Path, name: str, version: int, plan: _DownloadPlan, manifest: bytes
    ) -> None:
        """Build the download in a staging directory and rename it into place: an incoming
        directory either exists whole (plan, manifest, bitmap, preallocated file) or not at all.
        """
        parent = directory.parent
        _make_directory(parent)
        staging = parent / f".staging-{version}-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            for file, data in (
                (DOWNLOAD_FILE, _json_bytes(plan.to_json(name, version))),
                (MANIFEST_FILE, manifest),
                (BITMAP_FILE, bytes(math.ceil(plan.chunk_count / 8))),
            ):
                self._write_new_file(staging / file, data)
            self._allocate(staging / PART_FILE, plan.size)
            _fsync_directory(staging)
            _crash_point("download.before_publish")
            staging.rename(directory)
            _fsync_directory(parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @staticmethod
    def _write_new_file(path: Path, data: bytes) -> None:
        with _space_errors(len(data)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _pwrite_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _allocate(path: Path, size: int) -> None:
        """Create ``path`` at ``size`` bytes. posix_fallocate(3) reserves the blocks now, so a
        full disk shows at the start rather than in the middle of a download; where the file
        system cannot (EOPNOTSUPP), a sparse file of that size is the fallback."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if _is_out_of_space(exc):
                    raise InsufficientSpaceError(size, None) from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _forget_download(self, download: Download) -> None:
        key = (download.name, download.version)
        if self._downloads.get(key) is download:
            del self._downloads[key]

    def _close_open_download(self, name: str, version: int) -> None:
        open_download = self._downloads.get((name, version))
        if open_download is not None:
            open_download.close()

    def _discard_incoming(self, name: str, version: int) -> None:
        self._close_open_download(name, version)
        _remove_tree(self._incoming_dir(name, version), self.root / "incoming" / name)

    def _discard_other_incoming(self, name: str, *, keep: int) -> None:
        try:
            entries = [path.name for path in (self.root / "incoming" / name).iterdir()]
        except FileNotFoundError:
            return
        for entry in entries:
            version = _parse_version_dir(entry)
            if version is not None and version != keep:
                _log.info("discarding the download of %s v%d for v%d", name, version, keep)
                self._discard_incoming(name, version)

    def _store_download(self, download: Download) -> StoredVersion:
        """Move a verified download into models/ (called with the lock held)."""
        name, version, plan = download.name, download.version, download._plan
        directory = self._version_dir(name, version)
        part = download.directory / PART_FILE
        with _space_errors(plan.size):
            _make_directory(directory)
            _write_atomically(
                directory / MANIFEST_FILE, (download.directory / MANIFEST_FILE).read_bytes()
            )
            # A rename within one file system: the verified bytes move, nothing is copied.
            # Both directories are synced: the new name must be durable before `verified` says
            # the version is there. (A retry after a failure below finds it already moved.)
            if part.exists() or not (directory / MODEL_FILE).exists():
                part.rename(directory / MODEL_FILE)
                _fsync_directory(directory)
                _fsync_directory(download.directory)
            _crash_point("complete.after_move")
            marker = {"size": plan.size, "sha256": plan.sha256, "verified_at": self._clock()}
            _write_atomically(directory / VERIFIED_FILE, _json_bytes(marker))
        _crash_point("complete.after_verified")
        _remove_tree(download.directory, self.root / "incoming" / name)
        return self.stored_version(name, version)

    # -- activation, rollback, bad versions -------------------------------------------------

    def _switch(
        self,
        name: str,
        version: int | None,
        *,
        sha256: str,
        size: int,
        previous: int | None,
        current: _Pointer | None,
    ) -> _Pointer:
        generation = (
            current.generation + 1
            if current is not None
            # The old pointer is unreadable: a random start keeps "changed" true for holders.
            else (secrets.randbits(40) + 1 if self._pointer_path(name).exists() else 1)
        )
        pointer = _Pointer(version, sha256, size, previous, generation, self._clock())
        _write_atomically(
            self._pointer_path(name),
            _json_bytes(pointer.to_json(name)),
            before_replace="pointer.before_replace",
        )
        if version is not None:
            self._checked[name] = (generation, version, sha256)
        return pointer

    def _quarantine(self, name: str, version: int) -> None:
        """Remove a stored version found damaged; it can be downloaded again."""
        _log.warning("removing damaged model %s version %d from the store", name, version)
        _remove_tree(self._version_dir(name, version), self._models_dir(name))

    def activate(self, name: str, version: int) -> ActiveModel:
        """Make the stored ``version`` of ``name`` the active one, atomically.

        The model file is hashed again first (nothing damaged is ever activated); the pointer
        records the version it replaces for ``rollback``; the journal goes to activating, then
        succeeded; older versions beyond ``keep_previous`` are pruned. Activating the active
        version changes nothing. Raises ``VersionNotFoundError``, ``BadVersionError``,
        ``ModelIntegrityError`` (the stored file is damaged: it is removed).
        Example: ``store.activate("detector", 3).path``.
        """
        name = validate_name(name)
        version = validate_version(version)
        with self._locked():
            reason = self.bad_reason(name, version)
            if reason is not None:
                raise BadVersionError(name, version, reason)
            stored = self.stored_version(name, version)
            current = self._read_pointer(name)
            if current is not None and current.version == version:
                self._journal_step(name, version, UpdateState.SUCCEEDED)
                return self.active(name)
            problem = self._integrity_problem(name, version, stored.sha256, stored.size)
            if problem is not None:
                self._quarantine(name, version)
                self._journal_step(name, version, UpdateState.FAILED, problem)
                raise ModelIntegrityError(name, version, stored.sha256, None, problem)
            self._journal_step(name, version, UpdateState.ACTIVATING)
            _crash_point("activate.before_switch")
            pointer = self._switch(
                name,
                version,
                sha256=stored.sha256,
                size=stored.size,
                previous=None if current is None else current.version,
                current=current,
            )
            _crash_point("activate.after_switch")
            self._journal_step(name, version, UpdateState.SUCCEEDED)
            self.prune(name)
            return self._active_from_pointer(name, pointer)

    def _candidates(self, name: str, pointer: _Pointer | None, exclude: int | None) -> list[int]:
        """Versions to fall back to, best first: the recorded previous version, then the newest
        versions below the excluded one; never a version marked bad."""
        usable = [v for v in self.versions(name) if v != exclude and not self.is_bad(name, v)]
        ordered: list[int] = []
        if pointer is not None and pointer.previous in usable:
            ordered.append(pointer.previous)
        below = [v for v in usable if exclude is None or v < exclude]
        ordered += [v for v in sorted(below, reverse=True) if v not in ordered]
        return ordered

    def rollback(self, name: str, *, reason: str | None = None) -> ActiveModel:
        """Go back to the previous verified version (the one the pointer recorded, else the
        newest older one), never to a version marked bad; the journal of the update being
        undone records rolled_back with ``reason``. Raises ``NoActiveModelError``,
        ``NoPreviousVersionError``. Example: ``store.rollback("detector", reason="smoke test")``.
        """
        name = validate_name(name)
        with self._locked():
            current = self._read_pointer(name)
            if current is None or current.version is None:
                raise NoActiveModelError(name)
            for candidate in self._candidates(name, current, current.version):
                stored = self.stored_version(name, candidate)
                problem = self._integrity_problem(name, candidate, stored.sha256, stored.size)
                if problem is not None:
                    self._quarantine(name, candidate)
                    continue
                pointer = self._switch(
                    name,
                    candidate,
                    sha256=stored.sha256,
                    size=stored.size,
                    previous=current.version,
                    current=current,
                )
                _crash_point("rollback.after_switch")
                self._journal_step(name, current.version, UpdateState.ROLLED_BACK, reason)
                return self._active_from_pointer(name, pointer)
            raise NoPreviousVersionError(name)

    def mark_bad(self, name: str, version: int, reason: str) -> None:
        """Record that ``version`` failed its health check: it is never downloaded or activated
        again here. Its download in progress is discarded, and an update of it still running is
        recorded as failed with ``reason``. It does not switch the pointer: call ``rollback``
        if the version is active. Example: ``store.mark_bad("detector", 3, "smoke test")``.
        """
        name = validate_name(name)
        version = validate_version(version)
        if not isinstance(reason, str) or not reason:
            raise ValueError("mark_bad needs a reason")
        with self._locked():
            _make_directory(self.root / "bad" / name)
            marker = {"reason": reason, "at": self._clock()}
            _write_atomically(self._bad_path(name, version), _json_bytes(marker))
            self._discard_incoming(name, version)
            journal = self.journal(name)
            if journal is not None and journal.version == version and not journal.terminal:
                self._journal_step(name, version, UpdateState.FAILED, reason)

    def prune(self, name: str) -> tuple[int, ...]:
        """Delete stored versions beyond ``keep_previous``; return those deleted.

        Kept: the active version, a version an unfinished update is installing, the recorded
        previous version, and the newest others up to ``keep_previous`` in all; versions marked
        bad are deleted first (their bad mark stays). ``activate`` calls it.
        """
        name = validate_name(name)
        with self._locked():
            pointer = self._read_pointer(name)
            protected: set[int] = set()
            if pointer is not None and pointer.version is not None:
                protected.add(pointer.version)
            journal = self.journal(name)
            if journal is not None and not journal.terminal:
                protected.add(journal.version)
            kept = [v for v in self._candidates(name, pointer, None) if v not in protected][
                : self.keep_previous
            ]
            removed = tuple(v for v in self.versions(name) if v not in protected and v not in kept)
            for version in removed:
                _remove_tree(
                    self._version_dir(name, version),
                    self._models_dir(name),
                    crash_point="prune.after_rename",
                )
            return removed

    # -- integrity at start-up --------------------------------------------------------------

    def verify_active(self, name: str | None = None) -> tuple[IntegrityCheck, ...]:
        """Hash the active model of ``name`` (or of every name) against its size and sha256.

        A damaged active model is removed and the pointer falls back to the newest intact
        previous version (never one marked bad); with none left, no model is active. Run it at
        start-up; the result says what happened, for the agent to report.
        Example: ``[c for c in store.verify_active() if not c.ok]``.
        """
        names = [validate_name(name)] if name is not None else self.names()
        results = []
        with self._locked():
            for each in names:
                pointer = self._read_pointer(each)
                if pointer is None and not self._pointer_path(each).exists():
                    continue
                results.append(self._verify_active_locked(each))
        return tuple(results)

    def check_active(self, name: str, *, full: bool = False) -> IntegrityCheck:
        """Look at the active model of ``name`` without repairing anything (for reports and
        diagnostics): its size, and with ``full`` its sha256 too (seconds for a large model on
        an SD card). ``verify_active`` is the start-up check that also falls back.
        Example: ``store.check_active("detector").ok``."""
        name = validate_name(name)
        pointer = self._read_pointer(name)
        if pointer is None:
            if not self._pointer_path(name).exists():
                return IntegrityCheck(name, ok=True, version=None, reason="no active model")
            return IntegrityCheck(name, False, None, (), "the active pointer is unreadable")
        if pointer.version is None:
            return IntegrityCheck(name, ok=True, version=None, reason="no active model")
        if full:
            problem = self._integrity_problem(name, pointer.version, pointer.sha256, pointer.size)
        else:
            problem = self._quick_problem(name, pointer.version, pointer.size)
        if problem is None:
            return IntegrityCheck(name, ok=True, version=pointer.version)
        return IntegrityCheck(name, False, pointer.version, (pointer.version,), problem)

    def _verify_active_locked(self, name: str) -> IntegrityCheck:
        pointer = self._read_pointer(name)
        if pointer is not None and pointer.version is None:
            return IntegrityCheck(name, ok=True, version=None, reason="no active model")
        problem: str | None
        if pointer is None:
            problem = "the active pointer is unreadable"
            corrupt: list[int] = []
        else:
            assert pointer.version is not None
            problem = self._integrity_problem(name, pointer.version, pointer.sha256, pointer.size)
            if problem is None:
                self._checked[name] = (pointer.generation, pointer.version, pointer.sha256)
                return IntegrityCheck(name, ok=True, version=pointer.version)
            corrupt = [pointer.version]
        fallback: int | None = None
        for candidate in self._candidates(name, pointer, corrupt[0] if corrupt else None):
            stored = self.stored_version(name, candidate)
            if self._integrity_problem(name, candidate, stored.sha256, stored.size) is None:
                fallback = candidate
                self._switch(
                    name,
                    candidate,
                    sha256=stored.sha256,
                    size=stored.size,
                    previous=None,
                    current=pointer,
                )
                break
            self._quarantine(name, candidate)
            corrupt.append(candidate)
        else:
            # Nothing intact is left: the pointer says so (its change counter moves on).
            self._switch(name, None, sha256="", size=0, previous=None, current=pointer)
        if pointer is not None and pointer.version is not None:
            # Removed only once the pointer no longer names it.
            self._quarantine(name, pointer.version)
        if fallback is None:
            _log.error("%s: %s; no intact version is left", name, problem)
        else:
            _log.warning("%s: %s; fell back to version %d", name, problem, fallback)
        return IntegrityCheck(name, False, fallback, tuple(corrupt), problem)

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish or undo what an interrupted operation left (called with the lock held)."""
        for sub in ("active", "journal"):
            _remove_temp_files(self.root / sub)
        for name in _subdirectories(self.root / "bad"):
            _remove_temp_files(self.root / "bad" / name)
        for name in _subdirectories(self.root / "incoming"):
            self._recover_incoming(name)
        for name in _subdirectories(self.root / "models"):
            self._recover_models(name)
        for path in (self.root / "journal").glob("*.json"):
            name = path.name[: -len(".json")]
            if _NAME_PATTERN.fullmatch(name) is None or ".." in name:
                continue
            journal = self.journal(name)
            pointer = self._read_pointer(name)
            if journal is None or pointer is None:
                continue
            try:
                self._recover_journal(name, journal, pointer)
            except InsufficientSpaceError as exc:
                # A full disk must not stop the store from opening and serving the active
                # model; the journal is brought up to date on a later open.
                _log.warning("journal of %s not updated on open: %s", name, exc)

    def _recover_journal(self, name: str, journal: JournalEntry, pointer: _Pointer) -> None:
        if journal.terminal and journal.state is not UpdateState.SUCCEEDED:
            return
        if journal.state is UpdateState.ACTIVATING and pointer.version == journal.version:
            # The switch is the last step of an activation: it happened, so it succeeded.
            self._write_journal(name, journal, journal.version, UpdateState.SUCCEEDED, None, None)
        elif pointer.previous == journal.version and pointer.version != journal.version:
            # A rollback switched away from this update's version before its journal step.
            self._write_journal(
                name,
                journal,
                journal.version,
                UpdateState.ROLLED_BACK,
                "rolled back (recorded on restart)",
                None,
            )

    def _recover_incoming(self, name: str) -> None:
        parent = self.root / "incoming" / name
        for path in list(parent.iterdir()):
            entry = path.name
            if entry.startswith((".staging-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)
                continue
            version = _parse_version_dir(entry)
            if version is None or _NAME_PATTERN.fullmatch(name) is None or ".." in name:
                continue
            if self._read_verified(name, version) is not None or self.is_bad(name, version):
                _remove_tree(path, parent)  # stored already (or never to be): leftover
                continue
            if not (path / PART_FILE).exists():
                moved = self._version_dir(name, version) / MODEL_FILE
                if moved.exists():
                    # The crash came after model.part was moved and before `verified`: move
                    # it back; its bitmap is full, so complete() verifies and stores it again.
                    moved.rename(path / PART_FILE)
                    _fsync_directory(path)
                    _fsync_directory(moved.parent)
                else:
                    _remove_tree(path, parent)

    def _recover_models(self, name: str) -> None:
        parent = self._models_dir(name)
        for path in list(parent.iterdir()):
            entry = path.name
            if entry.startswith(".trash-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if _parse_version_dir(entry) is None:
                continue
            _remove_temp_files(path)
            if not (path / VERIFIED_FILE).exists():
                # Never completed (its download, if any, took the model file back above).
                _remove_tree(path, parent)


def _transition_allowed(current: JournalEntry | None, version: int, state: UpdateState) -> bool:
    if _starts_new_update(current, version, state):
        return True
    assert current is not None
    return current.version == version and state in _NEXT_STATES[current.state]


def _starts_new_update(current: JournalEntry | None, version: int, state: UpdateState) -> bool:
    if state not in _START_STATES:
        return False
    return current is None or current.terminal or current.version != version


def _subdirectories(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(directory) if entry.is_dir()]
    except FileNotFoundError:
        return []


def _remove_temp_files(directory: Path) -> None:
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
