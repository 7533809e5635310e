"""The ``bench`` engines: deterministic stand-ins with the real interfaces.

They exist to measure the server's own overhead and capacity apart from the
models, and to test the orchestrator's mechanics with exact timing. They are
never the default and never what makes a feature done: the embedded engines are
tested for real.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

import numpy as np

from pipeline.engines.base import ChatMessage, FloatAudio, Transcript


class ScriptedSTT:
    """Returns scripted transcripts in turn (the last one repeats).

    ``failures`` makes the next N calls raise the given error (fault tests).
    """

    name = "bench:scripted-stt"

    def __init__(self, texts: Sequence[str] = ("What is the capital of France?",), *,
                 delay_ms: float = 0.0) -> None:
        self.texts = list(texts)
        self.delay_ms = delay_ms
        self.calls = 0
        self.failures: list[BaseException] = []

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        started = time.monotonic()
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if self.failures:
            raise self.failures.pop(0)
        text = self.texts[min(self.calls, len(self.texts) - 1)]
        self.calls += 1
        return Transcript(text, len(audio) / 16.0, (time.monotonic() - started) * 1000)


class ScriptedLLM:
    """Streams a scripted reply word by word at ``tokens_per_second``.

    ``failures`` makes the next N calls raise the given error before any token.
    """

    name = "bench:scripted-llm"

    def __init__(
        self,
        reply: str = "The capital of France is Paris. It is known for the Eiffel Tower.",
        *,
        tokens_per_second: float = 50.0,
        first_token_ms: float = 50.0,
    ) -> None:
        self.reply = reply
        self.tokens_per_second = tokens_per_second
        self.first_token_ms = first_token_ms
        # Bounded: a bench server runs for hours under load.
        self.requests: deque[list[ChatMessage]] = deque(maxlen=100)
        self.failures: list[BaseException] = []
        self.closed_early = 0

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.requests.append(list(messages))
        if self.failures:
            raise self.failures.pop(0)
        words = self.reply.split(" ")
        finished = False
        try:
            await asyncio.sleep(self.first_token_ms / 1000)
            for i, word in enumerate(words[:max_tokens]):
                if i:
                    await asyncio.sleep(1 / self.tokens_per_second)
                yield word if i == 0 else " " + word
            finished = True
        finally:
            if not finished:
                self.closed_early += 1


class ToneTTS:
    """A 220 Hz tone, ``ms_per_char`` long per character, in chunks of ``chunk_ms``.

    Fault tests: ``failures`` makes the next N calls raise before any audio,
    ``failures_midway`` after their first chunk.
    """

    name = "bench:tone-tts"

    def __init__(self, sample_rate: int = 24000, *, ms_per_char: float = 60.0,
                 chunk_ms: float = 200.0, realtime_factor: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.realtime_factor = realtime_factor
        """Seconds of compute simulated per second of audio (0: instant)."""
        self.texts: deque[str] = deque(maxlen=100)
        self.failures: list[BaseException] = []
        self.failures_midway: list[BaseException] = []

    def voices(self) -> Sequence[str]:
        return ["tone"]

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        self.texts.append(text)
        if self.failures:
            raise self.failures.pop(0)
        midway = self.failures_midway.pop(0) if self.failures_midway else None
        total = int(len(text) * self.ms_per_char * self.sample_rate / 1000)
        step = int(self.chunk_ms * self.sample_rate / 1000)
        for start in range(0, total, step):
            if midway is not None and start > 0:
                raise midway
            n = min(step, total - start)
            if self.realtime_factor:
                await asyncio.sleep(n / self.sample_rate * self.realtime_factor)
            else:
                await asyncio.sleep(0)
            t = (np.arange(start, start + n) / self.sample_rate).astype(np.float32)
            yield (0.3 * np.sin(2 * math.pi * 220.0 * t)).astype(np.float32)
