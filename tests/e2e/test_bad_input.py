"""A misbehaving caller gets the documented error event and keeps its session.

Bad frames go over a raw WebSocket (the SDK would refuse to send them). After
each, a typed turn must still be answered in full: one bad frame never costs a
caller the call. Only a frame over the hard limit closes the connection (1009),
and then the server keeps serving others.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import websockets
from websockets.asyncio.client import connect

from agent.config import Settings
from pipeline.conversation import Engines
from tests.e2e.conftest import RunningServer, sharing, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

FRAME_BYTES = 640
"""20 ms of 16 kHz PCM16."""


def _audio(pcm: bytes) -> bytes:
    packed: bytes = msgpack.packb({"type": "input_audio.append", "audio": pcm}, use_bin_type=True)
    return packed


async def _assert_survives(session: RawSession) -> None:
    done = await session.say_hello()
    assert done["status"] == "completed", done
    assert done["text"].strip(), "the reply has text"


BAD_FRAMES: dict[str, tuple[str | bytes, str]] = {
    # 0xc1 is the one byte msgpack never uses.
    "malformed_msgpack": (b"\xc1\x93\x01", "malformed_frame"),
    "array_not_map": (msgpack.packb([1, 2, 3]), "malformed_frame"),
    "map_without_type": (msgpack.packb({"text": "hi"}), "malformed_frame"),
    "unknown_type": (msgpack.packb({"type": "response.explode"}), "unknown_type"),
    "odd_pcm_bytes": (_audio(bytes(FRAME_BYTES + 1)), "invalid_audio"),
    "text_frame": ('{"type": "conversation.text", "text": "hi"}', "malformed_frame"),
    # Over max_frame_bytes (256 KiB), under the hard limit (4 MiB).
    "over_max_frame_bytes": (_audio(bytes(300 * 1024)), "frame_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_a_bad_frame_gets_an_error_and_the_session_survives(
    server: RunningServer, case: str
) -> None:
    frame, code = BAD_FRAMES[case]
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        await ws.send(frame)
        error = await session.wait_type("error", 10)
        assert error["code"] == code, error
        assert error["fatal"] is False
        assert error["message"]
        await _assert_survives(session)
        assert len(session.errors()) == 1, session.errors()


async def test_an_unsupported_sample_rate_is_refused_and_changes_nothing(
    server: RunningServer,
) -> None:
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        before: dict[str, Any] = session.created["session"]
        await session.send({"type": "session.update", "session": {"input_sample_rate": 11025}})
        error = await session.wait_type("error", 10)
        assert error["code"] == "unsupported_sample_rate", error
        assert error["fatal"] is False
        # All or nothing: a bad field next to a good one applies neither.
        await session.send(
            {"type": "session.update", "session": {"temperature": 0.1, "input_sample_rate": 11025}}
        )
        assert (await session.wait_type("error", 10))["code"] == "unsupported_sample_rate"

        await session.send({"type": "session.update", "session": {"temperature": 0.3}})
        updated = await session.wait_type("session.updated", 10)
        assert updated["session"] == {**before, "temperature": 0.3}
        assert updated["session"]["input_sample_rate"] == 16000
        await _assert_survives(session)


async def test_audio_faster_than_twice_real_time_is_refused_with_rate_limited_errors(
    server: RunningServer,
) -> None:
    frames = 500  # 10 s of PCM in 20 ms frames, sent as fast as the socket takes them
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        silence = _audio(bytes(FRAME_BYTES))
        started = time.monotonic()
        for _ in range(frames):
            await ws.send(silence)
        await _assert_survives(session)
        elapsed_s = time.monotonic() - started

    rate_errors = [e for e in session.errors() if e["code"] == "audio_rate_exceeded"]
    assert rate_errors, "audio at many times real time is refused"
    assert all(e["fatal"] is False for e in rate_errors)
    # At most one error a second, not one per dropped frame.
    assert len(rate_errors) <= 1 + elapsed_s, (len(rate_errors), elapsed_s)
    assert len(session.errors()) == len(rate_errors), session.errors()


HARD_LIMIT = 512 * 1024


@pytest.fixture(scope="module")
def small_limit_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from start_server(Settings(hard_max_frame_bytes=HARD_LIMIT), sharing(embedded_engines))


async def test_a_frame_over_the_hard_limit_closes_with_1009_and_the_server_goes_on(
    small_limit_server: RunningServer,
) -> None:
    url = small_limit_server.url
    async with connect(url, subprotocols=subprotocols()) as ws:
        await RawSession.open(ws)
        await ws.send(_audio(bytes(HARD_LIMIT + 1024)))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await RawSession(ws, {}).wait_type("never", 30)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    assert closed.value.rcvd.code == 1009

    async with connect(url, subprotocols=subprotocols()) as ws:
        await _assert_survives(await RawSession.open(ws))


async def test_an_error_about_a_huge_value_is_small(server: RunningServer) -> None:
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        # Values the control-frame cap (40 KiB) lets through, echoed in the error.
        for frame, code in (
            ({"type": "t" * 30_000}, "unknown_type"),
            ({"type": "session.update", "session": {"v" * 30_000: 1}}, "invalid_session"),
            ({"type": "session.update", "session": {"voice": "v" * 30_000}}, "invalid_session"),
        ):
            await session.send(frame)
            error = await session.wait_type("error", 10)
            assert error["code"] == code
            assert len(msgpack.packb(error, use_bin_type=True)) < 512, len(error["message"])
            assert "… (30000 chars)" in error["message"]
        await _assert_survives(session)


async def test_a_frame_over_the_default_transport_limit_is_closed_1009_by_the_server(
    server: RunningServer,
) -> None:
    # The default hard limit is twice max_frame_bytes (512 KiB), not 4 MiB: what
    # the server buffers of one frame is sized to what the protocol can use.
    assert server.settings.hard_max_frame_bytes == 2 * server.settings.max_frame_bytes
    async with connect(server.url, subprotocols=subprotocols(), max_size=None) as ws:
        await RawSession.open(ws)
        await ws.send(_audio(bytes(server.settings.hard_max_frame_bytes + 2)))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await RawSession(ws, {}).wait_type("never", 30)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    assert closed.value.rcvd.code == 1009
