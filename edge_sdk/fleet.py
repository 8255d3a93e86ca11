"""The operator's side of the fleet channel: the release server, desired state, rollouts.

- ``ReleaseServer`` publishes signed manifests (retained) and answers devices' block requests
  with chunks read from the model files (docs/fleet-protocol.md). It keeps no state per device,
  so several servers can share the load behind an MQTT 5 shared subscription
  (``$share/edge-sdk-release/...``): a request goes to one of them.
- ``FleetClient`` publishes signed desired state, watches the devices' retained status and job
  documents, and runs staged rollouts: canaries first, then growing waves, the group's own
  document last (so that devices offline during the rollout catch up when they return); it
  stops when a canary fails or the failure rate reaches the threshold.

Every command here is a library call the CLI (``edge-sdk fleet ...``) wraps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_sdk._mqtt import BrokerSettings, Event, MqttConnection
from edge_sdk.desired import DesiredModel, DesiredState, sign_desired
from edge_sdk.errors import EdgeSDKError, FleetError, ReleaseError
from edge_sdk.release import ReleaseManifest, SignedManifest, check_safe_name
from edge_sdk.transfer import decode_request, encode_chunk

if TYPE_CHECKING:
    from edge_sdk.fleet_telemetry import StatusRow

__all__ = [
    "DeviceRow",
    "FleetClient",
    "ReleaseServer",
    "RolloutResult",
    "load_release",
    "status_supersedes",
]

_log = logging.getLogger("edge_sdk.fleet")

SHARED_GROUP = "edge-sdk-release"
TERMINAL_STATES = frozenset({"succeeded", "failed", "rolled_back", "timed_out"})
FAILED_STATES = frozenset({"failed", "rolled_back", "timed_out"})


def topic_root(fleet: str) -> str:
    return f"edge/v1/{fleet}/"


def status_supersedes(current: Mapping[str, Any], incoming: Mapping[str, Any]) -> bool:
    """Whether a device's ``incoming`` status document replaces the ``current`` one.

    A status carries the agent's ``session`` counter, the same in its birth and its Will (as
    Sparkplug's bdSeq). When a device reconnects before the broker noticed its old connection
    was dead, the old connection's Will (offline) arrives after the new birth (online): an
    offline document of a lower session than the online one held is stale and ignored.
    Documents without a session (older agents) always replace."""
    old, new = current.get("session"), incoming.get("session")
    if incoming.get("state") != "offline" or current.get("state") != "online":
        return True
    if not isinstance(old, int) or not isinstance(new, int):
        return True
    return new >= old


# --------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class Release:
    """A signed manifest and the model file it describes, ready to serve."""

    manifest: ReleaseManifest
    text: str
    model_path: Path


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_release(
    manifest_path: str | os.PathLike[str], model_path: str | os.PathLike[str] | None = None
) -> Release:
    """Read a ``*.manifest.json`` and find its model (``X.onnx`` beside ``X.manifest.json``,
    as ``edge-sdk fleet release`` writes them); the model must match the manifest's size and
    sha256. Raises ReleaseError (the manifest) or FleetError (the model)."""
    path = Path(manifest_path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"cannot read the release manifest {path}: {exc}") from None
    manifest = SignedManifest.from_json(text).manifest
    if model_path is None:
        stem = path.name.removesuffix(".manifest.json").removesuffix(".json")
        model_path = path.with_name(f"{stem}.onnx")
    model = Path(model_path)
    try:
        size = model.stat().st_size
    except OSError as exc:
        raise FleetError(
            f"the model of {path.name} is not at {model} ({exc.strerror or exc}); "
            "edge-sdk fleet release writes it beside the manifest"
        ) from None
    if size != manifest.size:
        raise FleetError(f"{model} is {size} bytes, the manifest says {manifest.size}")
    if _hash_file(model) != manifest.sha256:
        raise FleetError(f"{model} does not match the manifest's sha256 {manifest.sha256}")
    return Release(manifest, text, model)


class ReleaseServer:
    """Serve releases to devices over MQTT until ``stop()``.

    Example::

        server = ReleaseServer(settings, "factory-7", ["digits-3.manifest.json"])
        server.start()            # publishes the manifests, subscribes to block requests
        server.serve_forever()    # or server.start_thread()
    """

    def __init__(
        self,
        settings: BrokerSettings,
        fleet: str,
        releases: Iterable[Release | str | os.PathLike[str]] = (),
        *,
        publish_manifests: bool = True,
        shared: bool = True,
    ) -> None:
        self.fleet = check_safe_name(fleet, field="fleet")
        self.root = topic_root(fleet)
        self.connection = MqttConnection(settings)
        self.publish_manifests = publish_manifests
        self.shared = shared and settings.protocol == 5
        self._releases: dict[tuple[str, int], Release] = {}
        self._files: dict[tuple[str, int], int] = {}
        self._retired: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.refused = 0
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.dropped = 0
        for release in releases:
            self.add(release if isinstance(release, Release) else load_release(release))

    @property
    def request_filter(self) -> str:
        plain = f"{self.root}devices/+/blocks/get"
        return f"$share/{SHARED_GROUP}/{plain}" if self.shared else plain

    def add(self, release: Release) -> None:
        key = (release.manifest.name, release.manifest.version)
        fd = os.open(release.model_path, os.O_RDONLY | os.O_CLOEXEC)
        with self._lock:
            old = self._files.pop(key, None)
            self._releases[key] = release
            self._files[key] = fd
            if old is not None:
                # The worker may be reading it right now: closed at stop(), never reused.
                self._retired.append(old)
        if self.connection.connected and self.publish_manifests:
            self._publish_manifest(release)

    def _publish_manifest(self, release: Release) -> None:
        manifest = release.manifest
        topic = f"{self.root}releases/{manifest.name}/{manifest.version}/manifest"
        self.connection.publish_wait(topic, release.text, retain=True)

    def start(self, wait: float = 10.0) -> None:
        self.connection.start(wait=wait)
        self._on_connected()

    def _on_connected(self) -> None:
        self.connection.subscribe(self.request_filter, qos=1)
        if self.publish_manifests:
            # Not waited for: the worker must go back to serving, and a link that drops again
            # re-sends them at the next connection anyway (they are retained).
            for release in list(self._releases.values()):
                manifest = release.manifest
                topic = f"{self.root}releases/{manifest.name}/{manifest.version}/manifest"
                self.connection.publish(topic, release.text, retain=True)

    def _serve(self, event: Event) -> None:
        parts = event.topic[len(self.root) :].split("/")
        if len(parts) != 4 or parts[0] != "devices" or parts[2:] != ["blocks", "get"]:
            return
        device = parts[1]
        self.requests += 1
        try:
            check_safe_name(device, field="device")
            request = decode_request(event.payload)
        except (ValueError, EdgeSDKError) as exc:
            self.refused += 1
            _log.warning("bad block request from %s: %s", device, exc)
            return
        key = (request.name, request.version)
        with self._lock:
            release = self._releases.get(key)
            fd = self._files.get(key)
        if release is None or fd is None or release.manifest.sha256 != request.sha256:
            self.refused += 1
            _log.warning("%s asked for %s %s, which this server does not serve", device, *key)
            return
        manifest = release.manifest
        topic = f"{self.root}releases/{manifest.name}/{manifest.version}/blocks/{device}"
        for index in request.indexes():
            if index >= manifest.chunk_count:
                continue
            offset, length = manifest.chunk_span(index)
            data = os.pread(fd, length, offset)
            if not self.connection.try_publish(topic, encode_chunk(index, data)):
                # The outgoing queue is full (BrokerSettings.max_queued): memory stays bounded,
                # and the device asks again for what does not come.
                self.dropped += 1
                return
            self.chunks_sent += 1
            self.bytes_sent += len(data)

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.connection.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if event.kind == "connected":
                    self._on_connected()
                elif event.kind == "message":
                    self._serve(event)
            except (EdgeSDKError, OSError) as exc:  # one bad event never ends the server
                _log.warning("release server: %s", exc)

    def start_thread(self, wait: float = 10.0) -> threading.Thread:
        self.start(wait)
        self._thread = threading.Thread(
            target=self.serve_forever, name="release-server", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.connection.stop()
        with self._lock:
            for fd in [*self._files.values(), *self._retired]:
                os.close(fd)
            self._files.clear()
            self._retired.clear()

    def __enter__(self) -> ReleaseServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the operator


@dataclass
class DeviceRow:
    """One device's line in a rollout: its last job document for the model."""

    device: str
    state: str = "pending"
    version: int | None = None
    percent: float | None = None
    reason: str | None = None
    active_version: int | None = None
    wave: int = 0


@dataclass
class RolloutResult:
    """How a deploy or rollback ended: every device's row; ``aborted`` with the reason."""

    name: str
    version: int
    rows: dict[str, DeviceRow] = field(default_factory=dict)
    aborted: str | None = None
    group_published: bool = False

    @property
    def succeeded(self) -> list[str]:
        return sorted(d for d, r in self.rows.items() if r.state == "succeeded")

    @property
    def deferred(self) -> list[str]:
        return sorted(d for d, r in self.rows.items() if r.state == "deferred")

    @property
    def failed(self) -> list[str]:
        return sorted(d for d, r in self.rows.items() if r.state in FAILED_STATES)

    @property
    def ok(self) -> bool:
        return (
            self.aborted is None
            and not self.failed
            and all(r.state in ("succeeded", "deferred") for r in self.rows.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aborted": self.aborted,
            "group_published": self.group_published,
            "devices": {
                d: {
                    "state": r.state,
                    "percent": r.percent,
                    "reason": r.reason,
                    "active_version": r.active_version,
                    "wave": r.wave,
                }
                for d, r in sorted(self.rows.items())
            },
        }


class FleetClient:
    """An operator's connection to the fleet: desired state, status, jobs, rollouts.

    Example::

        with FleetClient(settings, "factory-7") as fleet:
            result = fleet.deploy("digits-3.manifest.json", key, group="line-2", canary=2)
    """

    def __init__(self, settings: BrokerSettings, fleet: str) -> None:
        self.fleet = check_safe_name(fleet, field="fleet")
        self.root = topic_root(fleet)
        self.connection = MqttConnection(settings)
        self._cond = threading.Condition()
        self.statuses: dict[str, dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.desired_docs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, int], bytes] = {}
        # device -> its newest telemetry report (connect(telemetry=True))
        self.reports: dict[str, dict[str, Any]] = {}
        # (device, request id) of commands waiting for their reply -> the first reply, or None.
        self.replies: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._reply_topics: set[str] = set()
        self._received = 0
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def connect(
        self,
        wait: float = 10.0,
        settle: float = 0.5,
        *,
        telemetry: bool = False,
        documents: bool = True,
    ) -> FleetClient:
        """Connect, subscribe to the fleet's status, jobs and desired state, and wait until the
        retained documents stopped arriving for ``settle`` seconds. With ``telemetry`` also to
        the devices' reports: the retained newest one (``devices/+/telemetry/latest``) and the
        live stream, the newest of each device kept in ``reports``. ``documents=False``
        subscribes to nothing (for ``command`` alone: a large fleet's retained documents take
        a while to arrive)."""
        self.connection.start(wait=wait)
        self._reader = threading.Thread(target=self._read, name="fleet-reader", daemon=True)
        self._reader.start()
        suffixes = ["devices/+/status", "devices/+/jobs/+", "desired/#"] if documents else []
        if telemetry:
            suffixes += ["devices/+/telemetry/latest", "devices/+/telemetry"]
        for suffix in suffixes:
            self.connection.subscribe(self.root + suffix, qos=1)
        self.settle(settle)
        return self

    def settle(self, quiet: float = 0.5, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < deadline:
                seen = self._received
                self._cond.wait(quiet)
                if self._received == seen:
                    return

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(2)
        self.connection.stop()

    def __enter__(self) -> FleetClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.connection.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if event.kind != "message" or not event.topic.startswith(self.root):
                continue
            parts = event.topic[len(self.root) :].split("/")
            with self._cond:
                self._received += 1
                try:
                    self._record(parts, event.payload)
                except Exception:  # a device's own topics are its to fill: never end the reader
                    _log.warning("ignoring a malformed document on %s", event.topic)
                self._cond.notify_all()

    def _record(self, parts: list[str], payload: bytes) -> None:
        if parts[0] == "desired":
            self.desired_docs["/".join(parts)] = payload
            return
        if parts[0] == "releases" and len(parts) == 4 and parts[3] == "manifest":
            if parts[2].isdigit():
                self.manifests[(parts[1], int(parts[2]))] = payload
            return
        if parts[0] != "devices" or len(parts) < 3:
            return
        try:
            document = json.loads(payload) if payload else None
        except (ValueError, RecursionError):
            return
        if not isinstance(document, dict):
            return
        if parts[2] == "status" and len(parts) == 3:
            current = self.statuses.get(parts[1])
            if current is None or status_supersedes(current, document):
                self.statuses[parts[1]] = document
        elif parts[2] == "telemetry" and parts[3:] in ([], ["latest"]):
            from edge_sdk.fleet_telemetry import report_is_newer

            if report_is_newer(self.reports.get(parts[1]), document):
                self.reports[parts[1]] = document
        elif parts[2] == "jobs" and len(parts) == 4:
            self.jobs[(parts[1], parts[3])] = document
        elif parts[2] == "reply":
            key = (parts[1], document.get("request_id"))
            # Only replies someone waits for, and the first one: a QoS 1 command delivered
            # twice gets a second reply ("replayed") that must not replace the real one.
            if key in self.replies and self.replies[key] is None:
                self.replies[key] = document

    # -- commands ---------------------------------------------------------------------------

    def command(
        self,
        device: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        private_key: Ed25519PrivateKey,
        timeout: float = 10.0,
        lifetime: float = 60.0,
    ) -> dict[str, Any]:
        """Send one signed command to ``device`` and wait for its reply; return the reply
        document (``ok``, ``result``). Raises CommandError (refused or failed on the device:
        ``code``, ``reason``), CommandTimeoutError (no reply; the command waits in the device's
        session until ``lifetime`` seconds have passed, then it is refused as expired).

        Example: ``fleet.command("cam-01", "ping", private_key=key)["result"]["uptime_s"]``.
        """
        from datetime import timedelta

        from edge_sdk.commands import Command, sign_command
        from edge_sdk.errors import CommandError, CommandTimeoutError

        try:
            request = Command.create(
                self.fleet, device, command, args, lifetime=timedelta(seconds=lifetime)
            )
        except ReleaseError as exc:  # an unsafe device name
            raise FleetError(str(exc)) from None
        payload = sign_command(request, private_key)
        reply_root = f"{self.root}devices/{request.device}/reply"
        # Subscribed before the command goes out on this connection: the broker handles one
        # client's packets in order, so the reply cannot arrive before the subscription.
        # "reply/#" matches "reply" too: the MQTT 5 response topic below and the 3.1.1 reply.
        response_topic = f"{reply_root}/{self.connection.settings.client_id}"
        if reply_root not in self._reply_topics:
            self.connection.subscribe(reply_root + "/#", qos=1)
            self._reply_topics.add(reply_root)
        key = (request.device, request.request_id)
        with self._cond:
            self.replies[key] = None
        try:
            info = self.connection.publish(
                f"{self.root}devices/{request.device}/cmd",
                payload,
                qos=1,
                response_topic=response_topic,
                correlation=request.request_id.encode("ascii"),
            )
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (queued for later)
                raise FleetError(f"the command to {request.device} was not sent (paho {info.rc})")
            deadline = time.monotonic() + timeout
            with self._cond:
                while self.replies.get(key) is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CommandTimeoutError(
                            request.device,
                            command,
                            timeout,
                            request_id=request.request_id,
                            expires_at=request.to_dict()["expires_at"],
                        )
                    self._cond.wait(remaining)
                reply = self.replies[key]
                assert reply is not None
        finally:
            with self._cond:
                self.replies.pop(key, None)
        if not reply.get("ok"):
            error = reply.get("error")
            if not isinstance(error, dict):
                error = {}
            raise CommandError(
                str(error.get("code", "failed")),
                str(error.get("reason", "no reason given")),
                device=request.device,
            )
        return reply

    # -- documents --------------------------------------------------------------------------

    def publish_release(self, release: Release | str | os.PathLike[str]) -> ReleaseManifest:
        """Publish a signed manifest, retained, where devices look for it."""
        if not isinstance(release, Release):
            text = Path(release).read_text(encoding="utf-8").strip()
            manifest = SignedManifest.from_json(text).manifest
        else:
            text, manifest = release.text, release.manifest
        topic = f"{self.root}releases/{manifest.name}/{manifest.version}/manifest"
        self.connection.publish_wait(topic, text, retain=True)
        return manifest

    def _existing_models(self, suffix: str) -> dict[str, DesiredModel]:
        payload = self.desired_docs.get(suffix)
        if not payload:
            return {}
        try:
            return dict(DesiredState.from_dict(json.loads(payload)).models)
        except (ValueError, ReleaseError):
            return {}

    def set_desired(
        self,
        target_kind: str,
        target: str,
        name: str,
        model: DesiredModel,
        key: Ed25519PrivateKey,
    ) -> DesiredState:
        """Sign and publish (retained) the desired state of one device or group, keeping what it
        already said about other models."""
        suffix = f"desired/{'devices' if target_kind == 'device' else 'groups'}/{target}"
        with self._cond:
            models = self._existing_models(suffix)
        models[name] = model
        state = DesiredState(
            fleet=self.fleet, target_kind=target_kind, target=target, models=models
        )
        payload = sign_desired(state, key)
        self.connection.publish_wait(self.root + suffix, payload, retain=True)
        with self._cond:
            self.desired_docs[suffix] = payload.encode()
        return state

    # -- views ------------------------------------------------------------------------------

    def members(self, group: str) -> list[str]:
        """Devices whose last status names ``group``: online ones first, then by id."""
        with self._cond:
            found = [
                (status.get("state") != "online", device)
                for device, status in self.statuses.items()
                if isinstance(status.get("groups"), list) and group in status["groups"]
            ]
        return [device for _, device in sorted(found)]

    def status_rows(
        self,
        *,
        devices: Iterable[str] | None = None,
        group: str | None = None,
        reports: Mapping[str, Mapping[str, Any]] | None = None,
        now: float | None = None,
    ) -> list[StatusRow]:
        """A ``StatusRow`` per device from its status document and newest report (those read
        with ``connect(telemetry=True)``, or newer ones given in ``reports``: a
        ``TelemetryStore``'s). Example: ``fleet.status_rows(group="line-2")[0].p99_inference_ms``.
        """
        from edge_sdk.fleet_telemetry import report_is_newer, status_rows

        with self._cond:
            statuses = dict(self.statuses)
            newest = dict(self.reports)
        for device, report in (reports or {}).items():
            if report_is_newer(newest.get(device), report):
                newest[device] = dict(report)
        return status_rows(statuses, newest, now=now, devices=devices, group=group)

    def wait_update(self, seen: int, timeout: float) -> int:
        """Wait until more than ``seen`` messages arrived in all, or ``timeout`` seconds
        passed; returns the count (``wait_update(-1, 0)`` reads it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._received == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._received

    def job_rows(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            rows = [
                {**doc, "device": device, "model": model}
                for (device, model), doc in sorted(self.jobs.items())
                if name is None or model == name
            ]
            for row in rows:
                row["online"] = self.statuses.get(row["device"], {}).get("state") == "online"
        return rows

    # -- rollouts ---------------------------------------------------------------------------

    def _wait_wave(
        self,
        result: RolloutResult,
        devices: list[str],
        sequence: int,
        timeout: float,
        on_progress: Callable[[DeviceRow], None] | None,
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = set(devices)
        with self._cond:
            while pending:
                for device in list(pending):
                    job = self.jobs.get((device, result.name))
                    if not job or job.get("version") != result.version:
                        continue
                    if not isinstance(job.get("sequence"), int) or job["sequence"] < sequence:
                        continue
                    row = result.rows[device]
                    changed = (row.state, row.percent) != (job.get("state"), job.get("percent"))
                    row.state = str(job.get("state"))
                    row.version = job.get("version")
                    row.percent = job.get("percent")
                    row.reason = job.get("reason")
                    row.active_version = job.get("active_version")
                    if changed and on_progress is not None:
                        on_progress(row)
                    if row.state in TERMINAL_STATES:
                        pending.discard(device)
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        for device in pending:
            row = result.rows[device]
            row.state = "no_answer"
            row.reason = f"no final state within {timeout:g} s (offline?)"
            if on_progress is not None:
                on_progress(row)

    def rollout(
        self,
        name: str,
        model: DesiredModel,
        key: Ed25519PrivateKey,
        *,
        devices: Iterable[str] = (),
        group: str | None = None,
        canary: int = 0,
        abort_failure_rate: float = 1.0,
        wave_timeout: float = 600.0,
        on_progress: Callable[[DeviceRow], None] | None = None,
    ) -> RolloutResult:
        """Move ``devices`` and/or ``group`` to ``model`` in waves; see the module docstring."""
        if not 0.0 < abort_failure_rate <= 1.0:
            raise ValueError(f"abort_failure_rate must be in (0, 1], got {abort_failure_rate}")
        if canary < 0:
            raise ValueError("canary must be >= 0")
        targets = list(dict.fromkeys(devices))
        if group is not None:
            check_safe_name(group, field="group")
            targets += [d for d in self.members(group) if d not in targets]
        if not targets and group is None:
            raise FleetError("deploy to what? give --device or --group")
        result = RolloutResult(name, model.version)
        # Devices not online now would make a wave wait its whole timeout and then count as
        # failures. They are deferred instead: their documents (their own, or the group's) go
        # out only if the rollout completes, and they catch up from those when they return.
        with self._cond:
            online = {d for d, s in self.statuses.items() if s.get("state") == "online"}
        deferred = [d for d in targets if d not in online]
        rest = [d for d in targets if d in online]
        waves: list[list[str]] = []
        if canary:
            waves.append(rest[:canary])
            rest = rest[canary:]
        size = max(canary, 1) * 2 if group is not None else len(rest)
        while rest:
            waves.append(rest[:size])
            rest = rest[size:]
            size *= 2
        finished = failed = 0
        for number, wave in enumerate(waves):
            sequence = 0
            for device in wave:
                result.rows[device] = DeviceRow(device, state="queued", wave=number)
                state = self.set_desired("device", device, name, model, key)
                sequence = state.sequence if not sequence else min(sequence, state.sequence)
            self._wait_wave(result, wave, sequence, wave_timeout, on_progress)
            wave_failed = [d for d in wave if result.rows[d].state != "succeeded"]
            finished += len(wave)
            failed += len(wave_failed)
            if canary and number == 0 and wave_failed:
                result.aborted = f"canary failed: {', '.join(wave_failed)}"
                return result
            if failed and failed / finished >= abort_failure_rate:
                result.aborted = (
                    f"{failed} of {finished} device(s) failed, at or over the abort threshold "
                    f"of {abort_failure_rate:.0%}"
                )
                return result
        explicit = set(devices)
        for device in deferred:
            via = "its own" if device in explicit else f"group {group}'s"
            result.rows[device] = DeviceRow(
                device,
                state="deferred",
                reason=f"offline; takes version {model.version} from {via} desired state on return",
                wave=len(waves),
            )
            if device in explicit:
                self.set_desired("device", device, name, model, key)
            if on_progress is not None:
                on_progress(result.rows[device])
        if group is not None:
            self.set_desired("group", group, name, model, key)
            result.group_published = True
        return result

    def deploy(
        self,
        release: Release | str | os.PathLike[str],
        key: Ed25519PrivateKey,
        **options: Any,
    ) -> RolloutResult:
        """Publish a signed release and roll it out (``rollout`` options)."""
        manifest = self.publish_release(release)
        model = DesiredModel(manifest.version, manifest.sha256, manifest.downgrade)
        return self.rollout(manifest.name, model, key, **options)

    def release_sha256(self, name: str, version: int, timeout: float = 3.0) -> str:
        """The sha256 of a published release (its retained manifest)."""
        topic = f"{self.root}releases/{name}/{version}/manifest"
        self.connection.subscribe(topic, qos=1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while (name, version) not in self.manifests and time.monotonic() < deadline:
                self._cond.wait(0.1)
            payload = self.manifests.get((name, version))
        self.connection.unsubscribe(topic)
        if not payload:
            raise FleetError(
                f"no release manifest of {name} version {version} on the broker; "
                "publish it (edge-sdk fleet deploy) or give its manifest file"
            )
        return SignedManifest.from_json(payload).manifest.sha256

    def rollback(
        self,
        name: str,
        key: Ed25519PrivateKey,
        *,
        to_version: int | None = None,
        devices: Iterable[str] = (),
        group: str | None = None,
        **options: Any,
    ) -> RolloutResult:
        """Move devices back to ``to_version`` (default: the version they ran before) with a
        signed downgrade; devices keep previous versions, so nothing is downloaded."""
        self.settle(0.2)
        targets = list(devices)
        if group is not None:
            targets += [d for d in self.members(group) if d not in targets]
        if to_version is None:
            previous = set()
            with self._cond:
                for device in targets:
                    models = self.statuses.get(device, {}).get("models")
                    entry = models.get(name) if isinstance(models, dict) else None
                    if not isinstance(entry, dict):
                        continue
                    before, active = entry.get("previous"), entry.get("active")
                    # "previous" after a rollback is the newer version just left: going "back"
                    # to it would be a move forward.
                    if isinstance(before, int) and isinstance(active, int) and before < active:
                        previous.add(before)
            if len(previous) != 1:
                raise FleetError(
                    f"the devices ran {sorted(previous) or 'no'} older previous version(s) of "
                    f"{name}; say which with --to"
                )
            to_version = previous.pop()
        model = DesiredModel(to_version, self.release_sha256(name, to_version), downgrade=True)
        return self.rollout(name, model, key, devices=devices, group=group, **options)


def jobs_table(rows: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """``FleetClient.job_rows()`` as text cells, a header row first (the CLI's ``fleet jobs``)."""
    table = [["device", "online", "model", "version", "state", "percent", "active", "reason"]]
    for row in rows:
        percent = row.get("percent")
        if not isinstance(percent, int | float):
            percent = None
        active = row.get("active_version")
        table.append(
            [
                str(row["device"]),
                "yes" if row.get("online") else "no",
                str(row["model"]),
                str(row.get("version")),
                str(row.get("state")),
                "-" if percent is None else f"{percent:.0f}%",
                "-" if active is None else str(active),
                str(row.get("reason") or ""),
            ]
        )
    return table


def statuses_table(statuses: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows = [["device", "state", "groups", "models"]]
    for device, status in sorted(statuses.items()):
        models = status.get("models") or {}
        shown = ", ".join(f"{n} v{m.get('active')}" for n, m in sorted(models.items()))
        rows.append(
            [device, str(status.get("state")), ",".join(status.get("groups") or []), shown or "-"]
        )
    return rows
