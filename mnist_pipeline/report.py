"""The comparison in review: the workspace (or a revision) against a base, as Markdown + PNGs.

``python -m mnist_pipeline.report [--base main] [--rev REV] [--out report]`` (``make report``,
``make report BASE=<rev> REV=<rev>``) writes ``report/report.md`` and the pictures it shows
beside it, for a pull request comment (CML) or any Markdown viewer, and ``report/summary.md``,
the same text without the pictures, for a CI job summary (which cannot show local images):

- the gate's verdict (:mod:`mnist_pipeline.gate`: stale results, worse test metrics);
- the params that changed (``dvc params diff <base> [<rev>] --json``);
- the headline metrics side by side with the change (``dvc metrics diff ... --all --json``),
  every other metric under a fold;
- PNG charts of both revisions: training curves (loss, accuracy), errors per digit and the
  normalized confusion matrix, rendered from DVC's own vega-lite specs
  (``dvc plots diff ... --json``: the charts of ``dvc plots show``, defined once in dvc.yaml)
  by vl-convert, which bundles vega and its fonts: no browser, no network, no CDN;
- the plot stage's most confidently wrong test digits of each revision.

Both sides come from git (metrics and plots are ``cache: false``): a clone needs no
``dvc pull`` for the base. Run from the repository root with the venv's DVC.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline import fileio, gate, paths

OUT_DIR = Path("report")
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.md"
WORKSPACE = "workspace"  # DVC's name for the working tree in diffs


@dataclass(frozen=True)
class Chart:
    """One of dvc.yaml's plots (top-level ID or stage plot file), drawn to ``file``."""

    plot_id: str
    file: str


# Training curves, errors per digit, normalized confusion matrix: what a reviewer reads first.
CHARTS = (
    Chart("Loss", "loss.png"),
    Chart("Accuracy", "accuracy.png"),
    Chart(str(paths.PER_CLASS_FILE), "errors_per_digit.png"),
    Chart("Confusion matrix, normalized", "confusion_normalized.png"),
)
GALLERY = str(paths.PLOT_IMAGES_DIR / "misclassified.png")

# Headline rows, in this order; every other metric goes under the fold.
HEADLINE = (
    (gate.EVALUATE_FILE, "accuracy", "test accuracy"),
    (gate.EVALUATE_FILE, "errors", "test errors"),
    (gate.EVALUATE_FILE, "macro_f1", "test macro F1"),
    (gate.EVALUATE_FILE, "loss", "test loss"),
    (str(paths.TRAINING_METRICS), "eval.accuracy", "validation accuracy (last epoch)"),
    (gate.DATA_FILE, "test.size", "test digits"),
    (gate.DATA_FILE, "dataset", "dataset"),
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
    if not (isinstance(old, numbers) and isinstance(new, numbers)) or isinstance(old, bool):
        return "" if old == new else "changed"
    change = new - old
    if isinstance(change, int):
        return f"{change:+d}" if change else "0"
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


def metrics_tables(diff: dict, base: str, target: str) -> tuple[str, str]:
    """``dvc metrics diff --all --json`` output as two Markdown tables: the headline metrics
    and every other one (empty string when there is none)."""
    header = [f"| metric | {_cell(base)} | {_cell(target)} | change |",
              "| --- | ---: | ---: | ---: |"]

    def row(label: str, entry: dict) -> str:
        old, new = entry.get("old"), entry.get("new")
        return (f"| {label} | {format_value(old)} | {format_value(new)} | "
                f"{format_change(old, new)} |")

    headline = [row(label, diff[file][key]) for file, key, label in HEADLINE
                if key in diff.get(file, {})]
    shown = {(file, key) for file, key, _ in HEADLINE}
    others = [row(f"`{file}`: `{key}`", entry) for file in sorted(diff)
              for key, entry in sorted(diff[file].items()) if (file, key) not in shown]
    main = "\n".join(header + headline) if headline else "No metrics found on either side."
    return main, "\n".join(header + others) if others else ""


def render_charts(plots: dict, out_dir: Path, base: str, target: str) -> list[str]:
    """Markdown for the charts of ``dvc plots diff --json`` output, their PNGs written to
    ``out_dir``: CHARTS from the vega-lite specs, the gallery images copied per revision."""
    import vl_convert  # only here: the rest of the report needs no renderer

    data = plots.get("data", {})
    lines = ["### Training curves, errors per digit, confusion matrix", ""]
    for chart in CHARTS:
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
        fileio.write_bytes(out_dir / chart.file, png)
        lines.append(f"![{_alt(_title(spec, chart.plot_id))}]({chart.file})")
    lines += ["", "### Most confidently wrong test digits", ""]
    images = {}
    for entry in data.get(GALLERY, []):
        if entry.get("type") == "image" and entry.get("revisions"):
            revision = entry["revisions"][0]
            name = f"misclassified_{_safe(revision)}.png"
            shutil.copyfile(entry["url"], out_dir / name)
            images[revision] = name
    if not images:
        lines.append(f"`{GALLERY}`: on neither side.")
        return lines
    order = [base, target]
    lines += ["| " + " | ".join(_cell(rev) for rev in order) + " |",
              "| " + " | ".join("---" for _ in order) + " |",
              "| " + " | ".join(f"![most confidently wrong digits, {_alt(rev)}]({images[rev]})"
                                if rev in images else "(none)" for rev in order) + " |"]
    return lines


def describe_revision(rev: str | None) -> str:
    """``workspace (HEAD 1a2b3c4, uncommitted changes)`` or ``main (5d6e7f8)``."""
    if rev:
        return f"`{rev}` (`{_git('rev-parse', '--short', rev) or 'unknown revision'}`)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    head = _git("rev-parse", "--short", "HEAD") or "no commit"
    return f"the workspace (HEAD `{head}`{', with uncommitted changes' if dirty else ''})"


def build_report(base: str, rev: str | None, out_dir: Path) -> tuple[list[str], list[str]]:
    """Query DVC and git, write the PNGs to ``out_dir``; the Markdown lines of the text and of
    the pictures."""
    target = rev or WORKSPACE
    revisions = [base, *([rev] if rev else [])]
    if rev:  # a committed revision: no `dvc status` to check, only its metrics
        metrics = gate.metrics_diff(base, rev)
        failures = gate.reasons(metrics, base, target=f"`{rev}`")
    else:
        failures, metrics = gate.check_workspace(base)
    params = gate.dvc_json("params", "diff", *revisions)
    headline, others = metrics_tables(metrics, base, target)
    with tempfile.TemporaryDirectory() as images:  # DVC copies each revision's images there
        plots = gate.dvc_json("plots", "diff", *revisions, "-o", images)
        charts = render_charts(plots, out_dir, base, target)

    if failures:
        verdict = ["**Gate: fails** (`make gate`):", ""] + [f"- {_cell(line)}"
                                                             for line in failures]
    else:
        verdict = [f"**Gate: passes** (`make gate`: {gate.summary(metrics, base)})."]
    lines = [
        f"## Model report: {target} against {base}",
        "",
        f"Compared: {describe_revision(rev)} against {describe_revision(base)}; written by "
        f"`make report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        *verdict,
        "",
        "### Params that changed",
        "",
        params_table(params, base, target),
        "",
        "### Headline metrics",
        "",
        headline,
        "",
    ]
    if others:
        lines += ["<details><summary>Every other metric</summary>", "", others, "",
                  "</details>", ""]
    return lines, charts


def write_report(base: str = "main", rev: str | None = None, out_dir: Path = OUT_DIR) -> Path:
    """Write ``out_dir/report.md``, its PNGs and ``summary.md`` (replacing an earlier report);
    the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.png"), out_dir / REPORT_FILE, out_dir / SUMMARY_FILE]:
        stale.unlink(missing_ok=True)
    text, charts = build_report(base, rev, out_dir)
    fileio.write_text(out_dir / REPORT_FILE, "\n".join(text + charts) + "\n")
    note = ["### Charts", "", f"Not shown here: the PNGs beside `{out_dir / REPORT_FILE}` "
            "(in CI, the run's `model-report` artifact)."]
    fileio.write_text(out_dir / SUMMARY_FILE, "\n".join(text + note) + "\n")
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
    try:
        path = write_report(args.base, args.rev or None, args.out)
    except gate.DvcError as error:
        sys.exit(f"report: {error}")
    except ModuleNotFoundError as error:  # vl-convert-python: in the pipeline extra
        sys.exit(f"report: {error.name} is not installed: run `make install`")
    print(f"report: wrote {path} and its pictures in {time.perf_counter() - started:.1f} s")


def _title(spec: dict, fallback: str) -> str:
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    return title if isinstance(title, str) and title else fallback


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _alt(text: str) -> str:
    return re.sub(r"[\[\]]", "", text)


def _safe(revision: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", revision)


if __name__ == "__main__":
    main()
