"""The drawing page of `mnist-pipeline serve`, in headless Chromium with no network.

The real command serves a small trained model on a free port of 127.0.0.1; Chromium, with
every host name unresolvable (as in test_plots_html.py; 127.0.0.1 excepted), opens the page
and is driven over the DevTools protocol: a "7" is drawn with the mouse and a "4" with a
finger (real input events, which the page receives as Pointer Events), then a PNG scan of a
held-out digit is picked with the file input. Each time the label shown must be the right
one, with the 28x28 picture the model saw drawn beside it; the page must load nothing but its
own server's files and report no script error. /docs must render offline too. And the real
server refuses a body over its limit, declared or streamed, and goes on serving.

Needs Chromium. Outside `make test` it is skipped when missing; `make test` sets
PLOTS_HTML_REQUIRED=1, which turns the skip into a failure.
Set TEST_ARTIFACTS_DIR to keep a screenshot of the page there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from headless_chromium import (
    TIMEOUT_SECONDS,
    DevTools,
    on_pad,
    open_page,
    pad_box,
    stop,
    wait_until,
)
from PIL import Image
from sample_data import SmallModel, paper_scan

from mnist_pipeline import pictures

pytestmark = pytest.mark.slow  # a server process (TensorFlow's import) and a browser: ~20 s


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(model: Path, log_folder: Path, *options: str) -> Iterator[str]:
    """`mnist-pipeline serve --model <model> --port <free> [options]`; its base URL."""
    port = free_port()
    log = (log_folder / "server.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
         "--port", str(port), *options],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the server exited ({process.returncode}):\n{log.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return json.load(response)["status"] == "ok"
        except OSError:
            return False

    try:
        wait_until(healthy, "the server to answer /health", timeout=120)
        yield url
    finally:
        stop(process, timeout=20)
        log.close()


@pytest.fixture(scope="module")
def server(small_model: SmallModel, tmp_path_factory) -> Iterator[str]:
    """`mnist-pipeline serve --model <small model> --port <free>`; its base URL."""
    with serving(small_model.path, tmp_path_factory.mktemp("server")) as url:
        yield url


def wait_for_answer(browser: DevTools, answers_before: int) -> str:
    """The label shown once the page has answered and has nothing left to send."""
    wait_until(lambda: browser.evaluate(
        f"document.body.dataset.state === 'idle' && "
        f"Number(document.body.dataset.answers) > {answers_before}"), "the page's answer")
    return browser.evaluate("document.getElementById('label').textContent")


def answers(browser: DevTools) -> int:
    return int(browser.evaluate("document.body.dataset.answers"))


def along(points: list[tuple[float, float]], steps_per_segment: int = 12):
    """Points every few pixels along the polyline ``points``."""
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        for step in range(steps_per_segment):
            fraction = step / steps_per_segment
            yield x0 + (x1 - x0) * fraction, y0 + (y1 - y0) * fraction
    yield points[-1]


def draw_with_mouse(browser: DevTools, stroke: list[tuple[float, float]]) -> None:
    box = pad_box(browser)
    points = [on_pad(box, x, y) for x, y in along(stroke)]
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=points[0][0], y=points[0][1])
    browser.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0],
                 y=points[0][1], button="left", buttons=1, clickCount=1)
    for x, y in points[1:]:
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left",
                     buttons=1)
        time.sleep(0.01)  # a hand takes time: the page sends throttled requests meanwhile
    browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0],
                 y=points[-1][1], button="left", buttons=0, clickCount=1)


def draw_with_finger(browser: DevTools, strokes: list[list[tuple[float, float]]]) -> None:
    box = pad_box(browser)
    for stroke in strokes:
        points = [on_pad(box, x, y) for x, y in along(stroke)]
        for index, (x, y) in enumerate(points):
            browser.call("Input.dispatchTouchEvent",
                         type="touchStart" if index == 0 else "touchMove",
                         touchPoints=[{"x": x, "y": y, "id": 1}])
        browser.call("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])


def seen_ink(browser: DevTools) -> float:
    """Sum of the red channel of the 28x28 'what the model saw' canvas."""
    return browser.evaluate(
        "(() => { const d = document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data; let s = 0;"
        " for (let i = 0; i < d.length; i += 4) s += d[i]; return s; })()")


def assert_offline_and_clean(browser: DevTools, base_url: str) -> None:
    urls = [params["request"]["url"] for params in
            browser.event_params("Network.requestWillBeSent")]
    assert urls, "no request was recorded"
    outside = [url for url in urls if not url.startswith((base_url, "data:", "blob:"))]
    assert not outside, f"the page loaded from elsewhere: {outside}"
    failed = browser.event_params("Network.loadingFailed")
    assert not failed, failed
    errors = [params["exceptionDetails"] for params in
              browser.event_params("Runtime.exceptionThrown")]
    errors += [params["entry"] for params in browser.event_params("Log.entryAdded")
               if params["entry"]["level"] == "error"]
    refusals = [browser.call("Network.getResponseBody", requestId=params["requestId"])["body"]
                for params in browser.event_params("Network.responseReceived")
                if params["response"]["status"] >= 400]
    assert not errors, (errors, refusals)


SEVEN = [(70, 50), (210, 50), (120, 240)]
FOUR = [[(150, 40), (70, 170), (210, 170)], [(170, 90), (170, 250)]]


def test_draw_and_upload_digits_offline(browser: DevTools, server: str, small_model: SmallModel,
                                        tmp_path: Path) -> None:
    open_page(browser, f"{server}/")
    assert browser.evaluate("document.getElementById('bars').children.length") == 10

    draw_with_mouse(browser, SEVEN)
    assert wait_for_answer(browser, 0) == "7"
    assert seen_ink(browser) > 28 * 28 * 10  # the 28x28 picture is drawn
    assert browser.evaluate("document.querySelector('#bars li.best .digit').textContent") == "7"
    assert answers(browser) >= 2, "the page should answer while the stroke is drawn"
    # This server does not collect corrections (no --collect): the page does not offer them.
    assert browser.evaluate("document.getElementById('correction').hidden")

    browser.evaluate("document.getElementById('clear').click()")
    assert browser.evaluate("document.getElementById('label').textContent") == "–"
    assert seen_ink(browser) == 0
    count = answers(browser)
    draw_with_finger(browser, FOUR)
    assert wait_for_answer(browser, count) == "4"

    # A scan of a held-out digit, dark on paper, that the model gets right from the picture.
    for digit, label in zip(small_model.digits, small_model.labels, strict=True):
        scan = paper_scan(digit, size=200, paper=230.0, ink=0.8)  # a phone photo, cropped
        seen = pictures.picture_to_digit(Image.fromarray(scan.astype(np.uint8)))
        if label not in (4, 7) and int(np.asarray(small_model.model(seen[None])).argmax()) == label:
            break
    else:
        pytest.fail("the model gets no held-out scan right")
    picture = tmp_path / "scan.png"
    Image.fromarray(scan.astype(np.uint8)).save(picture)
    count = answers(browser)
    document = browser.call("DOM.getDocument")
    file_input = browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"],
                              selector="#file")
    browser.call("DOM.setFileInputFiles", files=[str(picture)], nodeId=file_input["nodeId"])
    assert wait_for_answer(browser, count) == str(label)
    assert "scan.png" in browser.evaluate("document.getElementById('status').textContent")
    assert math.isclose(seen_ink(browser), float(np.rint(seen).sum()), rel_tol=0.01)

    if os.environ.get("TEST_ARTIFACTS_DIR"):
        artifacts = Path(os.environ["TEST_ARTIFACTS_DIR"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = browser.call("Page.captureScreenshot", format="png")
        (artifacts / "serve_page.png").write_bytes(base64.b64decode(shot["data"]))
    assert_offline_and_clean(browser, server)


def test_a_bad_picture_shows_the_servers_reason(browser: DevTools, server: str,
                                                tmp_path: Path) -> None:
    open_page(browser, f"{server}/")
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    document = browser.call("DOM.getDocument")
    file_input = browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"],
                              selector="#file")
    browser.call("DOM.setFileInputFiles", files=[str(blank)], nodeId=file_input["nodeId"])
    wait_until(lambda: browser.evaluate("document.body.dataset.errors === '1' && "
                                        "document.body.dataset.state === 'idle'"),
               "the page to show the error")
    assert "blank image" in browser.evaluate("document.getElementById('status').textContent")
    # The 400 is the answer, not a failure of the page: it loaded nothing from elsewhere.
    browser.events[:] = [event for event in browser.events
                         if event.get("method") != "Log.entryAdded"]
    assert_offline_and_clean(browser, server)


def click(browser: DevTools, selector: str) -> None:
    """A real left click (mouse pressed and released) at the middle of ``selector``."""
    box = browser.evaluate(
        f"(() => {{ const b = document.querySelector({json.dumps(selector)})"
        ".getBoundingClientRect(); return {x: b.left + b.width / 2, y: b.top + b.height / 2};"
        " })()")
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"], y=box["y"])
    for kind, buttons in (("mousePressed", 1), ("mouseReleased", 0)):
        browser.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                     button="left", buttons=buttons, clickCount=1)


def press_enter(browser: DevTools) -> None:
    browser.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                 windowsVirtualKeyCode=13, text="\r")
    browser.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter",
                 windowsVirtualKeyCode=13)


def wait_for_corrections(browser: DevTools, count: int) -> str:
    wait_until(lambda: browser.evaluate(
        f"document.body.dataset.corrections === '{count}' && "
        "document.body.dataset.state === 'idle'"), f"correction {count} to be saved")
    return browser.evaluate("document.getElementById('correction-status').textContent")


def test_drawings_corrected_on_the_page_land_in_the_folder(
        browser: DevTools, small_model: SmallModel, tmp_path_factory) -> None:
    """`serve --collect DIR`: a mouse-drawn 7 corrected by a click, a finger-drawn 4 by the
    keyboard; the pictures as the page sent them and their rows in DIR, one writer."""
    from mnist_pipeline.labelled import LABELS_FILE, read_folder

    folder = tmp_path_factory.mktemp("collect") / "corrections"
    with serving(small_model.path, folder.parent, "--collect", str(folder)) as url:
        open_page(browser, f"{url}/")
        assert browser.evaluate("document.getElementById('correction').hidden")  # no answer
        draw_with_mouse(browser, SEVEN)
        wait_for_answer(browser, 0)
        assert not browser.evaluate("document.getElementById('correction').hidden")
        assert browser.evaluate(
            "Array.from(document.querySelectorAll('#correction-digits button'),"
            " b => [b.textContent, b.getAttribute('aria-label')])"
        ) == [[str(digit), f"It is a {digit}"] for digit in range(10)]
        click(browser, "#correction-digits button:nth-child(2)")
        assert wait_for_corrections(browser, 1) == "Saved as a 1. Thank you!"
        assert browser.evaluate("document.querySelector('#correction-digits button')"
                                ".disabled"), "saved once: the digits wait for a new answer"

        browser.evaluate("document.getElementById('clear').click()")
        assert browser.evaluate("document.getElementById('correction').hidden")
        count = answers(browser)
        draw_with_finger(browser, FOUR)
        wait_for_answer(browser, count)
        browser.evaluate("document.querySelector('#correction-digits button:nth-child(10)')"
                         ".focus()")
        press_enter(browser)
        assert wait_for_corrections(browser, 2) == "Saved as a 9. Thank you!"
        writer = browser.evaluate("localStorage.getItem('mnist-writer')")
        assert_offline_and_clean(browser, url)

    lines = (folder / LABELS_FILE).read_text().splitlines()
    assert lines[0] == "file,label,writer,time" and len(lines) == 3, lines
    rows = [line.split(",") for line in lines[1:]]
    assert [row[1] for row in rows] == ["1", "9"]
    assert [row[2] for row in rows] == [writer, writer] and len(writer) >= 16
    for name, *_ in rows:
        with Image.open(folder / name) as picture:  # the canvas, as /predict gets it
            assert (picture.format, picture.size) == ("PNG", (280, 280))
    read = read_folder(folder)
    assert read.labels.tolist() == [1, 9] and (read.images.reshape(2, -1).max(axis=1) > 200).all()
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [LABELS_FILE, *(row[0] for row in rows)])


def test_api_docs_render_offline(browser: DevTools, server: str) -> None:
    browser.events.clear()
    browser.call("Page.navigate", url=f"{server}/docs")
    operations = wait_until(lambda: browser.evaluate(
        "document.querySelectorAll('.opblock').length"), "Swagger UI to list the operations")
    assert operations >= 2  # /predict and /health
    assert_offline_and_clean(browser, server)


def test_redoc_renders_offline_under_the_pages_policy(browser: DevTools, server: str) -> None:
    """ReDoc draws its styles and search worker at run time: the one policy of every HTML
    answer (Content-Security-Policy) must let it, and nothing else."""
    browser.events.clear()
    browser.call("Page.navigate", url=f"{server}/redoc")
    wait_until(lambda: browser.evaluate(
        "document.querySelectorAll('[data-section-id]').length"), "ReDoc to list the API")
    assert_offline_and_clean(browser, server)


def test_the_real_server_refuses_bodies_over_the_limit_and_goes_on(server: str) -> None:
    """Through uvicorn, declared (Content-Length) or streamed (chunked), then /health."""
    import httpx2

    from mnist_pipeline.app import limits

    def streamed():
        for _ in range(limits.MAX_REQUEST_BYTES // 65536 + 100):
            yield b"\0" * 65536

    for content in (b"\0" * (limits.MAX_REQUEST_BYTES + 1), streamed()):
        response = httpx2.post(f"{server}/predict", content=content, timeout=TIMEOUT_SECONDS,
                               headers={"content-type": "image/png"})
        assert response.status_code == 413, response.text
        assert "over the limit" in response.json()["detail"]
    assert httpx2.get(f"{server}/health", timeout=TIMEOUT_SECONDS).json()["status"] == "ok"
