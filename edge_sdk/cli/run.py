"""``edge-sdk run [MODEL] [INPUT ...]``: predictions with label, confidence and latency."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_sdk.cli._common import add_model_options, fallback_lines, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", help="an .onnx file (default: the bundled digits model)"
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files (through the model's preprocessing) or .npy arrays (fed as they are); "
        "default with the bundled model: its sample images",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_model_options(parser)


def _describe(result: Any) -> dict[str, Any]:
    import numpy as np

    from edge_sdk.postprocess import Classification, DetectionResult, SegmentationResult

    if isinstance(result, Classification):
        return {
            "label": result.label,
            "confidence": round(result.confidence, 6),
            "top": [{"label": c.label, "score": round(c.score, 6)} for c in result.top],
        }
    if isinstance(result, DetectionResult):
        return {
            "detections": [
                {
                    "label": d.label,
                    "score": round(d.score, 6),
                    "box": [round(v, 2) for v in d.box],
                }
                for d in result
            ]
        }
    if isinstance(result, SegmentationResult):
        classes, counts = np.unique(result.mask, return_counts=True)
        labels = result.labels
        return {
            "mask_shape": list(result.mask.shape),
            "pixels_per_class": {
                (labels[c] if labels is not None and c < len(labels) else str(c)): int(n)
                for c, n in zip(classes.tolist(), counts.tolist(), strict=True)
            },
        }
    return {
        "outputs": {
            name: {"shape": list(v.shape), "dtype": str(v.dtype)} for name, v in result.items()
        }
    }


def run(args: argparse.Namespace) -> int:
    from edge_sdk import bundled

    model_path = Path(args.model) if args.model else bundled.model_path()
    inputs = [Path(p) for p in args.inputs]
    if not inputs:
        if args.model:
            print(
                "edge-sdk run: usage error: give one or more INPUT files for MODEL",
                file=sys.stderr,
            )
            return 2
        inputs = bundled.sample_paths()
    rows: list[dict[str, Any]] = []
    with load_model(args, model_path) as model:
        model.warmup()  # report steady-state latency, not the first call's allocations
        first_image = next((p for p in inputs if p.suffix != ".npy"), None)
        if first_image is not None and model.preprocess_spec is not None:
            # The first predict() also imports Pillow and sets up its decoder (~20 ms).
            model.predict(first_image)
        for source in inputs:
            rows.extend(_predict_one(model, source))
        if args.json:
            document = {
                "model": str(model_path),
                "profile": model.profile.name if model.profile is not None else None,
                "providers": list(model.providers),
                "fallbacks": [
                    {"provider": f.provider, "kind": f.kind, "reason": f.reason}
                    for f in model.fallbacks
                ],
                "results": rows,
            }
            print(json.dumps(document, indent=2))
            return 0
        for line in fallback_lines(model):
            print(line, file=sys.stderr)
        print(f"model {model_path} on {', '.join(model.providers)}")
    width = max(len(r["input"]) for r in rows)
    for row in rows:
        if "label" in row:
            what = f"label {row['label']:<8} confidence {row['confidence']:.3f}"
        elif "detections" in row:
            what = f"{len(row['detections'])} detections " + ", ".join(
                f"{d['label']} {d['score']:.2f}" for d in row["detections"][:5]
            )
        elif "mask_shape" in row:
            what = f"mask {tuple(row['mask_shape'])}, classes {sorted(row['pixels_per_class'])}"
        else:
            what = "outputs " + ", ".join(
                f"{n}{tuple(o['shape'])}" for n, o in row["outputs"].items()
            )
        print(f"{row['input']:<{width}}  {what}  latency {row['latency_ms']:.3f} ms")
    return 0


def _predict_one(model: Any, source: Path) -> list[dict[str, Any]]:
    """One row per image; one row per batch item of an .npy array."""
    if source.suffix != ".npy":
        prediction = model.predict(source)
        row = {
            "input": str(source),
            **_describe(prediction.result),
            "latency_ms": round(prediction.times.total_ms, 4),
            "inference_ms": round(prediction.times.inference_ms, 4),
        }
        return [row]

    import time

    import numpy as np

    from edge_sdk.errors import PreprocessError
    from edge_sdk.postprocess import postprocess

    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreprocessError(f"cannot read array {str(source)!r}: {exc}") from exc
    start = time.perf_counter()
    outputs = model.run(array)
    latency = round((time.perf_counter() - start) * 1e3, 4)
    spec = model.postprocess_spec
    if spec is None:
        return [{"input": str(source), **_describe(outputs), "latency_ms": latency}]
    batch = next(iter(outputs.values())).shape[0] if array.ndim else 1
    rows = []
    for index in range(batch):
        item = {name: value[index : index + 1] for name, value in outputs.items()}
        result = postprocess(spec, item, model.metadata.labels)
        name = str(source) if batch == 1 else f"{source}[{index}]"
        rows.append({"input": name, **_describe(result), "latency_ms": latency})
    return rows
