"""Per-session guards on what a client sends and on what waits to be sent to it.

Sans-I/O: fed with sizes and timestamps, they answer yes or no.
"""

from __future__ import annotations

import time
from collections import deque


class AudioRateLimiter:
    """Refuses input audio arriving faster than ``factor`` × real time.

    A budget of ``burst_ms`` absorbs network jitter (a client that stalls and
    then catches up); beyond it, audio is accepted at most ``factor`` times as fast
    as the wall clock advances since the first frame.
    """

    def __init__(self, factor: float = 2.0, burst_ms: float = 2000.0) -> None:
        self.factor = factor
        self.burst_ms = burst_ms
        self._started: float | None = None
        self._accepted_ms = 0.0

    def accept(self, audio_ms: float, now: float) -> bool:
        if self._started is None:
            self._started = now
        allowed = self.burst_ms + self.factor * (now - self._started) * 1000.0
        if self._accepted_ms + audio_ms > allowed:
            return False
        self._accepted_ms += audio_ms
        return True


class FrameRateLimiter:
    """A token bucket on frames of any kind: ``rate`` per second, ``burst`` at once.

    Audio in 10 ms frames is 100 per second; the default leaves room for that,
    played reports and control messages, and stops a client that floods small
    frames from costing the event loop more than a few real callers would.
    """

    def __init__(
        self, rate: float = 250.0, burst: float = 500.0, *, flood_factor: float = 10.0
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.flood_frames = flood_factor * rate
        """Frames refused within one second that make a client a flooder."""
        self._tokens = burst
        self._at: float | None = None
        self._window_start = 0.0
        self._refused_in_window = 0

    def accept(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if now - self._window_start >= 1.0:
            self._window_start, self._refused_in_window = now, 0
        if self._tokens < 1.0:
            self._refused_in_window += 1
            return False
        self._tokens -= 1.0
        return True

    @property
    def flooding(self) -> bool:
        """Refusing frames costs CPU too (about one core for one client sending as
        fast as it can, docs/reliability.md): past ``flood_factor`` × the rate
        within a second, the client is not a caller and is disconnected."""
        return self._refused_in_window > self.flood_frames


class OutboundQueue:
    """Frames waiting for the socket, with the audio of a cleared response purgeable.

    Each item is (response id or None, frame bytes, is_audio, enqueued at). Bounded:
    ``push`` reports overflow so the session can deal with a client that does not
    read; ``oldest_age`` says how long the head has waited.
    """

    def __init__(self, max_frames: int) -> None:
        self._items: deque[tuple[str | None, bytes, bool, float]] = deque()
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: bytes, *, response_id: str | None = None, audio: bool = False) -> bool:
        if len(self._items) >= self.max_frames:
            return False
        self._items.append((response_id, frame, audio, time.monotonic()))
        return True

    def oldest_age(self, now: float) -> float | None:
        """Seconds the oldest frame has waited (None when empty)."""
        return now - self._items[0][3] if self._items else None

    def purge_audio(self, response_id: str) -> int:
        """Drop queued audio of ``response_id``; returns how many frames went."""
        before = len(self._items)
        self._items = deque(
            item for item in self._items if not (item[2] and item[0] == response_id)
        )
        return before - len(self._items)

    def pop(self) -> bytes | None:
        return self._items.popleft()[1] if self._items else None
