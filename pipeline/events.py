"""Events a conversation emits. The adapters translate them to wire messages.

Names mirror the protocol messages (docs/protocol.md) so the mapping is one to one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ResponseStatus(enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: float


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: float


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """A partial transcript of the turn in progress (replaces the previous one)."""

    text: str


@dataclass(frozen=True, slots=True)
class TranscriptFinal:
    text: str
    audio_start_ms: float
    audio_end_ms: float


@dataclass(frozen=True, slots=True)
class TurnIgnored:
    """A detected turn that gets no reply, and why (nothing is dropped silently)."""

    reason: str
    audio_start_ms: float
    audio_end_ms: float


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseTextDelta:
    response_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseAudioDelta:
    response_id: str
    seq: int
    audio: bytes
    """PCM16 little-endian mono at ``sample_rate``."""
    sample_rate: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class ResponseAudioClear:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseAudioPause:
    """Stop playing this response now but keep its buffered audio: the caller began
    speaking over it, and it may resume (a backchannel) or be cleared (a barge-in)."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseAudioResume:
    """Play on from where the pause stopped: what the caller said was a backchannel,
    a cough or noise."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: ResponseStatus
    text: str
    """Everything the model generated."""
    text_heard: str
    """What the caller heard; this is what history keeps."""
    audio_ms: float
    """Reply audio generated."""
    played_ms: float
    """Reply audio the caller played (reported by the client, or estimated)."""
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseToolCall:
    """The model called a tool (protocol 1.2). ``executor`` ``client``: the client runs
    it and answers with ``tool.result``; ``server``: for the client's information."""

    response_id: str
    call_id: str
    name: str
    arguments: str
    """The model's arguments, JSON text; for ``executor`` ``client`` they fit the tool's
    schema (a call whose arguments do not is settled by the server, as ``server``)."""
    executor: str


@dataclass(frozen=True, slots=True)
class ResponseToolResult:
    """A tool call's outcome (protocol 1.2): what the model reads next."""

    response_id: str
    call_id: str
    name: str
    status: str
    """``ok``, ``error``, ``timeout``, ``invalid_arguments``, ``unknown_tool``, ``cancelled``."""
    output: str
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The agent ended the call (``end_call``), after its last reply was heard: the
    transport closes the call now (WebSocket close 1000, a phone line hangs up)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    message: str
    fatal: bool = False
    """True when the session cannot continue."""
    response_id: str | None = None
    category: str = "client"
    """``client`` (a bad frame or request: fix the client), ``transient`` (an
    engine or capacity problem that may pass: retry later) or ``permanent`` (an
    engine that cannot serve: retrying will not help)."""


Event = (
    SpeechStarted
    | SpeechStopped
    | TranscriptDelta
    | TranscriptFinal
    | TurnIgnored
    | ResponseCreated
    | ResponseTextDelta
    | ResponseAudioDelta
    | ResponseAudioClear
    | ResponseAudioPause
    | ResponseAudioResume
    | ResponseDone
    | ResponseToolCall
    | ResponseToolResult
    | SessionEnded
    | ErrorEvent
)
