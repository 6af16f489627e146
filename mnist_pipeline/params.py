"""Load and validate ``params.yaml`` into frozen, typed objects.

This is the only module that opens the params file. Every stage calls
:func:`load_params` once, before doing any work, so that an unknown key, a wrong type or an
out-of-range value fails fast with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mnist_pipeline import paths

DatasetName = Literal["mnist", "fashion-mnist", "mnist-sample"]
Architecture = Literal["convnet", "dense"]
OptimizerName = Literal["adam", "adamw", "sgd"]
LrSchedule = Literal["constant", "warmup_cosine", "cosine_restarts"]
Distribute = Literal["none", "mirrored", "multi_worker"]
FinetuneLayers = Literal["head", "all"]

# PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string; YAML 1.2 (and people)
# write floats that way, so float keys accept that spelling too.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing, of the wrong type or out of range."""


# Values are quoted in messages through this: a long string, a deep list or a YAML alias bomb
# (a few lines that expand to millions of items) still gives a one-line message of ~100 chars.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict = 2, 4, 4
_QUOTE.maxstring = _QUOTE.maxother = 40
_show = _QUOTE.repr


def _show_key(key: Any) -> str:
    """A key as written in the file: plain if a short string, else quoted and shortened."""
    return key if isinstance(key, str) and len(key) <= 40 else _show(key)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader: a key given twice in a mapping is refused (as DVC's ruamel does)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                raise ParamsError(f"line {key_node.start_mark.line + 1}: a key must be a "
                                  f"plain value, got {_show(key)}")
            if key in seen:
                raise ParamsError(f"line {key_node.start_mark.line + 1}: duplicate key "
                                  f"{_show(key)}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class DataParams:
    dataset: DatasetName = "mnist"
    # UCI's pen-drawn digits of 44 writers, a second source; only beside a digits dataset
    drawn: bool = True
    mirrors: tuple[str, ...] = ()
    timeout_seconds: float = 30.0
    retries: int = 3

    def check(self) -> None:
        _require(self.timeout_seconds > 0, "data.timeout_seconds", self.timeout_seconds, "> 0")
        _require(0 <= self.retries <= 10, "data.retries", self.retries, "0..10")
        for mirror in self.mirrors:
            _require(bool(mirror.strip()), "data.mirrors", mirror, "non-empty URL or directory")
        _require(not (self.drawn and self.dataset == "fashion-mnist"), "data.drawn", self.drawn,
                 "false with fashion-mnist (the pen data are digits, not clothes)")


@dataclass(frozen=True)
class DrawnParams:
    """How the pen-drawn digits become pictures (mnist_pipeline/drawn.py)."""

    val_writers: int = 3
    copies: int = 2
    min_height: float = 80.0
    max_height: float = 220.0
    slant: float = 0.3
    rotation_degrees: float = 8.0
    aspect: float = 0.15
    wobble: float = 0.0

    def check(self) -> None:
        _require(1 <= self.val_writers <= 15, "preprocess.drawn.val_writers", self.val_writers,
                 "1..15 (of the 30 training writers)")
        _require(1 <= self.copies <= 10, "preprocess.drawn.copies", self.copies, "1..10")
        _require(20 <= self.min_height <= self.max_height <= 250,
                 "preprocess.drawn.min_height..max_height", (self.min_height, self.max_height),
                 "20 <= min_height <= max_height <= 250 (pixels of the 280 px pad)")
        _require(0 <= self.slant <= 1, "preprocess.drawn.slant", self.slant, "0..1")
        _require(0 <= self.rotation_degrees <= 45, "preprocess.drawn.rotation_degrees",
                 self.rotation_degrees, "0..45")
        _require(0 <= self.aspect < 1, "preprocess.drawn.aspect", self.aspect, "[0, 1)")
        _require(0 <= self.wobble <= 0.2, "preprocess.drawn.wobble", self.wobble,
                 "0..0.2 (a share of the digit's size)")


@dataclass(frozen=True)
class PreprocessParams:
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    scan_copies: float = 0.15
    drawn: DrawnParams = field(default_factory=DrawnParams)

    def check(self) -> None:
        self.drawn.check()
        _require(0 <= self.scan_copies <= 1, "preprocess.scan_copies", self.scan_copies, "0..1")
        _require(0 < self.val_fraction < 1, "preprocess.val_fraction", self.val_fraction,
                 "a fraction in (0, 1)")
        _require(0 < self.test_fraction < 1, "preprocess.test_fraction", self.test_fraction,
                 "a fraction in (0, 1)")
        total = self.val_fraction + self.test_fraction
        _require(total < 1, "preprocess.val_fraction + preprocess.test_fraction", total,
                 "< 1, leaving digits to train on")


@dataclass(frozen=True)
class ModelParams:
    architecture: Architecture = "convnet"
    conv_filters: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 1
    dense_units: int = 128
    dropout_rate: float = 0.3
    batch_norm: bool = True
    test_time_shifts: int = 4

    def check(self) -> None:
        _require(1 <= len(self.conv_filters) <= 3, "model.conv_filters", list(self.conv_filters),
                 "1 to 3 blocks (each max-pool halves the image: 28, 14, 7, 3)")
        for filters in self.conv_filters:
            _require(filters >= 1, "model.conv_filters", list(self.conv_filters),
                     "positive filter counts")
        _require(self.convs_per_block in (1, 2), "model.convs_per_block", self.convs_per_block,
                 "1 or 2 (3x3 convs before each 2x2 max-pool)")
        _require(self.dense_units >= 1, "model.dense_units", self.dense_units, ">= 1")
        _require(0 <= self.dropout_rate < 1, "model.dropout_rate", self.dropout_rate, "[0, 1)")
        _require(self.test_time_shifts in (0, 4, 8), "model.test_time_shifts",
                 self.test_time_shifts, "0 (off), 4 or 8 one-pixel shifts")


@dataclass(frozen=True)
class AugmentationParams:
    rotation_degrees: float = 0.0
    translation_fraction: float = 0.05
    zoom_fraction: float = 0.0

    @property
    def enabled(self) -> bool:
        return any((self.rotation_degrees, self.translation_fraction, self.zoom_fraction))

    def check(self, section: str = "train.augmentation") -> None:
        _require(0 <= self.rotation_degrees <= 180, f"{section}.rotation_degrees",
                 self.rotation_degrees, "0..180")
        _require(0 <= self.translation_fraction < 0.5, f"{section}.translation_fraction",
                 self.translation_fraction, "[0, 0.5)")
        _require(0 <= self.zoom_fraction < 1, f"{section}.zoom_fraction",
                 self.zoom_fraction, "[0, 1)")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 14
    batch_size: int = 128
    optimizer: OptimizerName = "adam"
    learning_rate: float = 0.002
    lr_schedule: LrSchedule = "warmup_cosine"
    warmup_epochs: int = 1
    lr_cycles: int = 2
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    early_stopping_patience: int = 0
    # Exponential moving average of the weights (Polyak averaging), updated every step with
    # this momentum; validation, early stopping and the saved model use the average. 0 = off.
    ema_momentum: float = 0.99
    # "none": one device; "mirrored": every local GPU (or the CPU); "multi_worker": every
    # worker of TF_CONFIG. batch_size is the GLOBAL batch; learning_rate is not scaled.
    distribute: Distribute = "none"
    augmentation: AugmentationParams = field(default_factory=AugmentationParams)

    def check(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _require(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "> 0")
        # Warmup only exists in warmup_cosine; with a constant rate the key is ignored, so a
        # one-epoch smoke run (`train.epochs=1`) needs no warmup_epochs override.
        if self.lr_schedule == "warmup_cosine":
            _require(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs",
                     self.warmup_epochs, f"0..{self.epochs - 1} (less than train.epochs)")
        else:
            _require(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, ">= 0")
        # Likewise lr_cycles: only cosine_restarts has cycles.
        if self.lr_schedule == "cosine_restarts":
            _require(1 <= self.lr_cycles <= self.epochs, "train.lr_cycles", self.lr_cycles,
                     f"1..{self.epochs} (at most one cycle per epoch of train.epochs)")
        else:
            _require(self.lr_cycles >= 1, "train.lr_cycles", self.lr_cycles, ">= 1")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing,
                 "[0, 1)")
        _require(0 <= self.ema_momentum < 1, "train.ema_momentum", self.ema_momentum,
                 "[0, 1) (0 turns the weight average off)")
        _require(self.early_stopping_patience >= 0, "train.early_stopping_patience",
                 self.early_stopping_patience, ">= 0 (0 turns early stopping off)")
        self.augmentation.check("train.augmentation")


@dataclass(frozen=True)
class CorrectionsParams:
    """A round of corrections (read_corrections and finetune; mnist_pipeline/finetune.py):
    ``folders`` of labelled pictures under data/extra/ (mnist_pipeline/labelled.py), of
    whose writers' pictures the latest ``test_fraction`` (rounded down; one of three or more;
    never all) are the `extra` test source and the earlier ones are learned."""

    folders: tuple[str, ...] = ()
    test_fraction: float = 0.2
    repeats: int = 10
    replay: int = 2000
    epochs: int = 3
    learning_rate: float = 0.0003
    batch_size: int = 64
    # "head": only the dense layers learn (the features every source shares stay); "all"
    layers: FinetuneLayers = "head"
    # As the base's by default: stronger transforms (rotation 10, zoom 0.1) taught the
    # styles no better and cost MNIST more (benchmarks/README.md#corrections-that-teach).
    augmentation: AugmentationParams = field(default_factory=AugmentationParams)

    def check(self) -> None:
        for folder in self.folders:
            _require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", folder) is not None
                     and folder not in (".", ".."), "corrections.folders", folder,
                     "names of folders under data/extra/ (no slashes)")
        _require(len(set(self.folders)) == len(self.folders), "corrections.folders",
                 list(self.folders), "each folder once")
        _require(0 <= self.test_fraction < 1, "corrections.test_fraction", self.test_fraction,
                 "[0, 1)")
        _require(1 <= self.repeats <= 1000, "corrections.repeats", self.repeats, "1..1000")
        _require(0 <= self.replay <= 10**6, "corrections.replay", self.replay, "0..1000000")
        _require(1 <= self.epochs <= 100, "corrections.epochs", self.epochs, "1..100")
        _require(self.learning_rate > 0, "corrections.learning_rate", self.learning_rate, "> 0")
        _require(self.batch_size >= 1, "corrections.batch_size", self.batch_size, ">= 1")
        self.augmentation.check("corrections.augmentation")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 1024

    def check(self) -> None:
        _require(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True)
class PlotParams:
    gallery_size: int = 25
    sample_grid_size: int = 25
    figure_dpi: int = 100

    def check(self) -> None:
        _require(1 <= self.gallery_size <= 100, "plot.gallery_size", self.gallery_size, "1..100")
        _require(1 <= self.sample_grid_size <= 100, "plot.sample_grid_size",
                 self.sample_grid_size, "1..100")
        _require(50 <= self.figure_dpi <= 300, "plot.figure_dpi", self.figure_dpi, "50..300")


@dataclass(frozen=True)
class Params:
    seed: int = 42
    data: DataParams = field(default_factory=DataParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    corrections: CorrectionsParams = field(default_factory=CorrectionsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    plot: PlotParams = field(default_factory=PlotParams)

    def check(self) -> None:
        _require(0 <= self.seed < 2**31, "seed", self.seed, "an integer in 0..2**31-1")
        for section in (self.data, self.preprocess, self.model, self.train, self.corrections,
                        self.evaluate, self.plot):
            section.check()
        _require(not (self.preprocess.scan_copies and self.data.dataset == "fashion-mnist"),
                 "preprocess.scan_copies", self.preprocess.scan_copies,
                 "0 with fashion-mnist (scans of handwritten digits, not clothes)")


def load_params(path: str | Path = paths.PARAMS_FILE) -> Params:
    """Read ``path`` and return validated params, or raise :class:`ParamsError`.

    Keys missing from the file take the defaults above, so an old params.yaml keeps working
    when a new knob is added; unknown keys are refused, since a typo would otherwise be
    silently ignored.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    return params_from_dict({} if raw is None else raw)


def params_from_dict(raw: Any) -> Params:
    """Build and validate :class:`Params` from a plain mapping (the parsed YAML)."""
    params = _build(Params, raw, prefix="")
    params.check()
    return params


def as_dict(params: Any) -> dict[str, Any]:
    """The params (or one section) as plain YAML-ready data: tuples become lists."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value
    return plain(dataclasses.asdict(params))


def _build(cls: type, raw: Any, prefix: str) -> Any:
    section = prefix.rstrip(".") or "params.yaml"
    if raw is None:  # a section whose keys are all commented out: take the defaults
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{section}: expected a mapping of keys, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields, key=str)  # YAML keys need not be strings
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ParamsError(f"{prefix}{_show_key(unknown[0])}: unknown key; allowed keys in "
                          f"{section}: {allowed}")
    values = {name: _convert(hints[name], raw[name], f"{prefix}{name}") for name in raw}
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key}: {_show(value)} is not allowed; choose one of "
                              f"{', '.join(allowed)}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {_show(value)}")
        return tuple(_convert(item_type, item, key) for item in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ParamsError(f"{key}: expected a finite number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"{key}: unsupported params type {hint!r}")  # a bug here, not in the YAML


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ParamsError(f"{key}: {_show(value)} is out of range; allowed: {allowed}")

