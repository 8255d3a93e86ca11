"""Reading and rewriting metadata_props by streaming, checked against onnx and onnxruntime."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import _models
import numpy as np
import onnx
import pytest

from edge_sdk import EdgeModel, ModelMetadata, ModelMetadataError, read_metadata, write_metadata
from edge_sdk.metadata import LABELS_KEY, POSTPROCESS_KEY, PREPROCESS_KEY, VERSION_KEY


def test_bundled_model_declares_everything_it_needs(digits_path: Path) -> None:
    meta = read_metadata(digits_path)
    assert meta.labels == tuple(str(i) for i in range(10))
    assert meta.preprocess is not None and meta.preprocess["size"] == [8, 8]
    assert meta.postprocess is not None and meta.postprocess["task"] == "classification"
    assert meta.version == "1.0.0"
    with EdgeModel.load(digits_path) as model:
        assert model.metadata == meta


def test_write_then_read_back_with_onnx_and_onnxruntime(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    _models.tiny_mlp(src)
    dst = tmp_path / "dst.onnx"
    write_metadata(
        src,
        dst,
        {LABELS_KEY: ["a", "b"], VERSION_KEY: "2.1", "custom": "x" * 1000, "ünï": "çødé"},
    )
    proto = onnx.load(str(dst))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props[LABELS_KEY] == '["a","b"]' and props["ünï"] == "çødé"
    with EdgeModel.load(dst) as model:
        assert model.metadata.labels == ("a", "b")
        assert model.metadata.version == "2.1"
        assert model.metadata.props["custom"] == "x" * 1000
        # The graph is untouched: same results as the source.
        x = np.ones((1, 64), np.float32)
        with EdgeModel.load(src) as original:
            np.testing.assert_array_equal(model.run(x)["y"], original.run(x)["y"])


def test_rewrite_in_place_replaces_and_removes_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _models.tiny_mlp(path)
    path.chmod(0o644)
    write_metadata(path, props={VERSION_KEY: "1", "keep": "yes", "drop": "soon"})
    write_metadata(path, props={VERSION_KEY: "2"}, remove=["drop"])
    proto = onnx.load(str(path))
    keys = [p.key for p in proto.metadata_props]
    assert sorted(keys) == ["edge_sdk.version", "keep"]  # replaced, not duplicated
    assert read_metadata(path).version == "2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_failed_write_leaves_destination_untouched(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    _models.tiny_mlp(good)
    before = good.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(before[: len(before) // 2])
    with pytest.raises(Exception, match="cut short"):
        write_metadata(bad, good, {VERSION_KEY: "9"})
    assert good.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        (LABELS_KEY, "[1, 2]", "list of strings"),
        (LABELS_KEY, "not json", "not valid JSON"),
        (PREPROCESS_KEY, "[]", "JSON object"),
        (POSTPROCESS_KEY, "{", "not valid JSON"),
    ],
)
def test_malformed_metadata_names_the_key(key: str, raw: str, message: str) -> None:
    with pytest.raises(ModelMetadataError) as info:
        ModelMetadata.from_props({key: raw})
    assert info.value.key == key and message in str(info.value)


def test_model_with_bad_spec_fails_to_load_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _models.tiny_mlp(path)
    write_metadata(path, props={PREPROCESS_KEY: json.dumps({"size": [8, 8], "colour": "L"})})
    with pytest.raises(ModelMetadataError, match=r"edge_sdk.preprocess.*colour"):
        EdgeModel.load(path)


def test_non_string_key_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _models.tiny_mlp(path)
    with pytest.raises(ValueError):
        write_metadata(path, props={"": "x"})
