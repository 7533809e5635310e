"""The OpenAI-compatible engine joins streamed ``tool_calls`` deltas the way vLLM sends them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.tools import ToolCall, ToolSpec

pytestmark = pytest.mark.filterwarnings("error")

WEATHER = ToolSpec(
    "get_weather", "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
MESSAGES = [{"role": "user", "content": "Weather in Paris and Rome?"}]


@pytest.fixture
def llm_server() -> Iterator[FaultyLLMServer]:
    with FaultyLLMServer(token_interval_s=0.0) as server:
        server.mode = "script"
        yield server


async def _run(server: FaultyLLMServer, reply: ScriptedReply) -> list[str | ToolCall]:
    server.script = lambda request: reply
    engine = OpenAICompatLLM(server.url, "m")
    try:
        return [
            item async for item in engine.stream_with_tools(
                MESSAGES, tools=[WEATHER.openai()], max_tokens=64, temperature=0.0  # type: ignore[arg-type]
            )
        ]
    finally:
        await engine.aclose()


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_calls_with_split_arguments_come_out_whole(
    llm_server: FaultyLLMServer, interleave: bool
) -> None:
    paris, rome = json.dumps({"city": "Paris"}), json.dumps({"city": "Rome"})
    items = await _run(
        llm_server,
        ScriptedReply("Let me look.", [("get_weather", paris), ("get_weather", rome)],
                      interleave=interleave, pieces=4),
    )
    text = "".join(item for item in items if isinstance(item, str))
    calls = [item for item in items if isinstance(item, ToolCall)]
    assert text == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})
    ]
    assert len({c.call_id for c in calls}) == 2 and all(c.call_id.startswith("chatcmpl-tool")
                                                        for c in calls)
    request: SeenRequest = llm_server.chat_requests()[-1]
    assert [tool["function"]["name"] for tool in request.tools] == ["get_weather"]


async def test_plain_stream_offers_no_tools_and_yields_only_text(
    llm_server: FaultyLLMServer,
) -> None:
    llm_server.script = lambda request: ScriptedReply("Hello there.")
    engine = OpenAICompatLLM(llm_server.url, "m")
    try:
        text = [d async for d in engine.stream(MESSAGES, max_tokens=8, temperature=0.0)]  # type: ignore[arg-type]
    finally:
        await engine.aclose()
    assert "".join(text) == "Hello there."
    assert llm_server.chat_requests()[-1].tools == []
