"""The verdict: each criterion (memory and fd slopes, drift, back to baseline,
errors) judged from the samples of a run; pure functions of the samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.soak.abuse import (
    AFTER,
    ALL,
    BETWEEN,
    NONE,
    SECOND,
    Phase,
    in_phases,
    phase_names,
    provoked_codes,
)
from loadtest.soak.samples import NAN, Sample, Timeline


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


def finite_points(t_s: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t, y = np.asarray(t_s, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    return t[keep], y[keep]


def slope_per_hour(t_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against time, per hour; NaN with fewer than
    three finite points or no spread in time."""
    return _fit(t_s, values)[0]


def _fit(t_s: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope per hour and its standard error (NaN, NaN if too few points)."""
    t, y = finite_points(t_s, values)
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
    name: str, t_s: Sequence[float], values: Sequence[float], max_per_h: float, unit: str,
    how: str = "",
) -> Criterion:
    slope, error = _fit(t_s, values)
    points = len(finite_points(t_s, values)[0])
    if math.isnan(slope):
        return Criterion(name, None, None, max_per_h, unit,
                         f"{points} steady samples: too few for a slope")
    return Criterion(name, slope <= max_per_h, round(slope, 3), max_per_h, unit,
                     f"least-squares slope over {points} steady samples{how} "
                     f"(standard error {error:.3g} {unit})")


SECOND_CYCLE = (f" of the second abuse cycle ({BETWEEN!r} to {AFTER!r}) but {ALL + SECOND!r}, "
                "where seven abusers' connections lift the level")


def second_cycle(samples: Sequence[Sample], phases: Sequence[Phase]) -> list[Sample]:
    """The samples of the second abuse cycle, but those of its all-abusers phase: the
    first cycle has set the allocator's high-water mark, and a leak still grows."""
    starts = [p.start_s for p in phases if p.name == BETWEEN]
    crowded = [(p.start_s, p.end_s) for p in phases if p.name == ALL + SECOND]
    if not starts:
        return []
    return [s for s in samples if s.t_s >= starts[0]
            and not any(start <= s.t_s < end for start, end in crowded)]


def check_after_abuse(
    samples: Sequence[Sample], phases: Sequence[Phase], attr: str, reference: str,
    limit: float, unit: str,
) -> Criterion:
    """``attr`` with the callers alone after all the abuse vs in phase ``reference``
    (the callers alone too): at most ``limit`` above (percent for memory, a count for
    file descriptors)."""
    grouped = {p.name: [float(getattr(s, attr)) for s in group
                        if math.isfinite(float(getattr(s, attr)))]
               for p, group in in_phases(samples, phases)}
    before, after = grouped.get(reference, []), grouped.get(AFTER, [])
    name = "rss_after_abuse" if attr == "rss_mb" else "fds_after_abuse"
    detail = f"mean in phase {AFTER!r} vs phase {reference!r} (the callers alone)"
    if not before or not after:
        return Criterion(name, None, None, limit, unit, f"{detail}: a phase has no sample")
    mean_before, mean_after = float(np.mean(before)), float(np.mean(after))
    excess = mean_after - mean_before
    if unit == "%":
        excess = 100.0 * excess / mean_before
    return Criterion(name, excess <= limit,
                     {"before": round(mean_before, 1), "after": round(mean_after, 1),
                      "excess": round(excess, 2)}, limit, unit, detail)


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


def check_server_errors(
    baseline: Sample, final: Sample, provoked: set[str] | frozenset[str] = frozenset()
) -> Criterion:
    """No new error event, but of the codes in ``provoked`` (those the abusers were
    answered with: the callers' own are judged by ``load_errors``)."""
    new = new_counts(baseline.errors, final.errors)
    if new is None:
        return Criterion("server_errors", None, None, 0, "events",
                         "voiceforge_errors_total not exported by the server")
    measured: dict[str, Any] = {"total": sum(new.values()), "by_code": new}
    detail = "new voiceforge_errors_total events during the soak, by code"
    unexpected = new
    if provoked:
        unexpected = {code: count for code, count in new.items() if code not in provoked}
        measured["not_provoked_by_abusers"] = unexpected
        detail += "; those of codes the abusers provoked are theirs, not failures"
    return Criterion("server_errors", not unexpected, measured, 0, "events", detail)


def check_abuse_phases(phases: Sequence[Phase]) -> Criterion:
    """Every phase ran (each abuser got a call and sent frames, none was cut off but by
    design) and the normal callers had no error, failure or failed turn in any."""
    measured = {
        p.name: {"turns": p.turns, "errors": p.errors, "failed_turns": p.failed_turns,
                 "latency_p95_ms": p.latency_p95_ms, "abusers_idle": p.abusers_idle(),
                 "abusers_cut_off": p.abusers_cut_off()}
        for p in phases
    }
    ok = [p.name for p in phases] == phase_names() and all(
        p.errors == 0 and p.failed_turns == 0 and not p.abusers_idle()
        and not p.abusers_cut_off() for p in phases)
    return Criterion("abuse_phases", ok, measured, 0, "errors",
                     "normal callers without error in every phase; every abuser ran, "
                     "none cut off")


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
    phases: Sequence[Phase] | None = None,
) -> Verdict:
    """The verdict from the samples (the first is the idle baseline, the last the
    final idle one), the load run's ``summarize`` report and, with ``--abuse``, its
    phases."""
    baseline, final = samples[0], samples[-1]
    steady = steady_window(samples, timeline)
    t = [s.t_s for s in steady]
    rss = [s.rss_mb for s in steady]
    fds = [s.open_fds for s in steady]
    th = thresholds
    if phases is not None:
        calm = second_cycle(steady, phases)
        t_calm = [s.t_s for s in calm]
        memory = [
            check_slope("rss_slope", t_calm, [s.rss_mb for s in calm], th.max_rss_slope_mb_h,
                        "MB/h", SECOND_CYCLE),
            check_after_abuse(steady, phases, "rss_mb", BETWEEN, th.max_rss_drift_pct, "%"),
            check_slope("fd_slope", t_calm, [s.open_fds for s in calm], th.max_fd_slope_per_h,
                        "fds/h", SECOND_CYCLE),
            check_after_abuse(steady, phases, "open_fds", NONE, th.fd_tolerance, "fds"),
        ]
    else:
        memory = [
            check_slope("rss_slope", t, rss, th.max_rss_slope_mb_h, "MB/h"),
            check_drift("rss_drift", rss, th.max_rss_drift_pct),
            check_slope("fd_slope", t, fds, th.max_fd_slope_per_h, "fds/h"),
        ]
    criteria = [
        *memory,
        check_back_to_baseline("fds_after_settle", baseline.open_fds, final.open_fds,
                               th.fd_tolerance, "fds"),
        check_back_to_baseline("tasks_after_settle", baseline.tasks, final.tasks,
                               th.task_tolerance, "tasks"),
        check_back_to_baseline("threads_after_settle", baseline.threads, final.threads,
                               th.thread_tolerance, "threads"),
        check_back_to_baseline("sessions_after_settle", baseline.sessions_active,
                               final.sessions_active, 0, "sessions"),
        check_server_errors(baseline, final,
                            provoked_codes(phases) if phases is not None else frozenset()),
    ]
    if load is not None:
        criteria.append(check_load_errors(load))
    if phases is not None:
        criteria.append(check_abuse_phases(phases))
    criteria.append(Criterion("metrics_scrapes", scrape_failures == 0, scrape_failures, 0,
                              "failed scrapes", "every /metrics scrape answered"))
    return Verdict(criteria)
