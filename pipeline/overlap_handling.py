"""Caller speech over the agent, for clients that can pause playback (protocol 1.1).

The glue between the pure ``OverlapTracker`` (pipeline/interruption.py), the turn
side (pipeline/turns.py, which feeds it speech events and transcripts) and the
response runner (pipeline/responses.py, which pauses, resumes or cancels the reply):

    speech starts over the reply ─► pause at once
    speech stops ─► speculative transcript ─► backchannel/noise: resume
                                           └► words: cancel (barge_in), the turn is answered
    speech goes on past ``long_speech_ms`` ─► cancel without waiting
    the turn ends judged a backchannel while its reply plays on ─► not answered

With ``playback_pause`` off every method is a no-op and the detector's BargeIn
cancels as before, so a 1.0 client sees exactly the 1.0 behaviour.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from pipeline.interruption import (
    Interrupt,
    InterruptionConfig,
    OverlapAction,
    OverlapPhase,
    OverlapTracker,
    Pause,
    Resume,
    Verdict,
)
from pipeline.reply_state import ACTIVE_PHASES, Response
from pipeline.responses import ResponseRunner
from pipeline.session import CallContext

MAX_TURNS_IN_FLIGHT = 8
"""Ended turns whose verdict waits for their transcript; more are not kept."""


@dataclass(frozen=True, slots=True)
class _EndedTurn:
    verdict: Verdict | None
    """None: no overlap, or (with ``pending``) not judged yet."""
    pending: bool
    reply: Response | None
    """The reply the turn was spoken over."""


class OverlapHandling:
    """One call's pauses, resumes and interruption verdicts."""

    def __init__(
        self, call: CallContext, responses: ResponseRunner, config: InterruptionConfig | None = None
    ) -> None:
        self._call = call
        self._responses = responses
        self.tracker = OverlapTracker(config or InterruptionConfig())
        self._reply: Response | None = None
        """The reply the overlap in progress paused (and maybe resumed)."""
        self._ended: OrderedDict[float, _EndedTurn] = OrderedDict()
        """Ended turns by their speech end (audio ms), until ``answers`` reads them."""

    @property
    def enabled(self) -> bool:
        return self._call.config.playback_pause

    @property
    def barge_in_cancels(self) -> bool:
        """Whether the detector's BargeIn cancels the reply (1.0) or the verdict does."""
        return not self.enabled

    # ------------------------------------------------------------ speech events

    def speech_started(self, at_ms: float) -> None:
        """Speech began, came back within the turn, or reached barge-in length."""
        if not self.enabled:
            return
        self._forget_gone_reply()
        if self.tracker.phase is OverlapPhase.IDLE:
            # Shorter than a 1.0 barge-in never interrupts: the session's own setting.
            minimum = self._call.config.turn.barge_in_min_speech_ms
            if self.tracker.config.min_interruption_ms != minimum:
                self.tracker.config = replace(self.tracker.config, min_interruption_ms=minimum)
        audible = self._audible()
        actions = self.tracker.speech_started(at_ms, agent_audible=audible is not None)
        for action in actions:
            if isinstance(action, Pause) and audible is not None:
                self._responses.pause(audible)
                self._reply = audible

    def frame(self, start_ms: float, frame_ms: float, *, speech: bool, level: float) -> None:
        """One VAD frame, before the detector's events for it: how much is voiced."""
        if self.enabled:
            self.tracker.frame(start_ms, frame_ms, speech=speech, level=level)

    def speech_stopped(self, at_ms: float) -> None:
        if self.enabled:
            self.tracker.speech_stopped(at_ms)

    def tick(self, now_ms: float) -> None:
        """A frame went by: speech too long for a backchannel interrupts now."""
        if self.enabled and self.tracker.phase is OverlapPhase.PAUSED:
            self._forget_gone_reply()
            self._apply(self.tracker.tick(now_ms))

    def transcript(self, text: str | None, now_ms: float) -> None:
        """The speculative transcript of the speech so far (None: it failed)."""
        if self.enabled and self.tracker.phase is OverlapPhase.PAUSED:
            self._forget_gone_reply()
            self._apply(self.tracker.transcript(text, now_ms))

    def turn_discarded(self) -> None:
        """The detector dropped the turn as too short: noise, play on."""
        if self.enabled:
            self._forget_gone_reply()
            self._apply(self.tracker.turn_discarded())
            self._reply = None

    # ------------------------------------------------------------------ turns

    def turn_over(self, end_ms: float) -> None:
        """The turn ending at ``end_ms`` is over; keep its verdict for ``answers``."""
        if not self.enabled:
            return
        self._forget_gone_reply()
        if self.tracker.phase is OverlapPhase.PAUSED:
            ended = _EndedTurn(None, pending=True, reply=self._reply)
        else:
            ended = _EndedTurn(self.tracker.turn_ended(), pending=False, reply=self._reply)
            self._reply = None
        self._ended[end_ms] = ended
        while len(self._ended) > MAX_TURNS_IN_FLIGHT:
            self._ended.popitem(last=False)

    def answers(self, end_ms: float, text: str | None, now_ms: float) -> bool:
        """Whether the turn ending at ``end_ms``, transcribed as ``text``, gets a reply.

        A backchannel or noise spoken over a reply that still plays does not;
        everything else does. A verdict still pending is given here (resuming or
        cancelling the reply); ``text`` None means transcription failed.
        """
        ended = self._ended.pop(end_ms, None)
        if ended is None:
            return True
        verdict = ended.verdict
        if ended.pending:
            self._forget_gone_reply()
            if self.tracker.phase is OverlapPhase.PAUSED:
                self._apply(self.tracker.final_transcript(text, now_ms))
                verdict = self.tracker.verdict
                if self.tracker.phase is OverlapPhase.PAUSED:
                    self.tracker.verdict = None  # the new speech is judged on its own
                else:
                    self.tracker.turn_ended()
                    self._reply = None
        if verdict not in (Verdict.BACKCHANNEL, Verdict.NOISE):
            return True
        reply = ended.reply
        return reply is None or reply.phase not in ACTIVE_PHASES

    # ---------------------------------------------------------------- helpers

    def _audible(self) -> Response | None:
        response = self._responses.active()
        if response is None or response.held or not self._responses.agent_speaking:
            return None
        return response

    def _forget_gone_reply(self) -> None:
        """The reply ended some other way (completed, cancelled): nothing to resume."""
        if self._reply is not None and self._reply.phase not in ACTIVE_PHASES:
            self._reply = None
            if self.tracker.phase is not OverlapPhase.IDLE:
                self.tracker.response_gone()

    def _apply(self, actions: list[OverlapAction]) -> None:
        for action in actions:
            if isinstance(action, Resume):
                if self._reply is not None:
                    self._responses.resume(self._reply)
            elif isinstance(action, Interrupt):
                response = self._reply
                self._reply = None
                if response is not None and response.phase in ACTIVE_PHASES:
                    self._responses.cancel(response, "barge_in")
