"""Postprocessing specs compiled to typed results: classification, detection, segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk import ModelMetadataError, PostprocessError, PostprocessSpec
from edge_sdk.kernels.geometry import Geometry
from edge_sdk.postprocess import (
    Classification,
    DetectionResult,
    Postprocessor,
    SegmentationResult,
    softmax,
)


def test_classification_softmax_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    result = Postprocessor(PostprocessSpec(top_k=2), ["a", "b", "c"])({"logits": logits})
    assert isinstance(result, Classification)
    probabilities = softmax(logits[0].astype(np.float64))
    assert (result.index, result.label) == (1, "b")
    assert result.confidence == pytest.approx(probabilities[1], rel=1e-5)
    assert [c.label for c in result.top] == ["b", "c"]


def test_classification_sigmoid_and_none() -> None:
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    sig = Postprocessor(PostprocessSpec(activation="sigmoid", top_k=1))({"o": logits})
    assert sig.label == "1" and sig.confidence == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    raw = Postprocessor(PostprocessSpec(activation="none", top_k=3))({"o": logits})
    assert [c.score for c in raw.top] == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_non_finite_outputs_are_refused(bad: float, task: str) -> None:
    shape = {"classification": (1, 3), "detection": (1, 7, 20), "segmentation": (1, 3, 2, 2)}
    values = np.zeros(shape[task], np.float32)
    values.flat[1] = bad
    with pytest.raises(PostprocessError, match=r"NaN|inf"):
        Postprocessor(PostprocessSpec(task=task))({"out": values})


def test_classification_errors() -> None:
    spec = PostprocessSpec()
    with pytest.raises(PostprocessError, match="labels"):
        Postprocessor(spec, ["a", "b"])({"o": np.zeros((1, 3), np.float32)})
    with pytest.raises(PostprocessError, match="shape"):
        Postprocessor(spec)({"o": np.zeros((2, 3), np.float32)})
    with pytest.raises(PostprocessError, match="reads output 'x'"):
        Postprocessor(PostprocessSpec(output="x"))({"o": np.zeros((1, 3), np.float32)})


def _yolov8(
    boxes_cxcywh: list[tuple[float, float, float, float]],
    classes: list[int],
    scores: list[float],
    num_classes: int = 3,
    anchors: int = 50,
) -> np.ndarray:
    output = np.zeros((1, 4 + num_classes, anchors), np.float32)
    output[0, 4:, :] = 0.01
    for anchor, (box, cls, score) in enumerate(zip(boxes_cxcywh, classes, scores, strict=True)):
        output[0, :4, anchor] = box
        output[0, 4 + cls, anchor] = score
    return output


def test_detection_maps_boxes_back_through_the_letterbox() -> None:
    # A 200x100 source letterboxed into 100x100: scale 0.5, 25 px pad above and below.
    geometry = Geometry(200, 100, 100, 100, 0.5, 0.5, 0.0, 25.0)
    output = _yolov8(
        [(50, 50, 20, 10), (52, 50, 20, 10), (20, 40, 10, 10)], [1, 1, 2], [0.9, 0.8, 0.7]
    )
    spec = PostprocessSpec(task="detection", iou_threshold=0.5)
    result = Postprocessor(spec, ["cat", "dog", "bird"])({"output0": output}, geometry)
    assert isinstance(result, DetectionResult)
    assert len(result) == 2  # the second dog overlaps the first and is suppressed
    first, second = list(result)
    assert (first.label, second.label) == ("dog", "bird")
    np.testing.assert_allclose(first.box, (80, 40, 120, 60), atol=1e-4)
    assert first.score == pytest.approx(0.9)


def test_detection_without_candidates_is_empty() -> None:
    output = _yolov8([], [], [])
    result = Postprocessor(PostprocessSpec(task="detection"))({"o": output})
    assert len(result) == 0 and list(result) == []
    assert result.boxes.shape == (0, 4)


def test_segmentation_argmax() -> None:
    logits = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    result = Postprocessor(PostprocessSpec(task="segmentation"), list("abcd"))({"masks": logits})
    assert isinstance(result, SegmentationResult)
    np.testing.assert_array_equal(result.mask, logits[0].argmax(axis=0))
    with pytest.raises(PostprocessError, match="segmentation needs"):
        Postprocessor(PostprocessSpec(task="segmentation"))({"m": np.zeros((2, 2), np.float32)})


def test_spec_validation_names_fields() -> None:
    spec = PostprocessSpec(task="detection", format="yolov5", conf_threshold=0.4)
    assert PostprocessSpec.from_metadata(spec.to_metadata()) == spec
    assert "top_k" not in spec.to_metadata()
    for bad, field in [
        ({"top_k": 0}, "top_k"),
        ({"task": "pose"}, "task"),
        ({"task": "detection", "format": "ssd"}, "format"),
        ({"task": "detection", "conf_threshold": 1.5}, "conf_threshold"),
        ({"task": "detection", "top_k": 3}, "top_k"),
        ({"activation": "relu"}, "activation"),
        ({"task": "classification", "iou_threshold": 0.5}, "iou_threshold"),
        ({"lables": []}, "lables"),
    ]:
        with pytest.raises(ModelMetadataError, match=field):
            PostprocessSpec.from_metadata(bad)
