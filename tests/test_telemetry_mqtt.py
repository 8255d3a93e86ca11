"""Telemetry reports over a real broker: an agent builds them from the spool every interval and
publishes them in order; through a broker outage they wait in the spool and arrive afterwards,
in order, marked historical, none missing; a report leaves the spool only once acknowledged."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import _broker
import _ota
import numpy as np
import pytest

from edge_sdk import bundled, telemetry
from edge_sdk.reports import SpoolWriter
from edge_sdk.runtime import EdgeModel
from edge_sdk.spool import Spool

DEVICE = "device-1"


@pytest.fixture(autouse=True)
def _recording_on():
    telemetry.configure(enabled=True)
    yield
    telemetry.configure(enabled=None)


class Collector:
    """The operator's view: every telemetry message of DEVICE, in arrival order."""

    def __init__(self, broker: _broker.MosquittoBroker) -> None:
        # A persistent session: what the device sends while the operator is reconnecting waits
        # at the broker for it (as it would for a real operator's collector).
        self.peer = _broker.PahoPeer(
            broker,
            "operator",
            client_id="telemetry-collector",
            reconnect=True,
            clean_start=False,
            session_expiry=600,
        )
        self.peer.connect()
        self.topic = f"{broker.topic_root}devices/{DEVICE}/telemetry"
        self.peer.subscribe(self.topic)
        self.reports: list[dict] = []

    def drain(self) -> list[dict]:
        while True:
            try:
                message = self.peer.expect(timeout=0.05)
            except AssertionError:
                return self.reports
            if message.topic == self.topic:
                self.reports.append(json.loads(message.payload))

    def close(self) -> None:
        self.peer.close()


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    _ota.wait_for(condition, timeout, what)


def test_reports_flow_in_order_and_survive_a_broker_outage(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> None:
    broker = mosquitto_factory(persistence=True)
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    spool_path = tmp_path / "telemetry.db"
    agent = fleet.start_agent(
        DEVICE, telemetry_interval=1, telemetry_spool=str(spool_path), reconnect_max=1
    )
    # The "application": a model serving in this process, its counters written to the spool.
    writer = SpoolWriter(Spool(spool_path), interval=0.1).start()
    stop = threading.Event()
    served = [0]

    # Its own file name: the recorder keys by it, apart from other tests in this process.
    model_path = tmp_path / "outage-model.onnx"
    model_path.write_bytes(bundled.model_path().read_bytes())

    def serve() -> None:
        with EdgeModel.load(model_path, profile=None) as model:
            image = np.zeros((8, 8), np.uint8)
            while not stop.is_set():
                model.predict(image)
                served[0] += 1
                time.sleep(0.002)

    app = threading.Thread(target=serve)
    app.start()
    collector = Collector(broker)
    try:
        _wait(lambda: len(collector.drain()) >= 3, 20, "three live reports")
        broker.stop()  # an outage of a few seconds (SIGTERM: the broker saves its state)
        outage_started = time.time()
        time.sleep(5.0)
        assert agent.agent.telemetry is not None
        spooled = agent.agent.telemetry.spool.pending()
        assert spooled >= 4, "reports did not accumulate in the spool while offline"
        broker.restart()
        collector.peer.wait_connacks(2, timeout=15)
        _wait(
            lambda: any(
                r.get("historical") is False and r.get("created", 0) > outage_started + 5
                for r in collector.drain()
            ),
            30,
            "a live report after the outage",
        )
    finally:
        stop.set()
        app.join(10)
        writer.stop()
        agent.stop()
        collector.close()
        fleet.close()
    reports = collector.reports
    seqs = [r["seq"] for r in reports]
    unique = sorted(set(seqs))
    assert unique == list(range(unique[0], unique[-1] + 1)), "a gap in the sequence numbers"
    # In order: every first appearance comes after the previous sequence number's.
    first_seen = [s for i, s in enumerate(seqs) if s not in seqs[:i]]
    assert first_seen == sorted(first_seen)
    historical = [r for r in reports if r["historical"]]
    print(
        f"outage: produced {unique[-1] - unique[0] + 1}, spooled during the outage {spooled}, "
        f"delivered {len(unique)}, duplicates {len(seqs) - len(unique)}, gaps 0, "
        f"historical {len(historical)}"
    )
    assert len(historical) >= 4, "the outage's reports were not marked historical"
    calls = sum(
        entry["calls"]
        for r in {r["seq"]: r for r in reports}.values()
        for entry in r["models"].get("outage-model", {}).values()
    )
    assert 0 < calls <= served[0]
    assert all(r["device"] == DEVICE and r["schema"] == 1 for r in reports)
    # The outage lost nothing: nothing evicted, nothing failed on the device.
    assert all(r["dropped"] == 0 and r["problems"] == [] for r in reports)
    with Spool(spool_path) as spool:
        # Whatever is left was made after the last acknowledgement we waited for.
        assert spool.pending() <= 3
