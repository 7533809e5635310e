"""The lifecycle shared by the batched model workers (VAD, Smart Turn): one asyncio
task that gathers requests from many calls into batches, and one thread that runs
the model on them, so inference never blocks the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits


def single_threaded_blas() -> int | None:
    """Give numpy's BLAS (OpenBLAS here) one thread for the rest of the process;
    returns its thread count before (None: no BLAS library is loaded yet, so call
    this after numpy's import, as every caller does).

    The models run on thread pools of their own (onnxruntime, llama.cpp, CTranslate2);
    numpy's BLAS serves only small products such as the mel projection of Smart
    Turn's and faster-whisper's features (80 x 201 by 201 x 800). With its default
    pool, OpenBLAS's threads keep spinning after each product: one Smart Turn
    inference cost 121 ms of CPU for 64 ms of wall time on a 2-core machine,
    against 65 ms of both with one thread (features 5 ms either way), and on a
    busy machine that spin takes its core from the transcript and the reply
    (docs/decisions.md, "numpy's BLAS gets one thread"). Process-wide, because
    OpenBLAS's thread count is."""
    before = threadpool_limits(limits=1, user_api="blas").get_original_num_threads()
    threads = before.get("blas")
    return int(threads) if threads is not None else None


class BatchedThreadWorker:
    """Start, stop and the model thread; a subclass serves its queue in ``_serve``
    and fails whatever it still holds in ``_fail_waiting``."""

    thread_name = "worker"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self._running = True
        self._task = asyncio.create_task(self._serve(), name=f"{self.thread_name}-worker")

    async def stop(self) -> None:
        """Cancel the worker, wait for it, and fail every request not yet answered."""
        self._running = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Re-raise only if *our caller* is being cancelled, not the worker.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self._fail_waiting()
        executor, self._executor = self._executor, None
        if executor is not None:
            # A batch cancelled mid-run may still be on the thread; wait for it
            # without blocking the loop so no model call outlives stop().
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def _serve(self) -> None:
        raise NotImplementedError

    def _fail_waiting(self) -> None:
        raise NotImplementedError
