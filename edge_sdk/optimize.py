"""Offline optimisation of a model for a device profile: graph, fp16, int8 — then validated.

``optimize_model(model, out, profile=...)`` runs, in order:

1. **Graph optimisation**, offline, with onnxruntime's own optimiser (a session created with
   ``optimized_model_filepath``). The level is chosen for the *target*, not for this host:
   "basic" rewrites are semantics-preserving and run before graph partitioning, so they suit
   every execution provider; "extended" fusions are applied only to nodes assigned to the CPU
   (or CUDA) provider and produce onnxruntime-specific ops, so they are used only when the
   profile runs on the CPU alone; "all" adds layout optimisations that tie the file to the
   CPU that saved it (a model laid out for AVX2 needs AVX2), so it is never chosen by default.
   Source: https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html
   ("Online/offline mode": use the target's providers, level and hardware when saving).
2. **fp16** when the profile prefers it (or ``fp16=True``): onnxruntime's converter
   (``onnxruntime.transformers.float16``), graph inputs and outputs kept float32 by default so
   the model's preprocessing and callers are unchanged; ops without fp16 kernels stay float32.
3. **int8** static quantisation (``int8=True``, or the profile prefers int8): QDQ format, weights
   int8 (per channel where the target allows), activations calibrated on the caller's data run
   through the model's *own* preprocessing (its ``edge_sdk.preprocess`` metadata), so the ranges
   match what the device will feed. The recipe per target is ``quantization_settings_for``.

Then OUT is **validated** against MODEL on held-out inputs (``validation``; else the part of the
calibration data not used for calibration; else synthetic inputs): per output the max and mean
absolute error, top-1 agreement for classifiers, and the latency ratio out/in measured in this
process with interleaved rounds. The ``edge_sdk.*`` metadata travels into OUT, and OUT is
written atomically (temp file in its directory, fsync, rename, fsync of the directory): on any
error nothing is written and an existing OUT is untouched.

Example::

    report = optimize_model("model.onnx", "model.int8.onnx", profile="generic-x86-64",
                            int8=True, calibration="calib_images/")
    print(report.top1_agreement, report.latency.ratio)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime import quantization as ort_quantization

from edge_sdk import _onnxfile
from edge_sdk.errors import (
    CalibrationError,
    EdgeSDKError,
    ModelLoadError,
    OptimizeError,
    PreprocessError,
    UnsupportedModelError,
)
from edge_sdk.metadata import PREPROCESS_KEY, read_metadata
from edge_sdk.postprocess import PostprocessSpec
from edge_sdk.preprocess import Preprocessor, PreprocessSpec
from edge_sdk.profiles import DeviceProfile, load_profile
from edge_sdk.runtime import EdgeModel, SessionSettings, TensorSpec

__all__ = [
    "DataSummary",
    "LatencyComparison",
    "OptimizeReport",
    "OutputComparison",
    "QuantizationSettings",
    "optimize_model",
    "quantization_settings_for",
]

Precision = Literal["fp32", "fp16", "int8"]
GraphLevel = Literal["disable", "basic", "extended", "all"]
CPU = "CPUExecutionProvider"
VITIS_AI = "VitisAIExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

_GRAPH_LEVELS: dict[str, Any] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
GRAPH_DOCS = "https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html"
QUANTIZATION_DOCS = "https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html"
VITIS_AI_QUANTIZER_DOCS = (
    "https://github.com/Xilinx/Vitis-AI/blob/master/src/vai_quantizer/vai_q_onnx/README.md"
)
# Files in a calibration folder are visited in this fixed pseudo-random order, so a folder
# sorted by class (cat/…, dog/…) still calibrates on every class when it is cut short.
_SAMPLE_ORDER_SEED = 0
SYNTHETIC_SAMPLES = 16
# Calibration keeps every intermediate output of every run in memory until it computes the
# ranges. Feeding it in chunks of at most this many samples (onnxruntime's CalibStridedMinMax,
# which computes and merges the ranges after each chunk) bounds that memory. Its
# CalibMaxIntermediateOutputs is no alternative: in onnxruntime 1.32 it discards the outputs
# collected so far instead of merging them (calibrate.py, MinMaxCalibrater.collect_data;
# onnxruntime issue 18893, fix proposed in PR 20226 and closed unmerged).
_CALIBRATION_CHUNK = 32
# Each timed block runs the model for about this long, so perf_counter's resolution and the
# loop around the calls are negligible next to it.
_LATENCY_BLOCK_SECONDS = 0.002
_LOAD_REPEATS = 3


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class QuantizationSettings:
    """How int8 quantisation is done for a target, and where that recipe comes from.

    ``activation_type``/``weight_type`` are the 8-bit types of activations and weights;
    ``symmetric_activations`` forces activation zero points to 0; ``power_of_two_scales`` rounds
    every scale up to a power of two (fixed-point accelerators such as the Vitis AI DPU).
    """

    target: str
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["int8"]
    per_channel: bool
    reduce_range: bool
    symmetric_activations: bool
    power_of_two_scales: bool
    source: str

    def __post_init__(self) -> None:
        if self.activation_type not in ("uint8", "int8"):
            raise ValueError(f"activation_type must be uint8 or int8, got {self.activation_type!r}")
        if self.weight_type != "int8":
            raise ValueError(f"weight_type must be int8, got {self.weight_type!r}")
        if self.power_of_two_scales and (self.per_channel or not self.symmetric_activations):
            raise ValueError("power-of-two scales are per tensor with symmetric activations")


@dataclass(frozen=True)
class DataSummary:
    """Where calibration or validation inputs came from and how many were used.

    ``kind`` is "images" (decoded and preprocessed as the model declares), "arrays" (an .npz
    fed as it is), "npz images" (uint8 pictures in an .npz, preprocessed) or "synthetic".
    """

    source: str
    kind: Literal["images", "arrays", "npz images", "synthetic"]
    samples: int
    held_out_from_calibration: bool = False


@dataclass(frozen=True)
class OutputComparison:
    """OUT against MODEL for one output over the validation inputs.

    ``top1_agreement`` is the share of rows whose arg-max class is the same (None for outputs
    that are not class scores). Errors are absolute, in the output's own units.
    """

    name: str
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None


@dataclass(frozen=True)
class LatencyComparison:
    """Per-call latency of MODEL and OUT on this host, measured in one process.

    Each round times a block of ``calls_per_block`` calls of each model, alternating which
    goes first; ``ratio`` is the median of the per-round ratios out/in (paired, so drift on a
    shared machine cancels), ``ratio_p90`` their 90th percentile. ``load_*_ms`` are medians of
    session creation times (what offline graph optimisation mostly saves).
    """

    before_ms: float
    after_ms: float
    ratio: float
    ratio_p90: float
    rounds: int
    calls_per_block: int
    load_before_ms: float
    load_after_ms: float
    host: str


@dataclass(frozen=True)
class OptimizeReport:
    """What ``optimize_model`` did and how OUT compares with MODEL.

    Example: ``report.top1_agreement``, ``report.latency.ratio``, ``report.to_dict()``.
    """

    source: str
    output: str
    profile: str
    precision: Precision
    graph_optimization: str
    steps: tuple[str, ...]
    size_before: int
    size_after: int
    quantization: QuantizationSettings | None
    calibration: DataSummary | None
    validation: DataSummary
    outputs: tuple[OutputComparison, ...]
    latency: LatencyComparison | None
    warnings: tuple[str, ...]
    onnxruntime: str

    @property
    def size_ratio(self) -> float:
        """OUT's size over MODEL's."""
        return self.size_after / self.size_before if self.size_before else math.nan

    @property
    def top1_agreement(self) -> float | None:
        """The lowest top-1 agreement over the classifier outputs (None without one)."""
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @property
    def max_abs_error(self) -> float:
        """The largest absolute error over every output."""
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite errors become None)."""
        plain: dict[str, Any] = _plain(self)
        return plain


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        out = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, OptimizeReport):
            out["size_ratio"] = _plain(value.size_ratio)
            out["top1_agreement"] = value.top1_agreement
            out["max_abs_error"] = _plain(value.max_abs_error)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# Choosing what to do for a profile


def quantization_settings_for(
    profile: DeviceProfile, *, per_channel: bool | None = None, reduce_range: bool | None = None
) -> QuantizationSettings:
    """The int8 recipe for the device ``profile`` (``per_channel``/``reduce_range`` override
    the recipe's where the target allows it).

    - Vitis AI DPU (a profile whose accelerator or providers name the Vitis AI provider): int8
      activations and weights, symmetric, per tensor, no reduced range, power-of-two scales —
      the settings the Vitis AI ONNX quantizer documents as required for DPU devices
      (vai_q_onnx README, "quantize_static Method").
    - TensorRT (Jetson): int8 activations and weights, symmetric; per-channel weights
      (onnxruntime's quantize_static docstring and quantization guide: symmetric QInt8 for
      both when targeting GPU/TensorRT).
    - ARM CPUs: int8 activations and weights, no reduced range (onnxruntime's guidance for ARM).
    - x86-64 CPUs: uint8 activations, int8 weights, reduced (7-bit) weight range, per channel:
      without VNNI the u8 x s8 dot product can saturate its 16-bit sums, and a generic x86
      profile cannot promise VNNI (onnxruntime's guidance for x86 without VNNI).

    Raises ValueError for an override the target cannot take (per-channel on the DPU).
    """
    providers = set(profile.provider_names)
    accelerator = profile.accelerator
    if VITIS_AI in providers or (accelerator is not None and accelerator.provider == VITIS_AI):
        if per_channel:
            raise ValueError("the Vitis AI DPU quantises weights per tensor: per_channel=True")
        if reduce_range:
            raise ValueError("the Vitis AI DPU does not take reduced-range weights")
        return QuantizationSettings(
            target="Vitis AI DPU",
            activation_type="int8",
            weight_type="int8",
            per_channel=False,
            reduce_range=False,
            symmetric_activations=True,
            power_of_two_scales=True,
            source=VITIS_AI_QUANTIZER_DOCS,
        )
    if TENSORRT in providers or profile.family == "jetson":
        return QuantizationSettings(
            target="TensorRT",
            activation_type="int8",
            weight_type="int8",
            per_channel=True if per_channel is None else per_channel,
            reduce_range=bool(reduce_range),
            symmetric_activations=True,
            power_of_two_scales=False,
            source=QUANTIZATION_DOCS,
        )
    if profile.arch in ("aarch64", "armv7l"):
        return QuantizationSettings(
            target="ARM CPU",
            activation_type="int8",
            weight_type="int8",
            per_channel=True if per_channel is None else per_channel,
            reduce_range=bool(reduce_range),
            symmetric_activations=False,
            power_of_two_scales=False,
            source=QUANTIZATION_DOCS,
        )
    return QuantizationSettings(
        target="x86-64 CPU",
        activation_type="uint8",
        weight_type="int8",
        per_channel=True if per_channel is None else per_channel,
        reduce_range=True if reduce_range is None else reduce_range,
        symmetric_activations=False,
        power_of_two_scales=False,
        source=QUANTIZATION_DOCS,
    )


def _default_graph_level(profile: DeviceProfile, precision: Precision) -> GraphLevel:
    if precision != "fp32":
        # The quantiser and the fp16 converter know standard ONNX ops, not the CPU provider's
        # fused ones; onnxruntime's own quantisation pre-processing optimises at the basic
        # level for that reason (onnxruntime.quantization.shape_inference.quant_pre_process).
        return "basic"
    # Optional providers (CUDA on a generic host) are only used where present: a graph that is
    # optimised for the CPU still runs there.
    if all(p.name == CPU for p in profile.providers if not p.optional):
        return "extended"
    return "basic"


def _resolve_profile(profile: str | os.PathLike[str] | DeviceProfile) -> DeviceProfile:
    if isinstance(profile, DeviceProfile):
        return profile
    if isinstance(profile, (str, os.PathLike)):
        return load_profile(profile)
    raise TypeError(f"profile must be a name, a path or a DeviceProfile, got {profile!r}")


# --------------------------------------------------------------------------------------------
# Calibration and validation inputs

Feed = dict[str, np.ndarray]
Fail = Callable[[str], EdgeSDKError]


@dataclass
class _Samples:
    feeds: list[Feed]
    summary: DataSummary


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {suffix.lower() for suffix in Image.registered_extensions()}


def _files_in(folder: Path) -> list[Path]:
    """Every visible file under ``folder`` (recursively: class sub-folders are common), in a
    fixed pseudo-random order. Hidden files and folders (.DS_Store, .git) are skipped."""
    found = [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    found.sort()
    order = np.random.default_rng(_SAMPLE_ORDER_SEED).permutation(len(found))
    return [found[i] for i in order]


def _single_image_input(inputs: Sequence[TensorSpec], fail: Fail) -> TensorSpec:
    if len(inputs) != 1:
        names = [spec.name for spec in inputs]
        raise fail(
            f"images feed a model with one input; this one takes {names}: give an .npz with "
            "one array per input name instead"
        )
    spec = inputs[0]
    if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != 1:
        raise fail(
            f"images are fed one at a time, but input {spec.name!r} has a fixed batch of "
            f"{spec.shape[0]}: give an .npz of arrays instead"
        )
    return spec


def _preprocessor(spec: PreprocessSpec | None, fail: Fail) -> Preprocessor:
    if spec is None:
        raise fail(
            "the model declares no preprocessing (metadata key edge_sdk.preprocess), so "
            "images cannot be turned into its input: give an .npz of input arrays instead "
            "(one array per input name, first axis the samples)"
        )
    return Preprocessor(spec)


def _images_from_folder(
    folder: Path,
    limit: int,
    inputs: Sequence[TensorSpec],
    spec: PreprocessSpec | None,
    fail: Fail,
) -> list[Feed]:
    files = _files_in(folder)
    if not files:
        raise fail("the folder holds no files: give at least one image")
    input_spec = _single_image_input(inputs, fail)
    preprocessor = _preprocessor(spec, fail)
    suffixes = _image_suffixes()
    feeds: list[Feed] = []
    for path in files[:limit]:
        name = str(path.relative_to(folder))
        try:
            tensor, _ = preprocessor(path)
        except PreprocessError as exc:
            if path.suffix.lower() in suffixes:
                reason = f"cannot decode image {name!r} with the model's preprocessing: {exc}"
            else:
                reason = f"{name!r} is not an image ({exc}); keep only images in the folder"
            raise fail(reason) from exc
        feeds.append({input_spec.name: tensor})
    return feeds


def _check_array(array: np.ndarray, spec: TensorSpec, key: str, fail: Fail) -> np.ndarray:
    if spec.dtype is None:
        raise fail(f"input {spec.name!r} has type {spec.onnx_type}, which arrays cannot feed")
    if array.ndim != spec.rank:
        raise fail(
            f"array {key!r} has shape {array.shape}; input {spec.name!r} needs rank "
            f"{spec.rank} ({spec}) with the samples along the first axis"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if axis > 0 and isinstance(want, int) and want != got:
            raise fail(f"array {key!r} has shape {array.shape}; input needs {spec}")
    if array.dtype != spec.dtype:
        same_kind = array.dtype.kind == spec.dtype.kind == "f"
        if not same_kind:
            raise fail(f"array {key!r} is {array.dtype}; input {spec.name!r} takes {spec.dtype}")
        array = array.astype(spec.dtype)  # float64 from np.savez: the values are what matter
    return array


def _batch_of(spec: TensorSpec) -> int:
    first = spec.shape[0] if spec.shape else None
    return first if isinstance(first, int) and first > 0 else 1


def _arrays_from_npz(
    path: Path,
    limit: int,
    inputs: Sequence[TensorSpec],
    spec: PreprocessSpec | None,
    fail: Fail,
) -> tuple[list[Feed], Literal["arrays", "npz images"]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    # A damaged member fails anywhere in zipfile, zlib or numpy's header parser (which can
    # raise even tokenize.TokenError): whatever it is, the file is unreadable.
    except Exception as exc:
        raise fail(f"cannot read the .npz: {exc}") from exc
    if not arrays:
        raise fail("the .npz holds no arrays")
    names = [s.name for s in inputs]
    if all(name in arrays for name in names):
        chosen = {s.name: _check_array(arrays[s.name], s, s.name, fail) for s in inputs}
    elif len(inputs) == 1 and "images" in arrays:
        return _npz_images(arrays["images"], limit, inputs, spec, fail), "npz images"
    elif len(inputs) == 1 and len(arrays) == 1:
        key, array = next(iter(arrays.items()))
        chosen = {inputs[0].name: _check_array(array, inputs[0], key, fail)}
    else:
        raise fail(
            f"the .npz holds {sorted(arrays)}; name one array per model input {names}"
            + (" (or 'images' for uint8 pictures to preprocess)" if len(inputs) == 1 else "")
        )
    counts = {len(a) for a in chosen.values()}
    if len(counts) != 1:
        raise fail(f"the arrays have different sample counts {sorted(counts)}")
    count = counts.pop()
    step = max(_batch_of(s) for s in inputs)
    if count < step:
        raise fail(f"the arrays hold {count} samples, fewer than the model's batch of {step}")
    order = np.random.default_rng(_SAMPLE_ORDER_SEED).permutation(count // step)
    feeds = [
        {name: array[i * step : (i + 1) * step] for name, array in chosen.items()}
        for i in order[:limit]
    ]
    return feeds, "arrays"


def _npz_images(
    images: np.ndarray,
    limit: int,
    inputs: Sequence[TensorSpec],
    spec: PreprocessSpec | None,
    fail: Fail,
) -> list[Feed]:
    input_spec = _single_image_input(inputs, fail)
    preprocessor = _preprocessor(spec, fail)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise fail(
            f"array 'images' must be uint8 pictures N x H x W or N x H x W x C, got "
            f"{images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise fail("array 'images' holds no pictures")
    order = np.random.default_rng(_SAMPLE_ORDER_SEED).permutation(len(images))
    feeds = []
    for index in order[:limit]:
        try:
            tensor, _ = preprocessor(np.ascontiguousarray(images[index]))
        except PreprocessError as exc:
            raise fail(f"images[{index}]: {exc}") from exc
        feeds.append({input_spec.name: tensor})
    return feeds


def _load_samples(
    source: str | os.PathLike[str],
    limit: int,
    inputs: Sequence[TensorSpec],
    spec: PreprocessSpec | None,
    fail: Fail,
) -> _Samples:
    path = Path(source)
    if path.is_dir():
        feeds = _images_from_folder(path, limit, inputs, spec, fail)
        return _Samples(feeds, DataSummary(str(path), "images", len(feeds)))
    if path.is_file() and path.suffix.lower() == ".npz":
        feeds, kind = _arrays_from_npz(path, limit, inputs, spec, fail)
        return _Samples(feeds, DataSummary(str(path), kind, len(feeds)))
    if not path.exists():
        raise fail("no such file or folder")
    raise fail("give a folder of images or an .npz file of arrays")


def _synthetic_samples(model: EdgeModel, count: int) -> _Samples:
    """Random inputs when no data is given: pictures through the model's preprocessing when
    it has one (so values span what real inputs span), else standard-normal tensors."""
    rng = np.random.default_rng(_SAMPLE_ORDER_SEED)
    spec = model.preprocess_spec
    feeds: list[Feed] = []
    if spec is not None and len(model.inputs) == 1:
        preprocessor = Preprocessor(spec)
        width, height = spec.size
        shape = (height, width) if spec.channels == 1 else (height, width, 3)
        for _ in range(count):
            picture = rng.integers(0, 256, size=shape, dtype=np.uint8)
            tensor, _ = preprocessor(picture)
            feeds.append({model.inputs[0].name: tensor})
    else:
        feeds = [model.example_inputs(random=True, seed=seed) for seed in range(count)]
    return _Samples(feeds, DataSummary(f"{count} random inputs", "synthetic", count))


def _gather_samples(
    before: EdgeModel,
    calibration: str | os.PathLike[str] | None,
    validation: str | os.PathLike[str] | None,
    max_calibration: int,
    max_validation: int,
    notes: list[str],
) -> tuple[list[Feed], DataSummary | None, _Samples]:
    """Calibration feeds, their summary, and the validation samples: the ``validation`` data,
    else the calibration data not used for calibration, else random inputs. Everything is
    decoded here, before any work, so bad data fails fast and names the file."""
    calibration_feeds: list[Feed] = []
    calibration_summary: DataSummary | None = None
    validation_samples: _Samples | None = None
    if calibration is not None:
        calibration_folder = Path(calibration)

        def calibration_fail(reason: str) -> EdgeSDKError:
            return CalibrationError(calibration_folder, reason)

        limit = max_calibration + (max_validation if validation is None else 0)
        samples = _load_samples(
            calibration, limit, before.inputs, before.preprocess_spec, calibration_fail
        )
        feeds, summary = samples.feeds, samples.summary
        if validation is None and len(feeds) >= 2:
            # Keep at least a fifth back: agreement measured on calibration data flatters.
            used = min(max_calibration, len(feeds) - max(1, len(feeds) // 5))
            calibration_feeds, tail = feeds[:used], feeds[used:]
            validation_samples = _Samples(
                tail, DataSummary(summary.source, summary.kind, len(tail), True)
            )
        else:
            calibration_feeds = feeds[:max_calibration]
            if validation is None:
                notes.append("one calibration sample: validated on that same sample")
                validation_samples = _Samples(calibration_feeds, summary)
        calibration_summary = DataSummary(summary.source, summary.kind, len(calibration_feeds))
    if validation is not None:
        validation_source = Path(validation)

        def validation_fail(reason: str) -> EdgeSDKError:
            return OptimizeError(f"validation data {validation_source}: {reason}")

        validation_samples = _load_samples(
            validation, max_validation, before.inputs, before.preprocess_spec, validation_fail
        )
    if validation_samples is None:
        validation_samples = _synthetic_samples(before, SYNTHETIC_SAMPLES)
        notes.append(
            "validated on random inputs: give validation= data for agreement that means something"
        )
    return calibration_feeds, calibration_summary, validation_samples


class _FeedReader(ort_quantization.CalibrationDataReader):  # type: ignore[misc]
    """onnxruntime's calibration reader interface over feeds prepared in advance, so a bad
    image is reported, naming the file, before any quantisation work starts. ``set_range``
    lets the calibrator take the feeds chunk by chunk."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._next = 0
        self._end = len(self._feeds)

    def get_next(self) -> Feed | None:
        if self._next >= self._end:
            return None
        feed = self._feeds[self._next]
        self._next += 1
        return feed

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)


def _calibration_chunk(count: int) -> int:
    """The largest chunk size <= _CALIBRATION_CHUNK dividing ``count`` (onnxruntime requires
    the sample count to be a multiple of it)."""
    return next(size for size in range(min(count, _CALIBRATION_CHUNK), 0, -1) if count % size == 0)


# --------------------------------------------------------------------------------------------
# The steps


def _check_source(path: Path) -> int:
    result = _onnxfile.scan_file(path)  # ModelLoadError subclasses name what is wrong
    if result.ort_format:
        raise UnsupportedModelError(
            path, "an ORT-format model: optimise the .onnx file it was converted from"
        )
    return result.size


def _load_proto(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError...
        raise OptimizeError(f"cannot read {path.name} with onnx: {exc}") from exc


def _optimise_graph(source: Path, level: GraphLevel, work: Path) -> onnx.ModelProto:
    if level == "disable":
        return _load_proto(source)
    target = work / "graph.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = _GRAPH_LEVELS[level]
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), sess_options=options, providers=[CPU])
    except Exception as exc:
        raise OptimizeError(f"onnxruntime's {level} graph optimisation failed: {exc}") from exc
    return _load_proto(target)


def _convert_fp16(
    model: onnx.ModelProto, keep_io_float32: bool
) -> tuple[onnx.ModelProto, list[str]]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = convert_float_to_float16(model, keep_io_types=keep_io_float32)
        except Exception as exc:
            raise OptimizeError(f"fp16 conversion failed: {exc}") from exc
    notes = sorted({f"fp16: {w.message}" for w in caught})
    return converted, notes


_QUANT_TYPES = {
    "uint8": ort_quantization.QuantType.QUInt8,
    "int8": ort_quantization.QuantType.QInt8,
}


def _quantize_int8(
    model: onnx.ModelProto, feeds: Sequence[Feed], settings: QuantizationSettings, work: Path
) -> tuple[onnx.ModelProto, list[str]]:
    notes: list[str] = []
    float_path, prepared, quantized = (
        work / "float.onnx",
        work / "prepared.onnx",
        work / "int8.onnx",
    )
    onnx.save(model, str(float_path))
    # onnxruntime's quantisation pre-processing: shape inference so every tensor's shape is
    # known (a tensor of unknown shape is not quantised). The graph was already optimised.
    # Its symbolic shape inference (for transformer-style models) needs sympy, which the SDK
    # does not depend on; ONNX shape inference alone covers convolutional models.
    symbolic = importlib.util.find_spec("sympy") is not None
    try:
        ort_quantization.quant_pre_process(
            str(float_path), str(prepared), skip_optimization=True, skip_symbolic_shape=not symbolic
        )
    except Exception as exc:
        if not symbolic:
            raise OptimizeError(f"quantisation pre-processing failed: {exc}") from exc
        notes.append(f"symbolic shape inference failed ({exc}); used ONNX shape inference only")
        try:
            ort_quantization.quant_pre_process(
                str(float_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True
            )
        except Exception as inner:
            raise OptimizeError(f"quantisation pre-processing failed: {inner}") from inner
    extra: dict[str, Any] = {
        "CalibStridedMinMax": _calibration_chunk(len(feeds)),
        "ActivationSymmetric": settings.symmetric_activations,
        "WeightSymmetric": True,
    }
    if settings.power_of_two_scales:
        # vai_q_onnx README: with power-of-two scales, weights keep a Q/DQ pair and calibrated
        # ranges are symmetric about zero.
        extra.update(AddQDQPairToWeight=True, CalibTensorRangeSymmetric=True)
    try:
        ort_quantization.quantize_static(
            str(prepared),
            str(quantized),
            _FeedReader(feeds),
            quant_format=ort_quantization.QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=_QUANT_TYPES[settings.activation_type],
            weight_type=_QUANT_TYPES[settings.weight_type],
            calibrate_method=ort_quantization.CalibrationMethod.MinMax,
            extra_options=extra,
        )
    except Exception as exc:
        raise OptimizeError(f"int8 quantisation failed: {exc}") from exc
    result = _load_proto(quantized)
    if not settings.power_of_two_scales:
        # A fixed-point accelerator hands back integers anyway; elsewhere outputs stay float.
        kept = _float_graph_outputs(result)
        if kept:
            notes.append(f"int8: outputs kept float32 (not clipped): {', '.join(kept)}")
    if settings.power_of_two_scales:
        changed = _snap_scales_to_power_of_two(result)
        notes.append(f"int8: {changed} scales rounded up to powers of two")
    return result, notes


def _float_graph_outputs(model: onnx.ModelProto) -> list[str]:
    """Remove the Q/DQ pair the quantiser puts on each graph output, so the last op writes
    its float result directly. Quantising an output clips it to the range calibration saw:
    a held-out digit whose winning logit exceeded it lost up to 4.6 (winning logits run to 21),
    distorting the softmax confidence the device reports. onnxruntime still fuses the last
    op into an integer kernel with a float output (QGemm, QLinearMatMul's float variant).
    Returns the outputs changed."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = []
    for output in graph.output:
        dequantize = producer.get(output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producer.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        source = producer.get(quantize.input[0])
        if source is None or uses.get(quantize.output[0]) != 1 or uses.get(quantize.input[0]) != 1:
            continue  # a graph input, or a tensor something else also reads
        slot = list(source.output).index(quantize.input[0])
        source.output[slot] = output.name
        graph.node.remove(quantize)
        graph.node.remove(dequantize)
        changed.append(output.name)
        # Their scale and zero point, unless another Q/DQ shares them (onnxruntime warns
        # about every unused initializer when it loads the model).
        still_used = {name for node in graph.node for name in node.input}
        for name in {*quantize.input[1:], *dequantize.input[1:]} - still_used:
            for init in [i for i in graph.initializer if i.name == name]:
                graph.initializer.remove(init)
    return changed


def _power_of_two_at_least(values: np.ndarray) -> np.ndarray:
    # The smallest 2**k >= scale: nothing calibration saw overflows the 8-bit range (the
    # "NonOverflow" power-of-two method of the Vitis AI quantizer).
    exponents = np.ceil(np.log2(values.astype(np.float64)))
    return np.asarray(np.exp2(exponents), dtype=values.dtype)


def _snap_scales_to_power_of_two(model: onnx.ModelProto) -> int:
    """Round every 8-bit Q/DQ scale up to a power of two, then requantise the int32 biases
    against their new input x weight scale. Returns the number of scales changed."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    eight_bit = {TensorProto.INT8, TensorProto.UINT8}
    old_values: dict[str, np.ndarray] = {}

    def replace(name: str, array: np.ndarray) -> None:
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero_point = initializers.get(node.input[1]), initializers.get(node.input[2])
        if scale is None or zero_point is None or zero_point.data_type not in eight_bit:
            continue
        if scale.name not in old_values:
            values = numpy_helper.to_array(scale)
            old_values[scale.name] = values
            replace(scale.name, _power_of_two_at_least(values))

    scale_of_output = {
        node.output[0]: node.input[1]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and len(node.input) >= 2
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        quantized = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantized is None or quantized.data_type != TensorProto.INT32:
            continue
        for user in consumers.get(node.output[0], []):
            if len(user.input) < 3 or user.input[2] != node.output[0]:
                continue
            input_scale = scale_of_output.get(user.input[0])
            weight_scale = scale_of_output.get(user.input[1])
            if input_scale not in initializers or weight_scale not in initializers:
                continue
            old_scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
            bias = numpy_helper.to_array(quantized).astype(np.float64) * old_scale
            new_scale = numpy_helper.to_array(initializers[input_scale]).astype(
                np.float64
            ) * numpy_helper.to_array(initializers[weight_scale]).astype(np.float64)
            info = np.iinfo(np.int32)
            requantized = np.clip(np.rint(bias / new_scale), info.min, info.max)
            replace(quantized.name, requantized.astype(np.int32))
            replace(node.input[1], np.asarray(new_scale, dtype=np.float32).reshape(old_scale.shape))
            break
    return len(old_values)


def _used_domains(graphs: Iterator[onnx.GraphProto]) -> set[str]:
    used: set[str] = set()
    for graph in graphs:
        for node in graph.node:
            used.add(node.domain)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    used |= _used_domains(iter([attribute.g]))
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    used |= _used_domains(iter(attribute.graphs))
    return used


def _prune_opset_imports(model: onnx.ModelProto) -> list[str]:
    """Drop opset imports no node uses. onnxruntime's offline optimiser imports every domain
    it knows (ai.onnx.ml, training, preview...); an older onnxruntime on the device may refuse
    a domain version it has never heard of, although no node needs it."""
    used = _used_domains(iter([model.graph])) | {"", "ai.onnx"}
    for function in model.functions:
        used.add(function.domain)
        used |= {node.domain for node in function.node}
    kept = [entry for entry in model.opset_import if entry.domain in used]
    dropped = [entry.domain for entry in model.opset_import if entry.domain not in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return dropped


def _restore_metadata(
    model: onnx.ModelProto, source_props: Mapping[str, str], fp16_io: bool
) -> None:
    """The source's metadata_props, authoritative and in their order, then any the tools
    added. With float16 inputs the preprocessing spec's dtype follows the input."""
    props = dict(source_props)
    if fp16_io and PREPROCESS_KEY in props:
        import json

        spec = json.loads(props[PREPROCESS_KEY])
        if spec.get("dtype", "float32") == "float32":
            spec["dtype"] = "float16"
            props[PREPROCESS_KEY] = json.dumps(spec, separators=(",", ":"))
    extra = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*props.items(), *extra]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _serialize(model: onnx.ModelProto) -> bytes:
    try:
        data: bytes = model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages of 2 GiB or more
        raise OptimizeError(
            f"the optimised model cannot be serialised in one file: {exc} (models over 2 GiB "
            "need external data, which optimize_model does not write)"
        ) from exc
    return data


# --------------------------------------------------------------------------------------------
# Validation


def _classifier_outputs(model: EdgeModel) -> set[str]:
    """Outputs whose rows are class scores: the one the classification postprocessing reads,
    or, for a model that declares no postprocessing, every N x C float output."""
    spec: PostprocessSpec | None = model.postprocess_spec
    if spec is not None:
        if spec.task != "classification":
            return set()
        return {spec.output or model.outputs[0].name}
    return {
        o.name
        for o in model.outputs
        if o.rank == 2
        and o.dtype is not None
        and o.dtype.kind == "f"
        and not (isinstance(o.shape[1], int) and o.shape[1] < 2)
    }


def _as_inputs_of(model: EdgeModel, feed: Feed) -> Feed:
    """``feed`` in the dtypes ``model`` takes: float16 inputs after an fp16 conversion that
    did not keep float32 inputs are fed the same values, rounded to float16."""
    dtypes = {spec.name: spec.dtype for spec in model.inputs}
    return {
        name: value if dtypes.get(name) in (None, value.dtype) else value.astype(dtypes[name])
        for name, value in feed.items()
    }


def _compare_outputs(
    before: EdgeModel, after: EdgeModel, feeds: Sequence[Feed]
) -> tuple[OutputComparison, ...]:
    classifiers = _classifier_outputs(before)
    worst: dict[str, float] = {}
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    same: dict[str, int] = {}
    rows: dict[str, int] = {}
    for feed in feeds:
        expected = before.run(feed)
        got = after.run(_as_inputs_of(after, feed))
        for name, reference in expected.items():
            value = got[name].astype(np.float64)
            diff = np.abs(value - reference.astype(np.float64))
            worst[name] = max(worst.get(name, 0.0), float(np.max(diff)) if diff.size else 0.0)
            if diff.size and not np.all(np.isfinite(diff)):
                worst[name] = math.inf
            total[name] = total.get(name, 0.0) + float(np.sum(diff))
            count[name] = count.get(name, 0) + diff.size
            if name in classifiers and reference.ndim >= 2 and reference.shape[-1] > 1:
                matches = np.argmax(reference, axis=-1) == np.argmax(value, axis=-1)
                same[name] = same.get(name, 0) + int(np.sum(matches))
                rows[name] = rows.get(name, 0) + matches.size
    return tuple(
        OutputComparison(
            name=name,
            max_abs_error=worst[name],
            mean_abs_error=total[name] / count[name] if count[name] else 0.0,
            top1_agreement=same[name] / rows[name] if rows.get(name) else None,
        )
        for name in worst
    )


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def _time_block(model: EdgeModel, feed: Feed, calls: int) -> float:
    model.run(feed)  # untimed: the other model's block evicted this one's buffers
    start = time.perf_counter()
    for _ in range(calls):
        model.run(feed)
    return (time.perf_counter() - start) / calls


def _load_time_ms(source: str | bytes) -> float:
    start = time.perf_counter()
    with _validation_model(source):
        pass
    return (time.perf_counter() - start) * 1e3


def _measure_latency(
    source_path: Path,
    out_bytes: bytes,
    before: EdgeModel,
    after: EdgeModel,
    feed: Feed,
    rounds: int,
) -> LatencyComparison:
    feeds = {"before": feed, "after": _as_inputs_of(after, feed)}
    single = _time_block(before, feed, 3)
    calls = max(1, round(_LATENCY_BLOCK_SECONDS / max(single, 1e-7)))
    times: dict[str, list[float]] = {"before": [], "after": []}
    models = {"before": before, "after": after}
    for index in range(rounds):
        # Alternate who goes first: the second block of a round runs on a warmer machine.
        order = ("before", "after") if index % 2 == 0 else ("after", "before")
        for key in order:
            times[key].append(_time_block(models[key], feeds[key], calls))
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    loads: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(_LOAD_REPEATS):
        loads["before"].append(_load_time_ms(str(source_path)))
        loads["after"].append(_load_time_ms(out_bytes))
    return LatencyComparison(
        before_ms=statistics.median(times["before"]) * 1e3,
        after_ms=statistics.median(times["after"]) * 1e3,
        ratio=statistics.median(ratios),
        ratio_p90=_percentile(ratios, 90),
        rounds=rounds,
        calls_per_block=calls,
        load_before_ms=statistics.median(loads["before"]),
        load_after_ms=statistics.median(loads["after"]),
        host=f"{platform.machine()} {CPU}, 1 intra-op thread",
    )


def _validation_model(source: str | bytes) -> EdgeModel:
    # On this host's CPU, one intra-op thread (steadier timings on a shared 2-core machine),
    # without the host's device profile: the comparison is between two files, not devices.
    return EdgeModel.load(
        source,
        providers=[CPU],
        settings=SessionSettings(intra_op_threads=1),
        profile=None,
    )


# --------------------------------------------------------------------------------------------
# Writing


def _write_atomically(data: bytes, target: Path, mode: int) -> None:
    """Write ``data`` to ``target`` so that a reader sees the old file or the whole new one:
    temp file in the same directory (a rename is atomic only within one file system), fsync,
    rename, fsync of the directory (without it the rename may not survive a power cut)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        Path(tmp_name).replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp_name).unlink()
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --------------------------------------------------------------------------------------------
# The entry point


def optimize_model(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    profile: str | os.PathLike[str] | DeviceProfile,
    fp16: bool | None = None,
    int8: bool | None = None,
    calibration: str | os.PathLike[str] | None = None,
    max_calibration: int = 200,
    validation: str | os.PathLike[str] | None = None,
    max_validation: int = 500,
    per_channel: bool | None = None,
    reduce_range: bool | None = None,
    keep_io_float32: bool = True,
    graph_optimization: GraphLevel | None = None,
    latency_rounds: int = 20,
) -> OptimizeReport:
    """Optimise ``model`` for the device ``profile`` and write ``out`` atomically.

    ``fp16``/``int8`` default to the profile's preferred precision (None); int8 needs
    ``calibration``: a folder of images (decoded and run through the model's own
    preprocessing; files are taken in a fixed pseudo-random order, at most
    ``max_calibration``) or an .npz of arrays (one per input name, samples on the first axis,
    fed as they are; or "images", uint8 pictures to preprocess). ``validation`` takes the same
    forms; without it the calibration data not used for calibration is the held-out set
    (at least a fifth of it is kept back), and without either, random inputs are used.
    ``per_channel``/``reduce_range`` override the target's recipe (quantization_settings_for);
    ``graph_optimization`` overrides the level chosen for the target; ``latency_rounds=0``
    skips the timing.

    Raises ModelLoadError subclasses for a model that is not ONNX, CalibrationError (naming the
    file) for unusable calibration data, OptimizeError when a step fails or validation data is
    unusable, ProfileError for an unknown profile, ValueError for contradictory arguments.
    Nothing is written on any error.

    Example: ``optimize_model("m.onnx", "m.int8.onnx", profile="generic-x86-64", int8=True,
    calibration="calib/")``.
    """
    source, target = Path(model), Path(out)
    device = _resolve_profile(profile)
    if max_calibration < 1 or max_validation < 1:
        raise ValueError("max_calibration and max_validation must be >= 1")
    if latency_rounds < 0:
        raise ValueError(f"latency_rounds must be >= 0, got {latency_rounds}")
    if graph_optimization is not None and graph_optimization not in _GRAPH_LEVELS:
        raise ValueError(
            f"graph_optimization must be one of {sorted(_GRAPH_LEVELS)}, got {graph_optimization!r}"
        )
    if fp16 and int8:
        raise ValueError("choose fp16 or int8, not both")
    use_int8 = int8 if int8 is not None else (not fp16 and device.precision == "int8")
    use_fp16 = not use_int8 and (fp16 if fp16 is not None else device.precision == "fp16")
    precision: Precision = "int8" if use_int8 else "fp16" if use_fp16 else "fp32"
    if use_int8 and calibration is None:
        why = "int8=True" if int8 else f"profile {device.name} prefers int8"
        raise ValueError(
            f"{why}: int8 quantisation needs calibration data (calibration=FOLDER or .npz), "
            "or pass int8=False"
        )
    if calibration is not None and not use_int8:
        raise ValueError(
            "calibration data is used only for int8 quantisation; to compare outputs on it, "
            "pass it as validation="
        )
    quant_settings = (
        quantization_settings_for(device, per_channel=per_channel, reduce_range=reduce_range)
        if use_int8
        else None
    )
    level: GraphLevel = graph_optimization or _default_graph_level(device, precision)
    if precision != "fp32" and level in ("extended", "all"):
        raise ValueError(
            f"graph optimisation {level!r} creates onnxruntime's CPU-only fused ops, which the "
            f"{precision} conversion does not handle: use 'basic' (the default) or 'disable'"
        )

    size_before = _check_source(source)
    source_props = dict(read_metadata(source).props)
    notes: list[str] = []
    if level == "all":
        notes.append(
            "graph optimisation 'all' includes layout optimisations for this host's CPU: the "
            f"file then needs a CPU like this one ({GRAPH_DOCS}, offline mode)"
        )

    with _validation_model(str(source)) as before:
        calibration_feeds, calibration_summary, validation_samples = _gather_samples(
            before, calibration, validation, max_calibration, max_validation, notes
        )

        steps: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edge-sdk-optimize-") as work_dir:
            work = Path(work_dir)
            optimized = _optimise_graph(source, level, work)
            steps.append(
                f"graph: onnxruntime offline optimisation, level {level}"
                if level != "disable"
                else "graph: not optimised"
            )
            if use_fp16:
                optimized, fp16_notes = _convert_fp16(optimized, keep_io_float32)
                notes.extend(fp16_notes)
                io = "float32" if keep_io_float32 else "float16"
                steps.append(f"fp16: weights and activations float16, inputs/outputs {io}")
            if quant_settings is not None:
                optimized, int8_notes = _quantize_int8(
                    optimized, calibration_feeds, quant_settings, work
                )
                notes.extend(int8_notes)
                steps.append(
                    f"int8: QDQ for {quant_settings.target}, weights {quant_settings.weight_type}"
                    f" {'per channel' if quant_settings.per_channel else 'per tensor'}"
                    f"{' (7-bit range)' if quant_settings.reduce_range else ''}, activations "
                    f"{quant_settings.activation_type}"
                    f"{' symmetric' if quant_settings.symmetric_activations else ''}"
                    f"{', power-of-two scales' if quant_settings.power_of_two_scales else ''}, "
                    f"{len(calibration_feeds)} calibration samples"
                )
        dropped = _prune_opset_imports(optimized)
        if dropped:
            steps.append(f"opset imports no node uses dropped: {', '.join(dropped)}")
        _restore_metadata(optimized, source_props, use_fp16 and not keep_io_float32)
        steps.append(f"metadata: {len(source_props)} metadata_props entries kept")
        data = _serialize(optimized)

        try:
            after = _validation_model(data)
        except ModelLoadError as exc:
            raise OptimizeError(
                f"the optimised model does not load in onnxruntime {ort.__version__}: {exc}"
            ) from exc
        with after:
            comparisons = _compare_outputs(before, after, validation_samples.feeds)
            latency = (
                _measure_latency(
                    source, data, before, after, validation_samples.feeds[0], latency_rounds
                )
                if latency_rounds
                else None
            )
    if use_fp16:
        notes.append(
            "fp16 runs on this host's CPU through inserted casts: the latency ratio says "
            "nothing about a GPU"
        )
    if device.providers and device.provider_names[0] != CPU and latency is not None:
        notes.append(
            f"latency measured on this host's CPU, not on {device.title} "
            f"({device.provider_names[0]})"
        )
    try:
        mode = source.stat().st_mode & 0o777
        _write_atomically(data, target, mode)
    except OSError as exc:
        raise OptimizeError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return OptimizeReport(
        source=str(source),
        output=str(target),
        profile=device.name,
        precision=precision,
        graph_optimization=level,
        steps=tuple(steps),
        size_before=size_before,
        size_after=len(data),
        quantization=quant_settings,
        calibration=calibration_summary,
        validation=validation_samples.summary,
        outputs=comparisons,
        latency=latency,
        warnings=tuple(notes),
        onnxruntime=str(ort.__version__),
    )
