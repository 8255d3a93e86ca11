"""Per-call overhead of ``EdgeModel`` over a bare onnxruntime session.

Competitors, all in one process on the same model and input:

- ``raw run``: ``InferenceSession.run(None, feed)``, the public onnxruntime API, on a session
  made with the same options EdgeModel uses (the baseline every ratio is taken against);
- ``raw run (A/A)``: the same on a second, identical session: the noise floor. Its ratio shows
  how far two sessions that should be equal drift apart on this machine;
- ``EdgeModel.run``: validation, error translation and the output dict on top of that;
- ``fast_runner``: ``EdgeModel.fast_runner().run()`` with the input written into the bound
  buffer once, before timing;
- ``ort iobinding``: onnxruntime's own ``run_with_iobinding`` with pre-bound OrtValues, a
  reference for what the fast path could cost.

Rounds are interleaved: each round times a block of K calls of every competitor, in an order
that rotates from round to round (balanced, so each competitor goes first and follows every
other one equally often), and a noisy neighbour slows all of them alike. The ratio
against ``raw run`` is taken per round (paired), then summarised, which cancels most of the
drift a shared machine adds between rounds.

    python bench/runtime_overhead.py                 # full run, about 20 s
    python bench/runtime_overhead.py --quick         # CI smoke, a few seconds
    python bench/runtime_overhead.py --check --json results.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_sdk import bundled
from edge_sdk.runtime import EdgeModel, SessionSettings

RAW = "raw run"
RAW_AA = "raw run (A/A)"
EDGE = "EdgeModel.run"
FAST = "fast_runner"
IOBINDING = "ort iobinding"


@dataclass(frozen=True)
class Case:
    """One model to benchmark and how long to run it."""

    key: str
    title: str
    rounds: int
    quick_rounds: int


# Rounds are a multiple of 10, the length of the balanced order cycle for five competitors.
CASES = {
    case.key: case
    for case in (
        Case("tiny", "tiny MLP 1x64 (MatMul+Add+Relu)", rounds=300, quick_rounds=60),
        Case("digits", "bundled digits CNN, batch 1x1x8x8", rounds=300, quick_rounds=60),
        Case("conv", "conv net 1x3x224x224", rounds=120, quick_rounds=30),
    )
}

# Blocks of about 5 ms: long enough that perf_counter resolution and the loop around the
# calls are negligible, short enough that a scheduler hiccup spoils one sample, not the run.
BLOCK_SECONDS = 0.005
QUICK_BLOCK_SECONDS = 0.002


@dataclass(frozen=True)
class Target:
    """A limit on the median paired ratio ``competitor / raw run`` for one model."""

    case: str
    competitor: str
    limit: float


TARGETS = (
    Target("tiny", EDGE, 1.25),
    Target("conv", EDGE, 1.02),
    Target("tiny", FAST, 1.00),
)


@dataclass
class Stats:
    median_us: float
    p90_us: float
    ratio_median: float
    ratio_p90: float
    samples_us: list[float] = field(repr=False)


@dataclass
class CaseResult:
    case: Case
    calls_per_block: int
    rounds: int
    stats: dict[str, Stats]
    verdicts: list[tuple[Target, float, bool]]


# -- models and competitors ------------------------------------------------------------------


def _test_models() -> ModuleType:
    """tests/_models.py builds the small ONNX models; it is not an installed module."""
    tests_dir = Path(__file__).resolve().parent.parent / "tests"
    if str(tests_dir) not in sys.path:
        sys.path.insert(0, str(tests_dir))
    return importlib.import_module("_models")


def _model_source(key: str) -> tuple[str | bytes, tuple[int, ...]]:
    """The model (bytes or a path) and the shape of its single float32 input."""
    if key == "tiny":
        return _test_models().tiny_mlp(), (1, 64)
    if key == "digits":
        return str(bundled.model_path()), (1, 1, 8, 8)
    if key == "conv":
        return _test_models().conv_net(size=224), (1, 3, 224, 224)
    raise ValueError(f"unknown model {key!r}")


def raw_session_options(settings: SessionSettings) -> ort.SessionOptions:
    """The options EdgeModel derives from ``settings``, built with the public API only, so the
    baseline is what a user would write by hand, not the SDK's own code path. Graph
    optimisation "all" and sequential execution are the SessionSettings defaults used here."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    spin = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = settings.enable_memory_arena
    options.enable_mem_pattern = settings.enable_memory_pattern
    options.log_severity_level = settings.log_severity
    return options


@dataclass
class Setup:
    """Everything the timed calls touch, kept alive for the whole case."""

    calls: dict[str, Callable[[], object]]
    reference: np.ndarray
    outputs: dict[str, Callable[[], np.ndarray]]
    keep_alive: list[Any]


def build_competitors(key: str, threads: int) -> Setup:
    source, shape = _model_source(key)
    settings = SessionSettings(intra_op_threads=threads)
    model = EdgeModel.load(source, settings=settings, providers=["CPUExecutionProvider"])
    session, twin = (
        ort.InferenceSession(
            source, sess_options=raw_session_options(settings), providers=["CPUExecutionProvider"]
        )
        for _ in range(2)
    )
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {input_name: x}
    reference: np.ndarray = np.asarray(session.run(None, feed)[0])

    runner = model.fast_runner()
    runner.inputs[input_name][:] = x

    binding = session.io_binding()
    x_value = ort.OrtValue.ortvalue_from_numpy(x)
    out_buffer = np.empty_like(reference)
    out_value = ort.OrtValue.ortvalue_from_numpy(out_buffer)
    binding.bind_ortvalue_input(input_name, x_value)
    binding.bind_ortvalue_output(output_name, out_value)

    def iobinding_output() -> np.ndarray:
        session.run_with_iobinding(binding)
        return out_buffer

    # Every competitor is a lambda, so each pays the same one extra Python call in the loop.
    calls: dict[str, Callable[[], object]] = {
        RAW: lambda: session.run(None, feed),
        RAW_AA: lambda: twin.run(None, feed),
        EDGE: lambda: model.run(feed),
        FAST: lambda: runner.run(),  # noqa: PLW0108 (same call depth as the others)
        IOBINDING: lambda: session.run_with_iobinding(binding),
    }
    outputs: dict[str, Callable[[], np.ndarray]] = {
        RAW: lambda: np.asarray(session.run(None, feed)[0]),
        RAW_AA: lambda: np.asarray(twin.run(None, feed)[0]),
        EDGE: lambda: model.run(feed)[output_name],
        FAST: lambda: runner.run()[output_name],
        IOBINDING: iobinding_output,
    }
    return Setup(
        calls, reference, outputs, [model, session, twin, runner, binding, x_value, out_value]
    )


def check_outputs(setup: Setup) -> None:
    """A competitor that returns the wrong thing is not faster, it is broken."""
    for name, output in setup.outputs.items():
        got = output()
        if not np.allclose(got, setup.reference, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{name} disagrees with the raw session's output")


# -- timing ----------------------------------------------------------------------------------


def _time_calls(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - start


def calls_per_block(call: Callable[[], object], block_seconds: float) -> int:
    """K such that K calls take about ``block_seconds`` on a quiet machine."""
    n = 1
    while _time_calls(call, n) < block_seconds / 4 and n < 1 << 20:
        n *= 2
    # The fastest of a few tries: one hiccup must not shrink K for the whole run.
    elapsed = min(_time_calls(call, n) for _ in range(3))
    return max(1, round(block_seconds * n / elapsed))


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)`` in which each item goes first equally often and follows every
    other item equally often (a Williams design). Plain rotation keeps the cyclic order, so
    each competitor would always run right after the same neighbour and inherit its effects."""
    base = [0]
    for step in range(1, n):
        base.append((step + 1) // 2 if step % 2 else n - step // 2)
    orders = [[(b + shift) % n for b in base] for shift in range(n)]
    if n % 2:  # odd n needs the mirrored rows too for every ordered pair to occur
        orders += [order[::-1] for order in orders]
    return orders


def interleaved_rounds(
    calls: dict[str, Callable[[], object]], k: int, rounds: int
) -> dict[str, list[float]]:
    """Per-call time in microseconds, one sample per competitor per round."""
    names = list(calls)
    orders = balanced_orders(len(names))
    samples: dict[str, list[float]] = {name: [] for name in names}
    perf_counter_ns = time.perf_counter_ns
    for round_index in range(rounds):
        for index in orders[round_index % len(orders)]:
            name = names[index]
            call = calls[name]
            # One untimed call first: competitors on different sessions use different buffers,
            # and on the conv model a block's first call would otherwise refill the cache the
            # previous competitor evicted (about 1 % in an A/A comparison, following the order).
            call()
            start = perf_counter_ns()
            for _ in range(k):
                call()
            samples[name].append((perf_counter_ns() - start) / k / 1e3)
    return samples


def summarise(samples: dict[str, list[float]], baseline: str = RAW) -> dict[str, Stats]:
    raw = np.asarray(samples[baseline])
    stats = {}
    for name, values in samples.items():
        times = np.asarray(values)
        ratios = times / raw  # paired: the same round's raw time, under the same noise
        stats[name] = Stats(
            median_us=float(np.median(times)),
            p90_us=float(np.percentile(times, 90)),
            ratio_median=float(np.median(ratios)),
            ratio_p90=float(np.percentile(ratios, 90)),
            samples_us=[round(v, 4) for v in values],
        )
    return stats


def run_case(case: Case, threads: int, quick: bool) -> CaseResult:
    setup = build_competitors(case.key, threads)
    check_outputs(setup)
    block = QUICK_BLOCK_SECONDS if quick else BLOCK_SECONDS
    k = calls_per_block(setup.calls[RAW], block)
    # Warm-up: first calls allocate arenas and pick kernels; none of that is per-call cost.
    interleaved_rounds(setup.calls, k, 2)
    rounds = case.quick_rounds if quick else case.rounds
    # Collect now so a collection of the set-up garbage does not land inside a block. The
    # calls themselves free what they allocate, so the collector stays on, as in a real loop.
    gc.collect()
    stats = summarise(interleaved_rounds(setup.calls, k, rounds))
    verdicts = [
        (t, stats[t.competitor].ratio_median, stats[t.competitor].ratio_median <= t.limit)
        for t in TARGETS
        if t.case == case.key
    ]
    return CaseResult(case, k, rounds, stats, verdicts)


# -- reporting -------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": threads,
        "allow_spinning": False,
        "load_average": None if load is None else [round(v, 2) for v in load],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def print_environment(env: dict[str, Any]) -> None:
    print(
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, Python {env['python']}\n"
        f"CPU: {env['cpu']} x {env['cpu_count']} ({env['platform']})\n"
        f"intra-op threads: {env['intra_op_threads']}, spinning off, "
        f"load average: {env['load_average']}"
    )


def print_case(result: CaseResult) -> None:
    case = result.case
    print(
        f"\n== {case.key}: {case.title} | {result.calls_per_block} calls/block, "
        f"{result.rounds} rounds =="
    )
    print(f"{'competitor':<16}{'median us':>11}{'p90 us':>10}{'ratio med':>11}{'ratio p90':>11}")
    for name, s in result.stats.items():
        print(
            f"{name:<16}{s.median_us:>11.2f}{s.p90_us:>10.2f}"
            f"{s.ratio_median:>11.3f}{s.ratio_p90:>11.3f}"
        )
    for target, ratio, ok in result.verdicts:
        verdict = "PASS" if ok else "FAIL"
        limit = f"{target.competitor} / {RAW} median <= {target.limit}"
        print(f"  target {limit}: {ratio:.3f} {verdict}")


def to_json(env: dict[str, Any], results: Sequence[CaseResult]) -> dict[str, Any]:
    return {
        "environment": env,
        "models": {
            r.case.key: {
                "title": r.case.title,
                "calls_per_block": r.calls_per_block,
                "rounds": r.rounds,
                "competitors": {
                    name: {
                        "median_us": s.median_us,
                        "p90_us": s.p90_us,
                        "ratio_median": s.ratio_median,
                        "ratio_p90": s.ratio_p90,
                        "samples_us": s.samples_us,
                    }
                    for name, s in r.stats.items()
                },
                "targets": [
                    {
                        "competitor": t.competitor,
                        "limit": t.limit,
                        "ratio_median": ratio,
                        "pass": ok,
                    }
                    for t, ratio, ok in r.verdicts
                ],
            }
            for r in results
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test for CI")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write results as JSON")
    # One intra-op thread by default: onnxruntime then runs the graph on the calling thread,
    # with no hand-off to a pool whose wake-up latency a shared 2-core machine makes erratic.
    # That noise would swamp the microseconds of wrapper overhead this benchmark is about.
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument(
        "--models",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if any target fails")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in CASES]
    if unknown or not args.models:
        parser.error(f"--models takes a subset of {','.join(CASES)}, got {unknown or 'nothing'}")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment(args.threads)
    print_environment(env)
    results = []
    for key in args.models:
        result = run_case(CASES[key], args.threads, args.quick)
        print_case(result)
        results.append(result)
    failed = [t for r in results for t, _, ok in r.verdicts if not ok]
    print(f"\n{'all targets met' if not failed else f'{len(failed)} target(s) FAILED'}")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(env, results), indent=2) + "\n")
        print(f"results written to {args.json}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
