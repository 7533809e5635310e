"""``/v1/realtime`` driven by the official ``openai`` SDK, unmodified, pointed at a
real server (embedded engines) by ``base_url``: a spoken turn, a reply cut short with
``conversation.item.truncate``, a typed turn, out-of-band replies, bad events."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from agent.config import Settings
from pipeline import mulaw as g711
from pipeline.audio import float_to_pcm16
from pipeline.conversation import Conversation, Engines
from tests.e2e.conftest import RunningServer, sharing, start_server
from tests.speech import silence, speak

API_KEY = "sk-realtime-test-key-0123456789"
EVENT_TIMEOUT_S = 120.0
"""A reply on the shared two-core CI machine; a hang fails the test, never waits forever."""


def client_for(server: RunningServer, api_key: str = "sk-unused") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.http}/v1", api_key=api_key)


async def next_of(conn: AsyncRealtimeConnection, *types: str, max_events: int = 5000) -> Any:
    """The next event of one of ``types`` (errors other than those asked for fail)."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        for _ in range(max_events):
            event = await conn.recv()
            if event.type in types:
                return event
            assert event.type != "error", event
    raise AssertionError(f"none of {types} within {max_events} events")


async def send_speech(conn: AsyncRealtimeConnection, text: str, *, mulaw: bool = False) -> None:
    """``text`` spoken at 24 kHz PCM16 (or 8 kHz µ-law), then silence, as 100 ms
    appends at real time."""
    rate = 8000 if mulaw else 24000
    audio = np.concatenate([speak(text, rate), silence(1.2, rate)])
    pcm = g711.encode_float(audio) if mulaw else float_to_pcm16(audio)
    step = 800 if mulaw else 4800  # 100 ms
    for offset in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset:offset + step])
                                             .decode())
        await asyncio.sleep(0.1)


def conversation_of(server: RunningServer, session_id: str) -> Conversation:
    found = server.conversation(session_id)
    assert isinstance(found, Conversation)
    return found


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[AsyncRealtimeConnection]:
    async with client_for(server).realtime.connect(model="gpt-realtime") as connection:
        created = await next_of(connection, "session.created")
        assert created.session.audio.input.format.rate == 24000
        connection.session_id = created.session.id  # type: ignore[attr-defined]
        yield connection


async def test_a_spoken_turn_is_transcribed_and_answered_in_audio(
    conn: AsyncRealtimeConnection,
) -> None:
    await conn.session.update(session={
        "type": "realtime", "instructions": "Answer in one short sentence.",
        "audio": {"input": {"transcription": {"model": "whisper-1"},
                            "turn_detection": {"type": "server_vad",
                                               "silence_duration_ms": 600}},
                  "output": {"voice": "alloy"}},
    })
    updated = await next_of(conn, "session.updated")
    assert updated.session.audio.input.turn_detection.silence_duration_ms == 600
    feeding = asyncio.create_task(send_speech(conn, "What is the capital of France?"))
    try:
        started = await next_of(conn, "input_audio_buffer.speech_started")
        # One speech_stopped per turn, when it is over (the words have pauses in them).
        stopped = await next_of(conn, "input_audio_buffer.speech_stopped")
        committed = await next_of(conn, "input_audio_buffer.speech_stopped",
                                  "input_audio_buffer.committed")
        assert committed.type == "input_audio_buffer.committed"
        assert started.item_id == stopped.item_id == committed.item_id
        assert stopped.audio_end_ms > started.audio_start_ms + 1000
        transcript = await next_of(conn, "conversation.item.input_audio_transcription.completed")
        assert transcript.item_id == committed.item_id
        assert "france" in transcript.transcript.lower()
        created = await next_of(conn, "response.created")
        audio = bytearray()
        spoken = ""
        while True:
            event = await next_of(conn, "response.output_audio.delta",
                                  "response.output_audio_transcript.delta", "response.done")
            if event.type == "response.done":
                break
            assert event.response_id == created.response.id
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            else:
                spoken += event.delta
    finally:
        await feeding
    assert event.response.status == "completed"
    assert event.response.usage.output_tokens > 0
    [item] = event.response.output
    assert item.content[0].transcript == spoken and spoken.strip()
    # Seconds of real speech at 24 kHz, not a token beep.
    samples = np.frombuffer(bytes(audio), dtype=np.int16)
    assert len(samples) > 24000 * 0.5
    assert np.abs(samples).max() > 1000


async def test_without_create_response_a_spoken_turn_waits_for_response_create(
    conn: AsyncRealtimeConnection,
) -> None:
    await conn.session.update(session={"type": "realtime", "audio": {"input": {
        "transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "create_response": False}}}})
    updated = await next_of(conn, "session.updated")
    assert updated.session.audio.input.turn_detection.create_response is False
    feeding = asyncio.create_task(send_speech(conn, "What is the capital of France?"))
    try:
        transcript = await next_of(conn, "conversation.item.input_audio_transcription.completed",
                                   "response.created")
        assert transcript.type == "conversation.item.input_audio_transcription.completed"
        await conn.response.create(response={"metadata": {"asked": "yes"}})
        created = await next_of(conn, "response.created")
        assert created.response.metadata == {"asked": "yes"}  # the one asked for, only
        done = await next_of(conn, "response.done")
    finally:
        await feeding
    assert done.response.status == "completed"


async def test_a_turn_in_g711_mulaw_both_ways(conn: AsyncRealtimeConnection) -> None:
    await conn.session.update(session={"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
        "output": {"format": {"type": "audio/pcmu"}}}})
    updated = await next_of(conn, "session.updated")
    assert updated.session.audio.output.format.type == "audio/pcmu"
    feeding = asyncio.create_task(send_speech(conn, "What is the capital of France?",
                                              mulaw=True))
    try:
        transcript = await next_of(conn, "conversation.item.input_audio_transcription.completed")
        # Telephone-band speech: tiny.en may hear "France" as "friend".
        assert "capital" in transcript.transcript.lower()
        reply = bytearray()
        while (event := await next_of(conn, "response.output_audio.delta", "response.done")
               ).type != "response.done":
            reply += base64.b64decode(event.delta)
    finally:
        await feeding
    assert event.response.status == "completed"
    # One byte per 8 kHz sample; decoded, it is speech, not silence.
    samples = g711.decode(bytes(reply))
    assert len(samples) > 8000 * 0.5 and np.abs(samples).max() > 1000


async def test_manual_turns_commit_then_reply_on_request(
    conn: AsyncRealtimeConnection, server: RunningServer,
) -> None:
    await conn.session.update(session={"type": "realtime", "audio": {"input": {
        "turn_detection": None, "transcription": {"model": "whisper-1"}}}})
    assert (await next_of(conn, "session.updated")).session.audio.input.turn_detection is None
    await conn.input_audio_buffer.commit()  # nothing appended yet
    assert (await next_of(conn, "error")).error.code == "input_audio_buffer_commit_empty"
    pcm = float_to_pcm16(speak("What is the capital of France?", 24000))
    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[:9600]).decode())
    await conn.input_audio_buffer.clear()  # what was appended is gone: nothing to commit
    await next_of(conn, "input_audio_buffer.cleared")
    await conn.input_audio_buffer.commit()
    assert (await next_of(conn, "error")).error.code == "input_audio_buffer_commit_empty"
    for offset in range(0, len(pcm), 4800):  # no silence after: the client ends the turn
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset:offset + 4800])
                                             .decode())
        await asyncio.sleep(0.08)  # within the server's audio rate limit (2x real time)
    await conn.input_audio_buffer.commit()
    await conn.response.create(response={"metadata": {"asked": "yes"}})
    seen: list[str] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while (event := await conn.recv()).type != "response.done":
            assert event.type != "error", event
            seen.append(event.type)
            if event.type == "conversation.item.input_audio_transcription.completed":
                # Cut right at the words' end, tiny.en sometimes hears "friends".
                assert "capital" in event.transcript.lower()
            if event.type == "response.created":
                # The reply is the one asked for, after the committed words were heard.
                assert event.response.metadata == {"asked": "yes"}
                assert "conversation.item.input_audio_transcription.completed" in seen
    assert "input_audio_buffer.speech_started" not in seen  # no VAD in manual turns
    assert seen.count("response.created") == 1 and event.response.status == "completed"
    history = conversation_of(server, conn.session_id).history.messages()  # type: ignore[attr-defined]
    assert [m["role"] for m in history[-2:]] == ["user", "assistant"]
    assert "capital" in history[-2]["content"].lower()


async def test_a_truncated_reply_leaves_only_what_was_heard_in_history(
    conn: AsyncRealtimeConnection, server: RunningServer,
) -> None:
    await conn.session.update(session={
        "type": "realtime",
        "instructions": "Answer with at least four full sentences of detail.",
    })
    await next_of(conn, "session.updated")
    await conn.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Tell me about the history of Paris."}],
    })
    await next_of(conn, "conversation.item.added")
    await conn.response.create()
    added = await next_of(conn, "response.output_item.added")
    received_ms = 0.0
    generated = ""
    while received_ms < 3000:
        event = await next_of(conn, "response.output_audio.delta",
                              "response.output_audio_transcript.delta", "response.done")
        assert event.type != "response.done", "the reply ended before 3 s of audio"
        if event.type == "response.output_audio.delta":
            received_ms += len(base64.b64decode(event.delta)) / 2 / 24000 * 1000
        else:
            generated += event.delta
    # The client stopped its playback half-way through what it had received.
    played_ms = int(received_ms / 2)
    await conn.conversation.item.truncate(item_id=added.item.id, content_index=0,
                                          audio_end_ms=played_ms)
    truncated = await next_of(conn, "conversation.item.truncated")
    assert (truncated.item_id, truncated.audio_end_ms) == (added.item.id, played_ms)
    done = await next_of(conn, "response.done")
    assert done.response.status == "cancelled"
    heard = done.response.output[0].content[0].transcript
    assert heard and generated.strip().startswith(heard.split()[0])
    assert len(heard) < len(generated)
    await conn.conversation.item.retrieve(item_id=added.item.id)
    retrieved = await next_of(conn, "conversation.item.retrieved")
    assert retrieved.item.content[0].transcript == heard
    history = conversation_of(server, conn.session_id).history.messages()  # type: ignore[attr-defined]
    assert history[-1] == {"role": "assistant", "content": heard}


async def test_typed_items_and_out_of_band_replies(
    conn: AsyncRealtimeConnection, server: RunningServer,
) -> None:
    await conn.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Say hello to me."}],
    })
    added = await next_of(conn, "conversation.item.added")
    assert added.item.role == "user" and added.item.content[0].text == "Say hello to me."
    await conn.response.create()
    done = await next_of(conn, "response.done")
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].transcript.strip()
    history = conversation_of(server, conn.session_id).history  # type: ignore[attr-defined]
    turns = len(history)
    await conn.response.create(response={
        "conversation": "none", "instructions": "Reply with the single word: yes.",
        "metadata": {"purpose": "check"}, "max_output_tokens": 8,
    })
    created = await next_of(conn, "response.created")
    assert created.response.metadata == {"purpose": "check"}
    done = await next_of(conn, "response.done")
    assert done.response.status == "completed"
    assert done.response.conversation_id is None
    assert 0 < done.response.usage.output_tokens <= 8
    assert len(history) == turns  # out of band: nothing written to the conversation
    await conn.conversation.item.delete(item_id=added.item.id)
    deleted = await next_of(conn, "conversation.item.deleted")
    assert deleted.item_id == added.item.id
    assert all(m["content"] != "Say hello to me." for m in history.messages())


def sample(server: RunningServer, name: str, **labels: str) -> float:
    value = server.app_state.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_bad_events_get_the_apis_errors_and_the_session_goes_on(
    conn: AsyncRealtimeConnection, server: RunningServer,
) -> None:
    errors_before = sample(server, "voiceforge_errors_total", code="invalid_json",
                           category="client")
    completed_before = sample(server, "voiceforge_responses_total", status="completed")

    async def refused(event: Any, code: str, param: str | None = None) -> None:
        if isinstance(event, str):
            await conn.send_raw(event)
        else:
            await conn.send(event)
        error = await next_of(conn, "error")
        assert error.error.code == code, error
        assert error.error.type == "invalid_request_error"
        if param is not None:
            assert error.error.param == param

    await refused("not json at all", "invalid_json")
    # Counted as /ws counts its errors.
    assert sample(server, "voiceforge_errors_total", code="invalid_json",
                  category="client") == errors_before + 1
    await refused(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 300_000}),
                  "frame_too_large")
    await refused(json.dumps({"type": "no.such.event", "event_id": "e1"}), "invalid_event")
    await refused({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}},
        "unsupported_feature", "item.content[0].type")
    await refused({"type": "input_audio_buffer.append", "audio": "@@not base64@@"},
                  "invalid_value", "audio")
    await refused({"type": "conversation.item.truncate", "item_id": "item_nope",
                   "content_index": 0, "audio_end_ms": 10}, "item_not_found", "item_id")
    await refused({"type": "response.cancel"}, "response_cancel_not_active")
    await refused({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"]}},
        "unsupported_feature", "session.output_modalities")
    await refused({"type": "session.update", "session": {
        "type": "realtime", "audio": {"output": {"voice": "no-such-voice"}}}},
        "invalid_value", "session.audio.output.voice")
    # The session still works: a typed turn is answered.
    await conn.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi!"}]})
    await conn.response.create()
    done = await next_of(conn, "response.done")
    assert done.response.status == "completed"
    assert sample(server, "voiceforge_responses_total",
                  status="completed") == completed_before + 1


@pytest.fixture(scope="module")
def keyed_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from start_server(Settings(api_key=API_KEY), sharing(embedded_engines))


async def test_the_key_by_header_or_browser_subprotocol_and_tokens_open_a_session(
    keyed_server: RunningServer,
) -> None:
    async with client_for(keyed_server, API_KEY).realtime.connect(model="m") as connection:
        assert (await next_of(connection, "session.created")).session.model == "m"
    url = keyed_server.http.replace("http", "ws") + "/v1/realtime?model=m"
    async with websockets.connect(
        url, subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}"]  # type: ignore[list-item]
    ) as browser_like:
        assert browser_like.subprotocol == "realtime"
        assert json.loads(await browser_like.recv())["type"] == "session.created"
    for wrong in ("sk-wrong", ""):
        with pytest.raises(websockets.InvalidStatus):
            async with client_for(keyed_server, wrong or "x").realtime.connect(model="m"):
                pass
    import httpx

    async with httpx.AsyncClient() as http:
        minted = await http.post(f"{keyed_server.http}/v1/session-tokens",
                                 headers={"Authorization": f"Bearer {API_KEY}"})
    token = minted.json()["token"]
    async with client_for(keyed_server, token).realtime.connect(model="m") as connection:
        assert (await next_of(connection, "session.created")).type == "session.created"
