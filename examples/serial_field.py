"""A field technician's session over a serial cable, end to end, in one command that cleans up
after itself.

The "cable" is two socat pty pairs joined by firmware_tools' line simulator, paced at 115200
baud (921600 with --quick), as a USB-serial adapter on a device's UART would carry it. On the
device end, ``edge-sdk serial serve`` runs the agent on a fresh model store that trusts a
throw-away fleet key. On the laptop end, the technician runs:

1. ``edge-sdk serial info``: which device this is and what it runs;
2. ``edge-sdk serial push``: installs the bundled digits model, released and signed with the
   fleet key here; the device checks the signature and every chunk's hash, loads the model,
   runs its smoke test and activates it;
3. ``edge-sdk serial info`` again: the model is active;
4. ``edge-sdk serial telemetry --ack``: takes the reports waiting in the device's spool;
5. stops the agent, and sends a file by YMODEM (``edge-sdk serial send``) to lrzsz's ``rb``
   on the device, as to a shell or a bootloader, and checks it arrived whole.

Every process the example starts is ended by its own pid and the work directory removed, also
on Ctrl-C or an error.

    python examples/serial_field.py [--quick] [--keep]

Needs socat (Debian/Ubuntu package socat); lrzsz for ``rb`` (without it, the device end
receives with ``edge-sdk serial receive``). Guides: docs/serial-link.md (the link and the
agent's requests), docs/serial-transfer.md (YMODEM), docs/cli.md (the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edge_sdk import EdgeModel, EdgeSDKError, bundled
from edge_sdk import release as rel
from edge_sdk.preprocess import preprocess
from firmware_tools.errors import FirmwareToolsError
from firmware_tools.linesim import LineSimulatorProcess

FLEET = "field"
DEVICE = "pump-station-4"
MODEL = "digits"
# Chunks of 16 KiB so that the push shows its progress; `edge-sdk fleet release` cuts 64 KiB.
CHUNK_SIZE = 16 * 1024
PACKAGES = "socat lrzsz"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


# --------------------------------------------------------------------------- the cable


class PtyPair:
    """Two ptys joined by socat (raw, no echo): what is written to ``a`` is read from ``b``.
    socat runs in its own process group and is ended by its pid."""

    def __init__(self, folder: Path, name: str, socat: str) -> None:
        self.a = str(folder / f"{name}-a")
        self.b = str(folder / f"{name}-b")
        log = folder / f"{name}-socat.log"
        options = "raw,echo=0,ignoreeof"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [socat, "-d", "-d", f"pty,{options},link={self.a}", f"pty,{options},link={self.b}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        # socat logs this once both ptys exist and are linked.
        while "starting data transfer loop" not in log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"socat did not create the ptys: {log.read_text()[-500:]}")
            time.sleep(0.01)

    def close(self) -> None:
        end_group(self.process)


def end_group(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process's group, SIGKILL it if it lingers; by pid, never by name."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Cable:
    """The laptop's end (``laptop``) and the device's end (``device``) of a paced line."""

    def __init__(self, work: Path, baud: int, socat: str, cleanup: contextlib.ExitStack) -> None:
        near = PtyPair(work, "laptop", socat)
        cleanup.callback(near.close)
        far = PtyPair(work, "device", socat)
        cleanup.callback(far.close)
        # In its own process, so that its pacing shares no interpreter with anything here.
        self.line = LineSimulatorProcess(near.b, far.b, baud=baud)
        cleanup.callback(self.line.close)
        self.laptop, self.device, self.baud = near.a, far.a, baud


# --------------------------------------------------------------------------- commands


def edge_sdk_command(*args: str) -> list[str]:
    """``edge-sdk ARGS`` with this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "edge_sdk", *args]


def run_cli(args: Sequence[str], *, cwd: Path, timeout: float = 120.0) -> int:
    """Run ``edge-sdk ARGS`` in ``cwd`` as the technician would, show the command and what it
    printed (stdout and stderr, indented), and return its exit status."""
    print(f"   $ edge-sdk {shlex.join(args)}", flush=True)
    process = subprocess.Popen(
        edge_sdk_command(*args),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # ended by its pid below if this example is interrupted
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    for text in (out, err):
        for line in text.splitlines():
            say(f"  {line}")
    return process.returncode


def check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} exited {status}")


# --------------------------------------------------------------------------- the device


def make_release(work: Path, key: Any) -> Path:
    """The bundled digits model as version 1, with a smoke test recorded from its outputs on a
    bundled sample (the device must reproduce them before it activates the model)."""
    releases = work / "releases"
    releases.mkdir()
    model_path = releases / f"{MODEL}-1.onnx"
    shutil.copyfile(bundled.model_path(), model_path)
    with EdgeModel.load(model_path) as model:
        assert model.preprocess_spec is not None
        feed = {model.inputs[0].name: preprocess(model.preprocess_spec, bundled.sample_paths()[0])}
        expected = model.run(feed)
    smoke = rel.SmokeTest.from_arrays(feed, expected)
    manifest = rel.build_manifest(model_path, MODEL, 1, chunk_size=CHUNK_SIZE, smoke_test=smoke)
    signed = rel.sign(manifest, key)
    path = releases / f"{MODEL}-1.manifest.json"
    path.write_text(signed.to_json() + "\n")  # the model beside it, as `fleet release` writes
    say(
        f"{MODEL} v1: {manifest.size:,} bytes in {manifest.chunk_count} chunks of "
        f"{CHUNK_SIZE // 1024} KiB, sha256 {manifest.sha256[:12]}..., signed by {signed.key_id}"
    )
    return path


def write_agent_config(work: Path, public_key: Any) -> Path:
    """The device's agent.toml (docs/agent.md) with the fleet's public key beside it."""
    device = work / "device"
    device.mkdir()
    (device / "fleet.pub").write_text(rel.public_key_to_base64(public_key) + "\n")
    path = device / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'fleet = "{FLEET}"\n'
        'groups = ["north"]\n'
        # Required by agent.toml; a device on a cable never connects to it.
        'broker = "mqtt://127.0.0.1:1"\n'
        'store = "store"\n'
        'trusted_keys = ["fleet.pub"]\n'
        'profile = "none"\n'
        "smoke_runs = 1\n"
        # A report every few seconds, so that some wait in the spool for the technician.
        "telemetry_interval = 2\n"
    )
    return path


class DeviceAgent:
    """``edge-sdk serial serve`` on the device's end of the cable, in its own process group."""

    def __init__(self, config: Path, port: str, baud: int) -> None:
        self.log = config.parent / "serve.log"
        args = ["serial", "serve", "--port", port, "--baud", str(baud), "--config", str(config)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                edge_sdk_command(*args, "--log-level", "warning"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> int | None:
        """SIGTERM (the agent closes its downloads and spool and exits 0)."""
        end_group(self.process, timeout=10)
        return self.process.returncode


def describe_report(report: dict[str, Any]) -> str:
    """One line of a telemetry report (docs/telemetry.md): when, the machine, the models."""
    system = report.get("system") or {}
    memory = system.get("memory_mb") or {}
    cpu = system.get("cpu_percent")
    models = report.get("models") or {}
    return (
        f"seq {report.get('seq')} at {report.get('at')}"
        f"{' (historical)' if report.get('historical') else ' (made for this request)'}: "
        f"cpu {'n/a' if cpu is None else f'{cpu:.0f} %'}, memory "
        f"{memory.get('available', 0):,.0f} of {memory.get('total', 0):,.0f} MB free, "
        f"{len(report.get('problems') or [])} problem(s), "
        f"models: {', '.join(sorted(models)) or 'none called yet'}"
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the session


def run(work: Path, quick: bool, cleanup: contextlib.ExitStack, socat: str) -> int:
    baud = 921600 if quick else 115200
    step(f"1. the cable: two pty pairs joined by a line paced at {baud} baud")
    cable = Cable(work, baud, socat, cleanup)
    say(f"laptop end {cable.laptop}")
    say(f"device end {cable.device} (line simulator pid {cable.line.pid})")

    step("2. the fleet's throw-away signing key and a release of the bundled digits model")
    key, public = rel.generate_keypair()
    say(f"key {rel.key_id(public)}: signs here; the device trusts its public half")
    manifest = make_release(work, key)

    step("3. the device: `edge-sdk serial serve` on a fresh model store")
    config = write_agent_config(work, public)
    agent = DeviceAgent(config, cable.device, baud)
    cleanup.callback(agent.stop)
    say(f"agent pid {agent.process.pid}, store {config.parent / 'store'}")

    # The laptop's commands run in the work directory: its paths are short, as on a laptop.
    port = ["--port", os.path.relpath(cable.laptop, work), "--baud", str(baud)]
    step("4. the laptop: who is on the cable?")
    # The agent may still be starting: `info` waits up to --timeout for its answer.
    check(run_cli(["serial", "info", *port, "--timeout", "30"], cwd=work), "serial info")

    step("5. push the signed release; the device verifies, health-checks and activates it")
    release = os.path.relpath(manifest, work)
    check(run_cli(["serial", "push", release, *port], cwd=work), "serial push")
    check(run_cli(["serial", "info", *port], cwd=work), "serial info")

    step("6. take the telemetry reports waiting on the device")
    telemetry = ["serial", "telemetry", *port, "--out", "reports.jsonl", "--ack"]
    check(run_cli(telemetry, cwd=work), "serial telemetry")
    for line in (work / "reports.jsonl").read_text().splitlines():
        say(f"  {describe_report(json.loads(line))}")

    step("7. stop the agent and send a file by YMODEM to the device")
    say(f"agent exited {agent.stop()} (SIGTERM): the port is free for a YMODEM receiver")
    inbox = work / "device" / "inbox"
    inbox.mkdir()
    payload = work / "calibration.bin"
    payload.write_bytes(os.urandom(16 * 1024 if quick else 48 * 1024))
    rb = shutil.which("rb")
    receiver: subprocess.Popen[bytes]
    if rb is not None:
        say(f"device: rb (lrzsz) in {inbox}")
        tty = os.open(cable.device, os.O_RDWR | os.O_NOCTTY)
        try:
            with (inbox.parent / "rb.log").open("wb") as err:
                receiver = subprocess.Popen(
                    [rb], stdin=tty, stdout=tty, stderr=err, cwd=inbox, start_new_session=True
                )
        finally:
            os.close(tty)
    else:
        say(f"device: lrzsz is not installed; `edge-sdk serial receive` into {inbox}")
        receiver = subprocess.Popen(
            edge_sdk_command("serial", "receive", str(inbox), "--port", cable.device),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    cleanup.callback(end_group, receiver)
    check(run_cli(["serial", "send", payload.name, *port], cwd=work), "serial send")
    if receiver.wait(30) != 0:
        raise RuntimeError(f"the device's receiver exited {receiver.returncode}")
    arrived = inbox / payload.name
    same = arrived.is_file() and sha256(arrived) == sha256(payload)
    say(
        f"on the device: {arrived.name}, {arrived.stat().st_size:,} bytes, sha256 "
        f"{'matches' if same else 'DIFFERS from'} the laptop's"
    )
    if not same:
        return 1
    stats = cable.line.stats
    say(
        f"the line carried {stats.a_to_b.forwarded:,} bytes laptop -> device and "
        f"{stats.b_to_a.forwarded:,} device -> laptop"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the same session at 921600 (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    socat = shutil.which("socat")
    if socat is None:
        print(
            "serial_field: socat is not installed; install the Debian packages socat and lrzsz "
            f"(sudo apt-get install -y {PACKAGES})",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="edge-sdk-serial-field-"))
    print(f"edge-sdk over a serial cable (work directory {work})")
    started = time.monotonic()
    status = 1
    try:
        with contextlib.ExitStack() as cleanup:
            status = run(work, args.quick, cleanup, socat)
            step("8. cleaning up")
        say("stopped the device's processes, the line simulator and socat")
    except KeyboardInterrupt:
        print("\ninterrupted; everything the example started is stopped", file=sys.stderr)
        status = 130
    except (EdgeSDKError, FirmwareToolsError, RuntimeError, OSError) as exc:
        print(f"\nserial_field failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            say(f"kept {work} (the device's agent.toml, store, serve.log; the release)")
        else:
            shutil.rmtree(work, ignore_errors=True)
            say(f"removed {work}")
    if status == 0:
        say(f"done in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
