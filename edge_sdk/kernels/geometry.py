"""How a source image maps onto a model's input tensor, and back.

``tensor_xy = source_xy * scale + pad`` per axis. Letterboxing keeps one scale for both axes and
pads the short side; a centre crop has one scale and negative pads; a plain resize has two
scales and no pad. Detections are mapped back with ``to_source``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """The affine map from source pixel coordinates to tensor coordinates."""

    source_width: int
    source_height: int
    tensor_width: int
    tensor_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        return cls(width, height, width, height, 1.0, 1.0, 0.0, 0.0)

    def to_source(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map [N, 4] x1, y1, x2, y2 boxes from tensor to source coordinates, clipped to the
        source image. Returns a new float32 array."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, self.source_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.source_height, out=out[:, 1::2])
        return out
