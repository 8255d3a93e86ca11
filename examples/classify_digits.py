"""Classify images with the bundled digits model: the SDK's "hello world".

Loads the embedded model (its labels and preprocessing travel in its metadata), shows which
execution providers run and which were skipped, classifies the bundled held-out samples (or the
images given), then measures the plain and the fast path on a fixed-shape loop.

    python examples/classify_digits.py [IMAGE ...] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from edge_sdk import EdgeModel, SessionSettings, bundled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="images (default: bundled samples)")
    parser.add_argument("--quick", action="store_true", help="fewer timing runs (CI smoke)")
    args = parser.parse_args(argv)
    images = args.images or bundled.sample_paths()

    # One intra-op thread: a digit is tiny, and a second thread only adds hand-off cost.
    settings = SessionSettings(intra_op_threads=1)
    with EdgeModel.load(bundled.model_path(), settings=settings) as model:
        print(f"providers: {', '.join(model.providers)}")
        for fallback in model.fallbacks:
            print(f"  skipped {fallback.provider}: {fallback.reason}")
        print(f"inputs: {', '.join(map(str, model.inputs))}; labels: {model.metadata.labels}")

        model.warmup()
        correct = 0
        for path in images:
            prediction = model.predict(path)
            result = prediction.result
            expected = path.stem.split("_")[1] if path.stem.startswith("digit_") else None
            correct += expected == result.label
            print(
                f"{path.name:<20} -> {result.label} ({result.confidence:.1%}); "
                f"pre {prediction.times.preprocess_ms:.3f} ms, "
                f"model {prediction.times.inference_ms:.3f} ms"
            )
        if not args.images:
            print(f"{correct}/{len(images)} bundled samples classified as their file names say")

        runs = 200 if args.quick else 5000
        feed = model.example_inputs({"batch": 1}, random=True)
        runner = model.fast_runner({"batch": 1})
        runner.run(feed)
        plain, fast = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            model.run(feed)
            t1 = time.perf_counter()
            runner.run()
            t2 = time.perf_counter()
            plain.append(t1 - t0)
            fast.append(t2 - t1)
        print(
            f"median per call over {runs} runs: run() {statistics.median(plain) * 1e6:.1f} us, "
            f"fast path {statistics.median(fast) * 1e6:.1f} us"
        )
        if not args.images and correct != len(images):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
