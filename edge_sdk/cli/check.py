"""``edge-sdk check MODEL [--profile NAME] [--json] [--require-accelerator]``: will the model
work on the device? Exit 0 for pass and warn, 1 for fail (or an error)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument(
        "--profile",
        default="auto",
        metavar="NAME",
        help="the device profile to check against: a name, a .toml path or 'auto' "
        "(detect this machine, the default); `edge-sdk profiles list` names them",
    )
    parser.add_argument(
        "--require-accelerator",
        action="store_true",
        help="fail when any node would run on the CPU instead of the profile's accelerator "
        "(default: a warning naming the nodes)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (format 1)")


def run(args: argparse.Namespace) -> int:
    from edge_sdk.compat import check_model

    report = check_model(args.model, args.profile, require_accelerator=args.require_accelerator)
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.passed else 1
