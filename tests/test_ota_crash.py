"""Over-the-air updates under faults, against a real Mosquitto with persistence and real
``edge-sdk agent`` processes: the broker SIGKILLed and restarted mid-transfer, the agent
SIGKILLed at the store's crash points and at random moments, SIGTERM, the Will, the persistent
session and client ids.

What every case must show (the OTA issue): the active model stays complete and verified, the
device keeps serving, the operator sees what happened, a restart resumes (the chunk bitmap
survives, so chunks are not fetched wholesale again) and nothing is installed twice.

References: MQTT 5.0 section 3.1.2.4 (Clean Start) and 3.1.2.11.2 (Session Expiry Interval),
section 3.1.2.5 (Will: published when the network connection closes without DISCONNECT);
mosquitto.conf(5) "persistence" and "autosave_interval"; docs/fleet-protocol.md.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _broker
import _models
import _ota
import numpy as np
import pytest

from edge_sdk import release as rel
from edge_sdk.desired import DesiredModel, DesiredState, sign_desired
from edge_sdk.fleet import FleetClient
from edge_sdk.runtime import EdgeModel
from edge_sdk.store import ModelStore, UpdateState

pytestmark = pytest.mark.slow

NAME = "scorer"
DEVICE = "device-1"
WINDOW = 2
# The child agent's settings: small windows and short timeouts keep a transfer in flight for a
# few seconds (every chunk batch is two fdatasyncs) and reconnects quick.
AGENT = {"window": WINDOW, "request_timeout": 1, "reconnect_max": 1}
# A few hundred KB of constant output: about 100 chunks of 4096 bytes.
BIG_OUTPUTS = 100_000
# About 10 chunks: enough for a crash between chunks, quick to finish.
MEDIUM_OUTPUTS = 10_000
TERMINAL = {"succeeded", "failed", "rolled_back", "timed_out"}


def _model(value: float, outputs: int = 2) -> bytes:
    return _models.constant_head(np.full((1, outputs), value, np.float32), size=8)


@pytest.fixture
def fleet(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> Iterator[_ota.OtaFleet]:
    broker = mosquitto_factory(persistence=True)
    with _ota.OtaFleet(broker, tmp_path / "fleet") as made:
        yield made


# --------------------------------------------------------------------------- helpers


def preinstall(fleet: _ota.OtaFleet, device: str, release: _ota.ReleaseFiles) -> None:
    """Put ``release`` in the device's store and activate it, as a factory image would: every
    update below starts from an intact active version 1."""
    store = fleet.store_of(device)
    manifest = release.manifest
    data = release.model.read_bytes()
    with store.begin_download(
        manifest.name,
        manifest.version,
        size=manifest.size,
        sha256=manifest.sha256,
        chunk_size=manifest.chunk_size,
        chunk_hashes=manifest.chunks,
        manifest_bytes=release.text.encode(),
    ) as download:
        download.write_chunks(
            (i, data[slice(*_span(manifest.chunk_span(i)))]) for i in range(manifest.chunk_count)
        )
        download.complete()
    store.activate(manifest.name, manifest.version)


def _span(span: tuple[int, int]) -> tuple[int, int]:
    offset, length = span
    return offset, offset + length


def desire(op: FleetClient, fleet: _ota.OtaFleet, release: _ota.ReleaseFiles) -> int:
    """Publish the signed desired state (retained) moving DEVICE to ``release``."""
    manifest = release.manifest
    model = DesiredModel(manifest.version, manifest.sha256)
    return op.set_desired("device", DEVICE, manifest.name, model, fleet.key).sequence


def check_store(fleet: _ota.OtaFleet, values: dict[int, float], device: str = DEVICE) -> ModelStore:
    """Open the device's store (only while no agent runs: opening it recovers) and check that
    the active model is one of ``values`` (version -> its constant output), hashes intact, and
    serves that output."""
    store = fleet.store_of(device)
    checks = store.verify_active()
    assert [c.ok for c in checks] == [True], checks
    active = store.active(NAME)
    assert active.version in values, active
    incoming = store.root / "incoming" / NAME / str(active.version)
    assert not incoming.exists(), "an active version still has a download in incoming/"
    with EdgeModel.from_store(store, NAME, profile=None) as model:
        out = model.run({"image": np.zeros((1, 3, 8, 8), np.float32)})["out"]
    assert np.all(out == values[active.version]), (active.version, out[0, :4])
    return store


def job(fleet: _ota.OtaFleet, op: FleetClient) -> dict[str, Any]:
    return fleet.job(op, DEVICE, NAME)


def status(op: FleetClient, device: str = DEVICE) -> dict[str, Any]:
    with op._cond:
        return dict(op.statuses.get(device) or {})


def until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    agent: _ota.AgentProcess | None = None,
) -> Any:
    """``_ota.wait_for``, failing at once (with the agent's log) if ``agent`` has exited."""

    def check() -> Any:
        if agent is not None and not agent.alive():
            raise AssertionError(
                f"the agent exited ({agent.process.returncode}) while waiting for {what}:\n"
                + agent.output()[-3000:]
            )
        return condition()

    return _ota.wait_for(check, timeout, what)


def wait_progress(
    fleet: _ota.OtaFleet,
    op: FleetClient,
    agent: _ota.AgentProcess,
    above: float,
    timeout: float = 30.0,
) -> float:
    """Wait for a job document of version 2 downloading at more than ``above`` percent."""

    def moved() -> float | None:
        doc = job(fleet, op)
        percent = doc.get("percent")
        if doc.get("version") != 2 or doc.get("state") != "downloading":
            return None
        return percent if percent is not None and percent > above else None

    return float(until(moved, timeout, f"v2 downloading past {above}%", agent))


def wait_done(
    fleet: _ota.OtaFleet, op: FleetClient, agent: _ota.AgentProcess, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait for the update to version 2 to end; its job document."""

    def ended() -> dict[str, Any] | None:
        doc = job(fleet, op)
        return doc if doc.get("version") == 2 and doc.get("state") in TERMINAL else None

    return dict(until(ended, timeout, "the end of the update to v2", agent))


def wait_online(
    op: FleetClient,
    agent: _ota.AgentProcess | None = None,
    *,
    timeout: float = 30.0,
    device: str = DEVICE,
) -> dict[str, Any]:
    return dict(
        until(
            lambda: status(op, device) if status(op, device).get("state") == "online" else None,
            timeout,
            f"{device} online",
            agent,
        )
    )


def wait_offline(op: FleetClient, timeout: float = 5.0, device: str = DEVICE) -> dict[str, Any]:
    return _ota.wait_for(
        lambda: status(op, device) if status(op, device).get("state") == "offline" else None,
        timeout,
        f"{device} offline",
    )


def log_since(process: _ota.AgentProcess, offset: int) -> str:
    return process.log_path.read_bytes()[offset:].decode(errors="replace")


def log_size(fleet: _ota.OtaFleet, device: str = DEVICE) -> int:
    path = fleet.workdir / f"{device}.log"
    return path.stat().st_size if path.exists() else 0


def succeeded_once(store: ModelStore, version: int) -> None:
    """The journal shows one update to ``version`` that activated and succeeded once."""
    journal = store.journal(NAME)
    assert journal is not None
    assert (journal.version, journal.state) == (version, UpdateState.SUCCEEDED), journal
    # One update from download to success; a second install would start a new entry (its
    # previous version 2, no download in its history).
    states = [event.state for event in journal.history]
    assert UpdateState.DOWNLOADING in states, states
    assert states[-2:] == [UpdateState.ACTIVATING, UpdateState.SUCCEEDED], states
    assert states.count(UpdateState.ACTIVATING) == 1, states
    assert journal.previous_version == 1, journal


# --------------------------------------------------------------------------- the broker


def test_broker_sigkill_mid_transfer_resumes(fleet: _ota.OtaFleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0, BIG_OUTPUTS), 2)
    chunks = v2.manifest.chunk_count
    assert chunks >= 80
    preinstall(fleet, DEVICE, v1)
    server = fleet.start_server()
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    op = fleet.operator()
    wait_online(op, agent)
    # The agent's session (its subscriptions) is on disk, as it would be after a while.
    fleet.broker.save()
    desire(op, fleet, v2)
    percent = wait_progress(fleet, op, agent, 30.0)
    offset = log_size(fleet)
    fleet.broker.kill()
    sent_at_kill = server.chunks_sent
    assert percent < 100.0 and sent_at_kill < chunks, "the transfer ended before the kill"
    time.sleep(1.0)  # the agent and the server see the broker gone and retry
    assert agent.alive()
    fleet.broker.restart()

    # The operator's client reconnects too and, its clean session lost, subscribes again: it
    # sees the job end.
    done = wait_done(fleet, op, agent, timeout=60)
    assert done["state"] == "succeeded", done
    assert done["active_version"] == 2
    log = log_since(agent, offset)
    assert "disconnected" in log
    # The broker kept the agent's session through its crash (persistence).
    assert "connected (session present: True)" in log, log
    # Re-fetched after the crash: what was in flight, repeated requests, not the file again.
    assert chunks <= server.chunks_sent <= chunks + 5 * WINDOW, (server.chunks_sent, chunks)
    assert agent.terminate() == 0
    check_store(fleet, {2: 2.0})
    succeeded_once(fleet.store_of(DEVICE), 2)


# --------------------------------------------------------------------------- the agent


def bitmap_count(fleet: _ota.OtaFleet, release: _ota.ReleaseFiles) -> int:
    """How many chunks of ``release`` the device's store holds (its persisted bitmap); only
    while no agent runs."""
    store = fleet.store_of(DEVICE)
    manifest = release.manifest
    with store.begin_download(
        manifest.name,
        manifest.version,
        size=manifest.size,
        sha256=manifest.sha256,
        chunk_size=manifest.chunk_size,
        chunk_hashes=manifest.chunks,
        manifest_bytes=release.text.encode(),
    ) as download:
        return download.received_count


# (crash point, which time it is reached, the version active right after the crash)
CRASHES = [
    ("chunk.after_data", 3, 1),  # the third chunk batch of v2: data written, bitmap not
    ("complete.after_move", 1, 1),
    ("complete.after_verified", 1, 1),
    ("activate.before_switch", 1, 1),
    ("pointer.before_replace", 1, 1),
    ("activate.after_switch", 1, 2),
]


@pytest.mark.parametrize(("point", "after", "active"), CRASHES, ids=[c[0] for c in CRASHES])
def test_agent_sigkill_at_crash_point_then_restart(
    fleet: _ota.OtaFleet, point: str, after: int, active: int
) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0, MEDIUM_OUTPUTS), 2)
    assert v2.manifest.chunk_count >= 8
    preinstall(fleet, DEVICE, v1)
    fleet.start_server()
    agent = fleet.start_agent_process(DEVICE, crash_at=point, crash_after=after, **AGENT)
    op = fleet.operator()
    wait_online(op, agent)
    desire(op, fleet, v2)
    # Dead at the crash point, or (a test that cannot fail otherwise) done without reaching it.
    until(lambda: not agent.alive() or job(fleet, op).get("state") in TERMINAL, 30, point)
    code = agent.wait(5)
    assert code == -9, f"the agent was not killed at {point} ({code}):\n{agent.output()[-3000:]}"

    # The operator sees the device gone (its Will) and the update not finished.
    wait_offline(op)
    stuck = job(fleet, op)
    assert stuck.get("version") == 2 and stuck.get("state") in {
        "queued",
        "downloading",
        "verifying",
        "activating",
    }, stuck
    # On disk: a complete, verified, serving model; the crash point decides which.
    store = check_store(fleet, {active: 1.0 if active == 1 else 2.0})
    if point == "complete.after_verified":
        assert 2 in store.versions(NAME)
    if point == "activate.after_switch":
        # Recovery on open finished the journal: the switch was the last step.
        journal = store.journal(NAME)
        assert journal is not None and journal.state is UpdateState.SUCCEEDED, journal

    offset = log_size(fleet)
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    done = wait_done(fleet, op, agent)
    assert done["state"] == "succeeded", done
    assert done["active_version"] == 2
    assert wait_online(op)["models"][NAME]["active"] == 2
    assert "connected (session present: True)" in log_since(agent, offset)
    assert agent.terminate() == 0
    store = check_store(fleet, {2: 2.0})
    succeeded_once(store, 2)
    # One switch from v1 (generation 1) to v2: a second install would move it again.
    assert store.active(NAME).generation == 2
    assert store.active(NAME).previous == 1


def test_agent_sigkill_at_random_moments_resumes(fleet: _ota.OtaFleet) -> None:
    rng = random.Random(20240607)
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0, BIG_OUTPUTS), 2)
    chunks = v2.manifest.chunk_count
    preinstall(fleet, DEVICE, v1)
    server = fleet.start_server()
    op = fleet.operator()
    desire(op, fleet, v2)
    seen = 0.0
    kills = 3
    for _ in range(kills):
        agent = fleet.start_agent_process(DEVICE, **AGENT)
        seen = wait_progress(fleet, op, agent, seen)
        time.sleep(rng.uniform(0.0, 0.5))
        agent.kill()
        assert agent.process.returncode == -9
        wait_offline(op)
        seen = max(seen, float(job(fleet, op).get("percent") or 0.0))
        check_store(fleet, {1: 1.0})
        # What the operator was told is on disk: progress is reported after the bitmap.
        held = bitmap_count(fleet, v2)
        assert held < chunks
        assert 100.0 * held / chunks >= seen - 0.1, (held, seen)

    offset = log_size(fleet)
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    done = wait_done(fleet, op, agent, timeout=60)
    assert done["state"] == "succeeded", done
    assert "connected (session present: True)" in log_since(agent, offset)
    # The bitmap resumed each time: only what was in flight at a kill was sent again.
    assert chunks <= server.chunks_sent <= chunks + (kills + 1) * 3 * WINDOW, (
        server.chunks_sent,
        chunks,
    )
    assert agent.terminate() == 0
    store = check_store(fleet, {2: 2.0})
    succeeded_once(store, 2)
    assert store.active(NAME).generation == 2


def test_sigterm_is_a_clean_shutdown_and_restart_resumes(fleet: _ota.OtaFleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0, BIG_OUTPUTS), 2)
    chunks = v2.manifest.chunk_count
    preinstall(fleet, DEVICE, v1)
    server = fleet.start_server()
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    op = fleet.operator()
    born = wait_online(op, agent)
    desire(op, fleet, v2)
    seen = wait_progress(fleet, op, agent, 30.0)

    started = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5.0
    offline = wait_offline(op)
    assert offline == {
        "device": DEVICE,
        "fleet": fleet.fleet,
        "groups": [],
        "state": "offline",
        "reason": "shutdown",
        "session": born["session"],
    }
    # A DISCONNECT, not a dropped socket: the broker did not need the Will.
    log = fleet.broker.log_text()
    assert "Client edge-sdk-agent-device-1 disconnected." in log
    assert "Client edge-sdk-agent-device-1 closed its connection." not in log
    check_store(fleet, {1: 1.0})
    held = bitmap_count(fleet, v2)
    assert 100.0 * held / chunks >= seen - 0.1 and held < chunks, (held, seen)

    offset = log_size(fleet)
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    done = wait_done(fleet, op, agent, timeout=60)
    assert done["state"] == "succeeded", done
    assert "connected (session present: True)" in log_since(agent, offset)
    assert chunks <= server.chunks_sent <= chunks + 2 * 3 * WINDOW, (server.chunks_sent, chunks)
    assert agent.terminate() == 0
    succeeded_once(check_store(fleet, {2: 2.0}), 2)


# --------------------------------------------------------------------------- the session


def test_sigkill_publishes_the_will_retained(fleet: _ota.OtaFleet) -> None:
    fleet.start_server()
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    op = fleet.operator()
    online = wait_online(op, agent)
    assert online["device"] == DEVICE
    agent.kill()
    # Well within the 30 s keep-alive: the broker publishes the Will when the socket closes.
    started = time.monotonic()
    assert wait_offline(op, timeout=5.0) == {
        "device": DEVICE,
        "fleet": fleet.fleet,
        "groups": [],
        "state": "offline",
        "reason": "connection lost",
        # The Will carries the session of the birth it ends.
        "session": online["session"],
    }
    assert time.monotonic() - started < 5.0
    assert "Client edge-sdk-agent-device-1 closed its connection." in fleet.broker.log_text()
    # Retained: an operator connecting now sees it too.
    late = fleet.operator()
    assert status(late)["state"] == "offline"


def test_commands_sent_while_offline_wait_in_the_session(fleet: _ota.OtaFleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0, MEDIUM_OUTPUTS), 2)
    preinstall(fleet, DEVICE, v1)
    fleet.start_server()
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    op = fleet.operator()
    wait_online(op, agent)
    assert agent.terminate() == 0
    wait_offline(op)

    # Not retained: only the device's persistent session can hand it over on its return.
    state = DesiredState(
        fleet=fleet.fleet,
        target_kind="device",
        target=DEVICE,
        models={NAME: DesiredModel(2, v2.manifest.sha256)},
    )
    payload = sign_desired(state, fleet.key)
    topic = f"{op.root}desired/devices/{DEVICE}"
    op.connection.publish_wait(topic, payload, retain=False)
    assert fleet.operator().desired_docs.get(f"desired/devices/{DEVICE}") is None

    offset = log_size(fleet)
    agent = fleet.start_agent_process(DEVICE, **AGENT)
    done = wait_done(fleet, op, agent)
    assert done["state"] == "succeeded", done
    assert done["sequence"] == state.sequence
    assert "connected (session present: True)" in log_since(agent, offset)

    # The same command delivered again installs nothing. A document signed with an unknown key
    # after it is refused, and the refusal in the status shows the repeat was handled first.
    op.connection.publish_wait(topic, payload, retain=False)
    stranger = sign_desired(
        dataclasses.replace(state, sequence=state.sequence + 1), rel.generate_keypair()[0]
    )
    op.connection.publish_wait(topic, stranger, retain=False)
    refused = _ota.wait_for(
        lambda: status(op).get("last_refusal"), 10.0, "the refusal in the status"
    )
    assert "desired/devices/device-1" in refused["topic"], refused
    assert agent.terminate() == 0
    store = check_store(fleet, {2: 2.0})
    succeeded_once(store, 2)
    assert store.active(NAME).generation == 2


def test_agents_have_unique_client_ids(fleet: _ota.OtaFleet) -> None:
    first = fleet.start_agent("device-1", reconnect_max=1)
    second = fleet.start_agent("device-2", reconnect_max=1)
    assert first.config.effective_client_id == "edge-sdk-agent-device-1"
    assert second.config.effective_client_id == "edge-sdk-agent-device-2"
    op = fleet.operator()
    wait_online(op, device="device-1")
    wait_online(op, device="device-2")
    # A client id taken twice makes the broker drop the older connection, and paho then
    # reconnects within reconnect_max (1 s): give that time to show.
    time.sleep(2.5)
    assert first.agent.connection.connected and second.agent.connection.connected
    log = fleet.broker.log_text()
    for device in ("device-1", "device-2"):
        assert log.count(f" as edge-sdk-agent-{device} ") == 1, log
        assert f"Client edge-sdk-agent-{device} already connected" not in log
        assert status(op, device)["state"] == "online"


def test_a_model_whose_health_check_kills_the_agent_is_given_up(fleet: _ota.OtaFleet) -> None:
    # A segfault in the runtime or the OOM killer during the health check must not crash-loop
    # the device: one death is retried (it may have been a power cut), the second gives up.
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    preinstall(fleet, DEVICE, v1)
    fleet.start_server()
    op = fleet.operator()
    sequence = desire(op, fleet, v2)
    for death in (1, 2):
        agent = fleet.start_agent_process(DEVICE, die_in_health_check=True, **AGENT)
        assert agent.wait(30) == -9, f"death {death}: the agent did not die in the health check"
        marker = fleet.workdir / "devices" / DEVICE / "store" / "agent-health-check.json"
        assert f'"attempts": {death}' in marker.read_text()
        check_store(fleet, {1: 1.0})
    agent = fleet.start_agent_process(DEVICE, **AGENT)  # an ordinary start now
    wait_online(op, agent)
    store_dir = fleet.workdir / "devices" / DEVICE / "store"
    assert not (store_dir / "agent-health-check.json").exists()
    doc = until(
        lambda: (
            (j := job(fleet, op)).get("sequence") == sequence and j.get("state") == "failed" and j
        ),
        20,
        "v2 reported failed",
        agent,
    )
    assert "marked bad" in doc["reason"] and "health check did not finish 2 times" in doc["reason"]
    assert agent.terminate() == 0
    store = check_store(fleet, {1: 1.0})
    assert store.is_bad(NAME, 2)
