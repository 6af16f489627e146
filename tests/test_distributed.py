"""train.distribute: chief detection, and real multi-worker training on 127.0.0.1.

The slow tests start two `python stages/train.py` processes, each in its own folder (its own
params.yaml and data/prepared, as on two machines) with its own TF_CONFIG.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from committed import committed_params

from mnist_pipeline import distribute, fileio
from mnist_pipeline.params import params_from_dict

PROJECT = Path(__file__).resolve().parents[1]
GUARD_SECONDS = 120  # no subprocess here may run longer: a hang fails the test, not CI

TINY_PARAMS = {
    "data": {"dataset": "mnist-sample", "drawn": False},  # no pen file: offline
    "model": {"conv_filters": [8], "dense_units": 16, "batch_norm": True},
    "train": {"epochs": 1, "batch_size": 64, "lr_schedule": "constant", "warmup_epochs": 0,
              "early_stopping_patience": 0, "distribute": "multi_worker",
              "augmentation": {"rotation_degrees": 0, "translation_fraction": 0,
                               "zoom_fraction": 0}},
}


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize(("raw", "chief"), [
    (None, True),
    ("", True),
    (tf_config([1, 2], 0), True),
    (tf_config([1, 2], 1), False),
    ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "chief", "index": 0}}',
     True),
    ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
     False),
    ('{"cluster": {"worker": ["h:1"], "evaluator": ["h:2"]}, '
     '"task": {"type": "evaluator", "index": 0}}', False),
])
def test_chief_detection_from_tf_config(raw, chief):
    assert distribute.is_chief(distribute.parse_tf_config(raw)) is chief


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", r"TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', r'expected \{"cluster"'),
    ('{"cluster": {"worker": ["h:1"]}}', r'"task" needs a "type" and an "index"'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}',
     r"is not in the cluster"),
])
def test_malformed_tf_config_is_refused(raw, message):
    with pytest.raises(distribute.DistributeError, match=message):
        distribute.parse_tf_config(raw)


def test_multi_worker_without_tf_config_fails_clearly(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeError, match="TF_CONFIG is not set"):
        distribute.make_strategy("multi_worker")


def test_only_multi_worker_reads_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 1))
    assert distribute.this_worker("none") == distribute.Worker(multi_worker=False, chief=True)
    assert distribute.this_worker("mirrored").chief
    assert distribute.this_worker("multi_worker") == distribute.Worker(multi_worker=True,
                                                                       chief=False)
    assert str(distribute.this_worker("multi_worker")) == "non-chief worker: writes no outputs"


def test_distribute_defaults_to_none():
    assert params_from_dict({}).train.distribute == "none"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def prepared_arrays(sample_digits):
    """A few hundred real digits as the preprocess stage writes them, per split."""
    images, labels = sample_digits
    prepared = (images / 255).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(labels))
    bounds = {"train": (0, 320), "val": (320, 400), "test": (400, 500)}
    return {split: (prepared[order[a:b]], labels[order[a:b]].astype(np.uint8))
            for split, (a, b) in bounds.items()}


def make_worker_dir(root: Path, arrays: dict, params: dict) -> Path:
    """A folder standing in for one machine's checkout: params.yaml and data/prepared (the
    splits, and sources.json naming the one test source)."""
    root.mkdir(parents=True)
    base = committed_params()  # the defaults, not the experiment the workspace holds
    for section, values in params.items():
        if isinstance(values, dict):
            base[section].update(values)
        else:
            base[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    for split, (images, labels) in arrays.items():
        fileio.save_npy(root / f"data/prepared/{split}_images.npy", images)
        fileio.save_npy(root / f"data/prepared/{split}_labels.npy", labels)
    fileio.write_json(root / "data/prepared/sources.json", {"mnist-sample": "test"})
    return root


def start_stage(script: str, cwd: Path, tf_config_json: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="1")
    env.pop("TF_CONFIG", None)
    if tf_config_json is not None:
        env["TF_CONFIG"] = tf_config_json
    log = open(cwd.parent / f"{cwd.name}.log", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([sys.executable, str(PROJECT / "stages" / script)], cwd=cwd,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen, timeout: float = GUARD_SECONDS) -> tuple[int, str]:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"still running after {timeout} s:\n{process.log_path.read_text()}") from None
    return process.returncode, process.log_path.read_text()


def outputs_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and not str(path.relative_to(folder)).startswith(
                      ("data/", "params.yaml")))


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tmp_path, prepared_arrays):
    ports = free_ports(2)
    dirs = [make_worker_dir(tmp_path / f"worker{i}", prepared_arrays, TINY_PARAMS)
            for i in range(2)]
    workers = [start_stage("train.py", dirs[i], tf_config(ports, i)) for i in range(2)]
    results = [finish(worker) for worker in workers]
    for returncode, log in results:
        assert returncode == 0, log
    assert "2 replica(s), chief" in results[0][1]
    assert "non-chief worker" in results[1][1]

    chief_dir, other_dir = dirs
    assert (chief_dir / "models/base.keras").is_file()
    assert (chief_dir / "dvclive/metrics.json").is_file()
    assert outputs_in(other_dir) == []  # nothing but its inputs

    # The chief's model is what the finetune and evaluate stages expect.
    returncode, log = finish(start_stage("finetune.py", chief_dir))
    assert returncode == 0, log
    returncode, log = finish(start_stage("evaluate.py", chief_dir))
    assert returncode == 0, log
    scores = json.loads((chief_dir / "metrics/evaluate.json").read_text())["mnist-sample"]
    assert scores["errors"] <= 100  # scored every one of the 100 test digits
    assert len(pd.read_csv(chief_dir / "plots/predictions/mnist-sample.csv")) == 100


@pytest.mark.slow
def test_a_dead_worker_makes_the_other_fail_not_hang(tmp_path, prepared_arrays):
    ports = free_ports(2)
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 200}}
    dirs = [make_worker_dir(tmp_path / f"worker{i}", prepared_arrays, params) for i in range(2)]
    chief, other = (start_stage("train.py", dirs[i], tf_config(ports, i)) for i in range(2))
    try:
        deadline = time.monotonic() + GUARD_SECONDS
        while "train: epoch 1/" not in chief.log_path.read_text():
            assert chief.poll() is None and other.poll() is None, chief.log_path.read_text()
            assert time.monotonic() < deadline, chief.log_path.read_text()
            time.sleep(0.2)
        other.kill()
        killed_at = time.monotonic()
        returncode, log = finish(chief)
        elapsed = time.monotonic() - killed_at
    finally:
        for process in (chief, other):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert returncode != 0, log
    assert "train: multi-worker training stopped: a worker of the cluster failed" in log, log
    assert elapsed < GUARD_SECONDS * 0.75, f"took {elapsed:.0f} s to notice:\n{log}"
    assert not (dirs[0] / "models/base.keras").exists()
    print(f"chief failed {elapsed:.1f} s after its peer died; last lines:\n"
          + "\n".join(log.splitlines()[-5:]))


def test_none_and_mirrored_strategies():
    import tensorflow as tf

    assert distribute.make_strategy("none") is tf.distribute.get_strategy()
    mirrored = distribute.make_strategy("mirrored")  # the CPU when there is no GPU
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync >= 1
