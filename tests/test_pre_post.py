"""Preprocessing (Pillow + NumPy) and postprocessing specs, against hand-computed references."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_sdk import (
    ModelMetadataError,
    PostprocessError,
    PostprocessSpec,
    PreprocessError,
    PreprocessSpec,
)
from edge_sdk.postprocess import postprocess, softmax
from edge_sdk.preprocess import preprocess


def _rgb(width: int = 6, height: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_nchw_normalisation_matches_reference() -> None:
    pixels = _rgb()
    spec = PreprocessSpec(
        size=(6, 4), color="RGB", scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)
    )
    tensor = preprocess(spec, pixels)
    expected = ((pixels / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.3, 0.4]).transpose(2, 0, 1)[None]
    assert tensor.shape == (1, 3, 4, 6) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, expected, rtol=1e-5, atol=1e-6)


def test_bgr_nhwc_uint8() -> None:
    pixels = _rgb()
    spec = PreprocessSpec(size=(6, 4), color="BGR", layout="NHWC", dtype="uint8")
    tensor = preprocess(spec, pixels)
    assert tensor.shape == (1, 4, 6, 3) and tensor.dtype == np.uint8
    np.testing.assert_array_equal(tensor[0], pixels[:, :, ::-1])


def test_decodes_paths_bytes_and_pil_alike(tmp_path: Path) -> None:
    pixels = _rgb()
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    spec = PreprocessSpec(size=(3, 2), resize="area")
    from_path = preprocess(spec, path)
    np.testing.assert_array_equal(from_path, preprocess(spec, str(path)))
    np.testing.assert_array_equal(from_path, preprocess(spec, path.read_bytes()))
    np.testing.assert_array_equal(from_path, preprocess(spec, Image.open(path)))
    # area (box) downscale by 2 is the mean of each 2x2 block
    blocks = pixels.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(from_path[0].transpose(1, 2, 0), blocks, atol=1 / 255)


def test_letterbox_and_center_crop_shapes() -> None:
    pixels = _rgb(8, 4)
    boxed = preprocess(
        PreprocessSpec(size=(8, 8), crop="letterbox", pad=0, dtype="uint8", layout="NHWC"), pixels
    )
    assert boxed.shape == (1, 8, 8, 3)
    assert (boxed[0, :2] == 0).all() and (boxed[0, -2:] == 0).all()
    np.testing.assert_array_equal(boxed[0, 2:6], pixels)
    cropped = preprocess(
        PreprocessSpec(size=(4, 4), crop="center", dtype="uint8", layout="NHWC"), pixels
    )
    np.testing.assert_array_equal(cropped[0], pixels[:, 2:6])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("/no/such/image.png", "does not exist"),
        (b"definitely not an image", "not an image"),
        (np.zeros((4, 4), np.float32), "uint8"),
        (12345, "cannot preprocess a int"),
    ],
)
def test_bad_images_raise_preprocess_error(item: object, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        preprocess(PreprocessSpec(size=(4, 4)), item)


def test_truncated_png_raises_preprocess_error() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="PNG")
    with pytest.raises(PreprocessError):
        preprocess(PreprocessSpec(size=(4, 4)), buffer.getvalue()[:200])


def test_spec_from_metadata_validates() -> None:
    spec = PreprocessSpec.from_metadata({"size": [8, 8], "color": "L", "mean": [0.5]})
    assert spec.size == (8, 8) and spec.mean == (0.5,)
    assert PreprocessSpec.from_metadata(spec.to_metadata()) == spec
    for bad, message in [
        ({"color": "L"}, "size"),
        ({"size": [8]}, "width, height"),
        ({"size": [8, 8], "color": "CMYK"}, "color"),
        ({"size": [8, 8], "mean": [0, 0]}, "mean"),
        ({"size": [8, 8], "std": [0.0]}, "std"),
        ({"size": [8, 8], "version": 2}, "version"),
    ]:
        with pytest.raises(ModelMetadataError, match=message):
            PreprocessSpec.from_metadata(bad)


def test_classification_postprocess() -> None:
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    result = postprocess(PostprocessSpec(top_k=2), {"logits": logits}, ["a", "b", "c"])
    probabilities = softmax(logits[0].astype(np.float64))
    assert (result.index, result.label) == (1, "b")
    assert result.confidence == pytest.approx(probabilities[1])
    assert [c.label for c in result.top] == ["b", "c"]
    sig = postprocess(PostprocessSpec(activation="sigmoid", top_k=1), {"o": logits}, None)
    assert sig.label == "1" and sig.confidence == pytest.approx(1 / (1 + np.exp(-3.0)))


def test_postprocess_errors() -> None:
    spec = PostprocessSpec()
    with pytest.raises(PostprocessError, match="labels"):
        postprocess(spec, {"o": np.zeros((1, 3))}, ["a", "b"])
    with pytest.raises(PostprocessError, match="shape"):
        postprocess(spec, {"o": np.zeros((2, 3))}, None)
    with pytest.raises(PostprocessError, match="reads output 'x'"):
        postprocess(PostprocessSpec(output="x"), {"o": np.zeros((1, 3))}, None)
    with pytest.raises(ModelMetadataError, match="top_k"):
        PostprocessSpec.from_metadata({"top_k": 0})
    with pytest.raises(ModelMetadataError, match="task"):
        PostprocessSpec.from_metadata({"task": "detection"})
