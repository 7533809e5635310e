"""A tool-calling LLM double for the tool tests: each request plays the next planned
model turn (text deltas and ``ToolCall`` items), and every request is kept, so a test
reads the history the server sent the model."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.engines.base import ChatMessage
from pipeline.tools import ToolCall

Turn = list[str | ToolCall] | Callable[[list[ChatMessage]], list[str | ToolCall]]
"""One model turn: what it streams, or a function of the messages it reads."""


@dataclass(frozen=True, slots=True)
class Request:
    messages: list[ChatMessage]
    tools: list[dict[str, Any]]
    """The tool definitions offered (OpenAI chat-completions format); [] for none."""
    tool_choice: str = "auto"

    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.tools]


class ScriptedToolLLM:
    """``LLMEngine`` and ``ToolCallingLLM``: plays ``plan`` one turn per request, then
    ``default`` (word by word, as a model streams)."""

    name = "test:scripted-tool-llm"
    max_tool_rounds = 3

    def __init__(self, default: str = "Okay.") -> None:
        self.default = default
        self.plan: deque[Turn] = deque()
        self.requests: list[Request] = []

    def script(self, *turns: Turn) -> None:
        self.plan = deque(turns)
        self.requests = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        async for item in self.stream_with_tools(
            messages, tools=(), max_tokens=max_tokens, temperature=temperature
        ):
            if isinstance(item, str):
                yield item

    async def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        seen = [message.copy() for message in messages]
        self.requests.append(Request(seen, list(tools), tool_choice))
        turn = self.plan.popleft() if self.plan else _words(self.default)
        for item in turn(seen) if callable(turn) else turn:
            await asyncio.sleep(0.002)
            yield item


def _words(text: str) -> list[str | ToolCall]:
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])]


def say(text: str) -> list[str | ToolCall]:
    """A turn that speaks ``text``."""
    return _words(text)
