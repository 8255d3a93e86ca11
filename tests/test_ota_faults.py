"""Faults and bad input in over-the-air updates, each against a real Mosquitto broker.

Every test installs version 1 of the model "scorer" on device-1 through the fleet client,
injects one fault into the move to version 2, and checks the three promises of the update
design: the operator sees the reason (the retained job document, or the status's
``last_refusal`` for refused desired state), the store's active model is still complete and
verified, and an ``EdgeModel`` following the store keeps serving the old version's output.

Chunks are forged by a stand-in release server (``BlockForger``) that answers the device's
block requests itself; manifests and desired-state documents are forged by hand and signed
with the fleet key over the right context, so that only the check under test can refuse them.

References: docs/fleet-protocol.md (topics, block requests, chunk messages, desired state),
docs/model-store.md (journal, bad marks, free space), edge_sdk/release.py ``verify`` (the order
of the manifest checks), mount(8) and tmpfs(5) for the full-disk tests.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _broker
import _models
import _ota
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk import release as rel
from edge_sdk.desired import DESIRED_CONTEXT, DesiredModel, DesiredState, sign_desired
from edge_sdk.fleet import FleetClient, load_release
from edge_sdk.runtime import EdgeModel
from edge_sdk.store import ModelStore, UpdateState
from edge_sdk.transfer import decode_request, encode_chunk

NAME = "scorer"
DEVICE = "device-1"
CHUNK = 4096  # the harness's chunk size: the wide scorer below spans several chunks
WIDE = 4096  # output width of a multi-chunk scorer (16 KiB of constants, 5 chunks)
TERMINAL = frozenset({"succeeded", "failed", "rolled_back", "timed_out"})
IMAGE = {"image": np.zeros((1, 3, 8, 8), np.float32)}
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def scorer(value: float, width: int = 2) -> bytes:
    """An ONNX model whose every output element is ``value``."""
    return _models.constant_head(np.full((1, width), value, np.float32), size=8)


def output(model: EdgeModel) -> float:
    (out,) = model.run(IMAGE).values()
    values = np.unique(out)
    assert values.size == 1, values
    return float(values[0])


# --------------------------------------------------------------------------- the device


@dataclasses.dataclass
class Device:
    """device-1 with v1 installed through the fleet client, and a model serving from its
    store since then."""

    fleet: _ota.OtaFleet
    agent: _ota.AgentThread
    op: FleetClient
    v1: _ota.ReleaseFiles
    serving: EdgeModel

    @property
    def store(self) -> ModelStore:
        return self.agent.store

    @property
    def root(self) -> str:
        return self.fleet.broker.topic_root

    def desire(self, version: int, sha256: str, *, downgrade: bool = False) -> int:
        """Publish device-1's desired state for the scorer; return its sequence."""
        state = self.op.set_desired(
            "device", DEVICE, NAME, DesiredModel(version, sha256, downgrade), self.fleet.key
        )
        return state.sequence

    def publish(self, suffix: str, payload: bytes | str, *, retain: bool = True) -> None:
        self.op.connection.publish_wait(self.root + suffix, payload, retain=retain)

    def job(self, sequence: int, states: Collection[str] = TERMINAL) -> dict[str, Any]:
        """The job document answering the desired state of ``sequence`` (or later), once it
        reaches one of ``states``."""

        def found() -> dict[str, Any] | None:
            job = self.fleet.job(self.op, DEVICE)
            if job.get("sequence", -1) >= sequence and job.get("state") in states:
                return job
            return None

        return _ota.wait_for(found, 20, f"a job of sequence {sequence} in {sorted(states)}")

    def refusal(self, phrase: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            with self.op._cond:
                refusal = (self.op.statuses.get(DEVICE) or {}).get("last_refusal")
            if refusal and phrase in str(refusal.get("reason")):
                return dict(refusal)
            return None

        return _ota.wait_for(found, 20, f"a refusal saying {phrase!r}")

    def assert_intact(self, version: int = 1, value: float = 1.0) -> None:
        """The active model is ``version``, whole and verified, and is what is served."""
        assert self.agent.thread.is_alive(), "the agent died"
        assert self.store.active(NAME).version == version
        checks = self.store.verify_active()
        assert checks and all(check.ok for check in checks), checks
        assert output(self.serving) == value
        assert self.serving.store_version == version
        with EdgeModel.from_store(self.store, NAME, profile=None) as fresh:
            assert output(fresh) == value
        with self.op._cond:
            status = dict(self.op.statuses.get(DEVICE) or {})
        assert status.get("models", {}).get(NAME, {}).get("active") == version, status


@pytest.fixture
def fleet(mosquitto: _broker.MosquittoBroker, tmp_path: Path) -> Iterator[_ota.OtaFleet]:
    with _ota.OtaFleet(mosquitto, tmp_path / "fleet", chunk_size=CHUNK) as made:
        yield made


@pytest.fixture
def install(fleet: _ota.OtaFleet) -> Iterator[Callable[..., Device]]:
    """``install(**agent_config)``: start the release server (v1 only) and device-1's agent,
    deploy v1 and open a model serving from the device's store."""
    opened: list[EdgeModel] = []
    clients: list[FleetClient] = []

    def make(**overrides: Any) -> Device:
        v1 = fleet.release(scorer(1.0), 1)
        fleet.start_server([v1])
        options: dict[str, Any] = {"request_timeout": 1}
        options.update(overrides)
        agent = fleet.start_agent(DEVICE, **options)
        # No retained documents to wait for yet: a short settle (the harness waits 0.5 s).
        op = FleetClient(fleet.settings(fleet.broker.operator.username), fleet.fleet)
        clients.append(op.connect(settle=0.05))
        result = op.deploy(v1.path, fleet.key, devices=[DEVICE], wave_timeout=20)
        assert result.ok, result.to_dict()
        serving = EdgeModel.from_store(agent.store, NAME, profile=None)
        opened.append(serving)
        device = Device(fleet, agent, op, v1, serving)
        _ota.wait_for(lambda: _active_in_status(device) == 1, 10, "the status to show v1")
        return device

    yield make
    for model in opened:
        model.close()
    for client in clients:
        client.close()


def _active_in_status(device: Device) -> int | None:
    with device.op._cond:
        status = device.op.statuses.get(DEVICE) or {}
    return (status.get("models") or {}).get(NAME, {}).get("active")


def serve(fleet: _ota.OtaFleet, release: _ota.ReleaseFiles) -> None:
    """Let the running release server serve ``release`` too (it publishes its manifest)."""
    assert fleet.server is not None
    fleet.server.add(load_release(release.path))


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


# --------------------------------------------------------------------------- forged documents


def signature_block(signature: bytes) -> dict[str, str]:
    return {"algorithm": rel.SIGNATURE_ALGORITHM, "value": base64.b64encode(signature).decode()}


def sign_manifest_dict(body: dict[str, Any], key: Any) -> str:
    """A manifest document signed over exactly its canonical form, whatever it holds: the
    device's parser, not the signature, must then be what refuses it."""
    body = {k: v for k, v in body.items() if k != "signature"}
    signature = key.sign(rel.SIGNING_CONTEXT + rel.canonical_json(body))
    return rel.canonical_json({**body, "signature": signature_block(signature)}).decode()


def sign_desired_dict(body: dict[str, Any], key: Any) -> str:
    body = {k: v for k, v in body.items() if k != "signature"}
    signature = key.sign(DESIRED_CONTEXT + rel.canonical_json(body))
    return rel.canonical_json({**body, "signature": signature_block(signature)}).decode()


def forge_release(
    fleet: _ota.OtaFleet, data: bytes, version: int, *, key: Any = None, **options: Any
) -> tuple[str, rel.ReleaseManifest]:
    """A signed manifest for ``data`` written outside the release server's directory (so the
    files a running server holds are never overwritten)."""
    directory = fleet.workdir / "forged"
    directory.mkdir(exist_ok=True)
    model = directory / f"{secrets.token_hex(6)}.onnx"
    model.write_bytes(data)
    options.setdefault("metadata", {})
    manifest = rel.build_manifest(model, NAME, version, chunk_size=CHUNK, **options)
    signed = rel.sign(manifest, key or fleet.private_key)
    return signed.to_json(), signed.manifest


# --------------------------------------------------------------------------- forged chunks

Answer = Callable[[list[int]], list[tuple[int, bytes]]]


class BlockForger:
    """A stand-in release server for one release: it answers device-1's block requests for
    ``(name, version)`` with whatever ``answer(indexes)`` returns, ``(version, payload)``
    pairs published on ``releases/{name}/{version}/blocks/device-1``; ``qos=0`` sends them in
    bursts, as a fast server's chunks arrive."""

    def __init__(self, fleet: _ota.OtaFleet, version: int, answer: Answer, *, qos: int = 1) -> None:
        self.root = fleet.broker.topic_root
        self.version = version
        self.answer = answer
        self.qos = qos
        self.requested: list[int] = []
        self.errors: list[BaseException] = []
        self.peer = _broker.PahoPeer(fleet.broker, "operator")
        self.peer.connect()
        self.peer.subscribe(f"{self.root}devices/{DEVICE}/blocks/get")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="block-forger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.peer.expect(timeout=0.1)
            except AssertionError:
                continue
            try:
                request = decode_request(message.payload)
                if (request.name, request.version) != (NAME, self.version):
                    continue
                self.requested.extend(request.indexes())
                for version, payload in self.answer(request.indexes()):
                    topic = f"{self.root}releases/{NAME}/{version}/blocks/{DEVICE}"
                    self.peer.publish(topic, payload, qos=self.qos)
            except BaseException as exc:  # reported by close(), never lost in the thread
                self.errors.append(exc)
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peer.close()
        assert not self.errors, self.errors

    def __enter__(self) -> BlockForger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tamper(kind: str, chunks: list[bytes], index: int) -> bytes:
    data = chunks[index]
    if kind == "flipped":
        return data[:10] + bytes([data[10] ^ 0x01]) + data[11:]
    if kind == "truncated":
        return data[:-1]
    if kind == "extended":
        return data + b"\0"
    if kind == "another_chunk":  # as long, and different (the scorer repeats its constants)
        return next(c for c in chunks if len(c) == len(data) and c != data)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["flipped", "truncated", "extended", "another_chunk"])
def test_a_tampered_chunk_is_rejected_and_fetched_again(
    install: Callable[..., Device], kind: str
) -> None:
    device = install()
    data = scorer(2.0, WIDE)
    v2 = device.fleet.release(data, 2)
    chunks = chunks_of(data)
    assert len(chunks) >= 4
    target, bad_copies = 2, 3
    sent_bad = [0]

    def answer(indexes: list[int]) -> list[tuple[int, bytes]]:
        replies = []
        for index in indexes:
            if index == target and sent_bad[0] < bad_copies:
                sent_bad[0] += 1
                replies.append((2, encode_chunk(index, tamper(kind, chunks, index))))
            else:
                replies.append((2, encode_chunk(index, chunks[index])))
        return replies

    with BlockForger(device.fleet, 2, answer) as forger:
        device.op.publish_release(v2.path)
        job = device.job(device.desire(2, v2.manifest.sha256))
    assert job["state"] == "succeeded", job
    # Each bad copy was answered to a request; only a fourth request got the real chunk.
    assert sent_bad[0] == bad_copies
    assert forger.requested.count(target) >= bad_copies + 1
    active = device.store.active(NAME)
    assert active.version == 2
    assert Path(active.path).read_bytes() == data
    _ota.wait_for(lambda: output(device.serving) == 2.0, 10, "the served model to follow v2")


def test_a_chunk_that_never_verifies_fails_the_update_naming_it(
    install: Callable[..., Device],
) -> None:
    device = install()
    data = scorer(2.0, WIDE)
    v2 = device.fleet.release(data, 2)
    chunks = chunks_of(data)
    target = 1
    bad = [0]

    def answer(indexes: list[int]) -> list[tuple[int, bytes]]:
        replies = []
        for index in indexes:
            payload = chunks[index]
            if index == target:
                bad[0] += 1
                payload = tamper("flipped", chunks, index)
            replies.append((2, encode_chunk(index, payload)))
        return replies

    with BlockForger(device.fleet, 2, answer):
        device.op.publish_release(v2.path)
        job = device.job(device.desire(2, v2.manifest.sha256), {"failed"})
    assert f"chunk {target} failed its sha256 8 times" in job["reason"], job
    assert bad[0] >= 8
    assert job["active_version"] == 1
    device.assert_intact()


def test_duplicated_shuffled_and_out_of_range_chunks_are_harmless(
    install: Callable[..., Device],
) -> None:
    device = install()
    data = scorer(2.0, WIDE)
    v2 = device.fleet.release(data, 2)
    chunks = chunks_of(data)
    count = len(chunks)
    other = chunks_of(scorer(3.0, WIDE))
    rng = random.Random(7)
    sent = {"junk": 0, "tampered": 0}

    def answer(indexes: list[int]) -> list[tuple[int, bytes]]:
        groups: list[list[tuple[int, bytes]]] = []
        for index in indexes:
            # A tampered copy just before two good ones: with QoS 0 bursts they tend to reach
            # the device in one batch, where the good copy must settle the chunk.
            groups.append(
                [
                    (2, encode_chunk(index, tamper("flipped", chunks, index))),
                    (2, encode_chunk(index, chunks[index])),
                    (2, encode_chunk(index, chunks[index])),
                ]
            )
            # the same index on other versions' topics, with another release's bytes
            groups.append([(3, encode_chunk(index, other[index]))])
            groups.append([(1, encode_chunk(index, bytes(len(chunks[index]))))])
            sent["tampered"] += 1
        for index in (count, count + 7, 2**32 - 1):  # out of range
            groups.append([(2, encode_chunk(index, chunks[0]))])
        for junk in (b"", b"EDG", b"XXXX\x01" + bytes(8), b"EDGB\x02" + bytes(8)):  # not chunks
            groups.append([(2, junk)])
        sent["junk"] += 7
        rng.shuffle(groups)
        return [reply for group in groups for reply in group]

    with BlockForger(device.fleet, 2, answer, qos=0):
        device.op.publish_release(v2.path)
        job = device.job(device.desire(2, v2.manifest.sha256))
    assert job["state"] == "succeeded", job
    assert sent["junk"] > 0 and sent["tampered"] >= count
    active = device.store.active(NAME)
    assert active.version == 2 and Path(active.path).read_bytes() == data
    assert device.store.verify_active()[0].ok
    _ota.wait_for(lambda: output(device.serving) == 2.0, 10, "the served model to follow v2")


def test_a_tampered_and_a_good_copy_read_in_one_batch_complete_the_download(
    install: Callable[..., Device],
) -> None:
    # Regression: the tampered copy queued its chunk to be asked for again, the good copy right
    # behind it in the same batch was written, and the transfer then waited for nothing, never
    # "done". The agent reads whatever its inbox holds in one batch: holding the download's
    # lock while the chunks arrive (white-box) makes that batch happen every time.
    device = install()
    data = scorer(2.0, WIDE)
    v2 = device.fleet.release(data, 2)
    chunks = chunks_of(data)
    asked = threading.Event()

    def answer(indexes: list[int]) -> list[tuple[int, bytes]]:
        asked.set()
        return []  # the test sends the chunks itself

    with BlockForger(device.fleet, 2, answer) as forger:
        device.op.publish_release(v2.path)
        sequence = device.desire(2, v2.manifest.sha256)
        assert asked.wait(10)
        agent = device.agent.agent
        transfer = agent.core._updates[NAME].transfer
        assert transfer is not None
        topic = f"{device.root}releases/{NAME}/2/blocks/{DEVICE}"
        rest = [encode_chunk(1, tamper("flipped", chunks, 1))]
        rest += [encode_chunk(i, chunks[i]) for i in range(1, len(chunks))]
        with transfer.download._lock:
            forger.peer.publish(topic, encode_chunk(0, chunks[0]))
            _ota.wait_for(lambda: transfer.stats.received >= 1, 10, "chunk 0 to be taken")
            for payload in rest:
                forger.peer.publish(topic, payload)
            _ota.wait_for(lambda: agent.connection.inbox.qsize() >= len(rest), 10, "the burst")
        job = device.job(sequence)
    assert job["state"] == "succeeded", job
    assert transfer.stats.rejected == 1
    assert Path(device.store.active(NAME).path).read_bytes() == data


# --------------------------------------------------------------------------- refused manifests


def _flipped_signature(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    document = json.loads(genuine.text)
    signature = bytearray(base64.b64decode(document["signature"]["value"]))
    signature[5] ^= 0x80
    document["signature"] = signature_block(bytes(signature))
    return rel.canonical_json(document).decode()


def _another_key_under_the_trusted_id(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    other, _ = rel.generate_keypair()
    body = json.loads(genuine.text)  # key_id: the fleet key's
    signature = other.sign(rel.SIGNING_CONTEXT + rel.canonical_json(_unsigned(body)))
    return rel.canonical_json({**_unsigned(body), "signature": signature_block(signature)}).decode()


def _changed_after_signing(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    document = json.loads(genuine.text)
    document["expires_at"] = "9999-12-31T23:59:59Z"
    return rel.canonical_json(document).decode()


def _unknown_key(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    other, _ = rel.generate_keypair()
    return forge_release(fleet, genuine.model.read_bytes(), 2, key=other)[0]


def _unsigned_manifest(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    return rel.canonical_json(_unsigned(json.loads(genuine.text))).decode()


def _expired(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    created = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=100)
    text = forge_release(
        fleet, genuine.model.read_bytes(), 2, created_at=created, valid_for=timedelta(days=1)
    )[0]
    # The signature holds: only the expiry can refuse it.
    trust = rel.TrustStore([rel.TrustedKey(fleet.public_key)])
    rel.verify(text, trust, device_id=DEVICE, now=created + timedelta(hours=1))
    return text


def _not_yet_valid(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    created = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2)
    return forge_release(fleet, genuine.model.read_bytes(), 2, created_at=created)[0]


def _for_another_device(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    targets = rel.Targets(devices=("device-2",))
    return forge_release(fleet, genuine.model.read_bytes(), 2, targets=targets)[0]


def _newer_sdk(fleet: _ota.OtaFleet, genuine: _ota.ReleaseFiles) -> str:
    return forge_release(fleet, genuine.model.read_bytes(), 2, min_sdk_version="999.0.0")[0]


def _unsigned(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "signature"}


@pytest.mark.parametrize(
    ("forge", "phrase"),
    [
        (_flipped_signature, "does not match the release manifest"),
        (_another_key_under_the_trusted_id, "does not match the release manifest"),
        (_changed_after_signing, "does not match the release manifest"),
        (_unknown_key, "which this device does not trust"),
        (_unsigned_manifest, "is not signed"),
        (_expired, "the release manifest expired at"),
        (_not_yet_valid, "check the device clock"),
        (_for_another_device, "the release is not for device 'device-1'"),
        (_newer_sdk, "the release needs edge-sdk >= 999.0.0"),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_") or None,
)
def test_a_refused_manifest_leaves_v1_active_and_serving(
    install: Callable[..., Device], forge: Callable[..., str], phrase: str
) -> None:
    device = install()
    # The release server serves the genuine v2: a device that accepted the forged manifest
    # would download and activate it.
    genuine = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, genuine)
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    device.publish(f"releases/{NAME}/2/manifest", forge(device.fleet, genuine))
    job = device.job(device.desire(2, genuine.manifest.sha256), {"failed"})
    assert job["reason"].startswith("release refused: "), job
    assert phrase in job["reason"], job
    assert job["active_version"] == 1
    assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
    device.assert_intact()


# --------------------------------------------------------------------------- downgrades


@pytest.mark.parametrize("case", ["older_version", "same_version_other_bytes", "old_manifest"])
def test_a_downgrade_is_refused(install: Callable[..., Device], case: str) -> None:
    device = install()
    v2 = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, v2)
    assert device.op.deploy(v2.path, device.fleet.key, devices=[DEVICE], wave_timeout=20).ok
    _ota.wait_for(lambda: _active_in_status(device) == 2, 10, "the status to show v2")
    _ota.wait_for(lambda: output(device.serving) == 2.0, 10, "the served model to follow v2")
    if case == "older_version":
        # desired state naming v1 again, without the signed downgrade a rollback carries
        job = device.job(device.desire(1, device.v1.manifest.sha256), {"failed"})
        assert "older than the active 2" in job["reason"], job
    elif case == "same_version_other_bytes":
        # other bytes signed under the active version number
        text, manifest = forge_release(device.fleet, scorer(3.0), 2)
        device.publish(f"releases/{NAME}/2/manifest", text)
        job = device.job(device.desire(2, manifest.sha256), {"failed"})
        assert "is not newer than the active version 2" in job["reason"], job
    else:
        # v1's genuine signed manifest replayed where the device looks for v3
        device.publish(f"releases/{NAME}/3/manifest", device.v1.text)
        job = device.job(device.desire(3, device.v1.manifest.sha256), {"failed"})
        assert "is not newer than the active version 2" in job["reason"], job
    assert job["active_version"] == 2
    device.assert_intact(2, 2.0)


# --------------------------------------------------------------------------- oversize


def test_a_release_over_the_storage_budget_is_refused(
    install: Callable[..., Device], tmp_path: Path
) -> None:
    # A device profile (docs/profiles.md) whose storage budget is 1 MiB; family and arch are
    # required but not checked when a profile is named by its file.
    profile = tmp_path / "tiny-storage.toml"
    profile.write_text(
        'schema = 1\nname = "tiny-storage"\ntitle = "1 MiB for models"\n'
        'family = "arm"\narch = "aarch64"\n'
        '[[providers]]\nname = "CPUExecutionProvider"\n[budgets]\nstorage_mb = 1\n'
    )
    device = install(profile=str(profile))
    assert device.store.storage_budget == 1024 * 1024
    big = _models.tiny_mlp(width=600)
    assert len(big) > 1024 * 1024
    v2 = device.fleet.release(big, 2)
    serve(device.fleet, v2)
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    job = device.job(device.desire(2, v2.manifest.sha256), {"failed"})
    assert f"{len(big)} bytes, over this device's storage budget of 1048576" in job["reason"]
    assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
    device.assert_intact()


# --------------------------------------------------------------------------- disk full


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    # As root this must work: a failure here is a failure of the test, not a skip.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # lazy: a failed test may still hold files open in it
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write until the file system says ENOSPC (page-sized blocks, then single bytes)."""
    with path.open("ab", buffering=0) as handle:
        for block in (bytes(4096), b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(block)


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("bigger_than_the_free_space", "bytes needed"),
        ("full_before_the_update", "bytes needed, 0 available"),
        ("full_during_the_download", "the file system ran out of space"),
    ],
)
def test_a_full_disk_fails_the_update_and_keeps_v1(
    install: Callable[..., Device], tmp_path: Path, case: str, phrase: str
) -> None:
    # The store keeps 32 MiB free by default (ModelStore.reserve_bytes): 33 MiB leave about
    # 1 MiB for models, 40 MiB leave 8.
    size = "33m" if case == "bigger_than_the_free_space" else "40m"
    with tmpfs(tmp_path / "fs", size) as fs:
        device = install(store=str(fs / "store"))
        try:
            if case == "bigger_than_the_free_space":
                data = _models.tiny_mlp(width=600)
                assert len(data) > device.store.available_bytes()
            else:
                data = scorer(2.0, WIDE)
            v2 = device.fleet.release(data, 2)
            filler = fs / "filler"
            if case == "full_before_the_update":
                fill(filler)

            def answer(indexes: list[int]) -> list[tuple[int, bytes]]:
                # The download is preallocated by now: the disk fills under it.
                if case == "full_during_the_download":
                    fill(filler)
                return [(2, encode_chunk(i, chunks_of(data)[i])) for i in indexes]

            with BlockForger(device.fleet, 2, answer):
                device.op.publish_release(v2.path)
                job = device.job(device.desire(2, v2.manifest.sha256))
                assert job["state"] == "failed", job
                assert "not enough storage for the model store" in job["reason"], job
                assert phrase in job["reason"], job
                assert job["active_version"] == 1
                device.assert_intact()
                # With room again, the same version installs when the operator asks again.
                filler.unlink(missing_ok=True)
                if case == "bigger_than_the_free_space":
                    return
                job = device.job(device.desire(2, v2.manifest.sha256))
                assert job["state"] == "succeeded", job
                assert Path(device.store.active(NAME).path).read_bytes() == data
        finally:
            device.agent.stop()
            device.serving.close()


# --------------------------------------------------------------------------- fuzzed documents

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def json_kind(value: object) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


def mutations(base: dict[str, Any], text: str) -> st.SearchStrategy[tuple[str, Any, Any]]:
    """Ways to spoil a signed document: a field of another JSON type, a field dropped, an
    unknown field, another JSON value altogether, raw bytes, a cut-off text."""
    fields = sorted(base)
    retyped = st.sampled_from(fields).flatmap(
        lambda f: json_values.filter(lambda v: json_kind(v) != json_kind(base[f])).map(
            lambda v: ("retype", f, v)
        )
    )
    return st.one_of(
        retyped,
        st.sampled_from(fields).map(lambda f: ("drop", f, None)),
        st.tuples(st.just("extra"), st.text(min_size=1, max_size=8), json_values).filter(
            lambda m: m[1] not in base
        ),
        st.tuples(st.just("whole"), st.none(), json_values),
        st.tuples(st.just("bytes"), st.none(), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("cut"), st.integers(1, len(text) - 1), st.none()),
    )


def spoil(
    mutation: tuple[str, Any, Any],
    base: dict[str, Any],
    text: str,
    resign: Callable[[dict[str, Any]], str],
) -> bytes:
    kind, where, value = mutation
    if kind == "whole":
        return rel.canonical_json(value)
    if kind == "bytes":
        return bytes(value)
    if kind == "cut":
        return text[:where].encode()
    document = dict(base)
    if kind == "drop":
        del document[where]
    else:
        document[where] = value
    if where == "signature":
        return rel.canonical_json(document)
    return resign(document).encode()


class Watcher:
    """A raw subscriber to one of device-1's retained topics: the next document it says."""

    def __init__(self, fleet: _ota.OtaFleet, suffix: str) -> None:
        self.peer = _broker.PahoPeer(fleet.broker, "operator")
        self.peer.connect()
        topic = fleet.broker.topic_root + suffix
        self.peer.subscribe(topic)
        self.peer.sync(topic)  # past the retained copy

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.peer.expect(timeout).payload)
        return document

    def close(self) -> None:
        self.peer.close()


def test_fuzzed_manifests_are_refused_and_the_agent_lives_on(
    install: Callable[..., Device],
) -> None:
    device = install()
    genuine = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, genuine)
    topic = f"releases/{NAME}/2/manifest"
    device.publish(topic, b"")  # clear the genuine manifest the server published
    base = json.loads(genuine.text)
    watcher = Watcher(device.fleet, f"devices/{DEVICE}/jobs/{NAME}")
    try:
        sequence = device.desire(2, genuine.manifest.sha256)
        assert watcher.next()["state"] == "queued"
        last = [b""]
        reasons: list[str] = []

        @FUZZ
        @given(mutations(base, genuine.text))
        def refused(mutation: tuple[str, Any, Any]) -> None:
            payload = spoil(
                mutation,
                base,
                genuine.text,
                lambda doc: sign_manifest_dict(doc, device.fleet.private_key),
            )
            if payload == last[0]:
                return  # the same document twice: the device answers only the first
            last[0] = payload
            device.publish(topic, payload)
            job = watcher.next()
            assert job["version"] == 2 and job["state"] == "failed", job
            assert job["reason"] and job["active_version"] == 1, job
            assert device.agent.thread.is_alive()
            reasons.append(job["reason"])

        refused()
        assert len(reasons) >= 10, reasons
        device.assert_intact()
        # Still listening: the genuine manifest is accepted and installed.
        device.publish(topic, genuine.text)
        job = device.job(sequence, {"succeeded"})
        assert (job["state"], job["active_version"]) == ("succeeded", 2), job
    finally:
        watcher.close()


def test_fuzzed_desired_state_is_refused_and_the_agent_lives_on(
    install: Callable[..., Device],
) -> None:
    device = install()
    v2 = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, v2)
    state = DesiredState(
        fleet=device.fleet.fleet,
        target_kind="device",
        target=DEVICE,
        models={NAME: DesiredModel(2, v2.manifest.sha256)},
        sequence=int(time.time() * 1000) + 60_000,
    )
    text = sign_desired(state, device.fleet.private_key)
    base = json.loads(text)
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    watcher = Watcher(device.fleet, f"devices/{DEVICE}/status")
    last = [b""]
    reasons: list[str] = []
    try:

        @FUZZ
        @given(mutations(base, text))
        def refused(mutation: tuple[str, Any, Any]) -> None:
            payload = spoil(
                mutation, base, text, lambda doc: sign_desired_dict(doc, device.fleet.private_key)
            )
            if payload == last[0]:
                return
            last[0] = payload
            device.publish(f"desired/devices/{DEVICE}", payload)
            status = watcher.next()
            refusal = status["last_refusal"]
            assert refusal and refusal["topic"] == f"desired/devices/{DEVICE}", status
            assert refusal["reason"], status
            assert status["models"][NAME]["active"] == 1
            assert device.agent.thread.is_alive()
            reasons.append(refusal["reason"])

        refused()
        assert len(reasons) >= 10, reasons
        assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
        device.assert_intact()
        # Nothing was taken for desired state: the genuine document still moves it to v2.
        device.publish(f"desired/devices/{DEVICE}", text)
        job = device.job(state.sequence, {"succeeded"})
        assert (job["state"], job["active_version"]) == ("succeeded", 2), job
    finally:
        watcher.close()


# --------------------------------------------------------------------------- desired state


def _desired_body(device: Device, sha256: str, **changes: Any) -> dict[str, Any]:
    sequence = int(time.time() * 1000) + 60_000
    body: dict[str, Any] = {
        "schema": 1,
        "fleet": device.fleet.fleet,
        "target": {"device": DEVICE},
        "models": {NAME: {"version": 2, "sha256": sha256, "downgrade": False, "sequence": 1}},
        "sequence": sequence,
        "issued_at": rel.format_timestamp(datetime.now(timezone.utc)),
        "key_id": rel.key_id(device.fleet.public_key),
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("unknown_key", "does not trust"),
        ("bad_signature", "does not match"),
        ("another_devices_document", "a document for desired/devices/device-2 published on"),
        ("another_fleet", "for fleet 'fleet-2'"),
        ("replayed_older_sequence", "is older than"),
    ],
)
def test_refused_desired_state_is_reported_in_the_status(
    install: Callable[..., Device], case: str, phrase: str
) -> None:
    device = install()
    v2 = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, v2)
    sha = v2.manifest.sha256
    key = device.fleet.private_key
    if case == "unknown_key":
        other, public = rel.generate_keypair()
        body = _desired_body(device, sha, key_id=rel.key_id(public))
        payload = sign_desired_dict(body, other)
    elif case == "bad_signature":
        document = json.loads(sign_desired_dict(_desired_body(device, sha), key))
        document["models"][NAME]["version"] = 3  # changed after signing
        payload = rel.canonical_json(document).decode()
    elif case == "another_devices_document":
        payload = sign_desired_dict(_desired_body(device, sha, target={"device": "device-2"}), key)
    elif case == "another_fleet":
        payload = sign_desired_dict(_desired_body(device, sha, fleet="fleet-2"), key)
    else:
        # a genuine document for v2, signed before the one the device applied last (v1's):
        # what replaying a recorded document looks like
        installed = json.loads(device.op.desired_docs[f"desired/devices/{DEVICE}"])
        body = _desired_body(device, sha, sequence=installed["sequence"] - 1)
        payload = sign_desired_dict(body, key)
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    device.publish(f"desired/devices/{DEVICE}", payload)
    refusal = device.refusal(phrase)
    assert refusal["topic"] == f"desired/devices/{DEVICE}"
    assert device.fleet.job(device.op, DEVICE)["version"] == 1
    assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
    device.assert_intact()


# --------------------------------------------------------------------------- path traversal


@contextlib.contextmanager
def nothing_named_evil(root: Path) -> Iterator[None]:
    """Nothing named *evil* appears under ``root`` (every file of the test, the store's
    included), nor at /tmp/evil."""
    absolute = Path("/tmp/evil")
    existed = absolute.exists()
    yield
    found = [path for path in root.rglob("*") if "evil" in path.name]
    assert not found, found
    assert absolute.exists() == existed


@pytest.mark.parametrize("name", ["../evil", "..", "scorer/../../evil", "/tmp/evil"])
def test_a_path_traversal_model_name_in_desired_state_is_refused(
    install: Callable[..., Device], tmp_path: Path, name: str
) -> None:
    device = install()
    v2 = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, v2)
    models = {name: {"version": 2, "sha256": v2.manifest.sha256, "downgrade": False, "sequence": 1}}
    body = _desired_body(device, v2.manifest.sha256, models=models)
    with nothing_named_evil(tmp_path):
        payload = sign_desired_dict(body, device.fleet.private_key)
        device.publish(f"desired/devices/{DEVICE}", payload)
        refusal = device.refusal("unsafe models")
        assert repr(name) in refusal["reason"]
        device.assert_intact()


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a..b"])
def test_a_path_traversal_name_in_a_manifest_is_refused(
    install: Callable[..., Device], tmp_path: Path, name: str
) -> None:
    device = install()
    genuine = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, genuine)
    body = json.loads(genuine.text)
    body["name"] = name  # signed as it is: only the name check can refuse it
    with nothing_named_evil(tmp_path):
        payload = sign_manifest_dict(body, device.fleet.private_key)
        device.publish(f"releases/{NAME}/2/manifest", payload)
        job = device.job(device.desire(2, genuine.manifest.sha256), {"failed"})
        assert f"unsafe name {name!r}" in job["reason"], job
        device.assert_intact()


# --------------------------------------------------------------------------- health checks


def test_a_model_failing_its_smoke_test_is_rolled_back_and_marked_bad(
    install: Callable[..., Device],
) -> None:
    device = install()
    wrong = {"out": np.full((1, 2), 3.0, np.float32)}  # the model answers 2.0
    v2 = device.fleet.release(scorer(2.0), 2, smoke=(IMAGE, wrong))
    serve(device.fleet, v2)
    result = device.op.deploy(v2.path, device.fleet.key, devices=[DEVICE], wave_timeout=20)
    row = result.rows[DEVICE]
    assert row.state == "rolled_back", result.to_dict()
    assert row.reason is not None and row.reason.startswith("smoke test failed"), row
    assert device.store.is_bad(NAME, 2)
    assert device.store.journal(NAME).state is UpdateState.ROLLED_BACK  # type: ignore[union-attr]
    device.assert_intact()

    # Asked again, the device refuses at once: nothing is downloaded or loaded a second time.
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    started = time.monotonic()
    again = device.op.deploy(v2.path, device.fleet.key, devices=[DEVICE], wave_timeout=20)
    assert time.monotonic() - started < 5
    row = again.rows[DEVICE]
    assert row.state == "failed" and "marked bad on this device" in str(row.reason), row
    assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
    device.assert_intact()

    # The smoke test compares outputs rather than always failing: a right one passes.
    right = {"out": np.full((1, 2), 3.0, np.float32)}
    v3 = device.fleet.release(scorer(3.0), 3, smoke=(IMAGE, right))
    serve(device.fleet, v3)
    assert device.op.deploy(v3.path, device.fleet.key, devices=[DEVICE], wave_timeout=20).ok
    _ota.wait_for(lambda: output(device.serving) == 3.0, 10, "the served model to follow v3")


@pytest.mark.parametrize(
    "data",
    [b"not an onnx model" * 100, _models.unsupported_op()],
    ids=["not_onnx", "unsupported_operator"],
)
def test_a_model_that_does_not_load_is_rolled_back(
    install: Callable[..., Device], data: bytes
) -> None:
    device = install()
    v2 = device.fleet.release(data, 2, metadata={})
    serve(device.fleet, v2)
    result = device.op.deploy(v2.path, device.fleet.key, devices=[DEVICE], wave_timeout=20)
    row = result.rows[DEVICE]
    assert row.state == "rolled_back", result.to_dict()
    assert "the model does not load" in str(row.reason), row
    assert device.store.is_bad(NAME, 2)
    device.assert_intact()


# --------------------------------------------------------------------------- repetition


def test_repeated_desired_state_and_a_restart_never_install_twice(
    install: Callable[..., Device],
) -> None:
    device = install()
    v2 = device.fleet.release(scorer(2.0), 2)
    serve(device.fleet, v2)
    assert device.op.deploy(v2.path, device.fleet.key, devices=[DEVICE], wave_timeout=20).ok
    store = device.store
    model_file = Path(store.active(NAME).path)
    before = (model_file.stat(), model_file.parent.stat(), store.journal(NAME))
    sent = device.fleet.server.chunks_sent  # type: ignore[union-attr]
    suffix = f"desired/devices/{DEVICE}"
    payload = device.op.desired_docs[suffix]

    watcher = _broker.PahoPeer(device.fleet.broker, "operator")
    watcher.connect()
    try:
        for topic in (f"jobs/{NAME}", "status", "blocks/get"):
            watcher.subscribe(f"{device.root}devices/{DEVICE}/{topic}")
        watcher.sync(f"{device.root}devices/{DEVICE}/status")  # past the retained documents
        # The same signed document again, twice; then a refusal as a marker that the agent
        # has read them (one subscriber, in order).
        device.publish(suffix, payload)
        device.publish(suffix, payload)
        marker = f"marker-{secrets.token_hex(4)}"
        device.publish(
            suffix,
            json.dumps({"signature": {"algorithm": "ed25519", "value": ""}, marker: 1}),
            retain=False,
        )
        device.refusal(marker)
        seen = [m for m in watcher.received() if not m.topic.endswith("/status")]
        assert seen == [], [(m.topic, m.payload) for m in seen]

        # A restart reads the retained desired state again: it reports success, nothing more.
        device.agent.stop()
        restarted = _ota.AgentThread(device.agent.config)
        device.fleet.agents.append(restarted)
        message = watcher.expect(10)
        while not message.topic.endswith(f"/jobs/{NAME}"):
            assert not message.topic.endswith("/blocks/get"), "the restarted agent downloaded"
            message = watcher.expect(10)
        job = json.loads(message.payload)
        assert (job["state"], job["version"]) == ("succeeded", 2), job
        later = [
            m
            for m in watcher.sync(f"{device.root}devices/{DEVICE}/status")
            if not m.topic.endswith("/status")
        ]
        assert later == [], [(m.topic, m.payload) for m in later]
    finally:
        watcher.close()
    after = (model_file.stat(), model_file.parent.stat(), restarted.store.journal(NAME))
    assert (after[0].st_ino, after[0].st_mtime_ns) == (before[0].st_ino, before[0].st_mtime_ns)
    assert after[1].st_mtime_ns == before[1].st_mtime_ns
    assert after[2] == before[2]
    journal = after[2]
    assert journal is not None
    assert [event.state for event in journal.history].count(UpdateState.SUCCEEDED) == 1
    assert device.fleet.server.chunks_sent == sent  # type: ignore[union-attr]
    assert restarted.store.active(NAME).version == 2
