"""edge_sdk.telemetry: buckets and percentiles, and what EdgeModel records on real onnxruntime
sessions (the bundled model), from several threads, per model version, on and off."""

from __future__ import annotations

import hashlib
import math
import random
import threading

import numpy as np
import pytest

from edge_sdk import bundled, telemetry
from edge_sdk.errors import InputShapeError
from edge_sdk.runtime import EdgeModel
from edge_sdk.store import ModelStore
from edge_sdk.telemetry import BUCKETS, bucket_of, bucket_upper_ms


@pytest.fixture(autouse=True)
def _recording_on():
    telemetry.configure(enabled=True)
    yield
    telemetry.configure(enabled=None)


def test_every_duration_falls_in_the_bucket_whose_edges_hold_it() -> None:
    rng = random.Random(5)
    for _ in range(5000):
        seconds = 10 ** rng.uniform(-7, 2)
        index = bucket_of(seconds)
        assert 0 <= index < BUCKETS
        millis = seconds * 1000
        assert millis <= bucket_upper_ms(index) * (1 + 1e-12)
        if index > 1:
            assert millis >= bucket_upper_ms(index - 1) * (1 - 1e-12)
            assert bucket_upper_ms(index) / bucket_upper_ms(index - 1) <= 1.25 + 1e-9
    assert bucket_of(0.0) == 0 and bucket_of(1e9) == BUCKETS - 1
    assert math.isinf(bucket_upper_ms(BUCKETS - 1))


def test_percentiles_are_within_a_bucket_of_the_truth() -> None:
    stats = telemetry.ModelStats("p", "1")
    rng = random.Random(9)
    samples = [rng.lognormvariate(math.log(0.002), 0.6) for _ in range(20000)]
    for value in samples:
        stats.record(telemetry.INFERENCE, value)
    snap = stats.snapshot()
    ordered = sorted(samples)
    for q in (0.5, 0.95, 0.99):
        true_ms = ordered[math.ceil(q * len(ordered)) - 1] * 1000
        estimate = snap.percentile("inference", q)
        assert estimate is not None
        assert true_ms <= estimate <= true_ms * 1.25, (q, true_ms, estimate)
    assert snap.calls == 20000 and snap.count("inference") == 20000
    assert snap.percentile("pre", 0.5) is None


def test_run_and_predict_record_calls_stages_and_errors() -> None:
    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        key = ("digits", model._loaded.metadata.version or "-")
        before = telemetry.snapshot().get(key)
        image = np.zeros((8, 8), np.uint8)
        for _ in range(5):
            model.predict(image)
        feed = model.example_inputs()
        for _ in range(3):
            model.run(feed)
        with pytest.raises(InputShapeError):
            model.run({model.inputs[0].name: np.zeros((1, 1, 9, 9), np.float32)})
        after = telemetry.snapshot()[key]
    delta = after - before if before is not None else after
    assert delta.calls == 8  # 5 predictions + 3 runs; the refused call is an error
    assert delta.count("inference") == 8
    assert delta.count("pre") == 5 and delta.count("post") == 5
    assert delta.errors == {"InputShapeError": 1}
    assert delta.percentile("inference", 0.5) > 0


def test_threads_record_without_losing_a_call() -> None:
    stats = telemetry.ModelStats("threads", "1")
    per_thread = 20000

    def hammer() -> None:
        for _ in range(per_thread):
            stats.record(telemetry.INFERENCE, 0.0001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    middle = stats.snapshot()  # read while they write: never more than was recorded
    for thread in threads:
        thread.join()
    final = stats.snapshot()
    assert middle.calls <= final.calls == 4 * per_thread
    assert final.count("inference") == 4 * per_thread


def test_a_model_from_a_store_records_under_its_name_and_store_version(tmp_path) -> None:
    data = bundled.model_path().read_bytes()
    store = ModelStore(tmp_path / "store")
    chunk = 65536
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    with store.begin_download(
        "reader",
        7,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk,
        chunk_hashes=[hashlib.sha256(c).hexdigest() for c in chunks],
        manifest_bytes=b"{}",
    ) as download:
        download.write_chunks(enumerate(chunks))
        download.complete()
    store.activate("reader", 7)
    with EdgeModel.from_store(store, "reader", profile=None) as model:
        model.run(model.example_inputs())
    assert telemetry.snapshot()[("reader", "7")].calls >= 1


def test_recording_off_records_nothing() -> None:
    telemetry.configure(enabled=False)
    assert telemetry.model_stats("x", "1") is None
    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        assert model._loaded.stats is None
        model.run(model.example_inputs())


def test_bucketing_many_at_once_equals_one_at_a_time_on_every_edge() -> None:
    edges = [bucket_upper_ms(i) / 1000 for i in range(BUCKETS - 1)]
    values = [0.0, -0.0, -1.0, -1e-9, 1e-6, 1e-7, 5e-7, 1e300, float("inf"), 120.0, 1e9]
    for edge in edges:
        values += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf)]
    rng = random.Random(3)
    values += [10 ** rng.uniform(-8, 3) for _ in range(5000)]
    many = telemetry.buckets_of(values)
    assert many.tolist() == [bucket_of(v) for v in values]
    assert telemetry.buckets_of(np.array(values)).tolist() == many.tolist()


def test_fast_runner_counts_stay_exact_when_runners_come_and_go() -> None:
    import gc

    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        key = ("digits", model._loaded.metadata.version or "-")
        before = telemetry.snapshot().get(key)
        feed = model.example_inputs()
        calls = 0
        for round_ in range(6):
            runner = model.fast_runner()
            for name, value in feed.items():
                runner.inputs[name][...] = value
            for _ in range(50 + round_):
                runner.run()
                calls += 1
            del runner
            gc.collect()  # its shard goes back to the pool for the next runner
        after = telemetry.snapshot()[key]
    delta = after - before if before is not None else after
    assert delta.calls == calls and delta.count("inference") == calls


def test_a_failed_postprocessing_counts_the_error_not_a_call() -> None:
    from edge_sdk.errors import PostprocessError

    with EdgeModel.load(bundled.model_path(), profile=None) as model:
        key = ("digits", model._loaded.metadata.version or "-")
        before = telemetry.snapshot().get(key)

        def broken(outputs, geometry):
            raise PostprocessError("labels do not match the outputs")

        model._loaded.postprocessor = broken
        with pytest.raises(PostprocessError):
            model.predict(np.zeros((8, 8), np.uint8))
        after = telemetry.snapshot()[key]
    delta = after - before if before is not None else after
    assert delta.calls == 0 and delta.errors == {"PostprocessError": 1}
