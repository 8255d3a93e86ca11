"""EdgeModel with device profiles: the profile's providers, session settings, environment quirks
and provider cache directories, and the fallbacks reported when a profile's accelerators are
absent (a Jetson profile forced on this x86-64 host, whose onnxruntime has only the CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edge_sdk import bundled
from edge_sdk.cli import main
from edge_sdk.errors import UnknownProfileError
from edge_sdk.runtime import EdgeModel, SessionSettings

CPU = "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edge_sdk import kernels

    monkeypatch.delenv("EDGE_SDK_PROFILE", raising=False)
    monkeypatch.delenv("EDGE_SDK_PROFILES_DIR", raising=False)
    monkeypatch.setenv("EDGE_SDK_CACHE_DIR", str(tmp_path / "cache"))
    # The kernels keep the suite's warm compile cache: an application's own configure() wins
    # over a profile's kernel settings (tested in a fresh process below).
    kernels.configure(kernels.settings())


def _user_profile(directory: Path, name: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(
        f"""schema = 1
name = "{name}"
family = "x86"
arch = "x86_64"
[detect]
vendor_id = ["GenuineIntel", "AuthenticAMD"]
userland = "x86_64"
priority = 90
[[providers]]
name = "{CPU}"
{extra}
"""
    )
    return path


def test_this_host_gets_the_x86_64_profile_and_its_providers() -> None:
    # Real detection on the real /proc of this x86-64 machine.
    with EdgeModel.load(bundled.model_path()) as model:
        assert model.profile is not None
        assert model.profile.name == "generic-x86-64"
        assert model.providers == (CPU,)
        assert model.fallbacks == ()
        detection = model.profile_detection
        assert detection is not None and not detection.forced
        assert any("vendor_id" in e for e in detection.evidence)


def test_a_forced_jetson_profile_reports_its_missing_accelerators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-orin-nano")
    with EdgeModel.load(bundled.model_path()) as model:
        assert model.profile is not None and model.profile.name == "jetson-orin-nano"
        assert model.profile_detection is not None and model.profile_detection.forced
        assert model.providers == (CPU,)
        skipped = {f.provider: f for f in model.fallbacks}
        assert skipped["TensorrtExecutionProvider"].kind == "not_built"
        assert skipped["CUDAExecutionProvider"].kind == "not_built"
        assert "not built into onnxruntime" in skipped["TensorrtExecutionProvider"].reason
        # The TensorRT engine cache directory the profile names exists, under the SDK cache.
        trt = dict(model.profile.provider_preference())["TensorrtExecutionProvider"]
        engine_dir = Path(trt["trt_engine_cache_path"])
        assert engine_dir.is_dir()
        assert str(engine_dir).startswith(str(tmp_path / "cache"))
        # Still runs, on the CPU.
        (logits,) = model.run({"image": np.zeros((1, 1, 8, 8), np.float32)}).values()
        assert logits.shape == (1, 10)


def test_required_accelerator_of_a_forced_profile_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_sdk.errors import ProviderUnavailableError

    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-orin-nano")
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        EdgeModel.load(bundled.model_path(), require_providers=["TensorrtExecutionProvider"])


def test_no_profile_uses_every_built_in_provider() -> None:
    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        assert model.profile is None and model.profile_detection is None
        assert CPU in model.providers


def test_an_unknown_profile_name_suggests_the_nearest() -> None:
    with pytest.raises(UnknownProfileError, match="generic-x86-64") as caught:
        EdgeModel.load(bundled.model_path(), profile="generic-x86")
    assert "generic-x86-64" in caught.value.suggestions


def test_explicit_arguments_win_over_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "profiles"
    _user_profile(user, "tuned-host", "[session]\nintra_op_threads = 1\nallow_spinning = true\n")
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    with EdgeModel.load(bundled.model_path(), profile="tuned-host") as model:
        assert model.settings.intra_op_threads == 1
        assert model.settings.allow_spinning
    explicit = SessionSettings(intra_op_threads=2)
    with EdgeModel.load(bundled.model_path(), profile="tuned-host", settings=explicit) as model:
        assert model.settings.intra_op_threads == 2
        assert not model.settings.allow_spinning


def test_a_user_profile_wins_detection_and_sets_its_environment_quirks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "profiles"
    _user_profile(user, "my-edge-box", '[environment]\nEDGE_SDK_TEST_QUIRK = "on"\n')
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    monkeypatch.delenv("EDGE_SDK_TEST_QUIRK", raising=False)
    with EdgeModel.load(bundled.model_path()) as model:
        assert model.profile is not None and model.profile.name == "my-edge-box"
    assert os.environ.get("EDGE_SDK_TEST_QUIRK") == "on"
    monkeypatch.setenv("EDGE_SDK_TEST_QUIRK", "user's own value")
    with EdgeModel.load(bundled.model_path()):
        pass
    assert os.environ["EDGE_SDK_TEST_QUIRK"] == "user's own value"  # never overridden


def test_info_shows_the_profile_and_the_providers_it_cannot_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-orin-nano")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "jetson-orin-nano" in text and "EDGE_SDK_PROFILE" in text
    assert "TensorrtExecutionProvider (not in this onnxruntime: skipped)" in text
    assert main(["info", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    built = {p["name"]: p["built_in"] for p in document["profile"]["providers"]}
    assert not any(p["optional"] for p in document["profile"]["providers"])
    assert built == {
        "TensorrtExecutionProvider": False,
        "CUDAExecutionProvider": False,
        CPU: True,
    }


def test_run_reports_the_profile_and_fallbacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-orin-nano")
    assert main(["run", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["profile"] == "jetson-orin-nano"
    assert {f["provider"] for f in document["fallbacks"]} >= {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    }
    assert main(["run", "--profile", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] is None


def test_profiles_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "list"]) == 0
    listing = capsys.readouterr().out
    shipped = sorted(p.stem for p in (Path(__file__).parent.parent / "devices").glob("*.toml"))
    assert [line.split()[0] for line in listing.splitlines()] == shipped
    assert main(["profiles", "show", "jetson-orin-nano", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["providers"][0]["name"] == "TensorrtExecutionProvider"
    assert main(["profiles", "show", "jetson-orin-nan"]) == 1
    assert "did you mean 'jetson-orin-nano'" in capsys.readouterr().err


def test_an_optional_provider_this_onnxruntime_lacks_is_left_out_silently(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Raspberry Pi profiles prefer XNNPACK, which the PyPI wheels do not have.
    monkeypatch.setenv("EDGE_SDK_PROFILE", "raspberry-pi-4")
    with EdgeModel.load(bundled.model_path()) as model:
        assert model.profile is not None
        assert model.profile.providers[0].name == "XnnpackExecutionProvider"
        assert model.profile.providers[0].optional
        assert model.providers == (CPU,)
        assert model.fallbacks == ()
    assert main(["info"]) == 0
    assert "XnnpackExecutionProvider (optional, not in this onnxruntime)" in capsys.readouterr().out
    # Named explicitly, it is a preference like any other, and its absence is reported.
    with EdgeModel.load(bundled.model_path(), providers=["XnnpackExecutionProvider", CPU]) as model:
        assert [f.provider for f in model.fallbacks] == ["XnnpackExecutionProvider"]


def test_optional_must_be_a_boolean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_sdk.errors import ProfileFormatError
    from edge_sdk.profiles import load_profile

    path = _user_profile(tmp_path, "odd-box")
    path.write_text(path.read_text() + 'optional = "yes"\n')
    with pytest.raises(ProfileFormatError, match=r"providers\[0\]\.optional: must be bool"):
        load_profile(path)


_KERNEL_SETTINGS = """
import json, sys
from edge_sdk import bundled, kernels
from edge_sdk.runtime import EdgeModel
if sys.argv[1] == "configured":
    kernels.configure(cache_dir=sys.argv[2] + "/mine")
EdgeModel.load(bundled.model_path(), profile="kernel-box").close()
s = kernels.settings()
print(json.dumps({"cache_dir": s.cache_dir, "threads": s.threads, "helper": s.helper_thread}))
"""


@pytest.mark.parametrize("configured", [False, True])
def test_the_profile_sets_the_kernel_cache_unless_the_application_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    import subprocess
    import sys

    user = tmp_path / "profiles"
    kernels = '[kernels]\ncache_dir = "{cache}/kernels-here"\nthreads = 2\nhelper_thread = false\n'
    _user_profile(user, "kernel-box", kernels)
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    done = subprocess.run(
        [sys.executable, "-c", _KERNEL_SETTINGS, "configured" if configured else "plain",
         str(tmp_path)],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    )  # fmt: skip
    settings = json.loads(done.stdout.strip().splitlines()[-1])
    if configured:
        assert settings == {"cache_dir": str(tmp_path / "mine"), "threads": 1, "helper": True}
    else:
        expected = str(tmp_path / "cache" / "kernels-here")
        assert settings == {"cache_dir": expected, "threads": 2, "helper": False}


def test_a_broken_user_profile_is_reported_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_sdk.errors import ProfileFormatError

    user = tmp_path / "profiles"
    _user_profile(user, "typo-box", "bogus = 1\n")
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    with pytest.raises(
        ProfileFormatError, match=r"typo-box\.toml: providers\[0\]\.bogus: unknown key"
    ):
        EdgeModel.load(bundled.model_path())


def test_a_profile_that_is_not_utf8_is_a_format_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_sdk.errors import ProfileFormatError

    user = tmp_path / "profiles"
    path = _user_profile(user, "latin-box")
    path.write_bytes(
        path.read_bytes().replace(b'family = "x86"', b'title = "caf\xe9"\nfamily = "x86"')
    )
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    with pytest.raises(ProfileFormatError, match="not UTF-8"):
        EdgeModel.load(bundled.model_path())


def test_profile_values_the_runtime_would_reject_fail_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_sdk.errors import ProfileFormatError
    from edge_sdk.profiles import load_profile

    for extra, key in (
        ("[kernels]\nthreads = 0\n", "kernels.threads"),
        ("[session]\nintra_op_threads = -1\n", "session.intra_op_threads"),
        ("[budgets]\nmemory_mb = 0\n", "budgets.memory_mb"),
    ):
        path = _user_profile(tmp_path / key, "odd-values", extra)
        with pytest.raises(ProfileFormatError, match=rf"{key}: must be >= "):
            load_profile(path)


def test_a_profile_may_be_given_as_a_path(tmp_path: Path) -> None:
    path = _user_profile(tmp_path, "path-box")
    with EdgeModel.load(bundled.model_path(), profile=path) as model:
        assert model.profile is not None and model.profile.name == "path-box"
