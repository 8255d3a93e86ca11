"""Options shared by the commands that load a model."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--providers",
        metavar="LIST",
        help="comma-separated execution providers in order of preference "
        "(default: every provider this onnxruntime has, then the CPU)",
    )
    parser.add_argument(
        "--require-providers",
        metavar="LIST",
        help="fail unless these providers run (instead of falling back)",
    )
    parser.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="intra-op threads (0: the profile's, else onnxruntime's default)",
    )
    parser.add_argument(
        "--profile",
        default="auto",
        metavar="NAME",
        help="device profile giving providers and session options: a name, a .toml path, "
        "'auto' (detect this device, the default) or 'none'",
    )


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


def load_model(args: argparse.Namespace, source: Any, **extra: Any) -> Any:
    from edge_sdk.profiles import resolve_profile
    from edge_sdk.runtime import EdgeModel, SessionSettings

    profile = None if args.profile == "none" else args.profile
    overrides = dict(extra)
    if args.threads:
        overrides["intra_op_threads"] = args.threads
    settings = None
    if overrides:
        # Command-line options change the profile's session settings, not replace them.
        detection = resolve_profile(profile)
        base = dict(detection.profile.session) if detection is not None else {}
        settings = SessionSettings(**{**base, **overrides})
    return EdgeModel.load(
        source,
        providers=split_list(args.providers),
        require_providers=split_list(args.require_providers),
        settings=settings,
        profile=profile,
    )


def fallback_lines(model: Any) -> list[str]:
    """What did not go as planned: the profile's warnings (with the profile, for context) and
    the skipped providers. Nothing when everything ran as planned."""
    lines = []
    detection = model.profile_detection
    if detection is not None and detection.warnings:
        why = "; ".join(detection.evidence)
        lines.append(f"profile: {detection.profile.name} ({why})")
        lines += [f"warning: {w}" for w in detection.warnings]
    return lines + [f"fallback: {f.provider} ({f.kind}): {f.reason}" for f in model.fallbacks]
