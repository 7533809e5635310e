"""The Starlette app: ``/ws`` (the voice protocol), ``/healthz``, ``/metrics``.

The WebSocket endpoint is glue: it decodes frames, hands them to a
``pipeline.conversation.Conversation`` and writes the events that come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent.bridge import BridgeSession
from agent.config import Settings
from agent.limits import AudioRateLimiter, OutboundQueue
from agent.metrics import Metrics
from agent.protocol import (
    BEARER_SUBPROTOCOL_PREFIX,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ConversationText,
    InputAudioAppend,
    OutputAudioPlayed,
    ProtocolError,
    ResponseCancel,
    ServerMessage,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    decode_client_frame,
    encode_server_message,
    parse_session_fields,
)
from pipeline.audio import pcm16_to_float
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.events import ErrorEvent, Event, ResponseAudioClear, ResponseAudioDelta, ResponseDone
from pipeline.turn import TurnConfig

logger = logging.getLogger("voiceforge.server")

CLOSE_UNAUTHORIZED = 1008
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001

EngineFactory = Callable[[], Engines]
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
"""The static voice chat page and JS SDK, served at ``/``."""


def session_view(config: SessionConfig) -> dict[str, Any]:
    """The settings a client sees in session.created / session.updated."""
    return {
        "instructions": config.instructions,
        "voice": config.voice,
        "input_sample_rate": config.input_sample_rate,
        "output_sample_rate": config.output_sample_rate,
        "turn": asdict(config.turn),
        "max_response_tokens": config.max_response_tokens,
        "temperature": config.temperature,
        "partial_transcript_interval_ms": config.partial_transcript_interval_ms,
        "speculative_response": config.speculative_response,
        "speculative_transcript": config.speculative_transcript,
        "first_chunk_at_clause": config.chunker.first_chunk_at_clause,
    }


class _Session:
    """One WebSocket call."""

    def __init__(self, websocket: WebSocket, state: AppState) -> None:
        self.ws = websocket
        self.state = state
        settings = state.settings
        self.outbound = OutboundQueue(settings.max_outbound_frames)
        self.ready = asyncio.Event()
        self.limiter = AudioRateLimiter(settings.max_audio_realtime_factor, settings.audio_burst_ms)
        self.cleared: set[str] = set()
        self.conversation = Conversation(state.engines, self.emit, SessionConfig())
        self.last_rate_error = 0.0
        self.overflowed = False

    # Events from the conversation (synchronous: it never waits on the socket).
    def emit(self, event: Event | ServerMessage) -> None:
        if isinstance(event, ResponseAudioDelta):
            if event.response_id in self.cleared:
                return
            ok = self.outbound.push(
                encode_server_message(event), response_id=event.response_id, audio=True
            )
        else:
            if isinstance(event, ResponseAudioClear):
                self.cleared.add(event.response_id)
                self.outbound.purge_audio(event.response_id)
            elif isinstance(event, ResponseDone):
                self.state.metrics.observe_response(event)
                logger.info(
                    "session=%s response=%s status=%s timings=%s",
                    self.conversation.session_id,
                    event.response_id,
                    event.status.value,
                    {k: round(v) for k, v in event.timings.items()},
                )
            elif isinstance(event, ErrorEvent):
                self.state.metrics.errors.labels(event.code).inc()
            ok = self.outbound.push(encode_server_message(event))
        if not ok:
            self.overflowed = True
        self.ready.set()

    def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        self.emit(ErrorEvent(code, message, fatal=fatal))

    async def writer(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.overflowed:
                await self.ws.close(CLOSE_TOO_SLOW, "client does not read its events")
                return
            while (frame := self.outbound.pop()) is not None:
                await self.ws.send_bytes(frame)

    def handle(self, frame: bytes) -> None:
        settings = self.state.settings
        if len(frame) > settings.max_frame_bytes:
            self.error(
                "frame_too_large",
                f"frame of {len(frame)} bytes exceeds the limit of {settings.max_frame_bytes}",
            )
            return
        try:
            message = decode_client_frame(frame)
        except ProtocolError as exc:
            self.error(exc.code, str(exc))
            return
        conversation = self.conversation
        if isinstance(message, InputAudioAppend):
            rate = conversation.config.input_sample_rate
            audio_ms = len(message.audio) / 2 * 1000.0 / rate
            now = time.monotonic()
            if not self.limiter.accept(audio_ms, now):
                if now - self.last_rate_error > 1.0:
                    self.last_rate_error = now
                    self.error(
                        "audio_rate_exceeded",
                        f"audio arrives faster than {settings.max_audio_realtime_factor}x "
                        "real time; frames are being dropped",
                    )
                return
            if not conversation.feed_audio(pcm16_to_float(message.audio)):
                self.error("input_overloaded", "input audio queue is full; frame dropped")
        elif isinstance(message, SessionUpdate):
            self.update_session(message.session)
        elif isinstance(message, ResponseCancel):
            conversation.cancel_response(message.response_id)
        elif isinstance(message, OutputAudioPlayed):
            conversation.report_played(message.response_id, message.played_ms)
        elif isinstance(message, ConversationText):
            conversation.send_text(message.text)

    def update_session(self, fields: dict[str, Any]) -> None:
        current = self.conversation.config
        try:
            changes = parse_session_fields(fields, list(self.state.engines.tts.voices()))
            turn = changes.pop("turn", None)
            if turn is not None:
                changes["turn"] = TurnConfig(**{**asdict(current.turn), **turn})
            at_clause = changes.pop("first_chunk_at_clause", None)
            if at_clause is not None:
                changes["chunker"] = replace(current.chunker, first_chunk_at_clause=at_clause)
            updated = replace(current, **changes)
        except ProtocolError as exc:
            self.error(exc.code, str(exc))
            return
        except (TypeError, ValueError) as exc:
            self.error("invalid_session", str(exc))
            return
        self.conversation.update(updated)
        self.emit(SessionUpdated(session_view(updated)))


class AppState:
    def __init__(self, settings: Settings, engines: Engines) -> None:
        self.settings = settings
        self.engines = engines
        self.metrics = Metrics()
        self.sessions: set[_Session] = set()
        self.bridge_sessions: set[BridgeSession] = set()
        """WebRTC calls: not tied to an HTTP connection, so hung up at shutdown."""


def _authorized(websocket: HTTPConnection, api_key: str | None) -> bool:
    if api_key is None:
        return True
    presented: list[str] = []
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        presented.append(header[7:].strip())
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(BEARER_SUBPROTOCOL_PREFIX):
            presented.append(offered[len(BEARER_SUBPROTOCOL_PREFIX) :])
    return any(hmac.compare_digest(p.encode(), api_key.encode()) for p in presented)


async def _websocket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voiceforge
    if not _authorized(websocket, state.settings.api_key):
        # Closing before accept answers the handshake with HTTP 403.
        await websocket.close(CLOSE_UNAUTHORIZED)
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    session = _Session(websocket, state)
    state.sessions.add(session)
    state.metrics.sessions.inc()
    state.metrics.sessions_active.inc()
    conversation = session.conversation
    session.emit(
        SessionCreated(
            session_id=conversation.session_id,
            protocol_version=PROTOCOL_VERSION,
            session=session_view(conversation.config),
            limits={
                "max_frame_bytes": state.settings.max_frame_bytes,
                "max_audio_realtime_factor": state.settings.max_audio_realtime_factor,
                "voices": list(state.engines.tts.voices()),
            },
        )
    )
    conversation.start()
    writer = asyncio.create_task(session.writer())
    # One long-lived reader task, not a task and a wait per frame: that was a
    # hot spot of the event loop under load (docs/benchmarks.md).
    reader = asyncio.create_task(_read_frames(websocket, session))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                raise exc
    finally:
        reader.cancel()
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        await conversation.close()
        state.sessions.discard(session)
        state.metrics.sessions_active.dec()
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_GOING_AWAY)


async def _read_frames(websocket: WebSocket, session: _Session) -> None:
    """Hand every client frame to the session until the client disconnects."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            session.error("malformed_frame", "frames must be binary msgpack, not text")
            continue
        session.handle(data)


async def _healthz(request: Request) -> Response:
    state: AppState = request.app.state.voiceforge
    engines = state.engines
    return JSONResponse(
        {
            "status": "ok",
            "sessions": len(state.sessions),
            "engines": {"stt": engines.stt.name, "llm": engines.llm.name, "tts": engines.tts.name},
        }
    )


async def _metrics(request: Request) -> Response:
    state: AppState = request.app.state.voiceforge
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, engines: Engines | EngineFactory) -> Starlette:
    """The ASGI app. ``engines`` may be built already (tests share them) or a factory."""
    # The phone bridges import this module (auth, session view): imported late.
    from agent import telephony, webrtc

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = engines if isinstance(engines, Engines) else await asyncio.to_thread(engines)
        await built.vad.start()
        app.state.voiceforge = AppState(settings, built)
        try:
            yield
        finally:
            await webrtc.close_all(app.state.voiceforge)
            await built.vad.stop()

    return Starlette(
        routes=[
            WebSocketRoute("/ws", _websocket),
            Route("/healthz", _healthz),
            Route("/metrics", _metrics),
            *webrtc.routes,
            *telephony.routes,
            # The browser voice chat page (web/); last, so it never shadows the API.
            Mount("/", StaticFiles(directory=WEB_DIR, html=True, check_dir=False), name="web"),
        ],
        lifespan=lifespan,
    )
