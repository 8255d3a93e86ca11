"""``validate_model`` and ``edge-sdk validate``: a model's outputs on this machine's providers
against reference outputs, with real onnxruntime sessions.

References:
- the tolerance rule is numpy.isclose's: |actual - expected| <= atol + rtol * |expected|
  (https://numpy.org/doc/stable/reference/generated/numpy.isclose.html);
- numpy.savez stores arrays given without names as arr_0, arr_1, ...
  (https://numpy.org/doc/stable/reference/generated/numpy.savez.html);
- tests/_models.py: tiny_mlp is y = Relu(x @ W + B) with W, B from the file's initializers;
  two_inputs is out = image * scale (cast to float, broadcast over C, H, W).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _cli import CLI
from onnx import numpy_helper

from edge_sdk import bundled
from edge_sdk.compat import load_arrays, validate_model
from edge_sdk.errors import (
    InputShapeError,
    MissingInputError,
    ReferenceDataError,
    UnknownInputError,
)
from edge_sdk.runtime import EdgeModel

CPU = "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Validate on this machine's own profile, whatever the environment names.
    monkeypatch.setenv("EDGE_SDK_PROFILE", "generic-x86-64")
    monkeypatch.delenv("EDGE_SDK_PROFILES_DIR", raising=False)


def mlp_reference(path: Path, x: np.ndarray) -> np.ndarray:
    """Relu(x @ W + B) in NumPy (float64), from the model file's own weights."""
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    return np.maximum(x.astype(np.float64) @ weights["W"] + weights["B"], 0.0)


@pytest.fixture
def mlp_case(tmp_path: Path, tiny_mlp_path: Path) -> tuple[Path, Path, Path, np.ndarray]:
    x = np.random.default_rng(5).standard_normal((1, 64)).astype(np.float32)
    expected = mlp_reference(tiny_mlp_path, x)
    inputs = tmp_path / "in.npz"
    outputs = tmp_path / "out.npz"
    np.savez(inputs, x=x)
    np.savez(outputs, y=expected)
    return tiny_mlp_path, inputs, outputs, expected


# --------------------------------------------------------------------------------------------
# Library


def test_outputs_within_tolerance_pass(mlp_case: tuple[Path, Path, Path, np.ndarray]) -> None:
    model, inputs, outputs, _ = mlp_case
    report = validate_model(model, inputs, outputs)
    assert report.passed
    assert report.providers == (CPU,)
    assert report.profile == "generic-x86-64"
    (comparison,) = report.outputs
    assert comparison.name == "y" and comparison.passed
    assert comparison.shape == comparison.expected_shape == (1, 64)
    # float32 arithmetic against a float64 reference: small but not zero.
    assert 0 < comparison.max_abs_error < 1e-4  # type: ignore[operator]
    assert comparison.mismatches == 0


def test_perturbed_reference_fails_with_the_errors(
    mlp_case: tuple[Path, Path, Path, np.ndarray],
) -> None:
    model, inputs, _, expected = mlp_case
    wrong = expected.copy()
    index = int(np.argmax(expected))  # a positive output, so Relu passes it through
    wrong[0, index] += 0.5
    report = validate_model(model, inputs, {"y": wrong})
    assert not report.passed
    (comparison,) = report.outputs
    assert comparison.mismatches == 1
    assert comparison.max_abs_error == pytest.approx(0.5, abs=1e-4)
    assert comparison.max_rel_error == pytest.approx(0.5 / wrong[0, index], rel=1e-3)
    # A tolerance wide enough accepts it.
    assert validate_model(model, inputs, {"y": wrong}, atol=0.6).passed


def test_shape_mismatch_is_a_failed_output(mlp_case: tuple[Path, Path, Path, np.ndarray]) -> None:
    model, inputs, _, expected = mlp_case
    report = validate_model(model, inputs, {"y": expected[:, :10]})
    assert not report.passed
    assert "shape (1, 64) differs" in report.outputs[0].reason


def test_positional_keys_follow_the_model_order(tmp_path: Path, two_inputs_path: Path) -> None:
    image = np.random.default_rng(2).standard_normal((2, 3, 4, 4)).astype(np.float32)
    scale = np.array([2, 3], dtype=np.int64)
    expected = image * scale[:, None, None, None].astype(np.float32)
    np.savez(tmp_path / "in.npz", image, scale)  # arr_0, arr_1
    np.savez(tmp_path / "out.npz", expected)
    report = validate_model(two_inputs_path, tmp_path / "in.npz", tmp_path / "out.npz", atol=0)
    assert report.passed
    assert report.outputs[0].max_abs_error == 0.0


def test_an_already_loaded_model_is_used_and_kept_open(
    mlp_case: tuple[Path, Path, Path, np.ndarray],
) -> None:
    model_path, inputs, outputs, _ = mlp_case
    with EdgeModel.load(model_path, providers=[CPU]) as model:
        assert validate_model(model, inputs, outputs).passed
        assert not model.closed


def test_bundled_model_against_onnxruntimes_own_output(tmp_path: Path) -> None:
    # The bundled model's held-out digits, run once to make a reference, then validated.
    # The held-out digits are uint8 8x8 pictures; the model takes [batch, 1, 8, 8] in [0, 1].
    with np.load(Path(__file__).parent / "data" / "digits_holdout.npz") as data:
        images = (data["images"][:32, None] / np.float32(255)).astype(np.float32)
    with EdgeModel.load(bundled.model_path(), providers=[CPU]) as model:
        reference = model.run({"image": images})
    report = validate_model(bundled.model_path(), {"image": images}, reference, atol=1e-6)
    assert report.passed, report.to_text()


# --------------------------------------------------------------------------------------------
# Bad reference data


def test_missing_and_misshapen_inputs_name_the_input(
    tmp_path: Path, mlp_case: tuple[Path, Path, Path, np.ndarray]
) -> None:
    model, _, outputs, _ = mlp_case
    with pytest.raises(UnknownInputError) as caught:
        validate_model(model, {"z": np.zeros((1, 64), np.float32)}, outputs)
    assert caught.value.input_name == "x" or "'x'" in str(caught.value)
    with pytest.raises(MissingInputError, match="'x'"):
        validate_model(model, {}, outputs)
    with pytest.raises(InputShapeError) as shape_error:
        validate_model(model, {"x": np.zeros((1, 63), np.float32)}, outputs)
    assert shape_error.value.input_name == "x"


def test_reference_naming_no_output_is_an_error(
    mlp_case: tuple[Path, Path, Path, np.ndarray],
) -> None:
    model, inputs, _, expected = mlp_case
    with pytest.raises(ReferenceDataError, match=r"no output 'logits'.*outputs: y"):
        validate_model(model, inputs, {"logits": expected})
    with pytest.raises(ReferenceDataError, match="no reference arrays"):
        validate_model(model, inputs, {})
    with pytest.raises(ReferenceDataError, match="positional array 3"):
        validate_model(model, inputs, {"arr_3": expected})


def test_unreadable_npz_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(ReferenceDataError, match=r"notes\.npz: not an \.npz archive"):
        load_arrays(text)
    with pytest.raises(ReferenceDataError, match="no such file"):
        load_arrays(tmp_path / "missing.npz")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ReferenceDataError, match=r"\.npy array"):
        load_arrays(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ReferenceDataError, match=r"pickled\.npz"):
        load_arrays(pickled)


def test_non_numeric_and_nan_comparisons(tmp_path: Path) -> None:
    from edge_sdk.compat import _compare

    nan = np.array([1.0, np.nan, np.inf])
    assert _compare("o", nan, nan.copy(), 0.0, 0.0).passed
    assert not _compare("o", nan, np.array([1.0, 2.0, np.inf]), 0.0, 0.0).passed
    words = np.array(["a", "b"])
    result = _compare("o", words, np.array(["a", "c"]), 0.0, 0.0)
    assert not result.passed and result.mismatches == 1 and result.max_abs_error is None


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_pass_and_fail(
    cli: CLI, tmp_path: Path, mlp_case: tuple[Path, Path, Path, np.ndarray]
) -> None:
    model, inputs, outputs, expected = mlp_case
    result = cli("validate", model, "--inputs", inputs, "--expected", outputs)
    assert result.code == 0, result.err
    assert "PASS  y" in result.out and "result: PASS" in result.out
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=expected + 1.0)
    result = cli("validate", model, "--inputs", inputs, "--expected", wrong)
    assert result.code == 1
    assert "FAIL  y" in result.out and "max abs 1" in result.out
    result = cli(
        "validate", model, "--inputs", inputs, "--expected", wrong, "--atol", "1.5", "--json"
    )
    assert result.code == 0
    document = json.loads(result.out)
    assert document["format"] == 1 and document["kind"] == "edge-sdk.validate"
    assert document["passed"] is True
    assert document["outputs"][0]["max_abs_error"] == pytest.approx(1.0, abs=1e-4)


def test_cli_profile_option(cli: CLI, mlp_case: tuple[Path, Path, Path, np.ndarray]) -> None:
    model, inputs, outputs, _ = mlp_case
    result = cli(
        "validate", model, "--inputs", inputs, "--expected", outputs, "--profile", "generic-x86-64"
    )
    assert result.code == 0, result.err
    assert "profile generic-x86-64" in result.out


def test_cli_bad_input_names_the_input(
    cli: CLI, tmp_path: Path, mlp_case: tuple[Path, Path, Path, np.ndarray]
) -> None:
    model, _, outputs, _ = mlp_case
    bad = tmp_path / "bad_in.npz"
    np.savez(bad, x=np.zeros((1, 63), np.float32))
    result = cli("validate", model, "--inputs", bad, "--expected", outputs)
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "'x'" in result.err
    result = cli("validate", model, "--inputs", tmp_path / "nope.npz", "--expected", outputs)
    assert result.code == 1
    assert "nope.npz" in result.err and "no such file" in result.err


def test_cli_usage_errors(cli: CLI, mlp_case: tuple[Path, Path, Path, np.ndarray]) -> None:
    model, inputs, outputs, _ = mlp_case
    assert cli("validate", model, "--inputs", inputs).code == 2
    assert (
        cli("validate", model, "--inputs", inputs, "--expected", outputs, "--rtol", "-1").code == 2
    )
    assert (
        cli("validate", model, "--inputs", inputs, "--expected", outputs, "--atol", "x").code == 2
    )


def test_damaged_npz_files_are_reference_data_errors(tmp_path: Path) -> None:
    # A copy cut short, and one whose compressed member is corrupt: zipfile and zlib errors
    # must not reach the user raw.
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, x=np.arange(20000, dtype=np.float32))
    data = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceDataError, match=r"cut\.npz: cannot read it as \.npz"):
        load_arrays(cut)
    flipped = bytearray(data)
    start = data.index(b"x.npy") + 200  # inside the deflate stream of the member
    flipped[start : start + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ReferenceDataError, match=r"corrupt\.npz: cannot read it as \.npz"):
        load_arrays(corrupt)
