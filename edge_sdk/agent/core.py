"""The device agent's core: reconcile desired state with the store, one update per model.

Transport-agnostic (DESIGN.md): the MQTT adapter (agent/mqtt.py) feeds it topic suffixes under
the fleet root and payloads, on one thread, and gives it a ``Channel`` to publish on. Nothing
here blocks on the network; the slow steps (hashing, loading a model for its smoke test) run on
the adapter's worker thread, never on paho's.

An update of one model goes: desired state names a version -> queued (waiting for the signed
manifest) -> downloading (chunks requested a window at a time, verified, written, the bitmap
persisted) -> verifying (the whole file) -> activating (EdgeModel loads it, warms it up, runs
the manifest's smoke test; then the active pointer switches) -> succeeded. A model that does not
load or fails its smoke test is marked bad and the update ends rolled_back with the reason: the
active model never changed. Job states are published retained on ``devices/{id}/jobs/{model}``
(the AWS IoT Jobs vocabulary); the journal in the store is what a restart resumes from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from edge_sdk.agent.config import AgentConfig
from edge_sdk.desired import DesiredModel, DesiredState, verify_desired
from edge_sdk.errors import (
    ChunkIndexError,
    ChunkVerificationError,
    DownloadIncompleteError,
    EdgeSDKError,
    ModelIntegrityError,
    NoActiveModelError,
    ReleaseError,
    SmokeDataError,
    StoreError,
    TransferError,
    VersionNotFoundError,
)
from edge_sdk.release import ReleaseManifest, SignedManifest, TrustStore, verify
from edge_sdk.store import ModelStore, UpdateState, _write_atomically
from edge_sdk.transfer import (
    MAX_CHUNKS_PER_REQUEST,
    MAX_RANGES_PER_REQUEST,
    BlockRequest,
    ChunkTransfer,
    decode_chunk,
    encode_request,
    ranges_of,
)

__all__ = ["Channel", "UpdateAgent"]

_log = logging.getLogger("edge_sdk.agent")

# Progress is re-published when it moved this many percent or after this many seconds.
_PROGRESS_STEP = 5.0
_PROGRESS_INTERVAL = 2.0
# Without a chunk for this long, the job says so (the download keeps asking).
_STALL_AFTER = 60.0
_SEQUENCES_FILE = "agent-sequences.json"
# Written before a health check, removed after: found at start, the agent died during the check.
_HEALTH_FILE = "agent-health-check.json"
# A model whose health check kills the agent this many times is marked bad: one death may be a
# power cut, two in a row are the model (a crash in the runtime, the OOM killer).
_HEALTH_DEATHS = 2


class Channel(Protocol):
    """Where the agent publishes: topic suffixes under the fleet's root."""

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> None: ...

    def subscribe(self, suffix: str) -> None: ...

    def unsubscribe(self, suffix: str) -> None: ...


def _describe(exc: BaseException) -> str:
    """A reason for the operator: our errors say it themselves; an OSError (EIO, a file system
    remounted read-only) names itself."""
    if isinstance(exc, EdgeSDKError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Update:
    name: str
    version: int
    sha256: str
    downgrade: bool
    sequence: int
    started: float
    phase: str = "manifest"  # manifest -> download -> ended
    manifest: ReleaseManifest | None = None
    manifest_digest: str | None = None
    transfer: ChunkTransfer | None = None
    refused_manifest: str | None = None
    refusal: str | None = None
    stall_reported: bool = False
    last_report: tuple[str, float, str | None] = ("", -100.0, None)
    last_report_at: float = 0.0
    notes: list[str] = field(default_factory=list)


class UpdateAgent:
    """Reconciles one device's models with its desired state.

    ``model_loader(path)`` returns an object with ``run(feed)``, ``warmup()`` and ``close()``
    (EdgeModel by default): the health check of a new version.
    """

    def __init__(
        self,
        config: AgentConfig,
        store: ModelStore,
        trust: TrustStore,
        channel: Channel,
        *,
        profile_name: str | None = None,
        storage_budget: int | None = None,
        model_loader: Callable[[Path], Any] | None = None,
        update_timeout: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.trust = trust
        self.channel = channel
        self.profile_name = profile_name
        self.storage_budget = storage_budget
        self._model_loader = model_loader
        self.update_timeout = update_timeout
        self._clock = clock
        self._desired: dict[str, DesiredState] = {}
        self._sequences: dict[str, int] = self._load_sequences()
        self._updates: dict[str, _Update] = {}
        # (name, version, sha256, sequence) of updates that ended without success: retried only
        # when newer desired state (another sequence) asks again.
        self._ended: set[tuple[str, int, str, int]] = set()
        self._last_refusal: dict[str, str] | None = None
        self._online = True
        # Fields the adapter adds to every status document (the session counter, versions).
        self.status_extra: dict[str, Any] = {}
        self.integrity: list[str] = []
        self.events: list[tuple[str, int, str, str | None]] = []  # (name, version, state, reason)

    # -- topics -----------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.config.device_id

    def subscriptions(self) -> list[str]:
        subs = [f"desired/devices/{self.device_id}"]
        subs += [f"desired/groups/{group}" for group in self.config.groups]
        subs.append(f"releases/+/+/blocks/{self.device_id}")
        subs += [
            f"releases/{u.name}/{u.version}/manifest"
            for u in self._updates.values()
            if u.phase == "manifest"
        ]
        return subs

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Check every active model at start-up (a damaged one falls back to an intact one),
        and give up on a version whose health check keeps killing the agent."""
        self._check_unfinished_health_check()
        for check in self.store.verify_active():
            if not check.ok:
                message = f"{check.name}: {check.reason} (now active: {check.version})"
                _log.warning("integrity check at start: %s", message)
                self.integrity.append(message)

    def disconnected(self) -> None:
        """The channel is down: requests would only pile up in the client's offline queue and
        all be answered at once on reconnect; ``connected`` asks again for what is missing."""
        self._online = False

    def _read_health_marker(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.store.root / _HEALTH_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _check_unfinished_health_check(self) -> None:
        marker = self._read_health_marker()
        if marker is None:
            return
        name, version, deaths = marker.get("name"), marker.get("version"), marker.get("attempts")
        if not (isinstance(name, str) and isinstance(version, int) and isinstance(deaths, int)):
            (self.store.root / _HEALTH_FILE).unlink(missing_ok=True)
            return
        if deaths < _HEALTH_DEATHS:
            return  # tried again when the update resumes
        reason = (
            f"the health check did not finish {deaths} times: the agent died while loading or "
            "running the model (a crash in the runtime, or the kernel's OOM killer)"
        )
        _log.warning("%s version %d: %s", name, version, reason)
        try:
            self._journal(name, version, UpdateState.ROLLED_BACK, reason)
            if self._active_version(name) != version:
                self.store.mark_bad(name, version, reason)
        except (EdgeSDKError, OSError) as exc:
            _log.warning("could not mark %s version %d bad: %s", name, version, exc)
        (self.store.root / _HEALTH_FILE).unlink(missing_ok=True)

    def connected(self, session_present: bool = False) -> None:
        """The channel is (again) up: subscribe, say who we are, ask again for what was lost
        (with the session kept by the broker, only what then fails to come)."""
        self._online = True
        for suffix in self.subscriptions():
            self.channel.subscribe(suffix)
        self.publish_status()
        for update in self._updates.values():
            if update.transfer is not None:
                update.transfer.reconnected(session_present)
                self._send_requests(update)

    def close(self) -> None:
        for update in self._updates.values():
            if update.transfer is not None:
                update.transfer.download.close()
        self._updates.clear()

    def status_document(self, state: str = "online") -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name in self.store.names():
            try:
                active = self.store.active(name)
                models[name] = {"active": active.version, "previous": active.previous}
            except StoreError:
                models[name] = {"active": None, "previous": None}
        from edge_sdk import __version__

        return {
            **self.status_extra,
            "device": self.device_id,
            "state": state,
            "fleet": self.config.fleet,
            "groups": list(self.config.groups),
            "profile": self.profile_name,
            "sdk_version": __version__,
            "models": models,
            "integrity": self.integrity,
            "last_refusal": self._last_refusal,
            "at": _utc_now(),
        }

    def publish_status(self) -> None:
        payload = json.dumps(self.status_document(), sort_keys=True).encode()
        self.channel.publish(f"devices/{self.device_id}/status", payload, retain=True)

    def rollback_model(self, name: str, reason: str) -> tuple[int, int, str | None]:
        """Go back to the previous version of ``name`` (the ``rollback`` command): the version
        undone is marked bad on this device, so reconciling with a desired state that still
        names it does not install it again; a newer release (or a signed downgrade to another
        version) moves on. Returns (undone version, now active, a warning or None). Raises
        StoreError (NoActiveModelError, NoPreviousVersionError) when nothing changed."""
        undone = self.store.active(name)
        active = self.store.rollback(name, reason=reason)
        # The switch is done: from here on, report it whatever else fails.
        warning: str | None = None
        try:
            self.store.mark_bad(name, undone.version, reason)
        except (StoreError, OSError) as exc:
            warning = (
                f"version {undone.version} could not be marked bad ({exc}); desired state that "
                "names it may install it again"
            )
            _log.warning("%s: %s", name, warning)
        wanted = self.desired_versions().get(name)
        sequence = wanted[1] if wanted is not None else 0
        update = _Update(
            name, undone.version, undone.sha256, False, sequence, self._clock(), phase="ended"
        )
        self._ended.add((name, undone.version, undone.sha256, sequence))
        self.publish_status()
        self._report(update, UpdateState.ROLLED_BACK, reason=reason, force=True)
        return undone.version, active.version, warning

    @property
    def last_refusal(self) -> dict[str, str] | None:
        return self._last_refusal

    def updates_in_progress(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"version": update.version, "phase": update.phase}
            for name, update in self._updates.items()
        }

    # -- a release pushed over another transport (agent/serial.py) ---------------------------

    def begin_push(self, payload: bytes) -> list[int] | None:
        """Start or resume a release pushed to this device instead of named by desired state
        (``edge-sdk serial push``). The signed manifest is checked as one fetched over MQTT
        (signature, validity, targets and profile, the storage budget, inline smoke data) and
        the downgrade rule holds against the active version: only the manifest's own
        ``downgrade`` allows going back. Returns the chunk indexes still missing (what to send
        to ``push_chunks``), or None when this exact version is active already. A push of the
        model replaces any update of it in progress. Raises ReleaseError (the status's
        ``last_refusal`` says why) or StoreError (the job document says failed)."""
        try:
            signed = SignedManifest.from_json(payload)
            name, version = signed.manifest.name, signed.manifest.version
            active = self._active_version(name)
            manifest = verify(
                signed,
                self.trust,
                device_id=self.device_id,
                groups=self.config.groups,
                profile=self.profile_name,
                active_version=None if active == version else active,
                storage_budget_bytes=self.storage_budget,
            )
            smoke = manifest.smoke_test
            if smoke is not None and (smoke.input.path or smoke.expected.path):
                raise SmokeDataError(
                    smoke.input.path or smoke.expected.path or "",
                    "a bundle file; only inline smoke data travels with a pushed manifest",
                )
        except ReleaseError as exc:
            self._refuse("push", f"release refused: {exc}")
            raise
        current = self._updates.get(name)
        if current is not None:
            self._abandon(current)
        update = _Update(
            name, version, manifest.sha256, manifest.downgrade, 0, self._clock(), phase="download"
        )
        update.manifest = manifest
        update.manifest_digest = hashlib.sha256(payload).hexdigest()
        if active == version and self.store.stored_version(name, version).sha256 == (
            manifest.sha256
        ):
            self._report(update, UpdateState.SUCCEEDED, percent=100.0, force=True)
            return None
        try:
            download = self.store.begin_download(
                name,
                version,
                size=manifest.size,
                sha256=manifest.sha256,
                chunk_size=manifest.chunk_size,
                chunk_hashes=manifest.chunks,
                manifest_bytes=payload,
            )
        except StoreError as exc:
            self._end(update, UpdateState.FAILED, str(exc))
            raise
        except OSError as exc:
            self._end(update, UpdateState.FAILED, _describe(exc))
            raise StoreError(_describe(exc)) from exc
        update.transfer = ChunkTransfer(
            download, window=self.config.window, request_timeout=self.config.request_timeout
        )
        self._updates[name] = update
        self._report(update, UpdateState.DOWNLOADING, percent=download.percent, force=True)
        return download.missing()

    def _pushed(self, name: str, version: int) -> _Update:
        update = self._updates.get(name)
        if (
            update is None
            or update.version != version
            or update.transfer is None
            or update.phase != "download"
        ):
            raise TransferError(
                name, version, "no push of it is in progress here; begin it (again)"
            )
        return update

    def push_chunks(
        self, name: str, version: int, chunks: Sequence[tuple[int, bytes | memoryview]]
    ) -> int:
        """Verify and store chunks of a pushed release (``begin_push``); return how many were
        new. Raises TransferError (no such push in progress), ChunkIndexError,
        ChunkVerificationError (nothing stored; the push goes on), or StoreError for a failing
        disk (the update ends failed)."""
        update = self._pushed(name, version)
        transfer = update.transfer
        assert transfer is not None
        try:
            written = transfer.download.write_chunks(chunks)
        except (ChunkIndexError, ChunkVerificationError):
            raise
        except StoreError as exc:
            self._end(update, UpdateState.FAILED, str(exc))
            raise
        except OSError as exc:
            self._end(update, UpdateState.FAILED, _describe(exc))
            raise StoreError(_describe(exc)) from exc
        self._report(update, UpdateState.DOWNLOADING, percent=transfer.percent)
        return written

    def finish_push(self, name: str, version: int) -> tuple[str, str | None]:
        """Verify the whole file of a pushed release, health-check it (load, warm up, the
        manifest's smoke test) and activate it, as an update over MQTT ends. Returns the job's
        final state and reason: ("succeeded", None), ("rolled_back", why) or ("failed", why).
        Raises TransferError (no such push) or DownloadIncompleteError (chunks are missing,
        also chunks found corrupt on disk: ``begin_push`` says which)."""
        update = self._pushed(name, version)
        transfer = update.transfer
        assert transfer is not None
        missing = len(transfer.download.missing())
        if missing:
            raise DownloadIncompleteError(name, version, missing)
        seen = len(self.events)
        self._finish_download(update)
        if update.phase != "ended":  # corrupt chunks on disk were marked missing again
            assert update.transfer is not None
            raise DownloadIncompleteError(name, version, len(update.transfer.download.missing()))
        for event_name, event_version, state, reason in reversed(self.events[seen:]):
            if (event_name, event_version) == (name, version):
                return state, reason
        return UpdateState.FAILED.value, "the update ended without a final state"

    # -- messages ---------------------------------------------------------------------------

    def handle(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Process messages (topic suffix, payload) in order; chunk messages are written in
        batches (one fsync per batch)."""
        chunks: dict[tuple[str, str], list[tuple[int, memoryview]]] = {}
        for suffix, payload in messages:
            parts = suffix.split("/")
            try:
                if parts[0] == "desired" and len(parts) == 3:
                    self._flush_chunks(chunks)
                    self._on_desired(suffix, payload)
                elif parts[0] == "releases" and len(parts) == 4 and parts[3] == "manifest":
                    self._flush_chunks(chunks)
                    self._on_manifest(parts[1], parts[2], payload)
                elif (
                    parts[0] == "releases"
                    and len(parts) == 5
                    and parts[3] == "blocks"
                    and parts[4] == self.device_id
                ):
                    decoded = decode_chunk(payload)
                    if decoded is not None:
                        chunks.setdefault((parts[1], parts[2]), []).append(decoded)
            except EdgeSDKError as exc:  # pragma: no cover - every path reports its own
                _log.exception("message on %s: %s", suffix, exc)
        try:
            self._flush_chunks(chunks)
        except EdgeSDKError as exc:  # pragma: no cover - as above: never end the agent's loop
            _log.exception("chunk messages: %s", exc)

    def tick(self) -> None:
        """Periodic work: repeat timed-out requests, report stalls and time-outs."""
        now = self._clock()
        for update in list(self._updates.values()):
            if now - update.started > self.update_timeout:
                reason = f"not finished within {self.update_timeout:g} s"
                if update.refusal is not None:  # keep the real cause in view
                    reason = f"{update.refusal}; {reason}"
                self._end(update, UpdateState.TIMED_OUT, reason)
                continue
            if update.transfer is None:
                continue
            if update.transfer.done:  # completed by chunks that came before they were asked
                self._finish_download(update)
                continue
            self._send_requests(update)
            quiet = now - update.transfer.last_progress
            if quiet >= _STALL_AFTER and not update.stall_reported:
                update.stall_reported = True
                self._report(
                    update,
                    UpdateState.DOWNLOADING,
                    reason=f"no chunk for {quiet:.0f} s; still asking (is `edge-sdk fleet serve` "
                    "running for this release?)",
                    force=True,
                )

    # -- desired state ----------------------------------------------------------------------

    def _refuse(self, where: str, reason: str) -> None:
        _log.warning("refused %s: %s", where, reason)
        self._last_refusal = {"topic": where, "reason": reason, "at": _utc_now()}
        self.publish_status()

    def _load_sequences(self) -> dict[str, int]:
        try:
            data = json.loads((self.store.root / _SEQUENCES_FILE).read_text())
            return {str(k): int(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_sequences(self) -> None:
        data = json.dumps(self._sequences, sort_keys=True).encode()
        _write_atomically(self.store.root / _SEQUENCES_FILE, data)

    def _on_desired(self, suffix: str, payload: bytes) -> None:
        if not payload:  # the operator cleared the retained document
            if self._desired.pop(suffix, None) is not None:
                self._reconcile()
            return
        try:
            state = verify_desired(payload, self.trust, fleet=self.config.fleet)
        except ReleaseError as exc:
            self._refuse(suffix, str(exc))
            return
        if state.topic_suffix != suffix:
            self._refuse(suffix, f"a document for {state.topic_suffix} published on {suffix}")
            return
        seen = self._sequences.get(suffix)
        if seen is not None and state.sequence < seen:
            self._refuse(suffix, f"sequence {state.sequence} is older than {seen} (a replay?)")
            return
        if seen != state.sequence:
            self._sequences[suffix] = state.sequence
            try:
                self._save_sequences()
            except StoreError as exc:
                # A full disk: the sequence still guards this run, and the update goes on to
                # report the lack of space on its job rather than vanish without a word.
                _log.warning("could not record the sequence of %s: %s", suffix, exc)
        self._desired[suffix] = state
        self._reconcile()

    def desired_versions(self) -> dict[str, tuple[DesiredModel, int]]:
        """What each model should be: of the entries for it in the documents for this device,
        the one set last wins (its sequence; docs/fleet-protocol.md)."""
        chosen: dict[str, tuple[DesiredModel, int]] = {}
        for state in self._desired.values():
            for name, model in state.models.items():
                sequence = state.sequence if model.sequence is None else model.sequence
                if name not in chosen or sequence > chosen[name][1]:
                    chosen[name] = (model, sequence)
        return chosen

    def _active_version(self, name: str) -> int | None:
        try:
            return self.store.active(name).version
        except (NoActiveModelError, VersionNotFoundError):
            return None
        except ModelIntegrityError:
            self.store.verify_active(name)
            return self._active_version(name)

    def _reconcile(self) -> None:
        wanted = self.desired_versions()
        for name, update in list(self._updates.items()):
            if name not in wanted:
                self._abandon(update)
                self._report(
                    update,
                    UpdateState.FAILED,
                    reason="cancelled: no desired state names this model any more",
                    force=True,
                )
        for name, (model, sequence) in wanted.items():
            current = self._updates.get(name)
            if (
                current is not None
                and current.version == model.version
                and current.sha256 == model.sha256
            ):
                if sequence > current.sequence:
                    # Asked again (a re-run deploy): answer under the new sequence, which is
                    # what the operator now waits for.
                    current.sequence = sequence
                    current.downgrade = model.downgrade
                    state, percent, reason = current.last_report
                    if state:
                        self._report(
                            current,
                            UpdateState(state),
                            percent=None if percent < 0 else percent,
                            reason=reason,
                            force=True,
                        )
                continue
            if current is not None:
                self._abandon(current)
            self._begin(name, model, sequence)

    def _abandon(self, update: _Update) -> None:
        # Newer desired state replaced this update; what it downloaded stays on disk until the
        # store discards it for the next download of this model.
        if update.transfer is not None:
            update.transfer.download.close()
        if update.phase == "manifest":
            self.channel.unsubscribe(f"releases/{update.name}/{update.version}/manifest")
        self._updates.pop(update.name, None)

    def _begin(self, name: str, model: DesiredModel, sequence: int) -> None:
        key = (name, model.version, model.sha256, sequence)
        if key in self._ended:
            return
        update = _Update(
            name, model.version, model.sha256, model.downgrade, sequence, self._clock()
        )
        active = self._active_version(name)
        if active == model.version:
            stored = self.store.stored_version(name, active)
            if stored.sha256 == model.sha256:
                journal = self.store.journal(name)
                if journal is None or journal.version != active or not journal.terminal:
                    self._journal(name, active, UpdateState.ACTIVATING)
                    self._journal(name, active, UpdateState.SUCCEEDED)
                self._report(update, UpdateState.SUCCEEDED, percent=100.0, force=True)
                self._ended.add(key)
                return
        bad = self.store.bad_reason(name, model.version)
        if bad is not None:
            update.phase = "ended"
            self._report(
                update,
                UpdateState.FAILED,
                reason=f"version {model.version} is marked bad on this device: {bad}",
                force=True,
            )
            self._ended.add(key)
            return
        if active is not None and model.version < active and not model.downgrade:
            update.phase = "ended"
            self._report(
                update,
                UpdateState.FAILED,
                reason=f"version {model.version} is older than the active {active}; a move back "
                "needs a signed downgrade (edge-sdk fleet rollback)",
                force=True,
            )
            self._ended.add(key)
            return
        self._updates[name] = update
        if model.version in self.store.versions(name):
            stored = self.store.stored_version(name, model.version)
            if stored.sha256 == model.sha256:
                # A kept version (a rollback): no download, no new manifest needed.
                try:
                    signed = SignedManifest.from_json(
                        self.store.manifest_bytes(name, stored.version)
                    )
                except (ReleaseError, StoreError) as exc:
                    self._end(update, UpdateState.FAILED, f"stored manifest unreadable: {exc}")
                    return
                update.manifest = signed.manifest
                self._activate(update, Path(stored.path))
                return
        self._journal(name, model.version, UpdateState.QUEUED)
        self._report(update, UpdateState.QUEUED, force=True)
        self.channel.subscribe(f"releases/{name}/{model.version}/manifest")

    # -- the release ------------------------------------------------------------------------

    def _on_manifest(self, name: str, version_text: str, payload: bytes) -> None:
        update = self._updates.get(name)
        if update is None or str(update.version) != version_text or update.phase != "manifest":
            return
        if not payload:
            return
        digest = hashlib.sha256(payload).hexdigest()
        if digest == update.refused_manifest:
            return  # the same refused document again (a reconnect re-sends retained ones)
        active = self._active_version(name)
        try:
            manifest = verify(
                payload,
                self.trust,
                device_id=self.device_id,
                groups=self.config.groups,
                profile=self.profile_name,
                active_version=None if update.downgrade else active,
                storage_budget_bytes=self.storage_budget,
            )
        except ReleaseError as exc:
            self._refuse_manifest(update, digest, f"release refused: {exc}")
            return
        if manifest.version != update.version or manifest.name != name:
            self._refuse_manifest(
                update,
                digest,
                f"the manifest on this topic is for {manifest.name} {manifest.version}",
            )
            return
        if manifest.sha256 != update.sha256:
            self._refuse_manifest(
                update,
                digest,
                f"the manifest's sha256 {manifest.sha256[:12]}... differs from the desired "
                f"state's {update.sha256[:12]}...",
            )
            return
        if manifest.smoke_test is not None and (
            manifest.smoke_test.input.path is not None
            or manifest.smoke_test.expected.path is not None
        ):
            update.refused_manifest = digest
            self._end(
                update,
                UpdateState.FAILED,
                "the smoke test's data is a bundle file; over MQTT only inline smoke data travels",
            )
            return
        self.channel.unsubscribe(f"releases/{name}/{update.version}/manifest")
        update.manifest = manifest
        update.manifest_digest = digest
        try:
            download = self.store.begin_download(
                name,
                manifest.version,
                size=manifest.size,
                sha256=manifest.sha256,
                chunk_size=manifest.chunk_size,
                chunk_hashes=manifest.chunks,
                manifest_bytes=payload,
            )
        except (StoreError, OSError, ValueError) as exc:
            self._end(update, UpdateState.FAILED, _describe(exc))
            return
        update.transfer = ChunkTransfer(
            download, window=self.config.window, request_timeout=self.config.request_timeout
        )
        update.phase = "download"
        if update.transfer.done:
            self._finish_download(update)
            return
        self._report(update, UpdateState.DOWNLOADING, percent=download.percent, force=True)
        self._send_requests(update)

    def _refuse_manifest(self, update: _Update, digest: str, reason: str) -> None:
        """The update failed, and says why; it stays subscribed, so a corrected manifest under
        the same version (re-published by the operator) still goes ahead."""
        update.refused_manifest = digest
        update.refusal = reason
        self._journal(update.name, update.version, UpdateState.FAILED, reason)
        self._report(update, UpdateState.FAILED, reason=reason, force=True)

    def _send_requests(self, update: _Update) -> None:
        transfer = update.transfer
        if transfer is None or update.manifest is None or not self._online:
            return
        due = transfer.due_requests()
        spans = ranges_of(due)
        while spans:
            batch: list[tuple[int, int]] = []
            count = 0
            while spans and len(batch) < MAX_RANGES_PER_REQUEST:
                start, end = spans[0]
                room = MAX_CHUNKS_PER_REQUEST - count
                if room <= 0:
                    break
                take = min(end - start, room)
                batch.append((start, start + take))
                count += take
                spans[0] = (start + take, end)
                if start + take == end:
                    spans.pop(0)
            request = BlockRequest(update.name, update.version, update.sha256, tuple(batch))
            self.channel.publish(f"devices/{self.device_id}/blocks/get", encode_request(request))

    def _flush_chunks(self, chunks: dict[tuple[str, str], list[tuple[int, memoryview]]]) -> None:
        for (name, version_text), batch in chunks.items():
            update = self._updates.get(name)
            if (
                update is None
                or update.transfer is None
                or str(update.version) != version_text
                or update.phase != "download"
            ):
                continue
            self._on_chunks(update, batch)
        chunks.clear()

    def _on_chunks(self, update: _Update, batch: list[tuple[int, memoryview]]) -> None:
        transfer = update.transfer
        assert transfer is not None
        try:
            transfer.receive(batch)
        except (TransferError, StoreError, OSError) as exc:
            self._end(update, UpdateState.FAILED, _describe(exc))
            return
        if transfer.done:
            self._finish_download(update)
            return
        update.stall_reported = False
        self._report(update, UpdateState.DOWNLOADING, percent=transfer.percent)
        self._send_requests(update)

    def _finish_download(self, update: _Update) -> None:
        transfer = update.transfer
        assert transfer is not None
        self._report(update, UpdateState.VERIFYING, percent=100.0, force=True)
        try:
            stored = transfer.download.complete()
        except ModelIntegrityError as exc:
            if exc.bad_chunks and not transfer.download.closed:
                update.transfer = ChunkTransfer(
                    transfer.download,
                    window=self.config.window,
                    request_timeout=self.config.request_timeout,
                )
                self._send_requests(update)
                return
            self._end(update, UpdateState.FAILED, str(exc))
            return
        except (StoreError, OSError) as exc:
            self._end(update, UpdateState.FAILED, _describe(exc))
            return
        update.transfer = None
        self._activate(update, Path(stored.path))

    # -- activation -------------------------------------------------------------------------

    def _health_problem(self, path: Path, manifest: ReleaseManifest | None) -> str | None:
        """Why the model at ``path`` must not be activated, or None: it loads, warms up and
        reproduces the smoke test's outputs."""
        loader = self._model_loader
        if loader is None:
            from edge_sdk.runtime import EdgeModel

            profile = self.config.profile

            def loader(p: Path) -> Any:
                return EdgeModel(p, profile=profile)

        try:
            model = loader(path)
        except EdgeSDKError as exc:
            return f"the model does not load: {exc}"
        except Exception as exc:  # a health check must report, whatever the model does
            return f"the model does not load: {type(exc).__name__}: {exc}"
        try:
            # Warm-up pays first-call costs now (allocations, a TensorRT engine build), and a
            # model that cannot run at all fails here, before the switch.
            model.warmup()
            smoke = manifest.smoke_test if manifest is not None else None
            if smoke is None:
                return None
            inputs = smoke.input.arrays()
            for _ in range(self.config.smoke_runs):
                problems = smoke.compare(model.run(inputs))
                if problems:
                    return "smoke test failed: " + "; ".join(problems)
            return None
        except EdgeSDKError as exc:
            return f"the health check failed: {exc}"
        except Exception as exc:
            return f"the health check failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                model.close()
            except Exception:  # pragma: no cover - closing never decides the outcome
                _log.debug("closing the checked model failed", exc_info=True)

    def _activate(self, update: _Update, path: Path) -> None:
        name, version = update.name, update.version
        self._journal(name, version, UpdateState.ACTIVATING)
        self._report(update, UpdateState.ACTIVATING, percent=100.0, force=True)
        marker = self._read_health_marker() or {}
        same = marker.get("name") == name and marker.get("version") == version
        attempts = (marker.get("attempts", 0) if same else 0) + 1
        record = {"name": name, "version": version, "attempts": attempts}
        try:
            _write_atomically(self.store.root / _HEALTH_FILE, json.dumps(record).encode())
        except (StoreError, OSError) as exc:
            _log.warning("health-check marker not written: %s", exc)
        problem = self._health_problem(path, update.manifest)
        (self.store.root / _HEALTH_FILE).unlink(missing_ok=True)
        if problem is not None:
            self._journal(name, version, UpdateState.ROLLED_BACK, problem)
            try:
                self.store.mark_bad(name, version, problem)
            except StoreError as exc:
                _log.warning("could not mark %s version %d bad: %s", name, version, exc)
            self._end(update, UpdateState.ROLLED_BACK, problem)
            return
        try:
            self.store.activate(name, version)
        except StoreError as exc:
            self._end(update, UpdateState.FAILED, str(exc))
            return
        # The status (what is active) first: an operator that sees "succeeded" sees it too.
        self.publish_status()
        self._end(update, UpdateState.SUCCEEDED, None)

    # -- journal and reports ----------------------------------------------------------------

    def _journal(
        self, name: str, version: int, state: UpdateState, reason: str | None = None
    ) -> None:
        current = self.store.journal(name)
        if current is not None and current.version == version and current.state is state:
            return
        try:
            self.store.update_journal(name, version, state, reason=reason)
        except ValueError:
            _log.debug("journal of %s stays at %s (agent step %s)", name, current, state.value)
        except StoreError as exc:
            # The journal serves a restart; the job document must still tell the operator (a
            # full disk fails the update, and then this write too).
            _log.warning("journal of %s not updated to %s: %s", name, state.value, exc)

    def _end(self, update: _Update, state: UpdateState, reason: str | None) -> None:
        if update.transfer is not None:
            update.transfer.download.close()
            update.transfer = None
        if update.phase == "manifest":
            self.channel.unsubscribe(f"releases/{update.name}/{update.version}/manifest")
        update.phase = "ended"
        if state is not UpdateState.SUCCEEDED:
            self._journal(update.name, update.version, state, reason)
        self._report(
            update,
            state,
            percent=100.0 if state is UpdateState.SUCCEEDED else None,
            reason=reason,
            force=True,
        )
        self._ended.add((update.name, update.version, update.sha256, update.sequence))
        if self._updates.get(update.name) is update:
            del self._updates[update.name]

    def _report(
        self,
        update: _Update,
        state: UpdateState,
        *,
        percent: float | None = None,
        reason: str | None = None,
        force: bool = False,
    ) -> None:
        now = self._clock()
        last_state, last_percent, last_reason = update.last_report
        shown = -1.0 if percent is None else percent
        if (
            not force
            and last_state == state.value
            and last_reason == reason
            and shown - last_percent < _PROGRESS_STEP
            and now - update.last_report_at < _PROGRESS_INTERVAL
        ):
            return
        update.last_report = (state.value, shown, reason)
        update.last_report_at = now
        transfer = update.transfer
        document = {
            "device": self.device_id,
            "model": update.name,
            "version": update.version,
            "sha256": update.sha256,
            "sequence": update.sequence,
            "state": state.value,
            "percent": None if percent is None else round(percent, 1),
            "reason": reason,
            "active_version": self._active_version(update.name),
            "bytes": None if transfer is None else transfer.written_bytes,
            "at": _utc_now(),
        }
        if state.terminal or state is UpdateState.QUEUED:
            self.events.append((update.name, update.version, state.value, reason))
        self.channel.publish(
            f"devices/{self.device_id}/jobs/{update.name}",
            json.dumps(document, sort_keys=True).encode(),
            retain=True,
        )
