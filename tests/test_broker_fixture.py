"""The Mosquitto fixture is a real broker: authentication, ACLs, persistence, crashes.

References:
- mosquitto.conf(5), 2.0: https://mosquitto.org/man/mosquitto-conf-5.html (acl_file,
  allow_anonymous, persistence, autosave_interval, message_size_limit).
- mosquitto(8), signals: SIGUSR1 writes the persistence database; mosquitto.conf(5),
  persistence: it is also written "when mosquitto closes" (SIGTERM), not on SIGKILL.
- MQTT 5.0, OASIS standard: reason codes 134 (bad user name or password), 135 (not
  authorised); 4.8.2 shared subscriptions ($share/{group}/{filter}).
- shared/NOTES.md, "MQTT and Mosquitto 2.0": ACLs filter delivery, not subscription; SIGKILL
  loses what was not saved.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _broker
import pytest
from _broker import BrokerError, BrokerState, MosquittoBroker, PahoPeer

NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
BAD_CREDENTIALS = 134  # MQTT 5 reason code 0x86
Factory = Callable[..., MosquittoBroker]


@pytest.fixture
def peers() -> Iterator[Callable[..., PahoPeer]]:
    """``peer = peers(broker, "device-1", ...)``: connected PahoPeers, closed at teardown."""
    made: list[PahoPeer] = []

    def make(broker: MosquittoBroker, username: str | None, **options: Any) -> PahoPeer:
        peer = PahoPeer(broker, username, **options)
        made.append(peer)
        code = peer.connect()
        assert not code.is_failure, f"{username} could not connect: {code}"
        return peer

    yield make
    for peer in made:
        peer.close()


def topic(broker: MosquittoBroker, rest: str) -> str:
    return broker.topic_root + rest


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_device_talks_on_its_own_topics_with_qos1(
    mosquitto: MosquittoBroker, peers: Callable[..., PahoPeer], protocol: int
) -> None:
    device = peers(mosquitto, "device-1", protocol=protocol)
    operator = peers(mosquitto, "operator", protocol=protocol)
    assert [c.value for c in device.subscribe(topic(mosquitto, "devices/device-1/#"))] == [1]
    operator.subscribe(topic(mosquitto, "devices/device-1/telemetry"))

    # Device to itself and to the operator, then operator to device: QoS 1 both ways.
    assert not device.publish(topic(mosquitto, "devices/device-1/telemetry"), b"t1").is_failure
    for peer in (device, operator):
        message = peer.expect()
        assert (message.topic, message.payload, message.qos) == (
            topic(mosquitto, "devices/device-1/telemetry"),
            b"t1",
            1,
        )
    assert not operator.publish(topic(mosquitto, "devices/device-1/cmd"), b"reboot").is_failure
    message = device.expect()
    assert (message.topic, message.payload, message.qos) == (
        topic(mosquitto, "devices/device-1/cmd"),
        b"reboot",
        1,
    )


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("device-1", "wrong"), ("intruder", "whatever")],
    ids=["anonymous", "wrong-password", "unknown-user"],
)
def test_connection_refused_without_valid_credentials(
    mosquitto: MosquittoBroker, username: str | None, password: str | None
) -> None:
    with PahoPeer(mosquitto, username, password=password) as peer:
        code = peer.connect()
    assert code.is_failure
    assert code.value in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    assert "not authorised" in mosquitto.log_text()


def test_acl_keeps_a_device_out_of_another_devices_topics(
    mosquitto: MosquittoBroker, peers: Callable[..., PahoPeer]
) -> None:
    owner = peers(mosquitto, "device-1")
    snoop = peers(mosquitto, "device-2")
    operator = peers(mosquitto, "operator")
    snoop.subscribe(topic(mosquitto, "devices/device-2/#"))
    operator.subscribe(topic(mosquitto, "devices/device-1/#"))
    # The SUBACK may well grant it (mosquitto checks ACLs on delivery, NOTES.md); what
    # matters is that nothing arrives.
    snoop.subscribe(topic(mosquitto, "devices/device-1/#"))

    owner.publish(topic(mosquitto, "devices/device-1/telemetry"), b"private")
    assert operator.expect().payload == b"private"  # it was routed...
    # ...and before the snoop's own marker, nothing of device-1's reached it.
    assert snoop.sync(topic(mosquitto, "devices/device-2/telemetry")) == []

    # A device cannot write into another's tree either: MQTT 5 PUBACK says 135, and the
    # message is not delivered.
    code = snoop.publish(topic(mosquitto, "devices/device-1/cmd"), b"forged")
    assert code is not None
    assert code.value == NOT_AUTHORIZED
    assert operator.sync(topic(mosquitto, "devices/device-1/sync")) == []


def test_devices_read_releases_and_desired_state_but_cannot_write_them(
    mosquitto: MosquittoBroker, peers: Callable[..., PahoPeer]
) -> None:
    operator = peers(mosquitto, "operator")
    server = peers(mosquitto, "release-server")
    manifest = topic(mosquitto, "releases/digits/2/manifest")
    desired = topic(mosquitto, "desired/devices/device-1")
    assert not server.publish(manifest, b"signed-manifest", retain=True).is_failure
    assert not operator.publish(desired, b"signed-desired", retain=True).is_failure

    device = peers(mosquitto, "device-1")
    device.subscribe(topic(mosquitto, "releases/#"))
    device.subscribe(topic(mosquitto, "desired/#"))
    got = sorted((m.topic, m.payload, m.retain) for m in (device.expect(), device.expect()))
    assert got == [(desired, b"signed-desired", True), (manifest, b"signed-manifest", True)]

    # Chunks and desired state meant for device-2 never reach device-1.
    assert not server.publish(
        topic(mosquitto, "releases/digits/2/blocks/device-2"), b"c"
    ).is_failure
    assert not operator.publish(topic(mosquitto, "desired/devices/device-2"), b"d").is_failure
    assert not server.publish(
        topic(mosquitto, "releases/digits/2/blocks/device-1"), b"c1"
    ).is_failure
    mine = device.expect()
    assert (mine.topic, mine.payload) == (
        topic(mosquitto, "releases/digits/2/blocks/device-1"),
        b"c1",
    )

    assert device.publish(manifest, b"evil", retain=True).value == NOT_AUTHORIZED
    assert device.publish(desired, b"evil", retain=True).value == NOT_AUTHORIZED
    # The release server publishes releases, not desired state or commands.
    assert server.publish(desired, b"evil").value == NOT_AUTHORIZED
    assert server.publish(topic(mosquitto, "devices/device-1/cmd"), b"x").value == NOT_AUTHORIZED


def test_release_servers_share_device_requests(
    mosquitto: MosquittoBroker, peers: Callable[..., PahoPeer]
) -> None:
    # MQTT 5 shared subscription: each request reaches exactly one server of the group, and
    # the group spreads them; the way the release server scales out (docs/mqtt-broker.md).
    shared = "$share/release-servers/" + topic(mosquitto, "devices/+/jobs")
    servers = [peers(mosquitto, "release-server") for _ in range(2)]
    for server in servers:
        assert not server.subscribe(shared)[0].is_failure
    sent = []
    for device_id in mosquitto.devices:
        device = peers(mosquitto, device_id)
        for n in range(2):
            sent.append(f"{device_id}/{n}".encode())
            device.publish(topic(mosquitto, f"devices/{device_id}/jobs"), sent[-1])
    got: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + 5
    while sum(map(len, got)) < len(sent) and time.monotonic() < deadline:
        for index, server in enumerate(servers):
            got[index].extend(m.payload for m in server.received())
        time.sleep(0.005)
    assert sorted(got[0] + got[1]) == sorted(sent)  # every request once, none twice
    assert got[0] and got[1], got


def read_retained(
    broker: MosquittoBroker, peers: Callable[..., PahoPeer], path: str
) -> list[tuple[str, bytes, bool]]:
    """Retained payloads under ``path`` that a fresh subscriber gets (none: an empty list)."""
    reader = peers(broker, "operator")
    reader.subscribe(topic(broker, path))
    reader.subscribe(topic(broker, "sync/reader"))
    # Mosquitto sends retained messages right after the SUBACK, before it reads the marker.
    return [(m.topic, m.payload, m.retain) for m in reader.sync(topic(broker, "sync/reader"))]


def test_retained_message_survives_a_graceful_restart(
    mosquitto_factory: Factory, peers: Callable[..., PahoPeer]
) -> None:
    # autosave_interval 0: saved only on exit or SIGUSR1, so this proves SIGTERM saves.
    broker = mosquitto_factory(persistence=True, autosave_interval=0)
    port = broker.port
    operator = peers(broker, "operator")
    manifest = topic(broker, "releases/digits/2/manifest")
    assert not operator.publish(manifest, b"m2", retain=True).is_failure
    operator.close()

    assert broker.stop() == 0
    assert broker.database_path.is_file()
    broker.restart()
    assert broker.port == port
    assert read_retained(broker, peers, "releases/#") == [(manifest, b"m2", True)]


def test_sigkill_loses_what_was_not_saved(
    mosquitto_factory: Factory, peers: Callable[..., PahoPeer]
) -> None:
    broker = mosquitto_factory(persistence=True, autosave_interval=0)
    operator = peers(broker, "operator")
    saved, lost = topic(broker, "releases/a/1/manifest"), topic(broker, "releases/b/1/manifest")
    operator.publish(saved, b"saved", retain=True)
    broker.save()  # SIGUSR1
    operator.publish(lost, b"lost", retain=True)
    operator.close()

    assert broker.kill() == -signal.SIGKILL
    assert broker.state is BrokerState.STOPPED
    broker.restart()
    assert read_retained(broker, peers, "releases/#") == [(saved, b"saved", True)]


def test_autosave_then_sigkill_keeps_retained_messages(
    mosquitto_factory: Factory, peers: Callable[..., PahoPeer]
) -> None:
    broker = mosquitto_factory(persistence=True, autosave_interval=1)
    operator = peers(broker, "operator")
    desired = topic(broker, "desired/groups/canary")
    operator.publish(desired, b"v2", retain=True)
    broker.wait_for_autosave()
    broker.kill()
    broker.restart()
    assert read_retained(broker, peers, "desired/#") == [(desired, b"v2", True)]


def test_qos1_command_queued_for_an_offline_device_survives_a_restart(
    mosquitto_factory: Factory, peers: Callable[..., PahoPeer]
) -> None:
    # MQTT 5 needs clean_start=False and a session expiry interval for the broker to keep
    # the session and queue QoS 1 messages while the device is away (NOTES.md).
    broker = mosquitto_factory(persistence=True, autosave_interval=0)
    cmd = topic(broker, "devices/device-1/cmd")
    options = {"client_id": "agent-device-1", "clean_start": False, "session_expiry": 3600}
    device = peers(broker, "device-1", **options)
    device.subscribe(cmd, qos=1)
    device.close()

    operator = peers(broker, "operator")
    assert not operator.publish(cmd, b"activate v2", qos=1).is_failure
    operator.close()
    broker.restart()  # SIGTERM: session and queued message saved

    device = peers(broker, "device-1", **options)
    assert device.session_present
    message = device.expect()
    assert (message.topic, message.payload, message.qos) == (cmd, b"activate v2", 1)


def test_client_reconnects_after_broker_kill_and_restart(
    mosquitto: MosquittoBroker, peers: Callable[..., PahoPeer]
) -> None:
    device = peers(mosquitto, "device-1", reconnect=True)
    pid = mosquitto.pid
    mosquitto.kill()
    device.wait_disconnects(1)
    mosquitto.restart()
    assert mosquitto.pid != pid
    device.wait_connacks(2, timeout=10)  # paho's own backoff, at least 1 s
    own = topic(mosquitto, "devices/device-1/telemetry")
    device.subscribe(own)
    device.publish(own, b"back")
    assert device.expect().payload == b"back"


@pytest.mark.parametrize("protocol", [4, 5], ids=["mqtt311", "mqtt5"])
def test_message_size_limit_drops_an_oversize_publish(
    mosquitto_factory: Factory, peers: Callable[..., PahoPeer], protocol: int
) -> None:
    broker = mosquitto_factory(message_size_limit=1024)
    watcher = peers(broker, "operator")
    watcher.subscribe(topic(broker, "devices/device-1/#"))
    device = peers(broker, "device-1", protocol=protocol)
    own = topic(broker, "devices/device-1/telemetry")
    if protocol == 4:
        # MQTT 3.1.1: the publisher is told nothing, the message just vanishes (NOTES.md).
        assert not device.publish(own, b"x" * 2048).is_failure
    else:
        # MQTT 5: mosquitto 2.0.11 answers with PUBACK reason code 149, which MQTT 5 does not
        # allow in a PUBACK; paho 2.x calls the packet malformed and drops the connection.
        device.client.publish(own, b"x" * 2048, qos=1)
        device.wait_disconnects(1)
    assert watcher.sync(topic(broker, "devices/device-1/sync")) == []
    if protocol == 4:
        device.publish(own, b"x" * 1024)
        assert len(watcher.expect().payload) == 1024


def test_generated_config(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(
        devices=["cam-7"], persistence=True, max_inflight_messages=50, max_packet_size=200_000
    )
    config = broker.config_path.read_text().splitlines()
    settings = [line for line in config if line and not line.startswith("#")]
    assert settings[0] == "per_listener_settings true"
    assert f"listener {broker.port} 127.0.0.1" in settings
    assert broker.port != 1883  # never the system service's port
    for line in (
        "allow_anonymous false",
        f"password_file {broker.password_path}",
        f"acl_file {broker.acl_path}",
        "persistence true",
        f"persistence_location {broker.persistence_dir}/",
        "autosave_interval 1",
        "max_inflight_messages 50",
        "max_packet_size 200000",
    ):
        assert line in settings
    assert not any(line.startswith("message_size_limit") for line in settings)

    passwords = broker.password_path.read_text()
    assert broker.device("cam-7").password not in passwords  # hashed by mosquitto_passwd
    assert {line.split(":")[0] for line in passwords.splitlines()} == {
        "operator",
        "release-server",
        "cam-7",
    }
    acl = broker.acl_path.read_text()
    assert "user cam-7\ntopic readwrite edge/v1/fleet-1/devices/cam-7/#\n" in acl
    assert "topic read edge/v1/fleet-1/releases/+/+/manifest" in acl
    assert "topic read edge/v1/fleet-1/releases/+/+/blocks/cam-7" in acl
    assert (broker.password_path.stat().st_mode & 0o777) == 0o600


def test_retries_when_the_chosen_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = _broker.free_port
        monkeypatch.setattr(_broker, "free_port", lambda host: next(ports, None) or real(host))
        with MosquittoBroker(tmp_path / "b") as broker:
            assert broker.port != taken
            assert broker.is_running()
        assert (
            "Address already in use"
            in (tmp_path / "b" / "mosquitto.log").read_text()
            + (tmp_path / "b" / "mosquitto.out").read_text()
        )


def test_restart_never_moves_to_another_port(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "b") as broker:
        port = broker.port
        broker.stop()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(BrokerError, match=f"port {port} was taken"):
                broker.start()
        broker.start()
        assert broker.port == port


def test_start_failure_reports_mosquittos_own_words(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "b", extra_config=["no_such_option 1"])
    with pytest.raises(BrokerError, match="no_such_option"):
        broker.start()
    assert not broker.is_running()


def test_lifecycle(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "b")
    assert broker.state is BrokerState.NEW
    with pytest.raises(RuntimeError):
        _ = broker.port
    with broker:
        assert broker.state is BrokerState.RUNNING
        port, pid = broker.port, broker.pid
        with pytest.raises(RuntimeError, match="already running"):
            broker.start()
        with pytest.raises(RuntimeError, match="persistence"):
            broker.save()
        assert broker.stop() == 0  # SIGTERM: a clean exit
        assert broker.state is BrokerState.STOPPED
        broker.start()  # reusable after stop(), on the same port
        assert (broker.port, broker.state) == (port, BrokerState.RUNNING)
        assert broker.pid != pid
    assert broker.state is BrokerState.CLOSED
    assert broker.returncode == -signal.SIGKILL  # close(): nothing to save, so SIGKILL
    broker.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        broker.start()
    with pytest.raises(RuntimeError, match="closed"), broker:
        pass


@pytest.mark.parametrize(
    "bad",
    [{"fleet": "a/b"}, {"devices": ["d#"]}, {"devices": ["x", "x"]}, {"max_packet_size": 10}],
)
def test_rejects_unsafe_settings(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        MosquittoBroker(tmp_path / "b", **bad)


@pytest.mark.parametrize(("require", "outcome"), [("", "skip"), ("1", "fail")])
def test_missing_peer_skips_or_fails(
    monkeypatch: pytest.MonkeyPatch, require: str, outcome: str
) -> None:
    monkeypatch.setenv(_broker.REQUIRE_PEERS_ENV, require)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected, match="apt-get install -y --no-install-recommends mosquitto"):
        _broker.require_program(
            "edge-sdk-no-such-broker", packages=_broker.MOSQUITTO_PACKAGES, purpose="a test"
        )
