"""Signed remote commands without a broker: the document, its signature, every refusal, replay
memory on disk, and a fuzzed parser that only ever refuses with a CommandError."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk import release as rel
from edge_sdk.agent.commands import NonceMemory
from edge_sdk.commands import (
    COMMANDS,
    MAX_COMMAND_BYTES,
    REFUSAL_CODES,
    Command,
    check_arguments,
    parse_command,
    reply_document,
    request_id_of,
    sign_command,
    verify_command,
)
from edge_sdk.errors import CommandError

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
PRIVATE, PUBLIC = rel.generate_keypair()
TRUST = rel.TrustStore([rel.TrustedKey(PUBLIC)])


def _signed(command: str = "ping", args: dict | None = None, **changes) -> bytes:
    made = Command.create("fleet-1", "cam-01", command, args, now=NOW)
    document = json.loads(sign_command(made, PRIVATE))
    document.update(changes)
    return json.dumps(document).encode()


def _verify(payload: bytes, now: datetime = NOW, trust: rel.TrustStore = TRUST) -> Command:
    return verify_command(payload, trust, fleet="fleet-1", device="cam-01", now=now)


def _refusal(payload: bytes, **options) -> CommandError:
    with pytest.raises(CommandError) as caught:
        _verify(payload, **options)
    assert caught.value.code in REFUSAL_CODES
    return caught.value


def test_a_signed_command_verifies_with_its_arguments():
    command = _verify(_signed("set_telemetry_interval", {"seconds": 5}))
    assert command.command == "set_telemetry_interval"
    assert command.args == {"seconds": 5}
    assert len(command.nonce) == 32 and len(command.request_id) == 16
    assert command.key_id == rel.key_id(PUBLIC)


def test_each_field_is_covered_by_the_signature():
    original = json.loads(_signed("rollback", {"model": "scorer"}))
    for name, value in [
        ("device", "cam-02"),
        ("fleet", "fleet-2"),
        ("command", "restart"),
        ("args", {"model": "other"}),
        ("nonce", "0" * 32),
        ("request_id", "ab"),
        ("expires_at", "2026-11-28T12:30:00Z"),
        ("issued_at", "2026-11-28T11:59:00Z"),
    ]:
        tampered = dict(original, **{name: value})
        assert _refusal(json.dumps(tampered).encode()).code == "bad_signature", name


def test_refusals_name_what_was_wrong():
    assert _refusal(b"x" * (MAX_COMMAND_BYTES + 1)).code == "oversized"
    assert _refusal(b"{not json").code == "malformed"
    assert _refusal(b"[1, 2]").code == "malformed"
    assert _refusal(_signed(extra=1)).code == "malformed"
    unsigned = json.loads(_signed())
    del unsigned["signature"]
    assert _refusal(json.dumps(unsigned).encode()).code == "unsigned"
    assert _refusal(_signed(schema=2)).code == "malformed"
    stranger, _ = rel.generate_keypair()
    foreign = sign_command(Command.create("fleet-1", "cam-01", "ping", now=NOW), stranger)
    assert _refusal(foreign).code == "unknown_key"
    # Addressed elsewhere, signed by the right key.
    other = sign_command(Command.create("fleet-1", "cam-02", "ping", now=NOW), PRIVATE)
    assert _refusal(other).code == "wrong_device"
    elsewhere = sign_command(Command.create("fleet-2", "cam-01", "ping", now=NOW), PRIVATE)
    assert _refusal(elsewhere).code == "wrong_fleet"


def test_time_checks_expiry_future_and_lifetime():
    payload = _signed()
    assert _verify(payload, now=NOW + timedelta(seconds=59)).command == "ping"
    expired = _refusal(payload, now=NOW + timedelta(seconds=60))
    assert expired.code == "expired" and "2026-11-28T12:01:00Z" in expired.reason
    assert _refusal(payload, now=NOW - timedelta(minutes=6)).code == "not_yet_valid"
    # Within the allowed clock skew of a device running behind.
    assert _verify(payload, now=NOW - timedelta(minutes=4)).command == "ping"
    long_lived = Command(
        "fleet-1",
        "cam-01",
        "ping",
        {},
        "ab",
        "0" * 32,
        NOW,
        NOW + timedelta(hours=2),
    )
    assert _refusal(sign_command(long_lived, PRIVATE)).code == "lifetime"
    with pytest.raises(ValueError, match="lifetime"):
        Command.create("fleet-1", "cam-01", "ping", lifetime=timedelta(hours=2))


def test_an_expired_trusted_key_is_refused():
    trust = rel.TrustStore([rel.TrustedKey(PUBLIC, expires_at=NOW - timedelta(days=1))])
    assert _refusal(_signed(), trust=trust).code == "key_expired"


def test_arguments_are_checked_per_command():
    assert check_arguments("rollback", {"model": "scorer"}) == {"model": "scorer"}
    with pytest.raises(CommandError, match="unknown_command"):
        check_arguments("format_disk", {})
    for command, args, needle in [
        ("rollback", {}, "needs the argument 'model'"),
        ("rollback", {"model": "../etc"}, "model"),
        ("rollback", {"model": 3}, "expected a string"),
        ("set_telemetry_interval", {"seconds": "5"}, "expected a number"),
        ("set_telemetry_interval", {"seconds": True}, "expected a number"),
        ("set_telemetry_interval", {"seconds": float("nan")}, "finite"),
        ("ping", {"x": 1}, "takes no argument 'x'"),
    ]:
        with pytest.raises(CommandError) as caught:
            check_arguments(command, args)
        assert caught.value.code == "bad_arguments" and needle in caught.value.reason
    # The operator's side refuses before anything is signed or sent.
    with pytest.raises(CommandError, match="unknown_command"):
        Command.create("fleet-1", "cam-01", "reboot_the_world")
    # And the device refuses a signed command it does not know.
    signed = sign_command(
        Command("fleet-1", "cam-01", "reboot", {}, "ab", "0" * 32, NOW, NOW + timedelta(minutes=1)),
        PRIVATE,
    )
    assert _refusal(signed).code == "unknown_command"


def test_a_refusal_reply_still_carries_the_request_id():
    payload = _signed(extra=1)
    assert request_id_of(payload) == json.loads(payload)["request_id"]
    assert request_id_of(b"\xff\x00") is None
    reply = json.loads(
        reply_document(
            device="cam-01",
            request_id=request_id_of(payload),
            command=None,
            error=CommandError("malformed", "unknown field 'extra'"),
        )
    )
    assert reply["ok"] is False
    assert reply["error"] == {"code": "malformed", "reason": "unknown field 'extra'"}
    assert reply["request_id"] == json.loads(payload)["request_id"]


def test_nonce_memory_survives_a_restart_and_a_torn_line(tmp_path: Path):
    path = tmp_path / "nonces.log"
    memory = NonceMemory(path)
    command = _verify(_signed())
    memory.remember(command, NOW.timestamp())
    assert memory.seen(command.nonce)
    with path.open("a") as log:
        log.write("deadbeef 17")  # a power cut in the middle of the next append
    again = NonceMemory(path)
    assert again.seen(command.nonce)
    assert again.signed_high_water == NOW.timestamp()
    # The device's clock going back does not move "now" before the newest signed time.
    assert again.now(NOW.timestamp() - 7200) == NOW.timestamp()


def test_nonce_memory_refuses_when_full_of_unexpired_nonces(tmp_path: Path):
    memory = NonceMemory(tmp_path / "nonces.log", limit=3)
    commands = [_verify(_signed()) for _ in range(4)]
    for command in commands[:3]:
        memory.remember(command, NOW.timestamp())
    with pytest.raises(CommandError) as caught:
        memory.remember(commands[3], NOW.timestamp())
    assert caught.value.code == "busy"
    # Once the oldest has expired there is room again, and it is forgotten last.
    later = (NOW + timedelta(minutes=2)).timestamp()
    memory.remember(commands[3], later)
    assert memory.seen(commands[3].nonce)


def test_nonce_memory_compacts_its_log(tmp_path: Path):
    path = tmp_path / "nonces.log"
    memory = NonceMemory(path, limit=4)
    for step in range(12):
        command = _verify(_signed(), now=NOW)
        memory.remember(command, (NOW + timedelta(minutes=2 * step)).timestamp())
    assert len(path.read_text().splitlines()) <= 8
    assert len(NonceMemory(path, limit=4)._nonces) == 4


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        _json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {},
            optional={
                name: _json_values
                for name in (
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
                )
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_payloads_are_only_ever_refused(payload: bytes):
    with pytest.raises(CommandError) as caught:
        _verify(payload)
    assert caught.value.code in REFUSAL_CODES


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(
        ["fleet", "device", "command", "args", "request_id", "nonce", "issued_at", "expires_at"]
    ),
    value=_json_values,
)
def test_fuzzed_fields_of_a_signed_command_are_refused(field: str, value: object):
    document = json.loads(_signed("set_telemetry_interval", {"seconds": 10}))
    if document[field] == value:
        return
    document[field] = value
    with pytest.raises(CommandError) as caught:
        _verify(json.dumps(document).encode())
    assert caught.value.code in REFUSAL_CODES


def test_parse_reads_form_only():
    command, signature = parse_command(_signed("info"))
    assert command.command == "info" and len(signature) == 64
    assert set(COMMANDS) == {
        "ping",
        "info",
        "diag",
        "set_telemetry_interval",
        "rollback",
        "restart",
    }
