"""The real OpenAI-compatible LLM client against an endpoint that misbehaves.

A real server (``/ws``, typed turns) runs ``OpenAICompatLLM`` against the local
``FaultyLLMServer``; STT and TTS are the bench engines. For every way the endpoint
can fail — refuse (HTTP 503, 429, 400, a closed port), stall before the first
token or in mid-stream, break the connection before or after some tokens, answer
garbage — the turn fails with the right error code and category, is retried only
when that is safe (transient, nothing said yet), ends with an apology when the
caller heard nothing, is counted in ``/metrics`` and marks the LLM failing in
``/readyz``; the next turn on the same call, against a healthy endpoint, is
answered and clears it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from loadtest.fault_llm import (
    FAULTS,
    PARTIAL_HEARD,
    PARTIAL_TOKENS,
    REPLY,
    RETRIES,
    Fault,
    FaultyLLMServer,
)
from pipeline.conversation import SessionConfig
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.events import ResponseStatus
from tests.e2e.conftest import RunningServer
from tests.faults.support import (
    audio_of,
    bench_engines,
    describe,
    done,
    error_deltas,
    errors,
    readyz,
    scrape,
    serving,
    text_of,
    tracebacks,
    typed_turn,
    wait_ready,
    wait_until,
)

APOLOGY = SessionConfig().apology
FIRST_TOKEN_TIMEOUT_S = 1.0
STALL_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FaultyLLMServer]:
    with FaultyLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(llm_server: FaultyLLMServer) -> Iterator[RunningServer]:
    llm = OpenAICompatLLM(
        llm_server.url,
        "fault-model",
        api_key="unused",
        connect_timeout_s=2.0,
        first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,
        stall_timeout_s=STALL_TIMEOUT_S,
    )
    # One call's engine failures are enough to report here (tests/faults/test_engine_health.py
    # checks the default, which wants failures from several calls).
    settings = Settings(llm_backend="openai", llm_url=llm.base_url, engine_failure_sessions=1)
    with serving(settings, bench_engines(llm=llm)) as s:
        yield s


@pytest.fixture
def healthy(llm_server: FaultyLLMServer) -> Iterator[FaultyLLMServer]:
    """The test server, healthy before and after the test."""
    llm_server.mode = "ok"
    yield llm_server
    llm_server.mode = "ok"
    if not llm_server.listening:
        llm_server.accept_connections()


def _break(llm_server: FaultyLLMServer, mode: str) -> None:
    if mode == "refused":
        llm_server.refuse_connections()
    else:
        llm_server.mode = mode


def _heal(llm_server: FaultyLLMServer, mode: str) -> None:
    llm_server.mode = "ok"
    if mode == "refused":
        llm_server.accept_connections()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.mode for f in FAULTS])
async def test_a_failing_endpoint_fails_the_turn_and_the_call_goes_on(
    fault: Fault, server: RunningServer, healthy: FaultyLLMServer
) -> None:
    llm_server = healthy
    await wait_ready(server)
    before = await scrape(server.http)
    with tracebacks() as logged:
        async with await VoiceForgeClient.connect(server.url) as client:
            _break(llm_server, fault.mode)
            seen = len(llm_server.chat_requests())
            started = time.monotonic()
            events = await typed_turn(client, "What is the weather like?")
            elapsed = time.monotonic() - started
            failed = done(events)
            failed_requests = llm_server.chat_requests()[seen:]

            # One error, for this response, with the code and category of the fault.
            assert [(e.code, e.category, e.fatal) for e in errors(events)] == [
                (fault.code, fault.category, False)
            ], errors(events)
            assert errors(events)[0].response_id == failed.response_id
            assert failed.status is ResponseStatus.FAILED
            assert failed.reason == fault.code
            # Retried only while transient and before any text: never after.
            assert len(failed_requests) == fault.requests, [r.mode for r in failed_requests]
            if fault.category == "transient" and not fault.heard_partial:
                assert failed.timings.get("llm_retries") == float(RETRIES)
                # Backoff 0.2 s then 0.4 s between the attempts.
                assert elapsed >= 0.6
            else:
                assert "llm_retries" not in failed.timings
            if fault.heard_partial:
                # What was spoken stays the reply; no apology on top of it.
                assert failed.text == "".join(PARTIAL_TOKENS)
                assert failed.text_heard == PARTIAL_HEARD
                assert APOLOGY not in text_of(events, failed.response_id)
                assert "apology" not in failed.timings
            else:
                # The caller heard nothing of an answer: the apology, spoken.
                assert failed.text == APOLOGY
                assert failed.text_heard == APOLOGY
                assert audio_of(events, failed.response_id)
                assert failed.played_ms > 0
            if fault.mode.startswith("stall"):
                # The engine hung up on a stalled stream (vLLM then frees the request).
                await wait_until(
                    lambda: all(r.client_closed for r in failed_requests), 5.0,
                    "the stalled streams closed by the client",
                )

            status, body = await readyz(server)
            if fault.category == "client":
                # The request was refused (HTTP 400), not the engine: still ready.
                assert status == 200, body
            else:
                assert status == 503, body
                assert body["reasons"]["llm_failing"] == f"{fault.code} ({fault.category})"
            after = await scrape(server.http)
            assert error_deltas(before, after) == {(fault.code, fault.category): 1.0}

            # The endpoint recovers: the next turn on the same call is answered.
            _heal(llm_server, fault.mode)
            events = await typed_turn(client, "And now?")
            answered = done(events)
            assert not errors(events), errors(events)
            assert answered.status is ResponseStatus.COMPLETED
            assert answered.text == REPLY
            assert answered.text_heard == REPLY
            assert audio_of(events, answered.response_id)
            # The LLM was told what the caller heard of the failed reply, no more.
            history = llm_server.chat_requests()[-1].messages
            heard = PARTIAL_HEARD if fault.heard_partial else APOLOGY
            assert history[-3:] == [
                {"role": "user", "content": "What is the weather like?"},
                {"role": "assistant", "content": heard},
                {"role": "user", "content": "And now?"},
            ]
            await wait_ready(server)
    assert not logged, describe(logged)
    assert error_deltas(before, await scrape(server.http)) == {(fault.code, fault.category): 1.0}


async def test_an_endpoint_down_for_good_fails_every_turn_alike(
    server: RunningServer, healthy: FaultyLLMServer
) -> None:
    """Two failed turns in a row: each is retried afresh and apologised for."""
    await wait_ready(server)
    before = await scrape(server.http)
    async with await VoiceForgeClient.connect(server.url) as client:
        healthy.mode = "status_503"
        seen = len(healthy.chat_requests())
        for text in ("Hello?", "Hello again?"):
            failed = done(await typed_turn(client, text))
            assert failed.status is ResponseStatus.FAILED
            assert failed.reason == "llm_unavailable"
            assert failed.text_heard == APOLOGY
        assert len(healthy.chat_requests()) - seen == 2 * (1 + RETRIES)
        healthy.mode = "ok"
        assert done(await typed_turn(client, "Third time?")).status is ResponseStatus.COMPLETED
    assert error_deltas(before, await scrape(server.http)) == {
        ("llm_unavailable", "transient"): 2.0
    }
    await wait_ready(server)
