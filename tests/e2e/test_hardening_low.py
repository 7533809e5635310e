"""Issue 13's low items that a running server shows: health and metrics details
are the operator's when a metrics key is set."""

from __future__ import annotations

import httpx
import pytest

from agent.config import Settings
from loadtest.harness import bench_engines
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e

NEW_KEY = "new-key-0123456789abcdef0123456789abcdef"


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
