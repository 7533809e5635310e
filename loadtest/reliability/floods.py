"""Floods and rates: a caller sending more frames or more audio than it may.

``frame_flood`` runs a child server: an eager client (over the frame rate, under
the flood threshold) must be throttled and kept; a flooder must be closed (1008)
every time it reconnects; a bystander's turns must go on meanwhile, and the
server's CPU time is measured around it. ``audio_flood`` offers audio at 10x real
time and measures what the audio rate limit takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from agent.config import Settings
from agent.limits import FrameRateLimiter
from loadtest.harness import (
    RawCall,
    Turn,
    bench_engines,
    child_server,
    pack,
    serving,
    spec_serve,
    value,
)
from loadtest.reliability.common import (
    BENCH,
    QUESTION,
    Context,
    Result,
    dist,
    metrics,
    new_call_turn,
    r2,
    session_of,
    settings_of,
)

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
            after_turn = await new_call_turn(child.url)
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
