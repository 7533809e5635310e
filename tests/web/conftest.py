"""The real embedded server and Debian's Chromium for the browser tests.

The server fixture reuses tests/e2e's (real engines, 127.0.0.1, a free port).
Chromium is Debian's package driven by the playwright Python package:
``playwright install`` cannot download browsers here, and does not need to.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from pipeline.conversation import Engines
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RunningServer

playwright_sync = pytest.importorskip("playwright.sync_api")

embedded_engines = e2e.embedded_engines

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 90_000
"""The reply runs on two shared CPU cores: every wait is bounded, none is timed."""


@pytest.fixture(scope="module")
def web_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from e2e.start_server(Settings(), e2e.sharing(embedded_engines))


def chromium_args(*, microphone_wav: Path | None, grant_microphone: bool = True) -> list[str]:
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream",
    ]
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")
    if microphone_wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone_wav}%noloop")
    return args


class PageErrors(list[str]):
    """Uncaught exceptions in the page."""


def open_page(args: list[str]) -> Iterator[tuple[Any, PageErrors]]:
    """A fresh headless Chromium and a laptop-sized page; closed afterwards."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required for the browser tests (make test installs it)")
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(WAIT_MS)
            errors = PageErrors()
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            browser.close()
