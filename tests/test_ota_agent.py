"""Over-the-air updates end to end on a real broker: the application hot-swaps with concurrent
callers, desired state decides (newest wins, replays refused), offline devices catch up, staged
rollouts stop at canary failures and at the abort threshold."""

from __future__ import annotations

import threading
import time

import _models
import _ota
import numpy as np
import pytest

from edge_sdk.desired import DesiredModel, DesiredState, sign_desired
from edge_sdk.runtime import EdgeModel

X = {"image": np.zeros((1, 3, 8, 8), np.float32)}


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def _smoke(value: float):
    return X, {"out": np.full((1, 2), value, np.float32)}


def _value(model: EdgeModel) -> float:
    (out,) = model.run(X).values()
    return float(out.reshape(-1)[0])


@pytest.fixture
def fleet(mosquitto, tmp_path):
    with _ota.OtaFleet(mosquitto, tmp_path / "fleet") as made:
        yield made


def test_application_hot_swaps_with_concurrent_callers(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    fleet.start_server()
    agent = fleet.start_agent("device-1")
    op = fleet.operator()
    assert op.deploy(v1.path, fleet.key, devices=["device-1"], wave_timeout=30).ok
    model = EdgeModel.from_store(agent.store, "scorer", profile=None)
    seen: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller(out: list[float]) -> None:
        try:
            while not stop.is_set():
                out.append(_value(model))
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(s,)) for s in seen]
    for thread in threads:
        thread.start()
    try:
        result = op.deploy(v2.path, fleet.key, devices=["device-1"], wave_timeout=30)
        assert result.ok, result.to_dict()
        _ota.wait_for(lambda: model.store_version == 2, 20, "the application to swap")
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        model.close()
    assert not errors, errors
    for values in seen:
        assert values and set(values) <= {1.0, 2.0}
        # One switch per caller, never back: 1.0 ... 1.0 2.0 ... 2.0.
        first_new = values.index(2.0)
        assert all(v == 2.0 for v in values[first_new:])
    assert agent.store.active("scorer").version == 2


def test_newest_desired_state_wins_and_replays_are_refused(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    fleet.start_server()
    agent = fleet.start_agent("device-1", groups=["lab"])
    op = fleet.operator()
    m1 = DesiredModel(1, v1.manifest.sha256)
    m2 = DesiredModel(2, v2.manifest.sha256)
    # The group says 2, but the device's own document is newer and says 1: 1 wins.
    group = DesiredState(
        fleet=fleet.fleet, target_kind="group", target="lab", models={"scorer": m2}, sequence=100
    )
    device = DesiredState(
        fleet=fleet.fleet, target_kind="device", target="device-1", models={"scorer": m1},
        sequence=200,
    )  # fmt: skip
    root = op.root
    op.connection.publish_wait(
        root + group.topic_suffix, sign_desired(group, fleet.key), retain=True
    )
    op.connection.publish_wait(
        root + device.topic_suffix, sign_desired(device, fleet.key), retain=True
    )
    fleet.wait_job(op, "device-1", 1, {"succeeded"})
    time.sleep(0.5)
    assert agent.store.active("scorer").version == 1
    # A newer group document moves it on.
    newer = DesiredState(
        fleet=fleet.fleet, target_kind="group", target="lab", models={"scorer": m2}, sequence=300
    )
    op.connection.publish_wait(
        root + newer.topic_suffix, sign_desired(newer, fleet.key), retain=True
    )
    fleet.wait_job(op, "device-1", 2, {"succeeded"})
    # Replaying the old device document (sequence 200 < 300 applied on that topic? no: per
    # topic) -- replay the old *group* document: below the group's last sequence, refused.
    op.connection.publish_wait(
        root + group.topic_suffix, sign_desired(group, fleet.key), retain=True
    )
    _ota.wait_for(
        lambda: "older than" in str((op.statuses.get("device-1") or {}).get("last_refusal")),
        10,
        "the replay to be refused",
    )
    assert agent.store.active("scorer").version == 2


def test_an_offline_device_catches_up_from_retained_group_state(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    fleet.start_server()
    online = fleet.start_agent("device-1", groups=["lab"])
    op = fleet.operator()
    _ota.wait_for(lambda: "device-1" in op.statuses, 10, "device-1 status")
    result = op.deploy(v1.path, fleet.key, group="lab", wave_timeout=30)
    assert result.ok and result.group_published
    assert online.store.active("scorer").version == 1
    # device-2 was never online during the rollout; it joins later and catches up.
    late = fleet.start_agent("device-2", groups=["lab"])
    fleet.wait_job(op, "device-2", 1, {"succeeded"})
    assert late.store.active("scorer").version == 1


def test_a_failing_canary_stops_the_rollout(fleet) -> None:
    good = fleet.release(_model(1.0), 1)
    fleet.start_server()
    agents = [fleet.start_agent(d, groups=["lab"]) for d in ("device-1", "device-2", "device-3")]
    op = fleet.operator()
    _ota.wait_for(lambda: len(op.members("lab")) == 3, 10, "three members")
    assert op.deploy(good.path, fleet.key, group="lab", wave_timeout=30).ok
    # Version 2 fails its smoke test (it answers 5.0 where 9.0 is expected).
    bad = fleet.release(_model(5.0), 2, smoke=_smoke(9.0))
    fleet.server.add(_ota.load_release(bad.path))
    result = op.deploy(bad.path, fleet.key, group="lab", canary=1, wave_timeout=30)
    assert not result.ok and result.aborted and "canary" in result.aborted
    assert len(result.rows) == 1  # nobody beyond the canary was asked
    (row,) = result.rows.values()
    assert row.state == "rolled_back"
    assert "smoke test failed: output 'out' differs by up to 4" in (row.reason or "")
    assert not result.group_published
    for agent in agents:
        assert agent.store.active("scorer").version == 1


def test_the_abort_threshold_stops_later_waves(fleet) -> None:
    good = fleet.release(_model(1.0), 1)
    fleet.start_server()
    agents = [fleet.start_agent(d, groups=["lab"]) for d in ("device-1", "device-2", "device-3")]
    op = fleet.operator()
    _ota.wait_for(lambda: len(op.members("lab")) == 3, 10, "three members")
    assert op.deploy(good.path, fleet.key, group="lab", wave_timeout=30).ok
    bad = fleet.release(_models.unsupported_op(), 2)
    fleet.server.add(_ota.load_release(bad.path))
    # No canary: waves of 2 then 4; the first wave fails entirely -> 100% >= 50%: stop.
    result = op.deploy(bad.path, fleet.key, group="lab", abort_failure_rate=0.5, wave_timeout=30)
    assert result.aborted and "abort threshold" in result.aborted
    assert len(result.rows) == 2
    assert all(r.state == "rolled_back" and "does not load" in (r.reason or "")
               for r in result.rows.values())  # fmt: skip
    for agent in agents:
        assert agent.store.active("scorer").version == 1


def test_an_update_nobody_serves_ends_timed_out_and_keeps_the_old_model(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    server = fleet.start_server([v1])  # serves version 1 only
    agent = fleet.start_agent("device-1", update_timeout=3, request_timeout=1)
    op = fleet.operator()
    assert op.deploy(v1.path, fleet.key, devices=["device-1"], wave_timeout=30).ok
    op.publish_release(v2.path)  # the manifest is there, the chunks are not
    result = op.rollout(
        "scorer", DesiredModel(2, v2.manifest.sha256), fleet.key, devices=["device-1"],
        wave_timeout=30,
    )  # fmt: skip
    (row,) = result.rows.values()
    assert row.state == "timed_out" and "not finished within 3 s" in (row.reason or "")
    assert agent.store.active("scorer").version == 1
    assert agent.store.journal("scorer").state.value == "timed_out"
    # Newer desired state asks again; with the chunks served now, it succeeds.
    server.add(_ota.load_release(v2.path))
    again = op.rollout(
        "scorer", DesiredModel(2, v2.manifest.sha256), fleet.key, devices=["device-1"],
        wave_timeout=30,
    )  # fmt: skip
    assert again.ok, again.to_dict()
    assert agent.store.active("scorer").version == 2


def test_offline_members_are_deferred_not_waited_for(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    fleet.start_server()
    fleet.start_agent("device-1", groups=["lab"])
    away = fleet.start_agent("device-2", groups=["lab"])
    op = fleet.operator()
    _ota.wait_for(lambda: len(op.members("lab")) == 2, 10, "two members")
    away.stop()  # a clean stop leaves the retained status "offline"
    _ota.wait_for(
        lambda: op.statuses.get("device-2", {}).get("state") == "offline", 10, "offline status"
    )
    started = time.monotonic()
    result = op.deploy(v1.path, fleet.key, group="lab", wave_timeout=60)
    assert time.monotonic() - started < 30  # not the wave timeout
    assert result.ok and result.group_published
    assert result.rows["device-1"].state == "succeeded"
    assert result.rows["device-2"].state == "deferred"
    assert "offline" in (result.rows["device-2"].reason or "")
    back = fleet.start_agent("device-2", groups=["lab"])
    fleet.wait_job(op, "device-2", 1, {"succeeded"})
    assert back.store.active("scorer").version == 1


def test_a_release_server_with_a_full_queue_drops_and_the_device_asks_again(fleet) -> None:
    # Memory on the server stays bounded by max_queued; what it drops is asked for again.
    data = _models.tiny_mlp(width=96)
    release = fleet.release(data, 1)
    assert release.manifest.chunk_count > 8
    from edge_sdk.fleet import ReleaseServer, load_release

    server = ReleaseServer(
        fleet.settings(fleet.broker.release_server.username, max_inflight=1, max_queued=4),
        fleet.fleet,
        [load_release(release.path)],
    )
    server.start_thread()
    try:
        agent = fleet.start_agent("device-1", window=8, request_timeout=1)
        op = fleet.operator()
        result = op.deploy(release.path, fleet.key, devices=["device-1"], wave_timeout=60)
        assert result.ok, result.to_dict()
        assert server.dropped > 0
        assert agent.store.active("scorer").path.read_bytes() == data
    finally:
        server.stop()


def test_changing_one_model_never_revives_another_models_older_entry(fleet) -> None:
    # A device-level rollback of "scorer" to v1, then the group moves "scorer" to v2 (newer);
    # deploying a second model to the device re-signs its document: scorer must stay at v2.
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    other = fleet.release(_model(7.0), 1, name="other")
    fleet.start_server()
    agent = fleet.start_agent("device-1", groups=["lab"])
    op = fleet.operator()
    _ota.wait_for(lambda: "device-1" in op.statuses, 10, "device-1 online")
    assert op.deploy(v2.path, fleet.key, devices=["device-1"], wave_timeout=30).ok
    assert op.rollout(
        "scorer", DesiredModel(1, v1.manifest.sha256, downgrade=True), fleet.key,
        devices=["device-1"], wave_timeout=30,
    ).ok  # fmt: skip
    # The group's document alone (not the device's) moves scorer forward again.
    op.set_desired("group", "lab", "scorer", DesiredModel(2, v2.manifest.sha256), fleet.key)
    _ota.wait_for(lambda: agent.store.active("scorer").version == 2, 20, "scorer back on v2")
    assert op.deploy(other.path, fleet.key, devices=["device-1"], wave_timeout=30).ok
    time.sleep(1.0)
    assert agent.store.active("other").version == 1
    assert agent.store.active("scorer").version == 2
    assert fleet.job(op, "device-1")["version"] == 2
