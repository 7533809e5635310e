"""The OpenAI Realtime API's JSON shapes, mapped onto VoiceForge's (pure, no I/O).

``/v1/realtime`` (agent/realtime.py) speaks the Realtime API's GA protocol as the
official ``openai`` SDK's types define it (``openai.types.realtime``); what it runs is
the same conversation as ``/ws``. This module holds the translation that needs no
socket: a Realtime ``session`` object to and from ``/ws`` session fields
(validated again by ``agent.bridge.updated_config``), a ``response.create``'s
settings, and the server events' bodies. docs/openai-compat.md tables every event
and field: supported, mapped or refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from agent.protocol import ProtocolError, shown
from pipeline.audio import check_sample_rate
from pipeline.errors import AudioFormatError
from pipeline.reply_state import ResponseRequest
from pipeline.session import SessionConfig

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
"""The API's own voice names: a client written for it names one; it gets this
server's default voice (the session shows which)."""

MAX_OUTPUT_TOKENS = 4096
"""The API's bound on ``max_output_tokens``; the server's cap applies below it."""

SEMANTIC_EAGERNESS = {
    # eagerness: (end-of-turn model threshold, longest silence before the turn ends)
    "low": (0.7, 3000.0),
    "medium": (0.5, 2000.0),
    "auto": (0.5, 2000.0),
    "high": (0.3, 1000.0),
}
"""``semantic_vad`` runs the learned end-of-turn policy: a more eager setting ends a
turn on a lower probability that it is complete, and waits less at most."""

SEMANTIC_SILENCE_MS = {"low": 1000.0, "medium": 600.0, "auto": 600.0, "high": 300.0}
"""``semantic_vad`` on a server without the end-of-turn model: silence only."""


def new_id(prefix: str) -> str:
    """An id for an event, item or the like (``event_…``, ``item_…``)."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class RealtimeError(ProtocolError):
    """A client event the API would refuse: sent as an ``error`` event in its shape."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(code, message)
        self.param = param


class AudioFormat(StrEnum):
    PCM = "audio/pcm"
    """PCM16 little-endian mono, 24 kHz unless ``rate`` says otherwise."""
    PCMU = "audio/pcmu"
    """G.711 µ-law, 8 kHz (pipeline/mulaw.py)."""


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    """What a Realtime session shows beyond ``SessionConfig``: the names and formats
    the client chose, as it chose them."""

    model: str = "voiceforge"
    input_format: AudioFormat = AudioFormat.PCM
    output_format: AudioFormat = AudioFormat.PCM
    voice: str | None = None
    """As the client named it (an OpenAI voice name maps to the default voice)."""
    transcription: dict[str, Any] | None = None
    """None: no ``input_audio_transcription`` events (the API's default); the
    caller's words are transcribed for the model either way."""
    turn_detection: dict[str, Any] | None = field(
        default_factory=lambda: {"type": "server_vad"}
    )
    max_output_tokens: int | str = "inf"


def _fail(param: str, message: str, code: str = "invalid_value") -> RealtimeError:
    return RealtimeError(code, message, param)


def _expect_map(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(param, f"{param} must be an object")
    return value


def _only(value: dict[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise _fail(f"{param}.{key}", f"unknown parameter {param}.{key}", "unknown_parameter")


def _unsupported(param: str, what: str) -> RealtimeError:
    return RealtimeError("unsupported_feature", f"{param}: {what} is not supported by this "
                         "server (docs/openai-compat.md)", param)


def parse_format(value: Any, param: str) -> tuple[AudioFormat, int]:
    """An ``audio/pcm`` (any rate this server resamples) or ``audio/pcmu`` format."""
    value = _expect_map(value, param)
    _only(value, {"type", "rate"}, param)
    kind = value.get("type", AudioFormat.PCM.value)
    if kind == AudioFormat.PCMU.value:
        return AudioFormat.PCMU, 8000
    if kind != AudioFormat.PCM.value:
        if kind == "audio/pcma":
            raise _unsupported(f"{param}.type", "G.711 A-law (audio/pcma)")
        raise _fail(f"{param}.type", f"unknown audio format {shown(kind)}")
    rate = value.get("rate", 24000)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise _fail(f"{param}.rate", f"{param}.rate must be an integer")
    try:
        return AudioFormat.PCM, check_sample_rate(rate)
    except AudioFormatError as exc:
        raise _fail(f"{param}.rate", str(exc)) from None


def turn_fields(
    detection: dict[str, Any], policies: list[str]
) -> tuple[dict[str, Any], float | None]:
    """``turn_detection`` as ``/ws`` turn fields, and the speech pad it asks for."""
    param = "session.audio.input.turn_detection"
    kind = detection.get("type")
    if detection.get("create_response", True) not in (True, False):
        raise _fail(f"{param}.create_response", "create_response must be true or false")
    if detection.get("interrupt_response", True) is not True:
        raise _unsupported(f"{param}.interrupt_response", "interrupt_response=false")
    if detection.get("idle_timeout_ms") is not None:
        raise _unsupported(f"{param}.idle_timeout_ms", "an idle timeout")
    if kind == "server_vad":
        _only(detection, {"type", "threshold", "prefix_padding_ms", "silence_duration_ms",
                          "create_response", "interrupt_response", "idle_timeout_ms"}, param)
        turn: dict[str, Any] = {"end_of_turn_policy": "silence"}
        threshold = detection.get("threshold")
        if threshold is not None:
            if not isinstance(threshold, int | float) or not 0.0 < threshold <= 1.0:
                raise _fail(f"{param}.threshold", "threshold must be a number in (0, 1]")
            # The detector's hysteresis: speech stops a little below where it starts.
            turn["speech_threshold"] = float(threshold)
            turn["silence_threshold"] = max(0.0, float(threshold) - 0.15)
        silence = detection.get("silence_duration_ms")
        if silence is not None:
            if not isinstance(silence, int | float) or not 0 <= silence <= 10_000:
                raise _fail(f"{param}.silence_duration_ms", "silence_duration_ms: 0 to 10000")
            turn["end_of_turn_silence_ms"] = float(silence)
        pad = detection.get("prefix_padding_ms")
        if pad is not None and (not isinstance(pad, int | float) or not 0 <= pad <= 1000):
            raise _fail(f"{param}.prefix_padding_ms", "prefix_padding_ms: 0 to 1000")
        return turn, None if pad is None else float(pad)
    if kind == "semantic_vad":
        _only(detection, {"type", "eagerness", "create_response", "interrupt_response"}, param)
        eagerness = detection.get("eagerness", "auto")
        if eagerness not in SEMANTIC_EAGERNESS:
            raise _fail(f"{param}.eagerness", "eagerness: low, medium, high or auto")
        if "learned" not in policies:
            return {"end_of_turn_policy": "silence",
                    "end_of_turn_silence_ms": SEMANTIC_SILENCE_MS[eagerness]}, None
        threshold, longest = SEMANTIC_EAGERNESS[eagerness]
        return {"end_of_turn_policy": "learned", "end_of_turn_threshold": threshold,
                "end_of_turn_max_silence_ms": longest}, None
    raise _fail(f"{param}.type", "turn_detection.type: server_vad or semantic_vad")


def _voice(value: Any, voices: list[str]) -> tuple[str | None, str | None]:
    """(the name the session shows, the ``/ws`` voice) for ``audio.output.voice``."""
    name = value.get("id") if isinstance(value, dict) else value
    if not isinstance(name, str):
        raise _fail("session.audio.output.voice", "voice must be a string or {\"id\": ...}")
    if name in voices:
        return name, name
    if name in OPENAI_VOICES:
        return name, None
    raise _fail("session.audio.output.voice",
                f"unknown voice {shown(name)}; available: {', '.join(voices)}")


def _tokens(value: Any, param: str) -> int | str:
    if value == "inf":
        return "inf"
    if not isinstance(value, int) or isinstance(value, bool) or not (
        1 <= value <= MAX_OUTPUT_TOKENS
    ):
        raise _fail(param, f"max_output_tokens: an integer 1 to {MAX_OUTPUT_TOKENS}, or 'inf'")
    return value


def _tool_choice(value: Any, param: str) -> str:
    if value in ("auto", "none"):
        return str(value)
    raise _unsupported(param, f"tool_choice {shown(value) if isinstance(value, str) else 'object'}")


_SESSION_KEYS = {
    "type", "model", "instructions", "audio", "output_modalities", "tools", "tool_choice",
    "max_output_tokens", "temperature", "tracing", "truncation", "include", "prompt",
    "reasoning", "parallel_tool_calls", "id", "object", "expires_at",
}


def parse_session(
    session: Any, current: RealtimeSettings, voices: list[str], policies: list[str],
    max_response_tokens: int,
) -> tuple[RealtimeSettings, dict[str, Any], float | None]:
    """A ``session.update``'s ``session``: the new settings, the ``/ws`` session
    fields it sets, and the speech pad (ms) if it sets one. All or nothing."""
    session = _expect_map(session, "session")
    _only(session, _SESSION_KEYS, "session")
    settings = current
    fields: dict[str, Any] = {}
    pad: float | None = None
    if session.get("type", "realtime") != "realtime":
        raise _unsupported("session.type", "a transcription-only session")
    # ``tracing`` is accepted and has no effect: this server keeps no traces dashboard,
    # and clients (the Agents SDK) set it by default.
    for name in ("prompt", "reasoning", "include"):
        if session.get(name) not in (None, []):
            raise _unsupported(f"session.{name}", name)
    if session.get("truncation", "auto") != "auto":
        raise _unsupported("session.truncation", "truncation other than 'auto'")
    if session.get("parallel_tool_calls") is True:
        raise _unsupported("session.parallel_tool_calls", "parallel tool calls")
    if "model" in session:
        if not isinstance(session["model"], str):
            raise _fail("session.model", "model must be a string")
        settings = replace(settings, model=session["model"])
    if "instructions" in session:
        fields["instructions"] = session["instructions"]
    if "temperature" in session:  # the beta API's field; GA sessions do not send it
        fields["temperature"] = session["temperature"]
    modalities = session.get("output_modalities")
    if modalities is not None and list(modalities) != ["audio"]:
        raise _unsupported("session.output_modalities", "a reply without audio")
    if "max_output_tokens" in session:
        tokens = _tokens(session["max_output_tokens"], "session.max_output_tokens")
        settings = replace(settings, max_output_tokens=tokens)
        fields["max_response_tokens"] = (
            max_response_tokens if tokens == "inf" else min(int(tokens), max_response_tokens)
        )
    if "tools" in session:
        tools = session["tools"]
        if isinstance(tools, list) and any(
            isinstance(tool, dict) and tool.get("type") == "mcp" for tool in tools
        ):
            raise _unsupported("session.tools", "MCP tools")
        fields["tools"] = tools
    if "tool_choice" in session:
        fields["tool_choice"] = _tool_choice(session["tool_choice"], "session.tool_choice")
    audio = session.get("audio")
    if audio is not None:
        audio = _expect_map(audio, "session.audio")
        _only(audio, {"input", "output"}, "session.audio")
        settings, pad = _audio_input(audio.get("input"), settings, fields, policies)
        settings = _audio_output(audio.get("output"), settings, fields, voices)
    return settings, fields, pad


def _audio_input(
    value: Any, settings: RealtimeSettings, fields: dict[str, Any], policies: list[str]
) -> tuple[RealtimeSettings, float | None]:
    if value is None:
        return settings, None
    param = "session.audio.input"
    value = _expect_map(value, param)
    _only(value, {"format", "noise_reduction", "transcription", "turn_detection"}, param)
    pad = None
    if value.get("format") is not None:
        kind, rate = parse_format(value["format"], f"{param}.format")
        settings = replace(settings, input_format=kind)
        fields["input_sample_rate"] = rate
    if value.get("noise_reduction") is not None:
        raise _unsupported(f"{param}.noise_reduction", "noise reduction")
    if "transcription" in value:
        transcription = value["transcription"]
        if transcription is not None:
            transcription = _expect_map(transcription, f"{param}.transcription")
            _only(transcription, {"model", "language", "prompt", "delay", "keywords",
                                  "languages"}, f"{param}.transcription")
            for name in ("prompt", "keywords", "languages", "delay"):
                if transcription.get(name) not in (None, "", []):
                    raise _unsupported(f"{param}.transcription.{name}", name)
            if transcription.get("language") not in (None, "en"):
                raise _unsupported(f"{param}.transcription.language",
                                   "a language other than English ('en')")
        settings = replace(settings, transcription=transcription)
    if "turn_detection" in value:
        detection = value["turn_detection"]
        if detection is None:  # manual turns: the client commits (SessionConfig.manual_turns)
            settings = replace(settings, turn_detection=None)
        else:
            detection = _expect_map(detection, f"{param}.turn_detection")
            fields["turn"], pad = turn_fields(detection, policies)
            settings = replace(settings, turn_detection=dict(detection))
    return settings, pad


def _audio_output(
    value: Any, settings: RealtimeSettings, fields: dict[str, Any], voices: list[str]
) -> RealtimeSettings:
    if value is None:
        return settings
    param = "session.audio.output"
    value = _expect_map(value, param)
    _only(value, {"format", "voice", "speed"}, param)
    if value.get("format") is not None:
        kind, rate = parse_format(value["format"], f"{param}.format")
        settings = replace(settings, output_format=kind)
        fields["output_sample_rate"] = rate
    if value.get("speed") not in (None, 1, 1.0):
        raise _unsupported(f"{param}.speed", "a speaking speed other than 1.0")
    if value.get("voice") is not None:
        shown_name, voice = _voice(value["voice"], voices)
        settings = replace(settings, voice=shown_name)
        fields["voice"] = voice
    return settings


def _format_view(kind: AudioFormat, rate: int) -> dict[str, Any]:
    return {"type": kind.value, "rate": rate} if kind is AudioFormat.PCM else {"type": kind.value}


def session_object(
    session_id: str, settings: RealtimeSettings, config: SessionConfig, default_voice: str
) -> dict[str, Any]:
    """The ``session`` of ``session.created`` / ``session.updated``: what applies."""
    turn = config.turn
    detection = settings.turn_detection
    if detection is not None and detection.get("type") == "server_vad":
        detection = {
            "type": "server_vad",
            "threshold": turn.speech_threshold,
            "prefix_padding_ms": round(config.speech_pad_ms),
            "silence_duration_ms": round(turn.end_of_turn_silence_ms),
            "create_response": config.auto_reply,
            "interrupt_response": True,
            "idle_timeout_ms": None,
        }
    elif detection is not None:
        detection = {"type": "semantic_vad", "eagerness": detection.get("eagerness", "auto"),
                      "create_response": config.auto_reply, "interrupt_response": True}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": settings.model,
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {
            "input": {
                "format": _format_view(settings.input_format, config.input_sample_rate),
                "transcription": settings.transcription,
                "noise_reduction": None,
                "turn_detection": detection,
            },
            "output": {
                "format": _format_view(settings.output_format, config.output_sample_rate),
                "voice": settings.voice or config.voice or default_voice,
                "speed": 1.0,
            },
        },
        "tools": [
            {"type": "function", "name": spec.name, "description": spec.description,
             "parameters": dict(spec.parameters)}
            for spec in config.tools
        ],
        "tool_choice": config.tool_choice,
        "max_output_tokens": settings.max_output_tokens,
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
    }


_RESPONSE_KEYS = {
    "conversation", "instructions", "max_output_tokens", "metadata", "output_modalities",
    "input", "tools", "tool_choice", "audio", "prompt", "reasoning", "parallel_tool_calls",
}


def parse_response_create(
    value: Any, max_response_tokens: int
) -> tuple[ResponseRequest, dict[str, Any] | None]:
    """A ``response.create``'s ``response``: the reply's settings, and its metadata."""
    if value is None:
        return ResponseRequest(), None
    param = "response"
    value = _expect_map(value, param)
    _only(value, _RESPONSE_KEYS, param)
    conversation = value.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise _unsupported(f"{param}.conversation", "a conversation other than auto or none")
    for name in ("input", "tools", "prompt", "reasoning", "audio"):
        if value.get(name) not in (None, []):
            raise _unsupported(f"{param}.{name}", f"a response's own {name}")
    if value.get("tool_choice") not in (None, "auto"):
        raise _unsupported(f"{param}.tool_choice", "a response's own tool_choice")
    modalities = value.get("output_modalities")
    if modalities is not None and list(modalities) != ["audio"]:
        raise _unsupported(f"{param}.output_modalities", "a reply without audio")
    instructions = value.get("instructions")
    if instructions is not None and (not isinstance(instructions, str)
                                     or len(instructions) > 8000):
        raise _fail(f"{param}.instructions", "instructions: a string of at most 8000 chars")
    tokens = value.get("max_output_tokens")
    max_tokens = None
    if tokens is not None:
        parsed = _tokens(tokens, f"{param}.max_output_tokens")
        max_tokens = max_response_tokens if parsed == "inf" else min(int(parsed),
                                                                     max_response_tokens)
    metadata = value.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or len(metadata) > 16
        or any(not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
               for k, v in metadata.items())
    ):
        raise _fail(f"{param}.metadata", "metadata: at most 16 string pairs")
    request = ResponseRequest(instructions=instructions, max_tokens=max_tokens,
                              out_of_band=conversation == "none")
    return request, metadata


def error_body(
    code: str, message: str, *, param: str | None = None, event_id: str | None = None,
    category: str = "client",
) -> dict[str, Any]:
    """The ``error`` of an ``error`` event: the API's types are
    ``invalid_request_error`` (the client's) and ``server_error`` (ours)."""
    kind = "invalid_request_error" if category == "client" else "server_error"
    return {"type": kind, "code": code, "message": message, "param": param,
            "event_id": event_id}


def assistant_item(item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
        "status": status,
        "content": [{"type": "output_audio", "transcript": transcript}],
    }


def user_audio_item(item_id: str, transcript: str | None) -> dict[str, Any]:
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call",
            "status": status, "call_id": call_id, "name": name, "arguments": arguments}


def item_text(item: Any) -> tuple[str, str]:
    """A ``conversation.item.create``'s item as (role, text) for history; raises for
    what this server cannot take (the API's error)."""
    item = _expect_map(item, "item")
    kind = item.get("type")
    if kind != "message":
        raise _fail("item.type", f"item type {shown(kind)} cannot be created here")
    role = item.get("role")
    if role == "system":
        raise _unsupported("item.role", "system message items (use session.instructions)")
    if role not in ("user", "assistant"):
        raise _fail("item.role", "role: user or assistant")
    content = item.get("content")
    if not isinstance(content, list) or not content or len(content) > 16:
        raise _fail("item.content", "content: a list of 1 to 16 parts")
    texts: list[str] = []
    for index, part in enumerate(content):
        where = f"item.content[{index}]"
        part = _expect_map(part, where)
        kind = part.get("type")
        if kind in ("input_image", "input_audio", "output_audio"):
            raise _unsupported(f"{where}.type", f"{kind} content")
        if kind not in ("input_text", "output_text", "text"):
            raise _fail(f"{where}.type", f"unknown content type {shown(kind)}")
        text = part.get("text")
        if not isinstance(text, str):
            raise _fail(f"{where}.text", "text must be a string")
        texts.append(text)
    text = " ".join(texts).strip()
    if len(text) > 8000:
        raise _fail("item.content", "the item's text exceeds 8000 characters")
    return role, text


def message_item(item_id: str, role: str, text: str) -> dict[str, Any]:
    part = "input_text" if role == "user" else "output_text"
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role,
            "status": "completed", "content": [{"type": part, "text": text}]}


def response_object(
    response_id: str, status: str, *, output: list[dict[str, Any]] | None = None,
    status_details: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None, out_of_band: bool = False,
    voice: str = "", output_format: dict[str, Any] | None = None,
    max_output_tokens: int | str = "inf",
) -> dict[str, Any]:
    return {
        "id": response_id, "object": "realtime.response", "status": status,
        "status_details": status_details, "output": output or [],
        "conversation_id": None if out_of_band else "conv_default",
        "output_modalities": ["audio"],
        "audio": {"output": {"format": output_format, "voice": voice}},
        "max_output_tokens": max_output_tokens, "metadata": metadata, "usage": usage,
    }


CANCEL_REASONS = {
    "barge_in": "turn_detected",
    "superseded": "turn_detected",
    "user_resumed": "turn_detected",
    "new_text_input": "turn_detected",
}
"""Why VoiceForge cancelled a reply → the API's ``status_details.reason`` (anything
else the client asked for: ``client_cancelled``)."""
