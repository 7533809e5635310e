"""Settings: loopback-only without a key, secrets from the environment or a file."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from pipeline.errors import ConfigurationError
from pipeline.models import cache_dir

KEY = "k-unit-test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VOICEFORGE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "voice.example.com"])
def test_a_non_loopback_host_needs_an_api_key(host: str) -> None:
    with pytest.raises(ConfigurationError, match="API key"):
        Settings(host=host).validate()
    Settings(host=host, api_key=KEY).validate()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_a_loopback_host_needs_no_key(host: str) -> None:
    Settings(host=host).validate()


def test_the_key_is_not_in_the_settings_repr() -> None:
    assert KEY not in repr(Settings(api_key=KEY))


def test_from_env_reads_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_HOST", "0.0.0.0")
    monkeypatch.setenv("VOICEFORGE_PORT", "9100")
    monkeypatch.setenv("VOICEFORGE_API_KEY", f"  {KEY}\n")
    monkeypatch.setenv("VOICEFORGE_LLM_BACKEND", "openai")
    monkeypatch.setenv("VOICEFORGE_LLM_URL", "http://127.0.0.1:8001/v1")
    monkeypatch.setenv("VOICEFORGE_LLM_MODEL", "qwen")
    monkeypatch.setenv("VOICEFORGE_THREADS", "4")
    settings = Settings.from_env()
    assert (settings.host, settings.port, settings.api_key) == ("0.0.0.0", 9100, KEY)
    assert (settings.llm_backend, settings.llm_url, settings.llm_model) == (
        "openai",
        "http://127.0.0.1:8001/v1",
        "qwen",
    )
    assert settings.threads == 4
    settings.validate()


def test_from_env_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env()
    # The one default of the server that a bare Settings() (tests, embedding) leaves
    # off: call records in a SQLite file under the cache folder.
    assert settings.database_url == f"sqlite:///{cache_dir() / 'calls.sqlite3'}"
    assert replace(settings, database_url=None) == Settings()
    settings.validate()


def test_call_records_are_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_DATABASE_URL", "off")
    assert Settings.from_env().database_url is None
    secret_file = tmp_path / "db-url"
    secret_file.write_text("postgresql://vf:s3cret-pw@db.internal/calls\n")
    monkeypatch.delenv("VOICEFORGE_DATABASE_URL")
    monkeypatch.setenv("VOICEFORGE_DATABASE_URL_FILE", str(secret_file))
    monkeypatch.setenv("VOICEFORGE_RECORD_REDACT", "digits, emails")
    settings = Settings.from_env()
    assert settings.database_url == "postgresql://vf:s3cret-pw@db.internal/calls"
    assert settings.record_redact == ("digits", "emails")
    assert "s3cret-pw" in settings.secrets()  # kept out of the logs
    assert "s3cret-pw" not in repr(settings)
    settings.validate()
    with pytest.raises(ConfigurationError, match="VOICEFORGE_RECORD_REDACT"):
        replace(settings, record_redact=("names",)).validate()
    with pytest.raises(ConfigurationError, match="VOICEFORGE_DATABASE_URL"):
        replace(settings, database_url="mysql://db/calls").validate()
    monkeypatch.setenv("VOICEFORGE_RECORDINGS", "on_request")
    monkeypatch.setenv("VOICEFORGE_RECORDINGS_DIR", str(tmp_path / "audio"))
    monkeypatch.setenv("VOICEFORGE_RECORDING_RETENTION_DAYS", "7")
    recorded = Settings.from_env()
    assert (recorded.recordings, recorded.recordings_path(),
            recorded.recording_retention_days) == ("on_request", tmp_path / "audio", 7.0)
    recorded.validate()
    with pytest.raises(ConfigurationError, match="VOICEFORGE_RECORDINGS must be one of"):
        replace(recorded, recordings="sometimes").validate()
    with pytest.raises(ConfigurationError, match="needs call records"):
        replace(recorded, database_url=None).validate()


@pytest.mark.parametrize("name", ["VOICEFORGE_PORT", "VOICEFORGE_THREADS"])
def test_a_non_integer_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "eighty")
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env()


def test_a_blank_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_API_KEY", "   ")
    with pytest.raises(ConfigurationError, match="VOICEFORGE_API_KEY"):
        Settings.from_env()


def test_the_key_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text(f"{KEY}\n", encoding="utf-8")
    monkeypatch.setenv("VOICEFORGE_API_KEY_FILE", str(secret))
    assert Settings.from_env().api_key == KEY


def test_the_key_variable_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_API_KEY", "from-variable")
    monkeypatch.setenv("VOICEFORGE_API_KEY_FILE", str(tmp_path / "absent"))
    assert Settings.from_env().api_key == "from-variable"


@pytest.mark.parametrize("content", ["", "  \n"])
def test_an_empty_key_file_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str
) -> None:
    secret = tmp_path / "api-key"
    secret.write_text(content, encoding="utf-8")
    monkeypatch.setenv("VOICEFORGE_API_KEY_FILE", str(secret))
    with pytest.raises(ConfigurationError, match="empty"):
        Settings.from_env()


def test_a_missing_key_file_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings.from_env()


def test_from_env_reads_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_MAX_SESSIONS", "12")
    monkeypatch.setenv("VOICEFORGE_IDLE_TIMEOUT_S", "30.5")
    monkeypatch.setenv("VOICEFORGE_MAX_CALL_S", "900")
    monkeypatch.setenv("VOICEFORGE_LATENCY_BUDGET_MS", "0")
    monkeypatch.setenv("VOICEFORGE_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("VOICEFORGE_TWILIO_AUTH_TOKEN", "tw-token")
    settings = Settings.from_env()
    assert (settings.max_sessions, settings.idle_timeout_s, settings.max_call_s) == (12, 30.5, 900)
    assert settings.latency_budget_ms == 0
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.twilio_auth_token == "tw-token" and "tw-token" not in repr(settings)
    settings.validate()


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_sessions", 0), ("idle_timeout_s", -1.0), ("token_ttl_s", 7200.0),
     ("slow_client_frames", 5000), ("engine_retries", -1)],
)
def test_impossible_limits_are_refused(name: str, value: float) -> None:
    settings = Settings()
    setattr(settings, name, value)
    with pytest.raises(ConfigurationError, match="invalid limits"):
        settings.validate()


def test_the_transport_limits_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.serving import transport_limits

    defaults = Settings()
    assert transport_limits(defaults) == {
        "ws_max_size": 2 * defaults.max_frame_bytes,
        "limit_concurrency": 2 * defaults.max_sessions + 32,
    }
    monkeypatch.setenv("VOICEFORGE_HARD_MAX_FRAME_BYTES", "300000")
    monkeypatch.setenv("VOICEFORGE_MAX_CONNECTIONS", "150")
    monkeypatch.setenv("VOICEFORGE_DECODE_BUDGET_MS_PER_S", "5")
    monkeypatch.setenv("VOICEFORGE_MAX_OUTBOUND_BYTES", "3000000")
    settings = Settings.from_env()
    settings.validate()
    assert transport_limits(settings) == {"ws_max_size": 300000, "limit_concurrency": 150}
    assert (settings.decode_budget_ms_per_s, settings.max_outbound_bytes) == (5.0, 3000000)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"hard_max_frame_bytes": 1000}, "hard_max_frame_bytes"),
        ({"max_connections": 100}, "max_connections"),
        ({"slow_client_bytes": 5 * 1024 * 1024}, "slow_client_bytes"),
        ({"decode_budget_ms_per_s": 0.0}, "decode_budget_ms_per_s"),
    ],
)
def test_limits_that_contradict_each_other_are_refused(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Settings(**changes).validate()


def test_remote_speech_and_the_audio_api_settings_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_TTS_BACKEND", "openai")
    monkeypatch.setenv("VOICEFORGE_TTS_URL", "http://gpu:8000/v1")
    monkeypatch.setenv("VOICEFORGE_TTS_VOICES", "voice_a, voice_b")
    monkeypatch.setenv("VOICEFORGE_STT_BACKEND", "openai")
    monkeypatch.setenv("VOICEFORGE_STT_URL", "http://gpu:8000/v1")
    monkeypatch.setenv("VOICEFORGE_VOICES_DIR", str(tmp_path))
    monkeypatch.setenv("VOICEFORGE_UPLOAD_MAX_BYTES", "1000")
    settings = Settings.from_env()
    settings.validate()
    assert settings.tts_voices == ("voice_a", "voice_b")
    assert (settings.stt_url, settings.stt_model) == ("http://gpu:8000/v1", "whisper-1")
    assert settings.upload_max_bytes == 1000


@pytest.mark.parametrize(
    "changes",
    [{"tts_backend": "openai"}, {"stt_backend": "openai"}, {"tts_backend": "grpc"},
     {"voices_dir": "/no/such/folder"}, {"voice_min_s": 10.0, "voice_max_s": 5.0},
     {"upload_max_bytes": 0}],
)
def test_bad_remote_speech_and_audio_api_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Settings(**changes).validate()


def test_whisper_beam_size_from_the_environment_and_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings.from_env().whisper_beam_size == 1  # greedy unless asked
    monkeypatch.setenv("VOICEFORGE_WHISPER_BEAM_SIZE", "5")
    settings = Settings.from_env()
    assert settings.whisper_beam_size == 5
    settings.validate()
    for bad in (0, 11):
        with pytest.raises(ConfigurationError, match="whisper_beam_size"):
            replace(settings, whisper_beam_size=bad).validate()
