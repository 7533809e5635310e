"""The scenarios by name, in the order a full run takes them (and the report lists them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loadtest.reliability import (
    abuse_impact,
    admission,
    disconnects,
    engine_faults,
    floods,
    llm_faults,
    model_load,
    oversized,
    security,
    shutdown,
    slow_reader,
    time_limits,
)
from loadtest.reliability.common import Context, Result

Scenario = Callable[[Context], Awaitable[Result]]

SCENARIOS: dict[str, Scenario] = {
    "session_limit": admission.session_limit,
    "admission": admission.admission,
    "frame_flood": floods.frame_flood,
    "audio_flood": floods.audio_flood,
    "abuse_impact": abuse_impact.abuse_impact,
    "oversized": oversized.oversized,
    "slow_reader": slow_reader.slow_reader,
    "idle_timeout": time_limits.idle_timeout,
    "llm_faults": llm_faults.llm_faults,
    "engine_faults": engine_faults.engine_faults,
    "disconnects": disconnects.disconnects,
    "model_load": model_load.model_load,
    "shutdown": shutdown.shutdown,
    "security": security.security,
}
