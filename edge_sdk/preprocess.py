"""Declarative preprocessing: a JSON spec in the model's metadata becomes the tensor it expects.

Spec version 1 (docs/model-metadata.md)::

    {"version": 1, "size": [width, height], "color": "L" | "RGB" | "BGR",
     "resize": "bilinear" | "bilinear_align_corners" | "nearest" | "area",
     "crop": "none" | "center" | "letterbox", "pad": 114,
     "scale": 0.00392156862745098, "mean": [0.0], "std": [1.0],
     "layout": "NCHW" | "NHWC", "dtype": "float32" | "float16" | "uint8" | "int8",
     "quant_scale": 1.0, "zero_point": 0}

The model sees ``(pixel * scale - mean) / std`` per channel (then ``round(v / quant_scale) +
zero_point`` for integer dtypes). Files, bytes and PIL images are decoded with Pillow (EXIF
orientation applied; palette, grey, alpha, CMYK and 16-bit images converted); arrays and camera
buffers (``RawFrame``) go straight to the fused kernels in ``edge_sdk.kernels``, which resize,
crop, normalise and lay out in one pass. "bilinear" uses half-pixel centres, as OpenCV's
INTER_LINEAR does (../shared/NOTES.md, Image conventions).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_sdk.errors import ModelMetadataError, PreprocessError
from edge_sdk.kernels.geometry import Geometry

__all__ = ["PreprocessSpec", "Preprocessor", "RawFrame", "load_image", "preprocess"]

SPEC_VERSION = 1
ChannelOrder = Literal["RGB", "BGR"]
_CHANNELS = {"L": 1, "RGB": 3, "BGR": 3}
_CHOICES: dict[str, tuple[str, ...]] = {
    "color": ("L", "RGB", "BGR"),
    "resize": ("bilinear", "bilinear_align_corners", "nearest", "area"),
    "crop": ("none", "center", "letterbox"),
    "layout": ("NCHW", "NHWC"),
    "dtype": ("float32", "float16", "uint8", "int8"),
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an image into the model's input tensor (see the module docstring).

    Validation errors name the field. Example: ``PreprocessSpec(size=(224, 224),
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``.
    """

    size: tuple[int, int]
    color: Literal["L", "RGB", "BGR"] = "RGB"
    resize: Literal["bilinear", "bilinear_align_corners", "nearest", "area"] = "bilinear"
    crop: Literal["none", "center", "letterbox"] = "none"
    pad: float = 114.0
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"
    quant_scale: float = 1.0
    zero_point: int = 0
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
        ):
            raise ValueError(f"size must be [width, height] of positive ints, got {self.size!r}")
        object.__setattr__(self, "size", size)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.version != SPEC_VERSION:
            raise ValueError(f"version {self.version!r} is not supported (this SDK reads 1)")
        if not isinstance(self.pad, (int, float)) or not 0 <= self.pad <= 255:
            raise ValueError(f"pad must be a number 0..255, got {self.pad!r}")
        channels = _CHANNELS[self.color]
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for {self.color}")
            object.__setattr__(self, name, values)
        if any(v == 0 for v in self.std):
            raise ValueError("std values must not be 0")
        if not float(self.quant_scale) > 0:
            raise ValueError(f"quant_scale must be > 0, got {self.quant_scale!r}")
        low, high = (-128, 127) if self.dtype == "int8" else (0, 255)
        if not isinstance(self.zero_point, int) or not low <= self.zero_point <= high:
            raise ValueError(f"zero_point must be an int in {low}..{high} for {self.dtype}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "pad", float(self.pad))
        object.__setattr__(self, "quant_scale", float(self.quant_scale))

    @property
    def channels(self) -> int:
        return _CHANNELS[self.color]

    @classmethod
    def from_metadata(
        cls, spec: Mapping[str, Any], key: str = "edge_sdk.preprocess"
    ) -> PreprocessSpec:
        """Build from the JSON object in a model; raise ModelMetadataError naming the field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ModelMetadataError(key, f"unknown field(s) {unknown}; known: {sorted(known)}")
        if "size" not in spec:
            raise ModelMetadataError(key, "missing field 'size' ([width, height])")
        try:
            values: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()
            }
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelMetadataError(key, str(exc)) from exc

    def to_metadata(self) -> dict[str, Any]:
        """The JSON object for ``edge_sdk.preprocess`` (``from_metadata`` reads it back)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def tensor_shape(self, batch: int = 1) -> tuple[int, ...]:
        width, height = self.size
        if self.layout == "NCHW":
            return (batch, self.channels, height, width)
        return (batch, height, width, self.channels)


@dataclass(frozen=True)
class RawFrame:
    """An uncompressed frame as a camera or decoder delivers it.

    ``format`` is a YUV layout (NV12, I420, YUYV) or a packed pixel order (RGB, BGR, GRAY);
    ``stride`` is the bytes per row of the first plane when rows are padded (NV12 only).

    Example: ``model.predict(RawFrame(buffer, 1920, 1080, "NV12"))``.
    """

    data: Any
    width: int
    height: int
    format: Literal["NV12", "I420", "YUYV", "RGB", "BGR", "GRAY"]
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ("NV12", "I420", "YUYV", "RGB", "BGR", "GRAY"):
            raise ValueError(f"unknown frame format {self.format!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def _to_uint8_pixels(image: Any) -> np.ndarray:
    """A decoded PIL image as an H x W (grey) or H x W x 3 (RGB) uint8 array."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (and 32-bit integer) images: keep the top 8 bits of the 16-bit range.
        values = np.asarray(image, dtype=np.int64)
        return np.clip(values >> 8, 0, 255).astype(np.uint8)  # type: ignore[no-any-return]
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La", "PA"):
        return np.asarray(image.convert("L"))
    # P (palette), RGBA, CMYK, YCbCr, LAB, HSV ...: Pillow's own conversion to RGB. Alpha is
    # dropped, as a model trained on JPEGs never saw it.
    return np.asarray(image.convert("RGB"))


def load_image(item: Any) -> Any:
    """Open ``item`` (path, bytes or PIL image) as a PIL image with its EXIF orientation
    applied. Raises PreprocessError naming what could not be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(item, Image.Image):
        image = item
        name = "the PIL image"
    else:
        if isinstance(item, (bytes, bytearray, memoryview)):
            if len(item) == 0:
                raise PreprocessError("the image bytes are empty (0 bytes)")
            name, source = "the image bytes", io.BytesIO(bytes(item))
        elif isinstance(item, (str, os.PathLike)):
            name, source = repr(os.fspath(item)), Path(os.fspath(item))  # type: ignore[assignment]
        else:
            raise PreprocessError(
                f"cannot preprocess a {type(item).__name__}: give an image path, bytes, a PIL "
                "image, a uint8 H x W x C array or a RawFrame"
            )
        try:
            image = Image.open(source)
            image.load()
        except FileNotFoundError:
            raise PreprocessError(f"image {name} does not exist") from None
        except IsADirectoryError:
            raise PreprocessError(f"image {name} is a directory") from None
        except UnidentifiedImageError:
            raise PreprocessError(f"{name} is not an image Pillow can decode") from None
        except (OSError, SyntaxError, ValueError) as exc:
            # Pillow reports a cut-short file as OSError("image file is truncated ...").
            raise PreprocessError(f"cannot decode {name}: {exc}") from exc
    if image.width == 0 or image.height == 0:
        raise PreprocessError(f"{name} has zero size ({image.width}x{image.height})")
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise PreprocessError(f"cannot apply the EXIF orientation of {name}: {exc}") from exc


def _grey_from_rgb(rgb: np.ndarray, order: str) -> np.ndarray:
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    r, b = (rgb[..., 0], rgb[..., 2]) if order == "RGB" else (rgb[..., 2], rgb[..., 0])
    grey = r * 0.299 + rgb[..., 1] * 0.587 + b * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


class Preprocessor:
    """A compiled ``PreprocessSpec``: call it with one item to get ``(tensor, geometry)``.

    ``out`` may be a ``[1, ...]`` slice of a batch tensor (``batch[i:i + 1]``), so a batch is
    filled in place. Raises PreprocessError for inputs that cannot be decoded or converted.

    Example: ``tensor, geometry = Preprocessor(spec)("frame.jpg")``.
    """

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        self._channel_order: ChannelOrder = "BGR" if spec.color == "BGR" else "RGB"
        self._tensor_options: dict[str, Any] = {
            "resize": spec.resize,
            "crop": spec.crop,
            "pad": spec.pad,
            "scale": spec.scale,
            "mean": spec.mean,
            "std": spec.std,
            "layout": spec.layout,
            "dtype": spec.dtype,
            "quant_scale": spec.quant_scale,
            "zero_point": spec.zero_point,
        }

    def __call__(self, item: Any, out: np.ndarray | None = None) -> tuple[np.ndarray, Geometry]:
        from edge_sdk.kernels.image import image_to_tensor

        spec = self.spec
        if isinstance(item, RawFrame):
            return self._raw_frame(item, out)
        if isinstance(item, np.ndarray):
            pixels = self._check_array(item)
        else:
            pixels = _to_uint8_pixels(load_image(item))
        pixels = self._match_channels(pixels, "RGB")
        return image_to_tensor(
            pixels,
            spec.size,
            source_order="RGB",
            channel_order=self._channel_order,
            out=out,
            **self._tensor_options,
        )

    def batch(self, items: Sequence[Any]) -> tuple[np.ndarray, list[Geometry]]:
        """Preprocess several items into one ``[N, ...]`` tensor (each written in place)."""
        if not items:
            raise PreprocessError("an empty batch: give at least one item")
        tensor = np.empty(self.spec.tensor_shape(len(items)), dtype=self.spec.dtype)
        geometries = []
        for index, item in enumerate(items):
            _, geometry = self(item, out=tensor[index : index + 1])
            geometries.append(geometry)
        return tensor, geometries

    def _check_array(self, array: np.ndarray) -> np.ndarray:
        if array.dtype != np.uint8:
            raise PreprocessError(
                f"an image array must be uint8, got {array.dtype} (scale it to 0..255 first)"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]  # RGBA: drop alpha, as the decoders do
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            raise PreprocessError(
                f"an image array must be H x W, H x W x 1, H x W x 3 (RGB) or H x W x 4, got "
                f"shape {array.shape}"
            )
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise PreprocessError(f"the image array has zero size (shape {array.shape})")
        return array

    def _match_channels(self, pixels: np.ndarray, order: ChannelOrder) -> np.ndarray:
        """Grey for a grey model, three channels for a colour one."""
        if self.spec.color == "L":
            return pixels if pixels.ndim == 2 else _grey_from_rgb(pixels, order)
        if pixels.ndim == 2:
            return np.repeat(pixels[:, :, None], 3, axis=2)
        return pixels

    def _raw_frame(self, frame: RawFrame, out: np.ndarray | None) -> tuple[np.ndarray, Geometry]:
        from edge_sdk.kernels.color import nv12_to_tensor, yuv_to_rgb
        from edge_sdk.kernels.image import image_to_tensor

        spec = self.spec
        channel_order: ChannelOrder = "BGR" if spec.color == "BGR" else "RGB"
        if frame.format == "NV12" and spec.color != "L" and spec.resize in ("bilinear", "nearest"):
            # The fused path: camera buffer to tensor in one pass, no RGB image in between.
            return nv12_to_tensor(
                frame.data,
                frame.width,
                frame.height,
                spec.size,
                channel_order=channel_order,
                out=out,
                stride=frame.stride,
                **self._tensor_options,
            )
        order: ChannelOrder = "BGR" if frame.format == "BGR" else "RGB"
        if frame.format in ("NV12", "I420", "YUYV"):
            pixels = yuv_to_rgb(
                frame.data, frame.width, frame.height, frame.format, stride=frame.stride
            )
        else:
            channels = 1 if frame.format == "GRAY" else 3
            data = (
                np.frombuffer(frame.data, dtype=np.uint8)
                if not isinstance(frame.data, np.ndarray)
                else frame.data
            )
            expected = frame.width * frame.height * channels
            if data.dtype != np.uint8 or data.size != expected:
                raise PreprocessError(
                    f"a {frame.width}x{frame.height} {frame.format} frame needs {expected} uint8 "
                    f"values, got {data.size} {data.dtype}"
                )
            shape = (frame.height, frame.width) + (() if channels == 1 else (3,))
            pixels = data.reshape(shape)
        if frame.width == 0 or frame.height == 0:
            raise PreprocessError(f"the frame has zero size ({frame.width}x{frame.height})")
        pixels = self._match_channels(pixels, order)
        return image_to_tensor(
            pixels,
            spec.size,
            source_order=order,
            channel_order=channel_order,
            out=out,
            **self._tensor_options,
        )


def preprocess(spec: PreprocessSpec, item: Any) -> np.ndarray:
    """Turn one item into a batch-of-one tensor as ``spec`` declares (the geometry dropped)."""
    tensor, _ = Preprocessor(spec)(item)
    return tensor
