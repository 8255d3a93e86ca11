"""Linear (de)quantisation with ONNX ``QuantizeLinear`` / ``DequantizeLinear`` semantics.

``quantize``: ``q = saturate(round_half_to_even(x / scale) + zero_point)``, saturating to
[-128, 127] (int8) or [0, 255] (uint8). ``dequantize``: ``x = (q - zero_point) * scale``. Both
per tensor (a scalar scale and zero point) or per channel (1-D scale and zero point along
``axis``). Source: the ONNX operator spec, QuantizeLinear ("For (x / y_scale), it rounds to the
nearest even", saturation ranges) and DequantizeLinear, https://onnx.ai/onnx/operators/.

Precision: the spec says the type of ``y_scale`` sets the precision of the division. Scales in
ONNX models are float32, so the scale is stored as float32 and ``x / scale`` is an IEEE float32
division (not a multiplication by ``1 / scale``, which rounds differently on ties). float16 and
float64 inputs are converted to float32 first (the precision of a float32 scale). The tests
compare against onnxruntime element for element.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edge_sdk.errors import PreprocessError
from edge_sdk.kernels._jit import kernel

__all__ = [
    "QuantDType",
    "dequantize",
    "dequantize_reference",
    "quantize",
    "quantize_reference",
    "warmup",
]

QuantDType = Literal["int8", "uint8"]

_RANGES: dict[str, tuple[int, int]] = {"int8": (-128, 127), "uint8": (0, 255)}
_FLOATS = (np.float16, np.float32, np.float64)


# --------------------------------------------------------------------------------------------
# Kernels


@kernel
def _quantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qmin: int,
    qmax: int,
    out: np.ndarray,
) -> int:
    """x: float32 [outer, channels, inner]; scale float32 [channels]; zero_point int32
    [channels]; out int8/uint8 like x. Returns how many x are NaN (their q is undefined)."""
    outer, channels, inner = x.shape
    nans = 0
    for o in range(outer):
        for c in range(channels):
            s = scale[c]
            zp = zero_point[c]
            # Clamping v to [qmin - zp - 1, qmax - zp + 1] (integers) first changes no result
            # (rounding is monotonic, so anything beyond still saturates) and keeps the
            # integer conversion below in range for huge or infinite x.
            lo = np.float32(qmin - zp - 1)
            hi = np.float32(qmax - zp + 1)
            for i in range(inner):
                v = x[o, c, i] / s  # float32 / float32: an IEEE float32 division
                nans += np.isnan(v)
                v = v if v > lo else lo
                v = v if v < hi else hi
                q = np.int32(np.rint(v)) + zp  # rint: round half to even
                q = q if q > qmin else qmin
                q = q if q < qmax else qmax
                out[o, c, i] = q
    return nans


@kernel
def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, out: np.ndarray) -> None:
    """q: int8/uint8 [outer, channels, inner]; out float32 like q."""
    outer, channels, inner = q.shape
    for o in range(outer):
        for c in range(channels):
            s = scale[c]
            zp = zero_point[c]
            for i in range(inner):
                # (q - zp) is exact in int32 and in float32; one float32 multiplication.
                out[o, c, i] = np.float32(np.int32(q[o, c, i]) - zp) * s


# --------------------------------------------------------------------------------------------
# References (plain NumPy, for the tests)


def _broadcast_shape(ndim: int, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return ()
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def quantize_reference(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    *,
    dtype: QuantDType,
    axis: int | None = None,
) -> np.ndarray:
    """ONNX QuantizeLinear written with NumPy ufuncs (np.rint rounds half to even)."""
    x32 = np.asarray(x, dtype=np.float32)
    scale_arr = np.asarray(scale, dtype=np.float32)
    zp_arr = np.asarray(zero_point, dtype=np.int64)
    if scale_arr.ndim == 1 and scale_arr.size > 1:
        assert axis is not None
        scale_arr = scale_arr.reshape(_broadcast_shape(x32.ndim, axis))
        zp_arr = zp_arr.reshape(_broadcast_shape(x32.ndim, axis))
    else:
        scale_arr = scale_arr.reshape(())
        zp_arr = zp_arr.reshape(())
    lo, hi = _RANGES[dtype]
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.rint(x32 / scale_arr).astype(np.float64) + zp_arr
    result: np.ndarray = np.clip(rounded, lo, hi).astype(dtype)
    return result


def dequantize_reference(
    q: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    *,
    axis: int | None = None,
) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    scale_arr = np.asarray(scale, dtype=np.float32)
    zp_arr = np.asarray(zero_point, dtype=np.int32)
    if scale_arr.ndim == 1 and scale_arr.size > 1:
        assert axis is not None
        scale_arr = scale_arr.reshape(_broadcast_shape(q.ndim, axis))
        zp_arr = zp_arr.reshape(_broadcast_shape(q.ndim, axis))
    else:
        scale_arr = scale_arr.reshape(())
        zp_arr = zp_arr.reshape(())
    return (q.astype(np.int32) - zp_arr).astype(np.float32) * scale_arr


# --------------------------------------------------------------------------------------------
# Public wrappers


def _params(
    shape: tuple[int, ...],
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    *,
    axis: int | None,
    qrange: tuple[int, int],
    dtype_name: str,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Validate scale / zero point; return them as float32 / int32 [channels] and the
    [outer, channels, inner] view shape of the data."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.ndarray, np.floating)):
        raise TypeError(f"scale must be a float or an ndarray, got {type(scale).__name__}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, (int, np.ndarray, np.integer)):
        raise TypeError(
            f"zero_point must be an int or an integer ndarray, got {type(zero_point).__name__}"
        )
    scale_arr = np.asarray(scale)
    zp_arr = np.asarray(zero_point)
    if scale_arr.dtype.kind not in "fiu":
        raise TypeError(f"scale must be a real number, got dtype {scale_arr.dtype}")
    if zp_arr.dtype.kind not in "iu":
        raise TypeError(f"zero_point must be an integer, got dtype {zp_arr.dtype}")
    ndim = len(shape)
    if axis is not None:
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise TypeError(f"axis must be an int or None, got {type(axis).__name__}")
        if not -ndim <= axis < ndim:
            raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimension(s)")
        axis = int(axis) % ndim
    # ONNX: a scalar (or one-element) scale quantises per tensor whatever the axis.
    per_channel = scale_arr.ndim == 1 and scale_arr.size != 1
    if scale_arr.ndim > 1 or (scale_arr.ndim == 1 and scale_arr.size == 0):
        raise ValueError(
            f"scale must be a scalar or a 1-D array (per channel), got shape {scale_arr.shape}"
        )
    if per_channel:
        if axis is None:
            raise ValueError(
                f"a per-channel scale (shape {scale_arr.shape}) needs axis= (the channel axis)"
            )
        if scale_arr.shape[0] != shape[axis]:
            raise ValueError(
                f"scale has {scale_arr.shape[0]} values but axis {axis} of the data has "
                f"{shape[axis]} channels"
            )
        if zp_arr.shape != scale_arr.shape:
            raise ValueError(
                f"zero_point must have the shape of scale {scale_arr.shape}, got {zp_arr.shape}"
            )
    elif zp_arr.size != 1 or zp_arr.ndim > 1:
        raise ValueError(f"a per-tensor scale needs a scalar zero_point, got shape {zp_arr.shape}")
    scale32 = scale_arr.astype(np.float32).reshape(-1)
    bad = ~(np.isfinite(scale32) & (scale32 > 0))
    if bad.any():
        where = f" at channel {int(np.flatnonzero(bad)[0])}" if per_channel else ""
        raise ValueError(
            f"scale must be finite and > 0 (as float32){where}, got "
            f"{scale_arr.reshape(-1)[int(np.flatnonzero(bad)[0])]!r}"
        )
    lo, hi = qrange
    zp_flat = zp_arr.reshape(-1)
    out_of_range = (zp_flat < lo) | (zp_flat > hi)
    if out_of_range.any():
        raise ValueError(
            f"zero_point must lie in [{lo}, {hi}] for {dtype_name}, got "
            f"{int(zp_flat[np.flatnonzero(out_of_range)[0]])}"
        )
    zp32 = zp_flat.astype(np.int32)
    if per_channel:
        assert axis is not None
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        view = (outer, shape[axis], inner)
    else:
        view = (1, 1, int(np.prod(shape, dtype=np.int64)))
    return scale32, zp32, view


def _check_out(out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be an ndarray, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != shape:
        raise ValueError(
            f"out must be a {dtype} array of shape {shape}, got {out.dtype} {out.shape}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def quantize(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    *,
    dtype: QuantDType,
    axis: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Quantise ``x`` as ONNX QuantizeLinear does: ``clip(rint(x / scale) + zero_point)``.

    Per tensor with a scalar ``scale``/``zero_point``; per channel with 1-D ones along ``axis``.
    Ties round to even (``x / scale == 2.5`` gives 2); ±inf saturates.

    Raises ``TypeError`` for a non-float ``x``; ``ValueError`` for an unknown ``dtype``, a scale
    that is not finite and > 0, a zero point outside the dtype's range, per-channel parameters
    that do not match ``x.shape[axis]``, or a wrong ``out``; ``PreprocessError`` if ``x``
    contains NaN (its quantised value is undefined).

    Example: ``quantize(np.array([0.5, 2.5], np.float32), 1.0, 0, dtype="int8")`` -> [0, 2].
    """
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be 'int8' or 'uint8', got {dtype!r}")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be an ndarray, got {type(x).__name__}")
    if x.dtype.type not in _FLOATS:
        raise TypeError(f"x must be float16, float32 or float64, got {x.dtype}")
    qrange = _RANGES[dtype]
    scale32, zp32, view = _params(
        x.shape, scale, zero_point, axis=axis, qrange=qrange, dtype_name=dtype
    )
    result = _check_out(out, x.shape, np.dtype(dtype))
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    nans = _quantize(x32.reshape(view), scale32, zp32, qrange[0], qrange[1], result.reshape(view))
    if nans:
        first = np.unravel_index(int(np.flatnonzero(np.isnan(x32))[0]), x.shape)
        raise PreprocessError(
            f"cannot quantise: the input contains {nans} NaN value(s), the first at index "
            f"{tuple(int(i) for i in first)}"
        )
    return result


def dequantize(
    q: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    *,
    axis: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Dequantise int8/uint8 ``q`` as ONNX DequantizeLinear does: ``(q - zero_point) * scale``,
    float32, per tensor or per channel along ``axis``.

    Raises ``TypeError`` if ``q`` is not int8/uint8; ``ValueError`` for a scale that is not
    finite and > 0, a zero point outside q's range, mismatched per-channel parameters or a
    wrong ``out``.

    Example: ``dequantize(np.array([2, -3], np.int8), 0.5, 1)`` -> [0.5, -2.0].
    """
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q must be an ndarray, got {type(q).__name__}")
    if q.dtype not in (np.int8, np.uint8):
        raise TypeError(f"q must be int8 or uint8, got {q.dtype}")
    name = str(q.dtype)
    scale32, zp32, view = _params(
        q.shape, scale, zero_point, axis=axis, qrange=_RANGES[name], dtype_name=name
    )
    result = _check_out(out, q.shape, np.dtype(np.float32))
    _dequantize(np.ascontiguousarray(q).reshape(view), scale32, zp32, result.reshape(view))
    return result


def warmup() -> None:
    """Compile every specialisation used in practice (int8 and uint8 each way)."""
    x = np.linspace(-2.0, 2.0, 8, dtype=np.float32).reshape(2, 4)
    dtypes: tuple[QuantDType, ...] = ("int8", "uint8")
    for dtype in dtypes:
        zp = 0 if dtype == "int8" else 128
        q = quantize(x, 0.1, zp, dtype=dtype)
        dequantize(q, 0.1, zp)
        scales, zps = np.full(4, 0.1, np.float32), np.full(4, zp)
        q = quantize(x, scales, zps, dtype=dtype, axis=1)
        dequantize(q, scales, zps, axis=1)
