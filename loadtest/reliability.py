"""One measured figure for every limit, fault and bad input the server handles.

    python -m loadtest.reliability [--quick] [--only NAME,NAME] [--json PATH]

Every scenario starts its own server on 127.0.0.1 and a free port (in a thread of
this process, or a child process where the figure is the server's own CPU time,
memory or exit), drives it into one situation with real sockets, and reports what
it measured, the settings it ran under, and whether the server kept its own rule
for that situation (the scenario's invariants, e.g. "503 for every attempt beyond
the limit"). Nothing is a timing test: timings are reported, and only bounds that
are part of the behaviour (a limit of 2 s closes the call after 2 s, not 10) are
invariants. The engines are the deterministic ``bench`` ones (scripted STT and
LLM, a tone for TTS) with the real Silero VAD, so the figures are the server's
own mechanics; the LLM faults run the real ``OpenAICompatLLM`` against a local
misbehaving endpoint (``loadtest.fault_llm``).

Progress goes to stderr, the table of figures to stdout, the report to ``--json``
(docs/reliability.md quotes it). Exit status 1 when any invariant failed.
``--quick`` runs every scenario smaller (the tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent.config import Settings
from agent.limits import FrameRateLimiter
from agent.server import SWEEP_INTERVAL_S, create_app
from agent.tokens import issue_token
from loadtest.fault_llm import FAULTS, PARTIAL_HEARD, FaultyLLMServer
from loadtest.fault_llm import REPLY as FAULT_LLM_REPLY
from loadtest.harness import (
    AudioSender,
    LocalServer,
    LogWatch,
    ProbeLLM,
    ProbeSTT,
    ProbeTTS,
    RawCall,
    Samples,
    StubbornClient,
    Turn,
    bench_engines,
    child_server,
    pack,
    scrape,
    serving,
    serving_app,
    silence,
    spec_serve,
    value,
    voiceforge_serve,
    watching_logs,
)
from pipeline.conversation import Engines, SessionConfig
from pipeline.engines.bench import ScriptedLLM, ToneTTS
from pipeline.engines.openai_compat import OpenAICompatLLM
from pipeline.errors import ModelLoadError, STTError, TTSError

APOLOGY = SessionConfig().apology
DEFAULTS = Settings()
RETRIES = DEFAULTS.engine_retries
BENCH = "scripted STT, scripted LLM (200 tokens/s, first token 10 ms), tone TTS, Silero VAD"
QUESTION = "Say hello."


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    invariant: str
    passed: bool
    detail: str = ""


@dataclass
class Result:
    """What a scenario measured; filled as it goes, so a scenario that fails
    halfway still reports what it had measured."""

    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_tracebacks: list[str] = field(default_factory=list)

    def check(self, invariant: str, passed: bool, detail: object = "") -> bool:
        self.checks.append(Check(invariant, bool(passed), "" if passed else str(detail)))
        return bool(passed)


@dataclass
class Context:
    quick: bool
    http: httpx.AsyncClient
    watch: LogWatch
    result: Result
    progress: Callable[[str], None]

    def step(self, text: str) -> None:
        self.progress(f"    {text}")


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def dist(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """n, p50, p95 and max of ``values`` (None left out)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {
        "n": len(data),
        "p50": round(float(np.percentile(data, 50)), 3),
        "p95": round(float(np.percentile(data, 95)), 3),
        "max": round(max(data), 3),
    }


def r2(number: float | None) -> float | None:
    return None if number is None else round(float(number), 3)


def settings_of(settings: Settings, *names: str) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}


@dataclass
class Handshake:
    status: int
    """HTTP status of the answer; 101 when the call was taken, 0 when no answer."""
    ms: float
    headers: dict[str, str]
    body: bytes
    call: RawCall | None

    def reason(self) -> str | None:
        try:
            reason = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None
        return str(reason) if reason is not None else None


async def handshake(url: str, **kwargs: Any) -> Handshake:
    """Try to start a call: taken (101 and ``session.created``) or refused (status)."""
    start = time.perf_counter()
    try:
        call = await RawCall.open(url, **kwargs)
    except InvalidStatus as exc:
        response = exc.response
        return Handshake(response.status_code, ms_since(start), dict(response.headers),
                         bytes(response.body or b""), None)
    except (OSError, InvalidHandshake, TimeoutError):
        return Handshake(0, ms_since(start), {}, b"", None)
    return Handshake(101, ms_since(start), {}, b"", call)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, interval_s: float = 0.01
) -> float | None:
    """Seconds until ``predicate`` holds (polled), or None if it did not within ``timeout_s``."""
    start = time.monotonic()
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        await asyncio.sleep(interval_s)


async def status_of(ctx: Context, base: str, path: str) -> tuple[int, dict[str, Any]]:
    response = await ctx.http.get(f"{base}{path}")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def metrics(ctx: Context, base: str) -> Samples:
    return await scrape(ctx.http, base)


async def wait_ready(ctx: Context, base: str, timeout_s: float = 5.0) -> bool:
    async def ready() -> bool:
        return (await ctx.http.get(f"{base}/readyz")).status_code == 200

    return await wait_until(ready, timeout_s, 0.05) is not None


def session_of(server: LocalServer, call: RawCall) -> Any:
    for session in list(server.state.sessions):
        if session.conversation.session_id == call.created["session_id"]:
            return session
    raise LookupError(call.created["session_id"])


# --------------------------------------------------------------------------- 1. session limit


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


# --------------------------------------------------------------------------- 2. admission


async def admission(ctx: Context) -> Result:
    r = ctx.result
    min_samples, attempts, turns_during = (2, 10, 2) if ctx.quick else (5, 50, 5)
    window_s = 4.0 if ctx.quick else 10.0
    settings = Settings(latency_budget_ms=300.0, admission_min_samples=min_samples,
                        admission_window_s=window_s, retry_after_s=3.0)
    llm = ScriptedLLM(first_token_ms=500.0, tokens_per_second=200.0)
    r.settings = {
        **settings_of(settings, "latency_budget_ms", "admission_min_samples",
                      "admission_window_s", "retry_after_s"),
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

            async def ready_again() -> bool:
                return (await ctx.http.get(f"{server.http}/readyz")).status_code == 200

            lifted_s = await wait_until(ready_again, window_s + 5.0, 0.1)
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


# --------------------------------------------------------------------------- 3. frame flood


FLOOD_FRAME = pack({"type": "output_audio.played", "response_id": "x", "played_ms": 0})
EAGER_TEMPERATURE, MARK_TEMPERATURE = 0.2, 0.7
LIMITER = FrameRateLimiter()
CHILD_BENCH = {"llm": {"tokens_per_second": 200.0, "first_token_ms": 10.0},
               "tts": {"ms_per_char": 20.0}}


def _updated(temperature: float) -> Callable[[dict[str, Any]], bool]:
    def match(message: dict[str, Any]) -> bool:
        return bool(message["type"] == "session.updated"
                    and message["session"].get("temperature") == temperature)

    return match


async def eager_call(url: str, frames_per_s: float, seconds: float) -> dict[str, Any]:
    """A client over the frame rate but under the flood threshold: ``session.update``
    at ``frames_per_s`` for ``seconds``. Each one the server takes is answered, so
    the answers count the frames taken; then a marked update every 50 ms (the bucket
    is empty when the stream stops) until one is answered: the call went on."""
    call = await RawCall.open(url)
    try:
        marked = asyncio.create_task(call.wait_for(_updated(MARK_TEMPERATURE), seconds + 30.0))
        frame = pack({"type": "session.update", "session": {"temperature": EAGER_TEMPERATURE}})
        total, batch = int(frames_per_s * seconds), 10
        started = time.monotonic()
        sent = 0
        while sent < total and not marked.done():
            if (delay := started + sent / frames_per_s - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            for _ in range(batch):
                await call.ws.send(frame)
            sent += batch
        sending_s = time.monotonic() - started
        mark = {"type": "session.update", "session": {"temperature": MARK_TEMPERATURE}}
        for _ in range(200):
            if marked.done():
                break
            with contextlib.suppress(ConnectionClosed):
                await call.send(mark)
            await asyncio.wait({marked}, timeout=0.05)
        if not marked.done():
            marked.cancel()
        await asyncio.gather(marked, return_exceptions=True)
        kept = not marked.cancelled() and marked.exception() is None
        wall_s = time.monotonic() - started
    finally:
        await call.close()
    answered = sum(1 for _, m in call.log if _updated(EAGER_TEMPERATURE)(m))
    errors = call.errors()
    throttled = [e for e in errors if e["code"] == "too_many_frames"]
    return {
        "frames_sent_count": sent,
        "sending_s": r2(sending_s),
        "frames_per_s": r2(sent / sending_s),
        "frames_taken_count": answered,
        "frames_dropped_count": sent - answered,
        "frames_allowed_by_limit_count": r2(LIMITER.burst + LIMITER.rate * sending_s),
        "too_many_frames_errors_count": len(throttled),
        "too_many_frames_errors_per_s": r2(len(throttled) / wall_s),
        "other_errors": sorted({e["code"] for e in errors} - {"too_many_frames"}),
        "error_says_closing": any("closing" in e["message"] for e in throttled),
        "call_kept": kept,
        "wall_s": r2(wall_s),
    }


@dataclass
class FloodCall:
    """One flooding call: from its first frame to the server closing it."""

    frames_sent: int
    """Frames the client had sent when it saw the close."""
    seconds: float
    """First frame → close seen (or → giving up)."""
    close_code: int | None
    errors: list[dict[str, Any]]

    @property
    def last_error(self) -> dict[str, Any]:
        return self.errors[-1] if self.errors else {"code": None, "message": ""}


async def flood_call(url: str, max_frames: int, max_s: float) -> FloodCall:
    """Open a call and send ``FLOOD_FRAME`` as fast as one client can until the
    server closes it (at most ``max_frames`` frames and ``max_s`` seconds)."""
    call = await RawCall.open(url)
    call.report_played = False
    sent = 0
    try:
        closing = asyncio.create_task(call.until_closed(max_s + 5.0))

        async def flood() -> None:
            nonlocal sent
            while sent < max_frames and not closing.done():
                await call.ws.send(FLOOD_FRAME)
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0)  # let the reads (and the bystander's) run

        started = time.monotonic()
        flooding = asyncio.create_task(flood())
        await asyncio.wait({closing}, timeout=max_s)
        sent_at_close, gave_up_at = sent, time.monotonic()
        flooding.cancel()
        if not closing.done():
            closing.cancel()
        await asyncio.gather(flooding, closing, return_exceptions=True)
        closed = None
        if not closing.cancelled() and closing.exception() is None:
            closed = closing.result()
    finally:
        await call.close()
    return FloodCall(sent_at_close, (closed.at if closed else gave_up_at) - started,
                     closed.code if closed else None, call.errors())


async def frame_flood(ctx: Context) -> Result:
    r = ctx.result
    turns, eager_s = (3, 1.0) if ctx.quick else (10, 2.0)
    eager_rate, max_calls, max_frames, max_call_s = 1000.0, 400, 1_000_000, 10.0
    rate, burst, flood_frames = LIMITER.rate, LIMITER.burst, LIMITER.flood_frames
    r.settings = {
        "server": "child process (python -m loadtest.harness), default Settings",
        "frame_rate_limit": f"{rate:g} frames/s, burst {burst:g}; more than {flood_frames:g} "
                            "frames refused within one second close the call (1008) "
                            "(agent.limits.FrameRateLimiter)",
        "engines": BENCH,
        "eager_client": f"session.update at {eager_rate:g} frames/s for {eager_s:g} s (over the "
                        "rate, under the flood threshold); each frame taken is answered, so "
                        "dropped = sent - answered; then a session.update every 50 ms until "
                        "one is answered",
        "flood_frame": f"output_audio.played ({len(FLOOD_FRAME)} bytes)",
        "flooder": "one client sending as fast as it can until the server closes the call, "
                   "then reconnecting at once and flooding again, for as long as the "
                   f"bystander's turns go on (at most {max_calls} calls)",
        "server_cpu": "process_cpu_seconds_total (10 ms resolution), scraped just before the "
                      "first flooding call opens and just after it is closed, and around the "
                      "whole flooding phase (per flooding call: that over the calls); the "
                      "bystander's turns in progress included",
        "bystander_turns": turns,
        "bystander_client": "reports playback as audio arrives; 0.3 s between turns",
    }
    cpu = "process_cpu_seconds_total"
    async with child_server(spec_serve(CHILD_BENCH)) as child:
        try:
            bystander = await RawCall.open(child.url)
            ctx.step(f"bystander: {turns} typed turns without a flood")
            s0, t0 = await metrics(ctx, child.http), time.monotonic()
            quiet = [await bystander.typed_turn(QUESTION) for _ in range(turns)]
            s1, t1 = await metrics(ctx, child.http), time.monotonic()

            ctx.step(f"eager client: {eager_rate:g} frames/s for {eager_s:g} s")
            eager = await eager_call(child.url, eager_rate, eager_s)
            s_eager = await metrics(ctx, child.http)

            ctx.step(f"flooder (reconnecting), and the bystander's {turns} turns meanwhile")
            calls: list[FloodCall] = []
            first_cpu: list[float] = []
            stop = asyncio.Event()

            async def flooder() -> None:
                for n in range(max_calls):
                    if n and stop.is_set():
                        return
                    before = await metrics(ctx, child.http) if n == 0 else None
                    calls.append(await flood_call(child.url, max_frames, max_call_s))
                    if before is not None:
                        after = await metrics(ctx, child.http)
                        first_cpu.append(value(after, cpu) - value(before, cpu))

            s2, flood_started = await metrics(ctx, child.http), time.monotonic()
            flooding = asyncio.create_task(flooder())
            loud = []
            try:
                for _ in range(turns):
                    loud.append(await bystander.typed_turn(QUESTION))
                    await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.wait_for(flooding, max_call_s + 30.0)
            flood_s = time.monotonic() - flood_started
            s3 = await metrics(ctx, child.http)
            await bystander.close()
            ctx.step("a new call after the flood")
            after_call = await RawCall.open(child.url)
            try:
                after_turn = await after_call.typed_turn(QUESTION)
            finally:
                await after_call.close()
        finally:
            r.server_tracebacks = child.tracebacks()

    def eot(turns_: list[Turn]) -> list[float | None]:
        return [t.done["timings"].get("end_of_turn_to_first_audio_ms") for t in turns_]

    first = calls[0]
    flood_counted = value(s3, "voiceforge_disconnects_total", reason="flood")
    flood_cpu = value(s3, cpu) - value(s2, cpu)
    r.figures = {
        "eager": eager,
        "eager_counted_as_flood_count": value(s_eager, "voiceforge_disconnects_total",
                                              reason="flood"),
        "first_flood": {
            "first_frame_to_close_ms": r2(first.seconds * 1e3),
            "frames_sent_before_close_count": first.frames_sent,
            "frames_per_s": r2(first.frames_sent / first.seconds),
            "close_code": first.close_code,
            "dropping_errors_count": sum("dropped" in e["message"] for e in first.errors),
            "closing_errors_count": sum("closing" in e["message"] for e in first.errors),
            "other_errors": sorted({e["code"] for e in first.errors} - {"too_many_frames"}),
            "last_error_code": first.last_error["code"],
            "last_error_message": first.last_error["message"],
            "server_cpu_until_close_s": r2(first_cpu[0] if first_cpu else None),
        },
        "flooding_calls_count": len(calls),
        "flood_first_frame_to_close_ms": dist(c.seconds * 1e3 for c in calls),
        "flood_frames_sent_before_close_count": dist(c.frames_sent for c in calls),
        "flood_close_codes": sorted({str(c.close_code) for c in calls}),
        "flood_last_error_codes": sorted({str(c.last_error["code"]) for c in calls}),
        "flood_closing_errors_per_call_count": dist(
            sum("closing" in e["message"] for e in c.errors) for c in calls),
        "flood_disconnects_counted_count": flood_counted,
        "flooding_wall_s": r2(flood_s),
        "server_cpu_while_flooding_s": r2(flood_cpu),
        "server_cpu_per_wall_s_while_flooding": r2(flood_cpu / flood_s),
        "server_cpu_per_flooding_call_s": r2(flood_cpu / len(calls)),
        "server_cpu_per_wall_s_bystander_alone": r2((value(s1, cpu) - value(s0, cpu)) / (t1 - t0)),
        "bystander_end_of_turn_to_first_audio_without_flood_ms": dist(eot(quiet)),
        "bystander_end_of_turn_to_first_audio_with_flood_ms": dist(eot(loud)),
        "bystander_client_first_audio_without_flood_ms": dist(
            t.client_first_audio_ms for t in quiet),
        "bystander_client_first_audio_with_flood_ms": dist(t.client_first_audio_ms for t in loud),
        "new_call_after_flood": after_turn.done["status"],
    }
    r.check("eager client (over the rate, under the flood threshold): frames dropped, "
            "too_many_frames at most once a second, never told it is being closed",
            eager["frames_dropped_count"] > 0
            and 1 <= eager["too_many_frames_errors_count"] <= 1 + eager["wall_s"]
            and not eager["error_says_closing"] and not eager["other_errors"],
            eager)
    r.check("eager client kept (a session.update answered afterwards; not counted as flood)",
            eager["call_kept"] and r.figures["eager_counted_as_flood_count"] == 0,
            (eager["call_kept"], r.figures["eager_counted_as_flood_count"]))
    closed_in_time = [c.close_code == 1008 and c.seconds < 2.0 for c in calls]
    r.check("flooder closed with 1008 within 2 s of its first frame, every time",
            bool(calls) and all(closed_in_time),
            [(c.close_code, round(c.seconds, 3)) for c in calls][:10])
    r.check("the flooder is told why first (too_many_frames: closing the call)",
            all(c.last_error["code"] == "too_many_frames" and "closing" in c.last_error["message"]
                for c in calls), [c.last_error for c in calls][:3])
    r.check('every flood close counted as voiceforge_disconnects_total{reason="flood"}',
            flood_counted == len(calls), (flood_counted, len(calls)))
    r.check("bystander unaffected: its turns all complete, with no error, during the flood",
            all(t.done["status"] == "completed" and not t.errors for t in loud),
            [(t.done["status"], t.errors) for t in loud])
    r.check("a new call works after the flood", after_turn.done["status"] == "completed"
            and not after_turn.errors, after_turn.done["status"])
    return r


# --------------------------------------------------------------------------- 4. audio flood


async def audio_flood(ctx: Context) -> Result:
    r = ctx.result
    duration_s = 3.0 if ctx.quick else 10.0
    factor, frame_ms = 10.0, 100.0
    settings = Settings()
    r.settings = {
        **settings_of(settings, "max_audio_realtime_factor", "audio_burst_ms"),
        "offered": f"{factor:g}x real time for {duration_s:g} s of wall time, "
                   f"{frame_ms:g} ms frames of 16 kHz silence ({1000 * factor / frame_ms:g} "
                   "frames/s, under the frame-rate limit)",
        "engines": BENCH,
    }
    frame = pack({"type": "input_audio.append", "audio": bytes(int(16 * frame_ms) * 2)})
    async with serving(settings, bench_engines()) as server:
        call = await RawCall.open(server.url)
        try:
            session = session_of(server, call)
            stop = asyncio.Event()

            async def read() -> None:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await call.recv(0.2)

            reader = asyncio.create_task(read())
            ctx.step(f"{factor:g}x real time for {duration_s:g} s")
            started = time.monotonic()
            sent = 0
            while (due := started + sent * frame_ms / factor / 1000.0) < started + duration_s:
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await call.ws.send(frame)
                sent += 1
            wall_s = time.monotonic() - started
            await asyncio.sleep(1.2)  # the last errors, at most one a second
            stop.set()
            await reader
            accepted_ms = getattr(session.limiter, "accepted_ms", None)
            turn = await call.typed_turn(QUESTION)
        finally:
            await call.close()
    codes = Counter(e["code"] for e in call.errors())
    offered_ms = sent * frame_ms
    allowed_ms = settings.audio_burst_ms + settings.max_audio_realtime_factor * wall_s * 1000.0
    r.figures = {
        "audio_offered_ms": offered_ms,
        "audio_accepted_ms": r2(accepted_ms),
        "audio_allowed_by_limit_ms": r2(allowed_ms),
        "accepted_share_of_offered": r2(accepted_ms / offered_ms if accepted_ms else None),
        "wall_s": r2(wall_s),
        "audio_rate_exceeded_errors_count": codes.get("audio_rate_exceeded", 0),
        "audio_rate_exceeded_errors_per_s": r2(codes.get("audio_rate_exceeded", 0) / wall_s),
        "other_errors": {k: v for k, v in codes.items() if k != "audio_rate_exceeded"},
        "typed_turn_after_flood": turn.done["status"],
    }
    r.check("accepted audio within the limit (burst + 2x wall time, one frame of slack)",
            accepted_ms is not None and accepted_ms <= allowed_ms + frame_ms,
            (accepted_ms, allowed_ms))
    r.check("audio up to the limit is taken (no more than 3 frames short of it)",
            accepted_ms is not None and accepted_ms >= allowed_ms - 3 * frame_ms - 2 * factor
            * frame_ms, (accepted_ms, allowed_ms))
    r.check("audio_rate_exceeded sent, at most once a second",
            1 <= codes.get("audio_rate_exceeded", 0) <= wall_s + 2, codes)
    r.check("no other error", set(codes) <= {"audio_rate_exceeded"}, codes)
    r.check("the call goes on (a typed turn completes)", turn.done["status"] == "completed",
            turn.done)
    return r


# --------------------------------------------------------------------------- 5. oversized


async def oversized(ctx: Context) -> Result:
    r = ctx.result
    soft_n, hard_n = (3, 1) if ctx.quick else (20, 5)
    settings = Settings()
    soft = pack({"type": "input_audio.append", "audio": bytes(settings.max_frame_bytes)})
    hard = pack({"type": "input_audio.append", "audio": bytes(settings.hard_max_frame_bytes)})
    r.settings = {**settings_of(settings, "max_frame_bytes", "hard_max_frame_bytes"),
                  "soft_frame_bytes": len(soft), "hard_frame_bytes": len(hard),
                  "soft_frames": soft_n, "hard_frames": hard_n, "engines": BENCH}
    async with serving(settings, bench_engines()) as server:
        call = await RawCall.open(server.url)
        soft_ms, soft_codes = [], []
        try:
            ctx.step(f"{soft_n} frames of {len(soft)} bytes on one call")
            for _ in range(soft_n):
                start = time.perf_counter()
                await call.ws.send(soft)
                error = await call.wait_type("error", 10)
                soft_ms.append(ms_since(start))
                soft_codes.append(error["code"])
            after_soft = await call.typed_turn(QUESTION)
        finally:
            await call.close()
        ctx.step(f"{hard_n} frames of {len(hard)} bytes, one call each")
        hard_ms: list[float] = []
        hard_codes: list[int | None] = []
        for _ in range(hard_n):
            victim = await RawCall.open(server.url)
            start = time.perf_counter()
            try:
                try:
                    await victim.ws.send(hard)
                except ConnectionClosed as exc:  # closed while the frame was still going out
                    code = exc.rcvd.code if exc.rcvd is not None else None
                else:
                    code = (await victim.until_closed(15)).code
                hard_ms.append(ms_since(start))
                hard_codes.append(code)
            finally:
                await victim.close()
        fresh = await RawCall.open(server.url)
        try:
            after_hard = await fresh.typed_turn(QUESTION)
        finally:
            await fresh.close()
        gone = await wait_until(lambda: not server.state.sessions, 5.0)
    r.figures = {
        "frame_too_large_answer_ms": dist(soft_ms),
        "frame_too_large_codes": sorted(set(soft_codes)),
        "typed_turn_after_oversized_frames": after_soft.done["status"],
        "hard_limit_close_ms": dist(hard_ms),
        "hard_limit_close_codes": sorted({str(c) for c in hard_codes}),
        "new_call_after_hard_limit": after_hard.done["status"],
        "sessions_left_after_s": r2(gone),
    }
    r.check("frame_too_large for every frame over max_frame_bytes",
            soft_codes == ["frame_too_large"] * soft_n, soft_codes)
    r.check("that call goes on (a typed turn completes)",
            after_soft.done["status"] == "completed", after_soft.done)
    r.check("close 1009 for every frame over hard_max_frame_bytes",
            hard_codes == [1009] * hard_n, hard_codes)
    r.check("the server goes on serving (a new call answers)",
            after_hard.done["status"] == "completed", after_hard.done)
    r.check("no session left behind", gone is not None, len(server.state.sessions))
    return r


# --------------------------------------------------------------------------- 6. slow reader


LONG_REPLY = " ".join(["Once upon a time."] * 100)
"""About 1700 s of tone (1 s per character), 81 MB of PCM at 24 kHz if it were
all queued: what a server that buffered for a stuck client would hold."""


async def slow_reader(ctx: Context) -> Result:
    r = ctx.result
    timeout_s = 3.0 if ctx.quick else DEFAULTS.slow_client_timeout_s
    overrides = {"slow_client_timeout_s": timeout_s} if ctx.quick else {}
    spec = {
        "settings": overrides,
        "llm": {"reply": LONG_REPLY, "first_token_ms": 0.0, "tokens_per_second": 1000.0},
        "tts": {"ms_per_char": 1000.0, "chunk_ms": 1000.0},
    }
    reply_pcm_mb = len(LONG_REPLY) * 48000 / 1e6
    r.settings = {
        "server": "child process (python -m loadtest.harness)",
        **settings_of(DEFAULTS, "slow_client_frames", "max_outbound_frames"),
        "slow_client_timeout_s": timeout_s,
        "engines": f"scripted LLM: a {len(LONG_REPLY)}-character reply at 1000 tokens/s; tone "
                   "TTS, 1 s of 24 kHz audio per character, synthesised at once",
        "reply_pcm_mb": r2(reply_pcm_mb),
        "client": "raw socket, SO_RCVBUF 8 kB, reads only when told",
    }
    rss, dropped = "process_resident_memory_bytes", "voiceforge_dropped_audio_frames_total"
    async with child_server(spec_serve(spec)) as child:
        try:
            base = child.http

            async def dropped_now() -> float:
                return value(await metrics(ctx, base), dropped)

            # --- a client that pauses, then reads again
            ctx.step("pause: a client stops reading after its turn, then reads again")
            client = await asyncio.to_thread(StubbornClient, child.url)
            try:
                s0 = await metrics(ctx, base)
                client.send({"type": "conversation.text", "text": "Tell me a long story."})
                paused_at = client.last_read_at

                async def dropping() -> bool:
                    return await dropped_now() > value(s0, dropped)

                await wait_until(dropping, 30.0, 0.05)
                pause_drop_s = time.monotonic() - paused_at
                await asyncio.sleep(0.5)
                done = await asyncio.to_thread(
                    client.read_until, lambda m: m["type"] == "response.done", 30)
                resumed_at = time.monotonic()
                client.send({"type": "session.update", "session": {"temperature": 0.2}})
                updated = await asyncio.to_thread(
                    client.read_until, lambda m: m["type"] == "session.updated", 10)
                s1 = await metrics(ctx, base)
            finally:
                client.close()
            pause_errors = [m["code"] for m in client.messages if m["type"] == "error"]
            deltas = [m for m in client.messages if m["type"] == "response.audio.delta"]
            pause_audio = len(deltas)
            frame_bytes = float(np.mean([len(m["audio"]) for m in deltas])) if deltas else 0.0
            del resumed_at

            async def no_session() -> bool:
                return value(await metrics(ctx, base), "voiceforge_sessions_active") == 0

            await wait_until(no_session, 10.0, 0.05)

            # --- a client that never reads again
            ctx.step(f"stuck: a client never reads again (expect a close after {timeout_s:g} s)")
            await asyncio.sleep(1.0)
            s2 = await metrics(ctx, base)
            stuck = await asyncio.to_thread(StubbornClient, child.url)
            try:
                stuck.send({"type": "conversation.text", "text": "Tell me a long story."})
                last_read = stuck.last_read_at
                drop_s: float | None = None
                closed_s: float | None = None
                peak = value(s2, rss)
                deadline = last_read + timeout_s + 15.0
                while time.monotonic() < deadline:
                    sample = await metrics(ctx, base)
                    peak = max(peak, value(sample, rss))
                    now = time.monotonic()
                    if drop_s is None and value(sample, dropped) > value(s2, dropped):
                        drop_s = now - last_read
                    slow_closed = value(sample, "voiceforge_disconnects_total",
                                        reason="slow_client") - value(
                        s2, "voiceforge_disconnects_total", reason="slow_client")
                    if slow_closed >= 1:
                        closed_s = now - last_read
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
                s3 = await metrics(ctx, base)
            finally:
                stuck.close()
        finally:
            r.server_tracebacks = child.tracebacks()
    mb = 1e6
    r.figures = {
        "pause_until_audio_dropped_s": r2(pause_drop_s),
        "pause_audio_frames_received_count": pause_audio,
        "pause_audio_frames_dropped_count": value(s1, dropped) - value(s0, dropped),
        "pause_reply_status": done.get("status"),
        "pause_reply_reason": done.get("reason"),
        "pause_errors": pause_errors,
        "pause_call_goes_on": updated.get("type") == "session.updated",
        "stuck_until_audio_dropped_s": r2(drop_s),
        "stuck_until_disconnected_s": r2(closed_s),
        "stuck_audio_frames_dropped_count": value(s3, dropped) - value(s2, dropped),
        "server_rss_before_mb": r2(value(s2, rss) / mb),
        "server_rss_peak_mb": r2(peak / mb),
        "server_rss_after_mb": r2(value(s3, rss) / mb),
        "server_rss_growth_peak_mb": r2((peak - value(s2, rss)) / mb),
        "reply_pcm_mb": r2(reply_pcm_mb),
        "audio_delta_bytes": r2(frame_bytes),
        "queue_of_slow_client_frames_mb": r2(DEFAULTS.slow_client_frames * frame_bytes / mb),
        "sessions_active_after": value(s3, "voiceforge_sessions_active"),
    }
    queue_mb = DEFAULTS.slow_client_frames * frame_bytes / mb
    r.check("paused client: its audio dropped, it is told, the reply cancelled (client_too_slow)",
            pause_errors == ["client_too_slow"] and done.get("status") == "cancelled"
            and done.get("reason") == "client_too_slow"
            and value(s1, dropped) > value(s0, dropped), (pause_errors, done))
    r.check("paused client: the call goes on after it reads again",
            updated.get("type") == "session.updated")
    r.check(f"stuck client: closed after slow_client_timeout_s ({timeout_s:g} s) + at most 3 s",
            closed_s is not None and timeout_s <= closed_s <= timeout_s + 3.0, closed_s)
    r.check(f"memory a stuck client costs is bounded by its queue (peak growth < twice "
            f"{DEFAULTS.slow_client_frames} audio frames + 8 MB = {2 * queue_mb + 8:.1f} MB)",
            (peak - value(s2, rss)) / mb < 2 * queue_mb + 8, r.figures["server_rss_growth_peak_mb"])
    r.check("no session left", value(s3, "voiceforge_sessions_active") == 0)
    return r


# --------------------------------------------------------------------------- 7. time limits


async def idle_timeout(ctx: Context) -> Result:
    r = ctx.result
    calls = 1 if ctx.quick else 3
    settings = Settings(idle_timeout_s=2.0, max_call_s=3.0)
    r.settings = {**settings_of(settings, "idle_timeout_s", "max_call_s"),
                  "sweep_interval_s": SWEEP_INTERVAL_S, "idle_calls": calls,
                  "talking_calls": calls, "talking": "output_audio.played every 0.3 s",
                  "engines": BENCH}

    async def idle() -> tuple[float | None, float, int | None, list[str]]:
        call = await RawCall.open(server.url)
        try:
            closed = await call.until_closed(15)
        finally:
            await call.close()
        errors = [(t, m) for t, m in call.log if m["type"] == "error"]
        return ((errors[0][0] - call.opened_at) if errors else None,
                closed.at - call.opened_at, closed.code, [m["code"] for _, m in errors])

    async def talking() -> tuple[float | None, float, int | None, list[str]]:
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
                closed.at - call.opened_at, closed.code, [m["code"] for _, m in errors])

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
            all(2.0 <= o[1] <= 2.0 + slack for o in silent), [o[1] for o in silent])
    r.check("talking calls: call_time_limit, then close 1000",
            all(o[3] == ["call_time_limit"] and o[2] == 1000 for o in busy), busy)
    r.check(f"talking calls closed between max_call_s and max_call_s + {slack:g} s",
            all(3.0 <= o[1] <= 3.0 + slack for o in busy), [o[1] for o in busy])
    r.check("no session left", gone is not None)
    return r


# --------------------------------------------------------------------------- 8. LLM faults


QUICK_LLM_FAULTS = ("status_503", "refused", "stall_mid", "html")
FIRST_TOKEN_TIMEOUT_S = 1.0
STALL_TIMEOUT_S = 0.5


def _all_closed(requests: list[Any]) -> bool:
    return all(request.client_closed for request in requests)


async def llm_faults(ctx: Context) -> Result:
    r = ctx.result
    faults = [f for f in FAULTS if not ctx.quick or f.mode in QUICK_LLM_FAULTS]
    r.settings = {
        "engine": "OpenAICompatLLM against loadtest.fault_llm.FaultyLLMServer (127.0.0.1)",
        "connect_timeout_s": 2.0, "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
        "stall_timeout_s": STALL_TIMEOUT_S, "engine_retries": RETRIES,
        "retry_backoff_s": [0.2, 0.4][:RETRIES],
        "tts": "tone, 5 ms per character", "client": "reports playback as audio arrives",
        "modes": [f.mode for f in faults],
    }
    llm_server = FaultyLLMServer().start()
    try:
        llm = OpenAICompatLLM(
            llm_server.url, "fault-model", api_key="unused", connect_timeout_s=2.0,
            first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S, stall_timeout_s=STALL_TIMEOUT_S,
        )
        settings = Settings(llm_backend="openai", llm_url=llm.base_url)
        engines = bench_engines(llm=llm, tts=ToneTTS(ms_per_char=5.0, chunk_ms=50.0))
        async with serving(settings, engines) as server:
            for fault in faults:
                ctx.step(fault.mode)
                r.figures[fault.mode] = figures = {}
                await wait_ready(ctx, server.http)
                call = await RawCall.open(server.url)
                try:
                    if fault.mode == "refused":
                        llm_server.refuse_connections()
                    else:
                        llm_server.mode = fault.mode
                    seen = len(llm_server.chat_requests())
                    failed = await call.typed_turn("What is the weather like?", 30)
                    requests = llm_server.chat_requests()[seen:]
                    ready_status, ready = await status_of(ctx, server.http, "/readyz")
                    stalled_closed = None
                    if fault.mode.startswith("stall"):
                        stalled_closed = await wait_until(
                            functools.partial(_all_closed, requests), 5.0)
                    llm_server.mode = "ok"
                    if fault.mode == "refused":
                        llm_server.accept_connections()
                    following = await call.typed_turn("And now?", 30)
                finally:
                    await call.close()
                    llm_server.mode = "ok"
                    if not llm_server.listening:
                        llm_server.accept_connections()
                done = failed.done
                errors = [(e["code"], e["category"]) for e in failed.errors]
                apology = done["text_heard"] == APOLOGY and done["played_ms"] > 0
                figures.update({
                    "error": [f"{code}/{category}" for code, category in errors],
                    "status": done["status"],
                    "requests_count": len(requests),
                    "llm_retries_count": done["timings"].get("llm_retries", 0.0),
                    "turn_to_done_ms": r2(failed.to_done_ms),
                    "apology_spoken": apology,
                    "text_heard": done["text_heard"],
                    "readyz_status": ready_status,
                    "readyz_reason": ready.get("reasons", {}).get("llm_failing"),
                    "stalled_stream_closed_after_s": r2(stalled_closed),
                    "next_turn": following.done["status"],
                    "next_turn_to_done_ms": r2(following.to_done_ms),
                })
                heard_ok = (done["text_heard"] == PARTIAL_HEARD and not apology
                            if fault.heard_partial else apology)
                r.check(
                    f"{fault.mode}: {fault.code}/{fault.category}, {fault.requests} request(s), "
                    + ("the partial reply kept, no apology" if fault.heard_partial
                       else "apology spoken") + ", next turn answered",
                    errors == [(fault.code, fault.category)] and done["status"] == "failed"
                    and len(requests) == fault.requests and heard_ok
                    and following.done["status"] == "completed" and not following.errors
                    and following.done["text_heard"] == FAULT_LLM_REPLY
                    and ready_status == 503,
                    {"errors": errors, "requests": len(requests), "heard": done["text_heard"],
                     "next": following.done["status"], "readyz": ready_status},
                )
            recovered = await wait_ready(ctx, server.http)
            r.figures["readyz_200_after_recovery"] = recovered
            r.check("/readyz ready again once the endpoint answers", recovered)
    finally:
        llm_server.stop()
    return r


# --------------------------------------------------------------------------- 9. engine faults


TRANSCRIPT = "What is the capital of France?"
ENGINE_REPLY = "The capital of France is Paris. It is known for the Eiffel Tower."


@dataclass(frozen=True)
class EngineFault:
    name: str
    spoken: bool
    """A spoken turn (STT runs) rather than a typed one."""
    arm: Callable[[ProbeSTT, ProbeLLM, ProbeTTS], None]
    error: tuple[str, str] | None
    attempts: int
    """Calls of the failing engine for the turn."""
    apology: str
    """``voice`` (apology spoken), ``text`` (in text only), ``none``."""
    status: str


def _engine_faults() -> list[EngineFault]:
    def stt(*failures: Exception) -> Callable[[ProbeSTT, ProbeLLM, ProbeTTS], None]:
        return lambda s, _l, _t: s.failures.extend(failures)

    def llm(*failures: Exception) -> Callable[[ProbeSTT, ProbeLLM, ProbeTTS], None]:
        return lambda _s, m, _t: m.failures.extend(failures)

    def tts(*failures: Exception) -> Callable[[ProbeSTT, ProbeLLM, ProbeTTS], None]:
        return lambda _s, _l, t: t.failures.extend(failures)

    def tts_midway(failure: Exception) -> Callable[[ProbeSTT, ProbeLLM, ProbeTTS], None]:
        return lambda _s, _l, t: t.failures_midway.append(failure)

    busy = STTError("decoder busy")
    return [
        EngineFault("stt_transient_once", True, stt(busy), None, 2, "none", "completed"),
        EngineFault("stt_transient_every_time", True, stt(*[busy] * (RETRIES + 2)),
                    ("stt_failed", "transient"), 1 + RETRIES, "voice", "completed"),
        EngineFault("stt_permanent", True,
                    stt(*[STTError("model file vanished", transient=False)] * 2),
                    ("stt_failed", "permanent"), 1, "voice", "completed"),
        EngineFault("tts_transient_once", False, tts(TTSError("voice busy")), None, 3, "none",
                    "completed"),
        EngineFault("tts_permanent", False,
                    tts(*[TTSError("voice model unloaded", transient=False)] * 2),
                    ("tts_failed", "permanent"), 1, "text", "failed"),
        EngineFault("tts_midway", False, tts_midway(TTSError("synthesis crashed")),
                    ("tts_failed", "transient"), 1, "none", "failed"),
        EngineFault("llm_value_error", False, llm(*[ValueError("bad tokenizer state")] * 2),
                    ("llm_failed", "permanent"), 1, "voice", "failed"),
    ]


QUICK_ENGINE_FAULTS = ("stt_permanent", "tts_midway", "llm_value_error")


def _armed(stt: ProbeSTT, llm: ProbeLLM, tts: ProbeTTS) -> int:
    """Failures still waiting to be raised by the engines."""
    return len(stt.failures) + len(llm.failures) + len(tts.failures) + len(tts.failures_midway)


async def _turn(call: RawCall, sender: AudioSender, speech: np.ndarray | None, text: str) -> Turn:
    """A spoken turn (``speech``, then enough silence to end it) or a typed one."""
    if speech is None:
        return await call.typed_turn(text, 30)
    start = len(call.log)
    await sender.send(np.concatenate([silence(0.2), speech]))
    speech_sent = sender.last_sent_at
    await sender.send(silence(0.9))
    done = await call.wait_type("response.done", 30)
    return Turn.of(call.log[start:], speech_sent, done)


async def engine_faults(ctx: Context) -> Result:
    from loadtest.speech import espeak_available, speak

    r = ctx.result
    faults = [f for f in _engine_faults() if not ctx.quick or f.name in QUICK_ENGINE_FAULTS]
    if not espeak_available():
        r.notes.append("espeak-ng missing: the spoken (STT) cases were not measured")
        faults = [f for f in faults if not f.spoken]
    r.settings = {
        **settings_of(DEFAULTS, "engine_retries"),
        "engines": "ProbeSTT (scripted), ProbeLLM (scripted, 200 tokens/s), ProbeTTS (tone, "
                   "4 ms/char, 50 ms chunks), Silero VAD",
        "spoken_turns": "espeak-ng question, 16 kHz, paced at 1.5x real time after a 1 s burst",
        "session": "speculative_transcript and speculative_response off (one STT call a turn)",
        "attempts_count": "calls of the failing engine for the turn (TTS: one per text chunk, "
                          "two chunks a reply)",
        "turn_to_done_ms": "from sending the text (typed) or the end of the speech (spoken, so "
                           "the end-of-turn silence is included) to response.done",
        "cases": [f.name for f in faults],
    }
    question = speak(TRANSCRIPT) if any(f.spoken for f in faults) else None
    stt, llm = ProbeSTT([TRANSCRIPT]), ProbeLLM(ENGINE_REPLY, tokens_per_second=200,
                                                  first_token_ms=5)
    tts = ProbeTTS(ms_per_char=4.0, chunk_ms=50.0)
    async with serving(Settings(), bench_engines(stt=stt, llm=llm, tts=tts)) as server:
        for fault in faults:
            ctx.step(fault.name)
            for queue in (stt.failures, llm.failures, tts.failures, tts.failures_midway):
                queue.clear()
            await wait_ready(ctx, server.http)
            call = await RawCall.open(server.url)
            try:
                await call.send({"type": "session.update", "session": {
                    "speculative_transcript": False, "speculative_response": False}})
                await call.wait_type("session.updated", 10)
                sender = AudioSender(call)
                speech = question if fault.spoken else None
                before = {"stt": stt.attempts, "llm": llm.attempts, "tts": tts.calls}
                fault.arm(stt, llm, tts)
                armed = _armed(stt, llm, tts)
                failed = await _turn(call, sender, speech, "Where is Paris?")
                failed_attempts = armed - _armed(stt, llm, tts)
                engine = fault.name.split("_")[0]
                attempts = {"stt": stt.attempts, "llm": llm.attempts, "tts": tts.calls}[engine] \
                    - before[engine]
                ready_status, ready = await status_of(ctx, server.http, "/readyz")
                for queue in (stt.failures, llm.failures, tts.failures, tts.failures_midway):
                    queue.clear()
                following = await _turn(call, sender, speech, "Where is Paris, then?")
            finally:
                await call.close()
            done = failed.done
            errors = [(e["code"], e["category"]) for e in failed.errors]
            spoken_apology = done["text_heard"] == APOLOGY and done["played_ms"] > 0
            text_apology = done["text"].endswith(APOLOGY) and done["played_ms"] == 0
            apology = "voice" if spoken_apology else "text" if text_apology else "none"
            r.figures[fault.name] = {
                "error": [f"{code}/{category}" for code, category in errors],
                "status": done["status"],
                "attempts_count": attempts,
                "failed_attempts_count": failed_attempts,
                # A failed attempt is retried unless it was the turn's last one.
                "retries_count": failed_attempts - (1 if errors else 0),
                "apology": apology,
                "text_heard": done["text_heard"],
                "turn_to_done_ms": r2(failed.to_done_ms),
                "readyz_status": ready_status,
                "readyz_reasons": sorted(ready.get("reasons", {})),
                "next_turn": following.done["status"],
            }
            expected_errors = [fault.error] if fault.error else []
            r.check(
                f"{fault.name}: "
                + (f"{fault.error[0]}/{fault.error[1]}" if fault.error else "no error")
                + f", {fault.attempts} attempt(s), apology {fault.apology}, next turn answered",
                errors == expected_errors and attempts == fault.attempts
                and apology == fault.apology and done["status"] == fault.status
                and following.done["status"] == "completed" and not following.errors
                and following.done["text_heard"] == ENGINE_REPLY,
                {"errors": errors, "attempts": attempts, "apology": apology,
                 "status": done["status"], "next": following.done["status"]},
            )
    return r


# --------------------------------------------------------------------------- 10. disconnects


async def _settled(ctx: Context, base: str, tasks_baseline: float) -> bool:
    """No session open and the task count at most its level before the call."""
    samples = await metrics(ctx, base)
    return (value(samples, "voiceforge_sessions_active") == 0
            and value(samples, "voiceforge_asyncio_tasks") <= tasks_baseline)


def _playing_only(conversation: Any, llm: ProbeLLM, tts: ProbeTTS) -> bool:
    """Generation over, the reply still playing."""
    return llm.active == 0 and tts.active == 0 and bool(
        getattr(conversation, "agent_speaking", False))


async def disconnects(ctx: Context) -> Result:
    from loadtest.speech import espeak_available, speak

    r = ctx.result
    stages = ["speech", "stt", "llm", "tts", "playback"]
    if ctx.quick:
        stages = ["llm", "playback"]
    if not espeak_available():
        r.notes.append("espeak-ng missing: the speech and stt stages were not measured")
        stages = [s for s in stages if s not in ("speech", "stt")]
    r.settings = {
        "engines": "Probe engines slowed down at the stage dropped in: STT 8 s, LLM 1 token/s, "
                   "TTS 60 ms/char at half real time, playback 120 ms/char",
        "drop": "TCP connection aborted, no close frame",
        "stages": stages,
    }
    question = speak(TRANSCRIPT) if {"speech", "stt"} & set(stages) else None
    stt = ProbeSTT()
    llm = ProbeLLM(ENGINE_REPLY, tokens_per_second=200, first_token_ms=5)
    tts = ProbeTTS(ms_per_char=5.0, chunk_ms=50.0)

    def fast() -> None:
        stt.delay_ms = 0.0
        llm.first_token_ms, llm.tokens_per_second = 5.0, 200.0
        tts.ms_per_char, tts.realtime_factor = 5.0, 0.0

    async with serving(Settings(), bench_engines(stt=stt, llm=llm, tts=tts)) as server:
        for stage in stages:
            ctx.step(stage)
            fast()
            await wait_until(lambda: not server.state.sessions, 5.0)
            scrapes = [await metrics(ctx, server.http) for _ in range(3)]
            baseline = min(value(s, "voiceforge_asyncio_tasks") for s in scrapes)
            closed_before = value(scrapes[-1], "voiceforge_disconnects_total",
                                  reason="client_closed")
            call = await RawCall.open(server.url)
            call.report_played = False
            sender = AudioSender(call)
            if stage == "speech":
                assert question is not None
                await sender.send(np.concatenate([silence(0.2), question]), stop_after_ms=900)
                await call.wait_type("input_audio.speech_started", 10)
            elif stage == "stt":
                assert question is not None
                stt.delay_ms = 8000.0
                await sender.send(np.concatenate([silence(0.2), question, silence(0.9)]))
                await wait_until(lambda: stt.active > 0, 10.0)
            elif stage == "llm":
                llm.tokens_per_second = 1.0
                await call.send({"type": "conversation.text", "text": TRANSCRIPT})
                await call.wait_type("response.text.delta", 10)
            elif stage == "tts":
                tts.ms_per_char, tts.realtime_factor = 60.0, 2.0
                await call.send({"type": "conversation.text", "text": TRANSCRIPT})
                await call.wait_type("response.audio.delta", 10)
            else:
                tts.ms_per_char = 120.0
                conversation = session_of(server, call).conversation
                await call.send({"type": "conversation.text", "text": TRANSCRIPT})
                await call.wait_type("response.audio.delta", 10)
                await wait_until(functools.partial(_playing_only, conversation, llm, tts), 10.0)
            busy = {"speech": True, "stt": stt.active > 0, "llm": llm.active > 0,
                    "tts": tts.active > 0, "playback": True}[stage]
            dropped_at = time.monotonic()
            call.abort()
            await call.close()
            sessions_s = await wait_until(lambda: not server.state.sessions, 5.0, 0.005)
            sessions_at = time.monotonic()

            tasks_s = await wait_until(
                functools.partial(_settled, ctx, server.http, baseline), 5.0, 0.02)
            tasks_s = None if tasks_s is None else time.monotonic() - dropped_at
            sessions_s = None if sessions_s is None else sessions_at - dropped_at
            engine_idle = stt.active == 0 and llm.active == 0 and tts.active == 0
            after = await metrics(ctx, server.http)
            counted = value(after, "voiceforge_disconnects_total",
                            reason="client_closed") - closed_before
            fast()
            fresh = await RawCall.open(server.url)
            try:
                answer = await fresh.typed_turn("Still there?", 30)
            finally:
                await fresh.close()
            r.figures[stage] = {
                "stage_busy_when_dropped": busy,
                "no_session_after_ms": r2(None if sessions_s is None else sessions_s * 1e3),
                "tasks_back_to_baseline_after_ms": r2(
                    None if tasks_s is None else tasks_s * 1e3),
                "asyncio_tasks_baseline_count": baseline,
                "engine_work_cancelled": engine_idle,
                "counted_as_client_closed": counted,
                "new_call": answer.done["status"],
            }
            r.check(f"{stage}: within 5 s no session and the task count back to its level "
                    "before the call; engine work cancelled; a new call answered",
                    busy and sessions_s is not None and tasks_s is not None and engine_idle
                    and counted == 1 and answer.done["status"] == "completed",
                    r.figures[stage])
    return r


# --------------------------------------------------------------------------- 11. model load


class BlockedLoader:
    """An engine factory that waits for ``release`` before building the engines
    (``abort`` makes it raise instead)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.loaded = threading.Event()
        self.aborted = False

    def __call__(self) -> Engines:
        self.entered.set()
        released = self.release.wait(60)
        if self.aborted or not released:
            raise ModelLoadError("loader aborted")
        return bench_engines()

    def abort(self) -> None:
        self.aborted = True
        self.release.set()


LOAD_ERROR = "whisper model /models/tiny.en/model.bin: file is truncated"


async def model_load(ctx: Context) -> Result:
    r = ctx.result
    settings = Settings(latency_budget_ms=0.0)
    r.settings = {**settings_of(settings, "retry_after_s"),
                  "failing_factory": f"raises ModelLoadError({LOAD_ERROR!r})",
                  "blocked_factory": "waits for a release, then builds the bench engines"}

    def failing() -> Engines:
        raise ModelLoadError(LOAD_ERROR)

    ctx.step("a factory that raises")
    async with serving_app(create_app(settings, failing), settings) as server:
        started = time.monotonic()

        async def health_failed() -> bool:
            return (await ctx.http.get(f"{server.http}/healthz")).status_code == 503

        failed_s = await wait_until(health_failed, 10.0, 0.005)
        failed_s = None if failed_s is None else time.monotonic() - started
        health_status, health = await status_of(ctx, server.http, "/healthz")
        ready_status, ready = await status_of(ctx, server.http, "/readyz")
        refusals = [await handshake(server.url) for _ in range(3)]

    ctx.step("a factory that blocks until released")
    loader = BlockedLoader()
    app = create_app(settings, loader, on_ready=loader.loaded.set)
    async with serving_app(app, settings) as server:
        try:
            await wait_until(loader.entered.is_set, 10.0)
            loading_health, loading_body = await status_of(ctx, server.http, "/healthz")
            loading_ready, _ = await status_of(ctx, server.http, "/readyz")
            loading_call = await handshake(server.url)
            released_at = time.monotonic()
            loader.release.set()

            async def ready_now() -> bool:
                return (await ctx.http.get(f"{server.http}/readyz")).status_code == 200

            ready_s = await wait_until(ready_now, 10.0, 0.005)
            ready_s = None if ready_s is None else time.monotonic() - released_at
            call = await RawCall.open(server.url)
            try:
                answer = await call.typed_turn(QUESTION)
            finally:
                await call.close()
        finally:
            loader.release.set()

    ctx.step("a server stopped while its factory blocks")
    stuck = BlockedLoader()
    stuck_app = create_app(settings, stuck, on_ready=stuck.loaded.set)
    async with serving_app(stuck_app, settings):
        await wait_until(stuck.entered.is_set, 10.0)
        stopping = time.monotonic()
    stopped_s = time.monotonic() - stopping
    stuck.abort()

    r.figures = {
        "healthz_503_after_start_ms": r2(None if failed_s is None else failed_s * 1e3),
        "healthz_failed_body": health,
        "readyz_status_failed": ready_status,
        "readyz_reasons_failed": ready.get("reasons"),
        "ws_refusal_statuses_failed": sorted({h.status for h in refusals}),
        "ws_refusal_reason_failed": sorted({str(h.reason()) for h in refusals}),
        "ws_refusal_latency_failed_ms": dist(h.ms for h in refusals),
        "healthz_while_loading": f"{loading_health} {loading_body.get('status')}",
        "readyz_status_while_loading": loading_ready,
        "ws_status_while_loading": loading_call.status,
        "readyz_200_after_release_ms": r2(None if ready_s is None else ready_s * 1e3),
        "first_call_after_load": answer.done["status"],
        "stop_while_loading_s": r2(stopped_s),
    }
    r.check("a failed load: /healthz 503 'failed' with the reason, /readyz 503, calls 503 "
            "not_ready", failed_s is not None and health_status == 503
            and health.get("status") == "failed" and LOAD_ERROR in str(health.get("reason"))
            and ready_status == 503 and all(h.status == 503 and h.reason() == "not_ready"
                                            for h in refusals), (health, ready))
    r.check("loading: /healthz 200 'loading', /readyz 503, calls 503",
            loading_health == 200 and loading_body.get("status") == "loading"
            and loading_ready == 503 and loading_call.status == 503,
            (loading_health, loading_body, loading_ready, loading_call.status))
    r.check("loaded: /readyz 200 and a call answered", ready_s is not None
            and answer.done["status"] == "completed", (ready_s, answer.done["status"]))
    r.check("a server stopped while loading stops within 2 s", stopped_s < 2.0, stopped_s)
    return r


# --------------------------------------------------------------------------- 12. shutdown


async def _stopped_listening(port: int, timeout_s: float) -> float | None:
    """Seconds until connecting to ``port`` is refused (polled every 10 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return time.monotonic() - start
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        await asyncio.sleep(0.01)
    return None


SHUTDOWN_LINE = re.compile(r"shutdown complete: \d+ tasks and \d+ non-daemon threads left.*")


async def shutdown(ctx: Context) -> Result:
    r = ctx.result
    r.settings = {
        "server": "voiceforge serve --profile bench (child process)",
        "drain_case": {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": "4",
                       "VOICEFORGE_DRAIN_TIMEOUT_S": "15",
                       "signal": "SIGTERM once the first reply audio arrived"},
        "deadline_case": {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": "2",
                          "VOICEFORGE_DRAIN_TIMEOUT_S": "0.5",
                          "signal": "SIGTERM once response.created arrived"},
        "client": "does not report playback (the server estimates it from the clock)",
    }
    tracebacks: list[str] = []

    async def one(tokens: str, drain_s: str, signal_on: str) -> dict[str, Any]:
        env = {"VOICEFORGE_BENCH_TOKENS_PER_SECOND": tokens,
               "VOICEFORGE_DRAIN_TIMEOUT_S": drain_s, "VOICEFORGE_LOG_FORMAT": "text"}
        async with child_server(voiceforge_serve("bench"), env) as child:
            try:
                call = await RawCall.open(child.url)
                call.report_played = False
                await call.send({"type": "conversation.text", "text": "Hello?"})
                await call.wait_type(signal_on, 10)
                signalled = time.monotonic()
                child.signal(signal.SIGTERM)
                listening = asyncio.create_task(_stopped_listening(child.port, 5.0))
                done = await call.wait_type("response.done", 30)
                done_s = time.monotonic() - signalled
                closed = await call.until_closed(15)
                rc = await asyncio.to_thread(child.wait_exit, 30)
                exit_s = time.monotonic() - signalled
                stop_listening_s = await listening
            finally:
                tracebacks.extend(child.tracebacks())
            match = SHUTDOWN_LINE.search(child.output())
            return {
                "stopped_listening_after_ms": r2(
                    None if stop_listening_s is None else stop_listening_s * 1e3),
                "response_done_after_s": r2(done_s),
                "response_status": done["status"],
                "response_reason": done.get("reason"),
                "close_code": closed.code,
                "closed_after_s": r2(closed.at - signalled),
                "errors": [e["code"] for e in call.errors()],
                "process_exit_after_s": r2(exit_s),
                "exit_status": rc,
                "shutdown_line": match.group(0).strip() if match else None,
                "graceful_timeout_exceeded": "timeout graceful shutdown exceeded"
                in child.output(),
            }

    ctx.step("drain: a reply in flight finishes")
    drained = await one("4", "15", "response.audio.delta")
    r.figures["drain"] = drained
    ctx.step("deadline: the reply in flight is cancelled at 0.5 s")
    deadline = await one("2", "0.5", "response.created")
    r.figures["deadline"] = deadline
    r.server_tracebacks = tracebacks
    clean = "shutdown complete: 0 tasks and 0 non-daemon threads left"
    for name, case in (("drain", drained), ("deadline", deadline)):
        r.check(f"{name}: stops listening at once (< 1 s), closes 1001 after "
                "server_shutting_down, exits with nothing left running",
                case["stopped_listening_after_ms"] is not None
                and case["stopped_listening_after_ms"] < 1000 and case["close_code"] == 1001
                and case["errors"] == ["server_shutting_down"]
                and case["exit_status"] in (0, -signal.SIGTERM)
                and case["shutdown_line"] is not None and case["shutdown_line"].startswith(clean)
                and not case["graceful_timeout_exceeded"], case)
    r.check("drain: the reply in flight completes",
            drained["response_status"] == "completed", drained["response_status"])
    r.check("deadline: the reply is cancelled (server_shutdown) and still reported",
            deadline["response_status"] == "cancelled"
            and deadline["response_reason"] == "server_shutdown", deadline)
    return r


# --------------------------------------------------------------------------- 13. security


API_KEY = "reliability-api-key-0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-reliability"


async def security(ctx: Context) -> Result:
    r = ctx.result
    n = 3 if ctx.quick else 20
    settings = Settings(api_key=API_KEY, allowed_origins=("https://app.example",),
                        twilio_auth_token=TWILIO_TOKEN, public_url="https://voice.example.com",
                        token_ttl_s=60.0)
    r.settings = {"api_key": "set", "allowed_origins": list(settings.allowed_origins),
                  "twilio_auth_token": "set", "public_url": settings.public_url,
                  "token_ttl_s": settings.token_ttl_s, "attempts_per_case": n,
                  "engines": BENCH}
    expired, _ = issue_token(API_KEY, ttl_s=1.0, now=time.time() - 60)
    key = f"bearer.{API_KEY}"
    async with serving(settings, bench_engines()) as server:
        twilio = server.url.replace("/ws", "/telephony/twilio")
        cases: dict[str, tuple[str, dict[str, Any]]] = {
            "no_credential": (server.url, {}),
            "wrong_key": (server.url, {"extra_subprotocols": ("bearer.wrong-key",)}),
            "expired_token": (server.url, {"extra_subprotocols": (f"bearer.{expired}",)}),
            "bad_origin": (server.url, {"extra_subprotocols": (key,),
                                        "origin": "https://evil.example"}),
            "unsigned_twilio": (twilio, {}),
        }
        outcomes: dict[str, list[Handshake]] = {}
        for name, (url, kwargs) in cases.items():
            ctx.step(f"{name} x{n}")
            outcomes[name] = []
            for _ in range(n):
                attempt = await handshake(url, **kwargs)
                if attempt.call is not None:
                    await attempt.call.close()
                outcomes[name].append(attempt)
        ctx.step(f"mint x{n}; calls with the key and with a token")
        mints = []
        token = ""
        for _ in range(n):
            start = time.perf_counter()
            minted = await ctx.http.post(f"{server.http}/v1/session-tokens",
                                         headers={"Authorization": f"Bearer {API_KEY}"})
            mints.append((minted.status_code, ms_since(start)))
            token = minted.json().get("token", "")
        no_key_mint = await ctx.http.post(f"{server.http}/v1/session-tokens")
        with_key = [await handshake(server.url, extra_subprotocols=(key,)) for _ in range(n)]
        with_token = await handshake(server.url, extra_subprotocols=(f"bearer.{token}",))
        for h in [*with_key, with_token]:
            if h.call is not None:
                await h.call.close()
        samples = await metrics(ctx, server.http)
    logged = "\n".join(ctx.watch.messages())
    r.figures = {
        **{f"{name}_statuses": sorted({h.status for h in hs}) for name, hs in outcomes.items()},
        **{f"{name}_refusal_ms": dist(h.ms for h in hs) for name, hs in outcomes.items()},
        "token_mint_statuses": sorted({s for s, _ in mints}),
        "token_mint_ms": dist(ms for _, ms in mints),
        "token_mint_without_key_status": no_key_mint.status_code,
        "handshake_with_key_ms": dist(h.ms for h in with_key),
        "handshake_with_token_status": with_token.status,
        "refusals_counted": {
            reason: value(samples, "voiceforge_refusals_total", reason=reason)
            for reason in ("unauthorized", "origin", "bad_signature")
        },
    }
    for name, hs in outcomes.items():
        r.check(f"{name}: HTTP 403 every time", all(h.status == 403 for h in hs),
                [h.status for h in hs])
    r.check("tokens minted with the key (200), refused without it (401)",
            all(s == 200 for s, _ in mints) and no_key_mint.status_code == 401,
            (mints, no_key_mint.status_code))
    r.check("the key and a token open calls",
            all(h.status == 101 for h in with_key) and with_token.status == 101)
    r.check("no secret in the server's log",
            API_KEY not in logged and token not in logged and TWILIO_TOKEN not in logged)
    return r


# --------------------------------------------------------------------------- running


SCENARIOS: dict[str, Callable[[Context], Awaitable[Result]]] = {
    "session_limit": session_limit,
    "admission": admission,
    "frame_flood": frame_flood,
    "audio_flood": audio_flood,
    "oversized": oversized,
    "slow_reader": slow_reader,
    "idle_timeout": idle_timeout,
    "llm_faults": llm_faults,
    "engine_faults": engine_faults,
    "disconnects": disconnects,
    "model_load": model_load,
    "shutdown": shutdown,
    "security": security,
}
SCENARIO_LIMIT_S = {False: 300.0, True: 120.0}
"""Wall-clock bound on any one scenario (full, quick)."""


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_scenario(
    name: str, quick: bool, http: httpx.AsyncClient, progress: Callable[[str], None] = _progress
) -> dict[str, Any]:
    """Run one scenario; its JSON entry (never raises: a crash is a failed invariant)."""
    result = Result()
    error: str | None = None
    started = time.monotonic()
    with watching_logs() as watch:
        ctx = Context(quick, http, watch, result, progress)
        try:
            await asyncio.wait_for(SCENARIOS[name](ctx), SCENARIO_LIMIT_S[quick])
        except Exception as exc:
            error = "".join(traceback.format_exception(exc)).strip()
            if isinstance(exc, TimeoutError):
                error = f"did not finish within {SCENARIO_LIMIT_S[quick]:g} s\n{error}"
        await asyncio.sleep(0.1)  # late log records of the servers just stopped
    tracebacks = [*result.server_tracebacks, *watch.tracebacks()]
    result.check("no server traceback logged", not tracebacks, tracebacks[:5])
    if error is not None:
        result.check("the scenario ran to the end", False, error.splitlines()[-1])
    passed = all(c.passed for c in result.checks)
    return {
        "passed": passed,
        "duration_s": round(time.monotonic() - started, 2),
        "settings": result.settings,
        "figures": result.figures,
        "invariants": [dataclasses.asdict(c) for c in result.checks],
        "server_tracebacks": tracebacks,
        "warnings_logged": len(watch.records),
        "notes": result.notes,
        "error": error,
    }


async def run(
    names: list[str], quick: bool, progress: Callable[[str], None] = _progress
) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": "python -m loadtest.reliability" + (" --quick" if quick else ""),
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "scenarios": {},
    }
    async with httpx.AsyncClient(timeout=10.0) as http:
        for index, name in enumerate(names, 1):
            progress(f"[{index}/{len(names)}] {name}")
            entry = await run_scenario(name, quick, http, progress)
            report["scenarios"][name] = entry
            failed = [c["invariant"] for c in entry["invariants"] if not c["passed"]]
            progress(f"    {'PASS' if entry['passed'] else 'FAIL'} in {entry['duration_s']:.1f} s"
                     + (f"; failed: {'; '.join(failed)}" if failed else ""))
    report["total_s"] = round(time.monotonic() - started, 1)
    report["passed"] = all(s["passed"] for s in report["scenarios"].values())
    return report


# --------------------------------------------------------------------------- table

_UNITS = (("_per_s", "/s"), ("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_count", "count"),
          ("_bytes", "bytes"))


def _unit(key: str) -> str:
    parts = key.split(".")
    if parts[-1] == "n":
        return "count"
    for part in reversed(parts):
        for suffix, unit in _UNITS:
            if part.endswith(suffix):
                return unit
    return ""


def flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, item in figures.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item and set(item) == {"n", "p50", "p95", "max"}:
            rows.append((name, item))
        elif isinstance(item, dict) and item and not name.endswith(("_body", "_reasons")):
            rows.extend(flatten(item, f"{name}."))
        else:
            rows.append((name, item))
    return rows


def _format(item: Any) -> str:
    if isinstance(item, dict) and set(item) == {"n", "p50", "p95", "max"}:
        if not item["n"]:
            return "n=0"
        return f"p50 {_format(item['p50'])}  p95 {_format(item['p95'])}  max " \
               f"{_format(item['max'])}  (n={item['n']})"
    if isinstance(item, bool):
        return "yes" if item else "no"
    if isinstance(item, float):
        if item.is_integer() and abs(item) < 1e15:
            return str(int(item))
        return f"{item:.3f}".rstrip("0") if abs(item) < 10 else f"{item:.1f}"
    if isinstance(item, list):
        return ", ".join(_format(i) for i in item) if item else "-"
    if item is None:
        return "-"
    if isinstance(item, dict):
        return json.dumps(item, default=str)
    return str(item)


def print_table(report: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    rows: list[tuple[str, str, str, str]] = []
    for name, entry in report["scenarios"].items():
        verdict = "PASS" if entry["passed"] else "FAIL"
        rows.append((f"{name} [{verdict}, {entry['duration_s']:.1f} s]", "", "", ""))
        for key, item in flatten(entry["figures"]):
            rows.append(("", key, _format(item), _unit(key)))
        for check in entry["invariants"]:
            if not check["passed"]:
                rows.append(("", "FAILED: " + check["invariant"], check["detail"][:200], ""))
    width = [max(len(row[i]) for row in rows) if rows else 0 for i in range(4)]
    width[0] = min(width[0], 40)
    width[1] = min(width[1], 64)
    for scenario, key, text, unit in rows:
        if scenario:
            print(f"\n{scenario}", file=out)
            continue
        print(f"  {key:<{width[1]}}  {text}{' ' + unit if unit else ''}", file=out)
    verdict = "all invariants held" if report["passed"] else "SOME INVARIANTS FAILED"
    print(f"\n{verdict}; {len(report['scenarios'])} scenarios in {report['total_s']:.0f} s",
          file=out)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.reliability",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true",
                        help="every scenario smaller and faster (what the tests run)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


class _Quiet(logging.Handler):
    """Keeps the servers' warnings off the terminal while the table is made
    (they are counted per scenario in the report instead)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
                  file=sys.stderr)
            return 2
    root = logging.getLogger()
    quiet = _Quiet(logging.WARNING)
    root.addHandler(quiet)
    try:
        report = asyncio.run(run(names, args.quick))
    finally:
        root.removeHandler(quiet)
    command = ["python -m loadtest.reliability", *(argv if argv is not None else sys.argv[1:])]
    report["command"] = " ".join(command)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"report written to {args.json}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
