"""Every way a model file can be bad gives its own ModelLoadError subclass naming the path."""

from __future__ import annotations

import inspect
from pathlib import Path

import _models
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from edge_sdk import (
    CorruptModelError,
    EdgeModel,
    EdgeSDKError,
    EmptyModelError,
    ModelIsDirectoryError,
    ModelLoadError,
    ModelNotFoundError,
    TruncatedModelError,
    UnsupportedModelError,
    read_metadata,
    runtime,
)


def _load_error(source: object) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        EdgeModel.load(source)  # type: ignore[arg-type]
    return info.value


def test_missing_path_is_model_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    error = _load_error(path)
    assert type(error) is ModelNotFoundError
    assert error.path == str(path)
    assert "no such file" in str(error) and str(path) in str(error)


def test_directory_is_model_is_directory(tmp_path: Path) -> None:
    error = _load_error(tmp_path)
    assert type(error) is ModelIsDirectoryError
    assert "directory" in str(error) and str(tmp_path) in str(error)


def test_empty_file_is_empty_model(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    error = _load_error(path)
    assert type(error) is EmptyModelError
    assert "empty" in str(error) and str(path) in str(error)


def test_empty_bytes_is_empty_model() -> None:
    error = _load_error(b"")
    assert type(error) is EmptyModelError
    assert error.path is None and "bytes" in str(error)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_truncated_model(
    tmp_path: Path, digits_path: Path, fraction: float
) -> None:
    data = digits_path.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    error = _load_error(path)
    assert type(error) is TruncatedModelError
    assert "cut short" in str(error) or "ends inside" in str(error)
    assert str(path) in str(error)


def test_truncated_bytes_is_truncated_model(digits_path: Path) -> None:
    data = digits_path.read_bytes()
    assert type(_load_error(data[: len(data) // 3])) is TruncatedModelError


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is not a model\n",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        b'{"model": "json"}',
        bytes(range(255, -1, -1)) * 16,
    ],
    ids=["text", "png", "json", "binary"],
)
def test_non_onnx_file_is_corrupt_model(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    error = _load_error(path)
    assert type(error) is CorruptModelError
    assert "not an ONNX model" in str(error) or "does not start like" in str(error)


def test_flipped_bytes_inside_graph_are_corrupt_or_invalid(
    tmp_path: Path, digits_path: Path
) -> None:
    # Damage inside the graph payload passes the top-level scan: onnxruntime's parse error must
    # still come out as a ModelLoadError with the path, not a protobuf traceback.
    data = bytearray(digits_path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    path = tmp_path / "damaged.onnx"
    path.write_bytes(bytes(data))
    try:
        EdgeModel.load(path).close()
    except ModelLoadError as error:
        assert error.path == str(path)
        assert not isinstance(error.__cause__, ModelLoadError)
    # Some flips land in float weights and still load: that is what a checksum is for.


def test_unsupported_operator_is_unsupported_model(tmp_path: Path) -> None:
    path = tmp_path / "unsupported.onnx"
    _models.unsupported_op(path)
    error = _load_error(path)
    assert type(error) is UnsupportedModelError
    assert "NoSuchOperatorAnywhere" in str(error)
    assert error.__cause__ is not None  # the onnxruntime exception survives for diagnostics


def test_read_metadata_reports_the_same_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        read_metadata(tmp_path / "missing.onnx")
    with pytest.raises(ModelIsDirectoryError):
        read_metadata(tmp_path)


def test_every_onnxruntime_exception_class_is_mapped() -> None:
    classes = {
        name
        for name, value in inspect.getmembers(ort_state, inspect.isclass)
        if issubclass(value, Exception)
    }
    assert classes, "onnxruntime's binding module exposes no exception classes?"
    assert classes <= set(runtime.LOAD_ERRORS), sorted(classes - set(runtime.LOAD_ERRORS))
    assert classes <= set(runtime.RUN_ERRORS), sorted(classes - set(runtime.RUN_ERRORS))
    for table in (runtime.LOAD_ERRORS, runtime.RUN_ERRORS):
        assert all(issubclass(error, EdgeSDKError) for error in table.values())


# The tables also cover classes of other onnxruntime releases (DeviceReset is new in 1.2x).
_DEFINED_HERE = sorted(name for name in runtime.LOAD_ERRORS if hasattr(ort_state, name))


@pytest.mark.parametrize("name", _DEFINED_HERE)
def test_load_translation_keeps_path_and_cause(name: str) -> None:
    translated = runtime._translate_load_error("/models/m.onnx", getattr(ort_state, name)("boom"))
    assert isinstance(translated, runtime.LOAD_ERRORS[name])
    assert "boom" in str(translated)


@pytest.mark.parametrize("name", _DEFINED_HERE)
def test_run_translation(name: str) -> None:
    translated = runtime._translate_run_error(getattr(ort_state, name)("boom"))
    assert isinstance(translated, runtime.RUN_ERRORS[name])
    assert "boom" in str(translated)
