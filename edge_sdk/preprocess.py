"""Declarative preprocessing: a JSON spec in the model's metadata becomes the tensor it expects.

Spec version 1 (docs/model-metadata.md)::

    {"version": 1, "color": "L" | "RGB" | "BGR", "size": [width, height],
     "resize": "area" | "bilinear" | "nearest", "crop": "none" | "center" | "letterbox",
     "pad": 114, "scale": 0.00392156862745098, "mean": [0.0], "std": [1.0],
     "layout": "NCHW" | "NHWC", "dtype": "float32" | "float16" | "uint8"}

The value fed to the model is ``(pixel * scale - mean) / std`` per channel. This module decodes
with Pillow and converts with NumPy; Pillow's bilinear resize is antialiased, unlike OpenCV's
INTER_LINEAR, so a model trained on OpenCV-resized images should declare "area" or be fed
images already at its size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_sdk.errors import ModelMetadataError, PreprocessError

__all__ = ["PreprocessSpec", "load_image", "preprocess"]

SPEC_VERSION = 1
_CHANNELS = {"L": 1, "RGB": 3, "BGR": 3}


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an image into the model's input tensor (see the module docstring).

    Example: ``PreprocessSpec(color="RGB", size=(224, 224), scale=1 / 255,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``.
    """

    size: tuple[int, int]
    color: Literal["L", "RGB", "BGR"] = "RGB"
    resize: Literal["area", "bilinear", "nearest"] = "bilinear"
    crop: Literal["none", "center", "letterbox"] = "none"
    pad: int = 114
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"size must be [width, height] of positive ints, got {self.size!r}")
        object.__setattr__(self, "size", size)
        choices = {
            "color": _CHANNELS,
            "resize": ("area", "bilinear", "nearest"),
            "crop": ("none", "center", "letterbox"),
            "layout": ("NCHW", "NHWC"),
            "dtype": ("float32", "float16", "uint8"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.version != SPEC_VERSION:
            raise ValueError(f"preprocess spec version {self.version!r} is not supported (1)")
        if not 0 <= self.pad <= 255:
            raise ValueError(f"pad must be 0..255, got {self.pad!r}")
        channels = _CHANNELS[self.color]
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for {self.color}")
            object.__setattr__(self, name, values)
        if any(v == 0 for v in self.std):
            raise ValueError("std values must not be 0")
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def from_metadata(
        cls, spec: Mapping[str, Any], key: str = "edge_sdk.preprocess"
    ) -> PreprocessSpec:
        """Build from the JSON object in a model; raise ModelMetadataError naming the problem."""
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
        return {
            f.name: list(getattr(self, f.name))
            if isinstance(getattr(self, f.name), tuple)
            else getattr(self, f.name)
            for f in fields(self)
        }


def load_image(item: Any) -> Any:
    """Open ``item`` (path, bytes, PIL image or uint8 array) as a PIL image; PreprocessError
    names what could not be read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if (
            item.dtype != np.uint8
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[2] not in (1, 3, 4))
        ):
            raise PreprocessError(
                f"an image array must be uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4, got "
                f"{item.dtype} {item.shape}"
            )
        return Image.fromarray(item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        name, stream = "image bytes", io.BytesIO(bytes(item))
    elif isinstance(item, (str, os.PathLike)):
        name, stream = repr(os.fspath(item)), None
    else:
        raise PreprocessError(
            f"cannot preprocess a {type(item).__name__}: give an image path, bytes, "
            "a PIL image or a uint8 array"
        )
    try:
        image = Image.open(stream if stream is not None else Path(os.fspath(item)))
        image.load()
        return image
    except FileNotFoundError:
        raise PreprocessError(f"image {name} does not exist") from None
    except IsADirectoryError:
        raise PreprocessError(f"image {name} is a directory") from None
    except UnidentifiedImageError:
        raise PreprocessError(f"{name} is not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PreprocessError(f"cannot decode {name}: {exc}") from exc


def preprocess(spec: PreprocessSpec, item: Any) -> np.ndarray:
    """Turn one image into a batch-of-one tensor as ``spec`` declares."""
    from PIL import Image

    image = load_image(item)
    mode = "L" if spec.color == "L" else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    width, height = spec.size
    resample = {
        "area": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
    }[spec.resize]
    if spec.crop == "center":
        ratio = max(width / image.width, height / image.height)
        scaled = (max(width, round(image.width * ratio)), max(height, round(image.height * ratio)))
        if scaled != image.size:
            image = image.resize(scaled, resample)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    elif spec.crop == "letterbox":
        ratio = min(width / image.width, height / image.height)
        scaled = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        if scaled != image.size:
            image = image.resize(scaled, resample)
        canvas = Image.new(mode, (width, height), spec.pad if mode == "L" else (spec.pad,) * 3)
        canvas.paste(image, ((width - scaled[0]) // 2, (height - scaled[1]) // 2))
        image = canvas
    elif image.size != (width, height):
        image = image.resize((width, height), resample)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.color == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.dtype == "uint8":
        tensor = np.ascontiguousarray(pixels)
    else:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        tensor = (pixels.astype(np.float32) * np.float32(spec.scale) - mean) / std
        tensor = tensor.astype(spec.dtype, copy=False)
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None])
