"""The sweeper outlives a check that fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent import lifecycle
from agent.config import Settings
from agent.state import AppState
from pipeline.conversation import Engines


class Checked:
    """A call whose limit check either fails or counts itself."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails
        self.checks = 0
        self.checked_twice = asyncio.Event()

    def check_limits(self, now: float) -> None:
        if self.fails:
            raise RuntimeError("a bug in one call's check")
        self.checks += 1
        if self.checks >= 2:
            self.checked_twice.set()


async def test_a_failing_check_does_not_end_the_sweeping(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lifecycle, "SWEEP_INTERVAL_S", 0.01)
    state = AppState(Settings(), Engines(stt=None, llm=None, tts=None, vad=None))  # type: ignore[arg-type]
    broken, healthy = Checked(fails=True), Checked(fails=False)
    state.sessions.update({broken, healthy})  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, "voiceforge.lifecycle"):
        sweeper = asyncio.create_task(lifecycle.sweep(state))
        try:
            await asyncio.wait_for(healthy.checked_twice.wait(), 10)
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
    assert any("sweeping goes on" in r.getMessage() for r in caplog.records)
