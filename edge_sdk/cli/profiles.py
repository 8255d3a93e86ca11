"""``edge-sdk profiles list | show NAME``: the device profiles this SDK knows."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="every profile, shipped and from EDGE_SDK_PROFILES_DIR"
    )
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    show = actions.add_parser("show", help="one profile in full")
    show.add_argument("name", help="a profile name or the path of a .toml file")
    show.add_argument("--json", action="store_true", help="print one JSON document")


def describe(profile: Any) -> dict[str, Any]:
    """A profile as plain data (the JSON of ``profiles show``)."""
    accelerator = profile.accelerator
    return {
        "name": profile.name,
        "title": profile.title,
        "family": profile.family,
        "arch": profile.arch,
        "path": profile.path,
        "onnxruntime": profile.onnxruntime,
        "providers": [{"name": p.name, "options": dict(p.options)} for p in profile.providers],
        "session": dict(profile.session),
        "budgets": {
            "memory_mb": profile.budgets.memory_mb,
            "storage_mb": profile.budgets.storage_mb,
        },
        "precision": profile.precision,
        "kernels": {
            "cache_dir": profile.kernels.cache_dir,
            "threads": profile.kernels.threads,
            "helper_thread": profile.kernels.helper_thread,
        },
        "environment": dict(profile.environment),
        "thermal_zones": list(profile.thermal_zones),
        "accelerator": None
        if accelerator is None
        else {
            "name": accelerator.name,
            "provider": accelerator.provider,
            "ops": sorted(accelerator.ops),
            "dtypes": list(accelerator.dtypes),
            "quantized_only": accelerator.quantized_only,
            "required": accelerator.required,
            "notes": accelerator.notes,
        },
    }


def run(args: argparse.Namespace) -> int:
    from edge_sdk.profiles import list_profiles, load_profile

    if args.action == "list":
        profiles = list_profiles()
        if args.json:
            print(json.dumps([describe(p) for p in profiles], indent=2))
            return 0
        width = max(len(p.name) for p in profiles)
        for profile in profiles:
            chain = " > ".join(n.removesuffix("ExecutionProvider") for n in profile.provider_names)
            print(f"{profile.name:<{width}}  {profile.arch:<8} {chain:<24} {profile.title}")
        return 0
    profile = load_profile(args.name)
    document = describe(profile)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    for key, value in document.items():
        if isinstance(value, (dict, list)) and value:
            print(f"{key}:")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for sub, item in items:
                print(f"  {sub}: {item}")
        else:
            print(f"{key}: {value}")
    return 0
