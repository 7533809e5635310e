"""``python -m loadtest.reliability``: options, then the run, the table and the
report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import loadtest.reliability as package
from loadtest.reliability.registry import SCENARIOS
from loadtest.reliability.report import print_table, write_json
from loadtest.reliability.runner import COMMAND, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(package.__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true",
                        help="every scenario smaller and faster (what the tests run)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser


class _Quiet(logging.Handler):
    """Keeps the servers' warnings off the terminal while the table is made
    (they are counted per scenario in the report instead)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
                  file=sys.stderr)
            return 2
    root = logging.getLogger()
    quiet = _Quiet(logging.WARNING)
    root.addHandler(quiet)
    try:
        report = asyncio.run(run(names, args.quick))
    finally:
        root.removeHandler(quiet)
    command = [COMMAND, *(argv if argv is not None else sys.argv[1:])]
    report["command"] = " ".join(command)
    print_table(report)
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}", file=sys.stderr)
    return 0 if report["passed"] else 1
