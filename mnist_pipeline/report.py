"""The comparison in review: the workspace (or a revision) against a base, as Markdown + PNGs.

``python -m mnist_pipeline.report [--base main] [--rev REV] [--out report]`` (``make report``,
``make report BASE=<rev> REV=<rev>``) writes ``report/report.md`` and the pictures it shows
beside it, for a pull request comment (CML) or any Markdown viewer, and ``report/summary.md``,
the same text without the pictures, for a CI job summary (which cannot show local images):

- the gate's verdict (:mod:`mnist_pipeline.gate`: stale results, worse test metrics);
- the params that changed (``dvc params diff``);
- the test metrics of every source (the dataset, the pen-drawn digits) side by side with the
  change (``dvc metrics diff --all``), the validation accuracy and the data, every other
  metric under a fold;
- PNG charts of both revisions: training curves (loss, accuracy), errors per digit and the
  confusion matrix of each source, rendered from DVC's own vega-lite specs
  (``dvc plots diff --json``: the charts of ``dvc plots show``, defined once in dvc.yaml)
  by vl-convert, which bundles vega and its fonts: no browser, no network, no CDN;
- the plot stage's most confidently wrong test digits of each source, of each revision.

Both sides come from git (metrics and plots are ``cache: false``): a clone needs no
``dvc pull`` for the base. DVC and git run through :mod:`mnist_pipeline.dvc_cli`, revisions
verified as commits first. The out folder holds only what the report wrote (listed in its
``.report-files``): a folder with other files, or one that is or holds an output dvc.yaml
declares, is refused, and only the report's own files are replaced. Run from the repository
root with the venv's DVC. Exit status: 0 written, 1 refused or failed, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline import dvc_cli, gate, paths
from mnist_pipeline.report_folder import OutDirError, Writer

OUT_DIR = Path("report")
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.md"
WORKSPACE = dvc_cli.WORKSPACE
# Per-source plot files, one chart per file: plots/per_class/<source>.csv (digit,errors,...)
# and plots/predictions/<source>.csv (the confusion matrix).
PER_CLASS_DIR = paths.PER_CLASS_DIR
PREDICTIONS_DIR = paths.PREDICTIONS_DIR


@dataclass(frozen=True)
class Chart:
    """One of dvc.yaml's plots (top-level ID or stage plot file), drawn to ``file``."""

    plot_id: str
    file: str


# Training curves, then per source (the files DVC has a plot of, on either side) errors per
# digit and the confusion matrix: what a reviewer reads first.
CURVES = (Chart("Loss", "loss.png"), Chart("Accuracy", "accuracy.png"))
PER_SOURCE = ((PER_CLASS_DIR, "errors_per_digit"), (PREDICTIONS_DIR, "confusion"))
# The plot stage's galleries of errors, one per source: plots/images/misclassified/<source>.png;
# a revision from before them has one, of the dataset (the first source), in LEGACY_GALLERY.
GALLERY_DIR = paths.PLOT_IMAGES_DIR / "misclassified"
LEGACY_GALLERY = str(paths.PLOT_IMAGES_DIR / "misclassified.png")

# Test metrics of each source, in this order, then the headline rows of other files; every
# other metric goes under the fold.
SOURCE_ROWS = (("accuracy", "test accuracy"), ("errors", "test errors"),
               ("ece", "test ECE (calibration error)"))
HEADLINE = (
    (str(paths.TRAINING_METRICS), "eval.accuracy", "validation accuracy (last epoch)"),
    (str(paths.DATA_METRICS), "test.size", "test digits"),
    (str(paths.DATA_METRICS), "dataset", "dataset"),
)


def format_value(value: object) -> str:
    """A metric or param value for a table cell: 4 significant digits for floats."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cell(str(value))


def format_change(old: object, new: object) -> str:
    """``+0.002``, ``-3``, ``0``; empty when either side is missing or not a number."""
    numbers = (int, float)
    if old is None or new is None:
        return ""
    if (not (isinstance(old, numbers) and isinstance(new, numbers))
            or isinstance(old, bool) or isinstance(new, bool)):
        return "" if old == new else "changed"
    change = new - old
    if isinstance(change, int):
        return f"{change:+d}" if change else "0"
    if not math.isfinite(change):  # NaN or Infinity on a side: the gate calls it invalid
        return ""
    return f"{change:+.4g}" if abs(change) > 1e-12 else "0"


def params_table(diff: dict, base: str, target: str) -> str:
    """``dvc params diff --json`` output as a Markdown table, one row per changed param."""
    rows = [(name if file == str(paths.PARAMS_FILE) else f"{file}: {name}", entry)
            for file, entries in diff.items() for name, entry in entries.items()]
    if not rows:
        return "No params changed."
    lines = [f"| param | {_cell(base)} | {_cell(target)} |", "| --- | --- | --- |"]
    for name, entry in sorted(rows):
        lines.append(f"| `{_cell(name)}` | {format_value(entry.get('old'))} | "
                     f"{format_value(entry.get('new'))} |")
    return "\n".join(lines)


def sources(diff: dict) -> list[str]:
    """The test sources of either side of a metrics diff, the base's first."""
    return list(dict.fromkeys([*gate.by_source(diff, "old"), *gate.by_source(diff, "new")]))


def metrics_tables(diff: dict, base: str, target: str) -> tuple[str, str]:
    """``dvc metrics diff --all --json`` output as two Markdown tables: the test metrics of
    every source with the headline rows, and every other metric (empty string when none)."""
    header = [f"| metric | {_cell(base)} | {_cell(target)} | change |",
              "| --- | ---: | ---: | ---: |"]

    def row(label: str, entry: dict) -> str:
        old, new = entry.get("old"), entry.get("new")
        return (f"| {label} | {format_value(old)} | {format_value(new)} | "
                f"{format_change(old, new)} |")

    evaluate = diff.get(gate.EVALUATE_FILE, {})
    shown = [(gate.EVALUATE_FILE, f"{source}.{key}", f"`{_cell(source)}` {label}")
             for source in sources(diff) for key, label in SOURCE_ROWS
             if f"{source}.{key}" in evaluate]
    shown += [(file, key, label) for file, key, label in HEADLINE if key in diff.get(file, {})]
    headline = [row(label, diff[file][key]) for file, key, label in shown]
    done = {(file, key) for file, key, _ in shown}
    others = [row(f"`{_cell(file)}`: `{_cell(key)}`", entry) for file in sorted(diff)
              for key, entry in sorted(diff[file].items()) if (file, key) not in done]
    main = "\n".join(header + headline) if headline else "No metrics found on either side."
    return main, "\n".join(header + others) if others else ""


def charts(plots: dict, order: Sequence[str] = ()) -> list[Chart]:
    """The charts to draw: the curves, then for each source DVC has plot files of (either
    side; those in ``order`` first) its errors per digit and its confusion matrix."""
    files = {(folder, Path(plot_id).stem): plot_id for plot_id in plots.get("data", {})
             for folder, _ in PER_SOURCE
             if Path(plot_id).parent == folder and plot_id.endswith(".csv")}
    found = {source for _, source in files}
    ranked = sorted(found, key=lambda source: (
        order.index(source) if source in order else len(order), source))
    return [*CURVES, *(Chart(files[folder, source], f"{prefix}_{_safe(source)}.png")
                       for source in ranked for folder, prefix in PER_SOURCE
                       if (folder, source) in files)]


def render_charts(plots: dict, out: Writer, base: str, target: str,
                  order: Sequence[str] = ()) -> list[str]:
    """Markdown for the charts of ``dvc plots diff --json`` output, their PNGs written by
    ``out``: the charts from the vega-lite specs, the gallery images copied per revision."""
    import vl_convert  # only here: the rest of the report needs no renderer

    data = plots.get("data", {})
    lines = ["### Training curves, errors per digit, confusion matrix", ""]
    drawn = charts(plots, order)
    for folder, _ in PER_SOURCE:
        if not any(Path(chart.plot_id).parent == folder for chart in drawn):
            lines.append(f"`{folder}/<source>.csv`: on neither side.")
    for chart in drawn:
        specs = [entry for entry in data.get(chart.plot_id, []) if entry.get("type") == "vega"]
        if not specs:
            lines.append(f"`{chart.plot_id}`: no data on either side.")
            continue
        spec = specs[0]["content"]
        try:
            png = vl_convert.vegalite_to_png(spec, scale=1)
        except (ValueError, RuntimeError) as error:  # vl-convert raises ValueError on bad specs
            lines.append(f"`{chart.plot_id}`: not drawn ({error}).")
            continue
        out.write_bytes(chart.file, png)
        title = _title(spec, chart.plot_id)
        if chart not in CURVES and chart.plot_id not in title:
            title += f" ({Path(chart.plot_id).stem})"  # one title for the folder's charts
        lines.append(f"![{_alt(title)}]({chart.file})")
    return lines + gallery_lines(plots, out, base, target, order)


def galleries(plots: dict, order: Sequence[str] = (),
              datasets: Mapping[str, str] | None = None) -> dict[str, dict[str, Path]]:
    """{source: {revision: picture}} of the plot stage's galleries of errors in ``dvc plots
    diff --json`` output, the sources in ``order`` first, then by name. A revision's
    :data:`LEGACY_GALLERY` counts as its dataset's (``datasets[revision]``, else
    ``order[0]``), unless that revision has a gallery of its own for it."""
    found: dict[str, dict[str, Path]] = {}
    legacy: dict[str, Path] = {}
    for plot_id, entries in plots.get("data", {}).items():
        path = Path(plot_id)
        if path.parent == GALLERY_DIR and path.suffix == ".png":
            target = found.setdefault(path.stem, {})
        elif plot_id == LEGACY_GALLERY:
            target = legacy
        else:
            continue
        for entry in entries:
            if entry.get("type") == "image" and entry.get("revisions"):
                target[entry["revisions"][0]] = Path(entry["url"])
    for revision, picture in legacy.items():
        dataset = (datasets or {}).get(revision) or (order[0] if order else "dataset")
        found.setdefault(dataset, {}).setdefault(revision, picture)
    ranked = sorted(found, key=lambda source: (
        order.index(source) if source in order else len(order), source))
    return {source: found[source] for source in ranked}


def gallery_lines(plots: dict, out: Writer, base: str, target: str,
                  order: Sequence[str] = ()) -> list[str]:
    """Markdown for each source's gallery of errors, a row per source and a column per
    revision, the pictures copied by ``out`` as ``misclassified_<source>_<revision>.png``."""
    lines = ["", "### Most confidently wrong test digits of each source", ""]
    found = galleries(plots, order, {revision: dataset_of(revision)
                                     for revision in (base, target)})
    if not found:
        return [*lines, f"`{GALLERY_DIR}/<source>.png`: on neither side."]
    revisions = [base, target]
    lines += ["| source | " + " | ".join(_cell(rev) for rev in revisions) + " |",
              "| --- | " + " | ".join("---" for _ in revisions) + " |"]
    for source, pictures in found.items():
        cells = []
        for revision in revisions:
            if revision not in pictures:
                cells.append("(none)")
                continue
            name = f"misclassified_{_safe(source)}_{_safe(revision)}.png"
            out.copy(pictures[revision], name)
            cells.append(f"![most confidently wrong digits of {_alt(source)}, "
                         f"{_alt(revision)}]({name})")
        lines.append(f"| `{_cell(source)}` | " + " | ".join(cells) + " |")
    return lines


def dataset_of(revision: str) -> str | None:
    """The dataset's name in ``metrics/data.json`` of ``revision`` (a verified commit, or
    the workspace); None when there is none."""
    try:
        text = (paths.DATA_METRICS.read_text() if revision == WORKSPACE
                else dvc_cli.git("show", "--end-of-options",
                                 f"{revision}:{paths.DATA_METRICS.as_posix()}"))
        dataset = json.loads(text).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return dataset if isinstance(dataset, str) else None


def describe_revision(rev: str | None) -> str:
    """``workspace (HEAD 1a2b3c4, uncommitted changes)`` or ``main (5d6e7f8)``."""
    if rev:
        short = dvc_cli.git("rev-parse", "--short", "--verify", "--end-of-options",
                            f"{rev}^{{commit}}")
        return f"`{_code(rev)}` (`{short or 'unknown revision'}`)"
    dirty = dvc_cli.git("status", "--porcelain", "--untracked-files=no")
    head = dvc_cli.git("rev-parse", "--short", "HEAD") or "no commit"
    return f"the workspace (HEAD `{head}`{', with uncommitted changes' if dirty else ''})"


def build_report(base: str, rev: str | None, out: Writer) -> tuple[list[str], list[str]]:
    """Query DVC and git, write the PNGs through ``out``; the Markdown lines of the text and
    of the pictures. ``base`` and ``rev`` must be verified commits."""
    target = rev or WORKSPACE
    if rev:  # a committed revision: no `dvc status` to check, only its metrics
        metrics = dvc_cli.metrics_diff(base, rev)
        verdict = gate.compare(metrics, base, target=f"`{rev}`")
    else:
        verdict, metrics = gate.check_workspace(base)
    params = dvc_cli.params_diff(base, rev)
    headline, others = metrics_tables(metrics, base, target)
    with tempfile.TemporaryDirectory() as images:  # DVC copies each revision's images there
        plots = dvc_cli.plots_diff(base, rev, images)
        pictures = render_charts(plots, out, base, target, sources(metrics))

    if verdict.failures:
        verdict_lines = ["**Gate: fails** (`make gate`):", ""] + [
            f"- {_cell(line)}" for line in verdict.failures + verdict.notes]
    else:
        verdict_lines = [f"**Gate: passes** (`make gate`: {_cell(gate.summary(metrics, base))})."]
        if verdict.notes:
            verdict_lines += [""] + [f"- {_cell(line)}" for line in verdict.notes]
    lines = [
        f"## Model report: {_cell(target)} against {_cell(base)}",
        "",
        f"Compared: {describe_revision(rev)} against {describe_revision(base)}; written by "
        f"`make report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        *verdict_lines,
        "",
        "### Params that changed",
        "",
        params_table(params, base, target),
        "",
        "### Test metrics of each source, and the data",
        "",
        headline,
        "",
    ]
    if others:
        lines += ["<details><summary>Every other metric</summary>", "", others, "",
                  "</details>", ""]
    return lines, pictures


def write_report(base: str = "main", rev: str | None = None, out_dir: Path = OUT_DIR) -> Path:
    """Write ``out_dir/report.md``, its PNGs and ``summary.md`` (replacing an earlier report);
    the report's path. RevisionError, OutDirError before anything is written."""
    dvc_cli.revisions(base, rev)
    out = Writer(out_dir)
    out.clear()
    text, pictures = build_report(base, rev, out)
    out.write_text(REPORT_FILE, "\n".join(text + pictures) + "\n")
    note = ["### Charts", "", f"Not shown here: the PNGs beside `{out_dir / REPORT_FILE}` "
            "(in CI, the run's `model-report` artifact)."]
    out.write_text(SUMMARY_FILE, "\n".join(text + note) + "\n")
    return out_dir / REPORT_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.report",
        description="Write a Markdown report of the workspace (or --rev) against --base.")
    parser.add_argument("--base", default="main", help="git revision to compare against")
    parser.add_argument("--rev", default=None, help="revision to report on (default: workspace)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for option, revision in (("--base", args.base), ("--rev", args.rev)):
        try:
            if revision is not None:
                dvc_cli.verify_commit(revision)
        except dvc_cli.RevisionError as error:
            sys.exit(f"report: invalid: {option} {error}")
    try:
        path = write_report(args.base, args.rev, args.out)
    except dvc_cli.RevisionError as error:  # a branch moved since the check above
        sys.exit(f"report: invalid: {error}")
    except OutDirError as error:
        sys.exit(f"report: refused: {error}")
    except dvc_cli.DvcError as error:
        sys.exit(f"report: {error}")
    except ModuleNotFoundError as error:  # vl-convert-python: in the pipeline extra
        sys.exit(f"report: {error.name} is not installed: run `make install`")
    print(f"report: wrote {path} and its pictures in {time.perf_counter() - started:.1f} s")


def _title(spec: dict, fallback: str) -> str:
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    return title if isinstance(title, str) and title else fallback


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Text safe inside inline code."""
    return text.replace("`", "'")


def _alt(text: str) -> str:
    return re.sub(r"[\[\]]", "", text)


def _safe(revision: str) -> str:
    """A revision or source name as part of a file name: no separators, no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", revision).lstrip(".") or "_"


if __name__ == "__main__":
    main()
