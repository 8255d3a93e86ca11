"""The device side of remote commands (edge_sdk.commands): check, remember, run, reply.

Every command gets exactly one reply, a refusal included, so an operator never waits out a
timeout to learn that a command was malformed or expired; nothing a command carries can end the
agent's loop (tests/test_commands_mqtt.py publishes fuzzed ones through the broker).

Replay protection is the nonce memory below, on disk beside the store. Its notion of "now" is
the later of the device's clock and the newest ``issued_at`` it accepted (a time the operator
signed): a device whose clock jumps backwards (a board without a real-time clock, a bad NTP
step) neither revives a command that expired nor refuses the operator's fresh ones as "from the
future". Nonces are kept beyond their expiry, up to ``MAX_NONCES``, so a command replayed after
such a jump is still recognised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_sdk.commands import Command, reply_document, request_id_of, verify_command
from edge_sdk.errors import CommandError, EdgeSDKError, StoreError
from edge_sdk.release import TrustStore

if TYPE_CHECKING:
    from edge_sdk.agent.core import UpdateAgent
    from edge_sdk.agent.telemetry import TelemetryPublisher
    from edge_sdk.reports import SystemReader

__all__ = ["AgentCommands", "NonceMemory"]

_log = logging.getLogger("edge_sdk.agent")

NONCES_FILE = "agent-nonces.log"
SETTINGS_FILE = "agent-settings.json"
# Operators send a few commands an hour; 4096 remembered nonces is days of them.
MAX_NONCES = 4096


class NonceMemory:
    """The nonces of accepted commands (with their expiry and issue times), appended to a log
    file with fsync before the command runs; compacted when it doubles."""

    def __init__(self, path: Path, *, limit: int = MAX_NONCES) -> None:
        self.path = path
        self.limit = limit
        self._nonces: dict[str, float] = {}  # nonce -> expires (epoch seconds)
        self.signed_high_water = 0.0  # the newest issued_at accepted
        self._lines = 0
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            _log.warning("command nonces not read from %s: %s", self.path, exc)
            return
        for line in text.splitlines():
            parts = line.split()
            # A torn last line (power cut during the append) is skipped.
            if len(parts) != 3:
                continue
            try:
                expires, issued = float(parts[1]), float(parts[2])
            except ValueError:
                continue
            self._nonces[parts[0]] = expires
            self.signed_high_water = max(self.signed_high_water, issued)
            self._lines += 1
        self._trim()

    def _trim(self) -> None:
        while len(self._nonces) > self.limit:
            oldest = min(self._nonces, key=self._nonces.__getitem__)
            del self._nonces[oldest]

    def now(self, wall: float) -> float:
        return max(wall, self.signed_high_water)

    def seen(self, nonce: str) -> bool:
        return nonce in self._nonces

    def remember(self, command: Command, now: float) -> None:
        """Record ``command``'s nonce durably; CommandError("busy") when every remembered
        nonce is still unexpired and there is no room."""
        assert command.expires_at is not None and command.issued_at is not None
        if len(self._nonces) >= self.limit:
            oldest = min(self._nonces, key=self._nonces.__getitem__)
            if self._nonces[oldest] > now:
                raise CommandError(
                    "busy", f"{self.limit} unexpired commands remembered; try again later"
                )
            del self._nonces[oldest]
        expires = command.expires_at.timestamp()
        issued = command.issued_at.timestamp()
        line = f"{command.nonce} {expires:.0f} {issued:.0f}\n".encode("ascii")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # Not remembered means replayable: refuse rather than run.
            raise CommandError(
                "failed", f"cannot record the command's nonce in {self.path}: {exc.strerror}"
            ) from None
        self._nonces[command.nonce] = expires
        self.signed_high_water = max(self.signed_high_water, issued)
        self._lines += 1
        if self._lines > 2 * self.limit:
            self._compact()

    def _compact(self) -> None:
        from edge_sdk.store import _write_atomically

        newest = sorted(self._nonces.items(), key=lambda item: item[1])[-self.limit :]
        high = f"{self.signed_high_water:.0f}"
        text = "".join(f"{nonce} {expires:.0f} {high}\n" for nonce, expires in newest)
        try:
            _write_atomically(self.path, text.encode("ascii"))
            self._lines = len(newest)
        except (StoreError, OSError) as exc:
            _log.warning("command nonces not compacted: %s", exc)


def _onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, read from package metadata: importing onnxruntime
    costs a second on a Pi, and the agent may not have loaded a model yet."""
    from importlib import metadata

    for distribution in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-training"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(distribution)
    return None


class AgentCommands:
    """Checks and runs the commands addressed to one device; ``handle`` returns the reply."""

    def __init__(
        self,
        core: UpdateAgent,
        trust: TrustStore,
        *,
        telemetry: TelemetryPublisher | None = None,
        system: SystemReader | None = None,
        request_restart: Callable[[], None] = lambda: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.trust = trust
        self.telemetry = telemetry
        self.system = system
        self.request_restart = request_restart
        self._wall = wall_clock
        self.memory = NonceMemory(core.store.root / NONCES_FILE)
        self.started = time.monotonic()
        self.counts: dict[str, int] = {"accepted": 0, "refused": 0, "failed": 0}
        self._actions: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "ping": self._ping,
            "info": self._info,
            "diag": self._diag,
            "set_telemetry_interval": self._set_telemetry_interval,
            "rollback": self._rollback,
            "restart": self._restart,
        }

    # -- settings that outlive a restart -----------------------------------------------------

    def saved_interval(self) -> float | None:
        """The telemetry interval an operator set remotely, if any (it outlives restarts and
        overrides agent.toml until agent.toml changes it)."""
        import json

        try:
            data = json.loads((self.core.store.root / SETTINGS_FILE).read_text())
            value = data.get("telemetry_interval")
            configured = data.get("configured_interval")
        except (OSError, ValueError, AttributeError):
            return None
        if configured != self.core.config.telemetry_interval:
            return None  # agent.toml changed since: the file on the device wins
        return float(value) if isinstance(value, int | float) else None

    def _save_interval(self, seconds: float) -> None:
        import json

        from edge_sdk.store import _write_atomically

        document = {
            "telemetry_interval": seconds,
            "configured_interval": self.core.config.telemetry_interval,
        }
        _write_atomically(self.core.store.root / SETTINGS_FILE, json.dumps(document).encode())

    # -- checking -----------------------------------------------------------------------------

    def handle(self, payload: bytes) -> bytes:
        """The reply to one command message (never raises)."""
        device = self.core.device_id
        wall = self._wall()
        now_epoch = self.memory.now(wall)
        now = datetime.fromtimestamp(now_epoch, timezone.utc)
        command: Command | None = None
        try:
            command = verify_command(
                payload, self.trust, fleet=self.core.config.fleet, device=device, now=now
            )
            if self.memory.seen(command.nonce):
                raise CommandError("replayed", f"nonce {command.nonce} was used before")
            self.memory.remember(command, now_epoch)
        except CommandError as exc:
            self.counts["refused"] += 1
            _log.warning("refused a command: %s", exc)
            return reply_document(
                device=device,
                request_id=command.request_id if command else request_id_of(payload),
                command=command.command if command else None,
                error=exc,
            )
        _log.info(
            "command %s (%s) from key %s", command.command, command.request_id, command.key_id
        )
        try:
            result = self._actions[command.command](command.args)
        except CommandError as exc:
            self.counts["failed"] += 1
            error = exc
        except EdgeSDKError as exc:
            self.counts["failed"] += 1
            error = CommandError("failed", str(exc))
        except Exception as exc:  # a bug in an action must not end the agent
            _log.exception("command %s failed", command.command)
            self.counts["failed"] += 1
            error = CommandError("failed", f"{type(exc).__name__}: {exc}")
        else:
            self.counts["accepted"] += 1
            return reply_document(
                device=device, request_id=command.request_id, command=command.command, result=result
            )
        return reply_document(
            device=device, request_id=command.request_id, command=command.command, error=error
        )

    # -- the commands ---------------------------------------------------------------------------

    def _ping(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "session": self.core.status_extra.get("session"),
        }

    def _info(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "status": self.core.status_document(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "onnxruntime_version": _onnxruntime_version(),
            "telemetry_interval_s": None if self.telemetry is None else self.telemetry.interval,
            "pid": os.getpid(),
            "executable": sys.executable,
        }

    def _diag(self, args: Mapping[str, Any]) -> dict[str, Any]:
        store = self.core.store
        checks = [
            {"model": c.name, "ok": c.ok, "version": c.version, "reason": c.reason}
            for c in store.verify_active()
        ]
        updates = {
            name: {"version": update.version, "phase": update.phase}
            for name, update in self.core._updates.items()
        }
        summary: dict[str, Any] = {
            "integrity": checks,
            "integrity_at_start": list(self.core.integrity),
            "updates": updates,
            "last_refusal": self.core._last_refusal,
            "store": {"used_mb": round(store.used_bytes() / 2**20, 3)},
            "commands": dict(self.counts),
            "clock": {
                "device": datetime.fromtimestamp(self._wall(), timezone.utc).isoformat(),
                "newest_signed": datetime.fromtimestamp(
                    self.memory.signed_high_water, timezone.utc
                ).isoformat()
                if self.memory.signed_high_water
                else None,
            },
        }
        if self.system is not None:
            summary["system"] = self.system.read()
        if self.telemetry is not None:
            summary["telemetry"] = self.telemetry.summary()
        return summary

    def _set_telemetry_interval(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.telemetry is None:
            raise CommandError(
                "unavailable", "telemetry is off on this device (telemetry_interval = 0)"
            )
        previous = self.telemetry.interval
        try:
            self.telemetry.set_interval(float(args["seconds"]))
        except ValueError as exc:
            raise CommandError("bad_arguments", str(exc)) from None
        try:
            self._save_interval(self.telemetry.interval)
        except (StoreError, OSError) as exc:
            _log.warning("telemetry interval not saved (applies until a restart): %s", exc)
        self.core.status_extra["telemetry_interval_s"] = self.telemetry.interval
        self.core.publish_status()
        return {"interval_s": self.telemetry.interval, "previous_s": previous}

    def _rollback(self, args: Mapping[str, Any]) -> dict[str, Any]:
        name = str(args["model"])
        undone, active = self.core.rollback_model(name, "rolled back by an operator command")
        return {"model": name, "undone": undone, "active": active}

    def _restart(self, args: Mapping[str, Any]) -> dict[str, Any]:
        self.request_restart()
        return {"restarting": True}
