"""Fuzzing the wire decoder: any bytes in, a client message or a documented error out.

``decode_client_frame`` and ``parse_session_fields`` may only return or raise
``ProtocolError`` with a code from docs/protocol.md §7; anything else escaping them
(TypeError, KeyError, msgpack's own errors, RecursionError ...) would end the
caller's session instead of answering it with an ``error``.

Cost, too: no frame within the size limit may cost more than 2 ms of decoding
(issue 13). Every decode here is timed in CPU time of the test's thread
(``time.thread_time``, which other processes on a loaded machine do not inflate);
a frame whose single decode goes over is decoded again, and it is the best of
those repeats (``loadtest.decode_cost.cpu_ms``) that must stay within the limit,
so a preemption or a cold cache in one run cannot fail the test, while a decoder
that does real work per byte of a 256 KiB frame (16 ms and more) always does.
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.protocol import (
    ClientMessage,
    ConversationText,
    InputAudioAppend,
    OutputAudioPlayed,
    ProtocolError,
    ResponseCancel,
    SessionUpdate,
    ToolResult,
    decode_client_frame,
    encode_client_message,
    parse_session_fields,
)
from loadtest.decode_cost import WORST_ALLOWED_MS, adversarial_frames, cpu_ms
from tests.fuzz.conftest import TEST_TIMEOUT_S
from tests.fuzz.oracle import (
    DECODER_CODES,
    DOCUMENTED_ERROR_CODES,
    MAX_TEXT_CHARS,
    NUMBER_FIELDS,
    SESSION_CODES,
    TURN_FIELDS,
    SessionModel,
    expected_decode,
    generic_unpack,
    production_recursion_limit,
)
from tests.fuzz.stats import STATS
from tests.fuzz.strategies import (
    Deep,
    any_value,
    client_messages,
    costly_frames,
    deep_frames,
    deep_recipes,
    map_keys,
    mutated,
    nested_schema,
    packed,
    session_maps,
    texts,
)

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.timeout(TEST_TIMEOUT_S),
    # The nested strategies' repr is long; hypothesis warns when it builds it.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

MESSAGE_CLASSES = {
    "session.update": SessionUpdate,
    "input_audio.append": InputAudioAppend,
    "response.cancel": ResponseCancel,
    "output_audio.played": OutputAudioPlayed,
    "conversation.text": ConversationText,
    "tool.result": ToolResult,
}


MAX_FRAME_BYTES = 256 * 1024
"""``Settings.max_frame_bytes``: larger frames are refused before decoding."""
COST_REPEATS = 5


def check_cost(frame: bytes, single_ms: float, test: str) -> None:
    """A frame within the limit decodes in at most WORST_ALLOWED_MS (best of repeats)."""
    if len(frame) > MAX_FRAME_BYTES:
        return
    cost_ms = single_ms
    if cost_ms > WORST_ALLOWED_MS:
        with production_recursion_limit():
            cost_ms = cpu_ms(decode_client_frame, frame, COST_REPEATS)
    STATS.worst_decode_ms[test] = max(STATS.worst_decode_ms.get(test, 0.0), cost_ms)
    assert cost_ms <= WORST_ALLOWED_MS, (cost_ms, len(frame), frame[:64])


def decode(frame: bytes, test: str) -> ClientMessage | ProtocolError:
    """The decoder's answer; any exception other than ProtocolError fails the test."""
    started = time.thread_time()
    try:
        with production_recursion_limit():
            message = decode_client_frame(frame)
    except ProtocolError as exc:
        check_cost(frame, (time.thread_time() - started) * 1000.0, test)
        assert exc.code in DOCUMENTED_ERROR_CODES, exc.code
        assert exc.code in DECODER_CODES, exc.code
        assert str(exc), "the error event carries a message"
        STATS.count(test, exc.code)
        return exc
    check_cost(frame, (time.thread_time() - started) * 1000.0, test)
    STATS.count(test, f"accepted:{type(message).__name__}")
    return message


def check_decoded(message: ClientMessage, frame: bytes) -> None:
    """What the decoder promises about an accepted frame (its dataclasses, §4)."""
    ok, raw = generic_unpack(frame)
    assert ok and isinstance(raw, dict)
    assert isinstance(message, MESSAGE_CLASSES[raw["type"]])
    if isinstance(message, InputAudioAppend):
        assert type(message.audio) is bytes and len(message.audio) % 2 == 0
        assert message.audio == raw["audio"]
    elif isinstance(message, SessionUpdate):
        assert type(message.session) is dict
        assert list(message.session) == list(raw["session"])
    elif isinstance(message, ResponseCancel):
        assert message.response_id is None or type(message.response_id) is str
        assert message.response_id == raw.get("response_id")
    elif isinstance(message, OutputAudioPlayed):
        assert type(message.response_id) is str and message.response_id == raw["response_id"]
        assert type(message.played_ms) is float
        assert math.isfinite(message.played_ms) and message.played_ms >= 0
        assert message.played_ms == float(raw["played_ms"])
    elif isinstance(message, ToolResult):
        assert (message.call_id, message.output) == (raw["call_id"], raw["output"])
        assert message.is_error is raw.get("is_error", False)
    else:
        assert type(message.text) is str and len(message.text) <= MAX_TEXT_CHARS
        assert message.text == raw["text"]
    # The encoder and decoder agree: what came in goes back out the same.
    again = encode_client_message(message)
    assert encode_client_message(decode_client_frame(again)) == again


def check_against_model(frame: bytes, test: str) -> ClientMessage | ProtocolError:
    result = decode(frame, test)
    expected = expected_decode(frame)
    if isinstance(result, ProtocolError):
        assert result.code == expected, (result.code, expected, str(result))
    else:
        assert expected is None, (expected, result)
        check_decoded(result, frame)
    return result


# ------------------------------------------------------------------ (a) any bytes


@given(st.binary(max_size=512))
@example(b"")
@example(b"\xc1")  # the one byte msgpack never uses
@example(b"\x80")  # {}
@example(b"\x91" * 5000 + b"\xc0")  # 5000 nested arrays
@example(b"\xdf\xff\xff\xff\xff")  # a map claiming 4 billion entries
@example(b"\xc6\xff\xff\xff\xff")  # bin claiming 4 GiB
@example(msgpack.packb({"type": "conversation.text", "text": "hi"}) + b"\x00")  # trailing data
def test_any_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    check_against_model(frame, "decoder.any_bytes")


@given(mutated(packed(client_messages())))
def test_mutated_frames_decode_or_raise_protocol_error(frame: bytes) -> None:
    check_against_model(frame, "decoder.mutated")


# ------------------------------------------------------------ (b) structured msgpack


@given(packed(client_messages()))
@example(msgpack.packb({"type": "input_audio.append", "audio": "AAAA"}))  # str, not bin
@example(msgpack.packb({"type": "input_audio.append", "audio": b"\x00"}))
@example(msgpack.packb({"type": "output_audio.played", "response_id": "r", "played_ms": math.nan}))
@example(msgpack.packb({"type": "output_audio.played", "response_id": "r", "played_ms": -0.0}))
@example(msgpack.packb({"type": "output_audio.played", "response_id": "r", "played_ms": 2**64 - 1}))
@example(msgpack.packb({"type": "output_audio.played", "response_id": "r", "played_ms": True}))
@example(msgpack.packb({"type": "conversation.text", "text": "a" * 4001}))
@example(msgpack.packb({"type": "conversation.text", "text": "😀" * 4000}))
@example(msgpack.packb({"type": "response.cancel", "response_id": None}))
@example(msgpack.packb({"type": "session.update", "session": {1: 2}}))  # int key, nested
@example(msgpack.packb({"type": "session.update", "session": []}))
@example(msgpack.packb({1: "session.update"}))
def test_structured_messages_decode_as_documented(frame: bytes) -> None:
    check_against_model(frame, "decoder.structured")


@given(deep_frames())
def test_deeply_nested_frames_decode_or_raise_protocol_error(frame: bytes) -> None:
    result = check_against_model(frame, "decoder.deep")
    if isinstance(result, SessionUpdate):
        # What the server does next with the payload (agent/server.py update_session).
        try:
            with production_recursion_limit():
                parse_session_fields(result.session, ["tone"])
        except ProtocolError as exc:
            assert exc.code in SESSION_CODES, exc.code
            STATS.count("decoder.deep.session", exc.code)
        else:
            STATS.count("decoder.deep.session", "accepted")


@given(costly_frames(MAX_FRAME_BYTES))
def test_frames_of_many_small_values_decode_as_documented_and_cheaply(frame: bytes) -> None:
    check_against_model(frame, "decoder.costly")


ADVERSARIAL = {
    f"{shape} ({limit} bytes)": frame
    for limit in (MAX_FRAME_BYTES, 40 * 1024, 4096)
    for shape, frame in adversarial_frames(limit).items()
}


@pytest.mark.parametrize("shape", list(ADVERSARIAL))
def test_the_known_worst_shapes_decode_as_documented_within_the_cost_limit(shape: str) -> None:
    frame = ADVERSARIAL[shape]
    # Measured whatever a single run says: these are the frames the limit is about.
    cost_ms = cpu_ms(decode_client_frame, frame, COST_REPEATS)
    assert cost_ms <= WORST_ALLOWED_MS, (shape, cost_ms)
    check_against_model(frame, "decoder.adversarial")


def test_bin_map_keys_are_malformed_frames_as_documented() -> None:
    frame = msgpack.packb({"type": "conversation.text", "text": "hi", b"bin": 1})
    with pytest.raises(ProtocolError) as refused:
        decode_client_frame(frame)
    assert refused.value.code == "malformed_frame"


# ------------------------------------------------------ (c) session.update payloads

voice_lists = st.lists(st.one_of(st.just("tone"), texts), max_size=3)
python_keys: st.SearchStrategy[Any] = st.one_of(
    map_keys, st.tuples(st.integers()), st.just(frozenset())
)
"""parse_session_fields takes a dict from anywhere, not only from msgpack."""


session_values = st.one_of(any_value, deep_recipes)
random_sessions = st.one_of(
    session_maps,
    st.dictionaries(python_keys, session_values, max_size=4),
    st.dictionaries(
        st.sampled_from(["voice", "instructions", "turn", "temperature", "bogus"]),
        deep_recipes,
        min_size=1,
        max_size=2,
    ),
)


@given(random_sessions, voice_lists)
@example({"voice": Deep(995, None, as_map=False)}, ["tone"])
@example({"turn": {"speech_threshold": math.nan}}, ["tone"])
@example({"temperature": True}, ["tone"])
@example({"record_audio": True}, [])  # the parser knows no server's recording policy
def test_parse_session_fields_returns_changes_or_raises_protocol_error(
    drawn: dict[Any, Any], voices: list[str]
) -> None:
    session = {k: v.build() if isinstance(v, Deep) else v for k, v in drawn.items()}
    model = SessionModel(view={}, voices=voices, records_calls=True)
    expected: set[str] = set()
    for key, value in session.items():
        expected |= model.field_codes(key, value)
    try:
        with production_recursion_limit():
            changes = parse_session_fields(session, voices)
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED_ERROR_CODES, exc.code
        assert exc.code in expected, (exc.code, expected)
        STATS.count("parse_session_fields", exc.code)
        return
    STATS.count("parse_session_fields", "accepted")
    assert not expected, expected
    assert isinstance(changes, dict) and set(changes) == set(session)
    for key, value in changes.items():
        if key == "turn":
            assert set(value) <= set(TURN_FIELDS)
            assert all(type(number) is float for number in value.values())
        elif key in NUMBER_FIELDS:
            assert type(value) is float
        elif key == "tools":
            assert [spec.name for spec in value] == [tool["name"] for tool in session[key]]
        else:
            assert value == session[key]


def _tool(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "name": "show_map", **fields}


def _properties(count: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"p{i}": {} for i in range(count)}}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # §1: session.tools nests past the flat frame's rules, within its own budgets.
        ({"type": "session.update", "session": {"tools": [_tool(parameters=_properties(40))]}},
         None),
        ({"type": "session.update", "session": {"tools": [_tool(parameters=_properties(257))]}},
         "malformed_frame"),
        ({"type": "session.update",
          "session": {"tools": [_tool(parameters=nested_schema(19))]}}, None),
        ({"type": "session.update",
          "session": {"tools": [_tool(parameters=nested_schema(20))]}}, "malformed_frame"),
        ({"type": "session.update", "session": {"instructions": [1]}}, "malformed_frame"),
        ({"type": "conversation.text", "text": "hi", "tools": [1]}, "malformed_frame"),
        # §4 tool.result.
        ({"type": "tool.result", "call_id": "call_1", "output": "ok"}, None),
        ({"type": "tool.result", "call_id": "call_1", "output": "ok", "is_error": True}, None),
        ({"type": "tool.result", "call_id": "c" * 65, "output": "ok"}, "invalid_message"),
        ({"type": "tool.result", "call_id": "call_1", "output": "o" * 16001}, "invalid_message"),
        ({"type": "tool.result", "call_id": "call_1", "output": "ok", "is_error": None},
         "invalid_message"),
        ({"type": "tool.result", "output": "ok"}, "invalid_message"),
    ],
)
def test_tool_frames_at_their_limits_decode_as_documented(
    message: dict[str, Any], expected: str | None
) -> None:
    frame = msgpack.packb(message, use_bin_type=True)
    assert expected_decode(frame) == expected  # the page, as the oracle reads it
    result = check_against_model(frame, "decoder.tool_limits")  # the server agrees
    assert isinstance(result, ProtocolError) == (expected is not None)


@pytest.mark.parametrize(
    ("tools", "accepted"),
    [
        ([_tool()], True),
        ([_tool(parameters={"type": "object", "properties": {"pattern": {"type": "string"}}})],
         True),  # a property named pattern
        ([_tool(parameters={"type": "object", "properties": {"a": {"pattern": "x+"}}})], False),
        ([_tool(parameters={"type": "object", "properties": {"a": {"maxItems": 256}}})], True),
        ([_tool(parameters={"type": "object", "properties": {"a": {"maxItems": 257}}})], False),
        ([_tool(parameters={"type": "object", "$defs": {"a": {"$ref": "#"}}})], False),
        ([_tool(parameters={"type": "string"})], False),
        ([_tool(parameters={"type": "object", "minProperties": -1})], False),  # not a schema
        ([_tool(name="a" * 64)], True),
        ([_tool(name="a" * 65)], False),
        ([_tool(description="d" * 1025)], False),
        ([_tool(strict=True)], False),
        ([_tool(), _tool()], False),  # the same name twice
        ([{"name": f"t{i}"} for i in range(16)], True),
        ([{"name": f"t{i}"} for i in range(17)], False),
    ],
)
def test_session_tools_are_accepted_or_refused_as_documented(
    tools: list[dict[str, Any]], accepted: bool
) -> None:
    model = SessionModel(view={}, voices=["tone"])
    assert (model.field_codes("tools", tools) == set()) == accepted  # the page
    try:
        changes = parse_session_fields({"tools": tools}, ["tone"])  # the server
    except ProtocolError as exc:
        assert not accepted and exc.code == "invalid_session", exc
    else:
        assert accepted and [s.name for s in changes["tools"]] == [t["name"] for t in tools]
