"""Telephone calls as media streams: ``/telephony/twilio`` (the Twilio Media Streams
convention, which other providers copy).

The provider opens a WebSocket per call and sends JSON text messages: ``connected``,
``start`` (stream id, media format, custom parameters), ``media`` (base64 µ-law,
8 kHz, 20 ms), ``mark`` (a mark we sent has been played), ``dtmf``, ``stop``. We send
``media`` with the reply, a ``mark`` after each piece of it — its acknowledgement
tells what the caller has heard, which is what history keeps after a barge-in —
and ``clear`` to flush the provider's playback buffer on barge-in. The call asks
for pauses (protocol 1.1): the provider has none, so a pause is a ``clear`` while
the unacknowledged audio is kept here, and a resume sends it again from the last
acknowledged mark (pipeline/marked_playback.py).

The message codec is sans-I/O (``parse``, ``media_message``, ...); the endpoint is glue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, replace

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent import bridge, intake
from agent.limits import AudioRateLimiter, FrameRateLimiter, OutboundQueue
from agent.protocol import ServerMessage, shown
from agent.state import AppState, Slot
from agent.transfer import TwilioTransfer
from pipeline import mulaw
from pipeline.audio import pcm16_to_float
from pipeline.conversation import Conversation
from pipeline.echo import EchoGuard
from pipeline.engines.base import FloatAudio
from pipeline.events import (
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseDone,
    SessionEnded,
)
from pipeline.marked_playback import MarkedPlayback, Send, mark_name, read_mark

logger = logging.getLogger("voiceforge.telephony")

SAMPLE_RATE = 8000
API_KEY_PARAMETER = "api_key"
VOICE_PARAMETER = "voice"
"""``<Parameter name="voice">``: one of the server's voices (``GET /v1/voices``) for
this call; an unknown one is logged and the default speaks (a caller on the line
cannot be told)."""
"""Providers cannot set headers: the key may come as a <Parameter> of the stream."""
MAX_MESSAGE_CHARS = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
"""Unauthorized, flooding, too slow to start, or a stream we cannot read."""
CLOSE_TRY_AGAIN_LATER = 1013
FIRST_MESSAGE_TIMEOUT_S = 5.0
"""Twilio sends ``connected`` (or ``start``) as soon as the stream opens."""
START_TIMEOUT_S = 10.0
"""From the accept to ``start``: a stream that never starts gives its slot back."""
MAX_MESSAGES_BEFORE_START = 20
"""Twilio sends ``connected`` then ``start``; a few more are tolerated, not a stream."""
FRAME_RATE = 150.0
"""Messages per second: 50 media, 50 marks and a few others at most (Twilio's 20 ms)."""
FRAME_BURST = 1000.0
"""Messages read at once after the server was busy for a while are not a flood."""
FLOOD_FACTOR = 2.0
"""Twice the rate refused within a second: not a provider, closed."""


# ------------------------------------------------------------------ the codec


class TelephonyProtocolError(ValueError):
    """A provider message we cannot read; the call goes on without it."""


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    encoding: str
    sample_rate: int
    custom_parameters: dict[str, str]
    account_sid: str = ""


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes
    """µ-law bytes."""
    track: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Connected:
    pass


ProviderMessage = Connected | Start | Media | Mark | Dtmf | Stop


def parse(text: str) -> ProviderMessage | None:
    """One provider message; None for events we do not use."""
    try:
        message = json.loads(text)
        event = message["event"]
        if event == "connected":
            return Connected()
        if event == "start":
            start = message["start"]
            media_format = start.get("mediaFormat", {})
            return Start(
                stream_sid=str(message.get("streamSid") or start["streamSid"]),
                call_sid=str(start.get("callSid", "")),
                encoding=str(media_format.get("encoding", "audio/x-mulaw")),
                sample_rate=int(media_format.get("sampleRate", SAMPLE_RATE)),
                custom_parameters={
                    str(k): str(v) for k, v in (start.get("customParameters") or {}).items()
                },
                account_sid=str(start.get("accountSid", "")),
            )
        if event == "media":
            media = message["media"]
            return Media(
                base64.b64decode(media["payload"], validate=True),
                str(media.get("track", "inbound")),
            )
        if event == "mark":
            return Mark(str(message["mark"]["name"]))
        if event == "dtmf":
            return Dtmf(str(message["dtmf"]["digit"]))
        if event == "stop":
            return Stop()
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise TelephonyProtocolError(f"unreadable provider message: {exc!r}") from None
    return None


def media_message(stream_sid: str, payload: bytes) -> str:
    encoded = base64.b64encode(payload).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": encoded}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


# ------------------------------------------------------------------- the call


class TelephonySession:
    def __init__(
        self, websocket: WebSocket, state: AppState, slot: Slot, start: Start
    ) -> None:
        self.ws = websocket
        self.state = state
        self.slot = slot
        self.stream_sid = start.stream_sid
        config = replace(
            state.session_config(),
            input_sample_rate=SAMPLE_RATE,
            output_sample_rate=SAMPLE_RATE,
            playback_pause=True,
        )
        voice = start.custom_parameters.get(VOICE_PARAMETER)
        if voice:
            if voice in state.engines.tts.voices():
                config = replace(config, voice=voice)
            else:
                logger.warning("telephony: the stream asked for unknown voice %s; the "
                               "default speaks", shown(voice))
        self.conversation = Conversation(state.engines, self.emit, config)
        self.started_at = time.monotonic()
        self.last_input_at = self.started_at
        self.guard: EchoGuard | None = bridge.echo_guard(state, SAMPLE_RATE, echo_cancelled=False)
        self.playout = bridge.PlayoutClock()
        self.outbound = OutboundQueue(state.settings.max_outbound_frames)
        self.audio_rate = AudioRateLimiter(
            state.settings.max_audio_realtime_factor, state.settings.audio_burst_ms
        )
        self.ready = asyncio.Event()
        self.overflowed = False
        self.cleared: set[str] = set()
        self.marks = MarkedPlayback()
        """What was sent, acknowledged, and is kept to send again after a pause."""
        self.finished: deque[ResponseDone] = deque(maxlen=16)
        """The last responses of the call (what was heard of each), for inspection."""
        self.hang_up: str | None = None
        """Set when the agent ended the call (``end_call``): the writer hangs up."""
        self.transfer = _transfer(state, start)
        if self.transfer is not None:
            self.conversation.set_transfer(self.transfer.choose)

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    def emit(self, event: ServerMessage) -> None:
        bridge.observe(self.state, self.session_id, event)
        if isinstance(event, ResponseDone):
            self.finished.append(event)
            self.marks.drop(event.response_id)
        elif isinstance(event, ResponseAudioDelta):
            self._add_audio(event)
        elif isinstance(event, ResponseAudioPause):
            if event.response_id not in self.cleared:
                # Marks acknowledged before the clear are what the caller heard.
                self._clear_line(event.response_id)
                heard = self.marks.pause(event.response_id)
                self.conversation.report_played(event.response_id, heard)
        elif isinstance(event, ResponseAudioResume):
            if event.response_id not in self.cleared:
                for send in self.marks.resume(event.response_id):
                    self._send(send, mulaw.decode_float(send.payload))
        elif isinstance(event, ResponseAudioClear):
            rid = event.response_id
            self.cleared.add(rid)
            self._clear_line(rid)
            # The provider answers the clear by returning the pending marks unplayed.
            self.conversation.report_played(rid, self.marks.drop(rid))
        elif isinstance(event, SessionEnded):
            # The goodbye has been heard (its marks came back): the stream ends, and
            # the provider's call with it unless its instructions go on.
            self.hang_up = event.reason
            self.ready.set()

    def _clear_line(self, response_id: str) -> None:
        self.outbound.purge_audio(response_id)
        self._push(clear_message(self.stream_sid))
        now = time.monotonic()
        self.playout.flush(now)
        if self.guard is not None:
            self.guard.flushed(now)

    def _add_audio(self, event: ResponseAudioDelta) -> None:
        rid = event.response_id
        if rid in self.cleared:
            return
        audio = pcm16_to_float(event.audio)
        send = self.marks.add(rid, mulaw.encode_float(audio), event.duration_ms)
        if send == "dropped":
            # Per piece of audio while the provider does not acknowledge: sampled.
            _log(self.state, "unheard_full", "session=%s: the provider acknowledges no "
                 "marks; reply audio dropped", self.session_id)
        elif send != "held":
            self._send(send, audio)

    def _send(self, send: Send, audio: FloatAudio) -> None:
        play_at = self.playout.schedule(send.duration_ms, time.monotonic())
        if self.guard is not None:
            self.guard.played(audio, play_at)
        self._push(media_message(self.stream_sid, send.payload), send.response_id)
        self._push(mark_message(self.stream_sid, send.mark), send.response_id)

    def _push(self, text: str, response_id: str | None = None) -> None:
        ok = self.outbound.push(
            text.encode(), response_id=response_id, audio=response_id is not None
        )
        if not ok:
            self.overflowed = True
        self.ready.set()

    def on_mark(self, name: str) -> None:
        heard = self.marks.acknowledge(name)
        if heard is not None:
            self.conversation.report_played(*heard)

    def on_media(self, media: Media) -> None:
        if media.track not in ("inbound", "inbound_track"):
            return
        now = time.monotonic()
        self.last_input_at = now
        # One µ-law byte per sample: a message may carry seconds of audio, so the
        # message rate alone does not bound the audio rate.
        if not self.audio_rate.accept(len(media.payload) * 1000.0 / SAMPLE_RATE, now):
            return
        audio = mulaw.decode_float(media.payload)
        if self.guard is not None:
            audio = self.guard.filter(audio, now)
        if not self.conversation.feed_audio(audio):
            logger.debug("session=%s: input queue full, frame dropped", self.session_id)

    async def close(self) -> None:
        """Hang up (server shutdown); the endpoint's own cleanup does the rest."""
        with contextlib.suppress(Exception):
            await self.ws.close(CLOSE_GOING_AWAY)

    async def writer(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.overflowed:
                await self.ws.close(CLOSE_POLICY, "provider does not read the stream")
                return
            while (frame := self.outbound.pop()) is not None:
                await self.ws.send_text(frame.decode())
            if self.hang_up is not None:
                if self.hang_up == "transfer" and self.transfer is not None:
                    await self.transfer.redirect()  # Twilio ends the stream itself, too
                self.state.metrics.disconnects.labels(self.hang_up).inc()
                await self.ws.close(CLOSE_NORMAL, self.hang_up)
                return


def _transfer(state: AppState, start: Start) -> TwilioTransfer | None:
    """The call's ``transfer_call``, when the operator configured where it may go."""
    settings = state.settings
    account = settings.twilio_account_sid or start.account_sid
    if not settings.transfer_targets or not settings.twilio_auth_token or not account:
        return None
    return TwilioTransfer(
        settings.transfer_targets, account, settings.twilio_auth_token, start.call_sid,
        settings.twilio_api_url,
    )


def _log(state: AppState, key: str, message: str, *args: object) -> None:
    """What a hostile stream can repeat: a few lines per window, not one per message."""
    state.sampled_log.log(logger, logging.WARNING, f"telephony:{key}", message, *args)


class _Stream:
    """The provider's side of the socket: text messages under a frame-rate limit."""

    def __init__(self, websocket: WebSocket, state: AppState) -> None:
        self.ws = websocket
        self.state = state
        self.frames = FrameRateLimiter(FRAME_RATE, FRAME_BURST, flood_factor=FLOOD_FACTOR)
        self.flooding = False

    async def receive(self) -> str | None:
        """The next message within the rate, or None once the provider hung up or
        flooded (then the stream is closed with 1008)."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            if not self.frames.accept(time.monotonic()):
                if self.frames.flooding:
                    self.flooding = True
                    _log(self.state, "flood", "telephony: a stream floods; closed")
                    await self.ws.close(CLOSE_POLICY, "too many messages")
                    return None
                continue  # over the rate: dropped, as on /ws
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"][:MAX_MESSAGE_CHARS].decode("utf-8", errors="replace")
            return str(text or "")


def _parse_logged(stream: _Stream, text: str, session: str) -> ProviderMessage | None:
    """``parse``; an unreadable message is logged (sampled) and read as nothing."""
    try:
        return parse(text[:MAX_MESSAGE_CHARS])
    except TelephonyProtocolError as exc:
        _log(stream.state, "unreadable", "session=%s: %s", session, exc)
        return None


async def _wait_for_start(stream: _Stream) -> Start | str:
    """The ``start`` message, or why there is none: ``stopped`` (the provider hung
    up or said stop), ``timeout``, ``not_a_stream`` (too many other messages first)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    for count in range(MAX_MESSAGES_BEFORE_START):
        wait = FIRST_MESSAGE_TIMEOUT_S if count == 0 else START_TIMEOUT_S
        try:
            async with asyncio.timeout_at(min(deadline, asyncio.get_running_loop().time() + wait)):
                text = await stream.receive()
        except TimeoutError:
            return "timeout"
        if text is None:
            return "stopped"
        message = _parse_logged(stream, text, "-")
        if isinstance(message, Start):
            return message
        if isinstance(message, Stop):
            return "stopped"
    return "not_a_stream"


async def _twilio(websocket: WebSocket) -> None:
    slot = await intake.admit_websocket(websocket, intake.Transport.TELEPHONY)
    if slot is None:
        return
    try:
        await _take_call(websocket, slot)
    finally:
        slot.release()


async def _take_call(websocket: WebSocket, slot: Slot) -> None:
    state = slot.state

    async def hang_up() -> None:
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_GOING_AWAY)

    slot.hang_up = hang_up
    await websocket.accept()
    stream = _Stream(websocket, state)
    start = await _wait_for_start(stream)
    if not isinstance(start, Start):
        why = "flood" if stream.flooding else start
        if why != "stopped":
            state.metrics.refusals.labels(f"stream_{why}").inc()
            _log(state, why, "telephony: no start (%s); closed", why)
        if not stream.flooding:
            with contextlib.suppress(Exception):
                await websocket.close(CLOSE_POLICY, f"no start ({why})")
        return
    if not intake.authorize_later(slot, websocket, start.custom_parameters.get(API_KEY_PARAMETER)):
        with contextlib.suppress(Exception):  # the provider may have gone already
            await websocket.close(CLOSE_POLICY)
        return
    refused = intake.recheck(slot)
    if refused is not None:
        state.metrics.refusals.labels(refused.reason).inc()
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_TRY_AGAIN_LATER, refused.reason)
        return
    if start.encoding != "audio/x-mulaw" or start.sample_rate != SAMPLE_RATE:
        _log(state, "format", "telephony: unsupported media format %s/%s",
             start.encoding[:64], start.sample_rate)
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_POLICY, "only audio/x-mulaw at 8000 Hz")
        return
    await _serve(stream, state, slot, start)


async def _serve(stream: _Stream, state: AppState, slot: Slot, start: Start) -> None:
    websocket = stream.ws
    session = TelephonySession(websocket, state, slot, start)
    bridge.session_opened(state, session.conversation, "telephony")
    state.bridge_sessions.add(session)
    logger.info(
        "session=%s: call %s stream %s", session.session_id, start.call_sid[:64],
        start.stream_sid[:64],
    )
    session.conversation.start()
    writer = asyncio.create_task(session.writer(), name=f"{session.session_id}-writer")
    ended_by = "disconnected"
    try:
        while True:
            receive = asyncio.create_task(stream.receive())
            done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                receive.cancel()
                await asyncio.gather(receive, return_exceptions=True)
                ended_by = session.hang_up or ("slow_provider" if session.overflowed else "error")
                break
            text = receive.result()
            if text is None:
                break
            message = _parse_logged(stream, text, session.session_id)
            if isinstance(message, Media):
                session.on_media(message)
            elif isinstance(message, Mark):
                session.on_mark(message.name)
            elif isinstance(message, Dtmf):
                logger.info("session=%s: dtmf %s", session.session_id, message.digit[:8])
            elif isinstance(message, Stop):
                ended_by = "caller_hung_up"
                break
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        try:
            await session.conversation.close()
        except Exception:
            logger.exception("session=%s: closing the call failed", session.session_id)
        finally:
            state.bridge_sessions.discard(session)
            bridge.session_closed(state, session.conversation, ended_by)
            slot.release()
            with contextlib.suppress(Exception):
                await websocket.close(CLOSE_GOING_AWAY)


routes = [WebSocketRoute("/telephony/twilio", _twilio)]

__all__ = ["Start", "TelephonySession", "mark_name", "parse", "read_mark", "routes"]
