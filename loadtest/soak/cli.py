"""``python -m loadtest.soak``: options, the server, the run, the verdict and the files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import loadtest.soak as package
from loadtest.latency import spawned_server
from loadtest.report import print_summary
from loadtest.runner import prepare_speech
from loadtest.scenarios import SCENARIOS
from loadtest.soak.output import plot, print_phases, print_verdict, report_json
from loadtest.soak.run import SoakConfig, soak
from loadtest.soak.verdict import Thresholds, evaluate

_T = TypeVar("_T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=package.__doc__.splitlines()[0] if package.__doc__ else None,
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
    parser.add_argument("--abuse", action="store_true",
                        help="alongside the callers, the abusive clients of loadtest.abusers: "
                        "none, then each alone, then all together, in equal phases")
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
                        os.environ.get("VOICEFORGE_API_KEY"), args.abuse)
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
                       result.scrape_failures, result.phases)
    print_summary(result.load)
    if result.phases is not None:
        print_phases(result.phases)
    print_verdict(verdict)
    if args.json:
        args.json.write_text(json.dumps(report_json(result, thresholds, verdict), indent=2,
                                        default=str))
        print(f"report written to {args.json}")
    if args.plot:
        plot(result, verdict, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if verdict.passed else 1
