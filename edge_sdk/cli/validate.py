"""``edge-sdk validate MODEL --inputs IN.npz --expected OUT.npz``: run the model on this
device's providers and compare every output with a reference. Exit 0 when all match."""

from __future__ import annotations

import argparse
import sys

from edge_sdk.cli._common import add_model_options, fallback_lines, load_model


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument(
        "--inputs",
        required=True,
        metavar="IN.npz",
        help="input arrays by input name (numpy.savez; arr_0, arr_1... in input order)",
    )
    parser.add_argument(
        "--expected",
        required=True,
        metavar="OUT.npz",
        help="reference outputs by output name (arr_0, arr_1... in output order)",
    )
    parser.add_argument(
        "--rtol", type=_tolerance, default=1e-3, metavar="R", help="relative tolerance (1e-3)"
    )
    parser.add_argument(
        "--atol", type=_tolerance, default=1e-5, metavar="A", help="absolute tolerance (1e-5)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (format 1)")
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from edge_sdk.compat import load_arrays, validate_model

    # Read the arrays first: a bad file is reported before a session is built.
    inputs = load_arrays(args.inputs)
    expected = load_arrays(args.expected)
    with load_model(args, args.model) as model:
        report = validate_model(model, inputs, expected, rtol=args.rtol, atol=args.atol)
        if not args.json:
            for line in fallback_lines(model):
                print(line, file=sys.stderr)
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.passed else 1
