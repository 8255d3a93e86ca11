"""edge_sdk.kernels.color: YUV frames to RGB (against OpenCV and the NumPy reference), NV12
straight to a tensor (against the two-step path), every input form, and every bad input."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.errors import PreprocessError
from edge_sdk.kernels import color
from edge_sdk.kernels.color import (
    i420_to_rgb,
    nv12_to_rgb,
    nv12_to_tensor,
    nv12_to_tensor_reference,
    yuv_to_rgb,
    yuv_to_rgb_reference,
    yuyv_to_rgb,
)
from edge_sdk.kernels.image import image_to_tensor, plan_geometry

# Without the JIT the kernels run as Python loops: fewer and smaller examples.
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
EXAMPLES = 30 if NO_JIT else 150
HYPOTHESIS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

CV2_CODES = {
    ("NV12", "RGB"): cv2.COLOR_YUV2RGB_NV12,
    ("NV12", "BGR"): cv2.COLOR_YUV2BGR_NV12,
    ("I420", "RGB"): cv2.COLOR_YUV2RGB_I420,
    ("I420", "BGR"): cv2.COLOR_YUV2BGR_I420,
    ("YUYV", "RGB"): cv2.COLOR_YUV2RGB_YUYV,
    ("YUYV", "BGR"): cv2.COLOR_YUV2BGR_YUYV,
}
FORMATS = ("NV12", "I420", "YUYV")
ORDERS = ("RGB", "BGR")


def frame(fmt: str, width: int, height: int, seed: int = 0, *, camera: bool = False) -> np.ndarray:
    """A frame in OpenCV's layout: random bytes (many colours out of gamut, exercising the
    clamping), or with ``camera`` a smooth in-gamut picture with noise."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 2) if fmt == "YUYV" else (height * 3 // 2, width)
    if not camera:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    out = rng.integers(110, 146, shape, dtype=np.uint8)  # chroma near grey
    luma = np.linspace(20, 230, width)[None, :] + rng.integers(-15, 16, (height, width))
    if fmt == "YUYV":
        out[:, :, 0] = np.clip(luma, 0, 255)
    else:
        out[:height] = np.clip(luma, 0, 255)
    return out


def opencv(buffer: np.ndarray, fmt: str, order: str = "RGB") -> np.ndarray:
    return cv2.cvtColor(buffer, CV2_CODES[(fmt, order)])


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def padded_nv12(buffer: np.ndarray, width: int, stride: int, fill: int = 77) -> np.ndarray:
    """The (H*3/2) x W frame with every row padded to ``stride`` bytes of ``fill``."""
    rows = np.full((buffer.shape[0], stride), fill, np.uint8)
    rows[:, :width] = buffer
    return rows


# --------------------------------------------------------------------------------------------
# YUV -> RGB


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("order", ORDERS)
def test_reference_is_opencv_exactly(fmt: str, order: str) -> None:
    # The reference is OpenCV's fixed-point arithmetic: equal, not just close.
    for width, height, seed in ((2, 2, 0), (64, 48, 1), (640, 360, 2)):
        buffer = frame(fmt, width, height, seed)
        assert np.array_equal(
            yuv_to_rgb_reference(buffer, width, height, fmt, channel_order=order),  # type: ignore[arg-type]
            opencv(buffer, fmt, order),
        )


def every_triple_nv12(part: int) -> np.ndarray:
    """Part ``part`` (0..15) of 16 NV12 frames, 4096 x 256, that hold every (Y, U, V) triple
    once: chroma pair p takes (U, V) = (p & 255, (p >> 8) & 255), and its 2x2 block the four
    Y values 4k .. 4k + 3 with k = p // 65536 (4 values of k per part)."""
    width, height = 4096, 256
    j = np.arange(height // 2)[:, None] + part * (height // 2)
    i = np.arange(width // 2)[None, :]
    pair = j * (width // 2) + i
    chroma = np.empty((height // 2, width), np.uint8)
    chroma[:, 0::2] = pair & 255
    chroma[:, 1::2] = (pair >> 8) & 255
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    k = (pair // 65536).repeat(2, axis=0).repeat(2, axis=1)
    luma = 4 * k + 2 * (rows % 2) + cols % 2
    return np.concatenate([luma.astype(np.uint8), chroma])


def test_reference_and_kernel_over_every_yuv_triple() -> None:
    # The reference is OpenCV exactly for all 2**24 inputs; the kernel's float32 arithmetic
    # is one level off for the few values that sit on a rounding boundary.
    differ = total = 0
    for part in range(16):
        buffer = every_triple_nv12(part)
        expected = opencv(buffer, "NV12")
        assert np.array_equal(yuv_to_rgb_reference(buffer, 4096, 256, "NV12"), expected)
        if not NO_JIT:  # 16 M pixels are too many for the plain-Python fallback
            ours = nv12_to_rgb(buffer, 4096, 256)
            assert max_diff(ours, expected) <= 1
            differ += np.count_nonzero(ours != expected)
            total += expected.size
    assert differ <= 2e-5 * max(total, 1), (differ, total)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("order", ORDERS)
def test_kernel_matches_opencv_and_reference(fmt: str, order: str) -> None:
    for width, height, seed, camera in ((2, 2, 3, False), (48, 32, 4, False), (64, 48, 5, True)):
        buffer = frame(fmt, width, height, seed, camera=camera)
        ours = yuv_to_rgb(buffer, width, height, fmt, channel_order=order)  # type: ignore[arg-type]
        assert ours.shape == (height, width, 3) and ours.dtype == np.uint8
        assert max_diff(ours, opencv(buffer, fmt, order)) <= 1
        reference = yuv_to_rgb_reference(buffer, width, height, fmt, channel_order=order)  # type: ignore[arg-type]
        assert max_diff(ours, reference) <= 1


@HYPOTHESIS
@given(
    fmt=st.sampled_from(FORMATS),
    order=st.sampled_from(ORDERS),
    half_w=st.integers(1, 32),
    half_h=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_matches_opencv_any_even_size(
    fmt: str, order: str, half_w: int, half_h: int, seed: int
) -> None:
    width, height = 2 * half_w, 2 * half_h
    buffer = frame(fmt, width, height, seed)
    ours = yuv_to_rgb(buffer, width, height, fmt, channel_order=order)  # type: ignore[arg-type]
    assert max_diff(ours, opencv(buffer, fmt, order)) <= 1
    reference = yuv_to_rgb_reference(buffer, width, height, fmt, channel_order=order)  # type: ignore[arg-type]
    assert max_diff(ours, reference) <= 1


def test_named_wrappers_and_extreme_shapes() -> None:
    for width, height in ((64, 2), (2, 48), (2, 2)):
        nv12 = frame("NV12", width, height, 6)
        assert np.array_equal(
            nv12_to_rgb(nv12, width, height), yuv_to_rgb(nv12, width, height, "NV12")
        )
        assert np.array_equal(
            i420_to_rgb(nv12, width, height), yuv_to_rgb(nv12, width, height, "I420")
        )
        yuyv = frame("YUYV", width, height, 7)
        assert np.array_equal(
            yuyv_to_rgb(yuyv, width, height), yuv_to_rgb(yuyv, width, height, "YUYV")
        )
    # YUYV has no vertical subsampling: any height, even a single row.
    yuyv = frame("YUYV", 6, 1, 8)
    assert max_diff(yuyv_to_rgb(yuyv, 6, 1), opencv(yuyv, "YUYV")) <= 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_buffer_form_gives_the_same_image(fmt: str) -> None:
    width, height = 10, 6
    buffer = frame(fmt, width, height, 9)
    expected = yuv_to_rgb(buffer, width, height, fmt)  # type: ignore[arg-type]
    flat = buffer.reshape(-1)
    spaced = np.empty(flat.size * 2, np.uint8)
    spaced[::2] = flat  # a non-contiguous 1-D view
    for form in (
        flat,
        flat.tobytes(),
        bytearray(flat.tobytes()),
        memoryview(flat.tobytes()),
        memoryview(buffer),
        spaced[::2],
    ):
        assert np.array_equal(yuv_to_rgb(form, width, height, fmt), expected)  # type: ignore[arg-type]


def test_out_is_filled_and_returned() -> None:
    buffer = frame("NV12", 8, 4, 10)
    out = np.zeros((4, 8, 3), np.uint8)
    result = nv12_to_rgb(buffer, 8, 4, channel_order="BGR", out=out)
    assert result is out
    assert max_diff(out, opencv(buffer, "NV12", "BGR")) <= 1


@pytest.mark.parametrize("stride", [18, 19, 32])
def test_strided_nv12_flat_buffer(stride: int) -> None:
    width, height = 16, 6
    buffer = frame("NV12", width, height, 11)
    expected = opencv(buffer, "NV12")
    padded = padded_nv12(buffer, width, stride)
    ours = nv12_to_rgb(padded.reshape(-1), width, height, stride=stride)
    assert max_diff(ours, expected) <= 1
    assert np.array_equal(
        yuv_to_rgb_reference(padded.reshape(-1), width, height, "NV12", stride=stride),
        expected,
    )
    # The last row's padding may be missing (a buffer cut right after the last pixel).
    short = padded.reshape(-1)[: padded.size - (stride - width)]
    assert np.array_equal(nv12_to_rgb(short, width, height, stride=stride), ours)


def test_strided_2d_views_are_read_in_place() -> None:
    width, height = 12, 4
    nv12 = frame("NV12", width, height, 12)
    wide = padded_nv12(nv12, width, 20)
    view = wide[:, :width]  # rows 20 bytes apart
    assert not view.flags.c_contiguous
    assert max_diff(nv12_to_rgb(view, width, height), opencv(nv12, "NV12")) <= 1
    yuyv = frame("YUYV", width, height, 13)
    wide_yuyv = np.zeros((height, width + 5, 2), np.uint8)
    wide_yuyv[:, :width] = yuyv
    assert max_diff(yuyv_to_rgb(wide_yuyv[:, :width], width, height), opencv(yuyv, "YUYV")) <= 1
    # I420's chroma rows do not follow a 2-D array's row stride: it is copied, same result.
    i420 = frame("I420", width, height, 14)
    wide_i420 = padded_nv12(i420, width, 20)
    assert max_diff(i420_to_rgb(wide_i420[:, :width], width, height), opencv(i420, "I420")) <= 1
    # A flipped view (negative strides) is copied too.
    flipped = np.ascontiguousarray(nv12[::-1])[::-1]
    assert max_diff(nv12_to_rgb(flipped, width, height), opencv(nv12, "NV12")) <= 1


def test_strided_i420_and_yuyv_flat_buffers() -> None:
    width, height = 8, 4
    i420 = frame("I420", width, height, 15)
    stride = 12
    y = np.full((height, stride), 9, np.uint8)
    y[:, :width] = i420[:height]
    planes = i420[height:].reshape(-1)
    quarter = width // 2 * height // 2
    u = np.full((height // 2, stride // 2), 9, np.uint8)
    v = np.full((height // 2, stride // 2), 9, np.uint8)
    u[:, : width // 2] = planes[:quarter].reshape(height // 2, width // 2)
    v[:, : width // 2] = planes[quarter:].reshape(height // 2, width // 2)
    flat = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
    assert max_diff(i420_to_rgb(flat, width, height, stride=stride), opencv(i420, "I420")) <= 1
    yuyv = frame("YUYV", width, height, 16)
    rows = np.zeros((height, 2 * width + 4), np.uint8)
    rows[:, : 2 * width] = yuyv.reshape(height, 2 * width)
    ours = yuyv_to_rgb(rows.reshape(-1), width, height, stride=2 * width + 4)
    assert max_diff(ours, opencv(yuyv, "YUYV")) <= 1


# --------------------------------------------------------------------------------------------
# NV12 -> tensor


def two_step(buffer: np.ndarray, width: int, height: int, size: tuple[int, int], **options):  # type: ignore[no-untyped-def]
    """Our own kernels, one after the other: what the fused kernel must equal."""
    order = options.pop("channel_order", "RGB")
    stride = options.pop("stride", None)
    rgb = nv12_to_rgb(buffer, width, height, stride=stride)
    return image_to_tensor(rgb, size, source_order="RGB", channel_order=order, **options)


TENSOR_OPTIONS = [
    {"resize": "bilinear"},
    {"resize": "nearest"},
    {"resize": "bilinear_align_corners"},
    {"resize": "bilinear", "crop": "letterbox", "pad": 0.0},
    {"resize": "nearest", "crop": "letterbox"},
    {"resize": "bilinear", "crop": "center"},
    {"resize": "bilinear", "layout": "NHWC", "channel_order": "BGR"},
    {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    {"dtype": "float16", "crop": "letterbox"},
    {"dtype": "uint8", "scale": 1.0, "layout": "NHWC"},
    {"dtype": "int8", "scale": 1.0, "quant_scale": 1.0, "zero_point": -128, "crop": "letterbox"},
]


@pytest.mark.parametrize("options", TENSOR_OPTIONS, ids=lambda o: ",".join(map(str, o.values())))
def test_fused_tensor_equals_the_two_step_path(options: dict[str, object]) -> None:
    width, height, size = 64, 36, (24, 20)
    buffer = frame("NV12", width, height, 17)
    fused, geometry = nv12_to_tensor(buffer, width, height, size, **options)  # type: ignore[arg-type]
    # The two-step path in float32 (one image kernel specialisation: quick to compile), then
    # the output dtype's conversion in NumPy.
    dtype = str(options.get("dtype", "float32"))
    float_options = {k: v for k, v in options.items() if k not in ("dtype", "zero_point")}
    float_options.pop("quant_scale", None)
    stepwise, step_geometry = two_step(buffer, width, height, size, **float_options)
    assert geometry == step_geometry
    assert fused.dtype == np.dtype(dtype) and fused.shape == stepwise.shape
    if dtype in ("uint8", "int8"):
        lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
        quant_scale = float(options.get("quant_scale", 1.0))  # type: ignore[arg-type]
        zero_point = int(options.get("zero_point", 0))  # type: ignore[call-overload]
        expected = np.clip(np.rint(stepwise / quant_scale) + zero_point, lo, hi)
        # The same arithmetic folded differently: a value at .5 may round the other way.
        assert np.abs(fused.astype(np.float64) - expected).max() <= 1
    else:
        # Same levels, same interpolation formula: equal up to float32 rounding.
        expected = stepwise.astype(dtype)
        assert np.abs(fused.astype(np.float64) - expected.astype(np.float64)).max() <= 1e-3
        if dtype == "float32":
            assert np.abs(fused - stepwise).max() <= 1e-5
    reference, _ = nv12_to_tensor_reference(buffer, width, height, size, **options)  # type: ignore[arg-type]
    # Against the float64 reference: a level of 1/255 from the conversion, plus rounding.
    if fused.dtype.kind in "iu":
        assert np.abs(fused.astype(np.int64) - reference.astype(np.int64)).max() <= 1
    else:
        scale = 1.0 / 255 / min(options.get("std", (1.0,)))  # type: ignore[call-overload]
        assert np.abs(fused.astype(np.float64) - reference).max() <= 2 * scale + 1e-3


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_fused_quantisation_rounds_before_adding_the_zero_point(dtype: str) -> None:
    # A grey frame whose RGB levels are odd, halved by quant_scale: every value is a tie (an
    # exact .5). ONNX QuantizeLinear rounds half to even first, then adds the (odd) zero
    # point: 2.5 -> 2 -> 3, where adding it first gives 3.5 -> 4.
    width, height, size = 8, 4, (4, 2)
    buffer = np.full(width * height * 3 // 2, 128, np.uint8)
    buffer[: width * height] = 120
    rgb = nv12_to_rgb(buffer, width, height)
    assert np.all(rgb % 2 == 1), "the test needs odd levels"
    options = {"scale": 1.0, "quant_scale": 2.0, "zero_point": 1, "dtype": dtype}
    fused, _ = nv12_to_tensor(buffer, width, height, size, **options)  # type: ignore[arg-type]
    stepwise, _ = image_to_tensor(rgb, size, **options)  # type: ignore[arg-type]
    level = int(rgb[0, 0, 0])
    expected = np.rint(level / 2.0) + 1
    assert expected != np.rint(level / 2.0 + 1)  # the two orders differ here
    assert np.array_equal(fused, stepwise)
    assert np.all(fused == expected)
    # Letterbox pad goes through the same rounding: (115 / 2 = 57.5) -> 58 -> 59.
    options_pad = {**options, "crop": "letterbox", "pad": 115.0}
    fused, _ = nv12_to_tensor(buffer, width, height, (4, 4), **options_pad)  # type: ignore[arg-type]
    stepwise, _ = image_to_tensor(rgb, (4, 4), **options_pad)  # type: ignore[arg-type]
    assert np.array_equal(fused, stepwise)
    assert fused[0, 0, 0, 0] == 59


@HYPOTHESIS
@given(
    half_w=st.integers(1, 24),
    half_h=st.integers(1, 16),
    t_w=st.integers(1, 20),
    t_h=st.integers(1, 20),
    resize=st.sampled_from(["bilinear", "nearest"]),
    crop=st.sampled_from(["none", "center", "letterbox"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_tensor_any_geometry(
    *, half_w: int, half_h: int, t_w: int, t_h: int, resize: str, crop: str, seed: int
) -> None:
    width, height = 2 * half_w, 2 * half_h
    buffer = frame("NV12", width, height, seed)
    options = {"resize": resize, "crop": crop}
    fused, geometry = nv12_to_tensor(buffer, width, height, (t_w, t_h), **options)  # type: ignore[arg-type]
    stepwise, _ = two_step(buffer, width, height, (t_w, t_h), **dict(options))
    assert geometry == plan_geometry(width, height, (t_w, t_h), crop)  # type: ignore[arg-type]
    assert np.abs(fused - stepwise).max() <= 1e-5
    reference, _ = nv12_to_tensor_reference(buffer, width, height, (t_w, t_h), **options)  # type: ignore[arg-type]
    assert np.abs(fused - reference).max() <= 2 / 255


def test_letterbox_pad_and_geometry() -> None:
    width, height = 32, 16
    buffer = frame("NV12", width, height, 18, camera=True)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    tensor, geometry = nv12_to_tensor(
        buffer, width, height, (16, 16), crop="letterbox", pad=114.0, mean=mean, std=std
    )
    # A 32x16 frame in 16x16: scale 0.5, the image 8 rows high, 4 pad rows above and below.
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (0.5, 0.5, 0, 4)
    pad = (114.0 / 255 - np.array(mean)) / np.array(std)
    for rows in (slice(0, 4), slice(12, 16)):
        assert np.allclose(tensor[0, :, rows, :], pad[:, None, None], atol=1e-6)
    assert not np.allclose(tensor[0, :, 4, :], pad[:, None], atol=1e-3)
    # Mapping the content's corners back lands on the frame's corners.
    assert np.allclose(geometry.to_source(np.array([[0, 4, 16, 12]])), [[0, 0, 32, 16]])


def test_fused_tensor_from_a_padded_buffer_and_into_a_batch() -> None:
    width, height, size = 20, 10, (8, 8)
    buffer = frame("NV12", width, height, 19)
    expected, _ = nv12_to_tensor(buffer, width, height, size)
    for stride in (24, 25):  # an odd stride takes the repacking path
        padded = padded_nv12(buffer, width, stride).reshape(-1)
        tensor, _ = nv12_to_tensor(padded, width, height, size, stride=stride)
        assert np.array_equal(tensor, expected)
    batch = np.zeros((3, 3, 8, 8), np.float32)
    result, _ = nv12_to_tensor(buffer.tobytes(), width, height, size, out=batch[1:2])
    assert np.shares_memory(result, batch)
    assert np.array_equal(batch[1], expected[0]) and not batch[0].any() and not batch[2].any()


def test_area_resize_goes_through_rgb() -> None:
    width, height = 24, 12
    buffer = frame("NV12", width, height, 20)
    fused, _ = nv12_to_tensor(buffer, width, height, (6, 6), resize="area", crop="letterbox")
    stepwise, _ = two_step(buffer, width, height, (6, 6), resize="area", crop="letterbox")
    assert np.array_equal(fused, stepwise)


def test_warmup_runs() -> None:
    color.warmup()


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nv12_to_rgb(np.zeros(100, np.uint8), 8, 8), "needs 96 bytes, got 100"),
        (lambda: nv12_to_rgb(b"\0" * 95, 8, 8), "needs 96 bytes, got 95"),
        (
            lambda: i420_to_rgb(np.zeros(97, np.uint8), 8, 8),
            "8x8 I420 frame needs 96 bytes, got 97",
        ),
        (
            lambda: yuyv_to_rgb(np.zeros(127, np.uint8), 8, 8),
            "8x8 YUYV frame needs 128 bytes, got 127",
        ),
        (
            lambda: nv12_to_rgb(np.zeros(96, np.uint8), 8, 8, stride=10),
            "with a row stride of 10 bytes needs 120 bytes, got 96",
        ),
        (lambda: nv12_to_rgb(np.zeros(45, np.uint8), 5, 6), "even width and height"),
        (lambda: i420_to_rgb(np.zeros(30, np.uint8), 4, 5), "got 4x5"),
        (lambda: yuyv_to_rgb(np.zeros(30, np.uint8), 5, 3), "YUYV frame must have an even width"),
        (lambda: nv12_to_rgb(b"", 0, 0), "zero size (0x0)"),
        (lambda: yuyv_to_rgb(b"", 4, 0), "zero size (4x0)"),
        (lambda: nv12_to_rgb(b"", -2, 4), "zero size (-2x4)"),
        (lambda: nv12_to_rgb(np.zeros(96, np.float32), 8, 8), "uint8 bytes, got dtype float32"),
        (lambda: nv12_to_rgb(np.zeros(96, np.int16), 8, 8), "got dtype int16"),
        (
            lambda: nv12_to_rgb(np.zeros((8, 12), np.uint8), 8, 8),
            "must have shape (12, 8), got (8, 12)",
        ),
        (lambda: yuyv_to_rgb(np.zeros((8, 16), np.uint8), 8, 8), "shape (8, 8, 2), got (8, 16)"),
        (lambda: nv12_to_rgb(np.zeros(96, np.uint8), 8, 8, stride=6), "shorter than a 8-pixel"),
        (lambda: i420_to_rgb(np.zeros(108, np.uint8), 8, 8, stride=9), "must be even"),
        (
            lambda: nv12_to_tensor(np.zeros(100, np.uint8), 8, 8, (4, 4)),
            "needs 96 bytes, got 100",
        ),
        (lambda: nv12_to_tensor(np.zeros(45, np.uint8), 5, 6, (4, 4)), "even width and height"),
    ],
)
def test_bad_frames_raise_preprocess_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PreprocessError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: yuv_to_rgb(b"\0" * 96, 8, 8, "NV21"), ValueError, "fmt must be one of"),  # type: ignore[arg-type]
        (lambda: nv12_to_rgb(b"\0" * 96, 8, 8, channel_order="RGBA"), ValueError, "channel_order"),  # type: ignore[arg-type]
        (lambda: nv12_to_rgb([0] * 96, 8, 8), TypeError, "got list"),  # type: ignore[arg-type]
        (lambda: nv12_to_rgb(b"\0" * 96, 8.0, 8), TypeError, "width must be an int"),  # type: ignore[arg-type]
        (lambda: nv12_to_rgb(b"\0" * 96, 8, 8, stride=8.5), TypeError, "stride must be an int"),  # type: ignore[arg-type]
        (
            lambda: nv12_to_rgb(np.zeros((12, 8), np.uint8), 8, 8, stride=8),
            ValueError,
            "stride is for flat buffers",
        ),
        (
            lambda: nv12_to_rgb(b"\0" * 96, 8, 8, out=np.zeros((8, 8, 3), np.float32)),
            ValueError,
            "out must be a C-contiguous uint8 array of shape (8, 8, 3)",
        ),
        (
            lambda: nv12_to_rgb(b"\0" * 96, 8, 8, out=np.zeros((8, 16, 3), np.uint8)[:, ::2]),
            ValueError,
            "not contiguous",
        ),
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), resize="cubic"), ValueError, "resize"),  # type: ignore[arg-type]
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), crop="fill"), ValueError, "crop"),  # type: ignore[arg-type]
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), layout="CHW"), ValueError, "layout"),  # type: ignore[arg-type]
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), dtype="int16"), ValueError, "dtype"),  # type: ignore[arg-type]
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (0, 4)), ValueError, "size"),
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), mean=(1, 2)), ValueError, "mean needs"),
        (lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), std=(1, 0, 1)), ValueError, "std"),
        (
            lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), dtype="uint8", zero_point=300),
            ValueError,
            "zero_point",
        ),
        (
            lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), dtype="int8", quant_scale=0.0),
            ValueError,
            "quant_scale",
        ),
        (
            lambda: nv12_to_tensor(b"\0" * 96, 8, 8, (4, 4), out=np.zeros((1, 3, 4, 4), np.uint8)),
            ValueError,
            "out must be a float32 array of shape (1, 3, 4, 4)",
        ),
    ],
)
def test_programming_mistakes_raise_value_or_type_error(call, error, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
