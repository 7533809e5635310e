"""Short bursts over the agent: duration and voiced time beside the words (pure).

Whisper writes a backchannel it cannot place as words ("MMU" for Piper joe's
"mm-hmm", "Amen" for "mm", "And then boom" for an espeak "mm-hmm"); a short
burst with at most two short non-command words resumes, while commands,
questions, numbers and content words still interrupt however short.
"""

from __future__ import annotations

import pytest

from pipeline.interruption import (
    Interrupt,
    InterruptionConfig,
    OverlapTracker,
    Pause,
    Resume,
    Verdict,
    classify,
)

FRAME_MS = 32.0
LOUD = 0.1  # -20 dBFS
QUIET = 0.003  # about -50 dBFS: below the default -45 dBFS floor


@pytest.mark.parametrize(
    "text", ["MMU", "Amen.", "And then boom.", "Uh", "Mm, hm-mm.", "Boo.", "Ahh, hmm", "Ha ha."]
)
def test_a_short_burst_misheard_as_words_is_a_backchannel(text: str) -> None:
    assert classify(text, 500.0, voiced_ms=450.0) is Verdict.BACKCHANNEL


@pytest.mark.parametrize("text", ["MMU", "Amen.", "And then boom."])
def test_the_same_words_voiced_longer_interrupt(text: str) -> None:
    assert classify(text, 700.0, voiced_ms=650.0) is Verdict.INTERRUPTION
    # Unknown voiced time is the detector's speech time.
    assert classify(text, 650.0) is Verdict.INTERRUPTION
    assert classify(text, 550.0) is Verdict.BACKCHANNEL


def test_the_voiced_time_not_the_hangover_decides() -> None:
    # 700 ms from the VAD's start to its stop, of which 450 ms loud and voiced.
    assert classify("MMU", 700.0, voiced_ms=450.0) is Verdict.BACKCHANNEL
    # Voiced time cannot exceed the speech time it is part of.
    assert classify("MMU", 500.0, voiced_ms=9000.0) is Verdict.BACKCHANNEL


@pytest.mark.parametrize(
    "text",
    [
        "Stop.",
        "Wait.",
        "Wait!",
        "No.",  # alone, a correction: see docs/decisions.md
        "Nope.",
        "Hold on.",
        "Hang on.",
        "What?",
        "Why?",
        "Huh, what?",
        "Is it?",  # a question
        "Hello?",
        "Sorry?",
        "Yeah, but",  # "yeah but …" turns the conversation
        "Yeah no.",
        "Okay, but",
        "Mm, stop.",
        "No, I meant",
        "Tuesday.",  # a content word, too long to be a filler
        "Paris.",
        "Five.",  # a number: a digit corrected
        "4",
        "Two two.",
        "Bye.",
        "Cancel.",
        "Don't.",
        "Um, actually",
        "Uh, one two three",  # more than two words beside the fillers
    ],
)
def test_short_real_interruptions_still_cancel(text: str) -> None:
    assert classify(text, 450.0, voiced_ms=400.0) is Verdict.INTERRUPTION


@pytest.mark.parametrize(
    "text", ["Yeah.", "Okay, okay.", "Really?", "Right?", "Mm-hmm.", "No way."]
)
def test_known_backchannels_stay_backchannels_even_as_questions(text: str) -> None:
    assert classify(text, 450.0, voiced_ms=400.0) is Verdict.BACKCHANNEL


@pytest.mark.parametrize("text", ["", "...", "you", "Thank you."])
def test_no_words_or_whispers_hallucinations_are_noise(text: str) -> None:
    assert classify(text, 450.0, voiced_ms=100.0) is Verdict.NOISE


def test_the_burst_rule_can_be_turned_off_and_tuned() -> None:
    off = InterruptionConfig(short_burst_ms=0.0)
    assert classify("MMU", 450.0, off, voiced_ms=400.0) is Verdict.INTERRUPTION
    one_word = InterruptionConfig(max_filler_words=1)
    assert classify("Boo boo.", 450.0, one_word, voiced_ms=400.0) is Verdict.INTERRUPTION
    assert classify("Boo.", 450.0, one_word, voiced_ms=400.0) is Verdict.BACKCHANNEL
    longer = InterruptionConfig(max_filler_letters=6)
    assert classify("Paris.", 450.0, longer, voiced_ms=400.0) is Verdict.BACKCHANNEL
    assert classify("Tuesday.", 450.0, longer, voiced_ms=400.0) is Verdict.INTERRUPTION
    for bad in (
        {"short_burst_ms": -1.0},
        {"short_burst_ms": float("inf")},
        {"max_filler_words": -1},
        {"max_filler_letters": 0},
        {"voiced_floor_dbfs": 3.0},
        {"voiced_floor_dbfs": float("nan")},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            InterruptionConfig(**bad)


# ------------------------------------------------------- the tracker's voiced time


def _frames(
    tracker: OverlapTracker, start_ms: float, count: int, *, speech: bool, level: float
) -> float:
    for i in range(count):
        tracker.frame(start_ms + i * FRAME_MS, FRAME_MS, speech=speech, level=level)
    return start_ms + count * FRAME_MS


def test_voiced_time_counts_loud_speech_frames_from_the_speech_start() -> None:
    tracker = OverlapTracker()
    at = _frames(tracker, 0.0, 10, speech=False, level=LOUD)  # before the overlap
    start = at
    # The speech is confirmed three frames in: those frames count too.
    at = _frames(tracker, at, 3, speech=True, level=LOUD)
    assert tracker.speech_started(start, agent_audible=True) == [Pause(start)]
    assert tracker.voiced_ms == 3 * FRAME_MS
    at = _frames(tracker, at, 7, speech=True, level=LOUD)
    at = _frames(tracker, at, 4, speech=True, level=QUIET)  # the detector's quiet tail
    at = _frames(tracker, at, 2, speech=False, level=LOUD)  # loud but not speech
    tracker.speech_stopped(at)
    assert tracker.voiced_ms == 10 * FRAME_MS
    assert tracker.speech_ms(at) == 16 * FRAME_MS


def test_a_burst_with_a_long_quiet_tail_resumes_a_loud_one_interrupts() -> None:
    # Both: 704 ms of detector speech judged "MMU".
    quiet_tail = OverlapTracker()
    quiet_tail.speech_started(0.0, agent_audible=True)
    at = _frames(quiet_tail, 0.0, 14, speech=True, level=LOUD)  # 448 ms voiced
    at = _frames(quiet_tail, at, 8, speech=True, level=QUIET)
    quiet_tail.speech_stopped(at)
    assert quiet_tail.transcript("MMU", at + 100.0) == [Resume(Verdict.BACKCHANNEL)]

    loud = OverlapTracker()
    loud.speech_started(0.0, agent_audible=True)
    at = _frames(loud, 0.0, 22, speech=True, level=LOUD)  # 704 ms voiced
    loud.speech_stopped(at)
    assert loud.transcript("MMU", at + 100.0) == [Interrupt(Verdict.INTERRUPTION, "words")]


def test_voiced_time_adds_up_over_the_turn_and_starts_afresh_with_the_next() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    at = _frames(tracker, 0.0, 10, speech=True, level=LOUD)  # 320 ms
    tracker.speech_stopped(at)
    assert tracker.transcript("Boo.", at + 50.0) == [Resume(Verdict.BACKCHANNEL)]
    at = _frames(tracker, at, 5, speech=False, level=0.0)
    # Speech again in the same turn: 320 + 320 ms voiced is no short burst.
    assert tracker.speech_started(at, agent_audible=True) == [Pause(at)]
    at2 = _frames(tracker, at, 10, speech=True, level=LOUD)
    tracker.speech_stopped(at2)
    assert tracker.voiced_ms == 20 * FRAME_MS
    assert tracker.transcript("Boo boo.", at2 + 50.0) == [Interrupt(Verdict.INTERRUPTION, "words")]
    tracker.turn_ended()
    assert tracker.voiced_ms == 0.0
    # Frames of the agent-silent stretch before a new overlap are not counted.
    at3 = _frames(tracker, at2, 20, speech=True, level=LOUD)
    assert tracker.speech_started(at3, agent_audible=True) == [Pause(at3)]
    assert tracker.voiced_ms == 0.0


def test_frames_without_an_audible_reply_start_nothing() -> None:
    tracker = OverlapTracker()
    _frames(tracker, 0.0, 20, speech=True, level=LOUD)
    assert tracker.speech_started(0.0, agent_audible=False) == []
    assert tracker.voiced_ms == 0.0
