"""docs/protocol.md as an executable reference model, written from the page, not the code.

The fuzz tests compare what the decoder and the live endpoint do with what this
model says the page promises. It works on the frame as any msgpack reader sees it
(``msgpack.unpackb(..., strict_map_key=False)``), so float32 rounding and the like
are taken into account.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import msgpack

# §7, by hand: every error code the page documents.
DOCUMENTED_ERROR_CODES = frozenset(
    {
        "malformed_frame",
        "unknown_type",
        "invalid_message",
        "invalid_audio",
        "invalid_session",
        "unsupported_sample_rate",
        "frame_too_large",
        "audio_rate_exceeded",
        "too_many_frames",
        "client_too_slow",
        "idle_timeout",
        "call_time_limit",
        "server_shutting_down",
        "input_overloaded",
        "stt_failed",
        "llm_unavailable",
        "llm_timeout",
        "llm_failed",
        "tts_failed",
        "engine_failed",
        "internal_error",
        "unknown_tool_call",
    }
)
ERROR_CATEGORIES = frozenset({"client", "transient", "permanent"})
"""§5 ``error.category``; §7: ``client`` unless the table brackets another."""
TRANSIENT_FRAME_CODES = frozenset({"input_overloaded"})
"""The one code a client frame can earn whose category is not ``client``."""
DECODER_CODES = frozenset(
    {"malformed_frame", "unknown_type", "invalid_message", "invalid_audio", "frame_too_large"}
)
"""What a single frame can be refused with, before any session state matters."""
SESSION_CODES = frozenset({"invalid_session", "unsupported_sample_rate"})
AUDIO_FLOW_CODES = frozenset({"audio_rate_exceeded", "input_overloaded"})
"""A valid ``input_audio.append`` may still be dropped with one of these (§4, §7)."""

# §4: the five client types.
CLIENT_TYPES = (
    "session.update",
    "input_audio.append",
    "response.cancel",
    "output_audio.played",
    "conversation.text",
    "tool.result",
)
# §5: what the server may send.
SERVER_TYPES = frozenset(
    {
        "session.created",
        "session.updated",
        "input_audio.speech_started",
        "input_audio.speech_stopped",
        "input_audio.turn_ignored",
        "transcript.delta",
        "transcript.final",
        "response.created",
        "response.text.delta",
        "response.audio.delta",
        "response.audio.clear",
        "response.audio.pause",
        "response.audio.resume",
        "response.done",
        "response.tool_call",
        "response.tool_result",
        "session.ended",
        "error",
    }
)
MAX_TEXT_CHARS = 4000
MAX_CONTROL_FRAME_BYTES = 40960
"""§7: a frame other than ``input_audio.append`` over this is ``frame_too_large``."""
MAX_MAP_KEYS = 32
"""§1: a map with more entries is ``malformed_frame``."""
MAX_INSTRUCTIONS_CHARS = 8000
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
TURN_FIELDS = (
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
)
TURN_TEXT_FIELDS = ("end_of_turn_policy",)
END_OF_TURN_POLICIES = ("silence", "learned")
BOOL_FIELDS = (
    "speculative_response",
    "speculative_transcript",
    "first_chunk_at_clause",
    "first_chunk_priority",
    "playback_pause",
    "record_audio",
)
NUMBER_FIELDS = {
    "temperature": (0.0, 2.0),
    "partial_transcript_interval_ms": (0.0, 10_000.0),
    "read_ahead_interval_ms": (0.0, 10_000.0),
    "tool_timeout_ms": (100.0, 60_000.0),
    "tool_filler_ms": (0.0, 10_000.0),
    "end_call_grace_ms": (0.0, 10_000.0),
}
INT_FIELDS = {"max_response_tokens": (1, 2048), "first_chunk_max_words": (0, 64)}
SESSION_FIELDS = (
    "instructions",
    "voice",
    "input_sample_rate",
    "output_sample_rate",
    "turn",
    *BOOL_FIELDS,
    *NUMBER_FIELDS,
    *INT_FIELDS,
    "tools",
    "tool_choice",
)
# §1 and §3.2 (1.2): ``session.tools``, the one place client JSON may nest.
TREE_VALUES = 4096
TREE_LEVELS = 24
"""Values nested below ``tools`` itself (level 0)."""
TREE_ENTRIES = 256
MAX_CLIENT_TOOLS = 16
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOL_DESCRIPTION_CHARS = 1024
TOOL_KEYS = frozenset({"type", "name", "description", "parameters"})
FORBIDDEN_SCHEMA_KEYWORDS = frozenset({"pattern", "patternProperties", "$ref", "$dynamicRef"})
COUNT_KEYWORDS = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
)
MAX_SCHEMA_COUNT = 256
NAME_MAPS = frozenset({"properties", "$defs", "definitions", "dependentSchemas"})
"""Schema keywords whose keys are names (a property *named* ``pattern`` is fine)."""
TOOL_CHOICES = ("auto", "none")
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
# §4 ``tool.result``.
MAX_CALL_ID_CHARS = 64
MAX_TOOL_OUTPUT_CHARS = 16000

def generic_unpack(frame: bytes) -> tuple[bool, Any]:
    """(True, object) as any msgpack reader sees the frame, or (False, None)."""
    try:
        return True, msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:  # any reader refusing it is enough
        return False, None


def keys_are_strings(obj: Any) -> bool:
    """Every map key at any depth is a str. Iterative: frames nest ~1000 deep."""
    allowed = (str,)  # §1: bin, int or nil keys make a frame malformed_frame
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, allowed) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


class _Pairs(list[tuple[Any, Any]]):
    """A map as its (key, value) pairs, repeated keys kept."""


def _pairs(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False, object_pairs_hook=_Pairs)


def shape_is_allowed(frame: bytes) -> bool:
    """§1 nesting: maps only as ``session`` and ``session.turn``, no array or ext value
    anywhere, at most 32 entries per map (repeated keys counted) — except
    ``session.tools``: client JSON within the budgets (values, levels, entries, no ext;
    the values of every ``tools`` of the frame counted together)."""
    try:
        top = _pairs(frame)
    except Exception:  # generic_unpack has already judged the frame
        return False
    tree_values = 0

    def tree(root: Any) -> bool:
        nonlocal tree_values
        pending = [(root, 0)]
        while pending:
            value, level = pending.pop()
            tree_values += 1
            if tree_values > TREE_VALUES or level > TREE_LEVELS:
                return False
            if isinstance(value, _Pairs):
                if len(value) > TREE_ENTRIES:
                    return False
                pending.extend((child, level + 1) for _, child in value)
            elif isinstance(value, list):
                if len(value) > TREE_ENTRIES:
                    return False
                pending.extend((child, level + 1) for child in value)
            elif isinstance(value, msgpack.ExtType | msgpack.Timestamp):
                return False
        return True

    def flat(pairs: _Pairs, maps_at: dict[str, Any], path: tuple[Any, ...]) -> bool:
        if len(pairs) > MAX_MAP_KEYS:
            return False
        for key, value in pairs:
            if path == ("session",) and key == "tools":
                if not tree(value):
                    return False
            elif isinstance(value, _Pairs):
                if key not in maps_at or not flat(value, maps_at[key], (*path, key)):
                    return False
            elif isinstance(value, list | msgpack.ExtType | msgpack.Timestamp):
                return False
        return True

    return isinstance(top, _Pairs) and flat(top, {"session": {"turn": {}}}, ())


def is_number(value: Any) -> bool:
    """§1: a *number* is a msgpack int or float, never a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def expected_decode(frame: bytes) -> str | None:
    """The error code §7 gives a frame on its own (size aside), or None: accepted."""
    ok, message = generic_unpack(frame)
    if not ok or not keys_are_strings(message):
        return "malformed_frame"
    if not isinstance(message, dict) or not shape_is_allowed(frame):
        return "malformed_frame"
    if not isinstance(message.get("type"), str):
        return "malformed_frame"
    kind = message["type"]
    if kind != "input_audio.append" and len(frame) > MAX_CONTROL_FRAME_BYTES:
        return "frame_too_large"
    if kind not in CLIENT_TYPES:
        return "unknown_type"
    if kind == "input_audio.append":
        audio = message.get("audio")
        if not isinstance(audio, bytes):
            return "invalid_message"
        return "invalid_audio" if len(audio) % 2 else None
    if kind == "session.update":
        return None if isinstance(message.get("session"), dict) else "invalid_message"
    if kind == "response.cancel":
        response_id = message.get("response_id")
        return None if response_id is None or isinstance(response_id, str) else "invalid_message"
    if kind == "output_audio.played":
        played: Any = message.get("played_ms")
        good = (
            is_number(played)
            and math.isfinite(played)
            and played >= 0
            and isinstance(message.get("response_id"), str)
        )
        return None if good else "invalid_message"
    if kind == "tool.result":
        call_id, output = message.get("call_id"), message.get("output")
        is_error = message.get("is_error", False)  # optional: absent, not nil
        good = (
            isinstance(call_id, str)
            and len(call_id) <= MAX_CALL_ID_CHARS
            and isinstance(output, str)
            and len(output) <= MAX_TOOL_OUTPUT_CHARS
            and isinstance(is_error, bool)
        )
        return None if good else "invalid_message"
    text = message.get("text")
    return None if isinstance(text, str) and len(text) <= MAX_TEXT_CHARS else "invalid_message"


def schema_is_allowed(schema: Any) -> bool:
    """§3.2 ``tools``: no forbidden keyword and no count over 256 (names excepted)."""
    pending: list[tuple[Any, bool]] = [(schema, False)]
    while pending:
        node, names = pending.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if not names and key in FORBIDDEN_SCHEMA_KEYWORDS:
                    return False
                if (not names and key in COUNT_KEYWORDS and is_number(child)
                        and child > MAX_SCHEMA_COUNT):
                    return False
                pending.append((child, not names and key in NAME_MAPS))
        elif isinstance(node, list):
            pending.extend((child, False) for child in node)
    return True


def tools_view(value: Any) -> list[dict[str, Any]] | None:
    """§3.2 ``tools``: the list ``session.updated`` shows, or None when refused."""
    if not isinstance(value, list) or len(value) > MAX_CLIENT_TOOLS:
        return None
    view = []
    for entry in value:
        if not isinstance(entry, dict) or entry.get("type", "function") != "function":
            return None
        if not set(entry) <= TOOL_KEYS:
            return None
        name, description = entry.get("name"), entry.get("description", "")
        parameters = entry.get("parameters", NO_ARGUMENTS)
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            return None
        if not isinstance(description, str) or len(description) > MAX_TOOL_DESCRIPTION_CHARS:
            return None
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            return None
        if not schema_is_allowed(parameters):
            return None
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError:
            return None
        view.append({"type": "function", "name": name, "description": description,
                     "parameters": parameters})
    names = [tool["name"] for tool in view]
    return view if len(set(names)) == len(names) else None


def turn_is_valid(
    turn: dict[str, Any], policies: tuple[str, ...] | list[str] = END_OF_TURN_POLICIES
) -> bool:
    """§3.2 turn table: the merged settings, validated as a whole; ``policies`` are
    the ones ``session.created.limits.end_of_turn_policies`` lists."""
    speech, silence = turn["speech_threshold"], turn["silence_threshold"]
    if not (0.0 <= speech <= 1.0 and 0.0 <= silence <= 1.0 and silence <= speech):
        return False
    if turn["end_of_turn_policy"] not in policies:
        return False
    if not 0.0 <= turn["end_of_turn_threshold"] <= 1.0:
        return False
    durations = (
        turn["min_speech_ms"],
        turn["end_of_turn_silence_ms"],
        turn["barge_in_min_speech_ms"],
        turn["end_of_turn_min_silence_ms"],
        turn["end_of_turn_max_silence_ms"],
    )
    if not all(math.isfinite(value) and value >= 0.0 for value in durations):
        return False
    recheck = turn["end_of_turn_recheck_ms"]
    return (
        turn["end_of_turn_max_silence_ms"] >= turn["end_of_turn_min_silence_ms"]
        and math.isfinite(recheck)
        and recheck >= 32.0
    )


@dataclass
class SessionModel:
    """The settings a session has, per §3: ``session.created.session`` plus valid updates."""

    view: dict[str, Any]
    voices: list[str]
    limits: dict[str, Any] = field(default_factory=dict)
    """``session.created.limits``: the operator's caps lower ``max_response_tokens``,
    raise a non-zero ``partial_transcript_interval_ms`` and bound ``instructions``."""
    records_calls: bool = False
    """Whether the server records calls: one with ``VOICEFORGE_RECORDINGS=off`` (the
    default) refuses ``record_audio: true``; the protocol's own parser, which knows
    no server, takes either boolean."""

    def field_codes(self, key: Any, value: Any) -> set[str]:
        """The codes one ``session.update`` field earns on its own (§3.2)."""
        if key == "instructions":
            limit = min(MAX_INSTRUCTIONS_CHARS, self.limits.get("max_instructions_chars", 8000))
            good = isinstance(value, str) and len(value) <= limit
        elif key == "voice":
            good = value is None or (isinstance(value, str) and value in self.voices)
        elif key in ("input_sample_rate", "output_sample_rate"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value in SAMPLE_RATES
            return set() if ok else {"unsupported_sample_rate"}
        elif key == "turn":
            good = (
                isinstance(value, dict)
                and all(name in TURN_FIELDS for name in value)
                and all(
                    isinstance(number, str) if name in TURN_TEXT_FIELDS else is_number(number)
                    for name, number in value.items()
                )
            )
        elif key == "tools":
            good = tools_view(value) is not None
        elif key == "tool_choice":
            good = isinstance(value, str) and value in TOOL_CHOICES
        elif key == "record_audio":
            good = value is False or (self.records_calls and value is True)
        elif key in BOOL_FIELDS:
            good = isinstance(value, bool)
        elif key in NUMBER_FIELDS:
            low, high = NUMBER_FIELDS[key]
            good = is_number(value) and low <= value <= high
        elif key in INT_FIELDS:
            ilow, ihigh = INT_FIELDS[key]
            good = isinstance(value, int) and not isinstance(value, bool) and ilow <= value <= ihigh
        else:
            good = False  # any other key
        return set() if good else {"invalid_session"}

    def expect_update(self, session: dict[Any, Any]) -> tuple[set[str], dict[str, Any] | None]:
        """(codes, None) when refused: any one of ``codes`` (the page sets no order
        among several bad fields); (empty, the new settings) when applied."""
        codes: set[str] = set()
        for key, value in session.items():
            codes |= self.field_codes(key, value)
        if codes:
            return codes, None
        view = dict(self.view)
        for key, value in session.items():
            if key == "turn":
                turn = {
                    **view["turn"],
                    **{n: v if n in TURN_TEXT_FIELDS else float(v) for n, v in value.items()},
                }
                policies = self.limits.get("end_of_turn_policies", END_OF_TURN_POLICIES)
                if not turn_is_valid(turn, policies):
                    return {"invalid_session"}, None
                view["turn"] = turn
            elif key in NUMBER_FIELDS:
                view[key] = float(value)
                floor = self.limits.get("min_partial_transcript_interval_ms", 0.0)
                transcribing = ("partial_transcript_interval_ms", "read_ahead_interval_ms")
                if key in transcribing and value:
                    view[key] = max(float(value), float(floor))
            elif key == "max_response_tokens":
                view[key] = min(value, self.limits.get("max_response_tokens", value))
            elif key == "tools":
                view[key] = tools_view(value)
            else:
                view[key] = value
        return set(), view

    def apply(self, view: dict[str, Any]) -> None:
        self.view = view


PRODUCTION_RECURSION_LIMIT = 1000
"""CPython's default; nothing in ``voiceforge serve`` (or uvicorn) changes it."""


@contextmanager
def production_recursion_limit() -> Iterator[None]:
    """Run under the server's recursion limit. Hypothesis raises it by 2000 frames
    while a test runs, which would hide a RecursionError a client can trigger with a
    frame nested ~1000 deep (msgpack decodes up to 1024 levels)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(PRODUCTION_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
