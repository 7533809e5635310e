"""A client's playback on the wall clock, with no speaker (the Python SDK's and the
load generator's): what has played of each response, for ``output_audio.played``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _ResponsePlayback:
    received_ms: float = 0.0
    buffer_end: float | None = None
    """Wall time at which the audio received so far will have finished playing."""
    frozen_played_ms: float | None = None
    """Set by a clear: playback stopped there."""
    paused_played_ms: float | None = None
    """Set by a pause: playback holds there, the buffer kept, until a resume."""


@dataclass(slots=True)
class PlaybackClock:
    """Plays responses in real time on the wall clock, with no speaker.

    A delta that arrives after the buffer ran dry restarts playback and counts
    as an underrun (the caller would have heard a gap). A paused response keeps
    its buffer and takes more audio; a resume plays on from where it stopped.
    """

    responses: dict[str, _ResponsePlayback] = field(default_factory=dict)
    underruns: int = 0
    dropped_after_clear: int = 0

    def receive(self, response_id: str, duration_ms: float, now: float) -> bool:
        """Queue a delta; False when its response was cleared (the audio is dropped)."""
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        if state.frozen_played_ms is not None:
            self.dropped_after_clear += 1
            return False
        if state.paused_played_ms is not None:
            state.received_ms += duration_ms
            return True
        if state.buffer_end is None:
            state.buffer_end = now
        elif state.buffer_end < now:
            self.underruns += 1
            state.buffer_end = now
        state.buffer_end += duration_ms / 1000.0
        state.received_ms += duration_ms
        return True

    def played_ms(self, response_id: str, now: float) -> float:
        state = self.responses.get(response_id)
        if state is None:
            return 0.0
        if state.frozen_played_ms is not None:
            return state.frozen_played_ms
        if state.paused_played_ms is not None:
            return state.paused_played_ms
        if state.buffer_end is None:
            return 0.0
        return state.received_ms - max(0.0, state.buffer_end - now) * 1000.0

    def clear(self, response_id: str, now: float) -> float:
        """Flush the buffer of ``response_id``; returns what had been played."""
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        played = self.played_ms(response_id, now)
        state.frozen_played_ms = played
        state.paused_played_ms = None
        return played

    def pause(self, response_id: str, now: float) -> float:
        """Hold playback of ``response_id`` where it is; returns what had been played.

        Pausing a cleared or already paused response changes nothing.
        """
        state = self.responses.setdefault(response_id, _ResponsePlayback())
        played = self.played_ms(response_id, now)
        if state.frozen_played_ms is None and state.paused_played_ms is None:
            state.paused_played_ms = played
        return played

    def resume(self, response_id: str, now: float) -> None:
        """Play on from the pause: the rest of the buffer plays from ``now``."""
        state = self.responses.get(response_id)
        if state is None or state.paused_played_ms is None:
            return
        remaining_ms = state.received_ms - state.paused_played_ms
        state.paused_played_ms = None
        state.buffer_end = now + remaining_ms / 1000.0 if state.received_ms > 0 else None

    def is_paused(self, response_id: str) -> bool:
        state = self.responses.get(response_id)
        return state is not None and state.paused_played_ms is not None

    def is_playing(self, response_id: str, now: float) -> bool:
        state = self.responses.get(response_id)
        return (
            state is not None
            and state.frozen_played_ms is None
            and state.paused_played_ms is None
            and state.buffer_end is not None
            and state.buffer_end > now
        )
