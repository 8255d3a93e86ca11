"""The exception tree of edge-sdk.

Every error the SDK raises on bad input or a failed operation is an ``EdgeSDKError``; programming
mistakes (a wrong argument type, a call on a closed object) stay ``TypeError``, ``ValueError`` or
``RuntimeError`` so they are not mistaken for field conditions. Errors carry structured fields so
that diagnostics and the fleet channel can report them without parsing messages::

    EdgeSDKError
    ├── ModelLoadError                  path, reason
    │   ├── ModelNotFoundError            the path does not exist
    │   ├── ModelIsDirectoryError         the path is a directory
    │   ├── EmptyModelError               zero bytes
    │   ├── TruncatedModelError           the protobuf stream ends inside a field
    │   ├── CorruptModelError             not an ONNX protobuf, or onnxruntime cannot parse it
    │   ├── InvalidModelError             parses, but the graph is invalid
    │   └── UnsupportedModelError         an operator or type this onnxruntime does not implement
    ├── ModelMetadataError              key: a metadata_props entry is malformed
    ├── ProviderError
    │   └── ProviderUnavailableError      required providers did not start; fallbacks say why
    ├── InputError                      input_name, expected, got
    │   ├── InputNameError
    │   │   ├── UnknownInputError         a name the model does not have (likely a typo)
    │   │   ├── MissingInputError         a required input is absent
    │   │   └── ExtraInputError           every input is present, plus names the model lacks
    │   ├── InputTypeError                not an array, or an array of the wrong dtype
    │   ├── InputRankError                wrong number of dimensions
    │   └── InputShapeError               a fixed dimension differs
    ├── InferenceError                  onnxruntime failed while running
    ├── PreprocessError                 an input could not be decoded or converted
    ├── PostprocessError                an output does not fit the declared postprocessing
    ├── ProfileError                    a device profile
    │   ├── UnknownProfileError           no profile by that name (suggestions: the nearest)
    │   └── ProfileFormatError            path, key: malformed TOML, unknown key, wrong type
    ├── CalibrationError                folder, reason: int8 calibration data unusable
    ├── OptimizeError                   an offline optimisation step failed; nothing written
    ├── ReferenceDataError              source, reason: validation arrays unreadable or mismatched
    ├── ModelClosedError                the model was used after close() (also a RuntimeError)
    ├── ReleaseError                    a release, signature or key refused (edge_sdk.release)
    │   ├── ManifestFormatError           field, reason: not JSON, wrong type, unknown field
    │   │   └── UnsupportedSchemaError      schema: a manifest schema this SDK does not read
    │   ├── UnsafeNameError               name, field: a name that could escape the store
    │   ├── SignatureError                reason (unsigned, unknown_key, key_expired,
    │   │                                 bad_signature), key_id, trusted
    │   ├── ManifestExpiredError          expires_at, now
    │   ├── ManifestNotYetValidError      created_at, now: in the future beyond clock skew
    │   ├── IncompatibleSdkError          required, running: min_sdk_version too new
    │   ├── NotAddressedError             device_id: targets other devices, groups, profiles
    │   ├── DowngradeError                name, version, active_version: not newer, no downgrade
    │   ├── ManifestTooLargeError         name, size, budget: over the storage budget
    │   ├── KeyFormatError                source, reason: not an Ed25519 key (PEM, raw base64)
    │   ├── SmokeDataError                source, reason: smoke data unreadable or not as signed
    │   └── DesiredStateError             field, reason: a desired-state document refused
    ├── TransferError                   name, version, reason: a model transfer cannot go on
    ├── SpoolError                      path, operation, reason: the telemetry spool failed
    ├── AgentConfigError                source, field, reason: agent.toml is wrong
    ├── CommandError                    code, reason: a remote command refused or failed
    ├── FleetError                      an operator command over MQTT failed
    │   ├── BrokerConnectionError         url, reason: broker unreachable or login refused
    │   └── CommandTimeoutError           device, command, timeout: no reply came
    └── StoreError                      the model store (edge_sdk.store)
        ├── ChunkIndexError               index, count: a chunk index out of range
        ├── ChunkVerificationError        index, expected, got: a chunk's sha256 differs
        ├── DownloadIncompleteError       name, version, missing: chunks still to receive
        ├── DownloadBusyError             name, version: another process holds the download
        ├── ModelIntegrityError           name, version, expected, got, bad_chunks
        ├── InsufficientSpaceError        needed, available: not enough free storage
        ├── ReadOnlyStoreError            root: a change asked of a read-only store
        ├── NoActiveModelError            name: no verified model is active
        ├── VersionNotFoundError          name, version: no verified copy of that version
        │   └── NoPreviousVersionError      rollback has nothing to go back to
        ├── VersionConflictError          name, version: stored with other content
        └── BadVersionError               name, version, reason: failed its health check
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "AgentConfigError",
    "BadVersionError",
    "BrokerConnectionError",
    "CalibrationError",
    "ChunkIndexError",
    "ChunkVerificationError",
    "CommandError",
    "CommandTimeoutError",
    "CorruptModelError",
    "DesiredStateError",
    "DowngradeError",
    "DownloadBusyError",
    "DownloadIncompleteError",
    "EdgeSDKError",
    "EmptyModelError",
    "ExtraInputError",
    "FleetError",
    "IncompatibleSdkError",
    "InferenceError",
    "InputError",
    "InputNameError",
    "InputRankError",
    "InputShapeError",
    "InputTypeError",
    "InsufficientSpaceError",
    "InvalidModelError",
    "KeyFormatError",
    "ManifestExpiredError",
    "ManifestFormatError",
    "ManifestNotYetValidError",
    "ManifestTooLargeError",
    "MissingInputError",
    "ModelClosedError",
    "ModelIntegrityError",
    "ModelIsDirectoryError",
    "ModelLoadError",
    "ModelMetadataError",
    "ModelNotFoundError",
    "NoActiveModelError",
    "NoPreviousVersionError",
    "NotAddressedError",
    "OptimizeError",
    "PostprocessError",
    "PreprocessError",
    "ProfileError",
    "ProfileFormatError",
    "ProviderError",
    "ProviderUnavailableError",
    "ReadOnlyStoreError",
    "ReferenceDataError",
    "ReleaseError",
    "SignatureError",
    "SmokeDataError",
    "SpoolError",
    "StoreError",
    "TransferError",
    "TruncatedModelError",
    "UnknownInputError",
    "UnknownProfileError",
    "UnsafeNameError",
    "UnsupportedModelError",
    "UnsupportedSchemaError",
    "VersionConflictError",
    "VersionNotFoundError",
]


class EdgeSDKError(Exception):
    """Root of every error edge-sdk raises for a field condition or bad input."""


class ModelLoadError(EdgeSDKError):
    """A model could not be loaded; ``path`` is None for models given as bytes."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        where = "model given as bytes" if path is None else f"model {self.path!r}"
        super().__init__(f"cannot load {where}: {reason}")


class ModelNotFoundError(ModelLoadError):
    """The model path does not exist."""


class ModelIsDirectoryError(ModelLoadError):
    """The model path is a directory, not a file."""


class EmptyModelError(ModelLoadError):
    """The model file or buffer holds zero bytes."""


class TruncatedModelError(ModelLoadError):
    """The model ends in the middle of a protobuf field: an interrupted copy or download."""


class CorruptModelError(ModelLoadError):
    """The bytes are not an ONNX model (not protobuf, or onnxruntime cannot parse them)."""


class InvalidModelError(ModelLoadError):
    """The model parses but its graph is invalid (type or shape inference failed)."""


class UnsupportedModelError(ModelLoadError):
    """The model uses an operator, opset or type this onnxruntime build does not implement."""


class ModelMetadataError(EdgeSDKError):
    """A ``metadata_props`` entry of a model is malformed."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"model metadata {key!r} is invalid: {reason}")


class ProviderError(EdgeSDKError):
    """An execution provider problem."""


class ProviderUnavailableError(ProviderError):
    """Providers the caller required are not running; ``fallbacks`` holds the reason for each."""

    def __init__(
        self, missing: Sequence[str], active: Sequence[str], fallbacks: Sequence[Any]
    ) -> None:
        self.missing = tuple(missing)
        self.active = tuple(active)
        self.fallbacks = tuple(fallbacks)
        reasons = (
            "; ".join(f"{f.provider}: {f.reason}" for f in self.fallbacks) or "no reason given"
        )
        super().__init__(
            f"required execution provider(s) {', '.join(self.missing)} not running "
            f"(running: {', '.join(self.active)}; {reasons}). Check `edge-sdk info` for the "
            "providers this onnxruntime build offers."
        )


class InputError(EdgeSDKError):
    """A model input is wrong; ``input_name``, ``expected`` and ``got`` say how."""

    def __init__(self, input_name: str | None, expected: str, got: str, message: str) -> None:
        self.input_name = input_name
        self.expected = expected
        self.got = got
        super().__init__(message)


class InputNameError(InputError):
    """The names in a feed do not match the model's inputs."""


class UnknownInputError(InputNameError):
    """A feed names an input the model does not have, while a model input is missing."""


class MissingInputError(InputNameError):
    """A model input is missing from the feed."""


class ExtraInputError(InputNameError):
    """The feed has every model input plus names the model does not have."""


class InputTypeError(InputError):
    """An input is not an array of the model's dtype."""


class InputRankError(InputError):
    """An input has the wrong number of dimensions."""


class InputShapeError(InputError):
    """A fixed dimension of an input differs from the model's."""


class InferenceError(EdgeSDKError):
    """onnxruntime failed while running the model."""


class PreprocessError(EdgeSDKError):
    """An input could not be decoded or converted by the model's preprocessing."""


class PostprocessError(EdgeSDKError):
    """A model output does not fit the declared postprocessing."""


class ModelClosedError(EdgeSDKError, RuntimeError):
    """The model was used after ``close()``."""

    def __init__(self) -> None:
        super().__init__("the model is closed; load it again to run it")


class ProfileError(EdgeSDKError):
    """A device profile cannot be found, read or used."""


class UnknownProfileError(ProfileError):
    """No profile has this name; ``suggestions`` holds the nearest names."""

    def __init__(self, name: str, suggestions: list[str], known: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        self.known = known
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no device profile named {name!r}{hint} (known: {', '.join(known)})")


class ProfileFormatError(ProfileError):
    """A profile file is not valid TOML, has an unknown key or a value of the wrong type."""

    def __init__(self, path: str | Path, key: str | None, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"bad device profile {where}: {reason}")


class CalibrationError(EdgeSDKError):
    """The calibration inputs for int8 quantisation are missing or unusable."""

    def __init__(self, folder: str | Path, reason: str) -> None:
        self.folder = str(folder)
        self.reason = reason
        super().__init__(f"calibration data {self.folder}: {reason}")


class OptimizeError(EdgeSDKError):
    """An offline optimisation step (graph optimisation, fp16, int8) failed; no output was
    written."""


class ReferenceDataError(EdgeSDKError):
    """Input or reference arrays for ``validate_model`` cannot be read or do not match the
    model's inputs or outputs; ``source`` names the file or the key."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"reference data {source}: {reason}")


class StoreError(EdgeSDKError):
    """The model store (``edge_sdk.store``) refused or failed an operation."""


class ChunkIndexError(StoreError):
    """A chunk index is outside ``0 .. count - 1`` for the download."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        super().__init__(f"chunk index {index} is out of range: the model has {count} chunks")


class ChunkVerificationError(StoreError):
    """A received chunk does not match its sha256 in the manifest; nothing was written."""

    def __init__(self, index: int, expected: str, got: str, reason: str = "") -> None:
        self.index = index
        self.expected = expected
        self.got = got
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"chunk {index} failed verification{detail}: sha256 {got}, the manifest says "
            f"{expected}; the chunk was not stored, request it again"
        )


class DownloadIncompleteError(StoreError):
    """``complete()`` was called while chunks are still missing."""

    def __init__(self, name: str, version: int, missing: int) -> None:
        self.name = name
        self.version = version
        self.missing = missing
        super().__init__(
            f"download of {name} version {version} still lacks {missing} chunk(s); "
            "request them (Download.missing()) before completing"
        )


class DownloadBusyError(StoreError):
    """Another process holds this download open; only one writer per download."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"the download of {name} version {version} is open in another process; "
            "run a single agent per store"
        )


class ReadOnlyStoreError(StoreError):
    """A change was asked of a store opened with ``readonly=True`` (an application's view)."""

    def __init__(self, root: str) -> None:
        self.root = root
        super().__init__(
            f"the model store {root} is open read-only (an application's view): only the agent "
            "changes it"
        )


class ModelIntegrityError(StoreError):
    """A model file does not match its size and sha256.

    ``bad_chunks`` lists the chunks found corrupt (they are requested again), empty when every
    chunk matched but the whole file did not (the manifest contradicts itself) or when the file
    was a stored model.
    """

    def __init__(
        self,
        name: str,
        version: int,
        expected: str,
        got: str | None,
        reason: str,
        bad_chunks: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.expected = expected
        self.got = got
        self.reason = reason
        self.bad_chunks = tuple(bad_chunks)
        digests = f" (sha256 {got}, expected {expected})" if got else ""
        super().__init__(f"{name} version {version} failed its integrity check: {reason}{digests}")


class InsufficientSpaceError(StoreError):
    """Not enough free storage; ``available`` is None when the file system itself said ENOSPC."""

    def __init__(self, needed: int, available: int | None) -> None:
        self.needed = needed
        self.available = available
        if available is None:
            where = f"the file system ran out of space writing {needed} bytes"
        else:
            where = f"{needed} bytes needed, {available} available"
        super().__init__(
            f"not enough storage for the model store: {where}; free space, lower "
            "keep_previous, or raise the storage budget"
        )


class NoActiveModelError(StoreError):
    """No verified model version is active for this name."""

    def __init__(self, name: str, reason: str = "no version has been activated") -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"no active model {name!r}: {reason}")


class VersionNotFoundError(StoreError):
    """The store holds no verified copy of this version."""

    def __init__(self, name: str, version: int | None, reason: str = "") -> None:
        self.name = name
        self.version = version
        what = f"{name} version {version}" if version is not None else name
        super().__init__(reason or f"the store holds no verified copy of {what}; download it first")


class NoPreviousVersionError(VersionNotFoundError):
    """A rollback found no verified, healthy version to go back to."""

    def __init__(self, name: str) -> None:
        super().__init__(
            name,
            None,
            f"cannot roll back {name}: no other verified version that is not marked bad",
        )


class VersionConflictError(StoreError):
    """This version is already stored with a different sha256 (two releases claim it)."""

    def __init__(self, name: str, version: int, stored: str, offered: str) -> None:
        self.name = name
        self.version = version
        self.stored = stored
        self.offered = offered
        super().__init__(
            f"{name} version {version} is already stored with sha256 {stored}, the new "
            f"release says {offered}; releases must use a new version number"
        )


class BadVersionError(StoreError):
    """The version failed its health check on this device and is never installed again."""

    def __init__(self, name: str, version: int, reason: str) -> None:
        self.name = name
        self.version = version
        self.reason = reason
        super().__init__(f"{name} version {version} is marked bad on this device: {reason}")


class ReleaseError(EdgeSDKError):
    """A release manifest, its signature or a signing key was refused (``edge_sdk.release``);
    nothing was installed."""


class ManifestFormatError(ReleaseError):
    """A release manifest is malformed: not JSON, a wrong type, an unknown or missing field, or
    values that contradict each other. ``field`` is the dotted path, None for the document."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        where = f"field {field!r}" if field else "the document"
        super().__init__(f"malformed release manifest, {where}: {reason}")


class UnsupportedSchemaError(ManifestFormatError):
    """The manifest's ``schema`` is not one this SDK reads."""

    def __init__(self, schema: int, supported: Sequence[int]) -> None:
        self.schema = schema
        self.supported = tuple(supported)
        readable = ", ".join(str(s) for s in self.supported)
        super().__init__(
            "schema",
            f"schema {schema} is not one this SDK reads ({readable}); upgrade edge-sdk on the "
            "device, or release with an SDK that writes a schema the device reads",
        )


class UnsafeNameError(ReleaseError):
    """A name from the wire could escape the store directory (``..``, ``/``, odd characters)."""

    def __init__(self, name: str, reason: str, field: str = "name") -> None:
        self.name = name
        self.reason = reason
        self.field = field
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        super().__init__(
            f"unsafe {field} {shown}: {reason}; names are 1 to 64 characters of "
            "A-Z a-z 0-9 . _ -, starting with a letter or a digit, without '..'"
        )


class SignatureError(ReleaseError):
    """A release (or another signed fleet document) is not signed by a key this device trusts.

    ``reason`` is "unsigned", "unknown_key", "key_expired" or "bad_signature"; ``key_id``
    names the key the document claims (None when unsigned); ``trusted`` the device's keys;
    ``document`` what was signed ("release manifest", "desired state").
    """

    def __init__(
        self,
        reason: str,
        key_id: str | None = None,
        *,
        trusted: Sequence[str] = (),
        detail: str = "",
        document: str = "release manifest",
    ) -> None:
        self.reason = reason
        self.key_id = key_id
        self.trusted = tuple(trusted)
        self.detail = detail
        self.document = document
        known = ", ".join(self.trusted) or "none"
        command = "release" if document == "release manifest" else "deploy"
        messages = {
            "unsigned": f"the {document} is not signed; sign it with the fleet key "
            f"(edge-sdk fleet {command} --key KEY) before publishing it",
            "unknown_key": f"the {document} is signed by key {key_id}, which this device "
            f"does not trust (trusted: {known}); add that public key to the device's trusted keys",
            "key_expired": f"the {document} is signed by key {key_id}, which this device "
            f"no longer trusts ({detail}); sign it again with a current key",
            "bad_signature": f"the signature by key {key_id} does not match the {document}: it "
            "was changed after signing, or signed with another key",
        }
        super().__init__(messages.get(reason, f"signature refused ({reason}) {detail}".strip()))


class ManifestExpiredError(ReleaseError):
    """The manifest's ``expires_at`` has passed (beyond the clock-skew allowance)."""

    def __init__(self, expires_at: datetime, now: datetime) -> None:
        self.expires_at = expires_at
        self.now = now
        super().__init__(
            f"the release manifest expired at {expires_at:%Y-%m-%dT%H:%M:%SZ} (device time "
            f"{now:%Y-%m-%dT%H:%M:%SZ}); publish a freshly signed manifest, or fix the clock"
        )


class ManifestNotYetValidError(ReleaseError):
    """The manifest's ``created_at`` lies in the device's future beyond the clock-skew
    allowance: usually a device clock that is wrong (no RTC battery, no NTP yet)."""

    def __init__(self, created_at: datetime, now: datetime) -> None:
        self.created_at = created_at
        self.now = now
        super().__init__(
            f"the release manifest was created at {created_at:%Y-%m-%dT%H:%M:%SZ}, after the "
            f"device time {now:%Y-%m-%dT%H:%M:%SZ}; check the device clock (NTP)"
        )


class IncompatibleSdkError(ReleaseError):
    """The release needs a newer edge-sdk than the one on the device."""

    def __init__(self, required: str, running: str) -> None:
        self.required = required
        self.running = running
        super().__init__(
            f"the release needs edge-sdk >= {required}, the device runs {running}; "
            "upgrade edge-sdk on the device first"
        )


class NotAddressedError(ReleaseError):
    """The manifest's targets name other devices, groups or profiles than this device's."""

    def __init__(
        self,
        device_id: str,
        device_groups: Sequence[str],
        profile: str | None,
        *,
        devices: Sequence[str],
        groups: Sequence[str],
        profiles: Sequence[str],
    ) -> None:
        self.device_id = device_id
        self.device_groups = tuple(device_groups)
        self.profile = profile
        self.devices = tuple(devices)
        self.groups = tuple(groups)
        self.profiles = tuple(profiles)
        super().__init__(
            f"the release is not for device {device_id!r} (groups {list(self.device_groups)}, "
            f"profile {profile!r}): it targets devices {list(self.devices)}, groups "
            f"{list(self.groups)}, profiles {list(self.profiles)}"
        )


class DowngradeError(ReleaseError):
    """The release is not newer than the active version and does not carry a signed downgrade
    flag. ``already_active`` tells a repeated release of the active version from an old one."""

    def __init__(self, name: str, version: int, active_version: int) -> None:
        self.name = name
        self.version = version
        self.active_version = active_version
        super().__init__(
            f"{name} version {version} is not newer than the active version {active_version}; "
            "to go back, sign a release with downgrade set"
        )

    @property
    def already_active(self) -> bool:
        return self.version == self.active_version


class ManifestTooLargeError(ReleaseError):
    """The model is larger than the device's storage budget."""

    def __init__(self, name: str, size: int, budget: int) -> None:
        self.name = name
        self.size = size
        self.budget = budget
        super().__init__(
            f"{name} is {size} bytes, over this device's storage budget of {budget} bytes; "
            "optimise the model (edge-sdk optimize) or raise the profile's storage budget"
        )


class KeyFormatError(ReleaseError):
    """A key file or string is not an Ed25519 key in PEM or raw base64."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"key {source}: {reason}")


class SmokeDataError(ReleaseError):
    """A release's smoke-test data cannot be read or differs from its signed sha256."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"smoke-test data {source}: {reason}")


class DesiredStateError(ReleaseError):
    """A desired-state document (``edge_sdk.desired``) is malformed or for another fleet;
    ``field`` names the part, None for the document."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        where = f"field {field!r}" if field else "the document"
        super().__init__(f"malformed desired state, {where}: {reason}")


class TransferError(EdgeSDKError):
    """A model transfer (``edge_sdk.transfer``) cannot go on: ``reason`` says why."""

    def __init__(self, name: str, version: int, reason: str) -> None:
        self.name = name
        self.version = version
        self.reason = reason
        super().__init__(f"transfer of {name} version {version}: {reason}")


class SpoolError(EdgeSDKError):
    """The telemetry spool (``edge_sdk.spool``) failed: a full or read-only disk, a corrupt or
    locked database. ``path``, ``operation`` and SQLite's ``reason``."""

    def __init__(self, path: str, operation: str, reason: str) -> None:
        self.path = path
        self.operation = operation
        self.reason = reason
        super().__init__(f"telemetry spool {path}: cannot {operation}: {reason}")


class AgentConfigError(EdgeSDKError):
    """The device agent's configuration (agent.toml) is missing, unreadable or wrong;
    ``field`` names the setting."""

    def __init__(self, source: str, field: str | None, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        where = f", {field}" if field else ""
        super().__init__(f"agent config {source}{where}: {reason}")


class CommandError(EdgeSDKError):
    """A remote command (``edge_sdk.commands``) was refused by the device that checked it, or
    failed there. ``code`` is one of ``edge_sdk.commands.REFUSAL_CODES`` (e.g. "expired",
    "replayed", "bad_signature"); ``device`` is set on the operator's side."""

    def __init__(self, code: str, reason: str, *, device: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.device = device
        who = f"device {device}: " if device else ""
        super().__init__(f"{who}command refused ({code}): {reason}")


class FleetError(EdgeSDKError):
    """An operator command over MQTT (``edge_sdk.fleet``) failed; the message says why."""


class BrokerConnectionError(FleetError):
    """The MQTT broker could not be reached or refused the login."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"MQTT broker {url}: {reason}")


class CommandTimeoutError(FleetError):
    """No reply to a remote command within ``timeout`` seconds: the device is offline (the
    command waits in its broker session until it expires), or busy."""

    def __init__(
        self,
        device: str,
        command: str,
        timeout: float,
        *,
        request_id: str | None = None,
        expires_at: str | None = None,
    ) -> None:
        self.device = device
        self.command = command
        self.timeout = timeout
        self.request_id = request_id
        self.expires_at = expires_at
        until = f" until {expires_at}" if expires_at else " until it expires"
        super().__init__(
            f"device {device}: no reply to {command} within {timeout:g} s. Offline or busy? The "
            f"command (request {request_id or '?'}) waits in the device's session and may still "
            f"run{until}: check with info or diag before sending it again"
        )
