"""Fast deterministic engines for tests of the server's own mechanics (limits,
auth, shutdown): the real Silero VAD, scripted STT/LLM, a tone for TTS. The
real engines' end-to-end behaviour is tested elsewhere (tests/e2e, tests/web)."""

from __future__ import annotations

from pipeline.conversation import Engines
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.vad import BatchedVADWorker, SileroVAD


def bench_engines(
    *, llm: ScriptedLLM | None = None, tts: ToneTTS | None = None, stt: ScriptedSTT | None = None
) -> Engines:
    """Fresh engines (each server's lifespan starts and stops its own VAD worker)."""
    return Engines(
        stt=stt or ScriptedSTT(),
        llm=llm or ScriptedLLM(tokens_per_second=200.0, first_token_ms=10.0),
        tts=tts or ToneTTS(ms_per_char=20.0),
        vad=BatchedVADWorker(SileroVAD()),
    )
