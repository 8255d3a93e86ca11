"""The exception tree of edge-sdk.

Every error the SDK raises on bad input or a failed operation is an ``EdgeSDKError``; programming
mistakes (a wrong argument type, a call on a closed object) stay ``TypeError``, ``ValueError`` or
``RuntimeError`` so they are not mistaken for field conditions. Errors carry structured fields so
that diagnostics and the fleet channel can report them without parsing messages::

    EdgeSDKError
    ├── ModelLoadError                  path, reason
    │   ├── ModelNotFoundError            the path does not exist
    │   ├── ModelIsDirectoryError         the path is a directory
    │   ├── EmptyModelError               zero bytes
    │   ├── TruncatedModelError           the protobuf stream ends inside a field
    │   ├── CorruptModelError             not an ONNX protobuf, or onnxruntime cannot parse it
    │   ├── InvalidModelError             parses, but the graph is invalid
    │   └── UnsupportedModelError         an operator or type this onnxruntime does not implement
    ├── ModelMetadataError              key: a metadata_props entry is malformed
    ├── ProviderError
    │   └── ProviderUnavailableError      required providers did not start; fallbacks say why
    ├── InputError                      input_name, expected, got
    │   ├── InputNameError
    │   │   ├── UnknownInputError         a name the model does not have (likely a typo)
    │   │   ├── MissingInputError         a required input is absent
    │   │   └── ExtraInputError           every input is present, plus names the model lacks
    │   ├── InputTypeError                not an array, or an array of the wrong dtype
    │   ├── InputRankError                wrong number of dimensions
    │   └── InputShapeError               a fixed dimension differs
    ├── InferenceError                  onnxruntime failed while running
    ├── PreprocessError                 an input could not be decoded or converted
    ├── PostprocessError                an output does not fit the declared postprocessing
    ├── ProfileError                    a device profile
    │   ├── UnknownProfileError           no profile by that name (suggestions: the nearest)
    │   └── ProfileFormatError            path, key: malformed TOML, unknown key, wrong type
    ├── CalibrationError                folder, reason: int8 calibration data unusable
    ├── OptimizeError                   an offline optimisation step failed; nothing written
    ├── ReferenceDataError              source, reason: validation arrays unreadable or mismatched
    └── ModelClosedError                the model was used after close() (also a RuntimeError)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CalibrationError",
    "CorruptModelError",
    "EdgeSDKError",
    "EmptyModelError",
    "ExtraInputError",
    "InferenceError",
    "InputError",
    "InputNameError",
    "InputRankError",
    "InputShapeError",
    "InputTypeError",
    "InvalidModelError",
    "MissingInputError",
    "ModelClosedError",
    "ModelIsDirectoryError",
    "ModelLoadError",
    "ModelMetadataError",
    "ModelNotFoundError",
    "OptimizeError",
    "PostprocessError",
    "PreprocessError",
    "ProfileError",
    "ProfileFormatError",
    "ProviderError",
    "ProviderUnavailableError",
    "ReferenceDataError",
    "TruncatedModelError",
    "UnknownInputError",
    "UnknownProfileError",
    "UnsupportedModelError",
]


class EdgeSDKError(Exception):
    """Root of every error edge-sdk raises for a field condition or bad input."""


class ModelLoadError(EdgeSDKError):
    """A model could not be loaded; ``path`` is None for models given as bytes."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        where = "model given as bytes" if path is None else f"model {self.path!r}"
        super().__init__(f"cannot load {where}: {reason}")


class ModelNotFoundError(ModelLoadError):
    """The model path does not exist."""


class ModelIsDirectoryError(ModelLoadError):
    """The model path is a directory, not a file."""


class EmptyModelError(ModelLoadError):
    """The model file or buffer holds zero bytes."""


class TruncatedModelError(ModelLoadError):
    """The model ends in the middle of a protobuf field: an interrupted copy or download."""


class CorruptModelError(ModelLoadError):
    """The bytes are not an ONNX model (not protobuf, or onnxruntime cannot parse them)."""


class InvalidModelError(ModelLoadError):
    """The model parses but its graph is invalid (type or shape inference failed)."""


class UnsupportedModelError(ModelLoadError):
    """The model uses an operator, opset or type this onnxruntime build does not implement."""


class ModelMetadataError(EdgeSDKError):
    """A ``metadata_props`` entry of a model is malformed."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"model metadata {key!r} is invalid: {reason}")


class ProviderError(EdgeSDKError):
    """An execution provider problem."""


class ProviderUnavailableError(ProviderError):
    """Providers the caller required are not running; ``fallbacks`` holds the reason for each."""

    def __init__(
        self, missing: Sequence[str], active: Sequence[str], fallbacks: Sequence[Any]
    ) -> None:
        self.missing = tuple(missing)
        self.active = tuple(active)
        self.fallbacks = tuple(fallbacks)
        reasons = (
            "; ".join(f"{f.provider}: {f.reason}" for f in self.fallbacks) or "no reason given"
        )
        super().__init__(
            f"required execution provider(s) {', '.join(self.missing)} not running "
            f"(running: {', '.join(self.active)}; {reasons}). Check `edge-sdk info` for the "
            "providers this onnxruntime build offers."
        )


class InputError(EdgeSDKError):
    """A model input is wrong; ``input_name``, ``expected`` and ``got`` say how."""

    def __init__(self, input_name: str | None, expected: str, got: str, message: str) -> None:
        self.input_name = input_name
        self.expected = expected
        self.got = got
        super().__init__(message)


class InputNameError(InputError):
    """The names in a feed do not match the model's inputs."""


class UnknownInputError(InputNameError):
    """A feed names an input the model does not have, while a model input is missing."""


class MissingInputError(InputNameError):
    """A model input is missing from the feed."""


class ExtraInputError(InputNameError):
    """The feed has every model input plus names the model does not have."""


class InputTypeError(InputError):
    """An input is not an array of the model's dtype."""


class InputRankError(InputError):
    """An input has the wrong number of dimensions."""


class InputShapeError(InputError):
    """A fixed dimension of an input differs from the model's."""


class InferenceError(EdgeSDKError):
    """onnxruntime failed while running the model."""


class PreprocessError(EdgeSDKError):
    """An input could not be decoded or converted by the model's preprocessing."""


class PostprocessError(EdgeSDKError):
    """A model output does not fit the declared postprocessing."""


class ModelClosedError(EdgeSDKError, RuntimeError):
    """The model was used after ``close()``."""

    def __init__(self) -> None:
        super().__init__("the model is closed; load it again to run it")


class ProfileError(EdgeSDKError):
    """A device profile cannot be found, read or used."""


class UnknownProfileError(ProfileError):
    """No profile has this name; ``suggestions`` holds the nearest names."""

    def __init__(self, name: str, suggestions: list[str], known: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        self.known = known
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no device profile named {name!r}{hint} (known: {', '.join(known)})")


class ProfileFormatError(ProfileError):
    """A profile file is not valid TOML, has an unknown key or a value of the wrong type."""

    def __init__(self, path: str | Path, key: str | None, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"bad device profile {where}: {reason}")


class CalibrationError(EdgeSDKError):
    """The calibration inputs for int8 quantisation are missing or unusable."""

    def __init__(self, folder: str | Path, reason: str) -> None:
        self.folder = str(folder)
        self.reason = reason
        super().__init__(f"calibration data {self.folder}: {reason}")


class OptimizeError(EdgeSDKError):
    """An offline optimisation step (graph optimisation, fp16, int8) failed; no output was
    written."""


class ReferenceDataError(EdgeSDKError):
    """Input or reference arrays for ``validate_model`` cannot be read or do not match the
    model's inputs or outputs; ``source`` names the file or the key."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"reference data {source}: {reason}")
