"""The ``gpu`` profile: vLLM over HTTP, batched Whisper on CUDA, Chatterbox (or Piper).

Everything the profile needs is checked before any model loads, and every problem
found is reported in one ``ConfigurationError`` that the CLI prints without a
traceback: no CUDA device, the vLLM endpoint unreachable or refusing the key,
the configured model not served there, the TTS engine not installed.

Settings (environment; docs/deploy-gpu.md has the full table):

- ``VOICEFORGE_LLM_URL`` (default ``http://127.0.0.1:8001/v1``) and
  ``VOICEFORGE_LLM_MODEL``: the ``--served-model-name`` of ``vllm serve``;
  ``llama-3.3-70b`` by default, ``llama-3.1-8b`` for the single-GPU fallback.
- ``VOICEFORGE_LLM_SESSION_HEADER`` (``x-session-id``; ``none`` turns it off).
- ``VOICEFORGE_WHISPER_MODEL`` (``large-v3-turbo``), ``VOICEFORGE_WHISPER_DEVICE``
  (``cuda``), ``VOICEFORGE_WHISPER_COMPUTE_TYPE`` (``float16``),
  ``VOICEFORGE_STT_BATCH_WINDOW_MS`` (10), ``VOICEFORGE_STT_MAX_BATCH`` (8).
- ``VOICEFORGE_TTS`` (``chatterbox``, ``chatterbox-turbo`` or ``piper``),
  ``VOICEFORGE_TTS_DEVICE`` (``cuda``).
- ``VOICEFORGE_VOCODER`` (``hift`` or ``vocos``), ``VOICEFORGE_VOCOS_WEIGHTS`` (folder or hub id).
- Chatterbox's fast paths, all off or at the library's values by default:
  ``VOICEFORGE_TTS_BF16``, ``VOICEFORGE_TTS_COMPILE``, ``VOICEFORGE_TTS_TF32``,
  ``VOICEFORGE_TTS_CUDA_GRAPHS`` (``0``/``1``),
  ``VOICEFORGE_TTS_CFM_STEPS`` (10; Turbo 2), ``VOICEFORGE_TTS_FIRST_CHUNK_TOKENS`` (10),
  ``VOICEFORGE_TTS_CHUNK_TOKENS`` (25), ``VOICEFORGE_TTS_MAX_TOKENS`` (1000),
  ``VOICEFORGE_TTS_TOKENS_PER_CHAR`` (4).

Before the builder returns (and ``/readyz`` turns ready), every local GPU engine is
warmed up: Whisper decodes a batch of 1 and one of ``VOICEFORGE_STT_MAX_BATCH``,
Chatterbox speaks with every voice through its first and later chunks.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from agent.config import Settings
from agent.profiles import Progress, _timed, _warm_up, remote_stt, remote_tts
from pipeline.conversation import Engines
from pipeline.engines.base import STTEngine, TTSEngine
from pipeline.errors import ConfigurationError

DEFAULT_LLM_URL = "http://127.0.0.1:8001/v1"
LLM_MODELS = {
    "llama-3.3-70b": "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic",
    "llama-3.1-8b": "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic",
}
"""Served model name (``vllm serve --served-model-name``) → the pre-quantised FP8
Hugging Face checkpoint compose.yaml serves under it."""
DEFAULT_LLM_MODEL = "llama-3.3-70b"
TTS_ENGINES = ("chatterbox", "chatterbox-turbo", "piper")
CHATTERBOX_ENGINES = ("chatterbox", "chatterbox-turbo")
TTS_MODULES = {
    "chatterbox": ("chatterbox", "pipeline.engines.chatterbox"),
    "chatterbox-turbo": ("chatterbox.tts_turbo", "pipeline.engines.chatterbox"),
    "piper": ("piper",),
}
"""Modules each TTS engine needs (the library, then our engine)."""


@dataclass(slots=True)
class GPUSettings:
    llm_url: str = DEFAULT_LLM_URL
    llm_model: str = DEFAULT_LLM_MODEL
    llm_api_key: str = "EMPTY"
    session_header: str | None = "x-session-id"
    probe_timeout_s: float = 3.0
    whisper_model: str = "large-v3-turbo"
    whisper_device: str = "cuda"
    whisper_compute_type: str = "float16"
    stt_batch_window_ms: float = 10.0
    stt_max_batch: int = 8
    tts: str = "chatterbox"
    tts_device: str = "cuda"
    threads: int = 2
    remote_stt: bool = False
    """Speech is transcribed by a remote ``/v1/audio/transcriptions`` (``stt_backend``):
    no local Whisper to check."""
    remote_tts: bool = False
    """Speech is made by a remote ``/v1/audio/speech`` (``tts_backend``): no local TTS."""
    tts_bf16: bool = False
    tts_compile: bool = False
    tts_tf32: bool = False
    tts_cuda_graphs: bool = False
    tts_cfm_steps: int | None = None
    """None: the engine's own (10, Turbo 2)."""
    tts_first_chunk_tokens: int = 10
    tts_chunk_tokens: int = 25
    tts_chunk_schedule: str = "fixed"
    tts_reference_seconds: float | None = None
    """None: S3Gen's voice prompt is the whole reference (up to the library's 10 s)."""
    tts_max_tokens: int = 1000
    tts_tokens_per_char: float = 4.0
    tts_max_streams: int = 16
    """Utterances whose T3 decodes in one batched step (the engine's ``max_streams``)."""
    tts_processes: int = 1
    """Processes of their own the TTS runs in (each a whole engine; more than one
    shares the GPU under MPS); 0: in the server's process."""
    stt_process: bool = True
    """Whisper in a process of its own (False: in the server's process)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GPUSettings:
        """The gpu profile's view of ``settings`` plus its own environment variables."""
        gpu = cls(threads=settings.threads)
        gpu.remote_stt = settings.stt_backend == "openai"
        gpu.remote_tts = settings.tts_backend == "openai"
        gpu.llm_url = settings.llm_url or DEFAULT_LLM_URL
        # "default" is the embedded profile's placeholder: the gpu profile means the 70B.
        if settings.llm_model not in ("", "default"):
            gpu.llm_model = settings.llm_model
        gpu.llm_api_key = os.environ.get(settings.llm_api_key_env) or "EMPTY"
        header = _env("VOICEFORGE_LLM_SESSION_HEADER", "x-session-id")
        gpu.session_header = None if header.lower() == "none" else header
        gpu.probe_timeout_s = _env_float("VOICEFORGE_LLM_PROBE_TIMEOUT_S", gpu.probe_timeout_s)
        gpu.whisper_model = settings.whisper_model or gpu.whisper_model
        gpu.whisper_device = _env("VOICEFORGE_WHISPER_DEVICE", gpu.whisper_device)
        gpu.whisper_compute_type = _env("VOICEFORGE_WHISPER_COMPUTE_TYPE", gpu.whisper_compute_type)
        gpu.stt_batch_window_ms = _env_float("VOICEFORGE_STT_BATCH_WINDOW_MS", 10.0)
        gpu.stt_max_batch = int(_env_float("VOICEFORGE_STT_MAX_BATCH", 8))
        gpu.tts = _env("VOICEFORGE_TTS", gpu.tts)
        gpu.tts_device = _env("VOICEFORGE_TTS_DEVICE", gpu.tts_device)
        gpu.tts_bf16 = _env_bool("VOICEFORGE_TTS_BF16", gpu.tts_bf16)
        gpu.tts_compile = _env_bool("VOICEFORGE_TTS_COMPILE", gpu.tts_compile)
        gpu.tts_tf32 = _env_bool("VOICEFORGE_TTS_TF32", gpu.tts_tf32)
        gpu.tts_cuda_graphs = _env_bool("VOICEFORGE_TTS_CUDA_GRAPHS", gpu.tts_cuda_graphs)
        if os.environ.get("VOICEFORGE_TTS_CFM_STEPS"):
            gpu.tts_cfm_steps = _env_int("VOICEFORGE_TTS_CFM_STEPS", 0)
        gpu.tts_first_chunk_tokens = _env_int(
            "VOICEFORGE_TTS_FIRST_CHUNK_TOKENS", gpu.tts_first_chunk_tokens
        )
        gpu.tts_chunk_tokens = _env_int("VOICEFORGE_TTS_CHUNK_TOKENS", gpu.tts_chunk_tokens)
        gpu.tts_chunk_schedule = _env("VOICEFORGE_TTS_CHUNK_SCHEDULE", gpu.tts_chunk_schedule)
        if os.environ.get("VOICEFORGE_TTS_REFERENCE_SECONDS"):
            gpu.tts_reference_seconds = _env_float("VOICEFORGE_TTS_REFERENCE_SECONDS", 0.0)
        gpu.tts_max_tokens = _env_int("VOICEFORGE_TTS_MAX_TOKENS", gpu.tts_max_tokens)
        gpu.tts_max_streams = _env_int("VOICEFORGE_TTS_MAX_STREAMS", gpu.tts_max_streams)
        gpu.tts_tokens_per_char = _env_float(
            "VOICEFORGE_TTS_TOKENS_PER_CHAR", gpu.tts_tokens_per_char
        )
        gpu.tts_processes = _env_int("VOICEFORGE_TTS_PROCESSES", gpu.tts_processes)
        gpu.stt_process = _env_bool("VOICEFORGE_STT_PROCESS", gpu.stt_process)
        return gpu


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    value = (os.environ.get(name) or "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (true/false), got {value!r}")


MAX_TTS_TOKENS = 4000
"""T3's speech position table holds 4096 positions (``max_speech_tokens``)."""
MAX_CFM_STEPS = 50
MAX_TTS_STREAMS = 128
"""A batch's KV cache grows with its rows; past this, start another process."""
MAX_TTS_PROCESSES = 16


# --- start-up checks: each returns a problem (a sentence) or None -------------------


def check_cuda(gpu: GPUSettings) -> list[str]:
    """CUDA is needed where an engine is configured for it, and must be visible there."""
    problems = []
    if gpu.whisper_device == "cuda" and not gpu.remote_stt:
        import ctranslate2

        if ctranslate2.get_cuda_device_count() < 1:
            problems.append(
                "no CUDA device is visible to CTranslate2 (Whisper on cuda): run on a machine "
                "with an NVIDIA GPU and driver (in Docker: --gpus all / a compose GPU "
                "reservation), or set VOICEFORGE_WHISPER_DEVICE=cpu"
            )
    if gpu.tts in CHATTERBOX_ENGINES and gpu.tts_device == "cuda" and not gpu.remote_tts:
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"torch {torch.__version__} sees no CUDA device ({gpu.tts} on cuda): install "
                "the CUDA build of torch (the Docker image has it) on a GPU machine, or set "
                "VOICEFORGE_TTS_DEVICE=cpu"
            )
    return problems


def check_llm_endpoint(gpu: GPUSettings) -> list[str]:
    """GET /models on the endpoint: reachable, key accepted, our model among those served."""
    url = f"{gpu.llm_url.rstrip('/')}/models"
    try:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {gpu.llm_api_key}"},
            timeout=gpu.probe_timeout_s,
        )
    except httpx.HTTPError as error:
        return [
            f"cannot reach the LLM server at {url} ({type(error).__name__}: {error}): start "
            "`vllm serve` (docs/deploy-gpu.md) or point VOICEFORGE_LLM_URL at it"
        ]
    if response.status_code in (401, 403):
        return [
            f"the LLM server at {url} refused the API key (HTTP {response.status_code}): set "
            "VOICEFORGE_LLM_API_KEY to the key `vllm serve --api-key` was given"
        ]
    if response.status_code != 200:
        return [f"the LLM server at {url} answered HTTP {response.status_code}, not a model list"]
    try:
        served = [str(entry["id"]) for entry in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return [f"the LLM server at {url} did not answer with an OpenAI model list"]
    if gpu.llm_model not in served:
        return [
            f"the LLM server at {url} serves {served}, not {gpu.llm_model!r}: start vllm with "
            f"--served-model-name {gpu.llm_model} or set VOICEFORGE_LLM_MODEL to one of those"
        ]
    return []


def check_tts(gpu: GPUSettings) -> list[str]:
    if gpu.remote_tts:
        return []
    if gpu.tts not in TTS_ENGINES:
        return [f"unknown TTS engine {gpu.tts!r} (VOICEFORGE_TTS): choose one of {TTS_ENGINES}"]
    problems = []
    missing = [name for name in TTS_MODULES[gpu.tts] if not _module_exists(name)]
    if missing:
        problems.append(
            f"the {gpu.tts} TTS engine is not installed (missing {', '.join(missing)}): "
            "install the gpu extra (pip install '.[gpu]', as the Docker image does) or set "
            "VOICEFORGE_TTS=piper"
        )
    if not 0 <= gpu.tts_processes <= MAX_TTS_PROCESSES:
        problems.append(
            f"VOICEFORGE_TTS_PROCESSES={gpu.tts_processes}: between 0 (in the server's"
            f" process) and {MAX_TTS_PROCESSES}"
        )
    return problems


def check_tts_settings(gpu: GPUSettings) -> list[str]:
    """Chatterbox's fast-path settings: in range, and CUDA-only ones on CUDA."""
    if gpu.remote_tts or gpu.tts not in CHATTERBOX_ENGINES:
        return []
    problems = []
    if gpu.tts_device != "cuda":
        named = [
            name
            for name, on in (
                ("VOICEFORGE_TTS_BF16", gpu.tts_bf16),
                ("VOICEFORGE_TTS_TF32", gpu.tts_tf32),
                ("VOICEFORGE_TTS_CUDA_GRAPHS", gpu.tts_cuda_graphs),
            )
            if on
        ]
        if named:
            problems.append(
                f"{', '.join(named)} need Chatterbox on cuda, not {gpu.tts_device!r}:"
                " turn them off or set VOICEFORGE_TTS_DEVICE=cuda"
            )
    if gpu.tts_first_chunk_tokens < 5:
        problems.append(
            f"VOICEFORGE_TTS_FIRST_CHUNK_TOKENS={gpu.tts_first_chunk_tokens}: at least 5"
            " (the vocoder's 8-frame cross-fade needs 4 tokens behind it)"
        )
    if gpu.tts_chunk_tokens < 1:
        problems.append(f"VOICEFORGE_TTS_CHUNK_TOKENS={gpu.tts_chunk_tokens}: at least 1")
    # The engine's SCHEDULES (chatterbox/schedule.py), spelled out: importing that
    # package loads torch, and these checks run before any model does.
    if gpu.tts_chunk_schedule not in ("fixed", "adaptive"):
        problems.append(
            f"VOICEFORGE_TTS_CHUNK_SCHEDULE={gpu.tts_chunk_schedule!r}: fixed or adaptive"
        )
    if gpu.tts_reference_seconds is not None and not gpu.tts_reference_seconds > 0:
        problems.append(
            f"VOICEFORGE_TTS_REFERENCE_SECONDS={gpu.tts_reference_seconds}: more than 0"
            " (unset: the whole reference)"
        )
    if gpu.tts_cfm_steps is not None and not 1 <= gpu.tts_cfm_steps <= MAX_CFM_STEPS:
        problems.append(
            f"VOICEFORGE_TTS_CFM_STEPS={gpu.tts_cfm_steps}: between 1 and {MAX_CFM_STEPS}"
        )
    if not gpu.tts_first_chunk_tokens < gpu.tts_max_tokens <= MAX_TTS_TOKENS:
        problems.append(
            f"VOICEFORGE_TTS_MAX_TOKENS={gpu.tts_max_tokens}: more than the first chunk's"
            f" tokens and at most {MAX_TTS_TOKENS} (T3's position table)"
        )
    if not 1 <= gpu.tts_max_streams <= MAX_TTS_STREAMS:
        problems.append(
            f"VOICEFORGE_TTS_MAX_STREAMS={gpu.tts_max_streams}: between 1 and {MAX_TTS_STREAMS}"
        )
    if not gpu.tts_tokens_per_char > 0:
        problems.append(
            f"VOICEFORGE_TTS_TOKENS_PER_CHAR={gpu.tts_tokens_per_char}: more than 0"
        )
    return problems


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (nor its parents: the
    chatterbox package imports torch and Perth on import)."""
    parent, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent or leaf)
    except ModuleNotFoundError:  # a parent package is missing
        return False
    if spec is None or not parent:
        return spec is not None
    if "." in parent:
        return _module_exists(parent) and importlib.util.find_spec(name) is not None
    locations = spec.submodule_search_locations or []
    return any(
        (Path(folder) / f"{leaf}.py").is_file() or (Path(folder) / leaf).is_dir()
        for folder in locations
    )


def validate(gpu: GPUSettings) -> None:
    """Every check, all problems reported at once. Raises ConfigurationError."""
    problems = [
        *check_cuda(gpu),
        *check_llm_endpoint(gpu),
        *check_tts(gpu),
        *check_tts_settings(gpu),
    ]
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigurationError(f"the gpu profile cannot start:\n{listed}")


# --- the builder -----------------------------------------------------------------------


def build_gpu(settings: Settings, progress: Progress = print) -> Engines:
    """Validate, then load: Silero VAD, batched Whisper, the vLLM client, the TTS."""
    from pipeline.engines.openai_compat import OpenAICompatLLM
    from pipeline.engines.session_routing import SessionRoutedLLM
    from pipeline.vad import BatchedVADWorker, SileroVAD

    gpu = GPUSettings.from_settings(settings)
    progress(
        f"gpu profile: LLM {gpu.llm_model} at {gpu.llm_url}, Whisper {gpu.whisper_model} "
        f"[{gpu.whisper_device}, {gpu.whisper_compute_type}], TTS {gpu.tts} [{gpu.tts_device}]"
    )
    validate(gpu)

    done = _timed(progress, "VAD (Silero ONNX)")
    vad = SileroVAD()
    done(str(vad.model_path))

    stt = remote_stt(settings, progress) or _local_stt(gpu, progress)

    done = _timed(progress, f"LLM client ({gpu.llm_model})")
    remote = OpenAICompatLLM(gpu.llm_url, gpu.llm_model, api_key=gpu.llm_api_key)
    llm = SessionRoutedLLM(remote, gpu.session_header) if gpu.session_header else remote
    # One tiny request: proves chat completions work and puts the default system
    # prompt in vLLM's prefix cache before the first caller.
    asyncio.run(_warm_up_once(gpu))
    routing = f"routing header {gpu.session_header}" if gpu.session_header else "no routing"
    done(f"{gpu.llm_url} ({routing}; system prompt cached)")

    tts = remote_tts(settings, progress) or _local_tts(gpu, settings.piper_voice, progress)
    return Engines(stt=stt, llm=llm, tts=tts, vad=BatchedVADWorker(vad))


def _local_stt(gpu: GPUSettings, progress: Progress) -> STTEngine:
    """Batched Whisper, warmed up (a batch of 1 and of the maximum), in a process of
    its own unless ``VOICEFORGE_STT_PROCESS=0``."""
    from pipeline.engines.hosted import hosted_stt
    from pipeline.engines.process_host import EngineSpec
    from pipeline.engines.whisper_batch import BatchedWhisperSTT

    options: dict[str, Any] = {
        "model": gpu.whisper_model,
        "device": gpu.whisper_device,
        "compute_type": gpu.whisper_compute_type,
        "cpu_threads": gpu.threads,
        "batch_window_ms": gpu.stt_batch_window_ms,
        "max_batch_size": gpu.stt_max_batch,
    }
    where = "in its own process" if gpu.stt_process else "in the server's process"
    done = _timed(progress, f"STT (faster-whisper, batched across calls, {where})")
    if gpu.stt_process:
        stt: Any = hosted_stt(
            EngineSpec("pipeline.engines.whisper_batch:BatchedWhisperSTT", options, "stt"),
            progress=progress,
        )
        sizes = stt.warmed
    else:
        stt = BatchedWhisperSTT(**options)
        sizes = stt.warm_up()
    done(f"{gpu.whisper_model}, batches of up to {gpu.stt_max_batch}; warmed up: "
         f"batches of {' and '.join(map(str, sizes))} decoded")
    return cast(STTEngine, stt)


def _local_tts(gpu: GPUSettings, piper_voice: str | None, progress: Progress) -> TTSEngine:
    """The TTS, warmed up (every voice through its first and later chunks), in
    ``VOICEFORGE_TTS_PROCESSES`` processes of its own (0: in the server's)."""
    from pipeline.engines.hosted import hosted_tts
    from pipeline.engines.process_host import EngineSpec

    processes = gpu.tts_processes
    where = (f"in {processes} process{'es' if processes > 1 else ''} of its own"
             if processes else "in the server's process")
    done = _timed(progress, f"TTS ({gpu.tts}, {where})")
    if processes:
        spec = EngineSpec("agent.gpu:build_tts", {"gpu": gpu, "piper_voice": piper_voice}, "tts")
        hosted = hosted_tts(spec, processes=processes, progress=progress)
        tts: TTSEngine = hosted
        warmed = hosted.warmed
    else:
        tts = build_tts(gpu, piper_voice)
        warm_up = getattr(tts, "warm_up", None)
        warmed = asyncio.run(warm_up()) if warm_up is not None else None
    done(f"{tts.name} at {tts.sample_rate} Hz")
    if warmed:
        progress("TTS warmed up (every voice, first and later chunks): " + ", ".join(
            f"{voice}: {chunks} chunks" for voice, chunks in warmed.items()))
    return tts


async def _warm_up_once(gpu: GPUSettings) -> None:
    """A throwaway client: its connection pool belongs to this short-lived event loop."""
    from pipeline.engines.openai_compat import OpenAICompatLLM

    client = OpenAICompatLLM(gpu.llm_url, gpu.llm_model, api_key=gpu.llm_api_key)
    try:
        await _warm_up(client)
    finally:
        await client.aclose()


def build_tts(gpu: GPUSettings, piper_voice: str | None = None) -> TTSEngine:
    """The profile's local TTS engine (in whichever process calls this: the server's,
    or a child of `_local_tts`)."""
    if gpu.tts == "piper":
        from pipeline import models
        from pipeline.engines.piper import PiperTTS

        return PiperTTS(piper_voice or str(models.piper_voice_paths()[0]))
    module = importlib.import_module("pipeline.engines.chatterbox")
    engine: TTSEngine = module.ChatterboxTTS(
        os.environ.get("VOICEFORGE_CHATTERBOX_DIR") or None,  # None: from_pretrained
        device=gpu.tts_device,
        voices_dir=os.environ.get("VOICEFORGE_VOICES_DIR") or None,
        # HiFT unless a trained Vocos is named (docs/vocos.md).
        vocoder=os.environ.get("VOICEFORGE_VOCODER") or "hift",
        vocos_weights=os.environ.get("VOICEFORGE_VOCOS_WEIGHTS") or None,
        turbo=gpu.tts == "chatterbox-turbo",
        bf16=gpu.tts_bf16,
        compile=gpu.tts_compile,
        tf32=gpu.tts_tf32,
        cuda_graphs=gpu.tts_cuda_graphs,
        cfm_steps=gpu.tts_cfm_steps,
        first_chunk_tokens=gpu.tts_first_chunk_tokens,
        chunk_tokens=gpu.tts_chunk_tokens,
        chunk_schedule=gpu.tts_chunk_schedule,
        reference_seconds=gpu.tts_reference_seconds,
        max_new_tokens=gpu.tts_max_tokens,
        tokens_per_char=gpu.tts_tokens_per_char,
        max_streams=gpu.tts_max_streams,
    )
    return engine
