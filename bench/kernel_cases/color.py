"""Benchmark cases for edge_sdk.kernels.color: camera frames (NV12) to RGB and to a tensor.

Cases (the first competitor is ours; ratios are per-round paired medians against the baseline):

- ``nv12 1080p -> rgb``: ``nv12_to_rgb`` against ``cv2.cvtColor(COLOR_YUV2RGB_NV12)``, both
  allocating their output (target: ours <= 1.0x cv2).
- ``nv12 1080p -> rgb, out=``: the same with a preallocated output for both (``out=`` /
  ``dst=``), which leaves out the page faults of a fresh 6 MB array (target: <= 1.0x).
- ``nv12 1080p -> 1x3x224x224``: the fused ``nv12_to_tensor`` (bilinear, ImageNet mean/std)
  against ``cv2.cvtColor`` + ``cv2.dnn.blobFromImageWithParams``, and our own two-step path
  (``nv12_to_rgb`` + ``image_to_tensor``) for comparison. No fixed target.

OpenCV runs with its default thread count (all cores), as an application would call it; the
RGB cases also time it with one thread. Our conversion shares its rows with the SDK's helper
thread (on by default); the fused tensor kernel runs on the calling thread. The
``__main__`` block runs each case idle and with ``busy_core()``, for kernel threads 1 and 2
(each with its own compile cache: numba's cache index ignores the ``parallel`` option).

Findings (2-core shared KVM guest, 2026-11-27; ratios against cv2 with all cores):

- Before the helper thread (edge_sdk/kernels/_share.py), with ``prange``: ``nv12 -> rgb``
  threads=1 1.43x idle, 0.91x busy; threads=2 0.66x idle, 0.92-0.97x busy. ``out=``: threads=1
  1.54x idle, 0.89x busy; threads=2 0.53-0.75x idle, but 0.49-1.94x busy (bimodal, p90 4-5 ms:
  the call waits for the worker thread's next time slice). ``numba.set_parallel_chunksize(1)``
  (dynamic chunks) did not remove that wait: the last chunk a descheduled worker holds still
  ends the loop.
- With the helper thread (32 row chunks claimed from an atomic counter; the caller never waits
  for a helper that has not started): ``nv12 -> rgb`` 0.94x idle, 0.49-0.53x busy (p90 1.3-1.7
  ms); ``out=`` 0.95-0.96x idle (at 1.0-1.1x the bandwidth floor), 0.61-0.92x busy. 16 chunks
  measured the same.

    python bench/kernel_cases/color.py [--quick] [--threads 1,2] [--rounds N]
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


def _nv12_frame(seed: int) -> np.ndarray:
    """A 1080p NV12 frame in OpenCV's (H * 3/2) x W layout: a smooth gradient plus noise and
    chroma near grey, so colours stay mostly in gamut like a camera's."""
    rng = np.random.default_rng(seed)
    frame = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)
    ramp = np.linspace(16, 235, WIDTH)[None, :] + np.linspace(0, 40, HEIGHT)[:, None]
    noise = rng.integers(-20, 21, (HEIGHT, WIDTH))
    frame[:HEIGHT] = np.clip(ramp + noise, 0, 255)
    frame[HEIGHT:] = rng.integers(96, 160, (HEIGHT // 2, WIDTH), dtype=np.uint8)
    return frame


def _nv12_pool() -> list[np.ndarray]:
    """Distinct frames, more than the last-level cache holds."""
    return pool_of(_nv12_frame, WIDTH * HEIGHT * 3 // 2)


def cases(quick: bool) -> list[Case]:
    import cv2

    from edge_sdk.kernels import color, image

    rounds = 15 if quick else 80
    rgb_out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    cv_out = np.empty((HEIGHT, WIDTH, 3), np.uint8)

    def rgb_bytes(frame: np.ndarray) -> int:
        return frame.size + HEIGHT * WIDTH * 3

    # Image2BlobParams' constructor keywords differ between OpenCV versions: set attributes.
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1.0 / (255.0 * s) for s in STD)
    params.size = (224, 224)
    params.mean = tuple(255.0 * m for m in MEAN)
    params.swapRB = False
    params.ddepth = cv2.CV_32F
    params.datalayout = cv2.DNN_LAYOUT_NCHW
    params.paddingmode = cv2.dnn.DNN_PMODE_NULL
    tensor_options: dict[str, Any] = {"mean": MEAN, "std": STD}

    default_threads = cv2.getNumThreads()
    cv_out1 = np.empty((HEIGHT, WIDTH, 3), np.uint8)

    def cv2_one_thread(frame: np.ndarray, dst: np.ndarray | None = None) -> Any:
        # Like for like with our threads=1 default (setNumThreads costs about 1 us).
        cv2.setNumThreads(1)
        try:
            return cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_NV12, dst=dst)
        finally:
            cv2.setNumThreads(default_threads)

    def cv2_tensor(frame: np.ndarray) -> Any:
        rgb = cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_NV12)
        return cv2.dnn.blobFromImageWithParams(rgb, params)

    def two_step(frame: np.ndarray) -> Any:
        rgb = color.nv12_to_rgb(frame, WIDTH, HEIGHT)
        return image.image_to_tensor(rgb, (224, 224), **tensor_options)

    # The fused tensor must be what OpenCV's pipeline gives, within its resize rounding.
    check = _nv12_frame(0)
    ours, _ = color.nv12_to_tensor(check, WIDTH, HEIGHT, (224, 224), **tensor_options)
    theirs = cv2_tensor(check)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 0.05

    return [
        Case(
            name="nv12 1080p -> rgb",
            make_pool=_nv12_pool,
            competitors={
                "ours nv12_to_rgb": lambda f: color.nv12_to_rgb(f, WIDTH, HEIGHT),
                "cv2.cvtColor": lambda f: cv2.cvtColor(f, cv2.COLOR_YUV2RGB_NV12),
                "cv2.cvtColor, 1 thread": cv2_one_thread,
            },
            baseline="cv2.cvtColor",
            targets=[Target("ours nv12_to_rgb", "cv2.cvtColor", 1.0)],
            bytes_touched=rgb_bytes,
            rounds=rounds,
        ),
        Case(
            name="nv12 1080p -> rgb, out=",
            make_pool=_nv12_pool,
            competitors={
                "ours nv12_to_rgb(out=)": lambda f: color.nv12_to_rgb(
                    f, WIDTH, HEIGHT, out=rgb_out
                ),
                "cv2.cvtColor(dst=)": lambda f: cv2.cvtColor(f, cv2.COLOR_YUV2RGB_NV12, dst=cv_out),
                "cv2.cvtColor(dst=), 1 thread": lambda f: cv2_one_thread(f, cv_out1),
            },
            baseline="cv2.cvtColor(dst=)",
            targets=[Target("ours nv12_to_rgb(out=)", "cv2.cvtColor(dst=)", 1.0)],
            bytes_touched=rgb_bytes,
            rounds=rounds,
        ),
        Case(
            name="nv12 1080p -> 1x3x224x224 f32",
            make_pool=_nv12_pool,
            competitors={
                "ours nv12_to_tensor (fused)": lambda f: color.nv12_to_tensor(
                    f, WIDTH, HEIGHT, (224, 224), **tensor_options
                ),
                "cv2 cvtColor+blobFromImageWithParams": cv2_tensor,
                "ours nv12_to_rgb+image_to_tensor": two_step,
            },
            baseline="cv2 cvtColor+blobFromImageWithParams",
            rounds=rounds,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", default="1,2", help="kernel thread counts to run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", help="run only cases whose name contains this text")
    args = parser.parse_args()

    from _harness import busy_core, copy_bandwidth, format_result, run_case

    from edge_sdk import kernels

    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    with tempfile.TemporaryDirectory(prefix="edge-sdk-color-bench-") as cache_root:
        for threads in (int(t) for t in args.threads.split(",")):
            # A cache directory per thread count: numba's cache index ignores the `parallel`
            # option, so a shared cache would hand the serial build to threads=2 (or back).
            kernels.configure(threads=threads, cache_dir=str(Path(cache_root, f"t{threads}")))
            for case in cases(args.quick):
                if args.only and args.only not in case.name:
                    continue
                for load in ("idle", "busy"):
                    label = f"{load}, kernel threads={threads}"
                    rounds = args.rounds
                    if load == "idle":
                        result = run_case(case, load=label, rounds=rounds, bandwidth=bandwidth)
                    else:
                        with busy_core():
                            result = run_case(case, load=label, rounds=rounds, bandwidth=bandwidth)
                    print(format_result(result), flush=True)


if __name__ == "__main__":
    main()
