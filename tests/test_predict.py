"""EdgeModel.predict end to end on real sessions: metadata-declared preprocessing, every
postprocessing task, geometry back to the source image, batches and camera frames."""

from __future__ import annotations

from pathlib import Path

import _models
import numpy as np
import pytest

from edge_sdk import EdgeModel, PreprocessError, write_metadata
from edge_sdk.postprocess import Classification, DetectionResult, SegmentationResult
from edge_sdk.preprocess import RawFrame

HOLDOUT = Path(__file__).parent / "data" / "digits_holdout.npz"


def _detector(tmp_path: Path) -> Path:
    # One dog box centred at (32, 32) in tensor pixels, 16 x 8, on a [1, 4 + 2, 10] YOLOv8 head.
    head = np.zeros((1, 6, 10), np.float32)
    head[0, :4, 0] = (32, 32, 16, 8)
    head[0, 5, 0] = 0.9
    path = tmp_path / "detector.onnx"
    _models.constant_head(head, path)
    write_metadata(
        path,
        props={
            "edge_sdk.labels": ["cat", "dog"],
            "edge_sdk.preprocess": {"size": [64, 64], "crop": "letterbox"},
            "edge_sdk.postprocess": {"task": "detection", "format": "yolov8"},
        },
    )
    return path


def test_detection_end_to_end_maps_boxes_to_the_source(tmp_path: Path) -> None:
    with EdgeModel.load(_detector(tmp_path)) as model:
        frame = np.zeros((100, 200, 3), np.uint8)  # letterboxed: scale 0.32, pad 16 rows
        prediction = model.predict(frame)
    assert isinstance(prediction.result, DetectionResult)
    (dog,) = list(prediction.result)
    assert dog.label == "dog" and dog.score == pytest.approx(0.9)
    geometry = prediction.geometry
    assert geometry is not None and geometry.scale_x == pytest.approx(0.32)
    np.testing.assert_allclose(dog.box, (75, 37.5, 125, 62.5), atol=1e-3)


def test_segmentation_end_to_end(tmp_path: Path) -> None:
    logits = np.zeros((1, 3, 4, 4), np.float32)
    logits[0, 2, :2] = 1.0
    path = tmp_path / "segmenter.onnx"
    _models.constant_head(logits, path)
    write_metadata(
        path,
        props={
            "edge_sdk.preprocess": {"size": [64, 64]},
            "edge_sdk.postprocess": {"task": "segmentation"},
        },
    )
    with EdgeModel.load(path) as model:
        result = model.predict(np.zeros((64, 64, 3), np.uint8)).result
    assert isinstance(result, SegmentationResult)
    assert result.mask[:2].tolist() == [[2] * 4] * 2 and result.mask[2:].max() == 0


def test_predict_batch_matches_predict_on_the_bundled_model(digits_path: Path) -> None:
    data = np.load(HOLDOUT)
    images = list(data["images"][:16])
    with EdgeModel.load(digits_path) as model:
        batch = model.predict_batch(images)
        single = [model.predict(image) for image in images]
    assert len(batch) == 16
    for one, many in zip(single, batch, strict=True):
        assert isinstance(many.result, Classification)
        assert many.result.label == one.result.label
        assert many.result.confidence == pytest.approx(one.result.confidence, rel=1e-4)
    assert [int(p.result.label) for p in batch] == data["labels"][:16].tolist()


def test_predict_batch_on_a_fixed_batch_model_runs_items_one_by_one(tmp_path: Path) -> None:
    with EdgeModel.load(_detector(tmp_path)) as model:
        results = model.predict_batch([np.zeros((64, 64, 3), np.uint8)] * 3)
        assert [len(p.result) for p in results] == [1, 1, 1]
        with pytest.raises(PreprocessError, match="empty batch"):
            model.predict_batch([])


def test_camera_frame_through_predict(tmp_path: Path) -> None:
    nv12 = np.full(64 * 48 * 3 // 2, 128, np.uint8)
    with EdgeModel.load(_detector(tmp_path)) as model:
        result = model.predict(RawFrame(nv12, 64, 48, "NV12")).result
    assert len(result) == 1
