"""``edge-sdk info``: versions, execution providers, CPU and memory of this machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _version(package: str) -> str | None:
    # Read from the installed metadata: importing numba alone costs about 0.3 s.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model(root: Path) -> str:
    fields: dict[str, str] = {}
    try:
        text = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    try:
        # On ARM boards the device tree names the board where cpuinfo has no model name.
        return (root / "proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return platform.processor() or platform.machine()


def _memory_mib(root: Path) -> dict[str, int]:
    result: dict[str, int] = {}
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                result[key] = int(value.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return result


def _profile(root: Path, built_in: list[str]) -> dict[str, Any]:
    """The detected (or EDGE_SDK_PROFILE) profile, why, and which of its providers exist."""
    from edge_sdk.errors import ProfileError
    from edge_sdk.profiles import detect

    try:
        detection = detect(root)
    except ProfileError as exc:
        return {"name": None, "error": str(exc)}
    profile = detection.profile
    return {
        "name": profile.name,
        "title": profile.title,
        "forced": detection.forced,
        "evidence": list(detection.evidence),
        "warnings": list(detection.warnings),
        "providers": [
            {"name": p.name, "built_in": p.name in built_in, "optional": p.optional}
            for p in profile.providers
        ],
        "precision": profile.precision,
    }


def collect(root: Path = Path("/")) -> dict[str, Any]:
    """Everything ``edge-sdk info`` shows, as a dict (the CLI's JSON document)."""
    from edge_sdk import __version__
    from edge_sdk.runtime import available_providers, onnxruntime_version

    memory = _memory_mib(root)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "sdk": __version__,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "pillow": _version("pillow"),
        "providers_built_in": available_providers(),
        "profile": _profile(root, available_providers()),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_model": _cpu_model(root),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_total_mib": memory.get("MemTotal"),
        "memory_available_mib": memory.get("MemAvailable"),
        "executable": sys.executable,
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("edge-sdk", info["sdk"]),
        ("python", f"{info['python']} ({info['executable']})"),
        ("onnxruntime", info["onnxruntime"]),
        ("numpy", info["numpy"] or "not installed"),
        ("numba", info["numba"] or "not installed (kernels run as plain Python)"),
        ("pillow", info["pillow"] or "not installed"),
        ("providers", ", ".join(info["providers_built_in"])),
        ("machine", f"{info['machine']}, {info['system']}"),
        (
            "cpu",
            f"{info['cpu_model']} ({info['cpu_cores']} cores, {info['cpu_cores_usable']} usable)",
        ),
        (
            "memory",
            f"{info['memory_total_mib']} MiB total, {info['memory_available_mib']} MiB available",
        ),
    ]
    profile = info["profile"]
    if profile.get("name") is None:
        rows.append(("profile", f"none ({profile.get('error')})"))
    else:
        how = "EDGE_SDK_PROFILE" if profile["forced"] else "detected"
        rows.append(("profile", f"{profile['name']}: {profile['title']} ({how})"))
        rows += [("  because", e) for e in profile["evidence"]]
        rows += [("  warning", w) for w in profile["warnings"]]
        chain = [
            p["name"]
            + (
                ""
                if p["built_in"]
                else " (optional, not in this onnxruntime)"
                if p["optional"]
                else " (not in this onnxruntime: skipped)"
            )
            for p in profile["providers"]
        ]
        rows.append(("  providers", " > ".join(chain)))
    for key, value in rows:
        print(f"{key:<12} {value}")
    return 0
