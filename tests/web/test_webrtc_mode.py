"""The voice chat page's WebRTC mode, in a real Chromium, against the real agent.

The page calls ``POST /webrtc/offer`` with the fake microphone as its audio track
and the ``events`` data channel; the same UI must fill from the channel's JSON
events, and the agent's voice must arrive on the remote track (the page's own
analyser and the peer connection's inbound-rtp statistics both count it). Typed
text and Interrupt travel on the data channel too.
"""

from __future__ import annotations

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
from tests.speech import silence, speak
from tests.web.conftest import WAIT_MS, PageErrors, chromium_args, open_page, playwright_sync

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(420)]

WAV_RATE = 48000


def _question_wav(path: Path) -> Path:
    audio = np.concatenate(
        [
            silence(0.5, WAV_RATE),
            speak("What is the capital of France?", WAV_RATE),
            silence(3.0, WAV_RATE),
        ]
    )
    soundfile.write(path, audio, WAV_RATE, subtype="PCM_16")
    return path


def _silent_wav(path: Path) -> Path:
    soundfile.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    return path


@pytest.fixture
def question_page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    yield from open_page(chromium_args(microphone_wav=_question_wav(tmp_path / "q.wav")))


@pytest.fixture
def silent_page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    yield from open_page(chromium_args(microphone_wav=_silent_wav(tmp_path / "s.wav")))


@pytest.fixture(scope="module")
def keyed_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from e2e.start_server(Settings(api_key="s3cret-key"), e2e.sharing(embedded_engines))


def _wait(page: Any, condition: str, what: str, timeout_ms: int = WAIT_MS) -> None:
    """Wait (bounded) for a JS condition; on timeout, fail with what the page shows."""
    try:
        page.wait_for_function(condition, timeout=timeout_ms)
    except playwright_sync.TimeoutError:
        stats = page.evaluate("() => JSON.stringify(window.voiceforge)")
        log = page.locator("#log").inner_text()
        banner = page.locator("#banner-text").inner_text()
        pytest.fail(f"timed out waiting for {what}\nstats: {stats}\nbanner: {banner}\nlog:\n{log}")


def _responses(page: Any) -> dict[str, Any]:
    responses: dict[str, Any] = page.evaluate("() => window.voiceforge.responses")
    return responses


def test_webrtc_question_reply_and_audio(
    web_server: RunningServer, question_page: tuple[Any, PageErrors]
) -> None:
    page, errors = question_page
    page.goto(f"{web_server.http}/?transport=webrtc")
    assert page.input_value("#transport") == "webrtc"
    page.click("#start")
    _wait(
        page,
        "() => document.querySelector('#connection').dataset.connected === 'true'",
        "the WebRTC call to connect",
    )
    assert page.evaluate("() => window.voiceforge.transport") == "webrtc"
    # Chromium's echo cancellation is on by default: the server's echo guard stays off.
    assert page.evaluate("() => window.voiceforge.echoCancelled") is True
    assert page.locator("#log li.note", has_text="Connected · session").count() == 1

    # The question, heard through the track, transcribed, shown from the data channel.
    _wait(
        page,
        """() => [...document.querySelectorAll('#log li.user')].some(
               (li) => /capital/i.test(li.textContent) && /france/i.test(li.textContent))""",
        "the question's transcript",
    )
    _wait(
        page,
        "() => [...document.querySelectorAll('#log li.agent .bubble')]"
        ".some((b) => b.textContent.trim().length > 0)",
        "the agent's reply text",
    )
    # The reply's voice on the remote track: the page's analyser heard it, and the
    # peer connection decoded audio with energy.
    _wait(page, "() => window.voiceforge.remoteAudio.audibleMs > 0", "the agent's voice")
    _wait(
        page,
        "() => window.voiceforge.inbound.totalSamplesReceived > 0"
        " && window.voiceforge.inbound.totalAudioEnergy > 0",
        "inbound-rtp audio statistics",
    )
    _wait(
        page,
        "() => Object.values(window.voiceforge.responses).some((r) => r.status === 'completed')",
        "the reply to complete",
    )
    _wait(page, "() => document.querySelector('#log details.latency') !== null", "the latency")

    # Typed text and Interrupt over the data channel.
    before = sorted(_responses(page))
    page.fill("#text", "Tell me a long story about Paris.")
    page.click("#send")
    _wait(
        page,
        f"() => Object.keys(window.voiceforge.responses).some((id) => !{before!r}.includes(id))",
        "a reply to the typed text",
    )
    page.click("#interrupt")
    _wait(
        page,
        "() => Object.values(window.voiceforge.responses).some((r) => r.status === 'cancelled')",
        "the reply to be cancelled",
    )
    cancelled = next(i for i, r in _responses(page).items() if r["status"] == "cancelled")
    item = page.locator(f"#log li.agent[data-response-id='{cancelled}']")
    item.wait_for()
    assert "interrupted" in (item.get_attribute("class") or "")
    assert page.locator("#log li.user", has_text="long story about Paris").count() == 1

    assert errors == []
    page.click("#start")  # hang up
    page.wait_for_selector("#connection[data-connected='false']")
    assert page.is_hidden("#banner")


def test_webrtc_offer_refused_then_reconnect(
    keyed_server: RunningServer, silent_page: tuple[Any, PageErrors]
) -> None:
    page, errors = silent_page
    page.goto(keyed_server.http + "/")
    page.select_option("#transport", "webrtc")
    assert page.is_visible("#ice-servers")
    page.fill("#key", "wrong-key")
    page.click("#start")
    page.wait_for_selector("#banner:not([hidden])")
    banner = page.inner_text("#banner-text")
    assert "refused the WebRTC call (403 unauthorized)" in banner
    assert "Check the API key" in banner
    assert page.inner_text("#start") == "Start"

    page.fill("#key", "s3cret-key")  # sent as Authorization: Bearer s3cret-key
    page.click("#reconnect")
    page.wait_for_selector("#connection[data-connected='true']")
    assert page.is_hidden("#banner")
    assert page.evaluate("() => window.voiceforge.state") == "listening"

    # The mode is a saved setting: a reload keeps it.
    page.click("#start")
    page.wait_for_selector("#connection[data-connected='false']")
    page.reload()
    assert page.input_value("#transport") == "webrtc"
    assert errors == []
