"""Shared by the engines that run a model on one worker thread.

``iterate_in_thread`` turns a blocking iterator into an async generator: each
item is produced on the engine's executor, the next one is started before the
current one is handed over, and closing or cancelling stops after the item in
progress. ``pick_voice`` resolves a voice name the same way for every TTS engine.
``transcribe_in_thread`` runs a recogniser's blocking transcription of a whole
utterance on its executor, with the checks and timing every local STT engine gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, duration_ms
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.errors import STTError, TTSError

Item = TypeVar("Item")
Voice = TypeVar("Voice")


async def transcribe_in_thread(
    executor: ThreadPoolExecutor, name: str, closed: bool, audio: FloatAudio,
    blocking: Callable[[FloatAudio], str],
) -> Transcript:
    """``blocking(samples)`` on ``executor`` for a mono utterance, timed. Raises
    STTError: for audio that is not mono, a closed engine (permanent) or a failure."""
    if audio.ndim != 1:
        raise STTError(f"{name}: expected mono audio, got shape {audio.shape}")
    if closed:
        raise STTError(f"{name}: engine is closed", transient=False)
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        text = await loop.run_in_executor(executor, blocking, samples)
    except Exception as error:
        raise STTError(f"{name}: transcription failed: {error}") from error
    return Transcript(
        text=text,
        audio_ms=duration_ms(len(samples), PIPELINE_SAMPLE_RATE),
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


def pick_voice(voices: Mapping[str, Voice], name: str | None, default: str) -> Voice:
    """The voice called ``name`` (``default`` when None). Raises a permanent TTSError."""
    voice_name = name or default
    selected = voices.get(voice_name)
    if selected is None:
        known = ", ".join(voices) or "none"
        raise TTSError(f"unknown voice {voice_name!r} (known: {known})", transient=False)
    return selected


async def iterate_in_thread(
    executor: ThreadPoolExecutor, items: Iterator[Item], engine_name: str
) -> AsyncGenerator[Item, None]:
    """Yield ``items`` produced on ``executor``; a failure becomes a TTSError."""
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(executor, _next_or_none, items)
    try:
        while True:
            try:
                item = await pending
            except Exception as error:
                raise TTSError(f"{engine_name}: synthesis failed: {error}") from error
            if item is None:
                return
            # Start the next item before handing this one over.
            pending = loop.run_in_executor(executor, _next_or_none, items)
            yield item
    finally:
        # Either done, or cancelled: the item in progress finishes, nothing after it.
        pending.cancel()
        with contextlib.suppress(RuntimeError):  # executor already shut down
            executor.submit(_close_quietly, items)


def _next_or_none(items: Iterator[Item]) -> Item | None:
    return next(items, None)


def _close_quietly(items: Iterator[object]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()
