"""Object-detection decoding: YOLOv8 / YOLOv5 outputs to boxes, and greedy NMS.

Conventions (each one chosen to match a named reference, so results can be checked):

- **Boxes** are ``x1, y1, x2, y2`` in continuous pixel coordinates (no ``+ 1``): a box's area
  is ``max(0, x2 - x1) * max(0, y2 - y1)`` (an inverted box is empty), as ``cv::Rect2d``'s
  ``area()`` for the boxes YOLO produces.
- **IoU** is ``intersection / union``, computed in float64 from the float32 corners; a union of
  0 (two empty boxes) gives IoU 0, so empty boxes never suppress anything. OpenCV's
  ``jaccardDistance`` instead calls two empty boxes identical (IoU 1), wherever they are.
- **Suppression** when ``IoU > iou_threshold``, strictly: ``cv2.dnn.NMSBoxes`` keeps a box when
  ``overlap <= threshold`` (``NMSFast_`` in OpenCV's ``modules/dnn/src/nms.inl.hpp``), and so
  does Ultralytics (torchvision's ``nms`` discards ``IoU > iou_threshold``).
- **Order**: candidates by descending score, ties by lower index first (OpenCV sorts with
  ``std::stable_sort``); greedy: a candidate is kept unless it overlaps an already kept box.
- **Class-aware** by default: boxes of different classes never suppress each other (OpenCV's
  ``NMSBoxesBatched`` gets the same by offsetting each class's boxes out of reach).
- **Candidates**: ``score > conf_threshold`` (strict, as OpenCV's ``NMSGetMaxScoreIndex`` and
  Ultralytics), with the threshold in float32, the scores' precision. YOLOv8's score is the
  best class score; YOLOv5's is ``objectness * best class score`` for anchors whose objectness
  itself exceeds the threshold (YOLOv5's ``non_max_suppression``).
- **max_detections** caps the detections kept *after* NMS. OpenCV's ``top_k`` caps the
  candidates before it (../shared/NOTES.md), which can drop a box that would have survived.
- **Non-finite** values anywhere in the output raise ``PostprocessError``: they are detected in
  the scan that reads the output anyway, by accumulating ``v - v``.

Performance: YOLOv8's output is [4 + classes, anchors], class-major. The scan reads it once in
memory order, in chunks of 1024 anchors: rows outer, anchors inner, keeping a running maximum
per anchor (in L1) and the group of 8 rows that holds it; the chunk's candidates (class: at
most 8 values read; box) are then extracted while its rows are still in L2. Only candidates are
sorted (a stable radix sort) and compared (a branch-free loop over the kept boxes). On the 2-core
x86 test host the whole decode of a cache-cold [1, 84, 8400] output costs the read of the output
plus about 30 us: the read is the floor (NumPy's ``max`` over the class rows alone takes as
long), so the decode is memory-bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import PostprocessError
from edge_sdk.kernels._jit import kernel, prange
from edge_sdk.kernels.activations import _nonfinite_error
from edge_sdk.kernels.geometry import Geometry

__all__ = [
    "Detections",
    "decode_yolov5",
    "decode_yolov5_reference",
    "decode_yolov8",
    "decode_yolov8_reference",
    "nms",
    "nms_reference",
    "warmup",
]

_V8_CHUNK = 1024  # anchors per chunk of the YOLOv8 scan (see decode_yolov8)


@dataclass(frozen=True)
class Detections:
    """Detected boxes, best first. With a ``Geometry``, boxes are in source-image pixels.

    ``boxes`` [N, 4] float32 x1, y1, x2, y2; ``scores`` [N] float32; ``class_ids`` [N] int32.
    Example: ``for box, score, cls in zip(d.boxes, d.scores, d.class_ids): ...``
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        for name, value, dtype, ndim in (
            ("boxes", self.boxes, np.float32, 2),
            ("scores", self.scores, np.float32, 1),
            ("class_ids", self.class_ids, np.int32, 1),
        ):
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
                raise ValueError(f"Detections.{name} must be a {ndim}-D {np.dtype(dtype)} array")
        n = self.scores.shape[0]
        if self.boxes.shape != (n, 4) or self.class_ids.shape != (n,):
            raise ValueError(
                f"Detections arrays disagree: boxes {self.boxes.shape}, scores "
                f"{self.scores.shape}, class_ids {self.class_ids.shape}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def _trusted(cls, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        """Build from arrays a kernel made (known dtypes and shapes) without re-checking them:
        on the decode path, with cold caches, each check costs microseconds."""
        made = object.__new__(cls)
        object.__setattr__(made, "boxes", boxes)
        object.__setattr__(made, "scores", scores)
        object.__setattr__(made, "class_ids", class_ids)
        return made

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int32))


# --------------------------------------------------------------------------------------------
# Kernels


@kernel
def _order_desc(scores: np.ndarray) -> np.ndarray:
    """Indices of float32 scores by descending score, ties by lower index (a stable sort).

    An LSD radix sort on 32-bit keys, 8 bits a pass: stable passes keep equal keys in index
    order. Measured 5 us for 400 scores against 24 us for numba's ``argsort(kind="mergesort")``.
    The key maps a float's bits so that unsigned order is descending float order; adding 0.0
    first turns -0.0 into +0.0, which compare equal."""
    n = scores.shape[0]
    tmp = np.empty(n, np.float32)
    for i in range(n):
        tmp[i] = scores[i] + np.float32(0.0)
    bits = tmp.view(np.uint32)
    keys = np.empty(n, np.uint32)
    sign = np.uint32(0x80000000)
    for i in range(n):
        b = bits[i]
        # Ascending float order as unsigned: flip every bit of a negative, the sign of the rest;
        # its complement orders descending.
        ascending = ~b if b & sign else b | sign
        keys[i] = ~ascending
    counts = np.zeros((4, 256), np.int64)
    for i in range(n):
        k = keys[i]
        counts[0, k & 255] += 1
        counts[1, (k >> 8) & 255] += 1
        counts[2, (k >> 16) & 255] += 1
        counts[3, k >> 24] += 1
    order = np.arange(n)
    other = np.empty(n, np.int64)
    for d in range(4):
        shift = np.uint32(8 * d)
        total = 0
        for v in range(256):
            c = counts[d, v]
            counts[d, v] = total
            total += c
        for i in range(n):
            j = order[i]
            digit = (keys[j] >> shift) & np.uint32(255)
            pos = counts[d, digit]
            other[pos] = j
            counts[d, digit] = pos + 1
        order, other = other, order
    return order


@kernel
def _greedy_nms(
    boxes: np.ndarray,
    order: np.ndarray,
    classes: np.ndarray,
    class_aware: bool,
    iou_threshold: float,
    max_detections: int,
    keep: np.ndarray,
) -> int:
    """Greedy NMS over boxes [M, 4] xyxy (the module's conventions), visiting them in
    ``order`` (by descending score, ties by lower index); writes the kept indices, best first,
    into keep (at least min(M, max_detections) long); returns how many."""
    m = boxes.shape[0]
    # Kept boxes in compact float64 arrays: the inner loop reads them sequentially.
    kx1 = np.empty(min(m, max_detections), np.float64)
    ky1 = np.empty_like(kx1)
    kx2 = np.empty_like(kx1)
    ky2 = np.empty_like(kx1)
    karea = np.empty_like(kx1)
    kcls = np.empty(kx1.shape[0], np.int64)
    agnostic = not class_aware
    kept = 0
    for o in range(m):
        i = order[o]
        x1 = np.float64(boxes[i, 0])
        y1 = np.float64(boxes[i, 1])
        x2 = np.float64(boxes[i, 2])
        y2 = np.float64(boxes[i, 3])
        w = x2 - x1
        h = y2 - y1
        area = (w if w > 0.0 else 0.0) * (h if h > 0.0 else 0.0)
        c = classes[i]
        # Branch-free over the kept boxes (a vectorised reduction): branches on overlap and
        # class mispredicted on every other pair and made this loop 4x slower. An empty
        # overlap gives inter = 0 and IoU 0, exactly as the early-out it replaces.
        hits = 0
        for t in range(kept):
            iw = min(x2, kx2[t]) - max(x1, kx1[t])
            ih = min(y2, ky2[t]) - max(y1, ky1[t])
            inter = (iw if iw > 0.0 else 0.0) * (ih if ih > 0.0 else 0.0)
            union = area + karea[t] - inter
            union = union if union > 0.0 else 1.0  # union 0 only if inter is 0: IoU 0
            hits += (inter / union > iou_threshold) & ((kcls[t] == c) | agnostic)
        suppressed = hits > 0
        if not suppressed:
            keep[kept] = i
            kx1[kept] = x1
            ky1[kept] = y1
            kx2[kept] = x2
            ky2[kept] = y2
            karea[kept] = area
            kcls[kept] = c
            kept += 1
            if kept == max_detections:
                break
    return kept


@kernel
def _nms_outputs(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_aware: bool,
    iou_threshold: float,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort the candidates, run NMS, return the kept (boxes, scores, classes), best first."""
    keep = np.empty(min(boxes.shape[0], max_detections), np.int64)
    order = _order_desc(scores)
    kept = _greedy_nms(boxes, order, classes, class_aware, iou_threshold, max_detections, keep)
    out_boxes = np.empty((kept, 4), np.float32)
    out_scores = np.empty(kept, np.float32)
    out_classes = np.empty(kept, np.int32)
    for t in range(kept):
        i = keep[t]
        for d in range(4):
            out_boxes[t, d] = boxes[i, d]
        out_scores[t] = scores[i]
        out_classes[t] = classes[i]
    return out_boxes, out_scores, out_classes


@kernel(parallel=True)
def _decode_v8(
    pred: np.ndarray,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    class_aware: bool,
    chunk: int,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv8 pred [4 + classes, anchors] to (status, boxes, scores, classes): status 0, or 1
    if pred holds a non-finite value.

    One call does it all: the wrapper's Python runs with cold caches in a real pipeline
    (about 4 us per NumPy call then), so scratch and results are allocated here.

    Anchors go in chunks (the parallel unit). Within a chunk, rows outer and anchors inner, so
    every read is sequential: a running best score per anchor and the first row of the group
    of 8 class rows holding it (the earliest group on ties). Then, while the chunk's rows are
    still in L2, each candidate's class (the first row of its group equal to the best) and
    xyxy box are stored at cand_*[start + i]. Loops index slices from 0 (``range(size)``): an
    index the compiler cannot prove >= 0 gets a negative-index wrap-around select on every
    access, which made the scan 3x slower.
    """
    rows, n = pred.shape
    nchunks = (n + chunk - 1) // chunk
    bad = np.zeros(nchunks, np.int64)
    counts = np.zeros(nchunks, np.int64)
    cand_boxes = np.empty((n, 4), np.float32)
    cand_scores = np.empty(n, np.float32)
    cand_classes = np.empty(n, np.int32)
    half = np.float32(0.5)
    for b in prange(nchunks):
        start = b * chunk
        stop = min(n, start + chunk)
        size = stop - start
        m = np.empty(size, pred.dtype)
        g = np.empty(size, np.int32)
        f = np.empty(size, pred.dtype)
        b0 = pred[0, start:stop]
        b1 = pred[1, start:stop]
        b2 = pred[2, start:stop]
        b3 = pred[3, start:stop]
        first = pred[4, start:stop]
        for q in range(size):
            v = first[q]
            m[q] = v
            g[q] = 4
            f[q] = (((b0[q] - b0[q]) + (b1[q] - b1[q])) + ((b2[q] - b2[q]) + (b3[q] - b3[q]))) + (
                v - v
            )
        c = 5
        while c + 8 <= rows:
            ci = np.int32(c)  # an int32 select, as g: mixed widths defeat the vectoriser
            r0 = pred[c, start:stop]
            r1 = pred[c + 1, start:stop]
            r2 = pred[c + 2, start:stop]
            r3 = pred[c + 3, start:stop]
            r4 = pred[c + 4, start:stop]
            r5 = pred[c + 5, start:stop]
            r6 = pred[c + 6, start:stop]
            r7 = pred[c + 7, start:stop]
            for q in range(size):
                x0 = r0[q]
                x1 = r1[q]
                x2 = r2[q]
                x3 = r3[q]
                x4 = r4[q]
                x5 = r5[q]
                x6 = r6[q]
                x7 = r7[q]
                v = max(max(max(x0, x1), max(x2, x3)), max(max(x4, x5), max(x6, x7)))  # noqa: PLW3301 (a tree, not a chain)
                better = v > m[q]
                m[q] = v if better else m[q]
                g[q] = ci if better else g[q]
                f[q] += (((x0 - x0) + (x1 - x1)) + ((x2 - x2) + (x3 - x3))) + (
                    ((x4 - x4) + (x5 - x5)) + ((x6 - x6) + (x7 - x7))
                )
            c += 8
        while c < rows:
            ci = np.int32(c)
            r0 = pred[c, start:stop]
            for q in range(size):
                v = r0[q]
                better = v > m[q]
                m[q] = v if better else m[q]
                g[q] = ci if better else g[q]
                f[q] += v - v
            c += 1
        total = f[0] - f[0]
        for q in range(size):
            total += f[q]
        bad[b] = total != 0
        count = 0
        for q in range(size):
            v = m[q]
            if v > conf_threshold:
                row = g[q]
                while pred[row, start + q] != v:
                    row += 1
                slot = start + count
                cand_scores[slot] = v
                cand_classes[slot] = row - 4
                w = b2[q] * half
                h = b3[q] * half
                cand_boxes[slot, 0] = b0[q] - w
                cand_boxes[slot, 1] = b1[q] - h
                cand_boxes[slot, 2] = b0[q] + w
                cand_boxes[slot, 3] = b1[q] + h
                count += 1
        counts[b] = count
    if bad.sum() != 0:
        nothing = np.empty(0, np.float32)
        return 1, np.empty((0, 4), np.float32), nothing, np.empty(0, np.int32)
    # Gather the chunks' candidates in anchor order, so score ties keep the lower anchor.
    total = counts.sum()
    boxes = np.empty((total, 4), np.float32)
    scores = np.empty(total, np.float32)
    classes = np.empty(total, np.int32)
    i = 0
    for b in range(nchunks):
        for slot in range(b * chunk, b * chunk + counts[b]):
            for d in range(4):
                boxes[i, d] = cand_boxes[slot, d]
            scores[i] = cand_scores[slot]
            classes[i] = cand_classes[slot]
            i += 1
    out_boxes, out_scores, out_classes = _nms_outputs(
        boxes, scores, classes, class_aware, iou_threshold, max_detections
    )
    return 0, out_boxes, out_scores, out_classes


@kernel
def _decode_v5(
    pred: np.ndarray,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    class_aware: bool,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv5 pred [anchors, 5 + classes] to (status, boxes, scores, classes): candidates
    where objectness > conf_threshold and objectness * best class score > conf_threshold, then
    NMS. Status 1 if pred holds a non-finite value."""
    n, width = pred.shape
    f = np.zeros(width, pred.dtype)
    anchors = np.empty(n, np.int64)
    scores_all = np.empty(n, np.float32)
    classes_all = np.empty(n, np.int32)
    count = 0
    for a in range(n):
        row = pred[a]
        for c in range(width):
            f[c] += row[c] - row[c]
        obj = row[4]
        if obj > conf_threshold:
            top = row[5]
            cls = 0
            for c in range(6, width):
                if row[c] > top:
                    top = row[c]
                    cls = c - 5
            score = obj * top
            if score > conf_threshold:
                anchors[count] = a
                scores_all[count] = score
                classes_all[count] = cls
                count += 1
    total = f[0] - f[0]
    for c in range(width):
        total += f[c]
    if total != 0:
        nothing = np.empty(0, np.float32)
        return 1, np.empty((0, 4), np.float32), nothing, np.empty(0, np.int32)
    boxes = np.empty((count, 4), np.float32)
    half = np.float32(0.5)
    for i in range(count):
        a = anchors[i]
        cx = pred[a, 0]
        cy = pred[a, 1]
        w = pred[a, 2] * half
        h = pred[a, 3] * half
        boxes[i, 0] = cx - w
        boxes[i, 1] = cy - h
        boxes[i, 2] = cx + w
        boxes[i, 3] = cy + h
    out_boxes, out_scores, out_classes = _nms_outputs(
        boxes, scores_all[:count], classes_all[:count], class_aware, iou_threshold, max_detections
    )
    return 0, out_boxes, out_scores, out_classes


# --------------------------------------------------------------------------------------------
# References (plain Python / NumPy, for the tests)


def _iou_reference(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes by the module's definition, in float64."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    area_a = max(ax2 - ax1, 0.0) * max(ay2 - ay1, 0.0)
    area_b = max(bx2 - bx1, 0.0) * max(by2 - by1, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0.0 else 0.0


def nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray | None,
    *,
    iou_threshold: float,
    max_detections: int,
    class_aware: bool = True,
) -> np.ndarray:
    """Greedy NMS written plainly: visit by stable descending score, keep a box unless it
    overlaps (IoU > threshold) a kept box of its class (any kept box when class-agnostic)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if len(kept) == max_detections:
            break
        if all(
            (class_aware and class_ids is not None and class_ids[i] != class_ids[j])
            or not _iou_reference(boxes[i], boxes[j]) > iou_threshold
            for j in kept
        ):
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def _finish_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    iou_threshold: float,
    max_detections: int,
    class_agnostic: bool,
    geometry: Geometry | None,
) -> Detections:
    keep = nms_reference(
        boxes,
        scores,
        classes,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        class_aware=not class_agnostic,
    )
    out = boxes[keep].reshape(-1, 4)
    if geometry is not None:
        out = geometry.to_source(out)
    return Detections(out, scores[keep], classes[keep])


def _xyxy_reference(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    half = np.float32(0.5)
    return np.stack([cx - w * half, cy - h * half, cx + w * half, cy + h * half], axis=1)


def decode_yolov8_reference(
    output: np.ndarray,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    class_agnostic: bool = False,
    geometry: Geometry | None = None,
) -> Detections:
    """YOLOv8 decode with NumPy: best class per anchor, threshold, xywh -> xyxy, NMS."""
    pred = np.asarray(output, dtype=np.float32).reshape(output.shape[-2], output.shape[-1])
    class_scores = pred[4:]
    scores = class_scores.max(axis=0)
    classes = class_scores.argmax(axis=0).astype(np.int32)
    cand = np.flatnonzero(scores > np.float32(conf_threshold))
    boxes = _xyxy_reference(pred[0, cand], pred[1, cand], pred[2, cand], pred[3, cand])
    return _finish_reference(
        boxes.reshape(-1, 4),
        scores[cand],
        classes[cand],
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        class_agnostic=class_agnostic,
        geometry=geometry,
    )


def decode_yolov5_reference(
    output: np.ndarray,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    class_agnostic: bool = False,
    geometry: Geometry | None = None,
) -> Detections:
    """YOLOv5 decode with NumPy: objectness filter, objectness * best class, NMS."""
    pred = np.asarray(output, dtype=np.float32).reshape(output.shape[-2], output.shape[-1])
    conf = np.float32(conf_threshold)
    obj = pred[:, 4]
    best = pred[:, 5:].max(axis=1)
    classes = pred[:, 5:].argmax(axis=1).astype(np.int32)
    scores = obj * best
    cand = np.flatnonzero((obj > conf) & (scores > conf))
    p = pred[cand]
    boxes = _xyxy_reference(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
    return _finish_reference(
        boxes.reshape(-1, 4),
        scores[cand],
        classes[cand],
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        class_agnostic=class_agnostic,
        geometry=geometry,
    )


# --------------------------------------------------------------------------------------------
# Public wrappers


def _check_options(
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
    geometry: Geometry | None,
) -> None:
    if not isinstance(conf_threshold, (int, float)) or not math.isfinite(conf_threshold):
        raise ValueError(f"conf_threshold must be a finite number, got {conf_threshold!r}")
    if not isinstance(iou_threshold, (int, float)) or not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if (
        not isinstance(max_detections, (int, np.integer))
        or isinstance(max_detections, bool)
        or max_detections < 1
    ):
        raise ValueError(f"max_detections must be an int >= 1, got {max_detections!r}")
    if geometry is not None and not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a Geometry or None, got {type(geometry).__name__}")


def _output_2d(output: object, layout: str, example: str) -> np.ndarray:
    """The [rows, cols] float32 C-contiguous view of a batch-of-one output, or an error that
    names the expected layout."""
    if not isinstance(output, np.ndarray):
        raise TypeError(f"output must be an ndarray, got {type(output).__name__}")
    if output.dtype.kind != "f":
        raise PostprocessError(
            f"detection output must be a float tensor {layout}, got dtype {output.dtype}"
        )
    shape = output.shape
    if output.ndim == 3 and shape[0] != 1:
        raise PostprocessError(
            f"detection output {shape} holds a batch of {shape[0]}; decode one image at a "
            f"time (output[i : i + 1]), layout {layout}"
        )
    if output.ndim not in (2, 3):
        raise PostprocessError(
            f"detection output must have the layout {layout} (e.g. {example}), got shape {shape}"
        )
    pred = output.reshape(shape[-2], shape[-1])
    if pred.dtype != np.float32 or not pred.flags.c_contiguous:
        pred = np.ascontiguousarray(pred, dtype=np.float32)
    return pred


def _detections(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, geometry: Geometry | None
) -> Detections:
    if geometry is not None:
        boxes = geometry.to_source(boxes)
    return Detections._trusted(boxes, scores, classes)


def decode_yolov8(
    output: np.ndarray,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    class_agnostic: bool = False,
    geometry: Geometry | None = None,
) -> Detections:
    """Decode a YOLOv8 output [1, 4 + classes, anchors] (or [4 + classes, anchors]): rows 0-3
    are cx, cy, w, h in tensor pixels, the rest class scores (already sigmoid-ed in the
    exports); an anchor's score is its best class score. Candidates above ``conf_threshold``
    go through class-aware greedy NMS (``class_agnostic=True``: one pool), at most
    ``max_detections`` are kept, best first; with a ``geometry`` the boxes are mapped back to
    source-image pixels (``Geometry.to_source``, clipped to the image).

    Raises ``PostprocessError`` for a layout that is not [1, 4 + classes, anchors] (including a
    transposed one: more rows than anchors), a batch larger than one, or NaN/±inf values;
    ``ValueError`` for bad thresholds or ``max_detections``.

    Example: ``decode_yolov8(session.run(None, feed)[0], geometry=geo).boxes``.
    """
    _check_options(conf_threshold, iou_threshold, max_detections, geometry)
    layout = "[1, 4 + classes, anchors]"
    pred = _output_2d(output, layout, "[1, 84, 8400]")
    rows, n = pred.shape
    if rows < 5:
        raise PostprocessError(
            f"a YOLOv8 output needs 4 box rows and at least one class row ({layout}), got "
            f"shape {output.shape}"
        )
    if rows > n:
        raise PostprocessError(
            f"output shape {output.shape} has more rows than anchors: it looks like "
            f"[1, anchors, 4 + classes] (transposed, or a YOLOv5 output); decode_yolov8 "
            f"expects {layout}, e.g. [1, 84, 8400]"
        )
    # Chunks of 1024 anchors: a chunk's rows (about 340 KB for 80 classes) are still in L2
    # when its candidates are read back; the chunk size hardly changes the scan (measured
    # 241-269 us for 512-8400 on [84, 8400]).
    status, boxes, scores, classes = _decode_v8(
        pred,
        np.float32(conf_threshold),
        float(iou_threshold),
        int(max_detections),
        not class_agnostic,
        _V8_CHUNK,
    )
    if status:
        raise _nonfinite_error(output, "YOLOv8")
    return _detections(boxes, scores, classes, geometry)


def decode_yolov5(
    output: np.ndarray,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    class_agnostic: bool = False,
    geometry: Geometry | None = None,
) -> Detections:
    """Decode a YOLOv5 output [1, anchors, 5 + classes] (or [anchors, 5 + classes]): cx, cy,
    w, h, objectness, class scores; an anchor is a candidate when its objectness and
    ``objectness * best class score`` (its score) both exceed ``conf_threshold``. Then as
    ``decode_yolov8``: class-aware greedy NMS, ``max_detections`` cap, optional mapping back
    through ``geometry``.

    Raises ``PostprocessError`` for a layout that is not [1, anchors, 5 + classes] (including
    one with more columns than anchors, as a YOLOv8 output has), a batch larger than one, or
    NaN/±inf values; ``ValueError`` for bad thresholds or ``max_detections``.

    Example: ``decode_yolov5(output, conf_threshold=0.4).scores``.
    """
    _check_options(conf_threshold, iou_threshold, max_detections, geometry)
    layout = "[1, anchors, 5 + classes]"
    pred = _output_2d(output, layout, "[1, 25200, 85]")
    n, width = pred.shape
    if width < 6:
        raise PostprocessError(
            f"a YOLOv5 output needs 5 box/objectness columns and at least one class ({layout}), "
            f"got shape {output.shape}"
        )
    if width > n:
        raise PostprocessError(
            f"output shape {output.shape} has more columns than anchors: it looks like "
            f"[1, 4 + classes, anchors] (a YOLOv8 output?); decode_yolov5 expects {layout}, "
            f"e.g. [1, 25200, 85]"
        )
    status, boxes, scores, classes = _decode_v5(
        pred,
        np.float32(conf_threshold),
        float(iou_threshold),
        int(max_detections),
        not class_agnostic,
    )
    if status:
        raise _nonfinite_error(output, "YOLOv5")
    return _detections(boxes, scores, classes, geometry)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray | None = None,
    *,
    iou_threshold: float,
    max_detections: int,
    class_aware: bool = True,
) -> np.ndarray:
    """Greedy non-maximum suppression (see the module docstring for the exact conventions):
    returns the indices of the kept boxes, int64, by descending score (ties: lower index).

    ``boxes`` [N, 4] x1, y1, x2, y2; ``scores`` [N]; ``class_ids`` [N] integers or None. With
    ``class_aware`` (and class ids) boxes of different classes never suppress each other.

    Raises ``PostprocessError`` for NaN/±inf boxes or scores; ``ValueError`` for mismatched
    shapes, an ``iou_threshold`` outside [0, 1] or ``max_detections`` < 1; ``TypeError`` for
    non-numeric arrays.

    Example: ``keep = nms(boxes, scores, ids, iou_threshold=0.5, max_detections=100)``.
    """
    _check_options(0.0, iou_threshold, max_detections, None)
    for name, value in (("boxes", boxes), ("scores", scores)):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a numeric ndarray")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x1, y1, x2, y2), got shape {boxes.shape}")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise ValueError(f"scores must be [{n}] like boxes, got shape {scores.shape}")
    if class_ids is None:
        classes = np.zeros(n, np.int64)
        class_aware = False
    else:
        if not isinstance(class_ids, np.ndarray) or class_ids.dtype.kind not in "iu":
            raise TypeError("class_ids must be an integer ndarray or None")
        if class_ids.shape != (n,):
            raise ValueError(f"class_ids must be [{n}] like boxes, got shape {class_ids.shape}")
        classes = np.ascontiguousarray(class_ids, dtype=np.int64)
    # float32 boxes stay float32 (IoU is computed in float64 either way); others go to float64.
    box_dtype = np.float32 if boxes.dtype in (np.float16, np.float32) else np.float64
    box_values = np.ascontiguousarray(boxes, dtype=box_dtype)
    score_values = np.ascontiguousarray(scores, dtype=np.float64)
    for name, value in (("boxes", box_values), ("scores", score_values)):
        if not np.isfinite(value).all():
            raise _nonfinite_error(value, f"nms {name}")
    keep = np.empty(min(n, int(max_detections)), np.int64)
    order = np.argsort(-score_values, kind="stable")  # ties: lower index first
    kept = _greedy_nms(
        box_values,
        order,
        classes,
        bool(class_aware),
        float(iou_threshold),
        int(max_detections),
        keep,
    )
    return keep[:kept]


def warmup() -> None:
    """Compile every specialisation used in practice: both decoders (float32 outputs), NMS on
    float32 and float64 boxes."""
    v8 = np.zeros((1, 4 + 2, 16), np.float32)
    v8[0, 2:4] = 4.0
    v8[0, 4, :3] = 0.9
    decode_yolov8(v8)
    v5 = np.zeros((1, 16, 5 + 2), np.float32)
    v5[0, :, 2:4] = 4.0
    v5[0, :3, 4:6] = 0.9
    decode_yolov5(v5)
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32)
    for dtype in (np.float32, np.float64):
        nms(
            boxes.astype(dtype),
            np.array([0.9, 0.8]),
            np.array([0, 0]),
            iou_threshold=0.5,
            max_detections=10,
        )
