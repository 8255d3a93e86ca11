"""edge_sdk.desired: signed desired-state documents, and the agent's configuration file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from edge_sdk import release as rel
from edge_sdk.agent.config import config_from_dict, load_agent_config
from edge_sdk.desired import DesiredModel, DesiredState, sign_desired, verify_desired
from edge_sdk.errors import AgentConfigError, DesiredStateError, SignatureError, UnsafeNameError

SHA = "cd" * 32


@pytest.fixture(scope="module")
def keys():
    private, public = rel.generate_keypair()
    return private, rel.TrustStore([rel.TrustedKey(public)])


def _state(**changes) -> DesiredState:
    fields = {
        "fleet": "fleet-1",
        "target_kind": "device",
        "target": "cam-01",
        "models": {"digits": DesiredModel(3, SHA)},
        "sequence": 1000,
    }
    fields.update(changes)
    return DesiredState(**fields)


def test_signed_desired_state_round_trips(keys) -> None:
    private, trust = keys
    payload = sign_desired(_state(), private)
    state = verify_desired(payload, trust, fleet="fleet-1")
    assert state.models["digits"] == DesiredModel(3, SHA, sequence=1000)
    assert state.topic_suffix == "desired/devices/cam-01"
    assert state.sequence == 1000
    assert state.key_id == rel.key_id(private.public_key())
    group = verify_desired(
        sign_desired(_state(target_kind="group", target="lab"), private), trust, fleet="fleet-1"
    )
    assert group.topic_suffix == "desired/groups/lab"


def test_a_changed_field_breaks_the_signature(keys) -> None:
    private, trust = keys
    document = json.loads(sign_desired(_state(), private))
    document["models"]["digits"]["version"] = 4
    with pytest.raises(SignatureError) as caught:
        verify_desired(json.dumps(document), trust, fleet="fleet-1")
    assert caught.value.reason == "bad_signature"


def test_a_release_signature_cannot_pass_as_desired_state(keys) -> None:
    # Same key, same canonical bytes, other context: the domain prefix must make it fail.
    private, trust = keys
    state = DesiredState(
        fleet="fleet-1",
        target_kind="device",
        target="cam-01",
        models={"digits": DesiredModel(3, SHA)},
        sequence=5,
        key_id=rel.key_id(private.public_key()),
    )
    document = state.to_dict()
    signature = private.sign(rel.SIGNING_CONTEXT + rel.canonical_json(document))
    document["signature"] = {"algorithm": "ed25519", "value": base64.b64encode(signature).decode()}
    with pytest.raises(SignatureError) as caught:
        verify_desired(json.dumps(document), trust, fleet="fleet-1")
    assert caught.value.reason == "bad_signature"


def test_unsigned_unknown_key_and_other_fleet_are_refused(keys) -> None:
    private, trust = keys
    unsigned = json.loads(sign_desired(_state(), private))
    del unsigned["signature"]
    with pytest.raises(SignatureError) as caught:
        verify_desired(json.dumps(unsigned), trust, fleet="fleet-1")
    assert caught.value.reason == "unsigned"
    stranger, _ = rel.generate_keypair()
    with pytest.raises(SignatureError) as caught:
        verify_desired(sign_desired(_state(), stranger), trust, fleet="fleet-1")
    assert caught.value.reason == "unknown_key"
    with pytest.raises(DesiredStateError, match="for fleet 'fleet-1'"):
        verify_desired(sign_desired(_state(), private), trust, fleet="fleet-2")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.pop("sequence"), "missing fields"),
        (lambda d: d.update(sequence="1"), "sequence"),
        (lambda d: d.update(target={"device": "a", "group": "b"}), "target"),
        (lambda d: d.update(target={"robot": "a"}), "target"),
        (lambda d: d.update(models=[]), "models"),
        (lambda d: d["models"]["digits"].update(version="3"), "version"),
        (lambda d: d["models"]["digits"].update(version=0), "version"),
        (lambda d: d["models"]["digits"].update(sha256="xyz"), "sha256"),
        (lambda d: d["models"]["digits"].update(downgrade="yes"), "downgrade"),
        (lambda d: d["models"]["digits"].pop("downgrade"), "expected fields"),
        (lambda d: d.update(issued_at=5), "issued_at"),
    ],
)
def test_malformed_documents_name_the_field(keys, mutate, message) -> None:
    private, trust = keys
    document = json.loads(sign_desired(_state(), private))
    mutate(document)
    with pytest.raises(DesiredStateError, match=message):
        verify_desired(json.dumps(document), trust, fleet="fleet-1")


def test_names_that_could_escape_a_directory_are_refused(keys) -> None:
    private, trust = keys
    document = json.loads(sign_desired(_state(), private))
    document["models"] = {"../../etc": document["models"]["digits"]}
    with pytest.raises(UnsafeNameError):
        verify_desired(json.dumps(document), trust, fleet="fleet-1")
    with pytest.raises(UnsafeNameError):
        _state(target="../x")


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"[]", b"null", b"{" * 5000, b"1" * 70000])
def test_garbage_is_a_desired_state_error(keys, payload) -> None:
    _, trust = keys
    with pytest.raises((DesiredStateError, SignatureError)):
        verify_desired(payload, trust, fleet="fleet-1")


# -- agent.toml -----------------------------------------------------------------------------


def _config(tmp_path: Path, **changes) -> dict:
    key = tmp_path / "fleet.pub"
    key.write_text("x")
    data = {
        "device_id": "cam-01",
        "fleet": "fleet-1",
        "broker": "mqtt://127.0.0.1:1883",
        "store": "store",
        "trusted_keys": ["fleet.pub"],
    }
    data.update(changes)
    return data


def test_agent_config_defaults_and_relative_paths(tmp_path) -> None:
    config = config_from_dict(_config(tmp_path), base=tmp_path)
    assert config.store == tmp_path / "store"
    assert config.trusted_keys == (tmp_path / "fleet.pub",)
    assert config.effective_client_id == "edge-sdk-agent-cam-01"
    assert config.window == 16 and config.protocol == 5 and config.profile == "auto"
    assert config.session_expiry > 0


def test_agent_config_file_reads_toml_and_password_file(tmp_path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    path = tmp_path / "agent.toml"
    path.write_text(
        'device_id = "cam-01"\nfleet = "f"\nbroker = "mqtts://b.example:8883"\n'
        'store = "/var/lib/s"\ntrusted_keys = ["k.pub"]\npassword_file = "pw"\n'
        'groups = ["lab", "line-2"]\nprotocol = "3.1.1"\nwindow = 32\n'
        '[tls]\nca = "ca.pem"\n'
    )
    config = load_agent_config(path)
    assert config.password == "s3cret"
    assert config.groups == ("lab", "line-2")
    assert config.protocol == 4 and config.window == 32
    assert config.tls_ca == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"device_id": None}, "device_id"),
        ({"device_id": "a/b"}, "device_id"),
        ({"fleet": "+"}, "fleet"),
        ({"groups": ["ok", "#"]}, "groups"),
        ({"broker": "http://x"}, "broker"),
        ({"broker": "mqtt://"}, "broker"),
        ({"trusted_keys": []}, "trusted_keys"),
        ({"window": 0}, "window"),
        ({"window": 1000}, "window"),
        ({"window": "8"}, "window"),
        ({"protocol": 3}, "protocol"),
        ({"keep_previous": -1}, "keep_previous"),
        ({"colour": "red"}, "colour"),
        ({"tls": {"cert": "c.pem"}}, "tls"),
        ({"tls": {"ca": "a", "crl": "b"}}, "tls.crl"),
        ({"password": "a", "password_file": "b"}, "password_file"),
        ({"password_file": "missing"}, "password_file"),
    ],
)
def test_agent_config_mistakes_name_the_setting(tmp_path, changes, field) -> None:
    data = {k: v for k, v in _config(tmp_path, **changes).items() if v is not None}
    with pytest.raises(AgentConfigError) as caught:
        config_from_dict(data, base=tmp_path, source="agent.toml")
    assert caught.value.field == field
    assert "agent.toml" in str(caught.value)


def test_agent_config_file_errors(tmp_path) -> None:
    with pytest.raises(AgentConfigError, match="no such file"):
        load_agent_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("device_id = \n")
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        load_agent_config(bad)


def test_agent_config_trusted_keys_with_an_expiry(tmp_path) -> None:
    import datetime

    from edge_sdk.agent.mqtt import load_trust

    old_private, old_public = rel.generate_keypair()
    _, new_public = rel.generate_keypair()
    (tmp_path / "old.pub").write_text(rel.public_key_to_base64(old_public))
    (tmp_path / "new.pub").write_text(rel.public_key_to_base64(new_public))
    path = tmp_path / "agent.toml"
    path.write_text(
        'device_id = "cam-01"\nfleet = "f"\nbroker = "mqtt://127.0.0.1"\nstore = "s"\n'
        'trusted_keys = ["new.pub", {file = "old.pub", expires_at = 2020-01-01T00:00:00Z}]\n'
    )
    config = load_agent_config(path)
    assert config.trusted_keys_expire[0] is None
    assert config.trusted_keys_expire[1] == datetime.datetime(
        2020, 1, 1, tzinfo=datetime.timezone.utc
    )
    trust = load_trust(config)
    assert len(trust) == 2
    # The rotated-out key no longer verifies anything.
    payload = sign_desired(_state(fleet="f"), old_private)
    with pytest.raises(SignatureError) as caught:
        verify_desired(payload, trust, fleet="f")
    assert caught.value.reason == "key_expired"
    path.write_text(path.read_text().replace("2020-01-01T00:00:00Z", '"yesterday"'))
    with pytest.raises(AgentConfigError, match="expires_at"):
        load_agent_config(path)


def test_refusals_name_the_desired_state_not_a_release(keys) -> None:
    private, trust = keys
    stranger, _ = rel.generate_keypair()
    with pytest.raises(SignatureError, match="the desired state is signed by key") as caught:
        verify_desired(sign_desired(_state(), stranger), trust, fleet="fleet-1")
    assert "release" not in str(caught.value)
    document = json.loads(sign_desired(_state(), private))
    document["fleet"] = 7
    with pytest.raises(DesiredStateError, match="malformed desired state"):
        verify_desired(json.dumps(document), trust, fleet="fleet-1")
