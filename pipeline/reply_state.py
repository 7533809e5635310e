"""What one reply is: its phase, what it said and played, and its timings.

The response runner (pipeline/responses.py) moves a ``Response`` through its phases;
turn taking (pipeline/turns.py) and overlap handling read it. Kept apart from the
runner so that the runner is about running.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass, field

from pipeline.engines.base import ChatMessage
from pipeline.errors import EngineError, LLMError, LLMTimeoutError, LLMUnavailableError, TTSError
from pipeline.events import Event, ResponseAudioDelta
from pipeline.history import SpokenChunk
from pipeline.tools.reply import ReplyTools


class ResponsePhase(enum.Enum):
    GENERATING = "generating"
    PLAYING = "playing"
    FINISHING = "finishing"
    DONE = "done"


_ALLOWED_PHASES: dict[ResponsePhase, set[ResponsePhase]] = {
    ResponsePhase.GENERATING: {ResponsePhase.PLAYING, ResponsePhase.FINISHING},
    ResponsePhase.PLAYING: {ResponsePhase.FINISHING},
    ResponsePhase.FINISHING: {ResponsePhase.DONE},
    ResponsePhase.DONE: set(),
}

ACTIVE_PHASES = (ResponsePhase.GENERATING, ResponsePhase.PLAYING)
"""A response in one of these can still be cancelled."""


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(slots=True)
class Response:
    response_id: str
    started_at: float
    """Monotonic time the caller's turn ended (speech end, or text received)."""
    phase: ResponsePhase = ResponsePhase.GENERATING
    text: str = ""
    chunks: list[SpokenChunk] = field(default_factory=list)
    audio_ms: float = 0.0
    seq: int = 0
    first_audio_at: float | None = None
    played_ms: float | None = None
    played_event: asyncio.Event = field(default_factory=asyncio.Event)
    timings: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    held: bool = False
    """A speculative reply: events wait in ``held_events`` until the turn ends."""
    held_events: list[Event] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    speculative_task: asyncio.Task[tuple[str, float]] | None = None
    canned: str | None = None
    """Text to say instead of asking the LLM (the apology for a lost turn)."""
    paused_at: float | None = None
    """Monotonic time of the playback pause in force (protocol 1.1), else None."""
    paused_s: float = 0.0
    """Seconds spent paused before the pause in force: the clock estimate skips them."""
    paused_audio: list[ResponseAudioDelta] = field(default_factory=list)
    """Audio made while paused, sent on resume (at most the chunk being spoken)."""
    unpaused: asyncio.Event = field(default_factory=_set_event)
    """Set unless paused; speech synthesis waits on it between chunks."""
    tools: ReplyTools | None = None
    """The tool calls this reply made (None: it was offered no tool)."""
    in_history: bool = True
    """False for an out-of-band reply (``ResponseRequest.out_of_band``): what it said
    is not written to history."""
    max_tokens: int | None = None
    """This reply's own token limit; None: the session's ``max_response_tokens``."""
    played_final: bool = False
    """The client reported where it stopped playing this reply for good (it stopped
    playback itself): a cancellation does not wait for another report."""

    def move(self, phase: ResponsePhase) -> None:
        if phase not in _ALLOWED_PHASES[self.phase]:
            raise RuntimeError(f"response {self.response_id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    def paused_for_s(self, now: float) -> float:
        """Seconds this response has spent paused so far."""
        return self.paused_s + (now - self.paused_at if self.paused_at is not None else 0.0)

    def estimated_played_ms(self, now: float) -> float:
        if self.first_audio_at is None:
            return 0.0
        return min(self.audio_ms, (now - self.first_audio_at - self.paused_for_s(now)) * 1000.0)

    def best_played_ms(self, now: float) -> float:
        return self.played_ms if self.played_ms is not None else self.estimated_played_ms(now)


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """A reply asked for by the client rather than by a turn (the Realtime API's
    ``response.create``): to the history as it stands, with its own settings."""

    instructions: str | None = None
    """Replaces the session's instructions for this reply only."""
    max_tokens: int | None = None
    out_of_band: bool = False
    """Not written to history (``conversation: "none"``)."""


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex[:12]}"


def error_category(exc: EngineError) -> str:
    return exc.category


def error_code(exc: EngineError) -> str:
    if isinstance(exc, LLMUnavailableError):
        return "llm_unavailable"
    if isinstance(exc, LLMTimeoutError):
        return "llm_timeout"
    if isinstance(exc, LLMError):
        return "llm_failed"
    if isinstance(exc, TTSError):
        return "tts_failed"
    return "engine_failed"
