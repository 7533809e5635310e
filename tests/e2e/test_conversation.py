"""A caller talks to the real embedded agent over a real WebSocket.

Real speech (espeak-ng) in, real transcripts (faster-whisper), real replies
(llama.cpp), real audio out (Piper). Each test streams in real time.
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
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TranscriptFinal,
)
from tests.e2e.caller import Caller
from tests.e2e.conftest import RunningServer
from tests.speech import silence, speak

pytestmark = pytest.mark.e2e


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0


async def test_a_question_gets_a_spoken_answer_and_the_next_turn_sees_it(
    server: RunningServer,
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        caller = Caller(client)
        caller.start()
        try:
            caller.say(speak("What is the capital of France?"))
            done = await caller.wait_done(60)
            assert done.status is ResponseStatus.COMPLETED
            transcript = caller.messages(TranscriptFinal)[0]
            assert isinstance(transcript, TranscriptFinal)
            assert "capital" in transcript.text.lower() and "france" in transcript.text.lower()
            assert done.text.strip(), "the reply has text"
            audio = caller.audio_of(done.response_id)
            rate = int(client.session["output_sample_rate"])
            assert len(audio) / rate >= 0.5, "at least half a second of reply audio"
            assert _rms(audio) > 0.01, "the reply audio is not silent"
            assert done.text_heard == done.text.strip()
            for stage in (
                "end_of_speech_to_first_audio_ms",
                "end_of_turn_wait_ms",
                "stt_ms",
                "llm_first_token_ms",
                "first_chunk_text_ms",
                "tts_first_audio_ms",
            ):
                assert done.timings[stage] >= 0, stage

            first_turn = len(caller.log)
            caller.say(speak("And what is the capital of Germany?"))
            second = await caller.wait_done(60, after=first_turn)
            assert second.status is ResponseStatus.COMPLETED
            conversation = server.conversation(client.session_id)
            messages = conversation.history.messages()  # type: ignore[attr-defined]
            roles = [m["role"] for m in messages]
            assert roles == ["system", "user", "assistant", "user", "assistant"]
            assert "france" in messages[1]["content"].lower()
            assert messages[2]["content"] == done.text_heard
            assert "germany" in messages[3]["content"].lower()
        finally:
            await caller.stop()


async def test_barge_in_clears_audio_cancels_and_truncates_history(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.update_session(
            instructions=(
                "You are a storyteller. Whatever the caller says, tell a long story of at "
                "least eight sentences about a dragon who learns to bake bread."
            ),
            max_response_tokens=300,
        )
        caller = Caller(client)
        caller.start()
        try:
            caller.say(speak("Tell me a story please."))
            created = await caller.wait_for(lambda m: isinstance(m, ResponseCreated), 60)
            assert isinstance(created, ResponseCreated)
            response_id = created.response_id
            # Interrupt 0.8 s into the story once 2.5 s of it is queued, so the barge-in
            # (speech onset + 300 ms) lands mid-reply even on a loaded machine and even
            # when the small model tells a short story.
            rate = int(client.session["output_sample_rate"])
            await caller.wait_for(
                lambda m: len(caller.audio_of(response_id)) >= 2.5 * rate, 90
            )
            first_audio = client.first_audio_at[response_id]
            await asyncio.sleep(max(0.0, first_audio + 0.8 - time.monotonic()))
            caller.say(np.concatenate([speak("Stop, wait a moment."), silence(0.2)]))
            done = await caller.wait_for(
                lambda m: isinstance(m, ResponseDone) and m.response_id == response_id, 30
            )
            assert isinstance(done, ResponseDone)
            assert done.status is ResponseStatus.CANCELLED
            assert done.reason == "barge_in"

            clear_at = caller.index_of_clear(response_id)
            done_at = next(i for i, (_, m) in enumerate(caller.log) if m is done)
            assert clear_at < done_at, "clear comes before done(cancelled)"
            stale = [
                m
                for _, m in caller.log[clear_at:]
                if isinstance(m, ResponseAudioDelta) and m.response_id == response_id
            ]
            assert stale == [], "no audio of the cancelled response after its clear"
            assert isinstance(caller.log[clear_at][1], ResponseAudioClear)

            # What was heard is what history keeps: shorter than what was generated.
            assert 0 < done.played_ms < done.audio_ms
            heard_words = done.text_heard.split()
            assert heard_words, "something was heard before the interruption"
            assert len(heard_words) < len(done.text.split())
            assert done.text.split()[: len(heard_words)] == heard_words
            conversation = server.conversation(client.session_id)
            messages = conversation.history.messages()  # type: ignore[attr-defined]
            assert messages[2] == {"role": "assistant", "content": done.text_heard}

            # The interruption is a new turn that proceeds as usual: it is answered out
            # loud (its reply's first audio; waiting for the whole reply would time the
            # storyteller's story, up to 300 tokens played in real time).
            next_audio = await caller.wait_for(
                lambda m: isinstance(m, ResponseAudioDelta) and m.response_id != response_id,
                60,
            )
            assert isinstance(next_audio, ResponseAudioDelta)
            finals = [m.text.lower() for m in caller.messages(TranscriptFinal)]
            assert any("stop" in text or "moment" in text for text in finals), finals
        finally:
            await caller.stop()


async def test_typed_text_gets_a_spoken_answer(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        caller = Caller(client)
        caller.start()
        try:
            await client.send_text("Say hello in five words.")
            done = await caller.wait_done(60)
            assert done.status is ResponseStatus.COMPLETED
            assert done.text.strip()
            assert _rms(caller.audio_of(done.response_id)) > 0.01
        finally:
            await caller.stop()
