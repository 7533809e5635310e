"""``/v1/realtime``: the OpenAI Realtime API's WebSocket protocol, on the ``/ws`` core.

A client written for the Realtime API (the official ``openai`` SDK's
``client.realtime.connect``, pointed here by ``base_url``) talks to the same
``pipeline.conversation.Conversation`` as ``/ws``: JSON events, audio as base64
PCM16 (24 kHz unless the session says otherwise) or G.711 µ-law. Admission,
credentials and limits are ``/ws``'s (``agent.intake``, ``agent.limits``); the
JSON shapes are ``agent.realtime_events``'s. docs/openai-compat.md says what is
supported, mapped and refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent import bridge, intake
from agent.limits import (
    AudioRateLimiter,
    DecodeBudget,
    ErrorThrottle,
    FrameRateLimiter,
    OutboundQueue,
)
from agent.protocol import ProtocolError, shown
from agent.realtime_events import (
    CANCEL_REASONS,
    AudioFormat,
    RealtimeError,
    RealtimeSettings,
    assistant_item,
    error_body,
    function_call_item,
    new_id,
    response_object,
    session_object,
    user_audio_item,
)
from agent.realtime_handlers import HANDLERS
from agent.state import AppState
from pipeline import mulaw
from pipeline.audio import pcm16_to_float
from pipeline.conversation import Conversation
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    ResponseToolCall,
    SessionEnded,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptFinal,
    TurnIgnored,
)

logger = logging.getLogger("voiceforge.realtime")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
SUBPROTOCOL = "realtime"
"""What a browser offers next to ``openai-insecure-api-key.<key>``."""
MAX_ITEMS = 256
"""Conversation items a session remembers for retrieve, delete and truncate (the
model's own history has its own bounds); the oldest are forgotten first."""
MAX_ERROR_MESSAGE_CHARS = 300


@dataclass(slots=True)
class _Reply:
    """One reply as the Realtime client sees it."""

    response_id: str
    metadata: dict[str, Any] | None = None
    out_of_band: bool = False
    item_id: str | None = None
    """The assistant message item, once the reply has said something."""
    output: list[dict[str, Any]] = field(default_factory=list)
    transcript: str = ""
    text_deltas: int = 0


class RealtimeCall:
    """One ``/v1/realtime`` call (an ``agent.state.WebSocketCall``)."""

    def __init__(self, websocket: WebSocket, state: AppState, model: str) -> None:
        self.ws = websocket
        self.state = state
        self.epoch = 0
        """Always 0: the Realtime API has no resume, so a realtime call is never
        resumed (agent.resume hands out tokens for ``/ws`` calls only)."""
        settings = state.settings
        self.outbound = OutboundQueue(settings.max_outbound_frames, settings.max_outbound_bytes)
        self.ready = asyncio.Event()
        self.limiter = AudioRateLimiter(settings.max_audio_realtime_factor, settings.audio_burst_ms)
        self.frames = FrameRateLimiter()
        self.decode_budget = DecodeBudget(settings.decode_budget_ms_per_s, settings.decode_burst_ms)
        self.error_throttle = ErrorThrottle(settings.errors_per_code_per_s)
        config = replace(state.session_config(), input_sample_rate=24000,
                         output_sample_rate=24000)
        self.conversation = Conversation(state.engines, self.on_event, config)
        self.settings = RealtimeSettings(model=model)
        self.started_at = self.last_frame_at = time.monotonic()
        self.last_limit_error = 0.0
        self.closing: tuple[int, str, bool] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.item_reply: dict[str, str] = {}
        """Assistant item → the reply that spoke it (for truncate)."""
        self.item_audio_ms: dict[str, float] = {}
        self.replies: dict[str, _Reply] = {}
        self.requested: tuple[dict[str, Any] | None, bool] | None = None
        """The last ``response.create``'s (metadata, out of band) not yet matched to a
        reply (requests that join into one reply are answered by it)."""
        self.user_item: str | None = None
        """The item of the caller's turn in progress (speech started, not committed)."""
        self.speech_stopped: SpeechStopped | None = None
        """The last pause of the turn in progress, told when the turn ends."""
        self.dropped_replies: set[str] = set()
        self.tool_continues: str | None = None
        """A reply that goes on after a ``function_call_output``: the client's next
        ``response.create`` is answered by it, not by a new reply."""

    @property
    def session_id(self) -> str:
        return self.conversation.session_id

    # ---------------------------------------------------------------- sending

    def send(self, event: dict[str, Any], *, audio_of: str | None = None) -> None:
        if self.closing is not None and not self.closing[2]:
            return
        event = {"event_id": new_id("event"), **event}
        frame = json.dumps(event, separators=(",", ":")).encode()
        if not self.outbound.push(frame, response_id=audio_of, audio=audio_of is not None):
            self.finish(CLOSE_POLICY, "slow_client", flush=False)
        self.ready.set()

    def error(
        self, code: str, message: str, *, fatal: bool = False, category: str = "client",
        throttled: bool = True, param: str | None = None, event_id: str | None = None,
    ) -> None:
        """Tell the client in the API's error shape; counted as on ``/ws``."""
        if throttled:
            send, held_back = self.error_throttle.allow(code, time.monotonic())
            if not send:
                self.state.metrics.errors.labels(code, category).inc()
                return
            if held_back:
                message = f"{message} ({held_back} more {code} errors were not sent)"
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        bridge.observe(self.state, self.session_id,
                       ErrorEvent(code, message, fatal=fatal, category=category))
        self.send({"type": "error", "error": error_body(
            code, message, param=param, event_id=event_id, category=category)})

    def finish(self, code: int, reason: str, *, flush: bool) -> None:
        if self.closing is not None:
            return
        self.closing = (code, reason, flush)
        if self.reader is not None:
            self.reader.cancel()
        if not flush and self.writer_task is not None:
            self.writer_task.cancel()
        self.ready.set()

    def check_limits(self, now: float) -> None:
        settings = self.state.settings
        if self.closing is not None:
            return
        age = self.outbound.oldest_age(now)
        if age is not None and age > settings.slow_client_timeout_s:
            self.finish(CLOSE_POLICY, "slow_client", flush=False)
        elif now - self.last_frame_at > settings.idle_timeout_s:
            self.error("idle_timeout", f"nothing received for {settings.idle_timeout_s:g} s; "
                       "closing the call", throttled=False)
            self.finish(CLOSE_NORMAL, "idle_timeout", flush=True)
        elif now - self.started_at > settings.max_call_s:
            self.error("call_time_limit", f"calls last at most {settings.max_call_s:g} s; "
                       "closing the call", throttled=False)
            self.finish(CLOSE_NORMAL, "call_time_limit", flush=True)

    async def writer(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while (frame := self.outbound.pop()) is not None:
                await self.ws.send_text(frame.decode())
            if self.closing is not None:
                return

    def session_view(self) -> dict[str, Any]:
        config = self.conversation.config
        voices = list(self.state.engines.tts.voices())
        return session_object(self.session_id, self.settings, config, voices[0] if voices else "")

    def rate_limits(self) -> None:
        """The limits that exist here: places for calls, and tokens per reply."""
        settings = self.state.settings
        self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": settings.max_sessions,
             "remaining": max(0, settings.max_sessions - self.state.open_calls()),
             "reset_seconds": 0.0},
            {"name": "tokens", "limit": self.conversation.config.max_response_tokens,
             "remaining": self.conversation.config.max_response_tokens, "reset_seconds": 0.0},
        ]})

    # ------------------------------------------------------------ client input

    def admit(self, now: float) -> bool:
        self.last_frame_at = now
        if self.frames.accept(now):
            return True
        if self.frames.flooding:
            self.error("too_many_frames", "far more frames than the limit; closing the call",
                       throttled=False)
            self.finish(CLOSE_POLICY, "flood", flush=True)
        elif now - self.last_limit_error > 1.0:
            self.last_limit_error = now
            self.error("too_many_frames",
                       f"more than {self.frames.rate:g} events per second; events dropped")
        return False

    def handle_text(self, text: str) -> None:
        now = time.monotonic()
        if not self.admit(now):
            return
        settings = self.state.settings
        if len(text) > settings.max_frame_bytes:
            self.error("frame_too_large",
                       f"event of {len(text)} chars exceeds {settings.max_frame_bytes}")
            return
        if not self.decode_budget.admit(now):
            if self.decode_budget.abusive:
                self.error("decode_budget_exceeded", "events keep costing more to decode than "
                           "the budget allows; closing the call", throttled=False)
                self.finish(CLOSE_POLICY, "decode_budget", flush=True)
            return
        started = time.perf_counter()
        event_id: str | None = None
        try:
            try:
                event = json.loads(text)
            except (ValueError, RecursionError):
                raise RealtimeError("invalid_json", "the event is not valid JSON") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise RealtimeError("invalid_event", "an event is an object with a type",
                                    "type")
            raw_id = event.get("event_id")
            event_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 64 else None
            self.dispatch(event)
        except ProtocolError as exc:
            param = exc.param if isinstance(exc, RealtimeError) else None
            self.error(exc.code, str(exc), param=param, event_id=event_id)
        finally:
            self.decode_budget.charge((time.perf_counter() - started) * 1000.0)

    def dispatch(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        handler = HANDLERS.get(kind)
        if handler is None:
            if kind == "output_audio_buffer.clear":
                raise RealtimeError("unsupported_feature", "output_audio_buffer.clear is for "
                                    "WebRTC calls; a WebSocket client stops its own playback "
                                    "and sends conversation.item.truncate", "type")
            raise RealtimeError("invalid_event", f"unknown event type {shown(kind)}", "type")
        handler(self, event)

    # -------------------------------------------------------- items and events

    def last_item_id(self) -> str | None:
        return next(reversed(self.items), None) if self.items else None

    def add_item(self, item: dict[str, Any]) -> None:
        previous = self.last_item_id()
        self.items[item["id"]] = item
        while len(self.items) > MAX_ITEMS:
            old, _ = self.items.popitem(last=False)
            self.item_reply.pop(old, None)
            self.item_audio_ms.pop(old, None)
        self.send({"type": "conversation.item.added", "previous_item_id": previous,
                   "item": item})
        if item.get("status") == "completed":
            self.send({"type": "conversation.item.done", "previous_item_id": previous,
                       "item": item})

    def on_event(self, event: Event | object) -> None:
        """Events of the conversation (synchronous: it never waits on the socket)."""
        if not isinstance(event, ResponseAudioDelta):
            bridge.observe(self.state, self.session_id, event)
        if isinstance(event, ResponseAudioDelta):
            self._audio(event)
        elif isinstance(event, ResponseTextDelta):
            reply = self.replies.get(event.response_id)
            if reply is not None:
                self._open_message(reply)
                reply.transcript += event.delta
                reply.text_deltas += 1
                self.send({"type": "response.output_audio_transcript.delta",
                           **self._where(reply), "delta": event.delta})
        elif isinstance(event, SpeechStarted):
            self._say_speech_stopped()  # a turn that never ended is over
            self.user_item = new_id("item")
            self.send({"type": "input_audio_buffer.speech_started",
                       "audio_start_ms": round(event.audio_start_ms), "item_id": self.user_item})
        elif isinstance(event, SpeechStopped):
            # Said once the turn is over (as the API's VAD does after its silence), not
            # at every pause the caller may talk through.
            self.user_item = self.user_item or new_id("item")
            self.speech_stopped = event
        elif isinstance(event, TurnIgnored):
            self._say_speech_stopped()
        elif isinstance(event, TranscriptDelta):
            if self.settings.transcription is not None and self.user_item is not None:
                self.send({"type": "conversation.item.input_audio_transcription.delta",
                           "item_id": self.user_item, "content_index": 0, "delta": event.text})
        elif isinstance(event, TranscriptFinal):
            self._user_turn(event)
        elif isinstance(event, ResponseAudioClear):
            # The reply was cut: audio of it still waiting to go out would play after
            # the cut, so it never leaves (the core sends none after the clear).
            self.outbound.purge_audio(event.response_id)
        elif isinstance(event, ResponseCreated):
            self._reply_created(event.response_id)
        elif isinstance(event, ResponseToolCall):
            self._tool_call(event)
        elif isinstance(event, ResponseDone):
            self._reply_done(event)
        elif isinstance(event, ErrorEvent):
            self.send({"type": "error", "error": error_body(
                event.code, event.message, category=event.category)})
            if event.fatal:
                self.finish(CLOSE_NORMAL, "error", flush=True)
        elif isinstance(event, SessionEnded):
            self.finish(CLOSE_NORMAL, event.reason, flush=True)

    def _say_speech_stopped(self) -> None:
        stopped, self.speech_stopped = self.speech_stopped, None
        if stopped is not None and self.user_item is not None:
            self.send({"type": "input_audio_buffer.speech_stopped",
                       "audio_end_ms": round(stopped.audio_end_ms), "item_id": self.user_item})

    def _user_turn(self, event: TranscriptFinal) -> None:
        self._say_speech_stopped()
        item_id = self.user_item or new_id("item")
        self.user_item = None
        self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                   "previous_item_id": self.last_item_id()})
        self.add_item(user_audio_item(item_id, event.text))
        if self.settings.transcription is not None:
            seconds = max(0.0, (event.audio_end_ms - event.audio_start_ms) / 1000.0)
            self.send({"type": "conversation.item.input_audio_transcription.completed",
                       "item_id": item_id, "content_index": 0, "transcript": event.text,
                       "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    def _reply_created(self, response_id: str) -> None:
        metadata, out_of_band = self.requested or (None, False)
        self.requested = None
        reply = _Reply(response_id, metadata, out_of_band)
        self.replies[response_id] = reply
        self.send({"type": "response.created", "response": self._response(reply, "in_progress")})

    def _response(self, reply: _Reply, status: str, **extra: Any) -> dict[str, Any]:
        config = self.conversation.config
        view = self.session_view()["audio"]["output"]
        return response_object(
            reply.response_id, status, output=reply.output, metadata=reply.metadata,
            out_of_band=reply.out_of_band, voice=view["voice"], output_format=view["format"],
            max_output_tokens=self.settings.max_output_tokens
            if self.settings.max_output_tokens == "inf" else config.max_response_tokens,
            **extra,
        )

    def _where(self, reply: _Reply) -> dict[str, Any]:
        return {"response_id": reply.response_id, "item_id": reply.item_id,
                "output_index": len(reply.output) - 1, "content_index": 0}

    def _open_message(self, reply: _Reply) -> None:
        if reply.item_id is not None:
            return
        reply.item_id = item_id = new_id("item")
        item = assistant_item(item_id, "in_progress", None)
        reply.output.append(item)
        if not reply.out_of_band:  # only the conversation's items can be truncated
            self.item_reply[item_id] = reply.response_id
            self.item_audio_ms[item_id] = 0.0
        self.send({"type": "response.output_item.added", "response_id": reply.response_id,
                   "output_index": len(reply.output) - 1, "item": item})
        if not reply.out_of_band:
            self.add_item(item)
        self.send({"type": "response.content_part.added", **self._where(reply),
                   "part": {"type": "audio", "transcript": ""}})

    def _audio(self, event: ResponseAudioDelta) -> None:
        reply = self.replies.get(event.response_id)
        if reply is None or event.response_id in self.dropped_replies:
            return
        settings = self.state.settings
        if (len(self.outbound) >= settings.slow_client_frames
                or self.outbound.bytes >= settings.slow_client_bytes):
            self.state.metrics.dropped_audio.inc()
            self.dropped_replies.add(event.response_id)
            self.error("client_too_slow", "events wait for you to read them; reply audio is "
                       "being dropped and the reply cancelled")
            asyncio.get_running_loop().call_soon(
                self.conversation.cancel_response, event.response_id, "client_too_slow")
            return
        self._open_message(reply)
        assert reply.item_id is not None
        if reply.item_id in self.item_audio_ms:
            self.item_audio_ms[reply.item_id] += event.duration_ms
        audio = event.audio
        if self.settings.output_format is AudioFormat.PCMU:
            audio = mulaw.encode_float(pcm16_to_float(audio))
        self.send({"type": "response.output_audio.delta", **self._where(reply),
                   "delta": base64.b64encode(audio).decode()}, audio_of=event.response_id)

    def _tool_call(self, event: ResponseToolCall) -> None:
        reply = self.replies.get(event.response_id)
        if reply is None or event.executor != "client":
            return  # a server tool runs here; the client sees its effect, not the call
        item = function_call_item(new_id("item"), event.call_id, event.name, event.arguments,
                                  "completed")
        reply.output.append(item)
        index = len(reply.output) - 1
        self.send({"type": "response.output_item.added", "response_id": reply.response_id,
                   "output_index": index, "item": {**item, "status": "in_progress"}})
        self.send({"type": "response.function_call_arguments.done",
                   "response_id": reply.response_id, "item_id": item["id"],
                   "output_index": index, "call_id": event.call_id, "name": event.name,
                   "arguments": event.arguments})
        self.send({"type": "response.output_item.done", "response_id": reply.response_id,
                   "output_index": index, "item": item})
        if not reply.out_of_band:
            self.add_item(item)

    def _reply_done(self, event: ResponseDone) -> None:
        reply = self.replies.pop(event.response_id, None)
        if reply is None:
            return
        self.dropped_replies.discard(event.response_id)
        completed = event.status is ResponseStatus.COMPLETED
        if reply.item_id is not None:
            where = self._where(reply)
            where["output_index"] = next(
                i for i, item in enumerate(reply.output) if item["id"] == reply.item_id)
            heard = event.text if completed else event.text_heard
            item = assistant_item(reply.item_id, "completed" if completed else "incomplete",
                                  heard)
            reply.output[where["output_index"]] = item
            if reply.item_id in self.items:
                self.items[reply.item_id] = item
            self.send({"type": "response.output_audio.done", **where})
            self.send({"type": "response.output_audio_transcript.done", **where,
                       "transcript": heard})
            self.send({"type": "response.content_part.done", **where,
                       "part": {"type": "audio", "transcript": heard}})
            self.send({"type": "response.output_item.done", "response_id": reply.response_id,
                       "output_index": where["output_index"], "item": item})
            if not reply.out_of_band:
                self.send({"type": "conversation.item.done", "item": item})
        status = {ResponseStatus.COMPLETED: "completed", ResponseStatus.CANCELLED: "cancelled",
                  ResponseStatus.FAILED: "failed"}[event.status]
        details: dict[str, Any] = {"type": status}
        if event.status is ResponseStatus.CANCELLED:
            details["reason"] = CANCEL_REASONS.get(event.reason or "", "client_cancelled")
        elif event.status is ResponseStatus.FAILED:
            details["error"] = {"type": "server_error", "code": event.reason}
        # Tokens the model streamed (one text delta per token from llama.cpp and vLLM);
        # the prompt's tokens are not counted here, so they are left out.
        usage = {"output_tokens": reply.text_deltas, "total_tokens": reply.text_deltas,
                 "output_token_details": {"text_tokens": reply.text_deltas, "audio_tokens": 0}}
        self.send({"type": "response.done", "response": self._response(
            reply, status, status_details=details, usage=usage)})
        self.rate_limits()


async def _endpoint(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.voiceforge
    slot = await intake.admit_websocket(websocket, intake.Transport.REALTIME)
    if slot is None:
        return
    try:
        await _serve(websocket, state)
    finally:
        slot.release()


async def _serve(websocket: WebSocket, state: AppState) -> None:
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    model = websocket.query_params.get("model", "voiceforge")[:64]
    call = RealtimeCall(websocket, state, model)
    state.sessions.add(call)
    conversation = call.conversation
    bridge.session_opened(state, conversation, intake.Transport.REALTIME)
    logger.info("session=%s opened (realtime)", call.session_id,
                extra={"session_id": call.session_id})
    call.send({"type": "session.created", "session": call.session_view()})
    conversation.start()
    call.writer_task = writer = asyncio.create_task(call.writer(), name=f"{call.session_id}-w")
    call.reader = reader = asyncio.create_task(_read(websocket, call), name=f"{call.session_id}-r")
    ended_by = "client_closed"
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                ended_by = "error"
                raise exc
        if call.closing is not None and call.closing[2] and not writer.done():
            await asyncio.wait({writer}, timeout=2.0)
    finally:
        reader.cancel()
        writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
        await conversation.close()
        state.sessions.discard(call)
        code = call.closing[0] if call.closing is not None else CLOSE_GOING_AWAY
        if call.closing is not None:
            ended_by = call.closing[1]
        bridge.session_closed(state, conversation, ended_by)
        state.metrics.disconnects.labels(ended_by).inc()
        logger.info("session=%s closed (%s, %d)", call.session_id, ended_by, code,
                    extra={"session_id": call.session_id})
        call.reader = call.writer_task = None
        if WebSocketState.DISCONNECTED not in (websocket.client_state,
                                               websocket.application_state):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code), 2.0)


async def _read(websocket: WebSocket, call: RealtimeCall) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect" or call.closing is not None:
            return
        text = message.get("text")
        if text is None:
            if call.admit(time.monotonic()):
                call.error("invalid_event", "events are JSON text frames, not binary")
            continue
        call.handle_text(text)


routes = [WebSocketRoute("/v1/realtime", _endpoint)]
