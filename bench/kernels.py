"""Kernel benchmarks: every case of bench/kernel_cases/*.py, idle and with the second core busy,
plus the cold start of the kernels in fresh processes; the table goes into bench/README.md.

Each case runs its competitors in this one process, interleaved round by round, every call on
a fresh input from a pool larger than the last-level cache (bench/_harness.py). Ratios are
medians of per-round ratios against the case's baseline.

    python bench/kernels.py [--quick] [--write-readme] [--check] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import import_module
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _harness import Result, busy_core, copy_bandwidth, format_result, run_case  # noqa: E402

FAMILY_CASES = ("image", "color", "post")
BEGIN, END = "<!-- kernels:begin -->", "<!-- kernels:end -->"

COLD_START = """
import json, sys, time
t0 = time.perf_counter()
import edge_sdk.kernels as k
k.configure(cache_dir=sys.argv[1])
from edge_sdk.kernels.warmup import warmup_all
report = warmup_all()
print(json.dumps({"import_sdk_ms": (time.perf_counter() - t0) * 1e3 - report.total_ms,
                  "numba_import_ms": report.numba_import_ms,
                  "numba_start_ms": report.numba_start_ms,
                  "kernels": {t.name: t.first_call_ms for t in report.kernels}}))
"""


def cold_start() -> dict[str, dict[str, float]]:
    """First call of every kernel in a fresh process: with an empty cache, then a warm one."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("empty cache", "warm cache"):
            env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
            done = subprocess.run(
                [sys.executable, "-c", COLD_START, cache],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def _markdown(results: list[Result], cold: dict[str, dict[str, float]] | None) -> str:
    lines = []
    for result in results:
        base = next(n for n, r in result.ratios.items() if r == 1.0)
        lines += [f"**{result.case}** ({result.load})", ""]
        lines += [
            f"| competitor | median us | p90 us | ratio vs {base} |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, median in result.medians_us.items():
            lines.append(
                f"| {name} | {median:.1f} | {result.p90_us[name]:.1f} | {result.ratios[name]:.3f} |"
            )
        if result.floor_us is not None:
            first = next(iter(result.medians_us))
            lines.append(
                f"| bandwidth floor | {result.floor_us:.1f} | | "
                f"{first}: {result.medians_us[first] / result.floor_us:.2f}x the floor |"
            )
        for target, ratio, ok in result.targets:
            lines.append("")
            lines.append(
                f"Target {target.competitor} / {target.baseline} <= {target.max_ratio}: "
                f"**{ratio:.3f} {'PASS' if ok else 'FAIL'}**"
            )
        lines.append("")
    if cold:
        lines += ["**Cold start** (first call of each kernel in a fresh process, ms)", ""]
        names = sorted(cold["warm cache"]["kernels"])
        lines += ["| kernel | empty cache | warm cache |", "| --- | ---: | ---: |"]
        for name in names:
            lines.append(
                f"| {name} | {cold['empty cache']['kernels'].get(name, float('nan')):.1f} | "
                f"{cold['warm cache']['kernels'][name]:.1f} |"
            )
        for key, what in (("numba_import_ms", "import"), ("numba_start_ms", "runtime start")):
            lines.append(
                f"| (numba {what}, once per process) | {cold['empty cache'][key]:.0f} | "
                f"{cold['warm cache'][key]:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = BENCH / "README.md"
    content = readme.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in content:
        start, end = content.index(BEGIN), content.index(END) + len(END)
        content = content[:start] + block + content[end:]
    else:
        heading = "Latest results (written by `bench/kernels.py --write-readme`):"
        content += f"\n## kernels.py\n\n{heading}\n\n{block}\n"
    readme.write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, small pools (CI smoke)")
    parser.add_argument("--only", help="run only cases whose name contains this text")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core runs")
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)

    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.2f} GB/s (read + write)")
    cases = []
    for family in FAMILY_CASES:
        module = import_module(f"kernel_cases.{family}")
        cases += [c for c in module.cases(args.quick) if not args.only or args.only in c.name]
    results: list[Result] = []
    loads = ["idle"] if args.no_busy else ["idle", "second core busy"]
    for load in loads:
        for case in cases:
            rounds = 10 if args.quick else None
            if load == "idle":
                result = run_case(case, load=load, rounds=rounds, bandwidth=bandwidth)
            else:
                with busy_core():
                    result = run_case(case, load=load, rounds=rounds, bandwidth=bandwidth)
            results.append(result)
            print(format_result(result), flush=True)
    # Two fresh processes compiling every kernel take a minute: not part of the quick smoke run.
    cold = None if args.only or args.quick else cold_start()
    if cold:
        for label, data in cold.items():
            slowest = max(data["kernels"].values(), default=0.0)
            print(
                f"cold start, {label}: numba import {data['numba_import_ms']:.0f} ms, runtime "
                f"start {data['numba_start_ms']:.0f} ms, slowest kernel first call {slowest:.1f} ms"
            )
    if args.write_readme:
        write_readme(_markdown(results, cold))
    failed = [t for r in results if r.load == "idle" for t in r.targets if not t[2]]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
