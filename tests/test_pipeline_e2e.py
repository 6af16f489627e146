"""The whole pipeline under DVC, as a user drives it, in a temporary git repository.

One run of `dvc repro` on the bundled mnist-sample with a tiny, short training (the
session's ``quick_baseline``, which the corrections loop copies too) serves every test here:
reruns, params-to-stage dependencies, diffs across branches (also from a fresh clone without
the DVC cache) and `dvc exp run`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from project_repo import (
    PROJECT,
    copy_repo,
    dvc,
    git,
    run,
    update_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_repo(quick_baseline, tmp_path_factory) -> Path:
    """A git+DVC repo holding the project, after one full `dvc repro` on the sample, committed
    on main with `make baseline` as the README says (a copy of the session's)."""
    return copy_repo(quick_baseline, tmp_path_factory.mktemp("pipeline") / "repo")


# What the `dvc exp show` of docs/experiments-and-review.md leaves out: the time, dependency
# hashes (names with a slash), metrics/data.json (the dataset's name, the split sizes), the
# ONNX parity check, the fitted temperature and threshold, and each source's ECE.
README_EXP_SHOW_DROP = (r"Created|.*/|dataset$|.*\.size$|onnx_.*|temperature|min_confidence"
                        r"|.*\.ece$")


def readme_commands(section: str) -> list[str]:
    """The lines of the first ```bash block under the README heading ``section``, comments
    and blank lines dropped."""
    text = (PROJECT / "README.md").read_text()
    block = text.split(f"## {section}\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def output_bytes(repo: Path, *more_folders: str) -> dict[str, bytes]:
    """Every file the stages after preprocess write (and in ``more_folders``), path -> content."""
    folders = ("models", "dvclive", "metrics", "plots", *more_folders)
    return {str(path.relative_to(repo)): path.read_bytes()
            for folder in folders for path in sorted((repo / folder).rglob("*"))
            if path.is_file() and path.name != ".gitignore"}


def changed_stages(repo: Path) -> set[str]:
    """Stages whose own deps or params changed since the last run, according to DVC."""
    status = json.loads(dvc("status", "--json", cwd=repo).stdout or "{}")
    return {name.split(":")[-1] for name in status}


def test_repro_writes_every_output(pipeline_repo):
    repo = pipeline_repo
    for path in ("data/raw/manifest.json", "data/prepared/train_images.npy",
                 "models/base.keras", "models/model.keras", "metrics/data.json",
                 "metrics/evaluate.json", "metrics/corrections.json",
                 "dvclive/metrics.json", "plots/predictions/mnist-sample.csv",
                 "data/prepared/sources.json"):
        assert (repo / path).is_file(), path
    assert list((repo / "plots/images").glob("*.png"))
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    # Two short epochs of a tiny convnet on 5,000 real digits beat chance (10%) by far.
    assert set(evaluation) == {"mnist-sample"}  # one source: the dataset's test split
    assert evaluation["mnist-sample"]["accuracy"] > 0.5
    tracked = git("ls-files", cwd=repo).stdout.split()
    assert "metrics/evaluate.json" in tracked and "dvc.lock" in tracked
    # `make baseline` committed every result: nothing left over
    assert git("status", "--porcelain", cwd=repo).stdout == ""
    # Data and models are DVC's; git holds their .gitignore files and data/extra's README.
    cached_in_git = [path for path in tracked
                     if path.startswith(("data/", "models/")) and not path.endswith(".gitignore")
                     and path != "data/extra/README.md"]
    assert cached_in_git == []


def test_second_repro_runs_no_stage(pipeline_repo):
    result = dvc("repro", cwd=pipeline_repo)
    assert "Running stage" not in result.stdout
    assert changed_stages(pipeline_repo) == set()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"plot": {"figure_dpi": 90}}, {"plot"}),
        ({"evaluate": {"batch_size": 256}}, {"evaluate"}),
        ({"train": {"epochs": 3}}, {"train"}),
        ({"model": {"dense_units": 16}}, {"train"}),
        ({"model": {"test_time_shifts": 8}}, {"train", "finetune"}),
        ({"corrections": {"epochs": 2}}, {"finetune"}),
        ({"corrections": {"test_fraction": 0.5}}, {"read_corrections", "finetune"}),
        ({"preprocess": {"val_fraction": 0.2}}, {"preprocess"}),
        ({"data": {"retries": 1}}, {"download"}),
        ({"seed": 7}, {"preprocess", "train", "finetune", "plot"}),
    ],
)
def test_a_params_change_reruns_only_the_stages_that_read_it(pipeline_repo, change, expected):
    params_file = pipeline_repo / "params.yaml"
    original = params_file.read_text()
    try:
        update_params(pipeline_repo, change)
        # check_params reads every key: it reruns (in well under a second) on any change
        assert changed_stages(pipeline_repo) == expected | {"check_params"}
    finally:
        params_file.write_text(original)


def test_a_params_typo_fails_before_any_output_is_removed(pipeline_repo):
    repo = pipeline_repo
    first = output_bytes(repo, "data")
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        update_params(repo, {"train": {"epochs": "10"}})
        result = dvc("repro", "train", cwd=repo, check=False)
        assert result.returncode != 0
        assert "check_params: train.epochs: expected an integer" in result.stderr + result.stdout
        assert "Running stage 'train'" not in result.stdout
        after = output_bytes(repo, "data")
        assert after == {path: data for path, data in first.items()
                         if path != "data/params.ok"}
    finally:
        params_file.write_text(original)
        dvc("checkout", "-q", cwd=repo)
    assert output_bytes(repo, "data") == first


def test_params_run_before_are_restored_from_the_run_cache(pipeline_repo):
    """A -> B -> A: going back to params already run restores every stage's outputs from the
    run-cache (train included) without running its command, byte for byte."""
    repo = pipeline_repo
    first = output_bytes(repo)
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        update_params(repo, {"train": {"epochs": 1}})
        assert "Running stage 'train'" in dvc("repro", cwd=repo).stdout
        assert output_bytes(repo) != first
        params_file.write_text(original)
        back = dvc("repro", cwd=repo).stdout
        for stage in ("train", "evaluate", "plot"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back, back
        assert "Running stage" not in back
        assert output_bytes(repo) == first
        # `dvc exp run` takes B from the run-cache as well
        again = dvc("exp", "run", "-S", "train.epochs=1", cwd=repo).stdout
        assert "Stage 'train' is cached - skipping run" in again, again
        assert "Running stage 'train'" not in again
        # The docs' table of experiments, here with one changed param: on a 120-column
        # terminal nothing collapses into "…".
        table = run(["bash", "-c", "COLUMNS=120 dvc exp show --only-changed --no-pager "
                     f"--drop '{README_EXP_SHOW_DROP}'"], cwd=repo).stdout
        assert "…" not in table, table
        header = table.splitlines()[1].split()
        assert {"eval.accuracy", "mnist-sample.accuracy", "mnist-sample.errors",
                "train.epochs"} <= set(header), table
        assert max(map(len, table.splitlines())) <= 120
    finally:  # back to the committed run: params, dvc.lock and git-tracked results, then DVC's
        git("checkout", "-q", "--", ".", cwd=repo)
        dvc("checkout", "-q", cwd=repo)
    assert output_bytes(repo) == first


def test_the_docs_show_the_exp_show_command_the_tests_check():
    assert f"dvc exp show --only-changed --drop '{README_EXP_SHOW_DROP}'" in (
        PROJECT / "docs" / "experiments-and-review.md").read_text()


def test_the_readme_comparison_commands_show_both_values(pipeline_repo):
    """README, "The everyday loop", run line by line after the fixture's `make baseline`."""
    repo = pipeline_repo
    commands = readme_commands("The everyday loop")
    assert commands[0] == "make baseline"  # what the fixture ran
    outputs = {}
    try:
        for command in commands[1:]:
            outputs[command] = run(["bash", "-c", command], cwd=repo).stdout
        metrics_diff = next(out for command, out in outputs.items()
                            if command.startswith("dvc metrics diff main"))
        params_diff = next(out for command, out in outputs.items()
                           if command.startswith("dvc params diff main"))
        # e.g. "metrics/evaluate.json  mnist-sample.accuracy  0.91  0.93  0.02": both values
        accuracy = next(line for line in metrics_diff.splitlines()
                        if line.split()[:2] == ["metrics/evaluate.json",
                                                "mnist-sample.accuracy"])
        old, new = (float(value) for value in accuracy.split()[2:4])
        evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
        assert new == pytest.approx(evaluation["mnist-sample"]["accuracy"]) and old != new
        assert "model.dense_units" in params_diff
    finally:
        git("checkout", "-q", "-f", "main", cwd=repo)
        dvc("checkout", "-q", cwd=repo)


def test_diffs_across_branches_work_in_a_fresh_clone(pipeline_repo, tmp_path):
    repo = pipeline_repo
    git("checkout", "-q", "-b", "faster-lr", cwd=repo)
    try:
        update_params(repo, {"train": {"learning_rate": 0.01}})
        dvc("repro", cwd=repo)
        git("commit", "-q", "-am", "higher learning rate", cwd=repo)

        for where in (repo, _fresh_clone(repo, tmp_path / "clone")):
            params_diff = json.loads(dvc("params", "diff", "main", "--json", cwd=where).stdout)
            learning_rate = params_diff["params.yaml"]["train.learning_rate"]
            assert (learning_rate["old"], learning_rate["new"]) == (0.002, 0.01)
            metrics_diff = json.loads(dvc("metrics", "diff", "main", "--json", cwd=where).stdout)
            assert "metrics/evaluate.json" in metrics_diff
            assert "mnist-sample.accuracy" in metrics_diff["metrics/evaluate.json"]
            plots_diff = dvc("plots", "diff", "main", "--json", cwd=where).stdout
            assert '"main"' in plots_diff and "workspace" in plots_diff
    finally:
        git("checkout", "-q", "main", cwd=repo)
        dvc("checkout", "-q", cwd=repo)


def _fresh_clone(repo: Path, destination: Path) -> Path:
    git("clone", "-q", str(repo), str(destination), cwd=repo.parent)
    assert not (destination / ".dvc" / "cache").exists()
    git("checkout", "-q", "faster-lr", cwd=destination)
    return destination


def test_exp_run_with_a_param_override_is_read_back(pipeline_repo):
    dvc("exp", "run", "-S", "train.epochs=1", "-n", "one-epoch", cwd=pipeline_repo)
    rows = json.loads(dvc("exp", "show", "--json", cwd=pipeline_repo).stdout)
    experiments = [
        exp for row in rows for exp in (row.get("experiments") or [])
        for run in exp.get("revs", []) if run.get("name") == "one-epoch"
    ]
    assert experiments, rows

