"""Benchmark cases for edge_sdk.kernels.image: a 1080p RGB frame to a model's input tensor.

Cases (the first competitor is ours; ratios are per-round paired medians against the baseline):

- ``rgb 1080p -> 1x3x224x224 imagenet``: bilinear (half-pixel), no crop, ImageNet mean/std,
  float32 NCHW, each competitor returning a new tensor. Baseline
  ``cv2.dnn.blobFromImageWithParams`` with the equivalent parameters: it computes
  ``(pixel - mean) * scalefactor`` per channel (Image2BlobParams docs), so ``mean = 255 *
  mean`` and ``scalefactor = 1 / (255 * std)``. Also ``cv2.resize`` (INTER_LINEAR) + NumPy
  normalise/transpose, and Pillow's BILINEAR resize + NumPy (Pillow antialiases on downscale,
  so it is a different, slower filter). Target: ours <= 0.70x blobFromImageWithParams, and
  within 3x of the bandwidth floor.
- ``rgb 1080p -> 1x3x640x640 letterbox``: letterbox (pad 114), ``/ 255``, float32 NCHW into a
  preallocated tensor. Baseline ``cv2.resize into pre-padded buffer``: a 640x640x3 uint8
  buffer filled with the pad once, ``cv2.resize`` of the frame into its centre view
  (``dst=``), ``cv2.split`` into three preallocated planes and ``np.multiply(plane, 1/255,
  out=tensor[0, c])`` per plane: the fastest of the NumPy/cv2 variants tried (a
  ``np.multiply`` over ``buffer.transpose(2, 0, 1)`` was about 15 % slower, ``cv2.dnn``'s own
  letterbox mode about 3x). Target: ours <= 0.85x.

Bandwidth floor (the harness divides by a measured memcpy bandwidth, read + write counted):
the bytes of the source rows the kernel must read (rows with a non-zero bilinear weight: 448
rows for 1080 -> 224, 360 for the letterbox, whose exact 3x scale samples one row per output
row), whole rows because cache lines span them, plus every byte of the output tensor.

OpenCV runs with its default thread count (all cores), as an application would call it; ours
runs with the JIT settings' thread count (``--threads``, each in its own compile cache: numba's
cache index does not tell a ``parallel=True`` build from a serial one). blobFromImageWithParams
took the same time with ``cv2.setNumThreads(1)``: its resize is about 0.4x of it, the rest its
float conversion, mean subtraction and channel split.

Findings (2-core shared KVM guest, 2026-11-27, pool 450 MiB; ratios are paired medians):

- 224 imagenet, threads=1, with the 8-byte vector taps (image.py ``_bilinear_px3``), a
  prefetch two rows ahead and the cached call plan: 0.67-0.69x idle, 0.67-0.69x busy;
  1.3-1.6x the floor. The steps from 1.05-1.16x: FMA contraction in the blend (0.04), the
  vector taps (0.25: one unaligned load per tap pair and row instead of six byte loads, lanes
  blended together), the prefetch (0.05), the plan cache (0.03: the wrapper's Python costs
  about 10 us warm, 25-30 us in the cold state this benchmark leaves it in).
- Before them (scalar taps; numba cannot emit gathers or vector loads at unaligned offsets
  from Python): blend two whole 5760-byte source rows (SIMD), then 150k scalar tap lerps,
  about 300 us of compute even with the rows in L1. Tried then, none kept: blending only the
  tap columns through a byte gather (0.98-1.02x), two output rows per pass (1.13-1.29x
  slower), numba.set_parallel_chunksize with threads=2 (the call still waits for a
  descheduled worker: 1.20x busy).
- Sharing the 224 rows with the helper thread (edge_sdk/kernels/_share.py), as the colour
  conversions do: 0.66x idle but 0.87x busy (a 0.4 ms call is too short: the woken helper
  competes with the caller for the one free core), so it stays on the calling thread.
- letterbox 640, threads=1: 0.55-0.75x idle, 0.54-0.62x busy (an exact 3x scale: one source
  row and one tap per output pixel, the scalar path).

    python bench/kernel_cases/image.py [--quick] [--threads N] [--rounds N] [--no-busy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import Case, Target, pool_of

WIDTH, HEIGHT = 1920, 1080
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD = 114


def _frame_pool(quick: bool) -> list[np.ndarray]:
    """Distinct 1080p RGB frames, together larger than the last-level cache (fewer if quick)."""

    def make(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        ramp = np.linspace(0, 200, WIDTH)[None, :, None] + np.linspace(0, 40, HEIGHT)[:, None, None]
        noise = rng.integers(-15, 16, (HEIGHT, WIDTH, 3))
        return np.clip(ramp + noise, 0, 255).astype(np.uint8)

    if quick:
        return [make(i) for i in range(4)]
    return pool_of(make, WIDTH * HEIGHT * 3)


def _sampled_rows_bytes(frame: np.ndarray, size: tuple[int, int], crop: str) -> int:
    """Bytes of the distinct source rows with a non-zero vertical weight (whole rows)."""
    from edge_sdk.kernels import image

    _, new_h, _, pad_y = image._content_box(WIDTH, HEIGHT, size, crop)
    weights, _ = image._axis_weights_reference("bilinear", HEIGHT, size[1], new_h, pad_y)
    rows = int(np.count_nonzero(np.any(weights != 0, axis=0)))
    return rows * frame.shape[1] * frame.shape[2]


def _check(name: str, got: np.ndarray, expected: np.ndarray, atol: float) -> None:
    worst = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if got.shape != expected.shape or worst > atol:
        raise AssertionError(f"{name}: differs from the baseline by {worst} (allowed {atol})")


def cases(quick: bool) -> list[Case]:
    import cv2
    from PIL import Image

    from edge_sdk.kernels.image import image_to_tensor

    rounds = 15 if quick else 80
    mean32 = np.array(MEAN, np.float32)
    std32 = np.array(STD, np.float32)

    # --- case 1: 1080p -> 224x224, ImageNet normalisation --------------------------------
    # Image2BlobParams' constructor keywords differ between OpenCV versions: set attributes.
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1.0 / (255.0 * s) for s in STD)
    params.size = (224, 224)
    params.mean = tuple(255.0 * m for m in MEAN)
    params.swapRB = False
    params.ddepth = cv2.CV_32F
    params.datalayout = cv2.DNN_LAYOUT_NCHW
    params.paddingmode = cv2.dnn.DNN_PMODE_NULL
    gain = (1.0 / (255.0 * std32)).astype(np.float32)
    bias = (-mean32 / std32).astype(np.float32)

    def ours_224(frame: np.ndarray) -> np.ndarray:
        return image_to_tensor(frame, (224, 224), mean=MEAN, std=STD)[0]

    def blob_224(frame: np.ndarray) -> Any:
        return cv2.dnn.blobFromImageWithParams(frame, params)

    def cv2_numpy_224(frame: np.ndarray) -> np.ndarray:
        resized = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_LINEAR)
        values = resized.astype(np.float32)
        values *= gain
        values += bias
        return np.ascontiguousarray(values.transpose(2, 0, 1))[None]

    def pil_numpy_224(frame: np.ndarray) -> np.ndarray:
        resized = np.asarray(Image.fromarray(frame).resize((224, 224), Image.BILINEAR))
        values = resized.astype(np.float32)
        values *= gain
        values += bias
        return np.ascontiguousarray(values.transpose(2, 0, 1))[None]

    probe = _frame_pool(True)[0]
    expected = blob_224(probe)
    # OpenCV rounds its resize to integers: up to about 1 level (1 / (255 * 0.224) here).
    _check("ours", ours_224(probe), expected, 0.02)
    _check("cv2.resize + numpy", cv2_numpy_224(probe), expected, 1e-5)

    def bytes_224(frame: np.ndarray) -> int:
        return _sampled_rows_bytes(frame, (224, 224), "none") + 3 * 224 * 224 * 4

    imagenet = Case(
        name="rgb 1080p -> 1x3x224x224 imagenet",
        make_pool=lambda: _frame_pool(quick),
        competitors={
            "ours": ours_224,
            "cv2.dnn.blobFromImageWithParams": blob_224,
            "cv2.resize + numpy": cv2_numpy_224,
            "PIL BILINEAR + numpy": pil_numpy_224,
        },
        baseline="cv2.dnn.blobFromImageWithParams",
        targets=[Target("ours", "cv2.dnn.blobFromImageWithParams", 0.70)],
        bytes_touched=bytes_224,
        rounds=rounds,
    )

    # --- case 2: 1080p -> 640x640 letterbox, / 255 ---------------------------------------
    size = 640
    scale = min(size / WIDTH, size / HEIGHT)
    new_w, new_h = round(WIDTH * scale), round(HEIGHT * scale)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = np.full((size, size, 3), PAD, np.uint8)
    centre = padded[top : top + new_h, left : left + new_w]
    planes = [np.empty((size, size), np.uint8) for _ in range(3)]
    cv_tensor = np.empty((1, 3, size, size), np.float32)
    our_tensor = np.empty((1, 3, size, size), np.float32)
    inv255 = np.float32(1 / 255)

    def ours_letterbox(frame: np.ndarray) -> np.ndarray:
        return image_to_tensor(frame, (size, size), crop="letterbox", pad=PAD, out=our_tensor)[0]

    def cv2_prepadded(frame: np.ndarray) -> np.ndarray:
        cv2.resize(frame, (new_w, new_h), dst=centre, interpolation=cv2.INTER_LINEAR)
        cv2.split(padded, planes)
        for c in range(3):
            np.multiply(planes[c], inv255, out=cv_tensor[0, c])
        return cv_tensor

    lb_params = cv2.dnn.Image2BlobParams()
    lb_params.scalefactor = (1 / 255, 1 / 255, 1 / 255, 0.0)
    lb_params.size = (size, size)
    lb_params.ddepth = cv2.CV_32F
    lb_params.datalayout = cv2.DNN_LAYOUT_NCHW
    lb_params.paddingmode = cv2.dnn.DNN_PMODE_LETTERBOX
    lb_params.borderValue = (PAD, PAD, PAD, 0)

    def blob_letterbox(frame: np.ndarray) -> Any:
        return cv2.dnn.blobFromImageWithParams(frame, lb_params)

    expected = cv2_prepadded(probe).copy()
    _check("ours", ours_letterbox(probe), expected, 1e-6)  # exact 3x: no rounding anywhere
    _check("blobFromImageWithParams letterbox", blob_letterbox(probe), expected, 1e-6)

    def bytes_letterbox(frame: np.ndarray) -> int:
        return _sampled_rows_bytes(frame, (size, size), "letterbox") + 3 * size * size * 4

    letterbox = Case(
        name="rgb 1080p -> 1x3x640x640 letterbox",
        make_pool=lambda: _frame_pool(quick),
        competitors={
            "ours": ours_letterbox,
            "cv2.resize into pre-padded buffer": cv2_prepadded,
            "cv2.dnn letterbox (blob...Params)": blob_letterbox,
        },
        baseline="cv2.resize into pre-padded buffer",
        targets=[Target("ours", "cv2.resize into pre-padded buffer", 0.85)],
        bytes_touched=bytes_letterbox,
        rounds=rounds,
    )
    return [imagenet, letterbox]


def main(argv: list[str] | None = None) -> int:
    from _harness import busy_core, copy_bandwidth, format_result, run_case

    from edge_sdk.kernels import configure

    parser = argparse.ArgumentParser(description="image kernel benchmarks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="our kernels' thread count")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-busy", action="store_true")
    parser.add_argument("--only", default="", help="run cases whose name contains this")
    args = parser.parse_args(argv)
    # numba's cache index does not record parallel=True/False: a kernel cached by a
    # single-threaded run is loaded, serial, by a threads=2 run (and vice versa). A private
    # cache per thread count keeps the two apart.
    cache = Path(tempfile.gettempdir()) / f"edge-sdk-bench-image-threads{args.threads}"
    configure(threads=args.threads, cache_dir=cache)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; our threads: {args.threads}")
    selected = [c for c in cases(args.quick) if args.only in c.name]
    for load in ["idle"] if args.no_busy else ["idle", "second core busy"]:
        for case in selected:
            if load == "idle":
                result = run_case(case, load=load, rounds=args.rounds, bandwidth=bandwidth)
            else:
                with busy_core():
                    result = run_case(case, load=load, rounds=args.rounds, bandwidth=bandwidth)
            print(format_result(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
