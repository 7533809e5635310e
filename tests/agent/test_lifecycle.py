"""The sweeper outlives a check that fails; a call that goes live while the server
drains takes no turn."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent import bridge, lifecycle
from agent.config import Settings
from agent.state import AppState
from loadtest.harness import bench_engines
from pipeline.conversation import Conversation, Engines
from pipeline.events import Event, ResponseCreated, TurnIgnored


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


async def test_a_call_set_up_while_the_server_drains_takes_no_turn() -> None:
    """The drain stops turns on the calls it lists; a call whose set-up was under
    way then (a WebRTC answer being made) is stopped when it goes live."""
    engines = bench_engines()
    state = AppState(Settings(), engines)
    events: list[Event] = []
    early = Conversation(engines, events.append)
    bridge.session_opened(state, early, "ws")
    assert early.accepting_turns
    state.draining = True
    late = Conversation(engines, events.append)
    bridge.session_opened(state, late, "ws")
    try:
        assert not late.accepting_turns
        late.send_text("Hello?")
        assert [type(e) for e in events] == [TurnIgnored]
        assert not [e for e in events if isinstance(e, ResponseCreated)]
    finally:
        await early.close()
        await late.close()
