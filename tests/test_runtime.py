"""EdgeModel on real onnxruntime sessions: specs, validation, providers, fast path, lifecycle."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import _models
import hypothesis
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import strategies as st

from edge_sdk import (
    EdgeModel,
    ExtraInputError,
    InputError,
    InputRankError,
    InputShapeError,
    InputTypeError,
    InvalidModelError,
    MissingInputError,
    ModelClosedError,
    ProviderUnavailableError,
    SessionSettings,
    UnknownInputError,
    runtime,
)


def _reference(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


# -- specs -------------------------------------------------------------------------------------


def test_specs_report_names_dtypes_and_symbolic_dims(two_inputs_path: Path) -> None:
    with EdgeModel.load(two_inputs_path) as model:
        image, scale = model.inputs
        assert (image.name, image.dtype, image.shape) == ("image", np.float32, ("batch", 3, 4, 4))
        assert (scale.name, scale.dtype, scale.shape) == ("scale", np.int64, ("batch",))
        assert not image.is_fixed and image.rank == 4
        assert image.concrete_shape({"batch": 5}) == (5, 3, 4, 4)
        assert str(image) == "image: float32[batch, 3, 4, 4]"
        (out,) = model.outputs
        assert out.name == "out" and out.dtype == np.float32


def test_run_matches_onnxruntime(two_inputs_path: Path) -> None:
    rng = np.random.default_rng(3)
    feed = {
        "image": rng.standard_normal((2, 3, 4, 4)).astype(np.float32),
        "scale": np.array([2, 3], dtype=np.int64),
    }
    with EdgeModel.load(two_inputs_path) as model:
        result = model.run(feed)
    assert list(result) == ["out"]
    np.testing.assert_array_equal(result["out"], _reference(two_inputs_path, feed)[0])
    np.testing.assert_allclose(result["out"][1], feed["image"][1] * 3)


def test_run_accepts_positional_arrays_and_lists(tiny_mlp_path: Path) -> None:
    x = np.ones((1, 64), np.float32)
    with EdgeModel.load(tiny_mlp_path) as model:
        by_name = model.run({"x": x})["y"]
        np.testing.assert_array_equal(model.run(x)["y"], by_name)
        np.testing.assert_array_equal(model.run([x])["y"], by_name)
        # A nested list has no dtype of its own, so it takes the model's.
        np.testing.assert_array_equal(model.run({"x": x.tolist()})["y"], by_name)
        assert list(model.run({"x": x}, outputs=["y"])) == ["y"]
        with pytest.raises(ValueError, match="no output 'z'"):
            model.run({"x": x}, outputs=["z"])


def test_load_from_bytes(tiny_mlp_path: Path) -> None:
    with EdgeModel.load(tiny_mlp_path.read_bytes()) as model:
        assert model.path is None
        assert model.run(np.zeros((1, 64), np.float32))["y"].shape == (1, 64)


# -- validation: each bad input has its own error type naming the problem ----------------------


@pytest.fixture
def two(two_inputs_path: Path) -> Any:
    with EdgeModel.load(two_inputs_path) as model:
        yield model


def _good() -> dict[str, np.ndarray]:
    return {"image": np.zeros((1, 3, 4, 4), np.float32), "scale": np.ones(1, np.int64)}


def test_unknown_input_name_suggests_the_right_one(two: EdgeModel) -> None:
    feed = _good()
    feed["imgae"] = feed.pop("image")
    with pytest.raises(UnknownInputError) as info:
        two.run(feed)
    assert info.value.input_name == "imgae"
    assert "no input 'imgae'" in str(info.value) and "did you mean 'image'" in str(info.value)


def test_missing_input_names_it(two: EdgeModel) -> None:
    feed = _good()
    del feed["scale"]
    with pytest.raises(MissingInputError) as info:
        two.run(feed)
    assert info.value.input_name == "scale"
    assert "'scale' is missing" in str(info.value)


def test_extra_input_names_it(two: EdgeModel) -> None:
    feed = {**_good(), "mask": np.zeros(1, np.float32)}
    with pytest.raises(ExtraInputError) as info:
        two.run(feed)
    assert info.value.input_name == "mask"
    assert "no input 'mask'" in str(info.value) and "remove" in str(info.value)


def test_too_many_positional_arrays_is_extra(tiny_mlp_path: Path) -> None:
    x = np.zeros((1, 64), np.float32)
    with EdgeModel.load(tiny_mlp_path) as model, pytest.raises(ExtraInputError, match="got 2"):
        model.run([x, x])


def test_too_few_positional_arrays_is_missing(two: EdgeModel) -> None:
    with pytest.raises(MissingInputError) as info:
        two.run([_good()["image"]])
    assert info.value.input_name == "scale"


def test_wrong_dtype_names_input_expected_and_got(two: EdgeModel) -> None:
    feed = _good()
    feed["image"] = feed["image"].astype(np.float64)
    with pytest.raises(InputTypeError) as info:
        two.run(feed)
    error = info.value
    assert (error.input_name, error.expected, error.got) == ("image", "float32", "float64")
    assert "astype(np.float32)" in str(error)


def test_wrong_rank_names_input(two: EdgeModel) -> None:
    feed = _good()
    feed["image"] = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(InputRankError) as info:
        two.run(feed)
    assert info.value.input_name == "image"
    assert "4 dimensions" in str(info.value) and "got 3" in str(info.value)


def test_wrong_fixed_dim_names_input_axis_and_sizes(two: EdgeModel) -> None:
    feed = _good()
    feed["image"] = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(InputShapeError) as info:
        two.run(feed)
    assert info.value.input_name == "image"
    assert "dimension 1 must be 3, got 4" in str(info.value)


def test_symbolic_dim_must_agree_across_inputs(two: EdgeModel) -> None:
    feed = _good()
    feed["scale"] = np.ones(2, np.int64)
    with pytest.raises(InputShapeError, match="'batch' must have the same size"):
        two.run(feed)


def test_not_an_array_is_an_input_type_error(two: EdgeModel) -> None:
    with pytest.raises(InputTypeError, match="cannot run the model on a str"):
        two.run("image.png")  # type: ignore[arg-type]
    feed: dict[str, Any] = {**_good(), "image": [["ragged"], [1, 2]]}
    with pytest.raises(InputTypeError, match="'image'"):
        two.run(feed)


def test_every_input_error_is_an_input_error(two: EdgeModel) -> None:
    for bad in ({}, {"image": 1}, {**_good(), "x": 1}):
        with pytest.raises(InputError):
            two.run(bad)


# -- providers ---------------------------------------------------------------------------------


def test_default_providers_run_on_cpu_without_fallbacks(tiny_mlp_path: Path) -> None:
    with EdgeModel.load(tiny_mlp_path) as model:
        assert model.providers[-1] == "CPUExecutionProvider"
        assert "AzureExecutionProvider" not in model.providers
        assert model.fallbacks == ()


def test_provider_not_built_in_is_recorded_and_cpu_takes_over(tiny_mlp_path: Path) -> None:
    preference = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    with EdgeModel.load(tiny_mlp_path, providers=preference) as model:
        assert model.providers == ("CPUExecutionProvider",)
        (fallback,) = model.fallbacks
        assert fallback.provider == "CUDAExecutionProvider"
        assert fallback.kind == "not_built"
        assert "not built into onnxruntime" in fallback.reason


def test_require_providers_raises_with_the_reason(tiny_mlp_path: Path) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        EdgeModel.load(
            tiny_mlp_path,
            providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"],
            require_providers=["TensorrtExecutionProvider"],
        )
    error = info.value
    assert error.missing == ("TensorrtExecutionProvider",)
    assert error.active == ("CPUExecutionProvider",)
    assert {f.provider for f in error.fallbacks} == {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    }
    assert "not built" in str(error)


def test_provider_failing_to_initialise_fake_tensorrt(
    tiny_mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No TensorRT can start on this machine, so a fake stands in for a TensorRT build whose
    # engine creation fails: the session is retried without it and the reason is kept.
    real_open = runtime._open_session
    monkeypatch.setattr(
        runtime,
        "available_providers",
        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    )

    def open_session(source: Any, options: Any, chain: Any) -> Any:
        if any(name == "TensorrtExecutionProvider" for name, _ in chain):
            raise RuntimeError("TensorRT EP failed to create engine: libnvinfer.so.8 not found")
        return real_open(source, options, chain)

    monkeypatch.setattr(runtime, "_open_session", open_session)
    with EdgeModel.load(tiny_mlp_path, providers=["TensorrtExecutionProvider"]) as model:
        assert model.providers == ("CPUExecutionProvider",)
        (fallback,) = model.fallbacks
        assert fallback.kind == "failed_to_initialise"
        assert "libnvinfer.so.8" in fallback.reason
    with pytest.raises(ProviderUnavailableError, match="libnvinfer"):
        EdgeModel.load(
            tiny_mlp_path,
            providers=["TensorrtExecutionProvider"],
            require_providers="TensorrtExecutionProvider",
        )


def test_provider_silently_dropped_fake_session(
    tiny_mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fake: a CUDA build whose session comes up without CUDA (onnxruntime only logs this).
    real_open = runtime._open_session
    monkeypatch.setattr(
        runtime, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(
        runtime,
        "_open_session",
        lambda source, options, chain: real_open(
            source, options, [c for c in chain if c[0] != "CUDAExecutionProvider"]
        ),
    )
    with EdgeModel.load(tiny_mlp_path, providers=["CUDAExecutionProvider"]) as model:
        (fallback,) = model.fallbacks
        assert (fallback.provider, fallback.kind) == (
            "CUDAExecutionProvider",
            "failed_to_initialise",
        )


def test_bad_provider_entry_is_a_type_error(tiny_mlp_path: Path) -> None:
    with pytest.raises(TypeError, match="name or"):
        EdgeModel.load(tiny_mlp_path, providers=[("CPUExecutionProvider",)])  # type: ignore[list-item]


# -- settings ----------------------------------------------------------------------------------


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        SessionSettings(intra_op_threads=-1)
    with pytest.raises(ValueError, match="graph_optimization"):
        SessionSettings(graph_optimization="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="execution_mode"):
        SessionSettings(execution_mode="async")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="free_dimensions"):
        SessionSettings(free_dimensions={"batch": 0})
    settings = SessionSettings(free_dimensions={"batch": 2})
    with pytest.raises(TypeError):
        settings.free_dimensions["batch"] = 3  # type: ignore[index]


def test_settings_reach_the_session(dynamic_mlp_path: Path, tmp_path: Path) -> None:
    optimized = tmp_path / "optimized.onnx"
    settings = SessionSettings(
        intra_op_threads=1,
        graph_optimization="basic",
        enable_memory_arena=False,
        enable_memory_pattern=False,
        optimized_model_path=str(optimized),
        free_dimensions={"batch": 3},
    )
    with EdgeModel.load(dynamic_mlp_path, settings=settings) as model:
        options = model._state().session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert options.enable_cpu_mem_arena is False
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert model.run(np.zeros((3, 16), np.float32))["y"].shape == (3, 16)
    assert optimized.stat().st_size > 0  # the optimised graph was cached to disk


# -- fast path ---------------------------------------------------------------------------------


def test_fast_runner_matches_run_and_reuses_buffers(tiny_mlp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with EdgeModel.load(tiny_mlp_path) as model:
        runner = model.fast_runner()
        for _ in range(3):
            x = rng.standard_normal((1, 64)).astype(np.float32)
            expected = model.run({"x": x})["y"]
            runner.inputs["x"][:] = x
            first = runner.run()["y"]
            np.testing.assert_array_equal(first, expected)
            np.testing.assert_array_equal(runner.run({"x": x})["y"], expected)
        assert runner.run()["y"] is first  # the bound output buffer is reused


def test_fast_runner_rejects_other_shapes_and_dtypes(dynamic_mlp_path: Path) -> None:
    with EdgeModel.load(dynamic_mlp_path) as model:
        runner = model.fast_runner({"batch": 4})
        assert runner.inputs["x"].shape == (4, 16)
        with pytest.raises(InputShapeError, match="bound with shape"):
            runner.run({"x": np.zeros((2, 16), np.float32)})
        with pytest.raises(InputTypeError):
            runner.run({"x": np.zeros((4, 16), np.float64)})
        with pytest.raises(UnknownInputError):
            runner.run({"y": np.zeros((4, 16), np.float32)})


def test_fast_runner_follows_a_reload(tiny_mlp_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    _models.tiny_mlp(other)
    with EdgeModel.load(tiny_mlp_path) as model:
        runner = model.fast_runner()
        runner.run()
        model.reload(other)
        x = np.ones((1, 64), np.float32)
        np.testing.assert_array_equal(runner.run({"x": x})["y"], model.run({"x": x})["y"])


# -- threads, warm-up, lifecycle, hot swap -----------------------------------------------------


def test_concurrent_runs_from_many_threads(dynamic_mlp_path: Path) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((i % 4 + 1, 16)).astype(np.float32) for i in range(8)]
    expected = [_reference(dynamic_mlp_path, {"x": x})[0] for x in inputs]
    failures: list[str] = []
    with EdgeModel.load(dynamic_mlp_path) as model:
        barrier = threading.Barrier(len(inputs))

        def worker(index: int) -> None:
            barrier.wait()
            for _ in range(200):
                got = model.run({"x": inputs[index]})["y"]
                if not np.array_equal(got, expected[index]):
                    failures.append(f"thread {index}: wrong result")
                    return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_fast_runner_refuses_concurrent_use(tiny_mlp_path: Path) -> None:
    with EdgeModel.load(tiny_mlp_path) as model:
        runner = model.fast_runner()
        runner._busy.acquire()
        try:
            with pytest.raises(RuntimeError, match="one per thread"):
                runner.run()
        finally:
            runner._busy.release()
        runner.run()


def test_warmup_returns_first_call_time(dynamic_mlp_path: Path) -> None:
    with EdgeModel.load(dynamic_mlp_path) as model:
        assert model.warmup(runs=3, dims={"batch": 2}) > 0
        with pytest.raises(ValueError):
            model.warmup(runs=0)


def test_closed_model_refuses_use(tiny_mlp_path: Path) -> None:
    model = EdgeModel.load(tiny_mlp_path)
    with model:
        assert not model.closed
    assert model.closed
    for action in (
        lambda: model.run(np.zeros((1, 64), np.float32)),
        lambda: model.providers,
        model.fast_runner,
        lambda: model.reload(tiny_mlp_path),
    ):
        with pytest.raises(ModelClosedError):
            action()
    with pytest.raises(ModelClosedError), model:
        pass
    assert isinstance(ModelClosedError(), RuntimeError)
    assert repr(model) == "<EdgeModel closed>"


def test_reload_swaps_between_calls_and_keeps_old_model_on_error(
    tiny_mlp_path: Path, tmp_path: Path
) -> None:
    wider = tmp_path / "wider.onnx"
    _models.tiny_mlp(wider, width=32)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"")
    with EdgeModel.load(tiny_mlp_path) as model:
        model.reload(wider)
        assert model.inputs[0].shape == (1, 32)
        with pytest.raises(Exception, match="empty"):
            model.reload(broken)
        assert model.inputs[0].shape == (1, 32)
        assert model.run(np.zeros((1, 32), np.float32))["y"].shape == (1, 32)


def test_reload_while_threads_run(tiny_mlp_path: Path, tmp_path: Path) -> None:
    # Both versions take and give [1, 64]; every call must complete on one or the other.
    second = tmp_path / "second.onnx"
    _models.tiny_mlp(second)
    stop = threading.Event()
    errors: list[BaseException] = []
    with EdgeModel.load(tiny_mlp_path) as model:

        def worker() -> None:
            x = np.ones((1, 64), np.float32)
            while not stop.is_set():
                try:
                    assert model.run({"x": x})["y"].shape == (1, 64)
                except BaseException as exc:
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(10):
            model.reload(second)
            model.reload(tiny_mlp_path)
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []


def test_required_provider_missing_from_preference_still_gets_a_reason(
    tiny_mlp_path: Path,
) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        EdgeModel.load(tiny_mlp_path, require_providers=["CUDAExecutionProvider"])
    (fallback,) = info.value.fallbacks
    assert (fallback.provider, fallback.kind) == ("CUDAExecutionProvider", "not_built")
    assert "no reason given" not in str(info.value)


# The quick check (a dict of right arrays) must accept exactly what the full check accepts.
@pytest.mark.parametrize(
    ("fixture", "bad", "error"),
    [
        ("tiny_mlp_path", np.zeros((1, 64), np.float64), InputTypeError),
        ("tiny_mlp_path", np.zeros((64,), np.float32), InputRankError),
        ("tiny_mlp_path", np.zeros((2, 64), np.float32), InputShapeError),
        ("tiny_mlp_path", [[0.0] * 64], None),
        ("dynamic_mlp_path", np.zeros((5, 16), np.float16), InputTypeError),
        ("dynamic_mlp_path", np.zeros((5, 16, 1), np.float32), InputRankError),
        ("dynamic_mlp_path", np.zeros((5, 15), np.float32), InputShapeError),
        ("dynamic_mlp_path", np.zeros((5, 16), np.float32), None),
    ],
)
def test_quick_check_catches_what_full_check_catches(
    request: pytest.FixtureRequest, fixture: str, bad: Any, error: type[Exception] | None
) -> None:
    with EdgeModel.load(request.getfixturevalue(fixture)) as model:
        loaded = model._state()
        assert loaded.quick_checks is not None
        if error is None:
            assert model.run({"x": bad})["y"].shape[-1] == model.outputs[0].shape[-1]
        else:
            with pytest.raises(error):
                model.run({"x": bad})
            with pytest.raises(error):
                loaded._validate_fully({"x": bad})


def test_quick_check_agrees_with_full_check_on_random_feeds(dynamic_mlp_path: Path) -> None:
    with EdgeModel.load(dynamic_mlp_path) as model:
        loaded = model._state()

        @hypothesis.settings(max_examples=200, deadline=None)
        @hypothesis.given(
            shape=st.lists(st.integers(0, 20), min_size=0, max_size=3).map(tuple),
            dtype=st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
        )
        def agree(shape: tuple[int, ...], dtype: Any) -> None:
            feed = {"x": np.zeros(shape, dtype)}
            try:
                loaded._validate_fully(feed)
                full: type[Exception] | None = None
            except InputError as exc:
                full = type(exc)
            try:
                loaded.validate(feed)
                quick: type[Exception] | None = None
            except InputError as exc:
                quick = type(exc)
            assert quick == full

        agree()


def test_a_broken_graph_is_not_blamed_on_a_provider_fake_tensorrt(
    tiny_mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fake TensorRT build (none can run here): an invalid graph must fail the load at once,
    # not be retried provider by provider.
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    attempts: list[list[str]] = []
    monkeypatch.setattr(
        runtime,
        "available_providers",
        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"],
    )

    def open_session(source: Any, options: Any, chain: Any) -> Any:
        attempts.append([name for name, _ in chain])
        raise ort_state.InvalidGraph("Type Error: Type (tensor(int64)) of input parameter")

    monkeypatch.setattr(runtime, "_open_session", open_session)
    with pytest.raises(InvalidModelError, match="Type Error"):
        EdgeModel.load(tiny_mlp_path, providers=["TensorrtExecutionProvider"])
    assert attempts == [["TensorrtExecutionProvider", "CPUExecutionProvider"]]
