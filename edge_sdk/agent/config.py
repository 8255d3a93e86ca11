"""The device agent's configuration file, ``agent.toml`` (docs/agent.md).

Example::

    device_id = "cam-01"
    fleet = "factory-7"
    groups = ["line-2", "canary"]
    broker = "mqtts://broker.example.com:8883"
    username = "cam-01"
    password_file = "/etc/edge-sdk/mqtt-password"
    store = "/var/lib/edge-sdk/store"
    trusted_keys = ["/etc/edge-sdk/fleet.pub"]
    profile = "auto"

    [tls]
    ca = "/etc/edge-sdk/ca.pem"
    cert = "/etc/edge-sdk/cam-01.pem"
    key = "/etc/edge-sdk/cam-01.key"

Relative paths are relative to the file's directory. Every mistake is an AgentConfigError that
names the file and the setting. The files it names are read later, when the agent starts
(``check_tls_files`` checks the ``[tls]`` ones), so a config may be written before they exist.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_sdk.errors import AgentConfigError, EdgeSDKError
from edge_sdk.release import (
    TrustedKey,
    TrustStore,
    check_safe_name,
    load_public_key,
    parse_timestamp,
)

_log = logging.getLogger("edge_sdk.agent")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "RESTART_EXIT_STATUS",
    "AgentConfig",
    "check_tls_files",
    "device_profile_of",
    "load_agent_config",
    "load_trust",
]

_KEYS = frozenset(
    {
        "device_id",
        "fleet",
        "groups",
        "broker",
        "username",
        "password",
        "password_file",
        "client_id",
        "store",
        "trusted_keys",
        "profile",
        "window",
        "request_timeout",
        "keep_previous",
        "protocol",
        "keepalive",
        "session_expiry",
        "reconnect_max",
        "tls",
        "smoke_runs",
        "update_timeout",
        "telemetry_interval",
        "telemetry_spool",
        "telemetry_max_reports",
    }
)
_TLS_KEYS = frozenset({"ca", "cert", "key"})


@dataclass(frozen=True)
class AgentConfig:
    """A device agent's settings; see the module docstring for the file format."""

    device_id: str
    fleet: str
    broker: str
    store: Path
    trusted_keys: tuple[Path, ...]
    groups: tuple[str, ...] = ()
    # Per trusted key (same order): when the device stops trusting it (key rotation), or None.
    trusted_keys_expire: tuple[datetime | None, ...] = ()
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    profile: str | None = "auto"
    window: int = 16
    request_timeout: float = 10.0
    keep_previous: int = 2
    protocol: int = 5
    keepalive: int = 30
    # One week: a device offline longer than this loses commands queued for it (its desired
    # state is retained and still reaches it).
    session_expiry: int = 7 * 24 * 3600
    reconnect_max: int = 60
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    smoke_runs: int = 3
    # An update not finished after this many seconds ends timed_out (the AWS IoT Jobs state);
    # newer desired state starts it again.
    update_timeout: float = 24 * 3600.0
    # Seconds between telemetry reports; 0 turns telemetry off.
    telemetry_interval: float = 60.0
    # The spool every process on the device writes to (docs/telemetry.md); None: telemetry.db
    # beside the store.
    telemetry_spool: Path | None = None
    telemetry_max_reports: int = 10_000
    source: str = "agent config"

    @property
    def effective_telemetry_spool(self) -> Path:
        return self.telemetry_spool or self.store.parent / "telemetry.db"

    @property
    def effective_client_id(self) -> str:
        # Unique per device: a second client with the same id silently kicks the first.
        return self.client_id or f"edge-sdk-agent-{self.device_id}"


def _fail(source: str, key: str | None, reason: str) -> AgentConfigError:
    return AgentConfigError(source, key, reason)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise _fail(source, key, f"expected {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise _fail(source, key, f"expected {expected}, got {type(value).__name__} {value!r}")
    return value


def _interval(data: dict[str, Any], source: str) -> float:
    value = _typed(data, "telemetry_interval", (int, float), source)
    if value is None:
        return 60.0
    if not math.isfinite(value) or value < 0:
        raise _fail(source, "telemetry_interval", f"seconds >= 0 (0: off), got {value}")
    return float(value)


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and check ``agent.toml``. Raises AgentConfigError naming the file and setting."""
    file = Path(path)
    source = str(file)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise _fail(source, None, "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise _fail(source, None, "not UTF-8 text (TOML must be)") from None
    except OSError as exc:
        raise _fail(source, None, exc.strerror or str(exc)) from None
    return config_from_dict(data, base=file.parent, source=source)


def config_from_dict(
    data: dict[str, Any], *, base: Path | None = None, source: str = "agent config"
) -> AgentConfig:
    """Check a configuration given as a dict (the parsed TOML)."""
    base = base or Path.cwd()
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown setting (known: {', '.join(sorted(_KEYS))})")

    def path_of(value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    def required(key: str) -> Any:
        value = _typed(data, key, str, source)
        if not value:
            raise _fail(source, key, "required")
        return value

    names = {}
    for key in ("device_id", "fleet"):
        value = required(key)
        try:
            names[key] = check_safe_name(value, field=key)
        except EdgeSDKError as exc:
            raise _fail(source, key, str(exc)) from None
    groups = _typed(data, "groups", list, source) or []
    for group in groups:
        if not isinstance(group, str):
            raise _fail(source, "groups", f"expected names, got {group!r}")
        try:
            check_safe_name(group, field="group")
        except EdgeSDKError as exc:
            raise _fail(source, "groups", str(exc)) from None
    broker = required("broker")
    from edge_sdk._mqtt_url import parse_broker_url

    try:
        parse_broker_url(broker)
    except ValueError as exc:
        raise _fail(source, "broker", str(exc)) from None
    password = _typed(data, "password", str, source)
    password_file = _typed(data, "password_file", str, source)
    if password is not None and password_file is not None:
        raise _fail(source, "password_file", "give password or password_file, not both")
    if password_file is not None:
        try:
            password = path_of(password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(source, "password_file", f"cannot read it: {exc}") from None
    keys = _typed(data, "trusted_keys", list, source)
    if not keys:
        raise _fail(source, "trusted_keys", "required: the fleet's public key files")
    trusted = []
    expiries: list[datetime | None] = []
    for item in keys:
        entry = item
        # "fleet.pub", or {file = "old.pub", expires_at = "2027-01-01T00:00:00Z"} for a key
        # being rotated out (docs/release-manifest.md, "Key rotation").
        expires_at = None
        if isinstance(entry, dict):
            unknown_entry = sorted(set(entry) - {"file", "expires_at"})
            if unknown_entry or not isinstance(entry.get("file"), str):
                raise _fail(
                    source,
                    "trusted_keys",
                    f"expected {{file = ..., expires_at = ...}}, got {entry!r}",
                )
            moment = entry.get("expires_at")
            if moment is not None:
                if isinstance(moment, datetime):  # a TOML date-time
                    if moment.tzinfo is None:
                        raise _fail(source, "trusted_keys", "expires_at needs a time zone (Z)")
                    expires_at = moment
                elif isinstance(moment, str):
                    try:
                        expires_at = parse_timestamp(moment, field="expires_at")
                    except EdgeSDKError as exc:
                        raise _fail(source, "trusted_keys", str(exc)) from None
                else:
                    raise _fail(source, "trusted_keys", f"expires_at: got {moment!r}")
            entry = entry["file"]
        if not isinstance(entry, str):
            raise _fail(source, "trusted_keys", f"expected file names, got {entry!r}")
        trusted.append(path_of(entry))
        expiries.append(expires_at)
    profile = _typed(data, "profile", str, source)
    if profile in ("none", ""):
        profile = None
    elif profile is None:
        profile = "auto"

    def positive(key: str, default: Any, kind: type | tuple[type, ...] = int) -> Any:
        value = _typed(data, key, kind, source)
        if value is None:
            return default
        if not math.isfinite(value) or value <= 0:
            raise _fail(source, key, f"must be a positive, finite number, got {value}")
        return value

    window = positive("window", 16)
    if window > 256:
        raise _fail(source, "window", f"at most 256 chunks, got {window}")
    protocol = _typed(data, "protocol", (int, str), source) or 5
    protocol = {"5": 5, "3.1.1": 4, "4": 4, 5: 5, 4: 4}.get(protocol)
    if protocol is None:
        raise _fail(source, "protocol", 'expected 5 or "3.1.1"')
    keep_previous = _typed(data, "keep_previous", int, source)
    if keep_previous is not None and keep_previous < 0:
        raise _fail(source, "keep_previous", "must be 0 or more")
    tls = _typed(data, "tls", dict, source) or {}
    unknown_tls = sorted(set(tls) - _TLS_KEYS)
    if unknown_tls:
        raise _fail(source, f"tls.{unknown_tls[0]}", "unknown setting (known: ca, cert, key)")
    tls_paths = {}
    for key in ("ca", "cert", "key"):
        value = _typed(tls, key, str, source)
        tls_paths[key] = path_of(value) if value else None
    if (tls_paths["cert"] is None) != (tls_paths["key"] is None):
        raise _fail(source, "tls", "give both cert and key for client certificates")
    return AgentConfig(
        device_id=names["device_id"],
        fleet=names["fleet"],
        groups=tuple(groups),
        broker=broker,
        username=_typed(data, "username", str, source),
        password=password,
        client_id=_typed(data, "client_id", str, source),
        store=path_of(required("store")),
        trusted_keys=tuple(trusted),
        trusted_keys_expire=tuple(expiries),
        profile=profile,
        window=window,
        request_timeout=float(positive("request_timeout", 10.0, (int, float))),
        keep_previous=2 if keep_previous is None else keep_previous,
        protocol=protocol,
        keepalive=positive("keepalive", 30),
        session_expiry=positive("session_expiry", 7 * 24 * 3600),
        reconnect_max=positive("reconnect_max", 60),
        tls_ca=tls_paths["ca"],
        tls_cert=tls_paths["cert"],
        tls_key=tls_paths["key"],
        smoke_runs=positive("smoke_runs", 3),
        update_timeout=float(positive("update_timeout", 24 * 3600.0, (int, float))),
        telemetry_interval=_interval(data, source),
        telemetry_spool=(
            path_of(data["telemetry_spool"])
            if isinstance(data.get("telemetry_spool"), str)
            else None
        ),
        telemetry_max_reports=positive("telemetry_max_reports", 10_000),
        source=source,
    )


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def check_tls_files(config: AgentConfig) -> None:
    """Load the ``[tls]`` files as the MQTT connection will, before it does: AgentConfigError
    naming the setting (``tls.ca``, ``tls.cert``, ``tls.key``) and the file when one cannot be
    read, holds no PEM certificate, or the key does not belong to the certificate. Meant for
    the agent's start-up, when ``trusted_keys`` are read too.

        check_tls_files(load_agent_config("/etc/edge-sdk/agent.toml"))
    """
    import ssl

    source = config.source
    named = (("tls.ca", config.tls_ca), ("tls.cert", config.tls_cert), ("tls.key", config.tls_key))
    for field, path in named:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise _fail(source, field, f"cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=str(config.tls_ca))
        except ssl.SSLError as exc:
            detail = f" ({exc.reason})" if exc.reason else ""
            raise _fail(
                source, "tls.ca", f"{config.tls_ca} holds no PEM certificate{detail}"
            ) from None
    if config.tls_cert is None or config.tls_key is None:
        return
    try:
        # A passphrase callback that refuses: without one OpenSSL would prompt on the terminal
        # for an encrypted key, and a service would hang there.
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key), password=_no_passphrase)
    except _EncryptedKey:
        raise _fail(
            source,
            "tls.key",
            f"{config.tls_key} is encrypted; the agent needs it unencrypted (mode 0600)",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _fail(
                source, "tls.key", f"{config.tls_key} is not the key of {config.tls_cert}"
            ) from None
        detail = f" ({exc.reason})" if exc.reason else ""
        raise _fail(
            source,
            "tls.cert",
            f"{config.tls_cert} and {config.tls_key} are not a PEM certificate and its key{detail}",
        ) from None


#: What an agent's ``run`` returns after a ``restart`` command: ``edge-sdk agent`` then executes
#: itself again (or, with ``--restart-exit``, exits with it for systemd's ``Restart=``).
RESTART_EXIT_STATUS = 75


def load_trust(config: AgentConfig) -> TrustStore:
    """The fleet keys the device trusts (``trusted_keys``), each until its expiry if given."""
    keys = []
    expiries = config.trusted_keys_expire or (None,) * len(config.trusted_keys)
    for path, expires_at in zip(config.trusted_keys, expiries, strict=True):
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise AgentConfigError(
                config.source, "trusted_keys", f"cannot read {path}: {exc.strerror or exc}"
            ) from None
        keys.append(TrustedKey(load_public_key(text, source=str(path)), expires_at))
    try:
        return TrustStore(keys)
    except ValueError as exc:
        raise AgentConfigError(config.source, "trusted_keys", str(exc)) from None


def device_profile_of(config: AgentConfig) -> tuple[str | None, int | None, tuple[str, ...]]:
    """The device profile's name, storage budget in bytes and thermal zones."""
    if config.profile is None:
        return None, None, ()
    from edge_sdk.errors import ProfileError
    from edge_sdk.profiles import detect, load_profile

    try:
        profile = detect().profile if config.profile == "auto" else load_profile(config.profile)
    except ProfileError as exc:
        if config.profile != "auto":
            raise
        _log.warning("no device profile: %s", exc)
        return None, None, ()
    budget = profile.budgets.storage_mb
    return (
        profile.name,
        None if budget is None else budget * 1024 * 1024,
        tuple(profile.thermal_zones),
    )
