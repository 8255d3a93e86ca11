"""Mutual TLS on the fleet channel against a real Mosquitto, and the production broker config,
ACL and certificate script of docs/mqtt-broker.md run as written.

One CA per module (``_broker.TestCertificateAuthority``, made with the cryptography package)
signs the broker's certificate and the clients'; a second, untrusted CA signs the certificates
that must be refused. The mutual-TLS listener keeps a password file, the fleet ACL and no
anonymous clients. Every refusal must reach the caller as a ``BrokerConnectionError`` that
names the problem, never ssl's own text or a traceback.

References: mosquitto.conf(5) for 2.0, "Certificate based SSL/TLS Support" and acl_file
(https://mosquitto.org/man/mosquitto-conf-5.html); RFC 8446, 4.4.2.4 (a TLS 1.3 server judges
the client's certificate after the client's handshake is over) and 6.2 (alerts); Python's ssl
module (``SSLCertVerificationError.verify_code``); docs/mqtt-broker.md, "TLS in the tests".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _cli
import _models
import _ota
import numpy as np
import pytest
from _broker import (
    BrokerTLS,
    IssuedCertificate,
    MosquittoBroker,
    PahoPeer,
    TestCertificateAuthority,
    require_program,
)

from edge_sdk._mqtt import BrokerSettings, MqttConnection
from edge_sdk.agent.config import check_tls_files, config_from_dict, load_agent_config
from edge_sdk.agent.mqtt import MqttAgent
from edge_sdk.errors import AgentConfigError, BrokerConnectionError, EdgeSDKError
from edge_sdk.fleet import FleetClient, ReleaseServer, load_release

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mqtt-broker.md"
NOT_AUTHORIZED = 135  # MQTT 5.0 reason code (section 2.4)
CHUNK_HEADER = 9  # docs/fleet-protocol.md, "Chunk message"


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: TestCertificateAuthority
    rogue: TestCertificateAuthority  # a CA nobody here trusts
    server: IssuedCertificate  # for 127.0.0.1, from ca
    expired_server: IssuedCertificate
    device: IssuedCertificate  # CN device-1
    operator: IssuedCertificate
    release_server: IssuedCertificate
    expired_client: IssuedCertificate
    rogue_client: IssuedCertificate  # from the untrusted CA
    folder: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCertificateAuthority(folder / "ca")
    rogue = TestCertificateAuthority(folder / "rogue", "an untrusted CA")
    return Pki(
        ca=ca,
        rogue=rogue,
        server=ca.issue_server(folder, "server"),
        expired_server=ca.issue_server(folder, "server-expired", expired=True),
        device=ca.issue_client(folder, "device-1"),
        operator=ca.issue_client(folder, "operator"),
        release_server=ca.issue_client(folder, "release-server"),
        expired_client=ca.issue_client(folder, "expired", expired=True),
        rogue_client=rogue.issue_client(folder, "rogue-client"),
        folder=folder,
    )


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A mutual-TLS listener: a client certificate from the CA, and still a password, the
    fleet ACL and no anonymous clients. Shared by the module's tests (each uses its own
    client ids), since refusals leave no state behind."""
    tls = BrokerTLS(pki.server.cert, pki.server.key, pki.ca.cert, require_certificate=True)
    with MosquittoBroker(tmp_path_factory.mktemp("mtls"), tls=tls) as started:
        yield started


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def _settings(
    broker: MosquittoBroker,
    user: str,
    *,
    ca: Path,
    client: IssuedCertificate | None,
    url: str | None = None,
    **extra: object,
) -> BrokerSettings:
    return BrokerSettings(
        url=url or broker.url,
        client_id=f"{user}-{time.monotonic_ns()}",
        username=user,
        password=broker.credentials(user).password,
        ca_file=str(ca),
        cert_file=None if client is None else str(client.cert),
        key_file=None if client is None else str(client.key),
        reconnect_max=2,
        **extra,  # type: ignore[arg-type]
    )


def _tls(ca: Path, client: IssuedCertificate | None) -> dict[str, str]:
    """agent.toml's [tls] table."""
    table = {"ca": str(ca)}
    if client is not None:
        table.update(cert=str(client.cert), key=str(client.key))
    return table


def _agent_connection(
    broker: MosquittoBroker, workdir: Path, tls: dict[str, str]
) -> MqttConnection:
    """The MQTT connection a real MqttAgent builds from its agent.toml."""
    fleet = _ota.OtaFleet(broker, workdir)
    data = fleet.agent_config("device-1", tls=tls, telemetry_interval=0)
    return MqttAgent(config_from_dict(data)).connection


def _assert_named(error: BrokerConnectionError, broker_url: str, *phrases: str) -> None:
    """A reason in words: the phrases, the broker, and none of ssl's raw text."""
    text = str(error)
    assert error.url == broker_url
    for phrase in phrases:
        assert phrase in text, text
    for raw in ("_ssl.c", "Traceback", "[SSL"):
        assert raw not in text, text
    assert error.__suppress_context__ or error.__context__ is None


def _broker_log_since(broker: MosquittoBroker, offset: int) -> str:
    return broker.log_text()[offset:]


# -- it works --------------------------------------------------------------------------------


def test_agent_operator_and_cli_work_over_mutual_tls(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, cli: _cli.CLI
) -> None:
    assert broker.url.startswith("mqtts://")
    with _ota.OtaFleet(broker, tmp_path / "fleet") as fleet:
        v1 = fleet.release(_model(1.0), 1)
        server = ReleaseServer(
            _settings(broker, "release-server", ca=pki.ca.cert, client=pki.release_server),
            fleet.fleet,
            [load_release(v1.path)],
        )
        server.start_thread()
        try:
            agent = fleet.start_agent("device-1", tls=_tls(pki.ca.cert, pki.device))
            operator = _settings(broker, "operator", ca=pki.ca.cert, client=pki.operator)
            with FleetClient(operator, fleet.fleet) as client:
                # The device's retained status, published over its own mutual-TLS connection.
                status = _ota.wait_for(
                    lambda: client.statuses.get("device-1"), 10, "device-1's status"
                )
                assert status["state"] == "online"
                result = client.deploy(v1.path, fleet.key, devices=["device-1"], wave_timeout=30)
                assert result.ok, result.to_dict()
            assert agent.store.active("scorer").version == 1
        finally:
            server.stop()
        # The operator's command line over the same listener.
        password = tmp_path / "operator-password"
        password.write_text(broker.operator.password + "\n")
        done = cli(
            "fleet", "jobs", "--json",
            "--broker", broker.url, "--fleet", fleet.fleet,
            "--username", "operator", "--password-file", password,
            "--ca", pki.ca.cert, "--cert", pki.operator.cert, "--tls-key", pki.operator.key,
        )  # fmt: skip
        assert done.code == 0, done.err
        listed = done.json()
        assert listed["devices"]["device-1"]["state"] == "online"
        assert [(row["device"], row["version"]) for row in listed["jobs"]] == [("device-1", 1)]


# -- the client refuses the broker's certificate ----------------------------------------------


def test_operator_refuses_a_broker_certificate_from_an_untrusted_ca(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, cli: _cli.CLI
) -> None:
    settings = _settings(broker, "operator", ca=pki.rogue.cert, client=pki.operator)
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError) as caught:
        FleetClient(settings, broker.fleet).connect(wait=20)
    # No retry can fix a refused certificate: it fails at the first attempt, not after 20 s.
    assert time.monotonic() - started < 10
    _assert_named(
        caught.value,
        broker.url,
        "TLS handshake failed: certificate verify failed",
        f"not signed by a CA in {pki.rogue.cert}",
    )
    password = tmp_path / "operator-password"
    password.write_text(broker.operator.password + "\n")
    done = cli(
        "fleet", "jobs",
        "--broker", broker.url, "--fleet", broker.fleet,
        "--username", "operator", "--password-file", password,
        "--ca", pki.rogue.cert, "--cert", pki.operator.cert, "--tls-key", pki.operator.key,
    )  # fmt: skip
    assert done.code == 1
    err = done.err
    assert f"edge-sdk: error: MQTT broker {broker.url}: TLS handshake failed" in err
    assert "Traceback" not in err and "_ssl.c" not in err


def test_agent_with_an_untrusted_ca_keeps_retrying_and_says_why_once(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_sdk._mqtt")
    offset = len(broker.log_text())
    with _ota.OtaFleet(broker, tmp_path / "fleet") as fleet:
        agent = fleet.start_agent("device-1", tls=_tls(pki.rogue.cert, pki.device))
        # Attempts keep reaching the broker (paho retries with backoff)...
        _ota.wait_for(
            lambda: _broker_log_since(broker, offset).count("New connection from") >= 2,
            15,
            "a second connection attempt",
        )
        assert agent.thread.is_alive()
        assert not agent.agent.connection.connected
    # ... and the agent says why once, not once per attempt.
    reasons = [r.getMessage() for r in caplog.records if r.name == "edge_sdk._mqtt"]
    assert len(reasons) == 1, reasons
    assert "certificate verify failed" in reasons[0]
    assert f"not signed by a CA in {pki.rogue.cert}" in reasons[0]


def test_expired_broker_certificate_is_refused_by_operator_and_agent(
    pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    expired = pki.expired_server
    tls = BrokerTLS(expired.cert, expired.key, pki.ca.cert, require_certificate=True)
    stale = mosquitto_factory(tls=tls)
    operator = _settings(stale, "operator", ca=pki.ca.cert, client=pki.operator)
    agent = _agent_connection(stale, tmp_path / "fleet", _tls(pki.ca.cert, pki.device))
    attempts: list[Callable[[], object]] = [
        lambda: FleetClient(operator, stale.fleet).connect(wait=20),
        lambda: agent.start(wait=20),
    ]
    for attempt in attempts:
        with pytest.raises(BrokerConnectionError) as caught:
            attempt()
        _assert_named(
            caught.value,
            stale.url,
            "certificate verify failed (certificate has expired)",
            "the broker's certificate has expired",
        )


def test_a_broker_certificate_for_another_name_is_refused(
    broker: MosquittoBroker, pki: Pki
) -> None:
    # The certificate names 127.0.0.1 (an IP address in subjectAltName), not "localhost".
    url = f"mqtts://localhost:{broker.port}"
    settings = _settings(broker, "operator", ca=pki.ca.cert, client=pki.operator, url=url)
    with pytest.raises(BrokerConnectionError) as caught:
        MqttConnection(settings).start(wait=20)
    _assert_named(
        caught.value,
        f"mqtts://localhost:{broker.port}",
        "certificate verify failed",
        "the broker's certificate is not made out to localhost",
    )


# -- the broker refuses the client's certificate -----------------------------------------------

BROKER_REFUSALS = {
    # case: (client certificate, what the client is told, what the broker logs)
    "expired": (
        "expired_client",
        "the broker refused this client's certificate: it has expired",
        "certificate verify failed",
    ),
    "missing": (
        None,
        "the broker requires a client certificate and this client gave none",
        "peer did not return a certificate",
    ),
    "untrusted CA": (
        "rogue_client",
        "the broker refused this client's certificate: it is not signed by a CA the broker trusts",
        "certificate verify failed",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKER_REFUSALS))
def test_broker_refuses_a_bad_client_certificate(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, case: str
) -> None:
    attribute, told, logged = BROKER_REFUSALS[case]
    client = None if attribute is None else getattr(pki, attribute)
    offset = len(broker.log_text())
    # The operator's FleetClient and the connection a device agent builds from agent.toml.
    operator = _settings(broker, "operator", ca=pki.ca.cert, client=client)
    agent = _agent_connection(broker, tmp_path / "fleet", _tls(pki.ca.cert, client))
    attempts: list[Callable[[], object]] = [
        lambda: FleetClient(operator, broker.fleet).connect(wait=20),
        lambda: agent.start(wait=20),
    ]
    for attempt in attempts:
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as caught:
            attempt()
        assert time.monotonic() - started < 10  # the refusal is final: no waiting it out
        _assert_named(caught.value, broker.url, "TLS handshake failed: " + told)
    # It was the broker that said no, and its log says why.
    assert logged in _broker_log_since(broker, offset)


# -- agent.toml's [tls] files -------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["ca", "cert", "key"])
def test_a_missing_tls_file_is_an_agent_config_error_naming_it(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, setting: str
) -> None:
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    tls = _tls(pki.ca.cert, pki.device)
    missing = tmp_path / f"missing-{setting}.pem"
    tls[setting] = missing.name  # relative: resolved against agent.toml's directory
    path = fleet.write_agent_config("device-1", telemetry_interval=0)
    lines = path.read_text() + "[tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    path = tmp_path / "agent.toml"
    path.write_text(lines)
    # Parsing names paths; the files are read when the agent starts.
    config = load_agent_config(path)
    with pytest.raises(AgentConfigError) as caught:
        check_tls_files(config)
    assert caught.value.field == f"tls.{setting}"
    assert str(missing) in str(caught.value) and str(path) in str(caught.value)
    assert "No such file" in str(caught.value)
    # The agent itself refuses to start, naming the file.
    with pytest.raises(EdgeSDKError, match=re.escape(str(missing))):
        MqttAgent(config)


def test_tls_files_that_do_not_fit_are_named(
    pki: Pki, broker: MosquittoBroker, tmp_path: Path
) -> None:
    fleet = _ota.OtaFleet(broker, tmp_path / "fleet")
    mismatched = {
        "ca": str(pki.ca.cert),
        "cert": str(pki.device.cert),
        "key": str(pki.operator.key),
    }
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    cases = [
        (mismatched, "tls.key", f"{pki.operator.key} is not the key of {pki.device.cert}"),
        ({"ca": str(not_pem)}, "tls.ca", f"{not_pem} holds no PEM certificate"),
    ]
    for tls, field, message in cases:
        config = config_from_dict(fleet.agent_config("device-1", tls=tls), source="agent.toml")
        with pytest.raises(AgentConfigError) as caught:
            check_tls_files(config)
        assert caught.value.field == field
        assert message in str(caught.value)
    good = config_from_dict(fleet.agent_config("device-1", tls=_tls(pki.ca.cert, pki.device)))
    check_tls_files(good)


# -- docs/mqtt-broker.md, run as written ------------------------------------------------------


def _documented_block(label: str) -> str:
    """The fenced block that follows ``<!-- tested by tests/test_fleet_tls.py: {label} -->``."""
    text = DOCS.read_text(encoding="utf-8")
    marker = f"<!-- tested by tests/test_fleet_tls.py: {label} -->"
    assert text.count(marker) == 1, f"{DOCS}: expected one {marker!r}"
    fence = text.index("```", text.index(marker))
    body = text.index("\n", fence) + 1
    return text[body : text.index("\n```", body) + 1]


def _swap(text: str, swaps: dict[str, str], what: str) -> str:
    for old, new in swaps.items():
        assert text.count(old) == 1, f"docs/mqtt-broker.md ({what}): expected {old!r} once"
        text = text.replace(old, new)
    return text


def _production_config(
    pki: Pki, certs: Path, *, identity: bool = False
) -> Callable[[MosquittoBroker], str]:
    """docs/mqtt-broker.md's mosquitto.conf with this test's port, paths and certificates."""
    documented = _documented_block("production mosquitto.conf")

    def render(broker: MosquittoBroker) -> str:
        swaps = {
            # Started as root, mosquitto would drop to the `mosquitto` user, which cannot read
            # a test's tmp_path (see _broker.py); production keeps the line as written.
            "user mosquitto": f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "listener 8883": f"listener {broker.port} {broker.host}",
            "/var/lib/mosquitto/": f"{broker.persistence_dir}/",
            "/var/log/mosquitto/mosquitto.log": str(broker.log_path),
            "/etc/mosquitto/certs/fleet-ca.pem": str(pki.ca.cert),
            "/etc/mosquitto/certs/broker.pem": str(certs / "broker.pem"),
            "/etc/mosquitto/certs/broker.key": str(certs / "broker.key"),
            "/etc/mosquitto/passwd": str(broker.password_path),
            "/etc/mosquitto/acl": str(broker.acl_path),
        }
        if identity:
            # The documented alternative: the username is the certificate's CN.
            swaps["password_file /etc/mosquitto/passwd"] = "use_identity_as_username true"
            del swaps["/etc/mosquitto/passwd"]
        text = _swap(documented, swaps, "production mosquitto.conf")
        settings = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert not [line for line in settings if "/etc/" in line or "/var/" in line]
        return text

    return render


@pytest.fixture
def production(
    pki: Pki, tmp_path: Path
) -> Iterator[Callable[..., tuple[MosquittoBroker, dict[str, IssuedCertificate]]]]:
    """Start docs/mqtt-broker.md's broker config and ACL for fleet factory-7."""
    made: list[MosquittoBroker] = []

    def start(*, identity: bool = False) -> tuple[MosquittoBroker, dict[str, IssuedCertificate]]:
        certs = tmp_path / f"certs-{len(made)}"
        server = pki.ca.issue_server(certs, "broker")
        assert (server.cert, server.key) == (certs / "broker.pem", certs / "broker.key")
        users = ("operator", "release-server", "cam-01", "cam-02")
        clients = {name: pki.ca.issue_client(certs, name) for name in users}
        broker = MosquittoBroker(
            tmp_path / f"production-{len(made)}",
            fleet="factory-7",
            devices=("cam-01", "cam-02"),
            config=_production_config(pki, certs, identity=identity),
            acl_text=_documented_block("production ACL"),
        )
        made.append(broker)
        broker.start()
        return broker, clients

    yield start
    for broker in made:
        broker.close()


def _peer(
    broker: MosquittoBroker,
    pki: Pki,
    user: str | None,
    client: IssuedCertificate | None,
    **options: object,
) -> PahoPeer:
    return PahoPeer(
        broker,
        user,
        ca_file=pki.ca.cert,
        cert_file=None if client is None else client.cert,
        key_file=None if client is None else client.key,
        **options,  # type: ignore[arg-type]
    )


def _ok(code: object) -> bool:
    return code is not None and not code.is_failure  # type: ignore[attr-defined]


def _refused(code: object) -> bool:
    return code is not None and code.value == NOT_AUTHORIZED  # type: ignore[attr-defined]


def test_documented_production_config_starts_and_enforces_the_acl(
    pki: Pki, production: Callable[..., tuple[MosquittoBroker, dict[str, IssuedCertificate]]]
) -> None:
    broker, certs = production()
    log = broker.log_text()
    assert "Error" not in log and "Unknown configuration variable" not in log, log
    root = broker.topic_root  # edge/v1/factory-7/

    # TLS 1.2 is the minimum, not the only version: a 1.2 client gets in, a default one gets 1.3.
    for highest, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (None, "TLSv1.3")):
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(certs["cam-01"].cert), str(certs["cam-01"].key))
        if highest is not None:
            context.maximum_version = highest
        with (
            socket.create_connection((broker.host, broker.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=broker.host) as channel,
        ):
            assert channel.version() == expected

    # Without the right password, or without a username, a valid certificate is not enough.
    with _peer(broker, pki, "cam-01", certs["cam-01"], password="wrong") as impostor:
        assert impostor.connect().value == NOT_AUTHORIZED
    with _peer(broker, pki, None, certs["cam-01"]) as anonymous:
        assert anonymous.connect().value == NOT_AUTHORIZED

    peers = {name: _peer(broker, pki, name, certs[name]) for name in certs}
    try:
        for name, peer in peers.items():
            assert _ok(peer.connect()), name
        operator, server = peers["operator"], peers["release-server"]
        cam1, cam2 = peers["cam-01"], peers["cam-02"]
        server.subscribe(f"{root}devices/+/#")  # granted; only block requests are delivered
        server.subscribe(f"{root}releases/sync")
        for topic in ("devices/+/cmd", "releases/+/+/manifest", "releases/+/+/blocks/+"):
            cam1.subscribe(root + topic)  # granted; the ACL filters what is delivered
        cam2.subscribe(f"{root}devices/cam-02/cmd")

        # A device reads its own commands only, and cannot write any, not even its own.
        assert _ok(operator.publish(f"{root}devices/cam-02/cmd", b"for cam-02"))
        assert _ok(operator.publish(f"{root}devices/cam-01/cmd", b"for cam-01"))
        first = cam1.expect()  # mosquitto routes in order: cam-02's would have come first
        assert (first.topic, first.payload) == (f"{root}devices/cam-01/cmd", b"for cam-01")
        assert cam2.expect().payload == b"for cam-02"
        assert _refused(cam1.publish(f"{root}devices/cam-01/cmd", b"self-made command"))
        assert _refused(cam1.publish(f"{root}devices/cam-02/cmd", b"forged command"))

        # What a device writes, under its own name only; and nothing the fleet publishes to it.
        operator.subscribe(f"{root}devices/+/#")
        own = ["status", "telemetry", "telemetry/latest", "jobs/m", "reply/req-1", "blocks/get"]
        for suffix in own:
            assert _ok(cam1.publish(f"{root}devices/cam-01/{suffix}", suffix.encode())), suffix
        for topic in (
            "devices/cam-02/status",
            "devices/cam-02/reply/req-1",
            "releases/scorer/1/manifest",
            "desired/devices/cam-01",
            "desired/groups/line-2",
        ):
            assert _refused(cam1.publish(root + topic, b"forged")), topic
        received = [operator.expect() for _ in own]
        assert [m.topic for m in received] == [f"{root}devices/cam-01/{s}" for s in own]
        assert operator.sync(f"{root}devices/operator/sync") == []  # and nothing forged

        # The release server reads block requests (nothing else of a device's) and writes
        # manifests and chunks; a device reads every manifest and only its own chunks.
        assert [m.topic for m in server.sync(f"{root}releases/sync")] == [
            f"{root}devices/cam-01/blocks/get"
        ]
        assert _ok(server.publish(f"{root}releases/scorer/1/manifest", b"{}", retain=True))
        default_chunk = os.urandom(CHUNK_HEADER + 65536)
        largest_chunk = os.urandom(CHUNK_HEADER + 120 * 1024)  # the manifest schema's maximum
        assert _ok(server.publish(f"{root}releases/scorer/1/blocks/cam-02", default_chunk))
        for chunk in (default_chunk, largest_chunk):
            assert _ok(server.publish(f"{root}releases/scorer/1/blocks/cam-01", chunk))
        got = [cam1.expect() for _ in range(3)]
        assert [m.topic for m in got] == [
            f"{root}releases/scorer/1/manifest",
            f"{root}releases/scorer/1/blocks/cam-01",
            f"{root}releases/scorer/1/blocks/cam-01",
        ]
        assert [len(m.payload) for m in got[1:]] == [len(default_chunk), len(largest_chunk)]
        assert _refused(server.publish(f"{root}desired/devices/cam-01", b"forged"))
    finally:
        for peer in peers.values():
            peer.close()


def test_documented_production_config_serves_a_real_update(
    pki: Pki,
    production: Callable[..., tuple[MosquittoBroker, dict[str, IssuedCertificate]]],
    tmp_path: Path,
) -> None:
    """Agent, release server and operator through the documented config and ACL, each with
    its own certificate and password (use_username_as_clientid: one connection per user)."""
    broker, certs = production()
    url = f"mqtts://{broker.host}:{broker.port}"

    def settings(user: str, **extra: object) -> BrokerSettings:
        return _settings(broker, user, ca=pki.ca.cert, client=certs[user], url=url, **extra)

    with _ota.OtaFleet(broker, tmp_path / "fleet") as fleet:
        v1 = fleet.release(_model(3.0), 1)
        server = ReleaseServer(settings("release-server"), fleet.fleet, [load_release(v1.path)])
        server.start_thread()
        try:
            agent = fleet.start_agent("cam-01", broker=url, tls=_tls(pki.ca.cert, certs["cam-01"]))
            with FleetClient(settings("operator"), fleet.fleet) as client:
                _ota.wait_for(lambda: client.statuses.get("cam-01"), 10, "cam-01's status")
                result = client.deploy(v1.path, fleet.key, devices=["cam-01"], wave_timeout=30)
                assert result.ok, result.to_dict()
            assert agent.store.active("scorer").version == 1
        finally:
            server.stop()


def test_documented_identity_variant_takes_the_username_from_the_certificate(
    pki: Pki, production: Callable[..., tuple[MosquittoBroker, dict[str, IssuedCertificate]]]
) -> None:
    broker, certs = production(identity=True)
    root = broker.topic_root
    # cam-01's certificate, whatever username and password the client claims.
    with _peer(broker, pki, "cam-02", certs["cam-01"], password="not checked") as peer:
        assert _ok(peer.connect())
        assert _ok(peer.publish(f"{root}devices/cam-01/status", b"{}"))
        assert _refused(peer.publish(f"{root}devices/cam-02/status", b"{}"))


def test_broker_certificate_is_renewed_by_sighup(
    pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    """docs/mqtt-broker.md, "Rotating certificates": replace certfile/keyfile, send SIGHUP."""
    live = tmp_path / "live"
    live.mkdir()
    first = pki.ca.issue_server(tmp_path / "first", "server")
    for source, name in ((first.cert, "server.pem"), (first.key, "server.key")):
        shutil.copyfile(source, live / name)
    tls = BrokerTLS(live / "server.pem", live / "server.key", pki.ca.cert, require_certificate=True)
    broker = mosquitto_factory(tls=tls)

    def serial() -> str:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.device.cert), str(pki.device.key))
        with (
            socket.create_connection((broker.host, broker.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=broker.host) as channel,
        ):
            return str(channel.getpeercert()["serialNumber"])

    with _peer(broker, pki, "device-1", pki.device) as established:
        assert _ok(established.connect())
        before = serial()
        second = pki.ca.issue_server(tmp_path / "second", "server")
        for source, name in ((second.cert, "server.pem"), (second.key, "server.key")):
            shutil.copyfile(source, live / name)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGHUP)  # the broker this test started, by its pid
        renewed = _ota.wait_for(lambda: serial() != before, 10, "the new certificate")
        assert renewed
        # The established connection was not dropped.
        assert established.disconnects == []
        assert _ok(established.publish(f"{broker.topic_root}devices/device-1/status", b"{}"))


def test_documented_certificate_script_issues_certificates_mosquitto_accepts(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    openssl = require_program(
        "openssl", packages=("openssl",), purpose="the certificate script of docs/mqtt-broker.md"
    )
    bash = require_program("bash", packages=("bash",), purpose="running a documented script")
    script = _swap(
        _documented_block("issuing certificates"),
        {"broker=broker.example.com": "broker=localhost"},
        "certificate script",
    )
    work = tmp_path / "issued"
    work.mkdir()
    env = dict(os.environ, PATH=f"{Path(openssl).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        [bash, "-euc", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tls = BrokerTLS(
        work / "broker.pem", work / "broker.key", work / "fleet-ca.pem", require_certificate=True
    )
    broker = mosquitto_factory(tls=tls, devices=("cam-01",))
    connection = MqttConnection(
        BrokerSettings(
            url=f"mqtts://localhost:{broker.port}",
            client_id="cam-01",
            username="cam-01",
            password=broker.device("cam-01").password,
            ca_file=str(work / "fleet-ca.pem"),
            cert_file=str(work / "cam-01.pem"),
            key_file=str(work / "cam-01.key"),
        )
    )
    connection.start(wait=10)
    try:
        connection.publish_wait(f"{broker.topic_root}devices/cam-01/status", b"{}", timeout=5)
    finally:
        connection.stop()
