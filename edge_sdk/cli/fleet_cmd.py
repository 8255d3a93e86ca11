"""``edge-sdk fleet cmd DEVICE COMMAND [NAME=VALUE ...] --key FILE``: one signed command to one
device, and its reply (docs/fleet-protocol.md, "Commands").

    edge-sdk fleet cmd cam-01 ping --key fleet.key
    edge-sdk fleet cmd cam-01 set_telemetry_interval seconds=30 --key fleet.key
    edge-sdk fleet cmd cam-01 rollback model=detector --key fleet.key --json

Exit status: 0 the device did it; 1 it refused or failed (the reason is printed); 2 no reply
within ``--timeout`` or a usage error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

# edge_sdk.commands.COMMANDS, written out: building the parser must not import cryptography
# (tests/test_fleet_cmd_cli.py checks the two agree).
COMMAND_NAMES = ("ping", "info", "diag", "set_telemetry_interval", "rollback", "restart")


def add_arguments(actions: Any, broker_arguments: Callable[..., None]) -> None:
    cmd = actions.add_parser(
        "cmd",
        help="send one signed command to a device: " + ", ".join(COMMAND_NAMES),
        description="Send one signed command to a device and print its reply.",
    )
    cmd.add_argument("cmd_device", metavar="DEVICE", help="the device id")
    cmd.add_argument("cmd_name", metavar="COMMAND", choices=COMMAND_NAMES, help="the command")
    cmd.add_argument(
        "cmd_args",
        metavar="NAME=VALUE",
        nargs="*",
        help="arguments (seconds=30, model=detector); values are JSON when they parse as JSON",
    )
    cmd.add_argument("--key", required=True, metavar="FILE", help="private key (keygen)")
    cmd.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the reply"
    )
    cmd.add_argument(
        "--lifetime",
        type=float,
        default=60.0,
        metavar="S",
        help="the command expires after this many seconds (60; at most 3600): a device that is "
        "offline runs it when it returns within that time",
    )
    cmd.add_argument("--json", action="store_true", help="print the reply document")
    broker_arguments(cmd, default_user="operator")


def parse_arguments(command: str, pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs into the command's arguments: a string argument takes the text as
    written (a model named ``123``); any other takes it as JSON (``seconds=10`` is a number)."""
    from edge_sdk.commands import COMMANDS
    from edge_sdk.errors import FleetError

    spec = COMMANDS.get(command, {})
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise FleetError(f"argument {pair!r}: expected NAME=VALUE (e.g. seconds=30)")
        if name in parsed:
            raise FleetError(f"argument {name!r} given twice")
        kind = spec.get(name, (None, False))[0]
        if kind is str:
            parsed[name] = text
            continue
        try:
            parsed[name] = json.loads(text)
        except ValueError:
            parsed[name] = text
    return parsed


def _plain(device: str, command: str, result: dict[str, Any]) -> str:
    # The device writes the result: show what is there, never fail on what is not.
    def get(key: str, default: Any = None) -> Any:
        value = result.get(key, default)
        return f"{value:g}" if isinstance(value, float) else value

    if command == "ping":
        return f"{device}: pong (agent up {get('uptime_s', '?')} s, session {get('session')})"
    if command == "set_telemetry_interval":
        return f"{device}: telemetry every {get('interval_s')} s (was {get('previous_s')} s)"
    if command == "rollback":
        text = (
            f"{device}: {get('model')} back to version {get('active')} "
            f"(version {get('undone')} marked bad on this device)"
        )
        return text + (f"\nwarning: {get('warning')}" if get("warning") else "")
    if command == "restart":
        return f"{device}: restarting"
    lines = [f"{device}: {command}"]
    for key in sorted(result):
        value = result[key]
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings_of: Callable[..., tuple[Any, str]]) -> int:
    import sys

    from edge_sdk.commands import MAX_LIFETIME, MIN_LIFETIME, check_arguments
    from edge_sdk.errors import CommandError, CommandTimeoutError, FleetError
    from edge_sdk.fleet import FleetClient
    from edge_sdk.release import load_private_key

    def usage(message: str) -> int:
        print(f"edge-sdk fleet cmd: error: {message}", file=sys.stderr)
        return 2

    try:
        arguments = check_arguments(args.cmd_name, parse_arguments(args.cmd_name, args.cmd_args))
    except CommandError as exc:  # checked here: nothing is signed or sent
        return usage(exc.reason)
    except FleetError as exc:
        return usage(str(exc))
    if not MIN_LIFETIME.total_seconds() <= args.lifetime <= MAX_LIFETIME.total_seconds():
        return usage(
            f"--lifetime is {MIN_LIFETIME.total_seconds():g} to "
            f"{MAX_LIFETIME.total_seconds():g} seconds"
        )
    if args.timeout <= 0:
        return usage("--timeout must be more than 0")
    key = load_private_key(args.key)
    settings, fleet = settings_of(args, "operator")
    # No retained documents needed (a large fleet's would take a while): straight to it.
    client = FleetClient(settings, fleet).connect(settle=0.0, documents=False)
    try:
        try:
            reply = client.command(
                args.cmd_device,
                args.cmd_name,
                arguments,
                private_key=key,
                timeout=args.timeout,
                lifetime=args.lifetime,
            )
        except CommandTimeoutError as exc:
            if args.json:
                error = {"code": "no_reply", "reason": str(exc), "request_id": exc.request_id}
                print(json.dumps({"ok": False, "device": exc.device, "error": error}))
            print(f"edge-sdk: error: {exc}", file=sys.stderr)
            return 2
        except CommandError as exc:
            if args.json:
                error = {"code": exc.code, "reason": exc.reason}
                document = {"ok": False, "device": exc.device, "error": error}
                print(json.dumps(document, sort_keys=True))
            else:
                print(f"edge-sdk: {exc}", file=sys.stderr)
            return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    else:
        result = reply.get("result")
        print(_plain(args.cmd_device, args.cmd_name, result if isinstance(result, dict) else {}))
    return 0
