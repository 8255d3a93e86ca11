"""edge-sdk fleet keygen / release / verify: real keys, real files, the bundled model."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from _cli import CLI

from edge_sdk import bundled
from edge_sdk.release import SignedManifest


def _keys(cli: CLI, folder: Path, name: str = "fleet.key") -> Path:
    result = cli("fleet", "keygen", "--out", folder / name)
    assert result.code == 0, result.err
    return folder / name


def test_keygen_writes_a_private_key_0600_and_its_public_half(cli: CLI, tmp_path: Path) -> None:
    key = _keys(cli, tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "fleet.key.pub").read_text().strip()
    again = cli("fleet", "keygen", "--out", key)
    assert again.code == 1 and "exists already" in again.err  # never lose a fleet key
    assert cli("fleet", "keygen", "--out", key, "--force").code == 0


def test_release_signs_a_manifest_that_verify_accepts(cli: CLI, tmp_path: Path) -> None:
    key = _keys(cli, tmp_path)
    result = cli(
        "fleet", "release", bundled.model_path(), "--name", "digits", "--version", "3",
        "--key", key, "--out", tmp_path / "releases", "--group", "lab", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    summary = result.json()
    manifest_path = Path(summary["manifest"])
    assert manifest_path.name == "digits-3.manifest.json"
    assert summary["size"] == bundled.model_path().stat().st_size
    assert summary["chunks"] == -(-summary["size"] // 65536)
    signed = SignedManifest.from_json(manifest_path.read_bytes())
    assert signed.manifest.targets.groups == ("lab",)
    ok = cli(
        "fleet", "verify", manifest_path, "--trust", tmp_path / "fleet.key.pub",
        "--device", "pi-7", "--group", "lab",
    )  # fmt: skip
    assert ok.code == 0 and "ok: digits version 3" in ok.out
    # Not addressed to a device outside the group; not newer than what it runs.
    other = cli("fleet", "verify", manifest_path, "--trust", tmp_path / "fleet.key.pub")
    assert other.code == 1 and other.err.count("\n") == 1
    older = cli(
        "fleet", "verify", manifest_path, "--trust", tmp_path / "fleet.key.pub",
        "--group", "lab", "--active-version", "3",
    )  # fmt: skip
    assert older.code == 1


def test_verify_refuses_another_fleets_key_and_a_tampered_manifest(
    cli: CLI, tmp_path: Path
) -> None:
    key = _keys(cli, tmp_path)
    stranger = _keys(cli, tmp_path, "stranger.key")
    assert stranger.exists()
    cli(
        "fleet", "release", bundled.model_path(), "--name", "digits", "--version", "4",
        "--key", key, "--out", tmp_path,
    )  # fmt: skip
    manifest = tmp_path / "digits-4.manifest.json"
    unknown = cli("fleet", "verify", manifest, "--trust", tmp_path / "stranger.key.pub")
    assert unknown.code == 1 and "key" in unknown.err
    document = json.loads(manifest.read_text())
    document["size"] += 1
    manifest.write_text(json.dumps(document))
    tampered = cli("fleet", "verify", manifest, "--trust", tmp_path / "fleet.key.pub")
    assert tampered.code == 1 and "signature" in tampered.err


def test_bad_input_is_one_line_not_a_traceback(cli: CLI, tmp_path: Path) -> None:
    missing_key = cli(
        "fleet", "release", bundled.model_path(), "--name", "digits", "--version", "1",
        "--key", tmp_path / "nope.key",
    )  # fmt: skip
    assert missing_key.code == 1 and "nope.key" in missing_key.err
    assert missing_key.err.count("\n") == 1
    key = _keys(cli, tmp_path)
    traversal = cli(
        "fleet", "release", bundled.model_path(), "--name", "../etc", "--version", "1",
        "--key", key, "--out", tmp_path,
    )  # fmt: skip
    assert traversal.code == 1 and "name" in traversal.err
    not_onnx = tmp_path / "notes.txt"
    not_onnx.write_text("hello")
    bad_model = cli(
        "fleet", "release", not_onnx, "--name", "notes", "--version", "1", "--key", key,
        "--out", tmp_path,
    )  # fmt: skip
    assert bad_model.code == 1 and bad_model.err.count("\n") == 1
    assert list(tmp_path.glob("*.manifest.json")) == []  # nothing half-written
    no_manifest = cli(
        "fleet", "verify", tmp_path / "none.json", "--trust", key.with_suffix(".key.pub")
    )
    assert no_manifest.code == 1 and "cannot read" in no_manifest.err


def test_release_carries_a_smoke_test_from_npz_files(cli: CLI, tmp_path: Path) -> None:
    import numpy as np

    key = _keys(cli, tmp_path)
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 1, 8, 8), np.float32))
    np.savez(tmp_path / "out.npz", logits=np.ones((1, 10), np.float32))
    result = cli(
        "fleet", "release", bundled.model_path(), "--name", "digits", "--version", "4",
        "--key", key, "--out", tmp_path, "--smoke-input", tmp_path / "in.npz",
        "--smoke-expected", tmp_path / "out.npz", "--atol", "0.01",
    )  # fmt: skip
    assert result.code == 0, result.err
    manifest = SignedManifest.from_json((tmp_path / "digits-4.manifest.json").read_bytes()).manifest
    assert manifest.smoke_test is not None and manifest.smoke_test.atol == 0.01
    assert set(manifest.smoke_test.expected.arrays()) == {"logits"}
    assert (tmp_path / "digits-4.onnx").read_bytes() == bundled.model_path().read_bytes()

    half = cli("fleet", "release", bundled.model_path(), "--name", "digits", "--version", "5",
               "--key", key, "--out", tmp_path, "--smoke-input", tmp_path / "in.npz")  # fmt: skip
    assert half.code == 1 and "give both" in half.err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    junk = cli(
        "fleet", "release", bundled.model_path(), "--name", "digits", "--version", "5",
        "--key", key, "--out", tmp_path, "--smoke-input", tmp_path / "junk.npz",
        "--smoke-expected", tmp_path / "out.npz",
    )  # fmt: skip
    assert junk.code == 1 and "junk.npz" in junk.err and "npz" in junk.err
    assert not (tmp_path / "digits-5.manifest.json").exists()
