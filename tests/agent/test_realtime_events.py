"""The Realtime API's session and response settings mapped onto ``/ws``'s (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.realtime_events import (
    AudioFormat,
    RealtimeError,
    RealtimeSettings,
    item_text,
    parse_response_create,
    parse_session,
    session_object,
)
from pipeline.session import SessionConfig

VOICES = ["joe"]


def parse(session: dict[str, Any], policies: tuple[str, ...] = ("silence",)) -> Any:
    return parse_session(session, RealtimeSettings(), VOICES, list(policies), 512)


def refused(session: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(RealtimeError) as caught:
        parse(session)
    assert (caught.value.code, caught.value.param) == (code, param)


def test_server_vad_maps_onto_the_silence_policy_and_its_padding() -> None:
    _, fields, pad = parse({"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
        "prefix_padding_ms": 300}}}})
    assert fields["turn"] == {"end_of_turn_policy": "silence", "speech_threshold": 0.6,
                              "silence_threshold": pytest.approx(0.45),
                              "end_of_turn_silence_ms": 700.0}
    assert pad == 300.0


def test_semantic_vad_is_the_learned_policy_where_the_model_runs() -> None:
    detection = {"type": "semantic_vad", "eagerness": "high"}
    session = {"audio": {"input": {"turn_detection": detection}}}
    _, fields, _ = parse(session, ("silence", "learned"))
    assert fields["turn"] == {"end_of_turn_policy": "learned", "end_of_turn_threshold": 0.3,
                              "end_of_turn_max_silence_ms": 1000.0}
    _, fields, _ = parse(session)  # no end-of-turn model on this server: silence only
    assert fields["turn"] == {"end_of_turn_policy": "silence", "end_of_turn_silence_ms": 300.0}


def test_turn_detection_null_is_manual_turns() -> None:
    settings, fields, _ = parse({"audio": {"input": {"turn_detection": None}}})
    assert settings.turn_detection is None and "turn" not in fields
    view = session_object("sess_1", settings, SessionConfig(manual_turns=True), "joe")
    assert view["audio"]["input"]["turn_detection"] is None


def test_formats_voices_and_tokens() -> None:
    settings, fields, _ = parse({"audio": {
        "input": {"format": {"type": "audio/pcmu"}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
        "max_output_tokens": "inf", "instructions": "Be brief."})
    assert settings.input_format is AudioFormat.PCMU
    assert fields == {"input_sample_rate": 8000, "output_sample_rate": 24000, "voice": None,
                      "max_response_tokens": 512, "instructions": "Be brief."}
    assert settings.voice == "marin"  # an OpenAI name: the server's default voice speaks
    _, fields, _ = parse({"audio": {"output": {"voice": "joe"}}, "max_output_tokens": 4000})
    assert fields == {"voice": "joe", "max_response_tokens": 512}
    view = session_object("sess_1", settings, SessionConfig(input_sample_rate=8000), "joe")
    assert view["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert view["audio"]["output"]["voice"] == "marin"


@pytest.mark.parametrize(("session", "code", "param"), [
    ({"output_modalities": ["text"]}, "unsupported_feature", "session.output_modalities"),
    ({"audio": {"input": {"format": {"type": "audio/pcma"}}}}, "unsupported_feature",
     "session.audio.input.format.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 12345}}}}, "invalid_value",
     "session.audio.input.format.rate"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad",
                                             "interrupt_response": False}}}},
     "unsupported_feature", "session.audio.input.turn_detection.interrupt_response"),
    ({"audio": {"output": {"voice": "nobody"}}}, "invalid_value", "session.audio.output.voice"),
    ({"audio": {"output": {"speed": 1.5}}}, "unsupported_feature", "session.audio.output.speed"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "unsupported_feature", "session.tools"),
    ({"tool_choice": "required"}, "unsupported_feature", "session.tool_choice"),
    ({"max_output_tokens": 0}, "invalid_value", "session.max_output_tokens"),
    ({"type": "transcription"}, "unsupported_feature", "session.type"),
    ({"colour": "blue"}, "unknown_parameter", "session.colour"),
])
def test_what_cannot_be_done_is_refused_with_the_field_named(
    session: dict[str, Any], code: str, param: str
) -> None:
    refused(session, code, param)


def test_what_the_agents_sdk_sends_by_default_is_taken() -> None:
    settings, fields, _ = parse({
        "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
        "tracing": "auto", "tools": [],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": {"type": "semantic_vad",
                                               "interrupt_response": True}},
                  "output": {"voice": "ash", "format": {"type": "audio/pcm", "rate": 24000}}}})
    assert settings.transcription == {"model": "gpt-4o-mini-transcribe"}
    assert fields["turn"]["end_of_turn_policy"] == "silence"
    assert fields["tools"] == [] and fields["voice"] is None


def test_a_response_create_maps_to_a_request() -> None:
    request, metadata = parse_response_create(
        {"conversation": "none", "instructions": "Say yes.", "max_output_tokens": 4000,
         "metadata": {"k": "v"}}, 300)
    assert (request.instructions, request.max_tokens, request.out_of_band) == ("Say yes.", 300,
                                                                                True)
    assert metadata == {"k": "v"}
    with pytest.raises(RealtimeError) as caught:
        parse_response_create({"input": [{"type": "message"}]}, 300)
    assert caught.value.param == "response.input"


def test_items_are_text_messages_only() -> None:
    assert item_text({"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Hi"}, {"type": "input_text", "text": "there"}]}) == (
        "user", "Hi there")
    for item, param in [
        ({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]},
         "item.role"),
        ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": ""}]},
         "item.content[0].type"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "item.type"),
    ]:
        with pytest.raises(RealtimeError) as caught:
            item_text(item)
        assert caught.value.param == param
