"""The acoustic end/onset of speech every client-side latency starts from."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.acoustic import acoustic_end_ms, acoustic_onset_ms

RATE = 16000


def _tone(ms: float, dbfs: float) -> np.ndarray:
    t = np.arange(int(RATE * ms / 1000)) / RATE
    # RMS of a sine is amplitude / sqrt(2).
    amplitude = 10 ** (dbfs / 20) * np.sqrt(2)
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _silence(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000), dtype=np.float32)


def test_end_and_onset_are_the_loud_part_to_the_10_ms_window() -> None:
    audio = np.concatenate([_silence(250), _tone(600, -20), _silence(400)])
    assert acoustic_onset_ms(audio, RATE) == pytest.approx(250)
    assert acoustic_end_ms(audio, RATE) == pytest.approx(850)


def test_a_quiet_tail_under_minus_45_dbfs_is_not_speech() -> None:
    audio = np.concatenate([_tone(300, -20), _tone(300, -50), _silence(200)])
    assert acoustic_end_ms(audio, RATE) == pytest.approx(300)
    louder_tail = np.concatenate([_tone(300, -20), _tone(300, -40), _silence(200)])
    assert acoustic_end_ms(louder_tail, RATE) == pytest.approx(600)


def test_the_last_partial_window_counts_and_silence_has_no_end() -> None:
    audio = np.concatenate([_silence(100), _tone(105, -10)])
    assert acoustic_end_ms(audio, RATE) == pytest.approx(205)
    assert acoustic_end_ms(_silence(500), RATE) is None
    assert acoustic_onset_ms(_silence(500), RATE) is None
    assert acoustic_end_ms(np.zeros(0, dtype=np.float32), RATE) is None


def test_a_pause_inside_speech_does_not_end_it() -> None:
    audio = np.concatenate([_tone(400, -25), _silence(900), _tone(300, -25), _silence(300)])
    assert acoustic_onset_ms(audio, RATE) == pytest.approx(0)
    assert acoustic_end_ms(audio, RATE) == pytest.approx(1600)
