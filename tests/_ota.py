"""A whole over-the-air setup for tests: a real Mosquitto broker, a fleet key, release files on
disk, a release server, device agents (in threads or as ``edge-sdk agent`` processes) and an
operator client, all on loopback.

    with OtaFleet(broker, tmp_path) as fleet:
        release = fleet.release(model_bytes, version=2)
        fleet.start_server()
        agent = fleet.start_agent("device-1")
        result = fleet.operator().deploy(release.path, fleet.key, devices=["device-1"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import _broker
import numpy as np

from edge_sdk import release as rel
from edge_sdk._mqtt import BrokerSettings
from edge_sdk.agent.config import AgentConfig, config_from_dict
from edge_sdk.agent.mqtt import MqttAgent
from edge_sdk.fleet import FleetClient, ReleaseServer, load_release
from edge_sdk.store import ModelStore

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_agent_child.py")


@dataclasses.dataclass
class ReleaseFiles:
    path: Path  # the signed manifest
    model: Path
    manifest: rel.ReleaseManifest
    text: str


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class AgentThread:
    """An MqttAgent running on a thread of the test process."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent = MqttAgent(config)
        self.thread = threading.Thread(
            target=self.agent.run, kwargs={"install_signals": False}, daemon=True
        )
        self.thread.start()

    @property
    def store(self) -> ModelStore:
        return self.agent.store

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the agent did not stop"


class AgentProcess:
    """``edge-sdk agent`` in a child process (for SIGKILL); ``crash_at`` kills it at a store
    crash point, ``crash_after`` the n-th time that point is reached."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        *,
        crash_at: str | None = None,
        crash_after: int = 1,
        die_in_health_check: bool = False,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(CHILD.parent)])
        if crash_at is not None:
            env["EDGE_SDK_TEST_CRASH_AT"] = f"{crash_at}:{crash_after}"
        if die_in_health_check:
            env["EDGE_SDK_TEST_DIE_IN_HEALTH_CHECK"] = "1"
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), str(config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.log.close()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        self.kill()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class OtaFleet:
    def __init__(
        self, broker: _broker.MosquittoBroker, workdir: Path, *, chunk_size: int = 4096
    ) -> None:
        self.broker = broker
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self.private_key, self.public_key = rel.generate_keypair()
        self.key = self.private_key
        self.public_key_path = self.workdir / "fleet.pub"
        self.public_key_path.write_text(rel.public_key_to_base64(self.public_key) + "\n")
        self.releases_dir = self.workdir / "releases"
        self.releases_dir.mkdir(exist_ok=True)
        self.server: ReleaseServer | None = None
        self.agents: list[AgentThread] = []
        self.processes: list[AgentProcess] = []
        self._operators: list[FleetClient] = []

    @property
    def fleet(self) -> str:
        return self.broker.fleet

    # -- releases ---------------------------------------------------------------------------

    def release(
        self,
        data: bytes,
        version: int,
        *,
        name: str = "scorer",
        smoke: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
        key: Any = None,
        **manifest_options: Any,
    ) -> ReleaseFiles:
        model = self.releases_dir / f"{name}-{version}.onnx"
        model.write_bytes(data)
        options: dict[str, Any] = {"chunk_size": self.chunk_size}
        if smoke is not None:
            options["smoke_test"] = rel.SmokeTest.from_arrays(smoke[0], smoke[1])
        options.update(manifest_options)
        manifest = rel.build_manifest(model, name, version, **options)
        text = rel.sign(manifest, key or self.private_key).to_json()
        path = self.releases_dir / f"{name}-{version}.manifest.json"
        path.write_text(text + "\n")
        return ReleaseFiles(path, model, rel.SignedManifest.from_json(text).manifest, text)

    # -- parts ------------------------------------------------------------------------------

    def settings(self, username: str, client_id: str | None = None, **extra: Any) -> BrokerSettings:
        creds = self.broker.credentials(username)
        return BrokerSettings(
            url=self.broker.url,
            client_id=client_id or f"{username}-{os.getpid()}-{time.monotonic_ns()}",
            username=creds.username,
            password=creds.password,
            reconnect_max=2,
            **extra,
        )

    def start_server(self, releases: Iterable[ReleaseFiles] | None = None) -> ReleaseServer:
        found = (
            [load_release(r.path) for r in releases]
            if releases is not None
            else [load_release(p) for p in sorted(self.releases_dir.glob("*.manifest.json"))]
        )
        server = ReleaseServer(
            self.settings(self.broker.release_server.username, max_inflight=1000),
            self.fleet,
            found,
        )
        server.start_thread()
        self.server = server
        return server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def agent_config(self, device_id: str, **overrides: Any) -> dict[str, Any]:
        creds = self.broker.device(device_id)
        data: dict[str, Any] = {
            "device_id": device_id,
            "fleet": self.fleet,
            "broker": self.broker.url,
            "username": creds.username,
            "password": creds.password,
            "store": str(self.workdir / "devices" / device_id / "store"),
            "trusted_keys": [str(self.public_key_path)],
            "profile": "none",
            "window": 8,
            "request_timeout": 2,
            "reconnect_max": 2,
        }
        data.update(overrides)
        return data

    def start_agent(self, device_id: str, **overrides: Any) -> AgentThread:
        config = config_from_dict(self.agent_config(device_id, **overrides))
        agent = AgentThread(config)
        self.agents.append(agent)
        return agent

    def write_agent_config(self, device_id: str, **overrides: Any) -> Path:
        data = self.agent_config(device_id, **overrides)
        path = self.workdir / f"{device_id}.toml"
        lines = []
        for key, value in data.items():
            lines.append(f"{key} = {json.dumps(value)}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_agent_process(
        self,
        device_id: str,
        *,
        crash_at: str | None = None,
        crash_after: int = 1,
        die_in_health_check: bool = False,
        **overrides: Any,
    ) -> AgentProcess:
        path = self.write_agent_config(device_id, **overrides)
        process = AgentProcess(
            path,
            self.workdir / f"{device_id}.log",
            crash_at=crash_at,
            crash_after=crash_after,
            die_in_health_check=die_in_health_check,
        )
        self.processes.append(process)
        return process

    def store_of(self, device_id: str) -> ModelStore:
        return ModelStore(self.workdir / "devices" / device_id / "store")

    def operator(self) -> FleetClient:
        client = FleetClient(self.settings(self.broker.operator.username), self.fleet).connect()
        self._operators.append(client)
        return client

    def job(self, operator: FleetClient, device: str, name: str = "scorer") -> dict[str, Any]:
        with operator._cond:
            return dict(operator.jobs.get((device, name)) or {})

    def wait_job(
        self,
        operator: FleetClient,
        device: str,
        version: int,
        states: Iterable[str],
        *,
        name: str = "scorer",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        wanted = set(states)

        def matches() -> dict[str, Any] | None:
            job = self.job(operator, device, name)
            if job.get("version") == version and job.get("state") in wanted:
                return job
            return None

        return wait_for(matches, timeout, f"{device} {name} v{version} in {sorted(wanted)}")

    def close(self) -> None:
        for agent in self.agents:
            if agent.thread.is_alive():
                agent.stop()
        for process in self.processes:
            process.close()
        for client in self._operators:
            client.close()
        self.stop_server()

    def __enter__(self) -> OtaFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def days(n: int) -> timedelta:
    return timedelta(days=n)
