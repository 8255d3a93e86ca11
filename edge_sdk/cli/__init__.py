"""The ``edge-sdk`` command: a thin shell over library calls.

Subcommand modules are imported only when chosen, so ``edge-sdk --help`` loads neither numpy
nor onnxruntime nor numba. Exit codes: 0 ok, 1 failure (one line naming the problem; the
traceback only with --debug), 2 usage error, 130 interrupted, 141 output pipe closed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

__all__ = ["main"]

# subcommand -> module under edge_sdk.cli that defines add_arguments(parser) and run(args)
_COMMANDS = {
    "run": ("run", "run a model on images or arrays (default: the bundled digits model)"),
    "bench": ("bench", "measure a model's latency and throughput"),
    "info": ("info", "show SDK, runtime and device information"),
    "warmup": ("warmup", "compile every kernel on this device into the kernel cache"),
    "profiles": ("profiles", "list device profiles or show one"),
    "inspect": ("inspect_model", "show what is inside an ONNX model"),
    "check": ("check", "check a model against a device profile before deploying it"),
    "optimize": ("optimize", "optimise a model for a device profile (graph, fp16, int8)"),
    "validate": ("validate", "compare a model's outputs with reference outputs"),
    "fleet": ("fleet", "operate a fleet over MQTT: keys, releases, deploy, jobs, rollback"),
    "agent": ("agent", "run the device agent: over-the-air model updates from the fleet"),
    "serial": ("serial", "a device on a cable: ports, YMODEM, console, the agent's link"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: usage error: {message}\n")


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    from edge_sdk import __version__

    parser = _Parser(
        prog="edge-sdk",
        description="Take an ONNX model to edge devices and keep it running there.",
    )
    parser.add_argument("--version", action="version", version=f"edge-sdk {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # Only the chosen subcommand's module is imported: help for the others is its summary.
    chosen = next((a for a in argv if a in _COMMANDS), None)
    for name, (module, summary) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            import_module(f"edge_sdk.cli.{module}").add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-sdk``; returns the exit code (tests call it with argv)."""
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
    except BrokenPipeError:
        # The reader went away (`edge-sdk run | head -1`): stop quietly, as Unix tools do, with
        # the shell's status for SIGPIPE. stdout goes to /dev/null so the exit flush cannot fail.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(args_list)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = import_module(
        f"edge_sdk.cli.{_COMMANDS[args.command][0]}"
    ).run
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("edge-sdk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:
        if args.debug:
            raise
        from edge_sdk.errors import EdgeSDKError
        from firmware_tools.errors import FirmwareToolsError

        if isinstance(exc, EdgeSDKError | FirmwareToolsError):
            print(f"edge-sdk: error: {exc}", file=sys.stderr)
        else:
            print(
                f"edge-sdk: unexpected error: {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
