"""The Starlette app: ``/ws`` (the voice protocol), ``/healthz``, ``/readyz``,
``/metrics``, ``POST /v1/session-tokens``.

The WebSocket endpoint is glue: it decodes frames, hands them to a
``pipeline.conversation.Conversation`` and writes the events that come back.
Who may call and whether the server takes a call now is ``agent.intake``'s (the
one way in for every transport); the limits every call lives under are in
``Settings`` and docs/reliability.md, enforced per call here and by
``agent.lifecycle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent import bridge, intake, resume
from agent.bridge import session_view
from agent.config import Settings
from agent.credentials import read_mint_request
from agent.gate import api_key_presented, operator_ok, refusal
from agent.hosts import TrustedHosts, trusted_hosts
from agent.lifecycle import SWEEP_INTERVAL_S, drain, hang_up_all, sweep
from agent.limits import (
    AudioRateLimiter,
    DecodeBudget,
    ErrorThrottle,
    FrameRateLimiter,
    OutboundQueue,
)
from agent.loading import close_engines, in_daemon_thread
from agent.metrics import worker_id
from agent.protocol import (
    MAX_CLIENT_TOOLS,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ClientMessage,
    ConversationText,
    InputAudioAppend,
    OutputAudioPlayed,
    ProtocolError,
    ResponseCancel,
    ServerMessage,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    ToolResult,
    decode_client_frame,
    encode_server_message,
    shown,
)
from agent.records import RECORDS_FLUSH_TIMEOUT_S, start_records
from agent.resume_tokens import offered_resume_token
from agent.state import AppState
from agent.tokens import issue_token
from pipeline.audio import pcm16_to_float
from pipeline.conversation import Conversation, Engines, SessionConfig
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    SessionEnded,
)
from pipeline.resume import ResumeSnapshot

logger = logging.getLogger("voiceforge.server")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_SLOW = 1008
"""Also for a flooding client: 1008 is "policy violation"."""

EngineFactory = Callable[[], Engines]
WEB_DIR = next(
    (where for where in (Path(__file__).resolve().parent / "web",  # a wheel (setup.py)
                         Path(__file__).resolve().parent.parent / "web")  # the repository
     if (where / "index.html").is_file()),
    Path(__file__).resolve().parent / "web",
)
"""The static voice chat page and JS SDK, served at ``/``."""

MAX_ERROR_MESSAGE_CHARS = 300
"""An error's message is cut here whatever it quotes: a reply never grows with the input."""


@dataclass(frozen=True, slots=True)
class _Closing:
    code: int
    reason: str
    """Also the ``voiceforge_disconnects`` label."""
    flush: bool
    """Send what is queued (the error saying why) before closing."""


class _Session:
    """One WebSocket call."""

    def __init__(self, websocket: WebSocket, state: AppState,
                 resuming: tuple[ResumeSnapshot, SessionConfig] | None = None) -> None:
        self.ws = websocket
        self.state = state
        settings = state.settings
        self.outbound = OutboundQueue(settings.max_outbound_frames, settings.max_outbound_bytes)
        self.ready = asyncio.Event()
        self.limiter = AudioRateLimiter(settings.max_audio_realtime_factor, settings.audio_burst_ms)
        self.frames = FrameRateLimiter()
        self.decode_budget = DecodeBudget(settings.decode_budget_ms_per_s, settings.decode_burst_ms)
        self.error_throttle = ErrorThrottle(settings.errors_per_code_per_s)
        self.cleared: set[str] = set()
        snapshot, config = resuming or (None, state.session_config())
        self.conversation = Conversation(
            state.engines, self.emit, config,
            session_id=None if snapshot is None else snapshot.session_id)
        self.epoch = 0 if snapshot is None else snapshot.epoch + 1
        """Times this call was resumed: its resume token names it (works once)."""
        self.lost_reply: resume.LostReplySettler | None = None
        self.client_close_code: int | None = None
        self.last_rate_error = 0.0
        self.last_frame_error = 0.0
        self.last_decode_error = 0.0
        self.started_at = self.last_frame_at = time.monotonic()
        self.call_started_at = time.time() if snapshot is None else snapshot.started_at
        if snapshot is not None:  # the call's time limit counts from its real start
            self.started_at -= max(0.0, time.time() - snapshot.started_at)
        self.slow_responses: set[str] = set()
        self.closing: _Closing | None = None
        self.reader: asyncio.Task[None] | None = None
        self.writer_task: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    # Events from the conversation (synchronous: it never waits on the socket).
    def emit(self, event: Event | ServerMessage) -> None:
        if self.closing is not None and not self.closing.flush:
            return
        bridge.observe(self.state, self.session_id, event)
        if isinstance(event, ResponseAudioDelta):
            if event.response_id in self.cleared:
                return
            settings = self.state.settings
            if (
                len(self.outbound) >= settings.slow_client_frames
                or self.outbound.bytes >= settings.slow_client_bytes
            ):
                self._drop_audio(event.response_id)
                return
            ok = self.outbound.push(
                encode_server_message(event), response_id=event.response_id, audio=True
            )
        else:
            if isinstance(event, ResponseAudioClear):
                self.cleared.add(event.response_id)
                self.outbound.purge_audio(event.response_id)
            ok = self.outbound.push(encode_server_message(event))
        if not ok:
            # Not even control events fit: the client has stopped reading.
            self.finish(CLOSE_TOO_SLOW, "slow_client", flush=False)
        elif isinstance(event, SessionEnded):
            # The agent hung up (end_call) once its goodbye was heard.
            self.finish(CLOSE_NORMAL, event.reason, flush=True)
        self.ready.set()

    def _drop_audio(self, response_id: str) -> None:
        """Reply audio for a client that does not read: drop it, say so, end the reply."""
        self.state.metrics.dropped_audio.inc()
        if response_id in self.slow_responses:
            return
        self.slow_responses.add(response_id)
        logger.warning(
            "session=%s response=%s client does not read; dropping its audio",
            self.session_id, response_id,
            extra={"session_id": self.session_id, "response_id": response_id},
        )
        self.error(
            "client_too_slow",
            f"{len(self.outbound)} frames ({self.outbound.bytes} bytes) wait for you to read "
            "them; reply audio is being dropped and the reply cancelled",
        )
        # Not from inside the conversation's own emit call: on the next loop turn.
        asyncio.get_running_loop().call_soon(
            self.conversation.cancel_response, response_id, "client_too_slow"
        )

    def error(
        self, code: str, message: str, *, fatal: bool = False, category: str = "client",
        throttled: bool = True,
    ) -> None:
        """Tell the client; errors of one code beyond a few a second are only counted
        (``throttled=False`` for the one that explains a close)."""
        if throttled:
            send, held_back = self.error_throttle.allow(code, time.monotonic())
            if not send:  # still counted, as every error is
                self.state.metrics.errors.labels(code, category).inc()
                return
            if held_back:
                message = f"{message} ({held_back} more {code} errors were not sent)"
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        self.emit(ErrorEvent(code, message, fatal=fatal, category=category))

    def finish(self, code: int, reason: str, *, flush: bool) -> None:
        """End the call: stop reading now; send what is queued first if ``flush``."""
        if self.closing is not None:
            return
        self.closing = _Closing(code, reason, flush)
        if self.reader is not None:
            self.reader.cancel()
        if not flush and self.writer_task is not None:
            self.writer_task.cancel()
        self.ready.set()

    def check_limits(self, now: float) -> None:
        """Idle, call length and slow client (the sweeper calls this twice a second)."""
        settings = self.state.settings
        if self.closing is not None:
            return
        age = self.outbound.oldest_age(now)
        if age is not None and age > settings.slow_client_timeout_s:
            logger.warning(
                "session=%s closed: a frame waited %.1f s for the client", self.session_id, age,
                extra={"session_id": self.session_id},
            )
            self.finish(CLOSE_TOO_SLOW, "slow_client", flush=False)
        elif now - self.last_frame_at > settings.idle_timeout_s:
            self.error(
                "idle_timeout",
                f"nothing received for {settings.idle_timeout_s:g} s; closing the call",
                throttled=False,
            )
            self.finish(CLOSE_NORMAL, "idle_timeout", flush=True)
        elif now - self.started_at > settings.max_call_s:
            self.error(
                "call_time_limit",
                f"calls last at most {settings.max_call_s:g} s; closing the call",
                throttled=False,
            )
            self.finish(CLOSE_NORMAL, "call_time_limit", flush=True)

    async def writer(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while (frame := self.outbound.pop()) is not None:
                await self.ws.send_bytes(frame)
            if self.closing is not None:
                return

    def admit(self, now: float) -> bool:
        """Count a frame of any kind (text too) against the frame rate; cut a flood off."""
        self.last_frame_at = now
        if self.frames.accept(now):
            return True
        if self.frames.flooding:
            self.error(
                "too_many_frames",
                f"more than {self.frames.flood_frames:g} frames over the limit within a "
                "second; closing the call",
                throttled=False,
            )
            self.finish(CLOSE_TOO_SLOW, "flood", flush=True)
        elif now - self.last_frame_error > 1.0:
            self.last_frame_error = now
            self.error(
                "too_many_frames",
                f"more than {self.frames.rate:g} frames per second; frames are being dropped",
            )
        return False

    def handle_text(self) -> None:
        if self.admit(time.monotonic()):
            self.error("malformed_frame", "frames must be binary msgpack, not text")

    def decode(self, frame: bytes, now: float) -> ClientMessage | None:
        """The frame's message, within the session's decoding budget; None if refused."""
        settings = self.state.settings
        if len(frame) > settings.max_frame_bytes:
            self.error(
                "frame_too_large",
                f"frame of {len(frame)} bytes exceeds the limit of {settings.max_frame_bytes}",
            )
            return None
        if not self.decode_budget.admit(now):
            if self.decode_budget.abusive:
                self.error(
                    "decode_budget_exceeded",
                    "frames keep costing more to decode than the budget allows; closing the "
                    "call", throttled=False,
                )
                self.finish(CLOSE_TOO_SLOW, "decode_budget", flush=True)
            elif now - self.last_decode_error > 1.0:
                self.last_decode_error = now
                self.error(
                    "decode_budget_exceeded",
                    f"frames cost more than {settings.decode_budget_ms_per_s:g} ms of decoding "
                    "a second; frames are being dropped",
                )
            return None
        started = time.perf_counter()
        try:
            return decode_client_frame(frame)
        except ProtocolError as exc:
            self.error(exc.code, str(exc))
            return None
        finally:
            self.decode_budget.charge((time.perf_counter() - started) * 1000.0)

    def handle(self, frame: bytes) -> None:
        settings = self.state.settings
        now = time.monotonic()
        if not self.admit(now):
            return
        message = self.decode(frame, now)
        if message is None:
            return
        conversation = self.conversation
        if self.lost_reply is not None:  # a resumed call: its cut reply settles first
            settler, self.lost_reply = self.lost_reply, None
            if settler.before(message):
                return
        if isinstance(message, InputAudioAppend):
            rate = conversation.config.input_sample_rate
            audio_ms = len(message.audio) / 2 * 1000.0 / rate
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
                self.error(
                    "input_overloaded", "input audio queue is full; frame dropped",
                    category="transient",
                )
        elif isinstance(message, SessionUpdate):
            self.update_session(message.session)
        elif isinstance(message, ResponseCancel):
            conversation.cancel_response(message.response_id)
        elif isinstance(message, OutputAudioPlayed):
            conversation.report_played(message.response_id, message.played_ms)
        elif isinstance(message, ConversationText):
            conversation.send_text(message.text)
        elif isinstance(message, ToolResult):
            if not conversation.tool_result(message.call_id, message.output, message.is_error):
                self.error(
                    "unknown_tool_call",
                    f"no client tool call {shown(message.call_id)} is waiting for a result "
                    "(answered already, timed out, or never made)",
                )

    def update_session(self, fields: dict[str, Any]) -> None:
        try:
            updated = bridge.updated_config(self.state, self.conversation.config, fields)
        except ProtocolError as exc:
            self.error(exc.code, str(exc))
            return
        self.conversation.update(updated)
        self.emit(SessionUpdated(session_view(updated)))


async def _websocket(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voiceforge
    slot = await intake.admit_websocket(websocket, intake.Transport.WS)
    if slot is None:
        return
    try:
        await _serve(websocket, state)
    finally:
        slot.release()


async def _serve(websocket: WebSocket, state: AppState) -> None:
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    resuming = None
    token = offered_resume_token(offered)
    if token is not None:
        resuming = await resume.claim_for(websocket, state, token)
        if resuming is None:
            return
    session = _Session(websocket, state, resuming)
    state.sessions.add(session)
    conversation = session.conversation
    snapshot = None if resuming is None else resuming[0]
    bridge.session_opened(state, conversation, intake.Transport.WS, resumed_from=None
                          if snapshot is None else (snapshot.started_at, snapshot.record_seq))
    if snapshot is not None:
        snapshot.restore(conversation.history)
    settings = state.settings
    logger.info("session=%s opened", session.session_id, extra={"session_id": session.session_id})
    session.emit(
        SessionCreated(
            session_id=conversation.session_id,
            protocol_version=PROTOCOL_VERSION,
            session=session_view(conversation.config),
            limits={
                "max_frame_bytes": settings.max_frame_bytes,
                "max_audio_realtime_factor": settings.max_audio_realtime_factor,
                "idle_timeout_s": settings.idle_timeout_s,
                "max_call_s": settings.max_call_s,
                "voices": list(state.engines.tts.voices()),
                "end_of_turn_policies": bridge.end_of_turn_policies(state.engines),
                "max_response_tokens": settings.max_response_tokens,
                "max_instructions_chars": settings.max_instructions_chars,
                "min_partial_transcript_interval_ms": (
                    settings.min_partial_transcript_interval_ms
                ),
                "server_tools": conversation.server_tools(),
                "max_client_tools": MAX_CLIENT_TOOLS,
                "resume_window_s": state.resumer.window_s if state.resumer else 0.0,
            },
            resume_token=state.resumer.token(conversation.session_id, session.epoch,
                                             session.call_started_at)
            if state.resumer is not None and state.resumer.enabled else None,
            resumed=snapshot is not None,
        )
    )
    if snapshot is not None and snapshot.lost_reply is not None:
        session.lost_reply = resume.LostReplySettler(
            snapshot.lost_reply, conversation.history, session.emit,
            conversation.config.played_report_timeout_ms / 1000)
    conversation.start()
    writer = asyncio.create_task(session.writer(), name=f"{session.session_id}-writer")
    # One long-lived reader task, not a task and a wait per frame: that was a
    # hot spot of the event loop under load (docs/benchmarks.md).
    reader = asyncio.create_task(
        _read_frames(websocket, session), name=f"{session.session_id}-reader"
    )
    session.reader, session.writer_task = reader, writer
    ended_by = "client_closed"
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                ended_by = "error"
                raise exc
        closing = session.closing
        if closing is not None and closing.flush and not writer.done():
            await asyncio.wait({writer}, timeout=2.0)
    finally:
        reader.cancel()
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        closing = session.closing
        code = closing.code if closing is not None else CLOSE_GOING_AWAY
        if closing is not None:
            ended_by = closing.reason
        suspending = resume.resumable(state, ended_by, session.client_close_code)
        if session.lost_reply is not None:
            session.lost_reply.cancel()
        reply = conversation.reply_in_flight()  # what closing cuts
        await conversation.close()
        state.sessions.discard(session)
        bridge.session_closed(state, conversation, ended_by)
        if suspending:
            resume.suspend(state, conversation, session.epoch, reply, session.call_started_at)
        state.metrics.disconnects.labels(ended_by).inc()
        logger.info(
            "session=%s closed (%s, %d)", session.session_id, ended_by, code,
            extra={"session_id": session.session_id},
        )
        session.reader = session.writer_task = None
        if WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
            with contextlib.suppress(Exception):
                # A client that does not read cannot take a close frame either.
                await asyncio.wait_for(websocket.close(code), 2.0)


async def _read_frames(websocket: WebSocket, session: _Session) -> None:
    """Hand every client frame to the session until the client disconnects."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            session.client_close_code = message.get("code", 1000)
            return
        if session.closing is not None:
            return  # frames already queued when the call was ended are not handled
        data = message.get("bytes")
        if data is None:
            session.handle_text()  # refused, but counted like any frame
            continue
        session.handle(data)


async def _healthz(request: Request) -> Response:
    """Liveness: the process serves requests. 503 only when the models failed to
    load, which no waiting will fix."""
    state: AppState = request.app.state.voiceforge
    body: dict[str, Any] = {"status": "ok", "sessions": len(state.sessions),
                            "calls": state.open_calls()}
    if state.load_error is not None:
        return JSONResponse({**body, "status": "failed", "reason": state.load_error}, 503)
    if not state.loaded:
        body["status"] = "loading"
    else:
        engines = state.engines
        body["engines"] = {"stt": engines.stt.name, "llm": engines.llm.name,
                           "tts": engines.tts.name}
    if state.draining:
        body["status"] = "draining"
    if not operator_ok(request, state.settings):
        body = {"status": body["status"]}  # the details are the operator's
    return JSONResponse(body)


async def _readyz(request: Request) -> Response:
    """Readiness: a new call would be taken now and its engines are working."""
    state: AppState = request.app.state.voiceforge
    reasons: dict[str, str] = {}
    refused = refusal(state)
    if refused is not None:
        reasons[refused.reason] = refused.message
    for engine, failure in sorted(state.engine_health.failing(time.monotonic()).items()):
        reasons[f"{engine}_failing"] = failure
    body: dict[str, Any] = {"ready": not reasons, "calls": state.open_calls(),
                            "max_sessions": state.settings.max_sessions, "worker": worker_id()}
    if state.admission is not None:
        body["first_audio_p95_ms"] = state.admission.recent_p95(time.monotonic())
        body["latency_budget_ms"] = state.admission.budget_ms
    if not operator_ok(request, state.settings):
        reasons = dict.fromkeys(reasons, "")  # which checks failed, not what they found
        body = {"ready": body["ready"]}
    if reasons:
        body["reasons"] = reasons
        return JSONResponse(
            body, 503, headers={"Retry-After": str(max(1, round(state.settings.retry_after_s)))}
        )
    return JSONResponse(body)


async def _metrics(request: Request) -> Response:
    state: AppState = request.app.state.voiceforge
    if not operator_ok(request, state.settings):
        return JSONResponse({"error": "unauthorized", "message": "/metrics needs the metrics "
                             "key (Authorization: Bearer <VOICEFORGE_METRICS_KEY>)"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)


async def _session_tokens(request: Request) -> Response:
    """``POST /v1/session-tokens``: a short-lived token for a browser, given the API key.

    Body (optional JSON): ``{"ttl_s": seconds, "audience": [...], "max_calls": n}``,
    within the server's caps (``agent.credentials.read_mint_request``).
    """
    state: AppState = request.app.state.voiceforge
    settings = state.settings
    keyring = settings.keyring()
    if keyring is None:
        return JSONResponse(
            {"error": "no_api_key", "message": "this server has no API key, so calls need no "
             "token; set VOICEFORGE_API_KEY to require one"}, 400,
        )
    if not api_key_presented(request, keyring):
        state.metrics.refusals.labels("unauthorized").inc()
        return JSONResponse(
            {"error": "unauthorized", "message": "minting tokens needs the API key "
             "(Authorization: Bearer <key>); a token cannot mint another"}, 401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        asked = read_mint_request(
            await request.body(), max_ttl_s=settings.token_ttl_s,
            max_calls=settings.token_max_calls,
        )
    except ValueError as exc:
        return JSONResponse({"error": "bad_request", "message": str(exc)}, 400)
    token, expires_at = issue_token(
        keyring.signing.secret, key_id=keyring.signing.key_id, ttl_s=asked.ttl_s,
        now=time.time(), audience=asked.audience, max_calls=asked.max_calls,
    )
    return JSONResponse(
        {"token": token, "expires_at": expires_at, "ttl_s": asked.ttl_s,
         "audience": list(asked.audience), "max_calls": asked.max_calls,
         "key_id": keyring.signing.key_id},
        headers={"Cache-Control": "no-store"},
    )


def create_app(
    settings: Settings,
    engines: Engines | EngineFactory,
    *,
    on_ready: Callable[[], None] | None = None,
    own_engines: bool = False,
) -> Starlette:
    """The ASGI app. ``engines`` may be built already (tests share them) or a
    factory, run in a thread while the server already answers ``/healthz``
    (``loading``) and ``/readyz`` (503); ``on_ready`` runs once they are loaded.
    Engines from a factory, or given with ``own_engines``, are closed (their
    worker threads stopped) when the server stops."""
    from agent import calls_api, openai_audio, realtime, telephony, voices, webrtc

    async def load(state: AppState, factory: EngineFactory) -> None:
        try:
            built = await in_daemon_thread(factory)
            await built.start_workers()
        except Exception as exc:
            # Permanent: /healthz fails so an orchestrator can see it; no secret
            # is in a load error (paths and model names only).
            state.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("engines failed to load: %s", state.load_error)
            return
        state.set_engines(built)
        if on_ready is not None:
            on_ready()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = AppState(settings, None)
        app.state.voiceforge = state
        state.records = start_records(settings, state.metrics.registry)
        state.resumer = resume.Resumer(settings, state.records)
        loader: asyncio.Task[None] | None = None
        if isinstance(engines, Engines):
            await engines.start_workers()
            state.set_engines(engines)
            if on_ready is not None:
                on_ready()
        else:
            loader = asyncio.create_task(load(state, engines), name="voiceforge-load")
        sweeper = asyncio.create_task(sweep(state), name="voiceforge-sweeper")
        try:
            yield
        finally:
            if not state.draining:
                await drain(state, 0.0)
            sweeper.cancel()
            if loader is not None:
                loader.cancel()
            await asyncio.gather(sweeper, *([loader] if loader else []), return_exceptions=True)
            await asyncio.gather(*state.background, return_exceptions=True)
            await hang_up_all(state)
            if state.resumer is not None:  # the drained calls' snapshots
                await state.resumer.stop(RECORDS_FLUSH_TIMEOUT_S)
            if state.records is not None:
                await state.records.stop(RECORDS_FLUSH_TIMEOUT_S)
            state.unobserve_engines()
            if state.loaded:
                await state.engines.stop_workers()
                if own_engines or not isinstance(engines, Engines):
                    await close_engines(state.engines)

    return Starlette(
        routes=[
            WebSocketRoute("/ws", _websocket),
            Route("/healthz", _healthz),
            Route("/readyz", _readyz),
            Route("/metrics", _metrics),
            Route("/v1/session-tokens", _session_tokens, methods=["POST"]),
            *calls_api.routes,
            *webrtc.routes,
            *telephony.routes,
            *openai_audio.routes,
            *voices.routes,
            *realtime.routes,
            # The browser voice chat page (web/); last, so it never shadows the API.
            Mount("/", StaticFiles(directory=WEB_DIR, html=True, check_dir=False), name="web"),
        ],
        lifespan=lifespan,
        # Before any route: a key-less server answers loopback names only (DNS rebinding).
        middleware=[Middleware(TrustedHosts, allowed=trusted_hosts(
            settings.allowed_hosts, has_key=settings.api_key is not None))],
    )


__all__ = ["SWEEP_INTERVAL_S", "AppState", "create_app", "drain", "session_view"]
"""What other code may import from here: the app factory, and names kept for the
tests and load tests that import them from this module."""
