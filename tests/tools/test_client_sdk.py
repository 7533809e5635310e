"""Client tools through the Python SDK, over a real server (protocol 1.2).

The server is real (uvicorn on 127.0.0.1:0) with the bench STT/TTS and a scripted
tool-calling LLM (tests/tools/scripted.py) whose every request is kept: what the
model read after a tool ran, and the history the next turn sends it, are asserted
from those requests. The SDK answers ``response.tool_call`` with its handlers; the
tests check a result spoken, a handler raising, a client that never answers, a
handler past its time, an unknown call id, a barge-in during a client tool, and
the agent hanging up (``session.ended``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from agent.client import ClientError, ClientTool, VoiceForgeClient
from agent.config import Settings
from agent.protocol import ServerMessage, decode_server_frame, encode_server_message
from pipeline.events import (
    ErrorEvent,
    ResponseDone,
    ResponseStatus,
    ResponseToolCall,
    ResponseToolResult,
    SessionEnded,
)
from pipeline.tools import ToolCall, ToolRegistry
from pipeline.tools.builtin import builtin_tools
from tests.e2e.conftest import RunningServer
from tests.faults.support import (
    bench_engines,
    collect_until_done,
    done,
    errors,
    kinds,
    serving,
    typed_turn,
    wait_until,
)
from tests.tools.scripted import ScriptedToolLLM, say

pytestmark = pytest.mark.timeout(120)

ORDER = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "description": "the order number"}},
    "required": ["order_id"],
}
WAIT_S = 10.0
"""Bound on every wait for something a handler or the server does (milliseconds of work)."""

Message = TypeVar("Message")


@pytest.fixture(scope="module")
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM()


@pytest.fixture(scope="module")
def server(llm: ScriptedToolLLM) -> Iterator[RunningServer]:
    engines = bench_engines(llm=llm)
    engines.tools = ToolRegistry(builtin_tools(["end_call"]))
    with serving(Settings(), engines) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[VoiceForgeClient]:
    async with await VoiceForgeClient.connect(server.url) as connected:
        # No filler: the spoken text is exactly the scripted answer.
        await connected.update_session(tool_filler_ms=0)
        yield connected


def one(events: Sequence[object], kind: type[Message]) -> Message:
    found = [event for event in events if isinstance(event, kind)]
    assert len(found) == 1, f"{kind.__name__} x{len(found)} in {kinds(events)}"
    return found[0]


def call_entry(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


# ---------------------------------------------------------------- the wire format


def test_the_sdk_decodes_the_tool_messages() -> None:
    for message in (
        ResponseToolCall("resp_1", "call_1", "lookup_order", '{"order_id": "A17"}', "client"),
        ResponseToolResult("resp_1", "call_1", "lookup_order", "ok", "shipped", 12.5),
        SessionEnded("end_call"),
    ):
        assert decode_server_frame(encode_server_message(message)) == message


def test_a_bad_tool_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ClientError, match="tool name"):
        ClientTool("look up", "spaces are not allowed", ORDER, lambda: "")
    with pytest.raises(ClientError, match="type object"):
        ClientTool("lookup", "", {"type": "string"}, lambda: "")


async def test_a_tool_the_server_refuses_leaves_the_declared_ones(
    client: VoiceForgeClient,
) -> None:
    await client.add_tool("lookup_order", "Look up an order.", ORDER, lambda order_id: "")
    zip_code = {
        "type": "object",
        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
    }
    with pytest.raises(ClientError, match=r"invalid_session: .*'pattern' is not accepted"):
        await client.add_tool("check_zip", "Check a zip code.", zip_code, lambda zip: "")
    assert list(client.tools) == ["lookup_order"]
    assert [tool["name"] for tool in client.session["tools"]] == ["lookup_order"]


# ----------------------------------------------------------------- a result spoken


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_client_tool_runs_in_the_sdk_and_the_model_speaks_its_result(
    client: VoiceForgeClient, llm: ScriptedToolLLM, kind: str
) -> None:
    ran: list[tuple[str, bool]] = []

    async def lookup_async(order_id: str) -> dict[str, str]:
        ran.append((order_id, threading.current_thread() is threading.main_thread()))
        return {"order": order_id, "status": "shipped"}

    def lookup_sync(order_id: str) -> dict[str, str]:
        ran.append((order_id, threading.current_thread() is threading.main_thread()))
        return {"order": order_id, "status": "shipped"}

    handler = lookup_async if kind == "async" else lookup_sync
    session = await client.add_tool("lookup_order", "Look up an order.", ORDER, handler)
    assert [tool["name"] for tool in session["tools"]] == ["lookup_order"]
    arguments = '{"order_id": "A17"}'
    llm.script(
        [ToolCall("lookup_order", arguments, call_id="call_a17")],
        say("Your order A17 has shipped."),
        say("You are welcome."),
    )
    events = await typed_turn(client, "Where is my order A17?")

    call = one(events, ResponseToolCall)
    assert (call.call_id, call.name, call.arguments, call.executor) == (
        "call_a17", "lookup_order", arguments, "client"
    )
    # The async handler runs on the client's loop; a sync one in a worker thread.
    assert ran == [("A17", kind == "async")]
    result = one(events, ResponseToolResult)
    assert (result.call_id, result.status) == ("call_a17", "ok")
    assert json.loads(result.output) == {"order": "A17", "status": "shipped"}
    final = done(events)
    assert final.status is ResponseStatus.COMPLETED
    assert final.text == "Your order A17 has shipped."
    assert final.timings["tool_calls"] == 1.0
    assert errors(events) == []

    # The model was offered the tool, then read the call and the client's result.
    assert "lookup_order" in llm.requests[0].tool_names()
    after_tool = llm.requests[1].messages
    assert after_tool[-2:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            call_entry("call_a17", "lookup_order", arguments)
        ]},
        {"role": "tool", "content": result.output, "tool_call_id": "call_a17"},
    ]
    # History: the call, its result, then what was said.
    await typed_turn(client, "Thanks!")
    history = llm.requests[2].messages[1:]
    assert history == [
        {"role": "user", "content": "Where is my order A17?"},
        after_tool[-2],
        after_tool[-1],
        {"role": "assistant", "content": "Your order A17 has shipped."},
        {"role": "user", "content": "Thanks!"},
    ]


async def test_a_handler_that_raises_answers_an_error_the_model_can_speak_about(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    def lookup(order_id: str) -> str:
        raise LookupError(f"no order {order_id}")

    await client.add_tool("lookup_order", "Look up an order.", ORDER, lookup)
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "Z9"}', call_id="call_z9")],
        say("I could not find order Z9."),
    )
    events = await typed_turn(client, "Where is order Z9?")

    result = one(events, ResponseToolResult)
    assert (result.status, result.output) == ("error", "LookupError: no order Z9")
    assert done(events).status is ResponseStatus.COMPLETED
    assert errors(events) == []  # a failed tool is the model's business, not an error
    assert llm.requests[1].messages[-1] == {
        "role": "tool",
        "content": json.dumps({"error": "error", "detail": "LookupError: no order Z9"}),
        "tool_call_id": "call_z9",
    }


# ----------------------------------------------------------------------- timeouts


async def test_a_client_that_never_answers_times_out_and_a_late_answer_is_refused(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    # Declared without a handler: this program answers it itself, and does not.
    silent = ClientTool("lookup_order", "Look up an order.", ORDER, lambda order_id: "")
    await client.update_session(tools=[silent.definition()], tool_timeout_ms=300)
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "B2"}', call_id="call_b2")],
        say("The order system is not answering."),
    )
    events = await typed_turn(client, "Where is order B2?")

    assert one(events, ResponseToolCall).executor == "client"
    result = one(events, ResponseToolResult)
    assert result.status == "timeout"
    assert result.elapsed_ms >= 300
    tool_message = llm.requests[1].messages[-1]
    assert tool_message["tool_call_id"] == "call_b2"
    assert json.loads(tool_message["content"])["error"] == "timeout"
    assert done(events).status is ResponseStatus.COMPLETED

    await client.send_tool_result("call_b2", "too late")
    late = await next_of(client, ErrorEvent)
    assert (late.code, late.category, late.fatal) == ("unknown_tool_call", "client", False)


async def test_a_handler_past_its_time_is_cancelled_and_sends_nothing(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def lookup(order_id: str) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    await client.add_tool("lookup_order", "Look up an order.", ORDER, lookup)
    await client.update_session(tool_timeout_ms=300)
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "C3"}', call_id="call_c3")],
        say("The order system is slow today."),
    )
    events = await typed_turn(client, "Where is order C3?")
    assert started.is_set()
    assert one(events, ResponseToolResult).status == "timeout"
    await asyncio.wait_for(cancelled.wait(), WAIT_S)
    # Nothing late was sent: the next turn brings no unknown_tool_call error.
    assert errors(await typed_turn(client, "Okay.")) == []


async def test_a_call_with_bad_arguments_is_settled_by_the_server_and_not_answered(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    ran: list[str] = []

    async def lookup(**arguments: Any) -> str:
        ran.append(json.dumps(arguments))
        return "shipped"

    await client.add_tool("lookup_order", "Look up an order.", ORDER, lookup)
    llm.script(
        [ToolCall("lookup_order", '{"order": 5}', call_id="call_bad")],
        say("Which order do you mean?"),
    )
    events = await typed_turn(client, "Where is my order?")
    # Its arguments miss order_id: the server settles the call, the client is not
    # asked to run it (a result from it would only be refused as unknown_tool_call).
    assert one(events, ResponseToolCall).executor == "server"
    result = one(events, ResponseToolResult)
    assert result.status == "invalid_arguments"
    assert json.loads(llm.requests[1].messages[-1]["content"])["error"] == "invalid_arguments"
    later = await typed_turn(client, "Order A17.")
    assert errors([*events, *later]) == []
    assert ran == []


# --------------------------------------------------------------- call ids refused


async def test_an_unknown_or_repeated_call_id_is_refused_and_the_call_goes_on(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    await client.send_tool_result("call_never_made", "hello")
    refused = await next_of(client, ErrorEvent)
    assert (refused.code, refused.category, refused.fatal) == ("unknown_tool_call", "client", False)
    assert "call_never_made" in refused.message

    # Answered by hand, twice: the first answer counts, the second is refused.
    manual = ClientTool("lookup_order", "Look up an order.", ORDER, lambda order_id: "")
    await client.update_session(tools=[manual.definition()])
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "D4"}', call_id="call_d4")],
        say("Order D4 is on its way."),
    )
    await client.send_text("Where is order D4?")
    call = await next_of(client, ResponseToolCall)
    await client.send_tool_result(call.call_id, "on its way")
    await client.send_tool_result(call.call_id, "on its way, again")
    events = await collect_until_done(client)
    assert one(events, ResponseToolResult).output == "on its way"
    assert [error.code for error in errors(events)] == ["unknown_tool_call"]
    assert done(events).status is ResponseStatus.COMPLETED
    assert llm.requests[1].messages[-1]["content"] == "on its way"


# -------------------------------------------------------------------- barge-in


async def test_a_barge_in_cancels_the_running_handler(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def lookup(order_id: str) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    await client.add_tool("lookup_order", "Look up an order.", ORDER, lookup)
    # The longest wait: only the server's cancel can stop the handler within WAIT_S.
    await client.update_session(tool_timeout_ms=60_000)
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "E5"}', call_id="call_e5")],
        say("All right, never mind."),
    )
    await client.send_text("Where is order E5?")
    await asyncio.wait_for(started.wait(), WAIT_S)
    await client.send_text("Never mind.")  # speaks over the reply waiting on the tool
    events = await collect_until_done(client, dones=2)

    first, second = [event for event in events if isinstance(event, ResponseDone)]
    assert (first.status, first.reason) == (ResponseStatus.CANCELLED, "new_text_input")
    assert second.status is ResponseStatus.COMPLETED
    result = one(events, ResponseToolResult)
    assert (result.call_id, result.status) == ("call_e5", "cancelled")
    await asyncio.wait_for(cancelled.wait(), WAIT_S)
    # History: the call and its cancelled result, then the new turn.
    history = llm.requests[-1].messages[1:]
    assert [message["role"] for message in history] == ["user", "assistant", "tool", "user"]
    assert json.loads(history[2]["content"])["error"] == "cancelled"
    assert history[3]["content"] == "Never mind."


# ------------------------------------------------------------------- hanging up


async def test_the_agent_hangs_up_and_the_sdk_says_why(
    client: VoiceForgeClient, llm: ScriptedToolLLM
) -> None:
    llm.script([ToolCall("end_call", "{}", call_id="call_bye")], say("Goodbye!"))
    await client.send_text("That's all, thanks.")
    events: list[ServerMessage] = []
    deadline = time.monotonic() + WAIT_S
    while (event := await client.next_event(max(0.0, deadline - time.monotonic()))) is not None:
        events.append(event)
    call = one(events, ResponseToolCall)
    assert (call.name, call.executor) == ("end_call", "server")
    assert done(events).text == "Goodbye!"
    # The goodbye is heard, then the server says why it ends the call, and closes.
    assert kinds(events)[-2:] == ["ResponseDone", "SessionEnded"]
    assert client.end_reason == "end_call"
    await wait_until(lambda: client.closed, WAIT_S, "the connection to close")
    assert client.close_code == 1000


async def next_of(client: VoiceForgeClient, kind: type[Message]) -> Message:
    """The next event of ``kind`` (others skipped), within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        event = await client.next_event(max(0.0, deadline - time.monotonic()))
        assert event is not None, "the server closed the connection"
        if isinstance(event, kind):
            return event
