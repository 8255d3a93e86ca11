"""Small real ONNX models built with onnx.helper for the tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path | None) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # the lowest IR that carries opset 17: loads in onnxruntime >= 1.17
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def tiny_mlp(path: Path | None = None, width: int = 64, batch: int | str = 1) -> bytes:
    """x[batch, width] float32 -> Relu(x @ W + B) as y."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["m"]),
            helper.make_node("Add", ["m", "B"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
        [weights, bias],
    )
    return _save(graph, path)


def two_inputs(path: Path | None = None) -> bytes:
    """image float32 [batch, 3, 4, 4] and scale int64 [batch] -> out float32 [batch, 3, 4, 4]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["scale_f", "axes"], ["scale_4d"]),
            helper.make_node("Mul", ["image", "scale_4d"], ["out"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4]),
            helper.make_tensor_value_info("scale", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")],
    )
    return _save(graph, path)


def conv_net(
    path: Path | None = None, size: int = 224, channels: Sequence[int] = (16, 32)
) -> bytes:
    """image float32 [1, 3, size, size] -> two 3x3 conv + ReLU, global pool, 10 logits."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    prev, name = 3, "image"
    for i, out in enumerate(channels):
        w = rng.standard_normal((out, prev, 3, 3)).astype(np.float32) * 0.1
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(out, np.float32), f"b{i}"))
        nodes.append(
            helper.make_node(
                "Conv", [name, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, name = out, f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [name], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    fc = rng.standard_normal((prev, 10)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return _save(graph, path)


def unsupported_op(path: Path | None = None) -> bytes:
    """A model whose only node is an operator no onnxruntime implements."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperatorAnywhere", ["x"], ["y"], domain="edge.sdk.test")],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("edge.sdk.test", 1)],
    )
    model.ir_version = 8
    data = model.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def constant_head(
    output: np.ndarray, path: Path | None = None, size: int = 64, batch: int | str = 1
) -> bytes:
    """image float32 [batch, 3, size, size] -> out = constant + 0 * mean(image): a real graph
    whose output is known, for end-to-end tests of detection and segmentation postprocessing."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["head", "nothing"], ["out"]),
        ],
        "constant_head",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(output.shape))],
        [
            numpy_helper.from_array(output.astype(np.float32), "head"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    return _save(graph, path)
