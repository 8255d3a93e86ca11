"""``inspect_model`` and ``edge-sdk inspect`` on real ONNX files.

References:
- ONNX IR (https://onnx.ai/onnx/repo-docs/IR.md): If holds then_branch/else_branch, Loop
  holds body (inputs: iteration number, condition, carried values; outputs: condition,
  carried values); the empty domain is ai.onnx; external data entries carry location,
  offset and length.
- Mermaid flowcharts (https://mermaid.js.org/syntax/flowchart.html): ``flowchart TD``,
  ``subgraph id["title"] ... end``, ``a --> b``; ``end`` is a keyword, so no id may be it.
- The bundled model (docs/bundled-model.md): opset 16, IR 8, exported by PyTorch, input
  ``image`` [batch, 1, 8, 8], output ``logits`` [batch, 10], edge_sdk metadata.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import _models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _cli import CLI
from onnx import TensorProto, helper, numpy_helper

from edge_sdk import _onnxfile, bundled
from edge_sdk.errors import (
    CorruptModelError,
    EmptyModelError,
    ModelIsDirectoryError,
    ModelNotFoundError,
    TruncatedModelError,
)
from edge_sdk.inspect import FORMAT_VERSION, ModelReport, inspect_model, load_model_proto

MERMAID_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# A Mermaid node declaration ``id["label"]`` / ``id(["label"])`` or ``subgraph id["title"]``.
DECLARATION = re.compile(r'^\s*(?:subgraph\s+)?([^\s\[\(]+)[\[\(]+"')
EDGE = re.compile(r"^\s*(\S+) --> (\S+)$")


# --------------------------------------------------------------------------------------------
# Models


def control_flow_model(path: Path) -> Path:
    """y = If(cond, then: Loop(3 times, v + 1) over x, else: Relu(x)); z = Loop(2 times, v * 2)
    over y, so z = 4 y. Nested: the then branch holds a Loop whose body holds Add and Identity."""
    scalar_bool = helper.make_tensor_value_info
    inner_body = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "one"], ["v_out"], name="add_one"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
        ],
        "inner_body",
        [
            scalar_bool("i", TensorProto.INT64, []),
            scalar_bool("cond_in", TensorProto.BOOL, []),
            scalar_bool("v_in", TensorProto.FLOAT, [2, 4]),
        ],
        [
            scalar_bool("cond_out", TensorProto.BOOL, []),
            scalar_bool("v_out", TensorProto.FLOAT, [2, 4]),
        ],
        [numpy_helper.from_array(np.ones((), np.float32), "one")],
    )
    then_branch = helper.make_graph(
        [
            helper.make_node(
                "Loop", ["three", "yes", "x"], ["then_out"], name="inner_loop", body=inner_body
            )
        ],
        "then_branch",
        [],
        [scalar_bool("then_out", TensorProto.FLOAT, [2, 4])],
        [
            numpy_helper.from_array(np.array(3, np.int64), "three"),
            numpy_helper.from_array(np.array(True), "yes"),
        ],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["else_out"], name="relu_else")],
        "else_branch",
        [],
        [scalar_bool("else_out", TensorProto.FLOAT, [2, 4])],
    )
    outer_body = helper.make_graph(
        [
            helper.make_node("Mul", ["w_in", "two"], ["w_out"], name="double"),
            helper.make_node("Identity", ["c_in"], ["c_out"], name="continue"),
        ],
        "outer_body",
        [
            scalar_bool("j", TensorProto.INT64, []),
            scalar_bool("c_in", TensorProto.BOOL, []),
            scalar_bool("w_in", TensorProto.FLOAT, [2, 4]),
        ],
        [
            scalar_bool("c_out", TensorProto.BOOL, []),
            scalar_bool("w_out", TensorProto.FLOAT, [2, 4]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                name="choose",
                then_branch=then_branch,
                else_branch=else_branch,
            ),
            helper.make_node("Loop", ["twice", "", "y"], ["z"], name="outer_loop", body=outer_body),
        ],
        "control_flow",
        [
            scalar_bool("cond", TensorProto.BOOL, []),
            scalar_bool("x", TensorProto.FLOAT, [2, 4]),
        ],
        [scalar_bool("z", TensorProto.FLOAT, [2, 4])],
        [
            numpy_helper.from_array(np.array(2, np.int64), "twice"),
            numpy_helper.from_array(np.full((), 2.0, np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def chain_model(path: Path, length: int, names: list[str] | None = None) -> Path:
    """x -> Relu/Sigmoid alternating ``length`` times -> y: one linear chain."""
    nodes = []
    previous = "x"
    for index in range(length):
        output = "y" if index == length - 1 else f"t{index}"
        name = names[index] if names else f"step_{index}"
        op = "Relu" if index % 2 == 0 else "Sigmoid"
        nodes.append(helper.make_node(op, [previous], [output], name=name))
        previous = output
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def digits_report() -> ModelReport:
    return inspect_model(bundled.model_path())


@pytest.fixture(scope="module")
def control_flow_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return control_flow_model(tmp_path_factory.mktemp("cf") / "control_flow.onnx")


# --------------------------------------------------------------------------------------------
# The bundled model


def test_bundled_model_versions_inputs_and_outputs(digits_report: ModelReport) -> None:
    report = digits_report
    assert report.format == FORMAT_VERSION == 1
    assert report.ir_version == 8
    assert dict(report.opsets) == {"ai.onnx": 16}
    assert report.producer_name == "pytorch"
    assert [str(t) for t in report.inputs] == ["image: float32[batch, 1, 8, 8]"]
    assert [str(t) for t in report.outputs] == ["logits: float32[batch, 10]"]
    assert report.inputs[0].symbolic_dims == ((0, "batch"),)


def test_bundled_model_weights_and_ops_match_the_onnx_package(digits_report: ModelReport) -> None:
    model = onnx.load(str(bundled.model_path()))
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    assert digits_report.initializer_count == len(arrays)
    assert digits_report.initializer_bytes == sum(a.nbytes for a in arrays)
    assert digits_report.external_data_bytes == 0
    assert digits_report.file_bytes == bundled.model_path().stat().st_size
    assert dict(digits_report.op_histogram) == dict(Counter(n.op_type for n in model.graph.node))
    assert digits_report.node_count == len(model.graph.node)
    assert digits_report.subgraphs == ()


def test_bundled_model_metadata(digits_report: ModelReport) -> None:
    labels = json.loads(digits_report.metadata["edge_sdk.labels"])
    assert labels == [str(d) for d in range(10)]
    assert set(digits_report.edge_sdk_metadata) == {
        "edge_sdk.labels",
        "edge_sdk.preprocess",
        "edge_sdk.postprocess",
        "edge_sdk.version",
    }
    assert digits_report.warnings == ()


# --------------------------------------------------------------------------------------------
# Control flow


def test_control_flow_model_is_real(control_flow_path: Path) -> None:
    # The fixture is a model onnxruntime runs: y = x + 3 (then) or Relu(x) (else), z = 4 y.
    session = ort.InferenceSession(str(control_flow_path), providers=["CPUExecutionProvider"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 4
    (z,) = session.run(None, {"cond": np.array(True), "x": x})
    np.testing.assert_allclose(z, (x + 3) * 4)
    (z,) = session.run(None, {"cond": np.array(False), "x": x})
    np.testing.assert_allclose(z, np.maximum(x, 0) * 4)


def test_subgraphs_nested_with_node_counts(control_flow_path: Path) -> None:
    report = inspect_model(control_flow_path)
    bodies = {s.path: s for s in report.subgraphs}
    # Parents before children, in the order the attributes are stored (onnx.helper sorts them
    # by name: else_branch before then_branch).
    assert list(bodies) == [
        "choose/else_branch",
        "choose/then_branch",
        "choose/then_branch/inner_loop/body",
        "outer_loop/body",
    ]
    assert bodies["choose/then_branch"].depth == 1
    assert bodies["choose/then_branch"].node_count == 1
    assert bodies["choose/then_branch"].total_nodes == 3
    inner = bodies["choose/then_branch/inner_loop/body"]
    assert (inner.depth, inner.op_type, inner.node, inner.attribute) == (
        2,
        "Loop",
        "inner_loop",
        "body",
    )
    assert inner.node_count == 2
    assert bodies["choose/else_branch"].node_count == 1
    assert bodies["outer_loop/body"].node_count == 2


def test_op_histogram_counts_inside_bodies(control_flow_path: Path) -> None:
    report = inspect_model(control_flow_path)
    assert dict(report.op_histogram) == {
        "Identity": 2,
        "Loop": 2,
        "Add": 1,
        "If": 1,
        "Mul": 1,
        "Relu": 1,
    }
    assert report.node_count == 8
    # Initializers of bodies count too: one, three, yes (bodies) and twice, two (main graph).
    assert report.initializer_count == 5
    assert report.initializer_bytes == 4 + 8 + 1 + 8 + 4


def test_external_data_is_sized_without_being_read(tmp_path: Path) -> None:
    model = onnx.load_from_string(_models.tiny_mlp(width=64))
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    report = inspect_model(path)
    assert report.initializer_bytes == 64 * 64 * 4 + 64 * 4
    assert report.external_data_bytes == report.initializer_bytes
    assert report.external_data_files == ("weights.bin",)
    assert report.file_bytes < 2048  # the .onnx holds the graph only
    # Without the data file the structure is still readable, with a warning.
    (tmp_path / "weights.bin").unlink()
    report = inspect_model(path)
    assert report.initializer_bytes == 64 * 64 * 4 + 64 * 4
    assert any("weights.bin" in w and "missing" in w for w in report.warnings)


def test_weights_are_sized_but_not_parsed(tmp_path: Path) -> None:
    big = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "raw"], ["m"]),
            helper.make_node("Add", ["m", "typed"], ["a"]),
            helper.make_node("Reshape", ["a", "shape"], ["y"]),
        ],
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [
            numpy_helper.from_array(big, "raw"),  # raw_data
            helper.make_tensor("typed", TensorProto.FLOAT, [64, 64], big.ravel().tolist()),
            numpy_helper.from_array(np.array([64], np.int64), "shape"),
            helper.make_tensor("names", TensorProto.STRING, [2], [b"cat", b"dog"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "weights.onnx"
    onnx.save(model, path)
    report = inspect_model(path)
    assert report.initializer_count == 4
    assert report.initializer_bytes == 2 * big.nbytes + 8 + len(b"catdog")
    # The parsed skeleton keeps names, shapes and types, small data, and no large data.
    _, _, skeleton = load_model_proto(path)
    tensors = {t.name: t for t in skeleton.graph.initializer}
    assert [tuple(t.dims) for t in tensors.values()] == [(64, 64), (64, 64), (1,), (2,)]
    assert not tensors["raw"].raw_data and not tensors["typed"].float_data
    assert numpy_helper.to_array(tensors["shape"]).tolist() == [64]
    assert list(tensors["names"].string_data) == [b"cat", b"dog"]
    assert skeleton.graph.node == onnx.load(path).graph.node
    assert skeleton.ByteSize() < 1024 < path.stat().st_size // 16


def test_constants_and_malformed_metadata_are_reported(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["c"], value=numpy_helper.from_array(np.ones(10, np.float32))
            ),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"edge_sdk.labels": "not json"})
    path = tmp_path / "constants.onnx"
    onnx.save(model, path)
    report = inspect_model(path)
    assert report.constant_bytes == 40
    assert report.parameter_bytes == 40
    # Unnamed nodes are shown by operator and position.
    assert [n.name for n in report.graph.nodes] == ["Constant_0", "Add_1"]
    assert any("edge_sdk.labels" in w for w in report.warnings)


# --------------------------------------------------------------------------------------------
# JSON


def test_json_round_trip(control_flow_path: Path, digits_report: ModelReport) -> None:
    for report in (digits_report, inspect_model(control_flow_path)):
        text = report.to_json()
        document = json.loads(text)
        assert document["format"] == 1
        assert document["kind"] == "edge-sdk.inspect"
        assert ModelReport.from_json(text) == report
        assert json.loads(ModelReport.from_json(text).to_json()) == document


def test_json_of_another_format_is_refused(digits_report: ModelReport) -> None:
    document = digits_report.to_dict()
    document["format"] = 2
    with pytest.raises(ValueError, match="format 2"):
        ModelReport.from_dict(document)


# --------------------------------------------------------------------------------------------
# Mermaid


def mermaid_structure(text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """Declared ids and edges of a flowchart; asserts the block structure is balanced."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    depth = 0
    declared: set[str] = set()
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("subgraph "):
            depth += 1
        elif stripped == "end":
            depth -= 1
            assert depth >= 0, "an 'end' without its subgraph"
            continue
        if (edge := EDGE.match(line)) is not None:
            edges.append((edge[1], edge[2]))
            continue
        declaration = DECLARATION.match(line)
        assert declaration is not None, f"unexpected line {line!r}"
        node_id = declaration[1]
        assert MERMAID_ID.match(node_id), node_id
        assert node_id.lower() != "end"
        assert node_id not in declared, f"{node_id} declared twice"
        declared.add(node_id)
        # Labels are quoted and carry no raw quote inside.
        label = line.split('"', 1)[1].rsplit('"', 1)[0]
        assert '"' not in label
    assert depth == 0
    for source, target in edges:
        assert source in declared and target in declared, (source, target)
    return declared, edges


def test_mermaid_of_the_bundled_model(digits_report: ModelReport) -> None:
    text = digits_report.to_mermaid()
    declared, edges = mermaid_structure(text)
    # Nine nodes, the input and the output; a chain of nine is below the default threshold.
    assert len(declared) == 11
    assert len(edges) == 10
    assert 'in_image(["image: float32[batch, 1, 8, 8]"])' in text
    assert "Gemm<br/>node_linear_1" in text


def test_mermaid_draws_bodies_as_nested_subgraphs(control_flow_path: Path) -> None:
    text = inspect_model(control_flow_path).to_mermaid()
    _, edges = mermaid_structure(text)
    subgraph_titles = re.findall(r'subgraph \S+\["([^"]+)"\]', text)
    assert subgraph_titles == [
        "If choose",
        "else_branch (1 node)",
        "then_branch (1 node)",
        "Loop inner_loop",
        "body (2 nodes)",
        "Loop outer_loop",
        "body (2 nodes)",
    ]
    # The If feeds the outer Loop, which writes the output.
    assert ("n_choose", "n_outer_loop") in edges
    assert ("n_outer_loop", "out_z") in edges
    assert ("in_cond", "n_choose") in edges
    # x is read inside both branches (outer scope): drawn as an input of the If.
    assert ("in_x", "n_choose") in edges


def test_mermaid_collapses_long_chains(tmp_path: Path) -> None:
    report = inspect_model(chain_model(tmp_path / "chain.onnx", 12))
    text = report.to_mermaid()
    declared, edges = mermaid_structure(text)
    assert "Relu → Sigmoid → … → Sigmoid (12 nodes)" in text
    assert len(declared) == 3  # input, output, one box
    assert len(edges) == 2
    # Not collapsed below the threshold or when turned off.
    declared, _ = mermaid_structure(report.to_mermaid(collapse=13))
    assert len(declared) == 14
    declared, _ = mermaid_structure(report.to_mermaid(collapse=0))
    assert len(declared) == 14
    short = inspect_model(chain_model(tmp_path / "short.onnx", 3))
    assert '["Relu → Sigmoid → Relu (3 nodes)"]' in short.to_mermaid(collapse=3)


def test_mermaid_ids_and_labels_are_sanitised(tmp_path: Path) -> None:
    names = ["end", 'say "hi"', "a/b.c:d", "a_b_c_d", "#1 <x>"]
    report = inspect_model(chain_model(tmp_path / "names.onnx", 5, names))
    text = report.to_mermaid()
    declared, _ = mermaid_structure(text)
    assert "n_end" in declared
    assert {"n_a_b_c_d", "n_a_b_c_d_2"} <= declared  # two names sanitise alike
    assert "say #quot;hi#quot;" in text
    assert "#35;1 #lt;x#gt;" in text


# --------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", EmptyModelError),
        (b"this is a text file, not a model\n", CorruptModelError),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), CorruptModelError),
    ],
)
def test_bad_files_raise_the_specific_error(
    tmp_path: Path, content: bytes, error: type[Exception]
) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(error):
        inspect_model(path)


def test_truncated_missing_and_directory(tmp_path: Path) -> None:
    data = bundled.model_path().read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedModelError):
        inspect_model(truncated)
    with pytest.raises(ModelNotFoundError):
        inspect_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelIsDirectoryError):
        inspect_model(tmp_path)


def test_damage_inside_the_graph_is_a_corrupt_model(tmp_path: Path) -> None:
    # The top level scans clean; the graph's own bytes are garbage (0xff is no valid tag).
    data = bytearray(bundled.model_path().read_bytes())
    graph = next(f for f in _onnxfile.scan_file(bundled.model_path()).fields if f.number == 7)
    data[graph.payload_start : graph.payload_start + 16] = b"\xff" * 16
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="not a valid ONNX protobuf") as caught:
        inspect_model(path)
    assert caught.value.path == str(path)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_text(cli: CLI) -> None:
    result = cli("inspect", bundled.model_path())
    assert result.code == 0, result.err
    assert "input      image: float32[batch, 1, 8, 8]" in result.out
    assert "nodes      9: Relu 3, Conv 2, Gemm 2, MaxPool 1, Reshape 1" in result.out
    assert "versions   IR 8; opsets ai.onnx 16" in result.out


def test_cli_json_and_mermaid(cli: CLI, control_flow_path: Path) -> None:
    result = cli("inspect", control_flow_path, "--json")
    assert result.code == 0
    assert ModelReport.from_json(result.out) == inspect_model(control_flow_path)
    result = cli("inspect", control_flow_path, "--mermaid")
    assert result.code == 0
    mermaid_structure(result.out)
    result = cli("inspect", control_flow_path, "--mermaid", "--collapse", "0")
    assert result.code == 0


def test_cli_usage_and_load_errors(cli: CLI, tmp_path: Path) -> None:
    assert cli("inspect", bundled.model_path(), "--json", "--mermaid").code == 2
    assert cli("inspect", bundled.model_path(), "--collapse", "3").code == 2
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    result = cli("inspect", path)
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert result.err.startswith("edge-sdk: error: cannot load model")
    assert "Traceback" not in result.err
