"""Do a handful of a writer's corrections teach the model their style? (the finetune stage)

    .venv/bin/python benchmarks/drawn_recipes.py --label base --fold 0 --save /tmp/base-fold0
    .venv/bin/python benchmarks/corrections_teach.py --base /tmp/base-fold0 --label default
    .venv/bin/python benchmarks/corrections_teach.py --base /tmp/base-fold0 --label repeats30 \
        -S corrections.repeats=30
    .venv/bin/python benchmarks/corrections_teach.py --table
    .venv/bin/python benchmarks/corrections_teach.py --smoke --base DIR  # checks it runs

The base is a default model trained by drawn_recipes.py on one fold: MNIST's training digits
less a held-out 6,000, and UCI's training writers less the fold's 6 held-out writers (never
UCI's test writers, nor MNIST's test set). Among the held-out writers, the writer-and-digit
pairs ("styles") the base misreads most are chosen (at most ``--pairs``, each misread at
least once); for each, K = 1, 3, 10 of the writer's first 10 digits of that style are the
corrections, fine-tuned into the base exactly as the finetune stage does
(mnist_pipeline.finetune, params.yaml's corrections section + ``-S`` overrides), once per
seed, and scored on:

- the writer's *later* digits of that style (after the first 10: the same digits whatever K);
- MNIST's held-out 6,000 and the held-out writers' digits drawn on the page, upright (what
  must not be forgotten), against the base's own score on the same digits; and every
  held-out digit in the writers' hands but the corrections (what the style may disturb);
- the CPU seconds of the fine-tuning.

UCI's writers wrote about 25 digits of each kind, so K = 30 would leave nothing to score.
Runs accumulate in benchmarks/results/corrections_teach.json, one entry per label.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common
import numpy as np

from mnist_pipeline.preprocess import normalize

RESULTS_NAME = "corrections_teach.json"
STYLE_POOL = 10  # a writer's first 10 digits of a style may be corrections; the rest are scored
COUNTS = (1, 3, 10)


def writer_hands(writers: list[str], hand: str, seed: int = 0) -> dict:
    """Each held-out writer's own hand: ``page`` (upright, 120-220 px, as the base's scores
    use), ``small`` (90 px: relatively thick strokes) or ``slanted`` (each writer a slant of
    0.3-0.6 either way, a rotation of up to 12 degrees and a height of 80-120 px)."""
    from mnist_pipeline.strokes import Placement

    rng = np.random.default_rng(seed)
    hands = {}
    for writer in sorted(set(writers)):
        if hand == "small":
            hands[writer] = Placement(90.0)
        elif hand == "slanted":
            hands[writer] = Placement(float(rng.uniform(80, 120)),
                                      slant=float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.6)),
                                      rotation_degrees=float(rng.uniform(-12, 12)))
        else:
            hands[writer] = None
    return hands


def held_out_drawings(data: dict, pen_file: Path, fold: int, hand: str) -> np.ndarray:
    """The held-out writers' digits drawn in their ``hand`` (:func:`writer_hands`), in the
    order of data.npz's drawn_* arrays; ``page`` keeps data.npz's own drawings."""
    if hand == "page":
        return data["drawn_images"]
    from drawn_recipes import load_pen, writer_fold

    from mnist_pipeline import drawn

    _trained, held = writer_fold(load_pen(pen_file), fold)
    if [digit.writer for digit in held] != data["drawn_writers"].tolist():
        raise SystemExit(f"{pen_file}: its fold {fold} is not the base's held-out writers")
    hands = writer_hands([digit.writer for digit in held], hand)
    images, labels = drawn.render_all(held, [hands[digit.writer] for digit in held])
    assert (labels == data["drawn_labels"]).all()
    return images


def load_base(folder: Path):
    from mnist_pipeline.inference import load_keras_model

    data = dict(np.load(folder / "data.npz"))
    base = json.loads((folder / "base.json").read_text())
    return load_keras_model(folder / "model.keras"), data, base


def predict(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32), batch_size=1024,
                                    verbose=0)).argmax(axis=1)


def styles(data: dict, answers: np.ndarray, limit: int, pool_size: int = STYLE_POOL,
           min_scored: int = 5) -> list[dict]:
    """The held-out writer-and-digit pairs the base misreads most (at least once among the
    scored digits), with the indices of the pool (the first ``pool_size``) and the scored
    rest (at least ``min_scored``)."""
    found = []
    writers, labels = data["drawn_writers"], data["drawn_labels"]
    for writer in sorted(set(writers.tolist())):
        for label in range(10):
            index = np.flatnonzero((writers == writer) & (labels == label))
            pool, scored = index[:pool_size], index[pool_size:]
            if len(scored) < min_scored:
                continue
            right = int((answers[scored] == label).sum())
            if right < len(scored):
                found.append({"writer": writer, "label": label, "pool": pool, "scored": scored,
                              "base_right": right})
    found.sort(key=lambda style: style["base_right"] / len(style["scored"]))
    return found[:limit]


def run(args: argparse.Namespace) -> dict:
    from mnist_pipeline import finetune, training
    from mnist_pipeline.model import export_model

    params = common.base_params(args.overrides)
    model, data, base = load_base(args.base)
    drawn = held_out_drawings(data, args.pen, args.fold, args.hand)
    base_drawn = predict(model, drawn)
    base_mnist = predict(model, data["mnist_images"])
    page = data["drawn_images"]  # every held-out writer's digits as drawn on the page
    base_page = predict(model, page)
    # --smoke: a tiny base and a pen file of a few digits a writer
    chosen = (styles(data, base_drawn, args.pairs, pool_size=1, min_scored=1) if args.smoke
              else styles(data, base_drawn, args.pairs))
    replay = (normalize(data["train_images"]), data["train_labels"])
    if args.smoke:
        replay = (replay[0][:500], replay[1][:500])
    runs = []
    for style in chosen:
        for count in args.counts:
            for seed in args.seeds:
                learned = style["pool"][:count]
                corrections = (normalize(drawn[learned]), data["drawn_labels"][learned])
                fresh, _data, _base = load_base(args.base)
                network = finetune.network_of(fresh)
                training.set_determinism(seed)
                cpu = time.process_time()
                finetune.finetune(network, corrections, replay, params.corrections, seed,
                                  label_smoothing=params.train.label_smoothing, verbose=0)
                cpu = time.process_time() - cpu
                tuned = export_model(network, base["test_time_shifts"], base["temperature"])
                after_drawn = predict(tuned, drawn)
                after_mnist = predict(tuned, data["mnist_images"])
                after_page = predict(tuned, page)
                others = np.setdiff1d(np.arange(len(drawn)), learned)
                scored = style["scored"]
                runs.append({
                    "writer": style["writer"], "label": style["label"], "k": count,
                    "seed": seed, "scored": len(scored), "base_right": style["base_right"],
                    "right": int((after_drawn[scored] == style["label"]).sum()),
                    "mnist_base": float((base_mnist == data["mnist_labels"]).mean()),
                    "mnist": float((after_mnist == data["mnist_labels"]).mean()),
                    "drawn_base": float((base_drawn[others] == data["drawn_labels"][others])
                                        .mean()),
                    "drawn": float((after_drawn[others] == data["drawn_labels"][others])
                                   .mean()),
                    "page_base": float((base_page == data["drawn_labels"]).mean()),
                    "page": float((after_page == data["drawn_labels"]).mean()),
                    "cpu_s": round(cpu, 1)})
                print(json.dumps(runs[-1]), flush=True)
    return {"label": args.label, "base": str(args.base), "hand": args.hand,
            "overrides": args.overrides,
            "machine": common.machine(), "runs": runs}


def table() -> None:
    results = common.results_dir() / RESULTS_NAME
    entries = json.loads(results.read_text()) if results.exists() else []
    print("| recipe | K | styles x seeds | later digits right, base -> after | MNIST held-out "
          "change | pen held-out change | writers' hands, others | fine-tune CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in entries:
        for count in sorted({run["k"] for run in entry["runs"]}):
            mine = [run for run in entry["runs"] if run["k"] == count]
            before = statistics.mean(run["base_right"] / run["scored"] for run in mine)
            after = statistics.mean(run["right"] / run["scored"] for run in mine)
            mnist = statistics.mean(run["mnist"] - run["mnist_base"] for run in mine)
            drawn = statistics.mean(run["drawn"] - run["drawn_base"] for run in mine)
            page = (f"{100 * statistics.mean(run['page'] - run['page_base'] for run in mine):+.2f}"
                    if all("page" in run for run in mine) else "-")
            cpu = statistics.mean(run["cpu_s"] for run in mine)
            print(f"| {entry['label']} | {count} | {len(mine)} | {100 * before:.0f}% -> "
                  f"{100 * after:.0f}% | {100 * mnist:+.2f} | {page} | "
                  f"{100 * drawn:+.2f} | {cpu:.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--base", type=Path, help="a folder drawn_recipes.py --save wrote")
    parser.add_argument("--label", default="default")
    parser.add_argument("--fold", type=int, default=0, help="the base's fold (drawn_recipes)")
    parser.add_argument("--hand", choices=("page", "small", "slanted"), default="slanted",
                        help="how the held-out writers draw (writer_hands)")
    parser.add_argument("--pen", type=Path,
                        default=Path("/work/shared/pendigits/pendigits-orig.tra"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.table:
        table()
        return
    if args.base is None:
        parser.error("--base is needed (or --table)")
    result = run(args)
    if not args.smoke:
        results = common.results_dir() / RESULTS_NAME
        entries = json.loads(results.read_text()) if results.exists() else []
        entries = [entry for entry in entries if entry["label"] != result["label"]]
        results.write_text(json.dumps([*entries, result], indent=1) + "\n")
    table()


if __name__ == "__main__":
    main(sys.argv[1:])
