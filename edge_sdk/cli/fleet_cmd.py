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


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    from edge_sdk.errors import FleetError

    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise FleetError(f"argument {pair!r}: expected NAME=VALUE (e.g. seconds=30)")
        try:
            parsed[name] = json.loads(text)
        except ValueError:
            parsed[name] = text
    return parsed


def _plain(device: str, command: str, result: dict[str, Any]) -> str:
    if command == "ping":
        return (
            f"{device}: pong (agent up {result.get('uptime_s', 0):.1f} s, "
            f"session {result.get('session')})"
        )
    if command == "set_telemetry_interval":
        return (
            f"{device}: telemetry every {result['interval_s']:g} s (was {result['previous_s']:g} s)"
        )
    if command == "rollback":
        return (
            f"{device}: {result['model']} back to version {result['active']} "
            f"(version {result['undone']} marked bad on this device)"
        )
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

    from edge_sdk.errors import CommandError, CommandTimeoutError
    from edge_sdk.fleet import FleetClient
    from edge_sdk.release import load_private_key

    arguments = parse_arguments(args.cmd_args)
    key = load_private_key(args.key)
    settings, fleet = settings_of(args, "operator")
    # Retained documents are not needed: no settling, straight to the command.
    client = FleetClient(settings, fleet).connect(settle=0.0)
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
        print(_plain(args.cmd_device, args.cmd_name, reply.get("result") or {}))
    return 0
