"""The fake Twilio line's playback, without I/O: what it plays each 20 ms and when.

Twilio plays a stream's media back to back at 8 kHz, whatever the size of each
``media`` message, and acknowledges a ``mark`` once the audio sent before it has
played. ``LinePlayout`` does the same a fixed 160 samples per tick across message
boundaries (one message per tick would play a 100-sample remainder as a whole
tick: slower than real time). ``LineSchedule`` says when each tick is due, on a
grid from the start, so a late tick does not push the later ones back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

RATE = 8000
FRAME = RATE // 50
"""Samples per 20 ms tick."""
FRAME_S = FRAME / RATE


@dataclass(frozen=True, slots=True)
class LineSchedule:
    started: float
    """``time.monotonic()`` when the line started playing."""

    def due(self, tick: int) -> float:
        """When tick ``tick`` (0, 1, …) starts: a multiple of 20 ms from the start,
        never a sum of sleeps, so lateness does not accumulate."""
        return self.started + tick * FRAME_S

    def wait_s(self, tick: int, now: float) -> float:
        """How long to sleep at ``now`` before tick ``tick``; 0 when it is late, so
        the line catches up instead of drifting."""
        return max(0.0, self.due(tick) - now)


@dataclass
class LinePlayout:
    """Media and marks in the order received, not yet played."""

    queue: deque[tuple[str, np.ndarray | str]] = field(default_factory=deque)

    def add_media(self, audio: np.ndarray) -> None:
        if len(audio):
            self.queue.append(("media", audio))

    def add_mark(self, name: str) -> None:
        self.queue.append(("mark", name))

    def clear(self) -> list[str]:
        """Twilio's ``clear``: drop the unplayed audio; the pending marks come back."""
        pending = [str(value) for kind, value in self.queue if kind == "mark"]
        self.queue.clear()
        return pending

    def take(self, samples: int = FRAME) -> tuple[np.ndarray, list[str]]:
        """The next ``samples`` of audio (fewer once the buffer runs dry), and the
        marks whose audio will all have played when they have."""
        pieces: list[np.ndarray] = []
        marks: list[str] = []
        wanted = samples
        while self.queue:
            kind, value = self.queue[0]
            if kind == "mark":
                marks.append(str(value))
                self.queue.popleft()
                continue
            if wanted == 0:
                break
            assert isinstance(value, np.ndarray)
            pieces.append(value[:wanted])
            wanted -= len(pieces[-1])
            if len(value) > len(pieces[-1]):
                self.queue[0] = ("media", value[len(pieces[-1]) :])
            else:
                self.queue.popleft()
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return audio, marks
