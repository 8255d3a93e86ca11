"""Signed remote commands through a real Mosquitto (authentication, per-device ACLs): every
command round trip, MQTT 5 request/response and the 3.1.1 fallback, refusals that reach the
operator with a reason, fuzzed commands published through the broker, replays after a restart,
a device clock that jumps backwards, rollback, restart of a real agent process, and the birth /
Will session counter."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import _broker
import _models
import _ota
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_sdk import release as rel
from edge_sdk.agent.config import config_from_dict
from edge_sdk.agent.mqtt import RESTART_EXIT_STATUS, MqttAgent
from edge_sdk.commands import REFUSAL_CODES, Command, sign_command
from edge_sdk.errors import CommandError, CommandTimeoutError, FleetError

DEVICE = "device-1"


@pytest.fixture
def fleet(mosquitto, tmp_path):
    with _ota.OtaFleet(mosquitto, tmp_path / "fleet") as made:
        yield made


def _status(op, device: str = DEVICE) -> dict[str, Any]:
    with op._cond:
        return dict(op.statuses.get(device) or {})


def _wait_status(op, predicate, what: str, device: str = DEVICE, timeout: float = 20.0):
    def matching() -> dict[str, Any] | None:
        status = _status(op, device)
        return status if status and predicate(status) else None

    return _ota.wait_for(matching, timeout, what)


def _wait_online(broker: _broker.MosquittoBroker, session: int = 1) -> dict[str, Any]:
    """Until the device's birth (which it publishes after subscribing to its command topic)."""
    with _broker.PahoPeer(broker, "operator") as peer:
        peer.connect()
        peer.subscribe(f"{broker.topic_root}devices/{DEVICE}/status")
        deadline = time.monotonic() + 20
        while True:
            message = peer.expect(max(0.1, deadline - time.monotonic()))
            status = json.loads(message.payload) if message.payload else {}
            if status.get("state") == "online" and status.get("session", 0) >= session:
                return status


class Replies:
    """A raw operator peer on the device's reply tree: every reply, refusals without a request
    id included."""

    def __init__(self, broker: _broker.MosquittoBroker, device: str = DEVICE) -> None:
        self.peer = _broker.PahoPeer(broker, "operator")
        self.peer.connect()
        self.cmd_topic = f"{broker.topic_root}devices/{device}/cmd"
        self.reply_topic = f"{broker.topic_root}devices/{device}/reply"
        # "reply/#" matches "reply" itself too (one subscription: no duplicate deliveries).
        self.peer.subscribe(self.reply_topic + "/#")

    def send(self, payload: bytes) -> None:
        assert self.peer.publish(self.cmd_topic, payload).value == 0

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return json.loads(self.peer.expect(timeout).payload)

    def close(self) -> None:
        self.peer.close()


def _signed(fleet, command: str = "ping", args=None, *, now=None, lifetime=60) -> bytes:
    made = Command.create(
        fleet.fleet, DEVICE, command, args, now=now, lifetime=timedelta(seconds=lifetime)
    )
    return sign_command(made, fleet.key)


def test_every_command_answers_over_mqtt5(fleet) -> None:
    agent = fleet.start_agent(DEVICE, telemetry_interval=60)
    op = fleet.operator()
    _wait_status(op, lambda s: s.get("state") == "online", "the birth")
    pong = op.command(DEVICE, "ping", private_key=fleet.key)
    assert pong["ok"] and pong["result"]["pong"] is True
    assert pong["result"]["session"] == _status(op)["session"] >= 1
    info = op.command(DEVICE, "info", private_key=fleet.key)["result"]
    assert info["status"]["device"] == DEVICE
    assert info["onnxruntime_version"] == _status(op)["onnxruntime_version"]
    assert info["telemetry_interval_s"] == 60
    diag = op.command(DEVICE, "diag", private_key=fleet.key)["result"]
    assert diag["commands"]["accepted"] == 2
    assert "spooled_reports" in diag["telemetry"] and "uptime_s" in diag["system"]
    changed = op.command(DEVICE, "set_telemetry_interval", {"seconds": 5}, private_key=fleet.key)[
        "result"
    ]
    assert changed == {"interval_s": 5.0, "previous_s": 60.0}
    _wait_status(op, lambda s: s.get("telemetry_interval_s") == 5.0, "the new interval")
    # The interval outlives a restart of the agent.
    agent.stop()
    again = fleet.start_agent(DEVICE, telemetry_interval=60)
    _wait_status(op, lambda s: s.get("state") == "online" and s["session"] >= 2, "rebirth")
    assert again.agent.telemetry is not None and again.agent.telemetry.interval == 5.0
    assert _status(op)["telemetry_interval_s"] == 5.0
    with pytest.raises(CommandError) as refused:
        op.command(DEVICE, "set_telemetry_interval", {"seconds": 0.01}, private_key=fleet.key)
    assert refused.value.code == "bad_arguments" and "1 to 86400" in refused.value.reason


def test_the_reply_goes_to_the_response_topic_with_the_correlation_data(fleet) -> None:
    fleet.start_agent(DEVICE)
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = f"{replies.reply_topic}/console-7"
        properties.CorrelationData = b"\x00\x01opaque"
        info = replies.peer.client.publish(
            replies.cmd_topic, _signed(fleet), qos=1, properties=properties
        )
        info.wait_for_publish(5)
        message = replies.peer.expect(10)
        assert message.topic == f"{replies.reply_topic}/console-7"
        assert message.properties.CorrelationData == b"\x00\x01opaque"
        assert json.loads(message.payload)["ok"] is True
        # A response topic outside the device's reply tree is not used (the ACL would refuse
        # it, and a command must not make a device publish elsewhere).
        properties.ResponseTopic = f"{fleet.broker.topic_root}devices/device-2/reply"
        replies.peer.client.publish(
            replies.cmd_topic, _signed(fleet), qos=1, properties=properties
        ).wait_for_publish(5)
        message = replies.peer.expect(10)
        assert message.topic == replies.reply_topic
    finally:
        replies.close()


def test_mqtt311_devices_and_operators_correlate_by_request_id(fleet) -> None:
    fleet.start_agent(DEVICE, protocol=4)
    op5 = fleet.operator()
    assert op5.command(DEVICE, "ping", private_key=fleet.key)["ok"]
    from edge_sdk.fleet import FleetClient

    op311 = FleetClient(fleet.settings("operator", protocol=4), fleet.fleet).connect()
    try:
        reply = op311.command(DEVICE, "info", private_key=fleet.key)
        assert reply["command"] == "info" and reply["result"]["status"]["device"] == DEVICE
    finally:
        op311.close()


def test_refusals_reach_the_operator_with_a_reason(fleet) -> None:
    fleet.start_agent(DEVICE)
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    try:
        past = datetime.now(timezone.utc) - timedelta(minutes=10)
        stranger, _ = rel.generate_keypair()
        cases = {
            "expired": _signed(fleet, now=past),
            "not_yet_valid": _signed(
                fleet,
                "set_telemetry_interval",
                {"seconds": 5},
                now=datetime.now(timezone.utc) + timedelta(hours=1),
            ),
            "unknown_key": sign_command(Command.create(fleet.fleet, DEVICE, "ping"), stranger),
            "wrong_device": sign_command(
                Command.create(fleet.fleet, "device-2", "ping"), fleet.key
            ),
            "malformed": b"not JSON at all",
            "oversized": b"{" + b" " * 20_000 + b"}",
            "bad_signature": _signed(fleet).replace(b'"ping"', b'"diag"'),
        }
        unsigned = json.loads(_signed(fleet))
        del unsigned["signature"]
        cases["unsigned"] = json.dumps(unsigned).encode()
        for code, payload in cases.items():
            replies.send(payload)
            reply = replies.next()
            assert reply["ok"] is False, code
            assert reply["error"]["code"] == code, (code, reply)
            assert reply["error"]["reason"], code
        # The agent is alive and well.
        replies.send(_signed(fleet))
        assert replies.next()["ok"] is True
    finally:
        replies.close()
    op = fleet.operator()
    with pytest.raises(CommandError) as refused:
        op.command(DEVICE, "rollback", {"model": "nothing-here"}, private_key=fleet.key)
    assert refused.value.code == "bad_arguments" and "nothing-here" in str(refused.value)
    assert refused.value.device == DEVICE
    with pytest.raises(CommandError, match="unknown_command"):
        op.command(DEVICE, "self_destruct", private_key=fleet.key)
    with pytest.raises(CommandTimeoutError, match=r"device-3: no reply to ping within 0\.5 s"):
        op.command("device-3", "ping", private_key=fleet.key, timeout=0.5)
    with pytest.raises(FleetError, match="unsafe"):
        op.command("../device-1", "ping", private_key=fleet.key)


def test_hostile_but_well_formed_messages_cost_one_refusal_each(fleet) -> None:
    agent = fleet.start_agent(DEVICE)
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    try:
        document = json.loads(_signed(fleet, "set_telemetry_interval", {"seconds": 10}))
        nan = json.dumps(document).replace('"seconds": 10', '"seconds": NaN').encode()
        # Several in one batch with a good one last: each gets its reply, the good one runs.
        for payload in (nan, nan, _signed(fleet)):
            replies.peer.client.publish(replies.cmd_topic, payload, qos=1)
        codes = [replies.next().get("error", {}).get("code") for _ in range(3)]
        assert codes == ["malformed", "malformed", None], codes
        # A response topic with wildcards is no topic: the reply takes the default one.
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = f"{replies.reply_topic}/+"
        replies.peer.client.publish(
            replies.cmd_topic, _signed(fleet), qos=1, properties=properties
        ).wait_for_publish(5)
        message = replies.peer.expect(10)
        assert message.topic == replies.reply_topic and json.loads(message.payload)["ok"]
        assert agent.thread.is_alive()
        # A command published retained runs once, live; found lying on the topic when the agent
        # subscribes again, it is not run again (nor answered).
        assert replies.peer.publish(replies.cmd_topic, _signed(fleet), retain=True).value == 0
        assert replies.next()["ok"] is True
        agent.stop()
        fleet.start_agent(DEVICE)
        _wait_online(fleet.broker)
        assert replies.peer.sync(replies.reply_topic + "/sync") == []
        replies.peer.publish(replies.cmd_topic, b"", retain=True)  # clear it
    finally:
        replies.close()


def _fuzzed_payloads(fleet) -> st.SearchStrategy[bytes]:
    template = json.loads(_signed(fleet, "set_telemetry_interval", {"seconds": 10}))
    fields = sorted(template)

    def tampered(change: tuple[str, Any]) -> bytes:
        field, value = change
        document = dict(template)
        if document.get(field) == value:
            value = [value]
        document[field] = value
        return json.dumps(document).encode()

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=12,
    )
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(fields), json_values).map(tampered),
        st.integers(16 * 1024 + 1, 40_000).map(lambda n: b"[" + b"0," * (n // 2) + b"0]"),
    )


def test_fuzzed_commands_through_the_broker_are_refused_and_the_agent_lives(fleet) -> None:
    agent = fleet.start_agent(DEVICE, telemetry_interval=60)
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    codes: dict[str, int] = {}
    sent = [0]
    try:

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(_fuzzed_payloads(fleet), min_size=1, max_size=6))
        def publish_batch(batch: list[bytes]) -> None:
            for payload in batch:
                replies.send(payload)
            for _ in batch:
                reply = replies.next()
                assert reply["ok"] is False, reply
                assert reply["error"]["code"] in REFUSAL_CODES
                codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
            sent[0] += len(batch)

        publish_batch()
        assert agent.thread.is_alive()
        replies.send(_signed(fleet))
        assert replies.next()["ok"] is True
    finally:
        replies.close()
    assert sum(codes.values()) == sent[0] >= 25
    # Several kinds of refusal were exercised (the exact mix is hypothesis's to choose; every
    # code is covered deterministically by test_refusals_reach_the_operator_with_a_reason).
    assert len(codes) >= 2, codes
    # Nothing it refused changed the device.
    assert agent.agent.telemetry is not None and agent.agent.telemetry.interval == 60


def test_a_replayed_command_is_refused_even_after_a_restart(fleet) -> None:
    agent = fleet.start_agent(DEVICE)
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    try:
        payload = _signed(fleet, "set_telemetry_interval", {"seconds": 30})
        replies.send(payload)
        assert replies.next()["ok"] is True
        replies.send(payload)
        assert replies.next()["error"]["code"] == "replayed"
        agent.stop()
        fleet.start_agent(DEVICE)
        _wait_online(fleet.broker, session=2)
        replies.send(payload)
        reply = replies.next()
        assert reply["error"]["code"] == "replayed", reply
    finally:
        replies.close()


class _ShiftedClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_device_clock_jumping_backwards_neither_revives_nor_refuses_wrongly(fleet) -> None:
    clock = _ShiftedClock()
    agent = MqttAgent(config_from_dict(fleet.agent_config(DEVICE)), wall_clock=clock)
    thread = threading.Thread(target=agent.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    _wait_online(fleet.broker)
    replies = Replies(fleet.broker)
    try:
        # Signed two hours ago for a minute, never sent: recorded by an attacker.
        stale = _signed(fleet, now=datetime.now(timezone.utc) - timedelta(hours=2))
        accepted = _signed(fleet)
        replies.send(accepted)
        assert replies.next()["ok"] is True
        clock.offset = -2 * 3600.0  # a bad NTP step or an RTC battery gone flat
        replies.send(stale)
        assert replies.next()["error"]["code"] == "expired"
        replies.send(accepted)
        assert replies.next()["error"]["code"] == "replayed"
        # A fresh command looks two hours in the future to this clock. One that changes
        # something is refused, naming the clock; the read-only ones still answer, so the
        # operator can see what is wrong.
        replies.send(_signed(fleet, "set_telemetry_interval", {"seconds": 5}))
        refused = replies.next()
        assert refused["error"]["code"] == "not_yet_valid", refused
        assert "fix the device's clock" in refused["error"]["reason"]
        replies.send(_signed(fleet, "diag"))
        reply = replies.next()
        assert reply["ok"] is True, reply
        assert reply["result"]["clock"]["newest_signed"] > reply["result"]["clock"]["device"]
    finally:
        replies.close()
        agent.stop()
        thread.join(20)


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def test_rollback_command_moves_back_and_keeps_the_undone_version_out(fleet) -> None:
    v1 = fleet.release(_model(1.0), 1)
    v2 = fleet.release(_model(2.0), 2)
    fleet.start_server()
    agent = fleet.start_agent(DEVICE)
    op = fleet.operator()
    assert op.deploy(v1.path, fleet.key, devices=[DEVICE], wave_timeout=30).ok
    assert op.deploy(v2.path, fleet.key, devices=[DEVICE], wave_timeout=30).ok
    reply = op.command(DEVICE, "rollback", {"model": "scorer", "from": 2}, private_key=fleet.key)
    assert reply["result"] == {"model": "scorer", "undone": 2, "active": 1}
    # The same rollback retried (after a time-out, say) does not go back a second time.
    with pytest.raises(CommandError) as twice:
        op.command(DEVICE, "rollback", {"model": "scorer", "from": 2}, private_key=fleet.key)
    assert twice.value.code == "failed" and "nothing rolled back" in twice.value.reason
    assert agent.store.active("scorer").version == 1
    assert agent.store.is_bad("scorer", 2)
    job = fleet.wait_job(op, DEVICE, 2, {"rolled_back"})
    assert "operator command" in job["reason"] and job["active_version"] == 1
    _wait_status(op, lambda s: s["models"]["scorer"]["active"] == 1, "status: v1 active")
    # Desired state still names v2: a restart does not install it again.
    agent.stop()
    agent = fleet.start_agent(DEVICE)
    failed = fleet.wait_job(op, DEVICE, 2, {"failed"})
    assert "marked bad" in failed["reason"]
    assert agent.store.active("scorer").version == 1
    with pytest.raises(CommandError) as refused:
        op.command(DEVICE, "rollback", {"model": "scorer"}, private_key=fleet.key)
    assert refused.value.code == "failed" and "scorer" in refused.value.reason


def test_birth_will_and_restart_carry_the_session_counter(fleet) -> None:
    watcher = _broker.PahoPeer(fleet.broker, "operator")
    watcher.connect()
    status_topic = f"{fleet.broker.topic_root}devices/{DEVICE}/status"
    watcher.subscribe(status_topic)

    def next_status(state: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:
            message = watcher.expect(max(0.1, deadline - time.monotonic()))
            if message.payload:
                document = json.loads(message.payload)
                if document["state"] == state:
                    return document

    process = fleet.start_agent_process(DEVICE)
    try:
        born = next_status("online")
        first = born["session"]
        assert born["onnxruntime_version"] and born["sdk_version"]
        pid = process.process.pid
        # A crash: the broker publishes the Will, with the same session number.
        process.kill()
        will = next_status("offline")
        assert will["session"] == first and will["reason"] == "connection lost"
        process = fleet.start_agent_process(DEVICE)
        reborn = next_status("online")
        assert reborn["session"] > first
        # restart: the reply, a clean offline, then a birth from the same process.
        op = fleet.operator()
        pid = process.process.pid
        assert op.command(DEVICE, "restart", private_key=fleet.key)["result"] == {
            "restarting": True
        }
        down = next_status("offline")
        assert down["reason"] == "restart" and down["session"] == reborn["session"]
        back = next_status("online")
        assert back["session"] > reborn["session"]
        assert process.alive() and process.process.pid == pid
        pong = op.command(DEVICE, "ping", private_key=fleet.key)["result"]
        assert pong["session"] == back["session"]
        # A clean stop says so itself.
        assert process.terminate() == 0
        final = next_status("offline")
        assert final["reason"] == "shutdown" and final["session"] == back["session"]
    finally:
        watcher.close()
        process.close()
    assert RESTART_EXIT_STATUS == 75
