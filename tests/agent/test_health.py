"""Engine health across calls (``agent.health``), fed with explicit clocks."""

from __future__ import annotations

import pytest

from agent.health import EngineHealth


def test_failures_from_one_call_alone_do_not_make_an_engine_failing() -> None:
    health = EngineHealth(min_sessions=2, window_s=60)
    for t in range(10):
        health.failed("llm", "sess_a", "llm_failed (permanent)", now=t)
    assert health.failing(now=10) == {}


def test_failures_across_calls_make_an_engine_failing_until_it_works() -> None:
    health = EngineHealth(min_sessions=2, window_s=60)
    health.failed("llm", "sess_a", "llm_timeout (transient)", now=0)
    health.failed("llm", "sess_b", "llm_unavailable (transient)", now=1)
    health.failed("tts", "sess_b", "tts_failed (permanent)", now=1)
    assert health.failing(now=2) == {"llm": "llm_unavailable (transient)"}
    health.worked("llm")
    assert health.failing(now=3) == {}


def test_old_failures_leave_the_window() -> None:
    health = EngineHealth(min_sessions=2, window_s=10)
    health.failed("stt", "sess_a", "stt_failed (transient)", now=0)
    health.failed("stt", "sess_b", "stt_failed (transient)", now=5)
    assert "stt" in health.failing(now=9)
    assert health.failing(now=11) == {}
    with pytest.raises(ValueError):
        EngineHealth(min_sessions=0)
