"""Reading the caller's words ahead of the end of their turn (pipeline/read_ahead.py).

The words chosen from a partial transcript, the interval, and inside a conversation:
real Silero VAD on real (Piper) speech, scripted STT, and a scripted LLM that says
whether it is idle and records what it was asked to read. The engine's side (a real
GGUF reading fewer tokens after a read) is in test_llama.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from loadtest.turn_examples import turn_examples, with_silence
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.engines.base import ChatMessage, WordReadingLLM
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.events import Event, ResponseDone, ResponseStatus, SpeechStopped, TranscriptDelta
from pipeline.history import History
from pipeline.read_ahead import read_ahead, transcribing_interval_ms, words_to_read
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.pipeline.test_conversation import Harness


class ReadingLLM(ScriptedLLM):
    """A scripted model that reads ahead: records each read and when it came."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.idle = True
        self.stops = 0
        self.reads: list[tuple[list[ChatMessage], bool]] = []
        """(messages, whether the caller had stopped speaking yet)."""
        self._events = events

    def read_words(self, messages: Sequence[ChatMessage]) -> bool:
        stopped = any(isinstance(e, SpeechStopped) for e in self._events)
        self.reads.append(([m.copy() for m in messages], stopped))
        return True

    def stop_reading(self) -> None:
        self.stops += 1


@pytest.mark.parametrize(
    ("partial", "words"),
    [
        ("What is the capital of Aus", "What is the capital of"),
        ("What is the capital of Australia?", "What is the capital of"),
        ("I need butter, two lemons.", "I need butter, two"),
        ("My number is four one five, two.", "My number is four one five"),
        ("Hello there.", None),  # one word left: not worth a read
        ("Yes", None),
        ("", None),
        ("Well , then", None),  # the stray comma is no word
    ],
)
def test_the_last_word_and_the_recognisers_closing_punctuation_are_left_out(
    partial: str, words: str | None
) -> None:
    assert words_to_read(partial) == words


def test_partials_run_as_often_as_the_client_or_the_reader_asks() -> None:
    events: list[Event] = []
    reading = ReadingLLM(events)
    assert isinstance(reading, WordReadingLLM)
    plain = ScriptedLLM()
    config = SessionConfig(read_ahead_interval_ms=500.0)
    assert transcribing_interval_ms(reading, config) == 500.0
    assert transcribing_interval_ms(plain, config) == 0.0  # a model that cannot read
    both = SessionConfig(read_ahead_interval_ms=500.0, partial_transcript_interval_ms=300.0)
    assert transcribing_interval_ms(reading, both) == 300.0
    assert transcribing_interval_ms(plain, both) == 300.0
    assert transcribing_interval_ms(reading, SessionConfig()) == 0.0


def test_a_read_is_the_history_with_the_words_as_the_last_user_turn() -> None:
    reading = ReadingLLM([])
    history = History("Be brief.")
    history.add_user("Hello.")
    history.add_assistant("Hi! How can I help?")
    before = history.messages()
    assert read_ahead(reading, history, "Book me a table for tw")
    (messages, _), = reading.reads
    assert messages[:-1] == before
    assert messages[-1] == {"role": "user", "content": "Book me a table for"}
    assert history.messages() == before  # the call's own history is untouched
    reading.idle = False
    assert not read_ahead(reading, history, "Book me a table for two")
    assert not read_ahead(ReadingLLM([]), history, "Yes")
    assert len(reading.reads) == 1


@pytest.fixture
async def vad() -> AsyncIterator[BatchedVADWorker]:
    worker = BatchedVADWorker(SileroVAD())
    await worker.start()
    yield worker
    await worker.stop()


def _conversation(
    vad: BatchedVADWorker, config: SessionConfig, stt: ScriptedSTT
) -> tuple[Harness, ReadingLLM]:
    events: list[Event] = []
    llm = ReadingLLM(events)
    engines = Engines(stt=stt, llm=llm, tts=ToneTTS(), vad=vad)
    conversation = Conversation(engines, events.append, config)
    conversation.start()
    return Harness(conversation, events), llm


def _question() -> np.ndarray:
    question = next(e for e in turn_examples() if e.prefix == "What is the capital of")
    return np.concatenate([np.zeros(4800, np.float32), with_silence(question.complete, 700)])


async def test_words_are_read_while_the_caller_speaks_and_the_reply_still_comes(
    vad: BatchedVADWorker,
) -> None:
    stt = ScriptedSTT(["What is", "What is the capital", "What is the capital of Australia?"])
    config = SessionConfig(read_ahead_interval_ms=300.0, playback_grace_ms=0.0)
    h, llm = _conversation(vad, config, stt)
    try:
        h.feed(_question())
        done = await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert isinstance(done, ResponseDone) and done.status is ResponseStatus.COMPLETED
        assert llm.reads, "no read while the caller spoke"
        for messages, stopped in llm.reads:
            assert not stopped  # only while the caller is still speaking
            assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert llm.reads[0][0][-1]["content"] == "What is the"
        assert llm.stops == len(h.of(SpeechStopped)) >= 1  # told at every pause
        assert h.of(TranscriptDelta) == []  # the client asked for no partials
    finally:
        await h.conversation.close()


async def test_no_partial_is_made_for_a_model_that_is_busy(vad: BatchedVADWorker) -> None:
    stt = ScriptedSTT(["What is the capital of Australia?"])
    config = SessionConfig(read_ahead_interval_ms=300.0, playback_grace_ms=0.0)
    h, llm = _conversation(vad, config, stt)
    llm.idle = False
    try:
        h.feed(_question())
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert llm.reads == []
        # Each transcript was a speculative one at a pause: none while speaking.
        assert stt.calls <= len(h.of(SpeechStopped))
    finally:
        await h.conversation.close()


async def test_client_partials_keep_their_own_interval_beside_the_reads(
    vad: BatchedVADWorker,
) -> None:
    stt = ScriptedSTT(["What is the capital of Australia?"])
    config = SessionConfig(
        read_ahead_interval_ms=250.0, partial_transcript_interval_ms=10_000.0,
        playback_grace_ms=0.0,
    )
    h, llm = _conversation(vad, config, stt)
    try:
        h.feed(_question())
        await h.wait_for(lambda e: isinstance(e, ResponseDone))
        assert len(llm.reads) >= 2
        assert h.of(TranscriptDelta) == []  # the turn is shorter than 10 s
    finally:
        await h.conversation.close()


def test_a_new_calls_read_ahead_follows_its_model_and_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On by default where the model reads ahead (the in-process one), off where it
    cannot (bench or remote engines); the operator's setting wins, never under the
    floor of partial transcripts; a session may ask within the same floor."""
    from agent.bridge import session_view
    from agent.config import Settings
    from agent.protocol import SessionCaps, parse_session_fields
    from agent.state import AppState
    from pipeline.errors import ConfigurationError
    from pipeline.read_ahead import DEFAULT_READ_AHEAD_INTERVAL_MS

    def interval(settings: Settings, llm: object) -> float:
        engines = Engines(stt=None, llm=llm, tts=None, vad=None)  # type: ignore[arg-type]
        config = AppState(settings, engines).session_config()
        view: float = session_view(config)["read_ahead_interval_ms"]
        assert view == config.read_ahead_interval_ms
        return view

    reading = ReadingLLM([])
    assert interval(Settings(), reading) == DEFAULT_READ_AHEAD_INTERVAL_MS == 500.0
    assert interval(Settings(), ScriptedLLM()) == 0.0
    assert interval(Settings(read_ahead_interval_ms=0.0), reading) == 0.0
    assert interval(Settings(read_ahead_interval_ms=800.0), ScriptedLLM()) == 800.0
    floor = Settings(read_ahead_interval_ms=100.0, min_partial_transcript_interval_ms=250.0)
    assert interval(floor, reading) == 250.0
    monkeypatch.setenv("VOICEFORGE_READ_AHEAD_INTERVAL_MS", "700")
    assert Settings.from_env().read_ahead_interval_ms == 700.0
    monkeypatch.setenv("VOICEFORGE_READ_AHEAD_INTERVAL_MS", "20000")
    with pytest.raises(ConfigurationError, match=r"read_ahead_interval_ms must be within"):
        Settings.from_env().validate()

    caps = SessionCaps(min_partial_transcript_interval_ms=250.0)
    assert parse_session_fields({"read_ahead_interval_ms": 1}, [], caps) == {
        "read_ahead_interval_ms": 250.0
    }
    assert parse_session_fields({"read_ahead_interval_ms": 0}, [], caps) == {
        "read_ahead_interval_ms": 0.0
    }
    from agent.protocol import ProtocolError

    for bad in (-1, 10_001, "500", True, None):
        with pytest.raises(ProtocolError) as caught:
            parse_session_fields({"read_ahead_interval_ms": bad}, [], caps)
        assert caught.value.code == "invalid_session"
