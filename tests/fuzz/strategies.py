"""Hypothesis strategies for client frames: random, near-valid, mutated, deep, sized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from hypothesis import strategies as st

from tests.fuzz.oracle import (
    BOOL_FIELDS,
    CLIENT_TYPES,
    INT_FIELDS,
    NUMBER_FIELDS,
    SAMPLE_RATES,
    SESSION_FIELDS,
    TURN_FIELDS,
)

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
"""msgpack packs integers in [-2**63, 2**64 - 1]; nothing outside can be on the wire."""


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """``one_of`` with weights (``one_of`` drops repeated branches, so repeating is no weight)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


texts = st.text(st.characters(codec="utf-8"), max_size=16)
"""Strings msgpack can encode (no lone surrogates)."""

FIELD_NAMES = (
    "type", "audio", "session", "text", "played_ms", "response_id", "pad",
    "call_id", "output", "is_error",
)
str_keys = st.one_of(texts, st.sampled_from(FIELD_NAMES + SESSION_FIELDS + TURN_FIELDS))
odd_keys = st.one_of(
    st.integers(-3, 300),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.binary(max_size=6),
)
"""Map keys that are not strings: §7 makes these ``malformed_frame`` (bin: see oracle)."""
map_keys = weighted((7, str_keys), (1, odd_keys))

numbers = st.one_of(
    st.integers(INT64_MIN, UINT64_MAX),
    st.integers(-10, 10_001),
    st.floats(),  # nan and ±inf included
    st.floats(-1.0, 3.0),
    st.sampled_from([0, 0.0, -0.0, 1, 2, 2.0, 2.0000001, 1e-300, -1e-300, 10_000, 10_000.5]),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    texts,
    st.binary(max_size=16),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
any_value = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(str_keys, children, max_size=4)
    ),
    max_leaves=12,
)
"""Any msgpack-packable value, nested, with string map keys."""
wild_value = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(map_keys, children, max_size=4)
    ),
    max_leaves=12,
)
"""Any msgpack-packable value, nested; now and then a map key that is not a string."""


def _repeat(char: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: char * n)


turn_maps = st.dictionaries(
    st.one_of(st.sampled_from(TURN_FIELDS), st.sampled_from(TURN_FIELDS), texts),
    st.one_of(numbers, numbers, st.sampled_from(["silence", "learned", "Learned", ""])),
    max_size=5,
)
def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"x": schema}}


schema_parts = st.one_of(
    st.sampled_from([
        {"type": "string"}, {"type": "integer", "maximum": 5}, {"type": "string", "pattern": "a+"},
        {"type": "array", "maxItems": 256}, {"type": "array", "maxItems": 300},
        {"type": "array", "minItems": 256.5}, {"$ref": "#/$defs/x"}, {"type": "nothing"},
        {"type": "string", "minLength": -1}, {"enum": []},
    ]),
    any_value,
)
tool_schemas = st.one_of(
    st.just({"type": "object", "properties": {}}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "object", "string"]),
         "properties": st.dictionaries(
             st.sampled_from(["city", "pattern", "$ref", "n", "maxItems"]), schema_parts,
             max_size=3)},
        optional={"required": st.lists(texts, max_size=2),
                  "additionalProperties": st.one_of(st.booleans(), schema_parts),
                  "minProperties": st.integers(-1, 300),
                  "$defs": st.dictionaries(st.sampled_from(["x", "pattern"]), schema_parts,
                                           max_size=2)},
    ),
    # A map wider than the 32 of flat frames, within the 256 of session.tools, and past it.
    st.sampled_from([30, 40, 255, 257]).map(lambda n: {
        "type": "object", "properties": {f"p{i}": {} for i in range(n)}}),
    # Nested about the 24 levels below session.tools (its innermost value at level 5 + n).
    st.integers(18, 21).map(nested_schema),
    any_value,
)
tool_entries = st.fixed_dictionaries(
    {"name": st.one_of(
        st.sampled_from(["show_map", "get-time", "a" * 64, "a" * 65, "bad name", "", "x"]), texts)},
    optional={"type": st.sampled_from(["function", "Function"]),
              "description": st.one_of(texts, _repeat("d", 1023, 1025), any_value),
              "parameters": tool_schemas,
              "strict": any_value},
)
tool_lists = st.one_of(
    st.lists(tool_entries, max_size=3),
    st.lists(st.just({"name": "t"}), min_size=1, max_size=1).map(lambda t: t * 2),  # same name
    st.integers(16, 17).map(lambda n: [{"name": f"t{i}"} for i in range(n)]),
    any_value,
)
SESSION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "tools": tool_lists,
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "Auto"]), any_value),
    "instructions": st.one_of(texts, _repeat("x", 7995, 8005), _repeat("é", 7998, 8001), any_value),
    "voice": st.one_of(st.sampled_from(["tone", None, "Tone", "joe", ""]), any_value),
    "input_sample_rate": st.one_of(st.sampled_from(SAMPLE_RATES), numbers, any_value),
    "output_sample_rate": st.one_of(st.sampled_from(SAMPLE_RATES), numbers, any_value),
    "turn": st.one_of(turn_maps, any_value),
    **{name: st.one_of(st.booleans(), any_value) for name in BOOL_FIELDS},
    **{name: st.one_of(numbers, any_value) for name in NUMBER_FIELDS},
    **{name: st.one_of(st.integers(-2, 2050), numbers, any_value) for name in INT_FIELDS},
}
session_pairs = st.one_of(
    st.sampled_from(SESSION_FIELDS).flatmap(lambda k: st.tuples(st.just(k), SESSION_VALUES[k])),
    st.tuples(map_keys, any_value),
)
session_maps = st.lists(session_pairs, max_size=4).map(dict)
"""``session.update`` payloads: documented fields with good and bad values, and others."""


def audio_values(max_bytes: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=max_bytes),
        st.integers(0, max_bytes).map(bytes),  # silence of any length, odd ones too
    )


def field_values(max_audio: int) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "audio": weighted((5, audio_values(max_audio)), (1, any_value)),
        "session": weighted((6, session_maps), (1, any_value)),
        "text": weighted(
            (6, texts),
            (1, _repeat("a", 3998, 4002)),
            (1, _repeat("😀", 3999, 4001)),
            (1, any_value),
        ),
        "played_ms": weighted((5, numbers), (1, any_value)),
        "response_id": weighted(
            (2, st.none()), (3, texts), (1, st.just("resp_0123456789ab")), (1, any_value)
        ),
        "call_id": weighted((4, texts), (1, _repeat("c", 63, 65)), (1, any_value)),
        "output": weighted((4, texts), (1, _repeat("o", 15999, 16001)), (1, any_value)),
        "is_error": weighted((4, st.booleans()), (1, any_value)),
    }


OWN_FIELDS = {
    "session.update": ("session",),
    "input_audio.append": ("audio",),
    "response.cancel": ("response_id",),
    "output_audio.played": ("response_id", "played_ms"),
    "conversation.text": ("text",),
    "tool.result": ("call_id", "output"),
}


type_values = weighted(
    (12, st.sampled_from(CLIENT_TYPES)),
    (1, st.sampled_from(CLIENT_TYPES).map(str.upper)),
    (1, st.sampled_from(CLIENT_TYPES).map(lambda t: t + " ")),
    (1, texts),
    (1, any_value),
)


def client_messages(max_audio: int = 64) -> st.SearchStrategy[Any]:
    """Near-valid client messages: a real (or near) type, some fields of random type,
    unknown keys, sometimes no ``type``; and now and then anything at all."""
    fields = field_values(max_audio)
    message = st.fixed_dictionaries({}, optional={"type": type_values, **fields})
    typed = st.fixed_dictionaries({"type": type_values}, optional=fields)
    by_kind = st.sampled_from(CLIENT_TYPES).flatmap(
        lambda kind: st.fixed_dictionaries(
            {"type": st.just(kind), **{name: fields[name] for name in OWN_FIELDS[kind]}},
            optional={name: fields[name] for name in fields if name not in OWN_FIELDS[kind]},
        )
    )
    extra = st.dictionaries(map_keys, wild_value, max_size=3)
    near_valid = st.tuples(
        weighted((3, by_kind), (2, typed), (1, message)), extra, st.booleans()
    ).map(lambda t: {**t[1], **t[0]} if t[2] else t[0])
    return weighted((7, near_valid), (1, wild_value))


@st.composite
def packed(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """A value packed as a client might: float64 or float32, bin (or old-spec raw)."""
    value = draw(values)
    single = draw(st.booleans())
    bin_type = draw(st.sampled_from([True] * 7 + [False]))
    try:
        frame: bytes = msgpack.packb(value, use_bin_type=bin_type, use_single_float=single)
    except OverflowError:  # a float64 beyond float32's range
        frame = msgpack.packb(value, use_bin_type=bin_type)
    return frame


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A frame with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(frames))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not data:
            continue
        elif op == "truncate":
            del data[min(at, len(data) - 1) :]
        else:
            at = min(at, len(data) - 1)
            if op == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "set":
                data[at] = draw(st.integers(0, 255))
            else:
                del data[at]
    return bytes(data)


PLACEHOLDER = msgpack.ExtType(99, b"voiceforge-fuzz-deep-value")
_PLACEHOLDER_BYTES: bytes = msgpack.packb(PLACEHOLDER)
P = PLACEHOLDER
DEEP_TEMPLATES: list[Any] = [
    P,
    [P],
    {"type": P},
    {"type": "session.update", "session": P},
    {"type": "session.update", "session": {"voice": P}},
    {"type": "session.update", "session": {"instructions": P}},
    {"type": "session.update", "session": {"turn": P}},
    {"type": "session.update", "session": {"turn": {"speech_threshold": P}}},
    {"type": "session.update", "session": {"input_sample_rate": P}},
    {"type": "session.update", "session": {"temperature": P}},
    {"type": "session.update", "session": {"bogus": P}},
    {"type": "input_audio.append", "audio": P},
    {"type": "input_audio.append", "audio": b"\x00\x00", "extra": P},
    {"type": "conversation.text", "text": P},
    {"type": "conversation.text", "text": "hello", "extra": P},
    {"type": "output_audio.played", "response_id": P, "played_ms": 1.0},
    {"type": "output_audio.played", "response_id": "resp_1", "played_ms": P},
    {"type": "response.cancel", "response_id": P},
    {"type": "no.such.type", "x": P},
]


@st.composite
def deep_frames(draw: st.DrawFn) -> bytes:
    """A template with one value nested 1 … 1100 lists or maps deep.

    msgpack's unpacker stops at 1024 levels; Python's recursion limit is 1000, so
    anything that recurses over (or reprs) a decoded value is probed near it.
    """
    depth = draw(st.one_of(st.integers(1, 1100), st.integers(985, 1030)))
    opener = b"\x91" if draw(st.booleans()) else b"\x81\xa1k"  # [x] or {"k": x}
    leaf: bytes = msgpack.packb(draw(leaves), use_bin_type=True)
    template: bytes = msgpack.packb(draw(st.sampled_from(DEEP_TEMPLATES)), use_bin_type=True)
    return template.replace(_PLACEHOLDER_BYTES, opener * depth + leaf, 1)


def deep_value(depth: int, leaf: Any, as_map: bool) -> Any:
    """The Python value of ``deep_frames``' nesting, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_map else [value]
    return value


@dataclass(frozen=True)
class Deep:
    """A deeply nested value, drawn as its recipe: hypothesis prints (and its
    pretty-printer recurses into) what it draws, and would overflow on the value."""

    depth: int
    leaf: Any
    as_map: bool

    def build(self) -> Any:
        return deep_value(self.depth, self.leaf, self.as_map)


deep_recipes = st.builds(
    Deep,
    st.one_of(st.integers(1, 1100), st.integers(985, 1030)),
    leaves,
    st.booleans(),
)


def exact_size(message: dict[str, Any], size: int) -> bytes:
    """``message`` packed to exactly ``size`` bytes with an ignored ``pad`` key, if it fits."""
    base = len(msgpack.packb({**message, "pad": ""}, use_bin_type=True))
    best: bytes = msgpack.packb(message, use_bin_type=True)
    for n in range(max(0, size - base - 6), max(0, size - base + 6)):
        frame: bytes = msgpack.packb({**message, "pad": "p" * n}, use_bin_type=True)
        if len(frame) == size:
            return frame
        if abs(len(frame) - size) < abs(len(best) - size):
            best = frame
    return best


@st.composite
def sized_frames(draw: st.DrawFn, limit: int, hard_limit: int) -> bytes:
    """Frames right at ``limit`` (max_frame_bytes) and over it, under ``hard_limit``."""
    size = draw(
        st.one_of(
            st.sampled_from([limit - 1, limit, limit + 1]),
            st.integers(limit - 8, limit + 64),
            st.integers(limit + 1, min(4 * limit, hard_limit - 1)),
        )
    )
    kind = draw(st.sampled_from(["audio", "odd_audio", "text", "session", "unknown"]))
    body = min(size, limit) - 64
    message: dict[str, Any]
    if kind in ("audio", "odd_audio"):
        n = draw(st.integers(0, max(0, body)))
        n = n - n % 2 + (kind == "odd_audio")
        message = {"type": "input_audio.append", "audio": bytes(n)}
    elif kind == "text":
        # Multibyte characters: under 4000 chars, yet more bytes than the limit.
        char = draw(st.sampled_from(["a", "é", "€", "😀"]))
        message = {"type": "conversation.text", "text": char * draw(st.integers(0, 4000))}
    elif kind == "session":
        message = {"type": "session.update", "session": {"instructions": "i" * max(0, body)}}
    else:
        message = {"type": "no.such.type"}
    return exact_size(message, size)


@st.composite
def audio_frames(draw: st.DrawFn, max_bytes: int) -> bytes:
    """``input_audio.append`` of up to ``max_bytes`` of noise, tone or silence, odd sizes too."""
    n = draw(st.integers(0, max_bytes))
    audio = draw(st.sampled_from([bytes(n), b"\x00\x40" * (n // 2) + b"\x01" * (n % 2)]))
    if draw(st.booleans()):
        audio = draw(st.binary(min_size=n, max_size=n))
    return msgpack.packb({"type": "input_audio.append", "audio": audio}, use_bin_type=True)  # type: ignore[no-any-return]


rate_updates = st.fixed_dictionaries(
    {},
    optional={
        "input_sample_rate": st.one_of(
            st.sampled_from(SAMPLE_RATES),
            st.integers(0, 200_000),
            st.sampled_from([16000.0, "16000"]),
        ),
        "output_sample_rate": st.one_of(st.sampled_from(SAMPLE_RATES), st.integers(0, 200_000)),
    },
).map(lambda session: msgpack.packb({"type": "session.update", "session": session}))
"""``session.update`` with sample rates, supported or not."""


COSTLY_SHAPES = (
    b"\x80",  # {}
    b"\x90",  # []
    b"\xc0",  # nil
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # the largest uint64
    b"\xa2ab",  # a short str
    b"\xd4\x01\x00",  # a fixext 1
)
"""Small values that cost a generic decoder the most per byte when repeated."""


@st.composite
def costly_frames(draw: st.DrawFn, max_bytes: int) -> bytes:
    """A frame of at most ``max_bytes`` filled with many small values or deep nesting,
    under a key or position drawn from where the protocol has nesting and where not."""
    shape = draw(st.sampled_from(COSTLY_SHAPES))
    kind = draw(st.sampled_from(["array", "map", "nest_arrays", "nest_maps"]))
    where = draw(st.sampled_from([("pad",), ("session",), ("session", "turn")]))
    prefix = b"\x82\xa4type" + msgpack.packb(draw(st.sampled_from(CLIENT_TYPES)))
    prefix += msgpack.packb(where[0])
    key_chain = b"".join(b"\x81" + msgpack.packb(key) for key in where[1:])
    room = max_bytes - len(prefix) - len(key_chain) - 8
    count = draw(st.integers(1, max(1, room // len(shape))))
    if kind == "array":
        body = b"\xdd" + count.to_bytes(4, "big") + shape * count
    elif kind == "map":
        pairs = max(1, count // 2)
        body = b"\xdf" + pairs.to_bytes(4, "big") + (b"\xa1k" + shape[:1]) * pairs
        body = body if len(body) <= room else b"\x80"
    elif kind == "nest_arrays":
        body = b"\x91" * count + shape
    else:
        body = b"\x81\xa1k" * (count // 3) + shape
    return (prefix + key_chain + body)[:max_bytes]
