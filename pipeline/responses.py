"""The response runner: one reply, from the LLM's first delta to what the caller heard.

A reply runs as one referenced task of two stages joined by a bounded queue:

    LLM deltas (retried before the first token) ─► TextChunker ─► chunk queue
    chunk queue ─► TTS (a chunk retried before its first audio) ─► resample
               ─► audio deltas of at most ``audio_delta_ms``

It then waits until the caller has heard it (played report, or the clock) and writes
the assistant turn to history. A failure before any audio is apologised for; a
cancellation (barge-in, ``response.cancel``, a newer turn) stops both stages, clears
the client's playback and keeps in history only what was played.

Where the words come from (the model, tool rounds) is pipeline/reply_text.py's.
The runner knows nothing of turns: the turn side (pipeline/turns.py) adds the user
turn to history and asks for a reply with ``answer`` — or, speculatively, starts a
*held* reply whose events wait until the turn is confirmed (``start_held`` /
``release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pipeline.audio import ChunkSeam, StreamResampler, float_to_pcm16
from pipeline.chunker import TextChunk, TextChunker
from pipeline.engines.base import ChatMessage, FloatAudio, YieldingLLM
from pipeline.errors import EngineError, TTSError
from pipeline.events import (
    ErrorEvent,
    Event,
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseAudioResume,
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    ResponseTextDelta,
    SessionEnded,
)
from pipeline.history import SpokenChunk, heard_text
from pipeline.reply_state import (
    ACTIVE_PHASES,
    Response,
    ResponsePhase,
    ResponseRequest,
    error_category,
    error_code,
    new_response_id,
)
from pipeline.reply_text import reply_text
from pipeline.session import CallContext
from pipeline.tools.reply import SpeakNow

logger = logging.getLogger("voiceforge.conversation")

RECENT_RESPONSES = 16


class ResponseRunner:
    """Runs the replies of one call: the current one, and cancelled ones settling."""

    def __init__(self, call: CallContext) -> None:
        self._call = call
        self.current: Response | None = None
        self.finishers: set[asyncio.Task[None]] = set()
        """Cancelled replies waiting for the played report before writing history."""
        self.hang_up: asyncio.Task[None] | None = None
        """``end_call``'s hang-up, waiting out ``end_call_grace_ms`` after the goodbye."""
        self._cancelled: set[str] = set()
        """Cancelled replies whose history is not written yet."""
        self._recent: dict[str, tuple[str, list[SpokenChunk]]] = {}
        """The last ``RECENT_RESPONSES`` finished replies: the text history kept and
        their chunk timeline, for a client that says later what it played."""

    # ----------------------------------------------------------------- queries

    @property
    def agent_speaking(self) -> bool:
        response = self.current
        return response is not None and (
            response.phase is ResponsePhase.PLAYING
            or (response.phase is ResponsePhase.GENERATING and response.first_audio_at is not None)
        )

    def active(self) -> Response | None:
        """The current reply if it can still be cancelled."""
        response = self.current
        if response is not None and response.phase in ACTIVE_PHASES:
            return response
        return None

    def tasks(self) -> list[asyncio.Future[Any]]:
        """Everything the runner has in flight (for close)."""
        tasks: list[asyncio.Future[Any]] = []
        if self.current is not None and self.current.task is not None:
            tasks.append(self.current.task)
        tasks.extend(self.finishers)
        if self.hang_up is not None:
            tasks.append(self.hang_up)
        return tasks

    async def settle(self) -> None:
        """Wait until every cancelled reply has written its history."""
        if self.finishers:
            await asyncio.gather(*self.finishers, return_exceptions=True)

    # ---------------------------------------------------------------- starting

    def answer(
        self,
        turn_end: float,
        timings: dict[str, float],
        *,
        apology: bool,
        request: ResponseRequest | None = None,
    ) -> None:
        """Reply to the history as it stands; ``apology``: only say sorry (turn lost);
        ``request``: the client's settings for this reply.

        The caller (turn taking) has settled every earlier reply first: two replies
        never run at once, and the one before has written its history.
        """
        if self.current is not None or self.finishers:
            raise RuntimeError("a reply was started while another one was still running")
        call = self._call
        messages = call.history.messages()
        if request is not None and request.instructions is not None:
            messages[0] = ChatMessage(role="system", content=request.instructions)
        response = Response(
            response_id=new_response_id(),
            started_at=turn_end,
            timings=timings,
            messages=messages,
            canned=call.config.apology if apology else None,
            in_history=request is None or not request.out_of_band,
            max_tokens=request.max_tokens if request is not None else None,
        )
        if apology:
            response.timings["apology"] = 1.0
        response.released.set()
        self.current = response
        call.emit(ResponseCreated(response.response_id))
        response.task = asyncio.create_task(
            self._run(response), name=f"{call.session_id}-{response.response_id}"
        )
        response.task.add_done_callback(call.report_unexpected)

    def start_held(
        self,
        messages: list[ChatMessage],
        started_at: float,
        speculative_task: asyncio.Task[tuple[str, float]],
    ) -> Response:
        """Start a reply whose events are held back until ``release``."""
        draft = Response(
            response_id=new_response_id(),
            started_at=started_at,
            messages=messages,
            held=True,
            speculative_task=speculative_task,
        )
        draft.task = asyncio.create_task(
            self._run(draft), name=f"{self._call.session_id}-{draft.response_id}-draft"
        )
        draft.task.add_done_callback(self._call.report_unexpected)
        return draft

    def release(self, draft: Response, timings: dict[str, float]) -> None:
        """The turn ended as speculated: the held reply becomes the response."""
        emit = self._call.emit
        # In place: the reply's tool runner writes its counts into this same dict
        # (a replaced dict would lose every figure written after the release).
        merged = {**timings, **draft.timings, "speculative_response": 1.0}
        draft.timings.clear()
        draft.timings.update(merged)
        if draft.phase is not ResponsePhase.DONE:
            self.current = draft
        emit(ResponseCreated(draft.response_id))
        now = time.monotonic()
        held, draft.held_events = draft.held_events, []
        draft.held = False
        if any(isinstance(event, ResponseAudioDelta) for event in held):
            draft.first_audio_at = now
            draft.timings["end_of_speech_to_first_audio_ms"] = (now - draft.started_at) * 1000
            _time_from_end_of_turn(draft.timings)
        for event in held:
            emit(event)
        draft.released.set()

    # ------------------------------------------------------------ client input

    def cancel_current(self, response_id: str | None, reason: str) -> bool:
        response = self.current
        if response is None or response.phase in (ResponsePhase.FINISHING, ResponsePhase.DONE):
            return False
        if response_id is not None and response_id != response.response_id:
            return False
        self.cancel(response, reason)
        return True

    def pause(self, response: Response) -> bool:
        """Pause the reply's playback at the caller's ear (``response.audio.pause``).

        Generation goes on up to the end of the chunk being spoken; its audio is held
        until ``resume``. False when it cannot be paused (not playing, or paused).
        """
        if response.phase not in ACTIVE_PHASES or response.paused_at is not None or response.held:
            return False
        response.paused_at = time.monotonic()
        response.unpaused.clear()
        self._call.emit(ResponseAudioPause(response.response_id))
        return True

    def resume(self, response: Response) -> bool:
        """Play on from the pause (``response.audio.resume``), held audio first."""
        if response.paused_at is None:
            return False
        response.paused_s += time.monotonic() - response.paused_at
        response.paused_at = None
        if response.phase in ACTIVE_PHASES:
            emit = self._call.emit
            emit(ResponseAudioResume(response.response_id))
            held, response.paused_audio = response.paused_audio, []
            for delta in held:
                emit(delta)
        response.unpaused.set()
        response.played_event.set()  # the playback wait recomputes its deadline
        return True

    def report_played(self, response_id: str, played_ms: float) -> None:
        response = self.current
        if response is not None and response.response_id == response_id:
            response.played_ms = max(response.played_ms or 0.0, min(played_ms, response.audio_ms))
            response.played_event.set()

    def stop_playback(self, response_id: str, played_ms: float) -> bool:
        """The client stopped playing the current reply at ``played_ms`` for good:
        what follows is never heard, so the reply is cancelled and history keeps what
        was played. False when that reply is not the current one or is done."""
        response = self.current
        if response is None or response.response_id != response_id:
            return False
        if response.phase is ResponsePhase.DONE or (
            # Finishing uncancelled: it was played out and its history is being written.
            response.phase is ResponsePhase.FINISHING and response_id not in self._cancelled
        ):
            return False
        response.played_ms = min(max(0.0, played_ms), response.audio_ms)
        response.played_final = True
        response.played_event.set()
        if response.phase in ACTIVE_PHASES:
            self.cancel(response, "client_truncated")
        return True

    def heard_of(self, response_id: str, played_ms: float) -> tuple[str, str] | None:
        """A finished reply's (text history kept, text heard up to ``played_ms``);
        None when it is not among the last few finished."""
        done = self._recent.get(response_id)
        if done is None:
            return None
        kept, chunks = done
        return kept, heard_text(chunks, played_ms)

    # ----------------------------------------------------------------- running

    async def _run(self, response: Response) -> None:
        config = self._call.config
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
                    "session=%s response=%s failed", self._call.session_id, response.response_id,
                    exc_info=exc,
                )
                failure = EngineError(f"internal error: {exc!r}", transient=False)
            else:
                raise
        await response.released.wait()
        if failure is not None:
            self._call.emit(
                ErrorEvent(
                    error_code(failure), str(failure), fatal=False,
                    response_id=response.response_id, category=error_category(failure),
                )
            )
            if (
                response.audio_ms == 0
                and self._call.config.apology
                and response.canned is None
                and not response.held
            ):
                await self._apologize(response, failure)
        response.move(ResponsePhase.PLAYING)
        # Audio already sent plays out (a barge-in can still cut it): the response is
        # done once the caller has heard it, reported or estimated from the clock.
        playback_start = response.first_audio_at or time.monotonic()
        while True:
            now = time.monotonic()
            if response.played_ms is not None and response.played_ms >= response.audio_ms - 1.0:
                break
            if response.paused_at is not None:
                # Not heard while paused: wait for the resume (or the cancel).
                await response.unpaused.wait()
                if response.phase is not ResponsePhase.PLAYING:
                    return
                continue
            deadline = (
                playback_start
                + response.paused_for_s(now)
                + (response.audio_ms + config.playback_grace_ms) / 1000.0
            )
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
        if response.tools is not None and response.in_history:
            await response.tools.write_history(self._call.history)
        if failure is None:
            self._keep(response, response.text)
            self._finish(response, ResponseStatus.COMPLETED, response.text, response.audio_ms)
            return
        played = response.best_played_ms(time.monotonic())
        heard = heard_text(response.chunks, played) if played > 0 else ""
        self._keep(response, heard)
        self._finish(response, ResponseStatus.FAILED, heard, played, reason=error_code(failure))

    def _keep(self, response: Response, heard: str) -> None:
        """History keeps what was heard (unless the reply was out of band)."""
        if response.in_history:
            self._call.history.add_assistant(heard)
        self._recent[response.response_id] = (heard.strip(), response.chunks)
        while len(self._recent) > RECENT_RESPONSES:
            del self._recent[next(iter(self._recent))]

    async def _apologize(self, response: Response, failure: EngineError) -> None:
        """The caller heard nothing of a failed reply: say sorry, by voice if TTS works."""
        text = self._call.config.apology
        response.text += text
        self._call.emit(ResponseTextDelta(response.response_id, text))
        if isinstance(failure, TTSError):
            return
        chunks: asyncio.Queue[TextChunk | None] = asyncio.Queue()
        chunks.put_nowait(TextChunk(text, text, 0))
        chunks.put_nowait(None)
        try:
            await self._speak(response, chunks)
        except EngineError as exc:
            logger.warning("session=%s apology not spoken: %s", self._call.session_id, exc)
        except Exception:
            logger.exception("session=%s apology not spoken", self._call.session_id)

    async def _generate_text(
        self, response: Response, chunks: asyncio.Queue[TextChunk | None]
    ) -> None:
        chunker = TextChunker(self._call.config.chunker)
        requested = time.monotonic()
        first_token = True
        stream = reply_text(self._call, response)
        try:
            async for delta in stream:
                if isinstance(delta, SpeakNow):
                    await self._speak_now(response, chunker, chunks, delta.text, requested)
                    continue
                if first_token:
                    response.timings["llm_first_token_ms"] = (time.monotonic() - requested) * 1000
                    first_token = False
                response.text += delta
                self._response_emit(response, ResponseTextDelta(response.response_id, delta))
                for chunk in chunker.push(delta):
                    await self._queue_chunk(response, chunks, chunk, requested)
            for chunk in chunker.flush():
                await self._queue_chunk(response, chunks, chunk, requested)
        finally:
            await stream.aclose()
            response.timings["llm_total_ms"] = (time.monotonic() - requested) * 1000
        await chunks.put(None)

    async def _queue_chunk(
        self,
        response: Response,
        chunks: asyncio.Queue[TextChunk | None],
        chunk: TextChunk,
        requested: float,
    ) -> None:
        if "first_chunk_text_ms" not in response.timings:
            response.timings["first_chunk_text_ms"] = (time.monotonic() - requested) * 1000
        await chunks.put(chunk)

    async def _speak_now(
        self,
        response: Response,
        chunker: TextChunker,
        chunks: asyncio.Queue[TextChunk | None],
        text: str,
        requested: float,
    ) -> None:
        """What the model said so far is spoken now (a tool call is about to make it
        wait); then ``text`` (a filler), as a chunk of its own."""
        for chunk in chunker.flush():
            await self._queue_chunk(response, chunks, chunk, requested)
        if not text:
            return
        delta = f"{' ' if response.text and not response.text[-1].isspace() else ''}{text} "
        response.text += delta
        self._response_emit(response, ResponseTextDelta(response.response_id, delta))
        await self._queue_chunk(response, chunks, TextChunk(text, text, 0), requested)

    async def _speak(self, response: Response, chunks: asyncio.Queue[TextChunk | None]) -> None:
        try:
            await self._speak_chunks(response, chunks)
        finally:
            self._resume_llm()  # whatever ended the speech, the LLM is not left waiting

    async def _speak_chunks(
        self, response: Response, chunks: asyncio.Queue[TextChunk | None]
    ) -> None:
        config = self._call.config
        tts = self._call.engines.tts
        resampler = StreamResampler(tts.sample_rate, config.output_sample_rate)
        out_rate = config.output_sample_rate
        max_samples = max(1, int(config.audio_delta_ms * out_rate / 1000))
        seam = ChunkSeam(out_rate)
        after_seam = False
        while (chunk := await chunks.get()) is not None:
            # Paused: finish no more than the chunk in progress; the rest may never play.
            await response.unpaused.wait()
            chunk_start_ms = response.audio_ms
            chunk_ready = time.monotonic()
            attempt = 0
            # The first chunk's speech is what the caller waits for: the in-process
            # LLM stands aside until it is out (the rest of the reply is not late).
            llm = self._call.engines.llm
            yielding = (
                chunk.index == 0 and config.first_chunk_priority and isinstance(llm, YieldingLLM)
            )
            if isinstance(llm, YieldingLLM) and yielding:
                llm.pause_generation()
            while True:
                seam.start(after_seam=after_seam, before_seam=chunk.joins_next)
                try:
                    async for audio in tts.synthesize(chunk.text, voice=config.voice):
                        if "tts_first_audio_ms" not in response.timings:
                            response.timings["tts_first_audio_ms"] = (
                                time.monotonic() - chunk_ready
                            ) * 1000
                        if yielding:
                            yielding = False
                            self._resume_llm()
                        played = seam.process(resampler.process(audio))
                        self._emit_audio(response, played, max_samples, out_rate)
                    break
                except TTSError as exc:
                    if response.audio_ms > chunk_start_ms:
                        raise  # part of the chunk was sent: a retry would repeat it
                    attempt = await self._call.retry_or_raise(exc, attempt, "speech synthesis")
                    resampler = StreamResampler(tts.sample_rate, out_rate)
                except EngineError:
                    raise
                except Exception as exc:  # a bug in the engine
                    raise TTSError(f"{tts.name}: {exc!r}", transient=False) from exc
            if yielding:
                self._resume_llm()
            self._emit_audio(response, seam.process(resampler.flush()), max_samples, out_rate)
            self._emit_audio(response, seam.finish(), max_samples, out_rate)
            after_seam = chunk.joins_next
            resampler = StreamResampler(tts.sample_rate, out_rate)
            response.chunks.append(
                SpokenChunk(chunk.display_text, chunk_start_ms, response.audio_ms)
            )

    def _resume_llm(self) -> None:
        if isinstance(self._call.engines.llm, YieldingLLM):
            self._call.engines.llm.resume_generation()

    def _emit_audio(
        self, response: Response, audio: FloatAudio, max_samples: int, rate: int
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

    def _response_emit(self, response: Response, event: Event) -> None:
        if response.held:
            response.held_events.append(event)
        elif response.paused_at is not None and isinstance(event, ResponseAudioDelta):
            response.paused_audio.append(event)
        else:
            self._call.emit(event)

    # ------------------------------------------------------------ cancellation

    def cancel(self, response: Response, reason: str) -> None:
        """Stop generating now; settle history once the client says what it played."""
        response.move(ResponsePhase.FINISHING)
        if response.task is not None:
            response.task.cancel()
        self._cancelled.add(response.response_id)
        finisher = asyncio.create_task(self._finish_cancelled(response, reason))
        self.finishers.add(finisher)
        finisher.add_done_callback(self.finishers.discard)
        finisher.add_done_callback(lambda _: self._cancelled.discard(response.response_id))

    async def _finish_cancelled(self, response: Response, reason: str) -> None:
        if response.task is not None:
            await asyncio.gather(response.task, return_exceptions=True)
        if response.first_audio_at is not None:
            # Only now, with the producer stopped, can no delta follow the clear.
            response.played_event.clear()
            self._call.emit(ResponseAudioClear(response.response_id))
            if not response.played_final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        response.played_event.wait(),
                        self._call.config.played_report_timeout_ms / 1000,
                    )
        played = response.best_played_ms(time.monotonic())
        heard = heard_text(response.chunks, played) if played > 0 else ""
        if response.tools is not None and response.in_history:
            await response.tools.write_history(self._call.history)
        self._keep(response, heard)
        response.timings["played_source_client"] = 1.0 if response.played_ms is not None else 0.0
        self._finish(response, ResponseStatus.CANCELLED, heard, played, reason=reason)

    def _finish(
        self,
        response: Response,
        status: ResponseStatus,
        heard: str,
        played_ms: float,
        *,
        reason: str | None = None,
    ) -> None:
        response.move(ResponsePhase.DONE)
        self._call.emit(
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
        if self.current is response:
            self.current = None
        context = self._call.tools.context
        if context.end_requested is not None:
            if status is ResponseStatus.CANCELLED:
                context.end_requested = None  # the caller spoke over the goodbye: talk on
            elif self.hang_up is None:
                self.hang_up = asyncio.create_task(
                    self._hang_up(context.end_requested), name=f"{self._call.session_id}-hang-up"
                )
                self.hang_up.add_done_callback(self._call.report_unexpected)

    async def _hang_up(self, reason: str) -> None:
        """End the call once the goodbye has been heard and the caller stayed quiet for
        ``end_call_grace_ms``: a small model's ``end_call`` is sometimes wrong ("how do
        you say goodbye in Spanish?"), and a caller who speaks up keeps the call."""
        await asyncio.sleep(self._call.config.end_call_grace_ms / 1000)
        self._call.emit(SessionEnded(reason))

    def keep_call(self) -> bool:
        """The caller spoke (or typed) after the goodbye: the hang-up is called off."""
        self._call.tools.context.end_requested = None
        if self.hang_up is None or self.hang_up.done():
            return False
        self.hang_up.cancel()
        self.hang_up = None
        return True


def _time_from_end_of_turn(timings: dict[str, float]) -> None:
    """The server's own overhead: end of turn decided → first audio sent.

    ``started_at`` is the speech end and the end of turn came
    ``end_of_turn_wait_ms`` later (0 for typed turns), so the difference is
    everything the server and its engines added after the caller's turn was over.
    """
    timings["end_of_turn_to_first_audio_ms"] = timings[
        "end_of_speech_to_first_audio_ms"
    ] - timings.get("end_of_turn_wait_ms", 0.0)
