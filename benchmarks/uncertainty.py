"""How often `uncertain` (mnist_pipeline/uncertainty.py) flags real digits and non-digits.

    .venv/bin/python benchmarks/uncertainty.py                     # after `make sample`
    .venv/bin/python benchmarks/uncertainty.py --model models/model.keras --prepared data/prepared
    .venv/bin/python benchmarks/uncertainty.py --smoke   # seconds: an untrained tiny model

Scores the trained model on the validation and test splits (data/prepared) and on generated
non-digits: uniform noise, blank (black) pages, uniformly gray pages, scribbles (random
polylines drawn with Pillow) and the letters A-Z and a-z in Pillow's default font. Scribbles
and letters are drawn large and made MNIST-style by the app's own digit_image.normalize_digit,
as an uploaded picture is. Prints, per kind, the share flagged by the module's rule (and
by each of its parts), then the flagged shares over a range of MIN_CONFIDENCE values and the
pixel statistics the other thresholds were set from.
Writes benchmarks/results/uncertainty.json.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import common
import numpy as np

CONFIDENCE_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEED = 0


def non_digits(count: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Generated inputs that are not digits, float32 (n, 28, 28) 0..255, by kind."""
    from PIL import Image, ImageDraw, ImageFont

    from mnist_pipeline.digit_image import normalize_digit

    rng = np.random.default_rng(seed)

    def scribble() -> np.ndarray:
        picture = Image.new("L", (140, 140))
        points = [tuple(rng.uniform(10, 130, 2)) for _ in range(rng.integers(3, 9))]
        ImageDraw.Draw(picture).line(points, fill=255, width=int(rng.integers(8, 16)),
                                     joint="curve")
        return normalize_digit(np.asarray(picture, np.float32), "never")

    font = ImageFont.load_default(size=100)

    def letter(character: str) -> np.ndarray:
        picture = Image.new("L", (160, 160))
        ImageDraw.Draw(picture).text((30, 10), character, fill=255, font=font)
        return normalize_digit(np.asarray(picture, np.float32), "never")

    def noise_picture() -> np.ndarray:  # a 28x28 noise PNG as an upload: cropped, fitted
        return normalize_digit(rng.uniform(0, 255, (28, 28)).astype(np.float32), "never")

    return {
        "uniform noise": rng.uniform(0, 255, (count, 28, 28)).astype(np.float32),
        "noise picture": np.stack([noise_picture() for _ in range(count)]),
        "blank": np.zeros((count, 28, 28), np.float32),
        "gray page": np.broadcast_to(rng.uniform(20, 255, (count, 1, 1)),
                                     (count, 28, 28)).astype(np.float32),
        "scribbles": np.stack([scribble() for _ in range(count)]),
        "letters": np.stack([letter(c) for c in string.ascii_letters]),
    }


def smoke_inputs(folder: Path) -> tuple[Path, Path]:
    """An untrained tiny model and prepared val/test arrays of the bundled digits, in ``folder``."""
    params = common.base_params(common.SMOKE_OVERRIDES)
    splits = common.smoke_subset(common.load_splits("mnist-sample", params))
    prepared = folder / "prepared"
    prepared.mkdir()
    for split in ("val", "test"):
        np.save(prepared / f"{split}_images.npy", splits[split][0])
        np.save(prepared / f"{split}_labels.npy", splits[split][1])
    return common.untrained_model(folder, params), prepared


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--count", type=int, default=500, help="inputs per generated kind")
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
        args.count = 8
        args.model, args.prepared = smoke_inputs(Path(tempfile.mkdtemp(prefix="bench-smoke-")))

    from mnist_pipeline import inference, uncertainty
    from mnist_pipeline.model import to_pixels

    kinds: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for split in ("val", "test"):
        images = np.load(args.prepared / f"{split}_images.npy")
        labels = np.load(args.prepared / f"{split}_labels.npy")
        kinds[f"{split} digits"] = (to_pixels(images), labels)
    kinds.update({name: (pixels, None) for name, pixels in non_digits(args.count).items()})

    classifier = inference.load(args.model)
    rows, results = [], {}
    for name, (pixels, labels) in kinds.items():
        probabilities = classifier.probabilities(pixels)
        confidence = probabilities.max(axis=1)
        not_digit = ~uncertainty.looks_like_a_digit(pixels)
        flagged = uncertainty.uncertain(pixels, probabilities)
        entry = {
            "inputs": len(pixels),
            "flagged": round(float(flagged.mean()), 4),
            "not_a_digit": round(float(not_digit.mean()), 4),
            "unsure": round(float((confidence < uncertainty.MIN_CONFIDENCE).mean()), 4),
            "mean_confidence": round(float(confidence.mean()), 4),
            "flagged_by_min_confidence": {
                str(threshold): round(float((not_digit | (confidence < threshold)).mean()), 4)
                for threshold in CONFIDENCE_SWEEP},
            "pixel_features": {
                feature: {"min": round(float(values.min()), 4),
                          "p0.5": round(float(np.quantile(values, 0.005)), 4),
                          "median": round(float(np.median(values)), 4),
                          "p99.5": round(float(np.quantile(values, 0.995)), 4),
                          "max": round(float(values.max()), 4)}
                for feature, values in uncertainty.pixel_features(pixels).items()},
        }
        if labels is not None:
            right = probabilities.argmax(axis=1) == labels
            entry["accuracy"] = round(float(right.mean()), 4)
            entry["accuracy_of_unflagged"] = (round(float(right[~flagged].mean()), 4)
                                              if (~flagged).any() else None)
            entry["errors_flagged"] = f"{int((~right & flagged).sum())} of {int((~right).sum())}"
        results[name] = entry
        rows.append([name, len(pixels), f"{entry['flagged']:.1%}", f"{entry['not_a_digit']:.1%}",
                     f"{entry['unsure']:.1%}", f"{entry['mean_confidence']:.3f}"])

    print(f"rule: ink >= {uncertainty.MIN_INK}, lit share <= {uncertainty.MAX_LIT_SHARE}, "
          f"frame share <= {uncertainty.MAX_FRAME_SHARE}, confidence >= "
          f"{uncertainty.MIN_CONFIDENCE}")
    common.print_table(["inputs", "n", "flagged", "not a digit", "unsure", "mean conf"], rows)
    print("\nflagged share by MIN_CONFIDENCE (pixel rules unchanged)")
    common.print_table(["inputs", *map(str, CONFIDENCE_SWEEP)],
                       [[name, *(f"{share:.1%}" for share in
                                 entry["flagged_by_min_confidence"].values())]
                        for name, entry in results.items()])
    print("\npixel features (min / 0.5% / median / 99.5% / max)")
    common.print_table(["inputs", *uncertainty.pixel_features(kinds["val digits"][0][:1])],
                       [[name, *(" / ".join(f"{v:.3g}" for v in stats.values())
                                 for stats in entry["pixel_features"].values())]
                        for name, entry in results.items()])
    common.write_results("uncertainty", {
        "model": str(args.model), "prepared": str(args.prepared),
        "rule": {"min_ink": uncertainty.MIN_INK, "max_lit_share": uncertainty.MAX_LIT_SHARE,
                 "frame_pixels": uncertainty.FRAME_PIXELS,
                 "max_frame_share": uncertainty.MAX_FRAME_SHARE,
                 "min_confidence": uncertainty.MIN_CONFIDENCE},
        "kinds": results})


if __name__ == "__main__":
    main()
