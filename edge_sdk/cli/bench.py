"""``edge-sdk bench [MODEL]``: latency percentiles and throughput on random inputs."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from edge_sdk.cli._common import (
    add_model_options,
    fallback_lines,
    load_model,
    positive_int,
)


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, positive_int(value)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="an .onnx file (default: the bundled model)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--runs", type=positive_int, metavar="N", help="timed runs (default 500)")
    group.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS", help="run for this long instead"
    )
    parser.add_argument(
        "--warmup", type=positive_int, default=10, metavar="N", help="untimed runs first (10)"
    )
    parser.add_argument(
        "--dim",
        type=_dim,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="size of a symbolic dimension (repeatable; default 1)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="use the fast path (pre-bound buffers) instead of run()",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(parser)


def _percentile(sorted_ms: list[float], q: float) -> float:
    # Nearest-rank on the sorted sample: a measured latency, never an interpolated one. The
    # rank is ceil(q% of n); round(x + 0.5) is not, as round() goes to even on exact halves.
    index = min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms) / 100) - 1))
    return sorted_ms[index]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edge_sdk import bundled

    model_path = Path(args.model) if args.model else bundled.model_path()
    dims = dict(args.dim)
    with load_model(args, model_path) as model:
        # example_inputs() ignores names it does not know: a typo would bench the default size.
        symbols = {d for spec in model.inputs for d in spec.shape if isinstance(d, str)}
        unknown = sorted(set(dims) - symbols)
        if unknown:
            print(
                f"edge-sdk bench: usage error: --dim {', '.join(unknown)}: the model has no such "
                f"symbolic dimension (it has: {', '.join(sorted(symbols)) or 'none'})",
                file=sys.stderr,
            )
            return 2
        feed = model.example_inputs(dims, random=True)
        if args.fast:
            runner = model.fast_runner(dims)
            runner.run(feed)

            def call() -> Any:
                return runner.run()

        else:

            def call() -> Any:
                return model.run(feed)

        for _ in range(args.warmup):
            call()
        limit_runs = args.runs if args.duration is None else None
        if limit_runs is None and args.duration is None:
            limit_runs = 500
        latencies: list[float] = []
        show = not args.no_progress and not args.json and sys.stderr.isatty()
        bar = tqdm(
            total=limit_runs if limit_runs else round(args.duration, 1),
            unit="run" if limit_runs else "s",
            disable=not show,
            file=sys.stderr,
            leave=False,
        )
        started = time.perf_counter()
        last_tick = started
        with bar:
            while True:
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                latencies.append((t1 - t0) * 1e3)
                if limit_runs:
                    bar.update(1)
                    if len(latencies) >= limit_runs:
                        break
                else:
                    if t1 - last_tick >= 0.1:
                        bar.update(round(t1 - last_tick, 1))
                        last_tick = t1
                    if t1 - started >= args.duration:
                        break
        elapsed = time.perf_counter() - started
        ordered = sorted(latencies)
        batch = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
        report: dict[str, Any] = {
            "model": str(model_path),
            "providers": list(model.providers),
            "fallbacks": [f"{f.provider}: {f.reason}" for f in model.fallbacks],
            "path": "fast" if args.fast else "run",
            "inputs": {name: list(value.shape) for name, value in feed.items()},
            "runs": len(latencies),
            "latency_ms": {
                "min": ordered[0],
                "p50": _percentile(ordered, 50),
                "p90": _percentile(ordered, 90),
                "p99": _percentile(ordered, 99),
                "max": ordered[-1],
                "mean": sum(ordered) / len(ordered),
            },
            "throughput_per_s": len(latencies) / elapsed,
            "items_per_s": len(latencies) * batch / elapsed,
        }
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        for line in fallback_lines(model):
            print(line, file=sys.stderr)
    lat = report["latency_ms"]
    shapes = ", ".join(f"{n}{tuple(s)}" for n, s in report["inputs"].items())
    print(f"model      {model_path}")
    print(f"providers  {', '.join(report['providers'])}   path: {report['path']}")
    print(f"inputs     {shapes}")
    print(f"runs       {report['runs']} in {elapsed:.2f} s")
    print(
        "latency    "
        + "  ".join(f"{k} {lat[k]:.3f}" for k in ("min", "p50", "p90", "p99", "max"))
        + "  ms"
    )
    print(
        f"throughput {report['throughput_per_s']:.1f} runs/s, {report['items_per_s']:.1f} items/s"
    )
    return 0
