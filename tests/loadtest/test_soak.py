"""The soak tool: its verdict on synthetic series, and one short real run.

The verdict tests build the samples a 30-minute soak would record and check that
each criterion tells a flat run from a leaking one. The real run is far too short
for a slope per hour to mean anything, so it relaxes the slope and drift bounds and
holds the server to the rest: no errors, and fds, tasks, threads and sessions back
to the idle baseline after the settle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.soak import (
    Sample,
    Thresholds,
    Timeline,
    drift_pct,
    evaluate,
    main,
    new_counts,
    parse_metrics,
    slope_per_hour,
)
from loadtest.soak.abuse import Phase, abusers_of, phase_names
from loadtest.speech import espeak_available

CLEAN_LOAD: dict[str, Any] = {
    "errors": 0, "error_codes": {}, "dropped_sessions": 0, "failures": [],
}


def soak_samples(
    *,
    rss_mb_per_h: float = 0.0,
    fds_per_h: float = 0.0,
    final: dict[str, Any] | None = None,
    errors_during_load: dict[str, float] | None = None,
    seed: int = 0,
) -> tuple[list[Sample], Timeline]:
    """A 30-minute, 40-caller soak sampled every 10 s: idle baseline, 60 s ramp,
    load with noise, 20 s settle, final idle sample (``final`` overrides it)."""
    rng = np.random.default_rng(seed)
    timeline = Timeline.planned(load_start_s=1.0, ramp_s=60.0, duration_s=1800.0)
    timeline.load_end_s = timeline.load_stop_s + 8.0
    timeline.final_s = timeline.load_end_s + 20.0
    samples = [Sample(t_s=0.0, rss_mb=120.0, open_fds=19, tasks=4, threads=1,
                      sessions_active=0, cpu_s=1.0, errors={})]
    for t in np.arange(10.0, timeline.load_end_s, 10.0):
        hours = t / 3600.0
        samples.append(Sample(
            t_s=float(t),
            rss_mb=250.0 + rss_mb_per_h * hours + float(rng.normal(0.0, 3.0)),
            open_fds=float(60 + round(fds_per_h * hours) + rng.integers(-3, 4)),
            tasks=float(200 + rng.integers(-30, 31)),
            threads=2.0,
            sessions_active=float(40 - rng.integers(0, 3)),
            cpu_s=1.0 + t * 0.5,
            errors=dict(errors_during_load or {}) if t > 600 else {},
        ))
    idle = {"rss_mb": 251.0, "open_fds": 19.0, "tasks": 4.0, "threads": 2.0,
            "sessions_active": 0.0, "errors": dict(errors_during_load or {})}
    samples.append(Sample(t_s=timeline.final_s, cpu_s=1000.0, **{**idle, **(final or {})}))
    for sample in samples:
        sample.phase = timeline.phase(sample.t_s)
    return samples, timeline


def statuses(samples: list[Sample], timeline: Timeline, load: dict[str, Any] | None = None,
             thresholds: Thresholds | None = None) -> dict[str, str]:
    verdict = evaluate(samples, timeline, thresholds or Thresholds(), load or CLEAN_LOAD)
    return {c.name: c.status for c in verdict.criteria}


def test_the_slope_is_the_least_squares_fit_per_hour() -> None:
    t = [0.0, 900.0, 1800.0, 2700.0]
    assert slope_per_hour(t, [100.0, 105.0, 110.0, 115.0]) == pytest.approx(20.0)
    # NaN samples (a metric missing from one scrape) are left out, not zeros.
    assert slope_per_hour(t, [100.0, math.nan, 110.0, 115.0]) == pytest.approx(20.0)
    assert math.isnan(slope_per_hour([0.0, 10.0], [1.0, 2.0]))
    assert drift_pct([100.0] * 10 + [110.0] * 10) == pytest.approx(10.0)
    assert drift_pct([100.0, 90.0]) == pytest.approx(-10.0)


def test_a_flat_noisy_soak_passes() -> None:
    samples, timeline = soak_samples()
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD)
    assert verdict.passed, [(c.name, c.measured) for c in verdict.failed]
    assert not verdict.not_measured
    rss = next(c for c in verdict.criteria if c.name == "rss_slope")
    # Steady window: 20 of the 30 minutes after the ramp, one sample per 10 s.
    assert "over 120 steady samples" in rss.detail
    assert abs(rss.measured) < 10.0


@pytest.mark.parametrize("seed", range(5))
def test_noise_alone_never_fails_a_long_soak(seed: int) -> None:
    samples, timeline = soak_samples(seed=seed)
    assert evaluate(samples, timeline, Thresholds(), CLEAN_LOAD).passed


def test_steadily_growing_memory_fails() -> None:
    samples, timeline = soak_samples(rss_mb_per_h=60.0)
    result = statuses(samples, timeline)
    assert result["rss_slope"] == "FAIL"
    assert result["rss_drift"] == "FAIL"  # +20 MB on 260 MB over the steady window
    # A slower leak hides in the drift's 5 % but not from the slope.
    samples, timeline = soak_samples(rss_mb_per_h=30.0)
    result = statuses(samples, timeline)
    assert result["rss_slope"] == "FAIL"
    assert result["rss_drift"] == "pass"
    # The threshold is configurable.
    assert statuses(samples, timeline, thresholds=Thresholds(max_rss_slope_mb_h=50.0))[
        "rss_slope"] == "pass"


def test_leaking_file_descriptors_fail() -> None:
    # One fd in ~1000 sessions kept open: tens an hour, hidden in ±3 of noise.
    samples, timeline = soak_samples(fds_per_h=40.0)
    assert statuses(samples, timeline)["fd_slope"] == "FAIL"
    samples, timeline = soak_samples(final={"open_fds": 25.0})
    result = statuses(samples, timeline)
    assert result["fds_after_settle"] == "FAIL"
    assert result["fd_slope"] == "pass"


def test_tasks_or_threads_not_back_to_baseline_fail() -> None:
    samples, timeline = soak_samples(final={"tasks": 9.0})
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD)
    assert [c.name for c in verdict.failed] == ["tasks_after_settle"]
    assert verdict.failed[0].measured == {"baseline": 4.0, "final": 9.0, "excess": 5.0}
    # Within the tolerance for background tasks: a pass.
    samples, timeline = soak_samples(final={"tasks": 6.0})
    assert statuses(samples, timeline)["tasks_after_settle"] == "pass"
    samples, timeline = soak_samples(final={"threads": 5.0})
    assert statuses(samples, timeline)["threads_after_settle"] == "FAIL"
    samples, timeline = soak_samples(final={"sessions_active": 1.0})
    assert statuses(samples, timeline)["sessions_after_settle"] == "FAIL"


def test_server_and_caller_errors_fail() -> None:
    samples, timeline = soak_samples(errors_during_load={"llm_timeout": 2.0, "internal": 1.0})
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD)
    assert [c.name for c in verdict.failed] == ["server_errors"]
    assert verdict.failed[0].measured == {
        "total": 3.0, "by_code": {"internal": 1.0, "llm_timeout": 2.0},
    }
    samples, timeline = soak_samples()
    load = {**CLEAN_LOAD, "errors": 1, "failures": ["qa: turn timed out"]}
    assert statuses(samples, timeline, load=load)["load_errors"] == "FAIL"
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, scrape_failures=1)
    assert [c.name for c in verdict.failed] == ["metrics_scrapes"]


def test_a_metric_the_server_lacks_is_not_measured_rather_than_failed() -> None:
    samples, timeline = soak_samples()
    for sample in samples:
        sample.tasks = sample.threads = math.nan
        sample.errors = None
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD)
    assert {c.name for c in verdict.not_measured} == {
        "tasks_after_settle", "threads_after_settle", "server_errors",
    }
    assert verdict.passed
    assert verdict.to_json()["criteria"]["server_errors"]["status"] == "not measured"


def test_metrics_are_parsed_from_prometheus_text() -> None:
    text = "\n".join([
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge",
        "process_resident_memory_bytes 1.048576e+08",
        "# TYPE process_open_fds gauge",
        "process_open_fds 21.0",
        "# TYPE voiceforge_asyncio_tasks gauge",
        "voiceforge_asyncio_tasks 7.0",
        "# HELP voiceforge_errors_total Error events sent",
        "# TYPE voiceforge_errors_total counter",
        'voiceforge_errors_total{category="transient",code="llm_timeout"} 2.0',
        'voiceforge_errors_total{category="permanent",code="llm_timeout"} 1.0',
        'voiceforge_errors_created{category="transient",code="llm_timeout"} 1.7e+09',
        "# HELP voiceforge_refusals_total Calls refused",
        "# TYPE voiceforge_refusals_total counter",
        "",
    ])
    sample = parse_metrics(text, t_s=3.0)
    assert sample.rss_mb == pytest.approx(100.0)
    assert sample.open_fds == 21.0 and sample.tasks == 7.0
    assert math.isnan(sample.threads)  # not exported by this server
    assert sample.errors == {"llm_timeout": 3.0}
    assert sample.refusals == {}  # declared, nothing counted yet
    assert sample.disconnects is None  # not declared at all
    assert new_counts({"llm_timeout": 1.0}, sample.errors) == {"llm_timeout": 2.0}
    assert new_counts(None, sample.errors) is None


def test_timeline_phases() -> None:
    timeline = Timeline.planned(load_start_s=1.0, ramp_s=60.0, duration_s=1800.0)
    assert timeline.steady_start_s == pytest.approx(661.0)
    assert [timeline.phase(t) for t in (0.0, 30.0, 300.0, 1000.0)] == [
        "baseline", "ramp", "warmup", "steady"]
    assert timeline.phase(1870.0) == "drain"  # callers stopped, sessions still ending
    timeline.load_end_s, timeline.final_s = 1875.0, 1895.0
    assert [timeline.phase(t) for t in (1870.0, 1880.0, 1895.0)] == ["drain", "settle", "final"]


def test_bad_settings_are_refused() -> None:
    assert main(["--callers", "0"]) == 2
    assert main(["--minutes", "0"]) == 2


@pytest.mark.timeout(120)
def test_a_short_real_soak_writes_its_report_and_plot(tmp_path: Path) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the load test (make test installs it)")
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    # 20 s of load after a 2 s ramp; the steady window is its last 2/3.
    args = ["--callers", "3", "--minutes", "0.34", "--sample-s", "2", "--settle-s", "5",
            "--max-rss-slope-mb-h", "1e9", "--max-rss-drift-pct", "1e9",
            "--json", str(out), "--plot", str(png)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    verdict = report["verdict"]
    assert verdict["passed"] is True
    assert verdict["not_measured"] == []
    assert set(verdict["criteria"]) == {
        "rss_slope", "rss_drift", "fd_slope", "fds_after_settle", "tasks_after_settle",
        "threads_after_settle", "sessions_after_settle", "server_errors", "load_errors",
        "metrics_scrapes",
    }
    for criterion in verdict["criteria"].values():
        assert {"status", "measured", "threshold"} <= criterion.keys()
    samples = report["samples"]
    phases = [s["phase"] for s in samples]
    assert phases[0] == "baseline" and phases[-1] == "final"
    assert phases.count("steady") >= 3
    assert all(s["rss_mb"] > 0 and s["open_fds"] > 0 for s in samples)
    assert max(s["sessions_active"] for s in samples) == 3
    assert samples[-1]["sessions_active"] == 0
    assert report["load"]["callers"] == 3 and report["load"]["turns"] >= 3
    assert report["config"]["ramp_s"] == pytest.approx(2.04)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _phases(timeline: Timeline, **changes: dict[str, Any]) -> list[Phase]:
    """The phases of an abuse soak over ``timeline``'s steady window, every abuser
    busy and harmless; ``changes`` sets a phase's fields by its name."""
    names = phase_names()
    length = (timeline.load_stop_s - timeline.steady_start_s) / len(names)
    phases = []
    for index, name in enumerate(names):
        start = timeline.steady_start_s + index * length
        abuser = {"connections": 1, "frames_sent": 10, "closed_by_server": {},
                  "errors_received": {"malformed_frame": 3}}
        phase = Phase(name, start, start + length, turns=5,
                      abusers={n: dict(abuser) for n in abusers_of(name)})
        for key, value in changes.get(name, {}).items():
            setattr(phase, key, value)
        phases.append(phase)
    return phases


def test_with_abuse_a_step_between_phases_is_no_leak_but_growth_within_them_is() -> None:
    samples, timeline = soak_samples()
    phases = _phases(timeline)
    by_name = {p.name: p for p in phases}
    first_all, second_all = by_name["all"], by_name["all 2"]
    for sample in samples:
        if first_all.start_s <= sample.t_s:  # the high-water mark the first peak leaves
            sample.rss_mb += 15.0
        for phase in (first_all, second_all):  # seven abusers' connections and buffers
            if phase.start_s <= sample.t_s < phase.end_s:
                sample.open_fds += 7
                sample.rss_mb += 30.0
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=phases)
    assert verdict.passed, [(c.name, c.measured) for c in verdict.failed]
    assert "of the second abuse cycle" in next(
        c for c in verdict.criteria if c.name == "fd_slope").detail
    leaking, timeline = soak_samples(rss_mb_per_h=60.0, fds_per_h=40.0)
    result = {c.name: c.status for c in evaluate(
        leaking, timeline, Thresholds(), CLEAN_LOAD, phases=_phases(timeline)).criteria}
    assert result["rss_slope"] == result["fd_slope"] == result["fds_after_abuse"] == "FAIL"
    # Memory the second cycle adds, or files kept open after the abuse.
    samples, timeline = soak_samples()
    phases = _phases(timeline)
    for sample in samples:
        if sample.t_s >= phases[-1].start_s:
            sample.open_fds += 4
            sample.rss_mb += 20.0
    result = {c.name: c.status for c in evaluate(
        samples, timeline, Thresholds(), CLEAN_LOAD, phases=phases).criteria}
    assert result["fds_after_abuse"] == result["rss_after_abuse"] == "FAIL"


@pytest.mark.parametrize("seed", range(5))
def test_noise_alone_never_fails_a_long_abuse_soak(seed: int) -> None:
    samples, timeline = soak_samples(seed=seed)
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=_phases(timeline))
    assert verdict.passed, [(c.name, c.measured) for c in verdict.failed]


def test_abuse_phases_fail_on_a_normal_callers_error_or_an_abuser_cut_off() -> None:
    samples, timeline = soak_samples(errors_during_load={"malformed_frame": 40.0})
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=_phases(timeline))
    assert verdict.passed, [(c.name, c.measured) for c in verdict.failed]
    assert not verdict.not_measured
    # A code no abuser provoked is still a server error.
    samples, timeline = soak_samples(errors_during_load={"llm_timeout": 1.0})
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=_phases(timeline))
    assert [c.name for c in verdict.failed] == ["server_errors"]
    assert verdict.failed[0].measured["not_provoked_by_abusers"] == {"llm_timeout": 1.0}
    samples, timeline = soak_samples()
    failing = _phases(timeline, audio_2x={"errors": 1, "error_codes": {"input_overloaded": 1}})
    verdict = evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=failing)
    assert [c.name for c in verdict.failed] == ["abuse_phases"]
    assert verdict.failed[0].measured["audio_2x"]["errors"] == 1
    assert "abuse_phases" not in statuses(samples, timeline)  # a soak without --abuse
    cut = _phases(timeline)
    cut[1].abusers["costly_control"]["closed_by_server"] = {"1008": 1}
    assert [c.name for c in evaluate(samples, timeline, Thresholds(), CLEAN_LOAD,
                                     phases=cut).failed] == ["abuse_phases"]
    # The slow reader's close is by design; an abuser that never got a call is not.
    by_design = _phases(timeline)
    by_design[-3].abusers["slow_reader"]["closed_by_server"] = {"reset": 2}
    assert by_design[-3].name == "slow_reader 2"
    assert evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=by_design).passed
    idle = _phases(timeline)
    idle[-2].abusers["text_frames"]["connections"] = 0
    assert not evaluate(samples, timeline, Thresholds(), CLEAN_LOAD, phases=idle).passed
    assert not evaluate(samples, timeline, Thresholds(), CLEAN_LOAD,
                        phases=_phases(timeline)[:-1]).passed


@pytest.mark.timeout(180)
def test_a_short_soak_with_every_abuser_harms_no_caller_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the load test (make test installs it)")
    out = tmp_path / "soak.json"
    # 27 s of load after a 2.7 s ramp; the last 18 s (the steady window) in 19 phases of
    # ~1 s: none, each abuser alone, all together, between, the same again, after.
    args = ["--abuse", "--callers", "2", "--minutes", "0.45", "--sample-s", "2",
            "--settle-s", "5", "--max-rss-slope-mb-h", "1e9", "--max-rss-drift-pct", "1e9",
            "--json", str(out)]
    rc = main(args)
    report = json.loads(out.read_text())
    verdict = report["verdict"]
    assert rc == 0 and verdict["passed"] is True, verdict["failed"]
    assert verdict["criteria"]["abuse_phases"]["status"] == "pass"
    for name in ("load_errors", "server_errors", "sessions_after_settle", "tasks_after_settle",
                 "fds_after_settle", "threads_after_settle"):
        assert verdict["criteria"][name]["status"] == "pass", name
    phases = report["abuse_phases"]
    assert [p["name"] for p in phases] == phase_names()
    for phase in phases:
        assert sorted(phase["abusers"]) == sorted(abusers_of(phase["name"]))
        assert all(a["frames_sent"] > 0 and a["connections"] >= 1
                   for a in phase["abusers"].values()), phase
        assert phase["errors"] == 0 and phase["failed_turns"] == 0, phase
    assert sum(p["turns"] for p in phases) >= 2
    assert report["samples"][-1]["sessions_active"] == 0
