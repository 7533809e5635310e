"""One exception root for VoiceForge.

    VoiceForgeError
    ├── ConfigurationError        bad settings or a model file that cannot be resolved
    ├── ModelLoadError            a model failed to load (permanent)
    ├── EngineError               an engine failed while serving a turn
    │   ├── STTError
    │   ├── LLMError
    │   │   ├── LLMUnavailableError   endpoint refused / unreachable (transient)
    │   │   ├── LLMTimeoutError       no token within the configured time (transient)
    │   │   └── LLMRequestError       the caller's request cannot be served (client)
    │   └── TTSError
    └── AudioFormatError          PCM that cannot be interpreted (odd byte count, bad rate)

Every error says what failed and whether it is transient: a transient error loses
the turn but the session goes on; a permanent one means the engine is unusable.
``category`` is what the caller is told (the ``error`` event's category): a
request-caused failure (a prompt over the model's context, an HTTP 400) is the
caller's error, ``client``, and says nothing about the engine's health.
"""

from __future__ import annotations


class VoiceForgeError(Exception):
    """Root of every error raised by VoiceForge code."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient

    @property
    def category(self) -> str:
        """``transient``, ``permanent`` or (for request-caused errors) ``client``."""
        return "transient" if self.transient else "permanent"


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


class LLMRequestError(LLMError):
    """The request itself cannot be served: it does not fit the model's context, or
    the server refused it as malformed (HTTP 400). Retrying the same request will not
    help, and the engine is not at fault."""

    transient = False

    @property
    def category(self) -> str:
        return "client"


class TTSError(EngineError):
    """Text-to-speech failed."""


class AudioFormatError(VoiceForgeError):
    """PCM that cannot be interpreted: odd byte count, unsupported sample rate."""

    transient = True
