"""Every file and folder the pipeline reads or writes, relative to the repository root.

dvc.yaml names the same paths; tests/test_dvc_yaml.py checks that the two agree. Stages run
from the repository root (as `dvc repro` does), so these relative paths resolve there.
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
# Written by the check_params stage when params.yaml is valid; the first stage depends on it.
PARAMS_CHECKED = Path("data/params.ok")

# The download stage writes the verified, decompressed IDX files here, under their
# canonical names (mnist-sample has no t10k files), plus a manifest (dataset, sources, digests).
RAW_DIR = Path("data/raw")
RAW_MANIFEST = RAW_DIR / "manifest.json"
RAW_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# Folders of labelled pictures (corrections.folders names them): read by read_corrections.
EXTRA_DIR = Path("data/extra")
# Those pictures MNIST-style, split by time (read_corrections): train_* are learned by the
# finetune stage, test_* are the `extra` test source; summary.json says what was read.
CORRECTIONS_DIR = Path("data/corrections")
CORRECTIONS_SUMMARY = CORRECTIONS_DIR / "summary.json"

PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
# {source: split} of the test splits, one per data source ({"mnist": "test", "drawn":
# "test_drawn"}): what evaluate scores, each on its own.
PREPARED_SOURCES = PREPARED_DIR / "sources.json"


def prepared_images(split: str, folder: Path = PREPARED_DIR) -> Path:
    """Normalized float32 images of one split, shape (N, 28, 28), values in [0, 1]."""
    return folder / f"{split}_images.npy"


def prepared_labels(split: str, folder: Path = PREPARED_DIR) -> Path:
    """uint8 class labels 0..9 of one split, shape (N,)."""
    return folder / f"{split}_labels.npy"


MODELS_DIR = Path("models")
# The train stage's model (every source's training digits), and the model everything uses:
# the base after the finetune stage has learned the corrections (the base itself when there
# are none).
BASE_MODEL_FILE = MODELS_DIR / "base.keras"
MODEL_FILE = MODELS_DIR / "model.keras"
SERVING_DIR = MODELS_DIR / "serving"  # the same model as a TensorFlow SavedModel (TF Serving)
ONNX_MODEL_FILE = MODELS_DIR / "model.onnx"  # the same model for onnxruntime (no TensorFlow)

METRICS_DIR = Path("metrics")
DATA_METRICS = METRICS_DIR / "data.json"
CORRECTIONS_METRICS = METRICS_DIR / "corrections.json"  # pictures read, learned, held out
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
EXPORT_METRICS = METRICS_DIR / "export.json"  # the ONNX model's parity with the .keras model

# dvclive's folder: metrics.json (final epoch values) and plots/metrics/{train,eval}/*.tsv.
TRAINING_LOG_DIR = Path("dvclive")
TRAINING_METRICS = TRAINING_LOG_DIR / "metrics.json"
TRAINING_PLOTS_DIR = TRAINING_LOG_DIR / "plots" / "metrics"

PLOTS_DIR = Path("plots")
# One file per data source (the dataset's name, "drawn"), scored on its own test split; DVC
# draws one chart per file of each folder.
PREDICTIONS_DIR = PLOTS_DIR / "predictions"  # <source>.csv: index,actual,predicted,confidence
PER_CLASS_DIR = PLOTS_DIR / "per_class"  # <source>.csv: digit,precision,recall,f1,support,...
# The reliability diagram: <source>.csv: bin,confidence,accuracy,count (non-empty bins).
CALIBRATION_DIR = PLOTS_DIR / "calibration"


def predictions_file(source: str) -> Path:
    """One row per test digit of ``source``: index,actual,predicted,confidence."""
    return PREDICTIONS_DIR / f"{source}.csv"


def per_class_file(source: str) -> Path:
    """One row per digit of ``source``'s test split: precision, recall, errors, ..."""
    return PER_CLASS_DIR / f"{source}.csv"


def calibration_file(source: str) -> Path:
    """The reliability diagram's bins of ``source``'s test split."""
    return CALIBRATION_DIR / f"{source}.csv"


# Accuracy under distortions: level, then one column per distortion (mnist_pipeline.robustness).
ROBUSTNESS_FILE = PLOTS_DIR / "robustness.csv"
CLASS_COUNTS_DIR = PLOTS_DIR / "class_counts"  # <split>.csv: digit,count


def class_counts_file(split: str) -> Path:
    """How many digits of each class one split holds (preprocess stage)."""
    return CLASS_COUNTS_DIR / f"{split}.csv"


PLOT_IMAGES_DIR = PLOTS_DIR / "images"
