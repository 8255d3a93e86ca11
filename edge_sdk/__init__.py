"""edge-sdk: take an ONNX model to a fleet of edge devices and keep it running there.

Names are imported on first use (PEP 562) so that ``import edge_sdk`` and ``edge-sdk --help``
stay cheap: onnxruntime and numba load only when a model or a kernel is used.

Example::

    from edge_sdk import EdgeModel
    with EdgeModel.load("model.onnx") as model:
        print(model.predict("image.jpg").result)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CalibrationError": "edge_sdk.errors",
    "ClassScore": "edge_sdk.postprocess",
    "Classification": "edge_sdk.postprocess",
    "CompatReport": "edge_sdk.compat",
    "CorruptModelError": "edge_sdk.errors",
    "Detection": "edge_sdk.profiles",
    "DeviceProfile": "edge_sdk.profiles",
    "EdgeModel": "edge_sdk.runtime",
    "EdgeSDKError": "edge_sdk.errors",
    "EmptyModelError": "edge_sdk.errors",
    "ExtraInputError": "edge_sdk.errors",
    "FastRunner": "edge_sdk.runtime",
    "InferenceError": "edge_sdk.errors",
    "InputError": "edge_sdk.errors",
    "InputNameError": "edge_sdk.errors",
    "InputRankError": "edge_sdk.errors",
    "InputShapeError": "edge_sdk.errors",
    "InputTypeError": "edge_sdk.errors",
    "InvalidModelError": "edge_sdk.errors",
    "MissingInputError": "edge_sdk.errors",
    "ModelClosedError": "edge_sdk.errors",
    "ModelIsDirectoryError": "edge_sdk.errors",
    "ModelLoadError": "edge_sdk.errors",
    "ModelMetadata": "edge_sdk.metadata",
    "ModelMetadataError": "edge_sdk.errors",
    "ModelNotFoundError": "edge_sdk.errors",
    "ModelReport": "edge_sdk.inspect",
    "OptimizeError": "edge_sdk.errors",
    "OptimizeReport": "edge_sdk.optimize",
    "PostprocessError": "edge_sdk.errors",
    "PostprocessSpec": "edge_sdk.postprocess",
    "Prediction": "edge_sdk.runtime",
    "PreprocessError": "edge_sdk.errors",
    "PreprocessSpec": "edge_sdk.preprocess",
    "ProfileError": "edge_sdk.errors",
    "ProfileFormatError": "edge_sdk.errors",
    "ProviderError": "edge_sdk.errors",
    "ProviderFallback": "edge_sdk.runtime",
    "ProviderUnavailableError": "edge_sdk.errors",
    "ReferenceDataError": "edge_sdk.errors",
    "SessionSettings": "edge_sdk.runtime",
    "StageTimes": "edge_sdk.runtime",
    "TensorSpec": "edge_sdk.runtime",
    "TruncatedModelError": "edge_sdk.errors",
    "UnknownInputError": "edge_sdk.errors",
    "UnknownProfileError": "edge_sdk.errors",
    "UnsupportedModelError": "edge_sdk.errors",
    "ValidationReport": "edge_sdk.compat",
    "check_model": "edge_sdk.compat",
    "inspect_model": "edge_sdk.inspect",
    "list_profiles": "edge_sdk.profiles",
    "load_profile": "edge_sdk.profiles",
    "optimize_model": "edge_sdk.optimize",
    "read_metadata": "edge_sdk.metadata",
    "validate_model": "edge_sdk.compat",
    "write_metadata": "edge_sdk.metadata",
}

__all__ = [
    "CalibrationError",
    "ClassScore",
    "Classification",
    "CompatReport",
    "CorruptModelError",
    "Detection",
    "DeviceProfile",
    "EdgeModel",
    "EdgeSDKError",
    "EmptyModelError",
    "ExtraInputError",
    "FastRunner",
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
    "ModelMetadata",
    "ModelMetadataError",
    "ModelNotFoundError",
    "ModelReport",
    "OptimizeError",
    "OptimizeReport",
    "PostprocessError",
    "PostprocessSpec",
    "Prediction",
    "PreprocessError",
    "PreprocessSpec",
    "ProfileError",
    "ProfileFormatError",
    "ProviderError",
    "ProviderFallback",
    "ProviderUnavailableError",
    "ReferenceDataError",
    "SessionSettings",
    "StageTimes",
    "TensorSpec",
    "TruncatedModelError",
    "UnknownInputError",
    "UnknownProfileError",
    "UnsupportedModelError",
    "ValidationReport",
    "__version__",
    "check_model",
    "inspect_model",
    "list_profiles",
    "load_profile",
    "optimize_model",
    "read_metadata",
    "validate_model",
    "write_metadata",
]

if TYPE_CHECKING:
    from edge_sdk.compat import CompatReport, ValidationReport, check_model, validate_model
    from edge_sdk.errors import (
        CalibrationError,
        CorruptModelError,
        EdgeSDKError,
        EmptyModelError,
        ExtraInputError,
        InferenceError,
        InputError,
        InputNameError,
        InputRankError,
        InputShapeError,
        InputTypeError,
        InvalidModelError,
        MissingInputError,
        ModelClosedError,
        ModelIsDirectoryError,
        ModelLoadError,
        ModelMetadataError,
        ModelNotFoundError,
        OptimizeError,
        PostprocessError,
        PreprocessError,
        ProfileError,
        ProfileFormatError,
        ProviderError,
        ProviderUnavailableError,
        ReferenceDataError,
        TruncatedModelError,
        UnknownInputError,
        UnknownProfileError,
        UnsupportedModelError,
    )
    from edge_sdk.inspect import ModelReport, inspect_model
    from edge_sdk.metadata import ModelMetadata, read_metadata, write_metadata
    from edge_sdk.optimize import OptimizeReport, optimize_model
    from edge_sdk.postprocess import Classification, ClassScore, PostprocessSpec
    from edge_sdk.preprocess import PreprocessSpec
    from edge_sdk.profiles import Detection, DeviceProfile, list_profiles, load_profile
    from edge_sdk.runtime import (
        EdgeModel,
        FastRunner,
        Prediction,
        ProviderFallback,
        SessionSettings,
        StageTimes,
        TensorSpec,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_sdk' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
