"""Client tools in a real Chromium (protocol 1.2): the page's own tool and one declared
through the JS SDK, each answered in the browser and read back by the model.

The server is real, with the bench STT/TTS and a scripted tool-calling LLM
(tests/tools/scripted.py) whose requests show what the model read: the browser's
result must arrive there, and the page must show the call in its transcript. The
last turn calls the server's ``end_call``: the page says the agent hung up instead
of reporting a lost connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from agent.config import Settings
from pipeline.engines.base import ChatMessage
from pipeline.tools import ToolCall, ToolRegistry
from pipeline.tools.builtin import builtin_tools
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, serving
from tests.tools.scripted import ScriptedToolLLM, say
from tests.web.conftest import WAIT_MS, PageErrors, chromium_args, open_page, playwright_sync

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ORDER = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
}


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
def page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    silent = tmp_path / "silence.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    yield from open_page(chromium_args(microphone_wav=silent))


def _wait(page: Any, condition: str, what: str, arg: Any = None) -> None:
    try:
        page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)
    except playwright_sync.TimeoutError:
        stats = page.evaluate("() => JSON.stringify(window.voiceforge)")
        log = page.locator("#log").inner_text()
        pytest.fail(f"timed out waiting for {what}\nstats: {stats}\nlog:\n{log}")


def _type(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def _speak_the_browsers_time(messages: list[ChatMessage]) -> list[str | ToolCall]:
    return say(f"It is {json.loads(messages[-1]['content'])['local_time']} where you are.")


def _ask_the_time_and_hear_it(tab: Any) -> None:
    """Ask the page's tool question; wait for its result and the answer that speaks it."""
    tab.click("#start")
    tab.wait_for_selector("#connection[data-connected='true']")
    _type(tab, "What time is it here?")
    _wait(tab, "() => document.querySelector(\"li.tool[data-status='ok']\")", "the tool's result")
    _wait(
        tab,
        "() => [...document.querySelectorAll('#log li.agent .bubble')]"
        ".some((b) => /where you are/.test(b.textContent))",
        "the answer that speaks the browser's time",
    )


def test_the_pages_tool_runs_in_the_browser_and_the_agent_hangs_up(
    server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script(
        [ToolCall("get_local_time", "{}", call_id="call_clock")],
        _speak_the_browsers_time,
        [ToolCall("end_call", "{}", call_id="call_bye")],
        say("Goodbye!"),
    )
    tab.goto(f"{server.http}/?tools=1")
    _ask_the_time_and_hear_it(tab)
    # The model was offered the page's tool and read what the browser answered.
    assert "get_local_time" in llm.requests[0].tool_names()
    result = llm.requests[1].messages[-1]
    assert (result["role"], result["tool_call_id"]) == ("tool", "call_clock")
    browser_zone = tab.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone")
    assert json.loads(result["content"])["time_zone"] == browser_zone
    # Shown in the transcript: the call, where it ran, how it went.
    entry = tab.locator("#log li.agent li.tool[data-call-id='call_clock']")
    assert entry.get_attribute("data-executor") == "client"
    assert "get_local_time()" in entry.inner_text()
    assert "in this page" in entry.inner_text()
    assert "✓" in entry.inner_text()
    assert tab.evaluate("() => window.voiceforge.toolCalls[0].status") == "ok"

    # "Goodbye": the server's end_call; the page tells the caller the agent hung up.
    _type(tab, "That's all, thanks.")
    tab.wait_for_selector("#connection[data-connected='false']")
    assert tab.evaluate("() => window.voiceforge.endReason") == "end_call"
    assert "The agent ended the call." in tab.locator("#log").inner_text()
    assert tab.locator("#banner").is_hidden()
    server_entry = tab.locator("#log li.tool[data-call-id='call_bye']")
    assert server_entry.get_attribute("data-executor") == "server"
    assert errors == []


def test_a_tool_declared_through_the_sdk_sends_its_error_back(
    server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "Z9"}', call_id="call_z9")],
        say("I could not find that order."),
    )
    tab.goto(f"{server.http}/")
    tab.evaluate(
        """async ([url, schema]) => {
            const { VoiceChat } = await import("/voiceforge.js");
            const chat = new VoiceChat({ url });
            window.chat = chat;
            window.seen = [];
            for (const type of ["response.tool_call", "response.tool_result"]) {
                chat.addEventListener(
                    type, (event) => window.seen.push([type, event.detail.status]));
            }
            await chat.start();
            chat.addTool({
                name: "lookup_order",
                description: "Look up an order.",
                parameters: schema,
                handler: ({ order_id }) => { throw new Error(`no order ${order_id}`); },
            });
            chat.sendText("Where is order Z9?");
        }""",
        [server.url, ORDER],
    )
    _wait(
        tab,
        "() => window.chat.stats.toolCalls.length"
        " && window.chat.stats.toolCalls[0].status !== 'running'",
        "the tool call's result",
    )
    call = tab.evaluate("() => window.chat.stats.toolCalls[0]")
    assert (call["name"], call["executor"], call["status"]) == ("lookup_order", "client", "error")
    assert call["output"] == "Error: no order Z9"
    assert tab.evaluate("() => window.seen") == [
        ["response.tool_call", None], ["response.tool_result", "error"]
    ]
    _wait(
        tab,
        "() => Object.values(window.chat.stats.responses).some((r) => r.status === 'completed')",
        "the answer after the error",
    )
    assert llm.requests[1].messages[-1] == {
        "role": "tool",
        "content": json.dumps({"error": "error", "detail": "Error: no order Z9"}),
        "tool_call_id": "call_z9",
    }
    tab.evaluate("() => window.chat.stop()")
    assert errors == []


def test_a_handler_the_server_stopped_waiting_for_is_aborted_and_sends_nothing(
    server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script(
        [ToolCall("lookup_order", '{"order_id": "C3"}', call_id="call_slow")],
        say("The order system is slow today."),
        [ToolCall("lookup_order", '{"order_id": "E5"}', call_id="call_interrupted")],
        say("All right, never mind."),
    )
    tab.goto(f"{server.http}/")
    tab.evaluate(
        """async ([url, schema]) => {
            const { VoiceChat } = await import("/voiceforge.js");
            window.started = [];
            window.aborted = [];
            const chat = new VoiceChat({ url, tools: [{
                name: "lookup_order",
                description: "Look up an order.",
                parameters: schema,
                // Never settles by itself: only its signal can end the wait.
                handler: ({ order_id }, { signal }) => new Promise(() => {
                    window.started.push(order_id);
                    signal.addEventListener(
                        "abort", () => window.aborted.push([order_id, signal.reason.message]));
                }),
            }] });
            window.chat = chat;
            await chat.start();
            chat.updateSession({ tool_timeout_ms: 300 });
            chat.sendText("Where is order C3?");
        }""",
        [server.url, ORDER],
    )
    # The server times the call out and answers the model itself; the page stops.
    _wait(tab, "() => window.aborted.length === 1", "the timed-out handler to be aborted")
    assert tab.evaluate("() => window.aborted[0]") == ["C3", "tool call timeout"]
    _wait(
        tab,
        "() => Object.values(window.chat.stats.responses).some((r) => r.status === 'completed')",
        "the answer after the timeout",
    )
    assert tab.evaluate("() => window.chat.stats.toolCalls[0].status") == "timeout"

    # A barge-in while the handler runs: the call is cancelled, the handler aborted.
    tab.evaluate("() => window.chat.updateSession({ tool_timeout_ms: 60000 })")
    tab.evaluate("() => window.chat.sendText('Where is order E5?')")
    _wait(tab, "() => window.started.length === 2", "the second call's handler")
    tab.evaluate("() => window.chat.sendText('Never mind.')")
    _wait(tab, "() => window.aborted.length === 2", "the interrupted handler to be aborted")
    assert tab.evaluate("() => window.aborted[1]") == ["E5", "tool call cancelled"]
    _wait(
        tab,
        "() => Object.values(window.chat.stats.responses)"
        ".filter((r) => r.status === 'completed').length === 2",
        "the answer to the interruption",
    )
    # Neither handler's result reached the server (it would be unknown_tool_call).
    assert tab.evaluate("() => window.chat.stats.errors") == []
    assert llm.requests[-1].messages[-1] == {"role": "user", "content": "Never mind."}
    tab.evaluate("() => window.chat.stop()")
    assert errors == []


def test_over_webrtc_the_page_says_the_agent_hung_up_not_that_the_line_was_lost(
    server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script([ToolCall("end_call", "{}", call_id="call_rtc_bye")], say("Goodbye!"))
    tab.goto(f"{server.http}/?transport=webrtc")
    tab.click("#start")
    tab.wait_for_selector("#connection[data-connected='true']")
    _type(tab, "That's all, thanks.")
    tab.wait_for_selector("#connection[data-connected='false']", timeout=WAIT_MS)
    _wait(tab, "() => /The agent ended the call/.test(document.querySelector('#log').innerText)",
          "the hang-up note")
    assert tab.locator("#banner").is_hidden()  # no "connection lost"
    assert errors == []


def test_over_webrtc_the_pages_tool_is_declared_on_the_data_channel_and_runs_in_the_browser(
    server: RunningServer, llm: ScriptedToolLLM, page: tuple[Any, PageErrors]
) -> None:
    tab, errors = page
    llm.script(
        [ToolCall("get_local_time", "{}", call_id="call_rtc_clock")], _speak_the_browsers_time
    )
    tab.goto(f"{server.http}/?transport=webrtc&tools=1")
    # (The data channel is ordered: the page's session.update comes before its text.)
    _ask_the_time_and_hear_it(tab)
    assert llm.requests[0].tool_names() == ["end_call", "get_local_time"]
    result = llm.requests[1].messages[-1]
    assert (result["role"], result["tool_call_id"]) == ("tool", "call_rtc_clock")
    assert tab.evaluate("() => window.voiceforge.toolCalls[0].status") == "ok"
    assert errors == []
