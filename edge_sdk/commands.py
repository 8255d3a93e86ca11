"""Signed remote commands: what an operator asks one device to do, and its reply
(docs/fleet-protocol.md, "Commands").

The operator publishes a command document on ``devices/{id}/cmd`` (QoS 1, not retained); the
device checks it and answers with a reply document. Decisions, each with its reason:

- Signed with the fleet's Ed25519 keys over ``COMMAND_CONTEXT + canonical_json(document)``: the
  context prefix makes a command signature useless as a release or desired-state signature and
  back. The broker's ACL already keeps everyone but the operator off a device's command topic;
  the signature is the second fence, for a leaked operator password or a misconfigured broker.
- Addressed: ``fleet`` and ``device`` are signed, so a command recorded on one device's topic
  is refused by every other device.
- ``expires_at`` at most ``MAX_LIFETIME`` after ``issued_at``, and a random ``nonce`` the device
  remembers until the command expires: a recorded command cannot be replayed, not even after the
  device restarts (the nonces are on disk), and the device only has to remember an hour of them.
- ``issued_at`` may be at most ``CLOCK_SKEW`` ahead of the device's own clock for a command
  that changes something (a board without a real-time clock that has not synced yet is behind,
  rarely ahead). The read-only commands (``READ_ONLY_COMMANDS``: ping, info, diag) are exempt,
  so an operator can still look at a device whose clock went wrong.
- ``request_id`` correlates the reply over MQTT 3.1.1, which has no correlation data; over MQTT 5
  the reply also goes to the command's response topic with its correlation data.

Errors carry a stable ``code`` the operator's tools can act on (``REFUSAL_CODES``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_sdk.errors import CommandError, ReleaseError, SignatureError
from edge_sdk.release import (
    SIGNATURE_ALGORITHM,
    TrustStore,
    canonical_json,
    check_safe_name,
    format_timestamp,
    key_id,
    parse_timestamp,
    signature_block,
)

__all__ = [
    "COMMANDS",
    "COMMAND_CONTEXT",
    "READ_ONLY_COMMANDS",
    "Command",
    "check_arguments",
    "parse_command",
    "reply_document",
    "request_id_of",
    "sign_command",
    "verify_command",
]

SCHEMA_VERSION = 1
COMMAND_CONTEXT = b"edge-sdk command v1\n"
# A command is a name and a few arguments; anything larger is not one.
MAX_COMMAND_BYTES = 16 * 1024
MAX_LIFETIME = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_LIFETIME = timedelta(minutes=1)
# Timestamps have whole seconds: a shorter lifetime would be zero once written.
MIN_LIFETIME = timedelta(seconds=1)
# Reasons quote what the sender wrote; a reply never echoes more than this of it.
MAX_REASON_CHARS = 300

# name -> {argument: (type, required)}; the arguments a device accepts, nothing else.
COMMANDS: Mapping[str, Mapping[str, tuple[type, bool]]] = MappingProxyType(
    {
        "ping": {},
        "info": {},
        "diag": {},
        "set_telemetry_interval": {"seconds": (float, True)},
        # "from": the version expected active; a retried rollback then cannot go back twice.
        "rollback": {"model": (str, True), "from": (int, False)},
        "restart": {},
    }
)

# Commands that change nothing: harmless to run twice, and allowed when the device's clock is
# behind the operator's by more than CLOCK_SKEW.
READ_ONLY_COMMANDS = frozenset({"ping", "info", "diag"})

REFUSAL_CODES = (
    "oversized",  # more than MAX_COMMAND_BYTES
    "malformed",  # not JSON, a missing or mistyped field, an unknown field
    "unsigned",
    "unknown_key",
    "key_expired",
    "bad_signature",
    "wrong_fleet",
    "wrong_device",
    "expired",
    "not_yet_valid",  # issued_at beyond CLOCK_SKEW in the device's future
    "lifetime",  # expires_at more than MAX_LIFETIME after issued_at
    "replayed",  # a nonce this device has seen
    "unknown_command",
    "bad_arguments",
    "busy",  # too many unexpired nonces to remember
    "failed",  # checked and run, and running it failed
    "unavailable",  # this device cannot do it (e.g. telemetry turned off)
    "storage",  # the device cannot record the command (a read-only or failing store)
)

_FIELDS = frozenset(
    {
        "schema",
        "fleet",
        "device",
        "command",
        "args",
        "request_id",
        "nonce",
        "issued_at",
        "expires_at",
        "key_id",
        "signature",
    }
)
_HEX = frozenset("0123456789abcdef")


def _malformed(reason: str) -> CommandError:
    return CommandError("malformed", reason)


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # One meaning per document: with duplicate keys, two JSON readers may disagree on which
    # value was signed.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _Duplicate(key)
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259) and have no canonical form to sign.
    raise ValueError(f"{name} is not a JSON number")


def _hex_token(value: object, name: str, low: int, high: int) -> str:
    if not (isinstance(value, str) and low <= len(value) <= high and set(value) <= _HEX):
        raise _malformed(f"{name}: expected {low} to {high} lowercase hex digits")
    return value


def check_arguments(command: str, args: object) -> dict[str, Any]:
    """The arguments of ``command``, checked; CommandError ("unknown_command", "bad_arguments")."""
    spec = COMMANDS.get(command)
    if spec is None:
        raise CommandError(
            "unknown_command", f"{command!r}; this device knows {', '.join(sorted(COMMANDS))}"
        )
    if not isinstance(args, dict):
        raise CommandError("bad_arguments", "args: expected an object")
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise CommandError("bad_arguments", f"{command} takes no argument {unknown[0]!r}")
    checked: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        if name not in args:
            if required:
                raise CommandError("bad_arguments", f"{command} needs the argument {name!r}")
            continue
        value = args[name]
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CommandError("bad_arguments", f"{name}: expected a positive integer")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CommandError("bad_arguments", f"{name}: expected a number")
            if not math.isfinite(value):
                raise CommandError("bad_arguments", f"{name}: expected a finite number")
        elif kind is str:
            if not isinstance(value, str):
                raise CommandError("bad_arguments", f"{name}: expected a string")
            if name == "model":
                try:
                    check_safe_name(value, field=name)
                except ReleaseError as exc:
                    raise CommandError("bad_arguments", str(exc)) from None
        checked[name] = value
    return checked


@dataclass(frozen=True)
class Command:
    """One command to one device; ``sign_command`` makes its wire form.

    Example: ``Command.create("factory-7", "cam-01", "rollback", {"model": "detector"})``.
    """

    fleet: str
    device: str
    command: str
    args: Mapping[str, Any] = field(default_factory=dict)
    request_id: str = ""
    nonce: str = ""
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    key_id: str | None = None

    @classmethod
    def create(
        cls,
        fleet: str,
        device: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        lifetime: timedelta = DEFAULT_LIFETIME,
        now: datetime | None = None,
    ) -> Command:
        """A new command with a fresh request id and nonce, valid for ``lifetime``."""
        if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime must be {MIN_LIFETIME} to {MAX_LIFETIME}")
        issued = (now or datetime.now(timezone.utc)).replace(microsecond=0)
        return cls(
            fleet=check_safe_name(fleet, field="fleet"),
            device=check_safe_name(device, field="device"),
            command=command,
            args=check_arguments(command, dict(args or {})),
            request_id=secrets.token_hex(8),
            nonce=secrets.token_hex(16),
            issued_at=issued,
            expires_at=issued + lifetime,
        )

    def to_dict(self) -> dict[str, Any]:
        if self.issued_at is None or self.expires_at is None:
            raise ValueError("a command needs issued_at and expires_at (use Command.create)")
        document: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "fleet": self.fleet,
            "device": self.device,
            "command": self.command,
            "args": dict(self.args),
            "request_id": self.request_id,
            "nonce": self.nonce,
            "issued_at": format_timestamp(self.issued_at),
            "expires_at": format_timestamp(self.expires_at),
        }
        if self.key_id is not None:
            document["key_id"] = self.key_id
        return document

    def signed_bytes(self) -> bytes:
        return COMMAND_CONTEXT + canonical_json(self.to_dict())


def sign_command(command: Command, private_key: Ed25519PrivateKey) -> bytes:
    """The wire form of ``command`` signed with ``private_key`` (compact, canonical JSON)."""
    stamped = dataclasses.replace(command, key_id=key_id(private_key.public_key()))
    document = stamped.to_dict()
    document["signature"] = signature_block(private_key.sign(stamped.signed_bytes()))
    return canonical_json(document)


def request_id_of(payload: bytes) -> str | None:
    """The request id of a command that may be refused, so the refusal can be correlated; None
    when there is none to be found."""
    if len(payload) > MAX_COMMAND_BYTES:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        value = data.get("request_id")
        if isinstance(value, str) and 1 <= len(value) <= 64 and set(value) <= _HEX:
            return value
    return None


def parse_command(payload: bytes | bytearray | memoryview) -> tuple[Command, bytes]:
    """The command in ``payload`` and its signature, checked for form only (no trust, no
    clock). Raises CommandError ("oversized", "malformed", "unsigned", "unknown_command",
    "bad_arguments")."""
    raw = bytes(payload)
    if len(raw) > MAX_COMMAND_BYTES:
        raise CommandError("oversized", f"{len(raw)} bytes, more than {MAX_COMMAND_BYTES}")
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise _malformed(f"the key {str(exc)[:40]!r} appears twice") from None
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise _malformed("expected an object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise _malformed(f"unknown field {unknown[0]!r}")
    if data.get("schema") != SCHEMA_VERSION:
        raise _malformed(f"schema: expected {SCHEMA_VERSION}, got {data.get('schema')!r}")
    block = data.get("signature")
    if block is None:
        raise CommandError("unsigned", "the command carries no signature")
    if (
        not isinstance(block, dict)
        or set(block) != {"algorithm", "value"}
        or block["algorithm"] != SIGNATURE_ALGORITHM
        or not isinstance(block["value"], str)
    ):
        raise _malformed(
            f'signature: expected {{"algorithm": "{SIGNATURE_ALGORITHM}", "value": base64}}'
        )
    try:
        signature = base64.b64decode(block["value"], validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("signature.value: not base64") from None
    signer = data.get("key_id")
    if not isinstance(signer, str):
        raise CommandError("unsigned", "the command names no key_id")
    texts = {}
    for name in ("fleet", "device", "command", "issued_at", "expires_at"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise _malformed(f"{name}: expected a string")
        texts[name] = value
    try:
        check_safe_name(texts["fleet"], field="fleet")
        check_safe_name(texts["device"], field="device")
        issued = parse_timestamp(texts["issued_at"], field="issued_at")
        expires = parse_timestamp(texts["expires_at"], field="expires_at")
    except ReleaseError as exc:
        raise _malformed(str(exc)) from None
    args = data.get("args")
    if not isinstance(args, dict):
        raise _malformed("args: expected an object")
    command = Command(
        fleet=texts["fleet"],
        device=texts["device"],
        command=texts["command"],
        args=args,
        request_id=_hex_token(data.get("request_id"), "request_id", 1, 64),
        nonce=_hex_token(data.get("nonce"), "nonce", 32, 64),
        issued_at=issued,
        expires_at=expires,
        key_id=signer,
    )
    return command, signature


def verify_command(
    payload: bytes | bytearray | memoryview,
    trust: TrustStore,
    *,
    fleet: str,
    device: str,
    now: datetime,
    clock: datetime | None = None,
) -> Command:
    """Parse and check a signed command for this device; return it or raise CommandError with
    one of ``REFUSAL_CODES``.

    ``now`` decides expiry (the agent passes the later of its clock and the newest time the
    operator signed, so a clock that jumps back revives nothing); ``clock`` is the device's own
    clock (default ``now``), against which a command that changes something may be at most
    ``CLOCK_SKEW`` early. Replay (the nonce) is the caller's to check: it needs the device's
    memory of nonces (edge_sdk.agent.commands)."""
    command, signature = parse_command(payload)
    clock = now if clock is None else clock
    try:
        signed = command.signed_bytes()
    except (ValueError, TypeError, RecursionError) as exc:
        raise _malformed(f"cannot be put in canonical form: {exc}") from None
    try:
        trust.verify_signature(command.key_id or "", signed, signature, now=now, document="command")
    except SignatureError as exc:
        raise CommandError(exc.reason, str(exc)) from None
    if command.fleet != fleet:
        raise CommandError("wrong_fleet", f"for fleet {command.fleet!r}, this is {fleet!r}")
    if command.device != device:
        raise CommandError("wrong_device", f"for device {command.device!r}, this is {device!r}")
    assert command.issued_at is not None and command.expires_at is not None
    if command.expires_at - command.issued_at > MAX_LIFETIME:
        raise CommandError(
            "lifetime",
            f"valid for {command.expires_at - command.issued_at}, at most {MAX_LIFETIME}",
        )
    if command.expires_at <= command.issued_at:
        raise CommandError("lifetime", "expires_at is not after issued_at")
    if now >= command.expires_at:
        seen = f"the device's clock says {format_timestamp(clock)}"
        if now > clock:
            seen += f", and it has seen the operator sign {format_timestamp(now)}"
        raise CommandError("expired", f"expired at {format_timestamp(command.expires_at)}; {seen}")
    if command.issued_at > clock + CLOCK_SKEW and command.command not in READ_ONLY_COMMANDS:
        raise CommandError(
            "not_yet_valid",
            f"issued at {format_timestamp(command.issued_at)}, more than {CLOCK_SKEW} after the "
            f"device's clock ({format_timestamp(clock)}); fix the device's clock (ping, info and "
            "diag still work)",
        )
    checked = check_arguments(command.command, command.args)
    return Command(
        fleet=command.fleet,
        device=command.device,
        command=command.command,
        args=MappingProxyType(checked),
        request_id=command.request_id,
        nonce=command.nonce,
        issued_at=command.issued_at,
        expires_at=command.expires_at,
        key_id=command.key_id,
    )


def reply_document(
    *,
    device: str,
    request_id: str | None,
    command: str | None,
    result: Mapping[str, Any] | None = None,
    error: CommandError | None = None,
    at: datetime | None = None,
) -> bytes:
    """A device's reply: ``ok`` with ``result``, or the refusal's ``code`` and ``reason``."""
    document: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "device": device,
        "request_id": request_id,
        "command": command,
        "ok": error is None,
        "at": format_timestamp((at or datetime.now(timezone.utc)).replace(microsecond=0)),
    }
    if error is None:
        document["result"] = dict(result or {})
    else:
        reason = error.reason
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        document["error"] = {"code": error.code, "reason": reason}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()
