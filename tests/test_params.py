"""params.yaml loading: the real file loads; each kind of bad value fails naming its key."""

from __future__ import annotations

import copy
import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from committed import committed_params, committed_params_text

from mnist_pipeline.params import (
    DrawnParams,
    Params,
    ParamsError,
    PreprocessParams,
    as_dict,
    load_params,
    params_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]
# The committed params.yaml: a run or `dvc exp run -S` changes the workspace's, not this.
REAL_PARAMS = committed_params()


def with_value(dotted_key: str, value) -> dict:
    """The real params with one (possibly nested, possibly new) key set to ``value``."""
    raw = copy.deepcopy(REAL_PARAMS)
    *parents, leaf = dotted_key.split(".")
    section = raw
    for name in parents:
        section = section.setdefault(name, {})
    section[leaf] = value
    return raw


@pytest.fixture
def real_params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(committed_params_text())
    return path


def test_the_real_params_file_loads(real_params_file):
    params = load_params(real_params_file)
    assert isinstance(params, Params)
    assert params.seed == REAL_PARAMS["seed"]
    assert params.data.dataset == REAL_PARAMS["data"]["dataset"]
    assert params.preprocess == PreprocessParams(**{
        **REAL_PARAMS["preprocess"], "drawn": DrawnParams(**REAL_PARAMS["preprocess"]["drawn"])})
    assert params.model.conv_filters == tuple(REAL_PARAMS["model"]["conv_filters"])
    assert params.train.augmentation.rotation_degrees == REAL_PARAMS["train"]["augmentation"][
        "rotation_degrees"
    ]


def test_the_real_file_sets_every_key_so_defaults_cannot_drift_from_it(real_params_file):
    assert as_dict(load_params(real_params_file)) == REAL_PARAMS


def test_params_are_frozen():
    params = params_from_dict(REAL_PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1  # type: ignore[misc]


def test_missing_keys_and_empty_sections_take_the_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 7\ntrain:\n  augmentation:\n")
    params = load_params(path)
    assert params.seed == 7
    assert params.train.augmentation == Params().train.augmentation
    path.write_text("")
    assert load_params(path) == Params()


def test_ints_are_accepted_for_floats_and_exponent_strings_too():
    assert params_from_dict(with_value("data.timeout_seconds", 5)).data.timeout_seconds == 5.0
    # PyYAML reads `3e-3` as a string (YAML 1.1); DVC writes floats that way.
    raw = yaml.safe_load("train:\n  learning_rate: 3e-3\n")
    assert params_from_dict(raw).train.learning_rate == pytest.approx(0.003)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # unknown keys, at every depth, with the allowed ones listed
        ("sede", 1, r"^sede: unknown key; allowed keys in params.yaml: corrections, data, "
                    r"evaluate"),
        ("train.epoch", 3, r"^train.epoch: unknown key; allowed keys in train: augmentation,"),
        ("train.augmentation.foo", 1,
         r"^train.augmentation.foo: unknown key; allowed keys in train.augmentation: "
         r"rotation_degrees, translation_fraction, zoom_fraction"),
        # wrong types
        ("train.epochs", "ten", r"^train.epochs: expected an integer, got 'ten'"),
        ("train.epochs", 2.5, r"^train.epochs: expected an integer, got 2.5"),
        ("train.batch_size", True, r"^train.batch_size: expected an integer, got True"),
        ("seed", False, r"^seed: expected an integer, got False"),
        ("model.batch_norm", 1, r"^model.batch_norm: expected true or false, got 1"),
        ("model.batch_norm", "yes please", r"^model.batch_norm: expected true or false"),
        ("train.learning_rate", "fast", r"^train.learning_rate: expected a number, got 'fast'"),
        ("train.learning_rate", True, r"^train.learning_rate: expected a number, got True"),
        ("train.learning_rate", float("nan"), r"^train.learning_rate: expected a finite number"),
        ("data.timeout_seconds", float("inf"), r"^data.timeout_seconds: expected a finite"),
        ("model.conv_filters", 32, r"^model.conv_filters: expected a list, got 32"),
        ("model.conv_filters", [32, "64"], r"^model.conv_filters: expected an integer, got '64'"),
        ("data.mirrors", "http://example.org/", r"^data.mirrors: expected a list"),
        ("data.mirrors", [7], r"^data.mirrors: expected a string, got 7"),
        ("train", [1, 2], r"^train: expected a mapping of keys, got \[1, 2\]"),
        ("train.augmentation", 5, r"^train.augmentation: expected a mapping of keys"),
        # names from a fixed list
        ("data.dataset", "cifar10",
         r"^data.dataset: 'cifar10' is not allowed; choose one of mnist, fashion-mnist, "
         r"mnist-sample$"),
        ("model.architecture", "resnet", r"^model.architecture: .*choose one of convnet, dense"),
        ("train.optimizer", "Adam", r"^train.optimizer: 'Adam' is not allowed"),
        ("train.lr_schedule", "cosine", r"^train.lr_schedule: .*constant, warmup_cosine"),
        ("train.lr_cycles", 0, r"^train.lr_cycles: 0 is out of range; allowed: >= 1"),
        ("train.distribute", "horovod",
         r"^train.distribute: 'horovod' is not allowed; choose one of none, mirrored, "
         r"multi_worker$"),
        # out of range
        ("train.epochs", -1, r"^train.epochs: -1 is out of range; allowed: >= 1"),
        ("train.epochs", 0, r"^train.epochs: 0 is out of range"),
        ("train.batch_size", 0, r"^train.batch_size: 0 is out of range"),
        ("train.learning_rate", 0, r"^train.learning_rate: 0.0 is out of range; allowed: > 0"),
        ("train.warmup_epochs", 14, r"^train.warmup_epochs: 14 is out of range; allowed: 0..13"),
        ("train.label_smoothing", 1.0, r"^train.label_smoothing: 1.0 is out of range"),
        ("train.early_stopping_patience", -2, r"^train.early_stopping_patience: -2"),
        ("train.augmentation.rotation_degrees", 200, r"^train.augmentation.rotation_degrees: "),
        ("train.augmentation.zoom_fraction", -0.1, r"^train.augmentation.zoom_fraction: -0.1"),
        ("train.ema_momentum", 1.0, r"^train.ema_momentum: 1.0 is out of range; allowed: "
         r"\[0, 1\) \(0 turns the weight average off\)"),
        ("preprocess.val_fraction", 0, r"^preprocess.val_fraction: 0.0 is out of range; "
         r"allowed: a fraction in \(0, 1\)"),
        ("preprocess.val_fraction", 1.5, r"^preprocess.val_fraction: 1.5 is out of range"),
        ("preprocess.val_fraction", 1, r"^preprocess.val_fraction: 1.0 is out of range"),
        ("preprocess.test_fraction", -0.2, r"^preprocess.test_fraction: -0.2 is out of range"),
        ("preprocess.test_fraction", 0.95,
         r"^preprocess.val_fraction \+ preprocess.test_fraction: 1.05 is out of range"),
        ("model.conv_filters", [], r"^model.conv_filters: \[\] is out of range; allowed: 1 to 3"),
        ("model.conv_filters", [8, 16, 32, 64], r"^model.conv_filters: \[8, 16, 32, 64\]"),
        ("model.conv_filters", [32, 0], r"^model.conv_filters: .*positive filter counts"),
        ("model.convs_per_block", 3, r"^model.convs_per_block: 3 is out of range; allowed: 1 or 2"),
        ("model.convs_per_block", 0, r"^model.convs_per_block: 0 is out of range"),
        ("model.test_time_shifts", 2, r"^model.test_time_shifts: 2 is out of range; allowed: 0"),
        ("model.dropout_rate", 1, r"^model.dropout_rate: 1.0 is out of range"),
        ("data.retries", 11, r"^data.retries: 11 is out of range; allowed: 0..10"),
        ("data.timeout_seconds", 0, r"^data.timeout_seconds: 0.0 is out of range"),
        ("data.mirrors", ["  "], r"^data.mirrors: '  ' is out of range"),
        ("data.drawn", "yes", r"^data.drawn: expected true or false"),
        ("corrections.folders", ["../secrets"], r"^corrections.folders: '../secrets' is out of "
                                                r"range; allowed: names of folders under "
                                                r"data/extra/"),
        ("corrections.folders", ["a/b"], r"^corrections.folders: 'a/b' is out of range"),
        ("corrections.folders", ["a", "a"], r"^corrections.folders: \['a', 'a'\] is out of "
                                            r"range; allowed: each"),
        ("corrections.test_fraction", 1, r"^corrections.test_fraction: 1.0 is out"),
        ("corrections.repeats", 0, r"^corrections.repeats: 0 is out of range; allowed: 1..1000"),
        ("corrections.epochs", 0, r"^corrections.epochs: 0 is out of range"),
        ("corrections.augmentation.zoom_fraction", 1,
         r"^corrections.augmentation.zoom_fraction: 1.0 is out of range"),
        ("preprocess.drawn.copies", 0, r"^preprocess.drawn.copies: 0 is out of range"),
        ("preprocess.drawn.val_writers", 30, r"^preprocess.drawn.val_writers: 30 is out of"),
        ("preprocess.drawn.max_height", 300, r"^preprocess.drawn.min_height..max_height: "),
        ("preprocess.drawn.min_height", 230, r"^preprocess.drawn.min_height..max_height: "),
        ("preprocess.drawn.aspect", 1, r"^preprocess.drawn.aspect: 1.0 is out of range"),
        ("seed", -1, r"^seed: -1 is out of range; allowed: an integer in 0..2\*\*31-1"),
        ("seed", 2**31, r"^seed: 2147483648 is out of range"),
        ("evaluate.batch_size", 0, r"^evaluate.batch_size: 0 is out of range"),
        ("plot.figure_dpi", 10, r"^plot.figure_dpi: 10 is out of range; allowed: 50..300"),
        ("plot.gallery_size", 0, r"^plot.gallery_size: 0 is out of range"),
    ],
)
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ParamsError, match=message):
        params_from_dict(with_value(key, value))


def test_drawn_digits_and_scan_copies_are_refused_beside_fashion_mnist():
    raw = with_value("data.dataset", "fashion-mnist")
    with pytest.raises(ParamsError, match=r"^data.drawn: True is out of range; allowed: false "
                                          r"with fashion-mnist"):
        params_from_dict(raw)
    raw["data"]["drawn"] = False
    with pytest.raises(ParamsError, match=r"^preprocess.scan_copies: 0.15 is out of range; "
                                          r"allowed: 0 with fashion-mnist"):
        params_from_dict(raw)
    raw["preprocess"]["scan_copies"] = 0
    assert params_from_dict(raw).data.dataset == "fashion-mnist"


def test_warmup_is_only_checked_when_the_schedule_has_one():
    raw = with_value("train.epochs", 1)
    with pytest.raises(ParamsError, match=r"^train.warmup_epochs: 1 is out of range"):
        params_from_dict(raw)
    raw["train"]["lr_schedule"] = "constant"
    assert params_from_dict(raw).train.epochs == 1


def test_lr_cycles_fit_in_the_epochs_with_cosine_restarts():
    raw = with_value("train.lr_schedule", "cosine_restarts")
    raw["train"]["epochs"], raw["train"]["lr_cycles"] = 3, 4
    with pytest.raises(ParamsError, match=r"^train.lr_cycles: 4 is out of range; allowed: 1..3"):
        params_from_dict(raw)
    raw["train"]["lr_cycles"] = 3
    assert params_from_dict(raw).train.lr_cycles == 3


def test_non_string_yaml_keys_are_reported_not_crashed_on():
    raw = copy.deepcopy(REAL_PARAMS)
    raw[1] = "x"
    raw["zzz"] = "y"
    with pytest.raises(ParamsError, match=r"^1: unknown key"):
        params_from_dict(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", r"params.yaml: expected a mapping of keys"),
        ("seed: [1\n", r"params.yaml: not valid YAML"),
    ],
)
def test_a_broken_file_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_a_missing_file_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError, match=r"nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_code_defaults_match_params_yaml():
    """A key missing from params.yaml takes the code default: both must say the same."""
    assert as_dict(Params()) == REAL_PARAMS


SAMPLE_RECIPE = ROOT / "recipes" / "sample.yaml"
FASHION_RECIPE = ROOT / "recipes" / "fashion-mnist.yaml"


def with_recipe(path: Path) -> Params:
    """params.yaml with the recipe file's `key: value` overrides, validated."""
    recipe = yaml.safe_load(path.read_text())
    raw = copy.deepcopy(REAL_PARAMS)
    for key, value in recipe.items():
        *parents, leaf = key.split(".")
        section = raw
        for name in parents:
            section = section[name]  # KeyError: a key params.yaml does not have
        assert leaf in section, key
        section[leaf] = value
    return params_from_dict(raw)


def test_the_fashion_recipe_is_valid_overrides_of_params_yaml():
    """recipes/fashion-mnist.yaml (`make fashion`): the clothes keep a recipe of their own."""
    params = with_recipe(FASHION_RECIPE)
    assert params.data.dataset == "fashion-mnist" and not params.data.drawn
    assert params.model != Params().model or params.train != Params().train


def test_the_sample_recipe_is_valid_overrides_of_params_yaml():
    """recipes/sample.yaml, `make sample`'s one home: dotted keys of params.yaml, valid."""
    params = with_recipe(SAMPLE_RECIPE)
    assert params.data.dataset == "mnist-sample"
    assert not params.data.drawn  # offline: the pen file is downloaded, not bundled
    assert params.train.early_stopping_patience == 0  # its val split is too small to stop on


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_sample_passes_exactly_the_recipe_to_dvc_exp_run():
    recipe = yaml.safe_load(SAMPLE_RECIPE.read_text())
    done = subprocess.run(["make", "-n", "-o", "install", "sample"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    command = [line for line in done.stdout.splitlines() if line.startswith("dvc exp run")]
    assert len(command) == 1, done.stdout
    words = shlex.split(command[0])[3:]
    assert words[::2] == ["-S"] * len(recipe)
    passed = dict(word.split("=", 1) for word in words[1::2])
    assert list(passed) == list(recipe)
    # dvc reads each value as YAML (Hydra): the same values as the recipe file
    assert {key: yaml.safe_load(value) for key, value in passed.items()} == recipe
