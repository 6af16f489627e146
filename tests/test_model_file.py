"""The saved model file: equal weights give equal bytes, and a kill leaves nothing git sees."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from mnist_pipeline.inference import load_keras_model
from mnist_pipeline.model import build_network, export_model
from mnist_pipeline.model_file import renumber_shared_objects, save_model
from mnist_pipeline.params import params_from_dict

PROJECT = Path(__file__).resolve().parents[1]
TINY = {"model": {"conv_filters": [4], "dense_units": 8}}


def test_saving_the_same_weights_twice_gives_identical_bytes(tmp_path):
    network = export_model(build_network(params_from_dict(TINY).model))
    save_model(network, tmp_path / "first.keras")
    time.sleep(1.1)  # Keras stamps the save time to the second
    save_model(network, tmp_path / "second.keras")
    assert (tmp_path / "first.keras").read_bytes() == (tmp_path / "second.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "first.keras") as archive:
        assert b"date_saved" not in archive.read("metadata.json")
    assert load_keras_model(tmp_path / "first.keras").count_params() == network.count_params()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.keras", "second.keras"]


# Builds the test-time-shift model (its network used 5 times: shared objects in config.json)
# with seeded weights, and saves it where argv[1] says.
SAVE_IN_A_NEW_PROCESS = f"""
import sys
sys.path.insert(0, {str(PROJECT)!r})
import keras
from mnist_pipeline.model import build_network, export_model
from mnist_pipeline.model_file import save_model
from mnist_pipeline.params import params_from_dict
keras.utils.set_random_seed(0)
save_model(export_model(build_network(params_from_dict({TINY!r}).model), 4), sys.argv[1])
"""


@pytest.mark.slow  # two processes importing TensorFlow: ~40 s
def test_two_processes_saving_equal_weights_write_identical_bytes(tmp_path):
    """Keras writes each shared object's id() (a memory address) into config.json: two
    processes, two addresses. save_model renumbers them, so the bytes are equal."""
    import numpy as np

    for name in ("first.keras", "second.keras"):
        subprocess.run([sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(tmp_path / name)],
                       check=True, capture_output=True, timeout=180)
    first, second = ((tmp_path / name).read_bytes() for name in ("first.keras", "second.keras"))
    with zipfile.ZipFile(tmp_path / "first.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"shared_object_id": 1' in config and '"shared_object_id": 2' not in config
    assert first == second
    model = load_keras_model(tmp_path / "first.keras")  # the renumbered references still load
    assert len(model.layers) and model.count_params() > 0
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 28, 28)).astype(np.float32)
    assert np.asarray(model(pixels)).shape == (3, 10)


def test_renumbering_keeps_references_consistent():
    config = {"a": {"shared_object_id": 140_001, "x": [{"shared_object_id": 99}]},
              "b": [{"shared_object_id": 140_001}, {"shared_object_id": 99, "c": 140_001}]}
    assert renumber_shared_objects(config) == {
        "a": {"shared_object_id": 1, "x": [{"shared_object_id": 2}]},
        "b": [{"shared_object_id": 1}, {"shared_object_id": 2, "c": 140_001}]}


# Saves a model into models/model.keras and dies (as kill -9 would) just before the rename.
KILLED_SAVE = f"""
import os, sys
sys.path.insert(0, {str(PROJECT)!r})
from mnist_pipeline.model import build_network, export_model
from mnist_pipeline.model_file import save_model
from mnist_pipeline.params import params_from_dict
network = export_model(build_network(params_from_dict({TINY!r}).model))
os.replace = lambda *arguments: os._exit(9)
save_model(network, "models/model.keras")
"""


def test_a_save_killed_halfway_leaves_only_files_git_ignores(tmp_path):
    (tmp_path / "models").mkdir()
    for ignore_file in (".gitignore", "models/.gitignore"):
        shutil.copy(PROJECT / ignore_file, tmp_path / ignore_file)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr[-2000:]
    leftovers = [path for path in (tmp_path / "models").iterdir() if path.name != ".gitignore"]
    assert leftovers, "the kill left no temporary: the test did not kill mid-save"
    assert not (tmp_path / "models" / "model.keras").exists()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "models/" not in status.replace("?? models/.gitignore", ""), status
