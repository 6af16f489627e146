"""`make report`, `make gate`, `make exps` and the pull-request workflow that runs them.

The pure parts (the gate's reasons, the report's tables) on hand-made `dvc ... --json`
output; then, marked slow, the workflow itself: a temporary git + DVC repo with a baseline on
main (a tiny network on the bundled sample), a branch with worse params, and the `run:` steps
of .github/workflows/model-review.yml run there as GitHub would run them (all but `install`,
which the test's venv stands for): the report shows both accuracies and its pictures exist,
the gate fails on the branch and passes on main.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from project_repo import PROJECT, dvc, git, init_project_repo, run, update_params

from mnist_pipeline import gate, report

WORKFLOW = PROJECT / ".github" / "workflows" / "model-review.yml"
STEP_IDS = ["install", "base", "reproduce", "report", "summary", "gate"]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def metrics_entry(old, new) -> dict:
    entry = {"old": old, "new": new}
    if isinstance(old, int | float) and isinstance(new, int | float):
        entry["diff"] = new - old
    return entry


def evaluate_diff(old: tuple, new: tuple, sizes: tuple = (500, 500)) -> dict:
    """`dvc metrics diff --all --json` output for (accuracy, macro_f1, errors) of each side."""
    keys = ("accuracy", "macro_f1", "errors")
    return {
        gate.EVALUATE_FILE: {key: metrics_entry(o, n)
                             for key, o, n in zip(keys, old, new, strict=True)},
        gate.DATA_FILE: {"test.size": metrics_entry(*sizes)},
    }


# --- the gate, pure --------------------------------------------------------------------------

def test_the_gate_passes_on_the_base_itself_and_within_the_thresholds():
    assert gate.reasons(evaluate_diff((0.99, 0.99, 5), (0.99, 0.99, 5)), "main") == []
    # 0.3 point down, 2 more errors: at the limit of THRESHOLDS, not beyond it
    assert gate.reasons(evaluate_diff((0.993, 0.993, 3), (0.990, 0.990, 5)), "main") == []


def test_the_gate_names_each_metric_worse_beyond_its_threshold():
    found = gate.reasons(evaluate_diff((0.994, 0.994, 3), (0.986, 0.985, 7)), "main")
    assert len(found) == 3, found
    assert found[0].startswith("worse: test accuracy 0.9860 vs 0.9940 on main (-0.0080")
    assert found[1].startswith("worse: test macro F1 0.9850 vs 0.9940 on main (-0.0090")
    assert found[2] == "worse: 7 test errors vs 3 on main (+4; at most +2 allowed)"
    # the errors threshold grows with the base's errors (25%): 40 -> 50 is +10, allowed
    tolerant = gate.Thresholds(accuracy_drop=1.0, macro_f1_drop=1.0)
    assert gate.reasons(evaluate_diff((0.9, 0.9, 40), (0.9, 0.9, 50)), "main", tolerant) == []
    assert gate.reasons(evaluate_diff((0.9, 0.9, 40), (0.9, 0.9, 51)), "main", tolerant) == [
        "worse: 51 test errors vs 40 on main (+11; at most +10 allowed)"]
    # errors of test splits of other sizes are not compared (accuracy says it all)
    assert gate.reasons(evaluate_diff((0.9, 0.9, 40), (0.9, 0.9, 80), sizes=(500, 1000)),
                        "main", tolerant) == []


def test_the_gate_fails_when_either_side_has_no_test_metrics():
    diff = evaluate_diff((0.99, 0.99, 5), (None, None, None))
    assert gate.reasons(diff, "main") == [
        "missing: the workspace has no accuracy, macro_f1, errors in metrics/evaluate.json "
        "(run `dvc repro`)"]
    assert gate.reasons({}, "main") == [
        "missing: the workspace has no accuracy, macro_f1, errors in metrics/evaluate.json "
        "(run `dvc repro`)",
        "missing: main has no accuracy, macro_f1, errors in metrics/evaluate.json "
        "(commit a baseline there: `make baseline`)"]


def test_stale_stages_get_one_line_each():
    # `dvc status --json` after editing evaluate.batch_size and deleting metrics/evaluate.json
    status = {"check_params": [{"changed deps": {"params.yaml": {"evaluate": "modified"}}}],
              "evaluate": [{"changed deps": {"params.yaml": {"evaluate": "modified"}}},
                           {"changed outs": {"metrics/evaluate.json": "deleted"}}]}
    assert gate.describe_status(status) == [
        "stale: stage 'check_params' (changed deps params.yaml (evaluate modified)): "
        "run `dvc repro`",
        "stale: stage 'evaluate' (changed deps params.yaml (evaluate modified); changed outs "
        "metrics/evaluate.json (deleted)): run `dvc repro`"]
    assert gate.describe_status({}) == []
    many = {"train": [{"changed deps": {f"mnist_pipeline/m{i}.py": "modified" for i in range(5)}}]}
    assert gate.describe_status(many) == [
        "stale: stage 'train' (changed deps mnist_pipeline/m0.py (modified), mnist_pipeline/m1.py "
        "(modified), mnist_pipeline/m2.py (modified), 2 more): run `dvc repro`"]


# --- the report's tables, pure ---------------------------------------------------------------

def test_the_params_table_lists_each_changed_param_with_both_values():
    diff = {"params.yaml": {"train.learning_rate": {"old": 0.002, "new": 1e-05, "diff": -0.002},
                            "model.conv_filters": {"old": "[8, 16]", "new": "[8]"}}}
    assert report.params_table(diff, "main", "workspace").splitlines() == [
        "| param | main | workspace |",
        "| --- | --- | --- |",
        "| `model.conv_filters` | [8, 16] | [8] |",
        "| `train.learning_rate` | 0.002 | 1e-05 |",
    ]
    assert report.params_table({}, "main", "workspace") == "No params changed."


def test_the_metrics_tables_put_the_headline_first_and_the_rest_under_the_fold():
    diff = evaluate_diff((0.91, 0.9098, 90), (0.612, 0.6, 388), sizes=(1000, 1000))
    diff["metrics/export.json"] = {"onnx_max_difference": metrics_entry(4.17e-07, 3e-07)}
    diff["metrics/data.json"]["dataset"] = {"old": "mnist-sample", "new": "mnist-sample"}
    headline, others = report.metrics_tables(diff, "main", "worse")
    assert headline.splitlines() == [
        "| metric | main | worse | change |",
        "| --- | ---: | ---: | ---: |",
        "| test accuracy | 0.91 | 0.612 | -0.298 |",
        "| test errors | 90 | 388 | +298 |",
        "| test macro F1 | 0.9098 | 0.6 | -0.3098 |",
        "| test digits | 1000 | 1000 | 0 |",
        "| dataset | mnist-sample | mnist-sample |  |",
    ]
    assert others.splitlines()[2:] == [
        "| `metrics/export.json`: `onnx_max_difference` | 4.17e-07 | 3e-07 | -1.17e-07 |"]
    assert report.metrics_tables({}, "main", "workspace") == (
        "No metrics found on either side.", "")


@pytest.mark.parametrize(("old", "new", "change"), [
    (0.99, 0.995, "+0.005"), (3, 1, "-2"), (5, 5, "0"), (0.5, 0.5, "0"), (None, 0.9, ""),
    ("mnist", "mnist-sample", "changed"), ("mnist", "mnist", ""),
])
def test_changes_are_signed_numbers(old, new, change):
    assert report.format_change(old, new) == change


# --- the workflow file -----------------------------------------------------------------------

def workflow_steps() -> dict[str, dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return {step["id"]: step for step in workflow["jobs"]["review"]["steps"] if "id" in step}


def test_the_workflow_runs_on_pull_requests_in_the_order_the_test_follows():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in triggers
    steps = workflow_steps()
    assert list(steps) == STEP_IDS
    for step in steps.values():  # the test runs these scripts as they are
        assert "${{" not in step["run"], step
    assert "dvc repro" in steps["reproduce"]["run"]
    assert "make report" in steps["report"]["run"] and "make gate" in steps["gate"]["run"]
    assert "GITHUB_STEP_SUMMARY" in steps["summary"]["run"]
    cml = [step for step in workflow["jobs"]["review"]["steps"] if "cml comment" in
           step.get("run", "")]
    assert len(cml) == 1 and "CML_REPO_TOKEN" in cml[0]["if"] + str(cml[0].get("env"))


# --- the workflow, end to end ----------------------------------------------------------------

# A tiny network on the bundled sample: seconds of training, ~90% on its test digits.
QUICK_PARAMS = {
    "data": {"dataset": "mnist-sample"},
    "model": {"conv_filters": [8, 16], "dense_units": 32, "test_time_shifts": 0},
    "train": {"epochs": 2, "batch_size": 128, "warmup_epochs": 0, "early_stopping_patience": 0,
              "ema_momentum": 0},
}
# What the pull request changes: a learning rate 200x too small leaves the network near chance.
WORSE_PARAMS = {"train": {"learning_rate": 0.00001}}


def run_steps(repo: Path, ids: list[str], summary: Path) -> dict[str, subprocess.CompletedProcess]:
    """The workflow's `run:` steps ``ids``, in order, as GitHub runs them (bash -eo pipefail,
    the job's env with BASE_REF=main and no CML token); stops after the first failure."""
    steps = workflow_steps()
    env = ["BASE_REF=main", f"GITHUB_STEP_SUMMARY={summary}", "HAS_CML_TOKEN=false"]
    results = {}
    for step_id in ids:
        results[step_id] = run(["env", *env, "bash", "--noprofile", "--norc", "-eo", "pipefail",
                                "-c", steps[step_id]["run"]], cwd=repo, check=False)
        if results[step_id].returncode != 0:
            break
    return results


def evaluation(repo: Path, rev: str | None = None) -> dict:
    if rev:
        return json.loads(git("show", f"{rev}:metrics/evaluate.json", cwd=repo).stdout)
    return json.loads((repo / "metrics/evaluate.json").read_text())


def assert_report_pictures(repo: Path, text: str) -> list[str]:
    """Every picture report.md links exists beside it as a PNG with something drawn on it."""
    linked = IMAGE_LINK.findall(text)
    for name in linked:
        with Image.open(repo / "report" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200, (name, image.size)
            assert np.asarray(image.convert("L"), dtype=float).std() > 10, f"{name} is blank"
    return linked


def headline_row(label: str, old: float, new: float) -> str:
    return f"| {label} | {report.format_value(old)} | {report.format_value(new)} |"


@pytest.fixture(scope="module")
def review(tmp_path_factory) -> dict:
    """The repo after the workflow ran on a pull request's branch `worse`: main holds the
    baseline (`dvc repro`, `make baseline`), `worse` commits worse params, then the steps run
    there. Afterwards the branch's results are committed (for `make report REV=worse`) and the
    repo is back on main."""
    root = tmp_path_factory.mktemp("review")
    repo = init_project_repo(root / "repo", QUICK_PARAMS)
    dvc("repro", cwd=repo)
    run(["make", "baseline"], cwd=repo)
    git("checkout", "-q", "-b", "worse", cwd=repo)
    update_params(repo, WORSE_PARAMS)
    git("commit", "-q", "-am", "smaller learning rate", cwd=repo)

    summary = root / "summary.md"
    steps = run_steps(repo, STEP_IDS[1:], summary)
    state = {
        "repo": repo, "steps": steps,
        "report": (repo / "report/report.md").read_text(),
        "summary": summary.read_text(),
        "old": evaluation(repo, "main"), "new": evaluation(repo),
        "pictures": sorted(path.name for path in (repo / "report").glob("*.png")),
    }
    state["linked"] = assert_report_pictures(repo, state["report"])
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "results of the smaller learning rate", cwd=repo)
    git("checkout", "-q", "main", cwd=repo)
    return state


@pytest.mark.slow
def test_on_the_branch_the_report_shows_both_accuracies_and_its_pictures(review):
    steps, text = review["steps"], review["report"]
    assert [steps[step].returncode for step in ("base", "reproduce", "report", "summary")] == [
        0] * 4, {name: result.stderr[-2000:] for name, result in steps.items()}
    assert "Running stage 'train'" in steps["reproduce"].stdout  # CI trained the branch's params
    old, new = review["old"]["accuracy"], review["new"]["accuracy"]
    assert new < old - 0.1, (old, new)
    row = headline_row("test accuracy", old, new)
    assert row in text and row in review["summary"]
    assert headline_row("test errors", review["old"]["errors"], review["new"]["errors"]) in text
    assert "| `train.learning_rate` | 0.002 | 1e-05 |" in text
    assert "**Gate: fails**" in text and "- worse: test accuracy" in text
    # the pictures: training curves, errors per digit, normalized confusion matrix (both
    # revisions on each) and each revision's most confidently wrong digits
    expected = sorted([chart.file for chart in report.CHARTS]
                      + ["misclassified_main.png", "misclassified_workspace.png"])
    assert sorted(review["linked"]) == review["pictures"] == expected
    assert "![" not in review["summary"]  # a job summary cannot show local images


@pytest.mark.slow
def test_on_the_branch_the_gate_fails_one_line_per_reason(review):
    result = review["steps"]["gate"]
    assert result.returncode != 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("gate: ")]
    assert lines and lines[0].startswith("gate: worse: test accuracy"), result.stdout
    assert any(line.startswith("gate: worse: test macro F1") for line in lines)
    assert not any("stale" in line for line in lines)  # reproduced: only the metrics fail


@pytest.mark.slow
def test_on_main_the_steps_pass_and_the_report_says_nothing_changed(review, tmp_path):
    repo = review["repo"]
    steps = run_steps(repo, ["base", "reproduce", "report", "summary", "gate"],
                      tmp_path / "summary.md")
    assert {name: result.returncode for name, result in steps.items()} == dict.fromkeys(
        ["base", "reproduce", "report", "summary", "gate"], 0), steps["gate"].stdout
    assert "Running stage 'train'" not in steps["reproduce"].stdout  # from the run-cache
    verdict = [line for line in steps["gate"].stdout.splitlines() if line.startswith("gate:")]
    assert len(verdict) == 1 and verdict[0].startswith("gate: passed: accuracy "), verdict
    text = (repo / "report/report.md").read_text()
    assert "**Gate: passes**" in text and "No params changed." in text
    accuracy = review["old"]["accuracy"]
    assert headline_row("test accuracy", accuracy, accuracy) + " 0 |" in text
    assert_report_pictures(repo, text)


@pytest.mark.slow
def test_a_report_of_a_given_revision(review):
    """`make report REV=worse` on main: the branch's committed results against main's."""
    repo = review["repo"]
    run(["make", "-s", "report", "REV=worse"], cwd=repo)
    text = (repo / "report/report.md").read_text()
    assert headline_row("test accuracy", review["old"]["accuracy"],
                        evaluation(repo, "worse")["accuracy"]) in text
    assert "## Model report: worse against main" in text and "**Gate: fails**" in text
    assert {"misclassified_main.png", "misclassified_worse.png"} <= set(
        assert_report_pictures(repo, text))


@pytest.mark.slow
def test_the_gate_fails_on_stale_or_missing_results(review):
    repo = review["repo"]
    params_file, results = repo / "params.yaml", repo / "metrics/evaluate.json"
    original, scores = params_file.read_text(), results.read_text()
    try:
        update_params(repo, {"evaluate": {"batch_size": 256}})
        stale = run(["make", "-s", "gate"], cwd=repo, check=False)
        assert stale.returncode != 0
        assert "gate: stale: stage 'evaluate' (changed deps params.yaml" in stale.stdout
        params_file.write_text(original)
        results.unlink()
        missing = run(["make", "-s", "gate"], cwd=repo, check=False)
        assert missing.returncode != 0
        assert ("gate: missing: the workspace has no accuracy, macro_f1, errors"
                in missing.stdout), missing.stdout
        assert "metrics/evaluate.json (deleted)" in missing.stdout
    finally:
        params_file.write_text(original)
        results.write_text(scores)
    assert run(["make", "-s", "gate"], cwd=repo).returncode == 0


@pytest.mark.slow
def test_the_experiment_table_starts_with_test_accuracy_and_errors_at_120_columns(review):
    """`make exps` after an experiment with every key of `make sample`'s recipe (small values
    where the recipe's would take minutes): on a 120-column terminal the first screen holds
    the test accuracy and the errors, then changed params. Two views: the full-width table
    DVC pages in a terminal (its first 120 columns) and the folded one (`--no-pager`)."""
    repo = review["repo"]
    recipe = yaml.safe_load((PROJECT / "recipes/sample.yaml").read_text())
    recipe.update({"model.conv_filters": "[8,16,16]", "train.epochs": 2})
    overrides = [arg for key, value in recipe.items() for arg in ("-S", f"{key}={value}")]
    dvc("exp", "run", *overrides, cwd=repo)
    changed = json.loads(dvc("params", "diff", "--json", cwd=repo).stdout)["params.yaml"]
    assert len(changed) >= 8, sorted(changed)

    paged = run(["env", "COLUMNS=120", "make", "-s", "exps"], cwd=repo).stdout
    command = run(["make", "-s", "-n", "exps"], cwd=repo).stdout.strip()
    folded = run(["env", "COLUMNS=120", "bash", "-c", f"{command} --no-pager"], cwd=repo).stdout
    assert max(map(len, folded.splitlines())) <= 120, folded
    for table, screen in ((paged, [line[:120] for line in paged.splitlines()]),
                          (folded, folded.splitlines())):
        header = next(line for line in screen if "Experiment" in line).split()
        assert header[:3] == ["Experiment", "accuracy", "errors"], table
        assert header[3] in changed, (header, sorted(changed))
        rows = [line.split() for line in screen if line.strip().startswith(("workspace", "main"))]
        test_accuracy = {row[0]: float(row[1]) for row in rows}
        assert test_accuracy["main"] == review["old"]["accuracy"], table
