"""One turn at a time per call: quick inputs never make two replies play at once.

Issue 13 item 5: four quick ``conversation.text`` messages used to leave two replies
running together, one of them out of reach of ``response.cancel``, and history with
two assistant turns in a row. These tests send texts in one tick and at small
intervals, and race an audio turn against text turns, with the deterministic
``bench`` engines and the real Silero VAD; tests/e2e/test_turn_order.py does the same
over the real WebSocket with the embedded models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from pipeline.conversation import Conversation, SessionConfig
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.events import (
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.turns import MAX_QUEUED_INPUTS
from pipeline.vad import BatchedVADWorker
from tests.pipeline.test_conversation import Harness, make
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")

TEXTS = ("Hello there.", "What is the capital of France?", "And of Spain?", "Thanks.")



def one_reply_at_a_time(events: Sequence[Event]) -> list[ResponseDone]:
    """Check that replies never overlap and every one ends; return their ends in order.

    Every event tagged with a response id must fall between that response's
    ``ResponseCreated`` and its ``ResponseDone``, and a response is created only once
    the one before it is done.
    """
    in_flight: str | None = None
    done: list[ResponseDone] = []
    for event in events:
        if isinstance(event, ResponseCreated):
            assert in_flight is None, f"{event.response_id} created while {in_flight} runs"
            in_flight = event.response_id
        elif isinstance(event, ResponseDone):
            assert event.response_id == in_flight, f"{event.response_id} done out of turn"
            in_flight = None
            done.append(event)
        elif (response_id := getattr(event, "response_id", None)) is not None:
            assert response_id == in_flight, f"{type(event).__name__} of {response_id} stray"
    assert in_flight is None, f"{in_flight} never ended"
    return done


def alternating(conversation: Conversation) -> list[str]:
    """The roles of the history, checked to alternate user / assistant."""
    roles = [m["role"] for m in conversation.history.messages()]
    assert roles[0] == "system"
    turns = roles[1:]
    assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2), roles
    return roles


async def settled(h: Harness, timeout_s: float = 20.0) -> None:
    """Wait (bounded) until the call has nothing in flight and every reply has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        created = len(h.of(ResponseCreated))
        if created and not h.conversation.busy and created == len(h.of(ResponseDone)):
            return
        await asyncio.sleep(0.01)
    # Fall through: the assertions that follow say what is wrong.


def reporting_client(conversation: Conversation, event: Event) -> None:
    """A client that plays audio instantly and says so, as the SDKs report playback."""
    if isinstance(event, ResponseAudioDelta):
        conversation.report_played(event.response_id, 1e9)


async def test_four_texts_in_one_tick_make_one_reply_at_a_time(vad: BatchedVADWorker) -> None:
    llm = ScriptedLLM(tokens_per_second=200, first_token_ms=5)
    h = make(vad, llm=llm, on_event=reporting_client, config=SessionConfig(playback_grace_ms=0))
    try:
        for text in TEXTS:
            h.conversation.send_text(text)
        await settled(h)
        done = one_reply_at_a_time(h.events)
        assert done[-1].status is ResponseStatus.COMPLETED
        assert all(d.status is ResponseStatus.CANCELLED for d in done[:-1])
        alternating(h.conversation)
        # Nothing the caller typed is lost: the texts reach the LLM in order.
        last_user = llm.requests[-1][-1]
        assert last_user["role"] == "user"
        positions = [last_user["content"].find(text) for text in TEXTS[1:]]
        assert -1 not in positions and positions == sorted(positions), last_user
    finally:
        await h.conversation.close()


@pytest.mark.parametrize("interval_s", [0.005, 0.03, 0.1])
async def test_texts_at_small_intervals_make_one_reply_at_a_time(
    vad: BatchedVADWorker, interval_s: float
) -> None:
    h = make(
        vad,
        llm=ScriptedLLM(tokens_per_second=100, first_token_ms=5),
        on_event=reporting_client,
        config=SessionConfig(playback_grace_ms=0),
    )
    try:
        for text in TEXTS:
            h.conversation.send_text(text)
            await asyncio.sleep(interval_s)
        await settled(h)
        done = one_reply_at_a_time(h.events)
        assert done[-1].status is ResponseStatus.COMPLETED
        alternating(h.conversation)
        assert h.conversation.history.messages()[-1]["content"] == done[-1].text_heard
    finally:
        await h.conversation.close()


async def test_response_cancel_after_quick_texts_silences_the_call(
    vad: BatchedVADWorker,
) -> None:
    # Slow enough that the reply is still speaking when the cancel comes.
    h = make(vad, llm=ScriptedLLM(tokens_per_second=5, first_token_ms=5))
    try:
        for text in TEXTS:
            h.conversation.send_text(text)
        first_audio = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first_audio, ResponseAudioDelta)
        assert h.conversation.cancel_response()
        await settled(h)
        done = one_reply_at_a_time(h.events)
        assert done[-1].response_id == first_audio.response_id
        assert done[-1].status is ResponseStatus.CANCELLED
        assert done[-1].reason == "client_cancelled"
        ended_at = h.events.index(done[-1])
        assert not [e for e in h.events[ended_at:] if isinstance(e, ResponseAudioDelta)]
        assert not h.conversation.busy
        alternating(h.conversation)
    finally:
        await h.conversation.close()


async def test_an_audio_turn_ending_while_text_turns_are_set_up(
    vad: BatchedVADWorker,
) -> None:
    """An EndOfTurn lands while a text turn waits for the reply it cut off to settle."""
    question = "What is the capital of France?"
    h = make(
        vad,
        stt=ScriptedSTT([question]),
        llm=ScriptedLLM(tokens_per_second=100, first_token_ms=5),
        # The cut-off reply settles only when the test reports what was played.
        config=SessionConfig(played_report_timeout_ms=30_000, playback_grace_ms=0),
    )
    try:
        h.conversation.send_text("Tell me a story.")
        first_audio = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first_audio, ResponseAudioDelta)
        h.conversation.send_text("Stop.")
        await h.wait_for(lambda e: isinstance(e, ResponseAudioClear))
        h.feed(np.concatenate([silence(0.3), speak(question), silence(1.0)]))
        await h.wait_for(lambda e: isinstance(e, TranscriptFinal))
        h.conversation.send_text("Please answer.")
        await asyncio.sleep(0)
        h.conversation.report_played(first_audio.response_id, 100.0)
        await settled(h)
        done = one_reply_at_a_time(h.events)
        assert done[0].status is ResponseStatus.CANCELLED
        assert done[-1].status is ResponseStatus.COMPLETED
        roles = alternating(h.conversation)
        assert roles[-2:] == ["user", "assistant"]
        last_user = h.conversation.history.messages()[-2]["content"]
        assert last_user.index("Stop.") < last_user.index(question) < last_user.index("Please")
    finally:
        await h.conversation.close()


async def test_a_flood_of_texts_keeps_a_bounded_backlog_and_says_what_it_dropped(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM(tokens_per_second=200, first_token_ms=5)
    h = make(vad, llm=llm, on_event=reporting_client, config=SessionConfig(playback_grace_ms=0))
    texts = [f"Note {i:02d}." for i in range(20)]
    try:
        for text in texts:
            h.conversation.send_text(text)
        await settled(h)
        done = one_reply_at_a_time(h.events)
        assert [d.status for d in done] == [ResponseStatus.COMPLETED]
        dropped = [e for e in h.of(TurnIgnored) if isinstance(e, TurnIgnored)]
        assert [e.reason for e in dropped] == ["backlog_full"] * (20 - MAX_QUEUED_INPUTS)
        asked = llm.requests[-1][-1]["content"]
        assert asked == " ".join(texts[-MAX_QUEUED_INPUTS:])
        alternating(h.conversation)
    finally:
        await h.conversation.close()
