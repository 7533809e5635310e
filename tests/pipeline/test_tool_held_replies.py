"""A speculative reply that wants a tool waits for its turn: a caller who was not done
speaking never sets anything off, and the call runs once, for the confirmed turn.
Real Silero VAD on real speech drives the turns; the model is a scripted caller of tools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.engines.base import ChatMessage
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.events import Event, ResponseCreated, ResponseDone, ResponseStatus, SpeechStopped
from pipeline.tools import ToolCall, ToolRegistry, server_tool
from pipeline.vad import BatchedVADWorker
from tests.faults.support import wait_until
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")


class ToolCallingScript(ScriptedLLM):
    """Calls ``book_table`` at once for any user turn; speaks the result after it."""

    max_tool_rounds = 3

    async def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        self.requests.append(list(messages))
        if messages[-1]["role"] == "tool":
            yield f"Done: {messages[-1]['content']}."
            return
        await asyncio.sleep(0.001)
        yield ToolCall("book_table", '{"day": "Friday"}')


async def test_a_held_reply_runs_no_tool_until_its_turn_is_confirmed(
    vad: BatchedVADWorker,
) -> None:
    bookings: list[str] = []

    async def book_table(day: str) -> str:
        """Book a table."""
        bookings.append(day)
        return f"booked for {day}"

    llm = ToolCallingScript(tokens_per_second=200, first_token_ms=1)
    engines = Engines(
        stt=ScriptedSTT(["Book a table", "Book a table for Friday please"]),
        llm=llm, tts=ToneTTS(), vad=vad,
        tools=ToolRegistry([server_tool(book_table)]),
    )
    events: list[Event] = []
    conversation = Conversation(engines, events.append, SessionConfig(playback_grace_ms=0))
    conversation.start()
    try:
        def feed(audio: np.ndarray) -> None:
            for start in range(0, len(audio), 320):
                assert conversation.feed_audio(audio[start : start + 320])

        feed(np.concatenate([silence(0.3), speak("Book a table")]))
        await wait_until(lambda: any(isinstance(e, SpeechStopped) for e in events), 20, "pause")
        # The speculative reply starts on the pause's transcript and asks for the tool…
        await wait_until(lambda: len(llm.requests) >= 1, 20, "the held reply started")
        await asyncio.sleep(0.1)
        assert bookings == []  # …which waits: the turn may not be over
        # The caller goes on (the pause was shorter than the end of turn).
        feed(np.concatenate([silence(0.05), speak("for Friday please"), silence(1.0)]))
        await wait_until(
            lambda: any(isinstance(e, ResponseDone) for e in events), 30, "the reply"
        )
    finally:
        await conversation.close()
    done = next(e for e in events if isinstance(e, ResponseDone))
    assert done.status is ResponseStatus.COMPLETED and done.text == "Done: booked for Friday."
    assert len([e for e in events if isinstance(e, ResponseCreated)]) == 1
    assert bookings == ["Friday"]  # once, for the confirmed turn
    # The figures the tool runner wrote after the release are the reply's.
    assert done.timings["speculative_response"] == 1.0
    assert done.timings["tool_calls"] == 1.0 and done.timings["tool_ms"] >= 0
    history = conversation.history.messages()
    assert history[1] == {"role": "user", "content": "Book a table for Friday please"}
    assert [m["role"] for m in history[2:]] == ["assistant", "tool", "assistant"]


class _WarmedToolLLM(ToolCallingScript):
    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[tuple[str, list[str]]] = []

    def warm(self, instructions: str, tools: Sequence[dict[str, Any]] = ()) -> None:
        self.warmed.append((instructions, [t["function"]["name"] for t in tools]))


async def test_a_call_with_tools_has_them_read_before_its_first_turn(
    vad: BatchedVADWorker,
) -> None:
    async def lookup(order_id: str) -> str:
        """Look up an order."""
        return order_id

    llm = _WarmedToolLLM()
    engines = Engines(stt=ScriptedSTT(), llm=llm, tts=ToneTTS(), vad=vad,
                      tools=ToolRegistry([server_tool(lookup)]))
    conversation = Conversation(engines, lambda event: None)
    conversation.start()
    try:
        assert llm.warmed == [(conversation.config.instructions, ["lookup"])]
        # New client tools change what the model reads: read again.
        conversation.update(replace(conversation.config, tool_choice="none"))
        assert llm.warmed[-1] == (conversation.config.instructions, [])
    finally:
        await conversation.close()
