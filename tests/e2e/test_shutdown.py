"""SIGTERM drains the server: no new calls, replies in flight finish (or are
cancelled at the deadline, still with response.done), every caller is told and
closed with 1001, and the process exits with nothing left running.

The server is a real ``voiceforge serve --profile bench`` child process; the
scripted LLM is slowed down so a reply is in flight when the signal comes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e


@contextmanager
def serve(**env: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """The child server, its ws:// URL and the lines it printed so far."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--profile", "bench",
         "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **env},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for _ in range(200):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"ready: connect to (ws://\S+)", line):
                yield process, match.group(1), lines
                break
        else:
            pytest.fail("the server did not get ready:\n" + "".join(lines))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()


async def refused_while(url: str, still: Callable[[], bool]) -> bool:
    """Try to connect until refused; whether that came while ``still()`` held.

    A connection the server took before it stopped listening is answered (a 503
    once it drains): that is one more try, not a failure. Bounded: 100 tries.
    """
    for _ in range(100):
        try:
            async with connect(url, subprotocols=subprotocols(), open_timeout=3):
                pass
        except OSError:
            return still()
        except websockets.InvalidStatus:
            pass
        if not still():
            return False
        await asyncio.sleep(0.05)
    return False


def finish_output(process: subprocess.Popen[str], lines: list[str], timeout_s: float) -> int:
    assert process.stdout is not None
    rc = process.wait(timeout=timeout_s)
    lines.extend(process.stdout.readlines())
    return rc


async def test_sigterm_lets_the_reply_in_flight_finish_then_closes_with_1001() -> None:
    # A 6-token reply at 4 tokens/s: about 1.5 s of generation, then its playback.
    with serve(VOICEFORGE_BENCH_TOKENS_PER_SECOND="4", VOICEFORGE_DRAIN_TIMEOUT_S="15") as (
        process, url, lines
    ):
        async with connect(url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            await session.send({"type": "conversation.text", "text": "Hello?"})
            await session.wait_type("response.audio.delta", 10)
            process.send_signal(signal.SIGTERM)
            reply_ends = asyncio.create_task(session.wait_type("response.done", 20))
            # Listening stops at once: while the reply in flight still plays, a new
            # caller is refused (and goes to another replica).
            assert await refused_while(url, lambda: not reply_ends.done())
            done = await reply_ends
            assert done["status"] == "completed", done
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await session.wait_for(lambda m: False, 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert [e["code"] for e in session.errors()] == ["server_shutting_down"]
        rc = await asyncio.to_thread(finish_output, process, lines, 30)
        # uvicorn re-raises the signal once drained, so a supervisor sees its own
        # SIGTERM as the cause (143 in a shell).
        assert rc in (0, -signal.SIGTERM), "".join(lines[-20:])
    output = "".join(lines)
    # The drain ended when the reply did, not at its 15 s deadline.
    assert "drain deadline" not in output, output[-2000:]
    assert "shutdown complete: 0 tasks and 0 non-daemon threads left" in output, output[-2000:]
    assert "timeout graceful shutdown exceeded" not in output


async def test_at_the_drain_deadline_replies_are_cancelled_and_still_reported() -> None:
    # 2 tokens/s: the reply would take ~3 s; the drain allows 0.5 s.
    with serve(VOICEFORGE_BENCH_TOKENS_PER_SECOND="2", VOICEFORGE_DRAIN_TIMEOUT_S="0.5") as (
        process, url, lines
    ):
        async with connect(url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            await session.send({"type": "conversation.text", "text": "Hello?"})
            created = await session.wait_type("response.created", 10)
            process.send_signal(signal.SIGTERM)
            done = await session.wait_type("response.done", 20)
            assert done["response_id"] == created["response_id"]
            assert done["status"] == "cancelled" and done["reason"] == "server_shutdown"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await session.wait_for(lambda m: False, 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        rc = await asyncio.to_thread(finish_output, process, lines, 30)
        assert rc in (0, -signal.SIGTERM), "".join(lines[-20:])
    assert "shutdown complete: 0 tasks" in "".join(lines)


async def test_json_logs_carry_session_and_response_ids_and_no_secret() -> None:
    key = "json-log-test-key-0123456789abcdef"
    with serve(VOICEFORGE_LOG_FORMAT="json", VOICEFORGE_API_KEY=key) as (process, url, lines):
        async with connect(url, subprotocols=subprotocols(f"bearer.{key}")) as ws:
            session = await RawSession.open(ws)
            done = await session.say_hello()
        with pytest.raises(websockets.InvalidStatus):  # refused: no key
            async with connect(url, subprotocols=subprotocols()):
                pass
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(finish_output, process, lines, 30)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # Every log line is JSON (the [voiceforge] lines are start-up progress on stdout).
    assert all(line.startswith(("{", "[voiceforge]")) for line in lines), lines
    assert {"time", "level", "logger", "message"} <= set(records[0])
    finished = [r for r in records if r.get("response_id") == done["response_id"]]
    assert finished and finished[0]["session_id"] == session.created["session_id"]
    assert finished[0]["status"] == "completed"
    assert any(r.get("refusal") == "unauthorized" for r in records)
    assert key not in "".join(lines)


async def test_sigterm_drains_a_realtime_call_like_a_ws_one() -> None:
    """``/v1/realtime`` calls are the server's calls too: the reply in flight ends
    (``response.done``), the caller is told in the API's error shape, then 1001."""
    from openai import AsyncOpenAI

    with serve(VOICEFORGE_BENCH_TOKENS_PER_SECOND="4", VOICEFORGE_DRAIN_TIMEOUT_S="15") as (
        process, url, lines
    ):
        http = url.replace("ws://", "http://").removesuffix("/ws")
        client = AsyncOpenAI(base_url=f"{http}/v1", api_key="unused")
        seen: list[object] = []
        async with client.realtime.connect(model="m") as conn:
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello?"}]})
            await conn.response.create()
            async with asyncio.timeout(20):
                while (await conn.recv()).type != "response.output_audio.delta":
                    pass
                process.send_signal(signal.SIGTERM)
                async for event in conn:  # ends when the server closes the call
                    seen.append(event)
        done = [e for e in seen if getattr(e, "type", "") == "response.done"]
        assert [e.response.status for e in done] == ["completed"]  # type: ignore[attr-defined]
        errors = [e.error for e in seen if getattr(e, "type", "") == "error"]  # type: ignore[attr-defined]
        assert [(e.code, e.type) for e in errors] == [("server_shutting_down", "server_error")]
        rc = await asyncio.to_thread(finish_output, process, lines, 30)
        assert rc in (0, -signal.SIGTERM), "".join(lines[-20:])
