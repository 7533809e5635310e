"""``voiceforge serve --workers 2``: two processes on one port both take calls,
``/readyz`` and ``/metrics`` stay right per worker and in total, and SIGTERM to the
supervisor drains both with no reply cut off.

A real child process tree (bench profile, 127.0.0.1, port 0); the scripted LLM is
slowed down so every call has a reply in flight when the signal comes.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from loadtest.harness import CallClosed, RawCall, child_server, scrape, value, voiceforge_serve

pytestmark = pytest.mark.e2e

CALLS = 16
"""Spread by a hash of each connection: all on one of 2 workers has odds 2/2**16."""


async def calls_per_worker(http: httpx.AsyncClient, base: str, total: int) -> dict[str, int]:
    """Ask ``/readyz`` (a new connection each time, so the kernel picks a worker
    anew) until every worker answered and their calls add up to ``total``."""
    seen: dict[str, int] = {}
    for _ in range(200):
        response = await http.get(f"{base}/readyz", headers={"Connection": "close"})
        body = response.json()
        seen[body["worker"]] = body["calls"]
        if len(seen) == 2 and sum(seen.values()) == total:
            break
    return seen


async def test_two_workers_share_the_port_and_sigterm_drains_both() -> None:
    command = voiceforge_serve(workers=2)
    # 6 tokens at 4 tokens/s: each reply takes ~1.5 s, so all are in flight at once.
    env = {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": "4", "VOICEFORGE_DRAIN_TIMEOUT_S": "15"}
    async with child_server(command, env) as server, httpx.AsyncClient() as http:
        assert server.output().count("ready: connect to") == 1  # one URL for the pool
        calls = [await RawCall.open(server.url) for _ in range(CALLS)]
        try:
            first = await asyncio.gather(*(call.typed_turn("Hello?", 30) for call in calls))
            assert all(turn.done["status"] == "completed" for turn in first)
            per_worker = await calls_per_worker(http, server.http, CALLS)
            assert sorted(per_worker) == ["0", "1"], per_worker
            assert sum(per_worker.values()) == CALLS and min(per_worker.values()) > 0, per_worker
            # Any worker's /metrics is the pool's: the open calls summed.
            samples = await scrape(http, server.http)
            assert value(samples, "voiceforge_sessions_active") == CALLS
            assert value(samples, "voiceforge_sessions_total") == CALLS
            # What only a live process knows comes from the worker that answered.
            live = {name: dict(labels) for name, labels in samples
                    if name in ("process_cpu_seconds_total", "voiceforge_asyncio_tasks")}
            assert set(live) == {"process_cpu_seconds_total", "voiceforge_asyncio_tasks"}
            assert all(labels.get("worker") in per_worker for labels in live.values()), live

            for call in calls:
                await call.send({"type": "conversation.text", "text": "And now?"})
            await asyncio.gather(*(call.wait_type("response.audio.delta", 20) for call in calls))
            server.signal(signal.SIGTERM)
            done = await asyncio.gather(*(call.wait_type("response.done", 30) for call in calls))
            closed: list[CallClosed] = await asyncio.gather(
                *(call.until_closed(30) for call in calls))
        finally:
            for call in calls:
                await call.close()
        # Every reply in flight finished whole, then each caller was told and let go.
        assert [d["status"] for d in done] == ["completed"] * CALLS, done
        assert {c.code for c in closed} == {1001}
        assert all([e["code"] for e in call.errors()] == ["server_shutting_down"]
                   for call in calls)
        rc = await asyncio.to_thread(server.wait_exit, 60)
        output = server.output()
        assert rc == 0, output[-3000:]
    assert output.count("shutdown complete: 0 tasks and 0 non-daemon threads left") == 2, output
    assert "drain deadline" not in output and "did not stop in time" not in output
    assert "all workers stopped" in output
    assert not server.tracebacks()


async def test_a_worker_that_dies_is_replaced_and_the_pool_keeps_serving() -> None:
    command = voiceforge_serve(workers=2)
    async with child_server(command) as server:
        pids = [int(line.rsplit("[", 1)[1].split("]")[0]) for line in server.lines
                if "Started server process" in line]
        assert len(pids) == 2
        # Kill each worker in turn (SIGKILL: no drain, a crash): the supervisor
        # starts another, and calls are served throughout.
        for pid in pids:
            started = server.output().count("Started server process")
            os.kill(pid, signal.SIGKILL)
            for _ in range(600):  # bounded: 60 s
                if server.output().count("Started server process") > started:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("no worker was started in place of the killed one")
            call = await RawCall.open(server.url)
            try:
                assert (await call.typed_turn("Hello?", 30)).done["status"] == "completed"
            finally:
                await call.close()
        assert server.output().count("exited with -9") == 2
