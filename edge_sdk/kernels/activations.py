"""Activations and selections on model outputs: softmax, sigmoid, top-k, segmentation argmax.

Conventions:

- Results are float32. Inputs may be float16, float32 or float64; softmax and sigmoid compute
  in float32 (float16 and float64 inputs are converted first), top_k and softmax_top_k select on
  the input's own values (converting float64 to float32 could merge two scores and change their
  order).
- Softmax subtracts the maximum first (so no exp overflows) and divides by the sum.
- Ties rank the lower index first (a stable descending order), in top_k, softmax_top_k and
  segmentation_argmax (the lowest class wins, as ``np.argmax``).
- A model output holding NaN or ±inf is a broken model or input, not a probability: softmax,
  softmax_top_k, top_k and segmentation_argmax raise ``PostprocessError`` naming the first bad
  element. The kernels detect it cheaply during their max pass by accumulating ``v - v`` (0 for
  every finite v, NaN for NaN and ±inf), which needs no extra read and no branch. sigmoid raises
  for NaN only (sigmoid(±inf) is 1 or 0).

exp: numba's ``math.exp`` is a scalar libm call (no SVML in this build), so the kernels use their
own float32 exp for arguments <= 0, written so LLVM vectorises it without fastmath: Cody-Waite
reduction ``t = k ln2 + r`` (``ln2`` split in a 9-bit head and a tail, so ``k * head`` is
exact), a degree-7 Taylor polynomial for ``exp(r)`` on ``|r| <= ln2 / 2`` (truncation error
below 5e-9, under float32's 6e-8 epsilon) and ``2**k`` built from its exponent bits. Measured
against float64 ``np.exp``: within 2 float32 ulp. Results below FLT_MIN (``t < -87.34``) are
flushed to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_sdk.errors import PostprocessError
from edge_sdk.kernels._jit import kernel, prange

__all__ = [
    "segmentation_argmax",
    "segmentation_argmax_reference",
    "sigmoid",
    "sigmoid_reference",
    "softmax",
    "softmax_reference",
    "softmax_top_k",
    "softmax_top_k_reference",
    "top_k",
    "top_k_reference",
    "warmup",
]

_FLOATS = (np.float16, np.float32, np.float64)
# Selection works on blocks of this many values: the best k blocks (by their maxima) hold the
# best k values, so only k blocks are searched element by element.
_BLOCK = 16
# segmentation_argmax walks the pixels in chunks of this many (its prange unit with threads > 1).
_SEG_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# Kernel helpers


@kernel
def _exp_inplace(a: np.ndarray, bits: np.ndarray) -> None:
    """a[i] = exp(a[i]) for float32 a[i] <= 0; bits: int32 scratch at least as long as a.

    Two loops, each vectorisable: the polynomial and the exponent bits, then the product.
    """
    n = a.shape[0]
    lo = np.float32(-87.33654)  # log(FLT_MIN): below this the result is flushed to 0
    log2e = np.float32(1.4426950408889634)
    ln2_hi = np.float32(0.693359375)  # 355 / 512: k * ln2_hi is exact for |k| <= 2**15
    ln2_lo = np.float32(-2.1219444005469057e-04)  # ln(2) - ln2_hi
    magic = np.float32(12582912.0)  # 1.5 * 2**23: (v + magic) - magic rounds v to an integer
    for i in range(n):
        t = a[i]
        keep = t >= lo
        t = t if keep else lo
        kf = (t * log2e + magic) - magic
        r = (t - kf * ln2_hi) - kf * ln2_lo
        p = np.float32(1.0 / 5040.0)
        p = p * r + np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        a[i] = p * r + np.float32(1.0)
        bits[i] = ((np.int32(kf) + np.int32(127)) << 23) if keep else np.int32(0)
    scale = bits[:n].view(np.float32)
    for i in range(n):
        a[i] = a[i] * scale[i]


@kernel
def _sum_f32(a: np.ndarray, n: int) -> Any:
    """Sum of a[:n] with eight accumulators (independent chains; a fixed, documented order)."""
    z = np.float32(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    end = n - n % 8
    for i in range(0, end, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(end, n):
        s += a[i]
    return s


@kernel
def _max_finite(x: np.ndarray) -> tuple[Any, Any]:
    """(max of x, sum of x - x): the sum is 0 iff every value is finite. len(x) >= 1."""
    n = x.shape[0]
    z = x[0] - x[0]
    a0 = a1 = a2 = a3 = x[0]
    f0 = f1 = f2 = f3 = z
    end = n - n % 4
    for i in range(0, end, 4):
        v0 = x[i]
        v1 = x[i + 1]
        v2 = x[i + 2]
        v3 = x[i + 3]
        a0 = v0 if v0 > a0 else a0
        a1 = v1 if v1 > a1 else a1
        a2 = v2 if v2 > a2 else a2
        a3 = v3 if v3 > a3 else a3
        f0 += v0 - v0
        f1 += v1 - v1
        f2 += v2 - v2
        f3 += v3 - v3
    m = max(a0, a1, a2, a3)
    f = (f0 + f1) + (f2 + f3)
    for i in range(end, n):
        v = x[i]
        m = v if v > m else m
        f += v - v
    return m, f


@kernel
def _block_maxima(x: np.ndarray, bm: np.ndarray) -> Any:
    """bm[b] = max of x[16 b : 16 b + 16]; returns the sum of x - x (0 iff all finite)."""
    n = x.shape[0]
    nb = n // 16
    z = x[0] - x[0]
    f0 = f1 = f2 = f3 = z
    for b in range(nb):
        i = b * 16
        a0 = max(x[i], x[i + 8])
        a1 = max(x[i + 1], x[i + 9])
        a2 = max(x[i + 2], x[i + 10])
        a3 = max(x[i + 3], x[i + 11])
        a4 = max(x[i + 4], x[i + 12])
        a5 = max(x[i + 5], x[i + 13])
        a6 = max(x[i + 6], x[i + 14])
        a7 = max(x[i + 7], x[i + 15])
        bm[b] = max(a0, a1, a2, a3, a4, a5, a6, a7)
        f0 += ((x[i] - x[i]) + (x[i + 4] - x[i + 4])) + (
            (x[i + 8] - x[i + 8]) + (x[i + 12] - x[i + 12])
        )
        f1 += ((x[i + 1] - x[i + 1]) + (x[i + 5] - x[i + 5])) + (
            (x[i + 9] - x[i + 9]) + (x[i + 13] - x[i + 13])
        )
        f2 += ((x[i + 2] - x[i + 2]) + (x[i + 6] - x[i + 6])) + (
            (x[i + 10] - x[i + 10]) + (x[i + 14] - x[i + 14])
        )
        f3 += ((x[i + 3] - x[i + 3]) + (x[i + 7] - x[i + 7])) + (
            (x[i + 11] - x[i + 11]) + (x[i + 15] - x[i + 15])
        )
    f = (f0 + f1) + (f2 + f3)
    if n > nb * 16:
        m = x[nb * 16]
        for i in range(nb * 16, n):
            v = x[i]
            m = v if v > m else m
            f += v - v
        bm[nb] = m
    return f


@kernel
def _insert(values: np.ndarray, indices: np.ndarray, count: int, k: int, v: Any, i: int) -> int:
    """Insert (v, i) into the descending lists values/indices holding ``count`` entries (at
    most k kept). Equal values stay in arrival order: callers feed indices in increasing order,
    so ties rank the lower index first. Returns the new count."""
    if count == k:
        if not v > values[k - 1]:
            return count
        q = k - 1
    else:
        q = count
        count += 1
    while q > 0 and values[q - 1] < v:
        values[q] = values[q - 1]
        indices[q] = indices[q - 1]
        q -= 1
    values[q] = v
    indices[q] = i
    return count


@kernel
def _select_top(
    x: np.ndarray,
    k: int,
    bm: np.ndarray,
    blk_val: np.ndarray,
    blk_idx: np.ndarray,
    top_val: np.ndarray,
    top_idx: np.ndarray,
) -> int:
    """The best k of x (descending, ties by lower index) into top_val/top_idx, given the block
    maxima bm. Returns 0 (x finite) or 1 (x holds NaN or ±inf: nothing selected)."""
    if _block_maxima(x, bm) != 0:
        return 1
    n = x.shape[0]
    nblocks = (n + 15) // 16
    kb = min(k, nblocks)
    # The best k values lie in the k blocks with the best maxima (a block outside them has k
    # better blocks, each holding a better value), with ties broken by block index.
    count = 0
    for b in range(nblocks):
        count = _insert(blk_val, blk_idx, count, kb, bm[b], b)
    # Visit the chosen blocks in index order, so equal values arrive lowest index first.
    for a in range(1, kb):
        b0 = blk_idx[a]
        q = a
        while q > 0 and blk_idx[q - 1] > b0:
            blk_idx[q] = blk_idx[q - 1]
            q -= 1
        blk_idx[q] = b0
    count = 0
    for a in range(kb):
        start = blk_idx[a] * 16
        for i in range(start, min(n, start + 16)):
            count = _insert(top_val, top_idx, count, k, x[i], i)
    return 0


# --------------------------------------------------------------------------------------------
# Kernels


@kernel
def _softmax_last(x: np.ndarray, out: np.ndarray) -> int:
    """Softmax of each row of float32 x [rows, n] into out. Returns the first row holding a
    non-finite value, or -1."""
    rows, n = x.shape
    bits = np.empty(n, np.int32)
    for r in range(rows):
        m, f = _max_finite(x[r])
        if f != 0:
            return r
        o = out[r]
        for i in range(n):
            o[i] = x[r, i] - m
        _exp_inplace(o, bits)
        s = _sum_f32(o, n)
        for i in range(n):
            o[i] = o[i] / s
    return -1


@kernel
def _softmax_mid(x: np.ndarray, out: np.ndarray) -> int:
    """Softmax over axis 1 of float32 x [outer, n, inner] (inner > 1), walking rows of inner
    contiguous values. Returns the first outer index holding a non-finite value, or -1."""
    outer, n, inner = x.shape
    m = np.empty(inner, np.float32)
    f = np.empty(inner, np.float32)
    s = np.empty(inner, np.float32)
    bits = np.empty(inner, np.int32)
    for o in range(outer):
        for i in range(inner):
            m[i] = x[o, 0, i]
            f[i] = np.float32(0.0)
        for c in range(n):
            for i in range(inner):
                v = x[o, c, i]
                m[i] = v if v > m[i] else m[i]
                f[i] += v - v
        bad = np.float32(0.0)
        for i in range(inner):
            bad += f[i]
        if bad != 0:
            return o
        for i in range(inner):
            s[i] = np.float32(0.0)
        for c in range(n):
            row = out[o, c]
            for i in range(inner):
                row[i] = x[o, c, i] - m[i]
            _exp_inplace(row, bits)
            for i in range(inner):
                s[i] += row[i]
        for c in range(n):
            for i in range(inner):
                out[o, c, i] = out[o, c, i] / s[i]
    return -1


@kernel
def _sigmoid(x: np.ndarray, out: np.ndarray) -> int:
    """out = 1 / (1 + exp(-x)) for float32 x (1-D), as exp(-|x|) so no exp overflows.
    Returns how many x are NaN."""
    n = x.shape[0]
    chunk = 4096
    bits = np.empty(chunk, np.int32)
    nans = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        o = out[start:stop]
        for i in range(start, stop):
            v = x[i]
            nans += np.isnan(v)
            o[i - start] = -abs(v)
        _exp_inplace(o, bits)
        one = np.float32(1.0)
        for i in range(start, stop):
            e = o[i - start]
            r = one / (one + e)
            o[i - start] = r if x[i] >= 0 else e * r
    return nans


@kernel
def _top_k_rows(x: np.ndarray, n: int, k: int, top_idx: np.ndarray, top_val: np.ndarray) -> int:
    """The best k of each row of n values of the flat x (descending, ties by lower index) into
    the flat top_idx/top_val (k per row). Returns the first row holding a non-finite value, or
    -1. Flat 1-D arguments spare the wrapper a reshape on the common single-row call."""
    rows = x.shape[0] // n
    bm = np.empty((n + 15) // 16, x.dtype)
    blk_val = np.empty(k, x.dtype)
    blk_idx = np.empty(k, np.int64)
    for r in range(rows):
        row = x[r * n : (r + 1) * n]
        out_idx = top_idx[r * k : (r + 1) * k]
        out_val = top_val[r * k : (r + 1) * k]
        if _select_top(row, k, bm, blk_val, blk_idx, out_val, out_idx) != 0:
            return r
    return -1


@kernel
def _softmax_top_k_rows(
    x: np.ndarray, n: int, k: int, top_idx: np.ndarray, top_prob: np.ndarray
) -> int:
    """The k most probable classes of each row of n logits of the flat x and their softmax
    probabilities: one pass for the block maxima (and finiteness), a selection within the best
    k blocks, one exp-and-sum pass. Returns the first non-finite row, or -1."""
    rows = x.shape[0] // n
    bm = np.empty((n + 15) // 16, x.dtype)
    blk_val = np.empty(k, x.dtype)
    blk_idx = np.empty(k, np.int64)
    top_val = np.empty(k, x.dtype)
    e = np.empty(n, np.float32)
    bits = np.empty(n, np.int32)
    for r in range(rows):
        row = x[r * n : (r + 1) * n]
        out_idx = top_idx[r * k : (r + 1) * k]
        if _select_top(row, k, bm, blk_val, blk_idx, top_val, out_idx) != 0:
            return r
        m = top_val[0]
        # The same float32 steps as softmax(), so the probabilities equal its values.
        for i in range(n):
            e[i] = np.float32(row[i] - m)
        _exp_inplace(e, bits)
        s = _sum_f32(e, n)
        for j in range(k):
            top_prob[r * k + j] = e[out_idx[j]] / s
    return -1


@kernel(parallel=True)
def _argmax_classes(x: np.ndarray, out: np.ndarray, chunk: int) -> int:
    """out[p] = the first c maximising x[c, p] for x [classes, pixels]. Pixels go in chunks
    (the parallel unit) whose running maximum and class (int32) stay in L1 while the classes
    are walked outer, so each read is a contiguous run of one class plane; out (uint8 or
    int32) is written once per chunk. Measured on [21, 256 * 256] float32: 5x faster than
    selecting straight into a uint8 out (mixed widths defeat the vectoriser). Returns the number
    of chunks holding a non-finite value (0: all finite)."""
    classes, pixels = x.shape
    nchunks = (pixels + chunk - 1) // chunk
    bad = np.zeros(nchunks, np.int64)
    for b in prange(nchunks):
        start = b * chunk
        stop = min(pixels, start + chunk)
        size = stop - start
        m = np.empty(size, x.dtype)
        f = np.empty(size, x.dtype)
        best = np.empty(size, np.int32)
        for q in range(size):
            v = x[0, start + q]
            m[q] = v
            f[q] = v - v
            best[q] = 0
        for c in range(1, classes):
            row = x[c, start:stop]
            ci = np.int32(c)
            for q in range(size):
                v = row[q]
                better = v > m[q]
                m[q] = v if better else m[q]
                best[q] = ci if better else best[q]
                f[q] += v - v
        total = f[0] - f[0]
        for q in range(size):
            out[start + q] = best[q]
            total += f[q]
        bad[b] = total != 0
    return int(bad.sum())


# --------------------------------------------------------------------------------------------
# References (plain NumPy, for the tests)


def softmax_reference(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Softmax in float64 (max subtracted), returned as float32."""
    v = np.asarray(x, dtype=np.float64)
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)  # type: ignore[no-any-return]


def sigmoid_reference(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-v))).astype(np.float32)


def top_k_reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A full stable sort, descending: ties keep the lower index first."""
    order = np.argsort(-np.asarray(scores), axis=-1, kind="stable")[..., :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=-1)


def softmax_top_k_reference(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices, _ = top_k_reference(logits, k)
    probabilities = softmax_reference(logits, axis=-1)
    return indices, np.take_along_axis(probabilities, indices, axis=-1)


def segmentation_argmax_reference(logits: np.ndarray) -> np.ndarray:
    v = logits[0] if logits.ndim == 4 else logits
    dtype = np.uint8 if v.shape[0] <= 256 else np.int32
    return np.argmax(v, axis=0).astype(dtype)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Public wrappers


def _nonfinite_error(values: np.ndarray, what: str) -> PostprocessError:
    """The error for a model output holding NaN or ±inf, naming the first bad element."""
    bad = ~np.isfinite(values)
    flat = int(np.flatnonzero(bad)[0])
    index = tuple(int(i) for i in np.unravel_index(flat, values.shape))
    value = values.reshape(-1)[flat]
    kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    return PostprocessError(
        f"model output contains {kind} at index {index} ({int(bad.sum())} non-finite value(s) "
        f"in the {what} input of shape {values.shape}): the model or its input is broken"
    )


def _float_input(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be an ndarray, got {type(x).__name__}")
    if x.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float16, float32 or float64, got {x.dtype}")
    return x


def _float32_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be an ndarray, got {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != shape:
        raise ValueError(
            f"out must be a float32 array of shape {shape}, got {out.dtype} {out.shape}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def softmax(x: np.ndarray, *, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax along ``axis`` (numerically stable: the maximum is subtracted first), float32.

    Raises ``PostprocessError`` if ``x`` holds NaN or ±inf, or has no value along ``axis``;
    ``TypeError``/``ValueError`` for a non-float ``x``, a bad ``axis`` or ``out``.

    Example: ``softmax(np.array([1.0, 1.0], np.float32))`` -> [0.5, 0.5].
    """
    x = _float_input(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {x.ndim} dimension(s)")
    axis = int(axis) % x.ndim
    result = _float32_out(out, x.shape)
    n = x.shape[axis]
    if n == 0:
        raise PostprocessError(
            f"softmax needs at least one value along axis {axis}, got shape {x.shape}"
        )
    if x.size == 0:
        return result
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
    if inner == 1:
        bad = _softmax_last(x32.reshape(outer, n), result.reshape(outer, n))
    else:
        bad = _softmax_mid(x32.reshape(outer, n, inner), result.reshape(outer, n, inner))
    if bad >= 0:
        raise _nonfinite_error(x, "softmax")
    return result


def sigmoid(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, float32, without overflow for large ``|x|``.

    Raises ``PostprocessError`` if ``x`` holds NaN (±inf give 1 and 0); ``TypeError`` or
    ``ValueError`` for a non-float ``x`` or a wrong ``out``.

    Example: ``sigmoid(np.array([0.0], np.float32))`` -> [0.5].
    """
    x = _float_input(x, "x")
    result = _float32_out(out, x.shape)
    if x.size == 0:
        return result
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if _sigmoid(x32.reshape(-1), result.reshape(-1)):
        raise _nonfinite_error(np.where(np.isinf(x), 0, x), "sigmoid")
    return result


def _selection_input(scores: object, k: object, name: str) -> np.ndarray:
    """Validate scores/logits and k; return the values as a C-contiguous float32/float64 array
    (the checks are ordered cheapest first: this sits on a path measured in microseconds)."""
    if type(scores) is not np.ndarray:
        scores = _float_input(scores, name)  # raises unless an ndarray subclass
    assert isinstance(scores, np.ndarray)
    if scores.dtype.char not in ("f", "d", "e"):
        _float_input(scores, name)  # raises
    ndim = scores.ndim
    if ndim not in (1, 2):
        raise PostprocessError(
            f"{name} must be 1-D [classes] or 2-D [batch, classes], got shape {scores.shape}"
        )
    n = scores.shape[-1]
    if n == 0:
        raise PostprocessError(f"{name} has no classes (shape {scores.shape})")
    if type(k) is not int and (not isinstance(k, (int, np.integer)) or isinstance(k, bool)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of classes), got {k}")
    if scores.dtype.char == "e":
        return scores.astype(np.float32)  # numba has no float16; the conversion is exact
    if not scores.flags.c_contiguous:
        return np.ascontiguousarray(scores)
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best scores, descending, ties ranked by lower index: (indices int64, values).

    ``scores`` is 1-D [classes] or 2-D [batch, classes]; results are [k] or [batch, k]. Values
    keep the dtype of ``scores``. Only k blocks of 16 are searched element by element; nothing
    is sorted in full.

    Raises ``PostprocessError`` for NaN/±inf scores or a wrong rank; ``ValueError`` unless
    1 <= k <= classes.

    Example: ``top_k(np.array([0.1, 0.7, 0.2], np.float32), 2)`` -> ([1, 2], [0.7, 0.2]).
    """
    x = _selection_input(scores, k, "scores")
    k = int(k)
    shape = (k,) if x.ndim == 1 else (x.shape[0], k)
    indices = np.empty(shape, np.int64)
    values = np.empty(shape, x.dtype)
    flat = x if x.ndim == 1 else x.reshape(-1)
    if _top_k_rows(flat, x.shape[-1], k, indices.reshape(-1), values.reshape(-1)) >= 0:
        raise _nonfinite_error(scores, "top_k")
    if scores.dtype != x.dtype:  # float16 scores: return their own values
        values = values.astype(scores.dtype)
    return indices, values


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes and their softmax probabilities, without a softmax over
    all classes in a separate array or a full sort: (indices int64, probabilities float32).

    ``logits`` is 1-D [classes] or 2-D [batch, classes]; results are [k] or [batch, k], by
    descending probability, ties ranked by lower index. For float32 logits the probabilities
    equal ``softmax``'s for the same classes, bit for bit.

    Raises ``PostprocessError`` for NaN/±inf logits or a wrong rank; ``ValueError`` unless
    1 <= k <= classes.

    Example: ``softmax_top_k(np.array([0.0, 2.0, 1.0], np.float32), 1)`` -> ([1], [0.665]).
    """
    x = _selection_input(logits, k, "logits")
    k = int(k)
    if x.ndim == 1:
        indices = np.empty(k, np.int64)
        probabilities = np.empty(k, np.float32)
        bad = _softmax_top_k_rows(x, x.shape[0], k, indices, probabilities)
    else:
        indices = np.empty((x.shape[0], k), np.int64)
        probabilities = np.empty((x.shape[0], k), np.float32)
        bad = _softmax_top_k_rows(
            x.reshape(-1), x.shape[1], k, indices.reshape(-1), probabilities.reshape(-1)
        )
    if bad >= 0:
        raise _nonfinite_error(logits, "softmax_top_k")
    return indices, probabilities


def segmentation_argmax(logits: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """The class of each pixel: argmax over the class axis of [C, H, W] or [1, C, H, W] logits
    (or probabilities). Ties go to the lowest class, as ``np.argmax``.

    Returns [H, W] uint8 when C <= 256, else int32.

    Raises ``PostprocessError`` for a wrong shape or NaN/±inf values; ``ValueError`` for a
    wrong ``out``.

    Example: ``segmentation_argmax(np.zeros((3, 2, 2), np.float32))`` -> 2x2 zeros (uint8).
    """
    x = _float_input(logits, "logits")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] == 0:
        raise PostprocessError(
            f"segmentation logits must be [classes, H, W] or [1, classes, H, W], got shape "
            f"{logits.shape}"
        )
    classes, h, w = x.shape
    dtype = np.dtype(np.uint8 if classes <= 256 else np.int32)
    if out is None:
        result = np.empty((h, w), dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be an ndarray, got {type(out).__name__}")
        if out.dtype != dtype or out.shape != (h, w):
            raise ValueError(
                f"out must be a {dtype} array of shape {(h, w)}, got {out.dtype} {out.shape}"
            )
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        result = out
    if h * w == 0:
        return result
    src = x.astype(np.float32) if x.dtype == np.float16 else np.ascontiguousarray(x)
    if _argmax_classes(src.reshape(classes, h * w), result.reshape(h * w), _SEG_CHUNK):
        raise _nonfinite_error(logits, "segmentation")
    return result


def warmup() -> None:
    """Compile every specialisation used in practice: float32 and float64 selections, both
    softmax layouts, uint8 and int32 argmax maps for float32 logits."""
    x = np.linspace(-1.0, 1.0, 40, dtype=np.float32)
    softmax(x)
    softmax(x.reshape(2, 4, 5), axis=1)
    sigmoid(x)
    for values in (x, x.astype(np.float64)):
        top_k(values, 3)
        softmax_top_k(values, 3)
    segmentation_argmax(x.reshape(2, 4, 5))
    segmentation_argmax(np.zeros((257, 1, 2), np.float32))
