"""A streaming scan of the top level of an ONNX file, without the onnx package.

onnxruntime reports a truncated or non-ONNX file as an opaque protobuf parse failure. Reading
only the top-level field tags of ``ModelProto`` (seeking over payloads, so a 500 MB model costs a
few dozen small reads) tells an empty file from a truncated copy from something that is not an
ONNX model at all, and yields the ``metadata_props`` entries so they can be read or rewritten
without holding the model in memory.

Wire format: https://protobuf.dev/programming-guides/encoding/ ; field numbers from onnx.proto
(ModelProto): 1 ir_version, 2 producer_name, 3 producer_version, 4 domain, 5 model_version,
6 doc_string, 7 graph, 8 opset_import, 14 metadata_props, 20 training_info, 25 functions,
26 configuration.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edge_sdk.errors import (
    CorruptModelError,
    EmptyModelError,
    ModelIsDirectoryError,
    ModelLoadError,
    ModelNotFoundError,
    TruncatedModelError,
)

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
FIELD_IR_VERSION, FIELD_GRAPH, FIELD_OPSET_IMPORT, FIELD_METADATA_PROPS = 1, 7, 8, 14
MODEL_PROTO_FIELDS = {
    1: VARINT,
    2: LENGTH_DELIMITED,
    3: LENGTH_DELIMITED,
    4: LENGTH_DELIMITED,
    5: VARINT,
    6: LENGTH_DELIMITED,
    7: LENGTH_DELIMITED,
    8: LENGTH_DELIMITED,
    14: LENGTH_DELIMITED,
    20: LENGTH_DELIMITED,
    25: LENGTH_DELIMITED,
    26: LENGTH_DELIMITED,
}
# An ORT-format model is a FlatBuffer whose file identifier sits at bytes 4..8.
ORT_FORMAT_IDENTIFIER = b"ORTM"
_MAX_METADATA_ENTRY = 16 * 1024 * 1024


class ScanError(Exception):
    """Raised by the scanner; ``kind`` is "empty", "truncated" or "corrupt"."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Field:
    """One top-level field: where its bytes start and end (tag included) in the stream."""

    number: int
    wire_type: int
    start: int
    payload_start: int
    end: int


@dataclass
class ScanResult:
    size: int
    ort_format: bool = False
    fields: list[Field] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def has(self, number: int) -> bool:
        return any(f.number == number for f in self.fields)


def _read_varint(stream: BinaryIO) -> int | None:
    """A varint, or None at a clean end of stream; ScanError("truncated") inside one."""
    result = shift = 0
    for index in range(10):
        byte = stream.read(1)
        if not byte:
            if index == 0:
                return None
            raise ScanError("truncated", "the file ends inside a field tag or length")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
    raise ScanError("corrupt", "a varint longer than 10 bytes: not an ONNX model")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _decode_entry(payload: bytes) -> tuple[str, str]:
    """Decode a StringStringEntryProto (1: key, 2: value)."""
    stream = io.BytesIO(payload)
    parts = {1: "", 2: ""}
    while (tag := _read_varint(stream)) is not None:
        number, wire_type = tag >> 3, tag & 7
        if wire_type != LENGTH_DELIMITED:
            raise ScanError("corrupt", "a metadata_props entry has a non-string field")
        length = _read_varint(stream)
        data = stream.read(length or 0)
        if length is None or len(data) != length:
            raise ScanError("truncated", "a metadata_props entry is cut short")
        if number in parts:
            try:
                parts[number] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ScanError("corrupt", "a metadata_props entry is not UTF-8") from exc
    return parts[1], parts[2]


def iter_fields(stream: BinaryIO, size: int, result: ScanResult) -> Iterator[Field]:
    """Yield top-level fields, seeking over payloads; raise ScanError on a bad stream."""
    trusted = True  # every field so far is a ModelProto field with its proper wire type
    while True:
        start = stream.tell()
        tag = _read_varint(stream)
        if tag is None:
            return
        number, wire_type = tag >> 3, tag & 7
        expected = MODEL_PROTO_FIELDS.get(number)
        if number == 0 or wire_type not in (VARINT, FIXED64, LENGTH_DELIMITED, FIXED32):
            raise ScanError(
                "corrupt", f"byte {start} is not a protobuf field tag: not an ONNX model"
            )
        if expected is None or expected != wire_type:
            if start == 0:
                raise ScanError(
                    "corrupt", "the first bytes are not an ONNX ModelProto field: not an ONNX model"
                )
            trusted = False
        if wire_type == VARINT:
            if _read_varint(stream) is None:
                raise ScanError("truncated", f"the file ends inside field {number}")
            payload_start = end = stream.tell()
        else:
            if wire_type == LENGTH_DELIMITED:
                length = _read_varint(stream)
                if length is None:
                    raise ScanError("truncated", f"the file ends inside field {number}")
            else:
                length = 8 if wire_type == FIXED64 else 4
            payload_start = stream.tell()
            end = payload_start + length
            if end > size:
                kind = "truncated" if trusted else "corrupt"
                raise ScanError(
                    kind,
                    f"field {number} needs {end} bytes but the file has {size}"
                    + (": the file was cut short" if trusted else ": not an ONNX model"),
                )
            if number == FIELD_METADATA_PROPS and wire_type == LENGTH_DELIMITED:
                if length > _MAX_METADATA_ENTRY:
                    raise ScanError("corrupt", f"a metadata_props entry of {length} bytes")
                key, value = _decode_entry(stream.read(length))
                result.metadata[key] = value
            else:
                stream.seek(end)
        yield Field(number, wire_type, start, payload_start, end)


def scan(stream: BinaryIO, size: int) -> ScanResult:
    """Scan a model stream of ``size`` bytes; raise ScanError unless it is a complete model."""
    result = ScanResult(size=size)
    if size == 0:
        raise ScanError("empty", "the file is empty (0 bytes)")
    head = stream.read(8)
    stream.seek(0)
    if head[4:8] == ORT_FORMAT_IDENTIFIER:
        result.ort_format = True
        return result
    result.fields.extend(iter_fields(stream, size, result))
    for number, name in ((FIELD_GRAPH, "graph"), (FIELD_OPSET_IMPORT, "opset_import")):
        if not result.has(number):
            kind = "truncated" if result.has(FIELD_IR_VERSION) else "corrupt"
            raise ScanError(
                kind,
                f"the model has no {name} after {size} bytes"
                + (": the file was cut short" if kind == "truncated" else ": not an ONNX model"),
            )
    return result


def to_load_error(path: Path | None, exc: ScanError) -> ModelLoadError:
    error_type = {
        "empty": EmptyModelError,
        "truncated": TruncatedModelError,
        "corrupt": CorruptModelError,
    }[exc.kind]
    return error_type(path, exc.reason)


def check_path(path: Path) -> int:
    """The file's size; a specific ModelLoadError if it is missing, a directory or unreadable."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelNotFoundError(path, "no such file") from None
    except OSError as exc:
        raise ModelLoadError(path, f"cannot stat the file: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelIsDirectoryError(path, "the path is a directory, not a model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(path, "not a regular file")
    return info.st_size


def scan_file(path: Path) -> ScanResult:
    """Scan a model file; raise the ModelLoadError subclass that names what is wrong."""
    size = check_path(path)
    try:
        with path.open("rb") as stream:
            return scan(stream, size)
    except ScanError as exc:
        raise to_load_error(path, exc) from None
    except PermissionError as exc:
        raise ModelLoadError(path, "permission denied") from exc
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the file: {exc.strerror}") from exc


def scan_bytes(data: bytes | bytearray | memoryview) -> ScanResult:
    try:
        return scan(io.BytesIO(data), len(data))
    except ScanError as exc:
        raise to_load_error(None, exc) from None
