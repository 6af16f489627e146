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
# Left to do, each a test module importing another's helpers or benchmarks/harness.py (shared
# with the benchmark scripts: it needs a home both import). Shrink it; never grow it.
KNOWN = {
    ("test_collect_safety", "test_corrections"),
    ("test_report", "test_gate"),
    ("test_report_galleries", "test_gate"),
    ("test_report_galleries", "test_report"),
    ("serve_process", "benchmarks.harness"),
    ("test_benchmarks_smoke", "benchmarks.harness"),
    ("test_corrections_loop", "benchmarks.harness"),
    ("test_serve_deadlines", "benchmarks.harness"),
    ("test_serve_load", "benchmarks.harness"),
    ("test_serve_reload", "benchmarks.harness"),
}


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
