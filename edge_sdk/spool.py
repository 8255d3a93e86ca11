"""The on-disk telemetry spool: one SQLite database (WAL) shared by every process on a device.

DESIGN.md ("Telemetry"): application processes write their recorder's counters here, the agent
turns them into reports, and a report leaves the spool only once the broker acknowledged it.
SQLite in WAL mode lets several processes write (one at a time, briefly) while others read;
``synchronous=FULL`` makes every commit durable before it returns, so a report the agent was
told is stored survives a power cut.

Tables (spool schema 2, docs/telemetry.md):

- ``samples``: counter deltas from one process for one model version over one interval (JSON),
  taken by the agent (read and deleted in the transaction that stores the report made of them,
  so each is reported exactly once, and none is lost when that report cannot be stored);
- ``problems``: what went wrong in a process that could not write here for a while (a full or
  read-only disk), written with its next successful write and carried by the next report;
- ``reports``: report payloads in order; ``seq`` is an AUTOINCREMENT key, so it only grows,
  also across evictions and restarts, and the operator can see gaps;
- ``meta``: ``schema``, ``dropped`` (reports evicted because the spool was full).

The spool is bounded by ``max_reports``: adding beyond it evicts the oldest reports first (never
one the caller says is in flight) and counts them in ``dropped``, which the agent reports.

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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_sdk.errors import SpoolError
from edge_sdk.telemetry import StatsSnapshot

__all__ = ["Problem", "Sample", "Spool"]

#: 2 added the ``problems`` table (a schema 1 file is upgraded in place when opened).
SCHEMA_VERSION = 2
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
CREATE TABLE IF NOT EXISTS problems (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    pid INTEGER NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL
);
"""

# What to try next, by SQLite's message (sqlite3.Error carries no portable code on 3.10).
_HINTS = (
    ("disk is full", "free space on the disk that holds it"),
    ("readonly", "the file or its directory is read-only: remount it read-write or move it"),
    ("unable to open", "check that its directory exists and is writable"),
    ("not a database", "not a telemetry spool, or corrupt: move it away (a new one is made)"),
    ("malformed", "the file is corrupt: move it away (a new one is made)"),
    ("locked", "another process holds it too long: is a second agent running?"),
)


@dataclass(frozen=True)
class Sample:
    """Counter deltas of one model version from one process over one interval."""

    pid: int
    model: str
    version: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """A failure that kept telemetry from being written or sent for a while: ``count``
    failures of ``source`` (``"process"``: an application's SpoolWriter; ``"agent"``) in
    process ``pid`` between ``first`` and ``last`` (wall-clock seconds), the newest
    ``message``. Reports carry them as ``problems`` (docs/telemetry.md)."""

    source: str
    pid: int
    message: str
    count: int
    first: float
    last: float

    def __post_init__(self) -> None:
        if not self.source or not self.message:
            raise ValueError("a problem needs a source and a message")
        if self.count < 1:
            raise ValueError(f"a problem counts at least one failure, got {self.count}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pid": self.pid,
            "message": self.message,
            "count": self.count,
            "first_at": _iso(self.first),
            "last_at": _iso(self.last),
        }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Spool:
    """The device's telemetry spool at ``path`` (created if missing). Safe to share between
    threads; every process opens its own. Every SQLite failure (a full or read-only disk, a
    corrupt file, a spool written by a newer edge-sdk) is a ``SpoolError`` naming the path, the
    operation and what to try."""

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
        if self.path.is_dir():
            raise SpoolError(str(self.path), "open", "it is a directory; name a file in it")
        with self._errors("open"):
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so a
            # writer takes the lock up front instead of failing half-way on a busy database.
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        try:
            with self._errors("open"):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._create()
        except BaseException:
            self._db.close()
            raise

    def _schema(self, db: sqlite3.Connection) -> int | None:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet: a new file
            return None
        return None if row is None else int(row[0])

    def _create(self) -> None:
        if self._schema(self._db) == SCHEMA_VERSION:
            return  # nothing to write: opening works on a full or read-only disk too
        with self._transaction() as db:
            found = self._schema(db)
            if found is not None and found > SCHEMA_VERSION:
                raise SpoolError(
                    str(self.path),
                    "open",
                    f"written by a newer edge-sdk (spool schema {found}, this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade edge-sdk on this device, or move the file away",
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0)")

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            reason = str(exc)
            for needle, hint in _HINTS:
                if needle in reason:
                    reason = f"{reason} ({hint})"
                    break
            raise SpoolError(str(self.path), operation, reason) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) may leave the transaction open, or SQLite may
                # have rolled it back already (then ROLLBACK fails, harmlessly): either way the
                # connection must be usable for the next try, and the first error is the news.
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- samples (application processes -> agent) -------------------------------------------

    def add_samples(
        self,
        deltas: Iterable[StatsSnapshot],
        *,
        pid: int | None = None,
        problems: Sequence[Problem] = (),
    ) -> int:
        """Store counter deltas (skipping empty ones) and ``problems``, in one transaction;
        return how many samples were stored."""
        now = time.time()
        process = os.getpid() if pid is None else pid
        rows = [
            (process, d.name, d.version, now, json.dumps(d.to_dict(), separators=(",", ":")))
            for d in deltas
            if d.calls or d.errors or any(any(row) for row in d.hist)
        ]
        if not rows and not problems:
            return 0
        with self._errors("add samples"), self._transaction() as db:
            db.executemany(
                "INSERT INTO samples (pid, model, version, at, data) VALUES (?, ?, ?, ?, ?)", rows
            )
            self._insert_problems(db, problems)
        return len(rows)

    def add_problem(self, problem: Problem) -> None:
        """Store one problem for the next report (the agent's own, say)."""
        with self._errors("add a problem"), self._transaction() as db:
            self._insert_problems(db, [problem])

    @staticmethod
    def _insert_problems(db: sqlite3.Connection, problems: Sequence[Problem]) -> None:
        db.executemany(
            "INSERT INTO problems (source, pid, message, count, first, last) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(p.source, p.pid, p.message, p.count, p.first, p.last) for p in problems],
        )

    @staticmethod
    def _read_samples(db: sqlite3.Connection) -> tuple[int, list[Sample]]:
        rows = db.execute(
            "SELECT id, pid, model, version, at, data FROM samples ORDER BY id"
        ).fetchall()
        samples = [
            Sample(pid, model, version, at, json.loads(data))
            for _, pid, model, version, at, data in rows
        ]
        return (rows[-1][0] if rows else 0), samples

    @staticmethod
    def _read_problems(db: sqlite3.Connection) -> tuple[int, list[Problem]]:
        rows = db.execute(
            "SELECT id, source, pid, message, count, first, last FROM problems ORDER BY id"
        ).fetchall()
        problems = [Problem(*row[1:]) for row in rows]
        return (rows[-1][0] if rows else 0), problems

    def take_samples(self) -> list[Sample]:
        """Every stored sample, removed in the same transaction (each is taken once)."""
        with self._errors("take samples"), self._transaction() as db:
            last, samples = self._read_samples(db)
            if last:
                db.execute("DELETE FROM samples WHERE id <= ?", (last,))
        return samples

    def take_problems(self) -> list[Problem]:
        """Every stored problem, removed in the same transaction."""
        with self._errors("take problems"), self._transaction() as db:
            last, problems = self._read_problems(db)
            if last:
                db.execute("DELETE FROM problems WHERE id <= ?", (last,))
        return problems

    def peek(self) -> tuple[list[Sample], list[Problem]]:
        """The stored samples and problems, left in place (reading works on a full disk)."""
        with self._errors("read samples"), self._lock:
            return self._read_samples(self._db)[1], self._read_problems(self._db)[1]

    # -- reports (agent -> broker) ----------------------------------------------------------

    def add_report(self, payload: bytes, *, keep: Collection[int] = ()) -> int:
        """Store a report; return its sequence number. Beyond ``max_reports`` the oldest are
        evicted and counted in ``dropped``, except those in ``keep`` (reports in flight: the
        broker may have them already, so they are not counted as lost)."""
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"a report payload is bytes, got {type(payload).__name__}")
        with self._errors("add a report"), self._transaction() as db:
            return self._store(db, bytes(payload), keep)

    def report_samples(
        self,
        build: Callable[[list[Sample], list[Problem], int], bytes],
        *,
        keep: Collection[int] = (),
    ) -> int:
        """Take every sample and problem and store the report ``build(samples, problems,
        dropped)`` makes of them, in one transaction: either the report is stored and they are
        gone, or nothing changed (a full disk loses no sample). Returns the report's ``seq``."""
        with self._errors("store a report"), self._transaction() as db:
            last_sample, samples = self._read_samples(db)
            last_problem, problems = self._read_problems(db)
            (dropped,) = db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            payload = build(samples, problems, int(dropped))
            if not isinstance(payload, bytes):
                raise TypeError(f"build() must return bytes, got {type(payload).__name__}")
            if last_sample:
                db.execute("DELETE FROM samples WHERE id <= ?", (last_sample,))
            if last_problem:
                db.execute("DELETE FROM problems WHERE id <= ?", (last_problem,))
            return self._store(db, payload, keep)

    def _store(self, db: sqlite3.Connection, payload: bytes, keep: Collection[int]) -> int:
        cursor = db.execute(
            "INSERT INTO reports (created, payload) VALUES (?, ?)", (time.time(), payload)
        )
        seq = int(cursor.lastrowid or 0)
        (count,) = db.execute("SELECT COUNT(*) FROM reports").fetchone()
        excess = count - self.max_reports
        if excess > 0:
            protected = sorted({int(s) for s in keep} - {seq})
            rows = db.execute(
                "SELECT seq FROM reports WHERE seq != ? ORDER BY seq LIMIT ?",
                (seq, excess + len(protected)),
            ).fetchall()
            victims = [s for (s,) in rows if s not in protected][:excess]
            db.executemany("DELETE FROM reports WHERE seq = ?", [(s,) for s in victims])
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(victims),))
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
        """Reports evicted so far (it only grows)."""
        with self._errors("read the dropped count"), self._lock:
            (value,) = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(value)

    def last_seq(self) -> int:
        """The sequence number of the newest report ever stored (0 for none): every report
        stored from now on has a larger one."""
        with self._errors("read the sequence number"), self._lock:
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'reports'"
            ).fetchone()
        return int(row[0]) if row else 0

    def pending(self) -> int:
        """Reports stored and not yet acknowledged."""
        with self._errors("count reports"), self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM reports").fetchone()
        return int(count)
