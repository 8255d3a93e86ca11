"""The operator's side of fleet telemetry: a store, a collector and the status rows.

- ``TelemetryStore``: one SQLite file (WAL) on the operator's machine holding every report the
  devices sent, keyed by ``(device, seq)``. MQTT QoS 1 delivers at least once, so the same report
  can arrive twice: a copy is counted, never stored twice. The sequence numbers a device's spool
  assigns only grow, so the numbers missing between two stored ones are reports lost on the way
  (``gaps``); ``dropped`` in the reports says how many the device itself evicted.
- ``TelemetryCollector``: an MQTT client with a fixed client id and a persistent session,
  subscribed to ``devices/+/telemetry`` and ``devices/+/status``, writing into the store. While
  it is down the broker keeps the session and queues what the devices send (up to the broker's
  per-client queue, Mosquitto's ``max_queued_messages``), so a restart picks them up.
- ``status_rows``: one ``StatusRow`` per device from its retained status document and its newest
  report: online, models, the report's age, the worst inference p99, the error rate, the highest
  temperature, throttling. ``edge-sdk fleet status`` and ``fleet watch`` print them.

Wire formats: docs/fleet-protocol.md (status document), docs/telemetry.md (report schema 1);
operations: docs/fleet.md, "Watching the fleet".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from edge_sdk._mqtt import BrokerSettings, Event, MqttConnection
from edge_sdk.errors import EdgeSDKError, FleetError
from edge_sdk.fleet import status_supersedes, topic_root
from edge_sdk.release import check_safe_name

__all__ = [
    "DeviceSummary",
    "StatusRow",
    "StoredReport",
    "TelemetryCollector",
    "TelemetryStore",
    "parse_time",
    "status_rows",
    "status_table",
]

_log = logging.getLogger("edge_sdk.fleet")

STORE_SCHEMA = 1
# A device that said it reports every N seconds and has not for this many intervals is "late".
LATE_AFTER_INTERVALS = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    received REAL NOT NULL,
    historical INTEGER NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    payload TEXT NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_by_time ON reports (device, created, seq);
CREATE TABLE IF NOT EXISTS conflicts (
    device TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS statuses (
    device TEXT PRIMARY KEY,
    received REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_PAGE = 1000

Outcome = Literal["stored", "duplicate", "conflict", "malformed"]


# --------------------------------------------------------------------------- time


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: float | None = None) -> float:
    """A point in time as epoch seconds: ISO 8601 (``2025-06-01T12:00:00Z``; without a zone it
    is UTC, as every timestamp in reports is) or an age before ``now`` (``90s``, ``10m``,
    ``2h``, ``1d``, ``1w``). Raises ValueError naming the accepted forms.

    Example: ``parse_time("2h")`` is two hours ago."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value.lower())
    if relative is not None:
        current = time.time() if now is None else now
        return current - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        # Python 3.10's fromisoformat does not take the "Z" suffix.
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601 like 2025-06-01T12:00:00Z, or an age like 10m, 2h, 1d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_time(epoch: float | None) -> str:
    """Epoch seconds as ISO 8601 UTC with a ``Z`` (the reports' own format); "" for None."""
    if epoch is None:
        return ""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_age(seconds: float | None) -> str:
    """``12s``, ``5m12s``, ``3h05m``, ``2d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _report_time(report: Mapping[str, Any]) -> float | None:
    """When the device made the report (its own clock): ``created``, else ``at``."""
    created = report.get("created")
    number = _number(created)
    if number is not None:
        return number
    at = report.get("at")
    if isinstance(at, str):
        try:
            return parse_time(at)
        except ValueError:
            return None
    return None


def _seq_of(report: Mapping[str, Any]) -> int | None:
    seq = report.get("seq")
    # SQLite's INTEGER is 64-bit: a larger number is no report of ours (and would not store).
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq < 2**63:
        return seq
    return None


def report_is_newer(current: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` is a later report of the same device than ``current``.

    The sequence number decides: it only grows within a spool, whatever the device's clock does
    (a clock that jumps back would make the newer report look older). A lower number is newer
    only if the device made it later: a spool that was recreated starts again at 1. A
    historical report (a backlog sent after an outage) never replaces a live one, and a report
    without a number (one the device could not store) is placed by its time."""
    if current is None:
        return True
    if incoming.get("historical") is True and current.get("historical") is not True:
        return False
    seq_now, seq_new = _seq_of(current), _seq_of(incoming)
    time_now, time_new = _report_time(current) or 0.0, _report_time(incoming) or 0.0
    if seq_now is not None and seq_new is not None:
        return seq_new >= seq_now or time_new > time_now
    return time_new >= time_now


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class StoredReport:
    """One report as stored: ``created`` is the device's clock (the report's ``created``, else
    its ``at``, else the time it arrived), ``received`` the collector's, ``copies`` how many
    times it arrived. ``report`` is the JSON document as the device sent it."""

    device: str
    seq: int
    created: float
    received: float
    historical: bool
    copies: int
    report: Mapping[str, Any]


@dataclass(frozen=True)
class DeviceSummary:
    """What the store holds of one device: ``missing`` counts the sequence numbers absent
    between the first and the last stored (``gaps`` lists them as inclusive ranges),
    ``duplicates`` the extra copies received, ``conflicts`` reports whose sequence number was
    taken by another report (a device whose spool was recreated starts again at 1)."""

    device: str
    reports: int
    first_seq: int
    last_seq: int
    first_created: float
    last_created: float
    duplicates: int
    missing: int
    gaps: tuple[tuple[int, int], ...]
    conflicts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "reports": self.reports,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_created": format_time(self.first_created),
            "last_created": format_time(self.last_created),
            "duplicates": self.duplicates,
            "missing": self.missing,
            "gaps": [list(gap) for gap in self.gaps],
            "conflicts": self.conflicts,
        }


@dataclass
class AddResult:
    """Counts of one batch written into the store."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    malformed: int = 0

    def count(self, outcome: Outcome) -> None:
        if outcome == "stored":
            self.stored += 1
        elif outcome == "duplicate":
            self.duplicates += 1
        elif outcome == "conflict":
            self.conflicts += 1
        else:
            self.malformed += 1


class TelemetryStore:
    """The operator's telemetry database at ``path`` (SQLite, WAL): reports keyed by
    ``(device, seq)``, the newest status document of each device.

    ``create=False`` opens an existing store only (what a reader wants: a mistyped path is an
    error, not a new empty file). Every SQLite failure (missing or corrupt file, a full or
    read-only disk, another program's database) is a ``FleetError`` naming the path and what
    was being done. Safe to share between threads; a context manager.

    Example::

        with TelemetryStore("fleet-telemetry.db", create=False) as store:
            for stored in store.reports(devices=["cam-01"], since=parse_time("1h")):
                print(stored.seq, stored.report["models"])
    """

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, timeout: float = 10.0
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        if not create and not self.path.is_file():
            raise FleetError(
                f"telemetry store {self.path}: no such file (`edge-sdk fleet collect --db "
                f"{self.path}` creates it)"
            )
        with self._errors("open"):
            if create:
                self._db = sqlite3.connect(
                    self.path, timeout=timeout, isolation_level=None, check_same_thread=False
                )
            else:
                # mode=rw: never create a file that is not there (raced away since the check).
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=rw",
                    uri=True,
                    timeout=timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
        try:
            with self._errors("open"):
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: a report the collector acknowledged (to paho, hence to the broker)
                # survives a power cut of the operator's machine once its batch committed.
                self._db.execute("PRAGMA synchronous=FULL")
                if create:
                    with self._transaction() as db:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(
                            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                            (STORE_SCHEMA,),
                        )
                schema = self._schema()
            if schema != STORE_SCHEMA:
                found = "no edge-sdk schema" if schema is None else f"schema {schema}"
                raise FleetError(
                    f"telemetry store {self.path}: not an edge-sdk telemetry store of schema "
                    f"{STORE_SCHEMA} ({found})"
                )
        except BaseException:
            self._db.close()
            raise

    def _schema(self) -> int | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:  # no meta table: another program's database
            return None
        return None if row is None else int(row[0])

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise FleetError(f"telemetry store {self.path}: cannot {operation}: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the telemetry store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._errors("read"), self._lock:
            if self._closed:
                raise RuntimeError("the telemetry store is closed")
            return self._db.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    @staticmethod
    def _add_one(
        db: sqlite3.Connection, device: str, payload: bytes | str, received: float
    ) -> Outcome:
        try:
            report = json.loads(payload)
        except (ValueError, RecursionError):
            return "malformed"
        if not isinstance(report, dict):
            return "malformed"
        seq = _seq_of(report)
        if seq is None:
            return "malformed"
        created = _report_time(report)
        if created is None:
            created = received
        row = db.execute(
            "SELECT created FROM reports WHERE device = ? AND seq = ?", (device, seq)
        ).fetchone()
        if row is None:
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
            db.execute(
                "INSERT INTO reports (device, seq, created, received, historical, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device, seq, created, received, int(bool(report.get("historical"))), text),
            )
            return "stored"
        # The same report sent again (a QoS 1 re-delivery, or re-sent from the spool after a
        # restart: only "historical" may differ) has the same creation time.
        if abs(row[0] - created) < 1e-3:
            db.execute(
                "UPDATE reports SET copies = copies + 1 WHERE device = ? AND seq = ?",
                (device, seq),
            )
            return "duplicate"
        db.execute(
            "INSERT INTO conflicts (device, count) VALUES (?, 1) "
            "ON CONFLICT (device) DO UPDATE SET count = count + 1",
            (device,),
        )
        return "conflict"

    def add_reports(
        self, items: Iterable[tuple[str, bytes | str]], *, received: float | None = None
    ) -> AddResult:
        """Store ``(device, payload)`` pairs in one transaction. A report needs an integer
        ``seq``; a copy of a stored one is counted; one whose ``seq`` is taken by a report with
        another creation time is counted as a conflict and not stored."""
        when = time.time() if received is None else received
        result = AddResult()
        with self._errors("store reports"), self._transaction() as db:
            for device, payload in items:
                result.count(self._add_one(db, device, payload, when))
        return result

    def add_report(
        self, device: str, payload: bytes | str, *, received: float | None = None
    ) -> Outcome:
        """Store one report: ``"stored"``, ``"duplicate"``, ``"conflict"`` or ``"malformed"``."""
        when = time.time() if received is None else received
        with self._errors("store a report"), self._transaction() as db:
            return self._add_one(db, device, payload, when)

    def add_status(
        self, device: str, document: Mapping[str, Any], *, received: float | None = None
    ) -> bool:
        """Keep ``document`` as the device's status unless it is a stale offline message (an
        older session than the one stored, see ``fleet.status_supersedes``); True if kept."""
        when = time.time() if received is None else received
        with self._errors("store a status"), self._transaction() as db:
            row = db.execute("SELECT payload FROM statuses WHERE device = ?", (device,)).fetchone()
            current = json.loads(row[0]) if row is not None else None
            if isinstance(current, dict) and not status_supersedes(current, document):
                return False
            db.execute(
                "INSERT INTO statuses (device, received, payload) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET received = excluded.received, "
                "payload = excluded.payload",
                (device, when, json.dumps(dict(document), sort_keys=True)),
            )
        return True

    # -- reading ----------------------------------------------------------------------------

    def statuses(self) -> dict[str, dict[str, Any]]:
        """The newest status document of every device the collector heard of."""
        found: dict[str, dict[str, Any]] = {}
        for device, payload in self._query("SELECT device, payload FROM statuses"):
            document = json.loads(payload)
            if isinstance(document, dict):
                found[device] = document
        return found

    def devices(self) -> list[str]:
        rows = self._query("SELECT DISTINCT device FROM reports ORDER BY device")
        return [row[0] for row in rows]

    def reports(
        self,
        *,
        devices: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[StoredReport]:
        """Stored reports by device, then creation time (the device's clock), then ``seq``;
        ``since`` and ``until`` (epoch seconds, inclusive) bound the creation time. Read in
        pages, so a long export holds no lock between them."""
        wanted = sorted(set(devices)) if devices is not None else self.devices()
        low = -math.inf if since is None else since
        high = math.inf if until is None else until
        for device in wanted:
            after: tuple[float, int] = (-math.inf, 0)
            while True:
                rows = self._query(
                    "SELECT seq, created, received, historical, copies, payload FROM reports "
                    "WHERE device = ? AND created >= ? AND created <= ? AND (created, seq) > "
                    "(?, ?) ORDER BY created, seq LIMIT ?",
                    (device, low, high, after[0], after[1], _PAGE),
                )
                for seq, created, received, historical, copies, payload in rows:
                    try:
                        document = json.loads(payload)
                    except ValueError:
                        document = {}
                    yield StoredReport(
                        device, seq, created, received, bool(historical), copies, document
                    )
                if len(rows) < _PAGE:
                    break
                after = (rows[-1][1], rows[-1][0])

    def latest(self, device: str) -> StoredReport | None:
        """The device's newest stored report (by creation time, then ``seq``)."""
        rows = self._query(
            "SELECT seq, created, received, historical, copies, payload FROM reports "
            "WHERE device = ? ORDER BY created DESC, seq DESC LIMIT 1",
            (device,),
        )
        if not rows:
            return None
        seq, created, received, historical, copies, payload = rows[0]
        return StoredReport(
            device, seq, created, received, bool(historical), copies, json.loads(payload)
        )

    def gaps(self, device: str) -> list[tuple[int, int]]:
        """Sequence numbers missing between the device's first and last stored report, as
        inclusive ``(first, last)`` ranges. Before the first one stored nothing is known (the
        collector may have started later)."""
        rows = self._query(
            "SELECT seq, next FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS next "
            "FROM reports WHERE device = ?) WHERE next > seq + 1 ORDER BY seq",
            (device,),
        )
        return [(seq + 1, following - 1) for seq, following in rows]

    def summary(self, devices: Iterable[str] | None = None) -> list[DeviceSummary]:
        """One ``DeviceSummary`` per device with stored reports."""
        conflicts = dict(self._query("SELECT device, count FROM conflicts"))
        result = []
        for device in sorted(set(devices)) if devices is not None else self.devices():
            rows = self._query(
                "SELECT COUNT(*), MIN(seq), MAX(seq), MIN(created), MAX(created), "
                "SUM(copies) - COUNT(*) FROM reports WHERE device = ?",
                (device,),
            )
            count, first, last, first_at, last_at, duplicates = rows[0]
            if not count:
                continue
            gaps = tuple(self.gaps(device))
            result.append(
                DeviceSummary(
                    device=device,
                    reports=count,
                    first_seq=first,
                    last_seq=last,
                    first_created=first_at,
                    last_created=last_at,
                    duplicates=duplicates or 0,
                    missing=sum(b - a + 1 for a, b in gaps),
                    gaps=gaps,
                    conflicts=int(conflicts.get(device, 0)),
                )
            )
        return result


# --------------------------------------------------------------------------- the collector


@dataclass
class CollectorStats:
    """What a collector did since it started."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    malformed: int = 0
    statuses: int = 0
    errors: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "malformed": self.malformed,
            "statuses": self.statuses,
            "errors": self.errors,
            "last_error": self.last_error,
        }


class TelemetryCollector:
    """Collect the fleet's telemetry reports and status documents into a ``TelemetryStore``.

    ``settings`` must ask for a persistent session (``session_expiry``) under a client id
    that stays the same across restarts: then reports the devices send while the collector
    is down wait at the broker (QoS 1) and arrive when it is back.

    Example::

        settings = BrokerSettings("mqtt://broker:1883", "edge-sdk-collector-factory-7",
                                  username="collector", password=..., session_expiry=604800)
        with TelemetryStore("telemetry.db") as store:
            collector = TelemetryCollector(settings, "factory-7", store)
            collector.start()
            collector.serve_forever()   # until stop(), or collector.start_thread()
    """

    def __init__(
        self,
        settings: BrokerSettings,
        fleet: str,
        store: TelemetryStore,
        *,
        on_batch: Callable[[AddResult], None] | None = None,
    ) -> None:
        if settings.session_expiry is None or settings.session_expiry <= 0:
            raise ValueError(
                "a telemetry collector needs a persistent session (BrokerSettings."
                "session_expiry > 0), or reports sent while it is down are lost"
            )
        self.fleet = check_safe_name(fleet, field="fleet")
        self.root = topic_root(fleet)
        self.store = store
        # Acknowledged only once stored: a collector killed between receiving and committing
        # gets the same reports again from its session.
        self.connection = MqttConnection(dataclasses.replace(settings, manual_ack=True))
        self.stats = CollectorStats()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def topics(self) -> tuple[str, str]:
        return (f"{self.root}devices/+/telemetry", f"{self.root}devices/+/status")

    def start(self, wait: float = 10.0) -> None:
        """Connect (BrokerConnectionError if the broker is unreachable or refuses) and
        subscribe; with a session kept from before, queued reports start arriving at once."""
        self.connection.start(wait=wait)
        for topic in self.topics:
            self.connection.subscribe(topic, qos=1)

    def _write(self, events: list[Event]) -> None:
        reports: list[tuple[str, bytes]] = []
        statuses: list[tuple[str, bytes]] = []
        for event in events:
            if event.kind != "message" or not event.topic.startswith(self.root):
                continue
            parts = event.topic[len(self.root) :].split("/")
            if len(parts) != 3 or parts[0] != "devices":
                continue
            self.stats.messages += 1
            if parts[2] == "telemetry":
                reports.append((parts[1], event.payload))
            elif parts[2] == "status":
                statuses.append((parts[1], event.payload))
        if reports:
            result = self.store.add_reports(reports)
            self.stats.stored += result.stored
            self.stats.duplicates += result.duplicates
            self.stats.conflicts += result.conflicts
            self.stats.malformed += result.malformed
            if self.on_batch is not None:
                try:
                    self.on_batch(result)
                except Exception:  # the caller's hook must not stop the collector
                    _log.exception("telemetry collector: the on_batch callback failed")
        for device, payload in statuses:
            try:
                document = json.loads(payload) if payload else None
            except (ValueError, RecursionError):
                document = None
            if not isinstance(document, dict):
                self.stats.malformed += 1
                continue
            if self.store.add_status(device, document):
                self.stats.statuses += 1

    def _drain(self, first: Event | None, limit: int = 512) -> list[Event]:
        events = [] if first is None else [first]
        while len(events) < limit:
            try:
                events.append(self.connection.inbox.get_nowait())
            except queue.Empty:
                break
        return events

    def serve_forever(self) -> None:
        """Write what arrives, in batches (one transaction each), until ``stop()``. A message
        is acknowledged to the broker only once its batch is committed; a batch that cannot be
        written (a full disk) is tried again every second, and meanwhile the broker holds the
        rest (its in-flight window for this client fills, then it queues)."""
        pending: list[Event] = []
        while not self._stop.is_set():
            try:
                first: Event | None = self.connection.inbox.get(timeout=1.0 if pending else 0.2)
            except queue.Empty:
                first = None
            events = pending + self._drain(first)
            if not events:
                continue
            if self._write_safely(events):
                for event in events:
                    if event.kind == "message":
                        self.connection.ack(event)
                pending = []
            else:
                pending = [event for event in events if event.kind == "message"]

    def _write_safely(self, events: list[Event]) -> bool:
        try:
            self._write(events)
        except EdgeSDKError as exc:  # a full disk: say so, keep the connection, go on
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            _log.warning("telemetry collector: %s", exc)
            return False
        except Exception as exc:
            # Not the disk: something in one message the store could not take. Written one by
            # one, the poison message is counted as malformed and acknowledged (else the broker
            # would send it again at every start), and the others are kept.
            _log.warning(
                "telemetry collector: a batch failed (%s); writing it message by message", exc
            )
            for event in events:
                try:
                    self._write([event])
                except EdgeSDKError as single:
                    self.stats.errors += 1
                    self.stats.last_error = str(single)
                    return False
                except Exception:
                    self.stats.malformed += 1
                    _log.warning("telemetry collector: dropping a message it cannot store")
        return True

    def start_thread(self, wait: float = 10.0) -> threading.Thread:
        self.start(wait)
        self._thread = threading.Thread(
            target=self.serve_forever, name="telemetry-collector", daemon=True
        )
        self._thread.start()
        return self._thread

    def request_stop(self) -> None:
        """Ask ``serve_forever`` to return (safe from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop, disconnect (the broker keeps the session), then write what was still queued
        (not acknowledged: the broker sends those again at the next start, and the store
        counts them as duplicates)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.connection.stop()
        while True:
            events = self._drain(None)
            if not events:
                break
            self._write_safely(events)

    def __enter__(self) -> TelemetryCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- status rows


@dataclass(frozen=True)
class StatusRow:
    """One device's line in ``edge-sdk fleet status``.

    ``online`` is None when no status document was seen. ``models`` maps each model to its
    active version (from the status document; from the newest report when the status has none,
    as the Will's short offline message). From the newest report: ``report_at`` (the device's
    clock, epoch seconds), ``report_age_s``, ``p99_inference_ms`` (the worst inference p99 over
    the models in it, and ``p99_model`` it belongs to, "name:version"), ``error_rate``
    (errors / (calls + errors): ``calls`` counts completed inferences, a failed call is an
    error and not a call), ``temperature_c`` (the hottest thermal zone), ``throttled`` (any of
    the Raspberry Pi firmware's current flags; None where the board has none). ``late``: online,
    but no report for ``LATE_AFTER_INTERVALS`` report intervals."""

    device: str
    online: bool | None
    state: str | None = None
    groups: tuple[str, ...] = ()
    models: Mapping[str, int | None] = field(default_factory=dict)
    profile: str | None = None
    session: int | None = None
    sdk_version: str | None = None
    onnxruntime_version: str | None = None
    telemetry_interval_s: float | None = None
    status_at: str | None = None
    report_seq: int | None = None
    report_at: float | None = None
    report_age_s: float | None = None
    late: bool = False
    calls: int | None = None
    errors: int | None = None
    error_rate: float | None = None
    p99_inference_ms: float | None = None
    p99_model: str | None = None
    temperature_c: float | None = None
    throttled: bool | None = None

    def __post_init__(self) -> None:
        # Read-only, like the rest of the row.
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "groups", tuple(self.groups))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "online": self.online,
            "state": self.state,
            "groups": list(self.groups),
            "models": dict(self.models),
            "profile": self.profile,
            "session": self.session,
            "sdk_version": self.sdk_version,
            "onnxruntime_version": self.onnxruntime_version,
            "telemetry_interval_s": self.telemetry_interval_s,
            "status_at": self.status_at,
            "report_seq": self.report_seq,
            "report_at": format_time(self.report_at) or None,
            "report_age_s": None if self.report_age_s is None else round(self.report_age_s, 1),
            "late": self.late,
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_inference_ms": self.p99_inference_ms,
            "p99_model": self.p99_model,
            "temperature_c": self.temperature_c,
            "throttled": self.throttled,
        }

    def change_key(self) -> tuple[Any, ...]:
        """What ``fleet watch`` compares to decide that something changed (not the age)."""
        return (
            self.device,
            self.online,
            tuple(sorted(self.models.items())),
            self.session,
            self.report_seq,
            self.report_at,
            self.late,
        )


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _from_report(report: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"models_seen": {}}
    calls = errors = 0
    worst: tuple[float, str] | None = None
    models = report.get("models")
    for name, versions in models.items() if isinstance(models, dict) else ():
        if not isinstance(versions, dict):
            continue
        for version, entry in versions.items():
            if not isinstance(entry, dict):
                continue
            found["models_seen"].setdefault(name, version)
            calls += int(_number(entry.get("calls")) or 0)
            counted = entry.get("errors")
            if isinstance(counted, dict):
                errors += sum(int(_number(v) or 0) for v in counted.values())
            latency = entry.get("latency_ms")
            stage = latency.get("inference") if isinstance(latency, dict) else None
            p99 = _number(stage.get("p99")) if isinstance(stage, dict) else None
            if p99 is not None and (worst is None or p99 > worst[0]):
                worst = (p99, f"{name}:{version}")
    found["calls"], found["errors"] = calls, errors
    found["error_rate"] = round(errors / (calls + errors), 4) if calls + errors else None
    if worst is not None:
        found["p99_inference_ms"], found["p99_model"] = worst
    system = report.get("system")
    if isinstance(system, dict):
        temperatures = system.get("temperatures_c")
        if isinstance(temperatures, dict):
            values = [v for v in map(_number, temperatures.values()) if v is not None]
            found["temperature_c"] = max(values) if values else None
        throttling = system.get("throttling")
        if isinstance(throttling, dict):
            found["throttled"] = any(
                bool(throttling.get(flag))
                for flag in (
                    "under_voltage",
                    "frequency_capped",
                    "throttled",
                    "soft_temperature_limit",
                )
            )
    return found


def _versions(status: Mapping[str, Any]) -> dict[str, int | None] | None:
    models = status.get("models")
    if not isinstance(models, dict):
        return None
    result: dict[str, int | None] = {}
    for name, entry in sorted(models.items()):
        active = entry.get("active") if isinstance(entry, dict) else None
        result[str(name)] = active if isinstance(active, int) else None
    return result


def status_row(
    device: str,
    status: Mapping[str, Any] | None,
    report: Mapping[str, Any] | None,
    *,
    now: float | None = None,
) -> StatusRow:
    """One device's ``StatusRow`` from its status document and newest report (either may be
    missing; missing fields stay None)."""
    current = time.time() if now is None else now
    status = status or {}
    state = status.get("state") if isinstance(status.get("state"), str) else None
    groups = status.get("groups")
    session = status.get("session")
    interval = _number(status.get("telemetry_interval_s"))
    values: dict[str, Any] = {
        "device": device,
        "online": None if state is None else state == "online",
        "state": state,
        "groups": tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        "profile": status.get("profile") if isinstance(status.get("profile"), str) else None,
        "session": session if isinstance(session, int) and not isinstance(session, bool) else None,
        "sdk_version": status.get("sdk_version")
        if isinstance(status.get("sdk_version"), str)
        else None,
        "onnxruntime_version": status.get("onnxruntime_version")
        if isinstance(status.get("onnxruntime_version"), str)
        else None,
        "status_at": status.get("at") if isinstance(status.get("at"), str) else None,
    }
    models = _versions(status)
    if report is not None:
        found = _from_report(report)
        seen = found.pop("models_seen")
        if models is None:
            models = {
                name: int(version) if str(version).isdigit() else None
                for name, version in sorted(seen.items())
            }
        values.update(found)
        values["report_seq"] = _seq_of(report)
        made = _report_time(report)
        values["report_at"] = made
        values["report_age_s"] = None if made is None else max(0.0, current - made)
        if interval is None:
            interval = _number(report.get("interval_s"))
        age = values["report_age_s"]
        values["late"] = bool(
            values["online"] and interval and age is not None
            and age > LATE_AFTER_INTERVALS * interval
        )  # fmt: skip
    values["models"] = models or {}
    values["telemetry_interval_s"] = interval
    return StatusRow(**values)


def status_rows(
    statuses: Mapping[str, Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
    *,
    now: float | None = None,
    devices: Iterable[str] | None = None,
    group: str | None = None,
) -> list[StatusRow]:
    """A ``StatusRow`` per device known from a status document or a report, by device id;
    ``devices`` and ``group`` narrow the list (a device's group comes from its status)."""
    current = time.time() if now is None else now
    known = sorted(set(statuses) | set(reports))
    if devices is not None:
        wanted = set(devices)
        known = [d for d in known if d in wanted]
    rows = [status_row(d, statuses.get(d), reports.get(d), now=current) for d in known]
    if group is not None:
        rows = [row for row in rows if group in row.groups]
    return rows


STATUS_HEADER = (
    "device",
    "online",
    "models",
    "last report",
    "p99 inf ms",
    "errors",
    "temp C",
    "throttled",
)


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _milliseconds(value: float | None) -> str:
    """Three significant digits where they matter: 0.512, 3.5, 41.0, 150."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def status_table(rows: Iterable[StatusRow]) -> list[list[str]]:
    """Rows as text cells, the header first (``fleet status``): models as ``name:version``,
    the report's age (``late`` marked), the worst inference p99 in ms, the error rate in %,
    the hottest zone in degrees C, the throttling flag."""
    table = [list(STATUS_HEADER)]
    for row in rows:
        online = "?" if row.online is None else ("yes" if row.online else "no")
        models = " ".join(
            f"{name}:{'-' if version is None else version}" for name, version in row.models.items()
        )
        age = format_age(row.report_age_s)
        if row.late:
            age += " (late)"
        rate = None if row.error_rate is None else row.error_rate * 100.0
        throttled = "-" if row.throttled is None else ("yes" if row.throttled else "no")
        table.append(
            [
                row.device,
                online,
                models or "-",
                age,
                _milliseconds(row.p99_inference_ms),
                "-" if rate is None else f"{rate:.1f}%",
                _cell(row.temperature_c, ".1f"),
                throttled,
            ]
        )
    return table


def summary_table(summaries: Iterable[DeviceSummary]) -> list[list[str]]:
    """``TelemetryStore.summary()`` as text cells, the header first."""
    table = [["device", "reports", "seq", "first", "last", "duplicates", "missing", "gaps"]]
    for item in summaries:
        gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in item.gaps[:5])
        if len(item.gaps) > 5:
            gaps += f", ... ({len(item.gaps)} ranges)"
        table.append(
            [
                item.device,
                str(item.reports),
                f"{item.first_seq}-{item.last_seq}",
                format_time(item.first_created),
                format_time(item.last_created),
                str(item.duplicates),
                str(item.missing),
                gaps or "-",
            ]
        )
    return table


# --------------------------------------------------------------------------- export


_STAGE_COLUMNS = [
    f"{stage}_{q}" for stage in ("pre", "inference", "post") for q in ("p50", "p95", "p99")
]
CSV_COLUMNS = [
    "device",
    "seq",
    "created",
    "historical",
    "interval_s",
    "dropped",
    "model",
    "version",
    "calls",
    "errors",
    "error_types",
    *[f"{c}_ms" for c in _STAGE_COLUMNS],
    "cpu_percent",
    "memory_available_mb",
    "memory_total_mb",
    "temperature_max_c",
    "throttled",
    "disk_free_mb",
    "uptime_s",
]


def csv_rows(stored: StoredReport) -> list[dict[str, Any]]:
    """One flat row per model version in a report (one row without model columns when it has
    none), for ``fleet telemetry --format csv``; columns ``CSV_COLUMNS``."""
    report = stored.report
    system = report.get("system") if isinstance(report.get("system"), dict) else {}
    assert isinstance(system, dict)
    memory = system.get("memory_mb") if isinstance(system.get("memory_mb"), dict) else {}
    assert isinstance(memory, dict)
    temperatures = system.get("temperatures_c")
    hottest = None
    if isinstance(temperatures, dict):
        values = [v for v in map(_number, temperatures.values()) if v is not None]
        hottest = max(values) if values else None
    throttled = _from_report({"system": system}).get("throttled")
    base: dict[str, Any] = {
        "device": stored.device,
        "seq": stored.seq,
        "created": format_time(stored.created),
        "historical": stored.historical,
        "interval_s": report.get("interval_s"),
        "dropped": report.get("dropped"),
        "cpu_percent": system.get("cpu_percent"),
        "memory_available_mb": memory.get("available"),
        "memory_total_mb": memory.get("total"),
        "temperature_max_c": hottest,
        "throttled": throttled,
        "disk_free_mb": system.get("disk_free_mb"),
        "uptime_s": system.get("uptime_s"),
    }
    rows = []
    models = report.get("models")
    for name, versions in sorted(models.items()) if isinstance(models, dict) else ():
        if not isinstance(versions, dict):
            continue
        for version, entry in sorted(versions.items()):
            if not isinstance(entry, dict):
                continue
            row = dict(base, model=name, version=version, calls=entry.get("calls"))
            errors = entry.get("errors") if isinstance(entry.get("errors"), dict) else {}
            assert isinstance(errors, dict)
            row["errors"] = sum(int(_number(v) or 0) for v in errors.values())
            row["error_types"] = ";".join(f"{k}={v}" for k, v in sorted(errors.items()))
            latency = entry.get("latency_ms") if isinstance(entry.get("latency_ms"), dict) else {}
            assert isinstance(latency, dict)
            for column in _STAGE_COLUMNS:
                stage, _, q = column.partition("_")
                quantiles = latency.get(stage)
                row[f"{column}_ms"] = quantiles.get(q) if isinstance(quantiles, dict) else None
            rows.append(row)
    return rows or [base]
