"""The embedded default: a digit classifier and held-out sample images shipped in the package.

The model is a small CNN trained on scikit-learn's 8x8 digits (examples/train_digits.py
reproduces it) and carries its labels and preprocessing in its metadata, so
``EdgeModel.load(model_path()).predict(sample_paths()[0])`` needs nothing else.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["model_path", "sample_paths"]

_PACKAGE = resources.files("edge_sdk")


def model_path() -> Path:
    """Path of the bundled digits model (``edge_sdk/models/digits.onnx``)."""
    return Path(str(_PACKAGE / "models" / "digits.onnx"))


def sample_paths() -> list[Path]:
    """The bundled held-out sample images, named ``digit_<label>_<index>.png``, sorted."""
    folder = Path(str(_PACKAGE / "samples"))
    return sorted(folder.glob("*.png"))
