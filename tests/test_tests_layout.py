"""The tests' own layout: one name for one thing.

A test module imports the library, the stage scripts as `stages.<name>` (never a stage as a
top-level module by a `sys.path` trick, which loads it a second time under another name) and
the helper modules beside it (tests/*.py not named test_*), never another test module.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
STAGE_NAMES = {path.stem for path in (TESTS.parent / "stages").glob("*.py")} - {"__init__"}
KNOWN: set[tuple[str, str]] = set()  # exceptions to the rule: none left; keep it so


def imports(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending_imports() -> set[tuple[str, str]]:
    found = set()
    for source in TESTS.glob("*.py"):
        for name in imports(source):
            top = name.split(".")[0]
            if top.startswith("test_") or top == "benchmarks" or top in STAGE_NAMES:
                found.add((source.stem, name))
    return found


def test_test_modules_import_helpers_not_each_other_nor_stages_by_a_second_name():
    assert offending_imports() - KNOWN == set()


def test_the_known_exceptions_are_still_there():
    """An exception fixed leaves the list: this keeps the list honest."""
    present = {(module, name) for module, name in KNOWN if (TESTS / f"{module}.py").exists()}
    assert present - offending_imports() == set()


def test_the_modules_started_first_exist():
    """conftest.LONGEST_FIRST names modules by file: a rename must follow there."""
    from conftest import LONGEST_FIRST

    assert [name for name in LONGEST_FIRST if not (TESTS / f"{name}.py").exists()] == []
