"""A "mm-hmm" over the agent's reply in the real page: paused, resumed, heard whole.

Chromium's fake microphone asks for a story, then says "mm-hmm" a few times while
the agent tells it. The page (JS SDK, protocol 1.1 with ``playback_pause``) must
stop playback at the pause, play on after the resume, and the reply must end
``completed`` with everything heard; the "mm-hmm" gets no reply of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import RunningServer
from tests.speech import silence, speak
from tests.web.conftest import WAIT_MS, PageErrors, chromium_args, open_page, playwright_sync

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(420)]

WAV_RATE = 48000
INSTRUCTIONS = (
    "You are a storyteller. Whatever the caller says, tell a story of exactly five "
    "sentences about a dragon who learns to bake bread."
)


def _caller_wav(path: Path) -> None:
    """The question, then a "mm-hmm" every few seconds while the story plays.

    On a loaded machine the reply may not be audible at the first "mm-hmm"; one of
    the later ones lands on it.
    """
    mm_hmm = speak("Mm-hmm.", WAV_RATE)
    parts = [silence(0.5, WAV_RATE), speak("Please tell me a story.", WAV_RATE)]
    parts.append(silence(10.0, WAV_RATE))
    for _ in range(3):
        parts += [mm_hmm, silence(5.0, WAV_RATE)]
    parts.append(silence(30.0, WAV_RATE))
    soundfile.write(path, np.concatenate(parts), WAV_RATE, subtype="PCM_16")


@pytest.fixture
def chat_page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    wav = tmp_path / "caller.wav"
    _caller_wav(wav)
    yield from open_page(chromium_args(microphone_wav=wav))


def _wait(page: Any, condition: str, what: str) -> None:
    try:
        page.wait_for_function(condition, timeout=WAIT_MS)
    except playwright_sync.TimeoutError:
        stats = page.evaluate("() => JSON.stringify(window.voiceforge)")
        pytest.fail(f"timed out waiting for {what}\nstats: {stats}")


def test_mm_hmm_pauses_and_resumes_the_reply(
    web_server: RunningServer, chat_page: tuple[Any, PageErrors]
) -> None:
    page, errors = chat_page
    page.goto(f"{web_server.http}/?instructions={quote(INSTRUCTIONS)}")
    page.click("#start")
    page.wait_for_selector("#connection[data-connected='true']")
    # Any reply the caller said "mm-hmm" over, that was resumed and then heard whole
    # (on a loaded machine a later "mm-hmm" may fall between replies).
    resumed_and_completed = (
        "() => (window.voiceforge.resumes || []).some((id) =>"
        " window.voiceforge.responses[id]?.status === 'completed')"
    )
    _wait(page, resumed_and_completed, "a reply paused, resumed and completed")
    response_id = page.evaluate(
        "() => window.voiceforge.resumes.find((id) =>"
        " window.voiceforge.responses[id]?.status === 'completed')"
    )
    assert response_id in page.evaluate("() => window.voiceforge.pauses")
    paused_at = page.evaluate(f"() => window.voiceforge.pausedAtFrames[{response_id!r}]")
    played = page.evaluate(f"() => window.voiceforge.playedFrames[{response_id!r}]")
    assert 0 < paused_at < played, "audible at the pause, and played on after the resume"
    badge = page.locator(f"#log li.agent[data-response-id='{response_id}'] .badge.playback")
    assert badge.inner_text() in ("resumed", "paused")
    done = page.evaluate(f"() => window.voiceforge.responses[{response_id!r}]")
    assert done["text_heard"] == done["text"].strip()
    assert response_id not in page.evaluate("() => window.voiceforge.cleared")
    # Resumed for real: well over a second more of it was played after the pause.
    rate = page.evaluate("() => window.voiceforge.contextSampleRate")
    assert played - paused_at > rate
    assert errors == []
    page.click("#start")
    page.wait_for_selector("#connection[data-connected='false']")
