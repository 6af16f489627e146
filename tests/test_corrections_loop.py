"""The corrections loop as a data scientist runs it, in a temporary git + DVC repository.

After a first `dvc repro` and `make baseline` on the sample with a tiny training: the real
`mnist-pipeline serve --collect data/extra/corrections` takes corrections over HTTP (as the
page sends them: a 280x280 drawing, its digit, a writer id per browser), then

    dvc add data/extra/corrections
    dvc exp run -S 'corrections.folders=[corrections]'
    dvc metrics diff              # the new `extra` source's accuracy
    make report                   # the review names the source too
    git add ... && git commit, dvc push

Each round reruns read_corrections and finetune (and what follows), never download,
preprocess or train: the base model stays in DVC's cache.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project_repo import copy_repo, dvc, git, run

from mnist_pipeline.testing import free_port, stop_server

pytestmark = pytest.mark.slow  # two pipeline runs, a server: about two minutes

WRITERS = 6  # corrections.test_fraction 0.2: each writer's latest 2 of 10 are the `extra` test
PER_WRITER = 10
EXPENSIVE_STAGES = ("download", "preprocess", "train")


def drawing(digit: np.ndarray, turn: float) -> bytes:
    """A digit as the page's canvas sends it (light on black, 280x280), tilted by ``turn``
    degrees: each writer's own slant."""
    image = Image.fromarray(digit.astype(np.uint8)).resize((280, 280)).rotate(turn)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def collect(repo: Path, images: np.ndarray, labels: np.ndarray, first: int) -> list[dict]:
    """`mnist-pipeline serve --collect data/extra/corrections` in ``repo``, given
    WRITERS x PER_WRITER corrections; their answers."""
    import httpx2

    port = free_port()
    log = (repo.parent / "serve.log").open("a")
    command = [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--port", str(port),
               "--collect", "data/extra/corrections"]
    process = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    answers = []
    try:
        deadline = time.monotonic() + 120
        while True:  # start_server's wait, for a process started in ``repo``
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["collect"]:
                    break
            except httpx2.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, \
                (repo.parent / "serve.log").read_text()
            time.sleep(0.2)
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for index in range(WRITERS * PER_WRITER):
                writer = index % WRITERS
                digit, label = images[first + index], int(labels[first + index])
                response = client.post(
                    "/corrections", data={"label": str(label), "writer": f"browser{writer}"},
                    files={"file": ("drawing.png", drawing(digit, 8 * writer - 20),
                                    "image/png")})
                assert response.status_code == 201, response.text
                answers.append(response.json())
    finally:
        stop_server(process)
        log.close()
    return answers


def test_corrections_collected_tracked_retrained_and_compared(tmp_path, sample_digits,
                                                            quick_baseline):
    images, labels = sample_digits
    order = np.random.default_rng(32).permutation(len(images))
    repo = copy_repo(quick_baseline, tmp_path / "repo")  # after `dvc repro`, `make baseline`
    prepared_before = json.loads((repo / "metrics" / "data.json").read_text())

    answers = collect(repo, images[order], labels[order], first=0)
    assert answers[-1]["count"] == WRITERS * PER_WRITER
    folder = repo / "data" / "extra" / "corrections"
    assert (folder / "labels.csv").read_text().count("\n") == 1 + WRITERS * PER_WRITER

    dvc("add", "data/extra/corrections", cwd=repo)
    git("check-ignore", "-q", "data/extra/corrections", cwd=repo)  # in DVC's cache, not git
    status = dvc("status", "--json", cwd=repo).stdout
    assert set(json.loads(status)) == {"read_corrections"}, status  # and what follows it
    experiment = run(["bash", "-c", "dvc exp run -S 'corrections.folders=[corrections]'"],
                     cwd=repo)
    for stage in ("read_corrections", "finetune", "export", "evaluate"):
        assert f"Running stage '{stage}'" in experiment.stdout, experiment.stdout
    for stage in EXPENSIVE_STAGES:
        assert f"Running stage '{stage}'" not in experiment.stdout, experiment.stdout

    # every writer's latest 2 held out, the earlier 8 learned: the model is no longer the base
    counts = json.loads((repo / "metrics" / "corrections.json").read_text())
    assert counts == {"folders": 1, "writers": WRITERS, "pictures": WRITERS * PER_WRITER,
                      "learned": WRITERS * 8, "held_out": WRITERS * 2,
                      "writers_held_out": WRITERS}, counts
    assert json.loads((repo / "metrics" / "data.json").read_text()) == prepared_before
    assert (repo / "models/model.keras").read_bytes() != (repo / "models/base.keras").read_bytes()
    diff = run(["bash", "-c", "dvc metrics diff"], cwd=repo).stdout
    line = next((line for line in diff.splitlines() if " extra.accuracy " in f" {line} "),
                None)
    assert line is not None, diff
    diff_json = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    accuracy = diff_json["metrics/evaluate.json"]["extra.accuracy"]
    assert accuracy["old"] is None and 0.0 <= accuracy["new"] <= 1.0, accuracy
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert evaluation["extra"]["accuracy"] == pytest.approx(accuracy["new"])

    run(["make", "report"], cwd=repo)
    assert "extra" in (repo / "report" / "report.md").read_text()

    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "local", str(remote), cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "Corrections from the page", cwd=repo)
    dvc("push", cwd=repo)
    # the remote holds every picture (and labels.csv): a clone can `dvc pull` the folder
    stored = sum(1 for path in remote.rglob("*") if path.is_file())
    assert stored >= WRITERS * PER_WRITER + 1, stored
    assert git("status", "--porcelain", cwd=repo).stdout == ""

    # More corrections into the same folder: tracked again, only the cheap stages rerun.
    collect(repo, images[order], labels[order], first=WRITERS * PER_WRITER)
    status = dvc("status", cwd=repo).stdout
    assert "data/extra/corrections" in status, status
    dvc("add", "data/extra/corrections", cwd=repo)
    again = dvc("repro", cwd=repo).stdout
    assert "Running stage 'finetune'" in again, again
    for stage in EXPENSIVE_STAGES:
        assert f"Running stage '{stage}'" not in again, again
    counts = json.loads((repo / "metrics" / "corrections.json").read_text())
    assert counts["held_out"] == WRITERS * 4 and counts["learned"] == WRITERS * 16, counts
