"""``edge-sdk fleet``: the operator's side of over-the-air updates.

``keygen`` makes the fleet's Ed25519 signing key, ``release`` builds and signs a release
manifest for a model, ``verify`` checks a manifest as a device would. Deploying over MQTT
(``serve``, ``deploy``, ``jobs``, ``rollback``) comes with the device agent. Wire format:
docs/release-manifest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from edge_sdk.cli._common import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    keygen = actions.add_parser("keygen", help="create the fleet's Ed25519 signing key")
    keygen.add_argument("--out", required=True, metavar="FILE", help="private key file (0600)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")

    release = actions.add_parser("release", help="build and sign a release manifest")
    release.add_argument("model", help="the model file")
    release.add_argument("--name", required=True, help="model name on the devices")
    release.add_argument("--version", required=True, type=positive_int, help="integer version")
    release.add_argument("--key", required=True, metavar="FILE", help="private key (keygen)")
    release.add_argument("--out", default=".", metavar="DIR", help="where the manifest goes")
    release.add_argument("--device", action="append", default=[], help="target device id")
    release.add_argument("--group", action="append", default=[], help="target group")
    release.add_argument("--profile", action="append", default=[], help="target device profile")
    release.add_argument(
        "--valid-days", type=positive_int, default=30, metavar="N", help="expiry (30 days)"
    )
    release.add_argument(
        "--chunk-size", type=positive_int, default=65536, metavar="BYTES", help="65536"
    )
    release.add_argument(
        "--downgrade", action="store_true", help="allow devices to go back to this version"
    )
    release.add_argument("--json", action="store_true", help="print one JSON document")

    verify = actions.add_parser("verify", help="check a manifest as a device would")
    verify.add_argument("manifest", help="a signed manifest (.manifest.json)")
    verify.add_argument(
        "--trust", action="append", required=True, metavar="FILE", help="a trusted public key"
    )
    verify.add_argument("--device", default="operator-check", help="device id to check for")
    verify.add_argument("--group", action="append", default=[], help="the device's groups")
    verify.add_argument("--profile", default=None, help="the device's profile")
    verify.add_argument("--active-version", type=positive_int, default=None, metavar="N")


def _write_atomically(path: Path, text: str) -> None:
    # A manifest half-written by a full disk or a crash must never be published.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(path: str, what: str) -> bytes:
    from edge_sdk.errors import KeyFormatError, ManifestFormatError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
        if what == "manifest":
            raise ManifestFormatError(None, reason) from None
        raise KeyFormatError(path, reason) from None


def run(args: argparse.Namespace) -> int:
    from edge_sdk import release
    from edge_sdk.errors import KeyFormatError

    if args.action == "keygen":
        private, public = release.generate_keypair()
        out = Path(args.out)
        try:
            release.save_private_key(private, out, overwrite=args.force)
        except FileExistsError:
            raise KeyFormatError(
                str(out), "exists already; losing a fleet key re-keys every device (--force)"
            ) from None
        public_file = out.with_name(out.name + ".pub")
        _write_atomically(public_file, release.public_key_to_base64(public) + "\n")
        print(f"key id       {release.key_id(public)}")
        print(f"private key  {out} (keep it off the devices)")
        print(f"public key   {public_file} (give it to the devices' trusted keys)")
        return 0

    if args.action == "release":
        from datetime import timedelta

        targets = release.Targets(
            devices=tuple(args.device), groups=tuple(args.group), profiles=tuple(args.profile)
        )
        manifest = release.build_manifest(
            args.model,
            args.name,
            args.version,
            chunk_size=args.chunk_size,
            targets=targets,
            valid_for=timedelta(days=args.valid_days),
            downgrade=args.downgrade,
        )
        signed = release.sign(manifest, release.load_private_key(args.key))
        out = Path(args.out) / f"{args.name}-{args.version}.manifest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(out, signed.to_json() + "\n")
        summary = {
            "manifest": str(out),
            "name": manifest.name,
            "version": manifest.version,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "chunks": manifest.chunk_count,
            "key_id": signed.key_id,
            "expires_at": release.format_timestamp(manifest.expires_at),
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for key, value in summary.items():
                print(f"{key:<11} {value}")
        return 0

    trust = release.TrustStore(
        release.TrustedKey(release.load_public_key(_read(path, "public key"), source=path))
        for path in args.trust
    )
    text = _read(args.manifest, "manifest")
    verified = release.verify(
        text,
        trust,
        device_id=args.device,
        groups=args.group,
        profile=args.profile,
        active_version=args.active_version,
    )
    print(
        f"ok: {verified.name} version {verified.version}, {verified.size} bytes, signed by "
        f"{verified.key_id}"
    )
    return 0
