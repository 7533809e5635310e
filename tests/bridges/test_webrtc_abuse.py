"""Hostile WebRTC callers against a real server: real aiortc peers in the test's event
loop, ``POST /webrtc/offer`` over HTTP, the server in its own thread.

The engines are the scripted ``bench`` ones with the real Silero VAD: what is
tested is the transport, not speech.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from agent import intake, webrtc
from agent.config import Settings
from agent.webrtc import WebRTCSession
from loadtest.harness import bench_engines
from pipeline.engines.bench import ScriptedLLM
from tests.e2e.conftest import RunningServer
from tests.faults.support import serving, wait_until

until = wait_until
"""A condition the server reaches by itself, in its own thread, checked every 10 ms."""


class FloodTrack(MediaStreamTrack):
    """A microphone gone wrong, or a hostile peer: frames as fast as they encode."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = self._pts
        self._pts += 960
        await asyncio.sleep(0)
        return frame


class MuteTrack(MediaStreamTrack):
    """A microphone that never delivers a frame: the call carries no media."""

    kind = "audio"

    async def recv(self) -> av.AudioFrame:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Peer:
    """The caller's side: one peer connection, its ``events`` channel, its events."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel = self.pc.createDataChannel("events")
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda data: self.events.put_nowait(json.loads(data)))

    async def offer_sdp(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def connect(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )
        async with asyncio.timeout(30):
            await self.opened.wait()

    async def next_event(self, kind: str, within_s: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                event = await self.events.get()
                if event["type"] == kind:
                    return event

    def send(self, message: object) -> None:
        self.channel.send(message if isinstance(message, str) else json.dumps(message))


async def post_offer(server: RunningServer, sdp: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        return await http.post("/webrtc/offer", json={"sdp": sdp, "type": "offer"}, **kwargs)


@asynccontextmanager
async def peers(count: int = 1) -> AsyncIterator[list[Peer]]:
    made = [Peer() for _ in range(count)]
    try:
        yield made
    finally:
        await asyncio.gather(*(peer.pc.close() for peer in made))


async def call(server: RunningServer, peer: Peer) -> WebRTCSession:
    """Offer, answer, connect; the server's side of the call."""
    reply = await post_offer(server, await peer.offer_sdp())
    assert reply.status_code == 200, reply.text
    await peer.connect(reply.json())
    await peer.next_event("session.created")
    (session,) = [s for s in server.app_state.bridge_sessions if isinstance(s, WebRTCSession)]
    return session


def media_sections(sdp: str) -> list[str]:
    return ["m=" + part for part in sdp.split("\nm=")[1:]]


def only_codec(sdp: str, name: str) -> str:
    """The offer with its audio line reduced to one codec (``G722``, say)."""
    keep = re.findall(rf"a=rtpmap:(\d+) {name}/", sdp)
    assert keep, sdp
    out = []
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            line = " ".join(line.split(" ")[:3] + keep)
        elif (pt := re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", line)) and pt[1] not in keep:
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


# ------------------------------------------------------- slots and offer bodies


async def test_concurrent_offers_cannot_exceed_the_session_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webrtc, "CONNECT_TIMEOUT_S", 1.0)  # the answers are never used
    with serving(Settings(max_sessions=2), bench_engines()) as server:
        async with peers(5) as callers:
            for peer in callers:
                peer.pc.addTrack(AudioStreamTrack())
            sdps = [await peer.offer_sdp() for peer in callers]
            replies = await asyncio.gather(*(post_offer(server, sdp) for sdp in sdps))
            codes = sorted(reply.status_code for reply in replies)
            assert codes == [200, 200, 503, 503, 503], [r.text for r in replies]
            assert server.app_state.open_calls() == 2
            assert len(server.app_state.bridge_sessions) == 2
        await until(lambda: not server.app_state.slots, 30, "every slot given back")


class TrickledBody:
    """An offer body that sends its first bytes, then stalls until released."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"sdp": "v=0'
        self.stalled.set()
        await self.release.wait()
        yield b'", "type": "offer"}'


async def test_a_trickled_offer_body_holds_its_slot_then_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serving(Settings(max_sessions=1), bench_engines()) as server:
        state = server.app_state
        async with peers() as (peer,), httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            peer.pc.addTrack(AudioStreamTrack())
            sdp = await peer.offer_sdp()
            # While the body trickles, the caller holds its slot: no other call fits.
            monkeypatch.setattr(webrtc, "OFFER_READ_TIMEOUT_S", 60.0)
            body = TrickledBody()
            slow = asyncio.create_task(http.post("/webrtc/offer", content=body))
            await body.stalled.wait()
            await until(lambda: state.open_calls() == 1, 10, "the slot is reserved")
            refused = await post_offer(server, sdp)
            assert refused.status_code == 503 and refused.json()["error"] == "max_sessions"
            body.release.set()
            assert (await asyncio.wait_for(slow, 20)).status_code == 400  # "v=0" is no SDP
            assert state.open_calls() == 0
            # A body that never completes is not waited for: the server gives up.
            monkeypatch.setattr(webrtc, "OFFER_READ_TIMEOUT_S", 0.5)
            reading = threading.Event()  # set on the server's thread
            read_body = intake.read_body

            async def watched(request: Any, **limits: float) -> bytes:
                assert state.open_calls() == 1  # admitted: the slot is taken first
                reading.set()
                return await read_body(request, max_bytes=int(limits["max_bytes"]),
                                       timeout_s=limits["timeout_s"])

            monkeypatch.setattr(intake, "read_body", watched)
            body = TrickledBody()
            slow = asyncio.create_task(http.post("/webrtc/offer", content=body))
            await until(reading.is_set, 10, "the server reads the body")
            await until(lambda: state.open_calls() == 0, 20, "the slot given back")
            body.release.set()  # httpx reads the answer once its body is out
            assert (await asyncio.wait_for(slow, 20)).status_code == 408


async def test_an_oversized_offer_body_is_refused_unread() -> None:
    with serving(Settings(), bench_engines()) as server:
        async def endless() -> AsyncIterator[bytes]:
            for _ in range(100):  # 6.4 MiB, a hundred times the limit
                yield b" " * 65536

        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            reply = await http.post("/webrtc/offer", content=endless())
        assert reply.status_code == 413
        assert server.app_state.open_calls() == 0


# ------------------------------------------------------------- media lines


async def test_video_and_a_second_audio_line_are_answered_inactive() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            peer.pc.addTrack(AudioStreamTrack())
            peer.pc.addTrack(VideoStreamTrack())
            reply = await post_offer(server, await peer.offer_sdp())
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            sections = media_sections(answer["sdp"])
            kinds = [section.split(" ", 1)[0] for section in sections]
            assert kinds == ["m=audio", "m=audio", "m=video", "m=application"]
            first, second, video = sections[:3]
            assert "a=sendrecv" in first
            assert "a=inactive" in second and "a=inactive" in video
            codecs = set(re.findall(r"a=rtpmap:\d+ ([\w-]+)/", first))
            assert codecs <= {"opus", "PCMU", "PCMA"} and "opus" in codecs, codecs
            await peer.connect(answer)
            await peer.next_event("session.created")
            (session,) = server.app_state.bridge_sessions
            assert isinstance(session, WebRTCSession)
            # The caller sends video frames; the server receives none of them.
            directions = [t.currentDirection for t in session.pc.getTransceivers()]
            assert directions == ["sendrecv", "inactive", "inactive"]
        await until(lambda: not server.app_state.slots, 30, "the call ended")


async def test_an_offer_without_a_common_audio_codec_is_refused_and_leaves_nothing() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            reply = await post_offer(server, only_codec(await peer.offer_sdp(), "G722"))
        assert reply.status_code == 400, reply.text
        assert not server.app_state.slots and not server.app_state.bridge_sessions


async def test_a_media_flood_closes_the_call() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(FloodTrack())
            await call(server, peer)
            error = await peer.next_event("error", within_s=30)
            assert error["code"] == "too_many_frames" and error["fatal"] is True
            await until(lambda: not server.app_state.slots, 30, "the flooding call ended")
        assert not server.app_state.bridge_sessions


async def test_a_call_whose_media_stops_is_hung_up() -> None:
    with serving(Settings(idle_timeout_s=1.0), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(MuteTrack())
            started = time.monotonic()
            await call(server, peer)
            await until(lambda: not server.app_state.slots, 30, "the silent call ended")
            assert time.monotonic() - started >= 1.0


# ------------------------------------------------------------- data channel


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 100_000,  # RecursionError in json
        '{"type": "conversation.text", "text": 100000000000000000000000000}',  # OverflowError
        "x" * 60_000,
    ],
)
async def test_a_hostile_data_channel_message_is_an_error_and_the_call_goes_on(
    hostile: str,
) -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            await call(server, peer)
            peer.send(hostile)
            error = await peer.next_event("error")
            assert error["code"] in {"malformed_frame", "frame_too_large"}, error
            assert error["fatal"] is False
            peer.send({"type": "conversation.text", "text": "Hello there."})
            done = await peer.next_event("response.done")
            assert done["status"] == "completed"


# ------------------------------------------------------------- lifecycle


async def test_a_close_that_fails_still_gives_the_slot_back() -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            session = await call(server, peer)

            stop_conversation = session.conversation.close

            async def broken_close() -> None:
                await stop_conversation()
                raise RuntimeError("engine worker gone")  # after its tasks are stopped

            session.conversation.close = broken_close  # type: ignore[method-assign]
            await peer.pc.close()  # the caller hangs up
            await until(lambda: not server.app_state.slots, 30, "the slot given back")
        assert not server.app_state.bridge_sessions


async def test_a_draining_server_starts_no_new_reply_on_a_bridge_call() -> None:
    story = " ".join(["Once upon a time there was a dragon who baked bread."] * 8)
    llm = ScriptedLLM(story, tokens_per_second=400.0, first_token_ms=5.0)
    running = serving(Settings(drain_timeout_s=20.0), bench_engines(llm=llm))
    server = running.__enter__()
    stopping: asyncio.Task[object] | None = None
    try:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            session = await call(server, peer)
            peer.send({"type": "conversation.text", "text": "Tell me a story."})
            created = await peer.next_event("response.created")
            # Stop the server (what SIGTERM does) while the reply plays: the drain
            # lets it finish, and no new turn may start meanwhile.
            stopping = asyncio.create_task(
                asyncio.to_thread(running.__exit__, None, None, None)
            )
            await until(lambda: not session.conversation.accepting_turns, 10, "turns refused")
            peer.send({"type": "conversation.text", "text": "And another one."})
            ignored = await peer.next_event("input_audio.turn_ignored")
            assert ignored["reason"] == "server_shutting_down"
            done = await peer.next_event("response.done", within_s=30)
            assert done["response_id"] == created["response_id"]
            assert done["status"] == "completed"
    finally:
        if stopping is None:
            running.__exit__(None, None, None)
        else:
            await asyncio.wait_for(stopping, 60)
