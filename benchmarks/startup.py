"""Start-up costs: import time of each stage script, and a no-op `dvc repro`.

    .venv/bin/python benchmarks/startup.py
    .venv/bin/python benchmarks/startup.py --repeat 5 --skip-dvc

Per stage: ``python -X importtime`` of loading ``stages/<name>.py`` as a module (its imports
run, its ``main()`` does not), summing the cumulative time of the top-level imports, and
whether TensorFlow is among them; also the wall time of that process. Then the wall time of
a no-op ``dvc repro`` (median of --repeat) in a temporary copy of the project already run on
mnist-sample with tiny settings (``TINY_OVERRIDES``: a clone of HEAD, `dvc exp run -S ...`), against
the floor: a one-stage toy pipeline (``echo hi > out.txt``). Writes
benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

LOADER = ("import importlib.util as u; s = u.spec_from_file_location('stage', {path!r}); "
          "m = u.module_from_spec(s); s.loader.exec_module(m)")


def import_profile(stage: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           LOADER.format(path=str(stage))],
                          cwd=common.ROOT, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    top_level: dict[str, float] = {}
    modules = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|")
        modules.add(name.strip())
        if not name[1:].startswith(" "):  # one space after the bar: a top-level import
            top_level[name.strip()] = int(cumulative) / 1e6
    return {"wall_s": wall, "imports_s": sum(top_level.values()),
            "tensorflow": "tensorflow" in modules, "keras": "keras" in modules,
            "dvc": "dvc" in modules, "modules": len(modules),
            "slowest_top_level": sorted(top_level.items(), key=lambda kv: -kv[1])[:5]}


def timed(function, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        runs.append(time.perf_counter() - started)
    return {"median_s": statistics.median(runs), "runs_s": runs}


# A two-epoch run of a tiny network on the bundled digits: what matters here is DVC's own cost.
TINY_OVERRIDES = ["data.dataset=mnist-sample", "model.conv_filters=[8,16]", "model.dense_units=32",
                  "train.epochs=2", "train.warmup_epochs=0", "train.early_stopping_patience=0",
                  "train.ema_momentum=0"]


def _run(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@example.com", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@example.com")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=True)


def dvc_noop(repeat: int) -> dict:
    def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return _run(sys.executable, "-m", "dvc", *args, cwd=cwd)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as tmp:
        toy = Path(tmp) / "toy"
        toy.mkdir()
        _run("git", "init", "-q", "-b", "main", cwd=toy)
        dvc("init", "-q", cwd=toy)
        dvc("stage", "add", "-q", "-n", "hi", "-o", "out.txt", "echo hi > out.txt", cwd=toy)
        _run("git", "add", "-A", cwd=toy)
        _run("git", "commit", "-q", "-m", "toy", cwd=toy)
        dvc("repro", cwd=toy)
        results["toy_one_stage"] = timed(lambda: dvc("repro", cwd=toy), repeat)
        results["dvc_version_s"] = timed(lambda: dvc("--version", cwd=toy), 1)["median_s"]

        repo = Path(tmp) / "repo"
        _run("git", "clone", "-q", str(common.ROOT), str(repo), cwd=Path(tmp))
        overrides = [argument for override in TINY_OVERRIDES for argument in ("-S", override)]
        results["project_full_repro_s"] = timed(
            lambda: dvc("exp", "run", *overrides, cwd=repo), 1)["median_s"]
        noop = dvc("repro", cwd=repo)
        assert "Running stage" not in noop.stdout, noop.stdout
        results["project_noop"] = timed(lambda: dvc("repro", cwd=repo), repeat)
        results["project_status"] = timed(lambda: dvc("status", cwd=repo), repeat)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-dvc", action="store_true")
    args = parser.parse_args()

    stages = {}
    for stage in sorted((common.ROOT / "stages").glob("[!_]*.py")):
        runs = [import_profile(stage) for _ in range(args.repeat)]
        median = sorted(runs, key=lambda run: run["imports_s"])[len(runs) // 2]
        median["wall_runs_s"] = [run["wall_s"] for run in runs]
        median["import_runs_s"] = [run["imports_s"] for run in runs]
        stages[stage.stem] = median
    common.print_table(
        ["stage", "imports s (median)", "process wall s", "tensorflow", "slowest import"],
        [[name, row["imports_s"], row["wall_s"], "yes" if row["tensorflow"] else "no",
          f"{row['slowest_top_level'][0][0]} {row['slowest_top_level'][0][1]:.2f} s"]
         for name, row in stages.items()])
    results = {"repeat": args.repeat, "stages": stages}
    if not args.skip_dvc:
        dvc_results = dvc_noop(args.repeat)
        results["dvc"] = dvc_results
        print()
        common.print_table(["dvc", f"median of {args.repeat} s"], [
            ["no-op `dvc repro`, toy one-stage pipeline (floor)",
             dvc_results["toy_one_stage"]["median_s"]],
            ["no-op `dvc repro`, this project (all stages, after a full run)",
             dvc_results["project_noop"]["median_s"]],
            ["`dvc status`, this project", dvc_results["project_status"]["median_s"]],
            ["full `dvc repro`, tiny settings (one run)", dvc_results["project_full_repro_s"]],
            ["`dvc --version` (one run)", dvc_results["dvc_version_s"]],
        ])
    common.write_results("startup", results)


if __name__ == "__main__":
    main()
