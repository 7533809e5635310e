"""Turn taking: from VAD probabilities to "answer this" — the caller's side of a call.

    frame + VAD probability ─► TurnDetector (pipeline/turn.py, sans-I/O)
        SpeechStarted ─► drop a reply the caller did not hear yet (they kept talking)
        SpeechStopped ─► speculative transcript ─► held reply (after a short silence)
        SpeechResumed ─► throw the speculation and the held reply away
        BargeIn       ─► cancel the reply playing
        EndOfTurn     ─► ``end_turn`` ─► final transcript ─► hand-over
    typed text ─► hand-over
    hand-over (one turn at a time): cancel the reply running ─► wait until it has
        written what was heard ─► the user turn enters history ─► the next reply
        (while the call drains: none; the turn is ignored and the reply plays on)

One turn at a time
------------------
Finished turns wait in one slot for the hand-over, which a single task runs. A turn
that finishes while another waits (or while the hand-over waits for a cancelled
reply to settle) joins it: one reply answers both, and their words enter history
in order as one user turn — the caller said them before hearing any answer.
The backlog is bounded (``MAX_QUEUED_INPUTS``; the oldest beyond it is dropped and
reported as ``TurnIgnored("backlog_full")``). Only the hand-over starts replies,
and it reads the state again after each await (docs/decisions.md).

Where the end of the turn is decided
------------------------------------
Deciding and answering meet at one method, ``TurnTaking.end_turn(start_ms, end_ms)``:
everything before it decides *whether* the caller has finished, everything after it
answers. Under the silence rule the detector emits ``EndOfTurn`` once
``end_of_turn_silence_ms`` of silence follow speech, and ``_on_turn_event`` passes it
to ``end_turn``; a policy that decides otherwise ends the turn early through the
detector (``TurnDetector.end_turn``) or holds it by keeping ``EndOfTurn`` back.

The learned policy is wired in exactly so (pipeline/turn_policy.py decides, this
module carries out): ``SpeechStopped``/``SpeechResumed``/the end of a turn and the
audio clock go to the policy; its ``AskModel`` sends the turn's last 8 s to the shared
Smart Turn worker and its answer back; its ``EndTurn`` makes the detector end the turn
now (``TurnDetector.end_turn``), which reaches ``end_turn`` like any ``EndOfTurn``.
Under the silence policy it never asks or ends anything.

The speculative transcript and the held reply already start at ``SpeechStopped``, so
an early end releases a reply that is mostly ready; while the caller speaks, partial
transcripts let an in-process model read their words ahead (pipeline/read_ahead.py).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from pipeline.echo import rms
from pipeline.engines.base import ChatMessage, FloatAudio
from pipeline.errors import EngineError, STTError
from pipeline.events import (
    ErrorEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.overlap_handling import OverlapHandling
from pipeline.read_ahead import read_ahead, reader, stop_reading, transcribing_interval_ms
from pipeline.reply_state import Response, ResponsePhase, ResponseRequest, error_category
from pipeline.responses import ResponseRunner
from pipeline.session import CallContext
from pipeline.smart_turn import WINDOW_SECONDS, BatchedSmartTurnWorker
from pipeline.turn import (
    BargeIn,
    EndOfTurn,
    SpeechResumed,
    TurnConfig,
    TurnDetector,
    TurnDiscarded,
    TurnEvent,
)
from pipeline.turn import SpeechStarted as TurnSpeechStarted
from pipeline.turn import SpeechStopped as TurnSpeechStopped
from pipeline.turn_audio import TurnAudio
from pipeline.turn_policy import AskModel, EndOfTurnPolicy, PolicyAction
from pipeline.vad import FRAME_MS

logger = logging.getLogger("voiceforge.conversation")

MIN_COMMIT_MS = 100.0
"""The least audio a commit takes (the Realtime API's own bound)."""

MAX_QUEUED_INPUTS = 8
"""User inputs (typed texts, audio turns) that may wait, joined, for one reply; past
it the oldest waiting one is dropped and said so (``TurnIgnored("backlog_full")``)."""


@dataclass(slots=True)
class _QueuedTurn:
    """A finished user turn waiting for its reply; newer input joins it."""

    texts: list[str]
    """What the caller said or typed, oldest first; empty: the turn was lost and
    only the apology is due."""
    turn_end: float
    timings: dict[str, float]
    cancel_reason: str
    """Why the reply playing when this turn is answered is cancelled."""
    speculative: asyncio.Task[tuple[str, float]] | None = None
    """The speculative transcript the turn's text came from, to match a held reply."""
    spans_ms: list[tuple[float, float]] = field(default_factory=list)
    """Where each text's speech lies on the audio timeline (zeros for typed text)."""
    request: ResponseRequest | None = None
    """The client asked for this reply itself (``respond``); its settings."""
    reply: bool = True
    """False: the turn only joins history (``SessionConfig.auto_reply`` off)."""

    def join(self, newer: _QueuedTurn) -> _QueuedTurn:
        """This turn superseded by ``newer``: one reply answers both, timed by the newer."""
        return _QueuedTurn(
            [*self.texts, *newer.texts], newer.turn_end, newer.timings, newer.cancel_reason,
            spans_ms=[*self.spans_ms, *newer.spans_ms],
            request=newer.request or self.request, reply=newer.reply or self.reply,
        )


class TurnTaking:
    """The caller's turns of one call: detection, transcription, handing over to replies."""

    def __init__(self, call: CallContext, responses: ResponseRunner) -> None:
        self._call = call
        self._responses = responses
        config = call.config
        self.detector = TurnDetector(config.turn, frame_ms=FRAME_MS)
        self.policy = EndOfTurnPolicy(config.turn)
        self._asking: asyncio.Task[None] | None = None
        """The end-of-turn model's answer being awaited (at most one per pause)."""
        self.audio = TurnAudio(config.max_turn_ms + 2 * config.speech_pad_ms)
        self._turn_start_ms: float | None = None
        self._speech_end_ms: float | None = None
        self._last_partial_ms = 0.0
        self._last_delta_ms = 0.0
        self._stt_lock = asyncio.Lock()
        self._speculative: asyncio.Task[tuple[str, float]] | None = None
        self._speculative_end_ms: float | None = None
        self._partial_task: asyncio.Task[None] | None = None
        self._draft: Response | None = None
        self._draft_base: list[ChatMessage] = []
        """The history the held reply was started on; it is released only onto that."""
        self._draft_transcript: asyncio.Task[tuple[str, float]] | None = None
        self._waiting: _QueuedTurn | None = None
        """The finished turn waiting for its reply (at most one: newer input joins it)."""
        self._manual_start_ms = 0.0
        """With ``manual_turns``: where the audio not committed yet begins."""
        self._commits: set[asyncio.Task[None]] = set()
        """Committed audio being transcribed: a reply asked for meanwhile waits for it."""
        self._handing_over: asyncio.Task[None] | None = None
        """The one task that turns waiting turns into replies, one at a time."""
        self.tasks: set[asyncio.Task[None]] = set()
        """Turns being transcribed or handed over, and discarded drafts stopping."""
        self.overlaps = OverlapHandling(call, responses)
        """Pause, resume or cancel a reply the caller speaks over (protocol 1.1)."""
        self._frame_level = 0.0
        """RMS of the frame last heard, for the overlap's voiced time."""
        self.accepting = True
        """False while the server drains: no reply starts any more. A turn that ends,
        or that was still being transcribed or waiting for its reply, is ignored (and
        said so); the reply already running is left to finish."""

    def set_turn_config(self, turn: TurnConfig) -> None:
        """New turn settings, from the next frame on."""
        self.detector.config = turn
        self.policy.config = turn

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """Everything turn taking has running (for close)."""
        tasks: list[asyncio.Future[Any]] = [
            task for task in (self._speculative, self._partial_task) if task is not None
        ]
        if self._draft is not None and self._draft.task is not None:
            tasks.append(self._draft.task)
        tasks.extend(self.tasks)
        return tasks

    def forget(self) -> None:
        """Drop references to finished work once the call is closed."""
        self._speculative = self._partial_task = self._asking = None
        self._draft = None
        self._draft_transcript = None
        self._waiting = None
        self._handing_over = None

    # ------------------------------------------------------------------ inputs

    def hear(self, frame: FloatAudio, arrived: float) -> None:
        """One VAD frame of 16 kHz audio, kept for transcription."""
        self.audio.append(frame, arrived)
        self._frame_level = rms(frame)

    def judge(self, probability: float) -> None:
        """The VAD's verdict on the frame last heard."""
        self.overlaps.frame(
            self.detector.now_ms,
            FRAME_MS,
            speech=probability >= self.detector.config.speech_threshold,
            level=self._frame_level,
        )
        for event in self.detector.process(
            probability, agent_speaking=self._responses.agent_speaking
        ):
            self._on_turn_event(event)
        self.overlaps.tick(self.detector.now_ms)
        self._act(self.policy.advance(self.detector.now_ms))
        self._maybe_partial()
        self._maybe_start_draft()

    def text(self, text: str) -> None:
        """A typed user turn: interrupts any reply in progress, then answers."""
        self._responses.keep_call()
        if not self.accepting:
            self._call.emit(TurnIgnored("server_shutting_down", 0.0, 0.0))
            return
        self._queue(
            _QueuedTurn([text], time.monotonic(), {}, "new_text_input", spans_ms=[(0.0, 0.0)])
        )

    def respond(self, request: ResponseRequest) -> None:
        """A reply the client asks for, to the history as it stands (after any turn
        still waiting for its own): interrupts any reply in progress."""
        self._responses.keep_call()
        if not self.accepting:
            self._call.emit(TurnIgnored("server_shutting_down", 0.0, 0.0))
            return
        self._queue(_QueuedTurn([], time.monotonic(), {}, "client_request", request=request))

    def start_manual(self) -> None:
        """From now on the client ends turns: the audio to commit begins here."""
        self._manual_start_ms = self.audio.end_sample / 16

    def commit(self) -> bool:
        """End the paused turn now (the client says it is over); False when no turn
        is paused. With ``manual_turns``: the audio since the last commit (at least
        ``MIN_COMMIT_MS``) becomes a user turn, without a reply."""
        if self._call.config.manual_turns:
            start_ms, end_ms = self._manual_start_ms, self.audio.end_sample / 16
            if end_ms - start_ms < MIN_COMMIT_MS:
                return False
            self._manual_start_ms = end_ms
            task = asyncio.create_task(
                self._committed_turn(start_ms, end_ms), name=f"{self._call.session_id}-commit"
            )
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
            self._keep_until_done(task)
            return True
        events = self.detector.end_turn()
        for event in events:
            self._on_turn_event(event)
        return bool(events)

    def clear(self) -> None:
        """Forget the turn in progress (the client clears its input): no reply to it."""
        self._manual_start_ms = self.audio.end_sample / 16
        self.detector.abandon()
        self._stop_asking()
        self.policy.turn_ended()
        self._discard_speculation()
        self.overlaps.turn_discarded()
        self._turn_start_ms = None
        self._speech_end_ms = None

    # ------------------------------------------------------------ turn events

    def _on_turn_event(self, event: TurnEvent) -> None:
        pad = self._call.config.speech_pad_ms
        emit = self._call.emit
        if isinstance(event, TurnSpeechStarted):
            self._turn_start_ms = event.start_ms
            self._last_partial_ms = self._last_delta_ms = event.start_ms
            emit(SpeechStarted(audio_start_ms=event.start_ms))
            self._responses.keep_call()
            response = self._responses.current
            if response is not None and response.phase is ResponsePhase.GENERATING:
                if response.first_audio_at is None:
                    # The caller kept talking before hearing anything: their turn
                    # is not over, so the reply to its first half is dropped.
                    self._responses.cancel(response, "user_resumed")
            self.overlaps.speech_started(event.start_ms)
        elif isinstance(event, TurnSpeechStopped):
            self._speech_end_ms = event.end_ms
            self.overlaps.speech_stopped(event.end_ms)
            emit(SpeechStopped(audio_end_ms=event.end_ms))
            stop_reading(self._call.engines.llm)
            speculate = self._call.config.speculative_transcript
            pause = self.policy.pause_started(event.end_ms, transcript_coming=speculate)
            if speculate:
                self._start_speculation(event.end_ms + pad, pause)
        elif isinstance(event, SpeechResumed):
            self._speech_end_ms = None
            self._stop_asking()
            self.policy.speech_resumed()
            self._discard_speculation()
            self.overlaps.speech_started(event.at_ms)
        elif isinstance(event, BargeIn):
            response = self._responses.active()
            if not self.overlaps.barge_in_cancels:
                # The verdict on the words decides; pause if not paused yet.
                self.overlaps.speech_started(event.at_ms)
            elif response is not None:
                self._responses.cancel(response, "barge_in")
        elif isinstance(event, EndOfTurn):
            self._stop_asking()
            self.policy.turn_ended()
            self.end_turn(event.start_ms, event.end_ms)
        elif isinstance(event, TurnDiscarded):
            self._stop_asking()
            self.policy.turn_ended()
            self._discard_speculation()
            self.overlaps.turn_discarded()
            emit(TurnIgnored(event.reason, event.start_ms, event.end_ms))

    def end_turn(self, start_ms: float, end_ms: float) -> None:
        """The caller's turn is over: speech from ``start_ms`` to ``end_ms`` (audio time).

        The seam between deciding and answering (see the module docstring).
        """
        self.overlaps.turn_over(end_ms)
        pad = self._call.config.speech_pad_ms
        # Take this turn's state now: by the time the task runs, the next turn
        # may have begun.
        speech_end = self.audio.arrival_time(int(end_ms * 16))
        speculative = self._speculative
        if speculative is not None and self._speculative_end_ms != end_ms + pad:
            self._discard_speculation()
            speculative = None
        self._speculative = None
        self._speculative_end_ms = None
        self._draft_transcript = None
        self._turn_start_ms = None
        self._speech_end_ms = None
        if not self.accepting:
            if speculative is not None:
                speculative.cancel()
            self._discard_draft()
            self._call.emit(TurnIgnored("server_shutting_down", start_ms, end_ms))
            return
        self._spawn_turn(self._audio_turn(start_ms, end_ms, speech_end, speculative))

    # ------------------------------------------------------ end-of-turn policy

    def _act(self, actions: list[PolicyAction]) -> None:
        for action in actions:
            if isinstance(action, AskModel):
                self._ask_model(action)
            else:
                # EndOfTurn (or TurnDiscarded) comes back through _on_turn_event.
                for event in self.detector.end_turn():
                    self._on_turn_event(event)

    def _ask_model(self, ask: AskModel) -> None:
        worker = self._call.engines.smart_turn
        if worker is None:  # session.update refuses "learned" then; a bridge might not
            self._act(self.policy.model_failed(ask.request_id))
            return
        start, end = self._turn_window(ask.audio_end_ms)
        audio = self.audio.slice_ms(max(start, end - WINDOW_SECONDS * 1000.0), end)
        self._asking = asyncio.create_task(
            self._ask(worker, ask.request_id, audio), name=f"{self._call.session_id}-eot"
        )
        self._keep_until_done(self._asking)

    async def _ask(
        self, worker: BatchedSmartTurnWorker, request_id: int, audio: FloatAudio
    ) -> None:
        try:
            probability = await worker.predict(audio)
        except EngineError as exc:
            logger.warning("session=%s end-of-turn model: %s", self._call.session_id, exc)
            actions = self.policy.model_failed(request_id)
        else:
            actions = self.policy.model_answered(request_id, probability)
        if self._asking is asyncio.current_task():
            self._asking = None  # answered: ending the turn below must not cancel it
        if not self._call.closed:
            self._act(actions)

    def _stop_asking(self) -> None:
        """The pause is over: its answer would be stale, so its model call is not needed."""
        asking, self._asking = self._asking, None
        if asking is not None:
            asking.cancel()

    def _on_transcript_for_policy(self, pause: int, task: asyncio.Task[tuple[str, float]]) -> None:
        if self._call.closed:
            return
        text = None if task.cancelled() or task.exception() is not None else task.result()[0]
        self._act(self.policy.transcript_heard(pause, text))

    def _spawn_turn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._keep_until_done(asyncio.create_task(coro))

    def _keep_until_done(self, task: asyncio.Task[None], *, report: bool = True) -> None:
        """Keep a task referenced (and cancellable by close) until it has stopped."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if report:
            task.add_done_callback(self._call.report_unexpected)

    # ----------------------------------------------------------- transcription

    async def _transcribe(self, start_ms: float, end_ms: float) -> tuple[str, float]:
        audio = self.audio.slice_ms(start_ms, end_ms)
        stt = self._call.engines.stt
        attempt = 0
        while True:
            try:
                async with self._stt_lock:
                    transcript = await stt.transcribe(audio)
                return transcript.text, transcript.elapsed_ms
            except STTError as exc:
                attempt = await self._call.retry_or_raise(exc, attempt, "transcription")
            except EngineError:
                raise
            except Exception as exc:  # an engine bug: reported as a permanent STT failure
                raise STTError(f"{stt.name}: {exc!r}", transient=False) from exc

    def _turn_window(self, end_ms: float) -> tuple[float, float]:
        start = (self._turn_start_ms or 0.0) - self._call.config.speech_pad_ms
        return max(0.0, start), end_ms

    def _start_speculation(self, end_ms: float, pause: int) -> None:
        self._discard_speculation()
        start, end = self._turn_window(end_ms)
        self._speculative = asyncio.create_task(self._transcribe(start, end))
        self._speculative_end_ms = end_ms
        self._speculative.add_done_callback(
            functools.partial(self._on_transcript_for_policy, pause)
        )
        self._speculative.add_done_callback(self._on_overlap_transcript)
        if self._call.config.speculative_response:
            self._speculative.add_done_callback(self._on_speculative_transcript)

    def _discard_speculation(self) -> None:
        self._discard_draft()
        self._draft_transcript = None
        if self._speculative is not None:
            self._speculative.cancel()
            # Retrieve the outcome so a failure of discarded work is not reported.
            self._speculative.add_done_callback(
                lambda task: None if task.cancelled() else task.exception()
            )
            self._speculative = None
            self._speculative_end_ms = None

    def _on_speculative_transcript(self, task: asyncio.Task[tuple[str, float]]) -> None:
        if task is self._speculative and not task.cancelled() and task.exception() is None:
            self._draft_transcript = task
            self._maybe_start_draft()

    def _on_overlap_transcript(self, task: asyncio.Task[tuple[str, float]]) -> None:
        """Words of speech over a paused reply: judge them while the turn may go on."""
        if task is not self._speculative or task.cancelled():
            return
        text = None if task.exception() is not None else task.result()[0]
        self.overlaps.transcript(text, self.detector.now_ms)

    def _maybe_partial(self) -> None:
        """While the caller speaks: the turn so far, transcribed for ``transcript.delta``
        and for the model to read ahead (pipeline/read_ahead.py)."""
        config, llm = self._call.config, self._call.engines.llm
        interval = transcribing_interval_ms(llm, config)
        if interval <= 0 or self._turn_start_ms is None or self._speech_end_ms is not None:
            return
        now_ms = self.audio.end_sample / 16
        if now_ms - self._last_partial_ms < interval or self._stt_lock.locked():
            return
        if self._partial_task is not None and not self._partial_task.done():
            return
        model = reader(llm, config)
        deltas = config.partial_transcript_interval_ms
        wanted = deltas > 0 and now_ms - self._last_delta_ms >= deltas
        if not wanted and (model is None or not model.idle or not self._reply_may_start()):
            return  # only for reading, and the model could not read it now
        self._last_partial_ms = now_ms
        if wanted:
            self._last_delta_ms = now_ms
        start, end = self._turn_window(now_ms)
        self._partial_task = asyncio.create_task(self._partial(start, end, wanted))

    async def _partial(self, start_ms: float, end_ms: float, delta: bool) -> None:
        try:
            text, _ = await self._transcribe(start_ms, end_ms)
        except EngineError:
            return  # the final transcript reports failures
        if not text or self._speech_end_ms is not None:
            return
        if delta:
            self._call.emit(TranscriptDelta(text))
        model = reader(self._call.engines.llm, self._call.config)
        if model is not None and self._reply_may_start():
            read_ahead(model, self._call.history, text)

    # ------------------------------------------------------------- held reply

    def _maybe_start_draft(self) -> None:
        """Start a held reply on a transcript that may turn out to be final."""
        task = self._draft_transcript
        if task is None or task is not self._speculative or self._speech_end_ms is None:
            return
        silence_ms = self.audio.end_sample / 16 - self._speech_end_ms
        if silence_ms < self._call.config.speculative_response_min_silence_ms:
            return
        self._draft_transcript = None
        text = task.result()[0]
        if not text or not self._reply_may_start():
            return
        self._draft_base = self._call.history.messages()
        preview = copy.deepcopy(self._call.history)
        preview.add_user(text)
        self._draft = self._responses.start_held(
            preview.messages(),
            self.audio.arrival_time(int(self._speech_end_ms * 16)),
            task,
        )

    def _reply_may_start(self) -> bool:
        """No reply runs, finishes or waits, and this turn would get one."""
        return not (
            not self.accepting
            or self._responses.current is not None
            or self._responses.finishers
            or self._waiting is not None
            or self._handing_over is not None
            or self._call.closed
            or not self._call.config.auto_reply
        )

    def _discard_draft(self) -> None:
        draft, self._draft = self._draft, None
        if draft is not None and draft.task is not None:
            # Nothing of it was emitted, so nothing needs clearing.
            draft.task.cancel()
            self._keep_until_done(draft.task, report=False)  # reported since creation

    # ------------------------------------------------------------------- turns

    async def _audio_turn(
        self,
        start_ms: float,
        end_ms: float,
        speech_end: float,
        speculative: asyncio.Task[tuple[str, float]] | None,
    ) -> None:
        eot_at = time.monotonic()
        pad = self._call.config.speech_pad_ms
        timings: dict[str, float] = {"end_of_turn_wait_ms": (eot_at - speech_end) * 1000.0}
        try:
            if speculative is not None:
                text, stt_ms = await speculative
                timings["speculative_transcript"] = 1.0
            else:
                window_start = max(0.0, start_ms - pad)
                text, stt_ms = await self._transcribe(window_start, end_ms + pad)
                timings["speculative_transcript"] = 0.0
        except STTError as exc:
            self._call.emit(
                ErrorEvent(
                    "stt_failed", f"transcription failed: {exc}", category=error_category(exc)
                )
            )
            self._call.emit(TurnIgnored("stt_failed", start_ms, end_ms))
            self._discard_draft()
            # Noise over a reply that resumes needs no apology: the reply goes on.
            answered = self.overlaps.answers(end_ms, None, self.detector.now_ms)
            if self._call.config.apology and answered:
                self._queue(_QueuedTurn([], speech_end, timings, "superseded"))
            return
        finally:
            self.audio.trim_before_ms(end_ms - pad)
        timings["stt_ms"] = stt_ms
        timings["stt_after_end_of_turn_ms"] = (time.monotonic() - eot_at) * 1000.0
        emit = self._call.emit
        emit(TranscriptFinal(text, start_ms, end_ms))
        answered = self.overlaps.answers(end_ms, text, self.detector.now_ms)
        if not text:
            emit(TurnIgnored("no_words_recognized", start_ms, end_ms))
            return
        if not answered:
            self._discard_draft()
            emit(TurnIgnored("backchannel", start_ms, end_ms))
            return
        self._queue(
            _QueuedTurn(
                [text], speech_end, timings, "superseded", speculative, [(start_ms, end_ms)],
                reply=self._call.config.auto_reply,
            )
        )

    async def _committed_turn(self, start_ms: float, end_ms: float) -> None:
        """Audio the client committed (``manual_turns``): transcribed into history."""
        try:
            text, _ = await self._transcribe(start_ms, end_ms)
        except STTError as exc:
            self._call.emit(
                ErrorEvent(
                    "stt_failed", f"transcription failed: {exc}", category=error_category(exc)
                )
            )
            self._call.emit(TurnIgnored("stt_failed", start_ms, end_ms))
            return
        finally:
            self.audio.trim_before_ms(end_ms)
        self._call.emit(TranscriptFinal(text, start_ms, end_ms))
        if not text:
            self._call.emit(TurnIgnored("no_words_recognized", start_ms, end_ms))
            return
        self._call.history.add_user(text)

    # --------------------------------------------------------------- hand-over

    def _queue(self, turn: _QueuedTurn) -> None:
        """A finished turn waits for its reply; one already waiting is joined to it."""
        self._waiting = turn if self._waiting is None else self._join(self._waiting, turn)
        if self._handing_over is None:
            self._handing_over = asyncio.create_task(
                self._hand_over_waiting(), name=f"{self._call.session_id}-turns"
            )
            self._keep_until_done(self._handing_over)

    def _join(self, older: _QueuedTurn, newer: _QueuedTurn) -> _QueuedTurn:
        """``newer`` supersedes ``older``: one reply answers both (bounded backlog)."""
        joined = older.join(newer)
        if len(joined.texts) > MAX_QUEUED_INPUTS:
            excess = len(joined.texts) - MAX_QUEUED_INPUTS
            del joined.texts[:excess]
            del joined.spans_ms[:excess]
            self._call.emit(TurnIgnored("backlog_full", 0.0, 0.0))
        return joined

    async def _hand_over_waiting(self) -> None:
        try:
            while (turn := self._waiting) is not None:
                self._waiting = None
                await self._hand_over(turn)
        finally:
            self._handing_over = None

    async def _hand_over(self, turn: _QueuedTurn) -> None:
        """Answer ``turn`` once every earlier reply has stopped and written its history.

        Only this method starts replies, and only one runs it at a time. Each await
        lets other input in, so the state is read again after every one: a reply
        still running is cancelled, one still settling is waited for, and a turn that
        finished meanwhile joins this one (its words are answered by the same reply).
        """
        responses = self._responses
        while True:
            if self._commits:
                # Committed words first: the reply asked for after a commit answers them.
                await asyncio.gather(*self._commits, return_exceptions=True)
                continue
            if not self.accepting:
                self._refuse_while_draining(turn)
                return
            if (active := responses.active()) is not None:
                responses.cancel(active, turn.cancel_reason)
            if not responses.finishers:
                break
            await responses.settle()
            if self._waiting is not None:
                turn, self._waiting = self._join(turn, self._waiting), None
        history = self._call.history
        draft = self._draft
        if (
            draft is not None
            and turn.speculative is not None
            and draft.speculative_task is turn.speculative
            and history.messages() == self._draft_base
        ):
            self._draft = None
            history.add_user(turn.texts[0])
            responses.release(draft, turn.timings)
            return
        self._discard_draft()
        for text in turn.texts:
            history.add_user(text)
        if not turn.reply and turn.request is None:
            return  # the client asks for the reply (``respond``)
        responses.answer(
            turn.turn_end, turn.timings, apology=not turn.texts and turn.request is None,
            request=turn.request,
        )

    def _refuse_while_draining(self, turn: _QueuedTurn) -> None:
        """The server began to drain while ``turn`` was transcribed or waited: it gets
        no reply, and the reply playing is not cut for it (the drain lets it finish)."""
        self._discard_draft()
        # A lost turn's apology (no texts) is dropped: its turn_ignored was already sent.
        for start_ms, end_ms in turn.spans_ms:
            self._call.emit(TurnIgnored("server_shutting_down", start_ms, end_ms))
