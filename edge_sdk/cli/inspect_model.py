"""``edge-sdk inspect MODEL [--json | --mermaid]``: what is inside an ONNX model."""

from __future__ import annotations

import argparse
import sys

from edge_sdk.cli._common import non_negative_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an .onnx file")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print one JSON document (format 1)")
    form.add_argument(
        "--mermaid", action="store_true", help="print the graph as a Mermaid flowchart"
    )
    parser.add_argument(
        "--collapse",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="with --mermaid: draw linear chains of N or more nodes as one box "
        "(default 10; 0: never)",
    )


def run(args: argparse.Namespace) -> int:
    from edge_sdk.inspect import DEFAULT_COLLAPSE, inspect_model

    if args.collapse is not None and not args.mermaid:
        print("edge-sdk inspect: usage error: --collapse goes with --mermaid", file=sys.stderr)
        return 2
    report = inspect_model(args.model)
    if args.json:
        print(report.to_json())
    elif args.mermaid:
        collapse = DEFAULT_COLLAPSE if args.collapse is None else args.collapse
        print(report.to_mermaid(collapse=collapse), end="")
    else:
        print(report.to_text())
    return 0
