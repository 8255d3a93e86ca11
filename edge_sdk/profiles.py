"""Device profiles: what a board is, how to recognise it, and how to run models on it.

A profile is data, one TOML file per device family (``devices/*.toml`` in the source tree,
shipped inside the wheel as ``edge_sdk/devices``). Users add a board by dropping a TOML file in
a directory named by ``EDGE_SDK_PROFILES_DIR`` (several, separated by ``:``); a user file of the
same name replaces the shipped one. ``EDGE_SDK_PROFILE`` names the profile to use and skips
detection. Every fact in a shipped profile cites its source in a comment. docs/profiles.md is
the guide.

``detect(root="/")`` reads /proc, /sys, /etc, /lib and /dev under ``root`` and returns the best
matching profile with the evidence it matched and warnings about what it found (a Jetson whose
TensorRT libraries are missing, a board no specific profile knows), so every profile is tested
against a fake tree.

Schema (version 1); every table but ``detect`` and ``providers`` is optional::

    schema = 1
    name = "jetson-orin-nano"          # must equal the file name without .toml
    title = "NVIDIA Jetson Orin Nano"
    family = "jetson"                  # x86 | arm | jetson | fpga
    arch = "aarch64"                   # x86_64 | aarch64 | armv7l: the userland's
    onnxruntime = "1.17"               # the onnxruntime (oldest) expected on the device: "N.N"

    [detect]                           # every listed kind must match (an empty detect: never)
    model = ["NVIDIA Jetson Orin Nano"]  # any: substring of the device-tree model
    compatible = ["nvidia,p3767"]       # any: substring of a device-tree compatible entry
    cpu_implementer = ["0x41"]          # any: /proc/cpuinfo "CPU implementer"
    cpu_part = ["0xd42"]                # any: /proc/cpuinfo "CPU part"
    vendor_id = ["GenuineIntel"]        # any: /proc/cpuinfo "vendor_id" (x86)
    files = ["/etc/nv_tegra_release"]   # all must exist under root
    devices = ["/dev/dpu"]              # any must exist under root
    userland = "aarch64"                # the loader present under root: aarch64 | armhf | x86_64
    priority = 50                       # among matches the highest wins (generic ones low)
    warning = "..."                     # said whenever detection picks this profile (generic
                                        # profiles: what a specific one would add)

    [detect.expect]                     # not required to match; missing ones become warnings
    files = ["/usr/lib/aarch64-linux-gnu/libnvinfer.so.*"]
    message = "TensorRT is not installed: ..."

    [[providers]]                       # in order of preference, each name at most once
    name = "TensorrtExecutionProvider"
    optional = false                    # true: left out silently where onnxruntime lacks it
    options = { trt_fp16_enable = true, trt_engine_cache_path = "{cache}/tensorrt" }

    [session]    intra_op_threads, inter_op_threads, allow_spinning, graph_optimization
    [budgets]    memory_mb, storage_mb
    [precision]  preferred = "fp32" | "fp16" | "int8"
    [kernels]    cache_dir, threads, helper_thread
    [environment]  NAME = "value" set for the process when unset (quirks)
    [thermal]    zones = ["cpu-thermal", ...]  (thermal zone type names)
    [accelerator]  name, provider (both required), ops = [...], dtypes = [...],
                   quantized_only, required (check fails operators it cannot run), notes

Paths in ``files``, ``devices`` and ``expect.files`` may use the wildcards ``*``, ``?`` and
``[...]`` (one library, whatever its version: ``libnvinfer.so.*``). The userland is told by the
dynamic loader it ships (glibc's or musl's); when several are present, the one native to the CPU
wins. Provider option values are strings, integers, floats or booleans (onnxruntime passes them
to the provider as strings).

``{cache}`` in provider options and kernel settings is the SDK's cache directory
(``$XDG_CACHE_HOME/edge-sdk``, or ``EDGE_SDK_CACHE_DIR``).

Example::

    from edge_sdk.profiles import detect
    found = detect()
    print(found.profile.name, found.evidence, found.warnings)
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import struct
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge_sdk.errors import ProfileFormatError, UnknownProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "Accelerator",
    "Budgets",
    "DetectRule",
    "Detection",
    "DeviceProfile",
    "KernelSettings",
    "ProviderSpec",
    "cache_root",
    "detect",
    "list_profiles",
    "load_profile",
    "profile_dirs",
    "resolve_profile",
]

SCHEMA_VERSION = 1
FAMILIES = ("x86", "arm", "jetson", "fpga")
ARCHES = ("x86_64", "aarch64", "armv7l")
PRECISIONS = ("fp32", "fp16", "int8")
# The element types an accelerator may compute in (precision names plus the integer widths
# quantised graphs use).
DTYPES = ("fp32", "fp16", "bf16", "int16", "uint16", "int8", "uint8", "int4", "uint4")
USERLANDS = {
    # The dynamic loader each userland ships: glibc's names, then musl's (Alpine).
    "aarch64": ("lib/ld-linux-aarch64.so.1", "lib/ld-musl-aarch64.so.1"),
    "armhf": ("lib/ld-linux-armhf.so.3", "lib/ld-musl-armhf.so.1"),
    "x86_64": (
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib/ld-musl-x86_64.so.1",
    ),
}
_USERLAND_ARCH = {"aarch64": "aarch64", "armhf": "armv7l", "x86_64": "x86_64"}
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")
_WILDCARDS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class DetectRule:
    """How to recognise a device: the ``[detect]`` table of a profile."""

    model: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    cpu_implementer: tuple[str, ...] = ()
    cpu_part: tuple[str, ...] = ()
    vendor_id: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    userland: str | None = None
    priority: int = 0
    expect_files: tuple[str, ...] = ()
    expect_message: str = ""
    warning: str = ""


@dataclass(frozen=True)
class ProviderSpec:
    """One execution provider and its options (``{cache}`` not yet expanded)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # An optional provider that the installed onnxruntime lacks is left out silently: it only
    # exists in some builds (XNNPACK is not in the PyPI wheels), and a fallback notice on
    # every start of every stock install would be noise, not news.
    optional: bool = False

    def resolved_options(self) -> dict[str, Any]:
        root = str(cache_root())
        return {
            k: v.replace("{cache}", root) if isinstance(v, str) else v
            for k, v in self.options.items()
        }


@dataclass(frozen=True)
class Budgets:
    memory_mb: int | None = None
    storage_mb: int | None = None


@dataclass(frozen=True)
class KernelSettings:
    cache_dir: str | None = None
    threads: int = 1
    helper_thread: bool = True

    def resolved_cache_dir(self) -> str | None:
        """``cache_dir`` with ``{cache}`` expanded; None when the profile sets none."""
        if self.cache_dir is None:
            return None
        return self.cache_dir.replace("{cache}", str(cache_root()))


@dataclass(frozen=True)
class Accelerator:
    """The accelerator's constraints: the ops its provider takes (empty: any the provider
    implements), the input dtypes it computes in, and whether it runs quantised graphs only."""

    name: str
    provider: str
    ops: frozenset[str] = frozenset()
    dtypes: tuple[str, ...] = ()
    quantized_only: bool = False
    # The board is there for its accelerator: ``check`` fails an operator it cannot run
    # instead of warning that the operator falls back to the CPU.
    required: bool = False
    notes: str = ""


@dataclass(frozen=True)
class DeviceProfile:
    """One device family: how to recognise it and how to run models on it (see the module
    docstring for the TOML it is read from)."""

    name: str
    title: str
    family: str
    arch: str
    path: str
    detect: DetectRule
    providers: tuple[ProviderSpec, ...]
    onnxruntime: str | None = None
    session: Mapping[str, Any] = field(default_factory=dict)
    budgets: Budgets = Budgets()
    precision: str = "fp32"
    kernels: KernelSettings = KernelSettings()
    environment: Mapping[str, str] = field(default_factory=dict)
    thermal_zones: tuple[str, ...] = ()
    accelerator: Accelerator | None = None

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers)

    def provider_preference(
        self, available: Collection[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The providers as EdgeModel's ``providers`` argument, ``{cache}`` expanded; optional
        ones missing from ``available`` (the onnxruntime build's providers) left out."""
        return [
            (p.name, p.resolved_options())
            for p in self.providers
            if not (p.optional and available is not None and p.name not in available)
        ]

    def session_settings(self) -> Any:
        """The profile's session options as a ``runtime.SessionSettings``."""
        from edge_sdk.runtime import SessionSettings

        return SessionSettings(**dict(self.session))

    def apply_environment(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Set the profile's environment quirks that are not set yet; returns those set."""
        target = os.environ if environ is None else environ
        applied = {}
        for key, value in self.environment.items():
            if key not in target:
                target[key] = value
                applied[key] = value
        return applied


@dataclass(frozen=True)
class Detection:
    """What ``detect`` found: the profile, the facts that matched it, and warnings."""

    profile: DeviceProfile
    evidence: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    forced: bool = False  # EDGE_SDK_PROFILE named it


# --------------------------------------------------------------------------------------------
# Loading


def cache_root() -> Path:
    explicit = os.environ.get("EDGE_SDK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-sdk"


def _shipped_dir() -> Path:
    """The profiles shipped with the SDK: edge_sdk/devices in a wheel, devices/ in a checkout."""
    packaged = Path(str(resources.files("edge_sdk"))) / "devices"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "devices"


def profile_dirs() -> list[Path]:
    """Where profiles come from, later ones overriding earlier ones of the same name."""
    dirs = [_shipped_dir()]
    for entry in os.environ.get("EDGE_SDK_PROFILES_DIR", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    return dirs


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found[path.stem] = path
    return found


def list_profiles() -> list[DeviceProfile]:
    """Every profile, by name (shipped, then user directories).

    Raises ProfileFormatError if any of them is malformed: a broken user profile is reported,
    not skipped. Example: ``[p.name for p in list_profiles()]``.
    """
    return [load_profile(path) for _, path in sorted(_profile_files().items())]


def load_profile(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """A profile by name (``"jetson-orin-nano"``) or by the path of a TOML file.

    Raises UnknownProfileError (with the nearest names) or ProfileFormatError (naming the file
    and the key).
    """
    text = os.fspath(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        return _parse(Path(text))
    files = _profile_files()
    if text not in files:
        names = sorted(files)
        raise UnknownProfileError(text, difflib.get_close_matches(text, names, n=3), names)
    return _parse(files[text])


class _Reader:
    """Typed access to one table of a profile, rejecting unknown keys."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, reason: str) -> ProfileFormatError:
        return ProfileFormatError(self.path, self.key(name), reason)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if isinstance(value, bool) and kind in (int, float):
            raise self.fail(name, f"must be {kind.__name__}, got a boolean")
        if not isinstance(value, kind):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(name, f"must be {expected}, got {type(value).__name__} {value!r}")
        return value

    def required(self, name: str, kind: type) -> Any:
        value = self.get(name, kind)
        if value is None:
            raise self.fail(name, "is required")
        return value

    def at_least(self, name: str, minimum: int, default: int | None = None) -> Any:
        """An int >= ``minimum`` (a value the runtime would reject must fail here, naming the
        file and the key, not later inside EdgeModel)."""
        value = self.get(name, int, default)
        if value is not None and value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, list, [])
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "must be a list of strings")
        return tuple(value)

    def choice(self, name: str, options: Sequence[str], default: str | None = None) -> Any:
        value = self.get(name, str, default)
        if value is not None and value not in options:
            hint = difflib.get_close_matches(value, options, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise self.fail(name, f"must be one of {list(options)}, got {value!r}{more}")
        return value

    def table_of(self, name: str) -> _Reader:
        value = self.get(name, dict, {})
        return _Reader(self.path, value, f"{self.key(name)}.")

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            known = sorted(self.used)
            hint = difflib.get_close_matches(unknown[0], known, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
            raise ProfileFormatError(self.path, self.key(unknown[0]), f"unknown key{more}")


def _parse(path: Path) -> DeviceProfile:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ProfileFormatError(path, None, "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileFormatError(path, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 by definition (toml.io, "Spec"); tomllib raises this, not its own error.
        raise ProfileFormatError(path, None, f"not UTF-8 text (TOML must be): {exc}") from None
    except OSError as exc:
        raise ProfileFormatError(path, None, exc.strerror or str(exc)) from None
    top = _Reader(path, data, "")
    schema = top.get("schema", int)
    if schema != SCHEMA_VERSION:
        raise top.fail("schema", f"must be {SCHEMA_VERSION}, got {schema!r}")
    name = top.get("name", str)
    if name != path.stem:
        raise top.fail("name", f"must equal the file name {path.stem!r}, got {name!r}")
    title = top.get("title", str, name)
    family = top.choice("family", FAMILIES)
    arch = top.choice("arch", ARCHES)
    if family is None or arch is None:
        raise top.fail("family" if family is None else "arch", "is required")
    onnxruntime = top.get("onnxruntime", str)
    if onnxruntime is not None and not _VERSION.fullmatch(onnxruntime):
        raise top.fail("onnxruntime", f"must be a version like '1.17', got {onnxruntime!r}")

    rule = top.table_of("detect")
    expect = rule.table_of("expect")
    detect = DetectRule(
        model=rule.strings("model"),
        compatible=rule.strings("compatible"),
        cpu_implementer=tuple(v.lower() for v in rule.strings("cpu_implementer")),
        cpu_part=tuple(v.lower() for v in rule.strings("cpu_part")),
        vendor_id=rule.strings("vendor_id"),
        files=rule.strings("files"),
        devices=rule.strings("devices"),
        userland=rule.choice("userland", tuple(USERLANDS)),
        priority=rule.get("priority", int, 0),
        expect_files=expect.strings("files"),
        expect_message=expect.get("message", str, ""),
        warning=rule.get("warning", str, ""),
    )
    expect.done()
    rule.done()

    providers: list[ProviderSpec] = []
    entries = top.get("providers", list, [])
    if not entries:
        raise top.fail("providers", "needs at least one [[providers]] entry")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise top.fail(f"providers[{index}]", "must be a table")
        reader = _Reader(path, entry, f"providers[{index}].")
        provider_name = reader.get("name", str)
        if not provider_name or not provider_name.endswith("ExecutionProvider"):
            raise reader.fail(
                "name",
                f"must name an execution provider (like 'CPUExecutionProvider'), "
                f"got {provider_name!r}",
            )
        if provider_name in (p.name for p in providers):
            raise reader.fail("name", f"{provider_name!r} is listed twice")
        options = reader.get("options", dict, {})
        optional = reader.get("optional", bool, False)
        for key, value in options.items():
            # onnxruntime hands provider options over as strings; a table or a list here
            # would be turned into Python's repr of it, which no provider parses.
            if not isinstance(value, (str, int, float, bool)):
                raise reader.fail(
                    f"options.{key}",
                    f"must be a string, number or boolean, got {type(value).__name__}",
                )
        reader.done()
        providers.append(ProviderSpec(provider_name, MappingProxyType(dict(options)), optional))

    session = top.table_of("session")
    session_values = {
        "intra_op_threads": session.at_least("intra_op_threads", 0),
        "inter_op_threads": session.at_least("inter_op_threads", 0),
        "allow_spinning": session.get("allow_spinning", bool),
        "graph_optimization": session.choice(
            "graph_optimization", ("disable", "basic", "extended", "all")
        ),
    }
    session.done()

    budgets_table = top.table_of("budgets")
    budgets = Budgets(
        memory_mb=budgets_table.at_least("memory_mb", 1),
        storage_mb=budgets_table.at_least("storage_mb", 1),
    )
    budgets_table.done()

    precision_table = top.table_of("precision")
    precision = precision_table.choice("preferred", PRECISIONS, "fp32")
    precision_table.done()

    kernels_table = top.table_of("kernels")
    kernels = KernelSettings(
        cache_dir=kernels_table.get("cache_dir", str),
        threads=kernels_table.at_least("threads", 1, 1),
        helper_thread=kernels_table.get("helper_thread", bool, True),
    )
    kernels_table.done()

    environment_table = top.table_of("environment")
    environment = {}
    for key in list(environment_table.table):
        environment[key] = environment_table.get(key, str)
    environment_table.done()

    thermal = top.table_of("thermal")
    zones = thermal.strings("zones")
    thermal.done()

    accelerator = None
    # Marked as known even when absent, so that a misspelt table name gets it as the hint.
    top.used.add("accelerator")
    if "accelerator" in data:
        table = top.table_of("accelerator")
        dtypes = table.strings("dtypes")
        for dtype in dtypes:
            if dtype not in DTYPES:
                hint = difflib.get_close_matches(dtype, DTYPES, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {list(DTYPES)})"
                raise table.fail("dtypes", f"unknown dtype {dtype!r}{more}")
        accelerator = Accelerator(
            name=table.required("name", str),
            provider=table.required("provider", str),
            ops=frozenset(table.strings("ops")),
            dtypes=dtypes,
            quantized_only=table.get("quantized_only", bool, False),
            required=table.get("required", bool, False),
            notes=table.get("notes", str, ""),
        )
        table.done()
        if accelerator.provider not in [p.name for p in providers]:
            raise ProfileFormatError(
                path,
                "accelerator.provider",
                f"{accelerator.provider!r} is not in [[providers]] "
                f"({', '.join(p.name for p in providers)})",
            )
    top.done()
    return DeviceProfile(
        name=name,
        title=title,
        family=family,
        arch=arch,
        path=str(path),
        detect=detect,
        providers=tuple(providers),
        onnxruntime=onnxruntime,
        session=MappingProxyType({k: v for k, v in session_values.items() if v is not None}),
        budgets=budgets,
        precision=precision,
        kernels=kernels,
        environment=MappingProxyType(environment),
        thermal_zones=zones,
        accelerator=accelerator,
    )


# --------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class _Facts:
    model: str
    compatible: tuple[str, ...]
    cpuinfo: Mapping[str, tuple[str, ...]]
    userland: str | None


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b"\n").decode("utf-8", "replace")
    except OSError:
        return ""


def _existing(root: Path, pattern: str) -> Path | None:
    """The first path under ``root`` that ``pattern`` (absolute, wildcards allowed) names."""
    relative = pattern.lstrip("/")
    if not _WILDCARDS.search(relative):
        candidate = root / relative
        return candidate if candidate.exists() else None
    return next(iter(sorted(root.glob(relative))), None)


def _shown(root: Path, found: Path) -> str:
    """A found path as it is on the device (the root stripped)."""
    try:
        return "/" + found.relative_to(root).as_posix()
    except ValueError:
        return str(found)


def _running_userland() -> str | None:
    """The userland this Python itself belongs to (its pointer size and the machine)."""
    machine = platform.machine().lower()
    bits = struct.calcsize("P") * 8
    if machine in ("x86_64", "amd64") and bits == 64:
        return "x86_64"
    if machine.startswith(("aarch64", "arm64", "armv8", "armv7", "armv6", "arm")):
        return "aarch64" if bits == 64 else "armhf"
    return None


def _is_running_system(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def _userland(root: Path, cpuinfo: Mapping[str, tuple[str, ...]]) -> str | None:
    present = [
        name
        for name, loaders in USERLANDS.items()
        if any((root / loader).exists() for loader in loaders)
    ]
    if len(present) > 1 and _is_running_system(root):
        # On the machine itself, the interpreter that will run the SDK decides: a 32-bit
        # Raspberry Pi OS with the arm64 loader installed (libc6:arm64) is still a 32-bit
        # userland for this Python, with no numba and no onnxruntime wheel.
        running = _running_userland()
        if running in present:
            return running
    if len(present) > 1 and "x86_64" in present and cpuinfo.get("vendor_id"):
        # An x86 host with foreign loaders installed (multiarch libraries for qemu-user).
        return "x86_64"
    # Otherwise the first: a 64-bit ARM system with armhf multiarch libraries is still 64-bit.
    return present[0] if present else None


def _facts(root: Path) -> _Facts:
    model = ""
    compatible: tuple[str, ...] = ()
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        if not model:
            model = _read(root / base / "model").strip()
        if not compatible:
            compatible = tuple(c for c in _read(root / base / "compatible").split("\n") if c)
    cpuinfo: dict[str, list[str]] = {}
    for line in _read(root / "proc/cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            cpuinfo.setdefault(key.strip().lower(), []).append(value.strip())
    frozen = {k: tuple(v) for k, v in cpuinfo.items()}
    return _Facts(model, compatible, frozen, _userland(root, frozen))


def _match(profile: DeviceProfile, facts: _Facts, root: Path) -> list[str] | None:
    """The evidence if every condition of the profile's rule holds, else None."""
    rule = profile.detect
    evidence: list[str] = []
    checks = 0
    if rule.model:
        checks += 1
        hit = next((m for m in rule.model if m in facts.model), None)
        if hit is None:
            return None
        evidence.append(f"device-tree model {facts.model!r} contains {hit!r}")
    if rule.compatible:
        checks += 1
        hit = next((c for c in rule.compatible for f in facts.compatible if c in f), None)
        if hit is None:
            return None
        evidence.append(f"device-tree compatible has {hit!r}")
    for key, wanted in (
        ("cpu implementer", rule.cpu_implementer),
        ("cpu part", rule.cpu_part),
        ("vendor_id", rule.vendor_id),
    ):
        if wanted:
            checks += 1
            values = {v.lower() for v in facts.cpuinfo.get(key, ())}
            hits = [w for w in wanted if w.lower() in values]
            if not hits:
                return None
            evidence.append(f"/proc/cpuinfo {key} {hits[0]}")
    for name in rule.files:
        checks += 1
        found = _existing(root, name)
        if found is None:
            return None
        evidence.append(f"{_shown(root, found)} exists")
    if rule.devices:
        checks += 1
        found = next((f for d in rule.devices if (f := _existing(root, d)) is not None), None)
        if found is None:
            return None
        evidence.append(f"device node {_shown(root, found)} exists")
    if rule.userland:
        checks += 1
        if facts.userland != rule.userland:
            return None
        evidence.append(f"{rule.userland} userland (its dynamic loader is present)")
    return evidence if checks else None


def _warnings(profile: DeviceProfile, root: Path, *, detected: bool) -> list[str]:
    """What to say about a profile: its own warning when detection picked it (a generic one),
    and the expected files that are missing."""
    warnings = [profile.detect.warning] if detected and profile.detect.warning else []
    missing = [f for f in profile.detect.expect_files if _existing(root, f) is None]
    if missing:
        message = profile.detect.expect_message or "expected files are missing"
        warnings.append(f"{message} (missing: {', '.join(missing)})")
    return warnings


def _host_arch(facts: _Facts) -> str:
    """The architecture when no profile matched: from the userland, the CPU, or Python."""
    if facts.userland:
        return _USERLAND_ARCH[facts.userland]
    if facts.cpuinfo.get("vendor_id"):
        return "x86_64"
    architecture = facts.cpuinfo.get("cpu architecture", ("",))[0]
    if architecture in ("8", "aarch64"):
        return "aarch64"
    if architecture == "7":
        return "armv7l"
    # Last resort: a 64-bit kernel under a 32-bit userland reports aarch64 here too.
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine.startswith("arm"):
        return "armv7l"
    return "x86_64"


def detect(
    root: str | os.PathLike[str] = "/", profiles: Sequence[DeviceProfile] | None = None
) -> Detection:
    """The profile of the machine whose file system is at ``root``.

    ``EDGE_SDK_PROFILE`` names a profile and skips detection. Otherwise every profile's
    ``[detect]`` rule is checked against /proc, /sys, /etc, /lib and /dev under ``root``; the
    matching profile of highest priority wins (generic ones have low priority). No match
    falls back to the generic profile of the host's architecture, with a warning.

    Raises UnknownProfileError when ``EDGE_SDK_PROFILE`` names no profile or nothing can stand
    in, ProfileFormatError when a profile is malformed. Example: ``detect("/").profile.name``.
    """
    base = Path(root)
    forced = os.environ.get("EDGE_SDK_PROFILE")
    if forced:
        profile = load_profile(forced)
        return Detection(
            profile,
            (f"EDGE_SDK_PROFILE={forced}",),
            tuple(_warnings(profile, base, detected=False)),
            forced=True,
        )
    candidates = list_profiles() if profiles is None else list(profiles)
    facts = _facts(base)
    best: tuple[int, int, DeviceProfile, list[str]] | None = None
    for profile in candidates:
        evidence = _match(profile, facts, base)
        if evidence is None:
            continue
        rank = (profile.detect.priority, len(evidence))
        if best is None or rank > best[:2]:
            best = (*rank, profile, evidence)
    if best is None:
        arch = _host_arch(facts)
        fallback = next(
            (p for p in candidates if p.name == f"generic-{arch.replace('_', '-')}"), None
        )
        if fallback is None:
            fallback = next((p for p in candidates if p.arch == arch), None)
        if fallback is None:
            raise UnknownProfileError(f"(detected {arch})", [], [p.name for p in candidates])
        return Detection(
            fallback,
            (f"no profile matched; {arch} {'userland' if facts.userland else 'guessed'}",),
            (f"no device profile matched this machine; using {fallback.name}",),
        )
    _, _, profile, evidence = best
    return Detection(profile, tuple(evidence), tuple(_warnings(profile, base, detected=True)))


def resolve_profile(profile: str | DeviceProfile | None) -> Detection | None:
    """``"auto"`` -> detect(); a name or path -> that profile; None -> None."""
    if profile is None:
        return None
    if isinstance(profile, DeviceProfile):
        return Detection(profile, ("given",))
    if profile == "auto":
        return detect()
    return Detection(load_profile(profile), (f"named {profile!r}",))
