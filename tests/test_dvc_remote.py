"""DVC remote storage, the model registry and queued experiments on the sample, in a
temporary git repository.

A local folder stands in for S3/GCS/SSH: `dvc push` there, a fresh `git clone` + `dvc pull`
gets the same model back, and so does `dvc artifacts get` of the registered model from
outside any repository; `dvc exp run --queue` + `dvc queue start --jobs 2` runs a grid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from project_repo import dvc, git, init_project_repo, run

pytestmark = pytest.mark.slow

TINY = {
    "data": {"dataset": "mnist-sample", "drawn": False},  # no pen file: offline
    "model": {"conv_filters": [8], "dense_units": 16},
    "train": {"epochs": 1, "batch_size": 128, "lr_schedule": "constant", "warmup_epochs": 0,
              "early_stopping_patience": 0,
              "augmentation": {"rotation_degrees": 0, "translation_fraction": 0,
                               "zoom_fraction": 0}},
}
QUEUE_TIMEOUT_SECONDS = 240


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory) -> Path:
    """The project in a new git repo, `dvc repro finetune` done on the sample (train, and the
    model that finetune makes of the base without corrections), all committed."""
    repo = init_project_repo(tmp_path_factory.mktemp("remote") / "repo", TINY)
    dvc("repro", "finetune", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "trained", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def pushed_repo(trained_repo, tmp_path_factory) -> Path:
    """``trained_repo`` with a local folder as its default remote (committed), pushed there."""
    storage = tmp_path_factory.mktemp("storage")
    dvc("remote", "add", "-d", "local", str(storage), cwd=trained_repo)
    git("commit", "-q", "-am", "local remote", cwd=trained_repo)
    dvc("push", cwd=trained_repo)
    assert any(path.is_file() for path in storage.rglob("*"))
    return trained_repo


def test_push_then_pull_in_a_fresh_clone_restores_the_model(pushed_repo, tmp_path):
    trained_repo = pushed_repo
    clone = tmp_path / "clone"
    git("clone", "-q", str(trained_repo), str(clone), cwd=tmp_path)
    assert not (clone / "models/model.keras").exists()
    dvc("pull", "--with-deps", "finetune", cwd=clone)
    status = dvc("status", "--with-deps", "finetune", cwd=clone).stdout
    assert "Data and pipelines are up to date" in status, status
    original = (trained_repo / "models/model.keras").read_bytes()
    assert (clone / "models/model.keras").read_bytes() == original


def test_the_model_is_a_registered_artifact_that_artifacts_get_fetches(pushed_repo, tmp_path):
    # A version is a git tag in GTO's format, as the README registers one.
    git("tag", "-a", "mnist-classifier@v1.0.0", "-m", "first model", cwd=pushed_repo)
    # In a process of its own: DVC's API sets up logging on the stderr it finds, which pytest
    # closes after the test.
    shown = json.loads(run([sys.executable, "-c", (
        "import json, dvc.api; print(json.dumps(dvc.api.artifacts_show("
        f"'mnist-classifier', repo={str(pushed_repo)!r})))")], cwd=pushed_repo).stdout)
    assert shown["path"] == "models/model.keras"
    assert shown["rev"] == git("rev-parse", "HEAD", cwd=pushed_repo).stdout.strip()

    elsewhere = tmp_path / "deploy"  # not a repository: what a deployment job does
    elsewhere.mkdir()
    dvc("artifacts", "get", str(pushed_repo), "mnist-classifier", "-o", "model.keras",
        cwd=elsewhere)
    assert (elsewhere / "model.keras").read_bytes() == (
        pushed_repo / "models/model.keras").read_bytes()


def stop_workers(repo: Path) -> None:
    """End the queue's worker processes that are still alive: a worker that logged its
    shutdown has been seen to stay alive, idle, and it would outlive the test run."""
    for pid_file in (repo / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):  # gone already, or not a number
            pid = int(pid_file.read_text().strip())
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not reused
                os.kill(pid, signal.SIGKILL)


def test_a_queued_grid_runs_two_jobs_and_reads_back(trained_repo):
    dvc("exp", "run", "--queue", "train", "-S", "seed=1,2", cwd=trained_repo)
    try:
        dvc("queue", "start", "--jobs", "2", cwd=trained_repo, detaches=True)
        deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
        while True:
            status = dvc("queue", "status", cwd=trained_repo).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(3)
    finally:
        stop_workers(trained_repo)
    assert "Failed" not in status, dvc("queue", "logs", _first_failed(status),
                                       cwd=trained_repo, check=False).stdout
    rows = json.loads(dvc("exp", "show", "--json", cwd=trained_repo).stdout)
    results = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision.get("data") or {}
                seed = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("seed")
                metrics = data.get("metrics", {}).get("dvclive/metrics.json", {}).get("data")
                if seed in (1, 2):
                    results[seed] = metrics
    assert set(results) == {1, 2}, rows
    for metrics in results.values():
        assert 0 <= metrics["eval"]["accuracy"] <= 1 and metrics["temperature"] > 0
    assert results[1] != results[2]  # each seed really trained its own model


def _first_failed(status: str) -> str:
    for line in status.splitlines():
        if "Failed" in line:
            return line.split()[0]
    return ""
