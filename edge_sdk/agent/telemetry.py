"""The agent's telemetry: build a report every interval from the spool, and send the spool's
reports in order, each removed only after the broker acknowledged it (docs/telemetry.md).

Reports go to ``devices/{id}/telemetry`` (QoS 1, not retained). The published message is the
stored report with fields set at send time: ``seq``, the spool's sequence number (it only
grows: the operator sees gaps and duplicates), ``historical``, true for a report made before
the current connection (it waited out an outage or a restart in the spool), and ``dropped``,
the spool's eviction count then. At most ``window`` reports are unacknowledged at a time; paho
re-sends those after a reconnect, and the agent re-sends what is still in the spool after a
restart, so delivery is at least once.

The newest live (non-historical) report is also published retained on
``devices/{id}/telemetry/latest`` (QoS 1, not tracked for the spool): the operator's view of a
device without a collector. A report the spool cannot store is published there only (its
``seq`` is null), with ``problems`` naming the spool's error.

"Made before the current connection" is decided by sequence numbers, not by clocks: reports
stored after the connection came up have a larger ``seq`` than ``Spool.last_seq()`` at that
moment. A wall clock that jumps (NTP after a boot without RTC) changes ``at`` and ``created``,
never the order, ``historical`` or the interval (which runs on the monotonic clock).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from edge_sdk.errors import SpoolError
from edge_sdk.reports import SystemReader, build_report
from edge_sdk.spool import Problem, Sample, Spool

__all__ = ["TelemetryPublisher"]

_log = logging.getLogger("edge_sdk.agent")
# Bounds of a remotely set interval: a report a second is what bench/telemetry.py sustains for
# 200 devices on one broker; a day is the longest gap an operator would accept.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 86_400.0
# A report in flight this long on a live connection without a PUBACK is sent again: paho
# dropped it (its queue was full), or the acknowledgement was lost with a session.
STALE_AFTER = 300.0


def _accepts_retain(publish: Callable[..., int]) -> bool:
    try:
        parameters = inspect.signature(publish).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "retain" or p.kind is p.VAR_KEYWORD for p in parameters)


class TelemetryPublisher:
    """``publish(suffix, payload, *, retain=False) -> mid`` sends on the agent's connection
    (QoS 1); ``acknowledged`` is called with each PUBACK's mid. A ``publish`` without the
    ``retain`` keyword still works, without the retained ``telemetry/latest``.

    ``clock`` (monotonic) paces the reports; ``wall_clock`` only stamps them.
    """

    def __init__(
        self,
        spool: Spool,
        publish: Callable[..., int],
        *,
        device_id: str,
        interval: float,
        system: SystemReader | None = None,
        window: int = 16,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.spool = spool
        self._publish = publish
        self._retain = _accepts_retain(publish)
        self.device_id = device_id
        self.interval = interval
        self.system = system
        self.window = window
        self._clock = clock
        self._wall = wall_clock or time.time
        self._next = clock() + interval
        self._in_flight: dict[int, tuple[int, float]] = {}  # mid -> (seq, monotonic sent at)
        self._sent: set[int] = set()  # seqs in flight
        self._unsaved_acks: set[int] = set()  # acknowledged, but the spool refused the ack
        # Reports with a larger seq were made during the current connection (None: unknown
        # yet, see connected()); _live_pending: take the next stored report's seq - 1.
        self._live_after: int | None = None
        self._live_pending = False
        self._latest_seq = 0
        self._problem: Problem | None = None  # our own spool failures, until a report says so
        self._reading: dict[str, Any] | None = None  # the last SystemReader reading
        self.online = False
        self.last_error: str | None = None

    @property
    def topic(self) -> str:
        return f"devices/{self.device_id}/telemetry"

    def connected(self) -> None:
        self.online = True
        now = self._clock()
        # paho re-sends what was in flight; give it a full STALE_AFTER on this connection.
        self._in_flight = {mid: (seq, now) for mid, (seq, _) in self._in_flight.items()}
        try:
            self._live_after = self.spool.last_seq()
            self._live_pending = False
        except SpoolError as exc:
            self._failed(exc)
            self._live_after = None
            self._live_pending = True
        self.send()

    def disconnected(self) -> None:
        self.online = False
        self._live_pending = False

    def set_interval(self, seconds: float) -> None:
        """Change the report interval (the ``set_telemetry_interval`` command); the next report
        is due one new interval from now."""
        if not (isinstance(seconds, int | float) and MIN_INTERVAL <= seconds <= MAX_INTERVAL):
            raise ValueError(
                f"the telemetry interval is {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, "
                f"got {seconds!r}"
            )
        self.interval = float(seconds)
        self._next = self._clock() + self.interval

    def summary(self) -> dict[str, Any]:
        """What the agent says of its telemetry (the ``diag`` command, the status document)."""
        summary: dict[str, Any] = {
            "interval_s": self.interval,
            "in_flight": len(self._in_flight),
            "last_error": self.last_error,
            "problem": None if self._problem is None else self._problem.to_dict(),
        }
        try:
            summary["spooled_reports"] = self.spool.pending()
            summary["dropped"] = self.spool.dropped()
        except SpoolError as exc:
            summary["spool_error"] = str(exc)
        return summary

    # -- failures ---------------------------------------------------------------------------

    def _failed(self, exc: SpoolError) -> None:
        now = self._wall()
        previous = self._problem
        self._problem = Problem(
            "agent",
            os.getpid(),
            str(exc),
            1 if previous is None else previous.count + 1,
            now if previous is None else previous.first,
            now,
        )
        self.last_error = str(exc)
        # One warning per run of failures: a read-only disk for a day is not 86,400 lines.
        (_log.warning if previous is None else _log.debug)("telemetry spool: %s", exc)

    # -- building ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Build a report when the interval has passed, then send what waits."""
        now = self._clock()
        if now >= self._next:
            # On the schedule, not one interval after this tick: a loop that comes back a few
            # microseconds early would otherwise skip a whole report (bench/telemetry.py).
            self._next += self.interval
            if self._next <= now:
                self._next = now + self.interval
            self.report_now()
        self._forget_stale(now)
        self.send()

    def _report(
        self, samples: list[Sample], problems: list[Problem], dropped: int, *, fresh: bool = True
    ) -> dict[str, Any]:
        wall = self._wall()
        own = [] if self._problem is None else [self._problem]
        if fresh or self._reading is None:
            # CPU % is measured between two readings: one per report, even when it is retried.
            self._reading = self.system.read() if self.system is not None else None
        return build_report(
            samples,
            device_id=self.device_id,
            interval_s=self.interval,
            system=self._reading,
            dropped=dropped,
            problems=[*problems, *own],
            now=wall,
            extra={"created": wall},
        )

    def report_now(self) -> int | None:
        """Build and store one report; its sequence number (None if the spool refused: the
        report then goes to ``telemetry/latest`` only, and the next stored one says why)."""

        def build(samples: list[Sample], problems: list[Problem], dropped: int) -> bytes:
            report = self._report(samples, problems, dropped)
            return json.dumps(report, sort_keys=True).encode()

        try:
            seq = self.spool.report_samples(build, keep=self._sent | self._unsaved_acks)
        except SpoolError as exc:
            self._failed(exc)
            self._publish_unstored()
            return None
        if self._problem is not None:
            _log.warning("telemetry stored again after %d spool failures", self._problem.count)
        self._problem = None
        self.last_error = None
        if self._live_pending and self.online:
            self._live_after = seq - 1
            self._live_pending = False
        return seq

    def _publish_unstored(self) -> None:
        """The spool refused a report: say so on ``telemetry/latest`` while connected (the
        samples stay in the spool for the next report that can be stored)."""
        if not (self.online and self._retain):
            return
        try:
            samples, problems = self.spool.peek()
            dropped: int | None = self.spool.dropped()
        except SpoolError:
            samples, problems, dropped = [], [], None
        report = self._report(samples, problems, dropped or 0, fresh=False)
        report.update({"seq": None, "historical": False, "dropped": dropped})
        message = json.dumps(report, sort_keys=True, separators=(",", ":")).encode()
        self._publish(self.topic + "/latest", message, retain=True)

    # -- sending ----------------------------------------------------------------------------

    def _forget_stale(self, now: float) -> None:
        if not self.online:
            return
        for mid, (seq, sent_at) in list(self._in_flight.items()):
            if now - sent_at > STALE_AFTER:
                _log.warning(
                    "no PUBACK for telemetry report %d in %g s; sending it again", seq, STALE_AFTER
                )
                del self._in_flight[mid]
                self._sent.discard(seq)

    def _save_acks(self) -> None:
        for seq in sorted(self._unsaved_acks):
            try:
                self.spool.ack(seq)
            except SpoolError as exc:
                self._failed(exc)
                return
            self._unsaved_acks.discard(seq)

    def send(self) -> int:
        """Publish stored reports, oldest first, up to ``window`` unacknowledged."""
        if not self.online:
            return 0
        if self._unsaved_acks:
            self._save_acks()
        room = self.window - len(self._in_flight)
        if room <= 0:
            return 0
        skip = self._sent | self._unsaved_acks
        try:
            waiting = self.spool.reports(limit=room + len(skip))
            dropped = self.spool.dropped()
        except SpoolError as exc:
            self._failed(exc)
            return 0
        sent = 0
        now = self._clock()
        for seq, payload in waiting:
            if seq in skip:
                continue
            if sent >= room:
                break
            message, live = self._message(seq, payload, dropped)
            mid = self._publish(self.topic, message)
            self._in_flight[mid] = (seq, now)
            self._sent.add(seq)
            sent += 1
            if live and self._retain and seq > self._latest_seq:
                self._publish(self.topic + "/latest", message, retain=True)
                self._latest_seq = seq
        return sent

    def _message(self, seq: int, payload: bytes, dropped: int) -> tuple[bytes, bool]:
        try:
            report: dict[str, Any] = json.loads(payload)
        except ValueError:
            report = {"schema": 1, "device": self.device_id, "unreadable": True}
        live = self._live_after is not None and seq > self._live_after
        report["seq"] = seq
        report["historical"] = not live
        # The count now, not when it was built: the first report after an outage explains the
        # gap before it (evictions take the oldest first, so every evicted seq is below it).
        report["dropped"] = dropped
        return json.dumps(report, sort_keys=True, separators=(",", ":")).encode(), live

    def acknowledged(self, mid: int, accepted: bool) -> None:
        entry = self._in_flight.pop(mid, None)
        if entry is None:
            return  # a PUBACK of another message (latest, a job document, a block request)
        seq = entry[0]
        self._sent.discard(seq)
        if not accepted:
            # Sent again at the next tick (an ACL fixed on the broker lets it through).
            _log.warning("the broker refused telemetry report %d; it stays in the spool", seq)
            return
        try:
            self.spool.ack(seq)
        except SpoolError as exc:
            # Delivered: never send it again from this process; the ack is retried each tick
            # (after a restart it is sent once more, a duplicate the seq shows).
            self._unsaved_acks.add(seq)
            self._failed(exc)
        self.send()
