"""What the Realtime API's client events need of the conversation: replies asked
for by the client (own instructions, token limit, out of band), playback stopped by
the client (truncate, live or after the fact), and history edited by it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.conversation import SessionConfig
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.events import (
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    SpeechStarted,
)
from pipeline.history import History
from pipeline.reply_state import ResponseRequest
from pipeline.vad import BatchedVADWorker
from tests.faults.support import wait_until
from tests.pipeline.test_conversation import make
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")


async def test_a_requested_reply_uses_its_own_instructions_and_stays_out_of_history(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM(tokens_per_second=500, first_token_ms=1)
    h = make(vad, llm=llm, config=SessionConfig(playback_grace_ms=0))
    try:
        h.conversation.add_text("user", "Hello there.")
        h.conversation.respond(ResponseRequest(instructions="Only say yes.", out_of_band=True))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        assert llm.requests[-1][0] == {"role": "system", "content": "Only say yes."}
        assert llm.requests[-1][-1] == {"role": "user", "content": "Hello there."}
        assert h.conversation.history.messages()[1:] == [
            {"role": "user", "content": "Hello there."}
        ]
        h.conversation.respond()
        await h.wait_for(lambda e: isinstance(e, ResponseDone) and e is not done)
        assert llm.requests[-1][0]["content"] == h.conversation.config.instructions
        assert h.conversation.history.messages()[-1] == {"role": "assistant", "content": llm.reply}
    finally:
        await h.conversation.close()


async def test_playback_stopped_by_the_client_cancels_and_keeps_what_it_played(
    vad: BatchedVADWorker,
) -> None:
    stopped: list[bool] = []
    received_ms: list[float] = []

    def client(conversation, event):  # type: ignore[no-untyped-def]
        if isinstance(event, ResponseAudioDelta) and not stopped:
            received_ms.append(event.duration_ms)
            # Into the second chunk (the first is 1860 ms): the client had played 700 ms.
            if sum(received_ms) >= 2000.0:
                stopped.append(conversation.stop_playback(event.response_id, 700.0))

    h = make(vad, on_event=client)
    try:
        h.conversation.add_text("user", "What is the capital of France?")
        h.conversation.respond()
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert stopped == [True]
        assert isinstance(done, ResponseDone)
        assert (done.status, done.reason) == (ResponseStatus.CANCELLED, "client_truncated")
        # 700 ms into a 1860 ms first chunk of six words: two words were heard.
        assert done.played_ms == 700.0 and done.text_heard == "The capital"
        assert h.conversation.history.messages()[-1] == {
            "role": "assistant", "content": "The capital"
        }
        assert not h.conversation.stop_playback(done.response_id, 100.0)  # done already
    finally:
        await h.conversation.close()


async def test_a_finished_reply_truncated_later_is_cut_in_history(
    vad: BatchedVADWorker,
) -> None:
    h = make(vad, llm=ScriptedLLM(tokens_per_second=500, first_token_ms=1),
             config=SessionConfig(playback_grace_ms=0))
    try:
        h.conversation.add_text("user", "What is the capital of France?")
        h.conversation.respond()
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        assert h.conversation.truncate_finished(done.response_id, 700.0) == "The capital"
        assert h.conversation.history.messages()[-1] == {
            "role": "assistant", "content": "The capital"
        }
        assert h.conversation.truncate_finished("resp_unknown", 10.0) is None
    finally:
        await h.conversation.close()


def test_rewrite_edits_the_newest_matching_turn_and_drops_an_emptied_one() -> None:
    history = History("system")
    history.add_user("first question")
    history.add_assistant("an answer")
    history.add_user("second question")
    history.add_user("and more")  # joined into one user turn
    assert history.rewrite("user", "and more", "")
    assert history.messages()[-1] == {"role": "user", "content": "second question"}
    assert history.rewrite("assistant", "an answer", "an")
    assert history.messages()[2] == {"role": "assistant", "content": "an"}
    assert history.rewrite("user", "first question", "")
    assert [m["content"] for m in history.messages()] == ["system", "an", "second question"]
    assert not history.rewrite("user", "never said", "")
    assert not history.rewrite("assistant", "", "x")


async def test_manual_turns_are_committed_by_the_client_and_answered_on_request(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM(tokens_per_second=500, first_token_ms=1)
    stt = ScriptedSTT(["Where is my order?"], delay_ms=200)
    h = make(vad, llm=llm, stt=stt,
             config=SessionConfig(manual_turns=True, playback_grace_ms=0))
    try:
        assert not h.conversation.commit_input()  # nothing heard yet
        h.feed(speak("Where is my order?"))
        # True once 100 ms or more were heard, and committed (the scripted STT's words
        # do not depend on how much).
        await wait_until(lambda: h.conversation.commit_input(), 20, "the audio was heard")
        # Asked for at once: the reply waits for the committed words (a slow STT).
        h.conversation.respond()
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        assert llm.requests[-1][-1] == {"role": "user", "content": "Where is my order?"}
        assert [type(e) for e in h.events if isinstance(e, SpeechStarted | ResponseCreated)] == [
            ResponseCreated
        ]  # no VAD turn events, and one reply: the one asked for
    finally:
        await h.conversation.close()


async def test_without_auto_reply_a_turn_only_joins_history_until_asked(
    vad: BatchedVADWorker,
) -> None:
    llm = ScriptedLLM(tokens_per_second=500, first_token_ms=1)
    h = make(vad, llm=llm, config=SessionConfig(auto_reply=False, playback_grace_ms=0))
    try:
        h.feed(np.concatenate([silence(0.3), speak("What is the capital of France?"),
                               silence(1.0)]))
        history = h.conversation.history
        await wait_until(lambda: len(history) == 1, 20, "the turn joined history")
        # Handing a turn over writes history and starts its reply in one step: none came.
        assert not h.of(ResponseCreated) and not llm.requests
        assert history.messages()[-1] == {"role": "user",
                                          "content": "What is the capital of France?"}
        h.conversation.respond()
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        assert len(h.of(ResponseCreated)) == 1
    finally:
        await h.conversation.close()
