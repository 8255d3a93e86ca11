"""Camera frames (YUV) to RGB, and NV12 straight to a model's input tensor.

Layouts (what ``cv2.cvtColor`` calls ``COLOR_YUV2RGB_NV12``, ``_I420`` and ``_YUYV``):

- ``"NV12"``: the Y plane (H rows of W bytes), then one interleaved chroma plane of H/2 rows
  of W bytes, U first (U0 V0 U1 V1 ...). Each U, V pair covers a 2x2 block of pixels.
- ``"I420"``: the Y plane, then the U plane (H/2 x W/2), then the V plane (H/2 x W/2).
- ``"YUYV"`` (also called YUY2): packed 4:2:2, ``Y0 U Y1 V`` for each pair of pixels in a row
  (H rows of 2W bytes).

A buffer is a flat 1-D uint8 array, ``bytes``/``bytearray``/``memoryview``, or the 2-D array
OpenCV uses ((H*3/2) x W for NV12 and I420, H x W x 2 for YUYV). ``stride`` is the number of
bytes from one row of the first plane to the next when a camera pads its rows (the chroma
rows of NV12 have the same stride, those of I420 half of it); a 2-D array carries its own row
stride. The trailing padding of the last row may be missing.

Colour conversion: ITU-R BT.601, limited ("video") range (Y 16..235, U/V 16..240), chroma
upsampled by repetition (each U, V pair is used for its whole 2x2 or 2x1 block), as OpenCV
does. OpenCV's fixed-point form (modules/imgproc/src/color_yuv.simd.hpp, ``ITUR_BT_601_*``,
with the coefficients of R = 1.164(Y-16) + 1.596(V-128), G = 1.164(Y-16) - 0.813(V-128) -
0.391(U-128), B = 1.164(Y-16) + 2.018(U-128) scaled by 2**20)::

    y' = max(Y - 16, 0) * 1220542
    R  = (y' + 1673527 (V-128)                  + 2**19) >> 20
    G  = (y' -  852492 (V-128) -  409993 (U-128) + 2**19) >> 20
    B  = (y' + 2116026 (U-128)                  + 2**19) >> 20,   each clamped to 0..255

``yuv_to_rgb_reference`` computes exactly that (equal to ``cv2.cvtColor``). The kernels use the
same coefficients (all exact in float32) but float32 arithmetic, which vectorises where numba
cannot express 32-bit integer vectors (it widens integer arithmetic to 64 bits): about 3 values
in a million land on the other side of a rounding boundary and differ by one level.

``nv12_to_tensor`` fuses conversion with ``image_to_tensor`` (edge_sdk.kernels.image): for every
tensor pixel it converts the source pixels the resize reads (the 4 bilinear taps, or 1 for
nearest) to RGB exactly as ``yuv_to_rgb`` does, clamping and rounding included, and only then
interpolates and normalises. Interpolating Y, U, V first and converting once would be cheaper,
and equal for the affine part of the conversion, but not for the clamping to 0..255 (a
saturated red next to a dark pixel differs by tens of levels) nor the rounding; converting
per tap makes the fused result equal to "``yuv_to_rgb`` then ``image_to_tensor``" up to float
rounding, with no RGB image written in between.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from edge_sdk.errors import PreprocessError
from edge_sdk.kernels._jit import kernel, prange
from edge_sdk.kernels._share import chunk_done, claim_chunk, run_shared
from edge_sdk.kernels._share import warmup as share_warmup
from edge_sdk.kernels.geometry import Geometry
from edge_sdk.kernels.image import (
    CropMode,
    ResizeMode,
    _linear_taps,
    image_to_tensor,
    image_to_tensor_reference,
    plan_geometry,
)

__all__ = [
    "ChannelOrder",
    "YuvFormat",
    "i420_to_rgb",
    "nv12_to_rgb",
    "nv12_to_tensor",
    "nv12_to_tensor_reference",
    "warmup",
    "yuv_to_rgb",
    "yuv_to_rgb_reference",
    "yuyv_to_rgb",
]

YuvFormat = Literal["NV12", "I420", "YUYV"]
ChannelOrder = Literal["RGB", "BGR"]
Layout = Literal["NCHW", "NHWC"]
OutDType = Literal["float32", "float16", "uint8", "int8"]

_FORMATS = ("NV12", "I420", "YUYV")
# OpenCV's ITUR_BT_601_* constants (color_yuv.simd.hpp): BT.601 video range, 20 fractional bits.
_CY, _CUB, _CUG, _CVG, _CVR, _SHIFT = 1220542, 2116026, -409993, -852492, 1673527, 20


def _coefficients(channel_order: str) -> np.ndarray:
    """[cy, a0, b0, a1, b1, a2, b2] with output channel k = luma + a_k (U-128) + b_k (V-128).

    Every value is an integer below 2**22 divided by 2**20, so exact in float32. BGR is RGB
    with the rows swapped: one compiled kernel serves both orders.
    """
    one = float(1 << _SHIFT)
    r, g, b = (0.0, _CVR / one), (_CUG / one, _CVG / one), (_CUB / one, 0.0)
    rows = (r, g, b) if channel_order == "RGB" else (b, g, r)
    return np.array([_CY / one, *rows[0], *rows[1], *rows[2]], np.float32)


_COEF = {"RGB": _coefficients("RGB"), "BGR": _coefficients("BGR")}
# Bit offsets of U and V in a chroma pair read as one native 16-bit word (U is the first byte).
_UV_SHIFTS = np.array([0, 8] if sys.byteorder == "little" else [8, 0], np.uint16)

# Fused-path resize modes (the kernel takes numbers, not strings).
_FUSED_RESIZE = {"bilinear": 0, "bilinear_align_corners": 1, "nearest": 2}
_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8}


# --------------------------------------------------------------------------------------------
# Per-pixel arithmetic, shared by every kernel so all give the same value for the same pixel


@kernel
def _luma(y: np.uint8, cy: np.float32) -> Any:
    """OpenCV's max(Y - 16, 0) * CY, in output levels."""
    return np.float32(max(np.float32(y) - np.float32(16.0), np.float32(0.0)) * cy)


@kernel
def _chroma(u: np.float32, v: np.float32, a: np.float32, b: np.float32) -> Any:
    """One channel's chroma term for centred u, v, plus OpenCV's rounding half (2**19 / 2**20)."""
    return np.float32(a * u + b * v + np.float32(0.5))


@kernel
def _level(x: np.float32) -> np.int32:
    """floor(x) clamped to 0..255 (as int32, so LLVM narrows it with a saturating pack).

    Truncation equals floor here: a negative x, truncated to 0 instead of floored, clamps to 0
    all the same.
    """
    return min(max(np.int32(x), np.int32(0)), np.int32(255))


# --------------------------------------------------------------------------------------------
# YUV -> RGB kernels: one per layout, each a parallel loop over row pairs (or rows) calling a
# row kernel written as a flat loop over pixel pairs, which LLVM vectorises


@kernel
def _row_pair_nv12(
    ya: np.ndarray, yb: np.ndarray, uv: np.ndarray, oa: np.ndarray, ob: np.ndarray, coef: np.ndarray
) -> None:
    """Two RGB rows from two Y rows and their interleaved U V row (NV12).

    Written with constant offsets (2 i, 6 i + k) so LLVM recognises interleaved loads and
    stores and vectorises the loop; a step passed as a variable hides the pattern.
    """
    cy = coef[0]
    a0 = coef[1]
    b0 = coef[2]
    a1 = coef[3]
    b1 = coef[4]
    a2 = coef[5]
    b2 = coef[6]
    for i in range(ya.shape[0] // 2):
        u = np.float32(uv[2 * i]) - np.float32(128.0)
        v = np.float32(uv[2 * i + 1]) - np.float32(128.0)
        t0 = _chroma(u, v, a0, b0)
        t1 = _chroma(u, v, a1, b1)
        t2 = _chroma(u, v, a2, b2)
        l0 = _luma(ya[2 * i], cy)
        l1 = _luma(ya[2 * i + 1], cy)
        l2 = _luma(yb[2 * i], cy)
        l3 = _luma(yb[2 * i + 1], cy)
        oa[6 * i] = _level(l0 + t0)
        oa[6 * i + 1] = _level(l0 + t1)
        oa[6 * i + 2] = _level(l0 + t2)
        oa[6 * i + 3] = _level(l1 + t0)
        oa[6 * i + 4] = _level(l1 + t1)
        oa[6 * i + 5] = _level(l1 + t2)
        ob[6 * i] = _level(l2 + t0)
        ob[6 * i + 1] = _level(l2 + t1)
        ob[6 * i + 2] = _level(l2 + t2)
        ob[6 * i + 3] = _level(l3 + t0)
        ob[6 * i + 4] = _level(l3 + t1)
        ob[6 * i + 5] = _level(l3 + t2)


@kernel
def _row_i420(
    ya: np.ndarray,
    yb: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    oa: np.ndarray,
    ob: np.ndarray,
    coef: np.ndarray,
) -> None:
    """Two RGB rows from two Y rows and one U and one V row (I420)."""
    cy = coef[0]
    a0 = coef[1]
    b0 = coef[2]
    a1 = coef[3]
    b1 = coef[4]
    a2 = coef[5]
    b2 = coef[6]
    for i in range(ya.shape[0] // 2):
        uc = np.float32(u[i]) - np.float32(128.0)
        vc = np.float32(v[i]) - np.float32(128.0)
        t0 = _chroma(uc, vc, a0, b0)
        t1 = _chroma(uc, vc, a1, b1)
        t2 = _chroma(uc, vc, a2, b2)
        l0 = _luma(ya[2 * i], cy)
        l1 = _luma(ya[2 * i + 1], cy)
        l2 = _luma(yb[2 * i], cy)
        l3 = _luma(yb[2 * i + 1], cy)
        oa[6 * i] = _level(l0 + t0)
        oa[6 * i + 1] = _level(l0 + t1)
        oa[6 * i + 2] = _level(l0 + t2)
        oa[6 * i + 3] = _level(l1 + t0)
        oa[6 * i + 4] = _level(l1 + t1)
        oa[6 * i + 5] = _level(l1 + t2)
        ob[6 * i] = _level(l2 + t0)
        ob[6 * i + 1] = _level(l2 + t1)
        ob[6 * i + 2] = _level(l2 + t2)
        ob[6 * i + 3] = _level(l3 + t0)
        ob[6 * i + 4] = _level(l3 + t1)
        ob[6 * i + 5] = _level(l3 + t2)


@kernel
def _row_yuyv(row: np.ndarray, o: np.ndarray, coef: np.ndarray) -> None:
    """One RGB row from one packed Y0 U Y1 V row."""
    cy = coef[0]
    a0 = coef[1]
    b0 = coef[2]
    a1 = coef[3]
    b1 = coef[4]
    a2 = coef[5]
    b2 = coef[6]
    for i in range(o.shape[0] // 6):
        u = np.float32(row[4 * i + 1]) - np.float32(128.0)
        v = np.float32(row[4 * i + 3]) - np.float32(128.0)
        t0 = _chroma(u, v, a0, b0)
        t1 = _chroma(u, v, a1, b1)
        t2 = _chroma(u, v, a2, b2)
        l0 = _luma(row[4 * i], cy)
        l1 = _luma(row[4 * i + 2], cy)
        o[6 * i] = _level(l0 + t0)
        o[6 * i + 1] = _level(l0 + t1)
        o[6 * i + 2] = _level(l0 + t2)
        o[6 * i + 3] = _level(l1 + t0)
        o[6 * i + 4] = _level(l1 + t1)
        o[6 * i + 5] = _level(l1 + t2)


# Row chunks per frame for run_shared: enough that the helper thread can join late and still
# take a fair share, few enough that claiming costs nothing (1080p: 17 row pairs a chunk).
_CHUNKS = 32


@kernel
def _chunk_rows(chunk: int, n_chunks: int, n_rows: int) -> tuple[int, int]:
    """Rows [start, stop) of chunk number ``chunk``."""
    per = (n_rows + n_chunks - 1) // n_chunks
    return min(chunk * per, n_rows), min(chunk * per + per, n_rows)


@kernel
def _nv12_to_rgb(
    counter: np.ndarray,
    n_chunks: int,
    src: np.ndarray,
    y_stride: int,
    uv_offset: int,
    uv_stride: int,
    coef: np.ndarray,
    out: np.ndarray,
) -> None:
    """``src``: the frame's bytes, flat; ``out``: H x 3W uint8 (the RGB image's rows). Row
    pairs in chunks claimed from ``counter`` (run_shared)."""
    width = out.shape[1] // 3
    while True:
        chunk = claim_chunk(counter)
        if chunk >= n_chunks:
            break
        start, stop = _chunk_rows(chunk, n_chunks, out.shape[0] // 2)
        for j in range(start, stop):
            ya = 2 * j * y_stride
            yb = ya + y_stride
            c = uv_offset + j * uv_stride
            _row_pair_nv12(
                src[ya : ya + width],
                src[yb : yb + width],
                src[c : c + width],
                out[2 * j],
                out[2 * j + 1],
                coef,
            )
        chunk_done(counter)


@kernel
def _i420_to_rgb(
    counter: np.ndarray,
    n_chunks: int,
    src: np.ndarray,
    y_stride: int,
    u_offset: int,
    v_offset: int,
    c_stride: int,
    coef: np.ndarray,
    out: np.ndarray,
) -> None:
    """``src``: the frame's bytes, flat; ``out``: H x 3W uint8. Chunks as _nv12_to_rgb."""
    width = out.shape[1] // 3
    half = width // 2
    while True:
        chunk = claim_chunk(counter)
        if chunk >= n_chunks:
            break
        start, stop = _chunk_rows(chunk, n_chunks, out.shape[0] // 2)
        for j in range(start, stop):
            ya = 2 * j * y_stride
            yb = ya + y_stride
            u = u_offset + j * c_stride
            v = v_offset + j * c_stride
            _row_i420(
                src[ya : ya + width],
                src[yb : yb + width],
                src[u : u + half],
                src[v : v + half],
                out[2 * j],
                out[2 * j + 1],
                coef,
            )
        chunk_done(counter)


@kernel
def _yuyv_to_rgb(
    counter: np.ndarray,
    n_chunks: int,
    src: np.ndarray,
    stride: int,
    coef: np.ndarray,
    out: np.ndarray,
) -> None:
    """``src``: the frame's bytes, flat; ``out``: H x 3W uint8. Chunks as _nv12_to_rgb."""
    row_bytes = 2 * (out.shape[1] // 3)
    while True:
        chunk = claim_chunk(counter)
        if chunk >= n_chunks:
            break
        start, stop = _chunk_rows(chunk, n_chunks, out.shape[0])
        for j in range(start, stop):
            begin = j * stride
            _row_yuyv(src[begin : begin + row_bytes], out[j], coef)
        chunk_done(counter)


# --------------------------------------------------------------------------------------------
# NV12 -> tensor, fused


@kernel
def _tap_rgb(
    y: np.uint8,
    u: np.uint8,
    v: np.uint8,
    cy: np.float32,
    a0: np.float32,
    b0: np.float32,
    a1: np.float32,
    b1: np.float32,
    a2: np.float32,
    b2: np.float32,
) -> tuple[Any, Any, Any]:
    """The RGB levels (float32) of one pixel from its Y, U and V bytes: the RGB kernels'
    arithmetic, so the fused path sees the very levels ``yuv_to_rgb`` writes."""
    luma = _luma(y, cy)
    uc = np.float32(u) - np.float32(128.0)
    vc = np.float32(v) - np.float32(128.0)
    return (
        np.float32(_level(luma + _chroma(uc, vc, a0, b0))),
        np.float32(_level(luma + _chroma(uc, vc, a1, b1))),
        np.float32(_level(luma + _chroma(uc, vc, a2, b2))),
    )


@kernel
def _gather_taps(
    src: np.ndarray,
    uv16: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    shifts: np.ndarray,
    luma: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
) -> None:
    """Copy the bytes one tensor row reads into contiguous scratch, so the arithmetic that
    follows is a plain loop LLVM vectorises (scattered loads do not vectorise).

    ``rows`` = [Y row a, Y row b, chroma row a, chroma row b] as offsets into ``src`` (bytes)
    and ``uv16`` (the chroma plane as 16-bit words: one load per U, V pair; ``shifts`` = the
    bit offsets of U and V in a word); ``cols`` = [x0, x1, pair of x0, pair of x1] per
    tensor column. Tap k of 4 is (row a or b, column 0 or 1) = (k >> 1, k & 1); nearest
    (scratch of 1 tap) reads tap 0 only. Offsets are unsigned: numba then skips its
    negative-index wraparound.
    """
    ya = rows[0]
    yb = rows[1]
    ca = rows[2]
    cb = rows[3]
    us = shifts[0]
    vs = shifts[1]
    low = np.uint16(255)
    if luma.shape[0] == 1:
        for i in range(luma.shape[1]):
            luma[0, i] = src[ya + cols[0, i]]
            pair = uv16[ca + cols[2, i]]
            u[0, i] = (pair >> us) & low
            v[0, i] = (pair >> vs) & low
        return
    for i in range(luma.shape[1]):
        x0 = cols[0, i]
        x1 = cols[1, i]
        p0 = cols[2, i]
        p1 = cols[3, i]
        luma[0, i] = src[ya + x0]
        luma[1, i] = src[ya + x1]
        luma[2, i] = src[yb + x0]
        luma[3, i] = src[yb + x1]
        pair = uv16[ca + p0]
        u[0, i] = (pair >> us) & low
        v[0, i] = (pair >> vs) & low
        pair = uv16[ca + p1]
        u[1, i] = (pair >> us) & low
        v[1, i] = (pair >> vs) & low
        pair = uv16[cb + p0]
        u[2, i] = (pair >> us) & low
        v[2, i] = (pair >> vs) & low
        pair = uv16[cb + p1]
        u[3, i] = (pair >> us) & low
        v[3, i] = (pair >> vs) & low


@kernel
def _convert_taps(
    luma: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    wx: np.ndarray,
    fy: np.float32,
    coef: np.ndarray,
    gain: np.ndarray,
    bias: np.ndarray,
    row: np.ndarray,
) -> None:
    """row[c, i] = (RGB interpolated from the gathered taps)[c] * gain[c] + bias[c].

    Interpolation is image_to_tensor's: ``top = p + f (q - p)`` along x in each of the two
    rows, then ``top + fy (bottom - top)``; nearest (1 tap) takes tap 0 as is, which is what
    that formula gives with zero weights.
    """
    cy = coef[0]
    a0 = coef[1]
    b0 = coef[2]
    a1 = coef[3]
    b1 = coef[4]
    a2 = coef[5]
    b2 = coef[6]
    g0 = gain[0]
    g1 = gain[1]
    g2 = gain[2]
    o0 = bias[0]
    o1 = bias[1]
    o2 = bias[2]
    if luma.shape[0] == 1:
        for i in range(luma.shape[1]):
            p0, p1, p2 = _tap_rgb(luma[0, i], u[0, i], v[0, i], cy, a0, b0, a1, b1, a2, b2)
            row[0, i] = p0 * g0 + o0
            row[1, i] = p1 * g1 + o1
            row[2, i] = p2 * g2 + o2
        return
    for i in range(luma.shape[1]):
        f = wx[i]
        p0, p1, p2 = _tap_rgb(luma[0, i], u[0, i], v[0, i], cy, a0, b0, a1, b1, a2, b2)
        q0, q1, q2 = _tap_rgb(luma[1, i], u[1, i], v[1, i], cy, a0, b0, a1, b1, a2, b2)
        r0, r1, r2 = _tap_rgb(luma[2, i], u[2, i], v[2, i], cy, a0, b0, a1, b1, a2, b2)
        s0, s1, s2 = _tap_rgb(luma[3, i], u[3, i], v[3, i], cy, a0, b0, a1, b1, a2, b2)
        t0 = p0 + f * (q0 - p0)
        t1 = p1 + f * (q1 - p1)
        t2 = p2 + f * (q2 - p2)
        d0 = r0 + f * (s0 - r0)
        d1 = r1 + f * (s1 - r1)
        d2 = r2 + f * (s2 - r2)
        row[0, i] = (t0 + fy * (d0 - t0)) * g0 + o0
        row[1, i] = (t1 + fy * (d1 - t1)) * g1 + o1
        row[2, i] = (t2 + fy * (d2 - t2)) * g2 + o2


@kernel
def _store_row(
    out: np.ndarray,
    nhwc: bool,
    y: int,
    x_lo: int,
    row: np.ndarray,
    quantised: bool,
    lo: float,
    hi: float,
    zero: float,
) -> None:
    """Write row[c, i] to tensor (y, x_lo + i, c); integer outputs round half to even
    (np.rint), then add the zero point ``zero``, then saturate (ONNX QuantizeLinear: adding
    an odd zero point before rounding would move the ties). Indexing from 0 into row slices keeps
    the loops free of numba's negative-index checks, so they vectorise."""
    n = row.shape[1]
    if nhwc:
        pixels = out[y][x_lo : x_lo + n]
        for i in range(n):
            for c in range(3):
                value = row[c, i]
                if quantised:
                    value = min(max(np.rint(value) + zero, lo), hi)
                pixels[i, c] = value
        return
    for c in range(3):
        plane_row = out[c, y][x_lo : x_lo + n]
        if quantised:
            for i in range(n):
                plane_row[i] = min(max(np.rint(row[c, i]) + zero, lo), hi)
        else:
            for i in range(n):
                plane_row[i] = row[c, i]


@kernel
def _pad_run(
    out: np.ndarray, nhwc: bool, y: int, x_from: int, x_to: int, pad_store: np.ndarray
) -> None:
    """Fill tensor row y, columns [x_from, x_to), with the stored pad values."""
    for x in range(x_from, x_to):
        for c in range(3):
            if nhwc:
                out[y, x, c] = pad_store[c]
            else:
                out[c, y, x] = pad_store[c]


@kernel(parallel=True)
def _nv12_tensor(
    src: np.ndarray, uv16: np.ndarray, y_stride: int, uv_stride16: int, src_h: int, src_w: int,
    out: np.ndarray, nhwc: bool, mode: int, inv_x: float, inv_y: float,
    pad_x: int, pad_y: int, new_w: int, new_h: int,
    coef: np.ndarray, shifts: np.ndarray, gain: np.ndarray, bias: np.ndarray,
    pad_store: np.ndarray, quantised: bool, lo: float, hi: float, zero: float,
) -> None:  # fmt: skip
    """NV12 to one [3, H, W] (or ``nhwc`` [H, W, 3]) tensor item in one pass.

    ``src`` is the frame's bytes (Y rows ``y_stride`` apart), ``uv16`` its chroma plane as
    16-bit U, V words (rows ``uv_stride16`` words apart; ``shifts`` = the bit offsets of U
    and V in a word). Tensor channel c is ``rgb[c] * gain[c] + bias[c]`` (``coef`` already in
    the tensor's channel order). Rows outside the resized image and the columns beside it get
    ``pad_store``. Each tap is converted to RGB before interpolating (module docstring).
    Per tensor row: gather the taps' bytes, convert and interpolate (vectorised), store.
    """
    if nhwc:
        t_h = out.shape[0]
        t_w = out.shape[1]
    else:
        t_h = out.shape[1]
        t_w = out.shape[2]
    x_lo = max(0, pad_x)
    x_hi = max(x_lo, min(t_w, pad_x + new_w))
    y_lo = max(0, pad_y)
    y_hi = min(t_h, pad_y + new_h)
    n = x_hi - x_lo
    xi0 = np.empty(t_w, np.int64)
    xi1 = np.empty(t_w, np.int64)
    wx64 = np.empty(t_w, np.float64)
    _linear_taps(mode, src_w, inv_x, pad_x, new_w, xi0, xi1, wx64)
    yi0 = np.empty(t_h, np.int64)
    yi1 = np.empty(t_h, np.int64)
    wy64 = np.empty(t_h, np.float64)
    _linear_taps(mode, src_h, inv_y, pad_y, new_h, yi0, yi1, wy64)
    # Per content column: x0, x1 and the index of their U, V words in a chroma row.
    cols = np.empty((4, n), np.uint64)
    wx = np.empty(n, np.float32)
    for i in range(n):
        cols[0, i] = xi0[x_lo + i]
        cols[1, i] = xi1[x_lo + i]
        cols[2, i] = xi0[x_lo + i] >> 1
        cols[3, i] = xi1[x_lo + i] >> 1
        wx[i] = wx64[x_lo + i]
    n_taps = 1 if mode == 2 else 4
    n_blocks = (t_h + 7) // 8
    for block in prange(n_blocks):
        luma = np.empty((n_taps, n), np.uint8)
        u = np.empty((n_taps, n), np.uint8)
        v = np.empty((n_taps, n), np.uint8)
        row = np.empty((3, n), np.float32)
        rows = np.empty(4, np.uint64)
        for y in range(block * 8, min(t_h, block * 8 + 8)):
            if y < y_lo or y >= y_hi:
                _pad_run(out, nhwc, y, 0, t_w, pad_store)
                continue
            _pad_run(out, nhwc, y, 0, x_lo, pad_store)
            _pad_run(out, nhwc, y, x_hi, t_w, pad_store)
            rows[0] = yi0[y] * y_stride
            rows[1] = yi1[y] * y_stride
            rows[2] = (yi0[y] >> 1) * uv_stride16
            rows[3] = (yi1[y] >> 1) * uv_stride16
            _gather_taps(src, uv16, rows, cols, shifts, luma, u, v)
            _convert_taps(luma, u, v, wx, np.float32(wy64[y]), coef, gain, bias, row)
            _store_row(out, nhwc, y, x_lo, row, quantised, lo, hi, zero)


# --------------------------------------------------------------------------------------------
# Validation: turn whatever the camera gave into a flat uint8 array and plane offsets


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_dims(width: object, height: object, fmt: object) -> tuple[int, int, str]:
    w, h = _as_int("width", width), _as_int("height", height)
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {list(_FORMATS)}, got {fmt!r}")
    if w <= 0 or h <= 0:
        raise PreprocessError(f"the {fmt} frame has zero size ({w}x{h})")
    if fmt in ("NV12", "I420") and (w % 2 or h % 2):
        raise PreprocessError(
            f"a {fmt} frame must have an even width and height (its chroma covers 2x2 "
            f"blocks), got {w}x{h}"
        )
    if fmt == "YUYV" and w % 2:
        raise PreprocessError(
            f"a YUYV frame must have an even width (each U, V pair covers 2 pixels), got {w}x{h}"
        )
    return w, h, str(fmt)


def _as_uint8_array(buffer: object) -> np.ndarray:
    if isinstance(buffer, np.ndarray):
        array = buffer
    elif isinstance(buffer, (bytes, bytearray)):
        array = np.frombuffer(buffer, np.uint8)
    elif isinstance(buffer, memoryview):
        array = np.asarray(buffer)
    else:
        raise TypeError(
            "the frame buffer must be a numpy array, bytes, bytearray or memoryview, got "
            f"{type(buffer).__name__}"
        )
    if array.dtype != np.uint8:
        raise PreprocessError(f"the frame buffer must hold uint8 bytes, got dtype {array.dtype}")
    return array


def _frame(
    buffer: object, width: int, height: int, fmt: str, stride: int | None
) -> tuple[np.ndarray, int, int, int, int]:
    """(flat uint8 bytes, first-plane row stride, chroma offset, chroma row stride, V offset).

    Raises PreprocessError for a buffer that does not hold the frame (wrong length or shape,
    not uint8) or a stride shorter than a row.
    """
    array = _as_uint8_array(buffer)
    row_bytes = 2 * width if fmt == "YUYV" else width
    if array.ndim != 1:
        shape = (height, width, 2) if fmt == "YUYV" else (height * 3 // 2, width)
        if stride is not None:
            raise ValueError(
                "stride is for flat buffers; a 2-D frame array carries its own row stride"
            )
        if array.shape != shape:
            raise PreprocessError(
                f"a {width}x{height} {fmt} frame array must have shape {shape}, got {array.shape}"
            )
        inner = array.strides[1:] == ((2, 1) if fmt == "YUYV" else (1,))
        if array.flags.c_contiguous:
            array = array.reshape(-1)
        elif fmt != "I420" and inner and array.strides[0] >= row_bytes:
            # Padded rows (a crop of a wider buffer, a camera's aligned rows): read in place.
            stride = array.strides[0]
            span = (array.shape[0] - 1) * stride + row_bytes
            array = np.lib.stride_tricks.as_strided(array, (span,), (1,), writeable=False)
        else:
            array = np.ascontiguousarray(array).reshape(-1)
    elif array.strides[0] != 1:
        array = np.ascontiguousarray(array)
    stride = row_bytes if stride is None else _as_int("stride", stride)
    if stride < row_bytes:
        raise PreprocessError(
            f"the row stride ({stride} bytes) is shorter than a {width}-pixel {fmt} row "
            f"({row_bytes} bytes)"
        )
    if fmt == "I420" and stride % 2:
        raise PreprocessError(
            f"an I420 row stride must be even (the U and V rows take half of it), got {stride}"
        )
    if fmt == "NV12":
        offsets = (stride * height, stride, 0)
        full = stride * height * 3 // 2
        last_pad = stride - width
    elif fmt == "I420":
        c_stride = stride // 2
        u_offset = stride * height
        offsets = (u_offset, c_stride, u_offset + c_stride * (height // 2))
        full = stride * height + 2 * c_stride * (height // 2)
        last_pad = c_stride - width // 2
    else:
        offsets = (0, 0, 0)
        full = stride * height
        last_pad = stride - row_bytes
    if array.size not in (full, full - last_pad):
        with_stride = f" with a row stride of {stride} bytes" if stride != row_bytes else ""
        raise PreprocessError(
            f"a {width}x{height} {fmt} frame{with_stride} needs {full} bytes, got {array.size}"
        )
    if array.flags.writeable:
        # numba compiles read-only arrays (bytes, buffers) separately: pass every frame as
        # read-only, so one specialisation per kernel serves all (and warm-up compiles half).
        array = array.view()
        array.flags.writeable = False
    return array, stride, *offsets


def _compact_nv12(src: np.ndarray, width: int, height: int, stride: int) -> np.ndarray:
    """The frame's bytes without row padding (the last row's padding may be missing)."""
    data = np.zeros(stride * height * 3 // 2, np.uint8)
    data[: src.size] = src
    compact = np.ascontiguousarray(data.reshape(height * 3 // 2, stride)[:, :width]).reshape(-1)
    compact.flags.writeable = False  # as _frame passes every frame (one specialisation)
    return compact


def _rgb_out(out: np.ndarray | None, width: int, height: int) -> np.ndarray:
    if out is None:
        return np.empty((height, width, 3), np.uint8)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {(height, width, 3)}, got "
            f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}"
        )
    return out


def _check_order(channel_order: object) -> ChannelOrder:
    if channel_order == "RGB":
        return "RGB"
    if channel_order == "BGR":
        return "BGR"
    raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")


# --------------------------------------------------------------------------------------------
# Public wrappers


def yuv_to_rgb(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    fmt: YuvFormat,
    *,
    channel_order: ChannelOrder = "RGB",
    stride: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Convert one NV12, I420 or YUYV frame to an H x W x 3 uint8 RGB (or BGR) image.

    BT.601 video range with OpenCV's coefficients, within one level of ``cv2.cvtColor``
    (module docstring). ``buffer`` is flat bytes or OpenCV's 2-D layout; ``stride`` is the
    padded row length in bytes of a flat buffer (Y rows for NV12/I420, packed rows for YUYV).
    ``out`` may be a preallocated C-contiguous H x W x 3 uint8 array.

    Raises PreprocessError for a zero size, an odd width (or height, for NV12 and I420), a
    buffer that is not uint8 or whose length or shape does not fit the frame (the message
    gives expected and got), or a stride shorter than a row; ValueError for an unknown
    ``fmt`` or ``channel_order`` or a wrong ``out``; TypeError for a wrong argument type.

    Example: ``rgb = yuv_to_rgb(frame_bytes, 1920, 1080, "NV12")``.
    """
    w, h, form = _check_dims(width, height, fmt)
    coef = _COEF[_check_order(channel_order)]
    src, y_stride, c_offset, c_stride, v_offset = _frame(buffer, w, h, form, stride)
    result = _rgb_out(out, w, h)
    rows = result.reshape(h, 3 * w)
    # Small frames are not worth waking the helper for (a 640x480 frame takes about 0.2 ms).
    chunks = _CHUNKS if w * h >= 1280 * 720 else 1
    if form == "NV12":
        run_shared(_nv12_to_rgb, chunks, src, y_stride, c_offset, c_stride, coef, rows)
    elif form == "I420":
        run_shared(_i420_to_rgb, chunks, src, y_stride, c_offset, v_offset, c_stride, coef, rows)
    else:
        run_shared(_yuyv_to_rgb, chunks, src, y_stride, coef, rows)
    return result


def nv12_to_rgb(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    *,
    channel_order: ChannelOrder = "RGB",
    stride: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``yuv_to_rgb(..., "NV12")``. Example: ``rgb = nv12_to_rgb(buf, 1280, 720)``."""
    return yuv_to_rgb(
        buffer, width, height, "NV12", channel_order=channel_order, stride=stride, out=out
    )


def i420_to_rgb(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    *,
    channel_order: ChannelOrder = "RGB",
    stride: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``yuv_to_rgb(..., "I420")``. Example: ``rgb = i420_to_rgb(buf, 640, 480)``."""
    return yuv_to_rgb(
        buffer, width, height, "I420", channel_order=channel_order, stride=stride, out=out
    )


def yuyv_to_rgb(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    *,
    channel_order: ChannelOrder = "RGB",
    stride: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``yuv_to_rgb(..., "YUYV")`` (YUY2). Example: ``rgb = yuyv_to_rgb(buf, 640, 480)``."""
    return yuv_to_rgb(
        buffer, width, height, "YUYV", channel_order=channel_order, stride=stride, out=out
    )


def _per_channel(name: str, values: Sequence[float]) -> list[float]:
    floats = [float(v) for v in values]
    if len(floats) == 1:
        floats *= 3
    if len(floats) != 3:
        raise ValueError(f"{name} needs 1 or 3 values, got {len(floats)}")
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} values must be finite, got {floats}")
    return floats


def nv12_to_tensor(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    size: tuple[int, int],
    *,
    resize: ResizeMode = "bilinear",
    crop: CropMode = "none",
    pad: float = 114.0,
    channel_order: ChannelOrder = "RGB",
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    layout: Layout = "NCHW",
    dtype: OutDType = "float32",
    quant_scale: float = 1.0,
    zero_point: int = 0,
    stride: int | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Geometry]:
    """An NV12 frame straight to a model's input tensor: what ``image_to_tensor(nv12_to_rgb(
    buffer, ...), size, ...)`` gives, in one pass with no RGB image in between.

    ``size`` is the tensor's (width, height); ``resize``, ``crop``, ``pad`` and the
    normalisation (``(pixel * scale - mean[c]) / std[c]``, then ``round_half_even(v /
    quant_scale) + zero_point`` clipped for uint8/int8) mean what they mean for
    ``edge_sdk.kernels.image.image_to_tensor``. Fused for ``"bilinear"``,
    ``"bilinear_align_corners"`` and ``"nearest"`` with every crop (none, center,
    letterbox); ``"area"`` is computed in two steps (``nv12_to_rgb``, then
    ``image_to_tensor``). float16 tensors are computed in float32 and cast (one extra pass over
    the tensor, not over the frame). ``out`` may be a preallocated ``[1, ...]`` tensor.
    Returns the tensor (``[1, 3, H, W]`` or ``[1, H, W, 3]``) and the source-to-tensor
    Geometry.

    Raises PreprocessError for a frame that does not fit its buffer (see ``yuv_to_rgb``);
    ValueError for a bad option, size, mean/std or ``out``.

    Example: ``tensor, geometry = nv12_to_tensor(buf, 1920, 1080, (640, 640), crop="letterbox")``.
    """
    w, h, _ = _check_dims(width, height, "NV12")
    order = _check_order(channel_order)
    if resize == "area":
        rgb = nv12_to_rgb(buffer, w, h, channel_order=order, stride=stride)
        return image_to_tensor(
            rgb, size, resize=resize, crop=crop, pad=pad, source_order=order,
            channel_order=order, scale=scale, mean=mean, std=std, layout=layout,
            dtype=dtype, quant_scale=quant_scale, zero_point=zero_point, out=out,
        )  # fmt: skip
    mode = _FUSED_RESIZE.get(resize)
    if mode is None:
        raise ValueError(f"resize must be one of {[*_FUSED_RESIZE, 'area']}, got {resize!r}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    out_dtype = _DTYPES.get(dtype)
    if out_dtype is None:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    geometry = plan_geometry(w, h, size, crop)  # validates size and crop
    means = _per_channel("mean", mean)
    stds = _per_channel("std", std)
    if any(s == 0.0 for s in stds):
        raise ValueError(f"std values must not be 0, got {stds}")
    if not (math.isfinite(scale) and math.isfinite(pad)):
        raise ValueError(f"scale and pad must be finite, got scale={scale!r}, pad={pad!r}")
    quantised = dtype in ("uint8", "int8")
    lo, hi = 0.0, 0.0
    if quantised:
        if not (math.isfinite(quant_scale) and quant_scale > 0):
            raise ValueError(f"quant_scale must be > 0, got {quant_scale!r}")
        lo, hi = (-128.0, 127.0) if dtype == "int8" else (0.0, 255.0)
        if not (isinstance(zero_point, (int, np.integer)) and lo <= zero_point <= hi):
            raise ValueError(f"zero_point must be an int in {lo:.0f}..{hi:.0f} for {dtype}")
    src, y_stride, uv_offset, uv_stride, _ = _frame(buffer, w, h, "NV12", stride)
    if y_stride % 2:
        # The chroma is read as 16-bit U, V words, so its rows must start at even offsets:
        # repack the (rare) odd-stride frame without padding.
        src = _compact_nv12(src, w, h, y_stride)
        y_stride, uv_offset, uv_stride = w, w * h, w
    # The chroma plane as 16-bit words (its length is even: even rows and row stride).
    uv_bytes = (h // 2 - 1) * uv_stride + w
    uv16 = src[uv_offset : uv_offset + uv_bytes].view(np.uint16)

    t_w, t_h = geometry.tensor_width, geometry.tensor_height
    shape = (1, 3, t_h, t_w) if layout == "NCHW" else (1, t_h, t_w, 3)
    if out is None:
        out = np.empty(shape, out_dtype)
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    elif out.shape != shape or out.dtype != out_dtype:
        raise ValueError(
            f"out must be a {dtype} array of shape {shape}, got {out.dtype} {out.shape}"
        )
    # value = rgb * gain + bias, with the quantisation step folded in: image_to_tensor's
    # arithmetic, so both paths round alike. The zero point is added after rounding.
    divisor = quant_scale if quantised else 1.0
    zero = float(zero_point) if quantised else 0.0
    gain = np.array([scale / s / divisor for s in stds], np.float32)
    bias = np.array([-m / s / divisor for m, s in zip(means, stds, strict=True)])
    pads = np.array([(pad * scale - m) / s / divisor for m, s in zip(means, stds, strict=True)])
    if quantised:
        pad_store = np.clip(np.rint(pads) + zero, lo, hi).astype(out_dtype)
        target = out[0]
    else:
        pad_store = pads.astype(np.float32)
        # numba has no float16: fill a float32 item, then cast (round to nearest even).
        target = out[0] if dtype == "float32" else np.empty(shape[1:], np.float32)
    new_w = round(geometry.scale_x * w)
    new_h = round(geometry.scale_y * h)
    _nv12_tensor(
        src, uv16, y_stride, uv_stride // 2, h, w,
        target, layout == "NHWC", mode, 1.0 / geometry.scale_x, 1.0 / geometry.scale_y,
        int(geometry.pad_x), int(geometry.pad_y), new_w, new_h,
        _COEF[order], _UV_SHIFTS, gain, bias.astype(np.float32), pad_store, quantised, lo, hi,
        zero,
    )  # fmt: skip
    if dtype == "float16":
        out[0] = target
    return out, geometry


# --------------------------------------------------------------------------------------------
# References (plain NumPy, exact integer arithmetic; the tests compare the kernels to them)


def yuv_to_rgb_reference(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    fmt: YuvFormat,
    *,
    channel_order: ChannelOrder = "RGB",
    stride: int | None = None,
) -> np.ndarray:
    """OpenCV's fixed-point BT.601 conversion, step by step (equal to ``cv2.cvtColor``)."""
    w, h, form = _check_dims(width, height, fmt)
    src, y_stride, c_offset, c_stride, v_offset = _frame(buffer, w, h, form, stride)
    data = np.concatenate([src, np.zeros(y_stride, np.uint8)])  # room for a short last row

    def plane(offset: int, rows: int, row_stride: int, cols: int) -> np.ndarray:
        return data[offset : offset + rows * row_stride].reshape(rows, row_stride)[:, :cols]

    if form == "YUYV":
        packed = plane(0, h, y_stride, 2 * w).reshape(h, w // 2, 4)
        y = packed[:, :, [0, 2]].reshape(h, w)
        u = np.repeat(packed[:, :, 1], 2, axis=1)
        v = np.repeat(packed[:, :, 3], 2, axis=1)
    else:
        y = plane(0, h, y_stride, w)
        if form == "NV12":
            uv = plane(c_offset, h // 2, c_stride, w)
            u_half, v_half = uv[:, 0::2], uv[:, 1::2]
        else:
            u_half = plane(c_offset, h // 2, c_stride, w // 2)
            v_half = plane(v_offset, h // 2, c_stride, w // 2)
        u = np.repeat(np.repeat(u_half, 2, axis=0), 2, axis=1)
        v = np.repeat(np.repeat(v_half, 2, axis=0), 2, axis=1)
    luma = np.maximum(y.astype(np.int64) - 16, 0) * _CY
    uc = u.astype(np.int64) - 128
    vc = v.astype(np.int64) - 128
    half = 1 << (_SHIFT - 1)
    r = (luma + _CVR * vc + half) >> _SHIFT
    g = (luma + _CVG * vc + _CUG * uc + half) >> _SHIFT
    b = (luma + _CUB * uc + half) >> _SHIFT
    channels = (r, g, b) if channel_order == "RGB" else (b, g, r)
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def nv12_to_tensor_reference(
    buffer: np.ndarray | bytes | bytearray | memoryview,
    width: int,
    height: int,
    size: tuple[int, int],
    *,
    resize: ResizeMode = "bilinear",
    crop: CropMode = "none",
    pad: float = 114.0,
    channel_order: ChannelOrder = "RGB",
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    layout: Layout = "NCHW",
    dtype: OutDType = "float32",
    quant_scale: float = 1.0,
    zero_point: int = 0,
    stride: int | None = None,
) -> tuple[np.ndarray, Geometry]:
    """The two-step definition of ``nv12_to_tensor``: the reference RGB image, then the
    reference resize and normalisation of edge_sdk.kernels.image (float64)."""
    rgb = yuv_to_rgb_reference(buffer, width, height, "NV12", stride=stride)
    return image_to_tensor_reference(
        rgb, size, resize=resize, crop=crop, pad=pad, source_order="RGB",
        channel_order=channel_order, scale=scale, mean=mean, std=std, layout=layout,
        dtype=dtype, quant_scale=quant_scale, zero_point=zero_point,
    )  # fmt: skip


def warmup() -> None:
    """Compile every specialisation used in practice: each layout's RGB kernel (frames are
    always passed read-only, so bytes and arrays share one) and the fused tensor kernel for
    each output dtype (float16 is computed in float32)."""
    w, h = 4, 2
    sizes: tuple[tuple[YuvFormat, int], ...] = (("NV12", 12), ("I420", 12), ("YUYV", 16))
    for fmt, n in sizes:
        frame = np.full(n, 128, np.uint8)
        yuv_to_rgb(frame, w, h, fmt)
    nv12 = np.full(w * h * 3 // 2, 128, np.uint8)
    for dtype in ("float32", "uint8", "int8"):
        nv12_to_tensor(nv12, w, h, (2, 2), dtype=dtype)
    # Frames this small take one chunk: compile what sharing a large frame adds too.
    share_warmup()
