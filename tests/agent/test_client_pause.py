"""The Python SDK's playback pause and resume (protocol 1.1)."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.client import PlaybackClock, VoiceForgeClient
from agent.protocol import (
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    OutputAudioPlayed,
    SessionCreated,
    decode_client_frame,
    decode_server_frame,
    encode_server_message,
    parse_session_fields,
)
from pipeline.events import ResponseAudioDelta, ResponseAudioPause, ResponseAudioResume


def test_pause_holds_the_position_and_keeps_the_buffer() -> None:
    clock = PlaybackClock()
    clock.receive("r", 1000.0, now=10.0)
    assert clock.pause("r", now=10.4) == pytest.approx(400.0)
    assert clock.is_paused("r") and not clock.is_playing("r", 10.5)
    # Time passes and audio keeps arriving: nothing more is played.
    assert clock.receive("r", 500.0, now=11.0)
    assert clock.played_ms("r", 20.0) == pytest.approx(400.0)
    assert clock.underruns == 0
    clock.resume("r", now=30.0)
    assert not clock.is_paused("r") and clock.is_playing("r", 30.5)
    assert clock.played_ms("r", 30.5) == pytest.approx(900.0)
    assert clock.played_ms("r", 31.1) == pytest.approx(1500.0)  # 1100 ms left at the pause


def test_a_second_pause_and_a_stray_resume_change_nothing() -> None:
    clock = PlaybackClock()
    clock.receive("r", 1000.0, now=0.0)
    clock.pause("r", now=0.2)
    assert clock.pause("r", now=0.5) == pytest.approx(200.0)
    clock.resume("other", now=0.6)
    clock.resume("r", now=1.0)
    clock.resume("r", now=5.0)  # not paused any more: ignored
    assert clock.played_ms("r", 1.3) == pytest.approx(500.0)


def test_clear_while_paused_flushes_at_the_paused_position() -> None:
    clock = PlaybackClock()
    clock.receive("r", 1000.0, now=0.0)
    clock.pause("r", now=0.3)
    assert clock.clear("r", now=2.0) == pytest.approx(300.0)
    assert not clock.receive("r", 100.0, now=2.1)
    assert clock.dropped_after_clear == 1
    clock.resume("r", now=3.0)  # a resume after a clear plays nothing
    assert clock.played_ms("r", 9.0) == pytest.approx(300.0)
    assert not clock.is_playing("r", 3.1)


def test_pause_before_any_audio_then_resume() -> None:
    clock = PlaybackClock()
    assert clock.pause("r", now=0.0) == 0.0
    clock.receive("r", 200.0, now=0.1)
    clock.resume("r", now=1.0)
    assert clock.played_ms("r", 1.1) == pytest.approx(100.0)


def test_pause_and_resume_on_the_wire() -> None:
    for event, name in (
        (ResponseAudioPause("resp_1"), "response.audio.pause"),
        (ResponseAudioResume("resp_1"), "response.audio.resume"),
    ):
        frame = encode_server_message(event)
        assert msgpack.unpackb(frame) == {"type": name, "response_id": "resp_1"}
        assert decode_server_frame(frame) == event
    created = SessionCreated("sess_x", PROTOCOL_VERSION, {}, {})
    assert msgpack.unpackb(encode_server_message(created))["protocol_minor"] == PROTOCOL_MINOR >= 1
    assert parse_session_fields({"playback_pause": True}, []) == {"playback_pause": True}


async def test_the_sdk_pauses_reports_and_resumes_over_a_socket() -> None:
    reports: list[OutputAudioPlayed] = []
    paused_reported = asyncio.Event()
    clients: list[VoiceForgeClient] = []
    resume_sent_at: list[float] = []

    def played_so_far() -> float:
        return clients[0].playback.played_ms("r", time.monotonic()) if clients else 0.0

    async def handler(ws: ServerConnection) -> None:
        await ws.send(encode_server_message(SessionCreated("sess_x", 1, {}, {})))
        pcm = bytes(4800)  # 100 ms at 24 kHz
        for seq in range(10):
            await ws.send(encode_server_message(ResponseAudioDelta("r", seq, pcm, 24000, 100.0)))
        # Pause once the client's own clock says 150 ms have played (same loop).
        for _ in range(1000):  # 10 s at most
            if played_so_far() >= 150.0:
                break
            await asyncio.sleep(0.01)
        await ws.send(encode_server_message(ResponseAudioPause("r")))
        async for frame in ws:
            message = decode_client_frame(frame if isinstance(frame, bytes) else frame.encode())
            if isinstance(message, OutputAudioPlayed):
                reports.append(message)
                paused_reported.set()
                break
        await asyncio.sleep(0.3)  # paused: the clock must not move
        resume_sent_at.append(time.monotonic())
        await ws.send(encode_server_message(ResponseAudioResume("r")))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await VoiceForgeClient.connect(f"ws://127.0.0.1:{port}")
        clients.append(client)
        async with client:
            await asyncio.wait_for(paused_reported.wait(), 10)
            played_at_pause = reports[0].played_ms
            assert 150.0 <= played_at_pause <= 1000.0
            assert client.playback.is_paused("r")
            while True:
                event = await client.next_event(10)
                if isinstance(event, ResponseAudioResume):
                    break
            assert not client.playback.is_paused("r")
            # Resumed from the paused position, not from where the wall clock got to:
            # since the resume was sent, the clock moved at most as much as the wall
            # clock did (the 0.3 s paused before it do not count).
            now = time.monotonic()
            resumed_at = client.playback.played_ms("r", now)
            assert played_at_pause <= resumed_at
            assert resumed_at <= played_at_pause + (now - resume_sent_at[0]) * 1000.0
    assert len(reports) == 1 and reports[0].response_id == "r"
