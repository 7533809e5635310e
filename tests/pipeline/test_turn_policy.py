"""The end-of-turn policy as a pure state machine: no event loop, no model.

The audio clock advances in 32 ms VAD frames; the model's answers are fed in by
hand, in the orders concurrency can produce (late, stale, duplicated, garbage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.turn import (
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
from pipeline.turn_policy import (
    AskModel,
    EndOfTurnPolicy,
    EndReason,
    EndTurn,
    PolicyAction,
    PolicyPhase,
)

FRAME = 32.0
SPEECH = 0.9
SILENCE = 0.05

LEARNED = TurnConfig(
    end_of_turn_policy="learned",
    end_of_turn_min_silence_ms=192.0,  # six frames
    end_of_turn_max_silence_ms=1504.0,  # 47 frames
    end_of_turn_recheck_ms=320.0,  # ten frames
    end_of_turn_silence_ms=512.0,  # the fallback: 16 frames
)


def paused_policy(config: TurnConfig = LEARNED, start_ms: float = 1000.0) -> EndOfTurnPolicy:
    policy = EndOfTurnPolicy(config)
    policy.advance(start_ms)
    policy.pause_started(start_ms)
    return policy


def run_until_action(policy: EndOfTurnPolicy, limit_ms: float = 5000.0) -> list[PolicyAction]:
    """Advance frame by frame until the policy asks or decides something."""
    now = policy.now_ms
    while now < limit_ms:
        now += FRAME
        actions = policy.advance(now)
        if actions:
            return actions
    return []


# -------------------------------------------------------------- the happy path


def test_silence_policy_never_asks_and_never_ends() -> None:
    policy = paused_policy(TurnConfig())
    for step in range(1, 200):
        assert policy.advance(1000.0 + step * FRAME) == []
    assert policy.requests == 0


def test_first_question_comes_at_the_minimum_silence() -> None:
    policy = paused_policy()
    assert run_until_action(policy) == [AskModel(1, 1000.0 + 6 * FRAME)]
    assert policy.phase is PolicyPhase.ASKING


def test_complete_answer_ends_the_turn_at_once() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.advance(ask.audio_end_ms + FRAME)  # the answer takes a frame to come back
    assert policy.model_answered(ask.request_id, 0.93) == [
        EndTurn(ask.audio_end_ms + FRAME, 7 * FRAME, EndReason.MODEL_COMPLETE)
    ]
    assert policy.phase is PolicyPhase.DECIDED
    assert run_until_action(policy) == []  # nothing more for this pause


def test_threshold_is_inclusive() -> None:
    policy = paused_policy(replace(LEARNED, end_of_turn_threshold=0.7))
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id, 0.69) == []
    policy = paused_policy(replace(LEARNED, end_of_turn_threshold=0.7))
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert [type(action) for action in policy.model_answered(ask.request_id, 0.7)] == [EndTurn]


def test_incomplete_holds_and_asks_again_as_the_silence_grows() -> None:
    policy = paused_policy()
    asked: list[float] = []
    ended: EndTurn | None = None
    now = policy.now_ms
    while ended is None:
        now += FRAME
        for action in policy.advance(now):
            if isinstance(action, AskModel):
                asked.append(action.audio_end_ms - 1000.0)
                # The third look finds the turn complete.
                probability = 0.9 if len(asked) == 3 else 0.1
                for answer in policy.model_answered(action.request_id, probability):
                    assert isinstance(answer, EndTurn)
                    ended = answer
            else:
                assert isinstance(action, EndTurn)
                ended = action
    assert asked == [6 * FRAME, 16 * FRAME, 26 * FRAME]  # min, then every recheck
    assert ended == EndTurn(1000.0 + 26 * FRAME, 26 * FRAME, EndReason.MODEL_COMPLETE)


def test_a_turn_the_model_never_finds_complete_ends_at_the_maximum() -> None:
    policy = paused_policy()
    now = policy.now_ms
    ended: list[EndTurn] = []
    while not ended:
        now += FRAME
        for action in policy.advance(now):
            if isinstance(action, AskModel):
                assert policy.model_answered(action.request_id, 0.02) == []
            else:
                assert isinstance(action, EndTurn)
                ended.append(action)
    assert ended == [EndTurn(1000.0 + 47 * FRAME, 47 * FRAME, EndReason.MAX_SILENCE)]
    assert policy.requests == 5  # at 6, 16, 26, 36 and 46 frames


def test_a_late_answer_that_missed_its_recheck_asks_again_at_once() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    for step in range(1, 15):  # 14 frames: past the next recheck (ask + 10 frames)
        assert policy.advance(ask.audio_end_ms + step * FRAME) == []
    assert policy.model_answered(ask.request_id, 0.2) == [
        AskModel(2, ask.audio_end_ms + 14 * FRAME)
    ]


# ------------------------------------------------------------ adversarial order


def test_speech_resuming_while_the_model_runs_makes_its_answer_stale() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.speech_resumed()
    assert policy.phase is PolicyPhase.NO_PAUSE
    assert policy.model_answered(ask.request_id, 0.99) == []
    assert policy.dropped_answers == 1
    assert run_until_action(policy) == []


def test_an_answer_for_the_previous_pause_does_not_end_the_next_one() -> None:
    policy = paused_policy()
    (old,) = run_until_action(policy)
    assert isinstance(old, AskModel)
    policy.speech_resumed()
    policy.advance(policy.now_ms + 10 * FRAME)
    policy.pause_started(policy.now_ms)
    (new,) = run_until_action(policy)
    assert isinstance(new, AskModel) and new.request_id == old.request_id + 1
    # Out of order: the new pause's answer first, then the old pause's.
    assert policy.model_answered(new.request_id, 0.1) == []
    assert policy.model_answered(old.request_id, 0.99) == []
    assert policy.phase is PolicyPhase.LISTENING
    assert policy.dropped_answers == 1


def test_duplicate_and_unknown_answers_are_dropped() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id + 7, 0.99) == []
    assert policy.model_failed(-1) == []
    assert policy.model_answered(ask.request_id, 0.1) == []
    assert policy.model_answered(ask.request_id, 0.99) == []  # the same id again
    assert policy.dropped_answers == 3
    assert policy.phase is PolicyPhase.LISTENING


def test_answers_after_the_decision_change_nothing() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    (ended,) = policy.advance(1000.0 + 47 * FRAME)  # the maximum, the answer still out
    assert isinstance(ended, EndTurn) and ended.reason is EndReason.MAX_SILENCE
    assert policy.model_answered(ask.request_id, 0.99) == []
    policy.turn_ended()
    assert policy.phase is PolicyPhase.NO_PAUSE
    assert policy.model_answered(ask.request_id, 0.99) == []


@pytest.mark.parametrize("garbage", [math.nan, -0.01, 1.01, math.inf, -math.inf])
def test_a_garbage_probability_falls_back_to_the_silence_rule(garbage: float) -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id, garbage) == []
    assert policy.failed_answers == 1
    # No further question; the pause ends at end_of_turn_silence_ms (16 frames).
    assert run_until_action(policy) == [
        EndTurn(1000.0 + 16 * FRAME, 16 * FRAME, EndReason.MODEL_UNAVAILABLE)
    ]
    assert policy.requests == 1


def test_a_failed_model_call_falls_back_to_the_silence_rule() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.advance(1000.0 + 20 * FRAME)  # the failure came late: past the fallback
    assert policy.model_failed(ask.request_id) == [
        EndTurn(1000.0 + 20 * FRAME, 20 * FRAME, EndReason.MODEL_UNAVAILABLE)
    ]


def test_the_fallback_never_ends_a_turn_before_the_minimum_silence() -> None:
    config = replace(LEARNED, end_of_turn_silence_ms=0.0)
    policy = paused_policy(config)
    policy.advance(1000.0 + FRAME)
    policy.pause_started(1000.0 + FRAME)  # a second stop replaces the first pause
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert ask.audio_end_ms == 1000.0 + 7 * FRAME
    assert policy.model_failed(ask.request_id) == [
        EndTurn(1000.0 + 7 * FRAME, 6 * FRAME, EndReason.MODEL_UNAVAILABLE)
    ]


def test_a_fallback_lasts_only_for_its_pause() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.model_failed(ask.request_id)
    policy.speech_resumed()
    policy.pause_started(policy.now_ms)
    assert [type(action) for action in run_until_action(policy)] == [AskModel]


def test_zero_length_silences() -> None:
    """A stop and a resume on the same frame, and a zero minimum silence."""
    policy = paused_policy()
    policy.speech_resumed()
    policy.pause_started(policy.now_ms)
    policy.speech_resumed()
    assert policy.advance(policy.now_ms) == []
    assert policy.phase is PolicyPhase.NO_PAUSE
    config = replace(LEARNED, end_of_turn_min_silence_ms=0.0)
    policy = paused_policy(config)
    (ask,) = policy.advance(policy.now_ms)  # zero silence: asked at once
    assert ask == AskModel(1, 1000.0)
    assert policy.model_answered(1, 1.0) == [EndTurn(1000.0, 0.0, EndReason.MODEL_COMPLETE)]


def test_inputs_without_a_pause_are_absorbed() -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.speech_resumed()
    policy.turn_ended()
    assert policy.model_answered(1, 0.9) == []
    assert policy.advance(5000.0) == []
    assert policy.phase is PolicyPhase.NO_PAUSE


@pytest.mark.parametrize("now_ms", [999.0, math.nan, math.inf])
def test_the_clock_must_move_forward(now_ms: float) -> None:
    policy = paused_policy()
    with pytest.raises(ValueError, match=r"clock went back|finite"):
        policy.advance(now_ms)


def test_a_config_change_mid_pause_applies_at_the_next_frame() -> None:
    policy = paused_policy()
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.model_answered(ask.request_id, 0.1)
    policy.config = replace(LEARNED, end_of_turn_max_silence_ms=256.0)
    assert policy.advance(1000.0 + 7 * FRAME) == []
    assert policy.advance(1000.0 + 8 * FRAME) == [
        EndTurn(1000.0 + 8 * FRAME, 8 * FRAME, EndReason.MAX_SILENCE)
    ]


# ------------------------------------------------------------ transcript cues


def test_a_complete_answer_waits_for_the_coming_transcript() -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.advance(1000.0)
    pause = policy.pause_started(1000.0, transcript_coming=True)
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id, 0.97) == []
    assert policy.advance(1000.0 + 8 * FRAME) == []
    assert policy.transcript_heard(pause, "What is the capital of Australia?") == [
        EndTurn(1000.0 + 8 * FRAME, 8 * FRAME, EndReason.MODEL_COMPLETE)
    ]


@pytest.mark.parametrize("model_first", [True, False])
def test_an_open_transcript_holds_the_turn_to_the_maximum(model_first: bool) -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.advance(1000.0)
    pause = policy.pause_started(1000.0, transcript_coming=True)
    if not model_first:
        assert policy.transcript_heard(pause, "Where can I buy fresh bread and") == []
        assert run_until_action(policy) == [
            EndTurn(1000.0 + 47 * FRAME, 47 * FRAME, EndReason.MAX_SILENCE)
        ]
        assert policy.requests == 0  # the words decided: the model is not asked
        return
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id, 0.99) == []
    assert policy.transcript_heard(pause, "My phone number is 415.") == []
    assert run_until_action(policy) == [
        EndTurn(1000.0 + 47 * FRAME, 47 * FRAME, EndReason.MAX_SILENCE)
    ]
    assert policy.requests == 1


def test_an_open_transcript_overrides_the_fallback_too() -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.advance(1000.0)
    pause = policy.pause_started(1000.0, transcript_coming=True)
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.model_failed(ask.request_id)
    policy.transcript_heard(pause, "call my mother and")
    assert run_until_action(policy) == [
        EndTurn(1000.0 + 47 * FRAME, 47 * FRAME, EndReason.MAX_SILENCE)
    ]


def test_a_lost_transcript_lets_the_model_decide() -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.advance(1000.0)
    pause = policy.pause_started(1000.0, transcript_coming=True)
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    policy.model_answered(ask.request_id, 0.9)
    assert [type(action) for action in policy.transcript_heard(pause, None)] == [EndTurn]


def test_a_transcript_of_another_pause_is_ignored() -> None:
    policy = EndOfTurnPolicy(LEARNED)
    policy.advance(1000.0)
    old = policy.pause_started(1000.0, transcript_coming=True)
    policy.speech_resumed()
    new = policy.pause_started(1000.0, transcript_coming=True)
    assert new == old + 1
    assert policy.transcript_heard(old, "bread and") == []
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert policy.model_answered(ask.request_id, 0.9) == []  # still waiting for its own
    assert policy.transcript_heard(new, "bread and cheese?") != []
    assert policy.transcript_heard(new, "bread and") == []  # only the first counts


def test_without_a_coming_transcript_the_model_alone_decides() -> None:
    policy = paused_policy()  # transcript_coming defaults to False
    (ask,) = run_until_action(policy)
    assert isinstance(ask, AskModel)
    assert [type(a) for a in policy.model_answered(ask.request_id, 0.9)] == [EndTurn]
    assert policy.transcript_heard(policy.pause_id, "and") == []


# --------------------------------------------------- invariants, any input order


@dataclass
class Replay:
    ended: list[EndTurn] = field(default_factory=list)
    asked: list[AskModel] = field(default_factory=list)
    pause_start: float | None = None


_step = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 12)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
    st.tuples(st.just("turn_ended"), st.just(0)),
    st.tuples(st.just("answer"), st.integers(-1, 3)),
    st.tuples(st.just("fail"), st.integers(-1, 3)),
    st.tuples(st.just("transcript"), st.integers(-1, 2)),
    st.tuples(st.just("pause_with_transcript"), st.just(0)),
)
_probability = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.0, 1.0))


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(_step, max_size=80),
    probabilities=st.lists(_probability, min_size=1, max_size=20),
    min_frames=st.integers(0, 10),
    span_frames=st.integers(0, 40),
    recheck_frames=st.integers(1, 12),
)
def test_invariants_hold_for_any_sequence(
    steps: list[tuple[str, int]],
    probabilities: list[float],
    min_frames: int,
    span_frames: int,
    recheck_frames: int,
) -> None:
    config = TurnConfig(
        end_of_turn_policy="learned",
        end_of_turn_min_silence_ms=min_frames * FRAME,
        end_of_turn_max_silence_ms=(min_frames + span_frames) * FRAME,
        end_of_turn_recheck_ms=recheck_frames * FRAME,
    )
    policy = EndOfTurnPolicy(config)
    replay = Replay()
    in_flight: list[int] = []
    answer_index = 0
    for kind, value in steps:
        actions: list[PolicyAction] = []
        if kind == "advance":
            actions = policy.advance(policy.now_ms + value * FRAME)
        elif kind in ("pause", "pause_with_transcript"):
            policy.pause_started(policy.now_ms, transcript_coming=kind != "pause")
            replay.pause_start = policy.now_ms
            replay.ended.clear()
        elif kind == "transcript":
            # value -1: a stale pause id; 0: an open ending; 1: a finished one; 2: lost.
            text = {0: "bread and", 1: "bread and cheese?", 2: None}.get(value, "x")
            pause_id = policy.pause_id - 1 if value == -1 else policy.pause_id
            actions = policy.transcript_heard(pause_id, text)
        elif kind in ("resume", "turn_ended"):
            getattr(policy, "speech_resumed" if kind == "resume" else "turn_ended")()
            replay.pause_start = None
        else:
            # Answer one of the requests asked so far (value picks which), or an unknown id.
            target = replay.asked[value].request_id if 0 <= value < len(replay.asked) else 999
            if kind == "answer":
                probability = probabilities[answer_index % len(probabilities)]
                answer_index += 1
                actions = policy.model_answered(target, probability)
            else:
                actions = policy.model_failed(target)
            if target in in_flight:
                in_flight.remove(target)
        for action in actions:
            assert replay.pause_start is not None, "an action outside a pause"
            silence = policy.now_ms - replay.pause_start
            if isinstance(action, AskModel):
                assert policy.phase is PolicyPhase.ASKING
                assert not replay.ended, "asked after deciding"
                assert action.audio_end_ms == policy.now_ms
                assert all(action.request_id > a.request_id for a in replay.asked)
                assert silence >= config.end_of_turn_min_silence_ms
                replay.asked.append(action)
            else:
                assert not replay.ended, "two decisions for one pause"
                assert policy.phase is PolicyPhase.DECIDED
                assert action.silence_ms == silence
                assert silence >= config.end_of_turn_min_silence_ms
                if action.reason is not EndReason.MAX_SILENCE:
                    assert silence < config.end_of_turn_max_silence_ms + 12 * FRAME
                    assert not policy._transcript_open, "ended on unfinished words"
                replay.ended.append(action)
        assert policy.phase is not PolicyPhase.ASKING or policy.requests >= 1


# ------------------------------------------------------ with the turn detector


def drive(
    config: TurnConfig,
    probabilities: list[float],
    model_says: float | None,
    agent_speaking: bool = False,
) -> tuple[list[tuple[int, TurnEvent]], list[PolicyAction]]:
    """Detector and policy frame by frame, as the conversation wires them; the
    model answers ``model_says`` one frame after each question (None: never)."""
    detector = TurnDetector(config, frame_ms=FRAME)
    policy = EndOfTurnPolicy(config)
    events: list[tuple[int, TurnEvent]] = []
    actions: list[PolicyAction] = []
    waiting: AskModel | None = None

    def on_events(index: int, new: list[TurnEvent]) -> None:
        for event in new:
            events.append((index, event))
            if isinstance(event, SpeechStopped):
                policy.pause_started(event.end_ms)
            elif isinstance(event, SpeechResumed):
                policy.speech_resumed()
            elif isinstance(event, EndOfTurn | TurnDiscarded):
                policy.turn_ended()

    def apply(index: int, new: list[PolicyAction]) -> None:
        nonlocal waiting
        for action in new:
            actions.append(action)
            if isinstance(action, AskModel):
                waiting = action
            else:
                on_events(index, detector.end_turn())

    for index, probability in enumerate(probabilities):
        on_events(index, detector.process(probability, agent_speaking=agent_speaking))
        asked_before, waiting = waiting, None
        apply(index, policy.advance(detector.now_ms))
        if asked_before is not None and model_says is not None:
            apply(index, policy.model_answered(asked_before.request_id, model_says))
        elif asked_before is not None:
            waiting = asked_before
    return events, actions


def test_silence_policy_with_the_detector_is_todays_behaviour() -> None:
    probabilities = [SILENCE] * 2 + [SPEECH] * 5 + [SILENCE] * 16
    events, actions = drive(TurnConfig(), probabilities, model_says=0.99)
    assert events == [
        (4, SpeechStarted(64.0)),
        (7, SpeechStopped(224.0)),
        (22, EndOfTurn(64.0, 224.0)),
    ]
    assert actions == []


def test_learned_policy_ends_a_complete_turn_early() -> None:
    probabilities = [SILENCE] * 2 + [SPEECH] * 5 + [SILENCE] * 60
    events, actions = drive(LEARNED, probabilities, model_says=0.95)
    # Asked after 6 silent frames (frame 12), answered on the next frame.
    assert events == [
        (4, SpeechStarted(64.0)),
        (7, SpeechStopped(224.0)),
        (13, EndOfTurn(64.0, 224.0)),
    ]
    assert actions == [
        AskModel(1, 224.0 + 6 * FRAME),
        EndTurn(224.0 + 7 * FRAME, 7 * FRAME, EndReason.MODEL_COMPLETE),
    ]


def test_learned_policy_holds_an_unfinished_turn_past_the_silence_rule() -> None:
    # A 1 s pause (31 frames) mid-sentence: the silence rule would end the turn.
    probabilities = [SPEECH] * 5 + [SILENCE] * 31 + [SPEECH] * 5 + [SILENCE] * 60
    events, _ = drive(LEARNED, probabilities, model_says=0.05)
    kinds = [type(event) for _, event in events]
    assert kinds == [SpeechStarted, SpeechStopped, SpeechResumed, SpeechStopped, EndOfTurn]
    assert events[-1] == (41 + 47 - 1, EndOfTurn(0.0, 41 * FRAME))


def test_the_detector_ends_the_turn_at_the_maximum_without_any_answer() -> None:
    probabilities = [SPEECH] * 5 + [SILENCE] * 60
    events, actions = drive(LEARNED, probabilities, model_says=None)
    assert events[-1] == (5 + 47 - 1, EndOfTurn(0.0, 5 * FRAME))
    assert actions == [AskModel(1, 11 * FRAME)]  # then nothing: still waiting


def test_an_early_end_still_discards_a_cough_over_the_agent() -> None:
    probabilities = [SPEECH] * 4 + [SILENCE] * 20
    events, _ = drive(LEARNED, probabilities, model_says=0.99, agent_speaking=True)
    assert [event for _, event in events][-1] == TurnDiscarded(
        0.0, 128.0, "short_speech_during_response"
    )
    assert events[-1][0] == 4 + 7 - 1


def test_end_turn_outside_a_pause_does_nothing() -> None:
    detector = TurnDetector(LEARNED)
    assert detector.end_turn() == []
    for _ in range(5):
        detector.process(SPEECH, agent_speaking=False)
    assert detector.end_turn() == []
    assert detector.state is TurnState.SPEAKING


# ------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"end_of_turn_policy": "vibes"}, "end_of_turn_policy must be one of"),
        ({"end_of_turn_threshold": 1.5}, "end_of_turn_threshold must be within"),
        ({"end_of_turn_threshold": math.nan}, "end_of_turn_threshold must be within"),
        ({"end_of_turn_min_silence_ms": -1.0}, "end_of_turn_min_silence_ms must be"),
        ({"end_of_turn_max_silence_ms": math.inf}, "end_of_turn_max_silence_ms must be"),
        (
            {"end_of_turn_min_silence_ms": 900.0, "end_of_turn_max_silence_ms": 800.0},
            "must not be below",
        ),
        ({"end_of_turn_recheck_ms": 0.0}, "end_of_turn_recheck_ms must be"),
        ({"end_of_turn_recheck_ms": math.nan}, "end_of_turn_recheck_ms must be"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TurnConfig(**kwargs)  # type: ignore[arg-type]


def test_the_detector_limit_follows_the_policy() -> None:
    assert TurnConfig().silence_limit_ms == 500.0
    assert LEARNED.silence_limit_ms == LEARNED.end_of_turn_max_silence_ms
