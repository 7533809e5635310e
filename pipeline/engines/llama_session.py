"""One call's view of the in-process llama.cpp model (``LlamaCppLLM.for_session``).

Every request made through it is queued as that call's, so the model serves the
waiting requests of different calls in turn and keeps each call's context; the
optional protocols of pipeline/engines/base.py (warm-up, reading the caller's words
ahead, standing aside for the first audio, release) are passed through with the
call's name.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.engines.base import ChatMessage
from pipeline.tools.spec import ToolCall

if TYPE_CHECKING:
    from pipeline.engines.llama_cpp import LlamaCppLLM


class LlamaSessionView:
    """One call's view of the shared model: its streams are queued as that call's."""

    def __init__(self, engine: LlamaCppLLM, session_id: str) -> None:
        self._engine = engine
        self._session = session_id
        self.name = engine.name
        self.max_tool_rounds = engine.max_tool_rounds

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncGenerator[str, None]:
        return self._engine.stream(
            messages, max_tokens=max_tokens, temperature=temperature, session=self._session
        )

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncGenerator[str | ToolCall, None]:
        return self._engine.stream_with_tools(
            messages, tools=tools, max_tokens=max_tokens, temperature=temperature,
            session=self._session, tool_choice=tool_choice,
        )

    def release(self) -> None:
        """The call has ended (``Conversation.close``)."""
        self._engine.release(self._session)

    def warm(self, instructions: str, tools: Sequence[dict[str, Any]] = ()) -> None:
        """The call set new instructions: read them (and its tools) before its first reply."""
        self._engine.warm(instructions, self._session, tools)

    @property
    def idle(self) -> bool:
        return self._engine.idle

    def read_words(self, messages: Sequence[ChatMessage]) -> bool:
        """The caller's words so far: read them ahead of the end of their turn."""
        return self._engine.read_words(messages, self._session)

    def stop_reading(self) -> None:
        self._engine.stop_reading(self._session)

    def pause_generation(self) -> None:
        self._engine.pause_generation(self._session)

    def resume_generation(self) -> None:
        self._engine.resume_generation(self._session)
