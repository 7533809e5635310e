"""faster-whisper tiny.en on real espeak-ng speech."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.engines import whisper
from pipeline.engines.base import STTEngine
from pipeline.engines.whisper import (
    DECODE_MIN_TOKENS,
    WHISPER_MAX_NEW_TOKENS,
    WhisperSTT,
    decode_token_budget,
)
from pipeline.errors import STTError
from tests.speech import silence, speak


@pytest.fixture(scope="module")
def stt() -> Iterator[WhisperSTT]:
    engine = WhisperSTT()
    yield engine
    engine.close()


async def test_transcribes_a_question(stt: WhisperSTT) -> None:
    audio = speak("What is the capital of France?", 16000)
    transcript = await stt.transcribe(audio)
    text = transcript.text.lower()
    assert "capital" in text and "france" in text
    assert transcript.audio_ms == pytest.approx(len(audio) / 16.0)
    assert transcript.elapsed_ms > 0
    assert stt.name == "faster-whisper:tiny.en"


async def test_quiet_question_is_not_dropped(stt: WhisperSTT) -> None:
    """A faint utterance must come back as text, not be skipped as no-speech."""
    audio = (speak("What is the capital of France?", 16000) * 0.01).astype(np.float32)
    transcript = await stt.transcribe(audio)
    assert "capital" in transcript.text.lower()


async def test_silence_does_not_raise(stt: WhisperSTT) -> None:
    transcript = await stt.transcribe(silence(1.0, 16000))
    assert transcript.audio_ms == pytest.approx(1000.0)
    assert isinstance(transcript.text, str)


async def test_empty_audio_is_empty_text(stt: WhisperSTT) -> None:
    transcript = await stt.transcribe(np.zeros(0, dtype=np.float32))
    assert transcript.text == ""


async def test_concurrent_calls_are_serialised(stt: WhisperSTT) -> None:
    audio = speak("Turn on the lights.", 16000)
    results = await asyncio.gather(*(stt.transcribe(audio) for _ in range(3)))
    assert all("light" in result.text.lower() for result in results)


async def test_stereo_audio_is_refused(stt: WhisperSTT) -> None:
    with pytest.raises(STTError, match="mono"):
        await stt.transcribe(np.zeros((2, 16000), dtype=np.float32))


async def test_closed_engine_raises() -> None:
    engine = WhisperSTT()
    engine.close()
    with pytest.raises(STTError, match="closed"):
        await engine.transcribe(silence(0.5, 16000))


def test_satisfies_the_seam(stt: WhisperSTT) -> None:
    engine: STTEngine = stt  # checked by mypy
    assert engine.name


def test_the_decode_budget_grows_with_the_audio_and_stops_at_whispers_limit() -> None:
    assert decode_token_budget(0.0) == DECODE_MIN_TOKENS
    assert decode_token_budget(3.0) == 30 + DECODE_MIN_TOKENS
    assert decode_token_budget(3.01) == 31 + DECODE_MIN_TOKENS
    assert decode_token_budget(600.0) == WHISPER_MAX_NEW_TOKENS


async def test_fast_speech_fits_the_decode_budget(
    stt: WhisperSTT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digits read quickly make the most tokens per second a caller can: the budget
    leaves their transcript exactly as an unbounded decode writes it."""
    audio = speak("My number is four one five, two two three, nine eight seven six.",
                  16000, words_per_minute=260)
    bounded = (await stt.transcribe(audio)).text
    monkeypatch.setattr(whisper, "DECODE_TOKENS_PER_S", 1000.0)
    assert bounded == (await stt.transcribe(audio)).text
    assert sum(char.isdigit() for char in bounded) >= 8, bounded


async def test_the_decode_stops_at_the_budget(
    stt: WhisperSTT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no budget per second, only the minimum's few tokens come back: the bound
    reaches the decoder (a looping decode stops there too)."""
    monkeypatch.setattr(whisper, "DECODE_TOKENS_PER_S", 0.0)
    monkeypatch.setattr(whisper, "DECODE_MIN_TOKENS", 3)
    audio = speak("The quick brown fox jumps over the lazy dog by the river bank.", 16000)
    words = (await stt.transcribe(audio)).text.split()
    assert 1 <= len(words) <= 3, words
