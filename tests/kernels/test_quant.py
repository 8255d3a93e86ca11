"""edge_sdk.kernels.quant against onnxruntime's QuantizeLinear / DequantizeLinear (the ONNX
semantics: round half to even, saturation, per-tensor and per-axis), against the NumPy
references, and every bad-input path."""

from __future__ import annotations

import os
from functools import lru_cache

import hypothesis.extra.numpy as hnp
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.errors import PreprocessError
from edge_sdk.kernels import quant

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
EXAMPLES = 25 if NO_JIT else 60
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
QTYPES = {"int8": (np.int8, TensorProto.INT8), "uint8": (np.uint8, TensorProto.UINT8)}


# --------------------------------------------------------------------------------------------
# The peer: a one-node onnxruntime model


@lru_cache(maxsize=64)
def _session(
    op: str, rank: int, qtype: str, axis: int | None, params: tuple[bytes, bytes]
) -> object:
    np_q, onnx_q = QTYPES[qtype]
    scale, zp = params
    scale_arr = np.frombuffer(scale, np.float32)
    zp_arr = np.frombuffer(zp, np_q)
    if axis is None:
        scale_arr, zp_arr = scale_arr.reshape(()), zp_arr.reshape(())
    dims = [f"d{i}" for i in range(rank)]
    if op == "QuantizeLinear":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
        outputs = [helper.make_tensor_value_info("y", onnx_q, dims)]
    else:
        inputs = [helper.make_tensor_value_info("x", onnx_q, dims)]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)
    inits = [numpy_helper.from_array(scale_arr, "s"), numpy_helper.from_array(zp_arr, "z")]
    graph = helper.make_graph([node], "q", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def ort_quantize(
    x: np.ndarray, scale: np.ndarray | float, zp: np.ndarray | int, qtype: str, axis: int | None
) -> np.ndarray:
    np_q, _ = QTYPES[qtype]
    s = np.asarray(scale, np.float32).reshape(-1).tobytes()
    z = np.asarray(zp).astype(np_q).reshape(-1).tobytes()
    session = _session("QuantizeLinear", x.ndim, qtype, axis, (s, z))
    return session.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]  # type: ignore[attr-defined, no-any-return]


def ort_dequantize(
    q: np.ndarray, scale: np.ndarray | float, zp: np.ndarray | int, axis: int | None
) -> np.ndarray:
    qtype = str(q.dtype)
    s = np.asarray(scale, np.float32).reshape(-1).tobytes()
    z = np.asarray(zp).astype(q.dtype).reshape(-1).tobytes()
    session = _session("DequantizeLinear", q.ndim, qtype, axis, (s, z))
    return session.run(None, {"x": np.ascontiguousarray(q)})[0]  # type: ignore[attr-defined, no-any-return]


# --------------------------------------------------------------------------------------------
# Strategies

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
finite = st.floats(-400.0, 400.0, width=32)
scales = st.floats(0.0009765625, 8.0, width=32)


@st.composite
def quant_case(draw: st.DrawFn) -> tuple[np.ndarray, object, object, str, int | None]:
    shape = draw(shapes)
    qtype = draw(st.sampled_from(["int8", "uint8"]))
    lo, hi = (-128, 127) if qtype == "int8" else (0, 255)
    x = draw(hnp.arrays(np.float32, shape, elements=finite))
    if draw(st.booleans()):
        # Put some values exactly on .5 of a quantisation step (the round-half-even cases).
        step = np.float32(draw(st.sampled_from([0.5, 1.0, 0.25, 2.0])))
        halves = (np.arange(x.size, dtype=np.float32) - x.size // 2 + np.float32(0.5)) * step
        x = halves.reshape(shape)
        scale: object = float(step)
        zp: object = draw(st.integers(lo, hi))
        return x, scale, zp, qtype, None
    if draw(st.booleans()):
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        channels = shape[axis]
        scale = np.array([draw(scales) for _ in range(channels)], np.float32)
        zp = np.array([draw(st.integers(lo, hi)) for _ in range(channels)])
        return x, scale, zp, qtype, axis
    return x, draw(scales), draw(st.integers(lo, hi)), qtype, None


# --------------------------------------------------------------------------------------------
# quantize


def test_round_half_to_even_and_saturation_match_onnx() -> None:
    x = np.array([2.5, 3.5, -2.5, -0.5, 0.5, 1.5, 1e9, -1e9, np.inf, -np.inf], np.float32)
    expected = np.array([2, 4, -2, 0, 0, 2, 127, -128, 127, -128], np.int8)
    ours = quant.quantize(x, 1.0, 0, dtype="int8")
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, ort_quantize(x, 1.0, 0, "int8", None))
    u = quant.quantize(x, 1.0, 128, dtype="uint8")
    np.testing.assert_array_equal(u, [130, 132, 126, 128, 128, 130, 255, 0, 255, 0])
    np.testing.assert_array_equal(u, ort_quantize(x, 1.0, 128, "uint8", None))


def test_ties_at_a_fractional_scale_match_onnx() -> None:
    # x / 0.1 lands on (or within one float32 rounding of) .5: ONNX divides in float32.
    x = ((np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * np.float32(0.1)).astype(
        np.float32
    )
    for qtype, zp in (("int8", 3), ("uint8", 100)):
        ours = quant.quantize(x, 0.1, zp, dtype=qtype)  # type: ignore[arg-type]
        np.testing.assert_array_equal(ours, ort_quantize(x, 0.1, zp, qtype, None))


@SETTINGS
@given(quant_case())
def test_quantize_matches_onnxruntime(
    case: tuple[np.ndarray, object, object, str, int | None],
) -> None:
    x, scale, zp, qtype, axis = case
    ours = quant.quantize(x, scale, zp, dtype=qtype, axis=axis)  # type: ignore[arg-type]
    assert ours.dtype == QTYPES[qtype][0] and ours.shape == x.shape
    onnx_axis = None if axis is None else axis % x.ndim
    np.testing.assert_array_equal(ours, ort_quantize(x, scale, zp, qtype, onnx_axis))  # type: ignore[arg-type]
    reference = quant.quantize_reference(x, scale, zp, dtype=qtype, axis=axis)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, reference)


@SETTINGS
@given(quant_case(), st.sampled_from([np.float16, np.float64]), st.booleans())
def test_other_float_dtypes_and_non_contiguous_inputs(
    case: tuple[np.ndarray, object, object, str, int | None], dtype: type, strided: bool
) -> None:
    x, scale, zp, qtype, axis = case
    x = x.astype(dtype)
    if strided:
        x = np.repeat(x, 2, axis=-1)[..., ::2]  # same values, non-contiguous
        assert not x.flags.c_contiguous or x.shape[-1] == 1
    ours = quant.quantize(x, scale, zp, dtype=qtype, axis=axis)  # type: ignore[arg-type]
    # Documented: the input is converted to float32 first, as QuantizeLinear takes it.
    onnx_axis = None if axis is None else axis % x.ndim
    expected = ort_quantize(x.astype(np.float32), scale, zp, qtype, onnx_axis)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, expected)


def test_per_channel_along_each_axis() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 20, (3, 4, 5)).astype(np.float32)
    for axis in range(3):
        n = x.shape[axis]
        scale = rng.uniform(0.05, 0.5, n).astype(np.float32)
        zp = rng.integers(-20, 20, n)
        ours = quant.quantize(x, scale, zp, dtype="int8", axis=axis)
        np.testing.assert_array_equal(ours, ort_quantize(x, scale, zp, "int8", axis))
        q = ours
        np.testing.assert_array_equal(
            quant.dequantize(q, scale, zp, axis=axis), ort_dequantize(q, scale, zp, axis)
        )


def test_scalar_scale_with_axis_is_per_tensor_and_one_element_arrays_work() -> None:
    x = np.linspace(-5, 5, 12, dtype=np.float32).reshape(3, 4)
    a = quant.quantize(x, 0.1, 2, dtype="int8", axis=1)
    b = quant.quantize(x, np.array([0.1], np.float32), np.array([2]), dtype="int8")
    np.testing.assert_array_equal(a, ort_quantize(x, 0.1, 2, "int8", None))
    np.testing.assert_array_equal(a, b)


def test_out_is_written_and_returned() -> None:
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5)
    out = np.empty((2, 5), np.uint8)
    result = quant.quantize(x, 0.01, 128, dtype="uint8", out=out)
    assert result is out
    np.testing.assert_array_equal(out, ort_quantize(x, 0.01, 128, "uint8", None))
    back = np.empty((2, 5), np.float32)
    assert quant.dequantize(out, 0.01, 128, out=back) is back


def test_zero_size_and_zero_dim_inputs() -> None:
    assert quant.quantize(np.empty((0, 3), np.float32), 1.0, 0, dtype="int8").shape == (0, 3)
    q = quant.quantize(np.array(2.5, np.float32), 1.0, 0, dtype="int8")
    assert q.shape == () and q == 2


# --------------------------------------------------------------------------------------------
# dequantize


@SETTINGS
@given(quant_case())
def test_dequantize_matches_onnxruntime(
    case: tuple[np.ndarray, object, object, str, int | None],
) -> None:
    x, scale, zp, qtype, axis = case
    q = quant.quantize(x, scale, zp, dtype=qtype, axis=axis)  # type: ignore[arg-type]
    ours = quant.dequantize(q, scale, zp, axis=axis)  # type: ignore[arg-type]
    assert ours.dtype == np.float32
    onnx_axis = None if axis is None else axis % x.ndim
    np.testing.assert_array_equal(ours, ort_dequantize(q, scale, zp, onnx_axis))  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, quant.dequantize_reference(q, scale, zp, axis=axis))  # type: ignore[arg-type]
    # Round trip: within half a step wherever q did not saturate.
    step = np.asarray(scale, np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        step = step.reshape(shape)
    lo, hi = (-128, 127) if qtype == "int8" else (0, 255)
    inside = (q > lo) & (q < hi)
    bound = np.broadcast_to(step, x.shape) * 0.5 * (1 + 1e-5) + 1e-4 * np.abs(x)
    assert (np.abs(ours - x)[inside] <= bound[inside]).all()


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_a_value_error_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quant.quantize(np.zeros(3, np.float32), bad, 0, dtype="int8")
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quant.dequantize(np.zeros(3, np.int8), bad, 0)


def test_bad_per_channel_scale_names_the_channel() -> None:
    with pytest.raises(ValueError, match="at channel 2"):
        quant.quantize(np.zeros((2, 3), np.float32), np.array([1.0, 1.0, 0.0]), np.zeros(3, int),
                       dtype="int8", axis=1)  # fmt: skip


def test_per_channel_shape_mismatches() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="scale has 2 values but axis 1 of the data has 3"):
        quant.quantize(x, np.ones(2, np.float32), np.zeros(2, int), dtype="int8", axis=1)
    with pytest.raises(ValueError, match="zero_point must have the shape of scale"):
        quant.quantize(x, np.ones(3, np.float32), np.zeros(2, int), dtype="int8", axis=1)
    with pytest.raises(ValueError, match="needs axis="):
        quant.quantize(x, np.ones(3, np.float32), np.zeros(3, int), dtype="int8")
    with pytest.raises(ValueError, match="scalar zero_point"):
        quant.quantize(x, 1.0, np.zeros(3, int), dtype="int8")
    with pytest.raises(ValueError, match="scalar or a 1-D array"):
        quant.quantize(x, np.ones((2, 3), np.float32), 0, dtype="int8")
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        quant.quantize(x, np.ones(3, np.float32), np.zeros(3, int), dtype="int8", axis=2)


def test_zero_point_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"zero_point must lie in \[-128, 127\] for int8, got 200"):
        quant.quantize(np.zeros(3, np.float32), 1.0, 200, dtype="int8")
    with pytest.raises(ValueError, match=r"\[0, 255\] for uint8, got -1"):
        quant.dequantize(np.zeros(3, np.uint8), 1.0, -1)


def test_programming_mistakes() -> None:
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="dtype must be 'int8' or 'uint8', got 'int16'"):
        quant.quantize(x, 1.0, 0, dtype="int16")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x must be float16, float32 or float64, got int32"):
        quant.quantize(np.zeros(3, np.int32), 1.0, 0, dtype="int8")
    with pytest.raises(TypeError, match="x must be an ndarray"):
        quant.quantize([1.0], 1.0, 0, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="q must be int8 or uint8, got float32"):
        quant.dequantize(x, 1.0, 0)
    with pytest.raises(TypeError, match="zero_point must be an int"):
        quant.quantize(x, 1.0, 0.5, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scale must be a float"):
        quant.quantize(x, "1", 0, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out must be a int8 array of shape \(3,\)"):
        quant.quantize(x, 1.0, 0, dtype="int8", out=np.empty(3, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        quant.quantize(x, 1.0, 0, dtype="int8", out=np.empty(6, np.int8)[::2])


def test_nan_input_is_a_preprocess_error_naming_the_index() -> None:
    x = np.zeros((2, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(PreprocessError, match=r"1 NaN value\(s\), the first at index \(1, 2\)"):
        quant.quantize(x, 0.5, 0, dtype="uint8")


def test_warmup_runs() -> None:
    quant.warmup()
