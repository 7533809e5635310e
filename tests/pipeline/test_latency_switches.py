"""The switches the load test measures on and off, and the server-overhead timing."""

from __future__ import annotations

import numpy as np
import pytest

from agent.protocol import parse_session_fields
from agent.server import session_view
from pipeline.chunker import ChunkerConfig, TextChunker
from pipeline.conversation import SessionConfig
from pipeline.events import ResponseDone
from pipeline.vad import BatchedVADWorker
from tests.pipeline.test_conversation import make
from tests.speech import silence, speak

REPLY = "Well, the capital of France, as you know, is Paris. It is lovely."


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("What is the capital of France?")



async def _one_turn(
    vad: BatchedVADWorker, question: np.ndarray, config: SessionConfig
) -> dict[str, float]:
    h = make(vad, config=config)
    try:
        h.feed(np.concatenate([silence(0.3), question, silence(1.0)]))
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone)
        return done.timings
    finally:
        await h.conversation.close()


async def test_overhead_is_first_audio_from_the_end_of_turn(
    vad: BatchedVADWorker, question: np.ndarray
) -> None:
    timings = await _one_turn(vad, question, SessionConfig(playback_grace_ms=0))
    assert timings["speculative_response"] == 1.0
    assert timings["end_of_turn_to_first_audio_ms"] == pytest.approx(
        timings["end_of_speech_to_first_audio_ms"] - timings["end_of_turn_wait_ms"]
    )


async def test_without_speculative_transcription_stt_waits_for_the_end_of_turn(
    vad: BatchedVADWorker, question: np.ndarray
) -> None:
    config = SessionConfig(playback_grace_ms=0, speculative_transcript=False)
    timings = await _one_turn(vad, question, config)
    assert timings["speculative_transcript"] == 0.0
    assert "speculative_response" not in timings  # nothing to start a reply on early
    assert timings["end_of_turn_to_first_audio_ms"] >= 0.0


def test_the_first_chunk_waits_for_the_sentence_when_asked() -> None:
    clause = TextChunker(ChunkerConfig()).push(REPLY)
    sentence = TextChunker(ChunkerConfig(first_chunk_at_clause=False)).push(REPLY)
    assert clause[0].text == "Well, the capital of France,"
    assert sentence[0].text == "Well, the capital of France, as you know, is Paris."


def test_the_switches_travel_in_session_update() -> None:
    changes = parse_session_fields(
        {"speculative_transcript": False, "first_chunk_at_clause": False}, ["tone"]
    )
    assert changes == {"speculative_transcript": False, "first_chunk_at_clause": False}
    view = session_view(SessionConfig())
    assert view["speculative_transcript"] is True and view["first_chunk_at_clause"] is True


def test_the_first_chunk_word_limit_travels_in_session_update() -> None:
    changes = parse_session_fields({"first_chunk_max_words": 4}, ["tone"])
    assert changes == {"first_chunk_max_words": 4}
    assert session_view(SessionConfig())["first_chunk_max_words"] == 0
    view = session_view(SessionConfig(chunker=ChunkerConfig(first_chunk_max_words=4)))
    assert view["first_chunk_max_words"] == 4
    for bad in (-1, 65, 2.5, True, "4"):
        with pytest.raises(Exception, match="first_chunk_max_words"):
            parse_session_fields({"first_chunk_max_words": bad}, ["tone"])


def test_first_chunk_priority_travels_in_session_update() -> None:
    assert parse_session_fields({"first_chunk_priority": False}, ["tone"]) == {
        "first_chunk_priority": False
    }
    assert session_view(SessionConfig())["first_chunk_priority"] is True
