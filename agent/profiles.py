"""Engine profiles: which STT, LLM and TTS a server runs, loaded with visible progress."""

from __future__ import annotations

import asyncio
import time
import zoneinfo
from collections.abc import Callable

from agent.bench_profile import build_bench
from agent.config import Settings
from pipeline.conversation import DEFAULT_INSTRUCTIONS, Engines
from pipeline.engines.base import ChatMessage, LLMEngine, STTEngine, TTSEngine
from pipeline.errors import ConfigurationError
from pipeline.smart_turn import BatchedSmartTurnWorker, SmartTurnModel
from pipeline.thread_worker import single_threaded_blas
from pipeline.tiers import Tier, tier_named
from pipeline.tools.builtin import builtin_tools
from pipeline.tools.registry import ToolContext, ToolRegistry, tools_in_modules
from pipeline.vad import BatchedVADWorker, SileroVAD

Progress = Callable[[str], None]


def _timed(progress: Progress, what: str) -> Callable[[str], None]:
    started = time.monotonic()
    progress(f"loading {what} ...")

    def done(detail: str) -> None:
        progress(f"loaded {what} in {time.monotonic() - started:.1f}s: {detail}")

    return done


def build_embedded(settings: Settings, progress: Progress = print) -> Engines:
    """The CPU default: Silero VAD, Smart Turn, faster-whisper (or Moonshine) and a
    llama.cpp GGUF of the chosen tier (pipeline/tiers.py), Piper joe.

    Every weight comes from an installed package or a local path; nothing is
    downloaded at run time (the GGUF and the Smart Turn model are fetched by
    ``make``/``python -m pipeline.models`` beforehand and only looked up here).
    """
    from pipeline import models
    from pipeline.engines.piper import PiperTTS

    done = _timed(progress, "VAD (Silero ONNX)")
    vad = SileroVAD()
    done(str(vad.model_path))

    done = _timed(progress, "end-of-turn model (Smart Turn v3.2)")
    smart_turn = SmartTurnModel(models.ensure_smart_turn_model(progress))
    done(str(smart_turn.model_path))

    tier = tier_named(settings.tier)
    progress(f"tier {tier.name}: {tier.summary}")
    stt = build_stt(settings, tier, progress)

    llm = build_llm(settings, progress)

    tts = remote_tts(settings, progress)
    if tts is None:
        voice = settings.piper_voice or str(models.piper_voice_paths()[0])
        done = _timed(progress, "TTS (Piper)")
        tts = PiperTTS(voice)
        done(f"{voice} at {tts.sample_rate} Hz")
    return Engines(
        stt=stt,
        llm=llm,
        tts=tts,
        vad=BatchedVADWorker(vad),
        smart_turn=BatchedSmartTurnWorker(smart_turn),
        # The cut suits the tier's model; a remote LLM is not it.
        first_chunk_max_words=tier.first_chunk_max_words if settings.llm_backend == "llama_cpp"
        else 0,
    )


def build_stt(settings: Settings, tier: Tier, progress: Progress = print) -> STTEngine:
    """The remote STT if one is set; else the tier's recogniser: Moonshine on a
    Moonshine tier (unless ``whisper_model`` names a Whisper), else faster-whisper."""
    from pipeline import models

    stt = remote_stt(settings, progress)
    if stt is not None:
        return stt
    moonshine = None if settings.whisper_model else models.ensure_tier_moonshine(tier, progress)
    if moonshine is not None:
        from pipeline.engines.moonshine import MoonshineSTT

        done = _timed(progress, "STT (Moonshine)")
        engine = MoonshineSTT(moonshine, cpu_threads=settings.threads)
        done(f"{moonshine} [cpu, onnxruntime]")
        return engine
    from pipeline.engines.whisper import WhisperSTT

    whisper = settings.whisper_model or str(models.ensure_tier_whisper(tier, progress))
    done = _timed(progress, "STT (faster-whisper)")
    whisper_stt = WhisperSTT(
        whisper,
        device=settings.whisper_device,
        compute_type=settings.whisper_compute_type,
        cpu_threads=settings.threads,
        beam_size=settings.whisper_beam_size,
    )
    done(f"{whisper} [{settings.whisper_device}, {settings.whisper_compute_type}]")
    return whisper_stt


def remote_tts(settings: Settings, progress: Progress = print) -> TTSEngine | None:
    """The remote TTS when ``tts_backend`` is ``openai`` (any profile), else None."""
    if settings.tts_backend != "openai":
        return None
    from pipeline.engines.remote_speech import RemoteSpeechTTS

    assert settings.tts_url is not None
    progress(f"TTS: streaming from {settings.tts_url} (model {settings.tts_model})")
    return RemoteSpeechTTS(settings.tts_url, settings.tts_model, voices=settings.tts_voices)


def remote_stt(settings: Settings, progress: Progress = print) -> STTEngine | None:
    """The remote STT when ``stt_backend`` is ``openai`` (any profile), else None."""
    if settings.stt_backend != "openai":
        return None
    from pipeline.engines.remote_speech import RemoteTranscriptionSTT

    assert settings.stt_url is not None
    progress(f"STT: transcribing with {settings.stt_url} (model {settings.stt_model})")
    return RemoteTranscriptionSTT(settings.stt_url, settings.stt_model)


def build_llm(settings: Settings, progress: Progress = print) -> LLMEngine:
    if settings.llm_backend == "openai":
        from pipeline.engines.openai_compat import OpenAICompatLLM

        assert settings.llm_url is not None
        progress(f"LLM: streaming from {settings.llm_url} (model {settings.llm_model})")
        return OpenAICompatLLM(
            settings.llm_url, settings.llm_model, api_key_env=settings.llm_api_key_env
        )
    from pipeline import models
    from pipeline.engines.llama_cpp import LlamaCppLLM

    if settings.gguf_path:
        path = settings.gguf_path
    else:
        path = str(models.ensure_tier_llm(tier_named(settings.tier), progress))
    done = _timed(progress, "LLM (llama.cpp)")
    llm = LlamaCppLLM(
        path,
        n_threads=settings.threads,
        max_instruction_tokens=settings.max_instructions_tokens,
        context_cache_bytes=settings.llm_context_cache_mb * 2**20,
        tool_cues=settings.tool_cues,
        call_confidence=tier_named(settings.tier).call_confidence,
    )
    # Evaluate the default system prompt once: llama.cpp reuses the cached prefix,
    # so no caller pays for it on their first turn.
    asyncio.run(_warm_up(llm))
    done(f"{path} (system prompt cached)")
    return llm


async def _warm_up(llm: LLMEngine) -> None:
    messages: list[ChatMessage] = [
        {"role": "system", "content": DEFAULT_INSTRUCTIONS},
        {"role": "user", "content": "Hello."},
    ]
    async for _ in llm.stream(messages, max_tokens=1, temperature=0.0):
        pass


def build_gpu(settings: Settings, progress: Progress = print) -> Engines:
    """Production: vLLM over HTTP, batched Whisper on CUDA, Chatterbox (agent/gpu.py)."""
    from agent.gpu import build_gpu as build

    return build(settings, progress)


BUILDERS: dict[str, Callable[[Settings, Progress], Engines]] = {
    "embedded": build_embedded,
    "bench": build_bench,
    "gpu": build_gpu,
}
"""Profile name → the function that loads its engines."""


def build_engines(settings: Settings, progress: Progress = print) -> Engines:
    settings.validate()
    single_threaded_blas()  # before any model: their own pools do the heavy work
    tools = build_tools(settings)
    engines = BUILDERS[settings.profile](settings, progress)
    engines.tools = tools
    if len(tools):
        progress(f"tools: {', '.join(tools.names())} (time zone {tools.timezone})")
    _read_ahead(engines, progress)
    return engines


def _read_ahead(engines: Engines, progress: Progress) -> None:
    """The in-process model reads a new call's instructions and tools before the first
    caller (``LlamaCppLLM.read_ahead``), as it does for every later call from the base."""
    from pipeline.engines.llama_cpp import LlamaCppLLM

    llm = engines.llm
    if not isinstance(llm, LlamaCppLLM):
        return
    context = ToolContext("read-ahead", engines.tools.timezone)
    offered = [each.spec.openai() for each in engines.tools.offered(context)]
    if not offered or not llm.tool_cues:
        return  # the load's warm-up read the plain prompt, all a call reads first
    done = _timed(progress, "LLM read-ahead (instructions and tools)")
    kept = llm.read_ahead(DEFAULT_INSTRUCTIONS, offered)
    done("kept for new calls" if kept else "not kept: the first call reads them")


def build_tools(settings: Settings) -> ToolRegistry:
    """The server's tools: the built-ins asked for, then the operator's modules."""
    try:
        zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"VOICEFORGE_TIMEZONE={settings.timezone!r} is not an IANA time zone"
        ) from None
    tools = [*builtin_tools(settings.builtin_tools), *tools_in_modules(settings.tool_modules)]
    return ToolRegistry(tools, timezone=settings.timezone)
