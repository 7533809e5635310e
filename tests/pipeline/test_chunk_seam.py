"""The quiet at a mid-clause seam between two TTS chunks, cut short (no event loop)."""

from __future__ import annotations

import asyncio

import numpy as np

from pipeline.audio import ChunkSeam, pcm16_to_float, trim_leading_quiet, trim_trailing_quiet
from pipeline.chunker import ChunkerConfig, TextChunker
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.engines.piper import PiperTTS
from pipeline.events import Event, ResponseAudioDelta, ResponseDone
from pipeline.vad import BatchedVADWorker, SileroVAD

RATE = 1000  # one sample a millisecond keeps the arithmetic readable


def speech(quiet_before_ms: int, loud_ms: int, quiet_after_ms: int) -> np.ndarray:
    return np.concatenate([
        np.zeros(quiet_before_ms, dtype=np.float32),
        np.full(loud_ms, 0.5, dtype=np.float32),
        np.zeros(quiet_after_ms, dtype=np.float32),
    ])


def played(seam: ChunkSeam, pieces: list[np.ndarray]) -> np.ndarray:
    out = [seam.process(piece) for piece in pieces] + [seam.finish()]
    return np.concatenate(out)


def test_trims_keep_the_asked_margin_and_empty_quiet() -> None:
    audio = speech(50, 100, 200)
    assert len(trim_leading_quiet(audio, RATE, 15)) == 15 + 100 + 200
    assert len(trim_trailing_quiet(audio, RATE, 40)) == 50 + 100 + 40
    assert len(trim_leading_quiet(np.zeros(30, np.float32), RATE, 15)) == 0
    assert len(trim_trailing_quiet(np.zeros(30, np.float32), RATE, 15)) == 0


def test_a_seam_leaves_a_short_gap_between_the_two_chunks() -> None:
    seam = ChunkSeam(RATE)
    seam.start(after_seam=False, before_seam=True)
    first = played(seam, [speech(50, 300, 0), speech(0, 300, 200)])
    seam.start(after_seam=True, before_seam=False)
    second = played(seam, [np.zeros(30, np.float32), speech(20, 400, 150)])
    assert len(first) == 50 + 600 + 40  # its trailing quiet cut to 40 ms
    assert len(second) == 15 + 400 + 150  # its leading quiet (over two pieces) cut to 15 ms
    gap = 40 + 15
    assert gap < 100


def test_audio_plays_at_once_except_the_held_tail() -> None:
    seam = ChunkSeam(RATE, holdback_ms=400)
    seam.start(after_seam=False, before_seam=True)
    assert len(seam.process(speech(0, 1000, 0))) == 600
    assert len(seam.process(speech(0, 100, 0))) == 100
    assert len(seam.finish()) == 400


def test_no_seam_changes_nothing() -> None:
    seam = ChunkSeam(RATE)
    seam.start(after_seam=False, before_seam=False)
    pieces = [speech(50, 300, 0), speech(0, 300, 200)]
    assert np.array_equal(played(seam, pieces), np.concatenate(pieces))


def test_a_retry_drops_what_the_failed_attempt_held() -> None:
    seam = ChunkSeam(RATE)
    seam.start(after_seam=False, before_seam=True)
    seam.process(speech(0, 200, 0))  # all held (under the holdback): nothing played
    seam.start(after_seam=False, before_seam=True)
    assert len(played(seam, [speech(0, 100, 100)])) == 100 + 40


def test_only_a_word_cut_joins_the_next_chunk() -> None:
    chunker = TextChunker(ChunkerConfig(first_chunk_max_words=3))
    chunks = chunker.push("The capital city of France is Paris. It is big. ") + chunker.flush()
    assert [chunk.joins_next for chunk in chunks] == [True, False, False]


async def test_piper_speaks_a_word_cut_reply_without_a_pause_at_the_cut() -> None:
    """The real voice through a real response: the longest quiet inside the first
    sentence, cut after four words, stays a word gap, not a sentence pause."""
    reply = "The capital city of France is Paris."
    longest_quiet: dict[bool, float] = {}
    vad = BatchedVADWorker(SileroVAD())
    await vad.start()
    try:
        for cut in (False, True):
            events: list[Event] = []
            done = asyncio.Event()

            def emit(
                event: Event, events: list[Event] = events, done: asyncio.Event = done
            ) -> None:
                events.append(event)
                if isinstance(event, ResponseDone):
                    done.set()

            engines = Engines(stt=ScriptedSTT(), llm=ScriptedLLM(reply), tts=PiperTTS(), vad=vad)
            config = SessionConfig(
                chunker=ChunkerConfig(first_chunk_max_words=4 if cut else 0)
            )
            conversation = Conversation(engines, emit, config)
            conversation.start()
            try:
                conversation.send_text("Which city is the capital of France?")
                await asyncio.wait_for(done.wait(), 60)
            finally:
                await conversation.close()
            audio = np.concatenate(
                [pcm16_to_float(e.audio) for e in events if isinstance(e, ResponseAudioDelta)]
            )
            rate = next(e.sample_rate for e in events if isinstance(e, ResponseAudioDelta))
            loud = np.abs(audio) > 10 ** (-45 / 20)
            inside = loud[np.argmax(loud) : len(loud) - np.argmax(loud[::-1])]
            runs, run = [], 0
            for sample in inside:
                run = 0 if sample else run + 1
                runs.append(run)
            longest_quiet[cut] = max(runs) / rate * 1000
    finally:
        await vad.stop()
    assert longest_quiet[True] < 150, longest_quiet
    assert longest_quiet[True] < longest_quiet[False] + 60, longest_quiet
