"""edge_sdk.kernels.detect: NMS against the plain reference and OpenCV's NMSBoxes(Batched), the
YOLOv8/YOLOv5 decoders against their NumPy references, geometry mapping, the max_detections
and threshold conventions, and every bad-input path."""

from __future__ import annotations

import os

import cv2
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_sdk.errors import PostprocessError
from edge_sdk.kernels import detect
from edge_sdk.kernels.detect import Detections
from edge_sdk.kernels.geometry import Geometry

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
SETTINGS = settings(
    max_examples=40 if NO_JIT else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def assert_same(a: Detections, b: Detections) -> None:
    assert a.boxes.dtype == np.float32 and a.scores.dtype == np.float32
    assert a.class_ids.dtype == np.int32
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


# --------------------------------------------------------------------------------------------
# NMS


@st.composite
def box_sets(draw: st.DrawFn, max_n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes on a coarse grid (identical boxes, shared edges, zero-area and inverted boxes
    happen often), scores from few values (ties), classes 0-2."""
    n = draw(st.integers(0, max_n))
    corners = draw(hnp.arrays(np.int16, (n, 4), elements=st.integers(0, 12)))
    boxes = corners.astype(np.float32)
    if draw(st.booleans()):
        boxes[:, 2:] = boxes[:, :2] + np.abs(boxes[:, 2:] - boxes[:, :2])  # proper xyxy
    if draw(st.booleans()):
        boxes *= np.float32(draw(st.sampled_from([0.5, 1.7, 10.0])))
    score_values = draw(st.sampled_from([[0.5, 0.7, 0.9], [0.25, 0.5], None]))
    if score_values is None:
        scores = draw(hnp.arrays(np.float32, n, elements=st.floats(0.015625, 1.0, width=32)))
    else:
        scores = np.asarray(draw(st.lists(st.sampled_from(score_values), min_size=n, max_size=n)),
                            np.float32)  # fmt: skip
    classes = draw(hnp.arrays(np.int32, n, elements=st.integers(0, 2)))
    return boxes, scores, classes


@SETTINGS
@given(
    box_sets(),
    st.sampled_from([0.0, 0.3, 0.45, 0.5, 0.7, 1.0]),
    st.integers(1, 35),
    st.booleans(),
    st.sampled_from([np.float32, np.float64]),
)
def test_nms_keeps_exactly_the_reference_boxes(
    case: tuple[np.ndarray, np.ndarray, np.ndarray],
    iou: float,
    max_det: int,
    class_aware: bool,
    dtype: type,
) -> None:
    boxes, scores, classes = case
    boxes = boxes.astype(dtype)
    ours = detect.nms(
        boxes, scores, classes, iou_threshold=iou, max_detections=max_det, class_aware=class_aware
    )
    expected = detect.nms_reference(
        boxes, scores, classes, iou_threshold=iou, max_detections=max_det, class_aware=class_aware
    )
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, expected)


def test_nms_conventions() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 0, 10], [0, 0, 0, 10]],
        np.float32,
    )
    scores = np.array([0.8, 0.8, 0.9, 0.7, 0.7], np.float32)
    # IoU(box 0, box 2) is exactly 1/3: suppressed only when IoU > threshold.
    keep = detect.nms(boxes, scores, iou_threshold=1 / 3, max_detections=10)
    np.testing.assert_array_equal(keep, [2, 0, 3, 4])  # 1 == 0: IoU 1; 3, 4: empty, never
    keep = detect.nms(boxes, scores, iou_threshold=0.33, max_detections=10)
    np.testing.assert_array_equal(keep, [2, 3, 4])
    # Classes: different classes never suppress each other unless class-agnostic.
    ids = np.array([0, 1, 2, 0, 0])
    keep = detect.nms(boxes, scores, ids, iou_threshold=0.33, max_detections=10)
    np.testing.assert_array_equal(keep, [2, 0, 1, 3, 4])
    keep = detect.nms(boxes, scores, ids, iou_threshold=0.33, max_detections=10, class_aware=False)
    np.testing.assert_array_equal(keep, [2, 3, 4])
    assert detect.nms(boxes, scores, iou_threshold=0.5, max_detections=2).tolist() == [2, 0]
    empty = detect.nms(np.empty((0, 4), np.float32), np.empty(0), iou_threshold=0.5,
                       max_detections=5)  # fmt: skip
    assert empty.shape == (0,) and empty.dtype == np.int64


def _cv2_near_threshold(boxes: np.ndarray, iou: float) -> bool:
    """True if some pair's IoU is within float32 rounding of the threshold (OpenCV compares
    a float32 ``1 - (1 - IoU)``; the decision may differ there)."""
    for i in range(len(boxes)):
        for j in range(i):
            if abs(detect._iou_reference(boxes[i], boxes[j]) - iou) < 1e-5:
                return True
    return False


@SETTINGS
@given(
    st.integers(1, 40),
    st.sampled_from([0.3, 0.45, 0.5, 0.7]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_nms_matches_opencv_on_random_sets(n: int, iou: float, batched: bool, seed: int) -> None:
    # Restricted to what OpenCV handles as we do: positive-area boxes at non-negative
    # coordinates (NMSBoxesBatched offsets classes by the largest coordinate, and OpenCV calls
    # two empty boxes identical), pairs not within float rounding of the threshold.
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(1, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = np.round(rng.uniform(0.05, 1.0, n), 2).astype(np.float32)  # ties included
    classes = rng.integers(0, 3, n).astype(np.int32)
    assume(not _cv2_near_threshold(boxes, iou))
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    if batched:
        theirs = cv2.dnn.NMSBoxesBatched(xywh, scores, classes, 0.0, iou)
    else:
        theirs = cv2.dnn.NMSBoxes(xywh, scores, 0.0, iou)
    theirs = np.asarray(theirs, np.int64).reshape(-1)
    ours = detect.nms(
        boxes, scores, classes, iou_threshold=iou, max_detections=n, class_aware=batched
    )
    np.testing.assert_array_equal(ours, theirs)


def test_nms_bad_input() -> None:
    boxes = np.zeros((2, 4), np.float32)
    scores = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\], got 1.5"):
        detect.nms(boxes, scores, iou_threshold=1.5, max_detections=3)
    with pytest.raises(ValueError, match="max_detections must be an int >= 1, got 0"):
        detect.nms(boxes, scores, iou_threshold=0.5, max_detections=0)
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        detect.nms(np.zeros((2, 5)), scores, iou_threshold=0.5, max_detections=3)
    with pytest.raises(ValueError, match=r"scores must be \[2\] like boxes"):
        detect.nms(boxes, np.ones(3), iou_threshold=0.5, max_detections=3)
    with pytest.raises(ValueError, match=r"class_ids must be \[2\] like boxes"):
        detect.nms(boxes, scores, np.zeros(3, int), iou_threshold=0.5, max_detections=3)
    with pytest.raises(TypeError, match="class_ids must be an integer ndarray"):
        detect.nms(boxes, scores, np.zeros(2), iou_threshold=0.5, max_detections=3)
    with pytest.raises(TypeError, match="boxes must be a numeric ndarray"):
        detect.nms([[0, 0, 1, 1]], scores[:1], iou_threshold=0.5, max_detections=3)  # type: ignore[arg-type]
    bad = boxes.copy()
    bad[1, 2] = np.nan
    with pytest.raises(PostprocessError, match=r"NaN at index \(1, 2\)"):
        detect.nms(bad, scores, iou_threshold=0.5, max_detections=3)
    with pytest.raises(PostprocessError, match=r"\+inf at index \(0,\)"):
        detect.nms(boxes, np.array([np.inf, 1.0]), iou_threshold=0.5, max_detections=3)


# --------------------------------------------------------------------------------------------
# YOLOv8


@st.composite
def yolov8_outputs(draw: st.DrawFn) -> np.ndarray:
    """[1, 4 + C, N] with C from 1 to 20 (whole groups of 8 and a tail), boxes clustered so
    that NMS has work, class scores from a few values (ties across classes and anchors)."""
    classes = draw(st.integers(1, 20))
    n = draw(st.integers(4 + classes, 4 + classes + 60))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    out = np.empty((1, 4 + classes, n), np.float32)
    centres = rng.uniform(0, 100, (3, 2))
    which = rng.integers(0, 3, n)
    out[0, 0] = centres[which, 0] + rng.integers(-3, 4, n)
    out[0, 1] = centres[which, 1] + rng.integers(-3, 4, n)
    out[0, 2:4] = rng.integers(0, 30, (2, n))  # zero widths included
    levels = np.float32([0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9])
    out[0, 4:] = levels[rng.integers(0, len(levels), (classes, n))]
    return out


@SETTINGS
@given(
    yolov8_outputs(),
    st.sampled_from([0.0, 0.25, 0.3, 0.6]),
    st.sampled_from([0.0, 0.3, 0.45, 1.0]),
    st.integers(1, 40),
    st.booleans(),
)
def test_decode_yolov8_matches_reference(
    output: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool
) -> None:
    options = {
        "conf_threshold": conf,
        "iou_threshold": iou,
        "max_detections": max_det,
        "class_agnostic": agnostic,
    }
    ours = detect.decode_yolov8(output, **options)  # type: ignore[arg-type]
    assert_same(ours, detect.decode_yolov8_reference(output, **options))  # type: ignore[arg-type]
    assert len(ours) <= max_det
    assert (ours.scores > np.float32(conf)).all()
    assert (np.diff(ours.scores) <= 0).all()


def _realistic_v8(anchors: int, classes: int, seed: int) -> np.ndarray:
    """Low background, a few clusters of overlapping high-score boxes of a few classes."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, 4 + classes, anchors), np.float32)
    out[0, 0:2] = rng.uniform(0, 640, (2, anchors))
    out[0, 2:4] = rng.uniform(8, 64, (2, anchors))
    out[0, 4:] = rng.random((classes, anchors), dtype=np.float32) * np.float32(0.05)
    for obj in range(12):
        box = rng.uniform([40, 40, 30, 30], [600, 600, 200, 200])
        cls = obj % 5
        for a in rng.choice(anchors, 15, replace=False):
            out[0, 0:4, a] = box * rng.normal(1.0, 0.03, 4)
            out[0, 4 + cls, a] = rng.uniform(0.3, 0.95)
    return out


def test_decode_yolov8_realistic_output_spanning_chunks() -> None:
    anchors = 2100 if NO_JIT else 8400  # more than one 1024-anchor chunk either way
    output = _realistic_v8(anchors, 80, seed=7)
    for agnostic in (False, True):
        ours = detect.decode_yolov8(output, class_agnostic=agnostic)
        assert_same(ours, detect.decode_yolov8_reference(output, class_agnostic=agnostic))
        assert 5 <= len(ours) < 60


def test_decode_yolov8_agrees_with_numpy_and_opencv() -> None:
    output = _realistic_v8(2100, 80, seed=11)
    pred = output[0]
    scores = pred[4:].max(axis=0)
    idx = np.flatnonzero(scores > 0.25)
    ids = pred[4:, idx].argmax(axis=0)
    xywh = pred[:4, idx].T.astype(np.float64)
    xywh[:, :2] -= xywh[:, 2:] / 2
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores[idx], ids, 0.25, 0.45)).reshape(-1)
    ours = detect.decode_yolov8(output)
    np.testing.assert_array_equal(ours.scores, scores[idx][keep])
    np.testing.assert_array_equal(ours.class_ids, ids[keep])
    np.testing.assert_allclose(ours.boxes[:, :2], xywh[keep, :2], atol=1e-4)


def test_decode_yolov8_maps_boxes_back_through_a_letterbox() -> None:
    # A 1280x720 frame letterboxed into 640x640: scale 0.5, 140 rows of padding on top.
    geometry = Geometry(1280, 720, 640, 640, 0.5, 0.5, 0.0, 140.0)
    output = np.zeros((1, 6, 8), np.float32)
    output[0, :4, 0] = [320, 320, 100, 50]  # centre of the tensor
    output[0, :4, 1] = [10, 150, 40, 40]  # reaches into the left pad: clipped to the image
    output[0, 4, :2] = [0.9, 0.8]
    found = detect.decode_yolov8(output, geometry=geometry)
    np.testing.assert_allclose(found.boxes, [[540, 310, 740, 410], [0, 0, 60, 60]], atol=1e-4)
    assert_same(found, detect.decode_yolov8_reference(output, geometry=geometry))


def test_max_detections_caps_after_nms() -> None:
    # Five overlapping boxes of one object score 0.9..0.86; a separate object scores 0.5.
    # Capping candidates before NMS at 2 (cv2's top_k) would lose the second object.
    output = np.zeros((1, 5, 6), np.float32)
    output[0, :4, :5] = np.array([[100, 100, 50, 50]] * 5).T + np.arange(5)
    output[0, :4, 5] = [400, 400, 50, 50]
    output[0, 4] = [0.9, 0.89, 0.88, 0.87, 0.86, 0.5]
    found = detect.decode_yolov8(output, max_detections=2)
    np.testing.assert_array_equal(found.scores, np.float32([0.9, 0.5]))
    assert len(detect.decode_yolov8(output, max_detections=1)) == 1


def test_conf_threshold_is_strict_and_float32() -> None:
    output = np.zeros((1, 5, 5), np.float32)
    output[0, :4] = np.array([[10, 10, 5, 5], [50, 50, 5, 5], [90, 90, 5, 5],
                              [130, 130, 5, 5], [170, 170, 5, 5]], np.float32).T  # fmt: skip
    output[0, 4] = np.float32([0.25, 0.2500001, 0.3, 0.29, 0.1])
    found = detect.decode_yolov8(output, conf_threshold=0.25)
    np.testing.assert_array_equal(found.scores, np.float32([0.3, 0.29, 0.2500001]))
    # 0.3 is not a float32: the threshold is float32(0.3), which a score of float32(0.3)
    # does not exceed.
    assert len(detect.decode_yolov8(output, conf_threshold=0.3)) == 0


def test_empty_result_has_the_right_shapes_and_dtypes() -> None:
    output = np.zeros((1, 84, 100), np.float32)
    for found in (
        detect.decode_yolov8(output),
        detect.decode_yolov8(output, geometry=Geometry.identity(100, 100)),
        detect.decode_yolov5(np.zeros((1, 100, 85), np.float32)),
    ):
        assert len(found) == 0
        assert found.boxes.shape == (0, 4) and found.boxes.dtype == np.float32
        assert found.scores.shape == (0,) and found.scores.dtype == np.float32
        assert found.class_ids.shape == (0,) and found.class_ids.dtype == np.int32


def test_other_float_dtypes_and_layouts_are_accepted() -> None:
    output = _realistic_v8(300, 20, seed=3)
    expected = detect.decode_yolov8(output)
    assert_same(detect.decode_yolov8(output[0]), expected)  # [4 + C, N]
    assert_same(detect.decode_yolov8(output.astype(np.float64)), expected)
    strided = np.repeat(output, 2, axis=2)[:, :, ::2]
    assert_same(detect.decode_yolov8(strided), expected)
    half = output.astype(np.float16)
    assert_same(detect.decode_yolov8(half), detect.decode_yolov8_reference(half))


def test_decode_yolov8_bad_layouts_name_the_expected_one() -> None:
    with pytest.raises(PostprocessError, match=r"looks like \[1, anchors, 4 \+ classes\]"):
        detect.decode_yolov8(np.zeros((1, 8400, 84), np.float32))
    with pytest.raises(PostprocessError, match=r"batch of 2; decode one image at a time"):
        detect.decode_yolov8(np.zeros((2, 84, 8400), np.float32))
    with pytest.raises(PostprocessError, match=r"layout \[1, 4 \+ classes, anchors\]"):
        detect.decode_yolov8(np.zeros(84, np.float32))
    with pytest.raises(PostprocessError, match="at least one class row"):
        detect.decode_yolov8(np.zeros((1, 4, 10), np.float32))
    with pytest.raises(PostprocessError, match="must be a float tensor"):
        detect.decode_yolov8(np.zeros((1, 84, 8400), np.int8))
    with pytest.raises(TypeError, match="output must be an ndarray"):
        detect.decode_yolov8([[0.0]])  # type: ignore[arg-type]


def test_decode_options_are_checked() -> None:
    output = np.zeros((1, 6, 10), np.float32)
    with pytest.raises(ValueError, match="conf_threshold must be a finite number"):
        detect.decode_yolov8(output, conf_threshold=float("nan"))
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        detect.decode_yolov8(output, iou_threshold=-0.1)
    with pytest.raises(ValueError, match="max_detections must be an int >= 1"):
        detect.decode_yolov5(np.zeros((1, 10, 6), np.float32), max_detections=0)
    with pytest.raises(TypeError, match="geometry must be a Geometry"):
        detect.decode_yolov8(output, geometry=(1, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("where", [(0, 0, 3), (0, 2, 3), (0, 5, 9), (0, 13, 0)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_yolov8_non_finite_anywhere_is_a_postprocess_error(
    where: tuple[int, int, int], bad: float
) -> None:
    output = _realistic_v8(30, 10, seed=1)
    output[where] = bad
    with pytest.raises(PostprocessError, match=rf"at index \({where[0]}, {where[1]}, {where[2]}\)"):
        detect.decode_yolov8(output)


# --------------------------------------------------------------------------------------------
# YOLOv5


@st.composite
def yolov5_outputs(draw: st.DrawFn) -> np.ndarray:
    classes = draw(st.integers(1, 12))
    n = draw(st.integers(5 + classes, 5 + classes + 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    out = np.empty((1, n, 5 + classes), np.float32)
    centres = rng.uniform(0, 100, (3, 2))
    which = rng.integers(0, 3, n)
    out[0, :, 0] = centres[which, 0] + rng.integers(-3, 4, n)
    out[0, :, 1] = centres[which, 1] + rng.integers(-3, 4, n)
    out[0, :, 2:4] = rng.integers(0, 30, (n, 2))
    levels = np.float32([0.0, 0.2, 0.3, 0.5, 0.8, 1.0])
    out[0, :, 4:] = levels[rng.integers(0, len(levels), (n, 1 + classes))]
    return out


@SETTINGS
@given(
    yolov5_outputs(),
    st.sampled_from([0.0, 0.25, 0.3, 0.6]),
    st.sampled_from([0.0, 0.3, 0.45, 1.0]),
    st.integers(1, 40),
    st.booleans(),
)
def test_decode_yolov5_matches_reference(
    output: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool
) -> None:
    options = {
        "conf_threshold": conf,
        "iou_threshold": iou,
        "max_detections": max_det,
        "class_agnostic": agnostic,
    }
    ours = detect.decode_yolov5(output, **options)  # type: ignore[arg-type]
    assert_same(ours, detect.decode_yolov5_reference(output, **options))  # type: ignore[arg-type]


def test_yolov5_score_is_objectness_times_class_and_objectness_must_pass() -> None:
    out = np.zeros((1, 8, 7), np.float32)
    out[0, :, 0:4] = [[10 + 40 * i, 10, 8, 8] for i in range(8)]
    out[0, 0, 4:] = [0.9, 0.2, 0.8]  # 0.9 * 0.8 = 0.72, class 1
    out[0, 1, 4:] = [0.5, 0.4, 0.4]  # 0.2 <= 0.25: dropped; tie -> class 0 if kept
    out[0, 2, 4:] = [0.2, 2.0, 0.0]  # 0.4 > 0.25 but objectness 0.2 does not pass
    out[0, 3, 4:] = [0.6, 0.5, 0.5]  # 0.3, ties: class 0
    found = detect.decode_yolov5(out, conf_threshold=0.25)
    expected = [np.float32(0.9) * np.float32(0.8), np.float32(0.6) * np.float32(0.5)]
    np.testing.assert_array_equal(found.scores, np.array(expected, np.float32))
    np.testing.assert_array_equal(found.class_ids, [1, 0])


def test_decode_yolov5_bad_layouts_and_non_finite() -> None:
    with pytest.raises(PostprocessError, match=r"looks like \[1, 4 \+ classes, anchors\]"):
        detect.decode_yolov5(np.zeros((1, 84, 8400), np.float32))
    with pytest.raises(PostprocessError, match="at least one class"):
        detect.decode_yolov5(np.zeros((1, 100, 5), np.float32))
    out = np.zeros((1, 30, 7), np.float32)
    out[0, 17, 6] = np.nan
    with pytest.raises(PostprocessError, match=r"NaN at index \(0, 17, 6\)"):
        detect.decode_yolov5(out)


# --------------------------------------------------------------------------------------------
# Detections


def test_detections_value_checks() -> None:
    d = Detections.empty()
    assert len(d) == 0
    with pytest.raises(ValueError, match="boxes must be a 2-D float32 array"):
        Detections(np.zeros((1, 4)), np.zeros(1, np.float32), np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="arrays disagree"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int32))


def test_warmup_runs() -> None:
    detect.warmup()
