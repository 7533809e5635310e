"""A chat model behind any OpenAI-compatible ``/v1/chat/completions`` (vLLM in production).

Streaming goes through the ``openai`` package's AsyncOpenAI. Time limits are ours,
not the HTTP client's read timeout: ``first_token_timeout_s`` bounds the wait from
the request to the first text delta, ``stall_timeout_s`` every gap after it; both
are ``asyncio.wait_for`` around one step of the stream. Closing the generator (or
cancelling its task) closes the HTTP response, which is what makes vLLM abort
the request and free its KV cache. Retries are off: a retried stream would
repeat the start of an answer the caller may already have heard.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import openai

from pipeline.engines.base import ChatMessage
from pipeline.errors import LLMError, LLMRequestError, LLMTimeoutError, LLMUnavailableError
from pipeline.tools.spec import ToolCall, new_call_id

DEFAULT_API_KEY_ENV = "VOICEFORGE_LLM_API_KEY"
_REQUEST_REFUSED = frozenset({400, 413, 422})
"""Statuses that refuse the request itself (vLLM answers 400 to a prompt over the
model's context); 401/403/404 stay engine errors: the deployment is misconfigured."""


class OpenAICompatLLM:
    """Streams chat completions from an OpenAI-compatible server."""

    max_tool_rounds = 3

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        extra_headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        first_token_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai-compat:{model}"
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        key = api_key if api_key is not None else os.environ.get(api_key_env) or "EMPTY"
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key,
            default_headers=dict(extra_headers or {}),
            # Reads are bounded by the per-token wait_for below, not by the client.
            timeout=openai.Timeout(
                None, connect=connect_timeout_s, write=connect_timeout_s, pool=connect_timeout_s
            ),
            max_retries=0,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        extra_headers: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield text deltas; closing or cancelling closes the HTTP stream.

        ``extra_headers`` are sent with this request only (a per-call routing key).
        """
        stream = self.stream_with_tools(
            messages, tools=(), max_tokens=max_tokens, temperature=temperature,
            extra_headers=extra_headers,
        )
        try:
            async for item in stream:
                if isinstance(item, str):
                    yield item
        finally:
            await stream.aclose()

    async def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.7,
        extra_headers: Mapping[str, str] | None = None,
        tool_choice: str = "auto",
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Yield text deltas and, at the end of the stream, the complete tool calls.

        A call's arguments arrive in pieces (vLLM's tool parser streams them, and
        several calls interleave by ``index``): they are joined here, so the caller
        sees each call once, whole. With ``tools`` empty no tool is offered.
        """
        deadline = time.monotonic() + self.first_token_timeout_s
        request: list[Any] = [dict(message) for message in messages]
        offered: dict[str, Any] = {"tools": [dict(tool) for tool in tools]} if tools else {}
        if tools and tool_choice != "auto":
            offered["tool_choice"] = tool_choice
        try:
            response = await self._within(
                self._client.chat.completions.create(
                    model=self.model,
                    messages=request,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                    extra_headers=dict(extra_headers) if extra_headers else None,
                    **offered,
                ),
                deadline - time.monotonic(),
                "first token",
            )
        except openai.OpenAIError as error:
            raise self._translate(error) from error
        try:
            # An answer that is not an event stream (a proxy's HTML page) or a stream
            # with no completion chunk in it must fail the turn, not end it silently.
            content_type = response.response.headers.get("content-type", "").lower()
            if not content_type.startswith("text/event-stream"):
                raise LLMError(
                    f"{self.endpoint} answered {content_type or 'no content type'}, "
                    "not an event stream",
                    transient=False,
                )
            first = True
            answered = False
            calls: dict[int, dict[str, str]] = {}
            while True:
                limit = deadline - time.monotonic() if first else self.stall_timeout_s
                try:
                    chunk = await self._within(
                        anext(response), limit, "first token" if first else "next token"
                    )
                except StopAsyncIteration:
                    if not answered:
                        raise LLMError(
                            f"{self.endpoint} ended its stream without a completion chunk",
                            transient=False,
                        ) from None
                    for call in (calls[index] for index in sorted(calls)):
                        yield ToolCall(call["name"], call["arguments"], call["id"] or new_call_id())
                    return
                except openai.OpenAIError as error:
                    raise self._translate(error) from error
                except ValueError as error:  # an SSE data line that is not JSON
                    raise LLMError(
                        f"{self.endpoint} sent an event that is not JSON: {error}",
                        transient=False,
                    ) from error
                answered = answered or bool(chunk.choices)
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                for piece in delta.tool_calls or ():
                    first = False
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = call["id"] or (piece.id or "")
                    if piece.function is not None:
                        call["name"] += piece.function.name or ""
                        call["arguments"] += piece.function.arguments or ""
                if delta.content:
                    first = False
                    yield delta.content
        finally:
            await response.close()

    async def _within(self, step: Any, seconds: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(step, timeout=max(seconds, 0.0))
        except TimeoutError as error:
            limit = self.first_token_timeout_s if what == "first token" else self.stall_timeout_s
            raise LLMTimeoutError(f"no {what} from {self.endpoint} within {limit:g} s") from error

    def _translate(self, error: openai.OpenAIError) -> LLMError:
        """Map an openai error to ours; the message names the URL, never the key."""
        where = self.endpoint
        if isinstance(error, openai.APITimeoutError):
            return LLMTimeoutError(f"timed out talking to {where}")
        if isinstance(error, openai.APIConnectionError):
            cause = error.__cause__ or error
            return LLMUnavailableError(f"cannot reach {where}: {cause}")
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            detail = f"{where} answered HTTP {status}: {error.message}"
            if status >= 500 or status == 429:
                return LLMUnavailableError(detail)
            if status in _REQUEST_REFUSED:
                # The request (a prompt over the context, a bad parameter) is at fault,
                # not the server: the caller's error, which says nothing about health.
                return LLMRequestError(detail)
            return LLMError(detail, transient=False)
        return LLMError(f"{where} failed: {error}")

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()
