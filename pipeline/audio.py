"""Audio conversion and resampling.

PCM16 little-endian mono is the wire format; float32 in [-1, 1] is the working
format. Resampling uses soxr (libsoxr), streamed so chunk boundaries leave no
seams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from pipeline.engines.base import FloatAudio
from pipeline.errors import AudioFormatError

SUPPORTED_SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
"""Rates accepted for input and output audio."""

PIPELINE_SAMPLE_RATE = 16000
"""Rate of the audio the VAD and STT see."""


def check_sample_rate(rate: int) -> int:
    if rate not in SUPPORTED_SAMPLE_RATES:
        supported = ", ".join(str(r) for r in SUPPORTED_SAMPLE_RATES)
        raise AudioFormatError(f"unsupported sample rate {rate} Hz (supported: {supported})")
    return rate


def pcm16_to_float(data: bytes) -> FloatAudio:
    """Little-endian PCM16 bytes to float32 samples. Raises AudioFormatError."""
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 needs an even number of bytes, got {len(data)}")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
    samples *= 1.0 / 32768.0
    return samples


def float_to_pcm16(audio: FloatAudio) -> bytes:
    """Float32 samples to little-endian PCM16 bytes, clipping to [-1, 1]."""
    clipped = np.clip(audio, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def duration_ms(samples: int, sample_rate: int) -> float:
    return samples * 1000.0 / sample_rate


class StreamResampler:
    """Streaming mono resampler; identity when the rates match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def process(self, audio: FloatAudio, *, last: bool = False) -> FloatAudio:
        if self._stream is None:
            return audio
        out = self._stream.resample_chunk(np.ascontiguousarray(audio, dtype=np.float32), last=last)
        return np.asarray(out, dtype=np.float32)

    def flush(self) -> FloatAudio:
        return self.process(np.zeros(0, dtype=np.float32), last=True)


def resample(audio: FloatAudio, in_rate: int, out_rate: int) -> FloatAudio:
    """Resample a whole signal."""
    if in_rate == out_rate:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), in_rate, out_rate)
    return np.asarray(out, dtype=np.float32)


def read_wav_mono(path: str | Path) -> tuple[FloatAudio, int]:
    """Read a WAV (any common rate and sample format, mono or stereo) as mono float32."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32)
    return mono, int(rate)


def write_wav(path: str | Path, audio: FloatAudio, sample_rate: int) -> None:
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16")


QUIET_DBFS = -45.0
"""Below this a sample is quiet (the level the latency benchmarks call silence)."""


def _loud(audio: FloatAudio) -> np.ndarray:
    return np.flatnonzero(np.abs(audio) > 10.0 ** (QUIET_DBFS / 20.0))


def trim_leading_quiet(audio: FloatAudio, sample_rate: int, keep_ms: float) -> FloatAudio:
    """``audio`` from ``keep_ms`` before its first loud sample; empty if all quiet."""
    loud = _loud(audio)
    if loud.size == 0:
        return audio[:0]
    return audio[max(0, int(loud[0]) - int(keep_ms * sample_rate / 1000)) :]


def trim_trailing_quiet(audio: FloatAudio, sample_rate: int, keep_ms: float) -> FloatAudio:
    """``audio`` up to ``keep_ms`` after its last loud sample; empty if all quiet."""
    loud = _loud(audio)
    if loud.size == 0:
        return audio[:0]
    return audio[: int(loud[-1]) + 1 + int(keep_ms * sample_rate / 1000)]


class ChunkSeam:
    """The audio of one TTS chunk after another, with the quiet at a mid-clause seam
    cut short (sans-I/O).

    A TTS leaves ~50 ms of quiet before and ~150–200 ms after each text it speaks:
    right at a sentence end, a pause in the middle of one. For a chunk cut between
    two words (``TextChunk.joins_next``) the tail of its audio is held back
    (``holdback_ms``, so the start is never delayed) and its trailing quiet cut to
    ``tail_keep_ms``; the next chunk's leading quiet is cut to ``lead_keep_ms``.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        lead_keep_ms: float = 15.0,
        tail_keep_ms: float = 40.0,
        holdback_ms: float = 400.0,
    ) -> None:
        self.sample_rate = sample_rate
        self.lead_keep_ms = lead_keep_ms
        self.tail_keep_ms = tail_keep_ms
        self._holdback = int(holdback_ms * sample_rate / 1000)
        self._trim_lead = False
        self._hold_tail = False
        self._held: FloatAudio = np.zeros(0, dtype=np.float32)

    def start(self, *, after_seam: bool, before_seam: bool) -> None:
        """A chunk begins (again, on a retry): ``after_seam`` when the previous
        chunk joins this one, ``before_seam`` when this one joins the next."""
        self._trim_lead = after_seam
        self._hold_tail = before_seam
        self._held = np.zeros(0, dtype=np.float32)

    def process(self, audio: FloatAudio) -> FloatAudio:
        """What may be played now of the chunk's next piece of audio."""
        if self._trim_lead:
            audio = trim_leading_quiet(audio, self.sample_rate, self.lead_keep_ms)
            if audio.size == 0:
                return audio
            self._trim_lead = False
        if not self._hold_tail:
            return audio
        held = np.concatenate([self._held, audio])
        ready = max(0, held.size - self._holdback)
        self._held = held[ready:]
        return held[:ready]

    def finish(self) -> FloatAudio:
        """The chunk's audio is complete: what is left to play."""
        held, self._held = self._held, np.zeros(0, dtype=np.float32)
        if not self._hold_tail:
            return held
        return trim_trailing_quiet(held, self.sample_rate, self.tail_keep_ms)
