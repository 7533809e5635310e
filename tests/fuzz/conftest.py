"""Hypothesis profiles and budgets for the fuzz tests, and an optional stats report.

Profiles (environment ``HYPOTHESIS_PROFILE``, default ``ci``):

* ``ci``: bounded for every test run: 300 examples per decoder property, and 40
  WebSocket sessions of 1 to 20 frames (about 150 frames) for the endpoint property;
  the folder takes seconds.
* ``long``: ``VOICEFORGE_FUZZ_EXAMPLES`` examples per decoder property (default
  20000); the endpoint property opens ``VOICEFORGE_FUZZ_WS_SESSIONS`` sessions
  (default: examples / 10; about 4 frames each on average).

    HYPOTHESIS_PROFILE=long VOICEFORGE_FUZZ_EXAMPLES=20000 \\
        VOICEFORGE_FUZZ_REPORT=out/fuzz.json .venv/bin/pytest tests/fuzz -q

``VOICEFORGE_FUZZ_REPORT``: a path; the run writes there what it tried and saw
(examples and frames per test, outcome and error-code counts, wall times) as JSON.

Hypothesis keeps nothing in the repository: no example database, and its storage
directory (constants cache) goes to the temp directory unless
``HYPOTHESIS_STORAGE_DIRECTORY`` says otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.fuzz.stats import STATS

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"voiceforge-hypothesis-{os.getuid()}")

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_EXAMPLES = int(os.environ.get("VOICEFORGE_FUZZ_EXAMPLES", "20000"))

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "derandomize": False,
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=300, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=LONG_EXAMPLES, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(PROFILE)

LONG = PROFILE == "long"
WS_MAX_FRAMES = 20
"""Frames per WebSocket session (one hypothesis example); about half that on average."""
WS_SESSIONS = (
    int(os.environ.get("VOICEFORGE_FUZZ_WS_SESSIONS", str(max(50, LONG_EXAMPLES // 10))))
    if LONG
    else 40
)
TEST_TIMEOUT_S = 3600 if LONG else 300
"""pytest-timeout per test: the long profile runs far past the suite's 300 s default."""

_started = time.monotonic()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: property-based fuzzing of the protocol decoder and endpoint (tests/fuzz)"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "tests/fuzz/" in report.nodeid:
        STATS.durations_s[report.nodeid] = round(report.duration, 2)
        STATS.results[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("VOICEFORGE_FUZZ_REPORT")
    if not path or not STATS.results:
        return
    report = {
        "profile": PROFILE,
        "max_examples": settings().max_examples,
        "ws_sessions": WS_SESSIONS,
        "wall_s": round(time.monotonic() - _started, 1),
        **STATS.as_json(),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
