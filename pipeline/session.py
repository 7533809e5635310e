"""What one call is configured with and what its parts share.

``SessionConfig`` holds the per-call settings (``session.update`` replaces fields of
it), ``Engines`` the engines a call uses, and ``CallContext`` the little state the
conversation's parts (pipeline/turns.py, pipeline/responses.py) read at the moment
they use it: the settings and the outlet can be swapped while the call runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.chunker import ChunkerConfig
from pipeline.engines.base import LLMEngine, SessionScopedLLM, STTEngine, TTSEngine
from pipeline.errors import EngineError
from pipeline.events import ErrorEvent, Event
from pipeline.history import History
from pipeline.smart_turn import BatchedSmartTurnWorker
from pipeline.tools.executor import CallTools
from pipeline.tools.registry import ToolContext, ToolRegistry
from pipeline.tools.spec import ToolSpec
from pipeline.turn import TurnConfig
from pipeline.vad import BatchedVADWorker

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
    read_ahead_interval_ms: float = 0.0
    """While the caller speaks, every this many ms of speech the turn so far is
    transcribed and an in-process LLM reads those words ahead of the turn's end
    (``WordReadingLLM``), only while that model is idle; 0 = off. The server's
    default is ``DEFAULT_READ_AHEAD_INTERVAL_MS`` where its LLM can read ahead."""
    speech_pad_ms: float = 200.0
    """Audio kept before speech start and after speech end for transcription."""
    max_turn_ms: float = 30_000.0
    max_queued_input_ms: float = 10_000.0
    """Input audio that may wait for the VAD, at the input rate; past it frames are
    refused (the adapter says ``input_overloaded``). Bounded in samples, not frames:
    500 large frames would hold hundreds of MiB. One frame is always taken when
    nothing waits."""
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
    first_chunk_priority: bool = True
    """An in-process LLM stands aside while the reply's first chunk is synthesised
    (they share the CPU; the first audio is what the caller waits for)."""
    record_audio: bool = False
    """Record both sides of this call (docs/calls.md), where the server allows it."""
    playback_pause: bool = False
    """The client can pause and resume a response's playback: caller speech over the
    agent pauses the reply at once, and a backchannel or noise resumes it
    (pipeline/interruption.py). Off, a barge-in cancels as it always did."""
    speculative_response_min_silence_ms: float = 200.0
    """Silence needed before a speculative reply starts: pauses between words end
    sooner, and a reply started on half a sentence only costs CPU."""
    tools: tuple[ToolSpec, ...] = ()
    """The client's tools (``session.update``); the server's come from the registry."""
    tool_choice: str = "auto"
    """``auto``: the model may call any tool offered; ``none``: it is offered none."""
    tool_timeout_ms: float = 10_000.0
    """How long a client tool's ``tool.result`` is waited for."""
    end_call_grace_ms: float = 1500.0
    """After ``end_call``'s goodbye has been heard, the call waits this long for the
    caller; speech (or text) in that time keeps the call going."""
    auto_reply: bool = True
    """A turn the caller ends is answered; False: it only joins history and a reply
    waits for ``Conversation.respond`` (the Realtime API's ``create_response:
    false``). No speculative reply is started then."""
    manual_turns: bool = False
    """The client says when the caller's turn ends (the Realtime API's
    ``turn_detection: null``): no VAD runs and nothing interrupts a reply;
    ``Conversation.commit_input`` transcribes the audio since the last commit into a
    user turn, and only ``respond`` replies."""
    tool_filler_ms: float = 700.0
    """A tool still running after this makes the agent say a short filler (once per
    reply, only if it has said nothing yet); 0: never."""


@dataclass(slots=True)
class Engines:
    stt: STTEngine
    llm: LLMEngine
    tts: TTSEngine
    vad: BatchedVADWorker
    smart_turn: BatchedSmartTurnWorker | None = None
    """The end-of-turn model, shared by every call; None: the learned turn policy
    is not available on this server."""
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    """The server's tools, shared by every call (pipeline/tools/)."""
    first_chunk_max_words: int = 0
    """A new call's first-chunk cut for these models (``ChunkerConfig``): the embedded
    tier's (pipeline/tiers.py), so it follows the model that writes the replies."""

    async def start_workers(self) -> None:
        """Start the shared batching workers (VAD, end-of-turn model)."""
        await self.vad.start()
        if self.smart_turn is not None:
            await self.smart_turn.start()

    async def stop_workers(self) -> None:
        if self.smart_turn is not None:
            await self.smart_turn.stop()
        await self.vad.stop()

    def for_session(self, session_id: str) -> Engines:
        """The engines one call uses: an LLM that routes by call gets a per-call view."""
        if isinstance(self.llm, SessionScopedLLM):
            return replace(self, llm=self.llm.for_session(session_id))
        return self


@dataclass(slots=True)
class CallContext:
    """The state every part of one call reads when it acts, never copies.

    It holds no reference back to the conversation, so the parts hold none either.
    """

    session_id: str
    engines: Engines
    config: SessionConfig
    history: History
    emit: Emit
    closed: bool = False
    tools: CallTools = field(init=False)
    """This call's tool runs (what its model is offered, what it called)."""

    def __post_init__(self) -> None:
        context = ToolContext(self.session_id, self.engines.tools.timezone)
        self.tools = CallTools(self.engines.tools, context, self._emit)

    def _emit(self, event: Event) -> None:
        self.emit(event)  # looked up at each call: the outlet is swapped at close

    def report_unexpected(self, task: asyncio.Future[Any]) -> None:
        """A bug in a turn or response task must not vanish with the task."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        logger.error("session=%s task failed", self.session_id, exc_info=exc)
        self.emit(
            ErrorEvent("internal_error", f"turn failed: {exc}", fatal=False, category="permanent")
        )

    async def retry_or_raise(self, exc: EngineError, attempt: int, what: str) -> int:
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


def discard_event(event: Event) -> None:
    """The emit of a closed conversation."""
