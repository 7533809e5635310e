"""Typed turns sent one over the other: what the server keeps of them is bounded.

Found by ``python -m loadtest.reliability --only abuse_impact`` (docs/reliability.md
§5): a caller sending the largest ``conversation.text`` at the frame rate, never
playing a reply, made its one merged user turn grow by 16 kB a turn and be copied
whole at every turn — 1.4 GB of server memory and seven times the other calls'
latency p95 within seconds. The engines are the fast scripted ones.
"""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect

from agent.config import Settings
from loadtest.harness import bench_engines
from pipeline.engines.bench import ScriptedLLM
from tests.e2e.conftest import start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

TURNS = 40
LONGEST = "word " * 800  # 4000 characters, the protocol's limit


async def test_turns_sent_over_unheard_replies_do_not_grow_the_history_without_end() -> None:
    llm = ScriptedLLM(reply="Fine.", first_token_ms=0.0, tokens_per_second=500.0)
    settings = Settings(max_history_chars=16000)
    for server in start_server(settings, bench_engines(llm=llm)):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            for _ in range(TURNS):  # none of the replies is ever reported played
                await session.send({"type": "conversation.text", "text": LONGEST})
            await session.send({"type": "conversation.text", "text": "Last question."})
            await session.wait_for(
                lambda m: m["type"] == "response.done" and m["status"] == "completed", 30
            )
        # What the LLM was asked last: the newest words, within the history's limit.
        sent = llm.requests[-1]
        assert sum(len(m["content"]) for m in sent[1:]) <= settings.max_history_chars
        assert sent[-1]["role"] == "user" and sent[-1]["content"].endswith("Last question.")
