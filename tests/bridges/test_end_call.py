"""``end_call`` on the phone bridges: on a Twilio line the goodbye is played (its marks
come back), then the stream is hung up with 1000; over WebRTC the data channel says
``session.ended`` and the server closes the peer connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from agent.config import Settings
from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from pipeline.engines.bench import ToneTTS
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.tools import ToolRegistry
from pipeline.tools.builtin import builtin_tools
from tests.bridges.test_telephony import Provider, loud_ms, start_call, until_hung_up
from tests.bridges.test_webrtc import Caller as WebRTCCaller
from tests.bridges.test_webrtc import caller  # noqa: F401  (the fixture, on this server)
from tests.bridges.twilio_line import RATE
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, serving
from tests.speech import speak

pytestmark = pytest.mark.filterwarnings("error")


def _goodbye(request: SeenRequest) -> ScriptedReply:
    if request.messages[-1]["role"] == "tool":
        return ScriptedReply("Goodbye, and thank you for calling.")
    return ScriptedReply("", [("end_call", "{}")])


@pytest.fixture(scope="module")
def bridge_server() -> Iterator[RunningServer]:
    """A scripted model that ends every call (named as tests/bridges/conftest.py's
    server, so the WebRTC caller fixture connects here)."""
    with FaultyLLMServer(token_interval_s=0.005) as llm_server:
        llm_server.mode, llm_server.script = "script", _goodbye
        engines = bench_engines(
            llm=OpenAICompatLLM(llm_server.url, "scripted", api_key="x"),
            tts=ToneTTS(ms_per_char=40.0, chunk_ms=50.0),  # a goodbye of ~1.4 s
        )
        engines.tools = ToolRegistry(builtin_tools(["end_call"]))
        with serving(Settings(llm_backend="openai", llm_url=llm_server.url), engines) as running:
            yield running


async def test_end_call_plays_the_goodbye_then_hangs_up_the_line(
    bridge_server: RunningServer,
) -> None:
    url = bridge_server.url.replace("/ws", "/telephony/twilio")
    async with connect(url) as ws:
        call = Provider(ws)
        await start_call(call)
        call.say(speak("Goodbye, that's all.", RATE))
        await until_hung_up(call)
    assert (ws.close_code, ws.close_reason) == (1000, "end_call")
    assert loud_ms(call.played) > 1200  # the goodbye was heard before the line went down
    # Every mark sent had come back: the line went down after the whole goodbye played.
    sent = {m["mark"]["name"] for m in call.received if m["event"] == "mark"}
    assert sent and sent <= set(call.acked)


async def test_end_call_closes_a_webrtc_call(caller: WebRTCCaller) -> None:  # noqa: F811
    closed = asyncio.Event()

    @caller.pc.on("connectionstatechange")
    def on_state() -> None:
        if caller.pc.connectionState in ("closed", "failed"):
            closed.set()

    caller.send({"type": "conversation.text", "text": "goodbye, that's all"})
    call = await caller.next_event("response.tool_call", within_s=30)
    assert call["name"] == "end_call"
    done = await caller.next_event("response.done", within_s=30)
    assert done["status"] == "completed" and done["text"].startswith("Goodbye")
    ended = await caller.next_event("session.ended", within_s=30)
    assert ended["reason"] == "end_call"
    await asyncio.wait_for(closed.wait(), 30)
