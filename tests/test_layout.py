"""The project's layout: imports run library <- app, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "mnist_pipeline"


def imported_modules(source: Path) -> set[str]:
    """Every module a file imports, absolute names (``from x import y`` gives x and x.y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_app() -> None:
    outside_app = [path for path in LIBRARY.rglob("*.py")
                   if "app" not in path.relative_to(LIBRARY).parts]
    assert len(outside_app) > 20  # the library's modules were found
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(name for name in imported_modules(path)
                                                if name == "mnist_pipeline.app"
                                                or name.startswith("mnist_pipeline.app."))
        for path in outside_app
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_an_import_of_the_app(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("from mnist_pipeline.app import api\nimport mnist_pipeline.app.cli\n")
    assert {"mnist_pipeline.app.api", "mnist_pipeline.app.cli"} <= imported_modules(module)
