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

from agent.config import Settings
from agent.gpu import GPUSettings, build_gpu, check_cuda, check_llm_endpoint, check_tts
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
    """Every engine of the profile for real, except the GPU: Whisper on CPU, Piper."""
    async with OpenAICompatServer(["llama-3.1-8b"], max_tokens=2) as server:
        for name, value in {
            "VOICEFORGE_WHISPER_DEVICE": "cpu",
            "VOICEFORGE_WHISPER_COMPUTE_TYPE": "int8",
            "VOICEFORGE_TTS": "piper",
            "VOICEFORGE_LLM_SESSION_HEADER": "x-call",
        }.items():
            monkeypatch.setenv(name, value)
        settings = Settings(
            profile="gpu",
            llm_url=server.url,
            llm_model="llama-3.1-8b",
            whisper_model=str(models.whisper_model_dir()),
        )
        lines: list[str] = []
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


def test_gpu_is_a_known_profile() -> None:
    Settings(profile="gpu").validate()
    with pytest.raises(ConfigurationError):
        Settings(profile="gpus").validate()
