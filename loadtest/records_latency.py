"""Does a record database that is up, or stopped, change a call's latency?

Three phases of typed turns on one call each, against a server with the bench
engines (the server's own cost, not the models'): no records, records in a real
PostgreSQL server, and the same server stopped. For each: the time from sending
``conversation.text`` to the first reply audio, at the client. Then PostgreSQL is
started again and the turns of the stopped phase are looked for in the records.

    python -m loadtest.records_latency --turns 40 --json out/records-latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from agent.client import VoiceForgeClient
from agent.config import Settings
from loadtest.harness import bench_engines, serving
from loadtest.postgres import PostgresServer, postgres_server
from pipeline.engines.bench import ScriptedLLM, ToneTTS
from pipeline.events import ResponseAudioDelta, ResponseDone


async def _turns(url: str, turns: int, between: Any = None) -> tuple[str, list[float]]:
    """Typed turns on one call; ms from sending each to its first audio."""
    latencies: list[float] = []
    async with await VoiceForgeClient.connect(url) as client:
        for n in range(turns):
            if between is not None and n == turns // 2:
                between()
            sent = time.perf_counter()
            await client.send_text(f"Question number {n}.")
            first: float | None = None
            async with asyncio.timeout(30):
                while True:
                    event = await client.next_event(30)
                    if isinstance(event, ResponseAudioDelta) and first is None:
                        first = (time.perf_counter() - sent) * 1000
                    if isinstance(event, ResponseDone):
                        break
            assert first is not None, "a reply without audio"
            latencies.append(first)
        return client.session_id, latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "turns": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def _phase(database: str | None, turns: int, pg: PostgresServer | None = None,
                 stop_database: bool = False) -> dict[str, Any]:
    engines = bench_engines(llm=ScriptedLLM("Okay, noted.", tokens_per_second=500,
                                            first_token_ms=5),
                            tts=ToneTTS(ms_per_char=5.0, chunk_ms=50.0))
    settings = Settings(database_url=database)
    async with serving(settings, engines) as server:
        result: dict[str, Any] = {}
        # Warm-up, in every phase alike (the writer migrates and writes once).
        await _turns(server.url, 2)
        if stop_database:
            assert pg is not None
            pg.stop()
        try:
            call_id, latencies = await _turns(server.url, turns)
            result = _summary(latencies)
            records = server.state.records
            if records is not None:
                registry = server.state.metrics.registry
                result["buffered_at_end"] = registry.get_sample_value(
                    "voiceforge_records_buffered")
                result["write_errors"] = registry.get_sample_value(
                    "voiceforge_record_write_errors_total")
        finally:
            if stop_database:
                assert pg is not None
                pg.start()
        if records is not None:
            async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
                deadline = time.monotonic() + 60
                kept = 0
                while time.monotonic() < deadline:
                    reply = await http.get(f"/v1/calls/{call_id}")
                    if reply.status_code == 200:
                        kept = sum(1 for e in reply.json()["timeline"] if e["kind"] == "turn")
                        if kept >= turns:
                            break
                    await asyncio.sleep(0.1)
                result["turns_recorded"] = kept
        return result


async def _main(turns: int) -> dict[str, Any]:
    with postgres_server() as pg:
        return {
            "records_off": await _phase(None, turns),
            "postgresql_up": await _phase(pg.create_database("latency_up"), turns),
            "postgresql_stopped": await _phase(pg.create_database("latency_down"), turns,
                                               pg, stop_database=True),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = asyncio.run(_main(args.turns))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
