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


def verify_refusal(payload: bytes, *, now: datetime, clock: datetime) -> CommandError:
    with pytest.raises(CommandError) as caught:
        verify_command(payload, TRUST, fleet="fleet-1", device="cam-01", now=now, clock=clock)
    return caught.value


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
    changing = _signed("set_telemetry_interval", {"seconds": 5})
    early = _refusal(changing, now=NOW - timedelta(minutes=6))
    assert early.code == "not_yet_valid" and "ping, info and diag still work" in early.reason
    # Within the allowed clock skew of a device running behind.
    assert _verify(changing, now=NOW - timedelta(minutes=4)).args == {"seconds": 5}
    # A read-only command answers even on a device whose clock is far behind.
    assert _verify(payload, now=NOW - timedelta(hours=3)).command == "ping"
    # Expiry is judged by the later clock; the refusal names both.
    late = verify_refusal(payload, now=NOW + timedelta(minutes=5), clock=NOW)
    assert late.code == "expired" and "seen the operator sign" in late.reason
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
    with pytest.raises(ValueError, match="lifetime"):
        Command.create("fleet-1", "cam-01", "ping", lifetime=timedelta(milliseconds=500))


def test_documents_with_one_meaning_only():
    document = json.loads(_signed("set_telemetry_interval", {"seconds": 5}))
    # NaN/Infinity are not JSON and have no canonical form: refused, never a ValueError.
    text = json.dumps(document).replace('"seconds": 5', '"seconds": NaN')
    assert _refusal(text.encode()).code == "malformed"
    text = json.dumps(document).replace('"seconds": 5', '"seconds": 1e999')
    assert _refusal(text.encode()).code in {"malformed", "bad_arguments"}
    # Duplicate keys: two readers could disagree on which was signed.
    duplicated = json.dumps(document)[:-1] + ', "device": "cam-02"}'
    refused = _refusal(duplicated.encode())
    assert refused.code == "malformed" and "twice" in refused.reason
    # Digits are ASCII digits.
    eastern = dict(document, issued_at="٢٠٢٦-11-28T12:00:00Z")
    assert _refusal(json.dumps(eastern).encode()).code == "malformed"
    # The signature block is exactly an algorithm and a base64 value.
    for block in (
        {"algorithm": "ed25519", "value": None},
        {"algorithm": "ed25519", "value": document["signature"]["value"], "note": 1},
        {"algorithm": "rsa", "value": document["signature"]["value"]},
    ):
        assert _refusal(json.dumps(dict(document, signature=block)).encode()).code == "malformed"


def test_a_run_of_future_commands_cannot_ratchet_the_device_clock(tmp_path: Path):
    memory = NonceMemory(tmp_path / "nonces.log")
    wall = NOW.timestamp()
    for step in range(1, 25):
        issued = NOW + timedelta(minutes=4 * step)  # each just inside the skew of the last
        signed = sign_command(Command.create("fleet-1", "cam-01", "diag", now=issued), PRIVATE)
        command = _verify(signed, now=issued)
        memory.remember(command, memory.now(wall), wall=wall, durable=False)
    # Only what was within the skew of the device's own clock moved it.
    assert memory.now(wall) <= wall + 5 * 60


def test_an_append_after_a_torn_line_is_not_lost(tmp_path: Path):
    path = tmp_path / "nonces.log"
    first = _verify(_signed())
    NonceMemory(path).remember(first, NOW.timestamp(), wall=NOW.timestamp())
    with path.open("ab") as log:
        log.write(b"c0ffee 17")  # the power went during the next append
    memory = NonceMemory(path)
    second = _verify(_signed())
    memory.remember(second, NOW.timestamp(), wall=NOW.timestamp())
    again = NonceMemory(path)
    assert again.seen(first.nonce) and again.seen(second.nonce)
    assert path.read_bytes().endswith(b"\n")


def test_a_read_only_store_refuses_changes_but_still_answers_reads(tmp_path: Path):
    folder = tmp_path / "store"
    folder.mkdir()
    memory = NonceMemory(folder / "nonces.log")
    (folder / "nonces.log").mkdir()  # appends fail (EISDIR), as on a read-only file system
    change = _verify(_signed("set_telemetry_interval", {"seconds": 5}))
    with pytest.raises(CommandError) as caught:
        memory.remember(change, NOW.timestamp(), wall=NOW.timestamp())
    assert caught.value.code == "storage" and "nonces.log" in caught.value.reason
    look = _verify(_signed("diag"))
    memory.remember(look, NOW.timestamp(), wall=NOW.timestamp(), durable=False)
    assert memory.seen(look.nonce) and not memory.seen(change.nonce)


def test_an_unreadable_nonce_record_fails_closed_for_older_commands(tmp_path: Path):
    path = tmp_path / "nonces.log"
    path.write_text("")
    path.chmod(0)
    started = (NOW + timedelta(seconds=30)).timestamp()
    try:
        memory = NonceMemory(path, started=started)
        if memory.unreadable is None:  # root reads a mode-0 file: make it a directory instead
            path.chmod(0o600)
            path.unlink()
            path.mkdir()
            (path / "x").write_text("")
            memory = NonceMemory(path, started=started)
    finally:
        if path.is_file():
            path.chmod(0o600)
    assert memory.unreadable is not None
    older = _verify(_signed("rollback", {"model": "m"}))
    with pytest.raises(CommandError) as caught:
        memory.remember(older, NOW.timestamp(), wall=NOW.timestamp())
    assert caught.value.code == "storage" and "unreadable" in caught.value.reason


def test_an_expired_trusted_key_is_refused():
    trust = rel.TrustStore([rel.TrustedKey(PUBLIC, expires_at=NOW - timedelta(days=1))])
    assert _refusal(_signed(), trust=trust).code == "key_expired"


def test_arguments_are_checked_per_command():
    assert check_arguments("rollback", {"model": "scorer"}) == {"model": "scorer"}
    assert check_arguments("rollback", {"model": "scorer", "from": 3})["from"] == 3
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
        ("rollback", {"model": "m", "from": 0}, "positive integer"),
        ("rollback", {"model": "m", "from": "3"}, "positive integer"),
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
    memory.remember(command, NOW.timestamp(), wall=NOW.timestamp())
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
        memory.remember(command, NOW.timestamp(), wall=NOW.timestamp())
    with pytest.raises(CommandError) as caught:
        memory.remember(commands[3], NOW.timestamp(), wall=NOW.timestamp())
    assert caught.value.code == "busy"
    # Once the oldest has expired there is room again, and it is forgotten last.
    later = (NOW + timedelta(minutes=2)).timestamp()
    memory.remember(commands[3], later, wall=later)
    assert memory.seen(commands[3].nonce)


def test_nonce_memory_compacts_its_log(tmp_path: Path):
    path = tmp_path / "nonces.log"
    memory = NonceMemory(path, limit=4)
    for step in range(12):
        command = _verify(_signed(), now=NOW)
        moment = (NOW + timedelta(minutes=2 * step)).timestamp()
        memory.remember(command, moment, wall=moment)
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
