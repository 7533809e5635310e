"""Spoken tool calls on the embedded default: real speech in, a real call by the real model,
the spoken answer out — "what time is it?" and "goodbye, that's all"."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator

import numpy as np
import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.profiles import build_tools
from pipeline.conversation import Engines
from pipeline.events import (
    ResponseDone,
    ResponseStatus,
    ResponseToolCall,
    ResponseToolResult,
    SessionEnded,
)
from tests.e2e.caller import Caller
from tests.e2e.conftest import RunningServer, sharing, start_server
from tests.speech import speak

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tool_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    """The embedded engines with the server's default tools (what ``make run`` serves)."""
    settings = Settings()
    engines = sharing(embedded_engines)
    engines.tools = build_tools(settings)
    yield from start_server(settings, engines)


def _spoken_times(text: str) -> set[tuple[int, int]]:
    """(hour on a 12-hour clock, minute) of every clock time written in ``text``."""
    return {
        (int(hour) % 12 or 12, int(minute))
        for hour, minute in re.findall(r"\b(\d{1,2}):(\d{2})\b", text)
    }


async def test_what_time_is_it_calls_the_clock_and_speaks_the_right_time(
    tool_server: RunningServer,
) -> None:
    async with await VoiceForgeClient.connect(tool_server.url) as client:
        # Temperature 0: the model's choice to call is then the same on every run.
        await client.update_session(temperature=0.0)
        caller = Caller(client)
        caller.start()
        try:
            caller.say(speak("What time is it?"))
            call = await caller.wait_for(lambda m: isinstance(m, ResponseToolCall), 90)
            assert isinstance(call, ResponseToolCall)
            # The reply that made the call (a first draft may have been dropped).
            done = await caller.wait_for(
                lambda m: isinstance(m, ResponseDone) and m.response_id == call.response_id, 90
            )
            assert isinstance(done, ResponseDone)
            asked_at = dt.datetime.now(dt.UTC)
        finally:
            await caller.stop()
    calls = caller.messages(ResponseToolCall)
    assert [(c.name, c.executor) for c in calls] == [("get_current_time", "server")]  # type: ignore[attr-defined]
    result = caller.messages(ResponseToolResult)[0]
    assert result.status == "ok"  # type: ignore[attr-defined]
    assert done.status is ResponseStatus.COMPLETED
    assert done.timings["tool_calls"] == 1.0
    # The time the caller heard is the clock's (the call took well under two minutes).
    possible = {
        ((asked_at - dt.timedelta(minutes=m)).hour % 12 or 12,
         (asked_at - dt.timedelta(minutes=m)).minute)
        for m in range(0, 3)
    }
    assert _spoken_times(done.text) & possible, (done.text, result.output)  # type: ignore[attr-defined]
    audio = caller.audio_of(done.response_id)
    assert len(audio) / int(client.session["output_sample_rate"]) > 1.0
    assert float(np.sqrt(np.mean(np.square(audio)))) > 0.01


async def test_goodbye_ends_the_call_after_the_goodbye_is_heard(
    tool_server: RunningServer,
) -> None:
    async with await VoiceForgeClient.connect(tool_server.url) as client:
        await client.update_session(temperature=0.0)
        caller = Caller(client)
        caller.start()
        try:
            caller.say(speak("Goodbye, that's all."))
            ended = await caller.wait_for(lambda m: isinstance(m, SessionEnded), 90)
            await asyncio.wait_for(client._ws.wait_closed(), 10)
        finally:
            await caller.stop()
    assert isinstance(ended, SessionEnded) and ended.reason == "end_call"
    assert [c.name for c in caller.messages(ResponseToolCall)] == ["end_call"]  # type: ignore[attr-defined]
    done = caller.messages(ResponseDone)[-1]
    assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
    assert done.text.strip() and len(caller.audio_of(done.response_id)) > 0  # goodbye said
    assert client._ws.close_code == 1000
