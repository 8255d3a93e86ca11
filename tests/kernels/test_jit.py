"""The JIT helper: nothing compiles at import, caching survives a read-only disk, kernels can
call kernels, and the same functions run as plain Python without numba."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_sdk.kernels import JitSettings
from edge_sdk.kernels._jit import Kernel

REPO = Path(__file__).resolve().parents[2]


def _python(
    code: str, script_dir: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    environment.update(env)
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    if script_dir is not None:  # numba caches only functions defined in a file
        script = script_dir / "kernels_under_test.py"
        source = textwrap.dedent(code)
        # Numba's cache is keyed to the source file's mtime: rewrite it only when it changes.
        if not script.exists() or script.read_text() != source:
            script.write_text(source)
        argv = [sys.executable, str(script)]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env=environment,
    )


def test_importing_the_sdk_and_kernels_loads_no_numba() -> None:
    result = _python(
        """
        import sys
        import edge_sdk, edge_sdk.kernels, edge_sdk.kernels._jit
        from edge_sdk import EdgeModel  # noqa: F401
        print("numba" in sys.modules, "llvmlite" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


KERNEL_MODULE = """
    import numpy as np
    from edge_sdk.kernels import configure
    from edge_sdk.kernels._jit import kernel, prange, jit_available

    @kernel
    def _double(x):
        return 2.0 * x

    @kernel(parallel=True)
    def _apply(a, out):
        for i in prange(a.shape[0]):
            out[i] = _double(a[i]) + 1.0
"""


def test_kernel_calling_a_kernel_compiles_caches_and_reloads(tmp_path: Path) -> None:
    code = (
        KERNEL_MODULE
        + f"""
    configure(cache_dir={str(tmp_path / "cache")!r}, threads=2)
    a = np.arange(5.0); out = np.empty_like(a)
    _apply(a, out)
    print(jit_available(), _apply.compiled, out.tolist())
    print(sum(_apply._compiled.stats.cache_hits.values()))
    """
    )
    first = _python(code, script_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == "True True [1.0, 3.0, 5.0, 7.0, 9.0]"
    assert lines[1] == "0"
    assert any((tmp_path / "cache").rglob("*.nbi")), "nothing was cached"
    # Same source file, new process: loaded from the cache, not compiled again.
    second = _python(code, script_dir=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1] == "1"


@pytest.mark.jit_only
def test_without_an_openmp_runtime_prange_kernels_use_the_workqueue(tmp_path: Path) -> None:
    # A minimal Debian has no libgomp1: numba's OpenMP pool cannot load there. Simulated by
    # making its module unimportable; a fresh Debian chroot showed the real failure.
    code = (
        """
    import sys
    sys.modules["numba.np.ufunc.omppool"] = None  # import raises ImportError
    """
        + KERNEL_MODULE
        + f"""
    configure(cache_dir={str(tmp_path / "cache")!r}, threads=2)
    a = np.arange(5.0); out = np.empty_like(a)
    _apply(a, out)
    import numba
    print(out.tolist(), numba.threading_layer())
    """
    )
    result = _python(code, script_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[0] + "]" == "[1.0, 3.0, 5.0, 7.0, 9.0]"
    assert result.stdout.strip().endswith("workqueue")


def test_read_only_cache_dir_compiles_without_caching(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file
        locked = tmp_path / "a-file" / "cache"
        (tmp_path / "a-file").write_text("not a directory")
    result = _python(
        KERNEL_MODULE
        + f"""
    configure(cache_dir={str(locked)!r})
    a = np.arange(3.0); out = np.empty_like(a)
    _apply(a, out)
    print(_apply.compiled, out.tolist())
    """,
        script_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "True [1.0, 3.0, 5.0]"
    assert "not writable" in result.stderr


def test_without_jit_the_same_functions_run_as_python() -> None:
    result = _python(
        KERNEL_MODULE
        + """
    a = np.arange(3.0); out = np.empty_like(a)
    _apply(a, out)
    import sys
    print(jit_available(), _apply.compiled, "numba" in sys.modules, out.tolist())
    """,
        NUMBA_DISABLE_JIT="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "False False False [1.0, 3.0, 5.0]"


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="threads"):
        JitSettings(threads=0)
    with pytest.raises(ValueError, match="threading_layer"):
        JitSettings(threading_layer="openmp")  # type: ignore[arg-type]
    assert JitSettings(cache_dir=Path("/x")).resolved_cache_dir == Path("/x")


def test_kernel_keeps_its_python_function() -> None:
    def _plain(x: float) -> float:
        return x + 1

    wrapped = Kernel(_plain, parallel=False)
    assert wrapped.py_func is _plain and wrapped.__name__ == "_plain"


def test_serial_and_parallel_builds_are_cached_apart(tmp_path: Path) -> None:
    # Numba's cache index ignores `parallel`: without separate directories a threads=2 run
    # would silently load the serial build cached by a threads=1 run.
    code = (
        KERNEL_MODULE
        + """
    import sys
    configure(cache_dir=sys.argv[1], threads=int(sys.argv[2]))
    a = np.arange(4.0); out = np.empty_like(a)
    _apply(a, out)
    hits = sum(_apply._compiled.stats.cache_hits.values())
    print(hits, _apply._compiled.targetoptions.get("parallel"))
    """
    )
    script = tmp_path / "variants.py"
    script.write_text(textwrap.dedent(code))
    cache = tmp_path / "cache"

    def run(threads: int) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(script), str(cache), str(threads)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run(1) == ["0", "False"]
    assert run(2) == ["0", "True"]  # not the serial build from the cache
    assert run(2) == ["1", "True"]
    assert sorted(p.name for p in cache.iterdir()) == ["parallel", "serial"]
