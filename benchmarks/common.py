"""Shared helpers of the benchmark scripts: data, params overrides, timing, tables, JSON,
and the smoke mode.

Run the scripts from the repository root with the venv's python, e.g.
``.venv/bin/python benchmarks/real_mnist.py``; they import the project's own code
(``mnist_pipeline``) so that what is measured is what the pipeline runs. Every script takes
``--smoke``: the same code on a few hundred bundled digits and a tiny network, in seconds,
writing its JSON to a temporary folder (tests/test_benchmarks_smoke.py runs them all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SAMPLE_RECIPE = ROOT / "recipes" / "sample.yaml"  # what `make sample` runs
RECIPES = {"mnist-sample": SAMPLE_RECIPE,  # each dataset's overrides of params.yaml
           "fashion-mnist": ROOT / "recipes" / "fashion-mnist.yaml"}  # `make fashion`
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # mnist_pipeline and stages/ when run from anywhere

from mnist_pipeline import idx, preprocess  # noqa: E402
from mnist_pipeline.params import Params, as_dict, load_params, params_from_dict  # noqa: E402

DATASETS = ("mnist-sample", "fashion-mnist")
# --smoke: a network that trains in seconds; the scripts add these after every other override.
SMOKE_OVERRIDES = ["model.conv_filters=[8]", "model.dense_units=16", "train.epochs=2",
                   "train.warmup_epochs=0", "train.early_stopping_patience=0",
                   "train.ema_momentum=0"]
SMOKE_SIZES = {"train": 512, "val": 128, "test": 128}


def recipe_overrides(recipe: Path = SAMPLE_RECIPE) -> list[str]:
    """The ``key=value`` overrides of a recipe file, by default ``make sample``'s
    (recipes/sample.yaml), as the Makefile passes them to ``dvc exp run -S``."""
    import yaml

    entries = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return [f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
            for key, value in entries.items()]


def argument_parser(doc: str | None, overrides: bool = True) -> argparse.ArgumentParser:
    """The scripts' parser: their docstring as help, ``--smoke``, and (``overrides``) ``-S
    key=value`` (repeatable) into ``overrides``, for :func:`apply_overrides`."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if overrides:
        parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                            metavar="KEY=VALUE", help="params override, as `dvc exp run -S`")
    add_smoke(parser)
    return parser


def add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on tiny data: checks that the script runs, measures "
                             "nothing; results go to a temporary folder")


def start_smoke() -> None:
    """Send this run's results to $BENCHMARK_RESULTS_DIR, or a new temporary folder: a smoke
    run never touches benchmarks/results."""
    if not os.environ.get("BENCHMARK_RESULTS_DIR"):
        os.environ["BENCHMARK_RESULTS_DIR"] = tempfile.mkdtemp(prefix="bench-smoke-")


def results_dir() -> Path:
    return Path(os.environ.get("BENCHMARK_RESULTS_DIR") or RESULTS_DIR)


def smoke_subset(splits: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The first SMOKE_SIZES digits of each split."""
    return {name: tuple(array[:SMOKE_SIZES[name]] for array in split)
            for name, split in splits.items()}


def apply_overrides(params: Params, overrides: list[str]) -> Params:
    """``params`` with dotted ``key=value`` overrides (values parsed as YAML), re-validated."""
    import yaml

    raw = as_dict(params)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise SystemExit(f"override {override!r}: expected key=value")
        *parents, leaf = key.strip().split(".")
        section = raw
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = yaml.safe_load(value)
    return params_from_dict(raw)


def base_params(overrides: list[str]) -> Params:
    return apply_overrides(load_params(ROOT / "params.yaml"), overrides)


def load_splits(dataset: str, params: Params) -> dict[str, tuple[Any, Any]]:
    """{"train", "val", "test"} of (float32 images in [0, 1], uint8 labels), as the pipeline
    prepares them (same stratified, seeded splits)."""
    if dataset == "mnist-sample":
        from mnist_pipeline.datasets import get_dataset
        from mnist_pipeline.download import download_dataset

        with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
            raw_dir = Path(tmp) / "raw"
            download_dataset(get_dataset("mnist-sample"), raw_dir)
            raw = preprocess.load_raw(raw_dir)
    elif dataset == "fashion-mnist":
        def pair(prefix: str):
            return (idx.read(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"),
                    idx.read(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"))
        raw = preprocess.RawDataset(name=dataset, train=pair("train"), test=pair("t10k"))
    else:
        raise SystemExit(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return preprocess.prepare_splits(raw, params.preprocess, params.seed)


def untrained_model(folder: Path, params: Params, name: str = "model.keras") -> Path:
    """``params``' network, untrained, saved as the train stage saves its model (scaling and
    test-time shifts inside) into ``folder``: speed and memory do not depend on the weights."""
    from mnist_pipeline.model import build_network, export_model

    target = folder / name
    export_model(build_network(params.model), params.model.test_time_shifts).save(target)
    return target


def epoch_timer():
    """A Keras callback recording, per epoch, wall and process-CPU seconds since fit began,
    the time spent on training batches only, and the logs (val_accuracy...)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self, max_seconds: float | None = None):
            super().__init__()
            self.max_seconds = max_seconds
            self.epochs: list[dict[str, float]] = []

        def on_train_begin(self, logs=None):
            self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()
            self.last_batch_end = self.epoch_start

        def on_train_batch_end(self, batch, logs=None):
            self.last_batch_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.epochs.append({
                "epoch": epoch + 1,
                "wall_s": now - self.start_wall,
                "cpu_s": time.process_time() - self.start_cpu,
                "epoch_wall_s": now - self.epoch_start,
                "train_batches_wall_s": self.last_batch_end - self.epoch_start,
                **{key: float(value) for key, value in (logs or {}).items()
                   if isinstance(value, (int, float))},
            })
            if self.max_seconds is not None and now - self.start_wall > self.max_seconds:
                self.model.stop_training = True

    return EpochTimer


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_end": load}


def load_runs(name: str) -> dict[str, Any]:
    """benchmarks/results/<name>.json of a script whose runs accumulate ({"runs": [...]})."""
    path = results_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": []}


def save_run(name: str, results: dict[str, Any], run: dict[str, Any],
             key: tuple[str, ...]) -> None:
    """Add ``run`` to the runs in the file now (another series may have added some since
    ``results`` was read), replacing an earlier run with the same ``key`` fields, and write the
    file at once: a long series loses nothing when it is stopped. ``results`` is updated."""
    results["runs"] = load_runs(name)["runs"]
    results["runs"] = [old for old in results["runs"]  # a field may be absent from both
                       if [old.get(field) for field in key] != [run.get(field) for field in key]]
    results["runs"].append(run)
    results.pop("machine", None)  # write_results adds today's
    write_results(name, results)


def write_results(name: str, results: dict[str, Any]) -> Path:
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table (paste-able into benchmarks/README.md)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
        return "-" if value is None else str(value)
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")
