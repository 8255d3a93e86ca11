"""The device agent over a serial cable: the agent's commands, its telemetry spool and model
pushes as requests on firmware_tools' framed link (docs/serial-link.md, "Commands carried by
edge-sdk"), for devices with no network.

Built from the same parts as the MQTT agent (agent/mqtt.py): the model store, the fleet's
trusted keys, the transport-agnostic core (``UpdateAgent``: verification, the store's
resumable download, the health check, activation, job documents), the signed commands
(``AgentCommands``) and the telemetry spool. Where the MQTT agent publishes, this one records
(the latest status and job documents) and returns them in replies.

Trust: reads (``info``, ``diag``, ``telemetry``) are unsigned, because physical access to the
cable is the trust for reading; whatever changes the device is signed by the fleet's keys
exactly as over MQTT: a command document (``cmd``), a release manifest (``push.begin``) whose
chunks are checked against the hashes it signs. Acknowledging telemetry (``telemetry.ack``)
only removes reports the host has taken.

One thread runs the handler (the link's ``serve``) and a second builds telemetry reports every
interval; a lock keeps them apart. Every request is answered, a refusal with a code and a
reason (``RemoteError``); nothing a request carries ends the serve loop.

    agent = SerialAgent(load_agent_config("agent.toml"))
    agent.run("/dev/ttyS1", baudrate=115200)     # until SIGTERM/SIGINT
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from edge_sdk.agent.commands import AgentCommands, _onnxruntime_version
from edge_sdk.agent.config import RESTART_EXIT_STATUS, AgentConfig, device_profile_of, load_trust
from edge_sdk.agent.core import UpdateAgent
from edge_sdk.agent.telemetry import TelemetryPublisher
from edge_sdk.errors import (
    BadVersionError,
    ChunkIndexError,
    ChunkVerificationError,
    DowngradeError,
    DownloadBusyError,
    DownloadIncompleteError,
    EdgeSDKError,
    InsufficientSpaceError,
    ManifestExpiredError,
    ManifestFormatError,
    ManifestNotYetValidError,
    ManifestTooLargeError,
    NotAddressedError,
    ReleaseError,
    SignatureError,
    SpoolError,
    StoreError,
    TransferError,
    VersionConflictError,
)
from edge_sdk.release import MAX_SAFE_INTEGER, SignedManifest, check_safe_name
from edge_sdk.store import ModelStore
from edge_sdk.transfer import decode_chunk, encode_chunk, ranges_of
from firmware_tools.errors import PortError, RemoteError
from firmware_tools.link import LinkEndpoint, LinkSettings

__all__ = [
    "KINDS",
    "RESTART_EXIT_STATUS",
    "SerialAgent",
    "decode_push_chunk",
    "encode_push_chunk",
    "run_serial_agent",
]

_log = logging.getLogger("edge_sdk.agent")

#: The request kinds the agent answers (docs/serial-link.md, "Commands carried by edge-sdk").
KINDS = (
    "info",
    "diag",
    "telemetry",
    "telemetry.ack",
    "cmd",
    "push.begin",
    "push.chunk",
    "push.finish",
)
# A push.chunk header is a short JSON line; a longer one is not a header.
_MAX_HEADER = 512
_DEFAULT_REPORTS = 100
_MAX_REPORTS = 10_000
# Room left in a response for everything around the reports.
_RESPONSE_MARGIN = 4096
# After the reply to a restart command, serve this long before stopping, so that the reply
# (and its acknowledgement) crosses the line.
_RESTART_GRACE = 1.5
# Seconds between attempts to reopen a port that failed (a USB adapter unplugged).
_REOPEN_INTERVAL = 1.0


# --------------------------------------------------------------------------- wire helpers


def encode_push_chunk(name: str, version: int, index: int, data: bytes | memoryview) -> bytes:
    """The payload of a ``push.chunk`` request: ``{"name","version"}`` as one JSON line, then
    the chunk message of the MQTT path (docs/fleet-protocol.md, "Chunk message")."""
    header = json.dumps({"name": name, "version": version}, separators=(",", ":"))
    return header.encode("ascii") + b"\n" + encode_chunk(index, data)


def decode_push_chunk(payload: bytes | memoryview) -> tuple[str, int, int, memoryview]:
    """``(name, version, index, data)`` of a ``push.chunk`` payload; ValueError saying what is
    wrong with it."""
    view = memoryview(payload)
    newline = bytes(view[: _MAX_HEADER + 1]).find(b"\n")
    if newline < 0:
        raise ValueError(f"no header line (a JSON object and a newline, at most {_MAX_HEADER} B)")
    header = _json_object(bytes(view[:newline]), {"name": str, "version": int})
    name, version = _release_of(header)
    chunk = decode_chunk(view[newline + 1 :])
    if chunk is None:
        raise ValueError("after the header comes a chunk message (EDGB, format 1, the index)")
    return name, version, chunk[0], chunk[1]


def _json_object(payload: bytes, fields: Mapping[str, type]) -> dict[str, Any]:
    """A request's JSON object with only ``fields`` (each of its type, or absent); an empty
    payload is an empty object."""
    if not payload.strip():
        return {}
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise ValueError("not a JSON object") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(document) - set(fields))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    for key, kind in fields.items():
        value = document.get(key)
        if value is None:
            continue
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}")
    return document


def _release_of(document: Mapping[str, Any]) -> tuple[str, int]:
    version = document.get("version")
    if not isinstance(version, int) or not 1 <= version <= MAX_SAFE_INTEGER:
        raise ValueError(f"version: expected an integer from 1, got {version!r}")
    try:
        name = check_safe_name(document.get("name"), field="name")
    except ReleaseError as exc:
        raise ValueError(str(exc)) from None
    return name, version


def _dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


# Refusal codes by error type, the most specific first (docs/serial-link.md).
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (ChunkVerificationError, "chunk_hash"),
    (ChunkIndexError, "bad_request"),
    (DownloadIncompleteError, "incomplete"),
    (TransferError, "no_push"),
    (ManifestFormatError, "malformed"),
    (ManifestExpiredError, "expired"),
    (ManifestNotYetValidError, "not_yet_valid"),
    (NotAddressedError, "not_addressed"),
    (DowngradeError, "downgrade"),
    (ManifestTooLargeError, "storage_budget"),
    (ReleaseError, "refused"),
    (BadVersionError, "bad_version"),
    (VersionConflictError, "conflict"),
    (DownloadBusyError, "busy"),
    (InsufficientSpaceError, "storage"),
    (SpoolError, "spool"),
    (StoreError, "storage"),
)


def _refusal(exc: EdgeSDKError) -> RemoteError:
    if isinstance(exc, SignatureError):
        # The codes of commands refused for their signature: unsigned, unknown_key, ...
        return RemoteError(exc.reason, str(exc))
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), "failed")
    return RemoteError(code, str(exc))


# --------------------------------------------------------------------------- the agent


class _Recorder:
    """The core's channel: keeps what the MQTT agent would publish (the latest document per
    topic suffix); nothing is subscribed to over a cable."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> None:
        self.documents[suffix] = bytes(payload)

    def subscribe(self, suffix: str) -> None:
        pass

    def unsubscribe(self, suffix: str) -> None:
        pass

    def jobs(self, device_id: str) -> dict[str, Any]:
        prefix = f"devices/{device_id}/jobs/"
        found = {}
        for suffix, payload in self.documents.items():
            if suffix.startswith(prefix):
                with contextlib.suppress(ValueError):
                    found[suffix[len(prefix) :]] = json.loads(payload)
        return found


class SerialAgent:
    """A device agent that answers a host over a serial link (``edge-sdk serial serve``).

    ``handle(kind, payload)`` is the link handler (thread-safe); ``run(port)`` opens the port,
    serves until ``stop()``, SIGTERM or SIGINT, and reopens it when it fails. ``model_loader``
    replaces EdgeModel in the health check, ``wall_clock`` the device's clock (tests).

    Raises AgentConfigError for unreadable trusted keys. Example:
    ``SerialAgent(load_agent_config("agent.toml")).run("/dev/ttyS1")``.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        model_loader: Callable[[Path], Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
        link_settings: LinkSettings | None = None,
    ) -> None:
        self.config = config
        self.link_settings = link_settings
        self.trust = load_trust(config)
        profile_name, budget, thermal_zones = device_profile_of(config)
        self.store = ModelStore(
            config.store, keep_previous=config.keep_previous, storage_budget=budget
        )
        self.channel = _Recorder()
        self.core = UpdateAgent(
            config,
            self.store,
            self.trust,
            self.channel,
            profile_name=profile_name,
            storage_budget=budget,
            update_timeout=config.update_timeout,
            model_loader=model_loader,
        )
        # No fleet channel: the core never asks a release server for chunks; the host pushes.
        self.core.disconnected()
        from edge_sdk.reports import SystemReader

        system = SystemReader("/", thermal_zones=thermal_zones, disk_path=config.store.parent)
        self.telemetry: TelemetryPublisher | None = None
        if config.telemetry_interval > 0:
            from edge_sdk.spool import Spool

            spool = Spool(
                config.effective_telemetry_spool, max_reports=config.telemetry_max_reports
            )
            # Offline for good: reports stay in the spool until a host takes and acknowledges
            # them (telemetry, telemetry.ack); nothing is ever published.
            self.telemetry = TelemetryPublisher(
                spool,
                lambda suffix, payload, retain=False: 0,
                device_id=config.device_id,
                interval=config.telemetry_interval,
                system=SystemReader(
                    "/", thermal_zones=thermal_zones, disk_path=config.store.parent
                ),
                wall_clock=wall_clock,
            )
        self.commands = AgentCommands(
            self.core,
            self.trust,
            telemetry=self.telemetry,
            system=system,
            request_restart=self._request_restart,
            wall_clock=wall_clock,
        )
        if self.telemetry is not None:
            saved = self.commands.saved_interval()
            if saved is not None:
                with contextlib.suppress(ValueError):
                    self.telemetry.set_interval(saved)
        self.core.status_extra.update(
            {
                "transport": "serial",
                "onnxruntime_version": _onnxruntime_version(),
                "telemetry_interval_s": None if self.telemetry is None else self.telemetry.interval,
            }
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restart = False
        self._link: LinkEndpoint | None = None
        self._started = False
        self._handlers: Mapping[str, Callable[[bytes], dict[str, Any] | bytes]] = {
            "info": self._info,
            "diag": self._diag,
            "telemetry": self._telemetry,
            "telemetry.ack": self._telemetry_ack,
            "cmd": self._command,
            "push.begin": self._push_begin,
            "push.chunk": self._push_chunk,
            "push.finish": self._push_finish,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """The core's start-up checks (an active model damaged on disk falls back). ``run``
        calls it; call it yourself before serving ``handle`` on a link of your own."""
        with self._lock:
            if not self._started:
                self._started = True
                self.core.start()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Close open downloads (they resume at the next push) and the spool."""
        with self._lock:
            self.core.close()
            if self.telemetry is not None:
                self.telemetry.spool.close()

    def _request_restart(self) -> None:
        self._restart = True
        timer = threading.Timer(_RESTART_GRACE, self._stop.set)
        timer.daemon = True
        timer.start()

    def tick(self) -> None:
        """Periodic work: a telemetry report every interval, into the spool."""
        if self.telemetry is not None:
            with self._lock:
                self.telemetry.tick()

    def serve(self, link: LinkEndpoint) -> None:
        """Answer requests on an open ``link`` until it closes or ``stop()``; ticks meanwhile.
        Raises PortError when the port fails."""
        self.start()
        self._link = link
        done = threading.Event()
        ticker = threading.Thread(
            target=self._tick_loop, args=(done,), name="serial-agent-ticks", daemon=True
        )
        ticker.start()
        try:
            link.serve(self.handle, stop=self._stop)
        finally:
            done.set()
            self._link = None
            ticker.join(5.0)

    def _tick_loop(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            try:
                self.tick()
            except Exception:  # never end the device's telemetry for one bad tick
                _log.exception("telemetry tick failed")

    def run(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        install_signals: bool = True,
        opener: Callable[..., Any] | None = None,
    ) -> int:
        """Open ``port`` (a device path or a pyserial URL), serve until stopped, and reopen the
        port whenever it fails (a USB adapter unplugged and plugged back). Returns 0, or
        ``RESTART_EXIT_STATUS`` after a ``restart`` command. Raises PortError when the port
        cannot be opened at start."""
        if opener is None:
            from firmware_tools.ymodem import open_port

            opener = open_port
        if install_signals and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                self._restart = False
                self._stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        opened = opener(port, baudrate=baudrate)
        _log.info("serving the agent's link on %s at %d baud", port, baudrate)
        try:
            while not self._stop.is_set():
                try:
                    with LinkEndpoint(opened, role="device", settings=self.link_settings) as link:
                        self.serve(link)
                except PortError as exc:
                    _log.warning("%s; reopening it", exc)
                with contextlib.suppress(Exception):
                    opened.close()
                opened = None
                while opened is None and not self._stop.wait(_REOPEN_INTERVAL):
                    try:
                        opened = opener(port, baudrate=baudrate)
                    except PortError as exc:
                        _log.debug("still cannot open %s: %s", port, exc)
        finally:
            if opened is not None:
                with contextlib.suppress(Exception):
                    opened.close()
            self.close()
        return RESTART_EXIT_STATUS if self._restart else 0

    # -- requests ---------------------------------------------------------------------------

    def handle(self, kind: str, payload: bytes) -> bytes:
        """The response to one request; raises RemoteError(code, reason) to refuse it."""
        handler = self._handlers.get(kind)
        if handler is None:
            raise RemoteError("unknown_kind", f"{kind!r}; this device answers {', '.join(KINDS)}")
        try:
            with self._lock:
                result = handler(payload)
        except ValueError as exc:
            raise RemoteError("bad_request", f"{kind}: {exc}") from None
        except EdgeSDKError as exc:
            raise _refusal(exc) from None
        except OSError as exc:
            raise RemoteError("storage", f"{type(exc).__name__}: {exc}") from None
        return result if isinstance(result, bytes) else _dumps(result)

    def _info(self, payload: bytes) -> dict[str, Any]:
        _json_object(payload, {})
        import firmware_tools

        # The result of the signed info command, unsigned here: the cable is the trust for
        # reads (the module docstring).
        result = self.commands.read_only("info")
        result["jobs"] = self.channel.jobs(self.config.device_id)
        result["firmware_tools_version"] = firmware_tools.__version__
        link = self._link
        if link is not None:
            result["link"] = {
                "version": link.version,
                "max_payload": link.max_payload,
                "window": link.window,
                "max_message": link.max_message,
            }
        return result

    def _diag(self, payload: bytes) -> dict[str, Any]:
        _json_object(payload, {})
        return self.commands.read_only("diag")

    def _spool(self) -> TelemetryPublisher:
        if self.telemetry is None:
            raise RemoteError(
                "unavailable", "telemetry is off on this device (telemetry_interval = 0)"
            )
        return self.telemetry

    def _telemetry(self, payload: bytes) -> dict[str, Any]:
        request = _json_object(payload, {"limit": int, "fresh": bool})
        limit = request.get("limit", _DEFAULT_REPORTS)
        if not 1 <= limit <= _MAX_REPORTS:
            raise ValueError(f"limit: 1 to {_MAX_REPORTS}, got {limit}")
        telemetry = self._spool()
        fresh = telemetry.report_now() if request.get("fresh", True) else None
        spool = telemetry.spool
        stored = spool.reports(limit=limit)
        dropped = spool.dropped()
        pending = spool.pending()
        link = self._link
        budget = (link.max_message if link is not None else 4 << 20) - _RESPONSE_MARGIN
        reports: list[dict[str, Any]] = []
        used = 0
        for seq, data in stored:
            try:
                report = json.loads(data)
            except ValueError:
                report = {"schema": 1, "device": self.config.device_id, "unreadable": True}
            # As the MQTT agent sends them (agent/telemetry.py): the spool's seq, historical
            # for every report but the one made for this request, the eviction count now.
            report.update({"seq": seq, "historical": seq != fresh, "dropped": dropped})
            used += len(_dumps(report)) + 1
            if reports and used > budget:
                break
            reports.append(report)
        return {
            "reports": reports,
            "pending": pending,
            "dropped": dropped,
            "more": len(reports) < pending,
        }

    def _telemetry_ack(self, payload: bytes) -> dict[str, Any]:
        request = _json_object(payload, {"up_to": int})
        up_to = request.get("up_to")
        if up_to is None or up_to < 0:
            raise ValueError("up_to: the seq of the newest report taken (an integer >= 0)")
        spool = self._spool().spool
        acknowledged = 0
        while True:
            batch = spool.reports(limit=500)
            taken = [seq for seq, _ in batch if seq <= up_to]
            for seq in taken:
                spool.ack(seq)
            acknowledged += len(taken)
            if len(taken) < len(batch) or not batch:
                break
        return {"acknowledged": acknowledged, "pending": spool.pending()}

    def _command(self, payload: bytes) -> bytes:
        # Exactly the MQTT path's checks and reply (agent/commands.py): signature, fleet and
        # device, expiry, replay; the reply says ok or the refusal's code.
        return self.commands.handle(payload)

    def _job(self, name: str) -> Any:
        return self.channel.jobs(self.config.device_id).get(name)

    def _push_begin(self, payload: bytes) -> dict[str, Any]:
        missing = self.core.begin_push(payload)  # refusals land in the status's last_refusal
        manifest = SignedManifest.from_json(payload).manifest
        return {
            "name": manifest.name,
            "version": manifest.version,
            "sha256": manifest.sha256,
            "size": manifest.size,
            "chunk_size": manifest.chunk_size,
            "chunks": manifest.chunk_count,
            "missing": [list(span) for span in ranges_of(missing or ())],
            "state": "succeeded" if missing is None else "downloading",
            "job": self._job(manifest.name),
        }

    def _push_chunk(self, payload: bytes) -> dict[str, Any]:
        name, version, index, data = decode_push_chunk(payload)
        return {"new": self.core.push_chunks(name, version, [(index, data)])}

    def _push_finish(self, payload: bytes) -> dict[str, Any]:
        name, version = _release_of(_json_object(payload, {"name": str, "version": int}))
        state, reason = self.core.finish_push(name, version)
        return {
            "name": name,
            "version": version,
            "state": state,
            "reason": reason,
            "job": self._job(name),
            "status": self.core.status_document(),
        }


def run_serial_agent(config: AgentConfig, port: str, **options: Any) -> int:
    """Serve the agent on ``port`` until SIGTERM/SIGINT; see ``SerialAgent.run``."""
    return SerialAgent(config).run(port, **options)
