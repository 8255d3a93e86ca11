"""The device side of remote commands (edge_sdk.commands): check, remember, run, reply.

Every command gets exactly one reply, a refusal included, so an operator never waits out a
timeout to learn that a command was malformed or expired; nothing a command carries can end the
agent's loop (tests/test_commands_mqtt.py publishes fuzzed ones through the broker).

Replay protection is the nonce memory below, on disk beside the store. Expiry is judged by the
later of the device's clock and the newest ``issued_at`` it accepted (a time the operator
signed), so a device whose clock jumps backwards (a board without a real-time clock, a bad NTP
step) revives no expired command. That signed time only moves with commands that were not
ahead of the device's own clock by more than the allowed skew, so a run of commands signed in
the future cannot push the device's notion of time forward step by step. Nonces are kept
beyond their expiry, up to ``MAX_NONCES``, so a command replayed after such a jump is still
recognised. When the nonce file cannot be written (a read-only or failing store), commands
that change something are refused (code "storage"); ping, info and diag still answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_sdk.commands import (
    CLOCK_SKEW,
    READ_ONLY_COMMANDS,
    Command,
    reply_document,
    request_id_of,
    verify_command,
)
from edge_sdk.errors import CommandError, EdgeSDKError, StoreError
from edge_sdk.release import TrustStore

if TYPE_CHECKING:
    from edge_sdk.agent.core import UpdateAgent
    from edge_sdk.agent.telemetry import TelemetryPublisher
    from edge_sdk.reports import SystemReader

__all__ = ["AgentCommands", "NonceMemory"]

_log = logging.getLogger("edge_sdk.agent")

NONCES_FILE = "agent-nonces.log"
_NONCE_LINE = re.compile(r"([0-9a-f]{32,64}) ([0-9]{1,12}) ([0-9]{1,12})")
SETTINGS_FILE = "agent-settings.json"
# Operators send a few commands an hour; 4096 remembered nonces is days of them.
MAX_NONCES = 4096


class NonceMemory:
    """The nonces of accepted commands (with their expiry and issue times), appended to a log
    file with fsync before the command runs; compacted when it doubles."""

    def __init__(self, path: Path, *, limit: int = MAX_NONCES, started: float = 0.0) -> None:
        self.path = path
        self.limit = limit
        self._nonces: dict[str, float] = {}  # nonce -> expires (epoch seconds)
        self.signed_high_water = 0.0  # the newest issued_at accepted
        self._lines = 0
        # Set when the file could not be read: then only commands issued after ``started``
        # (this process's start) can be told apart from replays.
        self.unreadable: str | None = None
        self.started = started
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.unreadable = f"{self.path}: {exc.strerror or exc}"
            _log.error("command nonces not readable (%s): only newer commands run", exc)
            return
        complete, _, torn = data.rpartition(b"\n")
        if torn:
            # A power cut during an append: cut the torn line off, or the next append would be
            # glued to it and that command's nonce lost at the next start.
            _log.warning("dropping a torn last line of %s", self.path)
            try:
                with self.path.open("r+b") as log:
                    log.truncate(len(complete) + 1 if complete else 0)
                    os.fsync(log.fileno())
            except OSError as exc:
                self.unreadable = f"{self.path}: {exc.strerror or exc}"
        for line in complete.decode("ascii", "replace").splitlines():
            match = _NONCE_LINE.fullmatch(line)
            if match is None:
                _log.warning("skipping a damaged line of %s", self.path)
                continue
            self._nonces[match[1]] = float(match[2])
            self.signed_high_water = max(self.signed_high_water, float(match[3]))
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

    def remember(self, command: Command, now: float, *, wall: float, durable: bool = True) -> None:
        """Record ``command``'s nonce, durably when ``durable``: CommandError "storage" when
        it cannot be written (a replayable command must not run), "busy" when every
        remembered nonce is still unexpired and there is no room. Without ``durable`` (a
        read-only command), a failed write keeps the nonce in memory only."""
        assert command.expires_at is not None and command.issued_at is not None
        issued = command.issued_at.timestamp()
        if self.unreadable is not None and durable and issued < self.started:
            raise CommandError(
                "storage",
                f"the record of earlier commands is unreadable ({self.unreadable}); only "
                "commands issued after the agent started run",
            )
        if len(self._nonces) >= self.limit:
            oldest = min(self._nonces, key=self._nonces.__getitem__)
            if self._nonces[oldest] > now:
                raise CommandError(
                    "busy", f"{self.limit} unexpired commands remembered; try again later"
                )
            del self._nonces[oldest]
        expires = command.expires_at.timestamp()
        line = f"{command.nonce} {expires:.0f} {issued:.0f}\n".encode("ascii")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if durable:
                # Not remembered means replayable: refuse rather than run.
                raise CommandError(
                    "storage",
                    f"cannot record the command in {self.path}: {exc.strerror or exc} (is the "
                    "store read-only or full? diag says more)",
                ) from None
            _log.warning("nonce of a read-only command kept in memory only: %s", exc)
        else:
            self._lines += 1
        self._nonces[command.nonce] = expires
        # Only a time not ahead of this device's own clock (beyond the skew) may move it: a run
        # of commands signed in the future cannot ratchet it forward.
        if issued <= wall + CLOCK_SKEW.total_seconds():
            self.signed_high_water = max(self.signed_high_water, issued)
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
        self.memory = NonceMemory(core.store.root / NONCES_FILE, started=wall_clock())
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
        try:
            return self._handle(payload)
        except Exception as exc:  # a bug must not cost the reply, nor the agent its loop
            _log.exception("command handling failed")
            self.counts["failed"] += 1
            return reply_document(
                device=self.core.device_id,
                request_id=request_id_of(payload),
                command=None,
                error=CommandError("failed", f"{type(exc).__name__}: {exc}"),
            )

    def _handle(self, payload: bytes) -> bytes:
        device = self.core.device_id
        wall = self._wall()
        now_epoch = self.memory.now(wall)
        command: Command | None = None
        try:
            command = verify_command(
                payload,
                self.trust,
                fleet=self.core.config.fleet,
                device=device,
                now=datetime.fromtimestamp(now_epoch, timezone.utc),
                clock=datetime.fromtimestamp(wall, timezone.utc),
            )
            if self.memory.seen(command.nonce):
                raise CommandError("replayed", f"nonce {command.nonce} was used before")
            self.memory.remember(
                command,
                now_epoch,
                wall=wall,
                durable=command.command not in READ_ONLY_COMMANDS,
            )
        except CommandError as exc:
            self.counts["refused"] += 1
            self._log_refusal(exc)
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

    def _log_refusal(self, error: CommandError) -> None:
        # A flood of garbage on the command topic must not flood the log: the first refusals,
        # then one line in a hundred (the counts are in diag).
        refused = self.counts["refused"]
        if refused <= 20 or refused % 100 == 0:
            _log.warning("refused a command (%d so far): %s", refused, str(error)[:300])

    def read_only(self, name: str) -> dict[str, Any]:
        """The result of a read-only command (``info``, ``diag``) run without a signed
        document: for transports where reading is open to whoever holds the cable
        (edge_sdk.agent.serial)."""
        if name not in READ_ONLY_COMMANDS:
            raise ValueError(f"{name!r} is not a read-only command")
        return self._actions[name]({})

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
        # Sizes only, and nothing repaired: diag must neither move the active pointer nor
        # spend a minute hashing on the agent's one worker thread (the full check is the
        # start-up one, reported in integrity_at_start).
        checks = []
        for name in store.names():
            check = store.check_active(name)
            checks.append(
                {"model": name, "ok": check.ok, "version": check.version, "reason": check.reason}
            )
        updates = self.core.updates_in_progress()
        summary: dict[str, Any] = {
            "integrity": checks,
            "integrity_at_start": list(self.core.integrity),
            "updates": updates,
            "last_refusal": self.core.last_refusal,
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
        from edge_sdk.errors import NoActiveModelError

        name = str(args["model"])
        expected = args.get("from")
        try:
            current = self.core.store.active(name).version
        except NoActiveModelError:
            raise CommandError(
                "bad_arguments", f"no model {name!r} is active on this device"
            ) from None
        if expected is not None and expected != current:
            # A retried rollback (the first one ran after all) must not go back twice.
            raise CommandError(
                "failed",
                f"{name} is at version {current}, not {expected}: nothing rolled back",
            )
        undone, active, warning = self.core.rollback_model(
            name, "rolled back by an operator command"
        )
        result: dict[str, Any] = {"model": name, "undone": undone, "active": active}
        if warning:
            result["warning"] = warning
        return result

    def _restart(self, args: Mapping[str, Any]) -> dict[str, Any]:
        self.request_restart()
        return {"restarting": True}
