"""Whole-process start-up time of the ``edge-sdk`` command, as a user at a shell sees it.

Runs the installed console script (``<venv>/bin/edge-sdk``; by default the one next to this
interpreter) in fresh processes and times each from spawn to exit:

- ``edge-sdk --help``: the argument parser only (target: median < 0.15 s);
- ``edge-sdk info``: onnxruntime asked for its providers, versions from package metadata
  (target: median < 0.6 s);
- ``python -c pass`` with the same interpreter: the floor no command can go below, to read the
  other two against on a slow board.

Runs are interleaved (help, info, floor, then the next round in a rotated order), so a noisy
neighbour or a CPU frequency change slows all three alike. One untimed round first fills the
page cache; it is reported as "cold". Then ``python -X importtime`` (through the
PYTHONPROFILEIMPORTTIME variable, so the console script itself runs) shows the ten imports with
the largest cumulative time for each command: where the time goes when a target fails.

    python bench/cli_startup.py              # 20 runs each
    python bench/cli_startup.py --quick      # 3 runs each, a smoke test
    python bench/cli_startup.py --check      # exit 1 when a target is missed
    python bench/cli_startup.py --venv /opt/edge/venv
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RUNS = 20
QUICK_RUNS = 3
TOP_IMPORTS = 10


@dataclass(frozen=True)
class Command:
    label: str
    args: tuple[str, ...]  # after the executable
    target_s: float | None  # the median must stay under this; None: a reference, no target
    script: bool = True  # run through the console script (else the bare interpreter)


COMMANDS = (
    Command("edge-sdk --help", ("--help",), 0.15),
    Command("edge-sdk info", ("info",), 0.6),
    Command("python -c pass", ("-c", "pass"), None, script=False),
)


@dataclass(frozen=True)
class Import:
    name: str
    depth: int
    self_us: int
    cumulative_us: int


def interpreter_of(script: Path) -> Path:
    """The interpreter a console script runs with: its shebang, else the venv's python."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        first = ""
    if first.startswith("#!") and len(first.split()) == 1:
        return Path(first[2:])
    return script.parent / "python"


def argv_of(command: Command, script: Path, python: Path) -> list[str]:
    return [str(script if command.script else python), *command.args]


def time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise SystemExit(f"{' '.join(argv)} failed with exit {completed.returncode}: {message}")
    return elapsed


def measure(
    script: Path, python: Path, runs: int, env: dict[str, str]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One cold (untimed) round, then ``runs`` rounds; the order rotates every round."""
    cold = {c.label: time_once(argv_of(c, script, python), env) for c in COMMANDS}
    samples: dict[str, list[float]] = {c.label: [] for c in COMMANDS}
    for round_index in range(runs):
        shift = round_index % len(COMMANDS)
        for command in COMMANDS[shift:] + COMMANDS[:shift]:
            samples[command.label].append(time_once(argv_of(command, script, python), env))
    return cold, samples


def nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) / 100) - 1))]


def import_profile(argv: list[str], env: dict[str, str]) -> list[Import]:
    completed = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        text=True,
        check=False,
    )
    imports: list[Import] = []
    # Lines look like "import time:       591 |      30608 |   onnxruntime"; two spaces of
    # indent per nesting level. The header line has words where the numbers go.
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        stripped = name.lstrip()
        depth = (len(name) - len(stripped) - 1) // 2
        imports.append(Import(stripped, depth, int(fields[0]), int(fields[1])))
    return imports


def bytecode_note() -> str | None:
    """Say so when edge_sdk is compiled from source at every start (no .pyc next to it)."""
    spec = importlib.util.find_spec("edge_sdk")
    if spec is None or spec.origin is None:
        return None
    cached = Path(importlib.util.cache_from_source(spec.origin))
    if cached.exists():
        return None
    reason = ""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        reason = " (PYTHONDONTWRITEBYTECODE is set)"
    return (
        f"note: no bytecode cache for edge_sdk{reason}: every start compiles its modules from "
        "source; an installed wheel has .pyc files and starts faster"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--venv",
        type=Path,
        default=Path(sys.executable).parent.parent,
        help="the virtualenv whose bin/edge-sdk to run (default: this interpreter's)",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed runs each ({RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs each")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    runs = QUICK_RUNS if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be >= 1")
    script = args.venv / "bin" / "edge-sdk"
    if not script.exists():
        parser.error(f"no console script at {script}: install edge-sdk into {args.venv}")
    python = interpreter_of(script)
    env = dict(os.environ)

    print(f"edge-sdk start-up: {script}")
    print(
        f"python {platform.python_version()} ({python}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {runs} runs each, interleaved, after one cold round"
    )
    note = bytecode_note()
    if note:
        print(note)
    cold, samples = measure(script, python, runs, env)

    print()
    print(f"{'command':<18}{'cold':>9}{'min':>9}{'median':>9}{'p90':>9}   target")
    failed = []
    for command in COMMANDS:
        ordered = sorted(samples[command.label])
        median = statistics.median(ordered)
        if command.target_s is None:
            verdict = "(reference)"
        else:
            ok = median < command.target_s
            verdict = f"median < {command.target_s:.2f} s  {'PASS' if ok else 'FAIL'}"
            if not ok:
                failed.append(command.label)
        print(
            f"{command.label:<18}{cold[command.label]:>8.3f}s{ordered[0]:>8.3f}s"
            f"{median:>8.3f}s{nearest_rank(ordered, 90):>8.3f}s   {verdict}"
        )

    for command in COMMANDS:
        if not command.script:
            continue
        imports = import_profile(argv_of(command, script, python), env)
        total_ms = sum(i.self_us for i in imports) / 1e3
        print()
        print(
            f"{command.label}: python -X importtime, top {TOP_IMPORTS} by cumulative time "
            f"({len(imports)} modules, {total_ms:.1f} ms importing in all)"
        )
        print(f"{'cumulative':>12}{'self':>10}   module (indented by nesting)")
        top = sorted(imports, key=lambda i: i.cumulative_us, reverse=True)[:TOP_IMPORTS]
        for item in top:
            print(
                f"{item.cumulative_us / 1e3:>9.1f} ms{item.self_us / 1e3:>7.1f} ms   "
                f"{'  ' * item.depth}{item.name}"
            )

    print()
    if failed:
        print(f"FAIL: {', '.join(failed)} over target")
        return 1 if args.check else 0
    print("PASS: every command within its target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
