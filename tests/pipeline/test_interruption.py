"""The interruption classifier and the overlap state machine (pure)."""

from __future__ import annotations

import random

import pytest

from pipeline.interruption import (
    Interrupt,
    InterruptionConfig,
    OverlapAction,
    OverlapPhase,
    OverlapTracker,
    Pause,
    Resume,
    Verdict,
    classify,
    words_of,
)


@pytest.mark.parametrize(
    "text",
    [
        "Mm-hmm.",
        "mm hmm",
        "Mhm.",
        "Mmmm hmmm",
        "Uh-huh.",
        "Yeah.",
        "Yeahhh",
        "Yeah, yeah.",
        "Right.",
        "Okay.",
        "OK",
        "O.K.",
        "Oh, okay.",
        "I see.",
        "Got it.",
        "All right.",
        "Sure, sure.",
        "Hmm.",
        "Wow!",
        "Mm-mm.",  # Whisper tiny's "mm-hmm"
        "Uh-uh.",  # and "uh-huh"
        "Emm...",  # and "hmm"
        "And mm",  # Whisper's "And" at the start of a short clip
        "Oh, okay, so.",
        "And then...",  # a continuer (and Whisper's reading of one "mm-hmm")
        "Go on.",
        "Really?",
    ],
)
def test_backchannels_resume(text: str) -> None:
    assert classify(text, 400.0) is Verdict.BACKCHANNEL


@pytest.mark.parametrize("text", ["", "   ", "...", "-", "?!"])
def test_no_words_is_noise(text: str) -> None:
    assert classify(text, 200.0) is Verdict.NOISE


@pytest.mark.parametrize(
    "text",
    [
        "Wait.",
        "Stop.",
        "No.",
        "No, no.",
        "Hold on.",
        "What?",
        "Yeah, but what about tomorrow?",
        "Right now, please.",
        "Okay, stop.",
        "Sorry, can you repeat that?",
        "All",  # half a phrase is not the phrase
        "I",
        "See",
        "And",  # a connective alone is no backchannel
        "So...",
        "And then what?",
        "okay okay okay okay okay",  # five backchannel words is more than one listens with
        "Actually I meant Paris.",
    ],
)
def test_real_interruptions_cancel(text: str) -> None:
    assert classify(text, 600.0) is Verdict.INTERRUPTION


def test_long_speech_interrupts_whatever_its_words() -> None:
    assert classify("yeah", 1500.0) is Verdict.INTERRUPTION
    assert classify("", 1500.0) is Verdict.INTERRUPTION
    assert classify("yeah", 1499.0) is Verdict.BACKCHANNEL


def test_without_a_transcript_only_the_length_speaks() -> None:
    assert classify(None, 299.0) is Verdict.NOISE
    assert classify(None, 300.0) is Verdict.INTERRUPTION


def test_very_short_speech_never_interrupts() -> None:
    # A cough Whisper heard as a word, echo residue: too short to be a barge-in.
    assert classify("No.", 250.0) is Verdict.NOISE
    assert classify("Wait", 299.0) is Verdict.NOISE
    assert classify("Wait", 300.0) is Verdict.INTERRUPTION
    assert classify("Yeah.", 200.0) is Verdict.BACKCHANNEL


@pytest.mark.parametrize("text", ["you", "You.", "Thank you.", "Thanks for watching!"])
def test_what_whisper_hears_in_noise_is_noise(text: str) -> None:
    assert classify(text, 500.0) is Verdict.NOISE


def test_word_normalisation() -> None:
    assert words_of("Mm-Hmm, YEAHHH!") == ["mm", "hmm", "yeah"]
    assert words_of("don't") == ["dont"]
    assert words_of("Okayyy.") == ["okay"]


def test_custom_backchannels_and_bad_config() -> None:
    config = InterruptionConfig(backchannels=frozenset({"d'accord"}))
    assert classify("D'accord.", 300.0, config) is Verdict.BACKCHANNEL
    # Longer than a short burst: only the custom list makes a backchannel.
    assert classify("yeah", 700.0, config) is Verdict.INTERRUPTION
    with pytest.raises(ValueError, match="long_speech_ms"):
        InterruptionConfig(long_speech_ms=0.0)
    with pytest.raises(ValueError, match="long_speech_ms"):
        InterruptionConfig(long_speech_ms=float("nan"))
    with pytest.raises(ValueError, match="max_backchannel_words"):
        InterruptionConfig(max_backchannel_words=0)
    with pytest.raises(ValueError, match="min_interruption_ms"):
        InterruptionConfig(min_interruption_ms=-1.0)


# ----------------------------------------------------------------- tracker


def test_backchannel_pauses_then_resumes() -> None:
    tracker = OverlapTracker()
    assert tracker.speech_started(1000.0, agent_audible=True) == [Pause(1000.0)]
    assert tracker.paused
    assert tracker.tick(1200.0) == []
    tracker.speech_stopped(1400.0)
    assert tracker.speech_ms(2000.0) == 400.0
    assert tracker.transcript("Mm-hmm.", 1600.0) == [Resume(Verdict.BACKCHANNEL)]
    assert tracker.phase is OverlapPhase.RESUMED
    assert tracker.turn_ended() is Verdict.BACKCHANNEL
    assert tracker.phase is OverlapPhase.IDLE


def test_real_interruption_by_words() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(600.0)
    actions = tracker.transcript("Wait, what was that?", 700.0)
    assert actions == [Interrupt(Verdict.INTERRUPTION, "words")]
    # Decided: later speech, ticks and transcripts change nothing.
    assert tracker.speech_started(900.0, agent_audible=True) == []
    assert tracker.tick(5000.0) == []
    assert tracker.transcript("mm-hmm", 5000.0) == []
    assert tracker.turn_ended() is Verdict.INTERRUPTION


def test_long_speech_interrupts_before_it_ends() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(100.0, agent_audible=True)
    assert tracker.tick(1599.0) == []
    assert tracker.tick(1600.0) == [Interrupt(Verdict.INTERRUPTION, "long_speech")]
    assert tracker.tick(1700.0) == []  # once


def test_speech_counts_across_pauses_within_the_turn() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(800.0)
    tracker.speech_started(1000.0, agent_audible=True)  # SpeechResumed, still paused
    assert tracker.tick(1699.0) == []
    assert tracker.tick(1700.0) == [Interrupt(Verdict.INTERRUPTION, "long_speech")]


def test_a_stale_transcript_is_ignored_while_the_caller_talks_again() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(300.0)
    tracker.speech_started(500.0, agent_audible=True)
    assert tracker.transcript("yeah", 600.0) == []
    assert tracker.paused


def test_backchannel_that_becomes_a_question_interrupts() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(300.0)
    assert tracker.transcript("Yeah.", 400.0) == [Resume(Verdict.BACKCHANNEL)]
    # The caller goes on, over the resumed reply: pause again, judge the whole.
    assert tracker.speech_started(600.0, agent_audible=True) == [Pause(600.0)]
    tracker.speech_stopped(1000.0)
    assert tracker.transcript("Yeah. But why?", 1100.0) == [
        Interrupt(Verdict.INTERRUPTION, "words")
    ]


def test_speech_while_the_agent_is_silent_is_not_an_overlap() -> None:
    tracker = OverlapTracker()
    assert tracker.speech_started(0.0, agent_audible=False) == []
    assert tracker.tick(10_000.0) == []
    tracker.speech_stopped(10_000.0)
    assert tracker.transcript("Wait", 10_100.0) == []
    assert tracker.turn_ended() is None


def test_a_short_discarded_turn_resumes_as_noise() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(150.0)
    assert tracker.turn_discarded() == [Resume(Verdict.NOISE)]
    assert tracker.phase is OverlapPhase.IDLE
    assert tracker.turn_discarded() == []


def test_no_transcript_decides_by_length() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.speech_stopped(200.0)
    assert tracker.transcript(None, 300.0) == [Resume(Verdict.NOISE)]
    tracker.turn_ended()
    tracker.speech_started(1000.0, agent_audible=True)
    tracker.speech_stopped(1500.0)
    assert tracker.transcript(None, 1600.0) == [
        Interrupt(Verdict.INTERRUPTION, "no_transcript")
    ]


def test_reply_gone_forgets_the_overlap() -> None:
    tracker = OverlapTracker()
    tracker.speech_started(0.0, agent_audible=True)
    tracker.response_gone()
    assert tracker.phase is OverlapPhase.IDLE
    tracker.speech_stopped(300.0)
    assert tracker.transcript("yes", 400.0) == []
    assert tracker.turn_ended() is None  # "yes" at the very end is the caller's turn


def test_random_sequences_keep_pause_and_resume_paired() -> None:
    """Adversarial: any order of inputs; actions stay well formed."""
    rng = random.Random(12)
    texts = ["", "mm-hmm", "yeah", "wait", "no thanks", None, "okay okay okay okay okay"]
    for _ in range(300):
        tracker = OverlapTracker()
        now = 0.0
        paused = False  # the reply as the conversation would see it
        cancelled = False
        for _ in range(40):
            now += rng.choice([0.0, 32.0, 96.0, 400.0, 1200.0])
            step = rng.randrange(7)
            actions: list[OverlapAction] = []
            if step == 0:
                actions = tracker.speech_started(now, agent_audible=rng.random() < 0.8)
            elif step == 1:
                tracker.speech_stopped(now)
            elif step == 2:
                actions = tracker.tick(now)
            elif step == 3:
                actions = tracker.transcript(rng.choice(texts), now)
            elif step == 4:
                actions = tracker.turn_discarded()
                cancelled = False
            elif step == 5:
                tracker.turn_ended()
                paused = cancelled = False
            else:
                tracker.response_gone()
                paused = cancelled = False
            for action in actions:
                assert not cancelled, "nothing may follow a cancel in the same turn"
                if isinstance(action, Pause):
                    assert not paused
                    paused = True
                elif isinstance(action, Resume):
                    assert paused
                    paused = False
                else:
                    assert paused
                    paused, cancelled = False, True
            assert tracker.paused == paused
            assert tracker.speech_ms(now) >= 0.0
