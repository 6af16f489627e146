"""The README and docs/ say what the code does: the project tree (docs/layout.md) names
exactly the files there are, where they are; links and their anchors resolve; every file,
params key and `make` target named exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from committed import committed_params_text

ROOT = Path(__file__).resolve().parents[1]
# The pages people read; each is checked on its own, links relative to it.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *(ROOT / name for name in ("benchmarks/README.md", "plots/README.md",
                                    "metrics/README.md", "data/extra/README.md"))]
# Written by a run, not in a fresh clone: the tree may name them before they exist.
RUN_OUTPUTS = ("data/", "models/", "dvclive/", "metrics/", "plots/", "report/", "dvc_plots/")
# Folders whose every Python file the tree lists (and lists nothing else there).
LISTED_IN_FULL = ("stages", "mnist_pipeline", "mnist_pipeline/app")
# Metric names shaped like params keys (metrics/data.json's split sizes).
METRIC_NAMES = {"train.size", "val.size", "test.size"}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def tree_block() -> str:
    """The full project tree (docs/layout.md; the README shows only its top)."""
    text = (ROOT / "docs" / "layout.md").read_text()
    return text.split("## Project tree\n", 1)[1].split("```\n", 1)[1].split("```", 1)[0]


def tree_paths(block: str) -> list[str]:
    """The full path of each entry of the tree: an entry indented two spaces more than a
    folder (a name ending in /) lies inside it; deeper lines continue a description."""
    found: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the enclosing folders
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        folders = [(level, path) for level, path in folders if level < indent]
        expected = folders[-1][0] + 2 if folders else 0
        if indent != expected:
            continue  # a description's second line
        name = line.split()[0]
        path = (folders[-1][1] if folders else "") + name
        found.append(path)
        if name.endswith("/"):
            folders.append((indent, path))
    return found


def test_the_tree_is_read_as_paths():
    paths = tree_paths("a/          x\n  b.py      y\n  c/        z\n    d.py    w\n"
                       "            more of w\ne.txt       v\n")
    assert paths == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.txt"]


def test_every_path_in_the_tree_exists():
    missing = [path for path in tree_paths(tree_block())
               if not (ROOT / path).exists() and not path.startswith(RUN_OUTPUTS)]
    assert missing == []


@pytest.mark.parametrize("folder", LISTED_IN_FULL)
def test_the_tree_lists_every_python_file_of_the_folder(folder):
    listed = {path for path in tree_paths(tree_block())
              if path.endswith(".py") and str(Path(path).parent) == folder}
    existing = {f"{folder}/{path.name}" for path in (ROOT / folder).glob("*.py")
                if path.name != "__init__.py"}
    assert listed == existing


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation out, spaces to -."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_and_their_anchors_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        missing_anchor = (anchor and linked.suffix == ".md" and linked.exists()
                          and anchor not in heading_anchors(linked))
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_project_file_named_exists(page):
    named = re.findall(r"(?<![\w/.-])((?:stages|mnist_pipeline|tests|benchmarks|docs|recipes|"
                       r"\.github|\.ci)/[\w./-]*\w)", page.read_text())
    assert [path for path in named if not (ROOT / path).exists()] == []


def params_keys(params: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in params.items():
        keys.add(prefix + name)
        if isinstance(value, dict):
            keys |= params_keys(value, f"{prefix}{name}.")
    return keys


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_params_key_named_exists(page):
    """A dotted name that starts with a section of params.yaml (`train.epochs`, `-S
    data.drawn=false`) is one of its keys; file names (`model.keras`) are not keys."""
    params = yaml.safe_load(committed_params_text())
    known = params_keys(params) | METRIC_NAMES
    sections = "|".join(map(re.escape, params))
    named = re.findall(rf"(?<![\w/.-])((?:{sections})(?:\.\w+)+)(?![\w(/-])", page.read_text())
    files = re.compile(r".*\.(py|json|yaml|keras|onnx|csv|tsv|md|png|npy|html|export)$")
    assert sorted({key for key in named if not files.match(key)} - known) == []


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)(?:\s+[\w-]+)*\s*:(?!=)", makefile, re.MULTILINE))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_make_target_named_exists(page):
    named = re.findall(r"(?:`|^)make ([a-z][\w-]*)", page.read_text(), re.MULTILINE)
    assert sorted(set(named) - make_targets()) == []


def test_the_checks_see_what_they_look_for():
    assert {"sample", "test", "test-fast", "repro", "report", "gate"} <= make_targets()
    assert "train.epochs" in params_keys(yaml.safe_load(committed_params_text()))
    assert "stages/download.py" in tree_paths(tree_block())
    assert "the-everyday-loop" in heading_anchors(ROOT / "README.md")
