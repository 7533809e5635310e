"""What a run leaves: the JSON report, the PNG of the curves, the verdict printed."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.report import to_json
from loadtest.soak.abuse import Phase
from loadtest.soak.run import SoakResult
from loadtest.soak.samples import WARMUP_FRACTION
from loadtest.soak.verdict import Thresholds, Verdict, finite_points, slope_per_hour, steady_window


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
        "abuse_phases": None if result.phases is None else [p.to_json() for p in result.phases],
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
        t, rss = finite_points([s.t_s for s in steady], [s.rss_mb for s in steady])
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


def print_phases(phases: list[Phase]) -> None:
    print("\nabuse phases (normal callers; latency: acoustic end of speech -> first audio):")
    print(f"  {'phase':16s} {'min':>11s} {'turns':>6s} {'errors':>6s} {'p50 ms':>7s} "
          f"{'p95 ms':>7s}  abusers: frames/s, MB/s in, calls, closed by server")
    for p in phases:
        abusers = "; ".join(
            f"{name} {a['frames_per_s']}/s {a['mb_sent_per_s']} MB/s {a['connections']} "
            f"calls {a['closed_by_server'] or ''}".rstrip() for name, a in p.abusers.items())
        print(f"  {p.name:16s} {p.start_s / 60:5.1f}-{p.end_s / 60:5.1f} {p.turns:6d} "
              f"{p.errors:6d} {_ms(p.latency_p50_ms):>7s} {_ms(p.latency_p95_ms):>7s}  "
              f"{abusers or '-'}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
