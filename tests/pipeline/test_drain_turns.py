"""A draining call starts no reply: the hand-over refuses the turns it holds.

The server's drain (agent/lifecycle.py) sets ``accepting_turns`` to False. A turn that
ends afterwards is ignored at once; these tests cover the turns that were already
past that check — being transcribed, or waiting for a cut-off reply to settle —
when the drain began. Each gets ``TurnIgnored("server_shutting_down")`` with its
own audio span, and no ``ResponseCreated`` is ever emitted for it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.conversation import SessionConfig
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.events import (
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.vad import BatchedVADWorker
from tests.faults.support import wait_until
from tests.pipeline.test_conversation import make
from tests.speech import silence, speak

pytestmark = pytest.mark.filterwarnings("error")



class GatedSTT(ScriptedSTT):
    """Transcribes once the test opens the gate."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__(texts)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        self.entered.set()
        await self.gate.wait()
        return await super().transcribe(audio)


async def test_a_turn_transcribed_while_the_call_drains_is_ignored_with_its_span(
    vad: BatchedVADWorker,
) -> None:
    stt = GatedSTT(["What is the capital of France?"])
    config = SessionConfig(speculative_transcript=False, speculative_response=False)
    h = make(vad, stt=stt, config=config)
    try:
        h.feed(np.concatenate([silence(0.3), speak("What is the capital of France?"),
                               silence(1.0)]))
        async with asyncio.timeout(20):
            await stt.entered.wait()
        h.conversation.accepting_turns = False  # what the drain does
        stt.gate.set()
        ignored = await h.wait_for(lambda e: isinstance(e, TurnIgnored))
        final = h.of(TranscriptFinal)[0]
        assert isinstance(ignored, TurnIgnored) and isinstance(final, TranscriptFinal)
        assert ignored.reason == "server_shutting_down"
        assert (ignored.audio_start_ms, ignored.audio_end_ms) == (
            final.audio_start_ms, final.audio_end_ms
        )
        await wait_until(lambda: not h.conversation.busy, 20, "the call is idle")
        assert not h.of(ResponseCreated)
        assert [m["role"] for m in h.conversation.history.messages()] == ["system"]
    finally:
        stt.gate.set()
        await h.conversation.close()


async def test_a_text_waiting_for_a_cut_off_reply_gets_no_reply_once_the_call_drains(
    vad: BatchedVADWorker,
) -> None:
    h = make(
        vad,
        llm=ScriptedLLM(tokens_per_second=100, first_token_ms=5),
        # The cut-off reply settles only when the test reports what was played.
        config=SessionConfig(played_report_timeout_ms=30_000, playback_grace_ms=0),
    )
    try:
        h.conversation.send_text("Tell me a story.")
        first_audio = await h.wait_for(lambda e: isinstance(e, ResponseAudioDelta))
        assert isinstance(first_audio, ResponseAudioDelta)
        h.conversation.send_text("Stop.")  # cuts the reply, then waits for it to settle
        await h.wait_for(lambda e: isinstance(e, ResponseAudioClear))
        h.conversation.accepting_turns = False  # the drain begins meanwhile
        h.conversation.report_played(first_audio.response_id, 100.0)
        ignored = await h.wait_for(lambda e: isinstance(e, TurnIgnored))
        assert isinstance(ignored, TurnIgnored)
        assert (ignored.reason, ignored.audio_start_ms, ignored.audio_end_ms) == (
            "server_shutting_down", 0.0, 0.0
        )
        await wait_until(lambda: not h.conversation.busy, 20, "the call is idle")
        (created,) = h.of(ResponseCreated)
        (done,) = h.of(ResponseDone)
        assert isinstance(created, ResponseCreated) and isinstance(done, ResponseDone)
        assert done.response_id == created.response_id == first_audio.response_id
        assert done.status is ResponseStatus.CANCELLED
        # History holds the story request and what was heard of its reply; the
        # refused "Stop." never entered it.
        messages = h.conversation.history.messages()
        assert messages[1] == {"role": "user", "content": "Tell me a story."}
        assert [m for m in messages[2:] if m["role"] == "user"] == []
    finally:
        await h.conversation.close()


async def test_a_draining_call_starts_no_held_reply(vad: BatchedVADWorker) -> None:
    """The speculative reply is work for a turn that will be refused: not started."""
    llm = ScriptedLLM(tokens_per_second=100, first_token_ms=5)
    h = make(vad, stt=ScriptedSTT(["What is the capital of France?"]), llm=llm)
    try:
        h.conversation.accepting_turns = False
        h.feed(np.concatenate([silence(0.3), speak("What is the capital of France?"),
                               silence(1.0)]))
        ignored = await h.wait_for(lambda e: isinstance(e, TurnIgnored))
        assert isinstance(ignored, TurnIgnored) and ignored.reason == "server_shutting_down"
        await wait_until(lambda: not h.conversation.busy, 20, "the call is idle")
        assert not llm.requests
        assert not h.of(ResponseCreated)
    finally:
        await h.conversation.close()
