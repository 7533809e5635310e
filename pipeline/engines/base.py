"""The engine seams: one Protocol per stage.

Every implementation (embedded CPU, production GPU, the `bench` doubles) satisfies
these. Engines are async at the edge; CPU-bound work runs in the engine's own
worker thread so the event loop never blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipeline.tools.spec import ToolCall

FloatAudio = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1]."""


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: NotRequired[list[dict[str, Any]]]
    """An assistant message that called tools: OpenAI's ``tool_calls`` entries."""
    tool_call_id: NotRequired[str]
    """A ``tool`` message: the call whose result ``content`` is."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    """The recognised text, stripped; empty when nothing was recognised."""
    audio_ms: float
    """Duration of the audio that was transcribed."""
    elapsed_ms: float
    """Wall time the engine took."""


class STTEngine(Protocol):
    """Speech to text on 16 kHz mono float32 audio."""

    name: str

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        """Transcribe a whole utterance. Raises STTError."""
        ...


class LLMEngine(Protocol):
    """A streaming chat model."""

    name: str

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
    ) -> AsyncIterator[str]:
        """Yield text deltas as the model produces them.

        The returned object is an async generator: closing it (``aclose()``) or
        cancelling the task that iterates it stops generation promptly (closing
        the HTTP stream for remote engines). Raises LLMError subclasses.
        """
        ...


@runtime_checkable
class ToolCallingLLM(Protocol):
    """An LLM that can call tools (optional): the OpenAI-compatible engine (vLLM's
    tool-call parser) and the embedded llama.cpp engine."""

    max_tool_rounds: int
    """Model turns of one reply that may call tools: a small model that has read a
    result tends to call again rather than answer, so it gets one."""

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        tool_choice: str = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        """Like ``stream``, offering ``tools`` (OpenAI's format): yields text deltas and,
        once each is complete, the calls the model made (arguments not yet validated).
        ``tool_choice`` ``none``: the model must answer in words (from the results
        in ``messages``); how the engine asks for that is its own business."""
        ...


@runtime_checkable
class SessionScopedLLM(Protocol):
    """An LLM that wants to know which call a request belongs to (optional).

    A replicated server keeps one call on one replica (so its prefix cache is
    reused) when every request of the call carries the same routing key; the
    in-process llama.cpp engine serves the waiting requests of different calls in
    turn. ``Engines.for_session`` asks such an engine for a per-call view; the
    ``LLMEngine.stream`` seam itself stays session-agnostic.
    """

    def for_session(self, session_id: str) -> LLMEngine:
        """An engine that tags every request it sends with ``session_id``."""
        ...


@runtime_checkable
class CallScopedState(Protocol):
    """A per-call LLM view that keeps something for its call (optional).

    The in-process llama.cpp engine keeps each call's context between turns;
    ``Conversation.close`` calls ``release`` so it is dropped when the call ends.
    """

    def release(self) -> None:
        """The call has ended: drop what was kept for it."""
        ...


@runtime_checkable
class WarmableLLM(Protocol):
    """A per-call LLM view that can read a call's instructions ahead of its first
    reply (optional).

    An in-process model reads a prompt before it writes the first word: long
    instructions cost seconds on a CPU, which the first reply would wait for.
    ``Conversation.update`` calls ``warm`` when a call sets new instructions, so
    the model reads them while the caller is still speaking.
    """

    def warm(self, instructions: str, tools: Sequence[dict[str, Any]] = ()) -> None:
        """Queue the read (with the ``tools`` the model will be offered: the template
        lists them with the instructions); returns at once. Best effort: failures are
        not raised."""
        ...


@runtime_checkable
class WordReadingLLM(Protocol):
    """A per-call LLM view that can read the caller's words while they still speak
    (optional).

    An in-process model reads the new words of a turn before it writes its first
    token (~0.45 s for a question on the 1.5B model on two cores). Given the words
    of a partial transcript while the caller is still talking, it reads them into
    the call's context then, and the reply, whose prompt shares them, reads only
    the turn's last words (pipeline/turns.py, ``read_ahead_interval_ms``).
    """

    @property
    def idle(self) -> bool:
        """Nothing runs or waits on the model: reading now delays nobody."""
        ...

    def read_words(self, messages: Sequence[ChatMessage]) -> bool:
        """Queue the read of ``messages`` (history, then the words so far as the last
        user turn); returns at once, False when not queued. Best effort."""
        ...

    def stop_reading(self) -> None:
        """The caller stopped: stop reading soon, leaving the cores to the transcript."""
        ...


@runtime_checkable
class YieldingLLM(Protocol):
    """A per-call LLM view that can stand aside while its call's first audio is
    synthesised (optional).

    An in-process model and an in-process TTS share the same few cores: while the
    model writes the rest of a reply, the first chunk's speech takes up to twice
    as long, and that speech is what the caller is waiting for. The rest of the
    reply is not: the first chunk's audio plays for a second or more meanwhile.
    """

    def pause_generation(self) -> None:
        """Stop before this call's next token until ``resume_generation`` (bounded)."""
        ...

    def resume_generation(self) -> None:
        ...


class TTSEngine(Protocol):
    """Text to speech, streamed in chunks."""

    name: str
    sample_rate: int
    """Rate of the float32 chunks the engine yields."""

    def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[FloatAudio]:
        """Yield mono float32 audio chunks for ``text`` as they are produced.

        Cancelling the iterating task stops synthesis after at most the chunk in
        progress. Raises TTSError.
        """
        ...

    def voices(self) -> Sequence[str]:
        """Names accepted as ``voice``."""
        ...


@runtime_checkable
class CloningTTS(Protocol):
    """A TTS that can take a new voice from a reference recording while it runs
    (optional: Chatterbox can, Piper cannot). The voice library API
    (``/v1/voices``) adds and removes voices through it."""

    default_voice: str

    async def add_voice(self, name: str, reference: Path) -> None:
        """Prepare ``name`` from the WAV at ``reference``; usable by ``synthesize`` as
        soon as this returns (the file is not read again). Raises TTSError."""
        ...

    async def remove_voice(self, name: str) -> None:
        """Forget ``name``; synthesis already under way with it finishes."""
        ...


@runtime_checkable
class SupervisedEngine(Protocol):
    """An engine that runs elsewhere and can be briefly out of service: a child
    process restarting (hosted.py). While it is, new calls are refused with a
    retry hint and ``/readyz`` says why, so a balancer sends them elsewhere."""

    def unavailable(self) -> str | None:
        """Why it cannot serve now, or None."""
        ...


@dataclass(frozen=True, slots=True)
class TimedWord:
    word: str
    start: float
    end: float
    """Seconds from the start of the audio."""
    probability: float


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One decoded stretch of a long recording, with Whisper's own measures."""

    id: int
    start: float
    end: float
    text: str
    language: str
    tokens: tuple[int, ...] = ()
    seek: int = 0
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[TimedWord, ...] = ()


@runtime_checkable
class SegmentingSTT(Protocol):
    """An STT that transcribes a whole recording segment by segment, with timestamps
    (optional; ``/v1/audio/transcriptions`` falls back to one ``transcribe`` call)."""

    multilingual: bool

    def transcribe_segments(
        self,
        audio: FloatAudio,
        *,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        word_timestamps: bool,
    ) -> AsyncIterator[TranscriptSegment]:
        """Yield segments as they are decoded (16 kHz mono input). Closing the
        generator stops after the segment in progress. Raises STTError."""
        ...
