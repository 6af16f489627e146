"""Training sees what serving sees: pen strokes drawn on the real page in headless Chromium and
the same strokes drawn by the pipeline (mnist_pipeline.strokes) give the same 28x28 digit.

The page's own files are served from 127.0.0.1 by a small static server (the model is not
needed to draw); Chromium, with no network, draws each digit with real mouse events through
the page's pointer handlers, and the test reads the canvas back as the PNG the page would
send to /predict. Both pictures then go through digit_image.normalize_digit, the path of every
picture the model is asked about. Needs Chromium (see headless_chromium.py).
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from headless_chromium import DevTools, on_pad, open_page, pad_box
from pen_data import strokes_of
from PIL import Image
from scipy import ndimage

from mnist_pipeline import digit_image, strokes

pytestmark = pytest.mark.slow  # a browser: several seconds
STATIC = Path(__file__).resolve().parents[1] / "mnist_pipeline" / "app" / "static"
# The pads: mean |page - renderer| in gray levels of 255. The same strokes drawn with a brush
# 6 px off differ by about 4 or more; the page and the renderer by well under 1 (the
# browser's antialiasing is analytic, the renderer's is 16 levels of supersampling).
MAX_PAD_DIFFERENCE = 1.0
WRONG_BRUSH_DIFFERENCE = 3.0
# The 28x28 digits: digit_image crops to every lit pixel, so one faint edge pixel more on
# either side widens the crop by a pixel of 280 and rounds the 20 px box's other side to
# another whole pixel, and centring by mass moves by whole pixels: identical-looking pads can
# give digits a pixel apart. They are compared blurred (sigma 1 px) at the best shift of at
# most one pixel, as a check that nothing grosser differs.
MAX_DIGIT_DIFFERENCE = 7.0


def aligned_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """|first - second| at the shift of ``second`` by at most 1 px that makes it smallest."""
    shifted = [np.roll(second, (rows, columns), axis=(0, 1))
               for rows in (-1, 0, 1) for columns in (-1, 0, 1)]
    return min((np.abs(first - candidate) for candidate in shifted), key=np.mean)


class _StaticPage(http.server.SimpleHTTPRequestHandler):
    """The page at / and its files under /static/, nothing else."""

    def translate_path(self, path: str) -> str:
        name = path.split("?")[0].removeprefix("/static/").lstrip("/") or "index.html"
        return str(STATIC / name)

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_StaticPage))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(browser: DevTools, page_url: str) -> DevTools:
    """The browser on the drawing page."""
    open_page(browser, page_url)
    return browser


def draw_on_page(browser: DevTools, pad_strokes: list[np.ndarray]) -> np.ndarray:
    """Draw ``pad_strokes`` (canvas pixels) with the mouse; the canvas as grayscale 0..255."""
    browser.evaluate("document.getElementById('clear').click()")
    box = pad_box(browser)
    for stroke in pad_strokes:
        points = [on_pad(box, x, y) for x, y in stroke]
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=points[0][0],
                     y=points[0][1])
        browser.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0],
                     y=points[0][1], button="left", buttons=1, clickCount=1)
        for x, y in points[1:]:
            browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y,
                         button="left", buttons=1)
        browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0],
                     y=points[-1][1], button="left", buttons=0, clickCount=1)
    data_url = browser.evaluate("document.getElementById('pad').toDataURL('image/png')")
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


@pytest.mark.parametrize("label", range(10))
def test_the_page_and_the_pipeline_draw_the_same_digit(page: DevTools, label: int):
    rng = np.random.default_rng(label)
    height = [90.0, 160.0, 220.0][label % 3]  # small digits have relatively thick strokes
    pad_strokes = strokes.place_on_pad(strokes_of(label, rng),
                                       strokes.Placement(height, slant=0.2 * (label % 2)))
    on_page = draw_on_page(page, pad_strokes)
    rendered = strokes.render(pad_strokes).astype(np.float32)
    assert np.mean(np.abs(on_page - rendered)) <= MAX_PAD_DIFFERENCE
    for other_brush in (strokes.BRUSH_WIDTH - 6, strokes.BRUSH_WIDTH + 6):  # it can tell
        wrong = strokes.render(pad_strokes, brush_width=other_brush).astype(np.float32)
        assert np.mean(np.abs(on_page - wrong)) >= WRONG_BRUSH_DIFFERENCE
    seen_on_page = ndimage.gaussian_filter(digit_image.normalize_digit(on_page), 1.0)
    seen_in_training = ndimage.gaussian_filter(digit_image.normalize_digit(rendered), 1.0)
    difference = aligned_difference(seen_on_page, seen_in_training)
    assert difference.mean() <= MAX_DIGIT_DIFFERENCE, difference.mean()
