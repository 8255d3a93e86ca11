"""Examples run in their quick mode so they never rot (the training example, which needs
PyTorch, runs in scripts/examples)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_classify_digits_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "classify_digits.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "10/10 bundled samples classified" in result.stdout
    assert "fast path" in result.stdout


def test_camera_pipeline_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "camera_pipeline.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" score ") == 3


def test_device_profiles_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "device_profiles.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "this machine: generic-x86-64" in result.stdout
    assert (
        "jetson-orin-nano     runs on CPU; skipped here: Tensorrt, CUDA -> label 0" in result.stdout
    )
    verdicts = result.stdout.split("pre-deployment check of the bundled model:")[1].split()
    assert "fail" not in verdicts and verdicts.count("pass") >= 4


def test_ota_demo_quick() -> None:
    from _broker import require_mosquitto

    require_mosquitto()  # skipped without mosquitto, a failure under EDGE_SDK_REQUIRE_PEERS=1
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "ota_demo.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the application took v2 between requests" in result.stdout
    assert " 0 failed" in result.stdout


def test_serial_field_quick() -> None:
    from _serial import require_serial_tools

    require_serial_tools()  # socat and lrzsz: skipped without, a failure under REQUIRE_PEERS
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "serial_field.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the device says succeeded" in result.stdout
    assert "digits: active 1" in result.stdout
    assert "removed from the device" in result.stdout
    assert "sha256 matches the laptop's" in result.stdout
