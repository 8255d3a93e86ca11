"""Device profiles: what this machine is, and how the bundled model would run on each board.

Detects this machine's profile (and says why), then loads the bundled digits model under every
shipped profile in turn, as the runtime would on that board: the profile's providers, with the
ones this onnxruntime lacks reported as fallbacks, and the profile's session settings. Finally
checks the model against each profile before deployment (edge_sdk.compat).

    python examples/device_profiles.py [--quick]
"""

from __future__ import annotations

import argparse

from edge_sdk import bundled
from edge_sdk.profiles import detect, list_profiles
from edge_sdk.runtime import EdgeModel


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same, for CI (already fast)")
    parser.parse_args()

    detection = detect()
    print(f"this machine: {detection.profile.name} ({detection.profile.title})")
    for fact in detection.evidence:
        print(f"  because {fact}")
    for warning in detection.warnings:
        print(f"  warning: {warning}")

    sample = bundled.sample_paths()[0]
    print(f"\nthe bundled model under each profile ({sample.name}):")
    for profile in list_profiles():
        with EdgeModel.load(bundled.model_path(), profile=profile) as model:
            label = model.predict(sample).result.label
            skipped = ", ".join(_short(f.provider) for f in model.fallbacks)
            running = ", ".join(_short(p) for p in model.providers)
            note = f"; skipped here: {skipped}" if skipped else ""
            print(f"  {profile.name:<20} runs on {running}{note} -> label {label}")

    from edge_sdk.compat import check_model

    print("\npre-deployment check of the bundled model:")
    for profile in list_profiles():
        report = check_model(bundled.model_path(), profile)
        print(f"  {profile.name:<20} {report.verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
