"""Engines for the process host's mechanics tests (test_process_host.py), importable
by the child. Each records what happened to it in a folder the test reads, because
the child's memory is out of the test's reach. The real engines in children (tiny
Chatterbox, Whisper tiny.en) are tested in test_hosted_engines.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from pipeline.engines.base import Transcript
from pipeline.errors import STTError, TTSError


class CountingTTS:
    """Yields ``chunks`` chunks of 10 ms each ``delay_s``; every chunk's first
    sample is its index. Writes ``cancelled-<text>`` when a synthesis is cancelled."""

    name = "counting"
    sample_rate = 16_000
    default_voice = "a"

    def __init__(self, folder: str, delay_s: float = 0.0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.delay_s = delay_s
        self._voices = ["a"]
        if progress is not None:
            progress("counting engine loaded")

    def warm_up(self) -> dict[str, int]:
        return {"a": 1}

    def voices(self) -> list[str]:
        return list(self._voices)

    async def add_voice(self, name: str, reference: Path) -> None:
        if not await asyncio.to_thread(Path(reference).is_file):
            raise TTSError(f"no reference at {reference}", transient=False)
        self._voices.append(name)

    async def remove_voice(self, name: str) -> None:
        self._voices.remove(name)

    async def synthesize(self, text: str, *, voice: str | None = None
                         ) -> AsyncIterator[np.ndarray]:
        if text == "fail":
            raise TTSError("asked to fail", transient=False)
        if text == "bug":
            raise ZeroDivisionError("a bug")
        if text == "die":
            os._exit(3)
        count = int(text.split()[0]) if text.split()[0].isdigit() else 3
        try:
            for index in range(count):
                chunk = np.zeros(160, dtype=np.float32)
                chunk[0] = index
                yield chunk
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            (self.folder / f"cancelled-{text}").write_text(voice or "")
            raise


class FailingEngine:
    def __init__(self) -> None:
        raise RuntimeError("no weights here")


class EchoSTT:
    """Transcribes to the number of samples it was sent and their sum."""

    name = "echo-stt"

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        if len(audio) == 0:
            raise STTError("empty audio", transient=False)
        return Transcript(f"{len(audio)} {float(audio.sum()):.1f}", len(audio) / 16.0, 0.0)
