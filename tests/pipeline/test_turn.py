"""The turn detector on synthetic probability sequences (32 ms frames, default config).

With the defaults: SpeechStarted needs 3 speech frames (96 ms), EndOfTurn 16
silence frames (512 ms >= 500 ms), BargeIn 10 speech frames (320 ms >= 300 ms).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.turn import (
    BargeIn,
    EndOfTurn,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnConfig,
    TurnDetector,
    TurnDiscarded,
    TurnEvent,
    TurnState,
)

SPEECH = 0.9
SILENCE = 0.05
BETWEEN = 0.4  # above silence_threshold (0.35), below speech_threshold (0.5)


def feed(
    detector: TurnDetector,
    probabilities: Sequence[float],
    agent_speaking: bool | Sequence[bool] = False,
) -> list[tuple[int, TurnEvent]]:
    """Every event with the index of the frame that produced it."""
    if isinstance(agent_speaking, bool):
        agent_speaking = [agent_speaking] * len(probabilities)
    out: list[tuple[int, TurnEvent]] = []
    for index, (probability, agent) in enumerate(zip(probabilities, agent_speaking, strict=True)):
        out.extend((index, event) for event in detector.process(probability, agent_speaking=agent))
    return out


def test_a_one_frame_click_makes_no_event() -> None:
    detector = TurnDetector()
    assert feed(detector, [SILENCE, SPEECH] + [SILENCE] * 20) == []
    assert detector.state is TurnState.IDLE


def test_two_speech_frames_are_still_too_short() -> None:
    detector = TurnDetector()
    events = feed(detector, [SPEECH, SPEECH, SILENCE])
    assert events == []
    assert detector.state is TurnState.IDLE


def test_speech_starts_after_min_speech_at_the_first_speech_frame() -> None:
    detector = TurnDetector()
    assert feed(detector, [SILENCE, SILENCE, SPEECH, SPEECH]) == []
    assert detector.state is TurnState.MAYBE_SPEECH
    events = detector.process(SPEECH, agent_speaking=False)
    # One comparison: mypy would narrow detector.state from the assert above.
    assert (events, detector.state) == ([SpeechStarted(64.0)], TurnState.SPEAKING)


def test_full_turn_timestamps() -> None:
    detector = TurnDetector()
    probabilities = [SILENCE] * 2 + [SPEECH] * 5 + [SILENCE] * 16
    assert feed(detector, probabilities) == [
        (4, SpeechStarted(64.0)),
        (7, SpeechStopped(224.0)),
        (22, EndOfTurn(64.0, 224.0)),
    ]
    assert detector.state is TurnState.IDLE
    assert detector.now_ms == 23 * 32.0


def test_fifteen_silence_frames_do_not_end_the_turn() -> None:
    detector = TurnDetector()
    feed(detector, [SPEECH] * 5 + [SILENCE] * 15)
    assert detector.state is TurnState.PAUSED


def test_hysteresis_between_thresholds_keeps_speech() -> None:
    detector = TurnDetector()
    # In-between frames confirm a start that a speech frame began...
    events = feed(detector, [SPEECH, BETWEEN, BETWEEN] + [BETWEEN] * 30)
    assert events == [(2, SpeechStarted(0.0))]
    # ...and keep it going: no SpeechStopped while above silence_threshold.
    assert detector.state is TurnState.SPEAKING


def test_between_thresholds_does_not_start_speech() -> None:
    detector = TurnDetector()
    assert feed(detector, [BETWEEN] * 20) == []
    assert detector.state is TurnState.IDLE


def test_between_thresholds_does_not_resume_a_pause() -> None:
    detector = TurnDetector()
    probabilities = [SPEECH] * 4 + [SILENCE] * 5 + [BETWEEN] * 11
    assert feed(detector, probabilities) == [
        (2, SpeechStarted(0.0)),
        (4, SpeechStopped(128.0)),
        (19, EndOfTurn(0.0, 128.0)),
    ]


def test_speech_resumed_during_the_pause_then_end_of_turn() -> None:
    detector = TurnDetector()
    probabilities = [SPEECH] * 5 + [SILENCE] * 5 + [SPEECH] * 3 + [SILENCE] * 16
    assert feed(detector, probabilities) == [
        (2, SpeechStarted(0.0)),
        (5, SpeechStopped(160.0)),
        (10, SpeechResumed(320.0)),
        (13, SpeechStopped(416.0)),
        (28, EndOfTurn(0.0, 416.0)),
    ]


def test_resume_restarts_the_end_of_turn_silence() -> None:
    detector = TurnDetector()
    # 15 silent frames, one speech frame, 15 more: never 16 in a row.
    probabilities = [SPEECH] * 3 + [SILENCE] * 15 + [SPEECH] + [SILENCE] * 15
    events = [event for _, event in feed(detector, probabilities)]
    assert events == [
        SpeechStarted(0.0),
        SpeechStopped(96.0),
        SpeechResumed(576.0),
        SpeechStopped(608.0),
    ]
    assert detector.state is TurnState.PAUSED


def test_barge_in_fires_once_after_sustained_speech_while_the_agent_speaks() -> None:
    detector = TurnDetector()
    probabilities = [SPEECH] * 12 + [SILENCE] * 3 + [SPEECH] * 12 + [SILENCE] * 16
    assert feed(detector, probabilities, agent_speaking=True) == [
        (2, SpeechStarted(0.0)),
        (9, BargeIn(320.0)),  # the 10th speech frame: 320 ms >= 300 ms
        (12, SpeechStopped(384.0)),
        (15, SpeechResumed(480.0)),
        (27, SpeechStopped(864.0)),
        (42, EndOfTurn(0.0, 864.0)),
    ]


def test_no_barge_in_when_the_agent_is_silent() -> None:
    detector = TurnDetector()
    events = [event for _, event in feed(detector, [SPEECH] * 20 + [SILENCE] * 16)]
    assert events == [SpeechStarted(0.0), SpeechStopped(640.0), EndOfTurn(0.0, 640.0)]


def test_barge_in_counts_speech_across_pauses() -> None:
    detector = TurnDetector()
    # 6 + 4 speech frames around a pause: the 10th speech frame barges in.
    probabilities = [SPEECH] * 6 + [SILENCE] * 2 + [SPEECH] * 4
    assert feed(detector, probabilities, agent_speaking=True) == [
        (2, SpeechStarted(0.0)),
        (6, SpeechStopped(192.0)),
        (8, SpeechResumed(256.0)),
        (11, BargeIn(384.0)),
    ]


def test_barge_in_when_the_agent_starts_talking_over_ongoing_speech() -> None:
    detector = TurnDetector()
    agent = [False] * 11 + [True] * 3
    assert feed(detector, [SPEECH] * 14, agent_speaking=agent) == [
        (2, SpeechStarted(0.0)),
        (11, BargeIn(384.0)),
    ]


def test_barge_in_again_in_the_next_turn() -> None:
    detector = TurnDetector()
    turn = [SPEECH] * 10 + [SILENCE] * 16
    events = [event for _, event in feed(detector, turn + turn, agent_speaking=True)]
    assert events == [
        SpeechStarted(0.0),
        BargeIn(320.0),
        SpeechStopped(320.0),
        EndOfTurn(0.0, 320.0),
        SpeechStarted(832.0),
        BargeIn(1152.0),
        SpeechStopped(1152.0),
        EndOfTurn(832.0, 1152.0),
    ]


def test_a_cough_while_the_agent_speaks_is_discarded() -> None:
    detector = TurnDetector()
    probabilities = [SPEECH] * 4 + [SILENCE] * 16
    assert feed(detector, probabilities, agent_speaking=True) == [
        (2, SpeechStarted(0.0)),
        (4, SpeechStopped(128.0)),
        (19, TurnDiscarded(0.0, 128.0, "short_speech_during_response")),
    ]
    assert detector.state is TurnState.IDLE


def test_short_speech_partly_outside_the_response_is_a_turn() -> None:
    detector = TurnDetector()
    probabilities = [SPEECH] * 4 + [SILENCE] * 16
    agent = [False] + [True] * 19
    events = [event for _, event in feed(detector, probabilities, agent_speaking=agent)]
    assert events == [SpeechStarted(0.0), SpeechStopped(128.0), EndOfTurn(0.0, 128.0)]


def test_barge_in_earlier_than_min_speech_waits_for_speech_started() -> None:
    config = TurnConfig(min_speech_ms=96.0, barge_in_min_speech_ms=0.0)
    detector = TurnDetector(config)
    assert feed(detector, [SPEECH] * 3, agent_speaking=True) == [
        (2, SpeechStarted(0.0)),
        (2, BargeIn(96.0)),
    ]


def test_zero_min_speech_starts_on_the_first_frame() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=0.0))
    assert feed(detector, [SILENCE, SPEECH]) == [(1, SpeechStarted(32.0))]


def test_frame_ms_sets_the_clock() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=20.0, end_of_turn_silence_ms=30.0), 10.0)
    events = [event for _, event in feed(detector, [SILENCE] + [SPEECH] * 2 + [SILENCE] * 3)]
    assert events == [SpeechStarted(10.0), SpeechStopped(30.0), EndOfTurn(10.0, 30.0)]


def test_reset_returns_to_idle_at_time_zero() -> None:
    detector = TurnDetector()
    feed(detector, [SPEECH] * 5)
    detector.reset()
    assert detector.state is TurnState.IDLE
    assert detector.now_ms == 0.0
    assert feed(detector, [SPEECH] * 3) == [(2, SpeechStarted(0.0))]


@pytest.mark.parametrize("probability", [-0.1, 1.5, float("nan")])
def test_probability_out_of_range_is_rejected(probability: float) -> None:
    with pytest.raises(ValueError, match="probability must be within"):
        TurnDetector().process(probability, agent_speaking=False)


@pytest.mark.parametrize("frame_ms", [0.0, -32.0, float("inf")])
def test_bad_frame_ms_is_rejected(frame_ms: float) -> None:
    with pytest.raises(ValueError, match="frame_ms"):
        TurnDetector(frame_ms=frame_ms)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speech_threshold": 1.2}, "speech_threshold must be within"),
        ({"silence_threshold": -0.1}, "silence_threshold must be within"),
        ({"speech_threshold": 0.3, "silence_threshold": 0.4}, "must not exceed"),
        ({"min_speech_ms": -1.0}, "min_speech_ms must be"),
        ({"end_of_turn_silence_ms": -5.0}, "end_of_turn_silence_ms must be"),
        ({"barge_in_min_speech_ms": float("nan")}, "barge_in_min_speech_ms must be"),
        ({"end_of_turn_silence_ms": float("inf")}, "end_of_turn_silence_ms must be"),
    ],
)
def test_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TurnConfig(**kwargs)


def test_equal_thresholds_are_allowed() -> None:
    config = TurnConfig(speech_threshold=0.5, silence_threshold=0.5)
    assert config.silence_threshold == config.speech_threshold
