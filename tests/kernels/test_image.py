"""edge_sdk.kernels.image: the fused image -> tensor kernel against its float64 NumPy reference
and against OpenCV's resize, over sizes, modes, layouts, dtypes and strided inputs."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.errors import PreprocessError
from edge_sdk.kernels import image
from edge_sdk.kernels.image import image_to_tensor, image_to_tensor_reference, plan_geometry

# Without the JIT the kernels run as Python loops: fewer, equally varied examples.
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
EXAMPLES = 60 if NO_JIT else 150

RESIZES = ("bilinear", "bilinear_align_corners", "nearest", "area")
CROPS = ("none", "center", "letterbox")
CV2_FLAGS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def _image(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _view(base: np.ndarray, kind: str) -> np.ndarray:
    """A non-contiguous view of ``base`` (or base itself) that the kernel must read in place."""
    if kind == "step":
        return base[::2, ::3]
    if kind == "crop":
        return base[1:-1, 2:-1]
    if kind == "transposed":
        return base.swapaxes(0, 1)
    if kind == "flipped":
        return base[::-1, ::-1]
    return base


def _pixels(tensor: np.ndarray, layout: str) -> np.ndarray:
    """[1, C, H, W] or [1, H, W, C] -> H x W x C float64."""
    item = tensor[0].astype(np.float64)
    return item.transpose(1, 2, 0) if layout == "NCHW" else item


# --------------------------------------------------------------------------------------------
# Kernel against the reference


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    src=st.tuples(st.integers(1, 40), st.integers(1, 70)),
    size=st.tuples(st.integers(1, 32), st.integers(1, 32)),
    channels=st.sampled_from([1, 3]),
    view=st.sampled_from(["contiguous", "step", "crop", "transposed", "flipped"]),
    resize=st.sampled_from(RESIZES),
    crop=st.sampled_from(CROPS),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    orders=st.sampled_from([("RGB", "RGB"), ("RGB", "BGR"), ("BGR", "RGB"), ("BGR", "BGR")]),
    seed=st.integers(0, 2**16),
)
def test_float32_matches_reference(
    src: tuple[int, int],
    size: tuple[int, int],
    channels: int,
    view: str,
    resize: Any,
    crop: Any,
    layout: Any,
    orders: tuple[Any, Any],
    seed: int,
) -> None:
    base = _image(src[0] + 4, src[1] + 6, channels, seed) if view != "contiguous" else None
    pixels = _view(base, view) if base is not None else _image(*src, channels, seed)
    rng = np.random.default_rng(seed)
    n = channels
    options: dict[str, Any] = {
        "resize": resize,
        "crop": crop,
        "layout": layout,
        "source_order": orders[0],
        "channel_order": orders[1],
        "pad": float(rng.integers(0, 256)),
        "mean": tuple(rng.uniform(0, 1, n)),
        "std": tuple(rng.uniform(0.2, 1.5, n)),
    }
    got, geometry = image_to_tensor(pixels, size, **options)
    expected, expected_geometry = image_to_tensor_reference(pixels, size, **options)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert geometry == expected_geometry
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("src", "size"),
    [
        ((1, 1), (1, 1)),
        ((1, 1), (5, 3)),
        ((1, 50), (7, 7)),
        ((50, 1), (7, 7)),
        ((1, 50), (50, 1)),
        ((50, 1), (1, 50)),
        ((2, 70), (3, 40)),
        ((40, 2), (1, 1)),
    ],
)
@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("crop", CROPS)
def test_extreme_aspect_ratios(
    src: tuple[int, int], size: tuple[int, int], resize: Any, crop: Any
) -> None:
    pixels = _image(*src, 3, seed=src[0] * 100 + src[1])
    options: dict[str, Any] = {"resize": resize, "crop": crop, "mean": (0.5,), "std": (0.25,)}
    got, geometry = image_to_tensor(pixels, size, **options)
    expected, expected_geometry = image_to_tensor_reference(pixels, size, **options)
    assert geometry == expected_geometry
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


def test_grey_stays_one_channel() -> None:
    grey = _image(9, 13, 1)
    tensor, _ = image_to_tensor(grey, (5, 4), scale=1.0)
    assert tensor.shape == (1, 1, 4, 5)
    np.testing.assert_allclose(tensor, image_to_tensor_reference(grey, (5, 4), scale=1.0)[0])
    same, _ = image_to_tensor(grey[:, :, None], (5, 4), scale=1.0, channel_order="BGR")
    np.testing.assert_array_equal(same, tensor)


def test_channel_swap_and_per_channel_normalisation() -> None:
    # Identity size: the tensor is exactly the normalised pixels, so the order is visible.
    rgb = _image(4, 6, 3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    tensor, _ = image_to_tensor(rgb, (6, 4), channel_order="BGR", mean=mean, std=std)
    expected = (rgb[:, :, ::-1] / 255.0 - mean) / std
    np.testing.assert_allclose(tensor[0].transpose(1, 2, 0), expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Against OpenCV


def _cv2_cases() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    sources = [(1, 1), (7, 5), (37, 53), (64, 48), (33, 99), (120, 160)]
    targets = [(1, 1), (2, 3), (5, 7), (16, 16), (31, 24), (48, 64), (150, 200)]
    return [(s, t) for s in sources for t in targets]


@pytest.mark.parametrize(("src", "size"), _cv2_cases())
def test_bilinear_within_one_level_of_opencv(src: tuple[int, int], size: tuple[int, int]) -> None:
    # OpenCV INTER_LINEAR works in fixed point and rounds to uint8 (NOTES.md: up to ~0.75).
    pixels = _image(*src, 3, seed=src[0] + size[0])
    got, _ = image_to_tensor(pixels, size, scale=1.0, layout="NHWC")
    expected = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR).reshape(got.shape[1:])
    assert np.max(np.abs(got[0] - expected)) <= 1.0


@pytest.mark.parametrize(("src", "size"), _cv2_cases())
def test_nearest_equals_opencv(src: tuple[int, int], size: tuple[int, int]) -> None:
    # Same float64 arithmetic as INTER_NEAREST (floor(dst * (1 / (dst_size / src_size)))),
    # so even positions that are integers in exact arithmetic (where a different rounding
    # of the scale could land on the neighbour) agree.
    pixels = _image(*src, 3, seed=src[1] + size[1])
    got, _ = image_to_tensor(pixels, size, resize="nearest", scale=1.0, layout="NHWC")
    expected = cv2.resize(pixels, size, interpolation=cv2.INTER_NEAREST).reshape(got.shape[1:])
    np.testing.assert_array_equal(got[0], expected)


@pytest.mark.parametrize(
    ("src", "size"),
    [
        ((8, 8), (4, 4)),  # integer factors (OpenCV's fast path)
        ((120, 160), (40, 40)),
        ((99, 33), (33, 11)),
        ((37, 53), (7, 5)),  # non-integer factors: fractional edge weights
        ((64, 48), (31, 24)),
        ((120, 160), (47, 71)),
        ((50, 1), (1, 13)),
        ((5, 5), (5, 5)),
    ],
)
def test_area_downscale_within_one_level_of_opencv(
    src: tuple[int, int], size: tuple[int, int]
) -> None:
    pixels = _image(*src, 3, seed=7)
    got, _ = image_to_tensor(pixels, size, resize="area", scale=1.0, layout="NHWC")
    expected = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA).reshape(got.shape[1:])
    assert np.max(np.abs(got[0] - expected)) <= 1.0


@pytest.mark.jit_only  # a 1080p frame through plain-Python loops takes seconds
def test_full_hd_against_blob_from_image() -> None:
    frame = _image(1080, 1920, 3)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1 / (255 * s) for s in std)
    params.mean = tuple(255 * m for m in mean)
    params.size = (224, 224)
    params.ddepth = cv2.CV_32F
    blob = cv2.dnn.blobFromImageWithParams(frame, params)
    tensor, _ = image_to_tensor(frame, (224, 224), mean=mean, std=std)
    assert tensor.shape == blob.shape
    assert np.max(np.abs(tensor - blob)) <= 1.0 / (255 * min(std))  # one level


# --------------------------------------------------------------------------------------------
# Letterbox, centre crop and geometry


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize(("src", "size"), [((27, 64), (32, 32)), ((64, 27), (40, 20))])
def test_letterbox_pads_with_the_normalised_value(
    resize: Any, src: tuple[int, int], size: tuple[int, int]
) -> None:
    pixels = _image(*src, 3)
    mean, std = (0.1, 0.2, 0.3), (0.3, 0.4, 0.5)
    tensor, geometry = image_to_tensor(
        pixels, size, resize=resize, crop="letterbox", pad=114, mean=mean, std=std
    )
    left, top = int(geometry.pad_x), int(geometry.pad_y)
    new_w = round(geometry.scale_x * src[1])
    new_h = round(geometry.scale_y * src[0])
    assert (left == 0 or top == 0) and (new_w == size[0] or new_h == size[1])
    inside = np.zeros(tensor.shape[2:], bool)
    inside[top : top + new_h, left : left + new_w] = True
    for c in range(3):
        expected_pad = np.float32((114 / 255 - mean[c]) / std[c])
        assert np.all(tensor[0, c][~inside] == expected_pad)
    if resize in CV2_FLAGS and not (resize == "area" and new_w > src[1]):
        # The content is OpenCV's resize to the letterboxed size, placed at the offset.
        content = cv2.resize(pixels, (new_w, new_h), interpolation=CV2_FLAGS[resize])
        ours = tensor[0].transpose(1, 2, 0)[top : top + new_h, left : left + new_w]
        levels = (ours * std + mean) * 255
        assert np.max(np.abs(levels - content)) <= 1.0 + 1e-3


def test_letterbox_geometry_full_hd() -> None:
    geometry = plan_geometry(1920, 1080, (640, 640), "letterbox")
    assert (geometry.scale_x, geometry.scale_y) == (1 / 3, 1 / 3)
    assert (geometry.pad_x, geometry.pad_y) == (0.0, 140.0)
    # The content's corners in the tensor map back onto the image's corners ...
    content = np.array([[0, 140, 640, 500]], np.float32)
    np.testing.assert_allclose(geometry.to_source(content), [[0, 0, 1920, 1080]], atol=1e-3)
    # ... and the tensor's corners, clipped, too.
    corners = np.array([[0, 0, 640, 640]], np.float32)
    np.testing.assert_allclose(geometry.to_source(corners), [[0, 0, 1920, 1080]], atol=1e-3)


@pytest.mark.parametrize(
    ("src", "size"), [((1080, 1920), (640, 640)), ((720, 1280), (320, 320)), ((31, 17), (9, 13))]
)
def test_letterbox_geometry_round_trips(src: tuple[int, int], size: tuple[int, int]) -> None:
    height, width = src
    geometry = plan_geometry(width, height, size, "letterbox")
    new_w, new_h = round(geometry.scale_x * width), round(geometry.scale_y * height)
    box = np.array(
        [[geometry.pad_x, geometry.pad_y, geometry.pad_x + new_w, geometry.pad_y + new_h]]
    )
    np.testing.assert_allclose(geometry.to_source(box), [[0, 0, width, height]], atol=1e-3)
    # one scale for both axes, up to the rounding to whole pixels
    assert abs(geometry.scale_x - geometry.scale_y) <= 1 / min(width, height)


def test_center_crop_keeps_the_middle() -> None:
    pixels = _image(4, 8, 3)
    tensor, geometry = image_to_tensor(
        pixels, (4, 4), crop="center", scale=1.0, layout="NHWC", dtype="uint8"
    )
    np.testing.assert_array_equal(tensor[0], pixels[:, 2:6])
    assert (geometry.pad_x, geometry.pad_y, geometry.scale_x, geometry.scale_y) == (
        -2.0,
        0.0,
        1.0,
        1.0,
    )
    # The tensor's corners are the crop's corners in the source.
    corners = np.array([[0, 0, 4, 4]], np.float32)
    np.testing.assert_allclose(geometry.to_source(corners), [[2, 0, 6, 4]])


def test_center_crop_geometry_downscale() -> None:
    # 1080 rows fill 224 exactly; the width rounds to 398 resized pixels, centred.
    geometry = plan_geometry(1920, 1080, (224, 224), "center")
    assert (geometry.scale_x, geometry.scale_y) == (398 / 1920, 224 / 1080)
    assert (geometry.pad_x, geometry.pad_y) == (-87.0, 0.0)
    x1, y1, x2, y2 = geometry.to_source(np.array([[0, 0, 224, 224]], np.float32))[0]
    assert (y1, y2) == pytest.approx((0, 1080), abs=1e-3)
    assert (x1 + x2) / 2 == pytest.approx(960, abs=1 / geometry.scale_x)  # centred
    assert x2 - x1 == pytest.approx(224 / geometry.scale_x, abs=1e-2)


def test_plain_resize_geometry() -> None:
    geometry = plan_geometry(640, 480, (320, 320), "none")
    assert (geometry.scale_x, geometry.scale_y, geometry.pad_x, geometry.pad_y) == (
        0.5,
        320 / 480,
        0.0,
        0.0,
    )


# --------------------------------------------------------------------------------------------
# Output dtypes, layouts, out=


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_quantised_within_one_step(dtype: Any, resize: Any, crop: Any, layout: Any) -> None:
    pixels = _image(23, 37, 3, seed=3)
    options: dict[str, Any] = {
        "resize": resize,
        "crop": crop,
        "layout": layout,
        "dtype": dtype,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "quant_scale": 0.0187,
        "zero_point": 114 if dtype == "uint8" else -6,
    }
    got, _ = image_to_tensor(pixels, (19, 14), **options)
    expected, _ = image_to_tensor_reference(pixels, (19, 14), **options)
    assert got.dtype == np.dtype(dtype)
    difference = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    # float32 arithmetic can round a value at exactly .5 the other way: one step at most,
    # and rarely.
    assert difference.max() <= 1
    assert np.count_nonzero(difference) <= difference.size // 100 + 1


def test_quantised_saturates_and_uses_the_zero_point() -> None:
    pixels = np.array([[0, 255]], np.uint8)
    got, _ = image_to_tensor(pixels, (2, 1), dtype="int8", scale=1.0, quant_scale=1.0)
    np.testing.assert_array_equal(got.ravel(), [0, 127])
    got, _ = image_to_tensor(
        pixels, (2, 1), dtype="int8", scale=1.0, mean=(128.0,), zero_point=-3, quant_scale=2.0
    )
    np.testing.assert_array_equal(got.ravel(), [-67, 61])  # rint(-64)-3, rint(63.5)=64-3
    got, _ = image_to_tensor(pixels, (2, 1), dtype="uint8", scale=2.0, zero_point=10)
    np.testing.assert_array_equal(got.ravel(), [10, 255])


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float16_within_half_precision(resize: Any, crop: Any, layout: Any) -> None:
    pixels = _image(21, 34, 3, seed=5)
    options: dict[str, Any] = {
        "resize": resize,
        "crop": crop,
        "layout": layout,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    got, _ = image_to_tensor(pixels, (16, 12), dtype="float16", **options)
    exact, _ = image_to_tensor_reference(pixels, (16, 12), dtype="float32", **options)
    assert got.dtype == np.float16
    # half precision: 11 significant bits, a relative step of 2**-10 (rounding: half of it)
    np.testing.assert_allclose(got.astype(np.float64), exact, rtol=2**-10, atol=1e-4)


def test_half_bits_match_numpy() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 3, 300),
            rng.normal(0, 1e-5, 100),  # subnormal halves
            np.ldexp(1.0, np.arange(-26, 17)),  # powers of two across the range
            np.ldexp(1.0 + np.arange(2048) / 2048, -3),  # every rounding position (ties)
            [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, np.inf, -np.inf, 6.1e-5, 2.98e-8],
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):  # 1e9 -> inf is the point
        expected = values.astype(np.float16).view(np.uint16)
    got = np.array([image._half_bits(np.float32(v)) for v in values], np.uint16)
    np.testing.assert_array_equal(got, expected)
    assert image._half_bits(np.float32(np.nan)) & 0x7C00 == 0x7C00


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_writes_into_a_batch_slice(layout: Any, dtype: Any) -> None:
    shape = (3, 3, 8, 10) if layout == "NCHW" else (3, 8, 10, 3)
    batch = np.full(shape, 7, np.dtype(dtype))
    pixels = _image(16, 20, 3)
    tensor, _ = image_to_tensor(
        pixels, (10, 8), layout=layout, dtype=dtype, scale=1.0, out=batch[1:2]
    )
    assert np.shares_memory(tensor, batch) and tensor.shape == (1, *shape[1:])
    expected, _ = image_to_tensor_reference(pixels, (10, 8), layout=layout, dtype=dtype, scale=1.0)
    np.testing.assert_allclose(batch[1:2], expected, atol=1e-3 if dtype == "float32" else 1)
    assert np.all(batch[0] == 7) and np.all(batch[2] == 7)


def test_reuses_out_across_calls() -> None:
    out = np.empty((1, 3, 6, 6), np.float32)
    for seed in range(3):
        pixels = _image(12, 9, 3, seed)
        tensor, _ = image_to_tensor(pixels, (6, 6), crop="letterbox", out=out)
        assert tensor is out
        expected, _ = image_to_tensor_reference(pixels, (6, 6), crop="letterbox")
        np.testing.assert_allclose(out, expected, atol=1e-3)


def test_writes_into_a_strided_out() -> None:
    wide = np.zeros((1, 3, 8, 20), np.float32)
    out = wide[:, :, :, ::2]  # not contiguous: written through a contiguous copy
    pixels = _image(16, 20, 3)
    tensor, _ = image_to_tensor(pixels, (10, 8), out=out)
    assert tensor is out
    expected, _ = image_to_tensor_reference(pixels, (10, 8))
    np.testing.assert_allclose(wide[:, :, :, ::2], expected, atol=1e-3)
    assert np.all(wide[:, :, :, 1::2] == 0)


def test_read_only_source() -> None:
    pixels = _image(9, 11, 3)
    frozen = np.frombuffer(pixels.tobytes(), np.uint8).reshape(pixels.shape)
    assert not frozen.flags.writeable
    got, _ = image_to_tensor(frozen, (5, 5))
    np.testing.assert_array_equal(got, image_to_tensor(pixels, (5, 5))[0])


def _image_before_a_guard_page(height: int, width: int) -> tuple[np.ndarray, Any]:
    """An RGB image whose last byte is the last byte before an inaccessible page: reading
    past the image's end kills the process (SIGSEGV) instead of passing unnoticed."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    size = height * width * 3
    pages = -(-size // page)
    region = mmap.mmap(-1, (pages + 1) * page)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(address + pages * page, page, 0) != 0:  # PROT_NONE
        pytest.fail(f"mprotect failed: errno {ctypes.get_errno()}")
    start = pages * page - size
    pixels = np.frombuffer(region, np.uint8, count=size, offset=start).reshape(height, width, 3)
    pixels[...] = _image(height, width, 3, seed=3)
    return pixels, region


@pytest.mark.parametrize("resize", ["bilinear", "bilinear_align_corners"])
@pytest.mark.parametrize("size", [(7, 5), (40, 31), (3, 96)])
def test_never_reads_past_the_end_of_the_image(resize: Any, size: tuple[int, int]) -> None:
    # The RGB path loads 8 bytes per tap pair: the last rows, too near the end of the buffer
    # for that, must take the byte-wise path (this test crashes the process if they do not).
    pixels, region = _image_before_a_guard_page(32, 21)
    got, _ = image_to_tensor(pixels, size, resize=resize)
    expected, _ = image_to_tensor_reference(pixels, size, resize=resize)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    got_bgr, _ = image_to_tensor(pixels, size, resize=resize, source_order="BGR")
    np.testing.assert_allclose(got_bgr, expected[:, ::-1], atol=1e-4)
    del pixels, got, got_bgr
    region.close()


def test_the_rgb_path_matches_the_blended_row_path() -> None:
    # Three interleaved channels take the 8-byte-load path; the same pixels seen through a
    # 4-byte pixel stride (an RGBA buffer's RGB view) take the blended-row path.
    rgba = _image(50, 70, 4, seed=5)
    strided = rgba[:, :, :3]
    packed = np.ascontiguousarray(strided)
    for options in (
        {},
        {"channel_order": "BGR", "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25)},
        {"layout": "NHWC", "dtype": "float16"},
        {"dtype": "int8", "quant_scale": 0.02},
        {"crop": "letterbox", "pad": 7},
        {"resize": "bilinear_align_corners", "crop": "center"},
    ):
        fast, _ = image_to_tensor(packed, (33, 21), **options)  # type: ignore[arg-type]
        general, _ = image_to_tensor(strided, (33, 21), **options)  # type: ignore[arg-type]
        if fast.dtype.kind == "f":
            np.testing.assert_allclose(
                fast.astype(np.float64), general.astype(np.float64), rtol=1e-3, atol=1e-4
            )
        else:  # one quantisation step at most, where float rounding meets a tie
            assert np.max(np.abs(fast.astype(int) - general.astype(int))) <= 1


def test_options_given_as_lists_and_arrays() -> None:
    pixels = _image(20, 30, 3)
    expected, _ = image_to_tensor(pixels, (8, 6), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    got, _ = image_to_tensor(pixels, [8, 6], mean=[0.5, 0.4, 0.3], std=np.array([0.2, 0.2, 0.2]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected)


def test_warmup_runs() -> None:
    image.warmup()


@pytest.mark.jit_only  # counts numba's compiled versions
def test_one_compiled_version_serves_every_option() -> None:
    # The kernels take a flat read-only byte view of any source and one array per output
    # dtype, so dtype, layout, channel count and strides never trigger another compilation.
    base = _image(12, 14, 3)
    sources = [base, base[::2, 1::3], base[:, :, 0], np.frombuffer(base.tobytes(), np.uint8)]
    sources[3] = sources[3].reshape(base.shape)
    for pixels in sources:
        for dtype in ("float32", "float16", "uint8", "int8"):
            for layout in ("NCHW", "NHWC"):
                for resize in RESIZES:
                    image_to_tensor(pixels, (5, 4), resize=resize, layout=layout, dtype=dtype)
    for compiled in (image._resize_linear, image._resize_area):
        assert len(compiled._compiled.signatures) == 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((0, 5, 3), np.uint8), r"zero size \(shape \(0, 5, 3\)\)"),
        (np.zeros((5, 0), np.uint8), r"zero size \(shape \(5, 0\)\)"),
        (np.zeros(5, np.uint8), "got 1 dimensions"),
        (np.zeros((2, 2, 2, 3), np.uint8), "got 4 dimensions"),
        (np.zeros((4, 4, 4), np.uint8), "1 or 3 channels, got 4"),
        (np.zeros((4, 4, 2), np.uint8), "1 or 3 channels, got 2"),
        (np.zeros((4, 4, 3), np.float32), "must be uint8.*got dtype float32"),
        (np.zeros((4, 4, 3), np.uint16), "got dtype uint16"),
    ],
)
def test_bad_images_raise_preprocess_error(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        image_to_tensor(pixels, (4, 4))


def test_a_non_array_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="image must be a numpy array, got list"):
        image_to_tensor([[1, 2], [3, 4]], (2, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": (0, 4)}, r"size must be \(width, height\) of positive ints"),
        ({"size": (4, -1)}, "positive ints"),
        ({"size": (4,)}, r"size must be \(width, height\)"),
        ({"size": (4.0, 4)}, "positive ints"),
        ({"resize": "bicubic"}, "resize must be one of"),
        ({"crop": "fill"}, "crop must be one of"),
        ({"layout": "CHW"}, "layout must be"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"channel_order": "RGBA"}, "channel_order must be"),
        ({"source_order": "YUV"}, "source_order and channel_order"),
        ({"mean": (0.1, 0.2)}, "mean needs 1 or 3 values, got 2"),
        ({"std": (1.0, 1.0, 1.0, 1.0)}, "std needs 1 or 3 values, got 4"),
        ({"std": (1.0, 0.0, 1.0)}, "std values must not be 0"),
        ({"mean": (float("nan"),)}, "mean values must be finite"),
        ({"mean": 0.5}, "mean must be a sequence of numbers, got 0.5"),
        ({"std": "abc"}, "std must be a sequence of numbers"),
        ({"scale": float("inf")}, "must be finite"),
        ({"dtype": "uint8", "quant_scale": 0.0}, "quant_scale must be > 0"),
        ({"dtype": "int8", "zero_point": 128}, r"zero_point must be an int in -128..127"),
        ({"dtype": "uint8", "zero_point": -1}, r"zero_point must be an int in 0..255"),
        ({"dtype": "uint8", "zero_point": 1.5}, "zero_point must be an int"),
        ({"out": np.zeros((1, 3, 4, 5), np.float32)}, r"out must be a float32 array of shape"),
        ({"out": np.zeros((1, 3, 4, 4), np.float64)}, "got float64"),
        ({"out": np.zeros((1, 4, 4, 3), np.float32)}, r"shape \(1, 3, 4, 4\)"),
    ],
)
def test_bad_options_raise_value_error(options: dict[str, Any], message: str) -> None:
    size = options.pop("size", (4, 4))
    with pytest.raises(ValueError, match=message):
        image_to_tensor(_image(6, 6, 3), size, **options)


def test_out_must_be_an_array() -> None:
    with pytest.raises(TypeError, match="out must be a numpy array, got list"):
        image_to_tensor(_image(6, 6, 3), (2, 2), out=[[0.0]])  # type: ignore[arg-type]


def test_plan_geometry_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="crop must be one of"):
        plan_geometry(4, 4, (2, 2), "stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source size must be positive, got 0x4"):
        plan_geometry(0, 4, (2, 2), "none")
    with pytest.raises(ValueError, match="positive ints"):
        plan_geometry(4, 4, (2, 0), "none")
