from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _cli
import _models

from edge_sdk import bundled


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # With NUMBA_DISABLE_JIT=1 (the plain-Python fallback CI step), tests about compiled code
    # itself are deselected, not skipped: they have nothing to test there.
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        return
    kept = [item for item in items if item.get_closest_marker("jit_only") is None]
    deselected = [item for item in items if item.get_closest_marker("jit_only") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_mlp_path(models_dir: Path) -> Path:
    path = models_dir / "tiny_mlp.onnx"
    _models.tiny_mlp(path)
    return path


@pytest.fixture(scope="session")
def dynamic_mlp_path(models_dir: Path) -> Path:
    path = models_dir / "dynamic_mlp.onnx"
    _models.tiny_mlp(path, width=16, batch="batch")
    return path


@pytest.fixture(scope="session")
def two_inputs_path(models_dir: Path) -> Path:
    path = models_dir / "two_inputs.onnx"
    _models.two_inputs(path)
    return path


@pytest.fixture(scope="session")
def digits_path() -> Path:
    return bundled.model_path()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> _cli.CLI:
    """``cli("run", "--json")``: the edge-sdk command in-process, as a Result(code, out, err)."""
    return _cli.in_process(capsys)


# --- Real MQTT broker (tests/_broker.py, docs/mqtt-broker.md) --------------------------------
# Appended here rather than at the top so that concurrent edits above do not collide.
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import _broker  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[_broker.MosquittoBroker]:
    """A real Mosquitto on a free loopback port: authentication on, per-user ACLs, no
    persistence; users ``operator``, ``release-server``, ``device-1`` .. ``device-3`` in fleet
    ``fleet-1``. Skipped when mosquitto is not installed, failed under EDGE_SDK_REQUIRE_PEERS=1.
    Other settings (persistence, limits, devices): ``mosquitto_factory(**options)``."""
    with _broker.MosquittoBroker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., _broker.MosquittoBroker]]:
    """``mosquitto_factory(persistence=True, devices=[...])`` starts a broker with those
    ``MosquittoBroker`` options; every broker made is closed (by pid) at teardown."""
    made: list[_broker.MosquittoBroker] = []

    def make(**options: Any) -> _broker.MosquittoBroker:
        broker = _broker.MosquittoBroker(tmp_path / f"mosquitto-{len(made)}", **options)
        made.append(broker)
        return broker.start()

    yield make
    for broker in reversed(made):
        broker.close()


# --- Serial peers (tests/_serial.py): nothing may outlive its test ---------------------------


@pytest.fixture(autouse=True)
def _no_serial_peer_left_behind() -> Iterator[None]:
    yield
    import _serial

    left = _serial.children()
    if left:
        for pgid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        pytest.fail(f"the test left serial peers running: {sorted(left.values())}")
