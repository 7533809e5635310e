"""The caller's recent audio at 16 kHz, kept for transcription (sans-I/O).

Turn taking (pipeline/turns.py) appends every VAD frame and slices a turn's speech
out by its place on the audio clock; what is older than the turn being transcribed
is trimmed, and the whole is bounded (``max_ms``).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE
from pipeline.engines.base import FloatAudio


class TurnAudio:
    """The 16 kHz input audio of the current stream, trimmed as turns end."""

    def __init__(self, max_ms: float) -> None:
        self._chunks: deque[FloatAudio] = deque()
        self._start_sample = 0
        self._samples = 0
        self._max_samples = int(max_ms * PIPELINE_SAMPLE_RATE / 1000)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=512)

    @property
    def end_sample(self) -> int:
        return self._start_sample + self._samples

    def append(self, audio: FloatAudio, arrived_at: float) -> None:
        self._chunks.append(audio)
        self._samples += len(audio)
        self._arrivals.append((self.end_sample, arrived_at))
        while self._samples - len(self._chunks[0]) >= self._max_samples:
            dropped = self._chunks.popleft()
            self._samples -= len(dropped)
            self._start_sample += len(dropped)

    def arrival_time(self, sample: int) -> float:
        """Monotonic time at which the audio holding ``sample`` arrived."""
        for end, arrived in self._arrivals:
            if end > sample:
                return arrived
        return time.monotonic()

    def slice_ms(self, start_ms: float, end_ms: float) -> FloatAudio:
        start = max(int(start_ms * 16), self._start_sample)
        end = min(int(end_ms * 16), self.end_sample)
        if end <= start or not self._chunks:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(list(self._chunks))
        return audio[start - self._start_sample : end - self._start_sample]

    def trim_before_ms(self, ms: float) -> None:
        keep_from = int(ms * 16)
        while self._chunks and self._start_sample + len(self._chunks[0]) <= keep_from:
            dropped = self._chunks.popleft()
            self._samples -= len(dropped)
            self._start_sample += len(dropped)
