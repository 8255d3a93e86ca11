"""The ``edge-sdk`` command, run for real: in-process through ``main(argv)`` where only the
exit code and the output matter, in a fresh ``python -m edge_sdk`` where the whole process does
(imports, tracebacks, signals, pipes, anything onnxruntime prints from C++).

References:
- exit codes: 0 ok, 1 failure, 2 usage error (argparse's own), 130 = 128 + SIGINT and
  141 = 128 + SIGPIPE (the shell's status for a process killed by a signal, bash manual
  "Exit Status"); edge_sdk/cli/__init__.py documents them.
- Python ignores SIGPIPE and raises BrokenPipeError instead:
  https://docs.python.org/3/library/signal.html#note-on-sigpipe
- nearest-rank percentile: the smallest sample value with at least q% of the sample at or
  below it (https://en.wikipedia.org/wiki/Percentile#The_nearest-rank_method).
- the bundled samples are named ``digit_<label>_<index>.png`` (edge_sdk/bundled.py).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cli import CLI, Result
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

import edge_sdk
from edge_sdk import bundled
from edge_sdk.cli.bench import _percentile
from edge_sdk.cli.info import collect

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SAMPLE_NAME = re.compile(r"digit_(?P<label>\d)_(?P<index>\d+)\.png")
HEAVY_MODULES = ("numpy", "onnxruntime", "numba")
PERCENTILE_KEYS = ("min", "p50", "p90", "p99", "max")


# --------------------------------------------------------------------------------------------
# Helpers and fixtures


def run_process(
    *argv: str | Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_sdk", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def label_in_name(path: str | Path) -> str:
    match = SAMPLE_NAME.fullmatch(Path(path).name)
    assert match is not None, f"not a bundled sample name: {path}"
    return match["label"]


def assert_one_line_failure(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    for fragment in fragments:
        assert re.search(fragment, lines[0], re.IGNORECASE), (fragment, lines[0])


def assert_usage_error(result: Result) -> None:
    assert result.code == 2
    assert "usage" in result.err
    assert "Traceback" not in result.err


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    paths = bundled.sample_paths()
    assert len(paths) == 10
    return paths


@pytest.fixture(scope="module")
def seven(samples: list[Path]) -> Path:
    return next(p for p in samples if label_in_name(p) == "7")


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model paths that cannot load, by what is wrong with them."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "a_directory.onnx").mkdir()
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "notes.txt").write_text("these are release notes, not a model\n")
    return {
        "missing": folder / "missing.onnx",
        "directory": folder / "a_directory.onnx",
        "empty": folder / "empty.onnx",
        "text": folder / "notes.txt",
    }


# What each broken model's one-line message must say besides its path.
BROKEN_PROBLEM = {
    "missing": r"no such file|does not exist|not found",
    "directory": r"directory",
    "empty": r"empty|0 bytes",
    "text": r"onnx",
}


def digit_array(image_path: Path) -> np.ndarray:
    """The bundled model's input for one sample, computed here rather than by edge_sdk:
    grey 8x8, pixel / 255, NCHW (the model's edge_sdk.preprocess metadata)."""
    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (8, 8)
    return (pixels / 255.0).reshape(1, 1, 8, 8)


# --------------------------------------------------------------------------------------------
# run: the bundled model and its samples


def test_run_without_arguments_predicts_every_bundled_sample(cli: CLI, samples: list[Path]) -> None:
    result = cli("run")
    assert result.code == 0, result.err
    header, *lines = result.out.strip().splitlines()
    assert header.startswith(f"model {bundled.model_path()} on ")
    assert CPU in header
    row = re.compile(
        r"(?P<input>.+\.png)\s+label (?P<label>\S+)\s+confidence (?P<confidence>[0-9.]+)"
        r"\s+latency (?P<latency>[0-9.]+) ms"
    )
    assert len(lines) == len(samples) == 10
    for line, sample in zip(lines, samples, strict=True):
        match = row.fullmatch(line)
        assert match is not None, line
        assert Path(match["input"]) == sample
        assert match["label"] == label_in_name(sample)
        assert 0.0 < float(match["confidence"]) <= 1.0
        assert float(match["latency"]) > 0.0


def test_run_json_is_one_document_with_a_result_per_sample(cli: CLI) -> None:
    result = cli("run", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["model"] == str(bundled.model_path())
    assert CPU in document["providers"]
    assert document["fallbacks"] == []
    rows = document["results"]
    assert len(rows) == 10
    for row in rows:
        assert row["label"] == label_in_name(row["input"])
        assert row["top"][0]["label"] == row["label"]
        assert row["top"][0]["score"] == row["confidence"]
        assert [c["score"] for c in row["top"]] == sorted(
            (c["score"] for c in row["top"]), reverse=True
        )
        assert row["latency_ms"] >= row["inference_ms"] > 0


def test_run_as_a_process_prints_only_results_and_steady_latencies() -> None:
    completed = run_process("run", "--json")
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""  # no onnxruntime log lines, no warnings
    latencies = [row["latency_ms"] for row in json.loads(completed.stdout)["results"]]
    # The first image must not carry one-off costs (Pillow's import and decoder set-up, about
    # 20 ms) that the others do not: the CLI warms the predict path before timing.
    assert latencies[0] <= 5 * float(np.median(latencies)) + 5.0, latencies


# --------------------------------------------------------------------------------------------
# run: explicit MODEL and INPUT


def test_run_on_an_explicit_image_copied_elsewhere(
    cli: CLI, digits_path: Path, seven: Path, tmp_path: Path
) -> None:
    image = tmp_path / "a photo of a digit.png"
    shutil.copy(seven, image)
    result = cli("run", digits_path, image)
    assert result.code == 0, result.err
    (line,) = result.out.strip().splitlines()[1:]
    assert line.startswith(str(image))
    assert re.search(r"label 7\s+confidence", line)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_run_resizes_a_larger_image_to_the_models_size(
    cli: CLI, digits_path: Path, seven: Path, tmp_path: Path, mode: str
) -> None:
    # 8x8 -> 32x32 by pixel repetition; the model's "area" resize averages each 4x4 block back
    # to the original pixel, so the prediction must match the original's exactly.
    big = tmp_path / f"seven_32_{mode}.png"
    with Image.open(seven) as image:
        image.convert(mode).resize((32, 32), Image.Resampling.NEAREST).save(big)
    result = cli("run", digits_path, seven, big, "--json")
    assert result.code == 0, result.err
    original, resized = result.json()["results"]
    assert resized["label"] == original["label"] == "7"
    assert resized["confidence"] == pytest.approx(original["confidence"], abs=1e-6)


def test_run_on_npy_arrays_with_the_bundled_model(
    cli: CLI, digits_path: Path, samples: list[Path], tmp_path: Path
) -> None:
    arrays = []
    for sample in samples[:3]:
        path = tmp_path / f"{sample.stem}.npy"
        np.save(path, digit_array(sample))
        arrays.append(path)
    result = cli("run", digits_path, *arrays, "--json")
    assert result.code == 0, result.err
    rows = result.json()["results"]
    assert [row["input"] for row in rows] == [str(p) for p in arrays]
    assert [row["label"] for row in rows] == [label_in_name(s) for s in samples[:3]]
    assert all(row["latency_ms"] > 0 for row in rows)


def test_run_on_a_batched_npy_gives_one_row_per_item(
    cli: CLI, digits_path: Path, samples: list[Path], tmp_path: Path
) -> None:
    batch = np.concatenate([digit_array(sample) for sample in samples[:3]])
    path = tmp_path / "batch.npy"
    np.save(path, batch)
    result = cli("run", digits_path, path, "--json")
    assert result.code == 0, result.err
    rows = result.json()["results"]
    assert [row["input"] for row in rows] == [f"{path}[{i}]" for i in range(3)]
    assert [row["label"] for row in rows] == [label_in_name(s) for s in samples[:3]]


def test_run_mixes_images_and_arrays_in_order(
    cli: CLI, digits_path: Path, samples: list[Path], tmp_path: Path
) -> None:
    array = tmp_path / "three.npy"
    three = next(p for p in samples if label_in_name(p) == "3")
    np.save(array, digit_array(three))
    result = cli("run", digits_path, samples[0], array, samples[9])
    assert result.code == 0, result.err
    labels = re.findall(r"label (\S+)", result.out)
    assert labels == [label_in_name(samples[0]), "3", label_in_name(samples[9])]


def test_run_on_npy_with_a_model_without_postprocessing(
    cli: CLI, tiny_mlp_path: Path, tmp_path: Path
) -> None:
    array = tmp_path / "x.npy"
    np.save(array, np.ones((1, 64), np.float32))
    text = cli("run", tiny_mlp_path, array)
    assert text.code == 0, text.err
    assert re.search(r"x\.npy\s+outputs y\(1, 64\)\s+latency [0-9.]+ ms", text.out)
    document = cli("run", tiny_mlp_path, array, "--json").json()
    (row,) = document["results"]
    assert row["outputs"] == {"y": {"shape": [1, 64], "dtype": "float32"}}


def test_run_options_threads_and_required_cpu(cli: CLI, digits_path: Path, seven: Path) -> None:
    result = cli("run", digits_path, seven, "--threads", "1", "--require-providers", CPU)
    assert result.code == 0, result.err
    assert "label 7" in result.out


# --------------------------------------------------------------------------------------------
# Usage errors: exit 2


def test_run_model_without_input_is_a_usage_error(cli: CLI, digits_path: Path) -> None:
    result = cli("run", digits_path)
    assert result.code == 2
    assert_one_line_failure(result.err, "usage error", "INPUT")
    assert result.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["--frobnicate"],
        ["run", "--frobnicate"],
        ["run", "--threads", "-1"],
        ["run", "--threads", "two"],
        ["info", "extra"],
        ["bench", "--runs", "0"],
        ["bench", "--duration", "0"],
        ["bench", "--warmup", "x"],
    ],
    ids=" ".join,
)
def test_bad_commands_and_options_are_usage_errors(cli: CLI, argv: list[str]) -> None:
    assert_usage_error(cli(*argv))


def test_no_command_prints_help_and_exits_2(cli: CLI) -> None:
    result = cli()
    assert result.code == 2
    assert "usage: edge-sdk" in result.out
    for command in ("run", "bench", "info"):
        assert command in result.out


def test_version(cli: CLI) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"edge-sdk {edge_sdk.__version__}"


def test_console_script_is_installed_and_runs() -> None:
    script = Path(sys.executable).parent / "edge-sdk"
    assert script.exists(), f"no console script next to {sys.executable}: install with pip"
    completed = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"edge-sdk {edge_sdk.__version__}"


# --------------------------------------------------------------------------------------------
# Failures: exit 1, one line, the traceback only with --debug


@pytest.mark.parametrize("kind", sorted(BROKEN_PROBLEM))
def test_a_model_that_cannot_load_is_one_line(
    cli: CLI, broken_models: dict[str, Path], seven: Path, kind: str
) -> None:
    path = broken_models[kind]
    result = cli("run", path, seven)
    assert result.code == 1
    assert result.out == ""
    assert_one_line_failure(result.err, re.escape(path.name), BROKEN_PROBLEM[kind])


@pytest.mark.parametrize("kind", sorted(BROKEN_PROBLEM))
def test_a_model_that_cannot_load_in_a_process(
    broken_models: dict[str, Path], seven: Path, kind: str
) -> None:
    path = broken_models[kind]
    completed = run_process("run", path, seven)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert_one_line_failure(completed.stderr, re.escape(path.name), BROKEN_PROBLEM[kind])


@pytest.mark.parametrize("kind", sorted(BROKEN_PROBLEM))
def test_debug_shows_the_traceback(broken_models: dict[str, Path], seven: Path, kind: str) -> None:
    path = broken_models[kind]
    completed = run_process("--debug", "run", path, seven)
    assert completed.returncode == 1
    assert "Traceback (most recent call last)" in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert re.match(r"edge_sdk\.errors\.\w+Error: ", last), last
    assert path.name in last


def test_bench_reports_a_broken_model_in_one_line(cli: CLI, broken_models: dict[str, Path]) -> None:
    result = cli("bench", broken_models["empty"], "--runs", "1")
    assert result.code == 1
    assert_one_line_failure(result.err, "empty.onnx", BROKEN_PROBLEM["empty"])


def test_a_missing_input_image_is_one_line(cli: CLI, digits_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_digit.png"
    result = cli("run", digits_path, missing)
    assert result.code == 1
    assert result.out == ""
    assert_one_line_failure(result.err, "no_such_digit.png", "does not exist|no such file")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (np.zeros((1, 1, 8, 8), np.float64), r"float32"),
        (np.zeros((1, 8, 8), np.float32), r"dimensions"),
        (b"not numpy at all", r"cannot read array"),
    ],
    ids=["float64", "rank-3", "not-npy"],
)
def test_a_wrong_npy_input_is_one_line(
    cli: CLI, digits_path: Path, tmp_path: Path, content: Any, problem: str
) -> None:
    path = tmp_path / "input.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    result = cli("run", digits_path, path)
    assert result.code == 1
    assert_one_line_failure(result.err, problem)


def test_an_image_for_a_model_without_preprocessing_is_one_line(
    cli: CLI, tiny_mlp_path: Path, seven: Path
) -> None:
    result = cli("run", tiny_mlp_path, seven)
    assert result.code == 1
    assert_one_line_failure(result.err, "preprocessing")


def test_not_an_image_is_one_line(cli: CLI, digits_path: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    result = cli("run", digits_path, fake)
    assert result.code == 1
    assert_one_line_failure(result.err, "fake.png")


# --------------------------------------------------------------------------------------------
# Execution providers (this onnxruntime is the CPU wheel: CUDA is not built in)


@pytest.fixture(scope="module")
def cuda_not_built() -> None:
    from edge_sdk.runtime import available_providers

    # These tests need a provider that is not built in; the project installs the CPU wheel.
    assert CUDA not in available_providers(), "expected onnxruntime's CPU wheel here"


@pytest.mark.usefixtures("cuda_not_built")
def test_requiring_cuda_fails_in_one_line_naming_it() -> None:
    completed = run_process("run", "--require-providers", CUDA)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert_one_line_failure(completed.stderr, CUDA)


@pytest.mark.usefixtures("cuda_not_built")
def test_preferring_cuda_falls_back_to_the_cpu_and_says_why(cli: CLI) -> None:
    document = cli("run", "--providers", f"{CUDA},{CPU}", "--json").json()
    assert document["providers"] == [CPU]
    (fallback,) = document["fallbacks"]
    assert fallback["provider"] == CUDA
    assert fallback["kind"] == "not_built"
    assert fallback["reason"]
    assert len(document["results"]) == 10
    text = cli("run", "--providers", f"{CUDA},{CPU}")
    assert text.code == 0
    assert re.fullmatch(rf"fallback: {CUDA} \(not_built\): .+\n", text.err)


@pytest.mark.usefixtures("cuda_not_built")
def test_bench_lists_the_cuda_fallback(cli: CLI) -> None:
    result = cli("bench", "--providers", f"{CUDA},{CPU}", "--runs", "3", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["providers"] == [CPU]
    assert len(document["fallbacks"]) == 1
    assert document["fallbacks"][0].startswith(CUDA)


# --------------------------------------------------------------------------------------------
# bench


def assert_latency_report(document: dict[str, Any]) -> None:
    latency = document["latency_ms"]
    values = [latency[key] for key in PERCENTILE_KEYS]
    assert all(v > 0 for v in values), latency
    assert values == sorted(values), latency
    assert latency["min"] <= latency["mean"] <= latency["max"]
    assert document["throughput_per_s"] > 0
    assert CPU in document["providers"]


@pytest.mark.parametrize("fast", [False, True], ids=["run", "fast"])
def test_bench_bundled_model(cli: CLI, fast: bool) -> None:
    result = cli("bench", "--runs", "20", "--json", *(["--fast"] if fast else []))
    assert result.code == 0, result.err
    document = result.json()
    assert document["model"] == str(bundled.model_path())
    assert document["runs"] == 20
    assert document["path"] == ("fast" if fast else "run")
    assert document["inputs"] == {"image": [1, 1, 8, 8]}
    assert_latency_report(document)


@pytest.mark.parametrize("fast", [False, True], ids=["run", "fast"])
def test_bench_symbolic_batch(cli: CLI, dynamic_mlp_path: Path, fast: bool) -> None:
    argv = ["bench", dynamic_mlp_path, "--dim", "batch=4", "--runs", "20", "--json"]
    result = cli(*argv, *(["--fast"] if fast else []))
    assert result.code == 0, result.err
    document = result.json()
    assert document["runs"] == 20
    assert document["inputs"] == {"x": [4, 16]}
    assert document["items_per_s"] == pytest.approx(4 * document["throughput_per_s"])
    assert_latency_report(document)


def test_bench_symbolic_dim_defaults_to_one(cli: CLI, dynamic_mlp_path: Path) -> None:
    document = cli("bench", dynamic_mlp_path, "--runs", "3", "--json").json()
    assert document["inputs"] == {"x": [1, 16]}


def test_bench_for_a_duration(cli: CLI) -> None:
    started = time.perf_counter()
    result = cli("bench", "--duration", "0.2", "--json")
    wall = time.perf_counter() - started
    assert result.code == 0, result.err
    document = result.json()
    assert document["runs"] >= 1
    timed = document["runs"] / document["throughput_per_s"]
    assert 0.2 <= timed < wall
    assert_latency_report(document)


def test_bench_text_report(cli: CLI, dynamic_mlp_path: Path) -> None:
    result = cli("bench", dynamic_mlp_path, "--dim", "batch=2", "--runs", "5", "--no-progress")
    assert result.code == 0, result.err
    assert result.err == ""
    assert re.search(r"^inputs\s+x\(2, 16\)$", result.out, re.MULTILINE)
    assert re.search(r"^runs\s+5 in ", result.out, re.MULTILINE)
    latency = re.search(
        r"^latency\s+min (\S+)\s+p50 (\S+)\s+p90 (\S+)\s+p99 (\S+)\s+max (\S+)\s+ms$",
        result.out,
        re.MULTILINE,
    )
    assert latency is not None, result.out
    values = [float(v) for v in latency.groups()]
    assert values == sorted(values)
    assert re.search(r"^throughput [0-9.]+ runs/s, [0-9.]+ items/s$", result.out, re.MULTILINE)


@pytest.mark.parametrize(
    "argv",
    [
        ["--dim", "batch=0"],
        ["--dim", "nonsense"],
        ["--dim", "=4"],
        ["--dim", "batch=four"],
        ["--runs", "5", "--duration", "1"],
    ],
    ids=" ".join,
)
def test_bench_usage_errors(cli: CLI, dynamic_mlp_path: Path, argv: list[str]) -> None:
    result = cli("bench", dynamic_mlp_path, *argv)
    assert_usage_error(result)
    assert result.out == ""


def test_bench_rejects_a_dim_the_model_does_not_have(cli: CLI, dynamic_mlp_path: Path) -> None:
    # A typo must not silently bench the default size.
    result = cli("bench", dynamic_mlp_path, "--dim", "bacth=4", "--runs", "3")
    assert result.code == 2
    assert result.out == ""
    assert_one_line_failure(result.err, "usage error", "bacth", "batch")


def nearest_rank(ordered: list[float], q: int) -> float:
    n = len(ordered)
    return next(v for rank, v in enumerate(ordered, 1) if rank * 100 >= q * n)


@given(
    st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=600),
    st.sampled_from([1, 25, 50, 90, 99, 100]),
)
@example([float(v) for v in range(1, 11)], 50)  # 5.0: round(5.5) went to even, giving 6.0
@example([float(v) for v in range(1, 501)], 99)  # 495.0 with the default 500 runs, not 496.0
def test_percentile_is_nearest_rank(values: list[float], q: int) -> None:
    ordered = sorted(values)
    assert _percentile(ordered, q) == nearest_rank(ordered, q)


# --------------------------------------------------------------------------------------------
# info


INFO_KEYS = {
    "sdk",
    "python",
    "onnxruntime",
    "numpy",
    "numba",
    "providers_built_in",
    "cpu_model",
    "cpu_cores",
    "memory_total_mib",
}


def test_info_json(cli: CLI) -> None:
    result = cli("info", "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert set(info) >= INFO_KEYS
    assert info["sdk"] == edge_sdk.__version__
    assert info["python"] == platform.python_version()
    assert info["numpy"] == np.__version__
    assert isinstance(info["onnxruntime"], str)
    assert info["onnxruntime"]
    assert CPU in info["providers_built_in"]
    assert isinstance(info["cpu_model"], str)
    assert info["cpu_model"]
    assert info["cpu_cores"] == os.cpu_count()
    if Path("/proc/meminfo").exists():
        assert isinstance(info["memory_total_mib"], int)
        assert info["memory_total_mib"] > 0


def test_info_text(cli: CLI) -> None:
    result = cli("info")
    assert result.code == 0, result.err
    rows = dict(line.split(None, 1) for line in result.out.strip().splitlines())
    assert rows["edge-sdk"] == edge_sdk.__version__
    assert CPU in rows["providers"]
    for key in ("python", "onnxruntime", "numpy", "numba", "cpu", "memory"):
        assert rows[key]


def test_info_reads_a_board_model_from_cpuinfo(tmp_path: Path) -> None:
    # 64-bit Raspberry Pi OS: no "model name" line; the board is in "Model".
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\n\n"
        "Revision\t: c03114\nModel\t\t: Example Board 4 Rev 1.4\n"
    )
    (proc / "meminfo").write_text(
        "MemTotal:        3884096 kB\nMemFree:         1000000 kB\nMemAvailable:    2048000 kB\n"
    )
    info = collect(root=tmp_path)
    assert info["cpu_model"] == "Example Board 4 Rev 1.4"
    assert info["memory_total_mib"] == 3884096 // 1024
    assert info["memory_available_mib"] == 2000


def test_info_falls_back_to_the_device_tree_model(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 62.50\n")
    (tmp_path / "proc/device-tree/model").write_bytes(b"Example Dev Kit\x00")
    info = collect(root=tmp_path)
    assert info["cpu_model"] == "Example Dev Kit"
    assert info["memory_total_mib"] is None


def test_info_without_proc_still_answers(tmp_path: Path) -> None:
    info = collect(root=tmp_path)
    assert isinstance(info["cpu_model"], str)
    assert info["memory_total_mib"] is None


# --------------------------------------------------------------------------------------------
# Lazy imports, in a fresh interpreter each


# Runs main(argv) and prints, as the last line, which heavy modules were imported.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from edge_sdk.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    sys.stdout.flush()
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
    print("\\nLOADED " + json.dumps(loaded))
    """
)


def imported_heavy_modules(*argv: str, code: str | None = None) -> list[str]:
    script = f"HEAVY = {json.dumps(json.dumps(HEAVY_MODULES))}\n" + (code or _PROBE)
    completed = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED "), completed.stdout
    return list(json.loads(last.removeprefix("LOADED ")))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], [], ["run", "--help"], ["bench", "--help"], ["info", "--help"]],
    ids=lambda argv: " ".join(argv) or "no-command",
)
def test_help_imports_no_engine(argv: list[str]) -> None:
    assert imported_heavy_modules(*argv) == []


def test_import_edge_sdk_imports_no_engine() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        import edge_sdk
        edge_sdk.__version__, edge_sdk.__all__
        loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
        print("LOADED " + json.dumps(loaded))
        """
    )
    assert imported_heavy_modules(code=code) == []


def test_info_does_not_import_numba() -> None:
    loaded = imported_heavy_modules("info", "--json")
    assert "numba" not in loaded
    assert "onnxruntime" in loaded  # it does ask onnxruntime for its providers


# --------------------------------------------------------------------------------------------
# The process: pipes and signals


def env_with(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize("unbuffered", [None, "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", [["run"], ["info"], ["--help"]], ids=" ".join)
def test_a_closed_output_pipe_ends_quietly(argv: list[str], unbuffered: str | None) -> None:
    # `edge-sdk run | head -1`: the reader is gone before the first write.
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(PYTHONUNBUFFERED=unbuffered),
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert err == ""
    # 141 = 128 + SIGPIPE; argparse's help swallows the error itself when nothing is buffered.
    assert process.returncode in ((0, 141) if argv == ["--help"] else (141,))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_exits_130_with_one_line() -> None:
    # A shell starts background jobs with SIGINT ignored, exec keeps it ignored, and Python then
    # never raises KeyboardInterrupt. A handled signal is reset to the default by exec instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_sdk", "bench", "--duration", "10", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(1.5)  # past the imports and the model load, into the timed loop
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert out == ""
    assert err == "edge-sdk: interrupted\n"
