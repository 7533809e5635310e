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

from agent.disclosure import caller_safe
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
    ResponseToolCall,
    ResponseToolResult,
    SessionEnded,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.tools.executor import MAX_CLIENT_OUTPUT_CHARS
from pipeline.tools.spec import Executor, ToolError, ToolSpec

PROTOCOL_VERSION = 1
PROTOCOL_MINOR = 4
"""Additions a version-1 client may ignore: 1 = ``response.audio.pause`` / ``resume``
(sent only to a client that sets ``session.playback_pause``); 2 = tools
(``response.tool_call`` / ``response.tool_result``, ``tool.result``,
``session.ended``); 3 = resume (``session.created``'s ``resume_token`` and
``resumed``, the ``resume.<token>`` subprotocol)."""
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


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The client's answer to a ``response.tool_call`` it runs (protocol 1.2)."""

    call_id: str
    output: str
    is_error: bool = False


ClientMessage = (
    SessionUpdate
    | InputAudioAppend
    | ResponseCancel
    | OutputAudioPlayed
    | ConversationText
    | ToolResult
)

MAX_TEXT_CHARS = 4000
MAX_CONTROL_FRAME_BYTES = 40 * 1024
"""Any frame but ``input_audio.append`` above this is ``frame_too_large``.

The largest legal control frame is a ``session.update`` with 8000 characters of
instructions: up to 32 000 bytes of UTF-8, plus every other field (well under 1 KiB).
"""
MAX_MAP_KEYS = 32
"""Entries a map may have (a ``session.update`` knows 14 fields)."""
SHOWN_CHARS = 64
"""How much of a client's value an error message echoes back."""

# msgpack lead bytes (msgpack spec "Formats"): what a value is, before reading it.
_MAP_LEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAY_LEADS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_STR_LEADS = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}
_EXT_LEADS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_NESTED_MAPS = frozenset({("session",), ("session", "turn")})
"""The only places the protocol has a map inside the frame's map."""
_FREE_TREES = frozenset({("session", "tools")})
"""Where the protocol holds client-written JSON (tool definitions and their argument
schemas): arrays and maps at any depth, read within ``MAX_TREE_NODES`` values and
``MAX_TREE_DEPTH`` levels."""
MAX_TREE_NODES = 4096
MAX_TREE_DEPTH = 24
MAX_TREE_ARRAY = 256
MAX_CLIENT_TOOLS = 16
_FORBIDDEN_SCHEMA_KEYS = frozenset({"pattern", "patternProperties", "$ref", "$dynamicRef"})
"""Schema keywords a client's tool may not use: a regular expression of the client's
would run on the server for every call (a catastrophic one stalls the event loop),
and a reference could point anywhere."""
_COUNT_KEYWORDS = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
)
MAX_SCHEMA_COUNT = 256
"""The largest count a client's schema may ask for: the embedded model's grammar spells
each counted item out, so ``"maxItems": 100000`` would cost the shared model's worker
a grammar of 100 000 rules per reply."""
_NAME_MAPS = frozenset({"properties", "$defs", "definitions", "dependentSchemas"})
"""Schema keywords whose map keys are names, not keywords."""


def shown(value: object) -> str:
    """A client's value for an error message: strings quoted and cut to SHOWN_CHARS,
    anything else by its type only (never the repr of unbounded client data)."""
    if not isinstance(value, str):
        return f"of type {type(value).__name__}"
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}… ({len(value)} chars)"


def _require(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(
            "invalid_message", f"{shown(message.get('type'))}: field {key!r} must be {name}"
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class _Malformed(Exception):
    """The frame breaks §1's shape; the message says how."""


class _SchemaReader:
    """Reads one client frame by the protocol's shape, not msgpack's.

    msgpack alone would build whatever a frame holds: a 256 KiB frame of empty maps
    is ~262 000 dicts (16 ms of the event loop, 80 ms with a hook per map, measured
    by ``python -m loadtest.decode_cost``). Here each value's first byte is looked
    at before it is read: a map is read only where the protocol has one (the
    frame, ``session``, ``session.turn``), an array or ext type nowhere, so a frame
    costs a bounded number of scalar reads whatever its shape. msgpack's own
    limits bound every string, bin and map it reads.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.unpacker = msgpack.Unpacker(
            raw=False,
            max_buffer_size=max(1, len(data)),
            max_str_len=len(data),
            max_bin_len=len(data),
            max_array_len=MAX_TREE_ARRAY,
            max_map_len=MAX_MAP_KEYS,
            max_ext_len=0,
        )
        self.unpacker.feed(data)
        self.tree_nodes = 0

    def frame(self) -> dict[str, Any]:
        message = self._map(())
        if self.unpacker.tell() != len(self.data):
            raise _Malformed("trailing bytes after the message")
        return message

    def _lead(self) -> int:
        position: int = self.unpacker.tell()
        if position >= len(self.data):
            raise _Malformed("frame ends inside the message")
        return self.data[position]

    def _map(self, path: tuple[str, ...]) -> dict[str, Any]:
        if self._lead() not in _MAP_LEADS:
            raise _Malformed("not a map" if path else "frame must be a msgpack map")
        entries = self.unpacker.read_map_header()
        if entries > MAX_MAP_KEYS:
            raise _Malformed(f"a map has more than {MAX_MAP_KEYS} keys")
        out: dict[str, Any] = {}
        for _ in range(entries):
            if self._lead() not in _STR_LEADS:
                raise _Malformed("map keys must be msgpack str")
            key: str = self.unpacker.unpack()
            out[key] = self._value((*path, key))
        return out

    def _value(self, path: tuple[str, ...]) -> Any:
        lead = self._lead()
        if path in _FREE_TREES:
            return self._tree(0)
        if lead in _MAP_LEADS:
            if path in _NESTED_MAPS:
                return self._map(path)
            raise _Malformed(
                f"a map at {shown('.'.join(path))}: maps only at 'session' and 'session.turn'"
            )
        if lead in _ARRAY_LEADS:
            raise _Malformed(f"an array at {shown('.'.join(path))}: client messages have none")
        if lead in _EXT_LEADS:
            raise _Malformed(f"an ext type at {shown('.'.join(path))}")
        return self.unpacker.unpack()

    def _tree(self, depth: int) -> Any:
        """Client JSON: maps with str keys, arrays and scalars, within the budgets."""
        self.tree_nodes += 1
        if self.tree_nodes > MAX_TREE_NODES:
            raise _Malformed(f"more than {MAX_TREE_NODES} values in session.tools")
        if depth > MAX_TREE_DEPTH:
            raise _Malformed(f"session.tools nested deeper than {MAX_TREE_DEPTH} levels")
        lead = self._lead()
        if lead in _MAP_LEADS:
            entries = self.unpacker.read_map_header()
            if entries > MAX_TREE_ARRAY:
                raise _Malformed(f"a map in session.tools has more than {MAX_TREE_ARRAY} keys")
            out: dict[str, Any] = {}
            for _ in range(entries):
                if self._lead() not in _STR_LEADS:
                    raise _Malformed("map keys must be msgpack str")
                key: str = self.unpacker.unpack()
                out[key] = self._tree(depth + 1)
            return out
        if lead in _ARRAY_LEADS:
            items = self.unpacker.read_array_header()
            if items > MAX_TREE_ARRAY:
                raise _Malformed(f"an array in session.tools has more than {MAX_TREE_ARRAY}")
            return [self._tree(depth + 1) for _ in range(items)]
        if lead in _EXT_LEADS:
            raise _Malformed("an ext type in session.tools")
        return self.unpacker.unpack()


def decode_client_frame(data: bytes) -> ClientMessage:
    """Parse one binary frame. Raises ProtocolError with the error code to send."""
    try:
        message = _SchemaReader(data).frame()
    except _Malformed as exc:
        raise ProtocolError("malformed_frame", f"frame is not a valid message: {exc}") from None
    except Exception as exc:  # msgpack raises several unrelated types
        reason = f"{type(exc).__name__}: {exc}"[:SHOWN_CHARS * 2]
        raise ProtocolError("malformed_frame", f"frame is not valid msgpack: {reason}") from None
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("malformed_frame", "frame must be a msgpack map with a string 'type'")
    if kind != "input_audio.append" and len(data) > MAX_CONTROL_FRAME_BYTES:
        raise ProtocolError(
            "frame_too_large",
            f"frame of {len(data)} bytes: only input_audio.append may exceed "
            f"{MAX_CONTROL_FRAME_BYTES} bytes",
        )
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
    if kind == "tool.result":
        call_id = _require(message, "call_id", str)
        output = _require(message, "output", str)
        is_error = message.get("is_error", False)
        if not isinstance(is_error, bool):
            raise ProtocolError("invalid_message", "tool.result: is_error must be true or false")
        if len(call_id) > SHOWN_CHARS or len(output) > MAX_CLIENT_OUTPUT_CHARS:
            raise ProtocolError(
                "invalid_message",
                f"tool.result: call_id ≤ {SHOWN_CHARS} chars, output ≤ "
                f"{MAX_CLIENT_OUTPUT_CHARS} chars",
            )
        return ToolResult(call_id, output, is_error)
    raise ProtocolError("unknown_type", f"unknown message type {shown(kind)}")


def encode_client_message(message: ClientMessage) -> bytes:
    return _pack({"type": CLIENT_TYPES[type(message)], **_fields(message)})


CLIENT_TYPES: dict[type, str] = {
    SessionUpdate: "session.update",
    InputAudioAppend: "input_audio.append",
    ResponseCancel: "response.cancel",
    OutputAudioPlayed: "output_audio.played",
    ConversationText: "conversation.text",
    ToolResult: "tool.result",
}


# --------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    protocol_version: int
    session: dict[str, Any]
    limits: dict[str, Any]
    protocol_minor: int = PROTOCOL_MINOR
    resume_token: str | None = None
    """(1.3) Reconnect offering the subprotocol ``resume.<token>`` to get this call
    back after a drop."""
    resumed: bool = False
    """(1.3) This is a resumed call: same session id, history and settings."""


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
    ResponseToolCall: "response.tool_call",
    ResponseToolResult: "response.tool_result",
    SessionEnded: "session.ended",
    ErrorEvent: "error",
}
_SERVER_CLASSES: dict[str, type] = {name: cls for cls, name in SERVER_TYPES.items()}


def encode_server_message(message: ServerMessage) -> bytes:
    if isinstance(message, ErrorEvent):
        # Every transport encodes here: no engine address, path or repr leaves the server.
        message = dataclasses.replace(message, message=caller_safe(message.message))
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
    if cls is SessionCreated:
        values.setdefault("protocol_minor", 0)  # §3.1: a 1.0 server does not send it
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
    "end_of_turn_policy",
    "end_of_turn_threshold",
    "end_of_turn_min_silence_ms",
    "end_of_turn_max_silence_ms",
    "end_of_turn_recheck_ms",
}
_TURN_TEXT_FIELDS = {"end_of_turn_policy"}
"""Turn fields that are names, not numbers; TurnConfig checks their values."""
_NUMBER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "partial_transcript_interval_ms": (0.0, 10_000.0),
    "read_ahead_interval_ms": (0.0, 10_000.0),
    "tool_timeout_ms": (100.0, 60_000.0),
    "tool_filler_ms": (0.0, 10_000.0),
    "end_call_grace_ms": (0.0, 10_000.0),
}
_TRANSCRIBING_INTERVALS = {"partial_transcript_interval_ms", "read_ahead_interval_ms"}
"""Intervals of whole-turn transcripts while the caller speaks: the operator's floor
(``min_partial_transcript_interval_ms``) bounds both."""
TOOL_CHOICES = ("auto", "none")
_INT_FIELDS: dict[str, tuple[int, int]] = {
    "max_response_tokens": (1, 2048),
    "first_chunk_max_words": (0, 64),
}
_BOOL_FIELDS = {
    "speculative_response",
    "speculative_transcript",
    "first_chunk_at_clause",
    "first_chunk_priority",
    "playback_pause",
    "record_audio",
}


@dataclass(frozen=True, slots=True)
class SessionCaps:
    """The operator's caps on what one call may ask of the shared engines; the
    defaults are the protocol's own bounds."""

    max_instructions_chars: int = 8000
    max_response_tokens: int = 2048
    min_partial_transcript_interval_ms: float = 0.0


def parse_session_fields(
    session: dict[str, Any], voices: list[str], caps: SessionCaps | None = None
) -> dict[str, Any]:
    """Validate a ``session.update`` payload; return the SessionConfig changes.

    The update is all or nothing: any bad field rejects it whole, so a client never
    ends up with half its settings applied. Within the protocol's bounds, ``caps``
    lowers ``max_response_tokens`` and raises a non-zero
    ``partial_transcript_interval_ms`` (``session.updated`` shows what applies) and
    refuses longer ``instructions``.
    """
    caps = caps or SessionCaps()
    changes: dict[str, Any] = {}
    for key, value in session.items():
        if key == "instructions":
            limit = min(caps.max_instructions_chars, 8000)
            if not isinstance(value, str) or len(value) > limit:
                raise ProtocolError(
                    "invalid_session", f"instructions must be a string ≤ {limit} chars"
                )
            changes[key] = value
        elif key == "voice":
            if value is not None and value not in voices:
                # Never repr a non-string (a list nested ~1000 deep raises
                # RecursionError there), nor a whole string (the reply would be as
                # large as the frame).
                raise ProtocolError(
                    "invalid_session",
                    f"unknown voice {shown(value)}; available: {', '.join(voices)}",
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
                if name in _TURN_TEXT_FIELDS:
                    if not isinstance(number, str):
                        raise ProtocolError("invalid_session", f"turn.{name} must be a string")
                elif not isinstance(number, int | float) or isinstance(number, bool):
                    raise ProtocolError("invalid_session", f"turn.{name} must be a number")
            changes[key] = {
                name: number if name in _TURN_TEXT_FIELDS else float(number)
                for name, number in value.items()
            }
        elif key == "tools":
            changes[key] = parse_client_tools(value)
        elif key == "tool_choice":
            if value not in TOOL_CHOICES:
                raise ProtocolError(
                    "invalid_session", f"tool_choice must be one of {', '.join(TOOL_CHOICES)}"
                )
            changes[key] = value
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
            if key in _TRANSCRIBING_INTERVALS and value:
                changes[key] = max(float(value), caps.min_partial_transcript_interval_ms)
        elif key in _INT_FIELDS:
            ilow, ihigh = _INT_FIELDS[key]
            if not isinstance(value, int) or isinstance(value, bool) or not ilow <= value <= ihigh:
                raise ProtocolError(
                    "invalid_session", f"{key} must be an integer in [{ilow}, {ihigh}]"
                )
            capped = key == "max_response_tokens"
            changes[key] = min(value, caps.max_response_tokens) if capped else value
        else:
            raise ProtocolError("invalid_session", f"unknown session field {shown(key)}")
    return changes


def parse_client_tools(value: Any) -> tuple[ToolSpec, ...]:
    """``session.tools``: the client's tools, OpenAI's function format (flat, as the
    Realtime API has it: ``{"type": "function", "name", "description", "parameters"}``)."""
    if not isinstance(value, list) or len(value) > MAX_CLIENT_TOOLS:
        raise ProtocolError(
            "invalid_session", f"tools must be a list of at most {MAX_CLIENT_TOOLS} tools"
        )
    specs: list[ToolSpec] = []
    for index, entry in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(entry, dict) or entry.get("type", "function") != "function":
            raise ProtocolError("invalid_session", f"{where}: a map with type 'function'")
        unknown = set(entry) - {"type", "name", "description", "parameters"}
        if unknown:
            raise ProtocolError(
                "invalid_session", f"{where}: unknown field {shown(sorted(unknown)[0])}"
            )
        name, description = entry.get("name"), entry.get("description", "")
        parameters = entry.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not isinstance(description, str):
            raise ProtocolError("invalid_session", f"{where}: name and description are strings")
        if not isinstance(parameters, dict):
            raise ProtocolError("invalid_session", f"{where}: parameters must be a JSON schema")
        if (keyword := _forbidden_keyword(parameters)) is not None:
            raise ProtocolError(
                "invalid_session", f"{where}: schema keyword {keyword!r} is not accepted"
            )
        try:
            specs.append(ToolSpec(name, description, parameters, executor=Executor.CLIENT))
        except ToolError as exc:
            raise ProtocolError("invalid_session", f"{where}: {exc}") from None
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ProtocolError("invalid_session", "tools: two tools have the same name")
    return tuple(specs)


def _forbidden_keyword(schema: Any) -> str | None:
    """The first forbidden keyword in ``schema`` (a property *named* "pattern" is fine)."""
    pending: list[tuple[Any, bool]] = [(schema, False)]
    while pending:
        node, names = pending.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if not names and key in _FORBIDDEN_SCHEMA_KEYS:
                    return str(key)
                if (
                    not names and key in _COUNT_KEYWORDS
                    and isinstance(child, int | float) and child > MAX_SCHEMA_COUNT
                ):
                    return f"{key} above {MAX_SCHEMA_COUNT}"
                pending.append((child, not names and key in _NAME_MAPS))
        elif isinstance(node, list):
            pending.extend((child, False) for child in node)
    return None
