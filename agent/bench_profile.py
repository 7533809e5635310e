"""The ``bench`` profile: the real Silero VAD worker with scripted engines.

``voiceforge serve --profile bench`` measures the server's own overhead and
capacity apart from the models (loadtest/). It is never the default: nothing is
called done because it works here. By default the engines are practically
instant, so end of turn → first audio is the server's own time; the environment
can model a slower backend instead:

* ``VOICEFORGE_BENCH_TOKENS_PER_SECOND`` (default 1000)
* ``VOICEFORGE_BENCH_FIRST_TOKEN_MS`` (default 0)
* ``VOICEFORGE_BENCH_STT_MS`` (default 0)
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.config import Settings
from pipeline.conversation import Engines
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT, ToneTTS
from pipeline.errors import ConfigurationError
from pipeline.vad import BatchedVADWorker, SileroVAD


def _env_float(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def build_bench(settings: Settings, progress: Callable[[str], None] = print) -> Engines:
    tokens_per_second = _env_float("VOICEFORGE_BENCH_TOKENS_PER_SECOND", 1000.0, minimum=0.1)
    first_token_ms = _env_float("VOICEFORGE_BENCH_FIRST_TOKEN_MS", 0.0, minimum=0.0)
    stt_ms = _env_float("VOICEFORGE_BENCH_STT_MS", 0.0, minimum=0.0)
    vad = SileroVAD()
    progress(
        f"bench engines (not for conversations): Silero VAD {vad.model_path}, scripted STT "
        f"({stt_ms:.0f} ms), scripted LLM ({tokens_per_second:g} tokens/s, first token "
        f"{first_token_ms:.0f} ms), tone TTS"
    )
    return Engines(
        stt=ScriptedSTT(delay_ms=stt_ms),
        llm=ScriptedLLM(tokens_per_second=tokens_per_second, first_token_ms=first_token_ms),
        tts=ToneTTS(),
        vad=BatchedVADWorker(vad),
    )
