"""Piper with the packaged joe voice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from piper import PiperVoice

from pipeline.engines.base import FloatAudio, TTSEngine
from pipeline.engines.piper import PiperTTS
from pipeline.errors import TTSError

LONG_TEXT = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 41))


@pytest.fixture(scope="module")
def tts() -> Iterator[PiperTTS]:
    engine = PiperTTS()
    yield engine
    engine.close()


def _rms(audio: FloatAudio) -> float:
    return float(np.sqrt(np.mean(np.square(audio))))


async def test_two_sentences_stream_as_chunks(tts: PiperTTS) -> None:
    assert tts.sample_rate == 22050
    assert tts.voices() == ["joe"]
    chunks = [chunk async for chunk in tts.synthesize("Hello there. How are you today?")]
    assert len(chunks) >= 2
    assert all(chunk.dtype == np.float32 and chunk.ndim == 1 for chunk in chunks)
    audio = np.concatenate(chunks)
    assert len(audio) >= 0.5 * tts.sample_rate
    assert _rms(audio) > 0.01
    assert float(np.max(np.abs(audio))) <= 1.0


async def test_blank_text_yields_nothing(tts: PiperTTS) -> None:
    assert [chunk async for chunk in tts.synthesize("   ")] == []


async def test_unknown_voice(tts: PiperTTS) -> None:
    with pytest.raises(TTSError, match="unknown voice"):
        async for _ in tts.synthesize("Hi.", voice="nobody"):
            pass


async def test_cancel_after_first_chunk_stops_synthesis(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = [chunk async for chunk in tts.synthesize(LONG_TEXT)]
    assert len(full) >= 20
    # Count the sentences Piper synthesises (each one a chunk it produces).
    synthesized: list[str] = []
    piper_synthesize = PiperVoice.synthesize

    def counting(voice: PiperVoice, text: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for chunk in piper_synthesize(voice, text, *args, **kwargs):
            synthesized.append(text)
            yield chunk

    monkeypatch.setattr(PiperVoice, "synthesize", counting)

    received: list[FloatAudio] = []
    first_chunk = asyncio.Event()

    async def speak() -> None:
        async for chunk in tts.synthesize(LONG_TEXT):
            received.append(chunk)
            first_chunk.set()

    task = asyncio.create_task(speak())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(received) == 1

    # The remaining sentences were not synthesised: the one in progress at the
    # cancel (started before the first was handed over) finished, nothing after
    # it; a new request runs next, on the same worker.
    generator = tts.synthesize("Yes.")
    chunk = await anext(generator)
    await generator.aclose()
    assert _rms(chunk) > 0.01
    assert synthesized.count(LONG_TEXT) <= 2, len(synthesized)
    assert synthesized[-1] == "Yes."


async def test_aclose_after_first_chunk(tts: PiperTTS) -> None:
    generator = tts.synthesize("One. Two. Three. Four.")
    first = await anext(generator)
    await generator.aclose()
    assert len(first) > 0
    with pytest.raises(StopAsyncIteration):
        await anext(generator)


async def test_speaking_speed_is_configurable() -> None:
    slow = PiperTTS(length_scale=1.5)
    try:
        text = "Hello there, how are you today?"
        slow_audio = np.concatenate([chunk async for chunk in slow.synthesize(text)])
    finally:
        slow.close()
    normal = PiperTTS()
    try:
        normal_audio = np.concatenate([chunk async for chunk in normal.synthesize(text)])
    finally:
        normal.close()
    assert len(slow_audio) > 1.2 * len(normal_audio)


def test_satisfies_the_seam(tts: PiperTTS) -> None:
    engine: TTSEngine = tts  # checked by mypy
    assert engine.name == "piper:joe"
