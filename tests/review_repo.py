"""Review repositories for the tests of `make gate` and `make report`: git + DVC repos with the
project's Makefile and metrics the tests write (no training), hand-made `dvc metrics diff`
output, and the checks of a report's pictures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from project_repo import PROJECT, dvc, git, run

from mnist_pipeline import gate

IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")

# A branch name git accepts that a shell would run: `make gate BASE='<it>'` with the old
# recipe closed the quote and wrote ./pwned.
HOSTILE_BRANCH = "x';>pwned;'"
MAKE_EXPANSION = "$(shell touch pwned-by-make)"  # what make would run if it expanded BASE
MARKERS = ("pwned", "pwned-by-make", "pwned;'")


def metrics_entry(old, new) -> dict:
    entry = {"old": old, "new": new}
    if isinstance(old, int | float) and isinstance(new, int | float):
        entry["diff"] = new - old
    return entry


def evaluate_diff(old: dict, new: dict, sizes: tuple = (10000, 10000)) -> dict:
    """`dvc metrics diff --all --json` output for two metrics/evaluate.json contents
    ({source: {metric: value}}), flattened as DVC flattens them, on the mnist dataset."""
    flat_old = {f"{source}.{key}": value for source, block in old.items()
                for key, value in block.items()}
    flat_new = {f"{source}.{key}": value for source, block in new.items()
                for key, value in block.items()}
    keys = list(dict.fromkeys([*flat_old, *flat_new]))
    return {gate.EVALUATE_FILE: {key: metrics_entry(flat_old.get(key), flat_new.get(key))
                                 for key in keys},
            gate.DATA_FILE: {"test.size": metrics_entry(*sizes),
                             "dataset": metrics_entry("mnist", "mnist")}}


def scores(accuracy, errors, ece=0.01) -> dict:
    return {"accuracy": accuracy, "errors": errors, "ece": ece}


BASE = {"mnist": scores(0.9964, 36), "drawn": scores(0.97, 105, 0.02)}


# Metrics and plots in the per-source layout, declared as the pipeline declares them (no
# stages: `dvc status` is clean, so only the metrics decide).
REVIEW_DVC_YAML = """\
metrics:
  - metrics/evaluate.json
  - metrics/data.json
plots:
  - plots/per_class:
      template: bar_horizontal
      x: errors
      y: digit
  - plots/predictions:
      template: confusion
      x: actual
      y: predicted
  - plots/images
"""


def write_results(repo: Path, evaluate: dict, dataset: str = "mnist",
                  size: int = 10000) -> None:
    """metrics/evaluate.json as written (NaN and Infinity as Python's json writes them),
    metrics/data.json, plots/per_class/<source>.csv and plots/predictions/<source>.csv."""
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps(evaluate, indent=2))
    (repo / "metrics/data.json").write_text(
        json.dumps({"dataset": dataset, "test": {"size": size}}))
    per_class = repo / "plots/per_class"
    shutil.rmtree(per_class, ignore_errors=True)
    per_class.mkdir(parents=True)
    for source, block in evaluate.items():
        errors = block.get("errors") if isinstance(block.get("errors"), int) else 0
        rows = ["digit,errors,false_positives,precision,recall,f1,support"]
        rows += [f"{digit},{(errors + digit) // 10},{digit % 3},0.99,0.99,0.99,1000"
                 for digit in range(10)]
        (per_class / f"{source}.csv").write_text("\n".join(rows) + "\n")
    predictions = repo / "plots/predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    predictions.mkdir(parents=True)
    for source in evaluate:
        rows = ["index,actual,predicted,confidence"]
        rows += [f"{index},{index % 10},{(index + index // 7) % 10},0.9" for index in range(40)]
        (predictions / f"{source}.csv").write_text("\n".join(rows) + "\n")


def commit(repo: Path, message: str) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)


def review_repo(repo: Path, base: dict = BASE) -> Path:
    """A git + DVC repo with the project's Makefile: ``base`` (and a gallery picture)
    committed on main, also under HOSTILE_BRANCH."""
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    shutil.copy(PROJECT / "Makefile", repo / "Makefile")
    (repo / "dvc.yaml").write_text(REVIEW_DVC_YAML)
    (repo / ".gitignore").write_text("/report/\n")
    write_results(repo, base)
    (repo / "plots/images").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    Image.fromarray(noise).save(repo / "plots/images/misclassified.png")
    commit(repo, "baseline")
    git("branch", HOSTILE_BRANCH, cwd=repo)
    return repo


def report_command(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "mnist_pipeline.report", *args], cwd=repo, check=False)


def assert_report_pictures(folder: Path, text: str) -> list[str]:
    """Every picture report.md links exists beside it as a PNG with something drawn on it."""
    linked = IMAGE_LINK.findall(text)
    for name in linked:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200, (name, image.size)
            assert np.asarray(image.convert("L"), dtype=float).std() > 10, f"{name} is blank"
    return linked
