from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _models

from edge_sdk import bundled


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
