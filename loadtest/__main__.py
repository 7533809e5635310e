"""Many simulated callers over the real protocol: latency percentiles, barge-in
reaction, underruns, errors, server CPU and memory, and capacity.

    python -m loadtest --callers 50 --duration 60 [--url ws://127.0.0.1:8000/ws]
    python -m loadtest --sweep 50,100,200 --budget-ms 50 --budget-metric server_overhead_ms

Without ``--url`` it starts ``voiceforge serve --profile PROFILE`` (default
``bench``) on 127.0.0.1 in a child process; it only ever targets that or the
address given explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from loadtest.latency import spawned_server
from loadtest.report import plot_distribution, plot_sweep, print_summary, summarize, to_json
from loadtest.runner import LoadConfig, prepare_speech, run_load
from loadtest.scenarios import SCENARIOS

BUDGET_METRICS = ("server_overhead_ms", "latency_ms", "client_latency_ms", "acoustic_latency_ms")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--url", help="ws://HOST:PORT/ws of a running server (default: start one)")
    parser.add_argument("--profile", default="bench", help="profile of the started server")
    parser.add_argument("--workers", type=int, default=1,
                        help="`voiceforge serve --workers` of the started server (default 1)")
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds, after the ramp")
    parser.add_argument("--ramp", type=float, default=None, help="seconds to start all callers "
                        "(default: a tenth of the duration)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, one per caller in turn: {', '.join(SCENARIOS)}")
    parser.add_argument("--compare", metavar="FIELD",
                        help="a session.update field alternated on/off between sessions: a "
                        "boolean (speculative_transcript, speculative_response, "
                        "first_chunk_at_clause) or FIELD=ON,OFF with JSON values "
                        "(first_chunk_max_words=4,0)")
    parser.add_argument("--turn-timeout", type=float, default=60.0)
    parser.add_argument("--sweep", help="comma-separated caller counts, run in order")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--budget-metric", choices=BUDGET_METRICS, default="server_overhead_ms")
    parser.add_argument("--max-input-lag-ms", type=float, default=100.0,
                        help="p95 input lag allowed for `capacity` (not for "
                        "`capacity_budget_only`)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the latency distribution PNG here")
    parser.add_argument("--sweep-plot", type=Path, help="write latency/errors vs callers here")
    return parser


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    with spawned_server(args.profile, echo=False, workers=args.workers) as url:
        print(f"started `voiceforge serve --profile {args.profile} --workers {args.workers}` "
              f"at {url}", file=sys.stderr)
        yield url


def within_budget(
    report: dict[str, Any], metric: str, budget_ms: float, max_input_lag_ms: float | None = None
) -> bool:
    """p95 of ``metric`` within budget, nothing failed, nothing starved; with
    ``max_input_lag_ms``, the input path also kept up with real time (an overloaded
    server detects the end of turn late, which no end-of-turn-based figure shows)."""
    p95 = report[metric]["p95"]
    lag = report["input_lag_ms"]["p95"] if "input_lag_ms" in report else None
    return (
        p95 is not None
        and p95 <= budget_ms
        and report["errors"] == 0
        and report["dropped_sessions"] == 0
        and report["underruns"] == 0
        and (max_input_lag_ms is None or (lag is not None and lag <= max_input_lag_ms))
    )


def _run_once(args: argparse.Namespace, url: str, callers: int, speech: Any) -> dict[str, Any]:
    config = LoadConfig(
        url=url,
        callers=callers,
        duration_s=args.duration,
        scenarios=[s.strip() for s in args.scenarios.split(",") if s.strip()],
        ramp_s=args.ramp if args.ramp is not None else args.duration / 10,
        turn_timeout_s=args.turn_timeout,
        compare=args.compare,
        api_key=os.environ.get("VOICEFORGE_API_KEY"),
    )
    report = summarize(_run(run_load(config, speech)))
    print_summary(report)
    return report


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """uvloop when installed (uvicorn[standard] brings it): the generator shares the
    machine with the server, so its own CPU per caller matters."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    speech = prepare_speech()
    try:
        levels = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.callers]
    except ValueError:
        print(f"--sweep takes comma-separated integers, got {args.sweep!r}", file=sys.stderr)
        return 2
    reports: list[dict[str, Any]] = []
    with _server(args) as url:
        for callers in levels:
            try:
                report = _run_once(args, url, callers, speech)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            reports.append(report)
            if args.sweep and not within_budget(report, args.budget_metric, args.budget_ms):
                print(f"{callers} callers exceed the budget; the sweep stops here")
                break
    if args.plot:
        plot_distribution(reports[-1] if not args.sweep else _last_passing(reports, args),
                          args.plot)
    if args.sweep:
        budget_only = max((r["callers"] for r in reports
                           if within_budget(r, args.budget_metric, args.budget_ms)), default=0)
        capacity = max((r["callers"] for r in reports
                        if within_budget(r, args.budget_metric, args.budget_ms,
                                         args.max_input_lag_ms)), default=0)
        print(f"capacity: {capacity} callers with {args.budget_metric} p95 <= "
              f"{args.budget_ms:.0f} ms, no errors, no drops, no underruns and input lag p95 <= "
              f"{args.max_input_lag_ms:.0f} ms ({budget_only} without the input-lag bound)")
        if args.sweep_plot:
            plot_sweep(reports, args.budget_metric, args.budget_ms, args.sweep_plot)
        output: dict[str, Any] = {
            "budget_metric": args.budget_metric,
            "budget_ms": args.budget_ms,
            "capacity": capacity,
            "capacity_budget_only": budget_only,
            "max_input_lag_ms": args.max_input_lag_ms,
            "levels": [to_json(r) for r in reports],
        }
    else:
        output = to_json(reports[0])
    if args.json:
        args.json.write_text(json.dumps(output, indent=2, default=str))
    return 0 if all(r["errors"] == 0 for r in reports[:1]) else 1


def _last_passing(reports: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    passing = [r for r in reports
               if within_budget(r, args.budget_metric, args.budget_ms, args.max_input_lag_ms)]
    return passing[-1] if passing else reports[0]


if __name__ == "__main__":
    sys.exit(main())
