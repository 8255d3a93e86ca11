"""Declarative postprocessing: a JSON spec in the model's metadata turns raw outputs into a result.

Spec version 1 (docs/model-metadata.md)::

    {"version": 1, "task": "classification", "activation": "softmax" | "sigmoid" | "none",
     "top_k": 5, "output": "logits"}

``output`` defaults to the model's first output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from edge_sdk.errors import ModelMetadataError, PostprocessError

__all__ = ["ClassScore", "Classification", "PostprocessSpec", "postprocess", "softmax"]

SPEC_VERSION = 1


@dataclass(frozen=True)
class PostprocessSpec:
    """How to read a model's output. Example: ``PostprocessSpec(activation="softmax", top_k=3)``."""

    task: Literal["classification"] = "classification"
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    top_k: int = 5
    output: str | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.task != "classification":
            raise ValueError(f"task {self.task!r} is not supported (classification)")
        if self.activation not in ("softmax", "sigmoid", "none"):
            raise ValueError(
                f"activation must be softmax, sigmoid or none, got {self.activation!r}"
            )
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {self.top_k!r}")
        if self.version != SPEC_VERSION:
            raise ValueError(f"postprocess spec version {self.version!r} is not supported (1)")

    @classmethod
    def from_metadata(
        cls, spec: Mapping[str, Any], key: str = "edge_sdk.postprocess"
    ) -> PostprocessSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ModelMetadataError(key, f"unknown field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**spec)
        except (TypeError, ValueError) as exc:
            raise ModelMetadataError(key, str(exc)) from exc


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


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def postprocess(
    spec: PostprocessSpec, outputs: Mapping[str, np.ndarray], labels: Sequence[str] | None
) -> Classification:
    """Apply ``spec`` to the outputs of one input (batch of one)."""
    name = spec.output if spec.output is not None else next(iter(outputs))
    if name not in outputs:
        raise PostprocessError(
            f"the postprocessing reads output {name!r}, the model has {list(outputs)}"
        )
    scores = np.asarray(outputs[name], dtype=np.float64)
    if scores.ndim == 2 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 1 or scores.size == 0:
        raise PostprocessError(
            f"classification needs a [1, classes] output, {name!r} has shape {outputs[name].shape}"
        )
    if labels is not None and len(labels) != scores.size:
        raise PostprocessError(
            f"the model has {len(labels)} labels but output {name!r} has {scores.size} classes"
        )
    if spec.activation == "softmax":
        scores = softmax(scores)
    elif spec.activation == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-scores))
    k = min(spec.top_k, scores.size)
    best = np.argsort(-scores, kind="stable")[:k]

    def label_of(i: int) -> str:
        return labels[i] if labels is not None else str(i)

    top = tuple(ClassScore(int(i), label_of(int(i)), float(scores[i])) for i in best)
    return Classification(top[0].index, top[0].label, top[0].score, top)
