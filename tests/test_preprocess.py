"""Preprocessing: decoding (EXIF, modes), arrays and camera frames through the fused kernels,
batches, and every bad input as a PreprocessError naming the problem."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_sdk import ModelMetadataError, PreprocessError, PreprocessSpec
from edge_sdk.kernels import image as image_kernels
from edge_sdk.preprocess import Preprocessor, RawFrame, preprocess

SPEC = PreprocessSpec(size=(8, 6), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))


def _rgb(width: int = 12, height: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _expected(pixels: np.ndarray, spec: PreprocessSpec = SPEC, order: str = "RGB") -> np.ndarray:
    tensor, _ = image_kernels.image_to_tensor_reference(  # the kernels' own NumPy reference
        pixels,
        spec.size,
        resize=spec.resize,
        crop=spec.crop,
        pad=spec.pad,
        source_order=order,
        channel_order="BGR" if spec.color == "BGR" else "RGB",
        scale=spec.scale,
        mean=spec.mean,
        std=spec.std,
        layout=spec.layout,
        dtype=spec.dtype,
        quant_scale=spec.quant_scale,
        zero_point=spec.zero_point,
    )
    return tensor


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_array_path_and_bytes_agree_with_the_reference(tmp_path: Path) -> None:
    pixels = _rgb()
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    expected = _expected(pixels)
    for item in (pixels, path, str(path), path.read_bytes(), Image.open(path)):
        np.testing.assert_allclose(preprocess(SPEC, item), expected, atol=1e-3)


def test_exif_orientation_is_applied() -> None:
    pixels = _rgb(12, 9)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display" (EXIF 2.32, Orientation tag)
    data = _encode(image, "PNG", exif=exif)
    spec = PreprocessSpec(size=(9, 12), resize="nearest", layout="NHWC", dtype="uint8", scale=1.0)
    tensor = preprocess(spec, data)
    np.testing.assert_array_equal(tensor[0], np.rot90(pixels, k=-1))


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16", "1"])
def test_image_modes_are_converted(mode: str) -> None:
    rgb = Image.fromarray(_rgb(10, 10))
    if mode == "I;16":
        wide = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 650).astype(np.uint16)
        image = Image.fromarray(wide)
        assert image.mode == "I;16"
        expected_pixels = (wide >> 8).astype(np.uint8)
    else:
        image = rgb.convert(mode)
        expected_pixels = np.asarray(image.convert("L" if mode in ("L", "LA", "1") else "RGB"))
    spec = PreprocessSpec(size=(10, 10), color="L" if expected_pixels.ndim == 2 else "RGB")
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = Image.open(io.BytesIO(_encode(image, fmt)))
    tensor = preprocess(spec, decoded)
    if fmt == "JPEG":
        expected_pixels = np.asarray(decoded.convert("RGB"))
    np.testing.assert_allclose(tensor, _expected(expected_pixels, spec), atol=1e-3)


def test_grey_model_takes_colour_input_and_colour_model_grey_input() -> None:
    pixels = _rgb()
    grey_spec = PreprocessSpec(size=(12, 9), color="L", resize="nearest")
    assert preprocess(grey_spec, pixels).shape == (1, 1, 9, 12)
    grey = pixels[:, :, 0].copy()
    colour = preprocess(SPEC, grey)
    np.testing.assert_allclose(colour, _expected(np.repeat(grey[:, :, None], 3, axis=2)), atol=1e-3)


def test_raw_frames_rgb_bgr_grey() -> None:
    pixels = _rgb()
    spec = PreprocessSpec(size=(8, 6))
    from_rgb = preprocess(spec, RawFrame(pixels.tobytes(), 12, 9, "RGB"))
    from_bgr = preprocess(spec, RawFrame(pixels[:, :, ::-1].copy(), 12, 9, "BGR"))
    np.testing.assert_allclose(from_rgb, _expected(pixels, spec), atol=1e-3)
    np.testing.assert_allclose(from_bgr, from_rgb, atol=1e-5)
    with pytest.raises(PreprocessError, match="needs 324"):
        preprocess(spec, RawFrame(pixels.tobytes()[:-1], 12, 9, "RGB"))


def test_nv12_frame_goes_through_the_fused_kernel() -> None:
    from edge_sdk.kernels import color

    rng = np.random.default_rng(3)
    frame = rng.integers(16, 236, size=(16 * 3 // 2) * 20, dtype=np.uint8)
    spec = PreprocessSpec(size=(10, 8))
    fused = preprocess(spec, RawFrame(frame, 20, 16, "NV12"))
    two_step = _expected(color.yuv_to_rgb(frame, 20, 16, "NV12"), spec)
    np.testing.assert_allclose(fused, two_step, atol=2.5 / 255)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (RawFrame(np.zeros(100, np.uint8), 20, 16, "NV12"), "480"),
        (RawFrame(np.zeros(15 * 16 * 3 // 2, np.uint8), 15, 16, "NV12"), "even|odd"),
        (RawFrame(np.zeros(0, np.uint8), 0, 0, "RGB"), "zero size"),
    ],
)
def test_bad_camera_frames(frame: RawFrame, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        preprocess(SPEC, frame)


def test_batch_matches_items_and_writes_in_place() -> None:
    items = [_rgb(seed=i) for i in range(3)]
    tensor, geometries = Preprocessor(SPEC).batch(items)
    assert tensor.shape == (3, 3, 6, 8) and len(geometries) == 3
    for index, item in enumerate(items):
        np.testing.assert_allclose(tensor[index : index + 1], _expected(item), atol=1e-3)
    with pytest.raises(PreprocessError, match="empty batch"):
        Preprocessor(SPEC).batch([])


def test_letterbox_geometry_is_returned() -> None:
    spec = PreprocessSpec(size=(16, 16), crop="letterbox")
    tensor, geometry = Preprocessor(spec)(_rgb(32, 16))
    assert tensor.shape == (1, 3, 16, 16)
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (0.5, 0.5, 0, 4)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not an image"),
        ("/no/such/image.png", "does not exist"),
        (np.zeros((4, 4), np.float32), "uint8"),
        (np.zeros((0, 4, 3), np.uint8), "zero size"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (12345, "cannot preprocess a int"),
    ],
)
def test_bad_inputs_name_the_problem(item: object, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        preprocess(SPEC, item)


def test_truncated_image_bytes() -> None:
    data = _encode(Image.fromarray(_rgb(64, 64)))
    with pytest.raises(PreprocessError, match=r"cannot decode|not an image"):
        preprocess(SPEC, data[: len(data) // 2])


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(PreprocessError, match="directory"):
        preprocess(SPEC, tmp_path)


def test_spec_round_trip_and_validation() -> None:
    spec = PreprocessSpec(size=(8, 8), color="L", mean=(0.5,), dtype="int8", quant_scale=0.02)
    assert PreprocessSpec.from_metadata(spec.to_metadata()) == spec
    for bad, field in [
        ({"color": "L"}, "size"),
        ({"size": [8]}, "size"),
        ({"size": [8, 8], "color": "CMYK"}, "color"),
        ({"size": [8, 8], "resize": "cubic"}, "resize"),
        ({"size": [8, 8], "crop": "zoom"}, "crop"),
        ({"size": [8, 8], "mean": [0, 0]}, "mean"),
        ({"size": [8, 8], "std": [0.0]}, "std"),
        ({"size": [8, 8], "pad": 300}, "pad"),
        ({"size": [8, 8], "dtype": "int8", "zero_point": 200}, "zero_point"),
        ({"size": [8, 8], "quant_scale": 0}, "quant_scale"),
        ({"size": [8, 8], "version": 2}, "version"),
        ({"size": [8, 8], "colour": "L"}, "colour"),
    ]:
        with pytest.raises(ModelMetadataError, match=field):
            PreprocessSpec.from_metadata(bad)
