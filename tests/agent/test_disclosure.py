"""Error messages for callers keep the gist and lose addresses, paths and reprs."""

from __future__ import annotations

import msgpack
import pytest

from agent.disclosure import MAX_CHARS, caller_safe
from agent.protocol import encode_server_message
from pipeline.events import ErrorEvent


@pytest.mark.parametrize(
    ("internal", "leaked", "kept"),
    [
        ("cannot reach http://10.0.3.7:8001/v1: [Errno 111] Connect call failed "
         "('10.0.3.7', 8001)", ["10.0.3.7", "http://", "/v1"], "cannot reach"),
        ("vllm.internal:8000 answered HTTP 500: overloaded", ["vllm.internal"], "HTTP 500"),
        ("internal error: KeyError('session_7f/secret')", ["session_7f", "('"],
         "internal error: KeyError"),
        ("piper: synthesis failed: [Errno 2] No such file or directory: "
         "'/opt/voices/joe.onnx'", ["/opt/voices", "joe.onnx"], "synthesis failed"),
        ("llama: <pipeline.engines.llama_cpp.Job object at 0x7f3a2c>", ["0x7f3a2c", "Job"],
         "llama"),
        (r"whisper: cannot open C:\models\tiny\model.bin", [r"C:\models"], "cannot open"),
        ("[::1]:8001 refused", ["::1"], "refused"),
    ],
)
def test_internal_details_are_removed(internal: str, leaked: list[str], kept: str) -> None:
    shown = caller_safe(internal)
    assert kept in shown
    assert not [part for part in leaked if part in shown], shown


@pytest.mark.parametrize(
    "message",
    ["frames must be binary msgpack, not text", "only audio/x-mulaw at 8000 Hz",
     "input_sample_rate: 12345 is not one of 8000, 16000", "more than 50 frames per second"],
)
def test_ordinary_messages_are_untouched(message: str) -> None:
    assert caller_safe(message) == message


def test_long_messages_are_cut() -> None:
    # Cut before any pattern runs, so a long echoed value cannot make them costly.
    assert len(caller_safe("a." * 200_000 + "://x")) <= MAX_CHARS


def test_the_encoder_sends_the_safe_message() -> None:
    frame = encode_server_message(ErrorEvent("llm_unavailable", "cannot reach http://10.1.1.1/v1"))
    assert msgpack.unpackb(frame)["message"] == "cannot reach <internal address>"
