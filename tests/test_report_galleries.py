"""`make report` shows every source's gallery of errors (plots/images/misclassified/<source>.png),
beside the base's, whether the base drew one per source or (before) one of the dataset only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from project_repo import git, run
from review_repo import (
    BASE,
    assert_report_pictures,
    commit,
    report_command,
    review_repo,
    scores,
    write_results,
)

from mnist_pipeline import report


def noise_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (240, 320), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_galleries_by_source_with_the_legacy_picture_as_the_datasets(tmp_path):
    plots = {"data": {
        "plots/images/misclassified/drawn.png": [
            {"type": "image", "revisions": ["workspace"], "url": "w_drawn.png"}],
        "plots/images/misclassified/mnist.png": [
            {"type": "image", "revisions": ["workspace"], "url": "w_mnist.png"}],
        "plots/images/misclassified.png": [
            {"type": "image", "revisions": ["main"], "url": "main_legacy.png"}],
        "plots/images/sample_predictions.png": [
            {"type": "image", "revisions": ["main"], "url": "main_sample.png"}],
        "plots/predictions/mnist.csv": [{"type": "vega", "revisions": ["main"]}],
    }}
    found = report.galleries(plots, ["mnist", "drawn"])
    assert found == {"mnist": {"main": Path("main_legacy.png"), "workspace": Path("w_mnist.png")},
                     "drawn": {"workspace": Path("w_drawn.png")}}
    assert list(report.galleries(plots)) == ["dataset", "drawn", "mnist"]  # no order known
    # main's dataset, from its metrics/data.json, decides whose the legacy picture is
    assert report.galleries(plots, ["drawn", "mnist"], {"main": "mnist"}) == found
    assert report.galleries({"data": {}}) == {}


def test_make_report_shows_each_sources_gallery_of_both_sides(tmp_path):
    repo = review_repo(tmp_path / "repo")  # main: the one gallery of older revisions
    git("checkout", "-q", "-b", "per-source", cwd=repo)
    (repo / "plots/images/misclassified.png").unlink()
    for seed, source in enumerate(("mnist", "drawn", "extra")):
        noise_png(repo / f"plots/images/misclassified/{source}.png", seed)
    write_results(repo, {**BASE, "extra": scores(0.5, 7)})
    commit(repo, "a gallery per source")
    made = run(["make", "-s", "report", "BASE=main", "REV=per-source"], cwd=repo, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    text = (repo / "report/report.md").read_text()
    pictures = assert_report_pictures(repo / "report", text)
    assert sorted(name for name in pictures if name.startswith("misclassified_")) == [
        "misclassified_drawn_per-source.png", "misclassified_extra_per-source.png",
        "misclassified_mnist_main.png", "misclassified_mnist_per-source.png"]
    rows = [line for line in text.splitlines() if line.startswith("| `")
            and "misclassified_" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| `mnist`", "| `drawn`", "| `extra`"]
    assert rows[1].count("(none)") == 1  # main drew no gallery of the pen digits
    # the copies are the revisions' own pictures
    for source in ("mnist", "extra"):
        copied = np.asarray(Image.open(repo / f"report/misclassified_{source}_per-source.png"))
        drawn = np.asarray(Image.open(repo / f"plots/images/misclassified/{source}.png"))
        np.testing.assert_array_equal(copied, drawn)
    assert report_command(repo, "--base=main").returncode == 0
