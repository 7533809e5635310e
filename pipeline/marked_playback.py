"""What a media-stream provider (Twilio's convention) has played of each reply, and
what to send again after a pause. Sans-I/O.

The provider plays the media we send in order and acknowledges each ``mark`` once
the audio before it has played; it has no pause, only ``clear`` (drop everything
unplayed, return the pending marks unplayed). So a pause (protocol 1.1) is a clear
on the line while this ledger keeps every chunk sent but not yet acknowledged, and
a resume sends them again, from the last acknowledged mark, under fresh mark names:
a mark returned by the clear can then never be taken for one played after the
resume. History keeps what the acknowledged marks say was heard.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

MAX_REPLIES = 4
"""Replies whose marks are followed; an older one's late marks are ignored."""
MAX_UNHEARD_MS = 300_000.0
"""Reply audio sent and not acknowledged (or held while paused) per reply; beyond
it the provider is not playing what it gets, and further audio is dropped."""


def mark_name(response_id: str, played_ms: float, resent: int = 0) -> str:
    """``resp_…:1234.5`` (how far into the reply), ``…:1234.5/2`` when re-sent after
    the second pause: a name is never reused within a reply."""
    suffix = f"/{resent}" if resent else ""
    return f"{response_id}:{played_ms:.1f}{suffix}"


def read_mark(name: str) -> tuple[str, float] | None:
    """(response id, ms into it) of one of our marks; None for anything else."""
    response_id, _, rest = name.partition(":")
    position, _, resent = rest.partition("/")
    if not response_id or (resent and not resent.isdigit()):
        return None
    try:
        return response_id, float(position)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Send:
    """One piece of reply audio to send, then its mark."""

    response_id: str
    payload: bytes
    """µ-law, as the provider takes it."""
    duration_ms: float
    mark: str


@dataclass(frozen=True, slots=True)
class _Chunk:
    payload: bytes
    duration_ms: float
    end_ms: float


@dataclass(slots=True)
class _Reply:
    heard_ms: float = 0.0
    """End of the last acknowledged mark: what the caller has heard."""
    added_ms: float = 0.0
    """End of the last chunk added (sent or held)."""
    unheard: deque[_Chunk] = field(default_factory=deque)
    """Chunks after ``heard_ms``, in order: sent and unacknowledged, or held."""
    unheard_ms: float = 0.0
    in_flight: dict[str, float] = field(default_factory=dict)
    """Mark name → its end (ms) for the marks on the line now."""
    paused: bool = False
    resent: int = 0
    """Pauses so far: the suffix of the names of re-sent marks."""


class MarkedPlayback:
    """One call's replies on the line: add, acknowledge, pause, resume, drop."""

    def __init__(self) -> None:
        self._replies: OrderedDict[str, _Reply] = OrderedDict()

    def _reply(self, response_id: str) -> _Reply:
        reply = self._replies.get(response_id)
        if reply is None:
            reply = self._replies[response_id] = _Reply()
            while len(self._replies) > MAX_REPLIES:
                self._replies.popitem(last=False)
        return reply

    def heard_ms(self, response_id: str) -> float:
        reply = self._replies.get(response_id)
        return reply.heard_ms if reply is not None else 0.0

    def paused(self, response_id: str) -> bool:
        reply = self._replies.get(response_id)
        return reply is not None and reply.paused

    def unheard_ms(self, response_id: str) -> float:
        """Audio kept for the reply: sent and unacknowledged, or held while paused."""
        reply = self._replies.get(response_id)
        return reply.unheard_ms if reply is not None else 0.0

    def add(
        self, response_id: str, payload: bytes, duration_ms: float
    ) -> Send | Literal["held", "dropped"]:
        """New reply audio: what to send now; ``held`` while the reply is paused (it
        goes out on resume); ``dropped`` beyond ``MAX_UNHEARD_MS``."""
        reply = self._reply(response_id)
        if reply.unheard_ms + duration_ms > MAX_UNHEARD_MS:
            return "dropped"
        reply.added_ms += duration_ms
        chunk = _Chunk(payload, duration_ms, reply.added_ms)
        reply.unheard.append(chunk)
        reply.unheard_ms += duration_ms
        if reply.paused:
            return "held"
        return self._send(response_id, reply, chunk)

    def _send(self, response_id: str, reply: _Reply, chunk: _Chunk) -> Send:
        name = mark_name(response_id, chunk.end_ms, reply.resent)
        reply.in_flight[name] = chunk.end_ms
        return Send(response_id, chunk.payload, chunk.duration_ms, name)

    def acknowledge(self, name: str) -> tuple[str, float] | None:
        """A mark came back: (response id, ms heard) if it is one on the line now;
        None for a mark returned by a clear, of a dropped reply, or not ours."""
        mark = read_mark(name)
        if mark is None:
            return None
        response_id = mark[0]
        reply = self._replies.get(response_id)
        if reply is None:
            return None
        end_ms = reply.in_flight.pop(name, None)
        if end_ms is None:
            return None
        # Marks come back in order: every mark before this one has played too.
        for earlier, earlier_end in list(reply.in_flight.items()):
            if earlier_end <= end_ms:
                del reply.in_flight[earlier]
        while reply.unheard and reply.unheard[0].end_ms <= end_ms:
            reply.unheard_ms -= reply.unheard.popleft().duration_ms
        reply.heard_ms = max(reply.heard_ms, end_ms)
        return response_id, reply.heard_ms

    def pause(self, response_id: str) -> float:
        """The line is cleared to pause the reply: its marks on the line will come
        back unplayed and are forgotten; its unheard chunks are kept. Returns the
        ms heard."""
        reply = self._reply(response_id)
        reply.paused = True
        reply.in_flight.clear()
        return reply.heard_ms

    def resume(self, response_id: str) -> list[Send]:
        """Everything after the last acknowledged mark, to send again in order."""
        reply = self._replies.get(response_id)
        if reply is None or not reply.paused:
            return []
        reply.paused = False
        reply.resent += 1
        return [self._send(response_id, reply, chunk) for chunk in reply.unheard]

    def drop(self, response_id: str) -> float:
        """The reply is cleared for good (or done): forget it; returns the ms heard."""
        reply = self._replies.pop(response_id, None)
        return reply.heard_ms if reply is not None else 0.0
