"""The one thread that does every call's Chatterbox work, batched across calls.

Utterances (one per ``synthesize``) wait in a queue, join the T3 batch between two
steps (up to ``max_streams`` at once; the rest wait their turn), and leave it when
they end or are cancelled. Each round of the loop, in order:

1. cancelled utterances leave the batch (their rows are free for the next step);
2. queued calls run (a voice to prepare, ``wait_idle``), between two steps;
3. waiting utterances join (their prompt's prefill);
4. one batched T3 step samples a token for every utterance;
5. the chunks that became due are decoded by S3Gen, first chunks first (a new
   reply's first audio never waits behind other calls' later chunks), each group
   in batched flow passes where the engine can (``decode_many``), an utterance
   cancelled meanwhile skipped; utterances that ended get their last chunk.

So a new utterance waits at most one step (and that round's decodes) before its
prefill, and a cancelled one costs at most the step in progress. The loop runs
on the engine's executor while there is work and returns when there is none.
Chunks go to the asyncio side through ``call_soon_threadsafe``: the worker never
waits for a consumer (they take audio as fast as it comes: responses.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from pipeline.engines.chatterbox.t3_batch import T3Batch
from pipeline.errors import TTSError

Result = TypeVar("Result")
_log = logging.getLogger("voiceforge.tts")
_END = object()


class Job(Protocol):
    """One utterance's work, called on the worker thread only."""

    first_chunk_pending: bool
    """No chunk has gone out yet (its decode goes before the others')."""

    def join(self, batch: T3Batch, key: int) -> None:
        """Prefill this utterance's prompt into ``batch`` under ``key``."""

    def take(self, token: int | None) -> bool:
        """A step's token (None: none this step); True when a chunk is due."""

    def finish(self) -> Any | None:
        """Decode the rest (T3 has ended); None when there is no audio left."""


class _Entry:
    __slots__ = ("cancelled", "job", "key", "loop", "queue", "started_step")

    def __init__(self, key: int, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.job = job
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        self.started_step: int | None = None

    def deliver(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed
            self.cancelled = True


class SpeechWorker:
    """Schedules utterances onto one ``T3Batch`` on the engine's single-thread executor."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        new_batch: Callable[[], T3Batch],
        *,
        max_streams: int,
        name: str,
        decode_many: Callable[[list[Any]], list[Any]],
    ) -> None:
        """``decode_many``: the chunks due for several jobs, decoded together (a list
        of chunks, or exceptions in their places)."""
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        self._executor = executor
        self._new_batch = new_batch
        self.max_streams = max_streams
        self._name = name
        self._decode_many = decode_many
        self._lock = threading.Lock()
        self._waiting: deque[_Entry] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._running = False
        self._keys = itertools.count()
        self._batch: T3Batch | None = None
        self._active: dict[int, _Entry] = {}
        self.steps = 0
        """Batched T3 steps this worker has run."""
        self.joined_at_step: dict[int, tuple[int, int]] = {}
        """Per utterance: (``steps`` when it was submitted, when it joined); the last 64."""

    # -- the asyncio side --------------------------------------------------------------

    async def stream(self, job: Job) -> AsyncGenerator[Any, None]:
        """Run ``job``; yield its chunks. Closing the generator cancels it."""
        entry = _Entry(next(self._keys), job, asyncio.get_running_loop())
        with self._lock:
            entry.started_step = self.steps
            self._waiting.append(entry)
            self._wake()
        try:
            while True:
                item = await entry.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise TTSError(f"{self._name}: synthesis failed: {item}") from item
                yield item
        finally:
            entry.cancelled = True

    async def call(self, function: Callable[[], Result]) -> Result:
        """Run ``function`` on the worker thread between two steps."""
        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        with self._lock:
            self._calls.append((function, future))
            self._wake()
        return await asyncio.wrap_future(future)

    def cancel_all(self) -> None:
        """Cancel every utterance, waiting or decoding (the engine is closing)."""
        with self._lock:
            for entry in [*self._waiting, *self._active.values()]:
                entry.cancelled = True
                entry.deliver(_END)

    def _wake(self) -> None:
        if not self._running:
            self._running = True
            try:
                self._executor.submit(self._run)
            except RuntimeError:  # shut down: nothing will run
                self._running = False
                raise

    # -- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:
            # A bug here must not leave the worker marked running with nobody
            # running it: every utterance and call waiting on it gets the error,
            # and the next one starts the loop afresh.
            with self._lock:
                self._running = False
                entries = [*self._active.values(), *self._waiting]
                calls = list(self._calls)
                self._active.clear()
                self._waiting.clear()
                self._calls.clear()
                self._batch = None
            for entry in entries:
                entry.deliver(error)
            for _, future in calls:
                if not future.done():
                    future.set_exception(error)
            _log.exception("chatterbox worker: its round failed; every utterance in it failed")

    def _loop(self) -> None:
        while True:
            with self._lock:
                calls = list(self._calls)
                self._calls.clear()
                joining: list[_Entry] = []
                while self._waiting and len(self._active) + len(joining) < self.max_streams:
                    entry = self._waiting.popleft()
                    if not entry.cancelled:
                        joining.append(entry)
                if not (calls or joining or self._active):
                    self._running = False
                    return
            self._leave_cancelled()
            for function, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function())
                    except BaseException as error:
                        future.set_exception(error)
            for entry in joining:
                self._join(entry)
            if self._active:
                self._round()

    def _batch_now(self) -> T3Batch:
        # An empty batch is made afresh: it takes the engine's sampling settings as
        # they are now.
        if self._batch is None or not len(self._batch):
            self._batch = self._new_batch()
        return self._batch

    def _leave_cancelled(self) -> None:
        for key in [key for key, entry in self._active.items() if entry.cancelled]:
            self._active.pop(key)
            if self._batch is not None:
                self._batch.leave(key)

    def _join(self, entry: _Entry) -> None:
        batch = self._batch_now()
        try:
            entry.job.join(batch, entry.key)
        except Exception as error:
            entry.deliver(error)
            return
        self._active[entry.key] = entry
        self.joined_at_step[entry.key] = (entry.started_step or 0, self.steps)
        while len(self.joined_at_step) > 64:
            self.joined_at_step.pop(next(iter(self.joined_at_step)))

    def _round(self) -> None:
        batch = self._batch_now()
        self.steps += 1
        try:
            sampled = batch.step()
        except Exception as error:
            # The batch's state cannot be trusted after a failed step: every
            # utterance in it fails, and the next one starts a fresh batch.
            for entry in self._active.values():
                entry.deliver(error)
            self._active.clear()
            self._batch = None
            return
        due: list[_Entry] = []
        ended: list[_Entry] = []
        for result in sampled:
            entry = self._active.get(result.key)  # type: ignore[call-overload]
            if entry is None:
                continue
            if entry.job.take(result.token):
                due.append(entry)
            if result.done:
                ended.append(entry)
        # First chunks first: a new reply's first audio is what a caller waits for.
        firsts = [entry for entry in due if entry.job.first_chunk_pending]
        for group in (firsts, [entry for entry in due if not entry.job.first_chunk_pending]):
            self._emit_group([entry for entry in group if not entry.cancelled])
        for entry in ended:
            self._active.pop(entry.key, None)
            if not entry.cancelled and self._emit(entry, entry.job.finish):
                entry.deliver(_END)

    def _emit_group(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        try:
            chunks = self._decode_many([entry.job for entry in entries])
        except Exception as error:
            chunks = [error] * len(entries)
        for entry, chunk in zip(entries, chunks, strict=True):
            entry.deliver(chunk)
            if isinstance(chunk, BaseException):
                entry.cancelled = True

    def _emit(self, entry: _Entry, decode: Callable[[], Any]) -> bool:
        try:
            chunk = decode()
        except Exception as error:
            entry.deliver(error)
            entry.cancelled = True
            return False
        if chunk is not None:
            entry.deliver(chunk)
        return True
