"""A temporary git + DVC copy of the project, and the commands tests run in it.

Shared by the end-to-end, remote-storage and plots-page tests (imported, not a fixture, since
module-scoped fixtures of several files build their repositories with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from committed import committed_params_text

from mnist_pipeline import plots_page

PROJECT = Path(__file__).resolve().parents[1]


# The end-to-end tests' params: small enough to train in seconds, real enough to learn something.
QUICK_SAMPLE_PARAMS = {
    # No pen digits: the pen files' digests are UCI's, which a test cannot make (the stages
    # with pen digits are tested on files of the tests' own, tests/test_drawn_*.py).
    "data": {"dataset": "mnist-sample", "drawn": False},
    # test-time shifts as params.yaml: the averaging saved model goes through every stage
    "model": {"conv_filters": [8, 16], "dense_units": 32, "test_time_shifts": 4},
    # 56 steps in all: too few for a 0.99 weight average, which would still be mostly the
    # first steps' weights (see docs/pipeline.md, train.ema_momentum)
    "train": {"epochs": 2, "batch_size": 128, "warmup_epochs": 0, "early_stopping_patience": 0,
              "ema_momentum": 0},
}


# No command of a test takes this long; past it the test fails instead of hanging the suite.
COMMAND_TIMEOUT_SECONDS = 900


def run(command: list[str], cwd: Path, check: bool = True,
        detaches: bool = False) -> subprocess.CompletedProcess:
    """Run a command with the venv's python/dvc first on PATH, as `make` does.

    ``detaches``: the command leaves processes running (`dvc queue start`'s workers), which
    would hold captured pipes open until they exit; its output goes through a file instead."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
               TF_CPP_MIN_LOG_LEVEL="2", DVC_NO_ANALYTICS="1")
    if detaches:
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(command, cwd=cwd, env=env, stdout=output,
                                    stderr=subprocess.STDOUT, text=True,
                                    timeout=COMMAND_TIMEOUT_SECONDS)
            output.seek(0)
            result.stdout, result.stderr = output.read(), ""
    else:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_SECONDS)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def dvc(*args: str, cwd: Path, check: bool = True,
        detaches: bool = False) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check, detaches=detaches)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd=cwd)


def update_params(repo: Path, changes: dict) -> None:
    """Merge nested ``changes`` into the repo's params.yaml."""
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())

    def merge(target: dict, updates: dict) -> None:
        for key, value in updates.items():
            if isinstance(value, dict):
                merge(target.setdefault(key, {}), value)
            else:
                target[key] = value

    merge(params, changes)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(destination: Path) -> None:
    """Copy the project's source files (tracked or new, never ignored ones) into a new repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for relative in filter(None, listed):
        source = PROJECT / relative
        # Skip the pipeline's own results: the temporary repo makes its own.
        if not source.is_file() or relative.startswith(("metrics/", "plots/", "dvclive/")):
            continue
        if relative == "dvc.lock":
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative == "params.yaml":  # the defaults, not the experiment the workspace holds
            target.write_text(committed_params_text())
            continue
        shutil.copy2(source, target)


def init_project_repo(repo: Path, params: dict) -> Path:
    """A new git+DVC repo at ``repo``: the project with ``params`` merged in, committed.

    As in a clone, the code is committed before the pipeline runs (dvclive needs a HEAD).
    """
    repo.mkdir(parents=True)
    copy_project(repo)
    # What `make install` adds beside the tracked files: the `dvc plots show` page template.
    plots_page.build(repo / plots_page.SOURCE, repo / plots_page.TARGET, PROJECT / "node_modules")
    git("init", "-q", "-b", "main", cwd=repo)
    update_params(repo, params)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "project", cwd=repo)
    return repo


def copy_repo(source: Path, destination: Path) -> Path:
    """A copy of the git+DVC repo ``source`` (its DVC cache, commits and results included)
    at ``destination``: what a test may change without touching the shared one. File times
    are kept, so DVC finds every output as ``dvc.lock`` recorded it."""
    shutil.copytree(source, destination, symlinks=True)
    return destination
