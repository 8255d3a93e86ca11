"""Device profiles: loading, validation and detection on fake /proc, /sys, /etc and /dev trees.

References for the fake trees (each profile's TOML cites its own sources):
- /proc/device-tree/model and compatible are NUL-terminated strings, compatible a NUL-separated
  list (Devicetree Specification v0.4, 2.2.4, 2.3.1 and 2.3.2).
- /proc/cpuinfo: arm64 arch/arm64/kernel/cpuinfo.c c_show(), 32-bit arm
  arch/arm/kernel/setup.c c_show(), x86 arch/x86/kernel/cpu/proc.c show_cpuinfo().
- Loaders: glibc's shlib-versions (ld-linux-aarch64.so.1, ld-linux-armhf.so.3,
  ld-linux-x86-64.so.2), musl's ld-musl-<arch>.so.1.
- Jetson Linux writes /etc/nv_tegra_release; TensorRT's runtime is libnvinfer.so.<major>.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_sdk import profiles
from edge_sdk.errors import ProfileError, ProfileFormatError, UnknownProfileError
from edge_sdk.profiles import (
    Detection,
    DeviceProfile,
    detect,
    list_profiles,
    load_profile,
    profile_dirs,
    resolve_profile,
)

DEVICES = Path(__file__).resolve().parent.parent / "devices"
SHIPPED = sorted(path.stem for path in DEVICES.glob("*.toml"))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No profile forced, no user directories, a cache directory of the test's own."""
    monkeypatch.delenv("EDGE_SDK_PROFILE", raising=False)
    monkeypatch.delenv("EDGE_SDK_PROFILES_DIR", raising=False)
    monkeypatch.setenv("EDGE_SDK_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------
# Fake device trees


def cpuinfo_arm64(implementer: str, part: str, cores: int = 4, *, board: str = "") -> str:
    """/proc/cpuinfo as an arm64 kernel prints it (arch/arm64/kernel/cpuinfo.c)."""
    blocks = [
        f"processor\t: {n}\n"
        "BogoMIPS\t: 108.00\n"
        "Features\t: fp asimd evtstrm crc32 cpuid\n"
        f"CPU implementer\t: {implementer}\n"
        "CPU architecture: 8\n"
        "CPU variant\t: 0x0\n"
        f"CPU part\t: {part}\n"
        "CPU revision\t: 3\n"
        for n in range(cores)
    ]
    tail = f"\nHardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: {board}\n" if board else ""
    return "\n".join(blocks) + tail


def cpuinfo_arm32(part: str, cores: int = 4) -> str:
    """/proc/cpuinfo as a 32-bit arm kernel prints it (arch/arm/kernel/setup.c)."""
    return "\n".join(
        f"processor\t: {n}\n"
        "model name\t: ARMv7 Processor rev 3 (v7l)\n"
        "BogoMIPS\t: 108.00\n"
        "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae\n"
        "CPU implementer\t: 0x41\n"
        "CPU architecture: 7\n"
        "CPU variant\t: 0x0\n"
        f"CPU part\t: {part}\n"
        "CPU revision\t: 3\n"
        for n in range(cores)
    )


def cpuinfo_x86(vendor: str = "GenuineIntel", cores: int = 2) -> str:
    """/proc/cpuinfo as an x86 kernel prints it (arch/x86/kernel/cpu/proc.c)."""
    return "\n".join(
        f"processor\t: {n}\n"
        f"vendor_id\t: {vendor}\n"
        "cpu family\t: 6\n"
        "model\t\t: 142\n"
        "model name\t: Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz\n"
        "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx2\n"
        for n in range(cores)
    )


LOADERS = {
    "aarch64": "lib/ld-linux-aarch64.so.1",
    "armhf": "lib/ld-linux-armhf.so.3",
    "x86_64": "lib64/ld-linux-x86-64.so.2",
    "musl-aarch64": "lib/ld-musl-aarch64.so.1",
}


@dataclass(frozen=True)
class FakeDevice:
    """What a board shows under its root: device tree, CPU, userland, files and device nodes."""

    model: str | None = None
    compatible: tuple[str, ...] = ()
    cpuinfo: str = ""
    loaders: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    device_tree_dir: str = "proc/device-tree"

    def build(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        tree = root / self.device_tree_dir
        if self.model is not None:
            tree.mkdir(parents=True, exist_ok=True)
            # Device-tree strings end in NUL, as the kernel exports them.
            (tree / "model").write_bytes(self.model.encode() + b"\0")
        if self.compatible:
            tree.mkdir(parents=True, exist_ok=True)
            (tree / "compatible").write_bytes(b"".join(c.encode() + b"\0" for c in self.compatible))
        if self.cpuinfo:
            (root / "proc").mkdir(parents=True, exist_ok=True)
            (root / "proc/cpuinfo").write_text(self.cpuinfo)
        for loader in self.loaders:
            self._touch(root, LOADERS[loader], "")
        for name, text in self.files.items():
            self._touch(root, name, text)
        return root

    @staticmethod
    def _touch(root: Path, name: str, text: str) -> None:
        # Device nodes, libraries and sysfs entries are plain files in a fake tree.
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


L4T_R32 = "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64\n"
L4T_R35 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"
L4T_R36 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n"
NVINFER8 = "/usr/lib/aarch64-linux-gnu/libnvinfer.so.8"
NVINFER10 = "/usr/lib/aarch64-linux-gnu/libnvinfer.so.10"
VAIP_CONFIG = "/etc/vaip_config.json"
ZOCL_NODE = "/dev/dri/renderD128"

# One fake tree per shipped profile, built from what the real board shows.
FAKE_DEVICES: dict[str, FakeDevice] = {
    "generic-x86-64": FakeDevice(cpuinfo=cpuinfo_x86(), loaders=("x86_64",)),
    "generic-aarch64": FakeDevice(
        model="Radxa ROCK 5B",
        compatible=("radxa,rock-5b", "rockchip,rk3588"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd05", 4) + "\n" + cpuinfo_arm64("0x41", "0xd0b", 4),
        loaders=("aarch64",),
    ),
    "generic-armv7l": FakeDevice(
        model="TI AM335x BeagleBone Black",
        compatible=("ti,am335x-bone-black", "ti,am33xx"),
        cpuinfo=cpuinfo_arm32("0xc08", 1),
        loaders=("armhf",),
    ),
    "raspberry-pi-4": FakeDevice(
        model="Raspberry Pi 4 Model B Rev 1.4",
        compatible=("raspberrypi,4-model-b", "brcm,bcm2711"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd08", board="Raspberry Pi 4 Model B Rev 1.4"),
        loaders=("aarch64",),
    ),
    "raspberry-pi-5": FakeDevice(
        model="Raspberry Pi 5 Model B Rev 1.0",
        compatible=("raspberrypi,5-model-b", "brcm,bcm2712"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd0b", board="Raspberry Pi 5 Model B Rev 1.0"),
        loaders=("aarch64",),
    ),
    "raspberry-pi-32bit": FakeDevice(
        model="Raspberry Pi 3 Model B Plus Rev 1.3",
        compatible=("raspberrypi,3-model-b-plus", "brcm,bcm2837"),
        cpuinfo=cpuinfo_arm32("0xd03"),
        loaders=("armhf",),
    ),
    "jetson-nano": FakeDevice(
        model="NVIDIA Jetson Nano Developer Kit",
        compatible=("nvidia,p3450-0000", "nvidia,jetson-nano", "nvidia,tegra210"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd07"),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R32, NVINFER8: ""},
    ),
    "jetson-xavier-nx": FakeDevice(
        model="NVIDIA Jetson Xavier NX Developer Kit (SD-card)",
        compatible=("nvidia,p3509-0000+p3668-0000", "nvidia,tegra194"),
        cpuinfo=cpuinfo_arm64("0x4e", "0x004", 6),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R35, NVINFER8: ""},
    ),
    "jetson-orin-nano": FakeDevice(
        model="NVIDIA Jetson Orin Nano Developer Kit",
        compatible=("nvidia,p3768-0000+p3767-0005", "nvidia,p3767-0005", "nvidia,tegra234"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd42", 6),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R36, NVINFER10: ""},
    ),
    "jetson-agx-orin": FakeDevice(
        model="NVIDIA Jetson AGX Orin Developer Kit",
        compatible=("nvidia,p3737-0000+p3701-0000", "nvidia,p3701-0000", "nvidia,tegra234"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd42", 12),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R36, NVINFER8: ""},
    ),
    "generic-jetson": FakeDevice(
        model="NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        compatible=("nvidia,p3768-0000+p3767-0000", "nvidia,p3767-0000", "nvidia,tegra234"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd42", 8),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R36, NVINFER10: ""},
    ),
    "kria-kv260": FakeDevice(
        model="ZynqMP KV260 revB",
        compatible=(
            "xlnx,zynqmp-sk-kv260-rev2",
            "xlnx,zynqmp-sk-kv260-rev1",
            "xlnx,zynqmp-sk-kv260-revB",
            "xlnx,zynqmp-sk-kv260",
            "xlnx,zynqmp",
        ),
        cpuinfo=cpuinfo_arm64("0x41", "0xd03"),
        loaders=("aarch64",),
        files={ZOCL_NODE: "", VAIP_CONFIG: "{}"},
    ),
    "zynqmp-dpu": FakeDevice(
        model="ZynqMP ZCU104 RevC",
        compatible=("xlnx,zynqmp-zcu104-revC", "xlnx,zynqmp-zcu104", "xlnx,zynqmp"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd03"),
        loaders=("aarch64",),
        files={ZOCL_NODE: "", VAIP_CONFIG: "{}"},
    ),
    "versal-vek280": FakeDevice(
        model="Xilinx Versal vek280 Eval board revB",
        compatible=("xlnx,versal-vek280-revB", "xlnx,versal-vek280", "xlnx,versal"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd08", 2),
        loaders=("aarch64",),
        files={ZOCL_NODE: "", VAIP_CONFIG: "{}"},
    ),
}

# What each fake tree's evidence must mention: the facts that tell the board apart.
EXPECTED_EVIDENCE = {
    "generic-x86-64": ["vendor_id GenuineIntel", "x86_64 userland"],
    "generic-aarch64": ["aarch64 userland"],
    "generic-armv7l": ["armhf userland"],
    "raspberry-pi-4": ["'Raspberry Pi 4'", "cpu part 0xd08", "aarch64 userland"],
    "raspberry-pi-5": ["'Raspberry Pi 5'", "cpu part 0xd0b", "aarch64 userland"],
    "raspberry-pi-32bit": ["'Raspberry Pi'", "armhf userland"],
    "jetson-nano": ["'Jetson Nano'", "nvidia,tegra210", "/etc/nv_tegra_release exists"],
    "jetson-xavier-nx": ["'Jetson Xavier NX'", "cpu implementer 0x4e", "cpu part 0x004"],
    "jetson-orin-nano": ["'Jetson Orin Nano'", "nvidia,tegra234", "cpu part 0xd42"],
    "jetson-agx-orin": ["'Jetson AGX Orin'", "nvidia,tegra234", "/etc/nv_tegra_release"],
    "generic-jetson": ["nvidia,tegra", "/etc/nv_tegra_release exists"],
    "kria-kv260": ["xlnx,zynqmp-sk-kv260", "cpu part 0xd03"],
    "zynqmp-dpu": ["xlnx,zynqmp", "device node /dev/dri/renderD128 exists"],
    "versal-vek280": ["xlnx,versal-vek280", "cpu part 0xd08"],
}

# Profiles that warn whenever detection picks them: the catch-alls.
WARN_WHEN_PICKED = {"generic-aarch64", "generic-armv7l", "generic-jetson", "zynqmp-dpu"}
WARN_ABOUT_USERLAND = {"raspberry-pi-32bit"}


def matching(root: Path, candidates: Iterable[DeviceProfile]) -> list[DeviceProfile]:
    """Every profile whose rule matches the tree (not just the winner)."""
    found = []
    for profile in candidates:
        try:
            detection = detect(root, profiles=[profile])
        except UnknownProfileError:  # no match, and not even of this tree's architecture
            continue
        if not detection.evidence[0].startswith("no profile matched"):
            found.append(detection.profile)
    return found


# --------------------------------------------------------------------------------------------
# Every shipped profile, on a fake tree of its board


def test_every_shipped_profile_has_a_fake_device_tree() -> None:
    assert sorted(FAKE_DEVICES) == SHIPPED
    assert sorted(EXPECTED_EVIDENCE) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_detects_each_shipped_profile_on_fake_root(tmp_path: Path, name: str) -> None:
    root = FAKE_DEVICES[name].build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == name
    assert not found.forced
    evidence = " | ".join(found.evidence)
    for fact in EXPECTED_EVIDENCE[name]:
        assert fact in evidence
    if name in WARN_WHEN_PICKED | WARN_ABOUT_USERLAND:
        assert found.warnings == (found.profile.detect.warning,)
    else:
        assert found.warnings == ()


@pytest.mark.parametrize("name", SHIPPED)
def test_no_two_shipped_profiles_tie_on_a_fake_root(tmp_path: Path, name: str) -> None:
    root = FAKE_DEVICES[name].build(tmp_path / "root")

    matches = matching(root, list_profiles())

    priorities = [p.detect.priority for p in matches]
    top = max(priorities)
    assert priorities.count(top) == 1, [p.name for p in matches]
    assert name in [p.name for p in matches if p.detect.priority == top]


def test_generic_profiles_rank_below_every_specific_one() -> None:
    loaded = {p.name: p for p in list_profiles()}
    generic = [p for n, p in loaded.items() if n.startswith("generic-")]
    specific = [p for n, p in loaded.items() if not n.startswith("generic-")]
    assert max(p.detect.priority for p in generic) < min(p.detect.priority for p in specific)


# --------------------------------------------------------------------------------------------
# Look-alikes


def test_jetson_orin_nano_without_tensorrt_on_fake_root_is_detected_with_warning(
    tmp_path: Path,
) -> None:
    board = FAKE_DEVICES["jetson-orin-nano"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        files={"/etc/nv_tegra_release": L4T_R36},
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "jetson-orin-nano"
    assert len(found.warnings) == 1
    assert "TensorRT is not installed" in found.warnings[0]
    assert "TensorRT provider will be skipped" in found.warnings[0]
    assert "libnvinfer.so.*" in found.warnings[0]
    # The provider chain stays as it is: the runtime falls back and reports it.
    assert found.profile.provider_names[0] == "TensorrtExecutionProvider"


@pytest.mark.parametrize("library", [NVINFER8, NVINFER10, NVINFER10 + ".3.0"])
def test_jetson_orin_nano_fake_root_accepts_any_tensorrt_major(
    tmp_path: Path, library: str
) -> None:
    board = FAKE_DEVICES["jetson-orin-nano"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        files={"/etc/nv_tegra_release": L4T_R36, library: ""},
    ).build(tmp_path / "root")

    found = detect(root)

    assert (found.profile.name, found.warnings) == ("jetson-orin-nano", ())


def test_jetson_nano_fake_root_needs_tensorrt_8(tmp_path: Path) -> None:
    board = FAKE_DEVICES["jetson-nano"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        files={"/etc/nv_tegra_release": L4T_R32},
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "jetson-nano"
    assert "libnvinfer.so.8" in found.warnings[0]


def test_jetson_fake_root_without_jetson_linux_is_a_generic_aarch64_board(tmp_path: Path) -> None:
    # A Jetson running a distribution other than Jetson Linux: no JetPack, no TensorRT.
    board = FAKE_DEVICES["jetson-orin-nano"]
    root = FakeDevice(
        model=board.model, compatible=board.compatible, cpuinfo=board.cpuinfo, loaders=("aarch64",)
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "generic-aarch64"


def test_raspberry_pi_4_with_32bit_userland_on_64bit_kernel_fake_root(tmp_path: Path) -> None:
    # Raspberry Pi OS 32-bit boots a 64-bit kernel on a Pi 4: cpuinfo is the arm64 kernel's,
    # but only the armhf loader exists, and that is what Python runs as.
    root = FakeDevice(
        model="Raspberry Pi 4 Model B Rev 1.5",
        compatible=("raspberrypi,4-model-b", "brcm,bcm2711"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd08", board="Raspberry Pi 4 Model B Rev 1.5"),
        loaders=("armhf",),
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "raspberry-pi-32bit"
    assert found.profile.arch == "armv7l"
    assert "armhf userland" in " ".join(found.evidence)
    assert "32-bit userland" in found.warnings[0]
    assert found.profile.environment["NUMBA_DISABLE_JIT"] == "1"
    # The Pi 4 profile's own rule does not match a 32-bit userland at all.
    assert "raspberry-pi-4" not in [p.name for p in matching(root, list_profiles())]


def test_raspberry_pi_4_with_32bit_kernel_fake_root(tmp_path: Path) -> None:
    root = FakeDevice(
        model="Raspberry Pi 4 Model B Rev 1.4",
        compatible=("raspberrypi,4-model-b", "brcm,bcm2711"),
        cpuinfo=cpuinfo_arm32("0xd08"),
        loaders=("armhf",),
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "raspberry-pi-32bit"


def test_raspberry_pi_4_fake_root_with_armhf_multiarch_is_still_64bit(tmp_path: Path) -> None:
    board = FAKE_DEVICES["raspberry-pi-4"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=("aarch64", "armhf"),
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "raspberry-pi-4"


@pytest.mark.parametrize(
    ("interpreter", "expected"), [("armhf", "raspberry-pi-32bit"), ("aarch64", "raspberry-pi-4")]
)
def test_on_the_running_system_the_interpreters_userland_decides_fake_root_and_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interpreter: str, expected: str
) -> None:
    # A 32-bit Raspberry Pi OS with the arm64 loader installed (libc6:arm64): both loaders
    # are present, and on the machine itself the Python that runs the SDK decides. The fake
    # root stands in for "/" and the fake interpreter for a 32-bit or 64-bit Python.
    board = FAKE_DEVICES["raspberry-pi-4"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=("aarch64", "armhf"),
    ).build(tmp_path / "root")
    monkeypatch.setattr(profiles, "_is_running_system", lambda _root: True)
    monkeypatch.setattr(profiles, "_running_userland", lambda: interpreter)
    assert detect(root).profile.name == expected


def test_the_running_interpreter_userland_of_this_host() -> None:
    assert profiles._running_userland() == "x86_64"  # the CI host: 64-bit x86 Python
    assert profiles._is_running_system(Path("/"))


def test_raspberry_pi_400_fake_root_is_a_pi_4(tmp_path: Path) -> None:
    root = FakeDevice(
        model="Raspberry Pi 400 Rev 1.0",
        compatible=("raspberrypi,400", "brcm,bcm2711"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd08"),
        loaders=("aarch64",),
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "raspberry-pi-4"


def test_unknown_aarch64_board_fake_root_gets_generic_with_warning(tmp_path: Path) -> None:
    root = FakeDevice(
        model="Pine64 RockPro64 v2.1",
        compatible=("pine64,rockpro64-v2.1", "rockchip,rk3399"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd03", 4) + "\n" + cpuinfo_arm64("0x41", "0xd08", 2),
        loaders=("aarch64",),
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "generic-aarch64"
    assert found.profile.provider_names[-1] == "CPUExecutionProvider"
    assert len(found.warnings) == 1
    assert "no board-specific profile matched" in found.warnings[0]


def test_x86_host_fake_root_gets_generic_x86_without_warnings(tmp_path: Path) -> None:
    root = FakeDevice(cpuinfo=cpuinfo_x86("AuthenticAMD", 8), loaders=("x86_64",)).build(
        tmp_path / "root"
    )

    found = detect(root)

    assert (found.profile.name, found.warnings) == ("generic-x86-64", ())
    assert "/proc/cpuinfo vendor_id AuthenticAMD" in found.evidence


def test_x86_host_fake_root_with_arm64_multiarch_libraries_stays_x86(tmp_path: Path) -> None:
    # qemu-user setups install libc6:arm64, which brings /lib/ld-linux-aarch64.so.1 along.
    root = FakeDevice(cpuinfo=cpuinfo_x86(), loaders=("x86_64", "aarch64")).build(tmp_path / "r")

    assert detect(root).profile.name == "generic-x86-64"


def test_musl_aarch64_fake_root_is_an_aarch64_userland(tmp_path: Path) -> None:
    root = FakeDevice(
        model="Raspberry Pi 5 Model B Rev 1.0",
        compatible=("raspberrypi,5-model-b", "brcm,bcm2712"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd0b"),
        loaders=("musl-aarch64",),
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "raspberry-pi-5"


def test_device_tree_read_from_sysfs_when_proc_has_none_on_fake_root(tmp_path: Path) -> None:
    board = FAKE_DEVICES["raspberry-pi-5"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        device_tree_dir="sys/firmware/devicetree/base",
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "raspberry-pi-5"


def test_jetson_tx1_fake_root_gets_generic_jetson(tmp_path: Path) -> None:
    # Same SoC as the Nano (tegra210), different module: not the Nano's profile.
    root = FakeDevice(
        model="NVIDIA Jetson TX1 Developer Kit",
        compatible=("nvidia,p2371-2180", "nvidia,tegra210"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd07"),
        loaders=("aarch64",),
        files={"/etc/nv_tegra_release": L4T_R32, NVINFER8: ""},
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "generic-jetson"
    assert "no profile for this Jetson module" in found.warnings[0]


def test_kria_kv260_without_dpu_loaded_on_fake_root_is_detected_with_warning(
    tmp_path: Path,
) -> None:
    board = FAKE_DEVICES["kria-kv260"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        files={VAIP_CONFIG: "{}"},
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "kria-kv260"
    assert len(found.warnings) == 1
    assert "DPU is not ready" in found.warnings[0]
    assert "/dev/dri/renderD*" in found.warnings[0]
    assert VAIP_CONFIG not in found.warnings[0]


def test_kria_k26_som_on_another_carrier_fake_root_is_the_kria_profile(tmp_path: Path) -> None:
    root = FakeDevice(
        model="ZynqMP SM-K26 Rev1/B/A",
        compatible=("xlnx,zynqmp-sm-k26-rev1", "xlnx,zynqmp-sm-k26", "xlnx,zynqmp"),
        cpuinfo=cpuinfo_arm64("0x41", "0xd03"),
        loaders=("aarch64",),
        files={ZOCL_NODE: "", VAIP_CONFIG: "{}"},
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "kria-kv260"


def test_zynqmp_board_without_dpu_fake_root_is_a_generic_aarch64_board(tmp_path: Path) -> None:
    board = FAKE_DEVICES["zynqmp-dpu"]
    root = FakeDevice(
        model=board.model, compatible=board.compatible, cpuinfo=board.cpuinfo, loaders=("aarch64",)
    ).build(tmp_path / "root")

    assert detect(root).profile.name == "generic-aarch64"


def test_zynqmp_board_with_legacy_dpu_driver_fake_root(tmp_path: Path) -> None:
    board = FAKE_DEVICES["zynqmp-dpu"]
    root = FakeDevice(
        model=board.model,
        compatible=board.compatible,
        cpuinfo=board.cpuinfo,
        loaders=board.loaders,
        files={"/dev/dpu": ""},
    ).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "zynqmp-dpu"
    assert "device node /dev/dpu exists" in found.evidence
    assert any("Vitis AI ONNX Runtime package is not installed" in w for w in found.warnings)


def test_empty_fake_root_falls_back_with_a_warning(tmp_path: Path) -> None:
    found = detect(tmp_path)

    assert found.profile.name.startswith("generic-")
    assert found.evidence[0].startswith("no profile matched")
    assert found.warnings == (
        f"no device profile matched this machine; using {found.profile.name}",
    )


def test_fallback_arch_comes_from_fake_cpuinfo_without_a_known_loader(tmp_path: Path) -> None:
    root = FakeDevice(cpuinfo=cpuinfo_arm64("0x41", "0xd08")).build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "generic-aarch64"
    assert "no device profile matched" in found.warnings[0]


def test_fallback_without_a_profile_of_that_arch_raises_on_fake_root(tmp_path: Path) -> None:
    root = FakeDevice(cpuinfo=cpuinfo_arm32("0xc07"), loaders=("armhf",)).build(tmp_path / "r")
    x86_only = [load_profile("generic-x86-64")]

    with pytest.raises(UnknownProfileError):
        detect(root, profiles=x86_only)


# --------------------------------------------------------------------------------------------
# EDGE_SDK_PROFILE and EDGE_SDK_PROFILES_DIR


def test_edge_sdk_profile_forces_a_profile_on_a_fake_x86_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = FAKE_DEVICES["generic-x86-64"].build(tmp_path / "root")
    monkeypatch.setenv("EDGE_SDK_PROFILE", "raspberry-pi-5")

    found = detect(root)

    assert found.forced
    assert found.profile.name == "raspberry-pi-5"
    assert found.evidence == ("EDGE_SDK_PROFILE=raspberry-pi-5",)
    assert found.warnings == ()


def test_forced_jetson_profile_still_warns_about_missing_tensorrt_on_fake_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-agx-orin")

    found = detect(tmp_path)

    assert found.forced
    assert len(found.warnings) == 1
    assert "TensorRT is not installed" in found.warnings[0]


def test_forced_generic_profile_on_fake_root_does_not_claim_no_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "generic-aarch64")

    assert detect(tmp_path).warnings == ()


def test_edge_sdk_profile_may_name_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_profile(tmp_path / "elsewhere", "lab-board", MINIMAL.format(name="lab-board"))
    monkeypatch.setenv("EDGE_SDK_PROFILE", str(path))

    found = detect(tmp_path)

    assert (found.profile.name, found.profile.path, found.forced) == ("lab-board", str(path), True)


def test_edge_sdk_profile_with_unknown_name_suggests_the_nearest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-orin-nanoo")

    with pytest.raises(UnknownProfileError) as caught:
        detect(tmp_path)

    assert caught.value.suggestions[0] == "jetson-orin-nano"


MINIMAL = """\
schema = 1
name = "{name}"
family = "arm"
arch = "aarch64"

[[providers]]
name = "CPUExecutionProvider"
"""

ROCK_5B = """\
schema = 1
name = "rock-5b"
title = "Radxa ROCK 5B"
family = "arm"
arch = "aarch64"

[detect]
compatible = ["radxa,rock-5b"]
userland = "aarch64"
priority = 60

[[providers]]
name = "CPUExecutionProvider"

[budgets]
memory_mb = 3072
"""


def write_profile(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_profile_directory_adds_a_board_detected_on_fake_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "profiles"
    write_profile(user, "rock-5b", ROCK_5B)
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))
    root = FAKE_DEVICES["generic-aarch64"].build(tmp_path / "root")

    found = detect(root)

    assert found.profile.name == "rock-5b"
    assert found.profile.budgets.memory_mb == 3072
    assert found.warnings == ()
    assert profile_dirs()[-1] == user
    assert "rock-5b" in [p.name for p in list_profiles()]


def test_user_profile_overrides_the_shipped_one_also_on_fake_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = (DEVICES / "raspberry-pi-4.toml").read_text()
    user = tmp_path / "profiles"
    path = write_profile(
        user, "raspberry-pi-4", shipped.replace("memory_mb = 1024", "memory_mb = 256")
    )
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))

    loaded = load_profile("raspberry-pi-4")
    found = detect(FAKE_DEVICES["raspberry-pi-4"].build(tmp_path / "root"))

    assert (loaded.path, loaded.budgets.memory_mb) == (str(path), 256)
    assert found.profile.path == str(path)
    assert [p.name for p in list_profiles()].count("raspberry-pi-4") == 1


def test_later_user_directory_wins_and_missing_directories_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "site"
    second = tmp_path / "local"
    write_profile(first, "lab-board", MINIMAL.format(name="lab-board"))
    path = write_profile(second, "lab-board", MINIMAL.format(name="lab-board"))
    dirs = [str(first), str(tmp_path / "absent"), str(second)]
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", os.pathsep.join(dirs))

    assert load_profile("lab-board").path == str(path)


def test_broken_user_profile_is_reported_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "profiles"
    write_profile(user, "lab-board", "schema = 1\nname = \n")
    monkeypatch.setenv("EDGE_SDK_PROFILES_DIR", str(user))

    with pytest.raises(ProfileFormatError) as caught:
        detect(tmp_path)

    assert caught.value.path == str(user / "lab-board.toml")


# --------------------------------------------------------------------------------------------
# Bad input


def test_unknown_profile_name_suggests_the_nearest_names() -> None:
    with pytest.raises(UnknownProfileError) as caught:
        load_profile("raspbery-pi-4")

    error = caught.value
    assert isinstance(error, ProfileError)
    assert error.suggestions[0] == "raspberry-pi-4"
    assert "did you mean 'raspberry-pi-4'" in str(error)
    assert sorted(error.known) == SHIPPED


def broken(tmp_path: Path, text: str, name: str = "lab-board") -> ProfileFormatError:
    path = write_profile(tmp_path, name, text)
    with pytest.raises(ProfileFormatError) as caught:
        load_profile(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.format(name="lab-board") + "[session\n")

    assert error.key is None
    assert "not valid TOML" in error.reason


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileFormatError, match="no such file"):
        load_profile(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("addition", "key", "hint"),
    [
        ("titel = 'x'\n", "titel", "title"),
        ("[detect]\nprority = 5\n", "detect.prority", "priority"),
        ("[detect]\ncompatibles = ['x']\n", "detect.compatibles", "compatible"),
        ("[detect.expect]\nfile = ['/x']\n", "detect.expect.file", "files"),
        ("[session]\nintra_op_thread = 2\n", "session.intra_op_thread", "intra_op_threads"),
        ("[budgets]\nmemory = 1\n", "budgets.memory", "memory_mb"),
        ("[thermal]\nzone = ['x']\n", "thermal.zone", "zones"),
        ("[acelerator]\nname = 'x'\n", "acelerator", "accelerator"),
    ],
)
def test_unknown_key_names_key_and_file_and_suggests_the_nearest(
    tmp_path: Path, addition: str, key: str, hint: str
) -> None:
    base = MINIMAL.format(name="lab-board")
    text = base + addition if addition.startswith("[") else addition + base

    error = broken(tmp_path, text)

    assert error.key == key
    assert f"did you mean {hint!r}" in error.reason


def test_unknown_provider_key_is_named_with_its_index(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board").replace(
        'name = "CPUExecutionProvider"', 'name = "CPUExecutionProvider"\noption = {}'
    )

    error = broken(tmp_path, text)

    assert error.key == "providers[0].option"
    assert "did you mean 'options'" in error.reason


@pytest.mark.parametrize(
    ("addition", "key", "fragment"),
    [
        ("[detect]\npriority = 'high'\n", "detect.priority", "must be int, got str"),
        ("[detect]\npriority = true\n", "detect.priority", "got a boolean"),
        ("[detect]\nmodel = 'Raspberry Pi'\n", "detect.model", "must be list"),
        ("[detect]\nmodel = [4]\n", "detect.model", "list of strings"),
        ("[detect]\nuserland = 'arm64'\n", "detect.userland", "must be one of"),
        ("[budgets]\nmemory_mb = '1 GB'\n", "budgets.memory_mb", "must be int"),
        ("[session]\nallow_spinning = 'no'\n", "session.allow_spinning", "must be bool"),
        ("[session]\ngraph_optimization = 'max'\n", "session.graph_optimization", "one of"),
        ("[precision]\npreferred = 'fp8'\n", "precision.preferred", "must be one of"),
        ("[kernels]\nthreads = 2.5\n", "kernels.threads", "must be int"),
        ("[environment]\nOMP_NUM_THREADS = 2\n", "environment.OMP_NUM_THREADS", "must be str"),
        ("[thermal]\nzones = 'cpu-thermal'\n", "thermal.zones", "must be list"),
        ("detect = 'x'\n", "detect", "must be dict"),
    ],
)
def test_wrong_types_are_named(tmp_path: Path, addition: str, key: str, fragment: str) -> None:
    base = MINIMAL.format(name="lab-board")
    # A top-level key must come before the first table; a table goes at the end.
    text = base + addition if addition.startswith("[") else addition + base

    error = broken(tmp_path, text)

    assert error.key == key
    assert fragment in error.reason


def test_close_choice_gets_a_hint(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.format(name="lab-board").replace('"arm"', '"jetsn"'))

    assert error.key == "family"
    assert "did you mean 'jetson'" in error.reason


def test_name_must_match_the_file_name(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.format(name="other-board"))

    assert error.key == "name"
    assert "'lab-board'" in error.reason


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("schema = 1", "schema = 2", "schema", "must be 1"),
        ('family = "arm"\n', "", "family", "is required"),
        ('arch = "aarch64"\n', "", "arch", "is required"),
        ('arch = "aarch64"', 'arch = "aarch64"\nonnxruntime = "latest"', "onnxruntime", "1.17"),
    ],
)
def test_top_level_values_are_checked(
    tmp_path: Path, old: str, new: str, key: str, fragment: str
) -> None:
    error = broken(tmp_path, MINIMAL.format(name="lab-board").replace(old, new))

    assert error.key == key
    assert fragment in error.reason


@pytest.mark.parametrize(
    "provider", ["TensorRT", "cpu", "CPUExecution", "Tensorrt_ExecutionProvide"]
)
def test_provider_name_must_be_an_execution_provider(tmp_path: Path, provider: str) -> None:
    text = MINIMAL.format(name="lab-board").replace("CPUExecutionProvider", provider)

    error = broken(tmp_path, text)

    assert error.key == "providers[0].name"
    assert "must name an execution provider" in error.reason


def test_providers_are_required(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board").split("[[providers]]")[0]

    error = broken(tmp_path, text)

    assert error.key == "providers"


def test_a_provider_listed_twice_is_rejected(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board") + '\n[[providers]]\nname = "CPUExecutionProvider"\n'

    error = broken(tmp_path, text)

    assert error.key == "providers[1].name"
    assert "listed twice" in error.reason


def test_provider_option_values_must_be_scalars(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board") + "options = { trt_profile = { min = 1 } }\n"

    error = broken(tmp_path, text)

    assert error.key == "providers[0].options.trt_profile"


ACCELERATOR = """
[accelerator]
name = "NPU"
provider = "{provider}"
dtypes = {dtypes}
"""


def test_accelerator_provider_must_be_one_of_the_providers(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board") + ACCELERATOR.format(
        provider="VitisAIExecutionProvider", dtypes='["int8"]'
    )

    error = broken(tmp_path, text)

    assert error.key == "accelerator.provider"
    assert "'VitisAIExecutionProvider' is not in [[providers]]" in error.reason


def test_accelerator_dtypes_are_checked(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board") + ACCELERATOR.format(
        provider="CPUExecutionProvider", dtypes='["in8"]'
    )

    error = broken(tmp_path, text)

    assert error.key == "accelerator.dtypes"
    assert "did you mean 'int8'" in error.reason


def test_accelerator_needs_a_name(tmp_path: Path) -> None:
    text = MINIMAL.format(name="lab-board") + '\n[accelerator]\nprovider = "CPUExecutionProvider"\n'

    error = broken(tmp_path, text)

    assert (error.key, error.reason) == ("accelerator.name", "is required")


# --------------------------------------------------------------------------------------------
# Every shipped profile, loaded


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_expands_cache(tmp_path: Path, name: str) -> None:
    profile = load_profile(name)
    cache = str(tmp_path / "cache")

    preference = profile.provider_preference()

    assert profile.name == name
    assert profile.path == str(DEVICES / f"{name}.toml")
    assert [entry[0] for entry in preference] == list(profile.provider_names)
    assert preference[-1][0] == "CPUExecutionProvider"  # something always runs
    for _, options in preference:
        for value in options.values():
            assert "{cache}" not in str(value)
        for key, value in options.items():
            if "cache_path" in key or key == "cacheDir":
                assert value.startswith(cache)
    resolved = profile.kernels.resolved_cache_dir()
    assert resolved is None or resolved.startswith(cache)
    if profile.accelerator is not None:
        assert profile.accelerator.provider in profile.provider_names
        assert profile.accelerator.dtypes


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_session_is_valid_for_the_runtime(name: str) -> None:
    settings = load_profile(name).session_settings()

    assert settings.allow_spinning is False  # ../shared/NOTES.md, onnxruntime


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_cites_its_sources(name: str) -> None:
    text = (DEVICES / f"{name}.toml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))

    assert re.search(r"https://|arch/arm|NOTES\.md|glibc", comments), name


def test_jetson_profiles_use_tensorrt_then_cuda_then_cpu_with_caches() -> None:
    for name in ("jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin"):
        profile = load_profile(name)
        tensorrt = dict(profile.providers[0].options)
        assert profile.provider_names == (
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        )
        assert tensorrt["trt_fp16_enable"] is True
        assert tensorrt["trt_engine_cache_enable"] is True
        assert tensorrt["trt_engine_cache_path"] == "{cache}/tensorrt"
        assert tensorrt["trt_max_workspace_size"] > 0
        assert profile.precision == "fp16"
        assert profile.detect.expect_files
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        tensorrt = dict(load_profile(name).providers[0].options)
        assert tensorrt["trt_timing_cache_enable"] is True
        assert tensorrt["trt_timing_cache_path"] == "{cache}/tensorrt"


def test_fpga_profiles_use_the_vitis_ai_provider_for_quantised_models() -> None:
    for name in ("kria-kv260", "zynqmp-dpu", "versal-vek280"):
        profile = load_profile(name)
        accelerator = profile.accelerator
        assert profile.provider_names == ("VitisAIExecutionProvider", "CPUExecutionProvider")
        assert dict(profile.providers[0].options) == {
            "config_file": "/etc/vaip_config.json",
            "cacheDir": "{cache}/vitisai",
        }
        assert accelerator is not None
        assert (accelerator.quantized_only, accelerator.dtypes) == (True, ("int8",))
        assert {"Conv", "QuantizeLinear", "DequantizeLinear"} <= accelerator.ops
        assert profile.precision == "int8"
    kria = load_profile("kria-kv260").accelerator
    assert kria is not None
    assert kria.name == "DPUCZDX8G"


# --------------------------------------------------------------------------------------------
# Smaller pieces of the public API


def test_apply_environment_sets_only_what_is_unset() -> None:
    profile = load_profile("raspberry-pi-32bit")
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}

    applied = profile.apply_environment(environ)

    assert applied == {"NUMBA_DISABLE_JIT": "1"}
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE", "NUMBA_DISABLE_JIT": "1"}


def test_resolve_profile_by_name_object_and_none() -> None:
    profile = load_profile("kria-kv260")

    named = resolve_profile("kria-kv260")
    given = resolve_profile(profile)

    assert isinstance(named, Detection)
    assert named.profile == profile
    assert given == Detection(profile, ("given",))
    assert resolve_profile(None) is None


def test_resolve_auto_honours_edge_sdk_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SDK_PROFILE", "jetson-nano")

    found = resolve_profile("auto")

    assert found is not None
    assert (found.profile.name, found.forced) == ("jetson-nano", True)


def test_cache_root_follows_xdg_without_an_explicit_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_SDK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert profiles.cache_root() == tmp_path / "xdg" / "edge-sdk"
