"""A camera-to-detections pipeline with the SDK's kernels, no OpenCV needed.

A 1080p NV12 frame (what a Raspberry Pi or Jetson camera delivers) goes straight into a
letterboxed 640x640 float32 tensor in one pass; a YOLOv8-style output is decoded, filtered by
class-aware NMS and mapped back to camera pixels. The model output here is synthetic (a few
objects with overlapping candidate boxes) so the example runs anywhere; with a real detector,
``EdgeModel.predict(RawFrame(...))`` does the same from the model's own metadata.

    python examples/camera_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from edge_sdk.kernels import color, detect, jit_available
from edge_sdk.kernels.geometry import Geometry

WIDTH, HEIGHT, SIZE = 1920, 1080, 640


def synthetic_nv12(seed: int) -> np.ndarray:
    """A frame with smooth gradients in Y and chroma, as a flat NV12 buffer."""
    rng = np.random.default_rng(seed)
    y = (np.add.outer(np.arange(HEIGHT) // 5, np.arange(WIDTH) // 9) % 220 + 16).astype(np.uint8)
    uv = rng.integers(64, 192, size=(HEIGHT // 2, WIDTH), dtype=np.uint8)
    return np.concatenate([y.ravel(), uv.ravel()])


def synthetic_yolov8(geometry: Geometry, seed: int) -> np.ndarray:
    """A [1, 84, 8400] output: mostly background, a cluster of candidates per object."""
    rng = np.random.default_rng(seed)
    output = np.zeros((1, 84, 8400), np.float32)
    output[0, 4:] = rng.uniform(0, 0.05, size=(80, 8400))
    objects = [(400, 300, 220, 380, 0), (1200, 600, 300, 200, 2), (1500, 250, 120, 120, 16)]
    anchor = 0
    for cx, cy, w, h, cls in objects:  # in camera pixels, mapped into the tensor
        for _ in range(12):
            jitter = rng.normal(0, 1.5, size=4)
            output[0, 0, anchor] = cx * geometry.scale_x + geometry.pad_x + jitter[0]
            output[0, 1, anchor] = cy * geometry.scale_y + geometry.pad_y + jitter[1]
            output[0, 2, anchor] = w * geometry.scale_x + jitter[2]
            output[0, 3, anchor] = h * geometry.scale_y + jitter[3]
            output[0, 4 + cls, anchor] = rng.uniform(0.5, 0.95)
            anchor += 1
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few frames only (CI smoke)")
    args = parser.parse_args(argv)
    frames = [synthetic_nv12(seed) for seed in range(3 if args.quick else 12)]
    print(f"numba JIT: {'on' if jit_available() else 'off (plain-Python fallback)'}")

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    tensor, geometry = color.nv12_to_tensor(
        frames[0], WIDTH, HEIGHT, (SIZE, SIZE), crop="letterbox", mean=mean, std=std
    )  # first call: compiles, or loads from the kernel cache
    print(
        f"tensor {tensor.shape} {tensor.dtype}; letterbox scale {geometry.scale_x:.4f}, "
        f"pad ({geometry.pad_x:.0f}, {geometry.pad_y:.0f})"
    )
    detect.decode_yolov8(synthetic_yolov8(geometry, 0), geometry=geometry)

    outputs = [synthetic_yolov8(geometry, seed) for seed in range(len(frames))]
    pre, post = [], []
    for frame, output in zip(frames, outputs, strict=True):
        t0 = time.perf_counter()
        color.nv12_to_tensor(
            frame, WIDTH, HEIGHT, (SIZE, SIZE), crop="letterbox", mean=mean, std=std, out=tensor
        )
        t1 = time.perf_counter()
        found = detect.decode_yolov8(output, conf_threshold=0.25, geometry=geometry)
        t2 = time.perf_counter()
        pre.append(t1 - t0)
        post.append(t2 - t1)
    print(f"NV12 1080p -> letterboxed tensor: median {statistics.median(pre) * 1e3:.2f} ms")
    print(f"YOLOv8 decode + NMS (1x84x8400):  median {statistics.median(post) * 1e3:.2f} ms")
    for box, score, cls in zip(found.boxes, found.scores, found.class_ids, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        print(f"  class {int(cls):>2} score {float(score):.2f} box ({x1}, {y1}) - ({x2}, {y2})")
    if len(found) != 3:
        print(f"expected 3 objects after NMS, found {len(found)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
