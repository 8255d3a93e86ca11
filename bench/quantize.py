"""fp32 against int8 latency on this CPU, for models quantised by ``edge_sdk.optimize``.

Models: the bundled digits CNN (1x1x8x8), calibrated on the held-out digits
(tests/data/digits_holdout.npz, through the model's own preprocessing), and the conv net of
bench/runtime_overhead.py (tests/_models.py ``conv_net``, 1x3x224x224, random weights),
calibrated on random inputs of its shape. Both are quantised for this host's device profile
(QDQ int8; on x86-64 uint8 activations, int8 per-channel weights with a 7-bit range).

Competitors, all ``EdgeModel.run`` in one process on the same input:

- ``fp32``: the original model (the baseline every ratio is taken against);
- ``fp32 (A/A)``: a second session of the same model, the noise floor;
- ``int8``: the quantised model, per-channel weights (the default recipe);
- ``int8 per-tensor``: the same with one scale per weight tensor.

Rounds are interleaved: each round times a block of K calls of every competitor in a balanced
order (each goes first and follows every other equally often), and the ratio to ``fp32`` is
taken per round (paired) before the median, which cancels most of a shared machine's drift.
onnxruntime fuses each DequantizeLinear -> op -> QuantizeLinear group into an integer kernel
(QLinearConv, QGemm) when the session is created; what is left as Q/DQ costs extra passes, which
is why a model as small as the digits CNN can be slower in int8.

    python bench/quantize.py                    # full run, about 10 s
    python bench/quantize.py --quick            # CI smoke, a few seconds
    python bench/quantize.py --json results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The interleaving and reporting helpers are shared with the runtime overhead benchmark.
from runtime_overhead import (
    Case,
    Stats,
    balanced_orders,
    calls_per_block,
    environment,
    interleaved_rounds,
    print_environment,
    summarise,
)

from edge_sdk import bundled
from edge_sdk.optimize import OptimizeReport, optimize_model
from edge_sdk.profiles import DeviceProfile, detect, load_profile
from edge_sdk.runtime import EdgeModel, SessionSettings

HOLDOUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "digits_holdout.npz"
FP32 = "fp32"
FP32_AA = "fp32 (A/A)"
INT8 = "int8"
INT8_PER_TENSOR = "int8 per-tensor"
COMPETITORS = (FP32, FP32_AA, INT8, INT8_PER_TENSOR)
BLOCK_SECONDS = 0.005
QUICK_BLOCK_SECONDS = 0.002


# Rounds are multiples of 4, the length of the balanced order cycle for four competitors.
CASES = {
    case.key: case
    for case in (
        Case("digits", "bundled digits CNN, 1x1x8x8", rounds=200, quick_rounds=20),
        Case("conv", "conv net 1x3x224x224 (tests/_models.py conv_net)", rounds=80, quick_rounds=8),
    )
}


@dataclass
class CaseResult:
    case: Case
    calls_per_block: int
    rounds: int
    stats: dict[str, Stats]
    reports: dict[str, OptimizeReport]


def _test_models() -> Any:
    tests_dir = Path(__file__).resolve().parent.parent / "tests"
    if str(tests_dir) not in sys.path:
        sys.path.insert(0, str(tests_dir))
    import _models

    return _models


def prepare_models(
    key: str, work: Path, profile: DeviceProfile, quick: bool
) -> tuple[Path, dict[str, tuple[Path, OptimizeReport]]]:
    """The fp32 model and its int8 versions (per channel, per tensor) with their reports."""
    if key == "digits":
        source = bundled.model_path()
        calibration = HOLDOUT  # its "images" run through the model's own preprocessing
        count = 100 if quick else 200
    else:
        source = work / "conv_net.onnx"
        _test_models().conv_net(source, size=224)
        count = 12 if quick else 40
        calibration = work / "conv_calibration.npz"
        rng = np.random.default_rng(0)
        np.savez(calibration, image=rng.standard_normal((count, 3, 224, 224), dtype=np.float32))
    quantised = {}
    for name, per_channel in ((INT8, None), (INT8_PER_TENSOR, False)):
        out = work / f"{key}.{name.replace(' ', '-')}.onnx"
        report = optimize_model(
            source,
            out,
            profile=profile,
            int8=True,
            calibration=calibration,
            max_calibration=count,
            per_channel=per_channel,
            latency_rounds=0,  # timed here, with every competitor interleaved
        )
        quantised[name] = (out, report)
    return source, quantised


def build_calls(
    source: Path, quantised: dict[str, tuple[Path, OptimizeReport]], threads: int, key: str
) -> tuple[dict[str, Callable[[], object]], list[EdgeModel]]:
    settings = SessionSettings(intra_op_threads=threads)

    def load(path: Path) -> EdgeModel:
        return EdgeModel.load(
            path, providers=["CPUExecutionProvider"], settings=settings, profile=None
        )

    models = {
        FP32: load(source),
        FP32_AA: load(source),
        INT8: load(quantised[INT8][0]),
        INT8_PER_TENSOR: load(quantised[INT8_PER_TENSOR][0]),
    }
    if key == "digits":
        images = np.load(HOLDOUT)["images"]
        x = (images[-1:].astype(np.float32) / 255.0)[:, None]  # a held-out digit, as preprocessed
    else:
        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    feed = {models[FP32].inputs[0].name: x}
    # Every competitor is a lambda over the same call, so each pays the same Python overhead.
    calls: dict[str, Callable[[], object]] = {
        name: (lambda m=model: m.run(feed)) for name, model in models.items()
    }
    return calls, list(models.values())


def run_case(case: Case, profile: DeviceProfile, threads: int, quick: bool) -> CaseResult:
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as work:
        source, quantised = prepare_models(case.key, Path(work), profile, quick)
        calls, keep_alive = build_calls(source, quantised, threads, case.key)
        k = calls_per_block(calls[FP32], QUICK_BLOCK_SECONDS if quick else BLOCK_SECONDS)
        interleaved_rounds(calls, k, 2)  # warm-up: arenas, kernel choice
        rounds = case.quick_rounds if quick else case.rounds
        assert rounds % len(balanced_orders(len(calls))) == 0
        gc.collect()
        stats = summarise(interleaved_rounds(calls, k, rounds), FP32)
        for model in keep_alive:
            model.close()
    reports = {name: report for name, (_, report) in quantised.items()}
    return CaseResult(case, k, rounds, stats, reports)


def print_case(result: CaseResult) -> None:
    print(
        f"\n== {result.case.key}: {result.case.title} | {result.calls_per_block} calls/block, "
        f"{result.rounds} rounds =="
    )
    print(f"{'competitor':<18}{'median us':>11}{'p90 us':>10}{'ratio med':>11}{'ratio p90':>11}")
    for name, s in result.stats.items():
        print(
            f"{name:<18}{s.median_us:>11.2f}{s.p90_us:>10.2f}"
            f"{s.ratio_median:>11.3f}{s.ratio_p90:>11.3f}"
        )
    for name, report in result.reports.items():
        agreement = report.top1_agreement
        print(
            f"  {name}: {report.size_before / 1024:.0f} -> {report.size_after / 1024:.0f} KiB, "
            f"top-1 agreement {agreement:.2%} on {report.validation.samples} held-out inputs, "
            f"max abs error {report.max_abs_error:.3g}"
            if agreement is not None
            else f"  {name}: max abs error {report.max_abs_error:.3g}"
        )


def to_json(env: dict[str, Any], profile: str, results: Sequence[CaseResult]) -> dict[str, Any]:
    return {
        "environment": env,
        "profile": profile,
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
                    }
                    for name, s in r.stats.items()
                },
                "quantisation": {name: report.to_dict() for name, report in r.reports.items()},
            }
            for r in results
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test for CI")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write results as JSON")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument(
        "--profile", default="auto", help="device profile to quantise for (default: this host's)"
    )
    parser.add_argument(
        "--models",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
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
    profile = detect().profile if args.profile == "auto" else load_profile(args.profile)
    env = environment(args.threads)
    print_environment(env)
    print(f"quantised for profile {profile.name}")
    results = []
    for key in args.models:
        result = run_case(CASES[key], profile, args.threads, args.quick)
        print_case(result)
        results.append(result)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(env, profile.name, results), indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
