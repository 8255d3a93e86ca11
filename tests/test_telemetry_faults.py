"""Telemetry store-and-forward under faults, each against a real Mosquitto: an agent SIGKILLed
with a full spool and again mid-send, a spool over its bound while offline, the wall clock
going back an hour, an application and an agent whose disk refuses every write, and the
retained ``telemetry/latest``.

What the operator checks is what a collector can check: ``seq`` (gaps and duplicates),
``dropped`` (explains every gap), ``historical`` and ``problems`` (docs/telemetry.md).

Faults are made for real: SIGKILL of an ``edge-sdk agent`` process (tests/_agent_child.py),
a broker stopped (SIGTERM), ``time.time`` moved inside the agent's process (the system clock is
not ours to move), and RLIMIT_FSIZE=0 set on a running process from outside with prlimit(2):
the kernel then refuses every write to a regular file with EFBIG (Python ignores SIGXFSZ) and
SQLite fails the commit, as it does for a full (ENOSPC) or failing disk. Unlike a read-only
mount or a tiny tmpfs, it needs no mount privilege, so it runs on a CI machine as root or not.
"""

from __future__ import annotations

import itertools
import json
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _broker
import _ota
import pytest

from edge_sdk import bundled
from edge_sdk._mqtt import MqttConnection
from edge_sdk.agent.telemetry import TelemetryPublisher
from edge_sdk.reports import build_report
from edge_sdk.spool import Spool

DEVICE = "device-1"
WINDOW = 16  # TelemetryPublisher's default: reports unacknowledged at a time
REPO = Path(__file__).resolve().parents[1]


class Collector:
    """The operator: every message on DEVICE's telemetry stream and ``telemetry/latest``, in
    arrival order, with the monotonic time it arrived. A persistent session, so what the device
    sends while the collector reconnects after a broker restart waits for it."""

    def __init__(self, broker: _broker.MosquittoBroker, client_id: str = "collector") -> None:
        self.peer = _broker.PahoPeer(
            broker,
            "operator",
            client_id=client_id,
            reconnect=True,
            clean_start=False,
            session_expiry=600,
        )
        self.peer.connect()
        self.topic = f"{broker.topic_root}devices/{DEVICE}/telemetry"
        self.peer.subscribe(self.topic)
        self.peer.subscribe(self.topic + "/latest")
        self.stream: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.latest: list[tuple[bool, dict[str, Any]]] = []  # (retained flag, report)

    def drain(self) -> list[dict[str, Any]]:
        for message in self.peer.received():
            report = json.loads(message.payload)
            if message.topic == self.topic:
                self.stream.append(report)
                self.arrived.append(time.monotonic())
            elif message.topic == self.topic + "/latest":
                self.latest.append((bool(message.retain), report))
        return self.stream

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.drain()]

    def close(self) -> None:
        self.peer.close()


def _wait(condition: Callable[[], object], timeout: float, what: str) -> Any:
    return _ota.wait_for(condition, timeout, what)


def _first_seen(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[int] = set()
    first = []
    for report in reports:
        if report["seq"] not in seen:
            seen.add(report["seq"])
            first.append(report)
    return first


def _spool_state(path: Path) -> tuple[int, int, int]:
    """(last seq ever stored, reports pending, dropped) in one statement: one snapshot of the
    database, read the way an operator on the device would, beside the agent."""
    with sqlite3.connect(path, timeout=10) as db:
        row = db.execute(
            "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'reports'),"
            " (SELECT COUNT(*) FROM reports), (SELECT value FROM meta WHERE key = 'dropped')"
        ).fetchone()
    db.close()
    return int(row[0] or 0), int(row[1]), int(row[2])


def _set_file_size_limit(pid: int, limit: int) -> None:
    """prlimit(2) on a running process: 0 makes the kernel refuse every write to a regular
    file (EFBIG); RLIM_INFINITY lifts it (the hard limit was left unlimited)."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


# --------------------------------------------------------------------------- 1. SIGKILL

PREFILLED = 300  # reports waiting in the spool: a five-minute outage at one report a second
KILL_AFTER = 100  # the second agent dies right after the spool recorded this many acks


def test_an_agent_sigkilled_with_a_full_spool_and_mid_send_loses_no_report(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spool of 300 unsent reports; an agent that adds to it while the broker is unreachable
    is SIGKILLed; a second one is SIGKILLed mid-send, right after its 100th acknowledgement
    with up to 16 reports in flight; a third one sends the rest. Every report produced arrives,
    in order (first appearances), without a gap; the only duplicates are reports that were in
    flight at the kill (seq 101 to 116), at most the window."""
    broker = mosquitto_factory()
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    spool_path = tmp_path / "telemetry.db"
    settings = {
        "telemetry_interval": 1,
        "telemetry_spool": str(spool_path),
        "reconnect_max": 1,
    }
    broker.stop()  # unreachable: nothing listens on its port
    now = time.time()
    with Spool(spool_path) as spool:
        for i in range(PREFILLED):
            made = now - (PREFILLED - i)
            report = build_report(
                [], device_id=DEVICE, interval_s=1.0, now=made, extra={"created": made}
            )
            spool.add_report(json.dumps(report, sort_keys=True).encode())
    collector: Collector | None = None
    try:
        offline = fleet.start_agent_process(DEVICE, **settings)
        _wait(lambda: _spool_state(spool_path)[1] >= PREFILLED + 2, 30, "reports made offline")
        offline.kill()
        assert offline.process.returncode == -signal.SIGKILL
        spooled, pending, _ = _spool_state(spool_path)
        assert pending == spooled >= PREFILLED + 2  # all there after SIGKILL, none sent

        broker.start()
        collector = Collector(broker)
        monkeypatch.setenv("EDGE_SDK_TEST_KILL_AFTER_ACKS", str(KILL_AFTER))
        sender = fleet.start_agent_process(DEVICE, **settings)
        monkeypatch.delenv("EDGE_SDK_TEST_KILL_AFTER_ACKS")
        assert sender.wait(60) == -signal.SIGKILL, sender.output()[-3000:]
        at_kill, pending_at_kill, _ = _spool_state(spool_path)
        assert pending_at_kill == at_kill - KILL_AFTER  # acks 1..100 durable, the rest kept

        last = fleet.start_agent_process(DEVICE, **settings)
        _wait(
            lambda: (
                set(range(1, at_kill + 1)) <= set(collector.seqs())
                and any(not r["historical"] for r in collector.stream if r["seq"] > at_kill)
            ),
            60,
            "every spooled report and a live one",
        )
        assert last.terminate() == 0
        time.sleep(0.3)
        collector.drain()
    finally:
        if collector is not None:
            collector.close()
        fleet.close()

    produced, left, dropped = _spool_state(spool_path)
    with Spool(spool_path) as spool:
        left_seqs = {seq for seq, _ in spool.reports(limit=1000)}
    seqs = [r["seq"] for r in collector.stream]
    unique = set(seqs)
    duplicates = len(seqs) - len(unique)
    gaps = set(range(1, produced + 1)) - unique - left_seqs
    print(
        f"sigkill: produced {produced}, spooled at the first kill {spooled}, "
        f"delivered {len(unique)}, duplicates {duplicates}, gaps {len(gaps)}, "
        f"left in the spool {left}"
    )
    # Nothing lost: every seq ever stored was delivered, or waits in the spool for the next
    # start (the newest: made, or acknowledged, after the last agent was told to stop).
    assert dropped == 0 and not gaps
    assert all(s > at_kill for s in left_seqs)
    first = [r["seq"] for r in _first_seen(collector.stream)]
    assert first == sorted(first), "reports arrived out of order"
    duplicated = {s for s in unique if seqs.count(s) > 1}
    assert duplicates <= WINDOW
    assert duplicated <= set(range(KILL_AFTER + 1, KILL_AFTER + WINDOW + 1))
    # Made before the connection that sent them: historical, whichever agent sent them.
    assert all(r["historical"] for r in collector.stream if r["seq"] <= spooled)


# --------------------------------------------------------------------------- 2. eviction

MAX_REPORTS = 2


def test_over_its_bound_offline_the_spool_evicts_the_oldest_and_the_gap_is_explained(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> None:
    """Spool bound 2, broker stopped while reports keep coming: the oldest are evicted, the
    ``dropped`` counter grows by exactly the number evicted, the operator sees a gap in seq
    right after the last report before the outage, and the first report after it carries the
    ``dropped`` count that explains the gap (between any two consecutive reports received,
    the missing seqs equal the growth of ``dropped``)."""
    broker = mosquitto_factory(persistence=True)  # SIGTERM keeps the collector's session
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    spool_path = tmp_path / "telemetry.db"
    collector = Collector(broker)
    try:
        fleet.start_agent(
            DEVICE,
            telemetry_interval=1,
            telemetry_spool=str(spool_path),
            telemetry_max_reports=MAX_REPORTS,
            reconnect_max=1,
        )
        _wait(lambda: len(collector.seqs()) >= 2, 20, "two live reports")
        # Just after a report arrived and was acknowledged (the next is a second away), so
        # none is in flight: the arithmetic below is then exact.
        received = len(collector.seqs())
        _wait(lambda: len(collector.seqs()) > received, 5, "the next report")
        _wait(lambda: _spool_state(spool_path)[1] == 0, 5, "an empty spool")
        broker.stop()
        before = max(collector.seqs())
        last, pending, dropped_before = _spool_state(spool_path)
        assert (last, pending) == (before, 0), "a report was made or in flight at the stop"
        _wait(lambda: _spool_state(spool_path)[2] >= 3, 20, "three reports evicted")
        made_offline_last, pending_offline, dropped_offline = _spool_state(spool_path)
        broker.start()
        collector.peer.wait_connacks(2, timeout=15)
        _wait(
            lambda: any(not r["historical"] for r in collector.drain() if r["seq"] > before),
            30,
            "a live report after the outage",
        )
    finally:
        fleet.close()
        collector.close()
    produced, _, dropped_after = _spool_state(spool_path)
    reports = _first_seen(collector.stream)
    seqs = [r["seq"] for r in reports]
    evicted = dropped_after - dropped_before
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    duplicates = len(collector.stream) - len(reports)
    print(
        f"eviction: produced {produced - seqs[0] + 1} (seq {seqs[0]}..{produced}), made "
        f"offline {made_offline_last - before}, spooled {pending_offline}, evicted {evicted}, "
        f"delivered {len(seqs)}, duplicates {duplicates}, gaps {len(missing)}"
    )
    # Counted independently, in one snapshot while offline: made minus still stored.
    assert dropped_offline - dropped_before == made_offline_last - before - pending_offline
    assert pending_offline == MAX_REPORTS and evicted >= dropped_offline - dropped_before
    assert missing == list(range(before + 1, before + 1 + evicted))  # the oldest went first
    assert seqs == sorted(seqs) and duplicates == 0
    after = next(r for r in reports if r["seq"] > before)
    assert after["seq"] == before + evicted + 1 and after["historical"]
    assert after["dropped"] == dropped_before + evicted  # the next report says it
    for a, b in itertools.pairwise(reports):
        assert b["seq"] - a["seq"] - 1 == b["dropped"] - a["dropped"], (a["seq"], b["seq"])


# --------------------------------------------------------------------------- 3. clock


def test_the_wall_clock_going_back_an_hour_changes_no_order_interval_or_historical(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent process whose wall clock (``time.time``) goes back 3600 s three seconds after
    it started: reports keep their order (seq), none is dropped or sent twice, they keep
    coming once a second (the interval runs on the monotonic clock), and none is marked
    historical (decided by seq, not by comparing wall-clock times that went backwards)."""
    broker = mosquitto_factory()
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    collector = Collector(broker)
    monkeypatch.setenv("EDGE_SDK_TEST_CLOCK_JUMP", "3:-3600")
    try:
        agent = fleet.start_agent_process(
            DEVICE, telemetry_interval=1, telemetry_spool=str(tmp_path / "telemetry.db")
        )
        monkeypatch.delenv("EDGE_SDK_TEST_CLOCK_JUMP")
        _wait(lambda: len(collector.seqs()) >= 9, 30, "nine reports")
        assert agent.terminate() == 0
    finally:
        fleet.close()
        collector.close()
    reports = collector.stream[:9]
    seqs = [r["seq"] for r in reports]
    created = [r["created"] for r in reports]
    steps = [b - a for a, b in itertools.pairwise(created)]
    gaps = [b - a for a, b in itertools.pairwise(collector.arrived[:9])]
    print(f"clock: seq {seqs}, created steps {[round(s) for s in steps]}")
    assert seqs == list(range(seqs[0], seqs[0] + 9))  # in order, no gap, no duplicate
    assert any(step < -3000 for step in steps), "the clock did not jump"
    # The interval held through the jump (paced by the wall clock, the agent would have waited
    # an hour); the bounds leave room for a loaded CI machine.
    assert all(0.3 < gap < 3.0 for gap in gaps), gaps
    assert not any(r["historical"] for r in reports)
    assert all(r["interval_s"] == 1.0 for r in reports)


# --------------------------------------------------------------------------- 4. a disk that refuses

_APP = """
import json, sys, threading, time
import numpy as np
from edge_sdk import telemetry
from edge_sdk.reports import SpoolWriter
from edge_sdk.runtime import EdgeModel

telemetry.configure(enabled=True)
spool_path, model_path = sys.argv[1], sys.argv[2]
writer = SpoolWriter(spool_path, interval=0.1).start()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
served = exceptions = 0
with EdgeModel.load(model_path, profile=None) as model:
    image = np.zeros((8, 8), np.uint8)
    next_line = 0.0
    while not stop.is_set():
        try:
            model.predict(image)
            served += 1
        except Exception as exc:
            exceptions += 1
            print("exception", repr(exc), flush=True)
        if time.monotonic() >= next_line:
            next_line = time.monotonic() + 0.1
            print(json.dumps({"served": served, "failures": writer.failures}), flush=True)
        time.sleep(0.002)
writer.stop()
print(json.dumps({"served": served, "exceptions": exceptions, "failures": writer.failures,
                  "last_error": writer.last_error, "final": True}), flush=True)
"""


class App:
    """An application process serving the bundled model with a SpoolWriter; its progress lines
    (a pipe: a file-size limit does not apply) are read on a thread."""

    def __init__(self, spool_path: Path, model_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_APP), str(spool_path), str(model_path)],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.progress: dict[str, Any] = {"served": 0, "failures": 0}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("{"):
                self.progress = json.loads(line)

    def finish(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(20) == 0, "".join(self.lines[-20:])
        self._reader.join(5)
        return self.progress

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _calls(reports: list[dict[str, Any]], model: str) -> int:
    return sum(
        entry["calls"]
        for r in _first_seen(reports)
        for entry in r["models"].get(model, {}).values()
    )


def test_an_application_on_a_disk_that_refuses_writes_keeps_serving_and_says_so(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> None:
    """An application process (EdgeModel + SpoolWriter) whose every file write is refused
    (RLIMIT_FSIZE=0 via prlimit) for about two seconds: it keeps serving predictions and no
    exception reaches it; once writes work again the next report the operator receives
    carries a ``problems`` entry naming the spool error (source "process", its pid, the
    count of failed writes), and every prediction is counted in the reports exactly once."""
    broker = mosquitto_factory()
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    spool_path = tmp_path / "telemetry.db"
    model_path = tmp_path / "refused-disk-app.onnx"
    model_path.write_bytes(bundled.model_path().read_bytes())
    model = model_path.stem
    collector = Collector(broker)
    Spool(spool_path).close()
    app = App(spool_path, model_path)
    try:
        fleet.start_agent(DEVICE, telemetry_interval=1, telemetry_spool=str(spool_path))
        _wait(lambda: _calls(collector.drain(), model) > 0, 30, "the app's calls in a report")
        _set_file_size_limit(app.process.pid, 0)
        served_at_fault = app.progress["served"]
        _wait(lambda: app.progress["failures"] >= 5, 10, "failed writes in the app")
        time.sleep(1.0)
        assert app.progress["served"] > served_at_fault + 50, "the app stopped serving"
        failures = app.progress["failures"]
        _set_file_size_limit(app.process.pid, resource.RLIM_INFINITY)

        def told() -> dict[str, Any] | None:
            for report in collector.drain():
                for problem in report.get("problems", []):
                    if problem["source"] == "process" and problem["pid"] == app.process.pid:
                        return problem
            return None

        problem = _wait(told, 20, "a report with the app's problem")
        final = app.finish()
        _wait(lambda: _calls(collector.drain(), model) == final["served"], 20, "every call")
    finally:
        app.kill()
        fleet.close()
        collector.close()
    print(
        f"app: served {final['served']}, failed writes {final['failures']}, "
        f"problem {problem['message']!r} x{problem['count']}"
    )
    assert final["exceptions"] == 0 and final["last_error"] is None
    assert problem["count"] >= failures >= 5
    assert str(spool_path) in problem["message"] and "cannot add samples" in problem["message"]
    assert problem["first_at"] <= problem["last_at"]
    assert not any(line.startswith("exception") for line in app.lines)
    assert len(collector.stream) == len({r["seq"] for r in collector.stream})


def test_an_agent_whose_spool_refuses_writes_keeps_running_and_reports_it_after(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> None:
    """An ``edge-sdk agent`` process whose every file write is refused (RLIMIT_FSIZE=0) for
    about three report intervals: it keeps running (its loop never ends), sends no report
    twice (an acknowledgement the spool cannot record is kept in memory), and the first report
    stored afterwards carries a ``problems`` entry (source "agent") naming the spool error and
    counting the failures; no seq is skipped."""
    broker = mosquitto_factory()
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    spool_path = tmp_path / "telemetry.db"
    collector = Collector(broker)
    try:
        agent = fleet.start_agent_process(
            DEVICE, telemetry_interval=1, telemetry_spool=str(spool_path)
        )
        _wait(lambda: len(collector.seqs()) >= 2, 30, "two reports")
        _set_file_size_limit(agent.process.pid, 0)
        during = len(collector.seqs())
        time.sleep(3.5)
        assert agent.alive()
        _set_file_size_limit(agent.process.pid, resource.RLIM_INFINITY)

        def told() -> dict[str, Any] | None:
            for report in collector.drain():
                for problem in report.get("problems", []):
                    if problem["source"] == "agent":
                        return problem
            return None

        problem = _wait(told, 20, "a report with the agent's problem")
        _wait(lambda: len(collector.seqs()) >= during + 3, 20, "reports after the fault")
        assert agent.alive()
        assert agent.terminate() == 0  # a clean exit: the loop was never broken
    finally:
        fleet.close()
        collector.close()
    seqs = [r["seq"] for r in collector.stream]
    print(f"agent: seqs {seqs}, problem {problem['message']!r} x{problem['count']}")
    assert problem["pid"] == agent.process.pid and problem["count"] >= 2  # ~3 ticks
    assert str(spool_path) in problem["message"] and "cannot" in problem["message"]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # no duplicate, no gap, in order
    # While the spool refused writes, the reports the agent could not store still went out
    # on telemetry/latest, numberless and naming the problem.
    unstored = [report for _, report in collector.latest if report["seq"] is None]
    assert unstored and any(
        "cannot" in problem["message"] for problem in unstored[0]["problems"]
    ), unstored


# --------------------------------------------------------------------------- latest


def test_the_newest_live_report_is_retained_on_latest_and_an_outage_backlog_is_not(
    mosquitto_factory: Callable[..., _broker.MosquittoBroker], tmp_path: Path
) -> None:
    """A TelemetryPublisher on a real connection (the agent's loop, reduced to what telemetry
    needs): each live report is also published retained on ``telemetry/latest``; an operator
    that connects later gets the newest live one; the backlog of an outage (historical) goes
    on the stream only, so ``latest`` never goes back in time; PUBACKs of ``latest`` do not
    touch the spool. A report the spool cannot store (another connection holds its write lock
    past the timeout: SQLite's "database is locked") goes to ``latest`` only, with ``seq``
    null and a ``problems`` entry; the next stored report carries the problem too."""
    broker = mosquitto_factory(persistence=True)  # retained messages survive the restart
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    connection = MqttConnection(fleet.settings(DEVICE, client_id=DEVICE))
    root = broker.topic_root

    def publish(suffix: str, payload: bytes, *, retain: bool = False) -> int:
        return int(connection.publish(root + suffix, payload, qos=1, retain=retain).mid)

    spool = Spool(tmp_path / "telemetry.db", timeout=0.3)
    publisher = TelemetryPublisher(spool, publish, device_id=DEVICE, interval=3600)

    def pump(until: Callable[[], object], what: str) -> None:
        def step() -> object:
            while not connection.inbox.empty():
                event = connection.inbox.get_nowait()
                if event.kind == "connected":
                    publisher.connected()
                elif event.kind == "disconnected":
                    publisher.disconnected()
                elif event.kind == "published":
                    publisher.acknowledged(int(event.topic), event.flag)
            return until()

        _wait(step, 20, what)

    def retained_latest(seq: int | None) -> dict[str, Any]:
        # Once the live collector has it, the broker has stored it: then ask as a newcomer.
        def arrived() -> bool:
            collector.drain()
            return any(r["seq"] == seq for _, r in collector.latest)

        _wait(arrived, 10, f"latest {seq} at the collector")
        with _broker.PahoPeer(broker, "operator") as late:  # connects after the fact
            late.connect()
            late.subscribe(f"{root}devices/{DEVICE}/telemetry/latest")
            message = late.expect(timeout=5)
            assert message.retain
            report: dict[str, Any] = json.loads(message.payload)
            return report

    collector = Collector(broker)
    connection.start()
    try:
        pump(lambda: publisher.online, "connected")
        for _ in range(3):
            publisher.report_now()
        publisher.send()
        pump(lambda: spool.pending() == 0, "three reports acknowledged")
        assert retained_latest(3)["seq"] == 3

        broker.stop()
        pump(lambda: not publisher.online, "disconnected")
        offline = [publisher.report_now() for _ in range(2)]
        broker.start()
        pump(lambda: spool.pending() == 0, "the backlog acknowledged")
        latest = retained_latest(3)
        assert latest["seq"] == 3 and not latest["historical"]  # not the backlog's 4 and 5

        seq = publisher.report_now()
        publisher.send()
        pump(lambda: spool.pending() == 0, "a live report acknowledged")
        assert retained_latest(6)["seq"] == seq == 6

        with sqlite3.connect(spool.path, isolation_level=None) as holder:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, held past the spool's timeout
            assert publisher.report_now() is None
            holder.execute("ROLLBACK")
        holder.close()
        unstored = retained_latest(None)
        assert unstored["seq"] is None and not unstored["historical"]
        (locked,) = unstored["problems"]
        assert locked["source"] == "agent" and "database is locked" in locked["message"]
        seq = publisher.report_now()
        publisher.send()
        pump(lambda: spool.pending() == 0, "the report after the lock")
        collector.peer.wait_connacks(2, timeout=15)
        _wait(lambda: 7 in collector.seqs(), 10, "the stream up to 7")
    finally:
        connection.stop()
        collector.close()
        spool.close()
        fleet.close()
    stream = {r["seq"]: r for r in collector.stream}
    assert offline == [4, 5] and seq == 7 and sorted(stream) == [1, 2, 3, 4, 5, 6, 7]
    assert [stream[s]["historical"] for s in range(1, 8)] == [False] * 3 + [True] * 2 + [False] * 2
    assert [p["message"] for p in stream[7]["problems"]] == [locked["message"]]
    assert all(stream[s]["problems"] == [] for s in range(1, 7))
    live = [r["seq"] for retained, r in collector.latest if not retained]
    assert live == [1, 2, 3, 6, None, 7]  # as they went: only live reports, in order
