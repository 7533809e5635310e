"""Client tools over ``/v1/realtime``, driven by the unmodified ``openai`` SDK: the
model's call arrives as a ``function_call`` item, the client's
``function_call_output`` item (and its ``response.create``) goes back to the reply
that waits for it, which then speaks the result. Bench STT/TTS and a scripted
tool-calling LLM whose requests are kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from agent.config import Settings
from pipeline.tools import ToolCall
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, serving
from tests.tools.scripted import ScriptedToolLLM, say

pytestmark = pytest.mark.timeout(120)

ORDER = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "description": "the order number"}},
    "required": ["order_id"],
}


@pytest.fixture(scope="module")
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM()


@pytest.fixture(scope="module")
def server(llm: ScriptedToolLLM) -> Iterator[RunningServer]:
    with serving(Settings(), bench_engines(llm=llm)) as running:
        yield running


async def test_a_function_call_item_is_answered_by_a_function_call_output_item(
    server: RunningServer, llm: ScriptedToolLLM,
) -> None:
    llm.script([ToolCall("lookup_order", '{"order_id": "A17"}', call_id="call_a17")],
               say("Order A17 has shipped."))
    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="unused")
    seen: list[str] = []

    async def until(conn: Any, kind: str) -> Any:
        async with asyncio.timeout(30):
            while True:
                event = await conn.recv()
                seen.append(event.type)
                assert event.type != "error", event
                if event.type == kind:
                    return event

    async with client.realtime.connect(model="m") as conn:
        await conn.session.update(session={"type": "realtime", "tools": [
            {"type": "function", "name": "lookup_order", "description": "Look up an order.",
             "parameters": ORDER}], "tool_choice": "auto"})
        updated = await until(conn, "session.updated")
        assert [tool.name for tool in updated.session.tools] == ["lookup_order"]
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Where is my order A17?"}]})
        await conn.response.create()
        call = await until(conn, "response.function_call_arguments.done")
        assert (call.call_id, call.name, call.arguments) == (
            "call_a17", "lookup_order", '{"order_id": "A17"}')
        # What an OpenAI client does: the output as an item, then ask for the reply.
        await conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": "call_a17", "output": "shipped"})
        await conn.response.create()
        done = await until(conn, "response.done")
    assert done.response.status == "completed"
    assert [item.type for item in done.response.output] == ["function_call", "message"]
    assert done.response.output[1].content[0].transcript == "Order A17 has shipped."
    assert seen.count("response.created") == 1  # the reply that called goes on
    tool_turn = llm.requests[-1].messages[-1]
    assert tool_turn["role"] == "tool" and "shipped" in tool_turn["content"]
    assert tool_turn["tool_call_id"] == "call_a17"
