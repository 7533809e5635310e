"""The fake Twilio line plays at real time: checked on what it computes, not on a clock."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bridges.twilio_line import FRAME, FRAME_S, RATE, LinePlayout, LineSchedule


def _ramp(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)


def test_each_tick_plays_20_ms_across_message_boundaries() -> None:
    line = LinePlayout()
    # Reply media as the bridge sends it: pieces of any length, a mark after some.
    sizes = [100, 250, 37, 300]
    offset = 0
    for size, mark in zip(sizes, [None, None, "a", "b"], strict=True):
        line.add_media(_ramp(offset, size))
        offset += size
        if mark is not None:
            line.add_mark(mark)
    ticks: list[tuple[int, list[str]]] = []
    played: list[np.ndarray] = []
    for _ in range(10):
        audio, marks = line.take(FRAME)
        if not len(audio) and not marks:
            break
        ticks.append((len(audio), marks))
        played.append(audio)
    # 687 samples in ceil(687 / 160) = 5 ticks; one message per tick would take 7.
    assert [size for size, _ in ticks] == [160, 160, 160, 160, 47]
    # "a" follows sample 387, played within tick 3 (320–480); "b" ends the audio.
    assert [marks for _, marks in ticks] == [[], [], ["a"], [], ["b"]]
    np.testing.assert_array_equal(np.concatenate(played), _ramp(0, offset))


def test_a_second_of_audio_takes_fifty_ticks_whatever_the_piece_sizes() -> None:
    rng = np.random.default_rng(7)
    line = LinePlayout()
    total = 0
    while total < RATE:
        size = min(int(rng.integers(1, 700)), RATE - total)
        line.add_media(np.zeros(size, dtype=np.float32))
        line.add_mark(f"m{total}")
        total += size
    ticks = 0
    marks_seen: list[str] = []
    while True:
        audio, marks = line.take(FRAME)
        marks_seen += marks
        if not len(audio):
            break
        ticks += 1
    assert ticks == 50  # 1 s of playback at 20 ms a tick: real time
    assert len(marks_seen) == len(set(marks_seen)) and marks_seen[-1] == f"m{total - size}"


def test_marks_that_come_after_their_audio_was_played_are_reached_at_once() -> None:
    line = LinePlayout()
    line.add_media(_ramp(0, FRAME))
    assert line.take(FRAME)[1] == []
    line.add_mark("late")
    audio, marks = line.take(0)
    assert not len(audio) and marks == ["late"]


def test_clear_returns_the_pending_marks_and_drops_the_audio() -> None:
    line = LinePlayout()
    line.add_media(_ramp(0, 500))
    line.add_mark("x")
    line.add_media(_ramp(500, 100))
    line.add_mark("y")
    line.take(FRAME)
    assert line.clear() == ["x", "y"]
    audio, marks = line.take(FRAME)
    assert not len(audio) and marks == []


def test_the_schedule_is_a_grid_from_the_start_and_late_ticks_catch_up() -> None:
    schedule = LineSchedule(started=1000.0)
    # Tick n is due at start + n × 20 ms: after 10 minutes, still on the grid.
    assert schedule.due(0) == 1000.0
    assert schedule.due(50) == pytest.approx(1001.0, abs=1e-9)
    assert schedule.due(30_000) == pytest.approx(1600.0, abs=1e-9)
    # On time: sleep to the next grid point.
    assert schedule.wait_s(1, 1000.005) == pytest.approx(FRAME_S - 0.005, abs=1e-9)
    # 50 ms late for tick 3 (due at 1000.06): no sleep, and tick 4 is still due at
    # 1000.08, not 20 ms after whenever tick 3 ran: lateness does not accumulate.
    assert schedule.wait_s(3, 1000.11) == 0.0
    assert schedule.due(4) == pytest.approx(1000.08, abs=1e-9)
