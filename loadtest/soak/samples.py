"""What the soak records: one scrape of ``/metrics`` as a ``Sample``, and the
``Timeline`` of the run's phases (baseline, ramp, warm-up, steady, drain, settle)."""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

NAN = float("nan")


WARMUP_FRACTION = 1 / 3
"""Share of the post-ramp duration left out of the steady window."""


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
