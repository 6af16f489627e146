"""The README's project tree names every module and stage script that exists, and only those."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Project tree\n", 1)[1].split("```\n", 1)[1].split("```", 1)[0]


def test_the_layout_names_every_module_and_stage_script_that_exists():
    block = layout_block()
    named = set(re.findall(r"^ {2}(\w+\.py)\s", block, flags=re.MULTILINE))
    existing = {path.name for folder in ("mnist_pipeline", "stages")
                for path in (ROOT / folder).glob("*.py") if path.name != "__init__.py"}
    assert named == existing
    # the app subpackage, one level deeper
    named_in_app = set(re.findall(r"^ {4}(\w+\.py)\s", block, flags=re.MULTILINE))
    in_app = {path.name for path in (ROOT / "mnist_pipeline" / "app").glob("*.py")
              if path.name != "__init__.py"}
    assert named_in_app == in_app


def test_the_top_level_entries_of_the_layout_exist():
    for line in layout_block().splitlines():
        entry = line.split()[0] if line and not line.startswith(" ") else None
        if entry:
            assert (ROOT / entry.rstrip("/")).exists() or entry.startswith(("data/", "models/",
                                                                             "dvclive/")), entry
