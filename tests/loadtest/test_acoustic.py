"""The acoustic end/onset of speech every client-side latency starts from, and the
caller that times it over the real protocol (against the ``bench`` profile)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller, acoustic_end_ms, acoustic_onset_ms
from loadtest.latency import compare_summary, run_turns, spawned_server, summarize

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


async def test_the_caller_knows_where_each_utterance_sat_and_when_it_was_sent() -> None:
    first = np.concatenate([_silence(100), _tone(330, -20), _silence(50)])  # 480 ms
    second = np.concatenate([_tone(200, -20), _silence(60)])  # 260 ms: not whole frames
    with spawned_server("bench", echo=False) as url:
        async with await VoiceForgeClient.connect(url) as client:
            await client.update_session(input_sample_rate=RATE)
            caller = TimedCaller(client)
            caller.start()
            try:
                caller.say(first)  # plain say() counts too
                two = caller.utter(second)
                assert two == 1
                await caller.wait_sent(two, 10)
                sent_back = time.monotonic()
            finally:
                await caller.stop()
    a, b = caller.spoken
    # Queued back to back: the second starts where the first's last frame ended.
    assert a.start_ms % 20 == 0
    assert b.start_ms == a.start_ms + 480
    assert b.started_at >= a.started_at
    end = caller.acoustic_end_sent_at(0)
    onset = caller.acoustic_onset_sent_at(0)
    assert end is not None and onset is not None
    assert a.started_at <= onset <= end <= b.started_at <= sent_back
    # The frame holding the end (at 430 ms) is the 22nd of the utterance.
    assert end == client.sent_at(a.start_ms + 430)
    assert caller.acoustic_end_sent_at(5) is None


async def test_latency_turns_carry_all_three_figures() -> None:
    with spawned_server("bench", echo=False) as url:
        turns = await run_turns(url, 2, 2)
    assert [t.status for t in turns] == ["completed", "completed"]
    assert all(t.acoustic_ms is not None and t.client_ms is not None for t in turns)
    summary = summarize(turns)
    assert set(summary["acoustic_latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["acoustic_latency_ms"]["p50"] > 0


async def test_latency_compare_alternates_the_field_between_sessions() -> None:
    with spawned_server("bench", echo=False) as url:
        turns = await run_turns(url, 4, 1, compare="first_chunk_max_words=4,0")
    # Each question under both values, the order alternating question by question.
    assert [t.variant for t in turns] == ["on", "off", "off", "on"]
    assert [t.question for t in turns[:2]] == [turns[0].question] * 2
    assert turns[2].question == turns[3].question != turns[0].question
    compared = compare_summary(turns, "first_chunk_max_words=4,0")
    assert compared["on"]["turns"] == compared["off"]["turns"] == 2
    ratio = compared["ratio_on_off"]["acoustic_latency_ms"]["p50"]
    expected = (compared["on"]["acoustic_latency_ms"]["p50"]
                / compared["off"]["acoustic_latency_ms"]["p50"])
    assert ratio == expected
