"""``edge-sdk fleet cmd`` in-process against a real broker and a device agent: replies in plain
text and JSON, refusals with their reason and exit status 1, no reply with exit status 2, bad
arguments with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import _ota
import pytest
from _cli import CLI

from edge_sdk import release as rel

DEVICE = "device-1"


@pytest.fixture
def setup(cli: CLI, mosquitto, tmp_path: Path):
    fleet = _ota.OtaFleet(mosquitto, tmp_path / "fleet")
    key = tmp_path / "fleet.key"
    rel.save_private_key(fleet.private_key, key)
    password = tmp_path / "operator.password"
    password.write_text(mosquitto.credentials("operator").password + "\n")
    broker = [
        "--broker", mosquitto.url, "--fleet", mosquitto.fleet,
        "--username", "operator", "--password-file", str(password),
    ]  # fmt: skip
    fleet.start_agent(DEVICE, telemetry_interval=60)
    op = fleet.operator()
    _ota.wait_for(
        lambda: op.statuses.get(DEVICE, {}).get("state") == "online", 30, "the device online"
    )
    yield fleet, key, broker
    fleet.close()


def test_fleet_cmd_ping_info_and_interval(cli: CLI, setup) -> None:
    _, key, broker = setup
    ping = cli("fleet", "cmd", DEVICE, "ping", "--key", key, *broker)
    assert ping.code == 0, ping.err
    assert ping.out.startswith(f"{DEVICE}: pong (agent up ")
    info = cli("fleet", "cmd", DEVICE, "info", "--key", key, "--json", *broker)
    assert info.code == 0, info.err
    reply = json.loads(info.out)
    assert reply["ok"] is True and reply["result"]["status"]["device"] == DEVICE
    changed = cli(
        "fleet", "cmd", DEVICE, "set_telemetry_interval", "seconds=15", "--key", key, *broker
    )
    assert changed.code == 0, changed.err
    assert changed.out.strip() == f"{DEVICE}: telemetry every 15 s (was 60 s)"
    diag = cli("fleet", "cmd", DEVICE, "diag", "--key", key, *broker)
    assert diag.code == 0 and "  telemetry: " in diag.out and '"interval_s": 15.0' in diag.out


def test_fleet_cmd_refusals_and_errors(cli: CLI, setup, tmp_path: Path) -> None:
    _, key, broker = setup
    refused = cli("fleet", "cmd", DEVICE, "rollback", "model=scorer", "--key", key, *broker)
    assert refused.code == 1
    assert f"device {DEVICE}: command refused (bad_arguments)" in refused.err
    as_json = cli(
        "fleet", "cmd", DEVICE, "set_telemetry_interval", "seconds=0", "--key", key, "--json",
        *broker,
    )  # fmt: skip
    assert as_json.code == 1
    document = json.loads(as_json.out)
    assert document["ok"] is False and document["error"]["code"] == "bad_arguments"
    # Signed by a key the device does not trust.
    stranger = tmp_path / "stranger.key"
    rel.save_private_key(rel.generate_keypair()[0], stranger)
    unknown = cli("fleet", "cmd", DEVICE, "ping", "--key", stranger, *broker)
    assert unknown.code == 1 and "(unknown_key)" in unknown.err
    silent = cli("fleet", "cmd", "device-3", "ping", "--key", key, "--timeout", "0.5", *broker)
    assert silent.code == 2 and "device-3: no reply to ping within 0.5 s" in silent.err
    bad = cli("fleet", "cmd", DEVICE, "set_telemetry_interval", "30", "--key", key, *broker)
    assert bad.code == 2 and "expected NAME=VALUE" in bad.err
    # Checked before anything is signed or sent.
    missing = cli("fleet", "cmd", DEVICE, "rollback", "--key", key, *broker)
    assert missing.code == 2 and "needs the argument 'model'" in missing.err
    short = cli("fleet", "cmd", DEVICE, "ping", "--lifetime", "0.5", "--key", key, *broker)
    assert short.code == 2 and "--lifetime" in short.err
    # A string argument is taken as written: a model may be called 123.
    numeric = cli("fleet", "cmd", DEVICE, "rollback", "model=123", "--key", key, *broker)
    assert numeric.code == 1 and "no model '123' is active" in numeric.err
    unknown_command = cli("fleet", "cmd", DEVICE, "format", "--key", key, *broker)
    assert unknown_command.code == 2 and "invalid choice" in unknown_command.err
    missing_key = cli("fleet", "cmd", DEVICE, "ping", "--key", tmp_path / "nope.key", *broker)
    assert missing_key.code == 1 and "nope.key" in missing_key.err


def test_the_parser_lists_every_command_without_importing_them() -> None:
    from edge_sdk.cli.fleet_cmd import COMMAND_NAMES
    from edge_sdk.commands import COMMANDS

    assert set(COMMAND_NAMES) == set(COMMANDS)
