"""Where the two channels of a call's recording go on the call's clock (sans-I/O).

The call's clock is its input audio at 16 kHz: the samples the turn detector heard,
the clock every transcript's ``audio_start_ms``/``audio_end_ms`` is on. The caller's
channel is that audio, sample for sample. The agent's channel holds each reply from
the caller-clock position where its first audio went out (or where the reply before
it ended, if later: a client plays replies one after the other), and only as much of
it as was played (``response.done``'s ``played_ms``): what a barge-in cut, or a slow
client never played, is not in it.

``RecordingTimeline`` turns both into ``Piece``s (channel, offset, samples) for a
writer to put in place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, pcm16_to_float, resample
from pipeline.engines.base import FloatAudio
from pipeline.events import ResponseAudioDelta, ResponseDone

RATE = PIPELINE_SAMPLE_RATE


class Channel(enum.IntEnum):
    CALLER = 0
    AGENT = 1


@dataclass(frozen=True, slots=True)
class Piece:
    channel: Channel
    offset: int
    """First sample's position on the call's clock (16 kHz samples since the start)."""
    samples: FloatAudio


@dataclass(slots=True)
class _Reply:
    starts_at: int
    sample_rate: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class RecordingTimeline:
    """Feed the caller's 16 kHz frames and the reply events; write the pieces."""

    def __init__(self, *, max_reply_s: float = 300.0) -> None:
        self.clock = 0
        """Caller samples so far: now, on the call's clock."""
        self.agent_end = 0
        """Where the agent's channel is played up to."""
        self.max_reply_bytes = int(max_reply_s * 48_000 * 2)
        self._replies: dict[str, _Reply] = {}

    def caller(self, frame: FloatAudio) -> Piece:
        piece = Piece(Channel.CALLER, self.clock, frame)
        self.clock += len(frame)
        return piece

    def reply_audio(self, delta: ResponseAudioDelta) -> None:
        reply = self._replies.get(delta.response_id)
        if reply is None:
            reply = _Reply(max(self.clock, self.agent_end), delta.sample_rate)
            self._replies[delta.response_id] = reply
        if reply.size + len(delta.audio) <= self.max_reply_bytes:
            reply.chunks.append(delta.audio)
            reply.size += len(delta.audio)

    def reply_done(self, done: ResponseDone) -> Piece | None:
        """The played part of the reply, in place; None when none of it was played."""
        reply = self._replies.pop(done.response_id, None)
        if reply is None:
            return None
        audio = resample(pcm16_to_float(b"".join(reply.chunks)), reply.sample_rate, RATE)
        played = audio[: round(done.played_ms * RATE / 1000)]
        if not len(played):
            return None
        self.agent_end = max(self.agent_end, reply.starts_at + len(played))
        return Piece(Channel.AGENT, reply.starts_at, np.asarray(played, dtype=np.float32))
