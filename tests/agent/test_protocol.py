"""The wire codec: bytes in, typed messages out, and the error code for bad frames."""

from __future__ import annotations

import msgpack
import pytest

from agent.protocol import (
    MAX_CONTROL_FRAME_BYTES,
    ConversationText,
    InputAudioAppend,
    OutputAudioPlayed,
    ProtocolError,
    ResponseCancel,
    SessionCaps,
    SessionCreated,
    SessionUpdate,
    decode_client_frame,
    decode_server_frame,
    encode_client_message,
    encode_server_message,
    parse_session_fields,
)
from pipeline.events import ErrorEvent, ResponseAudioDelta, ResponseDone, ResponseStatus


def _frame(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    "message",
    [
        SessionUpdate({"voice": "joe", "turn": {"end_of_turn_silence_ms": 400}}),
        InputAudioAppend(b"\x01\x00\xff\x7f"),
        ResponseCancel(None),
        ResponseCancel("resp_1"),
        OutputAudioPlayed("resp_1", 1234.5),
        ConversationText("hello"),
    ],
)
def test_client_messages_round_trip(message: object) -> None:
    assert decode_client_frame(encode_client_message(message)) == message  # type: ignore[arg-type]


def test_audio_rides_as_msgpack_bin_not_base64() -> None:
    raw = msgpack.unpackb(encode_client_message(InputAudioAppend(b"\x00\x01")), raw=True)
    assert raw[b"audio"] == b"\x00\x01"
    assert raw[b"type"] == b"input_audio.append"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1\xc1\xc1", "malformed_frame"),
        (msgpack.packb([1, 2, 3]), "malformed_frame"),
        (_frame(no_type=1), "malformed_frame"),
        (_frame(type="input_audio.launch"), "unknown_type"),
        (_frame(type="input_audio.append", audio=b"\x00\x01\x02"), "invalid_audio"),
        (_frame(type="input_audio.append", audio="text"), "invalid_message"),
        (_frame(type="output_audio.played", response_id="r", played_ms=-1), "invalid_message"),
        (_frame(type="output_audio.played", response_id="r", played_ms=True), "invalid_message"),
        (_frame(type="conversation.text", text="x" * 5000), "invalid_message"),
        (_frame(type="session.update", session="x"), "invalid_message"),
        # Arrays appear nowhere in a client message; maps only as session and turn.
        (_frame(type="session.update", session=[1]), "malformed_frame"),
        (_frame(type="conversation.text", text="hi", extra={}), "malformed_frame"),
        (_frame(type="conversation.text", text="hi", extra=[]), "malformed_frame"),
        (_frame(type="session.update", session={"voice": {}}), "malformed_frame"),
        (_frame(type="conversation.text", text="hi", ext=msgpack.ExtType(1, b"x")),
         "malformed_frame"),
        (_frame(type="conversation.text", text="hi", **{f"k{i}": 0 for i in range(31)}),
         "malformed_frame"),
        (_frame(type="conversation.text", text="hi") + b"\x00", "malformed_frame"),
        (b"", "malformed_frame"),
        (_frame(type="response.cancel", pad="x" * 41_000), "frame_too_large"),
    ],
)
def test_bad_frames_name_their_error(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame(frame)
    assert caught.value.code == code


def test_server_messages_round_trip() -> None:
    messages = [
        SessionCreated("sess_1", 1, {"voice": None}, {"max_frame_bytes": 10}),
        ResponseAudioDelta("resp_1", 3, b"\x00\x00", 24000, 0.04),
        ResponseDone("resp_1", ResponseStatus.CANCELLED, "a b c", "a", 100.0, 50.0, {"x": 1.0}),
        ErrorEvent("llm_unavailable", "down", fatal=False, response_id="resp_1"),
    ]
    for message in messages:
        assert decode_server_frame(encode_server_message(message)) == message
    wire = msgpack.unpackb(encode_server_message(messages[2]), raw=False)
    assert wire["type"] == "response.done" and wire["status"] == "cancelled"


def test_session_update_is_all_or_nothing() -> None:
    changes = parse_session_fields(
        {"voice": "joe", "input_sample_rate": 48000, "turn": {"min_speech_ms": 64}}, ["joe"]
    )
    assert changes == {"voice": "joe", "input_sample_rate": 48000, "turn": {"min_speech_ms": 64.0}}
    assert parse_session_fields({"speculative_response": False}, []) == {
        "speculative_response": False
    }
    with pytest.raises(ProtocolError) as caught:
        parse_session_fields({"voice": "joe", "input_sample_rate": 11025}, ["joe"])
    assert caught.value.code == "unsupported_sample_rate"
    for bad in (
        {"voice": "nobody"},
        {"colour": "red"},
        {"turn": {"eot": 1}},
        {"temperature": 9},
        {"max_response_tokens": 0},
        {"speculative_response": "yes"},
    ):
        with pytest.raises(ProtocolError) as caught:
            parse_session_fields(bad, ["joe"])
        assert caught.value.code == "invalid_session"


def test_the_largest_legal_control_frames_fit_under_the_control_frame_cap() -> None:
    emoji = "😀"  # 4 bytes of UTF-8: the most a character costs
    update = {
        "instructions": emoji * 8000, "voice": "joe", "input_sample_rate": 48000,
        "output_sample_rate": 48000, "temperature": 2.0, "max_response_tokens": 2048,
        "partial_transcript_interval_ms": 10_000.0, "speculative_response": True,
        "speculative_transcript": True, "first_chunk_at_clause": True,
        "turn": {"speech_threshold": 0.5, "silence_threshold": 0.35, "min_speech_ms": 200.0,
                 "end_of_turn_silence_ms": 600.0, "barge_in_min_speech_ms": 250.0},
    }
    frame = _frame(type="session.update", session=update)
    assert len(frame) <= MAX_CONTROL_FRAME_BYTES
    assert isinstance(decode_client_frame(frame), SessionUpdate)
    assert parse_session_fields(update, ["joe"])["instructions"] == emoji * 8000
    text = decode_client_frame(_frame(type="conversation.text", text=emoji * 4000))
    assert isinstance(text, ConversationText)


@pytest.mark.parametrize(
    "frame",
    [
        _frame(type="t" * 100_000),
        _frame(type="session.update", session={"v" * 100_000: 1}),
        _frame(type="input_audio.append", audio=b"\x00\x00", **{"k" * 100_000: {}}),
    ],
)
def test_errors_echo_at_most_a_bounded_part_of_the_clients_values(frame: bytes) -> None:
    try:
        message = decode_client_frame(frame)
        assert isinstance(message, SessionUpdate)
        parse_session_fields(message.session, ["joe"])
    except ProtocolError as exc:
        assert len(str(exc)) < 300, len(str(exc))
    else:
        raise AssertionError("the frame is refused")


def test_a_voice_too_long_to_echo_is_cut_with_a_marker() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_session_fields({"voice": "v" * 100_000}, ["joe"])
    assert "… (100000 chars)" in str(caught.value) and len(str(caught.value)) < 200
def test_operator_caps_hold_session_updates_to_what_the_server_allows() -> None:
    caps = SessionCaps(
        max_instructions_chars=100, max_response_tokens=300, min_partial_transcript_interval_ms=250
    )
    changes = parse_session_fields(
        {"max_response_tokens": 2048, "partial_transcript_interval_ms": 1, "instructions": "hi"},
        [],
        caps,
    )
    assert changes == {
        "max_response_tokens": 300, "partial_transcript_interval_ms": 250.0, "instructions": "hi"
    }
    # Within the caps, and 0 (partials off), values stand.
    assert parse_session_fields(
        {"max_response_tokens": 120, "partial_transcript_interval_ms": 0}, [], caps
    ) == {"max_response_tokens": 120, "partial_transcript_interval_ms": 0.0}
    with pytest.raises(ProtocolError, match="≤ 100 chars") as caught:
        parse_session_fields({"instructions": "x" * 101}, [], caps)
    assert caught.value.code == "invalid_session"
    # Without caps, the protocol's own bounds.
    assert parse_session_fields({"max_response_tokens": 2048}, []) == {"max_response_tokens": 2048}
