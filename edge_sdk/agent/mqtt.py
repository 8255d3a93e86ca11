"""The device agent over MQTT: the only module on the device side that uses paho (via
``edge_sdk._mqtt``).

paho's network thread only queues what arrives; this module's worker thread (the caller of
``MqttAgent.run``) drains the queue in batches, hands them to the core, and repeats timed-out
chunk requests once a second. SIGTERM and SIGINT end it cleanly: open downloads are closed (they
resume at the next start), the retained status says offline, and the session is left for the
broker to keep. A crash leaves the Will (offline) and the same resumable state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from edge_sdk._mqtt import BrokerSettings, Event, MqttConnection
from edge_sdk.agent.commands import AgentCommands, _onnxruntime_version
from edge_sdk.agent.config import (
    RESTART_EXIT_STATUS,
    AgentConfig,
    check_tls_files,
    device_profile_of,
    load_trust,
)
from edge_sdk.agent.core import UpdateAgent
from edge_sdk.agent.telemetry import TelemetryPublisher
from edge_sdk.errors import EdgeSDKError
from edge_sdk.store import ModelStore

__all__ = ["RESTART_EXIT_STATUS", "MqttAgent", "load_trust", "run_agent"]

_log = logging.getLogger("edge_sdk.agent")
_BATCH = 256
_SESSION_FILE = "agent-session"


class _Channel:
    def __init__(self, connection: MqttConnection, root: str) -> None:
        self.connection = connection
        self.root = root

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> None:
        self.connection.publish(self.root + suffix, payload, qos=1, retain=retain)

    def subscribe(self, suffix: str) -> None:
        self.connection.subscribe(self.root + suffix, qos=1)

    def unsubscribe(self, suffix: str) -> None:
        self.connection.unsubscribe(self.root + suffix)


class MqttAgent:
    """A device agent connected to its fleet's broker.

    Example: ``MqttAgent(load_agent_config("agent.toml")).run()`` (blocks until ``stop()``,
    SIGTERM or SIGINT).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        model_loader: Callable[[Path], Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``model_loader(path)`` replaces EdgeModel in the health check (an object with
        ``run``, ``warmup`` and ``close``), e.g. for a benchmark that moves random bytes.
        ``wall_clock`` is the device's clock (tests turn it back)."""
        self.config = config
        self._wall = wall_clock
        self.root = f"edge/v1/{config.fleet}/"
        self.trust = load_trust(config)
        check_tls_files(config)
        profile_name, budget, thermal_zones = device_profile_of(config)
        self.store = ModelStore(
            config.store, keep_previous=config.keep_previous, storage_budget=budget
        )
        status_topic = f"{self.root}devices/{config.device_id}/status"
        self.session = self._read_session()
        self.connection = MqttConnection(
            BrokerSettings(
                url=config.broker,
                client_id=config.effective_client_id,
                username=config.username,
                password=config.password,
                ca_file=None if config.tls_ca is None else str(config.tls_ca),
                cert_file=None if config.tls_cert is None else str(config.tls_cert),
                key_file=None if config.tls_key is None else str(config.tls_key),
                protocol=config.protocol,
                keepalive=config.keepalive,
                session_expiry=config.session_expiry,
                reconnect_max=config.reconnect_max,
                will_topic=status_topic,
                will_payload=self._offline_payload("connection lost"),
                will_factory=self._next_will,
                manual_ack_topics=frozenset({f"{self.root}devices/{config.device_id}/cmd"}),
            )
        )
        self._status_topic = status_topic
        self.core = UpdateAgent(
            config,
            self.store,
            self.trust,
            _Channel(self.connection, self.root),
            profile_name=profile_name,
            storage_budget=budget,
            update_timeout=config.update_timeout,
            model_loader=model_loader,
        )
        self.telemetry: TelemetryPublisher | None = None
        if config.telemetry_interval > 0:
            from edge_sdk.reports import SystemReader
            from edge_sdk.spool import Spool

            spool = Spool(
                config.effective_telemetry_spool, max_reports=config.telemetry_max_reports
            )

            def publish(suffix: str, payload: bytes, *, retain: bool = False) -> int:
                return int(
                    self.connection.publish(self.root + suffix, payload, qos=1, retain=retain).mid
                )

            self.telemetry = TelemetryPublisher(
                spool,
                publish,
                device_id=config.device_id,
                interval=config.telemetry_interval,
                system=SystemReader(
                    "/", thermal_zones=thermal_zones, disk_path=config.store.parent
                ),
                wall_clock=wall_clock,
            )
        from edge_sdk.reports import SystemReader

        self.commands = AgentCommands(
            self.core,
            self.trust,
            telemetry=self.telemetry,
            # A reader of its own: CPU % is measured since the reader's previous call, and a
            # diag must not shorten the interval of the next telemetry report.
            system=SystemReader("/", thermal_zones=thermal_zones, disk_path=config.store.parent),
            request_restart=self._request_restart,
            wall_clock=wall_clock,
        )
        if self.telemetry is not None:
            saved = self.commands.saved_interval()
            if saved is not None:
                try:
                    self.telemetry.set_interval(saved)
                except ValueError:
                    _log.warning("ignoring the saved telemetry interval %r", saved)
        self.core.status_extra.update(
            {
                "session": self.session,
                "onnxruntime_version": _onnxruntime_version(),
                "telemetry_interval_s": None if self.telemetry is None else self.telemetry.interval,
            }
        )
        self._command_topic = f"{self.root}devices/{config.device_id}/cmd"
        self._reply_topic = f"{self.root}devices/{config.device_id}/reply"
        self._stop = threading.Event()
        self._restart = False

    def stop(self) -> None:
        self._stop.set()

    # -- birth and death (docs/fleet-protocol.md, "Status") ------------------------------------

    def _read_session(self) -> int:
        try:
            return int((self.store.root / _SESSION_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _next_will(self) -> bytes:
        """Called by the connection before every attempt: the next session number, durable
        before the broker can hold a Will that carries it (so numbers never repeat)."""
        from edge_sdk.store import _write_atomically

        # The Unix time as a floor: a store that cannot save the counter (read-only, full)
        # still never repeats a number after a restart (unless the clock went back as well).
        self.session = max(self.session + 1, int(self._wall()))
        try:
            _write_atomically(self.store.root / _SESSION_FILE, f"{self.session}\n".encode())
        except (EdgeSDKError, OSError) as exc:
            _log.warning("session counter not saved: %s", exc)
        return self._offline_payload("connection lost")

    def _offline_payload(self, reason: str) -> bytes:
        document = {
            "device": self.config.device_id,
            "state": "offline",
            "fleet": self.config.fleet,
            "groups": list(self.config.groups),
            "session": self.session,
            "reason": reason,
        }
        return json.dumps(document, sort_keys=True).encode()

    def _request_restart(self) -> None:
        self._restart = True
        self._stop.set()

    # -- commands ------------------------------------------------------------------------------

    def _command(self, event: Event) -> None:
        if event.retain:
            # A command must be sent to be run, not found lying on the topic: a retained one
            # would run again at every reconnect (until its nonce said "replayed").
            _log.warning("ignoring a retained message on the command topic")
            self.connection.ack(event)
            return
        reply = self.commands.handle(event.payload)
        topic = self._reply_topic
        # A response topic outside this device's reply tree would be refused by the broker's
        # ACL (and must not be used to publish elsewhere), and one with wildcards is no topic:
        # the default topic then.
        wanted = event.response_topic
        if (
            wanted
            and (wanted == topic or wanted.startswith(topic + "/"))
            and not any(c in wanted for c in "+#\0")
            and len(wanted.encode()) < 1024
        ):
            topic = wanted
        info = self.connection.publish(topic, reply, qos=1, correlation=event.correlation)
        # Acknowledged to the broker only now: a command that arrived but was not answered
        # (a crash, a restart) comes again from the session.
        self.connection.ack(event)
        if self._restart:
            # The reply before the goodbye: the operator must not retry a restart that ran.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(5.0)

    def _dispatch(self, events: list[Event]) -> None:
        messages: list[tuple[str, bytes]] = []
        for event in events:
            if event.kind == "message" and event.topic == self._command_topic:
                if messages:
                    self.core.handle(messages)
                    messages = []
                try:
                    self._command(event)
                except Exception:  # never lose the rest of the batch to one command
                    _log.exception("a command could not be answered")
                continue
            if event.kind == "message":
                if event.topic.startswith(self.root):
                    messages.append((event.topic[len(self.root) :], event.payload))
                continue
            if messages:
                self.core.handle(messages)
                messages = []
            if event.kind == "published":
                if self.telemetry is not None:
                    self.telemetry.acknowledged(int(event.topic), event.flag)
            elif event.kind == "connected":
                _log.info(
                    "connected (session present: %s), session counter %d", event.flag, self.session
                )
                self.core.status_extra["session"] = self.session
                self.connection.subscribe(self._command_topic, qos=1)
                self.core.connected(event.flag)
                if self.telemetry is not None:
                    self.telemetry.connected()
            else:
                _log.warning("disconnected: %s", event.reason)
                self.core.disconnected()
                if self.telemetry is not None:
                    self.telemetry.disconnected()
        if messages:
            self.core.handle(messages)

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until stopped; returns the exit status: 0, or ``RESTART_EXIT_STATUS`` after a
        ``restart`` command."""
        if install_signals and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                # A stop asked for after a restart command wins: stop, do not execute again.
                self._restart = False
                self._stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        self.core.start()
        self.connection.start()
        next_tick = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                try:
                    first = self.connection.inbox.get(timeout=0.2)
                except queue.Empty:
                    first = None
                events = [] if first is None else [first]
                while len(events) < _BATCH:
                    try:
                        events.append(self.connection.inbox.get_nowait())
                    except queue.Empty:
                        break
                # Whatever one message or one tick raises (an I/O error the core did not expect),
                # the device keeps its connection, its Will and its other updates.
                try:
                    if events:
                        self._dispatch(events)
                    if time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + 1.0
                        self.core.tick()
                        if self.telemetry is not None:
                            self.telemetry.tick()
                except Exception:
                    _log.exception("the agent's worker caught an unexpected error; going on")
        finally:
            self.core.close()
            if self.connection.connected:
                try:
                    self.connection.publish_wait(
                        self._status_topic,
                        self._offline_payload("restart" if self._restart else "shutdown"),
                        retain=True,
                        timeout=2.0,
                    )
                except EdgeSDKError:
                    # A clean DISCONNECT would discard the Will and leave the status online:
                    # leave as a crash does, and the broker says offline for us.
                    _log.warning("could not publish the offline status; leaving the Will to")
                    self.connection.abort()
            self.connection.stop()
        return RESTART_EXIT_STATUS if self._restart else 0


def run_agent(config: AgentConfig, **options: Any) -> int:
    """Run the device agent until SIGTERM/SIGINT; see ``MqttAgent``."""
    return MqttAgent(config).run(**options)
