"""Telephone calls as media streams: ``/telephony/twilio`` (the Twilio Media Streams
convention, which other providers copy).

The provider opens a WebSocket per call and sends JSON text messages: ``connected``,
``start`` (stream id, media format, custom parameters), ``media`` (base64 µ-law,
8 kHz, 20 ms), ``mark`` (a mark we sent has been played), ``dtmf``, ``stop``. We send
``media`` with the reply, a ``mark`` after each piece of it — its acknowledgement
tells what the caller has heard, which is what history keeps after a barge-in —
and ``clear`` to flush the provider's playback buffer on barge-in.

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

from agent import bridge
from agent.credentials import KeyRing
from agent.gate import refusal, secret_ok, twilio_signature_ok
from agent.limits import OutboundQueue
from agent.protocol import ServerMessage
from agent.server import (
    CLOSE_GOING_AWAY,
    CLOSE_UNAUTHORIZED,
    AppState,
    _authorized,
    _refuse_quietly,
    deny_websocket,
)
from pipeline import mulaw
from pipeline.audio import pcm16_to_float
from pipeline.conversation import Conversation
from pipeline.echo import EchoGuard
from pipeline.events import ResponseAudioClear, ResponseAudioDelta, ResponseDone

logger = logging.getLogger("voiceforge.telephony")

SAMPLE_RATE = 8000
API_KEY_PARAMETER = "api_key"
"""Providers cannot set headers: the key may come as a <Parameter> of the stream."""
MAX_MESSAGE_CHARS = 64 * 1024
CLOSE_TOO_SLOW = 1008


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


def mark_name(response_id: str, played_ms: float) -> str:
    """Our marks say which response and how far into it: ``resp_…:1234.5``."""
    return f"{response_id}:{played_ms:.1f}"


def read_mark(name: str) -> tuple[str, float] | None:
    response_id, _, ms = name.rpartition(":")
    try:
        return (response_id, float(ms)) if response_id else None
    except ValueError:
        return None


# ------------------------------------------------------------------- the call


class TelephonySession:
    def __init__(self, websocket: WebSocket, state: AppState, start: Start) -> None:
        self.ws = websocket
        self.state = state
        self.stream_sid = start.stream_sid
        config = replace(
            state.session_config(), input_sample_rate=SAMPLE_RATE, output_sample_rate=SAMPLE_RATE
        )
        self.conversation = Conversation(state.engines, self.emit, config)
        self.started_at = time.monotonic()
        self.guard: EchoGuard | None = bridge.echo_guard(state, SAMPLE_RATE, echo_cancelled=False)
        self.playout = bridge.PlayoutClock()
        self.outbound = OutboundQueue(state.settings.max_outbound_frames)
        self.ready = asyncio.Event()
        self.overflowed = False
        self.cleared: set[str] = set()
        self.sent_ms: dict[str, float] = {}
        """Reply audio sent per response (the end of each mark)."""
        self.heard_ms: dict[str, float] = {}
        """Reply audio the provider acknowledged as played, per response."""
        self.finished: deque[ResponseDone] = deque(maxlen=16)
        """The last responses of the call (what was heard of each), for inspection."""

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    def emit(self, event: ServerMessage) -> None:
        bridge.observe(self.state, self.session_id, event)
        if isinstance(event, ResponseDone):
            self.finished.append(event)
        elif isinstance(event, ResponseAudioDelta):
            self._send_audio(event)
        elif isinstance(event, ResponseAudioClear):
            rid = event.response_id
            self.cleared.add(rid)
            self.outbound.purge_audio(rid)
            self._push(clear_message(self.stream_sid))
            now = time.monotonic()
            self.playout.flush(now)
            if self.guard is not None:
                self.guard.flushed(now)
            # Marks acknowledged before the clear are what the caller heard; the
            # provider answers the clear by returning the pending marks unplayed.
            self.conversation.report_played(rid, self.heard_ms.pop(rid, 0.0))

    def _send_audio(self, event: ResponseAudioDelta) -> None:
        rid = event.response_id
        if rid in self.cleared:
            return
        audio = pcm16_to_float(event.audio)
        play_at = self.playout.schedule(event.duration_ms, time.monotonic())
        if self.guard is not None:
            self.guard.played(audio, play_at)
        end_ms = self.sent_ms.get(rid, 0.0) + event.duration_ms
        self.sent_ms[rid] = end_ms
        self._push(media_message(self.stream_sid, mulaw.encode_float(audio)), rid)
        self._push(mark_message(self.stream_sid, mark_name(rid, end_ms)), rid)

    def _push(self, text: str, response_id: str | None = None) -> None:
        ok = self.outbound.push(
            text.encode(), response_id=response_id, audio=response_id is not None
        )
        if not ok:
            self.overflowed = True
        self.ready.set()

    def on_mark(self, name: str) -> None:
        mark = read_mark(name)
        if mark is None:
            return
        rid, played_ms = mark
        if rid in self.cleared:
            return
        self.heard_ms[rid] = max(self.heard_ms.get(rid, 0.0), played_ms)
        self.conversation.report_played(rid, played_ms)

    def on_media(self, media: Media) -> None:
        if media.track not in ("inbound", "inbound_track"):
            return
        audio = mulaw.decode_float(media.payload)
        if self.guard is not None:
            audio = self.guard.filter(audio, time.monotonic())
        if not self.conversation.feed_audio(audio):
            logger.warning("session=%s: input queue full, frame dropped", self.session_id)

    async def close(self) -> None:
        """Hang up (server shutdown); the endpoint's own cleanup does the rest."""
        with contextlib.suppress(Exception):
            await self.ws.close(CLOSE_GOING_AWAY)

    async def writer(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.overflowed:
                await self.ws.close(CLOSE_TOO_SLOW, "provider does not read the stream")
                return
            while (frame := self.outbound.pop()) is not None:
                await self.ws.send_text(frame.decode())


async def _receive_text(websocket: WebSocket) -> str | None:
    """The next text message, or None once the provider hung up."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None and message.get("bytes") is not None:
        text = message["bytes"].decode("utf-8", errors="replace")
    return str(text or "")


async def _wait_for_start(websocket: WebSocket) -> Start | None:
    while (text := await _receive_text(websocket)) is not None:
        try:
            message = parse(text[:MAX_MESSAGE_CHARS])
        except TelephonyProtocolError as exc:
            logger.warning("telephony: %s", exc)
            continue
        if isinstance(message, Start):
            return message
        if isinstance(message, Stop):
            return None
    return None


def _key_matches(presented: str | None, api_key: KeyRing) -> bool:
    """A session token for telephony with a call left, passed as a <Parameter> of the
    stream. Never the API key itself: TwiML is stored and shown by the provider."""
    return presented is not None and secret_ok(
        presented, api_key, allow_key=False, audience="telephony"
    )


async def _twilio(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voiceforge
    api_key = state.settings.keyring()
    if not twilio_signature_ok(websocket, state.settings):
        _refuse_quietly(state, websocket, "bad_signature")
        await websocket.close(CLOSE_UNAUTHORIZED)  # before accept: HTTP 403
        return
    refused = refusal(state)
    if refused is not None:
        await deny_websocket(websocket, state, refused)
        return
    header_ok = _authorized(websocket, api_key)
    if api_key is None and not header_ok:  # key-less: this machine's callers only
        _refuse_quietly(state, websocket, "unauthorized")
        await websocket.close(CLOSE_UNAUTHORIZED)
        return
    await websocket.accept()
    start = await _wait_for_start(websocket)
    if start is None:
        return
    if not header_ok and not (
        api_key is not None
        and _key_matches(start.custom_parameters.get(API_KEY_PARAMETER), api_key)
    ):
        await websocket.close(CLOSE_UNAUTHORIZED)
        return
    if start.encoding != "audio/x-mulaw" or start.sample_rate != SAMPLE_RATE:
        logger.warning(
            "telephony: unsupported media format %s/%s", start.encoding, start.sample_rate
        )
        await websocket.close(CLOSE_UNAUTHORIZED, "only audio/x-mulaw at 8000 Hz")
        return
    await _serve(websocket, state, start)


async def _serve(websocket: WebSocket, state: AppState, start: Start) -> None:
    session = TelephonySession(websocket, state, start)
    bridge.session_opened(state)
    state.bridge_sessions.add(session)
    logger.info(
        "session=%s: call %s stream %s", session.session_id, start.call_sid, start.stream_sid
    )
    session.conversation.start()
    writer = asyncio.create_task(session.writer())
    try:
        while True:
            receive = asyncio.create_task(_receive_text(websocket))
            done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                receive.cancel()
                await asyncio.gather(receive, return_exceptions=True)
                break
            text = receive.result()
            if text is None:
                break
            try:
                message = parse(text[:MAX_MESSAGE_CHARS])
            except TelephonyProtocolError as exc:
                logger.warning("session=%s: %s", session.session_id, exc)
                continue
            if isinstance(message, Media):
                session.on_media(message)
            elif isinstance(message, Mark):
                session.on_mark(message.name)
            elif isinstance(message, Dtmf):
                logger.info("session=%s: dtmf %s", session.session_id, message.digit)
            elif isinstance(message, Stop):
                break
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await session.conversation.close()
        state.bridge_sessions.discard(session)
        bridge.session_closed(state)
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_GOING_AWAY)


routes = [WebSocketRoute("/telephony/twilio", _twilio)]

__all__ = ["Start", "TelephonySession", "parse", "routes"]
