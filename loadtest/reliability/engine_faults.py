"""Engine faults: STT, LLM and TTS engines that raise (transient or permanent,
once or every time, midway through a reply). Each case checks the error event,
the number of attempts, the apology (spoken, in text, none) and the next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.config import Settings
from loadtest.harness import (
    AudioSender,
    ProbeLLM,
    ProbeSTT,
    ProbeTTS,
    RawCall,
    Turn,
    bench_engines,
    serving,
    silence,
)
from loadtest.reliability.common import (
    APOLOGY,
    DEFAULTS,
    ENGINE_REPLY,
    RETRIES,
    TRANSCRIPT,
    Context,
    Result,
    r2,
    settings_of,
    status_of,
    wait_ready,
)
from pipeline.errors import STTError, TTSError


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
    settings = Settings(engine_failure_sessions=1)  # one call's failures mark the engine
    async with serving(settings, bench_engines(stt=stt, llm=llm, tts=tts)) as server:
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
