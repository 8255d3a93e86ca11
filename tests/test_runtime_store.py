"""EdgeModel.from_store: a model served from a ModelStore follows the active version, swapping
sessions between calls while concurrent callers keep being served (real store on disk, real
onnxruntime sessions, real threads)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import _models
import numpy as np
import pytest

from edge_sdk.errors import NoActiveModelError
from edge_sdk.runtime import EdgeModel
from edge_sdk.store import ModelStore

NAME = "scorer"
CHUNK = 4096


def _model_bytes(value: float) -> bytes:
    """A model whose output is the constant ``value`` (plus 0 x the input)."""
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def _install(store: ModelStore, version: int, data: bytes, *, activate: bool = True) -> None:
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    with store.begin_download(
        NAME,
        version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=CHUNK,
        chunk_hashes=[hashlib.sha256(c).hexdigest() for c in chunks],
        manifest_bytes=b'{"test": true}',
    ) as download:
        for index in download.missing():
            download.write_chunk(index, chunks[index])
        download.complete()
    if activate:
        store.activate(NAME, version)


def _value(model: EdgeModel) -> float:
    (out,) = model.run({"image": np.zeros((1, 3, 8, 8), np.float32)}).values()
    return float(out.reshape(-1)[0])


def _wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the model to swap")
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", reserve_bytes=0)


def test_follows_activation_and_rollback(store: ModelStore) -> None:
    _install(store, 1, _model_bytes(1.0))
    model = EdgeModel.from_store(store, NAME, profile=None)
    assert model.store_version == 1 and _value(model) == 1.0
    _install(store, 2, _model_bytes(2.0))
    _wait_for(lambda: _value(model) == 2.0)
    assert model.store_version == 2 and model.store_error is None
    store.rollback(NAME, reason="test")
    _wait_for(lambda: _value(model) == 1.0)
    assert model.store_version == 1


def test_concurrent_callers_are_served_across_swaps(store: ModelStore) -> None:
    # Four threads call the model without pause while versions 2..6 are activated: no call
    # fails, each returns one version's output, and the last version wins.
    _install(store, 1, _model_bytes(1.0))
    model = EdgeModel.from_store(store, NAME, profile=None)
    seen: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                seen.append(_value(model))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in range(2, 7):
            _install(store, version, _model_bytes(float(version)))
            _wait_for(lambda v=version: _value(model) == float(v))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert set(seen) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert len(seen) > 50
    assert model.store_version == 6


def test_a_version_that_does_not_load_leaves_the_old_one_serving(store: ModelStore) -> None:
    _install(store, 1, _model_bytes(1.0))
    model = EdgeModel.from_store(store, NAME, profile=None)
    # Verified by its hashes, but not ONNX: the store takes it, onnxruntime does not.
    _install(store, 2, b"not an onnx model at all" * 100)
    _wait_for(lambda: _value(model) == 1.0 and model.store_error is not None)
    assert "version switch of 'scorer' not taken" in model.store_error  # type: ignore[operator]
    assert _value(model) == 1.0 and model.store_version == 1
    # The agent then activates a good version: the model takes it and the error clears.
    _install(store, 3, _model_bytes(3.0))
    _wait_for(lambda: _value(model) == 3.0)
    assert model.store_error is None


def test_nothing_active_is_a_clear_error(store: ModelStore) -> None:
    with pytest.raises(NoActiveModelError):
        EdgeModel.from_store(store, NAME)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


def test_an_application_reads_a_store_it_cannot_write(tmp_path: Path) -> None:
    # The agent owns the store; the application opens it read-only: nothing is created,
    # locked or repaired, and it still follows the agent's switches.
    import os
    import subprocess

    from edge_sdk.errors import ModelIntegrityError, ReadOnlyStoreError

    root = tmp_path / "store"
    agent_side = ModelStore(root)
    _install(agent_side, 1, _model_bytes(1.0))
    view = tmp_path / "view"
    view.mkdir()
    mounted = False
    if os.geteuid() == 0:  # a real read-only file system: a read-only bind mount
        subprocess.run(["mount", "--bind", str(root), str(view)], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
    try:
        app_root = view if mounted else root
        before = _snapshot(root)
        app_store = ModelStore(app_root, readonly=True)
        with EdgeModel.from_store(app_store, NAME, profile=None) as model:
            assert _value(model) == 1.0
            _install(agent_side, 2, _model_bytes(2.0))  # the agent installs v2
            _wait_for(lambda: _value(model) == 2.0)
            assert model.store_version == 2
        for change in (
            lambda: app_store.activate(NAME, 1),
            lambda: app_store.rollback(NAME),
            lambda: app_store.mark_bad(NAME, 1, "x"),
        ):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                change()
        # Damage the active model: the application is told, and repairs nothing.
        active = agent_side.active(NAME)
        with active.path.open("r+b") as stream:
            stream.write(b"\0\0\0\0")
        fresh = ModelStore(app_root, readonly=True)
        with pytest.raises(ModelIntegrityError, match="does not repair"):
            fresh.active(NAME)
        after = _snapshot(root)
        changed = {k for k in after if before.get(k) != after[k]}
        # Only what the agent itself wrote (v2 and its pointer, the journal) changed.
        assert all(k.split("/")[0] in {"models", "active", "journal", "incoming"} for k in changed)
        assert not (root / "active" / f"{NAME}.lock").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(view)], check=True)


def test_closing_a_model_from_a_store_releases_its_watch(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _install(store, 1, _model_bytes(1.0))

    def held() -> list[str]:
        found = []
        for link in Path("/proc/self/fd").iterdir():
            try:
                target = str(link.readlink())
            except OSError:
                continue
            if target.startswith(str(store.root)):
                found.append(target)
        return found

    model = EdgeModel.from_store(store, NAME, profile=None)
    assert held()  # the pointer, watched between requests
    model.close()
    assert held() == []
