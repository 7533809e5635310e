"""The Python SDK resumes a dropped call by itself: the connection is lost in the
middle of a reply, a turn is sent while it is down, and the call goes on on a new
connection with its history; the cut reply is reported played where it stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.client import VoiceForgeClient
from agent.protocol import SessionCreated
from pipeline.events import ResponseDone, ResponseStatus
from tests.e2e.conftest import RunningServer
from tests.faults.support import collect_until_done
from tests.resume.test_resume_ws import LONG_REPLY, WAIT_S, cut_mid_reply, start
from tests.tools.scripted import ScriptedToolLLM, say

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM()


@pytest.fixture
def server(tmp_path: Path, llm: ScriptedToolLLM) -> Iterator[RunningServer]:
    yield from start(tmp_path, llm)


async def test_the_sdk_reconnects_and_the_call_goes_on(
    server: RunningServer, llm: ScriptedToolLLM
) -> None:
    llm.script(say("Nice to meet you, Ada."), say(LONG_REPLY), say("You are Ada."))
    client = await VoiceForgeClient.connect(server.url)
    try:
        call_id = client.session_id
        await client.send_text("My name is Ada.")
        await collect_until_done(client)
        cut = await cut_mid_reply(client, "Tell me a long story.", drop=True)
        await client.send_text("What is my name?")  # waits for the new connection
        events = await collect_until_done(client, WAIT_S, dones=2)
    finally:
        await client.close()
    created = [e for e in events if isinstance(e, SessionCreated)]
    assert [(c.session_id, c.resumed) for c in created] == [(call_id, True)]
    assert client.resumes == 1
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert [(d.response_id, d.status, d.reason) for d in done] == [
        (cut, ResponseStatus.CANCELLED, "connection_lost"),
        (done[1].response_id, ResponseStatus.COMPLETED, None)]
    assert done[0].timings["played_source_client"] == 1.0
    heard = done[0].text_heard
    assert LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)
    # Nothing heard of the cut reply leaves none in history: the two questions join.
    tail = ([("user", "Tell me a long story."), ("assistant", heard),
             ("user", "What is my name?")] if heard
            else [("user", "Tell me a long story. What is my name?")])
    assert [(m["role"], m["content"]) for m in llm.requests[-1].messages][1:] == [
        ("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada."), *tail]


async def test_a_client_that_hangs_up_is_not_resumed(server: RunningServer) -> None:
    client = await VoiceForgeClient.connect(server.url)
    client.abort()  # the caller is gone, not a network hiccup
    assert await client.next_event(WAIT_S) is None
    assert client.resumes == 0
    await client.close()
