"""When does a pause end the caller's turn? Sans-I/O.

The turn detector (pipeline/turn.py) finds the pauses; this policy decides which
of them end the turn. Under ``silence`` it does nothing at all: the detector ends
the turn after ``end_of_turn_silence_ms``, exactly as before the policy existed.
Under ``learned`` it asks an end-of-turn model (Smart Turn) whether the words so
far sound finished, and:

* ends the turn as soon as the model says "complete" — never before
  ``end_of_turn_min_silence_ms`` of silence, which is also when it first asks;
* holds the turn while the model says "not complete", asking again every
  ``end_of_turn_recheck_ms`` of further silence;
* ends it at ``end_of_turn_max_silence_ms`` whatever the model says (the
  detector enforces that limit too, so a policy that never hears back cannot
  hold a turn open);
* falls back to the silence rule (``end_of_turn_silence_ms``, kept within the
  min and max) for the rest of a pause whose model call failed or answered
  garbage (NaN, outside [0, 1]);
* reads the speculative transcript when the caller says one is coming: a
  "complete" waits for it (the reply needs it anyway), and a transcript that ends
  open — on "and", "the", "to", a digit, a verb still waiting for its object, inside
  a list (``pipeline.turn_words.ends_open``) — holds the turn to the maximum
  whatever the model says. The model leans on the silence and lets many
  cut-off sentences through; the words catch most of them (docs/decisions.md).

Everything runs on the audio clock, like the detector: the caller feeds the
detector's pause events and the audio time, forwards ``AskModel`` to the model
and its answer back, and ends the detector's turn on ``EndTurn``. Nothing here
holds up the speculative transcript or reply: they start at the pause as they
always did, so an early ``EndTurn`` releases a reply that is already under way.

At most one model call is in flight per pause. An answer is applied only if it
is the one the policy is waiting for: answers for a pause that ended (speech
resumed, the turn ended), duplicates and unknown ids are counted and dropped.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pipeline.turn import DEFAULT_TURN_CONFIG, TurnConfig
from pipeline.turn_words import ends_open


@dataclass(frozen=True, slots=True)
class AskModel:
    """Ask the end-of-turn model about the audio up to ``audio_end_ms``; answer
    with ``model_answered(request_id, ...)`` or ``model_failed(request_id)``."""

    request_id: int
    audio_end_ms: float


class EndReason(enum.Enum):
    MODEL_COMPLETE = "model_complete"
    MAX_SILENCE = "max_silence"
    MODEL_UNAVAILABLE = "model_unavailable"
    """The model failed during this pause: the silence rule decided."""


@dataclass(frozen=True, slots=True)
class EndTurn:
    """End the turn now (``TurnDetector.end_turn``); ``silence_ms`` is how long
    the pause had lasted when the policy decided."""

    at_ms: float
    silence_ms: float
    reason: EndReason


PolicyAction = AskModel | EndTurn

class PolicyPhase(enum.Enum):
    NO_PAUSE = "no_pause"
    """Idle or speaking: nothing to decide."""
    LISTENING = "listening"
    """In a pause, no model call in flight."""
    ASKING = "asking"
    """In a pause, waiting for the answer to ``_in_flight``."""
    DECIDED = "decided"
    """EndTurn given for this pause; silent until the next pause."""


_TRANSITIONS: dict[PolicyPhase, frozenset[PolicyPhase]] = {
    PolicyPhase.NO_PAUSE: frozenset({PolicyPhase.LISTENING}),
    PolicyPhase.LISTENING: frozenset(
        {PolicyPhase.NO_PAUSE, PolicyPhase.LISTENING, PolicyPhase.ASKING, PolicyPhase.DECIDED}
    ),
    PolicyPhase.ASKING: frozenset(
        {PolicyPhase.NO_PAUSE, PolicyPhase.LISTENING, PolicyPhase.DECIDED}
    ),
    PolicyPhase.DECIDED: frozenset({PolicyPhase.NO_PAUSE, PolicyPhase.LISTENING}),
}


class EndOfTurnPolicy:
    """One per stream. Feed it the detector's pauses, the audio clock and the
    model's answers; it returns what to do, in order.

    Inputs in any order are safe: a resume without a pause, an answer after the
    turn ended or a second pause start are absorbed, never raised, because they
    come from concurrent work (model calls) racing the audio.
    """

    # Per-pause bookkeeping, set by _open_pause().
    _pause_start_ms: float
    _next_ask_silence_ms: float
    _in_flight: int | None
    _said_complete: bool
    _model_unavailable: bool
    _transcript_pending: bool
    _transcript_open: bool

    def __init__(self, config: TurnConfig = DEFAULT_TURN_CONFIG) -> None:
        self.config = config
        self.phase = PolicyPhase.NO_PAUSE
        self.now_ms = 0.0
        self._next_request_id = 1
        self.pause_id = 0
        """Which pause a transcript belongs to (``transcript_heard``)."""
        self.requests = 0
        self.dropped_answers = 0
        """Answers that came for no pending request (stale, duplicate, unknown)."""
        self.failed_answers = 0
        """Model failures and invalid probabilities."""
        self._open_pause(0.0)

    @property
    def learned(self) -> bool:
        return self.config.end_of_turn_policy == "learned"

    # ------------------------------------------------------------------ inputs

    def pause_started(self, at_ms: float, *, transcript_coming: bool = False) -> int:
        """Silence began at ``at_ms`` (the detector's SpeechStopped); returns the
        pause's id for ``transcript_heard``.

        ``transcript_coming``: a speculative transcript of the words before this
        pause is on its way; the model's "complete" then waits for it. A second
        start without a resume replaces the first pause: whatever was asked about
        the old one no longer counts.
        """
        self._move(PolicyPhase.LISTENING)
        self._open_pause(at_ms)
        self.pause_id += 1
        self._transcript_pending = transcript_coming
        return self.pause_id

    def transcript_heard(self, pause_id: int, text: str | None) -> list[PolicyAction]:
        """The speculative transcript of pause ``pause_id``; None when it failed or
        was dropped. A transcript for another pause is ignored."""
        if pause_id != self.pause_id or not self._transcript_pending:
            return []
        self._transcript_pending = False
        self._transcript_open = text is not None and ends_open(text)
        return self._decide()

    def speech_resumed(self) -> None:
        """Speech came back (SpeechResumed): the pause is over, its answers stale."""
        self._close_pause()

    def turn_ended(self) -> None:
        """The detector ended or discarded the turn, whoever decided it."""
        self._close_pause()

    def advance(self, now_ms: float) -> list[PolicyAction]:
        """The audio clock reached ``now_ms`` (the end of the frames processed)."""
        if not math.isfinite(now_ms):
            raise ValueError(f"now_ms must be finite, got {now_ms}")
        if now_ms < self.now_ms:
            raise ValueError(f"the audio clock went back from {self.now_ms} to {now_ms} ms")
        self.now_ms = now_ms
        return self._decide()

    def model_answered(self, request_id: int, probability: float) -> list[PolicyAction]:
        """The model's probability that the turn is complete, for ``request_id``."""
        if not self._is_awaited(request_id):
            return []
        self._in_flight = None
        self._move(PolicyPhase.LISTENING)
        if not (0.0 <= probability <= 1.0):  # NaN fails this too
            self.failed_answers += 1
            self._model_unavailable = True
        else:
            self._said_complete = probability >= self.config.end_of_turn_threshold
        return self._decide()

    def model_failed(self, request_id: int) -> list[PolicyAction]:
        """The model call for ``request_id`` raised or was refused (queue full)."""
        if not self._is_awaited(request_id):
            return []
        self._in_flight = None
        self._move(PolicyPhase.LISTENING)
        self.failed_answers += 1
        self._model_unavailable = True
        return self._decide()

    # --------------------------------------------------------------- decisions

    def _decide(self) -> list[PolicyAction]:
        if not self.learned or self.phase not in (PolicyPhase.LISTENING, PolicyPhase.ASKING):
            return []
        config = self.config
        silence_ms = self.now_ms - self._pause_start_ms
        reason: EndReason | None = None
        if silence_ms >= config.end_of_turn_max_silence_ms:
            reason = EndReason.MAX_SILENCE
        elif self._transcript_open:
            pass  # the words are unfinished: only the maximum ends this pause
        elif self._model_unavailable and silence_ms >= max(
            config.end_of_turn_silence_ms, config.end_of_turn_min_silence_ms
        ):
            reason = EndReason.MODEL_UNAVAILABLE
        elif (
            self._said_complete
            and not self._transcript_pending
            and silence_ms >= config.end_of_turn_min_silence_ms
        ):
            reason = EndReason.MODEL_COMPLETE
        if reason is not None:
            self._move(PolicyPhase.DECIDED)
            self._in_flight = None
            return [EndTurn(self.now_ms, silence_ms, reason)]
        if (
            self.phase is PolicyPhase.LISTENING
            and not self._model_unavailable
            and not self._transcript_open
            and silence_ms >= self._next_ask_silence_ms
        ):
            request_id = self._next_request_id
            self._next_request_id += 1
            self.requests += 1
            self._in_flight = request_id
            # Counted from this ask, not from the schedule: a late answer must not
            # make the next ask follow at once.
            self._next_ask_silence_ms = silence_ms + config.end_of_turn_recheck_ms
            self._move(PolicyPhase.ASKING)
            return [AskModel(request_id, self.now_ms)]
        return []

    def _is_awaited(self, request_id: int) -> bool:
        if self.phase is PolicyPhase.ASKING and request_id == self._in_flight:
            return True
        self.dropped_answers += 1
        return False

    def _open_pause(self, at_ms: float) -> None:
        self._pause_start_ms = at_ms
        self._next_ask_silence_ms = self.config.end_of_turn_min_silence_ms
        self._in_flight = None
        self._said_complete = False
        self._model_unavailable = False
        self._transcript_pending = False
        self._transcript_open = False

    def _close_pause(self) -> None:
        if self.phase is not PolicyPhase.NO_PAUSE:
            self._move(PolicyPhase.NO_PAUSE)
        self._in_flight = None

    def _move(self, phase: PolicyPhase) -> None:
        if phase not in _TRANSITIONS[self.phase]:
            raise RuntimeError(f"illegal policy transition {self.phase.name} -> {phase.name}")
        self.phase = phase
