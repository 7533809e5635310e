"""faster-whisper with the final transcripts of concurrent calls batched into one decode.

On a GPU, Whisper's cost is dominated by the encoder pass over a 30 s window, and
a batch of eight windows costs little more than one. Calls whose turns end at the
same moment therefore share one ``model.encode`` + ``model.generate``.

How: each ``transcribe()`` joins a waiting list. When the worker is idle, the
first arrival waits ``batch_window_ms`` for company, then everything waiting (up
to ``max_batch_size``) goes to the worker thread as one batch; arrivals while a
batch runs form the next one, which starts as soon as the worker frees up (they
have waited already). The batch is decoded by faster-whisper's own
``BatchedInferencePipeline``: the utterances are laid end to end in one array and
passed as ``clip_timestamps``, one clip per utterance (utterances over 30 s are
split into 30 s clips), with ``vad_filter=False`` — each clip becomes one padded
30 s window of the batch, exactly as a single call pads its one window.

Differences from ``WhisperSTT`` (pipeline/engines/whisper.py): the batched decode
uses the first temperature only (no fallback re-decode on repetition loops: a
fallback would re-run the whole batch for one member). Everything else —
language, beam size, the decode bounded by the audio's length,
``no_speech_threshold=None`` so nothing is ever skipped, a text without a letter
or digit counting as nothing — is the same. The same code
runs on CPU with tiny.en (tests) and on CUDA in float16 with large-v3(-turbo).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, duration_ms
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.engines.whisper import decode_token_budget, short_model_name
from pipeline.errors import ModelLoadError, STTError
from pipeline.models import whisper_model_dir

MAX_CLIP_S = 30.0
"""Whisper's window: longer utterances are split into clips of this length."""


@dataclass(slots=True)
class _Request:
    samples: FloatAudio
    started: float
    future: asyncio.Future[str] = field(repr=False)


class BatchedWhisperSTT:
    """faster-whisper whose concurrent ``transcribe()`` calls are decoded as one batch."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        batch_window_ms: float = 10.0,
        max_batch_size: int = 8,
        beam_size: int = 1,
        language: str | None = "en",
        temperature: float = 0.0,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        model_or_path = str(model) if model is not None else str(whisper_model_dir())
        self.name = f"faster-whisper-batched:{short_model_name(model)}"
        self.device = device
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.beam_size = beam_size
        self.language = language
        self.temperature = temperature
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        """Sizes of the most recent batches (utterances per decode), oldest first."""
        self._waiting: list[_Request] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[list[str]] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-batch")
        try:
            # Loaded on the worker thread: the model only ever lives on that thread.
            whisper: Any = self._executor.submit(
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
        self._pipeline: Any = BatchedInferencePipeline(whisper)

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        """Transcribe a whole utterance, batched with any that coincide. Raises STTError."""
        if audio.ndim != 1:
            raise STTError(f"{self.name}: expected mono audio, got shape {audio.shape}")
        if self._pipeline is None:
            raise STTError(f"{self.name}: engine is closed", transient=False)
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        started = time.perf_counter()
        if samples.size == 0:
            text = ""
        else:
            loop = asyncio.get_running_loop()
            request = _Request(samples, started, loop.create_future())
            self._waiting.append(request)
            self._schedule(loop)
            # A cancelled caller (a discarded speculative transcript) leaves its
            # slot in the batch; the result is simply not delivered.
            text = await request.future
        return Transcript(
            text=text,
            audio_ms=duration_ms(len(samples), PIPELINE_SAMPLE_RATE),
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )

    def warm_up(self, seconds: float = 1.0) -> list[int]:
        """Decode a batch of 1 and one of ``max_batch_size`` before the first call
        (blocking, from the thread that builds the engines): CUDA kernels, cuBLAS
        workspaces and the allocator's pools for the largest batch are then in place.
        Returns the batch sizes decoded."""
        if self._pipeline is None:
            raise STTError(f"{self.name}: engine is closed", transient=False)
        rng = np.random.default_rng(0)
        clip = (0.05 * rng.standard_normal(int(seconds * PIPELINE_SAMPLE_RATE))).astype(
            np.float32
        )
        sizes = sorted({1, self.max_batch_size})
        for size in sizes:
            self._executor.submit(self._transcribe_batch, [clip] * size).result()
        return sizes

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._running is not None:
            return  # the running batch's completion starts the next one
        if len(self._waiting) >= self.max_batch_size:
            self._dispatch(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_window_s, self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [request for request in self._waiting if not request.future.done()]
        batch = batch[: self.max_batch_size]
        taken = {id(request) for request in batch}
        self._waiting = [
            request
            for request in self._waiting
            if id(request) not in taken and not request.future.done()
        ]
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        running = loop.run_in_executor(
            self._executor, self._transcribe_batch, [request.samples for request in batch]
        )
        self._running = running
        running.add_done_callback(lambda done: self._deliver(loop, batch, done))

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Request],
        done: asyncio.Future[list[str]],
    ) -> None:
        self._running = None
        error = done.exception() if not done.cancelled() else None
        for index, request in enumerate(batch):
            if request.future.done():
                continue
            if done.cancelled():
                request.future.set_exception(STTError(f"{self.name}: transcription cancelled"))
            elif error is not None:
                failure = STTError(f"{self.name}: transcription failed: {error}")
                failure.__cause__ = error
                request.future.set_exception(failure)
            else:
                request.future.set_result(done.result()[index])
        if self._waiting:
            # These waited while the worker was busy: no further window.
            self._dispatch(loop)

    def _transcribe_batch(self, utterances: list[FloatAudio]) -> list[str]:
        """Runs on the worker thread: one batched decode of every utterance's clips."""
        joined = np.concatenate(utterances)
        clips: list[dict[str, float]] = []
        owners: list[int] = []
        offset = 0
        max_clip = int(MAX_CLIP_S * PIPELINE_SAMPLE_RATE)
        for owner, samples in enumerate(utterances):
            for start in range(0, len(samples), max_clip):
                end = min(start + max_clip, len(samples))
                clips.append(
                    {
                        "start": (offset + start) / PIPELINE_SAMPLE_RATE,
                        "end": (offset + end) / PIPELINE_SAMPLE_RATE,
                    }
                )
                owners.append(owner)
            offset += len(samples)
        segments, _info = self._pipeline.transcribe(
            joined,
            language=self.language,
            beam_size=self.beam_size,
            temperature=self.temperature,
            batch_size=len(clips),
            clip_timestamps=clips,
            vad_filter=False,
            without_timestamps=True,
            no_speech_threshold=None,
            log_prob_threshold=None,
            # One budget for the batch: that of its longest clip.
            max_new_tokens=decode_token_budget(
                max(clip["end"] - clip["start"] for clip in clips)
            ),
        )
        texts: list[list[str]] = [[] for _ in utterances]
        # `segments` is lazy (the decoding happens while iterating). Each clip
        # yields its segments in order, starting at the clip's own offset.
        starts = [clip["start"] for clip in clips]
        for segment in segments:
            clip_index = _clip_of(starts, segment.start)
            texts[owners[clip_index]].append(segment.text.strip())
        return [_speech_or_nothing(" ".join(parts).strip()) for parts in texts]

    def close(self) -> None:
        """Wait for the batch in progress, then release the model."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in self._waiting:
            if not request.future.done():
                request.future.set_exception(
                    STTError(f"{self.name}: engine closed", transient=False)
                )
        self._waiting = []
        self._executor.shutdown(wait=True)
        self._pipeline = None


def _clip_of(starts: list[float], time_s: float) -> int:
    """Index of the last clip starting at or before ``time_s`` (timestamps are rounded)."""
    index = 0
    for candidate, start in enumerate(starts):
        if start <= time_s + 0.0015:
            index = candidate
    return index


def _speech_or_nothing(text: str) -> str:
    # Silence decodes to a lone "." or "..."; text without a letter or digit is nothing.
    return text if any(char.isalnum() for char in text) else ""
