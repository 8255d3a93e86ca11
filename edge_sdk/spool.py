"""The on-disk telemetry spool: one SQLite database (WAL) shared by every process on a device.

DESIGN.md ("Telemetry"): application processes write their recorder's counters here, the agent
turns them into reports, and a report leaves the spool only once the broker acknowledged it.
SQLite in WAL mode lets several processes write (one at a time, briefly) while others read;
``synchronous=FULL`` makes every commit durable before it returns, so a report the agent was
told is stored survives a power cut.

Tables (schema 1, docs/telemetry.md):

- ``samples``: counter deltas from one process for one model version over one interval (JSON),
  taken by the agent (read and deleted in one transaction, so each is reported once);
- ``reports``: report payloads in order; ``seq`` is an AUTOINCREMENT key, so it only grows,
  also across evictions and restarts, and the operator can see gaps;
- ``meta``: ``dropped`` (reports evicted because the spool was full).

The spool is bounded by ``max_reports``: adding beyond it evicts the oldest reports first and
counts them in ``dropped``, which the agent reports.

Example::

    spool = Spool("/var/lib/edge-sdk/telemetry.db")
    seq = spool.add_report(b'{"...": 1}')
    for seq, payload in spool.reports(limit=100):
        publish(payload)            # then, on the broker's PUBACK:
        spool.ack(seq)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_sdk.errors import SpoolError
from edge_sdk.telemetry import StatsSnapshot

__all__ = ["Sample", "Spool"]

SCHEMA_VERSION = 1
DEFAULT_MAX_REPORTS = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Sample:
    """Counter deltas of one model version from one process over one interval."""

    pid: int
    model: str
    version: str
    at: float
    data: dict[str, Any]


class Spool:
    """The device's telemetry spool at ``path`` (created if missing). Safe to share between
    threads; every process opens its own. Every SQLite failure (a full or read-only disk, a
    corrupt file) is a ``SpoolError`` naming the path and the operation."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_reports: int = DEFAULT_MAX_REPORTS,
        timeout: float = 10.0,
    ) -> None:
        if max_reports < 1:
            raise ValueError(f"max_reports must be >= 1, got {max_reports}")
        self.path = Path(path)
        self.max_reports = max_reports
        self._lock = threading.Lock()
        with self._errors("open"):
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so a
            # writer takes the lock up front instead of failing half-way on a busy database.
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (SCHEMA_VERSION,),
                )
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0)")

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise SpoolError(str(self.path), operation, str(exc)) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- samples (application processes -> agent) -------------------------------------------

    def add_samples(self, deltas: Iterable[StatsSnapshot], *, pid: int | None = None) -> int:
        """Store counter deltas (skipping empty ones); return how many were stored."""
        now = time.time()
        process = os.getpid() if pid is None else pid
        rows = [
            (process, d.name, d.version, now, json.dumps(d.to_dict(), separators=(",", ":")))
            for d in deltas
            if d.calls or d.errors or any(any(row) for row in d.hist)
        ]
        if not rows:
            return 0
        with self._errors("add samples"), self._transaction() as db:
            db.executemany(
                "INSERT INTO samples (pid, model, version, at, data) VALUES (?, ?, ?, ?, ?)", rows
            )
        return len(rows)

    def take_samples(self) -> list[Sample]:
        """Every stored sample, removed in the same transaction (each is taken once)."""
        with self._errors("take samples"), self._transaction() as db:
            rows = db.execute(
                "SELECT id, pid, model, version, at, data FROM samples ORDER BY id"
            ).fetchall()
            if rows:
                db.execute("DELETE FROM samples WHERE id <= ?", (rows[-1][0],))
        return [
            Sample(pid, model, version, at, json.loads(data))
            for _, pid, model, version, at, data in rows
        ]

    # -- reports (agent -> broker) ----------------------------------------------------------

    def add_report(self, payload: bytes) -> int:
        """Store a report; return its sequence number. Beyond ``max_reports`` the oldest are
        evicted and counted in ``dropped``."""
        with self._errors("add a report"), self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO reports (created, payload) VALUES (?, ?)", (time.time(), payload)
            )
            seq = int(cursor.lastrowid or 0)
            (count,) = db.execute("SELECT COUNT(*) FROM reports").fetchone()
            excess = count - self.max_reports
            if excess > 0:
                db.execute(
                    "DELETE FROM reports WHERE seq IN "
                    "(SELECT seq FROM reports ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))
        return seq

    def reports(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` reports not yet acknowledged, in order."""
        with self._errors("read reports"), self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM reports ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def ack(self, seq: int) -> None:
        """The broker acknowledged report ``seq``: it leaves the spool."""
        with self._errors("acknowledge a report"), self._transaction() as db:
            db.execute("DELETE FROM reports WHERE seq = ?", (seq,))

    def dropped(self) -> int:
        with self._errors("read the dropped count"), self._lock:
            (value,) = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(value)

    def pending(self) -> int:
        """Reports stored and not yet acknowledged."""
        with self._errors("count reports"), self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM reports").fetchone()
        return int(count)
