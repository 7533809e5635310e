"""Admission control by measurement: refuse new calls while latency is over budget.

Existing calls keep their quality because no new call joins while the recent
end-of-speech → first-audio p95 exceeds the budget. Sans-I/O: fed with
latencies and timestamps.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyAdmission:
    def __init__(
        self, budget_ms: float, *, window_s: float = 60.0, min_samples: int = 5,
        retry_after_s: float = 5.0,
    ) -> None:
        self.budget_ms = budget_ms
        self.window_s = window_s
        self.min_samples = min_samples
        self.retry_after_s = retry_after_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=10_000)

    def observe(self, latency_ms: float, now: float) -> None:
        self._samples.append((now, latency_ms))

    def recent_p95(self, now: float) -> float | None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        if len(self._samples) < self.min_samples:
            return None
        return float(np.percentile([latency for _, latency in self._samples], 95))

    def admit(self, now: float) -> float | None:
        """None to admit; otherwise the seconds after which to retry."""
        p95 = self.recent_p95(now)
        if p95 is None or p95 <= self.budget_ms:
            return None
        return self.retry_after_s
