"""A checkout that has run the pipeline stays green: git status clean, lint and tests passing.

`make sample`, `make repro` and `dvc exp run -S ...` write dvclive/, metrics/, plots/ and the
models at the top of the checkout and apply their params to params.yaml; CI's fresh clone never
sees any of that, so these tests build such a checkout and check it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from committed import committed_params_text, committed_text

PROJECT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load(committed_text("dvc.yaml"))
RUFF = Path(sys.executable).parent / "ruff"


def cached_outs() -> list[str]:
    """Every stage's `outs:` that DVC caches (and so lists in a .gitignore beside it)."""
    found = []
    for stage in DVC_YAML["stages"].values():
        for out in stage.get("outs", []):
            path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if options.get("cache", True):
                found.append(path)
    return found


def uncached_results() -> list[str]:
    """The `cache: false` metrics and plots: they live in git, so no .gitignore may hide them."""
    found = []
    for stage in DVC_YAML["stages"].values():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = (entry, {}) if isinstance(entry, str) else next(
                    iter(entry.items()))
                if options.get("cache", True) is False:
                    found.append(path)
    return found


def test_dvc_yaml_has_outs_of_both_kinds():
    assert {"models/model.keras", "models/model.onnx", "data/prepared"} <= set(cached_outs())
    assert "dvclive/metrics.json" in uncached_results()


@pytest.mark.parametrize("out", cached_outs())
def test_each_cached_out_is_already_in_the_gitignore_dvc_writes(out):
    """DVC adds `/<name>` to the .gitignore beside each cached out on the first run; a line
    missing from the committed file leaves a fresh clone's first run with git dirty."""
    parent, name = os.path.split(out)
    gitignore = os.path.join(parent, ".gitignore")
    assert f"/{name}" in committed_text(gitignore).splitlines(), f"{gitignore}: /{name}"


@pytest.mark.parametrize("result", uncached_results())
def test_no_gitignore_hides_a_result_that_lives_in_git(result):
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", result], cwd=PROJECT)
    assert ignored.returncode == 1, f"{result} is ignored"


def copy_checkout(destination: Path) -> None:
    """The project's files (tracked, or new and not ignored) in a new git repo, committed with
    the committed params.yaml, as in a clone."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT, capture_output=True, text=True, check=True).stdout.split("\0")
    for relative in filter(None, listed):
        source = PROJECT / relative
        # A run's own results in this checkout are left out: the test writes its own.
        if not source.is_file() or relative.startswith(("dvclive/", "metrics/", "plots/")):
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (destination / "params.yaml").write_text(committed_params_text())
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], cwd=destination, check=True)


def write_output(checkout: Path, relative: str) -> None:
    """A stand-in for one of dvc.yaml's outputs: a file where the name has a suffix, else a
    folder holding one (no Python in either)."""
    target = checkout / relative
    if Path(relative).suffix:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}\n" if relative.endswith(".json") else "stand-in\n")
    else:
        target.mkdir(parents=True, exist_ok=True)
        (target / "part.csv").write_text("step,value\n0,1\n")


def add_run_outputs(checkout: Path) -> None:
    """What `dvc exp run -S train.epochs=3` leaves behind: its params applied to params.yaml,
    every output dvc.yaml declares, dvc.lock, dvclive's own files (per-epoch TSVs, no Python),
    and what `dvc plots show` and `make report` write."""
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    assert params["train"]["epochs"] != 3
    params["train"]["epochs"] = 3
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for relative in [*cached_outs(), *uncached_results(), "dvc.lock",
                     "dvclive/plots/metrics/train/loss.tsv", "dvclive/params.yaml",
                     "dvc_plots/index.html", "report/report.md"]:
        write_output(checkout, relative)


@pytest.fixture(scope="module")
def checkout_after_a_run(tmp_path_factory) -> Path:
    checkout = tmp_path_factory.mktemp("clone") / "project"
    copy_checkout(checkout)
    add_run_outputs(checkout)
    return checkout


def test_a_run_leaves_git_status_clean_but_for_its_results(checkout_after_a_run):
    """Only what `make baseline` commits shows (params.yaml, dvc.lock, dvclive/, metrics/,
    plots/): DVC's caches, the models and the data stay out of git's way."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=checkout_after_a_run, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    changed = {line[3:] for line in status}
    assert {"params.yaml", "dvc.lock", "dvclive/metrics.json"} <= changed
    baseline = ("params.yaml", "dvc.lock", "dvclive/", "metrics/", "plots/")
    assert sorted(path for path in changed if not path.startswith(baseline)) == []


@pytest.mark.skipif(not RUFF.exists(), reason="needs ruff in the venv (make install)")
def test_ruff_passes_after_a_run(checkout_after_a_run):
    # --no-cache: a cache from before the run would hide what the new folders change
    done = subprocess.run([str(RUFF), "check", "--no-cache", "."], cwd=checkout_after_a_run,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_params_tests_pass_after_an_experiment(checkout_after_a_run):
    """The tests that check params.yaml read the committed file, not the experiment's."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_params.py", "tests/test_check_params.py"],
        cwd=checkout_after_a_run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


PIPELINE_SHELL = PROJECT / "tools" / "pipeline-shell"


def test_the_pipeline_shell_drops_start_up_noise_and_keeps_the_rest_and_the_status():
    """`make sample`, `repro` and `fashion` run in tools/pipeline-shell: DVC's first-run lines
    and TensorFlow's native start-up lines go, every other line stays, in order."""
    noise = [
        "WARNING: No file hash info found for '/x/data/raw'. It won't be created.",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796660217.767323   17613 port.cc:153] oneDNN custom operations are on. "
        "You may see slightly different numerical results",
        "E0000 00:00:1796663581.768002   14446 node_def_util.cc:682] NodeDef mentions attribute "
        "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>",
    ]
    kept = ["Running stage 'train':", "train: oneDNN is fine", "ERROR: failed to reproduce"]
    script = "; ".join(f"echo {shlex.quote(line)} >&2" for line in [*noise, *kept])
    done = subprocess.run([str(PIPELINE_SHELL), "-c", f"echo out; {script}; exit 3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr.splitlines() == kept
