"""What decoding one client frame costs the event loop, for the worst shapes we know.

    python -m loadtest.decode_cost [--max-bytes 262144] [--repeats 7]

Each frame is at most ``--max-bytes`` (the server's ``max_frame_bytes``) and is
decoded ``--repeats`` times; the figure is the best of those, in CPU time of the
decoding thread (``time.thread_time``), so that other processes on a loaded
machine do not inflate it. Three decoders: ``agent.protocol.decode_client_frame``
(the server's), and for comparison plain ``msgpack.unpackb`` with and without a
Python hook per map (the server's decoder before it read frames by the protocol's
shape). The fuzz tests (tests/fuzz) use the same frames and measurement.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import msgpack

from agent.protocol import ProtocolError, decode_client_frame

MAX_FRAME_BYTES = 256 * 1024
WORST_ALLOWED_MS = 2.0
"""No frame within the limits may cost more (issue 13)."""


LARGEST_SESSION_UPDATE: dict[str, Any] = {
    "type": "session.update", "session": {
        "instructions": "😀" * 8000, "voice": None, "input_sample_rate": 16000,
        "output_sample_rate": 24000, "temperature": 0.7, "max_response_tokens": 2048,
        "partial_transcript_interval_ms": 300.0, "speculative_response": True,
        "speculative_transcript": True, "first_chunk_at_clause": True,
        "turn": {"speech_threshold": 0.5, "silence_threshold": 0.35,
                 "min_speech_ms": 200.0, "end_of_turn_silence_ms": 600.0,
                 "barge_in_min_speech_ms": 250.0},
    },
}
"""The largest legal control frame: every field, 8000 four-byte characters of instructions."""
LARGEST_CONVERSATION_TEXT: dict[str, Any] = {"type": "conversation.text", "text": "😀" * 4000}


def _pack(message: Any) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def _fill(make: Callable[[int], bytes], max_bytes: int) -> bytes:
    """The largest ``make(n)`` that fits in ``max_bytes`` (n found by bisection)."""
    low, high = 0, max_bytes
    while low < high:
        middle = (low + high + 1) // 2
        if len(make(middle)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return make(low)


def _nested(depth: int) -> bytes:
    return b"\x81\xa4type\xa1x\xa3pad" + b"\x91" * depth + b"\xc0"


def adversarial_frames(max_bytes: int = MAX_FRAME_BYTES) -> dict[str, bytes]:
    """Frames of at most ``max_bytes`` shaped to make a decoder work hard."""
    emoji = "😀"
    text = {"type": "conversation.text", "text": "hi"}
    return {
        "empty maps in an array": _fill(lambda n: _pack({**text, "pad": [{}] * n}), max_bytes),
        "nil in an array": _fill(lambda n: _pack({**text, "pad": [None] * n}), max_bytes),
        "arrays nested deep": _fill(_nested, max_bytes),
        "maps nested deep": _fill(
            lambda n: b"\x81\xa4type\xa1x" + b"\x81\xa1k" * n + b"\xc0", max_bytes
        ),
        "empty maps in session": _fill(
            lambda n: _pack({"type": "session.update",
                             "session": {"turn": {str(i): {} for i in range(n)}}}),
            max_bytes,
        ),
        "huge int keys": _fill(
            lambda n: _pack({**text, "pad": {2**64 - 1 - i: None for i in range(n)}}),
            max_bytes,
        ),
        "many short strings": _fill(lambda n: _pack({**text, "pad": ["ab"] * n}), max_bytes),
        "31 keys of 4-byte UTF-8": _pack(
            {**text, **{f"k{i}": emoji * (max_bytes // 4 // 33) for i in range(29)}}
        ),
        "audio with a 4-byte UTF-8 extra": _fill(
            lambda n: _pack({"type": "input_audio.append", "audio": b"\x00\x00",
                             "note": emoji * n}),
            max_bytes,
        ),
        "largest audio": _fill(
            lambda n: _pack({"type": "input_audio.append", "audio": bytes(2 * n)}), max_bytes
        ),
        "20 ms of 16 kHz audio (a caller's frame)": _pack(
            {"type": "input_audio.append", "audio": bytes(640)}
        ),
        "largest session.update": _pack(LARGEST_SESSION_UPDATE),
        "largest conversation.text": _pack(LARGEST_CONVERSATION_TEXT),
        "bad UTF-8 at the end": _fill(
            lambda n: _pack({**text, "pad": "a" * n})[:-1] + b"\xff", max_bytes
        ),
    }


def cpu_ms(decode: Callable[[bytes], object], frame: bytes, repeats: int) -> float:
    """Best of ``repeats`` runs, in ms of this thread's CPU time."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        try:
            decode(frame)
        except (ProtocolError, ValueError):
            pass
        best = min(best, time.thread_time() - started)
    return best * 1000.0


def _str_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    if not all(type(key) is str for key, _ in pairs):
        raise ValueError("map keys must be msgpack str")
    return dict(pairs)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "decode_client_frame": decode_client_frame,
    "unpackb + hook per map": lambda frame: msgpack.unpackb(
        frame, raw=False, object_pairs_hook=_str_keyed
    ),
    "unpackb": lambda frame: msgpack.unpackb(frame, raw=False, strict_map_key=False),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-bytes", type=int, default=MAX_FRAME_BYTES)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    names = list(DECODERS)
    print(f"{'frame':42} {'bytes':>7} " + " ".join(f"{name:>24}" for name in names))
    worst = 0.0
    for shape, frame in adversarial_frames(args.max_bytes).items():
        costs = [cpu_ms(DECODERS[name], frame, args.repeats) for name in names]
        worst = max(worst, costs[0])
        print(f"{shape:42} {len(frame):7d} " + " ".join(f"{ms:21.3f} ms" for ms in costs))
    print(f"worst decode_client_frame: {worst:.3f} ms (limit {WORST_ALLOWED_MS} ms)")
    return 0 if worst <= WORST_ALLOWED_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
