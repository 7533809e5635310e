"""Oversized frames: over ``max_frame_bytes`` an error and the call goes on; over
``hard_max_frame_bytes`` the call is closed (1009) and the server goes on."""

from __future__ import annotations

import time

from websockets.exceptions import ConnectionClosed

from agent.config import Settings
from loadtest.harness import RawCall, bench_engines, pack, serving
from loadtest.reliability.common import (
    BENCH,
    QUESTION,
    Context,
    Result,
    dist,
    ms_since,
    new_call_turn,
    r2,
    settings_of,
    wait_until,
)


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
        after_hard = await new_call_turn(server.url)
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
