"""Disconnects: a caller whose TCP connection drops (no close frame) while its turn
is at each stage (speech, STT, LLM, TTS, playback). The session and its tasks
must be gone within 5 s, the engine work cancelled, and a new call answered.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from agent.config import Settings
from loadtest.harness import (
    AudioSender,
    ProbeLLM,
    ProbeSTT,
    ProbeTTS,
    RawCall,
    bench_engines,
    serving,
    silence,
    value,
)
from loadtest.reliability.common import (
    ENGINE_REPLY,
    TRANSCRIPT,
    Context,
    Result,
    metrics,
    new_call_turn,
    r2,
    session_of,
    wait_until,
)


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
            answer = await new_call_turn(server.url, "Still there?")
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
