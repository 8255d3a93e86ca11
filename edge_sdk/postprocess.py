"""Declarative postprocessing: a JSON spec in the model's metadata turns raw outputs into a
typed result.

Spec version 1 (docs/model-metadata.md)::

    {"version": 1, "task": "classification", "activation": "softmax" | "sigmoid" | "none",
     "top_k": 5, "output": "logits"}
    {"version": 1, "task": "detection", "format": "yolov8" | "yolov5",
     "conf_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 300,
     "class_agnostic": false, "output": "output0"}
    {"version": 1, "task": "segmentation", "output": "masks"}

``output`` defaults to the model's first output. Every task refuses NaN (and, except for a
sigmoid, Inf) in the output it reads (``PostprocessError``): a model producing them is broken,
and a "confident" label drawn from NaN logits would hide it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from edge_sdk.errors import ModelMetadataError, PostprocessError
from edge_sdk.kernels.geometry import Geometry

__all__ = [
    "ClassScore",
    "Classification",
    "Detection",
    "DetectionResult",
    "PostprocessSpec",
    "Postprocessor",
    "SegmentationResult",
    "postprocess",
    "softmax",
]

SPEC_VERSION = 1
_TASK_FIELDS = {
    "classification": {"activation", "top_k"},
    "detection": {"format", "conf_threshold", "iou_threshold", "max_detections", "class_agnostic"},
    "segmentation": set(),
}


@dataclass(frozen=True)
class PostprocessSpec:
    """How to read a model's output. Example: ``PostprocessSpec(task="detection",
    format="yolov8", conf_threshold=0.4)``; validation errors name the field."""

    task: Literal["classification", "detection", "segmentation"] = "classification"
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    top_k: int = 5
    format: Literal["yolov8", "yolov5"] = "yolov8"
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    class_agnostic: bool = False
    output: str | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.task not in _TASK_FIELDS:
            raise ValueError(f"task must be one of {sorted(_TASK_FIELDS)}, got {self.task!r}")
        if self.activation not in ("softmax", "sigmoid", "none"):
            raise ValueError(
                f"activation must be softmax, sigmoid or none, got {self.activation!r}"
            )
        if self.format not in ("yolov8", "yolov5"):
            raise ValueError(f"format must be yolov8 or yolov5, got {self.format!r}")
        for name in ("top_k", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("conf_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in 0..1, got {value!r}")
        if not isinstance(self.class_agnostic, bool):
            raise ValueError(f"class_agnostic must be true or false, got {self.class_agnostic!r}")
        if self.version != SPEC_VERSION:
            raise ValueError(f"version {self.version!r} is not supported (this SDK reads 1)")

    @classmethod
    def from_metadata(
        cls, spec: Mapping[str, Any], key: str = "edge_sdk.postprocess"
    ) -> PostprocessSpec:
        """Build from the JSON object in a model; raise ModelMetadataError naming the field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ModelMetadataError(key, f"unknown field(s) {unknown}; known: {sorted(known)}")
        task = spec.get("task", "classification")
        foreign = sorted(
            set(spec) & (set().union(*_TASK_FIELDS.values()) - _TASK_FIELDS.get(task, set()))
        )
        if foreign:
            raise ModelMetadataError(key, f"field(s) {foreign} do not apply to task {task!r}")
        try:
            return cls(**spec)
        except (TypeError, ValueError) as exc:
            raise ModelMetadataError(key, str(exc)) from exc

    def to_metadata(self) -> dict[str, Any]:
        """The JSON object for ``edge_sdk.postprocess``, with only this task's fields."""
        keep = {"task", "output", "version"} | _TASK_FIELDS[self.task]
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in keep}


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The best class and the ``top_k`` best, each with its score."""

    index: int
    label: str
    confidence: float
    top: tuple[ClassScore, ...]


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is (x1, y1, x2, y2) in source-image pixels."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionResult:
    """The detections of one image, as arrays (``boxes`` [N, 4] x1 y1 x2 y2 in source pixels,
    ``scores`` [N], ``class_ids`` [N]) and, iterated, as ``Detection`` objects by score."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...] | None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __iter__(self) -> Iterator[Detection]:
        for box, score, class_id in zip(self.boxes, self.scores, self.class_ids, strict=True):
            cid = int(class_id)
            label = (
                self.labels[cid] if self.labels is not None and cid < len(self.labels) else str(cid)
            )
            yield Detection(label, cid, float(score), tuple(float(v) for v in box))  # type: ignore[arg-type]


@dataclass(frozen=True)
class SegmentationResult:
    """The class of each pixel of the model's output grid (``mask`` [H, W]); ``geometry`` maps
    tensor pixels to source pixels."""

    mask: np.ndarray
    labels: tuple[str, ...] | None
    geometry: Geometry | None


def softmax(values: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the NumPy reference the kernels are tested against)."""
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


class Postprocessor:
    """A compiled ``PostprocessSpec``: call it with the outputs of one item (batch of one).

    Raises PostprocessError when an output is missing, has the wrong shape or holds NaN/Inf.
    """

    def __init__(self, spec: PostprocessSpec, labels: Sequence[str] | None = None) -> None:
        self.spec = spec
        self.labels = tuple(labels) if labels is not None else None

    def _output(self, outputs: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
        name = self.spec.output if self.spec.output is not None else next(iter(outputs))
        if name not in outputs:
            raise PostprocessError(
                f"the postprocessing reads output {name!r}, the model has {list(outputs)}"
            )
        # NaN and Inf are caught inside the kernels' first pass over the output (no extra read).
        return name, np.asarray(outputs[name])

    def __call__(
        self, outputs: Mapping[str, np.ndarray], geometry: Geometry | None = None
    ) -> Classification | DetectionResult | SegmentationResult:
        task = self.spec.task
        if task == "classification":
            return self._classify(outputs)
        if task == "detection":
            return self._detect(outputs, geometry)
        return self._segment(outputs, geometry)

    def _classify(self, outputs: Mapping[str, np.ndarray]) -> Classification:
        from edge_sdk.kernels.activations import sigmoid, softmax_top_k, top_k

        name, scores = self._output(outputs)
        if scores.ndim == 2 and scores.shape[0] == 1:
            scores = scores[0]
        if scores.ndim != 1 or scores.size == 0:
            raise PostprocessError(
                f"classification needs a [1, classes] output, {name!r} has shape "
                f"{outputs[name].shape}"
            )
        if self.labels is not None and len(self.labels) != scores.size:
            raise PostprocessError(
                f"the model has {len(self.labels)} labels but output {name!r} has "
                f"{scores.size} classes"
            )
        k = min(self.spec.top_k, scores.size)
        if self.spec.activation == "softmax":
            indices, values = softmax_top_k(scores, k)
        else:
            if self.spec.activation == "sigmoid":
                scores = sigmoid(scores)
            indices, values = top_k(scores, k)
        labels = self.labels
        top = tuple(
            ClassScore(int(i), labels[int(i)] if labels is not None else str(int(i)), float(v))
            for i, v in zip(indices, values, strict=True)
        )
        return Classification(top[0].index, top[0].label, top[0].score, top)

    def _detect(
        self, outputs: Mapping[str, np.ndarray], geometry: Geometry | None
    ) -> DetectionResult:
        from edge_sdk.kernels.detect import decode_yolov5, decode_yolov8

        _, values = self._output(outputs)
        decode = decode_yolov8 if self.spec.format == "yolov8" else decode_yolov5
        found = decode(
            values,
            conf_threshold=self.spec.conf_threshold,
            iou_threshold=self.spec.iou_threshold,
            max_detections=self.spec.max_detections,
            class_agnostic=self.spec.class_agnostic,
            geometry=geometry,
        )
        return DetectionResult(found.boxes, found.scores, found.class_ids, self.labels)

    def _segment(
        self, outputs: Mapping[str, np.ndarray], geometry: Geometry | None
    ) -> SegmentationResult:
        from edge_sdk.kernels.activations import segmentation_argmax

        name, values = self._output(outputs)
        if values.ndim == 4 and values.shape[0] == 1:
            values = values[0]
        if values.ndim != 3:
            raise PostprocessError(
                f"segmentation needs a [1, classes, H, W] output, {name!r} has shape "
                f"{outputs[name].shape}"
            )
        return SegmentationResult(segmentation_argmax(values), self.labels, geometry)


def postprocess(
    spec: PostprocessSpec,
    outputs: Mapping[str, np.ndarray],
    labels: Sequence[str] | None,
    geometry: Geometry | None = None,
) -> Any:
    """Apply ``spec`` to the outputs of one item (batch of one)."""
    return Postprocessor(spec, labels)(outputs, geometry)
