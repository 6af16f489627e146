"""Shared pytest fixtures. Keep each one self-contained: any test file may use any of them."""

from pathlib import Path

import pytest


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside an empty temporary folder (stages use paths relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
