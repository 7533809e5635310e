"""A client tool in the browser's JS SDK against an OpenAI-compatible server that streams
``tool_calls`` the way vLLM does (``loadtest.fault_llm`` mode ``script``, argument pieces
split): the handler runs in the page, and its result is what the model reads next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import Settings
from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from pipeline.engines.openai_compat import OpenAICompatLLM
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, serving
from tests.web.test_client_tools import (
    ORDER,
    _wait,
    page,  # noqa: F401  (the fixture)
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def _script(request: SeenRequest) -> ScriptedReply:
    if request.messages[-1]["role"] == "tool":
        return ScriptedReply(f"The order system says: {request.messages[-1]['content']}.")
    return ScriptedReply("", [("lookup_order", '{"order_id": "Q42"}')], pieces=4)


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FaultyLLMServer]:
    with FaultyLLMServer(token_interval_s=0.005) as server:
        server.mode, server.script = "script", _script
        yield server


@pytest.fixture(scope="module")
def server(llm_server: FaultyLLMServer) -> Iterator[RunningServer]:
    engines = bench_engines(llm=OpenAICompatLLM(llm_server.url, "scripted", api_key="x"))
    with serving(Settings(llm_backend="openai", llm_url=llm_server.url), engines) as running:
        yield running


def test_a_js_tool_answers_a_streamed_call(
    server: RunningServer, llm_server: FaultyLLMServer, page: tuple[Any, Any]  # noqa: F811
) -> None:
    tab, errors = page
    tab.goto(f"{server.http}/")
    tab.evaluate(
        """async ([url, schema]) => {
            const { VoiceChat } = await import("/voiceforge.js");
            const chat = new VoiceChat({ url });
            window.chat = chat;
            await chat.start();
            chat.addTool({
                name: "lookup_order",
                description: "Look up an order.",
                parameters: schema,
                handler: ({ order_id }) => `order ${order_id} left the warehouse`,
            });
            chat.sendText("Where is order Q42?");
        }""",
        [server.url, ORDER],
    )
    _wait(
        tab,
        "() => Object.values(window.chat.stats.responses).some((r) => r.status === 'completed')",
        "the answer after the browser's result",
    )
    call = tab.evaluate("() => window.chat.stats.toolCalls[0]")
    assert (call["name"], call["executor"], call["status"]) == ("lookup_order", "client", "ok")
    answer = llm_server.chat_requests()[-1]
    assert answer.messages[-2]["tool_calls"][0]["function"]["arguments"] == (
        '{"order_id": "Q42"}'  # joined from its streamed pieces
    )
    assert answer.messages[-1]["content"] == "order Q42 left the warehouse"
    tab.evaluate("() => window.chat.stop()")
    assert errors == []
