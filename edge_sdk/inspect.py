"""What is inside an ONNX model: versions, inputs and outputs, weights, operators, subgraphs.

``inspect_model(path)`` reads a model with the ``onnx`` package and returns a frozen
``ModelReport``; ``to_json()`` is the machine form (docs/inspect.md, format 1) and
``to_mermaid()`` draws the graph as a Mermaid flowchart.

The file is checked first by the SDK's streaming scan (``edge_sdk._onnxfile``), so an empty,
truncated, missing or non-ONNX file raises the ``ModelLoadError`` subclass that names the
problem instead of a protobuf traceback. Weights are never read: external data stays on disk
(as ``onnx.load(..., load_external_data=False)`` would leave it), and the large inline
initializers of the main graph lose their data before parsing (``_parse``), so the model is not
held in memory even once. Sizes come from the tensors' ``external_data`` entries (``length``)
or from their shapes. The report keeps a light copy of the graph's structure (names,
operators, edges), not the ``ModelProto``.

ONNX facts used here come from the IR spec (https://onnx.ai/onnx/repo-docs/IR.md): the empty
domain and ``"ai.onnx"`` are the same operator set; ``GRAPH``/``GRAPHS`` attributes hold the
bodies of control-flow operators (If: then_branch/else_branch, Loop and Scan: body); before IR
version 4 initializers were also listed among the graph inputs.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, TypeProto

from edge_sdk import _onnxfile
from edge_sdk.errors import CorruptModelError, ModelLoadError, ModelMetadataError
from edge_sdk.metadata import ModelMetadata

__all__ = [
    "FORMAT_VERSION",
    "GraphInfo",
    "ModelReport",
    "NodeInfo",
    "SubgraphInfo",
    "TensorInfo",
    "inspect_model",
]

# The version of the JSON documents written by to_json (docs/inspect.md).
FORMAT_VERSION = 1
DEFAULT_DOMAIN = "ai.onnx"
# Chains of at least this many nodes become one box in to_mermaid().
DEFAULT_COLLAPSE = 10

# TensorProto element types: NumPy-style name and bits per element (onnx.proto, TensorProto
# DataType). Built by name so that an older onnx package without the newest types still works.
_ELEMENT_TYPES: dict[int, tuple[str, int | None]] = {
    value: (name, bits)
    for attr, name, bits in (
        ("FLOAT", "float32", 32),
        ("UINT8", "uint8", 8),
        ("INT8", "int8", 8),
        ("UINT16", "uint16", 16),
        ("INT16", "int16", 16),
        ("INT32", "int32", 32),
        ("INT64", "int64", 64),
        ("STRING", "string", None),
        ("BOOL", "bool", 8),
        ("FLOAT16", "float16", 16),
        ("DOUBLE", "float64", 64),
        ("UINT32", "uint32", 32),
        ("UINT64", "uint64", 64),
        ("COMPLEX64", "complex64", 64),
        ("COMPLEX128", "complex128", 128),
        ("BFLOAT16", "bfloat16", 16),
        ("FLOAT8E4M3FN", "float8e4m3fn", 8),
        ("FLOAT8E4M3FNUZ", "float8e4m3fnuz", 8),
        ("FLOAT8E5M2", "float8e5m2", 8),
        ("FLOAT8E5M2FNUZ", "float8e5m2fnuz", 8),
        ("UINT4", "uint4", 4),
        ("INT4", "int4", 4),
        ("FLOAT4E2M1", "float4e2m1", 4),
        ("FLOAT8E8M0", "float8e8m0", 8),
        ("UINT2", "uint2", 2),
        ("INT2", "int2", 2),
        ("FLOAT6E2M3", "float6e2m3", 6),
        ("FLOAT6E3M2", "float6e3m2", 6),
    )
    if (value := getattr(TensorProto, attr, None)) is not None
}


def element_type_name(elem_type: int) -> str:
    """``TensorProto.FLOAT`` -> ``"float32"``; unknown codes -> ``"type<code>"``."""
    entry = _ELEMENT_TYPES.get(elem_type)
    return entry[0] if entry is not None else f"type{elem_type}"


def element_bits(elem_type: int) -> int | None:
    """Bits per element, or None for strings and unknown types."""
    entry = _ELEMENT_TYPES.get(elem_type)
    return entry[1] if entry is not None else None


def domain_name(domain: str) -> str:
    """The operator-set domain with the default spelled out (``""`` -> ``"ai.onnx"``)."""
    return domain or DEFAULT_DOMAIN


def op_key(domain: str, op_type: str) -> str:
    """How an operator is named in reports: ``Conv``, or ``com.microsoft:FusedConv``."""
    name = domain_name(domain)
    return op_type if name == DEFAULT_DOMAIN else f"{name}:{op_type}"


Dim = int | str | None


# --------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: element type name (``"float32"``, ``"sequence(float32)"``) and
    shape, where ints are fixed dimensions, strings symbolic ones (``"batch"``) and None unknown
    ones; ``shape`` is None when even the rank is unknown."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    @property
    def symbolic_dims(self) -> tuple[tuple[int, str | None], ...]:
        """(axis, symbol) of every dimension that is not fixed (symbol None when unnamed)."""
        if self.shape is None:
            return ()
        return tuple((axis, d) for axis, d in enumerate(self.shape) if not isinstance(d, int))

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype}[?...]"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        shape = data["shape"]
        return cls(data["name"], data["dtype"], None if shape is None else tuple(shape))


@dataclass(frozen=True)
class NodeInfo:
    """One node: its display name (the node's name, or ``<op>_<index>`` when it has none), its
    operator and domain, the tensors it reads and writes, and the bodies it holds."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    subgraphs: tuple[GraphInfo, ...] = ()

    @property
    def key(self) -> str:
        return op_key(self.domain, self.op_type)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }
        if self.subgraphs:
            document["subgraphs"] = [g.to_dict() for g in self.subgraphs]
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeInfo:
        return cls(
            name=data["name"],
            op_type=data["op_type"],
            domain=data["domain"],
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            subgraphs=tuple(GraphInfo.from_dict(g) for g in data.get("subgraphs", ())),
        )


@dataclass(frozen=True)
class GraphInfo:
    """The structure of a graph: ``name`` is the graph's name for the main graph and the
    attribute (``then_branch``, ``body``) for a body; inputs and outputs are tensor names."""

    name: str
    nodes: tuple[NodeInfo, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def total_nodes(self) -> int:
        """Nodes in this graph and in every body nested in it."""
        return sum(1 + sum(g.total_nodes for g in n.subgraphs) for n in self.nodes)

    def walk(self) -> Iterator[NodeInfo]:
        """Every node, bodies included, depth first in graph order."""
        for node in self.nodes:
            yield node
            for body in node.subgraphs:
                yield from body.walk()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "nodes": [n.to_dict() for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphInfo:
        return cls(
            name=data["name"],
            nodes=tuple(NodeInfo.from_dict(n) for n in data["nodes"]),
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
        )


@dataclass(frozen=True)
class SubgraphInfo:
    """A control-flow body: ``path`` is ``node/attribute`` from the main graph down
    (``outer_if/then_branch/inner_loop/body``), ``depth`` 1 for bodies of main-graph nodes;
    ``node_count`` counts the body's own nodes, ``total_nodes`` those of nested bodies too."""

    path: str
    node: str
    op_type: str
    attribute: str
    depth: int
    node_count: int
    total_nodes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "node": self.node,
            "op_type": self.op_type,
            "attribute": self.attribute,
            "depth": self.depth,
            "node_count": self.node_count,
            "total_nodes": self.total_nodes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubgraphInfo:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ModelReport:
    """Everything ``edge-sdk inspect`` shows about a model.

    Sizes are bytes. ``initializer_bytes`` counts every initializer (main graph and bodies),
    inline or external; ``external_data_bytes`` is the part stored in the files named in
    ``external_data_files`` (paths relative to the model); ``constant_bytes`` the tensors held
    by Constant nodes. ``op_histogram`` counts nodes per operator, bodies included (keys as
    ``op_key``: ``Conv``, ``com.microsoft:FusedConv``), most frequent first. ``warnings`` holds
    what looked wrong but did not stop the inspection (a missing external data file, malformed
    edge_sdk metadata).
    """

    path: str
    file_bytes: int
    ir_version: int
    opsets: Mapping[str, int]
    producer_name: str
    producer_version: str
    model_version: int
    graph_name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    initializer_count: int
    initializer_bytes: int
    external_data_bytes: int
    external_data_files: tuple[str, ...]
    constant_bytes: int
    node_count: int
    op_histogram: Mapping[str, int]
    subgraphs: tuple[SubgraphInfo, ...]
    functions: tuple[str, ...]
    metadata: Mapping[str, str]
    graph: GraphInfo
    warnings: tuple[str, ...] = ()
    format: int = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        for name in ("opsets", "op_histogram", "metadata"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def parameter_bytes(self) -> int:
        """Weights the model carries: initializers plus Constant node tensors."""
        return self.initializer_bytes + self.constant_bytes

    @property
    def edge_sdk_metadata(self) -> Mapping[str, str]:
        """The ``edge_sdk.*`` entries of ``metadata`` (docs/model-metadata.md)."""
        return MappingProxyType(
            {k: v for k, v in self.metadata.items() if k.startswith("edge_sdk.")}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": "edge-sdk.inspect",
            "path": self.path,
            "file_bytes": self.file_bytes,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer_name": self.producer_name,
            "producer_version": self.producer_version,
            "model_version": self.model_version,
            "graph_name": self.graph_name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "initializer_count": self.initializer_count,
            "initializer_bytes": self.initializer_bytes,
            "external_data_bytes": self.external_data_bytes,
            "external_data_files": list(self.external_data_files),
            "constant_bytes": self.constant_bytes,
            "node_count": self.node_count,
            "op_histogram": dict(self.op_histogram),
            "subgraphs": [s.to_dict() for s in self.subgraphs],
            "functions": list(self.functions),
            "metadata": dict(self.metadata),
            "warnings": list(self.warnings),
            "graph": self.graph.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON document (format 1, docs/inspect.md)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelReport:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"not an inspect report of format {FORMAT_VERSION}: format {data.get('format')!r}"
            )
        return cls(
            path=data["path"],
            file_bytes=data["file_bytes"],
            ir_version=data["ir_version"],
            opsets=data["opsets"],
            producer_name=data["producer_name"],
            producer_version=data["producer_version"],
            model_version=data["model_version"],
            graph_name=data["graph_name"],
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            initializer_count=data["initializer_count"],
            initializer_bytes=data["initializer_bytes"],
            external_data_bytes=data["external_data_bytes"],
            external_data_files=tuple(data["external_data_files"]),
            constant_bytes=data["constant_bytes"],
            node_count=data["node_count"],
            op_histogram=data["op_histogram"],
            subgraphs=tuple(SubgraphInfo.from_dict(s) for s in data["subgraphs"]),
            functions=tuple(data["functions"]),
            metadata=data["metadata"],
            graph=GraphInfo.from_dict(data["graph"]),
            warnings=tuple(data["warnings"]),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelReport:
        """The report ``to_json`` wrote. Raises ValueError for another format."""
        return cls.from_dict(json.loads(text))

    def to_text(self) -> str:
        """The readable summary ``edge-sdk inspect`` prints."""
        weights = f"{self.initializer_count} initializers, {format_bytes(self.initializer_bytes)}"
        if self.external_data_files:
            weights += (
                f" ({format_bytes(self.external_data_bytes)} in "
                f"{', '.join(self.external_data_files)})"
            )
        if self.constant_bytes:
            weights += f"; Constant nodes {format_bytes(self.constant_bytes)}"
        producer = " ".join(p for p in (self.producer_name, self.producer_version) if p)
        rows = [
            ("model", f"{self.path} ({format_bytes(self.file_bytes)})"),
            ("producer", producer or "(not recorded)"),
            (
                "versions",
                f"IR {self.ir_version}; opsets "
                + ", ".join(f"{d} {v}" for d, v in self.opsets.items()),
            ),
        ]
        rows += [("input", str(t)) for t in self.inputs]
        rows += [("output", str(t)) for t in self.outputs]
        rows.append(("weights", weights))
        histogram = ", ".join(f"{op} {count}" for op, count in self.op_histogram.items())
        rows.append(("nodes", f"{self.node_count}: {histogram}" if histogram else "0"))
        for body in self.subgraphs:
            indent = "  " * (body.depth - 1)
            rows.append(
                (
                    "subgraph",
                    f"{indent}{body.path} ({body.op_type}, {count_of(body.node_count, 'node')})",
                )
            )
        rows += [("function", name) for name in self.functions]
        for key, value in self.metadata.items():
            shown = value if len(value) <= 72 else value[:69] + "..."
            rows.append(("metadata", f"{key} = {shown}"))
        rows += [("warning", w) for w in self.warnings]
        return "\n".join(f"{key:<10} {value}" for key, value in rows)

    def to_mermaid(self, collapse: int = DEFAULT_COLLAPSE) -> str:
        """The graph as a Mermaid flowchart (https://mermaid.js.org/syntax/flowchart.html).

        Control-flow bodies are Mermaid subgraphs inside a subgraph for their node; linear
        chains of at least ``collapse`` nodes (0: never) become one box such as
        ``Conv → Relu → … → Gemm (12 nodes)``, so that a real model stays readable.
        """
        return _Mermaid(collapse).render(self)


def count_of(number: int, noun: str) -> str:
    """``count_of(1, "node")`` -> ``"1 node"``, ``count_of(3, "node")`` -> ``"3 nodes"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, as /proc/meminfo and the budgets use)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Loading


def load_model_proto(path: str | os.PathLike[str]) -> tuple[Path, int, ModelProto]:
    """The model without its external data, after the streaming scan has ruled out an empty,
    truncated or non-ONNX file. Returns (path, file size, model); raises ModelLoadError
    subclasses."""
    model_path = Path(path)
    scanned = _onnxfile.scan_file(model_path)
    if scanned.ort_format:
        raise ModelLoadError(
            model_path, "an ORT-format model: inspect and check read .onnx (protobuf) models only"
        )
    try:
        model = _parse(model_path, scanned)
    except ValueError as exc:  # from the skeleton's own walk of the graph
        raise CorruptModelError(model_path, f"not a valid ONNX protobuf: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(model_path, f"cannot read the file: {exc}") from exc
    except Exception as exc:
        # The scan passed, so the top level is sound: protobuf's DecodeError means a nested
        # message is damaged.
        if type(exc).__name__ == "DecodeError":
            raise CorruptModelError(model_path, f"not a valid ONNX protobuf: {exc}") from exc
        raise
    if not model.HasField("graph"):
        raise CorruptModelError(model_path, "the model has no graph: not an ONNX model")
    return model_path, scanned.size, model


def _parse(path: Path, scanned: _onnxfile.ScanResult) -> ModelProto:
    """The model without the bulk data of its main graph's large initializers.

    Weights are most of a model's bytes and nothing here needs their values, only their
    shapes and types. So the file is read through a read-only memory map and its protobuf
    stream is rewritten on the fly: the main graph's initializers above ``_KEEP_INLINE``
    bytes lose their data fields (``raw_data``, ``float_data``, ...), everything else is
    copied as it is, and only that skeleton is parsed. Memory stays near the size of the graph's
    structure whatever the size of the weights, and the weights are never held as bytes plus a
    parsed copy (what ``onnx.load`` does). Small initializers keep their data: shape
    inference reads a Reshape's target shape from one. External data stays on disk.
    """
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        skeleton = bytearray()
        for fld in scanned.fields:
            if fld.number == _onnxfile.FIELD_GRAPH and fld.wire_type == _onnxfile.LENGTH_DELIMITED:
                graph = _graph_skeleton(view, fld.payload_start, fld.end)
                skeleton += _tag(_onnxfile.FIELD_GRAPH) + _onnxfile.encode_varint(len(graph))
                skeleton += graph
            else:
                skeleton += view[fld.start : fld.end]
    model = ModelProto()
    model.ParseFromString(bytes(skeleton))
    return model


# Field numbers from onnx.proto: GraphProto.initializer = 5; TensorProto.data_type = 2 and its
# bulk data fields float_data 4, int32_data 5, int64_data 7, raw_data 9, double_data 10,
# uint64_data 11 (string_data 6 is kept: its size cannot be computed from the shape).
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_TENSOR_BULK_FIELDS = frozenset({4, 5, 7, 9, 10, 11})
_KEEP_INLINE = 4096


def _tag(number: int, wire_type: int = _onnxfile.LENGTH_DELIMITED) -> bytes:
    return _onnxfile.encode_varint((number << 3) | wire_type)


def _varint(view: Any, position: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``position``; ValueError past ``end``."""
    result = shift = 0
    while position < end and shift < 70:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
    raise ValueError("a varint runs past the end of its message")


def _fields(view: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, field start, field end) of each field in ``view[start:end]``."""
    position = start
    while position < end:
        tag, after_tag = _varint(view, position, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _onnxfile.VARINT:
            _, field_end = _varint(view, after_tag, end)
        elif wire_type == _onnxfile.FIXED64:
            field_end = after_tag + 8
        elif wire_type == _onnxfile.FIXED32:
            field_end = after_tag + 4
        elif wire_type == _onnxfile.LENGTH_DELIMITED:
            length, payload = _varint(view, after_tag, end)
            field_end = payload + length
        else:
            raise ValueError(f"wire type {wire_type} at byte {position}: not an ONNX graph")
        if number == 0 or field_end > end:
            raise ValueError(f"a field at byte {position} runs past the end of its message")
        yield number, wire_type, position, field_end
        position = field_end


def _payload_start(view: Any, field_start: int, end: int) -> int:
    _, after_tag = _varint(view, field_start, end)
    _, payload = _varint(view, after_tag, end)
    return payload


def _graph_skeleton(view: Any, start: int, end: int) -> bytearray:
    out = bytearray()
    for number, wire_type, field_start, field_end in _fields(view, start, end):
        if (
            number == _GRAPH_INITIALIZER
            and wire_type == _onnxfile.LENGTH_DELIMITED
            and field_end - field_start > _KEEP_INLINE
        ):
            tensor = _tensor_skeleton(view, _payload_start(view, field_start, end), field_end)
            out += _tag(_GRAPH_INITIALIZER) + _onnxfile.encode_varint(len(tensor)) + tensor
        else:
            out += view[field_start:field_end]
    return out


def _tensor_skeleton(view: Any, start: int, end: int) -> bytes:
    fields = list(_fields(view, start, end))
    data_type = 0
    for number, wire_type, field_start, field_end in fields:
        if number == _TENSOR_DATA_TYPE and wire_type == _onnxfile.VARINT:
            data_type, _ = _varint(view, _varint(view, field_start, field_end)[1], field_end)
    if element_bits(data_type) is None:
        return bytes(view[start:end])  # a type whose size only its data tells: kept whole
    out = bytearray()
    for number, _, field_start, field_end in fields:
        if number not in _TENSOR_BULK_FIELDS:
            out += view[field_start:field_end]
    return bytes(out)


def inspect_model(path: str | os.PathLike[str]) -> ModelReport:
    """Read a model file and describe it (see ModelReport).

    Raises ModelNotFoundError, ModelIsDirectoryError, EmptyModelError, TruncatedModelError,
    CorruptModelError (all ModelLoadError).

    Example: ``print(inspect_model("model.onnx").to_mermaid())``.
    """
    model_path, size, model = load_model_proto(path)
    return report_from_proto(model, model_path, size)


def report_from_proto(model: ModelProto, path: Path, file_bytes: int) -> ModelReport:
    """The ModelReport of an already loaded model (no external data needed)."""
    warnings: list[str] = []
    weights = _Weights()
    subgraphs: list[SubgraphInfo] = []
    graph = _graph_info(model.graph, model.graph.name, weights, subgraphs, "", 0)
    histogram = Counter(node.key for node in graph.walk())
    for location in weights.external_files:
        if not (path.parent / location).is_file():
            warnings.append(f"external data file {location!r} is missing next to the model")
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    try:
        ModelMetadata.from_props(metadata)
    except ModelMetadataError as exc:  # reported; the model is still worth inspecting
        warnings.append(str(exc))
    graph_inputs = {vi.name: vi for vi in model.graph.input}
    initializer_names = {t.name for t in model.graph.initializer}
    return ModelReport(
        path=str(path),
        file_bytes=file_bytes,
        ir_version=model.ir_version,
        opsets={domain_name(o.domain): o.version for o in model.opset_import},
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        model_version=model.model_version,
        graph_name=model.graph.name,
        # Before IR 4 initializers were listed among the inputs too: those are not inputs.
        inputs=tuple(
            tensor_info(vi) for name, vi in graph_inputs.items() if name not in initializer_names
        ),
        outputs=tuple(tensor_info(vi) for vi in model.graph.output),
        initializer_count=weights.count,
        initializer_bytes=weights.bytes,
        external_data_bytes=weights.external_bytes,
        external_data_files=tuple(sorted(weights.external_files)),
        constant_bytes=weights.constant_bytes,
        node_count=graph.total_nodes,
        op_histogram=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        subgraphs=tuple(subgraphs),
        functions=tuple(op_key(f.domain, f.name) for f in model.functions),
        metadata=metadata,
        graph=graph,
        warnings=tuple(warnings),
    )


def type_text(type_proto: TypeProto) -> tuple[str, tuple[Dim, ...] | None]:
    """Element type name and shape of a ValueInfo's type."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        tensor = type_proto.tensor_type
        return element_type_name(tensor.elem_type), shape_of(tensor)
    if kind == "sparse_tensor_type":
        sparse = type_proto.sparse_tensor_type
        return f"sparse({element_type_name(sparse.elem_type)})", shape_of(sparse)
    if kind == "sequence_type":
        inner, _ = type_text(type_proto.sequence_type.elem_type)
        return f"sequence({inner})", None
    if kind == "optional_type":
        inner, shape = type_text(type_proto.optional_type.elem_type)
        return f"optional({inner})", shape
    if kind == "map_type":
        key = element_type_name(type_proto.map_type.key_type)
        value, _ = type_text(type_proto.map_type.value_type)
        return f"map({key}, {value})", None
    return "unknown", None


def shape_of(tensor_type: Any) -> tuple[Dim, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def tensor_info(value_info: onnx.ValueInfoProto) -> TensorInfo:
    dtype, shape = type_text(value_info.type)
    return TensorInfo(value_info.name, dtype, shape)


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes a tensor's data takes, inline or external, without reading external data."""
    if tensor.data_location == TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        if entries.get("length", "").isdigit():
            return int(entries["length"])
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = element_bits(tensor.data_type)
    if bits is None:
        return len(tensor.raw_data)
    # Sub-byte types (int4, float4) are packed, rounding up to whole bytes (onnx.proto).
    return (int(math.prod(tensor.dims)) * bits + 7) // 8


class _Weights:
    """Running totals of the tensors a model carries."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.external_bytes = 0
        self.external_files: set[str] = set()
        self.constant_bytes = 0

    def add_initializer(self, tensor: TensorProto) -> None:
        size = tensor_bytes(tensor)
        self.count += 1
        self.bytes += size
        if tensor.data_location == TensorProto.EXTERNAL:
            self.external_bytes += size
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                self.external_files.add(location)

    def add_constant(self, node: onnx.NodeProto) -> None:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                self.constant_bytes += tensor_bytes(attribute.t)
            elif attribute.type == AttributeProto.SPARSE_TENSOR:
                self.constant_bytes += tensor_bytes(attribute.sparse_tensor.values)


def node_display_name(node: onnx.NodeProto, index: int) -> str:
    # Names are optional in ONNX; an unnamed node is shown as <op>_<position in its graph>.
    return node.name or f"{node.op_type}_{index}"


def bodies(node: onnx.NodeProto) -> Iterator[tuple[str, GraphProto]]:
    """(label, graph) of every graph attribute: ``body``, or ``branches[0]`` for GRAPHS."""
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            yield attribute.name, attribute.g
        elif attribute.type == AttributeProto.GRAPHS:
            for index, graph in enumerate(attribute.graphs):
                yield f"{attribute.name}[{index}]", graph


def _graph_info(
    graph: GraphProto,
    name: str,
    weights: _Weights,
    subgraphs: list[SubgraphInfo],
    prefix: str,
    depth: int,
) -> GraphInfo:
    for tensor in graph.initializer:
        weights.add_initializer(tensor)
    for sparse in graph.sparse_initializer:
        weights.count += 1
        weights.bytes += tensor_bytes(sparse.values) + tensor_bytes(sparse.indices)
    nodes = []
    for index, node in enumerate(graph.node):
        display = node_display_name(node, index)
        if node.op_type == "Constant" and node.domain in ("", DEFAULT_DOMAIN):
            weights.add_constant(node)
        children = []
        for label, body in bodies(node):
            path = f"{prefix}{display}/{label}"
            slot = len(subgraphs)
            subgraphs.append(SubgraphInfo(path, display, node.op_type, label, depth + 1, 0, 0))
            child = _graph_info(body, label, weights, subgraphs, f"{path}/", depth + 1)
            # Filled in after the body is walked, keeping parents before their children.
            subgraphs[slot] = SubgraphInfo(
                path, display, node.op_type, label, depth + 1, len(child.nodes), child.total_nodes
            )
            children.append(child)
        nodes.append(
            NodeInfo(
                name=display,
                op_type=node.op_type,
                domain=domain_name(node.domain),
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                subgraphs=tuple(children),
            )
        )
    return GraphInfo(
        name=name,
        nodes=tuple(nodes),
        inputs=tuple(vi.name for vi in graph.input),
        outputs=tuple(vi.name for vi in graph.output),
    )


# --------------------------------------------------------------------------------------------
# Mermaid


def _outer_names(node: NodeInfo) -> set[str]:
    """Names the node's bodies read but do not define: values from the enclosing scopes."""
    used: set[str] = set()
    defined: set[str] = set()
    for body in node.subgraphs:
        defined.update(body.inputs)
        for inner in body.nodes:
            used.update(n for n in inner.inputs if n)
            defined.update(inner.outputs)
            used.update(_outer_names(inner))
    return used - defined - set(node.inputs)


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_]")


def mermaid_label(text: str) -> str:
    """Text made safe inside a quoted Mermaid label: quotes, angle brackets and '#' become
    Mermaid's entity codes (https://mermaid.js.org/syntax/flowchart.html#entity-codes-to-escape-characters)."""
    return (
        text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


class _Ids:
    """Unique Mermaid ids: a fixed prefix (so no id is a keyword such as ``end``), then the
    name with everything but letters, digits and underscores replaced."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, prefix: str, name: str) -> str:
        base = f"{prefix}_{_UNSAFE_ID.sub('_', name)}"[:60]
        candidate, suffix = base, 2
        while candidate in self.used:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        self.used.add(candidate)
        return candidate


class _Mermaid:
    def __init__(self, collapse: int) -> None:
        if collapse < 0:
            raise ValueError(f"collapse must be >= 0, got {collapse}")
        self.collapse = collapse
        self.ids = _Ids()
        self.lines: list[str] = []

    def render(self, report: ModelReport) -> str:
        self.lines = ["flowchart TD"]
        sources: dict[str, str] = {}
        for tensor in report.inputs:
            node_id = self.ids.make("in", tensor.name)
            self.lines.append(f'    {node_id}(["{mermaid_label(str(tensor))}"])')
            sources[tensor.name] = node_id
        sinks: dict[str, str] = {}
        for tensor in report.outputs:
            node_id = self.ids.make("out", tensor.name)
            self.lines.append(f'    {node_id}(["{mermaid_label(str(tensor))}"])')
            sinks[tensor.name] = node_id
        self._graph(report.graph, sources, sinks, "    ")
        return "\n".join(self.lines) + "\n"

    def _graph(
        self,
        graph: GraphInfo,
        sources: Mapping[str, str],
        sinks: Mapping[str, str],
        indent: str,
    ) -> None:
        producer: dict[str, int] = {}
        for index, node in enumerate(graph.nodes):
            for name in node.outputs:
                if name:
                    producer[name] = index
        consumers: dict[int, set[int]] = {i: set() for i in range(len(graph.nodes))}
        producers: dict[int, set[int]] = {i: set() for i in range(len(graph.nodes))}
        for index, node in enumerate(graph.nodes):
            for name in node.inputs:
                if name in producer:
                    consumers[producer[name]].add(index)
                    producers[index].add(producer[name])

        def links(a: int, b: int) -> bool:
            """True when b is a's only consumer and a is b's only producer in a plain chain."""
            first, second = graph.nodes[a], graph.nodes[b]
            return (
                consumers[a] == {b}
                and producers[b] == {a}
                and not first.subgraphs
                and not second.subgraphs
                and not any(name in sinks for name in first.outputs)
            )

        block_of: dict[int, str] = {}
        for start in range(len(graph.nodes)):
            if start in block_of:
                continue
            if len(producers[start]) == 1:
                (previous,) = producers[start]
                if links(previous, start) and self.collapse:
                    continue  # reached from its chain's start
            chain = [start]
            while self.collapse and len(consumers[chain[-1]]) == 1:
                (following,) = consumers[chain[-1]]
                if not links(chain[-1], following):
                    break
                chain.append(following)
            if self.collapse and len(chain) >= max(self.collapse, 2):
                block_id = self.ids.make("n", graph.nodes[start].name)
                ops = [graph.nodes[i].op_type for i in chain]
                shown = ops if len(ops) <= 3 else [ops[0], ops[1], "…", ops[-1]]
                label = f"{' → '.join(shown)} ({len(chain)} nodes)"
                self.lines.append(f'{indent}{block_id}["{mermaid_label(label)}"]')
                for index in chain:
                    block_of[index] = block_id
                continue
            for index in chain:
                block_of[index] = self._node(graph.nodes[index], indent)
        # Nodes skipped above because they continue a chain shorter than the threshold.
        for index, node in enumerate(graph.nodes):
            if index not in block_of:
                block_of[index] = self._node(node, indent)

        edges: list[tuple[str, str]] = []
        for index, node in enumerate(graph.nodes):
            target = block_of[index]
            # A body may read values of the enclosing graph by name (ONNX IR, "outer scope"):
            # drawn as inputs of the node that holds the body.
            for name in (*node.inputs, *sorted(_outer_names(node))):
                if name in producer:
                    source = block_of[producer[name]]
                elif name in sources:
                    source = sources[name]
                else:
                    continue  # an initializer, an omitted optional input, or an outer value
                if source != target:
                    edges.append((source, target))
            for name in node.outputs:
                if name in sinks:
                    edges.append((target, sinks[name]))
        for source, target in dict.fromkeys(edges):
            self.lines.append(f"{indent}{source} --> {target}")

    def _node(self, node: NodeInfo, indent: str) -> str:
        node_id = self.ids.make("n", node.name)
        label = mermaid_label(node.key)
        if node.name != node.op_type:
            label += "<br/>" + mermaid_label(node.name)
        if not node.subgraphs:
            self.lines.append(f'{indent}{node_id}["{label}"]')
            return node_id
        self.lines.append(
            f'{indent}subgraph {node_id}["{mermaid_label(f"{node.key} {node.name}")}"]'
        )
        inner = indent + "    "
        for body in node.subgraphs:
            body_id = self.ids.make("g", f"{node.name}_{body.name}")
            title = f"{body.name} ({count_of(len(body.nodes), 'node')})"
            self.lines.append(f'{inner}subgraph {body_id}["{mermaid_label(title)}"]')
            body_sources: dict[str, str] = {}
            for name in body.inputs:
                value_id = self.ids.make("v", f"{body_id}_{name}")
                self.lines.append(f'{inner}    {value_id}(["{mermaid_label(name)}"])')
                body_sources[name] = value_id
            body_sinks: dict[str, str] = {}
            for name in body.outputs:
                value_id = self.ids.make("v", f"{body_id}_{name}_out")
                self.lines.append(f'{inner}    {value_id}(["{mermaid_label(name)}"])')
                body_sinks[name] = value_id
            for name in set(body.inputs) & set(body.outputs):  # passed straight through
                self.lines.append(f"{inner}    {body_sources[name]} --> {body_sinks[name]}")
            self._graph(body, body_sources, body_sinks, inner + "    ")
            self.lines.append(f"{inner}end")
        self.lines.append(f"{indent}end")
        return node_id
