"""Headless Chromium with no network, for the browser tests (the plots page, the serve page).

Needs Chromium. Outside `make test` a missing browser (or other missing tool, see
:func:`need`) skips the test; `make test` sets PLOTS_HTML_REQUIRED=1, which fails it instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRED = os.environ.get("PLOTS_HTML_REQUIRED") == "1"


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
