"""The page resumes a call whose connection the server dropped in the middle of a
reply (a real Chromium, the JS SDK): it shows that it is reconnecting, comes back to
the same call, reports what it played of the cut reply, and the conversation goes
on with its history — asserted through what the model is sent.

Bench engines (scripted model, tone voice) and typed turns: the resume is under
test, not the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from agent.config import Settings
from agent.server import CLOSE_GOING_AWAY
from tests.e2e.conftest import RunningServer, start_server
from tests.faults.support import bench_engines
from tests.resume.test_resume_ws import LONG_REPLY
from tests.tools.scripted import ScriptedToolLLM, say
from tests.web.conftest import PageErrors, chromium_args, open_page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM()


@pytest.fixture
def bench_server(tmp_path: Path, llm: ScriptedToolLLM) -> Iterator[RunningServer]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}")
    yield from start_server(settings, bench_engines(llm=llm))  # type: ignore[arg-type]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(16000 * 30, dtype=np.float32), 16000, subtype="PCM_16")
    yield from open_page(chromium_args(microphone_wav=silence))


def drop_connection(server: RunningServer) -> None:
    """The server closes the call's connection (1001, as a proxy or a drain would)
    without ending the call: it is suspended for the page to resume."""
    (session,) = list(server.app_state.sessions)
    assert session.reader is not None
    session.reader.get_loop().call_soon_threadsafe(
        lambda: session.finish(CLOSE_GOING_AWAY, "server_shutdown", flush=False))


def type_turn(page: Any, text: str, completed: int) -> None:
    page.fill("#text", text)
    page.click("#send")
    page.wait_for_function(
        "n => Object.values(window.voiceforge.responses)"
        ".filter(r => r.status === 'completed').length >= n", arg=completed)


def test_the_page_resumes_a_call_dropped_mid_reply(
    bench_server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script(say("Nice to meet you, Ada."), say(LONG_REPLY), say("You are Ada."))
    tab.goto(bench_server.http + "/")
    tab.click("#start")
    tab.wait_for_selector("#connection[data-connected='true']")
    session_id = tab.evaluate("window.voiceforge.sessionId")
    type_turn(tab, "My name is Ada.", 1)

    tab.fill("#text", "Tell me a long story.")
    tab.click("#send")
    # Cut once the page has played 0.6 s of the reply (it lasts about 2 s).
    tab.wait_for_function(
        "Object.values(window.voiceforge.playedFrames)"
        ".some(f => f > 0.6 * window.voiceforge.contextSampleRate)")
    drop_connection(bench_server)
    tab.wait_for_function("window.voiceforge.reconnects === 1")
    tab.wait_for_selector("#connection[data-connected='true']")
    assert tab.evaluate("window.voiceforge.sessionId") == session_id
    assert "Reconnected" in tab.inner_text("#log")
    cut = tab.wait_for_function(
        "Object.values(window.voiceforge.responses)"
        ".find(r => r.reason === 'connection_lost') || null").json_value()
    assert cut["status"] == "cancelled"
    assert cut["timings"]["played_source_client"] == 1.0
    heard = cut["text_heard"]
    assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)

    type_turn(tab, "What is my name?", 2)
    assert [(m["role"], m["content"]) for m in llm.requests[-1].messages][1:] == [
        ("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada."),
        ("user", "Tell me a long story."), ("assistant", heard),
        ("user", "What is my name?")]
    assert errors == []
