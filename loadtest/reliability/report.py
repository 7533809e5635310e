"""The report: the table of figures on stdout and the JSON file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_UNITS = (("_per_s", "/s"), ("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_count", "count"),
          ("_bytes", "bytes"))


def _unit(key: str) -> str:
    parts = key.split(".")
    if parts[-1] == "n":
        return "count"
    for part in reversed(parts):
        for suffix, unit in _UNITS:
            if part.endswith(suffix):
                return unit
    return ""


def flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, item in figures.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item and set(item) == {"n", "p50", "p95", "max"}:
            rows.append((name, item))
        elif isinstance(item, dict) and item and not name.endswith(("_body", "_reasons")):
            rows.extend(flatten(item, f"{name}."))
        else:
            rows.append((name, item))
    return rows


def _format(item: Any) -> str:
    if isinstance(item, dict) and set(item) == {"n", "p50", "p95", "max"}:
        if not item["n"]:
            return "n=0"
        return f"p50 {_format(item['p50'])}  p95 {_format(item['p95'])}  max " \
               f"{_format(item['max'])}  (n={item['n']})"
    if isinstance(item, bool):
        return "yes" if item else "no"
    if isinstance(item, float):
        if item.is_integer() and abs(item) < 1e15:
            return str(int(item))
        return f"{item:.3f}".rstrip("0") if abs(item) < 10 else f"{item:.1f}"
    if isinstance(item, list):
        return ", ".join(_format(i) for i in item) if item else "-"
    if item is None:
        return "-"
    if isinstance(item, dict):
        return json.dumps(item, default=str)
    return str(item)


def print_table(report: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    rows: list[tuple[str, str, str, str]] = []
    for name, entry in report["scenarios"].items():
        verdict = "PASS" if entry["passed"] else "FAIL"
        rows.append((f"{name} [{verdict}, {entry['duration_s']:.1f} s]", "", "", ""))
        for key, item in flatten(entry["figures"]):
            rows.append(("", key, _format(item), _unit(key)))
        for check in entry["invariants"]:
            if not check["passed"]:
                rows.append(("", "FAILED: " + check["invariant"], check["detail"][:200], ""))
    width = [max(len(row[i]) for row in rows) if rows else 0 for i in range(4)]
    width[0] = min(width[0], 40)
    width[1] = min(width[1], 64)
    for scenario, key, text, unit in rows:
        if scenario:
            print(f"\n{scenario}", file=out)
            continue
        print(f"  {key:<{width[1]}}  {text}{' ' + unit if unit else ''}", file=out)
    verdict = "all invariants held" if report["passed"] else "SOME INVARIANTS FAILED"
    print(f"\n{verdict}; {len(report['scenarios'])} scenarios in {report['total_s']:.0f} s",
          file=out)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
