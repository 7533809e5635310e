"""Text to speech with Piper (ONNX, CPU), one chunk per sentence, on one worker thread.

Piper synthesises sentence by sentence; each sentence is a chunk we yield as soon
as it exists. While the consumer handles one chunk the worker already synthesises
the next, and cancelling stops after the chunk in progress: the iterator is
closed on the same worker thread, so the next synthesis queues behind it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import resample
from pipeline.engines.base import FloatAudio
from pipeline.engines.threaded import iterate_in_thread, pick_voice
from pipeline.errors import ConfigurationError, ModelLoadError
from pipeline.models import piper_voice_paths

DEFAULT_VOICE = "joe"


class PiperTTS:
    """Piper voices by name; ``joe`` (en_US-joe-medium) unless told otherwise."""

    def __init__(
        self,
        voices: str | Path | Mapping[str, str | Path] | None = None,
        *,
        default_voice: str | None = None,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        """``voices``: a name→onnx mapping, one onnx path, or None for the joe voice.

        ``length_scale`` > 1 speaks slower; None keeps each voice's own settings.
        """
        from piper import PiperVoice, SynthesisConfig

        library = _voice_library(voices)
        self.default_voice = default_voice or next(iter(library))
        if self.default_voice not in library:
            raise ConfigurationError(f"default voice {self.default_voice!r} is not in {library}")
        self.name = f"piper:{self.default_voice}"
        self._config: Any = SynthesisConfig(
            length_scale=length_scale,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            volume=volume,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")
        self._voices: dict[str, Any] = {}
        try:
            for voice_name, onnx in library.items():
                self._voices[voice_name] = self._executor.submit(PiperVoice.load, onnx).result()
        except Exception as error:
            self._executor.shutdown(wait=True)
            raise ModelLoadError(f"cannot load Piper voice {onnx}: {error}") from error
        self.sample_rate: int = int(self._voices[self.default_voice].config.sample_rate)

    def voices(self) -> Sequence[str]:
        return list(self._voices)

    async def synthesize(
        self, text: str, *, voice: str | None = None
    ) -> AsyncGenerator[FloatAudio, None]:
        """Yield float32 chunks at ``sample_rate``, one per sentence, as produced."""
        piper_voice = pick_voice(self._voices, voice, self.default_voice)
        if not text.strip():
            return
        chunks: Iterator[Any] = iter(piper_voice.synthesize(text, self._config))
        items = iterate_in_thread(self._executor, chunks, self.name)
        try:
            async for chunk in items:
                yield self._to_output(chunk)
        finally:
            await items.aclose()

    def _to_output(self, chunk: Any) -> FloatAudio:
        audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
        return resample(audio, int(chunk.sample_rate), self.sample_rate)

    def close(self) -> None:
        """Wait for the synthesis in progress, then release the voices."""
        self._executor.shutdown(wait=True)
        self._voices.clear()


def _voice_library(voices: str | Path | Mapping[str, str | Path] | None) -> dict[str, Path]:
    if voices is None:
        return {DEFAULT_VOICE: piper_voice_paths()[0]}
    if isinstance(voices, str | Path):
        path = Path(voices)
        return {path.name.removesuffix(".onnx"): path}
    if not voices:
        raise ConfigurationError("the Piper voice library is empty")
    return {name: Path(path) for name, path in voices.items()}
