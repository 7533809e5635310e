"""The run: a steady population of callers (``loadtest.runner.run_load``) while the
server's ``/metrics`` is sampled on a fixed grid, then a settle and a final sample."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.abusers import AbuserProcess
from loadtest.report import summarize
from loadtest.runner import LoadConfig, run_load
from loadtest.scenarios import SCENARIOS, Stats
from loadtest.soak.abuse import Phase, phase_names, run_phases
from loadtest.soak.samples import NAN, Sample, Timeline, scrape

MAX_RAMP_S = 60.0


RUNNER_PROGRESS_S = 60.0
"""The runner's own latency line; the soak prints its own line at every sample."""


@dataclass
class SoakConfig:
    callers: int = 40
    minutes: float = 30.0
    sample_s: float = 10.0
    settle_s: float = 20.0
    scenarios: list[str] | None = None
    api_key: str | None = None
    abuse: bool = False
    """Run the abusive clients alongside, phase by phase (``loadtest.soak.abuse``)."""

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def ramp_s(self) -> float:
        return min(MAX_RAMP_S, self.duration_s / 10.0)


@dataclass
class SoakResult:
    config: SoakConfig
    samples: list[Sample]
    timeline: Timeline
    load: dict[str, Any]
    """``loadtest.report.summarize`` of the load run (with ``_turns``)."""
    scrape_failures: int
    phases: list[Phase] | None = None
    """With ``abuse``: what each phase ran and what the callers saw in it."""


class _Sampler:
    def __init__(self, http_base: str, sample_s: float) -> None:
        self.http_base = http_base
        self.sample_s = sample_s
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.failures = 0
        self.timeline: Timeline | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    async def take(self) -> Sample | None:
        t_s = self.now()
        try:
            sample = await asyncio.to_thread(scrape, self.http_base, t_s)
        except OSError as exc:
            self.failures += 1
            print(f"  [{t_s / 60:6.2f} min] /metrics scrape failed: {exc}", file=sys.stderr,
                  flush=True)
            return None
        self.samples.append(sample)
        self._print(sample)
        return sample

    async def loop(self) -> None:
        """A sample every ``sample_s`` on a fixed grid; a slow scrape skips ticks."""
        while True:
            tick = math.floor(self.now() / self.sample_s) + 1
            await asyncio.sleep(max(0.0, tick * self.sample_s - self.now()))
            await self.take()

    def _print(self, sample: Sample) -> None:
        phase = self.timeline.phase(sample.t_s) if self.timeline else "baseline"
        previous = self.samples[-2] if len(self.samples) > 1 else None
        cpu = NAN
        if previous is not None and sample.t_s > previous.t_s:
            cpu = 100.0 * (sample.cpu_s - previous.cpu_s) / (sample.t_s - previous.t_s)
        errors = "-" if sample.errors is None else f"{sum(sample.errors.values()):.0f}"
        print(
            f"  [{sample.t_s / 60:6.2f} min {phase:8s}] rss {sample.rss_mb:7.1f} MB"
            f"  fds {sample.open_fds:5.0f}  tasks {sample.tasks:5.0f}"
            f"  threads {sample.threads:3.0f}  sessions {sample.sessions_active:4.0f}"
            f"  server errors {errors:>3s}  cpu {cpu:4.0f}%",
            file=sys.stderr,
            flush=True,
        )


async def soak(url: str, config: SoakConfig, speech: list[np.ndarray]) -> SoakResult:
    load_config = LoadConfig(
        url=url,
        callers=config.callers,
        duration_s=config.duration_s,
        ramp_s=config.ramp_s,
        progress_s=RUNNER_PROGRESS_S,
        api_key=config.api_key,
        scenarios=config.scenarios or list(SCENARIOS),  # the runner's default: all
    )
    sampler = _Sampler(load_config.http_base, config.sample_s)
    if await sampler.take() is None:
        raise OSError(f"cannot scrape {load_config.http_base}/metrics for the baseline")
    timeline = Timeline.planned(sampler.now(), config.ramp_s, config.duration_s)
    sampler.timeline = timeline
    sampling = asyncio.create_task(sampler.loop())
    phases: list[Phase] | None = None
    try:
        if config.abuse:
            raw, phases = await _load_with_abuse(load_config, speech, config, sampler, timeline)
        else:
            raw = await run_load(load_config, speech)
        timeline.load_end_s = sampler.now()
        await asyncio.sleep(config.settle_s)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    # The final sample must be one: wait out a scrape that fails, a little.
    final = None
    for _ in range(3):
        final = await sampler.take()
        if final is not None:
            break
        await asyncio.sleep(1.0)
    if final is None:
        raise OSError("no final /metrics sample: the server stopped answering")
    timeline.final_s = final.t_s
    for sample in sampler.samples:
        sample.phase = timeline.phase(sample.t_s)
    return SoakResult(config, sampler.samples, timeline, summarize(raw), sampler.failures,
                      phases)


async def _load_with_abuse(
    load_config: LoadConfig, speech: list[np.ndarray], config: SoakConfig, sampler: _Sampler,
    timeline: Timeline,
) -> tuple[dict[str, Any], list[Phase]]:
    """The callers, and the abusers phase by phase over the steady window (after the
    ramp and the warm-up); the abusers' process is gone before this returns."""
    stats = Stats()
    phase_s = (timeline.load_stop_s - timeline.steady_start_s) / len(phase_names())
    async with AbuserProcess.running(load_config.url, config.api_key) as abusers:
        schedule = asyncio.create_task(
            run_phases(abusers, stats, sampler.started, timeline.steady_start_s, phase_s))
        try:
            raw = await run_load(load_config, speech, stats=stats)
        except BaseException:
            schedule.cancel()
            await asyncio.gather(schedule, return_exceptions=True)
            raise
        phases = await schedule
    return raw, phases
