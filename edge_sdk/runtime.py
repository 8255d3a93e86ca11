"""EdgeModel: a thin, strict wrapper over an onnxruntime session.

This is the only module that imports onnxruntime (DESIGN.md). It adds what a device needs and
onnxruntime leaves to the caller:

- execution providers from an ordered preference, with every provider that was skipped listed
  in ``EdgeModel.fallbacks`` and why (onnxruntime itself only logs a warning when a session
  quietly ends up on the CPU, the classic "15 s per frame on a Jetson" field failure);
- input validation before onnxruntime sees the feed, raising an ``InputError`` subclass that
  names the input, what was expected and what was given;
- one seam where every onnxruntime exception becomes an ``EdgeSDKError``;
- a fast path with pre-bound buffers (IO binding) for fixed-shape loops;
- hot swap (``reload``) between calls, never in the middle of one.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edge_sdk import _onnxfile
from edge_sdk.errors import (
    CorruptModelError,
    EdgeSDKError,
    ExtraInputError,
    InferenceError,
    InputError,
    InputRankError,
    InputShapeError,
    InputTypeError,
    InvalidModelError,
    MissingInputError,
    ModelClosedError,
    ModelLoadError,
    ModelNotFoundError,
    PreprocessError,
    ProviderError,
    ProviderUnavailableError,
    UnknownInputError,
    UnsupportedModelError,
)
from edge_sdk.kernels.geometry import Geometry
from edge_sdk.metadata import ModelMetadata
from edge_sdk.postprocess import Postprocessor, PostprocessSpec
from edge_sdk.preprocess import Preprocessor, PreprocessSpec
from edge_sdk.telemetry import FOLD_AT

if TYPE_CHECKING:
    from edge_sdk.profiles import Detection, DeviceProfile
    from edge_sdk.store import ModelStore
    from edge_sdk.telemetry import ModelStats

__all__ = [
    "EdgeModel",
    "FastRunner",
    "Prediction",
    "ProviderFallback",
    "SessionSettings",
    "StageTimes",
    "TensorSpec",
    "available_providers",
    "onnxruntime_version",
]

ModelSource = str | os.PathLike[str] | bytes | bytearray | memoryview
ProviderPreference = str | tuple[str, Mapping[str, Any]]
CPU = "CPUExecutionProvider"
# The Azure provider sends requests to a remote endpoint; it is never a local default.
_NOT_LOCAL_PROVIDERS = frozenset({"AzureExecutionProvider"})

_ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}

_GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXECUTION_MODE = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}

# Every exception class onnxruntime's binding defines, mapped once, for loading and for running.
# tests/test_runtime_errors.py fails when an onnxruntime release adds a class missing here.
LOAD_ERRORS: dict[str, type[EdgeSDKError]] = {
    "Fail": ModelLoadError,
    "InvalidArgument": InvalidModelError,
    "NoSuchFile": ModelNotFoundError,
    "NoModel": CorruptModelError,
    "EngineError": ModelLoadError,
    "RuntimeException": ModelLoadError,
    "InvalidProtobuf": CorruptModelError,
    "ModelLoaded": ModelLoadError,
    "NotImplemented": UnsupportedModelError,
    "InvalidGraph": InvalidModelError,
    "EPFail": ModelLoadError,
    "ModelLoadCanceled": ModelLoadError,
    "ModelRequiresCompilation": UnsupportedModelError,
    "NotFound": ModelLoadError,
    "DeviceReset": ModelLoadError,
}
RUN_ERRORS: dict[str, type[EdgeSDKError]] = {
    "Fail": InferenceError,
    "InvalidArgument": InputError,
    "NoSuchFile": InferenceError,
    "NoModel": InferenceError,
    "EngineError": InferenceError,
    "RuntimeException": InferenceError,
    "InvalidProtobuf": InferenceError,
    "ModelLoaded": InferenceError,
    "NotImplemented": InferenceError,
    "InvalidGraph": InferenceError,
    "EPFail": ProviderError,
    "ModelLoadCanceled": InferenceError,
    "ModelRequiresCompilation": InferenceError,
    "NotFound": InferenceError,
    "DeviceReset": ProviderError,
}
# Failures of the model itself: no other provider would do better, so they are not retried.
_MODEL_FAULTS = frozenset({"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel"})
_ORT_EXCEPTIONS: tuple[type[BaseException], ...] = tuple(
    value
    for value in vars(_ort_state).values()
    if isinstance(value, type) and issubclass(value, Exception)
)


def _translate_run_error(exc: BaseException) -> EdgeSDKError:
    error_type = RUN_ERRORS.get(type(exc).__name__, InferenceError)
    message = f"onnxruntime failed while running the model: {exc}"
    if error_type is InputError:
        return InputError(None, "inputs the graph accepts", str(exc), message)
    return error_type(message)


# onnxruntime reports a missing operator kernel as a generic FAIL; these phrases (from its
# graph resolver and kernel registry messages) tell the caller to upgrade or re-export instead.
_UNSUPPORTED_PHRASES = ("is not a registered function/op", "Could not find an implementation")


def _translate_load_error(path: str | None, exc: BaseException) -> EdgeSDKError:
    error_type = LOAD_ERRORS.get(type(exc).__name__, ModelLoadError)
    reason = str(exc).strip() or type(exc).__name__
    if error_type is ModelLoadError and any(p in reason for p in _UNSUPPORTED_PHRASES):
        error_type = UnsupportedModelError
    if issubclass(error_type, ModelLoadError):
        return error_type(path, f"onnxruntime: {reason}")
    return error_type(reason)


def onnxruntime_version() -> str:
    return str(ort.__version__)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build contains (not proof that hardware exists)."""
    return list(ort.get_available_providers())


# --------------------------------------------------------------------------------------------
# Value types


GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]


@dataclass(frozen=True)
class SessionSettings:
    """Session options in one frozen object.

    ``intra_op_threads``/``inter_op_threads`` of 0 let onnxruntime choose (one per core).
    Spinning is off by default: on a loaded 2-core board, spinning worker threads starve the
    process that feeds the model (measured in ../shared/NOTES.md, onnxruntime). ``free_dimensions``
    pins symbolic dimensions (``{"batch": 1}``) so the graph can be optimised for them.

    Example: ``SessionSettings(intra_op_threads=2, graph_optimization="extended")``.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    allow_spinning: bool = False
    graph_optimization: GraphOptimization = "all"
    execution_mode: ExecutionMode = "sequential"
    enable_memory_arena: bool = True
    enable_memory_pattern: bool = True
    optimized_model_path: str | None = None
    log_severity: int = 3
    free_dimensions: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.graph_optimization not in _GRAPH_OPTIMIZATION:
            raise ValueError(
                f"graph_optimization must be one of {sorted(_GRAPH_OPTIMIZATION)}, "
                f"got {self.graph_optimization!r}"
            )
        if self.execution_mode not in _EXECUTION_MODE:
            raise ValueError(
                f"execution_mode must be one of {sorted(_EXECUTION_MODE)}, "
                f"got {self.execution_mode!r}"
            )
        if self.log_severity not in range(5):
            raise ValueError(f"log_severity must be 0..4, got {self.log_severity!r}")
        dims = dict(self.free_dimensions)
        for key, value in dims.items():
            if not isinstance(key, str) or not isinstance(value, int) or value < 1:
                raise ValueError(f"free_dimensions needs name -> int >= 1, got {key!r}: {value!r}")
        object.__setattr__(self, "free_dimensions", MappingProxyType(dims))
        if self.optimized_model_path is not None:
            object.__setattr__(self, "optimized_model_path", os.fspath(self.optimized_model_path))


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, NumPy dtype, and shape where ints are fixed dimensions,
    strings are symbolic (``"batch"``) and None is unknown.

    ``dtype`` is None for types NumPy has no equivalent for (bfloat16, sequences, maps).
    """

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | str | None, ...]
    onnx_type: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_fixed(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def concrete_shape(
        self, dims: Mapping[str, int] | None = None, default: int = 1
    ) -> tuple[int, ...]:
        """The shape with symbolic dims from ``dims`` and unknown ones set to ``default``."""
        dims = dims or {}
        return tuple(
            d if isinstance(d, int) else dims.get(d, default) if isinstance(d, str) else default
            for d in self.shape
        )

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        dtype = self.dtype.name if self.dtype is not None else self.onnx_type
        return f"{self.name}: {dtype}[{dims}]"


def _spec_from_node_arg(arg: Any) -> TensorSpec:
    np_type = _ONNX_DTYPES.get(arg.type)
    shape: list[int | str | None] = []
    for dim in arg.shape or ():
        if (isinstance(dim, int) and dim >= 0) or (isinstance(dim, str) and dim):
            shape.append(dim)
        else:
            shape.append(None)
    return TensorSpec(
        name=arg.name,
        dtype=None if np_type is None else np.dtype(np_type),
        shape=tuple(shape),
        onnx_type=arg.type,
    )


@dataclass(frozen=True)
class ProviderFallback:
    """A preferred execution provider that is not running, and why.

    ``kind`` is "not_built" (this onnxruntime build does not contain it) or
    "failed_to_initialise" (it is built in but did not start: missing driver, library or device).
    """

    provider: str
    kind: Literal["not_built", "failed_to_initialise"]
    reason: str


@dataclass(frozen=True)
class StageTimes:
    """Wall time of each stage of one ``predict`` call, in milliseconds."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass(frozen=True)
class Prediction:
    """The result of ``EdgeModel.predict`` for one item: the postprocessed ``result``
    (``Classification``, ``DetectionResult``, ``SegmentationResult``, or the outputs when the
    model declares no postprocessing), the raw ``outputs``, the time each stage took, and the
    ``geometry`` that maps tensor coordinates back to the source image."""

    result: Any
    outputs: Mapping[str, np.ndarray]
    times: StageTimes
    geometry: Geometry | None = None


# --------------------------------------------------------------------------------------------
# Session creation


def _session_options(settings: SessionSettings) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    spin = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.graph_optimization_level = _GRAPH_OPTIMIZATION[settings.graph_optimization]
    options.execution_mode = _EXECUTION_MODE[settings.execution_mode]
    options.enable_cpu_mem_arena = settings.enable_memory_arena
    options.enable_mem_pattern = settings.enable_memory_pattern
    options.log_severity_level = settings.log_severity
    if settings.optimized_model_path:
        options.optimized_model_filepath = settings.optimized_model_path
    for name, value in settings.free_dimensions.items():
        options.add_free_dimension_override_by_name(name, value)
    return options


def _normalise_preference(
    providers: Sequence[ProviderPreference] | None,
) -> list[tuple[str, dict[str, Any]]]:
    if providers is None:
        names = [p for p in available_providers() if p not in _NOT_LOCAL_PROVIDERS]
        return [(name, {}) for name in names]
    if isinstance(providers, str):
        providers = [providers]
    chain: list[tuple[str, dict[str, Any]]] = []
    for entry in providers:
        if isinstance(entry, str):
            chain.append((entry, {}))
        elif (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], Mapping)
        ):
            chain.append((entry[0], {str(k): str(v) for k, v in entry[1].items()}))
        else:
            raise TypeError(f"a provider is a name or (name, options) tuple, got {entry!r}")
    return chain


def _open_session(
    source: str | bytes, options: Any, chain: Sequence[tuple[str, Mapping[str, Any]]]
) -> Any:
    """Create an onnxruntime session; the one place one is created (a seam for the tests)."""
    return ort.InferenceSession(
        source,
        sess_options=options,
        providers=[name for name, _ in chain],
        provider_options=[dict(opts) for _, opts in chain],
        # onnxruntime's own fallback retries on the CPU and only prints; ours records why.
        enable_fallback=0,
    )


def _create_session(
    source: str | bytes,
    path: str | None,
    settings: SessionSettings,
    preference: list[tuple[str, dict[str, Any]]],
) -> tuple[Any, list[ProviderFallback]]:
    built_in = set(available_providers())
    fallbacks: list[ProviderFallback] = []
    chain: list[tuple[str, dict[str, Any]]] = []
    for name, opts in preference:
        if name in built_in:
            chain.append((name, opts))
        else:
            fallbacks.append(
                ProviderFallback(
                    name,
                    "not_built",
                    f"not built into onnxruntime {onnxruntime_version()} "
                    f"(built in: {', '.join(sorted(built_in))})",
                )
            )
    if not any(name == CPU for name, _ in chain):
        chain.append((CPU, {}))
    while True:
        try:
            session = _open_session(source, _session_options(settings), chain)
            break
        except (*_ORT_EXCEPTIONS, RuntimeError, ValueError) as exc:  # type: ignore[misc]
            accelerators = [entry for entry in chain if entry[0] != CPU]
            if not accelerators or type(exc).__name__ in _MODEL_FAULTS:
                raise _translate_load_error(path, exc) from exc
            # Retry without the provider that failed: the highest-priority accelerator.
            dropped = accelerators[0]
            chain.remove(dropped)
            fallbacks.append(
                ProviderFallback(dropped[0], "failed_to_initialise", f"{type(exc).__name__}: {exc}")
            )
    running = set(session.get_providers())
    for name, _ in chain:
        if name not in running:
            fallbacks.append(
                ProviderFallback(
                    name,
                    "failed_to_initialise",
                    "onnxruntime created the session without it (driver, library or device "
                    "missing; raise the log level with SessionSettings(log_severity=1) for detail)",
                )
            )
    return session, fallbacks


# --------------------------------------------------------------------------------------------
# The loaded state: everything that changes together when a model is swapped


@dataclass(frozen=True)
class _InputCheck:
    name: str
    dtype: np.dtype[Any] | None
    rank: int | None  # None: the model does not say (onnxruntime shows unknown rank as [])
    fixed: tuple[tuple[int, int], ...]


_QuickCheck = tuple[str, Any, "tuple[int, ...] | None", "int | None", tuple[tuple[int, int], ...]]


class _Loaded:
    """One session and what was derived from it. Immutable once built, so a reference to it is
    a consistent snapshot: ``EdgeModel.reload`` swaps the reference, in-flight calls keep theirs."""

    def __init__(
        self,
        source: ModelSource,
        settings: SessionSettings,
        preference: list[tuple[str, dict[str, Any]]],
        preprocess: PreprocessSpec | None,
        postprocess: PostprocessSpec | None,
    ) -> None:
        path: str | None
        ort_source: str | bytes
        if isinstance(source, (bytes, bytearray, memoryview)):
            path = None
            _onnxfile.scan_bytes(source)
            ort_source = bytes(source) if not isinstance(source, bytes) else source
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            _onnxfile.scan_file(Path(path))
            ort_source = path
        else:
            raise TypeError(f"a model source is a path or bytes, got {type(source).__name__}")
        self.path = path
        self.session, self.fallbacks = _create_session(ort_source, path, settings, preference)
        self.providers = tuple(self.session.get_providers())
        self.inputs = tuple(_spec_from_node_arg(a) for a in self.session.get_inputs())
        self.outputs = tuple(_spec_from_node_arg(a) for a in self.session.get_outputs())
        self.input_names = tuple(s.name for s in self.inputs)
        self.output_names = [s.name for s in self.outputs]
        self.checks = tuple(
            _InputCheck(
                s.name,
                s.dtype,
                s.rank or None,
                tuple((axis, d) for axis, d in enumerate(s.shape) if isinstance(d, int)),
            )
            for s in self.inputs
        )
        self.symbol_axes = self._shared_symbols()
        self.input_name_set = frozenset(self.input_names)
        # For the common case, a dict of right arrays: per input one type test, one dtype test
        # and one tuple compare (or a rank test and the fixed axes when some dims are symbolic).
        self.quick_checks: tuple[_QuickCheck, ...] | None = None
        if all(c.dtype is not None and c.rank for c in self.checks) and not self.symbol_axes:
            self.quick_checks = tuple(
                (c.name, c.dtype, spec.concrete_shape() if spec.is_fixed else None, c.rank, c.fixed)
                for c, spec in zip(self.checks, self.inputs, strict=True)
            )

        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props)
        self.preprocess = preprocess
        self.postprocess = postprocess
        if preprocess is None and self.metadata.preprocess is not None:
            self.preprocess = PreprocessSpec.from_metadata(self.metadata.preprocess)
        if postprocess is None and self.metadata.postprocess is not None:
            self.postprocess = PostprocessSpec.from_metadata(self.metadata.postprocess)
        self.preprocessor = Preprocessor(self.preprocess) if self.preprocess else None
        # Telemetry counters of this model version (edge_sdk.telemetry), None when off.
        self.stats: ModelStats | None = None
        self.postprocessor = (
            Postprocessor(self.postprocess, self.metadata.labels) if self.postprocess else None
        )
        # The binding's own run() skips the Python wrapper's re-validation of what we already
        # checked (about 1.5 us a call); fall back to the public method if it ever moves.
        inner = getattr(self.session, "_sess", None)
        self.run_raw: Callable[..., list[Any]] = (
            inner.run if inner is not None and hasattr(inner, "run") else self.session.run
        )

    def _shared_symbols(self) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
        """Symbolic dims used by more than one input: their sizes must agree at run time."""
        seen: dict[str, list[tuple[str, int]]] = {}
        for spec in self.inputs:
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str):
                    seen.setdefault(dim, []).append((spec.name, axis))
        return tuple((sym, tuple(uses)) for sym, uses in seen.items() if len(uses) > 1)

    # -- validation ------------------------------------------------------------------------

    def validate(self, feed: Any) -> dict[str, np.ndarray]:
        quick = self.quick_checks
        if quick is not None and type(feed) is dict and feed.keys() == self.input_name_set:
            for name, dtype, fixed_shape, rank, fixed_axes in quick:
                value = feed[name]
                if type(value) is not np.ndarray or value.dtype != dtype:
                    break
                shape = value.shape
                if fixed_shape is not None:
                    if shape != fixed_shape:
                        break
                elif len(shape) != rank or any(shape[a] != n for a, n in fixed_axes):
                    break
            else:
                return feed
        return self._validate_fully(feed)

    def _validate_fully(self, feed: Any) -> dict[str, np.ndarray]:
        """Check everything and raise the InputError that names what is wrong."""
        if isinstance(feed, Mapping):
            named = feed if isinstance(feed, dict) else dict(feed)
        elif isinstance(feed, np.ndarray):
            named = self._positional((feed,))
        elif isinstance(feed, (list, tuple)):
            named = self._positional(feed)
        else:
            raise InputTypeError(
                None,
                "a dict of input name -> array, an array, or a list of arrays",
                type(feed).__name__,
                f"cannot run the model on a {type(feed).__name__}: pass a dict "
                f"{{{', '.join(repr(n) for n in self.input_names)}: array}}",
            )
        if len(named) != len(self.checks) or any(k not in named for k in self.input_names):
            self._raise_name_error(named)
        converted: dict[str, np.ndarray] | None = None
        for check in self.checks:
            value = named[check.name]
            if type(value) is not np.ndarray:
                value = self._coerce(check, value)
                if converted is None:
                    converted = dict(named)
                converted[check.name] = value
            if check.dtype is not None and value.dtype != check.dtype:
                raise InputTypeError(
                    check.name,
                    check.dtype.name,
                    value.dtype.name,
                    f"input {check.name!r} must be {check.dtype.name}, got {value.dtype.name} "
                    f"(convert with array.astype(np.{check.dtype.name}))",
                )
            if check.rank is not None and value.ndim != check.rank:
                spec = self.inputs[self.input_names.index(check.name)]
                raise InputRankError(
                    check.name,
                    f"{check.rank} dimensions {_shape_text(spec.shape)}",
                    f"{value.ndim} dimensions {value.shape}",
                    f"input {check.name!r} must have {check.rank} dimensions "
                    f"{_shape_text(spec.shape)}, got {value.ndim} with shape {value.shape}",
                )
            shape = value.shape
            for axis, size in check.fixed:
                if shape[axis] != size:
                    spec = self.inputs[self.input_names.index(check.name)]
                    raise InputShapeError(
                        check.name,
                        _shape_text(spec.shape),
                        str(shape),
                        f"input {check.name!r} dimension {axis} must be {size}, got "
                        f"{shape[axis]} (shape {shape}, expected {_shape_text(spec.shape)})",
                    )
        result = converted if converted is not None else named
        if self.symbol_axes:
            self._check_symbols(result)
        return result

    def _positional(self, values: Sequence[Any]) -> dict[str, Any]:
        if len(values) > len(self.input_names):
            raise ExtraInputError(
                None,
                f"{len(self.input_names)} inputs {list(self.input_names)}",
                f"{len(values)} arrays",
                f"the model takes {len(self.input_names)} input(s) {list(self.input_names)}, "
                f"got {len(values)} arrays",
            )
        if len(values) < len(self.input_names):
            missing = self.input_names[len(values)]
            raise MissingInputError(
                missing,
                f"{len(self.input_names)} inputs {list(self.input_names)}",
                f"{len(values)} arrays",
                f"input {missing!r} is missing: the model takes {len(self.input_names)} "
                f"input(s) {list(self.input_names)}, got {len(values)} arrays",
            )
        return dict(zip(self.input_names, values, strict=True))

    def _raise_name_error(self, named: Mapping[Any, Any]) -> None:
        expected = list(self.input_names)
        unknown = [k for k in named if k not in expected]
        missing = [n for n in expected if n not in named]
        if unknown and missing:
            name = unknown[0]
            guess = difflib.get_close_matches(str(name), missing, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; missing {missing}"
            raise UnknownInputError(
                str(name),
                str(expected),
                str(list(named)),
                f"the model has no input {name!r} (inputs: {expected}){hint}",
            )
        if missing:
            raise MissingInputError(
                missing[0],
                str(expected),
                str(list(named)),
                f"input {missing[0]!r} is missing (the model takes {expected}, got {list(named)})",
            )
        raise ExtraInputError(
            str(unknown[0]),
            str(expected),
            str(list(named)),
            f"the model has no input {unknown[0]!r}: it takes only {expected}; remove {unknown}",
        )

    @staticmethod
    def _coerce(check: _InputCheck, value: Any) -> np.ndarray:
        # A list or scalar has no dtype intention, so it takes the model's; an object that is
        # already array-like with a dtype (a torch or cupy tensor) must match it, like arrays.
        if hasattr(value, "dtype") or hasattr(value, "__array__"):
            try:
                array = np.asarray(value)
            except Exception as exc:
                raise InputTypeError(
                    check.name,
                    "a NumPy array",
                    type(value).__name__,
                    f"input {check.name!r}: cannot convert {type(value).__name__} to an array",
                ) from exc
            return array
        try:
            return np.asarray(value, dtype=check.dtype)
        except (TypeError, ValueError) as exc:
            expected = check.dtype.name if check.dtype is not None else "an array"
            raise InputTypeError(
                check.name,
                expected,
                type(value).__name__,
                f"input {check.name!r} must be a {expected} array; cannot convert "
                f"{type(value).__name__}: {exc}",
            ) from exc

    def _check_symbols(self, feed: Mapping[str, np.ndarray]) -> None:
        for symbol, uses in self.symbol_axes:
            sizes = {(name, axis): feed[name].shape[axis] for name, axis in uses}
            if len(set(sizes.values())) > 1:
                (first, _axis), *_ = uses
                detail = ", ".join(f"{n}[{a}]={s}" for (n, a), s in sizes.items())
                raise InputShapeError(
                    first,
                    f"one size for dimension {symbol!r}",
                    detail,
                    f"dimension {symbol!r} must have the same size in every input: {detail}",
                )


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _profile_detection(profile: str | os.PathLike[str] | DeviceProfile | None) -> Detection | None:
    """The profile to load with; an automatic detection that finds nothing is no profile."""
    from edge_sdk.profiles import DeviceProfile, resolve_profile

    if isinstance(profile, os.PathLike):
        profile = os.fspath(profile)
    if profile is not None and not isinstance(profile, (str, DeviceProfile)):
        raise TypeError(
            f"profile must be a name, a .toml path, a DeviceProfile or None, got {profile!r}"
        )
    if profile == "auto":
        return _detected_profile()
    return resolve_profile(profile)


def _detected_profile() -> Detection | None:
    # Detection reads a few small files and parses every profile: once per process per
    # configuration (the variables that change its answer are part of the key).
    key = (os.environ.get("EDGE_SDK_PROFILE"), os.environ.get("EDGE_SDK_PROFILES_DIR"))
    if key not in _DETECTED:
        from edge_sdk.errors import ProfileError, ProfileFormatError
        from edge_sdk.profiles import detect

        try:
            _DETECTED[key] = detect()
        except ProfileFormatError:
            raise  # a broken profile file is reported, never quietly ignored
        except ProfileError:
            if key[0]:  # a profile named on purpose must exist
                raise
            _DETECTED[key] = None  # no profile matches and none stands in: run without one
    return _DETECTED[key]


_DETECTED: dict[tuple[str | None, str | None], Detection | None] = {}
_log = logging.getLogger("edge_sdk.runtime")
_XNNPACK = "XnnpackExecutionProvider"


class _StoreFollower:
    """What EdgeModel.from_store keeps: the store, the pointer watch, the load options, and at
    most one background load at a time."""

    def __init__(
        self, store: ModelStore, name: str, watch: Any, options: Mapping[str, Any], version: int
    ) -> None:
        self.store = store
        self.name = name
        self.watch = watch
        self.options = dict(options)
        self.version = version
        self.error: str | None = None
        self._lock = threading.Lock()  # the watch's descriptor is not shared unguarded
        self._loading = False
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.watch.close()

    def check(self, model: EdgeModel) -> None:
        """Start loading the newly active version if the pointer moved (one fstat). Callers
        keep serving on the old session instead of waiting for a new one to build."""
        with self._lock:
            if self._closed or self._loading or not self.watch.changed():
                return
            self._loading = True
            self.watch.refresh()  # from now on, only a further switch counts as a change
        threading.Thread(
            target=self._swap, args=(model,), name=f"edge-sdk-swap-{self.name}", daemon=True
        ).start()

    def _swap(self, model: EdgeModel) -> None:
        while True:
            try:
                active = self.store.active(self.name)
                loaded = model._load(str(active.path), active.version)
            except EdgeSDKError as exc:
                self.error = f"version switch of {self.name!r} not taken: {exc}"
                _log.warning("%s", self.error)
            else:
                with model._swap_lock:
                    if model._loaded is None:  # closed meanwhile
                        self._loading = False
                        return
                    model._loaded = loaded
                self.version = active.version
                self.error = None
            with self._lock:
                if self._closed or not self.watch.changed():  # the newest switch wins
                    self._loading = False
                    return
                self.watch.refresh()


def _adopt_kernel_settings(device: DeviceProfile) -> None:
    """The profile's kernel cache directory and threads, for pre/post-processing kernels,
    unless the application configured the kernels itself (edge_sdk.kernels.configure)."""
    from edge_sdk.kernels._jit import adopt_profile_settings

    kernels = device.kernels
    adopt_profile_settings(
        cache_dir=kernels.resolved_cache_dir(),
        threads=kernels.threads,
        helper_thread=kernels.helper_thread,
    )


def _make_cache_dirs(providers: Sequence[ProviderPreference]) -> None:
    """Create the directories provider options point at (engine and timing caches): a missing
    one makes TensorRT rebuild engines for minutes on every start (../shared/NOTES.md)."""
    for entry in providers:
        if not isinstance(entry, tuple):
            continue
        for key, value in entry[1].items():
            if isinstance(value, str) and ("cache_path" in key or key == "cacheDir"):
                # Read-only storage: the provider reports its own error.
                with contextlib.suppress(OSError):
                    Path(value).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# Public API


class EdgeModel:
    """An ONNX model ready to run on this device.

    ``providers`` is the ordered execution-provider preference (names or ``(name, options)``);
    by default the device profile's (``profile``: ``"auto"`` detects this device, see
    edge_sdk.profiles; a name or a DeviceProfile forces one; None uses none), and without a
    profile every provider this onnxruntime build has, in its own order, then the CPU. The
    profile also gives the session settings (unless ``settings`` is given) and sets the
    environment quirks it lists; ``profile_detection`` says which profile and why.
    Providers that are not built in or fail to start are skipped and listed in ``fallbacks``;
    name the ones you cannot do without in ``require_providers`` to get
    ``ProviderUnavailableError`` instead. Preprocessing and postprocessing come from the model's
    metadata unless given.

    Raises ModelLoadError subclasses (path and reason), ModelMetadataError,
    ProviderUnavailableError.

    Example::

        with EdgeModel.load("model.onnx", providers=["CUDAExecutionProvider"]) as model:
            outputs = model.run({"image": batch})
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        providers: Sequence[ProviderPreference] | None = None,
        require_providers: Sequence[str] | None = None,
        settings: SessionSettings | None = None,
        preprocess: PreprocessSpec | None = None,
        postprocess: PostprocessSpec | None = None,
        profile: str | os.PathLike[str] | DeviceProfile | None = "auto",
    ) -> None:
        self._detection = _profile_detection(profile)
        device = self._detection.profile if self._detection is not None else None
        if device is not None:
            device.apply_environment()
            _adopt_kernel_settings(device)
            if providers is None:
                providers = device.provider_preference(available_providers())
                _make_cache_dirs(providers)
            if settings is None:
                settings = device.session_settings()
                names = [p if isinstance(p, str) else p[0] for p in providers or ()]
                if _XNNPACK in names and _XNNPACK in available_providers():
                    # XNNPACK runs its own thread pool: onnxruntime's docs recommend one
                    # intra-op thread beside it, or both pools fight for the same cores
                    # (https://onnxruntime.ai/docs/execution-providers/Xnnpack-ExecutionProvider.html).
                    settings = replace(settings, intra_op_threads=1)
        self._settings = settings if settings is not None else SessionSettings()
        if not isinstance(self._settings, SessionSettings):
            raise TypeError(f"settings must be a SessionSettings, got {settings!r}")
        self._required = tuple(
            [require_providers] if isinstance(require_providers, str) else require_providers or ()
        )
        preference = _normalise_preference(providers)
        # A required provider is tried even when the preference leaves it out, so that its
        # absence comes with a reason (not built, failed to start) instead of none.
        named = {name for name, _ in preference}
        required_first: list[tuple[str, dict[str, Any]]] = [
            (p, {}) for p in self._required if p not in named
        ]
        self._preference = required_first + preference
        self._explicit_specs = (preprocess, postprocess)
        self._swap_lock = threading.Lock()
        self._follow: _StoreFollower | None = None
        self._loaded: _Loaded | None = self._load(source)

    @classmethod
    def load(
        cls,
        source: ModelSource,
        *,
        providers: Sequence[ProviderPreference] | None = None,
        require_providers: Sequence[str] | None = None,
        settings: SessionSettings | None = None,
        preprocess: PreprocessSpec | None = None,
        postprocess: PostprocessSpec | None = None,
        profile: str | os.PathLike[str] | DeviceProfile | None = "auto",
    ) -> EdgeModel:
        """Load a model from a path or bytes (see the class docstring)."""
        return cls(
            source,
            providers=providers,
            require_providers=require_providers,
            settings=settings,
            preprocess=preprocess,
            postprocess=postprocess,
            profile=profile,
        )

    def _load(self, source: ModelSource, store_version: int | None = None) -> _Loaded:
        loaded = _Loaded(source, self._settings, self._preference, *self._explicit_specs)
        missing = [p for p in self._required if p not in loaded.providers]
        if missing:
            raise ProviderUnavailableError(missing, loaded.providers, loaded.fallbacks)
        loaded.stats = self._telemetry_stats(loaded, store_version)
        return loaded

    def _telemetry_stats(self, loaded: _Loaded, store_version: int | None) -> ModelStats | None:
        """Counters under (name, version): the store's name and version for a model from a
        store, else the file's stem and the model's own ``edge_sdk.version``."""
        from edge_sdk import telemetry

        follow = getattr(self, "_follow", None)
        if follow is not None:
            name = follow.name
        elif loaded.path is not None:
            name = Path(loaded.path).stem
        else:
            name = "model"
        if store_version is not None:
            version = str(store_version)
        else:
            version = loaded.metadata.version or "-"
        return telemetry.model_stats(name, version)

    def _state(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise ModelClosedError()
        if self._follow is not None:
            self._follow.check(self)
        return loaded

    @classmethod
    def from_store(cls, store: ModelStore, name: str, **options: Any) -> EdgeModel:
        """The active version of model ``name`` in a ``ModelStore``, following it: when the
        device agent activates another version (or rolls back), the next call notices it (one
        fstat), a background thread loads the new version, and calls go on, on the old session,
        until the new one is ready; then it takes over between calls. A version that fails to
        load leaves the old one serving, with the reason in ``store_error``. ``options`` are
        ``EdgeModel.load``'s.

        Example: ``model = EdgeModel.from_store(ModelStore("/var/lib/edge-sdk"), "detector")``.
        """
        watch = store.watch(name)
        active = store.active(name)
        model = cls(active.path, **options)
        model._follow = _StoreFollower(store, name, watch, options, active.version)
        first = model._loaded
        if first is not None:
            first.stats = model._telemetry_stats(first, active.version)
        return model

    @property
    def store_version(self) -> int | None:
        """The store version now serving (None when not loaded ``from_store``)."""
        return self._follow.version if self._follow is not None else None

    @property
    def store_error(self) -> str | None:
        """Why the last version the store activated could not be loaded (None: no failure)."""
        return self._follow.error if self._follow is not None else None

    # -- what is loaded --------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The file the model came from, or None for bytes."""
        return self._state().path

    @property
    def profile(self) -> DeviceProfile | None:
        """The device profile the providers and settings came from (None: no profile)."""
        return self._detection.profile if self._detection is not None else None

    @property
    def profile_detection(self) -> Detection | None:
        """How the profile was chosen: the evidence detection matched, and its warnings."""
        return self._detection

    @property
    def providers(self) -> tuple[str, ...]:
        """Execution providers the session runs on, in priority order."""
        return self._state().providers

    @property
    def fallbacks(self) -> tuple[ProviderFallback, ...]:
        """Preferred providers that are not running, with the reason for each."""
        return tuple(self._state().fallbacks)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._state().inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._state().outputs

    @property
    def metadata(self) -> ModelMetadata:
        return self._state().metadata

    @property
    def preprocess_spec(self) -> PreprocessSpec | None:
        """The preprocessing ``predict`` applies (given, or from the model's metadata)."""
        return self._state().preprocess

    @property
    def postprocess_spec(self) -> PostprocessSpec | None:
        """The postprocessing ``predict`` applies (given, or from the model's metadata)."""
        return self._state().postprocess

    @property
    def settings(self) -> SessionSettings:
        return self._settings

    @property
    def closed(self) -> bool:
        return self._loaded is None

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        feed: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on ``feed`` (name -> array, or arrays in input order) and return
        ``{output name: array}``. Thread-safe.

        Raises an InputError subclass naming the input for wrong names, dtypes, ranks or fixed
        dimensions, before onnxruntime sees the feed; InferenceError if onnxruntime fails.

        Example: ``model.run({"image": np.zeros((1, 1, 8, 8), np.float32)})["logits"]``.
        """
        loaded = self._loaded
        if loaded is None:
            raise ModelClosedError()
        if self._follow is not None:  # from_store: one fstat to notice a version switch
            self._follow.check(self)
        stats = loaded.stats
        start = time.perf_counter() if stats is not None else 0.0
        try:
            checked = loaded.validate(feed)
            names = loaded.output_names if outputs is None else self._output_names(loaded, outputs)
            try:
                values = loaded.run_raw(names, checked, None)
            except _ORT_EXCEPTIONS as exc:
                raise _translate_run_error(exc) from exc
            except (RuntimeError, ValueError, TypeError) as exc:
                raise InferenceError(f"onnxruntime failed while running the model: {exc}") from exc
        except EdgeSDKError as exc:
            if stats is not None:
                stats.error(type(exc).__name__)
            raise
        if stats is not None:
            # ModelStats.record, inlined: on the bundled model (15 us a call) each 100 ns is
            # 0.7 %, and a Python call costs about that (bench/telemetry.py).
            elapsed = time.perf_counter() - start
            try:
                pending = stats.local.inference
            except AttributeError:
                pending = stats.shard().pending[1]
            pending.append(elapsed)
            if len(pending) >= FOLD_AT:
                stats.fold(1)
        if len(names) == 1:
            return {names[0]: values[0]}
        return dict(zip(names, values, strict=True))

    @staticmethod
    def _infer(loaded: _Loaded, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What run(feed) does after its checks, without recording: for predict, which records
        the inference stage itself. (run inlines the same steps: a call costs ~100 ns.)"""
        checked = loaded.validate(feed)
        names = loaded.output_names
        try:
            values = loaded.run_raw(names, checked, None)
        except _ORT_EXCEPTIONS as exc:
            raise _translate_run_error(exc) from exc
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InferenceError(f"onnxruntime failed while running the model: {exc}") from exc
        if len(names) == 1:
            return {names[0]: values[0]}
        return dict(zip(names, values, strict=True))

    @staticmethod
    def _output_names(loaded: _Loaded, outputs: Sequence[str]) -> list[str]:
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        for name in names:
            if name not in loaded.output_names:
                raise ValueError(
                    f"the model has no output {name!r} (outputs: {loaded.output_names})"
                )
        return names

    def example_inputs(
        self, dims: Mapping[str, int] | None = None, *, random: bool = False, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Inputs matching the specs: symbolic dims from ``dims`` (else 1), zeros or random."""
        rng = np.random.default_rng(seed)
        feed: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.dtype is None:
                raise InputTypeError(
                    spec.name,
                    "a NumPy dtype",
                    spec.onnx_type,
                    f"input {spec.name!r} has type {spec.onnx_type}, which NumPy cannot create",
                )
            shape = spec.concrete_shape(dims)
            if not random:
                feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
            elif spec.dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind in "iu":
                feed[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feed[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                feed[spec.name] = np.full(shape, "", dtype=object)
        return feed

    def warmup(self, runs: int = 1, dims: Mapping[str, int] | None = None) -> float:
        """Run ``runs`` times on zero inputs so first-call costs (allocations, kernel choice,
        TensorRT engine build) are paid now. Returns the first call's time in milliseconds."""
        if runs < 1:
            raise ValueError("runs must be >= 1")
        feed = self.example_inputs(dims)
        start = time.perf_counter()
        self.run(feed)
        first = (time.perf_counter() - start) * 1000.0
        for _ in range(runs - 1):
            self.run(feed)
        return first

    def fast_runner(self, dims: Mapping[str, int] | None = None) -> FastRunner:
        """A runner with buffers bound once, for loops over inputs of one fixed shape.

        See FastRunner. Example::

            runner = model.fast_runner()
            runner.inputs["image"][:] = frame      # or runner.run({"image": frame})
            logits = runner.run()["logits"]
        """
        return FastRunner(self, dims)

    def predict(self, item: Any) -> Prediction:
        """Preprocess ``item`` (an image path, bytes, PIL image, uint8 array or ``RawFrame``)
        with the model's declared preprocessing, run, and postprocess. Raises PreprocessError
        if the model declares no preprocessing or the input cannot be decoded, PostprocessError
        if an output cannot be read as declared.

        Example: ``model.predict("digit.png").result.label``.
        """
        loaded = self._predictable()
        assert loaded.preprocessor is not None
        stats = loaded.stats
        t0 = time.perf_counter()
        try:
            tensor, geometry = loaded.preprocessor(item)
            t1 = time.perf_counter()
            # Not run(): the three stages are recorded below from the clock reads taken here
            # anyway; run's own two reads and lookup cost 1 to 2 % more (bench/README.md).
            outputs = self._infer(loaded, {loaded.input_names[0]: tensor})
        except EdgeSDKError as exc:
            if stats is not None:
                stats.error(type(exc).__name__)
            raise
        t2 = time.perf_counter()
        result: Any = outputs
        if loaded.postprocessor is not None:
            try:
                result = loaded.postprocessor(outputs, geometry)
            except EdgeSDKError as exc:
                if stats is not None:
                    stats.error(type(exc).__name__)
                raise
        t3 = time.perf_counter()
        pre, inference, post = t1 - t0, t2 - t1, t3 - t2
        if stats is not None:
            # Three ModelStats.record, inlined (see run), with one lookup. run() appends to
            # the same inference list, so it is the fullest: all three fold when it is full.
            try:
                pending = stats.local.pending
            except AttributeError:
                pending = stats.shard().pending
            pending[0].append(pre)
            samples = pending[1]
            samples.append(inference)
            pending[2].append(post)
            if len(samples) >= FOLD_AT:
                stats.fold(0)
                stats.fold(1)
                stats.fold(2)
        times = StageTimes(pre * 1e3, inference * 1e3, post * 1e3)
        return Prediction(result=result, outputs=outputs, times=times, geometry=geometry)

    def predict_batch(self, items: Sequence[Any]) -> list[Prediction]:
        """``predict`` for several items in one inference when the model's batch dimension is
        symbolic (one at a time otherwise). Each Prediction's ``times`` is its share of the
        batch's stages."""
        loaded = self._predictable()
        assert loaded.preprocessor is not None
        items = list(items)
        if not items:
            raise PreprocessError("an empty batch: give at least one item")
        batch_dim = loaded.inputs[0].shape[:1]
        if not batch_dim or isinstance(batch_dim[0], int):  # a fixed batch: one at a time
            return [self.predict(item) for item in items]
        t0 = time.perf_counter()
        tensor, geometries = loaded.preprocessor.batch(items)
        t1 = time.perf_counter()
        outputs = self.run({loaded.input_names[0]: tensor})
        t2 = time.perf_counter()
        per_item = [
            {name: value[index : index + 1] for name, value in outputs.items()}
            for index in range(len(items))
        ]
        results: list[Any] = per_item
        if loaded.postprocessor is not None:
            postprocessor = loaded.postprocessor
            results = [
                postprocessor(one, geometry)
                for one, geometry in zip(per_item, geometries, strict=True)
            ]
        t3 = time.perf_counter()
        share = 1e3 / len(items)
        times = StageTimes((t1 - t0) * share, (t2 - t1) * share, (t3 - t2) * share)
        return [
            Prediction(result=result, outputs=one, times=times, geometry=geometry)
            for result, one, geometry in zip(results, per_item, geometries, strict=True)
        ]

    def _predictable(self) -> _Loaded:
        loaded = self._state()
        if loaded.preprocessor is None:
            raise PreprocessError(
                "the model declares no preprocessing (metadata key edge_sdk.preprocess); "
                "pass preprocess= to EdgeModel.load or call run() with arrays"
            )
        if len(loaded.input_names) != 1:
            raise PreprocessError(
                f"predict() feeds one input, the model takes {list(loaded.input_names)}"
            )
        return loaded

    # -- lifecycle -------------------------------------------------------------------------

    def reload(self, source: ModelSource) -> None:
        """Swap to another model between calls: calls in flight finish on the old session,
        the next call uses the new one. On any error the old model stays in place."""
        self._state()
        loaded = self._load(source)
        with self._swap_lock:
            if self._loaded is None:
                raise ModelClosedError()
            self._loaded = loaded

    def close(self) -> None:
        """Release the session (and, from a store, the watch on its pointer). Calls in flight
        finish; later calls raise ModelClosedError."""
        with self._swap_lock:
            self._loaded = None
        if self._follow is not None:
            self._follow.close()

    def __enter__(self) -> EdgeModel:
        self._state()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._loaded is None:
            return "<EdgeModel closed>"
        where = self._loaded.path or "<bytes>"
        return f"<EdgeModel {where} on {', '.join(self._loaded.providers)}>"


class FastRunner:
    """Pre-bound input and output buffers for repeated calls with one fixed shape.

    onnxruntime's IO binding skips per-call conversion of the feed and allocation of outputs
    (about half the per-call cost of ``run`` on a small model, ../shared/NOTES.md). The arrays
    in ``inputs`` are the bound buffers: write into them, or pass a feed to ``run``, which
    copies into them after checking dtype and shape. The arrays ``run`` returns are reused by
    the next call: copy them to keep them. One runner per thread; after ``EdgeModel.reload``
    the runner rebinds to the new session by itself.
    """

    def __init__(self, model: EdgeModel, dims: Mapping[str, int] | None = None) -> None:
        self._model = model
        self._dims = dict(dims or {})
        self._busy = threading.Lock()
        # Telemetry: the counters this runner records into, and its shard's inference samples
        # and fold (set at the first call that records; see run).
        self._stats: ModelStats | None = None
        self._pending: list[float] = []
        self._fold: Callable[[int], None] = lambda stage: None
        self._bind(model._state())

    def _bind(self, loaded: _Loaded) -> None:
        self._loaded = loaded
        self.inputs: dict[str, np.ndarray] = {}
        binding = loaded.session.io_binding()
        for spec in loaded.inputs:
            if spec.dtype is None or spec.dtype == np.object_:
                raise InputTypeError(
                    spec.name,
                    "a numeric tensor",
                    spec.onnx_type,
                    f"the fast path cannot bind input {spec.name!r} of type {spec.onnx_type}",
                )
            buffer = np.zeros(spec.concrete_shape(self._dims), dtype=spec.dtype)
            self.inputs[spec.name] = buffer
            binding.bind_ortvalue_input(spec.name, ort.OrtValue.ortvalue_from_numpy(buffer))
        # Output shapes may depend on the input shapes: learn them from one real call.
        try:
            first = loaded.run_raw(loaded.output_names, self.inputs, None)
        except _ORT_EXCEPTIONS as exc:
            raise _translate_run_error(exc) from exc
        self._outputs: dict[str, np.ndarray] = {}
        for name, value in zip(loaded.output_names, first, strict=True):
            buffer = np.empty_like(value)
            self._outputs[name] = buffer
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buffer))
        self._binding = binding
        inner = getattr(loaded.session, "_sess", None)
        raw_binding = getattr(binding, "_iobinding", None)
        if inner is not None and raw_binding is not None and hasattr(inner, "run_with_iobinding"):
            self._call: Callable[[], Any] = lambda: inner.run_with_iobinding(raw_binding, None)
        else:
            self._call = lambda: loaded.session.run_with_iobinding(binding)

    def run(self, feed: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Copy ``feed`` (if given) into the bound inputs, run, return the bound outputs."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("a FastRunner is in use by another thread: create one per thread")
        try:
            loaded = self._model._state()
            if loaded is not self._loaded:
                self._bind(loaded)
            if feed:
                self._copy_in(feed)
            stats = loaded.stats
            start = time.perf_counter() if stats is not None else 0.0
            try:
                self._call()
            except _ORT_EXCEPTIONS as exc:
                error = _translate_run_error(exc)
                if stats is not None:
                    stats.error(type(error).__name__)
                raise error from exc
            if stats is not None:
                # ModelStats.record, inlined (see EdgeModel.run), into a shard of this runner's
                # own (one thread at a time uses it): no thread-local lookup.
                elapsed = time.perf_counter() - start
                if stats is not self._stats:  # the first call, or the model's counters changed
                    self._stats = stats
                    shard = stats.writer_shard(self)
                    self._pending, self._fold = shard.pending[1], shard.fold
                pending = self._pending
                pending.append(elapsed)
                if len(pending) >= FOLD_AT:
                    self._fold(1)
            return dict(self._outputs)
        finally:
            self._busy.release()

    def _copy_in(self, feed: Mapping[str, np.ndarray]) -> None:
        for name, value in feed.items():
            buffer = self.inputs.get(name)
            if buffer is None:
                raise UnknownInputError(
                    name,
                    str(list(self.inputs)),
                    name,
                    f"the model has no input {name!r} (inputs: {list(self.inputs)})",
                )
            array = np.asarray(value)
            if array.dtype != buffer.dtype:
                raise InputTypeError(
                    name,
                    buffer.dtype.name,
                    array.dtype.name,
                    f"input {name!r} must be {buffer.dtype.name}, got {array.dtype.name}",
                )
            if array.shape != buffer.shape:
                raise InputShapeError(
                    name,
                    str(buffer.shape),
                    str(array.shape),
                    f"input {name!r} is bound with shape {buffer.shape}, got {array.shape}; "
                    "make another fast_runner(dims=...) for another shape",
                )
            np.copyto(buffer, array)
