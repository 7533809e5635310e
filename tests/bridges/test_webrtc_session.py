"""A WebRTC caller changes its session and runs client tools over the ``events`` data
channel, as a ``/ws`` client does with the same messages (docs/telephony.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack

from agent.config import Settings
from loadtest.harness import bench_engines
from pipeline.engines.base import ChatMessage
from pipeline.tools import ToolCall
from tests.bridges.test_webrtc_abuse import call, peers
from tests.faults.support import serving
from tests.tools.scripted import ScriptedToolLLM, say

pytestmark = [pytest.mark.filterwarnings("error")]

SHOW_MAP: dict[str, Any] = {
    "type": "function",
    "name": "show_map",
    "description": "Show a city map on the caller's screen.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _answer_with_the_result(messages: list[ChatMessage]) -> list[str | ToolCall]:
    result = next(m for m in reversed(messages) if m["role"] == "tool")
    return say(f"Done: {result['content']}")


async def test_a_client_tool_declared_and_answered_on_the_data_channel() -> None:
    llm = ScriptedToolLLM()
    llm.script([ToolCall("show_map", json.dumps({"city": "Paris"}))], _answer_with_the_result)
    with serving(Settings(), bench_engines(llm=llm)) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            session = await call(server, peer)
            peer.send({"type": "session.update",
                       "session": {"tools": [SHOW_MAP], "instructions": "Be brief."}})
            updated = await peer.next_event("session.updated")
            assert updated["session"]["instructions"] == "Be brief."
            assert [t.name for t in session.conversation.config.tools] == ["show_map"]

            peer.send({"type": "conversation.text", "text": "Show me Paris."})
            tool_call = await peer.next_event("response.tool_call")
            assert (tool_call["name"], tool_call["executor"]) == ("show_map", "client")
            assert json.loads(tool_call["arguments"]) == {"city": "Paris"}
            peer.send({"type": "tool.result", "call_id": tool_call["call_id"],
                       "output": "the map is on the screen"})
            result = await peer.next_event("response.tool_result")
            assert (result["status"], result["output"]) == ("ok", "the map is on the screen")
            done = await peer.next_event("response.done")
            assert done["status"] == "completed"
            assert done["text"] == "Done: the map is on the screen"
            # The model was offered the caller's tool.
            assert llm.requests[0].tool_names()[-1] == "show_map"

            # A result nobody waits for is an error; the call goes on.
            peer.send({"type": "tool.result", "call_id": tool_call["call_id"], "output": "again"})
            error = await peer.next_event("error")
            assert error["code"] == "unknown_tool_call" and error["fatal"] is False


@pytest.mark.parametrize(
    "fields",
    [{"input_sample_rate": 16000}, {"output_sample_rate": 24000}, {"playback_pause": False},
     {"temperature": 9.0}, {"tools": [{"type": "function", "name": "x",
                                       "parameters": {"type": "string", "pattern": "a+"}}]}],
)
async def test_a_session_update_the_bridge_cannot_take_is_refused_and_changes_nothing(
    fields: dict[str, Any],
) -> None:
    with serving(Settings(), bench_engines()) as server:
        async with peers() as (peer,):
            peer.pc.addTrack(AudioStreamTrack())
            session = await call(server, peer)
            before = session.conversation.config
            peer.send({"type": "session.update", "session": {**fields, "instructions": "No."}})
            error = await peer.next_event("error")
            assert error["code"] == "invalid_session" and error["fatal"] is False
            assert session.conversation.config == before  # all or nothing
            peer.send({"type": "conversation.text", "text": "Hello there."})
            done = await peer.next_event("response.done")
            assert done["status"] == "completed"
