"""Recording on the inference path: calls, errors by type and latency histograms per stage.

DESIGN.md ("Telemetry"): recording is a few counter and histogram updates, nothing more. Each
thread writes only its own shard (a ``threading.local``): a call appends its duration (the float
the clock returned) to the thread's list for that stage, and every ``FOLD_AT`` samples the
thread folds the list into its histogram with NumPy, so threads never contend and nothing is
converted or bucketed per call in Python. ``snapshot()`` sums the shards from any thread; every
counter only grows, so a reader that keeps the previous snapshot gets exact deltas.

Latencies go into log-linear buckets: 4 per power of two of microseconds (each bucket at most
19 % wide), from 1 us to about 2 minutes; percentiles are read from the buckets (the upper edge
of the bucket holding the rank: an estimate never below the true value, at most 19 % above).

``EDGE_SDK_TELEMETRY=0`` (read when a model loads) or ``configure(enabled=False)`` turns
recording off; EdgeModel then skips even the clock reads.

Example::

    from edge_sdk import telemetry
    for key, stats in telemetry.snapshot().items():
        print(key, stats.calls, stats.percentile("inference", 0.99))
"""

from __future__ import annotations

import math
import os
import struct
import threading
import weakref
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "STAGES",
    "ModelStats",
    "StatsSnapshot",
    "configure",
    "enabled",
    "model_stats",
    "snapshot",
]

#: The stages of one prediction; ``run()`` alone records "inference".
STAGES = ("pre", "inference", "post")
PRE, INFERENCE, POST = 0, 1, 2
_SUB = 4  # buckets per power of two
_OCTAVES = 27  # 1 us .. 2**27 us (134 s)
#: Bucket 0 holds everything under 1 us; the last bucket everything above 2**27 us.
BUCKETS = _OCTAVES * _SUB + 2
_LAST = BUCKETS - 1
_frexp = math.frexp


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration in seconds."""
    micros = seconds * 1e6
    if micros < 1.0:
        return 0
    if micros == math.inf:  # no duration, but buckets_of puts it in the last bucket too
        return _LAST
    mantissa, exponent = _frexp(micros)  # micros = mantissa * 2**exponent, 0.5 <= mantissa < 1
    index = (exponent - 1) * _SUB + int((mantissa - 0.5) * (2 * _SUB)) + 1
    return index if index < _LAST else _LAST


def bucket_upper_ms(index: int) -> float:
    """The upper edge of bucket ``index`` in milliseconds (inf for the last one)."""
    if index == 0:
        return 0.001
    if index >= _LAST:
        return math.inf
    octave, step = divmod(index - 1, _SUB)
    return (2.0**octave) * (1.0 + (step + 1) / _SUB) / 1000.0


# Bucketing many durations at once, from the bits of micros = seconds * 1e6 (IEEE 754 double):
# its top 14 bits (sign, 11 bits of biased exponent, the top 2 bits of the fraction) are, for
# micros >= 1, frexp's exponent and int((mantissa - 0.5) * 8) of bucket_of, so one table of
# 2**14 entries maps them to the bucket (equal to bucket_of for every double, tested). Read as a
# signed int64 and shifted, a negative duration gives a negative index, which NumPy takes from
# the table's end: that half maps to bucket 0, as bucket_of does for anything under 1 us.
_BITS_SHIFT = 52 - 2  # keep the exponent and log2(_SUB) = 2 fraction bits
_TABLE = np.zeros(1 << 14, dtype=np.intp)
_TABLE[: 1 << 13] = np.clip(np.arange(1 << 13) - ((1023 << 2) - 1), 0, _LAST)


def buckets_of(seconds: Sequence[float] | array[float] | np.ndarray) -> np.ndarray:
    """``bucket_of`` for many durations at once (what folding uses)."""
    if isinstance(seconds, np.ndarray):
        micros = seconds.astype(np.float64) * 1e6
    elif isinstance(seconds, array):
        micros = np.frombuffer(seconds, dtype=np.float64) * 1e6
    else:
        micros = np.frombuffer(_pack(seconds), dtype=np.float64) * 1e6
    index: np.ndarray = _TABLE[micros.view(np.int64) >> _BITS_SHIFT]
    return index


#: A writer folds its raw durations into its histogram every this many samples per stage: at
#: most 8192 Python floats (about 256 KiB) per stage and writer (thread or FastRunner).
#:
#: Measured on the bundled model (15 us a call; bench/telemetry.py and its README): between two
#: onnxruntime calls everything costs several times what it does in a tight loop, as caches
#: were refilled by onnxruntime. ``list.append`` of the clock's float was the cheapest store
#: (``array("d").append`` cost about 250 ns more: it converts through ``PyArg_Parse``, a long
#: cold code path); a fold costs 100 to 200 us there, mostly NumPy's per-call overhead, so
#: folding every 8192 samples instead of 2048 saved about 0.4 % of a call.
FOLD_AT = 8192
_PACK_FULL = struct.Struct(f"{FOLD_AT}d")


def _pack(values: Sequence[float]) -> bytes:
    """Python floats as packed doubles: struct does it 2 to 3 times faster than np.array,
    which first inspects every item for nested sequences."""
    if len(values) == FOLD_AT:
        return _PACK_FULL.pack(*values)
    return struct.pack(f"{len(values)}d", *values)


def percentile_of(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in milliseconds of a histogram's ``counts``: the upper edge of
    the bucket holding its rank; None without samples."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, value in enumerate(counts):
        seen += value
        if seen >= rank:
            return bucket_upper_ms(index)
    return math.inf  # pragma: no cover - rank <= total


class _Shard:
    """One writer's counters (a thread's, or a FastRunner's: used by one thread at a time).
    Only the writer appends to ``pending`` and only the writer folds, so a fold sees every
    pending sample; folding and reading (``snapshot``, any thread) hold ``lock``, so a reader
    sees the folded histogram plus every pending sample exactly once (a list's slice and
    ``clear`` are each atomic, and the writer only appends at the end)."""

    __slots__ = ("errors", "hist", "lock", "pending")

    def __init__(self) -> None:
        self.pending: tuple[list[float], list[float], list[float]] = ([], [], [])
        self.hist = np.zeros((len(STAGES), BUCKETS), dtype=np.int64)
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()

    def fold(self, stage: int) -> None:
        """Move the pending samples of ``stage`` into the histogram (by the writer only)."""
        with self.lock:
            pending = self.pending[stage]
            if pending:
                self.hist[stage] += np.bincount(buckets_of(pending), minlength=BUCKETS)
                pending.clear()


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters of one model version at one moment: cumulative since the process started (or
    a difference of two snapshots, ``later - earlier``)."""

    name: str
    version: str
    calls: int
    errors: Mapping[str, int]
    hist: tuple[tuple[int, ...], ...]

    def count(self, stage: str) -> int:
        return sum(self.hist[STAGES.index(stage)])

    def percentile(self, stage: str, q: float) -> float | None:
        """The ``q`` quantile (0..1) of ``stage`` in milliseconds; None without samples."""
        return percentile_of(self.hist[STAGES.index(stage)], q)

    def __sub__(self, other: StatsSnapshot) -> StatsSnapshot:
        errors = {k: v - other.errors.get(k, 0) for k, v in self.errors.items()}
        return StatsSnapshot(
            self.name,
            self.version,
            self.calls - other.calls,
            {k: v for k, v in errors.items() if v},
            tuple(
                tuple(a - b for a, b in zip(mine, theirs, strict=True))
                for mine, theirs in zip(self.hist, other.hist, strict=True)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Sparse JSON form: ``{"calls", "errors", "hist": {stage: {bucket: count}}}``."""
        return {
            "calls": self.calls,
            "errors": dict(self.errors),
            "hist": {
                stage: {str(i): c for i, c in enumerate(counts) if c}
                for stage, counts in zip(STAGES, self.hist, strict=True)
            },
        }


class ModelStats:
    """The counters of one model version in this process; one shard per thread.

    The hot path (``record``) appends the raw duration to the thread's own list: no lock, no
    bucketing; every ``FOLD_AT`` samples the thread folds them into its histogram with NumPy.
    EdgeModel inlines the same steps: ``local.inference`` (or ``local.pending``, the three
    stages' lists) of this thread, ``shard()`` the first time (AttributeError), append, and
    ``fold(stage)`` once the list holds ``FOLD_AT`` samples.
    """

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        #: Per thread: ``shard``, ``pending`` (the shard's three lists) and ``inference``
        #: (``pending[INFERENCE]``), so the hot path reaches its list in one lookup.
        self.local = threading.local()
        self._shards: list[_Shard] = []
        self._lock = threading.Lock()  # only to register a new shard
        self._free: list[_Shard] = []  # writer_shard()s whose owner is gone, for the next one

    def shard(self) -> _Shard:
        """This thread's shard (created on the thread's first call)."""
        local = self.local
        try:
            shard: _Shard = local.shard
        except AttributeError:
            shard = _Shard()
            with self._lock:
                self._shards.append(shard)
            local.shard = shard
            local.pending = shard.pending
            local.inference = shard.pending[INFERENCE]
        return shard

    def writer_shard(self, owner: object) -> _Shard:
        """A shard of its own for ``owner``, an object that one thread at a time records
        through (a FastRunner), so its hot path needs no thread-local lookup. When ``owner``
        is garbage collected the shard, with its counts, waits for the next owner: there are
        never more of them than owners alive at once."""
        try:
            shard = self._free.pop()
        except IndexError:
            shard = _Shard()
            with self._lock:
                self._shards.append(shard)
        # A list append: safe from whichever thread collects the owner, even mid-snapshot.
        weakref.finalize(owner, self._free.append, shard).atexit = False
        return shard

    def record(self, stage: int, seconds: float) -> None:
        """Add one duration to ``stage`` (PRE, INFERENCE or POST); INFERENCE also counts a call."""
        try:
            pending = self.local.pending[stage]
        except AttributeError:
            pending = self.shard().pending[stage]
        pending.append(seconds)
        if len(pending) >= FOLD_AT:
            self.local.shard.fold(stage)

    def fold(self, stage: int) -> None:
        """Fold this thread's pending samples of ``stage`` into its histogram."""
        self.shard().fold(stage)

    def error(self, kind: str) -> None:
        """Count one failed call by the error's type name."""
        errors = self.shard().errors
        errors[kind] = errors.get(kind, 0) + 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            shards = list(self._shards)
        errors: dict[str, int] = {}
        hist = np.zeros((len(STAGES), BUCKETS), dtype=np.int64)
        for shard in shards:
            with shard.lock:
                hist += shard.hist
                for stage, pending in enumerate(shard.pending):
                    taken = pending[: len(pending)]
                    if taken:
                        hist[stage] += np.bincount(buckets_of(taken), minlength=BUCKETS)
            for kind, count in dict(shard.errors).items():
                errors[kind] = errors.get(kind, 0) + count
        rows = tuple(tuple(int(v) for v in row) for row in hist)
        return StatsSnapshot(self.name, self.version, sum(rows[INFERENCE]), errors, rows)


@dataclass
class _Registry:
    enabled: bool | None = None
    stats: dict[tuple[str, str], ModelStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_registry = _Registry()


def configure(*, enabled: bool | None = None) -> None:
    """Turn recording on or off for models loaded from now on (None: back to the default,
    ``EDGE_SDK_TELEMETRY``, on unless it is 0)."""
    _registry.enabled = enabled


def enabled() -> bool:
    if _registry.enabled is not None:
        return _registry.enabled
    return os.environ.get("EDGE_SDK_TELEMETRY", "1") != "0"


def model_stats(name: str, version: str) -> ModelStats | None:
    """The process's stats of a model version (shared by every EdgeModel of it), or None when
    recording is off."""
    if not enabled():
        return None
    key = (name, version)
    with _registry.lock:
        stats = _registry.stats.get(key)
        if stats is None:
            stats = _registry.stats[key] = ModelStats(name, version)
        return stats


def snapshot() -> dict[tuple[str, str], StatsSnapshot]:
    """Every model version's counters in this process, cumulative."""
    with _registry.lock:
        everything = list(_registry.stats.items())
    return {key: stats.snapshot() for key, stats in everything}
