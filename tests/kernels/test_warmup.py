"""edge-sdk warmup compiles every kernel into the cache; a new process then compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_sdk.kernels.warmup import FAMILIES

CHECK_CACHE = """
import json, sys
from edge_sdk.kernels import configure
from edge_sdk.kernels._jit import registered_kernels
from edge_sdk.kernels.warmup import warmup_all
configure(cache_dir=sys.argv[1])
warmup_all()
stats = {}
for k in registered_kernels():
    d = k._compiled
    if d is not None and hasattr(d, "stats"):
        stats[k.__name__] = [sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())]
print(json.dumps(stats))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}


@pytest.mark.slow
@pytest.mark.jit_only
def test_warmup_fills_the_cache_and_a_new_process_compiles_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = subprocess.run(
        [sys.executable, "-m", "edge_sdk", "warmup", "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=_env(),
    )
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["jit"] is True and report["cache_dir"] == str(cache)
    assert {k["family"] for k in report["kernels"]} == set(FAMILIES)
    second = subprocess.run(
        [sys.executable, "-c", CHECK_CACHE, str(cache)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=_env(),
    )
    assert second.returncode == 0, second.stderr
    stats = json.loads(second.stdout)
    assert stats, "no kernel was dispatched"
    compiled_again = {name: hm for name, hm in stats.items() if hm[1] > 0}
    assert compiled_again == {}, f"kernels compiled again instead of loading: {compiled_again}"
    # Kernels only ever called from other kernels are compiled into their callers: their own
    # dispatchers see no call. Every kernel called from Python came from the cache.
    assert sum(hits for hits, _ in stats.values()) >= len(FAMILIES)


def test_warmup_without_jit_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_sdk", "warmup", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**_env(), "NUMBA_DISABLE_JIT": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "plain Python" in done.stderr
    assert "cache     none" in done.stdout
