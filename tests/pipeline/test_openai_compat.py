"""OpenAI-compatible streaming against a real server (llama-cpp-python's) and tiny fakes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pipeline.engines.base import ChatMessage, LLMEngine
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.errors import LLMError, LLMRequestError, LLMTimeoutError, LLMUnavailableError
from pipeline.models import ensure_fast_gguf

QUESTION: list[ChatMessage] = [
    {"role": "system", "content": "You are a voice assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
LONG_ANSWER: list[ChatMessage] = [
    {"role": "user", "content": "Count from one to two hundred in words, one per line."},
]
MODEL_ALIAS = "qwen-test"
SERVER_READY_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real llama-cpp-python OpenAI-compatible server, started once for this module."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(ensure_fast_gguf(progress=None)),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(process, f"{base_url}/models", log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.25)
    pytest.fail(
        f"llama_cpp.server not ready in {SERVER_READY_TIMEOUT_S} s:\n{log_path.read_text()}"
    )


@pytest.fixture
async def llm(server_url: str) -> AsyncIterator[OpenAICompatLLM]:
    engine = OpenAICompatLLM(server_url, MODEL_ALIAS, first_token_timeout_s=60.0)
    yield engine
    await engine.aclose()


async def test_streams_a_reply(llm: OpenAICompatLLM) -> None:
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert len(deltas) > 1
    assert "paris" in "".join(deltas).lower()


async def test_cancel_mid_stream_then_new_request(llm: OpenAICompatLLM) -> None:
    received: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for delta in llm.stream(LONG_ANSWER, max_tokens=300, temperature=0.0):
            received.append(delta)
            if len(received) >= 2:
                two.set()

    task = asyncio.create_task(consume())
    await two.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert "paris" in "".join(deltas).lower()


async def test_aclose_mid_stream(llm: OpenAICompatLLM) -> None:
    stream = llm.stream(LONG_ANSWER, max_tokens=300, temperature=0.0)
    assert await anext(stream)
    await stream.aclose()
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert deltas


async def test_unknown_path_is_permanent_error(server_url: str) -> None:
    engine = OpenAICompatLLM(server_url.removesuffix("/v1") + "/nope", MODEL_ALIAS)
    try:
        with pytest.raises(LLMError) as caught:
            async for _ in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                pass
    finally:
        await engine.aclose()
    assert type(caught.value) is LLMError
    assert not caught.value.transient
    assert "404" in str(caught.value) and "/nope/chat/completions" in str(caught.value)


async def test_endpoint_down_is_unavailable_quickly() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there any more
    # With a minute to connect, only a refusal (not a timer) can end this soon
    # enough for the test: the engine reports the refusal at once, with no retry.
    engine = OpenAICompatLLM(url, "any", api_key="sk-secret-key", connect_timeout_s=60.0)
    try:
        with pytest.raises(LLMUnavailableError) as caught:
            async for _ in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                pass
    finally:
        await engine.aclose()
    causes: list[BaseException] = []
    cause: BaseException | None = caught.value
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, ConnectionRefusedError) for c in causes) or any(
        "refused" in str(c).lower() for c in causes
    ), causes
    assert caught.value.transient
    assert url in str(caught.value)
    assert "sk-secret-key" not in str(caught.value)


# --- a raw local server for the failure modes a real one will not produce on demand ---

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeServer:
    url: str
    requests: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fake_server(
    respond: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[FakeServer]:
    """Reads each request, records it, then lets ``respond`` answer (or hang)."""
    handlers: set[asyncio.Task[None]] = set()
    state = FakeServer(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            state.requests.append(head + await reader.readexactly(length))
            await respond(writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _sse_chunk(content: str) -> bytes:
    event = (
        '{"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
        f'"choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}'
    )
    data = f"data: {event}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _hang(writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def _one_token_then_stall(writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEADERS + _sse_chunk("Hello"))
    await writer.drain()
    await asyncio.Event().wait()


def _status(code: int) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def respond(writer: asyncio.StreamWriter) -> None:
        body = b'{"error":{"message":"nope","type":"x"}}'
        writer.write(
            f"HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return respond


async def test_no_response_is_first_token_timeout() -> None:
    async with fake_server(_hang) as server:
        engine = OpenAICompatLLM(server.url, "m", first_token_timeout_s=0.5)
        started = time.perf_counter()
        try:
            with pytest.raises(LLMTimeoutError, match="no first token"):
                async for _ in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                    pass
        finally:
            await engine.aclose()
        # Not before its 0.5 s; the message says which timer ended it (the client's
        # own read timeout is off, so nothing else could).
        assert time.perf_counter() - started > 0.4


async def test_stall_after_a_token_is_timeout() -> None:
    async with fake_server(_one_token_then_stall) as server:
        engine = OpenAICompatLLM(server.url, "m", stall_timeout_s=0.5)
        received: list[str] = []
        try:
            with pytest.raises(LLMTimeoutError, match="no next token") as caught:
                async for delta in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                    received.append(delta)
        finally:
            await engine.aclose()
        assert received == ["Hello"]
        assert caught.value.transient


@pytest.mark.parametrize(
    ("status", "error_type", "transient", "category"),
    [
        (503, LLMUnavailableError, True, "transient"),
        (500, LLMUnavailableError, True, "transient"),
        (429, LLMUnavailableError, True, "transient"),
        (401, LLMError, False, "permanent"),
        # The request is refused (vLLM: a prompt over the context): the caller's error.
        (400, LLMRequestError, False, "client"),
        (413, LLMRequestError, False, "client"),
    ],
)
async def test_http_status_mapping(
    status: int, error_type: type[LLMError], transient: bool, category: str
) -> None:
    async with fake_server(_status(status)) as server:
        engine = OpenAICompatLLM(server.url, "m", api_key="sk-secret-key")
        try:
            with pytest.raises(LLMError) as caught:
                async for _ in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                    pass
        finally:
            await engine.aclose()
    assert type(caught.value) is error_type
    assert caught.value.transient is transient
    assert caught.value.category == category
    assert str(status) in str(caught.value) and server.url in str(caught.value)
    assert "sk-secret-key" not in str(caught.value)
    assert len(server.requests) == 1  # never retried


async def test_headers_and_key_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_KEY_ENV", "from-env")
    async with fake_server(_status(400)) as server:
        engine = OpenAICompatLLM(
            server.url, "m", api_key_env="ROUTER_KEY_ENV", extra_headers={"x-route-key": "r1"}
        )
        try:
            with pytest.raises(LLMError):
                async for _ in engine.stream(QUESTION, max_tokens=8, temperature=0.0):
                    pass
        finally:
            await engine.aclose()
    request = server.requests[0].lower()
    assert b"authorization: bearer from-env" in request
    assert b"x-route-key: r1" in request
    assert b'"stream":true' in request.replace(b" ", b"")


async def test_satisfies_the_seam() -> None:
    engine: LLMEngine = OpenAICompatLLM("http://127.0.0.1:1/v1", "m")
    assert engine.name == "openai-compat:m"
    assert isinstance(engine, OpenAICompatLLM)
    await engine.aclose()
