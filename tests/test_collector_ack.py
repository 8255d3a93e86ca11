"""The operator's telemetry collector acknowledges a report to the broker only once it is
committed (paho's manual_ack), against a real Mosquitto: a collector that dies between
receiving a report and committing it gets the report again from its session, and a store that
cannot write keeps the report unacknowledged until it can."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import _broker
import _ota

from edge_sdk._mqtt import BrokerSettings
from edge_sdk.errors import FleetError
from edge_sdk.fleet_telemetry import TelemetryCollector, TelemetryStore

DEVICE = "device-1"
CLIENT_ID = "edge-sdk-collector-test"


def _settings(broker: _broker.MosquittoBroker) -> BrokerSettings:
    creds = broker.operator
    return BrokerSettings(
        url=broker.url,
        client_id=CLIENT_ID,
        username=creds.username,
        password=creds.password,
        session_expiry=600,
        reconnect_max=1,
    )


def _publish_report(broker: _broker.MosquittoBroker, seq: int) -> None:
    report = {"schema": 1, "device": DEVICE, "seq": seq, "created": time.time(), "models": {}}
    with _broker.PahoPeer(broker, DEVICE) as device:
        device.connect()
        topic = f"{broker.topic_root}devices/{DEVICE}/telemetry"
        assert device.publish(topic, json.dumps(report).encode()).value == 0


def _seqs(path: Path) -> list[int]:
    with TelemetryStore(path, create=False) as store:
        return [stored.seq for stored in store.reports(devices=[DEVICE])]


def _die(collector: TelemetryCollector) -> None:
    """What the broker sees when the collector's process is SIGKILLed: the socket closes
    without a DISCONNECT, and no acknowledgement was sent."""
    collector.connection.client.on_disconnect = None
    collector.connection.client.loop_stop()
    sock = collector.connection.client.socket()
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def test_a_report_in_flight_when_the_collector_dies_comes_again(mosquitto, tmp_path: Path):
    db = tmp_path / "telemetry.db"
    store = TelemetryStore(db)
    received = threading.Event()
    never = threading.Event()
    committing = store.add_reports

    def stuck(reports):  # the collector dies before its batch is committed
        received.set()
        never.wait(30)
        raise FleetError("died before the commit")

    store.add_reports = stuck  # type: ignore[method-assign]
    first = TelemetryCollector(_settings(mosquitto), mosquitto.fleet, store)
    first.start_thread()
    _publish_report(mosquitto, 1)
    assert received.wait(10), "the report never reached the collector"
    _die(first)
    store.add_reports = committing  # type: ignore[method-assign]

    with TelemetryStore(db) as again_store:
        again = TelemetryCollector(_settings(mosquitto), mosquitto.fleet, again_store)
        again.start_thread()
        try:
            _ota.wait_for(lambda: _seqs(db) == [1], 10, "the report sent again by the broker")
        finally:
            again.stop()
    never.set()


def test_a_store_that_cannot_write_keeps_reports_unacknowledged(mosquitto, tmp_path: Path):
    db = tmp_path / "telemetry.db"
    store = TelemetryStore(db)
    failing = threading.Event()
    failing.set()
    committing = store.add_reports
    attempts = [0]

    def full_disk(reports):
        attempts[0] += 1
        if failing.is_set():
            raise FleetError("telemetry store: database or disk is full")
        return committing(reports)

    store.add_reports = full_disk  # type: ignore[method-assign]
    collector = TelemetryCollector(_settings(mosquitto), mosquitto.fleet, store)
    collector.start_thread()
    try:
        for seq in (1, 2, 3):
            _publish_report(mosquitto, seq)
        _ota.wait_for(lambda: attempts[0] >= 2, 10, "a retry of the failed batch")
        assert _seqs(db) == []
        assert collector.stats.errors >= 2 and "disk is full" in collector.stats.last_error
        failing.clear()  # space freed
        _ota.wait_for(lambda: _seqs(db) == [1, 2, 3], 10, "the retried batch committed")
    finally:
        collector.stop()
        store.close()
    # Committed and acknowledged: a new collector on the same session gets nothing again.
    with TelemetryStore(db) as again_store:
        again = TelemetryCollector(_settings(mosquitto), mosquitto.fleet, again_store)
        again.start_thread()
        time.sleep(1.0)
        again.stop()
        assert again.stats.duplicates == 0
    assert _seqs(db) == [1, 2, 3]


def test_a_poison_report_is_counted_and_does_not_stop_the_collector(mosquitto, tmp_path: Path):
    db = tmp_path / "telemetry.db"
    with TelemetryStore(db) as store:
        collector = TelemetryCollector(_settings(mosquitto), mosquitto.fleet, store)
        collector.start_thread()
        try:
            _publish_report(mosquitto, 10**20)  # no SQLite integer holds it
            _publish_report(mosquitto, 1)
            _ota.wait_for(lambda: _seqs(db) == [1], 10, "the good report after the poison one")
            assert collector._thread is not None and collector._thread.is_alive()
            assert collector.stats.malformed >= 1
        finally:
            collector.stop()
