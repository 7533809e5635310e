"""A scripted provider on the Twilio Media Streams WebSocket, against the real server.

The fake provider does what Twilio does: it streams the caller's µ-law audio in
20 ms ``media`` messages at real-time pace, plays the reply media in real time
(160 samples every 20 ms across message boundaries, on a fixed grid:
tests/bridges/twilio_line.py), acknowledges each ``mark`` once the audio before it
has played, and on ``clear`` drops what it has not played and returns the pending
marks at once. It has no pause: the server pauses a reply with a ``clear`` and
resumes it by sending the unacknowledged audio again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from agent.telephony import TelephonySession, mark_name, read_mark
from pipeline import mulaw
from pipeline.marked_playback import MarkedPlayback
from tests.bridges.conftest import LOUD, rms
from tests.bridges.twilio_line import FRAME, RATE, LinePlayout, LineSchedule
from tests.e2e.conftest import RunningServer
from tests.speech import silence, speak

pytestmark = pytest.mark.e2e

ECHO_LATE_S = 0.2
"""Echo more than this behind the playback it comes from is not sent back (a third
of the echo guard's 600 ms tail, which also has to cover the server's delays)."""
STREAM_SID = "MZ00000000000000000000000000000001"


@dataclass
class Provider:
    ws: ClientConnection
    speech: deque[bytes] = field(default_factory=deque)
    speech_ended_at: float | None = None
    playback: LinePlayout = field(default_factory=LinePlayout)
    """The reply media and marks received, unplayed."""
    played: list[tuple[float, float]] = field(default_factory=list)
    """(time, RMS) of each 20 ms of reply played."""
    acked: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    echo_gain: float = 0.0
    """> 0: the line echoes what it plays back into the microphone, this much quieter,
    at the next 20 ms frame."""
    echo: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    """(when it was due to play, echo) of each 20 ms played, not yet sent back."""
    echo_not_sent: int = 0
    """Echo frames that could not go back in time: see ``ECHO_LATE_S``."""

    def say(self, audio: np.ndarray) -> None:
        payload = mulaw.encode_float(audio)
        for offset in range(0, len(payload), FRAME):
            self.speech.append(payload[offset : offset + FRAME].ljust(FRAME, b"\xff"))

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def until(self, enough: Callable[[], bool], within_s: float) -> None:
        async with asyncio.timeout(within_s):
            while not enough():
                self.changed.clear()
                await self.changed.wait()

    async def microphone(self) -> None:
        """20 ms of µ-law every 20 ms: the queued speech, else silence."""
        schedule = LineSchedule(time.monotonic())
        for chunk in range(30_000):  # 10 minutes at most
            if self.speech:
                payload = self.speech.popleft()
                if not self.speech:
                    self.speech_ended_at = time.monotonic()
            else:
                payload = self._echo_due() or b"\xff" * FRAME  # else µ-law silence
            await self.send(
                {
                    "event": "media",
                    "streamSid": STREAM_SID,
                    "media": {
                        "track": "inbound",
                        "chunk": str(chunk + 1),
                        "timestamp": str(chunk * 20),
                        "payload": base64.b64encode(payload).decode(),
                    },
                }
            )
            await asyncio.sleep(schedule.wait_s(chunk + 1, time.monotonic()))

    def _echo_due(self) -> bytes | None:
        """The echo to send now; echo that became late while this test's own loop
        was held up (two shared cores) is not sent: a line echoes after a fixed
        delay, never after a stall, and echo later than the guard's tail is not
        the echo the guard is built for."""
        now = time.monotonic()
        while self.echo:
            due, audio = self.echo.popleft()
            if now - due <= ECHO_LATE_S:
                return mulaw.encode_float(audio)
            self.echo_not_sent += 1
        return None

    async def listener(self) -> None:
        async for text in self.ws:
            message = json.loads(text)
            self.received.append(message)
            assert message["streamSid"] == STREAM_SID
            if message["event"] == "media":
                payload = base64.b64decode(message["media"]["payload"])
                self.playback.add_media(mulaw.decode_float(payload))
            elif message["event"] == "mark":
                self.playback.add_mark(message["mark"]["name"])
            elif message["event"] == "clear":
                for name in self.playback.clear():
                    await self.ack(name)
            self.changed.set()

    async def ack(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": name}})

    async def speaker(self) -> None:
        """Play the reply in real time, 20 ms at a time; acknowledge marks when reached."""
        schedule = LineSchedule(time.monotonic())
        reached: list[str] = []
        for tick in range(30_000):
            due = schedule.due(tick)
            # The audio before these has now played (marks that came in after it too).
            for name in [*reached, *self.playback.take(0)[1]]:
                self.acked.append(name)
                await self.ack(name)
            piece, reached = self.playback.take(FRAME)
            if len(piece):
                self.played.append((time.monotonic(), rms(piece)))
                if self.echo_gain > 0:
                    echo = self.echo_gain * np.pad(piece, (0, FRAME - len(piece)))
                    self.echo.append((due, echo))
            self.changed.set()  # a tick: state on the server side may have moved too
            await asyncio.sleep(schedule.wait_s(tick + 1, time.monotonic()))


async def start_call(call: Provider, parameters: dict[str, str] | None = None) -> None:
    """Open the stream as Twilio does (``connected``, then ``start``: call CA0 of account
    AC0, with the TwiML's ``<Parameter>`` values), then run the line: microphone,
    listener, speaker."""
    await call.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    await call.send(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC0",
                "streamSid": STREAM_SID,
                "callSid": "CA0",
                "tracks": ["inbound"],
                "customParameters": parameters or {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": STREAM_SID,
        }
    )
    call.tasks = [
        asyncio.create_task(call.microphone()),
        asyncio.create_task(call.listener()),
        asyncio.create_task(call.speaker()),
    ]


async def until_hung_up(call: Provider, within_s: float = 60.0) -> None:
    """Wait for the server to close the stream, then stop the line's tasks."""
    try:
        await asyncio.wait_for(call.ws.wait_closed(), within_s)
    finally:
        for task in call.tasks:
            task.cancel()
        await asyncio.gather(*call.tasks, return_exceptions=True)


@pytest.fixture
async def provider(bridge_server: RunningServer) -> AsyncIterator[Provider]:
    url = bridge_server.url.replace("/ws", "/telephony/twilio")
    async with connect(url) as ws:
        call = Provider(ws)
        await start_call(call)
        try:
            yield call
        finally:
            await call.send({"event": "stop", "streamSid": STREAM_SID, "stop": {}})
            for task in call.tasks:
                task.cancel()
            await asyncio.gather(*call.tasks, return_exceptions=True)
    for _ in range(300):
        if not bridge_server.app_state.bridge_sessions:
            break
        await asyncio.sleep(0.1)
    assert not bridge_server.app_state.bridge_sessions


def session_of(server: RunningServer) -> TelephonySession:
    (session,) = [s for s in server.app_state.bridge_sessions if isinstance(s, TelephonySession)]
    return session


def loud_ms(played: list[tuple[float, float]]) -> float:
    return 20.0 * sum(1 for _, level in played if level > LOUD)


async def test_a_phone_call_is_answered_and_marks_report_what_was_heard(
    provider: Provider, bridge_server: RunningServer
) -> None:
    provider.say(speak("What is the capital of France?", RATE))
    await provider.until(lambda: loud_ms(provider.played) >= 500, within_s=120)
    speech_end = provider.speech_ended_at
    assert speech_end is not None
    first_heard = next(t for t, level in provider.played if t > speech_end and level > LOUD)
    session = session_of(bridge_server)
    await provider.until(lambda: bool(session.finished), within_s=120)
    (done,) = session.finished
    assert done.status.value == "completed"
    assert "paris" in done.text.lower()
    # Every mark came back, in order, and the last one covers all the audio sent.
    ours = [read_mark(name) for name in provider.acked]
    assert all(mark is not None and mark[0] == done.response_id for mark in ours)
    positions = [mark[1] for mark in ours if mark is not None]
    assert positions == sorted(positions)
    assert positions[-1] == pytest.approx(done.audio_ms, abs=0.2)
    assert done.played_ms == pytest.approx(done.audio_ms, abs=1.0)
    media = [m for m in provider.received if m["event"] == "media"]
    assert sum(len(base64.b64decode(m["media"]["payload"])) for m in media) == pytest.approx(
        done.audio_ms * 8, abs=len(media)
    )
    print(
        f"\ntelephony end of speech -> first audio: server "
        f"{done.timings['end_of_speech_to_first_audio_ms']:.0f} ms; provider (last speech "
        f"frame sent -> first reply audio played) {(first_heard - speech_end) * 1000:.0f} ms"
    )


@dataclass
class LedgerRecord:
    """The server's own record of the marks it took as heard, and of its pauses
    and resumes: an ack the provider sent just before it got a clear may still be
    on the way, so the provider's lists cannot say where history must be cut."""

    accepted: list[str] = field(default_factory=list)
    paused: list[tuple[str, float]] = field(default_factory=list)
    """(response id, ms heard) at each pause."""
    resumed_at: list[float] = field(default_factory=list)


def record_ledger(session: TelephonySession) -> LedgerRecord:
    record = LedgerRecord()
    ledger: MarkedPlayback = session.marks
    acknowledge, pause, resume = ledger.acknowledge, ledger.pause, ledger.resume

    def acknowledged(name: str) -> tuple[str, float] | None:
        heard = acknowledge(name)
        if heard is not None:
            record.accepted.append(name)
        return heard

    def paused(response_id: str) -> float:
        heard = pause(response_id)
        record.paused.append((response_id, heard))
        return heard

    def resumed(response_id: str) -> Any:
        record.resumed_at.append(time.monotonic())
        return resume(response_id)

    ledger.acknowledge = acknowledged  # type: ignore[method-assign]
    ledger.pause = paused  # type: ignore[method-assign]
    ledger.resume = resumed  # type: ignore[method-assign]
    return record


STORY = "Tell me a long story about a dragon who learns to bake bread."
BACKCHANNEL = "Okay."
"""Whisper tiny writes espeak-ng's "Mm-hmm." as "Mm-mm", but at times, over the
codec, as words ("and then", once words it took for an interruption); the bridge
is under test here, not the classifier, so the backchannel is one it always reads."""


def _clears(provider: Provider) -> list[int]:
    return [i for i, m in enumerate(provider.received) if m["event"] == "clear"]


async def test_mm_hmm_over_a_reply_clears_the_line_then_resends_the_unheard_audio(
    provider: Provider, bridge_server: RunningServer
) -> None:
    await provider.until(lambda: _has_call(bridge_server), within_s=30)
    session = session_of(bridge_server)
    assert session.conversation.config.playback_pause
    record = record_ledger(session)
    provider.say(speak(STORY, RATE))
    await provider.until(lambda: loud_ms(provider.played) >= 800, within_s=120)
    provider.say(np.concatenate([speak(BACKCHANNEL, RATE), silence(0.2, RATE)]))
    await provider.until(lambda: bool(record.resumed_at), within_s=60)
    await provider.until(lambda: bool(session.finished), within_s=180)
    (done,) = session.finished
    assert done.status.value == "completed", (done.reason, done.text_heard)
    assert done.text_heard == done.text.strip()
    assert done.played_ms == pytest.approx(done.audio_ms, abs=1.0)
    messages = session.conversation.history.messages()
    assert messages[-1] == {"role": "assistant", "content": done.text.strip()}
    # One clear: the pause. Nothing of the reply was dropped for good.
    ((rid, heard_at_pause),) = record.paused
    assert rid == done.response_id
    end = mark_name(done.response_id, done.audio_ms, 1)
    # The server may call the reply done on its clock: wait for the provider to
    # have received the end of it.
    await provider.until(
        lambda: any(m["event"] == "mark" and m["mark"]["name"] == end for m in provider.received),
        within_s=30,
    )
    (clear_at,) = _clears(provider)
    after = provider.received[clear_at + 1 :]
    # From the last acknowledged mark on, everything is sent again, under fresh
    # names, and nothing the provider had acknowledged is sent twice.
    resent = [m["mark"]["name"] for m in after if m["event"] == "mark"]
    assert resent and all(name.endswith("/1") for name in resent)
    positions = [mark[1] for mark in map(read_mark, resent) if mark is not None]
    assert positions == sorted(positions) and positions[0] > heard_at_pause
    assert resent[-1] == end
    media = [base64.b64decode(m["media"]["payload"]) for m in after if m["event"] == "media"]
    assert sum(map(len, media)) == pytest.approx(
        (done.audio_ms - heard_at_pause) * 8, abs=len(media)
    )
    # The caller hears the reply again after the resume, to its end.
    (resumed_at,) = record.resumed_at
    await provider.until(lambda: end in provider.acked, within_s=120)
    assert loud_ms([p for p in provider.played if p[0] > resumed_at]) >= 200


async def test_barge_in_pauses_then_clears_and_history_keeps_the_acknowledged_audio(
    provider: Provider, bridge_server: RunningServer
) -> None:
    await provider.until(lambda: _has_call(bridge_server), within_s=30)
    session = session_of(bridge_server)
    record = record_ledger(session)
    provider.say(speak(STORY, RATE))
    await provider.until(lambda: loud_ms(provider.played) >= 800, within_s=120)
    provider.say(speak("Stop please, wait a moment, I have another question.", RATE))
    await provider.until(lambda: len(_clears(provider)) >= 2, within_s=60)
    await provider.until(lambda: bool(session.finished), within_s=30)
    done = session.finished[0]
    assert done.status.value == "cancelled" and done.reason == "barge_in"
    # Paused first (a clear on the line), never resumed, then cancelled (a clear).
    ((rid, heard_at_pause),) = record.paused
    assert rid == done.response_id and not record.resumed_at
    # History keeps what the provider acknowledged before the pause, exactly.
    heard = [name for name in record.accepted if name.startswith(done.response_id)]
    assert heard
    last = read_mark(heard[-1])
    assert last is not None
    assert done.played_ms == pytest.approx(last[1], abs=0.2)
    assert done.played_ms == pytest.approx(heard_at_pause, abs=0.2)
    assert heard[-1] in provider.acked  # a mark the provider played, not one it returned
    # Under load generation may lag playback, so all audio sent may have been heard.
    assert 0 < done.played_ms <= done.audio_ms
    assert done.timings["played_source_client"] == 1.0
    assert done.text_heard and len(done.text_heard) <= len(done.text)
    messages = session.conversation.history.messages()
    assert {"role": "assistant", "content": done.text_heard} in messages
    # Nothing of the paused, then cancelled, response is sent after the pause
    # (each piece of media we send is followed by its mark).
    paused_at = _clears(provider)[0]
    later_marks = [
        m["mark"]["name"] for m in provider.received[paused_at:] if m["event"] == "mark"
    ]
    assert not [name for name in later_marks if name.startswith(done.response_id)]


def _has_call(server: RunningServer) -> bool:
    return any(isinstance(s, TelephonySession) for s in server.app_state.bridge_sessions)


async def test_the_agent_does_not_interrupt_itself_on_the_line_echo(
    provider: Provider, bridge_server: RunningServer
) -> None:
    provider.echo_gain = 0.4  # the reply comes back 8 dB down, 20 ms later
    provider.say(speak("Tell me a long story about a dragon who learns to bake bread.", RATE))
    session = session_of(bridge_server)
    await provider.until(lambda: bool(session.finished), within_s=180)
    done = session.finished[0]
    assert done.status.value == "completed", (done.reason, done.text_heard)
    late = f"{provider.echo_not_sent} echo frames not sent back (the test loop was held up)"
    assert not any(m["event"] == "clear" for m in provider.received), late
    assert session.guard is not None and session.guard.suppressed_frames > 50, late
