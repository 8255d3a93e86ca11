"""Watching a fleet: a device's telemetry from the inference path to the operator's table.

Starts a private Mosquitto broker on a free loopback port, a device agent (``cam-01``, the
bundled digits model already in its store) that publishes a telemetry report every second or
two, and an application on the device that classifies images (one request in ten malformed, so
the error rate is not zero). On the operator's side a ``TelemetryCollector`` stores every report
in a SQLite file through a persistent MQTT session; it is stopped for a few seconds and started
again to show that the reports sent meanwhile waited at the broker. Then the fleet's status
table (``edge-sdk fleet status``), what the store holds (``edge-sdk fleet telemetry --summary``)
and the newest reports flattened (``--format csv``) are printed. Everything started is stopped
by its own handle and the temporary directory removed, also on Ctrl-C or an error.

    python examples/fleet_telemetry.py [--quick] [--keep]

Needs Mosquitto 2.x (Debian/Ubuntu packages mosquitto and mosquitto-clients); the broker is
examples/ota_demo.py's. Guides: docs/fleet.md ("Watching the fleet"), docs/telemetry.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from ota_demo import DEVICE, FLEET, PACKAGES, AgentThread, Broker, find_program, say, step, wait_for

from edge_sdk import BrokerSettings, EdgeModel, EdgeSDKError, FleetClient, ModelStore, bundled
from edge_sdk import release as rel
from edge_sdk.agent.mqtt import MqttAgent
from edge_sdk.fleet_telemetry import (
    TelemetryCollector,
    TelemetryStore,
    csv_rows,
    status_table,
    summary_table,
)
from edge_sdk.reports import SpoolWriter
from edge_sdk.spool import Spool

MODEL = "digits"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def provision(store_root: Path) -> None:
    """The device as it leaves the factory: the bundled model verified and active in its
    store (on a real fleet, `edge-sdk fleet deploy` puts it there; examples/ota_demo.py)."""
    key, _ = rel.generate_keypair()
    model = bundled.model_path()
    manifest = rel.build_manifest(model, MODEL, 1)
    signed = rel.sign(manifest, key)
    data = model.read_bytes()
    store = ModelStore(store_root)
    with store.begin_download(
        MODEL,
        1,
        size=manifest.size,
        sha256=manifest.sha256,
        chunk_size=manifest.chunk_size,
        chunk_hashes=list(manifest.chunks),
        manifest_bytes=signed.to_json().encode(),
    ) as download:
        for index in download.missing():
            offset, length = manifest.chunk_span(index)
            download.write_chunk(index, data[offset : offset + length])
        download.complete()
    store.activate(MODEL, 1)


def write_agent_config(device: Path, broker: Broker, interval: float) -> tuple[Path, Any]:
    """agent.toml, and the fleet's private key (the operator's: it signs commands)."""
    password = device / "mqtt-password"
    password.write_text(broker.passwords[DEVICE] + "\n")
    password.chmod(0o600)
    fleet_key, fleet_public = rel.generate_keypair()
    (device / "fleet.pub").write_text(rel.public_key_to_base64(fleet_public) + "\n")
    path = device / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n'
        f'fleet = "{FLEET}"\n'
        'groups = ["lab"]\n'
        f'broker = "{broker.url}"\n'
        f'username = "{DEVICE}"\n'
        'password_file = "mqtt-password"\n'
        'store = "store"\n'
        'trusted_keys = ["fleet.pub"]\n'
        "reconnect_max = 2\n"
        # Seconds between reports (60 by default); the spool every process on the device
        # writes its counters to.
        f"telemetry_interval = {interval}\n"
        'telemetry_spool = "telemetry.db"\n'
    )
    return path, fleet_key


class Application(threading.Thread):
    """Classifies images with the store's active model; its counters go to the device's
    spool every half second (SpoolWriter), where the agent builds reports from them."""

    def __init__(self, store: ModelStore, spool: Path) -> None:
        super().__init__(name="application", daemon=True)
        self.store = store
        self.writer = SpoolWriter(Spool(spool), interval=0.5)
        self.requests = 0
        self._halt = threading.Event()

    def run(self) -> None:
        self.writer.start()
        samples = bundled.sample_paths()
        with EdgeModel.from_store(self.store, MODEL) as model:
            while not self._halt.is_set():
                self.requests += 1
                if self.requests % 10 == 0:
                    # A malformed request: counted as an InputShapeError, the error rate moves.
                    with contextlib.suppress(EdgeSDKError):
                        model.run({model.inputs[0].name: np.zeros((1, 3), np.float32)})
                else:
                    model.predict(samples[self.requests % len(samples)])
                time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.writer.stop()


def collector_settings(broker: Broker) -> BrokerSettings:
    return BrokerSettings(
        url=broker.url,
        # Fixed, and kept for an hour after a disconnect: the broker queues the reports a
        # stopped collector misses under this id (`edge-sdk fleet collect` uses
        # edge-sdk-collector-FLEET and 7 days).
        client_id=f"edge-sdk-collector-{FLEET}",
        username="operator",
        password=broker.passwords["operator"],
        session_expiry=3600,
        reconnect_max=2,
    )


def reports_of(store: TelemetryStore) -> int:
    return sum(s.reports for s in store.summary([DEVICE]))


def run(work: Path, quick: bool, cleanup: contextlib.ExitStack, mosquitto: tuple[str, str]) -> int:
    interval = 1 if quick else 2
    step("1. a private MQTT broker")
    (work / "broker").mkdir()
    broker = Broker(work / "broker", *mosquitto)
    cleanup.callback(broker.stop)
    broker.start()
    say(f"mosquitto on {broker.url}")

    step(f"2. the device: an agent reporting every {interval} s, and an application")
    device = work / "device"
    device.mkdir()
    provision(device / "store")
    config_path, fleet_key = write_agent_config(device, broker, interval)
    from edge_sdk import load_agent_config

    config = load_agent_config(config_path)
    agent = AgentThread(MqttAgent(config))
    cleanup.callback(agent.stop)
    app = Application(ModelStore(config.store, readonly=True), config.effective_telemetry_spool)
    app.start()
    cleanup.callback(app.stop)
    say(f"{DEVICE} serves {MODEL} v1; reports go to edge/v1/{FLEET}/devices/{DEVICE}/telemetry")

    step("3. the operator's collector (edge-sdk fleet collect --db telemetry.db)")
    store = TelemetryStore(work / "telemetry.db")
    cleanup.callback(store.close)
    collector = TelemetryCollector(collector_settings(broker), FLEET, store)
    collector.start_thread()
    wanted = 3 if quick else 6
    wait_for(lambda: reports_of(store) >= wanted, 30, f"{wanted} reports")
    say(f"{reports_of(store)} reports stored")

    step("4. the collector stops for a while; the broker keeps its session")
    collector.stop()
    down_at, stored_before = time.time(), reports_of(store)
    time.sleep(2.5 * interval)
    back_at = time.time()
    collector = TelemetryCollector(collector_settings(broker), FLEET, store)
    collector.start_thread()
    cleanup.callback(collector.stop)
    wait_for(lambda: reports_of(store) >= stored_before + 3, 30, "the queued reports")
    meanwhile = store.reports(devices=[DEVICE], since=down_at, until=back_at)
    say(
        f"down for {back_at - down_at:.1f} s; the {len(list(meanwhile))} reports made meanwhile "
        "arrived when it was back"
    )

    step("5. the fleet's status (edge-sdk fleet status --db telemetry.db)")
    operator = FleetClient(broker.settings("operator"), FLEET).connect(settle=0.3, telemetry=True)
    cleanup.callback(operator.close)
    newest = store.latest(DEVICE)
    rows = operator.status_rows(reports={DEVICE: newest.report} if newest else None)
    print_table(status_table(rows))
    say("p99 inf ms: the worst inference p99 of the newest report; errors: failed / attempted")

    step("6. what the store holds (edge-sdk fleet telemetry --db telemetry.db --summary)")
    summaries = store.summary()
    print_table(summary_table(summaries))
    for item in summaries:
        say(
            f"{item.device}: {item.reports} reports stored, seq {item.first_seq}-"
            f"{item.last_seq}, {item.duplicates} duplicates, {item.missing} missing"
        )

    step("7. the newest reports, flattened (edge-sdk fleet telemetry --format csv --since 1m)")
    recent = list(store.reports(devices=[DEVICE], since=time.time() - 60))[-2:]
    columns = ["seq", "created", "model", "version", "calls", "errors", "inference_p99_ms"]
    table = [columns]
    for stored in recent:
        for flat in csv_rows(stored):
            table.append(["" if flat.get(c) is None else str(flat.get(c)) for c in columns])
    print_table(table)
    step("8. signed commands (edge-sdk fleet cmd cam-01 ping|diag|set_telemetry_interval ...)")
    pong = operator.command(DEVICE, "ping", private_key=fleet_key)["result"]
    say(f"ping: agent up {pong['uptime_s']:.1f} s, session {pong['session']}")
    diag = operator.command(DEVICE, "diag", private_key=fleet_key)["result"]
    say(
        f"diag: {len(diag['integrity'])} active model(s) intact: "
        f"{all(check['ok'] for check in diag['integrity'])}; "
        f"{diag['telemetry']['spooled_reports']} report(s) waiting in the spool"
    )
    changed = operator.command(
        DEVICE, "set_telemetry_interval", {"seconds": 30}, private_key=fleet_key
    )["result"]
    say(f"telemetry now every {changed['interval_s']:g} s (was {changed['previous_s']:g} s)")
    try:
        operator.command(DEVICE, "set_telemetry_interval", {"seconds": 0}, private_key=fleet_key)
    except EdgeSDKError as exc:
        say(f"refused as it should be: {exc}")
    app.stop()
    say(f"the application served {app.requests} requests")
    if agent.error is not None:
        raise RuntimeError(f"the agent stopped: {agent.error}")
    return 0 if all(item.missing == 0 for item in summaries) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same flow, shorter (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    executable, passwd = find_program("mosquitto"), find_program("mosquitto_passwd")
    if executable is None or passwd is None:
        print(
            "fleet_telemetry: Mosquitto is not installed; install the Debian packages mosquitto "
            f"and mosquitto-clients (sudo apt-get install -y {PACKAGES})",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="edge-sdk-fleet-telemetry-"))
    print(f"edge-sdk fleet telemetry demo (work directory {work})")
    started = time.monotonic()
    status = 1
    try:
        with contextlib.ExitStack() as cleanup:
            status = run(work, args.quick, cleanup, (executable, passwd))
            step("9. cleaning up")
        say("stopped the application, the agent, the collector and the broker")
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        status = 130
    except (EdgeSDKError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"\nfleet_telemetry failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            say(f"kept {work} (broker, the device's store and spool, telemetry.db)")
        else:
            shutil.rmtree(work, ignore_errors=True)
            say(f"removed {work}")
    if status == 0:
        say(f"done in {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
