"""The device profiles ship inside the wheel and load from an installed copy.

pyproject.toml force-includes devices/ as edge_sdk/devices; edge_sdk.profiles looks there
first. This builds the wheel with hatchling (the build backend), installs it with --no-deps
into a fresh virtual environment and lists the profiles from that environment's Python, away
from the source tree, so a profile missing from the wheel, or read from the checkout by
accident, fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Only edge_sdk.profiles is imported: it needs edge_sdk.errors and the standard library
# (tomllib from Python 3.11; tomli, a dependency, on 3.10), and edge_sdk/__init__.py imports
# lazily, so the dependencies skipped by --no-deps are not needed.
LIST_PROFILES = """
import json, sys
from edge_sdk.profiles import list_profiles, profile_dirs
profiles = list_profiles()
json.dump({
    "names": [p.name for p in profiles],
    "paths": [p.path for p in profiles],
    "shipped_dir": str(profile_dirs()[0]),
    "prefix": sys.prefix,
}, sys.stdout)
"""


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_ships_every_profile_and_an_installed_copy_loads_them(tmp_path: Path) -> None:
    # A clean environment: no user profiles, no forced profile, nothing from the checkout.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EDGE_SDK_") and key not in ("PYTHONPATH", "PYTHONHOME")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels)]
    if importlib.util.find_spec("hatchling") is None:
        # pip fetches hatchling from PyPI into an isolated build environment.
        build.append(str(REPO))
    else:
        build += ["--no-build-isolation", str(REPO)]
    run(build, cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("edge_sdk-*.whl")

    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = environment / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    # Run from tmp_path so that the checkout is not on sys.path: the import must find the
    # installed package.
    report = json.loads(run([str(python), "-c", LIST_PROFILES], cwd=tmp_path, env=env))

    expected = sorted(path.stem for path in (REPO / "devices").glob("*.toml"))
    assert report["names"] == expected
    shipped = Path(report["shipped_dir"])
    assert shipped.name == "devices"
    assert shipped.parent.name == "edge_sdk"
    assert shipped.is_relative_to(environment)
    for path in report["paths"]:
        assert Path(path).parent == shipped
        assert (REPO / "devices" / Path(path).name).read_bytes() == Path(path).read_bytes()
