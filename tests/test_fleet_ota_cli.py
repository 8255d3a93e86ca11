"""The operator's commands over a real broker: ``edge-sdk fleet serve`` (a child process),
``fleet deploy`` / ``jobs`` / ``rollback`` (in-process), against ``edge-sdk agent`` device
processes — every part real, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _models
import _ota
import numpy as np
import pytest
from _cli import CLI

from edge_sdk.store import ModelStore

REPO = Path(__file__).resolve().parents[1]


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


@pytest.fixture
def setup(cli: CLI, mosquitto, tmp_path: Path):
    fleet = _ota.OtaFleet(mosquitto, tmp_path / "fleet")
    key = tmp_path / "fleet.key"
    assert cli("fleet", "keygen", "--out", key).code == 0
    releases = tmp_path / "releases"
    for version, value in ((1, 1.0), (2, 2.0)):
        model = tmp_path / f"model-{version}.onnx"
        model.write_bytes(_model(value))
        result = cli(
            "fleet", "release", model, "--name", "scorer", "--version", str(version),
            "--key", key, "--out", releases, "--chunk-size", "1024",
        )  # fmt: skip
        assert result.code == 0, result.err
    broken = tmp_path / "broken.onnx"
    # An ONNX file whose operator onnxruntime does not implement: it fails on the device.
    broken.write_bytes(_models.unsupported_op())
    result = cli(
        "fleet", "release", broken, "--name", "scorer", "--version", "3",
        "--key", key, "--out", tmp_path / "broken-release", "--chunk-size", "1024",
    )  # fmt: skip
    assert result.code == 0, result.err
    env = {
        "EDGE_SDK_BROKER": mosquitto.url,
        "EDGE_SDK_FLEET": mosquitto.fleet,
    }
    yield fleet, key, releases, env, tmp_path
    fleet.close()


def _broker_args(mosquitto, user: str, tmp_path: Path) -> list[str]:
    password = tmp_path / f"{user}.password"
    password.write_text(mosquitto.credentials(user).password + "\n")
    return [
        "--broker", mosquitto.url, "--fleet", mosquitto.fleet,
        "--username", user, "--password-file", str(password),
    ]  # fmt: skip


def _serve(mosquitto, releases: Path, tmp_path: Path) -> subprocess.Popen[str]:
    args = _broker_args(mosquitto, mosquitto.release_server.username, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk", "fleet", "serve", str(releases), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "serving scorer version" in line, line + process.stdout.read()
    return process


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    return out


def test_deploy_jobs_rollback_through_the_cli(cli: CLI, mosquitto, setup) -> None:
    fleet, key, releases, _, tmp_path = setup
    operator = _broker_args(mosquitto, "operator", tmp_path)
    server = _serve(mosquitto, releases, tmp_path)
    agents = [
        fleet.start_agent_process(
            device,
            groups=["lab"],
            trusted_keys=[str(key) + ".pub"],
        )
        for device in ("device-1", "device-2")
    ]
    try:
        op = fleet.operator()
        for device in ("device-1", "device-2"):
            _ota.wait_for(
                lambda d=device: op.statuses.get(d, {}).get("state") == "online",
                30,
                f"{device} online",
            )
        first = cli(
            "fleet", "deploy", releases / "scorer-1.manifest.json", "--key", key,
            "--device", "device-1", "--device", "device-2", "--wave-timeout", "60", *operator,
        )  # fmt: skip
        assert first.code == 0, first.err + first.out
        assert "2 succeeded, 0 failed" in first.out
        assert "device-1" in first.err and "succeeded" in first.err  # live progress

        staged = cli(
            "fleet", "deploy", releases / "scorer-2.manifest.json", "--key", key,
            "--group", "lab", "--canary", "1", "--wave-timeout", "60", "--json", *operator,
        )  # fmt: skip
        assert staged.code == 0, staged.err + staged.out
        result = staged.json()
        assert result["group_published"] is True
        assert {d["state"] for d in result["devices"].values()} == {"succeeded"}
        assert sorted(d["wave"] for d in result["devices"].values()) == [0, 1]

        jobs = cli("fleet", "jobs", "--json", *operator)
        assert jobs.code == 0, jobs.err
        rows = {row["device"]: row for row in jobs.json()["jobs"]}
        assert rows["device-1"]["version"] == 2 and rows["device-1"]["state"] == "succeeded"
        table = cli("fleet", "jobs", *operator)
        assert "device-2" in table.out and "succeeded" in table.out

        back = cli("fleet", "rollback", "--name", "scorer", "--key", key, "--device",
                   "device-1", "--wave-timeout", "60", *operator)  # fmt: skip
        assert back.code == 0, back.err + back.out
        assert (
            ModelStore(fleet.workdir / "devices" / "device-1" / "store").active("scorer").version
            == 1
        )
    finally:
        for agent in agents:
            assert agent.terminate() == 0, agent.output()
        out = _stop(server)
    assert "stopped:" in out and "chunks" in out


def test_a_broken_release_fails_the_deploy_with_the_devices_reason(
    cli: CLI, mosquitto, setup
) -> None:
    fleet, key, releases, _, tmp_path = setup
    operator = _broker_args(mosquitto, "operator", tmp_path)
    broken = tmp_path / "broken-release"
    server = fleet.start_server([])
    server.add(_ota.load_release(releases / "scorer-1.manifest.json"))
    agent = fleet.start_agent("device-1", trusted_keys=[str(key) + ".pub"])
    try:
        assert cli(
            "fleet", "deploy", releases / "scorer-1.manifest.json", "--key", key,
            "--device", "device-1", "--wave-timeout", "30", *operator,
        ).code == 0  # fmt: skip
        server.add(_ota.load_release(broken / "scorer-3.manifest.json"))
        result = cli(
            "fleet", "deploy", broken / "scorer-3.manifest.json", "--key", key,
            "--device", "device-1", "--wave-timeout", "30", *operator,
        )  # fmt: skip
        assert result.code == 1
        assert "rolled_back" in result.out and "does not load" in result.out
        assert agent.store.active("scorer").version == 1
        assert agent.store.is_bad("scorer", 3)
    finally:
        agent.stop()


def test_fleet_commands_explain_missing_settings(cli: CLI, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EDGE_SDK_BROKER", raising=False)
    monkeypatch.delenv("EDGE_SDK_FLEET", raising=False)
    result = cli("fleet", "jobs")
    assert result.code == 1 and "no broker" in result.err
    result = cli("fleet", "jobs", "--broker", "mqtt://127.0.0.1:1")
    assert result.code == 1 and "no fleet" in result.err
    result = cli("fleet", "jobs", "--broker", "http://x", "--fleet", "f")
    assert result.code == 1 and "mqtt://" in result.err
    started = time.monotonic()
    port = _ota._broker.free_port()
    result = cli("fleet", "jobs", "--broker", f"mqtt://127.0.0.1:{port}", "--fleet", "f")
    assert result.code == 1 and "MQTT broker" in result.err
    assert time.monotonic() - started < 15
    result = cli("fleet", "deploy", tmp_path / "x.manifest.json", "--key", tmp_path / "k",
                 "--broker", "mqtt://127.0.0.1:1", "--fleet", "f")  # fmt: skip
    assert result.code == 1 and "to what?" in result.err


def test_a_wrong_password_is_a_one_line_error(cli: CLI, mosquitto, tmp_path: Path) -> None:
    bad = tmp_path / "pw"
    bad.write_text("wrong\n")
    result = cli("fleet", "jobs", "--broker", mosquitto.url, "--fleet", mosquitto.fleet,
                 "--password-file", bad)  # fmt: skip
    assert result.code == 1
    assert "refused the login" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_agent_check_and_config_errors(cli: CLI, mosquitto, tmp_path: Path) -> None:
    fleet = _ota.OtaFleet(mosquitto, tmp_path / "fleet")
    path = fleet.write_agent_config("device-1")
    ok = cli("agent", "--config", path, "--check")
    assert ok.code == 0 and "1 trusted key(s)" in ok.out
    missing_key = fleet.write_agent_config("device-2", trusted_keys=[str(tmp_path / "nope.pub")])
    bad = cli("agent", "--config", missing_key, "--check")
    assert bad.code == 1 and "trusted_keys" in bad.err and "cannot read" in bad.err
    absent = cli("agent", "--config", tmp_path / "absent.toml")
    assert absent.code == 1 and "no such file" in absent.err
