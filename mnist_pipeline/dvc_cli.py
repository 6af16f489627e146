"""Calling DVC and git for the review commands (:mod:`mnist_pipeline.report`,
:mod:`mnist_pipeline.gate`): revisions are data, never shell text.

Every command runs as an argument list (no shell), in the current directory, with this
interpreter's DVC. A revision is first verified as a commit by git
(``git rev-parse --verify --end-of-options REV^{commit}``), so an empty name, ``--all`` or
``-h`` is refused in one line before DVC sees it, and then reaches DVC after ``--``, where it
cannot be read as an option.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

WORKSPACE = "workspace"  # DVC's name for the working tree in diffs


class DvcError(RuntimeError):
    """A dvc command failed; the message is its last line of output."""


class RevisionError(ValueError):
    """A revision that is not a commit of this repository."""


def verify_commit(revision: str) -> str:
    """The full hash of the commit ``revision`` names; RevisionError when it names none."""
    result = subprocess.run(
        ["git", "rev-parse", "--quiet", "--verify", "--end-of-options", f"{revision}^{{commit}}"],
        capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise RevisionError(f"{revision!r} is not a commit of this repository "
                            "(a branch, tag or commit hash)")
    return result.stdout.strip()


def dvc_json(*args: str, revisions: tuple[str, ...] = ()) -> dict:
    """``dvc <args> --json -- <revisions>``; the revisions should be verified first."""
    command = [sys.executable, "-m", "dvc", *args, "--json"]
    if revisions:
        command += ["--", *revisions]
    result = subprocess.run(command, capture_output=True, text=True)
    shown = " ".join([*args, *revisions])
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise DvcError(f"`dvc {shown}` failed: {lines[-1].strip()}")
    try:
        # DVC writes NaN and Infinity as JS does; json reads them, the gate refuses them.
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError as error:
        raise DvcError(f"`dvc {shown}` printed no JSON ({error})") from None


def revisions(base: str, rev: str | None = None) -> tuple[str, ...]:
    """The revisions of a comparison, both verified: (base,) or (base, rev)."""
    for revision in (base, *([rev] if rev is not None else [])):
        verify_commit(revision)
    return (base, rev) if rev is not None else (base,)


def metrics_diff(base: str, rev: str | None = None) -> dict:
    """``dvc metrics diff base [rev] --all``: {file: {key: {"old", "new"[, "diff"]}}}."""
    return dvc_json("metrics", "diff", "--all", revisions=revisions(base, rev))


def params_diff(base: str, rev: str | None = None) -> dict:
    """``dvc params diff base [rev]``: {file: {param: {"old", "new"[, "diff"]}}}."""
    return dvc_json("params", "diff", revisions=revisions(base, rev))


def plots_diff(base: str, rev: str | None, out_dir: str) -> dict:
    """``dvc plots diff base [rev] -o out_dir``: vega-lite specs and image copies per plot."""
    return dvc_json("plots", "diff", "-o", out_dir, revisions=revisions(base, rev))


def status() -> dict:
    """``dvc status``: {stage: [changes]}, empty when every stage is up to date."""
    return dvc_json("status")


def declared_outputs(dvc_file: Path = Path("dvc.yaml")) -> list[Path]:
    """Every output path dvc.yaml declares: stage outs, metrics and plots, the files of its
    top-level metrics and plots, artifacts."""
    try:
        spec = yaml.safe_load(dvc_file.read_text()) or {}
    except FileNotFoundError:
        return []

    def names(entries: object) -> list[str]:
        if not isinstance(entries, list):
            return []
        return [name for entry in entries
                for name in ([entry] if isinstance(entry, str) else list(entry or {}))]

    found = []
    for stage in (spec.get("stages") or {}).values():
        for section in ("outs", "metrics", "plots"):
            found += names((stage or {}).get(section))
    found += names(spec.get("metrics"))
    for plot in spec.get("plots") or []:
        for plot_id, config in (plot.items() if isinstance(plot, dict) else [(plot, None)]):
            y = (config or {}).get("y")
            found += list(y) if isinstance(y, dict) else [plot_id]
    found += [artifact.get("path") for artifact in (spec.get("artifacts") or {}).values()
              if isinstance(artifact, dict) and artifact.get("path")]
    return [Path(name) for name in found if isinstance(name, str)]


def git(*args: str) -> str:
    """A git command's output, stripped; empty when it fails."""
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""
