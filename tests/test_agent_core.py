"""The agent's transport-agnostic core (edge_sdk/agent/core.py) driven step by step: a real
store on disk, real signed documents, and a channel that records what the core publishes (the
MQTT adapter's place; the end-to-end tests run the same core over a real broker). Each test pins
a state-machine edge found in review: offline, cancelled, re-asked, unrequested chunks, I/O
errors, refusals that time out."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from edge_sdk import release as rel
from edge_sdk.agent.config import AgentConfig
from edge_sdk.agent.core import UpdateAgent
from edge_sdk.desired import DesiredModel, DesiredState, sign_desired
from edge_sdk.store import Download, ModelStore
from edge_sdk.transfer import decode_request, encode_chunk

CHUNK = 1024


class RecordingChannel:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.subscribed: set[str] = set()

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((suffix, payload))

    def subscribe(self, suffix: str) -> None:
        self.subscribed.add(suffix)

    def unsubscribe(self, suffix: str) -> None:
        self.subscribed.discard(suffix)

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(p) for s, p in self.published if "/jobs/" in s]

    def requests(self) -> list[Any]:
        return [decode_request(p) for s, p in self.published if s.endswith("/blocks/get")]


class NoModel:
    """Stands in for EdgeModel in the health check: these releases are random bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def warmup(self) -> None:
        return None

    def run(self, feed: Any) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp: Path, **options: Any) -> None:
        self.tmp = tmp
        self.private, public = rel.generate_keypair()
        config = AgentConfig(
            device_id="cam-01",
            fleet="f",
            broker="mqtt://127.0.0.1:1",
            store=tmp / "store",
            trusted_keys=(),
            groups=("lab",),
            profile=None,
            window=4,
            request_timeout=2.0,
        )
        self.store = ModelStore(config.store)
        self.channel = RecordingChannel()
        self.clock = Clock()
        self.agent = UpdateAgent(
            config,
            self.store,
            rel.TrustStore([rel.TrustedKey(public)]),
            self.channel,
            model_loader=NoModel,
            clock=self.clock,
            **options,
        )
        self.agent.connected()

    def release(self, version: int, size: int = 10 * CHUNK) -> tuple[rel.ReleaseManifest, bytes]:
        data = bytes((version + i) % 251 for i in range(size))
        path = self.tmp / f"m-{version}.bin"
        path.write_bytes(data)
        manifest = rel.build_manifest(path, "m", version, chunk_size=CHUNK, metadata={})
        self.agent.handle([])
        self.manifests = getattr(self, "manifests", {})
        self.manifests[version] = rel.sign(manifest, self.private).to_json().encode()
        return manifest, data

    def desire(self, version: int, sha256: str, sequence: int, **flags: bool) -> None:
        state = DesiredState(
            fleet="f",
            target_kind="device",
            target="cam-01",
            models={"m": DesiredModel(version, sha256, **flags)},
            sequence=sequence,
        )
        self.agent.handle([(state.topic_suffix, sign_desired(state, self.private).encode())])

    def offer_manifest(self, version: int) -> None:
        self.agent.handle([(f"releases/m/{version}/manifest", self.manifests[version])])

    def chunks(
        self, manifest: rel.ReleaseManifest, data: bytes, indexes: list[int]
    ) -> list[tuple[str, bytes]]:
        messages = []
        for index in indexes:
            offset, length = manifest.chunk_span(index)
            payload = encode_chunk(index, data[offset : offset + length])
            messages.append((f"releases/m/{manifest.version}/blocks/cam-01", payload))
        return messages

    def serve(self, manifest: rel.ReleaseManifest, data: bytes, rounds: int = 50) -> None:
        answered = 0
        for _ in range(rounds):
            pending = self.channel.requests()[answered:]
            answered += len(pending)
            if not pending:
                return
            for request in pending:
                self.agent.handle(self.chunks(manifest, data, request.indexes()))

    def last_job(self) -> dict[str, Any]:
        return self.channel.jobs()[-1]


def test_no_block_requests_while_offline(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    manifest, data = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    rig.offer_manifest(1)
    asked = len(rig.channel.requests())
    assert asked >= 1
    rig.agent.disconnected()
    for _ in range(20):  # ten request timeouts offline
        rig.clock.now += 1.0
        rig.agent.tick()
    assert len(rig.channel.requests()) == asked  # nothing piled up in the offline queue
    rig.agent.connected()
    assert len(rig.channel.requests()) > asked
    rig.serve(manifest, data)
    assert rig.store.active("m").version == 1


def test_clearing_the_desired_state_cancels_the_update(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    manifest, data = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    rig.offer_manifest(1)
    rig.agent.handle([("desired/devices/cam-01", b"")])  # the retained document removed
    job = rig.last_job()
    assert job["state"] == "failed" and job["reason"].startswith("cancelled")
    rig.serve(manifest, data)  # chunks still in flight change nothing
    assert rig.store.names() == [] or not rig.store.versions("m")


def test_asking_again_for_the_running_version_answers_under_the_new_sequence(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    manifest, data = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    rig.offer_manifest(1)
    rig.desire(1, manifest.sha256, 200)  # a re-run deploy while the download runs
    assert rig.last_job()["sequence"] == 200
    rig.serve(manifest, data)
    job = rig.last_job()
    assert (job["state"], job["sequence"]) == ("succeeded", 200)


def test_chunks_that_came_unasked_complete_the_download(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    manifest, data = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    rig.offer_manifest(1)
    # Every chunk arrives at once, most never requested (a second server, duplicates).
    rig.agent.handle(rig.chunks(manifest, data, list(range(manifest.chunk_count))))
    rig.clock.now += 1.0
    rig.agent.tick()
    assert rig.store.active("m").version == 1
    assert rig.last_job()["state"] == "succeeded"


def test_an_io_error_fails_the_update_and_the_agent_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    manifest, data = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    rig.offer_manifest(1)

    def read_only_file_system(self: Download, chunks: Any) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:  # injected: an SD card remounted read-only
        patch.setattr(Download, "write_chunks", read_only_file_system)
        rig.serve(manifest, data)
    job = rig.last_job()
    assert job["state"] == "failed" and "Read-only file system" in job["reason"]
    # A newer desired state retries, and with the disk back it succeeds.
    rig.desire(1, manifest.sha256, 200)
    rig.offer_manifest(1)
    rig.serve(manifest, data)
    assert rig.store.active("m").version == 1


def test_a_refused_manifest_keeps_its_reason_through_the_time_out(tmp_path: Path) -> None:
    rig = Rig(tmp_path, update_timeout=60.0)
    manifest, _ = rig.release(1)
    rig.desire(1, manifest.sha256, 100)
    other, _ = rig.release(2)
    rig.agent.handle([("releases/m/1/manifest", rig.manifests[2])])  # the wrong document
    refused = rig.last_job()
    assert refused["state"] == "failed" and "is for m 2" in refused["reason"]
    assert rig.store.journal("m").state.value == "failed"
    rig.clock.now += 61.0
    rig.agent.tick()
    timed_out = rig.last_job()
    assert timed_out["state"] == "timed_out"
    assert "is for m 2" in timed_out["reason"] and "not finished within 60 s" in timed_out["reason"]
    del other
