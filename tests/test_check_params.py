"""The check_params stage: the whole of params.yaml validated first, fast, without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from committed import committed_params_text

PROJECT = Path(__file__).resolve().parents[1]
STAGE = PROJECT / "stages" / "check_params.py"
# Runs the stage as DVC does, then reports whether TensorFlow or Keras got imported.
RUN_STAGE = (
    "import runpy, sys\n"
    "try:\n"
    f"    runpy.run_path({str(STAGE)!r}, run_name='__main__')\n"
    "finally:\n"
    "    print('imported:', sorted({'tensorflow', 'keras'} & set(sys.modules)))\n"
)


def run_stage(workspace: Path) -> subprocess.CompletedProcess:
    # This checkout's library first, as for the test itself (the venv may have another's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", RUN_STAGE], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(committed_params_text())  # not a run's
    return tmp_path


def test_valid_params_write_the_same_marker_every_time(workspace):
    result = run_stage(workspace)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout  # no TensorFlow: fails or passes in a blink
    marker = workspace / "data" / "params.ok"
    first = marker.read_bytes()
    text = (workspace / "params.yaml").read_text().replace("figure_dpi: 100", "figure_dpi: 90")
    (workspace / "params.yaml").write_text(text)
    assert run_stage(workspace).returncode == 0
    assert marker.read_bytes() == first  # a valid change reruns nothing downstream


@pytest.mark.parametrize(("change", "message"), [
    (("epochs: 14", 'epochs: "10"'), "train.epochs: expected an integer, got '10'"),
    (("train:", "trian:"), "trian"),
    (("figure_dpi: 100", "figure_dpi: -1"), "plot.figure_dpi"),
])
def test_a_bad_value_or_unknown_key_fails_in_one_line_without_tensorflow(workspace, change,
                                                                         message):
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace(*change, 1))
    result = run_stage(workspace)
    assert result.returncode == 1
    error = result.stderr.strip()
    assert error.startswith("check_params: ") and message in error
    assert "\n" not in error
    assert "imported: []" in result.stdout
    assert not (workspace / "data" / "params.ok").exists()


# --- params.yaml read directly (`python stages/train.py`, as non-chief workers run it) -------

def _load(tmp_path: Path, content: bytes):
    from mnist_pipeline.params import load_params

    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    return load_params(path)


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  epochs: 5\n  epochs: 50\n", "params.yaml: line 3: duplicate key 'epochs'"),
    ("plot:\n  figure_dpi: 90\nseed: 1\nplot:\n  figure_dpi: 120\n",
     "params.yaml: line 4: duplicate key 'plot'"),
])
def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path, text, message):
    from mnist_pipeline.params import ParamsError

    with pytest.raises(ParamsError, match=f"^.*{message}$"):
        _load(tmp_path, text.encode())


def test_a_file_that_is_not_utf8_gets_one_line(tmp_path):
    from mnist_pipeline.params import ParamsError

    with pytest.raises(ParamsError, match=r"params.yaml: not UTF-8 text \(byte 6: invalid"):
        _load(tmp_path, b"seed: \xff\xfe\n")


def test_an_alias_bomb_gives_a_short_message(tmp_path):
    """Nine lines that expand to 10^8 list items: the message quotes a bounded repr."""
    from mnist_pipeline.params import ParamsError

    lines = ["seed:", "  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(ParamsError) as error:
        _load(tmp_path, "\n".join(lines).encode())
    message = str(error.value)
    assert message.startswith("seed: expected an integer, got [[")
    assert len(message) < 300 and "\n" not in message, message[:500]
