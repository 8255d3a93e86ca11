"""Will this model work on that device? A compatibility report before deploying, and a check
of a model's outputs against reference outputs on this machine.

``check_model(path, profile)`` reads the model with the ``onnx`` package (never onnxruntime:
the check is about the device's onnxruntime, not this machine's) and compares it with a
``DeviceProfile``:

- IR version and opsets against the onnxruntime version the profile expects
  (``ONNXRUNTIME_SUPPORT``, from the onnxruntime compatibility table);
- every operator against the providers: which ones the profile's accelerator takes, which
  nodes fall back to the CPU (named), and which no provider can run at all;
- the share of the compute that falls back to the CPU, from per-node FLOP estimates over the
  shapes ``onnx.shape_inference`` infers;
- dtypes against the accelerator's (a float model on an int8-only DPU), symbolic dimensions;
- parameters plus a peak-activation estimate against ``budgets.memory_mb``, the files on disk
  against ``budgets.storage_mb``.

Each finding has a severity; the verdict is the worst of them (docs/inspect.md, "Verdict").

``validate_model(model, inputs, expected)`` runs the model with ``EdgeModel`` on the profile's
providers and compares every output with a reference, per output max abs and rel error.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import onnx.defs
from onnx import GraphProto, ModelProto, TensorProto

from edge_sdk.errors import ProfileError, ReferenceDataError
from edge_sdk.inspect import (
    DEFAULT_DOMAIN,
    FORMAT_VERSION,
    ModelReport,
    bodies,
    count_of,
    domain_name,
    element_bits,
    element_type_name,
    format_bytes,
    load_model_proto,
    node_display_name,
    op_key,
    report_from_proto,
    tensor_bytes,
    type_text,
)

if TYPE_CHECKING:
    from edge_sdk.profiles import Accelerator, DeviceProfile
    from edge_sdk.runtime import EdgeModel

__all__ = [
    "ONNXRUNTIME_SUPPORT",
    "CompatReport",
    "DynamicDim",
    "Finding",
    "OffloadedNode",
    "OpUse",
    "OutputComparison",
    "RuntimeSupport",
    "ValidationReport",
    "check_model",
    "load_arrays",
    "runtime_support",
    "validate_model",
]

Severity = Literal["info", "warn", "fail"]
Verdict = Literal["pass", "warn", "fail"]
_RANK = {"info": 0, "warn": 1, "fail": 2}
MIB = 1024 * 1024

# onnxruntime (major, minor) -> (ai.onnx opset, ai.onnx.ml opset, IR version) it implements.
# Source: "ONNX opset support" table, https://onnxruntime.ai/docs/reference/compatibility.html
# (docs/reference/compatibility.md in microsoft/onnxruntime, rows 0.1 to 1.20). Newer versions
# are not in the table; for them the 1.20 row is a lower bound (RuntimeSupport.confirmed False).
ONNXRUNTIME_SUPPORT: Mapping[tuple[int, int], tuple[int, int, int]] = MappingProxyType(
    {
        (1, 20): (21, 4, 10),
        (1, 19): (21, 4, 10),
        (1, 18): (21, 4, 10),
        (1, 17): (20, 4, 9),
        (1, 16): (19, 3, 9),
        (1, 15): (19, 3, 8),
        (1, 14): (18, 3, 8),
        (1, 13): (17, 3, 8),
        (1, 12): (17, 3, 8),
        (1, 11): (16, 2, 8),
        (1, 10): (15, 2, 8),
        (1, 9): (15, 2, 8),
        (1, 8): (14, 2, 7),
        (1, 7): (13, 2, 7),
        (1, 6): (13, 2, 7),
        (1, 5): (12, 2, 7),
        (1, 4): (12, 2, 7),
        (1, 3): (12, 2, 7),
        (1, 2): (11, 2, 6),
        (1, 1): (11, 2, 6),
        (1, 0): (11, 2, 6),
        (0, 5): (10, 1, 5),
        (0, 4): (10, 1, 5),
        (0, 3): (9, 1, 3),
        (0, 2): (8, 1, 3),
        (0, 1): (8, 1, 3),
    }
)
# "All versions of ONNX Runtime support ONNX opsets from ONNX v1.2.1+ (opset version 7 and
# higher)" (same page).
MIN_OPSET = 7
ML_DOMAIN = "ai.onnx.ml"
# onnxruntime's contrib operators (docs/ContribOperators.md in microsoft/onnxruntime): not ONNX,
# implemented by onnxruntime itself, some only by its CUDA or ROCm providers.
CONTRIB_DOMAIN = "com.microsoft"
# Domains whose operators the onnx package defines, and the name its schema registry uses.
_ONNX_DOMAINS = {
    "": "",
    DEFAULT_DOMAIN: "",
    ML_DOMAIN: ML_DOMAIN,
    "ai.onnx.preview.training": "ai.onnx.preview.training",
}

# The quantisation operators: the boundaries of a QDQ graph, and the QOperator forms
# (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, "ONNX
# quantization representation format").
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QUANTIZED_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
)
# Operators that only rename or reshape a tensor: no arithmetic, no estimate.
_NO_COMPUTE = frozenset(
    {
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Shape",
        "Size",
        "Constant",
        "Dropout",
    }
)
# Short names a profile may use for dtypes, and the names ONNX element types have here.
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
    "i8": "int8",
    "u8": "uint8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
}
# Nodes listed by name in the text report for the type findings (every node for operators).
_TEXT_LIMIT = 20
# The memory share above which the report warns that there is little headroom left.
MEMORY_WARN_SHARE = 0.8


def normalise_dtype(name: str) -> str:
    return _DTYPE_ALIASES.get(name.lower(), name.lower())


def _is_float(dtype: str | None) -> bool:
    return dtype is not None and dtype.startswith(("float", "bfloat"))


# --------------------------------------------------------------------------------------------
# Report values


@dataclass(frozen=True)
class Finding:
    """One thing the check found: ``severity`` info, warn or fail; ``code`` a stable name
    (docs/inspect.md lists them); ``nodes`` the display names of the nodes it is about."""

    severity: Severity
    code: str
    message: str
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be info, warn or fail, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "nodes": list(self.nodes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(data["severity"], data["code"], data["message"], tuple(data["nodes"]))


@dataclass(frozen=True)
class OpUse:
    """One operator of the model: how many nodes use it, whether some provider of the profile
    can run it, and whether the accelerator takes it (None: the profile has no accelerator)."""

    op: str
    count: int
    runnable: bool
    on_accelerator: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "count": self.count,
            "runnable": self.runnable,
            "on_accelerator": self.on_accelerator,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpUse:
        return cls(data["op"], data["count"], data["runnable"], data["on_accelerator"])


@dataclass(frozen=True)
class OffloadedNode:
    """A node the accelerator does not take, so it runs on a CPU provider: ``reason`` is "op"
    (the operator is not among the accelerator's) or "dtype" (it computes in a type the
    accelerator does not, such as float32 on an int8-only DPU)."""

    node: str
    op: str
    reason: Literal["op", "dtype"]
    detail: str
    dtype: str | None
    flops: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op": self.op,
            "reason": self.reason,
            "detail": self.detail,
            "dtype": self.dtype,
            "flops": self.flops,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OffloadedNode:
        return cls(
            data["node"], data["op"], data["reason"], data["detail"], data["dtype"], data["flops"]
        )


@dataclass(frozen=True)
class DynamicDim:
    """A dimension of a graph input or output that is not fixed (``symbol`` None: unnamed)."""

    tensor: str
    axis: int
    symbol: str | None

    def __str__(self) -> str:
        return f"{self.tensor}[{self.axis}]={self.symbol or '?'}"

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "axis": self.axis, "symbol": self.symbol}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DynamicDim:
        return cls(data["tensor"], data["axis"], data["symbol"])


@dataclass(frozen=True)
class RuntimeSupport:
    """What an onnxruntime version reads, from ``ONNXRUNTIME_SUPPORT``: ``row`` is the table
    row used; ``confirmed`` is False when the version is newer than the table (the row is then
    a lower bound)."""

    onnxruntime: str
    row: str
    max_opset: int
    max_ml_opset: int
    max_ir_version: int
    confirmed: bool


def runtime_support(version: str | None) -> RuntimeSupport | None:
    """The support row of an onnxruntime version ("1.17", "1.17.3"); None when unknown.

    Example: ``runtime_support("1.17").max_opset == 20``.
    """
    if not version:
        return None
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        return None
    wanted = (int(match[1]), int(match[2]))
    newest = max(ONNXRUNTIME_SUPPORT)
    if wanted in ONNXRUNTIME_SUPPORT:
        row, confirmed = wanted, True
    elif wanted > newest:
        row, confirmed = newest, False
    else:
        return None
    opset, ml_opset, ir = ONNXRUNTIME_SUPPORT[row]
    return RuntimeSupport(version, f"{row[0]}.{row[1]}", opset, ml_opset, ir, confirmed)


@dataclass(frozen=True)
class CompatReport:
    """The result of ``check_model``.

    Sizes are bytes; FLOPs count a multiply-add as two and are estimates (docs/inspect.md,
    "Compute estimate"), as is ``activation_bytes`` (the peak of live activations in the main
    graph). ``cpu_share`` is the estimated share of the FLOPs that run on a CPU provider
    because the accelerator does not take their nodes (None without an accelerator or without
    estimates). ``offloaded`` names every node the accelerator does not take.
    """

    path: str
    profile: str
    profile_title: str
    onnxruntime: str | None
    verdict: Verdict
    findings: tuple[Finding, ...]
    ir_version: int
    opsets: Mapping[str, int]
    max_ir_version: int | None
    max_opset: int | None
    ops: tuple[OpUse, ...]
    node_count: int
    accelerator: str | None
    offloaded: tuple[OffloadedNode, ...]
    total_flops: int | None
    cpu_flops: int | None
    cpu_share: float | None
    nodes_without_estimate: int
    dynamic_dims: tuple[DynamicDim, ...]
    parameter_bytes: int
    activation_bytes: int | None
    memory_budget_bytes: int | None
    storage_bytes: int
    storage_budget_bytes: int | None
    require_accelerator: bool = False
    format: int = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "opsets", MappingProxyType(dict(self.opsets)))

    @property
    def passed(self) -> bool:
        """True for pass and warn: the model can be deployed."""
        return self.verdict != "fail"

    @property
    def memory_bytes(self) -> int:
        """Parameters plus the activation estimate: what the model needs in memory."""
        return self.parameter_bytes + (self.activation_bytes or 0)

    def findings_of(self, severity: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == severity)

    def finding(self, code: str) -> Finding | None:
        """The first finding with this code, or None."""
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": "edge-sdk.check",
            "path": self.path,
            "profile": self.profile,
            "profile_title": self.profile_title,
            "onnxruntime": self.onnxruntime,
            "verdict": self.verdict,
            "require_accelerator": self.require_accelerator,
            "findings": [f.to_dict() for f in self.findings],
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "max_ir_version": self.max_ir_version,
            "max_opset": self.max_opset,
            "ops": [o.to_dict() for o in self.ops],
            "node_count": self.node_count,
            "accelerator": self.accelerator,
            "offloaded": [n.to_dict() for n in self.offloaded],
            "total_flops": self.total_flops,
            "cpu_flops": self.cpu_flops,
            "cpu_share": self.cpu_share,
            "nodes_without_estimate": self.nodes_without_estimate,
            "dynamic_dims": [d.to_dict() for d in self.dynamic_dims],
            "parameter_bytes": self.parameter_bytes,
            "activation_bytes": self.activation_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "storage_bytes": self.storage_bytes,
            "storage_budget_bytes": self.storage_budget_bytes,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON document (format 1, docs/inspect.md)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompatReport:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"not a check report of format {FORMAT_VERSION}: format {data.get('format')!r}"
            )
        return cls(
            path=data["path"],
            profile=data["profile"],
            profile_title=data["profile_title"],
            onnxruntime=data["onnxruntime"],
            verdict=data["verdict"],
            findings=tuple(Finding.from_dict(f) for f in data["findings"]),
            ir_version=data["ir_version"],
            opsets=data["opsets"],
            max_ir_version=data["max_ir_version"],
            max_opset=data["max_opset"],
            ops=tuple(OpUse.from_dict(o) for o in data["ops"]),
            node_count=data["node_count"],
            accelerator=data["accelerator"],
            offloaded=tuple(OffloadedNode.from_dict(n) for n in data["offloaded"]),
            total_flops=data["total_flops"],
            cpu_flops=data["cpu_flops"],
            cpu_share=data["cpu_share"],
            nodes_without_estimate=data["nodes_without_estimate"],
            dynamic_dims=tuple(DynamicDim.from_dict(d) for d in data["dynamic_dims"]),
            parameter_bytes=data["parameter_bytes"],
            activation_bytes=data["activation_bytes"],
            memory_budget_bytes=data["memory_budget_bytes"],
            storage_bytes=data["storage_bytes"],
            storage_budget_bytes=data["storage_budget_bytes"],
            require_accelerator=data["require_accelerator"],
        )

    @classmethod
    def from_json(cls, text: str) -> CompatReport:
        return cls.from_dict(json.loads(text))

    def to_text(self) -> str:
        """The readable report ``edge-sdk check`` prints."""
        runtime = (
            f"onnxruntime {self.onnxruntime}"
            if self.onnxruntime
            else "onnxruntime version not given"
        )
        lines = [
            f"check {self.path}",
            f"profile {self.profile} ({self.profile_title}), {runtime}",
            f"verdict: {self.verdict.upper()}",
        ]
        if self.findings:
            lines.append("")
            for finding in sorted(self.findings, key=lambda f: -_RANK[f.severity]):
                lines.append(f"{finding.severity.upper():<5} {finding.code}: {finding.message}")
        lines.append("")
        versions = f"IR {self.ir_version}; opsets " + ", ".join(
            f"{d} {v}" for d, v in self.opsets.items()
        )
        if self.max_ir_version is not None and self.max_opset is not None:
            versions += (
                f" (onnxruntime {self.onnxruntime} reads IR <= {self.max_ir_version}, "
                f"ai.onnx <= {self.max_opset})"
            )
        rows = [
            ("model", versions),
            ("ops", ", ".join(f"{o.op} {o.count}" for o in self.ops)),
        ]
        if self.accelerator is not None:
            taken = self.node_count - len(self.offloaded)
            share = (
                "" if self.cpu_share is None else f"; ~{self.cpu_share:.0%} of the compute on CPU"
            )
            rows.append(
                (
                    "accelerator",
                    f"{self.accelerator}: {taken} of {count_of(self.node_count, 'node')}{share}",
                )
            )
        if self.total_flops is not None:
            unknown = (
                f", {count_of(self.nodes_without_estimate, 'node')} without an estimate"
                if self.nodes_without_estimate
                else ""
            )
            rows.append(
                ("compute", f"~{_si(self.total_flops)}FLOP per inference (estimate{unknown})")
            )
        memory = f"parameters {format_bytes(self.parameter_bytes)}"
        if self.activation_bytes is not None:
            memory += f" + activations ~{format_bytes(self.activation_bytes)} peak (estimate)"
        if self.memory_budget_bytes is not None:
            memory += f" of {format_bytes(self.memory_budget_bytes)} budget"
        rows.append(("memory", memory))
        storage = format_bytes(self.storage_bytes)
        if self.storage_budget_bytes is not None:
            storage += f" of {format_bytes(self.storage_budget_bytes)} budget"
        rows.append(("storage", storage))
        if self.dynamic_dims:
            rows.append(("dynamic", ", ".join(str(d) for d in self.dynamic_dims)))
        lines += [f"{key:<12} {value}" for key, value in rows]
        by_op = [n for n in self.offloaded if n.reason == "op"]
        by_type = [n for n in self.offloaded if n.reason == "dtype"]
        if by_op:
            lines.append("")
            lines.append(f"nodes whose operator {self.accelerator} does not run ({len(by_op)}):")
            lines += [f"  {n.node} ({n.op})" for n in by_op]
        if by_type:
            lines.append("")
            lines.append(f"nodes in a type {self.accelerator} does not take ({len(by_type)}):")
            lines += [f"  {n.node} ({n.op}): {n.detail}" for n in by_type[:_TEXT_LIMIT]]
            if len(by_type) > _TEXT_LIMIT:
                lines.append(f"  ... and {len(by_type) - _TEXT_LIMIT} more (--json lists all)")
        return "\n".join(lines)


def _si(count: int) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= factor:
            return f"{count / factor:.2f} {prefix}"
    return f"{count} "


# --------------------------------------------------------------------------------------------
# Graph facts: types, shapes, producers


@dataclass
class _Value:
    dtype: str | None
    shape: tuple[int | str | None, ...] | None


@dataclass
class _Node:
    """A node anywhere in the model, with what the check needs to know about it."""

    proto: onnx.NodeProto
    name: str  # display path: "loop/body/add" for nodes inside bodies
    key: str  # op_key: "Conv", "com.microsoft:FusedConv"
    constant: bool = False  # every input is a constant: onnxruntime folds it at load time
    flops: int | None = None


class _Graphs:
    """Types, shapes and producers of every value, bodies included, after shape inference."""

    def __init__(self, model: ModelProto) -> None:
        self.values: dict[str, _Value] = {}
        self.producer: dict[str, _Node] = {}
        self.constants: set[str] = set()
        self.nodes: list[_Node] = []
        self._collect(model.graph, "")

    def _collect(self, graph: GraphProto, prefix: str) -> None:
        for tensor in graph.initializer:
            self.values[tensor.name] = _Value(
                element_type_name(tensor.data_type), tuple(tensor.dims)
            )
            self.constants.add(tensor.name)
        for value_info in (*graph.input, *graph.output, *graph.value_info):
            dtype, shape = type_text(value_info.type)
            known = self.values.get(value_info.name)
            if known is None or known.shape is None:
                self.values[value_info.name] = _Value(dtype, shape)
        for index, proto in enumerate(graph.node):
            display = f"{prefix}{node_display_name(proto, index)}"
            node = _Node(proto, display, op_key(proto.domain, proto.op_type))
            self.nodes.append(node)
            for output in proto.output:
                if output:
                    self.producer[output] = node
            for label, body in bodies(proto):
                self._collect(body, f"{display}/{label}/")

    def dtype(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None else value.dtype

    def dims(self, name: str) -> tuple[int, ...] | None:
        """The shape with symbolic and unknown dimensions taken as 1 (the estimate's rule)."""
        value = self.values.get(name)
        if value is None or value.shape is None:
            return None
        return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in value.shape)

    def static(self, name: str) -> bool:
        value = self.values.get(name)
        return (
            value is not None
            and value.shape is not None
            and all(isinstance(d, int) for d in value.shape)
        )

    def bytes_of(self, name: str) -> int | None:
        value = self.values.get(name)
        dims = self.dims(name)
        if value is None or dims is None or value.dtype is None:
            return None
        bits = _bits_by_name(value.dtype)
        return None if bits is None else (math.prod(dims) * bits + 7) // 8

    def mark_constants(self) -> None:
        """Nodes onnxruntime folds into constants when it loads the model: those whose inputs
        are all initializers or outputs of other folded nodes, and Shape of a static shape."""
        for node in self.nodes:  # graph order is topological (ONNX IR), so one pass suffices
            proto = node.proto
            inputs = [i for i in proto.input if i]
            # onnxruntime's constant folding leaves DequantizeLinear of a weight in place so the
            # QDQ node groups stay recognisable to the providers
            # (onnxruntime/core/optimizer/constant_folding.cc, skip_dequantize_linear).
            folded = (
                proto.op_type == "Constant"
                or (
                    proto.op_type != "DequantizeLinear"
                    and bool(inputs)
                    and all(i in self.constants for i in inputs)
                )
                or (proto.op_type in ("Shape", "Size") and bool(inputs) and self.static(inputs[0]))
            )
            if folded and not any(True for _ in bodies(proto)):
                node.constant = True
                self.constants.update(o for o in proto.output if o)


_BITS_BY_NAME = {
    element_type_name(code): element_bits(code) for code in TensorProto.DataType.values()
}


def _bits_by_name(dtype: str) -> int | None:
    return _BITS_BY_NAME.get(dtype)


def _strip_large_initializers(model: ModelProto, limit: int = 4096) -> None:
    """Drop the data of large inline initializers, keeping their dims and types, so shape
    inference (which copies the model) does not copy weights. The main graph's arrive without
    data already (inspect._parse); this catches those of control-flow bodies. Small ones stay:
    a Reshape's target shape is read from its initializer."""
    for graph in _all_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_location != TensorProto.EXTERNAL and tensor_bytes(tensor) > limit:
                for name in (
                    "raw_data",
                    "float_data",
                    "int32_data",
                    "int64_data",
                    "double_data",
                    "uint64_data",
                    "string_data",
                ):
                    tensor.ClearField(name)


def _all_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    yield graph
    for node in graph.node:
        for _, body in bodies(node):
            yield from _all_graphs(body)


# --------------------------------------------------------------------------------------------
# Compute estimate


def _node_flops(node: onnx.NodeProto, graphs: _Graphs) -> int | None:
    """Estimated FLOPs of one node, a multiply-add counting two; None when shapes are unknown.

    Conv, ConvTranspose, Gemm, MatMul and the recurrent ops count their multiply-adds from the
    shapes; pooling counts a kernel window per output; everything else one operation per
    output element (elementwise ops, activations, normalisations: a rough but monotone rule).
    """
    op = node.op_type
    if op in _NO_COMPUTE:
        return 0
    inputs = list(node.input)
    output = graphs.dims(node.output[0]) if node.output and node.output[0] else None

    def dims(index: int) -> tuple[int, ...] | None:
        return graphs.dims(inputs[index]) if index < len(inputs) and inputs[index] else None

    if op in ("Conv", "ConvInteger", "QLinearConv"):
        weight = dims(3 if op == "QLinearConv" else 1)
        if weight is None or output is None or len(weight) < 2:
            return None
        # Each output element takes (C_in / group) x kernel multiply-adds: weight is
        # [C_out, C_in / group, k1, k2, ...] (ONNX Conv).
        return 2 * math.prod(output) * math.prod(weight[1:])
    if op == "ConvTranspose":
        source, weight = dims(0), dims(1)
        if source is None or weight is None or len(weight) < 2:
            return None
        # Each input element is spread over (C_out / group) x kernel outputs: weight is
        # [C_in, C_out / group, k1, ...].
        return 2 * math.prod(source) * math.prod(weight[1:])
    if op == "Gemm":
        a = dims(0)
        if a is None or output is None or len(a) != 2:
            return None
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        inner = a[0] if trans_a else a[1]
        return 2 * math.prod(output) * inner + math.prod(output)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = dims(0)
        if a is None or output is None or not a:
            return None
        return 2 * math.prod(output) * a[-1]
    if op in ("LSTM", "GRU", "RNN"):
        x, w, r = dims(0), dims(1), dims(2)
        if x is None or w is None or r is None or len(x) != 3 or len(w) != 3 or len(r) != 3:
            return None
        steps, batch = x[0], x[1]
        directions, gates_hidden, input_size = w
        hidden = r[2]
        return 2 * steps * batch * directions * gates_hidden * (input_size + hidden)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel: tuple[int, ...] = next(
            (tuple(attr.ints) for attr in node.attribute if attr.name == "kernel_shape"), ()
        )
        if output is None:
            return None
        return math.prod(output) * max(1, math.prod(kernel))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        source = dims(0)
        return None if source is None else math.prod(source)
    if output is None:
        return None
    return math.prod(output)


# --------------------------------------------------------------------------------------------
# The check


@dataclass
class _Placement:
    """Where each node runs: the accelerator's verdict per node."""

    offloaded: list[OffloadedNode] = field(default_factory=list)
    on_accelerator: set[int] = field(default_factory=set)


def _compute_dtype(node: onnx.NodeProto, graphs: _Graphs) -> str | None:
    """The type a node computes in: the quantised type of a QDQ node's inputs, else the first
    float input's, else the first input's."""
    op = node.op_type
    if op == "QuantizeLinear":
        return graphs.dtype(node.output[0]) or (
            graphs.dtype(node.input[2]) if len(node.input) > 2 else None
        )
    if op == "DequantizeLinear":
        return graphs.dtype(node.input[0])
    inputs = [name for name in node.input if name]
    for name in inputs:
        source = graphs.producer.get(name)
        if source is not None and source.proto.op_type == "DequantizeLinear":
            return graphs.dtype(source.proto.input[0])
    if op in QUANTIZED_OPS:
        return graphs.dtype(inputs[0]) if inputs else None
    dtypes = [graphs.dtype(name) for name in inputs]
    floats = [d for d in dtypes if _is_float(d)]
    if floats:
        return floats[0]
    return dtypes[0] if dtypes else None


def _place(graphs: _Graphs, accelerator: Accelerator, nodes: Sequence[_Node]) -> _Placement:
    """Which nodes the accelerator takes: its operator must be among ``accelerator.ops``
    (empty: any), and the type it computes in among ``accelerator.dtypes`` (empty: any; a
    quantised-only accelerator never takes float)."""
    placement = _Placement()
    accepted = {normalise_dtype(d) for d in accelerator.dtypes}
    for index, node in enumerate(nodes):
        dtype = _compute_dtype(node.proto, graphs)
        if accelerator.ops and node.proto.op_type not in accelerator.ops:
            detail = f"{accelerator.name} does not run {node.key}"
            placement.offloaded.append(
                OffloadedNode(node.name, node.key, "op", detail, dtype, node.flops)
            )
            continue
        if dtype is not None and (
            (accepted and normalise_dtype(dtype) not in accepted)
            or (accelerator.quantized_only and _is_float(dtype))
        ):
            takes = ", ".join(accelerator.dtypes) or "quantised types"
            detail = f"computes in {dtype}; {accelerator.name} takes {takes}"
            placement.offloaded.append(
                OffloadedNode(node.name, node.key, "dtype", detail, dtype, node.flops)
            )
            continue
        placement.on_accelerator.add(index)
    return placement


def _runnable(
    node: _Node,
    model_opsets: Mapping[str, int],
    accelerator: Accelerator | None,
    functions: set[tuple[str, str]],
) -> tuple[bool, str]:
    """Whether any provider of the profile can run the node, and why not."""
    proto = node.proto
    if accelerator is not None and proto.op_type in accelerator.ops:
        return True, ""
    domain = proto.domain
    if (domain_name(domain), proto.op_type) in functions:
        return True, ""  # a model-local function: onnxruntime inlines its body
    if domain in _ONNX_DOMAINS:
        schema_domain = _ONNX_DOMAINS[domain]
        opset = model_opsets.get(domain_name(domain))
        if not onnx.defs.has(proto.op_type, schema_domain):
            return False, f"{node.key} is not an operator of {domain_name(domain)}"
        if opset is not None:
            try:
                onnx.defs.get_schema(proto.op_type, opset, schema_domain)
            except onnx.defs.SchemaError:
                since = onnx.defs.get_schema(proto.op_type, schema_domain).since_version
                return False, (
                    f"{node.key} does not exist in {domain_name(domain)} opset {opset} "
                    f"(it appeared in opset {since})"
                )
        return True, ""
    if domain == CONTRIB_DOMAIN:
        return True, ""
    return (
        False,
        f"{node.key} is a custom operator (domain {domain!r}) no provider of the profile registers",
    )


def _dynamic_dims(report: ModelReport) -> tuple[DynamicDim, ...]:
    found = []
    for tensor in (*report.inputs, *report.outputs):
        for axis, symbol in tensor.symbolic_dims:
            found.append(DynamicDim(tensor.name, axis, symbol))
    return tuple(found)


def _peak_activations(model: ModelProto, graphs: _Graphs) -> int | None:
    """Peak bytes of live activations over the main graph in its (topological) node order:
    a tensor is live from the node that writes it to the last node that reads it; graph
    inputs from the start, graph outputs to the end. Bodies, folded constants and weights are
    not counted; unknown sizes count as zero."""
    graph = model.graph
    nodes = list(graph.node)
    if not nodes:
        return 0
    end = len(nodes)
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name:
                last_use[name] = index
    for output in graph.output:
        last_use[output.name] = end
    initializers = {t.name for t in graph.initializer}
    live: dict[str, int] = {}
    for value in graph.input:
        if value.name not in initializers:
            live[value.name] = graphs.bytes_of(value.name) or 0
    peak = sum(live.values())
    for index, node in enumerate(nodes):
        for name in node.output:
            if name and name not in graphs.constants:
                live[name] = graphs.bytes_of(name) or 0
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, index) <= index]:
            del live[name]
    return peak


def _storage_bytes(report: ModelReport) -> int:
    total = report.file_bytes
    folder = Path(report.path).parent
    missing = False
    for location in report.external_data_files:
        try:
            total += (folder / location).stat().st_size
        except OSError:
            missing = True
    if missing:  # count the data the model says it has instead
        total = report.file_bytes + report.external_data_bytes
    return total


def _resolve(profile: str | DeviceProfile) -> DeviceProfile:
    from edge_sdk.profiles import DeviceProfile, resolve_profile

    if isinstance(profile, DeviceProfile):
        return profile
    if profile == "none":
        raise ProfileError("check needs a device profile: give a name, a .toml path or 'auto'")
    detection = resolve_profile(profile)
    assert detection is not None
    return detection.profile


def check_model(
    path: str | os.PathLike[str],
    profile: str | DeviceProfile = "auto",
    *,
    require_accelerator: bool = False,
) -> CompatReport:
    """Check a model file against a device profile (a name, a .toml path, ``"auto"`` to detect
    this machine, or a DeviceProfile) without running it.

    ``require_accelerator`` makes every node the accelerator does not take a failure (by
    default such nodes run on the CPU provider and are a warning). Raises ModelLoadError
    subclasses for a bad file, UnknownProfileError / ProfileFormatError for a bad profile.

    Example: ``check_model("model.onnx", "kria-kv260").verdict``.
    """
    device = _resolve(profile)
    model_path, size, model = load_model_proto(path)
    report = report_from_proto(model, model_path, size)
    findings: list[Finding] = []

    def add(severity: Severity, code: str, message: str, nodes: Sequence[str] = ()) -> None:
        findings.append(Finding(severity, code, message, tuple(nodes)))

    # -- versions ----------------------------------------------------------------------------
    support = runtime_support(device.onnxruntime)
    opsets = dict(report.opsets)
    onnx_opset = opsets.get(DEFAULT_DOMAIN)
    if support is None:
        why = (
            "names no onnxruntime version"
            if not device.onnxruntime
            else f"expects onnxruntime {device.onnxruntime}, which the compatibility table "
            "does not list"
        )
        add("info", "onnxruntime-unknown", f"profile {device.name} {why}: IR and opset not checked")
    else:
        severity: Severity = "fail" if support.confirmed else "warn"
        how = (
            f"onnxruntime {support.onnxruntime}"
            if support.confirmed
            else f"onnxruntime {support.row} (the newest in the table; {support.onnxruntime} "
            "is newer and may read more)"
        )
        if report.ir_version > support.max_ir_version:
            add(
                severity,
                "ir-version",
                f"IR version {report.ir_version} is newer than {how} reads "
                f"(IR <= {support.max_ir_version}): export with an older IR version",
            )
        if onnx_opset is not None and onnx_opset > support.max_opset:
            add(
                severity,
                "opset",
                f"opset ai.onnx {onnx_opset} is newer than {how} implements "
                f"(<= {support.max_opset}): re-export with opset {support.max_opset} or convert "
                f"with onnx.version_converter.convert_version(model, {support.max_opset})",
            )
        ml_opset = opsets.get(ML_DOMAIN)
        if ml_opset is not None and ml_opset > support.max_ml_opset:
            add(
                severity,
                "opset",
                f"opset {ML_DOMAIN} {ml_opset} is newer than {how} implements "
                f"(<= {support.max_ml_opset})",
            )
    if onnx_opset is not None and onnx_opset < MIN_OPSET:
        add(
            "fail",
            "opset",
            f"opset ai.onnx {onnx_opset} is older than onnxruntime reads (>= {MIN_OPSET}): "
            f"convert with onnx.version_converter.convert_version(model, {MIN_OPSET})",
        )

    # -- shapes, types, compute ---------------------------------------------------------------
    _strip_large_initializers(model)
    inferred = model
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several types; the check goes on without shapes
        add(
            "warn",
            "shape-inference",
            f"shape inference failed ({exc}): compute and memory not estimated",
        )
    del model
    graphs = _Graphs(inferred)
    graphs.mark_constants()
    runtime_nodes = [n for n in graphs.nodes if not n.constant]
    unknown = 0
    for node in runtime_nodes:
        node.flops = _node_flops(node.proto, graphs)
        if node.flops is None:
            unknown += 1
    total_flops = sum(n.flops or 0 for n in runtime_nodes)

    # -- operators ----------------------------------------------------------------------------
    accelerator = device.accelerator
    functions = {(domain_name(f.domain), f.name) for f in inferred.functions}
    not_runnable: dict[str, list[str]] = {}
    contrib: list[str] = []
    runnable_ops: dict[str, bool] = {}
    for node in graphs.nodes:
        ok, reason = _runnable(node, opsets, accelerator, functions)
        runnable_ops[node.key] = runnable_ops.get(node.key, True) and ok
        if not ok:
            not_runnable.setdefault(reason, []).append(node.name)
        elif node.proto.domain == CONTRIB_DOMAIN and not (
            accelerator is not None and node.proto.op_type in accelerator.ops
        ):
            contrib.append(node.name)
    for reason, names in not_runnable.items():
        add("fail", "unsupported-op", f"{reason}: nodes {_names(names)}", names)
    if contrib:
        add(
            "warn",
            "contrib-op",
            f"{_nodes_verb(len(contrib), 'use')} onnxruntime contrib operators "
            f"({CONTRIB_DOMAIN}), some of "
            f"which only the GPU providers implement: nodes {_names(contrib)}",
            contrib,
        )

    placement = _Placement()
    cpu_flops: int | None = None
    cpu_share: float | None = None
    if accelerator is not None:
        placement = _place(graphs, accelerator, runtime_nodes)
        cpu_flops = sum(n.flops or 0 for n in placement.offloaded)
        cpu_share = cpu_flops / total_flops if total_flops else None
        _accelerator_findings(
            add, accelerator, placement, runtime_nodes, require_accelerator, cpu_share
        )
    elif require_accelerator:
        add(
            "fail",
            "no-accelerator",
            f"--require-accelerator: profile {device.name} declares no accelerator",
        )
    on_accelerator = {
        key: (None if accelerator is None else not any(o.op == key for o in placement.offloaded))
        for key in report.op_histogram
    }

    # -- dynamic shapes -------------------------------------------------------------------------
    dynamic = _dynamic_dims(report)
    if dynamic:
        listed = ", ".join(str(d) for d in dynamic)
        if accelerator is not None:
            add(
                "warn",
                "dynamic-shape",
                f"symbolic dimensions {listed}: {accelerator.name} compiles for fixed shapes "
                "(a new shape means a new compilation, or the CPU); pin them with "
                "SessionSettings(free_dimensions={...}) or re-export with fixed shapes",
            )
        else:
            add("info", "dynamic-shape", f"symbolic dimensions {listed} (estimates take them as 1)")

    # -- precision --------------------------------------------------------------------------------
    float_inputs = [t.name for t in report.inputs if _is_float(t.dtype) and t.dtype != "float16"]
    if device.precision == "fp16" and float_inputs and not _is_quantised(graphs):
        add(
            "info",
            "precision",
            f"profile {device.name} prefers fp16 and the model is float32: "
            "converting it to fp16 halves the weights (edge-sdk optimize)",
        )

    # -- memory and storage -------------------------------------------------------------------
    activations = _peak_activations(inferred, graphs)
    parameters = report.parameter_bytes
    memory_budget = None if device.budgets.memory_mb is None else device.budgets.memory_mb * MIB
    needed = parameters + (activations or 0)
    if memory_budget is not None:
        if needed > memory_budget:
            add(
                "fail",
                "memory-budget",
                f"parameters {format_bytes(parameters)} + activations "
                f"~{format_bytes(activations or 0)} (estimate) exceed the memory budget of "
                f"{format_bytes(memory_budget)}",
            )
        elif needed > MEMORY_WARN_SHARE * memory_budget:
            add(
                "warn",
                "memory-budget",
                f"parameters and activations take ~{needed / memory_budget:.0%} of the memory "
                f"budget of {format_bytes(memory_budget)}: little room for the application",
            )
    storage = _storage_bytes(report)
    storage_budget = None if device.budgets.storage_mb is None else device.budgets.storage_mb * MIB
    if storage_budget is not None:
        if storage > storage_budget:
            add(
                "fail",
                "storage-budget",
                f"the model files take {format_bytes(storage)}, over the storage budget of "
                f"{format_bytes(storage_budget)}",
            )
        elif 2 * storage > storage_budget:
            # The model store keeps the previous version for rollback (DESIGN.md, model store).
            add(
                "warn",
                "storage-budget",
                f"the model files take {format_bytes(storage)}: an update, which keeps the "
                f"previous version for rollback, needs {format_bytes(2 * storage)} of the "
                f"{format_bytes(storage_budget)} storage budget",
            )
    for warning in report.warnings:
        add("warn", "model", warning)

    worst = max((_RANK[f.severity] for f in findings), default=0)
    verdict: Verdict = "fail" if worst == 2 else "warn" if worst == 1 else "pass"
    return CompatReport(
        path=str(model_path),
        profile=device.name,
        profile_title=device.title,
        onnxruntime=device.onnxruntime,
        verdict=verdict,
        findings=tuple(findings),
        ir_version=report.ir_version,
        opsets=report.opsets,
        max_ir_version=None if support is None else support.max_ir_version,
        max_opset=None if support is None else support.max_opset,
        ops=tuple(
            OpUse(key, count, runnable_ops.get(key, True), on_accelerator.get(key))
            for key, count in report.op_histogram.items()
        ),
        node_count=len(runtime_nodes),
        accelerator=None if accelerator is None else accelerator.name,
        offloaded=tuple(placement.offloaded),
        total_flops=total_flops if runtime_nodes else 0,
        cpu_flops=cpu_flops,
        cpu_share=cpu_share,
        nodes_without_estimate=unknown,
        dynamic_dims=dynamic,
        parameter_bytes=parameters,
        activation_bytes=activations,
        memory_budget_bytes=memory_budget,
        storage_bytes=storage,
        storage_budget_bytes=storage_budget,
        require_accelerator=require_accelerator,
    )


def _is_quantised(graphs: _Graphs) -> bool:
    return any(n.proto.op_type in QDQ_OPS | QUANTIZED_OPS for n in graphs.nodes)


def _names(names: Sequence[str]) -> str:
    return _listed(repr(n) for n in names)


def _accelerator_findings(
    add: Any,
    accelerator: Accelerator,
    placement: _Placement,
    nodes: Sequence[_Node],
    require_accelerator: bool,
    cpu_share: float | None,
) -> None:
    """Findings about the nodes the accelerator does not take: warnings (they run on a CPU
    provider), failures with ``require_accelerator``."""
    severity: Severity = "fail" if require_accelerator else "warn"

    def consequence(count: int) -> str:
        if require_accelerator:
            return "which --require-accelerator makes a failure"
        return "so it runs on the CPU" if count == 1 else "so they run on the CPU"

    by_op = [n for n in placement.offloaded if n.reason == "op"]
    by_type = [n for n in placement.offloaded if n.reason == "dtype"]
    if by_op:
        listed = _listed(f"{n.op} (node {n.node!r})" for n in by_op)
        # On a board whose accelerator is the point (the profile says ``required``), an
        # operator it cannot run fails: quantising does not fix it, and the CPU fallback
        # splits the graph into accelerator and CPU parts with a copy between each.
        required = accelerator.required and not require_accelerator
        add(
            "fail" if required else severity,
            "accelerator-op",
            f"{_nodes_verb(len(by_op), 'use')} operators {accelerator.name} does not run, "
            + (
                "which the profile marks as a failure (accelerator.required:"
                " replace them, or run with a profile without that requirement)"
                if required
                else consequence(len(by_op))
            )
            + f": {listed}",
            [n.node for n in by_op],
        )
    quantised = any(n.proto.op_type in QDQ_OPS | QUANTIZED_OPS for n in nodes)
    takes = ", ".join(accelerator.dtypes) or "quantised types"
    if by_type and accelerator.quantized_only and not quantised:
        computed = ", ".join(sorted({n.dtype for n in by_type if n.dtype}))
        share = "" if cpu_share is None else f" (~{cpu_share:.0%} of the compute)"
        outcome = (
            "--require-accelerator makes that a failure"
            if require_accelerator
            else f"it runs on the CPU only{share}"
        )
        add(
            severity,
            "needs-int8",
            f"the model computes in {computed} and {accelerator.name} takes {takes} only: "
            f"{outcome}; quantise to int8 for the {accelerator.name} "
            "(edge-sdk optimize --int8)",
            [n.node for n in by_type],
        )
    elif by_type:
        listed = _listed(f"{n.node!r} ({n.dtype})" for n in by_type)
        add(
            severity,
            "accelerator-dtype",
            f"{_nodes_verb(len(by_type), 'compute')} in a type {accelerator.name} does not "
            f"take ({takes}), {consequence(len(by_type))}: {listed}",
            [n.node for n in by_type],
        )
    if not placement.offloaded and nodes:
        limits = (
            ""
            if accelerator.ops
            else " (the profile lists no operator limits for it: judged by its dtypes only)"
        )
        add("info", "accelerator", f"every node can run on {accelerator.name}{limits}")


def _nodes_verb(number: int, verb: str) -> str:
    """``"1 node uses"``, ``"3 nodes use"``."""
    return f"1 node {verb}s" if number == 1 else f"{number} nodes {verb}"


def _listed(items: Iterator[str], limit: int = 12) -> str:
    shown = list(items)
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


# --------------------------------------------------------------------------------------------
# Validation against reference outputs


@dataclass(frozen=True)
class OutputComparison:
    """One output against its reference. Errors are over all elements: ``max_abs_error`` is
    max |actual - expected|, ``max_rel_error`` max |actual - expected| / |expected| over the
    elements whose reference is not zero. An element passes when
    |actual - expected| <= atol + rtol * |expected| (numpy.isclose; NaN matches NaN).
    Errors are None for non-numeric outputs (compared for equality) and when shapes differ."""

    name: str
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    dtype: str
    expected_dtype: str
    max_abs_error: float | None
    max_rel_error: float | None
    mismatches: int
    size: int
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "expected_shape": list(self.expected_shape),
            "dtype": self.dtype,
            "expected_dtype": self.expected_dtype,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "mismatches": self.mismatches,
            "size": self.size,
            "passed": self.passed,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The result of ``validate_model``: one comparison per output given a reference;
    ``unchecked`` names the outputs the reference does not cover."""

    path: str | None
    profile: str | None
    providers: tuple[str, ...]
    rtol: float
    atol: float
    outputs: tuple[OutputComparison, ...]
    unchecked: tuple[str, ...] = ()
    format: int = field(default=FORMAT_VERSION)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": "edge-sdk.validate",
            "path": self.path,
            "profile": self.profile,
            "providers": list(self.providers),
            "rtol": self.rtol,
            "atol": self.atol,
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
            "unchecked": list(self.unchecked),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_text(self) -> str:
        lines = [
            f"validate {self.path or 'model'} on {', '.join(self.providers)}"
            + (f" (profile {self.profile})" if self.profile else ""),
            f"tolerance |actual - expected| <= {self.atol:g} + {self.rtol:g} * |expected|",
        ]
        width = max(len(o.name) for o in self.outputs)
        for output in self.outputs:
            status = "PASS" if output.passed else "FAIL"
            if output.max_abs_error is None:
                detail = output.reason or "compared for equality"
            else:
                detail = (
                    f"max abs {output.max_abs_error:.3g}, max rel {output.max_rel_error:.3g}, "
                    f"{output.mismatches} of {output.size} outside"
                )
            lines.append(f"{status}  {output.name:<{width}}  {detail}")
        for name in self.unchecked:
            lines.append(f"SKIP  {name:<{width}}  no reference given")
        lines.append(f"result: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (``numpy.savez``), by key. Pickled object arrays are refused.
    Raises ReferenceDataError naming the file."""
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as handle:
            magic = handle.read(6)
        loaded = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise ReferenceDataError(source, "no such file") from None
    except ValueError as exc:
        # Neither a zip nor an .npy: numpy would try it as a pickle and say so.
        if not magic.startswith((b"PK", b"\x93NUMPY")):
            raise ReferenceDataError(
                source, "not an .npz archive (numpy.savez writes one)"
            ) from exc
        raise ReferenceDataError(source, f"cannot read it as .npz: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ReferenceDataError(source, f"cannot read it as .npz: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ReferenceDataError(source, "an .npy array, not an .npz archive of named arrays")
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    # A damaged member fails anywhere in zipfile, zlib or numpy's header parser (which can
    # raise even tokenize.TokenError): whatever it is, the file is unreadable.
    except Exception as exc:
        # A pickled (object) array or a damaged member.
        raise ReferenceDataError(source, f"cannot read it as .npz: {exc}") from exc


_POSITIONAL = re.compile(r"^arr_(\d+)$")


def _by_name(
    arrays: Mapping[str, np.ndarray], names: Sequence[str], what: str
) -> dict[str, np.ndarray]:
    """Arrays keyed by the model's names; ``arr_0, arr_1, ...`` (numpy.savez without keywords)
    are taken in the model's order when no key is a name."""
    if arrays and not set(arrays) & set(names) and all(_POSITIONAL.match(k) for k in arrays):
        result = {}
        for key, value in arrays.items():
            position = int(_POSITIONAL.match(key)[1])  # type: ignore[index]
            if position >= len(names):
                raise ReferenceDataError(
                    key,
                    f"positional array {position} but the model has {len(names)} {what}s "
                    f"({', '.join(names)})",
                )
            result[names[position]] = value
        return result
    return dict(arrays)


def _compare(
    name: str, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
) -> OutputComparison:
    def result(
        max_abs: float | None, max_rel: float | None, mismatches: int, reason: str = ""
    ) -> OutputComparison:
        return OutputComparison(
            name=name,
            shape=tuple(actual.shape),
            expected_shape=tuple(expected.shape),
            dtype=str(actual.dtype),
            expected_dtype=str(expected.dtype),
            max_abs_error=max_abs,
            max_rel_error=max_rel,
            mismatches=mismatches,
            size=int(actual.size),
            passed=mismatches == 0 and not reason,
            reason=reason,
        )

    if actual.shape != expected.shape:
        return result(
            None,
            None,
            int(actual.size),
            f"shape {tuple(actual.shape)} differs from the reference's {tuple(expected.shape)}",
        )
    if not (actual.dtype.kind in "biufc" and expected.dtype.kind in "biufc"):
        equal = np.asarray(actual == expected)
        mismatches = int(equal.size - np.count_nonzero(equal))
        return result(None, None, mismatches, f"{mismatches} elements differ" if mismatches else "")
    kind = np.complex128 if "c" in (actual.dtype.kind, expected.dtype.kind) else np.float64
    a = actual.astype(kind)
    e = expected.astype(kind)
    close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    with np.errstate(invalid="ignore"):
        # NaN against NaN and an infinity against the same infinity count as no error.
        same = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & (a == e))
        difference = np.where(same, 0.0, np.abs(a - e))
        magnitude = np.abs(e)
        relative = np.divide(
            difference, magnitude, out=np.zeros_like(difference), where=magnitude > 0
        )
    max_abs = float(np.max(difference, initial=0.0))
    max_rel = float(np.max(relative, initial=0.0))
    return result(max_abs, max_rel, int(close.size - np.count_nonzero(close)))


def validate_model(
    model: str | os.PathLike[str] | EdgeModel,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike[str],
    expected: Mapping[str, np.ndarray] | str | os.PathLike[str],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    profile: str | DeviceProfile | None = "auto",
) -> ValidationReport:
    """Run ``model`` (a path, loaded on ``profile``'s providers and session settings, or an
    EdgeModel) on ``inputs`` and compare each output with ``expected``.

    ``inputs``/``expected`` are arrays by input/output name, or .npz paths; keys ``arr_0``,
    ``arr_1``... (``numpy.savez`` without names) are taken in the model's order. Raises
    InputError subclasses naming the input for a missing or misshapen input,
    ReferenceDataError for an unreadable file or a reference naming no output.

    Example: ``validate_model("m.onnx", "in.npz", "out.npz", rtol=1e-2).passed``.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got {rtol}, {atol}")
    feed_arrays = inputs if isinstance(inputs, Mapping) else load_arrays(inputs)
    reference = expected if isinstance(expected, Mapping) else load_arrays(expected)
    owned = not hasattr(model, "run")
    if owned:
        from edge_sdk.runtime import EdgeModel

        loaded = EdgeModel.load(os.fspath(model), profile=profile)  # type: ignore[arg-type]
    else:
        loaded = model  # type: ignore[assignment]
    try:
        input_names = [spec.name for spec in loaded.inputs]
        output_names = [spec.name for spec in loaded.outputs]
        feed = _by_name(feed_arrays, input_names, "input")
        wanted = _by_name(reference, output_names, "output")
        unknown = [key for key in wanted if key not in output_names]
        if unknown:
            raise ReferenceDataError(
                repr(unknown[0]),
                f"the model has no output {unknown[0]!r} (outputs: {', '.join(output_names)})",
            )
        if not wanted:
            raise ReferenceDataError(
                "expected", f"no reference arrays given (outputs: {', '.join(output_names)})"
            )
        actual = loaded.run(feed)
        comparisons = tuple(
            _compare(name, np.asarray(actual[name]), np.asarray(wanted[name]), rtol, atol)
            for name in output_names
            if name in wanted
        )
        detection = getattr(loaded, "profile_detection", None)
        return ValidationReport(
            path=loaded.path,
            profile=None if detection is None else detection.profile.name,
            providers=tuple(loaded.providers),
            rtol=rtol,
            atol=atol,
            outputs=comparisons,
            unchecked=tuple(name for name in output_names if name not in wanted),
        )
    finally:
        if owned:
            loaded.close()
