"""``/readyz`` reports an engine failing only on failures across calls (issue 13).

A real server (``/ws``) with scripted engines; the LLM is told to fail. One call's
failures, however many, leave the server ready; failures from a second call make
``/readyz`` name the engine until a turn succeeds again.
"""

from __future__ import annotations

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from pipeline.events import ResponseStatus
from tests.faults.support import (
    ProbeLLM,
    bench_engines,
    done,
    errors,
    readyz,
    serving,
    typed_turn,
    wait_ready,
)

pytestmark = pytest.mark.e2e


async def _failed_turn(client: VoiceForgeClient, llm: ProbeLLM) -> None:
    llm.failures.append(ValueError("logits contain NaN"))
    events = await typed_turn(client, "Where is Paris?")
    assert [(e.code, e.category) for e in errors(events)] == [("llm_failed", "permanent")]
    assert done(events).status is ResponseStatus.FAILED


async def test_one_calls_failures_do_not_mark_the_engine_but_several_calls_do() -> None:
    llm = ProbeLLM(tokens_per_second=200, first_token_ms=5)
    with serving(Settings(), bench_engines(llm=llm)) as server:
        async with await VoiceForgeClient.connect(server.url) as first:
            for _ in range(3):
                await _failed_turn(first, llm)
            status, body = await readyz(server)
            assert status == 200, body

            async with await VoiceForgeClient.connect(server.url) as second:
                await _failed_turn(second, llm)
                status, body = await readyz(server)
                assert status == 503, body
                assert body["reasons"] == {"llm_failing": "llm_failed (permanent)"}

                answered = done(await typed_turn(second, "Where is Paris, then?"))
                assert answered.status is ResponseStatus.COMPLETED
                await wait_ready(server)
