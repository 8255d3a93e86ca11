"""Quantise the bundled digits model to int8 and compare its accuracy with the float model.

The held-out digits (tests/data/digits_holdout.npz, 360 images of scikit-learn's 8x8 digits
that the model never trained on) are split in two disjoint parts: the first part is written as
PNG files and used to calibrate, exactly as a user would point ``edge-sdk optimize`` at a folder
of images; the rest is only ever used to measure accuracy, fp32 against int8.

    python examples/quantize_digits.py [--profile NAME] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edge_sdk import EdgeModel, SessionSettings, bundled
from edge_sdk.optimize import optimize_model
from edge_sdk.profiles import detect

HOLDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_holdout.npz"


def accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy through ``predict``: the model's own preprocessing and labels."""
    settings = SessionSettings(intra_op_threads=1)
    with EdgeModel.load(model_path, settings=settings, providers=["CPUExecutionProvider"]) as model:
        predicted = [model.predict(image).result.label for image in images]
    return float(np.mean(np.array(predicted) == labels.astype(str)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", default="auto", help="device profile to quantise for (default: this machine)"
    )
    parser.add_argument(
        "--calibration-images", type=int, default=200, help="held-out images used to calibrate"
    )
    parser.add_argument("--quick", action="store_true", help="fewer images and timing rounds (CI)")
    args = parser.parse_args(argv)
    profile = detect().profile if args.profile == "auto" else args.profile
    count = 100 if args.quick else args.calibration_images

    data = np.load(HOLDOUT)
    images, labels = data["images"], data["labels"]
    if not 0 < count < len(images):
        parser.error(f"--calibration-images must be 1..{len(images) - 1}")
    evaluation_images, evaluation_labels = images[count:], labels[count:]

    with tempfile.TemporaryDirectory(prefix="quantize-digits-") as work:
        calibration = Path(work) / "calibration"
        calibration.mkdir()
        for index, image in enumerate(images[:count]):
            Image.fromarray(image).save(calibration / f"digit_{labels[index]}_{index:03d}.png")
        evaluation = Path(work) / "evaluation.npz"
        np.savez(evaluation, images=evaluation_images)
        quantized = Path(work) / "digits.int8.onnx"

        start = time.perf_counter()
        report = optimize_model(
            bundled.model_path(),
            quantized,
            profile=profile,
            int8=True,
            calibration=calibration,
            validation=evaluation,
            latency_rounds=6 if args.quick else 40,
        )
        elapsed = time.perf_counter() - start
        assert report.quantization is not None
        print(f"profile {report.profile}: {report.quantization.target} recipe ({elapsed:.1f} s)")
        for step in report.steps:
            print(f"  {step}")
        print(
            f"size {report.size_before / 1024:.1f} KiB -> {report.size_after / 1024:.1f} KiB; "
            f"calibrated on {count} PNG files, evaluated on {len(evaluation_labels)} other images"
        )
        fp32 = accuracy(bundled.model_path(), evaluation_images, evaluation_labels)
        int8 = accuracy(quantized, evaluation_images, evaluation_labels)
        print(f"accuracy fp32 {fp32:.2%}, int8 {int8:.2%}")
        print(f"top-1 agreement int8 vs fp32 {report.top1_agreement:.2%}")
        latency = report.latency
        if latency is not None:
            print(
                f"latency int8 / fp32 on this host: {latency.ratio:.2f} "
                f"({latency.before_ms * 1e3:.1f} us -> {latency.after_ms * 1e3:.1f} us per call)"
            )
    return 0 if int8 >= 0.96 else 1


if __name__ == "__main__":
    raise SystemExit(main())
