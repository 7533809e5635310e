"""Where a reply's words come from: one model turn, or model turns around tool calls.

The response runner (pipeline/responses.py) speaks what this yields; the tool rounds
themselves are pipeline/tools/reply.py's. A model turn is retried while nothing of it
has come out yet (the call's retry policy); after its first delta a failure is the
reply's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pipeline.engines.base import ChatMessage, ToolCallingLLM
from pipeline.errors import EngineError, LLMError
from pipeline.reply_state import Response
from pipeline.session import CallContext
from pipeline.tools.reply import ReplyTools, SpeakNow
from pipeline.tools.spec import ToolCall


async def reply_text(
    call: CallContext, response: Response
) -> AsyncGenerator[str | SpeakNow, None]:
    """The reply's text deltas (and fillers to say at once while a tool runs)."""
    if response.canned is not None:
        yield response.canned
        return
    config = call.config
    llm = call.engines.llm
    offered = call.tools.offered(config.tools, config.tool_choice)
    if not offered or not isinstance(llm, ToolCallingLLM):
        async for piece in model_turn(call, response, response.messages, []):
            if isinstance(piece, str):
                yield piece
        return
    response.tools = ReplyTools(
        call.tools,
        offered,
        response_id=response.response_id,
        client_timeout_s=config.tool_timeout_ms / 1000,
        filler_after_s=config.tool_filler_ms / 1000,
        timings=response.timings,
        max_rounds=llm.max_tool_rounds,
    )

    def request(
        messages: list[ChatMessage], tools: list[dict[str, Any]], choice: str
    ) -> AsyncGenerator[str | ToolCall, None]:
        return model_turn(call, response, messages, tools, choice)

    text = response.tools.text(
        response.messages, request, response.released, lambda: not response.text.strip()
    )
    try:
        async for item in text:
            yield item
    finally:
        await text.aclose()


async def model_turn(
    call: CallContext,
    response: Response,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]],
    tool_choice: str = "auto",
) -> AsyncGenerator[str | ToolCall, None]:
    """One model turn, retried while nothing of it has come out yet."""
    config = call.config
    llm = call.engines.llm
    max_tokens = response.max_tokens or config.max_response_tokens
    attempt = 0
    while True:
        stream: Any = (
            llm.stream_with_tools(
                messages, tools=tools, max_tokens=max_tokens,
                temperature=config.temperature, tool_choice=tool_choice,
            )
            if tools and isinstance(llm, ToolCallingLLM)
            else llm.stream(messages, max_tokens=max_tokens, temperature=config.temperature)
        )
        produced = False
        try:
            async for delta in stream:
                produced = True
                yield delta
            return
        except EngineError as exc:
            if produced:
                raise
            attempt = await call.retry_or_raise(exc, attempt, "LLM request")
            response.timings["llm_retries"] = float(attempt)
        except Exception as exc:  # garbage from the engine, a bug in it
            raise LLMError(f"{llm.name}: {exc!r}", transient=False) from exc
        finally:
            await stream.aclose()
