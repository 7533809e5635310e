"""Shutdown and drain: SIGTERM to ``voiceforge serve`` (a child process) while a
reply is in flight. With time to drain the reply completes; with a short drain
deadline it is cancelled and reported; either way the server stops listening at
once, closes the call 1001 and exits with nothing left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from typing import Any

from loadtest.harness import RawCall, child_server, voiceforge_serve
from loadtest.reliability.common import Context, Result, r2


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
