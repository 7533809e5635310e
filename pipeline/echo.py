"""Echo guard for calls without acoustic echo cancellation. Sans-I/O.

A phone line (and a WebRTC gateway in front of one) returns part of what the agent
says: the caller's handset, speakerphone or the network hybrid echoes it back a
few hundred milliseconds later, attenuated. Left alone, that echo reaches the VAD
as speech and the agent interrupts itself.

The guard compares each incoming frame with what was just played to the caller —
the same comparison the classic Geigel double-talk detector of line echo
cancellers makes: an echo is never louder than the signal that caused it minus the
echo return loss. A frame quieter than the loudest frame played within the last
``tail_ms`` (minus ``echo_return_loss_db``) cannot be told apart from echo and is
suppressed (replaced by silence, as a telephone echo suppressor does); a frame
louder than that is the caller talking over the agent and passes untouched. When
nothing audible was played recently every frame passes.

Timestamps are seconds on any monotonic clock, given by the caller of the guard.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.engines.base import FloatAudio

_PIECE_MS = 20.0


@dataclass(frozen=True, slots=True)
class EchoGuardConfig:
    enabled: bool = True
    echo_return_loss_db: float = 6.0
    """How much quieter than the played audio an echo is assumed to be at least.
    6 dB is the G.168 minimum for a network hybrid; acoustic echo on a handset is
    usually 20 dB or more below. Larger values let quieter barge-ins through."""
    tail_ms: float = 600.0
    """Longest echo delay covered: the time from playing a frame to its echo arriving."""
    floor_dbfs: float = -50.0
    """Played audio quieter than this cannot make an echo worth suppressing."""

    def __post_init__(self) -> None:
        for name in ("echo_return_loss_db", "tail_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not (math.isfinite(self.floor_dbfs) and self.floor_dbfs <= 0.0):
            raise ValueError(f"floor_dbfs must be finite and <= 0, got {self.floor_dbfs}")


def rms(audio: FloatAudio) -> float:
    if len(audio) == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


class EchoGuard:
    """Tell the guard what is played (``played``) and ask it about what comes in."""

    def __init__(self, config: EchoGuardConfig, sample_rate: int) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self._ratio = math.pow(10.0, -config.echo_return_loss_db / 20.0)
        self._floor = math.pow(10.0, config.floor_dbfs / 20.0)
        # (play start, play end, rms) of each 20 ms piece, in play order.
        self._pieces: deque[tuple[float, float, float]] = deque()
        self.suppressed_frames = 0

    def played(self, audio: FloatAudio, play_at: float) -> None:
        """``audio`` (at ``sample_rate``) starts playing to the caller at ``play_at``."""
        step = max(1, int(self.sample_rate * _PIECE_MS / 1000))
        for offset in range(0, len(audio), step):
            piece = audio[offset : offset + step]
            start = play_at + offset / self.sample_rate
            self._pieces.append((start, start + len(piece) / self.sample_rate, rms(piece)))

    def flushed(self, now: float) -> None:
        """The caller's playback buffer was cleared at ``now``: nothing later will play."""
        while self._pieces and self._pieces[-1][0] >= now:
            self._pieces.pop()

    def reference_level(self, now: float) -> float:
        """Loudest RMS played within the echo tail before ``now``."""
        horizon = now - self.config.tail_ms / 1000.0
        while self._pieces and self._pieces[0][1] < horizon:
            self._pieces.popleft()
        level = 0.0
        for start, _end, piece_rms in self._pieces:
            if start > now:
                break
            level = max(level, piece_rms)
        return level

    def is_echo(self, frame: FloatAudio, now: float) -> bool:
        """Could ``frame``, arriving at ``now``, be nothing but echo of what was played?"""
        if not self.config.enabled:
            return False
        reference = self.reference_level(now)
        if reference < self._floor:
            return False
        return rms(frame) < reference * self._ratio

    def filter(self, frame: FloatAudio, now: float) -> FloatAudio:
        """``frame`` unchanged, or silence of the same length where it may be echo."""
        if self.is_echo(frame, now):
            self.suppressed_frames += 1
            return np.zeros_like(frame)
        return frame
