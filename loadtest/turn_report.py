"""Per-policy figures of a ``loadtest.turns`` run: the JSON summary, the table, the plot."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from loadtest.latency import percentile


class TrialLike(Protocol):
    kind: str
    policy: str
    valid: bool
    cut_off: bool | None
    replied: bool | None
    latency_ms: float | None
    server_ms: float | None
    cancelled: bool | None
    stop_ms: float | None
    tool_calls: int | None


def _quantiles(values: list[float]) -> dict[str, float | None]:
    # JSON has no NaN: a quantile of nothing is null.
    return {q: (round(percentile(values, n), 1) if values else None)
            for q, n in (("p50", 50), ("p95", 95))}


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def policy_figures(trials: Sequence[TrialLike]) -> dict[str, Any]:
    """The figures of one policy's trials (invalid trials are counted, not scored)."""
    valid = [t for t in trials if t.valid]
    paused = [t for t in valid if t.kind == "paused"]
    complete = [t for t in valid if t.kind == "complete"]
    turns = paused + complete
    backchannels = [t for t in valid if t.kind == "backchannel"]
    interruptions = [t for t in valid if t.kind == "interruption"]
    cut = sum(bool(t.cut_off) for t in paused)
    bc_cancelled = sum(bool(t.cancelled) for t in backchannels)
    missed = sum(not t.cancelled for t in interruptions)
    return {
        "trials": len(trials),
        "invalid": len(trials) - len(valid),
        "paused": len(paused),
        "false_cut_offs": cut,
        "false_cut_off_rate": _rate(cut, len(paused)),
        "turns_without_reply": sum(not t.replied for t in turns),
        "latency_ms": _quantiles([t.latency_ms for t in turns if t.latency_ms is not None]),
        "latency_complete_ms": _quantiles(
            [t.latency_ms for t in complete if t.latency_ms is not None]
        ),
        "latency_paused_ms": _quantiles(
            [t.latency_ms for t in paused if t.latency_ms is not None and not t.cut_off]
        ),
        "server_latency_ms": _quantiles([t.server_ms for t in turns if t.server_ms is not None]),
        "turns_calling_a_tool": sum(bool(t.tool_calls) for t in turns),
        "latency_complete_no_tool_ms": _quantiles(
            [t.latency_ms for t in complete if t.latency_ms is not None and not t.tool_calls]
        ),
        "backchannels": len(backchannels),
        "backchannels_cancelling": bc_cancelled,
        "backchannel_cancel_rate": _rate(bc_cancelled, len(backchannels)),
        "interruptions": len(interruptions),
        "interruptions_missed": missed,
        "interruption_miss_rate": _rate(missed, len(interruptions)),
        "interruption_stop_ms": _quantiles(
            [t.stop_ms for t in interruptions if t.stop_ms is not None]
        ),
    }


def summarize(trials: Sequence[TrialLike], policies: Sequence[str]) -> dict[str, Any]:
    return {
        "per_policy": {
            name: policy_figures([t for t in trials if t.policy == name]) for name in policies
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _pair(q: dict[str, float | None]) -> str:
    return "/".join("-" if q[k] is None else f"{q[k]:.0f}" for k in ("p50", "p95"))


def print_table(report: dict[str, Any]) -> None:
    header = (f"{'policy':22s} {'cut-offs':>10s} {'latency p50/p95':>16s} "
              f"{'complete p50/p95':>17s} {'no reply':>8s} {'bc cancel':>10s} "
              f"{'int missed':>10s} {'stop p50/p95':>13s}")
    print()
    print(header)
    print("-" * len(header))
    for name, f in report["per_policy"].items():
        print(
            f"{name:22s} {f['false_cut_offs']:>4d}/{f['paused']:<5d}"
            f" {_pair(f['latency_ms']):>16s} {_pair(f['latency_complete_ms']):>17s}"
            f" {f['turns_without_reply']:>8d}"
            f" {f['backchannels_cancelling']:>4d}/{f['backchannels']:<5d}"
            f" {f['interruptions_missed']:>4d}/{f['interruptions']:<5d}"
            f" {_pair(f['interruption_stop_ms']):>13s}"
        )
    for name, f in report["per_policy"].items():
        print(f"{name}: {f['turns_calling_a_tool']} turns' replies called a tool; complete"
              f" turns without a call p50/p95 {_pair(f['latency_complete_no_tool_ms'])} ms")
    print("latency: acoustic end of speech (sent) -> first reply audio (received), ms;"
          " stop: interruption onset -> agent audio stopped at the client, ms")
    skipped = report.get("skipped_policies") or {}
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    cost = report.get("model_cost")
    if report.get("cost_metric"):
        print(f"model cost ({report['cost_metric']}): "
              f"{'not exposed by the server' if cost is None else cost}")


def plot_tradeoff(report: dict[str, Any], path: Path) -> None:
    """Left: false cut-off rate against latency, one point per policy (p50 filled,
    p95 hollow); right: over-speech errors per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(report["per_policy"])
    for name in names:
        f = report["per_policy"][name]
        rate = f["false_cut_off_rate"]
        p50, p95 = f["latency_ms"]["p50"], f["latency_ms"]["p95"]
        if rate is None or p50 is None:
            continue
        (point,) = left.plot([p50], [100 * rate], "o", label=name)
        if p95 is not None:
            left.plot([p50, p95], [100 * rate] * 2, "-", color=point.get_color(), alpha=0.5)
            left.plot([p95], [100 * rate], "o", mfc="none", color=point.get_color())
        left.annotate(name, (p50, 100 * rate), textcoords="offset points", xytext=(5, 5),
                      fontsize=8)
    points = sorted(
        (f["latency_ms"]["p50"], 100 * f["false_cut_off_rate"])
        for f in report["per_policy"].values()
        if f["latency_ms"]["p50"] is not None and f["false_cut_off_rate"] is not None
    )
    if len(points) > 1:
        left.plot(*zip(*points, strict=True), ":", color="grey", linewidth=1)
    left.set_ylim(-3, 103)
    left.set_xlabel("acoustic end of speech → first reply audio at the client, ms (p50 ● p95 ○)")
    left.set_ylabel("false cut-offs on paused utterances, %")
    left.set_title("Turn-taking trade-off per policy")
    left.grid(alpha=0.3)
    if names:
        left.legend(fontsize=8)
    x = range(len(names))
    bc = [100 * (report["per_policy"][n]["backchannel_cancel_rate"] or 0.0) for n in names]
    missed = [100 * (report["per_policy"][n]["interruption_miss_rate"] or 0.0) for n in names]
    right.bar([i - 0.2 for i in x], bc, width=0.4, label="backchannels/noise that cancelled")
    right.bar([i + 0.2 for i in x], missed, width=0.4, label="interruptions that did not")
    right.set_xticks(list(x))
    right.set_xticklabels(names, rotation=20, fontsize=8)
    right.set_ylabel("%")
    right.set_ylim(0, 105)
    right.set_title("Over the agent's speech")
    right.legend(fontsize=8)
    fig.suptitle(f"loadtest.turns, {report['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
