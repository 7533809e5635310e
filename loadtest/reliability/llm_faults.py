"""LLM endpoint faults: the real ``OpenAICompatLLM`` against a local endpoint that
misbehaves in each way of ``loadtest.fault_llm.FAULTS`` (refused, 503, stalls,
garbage). Each failed turn must end with the right error, retries and apology,
/readyz must say so, and the next turn must be answered once the endpoint is well.
"""

from __future__ import annotations

import functools
from typing import Any

from agent.config import Settings
from loadtest.fault_llm import FAULTS, PARTIAL_HEARD, FaultyLLMServer
from loadtest.fault_llm import REPLY as FAULT_LLM_REPLY
from loadtest.harness import RawCall, bench_engines, serving
from loadtest.reliability.common import (
    APOLOGY,
    RETRIES,
    Context,
    Result,
    r2,
    status_of,
    wait_ready,
    wait_until,
)
from pipeline.engines.bench import ToneTTS
from pipeline.engines.openai_compat import OpenAICompatLLM

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
        # One call's failures mark the engine here (engine health across calls is
        # tests/faults/test_engine_health.py's).
        settings = Settings(llm_backend="openai", llm_url=llm.base_url,
                            engine_failure_sessions=1)
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
