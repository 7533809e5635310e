"""A short load test against a real ``voiceforge serve --profile bench`` child process.

It checks the report's structure and that nothing failed — never its timings,
which depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loadtest.__main__ import main, within_budget
from loadtest.latency import spawned_server
from loadtest.runner import LoadConfig, compare_values
from loadtest.speech import espeak_available

REQUIRED = {
    "callers", "turns", "errors", "latency_ms", "client_latency_ms", "server_overhead_ms",
    "barge_in_ms", "underruns", "dropped_sessions", "server", "compare", "input_lag_ms",
    "end_of_turn_wait_ms", "acoustic_latency_ms", "barge_in_acoustic_ms",
}


@pytest.fixture(scope="module")
def bench_url() -> object:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the load test (make test installs it)")
    with spawned_server("bench", echo=False) as url:
        yield url


def test_short_run_reports_every_figure_without_errors(bench_url: str, tmp_path: Path) -> None:
    out, png = tmp_path / "report.json", tmp_path / "latency.png"
    args = ["--url", bench_url, "--callers", "5", "--duration", "4", "--ramp", "1",
            "--compare", "speculative_transcript", "--json", str(out), "--plot", str(png)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert REQUIRED <= report.keys()
    assert report["errors"] == 0, report["failures"]
    assert report["dropped_sessions"] == 0
    assert report["callers"] == 5
    # One caller per scenario: Q&A, multi-turn, barge-in, noise, abrupt hang-up.
    assert report["turns"] >= 3
    assert report["aborted_sessions"] >= 1
    assert report["noise_false_turns"] == 0
    assert report["barge_in_ms"]["count"] >= 1
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    # Every answered turn is timed from the acoustic end of its question too.
    assert report["acoustic_latency_ms"]["p50"] is not None
    assert report["barge_in_acoustic_ms"]["count"] >= 1
    assert set(report["compare"]["ratio_on_off"]) >= {"acoustic_latency_ms", "latency_ms"}
    assert set(report["barge_in_ms"]) >= {"p50", "p95"}
    assert report["server"]["sessions_left_open"] == 0
    assert report["server"]["rss_mb_max"] > 0
    assert report["compare"]["field"] == "speculative_transcript"
    assert report["compare"]["on"]["turns"] + report["compare"]["off"]["turns"] == report["turns"]
    assert png.stat().st_size > 0


def test_a_sweep_stops_at_the_first_level_over_budget(bench_url: str, tmp_path: Path) -> None:
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    # A 0 ms budget nobody meets: the sweep stops after its first level.
    args = ["--url", bench_url, "--sweep", "2,4", "--duration", "3", "--ramp", "0",
            "--scenarios", "qa", "--budget-ms", "0", "--json", str(out), "--sweep-plot", str(png)]
    main(args)
    sweep = json.loads(out.read_text())
    assert sweep["capacity"] == sweep["capacity_budget_only"] == 0
    assert [level["callers"] for level in sweep["levels"]] == [2]
    assert png.stat().st_size > 0


def test_budget_needs_zero_errors_drops_and_underruns() -> None:
    good = {"server_overhead_ms": {"p95": 10.0}, "errors": 0, "dropped_sessions": 0,
            "underruns": 0, "input_lag_ms": {"p95": 250.0}}
    assert within_budget(good, "server_overhead_ms", 50)
    # An input path that fell behind real time fails the bound on input lag.
    assert not within_budget(good, "server_overhead_ms", 50, max_input_lag_ms=100)
    assert within_budget(good, "server_overhead_ms", 50, max_input_lag_ms=300)
    assert not within_budget({**good, "underruns": 1}, "server_overhead_ms", 50)
    assert not within_budget({**good, "server_overhead_ms": {"p95": None}},
                             "server_overhead_ms", 50)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "http://127.0.0.1:1/ws"}, "ws://"),
        ({"scenarios": ["qa", "dance"]}, "unknown scenarios"),
        ({"callers": 0}, "--callers"),
    ],
)
def test_bad_settings_are_refused_clearly(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"url": "ws://127.0.0.1:1/ws", "callers": 1, "duration_s": 1.0}
    with pytest.raises(ValueError, match=message):
        LoadConfig(**{**settings, **fields})  # type: ignore[arg-type]


def test_compare_takes_a_boolean_field_or_two_values() -> None:
    assert compare_values("speculative_transcript") == ("speculative_transcript", True, False)
    assert compare_values("first_chunk_max_words=4,0") == ("first_chunk_max_words", 4, 0)
    for bad in ("first_chunk_max_words=4", "=1,0", "first_chunk_max_words=four,0"):
        with pytest.raises(ValueError, match="--compare"):
            compare_values(bad)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_benchmark_takes_its_server_with_it(tmp_path: Path) -> None:
    """SIGKILL runs no ``finally``: the server a benchmark started must still stop,
    or it keeps loading the machine under the next benchmark's measurements."""
    script = (
        "from loadtest.latency import spawned_server\n"
        "import sys, time\n"
        "with spawned_server('bench', echo=False) as url:\n"
        "    print(url, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        url = parent.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:"), url
        health = url.replace("ws://", "http://").removesuffix("/ws") + "/healthz"
        with urllib.request.urlopen(health, timeout=10) as answer:
            assert answer.status == 200
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=2):
                pass
        except OSError:
            return  # refused: the server is gone
        time.sleep(0.2)
    pytest.fail(f"the server at {health} still answers 30 s after its parent was killed")
