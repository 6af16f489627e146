"""The merge gate: is the workspace's model worse than the base's beyond the thresholds?

``python -m mnist_pipeline.gate [--base main]`` (``make gate``, ``make gate BASE=<rev>``)
prints one line per reason and exits 1 when

- the base is not a commit of this repository (``invalid:``);
- the results are stale or missing: ``dvc status`` is not clean (params, code or data changed
  since the last run, or outputs deleted or never pulled);
- the test metrics of either side are missing (``metrics/evaluate.json``), or a test source of
  the base is missing in the workspace (``missing:``);
- a test metric of either side is not a finite number in its range (``invalid:``): the gate
  fails closed rather than compare NaN, Infinity, booleans or strings;
- on a test source of the base, accuracy fell or the errors rose by more than
  :data:`THRESHOLDS` (``worse:``).

``metrics/evaluate.json`` holds one block per test source (the dataset's name, ``drawn`` for
the pen-drawn digits): ``{"mnist": {"accuracy": ..., "errors": ..., "ece": ...}, ...}``. A
source new in the workspace is named in a ``new:`` line and does not fail the gate. On the base
itself it passes. Test metrics come from ``dvc metrics diff --all --json -- <base>``: both
sides from git (``cache: false``), so a clone needs no ``dvc pull`` for the base.
:func:`compare` is the pure part, a dict in and lines out. Run from the repository root, with
the venv's DVC (``make gate`` puts it first on PATH). Exit status: 0 passed, 1 failed, 2 a
usage error (argparse).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

from mnist_pipeline import dvc_cli, paths
from mnist_pipeline.prepared import test_split


@dataclass(frozen=True)
class Thresholds:
    """How much worse than the base each test source may be.

    On the default test split (10,000 digits) one digit is 0.0001 of accuracy, so
    ``accuracy_drop`` allows 30 more wrong digits there, and fewer on a smaller source (the
    pen-drawn digits, mnist-sample's test split). The errors limit grows with the base's errors
    and never falls below ``errors_rise_min``, so a source with few errors does not fail on the
    odd digit that another CPU type (other oneDNN kernels) classifies differently.
    """

    accuracy_drop: float = 0.003  # test accuracy may fall by at most this (0.3 point)
    errors_rise: float = 0.25  # test errors may grow by this share of the base's errors,
    errors_rise_min: int = 2  # ...or by this many digits, whichever is more


# The one place the gate's limits live (the docs' review page quotes them).
THRESHOLDS = Thresholds()

EVALUATE_FILE = str(paths.EVALUATE_METRICS)
DATA_FILE = str(paths.DATA_METRICS)
# The metrics of each source and their valid values; accuracy and errors must be there.
REQUIRED = ("accuracy", "errors")
FRACTIONS = ("accuracy", "ece")  # finite numbers in 0..1; the others (errors) are counts
CHECKED = (*REQUIRED, "ece")
SHOWN_PATHS = 3  # per kind of change in a stale stage's line
# Tiny float noise (0.91 - 0.907 = 0.0030000000000000027) must not tip a comparison.
TOLERANCE = 1e-9


@dataclass
class Verdict:
    """What the comparison found: ``failures`` fail the gate, ``notes`` only inform."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def by_source(diff: dict, side: str) -> dict[str, dict[str, object]]:
    """One side (``old`` or ``new``) of the evaluate file's diff: {source: {metric: value}},
    only the metrics the gate checks."""
    sources: dict[str, dict[str, object]] = {}
    for key, entry in diff.get(EVALUATE_FILE, {}).items():
        source, dot, metric = key.partition(".")
        value = entry.get(side) if isinstance(entry, dict) else None
        if dot and metric in CHECKED and value is not None:
            sources.setdefault(source, {})[metric] = value
    dataset = diff.get(DATA_FILE, {}).get("dataset", {}).get(side)
    return {source: sources[source]  # the dataset first, the others (drawn, ...) by name
            for source in sorted(sources, key=lambda name: (name != dataset, name))}


def invalid_values(values: dict[str, object]) -> list[str]:
    """``accuracy nan`` for each value of one source outside its valid range."""
    bad = []
    for metric, value in values.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if metric in FRACTIONS:
            valid = number and math.isfinite(value) and 0 <= value <= 1
        else:
            valid = number and isinstance(value, int) and value >= 0
        if not valid:
            bad.append(f"{metric} {value!r}")
    return bad


def _flat_keys(diff: dict, side: str) -> bool:
    """Whether one side holds test metrics without a source (the format before sources)."""
    return any(key in CHECKED and isinstance(entry, dict) and entry.get(side) is not None
               for key, entry in diff.get(EVALUATE_FILE, {}).items())


def _check_side(sources: dict, name: str, advice: str, flat: bool) -> list[str]:
    """The missing and invalid lines of one side's test metrics."""
    if not sources:
        why = (" (only metrics without a source block, from before them)" if flat else "")
        return [f"missing: {name} has no test metrics in {EVALUATE_FILE}{why} ({advice})"]
    found = []
    for source, values in sources.items():
        absent = [metric for metric in REQUIRED if metric not in values]
        if absent:
            found.append(f"missing: {name} has no {', '.join(absent)} of source '{source}' "
                         f"in {EVALUATE_FILE} ({advice})")
    bad = [f"{source}.{item}" for source, values in sources.items()
           for item in sorted(invalid_values(values))]
    if bad:
        found.append(f"invalid: {name}'s {EVALUATE_FILE} has {', '.join(bad)} (accuracy and "
                     "ece must be finite numbers in 0..1, errors a non-negative integer)")
    return found


def compare(diff: dict, base: str, thresholds: Thresholds = THRESHOLDS,
            target: str = "the workspace") -> Verdict:
    """Why ``target`` is worse than ``base``, given ``dvc metrics diff --all --json`` output.

    No failures when it passes. Missing or invalid test metrics on either side fail before any
    comparison; every source of the base is compared, a source only in ``target`` is a note.
    A source's errors are compared only when its test split has the same size on both sides
    (metrics/data.json; else accuracy says it all).
    """
    old, new = by_source(diff, "old"), by_source(diff, "new")
    verdict = Verdict()
    verdict.failures += _check_side(new, target, "run `dvc repro`", _flat_keys(diff, "new"))
    verdict.failures += _check_side(old, base, "commit a baseline there: `make baseline`",
                                    _flat_keys(diff, "old"))
    if new:
        verdict.failures += [f"missing: {target} has no test metrics of source '{source}' "
                             f"in {EVALUATE_FILE}, which {base} has (run `dvc repro`)"
                             for source in old if source not in new]
    verdict.notes += [f"new: source '{source}' is not on {base}: {_values(values)}, not "
                      "compared" for source, values in new.items() if source not in old]
    if verdict.failures:
        return verdict

    for source, before in old.items():
        after = new[source]
        sizes = diff.get(DATA_FILE, {}).get(f"{test_split(source)}.size", {})
        same_size = sizes.get("old") == sizes.get("new")
        drop = before["accuracy"] - after["accuracy"]
        if drop > thresholds.accuracy_drop + TOLERANCE:
            verdict.failures.append(
                f"worse: {source} test accuracy {after['accuracy']:.4f} vs "
                f"{before['accuracy']:.4f} on {base} (-{drop:.4f}; at most "
                f"-{thresholds.accuracy_drop:.4f} allowed)")
        rise = after["errors"] - before["errors"]
        allowed = max(thresholds.errors_rise_min,
                      math.ceil(thresholds.errors_rise * before["errors"]))
        if same_size and rise > allowed:
            verdict.failures.append(
                f"worse: {source} {after['errors']} test errors vs {before['errors']} on "
                f"{base} (+{rise}; at most +{allowed} allowed)")
    return verdict


def check_workspace(base: str, thresholds: Thresholds = THRESHOLDS) -> tuple[Verdict, dict]:
    """The gate on the workspace against ``base`` (stale results first), and the metrics diff
    the comparison read. ``base`` must be verified (:func:`dvc_cli.verify_commit`)."""
    verdict, diff = Verdict(), {}
    try:
        verdict.failures += describe_status(dvc_cli.status())
    except dvc_cli.DvcError as error:
        verdict.failures.append(f"stale: {error}")
    try:
        diff = dvc_cli.metrics_diff(base)
    except dvc_cli.DvcError as error:
        verdict.failures.append(f"missing: {error}")
    else:
        found = compare(diff, base, thresholds)
        verdict.failures += found.failures
        verdict.notes += found.notes
    return verdict, diff


def summary(diff: dict, base: str) -> str:
    """``mnist: accuracy 0.9912 vs 0.9900, errors 88 vs 100; drawn: ... on main``."""
    old, new = by_source(diff, "old"), by_source(diff, "new")
    parts = []
    for source in old:
        values = [f"{metric} {_number(new.get(source, {}).get(metric))} vs "
                  f"{_number(old[source].get(metric))}" for metric in REQUIRED]
        parts.append(f"{source}: {', '.join(values)}")
    return f"{'; '.join(parts) or 'no test metrics'} on {base}"


def _values(values: dict) -> str:
    return ", ".join(f"{metric} {_number(values.get(metric))}" for metric in REQUIRED)


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
    try:
        dvc_cli.verify_commit(args.base)
    except dvc_cli.RevisionError as error:
        print(f"gate: invalid: --base {error}")
        sys.exit(1)
    verdict, diff = check_workspace(args.base)
    for line in verdict.failures + verdict.notes:
        print(f"gate: {line}")
    if verdict.failures:
        sys.exit(1)
    print(f"gate: passed: {summary(diff, args.base)}")


if __name__ == "__main__":
    main()
