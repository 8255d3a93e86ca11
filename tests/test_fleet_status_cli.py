"""The operator's view of the fleet against a real Mosquitto: ``edge-sdk fleet status``, ``watch``,
``collect`` (a child process with a persistent session) and ``telemetry``, fed by real device
agents publishing telemetry reports of a model an application serves in this process.

References: docs/fleet.md ("Watching the fleet"), docs/telemetry.md (report schema 1),
docs/fleet-protocol.md (status document), MQTT 5.0 section 3.1.2.11.2 (Session Expiry Interval:
the broker keeps a disconnected client's session and queues its QoS 1 messages).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _broker
import _ota
import numpy as np
import pytest
from _cli import CLI
from hypothesis import given
from hypothesis import strategies as st

from edge_sdk import InputError, bundled, telemetry
from edge_sdk.fleet import status_supersedes
from edge_sdk.fleet_telemetry import (
    TelemetryStore,
    format_age,
    parse_time,
    status_row,
)
from edge_sdk.reports import SpoolWriter
from edge_sdk.runtime import EdgeModel
from edge_sdk.spool import Spool
from edge_sdk.store import ModelStore

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ANSI = "\x1b["


@pytest.fixture(autouse=True)
def _recording_on() -> Iterator[None]:
    telemetry.configure(enabled=True)
    yield
    telemetry.configure(enabled=None)


# --------------------------------------------------------------------------- helpers


def _broker_args(broker: _broker.MosquittoBroker, user: str, tmp_path: Path) -> list[str]:
    password = tmp_path / f"{user}.password"
    password.write_text(broker.credentials(user).password + "\n")
    return [
        "--broker", broker.url, "--fleet", broker.fleet,
        "--username", user, "--password-file", str(password),
    ]  # fmt: skip


def _provision(fleet: _ota.OtaFleet, device: str, version: int = 1) -> ModelStore:
    """The bundled digits model installed and active in the device's store before its agent
    starts (a device imaged with its model), so the status document lists it."""
    release = fleet.release(bundled.model_path().read_bytes(), version, name="digits")
    manifest = release.manifest
    data = release.model.read_bytes()
    store = fleet.store_of(device)
    with store.begin_download(
        manifest.name,
        manifest.version,
        size=manifest.size,
        sha256=manifest.sha256,
        chunk_size=manifest.chunk_size,
        chunk_hashes=list(manifest.chunks),
        manifest_bytes=release.text.encode(),
    ) as download:
        for index in download.missing():
            offset, length = manifest.chunk_span(index)
            download.write_chunk(index, data[offset : offset + length])
        download.complete()
    store.activate(manifest.name, manifest.version)
    return store


class Application(threading.Thread):
    """Serves the store's active model, one bad call in ten (an input error, counted as an
    error by the recorder), with its counters written to the device's spool."""

    def __init__(self, store: ModelStore, spool: Path) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.writer = SpoolWriter(Spool(spool), interval=0.2).start()
        self.halt = threading.Event()
        self.calls = 0

    def run(self) -> None:
        with EdgeModel.from_store(self.store, "digits", profile=None) as model:
            image = np.zeros((8, 8), np.uint8)
            while not self.halt.is_set():
                self.calls += 1
                if self.calls % 10 == 0:
                    with contextlib.suppress(InputError):
                        model.run({"not-an-input": np.zeros((1, 1, 8, 8), np.float32)})
                else:
                    model.predict(image)
                time.sleep(0.005)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        self.writer.stop()


def _start_collector(
    broker: _broker.MosquittoBroker, db: Path, tmp_path: Path
) -> subprocess.Popen[str]:
    argv = ["fleet", "collect", "--db", str(db), *_broker_args(broker, "operator", tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "collecting telemetry of fleet" in line, line + process.stdout.read()
    return process


def _stop_collector(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    return out


def _summary(db: Path) -> dict[str, dict]:
    with TelemetryStore(db, create=False) as store:
        return {s.device: s.to_dict() for s in store.summary()}


def _report(seq: int, created: float, **extra: object) -> dict:
    report = {
        "schema": 1, "device": "device-2", "seq": seq, "historical": False,
        "created": created, "interval_s": 1.0, "dropped": 0,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "models": {"scorer": {"4": {
            "calls": 90, "errors": {"InputShapeError": 10}, "processes": 1,
            "latency_ms": {"inference": {"p50": 1.0, "p95": 2.0, "p99": 3.5}},
        }}},
        "system": {"cpu_percent": 50.0, "temperatures_c": {"cpu-thermal": 71.5, "gpu": 64.0},
                   "throttling": {"throttled": True, "under_voltage": False},
                   "memory_mb": {"total": 1000.0, "available": 400.0}},
    }  # fmt: skip
    report.update(extra)
    return report


# --------------------------------------------------------------------------- collect, export


def test_collect_status_and_export_with_real_agents(cli: CLI, mosquitto, tmp_path: Path) -> None:
    fleet = _ota.OtaFleet(mosquitto, tmp_path / "fleet")
    operator = _broker_args(mosquitto, "operator", tmp_path)
    db = tmp_path / "telemetry.db"
    spool = tmp_path / "device-1-telemetry.db"
    store = _provision(fleet, "device-1")
    agent = fleet.start_agent(
        "device-1", groups=["lab"], telemetry_interval=1, telemetry_spool=str(spool)
    )
    app = Application(ModelStore(store.root, readonly=True), spool)
    app.start()
    collector = _start_collector(mosquitto, db, tmp_path)
    peer = _broker.PahoPeer(mosquitto, "device-2")
    peer.connect()
    try:
        _ota.wait_for(
            lambda: db.exists() and _summary(db).get("device-1", {}).get("reports", 0) >= 2,
            20,
            "two reports of device-1 in the store",
        )
        # A device that sends a report twice (QoS 1 re-delivery, a re-send after a restart)
        # and loses two: 1, 2, 2, 5 -> three stored, one duplicate, 3-4 missing.
        topic = f"{mosquitto.topic_root}devices/device-2/telemetry"
        now = time.time()
        for seq in (1, 2, 2, 5):
            peer.publish(topic, json.dumps(_report(seq, now - 10 + seq)))
        peer.publish(topic, b"not json")
        _ota.wait_for(
            lambda: _summary(db).get("device-2", {}).get("duplicates") == 1, 10, "the duplicate"
        )
        out = _stop_collector(collector)
        assert "duplicates" in out and "1 malformed" in out, out
        stopped_at = _summary(db)["device-1"]["last_seq"]

        # Down for a while: the broker keeps the collector's session and queues the reports.
        time.sleep(2.5)
        collector = _start_collector(mosquitto, db, tmp_path)
        _ota.wait_for(
            lambda: _summary(db)["device-1"]["last_seq"] >= stopped_at + 3,
            20,
            "the reports made while the collector was down",
        )

        status = cli("fleet", "status", "--db", db, "--json", *operator)
        assert status.code == 0, status.err
        rows = {row["device"]: row for row in status.json()["devices"]}
        one = rows["device-1"]
        assert one["online"] is True and one["groups"] == ["lab"]
        assert one["models"] == {"digits": 1}
        assert one["p99_inference_ms"] is not None and one["p99_inference_ms"] > 0
        assert one["p99_model"] == "digits:1"
        assert one["calls"] > 0 and 0 < one["error_rate"] < 0.5
        assert one["report_age_s"] is not None and one["report_age_s"] < 30
        # device-2 published reports but no status: known, online unknown.
        assert rows["device-2"]["online"] is None and rows["device-2"]["report_seq"] == 5

        table = cli("fleet", "status", "--db", db, "--device", "device-1", *operator)
        assert table.code == 0, table.err
        assert ANSI not in table.out
        lines = table.out.splitlines()
        assert lines[0].startswith("fleet fleet-1: 1 device(s), 1 online")
        assert lines[1].split()[:2] == ["device", "online"]
        assert lines[2].split()[:3] == ["device-1", "yes", "digits:1"]
    finally:
        peer.close()
        app.stop()
        agent.stop()
        if collector.poll() is None:
            out = _stop_collector(collector)
        fleet.close()

    # The collector stored everything once, with no gap, across its own restart.
    summary = _summary(db)
    assert summary["device-1"]["missing"] == 0, summary
    assert summary["device-2"]["reports"] == 3
    assert summary["device-2"]["gaps"] == [[3, 4]] and summary["device-2"]["missing"] == 2

    # The agent stopped: its retained status says offline.
    status = cli("fleet", "status", "--json", *operator)
    assert status.code == 0, status.err
    assert {r["device"]: r["online"] for r in status.json()["devices"]}["device-1"] is False

    # Exports, parsed back.
    jsonl = cli("fleet", "telemetry", "--db", db, "--device", "device-1")
    assert jsonl.code == 0, jsonl.err
    reports = [json.loads(line) for line in jsonl.out.splitlines()]
    seqs = [r["seq"] for r in reports]
    assert seqs == sorted(set(seqs)) and len(seqs) == summary["device-1"]["reports"]
    assert all(r["device"] == "device-1" and r["schema"] == 1 for r in reports)

    as_csv = cli("fleet", "telemetry", "--db", db, "--format", "csv", "--since", "1h")
    assert as_csv.code == 0, as_csv.err
    rows_csv = list(csv.DictReader(io.StringIO(as_csv.out)))
    # The application serves the store's version 1. (The spool writer reports every model this
    # process ran, so the suite's earlier in-process runs of the bundled model may appear under
    # its metadata version too.)
    served = [
        r
        for r in rows_csv
        if r["device"] == "device-1" and r["model"] == "digits" and r["version"] == "1"
    ]
    assert served
    assert sum(int(r["calls"]) for r in served) > 0
    assert any(r["inference_p99_ms"] for r in served)
    forged = [r for r in rows_csv if r["device"] == "device-2"]
    assert [r["seq"] for r in forged] == ["1", "2", "5"]
    assert forged[0]["temperature_max_c"] == "71.5" and forged[0]["throttled"] == "true"
    assert forged[0]["error_types"] == "InputShapeError=10"

    later = cli("fleet", "telemetry", "--db", db, "--since", "2099-01-01T00:00:00Z")
    assert later.code == 0 and later.out == "" and "no reports" in later.err

    summary_cli = cli("fleet", "telemetry", "--db", db, "--summary", "--json")
    assert summary_cli.code == 0
    assert {d["device"]: d["missing"] for d in summary_cli.json()} == {
        "device-1": 0,
        "device-2": 2,
    }
    text = cli("fleet", "telemetry", "--db", db, "--summary")
    assert "3-4" in text.out and ANSI not in text.out


# --------------------------------------------------------------------------- retained views


def _publish_fake_device(broker: _broker.MosquittoBroker) -> None:
    """device-3 as the agents of the next version publish it: a status with a session and
    the newest report retained on telemetry/latest (with the device's own credentials)."""
    with _broker.PahoPeer(broker, "device-3") as peer:
        peer.connect()
        root = f"{broker.topic_root}devices/device-3/"
        status = {
            "device": "device-3", "state": "online", "fleet": broker.fleet, "groups": ["yard"],
            "models": {"scorer": {"active": 4, "previous": 3}}, "session": 7,
            "sdk_version": "0.1.0", "onnxruntime_version": "1.20.0",
            "telemetry_interval_s": 60, "at": "2026-01-01T00:00:00Z",
        }  # fmt: skip
        peer.publish(root + "status", json.dumps(status), retain=True)
        latest = _report(41, time.time() - 5, device="device-3")
        peer.publish(root + "telemetry/latest", json.dumps(latest), retain=True)


def test_status_watch_and_tty(cli: CLI, mosquitto, tmp_path: Path) -> None:
    fleet = _ota.OtaFleet(mosquitto, tmp_path / "fleet")
    operator = _broker_args(mosquitto, "operator", tmp_path)
    _provision(fleet, "device-1")
    agent = fleet.start_agent(
        "device-1", telemetry_interval=1, telemetry_spool=str(tmp_path / "spool.db")
    )
    try:
        _publish_fake_device(mosquitto)
        op = fleet.operator()
        _ota.wait_for(
            lambda: op.statuses.get("device-1", {}).get("state") == "online", 20, "device-1"
        )
        started = time.monotonic()
        status = cli("fleet", "status", "--json", *operator)
        took = time.monotonic() - started
        assert status.code == 0, status.err
        assert took < 2.0, f"fleet status took {took:.2f} s"
        rows = {row["device"]: row for row in status.json()["devices"]}
        three = rows["device-3"]
        assert three["online"] is True and three["session"] == 7
        assert three["models"] == {"scorer": 4} and three["report_seq"] == 41
        assert three["onnxruntime_version"] == "1.20.0"
        assert three["p99_inference_ms"] == 3.5 and three["p99_model"] == "scorer:4"
        assert three["error_rate"] == 0.1 and three["temperature_c"] == 71.5
        assert three["throttled"] is True and three["late"] is False
        assert rows["device-1"]["online"] is True and rows["device-1"]["models"] == {"digits": 1}

        group = cli("fleet", "status", "--group", "yard", *operator)
        assert group.code == 0, group.err
        assert "device-3" in group.out and "device-1" not in group.out
        line = next(x for x in group.out.splitlines() if x.startswith("device-3"))
        assert line.split()[1:] == ["yes", "scorer:4", line.split()[3], "3.5", "10.0%", "71.5",
                                    "yes"]  # fmt: skip

        # watch, not on a terminal: a plain table each time something changed (device-1's
        # reports arrive every second), never an escape sequence; ended by --count.
        started = time.monotonic()
        watch = cli("fleet", "watch", "--count", "2", "--interval", "0.2", *operator)
        assert watch.code == 0, watch.err
        assert time.monotonic() - started < 15
        assert ANSI not in watch.out
        tables = [t for t in watch.out.split("\n\n") if t.strip()]
        assert len(tables) == 2, watch.out
        for table in tables:
            lines = table.splitlines()
            assert "fleet fleet-1: 2 device(s), 2 online" in lines[0]
            assert lines[1].split()[:2] == ["device", "online"]

        lines_json = cli("fleet", "watch", "--json", "--count", "2", "--interval", "0.2",
                         "--device", "device-1", *operator)  # fmt: skip
        assert lines_json.code == 0, lines_json.err
        documents = [json.loads(x) for x in lines_json.out.splitlines()]
        assert len(documents) == 2
        assert [d["devices"][0]["device"] for d in documents] == ["device-1", "device-1"]
        seqs = [d["devices"][0]["report_seq"] for d in documents]
        assert seqs[0] != seqs[1]  # printed because a new report came

        started = time.monotonic()
        timed = cli("fleet", "watch", "--duration", "0.5", "--interval", "5", *operator)
        assert timed.code == 0 and time.monotonic() - started < 5

        # collect for a moment, totals as JSON: the retained status documents are stored.
        db = tmp_path / "short.db"
        collected = cli("fleet", "collect", "--db", db, "--duration", "1.5", "--json", *operator)
        assert collected.code == 0, collected.err
        assert collected.json()["stats"]["statuses"] >= 2
        with TelemetryStore(db, create=False) as store:
            assert store.statuses()["device-3"]["session"] == 7

        # On a terminal: rich draws the table (escape sequences, the same cells).
        tty = _run_in_pty(["fleet", "status", *operator])
        assert ANSI in tty and "device-3" in tty and "scorer:4" in tty
        live = _run_in_pty(["fleet", "watch", "--count", "2", "--interval", "0.2", *operator])
        assert live.count("fleet fleet-1: 2 device(s)") >= 2 and ANSI in live
    finally:
        agent.stop()
        fleet.close()


def _run_in_pty(argv: list[str]) -> str:
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk", *argv],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert process.wait(20) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- errors


def test_clear_errors(cli: CLI, tmp_path: Path) -> None:
    bad_since = cli("fleet", "telemetry", "--db", tmp_path / "x.db", "--since", "yesterday")
    assert bad_since.code == 2
    assert "not a time: 'yesterday'" in bad_since.err and "10m" in bad_since.err

    missing = cli("fleet", "telemetry", "--db", tmp_path / "absent.db")
    assert missing.code == 1
    assert "no such file" in missing.err and "fleet collect --db" in missing.err
    assert not (tmp_path / "absent.db").exists()

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a SQLite database" * 100)
    broken = cli("fleet", "telemetry", "--db", corrupt)
    assert broken.code == 1 and "telemetry store" in broken.err
    assert "Traceback" not in broken.err and len(broken.err.strip().splitlines()) == 1

    other = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    foreign = cli("fleet", "telemetry", "--db", other, "--summary")
    assert foreign.code == 1 and "not an edge-sdk telemetry store" in foreign.err

    no_broker = cli("fleet", "status", "--broker", "", "--fleet", "f")
    assert no_broker.code == 1 and "no broker" in no_broker.err
    port = _broker.free_port()
    started = time.monotonic()
    down = cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{port}", "--fleet", "f")
    assert down.code == 1 and "MQTT broker" in down.err and "is the broker running" in down.err
    assert time.monotonic() - started < 10
    bad_count = cli("fleet", "watch", "--count", "0", "--broker", "mqtt://x:1", "--fleet", "f")
    assert bad_count.code == 2


def test_fleet_help_does_not_import_rich() -> None:
    code = (
        "import sys\n"
        "from edge_sdk.cli import main\n"
        "for argv in (['--help'], ['fleet', '--help'], ['fleet', 'status', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('RICH', 'rich' in sys.modules, 'sqlite3' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "RICH False False"


# --------------------------------------------------------------------------- the store


def test_store_counts_duplicates_conflicts_and_filters_by_time(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.db") as store:
        base = 1_800_000_000.0
        assert store.add_report("d", json.dumps(_report(1, base))) == "stored"
        # The same report re-sent after a reconnect: only "historical" differs.
        again = json.dumps(_report(1, base, historical=True))
        assert store.add_report("d", again) == "duplicate"
        # A recreated spool starts at 1 again: another report under a taken number.
        assert store.add_report("d", json.dumps(_report(1, base + 100))) == "conflict"
        assert store.add_report("d", b"[1, 2]") == "malformed"
        assert store.add_report("d", json.dumps({"seq": 0})) == "malformed"
        for seq in (2, 3, 7):
            store.add_report("d", json.dumps(_report(seq, base + seq)))
        (summary,) = store.summary()
        assert (summary.reports, summary.duplicates, summary.conflicts) == (4, 1, 1)
        assert summary.gaps == ((4, 6),) and summary.missing == 3
        window = [r.seq for r in store.reports(since=base + 2, until=base + 3)]
        assert window == [2, 3]
        assert store.latest("d") is not None and store.latest("d").seq == 7  # type: ignore[union-attr]
        assert next(r.copies for r in store.reports(devices=["d"])) == 2


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=80))
def test_gaps_are_the_missing_numbers(seqs: list[int]) -> None:
    import tempfile

    with (
        tempfile.TemporaryDirectory() as directory,
        TelemetryStore(Path(directory) / "t.db") as store,
    ):
        store.add_reports(("d", json.dumps({"seq": s, "created": float(s)})) for s in seqs)
        missing = [n for a, b in store.gaps("d") for n in range(a, b + 1)]
        assert missing == sorted(set(range(min(seqs), max(seqs) + 1)) - set(seqs))
        (summary,) = store.summary()
        assert summary.duplicates == len(seqs) - len(set(seqs))


def test_stale_offline_status_and_time_parsing() -> None:
    birth = {"state": "online", "session": 8}
    assert not status_supersedes(birth, {"state": "offline", "session": 7})  # the old Will
    assert status_supersedes(birth, {"state": "offline", "session": 8})  # its own death
    assert status_supersedes(birth, {"state": "offline"})  # an older agent: no session
    assert status_supersedes({"state": "offline", "session": 9}, {"state": "online", "session": 3})
    now = 1_000_000.0
    assert parse_time("10m", now=now) == now - 600
    assert parse_time("1.5h", now=now) == now - 5400
    assert parse_time("2026-01-01T00:00:00Z") == parse_time("2026-01-01T00:00:00+00:00")
    assert parse_time("2026-01-01T00:00:00") == parse_time("2026-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon")
    assert [format_age(s) for s in (5, 75, 3725, 90000, None)] == [
        "5s", "1m15s", "1h02m", "1d01h", "-",
    ]  # fmt: skip
    # The Will's short document keeps the models the newest report shows.
    row = status_row("d", {"state": "offline", "groups": []}, _report(3, now - 30), now=now)
    assert row.online is False and dict(row.models) == {"scorer": 4}
    assert row.report_age_s == 30 and not row.late


# --------------------------------------------------------------------------- the example


def test_fleet_telemetry_example_quick() -> None:
    _broker.require_mosquitto()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "fleet_telemetry.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cam-01  yes     digits:1" in result.stdout
    assert "0 missing" in result.stdout


def test_the_newest_report_is_decided_by_sequence_not_by_the_device_clock() -> None:
    from edge_sdk.fleet_telemetry import report_is_newer

    live = {"seq": 10, "created": 1_000_000.0, "historical": False}
    # The device's clock went back an hour: seq 11 is still the newer report.
    assert report_is_newer(live, {"seq": 11, "created": 996_400.0, "historical": False})
    # A report of the backlog arriving late never replaces a live one.
    assert not report_is_newer(live, {"seq": 12, "created": 1_000_100.0, "historical": True})
    # A lower number made earlier is an old report; made later, a recreated spool.
    assert not report_is_newer(live, {"seq": 3, "created": 999_000.0, "historical": False})
    assert report_is_newer(live, {"seq": 1, "created": 1_000_060.0, "historical": False})
    # A report the device could not store carries no number: its time places it.
    assert report_is_newer(live, {"seq": None, "created": 1_000_001.0})
    assert not report_is_newer(live, {"seq": None, "created": 999_999.0})
    assert report_is_newer(None, {"seq": 1})
