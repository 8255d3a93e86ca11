"""ModelStore: layout, chunked downloads, activation, rollback, journal, and crash safety.

References: fsync(2) and rename(2) (the write ordering the store relies on); DESIGN.md "Model
store and updates"; issue 5 (crash points, disk full, streaming); docs/model-store.md.

Crash points run in a real child process that SIGKILLs itself at the named point (the store's
test hook), then a new ModelStore on the same root must show a complete, verified active model
and an exact list of missing chunks. Disk full is a real ENOSPC: /dev/full under a download's
file descriptor, and (as root) a small tmpfs filled to the last byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    StoreError,
    UnsafeNameError,
    VersionConflictError,
    VersionNotFoundError,
)
from edge_sdk.store import (
    CRASH_POINTS,
    Download,
    ModelStore,
    UpdateState,
    validate_name,
    validate_version,
)

REPO = Path(__file__).resolve().parents[1]
NAME = "detector"


# --------------------------------------------------------------------------------------------
# Releases made of deterministic bytes


@dataclass(frozen=True)
class Release:
    name: str
    version: int
    data: bytes
    chunk_size: int

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk(self, index: int) -> bytes:
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]

    @property
    def chunk_hashes(self) -> list[str]:
        return [hashlib.sha256(self.chunk(i)).hexdigest() for i in range(self.chunk_count)]

    @property
    def manifest(self) -> bytes:
        fields = {"name": self.name, "version": self.version, "sha256": self.sha256}
        return json.dumps(fields).encode()

    def begin(self, store: ModelStore) -> Download:
        return store.begin_download(
            self.name,
            self.version,
            size=self.size,
            sha256=self.sha256,
            chunk_size=self.chunk_size,
            chunk_hashes=self.chunk_hashes,
            manifest_bytes=self.manifest,
        )


def make_release(
    version: int, size: int = 5000, chunk_size: int = 512, name: str = NAME
) -> Release:
    data = random.Random(f"{name}-{version}-{size}").randbytes(size)
    return Release(name, version, data, chunk_size)


def install(store: ModelStore, release: Release, *, activate: bool = True) -> None:
    with release.begin(store) as download:
        for index in download.missing():
            download.write_chunk(index, release.chunk(index))
        download.complete()
    if activate:
        store.activate(release.name, release.version)


def open_store(root: Path, **options: object) -> ModelStore:
    options.setdefault("reserve_bytes", 0)
    return ModelStore(root, **options)  # type: ignore[arg-type]


def leftovers(root: Path) -> list[Path]:
    """Temp files, staging and trash directories: none may survive a reopen."""
    return [
        path
        for path in root.rglob(".*")
        if path.name != ".lock"
        and (path.name.endswith(".tmp") or path.name.startswith((".staging-", ".trash-")))
    ]


def assert_sound(
    root: Path, releases: dict[int, Release], name: str = NAME, *, downloads: bool = True
) -> ModelStore:
    """A new store on ``root`` shows an intact active model and intact stored versions, and
    every chunk its downloads claim is on disk and correct (``downloads=False`` when this
    process holds one open)."""
    store = open_store(root)
    assert leftovers(root) == []
    active = store.active(name)
    content = active.path.read_bytes()
    assert content == releases[active.version].data
    assert hashlib.sha256(content).hexdigest() == active.sha256
    for version in store.versions(name):
        stored = store.stored_version(name, version)
        assert stored.path.read_bytes() == releases[version].data
        assert stored.manifest_path.read_bytes() == releases[version].manifest
    incoming = root / "incoming" / name
    for directory in incoming.iterdir() if incoming.exists() and downloads else []:
        release = releases[int(directory.name)]
        with release.begin(store) as download:
            part = (directory / "model.part").read_bytes()
            missing = set(download.missing())
            for index in range(release.chunk_count):
                if index not in missing:
                    chunk = part[index * release.chunk_size : (index + 1) * release.chunk_size]
                    assert chunk == release.chunk(index), f"chunk {index} claimed but wrong"
    return store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> ModelStore:
    return open_store(root)


# --------------------------------------------------------------------------------------------
# Names and versions from the wire


@pytest.mark.parametrize("name", ["detector", "a", "Model_2.int8", "x" * 64, "v1.2-rc_3", "9lives"])
def test_safe_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a..b",
        "../etc",
        "a/b",
        "a\\b",
        ".hidden",
        "-flag",
        "_x",
        "x" * 65,
        "naïve",
        "a b",
        "a\x00b",
        "detector\n",
        5,
        None,
        b"detector",
    ],
)
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(UnsafeNameError) as caught:
        validate_name(name)
    assert caught.value.field == "name"
    assert caught.value.name == (name if isinstance(name, str) else repr(name))


@pytest.mark.parametrize("version", [0, -1, True, False, "3", 2.0, None, 2**63])
def test_unsafe_versions_are_refused(version: object) -> None:
    with pytest.raises(UnsafeNameError) as caught:
        validate_version(version)
    assert caught.value.field == "version"


@given(st.text(max_size=80))
def test_any_accepted_name_stays_one_level_inside_the_store(name: str) -> None:
    base = Path("/store/models")
    try:
        validate_name(name)
    except UnsafeNameError:
        return
    resolved = (base / name).resolve()
    assert resolved.parent == base
    assert resolved.name == name


def test_store_operations_validate_before_touching_a_path(store: ModelStore, root: Path) -> None:
    release = make_release(1)
    for call in (
        lambda: store.begin_download(
            "../escape",
            1,
            size=release.size,
            sha256=release.sha256,
            chunk_size=release.chunk_size,
            chunk_hashes=release.chunk_hashes,
            manifest_bytes=b"{}",
        ),
        lambda: store.activate("../escape", 1),
        lambda: store.activate(NAME, 0),
        lambda: store.mark_bad("a/b", 1, "bad"),
        lambda: store.rollback(".."),
        lambda: store.journal("../../etc/passwd"),
        lambda: store.update_journal(NAME, -3, "queued"),
        lambda: store.versions("a/b"),
        lambda: store.active("/abs"),
    ):
        with pytest.raises(UnsafeNameError):
            call()
    assert not (root.parent / "escape").exists()
    assert leftovers(root) == []


# --------------------------------------------------------------------------------------------
# Downloads


def test_install_lays_out_the_documented_files(store: ModelStore, root: Path) -> None:
    release = make_release(1)
    install(store, release)
    version_dir = root / "models" / NAME / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "verified",
    ]
    assert (version_dir / "model.onnx").read_bytes() == release.data
    assert (version_dir / "manifest.json").read_bytes() == release.manifest
    pointer = json.loads((root / "active" / NAME).read_text())
    assert pointer["version"] == 1
    assert pointer["sha256"] == release.sha256
    assert pointer["previous"] is None
    assert not (root / "incoming" / NAME / "1").exists()
    active = store.active(NAME)
    assert (active.version, active.path) == (1, version_dir / "model.onnx")
    assert store.versions(NAME) == (1,)
    assert store.manifest_bytes(NAME, 1) == release.manifest


def test_incoming_download_is_preallocated_with_a_compact_bitmap(
    store: ModelStore, root: Path
) -> None:
    release = make_release(1, size=10_000, chunk_size=512)  # 20 chunks -> 3 bitmap bytes
    with release.begin(store) as download:
        directory = root / "incoming" / NAME / "1"
        assert (directory / "model.part").stat().st_size == release.size
        assert (directory / "chunks.bitmap").read_bytes() == bytes(3)
        download.write_chunk(0, release.chunk(0))
        download.write_chunk(9, release.chunk(9))
        download.write_chunk(19, release.chunk(19))
        expected = bytes([0b0000_0001, 0b0000_0010, 0b0000_1000])
        assert (directory / "chunks.bitmap").read_bytes() == expected
        assert download.bitmap() == expected
        assert download.received_count == 3
        assert download.percent == pytest.approx(15.0)


def test_a_tampered_chunk_is_refused_and_nothing_is_written(store: ModelStore, root: Path) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        tampered = bytearray(release.chunk(2))
        tampered[7] ^= 0x01
        with pytest.raises(ChunkVerificationError) as caught:
            download.write_chunk(2, bytes(tampered))
        assert caught.value.index == 2
        assert caught.value.expected == release.chunk_hashes[2]
        assert caught.value.got == hashlib.sha256(tampered).hexdigest()
        assert 2 in download.missing()
        part = (root / "incoming" / NAME / "1" / "model.part").read_bytes()
        assert part[2 * 512 : 3 * 512] == bytes(512)
        with pytest.raises(ChunkVerificationError, match="bytes, expected 512"):
            download.write_chunk(3, release.chunk(3)[:-1])
        assert download.write_chunk(2, release.chunk(2)) is True


def test_out_of_range_and_wrongly_typed_indexes_are_refused(store: ModelStore) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        for index in (-1, release.chunk_count, 10**9):
            with pytest.raises(ChunkIndexError) as caught:
                download.write_chunk(index, b"x")
            assert caught.value.count == release.chunk_count
        with pytest.raises(TypeError):
            download.write_chunk(True, release.chunk(1))
        assert download.received_count == 0


def test_duplicates_are_ignored(store: ModelStore) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        assert download.write_chunk(1, release.chunk(1)) is True
        assert download.write_chunk(1, release.chunk(1)) is False
        # a tampered duplicate of a stored chunk is ignored too: nothing is written
        assert download.write_chunk(1, b"garbage") is False
        assert download.write_chunks([(3, release.chunk(3)), (3, release.chunk(3))]) == 1


def test_write_chunks_stores_the_good_chunks_before_a_bad_one(store: ModelStore) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        batch = [(0, release.chunk(0)), (1, release.chunk(1)), (2, b"bad"), (3, release.chunk(3))]
        with pytest.raises(ChunkVerificationError):
            download.write_chunks(batch)
        assert download.missing() == list(range(2, release.chunk_count))
    resumed = release.begin(open_store(store.root))
    assert resumed.missing() == list(range(2, release.chunk_count))
    resumed.close()


chunk_writes = st.lists(st.integers(min_value=0, max_value=10), min_size=0, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.permutations(list(range(11))),
    duplicates=chunk_writes,
    restart_after=st.integers(min_value=0, max_value=11),
)
def test_any_order_with_duplicates_and_a_restart_gives_the_model(
    order: list[int], duplicates: list[int], restart_after: int
) -> None:
    release = make_release(1, size=10 * 64 + 7, chunk_size=64)  # 11 chunks, the last short
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "store"
        writes = list(order)
        for position, index in enumerate(duplicates):
            writes.insert(position * 3 % (len(writes) + 1), index)
        received: set[int] = set()
        download = release.begin(open_store(root))
        for count, index in enumerate(writes):
            if count == restart_after:
                download.close()  # a restart: new store, resumed download
                download = release.begin(open_store(root))
                assert download.missing() == sorted(set(range(11)) - received)
            new = download.write_chunk(index, release.chunk(index))
            assert new is (index not in received)
            received.add(index)
            assert download.missing() == sorted(set(range(11)) - received)
        stored = download.complete()
        assert stored.path.read_bytes() == release.data


def test_begin_download_is_idempotent(store: ModelStore) -> None:
    release = make_release(1)
    first = release.begin(store)
    assert release.begin(store) is first  # same process: the open download
    first.write_chunk(4, release.chunk(4))
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.write_chunk(5, release.chunk(5))
    again = release.begin(open_store(store.root))
    assert 4 not in again.missing()
    assert len(again.missing()) == release.chunk_count - 1
    again.close()


def test_a_download_with_other_parameters_starts_over(store: ModelStore) -> None:
    old = make_release(1)
    with old.begin(store) as download:
        download.write_chunk(0, old.chunk(0))
    new = Release(NAME, 1, old.data[::-1], old.chunk_size)
    with new.begin(store) as download:
        assert download.missing() == list(range(new.chunk_count))


def test_a_new_version_discards_the_download_of_another(store: ModelStore, root: Path) -> None:
    with make_release(1).begin(store) as download:
        download.write_chunk(0, make_release(1).chunk(0))
    with make_release(2).begin(store):
        pass
    assert sorted(p.name for p in (root / "incoming" / NAME).iterdir()) == ["2"]


def test_an_already_stored_version_needs_nothing(store: ModelStore) -> None:
    release = make_release(1)
    install(store, release)
    with release.begin(store) as download:
        assert download.missing() == []
        assert download.write_chunk(0, release.chunk(0)) is False
        assert download.complete().sha256 == release.sha256
    other = Release(NAME, 1, bytes(len(release.data)), release.chunk_size)
    with pytest.raises(VersionConflictError) as caught:
        other.begin(store)
    assert caught.value.stored == release.sha256


def test_complete_refuses_while_chunks_are_missing(store: ModelStore) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        download.write_chunk(0, release.chunk(0))
        with pytest.raises(DownloadIncompleteError) as caught:
            download.complete()
        assert caught.value.missing == release.chunk_count - 1


def test_chunks_damaged_on_disk_are_found_and_fetched_again(store: ModelStore, root: Path) -> None:
    release = make_release(1)
    with release.begin(store) as download:
        for index in range(release.chunk_count):
            download.write_chunk(index, release.chunk(index))
        part = root / "incoming" / NAME / "1" / "model.part"
        with part.open("r+b") as handle:  # bit rot after the chunk was verified
            handle.seek(3 * 512 + 100)
            handle.write(b"\xff\xfe")
        with pytest.raises(ModelIntegrityError) as caught:
            download.complete()
        assert caught.value.bad_chunks == (3,)
        assert download.missing() == [3]
        assert store.journal(NAME).state is UpdateState.DOWNLOADING  # type: ignore[union-attr]
        download.write_chunk(3, release.chunk(3))
        assert download.complete().path.read_bytes() == release.data


def test_a_manifest_whose_chunks_do_not_make_its_file_is_refused(
    store: ModelStore, root: Path
) -> None:
    release = make_release(1)
    lying = store.begin_download(
        NAME,
        1,
        size=release.size,
        sha256=hashlib.sha256(b"something else").hexdigest(),
        chunk_size=release.chunk_size,
        chunk_hashes=release.chunk_hashes,
        manifest_bytes=release.manifest,
    )
    for index in range(release.chunk_count):
        lying.write_chunk(index, release.chunk(index))
    with pytest.raises(ModelIntegrityError, match="bad manifest") as caught:
        lying.complete()
    assert caught.value.bad_chunks == ()
    assert lying.closed
    assert store.versions(NAME) == ()
    assert not (root / "incoming" / NAME / "1").exists()
    entry = store.journal(NAME)
    assert entry is not None and entry.state is UpdateState.FAILED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 0),
        ("size", True),
        ("chunk_size", 0),
        ("sha256", "abc"),
        ("chunk_hashes", ["0" * 64]),
    ],
)
def test_inconsistent_download_parameters_are_value_errors(
    store: ModelStore, field: str, value: object
) -> None:
    release = make_release(1)
    arguments: dict[str, object] = {
        "size": release.size,
        "sha256": release.sha256,
        "chunk_size": release.chunk_size,
        "chunk_hashes": release.chunk_hashes,
        "manifest_bytes": release.manifest,
    }
    arguments[field] = value
    with pytest.raises(ValueError):
        store.begin_download(NAME, 1, **arguments)  # type: ignore[arg-type]


def test_a_second_process_cannot_open_the_same_download(store: ModelStore, root: Path) -> None:
    release = make_release(1)
    holder = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(child_spec(root, release, action="hold"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding"
        with pytest.raises(DownloadBusyError):
            release.begin(store)
    finally:
        holder.communicate(b"\n", timeout=30)
    with release.begin(store) as download:  # released when the holder exited
        assert download.missing() == list(range(release.chunk_count))


def test_a_50_mb_model_streams_through_in_little_memory(tmp_path: Path) -> None:
    chunk_size = 64 * 1024
    chunk_count = 800  # 50 MiB
    size = chunk_size * chunk_count

    def chunk(index: int) -> bytes:
        return random.Random(index).randbytes(chunk_size)

    whole = hashlib.sha256()
    hashes = []
    for index in range(chunk_count):
        data = chunk(index)
        whole.update(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    store = open_store(tmp_path / "store")
    order = list(range(chunk_count))
    random.Random(5).shuffle(order)
    tracemalloc.start()
    try:
        download = store.begin_download(
            "big",
            1,
            size=size,
            sha256=whole.hexdigest(),
            chunk_size=chunk_size,
            chunk_hashes=hashes,
            manifest_bytes=b"{}",
        )
        for index in order:
            download.write_chunk(index, chunk(index))
        stored = download.complete()
        store.activate("big", 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == size
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte model"
    assert store.active("big").sha256 == whole.hexdigest()


# --------------------------------------------------------------------------------------------
# Activation, rollback, bad versions, pruning


def test_activate_records_the_previous_version_and_rollback_returns_to_it(
    store: ModelStore,
) -> None:
    one, two = make_release(1), make_release(2)
    install(store, one)
    generation = store.generation(NAME)
    install(store, two)
    active = store.active(NAME)
    assert (active.version, active.previous) == (2, 1)
    assert store.generation(NAME) != generation
    back = store.rollback(NAME, reason="health check failed")
    assert (back.version, back.previous) == (1, 2)
    assert back.path.read_bytes() == one.data
    entry = store.journal(NAME)
    assert entry is not None
    assert (entry.version, entry.state, entry.reason) == (
        2,
        UpdateState.ROLLED_BACK,
        "health check failed",
    )


def test_activating_the_active_version_changes_nothing(store: ModelStore) -> None:
    install(store, make_release(1))
    generation = store.generation(NAME)
    assert store.activate(NAME, 1).generation == generation


def test_activate_needs_a_stored_version(store: ModelStore) -> None:
    with pytest.raises(VersionNotFoundError):
        store.activate(NAME, 7)
    with pytest.raises(NoActiveModelError):
        store.active(NAME)
    assert store.generation(NAME) == 0


def test_rollback_skips_bad_versions_and_needs_a_target(store: ModelStore) -> None:
    for version in (1, 2, 3):
        install(store, make_release(version))
    store.mark_bad(NAME, 2, "smoke test output differs")
    store.activate(NAME, 3)
    # pointer.previous is 2 (bad): rollback goes to 1
    assert store.rollback(NAME).version == 1
    only = open_store(store.root.parent / "other")
    install(only, make_release(1))
    with pytest.raises(NoPreviousVersionError):
        only.rollback(NAME)
    with pytest.raises(NoActiveModelError):
        only.rollback("unknown")


def test_a_bad_version_is_never_downloaded_or_activated_again(
    store: ModelStore, root: Path
) -> None:
    one, two = make_release(1), make_release(2)
    install(store, one)
    with two.begin(store) as download:
        download.write_chunk(0, two.chunk(0))
    store.mark_bad(NAME, 2, "smoke test failed: output digest differs")
    assert not (root / "incoming" / NAME / "2").exists()
    entry = store.journal(NAME)
    assert entry is not None and entry.state is UpdateState.FAILED
    assert entry.reason == "smoke test failed: output digest differs"
    with pytest.raises(BadVersionError) as caught:
        two.begin(store)
    assert caught.value.reason.startswith("smoke test failed")
    assert open_store(root).is_bad(NAME, 2)
    install(store, make_release(3))
    store.mark_bad(NAME, 3, "crashes")
    with pytest.raises(BadVersionError):
        store.activate(NAME, 3)


def test_prune_keeps_the_active_and_n_previous_versions(root: Path) -> None:
    store = open_store(root, keep_previous=2)
    for version in range(1, 6):
        install(store, make_release(version))
    assert store.versions(NAME) == (3, 4, 5)
    assert store.active(NAME).version == 5
    # a version downloaded for an update still running is never pruned
    install(store, make_release(6), activate=False)
    store.update_journal(NAME, 6, "activating")
    assert store.prune(NAME) == ()
    store.rollback(NAME)  # to 4, while 6 is being activated
    store.update_journal(NAME, 6, "failed", reason="smoke test")
    # kept: the active 4, the recorded previous 5, the newest other (6, failed but not bad)
    assert store.prune(NAME) == (3,)
    assert store.versions(NAME) == (4, 5, 6)
    store.mark_bad(NAME, 6, "smoke test")
    assert store.prune(NAME) == (6,)
    assert store.active(NAME).version == 4
    assert store.is_bad(NAME, 6)


def test_prune_with_keep_previous_zero_keeps_only_the_active(root: Path) -> None:
    store = open_store(root, keep_previous=0)
    install(store, make_release(1))
    install(store, make_release(2))
    assert store.versions(NAME) == (2,)
    with pytest.raises(NoPreviousVersionError):
        store.rollback(NAME)


# --------------------------------------------------------------------------------------------
# Integrity of the active model


def corrupt(path: Path, offset: int = 100) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_verify_active_falls_back_from_a_corrupt_model(store: ModelStore, root: Path) -> None:
    releases = {v: make_release(v) for v in (1, 2, 3)}
    for release in releases.values():
        install(store, release)
    corrupt(store.active(NAME).path)
    checks = open_store(root).verify_active()
    assert len(checks) == 1
    check = checks[0]
    assert (check.ok, check.version, check.corrupt_versions) == (False, 2, (3,))
    assert "sha256" in (check.reason or "")
    assert_sound(root, releases)
    assert open_store(root).verify_active()[0].ok


def test_active_checks_the_model_once_per_process_and_falls_back(
    store: ModelStore, root: Path
) -> None:
    releases = {v: make_release(v) for v in (1, 2)}
    for release in releases.values():
        install(store, release)
    corrupt(root / "models" / NAME / "2" / "model.onnx")  # same size: only sha256 shows it
    fresh = open_store(root)
    assert fresh.active(NAME).version == 1
    assert store.versions(NAME) == (1,)


def test_a_truncated_active_model_is_seen_by_the_cheap_check(store: ModelStore, root: Path) -> None:
    install(store, make_release(1))
    install(store, make_release(2))
    store.active(NAME)
    path = root / "models" / NAME / "2" / "model.onnx"
    os.truncate(path, 10)
    assert store.active(NAME).version == 1


def test_with_no_intact_version_left_nothing_is_active(store: ModelStore, root: Path) -> None:
    install(store, make_release(1))
    install(store, make_release(2))
    for version in (1, 2):
        corrupt(root / "models" / NAME / str(version) / "model.onnx")
    generation = store.generation(NAME)
    with pytest.raises(NoActiveModelError):
        open_store(root).active(NAME)
    assert store.generation(NAME) != generation
    assert store.versions(NAME) == ()
    install(store, make_release(3))  # the device recovers with a new download
    assert store.active(NAME).version == 3


def test_activate_refuses_a_stored_version_damaged_since(store: ModelStore, root: Path) -> None:
    install(store, make_release(1))
    install(store, make_release(2), activate=False)
    corrupt(root / "models" / NAME / "2" / "model.onnx")
    with pytest.raises(ModelIntegrityError):
        store.activate(NAME, 2)
    assert store.active(NAME).version == 1
    assert store.versions(NAME) == (1,)


def test_readers_see_the_old_or_the_new_pointer_during_switches(root: Path) -> None:
    writer = open_store(root)
    releases = {v: make_release(v) for v in (1, 2)}
    for release in releases.values():
        install(writer, release)
    errors: list[BaseException] = []
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        reader = open_store(root)
        while not done.is_set():
            try:
                active = reader.active(NAME)
                assert active.path.read_bytes() == releases[active.version].data
                seen.add(active.version)
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for _ in range(40):
            writer.rollback(NAME)
            writer.activate(NAME, 2 if writer.active(NAME).version == 1 else 1)
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert seen == {1, 2}


def test_a_watch_notices_every_switch(store: ModelStore) -> None:
    with store.watch(NAME) as watch:
        assert watch.generation == 0
        assert not watch.changed()
        install(store, make_release(1))
        assert watch.changed()
        assert watch.refresh() == store.generation(NAME)
        assert not watch.changed()
        install(store, make_release(2))
        store.rollback(NAME)  # two switches in quick succession: old inodes cannot come back
        assert watch.changed()
        watch.refresh()
        for _ in range(20):
            store.activate(NAME, 2 if store.active(NAME).version == 1 else 1)
            assert watch.changed()
            watch.refresh()
            assert not watch.changed()
        store.activate(NAME, store.active(NAME).version)  # no switch: no change
        assert not watch.changed()
    with pytest.raises(RuntimeError):
        watch.changed()


# --------------------------------------------------------------------------------------------
# The journal


def test_the_journal_follows_an_update(root: Path) -> None:
    ticks = iter(range(1000, 2000))
    store = open_store(root, clock=lambda: float(next(ticks)))
    install(store, make_release(1))
    two = make_release(2)
    store.update_journal(NAME, 2, "queued")
    with two.begin(store) as download:
        for index in download.missing():
            download.write_chunk(index, two.chunk(index))
        store.update_journal(NAME, 2, "downloading", percent=download.percent)
        download.complete()
    store.update_journal(NAME, 2, UpdateState.ACTIVATING)
    store.activate(NAME, 2)
    entry = store.journal(NAME)
    assert entry is not None
    assert [event.state.value for event in entry.history] == [
        "queued",
        "downloading",
        "verifying",
        "activating",
        "succeeded",
    ]
    assert entry.previous_version == 1
    assert entry.percent == 100.0
    assert entry.terminal
    times = [event.at for event in entry.history]
    assert times == sorted(times) and entry.started_at == times[0]
    saved = json.loads((root / "journal" / f"{NAME}.json").read_text())
    assert saved["state"] == "succeeded" and saved["version"] == 2


def test_the_journal_refuses_impossible_moves(store: ModelStore) -> None:
    store.update_journal(NAME, 1, "queued")
    with pytest.raises(ValueError, match="cannot go from queued"):
        store.update_journal(NAME, 1, "succeeded")
    with pytest.raises(ValueError):
        store.update_journal(NAME, 1, "bogus")
    store.update_journal(NAME, 1, "timed_out", reason="no chunk for 10 minutes")
    with pytest.raises(ValueError):
        store.update_journal(NAME, 1, "verifying")
    # after a terminal state, the same version may be queued again (a retry)
    assert store.update_journal(NAME, 1, "queued").history[-1].state is UpdateState.QUEUED
    # a new version supersedes an unfinished update
    assert store.update_journal(NAME, 2, "queued").version == 2


# --------------------------------------------------------------------------------------------
# Free space and a full disk


def test_check_free_space_against_a_budget(root: Path) -> None:
    store = open_store(root, storage_budget=200_000)
    install(store, make_release(1, size=60_000))
    with pytest.raises(InsufficientSpaceError) as caught:
        make_release(2, size=150_000).begin(store)
    assert caught.value.needed == 150_000
    assert caught.value.available is not None
    assert 100_000 < caught.value.available < 150_000
    assert not (root / "incoming" / NAME / "2").exists()
    assert store.active(NAME).version == 1
    with make_release(2, size=90_000).begin(store) as download:
        assert download.missing() == list(range(download.chunk_count))


def test_check_free_space_against_the_file_system(root: Path) -> None:
    store = open_store(root)
    free = shutil.disk_usage(root).free
    with pytest.raises(InsufficientSpaceError) as caught:
        store.check_free_space(free + 10**9)
    assert caught.value.available is not None and caught.value.available <= free
    reserved = open_store(root, reserve_bytes=free)
    with pytest.raises(InsufficientSpaceError):
        reserved.check_free_space(4096)


def test_a_write_error_from_a_full_device_leaves_the_chunk_missing(
    store: ModelStore, root: Path
) -> None:
    one, two = make_release(1), make_release(2)
    install(store, one)
    download = two.begin(store)
    download.write_chunk(0, two.chunk(0))
    # /dev/full answers every write with ENOSPC: put it under the download's data descriptor.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, download._part_fd)
    finally:
        os.close(full)
    with pytest.raises(InsufficientSpaceError) as caught:
        download.write_chunk(1, two.chunk(1))
    assert caught.value.available is None
    assert isinstance(caught.value.__cause__, OSError)
    assert 1 in download.missing()
    download.close()
    store = assert_sound(root, {1: one, 2: two})
    with two.begin(store) as resumed:
        assert resumed.missing() == list(range(1, two.chunk_count))


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        # lazy: a failed test may still hold a file open in it
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write until the file system says ENOSPC."""
    block = bytes(4096)
    with path.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(block)


def test_a_really_full_disk_never_corrupts_the_store(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", "4m") as fs:
        root = fs / "store"
        one, two = (
            make_release(1, size=1_000_000, chunk_size=65536),
            make_release(2, size=1_500_000, chunk_size=65536),
        )
        store = open_store(root)
        install(store, one)
        filler = fs / "filler"
        fill(filler)
        # the check before a download, against the real file system
        with pytest.raises(InsufficientSpaceError):
            two.begin(store)
        filler.unlink()
        download = two.begin(store)  # preallocated now: chunk writes cannot run out
        for index in download.missing():
            download.write_chunk(index, two.chunk(index))
        fill(filler)
        with pytest.raises(InsufficientSpaceError):
            download.complete()  # the manifest or the `verified` marker does not fit
        assert_sound(root, {1: one, 2: two}, downloads=False)
        filler.unlink()
        download.complete()
        fill(filler)
        with pytest.raises(InsufficientSpaceError):
            store.activate(NAME, 2)  # the new pointer does not fit: the old one stays
        store = assert_sound(root, {1: one, 2: two})
        assert store.active(NAME).version == 1
        filler.unlink()
        store.activate(NAME, 2)
        assert assert_sound(root, {1: one, 2: two}).active(NAME).version == 2


# --------------------------------------------------------------------------------------------
# Crash points: a real child process SIGKILLs itself at the named point

CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
from edge_sdk import store as store_module

spec = json.loads(sys.argv[1])
hits = 0

def crash(point):
    global hits
    if point == spec.get("crash_at"):
        hits += 1
        if hits == spec.get("hit", 1):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)

store_module._crash_hook = crash
store = store_module.ModelStore(
    spec["root"], keep_previous=spec.get("keep_previous", 2), reserve_bytes=0
)
name, version, chunk_size = spec["name"], spec["version"], spec["chunk_size"]
data = Path(spec["data"]).read_bytes() if spec.get("data") else b""

def begin():
    return store.begin_download(
        name, version, size=len(data), sha256=spec["sha256"], chunk_size=chunk_size,
        chunk_hashes=spec["chunk_hashes"], manifest_bytes=spec["manifest"].encode(),
    )

action = spec["action"]
if action == "install":
    with begin() as download:
        for index in spec.get("order") or download.missing():
            download.write_chunk(index, data[index * chunk_size:(index + 1) * chunk_size])
            time.sleep(spec.get("pause", 0))
        download.complete()
    store.activate(name, version)
elif action == "rollback":
    store.rollback(name, reason="health check failed")
elif action == "hold":
    with begin():
        print("holding", flush=True)
        sys.stdin.readline()
"""


def child_spec(root: Path, release: Release, **extra: object) -> dict[str, object]:
    data_path = root.parent / f"release-{release.version}.bin"
    data_path.write_bytes(release.data)
    return {
        "root": str(root),
        "name": release.name,
        "version": release.version,
        "chunk_size": release.chunk_size,
        "sha256": release.sha256,
        "chunk_hashes": release.chunk_hashes,
        "manifest": release.manifest.decode(),
        "data": str(data_path),
        **extra,
    }


def run_child(spec: dict[str, object]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(result.stderr.decode())
    return result.returncode


def test_every_crash_point_is_tested() -> None:
    tested = {point for point, *_ in CRASH_CASES}
    assert tested == set(CRASH_POINTS)


# (crash point, hit, action, active version expected after the crash)
CRASH_CASES = [
    ("download.before_publish", 1, "install", 1),
    ("chunk.after_data", 3, "install", 1),
    ("chunk.after_bitmap", 3, "install", 1),
    ("complete.after_move", 1, "install", 1),
    ("complete.after_verified", 1, "install", 1),
    ("activate.before_switch", 1, "install", 1),
    ("pointer.before_replace", 1, "install", 1),
    ("activate.after_switch", 1, "install", 2),
    ("rollback.after_switch", 1, "rollback", 1),
    ("prune.after_rename", 1, "install", 2),
]


@pytest.mark.parametrize(("point", "hit", "action", "expected"), CRASH_CASES)
def test_a_crash_at_each_point_leaves_a_sound_store_that_finishes_the_update(
    root: Path, point: str, hit: int, action: str, expected: int
) -> None:
    releases = {v: make_release(v, size=4000, chunk_size=512) for v in (1, 2)}  # 8 chunks
    keep_previous = 0 if point == "prune.after_rename" else 2
    store = open_store(root, keep_previous=keep_previous)
    install(store, releases[1])
    if action == "rollback":
        install(store, releases[2])
    spec = child_spec(
        root, releases[2], action=action, crash_at=point, hit=hit, keep_previous=keep_previous
    )
    assert run_child(spec) == -signal.SIGKILL, f"the child never reached {point}"

    store = assert_sound(root, releases)
    active = store.active(NAME)
    assert active.version == expected
    journal = store.journal(NAME)

    if point == "chunk.after_data":
        # the third chunk's bytes are on disk, its bit is not: it is asked for again
        part = (root / "incoming" / NAME / "2" / "model.part").read_bytes()
        assert part[2 * 512 : 3 * 512] == releases[2].chunk(2)
        with releases[2].begin(store) as download:
            assert download.missing() == list(range(2, 8))
    if point == "chunk.after_bitmap":
        with releases[2].begin(store) as download:
            assert download.missing() == list(range(3, 8))
    if point == "complete.after_move":
        assert store.versions(NAME) == (1,)
        with releases[2].begin(store) as download:
            assert download.missing() == []  # the file went back to incoming, still whole
    if point == "complete.after_verified":
        assert store.versions(NAME) == (1, 2)
        assert not (root / "incoming" / NAME / "2").exists()
    if point == "activate.before_switch":
        assert journal is not None and journal.state is UpdateState.ACTIVATING
    if point == "activate.after_switch":
        assert journal is not None and journal.state is UpdateState.SUCCEEDED
    if point == "rollback.after_switch":
        assert journal is not None and journal.state is UpdateState.ROLLED_BACK
        return
    if point == "prune.after_rename":
        assert store.versions(NAME) == (2,)
        return

    # the update then finishes from where it stopped
    install(store, releases[2])
    final = assert_sound(root, releases)
    assert final.active(NAME).version == 2
    entry = final.journal(NAME)
    assert entry is not None and entry.state is UpdateState.SUCCEEDED


@pytest.mark.slow
def test_random_sigkills_during_updates_never_leave_a_partial_model(root: Path) -> None:
    rng = random.Random(1234)
    releases = {v: make_release(v, size=300_000, chunk_size=4096) for v in (1, 2, 3)}  # 74 chunks
    install(open_store(root), releases[1])
    kills = 0
    for version in (2, 3):
        order = list(range(releases[version].chunk_count))
        rng.shuffle(order)
        spec = child_spec(root, releases[version], action="install", order=order, pause=0.005)
        for _attempt in range(40):
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                cwd=REPO,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.03, 0.6))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            _, stderr = process.communicate(timeout=60)
            assert process.returncode in (0, -signal.SIGKILL), stderr.decode()
            store = assert_sound(root, releases)
            if process.returncode == 0:
                break
            assert store.active(NAME).version in (version - 1, version)
        assert open_store(root).active(NAME).version == version
    assert kills >= 5


def test_open_removes_what_interrupted_writes_left(root: Path) -> None:
    store = open_store(root)
    install(store, make_release(1))
    (root / "active" / f".{NAME}.abc.tmp").write_text("{")
    (root / "journal" / f".{NAME}.json.abc.tmp").write_text("{")
    (root / "incoming" / NAME / ".staging-2-abc").mkdir(parents=True)
    (root / "models" / NAME / ".trash-1-abc").mkdir()
    (root / "models" / NAME / "5").mkdir()  # never verified
    open_store(root)
    assert leftovers(root) == []
    assert not (root / "models" / NAME / "5").exists()


def test_errors_share_the_store_root() -> None:
    for error in (
        ChunkIndexError(1, 2),
        ChunkVerificationError(1, "a", "b"),
        InsufficientSpaceError(10, 5),
        NoActiveModelError("x"),
        NoPreviousVersionError("x"),
    ):
        assert isinstance(error, StoreError)
    assert "10 bytes needed, 5 available" in str(InsufficientSpaceError(10, 5))
    assert isinstance(NoPreviousVersionError("x"), VersionNotFoundError)
