"""The fleet channel over TLS and over MQTT 3.1.1, against a real Mosquitto: a TLS listener with
a certificate from a throw-away CA (made here with the cryptography package), a device agent
that trusts that CA, and a device on MQTT 3.1.1 beside an MQTT 5 release server."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import _models
import _ota
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_sdk._mqtt import BrokerSettings
from edge_sdk.errors import BrokerConnectionError
from edge_sdk.fleet import FleetClient, ReleaseServer, load_release


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-sdk test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    return (
        _write_pem(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        _write_pem(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM)),
        _write_pem(
            folder / "server.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        ),
    )


def test_update_over_tls(mosquitto_factory, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "tls")
    broker = mosquitto_factory(extra_config=[f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"])
    url = f"mqtts://127.0.0.1:{broker.port}"
    with _ota.OtaFleet(broker, tmp_path / "fleet") as fleet:
        v1 = fleet.release(_model(1.0), 1)

        def settings(user: str, client_id: str, **extra) -> BrokerSettings:
            return BrokerSettings(
                url=url,
                client_id=client_id,
                username=user,
                password=broker.credentials(user).password,
                ca_file=str(ca),
                **extra,
            )

        server = ReleaseServer(
            settings("release-server", "rs-tls", max_inflight=100),
            fleet.fleet,
            [load_release(v1.path)],
        )
        server.start_thread()
        try:
            agent = fleet.start_agent("device-1", broker=url, tls={"ca": str(ca)})
            with FleetClient(settings("operator", "op-tls"), fleet.fleet) as op:
                result = op.deploy(v1.path, fleet.key, devices=["device-1"], wave_timeout=30)
                assert result.ok, result.to_dict()
            assert agent.store.active("scorer").version == 1
            # Plain MQTT is not spoken on a TLS listener; a client that does not trust the CA
            # is refused with a reason, not a traceback.
            untrusted = BrokerSettings(
                url=url,
                client_id="op-untrusted",
                username="operator",
                password=broker.operator.password,
            )
            with pytest.raises(BrokerConnectionError, match=r"TLS handshake failed.*certificate"):
                FleetClient(untrusted, fleet.fleet).connect(wait=3)
        finally:
            server.stop()


def test_a_device_on_mqtt_3_1_1(mosquitto, tmp_path: Path) -> None:
    with _ota.OtaFleet(mosquitto, tmp_path / "fleet") as fleet:
        v1 = fleet.release(_model(1.0), 1)
        v2 = fleet.release(_model(2.0), 2)
        fleet.start_server()
        agent = fleet.start_agent("device-1", protocol="3.1.1")
        op = fleet.operator()
        for release in (v1, v2):
            result = op.deploy(release.path, fleet.key, devices=["device-1"], wave_timeout=30)
            assert result.ok, result.to_dict()
        assert agent.store.active("scorer").version == 2
        assert agent.agent.connection.settings.protocol == 4
