"""Hostile or broken media streams on the real ``/telephony/twilio`` WebSocket.

The server runs in its own thread with the scripted ``bench`` engines: what is
tested is the endpoint, not speech.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent import telephony
from agent.config import Settings
from agent.protocol import SUBPROTOCOL
from loadtest.harness import bench_engines
from tests.e2e.conftest import RunningServer
from tests.faults.support import serving, wait_until

STREAM_SID = "MZ00000000000000000000000000000002"
START: dict[str, Any] = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": STREAM_SID,
    "start": {
        "streamSid": STREAM_SID, "callSid": "CA0", "accountSid": "AC0", "tracks": ["inbound"],
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}
MEDIA = json.dumps({
    "event": "media", "streamSid": STREAM_SID,
    "media": {"track": "inbound", "payload": base64.b64encode(b"\xff" * 160).decode()},
})


def media_url(server: RunningServer) -> str:
    return server.url.replace("/ws", "/telephony/twilio")


async def close_code(ws: ClientConnection, within_s: float = 20.0) -> int | None:
    """Read until the server closes the stream; its close code."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(within_s):
            async for _ in ws:
                pass
    return ws.close_code


async def test_a_stream_that_never_speaks_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telephony, "FIRST_MESSAGE_TIMEOUT_S", 0.3)
    with serving(Settings(), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            assert await close_code(ws) == 1008
        assert not server.app_state.slots


async def test_a_stream_that_never_starts_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telephony, "START_TIMEOUT_S", 0.5)
    with serving(Settings(), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
            assert await close_code(ws) == 1008
        assert not server.app_state.slots


async def test_junk_before_start_is_cut_off_and_logged_a_few_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serving(Settings(), bench_engines()) as server, caplog.at_level(
        logging.DEBUG, "voiceforge"
    ):
        async with connect(media_url(server)) as ws:
            with contextlib.suppress(ConnectionClosed):
                for i in range(200):
                    await ws.send(f"not json {i}")
            assert await close_code(ws) == 1008
        assert not server.app_state.slots
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("voiceforge")]
    assert 0 < len(warnings) <= 12, [r.getMessage() for r in warnings]


async def test_a_stream_waiting_for_start_holds_a_slot() -> None:
    with serving(Settings(max_sessions=1), bench_engines()) as server:
        async with connect(media_url(server)) as waiting:
            await waiting.send(json.dumps({"event": "connected", "protocol": "Call"}))
            await wait_until(lambda: server.app_state.open_calls() == 1, 10, "slot taken")
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url, subprotocols=[SUBPROTOCOL]):  # type: ignore[list-item]
                    pass
            assert refused.value.response.status_code == 503
        await wait_until(lambda: not server.app_state.slots, 10, "slot given back")


async def test_a_browser_origin_is_checked_on_the_media_stream() -> None:
    with serving(Settings(), bench_engines()) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(media_url(server), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        assert not server.app_state.slots


async def test_start_is_refused_once_the_server_drains() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
            await wait_until(lambda: server.app_state.open_calls() == 1, 10, "admitted")
            server.app_state.draining = True  # as the drain does first
            await ws.send(json.dumps(START))
            assert await close_code(ws) == 1013
        assert not server.app_state.bridge_sessions and not server.app_state.slots


async def test_a_drain_hangs_up_a_stream_still_waiting_for_start() -> None:
    running = serving(Settings(), bench_engines())
    server = running.__enter__()
    stopping: asyncio.Task[object] | None = None
    try:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
            await wait_until(lambda: server.app_state.open_calls() == 1, 10, "admitted")
            # What SIGTERM does: the server drains, then uvicorn shuts down.
            stopping = asyncio.create_task(asyncio.to_thread(running.__exit__, None, None, None))
            code = await close_code(ws)
    finally:
        if stopping is None:
            running.__exit__(None, None, None)
        else:
            await asyncio.wait_for(stopping, 60)
    assert code == 1001  # told by the drain, not cut by uvicorn's own shutdown (1012)


async def test_a_media_flood_closes_the_call() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps(START))
            await wait_until(lambda: bool(server.app_state.bridge_sessions), 10, "call up")
            with contextlib.suppress(ConnectionClosed):
                for _ in range(20_000):
                    await ws.send(MEDIA)
            assert await close_code(ws) == 1008
        await wait_until(lambda: not server.app_state.slots, 10, "slot given back")


async def test_a_call_whose_media_stops_is_hung_up() -> None:
    with serving(Settings(idle_timeout_s=1.0), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps(START))
            await ws.send(MEDIA)
            assert await close_code(ws) == 1001
        await wait_until(lambda: not server.app_state.slots, 10, "slot given back")


async def test_media_faster_than_real_time_is_not_taken() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with connect(media_url(server)) as ws:
            await ws.send(json.dumps(START))
            await wait_until(lambda: bool(server.app_state.bridge_sessions), 10, "call up")
            (session,) = server.app_state.bridge_sessions
            assert isinstance(session, telephony.TelephonySession)
            taken_ms: list[float] = []
            feed = session.conversation.feed_audio

            def counted(audio: Any) -> bool:
                taken = feed(audio)
                if taken:
                    taken_ms.append(len(audio) / 8.0)
                return taken

            session.conversation.feed_audio = counted  # type: ignore[method-assign]
            marks: list[str] = []
            on_mark = session.on_mark

            def seen(name: str) -> None:
                marks.append(name)
                on_mark(name)

            session.on_mark = seen  # type: ignore[method-assign]
            second = json.dumps({  # one second of audio in one message, 100 of them
                "event": "media", "streamSid": STREAM_SID,
                "media": {"track": "inbound", "payload": base64.b64encode(b"\xff" * 8000).decode()},
            })
            started = asyncio.get_running_loop().time()
            for _ in range(100):
                await ws.send(second)
            await ws.send(json.dumps({"event": "mark", "streamSid": STREAM_SID,
                                      "mark": {"name": "last"}}))
            await wait_until(lambda: "last" in marks, 30, "every message read")
            elapsed = asyncio.get_running_loop().time() - started
        # 2 s of burst, then twice real time: far below the 100 s offered.
        assert sum(taken_ms) <= 2000.0 + 2.0 * elapsed * 1000.0, (sum(taken_ms), elapsed)
