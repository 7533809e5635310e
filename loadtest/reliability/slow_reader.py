"""Slow readers: a client that stops reading while a long reply is sent.

A client that pauses gets its audio dropped and the reply cancelled, then goes on
when it reads again; a client that never reads again is closed after
``slow_client_timeout_s``, and the server's memory growth meanwhile is measured
(a child server, for its resident memory).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from loadtest.harness import StubbornClient, child_server, spec_serve, value
from loadtest.reliability.common import (
    DEFAULTS,
    Context,
    Result,
    metrics,
    r2,
    settings_of,
    wait_until,
)

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
