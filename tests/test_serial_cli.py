"""``edge-sdk serial``: the commands in-process (tests/_cli.py) and as processes, on socat ptys
(tests/_serial.py) with the agent on a thread (tests/test_serial_agent.py's ``Device``) or as
``edge-sdk serial serve``; lrzsz's ``rb``/``sb`` once for ``send``/``receive`` (the full matrix
is tests/test_ymodem.py's).

References: docs/cli.md ("edge-sdk serial"), docs/serial-link.md ("Commands carried by
edge-sdk"), docs/serial-console.md (scripts, the ``ymodem-send`` hook).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _serial
import numpy as np
import pytest
import serial
from _cli import CLI
from test_serial_agent import DEVICE, WIDTH, Device, Fleet, agent_config, make_fleet

from edge_sdk import release as rel
from edge_sdk.cli import serial as serial_cli
from edge_sdk.cli.serial import terminal
from edge_sdk.fleet import Release
from firmware_tools import ymodem
from firmware_tools.linesim import LineSimulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_thread_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    names = ("link-", "linesim", "serial-agent", "serial-terminal", "fake-shell")
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith(names)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)


@pytest.fixture
def key_file(tmp_path: Path, fleet: Fleet) -> Path:
    path = tmp_path / "fleet.key"
    rel.save_private_key(fleet.key, path)
    return path


@contextlib.contextmanager
def device_on_a_cable(
    tmp_path: Path, fleet: Fleet, *, baud: int | None = None, **config: Any
) -> Iterator[tuple[Device, str]]:
    """The agent on a thread at one end of a socat pair (through the line simulator at
    ``baud`` when given); yields it and the host's port path."""
    with contextlib.ExitStack() as stack:
        if baud is None:
            pair = stack.enter_context(_serial.PtyPair(tmp_path, "cable"))
            host_path, device_path = pair.a, pair.b
        else:
            one = stack.enter_context(_serial.PtyPair(tmp_path, "host"))
            two = stack.enter_context(_serial.PtyPair(tmp_path, "device"))
            host_path, device_path = one.a, two.a
            stack.enter_context(LineSimulator(one.b, two.b, baud=baud, seed=3))
        port = serial.Serial(device_path, baud or 921600)
        stack.callback(port.close)
        device = Device(agent_config(tmp_path, fleet, **config), port)
        stack.callback(device.close)
        yield device, host_path


def manifest_of(release: Release) -> Path:
    """The signed manifest beside the model, as ``edge-sdk fleet release`` names them."""
    return release.model_path.with_suffix(".manifest.json")


def quiet_pty(tmp_path: Path) -> _serial.PtyPair:
    return _serial.PtyPair(tmp_path, "quiet")


# --------------------------------------------------------------------------- the command


def test_help_imports_neither_pyserial_nor_an_engine() -> None:
    code = (
        "import sys\n"
        "from edge_sdk.cli import main\n"
        "for argv in (['--help'], ['serial', '--help'], ['serial', 'push', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'serial', 'numpy', 'onnxruntime', 'numba', 'paho', 'cryptography'}\n"
        "print('LOADED', sorted({m.partition('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serial" in done.stdout and "push" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"


def test_ports_lists_extra_paths_as_json_and_text(cli: CLI, tmp_path: Path) -> None:
    with quiet_pty(tmp_path) as pair:
        result = cli("serial", "ports", pair.a, "--json")
        assert result.code == 0, result.err
        rows = {row["device"]: row for row in result.json()["ports"]}
        assert rows[pair.a]["usb"] is None and rows[pair.a]["vid"] is None
        assert set(rows[pair.a]) >= {"description", "hwid", "usb", "serial_number"}
        text = cli("serial", "ports", pair.a)
        assert text.code == 0 and pair.a in text.out and " - " in text.out
    missing = cli("serial", "ports", str(tmp_path / "no-such-tty"))
    assert missing.code == 1
    assert missing.err.count("\n") == 1 and "no such device" in missing.err
    assert "Traceback" not in missing.err


def test_a_port_that_does_not_open_is_one_line(cli: CLI, tmp_path: Path) -> None:
    result = cli("serial", "info", "--port", str(tmp_path / "ttyNONE"))
    assert result.code == 1
    assert result.err.startswith("edge-sdk: error: serial port ") and result.err.count("\n") == 1


def test_no_agent_on_the_port_is_no_reply(cli: CLI, tmp_path: Path) -> None:
    with quiet_pty(tmp_path) as pair:
        result = cli("serial", "info", "--port", pair.a, "--timeout", "1", "--json")
    assert result.code == 2
    assert result.json()["error"]["code"] == "no_reply"
    assert "no answer to HELLO" in result.err and result.err.count("\n") == 1


def test_info_and_diag(cli: CLI, tmp_path: Path, fleet: Fleet) -> None:
    with device_on_a_cable(tmp_path, fleet) as (_, port):
        info = cli("serial", "info", "--port", port, "--json")
        assert info.code == 0, info.err
        assert info.json()["status"]["device"] == DEVICE
        text = cli("serial", "info", "--port", port)
        assert text.code == 0 and f"device {DEVICE} (fleet factory-7" in text.out
        assert "no models" in text.out and "link: protocol 1" in text.out
        diag = cli("serial", "diag", "--port", port, "--json")
        assert diag.code == 0 and diag.json()["integrity"] == []
        assert "telemetry:" in cli("serial", "diag", "--port", port).out


def test_cmd_signed_over_the_cable(cli: CLI, tmp_path: Path, fleet: Fleet, key_file: Path) -> None:
    v1, v2 = fleet.release(1), fleet.release(2)
    with device_on_a_cable(tmp_path, fleet) as (device, port):
        assert cli("serial", "push", manifest_of(v1), "--port", port).code == 0
        assert cli("serial", "push", manifest_of(v2), "--port", port).code == 0
        ping = cli("serial", "cmd", "ping", "--port", port, "--key", key_file)
        assert ping.code == 0 and f"{DEVICE}: pong" in ping.out
        back = cli(
            "serial", "cmd", "rollback", "model=scorer", "from=2", "--port", port,
            "--key", key_file, "--json",
        )  # fmt: skip
        assert back.code == 0, back.err
        assert back.json()["result"] == {"model": "scorer", "undone": 2, "active": 1}
        assert device.store.active("scorer").version == 1
        # Refused by the device (nothing to roll back to now): 1, the reason on stderr.
        again = cli("serial", "cmd", "rollback", "model=scorer", "--port", port, "--key", key_file)
        assert again.code == 1 and "command refused (failed)" in again.err
        stranger = tmp_path / "stranger.key"
        rel.save_private_key(rel.generate_keypair()[0], stranger)
        foreign = cli("serial", "cmd", "ping", "--port", port, "--key", stranger, "--json")
        assert foreign.code == 1 and foreign.json()["error"]["code"] == "unknown_key"
        usage = cli("serial", "cmd", "set_telemetry_interval", "--port", port, "--key", key_file)
        assert usage.code == 2 and "needs the argument 'seconds'" in usage.err


def test_telemetry_to_a_file_with_ack(cli: CLI, tmp_path: Path, fleet: Fleet) -> None:
    out = tmp_path / "reports.jsonl"
    with device_on_a_cable(tmp_path, fleet) as (device, port):
        telemetry = device.agent.telemetry
        assert telemetry is not None
        for _ in range(4):
            telemetry.report_now()
        peek = cli("serial", "telemetry", "--port", port, "--limit", "2")
        assert peek.code == 0 and len(peek.out.splitlines()) == 2
        assert "2 report(s) written to stdout; 5 left on the device" in peek.err
        result = cli("serial", "telemetry", "--port", port, "--out", out, "--ack", "--limit", "2")
        assert result.code == 0, result.err
        assert telemetry.spool.pending() == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6 and [r["seq"] for r in lines] == sorted(r["seq"] for r in lines)
    assert all(r["device"] == DEVICE and r["schema"] == 1 for r in lines)
    assert "6 report(s) written to" in result.err and "6 removed from the device" in result.err


def test_push_json_and_a_rolled_back_release(cli: CLI, tmp_path: Path, fleet: Fleet) -> None:
    good = fleet.release(1)
    bad = fleet.release(2, smoke_value=np.zeros((1, WIDTH), np.float32) - 1.0)
    with device_on_a_cable(tmp_path, fleet) as (device, port):
        result = cli("serial", "push", manifest_of(good), "--port", port, "--json")
        assert result.code == 0, result.err
        document = result.json()
        assert document["ok"] is True and document["state"] == "succeeded"
        assert document["sent"] == document["chunks"] == good.manifest.chunk_count
        assert document["bytes_sent"] == good.manifest.size and document["bytes_per_second"] > 0
        text = cli("serial", "push", manifest_of(good), "--port", port)
        assert text.code == 0
        count = good.manifest.chunk_count
        assert f"0 of {count} chunks; {count} were on the device already" in text.out
        assert "the device says succeeded" in text.out and "B/s" in text.out
        failed = cli("serial", "push", manifest_of(bad), "--port", port, "--json")
        assert failed.code == 1
        assert failed.json()["state"] == "rolled_back" and "smoke test" in failed.json()["reason"]
        assert device.store.active("scorer").version == 1
        refused = cli("serial", "push", manifest_of(bad), "--port", port)
        assert refused.code == 1 and "(bad_version)" in refused.err
    # A model that does not match its manifest is refused before anything is sent.
    good.model_path.write_bytes(b"not the model")
    local = cli("serial", "push", manifest_of(good), "--port", "/nonexistent")
    assert local.code == 1 and "bytes, the manifest says" in local.err


def test_an_interrupted_host_push_resumes_with_only_the_missing_chunks(
    cli: CLI, tmp_path: Path, fleet: Fleet
) -> None:
    release = fleet.release(1, chunk_size=2048)  # 33 chunks; about 3 s at 230400 baud
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with device_on_a_cable(tmp_path, fleet, baud=230400) as (device, port):
        host = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_sdk",
                "serial",
                "push",
                str(manifest_of(release)),
                "--port",
                port,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:

            def received() -> int:
                job = device.agent.channel.jobs(DEVICE).get("scorer") or {}
                return int(job.get("bytes") or 0)

            deadline = time.monotonic() + 30
            while received() < release.manifest.size // 4 and host.poll() is None:
                assert time.monotonic() < deadline, "the first push never got going"
                time.sleep(0.02)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.pid, signal.SIGKILL)
            host.wait(10)
            assert host.stderr is not None
            host.stderr.close()
        assert host.returncode == -signal.SIGKILL  # killed mid-push, not finished
        assert device.store.versions("scorer") == ()
        result = cli("serial", "push", manifest_of(release), "--port", port, "--json")
        assert result.code == 0, result.err
        document = result.json()
        assert document["on_device"] >= document["chunks"] // 4
        assert document["sent"] == document["chunks"] - document["on_device"]
        assert document["sent"] < document["chunks"]
        assert device.store.active("scorer").sha256 == release.manifest.sha256


def test_serve_as_a_process_answers_and_stops_on_sigterm(
    cli: CLI, tmp_path: Path, fleet: Fleet
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\nfleet = "factory-7"\nbroker = "mqtt://127.0.0.1:1"\n'
        f'store = "device/store"\ntrusted_keys = ["{fleet.public_path}"]\nprofile = "none"\n'
    )
    with _serial.PtyPair(tmp_path, "cable") as pair:
        log = (tmp_path / "serve.log").open("wb")
        serve = subprocess.Popen(
            [sys.executable, "-m", "edge_sdk", "serial", "serve", "--port", pair.b,
             "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )  # fmt: skip
        try:
            info = cli("serial", "info", "--port", pair.a, "--json", "--timeout", "30")
            assert info.code == 0, info.err + (tmp_path / "serve.log").read_text()
            assert info.json()["status"]["device"] == DEVICE
            assert info.json()["status"]["transport"] == "serial"
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(20) == 0
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(10)
            log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "serving the agent's link" in output and "Traceback" not in output


# --------------------------------------------------------------------------- transfers


def test_send_and_receive_against_lrzsz(cli: CLI, tmp_path: Path) -> None:
    outgoing = tmp_path / "out"
    outgoing.mkdir()
    firmware = outgoing / "Firmware Image.bin"
    firmware.write_bytes(os.urandom(5000))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with _serial.PtyPair(tmp_path, "modem") as pair:
        # Ours first: rb's first 'C' must not be discarded by our port's open.
        results: list[Any] = []
        sender = threading.Thread(
            target=lambda: results.append(
                cli("serial", "send", firmware, "--port", pair.a, "--json")
            )
        )
        sender.start()
        time.sleep(0.5)
        with _serial.Peer(["rb"], pair.b, cwd=inbox) as rb:
            sender.join(60)
            assert rb.wait(30) == 0, rb.stderr
        (sent,) = results
        assert sent.code == 0, sent.err
        assert sent.json()["files"] == [{"name": firmware.name, "bytes": 5000}]
        assert (inbox / firmware.name).read_bytes() == firmware.read_bytes()
        back = tmp_path / "back"
        back.mkdir()
        with _serial.Peer(["sb", firmware.name], pair.b, cwd=outgoing) as sb:
            got = cli("serial", "receive", back, "--port", pair.a)
            assert sb.wait(30) == 0, sb.stderr
    assert got.code == 0, got.err
    assert "received" in got.out and "5000 bytes in" in got.out and "by ymodem" in got.out
    assert (back / firmware.name).read_bytes() == firmware.read_bytes()


def test_transfer_usage_errors(cli: CLI, tmp_path: Path) -> None:
    one, two = tmp_path / "a.bin", tmp_path / "b.bin"
    one.write_bytes(b"a")
    two.write_bytes(b"b")
    assert cli("serial", "send", one, two, "--port", "x", "--protocol", "xmodem").code == 2
    assert cli("serial", "send", tmp_path / "missing", "--port", "x").code == 2
    assert cli("serial", "receive", one, "--port", "x").code == 2  # YMODEM needs a folder
    assert cli("serial", "receive", tmp_path, "--port", "x", "--protocol", "xmodem").code == 2
    assert cli("serial", "send", one, "--port", "x", "--protocol", "zmodem").code == 2


# --------------------------------------------------------------------------- the console


class FakeShell:
    """A device at a "=> " prompt that echoes, answers ``version``, and takes a YMODEM file
    for ``loady`` (with firmware_tools' receiver: the hook is what is under test here)."""

    def __init__(self, path: str, inbox: Path) -> None:
        self.port = serial.Serial(path, 115200, timeout=0.05)
        self.inbox = inbox
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fake-shell", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        self.port.write(b"\r\n=> ")
        line = b""
        while not self._stop.is_set():
            data = self.port.read(64)
            if not data:
                continue
            self.received += data
            self.port.write(data.replace(b"\r", b"\r\n"))  # the echo
            line += data
            while b"\r" in line:
                command, _, line = line.partition(b"\r")
                self._run(command.decode().strip())

    def _run(self, command: str) -> None:
        if command == "version":
            self.port.write(b"U-Boot 2024.01 (fake)\r\n")
        elif command == "loady":
            self.port.write(b"## Ready for binary (ymodem) download to 0x80000000\r\n")
            timing = ymodem.Timing(start=20.0, poll=0.5, final=0.5)
            got = ymodem.receive_files(self.port, self.inbox, timing=timing)
            self.port.write(f"## Total Size = {got[0].size} Bytes\r\n".encode())
        elif command:
            self.port.write(f"Unknown command '{command}'\r\n".encode())
        self.port.write(b"=> ")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.port.close()


SCRIPT = r"""
# Check the version, load image.bin with YMODEM, check its size.
timeout 10
fail-on "Unknown command"
sendline ""                           # wake the console (its first prompt came before us)
expect "=> "
sendline "version"
expect /U-Boot (\S+)/
expect "=> "
sendline "loady"
expect "Ready for binary"
ymodem-send image.bin
expect /Total Size = (\d+) Bytes/ 30
check "@{1}" == "@{sent_size}"
expect "=> "
"""


def test_console_script_with_the_ymodem_hook(cli: CLI, tmp_path: Path) -> None:
    image = bytes(range(256)) * 23
    (tmp_path / "image.bin").write_bytes(image)
    script = tmp_path / "load.txt"
    script.write_text(SCRIPT)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "session.log"
    with _serial.PtyPair(tmp_path, "console") as pair:
        shell = FakeShell(pair.b, inbox)
        try:
            result = cli("serial", "console", "--port", pair.a, "--script", script, "--log", log)
            broken = tmp_path / "broken.txt"
            broken.write_text('sendline ""\nexpect "=> " 1\nsendline "bogus"\nexpect "never" 2\n')
            failed = cli("serial", "console", "--port", pair.a, "--script", broken)
        finally:
            shell.close()
    assert result.code == 0, result.err
    assert "load.txt: ok (13 steps)" in result.out and "U-Boot 2024.01" in result.out
    assert (inbox / "image.bin").read_bytes() == image
    assert "load.txt line 12: ymodem-send image.bin" in log.read_text()
    assert failed.code == 1 and failed.err.count("\n") == 1
    assert "broken.txt line 4" in failed.err and "Unknown command" in failed.err
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("sendlin x\n")
    with _serial.PtyPair(tmp_path, "console2") as pair:
        bad = cli("serial", "console", "--port", pair.a, "--script", unknown)
    assert bad.code == 1 and "unknown.txt line 1: unknown command 'sendlin'" in bad.err


def test_interactive_console_passes_bytes_both_ways(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "raw.log"
    with _serial.PtyPair(tmp_path, "tty") as pair:
        shell = FakeShell(pair.b, inbox)
        try:
            # Piped stdin: the session ends when it does, once the device went quiet.
            read_end, write_end = os.pipe()
            os.write(write_end, b"version\r")
            os.close(write_end)
            with os.fdopen(read_end, "rb") as stdin:
                monkeypatch.setattr(sys, "stdin", stdin)
                result = cli("serial", "console", "--port", pair.a, "--log", log)
            # Ctrl-] ends it at once; what came before it still goes out.
            read_end, write_end = os.pipe()
            os.write(write_end, b"bogus\r\x1dnot sent\r")
            received = bytearray()

            class Out:
                def write(self, data: bytes) -> int:
                    received.extend(data)
                    return len(data)

                def flush(self) -> None:
                    pass

            with serial.Serial(pair.a, 115200) as port:
                terminal(port, read_end, Out(), quiet=0.3)  # type: ignore[arg-type]
            os.close(read_end)
            os.close(write_end)
            time.sleep(0.2)
        finally:
            shell.close()
    assert result.code == 0, result.err
    assert "Ctrl-] quits" in result.err
    assert "U-Boot 2024.01 (fake)" in result.out
    assert b"U-Boot 2024.01 (fake)" in log.read_bytes()
    assert b"version\r" in shell.received and b"bogus\r" in shell.received
    assert b"not sent" not in shell.received


def test_the_module_is_a_thin_shell_over_functions() -> None:
    for name in ("open_link", "push_release", "fetch_telemetry", "send_command", "terminal"):
        assert callable(getattr(serial_cli, name))
