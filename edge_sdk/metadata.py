"""Model metadata: what an ONNX model carries so a device needs nothing else to use it.

Keys in ``metadata_props`` (docs/model-metadata.md, version 1):

- ``edge_sdk.labels``: JSON list of class names;
- ``edge_sdk.preprocess``: JSON preprocessing spec (see ``edge_sdk.preprocess``);
- ``edge_sdk.postprocess``: JSON postprocessing spec (see ``edge_sdk.postprocess``);
- ``edge_sdk.version``: the model's own version string.

``write_metadata`` rewrites only the top-level ``metadata_props`` entries of the file, streaming
every other byte through unchanged, so it needs neither the onnx package nor memory for the
whole model; the result replaces the destination atomically (temp file, fsync, rename, fsync of
the directory) because a half-written model on flash is worse than the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge_sdk import _onnxfile
from edge_sdk.errors import ModelMetadataError

__all__ = [
    "LABELS_KEY",
    "POSTPROCESS_KEY",
    "PREPROCESS_KEY",
    "VERSION_KEY",
    "ModelMetadata",
    "read_metadata",
    "write_metadata",
]

LABELS_KEY = "edge_sdk.labels"
PREPROCESS_KEY = "edge_sdk.preprocess"
POSTPROCESS_KEY = "edge_sdk.postprocess"
VERSION_KEY = "edge_sdk.version"
_COPY_CHUNK = 1 << 20


def _json_value(props: Mapping[str, str], key: str) -> Any:
    raw = props.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelMetadataError(key, f"not valid JSON ({exc.msg} at position {exc.pos})") from exc


@dataclass(frozen=True)
class ModelMetadata:
    """What a model declares about itself; every field is None when the model does not say.

    ``preprocess`` and ``postprocess`` are the parsed JSON specs (validated when a
    ``PreprocessSpec``/``PostprocessSpec`` is built from them); ``props`` holds every
    ``metadata_props`` entry as read-only strings.

    Example: ``EdgeModel.load(path).metadata.labels``.
    """

    labels: tuple[str, ...] | None
    preprocess: Mapping[str, Any] | None
    postprocess: Mapping[str, Any] | None
    version: str | None
    props: Mapping[str, str]

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Parse ``metadata_props``; raise ModelMetadataError naming a malformed key."""
        labels = _json_value(props, LABELS_KEY)
        if labels is not None and (
            not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
        ):
            raise ModelMetadataError(LABELS_KEY, "expected a JSON list of strings")
        specs = {}
        for key in (PREPROCESS_KEY, POSTPROCESS_KEY):
            value = _json_value(props, key)
            if value is not None and not isinstance(value, dict):
                raise ModelMetadataError(key, "expected a JSON object")
            specs[key] = None if value is None else MappingProxyType(value)
        return cls(
            labels=None if labels is None else tuple(labels),
            preprocess=specs[PREPROCESS_KEY],
            postprocess=specs[POSTPROCESS_KEY],
            version=props.get(VERSION_KEY),
            props=MappingProxyType(dict(props)),
        )


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read a model file's metadata without onnxruntime; raises ModelLoadError subclasses.

    Example: ``read_metadata("digits.onnx").labels``.
    """
    result = _onnxfile.scan_file(Path(path))
    if result.ort_format:
        raise ModelMetadataError("*", "ORT-format models: read metadata with EdgeModel.load")
    return ModelMetadata.from_props(result.metadata)


def _encode_entry(key: str, value: str) -> bytes:
    def string_field(number: int, text: str) -> bytes:
        data = text.encode("utf-8")
        tag = (number << 3) | _onnxfile.LENGTH_DELIMITED
        return _onnxfile.encode_varint(tag) + _onnxfile.encode_varint(len(data)) + data

    entry = string_field(1, key) + string_field(2, value)
    tag = (_onnxfile.FIELD_METADATA_PROPS << 3) | _onnxfile.LENGTH_DELIMITED
    return _onnxfile.encode_varint(tag) + _onnxfile.encode_varint(len(entry)) + entry


def _copy_range(src: Any, dst: Any, start: int, end: int) -> None:
    src.seek(start)
    remaining = end - start
    while remaining:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        dst.write(chunk)
        remaining -= len(chunk)


def write_metadata(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    props: Mapping[str, str | list[str] | dict[str, Any]] | None = None,
    *,
    remove: Iterable[str] = (),
) -> Path:
    """Set (and ``remove``) ``metadata_props`` entries, writing ``dst`` (default: in place).

    Values that are not strings are stored as compact JSON. Entries not named keep their
    values. Raises ModelLoadError subclasses for a bad ``src``; ``dst`` is replaced atomically.

    Example: ``write_metadata("m.onnx", props={"edge_sdk.labels": ["cat", "dog"]})``.
    """
    source = Path(src)
    target = Path(dst) if dst is not None else source
    encoded: dict[str, str] = {}
    for key, value in (props or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata keys must be non-empty strings, got {key!r}")
        encoded[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    dropped = set(encoded) | set(remove)
    result = _onnxfile.scan_file(source)
    if result.ort_format:
        raise ModelMetadataError("*", "cannot rewrite metadata of an ORT-format model")

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
            for fld in result.fields:
                if fld.number == _onnxfile.FIELD_METADATA_PROPS:
                    reader.seek(fld.payload_start)
                    key, _value = _onnxfile._decode_entry(reader.read(fld.end - fld.payload_start))
                    if key in dropped:
                        continue
                _copy_range(reader, writer, fld.start, fld.end)
            for key, value in encoded.items():
                writer.write(_encode_entry(key, value))
            writer.flush()
            # mkstemp creates 0600; the model keeps the permissions of its source.
            os.fchmod(writer.fileno(), source.stat().st_mode & 0o7777)
            os.fsync(writer.fileno())
        Path(tmp_name).replace(target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    # Without this the rename itself may not survive a power cut on ext4/f2fs.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
