"""Server tools over /ws, with an OpenAI-compatible server that streams ``tool_calls``
the way vLLM does (``loadtest.fault_llm`` mode ``script``): each outcome, the filler,
interruptions during a tool and during the answer, ``end_call`` — and after each, the
history the model is sent next."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.events import (
    ResponseAudioDelta,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    ResponseToolCall,
    ResponseToolResult,
    SessionEnded,
)
from pipeline.tools import ToolRegistry, server_tool
from pipeline.tools.builtin import builtin_tools
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, collect_until_done, scrape, serving, value

pytestmark = pytest.mark.filterwarnings("error")

SLOW_S = 1.5
LONG_ANSWER = " ".join(["The order left our warehouse this morning and is on its way."] * 6)
side_effects: list[str] = []


async def lookup_order(order_id: str) -> str:
    """Where an order is."""
    side_effects.append(f"lookup {order_id}")
    return f"order {order_id} shipped"


async def flaky_lookup(order_id: str) -> str:
    """Always fails."""
    raise RuntimeError("the order database is down")


async def slow_lookup(order_id: str) -> str:
    """Takes its time."""
    side_effects.append(f"slow start {order_id}")
    await asyncio.sleep(SLOW_S)
    side_effects.append(f"slow end {order_id}")
    return f"order {order_id} found late"


async def book_table(day: str) -> str:
    """Books a table: must not be half done."""
    side_effects.append(f"book start {day}")
    await asyncio.sleep(SLOW_S)
    side_effects.append(f"book end {day}")
    return f"table booked for {day}"


def _script(request: SeenRequest) -> ScriptedReply:
    """A model that calls a tool named by the user's words, then speaks the result."""
    last = request.messages[-1]
    if last["role"] == "tool":
        if "answer at length" in _last_user(request):
            return ScriptedReply(f"{last['content']}. {LONG_ANSWER}")
        return ScriptedReply(f"Here is what I found: {last['content']}.")
    said = _last_user(request)
    calls = {
        "where is order": [("lookup_order", '{"order_id": "A7"}')],
        "two orders": [("lookup_order", '{"order_id": "B1"}'),
                       ("lookup_order", '{"order_id": "B2"}')],
        "broken": [("flaky_lookup", '{"order_id": "C3"}')],
        "bad arguments": [("lookup_order", '{"order": 7}')],
        "slowly": [("slow_lookup", '{"order_id": "D4"}')],
        "book": [("book_table", '{"day": "Friday"}')],
        "too slow": [("slow_timeout", '{"order_id": "E5"}')],
        "goodbye": [("end_call", "{}")],
        "map of": [("show_map", '{"city": "Paris"}')],
    }
    for words, reply in calls.items():
        if words in said:
            return ScriptedReply("", reply, pieces=3)
    return ScriptedReply("Sure.")


def _last_user(request: SeenRequest) -> str:
    return next(m["content"] for m in reversed(request.messages) if m["role"] == "user")


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FaultyLLMServer]:
    with FaultyLLMServer(token_interval_s=0.005) as server:
        server.mode = "script"
        server.script = _script
        yield server


@pytest.fixture(scope="module")
def server(llm_server: FaultyLLMServer) -> Iterator[RunningServer]:
    llm = OpenAICompatLLM(llm_server.url, "scripted", api_key="unused")
    engines = bench_engines(llm=llm)
    engines.tools = ToolRegistry([
        *builtin_tools(["get_current_time", "end_call"]),
        server_tool(lookup_order),
        server_tool(flaky_lookup),
        server_tool(slow_lookup, timeout_s=5),
        server_tool(slow_lookup, name="slow_timeout", timeout_s=0.3),
        server_tool(book_table, timeout_s=5, on_interrupt="finish"),
    ])
    settings = Settings(llm_backend="openai", llm_url=llm.base_url)
    with serving(settings, engines) as running:
        yield running


def _of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def _next_request_history(
    client: VoiceForgeClient, llm_server: FaultyLLMServer
) -> list[dict[str, Any]]:
    """The messages the model is sent on the next turn: the call's history."""
    seen = len(llm_server.chat_requests())
    await client.send_text("thanks")
    await collect_until_done(client)
    return llm_server.chat_requests()[seen].messages[1:-1]  # no system prompt, no "thanks"


def _tool_exchange(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, what) of the history after the first user turn, calls by name."""
    out = []
    for message in history[1:]:
        if message.get("tool_calls"):
            out.extend(("call", c["function"]["name"]) for c in message["tool_calls"])
        else:
            out.append((message["role"], message["content"]))
    return out


async def test_a_server_tool_is_called_and_its_result_spoken(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    before = await scrape(server.http)
    async with await VoiceForgeClient.connect(server.url) as client:
        assert set(client.created.limits["server_tools"]) >= {"lookup_order", "end_call"}
        await client.send_text("where is order A7?")
        events = await collect_until_done(client)
        call = _of(events, ResponseToolCall)[0]
        assert (call.name, json.loads(call.arguments), call.executor) == (
            "lookup_order", {"order_id": "A7"}, "server"
        )
        result = _of(events, ResponseToolResult)[0]
        assert (result.call_id, result.status, result.output) == (
            call.call_id, "ok", "order A7 shipped"
        )
        done = _of(events, ResponseDone)[0]
        assert done.status is ResponseStatus.COMPLETED
        assert done.text == "Here is what I found: order A7 shipped."
        assert done.timings["tool_calls"] == 1.0 and done.timings["tool_ms"] >= 0
        assert "tool_filler" not in done.timings
        # The second request carried the call and its result, in OpenAI's shape.
        answer_request = llm_server.chat_requests()[-1].messages
        assert answer_request[-2]["tool_calls"][0]["function"] == {
            "name": "lookup_order", "arguments": '{"order_id": "A7"}'
        }
        assert answer_request[-1] == {
            "role": "tool", "content": "order A7 shipped", "tool_call_id": call.call_id
        }
        history = await _next_request_history(client, llm_server)
    assert _tool_exchange(history) == [
        ("call", "lookup_order"), ("tool", "order A7 shipped"),
        ("assistant", "Here is what I found: order A7 shipped."),
    ]
    after = await scrape(server.http)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("voiceforge_tool_calls_total", tool="lookup_order", status="ok") == 1
    assert grew("voiceforge_tool_seconds_count", tool="lookup_order") == 1
    assert grew("voiceforge_stage_seconds_count", stage="tools") >= 1


async def test_parallel_calls_run_together_and_answer_in_order(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("where are my two orders?")
        events = await collect_until_done(client)
        results = _of(events, ResponseToolResult)
        assert sorted(r.output for r in results) == ["order B1 shipped", "order B2 shipped"]
        done = _of(events, ResponseDone)[0]
        assert done.timings["tool_calls"] == 2.0
        history = await _next_request_history(client, llm_server)
    assert _tool_exchange(history)[:4] == [
        ("call", "lookup_order"), ("call", "lookup_order"),
        ("tool", "order B1 shipped"), ("tool", "order B2 shipped"),
    ]


@pytest.mark.parametrize(
    ("said", "status", "detail"),
    [
        ("the broken one", "error", "the order database is down"),
        ("with bad arguments", "invalid_arguments", "order_id"),
        ("it is too slow", "timeout", "0.3 s"),
    ],
)
async def test_a_failing_tool_is_a_result_the_agent_speaks_about(
    server: RunningServer, llm_server: FaultyLLMServer, said: str, status: str, detail: str
) -> None:
    before = list(side_effects)
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text(said)
        events = await collect_until_done(client)
        result = _of(events, ResponseToolResult)[0]
        assert result.status == status and detail in result.output
        done = _of(events, ResponseDone)[0]
        # Not a failed reply: the model read the error and the caller heard about it.
        assert done.status is ResponseStatus.COMPLETED and status in done.text
        history = await _next_request_history(client, llm_server)
    exchange = _tool_exchange(history)
    assert exchange[0][0] == "call" and exchange[1][0] == "tool"
    assert json.loads(exchange[1][1])["error"] == status
    if status == "invalid_arguments":
        assert side_effects == before  # the function never saw them


async def test_a_slow_tool_gets_one_filler_and_then_the_answer(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("look it up slowly please")
        events = await collect_until_done(client, timeout_s=SLOW_S + 20)
        done = _of(events, ResponseDone)[0]
        assert done.status is ResponseStatus.COMPLETED
        assert done.timings["tool_filler"] == 1.0
        assert done.text.split(".")[0] + "." in ("One moment.", "Let me check.", "Just a second.")
        assert done.text.endswith("Here is what I found: order D4 found late.")
        # The filler was heard before the tool's result was there.
        kinds = [type(e) for e in events]
        first_audio = kinds.index(ResponseAudioDelta)
        assert first_audio < kinds.index(ResponseToolResult)
        assert done.text.count("moment") + done.text.count("check") + done.text.count(
            "second") == 1
        history = await _next_request_history(client, llm_server)
    assert _tool_exchange(history)[-1] == ("assistant", done.text.strip())


async def test_an_interruption_during_a_slow_tool_cancels_it_and_history_says_so(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    starts, ends = side_effects.count("slow start D4"), side_effects.count("slow end D4")
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("check order slowly")
        call = await _wait_for(client, ResponseToolCall)
        await client.send_text("never mind")
        events = await collect_until_done(client, timeout_s=20)
        done = _of(events, ResponseDone)[0]
        assert (done.status, done.reason) == (ResponseStatus.CANCELLED, "new_text_input")
        result = _of(events, ResponseToolResult)[0]
        assert (result.call_id, result.status) == (call.call_id, "cancelled")
        await collect_until_done(client)  # the reply to "never mind"
        history = await _next_request_history(client, llm_server)
    await asyncio.sleep(SLOW_S)  # had it not been cancelled, it would have ended by now
    assert side_effects.count("slow start D4") == starts + 1
    assert side_effects.count("slow end D4") == ends
    exchange = _tool_exchange(history)
    assert exchange[0] == ("call", "slow_lookup")
    assert json.loads(exchange[1][1])["error"] == "cancelled"
    # Nothing of the reply was heard: no assistant text between the result and "never mind".
    assert exchange[2] == ("user", "never mind")


async def test_an_interruption_lets_a_finish_tool_end_and_keeps_its_result_unspoken(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("book a table")
        await _wait_for(client, ResponseToolCall)
        await client.cancel()
        events = await collect_until_done(client, timeout_s=SLOW_S + 20)
        done = _of(events, ResponseDone)[0]
        assert (done.status, done.reason) == (ResponseStatus.CANCELLED, "client_cancelled")
        result = _of(events, ResponseToolResult)[0]
        assert (result.status, result.output) == ("ok", "table booked for Friday")
        assert "table booked" not in "".join(e.delta for e in _of(events, ResponseTextDelta))
        history = await _next_request_history(client, llm_server)
    assert side_effects.count("book end Friday") >= 1
    assert _tool_exchange(history)[:2] == [
        ("call", "book_table"), ("tool", "table booked for Friday")
    ]


async def test_an_interruption_during_the_answer_keeps_only_what_was_heard(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("where is order A7? answer at length")
        await _wait_for(client, ResponseAudioDelta)
        await client.cancel()
        events = await collect_until_done(client, timeout_s=20)
        done = _of(events, ResponseDone)[0]
        assert done.status is ResponseStatus.CANCELLED
        assert len(done.text_heard) < len(done.text)
        history = await _next_request_history(client, llm_server)
    exchange = _tool_exchange(history)
    assert exchange[:2] == [("call", "lookup_order"), ("tool", "order A7 shipped")]
    heard = [what for role, what in exchange[2:] if role == "assistant"]
    assert heard in ([done.text_heard], []) and (not heard or heard[0] != done.text)


async def test_end_call_says_goodbye_then_closes_the_call(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("goodbye, that's all")
        events = await collect_until_done(client)
        done = _of(events, ResponseDone)[0]
        assert done.status is ResponseStatus.COMPLETED and "call ends" in done.text
        assert _of(events, ResponseToolCall)[0].name == "end_call"
        ended = await client.next_event(10)
        assert isinstance(ended, SessionEnded) and ended.reason == "end_call"
        assert await client.next_event(10) is None  # the server closed the socket
        await asyncio.wait_for(client._ws.wait_closed(), 10)
        assert client._ws.close_code == 1000


async def _wait_for(client: VoiceForgeClient, kind: type) -> Any:
    for _ in range(500):
        event = await client.next_event(20)
        assert event is not None, "the server closed the connection"
        if isinstance(event, kind):
            return event
    raise AssertionError(f"no {kind.__name__}")


async def test_a_caller_who_speaks_up_after_the_goodbye_keeps_the_call(
    server: RunningServer, llm_server: FaultyLLMServer
) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.update_session(end_call_grace_ms=3000.0)
        await client.send_text("goodbye, that's all")
        events = await collect_until_done(client)
        assert _of(events, ResponseToolCall)[0].name == "end_call"
        await client.send_text("wait, one more question")  # within the grace
        events = await collect_until_done(client)
        assert _of(events, ResponseDone)[0].text == "Sure."
        # Past the grace: no hang-up came, and the call still answers.
        await asyncio.sleep(3.5)
        await client.send_text("thanks")
        events = await collect_until_done(client)
        assert not _of(events, SessionEnded)
        assert _of(events, ResponseDone)[0].status is ResponseStatus.COMPLETED


MAP = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("fails", [False, True])
async def test_a_client_tool_is_run_by_the_python_sdk_and_its_result_read_back(
    server: RunningServer, llm_server: FaultyLLMServer, fails: bool
) -> None:
    shown: list[str] = []

    async def show_map(city: str) -> str:
        if fails:
            raise RuntimeError("no screen attached")
        shown.append(city)
        return f"a map of {city} is on the caller's screen"

    async with await VoiceForgeClient.connect(server.url) as client:
        await client.add_tool("show_map", "Show a city map on the caller's screen.", MAP,
                              show_map)
        await client.send_text("show me the map of Paris")
        events = await collect_until_done(client)
        call = _of(events, ResponseToolCall)[0]
        assert (call.name, call.executor) == ("show_map", "client")
        result = _of(events, ResponseToolResult)[0]
        done = _of(events, ResponseDone)[0]
        assert done.status is ResponseStatus.COMPLETED
        history = await _next_request_history(client, llm_server)
    exchange = _tool_exchange(history)
    assert exchange[0] == ("call", "show_map")
    if fails:
        assert result.status == "error" and "no screen attached" in result.output
        assert json.loads(exchange[1][1]) == {"error": "error", "detail": result.output}
    else:
        assert shown == ["Paris"] and result.status == "ok"
        assert exchange[1] == ("tool", "a map of Paris is on the caller's screen")
        assert done.text == "Here is what I found: a map of Paris is on the caller's screen."
    assert exchange[2] == ("assistant", done.text)
