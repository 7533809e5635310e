"""The wire protocol: msgpack maps with a ``type``, over one WebSocket.

Sans-I/O: bytes in, typed messages out, and back. docs/protocol.md is the
human-readable contract; this module is the executable one. Wire keys are the
dataclass field names, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

import msgpack

from pipeline.audio import check_sample_rate
from pipeline.errors import AudioFormatError, VoiceForgeError
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptFinal,
    TurnIgnored,
)

PROTOCOL_VERSION = 1
PROTOCOL_MINOR = 1
"""Additions a version-1 client may ignore: 1 = ``response.audio.pause`` / ``resume``
(sent only to a client that sets ``session.playback_pause``)."""
SUBPROTOCOL = "voiceforge.v1"
BEARER_SUBPROTOCOL_PREFIX = "bearer."
"""Browsers cannot set headers on a WebSocket: they offer ``bearer.<key>`` as a subprotocol."""


class ProtocolError(VoiceForgeError):
    """A client frame that breaks the protocol; ``code`` is sent in the error event."""

    transient = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InputAudioAppend:
    audio: bytes


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutputAudioPlayed:
    response_id: str
    played_ms: float


@dataclass(frozen=True, slots=True)
class ConversationText:
    text: str


ClientMessage = (
    SessionUpdate | InputAudioAppend | ResponseCancel | OutputAudioPlayed | ConversationText
)

MAX_TEXT_CHARS = 4000


def _require(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(
            "invalid_message", f"{message.get('type')}: field {key!r} must be {name}"
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _str_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Maps have str keys only (§1): bin, int or nil keys make the frame malformed."""
    if not all(type(key) is str for key, _ in pairs):
        raise ValueError("map keys must be msgpack str")
    return dict(pairs)


def decode_client_frame(data: bytes) -> ClientMessage:
    """Parse one binary frame. Raises ProtocolError with the error code to send."""
    try:
        message = msgpack.unpackb(data, raw=False, object_pairs_hook=_str_keyed)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("malformed_frame", f"frame is not valid msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("malformed_frame", "frame must be a msgpack map with a string 'type'")
    kind = message["type"]
    if kind == "input_audio.append":
        audio = _require(message, "audio", bytes)
        if len(audio) % 2:
            raise ProtocolError(
                "invalid_audio", f"PCM16 needs an even number of bytes, got {len(audio)}"
            )
        return InputAudioAppend(audio)
    if kind == "session.update":
        return SessionUpdate(_require(message, "session", dict))
    if kind == "response.cancel":
        response_id = message.get("response_id")
        if response_id is not None and not isinstance(response_id, str):
            raise ProtocolError("invalid_message", "response.cancel: response_id must be str")
        return ResponseCancel(response_id)
    if kind == "output_audio.played":
        played = _require(message, "played_ms", (int, float))
        if not math.isfinite(played) or played < 0:
            raise ProtocolError("invalid_message", "output_audio.played: played_ms must be >= 0")
        return OutputAudioPlayed(_require(message, "response_id", str), float(played))
    if kind == "conversation.text":
        text = _require(message, "text", str)
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(
                "invalid_message", f"conversation.text: text longer than {MAX_TEXT_CHARS} chars"
            )
        return ConversationText(text)
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def encode_client_message(message: ClientMessage) -> bytes:
    return _pack({"type": CLIENT_TYPES[type(message)], **_fields(message)})


CLIENT_TYPES: dict[type, str] = {
    SessionUpdate: "session.update",
    InputAudioAppend: "input_audio.append",
    ResponseCancel: "response.cancel",
    OutputAudioPlayed: "output_audio.played",
    ConversationText: "conversation.text",
}


# --------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    protocol_version: int
    session: dict[str, Any]
    limits: dict[str, Any]
    protocol_minor: int = PROTOCOL_MINOR


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session: dict[str, Any]


ServerMessage = Event | SessionCreated | SessionUpdated

SERVER_TYPES: dict[type, str] = {
    SessionCreated: "session.created",
    SessionUpdated: "session.updated",
    SpeechStarted: "input_audio.speech_started",
    SpeechStopped: "input_audio.speech_stopped",
    TurnIgnored: "input_audio.turn_ignored",
    TranscriptDelta: "transcript.delta",
    TranscriptFinal: "transcript.final",
    ResponseCreated: "response.created",
    ResponseTextDelta: "response.text.delta",
    ResponseAudioDelta: "response.audio.delta",
    ResponseAudioClear: "response.audio.clear",
    ResponseAudioPause: "response.audio.pause",
    ResponseAudioResume: "response.audio.resume",
    ResponseDone: "response.done",
    ErrorEvent: "error",
}
_SERVER_CLASSES: dict[str, type] = {name: cls for cls, name in SERVER_TYPES.items()}


def encode_server_message(message: ServerMessage) -> bytes:
    return _pack({"type": SERVER_TYPES[type(message)], **_fields(message)})


def decode_server_frame(data: bytes) -> ServerMessage:
    """Parse a server frame into its dataclass (used by the SDK)."""
    message = msgpack.unpackb(data, raw=False)
    cls = _SERVER_CLASSES.get(message.pop("type", None))
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown server message {message!r:.80}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in message.items() if k in names}
    if cls is ResponseDone:
        values["status"] = ResponseStatus(values["status"])
    result: ServerMessage = cls(**values)
    return result


def _fields(message: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


# ---------------------------------------------------------------- session.update

_TURN_FIELDS = {
    "speech_threshold",
    "silence_threshold",
    "min_speech_ms",
    "end_of_turn_silence_ms",
    "barge_in_min_speech_ms",
}
_NUMBER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "partial_transcript_interval_ms": (0.0, 10_000.0),
}
_INT_FIELDS: dict[str, tuple[int, int]] = {"max_response_tokens": (1, 2048)}
_BOOL_FIELDS = {
    "speculative_response",
    "speculative_transcript",
    "first_chunk_at_clause",
    "playback_pause",
}


def parse_session_fields(session: dict[str, Any], voices: list[str]) -> dict[str, Any]:
    """Validate a ``session.update`` payload; return the SessionConfig changes.

    The update is all or nothing: any bad field rejects it whole, so a client never
    ends up with half its settings applied.
    """
    changes: dict[str, Any] = {}
    for key, value in session.items():
        if key == "instructions":
            if not isinstance(value, str) or len(value) > 8000:
                raise ProtocolError("invalid_session", "instructions must be a string ≤ 8000 chars")
            changes[key] = value
        elif key == "voice":
            if value is not None and value not in voices:
                # Never repr a non-string: a list nested ~1000 deep (msgpack decodes
                # 1024 levels) raises RecursionError there and ends the session.
                shown = repr(value) if isinstance(value, str) else f"of type {type(value).__name__}"
                raise ProtocolError(
                    "invalid_session", f"unknown voice {shown}; available: {', '.join(voices)}"
                )
            changes[key] = value
        elif key in ("input_sample_rate", "output_sample_rate"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtocolError("unsupported_sample_rate", f"{key} must be an integer")
            try:
                changes[key] = check_sample_rate(value)
            except AudioFormatError as exc:
                raise ProtocolError("unsupported_sample_rate", f"{key}: {exc}") from None
        elif key == "turn":
            if not isinstance(value, dict) or not set(value) <= _TURN_FIELDS:
                allowed = ", ".join(sorted(_TURN_FIELDS))
                raise ProtocolError("invalid_session", f"turn takes a map of: {allowed}")
            for name, number in value.items():
                if not isinstance(number, int | float) or isinstance(number, bool):
                    raise ProtocolError("invalid_session", f"turn.{name} must be a number")
            changes[key] = {name: float(number) for name, number in value.items()}
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ProtocolError("invalid_session", f"{key} must be true or false")
            changes[key] = value
        elif key in _NUMBER_FIELDS:
            low, high = _NUMBER_FIELDS[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or not (
                low <= value <= high
            ):
                raise ProtocolError("invalid_session", f"{key} must be a number in [{low}, {high}]")
            changes[key] = float(value)
        elif key in _INT_FIELDS:
            ilow, ihigh = _INT_FIELDS[key]
            if not isinstance(value, int) or isinstance(value, bool) or not ilow <= value <= ihigh:
                raise ProtocolError(
                    "invalid_session", f"{key} must be an integer in [{ilow}, {ihigh}]"
                )
            changes[key] = value
        else:
            raise ProtocolError("invalid_session", f"unknown session field {key!r}")
    return changes
