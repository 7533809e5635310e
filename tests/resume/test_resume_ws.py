"""Resuming a ``/ws`` call after its connection dropped, on the same server: the
client's socket is cut in the middle of a reply, the client comes back with the
resume token, and the call goes on with its history — asserted through what the
model is sent — its settings and its client tools. Tokens that are forged,
expired or used already are refused with their close codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from agent.client import ClientTool, VoiceForgeClient
from agent.config import Settings
from agent.protocol import SessionCreated, decode_server_frame
from agent.resume import (
    CLOSE_RESUME_EXPIRED,
    CLOSE_RESUME_INVALID,
    CLOSE_RESUME_UNKNOWN,
    CLOSE_RESUME_USED,
    CLOSE_TAKEN_OVER,
)
from agent.resume_tokens import issue_resume_token
from pipeline.events import ErrorEvent, ResponseAudioDelta, ResponseDone, ResponseStatus
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, collect_until_done, serving
from tests.tools.scripted import ScriptedToolLLM, say

pytestmark = pytest.mark.filterwarnings("error")

LONG_REPLY = ("Once upon a time, in a quiet village by the sea, there lived an old "
              "fisherman who told stories every night. " * 4).strip()
WAIT_S = 20.0


async def lookup(order: str) -> str:
    return f"order {order} shipped"


LOOKUP = ClientTool("lookup_order", "Where an order is.",
                    {"type": "object", "properties": {"order": {"type": "string"}}}, lookup)


def start(tmp_path: Path, llm: ScriptedToolLLM, **settings: Any) -> Iterator[RunningServer]:
    engines = bench_engines(llm=llm)  # type: ignore[arg-type]
    url = f"sqlite:///{tmp_path / 'calls.sqlite3'}"
    with serving(Settings(database_url=url, **settings), engines) as server:
        yield server


@pytest.fixture
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM()


@pytest.fixture
def server(tmp_path: Path, llm: ScriptedToolLLM) -> Iterator[RunningServer]:
    yield from start(tmp_path, llm)


async def resume(server: RunningServer, token: str | None) -> VoiceForgeClient:
    assert token is not None
    return await VoiceForgeClient.connect(server.url, resume_token=token, auto_resume=False)


async def until_suspended(server: RunningServer, count: int = 1) -> None:
    """The server has seen the drop and suspended the call (bounded)."""
    resumer = server.app_state.resumer
    assert resumer is not None
    deadline = time.monotonic() + WAIT_S
    while resumer.suspended() < count:
        assert time.monotonic() < deadline, "the dropped call was never suspended"
        await asyncio.sleep(0.02)


async def cut_mid_reply(client: VoiceForgeClient, text: str, after_ms: float = 1000.0, *,
                        drop: bool = False) -> str:
    """Ask for the long reply and cut the connection once ``after_ms`` of its audio
    has come (the reply is still playing: it lasts about 2 s); ``drop``: as a lost
    network, which the SDK resumes by itself, else as a client that is gone."""
    await client.send_text(text)
    deadline = time.monotonic() + WAIT_S
    received = 0.0
    while True:
        event = await client.next_event(deadline - time.monotonic())
        assert event is not None, "the server closed the call before the reply"
        assert not isinstance(event, ResponseDone), "the reply ended before the cut"
        if isinstance(event, ResponseAudioDelta):
            received += event.duration_ms
            if received >= after_ms:
                client.drop() if drop else client.abort()
                return event.response_id


def offering(token: str | None) -> list[websockets.Subprotocol]:
    assert token is not None
    return [websockets.Subprotocol("voiceforge.v1"), websockets.Subprotocol(f"resume.{token}")]


async def refused(url: str, token: str | None) -> tuple[str, int | None]:
    async with websockets.connect(url, subprotocols=offering(token)) as ws:
        first = decode_server_frame(await ws.recv(decode=False))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT_S)
        assert isinstance(first, ErrorEvent) and first.fatal
        return first.code, ws.close_code


async def test_a_call_cut_mid_reply_resumes_with_its_history_settings_and_tools(
    server: RunningServer, llm: ScriptedToolLLM
) -> None:
    llm.script(say("Nice to meet you, Ada."), say(LONG_REPLY), say("You are Ada."))
    client = await VoiceForgeClient.connect(server.url)
    call_id, token = client.session_id, client.created.resume_token
    assert client.created.resumed is False and token
    await client.update_session(instructions="You are a patient storyteller.")
    await client.set_tools([LOOKUP])
    await client.send_text("My name is Ada.")
    await collect_until_done(client)
    cut = await cut_mid_reply(client, "Tell me a long story.")
    await until_suspended(server)

    resumed = await resume(server, token)
    try:
        assert resumed.session_id == call_id
        assert resumed.created.resumed is True
        assert resumed.created.resume_token not in (None, token)
        assert resumed.session["instructions"] == "You are a patient storyteller."
        assert [tool["name"] for tool in resumed.session["tools"]] == ["lookup_order"]
        # What the client played of the cut reply: more than nothing, less than all.
        await resumed.report_played(cut, 400.0)
        done = [e for e in await collect_until_done(resumed) if isinstance(e, ResponseDone)]
        assert (done[0].response_id, done[0].status, done[0].reason) == (
            cut, ResponseStatus.CANCELLED, "connection_lost")
        assert done[0].played_ms == 400.0
        heard = done[0].text_heard
        assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)

        await resumed.send_text("What is my name?")
        await collect_until_done(resumed)
    finally:
        await resumed.close()
    asked = llm.requests[-1]
    assert [(m["role"], m["content"]) for m in asked.messages] == [
        ("system", "You are a patient storyteller."),
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "Tell me a long story."),
        ("assistant", heard),
        ("user", "What is my name?"),
    ]
    assert "lookup_order" in asked.tool_names()


async def test_a_token_works_once_and_a_resumed_call_resumes_again_with_its_new_token(
    server: RunningServer, llm: ScriptedToolLLM
) -> None:
    client = await VoiceForgeClient.connect(server.url)
    first_token = client.created.resume_token
    client.abort()
    await until_suspended(server)
    again = await resume(server, first_token)
    second_token = again.created.resume_token
    # The same token while the call is live, and after: refused.
    assert await refused(server.url, first_token) == ("resume_used", CLOSE_RESUME_USED)
    again.abort()
    await until_suspended(server)
    assert await refused(server.url, first_token) == ("resume_used", CLOSE_RESUME_USED)
    third = await resume(server, second_token)
    assert third.session_id == client.session_id
    await third.close()


async def test_a_resume_takes_the_call_from_a_connection_the_server_still_holds(
    server: RunningServer, llm: ScriptedToolLLM
) -> None:
    """The client's old connection is dead but the server has not noticed yet (a
    phone that changed networks): the resume ends it and takes the call."""
    llm.script(say("Nice to meet you, Ada."), say("You are Ada."))
    client = await VoiceForgeClient.connect(server.url)
    await client.send_text("My name is Ada.")
    await collect_until_done(client)
    resumed = await resume(server, client.created.resume_token)
    try:
        assert (resumed.session_id, resumed.created.resumed) == (client.session_id, True)
        assert await client.next_event(WAIT_S) is None  # the old connection was closed
        assert client.close_code == CLOSE_TAKEN_OVER
        await resumed.send_text("What is my name?")
        await collect_until_done(resumed)
    finally:
        await resumed.close()
        await client.close()
    assert [(m["role"], m["content"]) for m in llm.requests[-1].messages][1:] == [
        ("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada."),
        ("user", "What is my name?")]


async def test_forged_and_other_servers_tokens_are_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    client = await VoiceForgeClient.connect(server.url)
    token = client.created.resume_token
    assert token is not None
    client.abort()
    await until_suspended(server)
    head, _, signature = token.rpartition(".")
    forged = f"{head}.{'A' * len(signature)}"
    assert await refused(server.url, forged) == ("resume_invalid", CLOSE_RESUME_INVALID)
    other_call = token.replace(client.session_id, "sess_000000000000")
    assert await refused(server.url, other_call) == (
        "resume_invalid", CLOSE_RESUME_INVALID)
    # Another server (its own secret) does not take this one's token.
    for other in start(tmp_path / "other", ScriptedToolLLM()):
        assert await refused(other.url, token) == (
            "resume_invalid", CLOSE_RESUME_INVALID)


async def test_a_call_not_resumed_within_the_window_is_refused_as_expired(
    tmp_path: Path,
) -> None:
    for server in start(tmp_path, ScriptedToolLLM(), resume_window_s=0.3):
        client = await VoiceForgeClient.connect(server.url)
        token = client.created.resume_token
        client.abort()
        await until_suspended(server)
        await asyncio.sleep(0.4)  # past the window: time must pass, nothing to wait on
        assert await refused(server.url, token) == (
            "resume_expired", CLOSE_RESUME_EXPIRED)


async def test_a_client_that_closes_with_1000_ended_its_call(server: RunningServer) -> None:
    client = await VoiceForgeClient.connect(server.url)
    token = client.created.resume_token
    await client.close()
    deadline = time.monotonic() + WAIT_S
    while server.app_state.sessions:  # the server has ended the call (bounded)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert server.app_state.resumer is not None and server.app_state.resumer.suspended() == 0
    assert await refused(server.url, token) == ("resume_unknown", CLOSE_RESUME_UNKNOWN)


async def test_two_resumes_at_once_get_the_call_once(server: RunningServer) -> None:
    client = await VoiceForgeClient.connect(server.url)
    token = client.created.resume_token
    client.abort()
    await until_suspended(server)
    both_read = asyncio.Event()
    read = 0

    async def attempt() -> tuple[str, str | None]:
        nonlocal read
        async with websockets.connect(server.url, subprotocols=offering(token)) as ws:
            first = decode_server_frame(await ws.recv(decode=False))
            read += 1
            if read == 2:
                both_read.set()
            await asyncio.wait_for(both_read.wait(), WAIT_S)  # the winner holds the call
            if isinstance(first, SessionCreated):
                return "resumed", first.session_id
            assert isinstance(first, ErrorEvent)
            return "refused", first.code

    outcomes = sorted(await asyncio.gather(attempt(), attempt()))
    assert outcomes == [("refused", "resume_used"), ("resumed", client.session_id)]


async def test_a_resumed_call_keeps_its_time_limit(tmp_path: Path) -> None:
    """Dropping and resuming does not restart the call's clock: the time limit counts
    the time before the drop and while suspended."""
    for server in start(tmp_path, ScriptedToolLLM()):
        client = await VoiceForgeClient.connect(server.url)
        connected_at = time.monotonic()
        client.abort()
        await until_suspended(server)
        back = await resume(server, client.created.resume_token)
        (session,) = list(server.app_state.sessions)
        assert session.started_at <= connected_at  # the sweeper's clock for max_call_s
        await back.close()


async def test_a_token_past_its_own_expiry_is_refused(tmp_path: Path) -> None:
    """A token signed right but past the expiry it carries: with the API key the
    resume is refused as expired; alone it is no credential (HTTP 403)."""
    key = "k-resume-expiry-0123456789abcdef0123456"
    for server in start(tmp_path, ScriptedToolLLM(), api_key=key):
        client = await VoiceForgeClient.connect(server.url, api_key=key)
        client.abort()
        await until_suspended(server)
        stale = issue_resume_token(key, "default", client.session_id, 0, time.time() - 1)
        headers = {"Authorization": f"Bearer {key}"}
        async with websockets.connect(server.url, subprotocols=offering(stale),
                                      additional_headers=headers) as ws:
            first = decode_server_frame(await ws.recv(decode=False))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT_S)
        assert isinstance(first, ErrorEvent)
        assert (first.code, ws.close_code) == ("resume_expired", CLOSE_RESUME_EXPIRED)
        with pytest.raises(websockets.InvalidStatus) as refusal:
            await websockets.connect(server.url, subprotocols=offering(stale))
        assert refusal.value.response.status_code == 403


async def test_with_a_zero_window_calls_are_not_resumable(tmp_path: Path) -> None:
    for server in start(tmp_path, ScriptedToolLLM(), resume_window_s=0.0):
        client = await VoiceForgeClient.connect(server.url)
        assert client.created.resume_token is None
        assert client.created.limits["resume_window_s"] == 0.0
        await client.close()
