"""In-process chat model with llama-cpp-python, streamed from one worker thread.

The model lives on a single dedicated thread: the one-worker executor is what
guarantees one generation at a time on the shared model. Streams waiting for it
queue per call (``for_session``) and are served round robin between calls
(``FairJobQueue``), so one call's backlog never goes ahead of another call's turn;
a stream closed while it waits is withdrawn and never runs, so a discarded
speculative draft costs no prefill. Each prompt is fitted to the context by tokens
first (``fit_to_context``): the system prompt and the newest turns are kept, the
oldest turns dropped, and a prompt that cannot fit is the caller's error
(``LLMRequestError``), not the engine's. Tokens cross to the event loop with
``call_soon_threadsafe``, so the loop never blocks; the queue is bounded by a
credit semaphore the worker takes before each token, so a slow consumer slows
generation down instead of growing memory. A stop flag checked at every token,
and while waiting for credit, ends generation within one token of ``aclose()``
or cancellation; closing the async generator then waits for the worker to go
idle, so no thread keeps generating behind a cancelled response. Calls served in
turn keep their own context between turns (``CallContexts``): a call's next turn
re-reads only its new words even when other calls used the model meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engines.base import ChatMessage, LLMEngine
from pipeline.engines.fair_queue import FairJobQueue, Job
from pipeline.engines.llama_contexts import NO_CALL, TOOLS_CONTEXT, CallContexts, context_key
from pipeline.engines.llama_session import LlamaSessionView
from pipeline.engines.llama_tools import (
    CALL_CONFIDENCE,
    TemplateTools,
    earlier_calls_dropped,
    last_user_index,
    plain_messages,
)
from pipeline.errors import LLMError, LLMRequestError, ModelLoadError
from pipeline.history import fit_to_context
from pipeline.tools.cues import call_plausible, cued, last_user_text
from pipeline.tools.spec import ToolCall

logger = logging.getLogger("voiceforge.llm")

_CREDIT_POLL_S = 0.05
"""How often a worker waiting for queue space rechecks the stop flag."""
MAX_PAUSE_S = 1.0
"""A paused generation goes on by itself after this (``pause_generation``): a
resume that never comes costs at most this once, never a stalled model."""
MESSAGE_OVERHEAD_TOKENS = 8
"""Chat-template tokens around each message (ChatML: ``<|im_start|>role\n`` …
``<|im_end|>\n`` is 5), counted on top of its content."""
CONTEXT_MARGIN_TOKENS = 32
"""Room kept free besides the reply: the assistant header and any template extras."""
TOOLS_TEMPLATE_TOKENS = 120
"""The chat template's words around the tools it lists (Qwen2.5's: ~100 tokens)."""
READ_STEP_TOKENS = 8
"""A read of the caller's words evaluates this many tokens at a time, and can stop
between steps (~0.1 s each for the 1.5B model on two cores)."""
"""The chat template's words around the tools it lists (Qwen2.5's: ~100 tokens)."""


@dataclass(frozen=True, slots=True)
class _End:
    """Last item of a generation: ``error`` is set when it failed."""

    error: BaseException | None = None


class LlamaCppLLM:
    """A GGUF chat model run in-process, with the GGUF's own chat template."""

    max_tool_rounds = 1
    """A 0.5B model that has read a result calls the same tool again (measured on a
    development set, docs/tools.md): after one round it must answer."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_batch: int = 512,
        chat_format: str | None = None,
        queue_size: int = 32,
        max_instruction_tokens: int | None = None,
        max_jobs_per_session: int = 4,
        context_cache_bytes: int = 256 * 2**20,
        tool_cues: bool = True,
        call_confidence: float = CALL_CONFIDENCE,
    ) -> None:
        from llama_cpp import Llama

        self.model_path = Path(model_path)
        self.name = f"llama.cpp:{self.model_path.stem}"
        self.call_confidence = call_confidence
        """The first token's probability of a call opening that a call needs (the
        model's own scale: pipeline/tiers.py has each tier's)."""
        self.n_ctx = n_ctx
        self.max_instruction_tokens = (
            max_instruction_tokens if max_instruction_tokens is not None else n_ctx // 4
        )
        """System prompts longer than this are refused (the caller's error)."""
        self.generations_started = 0
        """Generations the worker began (each one a prefill): a withdrawn job is not one."""
        self.contexts = CallContexts(context_cache_bytes)
        """Each call's context kept between its turns; ``context_cache_bytes=0`` is off."""
        self.tool_cues = tool_cues
        """A built-in tool may be called only on a turn holding one of its cue words
        (pipeline/tools/cues.py); off, the model decides every turn."""
        self.calls_ruled_out = 0
        """Model turns asked in the plain prompt, no tool callable, for want of a cue."""
        self.warm_ups = 0
        """Instruction reads run ahead of a call's reply (``warm``)."""
        self._warm_jobs: dict[str, Job] = {}
        self.words_read = 0
        """Reads of a caller's words ahead of the end of their turn (``read_words``)."""
        self._word_jobs: dict[str, Job] = {}
        self._word_stops: dict[str, threading.Event] = {}
        self.pauses = 0
        """Times a generation stood aside for its call's first audio."""
        self._gates: dict[str, threading.Event] = {}
        """Per call: cleared while the call's first audio is synthesised."""
        self.last_prompt_tokens = 0
        """Prompt tokens the last generation or read-ahead evaluated (those not already
        in the context)."""
        self._prompt_pending = False
        self._template_tools: TemplateTools | None = None
        self._queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._jobs = FairJobQueue(max_jobs_per_session)
        self._closed = False
        self._generating = threading.Event()
        if not self.model_path.is_file():
            self._executor.shutdown(wait=True)
            raise ModelLoadError(f"GGUF model not found: {self.model_path}")
        try:
            self._model: Any = self._executor.submit(
                Llama,
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_batch=n_batch,
                chat_format=chat_format,
                verbose=False,
            ).result()
        except Exception as error:
            self._executor.shutdown(wait=True)
            raise ModelLoadError(f"cannot load GGUF {self.model_path}: {error}") from error
        evaluate = self._model.eval

        def counted(tokens: Sequence[int]) -> None:
            # A generation's first evaluation is its prompt (past the reused prefix).
            if self._prompt_pending:
                self._prompt_pending = False
                self.last_prompt_tokens = len(tokens)
            evaluate(tokens)

        # An instance attribute shadows the method the library's generate() calls.
        setattr(self._model, "eval", counted)  # noqa: B010

    @property
    def busy(self) -> bool:
        """True while the worker thread is generating."""
        return self._generating.is_set()

    async def until_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until nothing runs or waits (a warm-up included); TimeoutError after
        ``timeout_s``. For benchmarks and tests that need the model to themselves."""
        for _ in range(max(1, int(timeout_s / 0.1))):
            if not self.busy and len(self._jobs) == 0:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name}: still busy after {timeout_s:g} s")

    def for_session(self, session_id: str) -> LLMEngine:
        """A call's view: its streams queue as that call's, served round robin."""
        return LlamaSessionView(self, session_id)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        session: str = "",
    ) -> AsyncGenerator[str, None]:
        """Yield text deltas; ``aclose()`` or cancellation stops within one token.

        ``session`` is whose stream this is (``for_session`` sets it): the worker
        serves the waiting streams of different sessions in turn.
        """
        stream = self.stream_with_tools(
            messages, tools=(), max_tokens=max_tokens, temperature=temperature, session=session
        )
        try:
            async for item in stream:
                if isinstance(item, str):
                    yield item
        finally:
            await stream.aclose()

    async def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[dict[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.7,
        session: str = "",
        tool_choice: str = "auto",
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Like ``stream``, offering ``tools``: text deltas, then the call the model
        made if it made one (pipeline/engines/llama_tools.py)."""
        if self._closed:
            raise LLMError(f"{self.name}: engine is closed", transient=False)
        loop = asyncio.get_running_loop()
        # One slot beyond the credits for the final _End, which needs no credit.
        queue: asyncio.Queue[str | ToolCall | _End] = asyncio.Queue(maxsize=self._queue_size + 1)
        credits = threading.Semaphore(self._queue_size)
        stop = threading.Event()

        def emit(item: str | ToolCall | _End) -> bool:
            """Hand ``item`` to the loop (worker thread); False when the consumer is gone."""
            if not isinstance(item, _End):
                while not credits.acquire(timeout=_CREDIT_POLL_S):
                    if stop.is_set():
                        return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed
                return False
            return not stop.is_set()

        request = [m.copy() for m in messages]
        offered = [dict(tool) for tool in tools]
        finished: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                if not stop.is_set():
                    self._generate(
                        request, max_tokens, temperature, stop, emit, session, offered,
                        tool_choice,
                    )
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_resolve, finished)

        job = Job(session, run)
        words = self._word_jobs.pop(session, None)
        if words is not None:  # the reply reads those words (and the rest) itself
            self._jobs.withdraw(words)
        if not self._jobs.put(job):
            raise LLMRequestError(
                f"{self.name}: this call already has {self._jobs.max_per_key} requests waiting"
            )
        try:
            self._executor.submit(self._run_next)
        except RuntimeError as error:  # shut down by close() meanwhile
            self._jobs.withdraw(job)
            raise LLMError(f"{self.name}: engine is closed", transient=False) from error
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if isinstance(item.error, LLMError):
                        raise item.error
                    if item.error is not None:
                        raise LLMError(f"{self.name}: generation failed: {item.error}") from (
                            item.error
                        )
                    return
                credits.release()
                yield item
        finally:
            stop.set()
            if not self._jobs.withdraw(job):
                # The worker took it: wait for it to notice (at most one token), so the
                # model is idle when the generator is closed; shielded so a second
                # cancel cannot orphan it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(finished)

    def _run_next(self) -> None:
        """One executor task per job put: run whichever job is due (worker thread)."""
        job = self._jobs.take()
        if job is not None:
            job.run()

    def fit(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        tools: Sequence[dict[str, Any]] = (),
    ) -> list[ChatMessage]:
        """``messages`` trimmed to leave ``max_tokens`` of the context for the reply
        (and room for the ``tools`` the template lists).

        Keeps the system prompt and the newest turns. Raises LLMRequestError when
        the system prompt is over ``max_instruction_tokens`` or it and the newest
        turn alone do not fit. Thread-safe (tokenizing reads only the vocabulary).
        """
        counted: dict[str, int] = {}

        def count(text: str) -> int:
            if text not in counted:
                tokens = self._model.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                counted[text] = len(tokens) + MESSAGE_OVERHEAD_TOKENS
            return counted[text]

        system = sum(count(m["content"]) for m in messages if m["role"] == "system")
        if system > self.max_instruction_tokens:
            raise LLMRequestError(
                f"the instructions take {system} tokens; this server allows "
                f"{self.max_instruction_tokens}"
            )
        budget = self.n_ctx - max_tokens - CONTEXT_MARGIN_TOKENS
        if tools:
            budget -= count(json.dumps(list(tools))) + TOOLS_TEMPLATE_TOKENS
        fitted = fit_to_context(messages, count, budget)
        if fitted is None:
            raise LLMRequestError(
                f"the instructions and the last message do not fit the model's context of "
                f"{self.n_ctx} tokens with room for a reply of {max_tokens}"
            )
        return fitted

    def _generate(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        emit: Callable[[str | ToolCall | _End], bool],
        session: str = NO_CALL,
        tools: Sequence[dict[str, Any]] = (),
        tool_choice: str = "auto",
    ) -> None:
        """Run one generation on the worker thread."""
        error: BaseException | None = None
        self._generating.set()
        try:
            tools = self._offered_now(messages, tools, tool_choice)
            fitted = self.fit(messages, max_tokens, tools)
            self.generations_started += 1
            self.contexts.take(
                self._model, context_key(session, tools, tool_choice, split=self.tool_cues)
            )
            self._prompt_pending = True
            items = self._items(
                fitted, max_tokens, temperature, tools, stop, tool_choice, session
            )
            gate = self._gates.setdefault(session, _open_gate())
            try:
                for item in items:
                    if stop.is_set() or not emit(item):
                        break
                    if not gate.is_set():
                        self.pauses += 1
                        _wait_for_gate(gate, stop)
            finally:
                items.close()
        except Exception as failure:
            error = failure
        finally:
            self._generating.clear()
        emit(_End(error))

    def _cue_turn_call(
        self,
        messages: list[ChatMessage],
        temperature: float,
        tools: Sequence[dict[str, Any]],
        stop: threading.Event,
    ) -> ToolCall | None:
        """A turn with a cue (cues on): whether the model calls a tool, asked in the
        tools prompt with the instructions and this turn only. With the history in
        it, the 0.5B model answered "what time is it?" with a made-up time instead
        of calling the clock (tests/pipeline/test_llama.py); on a turn of its own it
        calls. Its words, if it starts answering, are not kept: the answer is asked
        in the plain prompt with the whole history (the call's usual context)."""
        last_user = last_user_index(messages)
        asked = [m for m in messages[:1] if m["role"] == "system"]
        if last_user >= 0:
            asked += messages[last_user:]  # no earlier turn, so no earlier call, to drop
        writer = self.template_tools()
        # Every offered tool is listed (the prompt stays the one read ahead), but the
        # call may name only a tool whose cue was heard: its grammar holds only those.
        items = writer.stream(
            writer.prompt(asked, tools), max_tokens=MAX_DECISION_TOKENS,
            temperature=temperature, tools=cued(last_user_text(messages), tools),
            stopped=stop.is_set,
        )
        try:
            for item in items:
                return item if isinstance(item, ToolCall) else None
        finally:
            items.close()
        return None

    def _offered_now(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]], tool_choice: str
    ) -> Sequence[dict[str, Any]]:
        """The tools this model turn is shown: none when cues are on and the caller's
        last words hold no cue of any offered tool (pipeline/tools/cues.py). Shown
        tools the 0.5B model cannot call, it talks about ("you can call the function
        get_current_time…"), so such a turn is asked in the plain prompt instead."""
        if not tools or tool_choice != "auto" or not self.tool_cues:
            return tools
        if call_plausible(last_user_text(messages), tools):
            return tools
        self.calls_ruled_out += 1
        return ()

    def _items(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[dict[str, Any]],
        stop: threading.Event,
        tool_choice: str = "auto",
        session: str = NO_CALL,
    ) -> Generator[str | ToolCall, None, None]:
        """What one generation yields (worker thread): text deltas, then any call."""
        if tools and tool_choice == "auto" and self.tool_cues:
            call = self._cue_turn_call(messages, temperature, tools, stop)
            if call is not None:
                yield call
                return
            if stop.is_set():
                return
            # Words, not a call: asked again in the plain prompt, with the history.
            self.contexts.take(self._model, context_key(session, (), tool_choice))
            self._prompt_pending = True
        elif tools and tool_choice != "none":
            yield from self.template_tools().stream(
                self.template_tools().prompt(earlier_calls_dropped(messages), tools),
                max_tokens=max_tokens, temperature=temperature, tools=tools,
                stopped=stop.is_set,
            )
            return
        chunks = self._model.create_chat_completion(
            messages=[dict(m) for m in plain_messages(messages)],
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
        )
        try:
            for chunk in chunks:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
        finally:
            chunks.close()

    def template_tools(self) -> TemplateTools:
        """The model's tool-call writer, made on first use (worker thread)."""
        if self._template_tools is None:
            self._template_tools = TemplateTools(
                self._model, call_confidence=self.call_confidence
            )
        return self._template_tools

    def warm(
        self, instructions: str, session: str = NO_CALL, tools: Sequence[dict[str, Any]] = ()
    ) -> bool:
        """Read ``instructions`` into the call's context before its first reply.

        Queued as the call's job (fair between calls, bounded per call like its
        streams; a warm-up still waiting is replaced); returns at once. The reply
        that follows re-reads none of it. False when it could not be queued.
        """
        if self._closed:
            return False
        messages = [
            ChatMessage(role="system", content=instructions),
            ChatMessage(role="user", content="."),
        ]

        offered = [dict(tool) for tool in tools]
        return self._queue_ahead(
            self._warm_jobs, session, lambda: self._warm(messages, session, offered)
        )

    @property
    def idle(self) -> bool:
        """Nothing generating or waiting: work queued now delays no call's reply."""
        return not self.busy and len(self._jobs) == 0

    def read_words(self, messages: Sequence[ChatMessage], session: str) -> bool:
        """While the caller is still speaking: read ``messages`` (the call's history
        and their words so far as its last user turn) into the call's plain context,
        up to the end of those words, so that the reply, whose prompt shares them,
        reads only the turn's last words (pipeline/read_ahead.py).

        Only when the model is idle (another call's reply never waits for it); a read
        still waiting is replaced, and ``stop_reading`` or the call's next stream
        withdraws it. Returns at once; False when not queued."""
        if self._closed or session == NO_CALL or not self.idle:
            return False
        request = [m.copy() for m in messages]
        stop = threading.Event()
        self._word_stops[session] = stop
        return self._queue_ahead(
            self._word_jobs, session, lambda: self._read_words(request, session, stop)
        )

    def stop_reading(self, session: str) -> None:
        """The caller stopped speaking: a read of their words still waiting is dropped
        and one running stops within ``READ_STEP_TOKENS``, leaving the cores to the
        final transcript (what it read so far stays in the call's context)."""
        waiting = self._word_jobs.pop(session, None)
        if waiting is not None:
            self._jobs.withdraw(waiting)
        stop = self._word_stops.pop(session, None)
        if stop is not None:
            stop.set()

    def _queue_ahead(self, jobs: dict[str, Job], session: str, work: Callable[[], None]) -> bool:
        """Queue a read ahead of the call's reply (a warm-up, the caller's words) as the
        call's job, replacing the one of its kind still waiting."""

        def run() -> None:
            if jobs.get(session) is job:
                del jobs[session]
            work()

        job = Job(session, run)
        waiting = jobs.pop(session, None)
        if waiting is not None:
            self._jobs.withdraw(waiting)
        if not self._jobs.put(job):
            return False
        jobs[session] = job
        try:
            self._executor.submit(self._run_next)
        except RuntimeError:  # shut down by close() meanwhile
            self._jobs.withdraw(job)
            jobs.pop(session, None)
            return False
        return True

    def _read_words(
        self, messages: list[ChatMessage], session: str, stop: threading.Event
    ) -> None:
        """Evaluate the plain prompt of ``messages`` up to the end of the last user
        turn's words, in steps that ``stop`` can end (worker thread). Best effort."""
        self._generating.set()
        try:
            fitted = self.fit(messages, max_tokens=1)
            words = fitted[-1]["content"]
            prompt = self.template_tools().prompt(plain_messages(fitted), ())
            cut = prompt.rfind(words)
            if fitted[-1]["role"] != "user" or not words or cut < 0:
                return
            self.contexts.take(self._model, context_key(session, (), "auto"))
            model = self._model
            tokens = model.tokenize(prompt[: cut + len(words)].encode("utf-8"), special=True)
            held = model.input_ids[: model.n_tokens]
            shared = next(
                (i for i, (a, b) in enumerate(zip(held, tokens, strict=False)) if a != b),
                min(len(held), len(tokens)),
            )
            for end in range(shared + READ_STEP_TOKENS, len(tokens) + READ_STEP_TOKENS,
                             READ_STEP_TOKENS):
                if stop.is_set():
                    break
                # One token sampled and dropped: the step is the prompt's evaluation.
                model.create_completion(tokens[:end], max_tokens=1, temperature=0.0)
            self.words_read += 1
        except Exception:
            logger.debug("reading the caller's words ahead failed", exc_info=True)
        finally:
            self._generating.clear()

    def read_ahead(
        self, instructions: str, tools: Sequence[dict[str, Any]], timeout_s: float = 300.0
    ) -> bool:
        """At load, before any call (blocks; not on an event loop): read what a new
        call's model reads first, the instructions with the tools it is offered (kept
        as the base every new call starts from) and the plain prompt. Without it the
        first caller's turn waited for that read: ~7 s for the 1.5B model with the
        built-in tools on two cores, against ~0.3 s for a call after the base.
        False when it could not run (closed, or not done within ``timeout_s``)."""
        if not self.warm(instructions, _READ_AHEAD, tools):
            return False
        try:
            asyncio.run(self.until_idle(timeout_s))
        except TimeoutError:
            return False
        finally:
            self.release(_READ_AHEAD)
        return self.contexts.has_base

    def _warm(
        self, messages: list[ChatMessage], session: str, tools: Sequence[dict[str, Any]]
    ) -> None:
        """Evaluate the instructions (and the tools the template lists with them) on
        the worker thread; a failure is left to the reply, which reports it."""
        self._generating.set()
        try:
            if tools and self.tool_cues:
                # Cue turns are asked in the tools prompt in a context of their own:
                # read it there (from the base, the last call's, when the instructions
                # are the same: one token), then the plain prompt most turns use.
                fitted = self.fit(messages, max_tokens=1, tools=tools)
                self.contexts.take(self._model, session + TOOLS_CONTEXT)
                self._model.create_completion(
                    self.template_tools().prompt(fitted, tools), max_tokens=1, temperature=0.0
                )
                self.contexts.keep_base(self._model)
                tools, based = (), True
            else:
                based = False
            fitted = self.fit(messages, max_tokens=1, tools=tools)
            self.contexts.take(self._model, session)
            self._prompt_pending = True
            if tools:
                prompt = self.template_tools().prompt(fitted, tools)
                self._model.create_completion(prompt, max_tokens=1, temperature=0.0)
            else:
                self._model.create_chat_completion(
                    messages=[dict(m) for m in fitted], max_tokens=1, temperature=0.0
                )
            if not based:
                self.contexts.keep_base(self._model)
            self.warm_ups += 1
        except Exception:
            logger.debug("warming the instructions failed", exc_info=True)
        finally:
            self._generating.clear()

    def pause_generation(self, session: str) -> None:
        """Hold the call's generation before its next token (the worker then idles
        for the call's first audio); ``resume_generation`` or ``MAX_PAUSE_S`` ends it."""
        self._gates.setdefault(session, threading.Event()).clear()

    def resume_generation(self, session: str) -> None:
        gate = self._gates.get(session)
        if gate is not None:
            gate.set()

    def release(self, session_id: str) -> None:
        """The call has ended: its kept context, and any warm-up still waiting, go."""
        gate = self._gates.pop(session_id, None)
        if gate is not None:
            gate.set()
        waiting = self._warm_jobs.pop(session_id, None)
        if waiting is not None:
            self._jobs.withdraw(waiting)
        self.stop_reading(session_id)
        self.contexts.forget(session_id)
        self.contexts.forget(session_id + TOOLS_CONTEXT)

    def close(self) -> None:
        """Wait for the generation in progress, then free the model."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._model.close()


MAX_DECISION_TOKENS = 16
"""What a cue turn's call decision may write before it is known not to be a call
(the call itself is written under its grammar, with its own budget)."""
_READ_AHEAD = "\x1fread-ahead"
"""The load-time read-ahead's session (``read_ahead``): no call has that name."""


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


def _wait_for_gate(gate: threading.Event, stop: threading.Event) -> None:
    """Wait (worker thread) until the gate opens, the stream stops or ``MAX_PAUSE_S``
    passes; then the gate is left open, so nobody's forgotten resume stalls the model."""
    for _ in range(int(MAX_PAUSE_S / _CREDIT_POLL_S)):
        if gate.wait(_CREDIT_POLL_S) or stop.is_set():
            return
    gate.set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
