"""In-process chat model with llama-cpp-python, streamed from one worker thread.

The model lives on a single dedicated thread: the one-worker executor is what
guarantees one generation at a time on the shared model (a second stream waits
for the first to finish or be cancelled). Tokens cross to the event loop with
``call_soon_threadsafe``, so the loop never blocks; the queue is bounded by a
credit semaphore the worker takes before each token, so a slow consumer slows
generation down instead of growing memory. A stop flag checked at every token,
and while waiting for credit, ends generation within one token of ``aclose()``
or cancellation; closing the async generator then waits for the worker to go
idle, so no thread keeps generating behind a cancelled response.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engines.base import ChatMessage
from pipeline.errors import LLMError, ModelLoadError

_CREDIT_POLL_S = 0.05
"""How often a worker waiting for queue space rechecks the stop flag."""


@dataclass(frozen=True, slots=True)
class _End:
    """Last item of a generation: ``error`` is set when it failed."""

    error: BaseException | None = None


class LlamaCppLLM:
    """A GGUF chat model run in-process, with the GGUF's own chat template."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_batch: int = 512,
        chat_format: str | None = None,
        queue_size: int = 32,
    ) -> None:
        from llama_cpp import Llama

        self.model_path = Path(model_path)
        self.name = f"llama.cpp:{self.model_path.stem}"
        self._queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
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

    @property
    def busy(self) -> bool:
        """True while the worker thread is generating."""
        return self._generating.is_set()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
    ) -> AsyncGenerator[str, None]:
        """Yield text deltas; ``aclose()`` or cancellation stops within one token."""
        if self._closed:
            raise LLMError(f"{self.name}: engine is closed", transient=False)
        loop = asyncio.get_running_loop()
        # One slot beyond the credits for the final _End, which needs no credit.
        queue: asyncio.Queue[str | _End] = asyncio.Queue(maxsize=self._queue_size + 1)
        credits = threading.Semaphore(self._queue_size)
        stop = threading.Event()

        def emit(item: str | _End) -> bool:
            """Hand ``item`` to the loop (worker thread); False when the consumer is gone."""
            if isinstance(item, str):
                while not credits.acquire(timeout=_CREDIT_POLL_S):
                    if stop.is_set():
                        return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed
                return False
            return not stop.is_set()

        request = [{"role": m["role"], "content": m["content"]} for m in messages]
        worker = loop.run_in_executor(
            self._executor, self._generate, request, max_tokens, temperature, stop, emit
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise LLMError(f"{self.name}: generation failed: {item.error}") from (
                            item.error
                        )
                    return
                credits.release()
                yield item
        finally:
            stop.set()
            # Wait for the worker to notice (at most one token), so the model is idle
            # when the generator is closed; shielded so a second cancel cannot orphan it.
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)

    def _generate(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        emit: Callable[[str | _End], bool],
    ) -> None:
        """Run one generation on the worker thread."""
        error: BaseException | None = None
        self._generating.set()
        try:
            chunks = self._model.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta and not emit(delta):
                        break
            finally:
                chunks.close()
        except Exception as failure:
            error = failure
        finally:
            self._generating.clear()
        emit(_End(error))

    def close(self) -> None:
        """Wait for the generation in progress, then free the model."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._model.close()
