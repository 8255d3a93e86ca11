"""The paho-mqtt 2.x glue shared by the device agent (agent/mqtt.py) and the operator side
(fleet.py): the only module besides those two that imports paho (DESIGN.md).

``MqttConnection`` owns one paho client with callback API version 2 and its network thread.
Callbacks only put events on ``inbox`` (a ``queue.Queue``) and return: long work on paho's
thread stalls keep-alives and deadlocks when a callback waits on the client (NOTES.md). The
owner drains ``inbox`` on its own thread.

Settings follow what a fleet needs on any MQTT 3.1.1/5 broker (Mosquitto, EMQX, HiveMQ,
VerneMQ, AWS IoT Core): QoS 0/1 only, automatic reconnect with backoff, a persistent session
(MQTT 5: clean_start=False and a session expiry, without which messages sent while a client was
offline are lost; MQTT 3.1.1: clean_session=False), an optional Will, TLS from files.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_sdk._mqtt_url import parse_broker_url
from edge_sdk.errors import BrokerConnectionError, FleetError

__all__ = ["BrokerSettings", "Event", "MqttConnection", "parse_broker_url"]


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the broker. ``session_expiry`` None means a clean, non-persistent session
    (operator tools); a device sets it so commands sent while it is offline wait for it."""

    url: str
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: int = 5
    keepalive: int = 30
    session_expiry: int | None = None
    reconnect_min: int = 1
    reconnect_max: int = 60
    max_inflight: int = 20
    # paho's offline queue is unbounded by default (paho issue 483): bound it.
    max_queued: int = 10_000
    will_topic: str | None = None
    will_payload: bytes = b""

    def __post_init__(self) -> None:
        parse_broker_url(self.url)
        if self.protocol not in (4, 5):
            raise ValueError(f"protocol is 5 (MQTT 5) or 4 (MQTT 3.1.1), got {self.protocol!r}")
        if not self.client_id or len(self.client_id) > 128:
            raise ValueError("client_id must be 1 to 128 characters")

    @property
    def display_url(self) -> str:
        host, port, tls, _, _ = parse_broker_url(self.url)
        return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"


@dataclass(frozen=True)
class Event:
    """What the network thread saw: kind "message" (topic, payload), "connected" (session
    present in ``flag``) or "disconnected" (reason)."""

    kind: str
    topic: str = ""
    payload: bytes = b""
    flag: bool = False
    reason: str = ""


class MqttConnection:
    """One paho client, its network thread, and an inbox of events.

    Example::

        connection = MqttConnection(BrokerSettings("mqtt://127.0.0.1:1883", "ops-1"))
        connection.start(wait=5)
        connection.publish("edge/v1/f/desired/devices/cam-01", payload, retain=True).wait(5)
        connection.stop()
    """

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.inbox: queue.Queue[Event] = queue.Queue()
        host, port, tls, url_user, url_password = parse_broker_url(settings.url)
        self.host, self.port = host, port
        version = (
            MQTTProtocolVersion.MQTTv5 if settings.protocol == 5 else MQTTProtocolVersion.MQTTv311
        )
        persistent = settings.session_expiry is not None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=version,
            # MQTT 3.1.1 takes the session flag here; MQTT 5 takes clean_start in connect.
            clean_session=None if settings.protocol == 5 else not persistent,
            reconnect_on_failure=True,
        )
        username = settings.username or url_user
        password = settings.password if settings.password is not None else url_password
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls or settings.ca_file:
            try:
                self.client.tls_set(
                    ca_certs=settings.ca_file,
                    certfile=settings.cert_file,
                    keyfile=settings.key_file,
                )
            except (OSError, ValueError) as exc:
                raise BrokerConnectionError(settings.display_url, f"TLS files: {exc}") from None
        if settings.will_topic is not None:
            self.client.will_set(settings.will_topic, settings.will_payload, qos=1, retain=True)
        self.client.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)
        self.client.max_inflight_messages_set(settings.max_inflight)
        self.client.max_queued_messages_set(settings.max_queued)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._first_connack = threading.Event()
        self._refusal: str | None = None
        self._started = False
        # topic -> qos of what the owner subscribed to: re-subscribed after a reconnect that
        # found no session (a clean session, or a broker that lost it), else the owner would
        # silently stop receiving after a broker restart.
        self._subscriptions: dict[str, int] = {}
        self._subscriptions_lock = threading.Lock()

    # -- paho callbacks: record, enqueue, return --------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._first_connack.set()
            self.inbox.put(Event("disconnected", reason=f"refused: {reason_code}"))
            return
        self._refusal = None
        # Nagle's algorithm holds a small write (a PUBACK, then a block request) until the
        # previous one is acknowledged; with delayed ACKs that is ~40 ms per round trip, which
        # capped a window of 1 at ~1.4 MiB/s over loopback (bench/ota.py). paho leaves it on.
        sock = client.socket()
        if sock is not None:
            # Not TCP (a unix socket, a websocket wrapper): nothing to tune.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not flags.session_present:
            with self._subscriptions_lock:
                wanted = list(self._subscriptions.items())
            for topic, qos in wanted:
                # paho only queues the SUBSCRIBE here; it never blocks its own thread.
                client.subscribe(topic, qos=qos)
        self._connected.set()
        self._first_connack.set()
        self.inbox.put(Event("connected", flag=bool(flags.session_present)))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._connected.clear()
        self.inbox.put(Event("disconnected", reason=str(reason_code)))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.inbox.put(Event("message", topic=message.topic, payload=message.payload))

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, props: Any
    ) -> None:
        # Every acknowledgement becomes an event (owners that do not track mids ignore them):
        # holding a lock of ours here while paho holds its own could deadlock with publish().
        failed = bool(getattr(reason_code, "is_failure", False))
        self.inbox.put(Event("published", topic=str(mid), flag=not failed, reason=str(reason_code)))

    # -- control ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, wait: float | None = None) -> None:
        """Connect in the background (paho retries with backoff); with ``wait``, block until
        the first CONNACK and raise BrokerConnectionError if it is a refusal or never comes."""
        properties = None
        clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if self.settings.protocol == 5:
            if self.settings.session_expiry is not None:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = self.settings.session_expiry
                clean_start = False
            else:
                clean_start = True
        try:
            self.client.connect_async(
                self.host,
                self.port,
                keepalive=self.settings.keepalive,
                clean_start=clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise BrokerConnectionError(self.settings.display_url, str(exc)) from None
        self.client.loop_start()
        self._started = True
        if wait is None:
            return
        if not self._first_connack.wait(wait):
            self.stop()
            raise BrokerConnectionError(self.settings.display_url, self._why_unreachable(wait))
        if self._refusal is not None:
            reason = self._refusal
            self.stop()
            raise BrokerConnectionError(self.settings.display_url, f"refused the login: {reason}")

    def _why_unreachable(self, waited: float) -> str:
        """paho retries quietly; one direct attempt names the cause (refused, TLS, timeout)."""
        import ssl

        try:
            raw = socket.create_connection((self.host, self.port), timeout=3)
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc} (is the broker running?)"
        with raw:
            _, _, tls, _, _ = parse_broker_url(self.settings.url)
            if tls or self.settings.ca_file:
                context = ssl.create_default_context(cafile=self.settings.ca_file)
                if self.settings.cert_file:
                    context.load_cert_chain(self.settings.cert_file, self.settings.key_file)
                try:
                    with context.wrap_socket(raw, server_hostname=self.host):
                        pass
                except (ssl.SSLError, OSError) as exc:
                    return f"TLS handshake failed: {exc}"
        return f"no MQTT answer within {waited:g} s"

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (or at the next connection); kept across reconnects."""
        with self._subscriptions_lock:
            self._subscriptions[topic] = qos
        result, _ = self.client.subscribe(topic, qos=qos)
        if result not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise FleetError(f"subscribe to {topic} failed: {mqtt.error_string(result)}")

    def unsubscribe(self, topic: str) -> None:
        with self._subscriptions_lock:
            self._subscriptions.pop(topic, None)
        self.client.unsubscribe(topic)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; the broker's acknowledgement arrives in ``inbox`` as an
        Event("published", topic=str(mid), flag=accepted)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def try_publish(self, topic: str, payload: bytes, *, qos: int = 1) -> bool:
        """Publish unless paho's outgoing queue (``max_queued``) is full; False then, and the
        message is not sent (a sender that can be asked again drops it rather than grow
        without bound)."""
        info = self.client.publish(topic, payload, qos=qos)
        return info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

    def publish_wait(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Publish and wait until the broker acknowledged it; FleetError otherwise."""
        info = self.publish(topic, payload, qos=qos, retain=retain)
        deadline = time.monotonic() + timeout
        while not info.is_published():
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise FleetError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            if time.monotonic() >= deadline:
                raise FleetError(f"publish to {topic}: not acknowledged within {timeout:g} s")
            time.sleep(0.005)

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly (no Will) and end the network thread."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()
