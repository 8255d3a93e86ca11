"""Release manifests: building, signing, verifying, and every reason a device refuses one.

Real files on disk and real Ed25519 keys throughout (no mocks).

References:
- Ed25519: RFC 8032 (https://www.rfc-editor.org/rfc/rfc8032), 32-byte public keys, 64-byte
  signatures; the `cryptography` package's Ed25519PrivateKey / Ed25519PublicKey.
- Message size: AWS IoT Core caps an MQTT message at 128 KB
  (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits).
- Integers exact in every JSON parser: RFC 7493 (I-JSON), section 2.2.
- Timestamps: RFC 3339, restricted to UTC, "Z" and whole seconds.
- The wire format itself: docs/release-manifest.md.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import stat
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import _models
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk import (
    CorruptModelError,
    DowngradeError,
    IncompatibleSdkError,
    KeyFormatError,
    ManifestExpiredError,
    ManifestFormatError,
    ManifestNotYetValidError,
    ManifestTooLargeError,
    NotAddressedError,
    ReleaseError,
    SignatureError,
    SmokeDataError,
    UnsafeNameError,
    UnsupportedSchemaError,
    write_metadata,
)
from edge_sdk.release import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_INLINE_SMOKE_BYTES,
    MAX_MANIFEST_BYTES,
    SIGNING_CONTEXT,
    ReleaseManifest,
    SignedManifest,
    SmokeData,
    SmokeTest,
    Targets,
    TrustedKey,
    TrustStore,
    build_manifest,
    canonical_json,
    check_safe_name,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    public_key_to_base64,
    public_key_to_pem,
    save_private_key,
    sign,
    verify,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
CREATED = NOW - timedelta(hours=1)
EXPIRES = NOW + timedelta(days=30)
# 5000 bytes in 1 KiB chunks: 5 chunks, the last one short, so size +- 1 keeps the count.
MODEL_BYTES = 5000
CHUNK = 1024

# Two fixed keys (seeded from constant bytes) so hypothesis examples can share them.
SIGNER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"signer").digest())
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other").digest())
TRUST = TrustStore([TrustedKey(SIGNER.public_key()), TrustedKey(OTHER.public_key())])


def _payload(seed: int = 0, size: int = MODEL_BYTES) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@cache
def _base_manifest() -> ReleaseManifest:
    """A valid manifest for _payload() with every optional part filled in."""
    data = _payload()
    chunks = tuple(
        hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)
    )
    smoke = SmokeTest.from_arrays(
        {"x": np.arange(4, dtype=np.float32).reshape(1, 4)},
        {"y": np.ones((1, 4), np.float32)},
        atol=1e-3,
        rtol=0.0,
    )
    return ReleaseManifest(
        name="digits",
        version=3,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=CHUNK,
        chunks=chunks,
        metadata={"edge_sdk.labels": '["cat","dog"]', "edge_sdk.version": "1.2"},
        min_sdk_version="0.1.0",
        targets=Targets(devices=("cam-01",), groups=("lab",), profiles=()),
        created_at=CREATED,
        expires_at=EXPIRES,
        smoke_test=smoke,
    )


def _signed_doc(manifest: ReleaseManifest | None = None, key: Ed25519PrivateKey = SIGNER) -> dict:
    return json.loads(sign(manifest or _base_manifest(), key).to_json())


def _resign(doc: dict, key: Ed25519PrivateKey = SIGNER) -> str:
    """Sign an arbitrary document exactly as the scheme says, valid or not, so that a test
    reaches the parser's checks instead of stopping at the signature."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    value = key.sign(SIGNING_CONTEXT + canonical_json(body))
    body["signature"] = {"algorithm": "ed25519", "value": base64.b64encode(value).decode()}
    return json.dumps(body)


def _verify(document: Any, **options: Any) -> ReleaseManifest:
    settings_ = {"device_id": "cam-01", "groups": ("lab",), "profile": None, "now": NOW}
    settings_.update(options)
    trust = settings_.pop("trust", TRUST)
    return verify(document, trust, **settings_)


def _raises_exactly(error: type[BaseException], call: Callable[[], Any]) -> BaseException:
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return info.value


# --------------------------------------------------------------------------- round trip


def test_sign_and_verify_round_trip() -> None:
    manifest = _base_manifest()
    signed = sign(manifest, SIGNER)
    text = signed.to_json()
    assert signed.manifest.key_id == key_id(SIGNER.public_key())
    parsed = SignedManifest.from_json(text)
    assert parsed == signed
    assert parsed.to_json() == text
    verified = _verify(text)
    assert verified == dataclasses.replace(manifest, key_id=key_id(SIGNER.public_key()))
    # A SignedManifest object and bytes are accepted as well as text.
    assert _verify(signed) == verified
    assert _verify(text.encode()) == verified


def test_wire_form_is_canonical_and_whitespace_or_key_order_do_not_matter() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    assert text == canonical_json(json.loads(text)).decode()
    assert " " not in text and text.isascii()
    # The signature is over values, not over the bytes that carried them.
    reordered = json.dumps(dict(reversed(list(json.loads(text).items()))), indent=2)
    assert _verify(reordered).version == 3


def test_canonical_encoding_is_the_documented_one() -> None:
    assert canonical_json({"b": 1, "a": "é", "c": [True, None]}) == (
        b'{"a":"\\u00e9","b":1,"c":[true,null]}'
    )
    assert canonical_json({"x": "\U0001f600"}) == b'{"x":"\\ud83d\\ude00"}'
    # A lone surrogate (legal in JSON text, not in UTF-8) still encodes, thanks to ASCII output.
    assert canonical_json({"x": "\ud800"}) == b'{"x":"\\ud800"}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_metadata_with_any_unicode_survives_signing() -> None:
    manifest = dataclasses.replace(
        _base_manifest(), metadata={"edge_sdk.labels": '["猫","\ud800","é"]'}
    )
    assert _verify(sign(manifest, SIGNER).to_json()).metadata == manifest.metadata


def test_signed_bytes_are_context_plus_canonical_manifest() -> None:
    signed = sign(_base_manifest(), SIGNER)
    body = {k: v for k, v in signed.to_dict().items() if k != "signature"}
    assert signed.signed_bytes() == SIGNING_CONTEXT + canonical_json(body)
    SIGNER.public_key().verify(signed.signature, signed.signed_bytes())
    assert len(signed.signature) == 64  # RFC 8032, section 5.1.6


valid_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda n: ".." not in n
)
target_names = st.from_regex(r"[a-z0-9][a-z0-9:-]{0,10}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    name=valid_names,
    version=st.integers(1, 2**53 - 1),
    size=st.integers(1, 40 * CHUNK),
    chunk_size=st.integers(1024, MAX_CHUNK_SIZE),
    metadata=st.dictionaries(
        st.text(max_size=8).map(lambda s: "edge_sdk." + s), st.text(max_size=20), max_size=3
    ),
    devices=st.lists(target_names, max_size=3),
    groups=st.lists(target_names, max_size=3),
    profiles=st.lists(target_names, max_size=2),
    seconds=st.integers(0, 315_537_897_599 - 10**8),  # 0001-01-01 .. late 9999
    lifetime=st.integers(1, 10**8),
    downgrade=st.booleans(),
    tolerance=st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10),
)
def test_any_valid_manifest_survives_the_wire_exactly(
    name: str,
    version: int,
    size: int,
    chunk_size: int,
    metadata: dict[str, str],
    devices: list[str],
    groups: list[str],
    profiles: list[str],
    seconds: int,
    lifetime: int,
    downgrade: bool,
    tolerance: float,
) -> None:
    created = datetime(1, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    smoke = dataclasses.replace(_base_manifest().smoke_test, atol=tolerance)  # type: ignore[type-var]
    manifest = ReleaseManifest(
        name=name,
        version=version,
        size=size,
        sha256="a" * 64,
        chunk_size=chunk_size,
        chunks=("b" * 64,) * -(-size // chunk_size),
        metadata=metadata,
        targets=Targets(devices=tuple(devices), groups=tuple(groups), profiles=tuple(profiles)),
        created_at=created,
        expires_at=created + timedelta(seconds=lifetime),
        downgrade=downgrade,
        smoke_test=smoke,
    )
    signed = sign(manifest, SIGNER)
    parsed = SignedManifest.from_json(signed.to_json())
    assert parsed == signed
    assert parsed.signed_bytes() == signed.signed_bytes()
    assert ReleaseManifest.from_json(manifest.to_json()) == manifest


# --------------------------------------------------------------------------- building


def test_build_manifest_hashes_every_chunk(tmp_path: Path) -> None:
    data = _payload(1, 3 * DEFAULT_CHUNK_SIZE + 123)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    manifest = build_manifest(path, "raw", 7, metadata={}, created_at=CREATED, expires_at=EXPIRES)
    assert manifest.size == len(data)
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.chunk_size == DEFAULT_CHUNK_SIZE == 65536
    assert manifest.chunk_count == 4
    for index in range(4):
        offset, length = manifest.chunk_span(index)
        piece = data[offset : offset + length]
        assert manifest.chunks[index] == hashlib.sha256(piece).hexdigest()
        assert manifest.chunk_matches(index, piece)
    assert manifest.chunk_span(3) == (3 * DEFAULT_CHUNK_SIZE, 123)
    assert not manifest.chunk_matches(0, data[1 : DEFAULT_CHUNK_SIZE + 1])
    assert not manifest.chunk_matches(3, data[-123:] + b"\0")
    assert not manifest.chunk_matches(4, b"")
    assert not manifest.chunk_matches(-1, data[-123:])
    with pytest.raises(IndexError):
        manifest.chunk_span(4)


def test_build_manifest_reads_the_models_edge_sdk_metadata(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    _models.tiny_mlp(path)
    write_metadata(
        path, props={"edge_sdk.labels": ["a", "b"], "edge_sdk.version": "2.0", "author": "x"}
    )
    manifest = build_manifest(path, "mlp", 2)
    assert dict(manifest.metadata) == {"edge_sdk.labels": '["a","b"]', "edge_sdk.version": "2.0"}
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest.expires_at - manifest.created_at == timedelta(days=90)
    assert manifest.created_at.microsecond == 0 and manifest.key_id is None


def test_build_manifest_of_a_non_onnx_file_needs_explicit_metadata(tmp_path: Path) -> None:
    path = tmp_path / "not-a-model.bin"
    path.write_bytes(b"this is not protobuf at all" * 100)
    with pytest.raises(CorruptModelError):
        build_manifest(path, "junk", 1)
    assert build_manifest(path, "junk", 1, metadata={}).size == path.stat().st_size


def test_build_manifest_refuses_before_reading_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.onnx"
    _raises_exactly(UnsafeNameError, lambda: build_manifest(missing, "../escape", 1))
    error = _raises_exactly(
        ManifestFormatError, lambda: build_manifest(missing, "ok", 1, chunk_size=MAX_CHUNK_SIZE + 1)
    )
    assert error.field == "chunk_size"  # type: ignore[attr-defined]


def test_empty_file_is_not_a_release(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    error = _raises_exactly(ManifestFormatError, lambda: build_manifest(path, "e", 1, metadata={}))
    assert error.field == "size"  # type: ignore[attr-defined]


def _write_random_file(path: Path, mebibytes: int) -> None:
    rng = np.random.default_rng(5)
    with path.open("wb") as stream:
        for _ in range(mebibytes):
            stream.write(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())


def test_build_manifest_streams_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "large.bin"
    _write_random_file(path, 24)
    tracemalloc.start()
    try:
        manifest = build_manifest(path, "large", 1, metadata={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.size == 24 << 20 and manifest.chunk_count == 384
    # One 64 KiB buffer plus 384 hex strings; the file is 24 MiB.
    assert peak < 1 << 20, f"peak {peak} bytes"
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_manifest_streams_a_large_onnx_model_with_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "wide.onnx"
    _models.tiny_mlp(path, width=1100)  # a 4.8 MB weight matrix
    write_metadata(path, props={"edge_sdk.version": "9"})
    tracemalloc.start()
    try:
        manifest = build_manifest(path, "wide", 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.size > 4_800_000 and dict(manifest.metadata) == {"edge_sdk.version": "9"}
    assert peak < 1 << 20, f"peak {peak} bytes"


# --------------------------------------------------------------------------- keys


def test_private_key_file_is_0600_pkcs8_pem_and_written_atomically(tmp_path: Path) -> None:
    private, public = generate_keypair()
    path = tmp_path / "fleet.key"
    old_umask = os.umask(0)  # even with a permissive umask the key is private
    try:
        save_private_key(private, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.key"]  # no temp file left
    loaded = load_private_key(path)
    assert key_id(loaded.public_key()) == key_id(public)
    text = sign(_base_manifest(), loaded).to_json()
    assert _verify(text, trust=TrustStore([TrustedKey(public)])).version == 3


def test_private_key_is_never_replaced_unless_asked(tmp_path: Path) -> None:
    first, _ = generate_keypair()
    second, second_public = generate_keypair()
    path = tmp_path / "fleet.key"
    save_private_key(first, path)
    with pytest.raises(FileExistsError):
        save_private_key(second, path)
    assert key_id(load_private_key(path).public_key()) == key_id(first.public_key())
    save_private_key(second, path, overwrite=True)
    assert key_id(load_private_key(path).public_key()) == key_id(second_public)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_encrypted_private_key(tmp_path: Path) -> None:
    private, public = generate_keypair()
    path = tmp_path / "fleet.key"
    save_private_key(private, path, password=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert key_id(load_private_key(path, password=b"correct horse").public_key()) == key_id(public)
    _raises_exactly(KeyFormatError, lambda: load_private_key(path))
    _raises_exactly(KeyFormatError, lambda: load_private_key(path, password=b"wrong"))


def test_files_that_are_not_ed25519_private_keys(tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    _raises_exactly(KeyFormatError, lambda: load_private_key(junk))
    ec_path = tmp_path / "ec.key"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    error = _raises_exactly(KeyFormatError, lambda: load_private_key(ec_path))
    assert "not an Ed25519 key" in str(error)


def test_public_keys_as_raw_base64_or_pem() -> None:
    _, public = generate_keypair()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = public_key_to_base64(public)
    assert base64.b64decode(text) == raw and len(text) == 44
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    pem = public_key_to_pem(public)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    for form in (text, pem, text.encode(), pem.encode(), f"  {text}\n"):
        assert key_id(load_public_key(form)) == key_id(public)
    assert TrustedKey.from_text(pem).key_id == key_id(public)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        base64.b64encode(b"\1" * 31).decode(),
        base64.b64encode(b"\1" * 33).decode(),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ],
    ids=["empty", "not-base64", "31-bytes", "33-bytes", "bad-pem", "ec-key"],
)
def test_unreadable_public_keys(text: str) -> None:
    _raises_exactly(KeyFormatError, lambda: load_public_key(text))


def test_trust_store_refuses_a_key_listed_twice() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        TrustStore([TrustedKey(SIGNER.public_key()), TrustedKey(SIGNER.public_key())])


def test_key_rotation_several_keys_trusted_at_once() -> None:
    old, new = generate_keypair()[0], generate_keypair()[0]
    cutoff = NOW + timedelta(days=1)
    trust = TrustStore(
        [TrustedKey(old.public_key(), expires_at=cutoff), TrustedKey(new.public_key())]
    )
    assert len(trust) == 2 and key_id(old.public_key()) in trust
    from_old = sign(_base_manifest(), old).to_json()
    from_new = sign(_base_manifest(), new).to_json()
    assert _verify(from_old, trust=trust).version == 3
    assert _verify(from_new, trust=trust).version == 3
    # After the old key's cutoff only the new key's releases are accepted.
    later = cutoff + timedelta(seconds=1)
    error = _raises_exactly(SignatureError, lambda: _verify(from_old, trust=trust, now=later))
    assert error.reason == "key_expired" and error.key_id == key_id(old.public_key())  # type: ignore[attr-defined]
    assert _verify(from_new, trust=trust, now=later).version == 3
    # Once the old key is removed, its releases are from an unknown key.
    rotated = TrustStore([TrustedKey(new.public_key())])
    error = _raises_exactly(SignatureError, lambda: _verify(from_old, trust=rotated))
    assert error.reason == "unknown_key"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- refusals: signature


def test_unsigned_manifest_is_refused() -> None:
    unsigned = _base_manifest().to_json()
    error = _raises_exactly(SignatureError, lambda: _verify(unsigned))
    assert error.reason == "unsigned" and error.key_id is None  # type: ignore[attr-defined]
    doc = _signed_doc()
    doc["signature"] = None
    error = _raises_exactly(SignatureError, lambda: _verify(json.dumps(doc)))
    assert error.reason == "unsigned"  # type: ignore[attr-defined]


def test_unknown_key_is_refused_and_named() -> None:
    stranger, _ = generate_keypair()
    text = sign(_base_manifest(), stranger).to_json()
    error = _raises_exactly(SignatureError, lambda: _verify(text))
    stranger_id = key_id(stranger.public_key())
    assert error.reason == "unknown_key" and error.key_id == stranger_id  # type: ignore[attr-defined]
    assert stranger_id in str(error) and set(error.trusted) == set(TRUST.key_ids)  # type: ignore[attr-defined]


def test_empty_trust_store_trusts_nothing() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    error = _raises_exactly(SignatureError, lambda: _verify(text, trust=TrustStore()))
    assert error.reason == "unknown_key"  # type: ignore[attr-defined]


def test_a_flipped_signature_bit_is_a_bad_signature() -> None:
    doc = _signed_doc()
    raw = bytearray(base64.b64decode(doc["signature"]["value"]))
    raw[10] ^= 0x01
    doc["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    error = _raises_exactly(SignatureError, lambda: _verify(json.dumps(doc)))
    assert error.reason == "bad_signature"  # type: ignore[attr-defined]


def _other_npz() -> dict[str, Any]:
    return SmokeData.from_arrays({"x": np.zeros((1, 4), np.float32)}).to_dict()


# Every field of the manifest, changed to another valid value after signing. "schema" has no
# other valid value (any other number is UnsupportedSchemaError, tested below).
TAMPERING: dict[str, Callable[[dict], None]] = {
    "name": lambda d: d.update(name="digits2"),
    "version": lambda d: d.update(version=d["version"] + 1),
    "size": lambda d: d.update(size=d["size"] - 1),
    "sha256": lambda d: d.update(sha256="0" * 64),
    "chunk_size": lambda d: d.update(chunk_size=d["chunk_size"] + 1),
    "chunks": lambda d: d["chunks"].__setitem__(2, "f" * 64),
    "metadata": lambda d: d["metadata"].update({"edge_sdk.version": "9.9"}),
    "min_sdk_version": lambda d: d.update(min_sdk_version="0.0.1"),
    "targets": lambda d: d["targets"]["devices"].append("cam-99"),
    "created_at": lambda d: d.update(created_at="2025-06-01T10:59:59Z"),
    "expires_at": lambda d: d.update(expires_at="2030-01-01T00:00:00Z"),
    "downgrade": lambda d: d.update(downgrade=True),
    "smoke_test": lambda d: d.update(smoke_test=None),
    "smoke_test.atol": lambda d: d["smoke_test"].update(atol=1.0),
    "smoke_test.input": lambda d: d["smoke_test"].update(input=_other_npz()),
    "key_id": lambda d: d.update(key_id=key_id(OTHER.public_key())),
}


def test_tampering_covers_every_field() -> None:
    tampered = {name.split(".")[0] for name in TAMPERING}
    assert tampered | {"schema"} == set(_base_manifest().to_dict())


@pytest.mark.parametrize("field", sorted(TAMPERING))
def test_changing_any_field_after_signing_breaks_the_signature(field: str) -> None:
    doc = _signed_doc()
    _verify(json.dumps(doc))  # untouched it verifies
    TAMPERING[field](doc)
    SignedManifest.from_json(json.dumps(doc))  # still well formed ...
    error = _raises_exactly(SignatureError, lambda: _verify(json.dumps(doc)))
    assert error.reason == "bad_signature"  # type: ignore[attr-defined]  # ... but not signed


# --------------------------------------------------------------------------- refusals: validity


def test_expired_manifest_is_refused_beyond_the_clock_skew() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    assert _verify(text, now=EXPIRES + timedelta(minutes=4)).version == 3
    later = EXPIRES + timedelta(minutes=6)
    error = _raises_exactly(ManifestExpiredError, lambda: _verify(text, now=later))
    assert error.expires_at == EXPIRES and error.now == later  # type: ignore[attr-defined]
    _raises_exactly(
        ManifestExpiredError,
        lambda: _verify(text, now=EXPIRES + timedelta(seconds=1), clock_skew=timedelta(0)),
    )


def test_manifest_from_the_future_is_not_yet_valid() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    assert _verify(text, now=CREATED - timedelta(minutes=4)).version == 3
    # A device whose clock says 1970 (no RTC battery, no NTP yet) refuses every release.
    for moment in (CREATED - timedelta(minutes=6), datetime(1970, 1, 1, tzinfo=timezone.utc)):
        error = _raises_exactly(ManifestNotYetValidError, lambda m=moment: _verify(text, now=m))
        assert error.created_at == CREATED  # type: ignore[attr-defined]


def test_extreme_but_valid_times_do_not_overflow() -> None:
    forever = dataclasses.replace(
        _base_manifest(),
        created_at=datetime(1, 1, 1, tzinfo=timezone.utc),
        expires_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
    )
    text = sign(forever, SIGNER).to_json()
    assert '"expires_at":"9999-12-31T23:59:59Z"' in text
    assert _verify(text).version == 3


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _verify(sign(_base_manifest(), SIGNER).to_json(), now=datetime(2025, 6, 1))


def test_min_sdk_version_newer_than_this_sdk_is_refused() -> None:
    from edge_sdk import __version__

    newer = dataclasses.replace(_base_manifest(), min_sdk_version="99.0.0")
    error = _raises_exactly(IncompatibleSdkError, lambda: _verify(sign(newer, SIGNER).to_json()))
    assert error.required == "99.0.0" and error.running == __version__  # type: ignore[attr-defined]
    same = dataclasses.replace(_base_manifest(), min_sdk_version=__version__)
    assert _verify(sign(same, SIGNER).to_json()).min_sdk_version == __version__
    needs_020 = sign(dataclasses.replace(_base_manifest(), min_sdk_version="0.2.0"), SIGNER)
    assert _verify(needs_020, sdk_version="0.2.0.dev1").version == 3  # release numbers decide
    assert _verify(needs_020, sdk_version="0.10.0").version == 3  # numeric, not lexical
    _raises_exactly(IncompatibleSdkError, lambda: _verify(needs_020, sdk_version="0.1.9"))


# --------------------------------------------------------------------------- refusals: addressing


@pytest.mark.parametrize(
    ("targets", "device", "groups", "profile", "addressed"),
    [
        (Targets(), "any", (), None, True),
        (Targets(devices=("cam-01",)), "cam-01", (), None, True),
        (Targets(devices=("cam-01",)), "cam-02", ("lab",), None, False),
        (Targets(groups=("lab",)), "cam-02", ("lab", "x"), None, True),
        (Targets(groups=("lab",)), "cam-02", ("field",), None, False),
        (Targets(devices=("cam-09",), groups=("lab",)), "cam-09", (), None, True),
        (Targets(profiles=("jetson-orin-nano",)), "j1", (), "jetson-orin-nano", True),
        (Targets(profiles=("jetson-orin-nano",)), "p1", (), "raspberry-pi-5", False),
        (Targets(profiles=("jetson-orin-nano",)), "p1", (), None, False),
        (
            Targets(groups=("lab",), profiles=("jetson-orin-nano",)),
            "j",
            ("lab",),
            "jetson-orin-nano",
            True,
        ),
        (
            Targets(groups=("lab",), profiles=("jetson-orin-nano",)),
            "p",
            ("lab",),
            "raspberry-pi-5",
            False,
        ),
        (
            Targets(groups=("lab",), profiles=("jetson-orin-nano",)),
            "j",
            ("x",),
            "jetson-orin-nano",
            False,
        ),
    ],
)
def test_targets_address_devices_groups_and_profiles(
    targets: Targets, device: str, groups: tuple[str, ...], profile: str | None, addressed: bool
) -> None:
    assert targets.addresses(device, groups, profile) is addressed
    text = sign(dataclasses.replace(_base_manifest(), targets=targets), SIGNER).to_json()
    check = lambda: _verify(text, device_id=device, groups=groups, profile=profile)  # noqa: E731
    if addressed:
        assert check().targets == targets
    else:
        error = _raises_exactly(NotAddressedError, check)
        assert error.device_id == device  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- refusals: version


def test_version_must_be_newer_than_the_active_one() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    assert _verify(text, active_version=None).version == 3
    assert _verify(text, active_version=2).version == 3
    error = _raises_exactly(DowngradeError, lambda: _verify(text, active_version=4))
    assert (error.version, error.active_version, error.already_active) == (3, 4, False)  # type: ignore[attr-defined]
    error = _raises_exactly(DowngradeError, lambda: _verify(text, active_version=3))
    assert error.already_active  # type: ignore[attr-defined]


def test_a_signed_downgrade_flag_allows_going_back() -> None:
    back = dataclasses.replace(_base_manifest(), downgrade=True)
    text = sign(back, SIGNER).to_json()
    assert _verify(text, active_version=4).downgrade is True
    assert _verify(text, active_version=3).version == 3
    # The flag is part of what is signed: setting it on a signed release breaks the signature
    # (TAMPERING["downgrade"]), and an unsigned manifest carrying it is refused as unsigned.
    unsigned = back.to_json()
    error = _raises_exactly(SignatureError, lambda: _verify(unsigned, active_version=4))
    assert error.reason == "unsigned"  # type: ignore[attr-defined]


def test_size_over_the_storage_budget_is_refused() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    assert _verify(text, storage_budget_bytes=MODEL_BYTES).size == MODEL_BYTES
    error = _raises_exactly(
        ManifestTooLargeError, lambda: _verify(text, storage_budget_bytes=MODEL_BYTES - 1)
    )
    assert (error.size, error.budget) == (MODEL_BYTES, MODEL_BYTES - 1)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- refusals: names

UNSAFE_NAMES = [
    "..",
    ".",
    "../etc",
    "a/../../b",
    "a/b",
    "/abs",
    "a..b",
    ".hidden",
    "-dash",
    "",
    "a" * 65,
    "a b",
    "a\x00b",
    "a\\b",
    "名前",
    "CON:",
    "x\n",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_names_that_could_escape_the_store_are_refused(name: str) -> None:
    _raises_exactly(UnsafeNameError, lambda: check_safe_name(name))
    doc = _signed_doc()
    doc["name"] = name
    error = _raises_exactly(UnsafeNameError, lambda: _verify(_resign(doc)))
    assert error.name == name and error.field == "name"  # type: ignore[attr-defined]
    with pytest.raises(UnsafeNameError):
        dataclasses.replace(_base_manifest(), name=name)


@pytest.mark.parametrize("name", ["a", "digits", "Model_v2.1-final", "0", "a" * 64, "a.b.c"])
def test_safe_names(name: str) -> None:
    assert check_safe_name(name) == name


@pytest.mark.parametrize("path", ["../x.npz", "a/../../x.npz", "/etc/passwd", "a//b", "a/", ".x"])
def test_smoke_data_paths_cannot_leave_the_bundle(path: str) -> None:
    doc = _signed_doc()
    doc["smoke_test"]["input"] = {"inline": None, "path": path, "sha256": "0" * 64}
    error = _raises_exactly(UnsafeNameError, lambda: _verify(_resign(doc)))
    assert error.field == "smoke_test.input.path"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- refusals: format


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        "null",
        "3",
        '"a string"',
        b"\xff\xfe{}",
        '{"schema": 1, "schema": 1}',
        '{"schema": NaN}',
        '{"schema": Infinity}',
        "[" * 100_000 + "]" * 100_000,
        '{"schema": 1' + ', "x": 1' * 10 + "}",
        '{"schema": ' + "9" * 5000 + "}",
    ],
    ids=lambda v: repr(v)[:30],
)
def test_malformed_json_is_a_format_error(text: str | bytes) -> None:
    _raises_exactly(ManifestFormatError, lambda: _verify(text))


def test_an_oversized_document_is_refused_before_parsing() -> None:
    huge = '{"schema": 1, "pad": "' + "x" * MAX_MANIFEST_BYTES + '"}'
    error = _raises_exactly(ManifestFormatError, lambda: _verify(huge))
    assert "more than" in str(error)
    _raises_exactly(ManifestFormatError, lambda: _verify(huge.encode()))


def test_unsupported_schema_version() -> None:
    doc = _signed_doc()
    doc["schema"] = 2
    error = _raises_exactly(UnsupportedSchemaError, lambda: _verify(_resign(doc)))
    assert error.schema == 2 and error.supported == (1,)  # type: ignore[attr-defined]
    assert isinstance(error, ManifestFormatError)
    # Checked before anything else, so a future schema is never half-read.
    _raises_exactly(UnsupportedSchemaError, lambda: _verify('{"schema": 2}'))


# A value of the wrong JSON type for each field, and the field path the error must name.
WRONG_TYPES: list[tuple[str, Callable[[dict], None], str]] = [
    ("schema", lambda d: d.update(schema="1"), "schema"),
    ("schema-bool", lambda d: d.update(schema=True), "schema"),
    ("name", lambda d: d.update(name=5), "name"),
    ("version-str", lambda d: d.update(version="3"), "version"),
    ("version-float", lambda d: d.update(version=3.0), "version"),
    ("version-bool", lambda d: d.update(version=True), "version"),
    ("version-zero", lambda d: d.update(version=0), "version"),
    ("version-huge", lambda d: d.update(version=2**53), "version"),
    ("size", lambda d: d.update(size=None), "size"),
    ("sha256", lambda d: d.update(sha256="A" * 64), "sha256"),
    ("chunk_size-small", lambda d: d.update(chunk_size=512), "chunk_size"),
    ("chunk_size-large", lambda d: d.update(chunk_size=MAX_CHUNK_SIZE + 1), "chunk_size"),
    ("chunks", lambda d: d.update(chunks="abc"), "chunks"),
    ("chunks-item", lambda d: d["chunks"].__setitem__(0, 7), "chunks[0]"),
    ("metadata", lambda d: d.update(metadata=[]), "metadata"),
    ("metadata-value", lambda d: d["metadata"].update({"edge_sdk.x": 1}), "metadata.edge_sdk.x"),
    ("metadata-key", lambda d: d["metadata"].update({"other": "x"}), "metadata"),
    ("min_sdk_version", lambda d: d.update(min_sdk_version="1.0"), "min_sdk_version"),
    ("targets", lambda d: d.update(targets=["cam-01"]), "targets"),
    ("targets.devices", lambda d: d["targets"].update(devices="cam-01"), "targets.devices"),
    ("targets.item", lambda d: d["targets"]["groups"].append(1), "targets.groups[1]"),
    ("targets.slash", lambda d: d["targets"]["groups"].append("a/b"), "targets.groups[1]"),
    ("created_at", lambda d: d.update(created_at=1717236000), "created_at"),
    ("created_at-offset", lambda d: d.update(created_at="2025-06-01T11:00:00+00:00"), "created_at"),
    ("created_at-fraction", lambda d: d.update(created_at="2025-06-01T11:00:00.5Z"), "created_at"),
    ("created_at-date", lambda d: d.update(created_at="2025-02-30T11:00:00Z"), "created_at"),
    ("expires_at-order", lambda d: d.update(expires_at="2025-06-01T11:00:00Z"), "expires_at"),
    ("downgrade", lambda d: d.update(downgrade="false"), "downgrade"),
    ("smoke_test", lambda d: d.update(smoke_test="yes"), "smoke_test"),
    ("smoke_test.atol", lambda d: d["smoke_test"].update(atol="0.1"), "smoke_test.atol"),
    ("smoke_test.rtol", lambda d: d["smoke_test"].update(rtol=-1), "smoke_test.rtol"),
    (
        "smoke_test.input.inline",
        lambda d: d["smoke_test"]["input"].update(inline="!!!"),
        "smoke_test.input.inline",
    ),
    (
        "smoke_test.input.sha256",
        lambda d: d["smoke_test"]["input"].update(sha256="0" * 64),
        "smoke_test.input.sha256",
    ),
    (
        "smoke_test.input.both",
        lambda d: d["smoke_test"]["input"].update(path="a.npz"),
        "smoke_test.input.inline",
    ),
    (
        "smoke_test.input.noncanonical-base64",
        lambda d: d["smoke_test"]["input"].update(inline=d["smoke_test"]["input"]["inline"] + "\n"),
        "smoke_test.input.inline",
    ),
    ("key_id", lambda d: d.update(key_id="XYZ"), "key_id"),
    ("key_id-null", lambda d: d.update(key_id=None), "key_id"),
    ("signature", lambda d: d.update(signature="abc"), "signature"),
]


@pytest.mark.parametrize(("case", "change", "field"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_wrong_types_and_values_name_their_field(
    case: str, change: Callable[[dict], None], field: str
) -> None:
    doc = _signed_doc()
    if case == "signature":
        change(doc)
        text = json.dumps(doc)
    else:
        change(doc)
        text = _resign(doc)  # validly signed, so only the format can be at fault
    error = _raises_exactly(ManifestFormatError, lambda: _verify(text))
    assert error.field == field, str(error)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "where", ["", "targets", "smoke_test", "smoke_test.input", "smoke_test.expected", "signature"]
)
def test_unknown_fields_are_refused(where: str) -> None:
    doc = _signed_doc()
    node = doc
    for part in filter(None, where.split(".")):
        node = node[part]
    node["comment"] = "looks harmless"
    text = json.dumps(doc) if where == "signature" else _resign(doc)
    error = _raises_exactly(ManifestFormatError, lambda: _verify(text))
    assert error.field == (f"{where}.comment" if where else "comment")  # type: ignore[attr-defined]


@pytest.mark.parametrize("field", sorted(set(_base_manifest().to_dict()) - {"schema"}))
def test_missing_fields_are_refused(field: str) -> None:
    doc = _signed_doc()
    del doc[field]
    error = _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))
    assert error.field == field  # type: ignore[attr-defined]


def test_missing_schema_is_refused() -> None:
    doc = _signed_doc()
    del doc["schema"]
    error = _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))
    assert error.field == "schema"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["chunks"].pop(),
        lambda d: d["chunks"].append("a" * 64),
        lambda d: d.update(size=d["size"] + CHUNK),
        lambda d: d.update(chunk_size=d["chunk_size"] * 2),
        lambda d: d.update(chunks=[]),
    ],
    ids=["one-short", "one-extra", "size-grows", "chunk-size-doubles", "empty"],
)
def test_chunk_list_must_match_size_and_chunk_size(change: Callable[[dict], None]) -> None:
    doc = _signed_doc()
    change(doc)
    error = _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))
    assert error.field == "chunks"  # type: ignore[attr-defined]


def test_inline_smoke_data_is_kept_small() -> None:
    big = np.random.default_rng(0).standard_normal(MAX_INLINE_SMOKE_BYTES // 8 + 100)
    error = _raises_exactly(ManifestFormatError, lambda: SmokeData.from_arrays({"x": big}))
    assert "release bundle" in str(error)


# --------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = sorted(_base_manifest().to_dict())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _refused_with_release_error(text: str | bytes) -> ReleaseError:
    with pytest.raises(ReleaseError) as info:
        _verify(text)
    return info.value


@FUZZ
@given(json_values)
def test_fuzz_any_json_document_is_refused_cleanly(value: Any) -> None:
    _refused_with_release_error(json.dumps(value))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_any_bytes_are_refused_cleanly(data: bytes) -> None:
    _refused_with_release_error(data)


@FUZZ
@given(st.dictionaries(st.sampled_from([*FIELDS, "signature", "extra"]), json_values, max_size=18))
def test_fuzz_documents_with_manifest_field_names_are_refused_cleanly(doc: dict) -> None:
    _refused_with_release_error(json.dumps(doc))
    _refused_with_release_error(_resign(doc))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


BASE_DOC = _signed_doc()
BASE_PATHS = [p for p in _paths({k: v for k, v in BASE_DOC.items() if k != "signature"})]


def _parent(doc: dict, path: tuple[Any, ...]) -> Any:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    return node


@FUZZ
@given(st.sampled_from(BASE_PATHS), json_values)
def test_fuzz_replacing_any_value_is_accepted_or_refused_cleanly(
    path: tuple[Any, ...], value: Any
) -> None:
    doc = json.loads(json.dumps(BASE_DOC))
    _parent(doc, path)[path[-1]] = value
    try:
        manifest = _verify(_resign(doc))
    except ReleaseError:
        return
    assert isinstance(manifest, ReleaseManifest)


@FUZZ
# Metadata entries are optional (a model may declare none); every other key is required.
@given(st.sampled_from([p for p in BASE_PATHS if isinstance(p[-1], str) and p[0] != "metadata"]))
def test_fuzz_removing_any_field_is_a_format_error(path: tuple[Any, ...]) -> None:
    doc = json.loads(json.dumps(BASE_DOC))
    del _parent(doc, path)[path[-1]]
    _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))


OBJECT_PATHS = [()] + [p for p in BASE_PATHS if isinstance(_parent(BASE_DOC, (*p, 0)), dict)]


@FUZZ
@given(st.sampled_from(OBJECT_PATHS), st.text(min_size=1, max_size=10), json_values)
def test_fuzz_adding_any_field_is_a_format_error(
    path: tuple[Any, ...], key: str, value: Any
) -> None:
    doc = json.loads(json.dumps(BASE_DOC))
    node = _parent(doc, (*path, None))
    if key in node or (path[:1] == ("metadata",) and key.startswith("edge_sdk.")):
        return  # not an unknown field: a replacement (covered above) or a metadata entry
    node[key] = value
    _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))


JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "schema": lambda v: type(v) is int,
    "name": lambda v: isinstance(v, str),
    "version": lambda v: type(v) is int,
    "size": lambda v: type(v) is int,
    "sha256": lambda v: isinstance(v, str),
    "chunk_size": lambda v: type(v) is int,
    "chunks": lambda v: isinstance(v, list),
    "metadata": lambda v: isinstance(v, dict),
    "min_sdk_version": lambda v: isinstance(v, str),
    "targets": lambda v: isinstance(v, dict),
    "created_at": lambda v: isinstance(v, str),
    "expires_at": lambda v: isinstance(v, str),
    "downgrade": lambda v: isinstance(v, bool),
    "smoke_test": lambda v: v is None or isinstance(v, dict),
    "key_id": lambda v: isinstance(v, str),
}


def test_json_type_table_covers_every_field() -> None:
    assert set(JSON_TYPES) == set(FIELDS)


@FUZZ
@given(st.data())
def test_fuzz_a_wrong_json_type_for_any_field_is_a_format_error(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(FIELDS))
    value = data.draw(json_values.filter(lambda v: not JSON_TYPES[field](v)))
    doc = json.loads(json.dumps(BASE_DOC))
    doc[field] = value
    error = _raises_exactly(ManifestFormatError, lambda: _verify(_resign(doc)))
    assert error.field is not None and error.field.startswith(field)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- smoke test data


def test_inline_smoke_test_round_trip_and_compare() -> None:
    signed = sign(_base_manifest(), SIGNER)
    smoke = _verify(signed.to_json()).smoke_test
    assert smoke is not None
    inputs = smoke.input.arrays()
    np.testing.assert_array_equal(inputs["x"], np.arange(4, dtype=np.float32).reshape(1, 4))
    assert smoke.compare({"y": np.ones((1, 4), np.float32) + 5e-4}) == []
    assert "differs by up to" in smoke.compare({"y": np.ones((1, 4), np.float32) + 0.01})[0]
    assert "missing" in smoke.compare({"z": np.ones((1, 4))})[0]
    assert "shape" in smoke.compare({"y": np.ones((4,), np.float32)})[0]


def test_smoke_data_in_the_bundle_is_pinned_by_its_hash(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "smoke").mkdir(parents=True)
    buffer = io.BytesIO()
    np.savez(buffer, x=np.full((1, 3, 8, 8), 0.5, np.float32))
    (bundle / "smoke" / "input.npz").write_bytes(buffer.getvalue())
    data = SmokeData.from_bundle_file(bundle, "smoke/input.npz")
    assert data.inline is None and data.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert data.arrays(bundle)["x"].shape == (1, 3, 8, 8)
    _raises_exactly(SmokeDataError, data.arrays)  # a bundle file, but no bundle given
    tampered = bytearray(buffer.getvalue())
    tampered[len(tampered) // 2] ^= 0xFF
    (bundle / "smoke" / "input.npz").write_bytes(bytes(tampered))
    error = _raises_exactly(SmokeDataError, lambda: data.arrays(bundle))
    assert "sha256" in str(error)
    (bundle / "smoke" / "input.npz").unlink()
    _raises_exactly(SmokeDataError, lambda: data.arrays(bundle))


def test_smoke_data_symlink_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    outside = tmp_path / "secret.npz"
    np.savez(outside, x=np.zeros(1))
    (bundle / "input.npz").symlink_to(outside)
    data = SmokeData(path="input.npz", sha256=hashlib.sha256(outside.read_bytes()).hexdigest())
    error = _raises_exactly(SmokeDataError, lambda: data.read(bundle))
    assert "outside" in str(error)


def _npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [b"not a zip", b"PK\x03\x04", _npz_bytes(x=np.zeros(100))[:-30]],
    ids=["text", "zip-magic-only", "truncated-npz"],
)
def test_smoke_data_that_is_not_an_npz(payload: bytes) -> None:
    data = SmokeData(inline=payload, sha256=hashlib.sha256(payload).hexdigest())
    _raises_exactly(SmokeDataError, data.arrays)


def test_smoke_data_npy_and_pickles_are_refused() -> None:
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    data = SmokeData(inline=npy.getvalue(), sha256=hashlib.sha256(npy.getvalue()).hexdigest())
    _raises_exactly(SmokeDataError, data.arrays)
    pickled = io.BytesIO()
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    data = SmokeData(
        inline=pickled.getvalue(), sha256=hashlib.sha256(pickled.getvalue()).hexdigest()
    )
    _raises_exactly(SmokeDataError, data.arrays)


def test_errors_say_what_to_do_next() -> None:
    text = sign(_base_manifest(), SIGNER).to_json()
    messages = {
        "downgrade": str(_raises_exactly(DowngradeError, lambda: _verify(text, active_version=9))),
        "budget": str(
            _raises_exactly(ManifestTooLargeError, lambda: _verify(text, storage_budget_bytes=1))
        ),
        "unsigned": str(
            _raises_exactly(SignatureError, lambda: _verify(_base_manifest().to_json()))
        ),
    }
    assert "downgrade" in messages["downgrade"]
    assert "storage budget" in messages["budget"]
    assert "sign it" in messages["unsigned"]


def test_the_documented_example_verifies() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "release-manifest.md").read_text()
    example = doc.split("## Example", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    public = doc.split("whose public key is\n`", 1)[1].split("`", 1)[0]
    trust = TrustStore([TrustedKey.from_text(public)])
    manifest = _verify(
        example, trust=trust, device_id="any", groups=["canary"], profile="raspberry-pi-5"
    )
    assert (manifest.name, manifest.version, manifest.key_id) == ("digits", 3, "53d97809ff424002")
    assert manifest.key_id == key_id(load_public_key(public))
