"""The merge gate: is the workspace's model worse than the base's beyond the thresholds?

``python -m mnist_pipeline.gate [--base main]`` (``make gate``, ``make gate BASE=<rev>``)
prints one line per reason and exits 1 when

- the results are stale or missing: ``dvc status`` is not clean (params, code or data changed
  since the last run, or outputs deleted or never pulled);
- the test metrics of either side are missing (``metrics/evaluate.json``);
- test accuracy or macro F1 fell, or the test errors rose, by more than :data:`THRESHOLDS`.

On the base itself it passes (nothing changed). Test metrics come from
``dvc metrics diff <base> --json --all``: both sides from git (``cache: false``), so a clone
needs no ``dvc pull`` for the base. :func:`reasons` is the pure part, a dict in and lines out.
Run from the repository root, with the venv's DVC (``make gate`` puts it first on PATH).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass

from mnist_pipeline import paths


@dataclass(frozen=True)
class Thresholds:
    """How much worse than the base the workspace may be (the test split's numbers).

    A test split of 500 digits moves 0.002 a digit, and the same run on another CPU type
    differs by about 0.001 (oneDNN kernels): 0.003 lets noise through, not a real drop.
    """

    accuracy_drop: float = 0.003  # test accuracy may fall by at most this (0.3 point)
    macro_f1_drop: float = 0.003  # macro F1 likewise
    errors_rise: float = 0.25  # test errors may grow by this share of the base's errors,
    errors_rise_min: int = 2  # ...or by this many digits, whichever is more


# The one place the gate's limits live (the README's "Review" section quotes them).
THRESHOLDS = Thresholds()

EVALUATE_FILE = str(paths.EVALUATE_METRICS)
DATA_FILE = str(paths.DATA_METRICS)
CHECKED = ("accuracy", "macro_f1", "errors")
SHOWN_PATHS = 3  # per kind of change in a stale stage's line
# Tiny float noise (0.91 - 0.907 = 0.0030000000000000027) must not tip a comparison.
TOLERANCE = 1e-9


class DvcError(RuntimeError):
    """A dvc command failed; the message is its last line of output."""


def dvc_json(*args: str) -> dict:
    """Run ``dvc <args> --json`` in the current directory with this interpreter's DVC."""
    command = [sys.executable, "-m", "dvc", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise DvcError(f"`dvc {' '.join(args)}` failed: {lines[-1].strip()}")
    return json.loads(result.stdout or "{}")


def metrics_diff(base: str, rev: str | None = None) -> dict:
    """``dvc metrics diff base [rev] --all``: {file: {key: {"old", "new"[, "diff"]}}}."""
    return dvc_json("metrics", "diff", base, *([rev] if rev else []), "--all")


def describe_status(status: dict) -> list[str]:
    """One line per stage that ``dvc status --json`` reports, naming what changed."""
    lines = []
    for stage, changes in status.items():
        parts = []
        for change in changes:
            if isinstance(change, str):  # "changed checksum", "always changed"
                parts.append(change)
                continue
            for kind, items in change.items():
                if isinstance(items, dict):
                    named = [f"{path} {_state(state)}" for path, state in items.items()]
                    if len(named) > SHOWN_PATHS:  # a line a reason, not a page
                        named[SHOWN_PATHS:] = [f"{len(named) - SHOWN_PATHS} more"]
                    items = ", ".join(named)
                parts.append(f"{kind} {items}")
        lines.append(f"stale: stage '{stage}' ({'; '.join(parts)}): run `dvc repro`")
    return lines


def _state(state: object) -> str:
    if isinstance(state, dict):  # params: {"train": "modified"} or {"train.epochs": ...}
        return "(" + ", ".join(f"{key} {value}" for key, value in state.items()) + ")"
    return f"({state})"


def reasons(diff: dict, base: str, thresholds: Thresholds = THRESHOLDS,
            target: str = "the workspace") -> list[str]:
    """Why ``target`` is worse than ``base``, given ``dvc metrics diff --all --json`` output.

    Empty when it passes. Missing test metrics on either side are reasons too; errors are
    compared only when both test splits have the same size (else accuracy says it all).
    """
    evaluate = diff.get(EVALUATE_FILE, {})
    old = {key: evaluate.get(key, {}).get("old") for key in CHECKED}
    new = {key: evaluate.get(key, {}).get("new") for key in CHECKED}
    found = []
    for side, values, advice in ((target, new, "run `dvc repro`"),
                                 (base, old, "commit a baseline there: `make baseline`")):
        missing = [key for key, value in values.items() if not isinstance(value, int | float)]
        if missing:
            found.append(f"missing: {side} has no {', '.join(missing)} in {EVALUATE_FILE} "
                         f"({advice})")
    if found:
        return found

    for key, label, allowed in (("accuracy", "test accuracy", thresholds.accuracy_drop),
                                ("macro_f1", "test macro F1", thresholds.macro_f1_drop)):
        drop = old[key] - new[key]
        if drop > allowed + TOLERANCE:
            found.append(f"worse: {label} {new[key]:.4f} vs {old[key]:.4f} on {base} "
                         f"(-{drop:.4f}; at most -{allowed:.4f} allowed)")

    sizes = diff.get(DATA_FILE, {}).get("test.size", {})
    if sizes.get("old") == sizes.get("new"):
        allowed_errors = max(thresholds.errors_rise_min,
                             math.ceil(thresholds.errors_rise * old["errors"]))
        if new["errors"] - old["errors"] > allowed_errors:
            found.append(f"worse: {new['errors']} test errors vs {old['errors']} on {base} "
                         f"(+{new['errors'] - old['errors']}; at most +{allowed_errors} allowed)")
    return found


def check_workspace(base: str, thresholds: Thresholds = THRESHOLDS) -> tuple[list[str], dict]:
    """Every reason the workspace fails the gate against ``base`` (stale results first), and
    the metrics diff the comparison read."""
    found, diff = [], {}
    try:
        found += describe_status(dvc_json("status"))
    except DvcError as error:
        found.append(f"stale: {error}")
    try:
        diff = metrics_diff(base)
    except DvcError as error:
        found.append(f"missing: {error}")
    else:
        found += reasons(diff, base, thresholds)
    return found, diff


def summary(diff: dict, base: str) -> str:
    """``accuracy 0.9912 vs 0.9900, macro F1 ..., errors 4 vs 5``: the compared values."""
    evaluate = diff.get(EVALUATE_FILE, {})
    parts = []
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("errors", "errors")):
        entry = evaluate.get(key, {})
        parts.append(f"{label} {_number(entry.get('new'))} vs {_number(entry.get('old'))}")
    return f"{', '.join(parts)} on {base}"


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "none" if value is None else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.gate",
        description="Fail when the workspace's results are stale or worse than the base's.")
    parser.add_argument("--base", default="main", help="git revision to compare against")
    args = parser.parse_args(argv)
    found, diff = check_workspace(args.base)
    for line in found:
        print(f"gate: {line}")
    if found:
        sys.exit(1)
    print(f"gate: passed: {summary(diff, args.base)}")


if __name__ == "__main__":
    main()
