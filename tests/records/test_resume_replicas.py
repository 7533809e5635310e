"""A call dropped on one server resumes on another server process that shares its
PostgreSQL: the second process has nothing of the call in memory, only the
suspension's snapshot in the database. The conversation goes on with its history —
asserted through what the (shared, OpenAI-compatible) model server is sent — and
the call's record goes on where the first server left it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.resume import CLOSE_RESUME_USED
from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from loadtest.postgres import PostgresServer
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.events import ResponseDone, ResponseStatus
from tests.faults.support import bench_engines, collect_until_done, serving
from tests.records.test_calls_api import auth, ended, wait_for_record
from tests.resume.test_resume_ws import LONG_REPLY, cut_mid_reply, refused, until_suspended

pytestmark = pytest.mark.filterwarnings("error")

KEY = "k-resume-replicas-0123456789abcdef0123"


def _reply(request: SeenRequest) -> ScriptedReply:
    said = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
    if said == "My name is Ada.":
        return ScriptedReply("Nice to meet you, Ada.")
    if said == "Tell me a long story.":
        return ScriptedReply(LONG_REPLY)
    return ScriptedReply("You are Ada.")


@contextmanager
def second_process(database_url: str, llm_url: str) -> Iterator[str]:
    """Another server process on the same database; yields its ws:// URL."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.resume.child_server", database_url, llm_url, KEY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        for _ in range(100):  # bounded: import messages, then the ready line
            line = child.stdout.readline()
            if not line:
                pytest.fail("the second server process exited before it was ready")
            if line.startswith("ready "):
                yield line.split()[1]
                break
        else:
            pytest.fail("the second server process never said it was ready")
    finally:
        child.stdin.close()  # it stops when its stdin closes
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
        child.stdout.close()


async def test_a_call_dropped_on_one_server_resumes_on_another_process(
    postgres: PostgresServer,
) -> None:
    database_url = postgres.create_database("resume_replicas")
    with FaultyLLMServer() as llm_server:
        llm_server.mode = "script"
        llm_server.script = _reply
        llm = OpenAICompatLLM(llm_server.url, "scripted", api_key="unused")
        with serving(Settings(database_url=database_url, api_key=KEY),
                     bench_engines(llm=llm)) as first, \
                second_process(database_url, llm_server.url) as second_url:
            client = await VoiceForgeClient.connect(first.url, api_key=KEY)
            call_id, token = client.session_id, client.created.resume_token
            assert token is not None
            await client.update_session(instructions="You are a patient storyteller.")
            await client.send_text("My name is Ada.")
            await collect_until_done(client)
            cut = await cut_mid_reply(client, "Tell me a long story.")
            await until_suspended(first)

            # The token is the credential: no API key on the reconnect.
            resumed = await VoiceForgeClient.connect(second_url, resume_token=token)
            try:
                assert (resumed.session_id, resumed.created.resumed) == (call_id, True)
                assert resumed.session["instructions"] == "You are a patient storyteller."
                await resumed.report_played(cut, 400.0)
                done = [e for e in await collect_until_done(resumed)
                        if isinstance(e, ResponseDone)]
                assert (done[0].response_id, done[0].status, done[0].reason) == (
                    cut, ResponseStatus.CANCELLED, "connection_lost")
                heard = done[0].text_heard
                assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)
                # The first server cannot hand the same call out again.
                assert await refused(first.url, token) == (
                    "resume_used", CLOSE_RESUME_USED)
                await resumed.send_text("What is my name?")
                await collect_until_done(resumed)
            finally:
                await resumed.close()

            asked = llm_server.chat_requests()[-1].messages
            assert [(m["role"], m["content"]) for m in asked] == [
                ("system", "You are a patient storyteller."),
                ("user", "My name is Ada."),
                ("assistant", "Nice to meet you, Ada."),
                ("user", "Tell me a long story."),
                ("assistant", heard),
                ("user", "What is my name?"),
            ]
            record = await wait_for_record(first, call_id, ended, headers=auth(KEY))
            turns = [e for e in record["timeline"] if e["kind"] == "turn"]
            assert [t["user_text"] for t in turns if t["status"] != "incomplete"] == [
                "My name is Ada.", "", "What is my name?"]
            seqs = [e["seq"] for e in record["timeline"]]
            assert seqs == sorted(set(seqs))
            assert record["end_reason"] == "client_closed"
