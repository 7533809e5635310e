"""The page's error messages, in a real Chromium: no microphone, no server, a session error."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from agent.config import Settings
from pipeline.conversation import Engines
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RunningServer
from tests.web.conftest import PageErrors, chromium_args, open_page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(240)]


def _silent_wav(path: Path) -> Path:
    soundfile.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    return path


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    yield from open_page(chromium_args(microphone_wav=_silent_wav(tmp_path / "silence.wav")))


@pytest.fixture(scope="module")
def keyed_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    """A second server that wants an API key (the same models, its own VAD worker)."""
    yield from e2e.start_server(Settings(api_key="s3cret-key"), e2e.sharing(embedded_engines))


def test_api_key_as_subprotocol(
    keyed_server: RunningServer, silent_page: tuple[Any, PageErrors]
) -> None:
    page, errors = silent_page
    page.goto(keyed_server.http + "/")
    page.fill("#key", "wrong-key")
    page.click("#start")
    page.wait_for_selector("#banner:not([hidden])")
    assert "Check the API key" in page.inner_text("#banner-text")
    page.fill("#key", "s3cret-key")  # offered as ["voiceforge.v1", "bearer.s3cret-key"]
    page.click("#reconnect")
    page.wait_for_selector("#connection[data-connected='true']")
    assert page.is_hidden("#banner")
    page.click("#start")
    page.wait_for_selector("#connection[data-connected='false']")
    assert errors == []


def test_microphone_denied(web_server: RunningServer, tmp_path: Path) -> None:
    args = chromium_args(microphone_wav=_silent_wav(tmp_path / "s.wav"), grant_microphone=False)
    for page, errors in open_page(args):
        page.goto(web_server.http + "/")
        page.click("#start")
        page.wait_for_selector("#banner:not([hidden])")
        assert "Microphone access was denied" in page.inner_text("#banner-text")
        assert page.inner_text("#start") == "Start"
        assert page.get_attribute("#connection", "data-connected") == "false"
        assert errors == []


def test_unreachable_server_session_error_and_reconnect(
    web_server: RunningServer, silent_page: tuple[Any, PageErrors]
) -> None:
    page, errors = silent_page
    page.goto(web_server.http + "/")
    page.fill("#url", f"ws://127.0.0.1:{_closed_port()}/ws")
    page.click("#start")
    page.wait_for_selector("#banner:not([hidden])")
    assert "Cannot reach the VoiceForge server" in page.inner_text("#banner-text")
    assert page.inner_text("#start") == "Start"

    # Back to the real server, with instructions the server refuses (over 8000 chars):
    # the error shows in the log and the call goes on with the rest of its settings.
    page.fill("#url", web_server.url)
    page.fill("#instructions", "x" * 8001)
    page.click("#reconnect")
    page.wait_for_selector("#connection[data-connected='true']")
    assert page.is_hidden("#banner")
    page.wait_for_selector("#log li.note.error:has-text('invalid_session')")
    assert page.evaluate("() => window.voiceforge.state") == "listening"
    page.click("#start")  # hang up
    page.wait_for_selector("#connection[data-connected='false']")
    assert page.inner_text("#start") == "Start"
    assert errors == []
