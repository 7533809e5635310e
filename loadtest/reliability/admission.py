"""Admission: the session limit, and the refusal of new calls while the measured
first-audio latency is over budget.

``session_limit`` holds ``max_sessions`` calls, then measures the refusals of
further handshakes (503, Retry-After, /readyz) and how soon a freed slot is taken.
``admission`` makes the turns of one call slow until new calls are refused, and
measures the refusal, the call in progress meanwhile, and the lifting of it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter

from agent.config import Settings
from loadtest.harness import RawCall, Turn, bench_engines, serving, value
from loadtest.reliability.common import (
    BENCH,
    QUESTION,
    Context,
    Handshake,
    Result,
    dist,
    handshake,
    metrics,
    ms_since,
    r2,
    readyz_ok,
    settings_of,
    status_of,
    wait_until,
)
from pipeline.engines.bench import ScriptedLLM, ToneTTS


async def session_limit(ctx: Context) -> Result:
    r = ctx.result
    limit, attempts = (5, 20) if ctx.quick else (20, 100)
    settings = Settings(max_sessions=limit)
    r.settings = {**settings_of(settings, "max_sessions", "retry_after_s"),
                  "further_handshakes": attempts, "engines": BENCH}
    async with serving(settings, bench_engines()) as server:
        held: list[RawCall] = []
        try:
            accepted_ms = []
            for _ in range(limit):
                taken = await handshake(server.url)
                assert taken.call is not None, f"call {len(held) + 1} of {limit} refused"
                held.append(taken.call)
                accepted_ms.append(taken.ms)
            ctx.step(f"{limit} calls held; {attempts} more handshakes")
            refused = [await handshake(server.url) for _ in range(attempts)]
            for extra in refused:
                if extra.call is not None:
                    held.append(extra.call)
            statuses = Counter(h.status for h in refused)
            retry_after = Counter(h.headers.get("retry-after") for h in refused)
            reasons = Counter(h.reason() for h in refused)
            ready_status, ready = await status_of(ctx, server.http, "/readyz")
            health_status, _ = await status_of(ctx, server.http, "/healthz")

            ctx.step("one call hangs up; a new caller retries every 10 ms")
            freed_at = time.perf_counter()
            await held.pop().close()
            admitted_ms: float | None = None
            refused_meanwhile = 0
            for _ in range(500):
                again = await handshake(server.url)
                if again.call is not None:
                    admitted_ms = ms_since(freed_at)
                    held.append(again.call)
                    break
                refused_meanwhile += 1
                await asyncio.sleep(0.01)
            samples = await metrics(ctx, server.http)
        finally:
            for call in held:
                await call.close()
    counted = value(samples, "voiceforge_refusals_total", reason="max_sessions")
    r.figures = {
        "accepted_handshake_ms": dist(accepted_ms),
        "refused_count": statuses.get(503, 0),
        "attempts_beyond_limit_count": attempts,
        "answer_statuses": {str(k): v for k, v in statuses.items()},
        "retry_after_header_s": sorted(k for k in retry_after if k is not None),
        "refusal_latency_ms": dist(h.ms for h in refused),
        "readyz_status_when_full": ready_status,
        "readyz_reasons_when_full": sorted(ready.get("reasons", {})),
        "healthz_status_when_full": health_status,
        "admitted_after_hangup_ms": r2(admitted_ms),
        "refused_while_hanging_up_count": refused_meanwhile,
        "refusals_counted_in_metrics": counted,
    }
    r.check("503 for every attempt beyond the limit", statuses == {503: attempts}, statuses)
    r.check(f"Retry-After: {settings.retry_after_s:g} on every refusal",
            retry_after == {f"{settings.retry_after_s:g}": attempts}, retry_after)
    r.check("every refusal says max_sessions", reasons == {"max_sessions": attempts}, reasons)
    r.check("/readyz 503 (max_sessions) and /healthz 200 while full",
            ready_status == 503 and "max_sessions" in ready.get("reasons", {})
            and health_status == 200, (ready_status, ready, health_status))
    r.check("a call that hangs up frees its slot (a new call within 5 s)",
            admitted_ms is not None and admitted_ms < 5000, admitted_ms)
    r.check("every refusal counted in voiceforge_refusals_total",
            counted == attempts + refused_meanwhile, counted)
    return r


async def admission(ctx: Context) -> Result:
    r = ctx.result
    min_samples, attempts, turns_during = (2, 10, 2) if ctx.quick else (5, 50, 5)
    window_s = 4.0 if ctx.quick else 10.0
    # One call measures the mechanism: the rules that need several calls
    # (admission_min_calls) are tests/agent/test_tokens_admission.py's.
    settings = Settings(latency_budget_ms=300.0, admission_min_samples=min_samples,
                        admission_min_calls=1, admission_window_s=window_s, retry_after_s=3.0)
    llm = ScriptedLLM(first_token_ms=500.0, tokens_per_second=200.0)
    r.settings = {
        **settings_of(settings, "latency_budget_ms", "admission_min_samples",
                      "admission_min_calls", "admission_window_s", "retry_after_s"),
        "engines": "scripted LLM with a 500 ms first token (200 tokens/s), tone TTS",
        "handshakes_during_refusal": attempts, "turns_during_refusal": turns_during,
    }
    engines = bench_engines(llm=llm, tts=ToneTTS(ms_per_char=5.0, chunk_ms=50.0))
    async with serving(settings, engines, admission=True) as server:
        call = await RawCall.open(server.url)
        try:
            before: list[Turn] = []
            refusal_started: int | None = None
            for n in range(1, min_samples + 4):
                before.append(await call.typed_turn(QUESTION))
                probe = await handshake(server.url)
                if probe.call is None:
                    refusal_started = n
                    break
                await probe.call.close()
            ctx.step(f"refused after {refusal_started} slow turns; {attempts} handshakes and "
                     f"{turns_during} turns of the call in progress")
            during: list[Turn] = []
            refused: list[Handshake] = []
            for _ in range(turns_during):
                during.append(await call.typed_turn(QUESTION))
                for _ in range(attempts // turns_during):
                    attempt = await handshake(server.url)
                    refused.append(attempt)
                    if attempt.call is not None:
                        await attempt.call.close()
            ready_status, ready = await status_of(ctx, server.http, "/readyz")
            last_turn_at = time.monotonic()
            ctx.step(f"no more slow turns; waiting for /readyz 200 (window {window_s:g} s)")
            lifted_s = await wait_until(
                functools.partial(readyz_ok, ctx, server.http), window_s + 5.0, 0.1)
            lifted_s = None if lifted_s is None else time.monotonic() - last_turn_at
            admitted = await handshake(server.url)
            if admitted.call is not None:
                await admitted.call.close()
            samples = await metrics(ctx, server.http)
        finally:
            await call.close()

    def first_audio(turns: list[Turn]) -> list[float | None]:
        return [t.done["timings"].get("end_of_speech_to_first_audio_ms") for t in turns]

    statuses = Counter(h.status for h in refused)
    reasons = Counter(h.reason() for h in refused)
    retry_after = Counter(h.headers.get("retry-after") for h in refused)
    counted = value(samples, "voiceforge_refusals_total", reason="overloaded")
    r.figures = {
        "turns_until_refusal_count": refusal_started,
        "refused_count": statuses.get(503, 0),
        "attempts_during_refusal_count": len(refused),
        "retry_after_header_s": sorted(k for k in retry_after if k is not None),
        "refusal_latency_ms": dist(h.ms for h in refused),
        "first_audio_before_refusal_ms": dist(first_audio(before)),
        "first_audio_during_refusal_ms": dist(first_audio(during)),
        "turns_during_refusal_completed_count": sum(
            t.done["status"] == "completed" for t in during),
        "readyz_status": ready_status,
        "readyz_body": ready,
        "refusal_lifted_after_last_slow_turn_s": r2(lifted_s),
        "refusals_counted_in_metrics": counted,
    }
    r.check(f"refusal starts once {min_samples} turns over budget are measured",
            refusal_started == min_samples, refusal_started)
    r.check("503 overloaded with Retry-After: 3 for every attempt during refusal",
            statuses == {503: len(refused)} and reasons == {"overloaded": len(refused)}
            and retry_after == {"3": len(refused)}, (statuses, reasons, retry_after))
    r.check("the call in progress is still answered during refusal",
            all(t.done["status"] == "completed" and not t.errors for t in during),
            [t.done["status"] for t in during])
    r.check("/readyz 503 overloaded with the measured p95 over budget",
            ready_status == 503 and "overloaded" in ready.get("reasons", {})
            and (ready.get("first_audio_p95_ms") or 0) > settings.latency_budget_ms, ready)
    r.check("refusal lifts once the slow turns leave the window, and a call is taken",
            lifted_s is not None and admitted.status == 101, (lifted_s, admitted.status))
    first_refusal = 1 if refusal_started is not None else 0
    r.check("every refusal counted", counted == statuses.get(503, 0) + first_refusal, counted)
    return r
