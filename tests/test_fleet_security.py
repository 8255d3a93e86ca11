"""A device cannot speak for another, against a real Mosquitto with the fleet's ACLs and
``use_username_as_clientid``: no forged telemetry or status, no stolen commands, no kicking
another device off by reusing its client id, no release published by a device. Delivery is
checked, not the SUBACK (mosquitto grants a subscription and filters what it delivers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from _broker import MosquittoBroker, PahoPeer

NOT_AUTHORIZED = 135  # MQTT 5.0 reason code (section 2.4)


@pytest.fixture
def broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory(use_username_as_clientid=True)


@pytest.fixture
def connect() -> Iterator[Callable[..., PahoPeer]]:
    made: list[PahoPeer] = []

    def make(broker: MosquittoBroker, username: str, **options: object) -> PahoPeer:
        peer = PahoPeer(broker, username, **options)  # type: ignore[arg-type]
        made.append(peer)
        assert not peer.connect().is_failure
        return peer

    yield make
    for peer in made:
        peer.close()


def _topic(broker: MosquittoBroker, suffix: str) -> str:
    return f"{broker.topic_root}{suffix}"


def test_a_device_cannot_forge_anothers_telemetry_or_status(
    broker: MosquittoBroker, connect: Callable[..., PahoPeer]
) -> None:
    operator = connect(broker, "operator")
    operator.subscribe(_topic(broker, "devices/device-1/#"))
    intruder = connect(broker, "device-2")
    for suffix in ("telemetry", "status", "jobs/scorer", "reply"):
        code = intruder.publish(_topic(broker, f"devices/device-1/{suffix}"), b"forged")
        assert code is not None and code.value == NOT_AUTHORIZED, suffix
    # And nothing reached the operator before its own marker.
    assert operator.sync(_topic(broker, "devices/device-1/sync")) == []


def test_a_device_cannot_receive_anothers_commands(
    broker: MosquittoBroker, connect: Callable[..., PahoPeer]
) -> None:
    owner = connect(broker, "device-1")
    intruder = connect(broker, "device-2")
    owner.subscribe(_topic(broker, "devices/device-1/cmd"))
    intruder.subscribe(_topic(broker, "devices/device-1/cmd"))  # granted, filtered on delivery
    intruder.subscribe(_topic(broker, "devices/device-2/#"))
    operator = connect(broker, "operator")
    operator.publish(_topic(broker, "devices/device-1/cmd"), b"ping")
    assert owner.expect().payload == b"ping"
    assert intruder.sync(_topic(broker, "devices/device-2/sync")) == []


def test_reusing_a_client_id_does_not_kick_the_other_device(
    broker: MosquittoBroker, connect: Callable[..., PahoPeer]
) -> None:
    owner = connect(broker, "device-1", client_id="edge-sdk-agent-device-1")
    # device-2 claims device-1's client id; with use_username_as_clientid the broker uses
    # "device-2" instead, so device-1's session is untouched.
    connect(broker, "device-2", client_id="edge-sdk-agent-device-1")
    time.sleep(0.5)
    assert owner.disconnects == []
    owner.subscribe(_topic(broker, "devices/device-1/#"))
    assert owner.sync(_topic(broker, "devices/device-1/sync")) == []  # still connected


def test_a_device_cannot_publish_a_release_or_desired_state(
    broker: MosquittoBroker, connect: Callable[..., PahoPeer]
) -> None:
    intruder = connect(broker, "device-2")
    for suffix in ("releases/scorer/9/manifest", "releases/scorer/9/blocks/device-1",
                   "desired/devices/device-1", "desired/groups/lab"):  # fmt: skip
        code = intruder.publish(_topic(broker, suffix), b"evil", retain=True)
        assert code is not None and code.value == NOT_AUTHORIZED, suffix
    reader = connect(broker, "operator")
    reader.subscribe(_topic(broker, "releases/#"))
    reader.subscribe(_topic(broker, "desired/#"))
    assert reader.sync(_topic(broker, "desired/sync")) == []  # nothing was retained
