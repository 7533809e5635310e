"""Speech to text with faster-whisper (CTranslate2), on one dedicated worker thread.

Dropping speech is worse than transcribing noise here: the VAD and turn detector
upstream already decided this audio is an utterance. faster-whisper by default
skips a 30 s window when ``no_speech_prob > 0.6`` and the average log-probability
is below -1.0, which happens on short or quiet questions (the whole turn then
comes back empty with no error). We pass ``no_speech_threshold=None`` so no
window is ever skipped, and ``log_prob_threshold=None`` so a low-confidence
decode is not re-run at random temperatures (that only costs latency). The
temperature fallback stays for repetition loops (compression ratio above 2.4),
and it always returns a decode, never nothing. Set ``no_speech_threshold`` to
restore faster-whisper's skipping.

A decode is bounded by the audio's length (``decode_token_budget``): Whisper
sometimes loops on one phrase until its 448-token limit, and a loop plus the
fallback re-decodes cost seconds (one turn of the latency benchmark waited 3.4 s
for its transcript). Speech is well under the budget's 10 tokens a second, so only
a loop reaches it, and the compression-ratio fallback then decodes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE
from pipeline.engines.base import (
    FloatAudio,
    TimedWord,
    Transcript,
    TranscriptSegment,
)
from pipeline.engines.threaded import transcribe_in_thread
from pipeline.errors import ModelLoadError, STTError
from pipeline.models import whisper_model_dir

DECODE_TOKENS_PER_S = 10.0
"""Tokens a decode may produce per second of audio: fast speech (~4 words a
second, or digits read one by one) makes about half as many."""
DECODE_MIN_TOKENS = 16
WHISPER_MAX_NEW_TOKENS = 440
"""Whisper's text context is 448 tokens, the start-of-transcript prompt included."""
MAX_BEAM_SIZE = 10
"""The widest beam a setting may ask for (``VOICEFORGE_WHISPER_BEAM_SIZE``,
``loadtest.stt_accuracy``)."""


def decode_token_budget(audio_s: float) -> int:
    """How many tokens a decode of ``audio_s`` seconds of speech may produce."""
    wanted = math.ceil(DECODE_TOKENS_PER_S * max(audio_s, 0.0)) + DECODE_MIN_TOKENS
    return min(wanted, WHISPER_MAX_NEW_TOKENS)


class WhisperSTT:
    """faster-whisper on 16 kHz mono float32 utterances."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        beam_size: int = 1,
        language: str | None = "en",
        temperatures: tuple[float, ...] = (0.0, 0.2, 0.4),
        no_speech_threshold: float | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        model_or_path = str(model) if model is not None else str(whisper_model_dir())
        self.name = f"faster-whisper:{short_model_name(model)}"
        self.beam_size = beam_size
        self.language = language
        self.temperatures = temperatures
        self.no_speech_threshold = no_speech_threshold
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        try:
            # Loaded on the worker thread: the model only ever lives on that thread.
            self._model: Any = self._executor.submit(
                WhisperModel,
                model_or_path,
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=1,
            ).result()
        except Exception as error:
            self._executor.shutdown(wait=True)
            raise ModelLoadError(f"cannot load Whisper model {model_or_path!r}: {error}") from error

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        """Transcribe a whole utterance. Raises STTError."""
        return await transcribe_in_thread(
            self._executor, self.name, self._model is None, audio, self._transcribe_blocking
        )

    def _transcribe_blocking(self, samples: FloatAudio) -> str:
        if samples.size == 0:
            return ""
        segments, _info = self._model.transcribe(
            samples,
            language=self.language,
            beam_size=self.beam_size,
            temperature=list(self.temperatures),
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            no_speech_threshold=self.no_speech_threshold,
            log_prob_threshold=None,
            max_new_tokens=decode_token_budget(samples.size / PIPELINE_SAMPLE_RATE),
        )
        # `segments` is lazy: the decoding happens while iterating, so here.
        text = " ".join(segment.text.strip() for segment in segments).strip()
        # Silence decodes to a lone "." or "..."; text without a letter or digit is nothing.
        return text if any(char.isalnum() for char in text) else ""

    @property
    def multilingual(self) -> bool:
        return self._model is not None and bool(self._model.model.is_multilingual)

    async def transcribe_segments(
        self,
        audio: FloatAudio,
        *,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        word_timestamps: bool,
    ) -> AsyncGenerator[TranscriptSegment, None]:
        """A whole recording, segment by segment, each decoded on the worker thread
        in its turn: a live call's transcript waits for one 30 s window at most, not
        for the whole file."""
        if self._model is None:
            raise STTError(f"{self.name}: engine is closed", transient=False)
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        loop = asyncio.get_running_loop()
        temperatures = list(self.temperatures) if temperature is None else [temperature]
        try:
            segments, info = await loop.run_in_executor(
                self._executor,
                lambda: self._model.transcribe(
                    samples,
                    language=language or self.language,
                    beam_size=self.beam_size,
                    temperature=temperatures,
                    initial_prompt=prompt or None,
                    condition_on_previous_text=False,
                    word_timestamps=word_timestamps,
                    vad_filter=False,
                    no_speech_threshold=self.no_speech_threshold,
                    log_prob_threshold=None,
                    max_new_tokens=decode_token_budget(30.0),
                ),
            )
        except Exception as error:
            raise STTError(f"{self.name}: transcription failed: {error}") from error
        decoded: Iterator[Any] = iter(segments)
        index = 0
        try:
            while True:
                try:
                    segment = await loop.run_in_executor(self._executor, next, decoded, None)
                except Exception as error:
                    raise STTError(f"{self.name}: transcription failed: {error}") from error
                if segment is None:
                    return
                yield _segment(index, segment, str(info.language))
                index += 1
        finally:
            # Closed on the worker thread, after the segment in progress.
            with contextlib.suppress(RuntimeError):
                self._executor.submit(getattr(decoded, "close", lambda: None))

    def close(self) -> None:
        """Wait for the transcription in progress, then release the model."""
        self._executor.shutdown(wait=True)
        self._model = None


def _segment(index: int, segment: Any, language: str) -> TranscriptSegment:
    words = tuple(
        TimedWord(str(word.word), float(word.start), float(word.end), float(word.probability))
        for word in (segment.words or ())
    )
    return TranscriptSegment(
        id=index, start=float(segment.start), end=float(segment.end),
        text=str(segment.text), language=language, tokens=tuple(segment.tokens),
        seek=int(segment.seek), temperature=float(segment.temperature or 0.0),
        avg_logprob=float(segment.avg_logprob), compression_ratio=float(segment.compression_ratio),
        no_speech_prob=float(segment.no_speech_prob), words=words,
    )


def short_model_name(model: str | Path | None) -> str:
    if model is None:
        return "tiny.en"
    return Path(model).name if isinstance(model, Path) or "/" in str(model) else str(model)
