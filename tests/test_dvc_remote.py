"""DVC remote storage and queued experiments on the sample, in a temporary git repository.

A local folder stands in for S3/GCS/SSH: `dvc push` there, a fresh `git clone` + `dvc pull`
gets the same model back; `dvc exp run --queue` + `dvc queue start --jobs 2` runs a grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_pipeline_e2e import dvc, git, init_project_repo

pytestmark = pytest.mark.slow

TINY = {
    "data": {"dataset": "mnist-sample"},
    "model": {"conv_filters": [8], "dense_units": 16},
    "train": {"epochs": 1, "batch_size": 128, "lr_schedule": "constant", "warmup_epochs": 0,
              "early_stopping_patience": 0,
              "augmentation": {"rotation_degrees": 0, "translation_fraction": 0,
                               "zoom_fraction": 0}},
}
QUEUE_TIMEOUT_SECONDS = 240


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory) -> Path:
    """The project in a new git repo, `dvc repro train` done on the sample, all committed."""
    repo = init_project_repo(tmp_path_factory.mktemp("remote") / "repo", TINY)
    dvc("repro", "train", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "trained", cwd=repo)
    return repo


def test_push_then_pull_in_a_fresh_clone_restores_the_model(trained_repo, tmp_path):
    storage = tmp_path / "storage"
    dvc("remote", "add", "-d", "local", str(storage), cwd=trained_repo)
    git("commit", "-q", "-am", "local remote", cwd=trained_repo)
    dvc("push", cwd=trained_repo)
    assert any(path.is_file() for path in storage.rglob("*"))

    clone = tmp_path / "clone"
    git("clone", "-q", str(trained_repo), str(clone), cwd=tmp_path)
    assert not (clone / "models/model.keras").exists()
    dvc("pull", "--with-deps", "train", cwd=clone)
    status = dvc("status", "--with-deps", "train", cwd=clone).stdout
    assert "Data and pipelines are up to date" in status, status
    original = (trained_repo / "models/model.keras").read_bytes()
    assert (clone / "models/model.keras").read_bytes() == original


def test_a_queued_grid_runs_two_jobs_and_reads_back(trained_repo):
    dvc("exp", "run", "--queue", "train", "-S", "seed=1,2", cwd=trained_repo)
    dvc("queue", "start", "--jobs", "2", cwd=trained_repo)
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        status = dvc("queue", "status", cwd=trained_repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert "Failed" not in status, dvc("queue", "logs", _first_failed(status),
                                       cwd=trained_repo, check=False).stdout
    rows = json.loads(dvc("exp", "show", "--json", cwd=trained_repo).stdout)
    results = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for run in exp.get("revs", []):
                data = run.get("data") or {}
                seed = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("seed")
                metrics = data.get("metrics", {}).get("dvclive/metrics.json", {}).get("data")
                if seed in (1, 2):
                    results[seed] = metrics
    assert set(results) == {1, 2}, rows
    for metrics in results.values():
        assert 0 <= metrics["train"]["accuracy"] <= 1 and 0 <= metrics["eval"]["accuracy"] <= 1
    assert results[1] != results[2]  # each seed really trained its own model


def _first_failed(status: str) -> str:
    for line in status.splitlines():
        if "Failed" in line:
            return line.split()[0]
    return ""
