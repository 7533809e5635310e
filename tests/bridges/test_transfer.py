"""``transfer_call`` on a Twilio line: the agent says it is transferring, and once that
was heard the live call is redirected to the destination's number through Twilio's REST
API (a local stand-in here), then the stream ends."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from agent.config import Settings
from agent.gate import twilio_signature
from agent.transfer import TwilioTransfer, parse_targets
from loadtest.fault_llm import FaultyLLMServer, ScriptedReply, SeenRequest
from pipeline.engines.bench import ToneTTS
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.tools import ToolRegistry
from pipeline.tools.builtin import builtin_tools
from tests.bridges.test_telephony import Provider, loud_ms, start_call, until_hung_up
from tests.bridges.twilio_line import RATE
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, serving, serving_app
from tests.speech import speak

pytestmark = pytest.mark.filterwarnings("error")

TOKEN = "twilio-test-token"
redirects: list[dict[str, Any]] = []


async def _calls(request: Request) -> JSONResponse:
    form = parse_qs((await request.body()).decode())
    redirects.append({
        "path": request.url.path,
        "auth": base64.b64decode(request.headers["authorization"].split()[1]).decode(),
        "twiml": form["Twiml"][0],
    })
    return JSONResponse({"sid": "CA0", "status": "in-progress"})


def _transfer(request: SeenRequest) -> ScriptedReply:
    if request.messages[-1]["role"] == "tool":
        return ScriptedReply("I am putting you through to sales now.")
    return ScriptedReply("", [("transfer_call", '{"destination": "Sales"}')])


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    twilio = Starlette(routes=[Route("/2010-04-01/Accounts/{a}/Calls/{c}.json", _calls,
                                     methods=["POST"])])
    with serving_app(twilio) as twilio_url, FaultyLLMServer(token_interval_s=0.005) as llm:
        llm.mode, llm.script = "script", _transfer
        engines = bench_engines(
            llm=OpenAICompatLLM(llm.url, "scripted", api_key="x"),
            tts=ToneTTS(ms_per_char=40.0, chunk_ms=50.0),
        )
        engines.tools = ToolRegistry(builtin_tools(["end_call", "transfer_call"]))
        settings = Settings(
            llm_backend="openai", llm_url=llm.url, twilio_auth_token=TOKEN,
            transfer_targets={"sales": "+15550100"}, twilio_api_url=twilio_url,
        )
        with serving(settings, engines) as running:
            yield running


async def test_the_call_is_redirected_once_the_agent_said_so(server: RunningServer) -> None:
    url = server.url.replace("/ws", "/telephony/twilio")
    signed = {"X-Twilio-Signature": twilio_signature(TOKEN, url)}
    async with connect(url, additional_headers=signed) as ws:
        call = Provider(ws)
        await start_call(call)
        call.say(speak("Can I talk to someone in sales?", RATE))
        await until_hung_up(call)
    assert (ws.close_code, ws.close_reason) == (1000, "transfer")
    assert loud_ms(call.played) > 1200  # "putting you through" was heard first
    assert redirects == [{
        "path": "/2010-04-01/Accounts/AC0/Calls/CA0.json",
        "auth": f"AC0:{TOKEN}",
        "twiml": "<Response><Dial>+15550100</Dial></Response>",
    }]


async def test_only_named_destinations_can_be_chosen() -> None:
    transfer = TwilioTransfer({"sales": "+1555"}, "AC0", TOKEN, "CA0")
    with pytest.raises(ValueError, match="there are: sales"):
        await transfer.choose("+1 900 555 0199")
    assert transfer.chosen is None and not await transfer.redirect()
    assert "sales" in await transfer.choose("  SALES ")
    assert parse_targets("Sales = +1555, front desk=+1666") == {
        "sales": "+1555", "front desk": "+1666"
    }
    with pytest.raises(ValueError, match="name=number"):
        parse_targets("sales")
