"""Over-the-air model update, end to end, in one command that cleans up after itself.

Starts a private Mosquitto broker on a free loopback port (passwords and per-user ACLs on),
makes a fleet signing key, releases the bundled digits model as version 1 and a re-stamped copy
as version 2, and runs a release server, a device agent with its model store, and an
application that classifies images through ``EdgeModel.from_store``. Version 1 is deployed,
the application starts, version 2 is rolled out while it keeps serving, and the application
moves to version 2 between two requests without a failed one. Everything the demo started is
stopped by its own handle and the temporary directory removed, also on Ctrl-C or an error.

    python examples/ota_demo.py [--quick] [--keep]

Needs Mosquitto 2.x (Debian/Ubuntu packages mosquitto and mosquitto-clients). Guides:
docs/fleet.md (operator), docs/agent.md (device), docs/fleet-protocol.md (wire format).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from edge_sdk import (
    BrokerSettings,
    EdgeModel,
    EdgeSDKError,
    FleetClient,
    ModelStore,
    ReleaseServer,
    RolloutResult,
    SessionSettings,
    bundled,
    load_agent_config,
    write_metadata,
)
from edge_sdk import release as rel
from edge_sdk.agent.mqtt import MqttAgent
from edge_sdk.fleet import DeviceRow, jobs_table, load_release
from edge_sdk.preprocess import preprocess

FLEET = "demo"
DEVICE = "cam-01"
GROUP = "lab"
MODEL = "digits"
# Small chunks so that the progress of a 150 KB model is worth watching; a real fleet keeps
# the default 64 KiB (docs/fleet-protocol.md, "Limits").
CHUNK_SIZE = 16 * 1024
PACKAGES = "mosquitto mosquitto-clients"
# Debian installs the broker as /usr/sbin/mosquitto, which an ordinary user's PATH may lack.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# --------------------------------------------------------------------------- the broker


class Broker:
    """A mosquitto process on a free loopback port with a generated config, password file and
    ACL file in ``workdir`` (the layout docs/fleet.md recommends for production, minus TLS).
    Ended by its pid, never by name: a system mosquitto on port 1883 is left alone."""

    def __init__(self, workdir: Path, executable: str, passwd: str) -> None:
        self.workdir = workdir
        self.executable = executable
        self.passwd = passwd
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.passwords = {
            user: secrets.token_urlsafe(16) for user in ("operator", "release-server", DEVICE)
        }
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_files(self) -> None:
        password_file = self.workdir / "passwords"
        # mosquitto_passwd(1): -c creates the file, -b takes the password on the command line.
        for index, (user, password) in enumerate(self.passwords.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [self.passwd, *create, "-b", str(password_file), user, password],
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
        password_file.chmod(0o600)
        root = f"edge/v1/{FLEET}"
        acl = self.workdir / "acl"
        acl.write_text(
            "user operator\n"
            "topic readwrite #\n"
            "user release-server\n"
            f"topic readwrite {root}/releases/#\n"
            f"topic read {root}/devices/+/#\n"
            f"user {DEVICE}\n"
            f"topic readwrite {root}/devices/{DEVICE}/#\n"
            f"topic read {root}/releases/#\n"
            f"topic read {root}/desired/#\n"
        )
        acl.chmod(0o600)

    def _config(self) -> str:
        import pwd

        return "\n".join(
            [
                "per_listener_settings true",
                # Started as root, mosquitto 2.0 drops to the `mosquitto` user, which cannot
                # read a private temp dir; naming the current user keeps it as it is.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                f"listener {self.port} {self.host}",
                "allow_anonymous false",
                f"password_file {self.workdir / 'passwords'}",
                f"acl_file {self.workdir / 'acl'}",
                "persistence false",
                f"log_dest file {self.log}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                # "mosquitto version X running", the sign that every listener is open.
                "log_type information",
                "connection_messages true",
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> None:
        self._write_files()
        for _ in range(5):  # another process may take the free port before mosquitto binds it
            with socket.socket() as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
            config = self.workdir / "mosquitto.conf"
            config.write_text(self._config())
            self.log.unlink(missing_ok=True)
            output = (self.workdir / "mosquitto.out").open("ab")
            with output:
                self.process = subprocess.Popen(
                    [self.executable, "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    # Its own session: a Ctrl-C reaches the demo, which then ends the broker.
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                if " running" in self._log_text() and self._accepts():
                    return
                time.sleep(0.01)
            text = self._log_text() + (self.workdir / "mosquitto.out").read_text(errors="replace")
            self.stop()
            if "Address already in use" not in text:
                raise RuntimeError(f"mosquitto did not start:\n{text[-2000:]}")
        raise RuntimeError("mosquitto found no free port in 5 attempts")

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def settings(self, user: str) -> BrokerSettings:
        return BrokerSettings(
            url=self.url,
            # Unique per connection: a second client with the same id kicks the first off.
            client_id=f"demo-{user}-{secrets.token_hex(4)}",
            username=user,
            password=self.passwords[user],
            reconnect_max=2,
            max_inflight=1000 if user == "release-server" else 20,
        )

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the parts


@dataclass
class AgentThread:
    """The device agent, in a thread of this process (on a device: ``edge-sdk agent``)."""

    agent: MqttAgent
    thread: threading.Thread = field(init=False)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="device-agent", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.agent.run(install_signals=False)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(20)


class Application(threading.Thread):
    """What runs on the device next to the agent: classify images in a loop with the store's
    active model, and record which version served each request."""

    def __init__(self, store: ModelStore, images: Sequence[Path]) -> None:
        super().__init__(name="application", daemon=True)
        self.store = store
        self.images = list(images)
        self.served: Counter[int | None] = Counter()
        self.correct = 0
        self.failures: list[str] = []
        self.first_v2_request: int | None = None
        self.version: int | None = None
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        # One intra-op thread: a digit is tiny; more threads only add hand-off cost.
        settings = SessionSettings(intra_op_threads=1)
        try:
            model = EdgeModel.from_store(self.store, MODEL, settings=settings)
        except EdgeSDKError as exc:
            self.failures.append(f"could not load the active model: {exc}")
            self.ready.set()
            return
        with model:
            self.version = model.store_version
            self.ready.set()
            count = 0
            while not self._halt.is_set():
                for image in self.images:
                    try:
                        label = model.predict(image).result.label
                    except EdgeSDKError as exc:
                        self.failures.append(f"{image.name}: {exc}")
                        continue
                    # Read after the call: a switch lands between calls, never inside one.
                    version = model.store_version
                    count += 1
                    self.served[version] += 1
                    self.correct += label == image.stem.split("_")[1]
                    if version != self.version:
                        self.version = version
                        if version == 2 and self.first_v2_request is None:
                            self.first_v2_request = count
                # A camera delivers frames at a rate; this keeps the demo from busy-looping.
                time.sleep(0.002)

    @property
    def requests(self) -> int:
        return sum(self.served.values())

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def make_releases(work: Path, key: Any) -> list[Path]:
    """v1: the bundled model. v2: the same weights with re-stamped metadata (another file, the
    same behaviour). Both carry a smoke test recorded from v1's outputs on a bundled sample,
    so v2 must reproduce them before a device activates it."""
    releases = work / "releases"
    releases.mkdir()
    v1 = releases / f"{MODEL}-1.onnx"
    shutil.copyfile(bundled.model_path(), v1)
    v2 = releases / f"{MODEL}-2.onnx"
    write_metadata(v1, v2, {"edge_sdk.version": "2.0.0"})

    sample = bundled.sample_paths()[0]
    with EdgeModel.load(v1) as model:
        assert model.preprocess_spec is not None
        feed = {model.inputs[0].name: preprocess(model.preprocess_spec, sample)}
        expected = model.run(feed)
    smoke = rel.SmokeTest.from_arrays(feed, expected)

    manifests = []
    for version, path in ((1, v1), (2, v2)):
        manifest = rel.build_manifest(path, MODEL, version, chunk_size=CHUNK_SIZE, smoke_test=smoke)
        signed = rel.sign(manifest, key)
        target = releases / f"{MODEL}-{version}.manifest.json"
        # The layout `edge-sdk fleet release` writes: the model beside its manifest.
        target.write_text(signed.to_json() + "\n")
        manifests.append(target)
        say(
            f"{MODEL} v{version}: {manifest.size:,} bytes, {manifest.chunk_count} chunks of "
            f"{CHUNK_SIZE // 1024} KiB, sha256 {manifest.sha256[:12]}..., signed by "
            f"{signed.key_id}"
        )
    return manifests


def write_agent_config(work: Path, broker: Broker, public_key: Any) -> Path:
    """The device's agent.toml (docs/agent.md), with its password and the fleet's public key
    in files beside it."""
    device = work / "device"
    device.mkdir()
    (device / "fleet.pub").write_text(rel.public_key_to_base64(public_key) + "\n")
    password = device / "mqtt-password"
    password.write_text(broker.passwords[DEVICE] + "\n")
    password.chmod(0o600)
    path = device / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'fleet = "{FLEET}"\n'
        f'groups = ["{GROUP}"]\n'
        f'broker = "{broker.url}"\n'
        f'username = "{DEVICE}"\n'
        'password_file = "mqtt-password"\n'
        'store = "store"\n'
        'trusted_keys = ["fleet.pub"]\n'
        # Chunks asked for at a time; throughput is about window x chunk / round-trip time.
        "window = 4\n"
        "request_timeout = 2\n"
        "reconnect_max = 2\n"
    )
    return path


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def progress_printer() -> Callable[[DeviceRow], None]:
    def show(row: DeviceRow) -> None:
        percent = "" if row.percent is None else f" {row.percent:.0f}%"
        reason = f" ({row.reason})" if row.reason else ""
        say(f"  {row.device}: {row.state}{percent}{reason}")

    return show


def deploy(operator: FleetClient, manifest: Path, key: Any) -> RolloutResult:
    release = load_release(manifest)
    started = time.monotonic()
    result = operator.deploy(
        release, key, group=GROUP, wave_timeout=30.0, on_progress=progress_printer()
    )
    took = time.monotonic() - started
    if not result.ok:
        raise RuntimeError(f"the rollout of {manifest.name} failed: {result.to_dict()}")
    say(
        f"{len(result.succeeded)} device(s) on v{result.version} in {took:.1f} s; "
        f"group {GROUP} now desires v{result.version}"
    )
    return result


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def show_jobs(operator: FleetClient) -> None:
    operator.settle(0.2)
    rows = jobs_table(operator.job_rows())
    print_table(rows)


# --------------------------------------------------------------------------- the demo


def run(work: Path, quick: bool, cleanup: contextlib.ExitStack, mosquitto: tuple[str, str]) -> int:
    step("1. a private MQTT broker")
    broker_dir = work / "broker"
    broker_dir.mkdir()
    broker = Broker(broker_dir, *mosquitto)
    cleanup.callback(broker.stop)
    broker.start()
    say(f"mosquitto on {broker.url}, users operator, release-server, {DEVICE}; ACLs on")

    step("2. the fleet's signing key and two releases")
    key, public = rel.generate_keypair()
    say(f"key {rel.key_id(public)}: the operator signs with it, the device trusts its public half")
    manifests = make_releases(work, key)

    step("3. a release server and the device agent")
    server = ReleaseServer(broker.settings("release-server"), FLEET, [load_release(manifests[0])])
    server.start_thread()
    cleanup.callback(server.stop)
    say(f"release server: serving {MODEL} v1 (chunks on request, stateless)")
    config = load_agent_config(write_agent_config(work, broker, public))
    agent = AgentThread(MqttAgent(config))
    cleanup.callback(agent.stop)
    say(f"device agent {DEVICE} in group {GROUP}, store {config.store}")
    operator = FleetClient(broker.settings("operator"), FLEET).connect()
    cleanup.callback(operator.close)
    wait_for(
        lambda: operator.statuses.get(DEVICE, {}).get("state") == "online",
        10,
        f"{DEVICE} to come online",
    )
    say(f"{DEVICE} is online (its retained status document says so)")

    step(f"4. deploy v1 to group {GROUP}")
    deploy(operator, manifests[0], key)

    step("5. the application: classify the bundled samples with EdgeModel.from_store")
    app = Application(ModelStore(config.store, readonly=True), bundled.sample_paths())
    app.start()
    cleanup.callback(app.stop)
    app.ready.wait(30)
    if app.failures:
        raise RuntimeError(app.failures[0])
    wait_for(lambda: app.requests >= 50, 30, "the application's first requests")
    say(f"serving with v{app.version}: {app.requests} requests so far")

    step("6. release v2 and roll it out while the application serves")
    server.add(load_release(manifests[1]))
    say(f"release server: now also serving {MODEL} v2")
    before = app.requests
    deploy(operator, manifests[1], key)
    wait_for(lambda: app.version == 2, 30, "the application to take v2")
    first = app.first_v2_request or 0
    say(f"the application took v2 between requests {first - 1} and {first}")
    say("(its new session was built in the background while v1 kept serving)")
    # Keep serving on v2 for a moment so the counts below show both versions at work.
    wait_for(lambda: app.served[2] >= (50 if quick else 300), 30, "requests on v2")
    app.stop()

    step("7. what happened")
    total = app.requests
    say(
        f"{total} requests: {app.served[1]} served by v1, {app.served[2]} by v2, "
        f"{len(app.failures)} failed ({total - before} during and after the rollout)"
    )
    say(f"{app.correct}/{total} images classified as their file names say")
    say(
        f"release server: {server.requests} block requests, {server.chunks_sent} chunks, "
        f"{server.bytes_sent:,} bytes"
    )
    say("jobs (as `edge-sdk fleet jobs` prints them):")
    show_jobs(operator)
    if agent.error is not None:
        raise RuntimeError(f"the agent stopped: {agent.error}")
    if app.failures:
        say(f"first failure: {app.failures[0]}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same flow, shorter (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    executable, passwd = find_program("mosquitto"), find_program("mosquitto_passwd")
    if executable is None or passwd is None:
        print(
            "ota_demo: Mosquitto is not installed; install the Debian packages mosquitto and "
            f"mosquitto-clients (sudo apt-get install -y {PACKAGES})",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="edge-sdk-ota-demo-"))
    print(f"edge-sdk over-the-air demo (work directory {work})")
    started = time.monotonic()
    status = 1
    try:
        with contextlib.ExitStack() as cleanup:
            status = run(work, args.quick, cleanup, (executable, passwd))
            step("8. cleaning up")
        say("stopped the application, the agent, the release server and the broker")
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        status = 130
    except (EdgeSDKError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"\nota_demo failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            say(f"kept {work} (broker config and log, releases, the device's agent.toml, store)")
        else:
            shutil.rmtree(work, ignore_errors=True)
            say(f"removed {work}")
    if status == 0:
        say(f"done in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
