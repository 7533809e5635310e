"""What one caller can cost everyone on shared engines (issue 13, items 4 and 7).

Over the real WebSocket: a caller's oversized instructions are that caller's
error, never the engine's (``/readyz`` stays ready for everyone else), and one
slow call cannot make the server refuse new calls.
"""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect

from agent.config import Settings
from loadtest.harness import bench_engines
from pipeline.engines.bench import ScriptedLLM
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

DIGITS = "1234567890" * 800
"""8000 characters, the protocol's limit, and one token per digit: over the context."""


async def _readyz(server: RunningServer) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{server.http}/readyz")


async def test_oversized_instructions_are_the_callers_error_not_the_engines(
    server: RunningServer,
) -> None:
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        await session.send({"type": "session.update", "session": {"instructions": DIGITS}})
        await session.wait_type("session.updated")
        await session.send({"type": "conversation.text", "text": "Hello there."})
        done = await session.wait_type("response.done", 120)
        errors = session.errors()
        assert [(e["code"], e["category"], e["fatal"]) for e in errors] == [
            ("llm_failed", "client", False)
        ], errors
        assert "instructions take" in errors[0]["message"]
        assert done["status"] == "failed"

        # Nobody else is told this engine is failing.
        ready = await _readyz(server)
        assert ready.status_code == 200, ready.json()

        # The caller fixes its instructions and the call goes on.
        await session.send(
            {"type": "session.update", "session": {"instructions": "Answer in one sentence."}}
        )
        await session.wait_type("session.updated")
        answered = await session.say_hello()
        assert answered["status"] == "completed", answered
        assert answered["text"].strip()


async def test_one_slow_call_does_not_make_the_server_refuse_calls() -> None:
    """Issue 13: one caller's long replies locked a lightly loaded server for a minute."""
    slow = ScriptedLLM(first_token_ms=400.0, tokens_per_second=200.0)
    settings = Settings(latency_budget_ms=250.0, admission_min_samples=2, retry_after_s=3)
    for server in start_server(settings, bench_engines(llm=slow), admission=True):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            for _ in range(4):
                done = await session.say_hello()
                assert done["timings"]["end_of_turn_to_first_audio_ms"] > 250
            # Four slow answers, all from this one call: a new caller is still taken.
            async with connect(server.url, subprotocols=subprotocols()) as other:
                await RawSession.open(other)
            ready = await _readyz(server)
            assert ready.status_code == 200, ready.json()


async def test_session_updates_are_held_to_the_operators_caps() -> None:
    settings = Settings(max_response_tokens=300, max_instructions_chars=1000,
                        min_partial_transcript_interval_ms=400.0)
    for server in start_server(settings, bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            limits = session.created["limits"]
            assert (limits["max_response_tokens"], limits["max_instructions_chars"],
                    limits["min_partial_transcript_interval_ms"]) == (300, 1000, 400.0)
            await session.send({"type": "session.update", "session": {
                "max_response_tokens": 2048, "partial_transcript_interval_ms": 1}})
            updated = (await session.wait_type("session.updated"))["session"]
            assert updated["max_response_tokens"] == 300
            assert updated["partial_transcript_interval_ms"] == 400.0
            await session.send(
                {"type": "session.update", "session": {"instructions": "x" * 1001}})
            error = await session.wait_type("error")
            assert (error["code"], error["category"]) == ("invalid_session", "client")
            assert "1000" in error["message"]
            assert (await session.say_hello())["status"] == "completed"
