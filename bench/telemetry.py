"""What recording telemetry on the inference path costs: the bundled model with recording on
against the same model with it off (edge_sdk.telemetry), in one process, interleaved.

Competitors, per case, on two EdgeModel instances of the bundled digits model with the same
session settings (1 intra-op thread, no spinning), loaded with ``telemetry.configure(enabled=
True)`` and ``enabled=False``:

- ``predict``: ``EdgeModel.predict`` on a decoded 8x8 uint8 image (preprocessing, inference,
  postprocessing: three stage histograms updated per call when on);
- ``run``: ``EdgeModel.run`` on a ready float32 tensor (one histogram and the call counter);
- ``fast_runner``: ``EdgeModel.fast_runner().run()`` (the lowest-overhead path).

Each round times a block of calls of "on" and of "off", in alternating order; the ratio on/off
is taken per round (paired) and summarised by its median over the rounds. Target (the
telemetry issue): at most 1.02 on the bundled model. The A/A line times "off" against a second
"off" model: the noise floor of the machine.

    python bench/telemetry.py            # full run, about 30 s
    python bench/telemetry.py --quick    # CI smoke, a few seconds
    python bench/telemetry.py --check    # exit 1 when a target is missed
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_sdk import bundled, telemetry
from edge_sdk.runtime import EdgeModel, SessionSettings

TARGET = 1.02
SETTINGS = SessionSettings(intra_op_threads=1, inter_op_threads=1, allow_spinning=False)


def load(enabled: bool) -> EdgeModel:
    telemetry.configure(enabled=enabled)
    try:
        return EdgeModel.load(bundled.model_path(), settings=SETTINGS, profile=None)
    finally:
        telemetry.configure(enabled=None)


def block(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def measure(
    name: str, on: Callable[[], object], off: Callable[[], object], aa: Callable[[], object],
    rounds: int, calls: int,
) -> tuple[float, float, float, float]:  # fmt: skip
    for fn in (on, off, aa):  # warm up
        block(fn, max(10, calls // 10))
    ratios, aa_ratios, on_times, off_times = [], [], [], []
    gc.disable()
    try:
        for round_index in range(rounds):
            order = [("on", on), ("off", off), ("aa", aa)]
            if round_index % 2:
                order.reverse()
            times = {label: block(fn, calls) for label, fn in order}
            ratios.append(times["on"] / times["off"])
            aa_ratios.append(times["aa"] / times["off"])
            on_times.append(times["on"])
            off_times.append(times["off"])
    finally:
        gc.enable()
    return (
        statistics.median(on_times) * 1e6,
        statistics.median(off_times) * 1e6,
        statistics.median(ratios),
        statistics.median(aa_ratios),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds (CI)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (40)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    rounds = 4 if args.quick else args.rounds
    on, off, aa = load(True), load(False), load(False)
    assert on._loaded.stats is not None and off._loaded.stats is None
    image = np.zeros((8, 8), np.uint8)
    tensor = on.example_inputs()
    runners = [model.fast_runner() for model in (on, off, aa)]
    for runner in runners:
        runner.run(tensor)
    cases = {
        "predict": (lambda m: lambda: m.predict(image), 200),
        "run": (lambda m: lambda: m.run(tensor), 500),
    }
    print(
        f"telemetry recording on vs off, bundled digits model, {rounds} interleaved rounds; "
        f"per-call medians in us; ratio = on/off per round, median (target <= {TARGET})"
    )
    print(f"{'case':<12} {'on us':>8} {'off us':>8} {'on/off':>7} {'A/A':>7}  verdict")
    ok = True
    results = []
    for name, (make, calls) in cases.items():
        results.append((name, *measure(name, make(on), make(off), make(aa), rounds, calls)))
    fast = [runner.run for runner in runners]
    results.append(("fast_runner", *measure("fast", fast[0], fast[1], fast[2], rounds, 1000)))
    for name, on_us, off_us, ratio, aa_ratio in results:
        passed = ratio <= TARGET
        ok &= passed
        verdict = "PASS" if passed else "FAIL"
        print(f"{name:<12} {on_us:8.2f} {off_us:8.2f} {ratio:7.3f} {aa_ratio:7.3f}  {verdict}")
    recorded = telemetry.snapshot()
    total = sum(s.calls for s in recorded.values())
    print(f"calls recorded by the 'on' model: {total}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
