"""What a dropped call leaves to be resumed, and how a resumed call settles the reply
that was in flight when its connection dropped (sans-I/O).

A call whose connection drops is *suspended*: its history (unredacted, unlike the call
record), its settings and the reply it was speaking are kept, for a window, as a
``ResumeSnapshot``. A client that comes back with the call's resume token gets a new
conversation with the same id, built from the snapshot. The reply in flight cannot
go on (its LLM and TTS streams were cancelled with the old connection): it ends as
cancelled, and history keeps the part the client reports having played, cut at the
chunk timings the snapshot carries (``pipeline.history.heard_text``) — the same rule
as a barge-in, on whichever process the client comes back to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

from pipeline.engines.base import ChatMessage
from pipeline.history import History, SpokenChunk, heard_text
from pipeline.reply_state import Response

SNAPSHOT_VERSION = 1
LOST_REPLY_REASON = "connection_lost"
"""``response.done`` ``reason`` of the reply that was in flight when the call dropped."""


@dataclass(frozen=True, slots=True)
class LostReply:
    """The reply that was being spoken when the connection dropped."""

    response_id: str
    text: str
    """Generated so far."""
    chunks: tuple[SpokenChunk, ...]
    audio_ms: float
    played_ms: float
    """Where the server believed playback was at the drop (the client's last
    report, or the clock): used when the client reports nothing."""
    timings: dict[str, float] = field(default_factory=dict)

    def heard(self, reported_ms: float | None) -> tuple[str, float]:
        """(text heard, ms played): by the client's report when it gives one."""
        played = self.played_ms if reported_ms is None else reported_ms
        if not math.isfinite(played):
            played = self.played_ms
        played = max(0.0, min(played, self.audio_ms))
        return (heard_text(self.chunks, played) if played > 0 else ""), played

    @classmethod
    def of(cls, response: Response, now: float) -> LostReply:
        return cls(
            response.response_id, response.text, tuple(response.chunks), response.audio_ms,
            response.best_played_ms(now) if response.first_audio_at is not None else 0.0,
            dict(response.timings),
        )


@dataclass(frozen=True, slots=True)
class ResumeSnapshot:
    """A suspended call: enough to build it again on any server."""

    session_id: str
    epoch: int
    """How many times the call has been resumed; a resume token names the epoch it
    was issued in, so a token works once."""
    settings: dict[str, Any]
    """The session view (``session.created``'s ``session``), client tools included."""
    messages: tuple[ChatMessage, ...]
    """History without the system prompt (the settings' instructions are it)."""
    lost_reply: LostReply | None
    started_at: float
    """Unix time the call started (its record keeps it)."""
    record_seq: int = 0
    """Entries the call's record has so far: a resumed record numbers on from here."""

    def restore(self, history: History) -> None:
        """Put the snapshot's turns into a fresh call's (empty) history."""
        for message in self.messages:
            history.restore(message)

    def to_json(self) -> dict[str, Any]:
        lost = self.lost_reply
        return {
            "version": SNAPSHOT_VERSION,
            "session_id": self.session_id,
            "epoch": self.epoch,
            "settings": self.settings,
            "messages": [dict(message) for message in self.messages],
            "lost_reply": None if lost is None else {
                "response_id": lost.response_id, "text": lost.text,
                "chunks": [[c.text, c.start_ms, c.end_ms] for c in lost.chunks],
                "audio_ms": lost.audio_ms, "played_ms": lost.played_ms,
                "timings": lost.timings,
            },
            "started_at": self.started_at,
            "record_seq": self.record_seq,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ResumeSnapshot:
        """Raises ValueError for a snapshot this code cannot read."""
        if body.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"resume snapshot version {body.get('version')!r} is unknown")
        try:
            lost_body = body["lost_reply"]
            lost = None if lost_body is None else LostReply(
                str(lost_body["response_id"]), str(lost_body["text"]),
                tuple(SpokenChunk(str(text), float(start), float(end))
                      for text, start, end in lost_body["chunks"]),
                float(lost_body["audio_ms"]), float(lost_body["played_ms"]),
                {str(k): float(v) for k, v in lost_body["timings"].items()},
            )
            messages = tuple(cast(ChatMessage, dict(m)) for m in body["messages"])
            if any(m.get("role") not in ("user", "assistant", "tool") for m in messages):
                raise ValueError("a resume snapshot holds only user, assistant and tool turns")
            return cls(
                str(body["session_id"]), int(body["epoch"]), dict(body["settings"]),
                messages, lost, float(body["started_at"]), int(body["record_seq"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed resume snapshot: {exc!r}") from None
