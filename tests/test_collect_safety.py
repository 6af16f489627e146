"""`serve --collect DIR` left running: what a hostile page, a second server, a big or stuffed
picture, an exotic label or a broken folder can do to it (issue 37's probe round).

- other origins and other hosts are refused before any route (guard.GuardRequests), through
  the test client and through a real uvicorn server on 127.0.0.1 (as curl and the page reach
  it);
- one server per folder (a flock on DIR), and no acknowledged row or picture ever lost;
- pictures kept re-encoded (no text chunk, no trailing data, bounded in pixels), the folder
  bounded in bytes (--collect-max-bytes);
- labels only ASCII 0-9; an empty --collect, a labels.csv with a byte-order mark, a folder,
  a FIFO; a multipart body cut before its closing boundary.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from collect_client import STAND_IN, folder_files, picture, post
from fastapi.testclient import TestClient
from PIL import Image

from mnist_pipeline import labelled
from mnist_pipeline.app import api, cli, corrections, guard
from mnist_pipeline.labelled import LABELS_FILE, read_folder

HEADER = "file,label,writer,time\n"


@pytest.fixture(scope="module")
def drawings(sample_digits) -> list[tuple[bytes, int]]:
    """12 real digits as the page sends drawings (280x280 PNG), and their labels."""
    images, labels = sample_digits
    return [(picture(images[index]), int(labels[index])) for index in range(0, 5000, 417)]


def collecting(folder: Path, **options) -> TestClient:
    return TestClient(api.create_app(STAND_IN, collect=corrections.CorrectionFolder(
        folder, **options)))


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0undary"
              ) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of ``(name, filename or None, value)`` and its headers."""
    parts = []
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                       else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n"
                     .encode() + value + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- other origins, other hosts --------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({"origin": "http://evil.example"}, 403, "Origin: http://evil.example"),
    ({"origin": "null"}, 403, "Origin: null"),
    ({"origin": "http://testserver:8080"}, 403, "another origin"),  # another port
    ({"origin": "https://testserver"}, 403, "another origin"),  # another scheme
    ({"origin": "http://testserver.evil.example"}, 403, "another origin"),
    ({"sec-fetch-site": "cross-site"}, 403, "Sec-Fetch-Site: cross-site"),
    ({"sec-fetch-site": "same-site", "origin": "http://testserver"}, 403, "same-site"),
    ({"host": "evil.example"}, 421, "Host 'evil.example' is not this server's"),
    ({"host": "rebound.example:8000"}, 421, "is not this server's"),
    ({"host": "evil@127.0.0.1"}, 421, "is not this server's"),
    ({"host": ""}, 421, "is not this server's"),
])
def test_a_correction_from_another_origin_or_host_is_refused(tmp_path, drawings, headers,
                                                             status, reason):
    folder = tmp_path / "corrections"
    data, label = drawings[0]
    with collecting(folder) as client:
        response = client.post("/corrections", files={"file": ("d.png", data, "image/png")},
                               data={"label": str(label)}, headers=headers)
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
        assert response.headers["x-content-type-options"] == "nosniff"
        # the model-calling routes too, TF Serving's with its own error key
        predict = client.post("/predict", content=data,
                              headers={"content-type": "image/png", **headers})
        assert predict.status_code == status and reason in predict.json()["detail"]
        tf = client.post("/v1/models/mnist:predict", json={"instances": []}, headers=headers)
        assert tf.status_code == status and reason in tf.json()["error"]
    assert folder_files(folder) == [LABELS_FILE]


@pytest.mark.parametrize("headers", [
    {},  # curl, a script
    {"origin": "http://testserver", "sec-fetch-site": "same-origin"},  # the page itself
    {"sec-fetch-site": "none"},  # typed by the user
    {"host": "localhost:8000", "origin": "http://localhost:8000"},
    {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"},
    {"host": "[::1]:8000", "origin": "http://[::1]:8000"},
    {"host": "127.0.0.2"},
    {"host": "LOCALHOST"},
])
def test_the_page_and_local_clients_are_served(tmp_path, drawings, headers):
    data, label = drawings[1]
    with collecting(tmp_path / "corrections") as client:
        response = client.post("/corrections", files={"file": ("d.png", data, "image/png")},
                               data={"label": str(label)}, headers=headers)
        assert response.status_code == 201, response.text
        assert client.get("/health", headers=headers).status_code == 200


def test_another_origin_may_still_get_pages_but_no_host_but_ours_does(tmp_path):
    with collecting(tmp_path / "corrections") as client:
        # a link or an image from another page: a GET changes nothing, its answer is unread
        assert client.get("/", headers={"origin": "http://evil.example",
                                        "sec-fetch-site": "cross-site"}).status_code == 200
        # a page of another name that resolves to this machine (DNS rebinding) reads nothing
        for path in ("/", "/health", "/openapi.json", "/static/page.js"):
            assert client.get(path, headers={"host": "rebound.example"}).status_code == 421


def test_foreign_host_and_origin_read_the_asgi_scope():
    def scope(host: bytes | None, server=("127.0.0.1", 8000), method="POST", **extra):
        headers = [(b"host", host)] if host is not None else []
        headers += [(name.encode(), value.encode()) for name, value in extra.items()]
        return {"type": "http", "method": method, "scheme": "http", "server": server,
                "headers": headers, "path": "/corrections"}

    assert guard.foreign_host(scope(b"127.0.0.1:8000")) is None
    assert guard.foreign_host(scope(b"127.0.0.1:9999")) is None  # ports are not compared
    assert guard.foreign_host(scope(None)) is None  # HTTP/1.0 without Host
    # serve --host 0.0.0.0, reached at the machine's address; or --host NAME
    assert guard.foreign_host(scope(b"192.0.2.7:8000", ("192.0.2.7", 8000))) is None
    assert guard.foreign_host(scope(b"192.0.2.8:8000", ("192.0.2.7", 8000))) is not None
    assert guard.foreign_host(scope(b"box.lan:8000"), frozenset({"box.lan"})) is None
    assert guard.foreign_host(scope(b"box.lan:8000")) is not None
    assert guard.foreign_host(scope(b"localhost.evil.example")) is not None
    two = scope(b"127.0.0.1")
    two["headers"].append((b"host", b"evil.example"))
    assert guard.foreign_host(two) is not None

    assert guard.foreign_origin(scope(b"127.0.0.1:8000", origin="http://127.0.0.1:8000")) is None
    assert guard.foreign_origin(scope(b"localhost", origin="http://localhost:80")) is None
    assert guard.foreign_origin(scope(None, origin="http://127.0.0.1:8000")) is None
    assert guard.foreign_origin(scope(b"127.0.0.1:8000", origin="http://localhost:8000"))
    assert guard.foreign_origin(scope(b"127.0.0.1:8000", origin="http://127.0.0.1:8001"))
    assert guard.foreign_origin(scope(b"127.0.0.1:8000", origin="http://127.0.0.1:8000/x"))
    assert guard.foreign_origin(scope(b"127.0.0.1:8000", origin="junk"))
    for method in ("PUT", "DELETE", "PATCH"):
        assert guard.foreign_origin(scope(b"127.0.0.1", method=method, origin="null"))
    assert guard.foreign_origin(scope(b"127.0.0.1", method="GET", origin="null")) is None


@contextlib.contextmanager
def loopback_server(app) -> Iterator[int]:
    """``app`` on real uvicorn on a free port of 127.0.0.1, in a thread; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        listener.close()


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_a_real_loopback_server_serves_curl_and_its_page_and_refuses_the_rest(tmp_path,
                                                                              drawings):
    """uvicorn on 127.0.0.1 (its scope's server is the address, not a test name): curl's
    requests (no Origin; Host 127.0.0.1:port or localhost:port) and the page's (its own
    Origin) land; another page's, or a rebound name's, are refused and write nothing."""
    folder = tmp_path / "corrections"
    data, label = drawings[2]
    body, kind = multipart([("file", "d.png", data), ("label", None, str(label).encode())])
    with loopback_server(api.create_app(STAND_IN, collect=folder)) as port:
        landed = [request(port, "POST", "/corrections", body, {**kind, **extra})[0]
                  for extra in ({"host": f"127.0.0.1:{port}"}, {"host": f"localhost:{port}"},
                                {"host": f"127.0.0.1:{port}",
                                 "origin": f"http://127.0.0.1:{port}",
                                 "sec-fetch-site": "same-origin"})]
        assert landed == [201, 201, 201]
        refused = [request(port, "POST", "/corrections", body, {**kind, **extra})
                   for extra in ({"host": f"127.0.0.1:{port}", "origin": "http://evil.example",
                                  "sec-fetch-site": "cross-site"},
                                 {"host": f"127.0.0.1:{port}", "origin": "null"},
                                 {"host": f"rebound.example:{port}"})]
        assert [status for status, _ in refused] == [403, 403, 421], refused
        assert request(port, "GET", "/", headers={"host": f"rebound.example:{port}"})[0] == 421
        assert request(port, "GET", "/", headers={"host": f"127.0.0.1:{port}"})[0] == 200
    assert len(read_folder(folder).labels) == 3


# --- one server per folder -------------------------------------------------------------------


HOLD = """
import sys, time
from mnist_pipeline.app import corrections
folder = corrections.CorrectionFolder(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_server_on_the_folder_is_refused_in_one_line(tmp_path, drawings, capsys):
    """Another process collects into the folder: serve --collect on it is refused (exit 3,
    one line) before loading a model or touching the folder; once that process is gone
    (killed: the kernel releases its lock), the folder is served again."""
    folder = tmp_path / "corrections"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        (folder / ("0" * 32 + ".png")).write_bytes(drawings[0][0])  # its picture, no row yet
        status = cli.main(["serve", "--model", str(tmp_path / "no-model.onnx"),
                           "--collect", str(folder)])
        error = capsys.readouterr().err.strip()
        assert status == cli.EXIT_OUTPUT_ERROR and error.count("\n") == 0
        assert "another server is collecting into it" in error and str(folder) in error
        assert ("0" * 32 + ".png") in folder_files(folder)  # not removed by the refused start
    finally:
        holder.kill()
        holder.wait(20)
    with corrections.CorrectionFolder(folder) as reopened:
        assert reopened.count == 0


def test_the_lock_is_held_for_the_apps_life_and_released_when_it_stops(tmp_path, drawings):
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        assert post(client, drawings[0][0], str(drawings[0][1])).status_code == 201
        with pytest.raises(corrections.CollectError, match="another server"):
            corrections.CorrectionFolder(folder)
    with collecting(folder) as client:  # stopped: the folder is free again
        assert post(client, drawings[1][0], str(drawings[1][1])).json()["count"] == 2
    closed = corrections.CorrectionFolder(folder)
    closed.close()
    with pytest.raises(corrections.CollectError, match="closed"):
        closed.save(drawings[2][0], "PNG", 1, "")


def test_rows_added_beside_the_server_are_kept_never_overwritten(tmp_path, drawings):
    """labels.csv is appended as it is on disk, not rewritten from the server's memory: a
    row added by hand meanwhile (its picture beside it) stays, and is counted."""
    folder = corrections.CorrectionFolder(tmp_path / "corrections")
    first = folder.save(drawings[0][0], "PNG", drawings[0][1], "a")
    (folder.folder / "by-hand.png").write_bytes(drawings[1][0])
    with open(folder.folder / LABELS_FILE, "a") as labels:
        labels.write(f"by-hand.png,{drawings[1][1]},b,2026-12-07T10:00:00Z")  # no newline
    third = folder.save(drawings[2][0], "PNG", drawings[2][1], "a")
    assert (first.count, third.count) == (1, 3)
    rows = labelled.read_labels(folder.folder)
    assert [row["file"] for _, row in rows] == [first.file, "by-hand.png", third.file]
    # labels.csv replaced by something else meanwhile: refused, nothing written
    (folder.folder / LABELS_FILE).write_text("name,digit\n")
    with pytest.raises(corrections.CollectError, match="not a folder of corrections"):
        folder.save(drawings[3][0], "PNG", drawings[3][1], "a")
    assert len(folder_files(folder.folder)) == 4
    folder.close()


# --- pictures bounded by bytes ---------------------------------------------------------------


def png_chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))


def test_pictures_are_kept_re_encoded_without_text_chunks_or_trailing_data(tmp_path, drawings):
    """A drawing with a 2 MB text chunk before its pixels and 1 MB after its end is taken
    (the digit is fine) and kept as its pixels alone: a small clean grayscale PNG."""
    data, label = drawings[3]
    iend = data.rindex(b"IEND") - 4
    stuffed = (data[:33] + png_chunk(b"tEXt", b"comment\0" + b"x" * (2 << 20)) + data[33:iend]
               + data[iend:] + b"trailing" * (1 << 17))
    assert len(stuffed) > 3 << 20
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        response = post(client, stuffed, str(label))
        assert response.status_code == 201, response.text
    kept = (folder / response.json()["file"]).read_bytes()
    assert len(kept) < 20_000 and b"tEXt" not in kept and b"xxxx" not in kept
    assert kept.endswith(png_chunk(b"IEND", b""))
    with Image.open(io.BytesIO(kept)) as picture_kept, Image.open(io.BytesIO(data)) as sent:
        assert picture_kept.mode == "L" and np.array_equal(np.asarray(picture_kept),
                                                           np.asarray(sent))


def test_large_pictures_are_kept_at_560_pixels_a_side(tmp_path, sample_digits):
    images, labels = sample_digits
    folder = tmp_path / "corrections"
    photo = picture(255 - images[700], "JPEG", size=3000)  # dark on light, 9 megapixels
    with collecting(folder) as client:
        response = post(client, photo, str(labels[700]), name="photo.jpg", kind="image/jpeg")
        assert response.status_code == 201, response.text
    with Image.open(folder / response.json()["file"]) as kept:
        assert kept.format == "PNG" and kept.mode == "L" and kept.size == (560, 560)
    assert read_folder(folder).labels.tolist() == [labels[700]]


def test_the_folder_is_bounded_in_bytes(tmp_path, drawings):
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        sizes = [len((folder / post(client, data, str(label)).json()["file"]).read_bytes())
                 for data, label in drawings[:2]]
    # room for one more of the first picture (re-encoded the same) and its row, no more
    budget = sum(os.path.getsize(path) for path in folder.iterdir()) + sizes[0] + 100
    with collecting(folder, max_bytes=budget) as client:
        statuses = [post(client, data, str(label)).status_code for data, label in drawings]
        detail = post(client, drawings[0][0]).json()["detail"]
    assert statuses[0] == 201 and set(statuses[1:]) == {507}, statuses
    assert "--collect-max-bytes" in detail and f"{budget:,}" in detail
    assert sum(os.path.getsize(path) for path in folder.iterdir()) <= budget
    assert len(read_folder(folder).labels) == 3
    with collecting(folder, max_bytes=budget) as client:  # started again: still full
        assert post(client, drawings[0][0]).status_code == 507


@pytest.mark.parametrize(("text", "size"), [("1000", 1000), ("64K", 64 << 10),
                                            ("512m", 512 << 20), ("2G", 2 << 30)])
def test_collect_max_bytes_takes_a_size(text, size):
    args = cli.build_parser().parse_args(["serve", "--collect-max-bytes", text])
    assert args.collect_max_bytes == size


@pytest.mark.parametrize("text", ["0", "0M", "-1", "1.5G", "", "M", "²", "12T"])
def test_collect_max_bytes_refuses_other_sizes(text, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.build_parser().parse_args(["serve", "--collect-max-bytes", text])
    assert exit_status.value.code == 2 and "--collect-max-bytes" in capsys.readouterr().err


# --- labels: ASCII 0-9 only ----------------------------------------------------------------


@pytest.mark.parametrize("label", ["²", "⑦", "٣", "３", "7\u200b"])
def test_a_label_that_only_looks_like_a_digit_is_a_422(tmp_path, drawings, label):
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        response = post(client, drawings[0][0], label)
        assert response.status_code == 422, response.text
        assert "expected one digit 0-9" in response.json()["detail"]
    assert folder_files(folder) == [LABELS_FILE]


def test_serve_refuses_a_folder_holding_such_a_label_in_one_line(tmp_path, drawings, capsys):
    folder = tmp_path / "corrections"
    folder.mkdir()
    name = "a" * 32 + ".png"
    (folder / name).write_bytes(drawings[0][0])
    (folder / LABELS_FILE).write_text(f"{HEADER}{name},⑦,w,2026-12-07T10:00:00Z\n")
    status = cli.main(["serve", "--model", str(tmp_path / "no-model.onnx"),
                       "--collect", str(folder)])
    error = capsys.readouterr().err.strip()
    assert status == cli.EXIT_OUTPUT_ERROR and error.count("\n") == 0
    assert f"{folder / LABELS_FILE}: line 2" in error and "label '⑦' is not a digit" in error
    assert folder_files(folder) == sorted([LABELS_FILE, name])  # nothing removed


# --- the folder named, labels.csv as it may be -----------------------------------------------


def test_an_empty_collect_is_refused_and_nothing_is_written_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for value in ("", " "):
        status = cli.main(["serve", "--model", "no-model.onnx", "--collect", value])
        error = capsys.readouterr().err.strip()
        assert status == cli.EXIT_OUTPUT_ERROR and error.count("\n") == 0
        assert "--collect '': no folder named" in error
    with pytest.raises(corrections.CollectError, match="no folder named"):
        corrections.CorrectionFolder("")
    assert list(tmp_path.iterdir()) == []


def test_a_labels_csv_with_a_byte_order_mark_is_read_and_added_to(tmp_path, drawings):
    folder = tmp_path / "corrections"
    folder.mkdir()
    name = "b" * 32 + ".png"
    (folder / name).write_bytes(drawings[0][0])
    (folder / LABELS_FILE).write_bytes(
        f"\ufeff{HEADER}{name},{drawings[0][1]},w,2026-12-07T10:00:00Z\r\n".encode())
    assert read_folder(folder).labels.tolist() == [drawings[0][1]]
    with collecting(folder) as client:
        response = post(client, drawings[1][0], str(drawings[1][1]))
        assert response.status_code == 201 and response.json()["count"] == 2
    assert read_folder(folder).labels.tolist() == [drawings[0][1], drawings[1][1]]


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(("make", "kind"), [
    (Path.mkdir, "a folder"),
    (make_fifo, "a FIFO"),
])
def test_a_labels_csv_that_is_not_a_file_is_one_line_never_a_hang(tmp_path, make, kind,
                                                                   capsys):
    """A folder or a FIFO named labels.csv: read_folder (preprocess) and serve's start each
    answer one line at once (a FIFO is opened without waiting for a writer)."""
    folder = tmp_path / "corrections"
    folder.mkdir()
    make(folder / LABELS_FILE)
    outcome: dict[str, object] = {}

    def attempt() -> None:
        try:
            read_folder(folder)
        except labelled.LabelledFolderError as error:
            outcome["read"] = str(error)
        outcome["serve"] = cli.main(["serve", "--model", str(tmp_path / "none.onnx"),
                                     "--collect", str(folder)])

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "hung"
    expected = f"{folder / LABELS_FILE}: {kind}, not a file"
    assert str(outcome["read"]).startswith(expected) and "\n" not in str(outcome["read"])
    error = capsys.readouterr().err.strip()
    assert outcome["serve"] == cli.EXIT_OUTPUT_ERROR and error.count("\n") == 0
    assert expected in error


def test_a_labels_csv_linked_to_a_file_is_read(tmp_path, drawings):
    """As DVC may link its cache (cache.type symlink): the link is followed."""
    folder = tmp_path / "corrections"
    folder.mkdir()
    name = "c" * 32 + ".png"
    (folder / name).write_bytes(drawings[0][0])
    target = tmp_path / "cache-labels"
    target.write_text(f"{HEADER}{name},{drawings[0][1]},w,2026-12-07T10:00:00Z\n")
    (folder / LABELS_FILE).symlink_to(target)
    assert read_folder(folder).labels.tolist() == [drawings[0][1]]


# --- multipart ------------------------------------------------------------------------------


def test_a_multipart_body_cut_before_its_closing_boundary_is_a_400(tmp_path, drawings):
    data, label = drawings[0]
    body, kind = multipart([("file", "d.png", data), ("label", None, str(label).encode()),
                            ("writer", None, b"browser-7")])
    cuts = {"after the last field": body[:body.rindex(b"--b0undary--")],
            "inside the last field": body[:body.rindex(b"browser-7") + 4],
            "inside the picture": body[:len(body) // 2]}
    folder = tmp_path / "corrections"
    with collecting(folder) as client:
        for where, cut in cuts.items():
            for path in ("/corrections", "/predict"):
                response = client.post(path, content=cut, headers=kind)
                assert response.status_code == 400, (where, path, response.text)
                assert "closing boundary" in response.json()["detail"], (where, path)
        whole = client.post("/corrections", content=body, headers=kind)
        assert whole.status_code == 201 and whole.json()["writer"] == "browser-7"
        # an epilogue after the closing boundary is allowed (RFC 2046)
        assert client.post("/corrections", content=body + b"epilogue\r\n",
                           headers=kind).status_code == 201
    assert len(read_folder(folder).labels) == 2
