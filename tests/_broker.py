"""A real Mosquitto 2.x broker for tests, on a free loopback port with a generated config.

``MosquittoBroker`` writes a config, a password file and an ACL file into its own directory
(a test's ``tmp_path``), starts ``mosquitto -c`` as a child process in its own session, waits
until it has opened its listener and accepts a TCP connection, and ends it by pid: ``stop()``
(SIGTERM, which saves the persistence database, then SIGKILL), ``kill()`` (SIGKILL: a broker
crash), ``restart()`` (same port, same persistence directory). It never touches the system
service that Debian's ``mosquitto`` package starts on port 1883.

Facts about the config are from mosquitto.conf(5) for 2.0 (https://mosquitto.org/man/mosquitto-conf-5.html,
and the Debian 12 package's own man page, 2.0.11) and "Migrating from 1.x to 2.0"
(https://mosquitto.org/documentation/migrating-to-2-0/); field notes in shared/NOTES.md
("MQTT and Mosquitto 2.0"). docs/mqtt-broker.md explains the choices.

    with MosquittoBroker(tmp_path / "broker", devices=("dev-1", "dev-2")) as broker:
        creds = broker.device("dev-1")   # Credentials(username="dev-1", password=...)
        client.username_pw_set(creds.username, creds.password)
        client.connect(broker.host, broker.port)

Also here: ``require_program`` (skip a test when a real peer is not installed, or fail it
under ``EDGE_SDK_REQUIRE_PEERS=1``), ``PahoPeer``, a raw paho-mqtt 2.x client with timeouts
for tests that watch or forge traffic, and for TLS ``BrokerTLS`` (the listener's certificate
options) and ``TestCertificateAuthority`` (a throw-away CA made with the cryptography package
that issues server and client certificates, expired ones included). The ``mosquitto`` and
``mosquitto_factory`` fixtures are in conftest.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: Set to 1 by .ci/run: a real peer that is not installed fails the test instead of skipping it.
REQUIRE_PEERS_ENV = "EDGE_SDK_REQUIRE_PEERS"

#: The Debian packages that provide ``mosquitto`` and ``mosquitto_passwd`` (and the
#: ``mosquitto_pub``/``mosquitto_sub`` clients handy when debugging a test by hand).
MOSQUITTO_PACKAGES = ("mosquitto", "mosquitto-clients")

# Debian installs the broker as /usr/sbin/mosquitto, which is not on an ordinary user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

#: Topic root of a fleet (DESIGN.md, "Fleet channel over MQTT").
TOPIC_ROOT = "edge/v1/{fleet}/"

# ACL lines, ``<access> <topic>``, written as ``topic <access> <topic>`` under ``user <name>``.
# mosquitto.conf(5), acl_file: access is read | write | readwrite | deny, topics may hold the
# + and # wildcards, and "deny" lines are applied before any grant. The placeholders are
# filled with str.format: {fleet} everywhere, {device} in device lines.
#: A device owns its own tree and reads what the fleet publishes to it (DESIGN.md).
DEVICE_ACL = (
    "readwrite edge/v1/{fleet}/devices/{device}/#",
    "read edge/v1/{fleet}/releases/+/+/manifest",
    # Chunks a release server sends to this device only: no device reads another's stream.
    "read edge/v1/{fleet}/releases/+/+/blocks/{device}",
    "read edge/v1/{fleet}/desired/devices/{device}",
    "read edge/v1/{fleet}/desired/groups/#",
)
#: The release server owns the releases tree and reads what devices publish in theirs
#: (block requests of an AWS-style file stream), never desired state or commands.
RELEASE_SERVER_ACL = (
    "readwrite edge/v1/{fleet}/releases/#",
    "read edge/v1/{fleet}/devices/+/#",
)
#: The operator (fleet CLI, tests) may do anything. ``#`` does not match ``$SYS/...`` topics.
OPERATOR_ACL = ("readwrite #",)

_ACCESS = frozenset({"read", "write", "readwrite", "deny"})
# One topic level that is safe in a username, a topic and a config line: no wildcard, no
# separator, no whitespace, no ':' (the password file's separator).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information")


class BrokerError(RuntimeError):
    """The broker could not be started or stopped; the message carries the end of its log."""


class BrokerState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A username and password in the broker's password file."""

    username: str
    password: str = dataclasses.field(repr=False)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def find_program(name: str) -> str | None:
    """``shutil.which(name)``, also looking in the sbin directories a user's PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_program(name: str, *, packages: Sequence[str], purpose: str) -> str:
    """The path of ``name``; if it is not installed, skip the test, or fail it when
    ``EDGE_SDK_REQUIRE_PEERS=1`` (CI must not go green by skipping its real peers)."""
    path = find_program(name)
    if path is not None:
        return path
    install = f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"
    message = (
        f"{name} is not installed ({purpose}). Install it with `{install}` "
        "(./scripts/test does this itself when run as root)."
    )
    if _truthy(os.environ.get(REQUIRE_PEERS_ENV)):
        pytest.fail(f"{message} {REQUIRE_PEERS_ENV} is set, so this is a failure.", pytrace=False)
    pytest.skip(message)


def require_mosquitto() -> tuple[str, str]:
    """Paths of ``mosquitto`` and ``mosquitto_passwd``, or skip/fail as ``require_program``."""
    purpose = "the real MQTT broker of the fleet tests"
    broker = require_program("mosquitto", packages=MOSQUITTO_PACKAGES, purpose=purpose)
    passwd = require_program("mosquitto_passwd", packages=MOSQUITTO_PACKAGES, purpose=purpose)
    return broker, passwd


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago. Another process may take it before mosquitto
    binds it: ``MosquittoBroker.start`` retries with a new one when that happens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class BrokerTLS:
    """Certificate-based TLS on the broker's listener (mosquitto.conf(5), "Certificate based
    SSL/TLS Support"): ``certfile``/``keyfile`` are the server's certificate and key;
    ``cafile`` the CA certificates trusted for *client* certificates; ``require_certificate``
    refuses a client without a valid certificate from ``cafile`` before any MQTT is spoken;
    ``use_identity_as_username`` takes the username from the certificate's CN (the password
    file is then not consulted); ``tls_version`` is the minimum version (2.0 semantics)."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False
    tls_version: str | None = "tlsv1.2"

    def __post_init__(self) -> None:
        if self.require_certificate and self.cafile is None:
            raise ValueError("require_certificate needs cafile: the CA of client certificates")
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError("use_identity_as_username needs require_certificate")
        if self.tls_version not in (None, "tlsv1.1", "tlsv1.2", "tlsv1.3"):
            raise ValueError(f"tls_version: tlsv1.1, tlsv1.2 or tlsv1.3, got {self.tls_version!r}")

    def config_lines(self) -> list[str]:
        """The listener options, in the order mosquitto.conf(5) describes them."""
        lines = []
        if self.cafile is not None:
            lines.append(f"cafile {self.cafile}")
        lines += [f"certfile {self.certfile}", f"keyfile {self.keyfile}"]
        if self.require_certificate:
            lines.append("require_certificate true")
        if self.use_identity_as_username:
            lines.append("use_identity_as_username true")
        if self.tls_version is not None:
            lines.append(f"tls_version {self.tls_version}")
        return lines


class MosquittoBroker:
    """A mosquitto process with authentication, per-user ACLs and optional persistence.

    Users: ``operator`` (full access), ``release_server`` and one per device id, each with a
    random password (``credentials(name)``, ``device(id)``). Keyword-only settings:

    - ``persistence``: keep retained messages, sessions and queued QoS 1 messages in
      ``persistence_dir`` across ``restart()``; ``autosave_interval`` seconds between saves
      (0: only on SIGTERM and ``save()``; mosquitto's own default is 1800).
    - ``max_inflight_messages`` (broker default 20: the download window of a device, NOTES.md),
      ``max_queued_messages`` (default 1000), ``message_size_limit`` (payload bytes; an
      over-size publish is dropped), ``max_packet_size`` (whole packet; the sender is
      disconnected): None leaves mosquitto's default.
    - ``use_username_as_clientid``: stop a client from taking over another's session by reusing
      its client id (but then each user can hold only one connection).
    - ``device_acl``, ``release_server_acl``, ``operator_acl``: ``"<access> <topic>"`` lines
      with ``{fleet}`` and ``{device}`` placeholders; ``extra_config``: raw config lines.
    - ``tls``: a ``BrokerTLS`` for the listener (``url`` is then ``mqtts://``).
    - ``acl_text``: the whole ACL file instead of the per-user blocks made from the templates;
      ``config``: a function of the broker returning the whole config instead of the generated
      one (a documented config rendered with this broker's port and paths). It must log to
      ``log_path``: the broker counts as up once mosquitto logs "running" there.

    Raises ``BrokerError`` when mosquitto does not come up within ``start_timeout`` seconds.
    Reusable after ``stop()``/``kill()`` (``start()`` or ``restart()``), not after ``close()``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        fleet: str = "fleet-1",
        devices: Iterable[str] = ("device-1", "device-2", "device-3"),
        operator: str = "operator",
        release_server: str = "release-server",
        persistence: bool = False,
        autosave_interval: int = 1,
        max_inflight_messages: int | None = None,
        max_queued_messages: int | None = None,
        message_size_limit: int | None = None,
        max_packet_size: int | None = None,
        use_username_as_clientid: bool = False,
        device_acl: Sequence[str] = DEVICE_ACL,
        release_server_acl: Sequence[str] = RELEASE_SERVER_ACL,
        operator_acl: Sequence[str] = OPERATOR_ACL,
        extra_config: Sequence[str] = (),
        tls: BrokerTLS | None = None,
        acl_text: str | None = None,
        config: Callable[[MosquittoBroker], str] | None = None,
        log_types: Sequence[str] = _DEFAULT_LOG_TYPES,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        port_attempts: int = 5,
        executable: str | None = None,
        passwd_executable: str | None = None,
    ) -> None:
        device_ids = tuple(devices)
        names = (fleet, operator, release_server, *device_ids)
        for name in names:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"not a safe name for a user or topic level: {name!r}")
        users = (operator, release_server, *device_ids)
        if len(set(users)) != len(users):
            raise ValueError(f"usernames must be unique: {users}")
        for label, value, minimum in (
            ("autosave_interval", autosave_interval, 0),
            ("max_inflight_messages", max_inflight_messages, 0),
            ("max_queued_messages", max_queued_messages, 0),
            ("message_size_limit", message_size_limit, 0),
            # mosquitto.conf(5): "Setting below 20 bytes is forbidden".
            ("max_packet_size", max_packet_size, 20),
        ):
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise ValueError(f"{label} must be an int >= {minimum}, got {value!r}")
        acls = {"device_acl": device_acl, "release_server_acl": release_server_acl}
        acls["operator_acl"] = operator_acl
        for label, lines in acls.items():
            for line in lines:
                access, _, topic = line.partition(" ")
                if access not in _ACCESS or not topic.strip():
                    raise ValueError(f"{label}: expected '<access> <topic>', got {line!r}")
        if executable is None or passwd_executable is None:
            found_broker, found_passwd = require_mosquitto()
            executable = executable or found_broker
            passwd_executable = passwd_executable or found_passwd

        self.workdir = Path(workdir)
        self.fleet = fleet
        self.host = host
        self.persistence = persistence
        self._requested_port = port
        self._port: int | None = port
        self._executable = executable
        self._passwd_executable = passwd_executable
        self._settings = {
            "autosave_interval": autosave_interval,
            "max_inflight_messages": max_inflight_messages,
            "max_queued_messages": max_queued_messages,
            "message_size_limit": message_size_limit,
            "max_packet_size": max_packet_size,
        }
        self._use_username_as_clientid = use_username_as_clientid
        self._acl_templates = (tuple(device_acl), tuple(release_server_acl), tuple(operator_acl))
        self._extra_config = tuple(extra_config)
        self.tls = tls
        self._acl_override = acl_text
        self._config_override = config
        self._log_types = tuple(log_types)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._port_attempts = max(1, port_attempts)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._state = BrokerState.NEW

        self._operator = Credentials(operator, secrets.token_urlsafe(16))
        self._release_server = Credentials(release_server, secrets.token_urlsafe(16))
        self._devices = {d: Credentials(d, secrets.token_urlsafe(16)) for d in device_ids}

    # -- what a test connects with --------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def topic_root(self) -> str:
        """``edge/v1/{fleet}/``"""
        return TOPIC_ROOT.format(fleet=self.fleet)

    @property
    def operator(self) -> Credentials:
        return self._operator

    @property
    def release_server(self) -> Credentials:
        return self._release_server

    @property
    def devices(self) -> Mapping[str, Credentials]:
        return dict(self._devices)

    def device(self, device_id: str) -> Credentials:
        return self._devices[device_id]

    def credentials(self, username: str) -> Credentials:
        for creds in (self._operator, self._release_server, *self._devices.values()):
            if creds.username == username:
                return creds
        raise KeyError(username)

    # -- files ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def password_path(self) -> Path:
        return self.workdir / "passwords"

    @property
    def acl_path(self) -> Path:
        return self.workdir / "acl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def output_path(self) -> Path:
        """mosquitto's stdout and stderr: config errors, before the log file is open."""
        return self.workdir / "mosquitto.out"

    @property
    def persistence_dir(self) -> Path:
        return self.workdir / "persistence"

    @property
    def database_path(self) -> Path:
        return self.persistence_dir / "mosquitto.db"

    # -- process -------------------------------------------------------------------------
    @property
    def state(self) -> BrokerState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process (negative: killed by that signal)."""
        return self._process.poll() if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> MosquittoBroker:
        """Write the files (first time) and start mosquitto; return when it accepts connections."""
        if self._state is BrokerState.CLOSED:
            raise RuntimeError("this MosquittoBroker is closed; make a new one")
        if self.is_running():
            raise RuntimeError(f"mosquitto is already running (pid {self.pid})")
        if self._state is BrokerState.NEW:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.persistence_dir.mkdir(exist_ok=True)
            self._write_passwords()
            self._write_acl()
        # A fixed port, or a restart (clients will reconnect to the port they know): no
        # moving to another port. A first start on a port we picked: retry on a race.
        first_start = self._state is BrokerState.NEW and self._requested_port is None
        attempts = self._port_attempts if first_start else 1
        for attempt in range(1, attempts + 1):
            if first_start:
                self._port = free_port(self.host)
            self._write_config()
            try:
                self._launch()
            except _PortTaken:
                if attempt == attempts:
                    raise BrokerError(
                        f"port {self._port} was taken before mosquitto could bind it, "
                        f"{attempts} time(s)\n{self.diagnostics()}"
                    ) from None
                continue
            self._state = BrokerState.RUNNING
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (mosquitto saves its persistence database and exits), then SIGKILL after
        ``timeout`` seconds. Returns the exit status; a no-op when it is not running."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self._stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._state is BrokerState.RUNNING:
            self._state = BrokerState.STOPPED
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL: a broker crash. What was not saved yet (see ``save()``) is lost."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if self._state is BrokerState.RUNNING:
            self._state = BrokerState.STOPPED
        return self.returncode

    def restart(self) -> MosquittoBroker:
        """Stop gracefully if running, then start again on the same port with the same files."""
        self.stop()
        return self.start()

    def save(self, timeout: float = 5.0) -> None:
        """Make mosquitto write its persistence database now (SIGUSR1, mosquitto.conf(5),
        "persistence") and wait until the file has been replaced."""
        self._require_persistence()
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        before = self._database_signature()
        process.send_signal(signal.SIGUSR1)
        self._wait_database_change(before, timeout, "after SIGUSR1")

    def wait_for_autosave(self, timeout: float | None = None) -> None:
        """Wait for the next periodic save (``autosave_interval``); everything the broker had
        acknowledged before this call is then on disk."""
        self._require_persistence()
        interval = self._settings["autosave_interval"]
        if not interval:
            raise RuntimeError("autosave_interval is 0: the broker saves only on exit or save()")
        before = self._database_signature()
        # mosquitto saves when more than `interval` whole seconds have passed since the last
        # save, so up to 2 x interval (+1 s of clock granularity) can go by.
        self._wait_database_change(before, timeout or 2 * interval + 3, "by autosave")

    def close(self) -> None:
        """End the broker: SIGTERM with persistence (it saves, as in production), SIGKILL
        without (nothing to save, and mosquitto takes about 0.1 s to act on SIGTERM, which
        adds up over a suite). Idempotent; the files stay for post-mortems."""
        if self._state is BrokerState.CLOSED:
            return
        if self.persistence:
            self.stop()
        else:
            self.kill()
        self._state = BrokerState.CLOSED

    def __enter__(self) -> MosquittoBroker:
        if self._state is BrokerState.CLOSED:
            raise RuntimeError("this MosquittoBroker is closed; make a new one")
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else self.host
        return f"<MosquittoBroker {where} pid={self.pid} {self._state.value}>"

    # -- diagnostics ---------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def diagnostics(self, lines: int = 30) -> str:
        """The end of mosquitto's output and log, for error messages."""
        try:
            output = self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            output = ""
        output_tail = "\n".join(output.splitlines()[-lines:])
        return (
            f"--- {self.output_path} (tail) ---\n{output_tail}\n"
            f"--- {self.log_path} (tail) ---\n{self.log_tail(lines)}"
        )

    # -- internals -----------------------------------------------------------------------
    def _write_passwords(self) -> None:
        # mosquitto_passwd(1): -c creates the file, -b takes the password on the command
        # line (batch mode). 2.0.0-2.0.2 used the username as the password for `-b` without
        # `-c` (fixed in 2.0.3, see its ChangeLog); the login tests would catch that.
        users = [self._operator, self._release_server, *self._devices.values()]
        self.password_path.unlink(missing_ok=True)
        for index, creds in enumerate(users):
            create = ["-c"] if index == 0 else []
            command = [self._passwd_executable, *create, "-b", str(self.password_path)]
            result = subprocess.run(
                [*command, creds.username, creds.password],
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise BrokerError(
                    f"mosquitto_passwd failed for {creds.username!r} "
                    f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                )
        # Newer 2.0.x releases warn about password and ACL files others can read.
        self.password_path.chmod(0o600)

    def _acl_text(self) -> str:
        if self._acl_override is not None:
            return self._acl_override
        device_acl, release_server_acl, operator_acl = self._acl_templates
        lines = [
            f"# Generated by tests/_broker.py for fleet {self.fleet!r}. No anonymous section:",
            "# allow_anonymous is false. Syntax: mosquitto.conf(5), acl_file.",
        ]

        def block(username: str, templates: Sequence[str], **values: str) -> None:
            lines.append(f"user {username}")
            lines.extend(f"topic {t.format(fleet=self.fleet, **values)}" for t in templates)

        block(self._operator.username, operator_acl)
        block(self._release_server.username, release_server_acl)
        for device_id, creds in self._devices.items():
            block(creds.username, device_acl, device=device_id)
        return "\n".join(lines) + "\n"

    def _write_acl(self) -> None:
        self.acl_path.write_text(self._acl_text())
        self.acl_path.chmod(0o600)

    def _config_text(self) -> str:
        if self._config_override is not None:
            text = self._config_override(self)
            if f"log_dest file {self.log_path}" not in text:
                raise ValueError(f"the config must contain 'log_dest file {self.log_path}'")
            return text
        settings = self._settings
        # When started as root, mosquitto 2.0 drops to the `mosquitto` user right after reading
        # its config (2.0.0 ChangeLog), and that user cannot read a root-owned tmp_path.
        # Naming the current user keeps it as is; for a non-root user `user` has no effect.
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# Generated by tests/_broker.py; see docs/mqtt-broker.md.",
            # "It is recommended this option be set before any other options" (mosquitto.conf):
            # password_file, acl_file and allow_anonymous then belong to the listener below
            # only, as they would on a production broker with several listeners.
            "per_listener_settings true",
            f"user {user}",
            # An explicit listener bound to loopback on our own port: never the system
            # service's 1883, never another interface.
            f"listener {self.port} {self.host}",
            # 2.0 already defaults to false once a listener is configured; said out loud.
            "allow_anonymous false",
            f"password_file {self.password_path}",
            f"acl_file {self.acl_path}",
        ]
        if self._use_username_as_clientid:
            lines.append("use_username_as_clientid true")
        if self.tls is not None:
            lines.extend(self.tls.config_lines())
        lines.append(f"persistence {'true' if self.persistence else 'false'}")
        if self.persistence:
            # Trailing slash: before 2.0.3 mosquitto concatenated location and file name.
            lines.append(f"persistence_location {self.persistence_dir}/")
            lines.append(f"autosave_interval {settings['autosave_interval']}")
        for key in (
            "max_inflight_messages",
            "max_queued_messages",
            "message_size_limit",
            "max_packet_size",
        ):
            if settings[key] is not None:
                lines.append(f"{key} {settings[key]}")
        lines.append(f"log_dest file {self.log_path}")
        lines.extend(f"log_type {log_type}" for log_type in self._log_types)
        lines.append("connection_messages true")
        lines.extend(self._extra_config)
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        self.config_path.write_text(self._config_text())

    def _launch(self) -> None:
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        with self.output_path.open("ab") as output:
            self._process = subprocess.Popen(
                [self._executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                cwd=self.workdir,
                # Its own session: a Ctrl-C on pytest does not reach it before our cleanup.
                start_new_session=True,
            )
        process = self._process
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = process.poll()
            if code is not None:
                text = self._new_log() + self._output_text()
                if "Address already in use" in text:
                    raise _PortTaken
                raise BrokerError(
                    f"mosquitto exited with status {code} while starting on "
                    f"{self.host}:{self.port} (config {self.config_path})\n{self.diagnostics()}"
                )
            # "mosquitto version X running" is logged once every listener is open; a port that
            # merely accepts could belong to whoever took it from us.
            if " running" in self._new_log() and self._accepts():
                return
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self._start_timeout} s\n{self.diagnostics()}"
                )
            time.sleep(0.005)

    def _new_log(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _output_text(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _require_persistence(self) -> None:
        if not self.persistence:
            raise RuntimeError("this broker was made with persistence=False")

    def _database_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.database_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _wait_database_change(
        self, before: tuple[int, int, int] | None, timeout: float, how: str
    ) -> None:
        # mosquitto writes a new file and renames it over the old one, so the inode changes
        # even when the content and the mtime's granularity would not show it.
        deadline = time.monotonic() + timeout
        while self._database_signature() == before:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited while waiting for a save\n{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.database_path} was not written {how} within {timeout} s\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.01)


class _PortTaken(Exception):
    pass


class PahoPeer:
    """A raw paho-mqtt 2.x client (callback API version 2) that a test drives step by step.

    Its callbacks only record and notify (never block paho's network thread, NOTES.md); every
    wait has a timeout. ``protocol`` is 5 or 4 (3.1.1). ``reconnect=True`` lets paho reconnect
    by itself after the broker goes away (``min_delay`` 1 s, paho's smallest). ``ca_file``
    (with ``cert_file``/``key_file`` for a client certificate) speaks TLS.

        with PahoPeer(broker, "device-1") as peer:
            peer.subscribe(f"{broker.topic_root}devices/device-1/#")
            peer.publish(f"{broker.topic_root}devices/device-1/telemetry", b"x")
            message = peer.expect()
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        username: str | None,
        *,
        password: str | None = None,
        client_id: str | None = None,
        protocol: int = 5,
        clean_start: bool = True,
        session_expiry: int | None = None,
        reconnect: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.broker = broker
        self.username = username
        self.protocol = protocol
        self.client_id = client_id or f"test-{username or 'anonymous'}-{secrets.token_hex(4)}"
        version = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            # MQTT 3.1.1 takes the session flag here, MQTT 5 in connect() (clean_start).
            clean_session=clean_start if protocol != 5 else None,
            reconnect_on_failure=reconnect,
        )
        if username is not None:
            if password is None:
                password = broker.credentials(username).password
            self.client.username_pw_set(username, password)
        if reconnect:
            self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=os.fspath(ca_file),
                certfile=None if cert_file is None else os.fspath(cert_file),
                keyfile=None if key_file is None else os.fspath(key_file),
            )
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._cond = threading.Condition()
        self.connacks: list[tuple[ReasonCode, bool]] = []  # (reason code, session present)
        self.disconnects: list[ReasonCode] = []
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self._messages: list[mqtt.MQTTMessage] = []
        self._read = 0
        self._loop_started = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # paho callbacks: record, notify, return.
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connacks.append((reason_code, bool(flags.session_present)))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnects.append(reason_code)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._pubacks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client, userdata, message):
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"{self.client_id}: timed out after {timeout} s {what}")

    def connect(self, timeout: float = 5.0) -> ReasonCode:
        """Connect and wait for the CONNACK; returns its reason code (a failure included)."""
        properties = None
        if self.protocol == 5 and self._session_expiry is not None:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry
        seen = len(self.connacks)
        if self.protocol == 5:
            self.client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=self._clean_start,
                properties=properties,
            )
        else:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        if not self._loop_started:
            self.client.loop_start()
            self._loop_started = True
        self._wait(lambda: len(self.connacks) > seen, timeout, "waiting for CONNACK")
        return self.connacks[seen][0]

    @property
    def session_present(self) -> bool:
        return self.connacks[-1][1] if self.connacks else False

    def wait_connacks(self, count: int, timeout: float = 5.0) -> None:
        self._wait(lambda: len(self.connacks) >= count, timeout, f"waiting for {count} CONNACKs")

    def wait_disconnects(self, count: int, timeout: float = 5.0) -> None:
        self._wait(
            lambda: len(self.disconnects) >= count, timeout, f"waiting for {count} disconnects"
        )

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"{self.client_id}: subscribe({topic!r}) failed: {result}")
        self._wait(lambda: mid in self._subacks, timeout, f"waiting for SUBACK of {topic!r}")
        return self._subacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> ReasonCode | None:
        """Publish; with QoS 1 wait for the PUBACK and return its reason code (MQTT 5 reports
        a refusal there: 135 not authorised, 149 packet too large...)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: publish({topic!r}) failed: {info.rc}")
        if qos == 0:
            info.wait_for_publish(timeout)
            return None
        self._wait(lambda: info.mid in self._pubacks, timeout, f"waiting for PUBACK on {topic!r}")
        return self._pubacks[info.mid]

    def expect(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        """The next message received, waiting up to ``timeout`` seconds for it."""
        self._wait(lambda: len(self._messages) > self._read, timeout, "waiting for a message")
        with self._cond:
            message = self._messages[self._read]
            self._read += 1
            return message

    def received(self) -> list[mqtt.MQTTMessage]:
        """Messages received and not yet taken, without waiting."""
        with self._cond:
            messages = self._messages[self._read :]
            self._read = len(self._messages)
            return messages

    def sync(self, topic: str, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
        """Publish a unique marker to ``topic`` (which this peer must be subscribed to and may
        write) and return every other message received before it. Mosquitto routes messages
        in one thread, so whatever it delivered to this peer before the marker is in the list:
        the way to check that something was *not* delivered without sleeping."""
        marker = f"sync-{secrets.token_hex(8)}".encode()
        self.publish(topic, marker, qos=1, timeout=timeout)
        before: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.expect(max(0.0, deadline - time.monotonic()))
            if message.topic == topic and message.payload == marker:
                return before
            before.append(message)

    def close(self) -> None:
        """Disconnect (if connected) and stop the network thread."""
        if self.client.is_connected():
            self.client.disconnect()
        if self._loop_started:
            self.client.loop_stop()
            self._loop_started = False

    def __enter__(self) -> PahoPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- a throw-away PKI for TLS tests ------------------------------------------------------------
# Made with the cryptography package (its X.509 tutorial: "Creating a certificate authority"),
# P-256 keys, SHA-256 signatures. Certificates carry the extensions OpenSSL 3 checks in strict
# mode (Python 3.13's default context sets VERIFY_X509_STRICT): a critical basicConstraints,
# key usage, subject and authority key identifiers; leaves get an extended key usage for their
# role, so a client certificate cannot pose as a server and the other way round.


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class TestCertificateAuthority:
    """A CA that exists for one test module: ``ca.issue_server(folder, "server", "127.0.0.1")``,
    ``ca.issue_client(folder, "device-1")`` (CN = the username), ``expired=True`` for a
    certificate whose validity ended yesterday. ``ca.cert`` is the CA's PEM file."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, folder: Path, name: str = "edge-sdk test CA") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self._key.public_key()
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = self.folder / "ca.pem"
        self.cert.write_bytes(_pem(self._certificate))

    def issue_server(
        self, folder: Path, stem: str, host: str = "127.0.0.1", *, expired: bool = False
    ) -> IssuedCertificate:
        """A server certificate for ``host`` (an IP address or a DNS name, in the SAN)."""
        return self._issue(folder, stem, host, host=host, server=True, expired=expired)

    def issue_client(
        self, folder: Path, common_name: str, *, expired: bool = False
    ) -> IssuedCertificate:
        """A client certificate with ``common_name`` as its CN (mosquitto's
        ``use_identity_as_username`` makes that the username)."""
        return self._issue(folder, common_name, common_name, server=False, expired=expired)

    def _issue(
        self,
        folder: Path,
        stem: str,
        common_name: str,
        *,
        server: bool,
        host: str | None = None,
        expired: bool = False,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if host is not None:
            try:
                name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            except ValueError:
                name = x509.DNSName(host)
            builder = builder.add_extension(x509.SubjectAlternativeName([name]), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(_pem(certificate))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return IssuedCertificate(cert_path, key_path)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
