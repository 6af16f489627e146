"""`make gate` (mnist_pipeline/gate.py) and the DVC calls it shares with the report
(mnist_pipeline/dvc_cli.py).

The pure part (the gate's verdict) on hand-made `dvc metrics diff --json` output in the
per-source format of metrics/evaluate.json; then the command itself in temporary git + DVC
repositories whose metrics the tests write (no training): revisions are verified as commits
and reach DVC and make as data, invalid metrics fail closed, `make gate` exits 2 where the
module exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from project_repo import git, run
from review_repo import (
    BASE,
    HOSTILE_BRANCH,
    MAKE_EXPANSION,
    MARKERS,
    commit,
    evaluate_diff,
    metrics_entry,
    review_repo,
    scores,
    write_results,
)

from mnist_pipeline import dvc_cli, gate

# --- the verdict, pure -----------------------------------------------------------------------

def test_the_gate_passes_on_the_base_itself_and_within_the_thresholds():
    verdict = gate.compare(evaluate_diff(BASE, BASE), "main")
    assert (verdict.failures, verdict.notes) == ([], [])
    # 0.3 point down on drawn; errors +9 on mnist (25% of 36, rounded up), +2 on a tiny base
    within = {"mnist": scores(0.9955, 45), "drawn": scores(0.967, 105)}
    assert gate.compare(evaluate_diff(BASE, within), "main").failures == []
    tiny = {"mnist": scores(0.99, 1)}
    assert gate.compare(evaluate_diff(tiny, {"mnist": scores(0.99, 3)}), "main").failures == []


def test_each_source_of_the_base_is_compared_on_its_own():
    worse = {"mnist": scores(0.9964, 46), "drawn": scores(0.96, 105)}
    assert gate.compare(evaluate_diff(BASE, worse), "main").failures == [
        "worse: mnist 46 test errors vs 36 on main (+10; at most +9 allowed)",
        "worse: drawn test accuracy 0.9600 vs 0.9700 on main (-0.0100; at most -0.0030 "
        "allowed)",
    ]
    # errors of test splits of other sizes are not compared (accuracy says it all)
    assert gate.compare(evaluate_diff(BASE, worse, sizes=(10000, 5000)), "main").failures == [
        "worse: drawn test accuracy 0.9600 vs 0.9700 on main (-0.0100; at most -0.0030 "
        "allowed)"]
    tolerant = gate.Thresholds(accuracy_drop=1.0, errors_rise=1.0)
    assert gate.compare(evaluate_diff(BASE, worse), "main", tolerant).failures == []


def test_a_source_of_the_base_missing_in_the_workspace_fails_a_new_one_is_only_named():
    only_mnist = {"mnist": BASE["mnist"]}
    verdict = gate.compare(evaluate_diff(BASE, only_mnist), "main")
    assert verdict.failures == [
        "missing: the workspace has no test metrics of source 'drawn' in "
        "metrics/evaluate.json, which main has (run `dvc repro`)"]
    verdict = gate.compare(evaluate_diff(only_mnist, BASE), "main")
    assert verdict.failures == []
    assert verdict.notes == [
        "new: source 'drawn' is not on main: accuracy 0.9700, errors 105, not compared"]


def test_the_gate_fails_when_either_side_has_no_test_metrics():
    assert gate.compare({}, "main").failures == [
        "missing: the workspace has no test metrics in metrics/evaluate.json (run `dvc repro`)",
        "missing: main has no test metrics in metrics/evaluate.json (commit a baseline there: "
        "`make baseline`)"]
    # a base from before the per-source format: fails closed, and says why
    flat = {gate.EVALUATE_FILE: {"accuracy": metrics_entry(0.99, None),
                                 "errors": metrics_entry(5, None)}}
    flat[gate.EVALUATE_FILE].update(evaluate_diff({}, BASE)[gate.EVALUATE_FILE])
    assert gate.compare(flat, "main").failures == [
        "missing: main has no test metrics in metrics/evaluate.json (only metrics without a "
        "source block, from before them) (commit a baseline there: `make baseline`)"]
    no_errors = {"mnist": {"accuracy": 0.99, "ece": 0.01}}
    assert gate.compare(evaluate_diff(BASE, no_errors), "main").failures[0] == (
        "missing: the workspace has no errors of source 'mnist' in metrics/evaluate.json "
        "(run `dvc repro`)")


@pytest.mark.parametrize(("metric", "value", "shown"), [
    ("accuracy", float("nan"), "accuracy nan"),
    ("accuracy", float("inf"), "accuracy inf"),
    ("accuracy", 1.5, "accuracy 1.5"),
    ("accuracy", -0.1, "accuracy -0.1"),
    ("accuracy", True, "accuracy True"),
    ("accuracy", "0.99", "accuracy '0.99'"),
    ("errors", True, "errors True"),
    ("errors", -1, "errors -1"),
    ("errors", 3.5, "errors 3.5"),
    ("errors", float("nan"), "errors nan"),
    ("ece", float("-inf"), "ece -inf"),
    ("ece", False, "ece False"),
])
@pytest.mark.parametrize("side", ["old", "new"])
def test_a_value_that_is_not_a_finite_number_in_range_fails_closed(metric, value, shown, side):
    bad = {"mnist": {**BASE["mnist"], metric: value}, "drawn": BASE["drawn"]}
    old, new = (bad, BASE) if side == "old" else (BASE, bad)
    name = "main" if side == "old" else "the workspace"
    assert gate.compare(evaluate_diff(old, new), "main").failures == [
        f"invalid: {name}'s metrics/evaluate.json has mnist.{shown} (accuracy and ece must be "
        "finite numbers in 0..1, errors a non-negative integer)"]


def test_invalid_values_of_a_side_are_one_line():
    bad = {"mnist": scores(float("nan"), True, float("inf")), "drawn": scores("high", 3)}
    assert gate.compare(evaluate_diff(BASE, bad), "main").failures == [
        "invalid: the workspace's metrics/evaluate.json has mnist.accuracy nan, mnist.ece inf, "
        "mnist.errors True, drawn.accuracy 'high' (accuracy and ece must be finite numbers in "
        "0..1, errors a non-negative integer)"]


def test_the_passing_summary_names_each_source_the_dataset_first():
    diff = evaluate_diff(BASE, BASE)
    assert gate.summary(diff, "main") == (
        "mnist: accuracy 0.9964 vs 0.9964, errors 36 vs 36; drawn: accuracy 0.9700 vs 0.9700, "
        "errors 105 vs 105 on main")


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


# --- a repository with metrics written by the test ---------------------------------------------

def gate_command(repo: Path, *args: str):
    return run([sys.executable, "-m", "mnist_pipeline.gate", *args], cwd=repo, check=False)


def assert_one_line(result, prefix: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return review_repo(tmp_path / "repo")


def test_the_gate_passes_on_the_base_and_fails_a_worse_workspace(repo):
    passed = gate_command(repo)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines() == [
        "gate: passed: mnist: accuracy 0.9964 vs 0.9964, errors 36 vs 36; drawn: accuracy "
        "0.9700 vs 0.9700, errors 105 vs 105 on main"]
    write_results(repo, {"mnist": scores(0.99, 100), "drawn": BASE["drawn"],
                         "extra": scores(0.5, 7)})
    failed = gate_command(repo)
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [
        "gate: worse: mnist test accuracy 0.9900 vs 0.9964 on main (-0.0064; at most -0.0030 "
        "allowed)",
        "gate: worse: mnist 100 test errors vs 36 on main (+64; at most +9 allowed)",
        "gate: new: source 'extra' is not on main: accuracy 0.5000, errors 7, not compared"]


@pytest.mark.parametrize("written", ["NaN", "Infinity", "true", '"0.99"'])
def test_invalid_metrics_fail_closed_on_either_side(repo, written):
    text = json.dumps(BASE).replace("0.9964", written)
    (repo / "metrics/evaluate.json").write_text(text)  # the workspace
    assert_one_line(gate_command(repo), "gate: invalid: the workspace's metrics/evaluate.json "
                                        "has mnist.accuracy ")
    git("checkout", "-q", "-b", "broken-base", cwd=repo)
    commit(repo, "a base with an invalid metric")
    git("checkout", "-q", "main", cwd=repo)
    assert_one_line(gate_command(repo, "--base", "broken-base"),
                    "gate: invalid: broken-base's metrics/evaluate.json has mnist.accuracy ")


@pytest.mark.parametrize("base", ["", "--all", "-h", "no-such-branch", "HEAD^{tree}",
                                  "HEAD~5"])
def test_a_base_that_is_not_a_commit_is_one_line(repo, base):
    result = gate_command(repo, f"--base={base}")
    assert_one_line(result, f"gate: invalid: --base {base!r} is not a commit")


def test_revisions_are_verified_as_commits_and_given_to_dvc_as_data(repo, monkeypatch):
    monkeypatch.chdir(repo)
    head = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert dvc_cli.verify_commit("main") == dvc_cli.verify_commit(HOSTILE_BRANCH) == head
    for revision in ("", "--all", "-h", "--help", "HEAD^{tree}", "main:dvc.yaml"):
        with pytest.raises(dvc_cli.RevisionError):
            dvc_cli.verify_commit(revision)
    with pytest.raises(dvc_cli.RevisionError):
        dvc_cli.metrics_diff("--all")
    diff = dvc_cli.metrics_diff(HOSTILE_BRANCH)  # after `--`: a revision, not an option
    assert diff[gate.EVALUATE_FILE]["mnist.accuracy"] == {"old": 0.9964, "new": 0.9964,
                                                          "diff": 0}
    assert not any((repo / marker).exists() for marker in MARKERS)
    with pytest.raises(dvc_cli.DvcError, match="`dvc metrics diff --all --bogus` failed"):
        dvc_cli.dvc_json("metrics", "diff", "--all", "--bogus")


def test_make_gate_passes_revisions_as_data_and_exits_2_when_the_gate_fails(repo):
    passed = run(["make", "-s", "gate", f"BASE={HOSTILE_BRANCH}"], cwd=repo, check=False)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.startswith("gate: passed: ") and f"on {HOSTILE_BRANCH}\n" in (
        passed.stdout)
    expanded = run(["make", "-s", "gate", f"BASE={MAKE_EXPANSION}"], cwd=repo, check=False)
    assert expanded.returncode == 2  # the module's 1, as make reports a failed recipe
    assert expanded.stdout == f"gate: invalid: --base {MAKE_EXPANSION!r} is not a commit of " \
                              "this repository (a branch, tag or commit hash)\n"
    environment = run(["env", f"BASE={MAKE_EXPANSION}", "make", "-s", "gate"], cwd=repo,
                      check=False)
    assert environment.returncode == 2 and "invalid: --base '$(shell" in environment.stdout
    assert not any((repo / marker).exists() for marker in MARKERS), sorted(
        path.name for path in repo.iterdir())
    # a failing gate: the module exits 1, make 2 (what the docs say of each)
    write_results(repo, {"mnist": scores(0.9, 1000), "drawn": BASE["drawn"]})
    assert gate_command(repo).returncode == 1
    failed = run(["make", "-s", "gate"], cwd=repo, check=False)
    assert failed.returncode == 2
    assert failed.stdout.startswith("gate: worse: mnist test accuracy 0.9000 vs 0.9964 on main")
