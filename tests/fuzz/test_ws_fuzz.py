"""Fuzzing the live ``/ws`` endpoint: a real server (bench engines, real Silero VAD).

One WebSocket session per hypothesis example. Each generated frame is followed by
a probe (a ``session.update`` of ``instructions`` to a unique string); everything
the server sends between the frame and the probe's ``session.updated`` is the
frame's answer, because the server answers frames in order (docs/protocol.md §5,
ordering 6). The answer must be exactly what the page promises: one ``error``
with the documented code for a bad frame, a ``session.updated`` with the expected
settings for a good ``session.update``, nothing attributable for other good
frames; and the session stays open throughout.

The server runs with small frame limits (4 KiB soft, 64 KiB hard) so frames over
them are cheap to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from agent.bench_profile import build_bench
from agent.config import Settings
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import subprotocols
from tests.fuzz.conftest import TEST_TIMEOUT_S, WS_MAX_FRAMES, WS_SESSIONS
from tests.fuzz.oracle import (
    AUDIO_FLOW_CODES,
    DOCUMENTED_ERROR_CODES,
    ERROR_CATEGORIES,
    SERVER_TYPES,
    TRANSIENT_FRAME_CODES,
    SessionModel,
    expected_decode,
    generic_unpack,
    production_recursion_limit,
)
from tests.fuzz.stats import STATS
from tests.fuzz.strategies import (
    any_value,
    audio_frames,
    client_messages,
    deep_frames,
    mutated,
    packed,
    rate_updates,
    sized_frames,
    texts,
)

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.timeout(TEST_TIMEOUT_S),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

MAX_FRAME_BYTES = 4096
HARD_MAX_FRAME_BYTES = 65536
ANSWER_TIMEOUT_S = 10.0
"""Per frame: the probe's answer comes within this, or the test fails."""
SESSION_TIMEOUT_S = 120.0
"""Per hypothesis example (one session), everything included."""
CLOSE_TIMEOUT_S = 10.0
"""After the client closes, the server forgets the session within this."""
# The clients use ``max_queue=None``: websockets stops reading the socket once 16
# messages wait unread, and a client closing while a reply streams in would then
# never see the server's close frame (10 s close timeout, then 1006).

Frame = bytes | str
"""A binary WebSocket message, or a text one."""


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    # Every frame must earn its own answer here: no errors held back (§7's few
    # errors a second per code is tested over the socket in tests/e2e/test_limits.py).
    settings = Settings(
        max_frame_bytes=MAX_FRAME_BYTES, hard_max_frame_bytes=HARD_MAX_FRAME_BYTES,
        errors_per_code_per_s=1_000_000,
    )
    # Fresh engines: the app's lifespan starts and stops its VAD worker.
    yield from start_server(settings, build_bench(settings, progress=lambda line: None))


ws_frames: st.SearchStrategy[Frame] = st.one_of(
    packed(client_messages(max_audio=2048)),
    packed(client_messages(max_audio=2048)),
    packed(client_messages(max_audio=2048)),
    packed(any_value),
    st.binary(max_size=64),
    mutated(packed(client_messages())),
    texts,  # text WebSocket messages
    st.text(max_size=MAX_FRAME_BYTES),
    st.just(b""),
    st.just(""),
    sized_frames(MAX_FRAME_BYTES, HARD_MAX_FRAME_BYTES),
    audio_frames(2048),
    rate_updates,
    deep_frames(),
)


def expected_answer(frame: Frame, model: SessionModel) -> tuple[set[str], dict[str, Any] | None]:
    """(codes, new settings): one error with a code in ``codes`` (empty: no error),
    and a ``session.updated`` with ``new settings`` if not None."""
    if isinstance(frame, str):
        if len(frame.encode()) > MAX_FRAME_BYTES:
            return {"malformed_frame", "frame_too_large"}, None  # §1 and §7 both apply
        return {"malformed_frame"}, None
    if len(frame) > MAX_FRAME_BYTES:
        return {"frame_too_large"}, None
    code = expected_decode(frame)
    if code is not None:
        return {code}, None
    message = generic_unpack(frame)[1]
    if message["type"] == "session.update":
        return model.expect_update(message["session"])
    if message["type"] == "tool.result":
        return {"unknown_tool_call"}, None  # §4: no client tool call is ever waiting here
    return set(), None


class Probe:
    """Reads the server's frames, attributing them to the client frame just sent."""

    def __init__(self, ws: ClientConnection, created: dict[str, Any]) -> None:
        self.ws = ws
        self.model = SessionModel(
            dict(created["session"]), list(created["limits"]["voices"]), dict(created["limits"])
        )
        self.sent = 0
        self.engine_errors: list[dict[str, Any]] = []

    async def read(self, deadline: float) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(decode=False), deadline - time.monotonic())
        message = msgpack.unpackb(frame, raw=False)
        assert isinstance(message, dict) and message.get("type") in SERVER_TYPES, message
        if message["type"] == "error":
            assert message["code"] in DOCUMENTED_ERROR_CODES, message
            assert message["fatal"] is False, message
            assert isinstance(message["message"], str) and message["message"], message
            assert message["category"] in ERROR_CATEGORIES, message
            if message["response_id"] is not None:
                self.engine_errors.append(message)
        return message

    async def answer_to(
        self, frame: Frame
    ) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
        """Send ``frame`` then a probe: the error codes and ``session.updated``
        settings the server sent in between, and the settings the probe got back."""
        self.sent += 1
        instructions = f"fuzz probe {self.sent}"
        await self.ws.send(frame)
        await self.ws.send(
            msgpack.packb({"type": "session.update", "session": {"instructions": instructions}})
        )
        codes: list[str] = []
        updates: list[dict[str, Any]] = []
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            message = await self.read(deadline)
            if message["type"] == "error" and message["response_id"] is None:
                want = "transient" if message["code"] in TRANSIENT_FRAME_CODES else "client"
                assert message["category"] == want, message
                codes.append(message["code"])
            elif message["type"] == "session.updated":
                if message["session"]["instructions"] == instructions:
                    return codes, updates, message["session"]
                updates.append(message["session"])

    async def check(self, frame: Frame) -> None:
        want_codes, want_view = expected_answer(frame, self.model)
        codes, updates, probed = await self.answer_to(frame)
        for code in codes or ["no_error"]:
            STATS.count("ws.frames", code)
        STATS.count("ws.frame_kinds", "text" if isinstance(frame, str) else "binary")
        context = (frame[:200], len(frame), want_codes, codes, updates)
        if want_view is not None:  # a valid session.update: applied and reported
            assert codes == [] and len(updates) == 1, context
            assert updates[0] == want_view, context
            self.model.apply(want_view)
        elif want_codes:  # a bad frame: exactly one error, with its documented code
            assert updates == [] and len(codes) == 1 and codes[0] in want_codes, context
        elif is_audio(frame):  # valid audio may be dropped: rate limit, full queue (§4, §7)
            assert updates == [] and len(codes) <= 1 and set(codes) <= AUDIO_FLOW_CODES, context
        else:
            assert updates == [] and codes == [], context
        # The probe's answer: the whole settings, as the model has them.
        self.model.apply({**self.model.view, "instructions": probed["instructions"]})
        assert probed == self.model.view, ("settings drifted", probed, self.model.view)


def is_audio(frame: Frame) -> bool:
    message = generic_unpack(frame)[1] if isinstance(frame, bytes) else None
    return isinstance(message, dict) and message.get("type") == "input_audio.append"


async def _sessions_drain(server: RunningServer) -> None:
    for _ in range(int(CLOSE_TIMEOUT_S / 0.05)):
        if not server.app_state.sessions:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(server.app_state.sessions)} sessions left after close")


async def fuzz_session(server: RunningServer, frames: list[Frame]) -> None:
    async with connect(server.url, subprotocols=subprotocols(), max_queue=None) as ws:
        created = msgpack.unpackb(await asyncio.wait_for(ws.recv(decode=False), 30), raw=False)
        assert created["type"] == "session.created", created
        assert created["limits"]["max_frame_bytes"] == MAX_FRAME_BYTES
        probe = Probe(ws, created)
        for frame in frames:
            await probe.check(frame)
        # Still alive and serving: a valid field is applied and reported.
        await probe.check(
            msgpack.packb({"type": "session.update", "session": {"temperature": 0.3}})
        )
        assert probe.model.view["temperature"] == 0.3
        assert probe.engine_errors == [], probe.engine_errors
        async with httpx.AsyncClient(base_url=server.http, trust_env=False) as http:
            health = await http.get("/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    await _sessions_drain(server)
    STATS.count("ws.sessions", "completed")


@settings(
    max_examples=WS_SESSIONS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=st.lists(ws_frames, min_size=1, max_size=WS_MAX_FRAMES))
@example(
    frames=[b"", "", "{}", b"\xc1", msgpack.packb({"type": "input_audio.append", "audio": b"\0"})]
)
@example(
    frames=[
        msgpack.packb({"type": "session.update", "session": {"input_sample_rate": 11025}}),
        msgpack.packb({"type": "session.update", "session": {"input_sample_rate": 8000}}),
        msgpack.packb({"type": "input_audio.append", "audio": bytes(2048)}),
        msgpack.packb({"type": "conversation.text", "text": "Say hello."}),
        msgpack.packb({"type": "input_audio.append", "audio": bytes(MAX_FRAME_BYTES)}),
        msgpack.packb({"type": "response.cancel"}),
    ]
)
@example(  # nested just under msgpack's 1024 levels, in the one field whose error quotes it
    frames=[
        msgpack.packb({"type": "session.update", "session": {"voice": 0}})[:-1]
        + b"\x91" * 1010
        + b"\xc0"
    ]
)
def test_fuzzed_frames_get_their_documented_answer_and_the_session_survives(
    fuzz_server: RunningServer, frames: list[Frame]
) -> None:
    with production_recursion_limit():  # the server thread shares the interpreter's limit
        asyncio.run(asyncio.wait_for(fuzz_session(fuzz_server, frames), SESSION_TIMEOUT_S))


async def _over_hard_limit(server: RunningServer, frame: Frame) -> None:
    async with connect(server.url, subprotocols=subprotocols(), max_queue=None) as ws:
        created = msgpack.unpackb(await asyncio.wait_for(ws.recv(decode=False), 30), raw=False)
        assert created["type"] == "session.created"
        await ws.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(1000):  # whatever was under way before the frame, then the close
                await asyncio.wait_for(ws.recv(decode=False), 30)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    assert closed.value.rcvd.code == 1009, closed.value.rcvd
    await _sessions_drain(server)

    # The server goes on: a new session is answered.
    async with connect(server.url, subprotocols=subprotocols(), max_queue=None) as ws:
        created = msgpack.unpackb(await asyncio.wait_for(ws.recv(decode=False), 30), raw=False)
        probe = Probe(ws, created)
        await probe.check(msgpack.packb({"type": "session.update", "session": {"voice": "tone"}}))
        await probe.check(msgpack.packb({"type": "conversation.text", "text": "Say hello."}))
        deadline = time.monotonic() + 30
        while (await probe.read(deadline))["type"] != "response.audio.delta":
            pass
    await _sessions_drain(server)


@pytest.mark.parametrize(
    "frame",
    [
        msgpack.packb({"type": "input_audio.append", "audio": bytes(HARD_MAX_FRAME_BYTES)}),
        b"\x00" * (HARD_MAX_FRAME_BYTES + 1),
        "x" * (HARD_MAX_FRAME_BYTES + 1),
    ],
    ids=["audio", "binary_garbage", "text"],
)
def test_a_frame_over_the_hard_limit_closes_with_1009_and_a_new_session_works(
    fuzz_server: RunningServer, frame: Frame
) -> None:
    assert len(frame) > HARD_MAX_FRAME_BYTES
    asyncio.run(asyncio.wait_for(_over_hard_limit(fuzz_server, frame), SESSION_TIMEOUT_S))
