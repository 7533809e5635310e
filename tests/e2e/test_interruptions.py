"""Caller speech over the agent with pause/resume (protocol 1.1), end to end.

The real embedded agent over a real WebSocket: a "mm-hmm" over a reply pauses it
and resumes it, and the reply completes with all of it in history; a real
interruption pauses it and then cancels it, history keeping what was heard.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from agent.client import VoiceForgeClient
from pipeline.events import (
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TurnIgnored,
)
from tests.e2e.caller import Caller
from tests.e2e.conftest import RunningServer
from tests.speech import silence, speak

pytestmark = pytest.mark.e2e

INSTRUCTIONS = (
    "You are a storyteller. Whatever the caller says, tell a story of exactly four "
    "sentences about a dragon who learns to bake bread."
)


async def _reply_audible(client: VoiceForgeClient, caller: Caller) -> str:
    """Ask for a story; return its id once 2.5 s of it is queued and 0.8 s played."""
    caller.say(speak("Tell me a story please."))
    created = await caller.wait_for(lambda m: isinstance(m, ResponseCreated), 60)
    assert isinstance(created, ResponseCreated)
    response_id = created.response_id
    rate = int(client.session["output_sample_rate"])
    await caller.wait_for(lambda m: len(caller.audio_of(response_id)) >= 2.5 * rate, 90)
    first_audio = client.first_audio_at[response_id]
    await asyncio.sleep(max(0.0, first_audio + 0.8 - time.monotonic()))
    return response_id


def _index(caller: Caller, kind: type, response_id: str) -> int:
    return next(
        i for i, (_, m) in enumerate(caller.log)
        if isinstance(m, kind) and getattr(m, "response_id", None) == response_id
    )


async def test_mm_hmm_over_a_reply_pauses_and_resumes_it(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        assert client.created.protocol_minor >= 1
        session = await client.update_session(
            instructions=INSTRUCTIONS, max_response_tokens=120, playback_pause=True
        )
        assert session["playback_pause"] is True
        caller = Caller(client)
        caller.start()
        try:
            response_id = await _reply_audible(client, caller)
            caller.say(np.concatenate([speak("Mm-hmm."), silence(0.2)]))
            await caller.wait_for(lambda m: isinstance(m, ResponseAudioPause), 30)
            await caller.wait_for(lambda m: isinstance(m, ResponseAudioResume), 30)
            done = await caller.wait_for(
                lambda m: isinstance(m, ResponseDone) and m.response_id == response_id, 180
            )
            assert isinstance(done, ResponseDone)
            assert done.status is ResponseStatus.COMPLETED, done
            assert done.text_heard == done.text.strip()
            assert not caller.messages(ResponseAudioClear)
            pause_at = _index(caller, ResponseAudioPause, response_id)
            resume_at = _index(caller, ResponseAudioResume, response_id)
            assert not [
                m for _, m in caller.log[pause_at:resume_at] if isinstance(m, ResponseAudioDelta)
            ], "no audio of a paused reply until its resume"
            # The "mm-hmm" was not answered: the one reply is the story, all of it heard.
            ignored = await caller.wait_for(lambda m: isinstance(m, TurnIgnored), 30)
            assert isinstance(ignored, TurnIgnored)
            assert ignored.reason in ("backchannel", "short_speech_during_response")
            assert len(caller.messages(ResponseCreated)) == 1
            conversation = server.conversation(client.session_id)
            messages = conversation.history.messages()  # type: ignore[attr-defined]
            assert [m["role"] for m in messages] == ["system", "user", "assistant"]
            assert messages[2]["content"] == done.text.strip()
            assert client.playback.underruns == 0 or done.played_ms == done.audio_ms
        finally:
            await caller.stop()


async def test_a_real_interruption_pauses_then_cancels(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.update_session(
            instructions=INSTRUCTIONS, max_response_tokens=120, playback_pause=True
        )
        caller = Caller(client)
        caller.start()
        try:
            response_id = await _reply_audible(client, caller)
            caller.say(np.concatenate([speak("Stop, wait a moment."), silence(0.2)]))
            done = await caller.wait_for(
                lambda m: isinstance(m, ResponseDone) and m.response_id == response_id, 60
            )
            assert isinstance(done, ResponseDone)
            assert done.status is ResponseStatus.CANCELLED and done.reason == "barge_in"
            pause_at = _index(caller, ResponseAudioPause, response_id)
            clear_at = caller.index_of_clear(response_id)
            done_at = next(i for i, (_, m) in enumerate(caller.log) if m is done)
            assert pause_at < clear_at < done_at
            assert not caller.messages(ResponseAudioResume)
            stale = [
                m for _, m in caller.log[pause_at:]
                if isinstance(m, ResponseAudioDelta) and m.response_id == response_id
            ]
            assert stale == [], "no audio of the reply after its pause, so none after its clear"
            assert client.playback.dropped_after_clear == 0
            # Heard is what played up to the pause; history keeps exactly that.
            assert 0 < done.played_ms < done.audio_ms
            heard_words = done.text_heard.split()
            assert heard_words and len(heard_words) < len(done.text.split())
            assert done.text.split()[: len(heard_words)] == heard_words
            conversation = server.conversation(client.session_id)
            messages = conversation.history.messages()  # type: ignore[attr-defined]
            assert messages[2] == {"role": "assistant", "content": done.text_heard}
            next_done = await caller.wait_for(
                lambda m: isinstance(m, ResponseDone) and m.response_id != response_id, 90
            )
            assert isinstance(next_done, ResponseDone)
        finally:
            await caller.stop()
