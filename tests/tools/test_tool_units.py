"""Tools without a model: schemas, server tools from type hints, built-ins, one call's runs,
and history with tool calls in it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo
from typing import Any, Literal

import pytest

from pipeline.errors import ConfigurationError
from pipeline.events import Event, ResponseToolCall, ResponseToolResult
from pipeline.history import History, fit_to_context
from pipeline.tools import (
    Executor,
    ToolCall,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolSpec,
    ToolStatus,
    server_tool,
    tool,
)
from pipeline.tools.builtin import BUILTIN, builtin_tools
from pipeline.tools.executor import CallTools
from pipeline.tools.registry import tools_in_modules
from pipeline.tools.spec import InvalidArguments

pytestmark = pytest.mark.filterwarnings("error")

ORDER = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "rush": {"type": "boolean"}},
    "required": ["order_id"],
    "additionalProperties": False,
}


# ------------------------------------------------------------------ specs


def test_a_spec_refuses_bad_names_and_schemas() -> None:
    with pytest.raises(ToolError, match="letters, digits"):
        ToolSpec("look up", "x", ORDER)
    with pytest.raises(ToolError, match="type object"):
        ToolSpec("lookup", "x", {"type": "string"})
    with pytest.raises(ToolError, match="not a valid JSON schema"):
        ToolSpec("lookup", "x", {"type": "object", "properties": {"a": {"type": 7}}})


def test_arguments_are_checked_against_the_schema() -> None:
    spec = ToolSpec("lookup", "Look up an order.", ORDER)
    assert spec.parse_arguments('{"order_id": "A7"}') == {"order_id": "A7"}
    with pytest.raises(InvalidArguments, match="order_id"):
        spec.parse_arguments("")  # empty text reads as no arguments, which lack order_id
    assert ToolSpec("ping", "Ping.", {"type": "object"}).parse_arguments("  ") == {}
    with pytest.raises(InvalidArguments, match="rush"):
        spec.parse_arguments('{"order_id": "A7", "rush": "yes"}')
    with pytest.raises(InvalidArguments, match="not JSON"):
        spec.parse_arguments('{"order_id": ')
    with pytest.raises(InvalidArguments, match="object"):
        spec.parse_arguments('["A7"]')
    with pytest.raises(InvalidArguments, match="longer than"):
        spec.parse_arguments(json.dumps({"order_id": "x" * 9000}))


def test_the_model_sees_openai_function_definitions() -> None:
    spec = ToolSpec("lookup", "Look up an order.", ORDER)
    assert spec.openai() == {
        "type": "function",
        "function": {"name": "lookup", "description": "Look up an order.", "parameters": ORDER},
    }


# ----------------------------------------------------------- server tools


async def _book(day: str, people: int, ctx: ToolContext, note: str | None = None) -> dict[str, Any]:
    """Book a table for the caller.

    More words the model does not need."""
    return {"booked": day, "people": people, "call": ctx.session_id, "note": note}


def test_a_server_tool_is_described_by_its_type_hints() -> None:
    described = server_tool(_book, on_interrupt="finish")
    spec = described.spec
    assert spec.name == "_book" and spec.description == "Book a table for the caller."
    assert described.context_parameter == "ctx"
    properties = spec.parameters["properties"]
    assert set(properties) == {"day", "people", "note"}  # the context is not an argument
    assert properties["people"]["type"] == "integer"
    assert set(spec.parameters["required"]) == {"day", "people"}
    assert spec.parameters["additionalProperties"] is False
    with pytest.raises(InvalidArguments):
        spec.parse_arguments('{"day": "Friday", "people": "four"}')


def test_sync_functions_and_unnamed_kwargs_are_refused() -> None:
    def not_async(day: str) -> str:
        return day

    async def anything(**kwargs: Any) -> str:
        return ""

    with pytest.raises(ToolError, match="async"):
        server_tool(not_async)  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="kwargs"):
        server_tool(anything)


def test_operator_modules_are_discovered_and_checked(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "shop_tools.py").write_text(
        "from pipeline.tools import tool\n"
        "@tool(timeout_s=3)\n"
        "async def order_status(order_id: str) -> str:\n"
        "    '''Say where an order is.'''\n"
        "    return 'shipped'\n"
        "async def helper() -> None: ...\n"
    )
    (tmp_path / "empty_tools.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = tools_in_modules(["shop_tools"])
    assert [t.spec.name for t in found] == ["order_status"] and found[0].spec.timeout_s == 3
    with pytest.raises(ConfigurationError, match="no @tool"):
        tools_in_modules(["empty_tools"])
    with pytest.raises(ConfigurationError, match="cannot import"):
        tools_in_modules(["no_such_tools_module"])
    with pytest.raises(ConfigurationError, match="two server tools"):
        ToolRegistry([*found, *found])


def test_the_decorator_leaves_the_function_callable() -> None:
    @tool
    async def ping() -> str:
        """Ping."""
        return "pong"

    assert asyncio.run(ping()) == "pong"


# ---------------------------------------------------------------- built-ins


async def test_get_current_time_tells_the_operators_zone() -> None:
    spec = BUILTIN["get_current_time"].spec
    assert spec.parameters["properties"] == {}  # a small model fills any argument it gets
    for zone in ("Asia/Tokyo", "America/New_York"):
        said = await BUILTIN["get_current_time"].run({}, ToolContext("sess_1", zone))
        now = dt.datetime.now(zoneinfo.ZoneInfo(zone))
        assert zone in said and now.strftime("%A") in said and str(now.year) in said
        hour = now.strftime("%I").lstrip("0")
        assert f"It is {hour}:" in said or now.minute == 59  # the hour may turn meanwhile
    with pytest.raises(ValueError, match="unknown time zone"):
        await BUILTIN["get_current_time"].run({}, ToolContext("sess_1", "Mars/Olympus"))


async def test_end_call_marks_the_call_and_transfer_needs_a_line() -> None:
    context = ToolContext("sess_1", "UTC")
    assert "goodbye" in await BUILTIN["end_call"].run({}, context)
    assert context.end_requested == "end_call"
    registry = ToolRegistry(builtin_tools(["get_current_time", "end_call", "transfer_call"]))
    assert [t.spec.name for t in registry.offered(context)] == ["get_current_time", "end_call"]

    async def transfer(destination: str) -> str:
        return f"transferring to {destination}"

    phone = ToolContext("sess_2", "UTC", transfer_handler=transfer)
    assert "transfer_call" in [t.spec.name for t in registry.offered(phone)]
    assert await BUILTIN["transfer_call"].run({"destination": "sales"}, phone) == (
        "transferring to sales"
    )
    with pytest.raises(ConfigurationError, match="unknown built-in"):
        builtin_tools(["make_coffee"])


# ------------------------------------------------------------- one call's runs


class _Runs:
    def __init__(self, registry: ToolRegistry) -> None:
        self.events: list[Event] = []
        self.tools = CallTools(registry, ToolContext("sess_t", "UTC"), self.events.append)

    def results(self) -> list[ResponseToolResult]:
        return [e for e in self.events if isinstance(e, ResponseToolResult)]


def _registry(**behaviour: Any) -> ToolRegistry:
    calls: list[str] = behaviour.setdefault("calls", [])
    release: asyncio.Event = behaviour.setdefault("release", asyncio.Event())

    async def lookup(order_id: str) -> str:
        """Look up an order."""
        calls.append(order_id)
        return f"order {order_id} shipped"

    async def broken(order_id: str) -> str:
        """Always fails."""
        raise RuntimeError("the order database is down")

    async def slow(order_id: str) -> str:
        """Takes its time."""
        calls.append(f"slow {order_id}")
        await release.wait()
        return "slow done"

    return ToolRegistry([
        server_tool(lookup),
        server_tool(broken),
        server_tool(slow, timeout_s=0.2),
        server_tool(slow, name="careful", timeout_s=5, on_interrupt="finish"),
    ])


async def test_every_outcome_is_a_result_the_model_can_read() -> None:
    calls: list[str] = []
    runs = _Runs(_registry(calls=calls))
    offered = runs.tools.offered((), "auto")
    round_ = runs.tools.start(
        [
            ToolCall("lookup", '{"order_id": "A1"}', "call_1"),
            ToolCall("broken", '{"order_id": "A2"}', "call_2"),
            ToolCall("slow", '{"order_id": "A3"}', "call_3"),
            ToolCall("lookup", '{"order": "A4"}', "call_4"),
            ToolCall("teleport", "{}", "call_5"),
        ],
        offered, "resp_1", client_timeout_s=1.0,
    )
    outcomes = await runs.tools.wait(round_, offered)
    assert [(o.call.call_id, o.status) for o in outcomes] == [
        ("call_1", ToolStatus.OK),
        ("call_2", ToolStatus.ERROR),
        ("call_3", ToolStatus.TIMEOUT),
        ("call_4", ToolStatus.INVALID_ARGUMENTS),
        ("call_5", ToolStatus.UNKNOWN_TOOL),
    ]
    assert outcomes[0].output == "order A1 shipped"
    assert "the order database is down" in outcomes[1].output
    assert "0.2 s" in outcomes[2].output
    assert calls == ["A1", "slow A3"]  # invalid arguments never reach the function
    assert {e.call_id for e in runs.events if isinstance(e, ResponseToolCall)} == {
        f"call_{i}" for i in range(1, 6)
    }
    assert {r.call_id: r.status for r in runs.results()} == {
        "call_1": "ok", "call_2": "error", "call_3": "timeout",
        "call_4": "invalid_arguments", "call_5": "unknown_tool",
    }


async def test_a_call_id_runs_once_whatever_asks_again() -> None:
    calls: list[str] = []
    runs = _Runs(_registry(calls=calls))
    offered = runs.tools.offered((), "auto")
    call = ToolCall("lookup", '{"order_id": "A1"}', "call_same")
    first = await runs.tools.wait(runs.tools.start([call], offered, "r1", 1.0), offered)
    again = await runs.tools.wait(runs.tools.start([call], offered, "r2", 1.0), offered)
    assert calls == ["A1"] and first[0] is again[0]


async def test_an_interruption_cancels_cancel_tools_and_lets_finish_tools_end() -> None:
    release = asyncio.Event()
    calls: list[str] = []
    runs = _Runs(_registry(calls=calls, release=release))
    offered = runs.tools.offered((), "auto")
    round_ = runs.tools.start(
        [
            ToolCall("slow", '{"order_id": "c"}', "c1"),
            ToolCall("careful", '{"order_id": "f"}', "f1"),
        ],
        offered, "resp_1", 1.0,
    )
    waiting = asyncio.create_task(runs.tools.wait(round_, offered))
    await asyncio.sleep(0.05)
    assert calls == ["slow c", "slow f"]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    outcomes = await asyncio.wait_for(runs.tools.settle(round_), 5)
    assert [(o.call.call_id, o.status) for o in outcomes] == [
        ("c1", ToolStatus.CANCELLED), ("f1", ToolStatus.OK)
    ]
    assert outcomes[1].output == "slow done"


async def test_client_tools_wait_for_the_clients_answer_or_time_out() -> None:
    runs = _Runs(ToolRegistry())
    client = ToolSpec("show_map", "Show a map.", {"type": "object"}, executor=Executor.CLIENT)
    offered = runs.tools.offered((client,), "auto")
    assert runs.tools.offered((client,), "none") == []
    round_ = runs.tools.start([ToolCall("show_map", "{}", "m1")], offered, "r", 1.0)
    await asyncio.sleep(0)
    sent = [e for e in runs.events if isinstance(e, ResponseToolCall)]
    assert [(e.call_id, e.executor) for e in sent] == [("m1", "client")]
    assert runs.tools.client_result("m1", "shown", False)
    assert not runs.tools.client_result("m1", "again", False)  # answered already
    assert not runs.tools.client_result("nope", "x", False)
    assert (await runs.tools.wait(round_, offered))[0].output == "shown"
    late = runs.tools.start([ToolCall("show_map", "{}", "m2")], offered, "r", 0.05)
    outcome = (await runs.tools.wait(late, offered))[0]
    assert outcome.status is ToolStatus.TIMEOUT
    assert not runs.tools.client_result("m2", "too late", False)


async def test_closing_the_call_cancels_what_still_runs() -> None:
    runs = _Runs(_registry())
    offered = runs.tools.offered((), "auto")
    round_ = runs.tools.start([ToolCall("careful", '{"order_id": "x"}', "k")], offered, "r", 1)
    await asyncio.sleep(0)
    await runs.tools.close()
    assert round_.runs["k"].cancelled()


# ------------------------------------------------------------------ history

_CALL = {"id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"order_id": "A1"}'}}


def test_history_keeps_a_tool_exchange_together_when_trimming() -> None:
    history = History("system", max_turns=6)
    history.add_user("where is my order")
    history.add_tool_round([_CALL], ["order A1 shipped"])
    history.add_assistant("It shipped.")
    history.add_user("thanks")
    history.add_assistant("You're welcome.")
    roles: list[Literal["system", "user", "assistant", "tool"]] = [
        m["role"] for m in history.messages()
    ]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert history.messages()[2]["tool_calls"] == [_CALL]
    assert history.messages()[3]["tool_call_id"] == "call_1"
    history.add_user("one more")  # over 6: the whole first exchange goes, not half of it
    assert [m["role"] for m in history.messages()] == ["system", "user", "assistant", "user"]
    assert history.dropped == 4


def test_fitting_to_the_context_never_splits_a_call_from_its_result() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1 " * 50},
        {"role": "assistant", "content": "", "tool_calls": [_CALL]},
        {"role": "tool", "content": "r1 " * 50, "tool_call_id": "call_1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "", "tool_calls": [_CALL]},
        {"role": "tool", "content": "r2", "tool_call_id": "call_1"},
    ]
    fitted = fit_to_context(messages, lambda text: len(text.split()), 40)  # type: ignore[arg-type]
    assert fitted is not None
    assert [m["role"] for m in fitted] == ["system", "user", "assistant", "tool"]
    assert fitted[1]["content"] == "u2" and fitted[2]["tool_calls"] == [_CALL]


async def test_a_tools_concurrency_bound_holds_across_calls() -> None:
    running: list[int] = []
    most = 0
    release = asyncio.Event()

    async def narrow(key: str) -> str:
        """One at a time."""
        nonlocal most
        running.append(1)
        most = max(most, len(running))
        await release.wait()
        running.pop()
        return key

    registry = ToolRegistry([server_tool(narrow, max_concurrency=1)])
    first, second = _Runs(registry), _Runs(registry)  # two calls, one server
    offered = first.tools.offered((), "auto")
    rounds = [
        runs.tools.start([ToolCall("narrow", f'{{"key": "{name}"}}', name)], offered, "r", 1.0)
        for runs, name in ((first, "a"), (second, "b"))
    ]
    await asyncio.sleep(0.05)
    assert len(running) == 1  # the second call's run waits for the slot
    release.set()
    outcomes = [await runs.tools.wait(round_, offered) for runs, round_ in
                zip((first, second), rounds, strict=True)]
    assert [o[0].output for o in outcomes] == ["a", "b"] and most == 1


def test_a_client_schema_may_not_ask_for_huge_counts() -> None:
    from agent.protocol import MAX_SCHEMA_COUNT, ProtocolError, parse_client_tools

    def tool(schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "function", "name": "t", "parameters": schema}]

    fits = {"type": "object", "properties": {"tags": {
        "type": "array", "items": {"type": "string", "maxLength": MAX_SCHEMA_COUNT},
        "maxItems": MAX_SCHEMA_COUNT}}}
    assert parse_client_tools(tool(fits))[0].name == "t"
    for keyword in ("maxItems", "minItems", "maxLength", "minLength", "maxProperties"):
        huge = {"type": "object", "properties": {"x": {keyword: 100_000}}}
        with pytest.raises(ProtocolError, match=f"{keyword} above {MAX_SCHEMA_COUNT}"):
            parse_client_tools(tool(huge))
    # A property merely named like the keyword is not one.
    named = {"type": "object", "properties": {"maxItems": {"type": "integer"}}}
    assert parse_client_tools(tool(named))[0].name == "t"
