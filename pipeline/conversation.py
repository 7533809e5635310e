"""The per-call orchestrator: audio in, events out.

It wires the sans-I/O deciders (turn detector, chunker, history truncation) to the
engines, running each stage as a referenced, cancellable asyncio task:

    feed_audio ─► input task: resample ─► VAD (shared batched worker) ─► TurnDetector
        SpeechStopped ─► speculative STT task (discarded on SpeechResumed)
        EndOfTurn     ─► final transcript ─► response task
    response task: LLM stream ─► TextChunker ─► TTS ─► resample ─► audio deltas
    BargeIn ─► cancel response task ─► clear ─► wait for the played report
            ─► history keeps what was heard ─► response.done(cancelled)

Events go out through one synchronous ``emit`` callable; the adapter owns the
socket and its queue. A response ends (``ResponseDone``) once the caller has heard
it — generation finished and playback reported or estimated to be over — so the
text a completed response leaves in history is the text that was played.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, StreamResampler, float_to_pcm16
from pipeline.chunker import ChunkerConfig, TextChunk, TextChunker
from pipeline.engines.base import (
    ChatMessage,
    FloatAudio,
    LLMEngine,
    SessionScopedLLM,
    STTEngine,
    TTSEngine,
)
from pipeline.errors import (
    EngineError,
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    STTError,
    TTSError,
)
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptFinal,
    TurnIgnored,
)
from pipeline.history import History, SpokenChunk, heard_text
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
from pipeline.vad import FRAME_MS, FRAME_SAMPLES, BatchedVADWorker

logger = logging.getLogger("voiceforge.conversation")

DEFAULT_INSTRUCTIONS = (
    "You are VoiceForge, a friendly voice assistant talking with a caller. Your words are "
    "spoken aloud, so answer in one to three short, complete sentences of plain speech. "
    "No lists, no markdown, no code, no emoji."
)

Emit = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-call settings; ``session.update`` replaces fields of it."""

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str | None = None
    input_sample_rate: int = 16000
    output_sample_rate: int = 24000
    turn: TurnConfig = field(default_factory=TurnConfig)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    max_response_tokens: int = 150
    temperature: float = 0.6
    partial_transcript_interval_ms: float = 0.0
    """0 turns partial transcripts off: on two cores a partial in flight when the
    caller stops delays the final transcript (docs/decisions.md)."""
    speech_pad_ms: float = 200.0
    """Audio kept before speech start and after speech end for transcription."""
    max_turn_ms: float = 30_000.0
    played_report_timeout_ms: float = 400.0
    """How long a cancelled response waits for the client's played report."""
    playback_grace_ms: float = 300.0
    """Extra wait past the estimated end of playback before a response is done."""
    audio_delta_ms: float = 100.0
    """Maximum duration of one audio delta."""
    max_history_turns: int = 50
    max_history_chars: int = 16_000
    """History the LLM sees beyond the system prompt; past either limit the oldest
    turns are dropped (a user turn with the reply to it)."""
    engine_retries: int = 2
    """Retries of an engine call that failed transiently before any of its output
    was used: the LLM before its first token, a TTS chunk before its first audio,
    a transcription. Never after: the caller would hear the start twice."""
    retry_backoff_ms: float = 200.0
    """Wait before the first retry; doubled for each one after."""
    apology: str = "Sorry, I ran into a problem there. Could you say that again?"
    """Spoken (or, if speech fails too, sent as text) when a turn is lost before the
    caller heard any reply; empty to stay silent."""
    speculative_transcript: bool = True
    """Start the final transcription when silence begins rather than at the end of
    turn; off, the reply cannot start speculatively either (loadtest on/off runs)."""
    speculative_response: bool = True
    """Start the reply (LLM and TTS) on the speculative transcript while the end of
    turn is still being confirmed; its events are held back until the turn ends and
    thrown away if the caller resumes."""
    playback_pause: bool = False
    """The client can pause and resume a response's playback: caller speech over the
    agent pauses the reply at once, and a backchannel or noise resumes it
    (pipeline/interruption.py). Off, a barge-in cancels as it always did."""
    speculative_response_min_silence_ms: float = 200.0
    """Silence needed before a speculative reply starts: pauses between words end
    sooner, and a reply started on half a sentence only costs CPU."""


@dataclass(slots=True)
class Engines:
    stt: STTEngine
    llm: LLMEngine
    tts: TTSEngine
    vad: BatchedVADWorker

    def for_session(self, session_id: str) -> Engines:
        """The engines one call uses: an LLM that routes by call gets a per-call view."""
        if isinstance(self.llm, SessionScopedLLM):
            return replace(self, llm=self.llm.for_session(session_id))
        return self


class ResponsePhase(enum.Enum):
    GENERATING = "generating"
    PLAYING = "playing"
    FINISHING = "finishing"
    DONE = "done"


_ALLOWED_PHASES: dict[ResponsePhase, set[ResponsePhase]] = {
    ResponsePhase.GENERATING: {ResponsePhase.PLAYING, ResponsePhase.FINISHING},
    ResponsePhase.PLAYING: {ResponsePhase.FINISHING},
    ResponsePhase.FINISHING: {ResponsePhase.DONE},
    ResponsePhase.DONE: set(),
}


@dataclass(slots=True)
class _Response:
    response_id: str
    started_at: float
    """Monotonic time the caller's turn ended (speech end, or text received)."""
    phase: ResponsePhase = ResponsePhase.GENERATING
    text: str = ""
    chunks: list[SpokenChunk] = field(default_factory=list)
    audio_ms: float = 0.0
    seq: int = 0
    first_audio_at: float | None = None
    played_ms: float | None = None
    played_event: asyncio.Event = field(default_factory=asyncio.Event)
    timings: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    held: bool = False
    """A speculative reply: events wait in ``held_events`` until the turn ends."""
    held_events: list[Event] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    speculative_task: asyncio.Task[tuple[str, float]] | None = None
    canned: str | None = None
    """Text to say instead of asking the LLM (the apology for a lost turn)."""

    def move(self, phase: ResponsePhase) -> None:
        if phase not in _ALLOWED_PHASES[self.phase]:
            raise RuntimeError(f"response {self.response_id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    def estimated_played_ms(self, now: float) -> float:
        if self.first_audio_at is None:
            return 0.0
        return min(self.audio_ms, (now - self.first_audio_at) * 1000.0)

    def best_played_ms(self, now: float) -> float:
        return self.played_ms if self.played_ms is not None else self.estimated_played_ms(now)


class _TurnAudio:
    """The 16 kHz input audio of the current stream, trimmed as turns end."""

    def __init__(self, max_ms: float) -> None:
        self._chunks: deque[FloatAudio] = deque()
        self._start_sample = 0
        self._samples = 0
        self._max_samples = int(max_ms * PIPELINE_SAMPLE_RATE / 1000)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=512)

    @property
    def end_sample(self) -> int:
        return self._start_sample + self._samples

    def append(self, audio: FloatAudio, arrived_at: float) -> None:
        self._chunks.append(audio)
        self._samples += len(audio)
        self._arrivals.append((self.end_sample, arrived_at))
        while self._samples - len(self._chunks[0]) >= self._max_samples:
            dropped = self._chunks.popleft()
            self._samples -= len(dropped)
            self._start_sample += len(dropped)

    def arrival_time(self, sample: int) -> float:
        """Monotonic time at which the audio holding ``sample`` arrived."""
        for end, arrived in self._arrivals:
            if end > sample:
                return arrived
        return time.monotonic()

    def slice_ms(self, start_ms: float, end_ms: float) -> FloatAudio:
        start = max(int(start_ms * 16), self._start_sample)
        end = min(int(end_ms * 16), self.end_sample)
        if end <= start or not self._chunks:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(list(self._chunks))
        return audio[start - self._start_sample : end - self._start_sample]

    def trim_before_ms(self, ms: float) -> None:
        keep_from = int(ms * 16)
        while self._chunks and self._start_sample + len(self._chunks[0]) <= keep_from:
            dropped = self._chunks.popleft()
            self._samples -= len(dropped)
            self._start_sample += len(dropped)


class Conversation:
    """One call. Create, ``start()``, feed audio or text, ``close()``."""

    def __init__(
        self,
        engines: Engines,
        emit: Emit,
        config: SessionConfig | None = None,
        *,
        session_id: str | None = None,
    ) -> None:
        self.config = config or SessionConfig()
        self.session_id = session_id or f"sess_{uuid.uuid4().hex[:12]}"
        self.engines = engines.for_session(self.session_id)
        self._emit = emit
        self.history = History(
            self.config.instructions,
            max_turns=self.config.max_history_turns,
            max_chars=self.config.max_history_chars,
        )
        self._detector = TurnDetector(self.config.turn, frame_ms=FRAME_MS)
        self._vad = engines.vad.open_stream()
        self._input_resampler = StreamResampler(self.config.input_sample_rate, PIPELINE_SAMPLE_RATE)
        self._input_queue: asyncio.Queue[tuple[FloatAudio, float]] = asyncio.Queue(maxsize=500)
        self._pending = np.zeros(0, dtype=np.float32)
        self._audio = _TurnAudio(self.config.max_turn_ms + 2 * self.config.speech_pad_ms)
        self._turn_start_ms: float | None = None
        self._speech_end_ms: float | None = None
        self._last_partial_ms = 0.0
        self._stt_lock = asyncio.Lock()
        self._speculative: asyncio.Task[tuple[str, float]] | None = None
        self._speculative_end_ms: float | None = None
        self._partial_task: asyncio.Task[None] | None = None
        self._response: _Response | None = None
        self._draft: _Response | None = None
        self._draft_transcript: asyncio.Task[tuple[str, float]] | None = None
        self._finishers: set[asyncio.Task[None]] = set()
        self._turn_tasks: set[asyncio.Task[None]] = set()
        self._input_task: asyncio.Task[None] | None = None
        self._closed = False
        self.accepting_turns = True
        """False while the server drains: turns that end are ignored (and said so)."""

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._input_task = asyncio.create_task(self._input_loop(), name=f"{self.session_id}-input")
        self._input_task.add_done_callback(self._on_input_stopped)

    def _on_input_stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("session=%s input path failed", self.session_id, exc_info=exc)
            self._emit(
                ErrorEvent(
                    "internal_error", f"input audio path failed: {exc}", fatal=True,
                    category="permanent",
                )
            )

    def _report_unexpected(self, task: asyncio.Future[Any]) -> None:
        """A bug in a turn or response task must not vanish with the task."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        logger.error("session=%s task failed", self.session_id, exc_info=exc)
        self._emit(
            ErrorEvent("internal_error", f"turn failed: {exc}", fatal=False, category="permanent")
        )

    async def close(self) -> None:
        """Cancel everything this call runs and wait for it to stop."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Future[Any]] = [
            task
            for task in (self._input_task, self._speculative, self._partial_task)
            if task is not None
        ]
        for response in (self._response, self._draft):
            if response is not None and response.task is not None:
                tasks.append(response.task)
        tasks.extend(self._finishers)
        tasks.extend(self._turn_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._vad.close()
        # The adapter's emit is usually a bound method of an object that holds this
        # conversation: drop the reference so the pair is freed when the call ends,
        # not at the next full garbage collection (loadtest/soak.py found the delay).
        self._emit = _discard
        # A cancelled task keeps its CancelledError, whose traceback holds the
        # task's frame and so this object: forget the finished tasks.
        self._input_task = self._speculative = self._partial_task = None
        self._response = self._draft = None
        self._draft_transcript = None

    def update(self, config: SessionConfig) -> None:
        """Apply new settings; audio already accepted keeps flowing."""
        if config.input_sample_rate != self.config.input_sample_rate:
            self._input_resampler = StreamResampler(config.input_sample_rate, PIPELINE_SAMPLE_RATE)
        if config.turn != self.config.turn:
            self._detector.config = config.turn
        self.history.system_prompt = config.instructions
        self.config = config

    # ------------------------------------------------------------------ inputs

    def feed_audio(self, audio: FloatAudio) -> bool:
        """Queue input audio at ``config.input_sample_rate``; False when the queue is full."""
        try:
            self._input_queue.put_nowait((audio, time.monotonic()))
        except asyncio.QueueFull:
            return False
        return True

    def send_text(self, text: str) -> None:
        """A typed user turn: interrupts any reply in progress, then answers."""
        text = text.strip()
        if not text:
            return
        if not self.accepting_turns:
            self._emit(TurnIgnored("server_shutting_down", 0.0, 0.0))
            return
        self._spawn_turn(self._text_turn(text, time.monotonic()))

    def cancel_response(
        self, response_id: str | None = None, reason: str = "client_cancelled"
    ) -> bool:
        """Cancel the reply in progress (``response.cancel``); with an id, only that one.

        False when there is nothing (or not that response) to cancel.
        """
        response = self._response
        if response is None or response.phase in (ResponsePhase.FINISHING, ResponsePhase.DONE):
            return False
        if response_id is not None and response_id != response.response_id:
            return False
        self._cancel(response, reason)
        return True

    def report_played(self, response_id: str, played_ms: float) -> None:
        """The client says how much of a response it has played."""
        response = self._response
        if response is not None and response.response_id == response_id:
            response.played_ms = max(response.played_ms or 0.0, min(played_ms, response.audio_ms))
            response.played_event.set()

    @property
    def busy(self) -> bool:
        """A turn or a response is in flight (what a draining server waits for)."""
        return bool(self._response is not None or self._turn_tasks or self._finishers)

    @property
    def agent_speaking(self) -> bool:
        response = self._response
        return response is not None and (
            response.phase is ResponsePhase.PLAYING
            or (response.phase is ResponsePhase.GENERATING and response.first_audio_at is not None)
        )

    # -------------------------------------------------------------- input path

    async def _input_loop(self) -> None:
        while True:
            audio, arrived = await self._input_queue.get()
            pcm = self._input_resampler.process(audio)
            self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
            while len(self._pending) >= FRAME_SAMPLES:
                frame = self._pending[:FRAME_SAMPLES]
                self._pending = self._pending[FRAME_SAMPLES:]
                self._audio.append(frame, arrived)
                try:
                    probability = await self._vad.process(frame)
                except EngineError as exc:
                    # One lost frame reads as silence; the call goes on.
                    logger.warning("session=%s VAD failed: %s", self.session_id, exc)
                    probability = 0.0
                for event in self._detector.process(
                    probability, agent_speaking=self.agent_speaking
                ):
                    self._on_turn_event(event)
                self._maybe_partial()
                self._maybe_start_draft()

    def _on_turn_event(self, event: TurnEvent) -> None:
        pad = self.config.speech_pad_ms
        if isinstance(event, TurnSpeechStarted):
            self._turn_start_ms = event.start_ms
            self._last_partial_ms = event.start_ms
            self._emit(SpeechStarted(audio_start_ms=event.start_ms))
            response = self._response
            if response is not None and response.phase is ResponsePhase.GENERATING:
                if response.first_audio_at is None:
                    # The caller kept talking before hearing anything: their turn
                    # is not over, so the reply to its first half is dropped.
                    self._cancel(response, "user_resumed")
        elif isinstance(event, TurnSpeechStopped):
            self._speech_end_ms = event.end_ms
            self._emit(SpeechStopped(audio_end_ms=event.end_ms))
            if self.config.speculative_transcript:
                self._start_speculation(event.end_ms + pad)
        elif isinstance(event, SpeechResumed):
            self._speech_end_ms = None
            self._discard_speculation()
        elif isinstance(event, BargeIn):
            response = self._response
            if response is not None and response.phase in (
                ResponsePhase.GENERATING,
                ResponsePhase.PLAYING,
            ):
                self._cancel(response, "barge_in")
        elif isinstance(event, EndOfTurn):
            # Take this turn's state now: by the time the task runs, the next turn
            # may have begun.
            speech_end = self._audio.arrival_time(int(event.end_ms * 16))
            speculative = self._speculative
            if speculative is not None and self._speculative_end_ms != event.end_ms + pad:
                self._discard_speculation()
                speculative = None
            self._speculative = None
            self._speculative_end_ms = None
            self._draft_transcript = None
            self._turn_start_ms = None
            self._speech_end_ms = None
            if not self.accepting_turns:
                if speculative is not None:
                    speculative.cancel()
                self._discard_draft()
                self._emit(TurnIgnored("server_shutting_down", event.start_ms, event.end_ms))
                return
            self._spawn_turn(
                self._audio_turn(event.start_ms, event.end_ms, speech_end, speculative)
            )
        elif isinstance(event, TurnDiscarded):
            self._discard_speculation()
            self._emit(TurnIgnored(event.reason, event.start_ms, event.end_ms))

    def _spawn_turn(self, coro: object) -> None:
        self._keep_until_done(asyncio.create_task(coro))  # type: ignore[arg-type]

    # ----------------------------------------------------------- transcription

    async def _transcribe(self, start_ms: float, end_ms: float) -> tuple[str, float]:
        audio = self._audio.slice_ms(start_ms, end_ms)
        attempt = 0
        while True:
            try:
                async with self._stt_lock:
                    transcript = await self.engines.stt.transcribe(audio)
                return transcript.text, transcript.elapsed_ms
            except STTError as exc:
                attempt = await self._retry_or_raise(exc, attempt, "transcription")
            except EngineError:
                raise
            except Exception as exc:  # an engine bug: reported as a permanent STT failure
                raise STTError(f"{self.engines.stt.name}: {exc!r}", transient=False) from exc

    async def _retry_or_raise(self, exc: EngineError, attempt: int, what: str) -> int:
        """Sleep before the next attempt of a transient failure; re-raise otherwise."""
        if not exc.transient or attempt >= self.config.engine_retries:
            raise exc
        delay = self.config.retry_backoff_ms * 2**attempt / 1000.0
        logger.warning(
            "session=%s %s failed (%s); retry %d in %.1f s",
            self.session_id, what, exc, attempt + 1, delay,
        )
        await asyncio.sleep(delay)
        return attempt + 1

    def _turn_window(self, end_ms: float) -> tuple[float, float]:
        start = (self._turn_start_ms or 0.0) - self.config.speech_pad_ms
        return max(0.0, start), end_ms

    def _start_speculation(self, end_ms: float) -> None:
        self._discard_speculation()
        start, end = self._turn_window(end_ms)
        self._speculative = asyncio.create_task(self._transcribe(start, end))
        self._speculative_end_ms = end_ms
        if self.config.speculative_response:
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

    def _maybe_start_draft(self) -> None:
        """Start a held reply on a transcript that may turn out to be final."""
        task = self._draft_transcript
        if task is None or task is not self._speculative or self._speech_end_ms is None:
            return
        silence_ms = self._audio.end_sample / 16 - self._speech_end_ms
        if silence_ms < self.config.speculative_response_min_silence_ms:
            return
        self._draft_transcript = None
        text = task.result()[0]
        if not text or self._response is not None or self._finishers or self._closed:
            return
        speech_end_ms = self._speech_end_ms
        preview = copy.deepcopy(self.history)
        preview.add_user(text)
        draft = _Response(
            response_id=f"resp_{uuid.uuid4().hex[:12]}",
            started_at=self._audio.arrival_time(int(speech_end_ms * 16)),
            messages=preview.messages(),
            held=True,
            speculative_task=task,
        )
        self._draft = draft
        draft.task = asyncio.create_task(
            self._run_response(draft), name=f"{self.session_id}-{draft.response_id}-draft"
        )
        draft.task.add_done_callback(self._report_unexpected)

    def _discard_draft(self) -> None:
        draft, self._draft = self._draft, None
        if draft is not None and draft.task is not None:
            # Nothing of it was emitted, so nothing needs clearing.
            draft.task.cancel()
            self._keep_until_done(draft.task, report=False)  # reported since creation

    def _keep_until_done(self, task: asyncio.Task[None], *, report: bool = True) -> None:
        """Keep a task referenced (and cancellable by close) until it has stopped."""
        self._turn_tasks.add(task)
        task.add_done_callback(self._turn_tasks.discard)
        if report:
            task.add_done_callback(self._report_unexpected)

    def _release(self, draft: _Response, text: str, timings: dict[str, float]) -> None:
        """The turn ended as speculated: the held reply becomes the response."""
        self.history.add_user(text)
        draft.timings = {**timings, **draft.timings, "speculative_response": 1.0}
        if draft.phase is not ResponsePhase.DONE:
            self._response = draft
        self._emit(ResponseCreated(draft.response_id))
        now = time.monotonic()
        held, draft.held_events = draft.held_events, []
        draft.held = False
        if any(isinstance(event, ResponseAudioDelta) for event in held):
            draft.first_audio_at = now
            draft.timings["end_of_speech_to_first_audio_ms"] = (now - draft.started_at) * 1000
            _time_from_end_of_turn(draft.timings)
        for event in held:
            self._emit(event)
        draft.released.set()

    def _response_emit(self, response: _Response, event: Event) -> None:
        if response.held:
            response.held_events.append(event)
        else:
            self._emit(event)

    def _maybe_partial(self) -> None:
        interval = self.config.partial_transcript_interval_ms
        if interval <= 0 or self._turn_start_ms is None or self._speech_end_ms is not None:
            return
        now_ms = self._audio.end_sample / 16
        if now_ms - self._last_partial_ms < interval or self._stt_lock.locked():
            return
        if self._partial_task is not None and not self._partial_task.done():
            return
        self._last_partial_ms = now_ms
        start, end = self._turn_window(now_ms)
        self._partial_task = asyncio.create_task(self._partial(start, end))

    async def _partial(self, start_ms: float, end_ms: float) -> None:
        try:
            text, _ = await self._transcribe(start_ms, end_ms)
        except EngineError:
            return  # the final transcript reports failures
        if text and self._speech_end_ms is None:
            self._emit(TranscriptDelta(text))

    # ------------------------------------------------------------------- turns

    async def _audio_turn(
        self,
        start_ms: float,
        end_ms: float,
        speech_end: float,
        speculative: asyncio.Task[tuple[str, float]] | None,
    ) -> None:
        eot_at = time.monotonic()
        pad = self.config.speech_pad_ms
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
            self._emit(
                ErrorEvent("stt_failed", f"transcription failed: {exc}", category=_category(exc))
            )
            self._emit(TurnIgnored("stt_failed", start_ms, end_ms))
            self._discard_draft()
            if self.config.apology:
                await self._respond(None, speech_end, timings)
            return
        finally:
            self._audio.trim_before_ms(end_ms - pad)
        timings["stt_ms"] = stt_ms
        timings["stt_after_end_of_turn_ms"] = (time.monotonic() - eot_at) * 1000.0
        self._emit(TranscriptFinal(text, start_ms, end_ms))
        if not text:
            self._emit(TurnIgnored("no_words_recognized", start_ms, end_ms))
            return
        draft = self._draft
        if draft is not None and speculative is not None and draft.speculative_task is speculative:
            self._draft = None
            self._release(draft, text, timings)
            return
        self._discard_draft()
        await self._respond(text, speech_end, timings)

    async def _text_turn(self, text: str, received_at: float) -> None:
        response = self._response
        if response is not None and response.phase in (
            ResponsePhase.GENERATING,
            ResponsePhase.PLAYING,
        ):
            self._cancel(response, "new_text_input")
        await self._respond(text, received_at, {})

    async def _respond(self, text: str | None, turn_end: float, timings: dict[str, float]) -> None:
        """Answer ``text``; with None, only say the apology (the turn was lost)."""
        # A cancelled reply must settle its history before the next one reads it.
        if self._finishers:
            await asyncio.gather(*self._finishers, return_exceptions=True)
        self._discard_draft()
        if text is not None:
            self.history.add_user(text)
        response = _Response(
            response_id=f"resp_{uuid.uuid4().hex[:12]}",
            started_at=turn_end,
            timings=timings,
            messages=self.history.messages(),
            canned=self.config.apology if text is None else None,
        )
        if text is None:
            response.timings["apology"] = 1.0
        response.released.set()
        previous = self._response
        if previous is not None and previous.phase in (
            ResponsePhase.GENERATING,
            ResponsePhase.PLAYING,
        ):
            self._cancel(previous, "superseded")
            await asyncio.gather(*self._finishers, return_exceptions=True)
        self._response = response
        self._emit(ResponseCreated(response.response_id))
        response.task = asyncio.create_task(
            self._run_response(response), name=f"{self.session_id}-{response.response_id}"
        )
        response.task.add_done_callback(self._report_unexpected)

    # ---------------------------------------------------------------- response

    async def _run_response(self, response: _Response) -> None:
        config = self.config
        chunks: asyncio.Queue[TextChunk | None] = asyncio.Queue(maxsize=16)
        stages = [
            asyncio.create_task(self._generate_text(response, chunks)),
            asyncio.create_task(self._speak(response, chunks)),
        ]
        failure: EngineError | None = None
        try:
            await asyncio.wait(stages, return_when=asyncio.FIRST_EXCEPTION)
            for stage in stages:
                if stage.done() and (exc := stage.exception()) is not None:
                    raise exc
        except BaseException as exc:
            # Cancellation, an engine failure or a bug: neither stage outlives the other.
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)
            if isinstance(exc, EngineError):
                failure = exc
            elif isinstance(exc, Exception):
                # A bug in an engine or here: the response still ends, as failed.
                logger.error(
                    "session=%s response=%s failed", self.session_id, response.response_id,
                    exc_info=exc,
                )
                failure = EngineError(f"internal error: {exc!r}", transient=False)
            else:
                raise
        await response.released.wait()
        if failure is not None:
            self._emit(
                ErrorEvent(
                    _error_code(failure), str(failure), fatal=False,
                    response_id=response.response_id, category=_category(failure),
                )
            )
            if (
                response.audio_ms == 0
                and self.config.apology
                and response.canned is None
                and not response.held
            ):
                await self._apologize(response, failure)
        response.move(ResponsePhase.PLAYING)
        # Audio already sent plays out (a barge-in can still cut it): the response is
        # done once the caller has heard it, reported or estimated from the clock.
        playback_start = response.first_audio_at or time.monotonic()
        deadline = playback_start + (response.audio_ms + config.playback_grace_ms) / 1000.0
        while True:
            now = time.monotonic()
            if response.played_ms is not None and response.played_ms >= response.audio_ms - 1.0:
                break
            if now >= deadline:
                break
            response.played_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(response.played_event.wait(), deadline - now)
            if response.phase is not ResponsePhase.PLAYING:
                # Cancelled (barge-in) just as the played report came in: Python
                # 3.11's wait_for can return the result and swallow the
                # cancellation (found by loadtest/). The finisher settles it.
                return
        response.move(ResponsePhase.FINISHING)
        if failure is None:
            self.history.add_assistant(response.text)
            self._finish(response, ResponseStatus.COMPLETED, response.text, response.audio_ms)
            return
        played = response.best_played_ms(time.monotonic())
        heard = heard_text(response.chunks, played) if played > 0 else ""
        self.history.add_assistant(heard)
        self._finish(response, ResponseStatus.FAILED, heard, played, reason=_error_code(failure))

    async def _apologize(self, response: _Response, failure: EngineError) -> None:
        """The caller heard nothing of a failed reply: say sorry, by voice if TTS works."""
        text = self.config.apology
        response.text += text
        self._emit(ResponseTextDelta(response.response_id, text))
        if isinstance(failure, TTSError):
            return
        chunks: asyncio.Queue[TextChunk | None] = asyncio.Queue()
        chunks.put_nowait(TextChunk(text, text, 0))
        chunks.put_nowait(None)
        try:
            await self._speak(response, chunks)
        except EngineError as exc:
            logger.warning("session=%s apology not spoken: %s", self.session_id, exc)
        except Exception:
            logger.exception("session=%s apology not spoken", self.session_id)

    async def _llm_deltas(self, response: _Response) -> AsyncGenerator[str, None]:
        """The reply's text deltas, retried while nothing of it has come out yet."""
        if response.canned is not None:
            yield response.canned
            return
        config = self.config
        attempt = 0
        while True:
            stream = self.engines.llm.stream(
                response.messages,
                max_tokens=config.max_response_tokens,
                temperature=config.temperature,
            )
            produced = False
            try:
                async for delta in stream:
                    produced = True
                    yield delta
                return
            except EngineError as exc:
                if produced:
                    raise
                attempt = await self._retry_or_raise(exc, attempt, "LLM request")
                response.timings["llm_retries"] = float(attempt)
            except Exception as exc:  # garbage from the engine, a bug in it
                raise LLMError(f"{self.engines.llm.name}: {exc!r}", transient=False) from exc
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    async def _generate_text(
        self, response: _Response, chunks: asyncio.Queue[TextChunk | None]
    ) -> None:
        config = self.config
        chunker = TextChunker(config.chunker)
        requested = time.monotonic()
        first_token = True
        stream = self._llm_deltas(response)
        try:
            async for delta in stream:
                if first_token:
                    response.timings["llm_first_token_ms"] = (time.monotonic() - requested) * 1000
                    first_token = False
                response.text += delta
                self._response_emit(response, ResponseTextDelta(response.response_id, delta))
                for chunk in chunker.push(delta):
                    if chunk.index == 0:
                        response.timings["first_chunk_text_ms"] = (
                            time.monotonic() - requested
                        ) * 1000
                    await chunks.put(chunk)
            for chunk in chunker.flush():
                if chunk.index == 0:
                    response.timings["first_chunk_text_ms"] = (time.monotonic() - requested) * 1000
                await chunks.put(chunk)
        finally:
            await stream.aclose()
            response.timings["llm_total_ms"] = (time.monotonic() - requested) * 1000
        await chunks.put(None)

    async def _speak(self, response: _Response, chunks: asyncio.Queue[TextChunk | None]) -> None:
        config = self.config
        tts = self.engines.tts
        resampler = StreamResampler(tts.sample_rate, config.output_sample_rate)
        out_rate = config.output_sample_rate
        max_samples = max(1, int(config.audio_delta_ms * out_rate / 1000))
        while (chunk := await chunks.get()) is not None:
            chunk_start_ms = response.audio_ms
            chunk_ready = time.monotonic()
            attempt = 0
            while True:
                try:
                    async for audio in tts.synthesize(chunk.text, voice=config.voice):
                        if "tts_first_audio_ms" not in response.timings:
                            response.timings["tts_first_audio_ms"] = (
                                time.monotonic() - chunk_ready
                            ) * 1000
                        self._emit_audio(response, resampler.process(audio), max_samples, out_rate)
                    break
                except TTSError as exc:
                    if response.audio_ms > chunk_start_ms:
                        raise  # part of the chunk was sent: a retry would repeat it
                    attempt = await self._retry_or_raise(exc, attempt, "speech synthesis")
                    resampler = StreamResampler(tts.sample_rate, out_rate)
                except EngineError:
                    raise
                except Exception as exc:  # a bug in the engine
                    raise TTSError(f"{tts.name}: {exc!r}", transient=False) from exc
            self._emit_audio(response, resampler.flush(), max_samples, out_rate)
            resampler = StreamResampler(tts.sample_rate, out_rate)
            response.chunks.append(
                SpokenChunk(chunk.display_text, chunk_start_ms, response.audio_ms)
            )

    def _emit_audio(
        self, response: _Response, audio: FloatAudio, max_samples: int, rate: int
    ) -> None:
        for offset in range(0, len(audio), max_samples):
            piece = audio[offset : offset + max_samples]
            now = time.monotonic()
            if response.first_audio_at is None and not response.held:
                response.first_audio_at = now
                response.timings["end_of_speech_to_first_audio_ms"] = (
                    now - response.started_at
                ) * 1000
                _time_from_end_of_turn(response.timings)
            duration = len(piece) * 1000.0 / rate
            response.audio_ms += duration
            self._response_emit(
                response,
                ResponseAudioDelta(
                    response.response_id, response.seq, float_to_pcm16(piece), rate, duration
                ),
            )
            response.seq += 1

    # ------------------------------------------------------------ cancellation

    def _cancel(self, response: _Response, reason: str) -> None:
        """Stop generating now; settle history once the client says what it played."""
        response.move(ResponsePhase.FINISHING)
        if response.task is not None:
            response.task.cancel()
        finisher = asyncio.create_task(self._finish_cancelled(response, reason))
        self._finishers.add(finisher)
        finisher.add_done_callback(self._finishers.discard)

    async def _finish_cancelled(self, response: _Response, reason: str) -> None:
        if response.task is not None:
            await asyncio.gather(response.task, return_exceptions=True)
        if response.first_audio_at is not None:
            # Only now, with the producer stopped, can no delta follow the clear.
            response.played_event.clear()
            self._emit(ResponseAudioClear(response.response_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    response.played_event.wait(), self.config.played_report_timeout_ms / 1000
                )
        played = response.best_played_ms(time.monotonic())
        heard = heard_text(response.chunks, played) if played > 0 else ""
        self.history.add_assistant(heard)
        response.timings["played_source_client"] = 1.0 if response.played_ms is not None else 0.0
        self._finish(response, ResponseStatus.CANCELLED, heard, played, reason=reason)

    def _finish(
        self,
        response: _Response,
        status: ResponseStatus,
        heard: str,
        played_ms: float,
        *,
        reason: str | None = None,
    ) -> None:
        response.move(ResponsePhase.DONE)
        self._emit(
            ResponseDone(
                response_id=response.response_id,
                status=status,
                text=response.text,
                text_heard=heard,
                audio_ms=response.audio_ms,
                played_ms=played_ms,
                timings=dict(response.timings),
                reason=reason,
            )
        )
        if self._response is response:
            self._response = None


def _discard(event: Event) -> None:
    """The emit of a closed conversation."""


def _time_from_end_of_turn(timings: dict[str, float]) -> None:
    """The server's own overhead: end of turn decided → first audio sent.

    ``started_at`` is the speech end and the end of turn came
    ``end_of_turn_wait_ms`` later (0 for typed turns), so the difference is
    everything the server and its engines added after the caller's turn was over.
    """
    timings["end_of_turn_to_first_audio_ms"] = timings[
        "end_of_speech_to_first_audio_ms"
    ] - timings.get("end_of_turn_wait_ms", 0.0)


def _category(exc: EngineError) -> str:
    return "transient" if exc.transient else "permanent"


def _error_code(exc: EngineError) -> str:
    if isinstance(exc, LLMUnavailableError):
        return "llm_unavailable"
    if isinstance(exc, LLMTimeoutError):
        return "llm_timeout"
    if isinstance(exc, LLMError):
        return "llm_failed"
    if isinstance(exc, TTSError):
        return "tts_failed"
    return "engine_failed"

