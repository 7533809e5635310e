"""A small but real OpenAI-compatible HTTP server for tests (vLLM cannot run here).

Plain asyncio on 127.0.0.1:0: ``GET /v1/models`` lists the configured model ids;
``POST /v1/chat/completions`` with ``stream: true`` sends one SSE chunk per token
every ``token_interval_s`` and records each request's headers, how many tokens it
wrote and the monotonic time at which the client closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, object]
    tokens_sent: int = 0
    token_times: list[float] = field(default_factory=list)
    disconnected_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class OpenAICompatServer:
    def __init__(
        self, models: list[str], *, token_interval_s: float = 0.05, max_tokens: int = 200
    ) -> None:
        self.models = models
        self.token_interval_s = token_interval_s
        self.max_tokens = max_tokens
        self.requests: list[SeenRequest] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> OpenAICompatServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one connection may carry several requests
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                if request.path.endswith("/models"):
                    data = [{"id": model, "object": "model"} for model in self.models]
                    _write_json(writer, {"object": "list", "data": data})
                    await writer.drain()
                elif request.path.endswith("/chat/completions"):
                    await self._stream(request, reader, writer)
                    return
                else:
                    _write_json(writer, {"error": "not found"}, status="404 Not Found")
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _stream(
        self, request: SeenRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
        )
        # The client sends nothing more: EOF on the socket is the moment it closed.
        eof = asyncio.create_task(reader.read(1))
        try:
            for index in range(self.max_tokens):
                chunk = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": request.body.get("model"),
                    "choices": [
                        {"index": 0, "delta": {"content": f"word{index} "}, "finish_reason": None}
                    ],
                }
                writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await writer.drain()
                request.tokens_sent += 1
                request.token_times.append(time.monotonic())
                done, _ = await asyncio.wait({eof}, timeout=self.token_interval_s)
                if done:
                    request.disconnected_at = time.monotonic()
                    return
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        finally:
            eof.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await eof
            request.finished.set()


async def _read_request(reader: asyncio.StreamReader) -> SeenRequest | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _version = line.decode().split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    body = json.loads(raw) if raw else {}
    return SeenRequest(method, path, headers, body)


def _write_json(writer: asyncio.StreamWriter, payload: object, status: str = "200 OK") -> None:
    body = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
