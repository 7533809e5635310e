"""Start-up validation of the gpu profile, and the profile built on CPU where it can be.

Each problem is a ConfigurationError naming what is wrong and what to set; the
CLI prints it without a traceback and exits 2.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

import agent.gpu as agent_gpu
from agent.config import Settings
from agent.gpu import (
    GPUSettings,
    build_gpu,
    check_cuda,
    check_llm_endpoint,
    check_tts,
    check_tts_settings,
)
from pipeline import models
from pipeline.engines.base import ChatMessage
from pipeline.errors import ConfigurationError
from tests.gpu.openai_server import OpenAICompatServer

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_no_cuda_is_a_clear_problem_on_this_machine() -> None:
    problems = check_cuda(GPUSettings(whisper_device="cuda", tts="chatterbox", tts_device="cuda"))
    assert any("no CUDA device is visible to CTranslate2" in p for p in problems)
    assert any("VOICEFORGE_WHISPER_DEVICE=cpu" in p for p in problems)
    assert check_cuda(GPUSettings(whisper_device="cpu", tts="piper")) == []


def test_an_unreachable_llm_endpoint_is_a_clear_problem() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    [problem] = check_llm_endpoint(GPUSettings(llm_url=url, probe_timeout_s=2.0))
    assert problem.startswith(f"cannot reach the LLM server at {url}/models")
    assert "VOICEFORGE_LLM_URL" in problem


async def test_a_model_not_served_is_a_clear_problem() -> None:
    async with OpenAICompatServer(["llama-3.1-8b", "other"]) as server:
        gpu = GPUSettings(llm_url=server.url, llm_model="llama-3.3-70b")
        [problem] = await asyncio.to_thread(check_llm_endpoint, gpu)
        gpu.llm_model = "llama-3.1-8b"
        assert await asyncio.to_thread(check_llm_endpoint, gpu) == []
    assert "serves ['llama-3.1-8b', 'other'], not 'llama-3.3-70b'" in problem
    assert "--served-model-name llama-3.3-70b" in problem
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_a_missing_or_unknown_tts_engine_is_a_clear_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert check_tts(GPUSettings(tts="piper")) == []
    [unknown] = check_tts(GPUSettings(tts="espeak"))
    assert "unknown TTS engine 'espeak'" in unknown
    # The check looks modules up by name; one that cannot exist stands for an
    # uninstalled chatterbox-tts whatever this environment holds.
    monkeypatch.setitem(
        __import__("agent.gpu").gpu.TTS_MODULES, "chatterbox", ("no_such_chatterbox_module",)
    )
    [missing] = check_tts(GPUSettings(tts="chatterbox"))
    assert "the chatterbox TTS engine is not installed (missing no_such_chatterbox_module)" in (
        missing
    )
    assert "VOICEFORGE_TTS=piper" in missing
    # Chatterbox-Turbo is an engine of its own name, checked the same way.
    assert check_tts(GPUSettings(tts="chatterbox-turbo")) == []
    turbo_on_cuda = check_cuda(GPUSettings(whisper_device="cpu", tts="chatterbox-turbo"))
    assert turbo_on_cuda and "(chatterbox-turbo on cuda)" in turbo_on_cuda[0]
    assert check_tts_settings(GPUSettings(tts="chatterbox-turbo", tts_first_chunk_tokens=2))
    # Speech from a remote /v1/audio/speech needs no local TTS, installed or on CUDA.
    remote = GPUSettings(tts="chatterbox", remote_tts=True)
    assert check_tts(remote) == []
    remote.whisper_device = "cpu"
    assert check_cuda(remote) == []


def test_remote_speech_settings_reach_the_gpu_profiles_checks() -> None:
    gpu = GPUSettings.from_settings(
        Settings(tts_backend="openai", tts_url="http://127.0.0.1:9/v1", stt_backend="openai",
                 stt_url="http://127.0.0.1:9/v1")
    )
    assert (gpu.remote_tts, gpu.remote_stt) == (True, True)
    assert check_cuda(gpu) == []  # neither Whisper nor Chatterbox runs here


async def test_the_cli_prints_every_problem_without_a_traceback() -> None:
    async with OpenAICompatServer(["someone-else"]) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VOICEFORGE_")},
            "VOICEFORGE_LLM_URL": server.url,
            "VOICEFORGE_TTS": "espeak",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "serve", "--profile", "gpu", "--port", "0",
            cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    errors = stderr.decode()
    assert process.returncode == 2, (stdout.decode(), errors)
    assert "Traceback" not in errors
    assert "voiceforge: the gpu profile cannot start:" in errors
    assert "no CUDA device is visible to CTranslate2" in errors
    assert "not 'llama-3.3-70b'" in errors
    assert "unknown TTS engine 'espeak'" in errors


async def test_the_profile_builds_on_cpu_and_routes_each_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every engine of the profile for real, except the GPU: Whisper on CPU, Piper,
    both in the server's process here (the next test has them in their own)."""
    async with OpenAICompatServer(["llama-3.1-8b"], max_tokens=2) as server:
        for name, value in {
            "VOICEFORGE_WHISPER_DEVICE": "cpu",
            "VOICEFORGE_WHISPER_COMPUTE_TYPE": "int8",
            "VOICEFORGE_TTS": "piper",
            "VOICEFORGE_LLM_SESSION_HEADER": "x-call",
            "VOICEFORGE_TTS_PROCESSES": "0",
            "VOICEFORGE_STT_PROCESS": "0",
        }.items():
            monkeypatch.setenv(name, value)
        settings = Settings(
            profile="gpu",
            llm_url=server.url,
            llm_model="llama-3.1-8b",
            whisper_model=str(models.whisper_model_dir()),
        )
        lines: list[str] = []
        warmed: list[str] = []

        def build_warmed_tts(gpu: GPUSettings, piper_voice: str | None = None) -> object:
            tts = build_tts(gpu, piper_voice)

            async def warm_up() -> dict[str, int]:
                warmed.append(tts.name)
                return {"default": 3}

            tts.warm_up = warm_up  # type: ignore[attr-defined]
            return tts

        build_tts = agent_gpu.build_tts
        monkeypatch.setattr(agent_gpu, "build_tts", build_warmed_tts)
        engines = await asyncio.to_thread(build_gpu, settings, lines.append)
        try:
            assert engines.stt.name.startswith("faster-whisper-batched:")
            question: list[ChatMessage] = [{"role": "user", "content": "Hi"}]
            call = engines.for_session("sess_42")
            text = "".join(
                [d async for d in call.llm.stream(question, max_tokens=4, temperature=0)]
            )
        finally:
            engines.stt.close()  # type: ignore[attr-defined]
            await engines.llm.aclose()  # type: ignore[attr-defined]
    assert text == "word0 word1 "
    warm_up, routed = server.requests[-2:]
    assert "x-call" not in warm_up.headers and warm_up.body["max_tokens"] == 1
    assert routed.headers["x-call"] == "sess_42"
    assert any("routing header x-call" in line for line in lines)
    # Warmed up before the builder returns, i.e. before /readyz: one STT batch of 1
    # and one of the maximum, and the TTS's own warm-up.
    assert any("in the server's process" in line for line in lines), lines
    assert any("batches of 1 and 8 decoded" in line for line in lines), lines
    assert warmed and any("default: 3 chunks" in line for line in lines), lines


async def test_by_default_speech_and_stt_run_in_processes_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default: Whisper in one child, the TTS in ``VOICEFORGE_TTS_PROCESSES``
    (two here), each warm before the builder returns; the server's process holds
    stand-ins that speak and transcribe through them."""
    from pipeline.engines.hosted import HostedSTT, HostedTTS
    from tests.speech import espeak_available, speak

    async with OpenAICompatServer(["llama-3.1-8b"], max_tokens=2) as server:
        for name, value in {
            "VOICEFORGE_WHISPER_DEVICE": "cpu",
            "VOICEFORGE_WHISPER_COMPUTE_TYPE": "int8",
            "VOICEFORGE_TTS": "piper",
            "VOICEFORGE_TTS_PROCESSES": "2",
            "VOICEFORGE_STT_MAX_BATCH": "2",
        }.items():
            monkeypatch.setenv(name, value)
        settings = Settings(
            profile="gpu", llm_url=server.url, llm_model="llama-3.1-8b",
            whisper_model=str(models.whisper_model_dir()),
        )  # fmt: skip
        lines: list[str] = []
        engines = await asyncio.to_thread(build_gpu, settings, lines.append)
        try:
            assert isinstance(engines.stt, HostedSTT) and isinstance(engines.tts, HostedTTS)
            assert len(engines.tts.hosts) == 2
            pids = {host.pid for host in engines.tts.hosts} | {engines.stt.host.pid}
            assert len(pids) == 3 and os.getpid() not in pids
            assert engines.tts.name.startswith("piper") and engines.tts.sample_rate > 0
            audio = [chunk async for chunk in engines.tts.synthesize("Hello there.")]
            assert sum(len(chunk) for chunk in audio) > engines.tts.sample_rate // 4
            if espeak_available():
                heard = await engines.stt.transcribe(speak("Turn on the lights in the kitchen."))
                assert "kitchen" in heard.text.lower()
        finally:
            await asyncio.to_thread(engines.stt.close)  # type: ignore[attr-defined]
            await asyncio.to_thread(engines.tts.close)  # type: ignore[attr-defined]
            await engines.llm.aclose()  # type: ignore[attr-defined]
    assert any("STT (faster-whisper, batched across calls, in its own process)" in line
               for line in lines), lines
    assert any("batches of 1 and 2 decoded" in line for line in lines), lines
    assert any("TTS (piper, in 2 processes of its own)" in line for line in lines), lines


def test_chatterbox_fast_paths_are_settings_with_safe_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = GPUSettings.from_settings(Settings(profile="gpu"))
    assert (defaults.tts_bf16, defaults.tts_compile, defaults.tts_tf32) == (False, False, False)
    # No CFM steps named: the engine's own (10; Turbo's mean-flow decoder 2).
    assert (defaults.tts_cfm_steps, defaults.tts_max_tokens) == (None, 1000)
    assert defaults.tts_chunk_schedule == "fixed" and defaults.tts_max_streams == 16
    assert defaults.tts_reference_seconds is None, "the whole reference, as the library"
    assert (defaults.tts_processes, defaults.stt_process) == (1, True)
    assert check_tts_settings(defaults) == [] and check_tts(defaults) == []
    for name, value in {
        "VOICEFORGE_TTS_BF16": "1",
        "VOICEFORGE_TTS_COMPILE": "true",
        "VOICEFORGE_TTS_TF32": "on",
        "VOICEFORGE_TTS_CUDA_GRAPHS": "yes",
        "VOICEFORGE_TTS_CFM_STEPS": "6",
        "VOICEFORGE_TTS_FIRST_CHUNK_TOKENS": "8",
        "VOICEFORGE_TTS_CHUNK_TOKENS": "20",
        "VOICEFORGE_TTS_CHUNK_SCHEDULE": "adaptive",
        "VOICEFORGE_TTS_REFERENCE_SECONDS": "3",
        "VOICEFORGE_TTS_MAX_TOKENS": "600",
        "VOICEFORGE_TTS_TOKENS_PER_CHAR": "3.5",
        "VOICEFORGE_TTS_MAX_STREAMS": "32",
    }.items():
        monkeypatch.setenv(name, value)
    fast = GPUSettings.from_settings(Settings(profile="gpu"))
    assert (fast.tts_bf16, fast.tts_compile, fast.tts_tf32) == (True, True, True)
    assert fast.tts_cuda_graphs and not defaults.tts_cuda_graphs
    assert (fast.tts_cfm_steps, fast.tts_first_chunk_tokens, fast.tts_chunk_tokens) == (6, 8, 20)
    assert (fast.tts_max_tokens, fast.tts_tokens_per_char) == (600, 3.5)
    assert fast.tts_chunk_schedule == "adaptive" and fast.tts_max_streams == 32
    assert fast.tts_reference_seconds == 3.0
    assert check_tts_settings(fast) == []
    fast.tts_device = "cpu"
    [cpu] = check_tts_settings(fast)
    assert ("VOICEFORGE_TTS_BF16, VOICEFORGE_TTS_TF32, VOICEFORGE_TTS_CUDA_GRAPHS need"
            " Chatterbox on cuda") in cpu

    bad = GPUSettings(
        tts_first_chunk_tokens=2, tts_chunk_tokens=0, tts_cfm_steps=0,
        tts_max_tokens=5000, tts_tokens_per_char=0.0, tts_chunk_schedule="ramp",
        tts_max_streams=0, tts_reference_seconds=0.0,
    )  # fmt: skip
    problems = " | ".join(check_tts_settings(bad))
    for name in ("FIRST_CHUNK_TOKENS=2", "CHUNK_TOKENS=0", "CFM_STEPS=0", "MAX_TOKENS=5000",
                 "TOKENS_PER_CHAR=0.0", "CHUNK_SCHEDULE='ramp'", "MAX_STREAMS=0",
                 "REFERENCE_SECONDS=0.0"):  # fmt: skip
        assert f"VOICEFORGE_TTS_{name}" in problems
    assert "VOICEFORGE_TTS_PROCESSES=17" in " ".join(check_tts(GPUSettings(tts_processes=17)))
    monkeypatch.setenv("VOICEFORGE_TTS_BF16", "maybe")
    with pytest.raises(ConfigurationError, match="VOICEFORGE_TTS_BF16 must be 1 or 0"):
        GPUSettings.from_settings(Settings(profile="gpu"))
    monkeypatch.setenv("VOICEFORGE_TTS_BF16", "0")
    monkeypatch.setenv("VOICEFORGE_TTS_CFM_STEPS", "2.5")
    with pytest.raises(ConfigurationError, match="VOICEFORGE_TTS_CFM_STEPS must be a whole"):
        GPUSettings.from_settings(Settings(profile="gpu"))
    monkeypatch.setenv("VOICEFORGE_TTS_CFM_STEPS", "6")
    monkeypatch.setenv("VOICEFORGE_TTS_REFERENCE_SECONDS", "three")
    with pytest.raises(ConfigurationError, match="VOICEFORGE_TTS_REFERENCE_SECONDS must be a"):
        GPUSettings.from_settings(Settings(profile="gpu"))


def test_gpu_is_a_known_profile() -> None:
    Settings(profile="gpu").validate()
    with pytest.raises(ConfigurationError):
        Settings(profile="gpus").validate()
