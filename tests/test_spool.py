"""edge_sdk.spool: a real SQLite database on disk shared by real processes; reports in order,
bounded with eviction counted, durable across SIGKILL; a read-only disk is a SpoolError."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_sdk import telemetry
from edge_sdk.errors import SpoolError
from edge_sdk.spool import Spool

REPO = Path(__file__).resolve().parents[1]


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_reports_keep_their_order_and_leave_only_when_acknowledged(tmp_path: Path) -> None:
    with Spool(tmp_path / "t.db") as spool:
        seqs = [spool.add_report(f"r{i}".encode()) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert [p for _, p in spool.reports(limit=3)] == [b"r0", b"r1", b"r2"]
        spool.ack(seqs[1])  # acknowledged out of order: only that one leaves
        assert [p for _, p in spool.reports()] == [b"r0", b"r2", b"r3", b"r4"]
        assert spool.pending() == 4


def test_sequence_numbers_never_repeat_across_acks_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with Spool(path) as spool:
        first = spool.add_report(b"a")
        spool.ack(first)
    with Spool(path) as spool:
        assert spool.add_report(b"b") > first


def test_over_its_bound_the_oldest_reports_go_and_are_counted(tmp_path: Path) -> None:
    with Spool(tmp_path / "t.db", max_reports=3) as spool:
        for i in range(7):
            spool.add_report(f"r{i}".encode())
        assert [p for _, p in spool.reports()] == [b"r4", b"r5", b"r6"]
        assert spool.dropped() == 4


def test_processes_write_samples_the_agent_takes_each_once(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Spool(path).close()
    writer = f"""
        import sys
        from edge_sdk import telemetry
        from edge_sdk.spool import Spool
        stats = telemetry.ModelStats("digits", "3")
        spool = Spool({str(path)!r})
        for _ in range(50):
            before = stats.snapshot()
            for _ in range(10):
                stats.record(telemetry.INFERENCE, 0.0002)
            spool.add_samples([stats.snapshot() - before])
        print("done")
    """
    children = [_child(writer) for _ in range(3)]
    taken = []
    with Spool(path) as agent:
        while any(c.poll() is None for c in children):
            taken += agent.take_samples()
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
        taken += agent.take_samples()
    assert len(taken) == 150
    assert sum(s.data["calls"] for s in taken) == 1500
    assert len({s.pid for s in taken}) == 3
    assert {(s.model, s.version) for s in taken} == {("digits", "3")}


def test_a_report_stored_before_a_sigkill_is_still_there(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    child = _child(
        f"""
        import os, signal
        from edge_sdk.spool import Spool
        spool = Spool({str(path)!r})
        for i in range(20):
            spool.add_report(b"report %d" % i)
        print("stored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL and "stored" in out, err
    with Spool(path) as spool:
        assert [p for _, p in spool.reports()] == [b"report %d" % i for i in range(20)]


def test_empty_deltas_are_not_stored(tmp_path: Path) -> None:
    stats = telemetry.ModelStats("m", "1")
    snap = stats.snapshot()
    with Spool(tmp_path / "t.db") as spool:
        assert spool.add_samples([snap - snap]) == 0
        assert spool.take_samples() == []


def test_a_read_only_disk_is_a_spool_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount")
    source = tmp_path / "data"
    source.mkdir()
    Spool(source / "t.db").close()
    view = tmp_path / "ro"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        with pytest.raises(SpoolError) as caught:
            Spool(view / "t.db").add_report(b"x")
        assert str(view / "t.db") in str(caught.value)
        assert caught.value.reason
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)
