"""An LLM endpoint that is down or stalls fails the turn, not the call.

The server runs the real OpenAI-compatible engine against a closed port and
against a local server that accepts the request, starts an SSE stream and never
sends a token; STT and TTS are the shared real engines. Each turn is retried
twice (nothing was heard yet), then fails with a spoken apology.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import ServerMessage
from pipeline.conversation import Engines, SessionConfig
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.events import ErrorEvent, ResponseAudioDelta, ResponseDone, ResponseStatus
from tests.e2e.conftest import RunningServer, sharing, start_server

pytestmark = pytest.mark.e2e


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _typed_turn(client: VoiceForgeClient, text: str) -> list[ServerMessage]:
    """Every event from a typed turn up to its response.done."""
    await client.send_text(text)
    events: list[ServerMessage] = []
    deadline = time.monotonic() + 20
    while (left := deadline - time.monotonic()) > 0:
        event = await client.next_event(left)
        assert event is not None, "the server closed the connection"
        events.append(event)
        if isinstance(event, ResponseDone):
            return events
    raise TimeoutError(f"no response.done within 20 s; saw {events}")


def _assert_failed_turn(events: list[ServerMessage], code: str) -> None:
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert [e.code for e in errors] == [code], errors
    assert errors[0].fatal is False
    assert errors[0].response_id == done.response_id
    assert errors[0].category == "transient"
    assert done.status is ResponseStatus.FAILED
    assert done.reason == code
    # The caller heard nothing of an answer, so they hear the apology (real TTS).
    assert done.text_heard == SessionConfig().apology
    assert done.played_ms > 500
    assert any(isinstance(e, ResponseAudioDelta) for e in events)


def _openai_server(engines: Engines, llm: OpenAICompatLLM) -> Iterator[RunningServer]:
    yield from start_server(
        Settings(llm_backend="openai", llm_url=llm.base_url), sharing(engines, llm=llm)
    )


@pytest.fixture(scope="module")
def unreachable_llm_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    llm = OpenAICompatLLM(
        f"http://127.0.0.1:{_closed_port()}/v1",
        "nobody-home",
        api_key="unused",
        connect_timeout_s=2.0,
        first_token_timeout_s=5.0,
    )
    yield from _openai_server(embedded_engines, llm)


async def test_an_unreachable_llm_fails_each_turn_and_the_session_goes_on(
    unreachable_llm_server: RunningServer,
) -> None:
    async with await VoiceForgeClient.connect(unreachable_llm_server.url) as client:
        _assert_failed_turn(await _typed_turn(client, "Say hello."), "llm_unavailable")
        _assert_failed_turn(await _typed_turn(client, "Say hello again."), "llm_unavailable")


@pytest.fixture
async def stalling_llm_url() -> AsyncIterator[str]:
    """An endpoint that reads the request, answers with SSE headers, then says nothing."""
    handlers: set[asyncio.Task[object]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        for task in handlers:
            task.cancel()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@pytest.fixture
def stalling_llm_server(
    embedded_engines: Engines, stalling_llm_url: str
) -> Iterator[RunningServer]:
    llm = OpenAICompatLLM(
        stalling_llm_url,
        "staller",
        api_key="unused",
        connect_timeout_s=2.0,
        first_token_timeout_s=1.0,
        stall_timeout_s=0.5,
    )
    yield from _openai_server(embedded_engines, llm)


async def test_an_llm_that_never_sends_a_token_times_out(
    stalling_llm_server: RunningServer,
) -> None:
    async with await VoiceForgeClient.connect(stalling_llm_server.url) as client:
        _assert_failed_turn(await _typed_turn(client, "Say hello."), "llm_timeout")
        _assert_failed_turn(await _typed_turn(client, "Say hello again."), "llm_timeout")
