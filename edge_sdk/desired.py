"""Desired state: which model versions a device, or every device of a group, should run.

The operator publishes one signed document per device and per group, retained, on
``desired/devices/{id}`` and ``desired/groups/{group}`` (DESIGN.md, "Fleet channel"); the agent
reconciles what is active with what is desired, so a device that was offline catches up when it
returns and a repeated message changes nothing. Wire format: docs/fleet-protocol.md.

Decisions, each with its reason:

- Signed with the fleet's Ed25519 keys over ``DESIRED_CONTEXT + canonical_json(document)``: the
  context prefix makes a desired-state signature useless as a release signature and back.
- ``sequence`` (milliseconds since the epoch by default) orders documents, and each model entry
  carries the sequence at which the operator set it. Of the entries for one model in the
  documents addressed to a device (its own and its groups'), the one set last wins. A staged
  rollout can then move canaries ahead with per-device documents and later move the whole group
  with one group document; re-signing a document to change one model keeps the other entries'
  own sequences, so it never revives an entry that a newer document replaced. An older document
  replayed by anyone who recorded it is ignored (the agent remembers the highest document
  sequence it applied per topic).
- Versions only move forward unless the signed document says ``downgrade``: that flag is what
  ``edge-sdk fleet rollback`` signs.
- ``sha256`` pins the release: a manifest re-signed with other bytes under the same version is
  refused by the device.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_sdk.errors import DesiredStateError, ManifestFormatError, SignatureError
from edge_sdk.release import (
    MAX_SAFE_INTEGER,
    SIGNATURE_ALGORITHM,
    TrustStore,
    canonical_json,
    check_safe_name,
    format_timestamp,
    key_id,
    parse_timestamp,
    signature_block,
)

__all__ = ["DESIRED_CONTEXT", "DesiredModel", "DesiredState", "sign_desired", "verify_desired"]

SCHEMA_VERSION = 1
DESIRED_CONTEXT = b"edge-sdk desired state v1\n"
# A desired-state document lists a few models; anything larger is not one.
MAX_DESIRED_BYTES = 64 * 1024
_FIELDS = frozenset(
    {"schema", "fleet", "target", "models", "sequence", "issued_at", "key_id", "signature"}
)
_MODEL_FIELDS = frozenset({"version", "sha256", "downgrade", "sequence"})
_HEX = frozenset("0123456789abcdef")
_DOCUMENT = "desired state"


def _fail(field_name: str | None, reason: str) -> DesiredStateError:
    return DesiredStateError(field_name, reason)


@dataclass(frozen=True)
class DesiredModel:
    """One model's desired version, pinned by the release's sha256; ``sequence`` is when the
    operator set it (None: the document's own sequence, filled in by DesiredState)."""

    version: int
    sha256: str
    downgrade: bool = False
    sequence: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise _fail("version", f"expected an integer, got {self.version!r}")
        if not 1 <= self.version <= MAX_SAFE_INTEGER:
            raise _fail("version", f"{self.version} is outside 1..{MAX_SAFE_INTEGER}")
        if (
            not isinstance(self.sha256, str)
            or len(self.sha256) != 64
            or not set(self.sha256) <= _HEX
        ):
            raise _fail("sha256", "expected 64 lowercase hex digits")
        if not isinstance(self.downgrade, bool):
            raise _fail("downgrade", f"expected a boolean, got {self.downgrade!r}")
        if self.sequence is not None and (
            isinstance(self.sequence, bool)
            or not isinstance(self.sequence, int)
            or not 0 <= self.sequence <= MAX_SAFE_INTEGER
        ):
            raise _fail("sequence", f"expected an integer in 0..{MAX_SAFE_INTEGER}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "downgrade": self.downgrade,
            "sequence": self.sequence,
        }


@dataclass(frozen=True, kw_only=True)
class DesiredState:
    """What one device (``target_kind == "device"``) or one group should run.

    Example: ``DesiredState(fleet="f", target_kind="group", target="lab",
    models={"digits": DesiredModel(3, sha)})``.
    """

    fleet: str
    target_kind: str
    target: str
    models: Mapping[str, DesiredModel]
    sequence: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    issued_at: datetime = field(
        default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0)
    )
    key_id: str | None = None

    def __post_init__(self) -> None:
        check_safe_name(self.fleet, field="fleet")
        if self.target_kind not in ("device", "group"):
            raise _fail("target", f"expected a device or a group, got {self.target_kind!r}")
        check_safe_name(self.target, field="target")
        if not isinstance(self.models, Mapping):
            raise _fail("models", "expected an object")
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int):
            raise _fail("sequence", f"expected an integer, got {self.sequence!r}")
        if not 0 <= self.sequence <= MAX_SAFE_INTEGER:
            raise _fail("sequence", f"{self.sequence} is outside 0..{MAX_SAFE_INTEGER}")
        models = {}
        for name, given in self.models.items():
            check_safe_name(name, field="models")
            if not isinstance(given, DesiredModel):
                raise _fail(f"models.{name}", "expected DesiredModel")
            if given.sequence is not None and given.sequence > self.sequence:
                raise _fail(f"models.{name}.sequence", "later than the document's sequence")
            models[name] = (
                replace(given, sequence=self.sequence) if given.sequence is None else given
            )
        object.__setattr__(self, "models", MappingProxyType(models))
        if not isinstance(self.issued_at, datetime) or self.issued_at.tzinfo is None:
            raise _fail("issued_at", "expected a timezone-aware datetime")

    @property
    def topic_suffix(self) -> str:
        """Where it is published under the fleet's topic root."""
        kind = "devices" if self.target_kind == "device" else "groups"
        return f"desired/{kind}/{self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "fleet": self.fleet,
            "target": {self.target_kind: self.target},
            "models": {name: model.to_dict() for name, model in sorted(self.models.items())},
            "sequence": self.sequence,
            "issued_at": format_timestamp(self.issued_at),
            "key_id": self.key_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> DesiredState:
        if not isinstance(data, dict):
            raise _fail(None, "expected an object")
        unknown = set(data) - _FIELDS - {"signature"}
        if unknown:
            raise _fail(None, f"unknown fields {sorted(unknown)}")
        missing = (_FIELDS - {"signature"}) - set(data)
        if missing:
            raise _fail(None, f"missing fields {sorted(missing)}")
        if data["schema"] != SCHEMA_VERSION:
            raise _fail("schema", f"this SDK reads schema {SCHEMA_VERSION}, got {data['schema']!r}")
        target = data["target"]
        if not isinstance(target, dict) or len(target) != 1:
            raise _fail("target", 'expected {"device": id} or {"group": name}')
        ((kind, name),) = target.items()
        models_field = data["models"]
        if not isinstance(models_field, dict):
            raise _fail("models", "expected an object")
        models = {}
        for model_name, entry in models_field.items():
            if not isinstance(entry, dict) or set(entry) != _MODEL_FIELDS:
                raise _fail(f"models.{model_name}", f"expected fields {sorted(_MODEL_FIELDS)}")
            if entry["sequence"] is None:
                raise _fail(f"models.{model_name}.sequence", "expected an integer")
            models[model_name] = DesiredModel(
                entry["version"], entry["sha256"], entry["downgrade"], entry["sequence"]
            )
        issued = data["issued_at"]
        if not isinstance(issued, str):
            raise _fail("issued_at", "expected an RFC 3339 timestamp")
        signer = data["key_id"]
        if signer is not None and not isinstance(signer, str):
            raise _fail("key_id", "expected a string")
        return cls(
            fleet=data["fleet"],
            target_kind=kind,
            target=name,
            models=models,
            sequence=data["sequence"],
            issued_at=parse_timestamp(issued, field="issued_at"),
            key_id=signer,
        )

    def signed_bytes(self) -> bytes:
        return DESIRED_CONTEXT + canonical_json(self.to_dict())


def sign_desired(state: DesiredState, private_key: Ed25519PrivateKey) -> str:
    """The wire form of ``state`` signed with ``private_key`` (compact, canonical JSON)."""
    stamped = replace(state, key_id=key_id(private_key.public_key()))
    document = stamped.to_dict()
    document["signature"] = signature_block(private_key.sign(stamped.signed_bytes()))
    return canonical_json(document).decode("ascii")


def verify_desired(
    payload: str | bytes | bytearray | memoryview, trust: TrustStore, *, fleet: str
) -> DesiredState:
    """Parse and check a signed desired-state document; return it or raise.

    Raises DesiredStateError (malformed, too large, for another fleet) or SignatureError
    ("unsigned", "unknown_key", "key_expired", "bad_signature").
    """
    raw = bytes(payload) if not isinstance(payload, str) else payload.encode("utf-8", "replace")
    if len(raw) > MAX_DESIRED_BYTES:
        raise _fail(None, f"{len(raw)} bytes, more than {MAX_DESIRED_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _fail(None, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(None, "expected an object")
    block = data.get("signature")
    if block is None:
        raise SignatureError("unsigned", document=_DOCUMENT)
    if not isinstance(block, dict) or block.get("algorithm") != SIGNATURE_ALGORITHM:
        raise _fail("signature", f"expected an {SIGNATURE_ALGORITHM} signature block")
    try:
        signature = base64.b64decode(str(block.get("value")), validate=True)
    except (binascii.Error, ValueError):
        raise _fail("signature.value", "not base64") from None
    try:
        state = DesiredState.from_dict(data)
    except ManifestFormatError as exc:  # from the helpers shared with release manifests
        raise _fail(exc.field, exc.reason) from None
    if state.key_id is None:
        raise SignatureError("unsigned", document=_DOCUMENT)
    trust.verify_signature(state.key_id, state.signed_bytes(), signature, document=_DOCUMENT)
    if state.fleet != fleet:
        raise _fail("fleet", f"for fleet {state.fleet!r}, this device is in {fleet!r}")
    return state
