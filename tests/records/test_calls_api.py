"""Call records written during real calls (``/ws``, ``/v1/realtime``, WebRTC, telephony) on a real
server, read back through ``/v1/calls`` — against SQLite and a real PostgreSQL
server, which is also stopped mid-call and started again.

The engines are the deterministic bench ones with the real Silero VAD: the records
are what is under test, not the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack
from websockets.asyncio.client import connect

from agent.client import VoiceForgeClient
from agent.config import Settings
from loadtest.postgres import PostgresServer
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.events import ResponseDone, ResponseStatus
from tests.bridges.test_telephony import STREAM_SID, Provider, start_call
from tests.e2e.conftest import RunningServer
from tests.faults.support import AudioSender, bench_engines, collect_until_done, serving
from tests.speech import speak

KEY = "k-records-test-secret-0123456789abcdef"
HEARD = "What is the capital of France?"
REPLY = "Paris is the capital."
RECORD_TIMEOUT_S = 30.0


def records_server(url: str, **settings: Any) -> Iterator[RunningServer]:
    engines = bench_engines(stt=ScriptedSTT([HEARD]),
                            llm=ScriptedLLM(REPLY, tokens_per_second=200, first_token_ms=5))
    with serving(Settings(database_url=url, **settings), engines) as server:
        yield server


serving_records = contextlib.contextmanager(records_server)


@pytest.fixture
def server(db_url: str) -> Iterator[RunningServer]:
    yield from records_server(db_url)


def sample(server: RunningServer, name: str) -> float:
    value = server.app_state.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def auth(key: str | None = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def wait_for_record(
    server: RunningServer, call_id: str, ready: Callable[[dict[str, Any]], bool],
    *, headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The call's record once ``ready`` holds for it (polled; bounded in time)."""
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    last: Any = None
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        while time.monotonic() < deadline:
            reply = await http.get(f"/v1/calls/{call_id}", headers=headers)
            last = reply.json() if reply.status_code in (200, 404, 503) else reply.text
            if reply.status_code == 200 and ready(last):
                return dict(last)
            await asyncio.sleep(0.05)
    raise AssertionError(f"the record of {call_id} was not ready in time: {last}")


def ended(record: dict[str, Any]) -> bool:
    return record["ended_at"] is not None


async def test_a_ws_call_is_recorded_turn_by_turn_and_read_back(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        call_id = client.session_id
        await client.update_session(instructions="Answer in one sentence.")
        await client.send_text("Tell me about France.")
        typed = await collect_until_done(client)
        sender = AudioSender(client)
        await sender.turn(speak(HEARD))
        spoken = await collect_until_done(client)
    for events in (typed, spoken):
        assert [e.status for e in events if isinstance(e, ResponseDone)] == [
            ResponseStatus.COMPLETED]

    record = await wait_for_record(server, call_id, ended)
    assert (record["transport"], record["end_reason"]) == ("ws", "client_closed")
    assert record["settings"]["instructions"] == "Answer in one sentence."
    turns = [entry for entry in record["timeline"] if entry["kind"] == "turn"]
    assert [(t["user_text"], t["inputs"][0]["source"], t["status"]) for t in turns] == [
        ("Tell me about France.", "text", "completed"),
        (HEARD, "speech", "completed"),
    ]
    for turn in turns:
        assert turn["reply_text"] == REPLY
        assert turn["heard_text"] == REPLY
        assert turn["timings"]["llm_first_token_ms"] > 0
    assert turns[1]["inputs"][0]["audio_end_ms"] > turns[1]["inputs"][0]["audio_start_ms"]
    assert "end_of_speech_to_first_audio_ms" in turns[1]["timings"]

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        listed = (await http.get("/v1/calls", params={"transport": "ws", "q": "france"})).json()
        assert [call["id"] for call in listed["calls"]] == [call_id]
        assert listed["calls"][0]["turns"] == 2
        assert (await http.get("/v1/calls", params={"q": "Germany"})).json()["calls"] == []
        assert (await http.get("/v1/calls", params={"end_reason": "client_closed",
                                                    "since": "2000-01-01T00:00:00Z"})
                ).json()["calls"][0]["id"] == call_id
        for bad in ({"transport": "carrier-pigeon"}, {"limit": "0"}, {"since": "yesterday"},
                    {"cursor": "!!"}, {"q": "x" * 201}, {"colour": "red"}):
            refused = await http.get("/v1/calls", params=bad)
            assert (refused.status_code, refused.json()["error"]) == (400, "bad_request"), bad
        assert (await http.delete(f"/v1/calls/{call_id}")).status_code == 204
        assert (await http.get(f"/v1/calls/{call_id}")).status_code == 404
        assert (await http.delete(f"/v1/calls/{call_id}")).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_records_need_the_api_key_itself(db_url: str) -> None:
    with serving_records(db_url, api_key=KEY) as running:
        async with await VoiceForgeClient.connect(running.url, api_key=KEY) as client:
            call_id = client.session_id
            await client.send_text("Hi.")
            await collect_until_done(client)
        await wait_for_record(running, call_id, ended, headers=auth())
        async with httpx.AsyncClient(base_url=running.http, timeout=10) as http:
            minted = await http.post("/v1/session-tokens", headers=auth())
            token = minted.json()["token"]
            for headers in (auth(None), auth("wrong-key"), auth(token)):
                for method, path in (("GET", "/v1/calls"), ("GET", f"/v1/calls/{call_id}"),
                                     ("DELETE", f"/v1/calls/{call_id}")):
                    refused = await http.request(method, path, headers=headers)
                    assert refused.status_code == 401, (method, path, refused.text)
            foreign = await http.get("/v1/calls", headers={
                **auth(), "Origin": "https://evil.example"})
            assert foreign.status_code == 403
            assert (await http.get("/v1/calls", headers=auth())).status_code == 200


async def test_a_call_goes_on_while_the_database_is_stopped_and_loses_no_turn(
    postgres: PostgresServer, tmp_path: Path,
) -> None:
    with serving_records(postgres.create_database("calls_midcall"), recordings="on_request",
                         recordings_dir=str(tmp_path)) as running:
        played_ms = 0.0
        async with await VoiceForgeClient.connect(running.url) as client:
            call_id = client.session_id
            await client.update_session(record_audio=True)
            await client.send_text("First question.")
            await collect_until_done(client)
            await wait_for_record(running, call_id, lambda r: len(r["timeline"]) == 1)
            postgres.stop()
            try:
                async with httpx.AsyncClient(base_url=running.http, timeout=30) as http:
                    away = await http.get("/v1/calls")
                    assert (away.status_code, away.json()["error"]) == (
                        503, "records_unavailable")
                for question in ("Second question.", "Third question."):
                    await client.send_text(question)
                    events = await collect_until_done(client)
                    (done,) = [e for e in events if isinstance(e, ResponseDone)]
                    assert (done.status, done.text_heard) == (ResponseStatus.COMPLETED, REPLY)
                    played_ms += done.played_ms
                # Both turns wait in the buffer; the writer has met the stopped server.
                assert sample(running, "voiceforge_records_buffered") == 2
                assert sample(running, "voiceforge_record_write_errors_total") >= 1
            finally:
                postgres.start()
        record = await wait_for_record(running, call_id,
                                       lambda r: ended(r) and r["recording"] is not None)
        assert [entry["user_text"] for entry in record["timeline"]] == [
            "First question.", "Second question.", "Third question."]
        assert record["entries_dropped"] == 0
        # No audio lost either: the recording holds the replies played while the
        # database was away (the caller's clock stood still: typed turns).
        first_ms = record["timeline"][0]["played_ms"]
        assert record["recording"]["duration_ms"] == pytest.approx(first_ms + played_ms,
                                                                   abs=5.0)


async def test_a_webrtc_call_is_recorded(server: RunningServer) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel = pc.createDataChannel("events")
    channel.on("message", lambda data: events.put_nowait(json.loads(data)))
    readers: list[asyncio.Task[None]] = []

    async def drain(track: MediaStreamTrack) -> None:
        while True:
            await track.recv()

    pc.on("track", lambda track: readers.append(asyncio.create_task(drain(track))))
    pc.addTrack(AudioStreamTrack())  # silence
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
            reply = await http.post("/webrtc/offer", json={"sdp": pc.localDescription.sdp,
                                                          "type": "offer"})
        answer = reply.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        call_id = answer["session_id"]
        async with asyncio.timeout(RECORD_TIMEOUT_S):
            while (await events.get())["type"] != "session.created":
                pass
            channel.send(json.dumps({"type": "conversation.text", "text": "Hello there."}))
            while (event := await events.get())["type"] != "response.done":
                pass
        assert event["status"] == "completed"
    finally:
        await pc.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    record = await wait_for_record(server, call_id, ended)
    assert (record["transport"], record["end_reason"]) == ("webrtc", "peer_closed")
    (turn,) = [entry for entry in record["timeline"] if entry["kind"] == "turn"]
    assert (turn["user_text"], turn["reply_text"], turn["status"]) == (
        "Hello there.", REPLY, "completed")


async def test_a_phone_call_is_recorded(server: RunningServer) -> None:
    url = server.url.replace("/ws", "/telephony/twilio")
    async with connect(url) as ws:
        line = Provider(ws)
        await start_call(line)
        try:
            await line.until(lambda: bool(server.app_state.bridge_sessions), 30)
            (session,) = server.app_state.bridge_sessions
            call_id = session.conversation.session_id
            line.say(speak(HEARD))
            # The line ticks every 20 ms: the condition is read again at each.
            await line.until(lambda: bool(session.finished), 60)
            await line.send({"event": "stop", "streamSid": STREAM_SID, "stop": {}})
        finally:
            for task in line.tasks:
                task.cancel()
            await asyncio.gather(*line.tasks, return_exceptions=True)
    record = await wait_for_record(server, call_id, ended)
    assert (record["transport"], record["end_reason"]) == ("telephony", "caller_hung_up")
    turns = [entry for entry in record["timeline"] if entry["kind"] == "turn"]
    assert turns and turns[0]["user_text"] == HEARD
    assert turns[0]["inputs"][0]["source"] == "speech"



async def test_replicas_sharing_postgresql_see_each_others_calls(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("calls_replicas")
    with serving_records(url) as first, serving_records(url) as second:
        call_ids = []
        for replica in (first, second):
            async with await VoiceForgeClient.connect(replica.url) as client:
                call_ids.append(client.session_id)
                await client.send_text("Which replica is this?")
                await collect_until_done(client)
        for call_id, replica in zip(call_ids, (first, second), strict=True):
            await wait_for_record(replica, call_id, ended)
        for replica in (first, second):
            async with httpx.AsyncClient(base_url=replica.http, timeout=10) as http:
                listed = (await http.get("/v1/calls")).json()["calls"]
            assert sorted(call["id"] for call in listed) == sorted(call_ids)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_realtime_call_is_recorded(server: RunningServer) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="sk-unused")
    async with asyncio.timeout(RECORD_TIMEOUT_S):
        async with client.realtime.connect(model="gpt-realtime") as connection:
            while (event := await connection.recv()).type != "session.created":
                pass
            call_id = event.session.id
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello there."}],
            })
            await connection.response.create()
            while (done := await connection.recv()).type != "response.done":
                assert done.type != "error", done
            assert done.response.status == "completed"
    record = await wait_for_record(server, call_id, ended)
    assert record["transport"] == "realtime"
    (turn,) = [entry for entry in record["timeline"] if entry["kind"] == "turn"]
    assert (turn["user_text"], turn["reply_text"], turn["status"]) == (
        "Hello there.", REPLY, "completed")
