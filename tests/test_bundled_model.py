"""The embedded default model: accuracy on the held-out digits through EdgeModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_sdk import Classification, EdgeModel, PreprocessError, bundled

HOLDOUT = Path(__file__).parent / "data" / "digits_holdout.npz"


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(HOLDOUT)
    return data["images"], data["labels"]


def test_holdout_set_is_the_documented_split(holdout: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = holdout
    # 20 % of scikit-learn's 1797 digits, stratified: every class present.
    assert images.shape == (360, 8, 8) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))


def test_holdout_accuracy_through_predict_is_at_least_97_percent(
    digits_path: Path, holdout: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = holdout
    with EdgeModel.load(digits_path) as model:
        predicted = []
        for image in images:
            result = model.predict(image).result
            assert isinstance(result, Classification)
            predicted.append(int(result.label))
    accuracy = float(np.mean(np.array(predicted) == labels))
    print(f"held-out accuracy through EdgeModel.predict: {accuracy:.4f} on {len(labels)} images")
    assert accuracy >= 0.97


def test_batched_run_agrees_with_predict(
    digits_path: Path, holdout: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = holdout
    batch = (images.astype(np.float32) / 255.0)[:, None, :, :]
    with EdgeModel.load(digits_path) as model:
        logits = model.run({"image": batch})["logits"]
        single = [int(model.predict(images[i]).result.index) for i in range(20)]
    assert logits.shape == (360, 10)
    assert np.mean(logits.argmax(axis=1) == labels) >= 0.97
    assert single == logits[:20].argmax(axis=1).tolist()


def test_every_bundled_sample_is_classified_as_its_file_name(digits_path: Path) -> None:
    samples = bundled.sample_paths()
    assert len(samples) == 10
    with EdgeModel.load(digits_path) as model:
        for path in samples:
            prediction = model.predict(path)
            assert prediction.result.label == path.stem.split("_")[1]
            assert 0.5 < prediction.result.confidence <= 1.0
            assert len(prediction.result.top) == 3
            assert prediction.times.total_ms > 0


def test_model_is_small_enough_to_ship(digits_path: Path) -> None:
    assert digits_path.stat().st_size < 300 * 1024


def test_predict_without_preprocessing_says_so(tiny_mlp_path: Path) -> None:
    with (
        EdgeModel.load(tiny_mlp_path) as model,
        pytest.raises(PreprocessError, match="no preprocessing"),
    ):
        model.predict(np.zeros((8, 8), np.uint8))
