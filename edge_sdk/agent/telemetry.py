"""The agent's telemetry: build a report every interval from the spool, and send the spool's
reports in order, each removed only after the broker acknowledged it (docs/telemetry.md).

Reports go to ``devices/{id}/telemetry`` (QoS 1, not retained). The published message is the
stored report with two fields added at send time: ``seq``, the spool's sequence number (it only
grows: the operator sees gaps and duplicates), and ``historical``, true for a report made
before the current connection (it waited out an outage in the spool). At most ``window``
reports are unacknowledged at a time; paho re-sends those after a reconnect, and the agent
re-sends what is still in the spool after a restart, so delivery is at least once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from edge_sdk.errors import SpoolError
from edge_sdk.reports import SystemReader, build_report
from edge_sdk.spool import Spool

__all__ = ["TelemetryPublisher"]

_log = logging.getLogger("edge_sdk.agent")
# Bounds of a remotely set interval: a report a second is what bench/telemetry.py sustains for
# 200 devices on one broker; a day is the longest gap an operator would accept.
MIN_INTERVAL = 1.0
MAX_INTERVAL = 86_400.0


class TelemetryPublisher:
    """``publish(suffix, payload) -> mid`` sends on the agent's connection; ``acknowledged``
    is called with each PUBACK's mid."""

    def __init__(
        self,
        spool: Spool,
        publish: Callable[[str, bytes], int],
        *,
        device_id: str,
        interval: float,
        system: SystemReader | None = None,
        window: int = 16,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self._publish = publish
        self.device_id = device_id
        self.interval = interval
        self.system = system
        self.window = window
        self._clock = clock
        self._wall = wall_clock
        self._next = clock() + interval
        self._in_flight: dict[int, int] = {}  # mid -> seq
        self._sent: set[int] = set()  # seqs in flight
        self._connected_at: float | None = None
        self.online = False
        self.last_error: str | None = None

    def connected(self) -> None:
        self.online = True
        self._connected_at = self._wall()
        self.send()

    def disconnected(self) -> None:
        self.online = False

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
        }
        try:
            summary["spooled_reports"] = self.spool.pending()
            summary["dropped"] = self.spool.dropped()
        except SpoolError as exc:
            summary["spool_error"] = str(exc)
        return summary

    def tick(self) -> None:
        """Build a report when the interval has passed, then send what waits."""
        now = self._clock()
        if now >= self._next:
            self._next = now + self.interval
            self.report_now()
        self.send()

    def report_now(self) -> int | None:
        """Build and store one report; its sequence number (None if the spool refused)."""
        try:
            samples = self.spool.take_samples()
            report = build_report(
                samples,
                device_id=self.device_id,
                interval_s=self.interval,
                system=self.system.read() if self.system is not None else None,
                dropped=self.spool.dropped(),
                extra={"created": self._wall()},
            )
            seq = self.spool.add_report(json.dumps(report, sort_keys=True).encode())
        except SpoolError as exc:
            # The device keeps inferring; the problem is said in the next report that can be
            # stored, and in the log now.
            self.last_error = str(exc)
            _log.warning("telemetry report not stored: %s", exc)
            return None
        self.last_error = None
        return seq

    def send(self) -> int:
        """Publish stored reports, oldest first, up to ``window`` unacknowledged."""
        if not self.online:
            return 0
        room = self.window - len(self._in_flight)
        if room <= 0:
            return 0
        try:
            waiting = self.spool.reports(limit=room + len(self._sent))
        except SpoolError as exc:
            self.last_error = str(exc)
            return 0
        sent = 0
        for seq, payload in waiting:
            if seq in self._sent:
                continue
            if sent >= room:
                break
            message = self._message(seq, payload)
            mid = self._publish(f"devices/{self.device_id}/telemetry", message)
            self._in_flight[mid] = seq
            self._sent.add(seq)
            sent += 1
        return sent

    def _message(self, seq: int, payload: bytes) -> bytes:
        try:
            report: dict[str, Any] = json.loads(payload)
        except ValueError:
            report = {"schema": 1, "device": self.device_id, "unreadable": True}
        report["seq"] = seq
        created = report.get("created")
        report["historical"] = bool(
            self._connected_at is not None
            and isinstance(created, int | float)
            and created < self._connected_at
        )
        return json.dumps(report, sort_keys=True, separators=(",", ":")).encode()

    def acknowledged(self, mid: int, accepted: bool) -> None:
        seq = self._in_flight.pop(mid, None)
        if seq is None:
            return  # a PUBACK of another message (a job document, a block request)
        self._sent.discard(seq)
        if not accepted:
            # Sent again at the next tick (an ACL fixed on the broker lets it through).
            _log.warning("the broker refused telemetry report %d; it stays in the spool", seq)
            return
        try:
            self.spool.ack(seq)
        except SpoolError as exc:
            self.last_error = str(exc)
        self.send()
