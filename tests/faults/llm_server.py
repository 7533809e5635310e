"""The misbehaving OpenAI-compatible server now lives in ``loadtest.fault_llm``
(the reliability measurement runs it too); re-exported for the fault tests."""

from loadtest.fault_llm import (
    BREAK_PAUSE_S,
    MODES,
    PARTIAL_HEARD,
    PARTIAL_TOKENS,
    REPLY,
    FaultyLLMServer,
    SeenRequest,
)

__all__ = [
    "BREAK_PAUSE_S",
    "MODES",
    "PARTIAL_HEARD",
    "PARTIAL_TOKENS",
    "REPLY",
    "FaultyLLMServer",
    "SeenRequest",
]
