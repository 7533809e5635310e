"""How many speech tokens go into each streamed chunk after the first.

A fixed size (``chunk_tokens``, 1 s of audio) makes the second chunk cost 25 T3 steps
plus a flow pass while only the first chunk's 240 ms of audio is playing: the caller
hears a gap after the first words whenever that compute takes longer. The adaptive
schedule sizes each next chunk from what it measured on this utterance so far: T3's
time per token and S3Gen's time per decode. It takes the largest chunk whose
expected compute still fits in the audio already handed out and not yet played
(counted from the moment the first chunk left), less a safety margin; as the lead
grows, the chunks grow, up to ``max_tokens``. A model slower than real time cannot
be kept ahead by any schedule: it then takes the smallest chunk, the shortest gap.

Pure bookkeeping (no torch): the engine reports tokens, decodes and emitted audio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pipeline.errors import ConfigurationError

SCHEDULES = ("fixed", "adaptive")
AUDIO_S_PER_TOKEN = 0.04
"""S3Gen speech tokens are 25 a second."""


class ChunkSchedule:
    def __init__(
        self,
        max_tokens: int,
        *,
        min_tokens: int = 5,
        margin_s: float = 0.05,
        smoothing: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 1 <= min_tokens <= max_tokens:
            raise ConfigurationError("a chunk schedule needs 1 <= min_tokens <= max_tokens")
        if margin_s < 0 or not 0 < smoothing <= 1:
            raise ConfigurationError("margin_s must be >= 0 and smoothing in (0, 1]")
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.margin_s = margin_s
        self._smoothing = smoothing
        self._clock = clock
        self.token_s: float | None = None
        """Smoothed seconds per T3 step, measured between consecutive tokens."""
        self.decode_s: float | None = None
        """Smoothed seconds per S3Gen decode of a chunk."""
        self._last_token_at: float | None = None
        self._first_out_at: float | None = None
        self._audio_out_s = 0.0

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self._smoothing * (new - old)

    def token(self) -> None:
        """A speech token was sampled now."""
        now = self._clock()
        if self._last_token_at is not None:
            self.token_s = self._smooth(self.token_s, now - self._last_token_at)
        self._last_token_at = now

    def decoded(self, seconds: float) -> None:
        """A chunk's S3Gen decode took ``seconds`` (the next token interval starts afresh)."""
        self.decode_s = self._smooth(self.decode_s, seconds)
        self._last_token_at = None

    def emitted(self, audio_s: float) -> None:
        """A chunk of ``audio_s`` seconds was handed out now; playback starts with the
        first. The time until the generator resumes is not a T3 step."""
        now = self._clock()
        if self._first_out_at is None:
            self._first_out_at = now
        self._audio_out_s += audio_s
        self._last_token_at = None

    def buffered_s(self) -> float:
        """Audio handed out and not yet played, if playback began with the first chunk."""
        if self._first_out_at is None:
            return 0.0
        return self._audio_out_s - (self._clock() - self._first_out_at)

    def next_tokens(self) -> int:
        """Tokens for the next chunk: the most whose T3 steps and decode fit in the
        audio still buffered, less the margin; between ``min_tokens`` and ``max_tokens``."""
        if self.token_s is None or self.decode_s is None:
            return self.min_tokens
        budget = self.buffered_s() - self.margin_s - self.decode_s
        if self.token_s <= 0:
            return self.max_tokens
        fits = math.floor(budget / self.token_s) if budget > 0 else 0
        return max(self.min_tokens, min(self.max_tokens, fits))
