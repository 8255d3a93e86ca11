"""Torture the update path: SIGKILL a real device agent at random moments of real updates.

What it answers (the issue): after many random SIGKILLs during updates, is the active model
ever corrupt or partial, and does every update still succeed in the end?

Setup, all on loopback: a real Mosquitto 2 broker and the test fleet harness (tests/_broker.py,
tests/_ota.py), the real ``ReleaseServer`` in this process, and the real ``edge-sdk agent`` in
a child process (tests/_agent_child.py, its own session, killed by process group). Each update
``k`` is a real ONNX model that loads (tests/_models.py ``constant_head``: output 1x4096 filled
with ``k``, about 16 KiB, 2 KiB chunks so the download spans several requests of a window of 8).

One kill per update:

1. the operator publishes release ``k`` and the device's signed desired state;
2. after a random delay (seeded RNG, uniform over 1.2x the duration of an unkilled update,
   measured first), the agent gets SIGKILL, whatever it is doing: waiting for the manifest,
   downloading, verifying, activating (loading and warming up the model), switching;
3. while it is dead the store is inspected twice: first by reading the active pointer file
   raw and hashing the model file it names (no SDK code, before any repair), then with
   ``ModelStore(path).verify_active()``. Both must find a complete model whose sha256 is that
   of the release of its version (or no active model before the first update ever finished);
4. the agent is started again and must bring update ``k`` to ``succeeded`` on its own
   (desired state is retained; the download resumes from its bitmap), with release ``k``
   active afterwards.

The job state the operator last saw before each kill is counted (it lags the agent by a
message), to show where the kills landed. The
summary line gives kills, updates succeeded / attempted and corrupt or partial active models;
any violation exits 1 (this is a correctness check, not a timing: it gates CI in --quick too).

    python bench/ota_torture.py               # 50 kills
    python bench/ota_torture.py --quick       # 8 kills (CI)
    python bench/ota_torture.py --kills 200 --seed 7
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

NAME = "scorer"
DEVICE = "device-1"
CHUNK = 2048
UPDATE_TIMEOUT = 90.0


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inspect_raw(store_root: Path, releases: dict[int, str]) -> str | None:
    """What is wrong with the active model on disk, read without the SDK; None when fine."""
    pointer_path = store_root / "active" / NAME
    if not pointer_path.exists():
        return None  # no update ever activated
    try:
        pointer = json.loads(pointer_path.read_text())
    except ValueError as exc:
        return f"active pointer unreadable: {exc}"
    version = pointer.get("version")
    if version is None:
        return "the pointer says no model is active"
    model = store_root / "models" / NAME / str(version) / "model.onnx"
    if not model.exists():
        return f"active v{version}: {model} missing"
    got = sha256_file(model)
    if version not in releases:
        return f"active v{version} is no release"
    if got != releases[version] or pointer.get("sha256") != releases[version]:
        return (
            f"active v{version}: sha256 {got[:12]} (pointer {str(pointer.get('sha256'))[:12]}), "
            f"release {releases[version][:12]}"
        )
    if model.stat().st_size != pointer.get("size"):
        return f"active v{version}: size {model.stat().st_size}, pointer {pointer.get('size')}"
    return None


def inspect_store(store_root: Path, releases: dict[int, str]) -> str | None:
    from edge_sdk.store import ModelStore

    store = ModelStore(store_root)
    for check in store.verify_active():
        if not check.ok:
            return f"verify_active: {check.reason} (corrupt {check.corrupt_versions})"
    if NAME in store.names():
        try:
            active = store.active(NAME)
        except Exception as exc:
            return f"store.active: {type(exc).__name__}: {exc}"
        if releases.get(active.version) != active.sha256:
            return f"store says v{active.version} sha256 {active.sha256[:12]}, not its release"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs, one per update (50)")
    parser.add_argument("--quick", action="store_true", help="8 kills (CI)")
    parser.add_argument("--seed", type=int, default=20261127, help="RNG seed of the kill moments")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args(argv)
    kills = 8 if args.quick else args.kills
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return torture(args.keep, kills, args.seed)
    with tempfile.TemporaryDirectory(prefix="edge-sdk-torture-") as tmp:
        return torture(Path(tmp), kills, args.seed)


def torture(workdir: Path, kills: int, seed: int) -> int:
    import _broker
    import _models
    import _ota

    from edge_sdk.desired import DesiredModel

    rng = random.Random(seed)
    started = time.perf_counter()
    releases: dict[int, str] = {}
    violations: list[str] = []
    landed: collections.Counter[str] = collections.Counter()
    succeeded = attempted = done_kills = inspections = 0
    with (
        _broker.MosquittoBroker(workdir / "broker", devices=[DEVICE]) as broker,
        _ota.OtaFleet(broker, workdir / "fleet", chunk_size=CHUNK) as fleet,
    ):
        server = fleet.start_server(releases=[])
        operator = fleet.operator()
        store_root = workdir / "fleet" / "devices" / DEVICE / "store"
        overrides: dict[str, Any] = {"window": 8, "request_timeout": 2, "keep_previous": 1}

        def status() -> str | None:
            with operator._cond:
                return (operator.statuses.get(DEVICE) or {}).get("state")

        def start_agent() -> Any:
            agent = fleet.start_agent_process(DEVICE, **overrides)
            _ota.wait_for(lambda: status() == "online", 60, "the agent to come online")
            return agent

        def deploy(version: int) -> None:
            data = _models.constant_head(np.full((1, 4096), float(version), np.float32), size=8)
            files = fleet.release(data, version, name=NAME)
            releases[version] = files.manifest.sha256
            server.add(_ota.load_release(files.path))
            operator.publish_release(files.path)
            model = DesiredModel(version, files.manifest.sha256, False)
            operator.set_desired("device", DEVICE, NAME, model, fleet.key)

        def wait_succeeded(version: int) -> str | None:
            try:
                job = fleet.wait_job(
                    operator,
                    DEVICE,
                    version,
                    {"succeeded", "failed", "rolled_back", "timed_out"},
                    name=NAME,
                    timeout=UPDATE_TIMEOUT,
                )
            except AssertionError as exc:
                return str(exc)
            if job["state"] != "succeeded":
                return f"v{version} ended {job['state']}: {job.get('reason')}"
            return None

        # Two unkilled updates first: the second (warm: onnxruntime imported) sets the range of
        # kill moments.
        agent = start_agent()
        for version in (1, 2):
            begin = time.perf_counter()
            deploy(version)
            problem = wait_succeeded(version)
            if problem:
                raise RuntimeError(f"an unkilled update failed: {problem}")
        took = time.perf_counter() - begin
        span = 1.2 * took
        print(f"unkilled update: {took * 1000:.0f} ms; kills uniform over 0..{span * 1000:.0f} ms")

        for version in range(3, kills + 3):
            attempted += 1
            deploy(version)
            time.sleep(rng.uniform(0.0, span))
            job = fleet.job(operator, DEVICE, NAME)
            phase = job.get("state") if job.get("version") == version else "before any job"
            agent.kill()
            done_kills += 1
            landed[str(phase)] += 1
            _ota.wait_for(lambda: status() == "offline", 30, "the Will (offline status)")
            for check in (inspect_raw, inspect_store):
                inspections += 1
                found = check(store_root, releases)
                if found:
                    violations.append(f"kill {done_kills} (v{version}, {phase}): {found}")
            agent = start_agent()
            problem = wait_succeeded(version)
            if problem is None:
                found = inspect_raw(store_root, releases)
                pointer = json.loads((store_root / "active" / NAME).read_text())
                if found or pointer.get("version") != version:
                    problem = f"after success: {found or 'active v' + str(pointer.get('version'))}"
            if problem is None:
                succeeded += 1
            else:
                violations.append(f"update v{version}: {problem}")
            print(
                f"kill {done_kills:3d}: v{version} killed while {phase}; "
                f"{'succeeded' if problem is None else 'FAILED'}",
                flush=True,
            )
        agent.terminate()

    corrupt = sum("update v" not in v for v in violations)
    where = ", ".join(f"{k} {n}" for k, n in landed.most_common())
    print(f"kills landed while: {where}")
    for violation in violations:
        print(f"VIOLATION: {violation}")
    ok = not violations and succeeded == attempted
    print(
        f"torture: {done_kills} SIGKILLs, {succeeded}/{attempted} updates succeeded, "
        f"{corrupt} corrupt or partial active models in {inspections} inspections, seed {seed}, "
        f"{time.perf_counter() - started:.0f} s: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
