"""``edge-sdk warmup``: compile every kernel on this device into the kernel cache."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from edge_sdk.cli._common import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where compiled kernels are stored (default: the device profile's, else "
        "$XDG_CACHE_HOME/edge-sdk/numba)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="kernel threads (default: the device profile's, else 1)",
    )
    parser.add_argument(
        "--profile",
        default="auto",
        metavar="NAME",
        help="device profile whose kernel settings to use: a name, 'auto' (default) or 'none'",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from edge_sdk.kernels import configure
    from edge_sdk.kernels.warmup import warmup_all

    cache_dir, threads = args.cache_dir, args.threads
    if args.profile != "none":
        from edge_sdk.profiles import resolve_profile

        detection = resolve_profile(args.profile)
        if detection is not None:
            kernels = detection.profile.kernels
            cache_dir = cache_dir or kernels.resolved_cache_dir()
            threads = threads or kernels.threads
    configure(cache_dir=cache_dir, threads=threads or 1)
    report = warmup_all()
    if args.json:
        print(json.dumps({**asdict(report), "total_ms": report.total_ms}, indent=2))
        return 0
    if not report.jit:
        print(
            "numba is not available (or NUMBA_DISABLE_JIT=1): kernels run as plain Python, "
            "nothing to compile",
            file=sys.stderr,
        )
    print(f"cache     {report.cache_dir or 'none'}")
    print(
        f"numba     imported in {report.numba_import_ms:.0f} ms, "
        f"runtime started in {report.numba_start_ms:.0f} ms"
    )
    for timing in report.kernels:
        print(f"{timing.family:<12} {timing.name:<36} {timing.first_call_ms:9.1f} ms")
    print(f"total     {report.total_ms / 1e3:.2f} s")
    return 0
