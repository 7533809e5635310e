"""The echo guard on synthetic signals and timestamps (no event loop)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.echo import EchoGuard, EchoGuardConfig, peak_correlation

RATE = 8000
FRAME = RATE // 50  # 20 ms


def tone(seconds: float, level: float, hz: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def frames(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def test_an_attenuated_delayed_copy_of_the_reply_is_suppressed() -> None:
    guard = EchoGuard(EchoGuardConfig(echo_return_loss_db=6.0), RATE)
    reply = tone(1.0, 0.5)
    guard.played(reply, play_at=10.0)
    echo = 0.25 * np.roll(reply, 1600)  # -12 dB, 200 ms later
    for i, frame in enumerate(frames(echo)):
        now = 10.2 + i * 0.02
        assert guard.is_echo(frame, now)
        assert not guard.filter(frame, now).any()
    assert guard.suppressed_frames == len(frames(echo))


def test_the_caller_talking_over_the_reply_passes_untouched() -> None:
    guard = EchoGuard(EchoGuardConfig(echo_return_loss_db=6.0), RATE)
    guard.played(tone(1.0, 0.2), play_at=0.0)
    speech = tone(0.5, 0.3, hz=180.0)
    for i, frame in enumerate(frames(speech)):
        assert guard.filter(frame, 0.3 + i * 0.02) is frame


def test_nothing_is_suppressed_once_the_echo_tail_has_passed() -> None:
    guard = EchoGuard(EchoGuardConfig(tail_ms=600.0), RATE)
    guard.played(tone(1.0, 0.5), play_at=0.0)
    quiet = tone(0.02, 0.01)
    assert guard.is_echo(quiet, 1.5)  # 500 ms after the reply ended: within the tail
    assert not guard.is_echo(quiet, 1.7)  # 700 ms after: beyond it


def test_audio_not_yet_played_does_not_count() -> None:
    guard = EchoGuard(EchoGuardConfig(), RATE)
    guard.played(tone(1.0, 0.5), play_at=5.0)  # queued at the far end, plays later
    assert not guard.is_echo(tone(0.02, 0.01), 4.0)


def test_a_flush_forgets_audio_that_will_never_play() -> None:
    guard = EchoGuard(EchoGuardConfig(tail_ms=100.0), RATE)
    guard.played(tone(2.0, 0.5), play_at=0.0)
    guard.flushed(0.5)  # barge-in: the provider dropped what was queued
    assert not guard.is_echo(tone(0.02, 0.01), 0.8)


def test_silence_played_makes_no_echo() -> None:
    guard = EchoGuard(EchoGuardConfig(), RATE)
    guard.played(np.zeros(RATE, dtype=np.float32), play_at=0.0)
    assert not guard.is_echo(tone(0.02, 0.001), 0.5)


def test_a_disabled_guard_passes_everything() -> None:
    guard = EchoGuard(EchoGuardConfig(enabled=False), RATE)
    guard.played(tone(1.0, 0.5), play_at=0.0)
    assert not guard.is_echo(tone(0.02, 0.01), 0.5)


def test_a_larger_echo_return_loss_lets_quieter_barge_ins_through() -> None:
    frame = tone(0.02, 0.2)  # 8 dB below the reply
    strict = EchoGuard(EchoGuardConfig(echo_return_loss_db=6.0), RATE)
    lenient = EchoGuard(EchoGuardConfig(echo_return_loss_db=12.0), RATE)
    for guard in (strict, lenient):
        guard.played(tone(1.0, 0.5), play_at=0.0)
    assert strict.is_echo(frame, 0.5)  # could be a 6 dB echo
    assert not lenient.is_echo(frame, 0.5)  # too loud for a 12 dB echo: the caller


@pytest.mark.parametrize(
    "kwargs",
    [{"echo_return_loss_db": -1.0}, {"tail_ms": float("nan")}, {"floor_dbfs": 3.0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EchoGuardConfig(**kwargs)


def test_a_quiet_caller_talking_over_the_reply_passes_unless_level_only() -> None:
    # Quieter than the reply minus the echo return loss, but nothing like it: double
    # talk, not echo. A level-only guard cannot tell them apart.
    caller = (0.05 * np.random.default_rng(7).standard_normal(RATE // 2)).astype(np.float32)
    correlating = EchoGuard(EchoGuardConfig(), RATE)
    level_only = EchoGuard(EchoGuardConfig(correlation_threshold=None), RATE)
    for guard in (correlating, level_only):
        guard.played(tone(1.0, 0.5), play_at=0.0)
    for i, frame in enumerate(frames(caller)):
        assert not correlating.is_echo(frame, 0.3 + i * 0.02)
        assert level_only.is_echo(frame, 0.3 + i * 0.02)


def test_peak_correlation_finds_a_delayed_copy() -> None:
    reference = tone(0.5, 0.5) + tone(0.5, 0.2, hz=470.0)
    assert peak_correlation(0.1 * reference[1234 : 1234 + FRAME], reference) > 0.999
    assert peak_correlation(np.zeros(FRAME, dtype=np.float32), reference) == 0.0
