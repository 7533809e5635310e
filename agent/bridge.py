"""What the phone bridges (WebRTC, telephony) share with ``/ws``: metrics, the event
wire format, the echo guard settings, and an estimate of when sent audio plays."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import msgpack

from agent.protocol import (
    ProtocolError,
    ServerMessage,
    SessionUpdated,
    encode_server_message,
    parse_session_fields,
)
from pipeline.echo import EchoGuard, EchoGuardConfig
from pipeline.events import (
    ErrorEvent,
    ResponseAudioDelta,
    ResponseDone,
    ResponseStatus,
    ResponseToolResult,
    TranscriptFinal,
)
from pipeline.turn import TurnConfig

if TYPE_CHECKING:
    from agent.state import AppState
    from pipeline.conversation import Conversation, Engines, SessionConfig

logger = logging.getLogger("voiceforge.bridge")


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
        "read_ahead_interval_ms": config.read_ahead_interval_ms,
        "speculative_response": config.speculative_response,
        "speculative_transcript": config.speculative_transcript,
        "first_chunk_at_clause": config.chunker.first_chunk_at_clause,
        "first_chunk_max_words": config.chunker.first_chunk_max_words,
        "first_chunk_priority": config.first_chunk_priority,
        "playback_pause": config.playback_pause,
        "record_audio": config.record_audio,
        "tools": [
            {
                "type": "function",
                "name": spec.name,
                "description": spec.description,
                "parameters": dict(spec.parameters),
            }
            for spec in config.tools
        ],
        "tool_choice": config.tool_choice,
        "tool_timeout_ms": config.tool_timeout_ms,
        "tool_filler_ms": config.tool_filler_ms,
        "end_call_grace_ms": config.end_call_grace_ms,
    }


def end_of_turn_policies(engines: Engines) -> list[str]:
    """The ``session.turn.end_of_turn_policy`` values this server can run."""
    return ["silence", "learned"] if engines.smart_turn is not None else ["silence"]


def updated_config(
    state: AppState, current: SessionConfig, fields: dict[str, Any]
) -> SessionConfig:
    """``current`` with a ``session.update`` applied, all or nothing; raises
    ProtocolError (with the code to send) when any field is refused."""
    try:
        changes = parse_session_fields(
            fields, list(state.engines.tts.voices()), state.session_caps()
        )
        turn = changes.pop("turn", None)
        if turn is not None:
            changes["turn"] = TurnConfig(**{**asdict(current.turn), **turn})
            policy = changes["turn"].end_of_turn_policy
            if policy not in end_of_turn_policies(state.engines):
                raise ProtocolError(
                    "invalid_session",
                    f"end_of_turn_policy {policy!r} needs the end-of-turn model, "
                    "which this server does not run",
                )
        if changes.get("record_audio") and state.settings.recordings == "off":
            raise ProtocolError(
                "invalid_session", "this server records no calls (VOICEFORGE_RECORDINGS=off)"
            )
        chunking = {
            name: changes.pop(name)
            for name in ("first_chunk_at_clause", "first_chunk_max_words")
            if name in changes
        }
        if chunking:
            changes["chunker"] = replace(current.chunker, **chunking)
        return replace(current, **changes)
    except (TypeError, ValueError) as exc:
        raise ProtocolError("invalid_session", str(exc)) from None


def session_opened(state: AppState, conversation: Conversation, transport: str, *,
                   resumed_from: tuple[float, int] | None = None) -> None:
    """Every transport calls this when its call goes live; ``resumed_from``: a resumed
    call's (start time, record entries so far)."""
    state.metrics.sessions.inc()
    state.metrics.sessions_active.inc()
    records = state.records
    if records is not None:
        call_id = conversation.session_id
        records.open(call_id, transport, session_view(conversation.config),
                     resumed_from=resumed_from)
        conversation.on_text_input = lambda text: records.text_input(call_id, text)
        if records.recordings is not None:
            conversation.on_input_frame = lambda frame: records.caller_audio(call_id, frame)
    if state.draining:
        # Set up while the drain began: the drain's list of calls missed it, and a
        # draining server starts no reply on any call.
        conversation.accepting_turns = False


def session_closed(state: AppState, conversation: Conversation, reason: str) -> None:
    """Every transport calls this once its call has ended (``reason``: why)."""
    state.metrics.sessions_active.dec()
    if state.records is not None:
        state.records.close(conversation.session_id, reason)


_ENGINE_OF_CODE = {
    "stt_failed": "stt",
    "llm_unavailable": "llm",
    "llm_timeout": "llm",
    "llm_failed": "llm",
    "tts_failed": "tts",
    "engine_failed": "engine",
    "internal_error": "engine",
}


def observe(state: AppState, session_id: str, event: object) -> None:
    """What every transport does with the events of its calls: metrics, logs,
    engine health for ``/readyz``, latency for admission control, call records."""
    if state.records is not None:
        if isinstance(event, SessionUpdated):
            state.records.settings_changed(session_id, event.session)
        else:
            state.records.observe(session_id, event)
    if isinstance(event, ResponseDone):
        state.metrics.observe_response(event)
        answered = event.status is ResponseStatus.COMPLETED and "apology" not in event.timings
        # From the end of the turn: the silence before it is the caller's setting.
        first_audio = event.timings.get("end_of_turn_to_first_audio_ms")
        # Only real answers measure how fast the server answers: a failed turn's
        # apology comes after the timeouts and retries.
        if answered and first_audio is not None and state.admission is not None:
            state.admission.observe(first_audio, session_id, time.monotonic())
        if answered:
            for engine in ("llm", "tts", "engine"):
                state.engine_health.worked(engine)
        logger.info(
            "session=%s response=%s status=%s reason=%s timings=%s",
            session_id,
            event.response_id,
            event.status.value,
            event.reason,
            {k: round(v) for k, v in event.timings.items()},
            extra={"session_id": session_id, "response_id": event.response_id,
                   "status": event.status.value, "reason": event.reason},
        )
    elif isinstance(event, TranscriptFinal):
        state.engine_health.worked("stt")
    elif isinstance(event, ResponseToolResult):
        state.metrics.observe_tool(event, state.engines.tools.get(event.name) is not None)
    elif isinstance(event, ErrorEvent):
        state.metrics.errors.labels(event.code, event.category).inc()
        failing = _ENGINE_OF_CODE.get(event.code)
        # A request the caller made unservable (category client) is not the engine's
        # failure; the others count once they come from several calls (agent/health.py).
        if failing is not None and event.category != "client":
            state.engine_health.failed(
                failing, session_id, f"{event.code} ({event.category})", time.monotonic()
            )
        # A bad frame is answered (and counted) per frame: at debug level, so a client
        # sending garbage at the frame-rate limit cannot flood the log.
        level = {"permanent": logging.ERROR, "transient": logging.WARNING}.get(
            event.category, logging.DEBUG
        )
        logger.log(
            level,
            "session=%s error %s (%s): %s", session_id, event.code, event.category,
            event.message,
            extra={"session_id": session_id, "response_id": event.response_id,
                   "code": event.code, "category": event.category},
        )


def event_json(event: ServerMessage) -> str | None:
    """The protocol message as JSON text, keys as on ``/ws``; None for audio deltas,
    which travel as media instead."""
    if isinstance(event, ResponseAudioDelta):
        return None
    message: dict[str, Any] = msgpack.unpackb(encode_server_message(event), raw=False)
    return json.dumps(message, separators=(",", ":"))


def echo_guard(state: AppState, sample_rate: int, *, echo_cancelled: bool) -> EchoGuard | None:
    """The guard for a call, or None when the peer cancels echo itself or it is off."""
    settings = state.settings
    if echo_cancelled or not settings.echo_guard:
        return None
    config = EchoGuardConfig(echo_return_loss_db=settings.echo_return_loss_db)
    return EchoGuard(config, sample_rate)


class PlayoutClock:
    """When audio sent ahead of time will play at the far end (it plays in order,
    in real time, from when it arrives)."""

    def __init__(self) -> None:
        self.end = 0.0

    def schedule(self, duration_ms: float, now: float) -> float:
        """Start time of ``duration_ms`` of audio sent at ``now``."""
        start = max(now, self.end)
        self.end = start + duration_ms / 1000.0
        return start

    def flush(self, now: float) -> None:
        self.end = now
