"""Where speech acoustically starts and ends in the audio a caller sends, and when.

Every client-side latency in the benchmarks starts at the *acoustic* end of speech:
the end of the last 10 ms window of the sent audio whose level is above −45 dBFS.
The server's ``speech_stopped`` comes later (the VAD needs a few silent frames to
be sure), so a figure that starts there flatters the server by that delay.

``TimedCaller`` is ``agent.caller.Caller`` that also remembers where on the input
audio timeline each utterance it spoke began, so the moment the frame holding an
utterance's acoustic end (or onset) was sent can be looked up afterwards.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from agent.caller import FRAME_S, Caller

WINDOW_MS = 10.0
THRESHOLD_DBFS = -45.0


def _window_levels(audio: np.ndarray, rate: int) -> np.ndarray:
    """dBFS (RMS, full scale = 1.0) of consecutive 10 ms windows; a partial last window counts."""
    window = max(1, int(rate * WINDOW_MS / 1000))
    samples = np.asarray(audio, dtype=np.float64)
    padded = np.pad(samples, (0, (-len(samples)) % window))
    if not len(padded):
        return np.zeros(0)
    rms = np.sqrt(np.mean(np.square(padded.reshape(-1, window)), axis=1))
    levels: np.ndarray = 20.0 * np.log10(np.maximum(rms, 1e-12))
    return levels


def acoustic_end_ms(audio: np.ndarray, rate: int = 16000) -> float | None:
    """End of the last 10 ms window above −45 dBFS, in ms from the start of ``audio``;
    None when nothing in it is that loud."""
    loud = np.flatnonzero(_window_levels(audio, rate) > THRESHOLD_DBFS)
    if not len(loud):
        return None
    return min((int(loud[-1]) + 1) * WINDOW_MS, len(audio) * 1000.0 / rate)


def acoustic_onset_ms(audio: np.ndarray, rate: int = 16000) -> float | None:
    """Start of the first 10 ms window above −45 dBFS, in ms from the start of ``audio``."""
    loud = np.flatnonzero(_window_levels(audio, rate) > THRESHOLD_DBFS)
    return float(loud[0]) * WINDOW_MS if len(loud) else None


@dataclass
class Spoken:
    """One utterance as the microphone sent it."""

    audio: np.ndarray
    start_ms: float
    """Input audio timeline (ms since the session's first sample) of its first sample."""
    started_at: float
    """``time.monotonic()`` when its first frame was sent."""


@dataclass
class TimedCaller(Caller):
    """A ``Caller`` whose microphone records where each utterance began.

    ``utter`` queues an utterance like ``say`` and returns its index in ``spoken``,
    which the microphone fills in order (its queue is first in, first out).
    """

    spoken: list[Spoken] = field(default_factory=list)
    _queued: int = 0

    def say(self, audio: np.ndarray) -> None:
        super().say(audio)
        self._queued += 1

    def utter(self, audio: np.ndarray) -> int:
        self.say(audio)
        return self._queued - 1

    def _utterance_starts(self, audio: np.ndarray, sent_samples: int) -> None:
        start_ms = sent_samples * 1000.0 / self.rate
        self.spoken.append(Spoken(audio, start_ms, time.monotonic()))

    async def wait_sent(self, index: int, timeout_s: float) -> Spoken:
        """Wait until the microphone has sent all of utterance ``index``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if index < len(self.spoken):
                record = self.spoken[index]
                end = record.started_at + len(record.audio) / self.rate
                if time.monotonic() >= end:
                    return record
                await asyncio.sleep(max(0.0, min(end, deadline) - time.monotonic()) + 0.001)
                continue
            await asyncio.sleep(FRAME_S)
        raise TimeoutError(f"the microphone did not send utterance {index} within {timeout_s} s")

    def sent_at(self, index: int, offset_ms: float | None) -> float | None:
        """When the frame holding ``offset_ms`` (from utterance ``index``'s start) was sent."""
        if offset_ms is None or index >= len(self.spoken):
            return None
        return self.client.sent_at(self.spoken[index].start_ms + offset_ms)

    def stream_ms(self, index: int, offset_ms: float) -> float:
        """``offset_ms`` into utterance ``index`` on the session's input audio timeline."""
        return self.spoken[index].start_ms + offset_ms

    def acoustic_end_sent_at(self, index: int) -> float | None:
        """When the frame holding utterance ``index``'s acoustic end was sent (monotonic)."""
        if index >= len(self.spoken):
            return None
        return self.sent_at(index, acoustic_end_ms(self.spoken[index].audio, self.rate))

    def acoustic_onset_sent_at(self, index: int) -> float | None:
        if index >= len(self.spoken):
            return None
        return self.sent_at(index, acoustic_onset_ms(self.spoken[index].audio, self.rate))


def elapsed_ms(since: float | None, until: float | None) -> float | None:
    """``until − since`` in ms, or None when either is unknown."""
    if since is None or until is None:
        return None
    return (until - since) * 1000.0
