"""``check_model`` and ``edge-sdk check`` against the shipped device profiles and profiles
written for a test.

References:
- onnxruntime compatibility table (https://onnxruntime.ai/docs/reference/compatibility.html):
  1.17 implements ai.onnx opset 20 and IR 9; 1.11 opset 16 and IR 8; opsets from 7 up.
- QDQ format (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html):
  QuantizeLinear/DequantizeLinear pairs around float operators; int8 weights through
  DequantizeLinear.
- devices/kria-kv260.toml: the DPUCZDX8G takes int8 only (quantized_only) and a listed set of
  operators (Conv, Gemm, Relu, ...; not Erf, Softmax, Sigmoid).
- FLOPs: a Conv output element takes C_in/group x kernel multiply-adds, two FLOPs each.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import _models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _cli import CLI
from onnx import TensorProto, helper, numpy_helper

from edge_sdk import bundled
from edge_sdk.compat import (
    ONNXRUNTIME_SUPPORT,
    CompatReport,
    check_model,
    runtime_support,
)
from edge_sdk.errors import CorruptModelError, UnknownProfileError
from edge_sdk.profiles import DeviceProfile, list_profiles, load_profile

KRIA = "kria-kv260"
# An operator the DPU does not run; the test asserts it is not in the shipped profile's list.
NOT_ON_DPU = "Erf"
DIGITS_OPSET = 16


@pytest.fixture(autouse=True)
def shipped_profiles_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_SDK_PROFILES_DIR", raising=False)
    monkeypatch.delenv("EDGE_SDK_PROFILE", raising=False)


def shipped() -> Iterator[DeviceProfile]:
    # Profiles from the source tree's devices/ (the test environment adds no others).
    return iter(list_profiles())


def save(graph: onnx.GraphProto, path: Path, opset: int = 17, ir: int = 8, **extra: int) -> Path:
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(domain, version) for domain, version in extra.items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir
    onnx.save(model, path)
    return path


def qdq_model(path: Path, odd_op: str = NOT_ON_DPU) -> Path:
    """A QDQ int8 model: Q/DQ -> Conv (int8 weights through DQ) -> Q/DQ -> ``odd_op`` named
    'odd_one_out' -> Q/DQ. Only the odd operator is outside the DPU's list."""
    rng = np.random.default_rng(3)
    weights = rng.integers(-127, 127, size=(4, 3, 3, 3), dtype=np.int8)
    scalar = numpy_helper.from_array
    inits = [
        scalar(np.float32(0.05), "s"),
        scalar(np.int8(0), "zp"),
        scalar(weights, "w_q"),
        scalar(np.float32(0.01), "w_s"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_q"], name="quant_in"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "zp"], ["x_d"], name="dequant_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "zp"], ["w_d"], name="dequant_w"),
        helper.make_node("Conv", ["x_d", "w_d"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["c_q"], name="quant_conv"),
        helper.make_node("DequantizeLinear", ["c_q", "s", "zp"], ["c_d"], name="dequant_conv"),
        helper.make_node(odd_op, ["c_d"], ["e"], name="odd_one_out"),
        helper.make_node("QuantizeLinear", ["e", "s", "zp"], ["e_q"], name="quant_out"),
        helper.make_node("DequantizeLinear", ["e_q", "s", "zp"], ["y"], name="dequant_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return save(graph, path)


def write_profile(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            schema = 1
            name = "{name}"
            family = "x86"
            arch = "x86_64"
            """
        )
        + textwrap.dedent(body)
    )
    return path


# --------------------------------------------------------------------------------------------
# The bundled model on every shipped profile


def test_every_shipped_profile_takes_the_bundled_model(cli: CLI) -> None:
    names = [p.name for p in shipped()]
    assert KRIA in names and "generic-x86-64" in names
    for profile in shipped():
        report = check_model(bundled.model_path(), profile.name)
        # Stamped opset 16 so that the oldest runtime a profile names (onnxruntime 1.11 on
        # JetPack 4) loads it.
        support = runtime_support(profile.onnxruntime)
        assert support is None or support.max_opset >= DIGITS_OPSET, profile.name
        assert report.verdict in ("pass", "warn"), (profile.name, report.findings)
        result = cli("check", bundled.model_path(), "--profile", profile.name)
        assert result.code == 0, (profile.name, result.out, result.err)
        assert f"verdict: {report.verdict.upper()}" in result.out


def test_cpu_only_profile_passes_the_bundled_model() -> None:
    report = check_model(bundled.model_path(), "generic-x86-64")
    assert report.verdict == "pass"
    assert report.accelerator is None and report.cpu_share is None
    assert report.offloaded == ()
    assert [(f.severity, f.code) for f in report.findings] == [("info", "dynamic-shape")]


def test_float_model_on_the_dpu_warns_that_it_runs_on_the_cpu_only(cli: CLI) -> None:
    report = check_model(bundled.model_path(), KRIA)
    assert report.verdict == "warn"
    finding = report.finding("needs-int8")
    assert finding is not None and finding.severity == "warn"
    assert "runs on the CPU only" in finding.message
    assert "quantise to int8" in finding.message
    assert "edge-sdk optimize --int8" in finding.message
    assert report.cpu_share == 1.0
    assert {n.reason for n in report.offloaded} == {"dtype"}
    assert len(report.offloaded) == report.node_count == 9
    result = cli("check", bundled.model_path(), "--profile", KRIA)
    assert result.code == 0
    assert "needs-int8" in result.out


# --------------------------------------------------------------------------------------------
# Operators the DPU does not run


def test_qdq_fixture_is_a_real_model(tmp_path: Path) -> None:
    path = qdq_model(tmp_path / "qdq.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert y.shape == (1, 4, 8, 8)


def test_an_op_the_dpu_cannot_run_is_named(tmp_path: Path, cli: CLI) -> None:
    assert NOT_ON_DPU not in load_profile(KRIA).accelerator.ops  # type: ignore[union-attr]
    path = qdq_model(tmp_path / "qdq.onnx")
    report = check_model(path, KRIA)
    # The KV260 profile marks its DPU as required: an operator the DPU cannot run fails,
    # with the node named (quantising does not fix it, unlike a float model: see below).
    assert load_profile(KRIA).accelerator.required  # type: ignore[union-attr]
    assert report.verdict == "fail"
    assert [(n.node, n.op, n.reason) for n in report.offloaded] == [
        ("odd_one_out", NOT_ON_DPU, "op")
    ]
    finding = report.finding("accelerator-op")
    assert finding is not None and finding.severity == "fail"
    assert finding.nodes == ("odd_one_out",)
    assert "'odd_one_out'" in finding.message and NOT_ON_DPU in finding.message
    assert report.finding("needs-int8") is None
    assert 0 < report.cpu_share < 0.5  # type: ignore[operator]
    result = cli("check", path, "--profile", KRIA)
    assert result.code == 1
    assert "FAIL  accelerator-op" in result.out and "odd_one_out" in result.out


def test_an_op_off_an_optional_accelerator_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same model on a copy of the profile without ``required``: the CPU provider runs the
    # node, so it is a warning, still naming the node.
    text = Path(load_profile(KRIA).path).read_text().replace("required = true\n", "")
    user = tmp_path / "profiles"
    user.mkdir()
    (user / "kv260-relaxed.toml").write_text(
        text.replace(f'name = "{KRIA}"', 'name = "kv260-relaxed"')
    )
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    report = check_model(qdq_model(tmp_path / "qdq.onnx"), "kv260-relaxed")
    assert report.verdict == "warn"
    finding = report.finding("accelerator-op")
    assert finding is not None and finding.severity == "warn"
    assert finding.nodes == ("odd_one_out",)


def test_require_accelerator_fails_a_node_off_the_dpu(tmp_path: Path, cli: CLI) -> None:
    path = qdq_model(tmp_path / "qdq.onnx")
    report = check_model(path, KRIA, require_accelerator=True)
    assert report.verdict == "fail"
    finding = report.finding("accelerator-op")
    assert finding is not None and finding.severity == "fail"
    assert finding.nodes == ("odd_one_out",)
    result = cli("check", path, "--profile", KRIA, "--require-accelerator")
    assert result.code == 1
    assert "FAIL  accelerator-op" in result.out and "odd_one_out" in result.out
    # A model whose every node the DPU takes passes even so.
    path = qdq_model(tmp_path / "all_dpu.onnx", odd_op="Relu")
    report = check_model(path, KRIA, require_accelerator=True)
    assert report.offloaded == ()
    assert report.cpu_share == 0.0
    assert report.verdict != "fail", report.findings


def test_a_float_node_in_a_quantised_model_is_named(tmp_path: Path) -> None:
    # x -> Q/DQ -> Conv -> Relu with no Q/DQ before the Relu: it computes in float32.
    scalar = numpy_helper.from_array
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_q"], name="quant_in"),
            helper.make_node("DequantizeLinear", ["x_q", "s", "zp"], ["x_d"], name="dequant_in"),
            helper.make_node("DequantizeLinear", ["w_q", "s", "zp"], ["w_d"], name="dequant_w"),
            helper.make_node("Conv", ["x_d", "w_d"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="float_relu"),
        ],
        "partly_quantised",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [
            scalar(np.float32(0.1), "s"),
            scalar(np.int8(0), "zp"),
            scalar(np.ones((1, 1, 1, 1), np.int8), "w_q"),
        ],
    )
    report = check_model(save(graph, tmp_path / "partly.onnx"), KRIA)
    assert [(n.node, n.reason, n.dtype) for n in report.offloaded] == [
        ("float_relu", "dtype", "float32")
    ]
    finding = report.finding("accelerator-dtype")
    assert finding is not None and finding.nodes == ("float_relu",)
    assert report.finding("needs-int8") is None
    assert report.verdict == "warn"


def test_contrib_operators_are_a_warning(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="ms_gelu", domain="com.microsoft")],
        "contrib",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = save(graph, tmp_path / "contrib.onnx", **{"com.microsoft": 1})
    report = check_model(path, "generic-x86-64")
    assert report.verdict == "warn"
    assert report.finding("contrib-op").nodes == ("ms_gelu",)  # type: ignore[union-attr]


def test_require_accelerator_fails_a_float_model_and_a_profile_without_one() -> None:
    report = check_model(bundled.model_path(), KRIA, require_accelerator=True)
    assert report.verdict == "fail"
    assert report.finding("needs-int8").severity == "fail"  # type: ignore[union-attr]
    report = check_model(bundled.model_path(), "generic-x86-64", require_accelerator=True)
    assert report.verdict == "fail"
    assert report.finding("no-accelerator") is not None


def test_custom_domain_op_fails_on_every_profile_naming_the_node(tmp_path: Path, cli: CLI) -> None:
    path = tmp_path / "custom.onnx"
    _models.unsupported_op(path)
    for profile in ("generic-x86-64", KRIA):
        report = check_model(path, profile)
        assert report.verdict == "fail"
        finding = report.finding("unsupported-op")
        assert finding is not None and finding.severity == "fail"
        assert "edge.sdk.test" in finding.message
        assert finding.nodes == ("NoSuchOperatorAnywhere_0",)
    result = cli("check", path, "--profile", "generic-x86-64")
    assert result.code == 1
    assert "NoSuchOperatorAnywhere" in result.out


def test_an_op_newer_than_the_models_opset_fails(tmp_path: Path) -> None:
    # Gelu appeared in opset 20: a model stamped 17 cannot use it.
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="gelu")],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    report = check_model(save(graph, tmp_path / "gelu.onnx"), "generic-x86-64")
    finding = report.finding("unsupported-op")
    assert finding is not None and finding.nodes == ("gelu",)
    assert "opset 17" in finding.message and "opset 20" in finding.message


# --------------------------------------------------------------------------------------------
# Versions


def test_support_table_rows() -> None:
    assert runtime_support("1.17") is not None
    row = runtime_support("1.17.3")
    assert row is not None and (row.max_opset, row.max_ir_version, row.confirmed) == (20, 9, True)
    row = runtime_support("1.11")
    assert row is not None and (row.max_opset, row.max_ir_version) == (16, 8)
    newest = max(ONNXRUNTIME_SUPPORT)
    row = runtime_support(f"{newest[0]}.{newest[1] + 5}")
    assert row is not None and not row.confirmed
    assert runtime_support("banana") is None
    assert runtime_support(None) is None


def test_opset_newer_than_the_profiles_onnxruntime_fails(tmp_path: Path, cli: CLI) -> None:
    profile = load_profile("generic-x86-64")
    support = runtime_support(profile.onnxruntime)
    assert support is not None
    path = _models_path(tmp_path, opset=support.max_opset + 1, ir=support.max_ir_version)
    report = check_model(path, profile)
    assert report.verdict == "fail"
    assert [f.code for f in report.findings_of("fail")] == ["opset"]
    assert f"<= {support.max_opset}" in report.finding("opset").message  # type: ignore[union-attr]
    result = cli("check", path, "--profile", profile.name)
    assert result.code == 1
    assert "FAIL  opset" in result.out
    # At the profile's limits it passes.
    path = _models_path(tmp_path, opset=support.max_opset, ir=support.max_ir_version)
    assert check_model(path, profile).verdict == "pass"


def test_ir_version_newer_than_the_profiles_onnxruntime_fails(tmp_path: Path) -> None:
    support = runtime_support(load_profile("generic-x86-64").onnxruntime)
    assert support is not None
    path = _models_path(tmp_path, opset=support.max_opset, ir=support.max_ir_version + 1)
    report = check_model(path, "generic-x86-64")
    assert [f.code for f in report.findings_of("fail")] == ["ir-version"]


def test_versions_beyond_the_table_are_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest = max(ONNXRUNTIME_SUPPORT)
    opset, _, ir = ONNXRUNTIME_SUPPORT[newest]
    folder = tmp_path / "profiles"
    write_profile(
        folder,
        "future-box",
        f"""\
        onnxruntime = "{newest[0]}.{newest[1] + 3}"
        [detect]
        [[providers]]
        name = "CPUExecutionProvider"
        """,
    )
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(folder))
    path = _models_path(tmp_path, opset=opset + 1, ir=ir)
    report = check_model(path, "future-box")
    assert report.verdict == "warn"
    assert report.finding("opset").severity == "warn"  # type: ignore[union-attr]


def _models_path(tmp_path: Path, opset: int, ir: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return save(graph, tmp_path / f"relu_{opset}_{ir}.onnx", opset=opset, ir=ir)


# --------------------------------------------------------------------------------------------
# Budgets


@pytest.fixture
def tiny_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    for name, memory, storage in (("tiny-memory", 1, 1000), ("tiny-storage", 1000, 1)):
        write_profile(
            folder,
            name,
            f"""\
            onnxruntime = "1.17"
            [detect]
            [[providers]]
            name = "CPUExecutionProvider"
            [budgets]
            memory_mb = {memory}
            storage_mb = {storage}
            """,
        )
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(folder))
    return folder


def test_memory_budget_exceeded_fails(tmp_path: Path, tiny_budgets: Path, cli: CLI) -> None:
    path = tmp_path / "wide.onnx"
    _models.tiny_mlp(path, width=600)  # 600 x 600 float32 weights: 1.37 MiB
    report = check_model(path, "tiny-memory")
    assert report.verdict == "fail"
    assert [f.code for f in report.findings_of("fail")] == ["memory-budget"]
    assert report.parameter_bytes == 600 * 600 * 4 + 600 * 4
    assert report.memory_budget_bytes == 1024 * 1024
    result = cli("check", path, "--profile", "tiny-memory")
    assert result.code == 1
    assert "FAIL  memory-budget" in result.out


def test_storage_budget_counts_external_data(tmp_path: Path, tiny_budgets: Path) -> None:
    model = onnx.load_from_string(_models.tiny_mlp(width=600))
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    assert path.stat().st_size < 4096
    report = check_model(path, "tiny-storage")
    assert report.verdict == "fail"
    assert [f.code for f in report.findings_of("fail")] == ["storage-budget"]
    assert report.storage_bytes == path.stat().st_size + (tmp_path / "w.bin").stat().st_size
    # Half the budget or more: an update with its rollback copy would not fit.
    small = tmp_path / "small.onnx"
    _models.tiny_mlp(small, width=400)  # 0.61 MiB
    report = check_model(small, "tiny-storage")
    assert report.verdict == "warn"
    assert report.finding("storage-budget").severity == "warn"  # type: ignore[union-attr]


def test_activation_estimate_is_the_peak_of_live_tensors(tiny_mlp_path: Path) -> None:
    # x[1, 64] -> MatMul -> m -> Add -> a -> Relu -> y, 256 bytes each: two live at a time.
    report = check_model(tiny_mlp_path, "generic-x86-64")
    assert report.activation_bytes == 512
    assert report.memory_bytes == report.parameter_bytes + 512


# --------------------------------------------------------------------------------------------
# Shapes and compute


def test_dynamic_shapes_are_listed(dynamic_mlp_path: Path) -> None:
    report = check_model(dynamic_mlp_path, "generic-x86-64")
    assert [str(d) for d in report.dynamic_dims] == ["x[0]=batch", "y[0]=batch"]
    assert report.finding("dynamic-shape").severity == "info"  # type: ignore[union-attr]
    # An accelerator compiles for fixed shapes: a warning there.
    report = check_model(dynamic_mlp_path, KRIA)
    assert report.finding("dynamic-shape").severity == "warn"  # type: ignore[union-attr]


def test_flops_estimate_of_a_conv_net(tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    _models.conv_net(path, size=32, channels=(8, 16))
    report = check_model(path, "generic-x86-64")
    # conv0: 3 -> 8 channels, 3x3, stride 2: output 8 x 16 x 16; conv1: 8 -> 16, 16 -> 8 x 8.
    conv0 = 2 * (8 * 16 * 16) * (3 * 3 * 3)
    conv1 = 2 * (16 * 8 * 8) * (8 * 3 * 3)
    relus = 8 * 16 * 16 + 16 * 8 * 8
    pool = 16 * 8 * 8  # global average pool reads every input element
    matmul = 2 * 10 * 16
    assert report.total_flops == conv0 + conv1 + relus + pool + matmul
    assert report.nodes_without_estimate == 0


def test_shape_inference_uses_no_weights_twice_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    data = _models.tiny_mlp(path, width=128)
    check_model(path, "generic-x86-64")
    assert path.read_bytes() == data  # the check strips weights in memory only


# --------------------------------------------------------------------------------------------
# Output, JSON, errors


def test_json_document_and_round_trip(cli: CLI, tmp_path: Path) -> None:
    path = qdq_model(tmp_path / "qdq.onnx")
    result = cli("check", path, "--profile", KRIA, "--json")
    assert result.code == 1
    document = json.loads(result.out)
    assert document["format"] == 1
    assert document["kind"] == "edge-sdk.check"
    assert document["verdict"] == "fail"
    assert document["offloaded"][0]["node"] == "odd_one_out"
    report = CompatReport.from_json(result.out)
    assert report == check_model(path, KRIA)
    assert json.loads(report.to_json()) == document


def test_unknown_profile_is_one_line_and_exit_1(cli: CLI) -> None:
    result = cli("check", bundled.model_path(), "--profile", "kria-kv26")
    assert result.code == 1
    assert result.out == ""
    assert result.err.count("\n") == 1
    assert "no device profile named 'kria-kv26'" in result.err
    assert "kria-kv260" in result.err  # the suggestion
    with pytest.raises(UnknownProfileError):
        check_model(bundled.model_path(), "no-such-board")


def test_auto_profile_detects_this_machine(cli: CLI) -> None:
    result = cli("check", bundled.model_path())
    assert result.code == 0, result.err
    assert "profile " in result.out


def test_bad_model_file(tmp_path: Path, cli: CLI) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"GIF89a" + bytes(64))
    with pytest.raises(CorruptModelError):
        check_model(path, "generic-x86-64")
    result = cli("check", path, "--profile", "generic-x86-64")
    assert result.code == 1
    assert result.err.startswith("edge-sdk: error: cannot load model")
