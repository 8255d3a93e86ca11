"""Interleaved, paired benchmarking shared by the kernel benchmarks.

A ``Case`` names its competitors (callables taking one input from a pool) and the targets to
check. ``run_case`` times every competitor once per round, in a rotating order, each call on
the next input of a pool larger than the last-level cache (so every call starts cache-cold, as
a fresh camera frame does), and reports per-call medians, p90s and the median of the per-round
ratios against a baseline. ``busy_core()`` keeps the second core busy for the "loaded board"
runs.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (sysfs), 0 if it reports none."""
    largest = 0
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        units = {"K": 1024, "M": 1024 * 1024, "G": 1024**3}
        try:
            largest = max(largest, int(text.rstrip("KMG")) * units.get(text[-1:], 1))
        except ValueError:
            continue
    return largest


# Inputs together 1.5x the last-level cache, at least 96 MiB: a VM may report the host's whole
# L3 (300 MiB on the shared host these figures come from), which a smaller pool would fit in.
POOL_BYTES = max(96 * 1024 * 1024, int(1.5 * _last_level_cache_bytes()))


@dataclass(frozen=True)
class Target:
    competitor: str
    baseline: str
    max_ratio: float


@dataclass
class Case:
    name: str
    make_pool: Callable[[], Sequence[Any]]
    competitors: dict[str, Callable[[Any], Any]]
    baseline: str
    targets: list[Target] = field(default_factory=list)
    # Bytes the fastest possible implementation must read and write for one input, for the
    # memory-bandwidth floor (None: no floor for this case).
    bytes_touched: Callable[[Any], int] | None = None
    rounds: int = 60


@dataclass
class Result:
    case: str
    load: str
    medians_us: dict[str, float]
    p90_us: dict[str, float]
    ratios: dict[str, float]
    ratio_p90: dict[str, float]
    floor_us: float | None
    targets: list[tuple[Target, float, bool]]


def pool_of(make_one: Callable[[int], Any], item_bytes: int, minimum: int = 4) -> list[Any]:
    """As many distinct inputs as needed to exceed POOL_BYTES."""
    count = max(minimum, POOL_BYTES // max(1, item_bytes) + 1)
    return [make_one(i) for i in range(count)]


def copy_bandwidth(size: int = 64 * 1024 * 1024, repeats: int = 5) -> float:
    """Bytes per second of a large memcpy (read + write counted), best of ``repeats``."""
    src = np.ones(size, np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(1000))


@contextmanager
def busy_core() -> Iterator[None]:
    """Run a CPU-bound process for the duration (the second core of a 2-core board)."""
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    process.start()
    try:
        time.sleep(0.2)
        yield
    finally:
        stop.set()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_case(
    case: Case, *, load: str, rounds: int | None = None, bandwidth: float | None = None
) -> Result:
    pool = case.make_pool()
    names = list(case.competitors)
    rounds = rounds or case.rounds
    times: dict[str, list[float]] = {n: [] for n in names}
    index = 0
    for name in names:  # one untimed call each: compilation, first-touch allocations
        case.competitors[name](pool[index % len(pool)])
        index += 1
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            item = pool[index % len(pool)]
            index += 1
            fn = case.competitors[name]
            start = time.perf_counter()
            fn(item)
            times[name].append(time.perf_counter() - start)
    base = times[case.baseline]
    ratios = {n: [t / b for t, b in zip(times[n], base, strict=True)] for n in names}
    floor = None
    if case.bytes_touched is not None and bandwidth:
        floor = case.bytes_touched(pool[0]) / bandwidth * 1e6
    result = Result(
        case=case.name,
        load=load,
        medians_us={n: statistics.median(times[n]) * 1e6 for n in names},
        p90_us={n: _percentile(times[n], 90) * 1e6 for n in names},
        ratios={n: statistics.median(ratios[n]) for n in names},
        ratio_p90={n: _percentile(ratios[n], 90) for n in names},
        floor_us=floor,
        targets=[],
    )
    for target in case.targets:
        paired = [
            t / b for t, b in zip(times[target.competitor], times[target.baseline], strict=True)
        ]
        ratio = statistics.median(paired)
        result.targets.append((target, ratio, ratio <= target.max_ratio))
    return result


def format_result(result: Result) -> str:
    lines = [f"{result.case} [{result.load}]"]
    base = next(n for n, r in result.ratios.items() if r == 1.0)
    lines.append(f"  {'competitor':<34} {'median us':>10} {'p90 us':>10} {'x ' + base:>14}")
    for name, median in result.medians_us.items():
        lines.append(
            f"  {name:<34} {median:>10.1f} {result.p90_us[name]:>10.1f} "
            f"{result.ratios[name]:>14.3f}"
        )
    if result.floor_us is not None:
        first = next(iter(result.medians_us))
        lines.append(
            f"  bandwidth floor {result.floor_us:.1f} us; {first} at "
            f"{result.medians_us[first] / result.floor_us:.2f}x the floor"
        )
    for target, ratio, ok in result.targets:
        lines.append(
            f"  target {target.competitor} / {target.baseline} <= {target.max_ratio}: "
            f"{ratio:.3f} {'PASS' if ok else 'FAIL'}"
        )
    return "\n".join(lines)
