"""edge_sdk.reports: processes write recorder deltas to a real spool (nothing lost when a write
fails, and the failure reported with the next write that works), the agent merges them into a
report; device readings from fake /proc and /sys trees
(named so: no Raspberry Pi or Jetson here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_sdk import bundled, telemetry
from edge_sdk.errors import SpoolError
from edge_sdk.reports import SpoolWriter, SystemReader, build_report, merge_samples
from edge_sdk.runtime import EdgeModel
from edge_sdk.spool import Problem, Spool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _recording_on():
    telemetry.configure(enabled=True)
    yield
    telemetry.configure(enabled=None)


def test_inferences_in_several_processes_reach_one_report(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    Spool(path).close()
    code = textwrap.dedent(
        f"""
        import numpy as np
        from edge_sdk import bundled, telemetry
        from edge_sdk.reports import SpoolWriter
        from edge_sdk.runtime import EdgeModel
        from edge_sdk.spool import Spool
        telemetry.configure(enabled=True)
        writer = SpoolWriter(Spool({str(path)!r}), interval=0.05).start()
        with EdgeModel.load(bundled.model_path(), profile=None) as model:
            for _ in range(40):
                model.predict(np.zeros((8, 8), np.uint8))
        writer.stop()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        for _ in range(2)
    ]
    for child in children:
        assert child.returncode == 0, child.stderr
    with Spool(path) as spool:
        report = build_report(spool.take_samples(), device_id="cam-01", interval_s=5.0)
    (versions,) = report["models"].values()
    (entry,) = versions.values()
    assert entry["calls"] == 80 and entry["processes"] == 2
    for stage in ("pre", "inference", "post"):
        latency = entry["latency_ms"][stage]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert json.loads(json.dumps(report)) == report  # plain JSON
    assert report["schema"] == 1 and report["device"] == "cam-01"


def test_a_failed_write_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "telemetry.db")
    writer = SpoolWriter(spool)
    writer.flush()  # what earlier tests recorded in this process
    spool.take_samples()
    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        image = np.zeros((8, 8), np.uint8)
        for _ in range(5):
            model.predict(image)

        def full_disk(deltas: object, **options: object) -> int:
            raise SpoolError(str(spool.path), "add samples", "database or disk is full")

        with monkeypatch.context() as patch:  # injected: the disk is full for one write
            patch.setattr(spool, "add_samples", full_disk)
            assert writer.flush() == 0
        assert writer.failures == 1 and "disk is full" in (writer.last_error or "")
        for _ in range(3):
            model.predict(image)
    assert writer.flush() >= 1 and writer.last_error is None
    merged = merge_samples(spool.take_samples())
    (versions,) = merged.values()
    assert sum(v["calls"] for v in versions.values()) == 8  # 5 before the failure + 3 after
    (problem,) = spool.take_problems()  # written with the first write that worked
    assert problem.source == "process" and problem.pid == os.getpid() and problem.count == 1
    assert "disk is full" in problem.message and problem.first == problem.last
    assert writer.flush() == 0 and spool.take_problems() == []  # said once


def test_a_writer_whose_spool_cannot_be_opened_yet_serves_and_reports_it_later(
    tmp_path: Path,
) -> None:
    """The spool's directory does not exist when the application starts (a data partition not
    mounted yet): every write fails quietly, and the first that works carries the problem."""
    path = tmp_path / "data" / "telemetry.db"
    writer = SpoolWriter(path, interval=0.02).start()
    _wait_until(lambda: writer.failures >= 3, "three failed writes")
    assert writer.spool is None and "unable to open" in (writer.last_error or "")
    path.parent.mkdir()
    _wait_until(lambda: writer.last_error is None and writer.spool is not None, "a write")
    failures = writer.failures
    writer.stop()
    assert writer.spool is None  # it opened the spool, so it closed it
    with Spool(path) as spool:
        (problem,) = spool.take_problems()
    assert problem.count == failures and "check that its directory exists" in problem.message
    assert problem.first <= problem.last


def _wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_report_says_when_it_was_made_and_has_no_problems_by_default() -> None:
    report = build_report([], device_id="cam-01", interval_s=5.0, now=86_400.0)
    assert report["at"] == "1970-01-02T00:00:00Z" and report["problems"] == []
    problem = Problem("agent", 7, "telemetry spool x: cannot store a report: locked", 2, 0.0, 1.0)
    (said,) = build_report([], device_id="d", interval_s=1.0, problems=[problem])["problems"]
    assert said == {
        "source": "agent",
        "pid": 7,
        "message": "telemetry spool x: cannot store a report: locked",
        "count": 2,
        "first_at": "1970-01-01T00:00:00Z",
        "last_at": "1970-01-01T00:00:01Z",
    }


def _fake_pi_tree(root: Path) -> Path:
    """A fake Raspberry Pi /proc and /sys (no Pi here): two thermal zones, throttling flags."""
    (root / "proc").mkdir(parents=True)
    (root / "proc/stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    (root / "proc/meminfo").write_text(
        "MemTotal:        8000000 kB\nMemFree:  1000000 kB\nMemAvailable:    4096000 kB\n"
    )
    (root / "proc/uptime").write_text("12345.67 100.0\n")
    for index, (kind, milli) in enumerate((("cpu-thermal", 61234), ("rp1_adc", 40000))):
        zone = root / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    firmware = root / "sys/devices/platform/soc/soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text("50005\n")
    return root


def test_device_readings_from_a_fake_raspberry_pi_tree(tmp_path: Path) -> None:
    root = _fake_pi_tree(tmp_path / "pi")
    reader = SystemReader(root, thermal_zones=["cpu-thermal"], disk_path=tmp_path)
    assert reader.cpu_percent() is None  # the first reading only sets the baseline
    (root / "proc/stat").write_text("cpu  400 0 200 800 100 0 0 0 0 0\n")
    assert reader.cpu_percent() == pytest.approx(80.0)  # 400 busy of 500 jiffies
    readings = reader.read()
    assert readings["memory_mb"] == {"total": pytest.approx(7812.5), "available": 4000.0}
    assert readings["temperatures_c"] == {"cpu-thermal": 61.2}  # only the profile's zones
    throttling = readings["throttling"]
    assert throttling["under_voltage"] and throttling["throttled"]
    assert throttling["under_voltage_since_boot"] and not throttling["frequency_capped"]
    assert readings["uptime_s"] == pytest.approx(12345.67)
    assert readings["disk_free_mb"] > 0


def test_a_fake_jetson_tree_has_temperatures_and_no_throttling_node(tmp_path: Path) -> None:
    root = tmp_path / "jetson"
    for index, kind in enumerate(("cpu-thermal", "gpu-thermal", "tj-thermal")):
        zone = root / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind)
        (zone / "temp").write_text(str(50000 + index * 1500))
    reader = SystemReader(root, thermal_zones=["cpu-thermal", "gpu-thermal", "tj-thermal"])
    readings = reader.read()
    assert readings["temperatures_c"] == {
        "cpu-thermal": 50.0,
        "gpu-thermal": 51.5,
        "tj-thermal": 53.0,
    }
    assert readings["throttling"] is None and readings["memory_mb"] is None
