"""Runs scenarios: each under a wall-clock bound and a log watch, a crash or an
unexpected server traceback reported as a failed invariant, never raised."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from loadtest.harness import watching_logs
from loadtest.reliability.common import Context, Result
from loadtest.reliability.registry import SCENARIOS

COMMAND = "python -m loadtest.reliability"


SCENARIO_LIMIT_S = {False: 300.0, True: 120.0}
"""Wall-clock bound on any one scenario (full, quick)."""
FULL_LIMIT_S = {"abuse_impact": 900.0}
"""Full runs that take longer by design: 29 windows of 15 s, and a start and a stop."""


def limit_s(name: str, quick: bool) -> float:
    return SCENARIO_LIMIT_S[quick] if quick else FULL_LIMIT_S.get(name, SCENARIO_LIMIT_S[False])


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_scenario(
    name: str, quick: bool, http: httpx.AsyncClient, progress: Callable[[str], None] = _progress
) -> dict[str, Any]:
    """Run one scenario; its JSON entry (never raises: a crash is a failed invariant)."""
    result = Result()
    error: str | None = None
    started = time.monotonic()
    with watching_logs() as watch:
        ctx = Context(quick, http, watch, result, progress)
        try:
            await asyncio.wait_for(SCENARIOS[name](ctx), limit_s(name, quick))
        except Exception as exc:
            error = "".join(traceback.format_exception(exc)).strip()
            if isinstance(exc, TimeoutError):
                error = f"did not finish within {limit_s(name, quick):g} s\n{error}"
        await asyncio.sleep(0.1)  # late log records of the servers just stopped
    tracebacks = [*result.server_tracebacks, *watch.tracebacks()]
    result.check("no server traceback logged", not tracebacks, tracebacks[:5])
    if error is not None:
        result.check("the scenario ran to the end", False, error.splitlines()[-1])
    passed = all(c.passed for c in result.checks)
    return {
        "passed": passed,
        "duration_s": round(time.monotonic() - started, 2),
        "settings": result.settings,
        "figures": result.figures,
        "invariants": [dataclasses.asdict(c) for c in result.checks],
        "server_tracebacks": tracebacks,
        "warnings_logged": len(watch.records),
        "notes": result.notes,
        "error": error,
    }


async def run(
    names: list[str], quick: bool, progress: Callable[[str], None] = _progress
) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "scenarios": {},
    }
    async with httpx.AsyncClient(timeout=10.0) as http:
        for index, name in enumerate(names, 1):
            progress(f"[{index}/{len(names)}] {name}")
            entry = await run_scenario(name, quick, http, progress)
            report["scenarios"][name] = entry
            failed = [c["invariant"] for c in entry["invariants"] if not c["passed"]]
            progress(f"    {'PASS' if entry['passed'] else 'FAIL'} in {entry['duration_s']:.1f} s"
                     + (f"; failed: {'; '.join(failed)}" if failed else ""))
    report["total_s"] = round(time.monotonic() - started, 1)
    report["passed"] = all(s["passed"] for s in report["scenarios"].values())
    return report
