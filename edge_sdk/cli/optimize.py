"""``edge-sdk optimize MODEL --profile NAME -o OUT``: graph optimisation, fp16 or int8 for a
device, validated against the original (edge_sdk.optimize does the work)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_sdk.cli._common import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx model to optimise")
    parser.add_argument(
        "--profile",
        required=True,
        metavar="NAME",
        help="the device profile to optimise for (a name from `edge-sdk profiles`, or a .toml)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    parser.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="convert to float16 (default: when the profile prefers fp16)",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="quantise to int8 (default: when the profile prefers int8); needs --calibration",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR_OR_NPZ",
        help="int8 calibration data: a folder of images (run through the model's own "
        "preprocessing) or an .npz of input arrays",
    )
    parser.add_argument(
        "--max-calibration",
        type=positive_int,
        default=200,
        metavar="N",
        help="calibration samples to use at most (default 200)",
    )
    parser.add_argument(
        "--validation",
        metavar="DIR_OR_NPZ",
        help="held-out inputs to compare the result with the original on (default: the "
        "calibration data not used for calibration, else random inputs)",
    )
    parser.add_argument(
        "--graph-level",
        choices=("disable", "basic", "extended", "all"),
        help="onnxruntime graph optimisation level to bake in (default: chosen for the profile; "
        "'all' ties the file to this host's CPU)",
    )
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="quantise weights per tensor instead of per channel",
    )
    parser.add_argument(
        "--fp16-io",
        action="store_true",
        help="with --fp16, make the model's inputs and outputs float16 too (default float32)",
    )
    parser.add_argument(
        "--latency-rounds",
        type=non_negative_int,
        default=20,
        metavar="N",
        help="interleaved timing rounds, original against result (0: no timing; default 20)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")


def _usage_error(message: str) -> int:
    print(f"edge-sdk optimize: usage error: {message}", file=sys.stderr)
    return 2


def _size(count: int) -> str:
    if count >= 1 << 20:
        return f"{count / (1 << 20):.1f} MiB"
    if count >= 1 << 10:
        return f"{count / (1 << 10):.1f} KiB"
    return f"{count} B"


def format_report(report: Any) -> list[str]:
    """The report as the lines ``edge-sdk optimize`` prints."""
    lines = [
        f"optimised {report.source} -> {report.output} for {report.profile} ({report.precision})",
        f"size        {_size(report.size_before)} -> {_size(report.size_after)} "
        f"({report.size_ratio:.2f}x)",
    ]
    lines += [f"step        {step}" for step in report.steps]
    if report.calibration is not None:
        c = report.calibration
        lines.append(f"calibration {c.samples} samples ({c.kind}) from {c.source}")
    v = report.validation
    held = ", held out from the calibration data" if v.held_out_from_calibration else ""
    lines.append(f"validation  {v.samples} samples ({v.kind}{held}) from {v.source}")
    for output in report.outputs:
        agreement = (
            f"top-1 agreement {output.top1_agreement:.2%}, "
            if output.top1_agreement is not None
            else ""
        )
        lines.append(
            f"output      {output.name}: {agreement}max abs error {output.max_abs_error:.4g}, "
            f"mean {output.mean_abs_error:.4g}"
        )
    latency = report.latency
    if latency is not None:
        lines.append(
            f"latency     {latency.before_ms:.4f} ms -> {latency.after_ms:.4f} ms per call, "
            f"ratio {latency.ratio:.3f} (p90 {latency.ratio_p90:.3f}, {latency.rounds} "
            f"interleaved rounds, {latency.host})"
        )
        lines.append(
            f"load        {latency.load_before_ms:.1f} ms -> {latency.load_after_ms:.1f} ms "
            "session creation"
        )
    lines += [f"warning     {text}" for text in report.warnings]
    return lines


def run(args: argparse.Namespace) -> int:
    from edge_sdk.profiles import load_profile

    if args.fp16 and args.int8:
        return _usage_error("choose --fp16 or --int8, not both")
    profile = load_profile(args.profile)  # UnknownProfileError names the nearest ones
    wants_int8 = (
        args.int8 if args.int8 is not None else (not args.fp16 and profile.precision == "int8")
    )
    if wants_int8 and args.calibration is None:
        why = "--int8" if args.int8 else f"profile {profile.name} prefers int8, which"
        return _usage_error(
            f"{why} needs --calibration DIR_OR_NPZ (or --no-int8 for a float model)"
        )
    if args.calibration is not None and not wants_int8:
        return _usage_error("--calibration is for int8; use --validation to compare outputs")
    wants_fp16 = not wants_int8 and (
        args.fp16 if args.fp16 is not None else profile.precision == "fp16"
    )
    if args.fp16_io and not wants_fp16:
        return _usage_error("--fp16-io needs fp16 (--fp16, or a profile that prefers fp16)")
    if (wants_int8 or wants_fp16) and args.graph_level in ("extended", "all"):
        precision = "int8" if wants_int8 else "fp16"
        return _usage_error(
            f"--graph-level {args.graph_level} creates onnxruntime's CPU-only fused ops, which "
            f"the {precision} conversion cannot handle: use basic (the default) or disable"
        )

    from edge_sdk.optimize import optimize_model

    report = optimize_model(
        args.model,
        args.output,
        profile=profile,
        fp16=args.fp16,
        int8=wants_int8,
        calibration=args.calibration,
        max_calibration=args.max_calibration,
        validation=args.validation,
        per_channel=False if args.per_tensor else None,
        keep_io_float32=not args.fp16_io,
        graph_optimization=args.graph_level,
        latency_rounds=args.latency_rounds,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0
