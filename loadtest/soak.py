"""Soak test: a steady population of callers for a long time, and proof nothing leaks.

    python -m loadtest.soak --callers 40 --minutes 30 [--url ws://127.0.0.1:8000/ws]
        [--json soak.json] [--plot soak.png]

Without ``--url`` it starts ``voiceforge serve --profile bench`` on 127.0.0.1 in a
child process (as ``python -m loadtest`` does). It samples the server's
``/metrics`` once idle (the baseline), every ``--sample-s`` seconds while the
callers run (``loadtest.runner.run_load``) and while the server settles, and once
more ``--settle-s`` seconds after the last caller hung up. The run passes (exit
0) only when every measured criterion does:

* resident memory is flat over the steady part of the load: its least-squares
  slope is at most ``--max-rss-slope-mb-h`` and the mean of the window's last
  tenth is within ``--max-rss-drift-pct`` of its first tenth;
* open file descriptors are flat the same way (``--max-fd-slope-per-h``) and come
  back to the baseline (``--fd-tolerance``) once the callers are gone;
* asyncio tasks and threads come back to the baseline (``--task-tolerance``,
  ``--thread-tolerance``) once the callers are gone;
* no caller saw an error or a failure, the server counted no new error event
  (``voiceforge_errors_total``), every ``/metrics`` scrape answered, and
  ``voiceforge_sessions_active`` is back to its baseline (0 on a dedicated server).

The steady part is the load after the ramp and a warm-up of a third of the
duration: allocator pools, caches and connection buffers fill during the first
minutes, and a leak is what keeps growing after that. A criterion whose metric the
server does not export is reported as ``not measured`` and neither passes nor fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.latency import spawned_server
from loadtest.report import print_summary, summarize, to_json
from loadtest.runner import LoadConfig, prepare_speech, run_load
from loadtest.scenarios import SCENARIOS

NAN = float("nan")

MAX_RAMP_S = 60.0
WARMUP_FRACTION = 1 / 3
"""Share of the post-ramp duration left out of the steady window."""
RUNNER_PROGRESS_S = 60.0
"""The runner's own latency line; the soak prints its own line at every sample."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One scrape of ``/metrics``; NaN (``errors``: None) where the server lacks the metric."""

    t_s: float
    """Seconds since the soak started (the baseline is at about 0)."""
    rss_mb: float = NAN
    open_fds: float = NAN
    tasks: float = NAN
    threads: float = NAN
    sessions_active: float = NAN
    cpu_s: float = NAN
    errors: dict[str, float] | None = None
    """Cumulative server error events by code (``voiceforge_errors_total``)."""
    disconnects: dict[str, float] | None = None
    refusals: dict[str, float] | None = None
    phase: str = ""


_GAUGES = {
    "process_resident_memory_bytes": "rss_mb",
    "process_open_fds": "open_fds",
    "process_cpu_seconds_total": "cpu_s",
    "voiceforge_asyncio_tasks": "tasks",
    "voiceforge_threads": "threads",
    "voiceforge_sessions_active": "sessions_active",
}
# Counter families as the parser names them (without ``_total``) → (field, label).
_COUNTERS = {
    "voiceforge_errors": ("errors", "code"),
    "voiceforge_disconnects": ("disconnects", "reason"),
    "voiceforge_refusals": ("refusals", "reason"),
}


def parse_metrics(text: str, t_s: float) -> Sample:
    """A sample from Prometheus text. A labelled counter whose family is declared but
    has no series yet counts zero events; one not declared at all is ``None``."""
    sample = Sample(t_s=t_s)
    for family in text_string_to_metric_families(text):
        for series in family.samples:
            name = series.name
            if name in _GAUGES:
                value = float(series.value)
                if name == "process_resident_memory_bytes":
                    value /= 2**20
                setattr(sample, _GAUGES[name], value)
        if family.name in _COUNTERS:
            attr, label = _COUNTERS[family.name]
            counts: dict[str, float] = {}
            for series in family.samples:
                if series.name == f"{family.name}_total":
                    key = series.labels.get(label, "")
                    counts[key] = counts.get(key, 0.0) + float(series.value)
            setattr(sample, attr, counts)
    return sample


def scrape(http_base: str, t_s: float, timeout_s: float = 10.0) -> Sample:
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=timeout_s) as response:
        return parse_metrics(response.read().decode(), t_s)


# --------------------------------------------------------------------------- timeline


@dataclass
class Timeline:
    """Phase boundaries in seconds since the soak started."""

    load_start_s: float
    ramp_end_s: float
    steady_start_s: float
    load_stop_s: float
    """When callers stop starting sessions (ramp + duration after the start)."""
    load_end_s: float = NAN
    """When the last caller's session ended (``run_load`` returned)."""
    final_s: float = NAN

    @classmethod
    def planned(cls, load_start_s: float, ramp_s: float, duration_s: float) -> Timeline:
        ramp_end = load_start_s + ramp_s
        return cls(
            load_start_s=load_start_s,
            ramp_end_s=ramp_end,
            steady_start_s=ramp_end + duration_s * WARMUP_FRACTION,
            load_stop_s=ramp_end + duration_s,
        )

    def phase(self, t_s: float) -> str:
        if t_s < self.load_start_s:
            return "baseline"
        if t_s < self.ramp_end_s:
            return "ramp"
        if t_s < self.steady_start_s:
            return "warmup"
        if t_s <= self.load_stop_s:
            return "steady"
        if math.isnan(self.load_end_s) or t_s <= self.load_end_s:
            return "drain"
        if math.isnan(self.final_s) or t_s < self.final_s:
            return "settle"
        return "final"


# --------------------------------------------------------------------------- verdict


@dataclass
class Thresholds:
    max_rss_slope_mb_h: float = 20.0
    max_rss_drift_pct: float = 5.0
    max_fd_slope_per_h: float = 10.0
    fd_tolerance: float = 2.0
    task_tolerance: float = 2.0
    thread_tolerance: float = 2.0


@dataclass
class Criterion:
    name: str
    passed: bool | None
    """None: not measured (the server lacks the metric, or too few samples)."""
    measured: Any
    threshold: Any
    unit: str = ""
    detail: str = ""

    @property
    def status(self) -> str:
        return "not measured" if self.passed is None else ("pass" if self.passed else "FAIL")


@dataclass
class Verdict:
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every measured criterion passed (and at least one was measured)."""
        measured = [c for c in self.criteria if c.passed is not None]
        return bool(measured) and all(c.passed for c in measured)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.passed is False]

    @property
    def not_measured(self) -> list[Criterion]:
        return [c for c in self.criteria if c.passed is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": [c.name for c in self.failed],
            "not_measured": [c.name for c in self.not_measured],
            "criteria": {
                c.name: {
                    "status": c.status,
                    "measured": c.measured,
                    "threshold": c.threshold,
                    "unit": c.unit,
                    "detail": c.detail,
                }
                for c in self.criteria
            },
        }


def _finite(t_s: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t, y = np.asarray(t_s, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    return t[keep], y[keep]


def slope_per_hour(t_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against time, per hour; NaN with fewer than
    three finite points or no spread in time."""
    return _fit(t_s, values)[0]


def _fit(t_s: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per hour and its standard error (NaN, NaN if too few points)."""
    t, y = _finite(t_s, values)
    if len(t) < 3 or float(np.ptp(t)) == 0.0:
        return NAN, NAN
    hours = (t - t.mean()) / 3600.0
    spread = float(np.sum(hours * hours))
    slope = float(np.sum(hours * (y - y.mean())) / spread)
    residuals = y - y.mean() - slope * hours
    return slope, math.sqrt(float(np.sum(residuals**2)) / (len(t) - 2) / spread)


def drift_pct(values: Sequence[float]) -> float:
    """Mean of the last tenth of ``values`` against the mean of the first tenth, in
    percent (at least one point each; NaN with fewer than two points)."""
    y = np.asarray(values, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) < 2:
        return NAN
    tenth = max(1, len(y) // 10)
    first, last = float(y[:tenth].mean()), float(y[-tenth:].mean())
    if first == 0.0:
        return NAN
    return 100.0 * (last - first) / first


def steady_window(samples: Sequence[Sample], timeline: Timeline) -> list[Sample]:
    return [s for s in samples if timeline.steady_start_s <= s.t_s <= timeline.load_stop_s]


def check_slope(
    name: str, t_s: Sequence[float], values: Sequence[float], max_per_h: float, unit: str
) -> Criterion:
    slope, error = _fit(t_s, values)
    points = len(_finite(t_s, values)[0])
    if math.isnan(slope):
        return Criterion(name, None, None, max_per_h, unit,
                         f"{points} steady samples: too few for a slope")
    return Criterion(name, slope <= max_per_h, round(slope, 3), max_per_h, unit,
                     f"least-squares slope over {points} steady samples "
                     f"(standard error {error:.3g} {unit})")


def check_drift(name: str, values: Sequence[float], max_pct: float) -> Criterion:
    drift = drift_pct(values)
    if math.isnan(drift):
        return Criterion(name, None, None, max_pct, "%", "too few steady samples")
    return Criterion(name, drift <= max_pct, round(drift, 2), max_pct, "%",
                     "mean of the steady window's last tenth vs its first tenth")


def check_back_to_baseline(
    name: str, baseline: float, final: float, tolerance: float, unit: str
) -> Criterion:
    """``final`` at most ``tolerance`` above ``baseline`` (below is fine)."""
    if math.isnan(baseline) or math.isnan(final):
        return Criterion(name, None, None, tolerance, unit, "metric not exported by the server")
    return Criterion(
        name,
        final <= baseline + tolerance,
        {"baseline": baseline, "final": final, "excess": final - baseline},
        tolerance,
        unit,
        f"after settle, at most {tolerance:g} above the idle baseline",
    )


def new_counts(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    """Events counted between two samples, by label, only those that grew."""
    if before is None or after is None:
        return None
    grown = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in sorted(grown.items()) if v > 0}


def check_server_errors(baseline: Sample, final: Sample) -> Criterion:
    new = new_counts(baseline.errors, final.errors)
    if new is None:
        return Criterion("server_errors", None, None, 0, "events",
                         "voiceforge_errors_total not exported by the server")
    return Criterion("server_errors", not new, {"total": sum(new.values()), "by_code": new}, 0,
                     "events", "new voiceforge_errors_total events during the soak, by code")


def check_load_errors(load: dict[str, Any]) -> Criterion:
    """From ``summarize``'s report: error events seen by callers, caller failures
    (timeouts, refused connections, dropped sessions) and failed turns."""
    measured = {
        "errors": load["errors"],
        "error_codes": load["error_codes"],
        "dropped_sessions": load["dropped_sessions"],
        "failures": load["failures"][:5],
    }
    ok = load["errors"] == 0 and load["dropped_sessions"] == 0
    return Criterion("load_errors", ok, measured, 0, "errors",
                     "errors and failures seen by the callers")


def evaluate(
    samples: Sequence[Sample],
    timeline: Timeline,
    thresholds: Thresholds,
    load: dict[str, Any] | None,
    scrape_failures: int = 0,
) -> Verdict:
    """The verdict from the samples (the first is the idle baseline, the last the
    final idle one) and the load run's ``summarize`` report."""
    baseline, final = samples[0], samples[-1]
    steady = steady_window(samples, timeline)
    t = [s.t_s for s in steady]
    rss = [s.rss_mb for s in steady]
    fds = [s.open_fds for s in steady]
    th = thresholds
    criteria = [
        check_slope("rss_slope", t, rss, th.max_rss_slope_mb_h, "MB/h"),
        check_drift("rss_drift", rss, th.max_rss_drift_pct),
        check_slope("fd_slope", t, fds, th.max_fd_slope_per_h, "fds/h"),
        check_back_to_baseline("fds_after_settle", baseline.open_fds, final.open_fds,
                               th.fd_tolerance, "fds"),
        check_back_to_baseline("tasks_after_settle", baseline.tasks, final.tasks,
                               th.task_tolerance, "tasks"),
        check_back_to_baseline("threads_after_settle", baseline.threads, final.threads,
                               th.thread_tolerance, "threads"),
        check_back_to_baseline("sessions_after_settle", baseline.sessions_active,
                               final.sessions_active, 0, "sessions"),
        check_server_errors(baseline, final),
    ]
    if load is not None:
        criteria.append(check_load_errors(load))
    criteria.append(Criterion("metrics_scrapes", scrape_failures == 0, scrape_failures, 0,
                              "failed scrapes", "every /metrics scrape answered"))
    return Verdict(criteria)


# --------------------------------------------------------------------------- the run


@dataclass
class SoakConfig:
    callers: int = 40
    minutes: float = 30.0
    sample_s: float = 10.0
    settle_s: float = 20.0
    scenarios: list[str] | None = None
    api_key: str | None = None

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
    try:
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
    return SoakResult(config, sampler.samples, timeline, summarize(raw), sampler.failures)


# --------------------------------------------------------------------------- output


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def report_json(result: SoakResult, thresholds: Thresholds, verdict: Verdict) -> dict[str, Any]:
    config = result.config
    report: dict[str, Any] = _clean({
        "config": {
            **asdict(config),
            "api_key": None,
            "duration_s": config.duration_s,
            "ramp_s": config.ramp_s,
            "warmup_fraction": WARMUP_FRACTION,
        },
        "thresholds": asdict(thresholds),
        "timeline": asdict(result.timeline),
        "verdict": verdict.to_json(),
        "samples": [asdict(s) for s in result.samples],
        "scrape_failures": result.scrape_failures,
        "load": to_json(result.load),
    })
    return report


_PHASE_COLOURS = {
    "ramp": ("tab:orange", 0.15),
    "warmup": ("tab:olive", 0.10),
    "steady": ("tab:green", 0.10),
    "drain": ("tab:purple", 0.12),
    "settle": ("tab:gray", 0.15),
}


def plot(result: SoakResult, verdict: Verdict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, tl = result.samples, result.timeline
    minutes = np.array([s.t_s / 60.0 for s in samples])

    def series(attr: str) -> np.ndarray:
        return np.array([getattr(s, attr) for s in samples], dtype=float)

    fig, axes = plt.subplots(4, 1, figsize=(12.5, 10), sharex=True)
    # (attribute, label, on a right-hand axis of its own); threads are a few, tasks hundreds.
    panels: list[tuple[list[tuple[str, str, bool]], str]] = [
        ([("rss_mb", "RSS", False)], "RSS, MB"),
        ([("open_fds", "open fds", False)], "open fds"),
        ([("tasks", "asyncio tasks", False), ("threads", "threads (right)", True)],
         "asyncio tasks"),
        ([("sessions_active", "active sessions", False)], "sessions"),
    ]
    legend: dict[str, Any] = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    spans = {
        "ramp": (tl.load_start_s, tl.ramp_end_s),
        "warmup": (tl.ramp_end_s, tl.steady_start_s),
        "steady": (tl.steady_start_s, tl.load_stop_s),
        "drain": (tl.load_stop_s, tl.load_end_s),
        "settle": (tl.load_end_s, tl.final_s),
    }
    for axis, (lines, ylabel) in zip(axes, panels, strict=True):
        for name, (start, end) in spans.items():
            if math.isfinite(start) and math.isfinite(end) and end > start:
                colour, alpha = _PHASE_COLOURS[name]
                axis.axvspan(start / 60, end / 60, color=colour, alpha=alpha,
                             label=name if axis is axes[0] else None)
        handles: list[Any] = []
        for index, (attr, label, right) in enumerate(lines):
            values = series(attr)
            if not np.isfinite(values).any():
                axis.plot([], [], " ", label=f"{label}: not exported")
                continue
            target = axis.twinx() if right else axis
            colour = f"C{index}"
            target.plot(minutes, values, ".-", markersize=3, color=colour, label=label)
            target.axhline(values[0], color=colour, linestyle=":", linewidth=1)
            if right:
                target.set_ylim(0, max(4.0, float(np.nanmax(values)) * 1.3))
                target.set_ylabel("threads")
                handles += target.get_legend_handles_labels()[0]
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(handles=axis.get_legend_handles_labels()[0] + handles, **legend)
    steady = steady_window(samples, tl)
    slope = slope_per_hour([s.t_s for s in steady], [s.rss_mb for s in steady])
    if math.isfinite(slope):
        t, rss = _finite([s.t_s for s in steady], [s.rss_mb for s in steady])
        fit = rss.mean() + slope * (t - t.mean()) / 3600.0
        axes[0].plot(t / 60.0, fit, "k--", linewidth=1, label=f"steady fit {slope:+.1f} MB/h")
        axes[0].legend(**legend)
    axes[-1].set_xlabel("minutes (dotted: idle baseline)")
    failed = ", ".join(c.name for c in verdict.failed)
    fig.suptitle(
        f"Soak: {result.config.callers} callers, {result.config.minutes:g} min — "
        + ("PASS" if verdict.passed else f"FAIL ({failed})")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_verdict(verdict: Verdict) -> None:
    print("\nsoak verdict:")
    for c in verdict.criteria:
        threshold = "" if c.threshold is None else f" (threshold {c.threshold} {c.unit})"
        print(f"  {c.status:12s} {c.name:22s} {c.measured}{threshold}  {c.detail}")
    if verdict.passed:
        print("PASS" + (f" ({len(verdict.not_measured)} not measured)"
                        if verdict.not_measured else ""))
    else:
        print("FAIL: " + ", ".join(c.name for c in verdict.failed))


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults, limits = SoakConfig(), Thresholds()
    parser.add_argument("--url", help="ws://HOST:PORT/ws of a running server "
                        "(default: start `voiceforge serve --profile bench`)")
    parser.add_argument("--callers", type=int, default=defaults.callers)
    parser.add_argument("--minutes", type=float, default=defaults.minutes,
                        help="load duration after the ramp (the ramp is a tenth, at most 60 s)")
    parser.add_argument("--sample-s", type=float, default=defaults.sample_s)
    parser.add_argument("--settle-s", type=float, default=defaults.settle_s,
                        help="idle wait after the callers stop, before the final sample")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated, one per caller in turn (default: all of "
                        f"{', '.join(SCENARIOS)})")
    parser.add_argument("--json", type=Path, help="write samples and verdict here")
    parser.add_argument("--plot", type=Path, help="write the PNG of the curves here")
    parser.add_argument("--max-rss-slope-mb-h", type=float, default=limits.max_rss_slope_mb_h)
    parser.add_argument("--max-rss-drift-pct", type=float, default=limits.max_rss_drift_pct)
    parser.add_argument("--max-fd-slope-per-h", type=float, default=limits.max_fd_slope_per_h)
    parser.add_argument("--fd-tolerance", type=float, default=limits.fd_tolerance)
    parser.add_argument("--task-tolerance", type=float, default=limits.task_tolerance)
    parser.add_argument("--thread-tolerance", type=float, default=limits.thread_tolerance)
    return parser


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with spawned_server("bench", echo=False) as spawned:
        print(f"started `voiceforge serve --profile bench` at {spawned}", file=sys.stderr)
        yield spawned


def _run(coro: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """uvloop when installed, like ``python -m loadtest``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro())
    return uvloop.run(coro())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] \
        if args.scenarios else None
    if args.callers < 1 or args.minutes <= 0 or args.sample_s <= 0 or args.settle_s < 0:
        print("error: --callers >= 1, --minutes > 0, --sample-s > 0 and --settle-s >= 0",
              file=sys.stderr)
        return 2
    config = SoakConfig(args.callers, args.minutes, args.sample_s, args.settle_s, scenarios,
                        os.environ.get("VOICEFORGE_API_KEY"))
    thresholds = Thresholds(args.max_rss_slope_mb_h, args.max_rss_drift_pct,
                            args.max_fd_slope_per_h, args.fd_tolerance, args.task_tolerance,
                            args.thread_tolerance)
    speech = prepare_speech()
    with _server(args.url) as url:
        print(f"soak: {config.callers} callers for {config.minutes:g} min after a "
              f"{config.ramp_s:.0f} s ramp, a sample every {config.sample_s:g} s, "
              f"{config.settle_s:g} s settle", file=sys.stderr)
        try:
            result = _run(lambda: soak(url, config, speech))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    verdict = evaluate(result.samples, result.timeline, thresholds, result.load,
                       result.scrape_failures)
    print_summary(result.load)
    print_verdict(verdict)
    if args.json:
        args.json.write_text(json.dumps(report_json(result, thresholds, verdict), indent=2,
                                        default=str))
        print(f"report written to {args.json}")
    if args.plot:
        plot(result, verdict, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
