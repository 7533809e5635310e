"""faster-whisper tiny.en on real espeak-ng speech."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.engines.base import STTEngine
from pipeline.engines.whisper import WhisperSTT
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
