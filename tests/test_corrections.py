"""`mnist-pipeline serve --collect DIR`: POST /corrections and the folder it writes.

The route through FastAPI's test client, on a stand-in model (corrections never call the
model): what is saved and read back by the pipeline's own reader (labelled.read_folder),
every refusal (nothing written), the folder's bound, concurrent corrections, and crashes in
the middle of a write (simulated, and a real process killed mid-write).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import numpy as np
import pytest
from collect_client import STAND_IN, folder_files, picture, post
from fastapi.testclient import TestClient
from PIL import Image

from mnist_pipeline.app import api, cli, corrections, limits
from mnist_pipeline.labelled import LABELS_FILE, read_folder


@pytest.fixture(scope="module")
def pictures(sample_digits) -> list[tuple[bytes, int]]:
    """60 real digits (6 per class) as 280x280 PNGs, and their labels."""
    images, labels = sample_digits
    chosen = range(0, len(images), len(images) // 60)
    return [(picture(images[index]), int(labels[index])) for index in chosen][:60]


def collecting(folder: Path, **options) -> TestClient:
    folder_object = corrections.CorrectionFolder(folder, **options)
    return TestClient(api.create_app(STAND_IN, collect=folder_object))


# --- what is saved ---------------------------------------------------------------------------


def test_corrections_are_saved_as_a_folder_the_pipeline_reads(tmp_path, pictures):
    folder = tmp_path / "data" / "extra" / "corrections"  # created, parents too
    with collecting(folder) as client:
        assert client.get("/health").json()["collect"] is True
        answers = []
        for count, (data, label) in enumerate(pictures[:5], start=1):
            response = post(client, data, str(label), writer="browser-1")
            assert response.status_code == 201, response.text
            answers.append(response.json())
            assert answers[-1]["count"] == count
        jpeg = picture(np.asarray(Image.open(io.BytesIO(pictures[5][0])).convert("L")), "JPEG")
        response = post(client, jpeg, str(pictures[5][1]), name="scan.jpg", kind="image/jpeg")
        assert response.status_code == 201, response.text
        answers.append(response.json())
    assert all(answer["file"].endswith(".png") for answer in answers)  # the JPEG too
    assert [answer["writer"] for answer in answers] == ["browser-1"] * 5 + [""]
    lines = (folder / LABELS_FILE).read_text().splitlines()
    assert lines[0] == "file,label,writer,time"
    assert lines[1:] == [f"{a['file']},{a['label']},{a['writer']},{a['time']}" for a in answers]
    # the pictures are grayscale PNGs of the pixels received, exactly, under the names the
    # server made
    sent = [data for data, _ in pictures[:5]] + [jpeg]
    for answer, data in zip(answers, sent, strict=True):
        with Image.open(folder / answer["file"]) as kept, Image.open(io.BytesIO(data)) as got:
            assert kept.format == "PNG" and kept.mode == "L" and kept.size == (280, 280)
            assert np.array_equal(np.asarray(kept), np.asarray(got.convert("L")))
    assert folder_files(folder) == sorted([LABELS_FILE, *(a["file"] for a in answers)])

    read = read_folder(folder)
    assert read.labels.tolist() == [label for _, label in pictures[:6]]
    assert read.images.shape == (6, 28, 28) and read.images.max() > 200
    assert read.writers[:5] == ("corrections/browser-1",) * 5


def test_a_server_started_again_on_the_folder_adds_to_it(tmp_path, pictures):
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        assert post(client, *pictures[0][:1], str(pictures[0][1])).status_code == 201
    with collecting(folder) as client:
        response = post(client, pictures[1][0], str(pictures[1][1]))
        assert response.status_code == 201 and response.json()["count"] == 2
    assert read_folder(folder).labels.tolist() == [pictures[0][1], pictures[1][1]]


def test_without_collect_the_route_is_a_404_and_health_says_so(tmp_path, pictures):
    with TestClient(api.create_app(STAND_IN)) as client:
        response = post(client, pictures[0][0])
        assert response.status_code == 404
        assert "--collect DIR" in response.json()["detail"]
        assert client.get("/health").json()["collect"] is False
        assert "/corrections" not in client.get("/openapi.json").json()["paths"]


def test_the_route_is_documented_with_its_statuses(tmp_path):
    with collecting(tmp_path / "c") as client:
        operation = client.get("/openapi.json").json()["paths"]["/corrections"]["post"]
    assert {"201", "400", "413", "415", "422", "507"} <= set(operation["responses"])


# --- refusals ------------------------------------------------------------------------------


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (280, 280), 0).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("case", "status", "reason"), [
    ({"label": "12"}, 422, "label '12'"),
    ({"label": "a"}, 422, "expected one digit 0-9"),
    ({"label": ""}, 422, "expected one digit 0-9"),
    ({"label": "-1"}, 422, "expected one digit 0-9"),
    ({"label": None}, 422, "label missing"),
    ({"writer": "../../etc"}, 422, "writer '../../etc'"),
    ({"writer": "a b"}, 422, "writer"),
    ({"writer": "x" * 65}, 422, "writer"),
    ({"writer": "é"}, 422, "writer"),
    ({"data": b""}, 400, "empty upload"),
    ({"data": b"not a picture at all"}, 400, "neither PNG nor JPEG"),
    ({"data": "blank"}, 400, "blank"),
    ({"data": "truncated"}, 400, "not a readable image"),
    ({"data": "gif"}, 400, "GIF"),
])
def test_a_bad_correction_is_refused_and_nothing_is_written(tmp_path, pictures, case, status,
                                                             reason):
    folder = tmp_path / "corrections"
    data = case.get("data", pictures[0][0])
    if data == "blank":
        data = blank_png()
    elif data == "truncated":
        data = pictures[0][0][:len(pictures[0][0]) // 2]
    elif data == "gif":
        buffer = io.BytesIO()
        Image.open(io.BytesIO(pictures[0][0])).save(buffer, format="GIF")
        data = buffer.getvalue()
    with collecting(folder) as client:
        response = post(client, data, case.get("label", "3"), case.get("writer"))
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
        assert client.get("/health").status_code == 200  # and it goes on serving
    assert folder_files(folder) == [LABELS_FILE]
    assert (folder / LABELS_FILE).read_text() == "file,label,writer,time\n"


def test_bodies_without_a_picture_or_over_the_limits_are_refused(tmp_path, pictures):
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        raw = client.post("/corrections", content=pictures[0][0],
                          headers={"content-type": "image/png"})
        assert raw.status_code == 415, raw.text
        no_file = client.post("/corrections", data={"label": "3"})
        assert no_file.status_code == 415, no_file.text  # urlencoded: not multipart
        no_file = client.post("/corrections", files={"label": (None, "3")})
        assert no_file.status_code == 400 and '"file"' in no_file.json()["detail"]
        big = post(client, b"\0" * (limits.MAX_REQUEST_BYTES + 1))
        assert big.status_code == 413, big.text
        # a picture of more pixels than any picture may hold (told from its header)
        bomb = io.BytesIO()
        Image.new("1", (8000, 8000), 0).save(bomb, format="PNG")
        response = post(client, bomb.getvalue())
        assert response.status_code == 413, response.text
        assert "too large" in response.json()["detail"]
    assert folder_files(folder) == [LABELS_FILE]


def test_a_full_folder_refuses_with_507_and_a_reason(tmp_path, pictures):
    folder = tmp_path / "corrections"
    with collecting(folder, max_pictures=3) as client:
        statuses = [post(client, data, str(label)).status_code for data, label in pictures[:5]]
        assert statuses == [201, 201, 201, 507, 507]
        detail = post(client, pictures[0][0]).json()["detail"]
    assert "holds 3 pictures" in detail and "--collect-max 3" in detail
    assert len(read_folder(folder).labels) == 3 and len(folder_files(folder)) == 4
    # started again on the full folder: still full
    with collecting(folder, max_pictures=3) as client:
        assert post(client, pictures[0][0]).status_code == 507


def test_a_full_disk_is_a_507_and_leaves_nothing(tmp_path, pictures, monkeypatch):
    folder = corrections.CorrectionFolder(tmp_path / "corrections")

    def no_space(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    with TestClient(api.create_app(STAND_IN, collect=folder)) as client:
        monkeypatch.setattr(corrections.os, "fsync", no_space)
        response = post(client, pictures[0][0])
        monkeypatch.undo()
        assert response.status_code == 507 and "No space" in response.json()["detail"]
        assert post(client, pictures[1][0]).status_code == 201
    assert len(read_folder(folder.folder).labels) == 1
    assert len(folder_files(folder.folder)) == 2  # labels.csv and the one picture


# --- concurrency ---------------------------------------------------------------------------


def test_concurrent_corrections_all_land(tmp_path, pictures):
    """50 requests at once through the application (their pictures decoded and written in
    worker threads), then 50 saves from 50 threads straight into the folder."""
    folder = corrections.CorrectionFolder(tmp_path / "corrections")
    app = api.create_app(STAND_IN, collect=folder)
    sent = pictures[:50]

    async def post_all() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test",
                                      timeout=60) as http:
            return await asyncio.gather(*(
                http.post("/corrections", files={"file": ("d.png", data, "image/png")},
                          data={"label": str(label), "writer": f"w{index % 7}"})
                for index, (data, label) in enumerate(sent)))

    responses = asyncio.run(post_all())
    assert [response.status_code for response in responses] == [201] * 50
    assert sorted(response.json()["count"] for response in responses) == list(range(1, 51))

    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def save(index: int) -> None:
        data, label = sent[index]
        barrier.wait()
        try:
            folder.save(data, "PNG", label, f"thread{index}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(index,)) for index in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(thread.is_alive() for thread in threads)

    read = read_folder(tmp_path / "corrections")
    assert len(read.labels) == 100 and folder.count == 100
    expected = sorted([label for _, label in sent] * 2)
    assert sorted(read.labels.tolist()) == expected
    assert len(folder_files(tmp_path / "corrections")) == 101


# --- crashes -------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path, pictures, monkeypatch):
    """The rename of labels.csv fails (the picture is already in place): the picture goes,
    labels.csv is the last complete one, no temporary file is left; the next one lands."""
    folder = corrections.CorrectionFolder(tmp_path / "corrections")
    folder.save(pictures[0][0], "PNG", pictures[0][1], "a")
    before = folder_files(folder.folder), (folder.folder / LABELS_FILE).read_bytes()
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target).name == LABELS_FILE:
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(corrections.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output"):
        folder.save(pictures[1][0], "PNG", pictures[1][1], "a")
    monkeypatch.undo()
    assert (folder_files(folder.folder), (folder.folder / LABELS_FILE).read_bytes()) == before
    assert folder.count == 1
    folder.save(pictures[2][0], "PNG", pictures[2][1], "a")
    assert read_folder(folder.folder).labels.tolist() == [pictures[0][1], pictures[2][1]]


CRASH = """
import os, sys
from mnist_pipeline.app import corrections
folder = corrections.CorrectionFolder(sys.argv[1])
data = open(sys.argv[2], "rb").read()
folder.save(data, "PNG", 1, "before")
real_fsync, calls, crash_at = os.fsync, [0], int(sys.argv[3])

def fsync(descriptor):
    calls[0] += 1
    if calls[0] == crash_at:
        os._exit(9)  # killed: no cleanup, no exception handler runs
    real_fsync(descriptor)

os.fsync = fsync
folder.save(data, "PNG", 2, "crashed")
"""


@pytest.mark.parametrize(("crash_at", "what"), [
    (1, "the picture written to its temporary file, not renamed"),
    (3, "the picture in place, labels.csv's new text in its temporary file"),
])
def test_a_process_killed_mid_write_leaves_no_half_row_or_picture(tmp_path, pictures,
                                                                  crash_at, what):
    """A real process dies (os._exit) at a flush to disk during its second correction: the
    folder still reads back with its first one alone; a server started on it again removes
    what the dead one left (a temporary file, a picture without a row) and goes on."""
    folder = tmp_path / "corrections"
    drawing = tmp_path / "drawing.png"
    drawing.write_bytes(pictures[0][0])
    result = subprocess.run([sys.executable, "-c", CRASH, str(folder), str(drawing),
                             str(crash_at)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    left = folder_files(folder)
    assert any(name.endswith(".tmp") for name in left), (what, left)
    rows = (folder / LABELS_FILE).read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1:3] == ["1", "before"], rows
    assert read_folder(folder).labels.tolist() == [1]

    reopened = corrections.CorrectionFolder(folder)
    assert reopened.count == 1
    assert folder_files(folder) == sorted([LABELS_FILE, rows[1].split(",")[0]])
    reopened.save(pictures[1][0], "PNG", 7, "after")
    assert read_folder(folder).labels.tolist() == [1, 7]


# --- the folder given ----------------------------------------------------------------------


def test_a_folder_that_cannot_hold_corrections_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(corrections.CollectError, match="not a folder"):
        corrections.CorrectionFolder(a_file)
    with pytest.raises(corrections.CollectError, match="cannot be written"):
        corrections.CorrectionFolder(a_file / "below")
    hand_made = tmp_path / "hand_made"
    hand_made.mkdir()
    (hand_made / LABELS_FILE).write_text("file,label\n")
    with pytest.raises(corrections.CollectError, match="not a folder of corrections"):
        corrections.CorrectionFolder(hand_made)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / LABELS_FILE).write_text("file,label,writer,time\nmissing.png,3,,\n")
    with pytest.raises(corrections.CollectError, match="line 2.*no such file"):
        corrections.CorrectionFolder(broken)
    assert folder_files(broken) == [LABELS_FILE]  # refused: nothing removed or written


def test_serve_refuses_a_collect_folder_that_is_a_file_before_loading_a_model(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status = cli.main(["serve", "--model", str(tmp_path / "no-model.onnx"),
                       "--collect", str(a_file)])
    assert status == cli.EXIT_OUTPUT_ERROR
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "not a folder" in error and str(a_file) in error


@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5"])
def test_collect_max_must_be_a_whole_number(value, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.build_parser().parse_args(["serve", "--collect-max", value])
    assert exit_status.value.code == 2
    assert "--collect-max" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["serve"]).collect_max == limits.MAX_CORRECTIONS


# --- the benchmark -------------------------------------------------------------------------


@pytest.mark.slow  # a server process, the small model (TensorFlow's import)
def test_the_corrections_benchmark_runs_in_smoke_mode(small_model, tmp_path, monkeypatch):
    """benchmarks/corrections.py on a few pictures: a stale import or call fails here, not
    on the day someone measures. Nothing is measured."""
    import importlib
    import json

    monkeypatch.setenv("BENCHMARK_RESULTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    importlib.import_module("corrections").main(["--smoke", "--model",
                                                 str(small_model.onnx_path)])
    results = json.loads((tmp_path / "corrections.json").read_text())
    assert results["posts"]["count"] == 5 and results["read_folder"]["pictures"] == 20
