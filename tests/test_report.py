"""`make report`, `make exps` and the pull-request workflow that runs the report and the gate.

The pure parts (the report's tables, the charts it picks) on hand-made `dvc ... --json`
output in the per-source format of metrics/evaluate.json; the out folder's safety; `make
report` and the workflow's steps in a temporary git + DVC repo whose metrics and plots the
test writes (tests/test_gate.py's review_repo), a branch named like a shell command among
them. Then, marked slow, the workflow on the real pipeline: a temporary git + DVC repo with a
baseline on main (a tiny network on the bundled sample), a branch with worse params, and the
`run:` steps of .github/workflows/model-review.yml run there as GitHub would run them (all but
`install`, which the test's venv stands for): the report shows both accuracies and its
pictures exist, the gate fails on the branch and passes on main.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from project_repo import PROJECT, dvc, git, init_project_repo, run, update_params
from review_repo import (
    BASE,
    HOSTILE_BRANCH,
    MAKE_EXPANSION,
    MARKERS,
    assert_report_pictures,
    commit,
    evaluate_diff,
    metrics_entry,
    report_command,
    review_repo,
    scores,
    write_results,
)

from mnist_pipeline import report

WORKFLOW = PROJECT / ".github" / "workflows" / "model-review.yml"
STEP_IDS = ["install", "base", "reproduce", "report", "summary", "gate"]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


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


def test_the_metrics_table_shows_every_source_side_by_side_and_the_rest_under_the_fold():
    new = {"mnist": scores(0.612, 3880, 0.1), "extra": scores(0.5, 10, 0.2)}
    diff = evaluate_diff(BASE, new)
    diff["metrics/export.json"] = {"onnx_max_difference": metrics_entry(4.17e-07, 3e-07)}
    diff["metrics/evaluate.json"]["mnist.loss"] = metrics_entry(0.02, None)  # the old format
    headline, others = report.metrics_tables(diff, "main", "worse")
    assert headline.splitlines() == [
        "| metric | main | worse | change |",
        "| --- | ---: | ---: | ---: |",
        "| `mnist` test accuracy | 0.9964 | 0.612 | -0.3844 |",
        "| `mnist` test errors | 36 | 3880 | +3844 |",
        "| `mnist` test ECE (calibration error) | 0.01 | 0.1 | +0.09 |",
        "| `drawn` test accuracy | 0.97 | — |  |",
        "| `drawn` test errors | 105 | — |  |",
        "| `drawn` test ECE (calibration error) | 0.02 | — |  |",
        "| `extra` test accuracy | — | 0.5 |  |",
        "| `extra` test errors | — | 10 |  |",
        "| `extra` test ECE (calibration error) | — | 0.2 |  |",
        "| test digits | 10000 | 10000 | 0 |",
        "| dataset | mnist | mnist |  |",
    ]
    assert others.splitlines()[2:] == [
        "| `metrics/evaluate.json`: `mnist.loss` | 0.02 | — |  |",
        "| `metrics/export.json`: `onnx_max_difference` | 4.17e-07 | 3e-07 | -1.17e-07 |"]
    assert report.metrics_tables({}, "main", "workspace") == (
        "No metrics found on either side.", "")


@pytest.mark.parametrize(("old", "new", "change"), [
    (0.99, 0.995, "+0.005"), (3, 1, "-2"), (5, 5, "0"), (0.5, 0.5, "0"), (None, 0.9, ""),
    ("mnist", "mnist-sample", "changed"), ("mnist", "mnist", ""), (0.99, float("nan"), ""),
    (0.01, float("inf"), ""), (3, True, "changed"),
])
def test_changes_are_signed_numbers(old, new, change):
    assert report.format_change(old, new) == change


def test_the_charts_are_the_curves_then_each_source_found_on_either_side_in_order():
    plots = {"data": {plot_id: [] for plot_id in (
        "Loss", "plots/per_class/mnist.csv", "plots/per_class/drawn.csv",
        "plots/predictions/mnist.csv", "plots/class_counts/test.csv", "plots/robustness.csv")}}
    assert [(chart.plot_id, chart.file) for chart in report.charts(plots, ["mnist"])] == [
        ("Loss", "loss.png"), ("Accuracy", "accuracy.png"),
        ("plots/per_class/mnist.csv", "errors_per_digit_mnist.png"),
        ("plots/predictions/mnist.csv", "confusion_mnist.png"),
        ("plots/per_class/drawn.csv", "errors_per_digit_drawn.png")]
    assert [chart.file for chart in report.charts(plots)][2] == "errors_per_digit_drawn.png"


# --- the out folder --------------------------------------------------------------------------

def test_the_out_folder_holds_only_what_the_report_wrote(in_tmp_dir):
    (in_tmp_dir / "dvc.yaml").write_text(
        "stages:\n  plot:\n    cmd: x\n    plots:\n      - plots/images:\n          cache: false\n"
        "    outs:\n      - models/model.keras\n"
        "plots:\n  - Loss:\n      y:\n        dvclive/plots/metrics/train/loss.tsv: loss\n"
        "artifacts:\n  model:\n    path: models/serving\n")
    Path("README.md").write_text("# the project\n")
    for out, why in (("README.md", "--out README.md is not a folder"),
                     ("plots/images", "--out plots/images is plots/images, an output"),
                     ("plots", "--out plots holds plots/images, an output"),
                     (".", "--out . holds models/model.keras, an output"),
                     ("plots/images/sub", "--out plots/images/sub lies in plots/images"),
                     ("dvclive/plots", "--out dvclive/plots holds dvclive/plots/metrics/train"),
                     ("models/serving", "--out models/serving is models/serving")):
        with pytest.raises(report.OutDirError, match=re.escape(why)):
            report.Writer(Path(out))
    assert Path("README.md").read_text() == "# the project\n"

    out = report.Writer(Path("review"))  # new: made by clear()
    out.clear()
    out.write_text("report.md", "text")
    out.write_bytes("errors_per_digit_extra.png", b"png")
    assert sorted(path.name for path in Path("review").iterdir()) == [
        ".report-files", "errors_per_digit_extra.png", "report.md"]
    again = report.Writer(Path("review"))  # the next report deletes exactly those
    again.clear()
    assert [path.name for path in Path("review").iterdir()] == [".report-files"]
    Path("review/notes.txt").write_text("mine")
    Path("review/sub").mkdir()
    with pytest.raises(report.OutDirError, match=re.escape(
            "--out review holds files the report did not write (notes.txt, sub)")):
        report.Writer(Path("review"))
    Path("elsewhere").mkdir()
    Path("elsewhere/misclassified.png").write_bytes(b"not the report's")
    with pytest.raises(report.OutDirError, match="did not write .misclassified.png."):
        report.Writer(Path("elsewhere"))
    assert Path("elsewhere/misclassified.png").read_bytes() == b"not the report's"


# --- `make report` in a repository with metrics written by the test ----------------------------

@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return review_repo(tmp_path / "repo")


def test_make_report_shows_every_source_of_both_sides_and_runs_no_branch_name(repo):
    write_results(repo, {"mnist": scores(0.9, 1000, 0.05), "extra": scores(0.5, 7)})
    made = run(["make", "-s", "report", f"BASE={HOSTILE_BRANCH}"], cwd=repo, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    text = (repo / "report/report.md").read_text()
    assert "## Model report: workspace against x';>pwned;'" in text
    for row in ("| `mnist` test accuracy | 0.9964 | 0.9 | -0.0964 |",
                "| `mnist` test errors | 36 | 1000 | +964 |",
                "| `drawn` test accuracy | 0.97 | — |  |",
                "| `extra` test errors | — | 7 |  |"):
        assert row in text, text
    assert "- missing: the workspace has no test metrics of source 'drawn'" in text
    assert "- new: source 'extra' is not on x';>pwned;'" in text
    pictures = assert_report_pictures(repo / "report", text)
    assert sorted(pictures) == [
        "confusion_drawn.png", "confusion_extra.png", "confusion_mnist.png",
        "errors_per_digit_drawn.png", "errors_per_digit_extra.png", "errors_per_digit_mnist.png",
        "misclassified_mnist_workspace.png", "misclassified_mnist_x_pwned_.png"]
    assert sorted(path.name for path in (repo / "report").iterdir()) == sorted(
        [*pictures, ".report-files", "report.md", "summary.md"])
    assert "![" not in (repo / "report/summary.md").read_text()
    assert not any((repo / marker).exists() for marker in MARKERS)

    # REV too; and what a revision of $(...) or `-h` gets: one line, exit 1 (make: 2)
    commit(repo, "worse")
    made = run(["make", "-s", "report", "BASE=main", f"REV={HOSTILE_BRANCH}"], cwd=repo,
               check=False)
    assert made.returncode == 0, made.stderr
    assert "## Model report: x';>pwned;' against main" in (repo / "report/report.md").read_text()
    expanded = run(["make", "-s", "report", f"REV={MAKE_EXPANSION}"], cwd=repo, check=False)
    assert expanded.returncode == 2
    assert expanded.stderr.splitlines()[0] == (
        f"report: invalid: --rev {MAKE_EXPANSION!r} is not a commit of this repository (a "
        "branch, tag or commit hash)")
    for option, revision in (("--base", ""), ("--base", "--all"), ("--base", "-h"),
                             ("--rev", ""), ("--rev", "--help")):
        refused = report_command(repo, f"{option}={revision}")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr == f"report: invalid: {option} {revision!r} is not a commit of " \
                                 "this repository (a branch, tag or commit hash)\n"
    assert not any((repo / marker).exists() for marker in MARKERS)


def test_the_report_refuses_pipeline_outputs_and_folders_it_did_not_write(repo):
    (repo / "README.md").write_text("# read me\n")
    gallery = (repo / "plots/images/misclassified.png").read_bytes()
    for out, why in (("plots/images", "plots/images is plots/images, an output of the pipeline"),
                     ("README.md", "README.md is not a folder"),
                     (".", ". holds metrics/evaluate.json, an output of the pipeline")):
        refused = report_command(repo, f"--out={out}")
        assert refused.returncode == 1 and refused.stderr.startswith(
            f"report: refused: --out {why}"), refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    (repo / "notes").mkdir()
    (repo / "notes/todo.md").write_text("keep me")
    refused = report_command(repo, "--out=notes")
    assert refused.stderr == ("report: refused: --out notes holds files the report did not "
                              "write (todo.md): choose a new or empty folder\n")
    assert (repo / "README.md").read_text() == "# read me\n"
    assert (repo / "plots/images/misclassified.png").read_bytes() == gallery
    assert (repo / "notes/todo.md").read_text() == "keep me"
    assert not (repo / "report").exists()
    status = dvc("status", "--json", cwd=repo).stdout
    assert json.loads(status) == {}
    # a second report replaces its own files: a source gone from both sides leaves no picture
    write_results(repo, {**BASE, "extra": scores(0.5, 7)})
    assert report_command(repo).returncode == 0
    assert (repo / "report/errors_per_digit_extra.png").exists()
    write_results(repo, BASE)
    assert report_command(repo).returncode == 0
    assert not (repo / "report/errors_per_digit_extra.png").exists()
    assert (repo / "report/errors_per_digit_drawn.png").exists()


def test_the_workflow_steps_pass_a_base_branch_named_like_a_command_as_data(repo, tmp_path):
    """The pull request's base ref reaches make and the modules as data: the steps pass on
    the base itself and the redirection in its name writes nothing."""
    steps = run_steps(repo, STEP_IDS[1:], tmp_path / "summary.md", base_ref=HOSTILE_BRANCH)
    assert {name: result.returncode for name, result in steps.items()} == dict.fromkeys(
        STEP_IDS[1:], 0), {name: result.stdout + result.stderr for name, result in steps.items()}
    assert "gate: passed: mnist: accuracy 0.9964 vs 0.9964" in steps["gate"].stdout
    assert "## Model report: workspace against x';>pwned;'" in (
        tmp_path / "summary.md").read_text()
    assert not any((repo / marker).exists() for marker in MARKERS)


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
    "data": {"dataset": "mnist-sample", "drawn": False},  # the pen digits need the network
    "model": {"conv_filters": [8, 16], "dense_units": 32, "test_time_shifts": 0},
    "train": {"epochs": 2, "batch_size": 128, "warmup_epochs": 0, "early_stopping_patience": 0,
              "ema_momentum": 0},
}
SOURCE = "mnist-sample"  # the one test source of QUICK_PARAMS
# What the pull request changes: a learning rate 200x too small leaves the network near chance.
WORSE_PARAMS = {"train": {"learning_rate": 0.00001}}


def run_steps(repo: Path, ids: list[str], summary: Path,
              base_ref: str = "main") -> dict[str, subprocess.CompletedProcess]:
    """The workflow's `run:` steps ``ids``, in order, as GitHub runs them (bash -eo pipefail,
    the job's env with BASE_REF=base_ref and no CML token); stops after the first failure."""
    steps = workflow_steps()
    env = [f"BASE_REF={base_ref}", f"GITHUB_STEP_SUMMARY={summary}", "HAS_CML_TOKEN=false"]
    results = {}
    for step_id in ids:
        results[step_id] = run(["env", *env, "bash", "--noprofile", "--norc", "-eo", "pipefail",
                                "-c", steps[step_id]["run"]], cwd=repo, check=False)
        if results[step_id].returncode != 0:
            break
    return results


def evaluation(repo: Path, rev: str | None = None) -> dict:
    """The test metrics of SOURCE, committed at ``rev`` or in the workspace."""
    if rev:
        scores = json.loads(git("show", f"{rev}:metrics/evaluate.json", cwd=repo).stdout)
    else:
        scores = json.loads((repo / "metrics/evaluate.json").read_text())
    assert list(scores) == [SOURCE], scores  # data.drawn is off: one source
    return scores[SOURCE]


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
    state["linked"] = assert_report_pictures(repo / "report", state["report"])
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
    row = headline_row(f"`{SOURCE}` test accuracy", old, new)
    assert row in text and row in review["summary"]
    assert headline_row(f"`{SOURCE}` test errors", review["old"]["errors"],
                        review["new"]["errors"]) in text
    assert "| `train.learning_rate` | 0.002 | 1e-05 |" in text
    assert "**Gate: fails**" in text and f"- worse: {SOURCE} test accuracy" in text
    # the pictures: training curves, the source's errors per digit and confusion matrix (both
    # revisions on each) and each revision's most confidently wrong digits
    expected = sorted([chart.file for chart in report.CURVES]
                      + [f"errors_per_digit_{SOURCE}.png", f"confusion_{SOURCE}.png",
                         f"misclassified_{SOURCE}_main.png",
                         f"misclassified_{SOURCE}_workspace.png"])
    assert sorted(review["linked"]) == review["pictures"] == expected
    assert "![" not in review["summary"]  # a job summary cannot show local images


@pytest.mark.slow
def test_on_the_branch_the_gate_fails_one_line_per_reason(review):
    result = review["steps"]["gate"]
    assert result.returncode != 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("gate: ")]
    assert lines and lines[0].startswith(f"gate: worse: {SOURCE} test accuracy"), result.stdout
    assert any(line.startswith(f"gate: worse: {SOURCE} ") and "test errors vs" in line
               for line in lines), lines
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
    assert len(verdict) == 1 and verdict[0].startswith(f"gate: passed: {SOURCE}: accuracy "), (
        verdict)
    text = (repo / "report/report.md").read_text()
    assert "**Gate: passes**" in text and "No params changed." in text
    accuracy = review["old"]["accuracy"]
    assert headline_row(f"`{SOURCE}` test accuracy", accuracy, accuracy) + " 0 |" in text
    assert_report_pictures(repo / "report", text)


@pytest.mark.slow
def test_a_report_of_a_given_revision(review):
    """`make report REV=worse` on main: the branch's committed results against main's."""
    repo = review["repo"]
    run(["make", "-s", "report", "REV=worse"], cwd=repo)
    text = (repo / "report/report.md").read_text()
    assert headline_row(f"`{SOURCE}` test accuracy", review["old"]["accuracy"],
                        evaluation(repo, "worse")["accuracy"]) in text
    assert "## Model report: worse against main" in text and "**Gate: fails**" in text
    assert {f"misclassified_{SOURCE}_main.png", f"misclassified_{SOURCE}_worse.png"} <= set(
        assert_report_pictures(repo / "report", text))


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
        assert ("gate: missing: the workspace has no test metrics in metrics/evaluate.json"
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
    the test accuracy and the errors of each source (one here), then changed params. Two
    views: the full-width table DVC pages in a terminal (its first 120 columns) and the folded
    one (`--no-pager`). Needs the Makefile's EXPS_KEEP to match per-source columns."""
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
        assert header[:3] == ["Experiment", f"{SOURCE}.accuracy", f"{SOURCE}.errors"], table
        assert header[3] in changed, (header, sorted(changed))
        rows = [line.split() for line in screen if line.strip().startswith(("workspace", "main"))]
        test_accuracy = {row[0]: float(row[1]) for row in rows}
        assert test_accuracy["main"] == review["old"]["accuracy"], table
