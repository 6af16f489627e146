"""dvc.yaml and the code agree: each stage depends on exactly the code and params it uses.

DVC reruns a stage only when one of its declared deps or params changes, so a missing dep
means a stale result and an extra one means wasted reruns. These tests read the stage
scripts' imports (AST, transitively through the library) and their `params.<section>`
accesses, and compare them with dvc.yaml.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from mnist_pipeline import paths
from mnist_pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mnist_pipeline"
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def _module_file(module: str) -> Path | None:
    """The repo file of a project module name, or None for third-party modules."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    relative = Path(*module.split("."))
    for candidate in (ROOT / relative.with_suffix(".py"), ROOT / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    raise AssertionError(f"import of {module}: no such project module")


def _imported_modules(source_file: Path) -> set[str]:
    tree = ast.parse(source_file.read_text(), filename=str(source_file))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            # `from mnist_pipeline import fileio` imports the submodule mnist_pipeline.io
            modules.update(
                f"{node.module}.{alias.name}" for alias in node.names if node.module == PACKAGE
            )
    return modules


def project_files_used(script: Path) -> set[str]:
    """The script plus every project module it imports, directly or indirectly.

    mnist_pipeline/__init__.py is left out on purpose: it holds no logic (only the version),
    so listing it in every stage would rerun the whole pipeline on a version bump.
    """
    seen: set[Path] = set()
    pending = [script]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for module in _imported_modules(current):
            module_file = _module_file(module) if module.startswith(PACKAGE) else None
            if module_file is not None and module_file.name != "__init__.py":
                pending.append(module_file)
    return {str(path.relative_to(ROOT)) for path in seen}


def _script_of(stage: dict) -> Path:
    command = stage["cmd"].split()
    assert command[0] == "python" and len(command) == 2, f"unexpected cmd {stage['cmd']!r}"
    return ROOT / command[1]


def _deps(stage: dict) -> list[str]:
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]


def _declared(stage: dict, kind: str) -> dict[str, dict]:
    """A stage's ``outs``, ``metrics`` or ``plots`` entries: path -> options."""
    return dict((out, {}) if isinstance(out, str) else next(iter(out.items()))
                for out in stage.get(kind, []))


def _outs(stage: dict) -> list[str]:
    """Every file or folder the stage writes, whatever its kind."""
    return [path for kind in OUTPUT_KINDS for path in _declared(stage, kind)]


OUTPUT_KINDS = ("outs", "metrics", "plots")


@pytest.mark.parametrize("stage_name", list(STAGES))
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage_name):
    stage = STAGES[stage_name]
    declared = {dep for dep in _deps(stage) if dep.endswith(".py")}
    used = project_files_used(_script_of(stage))
    assert not used - declared, f"{stage_name}: imported but not in deps: {sorted(used - declared)}"
    assert not declared - used, f"{stage_name}: in deps but not imported: {sorted(declared - used)}"


def _params_sections_read(script: Path) -> set[str]:
    """The params a stage script reads, as dvc.yaml should list them: a section it uses whole
    (`params.train` passed on) or all of whose keys it reads, by name; otherwise the keys it
    reads of it, dotted (finetune reads `params.model.test_time_shifts` alone)."""
    fields = {f.name for f in dataclasses.fields(Params)}
    hints = typing.get_type_hints(Params)
    tree = ast.parse(script.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    whole: set[str] = set()
    keys: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "params" and node.attr in fields):
            parent = parents.get(node)
            if (dataclasses.is_dataclass(hints[node.attr]) and isinstance(parent, ast.Attribute)
                    and parent.value is node):
                keys.setdefault(node.attr, set()).add(parent.attr)
            else:
                whole.add(node.attr)
    read = set(whole)
    for section, names in keys.items():
        all_keys = {f.name for f in dataclasses.fields(hints[section])}
        if section not in whole:
            read |= {section} if names == all_keys else {f"{section}.{name}" for name in names}
    return read


@pytest.mark.parametrize("stage_name", [name for name in STAGES if name != "check_params"])
def test_params_are_exactly_the_sections_the_stage_reads(stage_name):
    stage = STAGES[stage_name]
    declared = set(stage.get("params", []))
    assert declared == _params_sections_read(_script_of(stage)), stage_name


def test_the_params_check_runs_first_on_every_key():
    """check_params tracks the whole file (unknown keys too) and is upstream of every stage."""
    check = STAGES["check_params"]
    assert check["params"] == [{"params.yaml": None}]
    assert _outs(check) == [str(paths.PARAMS_CHECKED)]
    assert str(paths.PARAMS_CHECKED) in _deps(STAGES["download"])
    # every other stage reaches download through its data deps
    for name, stage in STAGES.items():
        if name not in ("check_params", "download"):
            assert any(dep.startswith("data/") or dep.startswith("models/")
                       for dep in _deps(stage)), name


def test_only_the_params_module_parses_yaml():
    """Params are read and validated in one place; nothing else parses params.yaml (the
    module that calls DVC reads dvc.yaml, never params.yaml)."""
    for source in [*(ROOT / "stages").glob("*.py"), *(ROOT / PACKAGE).glob("*.py")]:
        if source.name == "dvc_cli.py":
            assert "params.yaml" not in source.read_text() and "PARAMS_FILE" not in \
                source.read_text(), f"{source.name} reads params.yaml"
        elif source.name != "params.py":
            assert "yaml" not in _imported_modules(source), f"{source.name} parses YAML itself"


def test_dvc_yaml_paths_match_the_paths_module():
    def declared(stage: str, kind: str) -> set[str]:
        return set(_declared(STAGES[stage], kind))

    assert declared("download", "outs") == {str(paths.RAW_DIR)}
    assert declared("preprocess", "outs") == {str(paths.PREPARED_DIR)}
    assert declared("preprocess", "metrics") == {str(paths.DATA_METRICS)}
    assert declared("preprocess", "plots") == {str(paths.CLASS_COUNTS_DIR)}
    assert declared("train", "outs") == {str(paths.BASE_MODEL_FILE)}
    assert declared("read_corrections", "outs") == {str(paths.CORRECTIONS_DIR)}
    assert declared("read_corrections", "metrics") == {str(paths.CORRECTIONS_METRICS)}
    assert declared("finetune", "outs") == {str(paths.MODEL_FILE)}
    assert declared("train", "metrics") == {str(paths.TRAINING_METRICS)}
    assert declared("train", "plots") == {str(paths.TRAINING_PLOTS_DIR.parent)}
    assert declared("export", "outs") == {str(paths.SERVING_DIR), str(paths.ONNX_MODEL_FILE)}
    assert declared("export", "metrics") == {str(paths.EXPORT_METRICS)}
    assert declared("evaluate", "metrics") == {str(paths.EVALUATE_METRICS)}
    assert declared("evaluate", "plots") == {str(paths.PER_CLASS_DIR),
                                             str(paths.PREDICTIONS_DIR),
                                             str(paths.CALIBRATION_DIR),
                                             str(paths.ROBUSTNESS_FILE)}
    for source in ("mnist", "drawn"):  # one file per source in each folder
        assert paths.per_class_file(source).parent == paths.PER_CLASS_DIR
        assert paths.predictions_file(source).parent == paths.PREDICTIONS_DIR
        assert paths.calibration_file(source).parent == paths.CALIBRATION_DIR
    assert declared("plot", "plots") == {str(paths.PLOT_IMAGES_DIR)}
    assert DVC_YAML["artifacts"]["mnist-classifier"]["path"] == str(paths.MODEL_FILE)
    assert DVC_YAML["artifacts"]["mnist-classifier-serving"]["path"] == str(paths.SERVING_DIR)
    assert DVC_YAML["artifacts"]["mnist-classifier-onnx"]["path"] == str(paths.ONNX_MODEL_FILE)


def test_small_outputs_stay_in_git_and_large_ones_in_the_dvc_cache():
    for name, stage in STAGES.items():
        for kind in OUTPUT_KINDS:
            for path, options in _declared(stage, kind).items():
                in_git = options.get("cache", True) is False
                large = path.startswith(("data/", "models/"))
                assert in_git != large, (
                    f"{name}: {path} should be {'cached' if large else 'in git'}")


def test_small_outputs_keep_the_run_cache():
    """DVC saves no run-cache entry for a stage with a `cache: false` file under `outs:`
    (dvc/stage/__init__.py, `no_cache_outs`): such files belong under `metrics:`/`plots:`."""
    for name, stage in STAGES.items():
        for path, options in _declared(stage, "outs").items():
            assert options.get("cache", True), f"{name}: {path} is cache: false under outs:"


def test_each_stage_reads_what_the_previous_one_writes():
    """Every data dep is an earlier stage's output, but the folders of labelled pictures that
    people add with `dvc add` (paths.EXTRA_DIR)."""
    outs = {path for stage in STAGES.values() for path in _outs(stage)}
    for name, stage in STAGES.items():
        for dep in _deps(stage):
            if not dep.endswith(".py") and dep != str(paths.EXTRA_DIR):
                assert dep in outs, f"{name}: data dep {dep} is no stage's output"
    assert str(paths.EXTRA_DIR) in _deps(STAGES["read_corrections"])
    assert (ROOT / paths.EXTRA_DIR / "README.md").is_file()  # DVC needs the folder to exist
