"""Counts of what the fuzz tests tried and saw, for ``VOICEFORGE_FUZZ_REPORT``."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


class FuzzStats:
    def __init__(self) -> None:
        self.counters: defaultdict[str, Counter[str]] = defaultdict(Counter)
        """Per test: how often each outcome came up (an error code, ``accepted`` ...)."""
        self.durations_s: dict[str, float] = {}
        self.results: dict[str, str] = {}
        self.worst_decode_ms: dict[str, float] = {}
        """Per test: the costliest decode seen (ms of CPU time)."""

    def count(self, test: str, outcome: str, n: int = 1) -> None:
        self.counters[test][outcome] += n

    def as_json(self) -> dict[str, Any]:
        return {
            "counters": {
                test: dict(sorted(counter.items())) for test, counter in self.counters.items()
            },
            "durations_s": self.durations_s,
            "worst_decode_ms": {
                test: round(ms, 4) for test, ms in sorted(self.worst_decode_ms.items())
            },
            "results": self.results,
        }


STATS = FuzzStats()
