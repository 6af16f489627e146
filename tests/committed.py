"""The project's files as git holds them, not as the workspace has them after a run.

`make sample`, `make repro` and every `dvc exp run -S key=value` apply their params to the
workspace's params.yaml; tests that check params.yaml or build on it read the committed one, so
that they pass whichever experiment the workspace holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]


def committed_text(relative: str) -> str:
    """``relative``'s text at HEAD; outside a git checkout (an unpacked archive), the file's."""
    try:
        return subprocess.run(["git", "show", f"HEAD:./{relative}"], cwd=PROJECT,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return (PROJECT / relative).read_text()


def committed_params_text() -> str:
    """params.yaml as committed: the defaults, never an experiment's overrides."""
    return committed_text("params.yaml")


def committed_params() -> dict:
    return yaml.safe_load(committed_params_text())
