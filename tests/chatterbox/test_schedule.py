"""The adaptive chunk schedule (pipeline/engines/chatterbox/schedule.py): pure, on a
fake clock, and in a simulated stream that plays the audio as it is handed out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.engines.chatterbox.schedule import AUDIO_S_PER_TOKEN, ChunkSchedule
from pipeline.errors import ConfigurationError


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    sizes: list[int] | None, *, token_s: float, decode_s: float, first: int = 10,
    total: int = 250, max_tokens: int = 25,
) -> tuple[list[int], float]:
    """A stream of ``total`` tokens: each T3 step takes ``token_s``, each decode
    ``decode_s``; playback starts with the first chunk. ``sizes`` None: the adaptive
    schedule chooses; else the fixed sizes after the first. Returns the chunk sizes
    and the total silence the listener hears after the first chunk (underruns)."""
    clock = Clock()
    schedule = ChunkSchedule(max_tokens, clock=clock)
    chosen: list[int] = []
    size, produced, played_until, gaps = first, 0, None, 0.0
    while produced < total:
        size = min(size, total - produced)
        for _ in range(size):
            clock.now += token_s
            schedule.token()
        clock.now += decode_s
        schedule.decoded(decode_s)
        produced += size
        audio = size * AUDIO_S_PER_TOKEN
        if played_until is None:
            played_until = clock.now
        elif clock.now > played_until:
            gaps += clock.now - played_until  # the listener waited for this chunk
            played_until = clock.now
        played_until += audio
        schedule.emitted(audio)
        chosen.append(size)
        size = schedule.next_tokens() if sizes is None else sizes[min(len(chosen) - 1,
                                                                       len(sizes) - 1)]
    return chosen, gaps


def test_the_chunks_grow_with_the_lead_and_never_leave_a_gap() -> None:
    # A GPU-like speed: a T3 step 12 ms (3x real time), a decode 200 ms (the flow
    # re-reads the voice prompt every chunk).
    sizes, gaps = simulate(None, token_s=0.012, decode_s=0.2)
    assert sizes[0] == 10
    assert sizes[1] < 25, "the second chunk fits in the first chunk's audio"
    assert sizes == sorted(sizes[:-1]) + sizes[-1:], "non-decreasing ramp (but the rest)"
    assert 25 in sizes, "it reaches the largest chunk once the lead allows"
    assert gaps == 0.0


def test_the_fixed_schedule_leaves_the_gap_the_ramp_avoids() -> None:
    _, fixed_gaps = simulate([25], token_s=0.012, decode_s=0.2)
    _, ramp_gaps = simulate(None, token_s=0.012, decode_s=0.2)
    assert fixed_gaps == pytest.approx(0.1)  # 25 steps + a decode: 0.5 s after 0.4 s of audio
    assert ramp_gaps == 0.0


def test_slower_than_real_time_takes_the_smallest_chunks() -> None:
    sizes, gaps = simulate(None, token_s=0.05, decode_s=0.05, total=60)
    assert all(size == 5 for size in sizes[2:-1])
    assert gaps > 0  # no schedule keeps a slower-than-real-time model ahead


def test_before_any_measurement_and_its_bounds() -> None:
    clock = Clock()
    schedule = ChunkSchedule(25, min_tokens=5, clock=clock)
    assert schedule.next_tokens() == 5
    assert schedule.buffered_s() == 0.0
    schedule.emitted(1.0)
    clock.now = 0.25
    assert schedule.buffered_s() == pytest.approx(0.75)
    for bad in ({"min_tokens": 0}, {"min_tokens": 30}, {"margin_s": -1.0},
                {"smoothing": 0.0}):
        with pytest.raises(ConfigurationError):
            ChunkSchedule(25, **bad)  # type: ignore[arg-type]


def test_the_time_a_chunk_waits_for_its_consumer_is_not_a_token_step() -> None:
    clock = Clock()
    schedule = ChunkSchedule(25, clock=clock)
    for _ in range(3):
        clock.now += 0.01
        schedule.token()
    schedule.decoded(0.05)
    schedule.emitted(0.4)
    clock.now += 5.0  # the generator was not resumed for a while
    schedule.token()
    clock.now += 0.01
    schedule.token()
    assert schedule.token_s == pytest.approx(0.01)
