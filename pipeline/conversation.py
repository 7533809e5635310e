"""The per-call orchestrator: audio in, events out.

It wires the sans-I/O deciders (turn detector, chunker, history truncation) to the
engines, running each stage as a referenced, cancellable asyncio task. Three rooms,
one module each:

* here, ``Conversation``: the call's lifecycle, its inputs and the wiring —
  ``feed_audio`` ─► input task: resample ─► VAD (shared batched worker) ─► turn taking;
* pipeline/turns.py, turn taking: turn events, speculative transcription, the held
  speculative reply, and ``end_turn``, the one seam where the end of a turn is
  decided (a learned end-of-turn policy plugs in there);
* pipeline/responses.py, the response runner: LLM stream ─► TextChunker ─► TTS ─►
  resample ─► audio deltas; on barge-in cancel ─► clear ─► wait for the played
  report ─► history keeps what was heard ─► response.done(cancelled).

Settings live in pipeline/session.py (re-exported here). Events go out through one
synchronous ``emit`` callable; the adapter owns the socket and its queue. A response
ends (``ResponseDone``) once the caller has heard it — generation finished and
playback reported or estimated to be over — so the text a completed response leaves
in history is the text that was played.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE, StreamResampler
from pipeline.engines.base import CallScopedState, FloatAudio, ToolCallingLLM, WarmableLLM
from pipeline.errors import EngineError
from pipeline.events import ErrorEvent
from pipeline.history import History
from pipeline.reply_state import Response, ResponseRequest
from pipeline.responses import ResponseRunner
from pipeline.session import (
    DEFAULT_INSTRUCTIONS,
    CallContext,
    Emit,
    Engines,
    SessionConfig,
    discard_event,
)
from pipeline.turns import TurnTaking
from pipeline.vad import FRAME_SAMPLES

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "Conversation",
    "Emit",
    "Engines",
    "ResponseRequest",
    "SessionConfig",
]

logger = logging.getLogger("voiceforge.conversation")


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
        config = config or SessionConfig()
        self.session_id = session_id or f"sess_{uuid.uuid4().hex[:12]}"
        self.engines = engines.for_session(self.session_id)
        self.history = History(
            config.instructions,
            max_turns=config.max_history_turns,
            max_chars=config.max_history_chars,
        )
        self._call = CallContext(self.session_id, self.engines, config, self.history, emit)
        self._responses = ResponseRunner(self._call)
        self._turns = TurnTaking(self._call, self._responses)
        self._vad = engines.vad.open_stream()
        self._input_resampler = StreamResampler(config.input_sample_rate, PIPELINE_SAMPLE_RATE)
        self._input_queue: asyncio.Queue[tuple[FloatAudio, float]] = asyncio.Queue(maxsize=500)
        self._queued_input_samples = 0
        """Samples in ``_input_queue``: the bound that counts (its item bound only
        caps the per-frame overhead of tiny frames)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._input_task: asyncio.Task[None] | None = None
        self.on_text_input: Callable[[str], None] | None = None
        """Told each typed turn's words (call records): no event carries them."""
        self.on_input_frame: Callable[[FloatAudio], None] | None = None
        """Given each 16 kHz frame the turn detector hears (call recordings): the
        call's clock, the one transcript timings are on."""

    @property
    def config(self) -> SessionConfig:
        return self._call.config

    @property
    def accepting_turns(self) -> bool:
        """False while the server drains: no reply starts; turns that end, or that
        were still transcribed or waiting then, are ignored (and said so)."""
        return self._turns.accepting

    @accepting_turns.setter
    def accepting_turns(self, accepting: bool) -> None:
        self._turns.accepting = accepting

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._input_task = asyncio.create_task(self._input_loop(), name=f"{self.session_id}-input")
        self._input_task.add_done_callback(self._on_input_stopped)
        offered = self._offered_tools(self.config)
        if offered and isinstance(self.engines.llm, WarmableLLM):
            # The template lists the tools with the instructions: the model reads
            # them while the caller speaks, not after the first turn ends.
            self.engines.llm.warm(self.config.instructions, offered)

    def _on_input_stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("session=%s input path failed", self.session_id, exc_info=exc)
            self._call.emit(
                ErrorEvent(
                    "internal_error", f"input audio path failed: {exc}", fatal=True,
                    category="permanent",
                )
            )

    async def close(self) -> None:
        """Cancel everything this call runs and wait for it to stop."""
        if self._call.closed:
            return
        self._call.closed = True
        tasks: list[asyncio.Future[Any]] = []
        if self._input_task is not None:
            tasks.append(self._input_task)
        tasks.extend(self._turns.in_flight())
        tasks.extend(self._responses.tasks())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._call.tools.close()  # a finish tool left running by a barge-in, too
        self._vad.close()
        if isinstance(self.engines.llm, CallScopedState):
            self.engines.llm.release()  # what the engine kept for this call (its context)
        # The adapter's emit is usually a bound method of an object that holds this
        # conversation: drop the reference so the pair is freed when the call ends,
        # not at the next full garbage collection (loadtest/soak.py found the delay).
        self._call.emit = discard_event
        self.on_text_input = self.on_input_frame = None
        # A cancelled task keeps its CancelledError, whose traceback holds the
        # task's frame and so this object: forget the finished tasks.
        self._input_task = None
        self._turns.forget()
        self._responses.current = None

    def update(self, config: SessionConfig) -> None:
        """Apply new settings; audio already accepted keeps flowing."""
        if config.input_sample_rate != self.config.input_sample_rate:
            self._input_resampler = StreamResampler(config.input_sample_rate, PIPELINE_SAMPLE_RATE)
        if config.turn != self.config.turn:
            self._turns.set_turn_config(config.turn)
        if config.manual_turns and not self.config.manual_turns:
            self._turns.start_manual()
        offered = self._offered_tools(config)
        if (
            config.instructions != self.history.system_prompt
            or offered != self._offered_tools(self.config)
        ) and isinstance(self.engines.llm, WarmableLLM):
            self.engines.llm.warm(config.instructions, offered)
        self.history.system_prompt = config.instructions
        self._call.config = config

    def _offered_tools(self, config: SessionConfig) -> list[dict[str, Any]]:
        """The tool definitions the model reads with ``config`` (with the instructions)."""
        if not isinstance(self.engines.llm, ToolCallingLLM):
            return []
        return [
            spec.openai() for spec in self._call.tools.offered(config.tools, config.tool_choice)
        ]

    def set_transfer(self, handler: Callable[[str], Awaitable[str]]) -> None:
        """A transport that can hand the call on (a phone line): ``transfer_call``
        is offered, and ``handler`` chooses the destination."""
        self._call.tools.context.transfer_handler = handler

    def server_tools(self) -> list[str]:
        """The server tools this call's model is offered (``limits.server_tools``)."""
        return [spec.name for spec in self._call.tools.offered((), "auto")]

    def tool_result(self, call_id: str, output: str, is_error: bool = False) -> bool:
        """The client's ``tool.result``; False when no call of this client waits for it."""
        return self._call.tools.client_result(call_id, output, is_error)

    # ------------------------------------------------------------------ inputs

    def feed_audio(self, audio: FloatAudio) -> bool:
        """Queue input audio at ``config.input_sample_rate``; False when the queue is full."""
        config = self.config
        limit = config.max_queued_input_ms * config.input_sample_rate / 1000
        if self._queued_input_samples and self._queued_input_samples + len(audio) > limit:
            return False
        try:
            self._input_queue.put_nowait((audio, time.monotonic()))
        except asyncio.QueueFull:
            return False
        self._queued_input_samples += len(audio)
        return True

    def send_text(self, text: str) -> None:
        """A typed user turn: interrupts any reply in progress, then answers."""
        text = text.strip()
        if text:
            if self.on_text_input is not None:
                self.on_text_input(text)
            self._turns.text(text)

    def add_text(self, role: str, text: str) -> None:
        """A user or assistant turn the client writes into the conversation without
        asking for a reply (the Realtime API's ``conversation.item.create``)."""
        if role == "user":
            self.history.add_user(text)
            if self.on_text_input is not None:
                self.on_text_input(text)  # the call's record: the next reply answers it
        elif role == "assistant":
            self.history.add_assistant(text)
        else:
            raise ValueError(f"role must be user or assistant, not {role!r}")

    def respond(self, request: ResponseRequest | None = None) -> None:
        """A reply to the history as it stands, with the client's settings for it
        (the Realtime API's ``response.create``)."""
        self._turns.respond(request or ResponseRequest())

    def stop_playback(self, response_id: str, played_ms: float) -> bool:
        """The client stopped playing this reply at ``played_ms`` (the Realtime API's
        ``conversation.item.truncate`` while it runs): it is cancelled, and history
        keeps what was played. False when it is not the reply in progress."""
        return self._responses.stop_playback(response_id, played_ms)

    def truncate_finished(self, response_id: str, played_ms: float) -> str | None:
        """A finished reply of which the caller heard only ``played_ms``: history
        keeps that part, which is returned; None when the reply is not one of the
        last few finished."""
        found = self._responses.heard_of(response_id, played_ms)
        if found is None:
            return None
        kept, heard = found
        if len(heard) < len(kept):
            self.history.rewrite("assistant", kept, heard)
        return heard if len(heard) < len(kept) else kept

    def commit_input(self) -> bool:
        """End the caller's paused turn now rather than after its silence; with
        ``manual_turns``, make the audio since the last commit a user turn (no reply).
        False when there is nothing to commit (the Realtime API's
        ``input_audio_buffer.commit``)."""
        return self._turns.commit()

    def clear_input(self) -> None:
        """Drop input audio not yet heard and the turn in progress, which gets no reply
        (the Realtime API's ``input_audio_buffer.clear``)."""
        while not self._input_queue.empty():
            self._input_queue.get_nowait()
        self._queued_input_samples = 0
        self._pending = np.zeros(0, dtype=np.float32)
        # The resampler holds the tail of the cleared audio: it would lead the next.
        self._input_resampler = StreamResampler(self.config.input_sample_rate,
                                                PIPELINE_SAMPLE_RATE)
        self._turns.clear()

    def cancel_response(
        self, response_id: str | None = None, reason: str = "client_cancelled"
    ) -> bool:
        """Cancel the reply in progress (``response.cancel``); with an id, only that one.

        False when there is nothing (or not that response) to cancel.
        """
        return self._responses.cancel_current(response_id, reason)

    def report_played(self, response_id: str, played_ms: float) -> None:
        """The client says how much of a response it has played."""
        self._responses.report_played(response_id, played_ms)

    @property
    def busy(self) -> bool:
        """A turn or a response is in flight (what a draining server waits for)."""
        return bool(
            self._responses.current is not None or self._turns.tasks or self._responses.finishers
        )

    def reply_in_flight(self) -> Response | None:
        """The reply being generated or played: what a dropped connection leaves
        unfinished (pipeline/resume.py)."""
        return self._responses.current

    @property
    def agent_speaking(self) -> bool:
        return self._responses.agent_speaking

    # -------------------------------------------------------------- input path

    async def _input_loop(self) -> None:
        while True:
            audio, arrived = await self._input_queue.get()
            self._queued_input_samples -= len(audio)
            pcm = self._input_resampler.process(audio)
            self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
            while len(self._pending) >= FRAME_SAMPLES:
                frame = self._pending[:FRAME_SAMPLES]
                self._pending = self._pending[FRAME_SAMPLES:]
                self._turns.hear(frame, arrived)
                if self.on_input_frame is not None:
                    self.on_input_frame(frame)
                if self.config.manual_turns:
                    self._turns.judge(0.0)  # the clock runs on; no VAD is asked
                    continue
                try:
                    probability = await self._vad.process(frame)
                except EngineError as exc:
                    # One lost frame reads as silence; the call goes on.
                    logger.warning("session=%s VAD failed: %s", self.session_id, exc)
                    probability = 0.0
                self._turns.judge(probability)
