"""Turn a run's raw figures into the JSON report, a printed summary and PNG plots."""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from loadtest.latency import percentile
from loadtest.runner import LoadConfig
from loadtest.scenarios import Stats, TurnResult


def _quantiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    # JSON has no NaN: a quantile of nothing is null.
    return {f"p{q}": (round(percentile(values, q), 1) if values else None) for q in qs}


def _figures(
    turns: list[TurnResult], barge_in: list[float], barge_in_acoustic: list[float]
) -> dict[str, Any]:
    return {
        "turns": len(turns),
        "acoustic_latency_ms": _quantiles(
            [t.acoustic_ms for t in turns if t.acoustic_ms is not None]
        ),
        "latency_ms": _quantiles([t.server_ms for t in turns if t.server_ms is not None]),
        "client_latency_ms": _quantiles([t.client_ms for t in turns if t.client_ms is not None]),
        "server_overhead_ms": _quantiles(
            [t.overhead_ms for t in turns if t.overhead_ms is not None]
        ),
        "end_of_turn_wait_ms": _quantiles(
            [t.end_of_turn_wait_ms for t in turns if t.end_of_turn_wait_ms is not None]
        ),
        "input_lag_ms": _quantiles([t.input_lag_ms for t in turns if t.input_lag_ms is not None]),
        "barge_in_ms": {**_quantiles(barge_in, (50, 95)), "count": len(barge_in)},
        "barge_in_acoustic_ms": {
            **_quantiles(barge_in_acoustic, (50, 95)),
            "count": len(barge_in_acoustic),
        },
    }


def _ratio(on: float | None, off: float | None) -> float | None:
    if on is None or off is None or off == 0 or math.isnan(on) or math.isnan(off):
        return None
    return round(on / off, 3)


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    config: LoadConfig = raw["config"]
    stats: Stats = raw["stats"]
    report: dict[str, Any] = {
        "callers": config.callers,
        "duration_s": config.duration_s,
        "ramp_s": config.ramp_s,
        "scenarios": config.scenarios,
        "url": config.url,
        **_figures(
            stats.turns,
            [ms for _, ms in stats.barge_in_ms],
            [ms for _, ms in stats.barge_in_acoustic_ms],
        ),
        "completed": sum(t.status == "completed" for t in stats.turns),
        "errors": stats.errors,
        "error_codes": dict(stats.error_codes),
        "failures": stats.failures[:20],
        "sessions": stats.sessions,
        "dropped_sessions": stats.dropped_sessions,
        "aborted_sessions": stats.aborted_sessions,
        "underruns": stats.underruns,
        "noise_false_turns": stats.noise_false_turns,
        "server": {k: None if v is None else round(v, 1) for k, v in raw["server"].items()},
        "loadgen_cpu_percent": round(raw["loadgen_cpu_percent"], 1),
        "wall_s": round(raw["wall_s"], 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if config.compare is not None:
        variants = {
            name: _figures(
                [t for t in stats.turns if t.variant == name],
                [ms for v, ms in stats.barge_in_ms if v == name],
                [ms for v, ms in stats.barge_in_acoustic_ms if v == name],
            )
            for name in ("on", "off")
        }
        ratios = {
            metric: {
                q: _ratio(variants["on"][metric][q], variants["off"][metric][q])
                for q in ("p50", "p95")
            }
            for metric in (
                "acoustic_latency_ms", "latency_ms", "client_latency_ms", "server_overhead_ms"
            )
        }
        report["compare"] = {"field": config.compare, **variants, "ratio_on_off": ratios}
    report["_turns"] = stats.turns  # for the plots; dropped before JSON
    return report


def _fmt(q: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {'-' if v is None else f'{v:.0f}'}" for k, v in q.items())


def print_summary(report: dict[str, Any]) -> None:
    print(
        f"\n{report['callers']} callers, {report['wall_s']:.0f} s: {report['turns']} turns "
        f"({report['completed']} completed), {report['sessions']} sessions, "
        f"{report['errors']} errors, {report['dropped_sessions']} dropped, "
        f"{report['underruns']} underruns"
    )
    print(f"  acoustic end -> first audio, client   {_fmt(report['acoustic_latency_ms'])} ms")
    print(f"  VAD end -> first audio, client        {_fmt(report['client_latency_ms'])} ms")
    print(f"  VAD end -> first audio, server        {_fmt(report['latency_ms'])} ms")
    print(f"  end of turn -> first audio (overhead) {_fmt(report['server_overhead_ms'])} ms")
    print(f"  end of turn wait (silence + input lag) {_fmt(report['end_of_turn_wait_ms'])} ms")
    print(f"  input lag (wait beyond the silence)   {_fmt(report['input_lag_ms'])} ms")
    print(f"  barge-in: speech sent -> clear        {_fmt(report['barge_in_ms'])}")
    print(f"  barge-in: acoustic onset -> clear     {_fmt(report['barge_in_acoustic_ms'])}")
    server = report["server"]
    shown = (
        f"CPU {server['cpu_percent']:.0f}%, RSS {server['rss_mb_before']:.0f} -> "
        f"{server['rss_mb_max']:.0f} MB max" if server["cpu_percent"] is not None
        else "CPU and RSS n/a (a pool of workers: /metrics shows the one that answered)"
    )
    print(f"  server: {shown}; load generator CPU {report['loadgen_cpu_percent']:.0f}%")
    if report["error_codes"] or report["failures"]:
        print(f"  error codes {report['error_codes']}; failures {report['failures'][:5]}")
    compare = report.get("compare")
    if compare:
        for name in ("on", "off"):
            print(
                f"  {compare['field']}={name}: {compare[name]['turns']} turns, "
                f"acoustic latency {_fmt(compare[name]['acoustic_latency_ms'])}, "
                f"server latency {_fmt(compare[name]['latency_ms'])}, "
                f"overhead {_fmt(compare[name]['server_overhead_ms'])}"
            )
        print(f"  ratio on/off: {compare['ratio_on_off']}")


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def plot_distribution(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    turns: list[TurnResult] = report["_turns"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, values in (
        ("client, from acoustic end", [t.acoustic_ms for t in turns if t.acoustic_ms is not None]),
        ("client, from VAD end", [t.client_ms for t in turns if t.client_ms is not None]),
        ("server, from VAD end", [t.server_ms for t in turns if t.server_ms is not None]),
    ):
        if values:
            left.hist(values, bins=30, alpha=0.6, label=label)
    left.set_xlabel("end of speech → first audio, ms")
    left.set_ylabel("turns")
    left.legend()
    overhead = [t.overhead_ms for t in turns if t.overhead_ms is not None]
    if overhead:
        right.hist(overhead, bins=30, color="tab:green", alpha=0.8)
    right.set_xlabel("end of turn → first audio (server overhead), ms")
    fig.suptitle(f"{report['callers']} callers, {report['turns']} turns, {report['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(reports: list[dict[str, Any]], metric: str, budget_ms: float, path: Path) -> None:
    """Left: the budget metric against its budget; right: end-of-speech latency
    (where an input path falling behind shows) and errors, against callers."""
    plt = pyplot()
    callers = [r["callers"] for r in reports]
    fig, (left, middle) = plt.subplots(1, 2, figsize=(13, 4.5))
    panels = ((left, (metric,)), (middle, ("latency_ms", "acoustic_latency_ms")))
    for axis, names in panels:
        for name in names:
            for q, style in (("p50", "o-"), ("p95", "s-")):
                # Reports written before the acoustic figure existed lack it.
                values = [(r.get(name) or {}).get(q) or 0.0 for r in reports]
                axis.plot(callers, values, style, label=f"{name} {q}")
        axis.set_xlabel("concurrent callers")
        axis.set_ylabel("ms")
    left.axhline(budget_ms, color="r", linestyle=":", label=f"budget {budget_ms:.0f} ms")
    left.legend(fontsize=8, loc="upper left")
    left.set_title(f"{metric} vs callers")
    right = middle.twinx()
    right.plot(callers, [r["errors"] + r["underruns"] + r["dropped_sessions"] for r in reports],
               "x--", color="tab:red", label="errors + underruns + drops")
    right.set_ylabel("count")
    lines, labels = middle.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    middle.legend(lines + more, labels + more_labels, fontsize=8, loc="upper left")
    middle.set_title("End of speech (VAD, server; acoustic, client) → first audio, and errors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> None:
    """Lay ``figure`` out, write it to ``path`` (folders made) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)

