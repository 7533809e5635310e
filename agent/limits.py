"""Per-session guards on what a client sends and on what waits to be sent to it.

Sans-I/O: fed with sizes and timestamps, they answer yes or no.
"""

from __future__ import annotations

import time
from collections import deque


class AudioRateLimiter:
    """A token bucket of audio milliseconds: ``burst_ms`` at most, refilled at
    ``factor`` × the wall clock.

    The burst absorbs network jitter (a client that stalls, then catches up).
    Credit never grows past it: a client idle for ten minutes may then send
    ``burst_ms`` of audio at once, not ten minutes' worth (which the input queue
    would have to hold).
    """

    def __init__(self, factor: float = 2.0, burst_ms: float = 2000.0) -> None:
        self.factor = factor
        self.burst_ms = burst_ms
        self._tokens_ms = burst_ms
        self._at: float | None = None
        self.accepted_ms = 0.0
        """Audio taken so far (what the load tests compare with the limit)."""

    def accept(self, audio_ms: float, now: float) -> bool:
        if self._at is not None:
            refill = self.factor * max(0.0, now - self._at) * 1000.0
            self._tokens_ms = min(self.burst_ms, self._tokens_ms + refill)
        self._at = now
        if audio_ms > self._tokens_ms:
            return False
        self._tokens_ms -= audio_ms
        self.accepted_ms += audio_ms
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


class DecodeBudget:
    """A token bucket of decoding time: ``ms_per_s`` refilled, ``burst_ms`` at most.

    The decoder's cost per frame is bounded (agent/protocol.py); this bounds what
    one client can spend of the event loop per second however it shapes its
    frames. The cost charged is the frame's wall time on the loop
    (``time.perf_counter``): an upper bound of its CPU time, and what the other
    calls wait. ``time.thread_time`` was a system call here (0.6 µs idle, ~10 % of
    the loop's GIL-holding samples at 150 bench callers, docs/decisions.md).
    A frame is decoded while the bucket is not empty and its cost charged
    afterwards, so the debt is at most one frame. A client that keeps running it
    dry, in ``strikes`` different seconds within ``strike_window_s``, is abusive.
    """

    def __init__(
        self, ms_per_s: float = 20.0, burst_ms: float = 200.0, *, strikes: int = 3,
        strike_window_s: float = 10.0,
    ) -> None:
        self.ms_per_s = ms_per_s
        self.burst_ms = burst_ms
        self.strikes = strikes
        self.strike_window_s = strike_window_s
        self._tokens_ms = burst_ms
        self._at: float | None = None
        self._strike_times: deque[float] = deque()

    def _refill(self, now: float) -> None:
        if self._at is not None:
            refill = max(0.0, now - self._at) * self.ms_per_s
            self._tokens_ms = min(self.burst_ms, self._tokens_ms + refill)
        self._at = now

    def admit(self, now: float) -> bool:
        """Whether a frame arriving ``now`` may be decoded."""
        self._refill(now)
        if self._tokens_ms > 0.0:
            return True
        while self._strike_times and now - self._strike_times[0] > self.strike_window_s:
            self._strike_times.popleft()
        if not self._strike_times or now - self._strike_times[-1] >= 1.0:
            self._strike_times.append(now)
        return False

    def charge(self, spent_ms: float) -> None:
        self._tokens_ms -= spent_ms

    @property
    def abusive(self) -> bool:
        return len(self._strike_times) >= self.strikes


class ErrorThrottle:
    """At most ``per_second`` errors of one code a second; the rest are counted.

    One bad frame earns one error, but a client sending a thousand bad frames must
    not get a thousand errors back (the reply would amplify its input). The first
    error of a code let through after some were held back carries their count.
    """

    def __init__(self, per_second: int = 3) -> None:
        self.per_second = per_second
        self._windows: dict[str, tuple[float, int]] = {}
        """Per code: when its current one-second window began, errors sent in it."""
        self._suppressed: dict[str, int] = {}

    def allow(self, code: str, now: float) -> tuple[bool, int]:
        """(send it?, how many of this code were held back since the last one sent)."""
        started, sent = self._windows.get(code, (now, 0))
        if now - started >= 1.0:
            started, sent = now, 0
        if sent >= self.per_second:
            self._windows[code] = (started, sent)
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return False, 0
        self._windows[code] = (started, sent + 1)
        return True, self._suppressed.pop(code, 0)


class OutboundQueue:
    """Frames waiting for the socket, with the audio of a cleared response purgeable.

    Each item is (response id or None, frame bytes, is_audio, enqueued at). Bounded
    in frames and in bytes: ``push`` reports overflow so the session can deal with a
    client that does not read; ``oldest_age`` says how long the head has waited.
    """

    def __init__(self, max_frames: int, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._items: deque[tuple[str | None, bytes, bool, float]] = deque()
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        """Bytes queued now."""

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: bytes, *, response_id: str | None = None, audio: bool = False) -> bool:
        if len(self._items) >= self.max_frames or self.bytes + len(frame) > self.max_bytes:
            return False
        self._items.append((response_id, frame, audio, time.monotonic()))
        self.bytes += len(frame)
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
        self.bytes = sum(len(item[1]) for item in self._items)
        return before - len(self._items)

    def pop(self) -> bytes | None:
        if not self._items:
            return None
        frame = self._items.popleft()[1]
        self.bytes -= len(frame)
        return frame
