"""OverlapHandling's decisions on a reply the runner holds, without engines or audio."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import pytest

from pipeline.events import Event, ResponseAudioPause, ResponseAudioResume
from pipeline.history import History
from pipeline.overlap_handling import OverlapHandling
from pipeline.reply_state import Response, ResponsePhase
from pipeline.responses import ResponseRunner
from pipeline.session import CallContext, Engines, SessionConfig
from pipeline.tools import ToolRegistry
from pipeline.turn import TurnConfig

pytestmark = pytest.mark.filterwarnings("error")


def _call(events: list[Event], *, pause: bool = True, barge_in_ms: float = 300.0) -> CallContext:
    turn = TurnConfig(barge_in_min_speech_ms=barge_in_ms)
    config = SessionConfig(playback_pause=pause, turn=turn)
    # No engine is used here: only the server's (empty) tool registry is read.
    engines = cast(Engines, SimpleNamespace(tools=ToolRegistry()))
    return CallContext("sess_t", engines, config, History("system"), events.append)


def _playing(runner: ResponseRunner) -> Response:
    response = Response("resp_t", time.monotonic(), phase=ResponsePhase.PLAYING)
    response.first_audio_at = time.monotonic()
    response.audio_ms = 5000.0
    runner.current = response
    return response


async def test_a_session_barge_in_minimum_is_the_noise_limit() -> None:
    events: list[Event] = []
    call = _call(events, barge_in_ms=600.0)
    runner = ResponseRunner(call)
    response = _playing(runner)
    overlaps = OverlapHandling(call, runner)
    overlaps.speech_started(0.0)
    assert [type(e) for e in events] == [ResponseAudioPause]
    overlaps.speech_stopped(500.0)
    # "No." for 500 ms: an interruption by default, noise under a 600 ms barge-in.
    overlaps.transcript("No.", 600.0)
    assert [type(e) for e in events] == [ResponseAudioPause, ResponseAudioResume]
    assert response.phase is ResponsePhase.PLAYING
    overlaps.turn_over(500.0)
    assert not overlaps.answers(500.0, "No.", 700.0)


async def test_without_playback_pause_nothing_happens() -> None:
    events: list[Event] = []
    call = _call(events, pause=False)
    runner = ResponseRunner(call)
    _playing(runner)
    overlaps = OverlapHandling(call, runner)
    assert overlaps.barge_in_cancels
    overlaps.speech_started(0.0)
    overlaps.tick(5000.0)
    assert events == []


async def test_a_turn_over_a_reply_that_ended_is_answered() -> None:
    events: list[Event] = []
    call = _call(events)
    runner = ResponseRunner(call)
    response = _playing(runner)
    overlaps = OverlapHandling(call, runner)
    overlaps.speech_started(0.0)
    overlaps.speech_stopped(400.0)
    overlaps.transcript("Yes.", 500.0)
    overlaps.turn_over(400.0)
    # The reply finished while the caller said "yes": the turn is the caller's.
    response.phase = ResponsePhase.DONE
    assert overlaps.answers(400.0, "Yes.", 900.0)
