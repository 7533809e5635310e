"""``/v1/realtime``'s client events: what each one asks of the conversation.

Each handler takes the call (agent/realtime.py) and the event, already parsed as
JSON; a ``RealtimeError`` it raises is sent back as the API's ``error`` event and
the session goes on. The shapes are agent/realtime_events.py's.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent import bridge
from agent.protocol import shown
from agent.realtime_events import (
    AudioFormat,
    RealtimeError,
    item_text,
    message_item,
    new_id,
    parse_response_create,
    parse_session,
)
from pipeline import mulaw
from pipeline.audio import pcm16_to_float
from pipeline.errors import AudioFormatError

if TYPE_CHECKING:
    from agent.realtime import RealtimeCall


def on_session_update(call: RealtimeCall, event: dict[str, Any]) -> None:
    engines = call.state.engines
    settings, fields, pad = parse_session(
        event.get("session"), call.settings, list(engines.tts.voices()),
        bridge.end_of_turn_policies(engines), call.state.settings.max_response_tokens,
    )
    updated = bridge.updated_config(call.state, call.conversation.config, fields)
    detection = settings.turn_detection
    updated = replace(updated, manual_turns=detection is None, auto_reply=detection is None
                      or detection.get("create_response", True) is not False)
    if pad is not None:
        updated = replace(updated, speech_pad_ms=pad)
    call.conversation.update(updated)
    call.settings = settings
    call.send({"type": "session.updated", "session": call.session_view()})


def on_append(call: RealtimeCall, event: dict[str, Any]) -> None:
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise RealtimeError("invalid_value", "audio must be base64 text", "audio")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("invalid_value", "audio is not valid base64", "audio") from None
    config = call.conversation.config
    if call.settings.input_format is AudioFormat.PCMU:
        samples = mulaw.decode_float(data)
    else:
        try:
            samples = pcm16_to_float(data)
        except AudioFormatError as exc:
            raise RealtimeError("invalid_value", str(exc), "audio") from None
    now = time.monotonic()
    audio_ms = len(samples) * 1000.0 / config.input_sample_rate
    if not call.limiter.accept(audio_ms, now):
        if now - call.last_limit_error > 1.0:
            call.last_limit_error = now
            call.error("audio_rate_exceeded", "audio arrives faster than "
                       f"{call.state.settings.max_audio_realtime_factor}x real time; "
                       "audio is being dropped")
        return
    if not call.conversation.feed_audio(samples):
        call.error("input_overloaded", "input audio queue is full; audio dropped",
                   category="transient")


def on_commit(call: RealtimeCall, event: dict[str, Any]) -> None:
    if call.conversation.config.manual_turns:
        if not call.conversation.commit_input():
            raise RealtimeError("input_audio_buffer_commit_empty", "buffer too small: a "
                                "commit needs at least 100 ms of audio appended since the last")
        return
    if not call.conversation.commit_input():
        raise RealtimeError("input_audio_buffer_commit_empty", "nothing to commit: no "
                            "speech is waiting for the end of its turn (with server_vad "
                            "the server commits turns itself)")


def on_clear(call: RealtimeCall, event: dict[str, Any]) -> None:
    call.conversation.clear_input()
    call.user_item = None
    call.send({"type": "input_audio_buffer.cleared"})


def on_item_create(call: RealtimeCall, event: dict[str, Any]) -> None:
    item = event.get("item")
    if isinstance(item, dict) and item.get("type") == "function_call_output":
        _tool_output(call, item)
        return
    if event.get("previous_item_id") not in (None, call.last_item_id()):
        raise RealtimeError("unsupported_feature", "items are added at the end of the "
                            "conversation only", "previous_item_id")
    role, text = item_text(item)
    call.conversation.add_text(role, text)
    item_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(item_id, str) or not 0 < len(item_id) <= 64 or item_id in call.items:
        item_id = new_id("item")
    call.add_item(message_item(item_id, role, text))


def _tool_output(call: RealtimeCall, item: dict[str, Any]) -> None:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str) or not isinstance(output, str):
        raise RealtimeError("invalid_value", "function_call_output takes call_id and "
                            "output strings", "item")
    if not call.conversation.tool_result(call_id, output):
        raise RealtimeError("invalid_value", f"no function call {shown(call_id)} is waiting "
                            "for its output (answered already, timed out, or never made)",
                            "item.call_id")
    reply = _conversation_reply(call)
    call.tool_continues = reply
    call.add_item({"id": new_id("item"), "object": "realtime.item",
                    "type": "function_call_output", "status": "completed",
                    "call_id": call_id, "output": output})


def _conversation_reply(call: RealtimeCall) -> str | None:
    """The reply in progress (the one a tool result goes back to)."""
    return next(reversed(call.replies), None)


def _item(call: RealtimeCall, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    item_id = event.get("item_id")
    if not isinstance(item_id, str) or item_id not in call.items:
        raise RealtimeError("item_not_found", f"no item {shown(item_id)} in this "
                            "conversation", "item_id")
    return item_id, call.items[item_id]


def on_item_retrieve(call: RealtimeCall, event: dict[str, Any]) -> None:
    _, item = _item(call, event)
    call.send({"type": "conversation.item.retrieved", "item": item})


def on_item_delete(call: RealtimeCall, event: dict[str, Any]) -> None:
    item_id, item = _item(call, event)
    if item.get("type") == "message":
        text = _text_of(item)
        if text:
            call.conversation.history.rewrite(str(item["role"]), text, "")
    del call.items[item_id]
    call.send({"type": "conversation.item.deleted", "item_id": item_id})


def on_item_truncate(call: RealtimeCall, event: dict[str, Any]) -> None:
    item_id, item = _item(call, event)
    reply_id = call.item_reply.get(item_id)
    if reply_id is None:
        raise RealtimeError("invalid_value", "only an assistant's audio can be truncated",
                            "item_id")
    if event.get("content_index", 0) != 0:
        raise RealtimeError("invalid_value", "content_index must be 0", "content_index")
    end_ms = event.get("audio_end_ms")
    if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
        raise RealtimeError("invalid_value", "audio_end_ms: an integer >= 0", "audio_end_ms")
    if end_ms > call.item_audio_ms.get(item_id, 0.0) + 1.0:
        raise RealtimeError("invalid_value", f"audio_end_ms ({end_ms}) is greater than the "
                            f"audio's length ({call.item_audio_ms.get(item_id, 0.0):.0f} "
                            "ms)", "audio_end_ms")
    if not call.conversation.stop_playback(reply_id, float(end_ms)):
        heard = call.conversation.truncate_finished(reply_id, float(end_ms))
        if heard is None:
            raise RealtimeError("invalid_value", "that reply is too old to truncate",
                                "item_id")
        item["content"][0]["transcript"] = heard
    # A reply still running: its transcript is cut when it ends (response.done).
    call.send({"type": "conversation.item.truncated", "item_id": item_id,
               "content_index": 0, "audio_end_ms": end_ms})


def on_response_create(call: RealtimeCall, event: dict[str, Any]) -> None:
    request, metadata = parse_response_create(
        event.get("response"), call.conversation.config.max_response_tokens
    )
    if call.tool_continues is not None and call.tool_continues in call.replies:
        # The reply that made the call goes on with its output: it is the answer.
        call.tool_continues = None
        return
    call.tool_continues = None
    call.requested = (metadata, request.out_of_band)
    call.conversation.respond(request)


def on_response_cancel(call: RealtimeCall, event: dict[str, Any]) -> None:
    response_id = event.get("response_id")
    if response_id is not None and not isinstance(response_id, str):
        raise RealtimeError("invalid_value", "response_id must be a string", "response_id")
    if not call.conversation.cancel_response(response_id):
        raise RealtimeError("response_cancel_not_active", "no response is in progress"
                            + (f" with id {shown(response_id)}" if response_id else ""))


def _text_of(item: dict[str, Any]) -> str:
    parts = item.get("content") or []
    return " ".join(
        str(part.get("text") or part.get("transcript") or "") for part in parts
    ).strip()


HANDLERS: dict[str, Callable[[RealtimeCall, dict[str, Any]], None]] = {
    "session.update": on_session_update,
    "input_audio_buffer.append": on_append,
    "input_audio_buffer.commit": on_commit,
    "input_audio_buffer.clear": on_clear,
    "conversation.item.create": on_item_create,
    "conversation.item.retrieve": on_item_retrieve,
    "conversation.item.delete": on_item_delete,
    "conversation.item.truncate": on_item_truncate,
    "response.create": on_response_create,
    "response.cancel": on_response_cancel,
}
