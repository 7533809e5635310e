"""Two aiortc peers, one event loop: a caller against the real embedded server.

The caller's track sends espeak-ng speech in 20 ms frames at real-time pace; the
agent's reply comes back through the remote track and its events on the data
channel. The server runs in its own thread (tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from agent.webrtc import WebRTCSession
from tests.bridges.conftest import LOUD, rms
from tests.e2e.conftest import RunningServer
from tests.speech import silence, speak

pytestmark = pytest.mark.e2e

RATE = 48000
FRAME = RATE // 50


class SpeechTrack(MediaStreamTrack):
    """A microphone: queued speech, then silence, 20 ms frames in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._start: float | None = None
        self._pts = 0
        self.speech_ended_at: float | None = None

    def say(self, audio: np.ndarray) -> None:
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        for offset in range(0, len(pcm), FRAME):
            piece = pcm[offset : offset + FRAME]
            self._queue.append(np.pad(piece, (0, FRAME - len(piece))))
        self.speech_ended_at = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        if self._queue:
            samples = self._queue.popleft()
            if not self._queue:
                self.speech_ended_at = time.monotonic()
        else:
            samples = np.zeros(FRAME, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


@dataclass
class Caller:
    pc: RTCPeerConnection
    mic: SpeechTrack
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    heard: list[tuple[float, float]] = field(default_factory=list)
    """(arrival time, RMS) of each 20 ms frame received."""
    marks: dict[str, int] = field(default_factory=dict)
    """Event type → number of frames received when it (last) arrived."""
    arrivals: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    """Every event, with the number of frames received when it arrived."""
    reader: asyncio.Task[None] | None = None

    async def next_event(self, kind: str, within_s: float = 90.0) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                event = await self.events.get()
                if event["type"] == kind:
                    return event

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    async def heard_until(self, enough: Callable[[], bool], within_s: float) -> None:
        """Wait, frame by frame, until ``enough()`` holds."""
        async with asyncio.timeout(within_s):
            while not enough():
                self.frame_arrived.clear()
                await self.frame_arrived.wait()

    channel: Any = None
    frame_arrived: asyncio.Event = field(default_factory=asyncio.Event)


async def _read(track: MediaStreamTrack, caller: Caller) -> None:
    try:
        while True:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)
            samples = frame.to_ndarray().astype(np.float32) / 32768.0
            caller.heard.append((time.monotonic(), rms(samples)))
            caller.frame_arrived.set()
    except MediaStreamError:
        return


@pytest.fixture
async def caller(bridge_server: RunningServer) -> AsyncIterator[Caller]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = SpeechTrack()
    call = Caller(pc, mic)
    channel = pc.createDataChannel("events")
    call.channel = channel

    @channel.on("message")
    def on_message(data: str) -> None:
        event = json.loads(data)
        call.marks[event["type"]] = len(call.heard)
        call.arrivals.append((event, len(call.heard)))
        call.events.put_nowait(event)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        call.reader = asyncio.create_task(_read(track, call))

    pc.addTrack(mic)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=bridge_server.http, timeout=30) as http:
        reply = await http.post(
            "/webrtc/offer",
            # No echo_cancelled: the guard stays on, as for a gateway without
            # cancellation, and the caller must still be able to barge in over it.
            json={"sdp": pc.localDescription.sdp, "type": "offer"},
        )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    created = await call.next_event("session.created", within_s=30)
    assert created["session_id"] == answer["session_id"]
    try:
        yield call
    finally:
        await pc.close()
        if call.reader is not None:
            await asyncio.gather(call.reader, return_exceptions=True)
        # The server notices the hang-up and ends the call: nothing left running.
        for _ in range(300):
            if not bridge_server.app_state.bridge_sessions:
                break
            await asyncio.sleep(0.1)
        assert not bridge_server.app_state.bridge_sessions


def loud_ms(heard: list[tuple[float, float]]) -> float:
    return 20.0 * sum(1 for _, level in heard if level > LOUD)


async def test_a_spoken_question_is_answered_through_the_tracks(
    caller: Caller, bridge_server: RunningServer
) -> None:
    caller.mic.say(speak("What is the capital of France?", RATE))
    final = await caller.next_event("transcript.final")
    assert "france" in final["text"].lower()
    created = await caller.next_event("response.created")
    done = await caller.next_event("response.done")
    assert done["response_id"] == created["response_id"]
    assert done["status"] == "completed", done
    assert "paris" in done["text"].lower()
    reply = caller.heard[caller.marks["response.created"] :]
    # Most of the generated audio came through the remote track, and it is speech.
    assert loud_ms(reply) > 0.5 * done["audio_ms"]
    assert max(level for _, level in reply) > 0.05
    assert done["played_ms"] == pytest.approx(done["audio_ms"], abs=1.0)
    speech_end = caller.mic.speech_ended_at
    assert speech_end is not None
    first_heard = next(t for t, level in caller.heard if t > speech_end and level > LOUD)
    async with httpx.AsyncClient(base_url=bridge_server.http) as http:
        metrics = (await http.get("/metrics")).text
    assert 'voiceforge_responses_total{status="completed"}' in metrics
    assert "voiceforge_sessions_active 1.0" in metrics
    server_ms = done["timings"]["end_of_speech_to_first_audio_ms"]
    caller_ms = (first_heard - speech_end) * 1000
    print(
        f"\nwebrtc end of speech -> first audio: server {server_ms:.0f} ms; caller (last "
        f"speech frame sent -> first reply frame heard) {caller_ms:.0f} ms"
    )


def _only_session(server: RunningServer) -> WebRTCSession:
    (session,) = [call for call in server.app_state.bridge_sessions
                  if isinstance(call, WebRTCSession)]
    return session


@dataclass
class TrackRecord:
    """The server's own count of frames sent when the track paused, resumed or
    cleared a response: the caller's frames from that index on left the server
    after it. (When the event arrives on the data channel says nothing: it races
    the media.)"""

    cuts: dict[str, list[int]] = field(default_factory=dict)
    paused_at_ms: list[float] = field(default_factory=list)
    """What the track had sent of the response when it paused it."""


def record_track(session: WebRTCSession) -> TrackRecord:
    record = TrackRecord()
    track = session.track
    pause, resume, clear = track.pause, track.resume, track.clear

    def cut(kind: str) -> None:
        record.cuts.setdefault(kind, []).append(track.frames_sent)

    def paused(response_id: str) -> float:
        cut("pause")
        sent = pause(response_id)
        record.paused_at_ms.append(sent)
        return sent

    def resumed(response_id: str) -> None:
        cut("resume")
        resume(response_id)

    def cleared(response_id: str) -> float:
        cut("clear")
        return clear(response_id)

    track.pause = paused  # type: ignore[method-assign]
    track.resume = resumed  # type: ignore[method-assign]
    track.clear = cleared  # type: ignore[method-assign]
    return record


def loud_frames(heard: list[tuple[float, float]]) -> list[int]:
    return [i for i, (_, level) in enumerate(heard) if level > LOUD]


STORY = "Tell me a long story about a dragon who learns to bake bread."
BACKCHANNEL = "Okay."
"""Whisper tiny writes espeak-ng's "Mm-hmm." as "Mm-mm", but at times, over the
codec, as words ("and then", once words it took for an interruption); the bridge
is under test here, not the classifier, so the backchannel is one it always reads."""


async def test_mm_hmm_over_a_reply_pauses_it_and_resumes_it(
    caller: Caller, bridge_server: RunningServer
) -> None:
    session = _only_session(bridge_server)
    assert session.conversation.config.playback_pause
    record = record_track(session)
    caller.send({"type": "conversation.text", "text": STORY})
    created = await caller.next_event("response.created")
    start = caller.marks["response.created"]
    await caller.heard_until(lambda: loud_ms(caller.heard[start:]) >= 600, within_s=90)
    caller.mic.say(np.concatenate([speak(BACKCHANNEL, RATE), silence(0.2, RATE)]))
    paused = await caller.next_event("response.audio.pause")
    resumed = await caller.next_event("response.audio.resume")
    assert paused["response_id"] == resumed["response_id"] == created["response_id"]
    done = await caller.next_event("response.done", within_s=180)
    assert done["response_id"] == created["response_id"]
    assert done["status"] == "completed", done
    assert done["text_heard"] == done["text"].strip()
    assert done["played_ms"] == pytest.approx(done["audio_ms"], abs=1.0)
    assert "response.audio.clear" not in caller.marks
    messages = session.conversation.history.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == done["text"].strip()
    (pause_cut,) = record.cuts["pause"]
    (resume_cut,) = record.cuts["resume"]
    assert pause_cut < resume_cut
    # Silence at the caller's ear from the pause to the resume (Opus carries the
    # end of the last frame before the pause into the next decoded one), then the
    # reply again: what was queued was kept, not dropped.
    await caller.heard_until(lambda: len(caller.heard) >= resume_cut + 50, within_s=30)
    assert not [i for i in loud_frames(caller.heard) if pause_cut + 1 < i < resume_cut]
    assert loud_ms(caller.heard[resume_cut:]) >= 200
    # At the pause the server learnt what had been sent; the rest came after.
    (at_pause,) = record.paused_at_ms
    assert 0 < at_pause < done["audio_ms"]


async def test_barge_in_pauses_then_cancels_the_reply(
    caller: Caller, bridge_server: RunningServer
) -> None:
    session = _only_session(bridge_server)
    record = record_track(session)
    caller.send({"type": "conversation.text", "text": STORY})
    created = await caller.next_event("response.created")
    start = caller.marks["response.created"]
    await caller.heard_until(lambda: loud_ms(caller.heard[start:]) >= 600, within_s=90)
    caller.mic.say(speak("Stop please, wait a moment, I have another question.", RATE))
    paused = await caller.next_event("response.audio.pause")
    assert paused["response_id"] == created["response_id"]
    cleared = await caller.next_event("response.audio.clear")
    assert cleared["response_id"] == created["response_id"]
    done = await caller.next_event("response.done")
    assert done["status"] == "cancelled" and done["reason"] == "barge_in", done
    # When the server's loop stalls on a loaded machine, aiortc's jitter buffer
    # drops the caller's packets: the first sound of the interruption can then
    # reach the VAD as a blip, judged noise (turn_ignored
    # short_speech_during_response), and the reply resumes until the words come.
    # A resume for any other reason is a failure.
    kinds = [(event["type"], event.get("reason")) for event, _ in caller.arrivals]
    blips = kinds.count(("input_audio.turn_ignored", "short_speech_during_response"))
    resumes = kinds.count(("response.audio.resume", None))
    assert resumes <= blips, kinds
    assert len(record.paused_at_ms) == resumes + 1, (record.paused_at_ms, kinds)
    assert done["timings"]["played_source_client"] == 1.0
    # Heard is what the track had sent when it (last) paused; history keeps that.
    at_pause = record.paused_at_ms[-1]
    assert done["played_ms"] == pytest.approx(at_pause, abs=0.01)
    assert 0 < done["played_ms"] <= done["audio_ms"]
    assert done["text_heard"] and done["text"].startswith(done["text_heard"].rstrip(". "))
    messages = session.conversation.history.messages()
    assert {"role": "assistant", "content": done["text_heard"]} in messages
    pause_cut = record.cuts["pause"][-1]
    (clear_cut,) = record.cuts["clear"]
    assert pause_cut <= clear_cut
    # Nothing of the reply after the pause (one frame of Opus delay aside), and so
    # none after its clear, until the reply to the interruption begins: the window
    # ends at its response.created, which the server sends before any of its audio
    # (a reply held ready during the end-of-turn silence plays at once, so a fixed
    # span after the clear may already hold it), or 40 frames after the clear.
    await caller.heard_until(lambda: len(caller.heard) >= clear_cut + 41, within_s=30)
    next_reply = [
        frames for event, frames in caller.arrivals
        if event["type"] == "response.created" and event["response_id"] != created["response_id"]
    ]
    window_end = min([clear_cut + 41, *next_reply[:1]])
    # The reply to the interruption comes after its end of turn, long after the pause.
    assert window_end > pause_cut + 25
    assert not [i for i in loud_frames(caller.heard) if pause_cut + 1 < i < window_end]
