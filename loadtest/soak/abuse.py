"""``--abuse``: the abusive clients of ``loadtest.abusers`` alongside the callers.

The steady part of the load (after the ramp and the warm-up) is cut into equal
phases: ``none`` (the callers alone), each abuser on its own then all of them
together, ``between`` (the callers alone), the same cycle again (``NAME 2``), and
``after`` (the callers alone). The abusers run in a process of their own and are
all stopped when the load stops, before the settle, so what the server holds
afterwards is compared with its idle baseline as in any soak.

An abuser's connections raise the server's open files while it runs, and its
peak raises the allocator's high-water mark, which resident memory keeps: steps,
not leaks. A leak is what the second cycle adds to the first. So with
``--abuse`` the verdict fits its slopes over the second cycle (``between`` to
``after``, but ``all 2``, where seven abusers at once lift the level), and
compares the callers alone directly: memory in ``after`` within the drift bound
of ``between``, open files in ``after`` within the fd tolerance of ``none``.

Each phase records which abusers ran, what they did, and the normal callers'
turns, error events, failures and latency in it (a turn counts in the phase its
reply was done in; a session's error events are collected when it ends, so they
count in the phase it ended in).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtest.abusers import ABUSERS, EXPECTED_CLOSES, UNREAD_ERRORS, AbuserProcess
from loadtest.latency import percentile
from loadtest.scenarios import Stats
from loadtest.soak.samples import Sample

ALL = "all"
NONE = "none"
BETWEEN = "between"
AFTER = "after"
SECOND = " 2"
"""Suffix of the second cycle's phases."""


def phase_names() -> list[str]:
    cycle = [*ABUSERS, ALL]
    return [NONE, *cycle, BETWEEN, *(name + SECOND for name in cycle), AFTER]


def abusers_of(name: str) -> list[str]:
    base = name.removesuffix(SECOND)
    return [] if base in (NONE, BETWEEN, AFTER) else list(ABUSERS) if base == ALL else [base]


@dataclass
class Phase:
    name: str
    """``none``, an abuser's name or ``all`` (``NAME 2`` in the second cycle),
    ``between`` or ``after``."""
    start_s: float
    end_s: float
    abusers: dict[str, Any] = field(default_factory=dict)
    """What each abuser of the phase did (``loadtest.abusers.AbuserStats``)."""
    turns: int = 0
    failed_turns: int = 0
    errors: int = 0
    """Error events, failures and failed turns of the normal callers (``Stats.errors``)."""
    error_codes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    """Acoustic end of speech → first audio, as the callers measured it."""
    server_p95_ms: float | None = None

    def abusers_cut_off(self) -> dict[str, dict[str, int]]:
        return {name: stats["closed_by_server"] for name, stats in self.abusers.items()
                if set(stats["closed_by_server"]) - EXPECTED_CLOSES.get(name, set())}

    def abusers_idle(self) -> list[str]:
        """Abusers of the phase that never got a call or sent nothing, or crashed."""
        return [name for name, stats in self.abusers.items()
                if stats["connections"] < 1 or stats["frames_sent"] < 1 or "crashed" in stats]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def provoked_codes(phases: Sequence[Phase]) -> set[str]:
    """Error codes the abusers were answered with, or would have been had they read:
    the server's error counter counts them too, and they are no normal caller's."""
    codes: set[str] = set()
    for phase in phases:
        for name, stats in phase.abusers.items():
            codes |= set(stats["errors_received"]) | UNREAD_ERRORS.get(name, set())
    return codes


class _Snapshot:
    def __init__(self, stats: Stats) -> None:
        self.turns = len(stats.turns)
        self.errors = stats.errors
        self.codes = dict(stats.error_codes)
        self.failures = len(stats.failures)


def _close_phase(phase: Phase, stats: Stats, before: _Snapshot, started: float,
                 start: float) -> None:
    turns = [t for t in stats.turns[before.turns:] if start <= t.at]
    latency = [t.acoustic_ms for t in turns if t.acoustic_ms is not None]
    server = [t.server_ms for t in turns if t.server_ms is not None]
    phase.turns = len(turns)
    phase.failed_turns = sum(t.status == "failed" for t in turns)
    phase.errors = stats.errors - before.errors
    phase.error_codes = {code: count - before.codes.get(code, 0)
                         for code, count in stats.error_codes.items()
                         if count > before.codes.get(code, 0)}
    phase.failures = stats.failures[before.failures:][:5]
    if latency:
        phase.latency_p50_ms = round(percentile(latency, 50), 1)
        phase.latency_p95_ms = round(percentile(latency, 95), 1)
    if server:
        phase.server_p95_ms = round(percentile(server, 95), 1)
    phase.end_s = time.monotonic() - started


async def run_phases(
    abusers: AbuserProcess, stats: Stats, started: float, first_at_s: float, phase_s: float,
) -> list[Phase]:
    """From ``first_at_s`` (seconds since ``started``), one phase of ``phase_s`` each."""
    phases: list[Phase] = []
    await asyncio.sleep(max(0.0, started + first_at_s - time.monotonic()))
    for index, name in enumerate(phase_names()):
        names = abusers_of(name)
        begin = time.monotonic()
        phase = Phase(name, begin - started, begin - started)
        snapshot = _Snapshot(stats)
        if names:
            await abusers.start(names)
        print(f"  [{(begin - started) / 60:6.2f} min] abuse phase {name}: "
              f"{', '.join(names) or 'no abuser'}", file=sys.stderr, flush=True)
        end = started + first_at_s + (index + 1) * phase_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if names:
            phase.abusers = await abusers.stop()
        _close_phase(phase, stats, snapshot, started, begin)
        phases.append(phase)
    return phases


def in_phases(
    samples: Sequence[Sample], phases: Sequence[Phase]
) -> list[tuple[Phase, list[Sample]]]:
    """Each phase with the samples taken during it."""
    return [(p, [s for s in samples if p.start_s <= s.t_s < p.end_s]) for p in phases]
