"""One exception root for VoiceForge.

    VoiceForgeError
    ├── ConfigurationError        bad settings or a model file that cannot be resolved
    ├── ModelLoadError            a model failed to load (permanent)
    ├── EngineError               an engine failed while serving a turn
    │   ├── STTError
    │   ├── LLMError
    │   │   ├── LLMUnavailableError   endpoint refused / unreachable (transient)
    │   │   └── LLMTimeoutError       no token within the configured time (transient)
    │   └── TTSError
    └── AudioFormatError          PCM that cannot be interpreted (odd byte count, bad rate)

Every error says what failed and whether it is transient: a transient error loses
the turn but the session goes on; a permanent one means the engine is unusable.
"""

from __future__ import annotations


class VoiceForgeError(Exception):
    """Root of every error raised by VoiceForge code."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class ConfigurationError(VoiceForgeError):
    """Settings that cannot work, or a model file that cannot be found."""


class ModelLoadError(VoiceForgeError):
    """A model could not be loaded."""


class EngineError(VoiceForgeError):
    """An engine failed while serving a turn."""

    transient = True


class STTError(EngineError):
    """Speech-to-text failed."""


class LLMError(EngineError):
    """The language model failed."""


class LLMUnavailableError(LLMError):
    """The LLM endpoint refused the connection or answered with an error status."""


class LLMTimeoutError(LLMError):
    """The LLM produced no token within the configured time."""


class TTSError(EngineError):
    """Text-to-speech failed."""


class AudioFormatError(VoiceForgeError):
    """PCM that cannot be interpreted: odd byte count, unsupported sample rate."""

    transient = True
