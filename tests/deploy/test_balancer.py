"""Three bench replicas behind HAProxy (loadtest/balancer.py), health-checked on
``/readyz``: callers keep talking through the proxy while each replica in turn is
SIGTERMed and started again, with no failed turn, no call dropped mid-reply, and
every new call on a replica that was ready; and ``python -m loadtest --url`` runs
through the proxy. Loopback only; bounded in turns and time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loadtest.__main__ import main as loadtest_main
from loadtest.balancer import haproxy_path, local_cluster, rolling_restart
from loadtest.speech import espeak_available

pytestmark = pytest.mark.skipif(
    haproxy_path() is None, reason="haproxy is not installed (make test installs it)"
)

# Replies of a few tokens at 4 tokens/s (over a second each, then a 0.3 s pause):
# every restart finds replies in flight.
ENV = {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": "4", "VOICEFORGE_DRAIN_TIMEOUT_S": "15"}


async def test_rolling_restart_behind_haproxy_drops_no_call() -> None:
    async with local_cluster(3, ENV) as cluster:
        report = await rolling_restart(cluster, callers=6, rounds=1, settle_turns=12)
    summary = report.summary()
    assert report.restarts == 3
    # The drains had replies to let finish: the check below is not vacuous.
    assert report.replies_in_flight_at_sigterm >= 1, summary
    assert report.failed_turns == [], summary
    assert report.dropped_mid_reply == [], summary
    assert report.connect_failures == [], summary
    assert report.landed_on_unready() == [], summary
    # The restarts happened under load: calls were ended by drains and replaced,
    # and every replica, restarted, took calls again.
    assert summary["turns_completed"] >= 36
    # Each restart ended the calls on that replica; their callers called again.
    assert summary["calls"] >= 6 + 3
    assert set(summary["calls_per_replica"]) == {"r0", "r1", "r2"}


async def test_the_load_generator_runs_through_the_proxy(tmp_path: Path) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the load test (make test installs it)")
    out = tmp_path / "report.json"
    async with local_cluster(2) as cluster:
        args = ["--url", cluster.url, "--callers", "4", "--duration", "4", "--ramp", "1",
                "--scenarios", "qa", "--json", str(out)]


        assert await asyncio.to_thread(loadtest_main, args) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == 0, report["failures"]
    assert report["dropped_sessions"] == 0 and report["turns"] >= 4
