"""`dvc plots show` / `dvc plots diff` pages render offline with the project's HTML template.

In a temporary git + DVC repository holding the project's dvc.yaml (stage-level and top-level
plots), the page template built as `make install` builds it (mnist_pipeline.plots_page: vega
inlined from node_modules) and the project's .dvc/config, DVC writes the page, and headless
Chromium, with every host name unresolvable, renders it: each vega plot must draw a canvas
or SVG, and the page must report no script errors. The page is moved before it is opened:
nothing it needs may sit at a relative path.

Needs `npm ci` (node_modules) and Chromium. Outside `make test` they are skipped when
missing; `make test` sets PLOTS_HTML_REQUIRED=1, which turns the skip into a failure.
Set TEST_ARTIFACTS_DIR to keep a screenshot of the rendered page there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from headless_chromium import need, offline_command
from PIL import Image
from project_repo import PROJECT, dvc, git

from mnist_pipeline import plots_page

TEMPLATE = PROJECT / "dvc_plots_template.html"
NODE_MODULES = PROJECT / "node_modules"
DVC_YAML = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
# 3 top-level definitions (Loss, Accuracy, robustness) and one chart per file of the stages'
# plot data: 3 class counts, 4 dvclive TSVs, per test source (the dataset and the pen-drawn
# digits here) errors per digit, confusion counts and the reliability diagram, and
# robustness.csv (mean accuracy).
SOURCES = ("mnist", "drawn")
VEGA_PLOTS = 3 + 3 + 4 + 3 * len(SOURCES) + 1


def write_plot_data(repo: Path, epochs: int, shift: float) -> None:
    """dvclive-style TSVs, class counts, per source per-class scores, predictions and the
    reliability bins, and one PNG, as the pipeline leaves them."""
    steps = np.arange(epochs)
    for folder, offset in (("train", 0.0), ("eval", 0.05)):
        for metric, values in (("loss", 1.5 * np.exp(-steps / 2) + offset + shift),
                               ("accuracy", 0.98 - 0.4 * np.exp(-steps) - offset - shift)):
            target = repo / "dvclive/plots/metrics" / folder / f"{metric}.tsv"
            target.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"timestamp": 1_700_000_000_000 + steps, "step": steps,
                          metric: values.round(5)}).to_csv(target, sep="\t", index=False)
    rng = np.random.default_rng(0)
    for source in SOURCES:
        for folder in ("predictions", "per_class", "calibration"):
            (repo / "plots" / folder).mkdir(parents=True, exist_ok=True)
        actual = rng.integers(0, 10, 200)
        predicted = np.where(rng.random(200) < 0.1, rng.integers(0, 10, 200), actual)
        pd.DataFrame({"index": range(200), "actual": actual, "predicted": predicted,
                      "confidence": rng.uniform(0.5, 1, 200).round(4)}).to_csv(
            repo / f"plots/predictions/{source}.csv", index=False)
        recall = np.clip(0.97 - shift + rng.normal(0, 0.01, 10), 0, 1).round(4)
        errors = np.rint(20 * (1 - recall)).astype(int)
        pd.DataFrame({"digit": range(10), "precision": recall[::-1], "recall": recall,
                      "f1": recall, "support": 20, "errors": errors,
                      "false_positives": errors[::-1]}).to_csv(
            repo / f"plots/per_class/{source}.csv", index=False)
        pd.DataFrame({"bin": [0.8, 0.933333, 1.0],
                      "confidence": [0.75, 0.91, 0.99 - shift / 10],
                      "accuracy": [0.5, 0.9, 1.0], "count": [4, 20, 176]}).to_csv(
            repo / f"plots/calibration/{source}.csv", index=False)
    levels = np.arange(5)
    pd.DataFrame({"level": levels, **{name: (0.99 - shift - 0.05 * levels * (i + 1)).round(4)
                                      for i, name in enumerate(
                                          ["rotation", "shift", "zoom_out", "zoom_in",
                                           "thicker", "noise", "mean"])}}).to_csv(
        repo / "plots/robustness.csv", index=False)
    (repo / "plots/class_counts").mkdir(exist_ok=True)
    for split, count in (("train", 350), ("val", 50), ("test", 100)):
        pd.DataFrame({"digit": range(10), "count": count}).to_csv(
            repo / f"plots/class_counts/{split}.csv", index=False)
    (repo / "plots/images").mkdir(parents=True, exist_ok=True)
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    Image.fromarray(gradient).save(repo / "plots/images/misclassified.png")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Two commits (the second with other values), the project's dvc.yaml, .dvc/config and the
    page template built as `make install` builds it."""
    need(TEMPLATE.is_file(), f"{TEMPLATE.name} is missing")
    need((NODE_MODULES / "vega-embed").is_dir(), "node_modules is missing: run `npm ci`")
    root = tmp_path_factory.mktemp("plots_repo")
    git("init", "--quiet", "--initial-branch=main", cwd=root)
    dvc("init", "--quiet", cwd=root)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    shutil.copy(PROJECT / ".dvc" / "config", root / ".dvc" / "config")
    assert plots_page.build(TEMPLATE, root / plots_page.TARGET, NODE_MODULES)
    (root / ".gitignore").write_text("/dvc_plots/\n/.dvc/plots_template.html\n")
    (root / "plots").mkdir()
    write_plot_data(root, epochs=4, shift=0.0)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "first run", cwd=root)
    write_plot_data(root, epochs=6, shift=0.1)
    git("commit", "--quiet", "-am", "second run", cwd=root)
    return root


def test_cdn_fallback_loads_the_versions_npm_installs():
    """The template's CDN URLs name the versions pinned in package.json and package-lock.json."""
    template = TEMPLATE.read_text()
    pinned = json.loads((PROJECT / "package.json").read_text())["dependencies"]
    locked = json.loads((PROJECT / "package-lock.json").read_text())["packages"]
    assert set(pinned) == {"vega", "vega-lite", "vega-embed"}
    for name, version in pinned.items():
        assert locked[f"node_modules/{name}"]["version"] == version
        build = f"{name}/build/{name}.min.js"
        assert f"../node_modules/{build}" in template
        assert f"https://cdn.jsdelivr.net/npm/{name}@{version}/build/{name}.min.js" in template


def test_built_template_inlines_each_pinned_library(tmp_path):
    need((NODE_MODULES / "vega-embed").is_dir(), "node_modules is missing: run `npm ci`")
    target = tmp_path / "template.html"
    assert plots_page.build(TEMPLATE, target, NODE_MODULES)
    built = target.read_text()
    pinned = json.loads((PROJECT / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        assert f"<script>/* {name} {version}, inlined" in built
        assert f'src="../node_modules/{name}' not in built
    assert built.count("{plot_divs}") == 1  # only the template's own placeholder


def test_a_library_holding_a_dvc_placeholder_is_refused(tmp_path):
    package = tmp_path / "node_modules" / "vega"
    (package / "build").mkdir(parents=True)
    (package / "package.json").write_text('{"version": "1.0.0"}')
    (package / "build" / "vega.min.js").write_text("var s = '{plot_divs}';")
    template = '<script src="../node_modules/vega/build/vega.min.js"></script>{plot_divs}'
    with pytest.raises(ValueError, match="contains {plot_divs}"):
        plots_page.inline_scripts(template, tmp_path / "node_modules")


class _PlotDivs(HTMLParser):
    """For each element id in ``ids``: the tag names found inside it."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self, ids):
        super().__init__()
        self.inside = {plot_id: [] for plot_id in ids}
        self.open: list[tuple[str, str | None]] = []
        self.text_of: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        element_id = dict(attrs).get("id")
        for _, open_id in self.open:
            if open_id in self.inside:
                self.inside[open_id].append(tag)
        if tag not in self.VOID:
            self.open.append((tag, element_id))

    def handle_endtag(self, tag):
        for position in range(len(self.open) - 1, -1, -1):
            if self.open[position][0] == tag:
                del self.open[position:]
                break

    def handle_data(self, data):
        if self.open and self.open[-1][1]:
            self.text_of[self.open[-1][1]] = self.text_of.get(self.open[-1][1], "") + data


def vega_ids(page: Path) -> list[str]:
    """The ids of the page's vega plots, from DVC's inline `vegaEmbed('#id', spec)` calls."""
    text = page.read_text()
    return [chunk.split("'", 1)[0] for chunk in text.split("vegaEmbed('#")[1:]]


def browse(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` with no network: every host name fails to resolve."""
    command = [*offline_command(profile), "--virtual-time-budget=10000", *mode, page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def rendered_plots(page: Path, profile: Path) -> tuple[dict[str, list[str]], str]:
    """Tags inside each vega plot div after rendering, and the page's reported errors."""
    dom = browse(page, profile, "--dump-dom").stdout
    parser = _PlotDivs(vega_ids(page) + ["plot-errors"])
    parser.feed(dom)
    errors = parser.text_of.get("plot-errors", "").strip()
    return {k: v for k, v in parser.inside.items() if k != "plot-errors"}, errors


def assert_all_drawn(plots: dict[str, list[str]], errors: str) -> None:
    assert len(plots) == VEGA_PLOTS, plots.keys()
    assert not errors, f"the page reported errors:\n{errors}"
    for plot_id, tags in plots.items():
        assert {"canvas", "svg"} & set(tags), f"plot {plot_id} drew nothing: {tags}"


def test_plots_show_renders_every_plot_offline_after_the_folder_moves(repo, tmp_path):
    written = tmp_path / "out" / "plots"  # two levels down: no ../node_modules there
    result = dvc("plots", "show", "--out", str(written), cwd=repo)
    assert (written / "index.html").as_uri() in result.stdout
    moved = tmp_path / "elsewhere" / "attached-to-a-ci-run"
    moved.parent.mkdir()
    shutil.move(written, moved)
    page = moved / "index.html"
    html = page.read_text()
    assert "inlined from node_modules" in html  # our template
    assert 'src="../node_modules' not in html  # nothing loaded by a relative path
    images = re.findall(r'<img [^>]*src="(static/[^"]+)"', html)  # DVC copies images there
    assert images and all((page.parent / src).is_file() for src in images)

    plots, errors = rendered_plots(page, tmp_path / "profile")
    assert_all_drawn(plots, errors)

    screenshot = tmp_path / "plots_page.png"
    browse(page, tmp_path / "profile", "--window-size=1400,1400", f"--screenshot={screenshot}")
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    if os.environ.get("TEST_ARTIFACTS_DIR"):
        artifacts = Path(os.environ["TEST_ARTIFACTS_DIR"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, artifacts / "plots_page.png")


def test_plots_diff_shows_both_revisions(repo, tmp_path):
    data = json.loads(dvc("plots", "diff", "HEAD~1", "HEAD", "--json", cwd=repo).stdout)
    loss = data["data"]["Loss"][0]
    assert set(loss["revisions"]) == {"HEAD~1", "HEAD"}
    points = loss["content"]["data"]["values"]
    assert {point["rev"] for point in points} == {"HEAD~1", "HEAD"}
    # 4 epochs then 6, each with train and eval curves.
    assert len(points) == 2 * (4 + 6)
    # Errors per digit of both revisions side by side, one chart per source: ten bars each.
    for source in SOURCES:
        errors = data["data"][f"plots/per_class/{source}.csv"][0]["content"]["data"]["values"]
        assert sorted(point["rev"] for point in errors) == ["HEAD"] * 10 + ["HEAD~1"] * 10

    out = tmp_path / "diff_page"
    dvc("plots", "diff", "HEAD~1", "HEAD", "--out", str(out), cwd=repo)
    plots, errors = rendered_plots(out / "index.html", tmp_path / "profile")
    assert_all_drawn(plots, errors)


def test_without_node_modules_or_network_the_page_says_why(repo, tmp_path):
    template = repo / plots_page.TARGET
    built = template.read_text()
    try:  # the template `make install` builds on a machine without npm
        assert not plots_page.build(TEMPLATE, template, tmp_path / "no_node_modules")
        out = tmp_path / "no_node_modules" / "dvc_plots"
        dvc("plots", "show", "--out", str(out), cwd=repo)
    finally:
        template.write_text(built)
    plots, errors = rendered_plots(out / "index.html", tmp_path / "profile")
    assert len(plots) == VEGA_PLOTS
    assert "vega could not be loaded: run `make install`" in errors
    for tags in plots.values():
        assert not {"canvas", "svg"} & set(tags)
