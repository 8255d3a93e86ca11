"""Train, export and validate edge-sdk's bundled default model: a digits classifier.

The flow this example walks through, end to end:

1. **Train** a small CNN in PyTorch on scikit-learn's bundled 8x8 digits (no download), seeded
   and deterministic so the same command reproduces the same weights.
2. **Export** it to ONNX (input ``image`` [batch, 1, 8, 8] float32, output ``logits``
   [batch, 10] float32, opset 16, weights embedded) and attach the ``edge_sdk.*`` metadata that
   lets a device run it with nothing else: labels, preprocessing and postprocessing specs.
3. **Validate** the exported file with onnxruntime against PyTorch on the held-out set: the same
   accuracy and logits within 1e-4, so what ships is what was measured.
4. **Deploy**: the ``.onnx`` file is self-describing; ``edge_sdk`` loads it, decodes a PNG with the
   declared preprocessing and reports the top-k classes. The sample PNGs and the held-out set
   written here are what the SDK's tests and examples run on.

Usage (from the repository root)::

    python examples/train_digits.py            # full run, rewrites the committed artefacts
    python examples/train_digits.py --quick    # CI smoke run into a temporary directory

Outputs, relative to the repository root or ``--out-dir``:

- ``edge_sdk/models/digits.onnx``
- ``edge_sdk/samples/digit_<label>_<index>.png`` (one held-out image per class)
- ``tests/data/digits_holdout.npz`` (``images`` uint8 N x 8 x 8, ``labels`` int64 N)

Needs the ``examples`` extra: torch, onnxscript, onnx, scikit-learn (plus the SDK's own deps).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
# The script lives outside the package; make ``import edge_sdk`` work without installing it.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from edge_sdk.metadata import write_metadata  # noqa: E402

MODEL_PATH = Path("edge_sdk/models/digits.onnx")
SAMPLES_DIR = Path("edge_sdk/samples")
HOLDOUT_PATH = Path("tests/data/digits_holdout.npz")

SEED = 0
FULL_EPOCHS = 40
QUICK_EPOCHS = 5
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
OPSET = 16
MAX_MODEL_BYTES = 300 * 1024
MAX_LOGIT_DIFF = 1e-4
QUICK_MIN_ACCURACY = 0.85
FULL_MIN_ACCURACY = 0.97

LABELS = [str(d) for d in range(10)]
# The PNG a device decodes is the uint8 image below; dividing by 255 here and declaring the
# same scale in the metadata keeps training and on-device preprocessing identical.
PREPROCESS = {
    "version": 1,
    "color": "L",
    "size": [8, 8],
    "resize": "area",
    "scale": 1 / 255,
    "mean": [0.0],
    "std": [1.0],
    "layout": "NCHW",
    "dtype": "float32",
}
POSTPROCESS = {"version": 1, "task": "classification", "activation": "softmax", "top_k": 3}
MODEL_VERSION = "1.0.0"
PRODUCER = "edge-sdk examples/train_digits.py"


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


METADATA_PROPS: dict[str, str] = {
    "edge_sdk.labels": compact_json(LABELS),
    "edge_sdk.preprocess": compact_json(PREPROCESS),
    "edge_sdk.postprocess": compact_json(POSTPROCESS),
    "edge_sdk.version": MODEL_VERSION,
}


@dataclass(frozen=True)
class Split:
    train_images: np.ndarray  # uint8, N x 8 x 8
    train_labels: np.ndarray  # int64, N
    test_images: np.ndarray
    test_labels: np.ndarray


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a small classifier head: ~38k parameters, ~150 KB as ONNX."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the dataset's 0..16 ink levels to the 0..255 greyscale a PNG stores."""
    return np.round(values * 255 / 16).astype(np.uint8)


def load_split() -> Split:
    digits = load_digits()
    images = to_uint8(digits.images)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return Split(train_x, train_y, test_x, test_y)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x 8 x 8 -> float32 N x 1 x 8 x 8, scaled exactly as the metadata declares."""
    return torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # One thread and deterministic kernels: float reductions then happen in a fixed order, so a
    # rerun reproduces the committed weights bit for bit.
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def shift_batch(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Move each image by up to one pixel: hand-written digits are rarely perfectly centred."""
    padded = nn.functional.pad(batch, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (batch.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def train(split: Split, epochs: int, augment: bool) -> DigitsCNN:
    seed_everything(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    inputs = to_tensor(split.train_images)
    targets = torch.from_numpy(split.train_labels)

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            batch = inputs[index]
            if augment:
                batch = shift_batch(batch, generator)
            optimizer.zero_grad()
            loss = loss_fn(model(batch), targets[index])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
        scheduler.step()
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {total_loss / len(inputs):.4f}")
    return model.eval()


def torch_logits(model: DigitsCNN, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(to_tensor(images)).numpy()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's expected chatter (opset 18 -> 16 conversion, no torchvision)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*treespec", category=FutureWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_onnx(model: DigitsCNN, path: Path) -> None:
    """Export with the torch.export-based (dynamo) exporter, the only one torch keeps maintaining.

    The legacy TorchScript exporter (``dynamo=False``) still works in torch 2.13 but warns that
    it will be removed; relying on it would make the bundled model depend on a dead code path.
    """
    example = to_tensor(np.zeros((2, 8, 8), dtype=np.uint8))
    with quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    # The exporter builds at opset 18 and converts down; if that conversion ever fails it keeps
    # 18 silently, and older device runtimes would then refuse the model.
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise RuntimeError(f"exported opset is {opsets}, expected {OPSET}")
    # The exporter stamps the newest IR version (10), which onnxruntime < 1.18 rejects; the
    # graph uses nothing newer than opset 16 needs, so declare the oldest IR that carries it.
    proto.ir_version = onnx.helper.find_min_ir_version_for(proto.opset_import)
    proto.doc_string = f"{PRODUCER}: 8x8 digits CNN, model version {MODEL_VERSION}"
    onnx.save_model(proto, path)
    onnx.checker.check_model(str(path), full_check=True)


@dataclass(frozen=True)
class Validation:
    torch_accuracy: float
    onnx_accuracy: float
    max_logit_diff: float
    onnx_predictions: np.ndarray


def validate(model: DigitsCNN, path: Path, split: Split) -> Validation:
    expected = torch_logits(model, split.test_images)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"image": to_tensor(split.test_images).numpy()})
    # A single-image batch must work too: that is how a device calls it.
    (single,) = session.run(["logits"], {"image": to_tensor(split.test_images[:1]).numpy()})
    diff = max(
        float(np.max(np.abs(actual - expected))), float(np.max(np.abs(single - expected[:1])))
    )
    onnx_pred = actual.argmax(axis=1)
    return Validation(
        torch_accuracy=float(np.mean(expected.argmax(axis=1) == split.test_labels)),
        onnx_accuracy=float(np.mean(onnx_pred == split.test_labels)),
        max_logit_diff=diff,
        onnx_predictions=onnx_pred,
    )


def check_metadata(path: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    for key, value in METADATA_PROPS.items():
        if props.get(key) != value:
            raise RuntimeError(f"metadata {key} is {props.get(key)!r}, expected {value!r}")


def write_samples(split: Split, predictions: np.ndarray, out_dir: Path) -> list[Path]:
    """One held-out PNG per class: the first one the exported model gets right, so demos work."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("digit_*_*.png"):
        stale.unlink()
    written = []
    for label in range(len(LABELS)):
        candidates = np.flatnonzero((split.test_labels == label) & (predictions == label))
        index = int(candidates[0])
        path = out_dir / f"digit_{label}_{index}.png"
        Image.fromarray(split.test_images[index]).save(path)
        written.append(path)
    return written


def write_holdout(split: Split, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=split.test_images, labels=split.test_labels)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke run: {QUICK_EPOCHS} epochs, outputs in a temporary directory",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="write outputs under this directory instead of the repository root",
    )
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, root: Path) -> int:
    started = time.monotonic()
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else FULL_EPOCHS)
    min_accuracy = QUICK_MIN_ACCURACY if args.quick else FULL_MIN_ACCURACY
    split = load_split()
    model = train(split, epochs, augment=not args.quick)

    model_path = root / MODEL_PATH
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        # Build and check the model beside the target, so a failed run never replaces a good
        # committed model with a bad one.
        staged = Path(staging) / MODEL_PATH.name
        export_onnx(model, staged)
        write_metadata(staged, staged, METADATA_PROPS)
        check_metadata(staged)
        result = validate(model, staged, split)
        size = staged.stat().st_size

        print(f"epochs:               {epochs}")
        print(f"held-out images:      {len(split.test_labels)}")
        print(f"accuracy (torch):     {result.torch_accuracy:.4f}")
        print(f"accuracy (onnxrt):    {result.onnx_accuracy:.4f}")
        print(f"max |logit diff|:     {result.max_logit_diff:.2e}")
        print(f"model size:           {size} bytes")

        failures = []
        if result.onnx_accuracy != result.torch_accuracy or result.max_logit_diff >= MAX_LOGIT_DIFF:
            failures.append("onnxruntime output does not match torch")
        if result.onnx_accuracy < min_accuracy:
            failures.append(f"accuracy {result.onnx_accuracy:.4f} is below {min_accuracy}")
        if size >= MAX_MODEL_BYTES:
            failures.append(f"model is {size} bytes, limit {MAX_MODEL_BYTES}")
        if failures:
            for failure in failures:
                print(f"FAILED: {failure}", file=sys.stderr)
            return 1
        shutil.move(staged, model_path)
    # write_metadata stages through mkstemp, which leaves the file owner-only; the model is a
    # package resource that any user must be able to read.
    model_path.chmod(0o644)

    samples = write_samples(split, result.onnx_predictions, root / SAMPLES_DIR)
    write_holdout(split, root / HOLDOUT_PATH)
    print(f"model:                {model_path}")
    print(f"model sha256:         {sha256(model_path)}")
    print(f"samples:              {len(samples)} PNGs in {samples[0].parent}")
    print(f"held-out set:         {root / HOLDOUT_PATH}")
    print(f"wall time:            {time.monotonic() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out_dir is not None:
        return run(args, args.out_dir.resolve())
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="train-digits-") as tmp:
            print(f"quick mode: outputs go to {tmp} (removed afterwards)")
            return run(args, Path(tmp))
    return run(args, REPO_ROOT)


if __name__ == "__main__":
    sys.exit(main())
