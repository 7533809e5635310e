"""Engine health for ``/readyz``, judged across calls (sans-I/O).

One call's failures say little about an engine: a caller can provoke them (an
instruction that overflows the model's context, a request the LLM server refuses)
and a readiness probe that trusted them would let any caller take a replica out of
rotation for everyone. So an engine counts as failing only when its failures come
from at least ``min_sessions`` different calls within ``window_s`` with no success
since, and failures the caller caused (category ``client``) are never counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Failure:
    at: float
    session_id: str
    detail: str


class EngineHealth:
    """Failures and successes per engine (``stt``, ``llm``, ``tts``, ``engine``)."""

    def __init__(self, *, min_sessions: int = 2, window_s: float = 60.0,
                 max_failures: int = 256) -> None:
        if min_sessions < 1:
            raise ValueError(f"min_sessions must be at least 1, got {min_sessions}")
        self.min_sessions = min_sessions
        self.window_s = window_s
        self._max_failures = max_failures
        self._failures: dict[str, deque[_Failure]] = {}

    def failed(self, engine: str, session_id: str, detail: str, now: float) -> None:
        """``engine`` failed a turn of ``session_id`` (an engine's fault, not the caller's)."""
        failures = self._failures.setdefault(engine, deque(maxlen=self._max_failures))
        failures.append(_Failure(now, session_id, detail))

    def worked(self, engine: str) -> None:
        """``engine`` served a turn: its earlier failures no longer count."""
        self._failures.pop(engine, None)

    def failing(self, now: float) -> dict[str, str]:
        """Engines failing across calls → the latest failure's detail."""
        failing: dict[str, str] = {}
        for engine, failures in list(self._failures.items()):
            while failures and failures[0].at < now - self.window_s:
                failures.popleft()
            if not failures:
                del self._failures[engine]
                continue
            if len({failure.session_id for failure in failures}) >= self.min_sessions:
                failing[engine] = failures[-1].detail
        return failing
