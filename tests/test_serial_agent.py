"""The agent over a cable (edge_sdk/agent/serial.py): its requests on firmware_tools' framed
link (docs/serial-link.md, "Commands carried by edge-sdk").

Real peers throughout: socat pty pairs (tests/_serial.py), paced and cut by
firmware_tools.linesim where a cable pull matters, a real model store, releases and commands
signed with real Ed25519 keys, and the real health check (EdgeModel on onnxruntime) on small
ONNX models (tests/_models.py).

References: docs/fleet-protocol.md ("Commands", "Job document", "Status document", "Chunk
message"), docs/telemetry.md (reports and their seq), docs/serial-link.md (the link).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _models
import numpy as np
import pytest
import serial
from _serial import PtyPair
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_sdk import release as rel
from edge_sdk.agent.config import AgentConfig, config_from_dict
from edge_sdk.agent.serial import KINDS, SerialAgent, decode_push_chunk, encode_push_chunk
from edge_sdk.cli.serial import fetch_telemetry, push_release, request_json, send_command
from edge_sdk.commands import Command, sign_command
from edge_sdk.fleet import Release, load_release
from edge_sdk.runtime import EdgeModel
from edge_sdk.store import ModelStore
from firmware_tools.errors import RemoteError
from firmware_tools.linesim import LineSimulator
from firmware_tools.link import LinkEndpoint

FLEET = "factory-7"
DEVICE = "cam-01"
WIDTH = 128  # tiny_mlp: a 128 x 128 float32 weight, 64 KiB of model
X = np.linspace(-1.0, 1.0, WIDTH, dtype=np.float32).reshape(1, WIDTH)


@pytest.fixture(autouse=True)
def _no_thread_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    names = ("link-", "linesim", "serial-agent")
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith(names)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running: {left}"


# --------------------------------------------------------------------------- releases


def mlp(seed: int, width: int = WIDTH) -> tuple[bytes, np.ndarray]:
    """A tiny_mlp-shaped model with its own weights, and its output for X."""
    data = _models.tiny_mlp(None, width=width)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((width, width)).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32)
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    for tensor in model.graph.initializer:
        value = weights if tensor.name == "W" else bias
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    expected = np.maximum(X @ weights + bias, 0.0).astype(np.float32)
    return model.SerializeToString(), expected


@dataclasses.dataclass
class Fleet:
    folder: Path
    key: Any
    public_path: Path

    def release(
        self,
        version: int,
        *,
        seed: int | None = None,
        name: str = "scorer",
        chunk_size: int = 4096,
        smoke_value: np.ndarray | None = None,
        key: Any = None,
        **options: Any,
    ) -> Release:
        data, expected = mlp(seed if seed is not None else version)
        model = self.folder / f"{name}-{version}.onnx"
        model.write_bytes(data)
        smoke = rel.SmokeTest.from_arrays(
            {"x": X}, {"y": expected if smoke_value is None else smoke_value}
        )
        manifest = rel.build_manifest(
            model, name, version, chunk_size=chunk_size, smoke_test=smoke, **options
        )
        path = self.folder / f"{name}-{version}.manifest.json"
        path.write_text(rel.sign(manifest, key or self.key).to_json() + "\n")
        return load_release(path)


def make_fleet(tmp_path: Path) -> Fleet:
    """A fleet key (its public half in fleet.pub) and a folder for release files."""
    folder = tmp_path / "releases"
    folder.mkdir()
    key, public = rel.generate_keypair()
    public_path = tmp_path / "fleet.pub"
    public_path.write_text(rel.public_key_to_base64(public) + "\n")
    return Fleet(folder, key, public_path)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)


def agent_config(tmp_path: Path, fleet: Fleet, **extra: Any) -> AgentConfig:
    settings = {
        "device_id": DEVICE,
        "fleet": FLEET,
        "groups": ["line-2"],
        # Required by agent.toml; a device on a cable never connects to it.
        "broker": "mqtt://127.0.0.1:1",
        "store": str(tmp_path / "device" / "store"),
        "trusted_keys": [str(fleet.public_path)],
        "profile": "none",
        "smoke_runs": 1,
        "telemetry_interval": 3600,
        **extra,
    }
    return config_from_dict(settings, base=tmp_path)


# --------------------------------------------------------------------------- the cable


class Cable:
    """A host port and a device port on socat ptys: bare, or through the line simulator
    (paced at ``baud``, cuttable; ``reopen_proxy`` closes it and starts it again)."""

    def __init__(self, tmp_path: Path, baud: int | None) -> None:
        self.baud = baud or 921600
        self._stack = contextlib.ExitStack()
        self.sim: LineSimulator | None = None
        if baud is None:
            pair = self._stack.enter_context(PtyPair(tmp_path, "cable"))
            self.host_path, self.device_path = pair.a, pair.b
        else:
            one = self._stack.enter_context(PtyPair(tmp_path, "host"))
            two = self._stack.enter_context(PtyPair(tmp_path, "device"))
            self.host_path, self.device_path = one.a, two.a
            self._ends = (one.b, two.b)
            self.sim = LineSimulator(*self._ends, baud=baud, seed=7)
        self.device_port = serial.Serial(self.device_path, self.baud)
        self.host_port = serial.Serial(self.host_path, self.baud)

    def reopen_proxy(self, after: float) -> None:
        assert self.sim is not None
        self.sim.close()
        time.sleep(after)
        self.sim = LineSimulator(*self._ends, baud=self.baud, seed=8)

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
        self.host_port.close()
        self.device_port.close()
        self._stack.close()


class Device:
    """A SerialAgent serving the device end of a cable on a thread."""

    def __init__(self, config: AgentConfig, port: serial.SerialBase, **options: Any) -> None:
        self.agent = SerialAgent(config, **options)
        self.link = LinkEndpoint(port, role="device").open()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, name="serial-agent-test", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.agent.serve(self.link)
        except BaseException as exc:  # reported by close()
            self.failure.append(exc)

    @property
    def store(self) -> ModelStore:
        return self.agent.store

    def close(self) -> None:
        self.agent.stop()
        self.thread.join(10)
        self.link.close()
        self.agent.close()
        assert not self.thread.is_alive()
        assert not self.failure, self.failure


@contextlib.contextmanager
def bench(
    tmp_path: Path, fleet: Fleet, *, baud: int | None = None, **config: Any
) -> Iterator[tuple[Device, LinkEndpoint, Cable]]:
    cable = Cable(tmp_path, baud)
    try:
        device = Device(agent_config(tmp_path, fleet, **config), cable.device_port)
        try:
            with LinkEndpoint(cable.host_port, role="host") as host:
                yield device, host, cable
        finally:
            device.close()
    finally:
        cable.close()


def value_of(store: ModelStore) -> np.ndarray:
    model = EdgeModel.from_store(store, "scorer", profile=None)
    try:
        (out,) = model.run({"x": X}).values()
        return np.asarray(out)
    finally:
        model.close()


def signed(fleet: Fleet, command: str, args: dict[str, Any] | None = None, **options: Any) -> bytes:
    return sign_command(Command.create(FLEET, DEVICE, command, args or {}, **options), fleet.key)


# --------------------------------------------------------------------------- wire helpers


def test_push_chunk_payload_round_trips_and_rejects_garbage() -> None:
    payload = encode_push_chunk("scorer", 7, 3, b"\x00\x01data")
    assert payload.startswith(b'{"name":"scorer","version":7}\nEDGB\x01\x00\x00\x00\x03')
    name, version, index, data = decode_push_chunk(payload)
    assert (name, version, index, bytes(data)) == ("scorer", 7, 3, b"\x00\x01data")
    for bad, why in [
        (b"no header", "no header line"),
        (b'{"name":"../x","version":1}\nEDGB\x01\x00\x00\x00\x00', "name"),
        (b'{"name":"a","version":0}\nEDGB\x01\x00\x00\x00\x00', "version"),
        (b'{"name":"a","version":true}\nEDGB\x01\x00\x00\x00\x00', "version"),
        (b'{"name":"a","version":1,"x":1}\nEDGB\x01\x00\x00\x00\x00', "unknown field"),
        (b'{"name":"a","version":1}\nEDGX\x01\x00\x00\x00\x00', "chunk message"),
        (b"[1]\n", "JSON object"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_push_chunk(bad)


# --------------------------------------------------------------------------- reads


def test_info_and_diag_over_the_cable_are_unsigned_reads(tmp_path: Path, fleet: Fleet) -> None:
    with bench(tmp_path, fleet) as (_, host, _):
        info = request_json(host, "info")
        status = info["status"]
        assert (status["device"], status["fleet"], status["groups"]) == (
            DEVICE,
            FLEET,
            ["line-2"],
        )
        assert status["transport"] == "serial" and status["models"] == {}
        assert info["link"]["version"] == 1 and info["jobs"] == {}
        assert info["firmware_tools_version"] and info["python"]
        diag = request_json(host, "diag")
        assert diag["integrity"] == [] and diag["updates"] == {}
        assert diag["telemetry"]["interval_s"] == 3600
        assert "system" in diag and diag["commands"] == {"accepted": 0, "refused": 0, "failed": 0}


def test_bad_requests_are_refused_with_a_code_and_never_end_the_serve_loop(
    tmp_path: Path, fleet: Fleet
) -> None:
    with bench(tmp_path, fleet) as (_, host, _):
        cases: list[tuple[str, bytes, str]] = [
            ("nonsense", b"", "unknown_kind"),
            ("info", b"{not json", "bad_request"),
            ("info", b'{"x": 1}', "bad_request"),
            ("telemetry", b'{"limit": 0}', "bad_request"),
            ("telemetry", b'{"limit": "all"}', "bad_request"),
            ("telemetry.ack", b"{}", "bad_request"),
            ("push.begin", b"", "malformed"),
            ("push.begin", b"\xff\xfe", "malformed"),
            ("push.chunk", b"garbage", "bad_request"),
            ("push.chunk", encode_push_chunk("scorer", 1, 0, b"x"), "no_push"),
            ("push.finish", b'{"name": "scorer", "version": 1}', "no_push"),
            ("push.finish", b'{"name": "../etc", "version": 1}', "bad_request"),
        ]
        for kind, payload, code in cases:
            with pytest.raises(RemoteError) as caught:
                host.request(kind, payload, timeout=10)
            assert caught.value.code == code, (kind, payload, caught.value)
            assert caught.value.reason
        # Every kind is still answered afterwards.
        assert request_json(host, "info")["status"]["device"] == DEVICE
        reply = json.loads(host.request("cmd", b"garbage", timeout=10))
        assert reply["ok"] is False and reply["error"]["code"] == "malformed"
        assert set(KINDS) == {
            "info",
            "diag",
            "telemetry",
            "telemetry.ack",
            "cmd",
            "push.begin",
            "push.chunk",
            "push.finish",
        }


def test_fuzzed_requests_get_an_answer_or_a_coded_refusal(tmp_path: Path, fleet: Fleet) -> None:
    """Whatever the bytes, the handler answers or refuses with a code of its own: never an
    unexpected exception (which the link would report as "failed")."""
    agent = SerialAgent(agent_config(tmp_path, fleet))
    agent.start()
    release = fleet.release(1)
    prefixes = [b"", release.text.encode()[:200], b'{"name":"scorer","version":1}\nEDGB\x01']

    @settings(max_examples=300, deadline=None)
    @given(
        kind=st.sampled_from([*KINDS, "push", "x"]),
        prefix=st.sampled_from(prefixes),
        body=st.one_of(
            st.binary(max_size=64),
            st.dictionaries(
                st.sampled_from(["limit", "fresh", "up_to", "name", "version", "x"]),
                st.one_of(st.integers(-5, 2**60), st.text(max_size=8), st.booleans(), st.none()),
            ).map(lambda d: json.dumps(d).encode()),
        ),
    )
    def check(kind: str, prefix: bytes, body: bytes) -> None:
        try:
            reply = agent.handle(kind, prefix + body)
        except RemoteError as exc:
            assert exc.code != "failed" and exc.reason
        else:
            assert isinstance(json.loads(reply), dict)

    try:
        check()
    finally:
        agent.close()
    assert agent.store.versions("scorer") == ()


# --------------------------------------------------------------------------- commands


def test_signed_commands_and_rollback_over_cmd(tmp_path: Path, fleet: Fleet) -> None:
    v1, v2 = fleet.release(1), fleet.release(2)
    with bench(tmp_path, fleet) as (device, host, _):
        assert push_release(host, v1).ok and push_release(host, v2).ok
        assert device.store.active("scorer").version == 2
        # Unsigned, expired and replayed commands are refused with the MQTT path's codes.
        document = json.loads(signed(fleet, "rollback", {"model": "scorer"}))
        del document["signature"]
        reply = request_json(host, "cmd", json.dumps(document).encode())
        assert reply["error"]["code"] == "unsigned"
        past = datetime.now(timezone.utc) - timedelta(hours=2)
        reply = request_json(host, "cmd", signed(fleet, "rollback", {"model": "scorer"}, now=past))
        assert reply["ok"] is False and reply["error"]["code"] == "expired"
        stranger, _ = rel.generate_keypair()
        foreign = sign_command(Command.create(FLEET, DEVICE, "ping"), stranger)
        assert request_json(host, "cmd", foreign)["error"]["code"] == "unknown_key"
        other = sign_command(Command.create(FLEET, "cam-02", "ping"), fleet.key)
        assert request_json(host, "cmd", other)["error"]["code"] == "wrong_device"
        assert device.store.active("scorer").version == 2
        # A signed rollback goes back to version 1 and marks 2 bad.
        command = signed(fleet, "rollback", {"model": "scorer", "from": 2})
        reply = request_json(host, "cmd", command)
        assert reply["ok"] is True, reply
        assert reply["result"] == {"model": "scorer", "undone": 2, "active": 1}
        assert request_json(host, "cmd", command)["error"]["code"] == "replayed"
        assert device.store.active("scorer").version == 1
        assert device.store.bad_reason("scorer", 2) is not None
        info = request_json(host, "info")
        assert info["status"]["models"]["scorer"]["active"] == 1
        assert info["jobs"]["scorer"]["state"] == "rolled_back"
        # Through the host's helper: the device's identity comes from info.
        reply = send_command(host, "set_telemetry_interval", {"seconds": 5}, fleet.key)
        assert reply["ok"] and reply["result"] == {"interval_s": 5.0, "previous_s": 3600.0}
        assert request_json(host, "info")["status"]["telemetry_interval_s"] == 5.0
        assert request_json(host, "diag")["commands"]["accepted"] == 2


# --------------------------------------------------------------------------- telemetry


def test_telemetry_dump_and_ack_store_and_forward(tmp_path: Path, fleet: Fleet) -> None:
    with bench(tmp_path, fleet) as (device, host, _):
        telemetry = device.agent.telemetry
        assert telemetry is not None
        stored = [telemetry.report_now() for _ in range(3)]
        assert all(seq is not None for seq in stored)
        first = request_json(host, "telemetry", {"limit": 2})
        # Oldest first; a fresh report was made for the request (4 in the spool now).
        assert [r["seq"] for r in first["reports"]] == stored[:2]
        assert first["pending"] == 4 and first["more"] is True
        assert all(r["historical"] and r["device"] == DEVICE for r in first["reports"])
        reports: list[dict[str, Any]] = []
        result = fetch_telemetry(host, reports.append, ack=True, limit=2)
        assert result.pending == 0 and result.acknowledged == result.written == 5
        seqs = [r["seq"] for r in reports]
        assert seqs == sorted(seqs) and seqs[:3] == stored and len(set(seqs)) == 5
        # Live is only the report made for the request that returned it (the first page's
        # fresh report comes on the third page here: historical by then).
        assert all(r["historical"] for r in reports)
        assert all(r["dropped"] == 0 for r in reports)
        assert telemetry.spool.pending() == 0
        # Acknowledged reports are gone; nothing is removed beyond up_to.
        again = request_json(host, "telemetry", {"fresh": True})
        assert [r["seq"] for r in again["reports"]] == [max(seqs) + 1]
        assert again["reports"][0]["historical"] is False and again["more"] is False
        assert request_json(host, "telemetry.ack", {"up_to": max(seqs)}) == {
            "acknowledged": 0,
            "pending": 1,
        }


def test_telemetry_off_is_unavailable(tmp_path: Path, fleet: Fleet) -> None:
    with bench(tmp_path, fleet, telemetry_interval=0) as (_, host, _):
        with pytest.raises(RemoteError) as caught:
            request_json(host, "telemetry")
        assert caught.value.code == "unavailable"


# --------------------------------------------------------------------------- pushes


def test_a_push_activates_a_verified_model_and_the_downgrade_rule_holds(
    tmp_path: Path, fleet: Fleet
) -> None:
    v1, v2 = fleet.release(1), fleet.release(2)
    with bench(tmp_path, fleet) as (device, host, _):
        result = push_release(host, v1)
        assert result.ok and result.reason is None
        assert (result.chunks, result.sent, result.on_device) == (v1.manifest.chunk_count,) * 2 + (
            0,
        )
        assert result.bytes_sent == v1.manifest.size
        assert result.job is not None and result.job["state"] == "succeeded"
        assert result.status is not None and result.status["models"]["scorer"]["active"] == 1
        active = device.store.active("scorer")
        assert active.version == 1 and active.sha256 == v1.manifest.sha256
        assert all(check.ok for check in device.store.verify_active("scorer"))
        assert Path(active.path).read_bytes() == v1.model_path.read_bytes()
        _, expected = mlp(1)
        np.testing.assert_allclose(value_of(device.store), expected, rtol=1e-5, atol=1e-5)
        # The same release again: nothing to send, nothing changes.
        again = push_release(host, v1)
        assert again.ok and again.sent == 0 and again.on_device == v1.manifest.chunk_count
        assert push_release(host, v2).ok
        # Going back needs the signed manifest's permission, as over MQTT ...
        with pytest.raises(RemoteError) as caught:
            push_release(host, v1)
        assert caught.value.code == "downgrade"
        refusal = request_json(host, "info")["status"]["last_refusal"]
        assert refusal["topic"] == "push" and "release refused" in refusal["reason"]
        # ... and with it the kept version comes back without a byte sent.
        back = push_release(host, fleet.release(1, downgrade=True))
        assert back.ok and back.sent == 0
        assert device.store.active("scorer").version == 1
        # Another file under a version the device holds is a conflict.
        with pytest.raises(RemoteError) as caught:
            push_release(host, fleet.release(2, seed=9))
        assert caught.value.code == "conflict"
        assert device.store.active("scorer").version == 1


def test_a_model_failing_its_smoke_test_is_rolled_back(tmp_path: Path, fleet: Fleet) -> None:
    good = fleet.release(1)
    bad = fleet.release(2, smoke_value=np.full((1, WIDTH), 42.0, np.float32))
    with bench(tmp_path, fleet) as (device, host, _):
        assert push_release(host, good).ok
        result = push_release(host, bad)
        assert result.state == "rolled_back" and not result.ok
        assert "smoke test failed" in (result.reason or "")
        assert device.store.active("scorer").version == 1
        assert device.store.bad_reason("scorer", 2) is not None
        with pytest.raises(RemoteError) as caught:
            push_release(host, bad)
        assert caught.value.code == "bad_version"


def test_a_tampered_model_and_an_unknown_key_are_refused(tmp_path: Path, fleet: Fleet) -> None:
    v1 = fleet.release(1)
    tampered_model = tmp_path / "tampered.onnx"
    data = bytearray(v1.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered_model.write_bytes(bytes(data))
    tampered = Release(v1.manifest, v1.text, tampered_model)
    stranger, _ = rel.generate_keypair()
    foreign = fleet.release(3, key=stranger)
    with bench(tmp_path, fleet) as (device, host, _):
        with pytest.raises(RemoteError) as caught:
            push_release(host, tampered)
        assert caught.value.code == "chunk_hash"
        bad_index = (len(data) // 2) // v1.manifest.chunk_size
        assert f"chunk {bad_index} failed verification" in caught.value.reason
        with pytest.raises(RemoteError) as caught:
            push_release(host, foreign)
        assert caught.value.code == "unknown_key" and "does not trust" in caught.value.reason
        assert device.store.versions("scorer") == ()
        # The honest file then completes what the tampered push left: the chunks before the bad
        # one (and the few sent behind it) were kept.
        result = push_release(host, v1)
        assert result.ok
        assert bad_index <= result.on_device <= bad_index + 4
        assert result.sent == v1.manifest.chunk_count - result.on_device
        assert device.store.active("scorer").sha256 == v1.manifest.sha256


def test_a_restarted_device_resumes_the_push_from_its_disk(tmp_path: Path, fleet: Fleet) -> None:
    v1 = fleet.release(1)
    config = agent_config(tmp_path, fleet)
    with PtyPair(tmp_path, "cable") as pair:
        device_port = serial.Serial(pair.b, 921600)
        host_port = serial.Serial(pair.a, 921600)
        try:
            device = Device(config, device_port)
            try:
                with LinkEndpoint(host_port, role="host") as host:
                    begin = request_json(host, "push.begin", v1.text.encode())
                    assert begin["missing"] == [[0, v1.manifest.chunk_count]]
                    with v1.model_path.open("rb") as model:
                        for index in range(5):
                            chunk = model.read(v1.manifest.chunk_size)
                            payload = encode_push_chunk("scorer", 1, index, chunk)
                            assert request_json(host, "push.chunk", payload) == {"new": 1}
                    device.close()
                    device = Device(config, device_port)  # the agent restarted
                    result = push_release(host, v1)
            finally:
                device.close()
        finally:
            host_port.close()
            device_port.close()
    assert result.ok and result.on_device == 5
    assert result.sent == v1.manifest.chunk_count - 5


@pytest.mark.parametrize("pull", ["cut", "proxy closed and reopened"])
def test_a_cable_pull_mid_push_resumes_and_ends_verified(
    tmp_path: Path, fleet: Fleet, pull: str
) -> None:
    big = fleet.release(1, chunk_size=8192)  # 64 KiB of weights: about 0.8 s at 921600 baud
    assert big.manifest.size > 60_000
    with bench(tmp_path, fleet, baud=921600) as (device, host, cable):
        session = (host.session, host.peer_session)
        progress: list[int] = []
        pulled = threading.Event()

        def pull_the_cable() -> None:
            # Once a quarter of the model crossed: mid-transfer whatever the machine's speed.
            deadline = time.monotonic() + 30
            while (not progress or progress[-1] < big.manifest.size // 4) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.005)
            pulled.set()
            assert cable.sim is not None
            if pull == "cut":
                cable.sim.cut()
                time.sleep(2.0)
                cable.sim.restore()
            else:
                cable.reopen_proxy(after=2.0)

        puller = threading.Thread(target=pull_the_cable)
        puller.start()
        started = time.monotonic()
        result = push_release(host, big, progress=lambda done, total: progress.append(done))
        puller.join()
        assert pulled.is_set() and time.monotonic() - started > 2.0
        assert progress[-1] == big.manifest.size
        assert result.ok, result
        assert host.stats().timeouts > 0  # frames were lost and sent again
        assert (host.session, host.peer_session) == session  # one link session throughout
        active = device.store.active("scorer")
        assert active.sha256 == big.manifest.sha256
        assert all(check.ok for check in device.store.verify_active("scorer"))
        assert hashlib.sha256(Path(active.path).read_bytes()).hexdigest() == big.manifest.sha256


def test_handler_runs_one_request_at_a_time_with_ticks(tmp_path: Path, fleet: Fleet) -> None:
    """Telemetry ticks run beside the serve loop; requests still see a consistent spool."""
    with bench(tmp_path, fleet, telemetry_interval=1) as (_, host, _):
        time.sleep(2.5)
        reports: list[dict[str, Any]] = []
        result = fetch_telemetry(host, reports.append, ack=True)
        assert result.written >= 2 and result.pending >= 0
        seqs: list[int] = [r["seq"] for r in reports]
        assert seqs == sorted(set(seqs))


def test_a_restart_command_stops_the_agent_after_its_reply(tmp_path: Path, fleet: Fleet) -> None:
    with bench(tmp_path, fleet) as (device, host, _):
        reply = request_json(host, "cmd", signed(fleet, "restart"))
        assert reply["ok"] is True and reply["result"] == {"restarting": True}
        device.thread.join(10)
        assert not device.thread.is_alive()  # serve returned: run() would exit 75
        assert device.agent._restart is True


def test_run_reopens_a_port_that_vanished(tmp_path: Path, fleet: Fleet) -> None:
    """A USB adapter unplugged and plugged back: the device node vanishes (the link's port
    fails) and comes back under the same name; the agent serves again without a restart."""
    agent = SerialAgent(agent_config(tmp_path, fleet))
    pair = PtyPair(tmp_path, "usb")
    outcome: list[int] = []

    def run() -> None:
        outcome.append(agent.run(pair.b, baudrate=921600, install_signals=False))

    thread = threading.Thread(target=run, name="serial-agent-run", daemon=True)
    thread.start()
    try:
        for _ in range(2):
            with serial.Serial(pair.a, 921600) as port, LinkEndpoint(port) as host:
                assert request_json(host, "info")["status"]["device"] == DEVICE
            pair.close()  # unplugged ...
            time.sleep(0.3)
            pair = PtyPair(tmp_path, "usb")  # ... and back
    finally:
        agent.stop()
        thread.join(10)
        pair.close()
    assert outcome == [0]
