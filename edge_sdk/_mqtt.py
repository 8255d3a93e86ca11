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
import logging
import queue
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_sdk._mqtt_url import parse_broker_url
from edge_sdk.errors import BrokerConnectionError, FleetError

__all__ = ["BrokerSettings", "Event", "MqttConnection", "parse_broker_url"]

_log = logging.getLogger(__name__)


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
    # Called before every connection attempt for a fresh Will payload (a session counter in the
    # spirit of Sparkplug B's bdSeq: the Will and the birth that follows carry the same number).
    will_factory: Callable[[], bytes] | None = None
    # The owner acknowledges each QoS 1 message itself (``MqttConnection.ack``) once it has
    # made it durable; until then the broker keeps it and re-sends it after a reconnect.
    manual_ack: bool = False
    # Topics whose messages the owner acknowledges itself while every other message is
    # acknowledged on arrival (the agent's command topic: acknowledged once answered).
    manual_ack_topics: frozenset[str] = frozenset()

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
    """What the network thread saw: kind "message" (topic, payload; over MQTT 5 also the
    request's ``response_topic`` and ``correlation`` data), "connected" (session present in
    ``flag``), "disconnected" (reason) or "published" (topic = the mid, flag = accepted)."""

    kind: str
    topic: str = ""
    payload: bytes = b""
    flag: bool = False
    reason: str = ""
    response_topic: str | None = None
    correlation: bytes | None = None
    # For MqttConnection.ack: the packet id, its QoS, and which connection it came on.
    mid: int = 0
    qos: int = 0
    connection: int = 0
    retain: bool = False


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
            manual_ack=settings.manual_ack or bool(settings.manual_ack_topics),
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
                # ssl names no file in "[Errno 2] No such file or directory": name it here.
                for role, name in (
                    ("CA file", settings.ca_file),
                    ("client certificate", settings.cert_file),
                    ("client key", settings.key_file),
                ):
                    try:
                        if name is not None:
                            with Path(name).open("rb"):
                                pass
                    except OSError as missing:
                        reason = f"TLS files: cannot read the {role} {name}: {missing.strerror}"
                        raise BrokerConnectionError(settings.display_url, reason) from None
                words = _ssl_words(exc) if isinstance(exc, ssl.SSLError) else str(exc)
                raise BrokerConnectionError(settings.display_url, f"TLS files: {words}") from None
        if settings.will_topic is not None:
            self.client.will_set(settings.will_topic, settings.will_payload, qos=1, retain=True)
            if settings.will_factory is not None:
                self.client.on_pre_connect = self._on_pre_connect
        self.client.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)
        self.client.max_inflight_messages_set(settings.max_inflight)
        self.client.max_queued_messages_set(settings.max_queued)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_log = self._on_log
        self._connected = threading.Event()
        self._first_connack = threading.Event()
        self._refusal: str | None = None
        # Why the last connection attempt failed in TLS, and what was last logged about it.
        self._tls_failure: str | None = None
        self._logged_failure: str | None = None
        self._started = False
        self.connection_number = 0  # CONNACKs so far: which connection a message came on
        # topic -> qos of what the owner subscribed to: re-subscribed after a reconnect that
        # found no session (a clean session, or a broker that lost it), else the owner would
        # silently stop receiving after a broker restart.
        self._subscriptions: dict[str, int] = {}
        self._subscriptions_lock = threading.Lock()

    # -- paho callbacks: record, enqueue, return --------------------------------------------

    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        factory, topic = self.settings.will_factory, self.settings.will_topic
        if factory is None or topic is None:
            return
        try:
            payload = factory()
        except Exception:
            # paho re-raises from its callbacks and its network thread would end: keep the
            # last Will and connect anyway.
            _log.exception("the Will factory failed; keeping the previous Will")
            return
        # paho reads the Will when it builds CONNECT, right after this callback.
        client.will_set(topic, payload, qos=1, retain=True)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._first_connack.set()
            self.inbox.put(Event("disconnected", reason=f"refused: {reason_code}"))
            return
        self._refusal = None
        self._tls_failure = self._logged_failure = None
        # Connected: no log hook on the hot path (paho formats every line it hands on_log).
        client.on_log = None
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
        self.connection_number += 1
        self._connected.set()
        self._first_connack.set()
        self.inbox.put(Event("connected", flag=bool(flags.session_present)))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._connected.clear()
        client.on_log = self._on_log
        self.inbox.put(Event("disconnected", reason=str(reason_code)))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if (
            self.settings.manual_ack_topics
            and not self.settings.manual_ack
            and message.topic not in self.settings.manual_ack_topics
        ):
            client.ack(message.mid, message.qos)
        properties = getattr(message, "properties", None)
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        self.inbox.put(
            Event(
                "message",
                topic=message.topic,
                payload=message.payload,
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation=bytes(correlation) if isinstance(correlation, bytes) else None,
                mid=message.mid,
                qos=message.qos,
                retain=bool(message.retain),
                connection=self.connection_number,
            )
        )

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, props: Any
    ) -> None:
        # Every acknowledgement becomes an event (owners that do not track mids ignore them):
        # holding a lock of ours here while paho holds its own could deadlock with publish().
        failed = bool(getattr(reason_code, "is_failure", False))
        self.inbox.put(Event("published", topic=str(mid), flag=not failed, reason=str(reason_code)))

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` around a connection attempt
        # (loop_forever) without the exception; sys.exc_info() still holds it there.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            # A certificate this side refused, or (TLS 1.2) a broker's alert in the handshake,
            # is final; anything else (a reset mid-handshake) may pass.
            alert = _describe_alert(exc.reason or "", self.settings)
            final = isinstance(exc, ssl.SSLCertVerificationError) or alert is not None
            self._tls_refused(_describe_tls_error(exc, self.settings, self.host), final=final)

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        # Under TLS 1.3 the broker's refusal of this client's certificate arrives as an alert
        # on the first read after the handshake; paho reports it only in its log ("failed to
        # receive on socket: [SSL: <reason>] ...") and then calls on_disconnect. Hooked only
        # while not connected.
        if level != mqtt.MQTT_LOG_ERR or not buf.startswith("failed to receive on socket"):
            return
        match = _SSL_REASON.search(buf)
        refusal = _describe_alert(match.group(1), self.settings) if match else None
        if refusal is not None:
            self._tls_refused(refusal, final=True)

    def _tls_refused(self, reason: str, *, final: bool) -> None:
        self._tls_failure = reason
        if reason != self._logged_failure:
            # Once per cause, not once per retry: a device with a wrong CA retries for days.
            self._logged_failure = reason
            _log.warning("MQTT broker %s: %s", self.settings.display_url, reason)
        if final:
            # A certificate refused by either side: no retry changes that, so
            # start(wait=...) need not sit out its timeout.
            self._first_connack.set()

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
        if self._tls_failure is not None and not self._connected.is_set():
            reason = self._tls_failure
            self.stop()
            raise BrokerConnectionError(self.settings.display_url, reason)
        if self._refusal is not None:
            reason = self._refusal
            self.stop()
            raise BrokerConnectionError(self.settings.display_url, f"refused the login: {reason}")

    def _why_unreachable(self, waited: float) -> str:
        """paho retries quietly; one direct attempt names the cause (refused, TLS, timeout)."""
        try:
            raw = socket.create_connection((self.host, self.port), timeout=3)
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc} (is the broker running?)"
        with raw:
            _, _, tls, _, _ = parse_broker_url(self.settings.url)
            if tls or self.settings.ca_file:
                try:
                    context = ssl.create_default_context(cafile=self.settings.ca_file)
                    if self.settings.cert_file:
                        # The certificate paho presents: a broker that requires one judges it.
                        context.load_cert_chain(self.settings.cert_file, self.settings.key_file)
                    with context.wrap_socket(raw, server_hostname=self.host) as channel:
                        # Under TLS 1.3 the broker checks a client certificate after this
                        # side's handshake is over and refuses it with an alert that only the
                        # next read sees (RFC 8446, 4.4.2.4); one it accepted waits for CONNECT.
                        channel.settimeout(_ALERT_WAIT)
                        with contextlib.suppress(TimeoutError):
                            channel.recv(1)
                except ssl.SSLError as exc:
                    return _describe_tls_error(exc, self.settings, self.host)
                except OSError as exc:
                    return f"TLS handshake failed: {exc.strerror or exc}"
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
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; the broker's acknowledgement arrives in ``inbox`` as an
        Event("published", topic=str(mid), flag=accepted). ``response_topic`` and
        ``correlation`` are MQTT 5 request/response properties (dropped over MQTT 3.1.1)."""
        properties = None
        if self.settings.protocol == 5 and (response_topic or correlation is not None):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

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

    def ack(self, event: Event) -> None:
        """Acknowledge a message received with ``manual_ack``, once it is durable. A message
        from an earlier connection is not acknowledged: its packet id may now name another
        message, and the broker re-sends the old one anyway (the owner sees it twice)."""
        if (
            (self.settings.manual_ack or event.topic in self.settings.manual_ack_topics)
            and event.qos > 0
            and event.connection == self.connection_number
            and self.connected
        ):
            self.client.ack(event.mid, event.qos)

    def abort(self) -> None:
        """End the connection without a DISCONNECT, as a crash would: the broker publishes the
        Will (used when the owner could not publish its own goodbye)."""
        if not self._started:
            return
        self._started = False
        self.client.on_disconnect = None
        shutdown = getattr(self.client.socket(), "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(OSError):
                shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly (no Will) and end the network thread."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()


# -- naming TLS failures ------------------------------------------------------------------------

# Seconds to wait, after a TLS 1.3 handshake, for the broker's verdict on a client certificate.
_ALERT_WAIT = 1.5
# OpenSSL's reason in an ssl error's text, as paho logs it: "[SSL: TLSV1_ALERT_UNKNOWN_CA] ..."
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
_SSL_NOISE = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")
# OpenSSL's X509_V_ERR_* codes (openssl/x509_vfy.h) that call for their own advice.
_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH = 62, 64
_CLIENT_FILES = "agent.toml [tls] cert and key; --cert and --tls-key for the fleet CLI"
# A broker refuses a client certificate with a TLS alert (RFC 8446, 6.2), which OpenSSL names
# in SSLError.reason. Measured against Mosquitto 2.0 with OpenSSL 3.0 (tests/test_fleet_tls.py).
_BROKER_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": (
        f"the broker requires a client certificate and this client gave none ({_CLIENT_FILES})"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "the broker refused this client's certificate: it is not signed by a CA the broker "
        "trusts (its cafile)"
    ),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "the broker refused this client's certificate: it has expired (or is not valid yet); "
        "issue a new one"
    ),
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "the broker refused this client's certificate: it has been revoked (the broker's crlfile)"
    ),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "the broker refused this client's certificate: it is not meant for a client (its "
        "extended key usage lacks clientAuth)"
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker refused this client's certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": (
        "this client and the broker share no TLS version (the broker's tls_version)"
    ),
}


def _describe_alert(reason: str, settings: BrokerSettings) -> str | None:
    """The broker's TLS alert ``reason`` (OpenSSL's name) in words, or None if not one of
    the refusals we know."""
    refusal = _BROKER_ALERTS.get(reason)
    if refusal is None and reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and not settings.cert_file:
        # What a TLS 1.2 broker says when it requires a certificate and got none.
        refusal = (
            "the broker refused the handshake; it may require a client certificate, and this "
            f"client gave none ({_CLIENT_FILES})"
        )
    return None if refusal is None else f"TLS handshake failed: {refusal} (alert {reason})"


def _describe_tls_error(exc: ssl.SSLError, settings: BrokerSettings, host: str) -> str:
    """Which side refused which certificate, and what to check, without ssl's traceback."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _CERT_HAS_EXPIRED:
            problem = "the broker's certificate has expired: the broker needs a new one"
        elif code == _CERT_NOT_YET_VALID:
            problem = "the broker's certificate is not valid yet (is this machine's clock right?)"
        elif code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
            problem = (
                f"the broker's certificate is not made out to {host}: use the name or address "
                "in its subjectAltName"
            )
        else:
            trusted = settings.ca_file or "the system's trusted CAs"
            problem = (
                f"the broker's certificate is not signed by a CA in {trusted} (give the CA that "
                "signed it: agent.toml [tls] ca, --ca for the fleet CLI)"
            )
        return f"TLS handshake failed: certificate verify failed ({exc.verify_message}): {problem}"
    described = _describe_alert(exc.reason or "", settings)
    return described or f"TLS handshake failed: {_ssl_words(exc)}"


def _ssl_words(exc: ssl.SSLError) -> str:
    """ssl's message without its "[SSL: ...]" prefix and "(_ssl.c:NNN)" suffix."""
    text = _SSL_NOISE.sub("", str(exc.strerror or exc))
    reason = getattr(exc, "reason", None)  # absent on an SSLError made by hand
    return f"{text} ({reason})" if reason and reason not in text else text
