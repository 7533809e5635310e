"""Time limits: silent calls closed after ``idle_timeout_s``, talking calls after
``max_call_s``, each within one sweep of the limit."""

from __future__ import annotations

import asyncio
import time

from agent.config import Settings
from agent.server import SWEEP_INTERVAL_S
from loadtest.harness import RawCall, bench_engines, serving, value
from loadtest.reliability.common import (
    BENCH,
    Context,
    Result,
    dist,
    metrics,
    settings_of,
    wait_until,
)


async def idle_timeout(ctx: Context) -> Result:
    r = ctx.result
    calls = 1 if ctx.quick else 3
    settings = Settings(idle_timeout_s=2.0, max_call_s=3.0)
    r.settings = {**settings_of(settings, "idle_timeout_s", "max_call_s"),
                  "sweep_interval_s": SWEEP_INTERVAL_S, "idle_calls": calls,
                  "talking_calls": calls, "talking": "output_audio.played every 0.3 s",
                  "engines": BENCH}

    # The server's clocks start when it accepts the call, between the client's connect
    # and its session.created: a close is checked against the connect for the lower
    # bound (never before the limit) and against session.created for the upper one.
    async def idle() -> tuple[float | None, float, int | None, list[str], float]:
        connecting = time.monotonic()
        call = await RawCall.open(server.url)
        try:
            closed = await call.until_closed(15)
        finally:
            await call.close()
        errors = [(t, m) for t, m in call.log if m["type"] == "error"]
        return ((errors[0][0] - call.opened_at) if errors else None,
                closed.at - call.opened_at, closed.code, [m["code"] for _, m in errors],
                closed.at - connecting)

    async def talking() -> tuple[float | None, float, int | None, list[str], float]:
        connecting = time.monotonic()
        call = await RawCall.open(server.url)

        async def talk() -> None:
            for _ in range(100):
                await call.send({"type": "output_audio.played", "response_id": "x",
                                 "played_ms": 0})
                await asyncio.sleep(0.3)

        talker = asyncio.create_task(talk())
        try:
            closed = await call.until_closed(15)
        finally:
            talker.cancel()
            await asyncio.gather(talker, return_exceptions=True)
            await call.close()
        errors = [(t, m) for t, m in call.log if m["type"] == "error"]
        return ((errors[0][0] - call.opened_at) if errors else None,
                closed.at - call.opened_at, closed.code, [m["code"] for _, m in errors],
                closed.at - connecting)

    async with serving(settings, bench_engines()) as server:
        ctx.step(f"{calls} silent and {calls} talking calls at once")
        outcomes = await asyncio.gather(*[idle() for _ in range(calls)],
                                        *[talking() for _ in range(calls)])
        gone = await wait_until(lambda: not server.state.sessions, 5.0)
        samples = await metrics(ctx, server.http)
    silent, busy = outcomes[:calls], outcomes[calls:]
    r.figures = {
        "idle_error_after_s": dist(o[0] for o in silent),
        "idle_close_after_s": dist(o[1] for o in silent),
        "idle_close_codes": sorted({str(o[2]) for o in silent}),
        "idle_errors": sorted({",".join(o[3]) for o in silent}),
        "max_call_error_after_s": dist(o[0] for o in busy),
        "max_call_close_after_s": dist(o[1] for o in busy),
        "max_call_close_codes": sorted({str(o[2]) for o in busy}),
        "max_call_errors": sorted({",".join(o[3]) for o in busy}),
        "disconnects_idle_timeout_count": value(samples, "voiceforge_disconnects_total",
                                                reason="idle_timeout"),
        "disconnects_call_time_limit_count": value(samples, "voiceforge_disconnects_total",
                                                   reason="call_time_limit"),
    }
    slack = SWEEP_INTERVAL_S + 1.0
    r.check("silent calls: idle_timeout, then close 1000",
            all(o[3] == ["idle_timeout"] and o[2] == 1000 for o in silent), silent)
    r.check(f"silent calls closed between idle_timeout_s and idle_timeout_s + {slack:g} s",
            all(2.0 <= o[4] and o[1] <= 2.0 + slack for o in silent),
            [(o[4], o[1]) for o in silent])
    r.check("talking calls: call_time_limit, then close 1000",
            all(o[3] == ["call_time_limit"] and o[2] == 1000 for o in busy), busy)
    r.check(f"talking calls closed between max_call_s and max_call_s + {slack:g} s",
            all(3.0 <= o[4] and o[1] <= 3.0 + slack for o in busy),
            [(o[4], o[1]) for o in busy])
    r.check("no session left", gone is not None)
    return r
