"""Headless Chromium with no network, for the browser tests (the plots page, the serve page),
and the DevTools client and page helpers the serve page's tests share.

Needs Chromium. Outside `make test` a missing browser (or other missing tool, see
:func:`need`) skips the test; `make test` sets PLOTS_HTML_REQUIRED=1, which fails it instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED = os.environ.get("PLOTS_HTML_REQUIRED") == "1"
TIMEOUT_SECONDS = 30  # for the page, the browser and each DevTools answer


def need(condition: bool, reason: str) -> None:
    """Skip the test unless ``condition`` holds; fail it instead under PLOTS_HTML_REQUIRED=1."""
    if not condition:
        if REQUIRED:
            pytest.fail(f"{reason} (PLOTS_HTML_REQUIRED=1)")
        pytest.skip(reason)


def chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                 "google-chrome"))), None)
    need(found is not None, "Chromium is not installed")
    return found


def offline_command(profile: Path, *, host_resolver_rules: str = "MAP * ~NOTFOUND") -> list[str]:
    """Chromium, headless, in a new profile, with every host name unresolvable (by default):
    the flags without which it also tries Google's services at every start."""
    return [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--host-resolver-rules={host_resolver_rules}",
        f"--user-data-dir={profile}",
    ]


def stop(process: subprocess.Popen, timeout: float) -> None:
    """Terminate ``process``; kill it if it is still there after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_until(condition, what: str, timeout: float = TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class DevTools:
    """A minimal Chrome DevTools protocol client for one page, over a websocket."""

    def __init__(self, websocket_url: str):
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=TIMEOUT_SECONDS)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=TIMEOUT_SECONDS))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def event_params(self, method: str) -> list[dict]:
        return [event["params"] for event in self.events if event.get("method") == method]

    def close(self) -> None:
        self.socket.close()


@contextlib.contextmanager
def devtools_browser(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium with no name resolution but 127.0.0.1, on about:blank, driven over
    DevTools, with its profile in ``profile``; the ``browser`` fixture (conftest.py)."""
    process = subprocess.Popen(
        # Every host name fails to resolve, as in test_plots_html.py; the rule would catch
        # the IP literal of our own server too, hence the one exclusion.
        [*offline_command(profile, host_resolver_rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
         "--remote-debugging-port=0", "--window-size=900,800", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        def devtools_url() -> str | None:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                raise AssertionError(f"Chromium exited ({process.returncode})")
            return line.split("listening on ", 1)[1].strip() if "listening on ws" in line \
                else None

        browser_url = wait_until(devtools_url, "Chromium's DevTools address")
        http_root = browser_url.split("/devtools/")[0].replace("ws://", "http://")
        with urllib.request.urlopen(f"{http_root}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Network", "Log", "DOM"):
            devtools.call(f"{domain}.enable")
        yield devtools
        devtools.close()
    finally:
        stop(process, timeout=10)


# --- the serve page (mnist_pipeline/app/static) ---------------------------------------------


def open_page(browser: DevTools, url: str) -> None:
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    wait_until(lambda: browser.evaluate(
        "document.readyState === 'complete' && document.body.dataset.state === 'idle'"),
        f"{url} to load")


def pad_box(browser: DevTools) -> dict:
    return browser.evaluate(
        "(() => { const b = document.getElementById('pad').getBoundingClientRect();"
        " return {x: b.left, y: b.top, width: b.width, height: b.height}; })()")


def on_pad(box: dict, x: float, y: float) -> tuple[float, float]:
    """Canvas coordinates (0..280) -> page coordinates of the pad."""
    return box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280
