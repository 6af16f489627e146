"""The corrections loop as a data scientist runs it, in a temporary git + DVC repository.

After a first `dvc repro` and `make baseline` on the sample with a tiny training: the real
`mnist-pipeline serve --collect data/extra/corrections` takes corrections over HTTP (as the
page sends them: a 280x280 drawing, its digit, a writer id per browser), then

    dvc add data/extra/corrections
    dvc exp run -S 'data.extra=[corrections]'
    dvc metrics diff              # the new `extra` source's accuracy
    make report                   # the review names the source too
    git add ... && git commit, dvc push

and a second round of corrections reruns preprocess again, the folder being a dependency.
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
from project_repo import dvc, git, init_project_repo, run
from test_pipeline_e2e import QUICK_SAMPLE_PARAMS

from benchmarks.harness import free_port, stop_server

pytestmark = pytest.mark.slow  # two pipeline runs, a server: about two minutes

WRITERS = 6  # extra_test_fraction 0.2 of 6 writers: one held out as the `extra` test source
PER_WRITER = 10


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


def test_corrections_collected_tracked_retrained_and_compared(tmp_path, sample_digits):
    images, labels = sample_digits
    order = np.random.default_rng(32).permutation(len(images))
    repo = init_project_repo(tmp_path / "repo", QUICK_SAMPLE_PARAMS)
    dvc("repro", cwd=repo)
    run(["make", "baseline"], cwd=repo)
    before = json.loads((repo / "metrics" / "data.json").read_text())

    answers = collect(repo, images[order], labels[order], first=0)
    assert answers[-1]["count"] == WRITERS * PER_WRITER
    folder = repo / "data" / "extra" / "corrections"
    assert (folder / "labels.csv").read_text().count("\n") == 1 + WRITERS * PER_WRITER

    dvc("add", "data/extra/corrections", cwd=repo)
    git("check-ignore", "-q", "data/extra/corrections", cwd=repo)  # in DVC's cache, not git
    experiment = run(["bash", "-c", "dvc exp run -S 'data.extra=[corrections]'"], cwd=repo)
    assert "Running stage 'preprocess'" in experiment.stdout, experiment.stdout

    # one writer of six held out (preprocess.extra_test_fraction 0.2), the others learnt from
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["test_extra"]["size"] == PER_WRITER, data
    grown = sum(data[split]["size"] - before[split]["size"] for split in ("train", "val"))
    assert grown == (WRITERS - 1) * PER_WRITER, (before, data)
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

    # More corrections into the same folder: tracked again, preprocess reruns.
    collect(repo, images[order], labels[order], first=WRITERS * PER_WRITER)
    status = dvc("status", cwd=repo).stdout
    assert "data/extra/corrections" in status, status
    dvc("add", "data/extra/corrections", cwd=repo)
    again = dvc("repro", cwd=repo).stdout
    assert "Running stage 'preprocess'" in again, again
    data = json.loads((repo / "metrics" / "data.json").read_text())
    assert data["test_extra"]["size"] == 2 * PER_WRITER, data
