"""Every benchmark script in its smoke mode (``--smoke``): the same code as a measurement, on a
few hundred of the bundled digits and a tiny network, so that a script whose imports or calls
went stale fails here instead of on the day someone measures. Nothing is measured, and the
results go to a temporary folder, never to benchmarks/results.

The scripts run in this process (one TensorFlow import for all), through their ``main(argv)``;
inference.py starts its own `mnist-pipeline predict` and `serve` processes, as it does by hand.
"""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """The folder the scripts write their JSON to; benchmarks/ importable as the scripts run."""
    monkeypatch.setenv("BENCHMARK_RESULTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return tmp_path


def script(name: str):
    return importlib.import_module(name)


def written(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_real_mnist_folds_accumulate_and_the_table_prints(results: Path, capsys) -> None:
    real_mnist = script("real_mnist")
    real_mnist.main(["--smoke", "--reference"])
    real_mnist.main(["--smoke"])
    runs = written(results, "sample_recipes")["runs"]
    assert [run["label"] for run in runs] == ["reference", "smoke"]
    assert set(runs[1]["test_accuracy_by_test_time_shifts"]) == {"0", "4", "8"}
    real_mnist.main(["--smoke", "--table"])
    assert "| smoke |" in capsys.readouterr().out


def test_real_mnist_on_the_pipeline_split(results: Path, capsys) -> None:
    """The protocol of Fashion-MNIST's figures, here on the bundled digits."""
    real_mnist = script("real_mnist")
    real_mnist.main(["--smoke", "--pipeline-split", "--reference"])
    real_mnist.main(["--smoke", "--pipeline-split", "--label", "pipeline"])
    runs = written(results, "sample_recipes")["runs"]
    assert [run["label"] for run in runs] == ["reference", "pipeline"]
    assert all(run["pipeline_split"] and run["seed"] == 42 for run in runs)
    assert "| pipeline |" in capsys.readouterr().out


def test_calibration(results: Path) -> None:
    script("calibration").main(["--smoke"])
    measured = written(results, "calibration-default")
    assert measured["temperature"] > 0
    assert len(measured["results"]) == 2  # T = 1 and the fitted T, on the held-out digits


def test_uncertainty(results: Path) -> None:
    script("uncertainty").main(["--smoke"])
    kinds = written(results, "uncertainty")["kinds"]
    assert {"val digits", "test digits", "blank", "letters"} <= set(kinds)
    assert kinds["blank"]["not_a_digit"] == 1.0


@pytest.mark.slow  # a `predict` process and a server for each kind: TensorFlow's import twice
def test_inference_onnx_and_keras_in_processes_and_servers(results: Path) -> None:
    script("inference").main(["--smoke"])
    measured = written(results, "inference")
    assert set(measured["images_per_s"]) == {"onnx", "keras"}
    assert all(run["requests_per_s"] > 0 for kind in ("onnx", "keras")
               for run in measured["serve"][kind]["throughput"])


def test_the_shared_helpers_import_from_a_test() -> None:
    """mnist_pipeline/testing.py is the one copy of these helpers for scripts and tests alike."""
    from PIL import Image

    from mnist_pipeline.testing import free_port, png_bytes, sample_digit

    assert 1024 <= free_port() < 65536
    picture = Image.open(io.BytesIO(png_bytes(sample_digit(), size=56)))
    assert picture.size == (56, 56) and picture.mode == "L"


def test_drawn_recipes_on_a_pen_file_of_the_tests_own(results: Path, tmp_path, capsys) -> None:
    """Both sources at once: the bundled digits and a small UNIPEN file made here (the smoke
    mode reads any pen file; a measurement checks UCI's digest)."""
    from pen_data import pen_text

    pen = tmp_path / "pen.tra"
    pen.write_text(pen_text(range(1, 11), per_writer=20, seed=0))
    drawn_recipes = script("drawn_recipes")
    drawn_recipes.main(["--smoke", "--pen", str(pen), "--label", "smoke"])
    (run,) = json.loads((results / "drawn_recipes.json").read_text())
    assert run["drawn_in_training"] and run["drawn_heldout"]["digits"] == 40
    assert set(run) >= {"mnist_heldout", "drawn_heldout", "drawn_small", "train_cpu_s"}
    drawn_recipes.main(["--smoke", "--table"])
    assert "| smoke |" in capsys.readouterr().out


def test_corrections_teach_on_a_smoke_base(results: Path, tmp_path, capsys) -> None:
    """A round of corrections fine-tuned into a base that drawn_recipes.py saved."""
    from pen_data import pen_text

    pen = tmp_path / "pen.tra"
    pen.write_text(pen_text(range(1, 11), per_writer=20, seed=0))
    base = tmp_path / "base"
    script("drawn_recipes").main(["--smoke", "--pen", str(pen), "--save", str(base)])
    script("corrections_teach").main(["--smoke", "--base", str(base), "--hand", "page",
                                      "--pairs", "1", "--counts", "1", "--seeds", "1"])
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith('{"writer"')]
    assert runs and {"right", "scored", "mnist", "page", "cpu_s"} <= set(runs[0])


# Scripts whose smoke runs live with their own tests (serving, hostile traffic, corrections,
# scans: tests/test_scans.py); the shared modules are not scripts.
ELSEWHERE = {"serve_latency.py", "serve_hostile.py", "corrections.py", "scan_recipes.py"}
SHARED = {"common.py"}


def test_every_other_script_is_run_here() -> None:
    """A new script gets a smoke mode and a test in this file."""
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")
               if path.name not in ELSEWHERE | SHARED}
    tested = {name for name in scripts if f'script("{name}")' in Path(__file__).read_text()}
    assert scripts == tested, f"not run by a smoke test: {sorted(scripts - tested)}"
