"""A misbehaving OpenAI-compatible ``/v1/chat/completions`` server: what the fault
tests (tests/faults) and the reliability measurement (``loadtest.reliability``)
run the real ``OpenAICompatLLM`` against.

Plain asyncio on 127.0.0.1:0, in a thread of its own (so it answers whatever the
caller's loop is doing). ``mode`` says how the next request is answered and may be
switched between turns:

* ``ok``: a chunked SSE stream of ``REPLY`` word by word, a final chunk with
  ``finish_reason: stop``, ``data: [DONE]`` and the terminating chunk.
* ``status_503`` / ``status_429`` / ``status_400``: that status, an OpenAI-style
  JSON error body.
* ``stall_first``: SSE headers, then nothing until the client hangs up.
* ``stall_mid``: ``PARTIAL_TOKENS`` tokens, then nothing until the client hangs up.
* ``break_first`` / ``break_mid``: SSE headers (and, mid, ``PARTIAL_TOKENS``
  tokens and a pause), then the TCP connection is closed with the chunked body
  unfinished.
* ``garbage_data``: SSE ``data:`` lines that are not JSON.
* ``no_choices``: SSE chunks that are JSON objects without ``choices``.
* ``html``: ``200 OK`` with an HTML page (``text/html``), not an event stream.
* ``script``: whatever ``script(request)`` says (a ``ScriptedReply``): text word by
  word, then tool calls streamed the way vLLM's tool parsers stream them — each call's
  id and name first, its arguments in pieces, several calls by ``index`` (one after
  another, or interleaved) — and ``finish_reason: tool_calls``.

``refuse_connections()`` closes the listening socket (a connection is refused by
the kernel); ``accept_connections()`` listens again on the same port.

Every answer carries ``connection: close``, so each request is its own connection
and ``requests`` counts exactly the attempts the engine made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import Settings

REPLY = "All good here. The line is working fine."
PARTIAL_TOKENS = ["The", " weather", " today", " is", " sunny", " and", " warm.", " Tomorrow",
                  " it", " will"]
"""What ``stall_mid`` and ``break_mid`` send before they stop: one whole first chunk
for the speech synthesiser ("The weather today is sunny and warm.") and more."""
PARTIAL_HEARD = "The weather today is sunny and warm."
BREAK_PAUSE_S = 0.3
"""``break_mid`` waits this long after its tokens, so their speech is out first."""
MODES = (
    "ok",
    "status_503",
    "status_429",
    "status_400",
    "stall_first",
    "stall_mid",
    "break_first",
    "break_mid",
    "garbage_data",
    "no_choices",
    "html",
    "script",
)

RETRIES = Settings().engine_retries


@dataclass(frozen=True)
class Fault:
    """What a fault mode must lead to (the fault tests assert it, the reliability
    measurement checks and times it)."""

    mode: str
    code: str
    category: str
    requests: int
    """Requests the endpoint sees for the failed turn (retries included)."""
    heard_partial: bool = False
    """Text came (and was spoken) before the fault: no retry, no apology."""


FAULTS = [
    Fault("status_503", "llm_unavailable", "transient", 1 + RETRIES),
    Fault("status_429", "llm_unavailable", "transient", 1 + RETRIES),
    Fault("status_400", "llm_failed", "client", 1),  # the request, not the engine
    Fault("refused", "llm_unavailable", "transient", 0),
    Fault("stall_first", "llm_timeout", "transient", 1 + RETRIES),
    Fault("stall_mid", "llm_timeout", "transient", 1, heard_partial=True),
    Fault("break_first", "llm_unavailable", "transient", 1 + RETRIES),
    Fault("break_mid", "llm_unavailable", "transient", 1, heard_partial=True),
    Fault("garbage_data", "llm_failed", "permanent", 1),
    Fault("no_choices", "llm_failed", "permanent", 1),
    Fault("html", "llm_failed", "permanent", 1),
]


@dataclass
class SeenRequest:
    path: str
    mode: str
    model: object
    messages: list[dict[str, Any]]
    tokens_sent: int = 0
    client_closed: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ScriptedReply:
    """What mode ``script`` answers one request with."""

    text: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(name, arguments JSON) of each tool call, in index order."""
    interleave: bool = False
    """Stream the calls' argument pieces interleaved by index (several at once)."""
    pieces: int = 3
    """Pieces each call's arguments are split into."""


class FaultyLLMServer:
    """Start with ``start()`` (or as a context manager); ``url`` is the ``/v1`` base."""

    def __init__(self, *, token_interval_s: float = 0.01) -> None:
        self.mode = "ok"
        self.script: Callable[[SeenRequest], ScriptedReply] | None = None
        """Mode ``script``: the answer to each request (it sees what was asked)."""
        self.token_interval_s = token_interval_s
        self.requests: list[SeenRequest] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def chat_requests(self) -> list[SeenRequest]:
        return [r for r in list(self.requests) if r.path.endswith("/chat/completions")]

    def start(self) -> FaultyLLMServer:
        self._thread.start()
        self.accept_connections()
        return self

    def accept_connections(self) -> None:
        """Listen (again, on the same port once it had one)."""
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self._port), self._loop
        )
        self._server = future.result(10)
        self._port = self._server.sockets[0].getsockname()[1]

    def refuse_connections(self) -> None:
        """Stop listening: connecting is refused until ``accept_connections()``."""

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultyLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- serving

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            _method, path, _version = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            body = json.loads(raw) if raw else {}
            request = SeenRequest(
                path, self.mode, body.get("model"), body.get("messages", []),
                tools=body.get("tools", []),
            )
            self.requests.append(request)
            if not path.endswith("/chat/completions"):
                _respond(writer, "404 Not Found", "application/json", b'{"error": "not found"}')
                await writer.drain()
                return
            await self._answer(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, request: SeenRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        mode = request.mode
        if mode.startswith("status_"):
            status = int(mode.removeprefix("status_"))
            phrase = {503: "Service Unavailable", 429: "Too Many Requests", 400: "Bad Request"}
            error = {"error": {"message": f"test server says {status}", "type": "test",
                               "code": str(status)}}
            _respond(writer, f"{status} {phrase[status]}", "application/json",
                     json.dumps(error).encode())
            await writer.drain()
            return
        if mode == "html":
            page = b"<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>\n"
            _respond(writer, "200 OK", "text/html; charset=utf-8", page)
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        await writer.drain()
        if mode == "stall_first":
            await self._until_client_closes(request, reader)
            return
        if mode == "break_first":
            return  # closed in _handle: the chunked body never ends
        if mode in ("stall_mid", "break_mid"):
            for token in PARTIAL_TOKENS:
                await self._event(writer, _chunk(request, token))
                request.tokens_sent += 1
            if mode == "stall_mid":
                await self._until_client_closes(request, reader)
            else:
                await asyncio.sleep(BREAK_PAUSE_S)
            return
        if mode == "garbage_data":
            for line in ("this is not json", "<html>", "{broken"):
                await self._event(writer, line)
            await self._event(writer, "[DONE]")
            await _end_chunks(writer)
            return
        if mode == "no_choices":
            for index in range(3):
                await self._event(writer, json.dumps({"id": f"x{index}", "object": "nothing"}))
            await self._event(writer, "[DONE]")
            await _end_chunks(writer)
            return
        if mode == "script":
            assert self.script is not None, "mode script needs a script"
            await self._scripted(request, writer, self.script(request))
            return
        # ok
        words = REPLY.split(" ")
        for index, word in enumerate(words):
            await self._event(writer, _chunk(request, word if index == 0 else " " + word))
            request.tokens_sent += 1
        final = json.loads(_chunk(request, ""))
        final["choices"][0]["delta"] = {}
        final["choices"][0]["finish_reason"] = "stop"
        await self._event(writer, json.dumps(final))
        await self._event(writer, "[DONE]")
        await _end_chunks(writer)

    async def _scripted(
        self, request: SeenRequest, writer: asyncio.StreamWriter, reply: ScriptedReply
    ) -> None:
        role = json.loads(_chunk(request, ""))
        role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        await self._event(writer, json.dumps(role))
        for index, word in enumerate(reply.text.split(" ") if reply.text else []):
            await self._event(writer, _chunk(request, word if index == 0 else " " + word))
            request.tokens_sent += 1
        deltas: list[list[dict[str, Any]]] = []
        for index, (name, arguments) in enumerate(reply.calls):
            size = max(1, -(-len(arguments) // reply.pieces))
            head = {"index": index, "id": f"chatcmpl-tool-{index}{len(self.requests)}",
                    "type": "function", "function": {"name": name, "arguments": ""}}
            parts = [{"index": index, "function": {"arguments": arguments[i : i + size]}}
                     for i in range(0, len(arguments), size)]
            deltas.append([head, *parts])
        if reply.interleave:
            ordered = [d for step in range(max(map(len, deltas), default=0))
                       for call in deltas if step < len(call) for d in [call[step]]]
        else:
            ordered = [d for call in deltas for d in call]
        for delta in ordered:
            event = json.loads(_chunk(request, ""))
            event["choices"][0]["delta"] = {"tool_calls": [delta]}
            await self._event(writer, json.dumps(event))
        final = json.loads(_chunk(request, ""))
        final["choices"][0]["delta"] = {}
        final["choices"][0]["finish_reason"] = "tool_calls" if reply.calls else "stop"
        await self._event(writer, json.dumps(final))
        await self._event(writer, "[DONE]")
        await _end_chunks(writer)

    async def _event(self, writer: asyncio.StreamWriter, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        await writer.drain()
        await asyncio.sleep(self.token_interval_s)

    async def _until_client_closes(
        self, request: SeenRequest, reader: asyncio.StreamReader
    ) -> None:
        # The client sends nothing more: EOF (or a reset) is the moment it gave up.
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 60)
        request.client_closed = True


def _chunk(request: SeenRequest, content: str) -> str:
    return json.dumps({
        "id": "chatcmpl-faults",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": request.model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    })


async def _end_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _respond(writer: asyncio.StreamWriter, status: str, content_type: str, body: bytes) -> None:
    writer.write(
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
