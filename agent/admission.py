"""Admission control by measurement: refuse new calls while the server answers slowly.

Existing calls keep their quality because no new call joins while the server is
measurably slow for them. Sans-I/O: fed with latencies, call ids and timestamps.

What counts, and why (issue 13: one caller asking for a long story once locked a
server with no other caller out for a minute):

* The sample is end of turn → first audio, the part the server controls; the
  end-of-turn silence before it is a setting the caller chooses.
* Each call counts once: its own p95 over the window. The figure compared with the
  budget is the typical call's (the lower median of those per-call p95s), so one
  call whose requests are expensive for reasons of its own cannot trip it.
* It needs ``min_samples`` samples from at least ``min_calls`` calls, and a server
  with fewer than ``min_calls`` open calls is lightly loaded and always admits.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyAdmission:
    def __init__(
        self, budget_ms: float, *, window_s: float = 60.0, min_samples: int = 10,
        min_calls: int = 3, retry_after_s: float = 5.0,
    ) -> None:
        if min_calls < 1 or min_samples < 1:
            raise ValueError("min_calls and min_samples must be at least 1")
        self.budget_ms = budget_ms
        self.window_s = window_s
        self.min_samples = min_samples
        self.min_calls = min_calls
        self.retry_after_s = retry_after_s
        self._samples: deque[tuple[float, str, float]] = deque(maxlen=10_000)

    def observe(self, latency_ms: float, call_id: str, now: float) -> None:
        self._samples.append((now, call_id, latency_ms))

    def recent_p95(self, now: float) -> float | None:
        """The typical call's p95 over the window; None while too few samples or calls."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        if len(self._samples) < self.min_samples:
            return None
        per_call: dict[str, list[float]] = {}
        for _, call_id, latency in self._samples:
            per_call.setdefault(call_id, []).append(latency)
        if len(per_call) < self.min_calls:
            return None
        p95s = sorted(float(np.percentile(latencies, 95)) for latencies in per_call.values())
        return p95s[(len(p95s) - 1) // 2]

    def admit(self, now: float, open_calls: int) -> float | None:
        """None to admit; otherwise the seconds after which to retry."""
        if open_calls < self.min_calls:
            return None
        p95 = self.recent_p95(now)
        if p95 is None or p95 <= self.budget_ms:
            return None
        return self.retry_after_s
