"""The fleet channel over TLS and over MQTT 3.1.1, against a real Mosquitto: a TLS listener with
a certificate from a throw-away CA (``_broker.TestCertificateAuthority``, made with the
cryptography package), a device agent that trusts that CA, and a device on MQTT 3.1.1 beside an
MQTT 5 release server. Mutual TLS and every refusal: tests/test_fleet_tls.py."""

from __future__ import annotations

from pathlib import Path

import _models
import _ota
import numpy as np
import pytest
from _broker import BrokerTLS, TestCertificateAuthority

from edge_sdk._mqtt import BrokerSettings
from edge_sdk.errors import BrokerConnectionError
from edge_sdk.fleet import FleetClient, ReleaseServer, load_release


def _model(value: float) -> bytes:
    return _models.constant_head(np.full((1, 2), value, np.float32), size=8)


def test_update_over_tls(mosquitto_factory, tmp_path: Path) -> None:
    authority = TestCertificateAuthority(tmp_path / "tls")
    server = authority.issue_server(tmp_path / "tls", "server")
    ca = authority.cert
    # Server-side TLS only (tests/test_fleet_tls.py has the mutual-TLS listener).
    broker = mosquitto_factory(tls=BrokerTLS(server.cert, server.key, ca))
    url = broker.url
    assert url == f"mqtts://127.0.0.1:{broker.port}"
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
            # A client that does not trust the CA (no CA file: the system's CAs) is refused
            # with a reason, not a traceback.
            untrusted = BrokerSettings(
                url=url,
                client_id="op-untrusted",
                username="operator",
                password=broker.operator.password,
            )
            refusal = r"TLS handshake failed: certificate verify failed .* the system's trusted CAs"
            with pytest.raises(BrokerConnectionError, match=refusal):
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
