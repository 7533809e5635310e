"""Turn detection: VAD probabilities in, turn events out. Sans-I/O.

The detector sees one speech probability per VAD frame and keeps its own audio
clock (``frame_ms`` per call), so every timestamp is on the *audio timeline*:
milliseconds of input audio since the stream began. Wall-clock time never enters,
which makes the detector deterministic and testable without an event loop.

    IDLE ──speech──▶ MAYBE_SPEECH ──min_speech_ms──▶ SPEAKING ◀──speech── PAUSED
      ▲                   │ silence                      │ silence           │
      └───────────────────┘                              └──────────▶────────┘
      ▲                                                                      │
      └───── end_of_turn_silence_ms of silence, or end_turn() (learned) ─────┘
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

EndOfTurnPolicyName = Literal["silence", "learned"]
END_OF_TURN_POLICIES: tuple[EndOfTurnPolicyName, ...] = ("silence", "learned")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Thresholds and durations of the turn detector.

    Two thresholds give hysteresis: speech starts or resumes only at
    ``speech_threshold`` but stops only below ``silence_threshold``, so a
    probability hovering around one value does not toggle the state each frame.
    """

    speech_threshold: float = 0.5
    """A frame with probability >= this starts or resumes speech."""
    silence_threshold: float = 0.35
    """A frame with probability < this counts as silence."""
    min_speech_ms: float = 96.0
    """Speech must last this long before SpeechStarted; guards against clicks."""
    end_of_turn_silence_ms: float = 500.0
    """Silence after speech that ends the user's turn."""
    barge_in_min_speech_ms: float = 300.0
    """Speech sustained this long while the agent talks interrupts it; coughs and
    echo residue are shorter."""
    end_of_turn_policy: EndOfTurnPolicyName = "silence"
    """``silence``: a pause of ``end_of_turn_silence_ms`` ends the turn. ``learned``:
    the end-of-turn model decides between the min and max silences below
    (pipeline/turn_policy.py)."""
    end_of_turn_threshold: float = 0.5
    """Learned policy: a model probability at or above this means the turn is complete."""
    end_of_turn_min_silence_ms: float = 200.0
    """Learned policy: silence before the model is first asked; no turn ends sooner."""
    end_of_turn_max_silence_ms: float = 2000.0
    """Learned policy: silence that ends the turn whatever the model says."""
    end_of_turn_recheck_ms: float = 300.0
    """Learned policy: while the model says "not complete", ask it again after this
    much more silence."""

    def __post_init__(self) -> None:
        if self.end_of_turn_policy not in END_OF_TURN_POLICIES:
            raise ValueError(
                f"end_of_turn_policy must be one of {', '.join(END_OF_TURN_POLICIES)}, "
                f"got {self.end_of_turn_policy!r}"
            )
        for name in ("speech_threshold", "silence_threshold", "end_of_turn_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.silence_threshold > self.speech_threshold:
            raise ValueError(
                f"silence_threshold ({self.silence_threshold}) must not exceed "
                f"speech_threshold ({self.speech_threshold})"
            )
        for name in (
            "min_speech_ms",
            "end_of_turn_silence_ms",
            "barge_in_min_speech_ms",
            "end_of_turn_min_silence_ms",
            "end_of_turn_max_silence_ms",
        ):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite duration >= 0 ms, got {value}")
        if self.end_of_turn_max_silence_ms < self.end_of_turn_min_silence_ms:
            raise ValueError(
                f"end_of_turn_max_silence_ms ({self.end_of_turn_max_silence_ms}) must not be "
                f"below end_of_turn_min_silence_ms ({self.end_of_turn_min_silence_ms})"
            )
        # Zero would ask the model on every frame of a pause.
        if not (self.end_of_turn_recheck_ms >= 32.0 and math.isfinite(self.end_of_turn_recheck_ms)):
            raise ValueError(
                "end_of_turn_recheck_ms must be a finite duration >= 32 ms (one VAD frame), "
                f"got {self.end_of_turn_recheck_ms}"
            )

    @property
    def silence_limit_ms(self) -> float:
        """Silence after which the detector ends a turn by itself.

        Under the learned policy that is the maximum: the policy ends turns
        sooner through ``TurnDetector.end_turn``, and a policy that never gets
        an answer still cannot hold a turn open for ever.
        """
        if self.end_of_turn_policy == "learned":
            return self.end_of_turn_max_silence_ms
        return self.end_of_turn_silence_ms


DEFAULT_TURN_CONFIG = TurnConfig()


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed; ``start_ms`` is the start of its first speech frame."""

    start_ms: float


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Silence began after speech: the moment to start speculative transcription."""

    end_ms: float


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Speech came back before the end of the turn: discard the speculation."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    """The user's turn is over; ``end_ms`` is where its speech ended, not where
    the end-of-turn silence ran out."""

    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The user talked over the agent long enough to interrupt it.

    ``at_ms`` is the end of the frame that decided it: the earliest audio time
    at which the interruption was known, unlike the other events, which mark
    where speech or silence began.
    """

    at_ms: float


@dataclass(frozen=True, slots=True)
class TurnDiscarded:
    """A turn that ended without becoming one: a cough must not become a turn."""

    start_ms: float
    end_ms: float
    reason: str


TurnEvent = SpeechStarted | SpeechStopped | SpeechResumed | EndOfTurn | BargeIn | TurnDiscarded

SHORT_SPEECH_DURING_RESPONSE = "short_speech_during_response"


class TurnState(enum.Enum):
    IDLE = "idle"
    MAYBE_SPEECH = "maybe_speech"
    SPEAKING = "speaking"
    PAUSED = "paused"


_TRANSITIONS: dict[TurnState, frozenset[TurnState]] = {
    TurnState.IDLE: frozenset({TurnState.MAYBE_SPEECH}),
    TurnState.MAYBE_SPEECH: frozenset({TurnState.IDLE, TurnState.SPEAKING}),
    TurnState.SPEAKING: frozenset({TurnState.PAUSED}),
    TurnState.PAUSED: frozenset({TurnState.SPEAKING, TurnState.IDLE}),
}


class TurnDetector:
    """Per-frame state machine over VAD probabilities; one instance per stream.

    Choices worth knowing:

    * A frame between the thresholds counts as speech in MAYBE_SPEECH and
      SPEAKING but as silence in PAUSED: leaving speech needs a clearly silent
      frame and coming back needs a clearly speech frame (hysteresis both ways).
    * The turn's speech time counts speech frames only, from its first frame
      (the ``min_speech_ms`` part included) across pauses; pauses do not count.
    * BargeIn is checked on speech frames once speech is confirmed, never before
      SpeechStarted: interrupting the agent on unconfirmed speech would let the
      clicks that ``min_speech_ms`` filters cut it off. It fires on the first
      speech frame where the turn's speech time reaches ``barge_in_min_speech_ms``
      *and* the agent is speaking, so speech that began just before the agent
      started can still interrupt it. At most once per turn.
    * A turn whose every speech frame came while the agent spoke, and that never
      reached BargeIn, ends as TurnDiscarded: it was too short to interrupt, so
      treating it as the user's turn would answer a cough or the agent's echo.
    """

    # Per-turn bookkeeping, set by _clear_turn().
    _turn_start_ms: float
    _speech_end_ms: float
    _speech_ms: float
    _silence_ms: float
    _speech_outside_response: bool
    _barged_in: bool

    def __init__(self, config: TurnConfig = DEFAULT_TURN_CONFIG, frame_ms: float = 32.0) -> None:
        if not (frame_ms > 0.0 and math.isfinite(frame_ms)):
            raise ValueError(f"frame_ms must be a finite duration > 0, got {frame_ms}")
        self.config = config
        self.frame_ms = frame_ms
        self.state = TurnState.IDLE
        self._frames_seen = 0
        self._clear_turn()

    def reset(self) -> None:
        """Back to IDLE at time zero, e.g. for a new stream; emits nothing."""
        self.state = TurnState.IDLE
        self._frames_seen = 0
        self._clear_turn()

    def abandon(self) -> None:
        """Forget the turn in progress, keeping the clock; emits nothing."""
        self.state = TurnState.IDLE
        self._clear_turn()

    @property
    def now_ms(self) -> float:
        """Audio time at the end of the frames processed so far."""
        return self._frames_seen * self.frame_ms

    def process(self, probability: float, *, agent_speaking: bool) -> list[TurnEvent]:
        """Advance one frame; return the events this frame caused, in order."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability}")
        # Multiplying the frame index avoids drift from summing float frame_ms.
        frame_start = self._frames_seen * self.frame_ms
        self._frames_seen += 1
        events: list[TurnEvent] = []
        if self.state is TurnState.IDLE:
            self._on_idle(probability, frame_start, agent_speaking, events)
        elif self.state is TurnState.MAYBE_SPEECH:
            self._on_maybe_speech(probability, agent_speaking, events)
        elif self.state is TurnState.SPEAKING:
            self._on_speaking(probability, frame_start, agent_speaking, events)
        else:
            self._on_paused(probability, frame_start, agent_speaking, events)
        return events

    def _on_idle(
        self, probability: float, frame_start: float, agent_speaking: bool, events: list[TurnEvent]
    ) -> None:
        if probability < self.config.speech_threshold:
            return
        self._transition(TurnState.MAYBE_SPEECH)
        self._turn_start_ms = frame_start
        self._on_maybe_speech(probability, agent_speaking, events)

    def _on_maybe_speech(
        self, probability: float, agent_speaking: bool, events: list[TurnEvent]
    ) -> None:
        if probability < self.config.silence_threshold:
            # Too short to be speech: a click. Forget it without an event.
            self._transition(TurnState.IDLE)
            self._clear_turn()
            return
        self._count_speech(agent_speaking)
        if self._speech_ms >= self.config.min_speech_ms:
            self._transition(TurnState.SPEAKING)
            events.append(SpeechStarted(self._turn_start_ms))
            self._check_barge_in(agent_speaking, events)

    def _on_speaking(
        self, probability: float, frame_start: float, agent_speaking: bool, events: list[TurnEvent]
    ) -> None:
        if probability >= self.config.silence_threshold:
            self._count_speech(agent_speaking)
            self._check_barge_in(agent_speaking, events)
            return
        self._transition(TurnState.PAUSED)
        self._speech_end_ms = frame_start
        self._silence_ms = 0.0
        events.append(SpeechStopped(frame_start))
        self._count_silence(events)

    def _on_paused(
        self, probability: float, frame_start: float, agent_speaking: bool, events: list[TurnEvent]
    ) -> None:
        if probability >= self.config.speech_threshold:
            self._transition(TurnState.SPEAKING)
            events.append(SpeechResumed(frame_start))
            self._count_speech(agent_speaking)
            self._check_barge_in(agent_speaking, events)
            return
        self._count_silence(events)

    def _count_speech(self, agent_speaking: bool) -> None:
        self._speech_ms += self.frame_ms
        if not agent_speaking:
            self._speech_outside_response = True

    def end_turn(self) -> list[TurnEvent]:
        """End the paused turn now, before its silence limit (the learned policy's
        early decision); the same events as a silence that ran out. Nothing when
        no turn is paused: speech resumed, or the turn already ended."""
        if self.state is not TurnState.PAUSED:
            return []
        events: list[TurnEvent] = []
        self._end_turn(events)
        return events

    def _count_silence(self, events: list[TurnEvent]) -> None:
        self._silence_ms += self.frame_ms
        if self._silence_ms >= self.config.silence_limit_ms:
            self._end_turn(events)

    def _end_turn(self, events: list[TurnEvent]) -> None:
        if self._speech_outside_response or self._barged_in:
            events.append(EndOfTurn(self._turn_start_ms, self._speech_end_ms))
        else:
            events.append(
                TurnDiscarded(
                    self._turn_start_ms, self._speech_end_ms, SHORT_SPEECH_DURING_RESPONSE
                )
            )
        self._transition(TurnState.IDLE)
        self._clear_turn()

    def _check_barge_in(self, agent_speaking: bool, events: list[TurnEvent]) -> None:
        if (
            agent_speaking
            and not self._barged_in
            and self._speech_ms >= self.config.barge_in_min_speech_ms
        ):
            self._barged_in = True
            events.append(BargeIn(self.now_ms))

    def _transition(self, new_state: TurnState) -> None:
        if new_state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal turn transition {self.state.name} -> {new_state.name}")
        self.state = new_state

    def _clear_turn(self) -> None:
        self._turn_start_ms = 0.0
        self._speech_end_ms = 0.0
        self._speech_ms = 0.0
        self._silence_ms = 0.0
        self._speech_outside_response = False
        self._barged_in = False
