"""edge_sdk.kernels.activations against its NumPy references: softmax, sigmoid, top_k,
softmax_top_k, segmentation_argmax over shapes, dtypes, ties and layouts, plus the exp helper's
accuracy and every bad-input path."""

from __future__ import annotations

import os
import re

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.errors import PostprocessError
from edge_sdk.kernels import activations as act

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
SETTINGS = settings(
    max_examples=30 if NO_JIT else 80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FLOATS = [np.float16, np.float32, np.float64]


def _float_array(draw: st.DrawFn, shape: tuple[int, ...], dtype: type, bound: float) -> np.ndarray:
    values = draw(hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32)))
    return values.astype(dtype)


@st.composite
def arrays_any_layout(
    draw: st.DrawFn, min_dims: int = 1, max_dims: int = 4, bound: float = 60.0
) -> np.ndarray:
    """A float16/32/64 array, sometimes non-contiguous (a transposed or strided view)."""
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=7))
    dtype = draw(st.sampled_from(FLOATS))
    layout = draw(st.sampled_from(["c", "transposed", "strided"]))
    if layout == "transposed":
        return _float_array(draw, shape[::-1], dtype, bound).T
    x = _float_array(draw, shape, dtype, bound)
    if layout == "strided":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    return x


# --------------------------------------------------------------------------------------------
# exp helper


def test_exp_helper_is_within_two_ulp_and_flushes_below_flt_min() -> None:
    t = np.linspace(-104.0, 0.0, 3001 if NO_JIT else 200001).astype(np.float32)
    t = np.concatenate([t, np.float32([-0.0, -1e-30, -87.3, -87.34, -np.inf])])
    e = t.copy()
    act._exp_inplace(e, np.empty(t.size, np.int32))
    with np.errstate(under="ignore"):
        exact = np.exp(t.astype(np.float64))
    normal = exact >= np.finfo(np.float32).tiny
    ulp = np.spacing(exact[normal].astype(np.float32))
    assert (np.abs(e[normal] - exact[normal]) <= 2 * ulp).all()
    assert (e[~normal] <= np.finfo(np.float32).tiny).all() and (e[~normal] >= 0).all()
    assert e[-1] == 0.0  # exp(-inf)


# --------------------------------------------------------------------------------------------
# softmax


@SETTINGS
@given(arrays_any_layout(), st.data())
def test_softmax_matches_reference(x: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    ours = act.softmax(x, axis=axis)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    # Documented: computed in float32 from the float32 value of the input.
    expected = act.softmax_reference(x.astype(np.float32), axis=axis)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(ours.sum(axis=axis), 1.0, rtol=2e-5)


def test_softmax_is_stable_for_huge_logits_and_size_one_axes() -> None:
    x = np.array([[1000.0, 1000.0, -1000.0], [3e38, 0.0, -3e38]], np.float32)
    np.testing.assert_allclose(act.softmax(x), [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(act.softmax(np.full((2, 1, 3), 7.0, np.float32), axis=1), 1.0)


def test_softmax_out_and_zero_size() -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    out = np.empty((3, 4), np.float32)
    assert act.softmax(x, axis=0, out=out) is out
    np.testing.assert_allclose(out, act.softmax_reference(x, axis=0), rtol=2e-5)
    assert act.softmax(np.empty((0, 4), np.float32)).shape == (0, 4)
    with pytest.raises(PostprocessError, match="at least one value along axis 0"):
        act.softmax(np.empty((0, 4), np.float32), axis=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_non_finite_is_a_postprocess_error_naming_the_index(bad: float, axis: int) -> None:
    x = np.zeros((3, 5), np.float32)
    x[2, 3] = bad
    kind = "NaN" if np.isnan(bad) else ("+inf" if bad > 0 else "-inf")
    with pytest.raises(PostprocessError, match=f"contains {re.escape(kind)} at"):
        act.softmax(x, axis=axis)
    with pytest.raises(PostprocessError, match=r"at index \(2, 3\)"):
        act.softmax(x, axis=axis)


def test_softmax_programming_mistakes() -> None:
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        act.softmax(np.zeros((2, 2), np.float32), axis=2)
    with pytest.raises(TypeError, match="x must be float16, float32 or float64, got int64"):
        act.softmax(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="out must be a float32 array of shape"):
        act.softmax(np.zeros(3, np.float32), out=np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="at least one dimension"):
        act.softmax(np.ones((), np.float32))


# --------------------------------------------------------------------------------------------
# sigmoid


@SETTINGS
@given(arrays_any_layout(bound=200.0))
def test_sigmoid_matches_reference(x: np.ndarray) -> None:
    ours = act.sigmoid(x)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    expected = act.sigmoid_reference(x.astype(np.float32))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=np.finfo(np.float32).tiny)


def test_sigmoid_infinities_and_nan() -> None:
    np.testing.assert_array_equal(
        act.sigmoid(np.array([np.inf, -np.inf, 0.0], np.float32)), [1.0, 0.0, 0.5]
    )
    with pytest.raises(PostprocessError, match=r"NaN at index \(1,\)"):
        act.sigmoid(np.array([np.inf, np.nan], np.float32))
    # More than one exp chunk (4096), so the chunking is exercised.
    x = np.linspace(-30, 30, 5000, dtype=np.float32)
    np.testing.assert_allclose(act.sigmoid(x), act.sigmoid_reference(x), rtol=1e-5, atol=1e-30)


# --------------------------------------------------------------------------------------------
# top_k and softmax_top_k


@st.composite
def scores_with_ties(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    batch = draw(st.sampled_from([None, 1, 3]))
    n = draw(st.integers(1, 70))
    shape = (n,) if batch is None else (batch, n)
    dtype = draw(st.sampled_from(FLOATS))
    if draw(st.booleans()):  # few distinct values: many ties
        x = draw(hnp.arrays(np.int8, shape, elements=st.integers(-3, 3))).astype(dtype)
    else:
        x = _float_array(draw, shape, dtype, 30.0)
    if draw(st.booleans()):
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    return x, draw(st.integers(1, n))


@SETTINGS
@given(scores_with_ties())
def test_top_k_matches_a_stable_full_sort(case: tuple[np.ndarray, int]) -> None:
    x, k = case
    indices, values = act.top_k(x, k)
    ref_indices, ref_values = act.top_k_reference(x, k)
    assert indices.dtype == np.int64 and values.dtype == x.dtype
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(values, ref_values)


def test_top_k_ties_rank_the_lower_index_first() -> None:
    x = np.array([1.0, 3.0, 3.0, 0.0, 3.0, 2.0] * 6, np.float32)  # ties across 16-blocks
    indices, values = act.top_k(x, 5)
    np.testing.assert_array_equal(indices, [1, 2, 4, 7, 8])
    np.testing.assert_array_equal(values, [3.0] * 5)


@SETTINGS
@given(scores_with_ties())
def test_softmax_top_k_matches_softmax_and_a_full_sort(case: tuple[np.ndarray, int]) -> None:
    x, k = case
    indices, probabilities = act.softmax_top_k(x, k)
    assert indices.dtype == np.int64 and probabilities.dtype == np.float32
    ref_indices, ref_probabilities = act.softmax_top_k_reference(x, k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(probabilities, ref_probabilities, rtol=2e-5, atol=1e-7)
    if x.dtype == np.float32:
        # The same float32 steps as softmax(): the same values, bit for bit.
        full = act.softmax(x, axis=-1)
        np.testing.assert_array_equal(probabilities, np.take_along_axis(full, indices, axis=-1))


def test_softmax_top_k_of_1000_logits() -> None:
    x = np.random.default_rng(3).normal(0, 3, (2, 1000)).astype(np.float32)
    indices, probabilities = act.softmax_top_k(x, 5)
    ref_indices, ref_probabilities = act.softmax_top_k_reference(x, 5)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(probabilities, ref_probabilities, rtol=2e-5)


@pytest.mark.parametrize("function", [act.top_k, act.softmax_top_k])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_selection_non_finite_is_a_postprocess_error(function: object, bad: float) -> None:
    x = np.zeros((2, 40), np.float32)
    x[1, 33] = bad
    with pytest.raises(PostprocessError, match=r"model output contains .* at index \(1, 33\)"):
        function(x, 3)  # type: ignore[operator]


@pytest.mark.parametrize("function", [act.top_k, act.softmax_top_k])
def test_selection_bad_input(function: object) -> None:
    f = function
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        f(np.zeros(4, np.float32), 5)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        f(np.zeros(4, np.float32), 0)  # type: ignore[operator]
    with pytest.raises(TypeError, match="k must be an int"):
        f(np.zeros(4, np.float32), True)  # type: ignore[operator]
    with pytest.raises(PostprocessError, match=r"1-D \[classes\] or 2-D"):
        f(np.zeros((1, 2, 4), np.float32), 1)  # type: ignore[operator]
    with pytest.raises(PostprocessError, match="has no classes"):
        f(np.zeros((2, 0), np.float32), 1)  # type: ignore[operator]
    with pytest.raises(TypeError, match="float16, float32 or float64, got int32"):
        f(np.zeros(4, np.int32), 1)  # type: ignore[operator]
    with pytest.raises(TypeError, match="must be an ndarray"):
        f([1.0, 2.0], 1)  # type: ignore[operator]


# --------------------------------------------------------------------------------------------
# segmentation_argmax


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 9), st.integers(1, 9), st.data())
def test_segmentation_argmax_matches_numpy(
    classes: int, h: int, w: int, data: st.DataObject
) -> None:
    dtype = data.draw(st.sampled_from(FLOATS))
    ties, batch = data.draw(st.booleans()), data.draw(st.booleans())
    if ties:
        x = data.draw(hnp.arrays(np.int8, (classes, h, w), elements=st.integers(0, 2))).astype(
            dtype
        )
    else:
        x = _float_array(data.draw, (classes, h, w), dtype, 10.0)
    if batch:
        x = x[None]
    ours = act.segmentation_argmax(x)
    assert ours.dtype == np.uint8 and ours.shape == (h, w)
    np.testing.assert_array_equal(ours, np.argmax(x.reshape(-1, h, w), axis=0))
    np.testing.assert_array_equal(ours, act.segmentation_argmax_reference(x))


def test_segmentation_argmax_chunks_layouts_and_int32_maps() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (3, 50, 90)).astype(np.float32)  # 4500 pixels: three chunks
    np.testing.assert_array_equal(act.segmentation_argmax(x), np.argmax(x, axis=0))
    view = rng.normal(0, 1, (3, 40, 20)).astype(np.float32).transpose(0, 2, 1)
    np.testing.assert_array_equal(act.segmentation_argmax(view), np.argmax(view, axis=0))
    many = rng.normal(0, 1, (300, 2, 3)).astype(np.float32)
    result = act.segmentation_argmax(many)
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, np.argmax(many, axis=0))
    out = np.empty((50, 90), np.uint8)
    assert act.segmentation_argmax(x, out=out) is out
    with pytest.raises(ValueError, match="out must be a uint8 array of shape"):
        act.segmentation_argmax(x, out=np.empty((50, 90), np.int32))


def test_segmentation_argmax_bad_input() -> None:
    with pytest.raises(PostprocessError, match=r"\[classes, H, W\] or \[1, classes, H, W\]"):
        act.segmentation_argmax(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(PostprocessError, match=r"got shape \(4, 5\)"):
        act.segmentation_argmax(np.zeros((4, 5), np.float32))
    x = np.zeros((3, 4, 5), np.float32)
    x[1, 2, 3] = np.nan
    with pytest.raises(PostprocessError, match=r"NaN at index \(1, 2, 3\)"):
        act.segmentation_argmax(x)
    x[1, 2, 3] = -np.inf
    with pytest.raises(PostprocessError, match=r"-inf at index \(1, 2, 3\)"):
        act.segmentation_argmax(x)
    assert act.segmentation_argmax(np.zeros((3, 0, 5), np.float32)).shape == (0, 5)


def test_warmup_runs() -> None:
    act.warmup()


def test_extreme_aspect_ratios() -> None:
    for shape in [(2, 1, 300), (2, 300, 1), (1, 1, 1)]:
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(act.segmentation_argmax(x), np.argmax(x, axis=0))
        np.testing.assert_allclose(
            act.softmax(x, axis=0), act.softmax_reference(x, axis=0), rtol=2e-5
        )
