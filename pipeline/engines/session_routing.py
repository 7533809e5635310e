"""Keep each call on one LLM replica: every request of a call carries the call's id.

vLLM's prefix cache lives in one replica's GPU memory. A call's second turn
shares its whole history with the first, so it is cheap only on the replica that
served the first. Routers that pin by a request header — the vLLM production
stack (``--routing-logic session --session-key x-session-id``), llm-d, or a plain
``hash $http_x_session_id consistent`` in nginx — need that header on every
request of the call; this wrapper sends it.

Why a per-call view and not a new ``session_id`` argument on ``LLMEngine.stream``:
only remote, replicated engines care, and the in-process engines and test doubles
would all have to accept and ignore it. ``Engines.for_session`` asks an engine
that implements ``SessionScopedLLM`` for a view once per call; the view shares the
engine's HTTP connection pool and adds one header per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from pipeline.engines.base import ChatMessage, LLMEngine
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.tools.spec import ToolCall

DEFAULT_SESSION_HEADER = "x-session-id"


class SessionRoutedLLM:
    """An OpenAI-compatible LLM whose per-call views send ``header: <session id>``."""

    def __init__(self, engine: OpenAICompatLLM, header: str = DEFAULT_SESSION_HEADER) -> None:
        if not header or any(char.isspace() or char == ":" for char in header):
            raise ValueError(f"not a usable HTTP header name: {header!r}")
        self.engine = engine
        self.header = header
        self.name = engine.name
        self.max_tool_rounds = engine.max_tool_rounds

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncIterator[str]:
        """A request outside any call (warm-up, probes): no routing key."""
        return self.engine.stream(messages, max_tokens=max_tokens, temperature=temperature)

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        return self.engine.stream_with_tools(
            messages, tools=tools, max_tokens=max_tokens, temperature=temperature,
            tool_choice=tool_choice,
        )

    def for_session(self, session_id: str) -> LLMEngine:
        return _SessionView(self.engine, {self.header: session_id})

    async def aclose(self) -> None:
        await self.engine.aclose()


class _SessionView:
    """One call's view of the engine: the same client, plus the routing header."""

    def __init__(self, engine: OpenAICompatLLM, headers: dict[str, str]) -> None:
        self._engine = engine
        self._headers = headers
        self.name = engine.name
        self.max_tool_rounds = engine.max_tool_rounds

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncIterator[str]:
        return self._engine.stream(
            messages, max_tokens=max_tokens, temperature=temperature, extra_headers=self._headers
        )

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        return self._engine.stream_with_tools(
            messages, tools=tools, max_tokens=max_tokens, temperature=temperature,
            extra_headers=self._headers, tool_choice=tool_choice,
        )
