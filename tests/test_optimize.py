"""Offline optimisation (edge_sdk.optimize, ``edge-sdk optimize``) on real files with the real
onnxruntime: graph optimisation, fp16, int8, validation, metadata, atomic writes, errors.

References:
- the held-out digits are 360 images never used in training (tests/test_bundled_model.py);
  here the first CALIBRATION_COUNT are written as PNG files to calibrate, and accuracy is
  measured only on the other 160, so calibration and evaluation are disjoint;
- QDQ format: QuantizeLinear/DequantizeLinear pairs around float ops; per-channel weights carry
  a 1-D scale with one value per output channel and an ``axis`` attribute (ONNX operator spec,
  https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html);
- the Vitis AI DPU takes per-tensor, symmetric int8 with power-of-two scales (vai_q_onnx README,
  https://github.com/Xilinx/Vitis-AI/blob/master/src/vai_quantizer/vai_q_onnx/README.md);
- offline graph optimisation levels:
  https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image

from edge_sdk import CorruptModelError, EdgeModel, SessionSettings, bundled, read_metadata
from edge_sdk.cli import main
from edge_sdk.errors import CalibrationError, OptimizeError
from edge_sdk.optimize import OptimizeReport, optimize_model, quantization_settings_for
from edge_sdk.profiles import list_profiles, load_profile

HOLDOUT = Path(__file__).parent / "data" / "digits_holdout.npz"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CALIBRATION_COUNT = 200
GENERIC = "generic-x86-64"
QUICK = {"latency_rounds": 2}


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(HOLDOUT)
    return data["images"], data["labels"]


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory, holdout: tuple) -> Path:
    images, _ = holdout
    return write_pngs(tmp_path_factory.mktemp("calibration"), images[:CALIBRATION_COUNT])


@pytest.fixture(scope="module")
def evaluation_npz(tmp_path_factory: pytest.TempPathFactory, holdout: tuple) -> Path:
    images, _ = holdout
    path = tmp_path_factory.mktemp("evaluation") / "evaluation.npz"
    np.savez(path, images=images[CALIBRATION_COUNT:])
    return path


@pytest.fixture(scope="module")
def int8_digits(
    tmp_path_factory: pytest.TempPathFactory, calibration_dir: Path, evaluation_npz: Path
) -> tuple[Path, OptimizeReport]:
    out = tmp_path_factory.mktemp("int8") / "digits.int8.onnx"
    report = optimize_model(
        bundled.model_path(),
        out,
        profile=GENERIC,
        int8=True,
        calibration=calibration_dir,
        validation=evaluation_npz,
        latency_rounds=4,
    )
    return out, report


def profile_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'schema = 1\nname = "{name}"\n' + textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def dpu_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return profile_file(
        tmp_path_factory.mktemp("profiles"),
        "test-dpu",
        """
        family = "fpga"
        arch = "aarch64"
        [detect]
        [[providers]]
        name = "VitisAIExecutionProvider"
        [[providers]]
        name = "CPUExecutionProvider"
        [precision]
        preferred = "int8"
        [accelerator]
        name = "DPU"
        provider = "VitisAIExecutionProvider"
        quantized_only = true
        """,
    )


@pytest.fixture(scope="module")
def gpu_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return profile_file(
        tmp_path_factory.mktemp("profiles"),
        "test-gpu",
        """
        family = "jetson"
        arch = "aarch64"
        [detect]
        [[providers]]
        name = "TensorrtExecutionProvider"
        [[providers]]
        name = "CPUExecutionProvider"
        [precision]
        preferred = "fp16"
        """,
    )


def accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy through predict(): the model's own preprocessing, labels and metadata."""
    settings = SessionSettings(intra_op_threads=1)
    with EdgeModel.load(model_path, settings=settings, providers=["CPUExecutionProvider"]) as model:
        predicted = [model.predict(image).result.label for image in images]
    return float(np.mean(np.array(predicted) == labels.astype(str)))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# int8


def test_int8_keeps_held_out_accuracy_of_at_least_96_percent(
    int8_digits: tuple[Path, OptimizeReport], holdout: tuple
) -> None:
    out, report = int8_digits
    images, labels = holdout
    evaluation_images, evaluation_labels = images[CALIBRATION_COUNT:], labels[CALIBRATION_COUNT:]
    fp32 = accuracy(bundled.model_path(), evaluation_images, evaluation_labels)
    int8 = accuracy(out, evaluation_images, evaluation_labels)
    print(f"held-out accuracy on {len(evaluation_labels)} images: fp32 {fp32:.4f}, int8 {int8:.4f}")
    assert int8 >= 0.96
    assert fp32 - int8 <= 0.02
    assert report.precision == "int8"
    assert report.calibration is not None and report.calibration.samples == CALIBRATION_COUNT
    assert report.calibration.kind == "images"
    assert report.validation.samples == len(evaluation_labels)
    assert report.validation.kind == "npz images"
    assert report.top1_agreement is not None and report.top1_agreement >= 0.96
    assert report.size_after < report.size_before / 2  # int8 weights instead of float32


def test_int8_model_is_qdq_with_per_channel_weight_scales(
    int8_digits: tuple[Path, OptimizeReport],
) -> None:
    out, report = int8_digits
    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    values = initializers(model)
    weights = {
        node.input[0]: node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and values.get(node.input[0]) is not None
        and values[node.input[0]].dtype == np.int8
    }
    conv_weight = next(node for name, node in weights.items() if name.startswith("features.0"))
    scale = values[conv_weight.input[1]]
    assert scale.ndim == 1 and scale.size == 16  # one scale per output channel of the conv
    assert len(set(scale.tolist())) > 1
    assert {a.name for a in conv_weight.attribute} == {"axis"}
    assert report.quantization is not None
    assert report.quantization.per_channel and report.quantization.activation_type == "uint8"
    # The logits come straight from the last Gemm: not clipped to the calibrated range.
    producer = next(n for n in model.graph.node if "logits" in n.output)
    assert producer.op_type == "Gemm"
    assert not {"logits_scale", "logits_zero_point"} & set(values)


def test_edge_sdk_metadata_travels_into_the_optimised_model(
    int8_digits: tuple[Path, OptimizeReport],
) -> None:
    out, _ = int8_digits
    source = read_metadata(bundled.model_path())
    result = read_metadata(out)
    for key, value in source.props.items():
        assert result.props[key] == value
    assert result.labels == source.labels and result.preprocess == source.preprocess


def test_calibration_tail_is_the_held_out_set_without_validation(
    tmp_path: Path, calibration_dir: Path
) -> None:
    report = optimize_model(
        bundled.model_path(),
        tmp_path / "out.onnx",
        profile=GENERIC,
        int8=True,
        calibration=calibration_dir,
        max_calibration=150,
        **QUICK,
    )
    assert report.calibration is not None and report.calibration.samples == 150
    assert report.validation.held_out_from_calibration
    assert report.validation.samples == CALIBRATION_COUNT - 150
    report = optimize_model(
        bundled.model_path(),
        tmp_path / "out.onnx",
        profile=GENERIC,
        int8=True,
        calibration=calibration_dir,
        **QUICK,
    )
    # Every image fits under max_calibration: a fifth is still kept back for validation.
    assert report.calibration is not None and report.calibration.samples == 160
    assert report.validation.samples == 40


def test_dpu_profile_quantises_per_tensor_symmetric_with_power_of_two_scales(
    tmp_path: Path, dpu_profile: Path, calibration_dir: Path, evaluation_npz: Path, holdout: tuple
) -> None:
    out = tmp_path / "digits.dpu.onnx"
    # No int8=: the profile prefers int8, and calibration data is given.
    report = optimize_model(
        bundled.model_path(),
        out,
        profile=dpu_profile,
        calibration=calibration_dir,
        validation=evaluation_npz,
        **QUICK,
    )
    assert report.precision == "int8" and report.quantization is not None
    assert report.quantization.power_of_two_scales and not report.quantization.per_channel
    model = onnx.load(str(out))
    values = initializers(model)
    checked = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero_point = values[node.input[2]]
        scale = values[node.input[1]]
        if zero_point.dtype == np.int32:  # a bias: its scale is input scale x weight scale
            continue
        assert zero_point.dtype == np.int8 and np.all(zero_point == 0)
        assert scale.ndim == 0
        assert np.log2(float(scale)) == np.round(np.log2(float(scale)))
        checked += 1
    assert checked >= 10
    images, labels = holdout
    assert accuracy(out, images[CALIBRATION_COUNT:], labels[CALIBRATION_COUNT:]) >= 0.96


def test_every_shipped_profile_has_an_int8_recipe() -> None:
    for profile in list_profiles():
        settings = quantization_settings_for(profile)
        assert settings.weight_type == "int8", profile.name
        accelerator = profile.accelerator
        if accelerator is not None and accelerator.provider == "VitisAIExecutionProvider":
            assert settings.power_of_two_scales and not settings.per_channel, profile.name


def test_npz_arrays_calibrate_a_model_without_preprocessing(
    tmp_path: Path, tiny_mlp_path: Path
) -> None:
    arrays = tmp_path / "calibration.npz"
    np.savez(arrays, x=np.random.default_rng(0).standard_normal((40, 64)))  # float64: cast
    report = optimize_model(
        tiny_mlp_path,
        tmp_path / "mlp.int8.onnx",
        profile=GENERIC,
        int8=True,
        calibration=arrays,
        **QUICK,
    )
    assert report.calibration is not None and report.calibration.kind == "arrays"
    assert report.calibration.samples == 32 and report.validation.samples == 8
    assert report.outputs[0].name == "y" and report.outputs[0].top1_agreement is not None


# --------------------------------------------------------------------------------------------
# fp16 and graph optimisation


def test_fp16_keeps_float32_io_and_agrees(tmp_path: Path, evaluation_npz: Path) -> None:
    out = tmp_path / "digits.fp16.onnx"
    report = optimize_model(
        bundled.model_path(), out, profile=GENERIC, fp16=True, validation=evaluation_npz, **QUICK
    )
    assert report.precision == "fp16"
    model = onnx.load(str(out))
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    dtypes = {init.data_type for init in model.graph.initializer}
    assert TensorProto.FLOAT16 in dtypes
    assert report.top1_agreement is not None and report.top1_agreement >= 0.99
    assert report.max_abs_error < 0.05  # logits of a few units; fp16 has 11 significant bits
    assert report.size_after < 0.6 * report.size_before
    assert read_metadata(out).props == read_metadata(bundled.model_path()).props


def test_fp16_io_updates_the_declared_preprocessing_dtype(tmp_path: Path, holdout: tuple) -> None:
    out = tmp_path / "digits.fp16io.onnx"
    optimize_model(
        bundled.model_path(), out, profile=GENERIC, fp16=True, keep_io_float32=False, **QUICK
    )
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert read_metadata(out).preprocess["dtype"] == "float16"
    images, labels = holdout
    assert accuracy(out, images[:50], labels[:50]) >= 0.96  # predict() feeds it float16


def test_fp16_is_the_default_when_the_profile_prefers_it(tmp_path: Path, gpu_profile: Path) -> None:
    report = optimize_model(bundled.model_path(), tmp_path / "o.onnx", profile=gpu_profile, **QUICK)
    assert report.precision == "fp16"
    assert report.graph_optimization == "basic"
    assert any("not on" in w for w in report.warnings)  # timed on this host, not the GPU
    report = optimize_model(
        bundled.model_path(), tmp_path / "o.onnx", profile=gpu_profile, fp16=False, **QUICK
    )
    assert report.precision == "fp32"
    # Not CPU-only: no extended fusions into onnxruntime's CPU ops TensorRT cannot take.
    assert report.graph_optimization == "basic"
    domains = {node.domain for node in onnx.load(str(tmp_path / "o.onnx")).graph.node}
    assert domains <= {"", "ai.onnx"}


def test_graph_optimisation_output_loads_and_matches(tmp_path: Path, evaluation_npz: Path) -> None:
    out = tmp_path / "digits.opt.onnx"
    report = optimize_model(
        bundled.model_path(), out, profile=GENERIC, validation=evaluation_npz, **QUICK
    )
    assert report.precision == "fp32" and report.graph_optimization == "extended"
    assert report.max_abs_error < 1e-4
    model = onnx.load(str(out))
    assert {imp.domain for imp in model.opset_import} <= {"", "ai.onnx", "com.microsoft"}
    with EdgeModel.load(out, providers=["CPUExecutionProvider"]) as optimised:
        assert optimised.predict(bundled.sample_paths()[3]).result.label == "3"
    assert report.latency is not None and report.latency.ratio > 0


def test_graph_level_all_warns_that_the_file_is_tied_to_this_cpu(tmp_path: Path) -> None:
    report = optimize_model(
        bundled.model_path(),
        tmp_path / "o.onnx",
        profile=GENERIC,
        graph_optimization="all",
        latency_rounds=0,
    )
    assert report.latency is None
    assert any("layout" in w for w in report.warnings)


# --------------------------------------------------------------------------------------------
# Atomic writes


def test_failure_leaves_no_output_and_no_temp_files(tmp_path: Path, holdout: tuple) -> None:
    images, _ = holdout
    calibration = write_pngs(tmp_path / "calibration", images[:20])
    (calibration / "notes.txt").write_text("not an image\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CalibrationError, match=r"notes\.txt"):
        optimize_model(
            bundled.model_path(),
            out_dir / "m.onnx",
            profile=GENERIC,
            int8=True,
            calibration=calibration,
            **QUICK,
        )
    assert listing(out_dir) == []


def test_failure_leaves_an_existing_output_untouched(tmp_path: Path, holdout: tuple) -> None:
    images, _ = holdout
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous model")
    validation = write_pngs(tmp_path / "validation", images[:5])
    (validation / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(OptimizeError, match=r"validation data .*broken\.png"):
        optimize_model(bundled.model_path(), out, profile=GENERIC, validation=validation, **QUICK)
    assert out.read_bytes() == b"the previous model"
    assert listing(tmp_path) == ["m.onnx", "validation"]


def test_a_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    # The whole pipeline runs, the temp file is written and fsynced, then the rename fails:
    # OUT is a directory. Nothing may be left behind.
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(OptimizeError, match="cannot write"):
        optimize_model(bundled.model_path(), tmp_path / "m.onnx", profile=GENERIC, **QUICK)
    assert listing(tmp_path) == ["m.onnx"]
    assert (tmp_path / "m.onnx").is_dir()


def test_success_replaces_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    optimize_model(bundled.model_path(), out, profile=GENERIC, **QUICK)
    assert onnx.load(str(out)).graph.node
    assert listing(tmp_path) == ["m.onnx"]


# --------------------------------------------------------------------------------------------
# Bad input


def run_int8(tmp_path: Path, calibration: Path, model: Path | None = None) -> OptimizeReport:
    return optimize_model(
        model or bundled.model_path(),
        tmp_path / "out.onnx",
        profile=GENERIC,
        int8=True,
        calibration=calibration,
        **QUICK,
    )


def test_empty_calibration_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no files") as caught:
        run_int8(tmp_path, tmp_path / "empty")
    assert caught.value.folder == str(tmp_path / "empty")


def test_non_image_file_is_named(tmp_path: Path, holdout: tuple) -> None:
    folder = write_pngs(tmp_path / "calibration", holdout[0][:3])
    (folder / "labels.csv").write_text("0,1,2\n")
    with pytest.raises(CalibrationError, match=r"'labels.csv' is not an image"):
        run_int8(tmp_path, folder)


def test_image_the_preprocessing_cannot_decode_is_named(tmp_path: Path, holdout: tuple) -> None:
    folder = write_pngs(tmp_path / "calibration", holdout[0][:3])
    (folder / "cut.png").write_bytes((folder / "000.png").read_bytes()[:40])
    with pytest.raises(CalibrationError, match=r"cannot decode image 'cut.png'"):
        run_int8(tmp_path, folder)


def test_missing_calibration_path(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no such file"):
        run_int8(tmp_path, tmp_path / "nowhere")


def test_model_that_is_not_onnx(tmp_path: Path, calibration_dir: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_text("these are release notes, not a model\n")
    with pytest.raises(CorruptModelError, match="not an ONNX model"):
        run_int8(tmp_path, calibration_dir, model)
    assert not (tmp_path / "out.onnx").exists()


def test_images_for_a_model_without_preprocessing_say_to_pass_arrays(
    tmp_path: Path, tiny_mlp_path: Path, calibration_dir: Path
) -> None:
    with pytest.raises(CalibrationError, match=r"declares no preprocessing.*\.npz"):
        run_int8(tmp_path, calibration_dir, tiny_mlp_path)


def test_npz_without_a_usable_array_names_what_it_holds(
    tmp_path: Path, tiny_mlp_path: Path
) -> None:
    arrays = tmp_path / "c.npz"
    np.savez(arrays, a=np.zeros((4, 64)), b=np.zeros((4, 64)))
    with pytest.raises(CalibrationError, match=r"\['a', 'b'\].*\['x'\]"):
        run_int8(tmp_path, arrays, tiny_mlp_path)
    np.savez(arrays, x=np.zeros((4, 3)))
    with pytest.raises(CalibrationError, match=r"shape \(4, 3\)"):
        run_int8(tmp_path, arrays, tiny_mlp_path)


def test_contradictory_arguments_are_value_errors(
    tmp_path: Path, calibration_dir: Path, dpu_profile: Path
) -> None:
    model, out = bundled.model_path(), tmp_path / "o.onnx"
    with pytest.raises(ValueError, match="not both"):
        optimize_model(model, out, profile=GENERIC, fp16=True, int8=True)
    with pytest.raises(ValueError, match="needs calibration"):
        optimize_model(model, out, profile=GENERIC, int8=True)
    with pytest.raises(ValueError, match="only for int8"):
        optimize_model(model, out, profile=GENERIC, calibration=calibration_dir)
    with pytest.raises(ValueError, match="basic"):
        optimize_model(
            model,
            out,
            profile=GENERIC,
            int8=True,
            calibration=calibration_dir,
            graph_optimization="extended",
        )
    with pytest.raises(ValueError, match="per tensor"):
        quantization_settings_for(load_profile(dpu_profile), per_channel=True)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# CLI


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_quantises_and_prints_the_report(
    tmp_path: Path, calibration_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "digits.int8.onnx"
    code, stdout, stderr = cli(
        capsys,
        "optimize",
        bundled.model_path(),
        "--profile",
        GENERIC,
        "-o",
        out,
        "--int8",
        "--calibration",
        calibration_dir,
        "--latency-rounds",
        "2",
    )
    assert code == 0, stderr
    assert out.is_file()
    for fragment in (
        "size ",
        "KiB ->",
        "int8: QDQ",
        "top-1 agreement",
        "max abs error",
        "latency ",
        "ratio ",
    ):
        assert fragment in stdout


def test_cli_json_report(
    tmp_path: Path,
    calibration_dir: Path,
    evaluation_npz: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "digits.int8.onnx"
    code, stdout, stderr = cli(
        capsys,
        "optimize",
        bundled.model_path(),
        "--profile",
        GENERIC,
        "-o",
        out,
        "--int8",
        "--calibration",
        calibration_dir,
        "--validation",
        evaluation_npz,
        "--json",
        "--latency-rounds",
        "2",
    )
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["precision"] == "int8"
    assert document["size_after"] == out.stat().st_size
    assert document["validation"]["samples"] == 160
    assert document["top1_agreement"] >= 0.96
    assert document["latency"]["ratio"] > 0
    assert document["quantization"]["per_channel"] is True


def test_cli_usage_errors(
    tmp_path: Path, dpu_profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, out = bundled.model_path(), tmp_path / "o.onnx"
    code, _, stderr = cli(capsys, "optimize", model, "--profile", GENERIC, "-o", out, "--int8")
    assert code == 2 and "--calibration" in stderr
    code, _, stderr = cli(capsys, "optimize", model, "--profile", dpu_profile, "-o", out)
    assert code == 2 and "prefers int8" in stderr and "--no-int8" in stderr
    code, _, stderr = cli(capsys, "optimize", model, "-o", out)
    assert code == 2 and "--profile" in stderr
    code, _, stderr = cli(
        capsys, "optimize", model, "--profile", GENERIC, "-o", out, "--fp16", "--int8"
    )
    assert code == 2
    assert not out.exists()


def test_cli_reports_bad_calibration_data_in_one_line(
    tmp_path: Path, holdout: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_pngs(tmp_path / "calibration", holdout[0][:3])
    (folder / "readme.md").write_text("# calibration images\n")
    code, _, stderr = cli(
        capsys,
        "optimize",
        bundled.model_path(),
        "--profile",
        GENERIC,
        "-o",
        tmp_path / "o.onnx",
        "--int8",
        "--calibration",
        folder,
    )
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "edge-sdk: error: calibration data" in stderr and "readme.md" in stderr


def test_cli_help_does_not_import_onnxruntime() -> None:
    code = (
        "import sys\n"
        "from edge_sdk.cli import main\n"
        "try:\n    main(['optimize', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('onnxruntime', 'onnx', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--calibration" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# Example


@pytest.mark.slow
def test_quantize_digits_example_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quantize_digits.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accuracy fp32" in result.stdout and "int8" in result.stdout


def test_damaged_calibration_npz_is_a_calibration_error(tmp_path: Path) -> None:
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, image=np.zeros((4, 1, 8, 8), np.float32))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(CalibrationError, match=r"cannot read the \.npz"):
        run_int8(tmp_path, cut)
    assert not (tmp_path / "out.onnx").exists()
