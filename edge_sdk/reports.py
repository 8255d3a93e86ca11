"""Telemetry reports: what an application process writes to the spool, and what the agent
builds from it (docs/telemetry.md, report schema 1).

- ``SpoolWriter`` runs in every process that serves models: every ``interval`` seconds a daemon
  thread takes the recorder's cumulative snapshot, writes the difference from the last written
  one into the spool, and only then remembers it. A failed write (a full or read-only disk)
  loses nothing: the next write carries the larger difference, and a ``problems`` entry naming
  the error. Nothing touches the inference path, and nothing raises to the application.
- ``build_report`` merges the samples of every process per model version (calls, errors by
  type, latency p50/p95/p99 per stage) and adds the device's state: CPU %, memory, the
  profile's thermal zones, throttling where the board says, disk free, uptime, SDK version.
  Every path is read under a configurable ``root`` so the Jetson and Raspberry Pi readings are
  tested on fake /proc and /sys trees.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_sdk import telemetry
from edge_sdk.errors import SpoolError
from edge_sdk.spool import Problem, Sample, Spool
from edge_sdk.telemetry import BUCKETS, STAGES, StatsSnapshot, percentile_of

__all__ = ["REPORT_SCHEMA", "SpoolWriter", "SystemReader", "build_report"]

REPORT_SCHEMA = 1
_log = logging.getLogger("edge_sdk.telemetry")


class SpoolWriter:
    """Write this process's recorder counters to ``spool`` every ``interval`` seconds.

    ``spool`` is a ``Spool`` or the path of one; a path is opened at the first write (and
    again after a failed open), so a process that starts while the disk is read-only or full
    serves all the same. Nothing raises to the application: a failed write is counted
    (``failures``, ``last_error``), logged, and written as a ``problems`` entry with the next
    write that succeeds, together with everything recorded meanwhile.

    Example: ``SpoolWriter("/var/lib/edge-sdk/telemetry.db").start()``; ``stop()`` writes
    once more.
    """

    def __init__(self, spool: Spool | str | os.PathLike[str], *, interval: float = 5.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._owned = not isinstance(spool, Spool)
        self._path = spool.path if isinstance(spool, Spool) else Path(spool)
        self._spool: Spool | None = spool if isinstance(spool, Spool) else None
        self.interval = interval
        self._written: dict[tuple[str, str], StatsSnapshot] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error: str | None = None
        self._problem: Problem | None = None  # failures not yet written to the spool

    @property
    def spool(self) -> Spool | None:
        """The open spool (None while a path could not be opened yet)."""
        return self._spool

    def _failed(self, exc: SpoolError) -> None:
        now = time.time()
        first = self._problem is None
        self.failures += 1
        self.last_error = str(exc)
        self._problem = Problem(
            "process",
            os.getpid(),
            str(exc),
            1 if self._problem is None else self._problem.count + 1,
            now if self._problem is None else self._problem.first,
            now,
        )
        # Once per run of failures at warning level: a full disk for an hour is one line.
        (_log.warning if first else _log.debug)(
            "telemetry not written (kept for the next try): %s", exc
        )

    def flush(self) -> int:
        """Write what was recorded since the last successful write; return the samples
        written (0 when nothing new, or when the spool refused: see ``last_error``)."""
        with self._lock:
            now = telemetry.snapshot()
            deltas = []
            for key, snap in now.items():
                before = self._written.get(key)
                deltas.append(snap - before if before is not None else snap)
            problems = [] if self._problem is None else [self._problem]
            try:
                if self._spool is None:
                    self._spool = Spool(self._path)
                written = self._spool.add_samples(deltas, problems=problems)
            except SpoolError as exc:
                self._failed(exc)
                return 0
            if self._problem is not None:
                _log.warning(
                    "telemetry written again after %d failed attempts", self._problem.count
                )
            self._written = now
            self._problem = None
            self.last_error = None
            return written

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # never let telemetry end this thread (or reach the app)
                _log.exception("the telemetry writer caught an unexpected error; going on")

    def start(self) -> SpoolWriter:
        self._thread = threading.Thread(target=self._loop, name="edge-sdk-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write once more (a spool this writer opened is closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
        if self._owned and self._spool is not None:
            self._spool.close()
            self._spool = None


# --------------------------------------------------------------------------- merging samples


def _percentiles(hist: Sequence[int]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        value = percentile_of(hist, q)
        result[label] = None if value is None or math.isinf(value) else round(value, 4)
    return result


@dataclass
class _Merged:
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    hist: list[list[int]] = field(default_factory=lambda: [[0] * BUCKETS for _ in STAGES])
    processes: set[int] = field(default_factory=set)


def merge_samples(samples: Iterable[Sample]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {version: {"calls", "errors", "latency_ms": {stage: {p50, p95, p99}},
    "processes"}}}`` over every sample."""
    merged: dict[tuple[str, str], _Merged] = {}
    for sample in samples:
        entry = merged.setdefault((sample.model, sample.version), _Merged())
        entry.calls += int(sample.data.get("calls", 0))
        for kind, count in (sample.data.get("errors") or {}).items():
            entry.errors[kind] = entry.errors.get(kind, 0) + int(count)
        for stage, buckets in (sample.data.get("hist") or {}).items():
            if stage not in STAGES:
                continue
            row = entry.hist[STAGES.index(stage)]
            for index, count in buckets.items():
                position = int(index)
                if 0 <= position < BUCKETS:
                    row[position] += int(count)
        entry.processes.add(sample.pid)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for (model, version), entry in sorted(merged.items()):
        result.setdefault(model, {})[version] = {
            "calls": entry.calls,
            "errors": dict(sorted(entry.errors.items())),
            "latency_ms": {
                stage: _percentiles(row)
                for stage, row in zip(STAGES, entry.hist, strict=True)
                if any(row)
            },
            "processes": len(entry.processes),
        }
    return result


# --------------------------------------------------------------------------- the device


class SystemReader:
    """Device readings from ``root`` (``/`` on a device, a fake tree in tests): CPU % between
    two calls, memory, thermal zones by type name, throttling, uptime, disk free."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        thermal_zones: Sequence[str] = (),
        disk_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.thermal_zones = tuple(thermal_zones)
        self.disk_path = disk_path
        self._cpu: tuple[int, int] | None = None

    def _read(self, relative: str) -> str | None:
        try:
            return (self.root / relative).read_text(errors="replace")
        except OSError:
            return None

    def cpu_percent(self) -> float | None:
        """Busy share of all CPUs since the previous call (None on the first)."""
        text = self._read("proc/stat")
        if not text:
            return None
        fields = text.splitlines()[0].split()
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:] if v.isdigit()]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values)
        previous, self._cpu = self._cpu, (total, idle)
        if previous is None or total <= previous[0]:
            return None
        busy = (total - previous[0]) - (idle - previous[1])
        return round(100.0 * busy / (total - previous[0]), 1)

    def memory_mb(self) -> dict[str, float] | None:
        text = self._read("proc/meminfo")
        if not text:
            return None
        values = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0]) / 1024.0
        if "MemTotal" not in values:
            return None
        available = values.get("MemAvailable", values.get("MemFree", 0.0))
        return {"total": round(values["MemTotal"], 1), "available": round(available, 1)}

    def temperatures_c(self) -> dict[str, float]:
        """The profile's thermal zones found on this device, by type name, in degrees C."""
        found: dict[str, float] = {}
        base = self.root / "sys/class/thermal"
        try:
            zones = sorted(base.glob("thermal_zone*"))
        except OSError:
            return found
        for zone in zones:
            kind = self._read(str((zone / "type").relative_to(self.root)))
            temp = self._read(str((zone / "temp").relative_to(self.root)))
            if kind is None or temp is None:
                continue
            name = kind.strip()
            if self.thermal_zones and name not in self.thermal_zones:
                continue
            try:
                found[name] = round(int(temp.strip()) / 1000.0, 1)  # millidegrees (sysfs ABI)
            except ValueError:
                continue
        return found

    def throttled(self) -> dict[str, Any] | None:
        """Raspberry Pi firmware's throttling flags, where the board exposes them; else None.

        Source: the Raspberry Pi kernel's "firmware/raspberrypi: Add a get_throttled sysfs
        file" (2018), under the firmware node (``soc`` or, on newer boards, ``scb``); the bits
        are those of ``vcgencmd get_throttled`` (Raspberry Pi documentation, "get_throttled").
        """
        for node in ("soc", "scb"):
            text = self._read(f"sys/devices/platform/{node}/soc:firmware/get_throttled")
            if text is not None:
                break
        else:
            return None
        try:
            bits = int(text.strip(), 16)
        except ValueError:
            return None
        return {
            "raw": hex(bits),
            "under_voltage": bool(bits & 0x1),
            "frequency_capped": bool(bits & 0x2),
            "throttled": bool(bits & 0x4),
            "soft_temperature_limit": bool(bits & 0x8),
            "under_voltage_since_boot": bool(bits & 0x10000),
            "throttled_since_boot": bool(bits & 0x40000),
        }

    def uptime_s(self) -> float | None:
        text = self._read("proc/uptime")
        try:
            return float(text.split()[0]) if text else None
        except (ValueError, IndexError):
            return None

    def disk_free_mb(self) -> float | None:
        if self.disk_path is None:
            return None
        try:
            stat = os.statvfs(self.disk_path)
        except OSError:
            return None
        return round(stat.f_bavail * stat.f_frsize / (1024 * 1024), 1)

    def read(self) -> dict[str, Any]:
        return {
            "cpu_percent": self.cpu_percent(),
            "memory_mb": self.memory_mb(),
            "temperatures_c": self.temperatures_c(),
            "throttling": self.throttled(),
            "uptime_s": self.uptime_s(),
            "disk_free_mb": self.disk_free_mb(),
        }


def build_report(
    samples: Iterable[Sample],
    *,
    device_id: str,
    interval_s: float,
    system: Mapping[str, Any] | None = None,
    dropped: int = 0,
    problems: Iterable[Problem | Mapping[str, Any]] = (),
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One telemetry report (schema 1, docs/telemetry.md). The spool assigns its ``seq``;
    ``now`` (wall-clock seconds, default the current time) gives ``at``."""
    from edge_sdk import __version__

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "device": device_id,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now)),
        "interval_s": interval_s,
        "sdk_version": __version__,
        "models": merge_samples(samples),
        "system": dict(system or {}),
        "dropped": dropped,
        "problems": [p.to_dict() if isinstance(p, Problem) else dict(p) for p in problems],
    }
    if extra:
        report.update(extra)
    return report
