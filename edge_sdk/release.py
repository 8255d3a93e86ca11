"""Release manifests: what a model release is, who signed it, and whether a device may take it.

A release manifest (docs/release-manifest.md, schema 1) names one version of one model and pins
its bytes: the size, the sha256 of the whole file and of every chunk the transfer moves, the
model's ``edge_sdk.*`` metadata, which devices it is for, when it is valid, and optionally a
smoke test. An operator signs it with an Ed25519 key (RFC 8032); a device holds the fleet's
public keys in a ``TrustStore`` and calls ``verify``, which returns the manifest or raises a
``ReleaseError`` subclass naming the one reason it was refused. Nothing here knows about MQTT:
the transfer, the store and the agent call these functions with bytes from any channel.

Decisions, each with its reason:

- Versions are positive integers. Integers compare without a rule book (semver's pre-release
  ordering is where update systems get it wrong), and "monotonically increasing" is then just
  ``>``. They stay at or below 2**53 - 1 so that every JSON parser reads them exactly
  (RFC 7493, I-JSON, section 2.2).
- The signature covers the canonical encoding of every field except the ``signature`` block:
  ``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
  allow_nan=False)`` as bytes, prefixed with ``SIGNING_CONTEXT`` so a signature made for another
  kind of fleet document can never pass as a release. ``ensure_ascii=True`` makes the bytes pure
  ASCII, so no string (not even a lone surrogate from ``\\ud800`` on the wire) can fail to encode.
  The encoding is of the parsed values, so whitespace and key order on the wire do not matter,
  and every field is always present so that parsing and re-encoding are exact.
- The schema is closed: an unknown field is an error, so a device never ignores a field a newer
  operator thought mattered; a new field means a new schema number.

Example::

    private, public = generate_keypair()
    manifest = build_manifest("digits.onnx", "digits", 3)
    text = sign(manifest, private).to_json()
    verify(text, TrustStore([TrustedKey(public)]), device_id="cam-01")
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_sdk import __version__ as SDK_VERSION
from edge_sdk.errors import (
    DowngradeError,
    IncompatibleSdkError,
    KeyFormatError,
    ManifestExpiredError,
    ManifestFormatError,
    ManifestNotYetValidError,
    ManifestTooLargeError,
    NotAddressedError,
    SignatureError,
    SmokeDataError,
    UnsafeNameError,
    UnsupportedSchemaError,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MIN_SDK_VERSION",
    "DEFAULT_VALIDITY",
    "MAX_CHUNK_SIZE",
    "MAX_INLINE_SMOKE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_SAFE_INTEGER",
    "MIN_CHUNK_SIZE",
    "SAFE_NAME_PATTERN",
    "SCHEMA_VERSION",
    "SIGNATURE_ALGORITHM",
    "SIGNING_CONTEXT",
    "ReleaseManifest",
    "SignedManifest",
    "SmokeData",
    "SmokeTest",
    "Targets",
    "TrustStore",
    "TrustedKey",
    "build_manifest",
    "canonical_json",
    "check_safe_name",
    "format_timestamp",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_timestamp",
    "public_key_to_base64",
    "public_key_to_pem",
    "save_private_key",
    "sign",
    "verify",
]

SCHEMA_VERSION = 1
SIGNATURE_ALGORITHM = "ed25519"
# Domain separation: the same fleet keys also sign desired state and commands (DESIGN.md,
# "Trust"); this prefix makes a signature over one kind of document useless for another.
SIGNING_CONTEXT = b"edge-sdk release manifest v1\n"

DEFAULT_CHUNK_SIZE = 64 * 1024
# AWS IoT Core refuses MQTT messages over 128 KB ("Message size" in
# https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits); 120 KiB
# leaves 8 KiB for a chunk's topic, properties and framing.
MAX_CHUNK_SIZE = 120 * 1024
# Smaller chunks only make the per-chunk hash list, and so the manifest, longer.
MIN_CHUNK_SIZE = 1024
# Largest integer every JSON implementation reads exactly (RFC 7493, section 2.2).
MAX_SAFE_INTEGER = 2**53 - 1
# A device parses a manifest before it knows whether to trust it: bound what it will read.
# 4 MiB holds the hash list of a 3.9 GiB model in 64 KiB chunks.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Inline smoke data rides inside the manifest message; larger data goes into the bundle.
MAX_INLINE_SMOKE_BYTES = 32 * 1024
# Smoke data read from a release bundle is loaded whole by numpy: bound it.
MAX_BUNDLE_SMOKE_BYTES = 64 * 1024 * 1024
# Devices without a battery-backed clock drift; NTP-synchronised ones are within a second.
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_VALIDITY = timedelta(days=90)
# The first SDK that reads schema 1.
DEFAULT_MIN_SDK_VERSION = "0.1.0"

SAFE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
# Device ids, group and profile names: also topic segments, so never "/", "+" or "#".
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SDK_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})\.([0-9]{1,6})")
# RFC 3339 restricted to one spelling per instant (UTC, "Z", whole seconds), so that a parsed
# timestamp re-encodes to the same text and the canonical encoding stays exact.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_METADATA_PREFIX = "edge_sdk."
_ED25519_SIGNATURE_BYTES = 64  # RFC 8032, section 5.1.6
_ED25519_PUBLIC_BYTES = 32  # RFC 8032, section 5.1.5

_MANIFEST_FIELDS = frozenset(
    {
        "schema",
        "name",
        "version",
        "size",
        "sha256",
        "chunk_size",
        "chunks",
        "metadata",
        "min_sdk_version",
        "targets",
        "created_at",
        "expires_at",
        "downgrade",
        "smoke_test",
        "key_id",
    }
)
_TARGET_FIELDS = frozenset({"devices", "groups", "profiles"})
_SMOKE_TEST_FIELDS = frozenset({"input", "expected", "atol", "rtol"})
_SMOKE_DATA_FIELDS = frozenset({"inline", "path", "sha256"})
_SIGNATURE_FIELDS = frozenset({"algorithm", "value"})


# --------------------------------------------------------------------------- small helpers


def signature_block(signature: bytes) -> dict[str, str]:
    """The ``signature`` member of every signed fleet document (manifests, desired state,
    commands): the algorithm and the base64 of the Ed25519 signature."""
    return {"algorithm": SIGNATURE_ALGORITHM, "value": base64.b64encode(signature).decode("ascii")}


def canonical_json(value: Any) -> bytes:
    """The canonical encoding signatures are computed over (module docstring, docs).

    Example: ``canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\\\u00e9","b":1}'``.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def check_safe_name(name: object, *, field: str = "name") -> str:
    """Return ``name`` if it can name a directory in a store without escaping it.

    Raises UnsafeNameError otherwise. Allowed: 1-64 characters of ``A-Z a-z 0-9 . _ -``,
    starting with a letter or digit, never containing ``..``.

    Example: ``check_safe_name("digits-v2")``.
    """
    if not isinstance(name, str):
        raise ManifestFormatError(field, f"expected a string, got {_json_type(name)}")
    if _SAFE_NAME.fullmatch(name) is None:
        raise UnsafeNameError(name, f"does not match {SAFE_NAME_PATTERN}", field=field)
    if ".." in name:
        raise UnsafeNameError(name, "contains '..'", field=field)
    return name


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, as the manifest spells it: ``2025-01-31T12:00:00Z``."""
    utc = _utc(moment, "timestamp")
    # Not strftime("%Y"): glibc writes year 1 as "1", which RFC 3339 (four digits) refuses.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"
    )


def parse_timestamp(text: str, *, field: str = "timestamp") -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime; ManifestFormatError if not."""
    if not isinstance(text, str) or _TIMESTAMP.fullmatch(text) is None:
        raise ManifestFormatError(
            field, f"expected an RFC 3339 UTC time like 2025-01-31T12:00:00Z, got {text!r}"
        )
    try:
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        raise ManifestFormatError(field, f"{text!r} is not a valid time ({exc})") from exc
    return parsed.replace(tzinfo=timezone.utc)


def _utc(moment: object, what: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ManifestFormatError(what, f"expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ManifestFormatError(what, "a naive datetime is ambiguous; give a UTC one")
    return moment.astimezone(timezone.utc)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _require_int(value: object, field: str, *, low: int, high: int = MAX_SAFE_INTEGER) -> int:
    # bool is an int subclass in Python but a different JSON type.
    if type(value) is not int:
        raise ManifestFormatError(field, f"expected an integer, got {_json_type(value)}")
    if not low <= value <= high:
        raise ManifestFormatError(field, f"{value} is outside {low}..{high}")
    return value


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ManifestFormatError(field, f"expected a string, got {_json_type(value)}")
    return value


def _require_sha256(value: object, field: str) -> str:
    text = _require_str(value, field)
    if _SHA256_HEX.fullmatch(text) is None:
        raise ManifestFormatError(field, "expected 64 lowercase hex digits (a sha256)")
    return text


def _require_tolerance(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestFormatError(field, f"expected a number, got {_json_type(value)}")
    if not math.isfinite(value) or value < 0:
        raise ManifestFormatError(field, f"expected a finite number >= 0, got {value}")
    return value


def _object(value: object, field: str, keys: frozenset[str]) -> dict[str, Any]:
    """Check a JSON object has exactly ``keys``: an unknown field is as wrong as a missing one."""
    if not isinstance(value, dict):
        raise ManifestFormatError(field or None, f"expected an object, got {_json_type(value)}")
    unknown = sorted(set(value) - keys)
    if unknown:
        # Shown as bounded ASCII: the name came from an untrusted document and goes to logs.
        shown = ascii(unknown[0])[1:-1]
        raise ManifestFormatError(
            _join(field, shown if len(shown) <= 64 else shown[:61] + "..."),
            f"unknown field (schema {SCHEMA_VERSION} has: {', '.join(sorted(keys))})",
        )
    missing = sorted(keys - set(value))
    if missing:
        raise ManifestFormatError(_join(field, missing[0]), "missing")
    return value


def _array(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestFormatError(field, f"expected an array, got {_json_type(value)}")
    return value


@contextmanager
def _within(prefix: str) -> Iterator[None]:
    """Re-raise a nested value's format error with the field's full path."""
    try:
        yield
    except UnsafeNameError as exc:
        raise UnsafeNameError(exc.name, exc.reason, field=_join(prefix, exc.field)) from exc
    except UnsupportedSchemaError:
        raise
    except ManifestFormatError as exc:
        raise ManifestFormatError(_join(prefix, exc.field or ""), exc.reason) from exc


def _schema(document: Mapping[str, Any]) -> None:
    if "schema" not in document:
        raise ManifestFormatError("schema", "missing")
    schema = document["schema"]
    if type(schema) is not int:
        raise ManifestFormatError("schema", f"expected an integer, got {_json_type(schema)}")
    if schema != SCHEMA_VERSION:
        raise UnsupportedSchemaError(schema, (SCHEMA_VERSION,))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a signed document must mean one thing.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_document(data: str | bytes | bytearray | memoryview) -> dict[str, Any]:
    if isinstance(data, str):
        size = len(data.encode("utf-8", "surrogatepass"))
        text = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        size = len(raw)
        if size > MAX_MANIFEST_BYTES:
            raise ManifestFormatError(None, f"{size} bytes, more than {MAX_MANIFEST_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestFormatError(None, f"not UTF-8 ({exc.reason} at {exc.start})") from exc
    else:
        raise TypeError(f"expected JSON text or bytes, got {type(data).__name__}")
    if size > MAX_MANIFEST_BYTES:
        raise ManifestFormatError(None, f"{size} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        document = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise ManifestFormatError(None, f"not JSON ({exc.msg} at position {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:
        # ValueError: a duplicate key, NaN/Infinity, or an integer over Python's digit limit.
        raise ManifestFormatError(None, f"not acceptable JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ManifestFormatError(None, f"expected an object, got {_json_type(document)}")
    return document


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True, kw_only=True)
class Targets:
    """Which devices a release is for. Empty lists everywhere: the whole fleet.

    A device is addressed when it is named in ``devices`` or belongs to one of ``groups``
    (or both lists are empty), and, when ``profiles`` is not empty, its profile is listed:
    profiles restrict, so a TensorRT build sent to a mixed group reaches only the Jetsons.

    Example: ``Targets(groups=("canary",), profiles=("jetson-orin-nano",))``.
    """

    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("devices", "groups", "profiles"):
            values = getattr(self, name)
            if not isinstance(values, tuple | list):
                raise ManifestFormatError(
                    f"targets.{name}", f"expected an array, got {_json_type(values)}"
                )
            for index, value in enumerate(values):
                where = f"targets.{name}[{index}]"
                if not isinstance(value, str):
                    raise ManifestFormatError(where, f"expected a string, got {_json_type(value)}")
                if _TARGET_NAME.fullmatch(value) is None:
                    raise ManifestFormatError(
                        where, f"{value!r} does not match {_TARGET_NAME.pattern}"
                    )
            object.__setattr__(self, name, tuple(values))

    @property
    def whole_fleet(self) -> bool:
        return not (self.devices or self.groups or self.profiles)

    def addresses(
        self, device_id: str, groups: Iterable[str] = (), profile: str | None = None
    ) -> bool:
        """True when a device with this id, these groups and this profile is addressed."""
        member_groups = set(groups)
        named = not (self.devices or self.groups) or (
            device_id in self.devices or bool(member_groups.intersection(self.groups))
        )
        profile_ok = not self.profiles or (profile is not None and profile in self.profiles)
        return named and profile_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "groups": list(self.groups),
            "profiles": list(self.profiles),
        }

    @classmethod
    def from_dict(cls, data: object) -> Targets:
        """Build from the wire form; ManifestFormatError names a wrong field."""
        fields = _object(data, "targets", _TARGET_FIELDS)
        lists = {name: tuple(_array(fields[name], f"targets.{name}")) for name in _TARGET_FIELDS}
        return cls(devices=lists["devices"], groups=lists["groups"], profiles=lists["profiles"])


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, kw_only=True)
class SmokeData:
    """A small ``.npz`` for a smoke test: inline bytes, or a file inside the release bundle.

    Exactly one of ``inline`` and ``path`` is set. ``sha256`` pins the bytes either way; for a
    bundle file it is what makes the file part of what the signature covers.

    Example: ``SmokeData.from_arrays({"x": np.zeros((1, 4), np.float32)})``.
    """

    sha256: str
    inline: bytes | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        _require_sha256(self.sha256, "sha256")
        if (self.inline is None) == (self.path is None):
            raise ManifestFormatError("inline", "give exactly one of inline and path")
        if self.inline is not None:
            if not isinstance(self.inline, bytes):
                raise ManifestFormatError(
                    "inline", f"expected bytes, got {type(self.inline).__name__}"
                )
            if len(self.inline) > MAX_INLINE_SMOKE_BYTES:
                raise ManifestFormatError(
                    "inline",
                    f"{len(self.inline)} bytes, more than {MAX_INLINE_SMOKE_BYTES}; "
                    "put larger data in the release bundle and give its path",
                )
            if _sha256_hex(self.inline) != self.sha256:
                raise ManifestFormatError("sha256", "does not match the inline bytes")
        if self.path is not None:
            _check_bundle_path(self.path, "path")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> SmokeData:
        """Inline data holding ``arrays`` as an uncompressed ``.npz``."""
        buffer = io.BytesIO()
        named: dict[str, Any] = {name: np.asarray(value) for name, value in arrays.items()}
        np.savez(buffer, **named)
        data = buffer.getvalue()
        return cls(inline=data, sha256=_sha256_hex(data))

    @classmethod
    def from_bundle_file(cls, bundle_root: str | os.PathLike[str], path: str) -> SmokeData:
        """Refer to ``path`` (relative, ``/``-separated) in ``bundle_root``, pinning its hash."""
        _check_bundle_path(path, "path")
        return cls(path=path, sha256=_hash_file(Path(bundle_root) / path))

    def read(self, bundle_root: str | os.PathLike[str] | None = None) -> bytes:
        """The bytes, checked against ``sha256``; SmokeDataError if missing or different."""
        if self.inline is not None:
            return self.inline
        assert self.path is not None
        if bundle_root is None:
            raise SmokeDataError(self.path, "the data is a bundle file; give the bundle root")
        root = Path(bundle_root).resolve()
        target = (root / self.path).resolve()
        # The name check stops "..", but a symlink inside the bundle could still point out.
        if not target.is_relative_to(root):
            raise SmokeDataError(self.path, "resolves outside the release bundle")
        try:
            with target.open("rb") as stream:
                data = stream.read(MAX_BUNDLE_SMOKE_BYTES + 1)
        except OSError as exc:
            raise SmokeDataError(self.path, f"cannot read it ({exc.strerror or exc})") from exc
        if len(data) > MAX_BUNDLE_SMOKE_BYTES:
            raise SmokeDataError(self.path, f"larger than {MAX_BUNDLE_SMOKE_BYTES} bytes")
        if _sha256_hex(data) != self.sha256:
            raise SmokeDataError(self.path, "sha256 differs from the signed manifest")
        return data

    def arrays(self, bundle_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The arrays in the ``.npz``, by name (pickled objects are refused)."""
        data = self.read(bundle_root)
        source = self.path or "inline smoke data"
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                # np.load also reads a bare .npy array: not a set of named arrays.
                raise SmokeDataError(source, "a .npy array, not an .npz archive")
            with loaded as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise SmokeDataError(source, f"not a readable .npz ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "inline": None if self.inline is None else base64.b64encode(self.inline).decode(),
            "path": self.path,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: object) -> SmokeData:
        fields = _object(data, "", _SMOKE_DATA_FIELDS)
        inline = fields["inline"]
        if inline is not None:
            text = _require_str(inline, "inline")
            try:
                inline = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ManifestFormatError("inline", f"not base64 ({exc})") from exc
            # Only the canonical spelling: the signature covers the text, the device uses bytes.
            if base64.b64encode(inline).decode() != text:
                raise ManifestFormatError("inline", "not canonical base64 (padding, line breaks)")
        path = fields["path"]
        if path is not None:
            _require_str(path, "path")
        return cls(inline=inline, path=path, sha256=fields["sha256"])


def _check_bundle_path(path: object, field: str) -> str:
    text = _require_str(path, field)
    parts = text.split("/")
    if len(parts) > 8:
        raise UnsafeNameError(text, "more than 8 path components", field=field)
    for part in parts:
        # An empty part means a leading "/" (absolute) or "//"; each part is a safe name.
        if not part:
            raise UnsafeNameError(text, "absolute, or an empty path component", field=field)
        check_safe_name(part, field=field)
    return text


@dataclass(frozen=True, kw_only=True)
class SmokeTest:
    """Golden input and expected outputs an activation must reproduce within tolerance.

    A device runs the model on ``input`` and compares each output named in ``expected`` with
    ``numpy.allclose(got, expected, rtol=rtol, atol=atol)``; the expected outputs are pinned by
    their sha256 (the "expected output digest"). A bare digest of outputs cannot carry a
    tolerance: one last-bit difference between execution providers changes it.

    Example: ``SmokeTest.from_arrays({"x": x}, {"y": model.run({"x": x})["y"]}, atol=1e-3)``.
    """

    input: SmokeData
    expected: SmokeData
    atol: float = 1e-3
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("input", "expected"):
            if not isinstance(getattr(self, name), SmokeData):
                raise ManifestFormatError(f"smoke_test.{name}", "expected SmokeData")
        _require_tolerance(self.atol, "smoke_test.atol")
        _require_tolerance(self.rtol, "smoke_test.rtol")

    @classmethod
    def from_arrays(
        cls,
        inputs: Mapping[str, Any],
        expected: Mapping[str, Any],
        *,
        atol: float = 1e-3,
        rtol: float = 1e-3,
    ) -> SmokeTest:
        """A smoke test carried inline in the manifest (keep the arrays small)."""
        return cls(
            input=SmokeData.from_arrays(inputs),
            expected=SmokeData.from_arrays(expected),
            atol=atol,
            rtol=rtol,
        )

    def compare(
        self, outputs: Mapping[str, Any], *, bundle_root: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """What differs between ``outputs`` and the expected ones; empty when the test passes."""
        problems = []
        for name, want in self.expected.arrays(bundle_root).items():
            if name not in outputs:
                problems.append(f"output {name!r} is missing")
                continue
            got = np.asarray(outputs[name])
            if got.shape != want.shape:
                problems.append(f"output {name!r} has shape {got.shape}, expected {want.shape}")
            elif want.dtype.kind in "biufc" and got.dtype.kind in "biufc":
                if not np.allclose(got, want, rtol=self.rtol, atol=self.atol):
                    worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                    problems.append(
                        f"output {name!r} differs by up to {worst:.6g} "
                        f"(atol {self.atol}, rtol {self.rtol})"
                    )
            elif not np.array_equal(got, want):
                problems.append(f"output {name!r} differs")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input.to_dict(),
            "expected": self.expected.to_dict(),
            "atol": self.atol,
            "rtol": self.rtol,
        }

    @classmethod
    def from_dict(cls, data: object) -> SmokeTest:
        fields = _object(data, "smoke_test", _SMOKE_TEST_FIELDS)
        parts = {}
        for name in ("input", "expected"):
            with _within(f"smoke_test.{name}"):
                parts[name] = SmokeData.from_dict(fields[name])
        return cls(
            input=parts["input"],
            expected=parts["expected"],
            atol=fields["atol"],
            rtol=fields["rtol"],
        )


@dataclass(frozen=True, kw_only=True)
class ReleaseManifest:
    """One version of one model, pinned by hashes: the signed part of a release (schema 1).

    Every field is validated on construction (ManifestFormatError naming the field,
    UnsafeNameError for the name). ``key_id`` is None until ``sign`` fills it in.

    Example: ``build_manifest("digits.onnx", "digits", 3).chunk_count``.
    """

    name: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    min_sdk_version: str = DEFAULT_MIN_SDK_VERSION
    targets: Targets = field(default_factory=Targets)
    downgrade: bool = False
    smoke_test: SmokeTest | None = None
    key_id: str | None = None

    def __post_init__(self) -> None:
        check_safe_name(self.name)
        _require_int(self.version, "version", low=1)
        _require_int(self.size, "size", low=1)
        _require_sha256(self.sha256, "sha256")
        _require_int(self.chunk_size, "chunk_size", low=MIN_CHUNK_SIZE, high=MAX_CHUNK_SIZE)
        if not isinstance(self.chunks, tuple | list):
            raise ManifestFormatError("chunks", f"expected an array, got {_json_type(self.chunks)}")
        for index, digest in enumerate(self.chunks):
            _require_sha256(digest, f"chunks[{index}]")
        expected_count = -(-self.size // self.chunk_size)
        if len(self.chunks) != expected_count:
            raise ManifestFormatError(
                "chunks",
                f"{len(self.chunks)} chunk hashes, but {self.size} bytes in chunks of "
                f"{self.chunk_size} make {expected_count}",
            )
        object.__setattr__(self, "chunks", tuple(self.chunks))
        if not isinstance(self.metadata, Mapping):
            raise ManifestFormatError(
                "metadata", f"expected an object, got {_json_type(self.metadata)}"
            )
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not key.startswith(_METADATA_PREFIX):
                raise ManifestFormatError(
                    "metadata", f"key {key!r} is not an {_METADATA_PREFIX}* metadata entry"
                )
            _require_str(value, f"metadata.{key}")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        version = _require_str(self.min_sdk_version, "min_sdk_version")
        if _SDK_VERSION.fullmatch(version) is None:
            raise ManifestFormatError(
                "min_sdk_version", f"expected MAJOR.MINOR.PATCH, got {version!r}"
            )
        if not isinstance(self.targets, Targets):
            raise ManifestFormatError("targets", "expected Targets")
        for name in ("created_at", "expires_at"):
            moment = _utc(getattr(self, name), name)
            if moment.microsecond:
                raise ManifestFormatError(name, "whole seconds only (the wire has no fractions)")
            if not 1 <= moment.year <= 9999:
                raise ManifestFormatError(name, "year outside 1..9999")
            object.__setattr__(self, name, moment)
        if self.expires_at <= self.created_at:
            raise ManifestFormatError("expires_at", "not after created_at")
        if not isinstance(self.downgrade, bool):
            raise ManifestFormatError(
                "downgrade", f"expected a boolean, got {_json_type(self.downgrade)}"
            )
        if self.smoke_test is not None and not isinstance(self.smoke_test, SmokeTest):
            raise ManifestFormatError("smoke_test", "expected SmokeTest or null")
        if self.key_id is not None:
            key = _require_str(self.key_id, "key_id")
            if _KEY_ID.fullmatch(key) is None:
                raise ManifestFormatError("key_id", "expected 16 lowercase hex digits")

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``index`` in the model file; IndexError if out of range."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} is outside 0..{len(self.chunks) - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def chunk_matches(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """True when ``data`` is exactly chunk ``index`` (length and sha256); False otherwise,
        including for an index out of range (a chunk from the wire may name any index)."""
        if not 0 <= index < len(self.chunks):
            return False
        if len(data) != self.chunk_span(index)[1]:
            return False
        return hashlib.sha256(data).hexdigest() == self.chunks[index]

    def to_dict(self) -> dict[str, Any]:
        """The wire form (every field, always): what the signature covers."""
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "metadata": dict(self.metadata),
            "min_sdk_version": self.min_sdk_version,
            "targets": self.targets.to_dict(),
            "created_at": format_timestamp(self.created_at),
            "expires_at": format_timestamp(self.expires_at),
            "downgrade": self.downgrade,
            "smoke_test": None if self.smoke_test is None else self.smoke_test.to_dict(),
            "key_id": self.key_id,
        }

    def to_json(self) -> str:
        """Compact canonical JSON of the unsigned manifest (for review before signing)."""
        return canonical_json(self.to_dict()).decode("ascii")

    @classmethod
    def from_dict(cls, data: object) -> ReleaseManifest:
        """Build from the wire form; raises ManifestFormatError (or a subclass) or
        UnsafeNameError naming the field."""
        if not isinstance(data, dict):
            raise ManifestFormatError(None, f"expected an object, got {_json_type(data)}")
        _schema(data)
        fields = _object(data, "", _MANIFEST_FIELDS)
        chunks = _array(fields["chunks"], "chunks")
        metadata = fields["metadata"]
        if not isinstance(metadata, dict):
            raise ManifestFormatError("metadata", f"expected an object, got {_json_type(metadata)}")
        smoke = fields["smoke_test"]
        return cls(
            name=fields["name"],
            version=fields["version"],
            size=fields["size"],
            sha256=fields["sha256"],
            chunk_size=fields["chunk_size"],
            chunks=tuple(chunks),
            metadata=metadata,
            min_sdk_version=fields["min_sdk_version"],
            targets=Targets.from_dict(fields["targets"]),
            created_at=parse_timestamp(fields["created_at"], field="created_at"),
            expires_at=parse_timestamp(fields["expires_at"], field="expires_at"),
            downgrade=fields["downgrade"],
            smoke_test=None if smoke is None else SmokeTest.from_dict(smoke),
            key_id=fields["key_id"],
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> ReleaseManifest:
        """Parse an unsigned manifest (a ``signature`` field is an unknown field here)."""
        return cls.from_dict(_parse_document(data))


@dataclass(frozen=True)
class SignedManifest:
    """A manifest and the Ed25519 signature over ``SIGNING_CONTEXT + canonical_json(...)``.

    Construct it with ``sign`` or ``from_json``; it is not yet trusted: ``verify`` decides.
    Example: ``SignedManifest.from_json(payload).manifest.version``.
    """

    manifest: ReleaseManifest
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.manifest, ReleaseManifest):
            raise TypeError(f"expected a ReleaseManifest, got {type(self.manifest).__name__}")
        if not isinstance(self.signature, bytes) or len(self.signature) != _ED25519_SIGNATURE_BYTES:
            raise ManifestFormatError(
                "signature.value", f"an Ed25519 signature is {_ED25519_SIGNATURE_BYTES} bytes"
            )
        if self.manifest.key_id is None:
            raise ManifestFormatError("key_id", "a signed manifest names the key that signed it")

    @property
    def key_id(self) -> str:
        assert self.manifest.key_id is not None
        return self.manifest.key_id

    def signed_bytes(self) -> bytes:
        """Exactly the bytes the signature is over."""
        return SIGNING_CONTEXT + canonical_json(self.manifest.to_dict())

    def to_dict(self) -> dict[str, Any]:
        document = self.manifest.to_dict()
        document["signature"] = signature_block(self.signature)
        return document

    def to_json(self) -> str:
        """The wire form: compact, sorted keys, ASCII (the canonical encoding of the whole)."""
        return canonical_json(self.to_dict()).decode("ascii")

    @classmethod
    def from_dict(cls, data: object) -> SignedManifest:
        """Parse a signed manifest without trusting it. Raises ManifestFormatError (or a
        subclass), UnsafeNameError, or SignatureError(reason="unsigned")."""
        if not isinstance(data, dict):
            raise ManifestFormatError(None, f"expected an object, got {_json_type(data)}")
        _schema(data)
        block = data.get("signature")
        if block is None:
            raise SignatureError("unsigned")
        block = _object(block, "signature", _SIGNATURE_FIELDS)
        if block["algorithm"] != SIGNATURE_ALGORITHM:
            raise ManifestFormatError(
                "signature.algorithm",
                f"expected {SIGNATURE_ALGORITHM!r}, got {block['algorithm']!r}",
            )
        text = _require_str(block["value"], "signature.value")
        try:
            signature = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ManifestFormatError("signature.value", f"not base64 ({exc})") from exc
        manifest = ReleaseManifest.from_dict({k: v for k, v in data.items() if k != "signature"})
        return cls(manifest, signature)

    @classmethod
    def from_json(cls, data: str | bytes | bytearray | memoryview) -> SignedManifest:
        """Parse wire bytes or text (at most MAX_MANIFEST_BYTES) without trusting them."""
        return cls.from_dict(_parse_document(data))


# --------------------------------------------------------------------------- building


def _read_full(stream: io.RawIOBase, view: memoryview) -> int:
    """Fill ``view`` unless the file ends first: chunk boundaries must not follow short reads."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(DEFAULT_CHUNK_SIZE)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while count := _read_full(stream, view):
            digest.update(view[:count])
    return digest.hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def build_manifest(
    model_path: str | os.PathLike[str],
    name: str,
    version: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: Mapping[str, str] | None = None,
    min_sdk_version: str = DEFAULT_MIN_SDK_VERSION,
    targets: Targets | None = None,
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
    downgrade: bool = False,
    smoke_test: SmokeTest | None = None,
) -> ReleaseManifest:
    """Hash ``model_path`` chunk by chunk (never more than one chunk in memory) into a manifest.

    ``metadata=None`` reads the model's ``edge_sdk.*`` metadata_props with
    ``edge_sdk.metadata`` (so a non-ONNX file raises a ModelLoadError subclass; pass ``{}`` to
    release arbitrary bytes). ``created_at`` defaults to now, ``expires_at`` to
    ``created_at + valid_for``; both are truncated to whole seconds.

    Example: ``build_manifest("digits.onnx", "digits", 3, targets=Targets(groups=("lab",)))``.
    """
    # Refuse a bad name or chunk size before spending minutes hashing a large model.
    check_safe_name(name)
    _require_int(chunk_size, "chunk_size", low=MIN_CHUNK_SIZE, high=MAX_CHUNK_SIZE)
    path = Path(model_path)
    if metadata is None:
        from edge_sdk.metadata import read_metadata

        props = read_metadata(path).props
        metadata = {k: v for k, v in props.items() if k.startswith(_METADATA_PREFIX)}
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while count := _read_full(stream, view):
            piece = view[:count]
            whole.update(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
            size += count
    created = (
        _now() if created_at is None else _utc(created_at, "created_at").replace(microsecond=0)
    )
    expires = (
        created + valid_for
        if expires_at is None
        else _utc(expires_at, "expires_at").replace(microsecond=0)
    )
    return ReleaseManifest(
        name=name,
        version=version,
        size=size,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunks=tuple(chunks),
        metadata=metadata,
        min_sdk_version=min_sdk_version,
        targets=Targets() if targets is None else targets,
        created_at=created,
        expires_at=expires,
        downgrade=downgrade,
        smoke_test=smoke_test,
    )


# --------------------------------------------------------------------------- keys


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A new Ed25519 signing key and its public key (RFC 8032).

    Example: ``private, public = generate_keypair()``.
    """
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw 32-byte public key.

    64 bits tell a fleet's handful of keys apart; the id only selects a key, the signature
    check is what trusts it. Example: ``key_id(public)``.
    """
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def public_key_to_base64(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte key in base64 (44 characters): the form for a device's config file."""
    return base64.b64encode(_raw_public(public_key)).decode("ascii")


def public_key_to_pem(public_key: Ed25519PublicKey) -> str:
    """The key as a PEM SubjectPublicKeyInfo block (what ``openssl pkey -pubout`` writes)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(text: str | bytes, *, source: str = "public key") -> Ed25519PublicKey:
    """Read a public key given as raw base64 or PEM; KeyFormatError if it is neither.

    Example: ``load_public_key("MCowBQYDK2VwAyEA...")`` or ``load_public_key(pem_text)``.
    """
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(source, f"not a readable PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(source, f"a {type(key).__name__}, not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(source, f"neither PEM nor base64 ({exc})") from exc
    if len(raw) != _ED25519_PUBLIC_BYTES:
        raise KeyFormatError(
            source, f"{len(raw)} bytes; a raw Ed25519 public key is {_ED25519_PUBLIC_BYTES}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _fsync_directory(directory: Path) -> None:
    # Without this the rename itself may not survive a power cut on ext4/f2fs.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_private_key(
    private_key: Ed25519PrivateKey,
    path: str | os.PathLike[str],
    *,
    password: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the key as PEM PKCS#8 with mode 0600, atomically (temp file, fsync, rename, fsync
    of the directory), encrypted when ``password`` is given.

    Raises FileExistsError rather than replace an existing key unless ``overwrite``: losing a
    fleet's signing key means re-keying every device.

    Example: ``save_private_key(private, "fleet.key")``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to replace a signing key")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    directory = target.parent
    # mkstemp creates the file 0600 whatever the umask, so the key is never readable by others,
    # not even for the moment before a chmod.
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(pem)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return target


def load_private_key(
    path: str | os.PathLike[str], *, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file; KeyFormatError if it is not one.

    Example: ``load_private_key("fleet.key")``.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFormatError(source, f"cannot read it: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # ValueError: not PEM or wrong password; TypeError: a password missing or not needed.
        raise KeyFormatError(source, f"not a readable PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(source, f"a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass(frozen=True)
class TrustedKey:
    """A public key a device accepts signatures from, until ``expires_at`` if given.

    Example: ``TrustedKey.from_text("base64...", expires_at=datetime(2026, 1, 1, tzinfo=UTC))``.
    """

    public_key: Ed25519PublicKey
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, Ed25519PublicKey):
            raise TypeError(f"expected an Ed25519PublicKey, got {type(self.public_key).__name__}")
        if self.expires_at is not None:
            if self.expires_at.tzinfo is None or self.expires_at.utcoffset() is None:
                raise ValueError("expires_at must be timezone-aware")
            object.__setattr__(self, "expires_at", self.expires_at.astimezone(timezone.utc))

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @classmethod
    def from_text(cls, text: str | bytes, *, expires_at: datetime | None = None) -> TrustedKey:
        """From raw base64 or PEM (KeyFormatError otherwise)."""
        return cls(load_public_key(text), expires_at)


@dataclass(frozen=True)
class TrustStore:
    """The public keys a device trusts, several at once so keys can rotate without a gap.

    Rotation: add the new key to every device, sign with it, then remove the old key (or give
    it an ``expires_at`` in advance). Raises ValueError for two entries with one key id.

    Example: ``TrustStore([TrustedKey(old, expires_at=cutoff), TrustedKey(new)])``.
    """

    keys: tuple[TrustedKey, ...]

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        entries = tuple(keys)
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, TrustedKey):
                raise TypeError(f"expected TrustedKey entries, got {type(entry).__name__}")
            if entry.key_id in seen:
                raise ValueError(f"key {entry.key_id} is listed twice")
            seen.add(entry.key_id)
        object.__setattr__(self, "keys", entries)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(entry.key_id for entry in self.keys)

    def get(self, key_id: str) -> TrustedKey | None:
        for entry in self.keys:
            if entry.key_id == key_id:
                return entry
        return None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key_id: object) -> bool:
        return isinstance(key_id, str) and self.get(key_id) is not None

    def verify_signature(
        self,
        key_id: str,
        message: bytes,
        signature: bytes,
        *,
        now: datetime | None = None,
        document: str = "release manifest",
    ) -> TrustedKey:
        """Check an Ed25519 ``signature`` over ``message`` by the key ``key_id``; return the key.

        For other signed fleet documents too: put a context prefix of their own in ``message``.
        Raises SignatureError with reason "unknown_key", "key_expired" or "bad_signature".
        """
        entry = self.get(key_id)
        if entry is None:
            raise SignatureError("unknown_key", key_id, trusted=self.key_ids, document=document)
        moment = _now() if now is None else now
        if entry.expires_at is not None and moment >= entry.expires_at:
            raise SignatureError(
                "key_expired",
                key_id,
                detail=f"trusted until {format_timestamp(entry.expires_at)}",
                document=document,
            )
        try:
            entry.public_key.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureError("bad_signature", key_id, document=document) from exc
        return entry


# --------------------------------------------------------------------------- sign and verify


def sign(manifest: ReleaseManifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign ``manifest`` (its ``key_id`` set to this key's) with Ed25519 (RFC 8032).

    Example: ``sign(build_manifest("m.onnx", "m", 2), load_private_key("fleet.key"))``.
    """
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
    stamped = dataclasses.replace(manifest, key_id=key_id(private_key.public_key()))
    message = SIGNING_CONTEXT + canonical_json(stamped.to_dict())
    return SignedManifest(stamped, private_key.sign(message))


def _release_tuple(version: str) -> tuple[int, int, int]:
    # The running SDK may carry a PEP 440 suffix (0.2.0.dev1): its release numbers decide.
    found = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if found is None:
        return (0, 0, 0)
    major, minor, patch = (int(part or 0) for part in found.groups())
    return major, minor, patch


def verify(
    signed: SignedManifest | str | bytes | bytearray | memoryview,
    trust: TrustStore,
    *,
    device_id: str,
    groups: Iterable[str] = (),
    profile: str | None = None,
    active_version: int | None = None,
    storage_budget_bytes: int | None = None,
    now: datetime | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    sdk_version: str = SDK_VERSION,
) -> ReleaseManifest:
    """Decide whether this device may install a release; return its manifest or raise.

    Checks, in this order (the first failure is raised): the document parses (ManifestFormatError,
    UnsupportedSchemaError, UnsafeNameError), it is signed by a trusted, unexpired key and the
    signature holds (SignatureError), ``now`` lies within created_at..expires_at give or take
    ``clock_skew`` (ManifestNotYetValidError, ManifestExpiredError), this SDK is at least
    ``min_sdk_version`` (IncompatibleSdkError), the targets name this device (NotAddressedError),
    the version is newer than ``active_version`` unless the signed manifest allows a downgrade
    (DowngradeError), and the size fits ``storage_budget_bytes`` (ManifestTooLargeError).

    Example: ``verify(payload, trust, device_id="cam-01", groups=["lab"], active_version=2)``.
    """
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise ValueError("now must be timezone-aware")
    moment = _now() if now is None else now.astimezone(timezone.utc)
    document = signed if isinstance(signed, SignedManifest) else SignedManifest.from_json(signed)
    trust.verify_signature(document.key_id, document.signed_bytes(), document.signature, now=moment)
    manifest = document.manifest
    # The allowance is applied to the device's clock, not to the manifest's times: a manifest
    # may say 9999-12-31T23:59:59Z ("never"), and adding to that overflows datetime.
    if moment + clock_skew < manifest.created_at:
        raise ManifestNotYetValidError(manifest.created_at, moment)
    if moment - clock_skew > manifest.expires_at:
        raise ManifestExpiredError(manifest.expires_at, moment)
    if _release_tuple(manifest.min_sdk_version) > _release_tuple(sdk_version):
        raise IncompatibleSdkError(manifest.min_sdk_version, sdk_version)
    member_groups = tuple(groups)
    if not manifest.targets.addresses(device_id, member_groups, profile):
        raise NotAddressedError(
            device_id,
            member_groups,
            profile,
            devices=manifest.targets.devices,
            groups=manifest.targets.groups,
            profiles=manifest.targets.profiles,
        )
    if active_version is not None and manifest.version <= active_version and not manifest.downgrade:
        raise DowngradeError(manifest.name, manifest.version, active_version)
    if storage_budget_bytes is not None and manifest.size > storage_budget_bytes:
        raise ManifestTooLargeError(manifest.name, manifest.size, storage_budget_bytes)
    return manifest
