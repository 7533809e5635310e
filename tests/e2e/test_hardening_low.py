"""Issue 13's low items that a running server shows: the sweeper outlives a call
whose check fails; health and metrics details are the operator's when a metrics
key is set; engine errors reach callers without internal addresses."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.config import Settings
from loadtest.harness import bench_engines
from pipeline.engines.openai_compat import OpenAICompatLLM
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

NEW_KEY = "new-key-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def short_idle() -> Iterator[RunningServer]:
    yield from start_server(Settings(idle_timeout_s=1.0), bench_engines())


async def test_a_failing_limit_check_does_not_kill_the_sweeper(
    short_idle: RunningServer,
) -> None:
    async with (
        connect(short_idle.url, subprotocols=subprotocols()) as broken_ws,
        connect(short_idle.url, subprotocols=subprotocols()) as healthy_ws,
    ):
        broken = await RawSession.open(broken_ws)
        healthy = await RawSession.open(healthy_ws)
        session = next(s for s in list(short_idle.app_state.sessions)
                       if s.session_id == broken.created["session_id"])

        def fails(now: float) -> None:
            raise RuntimeError("limit check failed")

        session.check_limits = fails  # type: ignore[method-assign]
        # The sweeper goes on: the other call still times out when idle ...
        error = await healthy.wait_type("error", 10)
        assert error["code"] == "idle_timeout"
        # ... and the call it could not check is ended, not left unchecked.
        with pytest.raises(ConnectionClosed) as closed:
            await broken.wait_for(lambda m: False, 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    for _ in range(500):  # the server's handlers finish after the close frames
        if not short_idle.app_state.sessions:
            break
        await asyncio.sleep(0.02)
    assert not short_idle.app_state.sessions


# ------------------------------------------------------------------ low: health and metrics

METRICS_KEY = "metrics-key-0123456789abcdef0123456789"


async def test_metrics_and_health_details_need_the_metrics_key() -> None:
    settings = Settings(api_key=NEW_KEY, metrics_key=METRICS_KEY)
    for server in start_server(settings, bench_engines()):
        operator = {"Authorization": f"Bearer {METRICS_KEY}"}
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            for headers in ({}, {"Authorization": f"Bearer {NEW_KEY}"}):
                refused = await http.get("/metrics", headers=headers)
                assert refused.status_code == 401 and "voiceforge_" not in refused.text
            assert "voiceforge_" in (await http.get("/metrics", headers=operator)).text
            # Probes still see the status; the details (engines, counts) are the operator's.
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/readyz")).json() == {"ready": True}
            detailed = (await http.get("/healthz", headers=operator)).json()
            assert detailed["status"] == "ok" and "engines" in detailed
            assert "max_sessions" in (await http.get("/readyz", headers=operator)).json()


# ------------------------------------------------------------------ low: error events


async def test_engine_errors_reach_the_caller_without_internal_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the LLM is unreachable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    internal = f"http://127.0.0.1:{port}/v1"
    llm = OpenAICompatLLM(internal, "nobody-home", api_key="unused", connect_timeout_s=2.0,
                          first_token_timeout_s=5.0)
    with caplog.at_level(logging.WARNING, "voiceforge"):
        for server in start_server(Settings(), bench_engines(llm=llm)):
            async with connect(server.url, subprotocols=subprotocols()) as ws:
                session = await RawSession.open(ws)
                await session.send({"type": "conversation.text", "text": "Say hello."})
                error = await session.wait_type("error", 30)
    assert error["code"] == "llm_unavailable"
    assert str(port) not in error["message"] and "127.0.0.1" not in error["message"]
    assert "/v1" not in error["message"] and "<internal address>" in error["message"]
    # The operator still has it all.
    assert any(internal in record.getMessage() for record in caplog.records)
